"""The decision of a step (cpoa.decide) and the pure half of a request (cpoa.attempt.settle):
no database, no network — snapshots in, actions and task rows out."""

from __future__ import annotations

import dataclasses
import datetime
import uuid

import pytest

from cpoa import attempt, decide, errors, models, steps
from cpoa import settings as settings_module
from cpoa.agents.client import Reply

NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.timezone.utc)
MAX_RECOVERIES = 5
PACE = attempt.Timing(interval_s=5.0, timeout_s=60.0, honour_retry_after=True)


def workflow(state="fetching", kind="podcast", context=None, **fields) -> models.Workflow:
    return models.Workflow(uuid.uuid4(), kind, state, {"topic": "tides", "query": "q", "limit": 2},
                           context or {}, [], **fields)


def task_of(wf, item_key="", **fields) -> models.Task:
    step = steps.step_for(wf)
    return decide.new_task(wf, step, item_key).evolve(**fields)


def in_seconds(seconds: float) -> datetime.datetime:
    return NOW + datetime.timedelta(seconds=seconds)


TOPICS = [{"topic_id": "t0", "title_suggestion": "A"}, {"topic_id": "t1", "title_suggestion": "B"}]


# -- next_action -------------------------------------------------------------------------------

def test_next_action__first_visit_calls_with_a_new_task_keyed_by_the_workflow():
    """A step with no task row calls its agent with a new task row keyed by the workflow id."""
    wf = workflow(retry_count=2)
    action = decide.next_action(wf, {}, NOW, MAX_RECOVERIES)
    assert isinstance(action, decide.Call) and action.item_key == ""
    assert action.task.idempotency_key == f"{wf.workflow_id}_wcha_r2"
    assert (action.task.attempt, action.task.agent_name, action.task.step) == (2, "WCHA",
                                                                              "fetching")


def test_new_task__a_redo_of_the_same_step_attempt_has_the_same_task_id():
    """A worker that died after its request and before recording it leaves the redo the same
    task id (the callback URL the agent kept names it); another item, step attempt or
    workflow has another."""
    wf = workflow()
    step = steps.step_for(wf)
    first = decide.new_task(wf, step, "t0").task_id
    assert decide.new_task(wf, step, "t0").task_id == first
    others = {decide.new_task(wf, step, "t1").task_id,
              decide.new_task(dataclasses.replace(wf, retry_count=1), step, "t0").task_id,
              decide.new_task(dataclasses.replace(wf, workflow_id=uuid.uuid4()), step,
                              "t0").task_id}
    assert len(others) == 3 and first not in others


def test_next_action__poll_not_due_waits_until_it_is():
    """A submitted task whose next poll is 4 s away: wait 4 s, no request."""
    wf = workflow()
    task = task_of(wf, status="submitted", next_poll_at=in_seconds(4))
    assert decide.next_action(wf, {"": task}, NOW, MAX_RECOVERIES) == decide.Wait(4.0)


def test_next_action__due_poll_calls_with_the_existing_task():
    """A submitted task whose poll is due is called again with the same row."""
    wf = workflow()
    task = task_of(wf, status="submitted", next_poll_at=in_seconds(-1))
    action = decide.next_action(wf, {"": task}, NOW, MAX_RECOVERIES)
    assert isinstance(action, decide.Call) and action.task is task


def test_next_action__finished_task_concludes_the_step():
    """A step whose task succeeded finishes with its result in the context."""
    wf = workflow("analyzing")
    task = task_of(wf, status="succeeded", output_result_summary_json=[{"topic_id": "a"}])
    action = decide.next_action(wf, {"": task}, NOW, MAX_RECOVERIES)
    assert action == decide.Finish(steps.Verdict(True, {"topics": [{"topic_id": "a"}]}))


def test_next_action__past_max_recoveries_quarantines():
    """A workflow whose lease died more than the maximum in one state fails, naming why."""
    action = decide.next_action(workflow("scripting", recovery_attempts=6), {}, NOW,
                                MAX_RECOVERIES)
    assert isinstance(action, decide.Finish) and not action.verdict.ok
    assert action.verdict.reason.startswith("quarantined: the lease expired 6 times in state "
                                            "scripting")
    assert isinstance(decide.next_action(workflow(recovery_attempts=5), {}, NOW,
                                         MAX_RECOVERIES), decide.Call)


def test_next_action__fan_out_calls_the_first_due_item():
    """Crafting with two topics, the first submitted and not due: the second is called."""
    wf = workflow("crafting", "snippets", {"topics": TOPICS})
    first = task_of(wf, "t0", status="submitted", next_poll_at=in_seconds(3))
    action = decide.next_action(wf, {"t0": first}, NOW, MAX_RECOVERIES)
    assert isinstance(action, decide.Call) and action.item_key == "t1"
    assert action.task.idempotency_key == f"{wf.workflow_id}_sca_t1"


