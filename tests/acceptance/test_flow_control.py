"""Per-agent flow control across worker processes: CPOA_<AGENT>_MAX_IN_FLIGHT is enforced by
PostgreSQL for every worker, a workflow waiting for a slot costs nothing, and a slot freed by a
finished task (or a SIGKILLed worker's workflow, resumed) goes to the next waiter."""

from __future__ import annotations

import signal

import psycopg
import pytest

from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.testing.agent import ScriptedAgent
from cpoa.testing.cli import cli_env, spawn_cli
from cpoa.testing.wait import wait_until

VFA = "/forge_voice"


def _states(db: psycopg.Connection) -> dict[str, int]:
    rows = db.execute("SELECT state, count(*) AS n FROM workflow_instances GROUP BY state")
    return {r["state"]: r["n"] for r in rows.fetchall()}


def _leftovers(db: psycopg.Connection) -> tuple[int, int]:
    slots = db.execute("SELECT count(*) AS n FROM agent_slots").fetchone()["n"]
    waiting = db.execute("SELECT count(*) AS n FROM workflow_instances "
                         "WHERE waiting_agent IS NOT NULL").fetchone()["n"]
    return slots, waiting


@pytest.mark.slow
def test_max_in_flight__three_workers_never_exceed_the_cap(dsn, db):
    """3 worker processes of 4 slots each, 40 podcasts, CPOA_VFA_MAX_IN_FLIGHT=2: the agent
    never has more than 2 unfinished VFA tasks (it counts them itself: created, not yet
    reported SUCCESS), reaches 2, and all 40 complete with no key worked twice."""
    agent = ScriptedAgent(pending_polls=2)  # each task takes a few polls: they overlap
    env = cli_env(dsn, agent.url, CPOA_VFA_MAX_IN_FLIGHT="2")
    store = PostgresStore(dsn, min_size=1, max_size=2)
    workers = []
    try:
        engine = Engine(store, settings_module.from_env(env))
        for n in range(40):
            engine.start_workflow("podcast", {"topic": f"capped {n}"})
        workers = [spawn_cli(env, "worker") for _ in range(3)]
        wait_until(lambda: _states(db) == {"completed": 40}, timeout=180, interval=0.2)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.communicate(timeout=60)
        store.close()
        agent.close()
    assert agent.max_unfinished[VFA] == 2, dict(agent.max_unfinished)
    assert agent.duplicates() == {}
    assert _leftovers(db) == (0, 0)


@pytest.mark.slow
def test_max_in_flight__a_killed_workers_slot_stays_with_its_workflow(dsn, db):
    """CPOA_VFA_MAX_IN_FLIGHT=1: a worker SIGKILLed inside its VFA submit leaves the slot to
    the workflow it was working on (the agent still works on that task): the other podcast
    waits; a new worker resumes the first (same key, same agent task), then the second gets
    the slot. The agent never has 2 unfinished VFA tasks, nothing is left held."""
    agent = ScriptedAgent()
    env = cli_env(dsn, agent.url, CPOA_VFA_MAX_IN_FLIGHT="1")
    store = PostgresStore(dsn, min_size=1, max_size=2)
    released = agent.hold_next(VFA)
    workers = []
    try:
        engine = Engine(store, settings_module.from_env(env))
        for n in range(2):
            engine.start_workflow("podcast", {"topic": f"killed {n}"})
        workers.append(spawn_cli(env, "worker"))
        wait_until(lambda: agent.requests_to(VFA), timeout=60)
        wait_until(lambda: _leftovers(db) == (1, 1), timeout=60)  # one holds, one waits
        workers[0].send_signal(signal.SIGKILL)
        workers[0].communicate(timeout=30)
        released.set()
        workers.append(spawn_cli(env, "worker"))
        wait_until(lambda: _states(db) == {"completed": 2}, timeout=120, interval=0.1)
    finally:
        released.set()
        for worker in workers[1:]:
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=60)
        store.close()
        agent.close()
    assert agent.max_unfinished[VFA] == 1, dict(agent.max_unfinished)
    assert _leftovers(db) == (0, 0)
