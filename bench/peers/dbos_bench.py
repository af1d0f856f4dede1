"""Peer: DBOS Transact running N workflows of 6 no-op steps on a given (fresh) database.

Runs in its own virtualenv (``pip install dbos psutil``); ``bench/run.py`` starts it:

    /tmp/benchvenv/bin/python -m bench.peers.dbos_bench --admin-dsn A --dsn D -n 5000 --threads 4

Each thread calls the workflow function directly (DBOS checkpoints the workflow and each step in
its system database); ``--max-seconds`` stops starting new workflows after that long, and the
rates count the workflows that finished. Round trips are counted the same way as CPOA's
(``bench.scenarios.common.CountingConnection``: every psycopg exchange that waited on the
socket), by making ``psycopg.connect`` return that class before DBOS builds its engine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import threading
import time


import psycopg

from bench.scenarios import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-dsn", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=0.0)
    args = parser.parse_args()

    real_connect = psycopg.connect
    psycopg.connect = lambda *a, **k: common.CountingConnection.connect(*a, **k)  # type: ignore
    import dbos
    from dbos import DBOS

    url = psycopg.conninfo.conninfo_to_dict(args.dsn)
    sys_url = (f"postgresql://{url.get('user', 'postgres')}@{url.get('host', '127.0.0.1')}:"
               f"{url.get('port', 5432)}/{url['dbname']}")
    if url.get("password"):
        sys_url = sys_url.replace("@", f":{url['password']}@", 1)
    DBOS(config={"name": "cpoa-bench-peer", "system_database_url": sys_url,
                 "log_level": "WARNING", "sys_db_pool_size": max(5, args.threads + 3)})
    logging.getLogger("dbos").setLevel(logging.WARNING)

    @DBOS.step()
    def noop(i: int) -> int:
        return i

    @DBOS.workflow()
    def six_steps(i: int) -> int:
        for k in range(6):
            noop(k)
        return i

    DBOS.launch()
    for i in range(5):  # warm-up: connections, prepared state
        six_steps(-i)

    dbname = url["dbname"]
    server_before = common.server_snapshot(args.admin_dsn, dbname)
    counts_before = common.COUNTERS.snapshot()
    cpu_before = time.process_time()
    pg_pids = common.postgres_pids(args.admin_dsn, dbname)
    pg_cpu_before = common.pids_cpu_s(pg_pids)
    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + args.max_seconds if args.max_seconds else None

    def loop() -> None:
        while True:
            with lock:
                i = next_index[0]
                if i >= args.n or (deadline and time.perf_counter() > deadline):
                    return
                next_index[0] += 1
            t0 = time.perf_counter()
            six_steps(i)
            latencies.append(time.perf_counter() - t0)

    with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
        for future in [pool.submit(loop) for _ in range(args.threads)]:
            future.result()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    pg_cpu = common.pids_cpu_s(pg_pids) - pg_cpu_before
    counts = {k: v - counts_before[k] for k, v in common.COUNTERS.snapshot().items()}
    rss = common.rss_mb()
    DBOS.destroy()
    psycopg.connect = real_connect  # type: ignore
    common.wait_no_backends(args.admin_dsn, dbname)
    server = common.server_delta(args.admin_dsn, server_before,
                                 common.server_snapshot(args.admin_dsn, dbname))
    done = len(latencies)
    steps = done * 6
    common.emit({
        "peer": "dbos", "version": dbos.__version__ if hasattr(dbos, "__version__") else
        _version("dbos"), "threads": args.threads, "workflows": done, "steps": steps,
        "seconds": round(elapsed, 3), "workflows_per_s": round(done / elapsed, 1),
        "steps_per_s": round(steps / elapsed, 1),
        "workflow_ms_p50": common.ms(common.percentile(latencies, 50)),
        "workflow_ms_p99": common.ms(common.percentile(latencies, 99)),
        "round_trips_per_step": round(counts["round_trips"] / max(steps, 1), 2),
        "round_trips_per_workflow": round(counts["round_trips"] / max(done, 1), 1),
        "commits_per_step": round(server["xact_commit"] / max(steps, 1), 2),
        "wal_bytes_per_step": round(server["wal_bytes"] / max(steps, 1)),
        "cpu_ms_per_step": round(cpu * 1000 / max(steps, 1), 3),
        "postgres_cpu_ms_per_step": round(pg_cpu * 1000 / max(steps, 1), 3),
        "rss_mb": rss,
    })


def _version(name: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