# -- after_call --------------------------------------------------------------------------------

def test_after_call__untouched_fan_out_items_are_due_now():
    """After the first of two items was submitted, the step is due again at once."""
    wf = workflow("crafting", "snippets", {"topics": TOPICS})
    task = task_of(wf, "t0", status="submitted", next_poll_at=in_seconds(3))
    assert decide.after_call(wf, {}, task, NOW) == decide.Wait(0.0, task)


def test_after_call__open_item_waits_for_its_next_poll():
    """A single submitted item: wait until its poll time."""
    wf = workflow()
    task = task_of(wf, status="submitted", next_poll_at=in_seconds(5))
    assert decide.after_call(wf, {}, task, NOW) == decide.Wait(5.0, task)


def test_after_call__single_item_done_finishes_with_a_summarised_row():
    """The one item succeeded: the step finishes; the task row keeps a summary only (the
    result itself goes into the context)."""
    wf = workflow()
    result = {"content": "x" * 500, "source_urls": ["a", "b", "c", "d"]}
    task = task_of(wf, status="succeeded", output_result_summary_json=result)
    action = decide.after_call(wf, {}, task, NOW)
    assert isinstance(action, decide.Finish) and action.verdict.context == result
    assert action.task.output_result_summary_json == {"content": "<500 characters>",
                                                      "source_urls": "<4 items>"}


def test_after_call__fan_out_with_one_failure_completes_with_a_warning():
    """One snippet of two failed: the step succeeds with a warning naming the topic."""
    wf = workflow("crafting", "snippets", {"topics": TOPICS})
    ok = task_of(wf, "t0", status="succeeded", output_result_summary_json={"snippet_id": "s"})
    bad = task_of(wf, "t1", status="failed", error_details_json={"reason": "boom"})
    action = decide.after_call(wf, {"t0": ok}, bad, NOW)
    assert action.verdict.ok and action.verdict.warnings == (
        "snippet for topic t1 failed: boom",)


def test_after_call__fan_out_all_failed_fails_the_step():
    """Every snippet failed: the step fails."""
    wf = workflow("crafting", "snippets", {"topics": TOPICS})
    bad = [task_of(wf, k, status="failed", error_details_json={"reason": "x"})
           for k in ("t0", "t1")]
    action = decide.after_call(wf, {"t0": bad[0]}, bad[1], NOW)
    assert not action.verdict.ok and action.verdict.reason.startswith("every snippet failed")


def test_after_call__cover_art_failure_is_a_warning():
    """Imaging is best effort: its failure moves on with a warning."""
    wf = workflow("imaging", context={"script": {"title": "T"}})
    bad = task_of(wf, status="failed", error_details_json={"reason": "no GPU"})
    action = decide.after_call(wf, {}, bad, NOW)
    assert action.verdict == steps.Verdict(True, {}, warnings=("cover art skipped: no GPU",))


# -- outcome -----------------------------------------------------------------------------------

def test_outcome__wait_is_progress_in_the_state():
    """A wait records progress: the task row and when the workflow is due again."""
    wf = workflow()
    task = task_of(wf, status="submitted")
    outcome = decide.outcome(wf, decide.Wait(5.0, task))
    assert (outcome.is_transition, outcome.task, outcome.run_in_s) == (False, task, 5.0)


def test_outcome__finish_is_a_transition_the_machine_chose():
    """Success moves to the next state; failure to failed, remembering where."""
    wf = workflow("finalizing")
    done = decide.outcome(wf, decide.Finish(steps.Verdict(True, {"asf_notified": True})))
    assert (done.trigger, done.dest, done.context_updates) == (
        "step_done", "completed", {"asf_notified": True})
    failed = decide.outcome(workflow("scripting"),
                            decide.Finish(steps.Verdict(False, reason="bad script")))
    assert (failed.trigger, failed.dest, failed.failed_from_state, failed.error_message) == (
        "fail", "failed", "scripting", "scripting: bad script")


# -- attempt.settle ----------------------------------------------------------------------------

def begun(wf=None):
    return attempt.begin(task_of(wf or workflow()), NOW, PACE)


def test_settle__accepted_is_polled_after_the_interval():
    """A 202 makes the task submitted, polled one interval later."""
    task = attempt.settle(steps.step_for(workflow()), begun(),
                          Reply("accepted", "t-1", "http://a/v1/tasks/t-1"), NOW, PACE)
    assert (task.status, task.external_task_id, task.next_poll_at) == ("submitted", "t-1",
                                                                        in_seconds(5))


