"""The ``cpoa`` command line: one small function per subcommand, one error handler.

Exit codes: 0 ok, 1 the operation failed, 2 usage error (bad arguments or input). The
editorial commands (review, fork, bulk) are in :mod:`cpoa.commands.editorial`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Any

from cpoa import (api, commands, defaults, diagram, embedded, errors, inputs, logs, machine,
                  metrics, options)
from cpoa import progress, prune, recovery
from cpoa import settings as settings_module
from cpoa.commands import diagnosis, editorial
from cpoa.engine import Engine
from cpoa.presentation import describe
from cpoa.worker import Worker

logger = logging.getLogger(__name__)
LIST_SUBJECT_CHARS = 40
"""Characters of a topic or query shown per line by `cpoa list`."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command and returns its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    secrets: tuple[str, ...] = ()
    try:
        options.resolve(args)
        # A command that needs no configuration (diagram, agents serve) must not fail on it.
        settings = settings_module.from_env() if args.configured else None
        secrets = settings.secrets if settings else ()
        logs.configure(args.verbose, secrets=secrets)
        if args.standalone:  # commands that connect by themselves, or not at all
            return args.handler(args)
        return args.handler(api.connect(settings), args)
    except (errors.InvalidInput, errors.ConfigError, errors.MachineMismatch) as exc:
        return _fail(exc, 2, args.verbose, secrets)  # the caller's input or configuration
    except errors.CPOAError as exc:
        return _fail(exc, 1, args.verbose, secrets)
    except KeyboardInterrupt:
        return 130


def _fail(exc: BaseException, code: int, verbose: int, secrets: Sequence[str] = ()) -> int:
    lines = [f"error: {exc}"]
    cause = exc.__cause__
    while cause is not None:
        lines.append(f"  caused by: {type(cause).__name__}: {cause}")
        cause = cause.__cause__
    if isinstance(exc, errors.StoreError) and "workflow_instances" in str(exc):
        lines.append("  hint: run `cpoa db init` to create the tables")
    print(logs.redact("\n".join(lines), secrets), file=sys.stderr)
    if verbose >= 2:
        logger.debug("traceback", exc_info=exc)
    return code


# -- commands --------------------------------------------------------------------------------

def command_db_init(engine: Engine, args: argparse.Namespace) -> int:
    engine.store.apply_schema()
    print("schema applied")
    return 0


def command_db_stop(args: argparse.Namespace) -> int:
    settings = settings_module.from_env()
    if not settings.database.embedded:
        raise errors.ConfigError(
            "cpoa db stop stops only the embedded PostgreSQL; a database is configured "
            "(CPOA_DATABASE_URL or POSTGRES_*): stop that server with its own tools",
            variable="CPOA_DATABASE_URL")
    folder = settings.embedded_data_dir or str(embedded.default_data_dir())
    print(f"stopped the embedded PostgreSQL in {folder}" if embedded.stop(folder)
          else f"no embedded PostgreSQL runs in {folder}")
    return 0


def command_healthcheck(engine: Engine, args: argparse.Namespace) -> int:
    print("DB connection: OK")
    if not engine.store.schema_applied():
        print("tables: missing (run `cpoa db init`)")
        return 1
    print("tables: OK")
    return 0


def command_start(engine: Engine, args: argparse.Namespace) -> int:
    if args.kind == "podcast":
        params: dict[str, Any] = {"topic": args.topic, "urls": args.url or []}
        voice = {k: v for k, v in (("voice_name", args.voice_name),
                                   ("speaking_rate", args.speaking_rate)) if v is not None}
        if voice:
            params["voice_params"] = voice
        if args.persona:
            params["persona"] = args.persona
        if args.review is not None:
            params["review"] = args.review
    else:
        params = {"query": args.query, "limit": args.limit}
    workflow_id = engine.start_workflow(args.kind, params, idempotency_key=args.idempotency_key,
                                        client_id=args.client_id, user_id=args.user_id,
                                        priority=args.priority)
    if not args.wait:
        commands.output(args, {"workflow_id": str(workflow_id)}, str(workflow_id))
        return 0
    bars = progress.Bars(engine, workflow_id, sys.stdout)
    show = sys.stdout.isatty() and not args.json  # a terminal: the states as they pass
    try:
        state = progress.drive(engine, workflow_id, timeout_s=args.timeout,
                               after_step=bars.show if show else None).state
    except KeyboardInterrupt:  # the workflow is durable: say how it goes on
        left = engine.store.get_workflow(workflow_id).state
        print(f"interrupted: workflow {workflow_id} stays {left}; `cpoa worker` finishes it, "
              f"`cpoa cancel {workflow_id}` drops it", file=sys.stderr)
        return 130
    status = engine.get_workflow(workflow_id)
    if state in machine.WAITING_STATES:
        commands.output(args, status,
                        f"{workflow_id} {state}: read the script with `cpoa status "
                        f"{workflow_id} --json`, then `cpoa review {workflow_id} --approve`")
        return 0
    commands.output(args, status, f"{workflow_id} {state}"
                    + (f": {status['error']}" if status["error"] else ""))
    return 0 if state == "completed" else 1


