"""Scenario 2, kill at every boundary: two workers run one workflow, and the one that reaches a
given boundary of one step SIGKILLs itself there; the other one, running all along with free
slots, takes the workflow over (its lease died with the killed worker's session) within about
``defaults.RECOVERY_CHECK_S``. The workflow must complete with each step's work done once (every
submit counted; a key resubmitted only when the kill interrupted its request), each transition
once in the history and each UI event delivered once. Default lease TTL and sweep settings; the
agents' polling interval is the test suite's short one (listed in the figures).

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

import psycopg

from bench.chaos import agents, inflight, worker_proc
from bench.chaos.common import Context, non_default_settings, percentile
from cpoa import defaults, machine
from cpoa import settings as settings_module
from cpoa.engine import FAULT_POINTS, Engine
from cpoa.store import PostgresStore
from cpoa.worker import Worker
from cpoa.testing.agent import ASF_UI
from cpoa.testing.agent import agent_env

PARAMS = {"podcast": {"topic": "tides"}, "snippets": {"query": "ocean", "limit": 2}}
PARALLEL = 4
"""Cases run at once, each in its own database (two worker processes each)."""
RECOVERY_SLACK_S = 0.5
"""Allowed on top of RECOVERY_CHECK_S from the kill to the survivor's next agent request or
transition of the workflow (the requeue, the claim, the request, a busy machine)."""
START_S = 30.0
"""How long both workers may take to start (their liveness locks held) before the workflow
is started."""
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
    recoveries = [o["recovery_s"] for o in outcomes if o.get("recovery_s") is not None]
    return {
        "ok": not failures and bool(outcomes)
              and all(r <= defaults.RECOVERY_CHECK_S + RECOVERY_SLACK_S for r in recoveries),
        "cases": len(outcomes), "cases_ok": len(outcomes) - len(failures),
        "not_reached": sum(1 for o in outcomes if not o["crashed"]),
        "duplicate_work": sum(o.get("duplicate_work", 0) for o in outcomes),
        "history_wrong": sum(1 for o in outcomes if not o.get("history_ok")),
        "ui_events_lost": sum(o.get("ui_events_lost", 0) for o in outcomes),
        "ui_events_reordered": sum(o.get("ui_events_reordered", 0) for o in outcomes),
        "ui_duplicates_dropped": sum(o.get("ui_duplicates_dropped", 0) for o in outcomes),
        "asf_notify_redeliveries": sum(o.get("asf_notify_redeliveries", 0) for o in outcomes),
        "recovery_s_p50": percentile(recoveries, 50), "recovery_s_p99": percentile(recoveries, 99),
        "recovery_s_max": percentile(recoveries, 100),
        "recovery_bound_s": defaults.RECOVERY_CHECK_S + RECOVERY_SLACK_S,
        "recovery_over_bound": sum(1 for r in recoveries
                                   if r > defaults.RECOVERY_CHECK_S + RECOVERY_SLACK_S),
        "keys_in_flight_at_deaths": sum(o.get("keys_in_flight_at_deaths", 0) for o in outcomes),
        "resubmits_excused": sum(o.get("resubmits_excused", 0) for o in outcomes),
        "case_s_max": max(seconds, default=None), "lease_ttl_s": defaults.LEASE_TTL_S,
        "sweep_interval_s": defaults.SWEEP_INTERVAL_S,
        "non_default_settings": non_default_settings(_env("", agent.url)),
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
            for kind in PARAMS for state in machine.straight_path(kind)
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
            for state in machine.straight_path(kind) for point in FAULT_POINTS}


def _settings(agent: agents.ChaosAgent) -> settings_module.Settings:
    return settings_module.from_env(agent_env(agent.url))


def _env(dsn: str, agent_url: str) -> dict[str, str]:
    """A worker's environment: default lease and sweep settings."""
    return worker_proc.environment(dsn, agent_url)