def test_settle__transient_error_honours_retry_after():
    """A 503 with Retry-After: 12 is tried again in 12 s, counted as a retry."""
    exc = errors.AgentUnavailable("503", service="WCHA", retry_after=12.0)
    task = attempt.settle(steps.step_for(workflow()), begun(), exc, NOW, PACE)
    assert (task.status, task.retry_count, task.next_poll_at) == ("pending", 1, in_seconds(12))


def test_settle__past_the_deadline_fails_with_a_timeout_and_the_last_error():
    """An item still open at its polling deadline fails, naming the timeout and last error."""
    task = begun().evolve(error_details_json={"reason": "WCHA answered HTTP 503"})
    task = attempt.settle(steps.step_for(workflow()), task, Reply("pending"), in_seconds(61),
                          PACE)
    assert task.status == "failed"
    assert task.error_details_json["reason"] == (
        "WCHA task did not finish within its 60 s polling timeout "
        "(last error: WCHA answered HTTP 503)")


def test_settle__lost_task_is_submitted_again_now():
    """A poll answered 404 (the agent forgot the task) resubmits the same key at once."""
    task = begun().evolve(status="submitted", external_task_id="t", status_url="http://a/t")
    task = attempt.settle(steps.step_for(workflow()), task, Reply("lost"), NOW, PACE)
    assert (task.status, task.external_task_id, task.next_poll_at) == ("pending", None, NOW)


def test_settle__skipped_voice_fails_the_item():
    """VFA answering `skipped` fails the item with VFA's message."""
    wf = workflow("synthesizing")
    task = attempt.settle(steps.step_for(wf), begun(wf),
                          Reply("done", result={"status": "skipped", "message": "no voice"}),
                          NOW, PACE)
    assert task.error_details_json == {"reason": "VFA skipped the work: no voice"}


@pytest.mark.parametrize("answer", [errors.AgentRejected("400", service="WCHA", status_code=400),
                                    Reply("done", result={"content": ""})])
def test_settle__rejection_or_invalid_result_fails_the_item(answer):
    """A permanent rejection, or a result that breaks the contract, fails the item."""
    task = attempt.settle(steps.step_for(workflow()), begun(), answer, NOW, PACE)
    assert task.status == "failed" and task.completed_at == NOW


def test_timing__the_notified_step_has_its_own_pace():
    """ASF is notified, not polled: its pace ignores Retry-After and uses the notify timeout."""
    settings = settings_module.from_env({})
    finalizing = steps.step_for(workflow("finalizing"))
    assert attempt.timing(settings, finalizing) == attempt.Timing(
        1.0, settings.asf_notify_timeout_s, False)
    fetching = steps.step_for(workflow())
    assert attempt.timing(settings, fetching).honour_retry_after is True


def test_next_action__a_paused_agent_holds_a_submit_until_the_pause_or_its_deadline():
    """A resubmit held by a pause waits until the pause ends or the item's deadline, whichever
    comes first; at its deadline it makes its last request, so the timeout is kept."""
    wf = workflow("imaging")
    paused = {"IGA": in_seconds(30)}
    retrying = task_of(wf, status="pending", next_poll_at=NOW, poll_deadline_at=in_seconds(2))
    action = decide.next_action(wf, {"": retrying}, NOW, MAX_RECOVERIES, paused)
    assert isinstance(action, decide.Wait) and action.run_in_s == 2
    due = retrying.evolve(poll_deadline_at=NOW)
    assert isinstance(decide.next_action(wf, {"": due}, NOW, MAX_RECOVERIES, paused), decide.Call)


def test_hands_over_slot__a_capped_agents_finished_task_or_step_gives_up_the_thread():
    """The write of a step that frees a capped agent's slot (its item's task finished, or the
    step ends) gives up its lease for the waiter; a pending task, an uncapped agent, a
    notified step or a state without a step keeps it."""
    wf = workflow("synthesizing")
    capped = {"VFA": settings_module.AgentSettings("VFA", "http://vfa", 5.0, 60.0,
                                                    max_in_flight=2)}.__getitem__
    free = {"VFA": settings_module.AgentSettings("VFA", "http://vfa", 5.0, 60.0)}.__getitem__
    done = models.Outcome.progress(task_of(wf, status="succeeded"), 0.0)
    pending = models.Outcome.progress(task_of(wf, status="pending"), 5.0)
    moved = models.Outcome.transition("next", "imaging")
    assert decide.hands_over_slot(wf, done, capped)
    assert decide.hands_over_slot(wf, moved, capped)
    assert not decide.hands_over_slot(wf, pending, capped)
    assert not decide.hands_over_slot(wf, done, free)
    assert not decide.hands_over_slot(workflow("finalizing"), moved, capped)
    assert not decide.hands_over_slot(workflow("awaiting_review"), moved, capped)


