"""The orchestrator: start, advance, cancel, retry; glues machine, steps, agents and store.

``advance`` takes the workflow's lease in one short transaction, makes at most one agent request
with no transaction open, and applies the result in one fenced transaction: at most one
transition per call, and a late result from a worker that lost its lease is never applied.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cpoa import attempt, errors, events, heartbeat, inputs, logs, machine, metrics, models, steps
from cpoa.agents import client as agents
from cpoa.settings import Settings
from cpoa.store import PostgresStore

logger = logging.getLogger(__name__)
SUMMARY_TEXT_CHARS = 200
FAULT_POINTS = ("before_call", "after_call", "before_commit", "after_commit")
"""The boundaries of one step where a process may die: before the agent request, after its
answer, inside the result's transaction before COMMIT, after COMMIT (before UI delivery)."""
FaultHook = Callable[[str, models.Workflow], None]


class Engine:
    """Drives workflows stored in one PostgreSQL database.

    Args:
        store: Where workflows live.
        settings: Agent URLs, timeouts, lease length.
        client: The agent client (built from ``settings`` by default).
        owner: This process's lease owner name (host:pid:random by default).
        fault_hook: Called with a boundary name and the workflow at each boundary of a
            step (``FAULT_POINTS``); the fault-injection harness crashes the process there.

    Attributes:
        liveness: What vouches that this process is alive (a :class:`cpoa.store.Listener`
            opened with ``liveness``; the worker sets it): its leases then carry its
            ``liveness_key`` and die with its database session. None: the leases' expiry
            alone decides (a one-off ``advance``).
    """

    def __init__(self, store: PostgresStore, settings: Settings,
                 client: agents.AgentClient | None = None, owner: str | None = None,
                 fault_hook: FaultHook | None = None) -> None:
        self.store = store
        self.settings = settings
        self.client = client or agents.AgentClient(settings)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.fault_hook = fault_hook
        self.liveness: Any = None
        self.heartbeat = heartbeat.Heartbeat(store, self.owner, settings.lease_ttl_s)

    @property
    def liveness_key(self) -> int | None:
        """The key that vouches for the leases this engine takes now (None: none does)."""
        return self.liveness.liveness_key if self.liveness is not None else None

    # -- the public operations ---------------------------------------------------------------

    def start_workflow(self, kind: str, params: Mapping[str, Any], *,
                       idempotency_key: str | None = None, client_id: str | None = None,
                       user_id: str | None = None) -> uuid.UUID:
        """Starts a workflow, or returns the one that already has this idempotency key.

        A failed workflow found by its key is resumed (retried) from where it failed.

        Raises:
            InvalidInput: naming the bad field.
        """
        cleaned = inputs.workflow_params(kind, params)
        key = inputs.optional_id(idempotency_key, "idempotency_key")
        client_id = inputs.optional_id(client_id, "client_id")
        user_id = inputs.optional_id(user_id, "user_id")
        workflow_id = uuid.uuid4()
        first = models.Workflow(workflow_id, kind, machine.initial_state(kind), cleaned, {}, [])
        created = self.store.create_workflow(
            kind=kind, params=cleaned, key=key or str(workflow_id), client_id=client_id,
            user_id=user_id, idempotency_key=key, workflow_id=workflow_id,
            ui_event=events.entered(first, first.state))
        if created is not None:
            logs.for_workflow(logger, workflow_id).info(
                "workflow started", extra={"action": "start", "kind": kind})
            return created
        return self._existing(key or str(workflow_id), kind)

    def advance(self, workflow_id: Any) -> str:
        """Makes at most one transition of one workflow, if it is due; returns its state.

        Safe to call from many processes at once: only the holder of the lease acts.

        Raises:
            InvalidInput: the id is not a UUID.
            UnknownWorkflow: no such workflow.
        """
        return self.advance_workflow(workflow_id).state

    def advance_workflow(self, workflow_id: Any) -> models.Workflow:
        """Like :meth:`advance`, returning the workflow as stored afterwards (not only its
        state), for callers that schedule their next call on it."""
        workflow, lease = self.store.lease(inputs.workflow_id(workflow_id), self.owner,
                                           self.settings.lease_ttl_s, self.liveness_key)
        return workflow if lease is None else self.run(lease)

    def cancel(self, workflow_id: Any) -> str:
        """Cancels a working or failed workflow; returns ``"cancelled"``.

        Raises:
            InvalidTransition: the workflow is completed or already cancelled.
        """
        def decide(wf: models.Workflow) -> models.Outcome:
            dest = machine.decide(wf.kind, wf.state, "cancel").state
            return models.Outcome(trigger="cancel", dest=dest, error_message=wf.error_message,
                                  ui_event=events.entered(wf, dest))
        return self._apply(inputs.workflow_id(workflow_id), decide).state

    def retry(self, workflow_id: Any) -> str:
        """Resumes a failed workflow at the state it failed in; returns that state.

        The agents get new idempotency keys (suffix ``_r<n>``) so they do the work again.

        Raises:
            InvalidTransition: the workflow is not failed.
        """
        def decide(wf: models.Workflow) -> models.Outcome:
            dest = machine.decide(wf.kind, wf.state, "retry", wf.failed_from_state).state
            return models.Outcome(trigger="retry", dest=dest, ui_event=events.entered(wf, dest))
        workflow = self._apply(inputs.workflow_id(workflow_id), decide)
        logs.for_workflow(logger, workflow.workflow_id).info(
            "workflow retried", extra={"action": "retry", "state": workflow.state})
        return workflow.state

    def get_workflow(self, workflow_id: Any) -> dict[str, Any]:
        """Returns the status of a workflow: state, progress, warnings, error, outputs, tasks.

        Raises:
            UnknownWorkflow: no such workflow.
        """
        workflow = self.store.get_workflow(inputs.workflow_id(workflow_id))
        return describe(workflow, self.store.get_tasks(workflow.workflow_id),
                        self.store.get_history(workflow.workflow_id))

    # -- running one step --------------------------------------------------------------------

    def run(self, lease: models.Lease) -> models.Workflow:
        """Runs one step action on a workflow this worker holds and stores the result.

        Never raises for a bad agent reply or a bug in a step: the workflow fails with the
        reason instead. A lost lease is logged and the stored workflow returned.
        """
        return self.step(lease, keep_lease=False)[0]

    def step(self, lease: models.Lease, *,
             keep_lease: bool) -> tuple[models.Workflow, models.Lease | None]:
        """Like :meth:`run`; with ``keep_lease`` a workflow left due now stays this worker's.

        Returns:
            The workflow, and its renewed lease when the caller should go on with its next
            step now (the worker does, instead of releasing it and claiming it back).
        """
        log = logs.for_workflow(logger, lease.workflow.workflow_id)
        try:
            with self.heartbeat.holding(lease.workflow.workflow_id):
                outcome = self._decide(lease, log)
        except Exception as exc:  # a bug must fail the workflow, never the worker
            log.exception("step crashed", extra={"action": "step_crashed",
                                                 "state": lease.workflow.state})
            reason = f"internal error: {type(exc).__name__}: {logs.clip(str(exc), 300)}"
            outcome = self._verdict(lease.workflow, steps.Verdict(False, reason=reason), None)
        self._fault("after_call", lease.workflow)
        try:
            workflow, next_lease = self.store.finish_and_renew(
                lease, outcome, self.settings.lease_ttl_s if keep_lease else None,
                before_commit=self.fault_hook and (
                    lambda: self._fault("before_commit", lease.workflow)))
        except errors.StaleState as exc:
            log.warning("result discarded: %s", exc, extra={"action": "stale_result"})
            return self.store.get_workflow(lease.workflow.workflow_id), None
        self._fault("after_commit", lease.workflow)
        if outcome.trigger:
            metrics.transitioned(lease.workflow, outcome.dest, outcome.trigger)
            log.info("%s -> %s", lease.workflow.state, outcome.dest,
                     extra={"action": "transition", "from": lease.workflow.state,
                            "to": outcome.dest, "reason": outcome.error_message})
        return workflow, next_lease

    def _decide(self, lease: models.Lease, log: logs.WorkflowLogger) -> models.Outcome:
        wf = lease.workflow
        if wf.recovery_attempts > self.settings.max_recovery_attempts:
            reason = (f"quarantined: the lease expired {wf.recovery_attempts} times in state "
                      f"{wf.state} (a worker crashed or hung each time)")
            return self._verdict(wf, steps.Verdict(False, reason=reason), None)
        step = steps.step_for(wf)
        items = step.items(wf)
        tasks = {t.item_key: t for t in lease.tasks}
        clock = _clock(lease.db_now)
        now = clock()
        open_items = [(k, it) for k, it in items if k not in tasks or not tasks[k].is_finished]
        due = [(k, it) for k, it in open_items
               if k not in tasks or tasks[k].next_poll_at is None or tasks[k].next_poll_at <= now]
        if not open_items:
            return self._verdict(wf, step.conclude(wf, [tasks[k] for k, _ in items]), None)
        if not due:
            return models.Outcome(run_in_s=_seconds_until(tasks.values(), now))
        key, item = due[0]
        task = tasks.get(key) or models.Task(
            task_id=uuid.uuid4(), workflow_id=wf.workflow_id, agent_name=step.agent,
            step=wf.state, item_key=key, attempt=wf.retry_count,
            idempotency_key=step.idempotency_key(wf, key))
        self._fault("before_call", wf)
        task = attempt.act(self.client, self.settings, step, wf, task, item, clock,
                           log.bind(task_id=str(task.task_id)))
        tasks[key] = task
        if any(k not in tasks for k, _ in items):
            return models.Outcome(task=task, run_in_s=0.0)  # untouched items are due now
        if any(not tasks[k].is_finished for k, _ in items):
            return models.Outcome(task=task, run_in_s=_seconds_until(tasks.values(), clock()))
        verdict = step.conclude(wf, [tasks[k] for k, _ in items])
        if len(items) == 1 and not key:
            task = task.evolve(output_result_summary_json=_summary(
                task.output_result_summary_json))
        return self._verdict(wf, verdict, task)

    def _verdict(self, wf: models.Workflow, verdict: steps.Verdict,
                 task: models.Task | None) -> models.Outcome:
        trigger = "step_done" if verdict.ok else "fail"
        decision = machine.decide(wf.kind, wf.state, trigger, wf.failed_from_state)
        reason = f"{wf.state}: {verdict.reason}" if verdict.reason else None
        return models.Outcome(
            task=task, trigger=trigger, dest=decision.state,
            failed_from_state=decision.failed_from_state, context_updates=verdict.context,
            warnings=verdict.warnings, error_message=reason,
            ui_event=events.entered(wf, decision.state, failed_from_state=decision.failed_from_state,
                                    error=reason, warnings=verdict.warnings))

    def _apply(self, workflow_id: uuid.UUID,
               decide: Callable[[models.Workflow], models.Outcome]) -> models.Workflow:
        """``store.apply``, counting the transition once it is committed."""
        before: list[models.Workflow] = []

        def remember(workflow: models.Workflow) -> models.Outcome:
            before.append(workflow)
            return decide(workflow)
        workflow = self.store.apply(workflow_id, remember)
        metrics.transitioned(before[-1], workflow.state)
        return workflow

    def _fault(self, point: str, workflow: models.Workflow) -> None:
        if self.fault_hook is not None:
            self.fault_hook(point, workflow)

    def _existing(self, key: str, kind: str) -> uuid.UUID:
        row = self.store.find_key(key, kind)
        if row is None:  # the holder rolled back meanwhile; rare, and safe to report
            raise errors.StoreBusy("idempotency key is being created; try again")
        workflow_id = row["workflow_id"]
        if row["state"] == "failed":
            try:
                self.retry(workflow_id)
            except errors.InvalidTransition:
                pass  # another caller resumed it first
        elif self.store.take_over_stale(workflow_id, kind,
                                        self.settings.idempotency_lock_timeout_s):
            logs.for_workflow(logger, workflow_id).warning(
                "stale orchestration taken over", extra={"action": "take_over"})
        return workflow_id


