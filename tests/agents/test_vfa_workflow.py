"""VFA killed mid-synthesis while a workflow waits on it: the workflow still completes, and the
restarted agent does not synthesise the finished turns again."""

from __future__ import annotations

import threading

import pytest
import requests

from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.worker import Worker
from tests.agents.vfa_runner import VfaProcess
from cpoa.testing.agent import free_port
from tests.fix_agents import agent_env, wait_until

TURNS = 30


def long_script() -> dict:
    lines = [{"speaker": "Host" if n % 2 else "Guest",
              "text": f"Line {n}. " + "The tide comes in and the tide goes out again. " * 3}
             for n in range(1, TURNS + 1)]
    return {"script_id": "s-long", "title": "A long one",
            "segments": [{"segment_title": f"Part {i}", "lines": lines[i * 6:(i + 1) * 6]}
                         for i in range(TURNS // 6)]}


@pytest.mark.slow
def test_synthesizing__vfa_killed_and_restarted_completes_without_redoing_turns(
        store, agent, tmp_path):
    """SIGKILL the VFA process after some turns are cached, restart it on the same port: the
    workflow completes and only the missing turns are synthesised."""
    agent.set_result("/weave_script", {"status": "success", "script_data": long_script()})
    port = free_port()
    vfa = VfaProcess(tmp_path, port)
    settings = settings_module.from_env(agent_env(
        agent.url, VFA_SERVICE_URL=vfa.base, CPOA_VFA_POLLING_INTERVAL_SECONDS="0.05"))
    engine = Engine(store, settings)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    worker = Worker(engine, concurrency=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    second = None
    try:
        wait_until(lambda: len(list((tmp_path / "turns").glob("*.wav"))) >= 3, timeout=60,
                   interval=0.005)
        vfa.close()  # SIGKILL
        cached = len(list((tmp_path / "turns").glob("*.wav")))
        assert cached < TURNS, "synthesis finished before the kill; the test proves nothing"
        second = VfaProcess(tmp_path, port)
        wait_until(lambda: store.get_workflow(workflow_id).state == "completed", timeout=120)
        stats = requests.get(f"{second.base}/stats", timeout=10).json()
    finally:
        worker.stop()
        thread.join(timeout=30)
        vfa.close()
        if second is not None:
            second.close()
    assert stats["synthesised_turns"] == TURNS - cached
    audio = engine.get_workflow(workflow_id)["outputs"]["audio"]
    assert len(audio["turns"]) == TURNS
    vfa_tasks = [t for t in store.get_tasks(workflow_id) if t.step == "synthesizing"]
    assert [t.status for t in vfa_tasks] == ["succeeded"]
