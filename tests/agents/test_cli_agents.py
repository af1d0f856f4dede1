"""`cpoa agents serve` and `cpoa demo` as processes: they start, answer, and stop cleanly."""

from __future__ import annotations

import json
import re
import signal
import urllib.parse

import psycopg
import pytest
import requests

from cpoa import defaults
from cpoa_agents.corpus import CorpusServer
from cpoa.testing.cli import cli_env, run_cli, spawn_cli
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


def _status(env: dict[str, str], workflow_id: str) -> dict:
    result = run_cli(env, "status", workflow_id, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.slow
def test_demo__ctrl_c_stops_everything(dsn, tmp_path):
    """SIGINT while the demo runs ends it with exit code 130, cancels its workflow (nothing
    left half-done for another command) and frees its agent ports."""
    env = cli_env(dsn, "http://127.0.0.1:9",
                  CPOA_VFA_POLLING_INTERVAL_SECONDS="30")  # park it in synthesizing
    process = spawn_cli(env, "demo", "tides", "--output", str(tmp_path / "out"),
                        "--data-dir", str(tmp_path / "agents"))
    shown = ""
    try:
        while "live page:" not in shown:
            line = process.stdout.readline()
            assert line, process.stderr.read()[-2000:]
            shown += line
        page = line.split("live page:")[1].strip()
        wait_until(lambda: requests.get(page + "api/workflows", timeout=5).json()["workflows"],
                   timeout=30)
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err[-2000:]
    workflow_id = re.search(r"workflow ([0-9a-f-]{36})", shown)[1]
    assert f"interrupted: workflow {workflow_id} cancelled" in out
    assert _status(env, workflow_id)["state"] == "cancelled"
    with pytest.raises(requests.ConnectionError):
        requests.get(page + "health", timeout=5)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["live page:", "fetching", "synthesizing"])
def test_demo__ctrl_c_at_any_moment_exits_130(dsn, tmp_path, moment):
    """Ctrl-C just after a line of the demo (the live page's URL, the first state, the
    parked one) exits 130 with no traceback, and cancels the workflow."""
    env = cli_env(dsn, "http://127.0.0.1:9", CPOA_VFA_POLLING_INTERVAL_SECONDS="30")
    process = spawn_cli(env, "demo", "tides", "--output", str(tmp_path / "out"),
                        "--data-dir", str(tmp_path / "agents"))
    shown = ""
    try:
        while moment not in shown:
            line = process.stdout.readline()
            assert line, process.stderr.read()[-2000:]
            shown += line
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 130, shown + out + err[-2000:]
    assert "Traceback" not in err and "Error" not in err, err[-2000:]
    workflow_id = re.search(r"workflow ([0-9a-f-]{36})", shown)[1]
    assert _status(env, workflow_id)["state"] == "cancelled"


@pytest.mark.slow
def test_demo__drives_only_its_own_workflow(dsn, tmp_path):
    """An unfinished workflow of someone else (here: its agents are gone) is not the demo's:
    the demo completes without touching or polling it, without delivering its UI events to
    the demo's page, and without a warning."""
    env = cli_env(dsn, "http://127.0.0.1:9")
    other = run_cli(env, "start", "podcast", "--topic", "tides", "--client-id",
                    "someone-else").stdout.strip()
    result = run_cli(env, "demo", "tidal energy", "--output", str(tmp_path / "out"),
                     "--data-dir", str(tmp_path / "agents"), timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr == ""
    untouched = _status(env, other)
    assert untouched["state"] == "fetching" and untouched["tasks"] == []
    with psycopg.connect(dsn) as conn:  # its UI event waits for its own UI, not the demo's
        assert conn.execute("SELECT delivered_at, attempts FROM ui_event_outbox "
                            "WHERE workflow_id = %s", (other,)).fetchall() == [(None, 0)]


@pytest.mark.slow
def test_demo__topic_outside_the_corpus_fails_naming_it(dsn, tmp_path):
    """A topic no sample article matches is a clear failure naming the topic and --url, never
    an episode about another topic."""
    result = run_cli(cli_env(dsn, "http://127.0.0.1:9"), "demo", "quantum computing",
                     "--output", str(tmp_path / "out"), "--data-dir", str(tmp_path / "agents"),
                     timeout=120)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "no article of the sample corpus matches the topic 'quantum computing'" in \
        result.stdout
    assert "give the pages to harvest with --url URL" in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_demo__serve_keeps_the_live_page_until_ctrl_c(dsn, tmp_path):
    """With --serve the live page stays up after the episode, showing it completed, until
    Ctrl-C (exit 0); without it the demo says where the episode stays."""
    env = cli_env(dsn, "http://127.0.0.1:9")
    process = spawn_cli(env, "demo", "tidal energy", "--serve", "--output",
                        str(tmp_path / "out"), "--data-dir", str(tmp_path / "agents"))
    try:
        line = ""
        while "serving the live page at" not in line:
            line = process.stdout.readline()
            assert line, process.stderr.read()[-2000:]
        page = line.split(" at ")[1].split()[0]
        [shown] = requests.get(page + "api/workflows", timeout=5).json()["workflows"]
        assert shown["state"] == "completed"
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err[-2000:]
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
        ports = [a for n in defaults.AGENT_PORTS for a in (f"--port-{n.lower()}", "0")]
        process = spawn_cli(env, "agents", "serve", "--data-dir", str(tmp_path), *flags, *ports)
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
