"""What the CLI tells a user: states as they pass, topic and audio URL, the worker's start."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys

from psycopg import conninfo

from cpoa.testing.cli import ROOT, cli_env, run_cli, spawn_cli
from tests.fix_agents import wait_until

AUDIO_URL = "http://127.0.0.1/audio.mp3"
"""The scripted agent's VFA result."""


def run_on_terminal(env: dict[str, str], *args: str, timeout: float = 60.0) -> tuple[int, str]:
    """Runs `cpoa` with its stdout on a pseudo-terminal; returns (exit code, what it showed)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "cpoa.cli", *args], env=env, cwd=ROOT,
                               stdout=follower, stderr=subprocess.PIPE, text=True)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the process closed its side
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    process.wait(timeout=timeout)
    return process.returncode, shown.decode()


def test_start__wait_on_a_terminal_shows_each_state(dsn, agent):
    """`start --wait` on a terminal prints a progress line per state, in order, then the end."""
    code, shown = run_on_terminal(cli_env(dsn, agent.url), "start", "podcast", "--topic",
                                  "tides", "--wait")
    assert code == 0, shown
    states = re.findall(r"\] +\d+%  (\w+)", shown)
    assert states == ["fetching", "analyzing", "scripting", "synthesizing", "imaging",
                      "finalizing", "completed"], shown
    assert shown.strip().endswith("completed")


def test_start__wait_into_a_pipe_prints_only_the_outcome(dsn, agent):
    """Into a pipe (a script), `start --wait` prints one line: the id and the end state."""
    result = run_cli(cli_env(dsn, agent.url), "start", "podcast", "--topic", "tides", "--wait")
    assert re.fullmatch(r"[0-9a-f-]{36} completed\n", result.stdout), result.stdout


def test_status_and_list__show_topic_and_audio_url(dsn, agent):
    """`status` and `list` (not only --json) show the topic or query and the episode's URL."""
    env = cli_env(dsn, agent.url)
    podcast = run_cli(env, "start", "podcast", "--topic", "tidal <b>power</b>", "--wait")
    workflow_id = podcast.stdout.split()[0]
    query = run_cli(env, "start", "snippets", "--query", "ocean energy").stdout.strip()
    status = run_cli(env, "status", workflow_id).stdout.splitlines()
    assert status[1:3] == ["topic: tidal <b>power</b>", f"audio: {AUDIO_URL}"]
    assert run_cli(env, "status", query).stdout.splitlines()[1] == "query: ocean energy"
    listed = run_cli(env, "list").stdout.splitlines()
    assert listed[0].startswith(query) and listed[0].endswith("'ocean energy'")
    assert listed[1].startswith(workflow_id)
    assert listed[1].endswith(f"'tidal <b>power</b>'  {AUDIO_URL}")


def test_worker__prints_one_start_line_without_the_password(dsn, agent):
    """`cpoa worker` says who it is, its concurrency, its database (no password) and the
    agents it will call, on one line, before it works."""
    secret = "s3cret-Pa55"
    params = conninfo.conninfo_to_dict(dsn)
    url = (f"postgresql://{params['user']}:{secret}@{params['host']}:{params['port']}/"
           f"{params['dbname']}")
    env = cli_env(url, agent.url, CPOA_WORKER_CONCURRENCY="3")
    result = run_cli(env, "worker", "--until-idle")
    assert result.returncode == 0, result.stderr[-2000:]
    [line] = result.stdout.splitlines()
    assert line.startswith("worker "), line
    assert (f": concurrency 3, database postgresql://{params['user']}@{params['host']}:"
            f"{params['port']}/{params['dbname']}, agents ") in line
    assert secret not in result.stdout + result.stderr
    for name in ("WCHA", "TDA", "SCA", "PSWA", "VFA", "IGA", "ASF"):
        assert f"{name} {agent.url}" in line, line


def test_start__wait_interrupted_inside_a_step_lets_the_step_record_first(dsn, agent, store):
    """Ctrl-C while `start --wait` is inside a step (its WCHA submit held by the agent) takes
    effect once the step ends: the submit's answer is recorded (no write cut in half, no
    psycopg warning), then it exits 130 with the usual sentence and nothing else."""
    released = agent.hold_next("/harvest")
    process = spawn_cli(cli_env(dsn, agent.url), "start", "podcast", "--topic", "tides",
                        "--wait")
    try:
        wait_until(lambda: agent.requests_to("/harvest"), timeout=30)
        process.send_signal(signal.SIGINT)
        released.set()
    finally:
        _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err[-2000:]
    assert err.strip().startswith("interrupted: workflow "), err[-2000:]
    [workflow] = store.list_workflows()
    [task] = store.get_tasks(workflow.workflow_id)
    assert task.status == "submitted" and task.external_task_id, task


def test_start__wait_interrupted_says_how_the_workflow_goes_on(dsn, agent, store):
    """Ctrl-C during `start --wait` exits 130 and says the workflow is left for a worker,
    or how to cancel it: nothing is silently half-done."""
    agent.pending_polls = 1000  # WCHA never finishes
    process = spawn_cli(cli_env(dsn, agent.url), "start", "podcast", "--topic", "tides",
                        "--wait")
    try:
        [workflow] = wait_until(lambda: [w for w in store.list_workflows()
                                         if store.get_tasks(w.workflow_id)], timeout=30)
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err[-2000:]
    assert err.strip() == (f"interrupted: workflow {workflow.workflow_id} stays fetching; "
                           f"`cpoa worker` finishes it, `cpoa cancel {workflow.workflow_id}` "
                           "drops it")