def summary(workflow: models.Workflow) -> dict[str, Any]:
    """Returns the JSON-ready fields every view of a workflow shares (`describe`, the
    dashboard's ``views.workflow_view``)."""
    return {
        "workflow_id": str(workflow.workflow_id), "kind": workflow.kind, "state": workflow.state,
        "progress": events.progress(workflow.kind, workflow.state, workflow.failed_from_state),
        "warnings": list(workflow.warnings), "error": workflow.error_message,
        "failed_from_state": workflow.failed_from_state, "retry_count": workflow.retry_count,
        "recovery_attempts": workflow.recovery_attempts,
        "started_at": iso(workflow.start_timestamp),
        "updated_at": iso(workflow.last_updated_timestamp),
        "ended_at": iso(workflow.end_timestamp), "next_run_at": iso(workflow.next_run_at),
        "lease_owner": workflow.lease_owner,
    }


def describe(workflow: models.Workflow, tasks: Sequence[models.Task],
             history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Returns the JSON-ready status of a workflow (what `cpoa status --json` prints)."""
    return {
        **summary(workflow),
        "params": workflow.params, "outputs": workflow.context, "client_id": workflow.client_id,
        "idempotency_key": workflow.idempotency_key,
        "tasks": [{"task_id": str(t.task_id), "step": t.step, "agent": t.agent_name,
                   "item_key": t.item_key, "attempt": t.attempt, "status": t.status,
                   "idempotency_key": t.idempotency_key, "external_task_id": t.external_task_id,
                   "retry_count": t.retry_count, "error": t.error_details_json,
                   "next_poll_at": iso(t.next_poll_at)} for t in tasks],
        "history": [{"from": h["from_state"], "to": h["to_state"], "trigger": h["trigger"],
                     "at": iso(h["at"]), "detail": h["detail"]} for h in history],
    }


def _clock(db_now: datetime.datetime) -> attempt.Clock:
    """The database's clock, carried forward by this process's monotonic clock."""
    started = time.monotonic()
    return lambda: db_now + datetime.timedelta(seconds=time.monotonic() - started)


def _seconds_until(tasks: Any, now: datetime.datetime) -> float:
    polls = [t.next_poll_at for t in tasks if not t.is_finished and t.next_poll_at is not None]
    return max(0.0, (min(polls) - now).total_seconds()) if polls else 0.0


def _summary(value: Any) -> Any:
    """A small picture of a large result for the task row (the result itself is in context)."""
    if isinstance(value, Mapping):
        return {k: _summary(v) for k, v in value.items()}
    if isinstance(value, str) and len(value) > SUMMARY_TEXT_CHARS:
        return f"<{len(value)} characters>"
    if isinstance(value, list) and len(value) > 3:
        return f"<{len(value)} items>"
    return value


def iso(value: datetime.datetime | None) -> str | None:
    """Returns a time as ISO 8601, or None."""
    return value.isoformat() if value else None
