"""The agent protocol (contract §2) against a real HTTP agent: one test per scenario.

Each test scripts the agent's answers, drives a real workflow on a real database and checks the
workflow's state and reason, and the task rows CPOA stored for the step.
"""

from __future__ import annotations


import pytest
import requests

from cpoa import errors
from cpoa import settings as settings_module
from cpoa.agents.client import AgentClient
from cpoa.testing.agent import ASF_NOTIFY, Reply, ScriptedAgent
from tests.fix_agents import (agent_env, drive, engine_for, failed_with, leave, sent,
                               step_task, wait_until)

STEP_KEYS = {"/harvest": "wcha", "/discover_topics": "tda", "/weave_script": "pswa",
             "/forge_voice": "vfa", "/generate_image": "iga", ASF_NOTIFY: "asf"}
"""The step part of the downstream idempotency key, per podcast agent path."""


def seed(agent: ScriptedAgent, path: str, key: str, finish: bool) -> str:
    """Submits a task to the agent as an earlier CPOA run would have; returns its task id."""
    reply = requests.post(agent.url + path, json={"topic": "tides"}, timeout=5,
                          headers={"X-Idempotency-Key": key, "X-Workflow-ID": "earlier"})
    task_id = reply.json()["task_id"]
    if finish:
        assert requests.get(agent.url + reply.json()["status_url"], timeout=5).ok
    return task_id


# -- submit: 200, 202, 409 -----------------------------------------------------------------------

def test_submit__sync_success_finishes_the_step_without_polling(store, make_agent):
    """A 200 SUCCESS answer to the submit completes the step in one advance, with no poll."""
    agent = make_agent(sync=True)
    engine = engine_for(store, agent)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert engine.advance(workflow_id) == "analyzing"
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count, task.error_details_json) == ("succeeded", 0, None)
    assert task.external_task_id == agent.by_key[f"{workflow_id}_wcha"]
    assert engine.get_workflow(workflow_id)["outputs"]["content"] == "Articles about tides."
    assert drive(engine, workflow_id) == "completed"
    assert sent(agent, "/v1/tasks") == []


def test_poll__pending_statuses_with_200_and_202_then_success(engine, agent, store):
    """PENDING, STARTED, PROGRESS and RETRY polls (HTTP 200 or 202) keep the step open."""
    agent.script("GET", "/v1/tasks", Reply(200, {"status": "PENDING"}),
                 Reply(202, {"status": "STARTED"}), Reply(200, {"status": "PROGRESS"}),
                 Reply(202, {"status": "RETRY"}))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert leave(engine, workflow_id, "fetching") == "analyzing"
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count, task.error_details_json) == ("succeeded", 0, None)
    assert task.external_task_id == agent.by_key[f"{workflow_id}_wcha"]
    polls = sent(agent, "/v1/tasks")
    assert len(polls) == 5
    assert {p["path"] for p in polls} == {f"/v1/tasks/{task.external_task_id}"}


def test_poll__many_pending_polls_on_every_step(store, make_agent):
    """An agent that answers 202 PENDING three times per task still completes every step."""
    agent = make_agent(pending_polls=3)
    engine = engine_for(store, agent)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert drive(engine, workflow_id) == "completed"
    polled = [t for t in store.get_tasks(workflow_id) if t.agent_name != "ASF"]
    assert len(polled) == 5
    assert all(t.status == "succeeded" and t.external_task_id for t in polled)
    assert len(sent(agent, "/v1/tasks")) == 5 * 4
    assert engine.get_workflow(workflow_id)["warnings"] == []


def test_submit__replay_of_a_completed_key_is_success(engine, agent, store):
    """A 200 SUCCESS replay of a key the agent already finished is the step's result."""
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    key = f"{workflow_id}_wcha"
    earlier = seed(agent, "/harvest", key, finish=True)
    assert engine.advance(workflow_id) == "analyzing"
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.external_task_id, task.error_details_json) == (
        "succeeded", earlier, None)
    assert agent.work[key] == 2  # the seed and CPOA's one submit, answered by the replay
    assert len(sent(agent, "/v1/tasks")) == 1  # only the seeding poll


