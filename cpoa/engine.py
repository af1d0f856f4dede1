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
from collections.abc import Callable, Mapping
from typing import Any

from cpoa import (attempt, callbacks, decide, defaults, editorial, errors, events, heartbeat,
                  inputs, logs, machine, metrics, models, presentation, steps)
from cpoa.agents import client as agents
from cpoa.settings import Settings
from cpoa.store import PostgresStore

logger = logging.getLogger(__name__)
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
        self._callback_key: bytes | None = None

    @property
    def liveness_key(self) -> int | None:
        """The key that vouches for the leases this engine takes now (None: none does)."""
        return self.liveness.liveness_key if self.liveness is not None else None

    # -- the public operations ---------------------------------------------------------------

    def start_workflow(self, kind: str, params: Mapping[str, Any], *,
                       idempotency_key: str | None = None, client_id: str | None = None,
                       user_id: str | None = None, priority: int = 0) -> uuid.UUID:
        """Starts a workflow, or returns the one that already has this idempotency key.

        A failed workflow found by its key is resumed (retried) from where it failed.
        ``priority`` (-1000 to 1000, higher first) orders the workflow among its tenant's
        (``user_id``) in the queue of a capped agent (``CPOA_<AGENT>_MAX_IN_FLIGHT``).

        Raises:
            InvalidInput: naming the bad field.
        """
        if (kind == "podcast" and self.settings.review_scripts and isinstance(params, Mapping)
                and params.get("review") is None):  # CPOA_REVIEW_SCRIPTS: the default
            params = {**params, "review": True}
        cleaned = inputs.workflow_params(kind, params)
        key = inputs.optional_id(idempotency_key, "idempotency_key")
        client_id = inputs.optional_id(client_id, "client_id")
        user_id = inputs.optional_id(user_id, "user_id")
        priority = inputs.integer(priority, "priority", defaults.PRIORITY_MIN,
                                  defaults.PRIORITY_MAX)
        workflow_id = uuid.uuid4()
        first = models.Workflow(workflow_id, kind, machine.initial_state(kind), cleaned, {}, [])
        created = self.store.create_workflow(
            kind=kind, params=cleaned, key=key or str(workflow_id), client_id=client_id,
            user_id=user_id, priority=priority, idempotency_key=key, workflow_id=workflow_id,
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
        return workflow if lease is None else self.step(lease, keep_lease=False)[0]

    def cancel(self, workflow_id: Any) -> str:
        """Cancels a working or failed workflow; returns ``"cancelled"``.

        Raises:
            InvalidTransition: the workflow is completed or already cancelled.
        """
        def decide(wf: models.Workflow) -> models.Outcome:
            dest = machine.decide(wf.kind, wf.state, "cancel").state
            return models.Outcome.transition("cancel", dest, error_message=wf.error_message,
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
            return models.Outcome.transition(  # back to awaiting_review: a new deadline
                "retry", dest, run_in_s=self._due_in(dest), ui_event=events.entered(wf, dest))
        workflow = self._apply(inputs.workflow_id(workflow_id), decide)
        logs.for_workflow(logger, workflow.workflow_id).info(
            "workflow retried", extra={"action": "retry", "state": workflow.state})
        return workflow.state

    def review(self, workflow_id: Any, *, approve: bool, script: Any = None,
               notes: Any = None, expected_revision: int | None = None) -> str:
        """Approves (optionally with an edited script) or rejects (with notes) the script of
        a workflow awaiting review; returns the state it goes to (synthesizing or scripting).

        Of two reviewers acting at once, exactly one wins: the row lock orders them and the
        second finds the workflow no longer awaiting review. ``expected_revision`` (the
        script revision the reviewer saw) is compared under the row lock too.

        Raises:
            InvalidInput: a bad field, named (``script.segments[2].lines[0].text``, ``notes``);
                nothing is stored.
            InvalidTransition: the workflow is not awaiting review, or its script is not at
                ``expected_revision``.
        """
        decision = editorial.Decision.checked(approve, script, notes,  # before any lock
                                              expected_revision)
        workflow = self._apply(inputs.workflow_id(workflow_id),
                               lambda wf: editorial.decision_outcome(wf, decision))
        logs.for_workflow(logger, workflow.workflow_id).info(
            "script %s", "approved" if approve else "rejected",
            extra={"action": "review", "edited": decision.script is not None,
                   "state": workflow.state})
        return workflow.state

    def fork(self, workflow_id: Any, from_state: Any, params: Mapping[str, Any] | None = None,
             *, client_id: str | None = None, idempotency_key: str | None = None) -> uuid.UUID:
        """Starts a new workflow from a completed, failed or cancelled one: its context is
        copied up to ``from_state``, where it starts, with ``params`` changed over the
        source's. Its agent keys are its own: the steps before ``from_state`` are not run.
        A fork retried with the same ``idempotency_key`` returns the first one's id.

        Raises:
            InvalidInput: naming the field (``from_state`` unreached, a bad parameter, an
                ``idempotency_key`` that forked another workflow).
            InvalidTransition: the source is still working.
        """
        key = inputs.optional_id(idempotency_key, "idempotency_key")
        source, history = self.store.fork_source(inputs.workflow_id(workflow_id))
        cleaned, context = editorial.fork_plan(source, history, from_state, params)
        client_id = inputs.optional_id(client_id, "client_id") or source.client_id
        first = models.Workflow(uuid.uuid4(), source.kind, from_state, cleaned, context, [],
                                client_id=client_id)
        new_id = self.store.create_fork(first, source.workflow_id, user_id=source.user_id,
                                        ui_event=events.entered(first, from_state),
                                        idempotency_key=key)
        if new_id is None:
            return self._existing_fork(key or "", source)
        logs.for_workflow(logger, new_id).info(
            "workflow forked", extra={"action": "fork", "forked_from": str(source.workflow_id),
                                      "state": from_state})
        return new_id

    def _existing_fork(self, key: str, source: models.Workflow) -> uuid.UUID:
        row = self.store.find_key(f"fork:{key}", source.kind)
        if row is None:  # the holder rolled back meanwhile; rare, and safe to report
            raise errors.StoreBusy("idempotency key is being created; try again")
        if self.store.get_workflow(row["workflow_id"]).forked_from != source.workflow_id:
            raise errors.InvalidInput(f"idempotency_key: {key!r} already forked another "
                                      "workflow", field="idempotency_key")
        return row["workflow_id"]

    def get_workflow(self, workflow_id: Any) -> dict[str, Any]:
        """Returns the status of a workflow: state, progress, warnings, error, outputs, tasks.

        Raises:
            UnknownWorkflow: no such workflow.
        """
        workflow = self.store.get_workflow(inputs.workflow_id(workflow_id))
        return presentation.describe(workflow, self.store.get_tasks(workflow.workflow_id),
                                     self.store.get_history(workflow.workflow_id))

    # -- running one step --------------------------------------------------------------------

    def step(self, lease: models.Lease, *,
             keep_lease: bool) -> tuple[models.Workflow, models.Lease | None]:
        """Runs one step of a workflow this worker holds: decide, act (at most one agent
        request), record (one fenced write). What the worker calls.

        Never raises for a bad agent reply or a bug in a step: the workflow fails with the
        reason instead. A lost lease is logged and the stored workflow returned.

        Args:
            keep_lease: Keep the lease of a workflow the step leaves due now: the caller
                goes on with its next step at once instead of releasing it and claiming it.

        Returns:
            The workflow as stored, and its renewed lease when ``keep_lease`` kept it.
        """
        log = logs.for_workflow(logger, lease.workflow.workflow_id)
        try:
            with self.heartbeat.holding(lease.workflow.workflow_id):
                outcome = self._decide_and_act(lease, log)
        except errors.StoreError:
            raise  # the database, not the step: the caller gives the lease back
        except errors.StaleState as exc:
            log.warning("lease lost before the call: %s", exc, extra={"action": "stale_result"})
            return self.store.get_workflow(lease.workflow.workflow_id), None
        except Exception as exc:  # a bug must fail the workflow, never the worker
            log.exception("step crashed", extra={"action": "step_crashed",
                                                 "state": lease.workflow.state})
            reason = f"internal error: {type(exc).__name__}: {logs.clip(str(exc), 300)}"
            outcome = decide.verdict_outcome(lease.workflow, steps.Verdict(False, reason=reason),
                                             review_timeout_s=self.settings.review_timeout_s)
        if outcome is None:  # queued for an agent slot: the lease is gone, nothing to record
            return self.store.get_workflow(lease.workflow.workflow_id), None
        self._fault("after_call", lease.workflow)
        keep_lease = keep_lease and not decide.hands_over_slot(lease.workflow, outcome,
                                                               self.settings.agent)
        return self._record(lease, outcome, keep_lease, log)

    def _decide_and_act(self, lease: models.Lease,
                        log: logs.WorkflowLogger) -> models.Outcome | None:
        """The step's outcome; None when it waits for an agent slot (its lease released)."""
        workflow, clock = lease.workflow, _clock(lease.db_now)
        tasks = {t.item_key: t for t in lease.tasks}
        action = decide.next_action(workflow, tasks, clock(), self.settings.max_recovery_attempts,
                                    lease.agent_pauses)
        report = None
        if isinstance(action, decide.Call):
            step = steps.step_for(workflow)
            if not self._admitted(lease, step, action, log):
                return None
            self._fault("before_call", workflow)
            log = log.bind(task_id=str(action.task.task_id))
            task = attempt.act(self.client, self.settings, step, workflow, action.task,
                               action.item, clock, log,
                               callback_url=self.callback_url(workflow, action.task, log))
            report = decide.agent_report(step, action.task, task, lease.agent_pauses)
            action = decide.after_call(workflow, tasks, task, clock())
        return decide.outcome(workflow, action, self.settings.review_timeout_s, report)

    def _admitted(self, lease: models.Lease, step: steps.Step, call: decide.Call,
                  log: logs.WorkflowLogger) -> bool:
        """Whether ``call`` may go now: a submit to a capped agent holds one of its slots,
        then (rate-limited) its place in the rate. False: the workflow waits for it, its
        lease released (a freed slot or the time of its place makes it due again)."""
        limits = None if step.notified else decide.admission(
            step, call, self.settings.agent(step.agent))
        if limits is None:
            return True
        held = (step.agent, call.item_key) in lease.slots
        if limits.max_in_flight is not None and not held and not self.store.take_slot(
                lease, step.agent, call.item_key, limits.max_in_flight):
            log.info("waiting for a %s slot (%d in flight)", step.agent, limits.max_in_flight,
                     extra={"action": "slot_wait", "agent": step.agent})
            return False
        wait_s = 0.0 if limits.rate_limit is None else self.store.take_token(
            lease, step.agent, call.item_key, limits.rate_limit, limits.rate_burst)
        if wait_s > 0:
            log.info("waiting %.2f s for its place in %s's rate (%g per second)", wait_s,
                     step.agent, limits.rate_limit,
                     extra={"action": "rate_wait", "agent": step.agent})
        return wait_s <= 0

    def callback_key(self) -> bytes:
        """The secret that signs callback URLs (read once; see :mod:`cpoa.callbacks`).

        Raises:
            StoreError: it had to be read from the database, which failed.
        """
        if self._callback_key is None:
            self._callback_key = callbacks.signing_key(self.settings, self.store)
        return self._callback_key

    @property
    def cached_callback_key(self) -> bytes | None:
        """The callback secret if it was read already (an event loop may use it without
        waiting on the database), else None."""
        return self._callback_key

    def callback_url(self, workflow: models.Workflow, task: models.Task,
                     log: logs.WorkflowLogger) -> str | None:
        """The ``X-Callback-URL`` of a task's submit; None with no CPOA_CALLBACK_BASE_URL, or
        while the secret cannot be read (the task is polled as usual)."""
        if not self.settings.callback_base_url:
            return None
        try:
            key = self.callback_key()
        except errors.StoreError as exc:
            log.warning("no callback URL for this request: %s", exc,
                        extra={"action": "callback_url_failed"})
            return None
        return callbacks.url(self.settings.callback_base_url, key, workflow.workflow_id,
                             task.task_id, task.idempotency_key)

    def _record(self, lease: models.Lease, outcome: models.Outcome, keep_lease: bool,
                log: logs.WorkflowLogger) -> tuple[models.Workflow, models.Lease | None]:
        try:
            workflow, next_lease = self.store.record(
                lease, outcome, renew_ttl_s=self.settings.lease_ttl_s if keep_lease else None,
                before_commit=self.fault_hook and (
                    lambda: self._fault("before_commit", lease.workflow)))
        except errors.StaleState as exc:
            log.warning("result discarded: %s", exc, extra={"action": "stale_result"})
            return self.store.get_workflow(lease.workflow.workflow_id), None
        self._fault("after_commit", lease.workflow)
        if outcome.is_transition:
            metrics.transitioned(lease.workflow, outcome.dest, outcome.trigger)
            log.info("%s -> %s", lease.workflow.state, outcome.dest,
                     extra={"action": "transition", "from": lease.workflow.state,
                            "to": outcome.dest, "reason": outcome.error_message})
        return workflow, next_lease

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

    def _due_in(self, dest: str) -> float:
        return decide.due_in(dest, self.settings.review_timeout_s)

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


def _clock(db_now: datetime.datetime) -> Callable[[], datetime.datetime]:
    """The database's clock, carried forward by this process's monotonic clock."""
    started = time.monotonic()
    return lambda: db_now + datetime.timedelta(seconds=time.monotonic() - started)
