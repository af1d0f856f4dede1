"""Idle cost: ``cpoa worker --concurrency 4`` (the CLI's own code, in this process) with nothing
to do, measured over a window after it settled. Prints one RESULT line.

    CPOA_DATABASE_URL=... python -m bench.scenarios.idle --admin-dsn A --settle 3 --window 20

Counted: round trips and statements of the worker's pool (``common.CountingConnection``; the
LISTEN connection only waits on its socket and is not counted), commits of its database on the
server (``pg_stat_database.xact_commit``), the process's CPU time (all threads) and the CPU of
the server sessions of that database.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time

from bench.scenarios import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-dsn", required=True)
    parser.add_argument("--settle", type=float, default=11.0,
                        help="seconds before the window; a session that committed less than "
                             "1 s after its last report flushes its counters 10 s later")
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    common.install_counting()
    from cpoa import cli
    dbname = common.dbname_of(os.environ["CPOA_DATABASE_URL"])
    snapshots: dict[str, dict] = {}

    def snapshot(tag: str) -> None:
        pids = common.postgres_pids(args.admin_dsn, dbname, background=False)
        snapshots[tag] = {
            "at": time.monotonic(), "cpu": time.process_time(),
            "counts": common.COUNTERS.snapshot(),
            "server": common.server_snapshot(args.admin_dsn, dbname),
            "session_pids": pids, "session_cpu": common.pids_cpu_s(pids),
            "threads": threading.active_count(), "rss_mb": common.rss_mb()}
        if "start" in snapshots and tag != "start":
            snapshots[tag]["start_sessions_cpu"] = common.pids_cpu_s(
                snapshots["start"]["session_pids"])

    def timeline() -> None:
        time.sleep(args.settle)
        snapshot("start")
        time.sleep(args.window)
        snapshot("end")
        os.kill(os.getpid(), signal.SIGTERM)  # the CLI's handler stops the worker

    threading.Thread(target=timeline, daemon=True).start()
    code = cli.main(["worker", "--concurrency", "4"])
    a, b = snapshots["start"], snapshots["end"]
    seconds = b["at"] - a["at"]
    counts = {k: b["counts"][k] - a["counts"][k] for k in a["counts"]}
    commits = b["server"]["xact_commit"] - a["server"]["xact_commit"]
    pids = a["session_pids"]
    common.emit({
        "exit_code": code, "seconds": round(seconds, 2),
        "statements_per_s": round(counts["statements"] / seconds, 3),
        "round_trips_per_s": round(counts["round_trips"] / seconds, 3),
        "commits_per_s": round(commits / seconds, 3),
        "cpu_percent": round((b["cpu"] - a["cpu"]) / seconds * 100, 3),
        "server_sessions": len(pids),
        "server_cpu_percent": round(
            (b["start_sessions_cpu"] - a["session_cpu"]) / seconds * 100, 3),
        "threads": b["threads"], "rss_mb": b["rss_mb"],
    })


if __name__ == "__main__":
    main()
