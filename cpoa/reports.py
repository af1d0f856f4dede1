"""Live progress (contract §2): what an agent reports in a pending poll reply, what the task row
keeps of it, and when it goes out as a ``generation_progress`` UI event. Pure: no I/O.

An agent may add ``progress`` (a number from 0 to 1) and ``partial`` (a list of results
finished so far) to a pending poll reply. :func:`read` checks them: a bad value is ignored
(the caller logs the problems), never a reason to fail the step. :func:`fold` keeps the latest
good values in ``task_instances.progress_json`` and decides, by the database clock, whether
this poll forwards them: only a change, at most one event per task per interval, and a change
held back by the throttle is sent at a later poll (so the last value is never lost).
:func:`event` builds the event the step's ``record_progress`` queues with the task row.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import Any

from cpoa import defaults, events, logs, machine, models


@dataclasses.dataclass(frozen=True)
class Report:
    """The well-formed part of what an agent reported (None: that field was absent or bad)."""

    progress: float | None = None
    partial: list[Any] | None = None


def read(progress: Any, partial: Any) -> tuple[Report | None, tuple[str, ...]]:
    """Checks a pending reply's ``progress`` and ``partial`` (None: absent).

    Returns:
        The report (None when neither field is usable) and the problems found, one phrase
        each naming the field (for a warning; the bad field is ignored).
    """
    problems = []
    fraction = None
    if progress is not None:
        if _is_fraction(progress):
            fraction = float(progress)
        else:
            problems.append("progress: expected a number from 0 to 1, got "
                            + logs.clip(_shown(progress), 60))
    kept = None
    if partial is not None:
        problem = _partial_problem(partial)
        if problem:
            problems.append(f"partial: {problem}")
        else:
            kept = partial
    if fraction is None and kept is None:
        return None, tuple(problems)
    return Report(fraction, kept), tuple(problems)


def _is_fraction(value: Any) -> bool:
    # NaN, infinities and ints too large for a float all fail the comparison.
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 <= value <= 1)


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, int, float, bool)) \
        else type(value).__name__


def _partial_problem(partial: Any) -> str | None:
    """Why ``partial`` cannot be kept, or None when it can."""
    if not isinstance(partial, list):
        return f"expected a list, got {type(partial).__name__}"
    if len(partial) > defaults.PROGRESS_PARTIAL_MAX_ITEMS:
        return (f"{len(partial)} items, more than the "
                f"{defaults.PROGRESS_PARTIAL_MAX_ITEMS} kept")
    try:
        size = len(json.dumps(partial, allow_nan=False))
    except ValueError:
        return "NaN or Infinity in it"
    if size > defaults.PROGRESS_PARTIAL_MAX_CHARS:
        return (f"{size} characters of JSON, more than the "
                f"{defaults.PROGRESS_PARTIAL_MAX_CHARS} kept")
    return None


def fold(previous: Mapping[str, Any] | None, report: Report | None, now: datetime.datetime,
         every_s: float) -> dict[str, Any] | None:
    """The task's ``progress_json`` after a pending poll that brought ``report``.

    Args:
        previous: What the task row kept so far (None: nothing).
        report: What this poll brought (None: nothing usable).
        now: The database's clock.
        every_s: Least time between two events of the task.

    Returns:
        ``{progress, partial, reported_at, sent_at, unsent}``: the latest values (a field
        this poll lacked keeps its last good value), when an event last went out (``sent_at``
        is ``now`` when this poll sends one) and whether a change still waits to be sent.
        ``previous`` itself when nothing changed and nothing waits.
    """
    before = dict(previous or {})
    if report is None and not before.get("unsent"):
        return previous if previous is None else dict(previous)
    kept = {"progress": None, "partial": None, **before}
    if report is not None:
        for field in ("progress", "partial"):
            if getattr(report, field) is not None:
                kept[field] = getattr(report, field)
        kept["reported_at"] = now.isoformat()
    changed = any(kept.get(f) != before.get(f) for f in ("progress", "partial"))
    kept["unsent"] = bool(before.get("unsent")) or changed
    if kept["unsent"] and _quiet(before.get("sent_at"), now, every_s):
        kept.update(sent_at=now.isoformat(), unsent=False)
    return kept


def _quiet(sent_at: str | None, now: datetime.datetime, every_s: float) -> bool:
    """No event of the task went out in the last ``every_s`` seconds."""
    if not sent_at:
        return True
    return (now - datetime.datetime.fromisoformat(sent_at)).total_seconds() >= every_s


def shown(task: models.Task) -> dict[str, Any] | None:
    """What the API shows of a task's live progress: ``{progress, partial, reported_at}``."""
    kept = task.progress_json
    if not kept:
        return None
    return {field: kept.get(field) for field in ("progress", "partial", "reported_at")}


def sends(before: models.Task | None, after: models.Task) -> bool:
    """Whether the poll that turned ``before`` into ``after`` forwards its progress."""
    sent = (after.progress_json or {}).get("sent_at")
    return bool(sent) and sent != ((before.progress_json if before else None) or {}).get("sent_at")


def event(workflow: models.Workflow, task: models.Task) -> models.UIEvent:
    """The ``generation_progress`` event of ``task``'s latest progress in ``workflow``'s step.

    ``data.progress`` is the agent's own fraction of the step (None if it sent only
    ``partial``), ``data.workflow_progress`` the whole workflow's, with the step counted in.
    """
    kept = task.progress_json or {}
    fraction = kept.get("progress")
    base = events.progress(workflow.kind, workflow.state)
    share = 1 / len(machine.working_states(workflow.kind))
    message = events.MESSAGES.get(workflow.state) or events.IMAGING_MESSAGES.get(
        workflow.kind, workflow.state)
    if fraction is not None:
        message = f"{message} {fraction:.0%}"
    return models.UIEvent("generation_progress", {
        "workflow_id": str(workflow.workflow_id), "state": workflow.state,
        "stage": workflow.state, "agent": task.agent_name, "item_key": task.item_key,
        "message": message, "progress": fraction, "partial": kept.get("partial") or [],
        "workflow_progress": round(base + share * (fraction or 0.0), 3)})


def for_step(workflow: models.Workflow, before: models.Task | None,
             after: models.Task) -> models.UIEvent | None:
    """The event a poll's write queues: :func:`event` when it :func:`sends`, else None."""
    return event(workflow, after) if sends(before, after) else None
