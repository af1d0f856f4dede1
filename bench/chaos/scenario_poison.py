"""Scenario 9, poison workflow: one workflow's step kills its worker every time it runs (every
worker's fault hook SIGKILLs the process before that step's agent call), while other workflows
run on the same workers. The harness restarts each dead worker at once. The poison workflow
must be quarantined (``failed``, reason "quarantined…") after CPOA_MAX_RECOVERY_ATTEMPTS
recoveries, and every other workflow must complete. Default lease TTL and sweep settings (a
dead worker's leases die with its session); only CPOA_MAX_RECOVERY_ATTEMPTS is lowered, to 3,
and the figures list every non-default setting.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import psycopg

from bench.chaos import agents, inflight, worker_proc
from bench.chaos.common import Context, non_default_settings
from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.testing.agent import agent_env

POISON_STATE = "scripting"
MAX_RECOVERIES = 3
WORKERS = 2
HEALTHY = {False: 30, True: 6}
DEADLINE_S = {False: 120.0, True: 60.0}
WATCH_S = 0.05
"""How often the supervisor looks at the workers and the workflows."""


def run(ctx: Context) -> dict[str, Any]:
    agent = agents.ChaosAgent(work_s=(0.1, 0.3))
    try:
        with ctx.database() as dsn:
            store = PostgresStore(dsn, min_size=0, max_size=2)
            try:
                engine = Engine(store, settings_module.from_env(agent_env(agent.url)))
                poison = str(engine.start_workflow("podcast", {"topic": "poison"}))
                healthy = [str(engine.start_workflow("podcast", {"topic": f"healthy {i}"}))
                           for i in range(HEALTHY[ctx.quick])]
                watched = _supervise(ctx, store, dsn, agent, poison, [poison, *healthy])
                figures = _figures(store, poison, healthy, watched)
                with psycopg.connect(dsn, autocommit=True) as db:
                    in_flight = inflight.excused(db, watched["held"])
                work = agents.duplicate_work(agent, [
                    (w, "podcast", store.get_workflow(w).context) for w in healthy],
                    in_flight=in_flight)
            finally:
                store.close()
    finally:
        agent.close()
    ok = (figures["poison_quarantined"] and figures["healthy_completed"] == len(healthy)
          and figures["crashes"] == MAX_RECOVERIES + 1 and work["duplicate_work"] == 0)
    return {"ok": ok, "max_recovery_attempts": MAX_RECOVERIES,
            "non_default_settings": watched["settings"],
            "workers": WORKERS, **figures, "healthy_duplicate_work": work["duplicate_work"]}


def _supervise(ctx: Context, store: PostgresStore, dsn: str, agent: agents.ChaosAgent,
               poison: str, ids: list[str]) -> dict[str, Any]:
    """Runs the workers, restarting each one that dies, until every workflow is terminal."""
    env = worker_proc.environment(dsn, agent.url, CPOA_MAX_RECOVERY_ATTEMPTS=str(MAX_RECOVERIES))
    held_dir = ctx.scratch / "held"
    held_dir.mkdir(exist_ok=True)
    args = ["--target", poison, "--crash-at", f"before_call:{POISON_STATE}:every",
            "--held-dir", str(held_dir)]
    crashes, restarts, held = [], 0, []
    seen_recoveries: dict[tuple[str, str], int] = collections.defaultdict(int)
    deadline = time.monotonic() + DEADLINE_S[ctx.quick]
    with worker_proc.processes(ctx.scratch) as procs, psycopg.connect(dsn, autocommit=True) as db:
        workers = [procs.chaos_worker(env, *args) for _ in range(WORKERS)]
        last: dict[int, list[inflight.Held]] = {}
        while time.monotonic() < deadline:
            for i, proc in enumerate(workers):
                if proc.poll() is None:  # what it holds, read while it runs (after its death,
                    last[proc.pid] = inflight.held(db, proc.pid)  # a sweep may come first)
                    continue
                held.append(last.get(proc.pid, []) + inflight.held(db, proc.pid)
                            + worker_proc.read_held(held_dir, proc.pid))
                crashes.append((time.monotonic(), proc.returncode,
                                worker_proc.CRASH_MARK in procs.log(proc)))
                workers[i] = procs.chaos_worker(env, *args)
                restarts += 1
            rows = [store.get_workflow(w) for w in ids]
            for row in rows:
                key = (str(row.workflow_id), row.state)
                seen_recoveries[key] = max(seen_recoveries[key], row.recovery_attempts)
            if all(row.is_terminal for row in rows):
                break
            time.sleep(WATCH_S)
        stopped = [procs.stop(proc) for proc in workers]
    return {"crashes": crashes, "restarts": restarts, "recoveries": seen_recoveries,
            "held": held,
            "clean_exits": stopped.count(0), "settings": non_default_settings(env)}


def _figures(store: PostgresStore, poison: str, healthy: list[str],
             watched: dict[str, Any]) -> dict[str, Any]:
    workflow = store.get_workflow(poison)
    history = store.get_history(poison)
    entered = next((h["at"] for h in history if h["to_state"] == POISON_STATE), None)
    quarantined = next((h["at"] for h in history if h["to_state"] == "failed"), None)
    rows = [store.get_workflow(w) for w in healthy]
    states = [row.state for row in rows]
    collateral = {k: v for k, v in watched["recoveries"].items() if k[0] != poison and v}
    return {
        "poison_state": workflow.state, "poison_error": workflow.error_message,
        "poison_quarantined": (workflow.state == "failed"
                               and workflow.failed_from_state == POISON_STATE
                               and "quarantined" in (workflow.error_message or "")),
        "poison_recovery_attempts": workflow.recovery_attempts,
        "crashes": sum(1 for _, code, marked in watched["crashes"] if code == -9 and marked),
        "other_worker_exits": sum(1 for _, code, marked in watched["crashes"]
                                  if not (code == -9 and marked)),
        "quarantine_s_from_entering_state": (round((quarantined - entered).total_seconds(), 2)
                                             if entered and quarantined else None),
        "healthy_completed": states.count("completed"),
        "healthy_states": dict(collections.Counter(states)),
        "healthy_recoveries_observed": sum(collateral.values()),
        "healthy_failures": [f"{row.workflow_id}: {row.error_message}" for row in rows
                             if row.state != "completed"][:5],
        "workers_stopped_cleanly": watched["clean_exits"],
    }
