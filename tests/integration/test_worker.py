"""The worker in-process: claiming, waking on NOTIFY, UI-event delivery, idempotent takeover."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from cpoa import recovery, settings as settings_module
from cpoa.engine import Engine
from cpoa.heartbeat import Heartbeat
from cpoa.worker import Worker
from cpoa.testing.agent import ASF_UI, Reply, ScriptedAgent
from cpoa.testing.databases import with_dbname
from tests.fix_agents import agent_env, engine_for, wait_until


@pytest.fixture
def running_worker(engine: Engine) -> Iterator[Worker]:
    """A worker with two slots running in a background thread until the test ends."""
    worker = Worker(engine, concurrency=2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield worker
    worker.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_worker__wakes_on_notify_for_a_new_workflow(running_worker, engine, store):
    """An idle worker picks up a workflow started elsewhere at once, not after its idle wait
    (30 s with nothing scheduled)."""
    wait_until(running_worker.sleeping.is_set, timeout=5)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    wait_until(lambda: store.get_workflow(workflow_id).state == "completed", timeout=10)


def test_worker__until_idle_drains_every_workflow(engine, store):
    """`until_idle` returns once every workflow is terminal."""
    ids = [engine.start_workflow("podcast", {"topic": f"t{i}"}) for i in range(5)]
    ids.append(engine.start_workflow("snippets", {"query": "q", "limit": 2}))
    Worker(engine, concurrency=3, until_idle=True).run()
    assert {store.get_workflow(i).state for i in ids} == {"completed"}


def test_outbox__failed_deliveries_are_retried_in_order_without_failing(engine, agent, store):
    """ASF answering 503 twice delays UI events but delivers all of them, in order per
    workflow, and the workflow still completes."""
    agent.script("POST", ASF_UI, Reply(503), Reply(503))
    first = engine.start_workflow("podcast", {"topic": "a"}, client_id="c1")
    second = engine.start_workflow("snippets", {"query": "b", "limit": 1}, client_id="c2")
    worker = Worker(engine, concurrency=2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(agent.ui_events) == 7 + 4, timeout=30)
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert store.get_workflow(first).state == "completed"
    for workflow_id, states in ((first, ["fetching", "analyzing", "scripting", "synthesizing",
                                          "imaging", "finalizing", "completed"]),
                                (second, ["discovering", "crafting", "imaging", "completed"])):
        seen = [e["data"]["state"] for e in agent.ui_events
                if e["workflow_id"] == str(workflow_id)]
        assert seen == states
    assert len({e["event_id"] for e in agent.ui_events}) == 11
    for workflow_id in (first, second):
        last = [e for e in agent.ui_events if e["workflow_id"] == str(workflow_id)][-1]
        assert last["data"]["is_terminal"] is True and last["data"]["final_status"] == "completed"
    assert all(e["delivered_at"] for e in store.get_ui_events(first))


def test_start__takes_over_an_orchestration_whose_holder_died(store, agent):
    """The same key after IDEMPOTENCY_LOCK_TIMEOUT_SECONDS with no progress, behind a lease
    whose holder's session is gone, makes the workflow due again and counts one recovery."""
    settings = settings_module.from_env(agent_env(agent.url,
                                                  IDEMPOTENCY_LOCK_TIMEOUT_SECONDS="0.2"))
    engine = Engine(store, settings)
    workflow_id = engine.start_workflow("podcast", {"topic": "t"}, idempotency_key="k")
    holder = store.listener(liveness=True)
    holder.connect()
    store.lease(workflow_id, "dead-worker", 3600, holder.liveness_key)
    holder.close()  # its process died
    wait_until(lambda: engine.start_workflow("podcast", {"topic": "t"},
                                             idempotency_key="k") == workflow_id
               and store.get_workflow(workflow_id).lease_owner is None, timeout=5)
    assert store.get_workflow(workflow_id).recovery_attempts == 1


