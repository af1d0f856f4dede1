"""Runs the gateway under uvicorn (`cpoa serve`): one listening socket, a graceful SIGTERM."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from cpoa import defaults, errors
from cpoa.engine import Engine
from cpoa.gateway import app as gateway_app
from cpoa.gateway import live

BACKLOG = 2048
"""Connections the kernel queues before the server accepts them (uvicorn's default)."""


def listen(host: str, port: int) -> socket.socket:
    """Returns a socket listening on ``host:port``; port 0 takes a free one.

    Raises:
        CPOAError: the address cannot be listened on (in use, unknown host…).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: an answer written in two parts (headers, then
        # body) must not wait for the client's delayed ACK (40 ms on Linux per request on
        # a kept-alive connection).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise errors.CPOAError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL a listening socket serves."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def build(engine: Engine) -> uvicorn.Server:
    """Returns a uvicorn server of the gateway application bound to ``engine``.

    Logging is left to the caller's configuration (``log_config=None``): uvicorn's records go
    to the root logger like every other, and its access log carries no header.
    """
    config = uvicorn.Config(gateway_app.create_app(engine), log_config=None,
                            server_header=False,
                            timeout_graceful_shutdown=int(defaults.API_SHUTDOWN_GRACE_S))
    return live.Server(config)  # ends the dashboard's event streams first


def run(engine: Engine, host: str, port: int,
        ready: Callable[[str], None] | None = None) -> None:
    """Serves until SIGTERM or SIGINT, lets the requests in flight finish, and returns.

    Args:
        engine: The engine the routes use.
        host: The address to listen on.
        port: The TCP port (0: a free one).
        ready: Called with the base URL once the socket listens.

    Raises:
        CPOAError: the address cannot be listened on.
    """
    sock = listen(host, port)
    server = build(engine)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True
    # uvicorn takes these signals while it serves and, once stopped, raises the one it caught
    # again: with this handler in place that ends here instead of killing the process.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    if ready is not None:
        ready(url_of(sock))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
