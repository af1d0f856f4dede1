"""One request for one task item, and what its answer makes of the task row.

:func:`call` is the effect: at most one logical agent request (the client retries transient
errors inside it, bounded). :func:`begin` and :func:`settle` are pure: they stamp the item's
polling deadline, and fold the answer (a reply or an agent error) into the task row —
succeeded with its result, failed with a reason, or still open with the time of its next poll.
Nothing here sleeps a polling interval. (Counters in :mod:`cpoa.metrics` are bumped on the way;
they never steer a decision.)
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from cpoa import defaults, errors, logs, metrics, models, reports
from cpoa.agents import client as agents
from cpoa.agents import results
from cpoa.settings import Settings
from cpoa.steps import Step

Answer = agents.Reply | errors.AgentError
"""What a request came back with: the agent's reply, or the error it ended in."""


@dataclasses.dataclass(frozen=True)
class Timing:
    """How an item of a step is paced.

    Attributes:
        interval_s: Pause before the next poll, or before the next try after a transient
            failure.
        timeout_s: From the first request until the item fails with a timeout.
        honour_retry_after: A transient failure's Retry-After sets the next try.
        adaptive: Polls of a submitted task follow :func:`poll_pause` (short first, growing
            to ``interval_s``); otherwise every pause is ``interval_s``.
        progress_every_s: Least time between two live-progress events of the item
            (:func:`cpoa.reports.fold`).
    """

    interval_s: float
    timeout_s: float
    honour_retry_after: bool
    adaptive: bool = False
    progress_every_s: float = defaults.PROGRESS_EVENT_INTERVAL_S


def timing(settings: Settings, step: Step) -> Timing:
    """The pacing of ``step``'s items under ``settings``."""
    if step.notified:  # no polling: transient failures are retried this long, at our pace
        return Timing(defaults.NOTIFY_RETRY_S, settings.asf_notify_timeout_s, False)
    agent = settings.agent(step.agent)
    return Timing(agent.poll_interval_s, agent.poll_timeout_s, True, adaptive=True,
                  progress_every_s=settings.progress_event_interval_s)


def poll_pause(age_s: float, interval_s: float) -> float:
    """Adaptive polling: the pause before the next poll of a task ``age_s`` seconds after its
    first submit, for an agent whose polling interval is ``interval_s`` (I).

    ``pause = min(I, max(f * I, (g - 1) * age))`` with f = ``POLL_FIRST_FRACTION`` (0.2) and
    g = ``POLL_GROWTH`` (5): the next poll comes at g times the task's age (poll times grow
    geometrically), never sooner than f * I after the last one, never later than I. Polls then
    come at 0.2 I, I, 2 I, 3 I... after the submit: a task finishing at d <= 0.2 I is seen
    0.2 I after its submit at the latest (2 s for WCHA's 10 s, 1 s for the 5 s agents), and a
    task lasting n * I costs n + 1 polls where a fixed interval costs n (2 instead of 1 for a
    task lasting the full interval, 31 instead of 30 for one lasting WCHA's 300 s timeout).
    """
    return min(interval_s, max(defaults.POLL_FIRST_FRACTION * interval_s,
                               (defaults.POLL_GROWTH - 1.0) * max(0.0, age_s)))


def begin(task: models.Task, now: datetime.datetime, pace: Timing) -> models.Task:
    """Stamps the first request's time and the item's deadline (once per item)."""
    if task.first_submitted_at is not None:
        return task
    return task.evolve(first_submitted_at=now,
                       poll_deadline_at=now + datetime.timedelta(seconds=pace.timeout_s))


def act(client: agents.AgentClient, settings: Settings, step: Step, workflow: models.Workflow,
        task: models.Task, item: Any, now: Callable[[], datetime.datetime],
        log: logging.LoggerAdapter, callback_url: str | None = None) -> models.Task:
    """Moves one item forward by one request: :func:`begin`, :func:`call`, :func:`settle`.

    Args:
        now: The clock (the database's, carried forward by this process's monotonic clock).
        callback_url: Sent with a submit as ``X-Callback-URL`` (see :mod:`cpoa.callbacks`).

    Returns:
        The updated task row (``status`` succeeded, failed, pending or submitted).
    """
    pace = timing(settings, step)
    task, answer = call(client, settings, step, workflow, begin(task, now(), pace), item, log,
                        callback_url)
    return settle(step, task, answer, now(), pace, report(answer, log))


def report(answer: Answer, log: logging.LoggerAdapter) -> reports.Report | None:
    """The live progress of a pending reply, checked; what is ignored is logged (a warning:
    a bad ``progress`` or ``partial`` never fails the step)."""
    if not isinstance(answer, agents.Reply) or (answer.progress is None
                                                and answer.partial is None):
        return None
    checked, problems = reports.read(answer.progress, answer.partial)
    for problem in problems:
        log.warning("agent progress ignored: %s", problem,
                    extra={"action": "progress_ignored", "problem": problem})
    return checked