def test_start__repeated_start_never_steals_a_live_lease(store, agent):
    """A caller repeating its key while a live worker is inside the step's agent request
    (and the workflow has made no progress for longer than the lock timeout) leaves the
    lease alone: the worker's result is applied, no recovery is charged, the step's work is
    submitted once."""
    settings = settings_module.from_env(agent_env(agent.url,
                                                  IDEMPOTENCY_LOCK_TIMEOUT_SECONDS="0.2"))
    engine = Engine(store, settings)
    workflow_id = engine.start_workflow("podcast", {"topic": "t"}, idempotency_key="k")
    agent.delay_next("/harvest", 1.5)
    holder = threading.Thread(target=engine.advance, args=(workflow_id,))
    holder.start()
    wait_until(lambda: agent.requests_to("/harvest"), timeout=5)
    lease = store.get_workflow(workflow_id)
    repeats = 0
    while holder.is_alive():  # repeat the start for as long as the request is in flight
        assert engine.start_workflow("podcast", {"topic": "t"},
                                     idempotency_key="k") == workflow_id
        repeats += 1
    holder.join()
    assert repeats > 1
    workflow = store.get_workflow(workflow_id)
    assert (workflow.state, workflow.recovery_attempts) == ("fetching", 0)
    assert workflow.version == lease.version  # nobody fenced the holder out
    assert [t.status for t in store.get_tasks(workflow_id)] == ["submitted"]
    assert agent.work == {f"{workflow_id}_wcha": 1}


def test_heartbeat__one_thread_for_many_steps_ended_by_a_beat_with_nothing_held(store):
    """Steps one after another share one heartbeat thread (a step does not start one, nor
    wake it); the thread ends at the first beat that finds no lease held, and renews none."""
    heartbeat = Heartbeat(store, "me", ttl_s=0.3)  # a beat every 0.1 s
    threads = set()
    for _ in range(200):
        with heartbeat.holding(uuid.uuid4()):
            threads.add(heartbeat._thread)
    [thread] = threads
    wait_until(lambda: not thread.is_alive(), timeout=5)
    assert heartbeat._thread is None and heartbeat.beats == 0


def test_heartbeat__a_request_longer_than_the_lease_keeps_it(store, agent):
    """A lease of 1 s and a submit answered after 2.5 s: the heartbeat renews the lease while
    the request runs, so neither another engine's advance nor a sweep takes the workflow, and
    the step is submitted once."""
    settings = settings_module.from_env(agent_env(agent.url, CPOA_LEASE_TTL_SECONDS="1"))
    holder, other = Engine(store, settings), Engine(store, settings)
    workflow_id = holder.start_workflow("podcast", {"topic": "t"})
    agent.delay_next("/harvest", 2.5)
    thread = threading.Thread(target=holder.advance, args=(workflow_id,))
    thread.start()
    arrived = wait_until(lambda: agent.requests_to("/harvest"), timeout=5)[0]["at"]
    checks = 0
    while time.monotonic() < arrived + 2.4:  # the answer cannot come before arrived + 2.5
        assert other.advance(workflow_id) == "fetching"
        assert store.requeue_dead_leases("sweeper").requeued == ()
        assert store.get_workflow(workflow_id).lease_owner == holder.owner
        checks += 1
    thread.join()
    assert checks > 1 and holder.heartbeat.beats >= 2
    workflow = store.get_workflow(workflow_id)
    assert (workflow.lease_owner, workflow.recovery_attempts) == (None, 0)
    assert [t.status for t in store.get_tasks(workflow_id)] == ["submitted"]
    assert agent.work == {f"{workflow_id}_wcha": 1}


