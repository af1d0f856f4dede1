"""What the CLI, the gateway, the dashboard and /metrics read: no write, no lock.

A mixin of :class:`cpoa.store.postgres.PostgresStore`, which gives it ``_errors``, ``pool``,
``_one``, ``_all`` and ``_workflow_row``; the SQL is in ``queries.sql``.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

from cpoa import models


class Reads:
    """Reads for people and monitors (mixed into PostgresStore)."""

    def get_history(self, workflow_id: uuid.UUID) -> list[dict]:
        """Returns the transition history of a workflow, oldest first."""
        with self._errors(), self.pool.connection() as conn:
            return self._all(conn, "select_history", workflow_id=workflow_id)

    def list_workflows(self, *, state: str | None = None, kind: str | None = None,
                       limit: int = 100) -> list[models.Workflow]:
        """Returns the newest workflows, optionally of one state or kind."""
        with self._errors(), self.pool.connection() as conn:
            rows = self._all(conn, "list_workflows", state=state, kind=kind, limit=limit)
        return [models.Workflow.from_row(r) for r in rows]

    def count_unfinished(self) -> tuple[int, int]:
        """Returns (non-terminal workflows, UI events due for delivery)."""
        with self._errors(), self.pool.connection() as conn:
            row = self._one(conn, "count_unfinished")
        return row["workflows"], row["events"]

    def metrics_snapshot(self) -> dict[str, Any]:
        """Returns the database's gauges in one round trip (read at scrape time, never per step).

        Returns:
            ``workflows_by_state`` ({state: count}, every kind), ``oldest_due_s`` (how long
            the longest-waiting due, unclaimed workflow has been due; 0.0 when none is) and
            ``outbox_backlog`` (UI events not delivered yet).
        """
        with self._errors(), self.pool.connection() as conn:
            row = self._one(conn, "metrics_snapshot", kind=None)
        return {"workflows_by_state": dict(row["workflows_by_state"]),
                "oldest_due_s": row["oldest_due_s"], "outbox_backlog": row["outbox_backlog"]}

    def agent_queues(self) -> list[models.AgentQueue]:
        """Returns every agent flow control knows of, by name: slots held, cap, waiters,
        pause and breaker (one statement; what `cpoa agents status`, the dashboard and
        /metrics show)."""
        with self._errors(), self.pool.connection() as conn:
            rows = self._all(conn, "agent_queues")
        return [models.AgentQueue.from_row(r) for r in rows]

    def flow_position(self, workflow_id: uuid.UUID) -> models.FlowPosition:
        """Returns where a workflow stands in flow control: the agent slot it waits for and
        how many waiters go first, its next place in an agent's rate (all empty when none)."""
        with self._errors(), self.pool.connection() as conn:
            return models.FlowPosition.from_row(
                self._one(conn, "flow_position", workflow_id=workflow_id))

    # -- dashboard reads ---------------------------------------------------------------------

    def events_after(self, event_id: int, workflow_id: uuid.UUID | None = None,
                     limit: int = 500) -> list[dict]:
        """Returns history rows with a greater event id, oldest first, with kind and label.

        Args:
            event_id: Rows after this one (0: from the start).
            workflow_id: Only this workflow's rows (None: every workflow's).
            limit: Rows returned at most; call again from the last one for more.
        """
        with self._errors(), self.pool.connection() as conn:
            if workflow_id is None:
                return self._all(conn, "events_after", after=event_id, limit=limit)
            return self._all(conn, "workflow_events_after", workflow_id=workflow_id,
                             after=event_id, limit=limit)

    def get_events(self, keys: Sequence[tuple[uuid.UUID, int]]) -> list[dict]:
        """Returns these history rows, by (workflow id, event id), those still stored, in
        event id order."""
        with self._errors(), self.pool.connection() as conn:
            return self._all(conn, "get_events", workflow_ids=[k[0] for k in keys],
                             event_ids=[k[1] for k in keys])

    def state_counts(self, kind: str | None = None) -> tuple[dict[str, int], int]:
        """Returns workflows per state (of one kind, or all) and the newest event id.

        Both come from one snapshot: a live page that shows the counts and then follows
        the history after that id counts every later transition once.
        """
        with self._errors(), self.pool.connection() as conn:
            row = self._one(conn, "state_counts", kind=kind)
        return dict(row["counts"]), row["last_event_id"]

    def state_dwell_times(self, kind: str, days: float = 30.0) -> dict[str, dict[str, Any]]:
        """Returns {state: {samples, avg_s, median_s}}: the time workflows of ``kind`` started
        in the last ``days`` days spent in each state they have left."""
        with self._errors(), self.pool.connection() as conn:
            rows = self._all(conn, "state_dwell_times", kind=kind, days=days)
        return {r["state"]: {"samples": r["samples"], "avg_s": r["avg_s"],
                             "median_s": r["median_s"]} for r in rows}

    # -- gateway reads -----------------------------------------------------------------------

    def list_workflows_page(self, *, state: str | None, kind: str | None, limit: int,
                            after: tuple[datetime.datetime, uuid.UUID] | None) -> list[dict]:
        """Returns up to ``limit`` workflow summaries, newest first, after a keyset.

        Args:
            after: ``(start_timestamp, workflow_id)`` of the previous page's last row, or None
                for the first page.
        """
        after_ts, after_id = after or (None, None)
        with self._errors(), self.pool.connection() as conn:
            return self._all(conn, "list_workflows_page", state=state, kind=kind, limit=limit,
                             after_ts=after_ts, after_id=after_id)

    def workflow_with_clock(self, workflow_id: uuid.UUID) -> tuple[models.Workflow,
                                                                     datetime.datetime]:
        """Returns a workflow and the database's clock, read together.

        Raises:
            UnknownWorkflow: no such workflow.
        """
        row = self._workflow_row(workflow_id)
        return models.Workflow.from_row(row), row["db_now"]

    def schema_version(self, timeout_s: float) -> int | None:
        """Returns the applied schema's version; None when the schema was never applied.

        Raises:
            StoreError: no connection within ``timeout_s``, or the query failed.
        """
        with self._errors(), self.pool.connection(timeout=timeout_s) as conn:
            try:
                row = self._one(conn, "schema_version")
            except psycopg.errors.UndefinedTable:  # autocommit: the connection stays usable
                return None
        return row["version"] if row else None

    def db_now(self) -> datetime.datetime:
        """Returns the database's clock."""
        with self._errors(), self.pool.connection() as conn:
            return self._one(conn, "db_now")["now"]

    def bulk_batch(self, where: Any, *, as_of: datetime.datetime, after: uuid.UUID | None,
                   limit: int) -> list[dict]:
        """Returns the next ``limit`` workflows (id, kind, state, failed_from_state) matching
        a :class:`cpoa.bulk.Filter`, by id after ``after``, started by ``as_of``."""
        with self._errors(), self.pool.connection() as conn:
            return self._all(conn, "select_bulk_batch", as_of=as_of, after_id=after,
                             limit=limit, **dataclasses.asdict(where))

    def enforced_machine(self) -> tuple[str | None, set[tuple[str, str, str]]]:
        """Returns the database's machine: its fingerprint (None: not recorded, a schema older
        than version 9) and its allowed (kind, source, dest) edges."""
        with self._errors(), self.pool.connection() as conn:
            try:
                row = self._one(conn, "enforced_machine")
            except psycopg.errors.UndefinedTable:  # before schema version 9
                row = {"fingerprint": None, "edges": conn.execute(
                    self.queries["enforced_edges"]).fetchone()["edges"]}
        return row["fingerprint"], {tuple(edge) for edge in row["edges"]}
