"""Runs one benchmark scenario in its quick version as the command it is (`python -m bench.run
--quick --only NAME`), for the suite's variants of the long scenarios (the suite imports
nothing from bench/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from cpoa.testing.cli import ROOT


def quick_scenario(server_dsn: str, name: str, scenario: str, timeout_s: float,
                   **env: str) -> dict[str, Any]:
    """The JSON document of ``scenario`` that `bench.run --quick --only name` printed (its
    output is printed too, for a failing test's report); ``env`` is added to the run's."""
    run = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--only", name,
                          "--no-install", "--dsn", server_dsn], cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout_s, check=False, env={**os.environ, **env})
    print(run.stdout, run.stderr[-5000:], sep="\n")
    docs = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    found = [d for d in docs if d.get("scenario") == scenario]
    assert found, f"bench.run --only {name} printed no result (exit {run.returncode})"
    return found[0]
