"""One CPOA worker process draining a prepared database; prints one RESULT line.

Run by ``bench/run.py`` as a subprocess (so that its CPU, RSS and GIL are its own):

    python -m bench.scenarios.engine --admin-dsn DSN --dsn DB_DSN --slots 4 --client instant

``--client instant`` answers every agent request in-process at once (``common.InstantClient``);
``--client http`` uses CPOA's real ``AgentClient`` against ``--agent-url`` (a separate process).
Without ``--stop-after`` the worker runs with ``until_idle`` (drains every workflow) unless
``--max-seconds`` stops it first; with it, the worker is stopped after that many step actions
(the backlog scenario). Rates are over the time until the last step action returned.

Timings: ``Engine.step`` (one step action: the agent request and the result's transaction),
``PostgresStore.claim_due`` and ``PostgresStore.record``, each wrapped by a subclass here.
Counts: round trips and statements by ``common.CountingConnection``; commits, tuples and WAL
from the server (``pg_stat_database``, ``pg_current_wal_lsn``) before and after.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time

import psycopg

from bench.scenarios import common
from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.worker import Worker


class TimedStore(PostgresStore):
    """CPOA's PostgresStore with claim_due and record timed."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.claims: list[tuple[float, int]] = []
        self.finishes: list[float] = []
        self.completing: list[float] = []  # the finishes that complete a workflow

    def claim_due(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        leases = super().claim_due(*args, **kwargs)
        self.claims.append((time.perf_counter() - started, len(leases)))
        return leases

    def record(self, lease, outcome, *args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return super().record(lease, outcome, *args, **kwargs)
        finally:
            took = time.perf_counter() - started
            self.finishes.append(took)
            if outcome.dest == "completed":
                self.completing.append(took)


class TimedEngine(Engine):
    """Engine whose step() (one step action) is timed; stops its worker after ``stop_after``."""

    def __init__(self, *args, stop_after: int = 0, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.runs: list[float] = []
        self.last_end = 0.0
        self.stop_after = stop_after
        self.worker: Worker | None = None

    def step(self, lease, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        result = super().step(lease, **kwargs)
        self.last_end = time.perf_counter()
        self.runs.append(self.last_end - started)
        if self.stop_after and len(self.runs) >= self.stop_after and self.worker is not None:
            self.worker.stop()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-dsn", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--client", choices=("instant", "http"), default="instant")
    parser.add_argument("--agent-url", default="http://127.0.0.1:9")
    parser.add_argument("--agent-pid", type=int, default=0)
    parser.add_argument("--poll-s", type=float, default=0.05)
    parser.add_argument("--stop-after", type=int, default=0,
                        help="stop after this many step actions (and do not drain)")
    parser.add_argument("--max-seconds", type=float, default=0.0,
                        help="stop after this long even if workflows are left")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    common.install_counting()
    dbname = common.dbname_of(args.dsn)
    settings = settings_module.from_env(common.agent_env(args.agent_url, args.poll_s))
    pool = args.slots + 3  # slots + claim loop + outbox thread + spare
    store = TimedStore(args.dsn, min_size=pool, max_size=pool)
    client = common.InstantClient() if args.client == "instant" else None
    engine = TimedEngine(store, settings, client=client, stop_after=args.stop_after)
    worker = Worker(engine, concurrency=args.slots, until_idle=not args.stop_after)
    engine.worker = worker
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        first_event = conn.execute("SELECT coalesce(max(event_id), 0) FROM workflow_events"
                                   ).fetchone()[0]
    common.wait_no_backends_except(args.admin_dsn, dbname, pool)
    server_before = common.server_snapshot(args.admin_dsn, dbname)
    counts_before = common.COUNTERS.snapshot()
    pg_pids = common.postgres_pids(args.admin_dsn, dbname)  # the pool's sessions: all opened
    pg_cpu_before = common.pids_cpu_s(pg_pids)
    agent_cpu_before = common.process_cpu_s(args.agent_pid) if args.agent_pid else 0.0
    cpu_before = time.process_time()
    rss_before = common.rss_mb()
    started = time.perf_counter()
    if args.max_seconds:
        timer = threading.Timer(args.max_seconds, worker.stop)
        timer.daemon = True
        timer.start()
    worker.run()
    wall = time.perf_counter() - started
    # Until the last step action returned: Worker.run() itself takes up to a second more to
    # stop its LISTEN thread, which is not throughput.
    elapsed = (engine.last_end - started) if engine.last_end else wall
    cpu = time.process_time() - cpu_before
    pg_cpu = common.pids_cpu_s(pg_pids) - pg_cpu_before
    agent_cpu = common.process_cpu_s(args.agent_pid) - agent_cpu_before if args.agent_pid else None
    counts = {k: v - counts_before[k] for k, v in common.COUNTERS.snapshot().items()}
    rss_after, rss_peak = common.rss_mb(), common.peak_rss_mb()
    store.close()
    common.wait_no_backends(args.admin_dsn, dbname)
    server = common.server_delta(args.admin_dsn, server_before,
                                 common.server_snapshot(args.admin_dsn, dbname))
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        transitions = conn.execute(
            "SELECT count(*) FROM workflow_events WHERE event_id > %s AND trigger <> 'start'",
            (first_event,)).fetchone()[0]
        completed = conn.execute(
            "SELECT count(*) FROM workflow_events WHERE event_id > %s AND to_state = 'completed'",
            (first_event,)).fetchone()[0]
        states = dict(conn.execute(
            "SELECT state, count(*) FROM workflow_instances GROUP BY state").fetchall())
    runs = engine.runs
    claim_times = [t for t, _ in store.claims]
    claimed = sum(n for _, n in store.claims)
    per = max(transitions, 1)
    common.emit({
        "slots": args.slots, "client": args.client, "transitions": transitions,
        "step_actions": len(runs), "seconds": round(elapsed, 3), "wall_seconds": round(wall, 3),
        "transitions_per_s": round(transitions / elapsed, 1),
        "completed_workflows": completed,
        # A podcast workflow is six transitions; the staggered queue completes one workflow
        # every six transitions in steady state.
        "workflows_per_s": round(transitions / 6 / elapsed, 1),
        "run_ms_p50": common.ms(common.percentile(runs, 50)),
        "run_ms_p99": common.ms(common.percentile(runs, 99)),
        "claim_ms_p50": common.ms(common.percentile(claim_times, 50)),
        "claim_ms_p99": common.ms(common.percentile(claim_times, 99)),
        "finish_ms_p50": common.ms(common.percentile(store.finishes, 50)),
        "finish_ms_p99": common.ms(common.percentile(store.finishes, 99)),
        "completing_finish_ms_p50": common.ms(common.percentile(store.completing, 50)),
        "completing_finish_ms_p99": common.ms(common.percentile(store.completing, 99)),
        "claims": len(claim_times), "claimed": claimed,
        "empty_claims": sum(1 for _, n in store.claims if n == 0),
        "round_trips_per_transition": round(counts["round_trips"] / per, 2),
        "statements_per_transition": round(counts["statements"] / per, 2),
        "commits_per_transition": round(server["xact_commit"] / per, 2),
        "rollbacks": server["xact_rollback"],
        "tuples_written_per_transition": round(
            (server["tup_inserted"] + server["tup_updated"] + server["tup_deleted"]) / per, 2),
        "wal_bytes_per_transition": round(server["wal_bytes"] / per),
        "wal_full_page_images_per_transition": round(server["wal_fpi"] / per, 2),
        "checkpoints_during_run": server["checkpoints"],
        "worker_cpu_ms_per_transition": round(cpu * 1000 / per, 3),
        "worker_cpu_share": round(cpu / elapsed, 2),
        "postgres_cpu_ms_per_transition": round(pg_cpu * 1000 / per, 3),
        "agent_cpu_ms_per_transition": (round(agent_cpu * 1000 / per, 3)
                                        if agent_cpu is not None else None),
        "rss_mb_start": rss_before, "rss_mb": rss_after, "rss_mb_peak": rss_peak,
        "drained": set(states) <= {"completed"}, "states": states, "pid": os.getpid(),
    })


if __name__ == "__main__":
    threading.current_thread().name = "bench-main"
    main()