def test_submit__409_without_task_is_submitted_again_later(engine, agent, store):
    """A 409 with no task id leaves the item open; the next advance submits the same key."""
    agent.script("POST", "/harvest", Reply(409, {"error": "key is being processed"}))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert engine.advance(workflow_id) == "fetching"
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.external_task_id, task.error_details_json) == ("pending", None, None)
    assert task.next_poll_at is not None
    assert engine.get_workflow(workflow_id)["error"] is None
    assert leave(engine, workflow_id, "fetching") == "analyzing"
    keys = [r["headers"]["x-idempotency-key"] for r in sent(agent, "/harvest")]
    assert keys == [f"{workflow_id}_wcha"] * 2
    assert step_task(store, workflow_id, "fetching").status == "succeeded"


def test_submit__409_with_task_keeps_polling_it(engine, agent, store):
    """A 409 naming the running task makes CPOA poll that task instead of submitting again."""
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    key = f"{workflow_id}_wcha"
    running = seed(agent, "/harvest", key, finish=False)
    agent.script("POST", "/harvest", Reply(409, {"task_id": running,
                                                 "status_url": f"/v1/tasks/{running}"}))
    assert engine.advance(workflow_id) == "fetching"
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.external_task_id) == ("submitted", running)
    assert task.status_url == f"{agent.url}/v1/tasks/{running}"
    assert leave(engine, workflow_id, "fetching") == "analyzing"
    assert len(sent(agent, "/harvest")) == 2  # the seed and CPOA's one submit
    assert [p["path"] for p in sent(agent, "/v1/tasks")] == [f"/v1/tasks/{running}"]
    assert agent.work[key] == 2


# -- transient errors ----------------------------------------------------------------------------

def test_submit__503_then_ok_is_retried_with_backoff_in_one_advance(store, agent):
    """Two 503 answers are retried inside one advance after factor*2**n seconds."""
    engine = engine_for(store, agent, CPOA_SERVICE_RETRY_COUNT="3",
                        CPOA_SERVICE_RETRY_BACKOFF_FACTOR="0.05")
    agent.script("POST", "/harvest", Reply(503), Reply(503, {"error": "overloaded"}))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert engine.advance(workflow_id) == "fetching"
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count) == ("submitted", 0)
    assert task.external_task_id == agent.by_key[f"{workflow_id}_wcha"]
    at = [r["at"] for r in sent(agent, "/harvest")]
    assert len(at) == 3
    assert at[1] - at[0] >= 0.05 and at[2] - at[1] >= 0.1
    assert leave(engine, workflow_id, "fetching") == "analyzing"


@pytest.mark.parametrize("attempts", [1, 3])
def test_submit__503_on_every_attempt_stays_working(store, agent, attempts):
    """When all CPOA_SERVICE_RETRY_COUNT attempts get 503 the step waits, then succeeds later."""
    engine = engine_for(store, agent, CPOA_SERVICE_RETRY_COUNT=str(attempts))
    agent.script("POST", "/harvest", *[Reply(503)] * attempts)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert engine.advance(workflow_id) == "fetching"
    assert len(sent(agent, "/harvest")) == attempts
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count, task.external_task_id) == ("pending", 1, None)
    assert task.error_details_json == {"reason": "WCHA answered HTTP 503", "transient": True}
    status = engine.get_workflow(workflow_id)
    assert (status["state"], status["error"]) == ("fetching", None)
    assert leave(engine, workflow_id, "fetching") == "analyzing"
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count, task.error_details_json) == ("succeeded", 1, None)
    assert len(sent(agent, "/harvest")) == attempts + 1


def test_submit__429_retry_after_is_honoured(engine, agent, store):
    """A 429 with ``Retry-After: 0.1`` is retried no sooner than 0.1 s later, then succeeds."""
    agent.script("POST", "/harvest", Reply(429, {"error": "slow down"},
                                           headers={"Retry-After": "0.1"}))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert engine.advance(workflow_id) == "fetching"
    first, second = sent(agent, "/harvest")
    assert second["at"] - first["at"] >= 0.1
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count, task.error_details_json) == ("submitted", 0, None)
    assert leave(engine, workflow_id, "fetching") == "analyzing"


