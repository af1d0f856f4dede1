"""Usage and configuration mistakes: exit 2, one line naming the option or variable and what a
valid value looks like, no traceback; a bad variable stops only the command that uses it."""

from __future__ import annotations

import json

import pytest

from cpoa.testing.cli import cli_env, run_cli

NOWHERE = "postgresql://nobody@127.0.0.1:1/x"
"""A database no test reaches: commands refused before connecting never notice."""


def _refused(result, *words: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_worker__concurrency_below_one_is_a_usage_error(value):
    """`worker --concurrency 0` (or -3) exits 2 naming the option and the valid range."""
    result = run_cli(cli_env(NOWHERE, "http://127.0.0.1:9"), "worker", "--concurrency", value)
    _refused(result, "--concurrency", "at least 1")


def test_worker__concurrency_variable_below_one_is_a_configuration_error():
    """CPOA_WORKER_CONCURRENCY=0 exits 2 naming the variable."""
    env = cli_env(NOWHERE, "http://127.0.0.1:9", CPOA_WORKER_CONCURRENCY="0")
    _refused(run_cli(env, "worker"), "CPOA_WORKER_CONCURRENCY", "at least 1")


@pytest.mark.parametrize("variable, value, command, valid", [
    ("CPOA_API_PORT", "abc", ["serve"], "0 to 65535"),
    ("CPOA_METRICS_PORT", "99999", ["worker"], "0 to 65535"),
    ("CPOA_WORKER_UNTIL_IDLE", "maybe", ["worker"], "yes or no"),
])
def test_cli__bad_option_variable_stops_only_its_command(dsn, agent, variable, value, command,
                                                           valid):
    """A bad twin of an option fails the command that has the option (exit 2, naming the
    variable and what is valid) and no other command; --help always works."""
    env = cli_env(dsn, agent.url, **{variable: value})
    _refused(run_cli(env, *command, timeout=30), f"error: {variable}: {value!r}", valid)
    listed = run_cli(env, "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    for args in (["--help"], [*command, "--help"]):
        assert run_cli(env, *args).returncode == 0


def test_worker__until_idle_variable_yes_runs_to_idle(dsn, agent):
    """CPOA_WORKER_UNTIL_IDLE=yes (any case) is read as yes: the worker drains and exits 0."""
    result = run_cli(cli_env(dsn, agent.url, CPOA_WORKER_UNTIL_IDLE="Yes"), "worker", timeout=30)
    assert result.returncode == 0, result.stderr[-2000:]


def test_retry__of_a_completed_workflow_says_what_can_be_retried(dsn, agent):
    """Retrying a completed workflow says, in CPOA's words, that only a failed one can be;
    no library internals."""
    env = cli_env(dsn, agent.url)
    workflow_id = json.loads(run_cli(env, "start", "podcast", "--topic", "t", "--wait",
                                     "--json").stdout)["workflow_id"]
    result = run_cli(env, "retry", workflow_id)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: cannot retry a podcast workflow that is completed: "
        "only a failed workflow can be retried")
    cancelled = run_cli(env, "cancel", workflow_id)
    assert "only a workflow still working, or failed, can be cancelled" in cancelled.stderr
    assert "MachineError" not in cancelled.stderr + result.stderr


def test_cli__commands_without_configuration_ignore_a_bad_variable(tmp_path):
    """`diagram` and `agents serve --help` use no CPOA_* setting: a bad one does not stop
    them, while a command that uses it is refused naming it."""
    env = cli_env(NOWHERE, "http://127.0.0.1:9", CPOA_LEASE_TTL_SECONDS="soon")
    drawn = run_cli(env, "diagram")
    assert drawn.returncode == 0 and "stateDiagram-v2" in drawn.stdout, drawn.stderr
    assert run_cli(env, "agents", "serve", "--help").returncode == 0
    _refused(run_cli(env, "list"), "CPOA_LEASE_TTL_SECONDS: 'soon' is not a number")


@pytest.mark.parametrize(("variable", "value", "word"), [
    ("CPOA_CALLBACK_BASE_URL", "gateway:8080", "not an http(s) URL"),
    ("CPOA_CALLBACK_SECRET", "short-secret", "shorter than 16 characters")])
def test_worker__bad_callback_variable_is_a_configuration_error(variable, value, word):
    """A callback base URL that is not http(s), or a secret too short to sign with: exit 2
    naming the variable (the secret itself is never printed)."""
    result = run_cli(cli_env(NOWHERE, "http://127.0.0.1:9", **{variable: value}), "worker")
    _refused(result, variable, word)
    if variable == "CPOA_CALLBACK_SECRET":
        assert value not in result.stderr
