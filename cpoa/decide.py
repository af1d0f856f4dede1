"""The decision of one step: pure functions from a snapshot to an action, and to an outcome.

A step of a workflow is *decide, act, record*. :func:`next_action` looks at the workflow, its
step's task rows and the database clock and says what to do: call an agent for one item
(:class:`Call`), wait until a poll is due (:class:`Wait`), or end the step (:class:`Finish`).
The engine performs a Call (one request), then :func:`after_call` decides again with the
answer folded in, and :func:`outcome` turns the final action into the one write the store
makes. No I/O here: every rule of a step (fan-out, warnings, timeouts, quarantine) is decided
by these functions and unit-tested without a database or a network.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from cpoa import defaults, events, machine, models, reports, steps
from cpoa.settings import AgentSettings


@dataclasses.dataclass(frozen=True)
class Call:
    """Make one request for one item: submit it, poll it or notify (see :mod:`cpoa.attempt`)."""

    item_key: str
    item: Any
    task: models.Task


@dataclasses.dataclass(frozen=True)
class Wait:
    """Nothing to do before ``run_in_s`` (a poll is not due yet); ``task`` was just updated,
    and ``ui_event`` forwards the agent's live progress (:mod:`cpoa.reports`)."""

    run_in_s: float
    task: models.Task | None = None
    ui_event: models.UIEvent | None = None


@dataclasses.dataclass(frozen=True)
class Finish:
    """The step is over: ``verdict`` moves the workflow on (or fails it)."""

    verdict: steps.Verdict
    task: models.Task | None = None


Action = Call | Wait | Finish


REVIEW_DEADLINE_REASON = ("review deadline passed: nobody approved or rejected the script "
                          "within CPOA_REVIEW_TIMEOUT_SECONDS")


def next_action(workflow: models.Workflow, tasks: Mapping[str, models.Task],
                now: datetime.datetime, max_recoveries: int,
                paused: Mapping[str, datetime.datetime] | None = None) -> Action:
    """What one step of ``workflow`` does now.

    Args:
        workflow: The leased workflow.
        tasks: Its current step's task rows by item key.
        now: The database's clock.
        max_recoveries: Lease deaths in one state before the workflow is quarantined.
        paused: Agents whose new submits are paused, until when: a submit to one waits.
    """
    if workflow.recovery_attempts > max_recoveries:
        reason = (f"quarantined: the lease expired {workflow.recovery_attempts} times in state "
                  f"{workflow.state} (a worker crashed or hung each time)")
        return Finish(steps.Verdict(False, reason=reason))
    if workflow.state in machine.WAITING_STATES:  # due only at its deadline: it has passed
        if workflow.next_run_at is not None and now < workflow.next_run_at:
            return Wait((workflow.next_run_at - now).total_seconds())
        return Finish(steps.Verdict(False, reason=REVIEW_DEADLINE_REASON))
    step = steps.step_for(workflow)
    items = step.items(workflow)
    open_items = [(k, it) for k, it in items if k not in tasks or not tasks[k].is_finished]
    if not open_items:
        return Finish(step.conclude(workflow, [tasks[k] for k, _ in items]))
    due = [(k, it) for k, it in open_items if k not in tasks or _is_due(tasks[k], now)]
    if not due:
        return Wait(_seconds_until(tasks.values(), now))
    calls = [Call(k, it, tasks.get(k) or new_task(workflow, step, k)) for k, it in due]
    until = (paused or {}).get(step.agent)
    if until is not None and until > now:  # its new submits wait; its polls go on
        held = [c for c in calls if is_submit(step, c.task) and not _past_deadline(c.task, now)]
        calls = [c for c in calls if c not in held]
        if not calls:  # until the pause ends, or an item's deadline comes first
            ends = [until, *(c.task.poll_deadline_at for c in held if c.task.poll_deadline_at)]
            return Wait((min(ends) - now).total_seconds())
    return calls[0]


def _past_deadline(task: models.Task, now: datetime.datetime) -> bool:
    """An item at its polling deadline makes its last request even to a paused agent: the
    answer decides it (a failure fails it on time, not after the pause)."""
    return task.poll_deadline_at is not None and task.poll_deadline_at <= now


def is_submit(step: steps.Step, task: models.Task) -> bool:
    """Whether the request for ``task`` submits work to the agent (not a poll of a task it
    accepted, not a notification)."""
    return not step.notified and not (task.status == "submitted" and task.status_url)


def agent_report(step: steps.Step, before: models.Task, after: models.Task,
                 failing: Mapping[str, Any]) -> models.AgentReport | None:
    """What the request that turned ``before`` into ``after`` tells of the step's agent.

    A request with no usable answer (attempt.settle counted a retry) is a failure for the
    breaker, unless the agent asked for time with Retry-After: on a submit that pauses its new
    submits (a 429 or 503), on a poll it only delays that poll. An answer is news only from an
    agent in ``failing`` (the lease's paused or failing agents): it closes the breaker.
    """
    if step.notified:
        return None
    if after.retry_count <= before.retry_count:
        return models.AgentReport(step.agent, ok=True) if step.agent in failing else None
    details = after.error_details_json or {}
    if details.get("retry_after_s") is None or not details.get("status_code"):
        return models.AgentReport(step.agent, ok=False)
    if not is_submit(step, before):
        return None
    return models.AgentReport(step.agent, ok=False, pause_s=details["retry_after_s"],
                              reason=str(details["status_code"]))


