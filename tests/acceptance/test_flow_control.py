"""Per-agent flow control across worker processes: CPOA_<AGENT>_MAX_IN_FLIGHT is enforced by
PostgreSQL for every worker, a workflow waiting for a slot costs nothing, and a slot freed by a
finished task (or a SIGKILLed worker's workflow, resumed) goes to the next waiter."""

from __future__ import annotations

import signal

import psycopg
import pytest

from cpoa import defaults
from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.testing.agent import Reply, ScriptedAgent
from cpoa.testing.cli import cli_env, spawn_cli
from cpoa.testing.wait import drive, wait_until

VFA = "/forge_voice"
IGA = "/generate_image"


def _states(db: psycopg.Connection) -> dict[str, int]:
    rows = db.execute("SELECT state, count(*) AS n FROM workflow_instances GROUP BY state")
    return {r["state"]: r["n"] for r in rows.fetchall()}


def _leftovers(db: psycopg.Connection) -> tuple[int, int]:
    slots = db.execute("SELECT count(*) AS n FROM agent_slots").fetchone()["n"]
    waiting = db.execute("SELECT count(*) AS n FROM workflow_instances "
                         "WHERE waiting_agent IS NOT NULL").fetchone()["n"]
    return slots, waiting


def _workers_complete(dsn: str, db: psycopg.Connection, agent: ScriptedAgent,
                      count: int, workers: int = 3, **limits: str) -> None:
    """Starts ``count`` podcasts, runs ``workers`` `cpoa worker` processes with ``limits``
    until all complete, stops them (SIGTERM) and the agent."""
    env = cli_env(dsn, agent.url, **limits)
    store = PostgresStore(dsn, min_size=1, max_size=2)
    running = []
    try:
        engine = Engine(store, settings_module.from_env(env))
        for n in range(count):
            engine.start_workflow("podcast", {"topic": f"limited {n}"})
        running = [spawn_cli(env, "worker") for _ in range(workers)]
        wait_until(lambda: _states(db) == {"completed": count}, timeout=180, interval=0.2)
    finally:
        for worker in running:
            worker.send_signal(signal.SIGTERM)
        for worker in running:
            worker.communicate(timeout=60)
        store.close()
        agent.close()


@pytest.mark.slow
def test_max_in_flight__three_workers_never_exceed_the_cap(dsn, db):
    """3 worker processes of 4 slots each, 40 podcasts, CPOA_VFA_MAX_IN_FLIGHT=2: the agent
    never has more than 2 unfinished VFA tasks (it counts them itself: created, not yet
    reported SUCCESS), reaches 2, and all 40 complete with no key worked twice."""
    agent = ScriptedAgent(pending_polls=2)  # each task takes a few polls: they overlap
    _workers_complete(dsn, db, agent, 40, CPOA_VFA_MAX_IN_FLIGHT="2")
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


def test_max_in_flight__a_freed_slot_is_used_before_the_freeing_workflows_next_step(dsn, db):
    """One worker of one slot, VFA capped at 1, two podcasts: when the first one's synthesis
    is done, the worker submits the second one's synthesis (the slot is handed to it) before
    it runs the first one's next step (imaging): the capped agent does not wait while the
    worker's only thread goes on with steps that need no slot."""
    agent = ScriptedAgent()
    _workers_complete(dsn, db, agent, 2, workers=1, CPOA_VFA_MAX_IN_FLIGHT="1",
                      CPOA_WORKER_CONCURRENCY="1")
    first, second = _vfa_order(agent)
    paths = [(r["headers"].get("x-workflow-id"), r["path"]) for r in agent.requests
             if r["method"] == "POST"]
    assert paths.index((second, VFA)) < paths.index((first, IGA)), paths


def _vfa_order(agent: ScriptedAgent) -> list[str]:
    """Workflow ids in the order of their first VFA submit."""
    order: list[str] = []
    for request in agent.requests_to(VFA):
        workflow_id = request["headers"].get("x-workflow-id", "")
        if workflow_id not in order:
            order.append(workflow_id)
    return order


