"""The fault harness's kill scenarios in their quick versions (`python -m bench.chaos.run --quick`):
worker kills under a chaotic agent, a kill at every boundary, an advance storm, a poison
workflow."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from tests.chaos.harness import quick
from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.testing.agent import ScriptedAgent
from cpoa.testing.cli import ROOT, cli_env
from cpoa.testing.wait import wait_until
from tests.fix_agents import agent_env


@pytest.mark.slow
def test_worker_kills__quick__nothing_lost_or_done_twice(server_dsn, tmp_path):
    """Workers SIGKILLed and restarted under 503s, dropped connections and failing polls:
    every workflow completes, no step's work is done twice (every submit counted; one more
    only per answer lost or per kill that interrupted the request), every UI event arrives in
    order, and with the default lease and sweep settings a killed worker's workflows run again
    within RECOVERY_CHECK_S (0.5 s) plus 1 s."""
    result = quick("worker_kills", server_dsn)
    assert result["ok"], result
    assert result["completed_fraction"] == 1.0
    assert result["duplicate_work"] == 0 and result["keys_never_worked"] == 0
    assert result["ui_events_lost"] == 0 and result["ui_events_reordered"] == 0
    assert result["ui_undelivered"] == 0
    assert result["kills"] > 0 and result["resume_over_bound"] == 0
    assert result["kills_holding_work"] > 0 and result["held_never_resumed"] == 0
    assert result["resume_bound_s"] <= 1.5
    assert "CPOA_LEASE_TTL_SECONDS" not in result["non_default_settings"]
    assert "CPOA_SWEEP_INTERVAL_SECONDS" not in result["non_default_settings"]
    assert sum(result["faults_injected"].values()) > 0


@pytest.mark.slow
def test_boundaries__quick__each_kill_point_resumes_once(server_dsn, tmp_path):
    """A worker killed at each boundary of a step (before the call, after it, before and after
    the commit) is replaced within about a second by a worker running all along (default
    lease and sweep settings), and the workflow completes with each transition, each unit of agent
    work and each UI event exactly once."""
    result = quick("boundaries", server_dsn)
    assert result["ok"], result["failures"]
    assert result["cases"] == result["cases_ok"] == 8
    assert result["not_reached"] == 0 and result["duplicate_work"] == 0
    assert result["history_wrong"] == 0 and result["ui_events_lost"] == 0
    assert result["ui_events_reordered"] == 0
    assert result["recovery_over_bound"] == 0 and result["recovery_bound_s"] <= 1.0


@pytest.mark.slow
def test_storm__quick__every_transition_once(server_dsn, tmp_path):
    """Processes calling advance on the same workflows as fast as they can make every
    transition exactly once, queue one UI event per state and do each step's work once."""
    result = quick("storm", server_dsn)
    assert result["ok"], result
    assert result["unfinished"] == 0 and result["errors"] == {}
    assert result["histories_wrong"] == 0 and result["outbox_wrong"] == 0
    assert result["duplicate_work"] == 0
    assert result["transitions"] == result["workflows"] * 6




@pytest.mark.slow
def test_poison__quick__quarantined_after_bounded_recoveries(server_dsn, tmp_path):
    """A workflow that kills its worker every time is quarantined as failed after
    CPOA_MAX_RECOVERY_ATTEMPTS recoveries, and the other workflows complete."""
    result = quick("poison", server_dsn)
    assert result["poison_quarantined"], result["poison_error"]
    assert "quarantined" in result["poison_error"]
    assert result["crashes"] == result["max_recovery_attempts"] + 1
    assert result["healthy_duplicate_work"] == 0
    assert result["healthy_failures"] == [], result["healthy_failures"]
    assert result["ok"], result
    assert result["healthy_completed"] == sum(result["healthy_states"].values())


HEALTHY_ANSWER_S = 0.5


class SlowForHealthy(ScriptedAgent):
    """Answers the healthy workflow's requests after 0.5 s (an ordinary, slowish agent)."""

    def _default(self, method: str, path: str, headers: dict[str, str], body: Any) -> Any:
        if isinstance(body, dict) and body.get("topic") == "healthy":
            time.sleep(HEALTHY_ANSWER_S)  # an agent that takes its time, not a wait in the test
        return super()._default(method, path, headers, body)


@pytest.mark.slow
def test_poison__healthy_workflow_claimed_with_it_completes(dsn, store, tmp_path):
    """A healthy workflow whose step is in flight each time the poison workflow kills the
    worker they share is not quarantined with it (the recovering workflow is claimed alone,
    fixed: a workflow under recovery is claimed alone)."""
    agent = SlowForHealthy()
    workers: list[subprocess.Popen] = []
    try:
        engine = Engine(store, settings_module.from_env(agent_env(agent.url)))
        poison = str(engine.start_workflow("podcast", {"topic": "poison"}))
        healthy = str(engine.start_workflow("podcast", {"topic": "healthy"}))
        env = cli_env(dsn, agent.url, CPOA_MAX_RECOVERY_ATTEMPTS="3")
        args = ["--target", poison, "--crash-at", "before_call:fetching:every"]

        def both_ended() -> bool:
            if not workers or workers[-1].poll() is not None:  # a supervisor's restart
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.chaos.worker_proc", "worker", *args],
                    env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            return all(store.get_workflow(w).is_terminal for w in (poison, healthy))
        wait_until(both_ended, timeout=60, interval=0.05)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
        agent.close()
    assert "quarantined" in store.get_workflow(poison).error_message
    assert store.get_workflow(healthy).state == "completed", store.get_workflow(
        healthy).error_message
