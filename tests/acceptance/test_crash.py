"""Crashes, done for real: a worker subprocess is SIGKILLed in the middle of a step."""

from __future__ import annotations

import signal
import time

import pytest

from tests.acceptance.helpers import cli_env, run_cli, spawn_cli
from tests.fix_agents import wait_until

LEASE_S = "1.5"


@pytest.mark.slow
@pytest.mark.parametrize("kind, params, path", [
    ("podcast", ["--topic", "tides"], "/harvest"),
    ("podcast", ["--topic", "tides"], "/weave_script"),
    ("podcast", ["--topic", "tides"], "/forge_voice"),
    ("snippets", ["--query", "ocean", "--limit", "2"], "/craft_snippet"),
])
def test_worker__sigkill_mid_step_resumes_without_duplicate_work(dsn, agent, store, kind,
                                                                 params, path):
    """A worker killed after the agent accepted a step's work is replaced; the step's work
    is not done twice and the workflow completes."""
    env = cli_env(dsn, agent.url, CPOA_LEASE_TTL_SECONDS=LEASE_S,
                  CPOA_SWEEP_INTERVAL_SECONDS="0.2")
    workflow_id = run_cli(env, "start", kind, *params).stdout.strip()
    agent.delay_next(path, 30.0)  # accepted, counted, and the answer never arrives in time
    doomed = spawn_cli(env, "worker", "--concurrency", "2")
    try:
        wait_until(lambda: agent.requests_to(path), timeout=20)
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    killed_at = time.monotonic()
    worker = run_cli(env, "worker", "--until-idle", timeout=60)
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert store.get_workflow(workflow_id).state == "completed"
    resumed = [r["at"] for r in agent.requests_to(path) if r["at"] > killed_at]
    assert resumed, "the new worker never resumed the step"
    assert resumed[0] - killed_at <= float(LEASE_S) + 5.0
    duplicates = {key: count for key, count in agent.work.items() if count != 1}
    assert duplicates == {}
    keys = [r["headers"]["x-idempotency-key"] for r in agent.requests_to(path)]
    assert len(set(keys)) == (2 if path == "/craft_snippet" else 1)
    print(f"kill->resume {resumed[0] - killed_at:.2f}s at {path}")


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
