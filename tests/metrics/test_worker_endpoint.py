"""`cpoa worker --metrics-port`: each worker process serves its own counters over HTTP."""

from __future__ import annotations

import signal
import socket
import urllib.request

import pytest

from cpoa.testing.cli import cli_env, run_cli, spawn_cli
from cpoa.testing.agent import free_port
from tests.fix_agents import wait_until
from tests.metrics.helpers import Samples, parse, transitions, value


def fetch(port: int) -> Samples | None:
    """One scrape of a worker's endpoint, or None while it does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain")
            return parse(reply.read())
    except OSError:
        return None


@pytest.mark.slow
def test_worker__metrics_port_serves_the_worker_counters(dsn, agent, engine, store):
    """A worker started with --metrics-port (host from CPOA_METRICS_HOST) serves, over HTTP,
    the transitions it made itself and the database's gauges; SIGTERM still exits 0."""
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    port = free_port()
    env = cli_env(dsn, agent.url, CPOA_METRICS_HOST="127.0.0.1")
    worker = spawn_cli(env, "worker", "--metrics-port", str(port))
    try:
        def completed() -> Samples | None:
            # The worker counts a transition just after its COMMIT, so the database may show
            # the workflow completed a moment before the counter does: wait for both.
            samples = fetch(port)
            done = samples and value(samples, "cpoa_workflows", state="completed") == 1 \
                and transitions(samples, "podcast", "finalizing", "completed") == 1
            return samples if done else None
        samples = wait_until(completed, timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr[-2000:]
    assert store.get_workflow(workflow_id).state == "completed"
    # The counters are the worker process's own: exactly this workflow's transitions.
    assert transitions(samples, "podcast", "fetching", "analyzing") == 1
    assert transitions(samples, "podcast", "finalizing", "completed") == 1
    assert value(samples, "cpoa_step_duration_seconds_count", agent="WCHA") == 2
    assert value(samples, "cpoa_database_up") == 1
    assert value(samples, "cpoa_workflows", state="fetching") == 0


def test_worker__metrics_port_in_use_exits_2_naming_the_variable(dsn, agent):
    """A metrics port another program holds stops the worker at once with a usage error."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(cli_env(dsn, agent.url, CPOA_METRICS_PORT=str(port),
                                 CPOA_METRICS_HOST="127.0.0.1"), "worker", "--until-idle")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"CPOA_METRICS_PORT: cannot listen on 127.0.0.1:{port}" in result.stderr