def command_advance(engine: Engine, args: argparse.Namespace) -> int:
    state = engine.advance(args.workflow_id)
    commands.output(args, {"workflow_id": args.workflow_id, "state": state}, state)
    return 0


def command_status(engine: Engine, args: argparse.Namespace) -> int:
    status = engine.get_workflow(args.workflow_id)
    text = [f"{status['workflow_id']}  {status['kind']}  {status['state']}  "
            f"{status['progress']:.0%}", f"{_about(status)}: {_subject(status)}"]
    if status.get("forked_from"):
        text.append(f"forked from: {status['forked_from']}")
    if _audio_url(status):
        text.append(f"audio: {_audio_url(status)}")
    if status["error"]:
        text.append(f"error: {status['error']}")
    text += [f"warning: {w}" for w in status["warnings"]]
    text += [f"  {t['step']:<13} {t['agent']:<5} {t['status']:<10} {t['item_key']}"
             for t in status["tasks"]]
    commands.output(args, status, "\n".join(text))
    return 0


def command_list(engine: Engine, args: argparse.Namespace) -> int:
    workflows = engine.store.list_workflows(state=args.state, kind=args.kind, limit=args.limit)
    rows = [describe(w, (), ()) for w in workflows]
    for row in rows:
        del row["tasks"], row["history"]
    text = "\n".join(f"{r['workflow_id']}  {r['kind']:<8} {r['state']:<12} {r['started_at']}  "
                     f"{logs.clip(_subject(r), LIST_SUBJECT_CHARS)!r}"
                     + (f"  {_audio_url(r)}" if _audio_url(r) else "") for r in rows)
    commands.output(args, rows, text or "(no workflows)")
    return 0


def _about(status: dict[str, Any]) -> str:
    return "query" if status["kind"] == "snippets" else "topic"


def _subject(status: dict[str, Any]) -> str:
    """The podcast's topic or the snippets' query."""
    return str(status["params"].get(_about(status), ""))


def _audio_url(status: dict[str, Any]) -> str:
    audio = (status.get("outputs") or {}).get("audio")
    return audio.get("url", "") if isinstance(audio, dict) else ""