def _case(ctx: Context, agent: agents.ChaosAgent, kind: str, state: str, point: str,
          nth: int) -> dict[str, Any]:
    started = time.monotonic()
    name = f"{kind}:{state}:{point}:{nth}"
    result: dict[str, Any] = {"case": name, "ok": False, "crashed": False}
    folder = ctx.scratch / name.replace(":", "-")
    folder.mkdir()
    with ctx.database() as dsn, psycopg.connect(dsn, autocommit=True) as db:
        store = PostgresStore(dsn, min_size=0, max_size=2)
        try:
            with worker_proc.processes(folder) as procs:
                workflow_id, crash = _crash_and_recover(procs, db, store, agent, dsn, kind,
                                                        f"{point}:{state}:{nth}")
                result.update(crash)
            result.update(_check(store, db, agent, kind, workflow_id, crash["held_rows"]))
            result["recovery_s"] = _recovery_s(agent, store, workflow_id, crash)
        except Exception as exc:  # noqa: BLE001 -- a case that cannot finish fails, alone
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            store.close()
    result.pop("held_rows", None)
    result["ok"] = bool(result["crashed"] and result.get("checks_ok")
                        and result.get("recovery_exit") == 0)
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def _crash_and_recover(procs: worker_proc.Processes, db: psycopg.Connection,
                       store: PostgresStore, agent: agents.ChaosAgent, dsn: str, kind: str,
                       spec: str) -> tuple[str, dict[str, Any]]:
    """Starts two crash-hooked workers sharing one occurrence count, then the workflow; waits
    for one to kill itself at ``spec`` and for the other to finish the workflow."""
    env = _env(dsn, agent.url)
    target = str(Engine(store, _settings(agent)).start_workflow(kind, PARAMS[kind],
                                                                client_id="chaos"))
    args = ["--target", target, "--crash-at", spec, "--until-idle", "--concurrency", "2",
            "--count-file", str(procs.folder / "occurrences")]
    with db.transaction():  # the row lock keeps the workflow from both workers until both run
        db.execute("SELECT 1 FROM workflow_instances WHERE workflow_id = %s FOR UPDATE",
                   (target,))
        workers = [procs.chaos_worker(env, *args) for _ in range(2)]
        if not worker_proc.wait_until(lambda: inflight.live_workers(db) == 2,
                                      time.monotonic() + START_S):
            raise RuntimeError("the two workers did not start")
    deadline = time.monotonic() + CASE_TIMEOUT_S
    last: dict[int, list[inflight.Held]] = {}

    def dead() -> list[Any]:
        for w in workers:  # what each holds, read while it runs (a sweep may come first)
            if w.poll() is None:
                last[w.pid] = inflight.held(db, w.pid)
        return [w for w in workers if w.poll() is not None]
    ended = worker_proc.wait_until(dead, deadline, interval=0.01)
    crasher = next((w for w in ended if w.returncode == -9), None)
    found: dict[str, Any] = {"crashed": False, "held_rows": []}
    if crasher is not None:
        found["crash_at"] = worker_proc.crash_times(procs.log(crasher))
        found["crashed"] = found["crash_at"] is not None
        found["held_rows"] = last.get(crasher.pid, []) + inflight.held(db, crasher.pid)
    survivor = next(w for w in workers if w is not crasher)
    found["recovery_exit"] = survivor.wait(timeout=max(1.0, deadline - time.monotonic()))
    return target, found


def _recovery_s(agent: agents.ChaosAgent, store: PostgresStore, workflow_id: str,
                crash: dict[str, Any]) -> float | None:
    """Seconds from the kill to the workflow's next agent request or transition, whichever
    came first (None when the kill ended nothing that needed recovering)."""
    if not crash.get("crash_at"):
        return None
    monotonic, wall = crash["crash_at"]
    with agent.lock:
        requests = [r["at"] - monotonic for r in agent.requests
                    if r["headers"].get("x-workflow-id") == workflow_id and r["at"] > monotonic
                    and r["path"] != ASF_UI]
    moved = [h["at"].timestamp() - wall for h in store.get_history(workflow_id)
             if h["at"].timestamp() > wall]
    waits = requests + moved
    return round(min(waits), 3) if waits else None


def _check(store: PostgresStore, db: psycopg.Connection, agent: agents.ChaosAgent, kind: str,
           workflow_id: str, held: list[inflight.Held]) -> dict[str, Any]:
    workflow = store.get_workflow(workflow_id)
    history = [(h["from_state"], h["to_state"]) for h in store.get_history(workflow_id)]
    chain = [None, *machine.straight_path(kind), "completed"]
    in_flight = inflight.excused(db, [held])
    work = agents.duplicate_work(agent, [(workflow_id, kind, workflow.context)],
                                 in_flight=in_flight)
    events = agents.ui_event_audit(list(agent.ui_events), {workflow_id: [h[1] for h in history]})
    delays = [(e["delivered_at"] - e["created_at"]).total_seconds()
              for e in store.get_ui_events(workflow_id) if e["delivered_at"]]
    found = {"state": workflow.state, "history_ok": history == list(itertools.pairwise(chain)),
             "ui_delay_max_s": round(max(delays, default=0.0), 2), **work, **events,
             **inflight.summary(in_flight)}
    found["checks_ok"] = (workflow.state == "completed" and found["history_ok"]
                          and work["duplicate_work"] == 0 and work["keys_never_worked"] == 0
                          and events["ui_events_lost"] == 0
                          and events["ui_events_reordered"] == 0
                          and events["ui_events_unexpected"] == 0)
    return found
