"""The `cpoa` CLI as a user runs it: exit codes, JSON output, schema, embedded default."""

from __future__ import annotations

import json
import os

import pytest

from cpoa import embedded
from cpoa.testing.cli import cli_env, run_cli


def test_db_init__is_safe_to_repeat(dsn, agent):
    """Applying the schema twice succeeds both times."""
    env = cli_env(dsn, agent.url)
    assert run_cli(env, "db", "init").returncode == 0
    assert run_cli(env, "db", "init").returncode == 0
    assert "DB connection: OK" in run_cli(env, "healthcheck").stdout


def test_start__wait_json_reports_the_finished_workflow(dsn, agent):
    """`start --wait --json` drives the workflow and prints one JSON document."""
    env = cli_env(dsn, agent.url)
    result = run_cli(env, "start", "podcast", "--topic", "tides", "--wait", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["state"] == "completed" and status["progress"] == 1.0
    listed = json.loads(run_cli(env, "list", "--state", "completed", "--json").stdout)
    assert [w["workflow_id"] for w in listed] == [status["workflow_id"]]


@pytest.mark.parametrize("args, field", [
    (["start", "podcast", "--topic", ""], "topic"),
    (["start", "podcast", "--topic", "x" * 100_000], "topic"),
    (["start", "podcast", "--topic", "t", "--url", "ftp://x"], "urls[0]"),
    (["start", "snippets", "--query", "q", "--limit", "99"], "limit"),
    (["status", "not-a-uuid"], "workflow_id"),
])
def test_cli__bad_input_exits_2_naming_the_field(dsn, agent, db, args, field):
    """Invalid input exits with 2, names the field, and writes nothing."""
    result = run_cli(cli_env(dsn, agent.url), *args)
    assert result.returncode == 2
    assert f"error: {field}:" in result.stderr
    assert db.execute("SELECT count(*) AS n FROM workflow_instances").fetchone()["n"] == 0


def test_cli__bad_configuration_exits_2_naming_the_variable(dsn, agent):
    """A bad environment variable is a startup error naming it."""
    env = cli_env(dsn, agent.url, CPOA_SERVICE_RETRY_COUNT="-1")
    result = run_cli(env, "list")
    assert result.returncode == 2 and "CPOA_SERVICE_RETRY_COUNT" in result.stderr


def test_retry__of_a_completed_workflow_exits_1(dsn, agent):
    """An operation the machine refuses exits with 1 and says why."""
    env = cli_env(dsn, agent.url)
    workflow_id = json.loads(run_cli(env, "start", "podcast", "--topic", "t", "--wait",
                                     "--json").stdout)["workflow_id"]
    result = run_cli(env, "retry", workflow_id)
    assert result.returncode == 1 and "cannot retry" in result.stderr


def test_diagram__draws_both_machines():
    """`cpoa diagram` prints Mermaid for each kind without touching a database."""
    result = run_cli({**os.environ, "CPOA_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"},
                     "diagram")
    assert result.returncode == 0
    assert result.stdout.count("stateDiagram-v2") == 2 and "failed --> scripting: retry" in \
        result.stdout


@pytest.mark.slow
def test_embedded__runs_a_workflow_with_no_database_configured(agent, tmp_path):
    """With no database variables, the CLI starts the embedded PostgreSQL and completes a
    workflow on it (even when the suite itself uses a configured server)."""
    env = cli_env("", agent.url, CPOA_EMBEDDED_DATA_DIR=str(tmp_path / "pgdata"))
    del env["CPOA_DATABASE_URL"]
    try:
        result = run_cli(env, "start", "podcast", "--topic", "tides", "--wait", timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip().endswith("completed")
        assert (tmp_path / "pgdata" / "PG_VERSION").exists()
    finally:
        embedded.stop(tmp_path / "pgdata")


@pytest.mark.slow
def test_db_stop__stops_the_embedded_server(agent, tmp_path):
    """`cpoa db stop` stops the embedded PostgreSQL the other commands leave running, and
    says so; a second call says none runs."""
    folder = tmp_path / "pgdata"
    env = cli_env("", agent.url, CPOA_EMBEDDED_DATA_DIR=str(folder))
    del env["CPOA_DATABASE_URL"]
    try:
        assert run_cli(env, "db", "init", timeout=120).returncode == 0
        assert (folder / "postmaster.pid").exists()
        stopped = run_cli(env, "db", "stop", timeout=60)
        assert stopped.returncode == 0, stopped.stderr[-2000:]
        assert stopped.stdout == f"stopped the embedded PostgreSQL in {folder}\n"
        assert not (folder / "postmaster.pid").exists()
        again = run_cli(env, "db", "stop", timeout=60)
        assert again.stdout == f"no embedded PostgreSQL runs in {folder}\n"
    finally:
        embedded.stop(folder)


def test_db_stop__refuses_a_configured_database(dsn, agent):
    """With a database configured, `cpoa db stop` is a usage error: it stops only its own."""
    result = run_cli(cli_env(dsn, agent.url), "db", "stop")
    assert result.returncode == 2
    assert "cpoa db stop stops only the embedded PostgreSQL" in result.stderr