def _waited_for(agent: ScriptedAgent, workflow_id: str, others: list[str]) -> int:
    """How many first VFA submits of ``others`` the agent saw between ``workflow_id``'s last
    request before its own VFA submit (its script's, which put it in the VFA queue) and that
    submit."""
    requests = agent.requests
    mine = [i for i, r in enumerate(requests) if r["headers"].get("x-workflow-id") == workflow_id]
    voiced = next(i for i in mine if requests[i]["path"] == VFA)
    queued = max(i for i in mine if i < voiced)
    seen = {r["headers"].get("x-workflow-id") for r in requests[:queued + 1] if r["path"] == VFA}
    between = {r["headers"].get("x-workflow-id") for r in requests[queued + 1:voiced]
               if r["path"] == VFA and r["method"] == "POST"}
    return len((between - seen) & set(others))


FAIR_WAIT_BOUND = 4
"""Syntheses of tenant A that may start between one of tenant B's episodes joining the VFA
queue and its own: fair share alternates the tenants (A, B, A, B…), so one or two (seen: 0
to 3). In strict
arrival order B's episode waits for every A episode queued before it (up to 60)."""


@pytest.mark.slow
def test_fair_share__a_small_tenant_is_not_starved_and_priority_orders_a_tenant(dsn, db):
    """VFA capped at 1, one worker of 4 slots. Tenant A queues 60 podcasts, then one more of
    priority 10; tenant B then starts 3. Each of B's episodes, once its script is done, waits
    for at most FAIR_WAIT_BOUND of A's syntheses; A's priority-10 episode is voiced before the
    A episodes queued ahead of it."""
    agent = ScriptedAgent()
    env = cli_env(dsn, agent.url, CPOA_VFA_MAX_IN_FLIGHT="1")
    store = PostgresStore(dsn, min_size=1, max_size=2)
    worker = None
    try:
        engine = Engine(store, settings_module.from_env(env))
        a = [str(engine.start_workflow("podcast", {"topic": f"a{n}"}, user_id="A"))
             for n in range(60)]
        worker = spawn_cli(env, "worker")
        waiting = "SELECT count(*) AS n FROM workflow_instances WHERE waiting_agent = 'VFA'"
        wait_until(lambda: db.execute(waiting).fetchone()["n"] >= 40, timeout=120)
        urgent = str(engine.start_workflow("podcast", {"topic": "urgent"}, user_id="A",
                                           priority=10))
        b = [str(engine.start_workflow("podcast", {"topic": f"b{n}"}, user_id="B"))
             for n in range(3)]
        wait_until(lambda: _states(db) == {"completed": 64}, timeout=180, interval=0.2)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=60)
        store.close()
        agent.close()
    order = _vfa_order(agent)
    assert sorted(order) == sorted(a + b + [urgent])
    a_between = [_waited_for(agent, one, a) for one in b]
    assert max(a_between) <= FAIR_WAIT_BOUND, a_between
    assert _waited_for(agent, urgent, a) <= FAIR_WAIT_BOUND  # not behind A's whole queue
    assert _leftovers(db) == (0, 0)


PAUSE_S = 3.0


