"""Pruning: deletes finished workflows older than a cutoff, in short batches (`cpoa prune`).

A workflow is pruned when it is ``completed``, ``failed`` or ``cancelled``, was last changed
before the cutoff, holds no lease, has every UI event delivered and no idempotency key still
``processing``. Its task rows, history and UI events go with it (ON DELETE CASCADE) and so do
its settled idempotency keys: the same caller key then starts a new workflow. ``failed`` ones
are included because ``retry`` is an operator action: one not taken within the retention period
is not going to be. Each batch is one short transaction that skips rows locked by anyone else.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from cpoa import defaults, errors
from cpoa.store import PostgresStore

logger = logging.getLogger(__name__)

TABLES = ("workflow_instances", "task_instances", "workflow_events", "ui_event_outbox",
          "idempotency_keys")
"""The tables a prune deletes from, in the order reports list them."""

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Reads a duration such as ``30d``, ``12h``, ``90m``, ``3600s`` or ``3600`` (seconds).

    Returns:
        The duration in seconds (more than zero).

    Raises:
        ValueError: not a positive number with an optional unit s, m, h or d.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (e.g. 30d, 12h, 90m, 3600s or 3600)")
    seconds = float(match[1]) * _UNIT_S[match[2]]
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"{text!r} must be more than zero")
    return seconds


@dataclasses.dataclass(frozen=True)
class PruneReport:
    """What one prune run deleted, or would delete (``dry_run``).

    Args:
        cutoff: Workflows last changed before this instant (the database's clock) qualified.
        dry_run: True when nothing was deleted and ``counts`` says what would have been.
        batches: Transactions that deleted something.
        counts: Rows per table (the keys of ``TABLES``).
    """

    cutoff: datetime.datetime
    dry_run: bool
    batches: int
    counts: Mapping[str, int]

    def as_json(self) -> dict[str, Any]:
        """Returns the report as one JSON-ready document."""
        return {"dry_run": self.dry_run, "cutoff": self.cutoff.isoformat(),
                "batches": self.batches, "counts": dict(self.counts)}


def prune(store: PostgresStore, older_than_s: float, *,
          batch_size: int = defaults.PRUNE_BATCH_SIZE, dry_run: bool = False) -> PruneReport:
    """Deletes finished workflows last changed more than ``older_than_s`` ago, batch by batch.

    Args:
        store: The database.
        older_than_s: Age in seconds, measured on the database's clock.
        batch_size: Workflows per transaction.
        dry_run: Count what would be deleted, delete nothing.

    Returns:
        The cutoff used and the rows deleted (or counted) per table.

    Raises:
        StoreBusy: PRUNE_BUSY_RETRIES batches in a row waited too long for a lock; the
            batches before them stay deleted, and a later run goes on from there.
    """
    cutoff = store.prune_cutoff(older_than_s)
    if dry_run:
        counts = store.count_prunable(cutoff)
        return PruneReport(cutoff, True, 0, {table: counts[table] for table in TABLES})
    totals = dict.fromkeys(TABLES, 0)
    batches = 0
    while True:
        counts = _batch(store, cutoff, batch_size)
        if counts["workflow_instances"]:
            batches += 1
            for table in TABLES:
                totals[table] += counts[table]
            logger.info("pruned %d workflow(s)", counts["workflow_instances"],
                        extra={"action": "prune_batch", "cutoff": cutoff.isoformat(), **counts})
        if counts["workflow_instances"] < batch_size:  # the rest is young, busy or locked
            return PruneReport(cutoff, False, batches, totals)


def _batch(store: PostgresStore, cutoff: datetime.datetime, batch_size: int) -> dict[str, int]:
    """One batch; a lock wait that timed out (a start reading the same idempotency key,
    usually) is tried again after a short pause, since such holders commit within milliseconds."""
    attempt = 1
    while True:
        try:
            return store.prune_batch(cutoff, batch_size, defaults.PRUNE_LOCK_TIMEOUT_S)
        except errors.StoreBusy as exc:
            if attempt >= defaults.PRUNE_BUSY_RETRIES:
                raise
            logger.warning("prune batch busy, trying again: %s", exc,
                           extra={"action": "prune_busy", "attempt": attempt})
            time.sleep(0.1 * attempt)
            attempt += 1
