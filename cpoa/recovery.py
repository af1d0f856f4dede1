"""Crash recovery: find workflows whose lease is dead and make them due again.

A lease dies when its holder's process dies (its liveness session ends: at once) or stops
running (the lease expires one TTL after its last heartbeat). Each death counts one recovery
attempt on the workflow; past CPOA_MAX_RECOVERY_ATTEMPTS the next advance quarantines it as
failed.
"""

from __future__ import annotations

import logging

from cpoa import logs, metrics, models
from cpoa.store import PostgresStore

logger = logging.getLogger(__name__)


def sweep(store: PostgresStore, owner: str = "") -> models.Schedule:
    """Runs one recovery pass (one statement).

    Args:
        store: The database.
        owner: The calling worker's lease owner name, if any.

    Returns:
        What was requeued, and the caller's schedule.
    """
    schedule = store.requeue_dead_leases(owner)
    metrics.LEASES_EXPIRED.inc(len(schedule.requeued))
    for row in schedule.requeued:
        logs.for_workflow(logger, row["workflow_id"]).warning(
            "lease dead; workflow requeued",
            extra={"action": "recovered", "state": row["state"],
                   "recovery_attempts": row["recovery_attempts"]})
    return schedule
