"""Workflows waiting on a saturated, capped agent (issue 14): throughput at the cap, the cost of
waiting, and whether claiming and CPU stay flat with the waiters present.

    python -m bench.run --only waiters            # 10 000 waiters, 4-7 minutes on 2 cores
    python -m bench.run --only waiters --quick    # 500 waiters, under a minute

``run()`` is called by bench/run.py; ``python -m bench.scenarios.waiters workload …`` is its
measured worker (a subprocess, so that its CPU is its own). Every CPOA process runs with the
default settings except ``CPOA_VFA_MAX_IN_FLIGHT`` (only the agents' URLs are set besides).
The agent is ``bench.scenarios.agent --mode capped`` (a ScriptedAgent in its own process, real
HTTP on loopback): a VFA task takes exactly ``work_s`` from its submit and says so in
``Retry-After`` (on its 202 and on every PENDING poll), which CPOA honours by default, so the
poll comes when the task is done and the polling schedule does not set the pace.

1. **Throughput at the cap.** ``waiters`` podcast workflows are bulk-inserted due in
   ``synthesizing`` (``backlog.insert_due``); one ``cpoa worker`` claims them all: ``cap``
   take a slot and submit, the rest join VFA's queue (timed: enqueue). Over a window in
   steady state, VFA tasks finished per second against ``cap / work_s``: counted (finishes in
   the window ÷ its length, ± cap at its edges) and by Little's law (mean tasks unfinished at
   the agent ÷ ``work_s``, exact for tasks of a fixed length: the judged figure). The hand-off:
   the k-th finish against the (cap + k)-th submit (never negative while the cap holds).
2. **Idle-waiting worker.** The agent then holds every new VFA task (Retry-After 600 s: the
   windows measure waiting, not the polling of the ``cap`` tasks in flight), the worker stops,
   ``VACUUM ANALYZE`` (autovacuum is off on this server), and ``bench.scenarios.idle`` (a
   counting ``cpoa worker --concurrency 4``) measures statements/s, commits/s and CPU while
   every workflow waits; the same on an empty database is the reference.
3. **Flat with waiters.** ``workload`` snippets workflows (TDA, SCA, IGA: no VFA step, so the
   cap does not change their work) started and drained by a 4-slot worker with the instant
   in-process client: ``claim_due`` p50/p99 and worker CPU per transition with the waiters
   present, against the same on a database with neither cap nor waiters (same run; in the
   order reference, waiting, waiting, reference, means compared, so that drift cancels). Every
   waiter's row version is compared before the idle window and after the workload: a waiter
   claimed even once shows.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import requests

from bench.scenarios import backlog, common
from bench.scenarios.engine import TimedEngine

SIZES = {
    "full": {"waiters": 10_000, "cap": 4, "work_s": (0.5, 2.0), "window_s": (30.0, 30.0),
             "workload": 2000, "idle_settle": 11.0, "idle_window": 20.0},
    "quick": {"waiters": 500, "cap": 4, "work_s": (2.0,), "window_s": (16.0,),
              "workload": 200, "idle_settle": 2.0, "idle_window": 5.0},
}
"""Per variant: workflows queued on VFA, its cap, a task's time at the agent (two runs: the
fixed cost of a hand-off weighs 4 times more on the shorter), the throughput window of each (the
quick one 16 s, 8 task lengths: over 8 s one stall of the worker process under the suite's load,
a poll 0.85 s late, took the ratio to 0.885),
snippets workflows in each workload run, the idle measurement's settle and window."""

STEADY_AFTER_S = 0.2
"""A throughput window starts this long after the last task of another length finished."""

UNQUEUED = """SELECT count(*) FROM workflow_instances w WHERE state = 'synthesizing'
              AND waiting_agent IS NULL
              AND NOT EXISTS (SELECT 1 FROM agent_slots s WHERE s.workflow_id = w.workflow_id)"""
"""Workflows in synthesizing that neither hold a VFA slot nor wait for one (not claimed yet)."""


# -- the harness side ------------------------------------------------------------------------

