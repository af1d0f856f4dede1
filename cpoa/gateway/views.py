"""What the dashboard shows of a workflow, as JSON-ready data: one shape for the page the server
renders and for the snapshots the live stream sends (so both always agree)."""

from __future__ import annotations

import datetime
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from cpoa import machine, models, presentation, steps

URL_MAX_CHARS = 2000
ERROR_MAX_CHARS = 2000


def web_url(value: Any) -> str | None:
    """Returns ``value`` if it is an absolute http(s) URL (the only kind a page may load)."""
    if not isinstance(value, str) or len(value) > URL_MAX_CHARS:
        return None
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return None
    return value if parts.scheme in ("http", "https") and parts.netloc else None


def short_time(value: str | None) -> str:
    """Returns an ISO time as ``2026-11-24 07:40:30.788`` (the page shows the zone once)."""
    return value[:23].replace("T", " ") if value else "–"


def seconds_between(start: datetime.datetime | None, end: datetime.datetime | None) -> float | None:
    """Seconds from ``start`` to ``end``, or None when either is unknown."""
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def format_seconds(seconds: float | None) -> str:
    """Returns a short human duration: ``0.42 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} d {hours % 24} h"


def error_text(detail: Any) -> str | None:
    """Returns a task's or an event's error as one line of text (the reason, if it has one)."""
    if detail is None:
        return None
    if isinstance(detail, Mapping) and isinstance(detail.get("reason"), str):
        text = detail["reason"]
        if detail.get("status_code") is not None:
            text = f"HTTP {detail['status_code']}: {text}"
        if detail.get("transient"):
            text = f"(transient, retried) {text}"
    else:
        text = detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)
    return text[:ERROR_MAX_CHARS]


def label(params: Mapping[str, Any]) -> str:
    """Returns what a workflow is about: its topic (podcast) or query (snippets)."""
    value = params.get("topic") or params.get("query") or ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def task_view(task: models.Task, now: datetime.datetime,
              ended: datetime.datetime | None = None) -> dict[str, Any]:
    """Returns one task attempt: who, when, how long, what the agent called it, what failed.

    Args:
        task: The task row.
        now: The time an unfinished task's duration runs to.
        ended: When its workflow ended, if it has: an unfinished task is then abandoned (no
            longer running) and its duration stops there.
    """
    started = task.first_submitted_at or task.created_at
    unfinished = task.completed_at is None
    return {
        "task_id": str(task.task_id), "step": task.step, "item_key": task.item_key,
        "attempt": task.attempt, "agent": task.agent_name, "status": task.status,
        "agent_task_id": task.external_task_id, "idempotency_key": task.idempotency_key,
        "retries": task.retry_count, "started_at": presentation.iso(started),
        "finished_at": presentation.iso(task.completed_at),
        "duration_s": seconds_between(started, task.completed_at or ended or now),
        "running": unfinished and ended is None,
        "abandoned": unfinished and ended is not None,
        "error": error_text(task.error_details_json),
        "progress": task_progress(task),
    }


def task_progress(task: models.Task) -> float | None:
    """How far the agent says the task is (0 to 1; 1 once succeeded), None when unknown."""
    if task.status == "succeeded":
        return 1.0
    value = (task.progress_json or {}).get("progress")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def step_progress(workflow: models.Workflow, tasks: Sequence[models.Task]) -> float | None:
    """The current step's progress: the mean of its task items' (an item not reported yet
    counts 0), None when no item of the step reported any (nothing to show)."""
    current = [t for t in tasks if t.step == workflow.state and t.attempt == workflow.retry_count]
    known = [task_progress(t) for t in current]
    if workflow.is_terminal or all(p is None or t.status == "succeeded"
                                   for p, t in zip(known, current)):
        return None
    return round(sum(p or 0.0 for p in known) / len(known), 3)


def event_view(row: Mapping[str, Any], previous_at: datetime.datetime | None = None
               ) -> dict[str, Any]:
    """Returns one history row (from ``store.events_after`` or ``get_history``) for a page."""
    detail = row.get("detail") or {}
    warnings = detail.get("warnings") if isinstance(detail, Mapping) else None
    return {
        "event_id": row["event_id"], "workflow_id": str(row["workflow_id"]),
        "kind": row.get("kind"), "label": row.get("label"),
        "from": row["from_state"], "to": row["to_state"], "trigger": row["trigger"],
        "at": presentation.iso(row["at"]), "after_s": seconds_between(previous_at, row["at"]),
        "reason": error_text(detail.get("reason")) if isinstance(detail, Mapping) else None,
        "warnings": [w for w in warnings if isinstance(w, str)] if isinstance(warnings, list)
        else [],
    }


def media(workflow: models.Workflow) -> dict[str, Any]:
    """Returns the playable outputs of a workflow: audio and cover (podcast), snippets."""
    context = workflow.context
    audio = context.get("audio") if isinstance(context.get("audio"), Mapping) else {}
    found: dict[str, Any] = {
        "audio_url": web_url(audio.get("url")),
        "audio_format": audio.get("format") if isinstance(audio.get("format"), str) else None,
        "duration_s": audio.get("duration_s")
        if isinstance(audio.get("duration_s"), (int, float)) else None,
        "image_url": web_url(context.get("image_url")),
        "title": _title(context),
        "snippets": [],
    }
    for snippet in context.get("snippets") or []:
        if isinstance(snippet, Mapping):
            found["snippets"].append({
                "title": str(snippet.get("title") or ""),
                "summary": str(snippet.get("summary") or ""),
                "image_url": web_url(snippet.get("image_url"))})
    return found


def _title(context: Mapping[str, Any]) -> str | None:
    script = context.get("script")
    if isinstance(script, Mapping) and isinstance(script.get("title"), str):
        return script["title"]
    return None


def workflow_view(workflow: models.Workflow, tasks: Sequence[models.Task],
                  now: datetime.datetime | None = None) -> dict[str, Any]:
    """Returns the workflow page's data: state, progress, outcome, tasks, media, actions."""
    now = now or datetime.datetime.now(datetime.UTC)
    state = workflow.state
    return {
        **presentation.summary(workflow),
        "label": label(workflow.params),
        "can_cancel": state not in machine.FINAL_STATES,
        "can_retry": state == "failed",
        "tasks": [task_view(t, now, workflow.end_timestamp if workflow.is_terminal else None)
                  for t in tasks],
        "step_progress": step_progress(workflow, tasks),
        "media": media(workflow),
        # The script a reviewer edits (awaiting_review only); rendered escaped, never as HTML.
        "review_script": (workflow.context.get("script")
                          if state in machine.WAITING_STATES else None),
        "script_revision": steps.script_revision(workflow),  # the editor's, and the stale check
        "can_fork": workflow.is_terminal,
        "fork_states": list(steps.STEPS[workflow.kind]),
    }


def timeline(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Returns the history rows of one workflow with the time spent before each."""
    rows, previous = [], None
    for row in history:
        rows.append(event_view(row, previous))
        previous = row["at"]
    return rows
