"""Scenario 5, advance storm: many processes call ``advance`` on the same workflows as fast as
they can, against an instant agent; every transition must appear exactly once in each history
(nothing skipped, nothing doubled), with one UI event queued per state entered and each step's
work done once.
"""

from __future__ import annotations

import itertools
import json
import select
import subprocess
import time
from typing import Any

from bench.chaos import agents, worker_proc
from bench.chaos.common import Context
from cpoa import machine
from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.testing.agent import agent_env

FULL = (8, 50)
QUICK = (4, 10)
"""(processes, workflows)."""
DEADLINE_S = {False: 180.0, True: 60.0}
"""How long the advancing processes may run, per ``quick``."""
START_S = 30.0
"""How long the processes may take to connect before the storm starts."""


def run(ctx: Context) -> dict[str, Any]:
    n_procs, n_workflows = QUICK if ctx.quick else FULL
    deadline_s = DEADLINE_S[ctx.quick]
    agent = agents.ChaosAgent(sync=True)
    try:
        with ctx.database() as dsn:
            store = PostgresStore(dsn, min_size=0, max_size=2)
            try:
                engine = Engine(store, settings_module.from_env(agent_env(agent.url)))
                ids = [str(engine.start_workflow("podcast", {"topic": f"storm {i}"},
                                                 client_id="storm"))
                       for i in range(n_workflows)]
                env = worker_proc.environment(dsn, agent.url, DB_POOL_MAX_CONN="2")
                with worker_proc.processes(ctx.scratch) as procs:
                    storm = _storm(procs, env, ids, n_procs, deadline_s)
                figures = _check(store, agent, ids)
            finally:
                store.close()
    finally:
        agent.close()
    ok = (storm["all_exited"] and not storm["errors"] and storm["unfinished"] == 0
          and figures["histories_wrong"] == 0 and figures["duplicate_work"] == 0
          and figures["keys_never_worked"] == 0 and figures["outbox_wrong"] == 0)
    return {"ok": ok, "processes": n_procs, "workflows": n_workflows, **storm, **figures}


def _storm(procs: worker_proc.Processes, env: dict[str, str], ids: list[str], n_procs: int,
           deadline_s: float) -> dict[str, Any]:
    """Starts the processes, lets them go at once, and collects their counts."""
    args = [worker_proc.__file__, "advance", "--deadline", str(deadline_s), *ids]
    started = [procs.spawn("advance", args, env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
               for _ in range(n_procs)]
    ready_by = time.monotonic() + START_S
    for proc in started:
        wait = max(0.0, ready_by - time.monotonic())
        if not select.select([proc.stdout], [], [], wait)[0] or proc.stdout.readline() != "ready\n":
            raise RuntimeError(f"advance process did not start: {procs.log(proc)[-2000:]}")
    go = time.monotonic()
    for proc in started:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    end_by = go + deadline_s + 15.0
    codes = []
    for proc in started:
        try:
            codes.append(proc.wait(timeout=max(0.1, end_by - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    seconds = time.monotonic() - go
    counts = [json.loads(line) for proc in started for line in proc.stdout.read().splitlines()
              if line.startswith("{")]
    calls = sum(c["calls"] for c in counts)
    errors: dict[str, int] = {}
    for c in counts:
        for name, n in c["errors"].items():
            errors[name] = errors.get(name, 0) + n
    return {"all_exited": codes == [0] * n_procs and len(counts) == n_procs,
            "storm_s": round(seconds, 2), "advance_calls": calls,
            "advance_calls_per_s": round(calls / seconds, 1) if seconds else None,
            "unfinished": max((c["unfinished"] for c in counts), default=len(ids)),
            "errors": errors}


def _check(store: PostgresStore, agent: agents.ChaosAgent, ids: list[str]) -> dict[str, Any]:
    chain = [None, *machine.straight_path("podcast"), "completed"]
    expected = list(itertools.pairwise(chain))
    wrong = outbox_wrong = transitions = 0
    contexts = []
    for workflow_id in ids:
        history = [(h["from_state"], h["to_state"]) for h in store.get_history(workflow_id)]
        transitions += len(history) - 1  # the first row is the start
        wrong += history != expected
        queued = [e["data"]["state"] for e in store.get_ui_events(workflow_id)]
        outbox_wrong += queued != [to for _, to in expected]
        contexts.append((workflow_id, "podcast", store.get_workflow(workflow_id).context))
    work = agents.duplicate_work(agent, contexts)
    return {"transitions": transitions, "histories_wrong": wrong, "outbox_wrong": outbox_wrong,
            **{k: work[k] for k in ("duplicate_work", "keys_worked_twice", "unexpected_keys",
                                    "keys_never_worked", "asf_notify_redeliveries")}}