def worker_env(dsn: str, agent_url: str, cap: int | None) -> dict[str, str]:
    """A CPOA process's whole environment: this database, every agent at ``agent_url``, the
    VFA cap if given, and every other setting at its default (nothing else ``CPOA_*``)."""
    from cpoa.testing.cli import cli_env
    env = cli_env(dsn, agent_url)
    for name in [k for k in env if k.startswith("CPOA_") and not k.endswith("_URL")]:
        del env[name]  # the test suite's fast polling, short backoff and lease
    if cap is not None:
        env["CPOA_VFA_MAX_IN_FLIGHT"] = str(cap)
    return env


def non_default(env: dict[str, str]) -> list[str]:
    """The CPOA settings ``env`` sets, other than URLs."""
    return sorted(k for k in env if k.startswith("CPOA_") and not k.endswith("_URL"))


def run(admin_dsn: str, *, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """The three measurements (module docstring); returns their figures."""
    size = SIZES["quick" if quick else "full"]
    agent = common.Agent("capped", "--work-s", str(size["work_s"][0]))
    try:
        with common.fresh_db(admin_dsn, "waiters", schema=True) as dsn:
            capped_env = worker_env(dsn, agent.url, size["cap"])
            result = {**size, "quick": quick, "non_default_settings": non_default(capped_env)}
            result.update(_saturate(admin_dsn, dsn, agent.url, capped_env, size, log))
            before = _waiter_versions(dsn)
            log(f"waiters: idle worker while {len(before)} workflows wait, "
                f"{size['idle_settle']:g} s settle + {size['idle_window']:g} s window")
            requests_before = _agent_state(agent.url)["requests"]
            result["idle_waiting"] = _idle(admin_dsn, capped_env, size)
            result["idle_agent_requests"] = _agent_state(agent.url)["requests"] - requests_before
            with common.fresh_db(admin_dsn, "waitref", schema=True) as ref_dsn:
                ref_env = worker_env(ref_dsn, agent.url, None)
                log("waiters: the reference, an idle worker on an empty database, no cap")
                result["idle_reference"] = _idle(admin_dsn, ref_env, size)
                runs: dict[str, list[dict[str, Any]]] = {"reference": [], "capped": []}
                for name in ("reference", "capped", "capped", "reference"):  # drift cancels
                    log(f"waiters: {name} workload, {size['workload']} snippets workflows"
                        + (f", {len(before)} workflows waiting for VFA" if name == "capped"
                           else ", no cap, no waiters"))
                    runs[name].append(_workload(
                        admin_dsn, dsn if name == "capped" else ref_dsn,
                        capped_env if name == "capped" else ref_env, size["workload"]))
            result.update({f"{name}_runs": r for name, r in runs.items()})
            result.update({name: mean_run(r) for name, r in runs.items()})
            after = _waiter_versions(dsn)
            result["waiters_during_measurements"] = len(before)
            result["waiters_touched"] = sum(1 for w, v in before.items() if after.get(w) != v)
            result["slots_held_at_end"] = _scalar(dsn, "SELECT count(*) FROM agent_slots")
    finally:
        agent.close()
    return result


def _saturate(admin_dsn: str, dsn: str, agent_url: str, env: dict[str, str],
              size: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Part 1: queues ``waiters`` workflows on VFA, measures the throughput at the cap, then
    has the agent hold its tasks and stops the worker (everything waits)."""
    cap = size["cap"]
    backlog.insert_due(dsn, size["waiters"], backlog.sample_context(dsn), ["synthesizing"])
    backlog.vacuum_analyze(dsn)
    log(f"waiters: {size['waiters']} podcast workflows due in synthesizing; cpoa worker with "
        f"CPOA_VFA_MAX_IN_FLIGHT={cap}")
    worker = subprocess.Popen([sys.executable, "-m", "cpoa.cli", "worker"], cwd=common.REPO,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        started = time.monotonic()
        common.wait_for(lambda: _scalar(dsn, UNQUEUED) == 0, timeout=600, interval=0.2)
        enqueue_s = time.monotonic() - started
        queued = _scalar(dsn, "SELECT count(*) FROM workflow_instances "
                              "WHERE waiting_agent IS NOT NULL")
        windows = []
        for work_s, window_s in zip(size["work_s"], size["window_s"]):
            previous = _set_work(agent_url, work_s)  # the tasks submitted from now on
            log(f"waiters: {queued} queued after {enqueue_s:.1f} s; VFA tasks of {work_s:g} s, "
                f"a {window_s:g} s window")
            time.sleep(previous + STEADY_AFTER_S)  # the tasks of the other length are done
            windows.append((time.time(), time.time() + window_s, work_s))
            time.sleep(window_s)
        requests.post(agent_url + "/bench/hold", timeout=10).raise_for_status()
        common.wait_for(lambda: _held(agent_url) == cap, timeout=60)
        common.wait_for(lambda: _scalar(dsn, UNQUEUED) == 0 and _scalar(
            dsn, "SELECT count(*) FROM workflow_instances WHERE lease_owner IS NOT NULL") == 0,
            timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
    if worker.returncode != 0:
        raise RuntimeError(f"cpoa worker exited {worker.returncode}:\n{stderr[-3000:]}")
    common.wait_no_backends(admin_dsn, common.dbname_of(dsn))
    backlog.vacuum_analyze(dsn)
    tasks = _agent_state(agent_url)["tasks"]
    return {"enqueue_s": round(enqueue_s, 2), "queued": queued,
            "enqueued_per_s": round(queued / enqueue_s, 1),
            "max_unfinished_at_agent": most_unfinished(tasks), "vfa_tasks": len(tasks),
            "throughput": [throughput(tasks, start, end, cap, work_s)
                           for start, end, work_s in windows]}


def _set_work(agent_url: str, work_s: float) -> float:
    """Sets the agent's task time; returns the longest a task submitted before may still take."""
    before = max((t["done_at"] - t["submitted_at"] for t in _agent_state(agent_url)["tasks"]
                  if t["done_at"] is not None), default=0.0)
    requests.post(agent_url + "/bench/work", json={"work_s": work_s},
                  timeout=10).raise_for_status()
    return before


def throughput(tasks: list[dict[str, Any]], start: float, end: float, cap: int,
               work_s: float) -> dict[str, Any]:
    """VFA throughput over [start, end), where every task takes ``work_s``, from the agent's
    record of its tasks (module docstring, part 1); ``done_at`` None is a held task."""
    seconds = end - start
    finishes = sorted(t["done_at"] for t in tasks if t["done_at"] is not None)
    submits = sorted(t["submitted_at"] for t in tasks)
    counted = sum(1 for f in finishes if start <= f < end)
    busy = sum(max(0.0, min(end if t["done_at"] is None else t["done_at"], end)
                   - max(t["submitted_at"], start)) for t in tasks)
    little_per_s = busy / seconds / work_s
    target = cap / work_s
    # Submit number cap + k comes after finish number k as long as the cap holds.
    gaps = [submits[k + cap] - f for k, f in enumerate(finishes)
            if k + cap < len(submits) and start <= f < end]
    seen = [t["seen_at"] - t["done_at"] for t in tasks if t["done_at"] is not None
            and t["seen_at"] is not None and start <= t["done_at"] < end]
    return {
        "work_s": work_s, "window_s": round(seconds, 2), "tasks_finished_in_window": counted,
        "target_per_s": round(target, 3),
        "finished_per_s_counted": round(counted / seconds, 3),
        "finished_per_s": round(little_per_s, 3),
        "throughput_ratio": round(little_per_s / target, 4),
        "throughput_ratio_counted": round(counted / seconds / target, 4),
        "handoff_ms_p50": common.ms(common.percentile(gaps, 50), 1),
        "handoff_ms_p99": common.ms(common.percentile(gaps, 99), 1),
        "handoff_ms_min": common.ms(min(gaps) if gaps else None, 1),
        "poll_late_ms_p50": common.ms(common.percentile(seen, 50), 1),
        "poll_late_ms_p99": common.ms(common.percentile(seen, 99), 1),
    }


def most_unfinished(tasks: list[dict[str, Any]]) -> int:
    """The most tasks the agent had submitted and unfinished at once (a finish and a submit at
    the same instant count the finish first)."""
    edges = sorted([(t["submitted_at"], 1) for t in tasks]
                   + [(t["done_at"], -1) for t in tasks if t["done_at"] is not None])
    level = most = 0
    for _, step in edges:
        level += step
        most = max(most, level)
    return most


def _idle(admin_dsn: str, env: dict[str, str], size: dict[str, Any]) -> dict[str, Any]:
    return common.run_module("bench.scenarios.idle", "--admin-dsn", admin_dsn,
                             "--settle", str(size["idle_settle"]),
                             "--window", str(size["idle_window"]), env=env, inherit=False)


def _workload(admin_dsn: str, dsn: str, env: dict[str, str], n: int) -> dict[str, Any]:
    return common.run_module("bench.scenarios.waiters", "workload", "--admin-dsn", admin_dsn,
                             "--dsn", dsn, "-n", str(n), env=env, inherit=False)


def mean_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' figures averaged (numbers), or the first run's (anything else)."""
    return {k: (round(sum(r[k] for r in runs) / len(runs), 3)
                if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
            for k, v in runs[0].items()}


def _agent_state(agent_url: str) -> dict[str, Any]:
    return requests.get(agent_url + "/bench/vfa", timeout=30).json()


def _held(agent_url: str) -> int:
    return sum(1 for t in _agent_state(agent_url)["tasks"] if t["done_at"] is None)


def _scalar(dsn: str, query: str, params: tuple[Any, ...] | None = None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchone()[0]


def _waiter_versions(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute("SELECT workflow_id::text, version FROM workflow_instances "
                                 "WHERE waiting_agent IS NOT NULL").fetchall())


# -- judging and output (bench/run.py) -------------------------------------------------------

def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


FLAT_BOUND = 1.25
"""With the waiters present, claim p50 and worker CPU per transition at most this many times
the reference's (the same workload, same run, no cap and no waiters): "flat" on a shared
2-core machine, where two identical runs differ by up to about 10 %."""


def judge(w: dict[str, Any]) -> dict[str, Any]:
    """The scenario's JSON document: figures, ratios to the same-run reference, targets."""
    ref, cap = w["reference"], w["capped"]
    ratios = {"claim_p50": ratio(cap["claim_ms_p50"], ref["claim_ms_p50"]),
              "claim_p99": ratio(cap["claim_ms_p99"], ref["claim_ms_p99"]),
              "worker_cpu_per_transition": ratio(cap["worker_cpu_ms_per_transition"],
                                                 ref["worker_cpu_ms_per_transition"]),
              "postgres_cpu_per_transition": ratio(cap["postgres_cpu_ms_per_transition"],
                                                   ref["postgres_cpu_ms_per_transition"]),
              "transitions_per_s": ratio(cap["transitions_per_s"], ref["transitions_per_s"])}
    idle = w["idle_waiting"]
    targets = [
        _target(f"capped agent, tasks of {t['work_s']:g} s: tasks finished/s / (cap / task "
                f"time) = {t['finished_per_s']:.2f} / {t['target_per_s']:.2f}",
                t["throughput_ratio"], "0.95-1.05", 0.95 <= t["throughput_ratio"] <= 1.05)
        for t in w["throughput"]]
    targets += [
        _target("capped agent: most tasks unfinished at the agent", w["max_unfinished_at_agent"],
                f"<= {w['cap']}", w["max_unfinished_at_agent"] <= w["cap"]),
        _target(f"idle worker while {w['waiters_during_measurements']} workflows wait: "
                f"statements/s", idle["statements_per_s"], "<= 1", idle["statements_per_s"] <= 1),
        _target("waiters claimed or touched during the idle window and the workload",
                w["waiters_touched"], "= 0", w["waiters_touched"] == 0),
        _target("claim_due p50 with the waiters / without (same workload)", ratios["claim_p50"],
                f"<= {FLAT_BOUND}", ratios["claim_p50"] is not None
                and ratios["claim_p50"] <= FLAT_BOUND),
        _target("worker CPU per transition with the waiters / without",
                ratios["worker_cpu_per_transition"], f"<= {FLAT_BOUND}",
                ratios["worker_cpu_per_transition"] is not None
                and ratios["worker_cpu_per_transition"] <= FLAT_BOUND),
    ]
    return {"scenario": "waiters", **w, "ratios": ratios, "targets": targets}


def _target(name: str, value: Any, bound: str, ok: bool) -> dict[str, Any]:
    return {"target": name, "value": value, "bound": bound, "pass": bool(ok)}


def table_lines(w: dict[str, Any], fmt: Callable[[Any], str]) -> list[str]:
    """The scenario's Markdown table."""
    ref, cap, idle, idle_ref = (w["reference"], w["capped"], w["idle_waiting"],
                                w["idle_reference"])
    r = judge(w)["ratios"]
    settings = ", ".join(w["non_default_settings"]) or "none"
    return [
        (f"Waiters on a capped agent: {w['waiters']:,} podcast workflows queued for VFA, "
         f"CPOA_VFA_MAX_IN_FLIGHT={w['cap']}, VFA tasks of a fixed length (Retry-After tells "
         f"CPOA when they are done); every other setting at its default (non-default: "
         f"{settings}). Queue built by one cpoa worker: {w['queued']:,} waiting in "
         f"{fmt(w['enqueue_s'])} s ({fmt(w['enqueued_per_s'])}/s); most VFA tasks unfinished "
         f"at the agent at once: {w['max_unfinished_at_agent']} (cap {w['cap']})."), "",
        "| capped agent: VFA task time | " + " | ".join(
            f"{t['work_s']:g} s" for t in w["throughput"]) + " |",
        "|---|" + "---:|" * len(w["throughput"]),
        *(f"| {label} | " + " | ".join(get(t) for t in w["throughput"]) + " |"
          for label, get in (
              ("target: cap ÷ task time, tasks/s", lambda t: fmt(t["target_per_s"])),
              ("tasks finished/s (Little's law: mean unfinished ÷ task time)",
               lambda t: fmt(t["finished_per_s"])),
              ("**ratio** (target 0.95–1.05)", lambda t: f"{t['throughput_ratio']:.3f}"),
              ("finished in the window ÷ its length (± cap at the edges)",
               lambda t: f"{t['tasks_finished_in_window']} in {t['window_s']:g} s = "
                         f"{fmt(t['finished_per_s_counted'])}/s "
                         f"({t['throughput_ratio_counted']:.3f})"),
              ("task finished → next submit (hand-off) p50 / p99 / min ms",
               lambda t: f"{fmt(t['handoff_ms_p50'])} / {fmt(t['handoff_ms_p99'])} / "
                         f"{fmt(t['handoff_ms_min'])}"),
              ("of which task finished → CPOA's poll p50 / p99 ms",
               lambda t: f"{fmt(t['poll_late_ms_p50'])} / {fmt(t['poll_late_ms_p99'])}"))),
        "",
        f"| with {w['waiters_during_measurements']:,} waiting vs none (same run; workload: "
        f"mean of two runs each, in the order reference, waiting, waiting, reference) | "
        f"waiting | reference | ratio |", "|---|---:|---:|---:|",
        f"| idle worker: statements/s (target ≤ 1) | {fmt(idle['statements_per_s'])} | "
        f"{fmt(idle_ref['statements_per_s'])} | |",
        f"| idle worker: commits/s on the server | {fmt(idle['commits_per_s'])} | "
        f"{fmt(idle_ref['commits_per_s'])} | |",
        f"| idle worker: CPU % of a core | {fmt(idle['cpu_percent'])} | "
        f"{fmt(idle_ref['cpu_percent'])} | |",
        f"| agent requests during the idle window | {w['idle_agent_requests']} | | |",
        f"| workload: snippets workflows / transitions | {cap['workflows']} / "
        f"{cap['transitions']} | {ref['workflows']} / {ref['transitions']} | |",
        f"| workload: claim_due p50 ms | {fmt(cap['claim_ms_p50'])} | "
        f"{fmt(ref['claim_ms_p50'])} | {fmt(r['claim_p50'])} |",
        f"| workload: claim_due p99 ms | {fmt(cap['claim_ms_p99'])} | "
        f"{fmt(ref['claim_ms_p99'])} | {fmt(r['claim_p99'])} |",
        f"| workload: worker CPU ms / transition | {fmt(cap['worker_cpu_ms_per_transition'])} | "
        f"{fmt(ref['worker_cpu_ms_per_transition'])} | {fmt(r['worker_cpu_per_transition'])} |",
        f"| workload: PostgreSQL CPU ms / transition | "
        f"{fmt(cap['postgres_cpu_ms_per_transition'])} | "
        f"{fmt(ref['postgres_cpu_ms_per_transition'])} | "
        f"{fmt(r['postgres_cpu_per_transition'])} |",
        f"| workload: transitions/s | {fmt(cap['transitions_per_s'])} | "
        f"{fmt(ref['transitions_per_s'])} | {fmt(r['transitions_per_s'])} |",
        f"| waiters claimed or touched meanwhile (row version changed) | "
        f"{w['waiters_touched']} | | |", ""]


# -- the measured worker (subprocess) --------------------------------------------------------

def workload_main(argv: list[str]) -> None:
    """Starts ``n`` snippets workflows, drains them with a 4-slot worker (instant in-process
    client, settings from the environment) and prints one RESULT line."""
    parser = argparse.ArgumentParser(prog="bench.scenarios.waiters workload")
    parser.add_argument("--admin-dsn", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    common.install_counting()
    from bench.scenarios.engine import TimedStore
    from cpoa import settings as settings_module
    from cpoa.worker import Worker
    settings = settings_module.from_env()
    _start_snippets(args.dsn, settings, args.n)
    dbname = common.dbname_of(args.dsn)
    pool = args.slots + 3
    store = TimedStore(args.dsn, min_size=pool, max_size=pool)
    engine = _UntilCompleted(store, settings, client=common.InstantClient(), completed=args.n)
    worker = Worker(engine, concurrency=args.slots)
    engine.worker = worker
    first_event = _scalar(args.dsn, "SELECT coalesce(max(event_id), 0) FROM workflow_events")
    common.wait_no_backends_except(args.admin_dsn, dbname, pool)
    counts_before = common.COUNTERS.snapshot()
    pg_pids = common.postgres_pids(args.admin_dsn, dbname)
    pg_cpu_before = common.pids_cpu_s(pg_pids)
    cpu_before = time.process_time()
    started = time.perf_counter()
    worker.run()
    elapsed = (engine.last_end or time.perf_counter()) - started
    cpu = time.process_time() - cpu_before
    pg_cpu = common.pids_cpu_s(pg_pids) - pg_cpu_before
    counts = {k: v - counts_before[k] for k, v in common.COUNTERS.snapshot().items()}
    store.close()
    transitions = _scalar(args.dsn, "SELECT count(*) FROM workflow_events WHERE event_id > %s "
                                    "AND trigger <> 'start'", (first_event,))
    claims = [t for t, _ in store.claims]
    per = max(transitions, 1)
    common.emit({
        "workflows": args.n, "transitions": transitions, "seconds": round(elapsed, 3),
        "transitions_per_s": round(transitions / elapsed, 1),
        "claims": len(claims), "empty_claims": sum(1 for _, n in store.claims if n == 0),
        "claim_ms_p50": common.ms(common.percentile(claims, 50)),
        "claim_ms_p99": common.ms(common.percentile(claims, 99)),
        "finish_ms_p50": common.ms(common.percentile(store.finishes, 50)),
        "finish_ms_p99": common.ms(common.percentile(store.finishes, 99)),
        "statements_per_transition": round(counts["statements"] / per, 2),
        "worker_cpu_ms_per_transition": round(cpu * 1000 / per, 3),
        "postgres_cpu_ms_per_transition": round(pg_cpu * 1000 / per, 3),
        "max_in_flight": settings.agent("VFA").max_in_flight,
    })


def _start_snippets(dsn: str, settings: Any, n: int, threads: int = 4) -> None:
    from cpoa.engine import Engine
    from cpoa.store import PostgresStore
    store = PostgresStore(dsn, min_size=threads, max_size=threads)
    engine = Engine(store, settings, client=common.InstantClient())
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: engine.start_workflow(
            "snippets", {"query": f"query {i}", "limit": 2}), range(n)))
    store.close()


class _UntilCompleted(TimedEngine):
    """Stops its worker once its steps completed ``completed`` workflows: the worker cannot
    run until idle (the waiters are unfinished work), and watching the table from another
    session would cost the server more on the database with the waiters."""

    def __init__(self, *args: Any, completed: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.completed = completed

    def step(self, lease: Any, **kwargs: Any) -> Any:
        result = super().step(lease, **kwargs)
        if len(self.store.completing) >= self.completed and self.worker is not None:
            self.worker.stop()
        return result


if __name__ == "__main__":
    if sys.argv[1:2] != ["workload"]:
        sys.exit("usage: python -m bench.scenarios.waiters workload --admin-dsn A --dsn D -n N")
    threading.current_thread().name = "bench-main"
    workload_main(sys.argv[2:])
