"""Throwaway PostgreSQL databases: the test suite's and the benchmarks' (a configured server, or
the embedded one in a throwaway folder)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import sql as pg_sql

from cpoa import embedded
from cpoa.store import PostgresStore


@contextlib.contextmanager
def database_server(dsn: str | None = None, prefix: str = "cpoa-test-pg-") -> Iterator[str]:
    """The given server, CPOA_TEST_DATABASE_URL, or an embedded one in a throwaway folder
    (the test suite's and the benchmarks')."""
    dsn = dsn or os.environ.get("CPOA_TEST_DATABASE_URL")
    if dsn:
        yield dsn
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        data_dir = os.path.join(folder, "pgdata")
        yield embedded.start(data_dir, keep_running=False)
        embedded.stop(data_dir)


def with_dbname(dsn: str, dbname: str) -> str:
    """Returns ``dsn`` pointed at another database."""
    params = pg_conninfo.conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return pg_conninfo.make_conninfo(**params)


@contextlib.contextmanager
def database(server_dsn: str, *, template: str | None = None, schema: bool = False,
             prefix: str = "cpoa_t_") -> Iterator[str]:
    """A new database on the server (a copy of the ``template`` database if given, with the
    schema applied if ``schema``); yields its connection string and drops it on exit."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    create = pg_sql.SQL("CREATE DATABASE {}").format(pg_sql.Identifier(name))
    if template:
        create += pg_sql.SQL(" TEMPLATE {}").format(pg_sql.Identifier(template))
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(create)
    try:
        dsn = with_dbname(server_dsn, name)
        if schema:
            store = PostgresStore(dsn, min_size=0, max_size=1)
            try:
                store.apply_schema()
            finally:
                store.close()
        yield dsn
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(pg_sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                pg_sql.Identifier(name)))
