"""Live updates as Server-Sent Events, fed by the process's one :class:`cpoa.gateway.hub.Hub`.

``GET /events[?workflow_id=…][&kind=…]`` streams:

- ``transition`` frames (``id:`` = ``workflow_events.event_id``, so a reconnecting browser's
  ``Last-Event-ID`` resumes after it: the rows after it are replayed from the table first);
- per-workflow streams (``?workflow_id=``) a ``snapshot`` after each batch: the workflow page's
  data (:func:`views.workflow_view`), and after an agent's live progress (no history row);
  the all-workflows stream a ``counts`` frame instead;
- a ``: heartbeat`` comment after :data:`HEARTBEAT_S` of silence.

A stream ends when its client goes away and when the server stops: uvicorn waits for open
responses before it runs the application's shutdown, so :class:`Server` closes the hub first.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.to_thread
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from cpoa import errors, inputs, machine
from cpoa.gateway import hub as hubs
from cpoa.gateway import problems, views
from cpoa.store import PostgresStore

logger = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
"""Silence after which a stream sends a comment (keeps proxies open, reveals dead clients)."""
RECONNECT_MS = 2000
"""The ``retry:`` a browser waits before reconnecting."""
REPLAY_PAGE = 500
"""History rows read per query while replaying."""
RECENT_IDS = 4096
"""Event ids a stream remembers having sent (ids can commit out of order across workflows)."""
KINDS = tuple(machine.KINDS)
"""The ``kind`` values the all-workflows stream accepts."""



class Sent:
    """The event ids a stream has sent: the highest (the replay cursor) and the recent ones."""

    def __init__(self, after: int, monotonic: bool) -> None:
        self.cursor = after
        self.monotonic = monotonic  # one workflow's ids grow in commit order
        self._recent: collections.OrderedDict[int, None] = collections.OrderedDict()

    def first_time(self, event_id: int) -> bool:
        """Records ``event_id``; False when the client has it already."""
        if event_id in self._recent or (self.monotonic and event_id <= self.cursor):
            return False
        self._recent[event_id] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)
        self.cursor = max(self.cursor, event_id)
        return True


def frame(event: str, data: Any, event_id: int | None = None) -> str:
    """Returns one SSE frame; ``json.dumps`` keeps ``data`` on one line (no field injection)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, allow_nan=False)}\n\n"


