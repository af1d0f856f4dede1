"""Shared plumbing of the fault harness: a fresh database per scenario, timing, JSON lines."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fix_db import database_server, with_dbname  # noqa: E402


@dataclasses.dataclass
class Context:
    """What every scenario gets: an administrative DSN and a scratch folder.

    Attributes:
        server_dsn: Connection string of a server where databases may be created and dropped.
        scratch: A folder the scenario may fill; removed after the run.
        quick: True for the short version (the test suite's); False for the full figures.
    """

    server_dsn: str
    scratch: pathlib.Path
    quick: bool = False

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database with the schema applied; dropped afterwards."""
        name = f"cpoa_chaos_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        dsn = with_dbname(self.server_dsn, name)
        try:
            from cpoa.store import PostgresStore
            store = PostgresStore(dsn, min_size=0, max_size=1)
            store.apply_schema()
            store.close()
            yield dsn
        finally:
            with psycopg.connect(self.server_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server(dsn: str | None) -> contextlib.AbstractContextManager[str]:
    """The given server, CPOA_TEST_DATABASE_URL, or an embedded one in a throwaway folder."""
    return database_server(dsn, prefix="cpoa-chaos-pg-")


def quick_run(module: Any, server_dsn: str, scratch: pathlib.Path) -> dict[str, Any]:
    """Runs one scenario's quick version the way `bench/chaos/run.py --quick` does (the test
    suite's chaos tests); prints the figures (shown with pytest -s or on failure)."""
    result = module.run(Context(server_dsn, scratch, quick=True))
    print(result)
    return result


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0–100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return round(ordered[index], 3)
