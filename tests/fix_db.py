"""Database fixtures: one template database per session, a fresh clone per test.

The server is CPOA_TEST_DATABASE_URL when set (CI points it at the local server); otherwise the
embedded PostgreSQL is started in a throwaway folder, so the suite really runs everywhere.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import conninfo as pg_conninfo

from cpoa import embedded, sql
from cpoa.store import PostgresStore


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """An administrative connection string to the test server."""
    configured = os.environ.get("CPOA_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    with tempfile.TemporaryDirectory(prefix="cpoa-test-pg-") as folder:
        data_dir = os.path.join(folder, "pgdata")
        yield embedded.start(data_dir, keep_running=False)
        embedded.stop(data_dir)


def with_dbname(dsn: str, dbname: str) -> str:
    """Returns ``dsn`` pointed at another database."""
    params = pg_conninfo.conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return pg_conninfo.make_conninfo(**params)


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    """A database with the schema applied, used as the template of every test database."""
    name = f"cpoa_tpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(with_dbname(server_dsn, name), autocommit=True) as conn:
        with conn.transaction():
            conn.execute(sql.schema())
    yield name
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh database with the schema, dropped after the test."""
    name = f"cpoa_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield with_dbname(server_dsn, name)
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
