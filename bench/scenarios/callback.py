"""Agent-finish → next-state delay with the DEFAULT polling intervals, with agent callbacks
through a gateway or with adaptive polling alone. Prints one RESULT line.

    python -m bench.scenarios.callback --dsn D --agent-url URL -n 20 --mode callbacks
    python -m bench.scenarios.callback --dsn D --agent-url URL -n 20 --mode polling

The agent (``bench.scenarios.agent --mode timed``, its own process) finishes each task 0.25–0.65 s
after its submit (all within the first second) and calls back when the submit carried an
``X-Callback-URL``. ``callbacks``: a ``cpoa serve`` gateway in its own process, and the worker
(4 slots, in this process, CPOA's real HTTP client) has ``CPOA_CALLBACK_BASE_URL`` pointing at
it. ``polling``: no gateway, no callbacks: adaptive polling alone. No polling setting is
changed: WCHA 10 s, TDA, PSWA, VFA, IGA 5 s. For each polled step the delay is
``workflow_events.at`` of the transition out of that state (the database's ``now()``) minus the
moment the agent's task finished (``time.time()`` in the agent; one machine, one clock); it is
also given as a fraction of that agent's polling interval. ``finish_to_poke`` is the part of
it up to the gateway's write (``workflow_instances.callback_at`` of the last step, IGA),
``poke_to_next_state`` the rest (the worker's side). Polls per task are counted at the
agent; a fixed interval polls each of these tasks exactly once (at the interval).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import requests

from bench.scenarios import common
from cpoa.steps import PODCAST

STATE_OF_PATH = {step.path: state for state, step in PODCAST.items() if step.agent != "ASF"}
AGENT_OF_PATH = {step.path: step.agent for step in PODCAST.values() if step.agent != "ASF"}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@contextlib.contextmanager
def gateway(dsn: str) -> Iterator[tuple[str, int]]:
    """``cpoa serve`` on a free loopback port, in its own process; yields its base URL and
    process id."""
    from cpoa.testing.agent import free_port
    port = free_port()
    env = {**os.environ, "CPOA_DATABASE_URL": dsn}
    proc = subprocess.Popen([sys.executable, "-m", "cpoa.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        common.wait_for(lambda: _healthy(url), timeout=30)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _healthy(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def agent_env(agent_url: str, gateway_url: str | None) -> dict[str, str]:
    """The agents' URLs and nothing else changed (default polling), plus the callback base."""
    from cpoa.settings import POLLED_AGENTS
    from cpoa.testing.agent import ASF_NOTIFY, ASF_UI
    env = {f"{name}_SERVICE_URL": agent_url for name in POLLED_AGENTS}
    env.update(ASF_NOTIFICATION_URL=agent_url + ASF_NOTIFY,
               CPOA_ASF_SEND_UI_UPDATE_URL=agent_url + ASF_UI)
    if gateway_url:
        env["CPOA_CALLBACK_BASE_URL"] = gateway_url
    return env


def drain(dsn: str, agent_url: str, gateway_url: str | None, n: int, slots: int,
          every_s: float) -> float:
    """Starts ``n`` podcasts (all at once, or one every ``every_s``) while a worker runs, until
    every one is done; returns the seconds."""
    from cpoa import settings as settings_module
    from cpoa.engine import Engine
    from cpoa.store import PostgresStore
    from cpoa.worker import Worker
    settings = settings_module.from_env(agent_env(agent_url, gateway_url))
    store = PostgresStore(dsn, min_size=slots + 3, max_size=slots + 3)
    engine = Engine(store, settings)
    worker = Worker(engine, concurrency=slots)
    thread = threading.Thread(target=worker.run, daemon=True)
    began = time.monotonic()
    thread.start()
    for i in range(n):
        engine.start_workflow("podcast", {"topic": f"callback {i}"})
        time.sleep(every_s)
    common.wait_for(lambda: store.count_unfinished() == (0, 0), timeout=600)
    seconds = time.monotonic() - began
    worker.stop()
    thread.join(timeout=60)
    store.close()
    return seconds


def measure(dsn: str, agent_url: str) -> dict:
    """Per polled step: the delay, its fraction of the agent's interval, the polls it took."""
    from cpoa import settings as settings_module
    intervals = {name: agent.poll_interval_s
                 for name, agent in settings_module.from_env({}).agents.items()}
    finishes = requests.get(agent_url + "/bench/finishes", timeout=10).json()["finishes"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT workflow_id::text, from_state, extract(epoch FROM at) "
                            "FROM workflow_events WHERE from_state IS NOT NULL").fetchall()
        states = dict(conn.execute(
            "SELECT state, count(*) FROM workflow_instances GROUP BY state").fetchall())
        poked = dict(conn.execute(  # the last callback of each workflow: its IGA task's
            "SELECT workflow_id::text, extract(epoch FROM callback_at)::float8 "
            "FROM workflow_instances WHERE callback_at IS NOT NULL").fetchall())
    left = {(w, s): float(at) for w, s, at in rows}
    delays, fractions, polls, to_poke, after_poke = [], [], [], [], []
    for finish in finishes:
        state = STATE_OF_PATH.get(finish["path"])
        at = left.get((finish["workflow_id"], state))
        if state and at is not None:
            delays.append(at - finish["done_at"])
            fractions.append(delays[-1] / intervals[AGENT_OF_PATH[finish["path"]]])
            polls.append(finish["polls"])
            if state == "imaging" and finish["workflow_id"] in poked:
                to_poke.append(poked[finish["workflow_id"]] - finish["done_at"])
                after_poke.append(at - poked[finish["workflow_id"]])
    return {"delays": delays, "fractions": fractions, "polls": polls, "states": states,
            "to_poke": to_poke, "after_poke": after_poke}