def command_worker(engine: Engine, args: argparse.Namespace) -> int:
    concurrency = args.concurrency or engine.settings.worker_concurrency
    worker = Worker(engine, concurrency=concurrency, until_idle=args.until_idle)
    exporter = (metrics.serve(engine.store, args.metrics_port, args.metrics_host)
                if args.metrics_port else None)
    print(_worker_banner(engine, concurrency), flush=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    worker.run()
    if exporter is not None:
        exporter.shutdown()
    return 0


def _worker_banner(engine: Engine, concurrency: int) -> str:
    """One line: who this worker is, how many slots, which database, which agents."""
    settings = engine.settings
    agents = [f"{a.name} {a.base_url}" for a in settings.agents.values()]
    ui = urllib.parse.urlsplit(settings.asf_ui_update_url)
    agents.append(f"ASF {ui.scheme}://{ui.netloc}")
    line = (f"worker {engine.owner}: concurrency {concurrency}, "
            f"database {settings.database.display(settings.embedded_data_dir)}, "
            f"agents {', '.join(agents)}")
    return logs.redact(line, settings.secrets)


def command_prune(engine: Engine, args: argparse.Namespace) -> int:
    report = prune.prune(engine.store, args.older_than, batch_size=args.batch_size,
                         dry_run=args.dry_run)
    verb = "would delete" if report.dry_run else f"deleted in {report.batches} batch(es)"
    text = [f"{verb}: finished workflows last changed before {report.cutoff.isoformat()}"]
    text += [f"  {table:<20} {count}" for table, count in report.counts.items()]
    commands.output(args, report.as_json(), "\n".join(text))
    return 0


def command_sweep(engine: Engine, args: argparse.Namespace) -> int:
    count = len(recovery.sweep(engine.store).requeued)
    commands.output(args, {"requeued": count}, f"requeued {count} workflow(s)")
    return 0


def command_cancel(engine: Engine, args: argparse.Namespace) -> int:
    print(engine.cancel(args.workflow_id))
    return 0


def command_retry(engine: Engine, args: argparse.Namespace) -> int:
    print(engine.retry(args.workflow_id))
    return 0


def command_serve(engine: Engine, args: argparse.Namespace) -> int:
    from cpoa.gateway import server  # FastAPI and uvicorn load for this command only

    server.run(engine, args.host, args.port,
               ready=lambda url: print(f"serving on {url}", flush=True))
    return 0


def command_agents_serve(args: argparse.Namespace) -> int:
    from cpoa_agents import demo, serve

    ports = {name: getattr(args, f"port_{name.lower()}") for name in defaults.AGENT_PORTS}
    hosts = args.wcha_allowed_host or [args.wcha_hosts_env]  # the flags, else the variable
    wcha = {"allow_private": args.wcha_allow_private,
            "allowed_hosts": tuple(host for some in hosts for host in some)}
    fleet = serve.serve(args.data_dir or demo.default_data_dir(), host=args.host, ports=ports,
                        options={"WCHA": wcha})
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    for name, agent in fleet.agents.items():
        print(f"{name:<5} {agent.base_url}", flush=True)
    stopped.wait()
    fleet.stop()
    return 0


def command_demo(args: argparse.Namespace) -> int:
    from cpoa_agents import demo

    asked = {"format": args.format, "target_minutes": args.minutes}
    return demo.run(args.topic, args.url or [], output_root=args.output, data_dir=args.data_dir,
                    serve_page=args.serve, files=args.file or [],
                    options={k: v for k, v in asked.items() if v is not None})


def command_diagram(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else list(machine.KINDS)
    print("\n\n".join(diagram.mermaid(kind) for kind in kinds))
    return 0


# -- the parser ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="cpoa", description=(
        "Durable podcast workflows on PostgreSQL. Configured by environment variables "
        "(CPOA_DATABASE_URL or POSTGRES_*; none set = embedded PostgreSQL)."))
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logs (-v info, -vv debug); logs are JSON on stderr")
    parser.set_defaults(standalone=False, configured=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    configure_db_parser(sub)
    commands.add(sub, "healthcheck", help="check the database and the tables").set_defaults(
        handler=command_healthcheck)
    configure_start_parser(sub)
    for name, handler, text in (("advance", command_advance, "make at most one transition"),
                                ("status", command_status, "show a workflow"),
                                ("why", diagnosis.command_why, "why a workflow is where it is: its "
                                 "lease, schedule, agent tasks and agent limits"),
                                ("cancel", command_cancel, "cancel a workflow"),
                                ("retry", command_retry, "resume a failed workflow")):
        one = commands.add(sub, name, help=text)
        one.add_argument("workflow_id")
        one.add_argument("--json", action="store_true", help="print one JSON document")
        one.set_defaults(handler=handler)
    editorial.configure_review_parsers(sub)
    editorial.configure_bulk_parser(sub)
    configure_list_parser(sub)
    configure_worker_parser(sub)
    configure_prune_parser(sub)
    configure_serve_parser(sub)
    sweep = commands.add(sub, "sweep", help="one recovery pass over expired leases")
    sweep.add_argument("--json", action="store_true")
    sweep.set_defaults(handler=command_sweep)
    drawing = commands.add(sub, "diagram", help="print the state machines as Mermaid")
    drawing.add_argument("--kind", choices=sorted(machine.KINDS))
    drawing.set_defaults(handler=command_diagram, standalone=True, configured=False)
    configure_agents_parser(sub)
    return parser


def configure_list_parser(sub: argparse._SubParsersAction) -> None:
    listing = commands.add(sub, "list", help="list workflows, newest first")
    listing.add_argument("--state", choices=sorted({s for k in machine.KINDS
                                                    for s in machine.states(k)}))
    listing.add_argument("--kind", choices=sorted(machine.KINDS))
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(handler=command_list)


def configure_agents_parser(sub: argparse._SubParsersAction) -> None:
    agents = commands.add(sub, "agents", help="the agents: their queues (status), the "
                                              "reference agents (serve, needs the [agents] extra)")
    agents_sub = agents.add_subparsers(dest="agents_command", required=True, metavar="ACTION")
    status = commands.add(agents_sub, "status",
                          help="each agent's queue: slots held of its cap, workflows waiting, "
                               "pause, breaker failures")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.set_defaults(handler=diagnosis.command_agents_status)
    serve = commands.add(agents_sub, "serve", help="serve all seven agents until stopped")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--data-dir", help="where the agents keep tasks, audio and images "
                                          "[per-user data folder]")
    for name, port in defaults.AGENT_PORTS.items():
        serve.add_argument(f"--port-{name.lower()}", type=int, default=port,
                           help=f"{name} port [default {port}]")
    serve.add_argument("--wcha-allow-private", action="store_true",
                       default=options.env_default("WCHA_ALLOW_PRIVATE", False, options.yes_no),
                       help="let WCHA fetch private and loopback addresses "
                            "[env WCHA_ALLOW_PRIVATE]")
    serve.add_argument("--wcha-allowed-host", action="append", type=options.host_list,
                       metavar="HOST[:PORT]",
                       help="a private host WCHA may fetch from (repeatable) "
                            "[env WCHA_ALLOWED_HOSTS, comma-separated]")
    serve.set_defaults(wcha_hosts_env=options.env_default("WCHA_ALLOWED_HOSTS", [],
                                                          options.host_list))
    serve.set_defaults(handler=command_agents_serve, standalone=True, configured=False)
    demo = commands.add(sub, "demo", help="topic -> finished episode in ./output/<workflow_id>/")
    demo.add_argument("topic")
    demo.add_argument("--url", action="append", help="a web page to harvest (repeatable)")
    demo.add_argument("--file", action="append", help="your own document: Markdown, text, "
                      "HTML or PDF (repeatable)")
    demo.add_argument("--format", choices=inputs.FORMATS, help="conversation (default), "
                      "bulletin (one voice) or panel (host and two guests)")
    demo.add_argument("--minutes", type=_minutes, help="target length, 1-30 [3]")
    demo.add_argument("--output", default="output", help="output folder [output]")
    demo.add_argument("--data-dir", help="the agents' data folder [per-user data folder]")
    demo.add_argument("--serve", action="store_true",
                      help="keep serving the live page after the episode, until Ctrl-C")
    demo.set_defaults(handler=command_demo, standalone=True)


