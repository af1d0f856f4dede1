"""`cpoa agents serve` and `cpoa demo` as processes: they start, answer, and stop cleanly."""

from __future__ import annotations

import signal

import pytest
import requests

from cpoa import defaults
from tests.acceptance.helpers import cli_env, spawn_cli
from tests.fix_agents import wait_until


@pytest.mark.slow
def test_agents_serve__all_seven_answer_health_and_stop_on_sigterm(tmp_path):
    """Every agent listens on its own port and the process exits 0 on SIGTERM."""
    ports = [arg for name in defaults.AGENT_PORTS for arg in (f"--port-{name.lower()}", "0")]
    process = spawn_cli(cli_env("", "http://127.0.0.1:9"), "agents", "serve", "--data-dir",
                        str(tmp_path), *ports)
    try:
        lines = [process.stdout.readline().split() for _ in defaults.AGENT_PORTS]
        urls = {name: url for name, url in lines}
        assert set(urls) == set(defaults.AGENT_PORTS)
        for name, url in urls.items():
            assert requests.get(url + "/health", timeout=5).json()["agent"] == name
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


@pytest.mark.slow
def test_demo__ctrl_c_stops_everything(dsn, tmp_path):
    """SIGINT while the demo runs ends it with exit code 130 and frees its agent ports."""
    env = cli_env(dsn, "http://127.0.0.1:9",
                  CPOA_VFA_POLLING_INTERVAL_SECONDS="30")  # park it in synthesizing
    process = spawn_cli(env, "demo", "tides", "--output", str(tmp_path / "out"),
                        "--data-dir", str(tmp_path / "agents"))
    live = ""
    try:
        while "live page:" not in live:
            live = process.stdout.readline()
            assert live, process.stderr.read()[-2000:]
        page = live.split("live page:")[1].strip()
        wait_until(lambda: requests.get(page + "api/workflows", timeout=5).json()["workflows"],
                   timeout=30)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    with pytest.raises(requests.ConnectionError):
        requests.get(page + "health", timeout=5)
