"""Which agent requests a worker death interrupted, so that exactly their resubmits are excused.

When a worker dies (SIGKILL, or its database sessions cut), each workflow it held was running
one step. A key of that step whose answer is not recorded in the database (no task row yet, or
one still ``pending``) may have been sent with no answer kept: its recovery submits it again
under the same key. Each such key is allowed exactly one more submit per death
(:func:`bench.chaos.agents.duplicate_work`); a key whose answer was recorded is allowed none.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

import psycopg

Held = tuple[str, str, frozenset[str]]
"""(workflow_id, its state, the keys of that step whose answer is recorded)."""

_HELD = """
SELECT w.workflow_id::text, w.state,
       coalesce(array_agg(t.idempotency_key) FILTER (WHERE t.status <> 'pending'), '{}')
FROM workflow_instances w
LEFT JOIN task_instances t ON t.workflow_id = w.workflow_id AND t.step = w.state
WHERE w.lease_owner IS NOT NULL AND (%(pid)s::text IS NULL
                                     OR split_part(w.lease_owner, ':', 2) = %(pid)s::text)
GROUP BY w.workflow_id, w.state
"""

_KEYS = """
SELECT workflow_id::text, step, idempotency_key FROM task_instances
UNION ALL  -- a task begun and finished by its step's transition is kept in its history row
SELECT workflow_id::text, from_state, task->>'idempotency_key' FROM workflow_events
WHERE task IS NOT NULL
"""


def held(db: psycopg.Connection, pid: int | None = None) -> list[Held]:
    """The workflows leased right now, by the worker process ``pid`` (None: by anyone).

    Read just after the death: the dead worker's leases are still on its workflows until a
    survivor's sweep (every ``RECOVERY_CHECK_S``) requeues them.
    """
    rows = db.execute(_HELD, {"pid": None if pid is None else str(pid)}).fetchall()
    return [(workflow_id, state, frozenset(keys)) for workflow_id, state, keys in rows]


def live_workers(db: psycopg.Connection) -> int:
    """Worker processes whose liveness lock (a session advisory lock) is held in the database
    of ``db``: started, and vouching for their leases."""
    return db.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()[0]


def excused(db: psycopg.Connection, deaths: Iterable[Iterable[Held]]) -> dict[str, int]:
    """Key -> the deaths that interrupted its request (one excused resubmit each).

    Args:
        db: The scenario's database, read after the run (every key has its task row then).
        deaths: For each death, what :func:`held` returned just after it (or the snapshots
            just before and just after it, concatenated).
    """
    keys: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for workflow_id, step, key in db.execute(_KEYS):
        keys[(workflow_id, step)].add(key)
    counts: collections.Counter[str] = collections.Counter()
    for death in deaths:  # a key listed twice for one death (two snapshots) counts once
        counts.update(set().union(*(keys[(workflow_id, state)] - recorded
                                    for workflow_id, state, recorded in death)))
    return dict(counts)


def summary(in_flight: dict[str, int]) -> dict[str, Any]:
    """Figures of the excuses: how many keys, and how many resubmits they allow."""
    return {"keys_in_flight_at_deaths": len(in_flight),
            "resubmits_allowed_by_deaths": sum(in_flight.values())}
