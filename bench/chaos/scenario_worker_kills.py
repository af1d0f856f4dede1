"""Scenario 1, worker kills: podcast workflows with UI events, three `cpoa worker` processes, one
of them (one inside a step, when any is) SIGKILLed every 1–2 s and restarted, against agents
that take 0.1–0.5 s to answer a submit, answer 10 % of requests with 503, drop 5 % of connections after
doing the work and fail 10 % of status polls with a bodiless 500.

The workers run with the default lease TTL and sweep settings: a killed worker's leases die
with its database session, and a surviving worker with free slots finds them within
``defaults.RECOVERY_CHECK_S``. Only the agents' polling interval is shortened (0.2 s), so that
the workflows move on quickly; the figures list every non-default setting.

Promises: every workflow completes; no step's work is done twice (one key per step; every
submit counted, and a key submitted more than once only for an answer the agent refused or lost,
or once per kill that interrupted its request); ASF receives every UI event in order (after
dropping repeated event ids); and a killed worker's workflows resume within about
RECOVERY_CHECK_S. Figures: kill→resumption (from the SIGKILL to the next agent request of a
workflow the killed worker held), UI delivery latency, and the faults injected.
"""

from __future__ import annotations

import datetime
import random
import time
from typing import Any

import psycopg

from bench.chaos import agents, inflight, worker_proc
from bench.chaos.common import Context, non_default_settings, percentile
from cpoa import defaults
from cpoa.testing.kills import resumptions
from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.testing.agent import ASF_UI
from cpoa.testing.agent import agent_env

SEED = 1
WORKERS = 3
CONCURRENCY = "4"
KILL_EVERY_S = (1.0, 2.0)
FAULTS = {"submit_503": 0.10, "drop": 0.05, "poll_500": 0.10}
WORK_S = (0.3, 1.5)
"""How long each agent task takes, so that kills land in the middle of steps."""
ANSWER_S = (0.1, 0.5)
"""How long the agent takes to answer each submit: workers spend that long inside requests,
where a kill interrupts them. (Polls too would saturate the 12 slots with 200 workflows, and
kill -> resume would then measure the queue, not the recovery.)"""
POLL_S = "0.2"
"""Every agent's polling interval."""
FULL = {"workflows": 200, "arrival_s": 45.0, "kills": 1000, "deadline_s": 300.0}
QUICK = {"workflows": 20, "arrival_s": 6.0, "kills": 5, "deadline_s": 75.0}
"""Workflows are started evenly over ``arrival_s`` while the killer runs."""
OUTBOX_GRACE_S = 45.0
"""How long UI delivery may take after the last workflow ended: an event held by a killed
worker waits for its outbox lock (OUTBOX_LOCK_S, 30 s) to run out."""
UI_STALL_S = 10.0
"""A UI event slower than this from commit to ASF waited for a killed worker's outbox lock."""
RESUME_SLACK_S = 1.0
"""Allowed on top of RECOVERY_CHECK_S (0.5 s) for the claim and the request: a kill here is
over when the last of the 3–4 workflows it held is running again, on survivors busy with up to
200 workflows while workers are killed and restarted every 1–2 s on 2 shared cores. (The
benchmark's recovery scenario, `bench/run.py --only recovery`, measures one kill at a time
against a target of p99 <= 1 s.)"""
WATCH_S = 0.05


def run(ctx: Context) -> dict[str, Any]:
    size = QUICK if ctx.quick else FULL
    agent = agents.ChaosAgent(seed=SEED, work_s=WORK_S, answer_s=ANSWER_S, **FAULTS)
    try:
        with ctx.database() as dsn:
            store = PostgresStore(dsn, min_size=0, max_size=2)
            try:
                engine = Engine(store, settings_module.from_env(agent_env(agent.url)))
                with psycopg.connect(dsn, autocommit=True) as db:
                    run_figures = _run(ctx, db, dsn, agent, engine, size)
                    figures = _figures(db, store, agent, run_figures)
            finally:
                store.close()
    finally:
        agent.close()
    figures["ok"] = (figures["completed_fraction"] == 1.0 and figures["duplicate_work"] == 0
                     and figures["keys_never_worked"] == 0 and figures["ui_events_lost"] == 0
                     and figures["ui_events_reordered"] == 0
                     and figures["ui_events_unexpected"] == 0 and figures["ui_undelivered"] == 0
                     and figures["kills"] > 0 and figures["resume_over_bound"] == 0)
    return {"ok": figures.pop("ok"), **figures}


