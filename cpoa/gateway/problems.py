"""How failures become HTTP answers: the CPOA error tree mapped to status codes in one place,
request validation errors that name the field, and the request body size limit.

Every error answer is a ``Problem`` (``{"error", "message", "field", "details"}``). A 5xx says
what kind of failure happened but never the database's own words (they are logged instead).
"""

from __future__ import annotations

import http
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from cpoa import defaults, errors
from cpoa.gateway import auth

logger = logging.getLogger(__name__)

STATUS: tuple[tuple[type[errors.CPOAError], int, str], ...] = (
    (errors.UnknownWorkflow, 404, "unknown_workflow"),
    (errors.InvalidInput, 422, "invalid_input"),
    (errors.Unauthorized, 401, "unauthorized"),
    (errors.InvalidTransition, 409, "invalid_transition"),
    (errors.StaleState, 409, "conflict"),
    (errors.DuplicateWorkflow, 409, "conflict"),
    (errors.StoreBusy, 503, "database_busy"),
    (errors.StoreError, 503, "database_unavailable"),
    (errors.AgentError, 502, "agent_failed"),
    (errors.CPOAError, 500, "internal"),
)
"""(class, HTTP status, error code), most specific first: the first match wins."""

PUBLIC_MESSAGES = {
    "database_busy": "the database is busy; try again",
    "database_unavailable": "the database is unavailable; try again later",
    "agent_failed": "an agent call failed",
    "internal": "internal error",
}
"""What a 5xx says instead of the exception's text (which may describe the infrastructure)."""

RETRY_AFTER_S = "1"
_TOO_LARGE = object()  # what BodyLimit._read returns instead of a body
_GONE = object()
_LOCATIONS = ("body", "query", "path", "header", "cookie")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ProblemResponse(JSONResponse):
    """A JSON error answer, ASCII-escaped: an echoed field name may hold any code point."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")


def problem(status: int, code: str, message: str, field: str | None = None, *,
            details: list[dict[str, str]] | None = None,
            headers: dict[str, str] | None = None) -> ProblemResponse:
    """Builds one error answer."""
    body: dict[str, Any] = {"error": code, "message": message, "field": field}
    if details:
        body["details"] = details
    return ProblemResponse(body, status_code=status, headers=headers)


def status_of(exc: errors.CPOAError) -> tuple[int, str]:
    """Returns the HTTP status and error code of a CPOA error."""
    for cls, status, code in STATUS:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal"  # unreachable: CPOAError closes the table


async def cpoa_error(request: Request, exc: errors.CPOAError) -> ProblemResponse:
    """The one handler of the CPOA error tree."""
    status, code = status_of(exc)
    headers = {}
    if isinstance(exc, errors.Unauthorized):
        headers["WWW-Authenticate"] = auth.challenge(exc)
    if status == 503:
        headers["Retry-After"] = RETRY_AFTER_S
    if status >= 500:
        logger.error("request failed: %s", exc, extra={
            "action": "api_error", "status": status, "path": request.url.path})
        return problem(status, code, PUBLIC_MESSAGES.get(code, "internal error"),
                       headers=headers)
    return problem(status, code, str(exc), getattr(exc, "field", None) or None,
                   headers=headers)


async def invalid_request(request: Request, exc: RequestValidationError) -> ProblemResponse:
    """Request validation (body, query, path, headers): 422 naming every bad field."""
    details = [_detail(e) for e in exc.errors()]
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    return problem(422, "invalid_input", f"{first['field']}: {first['message']}",
                   first["field"], details=details)


async def http_error(request: Request, exc: HTTPException) -> ProblemResponse:
    """The framework's own refusals (unknown path, wrong method…) in the same shape.

    FastAPI answers a body it could not decode at all (not UTF-8, nested too deep) with a
    400 caused by the decoding error: that is a bad body like any other, so a 422.
    """
    if exc.status_code == 400 and exc.__cause__ is not None:
        return problem(422, "invalid_input", "body: not a readable JSON document", "body")
    try:
        code = http.HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    except ValueError:
        code = "http_error"
    return problem(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def unexpected(request: Request, exc: Exception) -> ProblemResponse:
    """A bug: 500 with no detail; the traceback goes to the log."""
    logger.exception("request crashed", extra={"action": "api_crash", "path": request.url.path})
    return problem(500, "internal", PUBLIC_MESSAGES["internal"])


def _detail(error: dict[str, Any]) -> dict[str, str]:
    if error.get("type") == "json_invalid":
        return {"field": "body", "message": f"invalid JSON: {error.get('msg', '')}"}
    return {"field": field_name(error.get("loc", ())), "message": str(error.get("msg", ""))}


def field_name(loc: Sequence[Any]) -> str:
    """``("body", "urls", 0)`` → ``"urls[0]"``; the location word only when nothing else."""
    parts = list(loc)
    if len(parts) > 1 and parts[0] in _LOCATIONS:
        parts = parts[1:]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with 413 before any
    route reads it, whether its size is declared (Content-Length) or streamed (chunked)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 max_bytes: int = defaults.API_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        body = await self._read(receive)
        if body is _TOO_LARGE:
            await self._refuse(scope, receive, send)
        elif isinstance(body, bytes):
            await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | object:
        """The whole body; ``_TOO_LARGE`` once it grows past the limit, ``_GONE`` when the
        client leaves before sending all of it (nobody is left to answer)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _GONE
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return _TOO_LARGE
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, "payload_too_large",
                           f"body: larger than {self.max_bytes} bytes", "body",
                           headers={"Connection": "close"})
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the buffered body over once, then waits on the client."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return replay


def install(app: FastAPI) -> None:
    """Adds the error handlers and the body limit to the gateway application."""
    app.add_exception_handler(errors.CPOAError, cpoa_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
    app.add_middleware(BodyLimit, max_bytes=defaults.API_MAX_BODY_BYTES)