@contextlib.contextmanager
def stormed(args: argparse.Namespace, url: str, gateway_pid: int,
            into: dict) -> Iterator[None]:
    """With ``--storm N``: a sender process fires N forged or replayed callbacks at the
    gateway while the body runs (:func:`send_storm`). Fills ``into`` with its answers and the
    CPU it cost."""
    if not args.storm:
        yield
        return
    cpu = {"gateway": common.process_cpu_s(gateway_pid), "worker": time.process_time()}
    sender = subprocess.Popen([sys.executable, "-m", "bench.scenarios.callback", "--dsn",
                               args.dsn, "--agent-url", args.agent_url, "--storm",
                               str(args.storm), "--storm-sender", url], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    began = time.monotonic()
    yield
    out, _ = sender.communicate(timeout=600)
    into.update(common.read_result(out))
    into.update(storm_seconds=round(time.monotonic() - began, 1),
                gateway_cpu_s=round(common.process_cpu_s(gateway_pid) - cpu["gateway"], 2),
                worker_cpu_s=round(time.process_time() - cpu["worker"], 2))


def send_storm(dsn: str, url: str, n: int) -> None:
    """The storm sender: ``n`` callbacks as fast as one keep-alive connection goes, in turn
    forged (random ids and token), forged for a real open task (its ids, a wrong token), and
    replayed (the valid URL of a task that has finished)."""
    import collections
    import uuid

    from cpoa import callbacks
    session, answers = requests.Session(), collections.Counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        common.wait_for(lambda: conn.execute("SELECT 1 FROM cpoa_secrets").fetchone(), 60)
        key = conn.execute("SELECT value FROM cpoa_secrets").fetchone()[0].encode()
        tasks: dict[bool, list] = {True: [], False: []}
        for i in range(n):
            if i % 200 == 0:
                rows = conn.execute("SELECT workflow_id, task_id, idempotency_key, status IN "
                                    "('succeeded', 'failed') FROM task_instances").fetchall()
                tasks = {done: [r[:3] for r in rows if r[3] == done] for done in (True, False)}
            kind = i % 3
            if kind == 1 and tasks[False]:  # a real open task, a wrong token
                target = callbacks.url(url, b"forged", *tasks[False][i % len(tasks[False])])
            elif kind == 2 and tasks[True]:  # a finished task's valid URL, replayed
                target = callbacks.url(url, key, *tasks[True][i % len(tasks[True])])
            else:
                target = callbacks.url(url, b"forged", uuid.uuid4(), uuid.uuid4(), "k")
            answer = session.post(target, json={"status": "SUCCESS"}, timeout=10)
            answers[answer.status_code] += 1
    common.emit({"storm_sent": n, "storm_answers": dict(answers)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--agent-url", required=True)
    parser.add_argument("--mode", choices=("callbacks", "polling"), default="callbacks")
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--storm", type=int, default=0,
                        help="callbacks: also send this many forged or duplicate callbacks "
                             "from another process while the workflows run")
    parser.add_argument("--storm-sender", help=argparse.SUPPRESS)  # the storm's own process
    parser.add_argument("--every-s", type=float, default=0.0,
                        help="start one workflow every this many seconds [0: all at once]")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.storm_sender:
        return send_storm(args.dsn, args.storm_sender, args.storm)
    storm: dict = {}
    if args.mode == "callbacks":
        with gateway(args.dsn) as (url, pid), stormed(args, url, pid, storm):
            seconds = drain(args.dsn, args.agent_url, url, args.n, args.slots, args.every_s)
    else:
        seconds = drain(args.dsn, args.agent_url, None, args.n, args.slots, args.every_s)
    m = measure(args.dsn, args.agent_url)
    delays, fractions, polls = m["delays"], m["fractions"], m["polls"]
    common.emit({
        "mode": args.mode, "workflows": args.n, "start_every_s": args.every_s,
        "seconds": round(seconds, 1),
        "samples": len(delays), "states": m["states"],
        "delay_ms_p50": common.ms(common.percentile(delays, 50), 1),
        "delay_ms_p99": common.ms(common.percentile(delays, 99), 1),
        "delay_ms_max": common.ms(max(delays) if delays else None, 1),
        "finish_to_poke_ms_p50": common.ms(common.percentile(m["to_poke"], 50), 1),
        "finish_to_poke_ms_p99": common.ms(common.percentile(m["to_poke"], 99), 1),
        "poke_to_next_state_ms_p50": common.ms(common.percentile(m["after_poke"], 50), 1),
        "poke_to_next_state_ms_p99": common.ms(common.percentile(m["after_poke"], 99), 1),
        "fraction_of_interval_p99": round(common.percentile(fractions, 99) or 0, 3),
        "fraction_of_interval_max": round(max(fractions) if fractions else 0, 3),
        "polls_per_task_mean": round(sum(polls) / len(polls), 2) if polls else None,
        "polls_per_task_max": max(polls) if polls else None,
        "polls_per_task_fixed_interval": 1, **storm,
    })


if __name__ == "__main__":
    main()