def _run(ctx: Context, db: psycopg.Connection, dsn: str, agent: agents.ChaosAgent,
         engine: Engine, size: dict[str, Any]) -> dict[str, Any]:
    """Starts the workflows over time, runs the workers and the killer until every workflow
    ended and every UI event went out (or the deadline); returns the kills and the timings."""
    env = worker_proc.environment(
        dsn, agent.url, **{f"CPOA_{name}_POLLING_INTERVAL_SECONDS": POLL_S
                           for name in settings_module.POLLED_AGENTS})
    rng = random.Random(SEED)
    kills: list[dict[str, Any]] = []
    ids: list[str] = []
    unexpected_exits = 0
    with worker_proc.processes(ctx.scratch) as procs:
        workers = [procs.cli_worker(env, "--concurrency", CONCURRENCY) for _ in range(WORKERS)]
        started = time.monotonic()
        deadline = started + size["deadline_s"]
        next_kill = started + rng.uniform(*KILL_EVERY_S)
        gap = size["arrival_s"] / size["workflows"]
        while time.monotonic() < deadline and (len(ids) < size["workflows"] or _unfinished(db)):
            while len(ids) < size["workflows"] and time.monotonic() >= started + len(ids) * gap:
                ids.append(str(engine.start_workflow("podcast", {"topic": f"kills {len(ids)}"},
                                                     client_id=f"ui-{len(ids) % 7}")))
            for i, proc in enumerate(workers):
                if proc.poll() is not None:  # died by itself: a finding, and keep going
                    unexpected_exits += 1
                    workers[i] = procs.cli_worker(env, "--concurrency", CONCURRENCY)
            if time.monotonic() >= next_kill and len(kills) < size["kills"]:
                i = _victim(db, workers, rng)
                kills.append(_kill(procs, db, workers[i]))
                workers[i] = procs.cli_worker(env, "--concurrency", CONCURRENCY)
                next_kill = time.monotonic() + rng.uniform(*KILL_EVERY_S)
            time.sleep(WATCH_S)
        workflows_s = time.monotonic() - started
        ui_deadline = min(deadline, time.monotonic() + OUTBOX_GRACE_S)
        worker_proc.wait_until(lambda: _undelivered(db) == 0, ui_deadline, interval=WATCH_S)
        exits = [procs.stop(proc) for proc in workers]
    return {"ids": ids, "kills": kills, "workflows_s": round(workflows_s, 1),
            "ui_drain_s": round(time.monotonic() - started - workflows_s, 1),
            "unexpected_worker_exits": unexpected_exits,
            "workers_stopped_cleanly": exits.count(0), "settings": non_default_settings(env)}


def _victim(db: psycopg.Connection, workers: list[Any], rng: random.Random) -> int:
    """The index of the worker to kill: a random one among those holding a lease right now
    (inside a step), else any."""
    owners = {row[0] for row in db.execute(
        "SELECT DISTINCT split_part(lease_owner, ':', 2) FROM workflow_instances"
        " WHERE lease_owner IS NOT NULL")}
    holding = [i for i, proc in enumerate(workers) if str(proc.pid) in owners]
    return rng.choice(holding) if holding else rng.randrange(len(workers))


def _kill(procs: worker_proc.Processes, db: psycopg.Connection, proc: Any) -> dict[str, Any]:
    """SIGKILLs one worker; returns when, and which workflows it held at that instant (with
    the keys whose answers were recorded: the others may have been in flight)."""
    before = inflight.held(db, proc.pid)
    at, at_monotonic = datetime.datetime.now(datetime.UTC), time.monotonic()
    procs.kill(proc)
    # Also just before: a survivor's sweep may requeue the dead leases before the read after.
    held = before + inflight.held(db, proc.pid)
    return {"at": at, "at_monotonic": at_monotonic, "pid": proc.pid,
            "held": sorted({workflow_id for workflow_id, _, _ in held}), "held_rows": held}


def _unfinished(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) FROM workflow_instances "
                      "WHERE state NOT IN ('completed', 'failed', 'cancelled')").fetchone()[0]


