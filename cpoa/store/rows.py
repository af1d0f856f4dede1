"""Rows to and from domain objects, and the parameters of the two writes of a step."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb

from cpoa import defaults, machine, models

TASK_NAMES = {"podcast": "cpoa_orchestrate_podcast_task",
              "snippets": "cpoa_orchestrate_snippets_task"}
"""The ``idempotency_keys.task_name`` of CPOA's own orchestration, per kind."""


_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def storable_json(value: Any) -> str:
    """JSON that PostgreSQL accepts: jsonb refuses U+0000 and lone surrogates, so U+0000
    becomes U+FFFD and a lone surrogate "?" (stored as faithfully as the database allows)."""
    text = json.dumps(value, ensure_ascii=False)
    if "\\u0000" in text:
        text = _NUL_ESCAPE.sub(r"\1\\ufffd", text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def storable_text(value: str | None) -> str | None:
    if value is None:
        return None
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def jsonb(value: Any) -> Jsonb:
    return Jsonb(value, dumps=storable_json)


_TASK_TIMES = ("created_at", "updated_at", "first_submitted_at", "completed_at",
               "next_poll_at", "poll_deadline_at")


def lease_from_row(row: Mapping[str, Any], owner: str,
                   context: Mapping[str, Any] | None = None) -> models.Lease:
    """A lease from a row that carries ``db_now``, the step's tasks as ``step_tasks`` and the
    callback time they reflect as ``callback_seen`` (and its context: selected, or
    ``context``, as in :meth:`models.Workflow.from_row`)."""
    pauses = {agent: until and datetime.datetime.fromisoformat(until)
              for agent, until in (row.get("agent_pauses") or {}).items()}
    return models.Lease(models.Workflow.from_row(row, context),
                        tuple(task_from_json(t) for t in row["step_tasks"]), owner,
                        row["db_now"], pauses,
                        frozenset((agent, item) for agent, item in row.get("held_slots") or ()),
                        row["callback_seen"])


def task_from_json(document: dict[str, Any]) -> models.Task:
    """A task from ``to_jsonb(task_instances row)``: ids and times back to their types."""
    document["task_id"] = uuid.UUID(document["task_id"])
    document["workflow_id"] = uuid.UUID(document["workflow_id"])
    for field in _TASK_TIMES:
        if document.get(field) is not None:
            document[field] = datetime.datetime.fromisoformat(document[field])
    return models.Task.from_row(document)


def task_document(task: models.Task | None) -> Jsonb | None:
    """A task row as the JSON ``cpoa_save_task_v1`` reads (None: no row to write)."""
    if task is None:
        return None
    document = {field.name: getattr(task, field.name) for field in dataclasses.fields(task)}
    document["task_id"], document["workflow_id"] = str(task.task_id), str(task.workflow_id)
    for field in _TASK_TIMES:
        if document[field] is not None:
            document[field] = document[field].isoformat()
    return jsonb(document)


def begun_and_finished(task: models.Task | None,
                       step_tasks: tuple[models.Task, ...] | None) -> bool:
    """Whether a transition's task is begun and finished by its write, and so kept in the
    history row it writes (schema.sql, version 17): finished, and not among the step's task
    rows as the lease read them (same step, item and attempt: cpoa_save_task_v1's match).
    ``step_tasks`` None: not known (a change made without a lease), so never."""
    if task is None or step_tasks is None or not task.is_finished:
        return False
    return all((t.step, t.item_key, t.attempt) != (task.step, task.item_key, task.attempt)
               for t in step_tasks)


def progress_params(lease: models.Lease, outcome: models.Outcome,
                    renew_ttl_s: float | None) -> dict[str, Any]:
    """The parameters of ``record_progress``: the fence, the task row, the next run, and the
    live-progress event (None: none to send)."""
    event = outcome.ui_event
    return {"workflow_id": lease.workflow.workflow_id, "source": lease.workflow.state,
            "version": lease.fence, "owner": lease.owner, "task": task_document(outcome.task),
            "run_in_s": max(0.0, outcome.run_in_s), "renew_ttl_s": renew_ttl_s,
            "leased_at": lease.db_now, "callback_seen": lease.callback_seen,
            "event_name": event.event_name if event is not None else None,
            "event_data": jsonb(event.data) if event is not None else None,
            **report_params(outcome.agent_report)}


def report_params(report: models.AgentReport | None) -> dict[str, Any]:
    """The parameters of the ``agent_report`` fragment (report_agent NULL: nothing to tell)."""
    return {"report_agent": report and report.agent, "report_ok": report and report.ok,
            "report_pause_s": report and report.pause_s, "report_reason": report and report.reason,
            "breaker_failures": defaults.BREAKER_FAILURES,
            "breaker_first_s": defaults.BREAKER_FIRST_PAUSE_S,
            "breaker_most_s": defaults.BREAKER_MOST_PAUSE_S}


def transition_params(workflow: models.Workflow, outcome: models.Outcome, *,
                      owner: str | None, renew_ttl_s: float | None,
                      step_tasks: tuple[models.Task, ...] | None = None) -> dict[str, Any]:
    """The parameters of ``make_transition``: the fence, the move and what it records
    (``step_tasks``: the step's task rows as the lease read them; None: no lease)."""
    detail = {**outcome.detail}
    if outcome.error_message:
        detail["reason"] = outcome.error_message
    if outcome.warnings:
        detail["warnings"] = list(outcome.warnings)
    event = outcome.ui_event
    return {
        "workflow_id": workflow.workflow_id, "source": workflow.state,
        "version": workflow.version, "owner": owner, "renew_ttl_s": renew_ttl_s,
        "trigger": outcome.trigger, "dest": outcome.dest,
        "terminal": outcome.dest in machine.TERMINAL_STATES,
        "run_in_s": max(0.0, outcome.run_in_s),
        "failed_from_state": outcome.failed_from_state,
        "context_updates": jsonb(dict(outcome.context_updates)) if outcome.context_updates
        else None,
        "warnings": jsonb(list(outcome.warnings)),
        "error_message": storable_text(outcome.error_message),
        "task": task_document(outcome.task), "detail": jsonb(detail) if detail else None,
        "task_in_history": begun_and_finished(outcome.task, step_tasks),
        "event_name": event.event_name if event is not None else None,
        "event_data": jsonb(event.data) if event is not None else None,
        "task_name": TASK_NAMES[workflow.kind], **report_params(outcome.agent_report)}
