"""Several processes advance the same workflows at once: every transition happens once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cpoa import machine
from cpoa.testing.cli import ROOT, cli_env, run_cli

ADVANCE_LOOP = """
import sys
from cpoa import api
engine = api.connect()
ids = sys.argv[1:]
while ids:
    ids = [i for i in ids if engine.advance(i) not in ("completed", "failed", "cancelled")]
"""


@pytest.mark.slow
def test_advance__many_processes_make_each_transition_once(dsn, agent, store):
    """Four processes calling advance in a loop on the same ten workflows never duplicate or
    skip a transition."""
    env = cli_env(dsn, agent.url)
    ids = [run_cli(env, "start", "podcast", "--topic", f"t{i}").stdout.strip() for i in range(10)]
    procs = [subprocess.Popen([sys.executable, "-c", ADVANCE_LOOP, *ids], env=env, cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    chain = [None, *machine.PODCAST_STEPS, "completed"]
    expected = list(zip(chain, chain[1:]))
    for workflow_id in ids:
        history = [(h["from_state"], h["to_state"]) for h in store.get_history(workflow_id)]
        assert history == expected
    assert agent.duplicates() == {}  # every submit counted: no step was sent twice
    assert len(agent.work) == 10 * 6
