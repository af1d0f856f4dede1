"""CPOA's performance harness: CPOA, its ceiling and its peers, in one run, on one server.

    python -m bench.run            # full: N = 5 000, ≈ 9 minutes on 2 cores
    python -m bench.run --quick    # N = 300, backlog up to 10k, < 3 minutes

Prints a results table, then one JSON line per scenario (``{"scenario": …}``) with its figures,
its ratios to the references measured in this same run, and pass/fail per target. Every scenario
gets a fresh database (``CREATE DATABASE``, CPOA's schema via ``PostgresStore.apply_schema``);
each CPOA worker runs in its own process. See bench/README.md for what is measured and how.

Installs what it needs on first use (``--no-install`` to refuse): the peers (DBOS Transact,
PgQueuer, psutil) into their own virtualenv (``--peer-venv``), and py-spy into this one.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import time
from typing import Any


from bench.scenarios import backlog, common, pgbench, team, waiters
from bench.scenarios.common import Agent, run_module
from bench.scenarios import profile as profiling

REPO = common.REPO
PY = sys.executable
PEER_PACKAGES = ["dbos", "pgqueuer", "psutil"]
DEFAULT_PEER_VENV = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")
                                 ) / "cpoa-bench" / "peers-venv"


# -- setup -----------------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ensure_tools(args: argparse.Namespace) -> None:
    """The peers' virtualenv and py-spy, installed when missing (unless --no-install)."""
    peer_python = pathlib.Path(args.peer_venv) / "bin" / "python"
    if not args.no_peers:
        ok = peer_python.exists() and subprocess.run(
            [str(peer_python), "-c", "import dbos, pgqueuer, psutil"],
            capture_output=True, check=False).returncode == 0
        if not ok:
            if args.no_install:
                sys.exit(f"peers missing in {args.peer_venv}: run without --no-install")
            log(f"installing {' '.join(PEER_PACKAGES)} into {args.peer_venv}")
            subprocess.run([sys.executable, "-m", "venv", args.peer_venv], check=True)
            subprocess.run([str(peer_python), "-m", "pip", "install", "-q", *PEER_PACKAGES],
                           check=True)
    args.peer_python = str(peer_python)
    args.py_spy = shutil.which("py-spy") or str(pathlib.Path(PY).parent / "py-spy")
    has_psutil = importlib.util.find_spec("psutil") is not None
    if not os.path.exists(args.py_spy) or not has_psutil:
        if args.no_install:
            if not has_psutil:
                sys.exit("psutil missing in this virtualenv: run without --no-install")
            args.py_spy = None
            return
        log("installing py-spy and psutil into this virtualenv")
        subprocess.run([PY, "-m", "pip", "install", "-q", "py-spy", "psutil"], check=True)
        args.py_spy = str(pathlib.Path(PY).parent / "py-spy")


# -- scenarios -------------------------------------------------------------------------------

def make_template(admin: str, n: int) -> str:
    """A database with the schema and ``n`` podcast workflows started with
    ``Engine.start_workflow`` and then spread evenly over the six working states
    (``backlog.stagger``), to copy per scenario."""
    name = common.new_name("template")
    dsn = common.create_db(admin, name, schema=True)
    seconds = common.start_podcasts(dsn, n)
    states = backlog.stagger(dsn, backlog.sample_context(dsn))
    backlog.vacuum_analyze(dsn)
    log(f"template {name}: {n} workflows started in {seconds:.1f} s, staggered: {states}")
    common.wait_no_backends(admin, name)
    return name


def engine_runs(args: argparse.Namespace, template: str) -> list[dict[str, Any]]:
    results = []
    for slots in args.slots:
        with common.fresh_db(args.dsn, f"engine{slots}", template=template) as dsn:
            log(f"engine: {args.n} workflows, {slots} slot(s), instant in-process "
                f"client")
            result = run_module("bench.scenarios.engine", "--admin-dsn", args.dsn, "--dsn", dsn,
                                "--slots", str(slots), "--client", "instant",
                                "--max-seconds", str(args.max_seconds))
        results.append(result)
    return results


def http_run(args: argparse.Namespace, template: str) -> tuple[dict, dict | None]:
    agent = Agent("sync")
    try:
        with common.fresh_db(args.dsn, "http", template=template) as dsn:
            log(f"http: {args.n} workflows, 4 slots, ScriptedAgent(sync=True) in pid {agent.pid}")
            result = run_module("bench.scenarios.engine", "--admin-dsn", args.dsn, "--dsn", dsn,
                                "--slots", "4", "--client", "http", "--agent-url", agent.url,
                                "--agent-pid", str(agent.pid),
                                "--max-seconds", str(args.max_seconds))
        profile = None
        if args.py_spy:
            profile = profiled_run(args, template, "httpprof", "--client", "http",
                                   "--agent-url", agent.url)
    finally:
        agent.close()
    return result, profile


