"""A measured prototype of the suggested store changes — NOT CPOA, not used by default.

``python bench/run.py --only engine --variant lean`` runs the engine scenario with these
subclasses instead of CPOA's own, to put numbers on the suggestions in bench/README.md:

1. ``claim_due`` is one statement (the claim CTE also returns the step's task rows as JSON)
   sent in autocommit mode (no BEGIN/COMMIT round trips), on a connection with
   ``synchronous_commit = off``: losing a lease in a crash only makes the workflow due again,
   and the finish's synchronous commit flushes the claim's WAL record before it anyway.
2. ``finish`` is one statement: a data-modifying CTE whose compare-and-set UPDATE (state,
   version and lease owner in its WHERE clause) replaces ``SELECT … FOR UPDATE``, and whose
   task upsert, history row, UI event and idempotency-key update select from that UPDATE's
   RETURNING (so nothing is written when the lease was lost). One round trip, one commit.
3. The worker wakes its outbox thread only when a finish queued a UI event.

Semantics kept: the lease fence, the transition trigger, append-only history, the key settling.
Not kept: the ``before_commit`` fault hook (the fault harness needs CPOA's own store).
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cpoa import errors, machine, models
from cpoa.store import TASK_NAMES, PostgresStore
from cpoa.worker import Worker

CLAIM = """
WITH due AS (
    SELECT workflow_id FROM workflow_instances
    WHERE lease_owner IS NULL AND next_run_at <= now()
    ORDER BY next_run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE workflow_instances w
    SET lease_owner = %(owner)s,
        lease_expires_at = now() + make_interval(secs => %(ttl_s)s),
        version = w.version + 1
    FROM due
    WHERE w.workflow_id = due.workflow_id
    RETURNING w.*
)
SELECT c.*, clock_timestamp() AS db_now,
       (SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.created_at, t.item_key), '[]')
        FROM task_instances t
        WHERE t.workflow_id = c.workflow_id AND t.step = c.state
          AND t.attempt = c.retry_count) AS step_tasks
FROM claimed c
"""

TASK_UPSERT = """
    INSERT INTO task_instances (task_id, workflow_id, agent_name, step, item_key, attempt,
        status, idempotency_key, external_task_id, status_url, input_params_json,
        output_result_summary_json, error_details_json, retry_count, first_submitted_at,
        completed_at, next_poll_at, poll_deadline_at)
    SELECT %(task_id)s, t.workflow_id, %(agent_name)s, %(step)s, %(item_key)s, %(attempt)s,
        %(status)s, %(idempotency_key)s, %(external_task_id)s, %(status_url)s,
        %(input_params_json)s, %(output_result_summary_json)s, %(error_details_json)s,
        %(retry_count)s, %(first_submitted_at)s, %(completed_at)s, %(next_poll_at)s,
        %(poll_deadline_at)s
    FROM t WHERE %(has_task)s::bool
    ON CONFLICT (workflow_id, step, item_key, attempt) DO UPDATE SET
        status = EXCLUDED.status, external_task_id = EXCLUDED.external_task_id,
        status_url = EXCLUDED.status_url, input_params_json = EXCLUDED.input_params_json,
        output_result_summary_json = EXCLUDED.output_result_summary_json,
        error_details_json = EXCLUDED.error_details_json, retry_count = EXCLUDED.retry_count,
        first_submitted_at = EXCLUDED.first_submitted_at, completed_at = EXCLUDED.completed_at,
        next_poll_at = EXCLUDED.next_poll_at, poll_deadline_at = EXCLUDED.poll_deadline_at,
        updated_at = now()
