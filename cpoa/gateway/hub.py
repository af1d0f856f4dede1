"""The process's one LISTEN connection on ``cpoa_events``, fanned out to every live stream.

A trigger on ``workflow_events`` notifies ``cpoa_events`` with ``<workflow_id>:<event_id>`` at
each COMMIT, in commit order. The :class:`Hub` thread listens, reads each new history row once
and pushes it to every :class:`Subscription` that wants it (an asyncio queue per stream, fed
across threads). Whenever the listener (re)connects it pushes :data:`RESYNC` instead: anything
committed while nobody listened was never notified, so each stream re-reads the table.
A step that forwards an agent's live progress notifies ``<workflow_id>:progress`` (no history
row): the streams of that workflow get a :class:`Progressed` and send a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import uuid
from typing import Any

from cpoa import errors
from cpoa.gateway import views
from cpoa.store import EVENTS_CHANNEL, PostgresStore

logger = logging.getLogger(__name__)

LISTEN_POLL_S = 0.5
"""How often the listener thread looks at its stop flag between notifications."""
QUEUE_MAX = 1000
"""Rows queued for one slow client; past it the client re-reads from its cursor instead."""
OUTAGE_PAUSE_S = (0.5, 5.0)
"""First and longest pause of the listener after a database error, doubling in between."""

RESYNC = "resync"
"""Queued instead of rows: events may have been missed; read the table from the cursor."""
CLOSED = "closed"
"""Queued when the hub closes: the stream ends."""
PROGRESS_TAG = "progress"
"""The payload's tail (``<workflow_id>:progress``) of a live-progress notification."""


@dataclasses.dataclass(frozen=True)
class Progressed:
    """Queued to a workflow's streams: its agent reported progress (send a snapshot)."""

    workflow_id: str


class Subscription:
    """One stream's queue; rows are pushed from the hub thread into the stream's event loop.

    Args:
        loop: The event loop the stream runs in.
        workflow_id: Only this workflow's rows (None: every workflow's).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, workflow_id: str | None) -> None:
        self.loop = loop
        self.workflow_id = workflow_id
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.overflowed = False

    def wants(self, row: dict[str, Any]) -> bool:
        return self.workflow_id is None or row["workflow_id"] == self.workflow_id

    def push(self, item: Any) -> None:
        """Queues a row, :data:`RESYNC` or :data:`CLOSED` (from any thread)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self.loop.call_soon_threadsafe(self._put, item)

    def _put(self, item: Any) -> None:
        if item is CLOSED or self.queue.qsize() < QUEUE_MAX:
            self.queue.put_nowait(item)
        elif not self.overflowed:  # rows dropped from here on are re-read at the RESYNC
            self.overflowed = True
            self.queue.put_nowait(RESYNC)

    async def next(self, timeout: float) -> Any:
        """Returns the next item, or None after ``timeout`` seconds without one."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    def ready(self) -> list[Any]:
        """Returns every item already queued, without waiting."""
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items


class Hub:
    """The process's one listener on :data:`EVENTS_CHANNEL`, shared by every stream.

    Its thread starts with the first subscriber and runs until :meth:`close`.

    Args:
        store: Where the history rows are read.
        poll_s: How often the thread looks at its stop flag.
    """

    def __init__(self, store: PostgresStore, poll_s: float = LISTEN_POLL_S) -> None:
        self.store = store
        self.poll_s = poll_s
        self.closed = False
        self._subscribers: set[Subscription] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def subscribers(self) -> int:
        """How many streams are open."""
        with self._lock:
            return len(self._subscribers)

    def subscribe(self, workflow_id: str | None) -> Subscription:
        """Registers a stream (call from its event loop); starts the listener if needed."""
        subscription = Subscription(asyncio.get_running_loop(), workflow_id)
        with self._lock:
            if self.closed:
                subscription.push(CLOSED)
                return subscription
            self._subscribers.add(subscription)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cpoa-live",
                                                daemon=True)
                self._thread.start()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    def close(self) -> None:
        """Ends every stream and stops the listener (which closes its connection)."""
        with self._lock:
            self.closed = True
            subscribers = list(self._subscribers)
        self._stop.set()
        for subscription in subscribers:
            subscription.push(CLOSED)

    def join(self, timeout: float) -> bool:
        """Waits for the listener thread to end; True when it has (or never started)."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    # -- the listener thread -------------------------------------------------------------------

    def _run(self) -> None:
        listener = self.store.listener(EVENTS_CHANNEL)
        connections, pause = 0, 0.0
        try:
            while not self._stop.is_set():
                try:
                    payloads = listener.receive(self.poll_s)
                except errors.StoreError as exc:
                    if not pause:
                        logger.error("live updates: database unavailable: %s", exc,
                                     extra={"action": "live_outage"})
                    pause = min(OUTAGE_PAUSE_S[1], max(OUTAGE_PAUSE_S[0], pause * 2))
                    self._stop.wait(pause)
                    continue
                pause = 0.0
                if listener.connections != connections:
                    # Anything committed while nobody listened was never notified here.
                    connections = listener.connections
                    self._broadcast(RESYNC)
                if payloads:
                    self._dispatch(payloads)
        finally:
            listener.close()

    def _broadcast(self, item: Any) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription.push(item)

    def _dispatch(self, payloads: list[str]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        self._progressed(payloads, subscribers)
        keys = [key for key in map(_event_key, payloads) if key is not None]
        if not subscribers or not keys:
            return
        try:
            rows = {r["event_id"]: views.event_view(r) for r in self.store.get_events(keys)}
        except errors.StoreError as exc:
            logger.warning("live updates: could not read events: %s", exc,
                           extra={"action": "live_read_failed"})
            self._broadcast(RESYNC)
            return
        for _, event_id in keys:  # NOTIFY order is commit order
            row = rows.get(event_id)
            for subscription in subscribers if row else ():
                if subscription.wants(row):
                    subscription.push(row)


    @staticmethod
    def _progressed(payloads: list[str], subscribers: list[Subscription]) -> None:
        """Pushes a :class:`Progressed` to the streams of each workflow that reported
        progress (once per batch of notifications)."""
        workflows = {head for head, _, tail in (p.rpartition(":") for p in payloads)
                     if tail == PROGRESS_TAG}
        for subscription in subscribers:
            if subscription.workflow_id in workflows:
                subscription.push(Progressed(subscription.workflow_id))


def _event_key(payload: str) -> tuple[uuid.UUID, int] | None:
    """The (workflow id, event id) of a ``<workflow_id>:<event_id>`` payload, or None if
    malformed."""
    head, _, text = payload.rpartition(":")
    if not text.isdigit():
        return None
    try:
        return uuid.UUID(head), int(text)
    except ValueError:
        return None