def profiled_run(args: argparse.Namespace, template: str, tag: str,
                 *argv: str) -> dict[str, Any]:
    """A shorter run of the 4-slot worker under ``py-spy record --gil``, summarised."""
    with common.fresh_db(args.dsn, tag, template=template) as dsn:
        seconds = max(6.0, args.max_seconds / 3)
        log(f"{tag}: the same under py-spy for {seconds:.0f} s")
        raw = pathlib.Path(args.scratch) / f"{tag}.txt"
        profiled = run_module(
            "bench.scenarios.engine", "--admin-dsn", args.dsn, "--dsn", dsn, "--slots", "4",
            "--max-seconds", str(seconds), *argv,
            prefix=[args.py_spy, "record", "--gil", "-r", "200", "--nonblocking", "-f", "raw",
                    "-o", str(raw), "--"])
    profile = profiling.summarise(raw.read_text())
    profile["transitions_per_s_profiled"] = profiled["transitions_per_s"]
    # The share of the run in which some worker thread held the GIL (200 samples a second).
    profile["gil_busy_share"] = round(profile["samples"] / (200 * profiled["wall_seconds"]), 2)
    profile["raw_file"] = str(raw)
    return profile


def pgbench_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    log(f"pgbench: clients {args.slots}, {args.pgbench_s:g} s each")
    return pgbench.run(args.dsn, args.slots, args.pgbench_s)


def dbos_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for threads in args.slots:
        with common.fresh_db(args.dsn, f"dbos{threads}") as dsn:
            log(f"dbos: {args.n} workflows of 6 no-op steps on {threads} thread(s)")
            results.append(run_module(
                "bench.peers.dbos_bench", "--admin-dsn", args.dsn, "--dsn", dsn,
                "-n", str(args.n), "--threads", str(threads),
                "--max-seconds", str(args.max_seconds), python=args.peer_python))
    return results


def pgqueuer_run(args: argparse.Namespace) -> dict[str, Any]:
    with common.fresh_db(args.dsn, "pgqueuer") as dsn:
        log(f"pgqueuer: {args.n * 6} no-op jobs")
        return run_module("bench.peers.pgqueuer_bench", "--admin-dsn", args.dsn, "--dsn", dsn,
                          "--jobs", str(args.n * 6), "--max-seconds", str(args.max_seconds),
                          python=args.peer_python)


def backlog_run(args: argparse.Namespace) -> dict[str, Any]:
    levels = []
    with common.fresh_db(args.dsn, "backlog", schema=True) as dsn:
        context = backlog.sample_context(dsn)
        started = time.monotonic()
        backlog.insert_finished(dsn, args.finished, context)
        log(f"backlog: {args.finished} finished workflows inserted in "
            f"{time.monotonic() - started:.1f} s")
        due = 0
        for level in args.levels:
            backlog.insert_due(dsn, level - due, context)
            due = level
            backlog.vacuum_analyze(dsn)
            rows = backlog.counts(dsn)
            log(f"backlog: {rows['due']} due, {rows['finished']} finished; "
                f"{args.backlog_actions} step actions on 4 slots")
            result = run_module("bench.scenarios.engine", "--admin-dsn", args.dsn, "--dsn", dsn,
                                "--slots", "4", "--client", "instant",
                                "--stop-after", str(args.backlog_actions))
            plans = backlog.plans(dsn)
            levels.append({
                "due": rows["due"], "finished": rows["finished"], "rows": rows,
                "claim_ms_p50": result["claim_ms_p50"], "claim_ms_p99": result["claim_ms_p99"],
                "finish_ms_p50": result["finish_ms_p50"], "finish_ms_p99": result["finish_ms_p99"],
                "completing_finish_ms_p50": result["completing_finish_ms_p50"],
                "completing_finish_ms_p99": result["completing_finish_ms_p99"],
                "transitions_per_s": result["transitions_per_s"],
                "rss_mb": result["rss_mb"], "rss_mb_peak": result["rss_mb_peak"],
                "claim_plan": plans["claim_due"],
                "claim_plan_seq_scan": bool(GROWING_SCAN.search(plans["claim_due"])),
                "requeue_dead_leases_plan": plans["requeue_dead_leases"],
                "touch_idempotency_key_plan": plans["touch_idempotency_key"]})
            # Keep the backlog at its level: the step actions moved workflows on (still due).
    return {"levels": levels}


def idle_run(args: argparse.Namespace) -> dict[str, Any]:
    with common.fresh_db(args.dsn, "idle", schema=True) as dsn:
        log(f"idle: cpoa worker --concurrency 4, {args.idle_settle:g} s settle + "
            f"{args.idle_window:g} s window")
        return run_module("bench.scenarios.idle", "--admin-dsn", args.dsn,
                          "--settle", str(args.idle_settle), "--window", str(args.idle_window),
                          env={"CPOA_DATABASE_URL": dsn, "DB_POOL_MAX_CONN": "6"})