def test_submit__long_retry_after_is_scheduled_not_slept(engine, agent, store):
    """A 429 asking for 30 s ends the advance at once and schedules the next try 30 s later."""
    agent.script("POST", "/harvest", Reply(429, headers={"Retry-After": "30"}))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert engine.advance(workflow_id) == "fetching"
    assert len(sent(agent, "/harvest")) == 1
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count) == ("pending", 1)
    assert task.error_details_json["reason"] == "WCHA answered HTTP 429"
    wait = (task.next_poll_at - task.first_submitted_at).total_seconds()
    assert 29 <= wait <= 31
    assert engine.advance(workflow_id) == "fetching"  # not due yet: no request
    assert len(sent(agent, "/harvest")) == 1


def test_poll__500_with_failure_body_fails_with_the_agent_message(engine, agent, store):
    """A poll answered 500 with ``{status: FAILURE, error}`` fails the step with that error."""
    agent.script("GET", "/v1/tasks", Reply(500, {
        "status": "FAILURE", "error": {"message": "robots.txt forbids crawling",
                                       "error_code": "E_ROBOTS"}}))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    reason = failed_with(engine, workflow_id, "fetching")
    assert reason == "fetching: WCHA task failed: robots.txt forbids crawling (E_ROBOTS)"
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count) == ("failed", 0)
    assert task.external_task_id == agent.by_key[f"{workflow_id}_wcha"]
    assert task.error_details_json == {"status_code": 500, "reason": reason[len("fetching: "):]}
    assert len(sent(agent, "/v1/tasks")) == 1  # a task failure is not retried


def test_poll__5xx_without_parseable_body_is_transient(engine, agent, store):
    """Polls answered 500 (empty), 502 (HTML) and 500 (text) are retried; the step completes."""
    agent.script("GET", "/v1/tasks", Reply(500), Reply(502, "<html>bad gateway</html>"),
                 Reply(500, "Internal Server Error"))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert engine.advance(workflow_id) == "fetching"
    wait_until(lambda: engine.advance(workflow_id) and len(sent(agent, "/v1/tasks")) >= 3)
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count) == ("submitted", 1)
    assert task.error_details_json == {"reason": "WCHA answered HTTP 500", "transient": True}
    assert engine.get_workflow(workflow_id)["state"] == "fetching"
    assert leave(engine, workflow_id, "fetching") == "analyzing"
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count, task.error_details_json) == ("succeeded", 1, None)
    assert len(sent(agent, "/v1/tasks")) == 4


# -- timeouts ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_poll__never_finishing_task_fails_after_the_polling_timeout(store, make_agent):
    """A task that stays PENDING fails the step once CPOA_WCHA_POLLING_TIMEOUT_SECONDS pass."""
    agent = make_agent(pending_polls=10**6)
    engine = engine_for(store, agent, CPOA_WCHA_POLLING_TIMEOUT_SECONDS="0.5")
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    reason = failed_with(engine, workflow_id, "fetching")
    assert reason == "fetching: WCHA task did not finish within its 0.5 s polling timeout"
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count) == ("failed", 0)
    assert task.external_task_id == agent.by_key[f"{workflow_id}_wcha"]
    assert (task.completed_at - task.first_submitted_at).total_seconds() >= 0.5
    assert len(sent(agent, "/v1/tasks")) >= 2


@pytest.mark.slow
def test_submit__unavailable_until_the_polling_timeout_fails_with_last_error(store, agent):
    """An agent answering 503 to every submit fails the step at its timeout with the last error."""
    engine = engine_for(store, agent, CPOA_WCHA_POLLING_TIMEOUT_SECONDS="0.5",
                        CPOA_SERVICE_RETRY_COUNT="1")
    agent.script("POST", "/harvest", *[Reply(503)] * 1000)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    reason = failed_with(engine, workflow_id, "fetching")
    assert reason == ("fetching: WCHA task did not finish within its 0.5 s polling timeout "
                      "(last error: WCHA answered HTTP 503)")
    task = step_task(store, workflow_id, "fetching")
    attempts = len(sent(agent, "/harvest"))
    assert attempts >= 2
    assert (task.status, task.retry_count, task.external_task_id) == ("failed", attempts, None)


