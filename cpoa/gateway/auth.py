"""Bearer-token authentication of the mutating API calls (``CPOA_API_TOKEN``).

With no token configured every call is allowed (the gateway listens on loopback by default).
With one, each POST must carry ``Authorization: Bearer <token>``. The check runs before the
request body is read, so a caller without the token learns nothing about a body it sends; the
comparison takes the same time whatever the guess; the token is never logged nor echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from cpoa import errors

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="the server's CPOA_API_TOKEN; needed by every POST when set")
"""Declares the scheme in the OpenAPI document (the check itself is :func:`check`)."""


class TokenRoute(APIRoute):
    """A route whose mutating methods need the API token.

    The token is checked before FastAPI reads and validates the body (a 401 comes before
    any 422), and the route declares the bearer scheme in the OpenAPI document.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        self.needs_token = bool(set(kwargs.get("methods") or ()) & MUTATING_METHODS)
        if self.needs_token:
            kwargs["dependencies"] = [Depends(bearer), *(kwargs.get("dependencies") or ())]
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not self.needs_token:
            return handler

        async def checked(request: Request) -> Response:
            check(request)
            return await handler(request)
        return checked


def check(request: Request) -> None:
    """Refuses the request unless it carries the configured token (if one is configured).

    Raises:
        Unauthorized: the token is configured and the request lacks it or has another.
    """
    expected = request.app.state.engine.settings.api_token
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise errors.Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    if not token_matches(given.strip(), expected):
        raise errors.Unauthorized("invalid bearer token", token_given=True)


def token_matches(given: str, expected: str) -> bool:
    """Compares in constant time (for equal lengths), whatever characters ``given`` holds."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               expected.encode("utf-8", "surrogateescape"))


def challenge(exc: errors.Unauthorized) -> str:
    """The ``WWW-Authenticate`` header of a refusal (RFC 6750)."""
    if getattr(exc, "token_given", False):
        return 'Bearer realm="cpoa", error="invalid_token"'
    return 'Bearer realm="cpoa"'
