"""Whole-request deadlines: connect, send, the answer's headers and its whole body.

``requests`` bounds each socket operation, not the request: an agent that trickles its answer
a byte at a time keeps one request alive for as long as it likes. Here every request runs
under a deadline kept by one watchdog thread per process; at the deadline the watchdog shuts
the request's socket down, the blocked read fails at once, and the caller reports a timeout.
The connection of each request is known because the sessions built here use connection
classes that record, per thread, the connection that is sending (:func:`mount`).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
import requests.adapters
from urllib3 import connection as urllib3_connection
from urllib3 import connectionpool

_sending: dict[int, Any] = {}
"""Thread ident -> the urllib3 connection that thread is using for its current request."""
_sending_lock = threading.Lock()


class _Tracked:
    """Records itself as its thread's connection whenever a request goes out on it."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        with _sending_lock:
            _sending[threading.get_ident()] = self
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Tracked, urllib3_connection.HTTPConnection):
    pass


class _HTTPSConnection(_Tracked, urllib3_connection.HTTPSConnection):
    pass


class _HTTPPool(connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def mount(session: requests.Session) -> requests.Session:
    """Makes ``session``'s requests interruptible by :func:`guard`; returns it."""
    session.mount("http://", _Adapter())
    session.mount("https://", _Adapter())
    return session


class Guard:
    """One request's deadline. ``expired`` is True once the watchdog cut the request."""

    def __init__(self, thread: int) -> None:
        self.thread = thread
        self.expired = False
        self.done = False
        self.lock = threading.Lock()

    def cut(self) -> None:
        with self.lock:
            if self.done:
                return
            self.expired = True
            with _sending_lock:
                conn = _sending.get(self.thread)
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One thread that cuts the requests whose deadline passed, earliest first."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Guard]] = []
        self.order = itertools.count()
        self.changed = threading.Condition()
        self.thread: threading.Thread | None = None

    def watch(self, guard: Guard, seconds: float) -> None:
        with self.changed:
            heapq.heappush(self.heap, (time.monotonic() + seconds, next(self.order), guard))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="cpoa-deadlines",
                                               daemon=True)
                self.thread.start()
            elif self.heap[0][2] is guard:
                self.changed.notify()

    def _run(self) -> None:
        while True:
            with self.changed:
                while self.heap and self.heap[0][2].done:
                    heapq.heappop(self.heap)  # finished in time
                if not self.heap:
                    self.changed.wait()
                    continue
                at, _, guard = self.heap[0]
                if time.monotonic() < at:
                    self.changed.wait(at - time.monotonic())
                    continue
                heapq.heappop(self.heap)
            guard.cut()


_WATCHDOG = _Watchdog()


@contextlib.contextmanager
def guard(seconds: float) -> Iterator[Guard]:
    """Runs the block (one request, its body read to the end) under a deadline.

    Yields:
        The :class:`Guard`: after an exception, ``expired`` says whether the deadline
        caused it.
    """
    ident = threading.get_ident()
    current = Guard(ident)
    _WATCHDOG.watch(current, seconds)
    try:
        yield current
    finally:
        with current.lock:
            current.done = True
        with _sending_lock:
            _sending.pop(ident, None)
