"""Shared plumbing of the fault harness: a fresh database per scenario, timing, JSON lines."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import sys
import tempfile
import uuid
from collections.abc import Iterator

import psycopg

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cpoa import embedded  # noqa: E402
from tests.fix_db import with_dbname  # noqa: E402


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


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[str]:
    """The given server, CPOA_TEST_DATABASE_URL, or an embedded one in a throwaway folder."""
    dsn = dsn or os.environ.get("CPOA_TEST_DATABASE_URL")
    if dsn:
        yield dsn
        return
    with tempfile.TemporaryDirectory(prefix="cpoa-chaos-pg-") as folder:
        data_dir = os.path.join(folder, "pgdata")
        yield embedded.start(data_dir, keep_running=False)
        embedded.stop(data_dir)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0–100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return round(ordered[index], 3)
