"""The UI event relay's and prune's writes: work beside the workflows, never on their path.

A mixin of :class:`cpoa.store.postgres.PostgresStore`, which gives it ``_errors``, ``pool``,
``_transaction``, ``_one``, ``_all`` and ``queries``; the SQL is in ``queries.sql``.
"""

from __future__ import annotations

import datetime
import uuid

from cpoa import models
from cpoa.store.rows import storable_text


class Upkeep:
    """The outbox relay and prune (mixed into PostgresStore)."""

    # -- UI event outbox ---------------------------------------------------------------------

    def claim_ui_events(self, limit: int, lock_s: float) -> list[models.OutboxEvent]:
        """Locks the next undelivered event of up to ``limit`` workflows for delivery."""
        with self._transaction() as conn:
            rows = self._all(conn, "claim_ui_events", limit=limit, lock_s=lock_s)
        return [models.OutboxEvent.from_row(r) for r in sorted(rows, key=lambda r: r["seq"])]

    def mark_ui_event_delivered(self, seq: int) -> None:
        """Records a delivered event."""
        with self._transaction() as conn:
            conn.execute(self.queries["mark_ui_event_delivered"], {"seq": seq})

    def drop_ui_event(self, seq: int, error: str) -> None:
        """Takes an event the receiver refused for good out of the queue, with the reason."""
        with self._transaction() as conn:
            conn.execute(self.queries["drop_ui_event"],
                         {"seq": seq, "error": storable_text(error[:500])})

    def mark_ui_event_failed(self, seq: int, error: str, retry_in_s: float) -> None:
        """Records a failed delivery and when to try again."""
        with self._transaction() as conn:
            conn.execute(self.queries["mark_ui_event_failed"],
                         {"seq": seq, "error": storable_text(error[:500]),
                          "retry_in_s": retry_in_s})

    def get_ui_events(self, workflow_id: uuid.UUID) -> list[dict]:
        """Returns every queued UI event of a workflow, in order."""
        with self._errors(), self.pool.connection() as conn:
            return self._all(conn, "select_ui_events", workflow_id=workflow_id)

    # -- pruning -----------------------------------------------------------------------------

    def prune_cutoff(self, older_than_s: float) -> datetime.datetime:
        """Returns the database's ``now()`` minus ``older_than_s``: one prune run's cutoff."""
        with self._errors(), self.pool.connection() as conn:
            return self._one(conn, "prune_cutoff", older_than_s=older_than_s)["cutoff"]

    def count_prunable(self, cutoff: datetime.datetime) -> dict[str, int]:
        """Counts, per table, the rows a prune with ``cutoff`` would delete (no locks taken)."""
        with self._errors(), self.pool.connection() as conn:
            return dict(self._one(conn, "count_prunable", cutoff=cutoff))

    def prune_batch(self, cutoff: datetime.datetime, batch_size: int,
                    lock_timeout_s: float) -> dict[str, int]:
        """Deletes up to ``batch_size`` finished workflows last changed before ``cutoff``, with
        their task rows, history, UI events and settled idempotency keys, in one transaction.

        Rows locked by anyone else are skipped (SKIP LOCKED), never waited on; any other lock
        is waited on for at most ``lock_timeout_s``.

        Returns:
            Rows deleted per table (``workflow_instances`` first).

        Raises:
            StoreBusy: a lock was not granted in time; nothing was deleted.
        """
        with self._transaction() as conn:
            self._one(conn, "set_lock_timeout", timeout_ms=str(max(1, int(lock_timeout_s * 1000))))
            ids = [r["workflow_id"] for r in self._all(conn, "lock_prunable", cutoff=cutoff,
                                                       batch_size=batch_size)]
            if not ids:
                return {"workflow_instances": 0, "task_instances": 0, "workflow_events": 0,
                        "ui_event_outbox": 0, "idempotency_keys": 0}
            counts = {"workflow_instances": len(ids),
                      **self._one(conn, "count_pruned_rows", workflow_ids=ids)}
            counts["idempotency_keys"] = conn.execute(self.queries["delete_pruned_keys"],
                                                      {"workflow_ids": ids}).rowcount
            conn.execute(self.queries["delete_pruned_workflows"], {"workflow_ids": ids})
            return counts
