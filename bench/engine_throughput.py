"""Quick engine figure: N podcast workflows against an instant (synchronous 200) loopback agent,
drained by one worker process with C slots. Prints one JSON line.

    python bench/engine_throughput.py --dsn postgresql://postgres@127.0.0.1:5432/postgres -n 200
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import uuid

import psycopg

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from cpoa import settings as settings_module  # noqa: E402
from cpoa.engine import Engine  # noqa: E402
from cpoa.store import PostgresStore  # noqa: E402
from cpoa.worker import Worker  # noqa: E402
from tests.agent_server import ScriptedAgent  # noqa: E402
from tests.fix_agents import agent_env  # noqa: E402
from tests.fix_db import with_dbname  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True, help="an administrative connection string")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    name = f"cpoa_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    agent = ScriptedAgent(sync=True)
    try:
        store = PostgresStore(with_dbname(args.dsn, name), max_size=args.concurrency + 2)
        store.apply_schema()
        engine = Engine(store, settings_module.from_env(agent_env(agent.url)))
        for i in range(args.n):
            engine.start_workflow("podcast", {"topic": f"t{i}"})
        started = time.perf_counter()
        Worker(engine, concurrency=args.concurrency, until_idle=True).run()
        elapsed = time.perf_counter() - started
        transitions = args.n * 6
        print(json.dumps({"workflows": args.n, "concurrency": args.concurrency,
                          "seconds": round(elapsed, 2),
                          "workflows_per_s": round(args.n / elapsed, 1),
                          "transitions_per_s": round(transitions / elapsed, 1)}))
        store.close()
    finally:
        agent.close()
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