def configure_db_parser(sub: argparse._SubParsersAction) -> None:
    db = commands.add(sub, "db", help="database administration")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    commands.add(db_sub, "init", help="apply the schema (safe to repeat)").set_defaults(
        handler=command_db_init)
    stop = commands.add(db_sub, "stop",
                        help="stop the embedded PostgreSQL (CPOA_EMBEDDED_DATA_DIR)")
    stop.set_defaults(handler=command_db_stop, standalone=True)


def configure_start_parser(sub: argparse._SubParsersAction) -> None:
    start = commands.add(sub, "start", help="start a workflow")
    kinds = start.add_subparsers(dest="kind", required=True, metavar="KIND")
    podcast = commands.add(kinds, "podcast", help="a podcast episode about a topic")
    podcast.add_argument("--topic", required=True)
    podcast.add_argument("--url", action="append", help="a source URL (repeatable)")
    podcast.add_argument("--voice-name")
    podcast.add_argument("--speaking-rate", type=float)
    podcast.add_argument("--persona")
    podcast.add_argument("--review", action="store_true", default=None,
                         help="wait for a reviewer after the script (`cpoa review`) "
                              "[env CPOA_REVIEW_SCRIPTS, default off]")
    snippets = commands.add(kinds, "snippets", help="short snippets about discovered topics")
    snippets.add_argument("--query", required=True)
    snippets.add_argument("--limit", type=int, default=5)
    for one in (podcast, snippets):
        one.add_argument("--idempotency-key", help="same key → same workflow")
        one.add_argument("--client-id", help="the UI client to send events to")
        one.add_argument("--user-id", help="the tenant: capped agents are shared fairly "
                                           "between tenants")
        one.add_argument("--priority", type=int, default=0,
                         help="higher first among this tenant's workflows waiting for a "
                              "capped agent [0; -1000 to 1000]")
        one.add_argument("--wait", action="store_true",
                         help="drive the workflow here until it ends; exit 1 unless completed")
        one.add_argument("--timeout", type=float, default=3600.0,
                         help="with --wait: give up after this many seconds")
        one.add_argument("--json", action="store_true", help="print one JSON document")
        one.set_defaults(handler=command_start)


