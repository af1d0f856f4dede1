"""What a workflow looks like to the outside: the JSON of `cpoa status --json`, the gateway and
the dashboard, built from stored rows (no I/O here)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from cpoa import events, models, reports


def summary(workflow: models.Workflow) -> dict[str, Any]:
    """Returns the JSON-ready fields every view of a workflow shares (`describe`, the
    dashboard's ``views.workflow_view``)."""
    return {
        "workflow_id": str(workflow.workflow_id), "kind": workflow.kind, "state": workflow.state,
        "progress": events.progress(workflow.kind, workflow.state, workflow.failed_from_state),
        "warnings": list(workflow.warnings), "error": workflow.error_message,
        "failed_from_state": workflow.failed_from_state, "retry_count": workflow.retry_count,
        "recovery_attempts": workflow.recovery_attempts,
        "started_at": iso(workflow.start_timestamp),
        "updated_at": iso(workflow.last_updated_timestamp),
        "ended_at": iso(workflow.end_timestamp), "next_run_at": iso(workflow.next_run_at),
        "lease_owner": workflow.lease_owner,
        "forked_from": str(workflow.forked_from) if workflow.forked_from else None,
    }


def describe(workflow: models.Workflow, tasks: Sequence[models.Task],
             history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Returns the JSON-ready status of a workflow (what `cpoa status --json` prints)."""
    return {
        **summary(workflow),
        "params": workflow.params, "outputs": workflow.context, "client_id": workflow.client_id,
        "idempotency_key": workflow.idempotency_key,
        "tasks": [{"task_id": str(t.task_id), "step": t.step, "agent": t.agent_name,
                   "item_key": t.item_key, "attempt": t.attempt, "status": t.status,
                   "idempotency_key": t.idempotency_key, "external_task_id": t.external_task_id,
                   "retry_count": t.retry_count, "error": t.error_details_json,
                   "next_poll_at": iso(t.next_poll_at),
                   "progress": reports.shown(t)} for t in tasks],
        "history": [{"from": h["from_state"], "to": h["to_state"], "trigger": h["trigger"],
                     "at": iso(h["at"]), "detail": h["detail"]} for h in history],
    }


def iso(value: datetime.datetime | None) -> str | None:
    """Returns a time as ISO 8601, or None."""
    return value.isoformat() if value else None
