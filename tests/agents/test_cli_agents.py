"""`cpoa agents serve` and `cpoa demo` as processes: they start, answer, and stop cleanly."""

from __future__ import annotations

import signal
import urllib.parse

import pytest
import requests

from cpoa import defaults
from cpoa_agents.corpus import CorpusServer
from tests.acceptance.helpers import cli_env, spawn_cli
from tests.agents.protocol import finished, serving, submit
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


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flag", "variable", "neither"])
def test_agents_serve__wcha_allowed_host_from_flag_or_variable(tmp_path, how):
    """`--wcha-allowed-host H:P` (or WCHA_ALLOWED_HOSTS) lets WCHA fetch a loopback page;
    without either the refusal names the flag and the variable that would allow it."""
    with serving(CorpusServer(tmp_path / "corpus")) as library:
        allowed = urllib.parse.urlsplit(library.base_url).netloc
        env = cli_env("", "http://127.0.0.1:9",
                      **({"WCHA_ALLOWED_HOSTS": f"example.org,{allowed}"}
                         if how == "variable" else {}))
        flags = ["--wcha-allowed-host", allowed] if how == "flag" else []
        process = spawn_cli(env, "agents", "serve", "--data-dir", str(tmp_path), *flags,
                            *[a for n in defaults.AGENT_PORTS for a in (f"--port-{n.lower()}", "0")])
        try:
            urls = dict(process.stdout.readline().split() for _ in defaults.AGENT_PORTS)
            answer = submit(urls["WCHA"], {"topic": "tides",
                                           "urls": [library.url("tidal-power")]},
                            path="/harvest")
            report = finished(urls["WCHA"], answer.json()["task_id"])
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
    if how == "neither":
        assert report["status"] == "FAILURE"
        assert f"--wcha-allowed-host {allowed}" in report["error"]["message"]
        assert "WCHA_ALLOWED_HOSTS" in report["error"]["message"]
    else:
        assert report["status"] == "SUCCESS", report
        assert "tide" in report["result"]["content"].lower()