"""

FINISH_TRANSITION = """
WITH t AS (
    UPDATE workflow_instances
    SET state = %(dest)s,
        failed_from_state = %(failed_from_state)s,
        context_data_json = context_data_json || %(context_updates)s,
        warnings = warnings || %(warnings)s,
        error_message = %(error_message)s,
        lease_owner = NULL, lease_expires_at = NULL,
        next_run_at = CASE WHEN %(schedulable)s THEN now() END,
        end_timestamp = CASE WHEN %(schedulable)s THEN NULL ELSE now() END,
        last_updated_timestamp = now(),
        version = version + 1,
        recovery_attempts = CASE WHEN %(keep_recoveries)s THEN recovery_attempts ELSE 0 END
    WHERE workflow_id = %(workflow_id)s AND state = %(source)s AND version = %(version)s
      AND lease_owner = %(owner)s
    RETURNING *
), task AS (""" + TASK_UPSERT + """
), history AS (
    INSERT INTO workflow_events (workflow_id, from_state, to_state, trigger, detail)
    SELECT workflow_id, %(source)s, %(dest)s, %(trigger)s, %(detail)s FROM t
), ui AS (
    INSERT INTO ui_event_outbox (workflow_id, client_id, event_name, data)
    SELECT workflow_id, client_id, %(event_name)s::text, %(event_data)s::jsonb FROM t
    WHERE %(has_event)s::bool AND client_id IS NOT NULL
), settled AS (
    UPDATE idempotency_keys k
    SET status = %(key_status)s::text, locked_at = now(),
        result_payload = CASE WHEN %(key_status)s::text = 'completed' THEN jsonb_build_object(
            'workflow_id', t.workflow_id::text, 'warnings', t.warnings) END,
        error_payload = CASE WHEN %(key_status)s::text = 'failed' THEN jsonb_build_object(
            'state', t.state, 'error', t.error_message) END
    FROM t
    WHERE %(key_status)s::text IS NOT NULL AND k.workflow_id = t.workflow_id
      AND k.task_name = %(task_name)s
)
SELECT * FROM t
"""

FINISH_RESCHEDULE = """
WITH t AS (
    UPDATE workflow_instances
    SET lease_owner = NULL, lease_expires_at = NULL,
        next_run_at = now() + make_interval(secs => %(run_in_s)s),
        last_updated_timestamp = now()
    WHERE workflow_id = %(workflow_id)s AND version = %(version)s AND lease_owner = %(owner)s
    RETURNING workflow_id
), task AS (""" + TASK_UPSERT + """
)
SELECT workflow_id FROM t
"""

_TASK_TIMES = ("created_at", "updated_at", "first_submitted_at", "completed_at",
               "next_poll_at", "poll_deadline_at")


def _task(row: dict[str, Any]) -> models.Task:
    row = dict(row)
    for key in ("task_id", "workflow_id"):
        row[key] = uuid.UUID(row[key])
    for key in _TASK_TIMES:
        if row.get(key):
            row[key] = datetime.datetime.fromisoformat(row[key])
    return models.Task.from_row(row)


class LeanStore(PostgresStore):
    """PostgresStore with one-statement claim and finish (see the module docstring)."""

    def __init__(self, dsn: str, **kwargs: Any) -> None:
        super().__init__(dsn, **kwargs)
        self._claim_lock = threading.Lock()
        self._claim_conn: psycopg.Connection | None = None
        self.queued_events = threading.local()

    def close(self) -> None:
        if self._claim_conn is not None:
            self._claim_conn.close()
        super().close()

    def claim_due(self, owner: str, ttl_s: float, limit: int) -> list[models.Lease]:
        with self._claim_lock, self._errors():
            if self._claim_conn is None or self._claim_conn.closed:
                self._claim_conn = self.pool.connection_class.connect(
                    self.dsn, autocommit=True, row_factory=dict_row,
                    options="-c synchronous_commit=off")
            rows = self._claim_conn.execute(
                CLAIM, {"owner": owner, "ttl_s": ttl_s, "limit": limit}).fetchall()
        return [models.Lease(models.Workflow.from_row(r),
                             tuple(_task(t) for t in r["step_tasks"]), owner, r["db_now"])
                for r in rows]

    def finish(self, lease: models.Lease, outcome: models.Outcome, *,
               before_commit: Any = None) -> models.Workflow:
        wf = lease.workflow
        params = self._task_params(outcome.task, wf)
        params.update(workflow_id=wf.workflow_id, version=lease.fence, owner=lease.owner)
        if outcome.trigger is None:
            with self._errors(), self.pool.connection() as conn:
                row = conn.execute(FINISH_RESCHEDULE, {
                    **params, "run_in_s": max(0.0, outcome.run_in_s)}).fetchone()
            if row is None:
                raise self._stale(wf)
            return dataclasses.replace(wf, lease_owner=None)
        dest = outcome.dest
        detail = {**outcome.detail}
        if outcome.error_message:
            detail["reason"] = outcome.error_message
        if outcome.warnings:
            detail["warnings"] = list(outcome.warnings)
        key_status = ("completed" if dest == "completed" else
                      "failed" if dest in ("failed", "cancelled") else None)
        has_event = outcome.ui_event is not None and bool(wf.client_id)
        params.update(
            source=wf.state, dest=dest, failed_from_state=outcome.failed_from_state,
            context_updates=Jsonb(dict(outcome.context_updates)),
            warnings=Jsonb(list(outcome.warnings)), error_message=outcome.error_message,
            schedulable=dest not in machine.TERMINAL_STATES,
            keep_recoveries=outcome.trigger == "fail", trigger=outcome.trigger,
            detail=Jsonb(detail) if detail else None, has_event=has_event,
            event_name=outcome.ui_event.event_name if has_event else None,
            event_data=Jsonb(outcome.ui_event.data) if has_event else None,
            key_status=key_status, task_name=TASK_NAMES[wf.kind])
        with self._errors(), self.pool.connection() as conn:
            row = conn.execute(FINISH_TRANSITION, params).fetchone()
        if row is None:
            raise self._stale(wf)
        self.queued_events.value = has_event
        return models.Workflow.from_row(row)

    @staticmethod
    def _task_params(task: models.Task | None, wf: models.Workflow) -> dict[str, Any]:
        if task is None:
            fields = {f.name: None for f in dataclasses.fields(models.Task)}
            fields.update(agent_name="", step=wf.state, item_key="", attempt=0, status="pending",
                          idempotency_key="", retry_count=0)
            return {**fields, "has_task": False}
        params = dataclasses.asdict(task)
        for field in ("input_params_json", "output_result_summary_json", "error_details_json"):
            params[field] = Jsonb(params[field]) if params[field] is not None else None
        return {**params, "has_task": True}

    @staticmethod
    def _stale(wf: models.Workflow) -> errors.StaleState:
        return errors.StaleState(f"workflow {wf.workflow_id}: lease lost, result not applied",
                                 workflow_id=wf.workflow_id)


class LeanWorker(Worker):
    """Worker that wakes its outbox thread only when a finish queued a UI event."""

    def _advance(self, lease: models.Lease) -> None:
        super()._advance(lease)
        if getattr(self.store.queued_events, "value", False):
            self.outbox_wake.set()

    def _done(self, future: Any) -> None:
        self._inflight.discard(future)
        self.wake.set()
