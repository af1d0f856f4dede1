"""The only module that talks to PostgreSQL: one method per business operation, one transaction.

Every change to a workflow locks its row (``SELECT … FOR UPDATE``), checks the state and fencing
version it expects, writes the change, its history row and its UI event, and commits: the
database is the source of truth and the history can never disagree with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import psycopg
import psycopg_pool
from psycopg import conninfo as pg_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cpoa import errors, logs, machine, models, sql
from cpoa.settings import DatabaseSettings

logger = logging.getLogger(__name__)

WAKE_CHANNEL = "cpoa_due"
CONNECT_TIMEOUT_S = 10
TASK_NAMES = {"podcast": "cpoa_orchestrate_podcast_task",
              "snippets": "cpoa_orchestrate_snippets_task"}
"""The ``idempotency_keys.task_name`` of CPOA's own orchestration, per kind."""


def conninfo(database: DatabaseSettings, embedded_url: str = "") -> str:
    """Returns a libpq connection string for the configured (or embedded) server."""
    if database.embedded:
        return embedded_url
    extra = {"host": database.host, "port": database.port if database.host else None,
             "user": database.user, "password": database.password, "dbname": database.dbname}
    try:
        return pg_conninfo.make_conninfo(database.url, **{k: v for k, v in extra.items() if v})
    except psycopg.ProgrammingError:  # its message may quote the password: not shown
        raise errors.ConfigError("CPOA_DATABASE_URL: not a valid connection string",
                                 variable="CPOA_DATABASE_URL") from None