@pytest.mark.slow
def test_retry_after__one_429_pauses_every_workflows_submits_to_that_agent(dsn, db, agent):
    """Four podcasts reach imaging; IGA answers the first one's submit 429 with Retry-After: 3.
    No IGA submit follows from any workflow or worker slot for 3 s (the pause is stored with
    the answer, so a restarted worker would keep it too), then all resume and complete."""
    env = cli_env(dsn, agent.url)
    store = PostgresStore(dsn, min_size=1, max_size=4)
    try:
        engine = Engine(store, settings_module.from_env(env))
        ids = [engine.start_workflow("podcast", {"topic": f"paused {n}"}) for n in range(4)]
        for workflow_id in ids:
            wait_until(lambda: engine.advance(workflow_id) == "imaging", interval=0.01)
        agent.script("POST", IGA, Reply(429, {"error": "slow down"},
                                        headers={"Retry-After": str(PAUSE_S)}))
        assert engine.advance(ids[0]) == "imaging"
        paused = db.execute("SELECT paused_until > now() AS on FROM agent_flow "
                            "WHERE agent = 'IGA'").fetchone()
        assert paused and paused["on"]
        worker = spawn_cli(env, "worker")
        try:
            wait_until(lambda: _states(db) == {"completed": 4}, timeout=60, interval=0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=60)
    finally:
        store.close()
    first, *others = agent.requests_to(IGA)
    assert len({r["headers"]["x-workflow-id"] for r in others}) == 4
    assert min(r["at"] for r in others) - first["at"] >= PAUSE_S - 0.05


PSWA = "/weave_script"
RATE, BURST = 5, 1  # CPOA_PSWA_RATE_LIMIT=5 with the default CPOA_PSWA_RATE_BURST


def _busiest_second(times: list[float]) -> int:
    """The most arrivals in any one-second window (each window starts at an arrival)."""
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))


@pytest.mark.slow
def test_rate_limit__no_second_at_the_agent_holds_more_than_the_rate_plus_the_burst(dsn, db):
    """3 worker processes, 24 podcasts, CPOA_PSWA_RATE_LIMIT=5: no one-second window of the
    submits PSWA receives holds more than 5 + 1 (the documented burst), though they arrive
    at the workers all but together; every podcast completes, no key worked twice, and no
    place in the rate is left over."""
    agent = ScriptedAgent()
    _workers_complete(dsn, db, agent, 24, CPOA_PSWA_RATE_LIMIT=str(RATE))
    submits = [r["at"] for r in agent.requests_to(PSWA)]
    assert len(submits) == 24
    assert _busiest_second(submits) <= RATE + BURST, sorted(submits)
    assert agent.duplicates() == {}
    assert db.execute("SELECT count(*) AS n FROM agent_tokens").fetchone()["n"] == 0


def test_breaker__failures_in_a_row_open_it_and_one_answer_closes_it(engine, agent, db):
    """One podcast's IGA task is accepted; then IGA answers 500 to five other podcasts' submits
    (each after the client's retries): the fifth failure in a row opens IGA's breaker (new
    submits paused, reason "breaker"); the accepted task's next poll is answered, which closes
    it at once (no failures, no pause), and every podcast then completes."""
    ids = [engine.start_workflow("podcast", {"topic": f"broken {n}"}) for n in range(6)]
    for workflow_id in ids:
        wait_until(lambda: engine.advance(workflow_id) == "imaging", interval=0.01)
    assert engine.advance(ids[0]) == "imaging"  # accepted
    attempts = defaults.SERVICE_RETRY_COUNT
    agent.script("POST", IGA, *[Reply(500, {"error": "down"})] * (5 * attempts))
    for workflow_id in ids[1:]:
        assert engine.advance(workflow_id) == "imaging"
    assert len(agent.requests_to(IGA)) == 1 + 5 * attempts
    assert _breaker(db) == (5, "breaker", True)
    wait_until(lambda: engine.advance(ids[0]) == "finalizing", timeout=30, interval=0.01)
    assert _breaker(db) == (0, None, False)
    for workflow_id in ids[1:]:
        assert drive(engine, workflow_id, timeout=60) == "completed"


def _breaker(db: psycopg.Connection) -> tuple[int, str | None, bool]:
    row = db.execute("SELECT failures, pause_reason, paused_until IS NOT NULL AS on "
                     "FROM agent_flow WHERE agent = 'IGA'").fetchone()
    return row["failures"], row["pause_reason"], row["on"]
