"""Scenario 2, kill at every boundary: a worker SIGKILLs itself at one boundary of one step of one
workflow; a fresh `cpoa worker` takes over after the lease expires; the workflow must complete
with each step's work done once, each transition once in the history and each UI event
delivered once.

A dry run of each kind records how often each boundary (``FAULT_POINTS``) is reached in each
working state (a polled step passes each boundary twice: once for the submit, once for the poll
that brings the result; a fan-out step once per item and request). The full version kills at
every one of those occurrences; the quick one at a few.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import threading
import time
from typing import Any

from bench.chaos import agents, worker_proc
from bench.chaos.common import Context
from cpoa import machine
from cpoa import settings as settings_module
from cpoa.engine import FAULT_POINTS, Engine
from cpoa.store import PostgresStore
from cpoa.worker import Worker
from tests.fix_agents import agent_env

PARAMS = {"podcast": {"topic": "tides"}, "snippets": {"query": "ocean", "limit": 2}}
LEASE_S = "1"
SWEEP_S = "0.2"
PARALLEL = 8
"""Cases run at once, each in its own database."""
CASE_TIMEOUT_S = 60.0
"""Longest one case may take (a UI event held by the killed worker waits OUTBOX_LOCK_S)."""
UI_STALL_S = 10.0
"""A UI event that took longer than this from commit to ASF waited for a dead worker's
outbox lock (OUTBOX_LOCK_S), not for the lease."""
QUICK_CASES = [("podcast", "synthesizing", None), ("snippets", "crafting", 2)]
"""(kind, state, occurrence) run at each boundary in the quick version; None: the last one,
the action whose result makes the transition."""


def run(ctx: Context) -> dict[str, Any]:
    agent = agents.ChaosAgent()
    try:
        reached = {kind: _dry_run(ctx, agent, kind) for kind in PARAMS}
        cases = _cases(reached, ctx.quick)
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            outcomes = list(pool.map(lambda case: _case(ctx, agent, *case), cases))
    finally:
        agent.close()
    table: dict[str, str] = {}
    by_point: dict[str, list[bool]] = collections.defaultdict(list)
    for (kind, state, point, _), outcome in zip(cases, outcomes):
        by_point[f"{kind}:{state}:{point}"].append(outcome["ok"])
    for key, oks in by_point.items():
        table[key] = f"{sum(oks)}/{len(oks)}"
    failures = [o for o in outcomes if not o["ok"]]
    seconds = [o["seconds"] for o in outcomes]
    return {
        "ok": not failures and bool(outcomes),
        "cases": len(outcomes), "cases_ok": len(outcomes) - len(failures),
        "not_reached": sum(1 for o in outcomes if not o["crashed"]),
        "duplicate_work": sum(o.get("duplicate_work", 0) for o in outcomes),
        "history_wrong": sum(1 for o in outcomes if not o.get("history_ok")),
        "ui_events_lost": sum(o.get("ui_events_lost", 0) for o in outcomes),
        "ui_events_reordered": sum(o.get("ui_events_reordered", 0) for o in outcomes),
        "ui_duplicates_dropped": sum(o.get("ui_duplicates_dropped", 0) for o in outcomes),
        "asf_notify_redeliveries": sum(o.get("asf_notify_redeliveries", 0) for o in outcomes),
        "recovery_s_p50": _median([o["recovery_s"] for o in outcomes if o.get("recovery_s")]),
        "recovery_s_max": max((o.get("recovery_s") or 0 for o in outcomes), default=None),
        "case_s_max": max(seconds, default=None), "lease_ttl_s": float(LEASE_S),
        "ui_delay_max_s": max((o.get("ui_delay_max_s", 0) for o in outcomes), default=None),
        "cases_ui_stalled": sum(1 for o in outcomes if o.get("ui_delay_max_s", 0) > UI_STALL_S),
        "occurrences": {kind: {f"{s}:{p}": n for (s, p), n in counts.items()}
                        for kind, counts in reached.items()},
        "table": table, "failures": failures[:5],
    }


def _cases(reached: dict[str, dict[tuple[str, str], int]],
           quick: bool) -> list[tuple[str, str, str, int]]:
    """(kind, state, point, occurrence) to run."""
    if quick:
        cases = []
        for kind, state, nth in QUICK_CASES:
            for point in FAULT_POINTS:
                last = reached[kind][(state, point)]
                cases.append((kind, state, point, min(nth or last, last)))
        return cases
    return [(kind, state, point, n)
            for kind in PARAMS for state in machine.working_states(kind)
            for point in FAULT_POINTS for n in range(1, reached[kind][(state, point)] + 1)]


def _dry_run(ctx: Context, agent: agents.ChaosAgent, kind: str) -> dict[tuple[str, str], int]:
    """Runs one workflow without faults; counts each (state, point) its steps reached."""
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    with ctx.database() as dsn:
        store = PostgresStore(dsn, min_size=0, max_size=4)
        try:
            engine = Engine(store, _settings(agent),
                            fault_hook=lambda point, wf: seen.update([(wf.state, point)]))
            workflow_id = engine.start_workflow(kind, PARAMS[kind], client_id="chaos")
            worker = Worker(engine, concurrency=2, until_idle=True)
            thread = threading.Thread(target=worker.run, daemon=True)
            thread.start()
            thread.join(timeout=CASE_TIMEOUT_S)
            worker.stop()
            thread.join(timeout=CASE_TIMEOUT_S)
            state = store.get_workflow(workflow_id).state
        finally:
            store.close()
    if state != "completed":
        raise RuntimeError(f"dry run of {kind} ended {state}")
    return {(state, point): seen[(state, point)]
            for state in machine.working_states(kind) for point in FAULT_POINTS}


def _settings(agent: agents.ChaosAgent) -> settings_module.Settings:
    return settings_module.from_env(agent_env(agent.url, CPOA_LEASE_TTL_SECONDS=LEASE_S,
                                              CPOA_SWEEP_INTERVAL_SECONDS=SWEEP_S))


def _case(ctx: Context, agent: agents.ChaosAgent, kind: str, state: str, point: str,
          nth: int) -> dict[str, Any]:
    started = time.monotonic()
    name = f"{kind}:{state}:{point}:{nth}"
    result: dict[str, Any] = {"case": name, "ok": False, "crashed": False}
    folder = ctx.scratch / name.replace(":", "-")
    folder.mkdir()
    with ctx.database() as dsn:
        store = PostgresStore(dsn, min_size=0, max_size=2)
        try:
            workflow_id = str(Engine(store, _settings(agent)).start_workflow(
                kind, PARAMS[kind], client_id="chaos"))
            env = worker_proc.environment(dsn, agent.url, CPOA_LEASE_TTL_SECONDS=LEASE_S,
                                          CPOA_SWEEP_INTERVAL_SECONDS=SWEEP_S)
            with worker_proc.processes(folder) as procs:
                crasher = procs.chaos_worker(env, "--target", workflow_id, "--crash-at",
                                             f"{point}:{state}:{nth}", "--until-idle")
                code = crasher.wait(timeout=CASE_TIMEOUT_S)
                crashed_at = time.monotonic()
                result["crashed"] = code == -9 and worker_proc.CRASH_MARK in procs.log(crasher)
                recoverer = procs.cli_worker(env, "--until-idle", "--concurrency", "2")
                result["recovery_exit"] = recoverer.wait(timeout=CASE_TIMEOUT_S)
                result["recovery_s"] = round(time.monotonic() - crashed_at, 2)
            result.update(_check(store, agent, kind, workflow_id))
        except Exception as exc:  # noqa: BLE001 -- a case that cannot finish fails, alone
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            store.close()
    result["ok"] = bool(result["crashed"] and result.get("checks_ok")
                        and result.get("recovery_exit") == 0)
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def _check(store: PostgresStore, agent: agents.ChaosAgent, kind: str,
           workflow_id: str) -> dict[str, Any]:
    workflow = store.get_workflow(workflow_id)
    history = [(h["from_state"], h["to_state"]) for h in store.get_history(workflow_id)]
    chain = [None, *machine.working_states(kind), "completed"]
    work = agents.duplicate_work(agent, [(workflow_id, kind, workflow.context)])
    events = agents.ui_event_audit(list(agent.ui_events), {workflow_id: [h[1] for h in history]})
    delays = [(e["delivered_at"] - e["created_at"]).total_seconds()
              for e in store.get_ui_events(workflow_id) if e["delivered_at"]]
    found = {"state": workflow.state, "history_ok": history == list(itertools.pairwise(chain)),
             "ui_delay_max_s": round(max(delays, default=0.0), 2), **work, **events}
    found["checks_ok"] = (workflow.state == "completed" and found["history_ok"]
                          and work["duplicate_work"] == 0 and work["keys_never_worked"] == 0
                          and events["ui_events_lost"] == 0
                          and events["ui_events_reordered"] == 0
                          and events["ui_events_unexpected"] == 0)
    return found


def _median(values: list[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None
