"""The operator dashboard (``cpoa serve`` at ``/``): the workflow list, one page per workflow,
their scripts and stylesheet, and (from :mod:`cpoa.gateway.live`) the event stream."""

from __future__ import annotations

import datetime
import pathlib
import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from cpoa import errors, inputs, queues
from cpoa.gateway import live, pages, views

STATIC_DIR = pathlib.Path(__file__).with_name("static")
STATIC_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}\.(js|css|svg)")
CONTENT_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8",
                 "svg": "image/svg+xml"}
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
               "img-src 'self' http: https:; media-src 'self' http: https:; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")
"""No inline script or style at all: even a rendering bug that let markup through could not
run it (defence in depth behind the escaping). Covers and episodes live on the agents' hosts."""
LIST_LIMIT = 200
"""Rows on the list page (newest first)."""
DWELL_DAYS = 30.0
"""The dwell times on the diagram cover workflows started in this many days."""

router = APIRouter(include_in_schema=False)
router.include_router(live.router)


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={
        "Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})


@router.get("/", response_class=HTMLResponse)
def workflow_list(request: Request, state: str | None = None,
                  kind: str | None = None) -> HTMLResponse:
    """``GET /[?state=…][&kind=…]``: counts per state, the newest workflows and the agent
    queues."""
    state, kind = state or None, kind or None
    if state is not None and state not in pages.STATE_ORDER:
        return _html(pages.not_found(f"There is no state {state!r}."), 400)
    if kind is not None and kind not in pages.KINDS:
        return _html(pages.not_found(f"There is no workflow kind {kind!r}."), 400)
    store = request.app.state.engine.store
    # Counts and the stream's starting id first: rows read after them are at least as new.
    counts, last_event_id = store.state_counts(kind)
    rows = store.list_workflows(state=state, kind=kind, limit=LIST_LIMIT)
    now = datetime.datetime.now(datetime.timezone.utc)
    agents = [queues.cells(q, now) for q in queues.every_agent(store.agent_queues())]
    return _html(pages.list_page(rows, counts, last_event_id, state=state, kind=kind,
                                 agents=agents))


@router.get("/workflows/{workflow_id}", response_class=HTMLResponse)
def workflow_page(request: Request, workflow_id: str) -> HTMLResponse:
    """``GET /workflows/<id>``: one workflow, kept current by its event stream."""
    store = request.app.state.engine.store
    try:
        wanted = inputs.workflow_id(workflow_id)
        # History first: the workflow and its tasks, read after, are at least as new, and
        # the stream replays whatever comes after the last row shown.
        history = store.get_history(wanted)
        view = live.snapshot(store, wanted)
    except errors.InvalidInput:
        return _html(pages.not_found(f"There is no workflow {workflow_id!r}."), 404)
    counts = view.pop("state_counts")
    dwell = store.state_dwell_times(view["kind"], DWELL_DAYS)
    last_event_id = history[-1]["event_id"] if history else 0
    return _html(pages.workflow_page(view, views.timeline(history), last_event_id, counts,
                                     dwell, DWELL_DAYS))


@router.get("/static/{name}")
def static(name: str) -> Response:
    """``GET /static/<name>``: the pages' scripts, stylesheet and icon."""
    match = STATIC_NAME.fullmatch(name)
    path = STATIC_DIR / name
    if match is None or not path.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(path.read_bytes(), media_type=CONTENT_TYPES[match.group(1)],
                    headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
