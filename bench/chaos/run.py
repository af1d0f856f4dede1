"""The fault harness: runs every scenario (or the named ones) and prints one JSON line each.

    python -m bench.chaos.run                 # every scenario, full size
    python -m bench.chaos.run --quick worker_kills storm

Each scenario is a module ``bench/chaos/scenario_<name>.py`` with ``run(ctx) -> dict``; the dict
always holds ``"scenario"``, ``"ok"`` (bool: every promise held) and the figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
import tempfile
import time


from bench.chaos import common

HERE = pathlib.Path(__file__).resolve().parent


def scenarios() -> list[str]:
    """Every scenario name, in file order."""
    return sorted(p.stem.removeprefix("scenario_") for p in HERE.glob("scenario_*.py"))


def run(names: list[str], *, dsn: str | None = None, quick: bool = False) -> list[dict]:
    """Runs scenarios and returns their result dicts (also printed as JSON lines)."""
    results = []
    with common.server(dsn) as server_dsn:
        for name in names:
            module = importlib.import_module(f"bench.chaos.scenario_{name}")
            with tempfile.TemporaryDirectory(prefix=f"cpoa-chaos-{name}-") as scratch:
                ctx = common.Context(server_dsn, pathlib.Path(scratch), quick=quick)
                started = time.monotonic()
                result = {"scenario": name, **module.run(ctx)}
                result["seconds"] = round(time.monotonic() - started, 1)
            print(json.dumps(result, default=str), flush=True)
            results.append(result)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"scenarios (default all: {scenarios()})")
    parser.add_argument("--dsn", help="server to use [CPOA_TEST_DATABASE_URL, else embedded]")
    parser.add_argument("--quick", action="store_true", help="the short versions")
    args = parser.parse_args()
    unknown = set(args.names) - set(scenarios())
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    results = run(args.names or scenarios(), dsn=args.dsn, quick=args.quick)
    return 0 if all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
