"""Recovery time: a worker SIGKILLed inside agent requests, taken over by a worker running all
along, with every setting at its default. Prints one RESULT line.

    python -m bench.scenarios.recovery --dsn D --kills 20

An agent in this process answers every submit 2 s after it arrived (the worker is inside the
request all that time). Two ``cpoa worker`` processes run (default concurrency, lease TTL,
sweep and recovery check; only the agents' URLs and their polling interval are set). Each
round starts one podcast workflow, waits until the agent received a submit of it, SIGKILLs the
worker holding its lease (a random 0–1 s into the request) and waits for the other worker, the
survivor, to submit each interrupted key again (rounds one at a time: see MAX_UNFINISHED); only
then is a replacement worker started, so the resubmit can only come from the survivor. Figures: kill → the survivor's resubmit arriving
at the agent (per kill, the last of its interrupted keys), workflows completed, and duplicate
work: every submit counted, a key allowed one more submit per kill that interrupted its request
(``bench.chaos.inflight``), nothing else.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import time
from typing import Any

import psycopg

from bench.chaos import inflight
from bench.scenarios import common
from bench.scenarios.agent import SlowAgent
from cpoa import defaults
from cpoa.testing.agent import ASF_UI

ANSWER_S = 2.0
"""How long the agent takes to answer each submit."""
POLL_S = "0.05"
"""Agents' polling interval (the test suite's; the agent answers each submit synchronously,
so nothing is polled)."""
MAX_UNFINISHED = 0
"""A round starts once at most this many earlier workflows are unfinished. Zero: each workflow
is killed once. A workflow whose worker dies twice in one state is a suspect, claimed alone,
and the worker that claims it runs nothing else until its step has moved it on: with earlier
workflows still running, a kill could hit one of them a second time and measure that
containment (one 2 s step here) instead of the recovery."""
TARGET_P99_S = 1.0
ROUND_TIMEOUT_S = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--kills", type=int, default=20)
    args = parser.parse_args()
    agent = SlowAgent(ANSWER_S)
    try:
        with psycopg.connect(args.dsn, autocommit=True) as db:
            figures = _run(db, args.dsn, agent, args.kills)
    finally:
        agent.close()
    common.emit(figures)


def _run(db: psycopg.Connection, dsn: str, agent: SlowAgent, kills: int) -> dict[str, Any]:
    env = _env(dsn, agent.url)
    rng = random.Random(11)
    workers: list[subprocess.Popen] = []
    rounds: list[dict[str, Any]] = []
    error = None
    try:
        workers = [_spawn(env), _spawn(env)]
        for _ in range(kills):
            rounds.append(_round(db, env, agent, workers, rng))
        common.wait_for(lambda: _unfinished(db) == 0, ROUND_TIMEOUT_S * 2)
    except TimeoutError as exc:  # reported with the figures so far (e.g. a workflow stuck)
        error = str(exc)
    finally:
        for proc in workers:
            _stop(proc)
    return {**_figures(db, agent, rounds, env), "kills_planned": kills, "error": error}


def _env(dsn: str, agent_url: str) -> dict[str, str]:
    """The workers' environment: this database, every agent at ``agent_url``, no tuning
    beyond the polling interval (the test suite's agent_env shortens the retry backoff: put
    back)."""
    from cpoa.testing.cli import cli_env
    env = cli_env(dsn, agent_url, **{f"CPOA_{name}_POLLING_INTERVAL_SECONDS": POLL_S
                                     for name in defaults.POLLING_S})
    for name in ("CPOA_SERVICE_RETRY_BACKOFF_FACTOR", "CPOA_LEASE_TTL_SECONDS"):
        env.pop(name, None)
    return env


def _round(db: psycopg.Connection, env: dict[str, str], agent: SlowAgent,
           workers: list[subprocess.Popen], rng: random.Random) -> dict[str, Any]:
    """One kill: returns when, what it interrupted, and when each key was submitted again."""
    common.wait_for(lambda: _unfinished(db) <= MAX_UNFINISHED and inflight.live_workers(db) == 2,
          ROUND_TIMEOUT_S)
    workflow_id = _start(db)
    common.wait_for(lambda: _submits_of(agent, workflow_id), ROUND_TIMEOUT_S)
    time.sleep(rng.uniform(0.0, 1.0))  # the fault: a moment inside the 2 s request
    victim = _holder(db, workers, workflow_id)
    before = inflight.held(db, victim.pid)  # the survivor may requeue them before the read after
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    killed_at = time.monotonic()
    held = before + inflight.held(db, victim.pid)
    keys = {key for wf, _, recorded in held
            if (key := _last_submitted_key(agent, wf)) and key not in recorded}
    common.wait_for(lambda: all(_first_after(agent, k, killed_at) for k in keys), ROUND_TIMEOUT_S)
    resumed = [_first_after(agent, k, killed_at) for k in keys]
    workers[workers.index(victim)] = _spawn(env)  # only now: the survivor resubmitted alone
    return {"held": held, "keys": sorted(keys),
            "resume_s": max((at - killed_at for at in resumed if at), default=None)}


def _figures(db: psycopg.Connection, agent: SlowAgent, rounds: list[dict[str, Any]],
             env: dict[str, str]) -> dict[str, Any]:
    from bench.chaos.common import non_default_settings
    in_flight = inflight.excused(db, [r["held"] for r in rounds])
    with agent.lock:
        work = dict(agent.work)
    twice = {k: n for k, n in work.items() if n > 1 + in_flight.get(k, 0)}
    resumes = [r["resume_s"] for r in rounds if r["resume_s"] is not None]
    states = dict(db.execute("SELECT state, count(*) FROM workflow_instances GROUP BY 1")
                  .fetchall())
    p99 = common.percentile(resumes, 99)
    return {
        "kills": len(rounds), "kills_resumed": len(resumes),
        "keys_interrupted": sum(len(r["keys"]) for r in rounds),
        "resume_s_p50": _round3(common.percentile(resumes, 50)), "resume_s_p99": _round3(p99),
        "resume_s_max": _round3(max(resumes, default=None)),
        "resume_s_per_kill": [_round3(r["resume_s"]) for r in rounds],
        "keys_per_kill": [len(r["keys"]) for r in rounds],
        "target_p99_s": TARGET_P99_S, "answer_s": ANSWER_S,
        "recovery_check_s": defaults.RECOVERY_CHECK_S, "lease_ttl_s": defaults.LEASE_TTL_S,
        "workflows": sum(states.values()), "completed": states.get("completed", 0),
        "states": states, "submits": sum(work.values()), "work_keys": len(work),
        "duplicate_work": len(twice), "keys_worked_twice_sample": dict(list(twice.items())[:5]),
        "resubmits_excused": sum(min(n, 1 + in_flight.get(k, 0)) - 1 for k, n in work.items()),
        "non_default_settings": non_default_settings(env),
    }


# -- helpers ---------------------------------------------------------------------------------

def _spawn(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cpoa.cli", "worker"], env=env,
                            cwd=common.REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start(db: psycopg.Connection) -> str:
    from cpoa import settings as settings_module
    from cpoa.engine import Engine
    from cpoa.store import PostgresStore
    store = PostgresStore(db.info.dsn, min_size=0, max_size=1)
    try:
        engine = Engine(store, settings_module.from_env({}))
        return str(engine.start_workflow("podcast", {"topic": "recovery"}))
    finally:
        store.close()


def _holder(db: psycopg.Connection, workers: list[subprocess.Popen],
            workflow_id: str) -> subprocess.Popen:
    """The worker process holding the workflow's lease."""
    def find() -> subprocess.Popen | None:
        row = db.execute("SELECT split_part(lease_owner, ':', 2) FROM workflow_instances"
                         " WHERE workflow_id = %s", (workflow_id,)).fetchone()
        return next((w for w in workers if row and str(w.pid) == row[0]), None)
    return common.wait_for(find, ROUND_TIMEOUT_S)


def _submits_of(agent: SlowAgent, workflow_id: str) -> list[float]:
    with agent.lock:
        return [r["at"] for r in agent.requests if r["method"] == "POST"
                and r["path"] != ASF_UI and r["headers"].get("x-workflow-id") == workflow_id]


def _last_submitted_key(agent: SlowAgent, workflow_id: str) -> str | None:
    """The key of the workflow's latest submit: its request in flight, unless recorded."""
    with agent.lock:
        return next((r["headers"].get("x-idempotency-key") for r in reversed(agent.requests)
                     if r["method"] == "POST" and r["path"] != ASF_UI
                     and r["headers"].get("x-workflow-id") == workflow_id), None)


def _first_after(agent: SlowAgent, key: str, at: float) -> float | None:
    with agent.lock:
        return next((r["at"] for r in agent.requests if r["at"] > at and r["method"] == "POST"
                     and r["headers"].get("x-idempotency-key") == key), None)


def _unfinished(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) FROM workflow_instances WHERE state NOT IN "
                      "('completed', 'failed', 'cancelled')").fetchone()[0]


def _round3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


if __name__ == "__main__":
    main()
