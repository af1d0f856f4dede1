"""Gateway fixtures: the API served by a real uvicorn server on a loopback port, in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.testing.agent import ScriptedAgent
from tests.fix_agents import engine_for, wait_until

STOP_TIMEOUT_S = 15.0


class LiveGateway:
    """``cpoa serve``'s server for ``engine``, on 127.0.0.1 (a free port), in a thread.

    Attributes:
        url: The base URL.
        client: An HTTP client with that base URL.
    """

    def __init__(self, engine: Engine) -> None:
        # Imported here, not at the top: this plugin loads in every test session, and only
        # the gateway's tests need FastAPI and uvicorn (or a dashboard that imports cleanly).
        from cpoa.gateway import server

        self.engine = engine
        self.socket = server.listen("127.0.0.1", 0)
        self.url = server.url_of(self.socket)
        self.server = server.build(engine)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="cpoa-gateway", daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive())
        assert self.thread.is_alive(), "the gateway did not start"
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    def close(self) -> None:
        """Stops the server (requests in flight finish) and waits for its thread."""
        self.client.close()
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT_S)
        self.socket.close()
        assert not self.thread.is_alive(), "the gateway did not stop"


@pytest.fixture
def make_gateway(store: PostgresStore,
                 agent: ScriptedAgent) -> Iterator[Callable[..., LiveGateway]]:
    """Builds gateways on the test database and agent, with environment overrides
    (``make_gateway(CPOA_API_TOKEN="…")``); each is stopped after the test."""
    made: list[LiveGateway] = []

    def make(**env: str) -> LiveGateway:
        made.append(LiveGateway(engine_for(store, agent, **env)))
        return made[-1]
    yield make
    for gateway in made:
        gateway.close()


@pytest.fixture
def gateway(make_gateway: Callable[..., LiveGateway]) -> LiveGateway:
    """A gateway with no API token."""
    return make_gateway()