def call(client: agents.AgentClient, settings: Settings, step: Step, workflow: models.Workflow,
         task: models.Task, item: Any, log: logging.LoggerAdapter,
         callback_url: str | None = None) -> tuple[models.Task, Answer]:
    """Makes the item's one request: a notification, a poll of a submitted task, or a submit.

    Returns:
        The task (with the request body it sent) and the answer.
    """
    if task.external_task_id:
        log = log.bind(agent_task_id=task.external_task_id)
    base_url = "" if step.notified else settings.agent(step.agent).base_url
    began = time.perf_counter()
    try:
        if step.notified:
            body = step.request(workflow, item)
            client.notify(step.agent, settings.asf_notification_url, body,
                          workflow_id=str(workflow.workflow_id),
                          idempotency_key=task.idempotency_key, log=log)
            return task.evolve(input_params_json=body), agents.Reply("done",
                                                                     result={"notified": True})
        if task.status == "submitted" and task.status_url:
            return task, client.poll(step.agent, base_url, task.status_url,
                                     workflow_id=str(workflow.workflow_id),
                                     idempotency_key=task.idempotency_key, log=log)
        task = task.evolve(input_params_json=task.input_params_json or step.request(workflow, item))
        return task, client.submit(step.agent, base_url, step.path, task.input_params_json,
                                   idempotency_key=task.idempotency_key,
                                   workflow_id=str(workflow.workflow_id),
                                   callback_url=callback_url, log=log)
    except errors.AgentError as exc:
        metrics.agent_error(step.agent, metrics.error_kind(exc))
        return task, exc
    finally:
        metrics.STEP_DURATION.labels(step.agent).observe(time.perf_counter() - began)


def settle(step: Step, task: models.Task, answer: Answer, now: datetime.datetime,
           pace: Timing, progress: reports.Report | None = None) -> models.Task:
    """The task row after ``answer``: succeeded, failed, or open with its next poll time (and
    the agent's live ``progress`` folded in, :func:`cpoa.reports.fold`)."""
    if isinstance(answer, errors.AgentUnavailable):  # tried again later, until the deadline
        honour = pace.honour_retry_after and answer.retry_after is not None
        details = {"reason": str(answer), "transient": True}
        if honour and answer.status_code in defaults.AGENT_PAUSE_STATUSES:
            details.update(status_code=answer.status_code, retry_after_s=answer.retry_after)
        task = task.evolve(retry_count=task.retry_count + 1, error_details_json=details)
        return _open(task, now, answer.retry_after if honour else pace.interval_s, step)
    if isinstance(answer, errors.AgentError):
        return failed(task, str(answer), now, status_code=answer.status_code)
    if answer.outcome == "done":  # a synchronous answer or a replay may name its task too
        task = task.evolve(external_task_id=answer.task_id or task.external_task_id)
        return _succeeded(step, task, answer.result, now)
    if answer.outcome in ("accepted", "pending") or (
            answer.outcome == "busy" and (answer.status_url or task.status_url)):
        task = task.evolve(status="submitted",
                           external_task_id=answer.task_id or task.external_task_id,
                           status_url=answer.status_url or task.status_url,
                           progress_json=reports.fold(task.progress_json, progress, now,
                                                      pace.progress_every_s))
        return _open(task, now, _next_poll_in(task, answer, now, pace), step)
    if answer.outcome == "busy":  # 409 with no task to poll: submit the key again later
        return _open(task, now, _next_poll_in(task, answer, now, pace), step)
    # "lost": the agent forgot the task; submitting the same key again is safe.
    return _open(task.evolve(status="pending", external_task_id=None, status_url=None),
                 now, 0.0, step)


def _next_poll_in(task: models.Task, answer: agents.Reply, now: datetime.datetime,
                  pace: Timing) -> float:
    """Seconds until an open task is polled again: the agent's Retry-After when it sent one
    (at least ``POLL_MIN_PAUSE_S``), else the adaptive pause, else the interval."""
    if pace.honour_retry_after and answer.retry_after is not None:
        return max(defaults.POLL_MIN_PAUSE_S, answer.retry_after)
    if not pace.adaptive or task.first_submitted_at is None:
        return pace.interval_s
    return poll_pause((now - task.first_submitted_at).total_seconds(), pace.interval_s)


def _succeeded(step: Step, task: models.Task, result: Any, at: datetime.datetime) -> models.Task:
    try:
        if isinstance(result, dict) and results.business_status(result, step.agent) == "skipped" \
                and step.skipped_is_failure:
            message = result.get("message") or "no reason given"
            return failed(task, f"{step.agent} skipped the work: {logs.clip(str(message), 300)}", at)
        kept = step.validate(result)
    except errors.AgentError as exc:  # a reply that breaks the contract, or a business error
        metrics.agent_error(step.agent, metrics.error_kind(exc))
        return failed(task, str(exc), at)
    return task.evolve(status="succeeded", output_result_summary_json=kept, completed_at=at,
                       error_details_json=None, next_poll_at=None)


def failed(task: models.Task, reason: str, at: datetime.datetime,
           status_code: int | None = None) -> models.Task:
    """Returns the task marked failed with a reason."""
    detail: dict[str, Any] = {"reason": reason}
    if status_code is not None:
        detail["status_code"] = status_code
    return task.evolve(status="failed", error_details_json=detail, completed_at=at,
                       next_poll_at=None)


def _open(task: models.Task, at: datetime.datetime, delay_s: float, step: Step) -> models.Task:
    """The item is still open: poll it after ``delay_s``, unless its deadline has passed."""
    if task.poll_deadline_at is not None and at >= task.poll_deadline_at:
        timeout = (task.poll_deadline_at - task.first_submitted_at).total_seconds()
        last = (task.error_details_json or {}).get("reason")
        reason = f"{step.agent} task did not finish within its {timeout:g} s polling timeout"
        metrics.agent_error(step.agent, "timeout")
        return failed(task, reason + (f" (last error: {last})" if last else ""), at)
    due = at + datetime.timedelta(seconds=max(0.0, delay_s))
    if task.poll_deadline_at is not None:
        due = min(due, task.poll_deadline_at)
    return task.evolve(next_poll_at=due)