def admission(step: steps.Step, call: Call,
              agent: AgentSettings) -> AgentSettings | None:
    """The agent's limits when ``call`` is a submit to an agent with a cap or a rate limit
    (it must hold one of the agent's slots, then its place in the rate, first); None when it
    may go at once (no limit, a poll of a task the agent accepted, or a notification)."""
    limited = agent.max_in_flight is not None or agent.rate_limit is not None
    return agent if limited and is_submit(step, call.task) else None


def hands_over_slot(workflow: models.Workflow, outcome: models.Outcome,
                    agent_settings: Callable[[str], AgentSettings]) -> bool:
    """Whether ``outcome`` frees a slot of a capped agent (the step ends, or its item's task
    finished): its write then gives up the lease (the workflow due at once) rather than keep
    it, so that the waiter the slot goes to is claimed on this worker's free thread before
    this workflow's next steps, not after them."""
    step = steps.STEPS[workflow.kind].get(workflow.state)
    if step is None or step.notified or agent_settings(step.agent).max_in_flight is None:
        return False
    return outcome.is_transition or (outcome.task is not None and outcome.task.is_finished)


def after_call(workflow: models.Workflow, tasks: Mapping[str, models.Task],
               task: models.Task, now: datetime.datetime) -> Wait | Finish:
    """What the step records once the call for ``task``'s item came back as ``task``."""
    step = steps.step_for(workflow)
    items = step.items(workflow)
    progress = reports.for_step(workflow, tasks.get(task.item_key), task)
    tasks = {**tasks, task.item_key: task}
    if any(k not in tasks for k, _ in items):
        return Wait(0.0, task, progress)  # untouched items are due now
    if any(not tasks[k].is_finished for k, _ in items):
        return Wait(_seconds_until(tasks.values(), now), task, progress)
    if len(items) == 1 and not task.item_key:  # the result itself is in the context
        task = task.evolve(output_result_summary_json=summary(task.output_result_summary_json))
    return Finish(step.conclude(workflow, [tasks[k] for k, _ in items]), task)


def outcome(workflow: models.Workflow, action: Wait | Finish,
            review_timeout_s: float = defaults.REVIEW_TIMEOUT_S,
            report: models.AgentReport | None = None) -> models.Outcome:
    """The write that records ``action``: progress in the state, or a transition, with what
    the step's request told of its agent (:func:`agent_report`)."""
    if isinstance(action, Wait):
        return models.Outcome.progress(action.task, action.run_in_s, report, action.ui_event)
    return dataclasses.replace(verdict_outcome(workflow, action.verdict, action.task,
                                               review_timeout_s=review_timeout_s),
                               agent_report=report)


def due_in(dest: str, review_timeout_s: float) -> float:
    """Seconds from entering ``dest`` until it is due: a waiting state's deadline, else 0."""
    return review_timeout_s if dest in machine.WAITING_STATES else 0.0


def verdict_outcome(workflow: models.Workflow, verdict: steps.Verdict,
                    task: models.Task | None = None, *,
                    review_timeout_s: float = defaults.REVIEW_TIMEOUT_S) -> models.Outcome:
    """The transition a step's verdict makes: ``step_done`` on success, else ``fail``."""
    trigger = "step_done" if verdict.ok else "fail"
    decision = machine.decide(workflow.kind, workflow.state, trigger, workflow.failed_from_state,
                              workflow.wants_review)
    reason = f"{workflow.state}: {verdict.reason}" if verdict.reason else None
    return models.Outcome.transition(
        trigger, decision.state, task=task, failed_from_state=decision.failed_from_state,
        run_in_s=due_in(decision.state, review_timeout_s),
        context_updates=verdict.context, warnings=verdict.warnings, error_message=reason,
        ui_event=events.entered(workflow, decision.state,
                                failed_from_state=decision.failed_from_state, error=reason,
                                warnings=verdict.warnings))


def new_task(workflow: models.Workflow, step: steps.Step, item_key: str) -> models.Task:
    """The task row of an item that has had no request yet in this step attempt. Its id is
    the same each time the step attempt is made (a worker that died before recording the
    request leaves its redo the same id: a callback to the first request's URL finds it)."""
    task_id = uuid.uuid5(workflow.workflow_id,
                         f"{workflow.state}/{item_key}/{workflow.retry_count}")
    return models.Task(task_id=task_id, workflow_id=workflow.workflow_id,
                       agent_name=step.agent, step=workflow.state, item_key=item_key,
                       attempt=workflow.retry_count,
                       idempotency_key=step.idempotency_key(workflow, item_key))


SUMMARY_TEXT_CHARS = 200


def summary(value: Any) -> Any:
    """A small picture of a large result for the task row (the result itself is in context)."""
    if isinstance(value, Mapping):
        return {k: summary(v) for k, v in value.items()}
    if isinstance(value, str) and len(value) > SUMMARY_TEXT_CHARS:
        return f"<{len(value)} characters>"
    if isinstance(value, list) and len(value) > 3:
        return f"<{len(value)} items>"
    return value


def _is_due(task: models.Task, now: datetime.datetime) -> bool:
    return task.next_poll_at is None or task.next_poll_at <= now


def _seconds_until(tasks: Any, now: datetime.datetime) -> float:
    polls = [t.next_poll_at for t in tasks if not t.is_finished and t.next_poll_at is not None]
    return max(0.0, (min(polls) - now).total_seconds()) if polls else 0.0
