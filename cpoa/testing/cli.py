"""Running the `cpoa` CLI as a subprocess, configured only by environment variables."""

from __future__ import annotations

import os
import subprocess
import sys

from cpoa.testing.agent import agent_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The folder that holds the cpoa package (the repository, in a checkout)."""


def cli_env(dsn: str, agent_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a CLI process: this database, every agent at ``agent_url``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CPOA_", "POSTGRES_", "PG"))}
    # The espeak-ng voices: tests that are not about Piper's neural host voice skip its cost
    # (about 10 s of synthesis per episode on 2 cores); those that are set it back to auto.
    env.update(agent_env(agent_url), CPOA_DATABASE_URL=dsn, PYTHONPATH=ROOT,
               VFA_NEURAL_HOST="no")
    env.update(overrides)
    return env


def run_cli(env: dict[str, str], *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Runs one `cpoa` command to completion."""
    return subprocess.run([sys.executable, "-m", "cpoa.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def spawn_cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    """Starts a long-running `cpoa` command (a worker) in the background."""
    return subprocess.Popen([sys.executable, "-m", "cpoa.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
