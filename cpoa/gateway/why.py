"""Why is this workflow not moving? The answer of `GET /v1/workflows/{id}/why`.

Pure functions over a workflow row, its task rows and the database's clock: the lease, the
schedule, the current step's agent tasks, the agents' limits (:mod:`cpoa.queues`), and one
human sentence that says which of them holds the workflow where it is.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from typing import Any

from cpoa import models, queues
from cpoa.settings import Settings

DUE_GRACE_S = 1.0
"""A workflow due for longer than this is reported with how long it has been waiting."""


def explain(workflow: models.Workflow, tasks: Sequence[models.Task], now: datetime.datetime,
            settings: Settings, agents: Sequence[models.AgentQueue] = (),
            position: models.FlowPosition | None = None) -> dict[str, Any]:
    """Returns the diagnosis of one workflow (the ``Why`` schema).

    Args:
        workflow: The workflow row.
        tasks: Every task row of the workflow (the current step's are picked here).
        now: The database's clock, which lease and schedule times are relative to.
        settings: For the retry count and the recovery limit.
        agents: The agent queues (``agent_queues``): caps, slots held, pauses.
        position: Where the workflow stands in flow control (``flow_position``).
    """
    current = current_tasks(workflow, tasks)
    held = queues.held_by(workflow, current, {q.agent: q for q in agents},
                          position or models.FlowPosition(), now)
    return {
        "workflow_id": workflow.workflow_id, "kind": workflow.kind, "state": workflow.state,
        "reason": reason(workflow, current, now, held), "now": now,
        "due": _due(workflow, now),
        "lease_owner": workflow.lease_owner, "lease_expires_at": workflow.lease_expires_at,
        "lease_expires_in_s": _seconds(now, workflow.lease_expires_at),
        "next_run_at": workflow.next_run_at,
        "next_run_in_s": _seconds(now, workflow.next_run_at),
        "failed_from_state": workflow.failed_from_state, "error": workflow.error_message,
        "retry_count": workflow.retry_count, "recovery_attempts": workflow.recovery_attempts,
        "max_recovery_attempts": settings.max_recovery_attempts,
        "recoveries_left": max(0, settings.max_recovery_attempts - workflow.recovery_attempts),
        "tasks": [_task(t, now, settings) for t in current],
    }


def diagnose(store: Any, settings: Settings, workflow_id: uuid.UUID) -> dict[str, Any]:
    """:func:`explain` of a stored workflow (`GET /v1/workflows/{id}/why`, `cpoa why`): the
    workflow with the database's clock, its task rows, the agent queues and its place in them.

    Raises:
        UnknownWorkflow: no such workflow.
        StoreError: the database failed.
    """
    workflow, now = store.workflow_with_clock(workflow_id)
    return explain(workflow, store.get_tasks(workflow_id), now, settings,
                   store.agent_queues(), store.flow_position(workflow_id))


def current_tasks(workflow: models.Workflow,
                  tasks: Sequence[models.Task]) -> list[models.Task]:
    """The task rows of the step the workflow is in (or failed in), this retry's attempt."""
    step = workflow.failed_from_state if workflow.state == "failed" else workflow.state
    return [t for t in tasks if t.step == step and t.attempt == workflow.retry_count]


def reason(workflow: models.Workflow, tasks: Sequence[models.Task],
           now: datetime.datetime, held: str | None = None) -> str:
    """One line saying what the workflow waits for (or how it ended); ``held``: what an
    agent's limits say of it (:func:`cpoa.queues.held_by`), told when it is not due."""
    if workflow.is_terminal:
        return _ended(workflow)
    if workflow.lease_owner is not None:
        return _leased(workflow, now)
    if workflow.next_run_at is None:
        return "not scheduled: nothing will run it (a retry or a sweep makes it due)"
    if workflow.next_run_at <= now:
        waited = (now - workflow.next_run_at).total_seconds()
        late = f" (due for {waited:.1f} s: is a worker running?)" if waited > DUE_GRACE_S else ""
        return f"due now, waiting for a worker{late}"
    if held is not None:
        return held
    waiting = [t for t in tasks if not t.is_finished and t.next_poll_at is not None]
    if waiting:
        return _waiting(min(waiting, key=lambda t: t.next_poll_at), now)
    return f"scheduled: next run in {_seconds(now, workflow.next_run_at):.1f} s"


def _ended(workflow: models.Workflow) -> str:
    if workflow.state == "failed":
        return f"failed: {workflow.error_message or 'no reason recorded'}"
    if workflow.state == "completed" and workflow.warnings:
        return f"completed with {len(workflow.warnings)} warning(s)"
    return workflow.state


def _leased(workflow: models.Workflow, now: datetime.datetime) -> str:
    until = _time(workflow.lease_expires_at)
    if workflow.lease_expires_at is not None and workflow.lease_expires_at > now:
        return f"leased by {workflow.lease_owner} until {until} (running the {workflow.state} step)"
    return (f"the lease of {workflow.lease_owner} expired at {until}: its worker died or hung; "
            f"the next sweep makes it due again")


def _waiting(task: models.Task, now: datetime.datetime) -> str:
    poll_in = _seconds(now, task.next_poll_at) or 0.0
    item = f" (item {task.item_key})" if task.item_key else ""
    deadline = f", deadline {_time(task.poll_deadline_at)}" if task.poll_deadline_at else ""
    if task.status == "submitted":
        ident = f" {task.external_task_id}" if task.external_task_id else ""
        return (f"waiting for {task.agent_name} task{ident}{item}, next poll in "
                f"{poll_in:.1f} s{deadline}")
    error = task.error_details_json if isinstance(task.error_details_json, dict) else {}
    after = f" after: {error['reason']}" if error.get("reason") else ""
    return (f"retrying the {task.agent_name} request{item}{after}; next attempt in "
            f"{poll_in:.1f} s{deadline}")


def _task(task: models.Task, now: datetime.datetime, settings: Settings) -> dict[str, Any]:
    return {
        "task_id": task.task_id, "agent": task.agent_name, "step": task.step,
        "item_key": task.item_key, "attempt": task.attempt, "status": task.status,
        "external_task_id": task.external_task_id, "status_url": task.status_url,
        "result": task.output_result_summary_json, "error": task.error_details_json,
        "transient_failures": task.retry_count, "attempts_per_request": settings.retry_count,
        "first_submitted_at": task.first_submitted_at, "next_poll_at": task.next_poll_at,
        "next_poll_in_s": _seconds(now, task.next_poll_at),
        "poll_deadline_at": task.poll_deadline_at,
        "deadline_in_s": _seconds(now, task.poll_deadline_at),
    }


def _due(workflow: models.Workflow, now: datetime.datetime) -> bool:
    return (workflow.lease_owner is None and workflow.next_run_at is not None
            and workflow.next_run_at <= now)


def _seconds(now: datetime.datetime, then: datetime.datetime | None) -> float | None:
    """Seconds from ``now`` until ``then`` (negative when past), to 0.1 s."""
    return None if then is None else round((then - now).total_seconds(), 1) + 0.0  # not -0.0


def _time(value: datetime.datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "?"
