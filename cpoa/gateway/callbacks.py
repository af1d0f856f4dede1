"""``POST /v1/callbacks/{workflow_id}/{task_id}``: an agent says one of its tasks changed.

A callback is only a hint (agent contract §2): it makes the task due for a poll now and wakes
the workers, and the worker then polls and validates as always. Its body is read (bounded) and
must be JSON, but nothing in it is used. The checks, cheapest first: the URL's token (HMAC of
workflow, task and key, compared in constant time: 403), the body size (413), JSON (400), the
task's rate (:class:`RateLimit`: over it, the poll is deferred to the next token, and further
callbacks meanwhile get 429), then one statement that pokes the task if it is still open (404
if not).
The API token does not apply: the signed URL is the credential. The secret is never logged;
the URL's token appears only where uvicorn's access log shows request paths (it lets its holder
do no more than make that one task polled sooner).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from cpoa import callbacks, defaults, logs
from cpoa.gateway import problems, schemas

logger = logging.getLogger(__name__)
router = APIRouter()

_ANSWERS = {
    400: "the body is not a JSON object",
    403: "the token does not sign this workflow, task and key",
    404: "the workflow is unknown or finished, or the task is finished",
    413: f"body larger than {defaults.CALLBACK_MAX_BODY_BYTES} bytes",
    422: "a bad path or query parameter",
    429: "too many callbacks for this task; try again after Retry-After",
    503: "the database is unavailable or busy; try again (Retry-After)",
}
RETRY_AFTER = str(max(1, round(1 / defaults.CALLBACK_RATE_PER_S)))
_BODY = {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "properties": {"task_id": {"type": "string"},
                                     "status": {"type": "string"}}}}}}


class RateLimit:
    """A token bucket per task: ``burst`` callbacks at once, then ``rate_per_s``; at most
    ``tracked`` tasks remembered (the least recently seen are forgotten).

    A callback over the rate is not simply dropped (it may be the honest "finished" one behind
    a flood of duplicates): the first one makes the task due when its next token comes
    (:meth:`take` returns that delay), and only the ones after it, while that poll is still
    ahead, are refused. So every callback is followed by a poll within ``1 / rate_per_s``
    seconds, and a task costs at most ``burst`` + ``rate_per_s`` per second statements.
    """

    def __init__(self, burst: float = defaults.CALLBACK_BURST,
                 rate_per_s: float = defaults.CALLBACK_RATE_PER_S,
                 tracked: int = defaults.CALLBACK_TRACKED_TASKS) -> None:
        self.burst, self.rate_per_s, self.tracked = burst, rate_per_s, tracked
        self.buckets: collections.OrderedDict[Any, tuple[float, float, float]] = (
            collections.OrderedDict())
        self.lock = threading.Lock()

    def take(self, key: Any, now: float | None = None) -> float | None:
        """Seconds until ``key``'s callback should act (0.0: now), or None when a poll it
        would ask for is already on its way (refuse it)."""
        now = time.monotonic() if now is None else now
        with self.lock:
            tokens, last, deferred_until = self.buckets.pop(key, (self.burst, now, 0.0))
            tokens = min(self.burst, tokens + (now - last) * self.rate_per_s)
            if tokens >= 1.0:
                delay: float | None = 0.0
                tokens -= 1.0
            elif deferred_until > now:
                delay = None
            else:  # the next token is reserved for this callback's poll
                delay = (1.0 - tokens) / self.rate_per_s if self.rate_per_s else None
                tokens -= 1.0
                deferred_until = now + (delay or 0.0)
            self.buckets[key] = (tokens, now, deferred_until)
            while len(self.buckets) > self.tracked:
                self.buckets.popitem(last=False)
        return delay

    def allow(self, key: Any, now: float | None = None) -> bool:
        """Whether ``key`` may act now (takes a token if so)."""
        return self.take(key, now) == 0.0


@router.post("/v1/callbacks/{workflow_id}/{task_id}", status_code=202,
             response_model=schemas.CallbackAccepted, tags=["agents"],
             openapi_extra={"requestBody": _BODY},
             responses={code: {"model": schemas.Problem, "description": text}
                        for code, text in _ANSWERS.items()})
async def task_changed(
        request: Request, workflow_id: Annotated[uuid.UUID, Path()],
        task_id: Annotated[uuid.UUID, Path()],
        key: Annotated[str, Query(max_length=1000, description="the task's idempotency key")],
        token: Annotated[str, Query(max_length=200, description="the URL's signature")],
) -> Any:
    """An agent's task changed: poll it now (contract §2; the body is never trusted)."""
    engine = request.app.state.engine
    secret = engine.cached_callback_key or await run_in_threadpool(engine.callback_key)
    if not callbacks.verify(secret, workflow_id, task_id, key, token):
        return problems.problem(403, "forbidden", "token: does not sign this task", "token")
    refused = await _read_json(request)
    if refused is not None:
        return refused
    delay_s = _limit(request).take(task_id)
    if delay_s is None:  # a poll this callback would ask for is already scheduled
        return problems.problem(429, "too_many_callbacks", "too many callbacks for this task",
                                headers={"Retry-After": RETRY_AFTER})
    poked = await run_in_threadpool(engine.store.poke_task, workflow_id, task_id, delay_s)
    logs.for_workflow(logger, workflow_id, task_id).info(
        "agent called back", extra={"action": "callback", "poked": poked, "delay_s": delay_s})
    if not poked:
        return problems.problem(404, "not_open", "the workflow or this task is finished")
    return Response(json.dumps({"polled": True}), status_code=202,
                    media_type="application/json")


async def _read_json(request: Request) -> Response | None:
    """None for a bounded JSON object body, else the refusal (413 or 400)."""
    body, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > defaults.CALLBACK_MAX_BODY_BYTES:
            return problems.problem(413, "payload_too_large", f"body: {_ANSWERS[413]}", "body",
                                    headers={"Connection": "close"})
        body.append(chunk)
    try:
        value = json.loads(b"".join(body))
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        return problems.problem(400, "bad_body", "body: expected a JSON object", "body")
    return None


def _limit(request: Request) -> RateLimit:
    state = request.app.state
    if getattr(state, "callback_limit", None) is None:
        state.callback_limit = RateLimit()
    return state.callback_limit