def test_admission__only_a_submit_to_a_limited_agent_waits_for_its_limits():
    """A submit to an agent with a cap or a rate limit needs a slot or a place in the rate;
    a poll of a task the agent accepted, a notification, or an agent without limits does not."""
    wf = workflow("synthesizing")
    step = steps.step_for(wf)
    call = decide.Call("", None, task_of(wf))
    free = settings_module.AgentSettings("VFA", "http://vfa", 5.0, 60.0)
    capped = settings_module.AgentSettings("VFA", "http://vfa", 5.0, 60.0, max_in_flight=2)
    rated = settings_module.AgentSettings("VFA", "http://vfa", 5.0, 60.0, rate_limit=0.5)
    assert decide.admission(step, call, capped) is capped
    assert decide.admission(step, call, rated) is rated
    assert decide.admission(step, call, free) is None
    polled = task_of(wf, status="submitted", status_url="/v1/tasks/t1")
    assert decide.admission(step, decide.Call("", None, polled), capped) is None
    final = workflow("finalizing")
    assert steps.step_for(final).notified
    assert decide.admission(steps.step_for(final), decide.Call("", None, task_of(final)),
                            capped) is None


def test_next_action__a_paused_agent_delays_submits_not_polls():
    """While IGA is paused, a new submit waits until the pause ends; a poll of a task IGA
    already accepted goes on."""
    wf = workflow("imaging", context={"script": {"title": "T"}})
    paused = {"IGA": in_seconds(12)}
    action = decide.next_action(wf, {}, NOW, MAX_RECOVERIES, paused)
    assert isinstance(action, decide.Wait) and action.run_in_s == 12
    accepted = task_of(wf, status="submitted", status_url="/v1/tasks/t1", next_poll_at=NOW)
    action = decide.next_action(wf, {"": accepted}, NOW, MAX_RECOVERIES, paused)
    assert isinstance(action, decide.Call)
    assert isinstance(decide.next_action(wf, {}, NOW, MAX_RECOVERIES,
                                         {"IGA": in_seconds(-1)}), decide.Call)


def test_agent_report__a_429_with_retry_after_on_a_submit_pauses_the_agent():
    """A submit answered 429 (or 503) with Retry-After reports a pause of that length for
    the agent; without Retry-After, or another status, it is a failure for the breaker; on a
    poll it only delays that poll."""
    wf = workflow("imaging")
    task = task_of(wf)
    step = steps.step_for(wf)
    busy = errors.AgentUnavailable("IGA answered HTTP 429", status_code=429, retry_after=3.0)
    report = decide.agent_report(step, task, attempt.settle(step, task, busy, NOW, PACE), {})
    assert report == models.AgentReport("IGA", ok=False, pause_s=3.0, reason="429")
    assert decide.outcome(wf, decide.Wait(3.0, task), report=report).agent_report == report
    for other in (errors.AgentUnavailable("429", status_code=429),
                  errors.AgentUnavailable("502", status_code=502, retry_after=3.0),
                  errors.AgentUnavailable("connection refused")):
        settled = attempt.settle(step, task, other, NOW, PACE)
        assert decide.agent_report(step, task, settled, {}) == models.AgentReport("IGA", False)
    polled = task_of(wf, status="submitted", status_url="/v1/tasks/t1")
    assert decide.agent_report(step, polled, attempt.settle(step, polled, busy, NOW, PACE),
                               {}) is None


def test_agent_report__an_answer_is_news_only_from_a_failing_agent():
    """An answer closes the breaker of an agent the lease names as failing or paused; from
    any other agent it reports nothing (no write on the hot path); a notification never."""
    wf = workflow("imaging")
    step = steps.step_for(wf)
    task = task_of(wf)
    answered = attempt.settle(step, task, Reply("accepted", task_id="t1",
                                                status_url="/v1/tasks/t1"), NOW, PACE)
    assert decide.agent_report(step, task, answered, {}) is None
    assert decide.agent_report(step, task, answered, {"IGA": None}) == models.AgentReport(
        "IGA", ok=True)
    final = workflow("finalizing")
    failed = attempt.settle(steps.step_for(final), task_of(final),
                            errors.AgentUnavailable("down"), NOW, PACE)
    assert decide.agent_report(steps.step_for(final), task_of(final), failed, {}) is None
