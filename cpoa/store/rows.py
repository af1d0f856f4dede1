"""Rows to and from domain objects, and the parameters of ``finish_step``."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb

from cpoa import machine, models

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


_TASK_FIELDS = tuple(f.name for f in dataclasses.fields(models.Task))
_TASK_JSON_FIELDS = ("input_params_json", "output_result_summary_json", "error_details_json")
_TASK_TIMES = ("created_at", "updated_at", "first_submitted_at", "completed_at",
               "next_poll_at", "poll_deadline_at")
_TASK_COLUMNS = tuple(f for f in _TASK_FIELDS if f != "workflow_id")  # from the workflow row
_NO_TASK = {**dict.fromkeys(_TASK_COLUMNS), "has_task": False}


def lease_from_row(row: Mapping[str, Any], owner: str) -> models.Lease:
    """A lease from a row that carries ``db_now`` and the step's tasks as ``step_tasks``."""
    return models.Lease(models.Workflow.from_row(row),
                        tuple(task_from_json(t) for t in row["step_tasks"]), owner,
                        row["db_now"])


def task_from_json(document: dict[str, Any]) -> models.Task:
    """A task from ``to_jsonb(task_instances row)``: ids and times back to their types."""
    document["task_id"] = uuid.UUID(document["task_id"])
    document["workflow_id"] = uuid.UUID(document["workflow_id"])
    for field in _TASK_TIMES:
        if document.get(field) is not None:
            document[field] = datetime.datetime.fromisoformat(document[field])
    return models.Task.from_row(document)


def task_params(task: models.Task | None) -> dict[str, Any]:
    """The task columns of ``finish_step`` (``has_task`` false: no task row is written)."""
    if task is None:
        return dict(_NO_TASK)
    params = {field: getattr(task, field) for field in _TASK_COLUMNS}
    for field, value in params.items():
        if field in _TASK_JSON_FIELDS:
            params[field] = jsonb(value) if value is not None else None
        elif isinstance(value, str):  # an agent's task id or status URL may hold anything
            params[field] = storable_text(value)
    params["has_task"] = True
    return params


def step_params(workflow: models.Workflow, outcome: models.Outcome) -> dict[str, Any]:
    """The parameters of ``finish_step`` but the fence's: task, state, history, UI event, key."""
    params = {**task_params(outcome.task), "workflow_id": workflow.workflow_id,
              "source": workflow.state, "trigger": outcome.trigger,
              "run_in_s": max(0.0, outcome.run_in_s), "context_updates": jsonb({}),
              "warnings": jsonb([]), "retry_increment": 0, "detail": None,
              "event_name": None, "event_data": None, "key_status": None,
              "task_name": TASK_NAMES[workflow.kind]}
    if outcome.trigger is None:  # stay in the state, as it is
        return {**params, "dest": workflow.state, "schedulable": True, "keep_recoveries": True,
                "failed_from_state": workflow.failed_from_state,
                "error_message": storable_text(workflow.error_message)}
    dest = outcome.dest
    detail = {**outcome.detail}
    if outcome.error_message:
        detail["reason"] = outcome.error_message
    if outcome.warnings:
        detail["warnings"] = list(outcome.warnings)
    event = outcome.ui_event
    return {
        **params, "dest": dest, "failed_from_state": outcome.failed_from_state,
        "context_updates": jsonb(dict(outcome.context_updates)),
        "warnings": jsonb(list(outcome.warnings)),
        "error_message": storable_text(outcome.error_message),
        "schedulable": dest not in machine.TERMINAL_STATES, "run_in_s": 0.0,
        "keep_recoveries": outcome.trigger == "fail",
        "retry_increment": 1 if outcome.trigger == "retry" else 0,
        "detail": jsonb(detail) if detail else None,
        "event_name": event.event_name if event is not None else None,
        "event_data": jsonb(event.data) if event is not None else None,
        "key_status": key_status(dest, outcome.trigger)}


def key_status(dest: str, trigger: str | None) -> str | None:
    """How the orchestration's idempotency key follows the workflow (None: unchanged)."""
    if dest == "completed":
        return "completed"
    if dest in ("failed", "cancelled"):
        return "failed"
    return "processing" if trigger == "retry" else None
