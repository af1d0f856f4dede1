"""`cpoa serve` as a user runs it: a subprocess configured by environment variables."""

from __future__ import annotations

import select
import signal
import socket
import subprocess

import httpx
import pytest

from cpoa.testing.cli import cli_env, run_cli, spawn_cli
from tests.fix_agents import wait_until

TOKEN = "tok-serve-5c1e0b7d2a"  # distinctive enough to search the logs for
START_TIMEOUT_S = 30.0


def served_url(proc: subprocess.Popen) -> str:
    """The URL `cpoa serve` prints on its first line once it listens."""
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    assert ready, "cpoa serve printed nothing"
    line = proc.stdout.readline()
    assert line.startswith("serving on http://127.0.0.1:"), (line, proc.stderr.read())
    return line.split()[-1]


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5.0).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_serve__serves_with_its_token_and_stops_on_sigterm(dsn, agent, db):
    """`cpoa -v serve --port 0` answers the API (the token from CPOA_API_TOKEN guarding its
    POSTs), exits 0 on SIGTERM, and its logs never contain the token."""
    proc = spawn_cli(cli_env(dsn, agent.url, CPOA_API_TOKEN=TOKEN), "-v", "serve",
                     "--port", "0")
    try:
        url = served_url(proc)
        wait_until(lambda: healthy(url), timeout=START_TIMEOUT_S)
        refused = httpx.post(f"{url}/v1/podcasts", json={"topic": "tides"},
                             headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 401
        answer = httpx.post(f"{url}/v1/podcasts", json={"topic": "tides"},
                            headers={"Authorization": f"Bearer {TOKEN}",
                                     "Idempotency-Key": "serve-1"})
        assert answer.status_code == 202, answer.text
        status = httpx.get(f"{url}{answer.json()['status_url']}").json()
        assert (status["state"], status["idempotency_key"]) == ("fetching", "serve-1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        logs = proc.stderr.read()
        assert '"name": "uvicorn.access"' in logs or "uvicorn" in logs  # -v logs were written
        assert TOKEN not in logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    row = db.execute("SELECT state FROM workflow_instances").fetchone()
    assert row["state"] == "fetching"


def test_serve__port_in_use_exits_1(dsn, agent):
    """A port another process listens on is an operation failure (exit 1) naming it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(cli_env(dsn, agent.url), "serve", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("args, env, message", [
    (["serve", "--port", "70000"], {}, "argument --port: '70000' is not a TCP port"),
    (["serve"], {"CPOA_API_PORT": "http"}, "CPOA_API_PORT: 'http' is not a TCP port"),
])
def test_serve__bad_port_is_refused(dsn, agent, args, env, message):
    """A port out of range or not a number, as flag or env twin, is refused naming it."""
    result = run_cli(cli_env(dsn, agent.url, **env), *args)
    assert result.returncode == 2 and message in result.stderr
    assert "from 0 to 65535" in result.stderr


def test_listen__accepted_connections_send_without_delay():
    """The listening socket has TCP_NODELAY, which the connections it accepts inherit: an
    answer written as headers then body never waits for the client's delayed ACK (it cost
    40 ms per request on a kept-alive connection, such as an agent's repeated callbacks)."""
    from cpoa.gateway import server
    listening = server.listen("127.0.0.1", 0)
    try:
        with socket.create_connection(listening.getsockname()[:2], timeout=5):
            accepted, _ = listening.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        listening.close()
