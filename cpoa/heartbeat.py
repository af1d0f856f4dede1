"""The heartbeat: renews the leases of workflows whose agent request is still in flight.

A lease lasts ``CPOA_LEASE_TTL_SECONDS`` (30 s by default) from its last renewal. While a step's
request runs, one thread per engine renews every held lease each third of that, in one
statement, so a request of any length (bounded by its own deadline) keeps its lease, and a
process that stops running (SIGSTOP, a hung interpreter) loses it one TTL after the last beat.
The thread starts with the first lease held and ends at a beat that finds none: a busy worker
keeps one thread, and a step costs two dictionary updates under a lock, not a thread start and
a wake-up (`bench.run --quick --only engine`: worker CPU per transition 1.04 -> 0.73 ms at 1 slot).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator

from cpoa import defaults, errors
from cpoa.store import PostgresStore

logger = logging.getLogger(__name__)


class Heartbeat:
    """Renews the leases one owner holds while its requests are in flight.

    Args:
        store: Where the leases are.
        owner: The lease owner name whose leases to renew.
        ttl_s: The lease TTL; renewals come every ``ttl_s / HEARTBEATS_PER_TTL``.
    """

    def __init__(self, store: PostgresStore, owner: str, ttl_s: float) -> None:
        self.store = store
        self.owner = owner
        self.ttl_s = ttl_s
        self.beats = 0
        """Renewal statements sent so far (tests read it)."""
        self._held: dict[uuid.UUID, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def holding(self, workflow_id: uuid.UUID) -> Iterator[None]:
        """Keeps the lease of ``workflow_id`` renewed for the duration of the block."""
        with self._lock:
            self._held[workflow_id] = self._held.get(workflow_id, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cpoa-heartbeat",
                                                daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held[workflow_id] -= 1
                if not self._held[workflow_id]:
                    del self._held[workflow_id]

    def _run(self) -> None:
        interval = self.ttl_s / defaults.HEARTBEATS_PER_TTL
        next_beat = time.monotonic() + interval
        while True:
            time.sleep(max(0.0, next_beat - time.monotonic()))
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
                held = list(self._held)
            self._renew(held)
            next_beat = time.monotonic() + interval

    def _renew(self, workflow_ids: list[uuid.UUID]) -> None:
        try:
            self.store.renew_leases(self.owner, workflow_ids, self.ttl_s)
            self.beats += 1
        except errors.StoreError as exc:  # the lease may expire: fencing refuses a late result
            logger.warning("could not renew leases: %s", exc, extra={"action": "heartbeat_failed"})