def idle_watching_run(args: argparse.Namespace) -> dict[str, Any]:
    """The idle cost of a worker while another worker holds a lease (inside a 60 s request):
    it looks for dead leases every RECOVERY_CHECK_S."""
    agent = Agent("slow")
    try:
        with common.fresh_db(args.dsn, "idlewatch", schema=True) as dsn:
            env = {**os.environ, **common.agent_env(agent.url), "CPOA_DATABASE_URL": dsn}
            env.pop("CPOA_LEASE_TTL_SECONDS")  # the default lease
            holder = subprocess.Popen([PY, "-m", "cpoa.cli", "worker"], cwd=REPO, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                common.start_podcasts(dsn, 1)
                common.wait_for(lambda: common.leases_held(dsn) == 1, timeout=30)
                log(f"idle while another worker holds a lease: cpoa worker --concurrency 4, "
                    f"{args.idle_settle:g} s settle + {args.idle_window:g} s window")
                result = run_module("bench.scenarios.idle", "--admin-dsn", args.dsn,
                                    "--settle", str(args.idle_settle),
                                    "--window", str(args.idle_window),
                                    env={"CPOA_DATABASE_URL": dsn, "DB_POOL_MAX_CONN": "6"})
                result["lease_held_throughout"] = common.leases_held(dsn) == 1
                return result
            finally:
                holder.kill()
                holder.wait()
    finally:
        agent.close()


def recovery_run(args: argparse.Namespace) -> dict[str, Any]:
    with common.fresh_db(args.dsn, "recovery", schema=True) as dsn:
        log(f"recovery: {args.recovery_kills} SIGKILLs of a worker inside 2 s agent requests, "
            f"a survivor running all along, default settings")
        return run_module("bench.scenarios.recovery", "--dsn", dsn,
                          "--kills", str(args.recovery_kills))


def latency_run(args: argparse.Namespace) -> dict[str, Any]:
    agent = Agent("timed")
    try:
        with common.fresh_db(args.dsn, "latency", schema=True) as dsn:
            log(f"latency: {args.latency_n} workflows, agents finishing 0.25–0.65 s after "
                f"submit, poll interval 0.2 s")
            return run_module("bench.scenarios.latency", "--admin-dsn", args.dsn, "--dsn", dsn,
                              "--agent-url", agent.url, "-n", str(args.latency_n),
                              "--poll-s", "0.2")
    finally:
        agent.close()


CALLBACK_RUNS = (("callbacks", "callbacks", 0.0, 0), ("callbacks_paced", "callbacks", 0.2, 0),
                 ("callbacks_storm", "callbacks", 0.2, 10_000), ("polling", "polling", 0.0, 0))
"""(name, mode, start one workflow every s, forged or duplicate callbacks sent meanwhile):
0 s starts all at once (a burst of finishes)."""


def callback_runs(args: argparse.Namespace) -> dict[str, Any]:
    """Default polling intervals, agents finishing within the first second: with callbacks
    through a gateway (a burst, then paced starts), and with adaptive polling alone (a fresh
    agent and database each)."""
    runs = {}
    for name, mode, every_s, storm in CALLBACK_RUNS:
        agent = Agent("timed")
        try:
            with common.fresh_db(args.dsn, f"cb{name[:4]}", schema=True) as dsn:
                log(f"{name}: {args.latency_n} workflows "
                    f"{f'started every {every_s} s' if every_s else 'started at once'}, "
                    f"default polling intervals, agents finishing 0.25–0.65 s after submit")
                runs[name] = run_module("bench.scenarios.callback", "--dsn", dsn,
                                        "--agent-url", agent.url, "--mode", mode,
                                        "-n", str(args.latency_n), "--every-s", str(every_s),
                                        "--storm", str(storm))
        finally:
            agent.close()
    return runs


# -- judging ---------------------------------------------------------------------------------

def target(name: str, value: Any, bound: str, ok: bool | None) -> dict[str, Any]:
    return {"target": name, "value": value, "bound": bound,
            "pass": ok}


def judge(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Every scenario's JSON document, with ratios and pass/fail per target."""
    docs = []
    pg = {p["clients"]: p for p in r.get("pgbench", [])}
    dbos = {d["threads"]: d for d in r.get("dbos", [])}
    for e in r.get("engine", []):
        c = e["slots"]
        targets = []
        ratios = {}
        if c in dbos:
            ratio = e["transitions_per_s"] / dbos[c]["steps_per_s"]
            ratios["cpoa_over_dbos_steps"] = round(ratio, 2)
            targets.append(target(f"transitions/s >= 3x DBOS steps/s ({c} thread(s))",
                                  round(ratio, 2), ">= 3.0", ratio >= 3.0))
        if c in pg:
            ratio = e["transitions_per_s"] / pg[c]["tps"]
            ratios["cpoa_over_pgbench"] = round(ratio, 3)
            targets.append(target(f"transitions/s >= 40% of pgbench tps ({c} client(s))",
                                  round(ratio, 3), ">= 0.40", ratio >= 0.40))
        targets.append(target("worker RSS < 150 MB", e["rss_mb_peak"], "< 150",
                              e["rss_mb_peak"] < 150))
        doc = {"scenario": f"engine_{c}_slots", **e, "ratios": ratios, "targets": targets}
        if c == 4 and r.get("engine_profile"):
            doc["profile"] = r["engine_profile"]
        docs.append(doc)
    for p in r.get("pgbench", []):
        docs.append({"scenario": f"pgbench_{p['clients']}_clients", **p, "targets": []})
    for d in r.get("dbos", []):
        docs.append({"scenario": f"dbos_{d['threads']}_threads", **d, "targets": []})
    if r.get("pgqueuer"):
        q = r["pgqueuer"]
        best = max((e["transitions_per_s"] for e in r.get("engine", [])), default=None)
        docs.append({"scenario": "pgqueuer", **q, "targets": [],
                     "ratios": {"cpoa_best_over_pgqueuer_jobs": round(best / q["jobs_per_s"], 2)}
                     if best else {}})
    if r.get("http"):
        h = r["http"]
        ratios = {}
        if 4 in dbos:
            ratios["cpoa_http_over_dbos_steps"] = round(h["transitions_per_s"]
                                                        / dbos[4]["steps_per_s"], 2)
        if 4 in pg:
            ratios["cpoa_http_over_pgbench"] = round(h["transitions_per_s"] / pg[4]["tps"], 3)
        docs.append({"scenario": "http_4_slots", **h, "ratios": ratios, "profile": r.get("profile"),
                     "targets": [target("through HTTP >= 500 transitions/s",
                                        h["transitions_per_s"], ">= 500",
                                        h["transitions_per_s"] >= 500),
                                 target("worker RSS < 150 MB", h["rss_mb_peak"], "< 150",
                                        h["rss_mb_peak"] < 150)]})
    if r.get("backlog"):
        levels = r["backlog"]["levels"]
        first, last = levels[0], levels[-1]
        claim_growth = (last["claim_ms_p99"] / first["claim_ms_p99"]
                        if first["claim_ms_p99"] else None)
        rss_growth = last["rss_mb_peak"] / first["rss_mb_peak"]
        span = f"{first['due']} -> {last['due']} due"
        docs.append({"scenario": "backlog", **r["backlog"], "targets": [
            target(f"claim p99 grows < 2x ({span})", round(claim_growth, 2), "< 2.0",
                   claim_growth is not None and claim_growth < 2.0),
            target(f"worker RSS grows < 2x ({span})", round(rss_growth, 2), "< 2.0",
                   rss_growth < 2.0),
            target("worker RSS < 150 MB", max(x["rss_mb_peak"] for x in levels), "< 150",
                   max(x["rss_mb_peak"] for x in levels) < 150),
            target("claim_due plan scans no table that grows with the workflows", not any(x["claim_plan_seq_scan"]
                                                               for x in levels), "true",
                   not any(x["claim_plan_seq_scan"] for x in levels))]})
    if r.get("idle"):
        i = r["idle"]
        docs.append({"scenario": "idle", **i, "targets": [
            target("idle statements/s <= 1", i["statements_per_s"], "<= 1",
                   i["statements_per_s"] <= 1),
            target("idle commits/s on the server <= 1", i["commits_per_s"], "<= 1",
                   i["commits_per_s"] <= 1),
            target("idle CPU < 1 %", i["cpu_percent"], "< 1", i["cpu_percent"] < 1)]})
    if r.get("idle_watching"):
        w = r["idle_watching"]
        docs.append({"scenario": "idle_while_another_worker_holds_a_lease", **w, "targets": [
            target("statements/s of an idle worker while another holds a lease <= 3 (one "
                   "sweep per RECOVERY_CHECK_S 0.5 s, plus the idle allowance of 1)",
                   w["statements_per_s"], "<= 3",
                   w["statements_per_s"] <= 3 and w["lease_held_throughout"])]})
    if r.get("recovery"):
        rc = r["recovery"]
        docs.append({"scenario": "recovery", **rc, "targets": [
            target("kill -> survivor's resubmit p99 <= 1 s (default settings)",
                   rc["resume_s_p99"], "<= 1.0",
                   rc["resume_s_p99"] is not None and rc["resume_s_p99"] <= 1.0
                   and rc["kills_resumed"] == rc["kills"] == rc["kills_planned"]),
            target("recovery: duplicate work (every submit counted)", rc["duplicate_work"],
                   "= 0", rc["duplicate_work"] == 0),
            target("recovery: workflows completed", rc["completed"], f"= {rc['workflows']}",
                   rc["completed"] == rc["workflows"])]})
    if r.get("latency"):
        lat = r["latency"]
        docs.append({"scenario": "agent_finish_to_next_state", **lat, "targets": [
            target("max delay <= poll interval + 50 ms", lat["delay_ms_max"],
                   f"<= {lat['bound_ms']}", lat["delay_ms_max"] is not None
                   and lat["delay_ms_max"] <= lat["bound_ms"])]})
    if r.get("callbacks"):
        for name in ("callbacks", "callbacks_paced", "callbacks_storm"):
            cb = r["callbacks"][name]
            docs.append({"scenario": f"{name}_default_intervals", **cb, "targets": [
                target(f"{name}, default intervals: agent finish -> next state p99 <= 50 ms",
                       cb["delay_ms_p99"], "<= 50", cb["delay_ms_p99"] is not None
                       and cb["delay_ms_p99"] <= 50)]})
        st = r["callbacks"]["callbacks_storm"]
        docs[-1]["targets"].append(target(
            "storm: no forged or replayed callback accepted, every workflow completed",
            st["states"], f"completed = {st['workflows']}",
            st["states"] == {"completed": st["workflows"]}
            and st["storm_answers"].get("202", 0) == 0))
        po = r["callbacks"]["polling"]
        docs.append({"scenario": "adaptive_polling_default_intervals", **po, "targets": [
            target("no callbacks: delay p99 <= 25 % of the interval (tasks done within 1 s)",
                   po["fraction_of_interval_p99"], "<= 0.25",
                   po["fraction_of_interval_p99"] <= 0.25),
            target("no callbacks: polls per task <= 2x a fixed interval's",
                   po["polls_per_task_max"], f"<= {2 * po['polls_per_task_fixed_interval']}",
                   po["polls_per_task_max"] is not None
                   and po["polls_per_task_max"] <= 2 * po["polls_per_task_fixed_interval"])]})
    if r.get("waiters"):
        docs.append(waiters.judge(r["waiters"]))
    if r.get("team"):
        docs.append(team.judge(r["team"]))
    return docs


# -- output ----------------------------------------------------------------------------------

def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(r: dict[str, Any], docs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results as Markdown tables (also pasted into bench/README.md)."""
    lines = [(f"Run {meta['date']} on {meta['machine']}; PostgreSQL {meta['server']}; "
             f"N = {meta['n']} workflows{' (quick)' if meta['quick'] else ''}; "
             f"load average at start {meta['load_start']}, at end {meta['load_end']}."), ""]
    pg = {p["clients"]: p for p in r.get("pgbench", [])}
    dbos = {d["threads"]: d for d in r.get("dbos", [])}
    if r.get("engine"):
        lines += ["| CPOA, instant in-process agent | " + " | ".join(
            f"{e['slots']} slot{'s' if e['slots'] > 1 else ''}" for e in r["engine"]) + " |",
            "|---|" + "---:|" * len(r["engine"])]
        rows = [
            ("transitions/s", lambda e: e["transitions_per_s"]),
            ("workflows/s (= transitions/s ÷ 6)", lambda e: e["workflows_per_s"]),
            ("transitions done in s (drained all?)",
             lambda e: f"{e['transitions']:,} in {e['seconds']:.0f} ({fmt(e['drained'])})"),
            ("step action (Engine.step) p50 / p99 ms",
             lambda e: f"{fmt(e['run_ms_p50'])} / {fmt(e['run_ms_p99'])}"),
            ("claim_due p50 / p99 ms", lambda e: f"{fmt(e['claim_ms_p50'])} / "
                                                 f"{fmt(e['claim_ms_p99'])}"),
            ("finish p50 / p99 ms", lambda e: f"{fmt(e['finish_ms_p50'])} / "
                                              f"{fmt(e['finish_ms_p99'])}"),
            ("round trips / transition", lambda e: e["round_trips_per_transition"]),
            ("SQL statements / transition", lambda e: e["statements_per_transition"]),
            ("commits / transition (server)", lambda e: e["commits_per_transition"]),
            ("rows written / transition (server)", lambda e: e["tuples_written_per_transition"]),
            ("WAL bytes / transition", lambda e: e["wal_bytes_per_transition"]),
            ("of which full-page images / transition",
             lambda e: e["wal_full_page_images_per_transition"]),
            ("worker CPU ms / transition", lambda e: e["worker_cpu_ms_per_transition"]),
            ("PostgreSQL CPU ms / transition", lambda e: e["postgres_cpu_ms_per_transition"]),
            ("worker RSS peak MB", lambda e: e["rss_mb_peak"]),
            ("checkpoints during the run (server-wide)", lambda e: e["checkpoints_during_run"]),
            ("load average (1 min) after the run", lambda e: e.get("load_1min_after")),
            ("pgbench tps (same clients)", lambda e: pg.get(e["slots"], {}).get("tps")),
            ("**CPOA / pgbench** (target ≥ 0.40)",
             lambda e: e["transitions_per_s"] / pg[e["slots"]]["tps"] if e["slots"] in pg
             else None),
            ("DBOS steps/s (same threads)",
             lambda e: dbos.get(e["slots"], {}).get("steps_per_s")),
            ("**CPOA / DBOS** (target ≥ 3)",
             lambda e: e["transitions_per_s"] / dbos[e["slots"]]["steps_per_s"]
             if e["slots"] in dbos else None),
        ]
        for label, get in rows:
            lines.append(f"| {label} | " + " | ".join(fmt(get(e)) for e in r["engine"]) + " |")
        lines.append("")
    if r.get("pgbench") or r.get("dbos"):
        lines += ["| reference | " + " | ".join(f"{c}" for c in r_slots(r)) + " |",
                  "|---|" + "---:|" * len(r_slots(r))]
        if r.get("pgbench"):
            lines.append("| pgbench tps (clients) | " + " | ".join(
                fmt(pg.get(c, {}).get("tps")) for c in r_slots(r)) + " |")
            lines.append("| pgbench WAL bytes / transaction | " + " | ".join(
                fmt(pg.get(c, {}).get("wal_bytes_per_transaction")) for c in r_slots(r)) + " |")
            lines.append("| pgbench checkpoints during the run | " + " | ".join(
                fmt(pg.get(c, {}).get("checkpoints_during_run")) for c in r_slots(r)) + " |")
            lines.append("| pgbench full-page images / transaction | " + " | ".join(
                fmt(pg.get(c, {}).get("wal_full_page_images_per_transaction"))
                for c in r_slots(r)) + " |")
        if r.get("dbos"):
            lines.append("| DBOS workflows/s (threads) | " + " | ".join(
                fmt(dbos.get(c, {}).get("workflows_per_s")) for c in r_slots(r)) + " |")
            lines.append("| DBOS steps/s | " + " | ".join(
                fmt(dbos.get(c, {}).get("steps_per_s")) for c in r_slots(r)) + " |")
            lines.append("| DBOS round trips / step | " + " | ".join(
                fmt(dbos.get(c, {}).get("round_trips_per_step")) for c in r_slots(r)) + " |")
            lines.append("| DBOS commits / step | " + " | ".join(
                fmt(dbos.get(c, {}).get("commits_per_step")) for c in r_slots(r)) + " |")
            lines.append("| DBOS CPU ms / step | " + " | ".join(
                fmt(dbos.get(c, {}).get("cpu_ms_per_step")) for c in r_slots(r)) + " |")
        lines.append("")
        if r.get("pgqueuer"):
            q = r["pgqueuer"]
            lines += [(f"PgQueuer {q['version']}: {fmt(q['jobs_per_s'])} no-op jobs/s "
                      f"({q['jobs']:,} jobs, one QueueManager, batch 10)."), ""]
    if r.get("http"):
        h = r["http"]
        lines += ["| CPOA through HTTP (4 slots, ScriptedAgent(sync=True) in its own process) | |",
                  "|---|---:|",
                  f"| transitions/s (target ≥ 500) | {fmt(h['transitions_per_s'])} |",
                  (f"| step action p50 / p99 ms | {fmt(h['run_ms_p50'])} / "
                  f"{fmt(h['run_ms_p99'])} |"),
                  f"| worker CPU ms / transition | {fmt(h['worker_cpu_ms_per_transition'])} |",
                  f"| agent CPU ms / transition | {fmt(h['agent_cpu_ms_per_transition'])} |",
                  (f"| PostgreSQL CPU ms / transition | "
                  f"{fmt(h['postgres_cpu_ms_per_transition'])} |"),
                  f"| round trips / transition | {fmt(h['round_trips_per_transition'])} |",
                  f"| worker RSS peak MB | {fmt(h['rss_mb_peak'])} |", ""]
        if r.get("profile"):
            lines += profile_lines(r["profile"], "through HTTP, 4 slots")
    if r.get("engine_profile"):
        lines += profile_lines(r["engine_profile"], "instant in-process agent, 4 slots")
    if r.get("backlog"):
        lv = r["backlog"]["levels"]
        lines += ["| backlog: due / finished | " + " | ".join(
            f"{x['due']:,} / {x['finished']:,}" for x in lv) + " |", "|---|" + "---:|" * len(lv)]
        for label, key in (("claim_due p50 ms", "claim_ms_p50"), ("claim_due p99 ms",
                                                                  "claim_ms_p99"),
                           ("finish p50 ms", "finish_ms_p50"), ("finish p99 ms", "finish_ms_p99"),
                           ("finish → completed p50 ms", "completing_finish_ms_p50"),
                           ("finish → completed p99 ms", "completing_finish_ms_p99"),
                           ("transitions/s (4 slots)", "transitions_per_s"),
                           ("worker RSS peak MB", "rss_mb_peak"),
                           ("claim plan scans workflow_instances or task_instances whole",
                            "claim_plan_seq_scan")):
            lines.append(f"| {label} | " + " | ".join(fmt(x[key]) for x in lv) + " |")
        lines.append("")
    if r.get("idle"):
        lines += [idle_line(r["idle"], ""), ""]
    if r.get("idle_watching"):
        lines += [idle_line(r["idle_watching"], " while another worker holds a lease (default "
                            "settings: it looks for dead leases every RECOVERY_CHECK_S, 0.5 s),"),
                  ""]
    if r.get("recovery"):
        rc = r["recovery"]
        lines += [(f"Recovery, default settings (lease TTL {fmt(rc['lease_ttl_s'])} s, recovery "
                  f"check {rc['recovery_check_s']} s; non-default: "
                  f"{rc['non_default_settings'] or 'none'}): {rc['kills']} SIGKILLs of a worker "
                  f"inside {rc['answer_s']:g} s agent requests, a survivor running all along. "
                  f"Kill → survivor's resubmit at the agent p50 {fmt(rc['resume_s_p50'])} s, "
                  f"p99 {fmt(rc['resume_s_p99'])} s, max {fmt(rc['resume_s_max'])} s; "
                  f"{rc['completed']}/{rc['workflows']} completed; duplicate work "
                  f"{rc['duplicate_work']} ({rc['submits']} submits over {rc['work_keys']} keys, "
                  f"{rc['resubmits_excused']} resubmits of interrupted keys)."), ""]
    if r.get("latency"):
        lat = r["latency"]
        lines += [(f"Agent finish → next state (poll interval {lat['poll_s']} s, "
                  f"{lat['samples']} polled steps): p50 {fmt(lat['delay_ms_p50'])} ms, "
                  f"p99 {fmt(lat['delay_ms_p99'])} ms, max {fmt(lat['delay_ms_max'])} ms "
                  f"(bound {lat['bound_ms']} ms)."), ""]
    if r.get("callbacks"):
        for mode, run in r["callbacks"].items():
            start = (f"one started every {run['start_every_s']:g} s" if run["start_every_s"]
                     else "all started at once")
            lines += [(f"Default polling intervals, {mode} ({run['workflows']} workflows, "
                       f"{start}; {run['samples']} polled steps, tasks done 0.25–0.65 s "
                       f"after submit): agent finish → next state p50 "
                       f"{fmt(run['delay_ms_p50'])} ms, p99 {fmt(run['delay_ms_p99'])} ms, max "
                       f"{fmt(run['delay_ms_max'])} ms; p99 {fmt(run['fraction_of_interval_p99'])}"
                       f" of the interval; polls per task mean "
                       f"{fmt(run['polls_per_task_mean'])}, max {run['polls_per_task_max']}."
                       + (f" Storm: {run['storm_sent']:,} callbacks sent in "
                          f"{run['storm_seconds']} s (forged, forged for open tasks, replays of "
                          f"finished tasks' valid URLs), "
                          f"answers {run['storm_answers']}; gateway CPU "
                          f"{run['gateway_cpu_s']} s, worker CPU {run['worker_cpu_s']} s."
                          if run.get("storm_sent") else "")),
                      ""]
    if r.get("waiters"):
        lines += waiters.table_lines(r["waiters"], fmt)
    if r.get("team"):
        lines += team.table_lines(r["team"], fmt)
    lines += ["| target | value | bound | result |", "|---|---:|---:|---|"]
    for doc in docs:
        for t in doc.get("targets", []):
            lines.append(f"| {t['target']} | {fmt(t['value'])} | {t['bound']} | "
                         f"{'PASS' if t['pass'] else 'FAIL'} |")
    return "\n".join(lines)


def idle_line(i: dict[str, Any], when: str) -> str:
    """One sentence on an idle worker's cost; ``when``: the circumstance, if any."""
    return (f"Idle `cpoa worker --concurrency 4`{when} over {i['seconds']:.0f} s: "
            f"{fmt(i['statements_per_s'])} statements/s, {fmt(i['round_trips_per_s'])} "
            f"round trips/s, {fmt(i['commits_per_s'])} commits/s on the server, "
            f"CPU {i['cpu_percent']:.2f} % of a core (its server sessions "
            f"{i['server_cpu_percent']:.2f} %), RSS {fmt(i['rss_mb'])} MB.")


def profile_lines(p: dict[str, Any], what: str) -> list[str]:
    lines = [(f"Worker profile, {what} (py-spy --gil: {p['samples']:,} samples of the thread "
             f"holding the GIL, which was held {p['gil_busy_share']:.0%} of the time; "
             f"{fmt(p['transitions_per_s_profiled'])} transitions/s while profiled):"), "", "| where the worker's Python time goes (by layer) | share |",
             "|---|---:|"]
    lines += [f"| {name} | {share:.0%} |" for name, share in p["layers"][:8]]
    lines += ["", "| top 5 functions (self time) | share |", "|---|---:|"]
    lines += [f"| `{name}` | {share:.0%} |" for name, share in p["self"][:5]]
    lines += ["", "| top 5 CPOA functions (inclusive) | share |", "|---|---:|"]
    lines += [f"| `{name}` | {share:.0%} |" for name, share in p["cpoa_inclusive"][:5]]
    return lines + [""]


def r_slots(r: dict[str, Any]) -> list[int]:
    return sorted({*(p["clients"] for p in r.get("pgbench", [])),
                   *(d["threads"] for d in r.get("dbos", []))})


# -- main ------------------------------------------------------------------------------------

GROWING_SCAN = re.compile(r"Seq Scan on (workflow_instances|task_instances)\b")
"""A claim must not read the tables that grow with the workflows whole. agent_slots (at most the
caps' sum of rows; the claim reads the slots a workflow holds) is scanned when nearly empty,
which is cheaper than its index."""

SCENARIOS = ("engine", "pgbench", "dbos", "pgqueuer", "http", "backlog", "idle", "latency",
             "callbacks", "recovery", "waiters", "team")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("CPOA_BENCH_DSN", common.DEFAULT_DSN),
                        help="an administrative connection string of the server "
                             "[CPOA_BENCH_DSN, else %(default)s]")
    parser.add_argument("--quick", action="store_true", help="N=300, backlog up to 10k")
    parser.add_argument("-n", "--n", type=int, help="workflows per run [5000; quick 300]")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--max-seconds", type=float,
                        help="stop a throughput run (CPOA or peer) after this long and rate "
                             "what was done [45; quick 15; 0 = drain all]")
    parser.add_argument("--no-peers", action="store_true", help="skip DBOS and PgQueuer")
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--peer-venv", default=str(DEFAULT_PEER_VENV))
    parser.add_argument("--drop-leftovers", action="store_true",
                        help=f"first drop every database named {common.PREFIX}* (left by an "
                             "interrupted run; do not use while another run is going on)")
    parser.add_argument("--json-out", help="also write every result to this JSON file")
    parser.add_argument("--markdown-out", help="also write the tables to this file")
    args = parser.parse_args()
    quick = args.quick
    args.n = args.n or (300 if quick else 5000)
    if args.max_seconds is None:
        args.max_seconds = 15.0 if quick else 45.0
    args.slots = [1, 2, 4]
    args.pgbench_s = 4 if quick else 10
    args.levels = [1000, 10000] if quick else [1000, 10000, 100000]
    args.finished = 10000 if quick else 100000
    args.backlog_actions = 500 if quick else 1000
    args.idle_settle, args.idle_window = (3.0, 8.0) if quick else (11.0, 20.0)
    args.latency_n = 10 if quick else 20
    args.recovery_kills = 5 if quick else 20
    chosen = set(args.only.split(",")) if args.only else set(SCENARIOS)
    if args.no_peers:
        chosen -= {"dbos", "pgqueuer"}
    unknown = chosen - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}")
    args.no_peers = not (chosen & {"dbos", "pgqueuer"})
    ensure_tools(args)
    args.scratch = str(pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "cpoa-bench")
    os.makedirs(args.scratch, exist_ok=True)

    began = time.monotonic()
    with common.psycopg.connect(args.dsn, autocommit=True) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('synchronous_commit', "
            "'autovacuum', 'shared_buffers', 'fsync', 'full_page_writes')").fetchall())
    meta = {"date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
            "machine": f"{os.cpu_count()} cores, {platform.platform()}",
            "server": server, "server_settings": settings, "n": args.n, "quick": quick,
            "max_seconds": args.max_seconds,
            "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    if args.drop_leftovers:
        common.drop_leftovers(args.dsn)
    results: dict[str, Any] = {}
    template = None
    try:
        if chosen & {"engine", "http"}:
            template = make_template(args.dsn, args.n)
        if "engine" in chosen:
            results["engine"] = engine_runs(args, template)
            if args.py_spy:
                results["engine_profile"] = profiled_run(args, template, "engineprof",
                                                         "--client", "instant")
        if "pgbench" in chosen:
            results["pgbench"] = pgbench_runs(args)
        if "dbos" in chosen:
            results["dbos"] = dbos_runs(args)
        if "pgqueuer" in chosen:
            results["pgqueuer"] = pgqueuer_run(args)
        if "http" in chosen:
            results["http"], results["profile"] = http_run(args, template)
        if "backlog" in chosen:
            results["backlog"] = backlog_run(args)
        if "idle" in chosen:
            results["idle"] = idle_run(args)
            results["idle_watching"] = idle_watching_run(args)
        if "latency" in chosen:
            results["latency"] = latency_run(args)
        if "callbacks" in chosen:
            results["callbacks"] = callback_runs(args)
        if "recovery" in chosen:
            results["recovery"] = recovery_run(args)
        if "waiters" in chosen:
            results["waiters"] = waiters.run(args.dsn, quick=quick, log=log)
        if "team" in chosen:
            results["team"] = team.run(args.dsn, quick=quick, log=log)
    finally:
        if template:
            common.drop_db(args.dsn, template)
    meta["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["seconds"] = round(time.monotonic() - began)
    docs = judge(results)
    text = table(results, docs, meta)
    print(text)
    print()
    print(json.dumps({"scenario": "meta", **meta}))
    for doc in docs:
        print(json.dumps(doc, default=str))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(
            {"meta": meta, "results": results, "scenarios": docs}, indent=1, default=str))
    if args.markdown_out:
        pathlib.Path(args.markdown_out).write_text(text + "\n")
    log(f"done in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
