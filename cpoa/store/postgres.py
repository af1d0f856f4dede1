"""PostgresStore: one method per business operation, each one transaction (or one statement).

Every change to a workflow locks its row (``SELECT … FOR UPDATE``), checks the state and fencing
version it expects, writes the change, its history row and its UI event, and commits: the
database is the source of truth and the history can never disagree with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import psycopg
import psycopg_pool
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cpoa import defaults, errors, machine, models, sql
from cpoa.store.connection import (
    CONNECT_TIMEOUT_S,
    WAKE_CHANNEL,
    Listener,
    keepalive_kwargs,
    wrap_db_errors,
)
from cpoa.store.reads import Reads
from cpoa.store.rows import (
    TASK_NAMES,
    jsonb,
    lease_from_row,
    progress_params,
    transition_params,
)
from cpoa.store.upkeep import Upkeep

logger = logging.getLogger(__name__)


def _due_now(outcome: models.Outcome) -> bool:
    """Whether a step leaves its workflow due at once (so its worker may keep the lease)."""
    if outcome.is_transition and outcome.dest in machine.TERMINAL_STATES:
        return False
    return outcome.run_in_s <= 0  # a waiting state's deadline is ahead: released


def _context_after(workflow: models.Workflow, row: Mapping[str, Any]) -> dict[str, Any]:
    """The context a step write leaves: the one its writer read, and what it stored (a
    transition's ``context_updates``, as the history row holds them)."""
    return {**workflow.context, **(row.get("context_updates") or {})}


def _as_written(task: models.Task, row: Mapping[str, Any]) -> models.Task:
    """The task as ``record_progress`` wrote it: due when its callback asked (now, or its
    deferred time), if sooner, when its agent called back during the step
    (``task_called_back``)."""
    if not row.get("task_called_back"):
        return task
    due = max(row["db_now"], row["callback_at"])
    return task.evolve(next_poll_at=min(due, task.next_poll_at or due))


class PostgresStore(Reads, Upkeep):
    """Durable state of every workflow.

    Args:
        dsn: A libpq connection string or URL.
        min_size: Connections kept open.
        max_size: Connections opened at most.
        secrets: Values to keep out of error messages (the password).
    """

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 5,
                 secrets: Iterable[str] = ()) -> None:
        self.dsn = dsn
        self.secrets = tuple(secrets)
        self.queries = sql.queries()
        self.pool = psycopg_pool.ConnectionPool(
            dsn, min_size=min_size, max_size=max(max_size, min_size, 1), open=False,
            kwargs={"autocommit": True, "row_factory": dict_row, **keepalive_kwargs()},
            timeout=defaults.POOL_WAIT_S, reconnect_timeout=defaults.POOL_RECONNECT_S,
            name="cpoa")
        with self._errors():
            # One direct connection first: a down server fails now with libpq's own reason,
            # not after the pool's 30 s of silent retries.
            psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S).close()
            self.pool.open(wait=min_size > 0, timeout=30.0)

    def close(self) -> None:
        """Closes every pooled connection."""
        self.pool.close()

    # -- plumbing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            with wrap_db_errors(self.secrets):
                yield
        except errors.StoreError as exc:
            if isinstance(exc.__cause__, psycopg.OperationalError) and not self.pool.closed:
                # The server went away: drop every broken idle connection now, instead of
                # handing them out one failing call at a time.
                self.pool.check()
            raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        with self._errors(), self.pool.connection() as conn, conn.transaction():
            yield conn

    def _one(self, conn: psycopg.Connection, name: str, **params: Any) -> dict | None:
        return conn.execute(self.queries[name], params).fetchone()

    def _known(self, conn: psycopg.Connection, name: str, workflow_id: uuid.UUID) -> dict:
        """The row ``name`` reads for ``workflow_id``; UnknownWorkflow when there is none."""
        row = self._one(conn, name, workflow_id=workflow_id)
        if row is None:
            raise errors.UnknownWorkflow(workflow_id)
        return row

    def _all(self, conn: psycopg.Connection, name: str, **params: Any) -> list[dict]:
        return conn.execute(self.queries[name], params).fetchall()

    # -- schema ------------------------------------------------------------------------------

    def apply_schema(self) -> None:
        """Creates or updates every table, index and trigger; safe to run any number of times."""
        with self._transaction() as conn:
            conn.execute(sql.schema())

    def schema_applied(self) -> bool:
        """True when ``workflow_instances`` exists."""
        with self._errors(), self.pool.connection() as conn:
            row = conn.execute("SELECT to_regclass('workflow_instances') IS NOT NULL AS ok")
            return bool(row.fetchone()["ok"])

    # -- starting ----------------------------------------------------------------------------

    def create_workflow(self, *, kind: str, params: Mapping[str, Any], key: str,
                        client_id: str | None, user_id: str | None, priority: int,
                        idempotency_key: str | None, workflow_id: uuid.UUID,
                        ui_event: models.UIEvent | None) -> uuid.UUID | None:
        """Creates a workflow unless its idempotency key exists (insert-or-nothing).

        Returns:
            The new workflow's id, or None when the key already belonged to a workflow.
        """
        state = machine.initial_state(kind)
        with self._transaction() as conn:
            if self._one(conn, "insert_idempotency_key", idempotency_key=key,
                         task_name=TASK_NAMES[kind], workflow_id=workflow_id) is None:
                return None
            row = self._one(conn, "insert_workflow", workflow_id=workflow_id, kind=kind,
                            state=state, params=Jsonb(dict(params)), client_id=client_id,
                            user_id=user_id, priority=priority,
                            idempotency_key=idempotency_key)
            workflow = models.Workflow.from_row(row)
            self._record(conn, workflow, None, state, "start", {}, ui_event)
            self._one(conn, "wake_workers", payload=str(workflow_id))
        return workflow_id

    def create_fork(self, first: models.Workflow, forked_from: uuid.UUID, *,
                    user_id: str | None, ui_event: models.UIEvent | None,
                    idempotency_key: str | None = None) -> uuid.UUID | None:
        """Creates a workflow forked from another, in its first state with its context, and
        its orchestration key (``fork:<idempotency_key>``, or its own id), history row
        (trigger ``fork``) and UI event.

        Returns:
            The new workflow's id, or None when the key already belonged to a fork.
        """
        key = f"fork:{idempotency_key}" if idempotency_key else str(first.workflow_id)
        with self._transaction() as conn:
            if self._one(conn, "insert_idempotency_key", idempotency_key=key,
                         task_name=TASK_NAMES[first.kind], workflow_id=first.workflow_id) is None:
                return None
            row = self._one(conn, "insert_fork", workflow_id=first.workflow_id,
                            kind=first.kind, state=first.state,
                            params=jsonb(dict(first.params)), context=jsonb(first.context),
                            client_id=first.client_id, user_id=user_id,
                            forked_from=forked_from, idempotency_key=idempotency_key)
            self._record(conn, models.Workflow.from_row(row), None, first.state, "fork",
                         {"forked_from": str(forked_from), "from_state": first.state},
                         ui_event)
            self._one(conn, "wake_workers", payload=str(first.workflow_id))
        return first.workflow_id

    def fork_source(self, workflow_id: uuid.UUID) -> tuple[models.Workflow, list[dict]]:
        """The workflow a fork copies and its history, read in one transaction with the
        workflow's row share-locked (FOR SHARE): no retry, cancel or review of it lands
        between the two reads, so the context and the history agree.

        Raises:
            UnknownWorkflow: no such workflow.
        """
        with self._transaction() as conn:
            row = self._known(conn, "lock_fork_source", workflow_id)
            return (models.Workflow.from_row(row),
                    self._all(conn, "select_history", workflow_id=workflow_id))

    def find_key(self, key: str, kind: str) -> dict | None:
        """Returns the idempotency key row (with its workflow's state), or None."""
        with self._transaction() as conn:
            return self._one(conn, "select_idempotency_key", idempotency_key=key,
                             task_name=TASK_NAMES[kind])

    def take_over_stale(self, workflow_id: uuid.UUID, kind: str,
                        timeout_s: float) -> bool:
        """Makes a workflow with no progress for ``timeout_s`` due now; True if it was stale."""
        with self._transaction() as conn:
            if self._one(conn, "take_over_stale_workflow", workflow_id=workflow_id,
                         timeout_s=timeout_s) is None:
                return False
            conn.execute(self.queries["touch_idempotency_key"], {
                "workflow_id": workflow_id, "task_name": TASK_NAMES[kind],
                "status": "processing", "result_payload": None, "error_payload": None})
            self._one(conn, "wake_workers", payload=str(workflow_id))
            return True

    # -- leases ------------------------------------------------------------------------------

    def lease(self, workflow_id: uuid.UUID, owner: str, ttl_s: float,
              liveness_key: int | None = None) -> tuple[models.Workflow, models.Lease | None]:
        """Takes the workflow's lease if it is due and free (or its lease is dead: expired,
        or its holder's session gone).

        Args:
            liveness_key: The advisory lock this caller's process holds for as long as it
                lives (:class:`Listener`), or None when only the lease's expiry vouches for it.

        Returns:
            The workflow, and the lease or None when it is not this caller's to run now.

        Raises:
            UnknownWorkflow: no such workflow.
        """
        with self._transaction() as conn:
            row = self._known(conn, "lock_workflow", workflow_id)
            workflow = models.Workflow.from_row(row)
            not_due = workflow.next_run_at is None or workflow.next_run_at > row["db_now"]
            if workflow.is_terminal or row["lease_live"] or (
                    not_due and workflow.lease_owner is None):
                return workflow, None
            row = self._one(conn, "take_lease", workflow_id=workflow_id, owner=owner,
                            ttl_s=ttl_s, liveness_key=liveness_key)
            lease = lease_from_row(row, owner)
            return lease.workflow, lease

    def claim_due(self, owner: str, ttl_s: float, limit: int,
                  liveness_key: int | None = None) -> list[models.Lease]:
        """Takes the leases of up to ``limit`` due, unleased workflows (SKIP LOCKED).

        One statement in autocommit mode: one round trip, its own short transaction.
        """
        with self._errors(), self.pool.connection() as conn:
            rows = self._all(conn, "claim_due", owner=owner, ttl_s=ttl_s, limit=limit,
                             liveness_key=liveness_key)
        return [lease_from_row(row, owner) for row in rows]

    def renew_leases(self, owner: str, workflow_ids: Iterable[uuid.UUID], ttl_s: float) -> None:
        """Extends the leases ``owner`` still holds on these workflows (the heartbeat)."""
        with self._errors(), self.pool.connection() as conn:
            conn.execute(self.queries["renew_leases"], {
                "owner": owner, "workflow_ids": list(workflow_ids), "ttl_s": ttl_s})

    def release_lease(self, lease: models.Lease, run_in_s: float) -> bool:
        """Gives a lease back unused, due again in ``run_in_s``, with no recovery charged.

        Returns:
            False when the lease was no longer this holder's (nothing changed).
        """
        with self._errors(), self.pool.connection() as conn:
            return self._one(conn, "release_lease", workflow_id=lease.workflow.workflow_id,
                             version=lease.fence, owner=lease.owner,
                             run_in_s=run_in_s) is not None

    def record(self, lease: models.Lease, outcome: models.Outcome, *,
               renew_ttl_s: float | None = None,
               before_commit: Callable[[], None] | None = None,
               ) -> tuple[models.Workflow, models.Lease | None]:
        """Stores what one step decided, if the lease is still this worker's: one statement
        (one round trip, one transaction), ``make_transition`` or ``record_progress``.

        Args:
            renew_ttl_s: Keep the lease for the next step when the step leaves the workflow
                due now (a transition to a working state, or progress due at once).
            before_commit: Runs inside the transaction after the write (fault injection).

        Returns:
            The workflow as stored, and the renewed lease (None: released).

        Raises:
            StaleState: the lease was lost (taken over after it died, or the workflow was
                cancelled or retried meanwhile); nothing was written.
        """
        workflow = lease.workflow
        renew = renew_ttl_s if _due_now(outcome) else None
        if outcome.is_transition:
            name, params = "make_transition", transition_params(
                workflow, outcome, owner=lease.owner, renew_ttl_s=renew, step_tasks=lease.tasks)
        else:
            name, params = "record_progress", progress_params(lease, outcome, renew)
        row = self._write(name, {**params, "version": lease.fence}, before_commit)
        if row is None:
            raise errors.StaleState(
                f"workflow {workflow.workflow_id}: lease lost, result not applied",
                workflow_id=workflow.workflow_id)
        context = _context_after(workflow, row)
        if renew is None or row["lease_owner"] is None:  # None: the lease was dead, released
            return models.Workflow.from_row(row, context), None
        next_lease = lease_from_row(row, lease.owner, context)
        if not outcome.is_transition and outcome.task is not None:  # read before its write
            task = _as_written(outcome.task, row)
            next_lease = dataclasses.replace(next_lease, tasks=(*(
                t for t in next_lease.tasks if t.item_key != task.item_key), task))
        return next_lease.workflow, next_lease

    def take_slot(self, lease: models.Lease, agent: str, item_key: str,
                  max_in_flight: int) -> bool:
        """Takes one of ``agent``'s ``max_in_flight`` slots for an item about to be submitted
        (one statement). True: the item holds it (already, or now). False: every slot is
        taken; the workflow waits in the agent's queue and its lease is released.

        Raises:
            StaleState: the lease was lost; nothing was written.
        """
        with self._errors(), self.pool.connection() as conn:
            row = self._one(conn, "take_agent_slot", workflow_id=lease.workflow.workflow_id,
                            owner=lease.owner, version=lease.fence, agent=agent,
                            item_key=item_key, max_in_flight=max_in_flight,
                            recheck_s=defaults.SLOT_RECHECK_S)
        if row is None:
            raise errors.StaleState(f"workflow {lease.workflow.workflow_id}: lease lost",
                                    workflow_id=lease.workflow.workflow_id)
        return row["granted"]

    def take_token(self, lease: models.Lease, agent: str, item_key: str, rate: float,
                   burst: int) -> float:
        """Takes the item's place in ``agent``'s rate (``rate`` submits per second, bursts of
        ``burst``; one statement). 0: submit now. More: the seconds until its place, which the
        workflow waits for with its lease released.

        Raises:
            StaleState: the lease was lost; nothing was written.
        """
        with self._errors(), self.pool.connection() as conn:
            row = self._one(conn, "take_agent_token", workflow_id=lease.workflow.workflow_id,
                            owner=lease.owner, version=lease.fence, agent=agent,
                            item_key=item_key, rate=rate, burst=burst)
        if row is None:
            raise errors.StaleState(f"workflow {lease.workflow.workflow_id}: lease lost",
                                    workflow_id=lease.workflow.workflow_id)
        return row["wait_s"]

    def _write(self, name: str, params: Mapping[str, Any],
               before_commit: Callable[[], None] | None) -> dict | None:
        if before_commit is None:  # one statement in autocommit mode: its own transaction
            with self._errors(), self.pool.connection() as conn:
                return self._one(conn, name, **params)
        with self._transaction() as conn:
            row = self._one(conn, name, **params)
            before_commit()
            return row

    def apply(self, workflow_id: uuid.UUID,
              decide: Callable[[models.Workflow], models.Outcome | None]) -> models.Workflow:
        """Locks a workflow, asks ``decide`` what to do, and applies it (cancel, retry…).

        A transition made here bumps the version, so a worker holding the lease meanwhile
        is fenced out when it tries to finish.

        Raises:
            UnknownWorkflow: no such workflow.
            InvalidTransition: from ``decide``.
        """
        with self._transaction() as conn:
            row = self._known(conn, "lock_workflow", workflow_id)
            workflow = models.Workflow.from_row(row)
            outcome = decide(workflow)
            if outcome is None:
                return workflow
            row = self._one(conn, "make_transition", **transition_params(
                workflow, outcome, owner=None, renew_ttl_s=None))
            if row is None:
                raise errors.StaleState(f"workflow {workflow_id} left state {workflow.state}",
                                        workflow_id=workflow_id)
            workflow = models.Workflow.from_row(row, _context_after(workflow, row))
            if not workflow.is_terminal:
                self._one(conn, "wake_workers", payload=str(workflow_id))
            return workflow

    def _record(self, conn: psycopg.Connection, workflow: models.Workflow, source: str | None,
                dest: str, trigger: str, detail: Mapping[str, Any],
                ui_event: models.UIEvent | None) -> None:
        conn.execute(self.queries["insert_history"], {
            "workflow_id": workflow.workflow_id, "from_state": source, "to_state": dest,
            "trigger": trigger, "detail": jsonb(dict(detail)) if detail else None})
        if ui_event is not None and workflow.client_id:
            conn.execute(self.queries["insert_ui_event"], {
                "workflow_id": workflow.workflow_id, "client_id": workflow.client_id,
                "event_name": ui_event.event_name, "data": jsonb(ui_event.data)})

    # -- recovery ----------------------------------------------------------------------------

    def requeue_dead_leases(self, owner: str = "") -> models.Schedule:
        """One sweeper pass: releases every dead lease (expired, or its holder's session
        gone) and makes its workflow due; one statement.

        Args:
            owner: The caller's lease owner name: its own leases are not what it watches.

        Returns:
            The workflows requeued, and the caller's schedule: how long it may sleep, and
            whether another process holds a lease whose death it should look for soon.
        """
        with self._errors(), self.pool.connection() as conn:
            row = self._one(conn, "requeue_dead_leases", owner=owner)
        requeued = tuple({**r, "workflow_id": uuid.UUID(r["workflow_id"])}
                         for r in row["requeued"])
        return models.Schedule(requeued=requeued, seconds=row["seconds"],
                               watch=row["watch"])

    # -- reading -----------------------------------------------------------------------------

    def get_workflow(self, workflow_id: uuid.UUID) -> models.Workflow:
        """Returns one workflow.

        Raises:
            UnknownWorkflow: no such workflow.
        """
        return models.Workflow.from_row(self._workflow_row(workflow_id))

    def _workflow_row(self, workflow_id: uuid.UUID) -> dict:
        with self._errors(), self.pool.connection() as conn:
            return self._known(conn, "select_workflow", workflow_id)

    def get_tasks(self, workflow_id: uuid.UUID) -> list[models.Task]:
        """Returns every task row of a workflow, oldest first."""
        with self._errors(), self.pool.connection() as conn:
            rows = self._all(conn, "select_tasks", workflow_id=workflow_id)
        return [models.Task.from_row(r) for r in rows]

    # -- callbacks ---------------------------------------------------------------------------

    def poke_task(self, workflow_id: uuid.UUID, task_id: uuid.UUID,
                  delay_s: float = 0.0) -> bool:
        """Makes an open task of an unfinished workflow due for a poll now (or within
        ``delay_s``) and wakes the workers (one statement, no row lock waited for beyond its
        own UPDATEs).

        Returns:
            False when the workflow is unknown or finished, or the task is finished.
        """
        with self._errors(), self.pool.connection() as conn:
            row = self._one(conn, "poke_task", workflow_id=workflow_id, task_id=task_id,
                            delay_s=delay_s)
        return bool(row and row["poked"])

    def secret(self, name: str, candidate: str) -> str:
        """The stored secret ``name``; ``candidate`` is stored first if there is none (the
        first caller wins, every caller gets the same value)."""
        with self._errors(), self.pool.connection() as conn:
            conn.execute(self.queries["insert_secret"], {"secret_name": name, "value": candidate})
            row = self._one(conn, "select_secret", secret_name=name)  # a new snapshot: sees a winner
        if row is None:  # deleted in between: a broken installation, not a race to retry
            raise errors.StoreError(f"secret {name!r} could not be stored")
        return row["value"]

    # -- wake-ups ----------------------------------------------------------------------------

    def listener(self, channel: str = WAKE_CHANNEL, *, liveness: bool = False) -> Listener:
        """Returns a dedicated connection that waits for notifications on ``channel`` (and,
        with ``liveness``, vouches for this process's leases: see :class:`Listener`)."""
        return Listener(self.dsn, self.secrets, channel, liveness=liveness)
