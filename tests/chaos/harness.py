"""The fault harness (bench/chaos) run from the suite as the command it is, in its quick
versions: the suite imports nothing from bench/, and a scenario that crashes cannot take the
test process with it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from cpoa.testing.cli import ROOT

QUICK_TIMEOUT_S = 600.0
"""A quick scenario takes 10 to 90 s on 2 cores; past this it hangs."""


def quick(name: str, server_dsn: str) -> dict[str, Any]:
    """Runs ``python -m bench.chaos.run --quick NAME`` on ``server_dsn`` and returns the
    scenario's result (its JSON line); prints what the harness wrote (shown on failure)."""
    run = subprocess.run([sys.executable, "-m", "bench.chaos.run", "--quick", "--dsn",
                          server_dsn, name], cwd=ROOT, capture_output=True, text=True,
                         timeout=QUICK_TIMEOUT_S, check=False)
    print(run.stdout, run.stderr[-5000:], sep="\n")
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, f"bench.chaos.run {name} printed no result (exit {run.returncode})"
    return json.loads(lines[-1])
