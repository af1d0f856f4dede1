"""Agent-finish → next-state latency with polled agents. Prints one RESULT line.

    python -m bench.scenarios.latency --admin-dsn A --dsn D --agent-url URL -n 20 --poll-s 0.2

The agent (``bench.scenarios.agent --mode timed``, its own process) finishes each task 0.25–0.65 s
after its submit and answers PENDING to polls before then. A worker with 4 slots and CPOA's real
HTTP client drains ``n`` podcast workflows, polling every ``--poll-s``. For each polled step the
delay is ``workflow_events.at`` of the transition out of that state (the database's ``now()`` in
the transaction that records it) minus the moment the agent's task finished (``time.time()`` in
the agent; one machine, one clock). The bound to hold: poll interval + 50 ms.
"""

from __future__ import annotations

import argparse
import logging

import psycopg
import requests

from bench.scenarios import common
from cpoa.steps import PODCAST

STATE_OF_PATH = {step.path: state for state, step in PODCAST.items() if step.agent != "ASF"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-dsn", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--agent-url", required=True)
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--poll-s", type=float, default=0.2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    from cpoa import settings as settings_module
    from cpoa.engine import Engine
    from cpoa.store import PostgresStore
    from cpoa.worker import Worker
    settings = settings_module.from_env(common.agent_env(args.agent_url, args.poll_s))
    store = PostgresStore(args.dsn, min_size=args.slots + 3, max_size=args.slots + 3)
    engine = Engine(store, settings)
    for i in range(args.n):
        engine.start_workflow("podcast", {"topic": f"latency {i}"})
    Worker(engine, concurrency=args.slots, until_idle=True).run()
    store.close()
    finishes = requests.get(args.agent_url + "/bench/finishes", timeout=10).json()["finishes"]
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT workflow_id::text, from_state, extract(epoch FROM at) "
                            "FROM workflow_events WHERE from_state IS NOT NULL").fetchall()
        states = dict(conn.execute(
            "SELECT state, count(*) FROM workflow_instances GROUP BY state").fetchall())
        polls = conn.execute("SELECT count(*) FROM task_instances").fetchone()[0]
    left = {(w, s): float(at) for w, s, at in rows}
    delays = []
    for finish in finishes:
        state = STATE_OF_PATH.get(finish["path"])
        at = left.get((finish["workflow_id"], state))
        if state and at is not None:
            delays.append(at - finish["done_at"])
    bound = args.poll_s + 0.05
    common.emit({
        "workflows": args.n, "poll_s": args.poll_s, "samples": len(delays),
        "delay_ms_p50": common.ms(common.percentile(delays, 50), 1),
        "delay_ms_p99": common.ms(common.percentile(delays, 99), 1),
        "delay_ms_max": common.ms(max(delays) if delays else None, 1),
        "delay_ms_min": common.ms(min(delays) if delays else None, 1),
        "bound_ms": round(bound * 1000), "over_bound": sum(1 for d in delays if d > bound),
        "states": states, "task_rows": polls,
    })


if __name__ == "__main__":
    main()
