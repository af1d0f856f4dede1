"""Peer (optional): PgQueuer draining no-op jobs on a given (fresh) database.

Runs in the peers' virtualenv (``pip install pgqueuer psutil``):

    /tmp/benchvenv/bin/python -m bench.peers.pgqueuer_bench --admin-dsn A --dsn D --jobs 30000

The jobs are enqueued first in batches of 1 000 (not timed); then one QueueManager (psycopg
async driver, batch size 10) drains them in ``drain`` mode, timed; ``--max-seconds`` stops it
earlier and the rate counts the jobs done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time


import psycopg

from bench.scenarios import common


async def run(args: argparse.Namespace) -> dict:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    conn = await psycopg.AsyncConnection.connect(args.dsn, autocommit=True)
    driver = PsycopgDriver(conn)
    queries = Queries(driver)
    await queries.install()
    for start in range(0, args.jobs, 1000):
        k = min(1000, args.jobs - start)
        await queries.enqueue(["noop"] * k, [None] * k, [0] * k)
    manager = QueueManager(queries)
    done = [0]

    @manager.entrypoint("noop")
    async def noop(job) -> None:  # type: ignore[no-untyped-def]
        done[0] += 1

    dbname = common.dbname_of(args.dsn)
    before = common.server_snapshot(args.admin_dsn, dbname)
    cpu_before = time.process_time()
    started = time.perf_counter()
    task = asyncio.create_task(manager.run(mode=QueueExecutionMode.drain, batch_size=10))
    deadline = started + args.max_seconds if args.max_seconds else None
    while not task.done():
        await asyncio.sleep(0.05)
        if deadline and time.perf_counter() > deadline:
            manager.shutdown.set()
            break
    with contextlib.suppress(asyncio.CancelledError):
        await task
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    rss = common.rss_mb()
    await conn.close()
    common.wait_no_backends(args.admin_dsn, dbname)
    delta = common.server_delta(args.admin_dsn, before,
                                common.server_snapshot(args.admin_dsn, dbname))
    jobs = done[0]
    return {"peer": "pgqueuer", "version": _version("pgqueuer"), "jobs": jobs,
            "seconds": round(elapsed, 3), "jobs_per_s": round(jobs / elapsed, 1),
            "commits_per_job": round(delta["xact_commit"] / max(jobs, 1), 3),
            "wal_bytes_per_job": round(delta["wal_bytes"] / max(jobs, 1)),
            "cpu_ms_per_job": round(cpu * 1000 / max(jobs, 1), 3), "rss_mb": rss}


def _version(name: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-dsn", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--jobs", type=int, default=30000)
    parser.add_argument("--max-seconds", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pgqueuer").setLevel(logging.WARNING)
    common.emit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
