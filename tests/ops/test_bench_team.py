"""The team-setup benchmark in its quick version (`python -m bench.run --quick --only team`),
run as the command it is: the seven reference agents, `cpoa serve` and `cpoa worker` with
every setting at its default, one podcast with agent callbacks and one without (after one not
counted in each). VFA speaks with espeak-ng here (VFA_NEURAL_HOST=no, as the other suite
tests), which the result says; the benchmark itself runs the default voices."""

from __future__ import annotations

import pytest

from tests.ops.quick_bench import quick_scenario

POLLED_AGENTS = ("WCHA", "TDA", "PSWA", "VFA", "IGA")
"""A podcast's agents that keep tasks (the suite imports nothing from bench/)."""

QUICK_TIMEOUT_S = 600.0
"""The quick scenario takes about a minute on 2 cores; past this it hangs."""


@pytest.mark.slow
def test_team__quick__callbacks_leave_cpoa_a_small_share_of_the_episode(server_dsn):
    """Default settings, reference agents: an episode's time is the agents' own work plus
    CPOA's share; every polled agent worked on it; with callbacks CPOA's share is under half
    of what adaptive polling alone leaves it (its first polls come 1-2 s after each submit)."""
    team = quick_scenario(server_dsn, "team", "team_default_settings", QUICK_TIMEOUT_S,
                          VFA_NEURAL_HOST="no")
    assert team["vfa_neural_host"] == "no"
    for mode in ("callbacks", "polling"):
        assert team[mode]["non_default_settings"] == []
        [episode] = team[mode]["episodes"]
        assert set(episode["agent_s"]) == set(POLLED_AGENTS)
        assert all(seconds > 0 for seconds in episode["agent_s"].values()), episode
        assert 0 < episode["agents_busy_s"] < episode["total_s"], episode
        assert episode["overhead_s"] == pytest.approx(
            episode["total_s"] - episode["agents_busy_s"], abs=0.002)
    assert team["callbacks"]["overhead_s_max"] < team["polling"]["overhead_s_max"] / 2, team
    assert [t["target"].startswith("reference agents") for t in team["targets"]] == [True]
