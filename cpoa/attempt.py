"""One action on one task item: submit it, or poll it once; never sleep a polling interval.

``act()`` makes at most one logical agent request (the client retries transient errors inside
it, bounded) and returns the task row as it should now be stored: succeeded with its result,
failed with a reason, or still open with the time of its next poll.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from cpoa import errors, logs, metrics, models
from cpoa.agents import client as agents
from cpoa.agents import results
from cpoa.settings import Settings
from cpoa.steps import Step

logger = logging.getLogger(__name__)
Clock = Callable[[], datetime.datetime]


def act(client: agents.AgentClient, settings: Settings, step: Step, workflow: models.Workflow,
        task: models.Task, item: Any, now: Clock, log: logging.LoggerAdapter) -> models.Task:
    """Moves one item forward by one request.

    Returns:
        The updated task row (``status`` succeeded, failed, pending or submitted).
    """
    began = time.perf_counter()
    try:
        return _act(client, settings, step, workflow, task, item, now, log)
    finally:
        metrics.STEP_DURATION.labels(step.agent).observe(time.perf_counter() - began)


def _act(client: agents.AgentClient, settings: Settings, step: Step, workflow: models.Workflow,
         task: models.Task, item: Any, now: Clock, log: logging.LoggerAdapter) -> models.Task:
    started = now()
    if task.first_submitted_at is None:
        timeout = _timeout_s(settings, step)
        task = task.evolve(first_submitted_at=started,
                           poll_deadline_at=started + datetime.timedelta(seconds=timeout))
    log = log.bind(agent_task_id=task.external_task_id) if task.external_task_id else log
    try:
        if step.agent == "ASF":
            return _notify(client, settings, step, workflow, task, item, now, log)
        if task.status == "submitted" and task.status_url:
            reply = client.poll(step.agent, _base(settings, step), task.status_url,
                                workflow_id=str(workflow.workflow_id),
                                idempotency_key=task.idempotency_key, log=log)
        else:
            body = task.input_params_json or step.request(workflow, item)
            task = task.evolve(input_params_json=body)
            reply = client.submit(step.agent, _base(settings, step), step.path, body,
                                  idempotency_key=task.idempotency_key,
                                  workflow_id=str(workflow.workflow_id), log=log)
        return _after_reply(settings, step, task, reply, now)
    except errors.AgentUnavailable as exc:  # tried again at a later advance, until due
        _count_error(step, exc)
        honour = exc.retry_after is not None and step.agent != "ASF"  # ASF: its own pace
        delay = exc.retry_after if honour else _interval_s(settings, step)
        return _open(task.evolve(retry_count=task.retry_count + 1,
                                 error_details_json={"reason": str(exc), "transient": True}),
                     now(), delay, step)
    except errors.AgentError as exc:
        _count_error(step, exc)
        return failed(task, str(exc), now(), status_code=exc.status_code)


def _count_error(step: Step, exc: errors.AgentError) -> None:
    metrics.agent_error(step.agent, metrics.error_kind(exc))


def _after_reply(settings: Settings, step: Step, task: models.Task, reply: agents.Reply,
                 now: Clock) -> models.Task:
    interval = _interval_s(settings, step)
    if reply.outcome == "done":  # a synchronous answer or a replay may name its task too
        task = task.evolve(external_task_id=reply.task_id or task.external_task_id)
        return _succeeded(step, task, reply.result, now())
    if reply.outcome in ("accepted", "pending"):
        task = task.evolve(status="submitted", external_task_id=reply.task_id or task.external_task_id,
                           status_url=reply.status_url or task.status_url)
        return _open(task, now(), interval, step)
    if reply.outcome == "busy":  # 409: the agent is already working on this key
        if reply.status_url or task.status_url:
            task = task.evolve(status="submitted",
                               external_task_id=reply.task_id or task.external_task_id,
                               status_url=reply.status_url or task.status_url)
        return _open(task, now(), interval, step)
    # "lost": the agent forgot the task; submitting the same key again is safe.
    return _open(task.evolve(status="pending", external_task_id=None, status_url=None),
                 now(), 0.0, step)


def _succeeded(step: Step, task: models.Task, result: Any, at: datetime.datetime) -> models.Task:
    try:
        if isinstance(result, dict) and results.business_status(result, step.agent) == "skipped" \
                and step.skipped_is_failure:
            message = result.get("message") or "no reason given"
            return failed(task, f"{step.agent} skipped the work: {logs.clip(str(message), 300)}", at)
        kept = step.validate(result)
    except errors.AgentError as exc:  # a reply that breaks the contract, or a business error
        _count_error(step, exc)
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


def _notify(client: agents.AgentClient, settings: Settings, step: Step,
            workflow: models.Workflow, task: models.Task, item: Any, now: Clock,
            log: logging.LoggerAdapter) -> models.Task:
    body = step.request(workflow, item)
    task = task.evolve(input_params_json=body)
    client.notify("ASF", settings.asf_notification_url, body,
                  workflow_id=str(workflow.workflow_id), idempotency_key=task.idempotency_key,
                  log=log)
    return task.evolve(status="succeeded", output_result_summary_json={"notified": True},
                       completed_at=now())


def _base(settings: Settings, step: Step) -> str:
    return settings.agent(step.agent).base_url


def _interval_s(settings: Settings, step: Step) -> float:
    return settings.agent(step.agent).poll_interval_s if step.agent != "ASF" else 1.0


def _timeout_s(settings: Settings, step: Step) -> float:
    if step.agent == "ASF":  # no polling: transient failures are retried this long
        return settings.asf_notify_timeout_s
    return settings.agent(step.agent).poll_timeout_s
