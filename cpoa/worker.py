"""The worker: N slots in one process claim due workflows (SKIP LOCKED) and advance them.

It sleeps on LISTEN/NOTIFY and on the schedule stored in the rows, never in a tight loop. Its
LISTEN connection also vouches for its leases (a session advisory lock: when the process
dies, they die with its session); while another worker holds leases, a worker with free slots
looks for dead ones every RECOVERY_CHECK_S (one statement), so a crashed worker's workflows
are taken up within about that long. It delivers the UI-event outbox on its own thread, and on
``stop()`` (SIGTERM) finishes the transitions in flight, then returns.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import threading
import time
import uuid
from typing import Any

from cpoa import defaults, errors, logs, machine, models, outbox, recovery
from cpoa.engine import Engine
from cpoa.models import Lease

logger = logging.getLogger(__name__)
LISTEN_POLL_S = 1.0
"""How often the listener thread looks at the stop flag between notifications."""
OUTAGE_PAUSE_S = (0.5, 2.0)
"""First and longest pause after a database error, doubling in between: a thread's next
attempt comes at most 2 s after the server is back (with 10 s, a restart that took 8 s
cost up to 8 s more)."""


def check_machine(store: Any) -> None:
    """Refuses to run on a database whose state machine is not this code's.

    Raises:
        MachineMismatch: naming the difference and the command that fixes it.
    """
    mismatch = machine.difference(*store.enforced_machine())
    if mismatch is not None:
        logger.error("state machine mismatch", extra={"action": "machine_mismatch",
                                                      "reason": mismatch})
        raise errors.MachineMismatch(mismatch)


class Worker:
    """Drives every due workflow of one database.

    Args:
        engine: The engine whose store and agents to use.
        concurrency: Workflows advanced at once.
        until_idle: Return once no workflow is unfinished and no UI event is due.
    """

    def __init__(self, engine: Engine, *, concurrency: int = defaults.WORKER_CONCURRENCY,
                 until_idle: bool = False) -> None:
        self.engine = engine
        self.store = engine.store
        self.settings = engine.settings
        self.concurrency = concurrency
        self.until_idle = until_idle
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.outbox_wake = threading.Event()
        self.sleeping = threading.Event()
        """Set while the claim loop sleeps with nothing to do (tests and health checks)."""
        self.advanced = 0
        self._inflight: set[concurrent.futures.Future] = set()
        self._solo: uuid.UUID | None = None
        """A workflow recovered more than once in its state (claim_due claims it alone): no
        other is claimed until its slot is done or its step moved it on (which starts its
        recoveries afresh), so that if it kills the process nothing else is charged."""
        self._outage = _Outage()
        self._due_at = 0.0
        """When (monotonic) the last schedule said something becomes due or a lease expires."""
        self._unreleased: collections.deque[Lease] = collections.deque()
        """Leases whose step result could not be stored (the database was away): given back
        as soon as it answers again, instead of waiting out their TTL."""
        self._next_sweep = 0.0
        """When (monotonic) a worker that keeps claiming sweeps next."""
        self._listener = self.store.listener(liveness=True)

    def stop(self) -> None:
        """Asks the worker to finish what it is doing and return (safe from a signal handler)."""
        self.stopping.set()
        self.wake.set()
        self.outbox_wake.set()

    def run(self) -> None:
        """Runs until :meth:`stop` (or idle, with ``until_idle``).

        Raises:
            MachineMismatch: the database enforces another state machine (nothing was run).
        """
        check_machine(self.store)
        logger.info("worker started", extra={"action": "worker_start",
                                             "owner": self.engine.owner,
                                             "concurrency": self.concurrency})
        try:  # vouch for this process before its first claim
            self._listener.connect()
        except errors.StoreError:
            pass  # the first claim tries again (it claims nothing until this connects)
        self.engine.liveness = self._listener
        threads = [threading.Thread(target=self._listen, name="cpoa-listen", daemon=True),
                   threading.Thread(target=self._deliver, name="cpoa-outbox", daemon=True)]
        for thread in threads:
            thread.start()
        with concurrent.futures.ThreadPoolExecutor(self.concurrency,
                                                   thread_name_prefix="cpoa-slot") as pool:
            try:
                self._loop(pool)
            finally:
                concurrent.futures.wait(list(self._inflight))
                self.stop()
        threads[1].join(timeout=defaults.NOTIFY_TIMEOUT_S * 2)
        threads[0].join(timeout=LISTEN_POLL_S * 2)  # release its connection before returning
        self.engine.liveness = None
        logger.info("worker stopped", extra={"action": "worker_stop", "advanced": self.advanced})

    # -- the claim loop ----------------------------------------------------------------------

    def _loop(self, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        woken = True
        while True:
            # Clear the wake-up before looking at the stop flag: a stop() in between must not
            # be erased (it would sleep out its whole wait). A wake-up set after the clear
            # stays set and ends the next wait at once.
            if self.wake.is_set():
                self.wake.clear()
                woken = True
            if self.stopping.is_set():
                return
            try:
                # A wake-up that was only a timeout, with nothing due yet, needs no claim.
                claimed = self._claim(pool) if woken or time.monotonic() >= self._due_at else 0
                if self.until_idle and not self._inflight and not claimed and self._idle():
                    return
                if claimed:
                    self._sweep_while_busy()
                wait_s = 0.0 if claimed else self._seconds_to_wait()
                woken = False
                self._outage.over()
                self._give_back()
            except errors.StoreError as exc:
                wait_s = self._outage.pause(exc)
            if wait_s > 0:
                self.sleeping.set()
                self.wake.wait(wait_s)
                self.sleeping.clear()

    def _claim(self, pool: concurrent.futures.ThreadPoolExecutor) -> int:
        free = self.concurrency - len(self._inflight)
        if free <= 0 or self._solo is not None:
            return 0
        if self._listener.liveness_key is None:
            # Vouch for this process first (its listener is reconnecting, after a cut or a
            # server restart): a lease claimed now would carry no liveness key, and if this
            # process then died its workflow would wait out the whole lease TTL.
            self._listener.connect()
        leases = self.store.claim_due(self.engine.owner, self.settings.lease_ttl_s, free,
                                      self.engine.liveness_key)
        for lease in leases:
            workflow_id = lease.workflow.workflow_id
            if lease.workflow.recovery_attempts > 1:  # claim_due's rule: a suspect runs alone
                self._solo = workflow_id
            future = pool.submit(self._advance, lease)
            self._inflight.add(future)
            future.add_done_callback(functools.partial(self._done, workflow_id))
        return len(leases)

    def _advance(self, lease: Lease | None) -> None:
        """Runs a claimed workflow's step, and its next ones while it stays due (bounded)."""
        for left in range(defaults.STEPS_PER_CLAIM - 1, -1, -1):
            if lease is None:
                return
            keep_lease = left > 0 and not self.stopping.is_set()
            try:
                workflow, lease = self.engine.step(lease, keep_lease=keep_lease)
            except errors.StoreError as exc:  # given back when the database answers again
                logger.warning("could not store a step result: %s", exc,
                               extra={"action": "store_failed",
                                      "workflow_id": str(lease.workflow.workflow_id),
                                      "state": lease.workflow.state})
                self._unreleased.append(lease)
                return
            except Exception:  # a bug here must not cost the workflow a recovery
                logs.for_workflow(logger, lease.workflow.workflow_id).exception(
                    "unexpected error in a worker slot; workflow released",
                    extra={"action": "slot_error", "state": lease.workflow.state})
                self._release(lease)
                return
            self.advanced += 1
            if workflow.recovery_attempts <= 1:  # moved on: no longer a suspect
                self._solo_over(workflow.workflow_id)
            if workflow.client_id:  # its step may have queued a UI event (only with a client)
                self.outbox_wake.set()

    def _done(self, workflow_id: uuid.UUID, future: concurrent.futures.Future) -> None:
        self._inflight.discard(future)
        self._solo_over(workflow_id)
        self.wake.set()

    def _solo_over(self, workflow_id: uuid.UUID) -> None:
        if self._solo == workflow_id:
            self._solo = None
            self.wake.set()

    def _give_back(self) -> None:
        """Releases the leases whose results could not be stored (fenced: a lease that moved
        on meanwhile is left alone), now that the database answers."""
        while self._unreleased:
            self._release(self._unreleased.popleft())

    def _release(self, lease: Lease) -> None:
        try:
            self.store.release_lease(lease, defaults.SLOT_ERROR_RETRY_S)
        except errors.StoreError:
            pass  # the lease then runs out (one TTL) and the workflow is recovered

    def _sweep_while_busy(self) -> None:
        """Sweeps at most every RECOVERY_CHECK_S while claims keep succeeding: a worker that
        always finds something due never gets to :meth:`_seconds_to_wait`, and without this a
        dead worker's leases would wait until every busy worker ran out of due work."""
        if time.monotonic() >= self._next_sweep:
            self._sweep()

    def _sweep(self) -> models.Schedule:
        """Requeues dead leases (one statement); what it requeued is due at once."""
        schedule = recovery.sweep(self.store, self.engine.owner)
        self._next_sweep = time.monotonic() + defaults.RECOVERY_CHECK_S
        if schedule.requeued:
            self._due_at = 0.0  # claim them now
        return schedule

    def _seconds_to_wait(self) -> float:
        """Sweeps dead leases and returns how long to sleep (one statement)."""
        if len(self._inflight) >= self.concurrency:
            return defaults.IDLE_WAIT_MAX_S  # a finishing slot sets `wake`
        solo = self._solo is not None
        schedule = self._sweep()
        if schedule.requeued:
            return 0.0
        wait_s = min(defaults.IDLE_WAIT_MAX_S, self.settings.sweep_interval_s)
        if schedule.seconds is not None and not solo:  # a solo's end sets `wake`
            # A lease that runs out exactly then is requeued by the sweep after the wait.
            wait_s = min(wait_s, schedule.seconds + defaults.WAKE_LATE_S)
        if schedule.watch:
            wait_s = min(wait_s, defaults.RECOVERY_CHECK_S)
        self._due_at = time.monotonic() + (schedule.seconds if schedule.seconds is not None
                                           else defaults.IDLE_WAIT_MAX_S)
        return wait_s

    def _idle(self) -> bool:
        workflows, events = self.store.count_unfinished()
        return workflows == 0 and events == 0

    # -- helper threads ----------------------------------------------------------------------

    def _listen(self) -> None:
        listener = self._listener
        outage = _Outage()
        seen = listener.connections
        try:
            while not self.stopping.is_set():
                try:
                    listener.connect()  # nothing to do while connected
                    # (Re)connected, here or by a claim: what was notified meanwhile was lost.
                    if listener.connections > seen or listener.wait(timeout=LISTEN_POLL_S):
                        seen = listener.connections
                        self.wake.set()
                        self.outbox_wake.set()
                    outage.over()
                except errors.StoreError as exc:
                    pause_s = outage.pause(exc)
                    try:  # a cut connection, not an outage: vouch for this process again now
                        listener.connect()
                    except errors.StoreError:
                        self.stopping.wait(pause_s)
        finally:
            listener.close()

    def _deliver(self) -> None:
        outage = _Outage()
        url = self.settings.asf_ui_update_url
        while True:
            self.outbox_wake.clear()
            try:
                delivered = outbox.deliver_due(self.store, self.engine.client, url)
                outage.over()
                if delivered:
                    self.wake.set()  # --until-idle may be waiting for the outbox to drain
            except errors.StoreError as exc:
                delivered = 0
                self.outbox_wake.wait(outage.pause(exc))
            if self.stopping.is_set() and not delivered:
                return
            if not delivered:
                self.outbox_wake.wait(defaults.OUTBOX_IDLE_S)


class _Outage:
    """Logs a database outage once, not once per attempt, and paces the attempts."""

    def __init__(self) -> None:
        self.pause_s = 0.0

    def pause(self, exc: Exception) -> float:
        if not self.pause_s:
            logger.error("database unavailable: %s", exc, extra={"action": "db_outage"})
        self.pause_s = min(OUTAGE_PAUSE_S[1], max(OUTAGE_PAUSE_S[0], self.pause_s * 2))
        return self.pause_s

    def over(self) -> None:
        if self.pause_s:
            logger.warning("database available again", extra={"action": "db_recovered"})
        self.pause_s = 0.0