@contextlib.contextmanager
def wrap_db_errors(secrets: Iterable[str] = ()) -> Iterator[None]:
    """Turns driver errors into the CPOA tree, with no secret in the message."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise errors.DuplicateWorkflow(_clean(exc, secrets)) from exc
    except (psycopg.errors.SerializationFailure, psycopg.errors.LockNotAvailable,
            psycopg.errors.DeadlockDetected) as exc:
        raise errors.StoreBusy(_clean(exc, secrets)) from exc
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        raise errors.StoreError(_clean(exc, secrets)) from exc


_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _storable_json(value: Any) -> str:
    """JSON that PostgreSQL accepts: jsonb refuses U+0000 and lone surrogates, so U+0000
    becomes U+FFFD and a lone surrogate "?" (stored as faithfully as the database allows)."""
    text = json.dumps(value, ensure_ascii=False)
    return _NUL_ESCAPE.sub(r"\1\\ufffd", text).encode("utf-8", "replace").decode("utf-8")


def _storable_text(value: str | None) -> str | None:
    if value is None:
        return None
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _jsonb(value: Any) -> Jsonb:
    return Jsonb(value, dumps=_storable_json)


def _clean(exc: BaseException, secrets: Iterable[str]) -> str:
    return logs.redact(f"database error: {type(exc).__name__}: {exc}".strip(), secrets)


class PostgresStore:
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
            kwargs={"autocommit": True, "row_factory": dict_row}, name="cpoa")
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
                        client_id: str | None, user_id: str | None,
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
                            user_id=user_id, idempotency_key=idempotency_key)
            workflow = models.Workflow.from_row(row)
            self._record(conn, workflow, None, state, "start", {}, ui_event)
            self._one(conn, "wake_workers", payload=str(workflow_id))
        return workflow_id

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

    def lease(self, workflow_id: uuid.UUID, owner: str,
              ttl_s: float) -> tuple[models.Workflow, models.Lease | None]:
        """Takes the workflow's lease if it is due and free (or its lease expired).

        Returns:
            The workflow, and the lease or None when it is not this caller's to run now.

        Raises:
            UnknownWorkflow: no such workflow.
        """
        with self._transaction() as conn:
            row = self._one(conn, "lock_workflow", workflow_id=workflow_id)
            if row is None:
                raise errors.UnknownWorkflow(workflow_id)
            workflow = models.Workflow.from_row(row)
            now = row["db_now"]
            held = workflow.lease_owner is not None and workflow.lease_expires_at > now
            not_due = workflow.next_run_at is None or workflow.next_run_at > now
            if workflow.is_terminal or held or (not_due and workflow.lease_owner is None):
                return workflow, None
            row = self._one(conn, "take_lease", workflow_id=workflow_id, owner=owner,
                            ttl_s=ttl_s)
            lease = self._leases(conn, [row], owner)[0]
            return lease.workflow, lease

    def claim_due(self, owner: str, ttl_s: float, limit: int) -> list[models.Lease]:
        """Takes the leases of up to ``limit`` due, unleased workflows (SKIP LOCKED)."""
        with self._transaction() as conn:
            rows = self._all(conn, "claim_due", owner=owner, ttl_s=ttl_s, limit=limit)
            return self._leases(conn, rows, owner) if rows else []

    def _leases(self, conn: psycopg.Connection, rows: list[dict],
                owner: str) -> list[models.Lease]:
        tasks = self._all(conn, "select_step_tasks", workflow_ids=[r["workflow_id"] for r in rows])
        leases = []
        for row in rows:
            workflow = models.Workflow.from_row(row)
            mine = tuple(models.Task.from_row(t) for t in tasks
                         if t["workflow_id"] == workflow.workflow_id
                         and t["step"] == workflow.state and t["attempt"] == workflow.retry_count)
            leases.append(models.Lease(workflow, mine, owner, row["db_now"]))
        return leases

    def finish(self, lease: models.Lease, outcome: models.Outcome, *,
               before_commit: Callable[[], None] | None = None) -> models.Workflow:
        """Applies what one advance decided, if the lease is still this worker's.

        ``before_commit`` runs inside the transaction after every write (fault injection).

        Raises:
            StaleState: the lease was lost (expired and taken over, or the workflow was
                cancelled or retried meanwhile); nothing was written.
        """
        with self._transaction() as conn:
            row = self._one(conn, "lock_workflow", workflow_id=lease.workflow.workflow_id)
            if row is None or row["lease_owner"] != lease.owner or row["version"] != lease.fence:
                raise errors.StaleState(
                    f"workflow {lease.workflow.workflow_id}: lease lost, result not applied",
                    workflow_id=lease.workflow.workflow_id)
            if outcome.task is not None:
                self._one_task(conn, outcome.task)
            if outcome.trigger is None:
                conn.execute(self.queries["reschedule_workflow"], {
                    "workflow_id": lease.workflow.workflow_id, "version": lease.fence,
                    "run_in_s": max(0.0, outcome.run_in_s)})
                workflow = dataclasses.replace(lease.workflow, lease_owner=None)
            else:
                workflow = self._transition(conn, models.Workflow.from_row(row), outcome)
            if before_commit is not None:
                before_commit()
            return workflow

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
            row = self._one(conn, "lock_workflow", workflow_id=workflow_id)
            if row is None:
                raise errors.UnknownWorkflow(workflow_id)
            workflow = models.Workflow.from_row(row)
            outcome = decide(workflow)
            if outcome is None:
                return workflow
            if outcome.task is not None:
                self._one_task(conn, outcome.task)
            workflow = self._transition(conn, workflow, outcome)
            if not workflow.is_terminal:
                self._one(conn, "wake_workers", payload=str(workflow_id))
            return workflow

    def _one_task(self, conn: psycopg.Connection, task: models.Task) -> None:
        params = dataclasses.asdict(task)
        for field in ("input_params_json", "output_result_summary_json", "error_details_json"):
            params[field] = _jsonb(params[field]) if params[field] is not None else None
        conn.execute(self.queries["upsert_task"], params)

    def _transition(self, conn: psycopg.Connection, workflow: models.Workflow,
                    outcome: models.Outcome) -> models.Workflow:
        dest = outcome.dest
        row = self._one(
            conn, "transition_workflow", workflow_id=workflow.workflow_id, source=workflow.state,
            version=workflow.version, dest=dest, failed_from_state=outcome.failed_from_state,
            context_updates=_jsonb(dict(outcome.context_updates)),
            warnings=_jsonb(list(outcome.warnings)),
            error_message=_storable_text(outcome.error_message),
            schedulable=dest not in machine.TERMINAL_STATES,
            keep_recoveries=outcome.trigger == "fail",
            retry_increment=1 if outcome.trigger == "retry" else 0)
        if row is None:
            raise errors.StaleState(
                f"workflow {workflow.workflow_id} left state {workflow.state}",
                workflow_id=workflow.workflow_id)
        updated = models.Workflow.from_row(row)
        detail = {**outcome.detail}
        if outcome.error_message:
            detail["reason"] = outcome.error_message
        if outcome.warnings:
            detail["warnings"] = list(outcome.warnings)
        self._record(conn, updated, workflow.state, dest, outcome.trigger, detail,
                     outcome.ui_event)
        self._settle_key(conn, updated, outcome.trigger)
        return updated

    def _record(self, conn: psycopg.Connection, workflow: models.Workflow, source: str | None,
                dest: str, trigger: str, detail: Mapping[str, Any],
                ui_event: models.UIEvent | None) -> None:
        conn.execute(self.queries["insert_history"], {
            "workflow_id": workflow.workflow_id, "from_state": source, "to_state": dest,
            "trigger": trigger, "detail": _jsonb(dict(detail)) if detail else None})
        if ui_event is not None and workflow.client_id:
            conn.execute(self.queries["insert_ui_event"], {
                "workflow_id": workflow.workflow_id, "client_id": workflow.client_id,
                "event_name": ui_event.event_name, "data": _jsonb(ui_event.data)})

    def _settle_key(self, conn: psycopg.Connection, workflow: models.Workflow,
                    trigger: str) -> None:
        """Keeps the orchestration's idempotency key in step with the workflow's outcome."""
        if workflow.state == "completed":
            status, result, error = "completed", {"workflow_id": str(workflow.workflow_id),
                                                  "warnings": workflow.warnings}, None
        elif workflow.state in ("failed", "cancelled"):
            status, result, error = "failed", None, {"state": workflow.state,
                                                     "error": workflow.error_message}
        elif trigger == "retry":
            status, result, error = "processing", None, None
        else:
            return
        conn.execute(self.queries["touch_idempotency_key"], {
            "workflow_id": workflow.workflow_id, "task_name": TASK_NAMES[workflow.kind],
            "status": status, "result_payload": _jsonb(result) if result else None,
            "error_payload": _jsonb(error) if error else None})

    # -- recovery ----------------------------------------------------------------------------

    def requeue_expired_leases(self) -> list[dict]:
        """Releases every expired lease and makes its workflow due (one sweeper pass)."""
        with self._transaction() as conn:
            return self._all(conn, "requeue_expired_leases")

    # -- reading -----------------------------------------------------------------------------

    def get_workflow(self, workflow_id: uuid.UUID) -> models.Workflow:
        """Returns one workflow.

        Raises:
            UnknownWorkflow: no such workflow.
        """
        with self._errors(), self.pool.connection() as conn:
            row = self._one(conn, "select_workflow", workflow_id=workflow_id)
        if row is None:
            raise errors.UnknownWorkflow(workflow_id)
        return models.Workflow.from_row(row)

    def get_tasks(self, workflow_id: uuid.UUID) -> list[models.Task]:
        """Returns every task row of a workflow, oldest first."""
        with self._errors(), self.pool.connection() as conn:
            rows = self._all(conn, "select_tasks", workflow_id=workflow_id)
        return [models.Task.from_row(r) for r in rows]

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

    def seconds_until_due(self) -> float | None:
        """Seconds until the next workflow is due or a lease expires; None when nothing waits."""
        with self._errors(), self.pool.connection() as conn:
            return self._one(conn, "seconds_until_due")["seconds"]

    def count_unfinished(self) -> tuple[int, int]:
        """Returns (non-terminal workflows, UI events due for delivery)."""
        with self._errors(), self.pool.connection() as conn:
            row = self._one(conn, "count_unfinished")
        return row["workflows"], row["events"]

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

    def mark_ui_event_failed(self, seq: int, error: str, retry_in_s: float) -> None:
        """Records a failed delivery and when to try again."""
        with self._transaction() as conn:
            conn.execute(self.queries["mark_ui_event_failed"],
                         {"seq": seq, "error": _storable_text(error[:500]),
                          "retry_in_s": retry_in_s})

    def get_ui_events(self, workflow_id: uuid.UUID) -> list[dict]:
        """Returns every queued UI event of a workflow, in order."""
        with self._errors(), self.pool.connection() as conn:
            return self._all(conn, "select_ui_events", workflow_id=workflow_id)

    # -- wake-ups ----------------------------------------------------------------------------

    def listener(self) -> Listener:
        """Returns a dedicated connection that waits for wake-up notifications."""
        return Listener(self.dsn, self.secrets)


class Listener:
    """LISTENs on the wake-up channel so that an idle worker sleeps instead of polling."""

    def __init__(self, dsn: str, secrets: Iterable[str]) -> None:
        self.dsn = dsn
        self.secrets = tuple(secrets)
        self.conn: psycopg.Connection | None = None

    def wait(self, timeout: float) -> bool:
        """Blocks until a notification or the timeout; True when woken by a notification.

        Raises:
            StoreError: the connection failed (the next call reconnects).
        """
        with wrap_db_errors(self.secrets):
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(self.dsn, autocommit=True)
                    self.conn.execute("LISTEN cpoa_due")  # WAKE_CHANNEL
                for _ in self.conn.notifies(timeout=max(0.0, timeout), stop_after=1):
                    return True
                return False
            except psycopg.Error:
                self.close()
                raise

    def close(self) -> None:
        """Closes the connection."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