@pytest.mark.slow
@pytest.mark.parametrize("method,route", [("POST", "/harvest"), ("GET", "/v1/tasks")])
def test_request__slower_than_its_timeout_is_transient(store, agent, method, route):
    """A submit or poll answered after the request timeout is retried, never a failure."""
    engine = engine_for(store, agent, lambda s: AgentClient(s, submit_timeout_s=0.2,
                                                            poll_timeout_s=0.2),
                        CPOA_SERVICE_RETRY_COUNT="2")
    agent.script(method, route, *[Reply(503, delay_s=0.5)] * 2)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    wait_until(lambda: engine.advance(workflow_id) and len(sent(agent, route, method)) >= 2)
    task = step_task(store, workflow_id, "fetching")
    assert task.retry_count == 1 and task.status in ("pending", "submitted")
    assert task.error_details_json == {"reason": "WCHA did not answer within 0.2 s",
                                       "transient": True}
    assert engine.get_workflow(workflow_id)["error"] is None
    assert leave(engine, workflow_id, "fetching") == "analyzing"
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count, task.error_details_json) == ("succeeded", 1, None)
    assert len(sent(agent, route, method)) == 3


# -- permanent rejections ------------------------------------------------------------------------

@pytest.mark.parametrize("code", [400, 404, 413, 422])
def test_submit__client_error_fails_at_once_with_the_body(engine, agent, store, code):
    """A 4xx answer to the submit fails the step at once with the agent's body, truncated."""
    agent.script("POST", "/harvest", Reply(code, {"error": "topic rejected: " + "x" * 2000}))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert engine.advance(workflow_id) == "failed"
    reason = engine.get_workflow(workflow_id)["error"]
    assert reason.startswith(
        f'fetching: WCHA rejected the request with HTTP {code}: {{"error": "topic rejected: xx')
    assert reason.endswith("x…") and len(reason) < 600
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count, task.external_task_id) == ("failed", 0, None)
    assert task.error_details_json["status_code"] == code
    assert task.error_details_json["reason"] == reason[len("fetching: "):]
    assert len(sent(agent, "/harvest")) == 1 and sent(agent, "/v1/tasks") == []


# -- headers and idempotency keys ----------------------------------------------------------------

def test_headers__every_request_names_the_workflow_and_its_step_key(engine, agent):
    """Every submit, poll and notify carries X-Workflow-ID and ``<workflow_id>_<step>``."""
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert drive(engine, workflow_id) == "completed"
    base = str(workflow_id)
    key_of_task = {task_id: key for key, task_id in agent.by_key.items()}
    assert len(agent.requests) == 11  # five submits, five polls, one notification
    for request in agent.requests:
        headers = request["headers"]
        assert headers["x-workflow-id"] == base
        if request["method"] == "POST":
            assert headers["x-idempotency-key"] == f"{base}_{STEP_KEYS[request['path']]}"
            assert headers["content-type"] == "application/json"
        else:
            assert headers["x-idempotency-key"] == key_of_task[request["path"].split("/")[-1]]
    assert [r["path"] for r in agent.requests if r["method"] == "POST"] == list(STEP_KEYS)


def test_headers__caller_key_is_not_the_base_of_downstream_keys(engine, agent):
    """With a caller idempotency key, the downstream keys are still ``<workflow_id>_<step>``:
    the caller's key dedupes the start of the workflow, not the agents' work."""
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"}, idempotency_key="ep-42")
    assert drive(engine, workflow_id) == "completed"
    posts = [r for r in agent.requests if r["method"] == "POST"]
    assert [r["headers"]["x-idempotency-key"] for r in posts] == [
        f"{workflow_id}_{step}" for step in STEP_KEYS.values()]
    assert {r["headers"]["x-workflow-id"] for r in agent.requests} == {str(workflow_id)}


def test_headers__snippet_keys_name_the_topic_and_the_snippet(engine, agent):
    """Snippet keys are ``<base>_tda``, ``<base>_sca_<topic_id>``, ``<base>_iga_<snippet_id>``."""
    workflow_id = engine.start_workflow("snippets", {"query": "ocean", "limit": 2},
                                        idempotency_key="batch-7")
    assert drive(engine, workflow_id) == "completed"
    keys = sorted(r["headers"]["x-idempotency-key"] for r in agent.requests
                  if r["method"] == "POST")
    base = str(workflow_id)
    assert keys == [f"{base}_iga_sn-t0", f"{base}_iga_sn-t1", f"{base}_sca_t0",
                    f"{base}_sca_t1", f"{base}_tda"]
    by_item = {t.item_key: t.idempotency_key for t in engine.store.get_tasks(workflow_id)
               if t.step == "crafting"}
    assert by_item == {"t0": f"{base}_sca_t0", "t1": f"{base}_sca_t1"}


