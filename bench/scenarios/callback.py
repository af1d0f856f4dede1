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
def gateway(dsn: str) -> Iterator[str]:
    """``cpoa serve`` on a free loopback port, in its own process; yields its base URL."""
    from tests.fix_agents import free_port
    port = free_port()
    env = {**os.environ, "CPOA_DATABASE_URL": dsn}
    proc = subprocess.Popen([sys.executable, "-m", "cpoa.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        common.wait_for(lambda: _healthy(url), timeout=30)
        yield url
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
    from tests.agent_server import ASF_NOTIFY, ASF_UI
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--agent-url", required=True)
    parser.add_argument("--mode", choices=("callbacks", "polling"), required=True)
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--every-s", type=float, default=0.0,
                        help="start one workflow every this many seconds [0: all at once]")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.mode == "callbacks":
        with gateway(args.dsn) as url:
            seconds = drain(args.dsn, args.agent_url, url, args.n, args.slots, args.every_s)
    else:
        seconds = drain(args.dsn, args.agent_url, None, args.n, args.slots, args.every_s)
    m = measure(args.dsn, args.agent_url)
    delays, fractions, polls = m["delays"], m["fractions"], m["polls"]
    common.emit({
        "mode": args.mode, "workflows": args.n, "start_every_s": args.every_s, "seconds": round(seconds, 1),
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
        "polls_per_task_fixed_interval": 1,
    })


if __name__ == "__main__":
    main()