def configure_prune_parser(sub: argparse._SubParsersAction) -> None:
    # The env twins are converted only when `prune` runs (options.resolve): a bad one is a
    # configuration error of `prune` naming the variable, not of every command.
    older = options.env_default("CPOA_PRUNE_OLDER_THAN", None, options.duration)
    pruning = commands.add(sub, "prune", help="delete finished workflows older than a duration")
    pruning.add_argument(
        "--older-than", type=options.duration, default=older, required=older is None,
        metavar="DURATION",
        help="age of the last change: 30d, 12h, 90m, 3600s or seconds "
             "[env CPOA_PRUNE_OLDER_THAN]")
    pruning.add_argument("--dry-run", action="store_true",
                         help="print what would be deleted, per table, and delete nothing")
    pruning.add_argument(
        "--batch-size", type=options.positive_int, metavar="N",
        default=options.env_default("CPOA_PRUNE_BATCH_SIZE", defaults.PRUNE_BATCH_SIZE,
                                    options.positive_int),
        help="workflows per transaction "
             f"[env CPOA_PRUNE_BATCH_SIZE, default {defaults.PRUNE_BATCH_SIZE}]")
    pruning.add_argument("--json", action="store_true", help="print one JSON document")
    pruning.set_defaults(handler=command_prune)


def _minutes(text: str) -> int:
    """``--minutes``: a whole number within the podcast's target_minutes bounds."""
    low, high = inputs.TARGET_MINUTES_MIN, inputs.TARGET_MINUTES_MAX
    if not text.strip().isdigit() or not low <= int(text) <= high:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {low} to {high}")
    return int(text)


def configure_serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = commands.add(sub, "serve", help="serve the JSON API (/v1, /healthz, /metrics) and "
                                            "the dashboard over HTTP until SIGTERM")
    serve.add_argument("--host", default=options.env_default("CPOA_API_HOST", defaults.API_HOST),
                       help="address to listen on "
                            f"[env CPOA_API_HOST, default {defaults.API_HOST}]")
    serve.add_argument("--port", type=options.port,
                       default=options.env_default("CPOA_API_PORT", defaults.API_PORT,
                                                   options.port),
                       help=f"TCP port, 0 for a free one [env CPOA_API_PORT, default "
                            f"{defaults.API_PORT}]")
    serve.set_defaults(handler=command_serve)


def configure_worker_parser(sub: argparse._SubParsersAction) -> None:
    worker = commands.add(sub, "worker", help="claim and advance due workflows until stopped")
    worker.add_argument(
        "--concurrency", type=options.positive_int, metavar="N",
        help="workflows advanced at once, at least 1 "
             f"[env CPOA_WORKER_CONCURRENCY, default {defaults.WORKER_CONCURRENCY}]")
    worker.add_argument("--until-idle", action="store_true",
                        default=options.env_default("CPOA_WORKER_UNTIL_IDLE", False,
                                                    options.yes_no),
                        help="exit once nothing is unfinished [env CPOA_WORKER_UNTIL_IDLE: "
                             "1/true/yes/on or 0/false/no/off]")
    worker.add_argument(
        "--metrics-port", type=options.port,
        default=options.env_default("CPOA_METRICS_PORT", defaults.METRICS_PORT, options.port),
        help="serve this process's Prometheus metrics on this port "
             "[env CPOA_METRICS_PORT, default 0: off]")
    worker.add_argument(
        "--metrics-host",
        default=options.env_default("CPOA_METRICS_HOST", defaults.METRICS_HOST),
        help="address of the metrics endpoint [env CPOA_METRICS_HOST, default 0.0.0.0]")
    worker.set_defaults(handler=command_worker)


if __name__ == "__main__":
    sys.exit(main())