@pytest.mark.parametrize("caller_key,base", [
    ("\u30a8\u30d4\u30bd\u30fc\u30c9-1", "%E3%82%A8%E3%83%94%E3%82%BD%E3%83%BC%E3%83%89-1"),
    ("ep\n42", "ep%0A42"), ("50%off", "50%25off"), ("spring show", "spring show")],
    ids=["non_ascii", "newline", "percent", "space"])
def test_headers__legacy_key_base_unfit_for_a_header_is_percent_encoded(engine, agent, store,
                                                                        db, caller_key, base):
    """A workflow started before schema version 5 keeps its caller key as the base of its
    keys; characters a header cannot carry are sent percent-encoded."""
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"}, idempotency_key=caller_key)
    db.execute("UPDATE workflow_instances SET key_base = idempotency_key WHERE workflow_id = %s",
               (workflow_id,))
    assert drive(engine, workflow_id) == "completed"
    posts = [r for r in agent.requests if r["method"] == "POST"]
    assert [r["headers"]["x-idempotency-key"] for r in posts] == [
        f"{base}_{step}" for step in STEP_KEYS.values()]
    assert step_task(store, workflow_id, "fetching").idempotency_key == f"{base}_wcha"


def test_headers__non_ascii_topic_id_is_percent_encoded(engine, agent, store):
    """A topic id such as ``\u6771\u4eac`` reaches SCA as ``<base>_sca_%E6%9D%B1%E4%BA%AC``."""
    topic = {"topic_id": "\u6771\u4eac", "title_suggestion": "Tokyo", "summary": "s",
             "keywords": [], "relevance_score": 1.0}
    agent.set_result("/discover_topics", {"discovered_topics": [topic]})
    workflow_id = engine.start_workflow("snippets", {"query": "cities", "limit": 1})
    assert drive(engine, workflow_id) == "completed"
    [craft] = sent(agent, "/craft_snippet")
    assert craft["headers"]["x-idempotency-key"] == f"{workflow_id}_sca_%E6%9D%B1%E4%BA%AC"
    assert craft["body"]["topic_id"] == "\u6771\u4eac"
    [task] = [t for t in store.get_tasks(workflow_id) if t.step == "crafting"]
    assert (task.item_key, task.status) == ("\u6771\u4eac", "succeeded")


def test_poll__409_without_body_keeps_polling(engine, agent, store):
    """A poll answered 409 with no body means the agent is still busy with the key."""
    agent.script("GET", "/v1/tasks", Reply(409), Reply(409))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert drive(engine, workflow_id) == "completed"
    assert len(sent(agent, "/v1/tasks")) == 5 + 2  # one poll per polled step, two repeated


def test_submit__trickling_answer_is_cut_at_the_request_deadline(store, agent):
    """An answer whose body trickles in a byte at a time (each byte well within the per-read
    timeout) is cut at the request's whole deadline and reported as a timeout."""
    settings = settings_module.from_env(agent_env(agent.url, CPOA_SERVICE_RETRY_COUNT="1"))
    client = AgentClient(settings, submit_timeout_s=1.0)
    body = b'{"status": "SUCCESS", "result": {"status": "success", "content": "slow"}}'
    agent.script("POST", "/harvest", Reply(200, body, trickle_s=0.05))  # 3.6 s in all
    with pytest.raises(errors.AgentTimeout, match="within 1 s"):
        client.submit("WCHA", agent.url, "/harvest", {"topic": "t"}, idempotency_key="k",
                      workflow_id="w")
    assert client.submit("WCHA", agent.url, "/harvest", {"topic": "t"}, idempotency_key="k2",
                         workflow_id="w").outcome == "accepted"  # the pool is usable again


def test_submit__oversized_503_page_is_still_transient(store, agent):
    """A 503 whose error page exceeds the body limit is retried, not failed as malformed."""
    engine = engine_for(store, agent, CPOA_MAX_RESPONSE_BYTES="2048")
    agent.script("POST", "/harvest", Reply(503, b"x" * 10_000))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert drive(engine, workflow_id) == "completed"
    assert step_task(store, workflow_id, "fetching").status == "succeeded"
