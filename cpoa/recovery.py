"""Crash recovery: find workflows whose lease expired and make them due again.

A lease expires only when its holder died or hung. Each expiry counts one recovery attempt on
the workflow; past CPOA_MAX_RECOVERY_ATTEMPTS the next advance quarantines it as failed.
"""

from __future__ import annotations

import logging

from cpoa import logs, metrics
from cpoa.store import PostgresStore

logger = logging.getLogger(__name__)


def sweep(store: PostgresStore) -> int:
    """Runs one recovery pass; returns how many workflows were requeued."""
    requeued = store.requeue_expired_leases()
    metrics.LEASES_EXPIRED.inc(len(requeued))
    for row in requeued:
        logs.for_workflow(logger, row["workflow_id"]).warning(
            "lease expired; workflow requeued",
            extra={"action": "recovered", "state": row["state"],
                   "recovery_attempts": row["recovery_attempts"]})
    return len(requeued)
