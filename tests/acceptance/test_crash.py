"""Crashes, done for real: a worker subprocess is SIGKILLed in the middle of a step."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from cpoa import machine
from cpoa.testing.cli import ROOT, cli_env, run_cli, spawn_cli
from tests.fix_agents import wait_until

RESUME_DEADLINE_S = 5.0
"""Generous bound on kill -> the survivor's submit; the benchmark reports the real figure."""


def live_workers(db) -> int:
    """Worker processes whose liveness lock is held in the test database."""
    return db.execute(
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()["n"]


@pytest.mark.slow
@pytest.mark.parametrize("kind, params, path", [
    ("podcast", ["--topic", "tides"], "/harvest"),
    ("podcast", ["--topic", "tides"], "/weave_script"),
    ("podcast", ["--topic", "tides"], "/forge_voice"),
    ("snippets", ["--query", "ocean", "--limit", "2"], "/craft_snippet"),
])
def test_worker__sigkill_mid_request_survivor_takes_over_at_once(dsn, db, agent, store, kind,
                                                                 params, path):
    """With default settings, a worker SIGKILLed inside an agent request loses its lease with
    its database session: a second worker, running all along with free slots, takes the
    workflow up within seconds (not the lease TTL) and completes it; the interrupted step is
    submitted again under the same key (the agent replays it) and nothing else twice."""
    env = cli_env(dsn, agent.url)  # no lease, sweep or polling overrides
    workflow_id = run_cli(env, "start", kind, *params).stdout.strip()
    agent.delay_next(path, 60.0)  # accepted, counted, and the answer never arrives in time
    victim = spawn_cli(env, "worker", "--concurrency", "2")
    survivor = None
    try:
        wait_until(lambda: agent.requests_to(path), timeout=20)
        survivor = spawn_cli(env, "worker", "--concurrency", "2")
        wait_until(lambda: live_workers(db) == 2, timeout=20)
        killed_at = time.monotonic()  # before the signal: the survivor may resubmit before
        victim.send_signal(signal.SIGKILL)  # this process sees the victim's death
        victim.wait(timeout=10)
        wait_until(lambda: store.get_workflow(workflow_id).state == "completed", timeout=30)
    finally:
        for proc in (victim, survivor):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    resumed = [r["at"] for r in agent.requests_to(path) if r["at"] > killed_at]
    assert resumed, "the survivor never resumed the step"
    assert resumed[0] - killed_at <= RESUME_DEADLINE_S
    interrupted = agent.requests_to(path)[0]["headers"]["x-idempotency-key"]
    assert agent.duplicates() == {interrupted: 2}
    assert store.get_workflow(workflow_id).recovery_attempts == 0  # reset by the transition
    print(f"kill->resume {resumed[0] - killed_at:.2f}s at {path}")


@pytest.mark.slow
def test_worker__sigstop_mid_request_loses_the_lease_and_its_late_result(dsn, db, agent, store,
                                                                        tmp_path):
    """A worker stopped (SIGSTOP) inside an agent request keeps its database session, so only
    its lease's expiry frees the workflow (a stopped process sends no heartbeat): the survivor
    takes over and completes it; after SIGCONT the stopped worker's late result is refused,
    and the interrupted step was submitted twice under one key, nothing else twice. The TTL is
    3 s here because the expiry, not its default length, is what this test is about."""
    env = cli_env(dsn, agent.url, CPOA_LEASE_TTL_SECONDS="3")
    workflow_id = run_cli(env, "start", "podcast", "--topic", "tides").stdout.strip()
    agent.delay_next("/weave_script", 6.0)  # answered after the survivor has taken over
    log = tmp_path / "stopped.log"
    with open(log, "w") as stderr:
        stopped = subprocess.Popen([sys.executable, "-m", "cpoa.cli", "worker"], env=env,
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    survivor = None
    try:
        wait_until(lambda: agent.requests_to("/weave_script"), timeout=20)
        survivor = spawn_cli(env, "worker", "--concurrency", "2")
        wait_until(lambda: live_workers(db) == 2, timeout=20)
        stopped.send_signal(signal.SIGSTOP)
        wait_until(lambda: store.get_workflow(workflow_id).state == "completed", timeout=30)
        stopped.send_signal(signal.SIGCONT)
        wait_until(lambda: "stale_result" in log.read_text(), timeout=30)
    finally:
        for proc in (stopped, survivor):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    history = [(h["from_state"], h["to_state"]) for h in store.get_history(workflow_id)]
    chain = [None, *machine.PODCAST_STEPS, "completed"]
    assert history == list(zip(chain, chain[1:]))
    interrupted = agent.requests_to("/weave_script")[0]["headers"]["x-idempotency-key"]
    assert agent.duplicates() == {interrupted: 2}


@pytest.mark.slow
def test_worker__sigterm_finishes_the_transition_in_flight(dsn, agent, store):
    """SIGTERM during a slow step lets the worker store that step's result, then exit 0."""
    env = cli_env(dsn, agent.url)
    workflow_id = run_cli(env, "start", "podcast", "--topic", "tides").stdout.strip()
    agent.delay_next("/harvest", 1.0)
    worker = spawn_cli(env, "worker")
    wait_until(lambda: agent.requests_to("/harvest"), timeout=20)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    tasks = store.get_tasks(workflow_id)
    assert [t.status for t in tasks if t.step == "fetching"] in (["submitted"], ["succeeded"])
    assert store.get_workflow(workflow_id).lease_owner is None