class StopBeforeClear(threading.Event):
    """A wake-up event whose first clear() is preceded by the worker's stop(): the moment a
    SIGTERM can land between the loop's look at its stop flag and its clear of the wake-up."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker
        self.armed = True

    def clear(self) -> None:
        if self.armed:
            self.armed = False
            self.worker.stop()
        super().clear()


def test_worker__stop_just_before_the_wake_up_is_cleared_is_not_lost(engine):
    """A stop() landing between the loop's look at its stop flag and its clear of the wake-up
    still ends the worker at once (not after its idle wait of up to 30 s)."""
    worker = Worker(engine, concurrency=1)
    worker.wake = StopBeforeClear(worker)
    worker.wake.set()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive() and not worker.wake.armed


def test_worker__a_suspect_runs_alone_only_until_its_step_moves_it_on(store):
    """A workflow recovered twice in its state is claimed alone (if it kills the process,
    nothing claimed with it is charged). Once its step has moved it on, its recoveries start
    afresh and the worker claims others while its slot goes on with its next steps (the claim
    loop waited for the slot's whole run, up to 20 steps, before)."""
    agent = ScriptedAgent(sync=True)  # a step is one action: its request, then its transition
    try:
        engine = engine_for(store, agent)
        suspect = engine.start_workflow("podcast", {"topic": "suspect"})
        for _ in range(2):  # two dead leases in `fetching`: a worker died twice there
            store.lease(suspect, "gone", 0.001)
            wait_until(lambda: recovery.sweep(store).requeued, timeout=5.0, interval=0.01)
        assert store.get_workflow(suspect).recovery_attempts == 2
        other = engine.start_workflow("podcast", {"topic": "other"})
        held = agent.hold_next("/discover_topics")  # the suspect's second step waits here
        worker = Worker(engine, concurrency=2)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            wait_until(lambda: store.get_workflow(other).state != "fetching", timeout=10.0)
            assert store.get_workflow(suspect).state == "analyzing"  # its slot is in TDA
            assert [r["headers"]["x-workflow-id"] for r in agent.requests_to("/harvest")] == [
                str(suspect), str(other)]
        finally:
            held.set()
            worker.stop()
            thread.join(timeout=30)
    finally:
        agent.close()


def cut_liveness_connection(db) -> None:
    """Terminates the session that vouches for the worker (its advisory lock's holder)."""
    [cut] = db.execute("SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity "
                       "WHERE datname = current_database() "
                       "AND query LIKE 'SELECT pg_advisory_lock%%'").fetchall()
    assert cut["ok"]


@contextlib.contextmanager
def connections_refused(dsn: str) -> Iterator[None]:
    """No new session can connect to the test's database meanwhile (open ones stay): the
    worker's liveness connection, once cut, stays away."""
    name = sql.Identifier(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(with_dbname(dsn, "postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
        try:
            yield
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))


def test_worker__claims_only_vouched_for_while_its_listener_reconnects(
        running_worker, engine, agent, db, caplog):
    """A claim made while the worker's liveness connection is away (cut, or a server restart)
    connects it first, and claims nothing until it can: the lease carries the new key, so
    that the workflow is recovered at once if the worker dies (with no key, only after the
    whole lease TTL)."""
    wait_until(running_worker.sleeping.is_set, timeout=5)
    held = agent.hold_next("/harvest")
    try:
        with connections_refused(engine.store.dsn):
            cut_liveness_connection(db)
            wait_until(lambda: engine.liveness_key is None, timeout=5)
            workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
            running_worker.wake.set()  # its NOTIFY went nowhere
            wait_until(lambda: leased(db, workflow_id) or any(  # claimed, or tried to vouch
                r.threadName != "cpoa-listen" and getattr(r, "action", "") == "db_outage"
                for r in caplog.records), timeout=5)
        row = wait_until(lambda: leased(db, workflow_id), timeout=5)
        assert row["lease_liveness_key"] is not None
        assert row["lease_liveness_key"] == engine.liveness_key
    finally:
        held.set()


def leased(db, workflow_id) -> dict | None:
    return db.execute("SELECT lease_owner, lease_liveness_key FROM workflow_instances "
                      "WHERE workflow_id = %s AND lease_owner IS NOT NULL",
                      (workflow_id,)).fetchone()


def test_worker__reconnected_listener_wakes_the_claim_loop(running_worker, engine, store, db):
    """A workflow started while the worker's listener was away (its NOTIFY lost) is picked up
    when the listener is back, not after the claim loop's idle wait (30 s)."""
    wait_until(running_worker.sleeping.is_set, timeout=5)
    with connections_refused(engine.store.dsn):
        cut_liveness_connection(db)
        wait_until(lambda: engine.liveness_key is None, timeout=5)
        workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    wait_until(lambda: store.get_workflow(workflow_id).state == "completed", timeout=10)
