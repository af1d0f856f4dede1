"""Agent fixtures: the scriptable agent on loopback, settings pointing at it, an engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cpoa import settings as settings_module
from cpoa.agents.client import AgentClient
from cpoa.engine import Engine
from cpoa.models import Task
from cpoa.settings import Settings
from cpoa.store import PostgresStore
from cpoa.testing.agent import ScriptedAgent, agent_env
from cpoa.testing.wait import drive, wait_until


@pytest.fixture
def agent() -> Iterator[ScriptedAgent]:
    """A well-behaved agent answering 202 then SUCCESS on the first poll."""
    server = ScriptedAgent()
    yield server
    server.close()


@pytest.fixture
def settings(agent: ScriptedAgent) -> Settings:
    """Settings pointing every agent at the scripted agent."""
    return settings_module.from_env(agent_env(agent.url))


@pytest.fixture
def engine(store: PostgresStore, settings: Settings) -> Engine:
    """An engine on the test database and the scripted agent."""
    return Engine(store, settings)






@pytest.fixture
def make_agent() -> Iterator[Callable[..., ScriptedAgent]]:
    """Builds agents with other default behaviours (``pending_polls``, ``sync``)."""
    made: list[ScriptedAgent] = []

    def make(**options: Any) -> ScriptedAgent:
        made.append(ScriptedAgent(**options))
        return made[-1]
    yield make
    for server in made:
        server.close()


def engine_for(store: PostgresStore, agent: ScriptedAgent,
               client: Callable[[Settings], AgentClient] | None = None, **env: str) -> Engine:
    """An engine on ``agent`` with environment overrides (and optionally its own client)."""
    settings = settings_module.from_env(agent_env(agent.url, **env))
    return Engine(store, settings, client=client(settings) if client else None)


def leave(engine: Engine, workflow_id: object, state: str) -> str:
    """Advances until the workflow has left ``state``; returns the state it reached."""
    return wait_until(lambda: (now := engine.advance(workflow_id)) != state and now,
                      interval=0.01)  # type: ignore[return-value]


def step_task(store: PostgresStore, workflow_id: object, step: str, attempt: int = 0) -> Task:
    """The one task row of a single-item step."""
    [task] = [t for t in store.get_tasks(workflow_id) if t.step == step and t.attempt == attempt]
    return task


def sent(agent: ScriptedAgent, path: str, method: str = "POST") -> list[dict[str, Any]]:
    """The requests the agent received on ``path`` (``/v1/tasks`` means every poll)."""
    if path == "/v1/tasks":
        return [r for r in agent.requests if r["path"].startswith("/v1/tasks/")]
    return agent.requests_to(path, method)


def failed_with(engine: Engine, workflow_id: object, state: str) -> str:
    """Drives a workflow that must fail in ``state``; returns its reason."""
    assert drive(engine, workflow_id) == "failed"
    status = engine.get_workflow(workflow_id)
    assert status["failed_from_state"] == state
    assert status["error"].startswith(f"{state}: ")
    return status["error"]