class Stream:
    """The frames of one client: replay after its cursor, then live rows, until the end.

    Args:
        hub: The process's hub.
        store: Where to replay from and read snapshots.
        workflow_id: One workflow, or None for all of them.
        after: The client's last event id (None: none; the all-workflows stream starts now).
        kind: The all-workflows stream counts workflows of this kind only.
        heartbeat_s: Silence before a heartbeat comment.
    """

    def __init__(self, hub: hubs.Hub, store: PostgresStore, workflow_id: uuid.UUID | None,
                 after: int | None, kind: str | None = None,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.hub = hub
        self.store = store
        self.workflow_id = workflow_id
        self.after = after
        self.kind = kind
        self.heartbeat_s = heartbeat_s

    async def frames(self) -> AsyncIterator[str]:
        """Yields SSE frames until the client leaves or the hub closes."""
        subscription = self.hub.subscribe(str(self.workflow_id) if self.workflow_id else None)
        try:
            yield f"retry: {RECONNECT_MS}\n\n"
            sent = Sent(await self._start(), monotonic=self.workflow_id is not None)
            resync, first = True, True
            while True:
                if resync:
                    subscription.overflowed = False
                    resync = False
                    async for text in self._catch_up(sent, summarize=first):
                        if text is None:  # the database failed: try again after a while
                            resync = True
                        else:
                            yield text
                    first = False
                item = await subscription.next(self.heartbeat_s)
                if item is None:
                    yield ": heartbeat\n\n"
                    continue
                items = [item, *subscription.ready()]
                if hubs.CLOSED in items:
                    return
                resync = resync or hubs.RESYNC in items
                rows = [i for i in items if isinstance(i, dict)]
                progressed = any(isinstance(i, hubs.Progressed) for i in items)
                for text in await self._batch(rows, sent, summarize=progressed or None):
                    yield text
        except errors.UnknownWorkflow:
            return  # pruned meanwhile
        finally:
            self.hub.unsubscribe(subscription)

    async def _start(self) -> int:
        if self.after is not None:
            return self.after
        if self.workflow_id is not None:
            return 0
        _, last = await anyio.to_thread.run_sync(self.store.state_counts, self.kind)
        return last

    async def _read(self, read: Callable[..., Any], *args: Any) -> Any:
        """Runs a store read in a thread; None (and a warning) if the database failed."""
        try:
            return await anyio.to_thread.run_sync(read, *args)
        except errors.UnknownWorkflow:
            raise
        except errors.StoreError as exc:
            logger.warning("live stream: database read failed: %s", exc,
                           extra={"action": "live_read_failed"})
            return None

    async def _catch_up(self, sent: Sent, summarize: bool) -> AsyncIterator[str | None]:
        """The frames of the rows after the stream's cursor, then a summary if ``summarize``
        (the first catch-up) or if it found rows the stream had missed; a last None when a
        read failed."""
        found = failed = False
        async for rows in self._replay(sent):
            if rows is None:
                failed = True
                break
            texts = await self._batch(rows, sent, summarize=False)
            found = found or bool(texts)
            for text in texts:
                yield text
        if summarize or found:
            for text in await self._batch([], sent, summarize=True):
                yield text
        if failed:
            yield None

    async def _replay(self, sent: Sent) -> AsyncIterator[list[dict[str, Any]] | None]:
        """Yields the rows after the stream's cursor a page at a time (None: a read failed)."""
        while True:
            page = await self._read(self.store.events_after, sent.cursor, self.workflow_id,
                                    REPLAY_PAGE)
            yield None if page is None else [views.event_view(r) for r in page]
            if page is None or len(page) < REPLAY_PAGE:
                return

    async def _batch(self, rows: list[dict[str, Any]], sent: Sent,
                     summarize: bool | None = None) -> list[str]:
        """The frames of the rows not sent yet, then a summary: after any of them by default,
        or as ``summarize`` says."""
        texts = [frame("transition", row, row["event_id"]) for row in rows
                 if sent.first_time(row["event_id"])]
        if summarize or (summarize is None and texts):
            if self.workflow_id is not None:
                view = await self._read(snapshot, self.store, self.workflow_id)
                if view is not None:
                    texts.append(frame("snapshot", view))
            else:
                counts = await self._read(self.store.state_counts, self.kind)
                if counts is not None:
                    texts.append(frame("counts", {"counts": counts[0], "kind": self.kind}))
        return texts


def snapshot(store: PostgresStore, workflow_id: uuid.UUID) -> dict[str, Any]:
    """Returns the workflow page's data (:func:`views.workflow_view`) and, as
    ``state_counts``, the workflows of its kind in each state (for the diagram); reads the
    workflow, then its tasks, then the counts."""
    workflow = store.get_workflow(workflow_id)
    view = views.workflow_view(workflow, store.get_tasks(workflow_id))
    view["state_counts"] = store.state_counts(workflow.kind)[0]
    return view


# -- the route and the hub's lifetime -------------------------------------------------------------


def hub_of(app: FastAPI) -> hubs.Hub:
    """Returns the application's hub, creating it on first use."""
    hub = getattr(app.state, "live_hub", None)
    if hub is None:
        hub = app.state.live_hub = hubs.Hub(app.state.engine.store)
    return hub


def close(app: FastAPI) -> None:
    """Ends every stream of ``app`` and stops its listener (if it has a hub)."""
    hub = getattr(app.state, "live_hub", None)
    if hub is not None:
        hub.close()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Closes the hub when the application stops (after uvicorn's :class:`Server` has) and
    waits for its listener to let go of its connection."""
    yield
    close(app)
    hub = getattr(app.state, "live_hub", None)
    if hub is not None:
        await anyio.to_thread.run_sync(hub.join, 2 * hub.poll_s + 1.0)


router = APIRouter(include_in_schema=False, lifespan=lifespan)


@router.get("/events", response_model=None)
async def events(request: Request, workflow_id: str | None = None,
                 last_event_id: str | None = None, kind: str | None = None
                 ) -> StreamingResponse | JSONResponse:
    """``GET /events[?workflow_id=…][&kind=…]``: history as Server-Sent Events, resumable."""
    try:
        after = _resume_point(request.headers.get("last-event-id"), last_event_id)
        wanted = inputs.workflow_id(workflow_id) if workflow_id else None
        if kind is not None and kind not in KINDS:
            raise errors.InvalidInput(f"kind: expected {' or '.join(KINDS)}", field="kind")
    except errors.InvalidInput as exc:
        return problems.problem(400, "invalid_input", str(exc), getattr(exc, "field", None))
    engine = request.app.state.engine
    if wanted is not None:
        try:
            await anyio.to_thread.run_sync(engine.store.get_workflow, wanted)
        except errors.UnknownWorkflow:
            return problems.problem(404, "unknown_workflow", f"no workflow {wanted}",
                                    "workflow_id")
    heartbeat_s = getattr(request.app.state, "live_heartbeat_s", HEARTBEAT_S)
    stream = Stream(hub_of(request.app), engine.store, wanted, after, kind, heartbeat_s)
    return StreamingResponse(stream.frames(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _resume_point(header: str | None, query: str | None) -> int | None:
    """The event id a stream starts after: the header wins (a browser sends it on reconnect,
    while the query is the page's first cursor)."""
    for field, value in (("Last-Event-ID", header), ("last_event_id", query)):
        value = (value or "").strip()
        if value:
            if not value.isdigit() or len(value) > 18:
                raise errors.InvalidInput(f"{field}: expected an event id", field=field)
            return int(value)
    return None


class Server(uvicorn.Server):
    """uvicorn's server that ends the event streams as soon as it is asked to stop.

    uvicorn waits for every open response before it runs the application's shutdown, so an
    open stream would hold ``cpoa serve`` (and SIGTERM) forever. Use it as ``uvicorn.Server``:
    ``live.Server(uvicorn.Config(app, …)).run()``.
    """

    async def shutdown(self, sockets: Any = None) -> None:
        close(self.config.app)
        await super().shutdown(sockets)
