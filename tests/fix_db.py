"""Database fixtures: one template database per session, a fresh clone per test.

The server is CPOA_TEST_DATABASE_URL when set (CI points it at the local server); otherwise the
embedded PostgreSQL is started in a throwaway folder, so the suite really runs everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import conninfo as pg_conninfo

from cpoa.store import PostgresStore
from cpoa.testing.databases import database, database_server


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """An administrative connection string to the test server."""
    with database_server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    """A database with the schema applied, used as the template of every test database."""
    with database(server_dsn, schema=True, prefix="cpoa_tpl_") as template:
        yield pg_conninfo.conninfo_to_dict(template)["dbname"]


@pytest.fixture
def dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh database with the schema, dropped after the test."""
    with database(server_dsn, template=template_db) as fresh:
        yield unsynced(fresh)


def unsynced(dsn: str) -> str:
    """``dsn`` with commits that do not wait for the WAL to reach the disk
    (synchronous_commit off, this database's sessions only): a test's database is thrown
    away, never recovered after a crash of the server, and the suite spent much of its time
    waiting on fsync."""
    params = pg_conninfo.conninfo_to_dict(dsn)
    params["options"] = "-c synchronous_commit=off"
    return pg_conninfo.make_conninfo(**params)


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """A fresh database without the schema, dropped after the test."""
    with database(server_dsn) as empty:
        yield empty


@pytest.fixture
def store(dsn: str) -> Iterator[PostgresStore]:
    """A store on the test's database."""
    store = PostgresStore(dsn, min_size=1, max_size=4)
    yield store
    store.close()


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection]:
    """A plain connection for assertions on the tables."""
    with psycopg.connect(dsn, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        yield conn