def _undelivered(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) FROM ui_event_outbox "
                      "WHERE delivered_at IS NULL").fetchone()[0]


def _figures(db: psycopg.Connection, store: PostgresStore, agent: agents.ChaosAgent,
             run: dict[str, Any]) -> dict[str, Any]:
    ids = run["ids"]
    workflows = {w: store.get_workflow(w) for w in ids}
    histories = {w: store.get_history(w) for w in ids}
    completed = sum(1 for wf in workflows.values() if wf.state == "completed")
    # Contract §1.1: a failed ASF notification completes the workflow with a warning; that
    # notification is then never delivered (reported, not a duplicate).
    unnotified = [w for w, wf in workflows.items()
                  if any(x.startswith("ASF notification failed") for x in wf.warnings)]
    in_flight = inflight.excused(db, [k["held_rows"] for k in run["kills"]])
    work = agents.duplicate_work(agent, [(w, wf.kind, wf.context) for w, wf in workflows.items()],
                                 excused=[f"{w}_asf" for w in unnotified], in_flight=in_flight)
    events = agents.ui_event_audit(list(agent.ui_events),
                                   {w: [h["to_state"] for h in hist] for w, hist in histories.items()})
    with agent.lock:
        calls = [(r["headers"].get("x-workflow-id"), r["at"]) for r in agent.requests
                 if r["path"] != ASF_UI]
    resumed = resumptions(run["kills"], histories, calls)
    bound = defaults.RECOVERY_CHECK_S + RESUME_SLACK_S
    latency = [row[0] for row in db.execute(
        "SELECT extract(epoch FROM delivered_at - created_at)::float8 FROM ui_event_outbox "
        "WHERE delivered_at IS NOT NULL")]
    with agent.lock:
        faults, requests = dict(agent.faults), len(agent.requests)
    return {
        "workflows": len(ids), "completed": completed,
        "completed_fraction": round(completed / len(ids), 4),
        "not_completed": {w: f"{wf.state}: {wf.error_message}" for w, wf in workflows.items()
                          if wf.state != "completed"} or None,
        "completed_with_warnings": sum(1 for wf in workflows.values() if wf.warnings),
        "asf_notifications_given_up": len(unnotified),
        "warnings_sample": [w for wf in workflows.values() for w in wf.warnings][:3],
        "workflows_s": run["workflows_s"], "ui_drain_s": run["ui_drain_s"],
        "kills": len(run["kills"]),
        "kills_holding_work": sum(1 for k in run["kills"] if k["held"]),
        "held_workflows": sum(len(k["held"]) for k in run["kills"]),
        "resume_s_p50": percentile(resumed["per_kill"], 50),
        "resume_s_p99": percentile(resumed["per_kill"], 99),
        "resume_s_max": percentile(resumed["per_kill"], 100),
        "resume_s_p99_per_workflow": percentile(resumed["per_workflow"], 99),
        "resume_bound_s": bound, "recovery_check_s": defaults.RECOVERY_CHECK_S,
        "lease_ttl_s": defaults.LEASE_TTL_S, "sweep_interval_s": defaults.SWEEP_INTERVAL_S,
        "non_default_settings": run["settings"],
        "resume_over_bound": sum(1 for s in resumed["per_kill"] if s > bound),
        "next_transition_s_p50": percentile(resumed["transition_per_kill"], 50),
        "next_transition_s_p99": percentile(resumed["transition_per_kill"], 99),
        "held_never_resumed": resumed["never"],
        **{k: work[k] for k in ("duplicate_work", "keys_worked_twice",
                                "keys_worked_twice_sample", "unexpected_keys",
                                "keys_never_worked", "keys_never_worked_sample", "work_keys",
                                "submits", "resubmits_excused", "asf_notify_redeliveries")},
        **inflight.summary(in_flight),
        **events,
        "ui_undelivered": _undelivered(db),
        "ui_latency_s_p50": percentile(latency, 50), "ui_latency_s_p99": percentile(latency, 99),
        "ui_latency_s_max": round(max(latency, default=0.0), 2),
        "ui_events_stalled": sum(1 for s in latency if s > UI_STALL_S),
        "faults_injected": faults, "agent_requests": requests, "seed": SEED,
        "unexpected_worker_exits": run["unexpected_worker_exits"],
        "workers_stopped_cleanly": run["workers_stopped_cleanly"],
    }
