"""Where a transition's WAL goes: N podcasts drained by one worker slot with an instant in-process
agent, the WAL between the first and the last step read back by record type (pg_walinspect).

    python -m bench.wal_study [--dsn ADMIN_DSN] [-n 300]

Needs the pg_walinspect extension (PostgreSQL 15+, contrib) on the server; the server's WAL is
shared, so run it with nothing else writing. Prints bytes per transition by record type and the
average size of the rows a transition writes.
"""

from __future__ import annotations

import argparse

import psycopg
from psycopg.rows import dict_row

from bench.scenarios.common import DEFAULT_DSN, InstantClient, agent_env
from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.testing.databases import database
from cpoa.worker import Worker

WAL_BY_RECORD = """
SELECT "resource_manager/record_type" AS record, count, combined_size, fpi_size
FROM pg_get_wal_stats(%s, %s, true) WHERE count > 0 ORDER BY combined_size DESC LIMIT 12"""
ROW_SIZES = """
SELECT (SELECT avg(pg_column_size(w.*)) FROM workflow_instances w) AS workflow_row,
       (SELECT avg(pg_column_size(e.context_updates)) FROM workflow_events e) AS context,
       (SELECT avg(pg_column_size(t.*)) FROM task_instances t) AS task_row,
       (SELECT avg(pg_column_size(e.task)) FROM workflow_events e) AS task_in_history,
       (SELECT avg(pg_column_size(e.*)) FROM workflow_events e) AS history_row"""
ROWS_BY_TABLE = """
SELECT relname, n_tup_ins AS inserted, n_tup_upd AS updated, n_tup_hot_upd AS hot,
       n_tup_del AS deleted
FROM pg_stat_user_tables WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY relname"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="an administrative connection string")
    parser.add_argument("-n", type=int, default=300, help="podcasts [300]")
    args = parser.parse_args()
    with database(args.dsn, schema=True, prefix="cpoa_walstudy_") as dsn, \
            psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as db:
        db.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        store = PostgresStore(dsn, min_size=1, max_size=4)
        try:
            engine = Engine(store, settings_module.from_env(agent_env("http://127.0.0.1:9")),
                            client=InstantClient())
            for n in range(args.n):
                engine.start_workflow("podcast", {"topic": f"wal {n}"})
            before = db.execute("SELECT pg_current_wal_lsn() AS lsn").fetchone()["lsn"]
            Worker(engine, concurrency=1, until_idle=True).run()
            after = db.execute("SELECT pg_current_wal_lsn() AS lsn").fetchone()["lsn"]
        finally:
            store.close()
        moves = db.execute("SELECT count(*) AS n FROM workflow_events "
                           "WHERE trigger <> 'start'").fetchone()["n"]
        total = db.execute("SELECT pg_wal_lsn_diff(%s, %s) AS b", (after, before)).fetchone()["b"]
        print(f"{moves} transitions, {float(total) / moves:.0f} B of WAL each")
        for row in db.execute(WAL_BY_RECORD, (before, after)).fetchall():
            print(f"  {row['record']:28s} {row['count'] / moves:5.2f} per transition, "
                  f"{row['combined_size'] / moves:6.0f} B (full-page images "
                  f"{row['fpi_size'] / moves:.0f} B)")
        # The statistics collector's counters reach pg_stat_user_tables at the end of each
        # session's transactions; the worker's sessions are closed by now.
        db.execute("SELECT pg_stat_force_next_flush()")
        for row in db.execute(ROWS_BY_TABLE).fetchall():
            print(f"  {row['relname']:22s} rows per transition: "
                  + ", ".join(f"{k} {row[k] / moves:.2f}"
                              for k in ("inserted", "updated", "hot", "deleted")))
        sizes = db.execute(ROW_SIZES).fetchone()
        print("  average bytes: " + ", ".join(f"{k} {float(v):.0f}" for k, v in sizes.items()
                                              if v is not None))


if __name__ == "__main__":
    main()
