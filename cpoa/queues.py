"""Flow control as people read it: the sentence of ``why`` for a workflow an agent's limits
hold, and the table of agent queues that `cpoa agents status` and the dashboard print.

Pure functions of the rows of ``agent_queues`` and ``flow_position`` and a clock; no I/O.
Times are shown in UTC, short: ``12:03:10 UTC`` on the clock's day, else with the date.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cpoa import decide, defaults, models, steps

COLUMNS = ("agent", "in flight", "waiting", "rate waits", "paused until", "failures")
"""The columns of the agent table (`cpoa agents status`, the dashboard)."""
NONE = "–"
"""A cell with nothing to show: no cap, no pause."""


def utc(value: datetime.datetime, now: datetime.datetime) -> str:
    """Returns ``value`` in UTC, short: ``12:03:10 UTC``, with the date when it is not
    ``now``'s day (``2026-12-05 12:03:10 UTC``)."""
    value, today = value.astimezone(datetime.timezone.utc), now.astimezone(datetime.timezone.utc)
    shown = value.strftime("%H:%M:%S" if value.date() == today.date() else "%Y-%m-%d %H:%M:%S")
    return f"{shown} UTC"


def slot_wait(queue: models.AgentQueue, ahead: int) -> str:
    """``waiting for a VFA slot (3 of 3 in flight; 12 ahead of it)``."""
    held = (f"{queue.in_flight} of {queue.max_in_flight}" if queue.max_in_flight is not None
            else str(queue.in_flight))
    return f"waiting for a {queue.agent} slot ({held} in flight; {ahead} ahead of it)"


def rate_wait(agent: str, place_at: datetime.datetime, now: datetime.datetime) -> str:
    """``waiting for its place in PSWA's rate (until 12:03:10 UTC)``."""
    return f"waiting for its place in {agent}'s rate (until {utc(place_at, now)})"


def pause_cause(queue: models.AgentQueue) -> str:
    """Why the agent's submits are paused: ``429``, or ``5 failed requests in a row
    (breaker)``."""
    if queue.pause_reason == "breaker":
        return f"{queue.failures} failed requests in a row (breaker)"
    return queue.pause_reason or "an earlier answer"


def paused(queue: models.AgentQueue, now: datetime.datetime) -> str:
    """``VFA paused until 12:03:10 UTC after 429`` (the agent's pause must be set)."""
    assert queue.paused_until is not None
    return f"{queue.agent} paused until {utc(queue.paused_until, now)} after {pause_cause(queue)}"


def held_by(workflow: models.Workflow, tasks: Sequence[models.Task],
            agents: Mapping[str, models.AgentQueue], position: models.FlowPosition,
            now: datetime.datetime) -> str | None:
    """Returns the sentence saying which agent limit holds ``workflow``, or None.

    Args:
        workflow: An unleased workflow that is not due.
        tasks: The task rows of its current step.
        agents: The agent queues by agent name.
        position: Where it stands in flow control.
        now: The database's clock.
    """
    if position.waiting_agent is not None:
        queue = agents.get(position.waiting_agent) or models.AgentQueue(position.waiting_agent)
        return slot_wait(queue, position.ahead)
    if position.rate_agent is not None and position.rate_place_at is not None \
            and position.rate_place_at > now:
        return rate_wait(position.rate_agent, position.rate_place_at, now)
    step = steps.STEPS.get(workflow.kind, {}).get(workflow.state)
    queue = agents.get(step.agent) if step is not None else None
    if queue is not None and queue.paused_until is not None and queue.paused_until > now \
            and _would_submit(workflow, step, tasks):
        return paused(queue, now)
    return None


def _would_submit(workflow: models.Workflow, step: steps.Step,
                  tasks: Sequence[models.Task]) -> bool:
    """Whether an unfinished item of the step still has to be submitted (not polled)."""
    by_item = {t.item_key: t for t in tasks}
    return any(key not in by_item or (not by_item[key].is_finished
                                      and decide.is_submit(step, by_item[key]))
               for key, _ in step.items(workflow))


def every_agent(queues: Iterable[models.AgentQueue],
                known: Iterable[str] = defaults.AGENT_PORTS) -> list[models.AgentQueue]:
    """Returns ``queues`` with an empty row for each known agent missing, by name."""
    rows = {q.agent: q for q in queues}
    rows.update({name: models.AgentQueue(name) for name in known if name not in rows})
    return [rows[name] for name in sorted(rows)]


def cells(queue: models.AgentQueue, now: datetime.datetime) -> tuple[str, ...]:
    """One row of the agent table as text, in :data:`COLUMNS` order."""
    cap = NONE if queue.max_in_flight is None else str(queue.max_in_flight)
    pause = (NONE if queue.paused_until is None
             else f"{utc(queue.paused_until, now)} ({queue.pause_reason or '?'})")
    return (queue.agent, f"{queue.in_flight} / {cap}", str(queue.waiting),
            str(queue.rate_waiting), pause, str(queue.failures))


def table(queues: Sequence[models.AgentQueue], now: datetime.datetime) -> str:
    """The agent table as aligned text, a header line first."""
    rows = [COLUMNS, *(cells(q, now) for q in queues)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def as_json(queue: models.AgentQueue) -> dict[str, Any]:
    """One agent queue as JSON-ready values (the time as ISO 8601)."""
    document = dataclasses.asdict(queue)
    document["paused_until"] = queue.paused_until.isoformat() if queue.paused_until else None
    return document
