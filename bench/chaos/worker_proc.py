"""Worker subprocesses of the fault harness: the entry point, and how scenarios start and reap them.

    python -m bench.chaos.worker_proc worker --target ID --crash-at before_commit:scripting:2
    python -m bench.chaos.worker_proc advance --deadline 60 ID ...

``worker`` runs a real :class:`cpoa.worker.Worker` (configured from the environment, like
``cpoa worker``) whose engine SIGKILLs its own process at the n-th time it reaches a boundary
(``cpoa.engine.FAULT_POINTS``) in a state of the target workflow (``every``: each time); with
``--count-file``, the n-th time counted over every process sharing that file, so that whichever
worker reaches it dies and the others carry on.
``advance`` calls ``advance`` on the given workflows as fast as it can after reading a line on
standard input (so that every process starts at once), and prints one JSON line of counts.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any

REPO = pathlib.Path(__file__).resolve().parents[2]

import psycopg

from bench.chaos import inflight
from cpoa import errors, logs, machine, models
from cpoa import settings as settings_module
from cpoa.engine import FAULT_POINTS, Engine
from cpoa.store import PostgresStore, conninfo
from cpoa.worker import Worker
from cpoa.testing.cli import cli_env

CRASH_MARK = "chaos: SIGKILL at"
"""What a crashing worker prints on stderr just before it kills itself."""


# -- the harness side --------------------------------------------------------------------------

def environment(dsn: str, agent_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a worker: this database, every agent at ``agent_url``, fast polls."""
    return cli_env(dsn, agent_url, **{"DB_POOL_MAX_CONN": "8", **overrides})


class Processes:
    """Starts subprocesses with their output in log files; kills whatever is left on exit.

    Args:
        folder: Where each process's output goes (``<name>-<n>.log``).
    """

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.started: list[subprocess.Popen] = []
        self.logs: dict[int, pathlib.Path] = {}

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str], *,
              stdin: int | None = subprocess.DEVNULL,
              stdout: int | None = None) -> subprocess.Popen:
        """Starts ``python <args>``; stderr (and stdout unless piped) go to a log file."""
        path = self.folder / f"{name}-{len(self.started)}.log"
        with open(path, "w") as log:
            proc = subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, stdin=stdin,
                                    stdout=log if stdout is None else stdout, stderr=log,
                                    text=True)
        self.started.append(proc)
        self.logs[proc.pid] = path
        return proc

    def cli_worker(self, env: dict[str, str], *extra: str) -> subprocess.Popen:
        """Starts ``cpoa worker`` (the real command line)."""
        return self.spawn("cpoa-worker", ["-m", "cpoa.cli", "worker", *extra], env)

    def chaos_worker(self, env: dict[str, str], *extra: str) -> subprocess.Popen:
        """Starts this module's ``worker`` (with a fault hook)."""
        return self.spawn("chaos-worker", ["-m", "bench.chaos.worker_proc", "worker", *extra], env)

    def log(self, proc: subprocess.Popen) -> str:
        """The output a process wrote so far."""
        return self.logs[proc.pid].read_text(errors="replace")

    def kill(self, proc: subprocess.Popen, timeout: float = 10.0) -> int:
        """SIGKILLs a process and reaps it; returns its exit code."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=timeout)

    def stop(self, proc: subprocess.Popen, timeout: float = 20.0) -> int:
        """SIGTERMs a process (a worker finishes its transitions) and reaps it; kills it at
        the deadline."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return self.kill(proc)

    def close(self) -> None:
        """Kills and reaps every process still running."""
        for proc in self.started:
            with contextlib.suppress(Exception):
                self.kill(proc)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


@contextlib.contextmanager
def processes(folder: pathlib.Path) -> Iterator[Processes]:
    """A :class:`Processes` whose survivors are killed when the block ends, however it ends."""
    procs = Processes(folder)
    try:
        yield procs
    finally:
        procs.close()


def wait_until(check: Any, deadline: float, interval: float = 0.02) -> Any:
    """Polls ``check`` until it is truthy or the monotonic ``deadline`` passes; returns its
    last value (falsy at the deadline: the caller reports rather than raises)."""
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# -- the subprocess side -----------------------------------------------------------------------

def crash_hook(spec: str, target: str, count_file: str | None = None,
               held_dir: str | None = None) -> Any:
    """A fault hook that SIGKILLs this process at ``point:state[:n|every]`` of ``target``.

    Args:
        count_file: Where the occurrences are counted, shared with other processes (None:
            counted in this process only).
        held_dir: Where to write, just before the kill, what this process leases
            (:func:`record_held`).
    """
    point, state, *rest = spec.split(":")
    if point not in FAULT_POINTS:
        raise SystemExit(f"--crash-at: unknown point {point!r} (one of {FAULT_POINTS})")
    nth = rest[0] if rest else "1"
    seen = 0
    lock = threading.Lock()

    def hook(at: str, workflow: models.Workflow) -> None:
        nonlocal seen
        if at != point or workflow.state != state or str(workflow.workflow_id) != target:
            return
        with lock:
            seen = _count_shared(count_file) if count_file else seen + 1
            if nth == "every" or seen == int(nth):
                print(f"{CRASH_MARK} {point}:{state}:{seen} monotonic={time.monotonic()!r}"
                      f" wall={time.time()!r}", file=sys.stderr, flush=True)
                if held_dir:
                    record_held(pathlib.Path(held_dir) / f"{os.getpid()}.json")
                os.kill(os.getpid(), signal.SIGKILL)
    return hook


def record_held(path: pathlib.Path) -> None:
    """Writes what this process leases (:func:`bench.chaos.inflight.held`) to ``path``, read
    under a SHARE lock on workflow_instances that this process keeps until its SIGKILL ends the
    session: no claim of its other threads commits between the read and the death, so every
    request the death interrupts belongs to a workflow listed. (The harness's own snapshots,
    taken every few ms while the worker runs and after it died, miss a workflow claimed just
    before the death and requeued by a survivor's sweep before the harness looked.)"""
    conn = psycopg.connect(conninfo(settings_module.from_env().database))
    conn.execute("LOCK TABLE workflow_instances IN SHARE MODE")  # held until the kill
    rows = [[w, state, sorted(keys)] for w, state, keys in inflight.held(conn, os.getpid())]
    with open(path, "w") as file:
        json.dump(rows, file)
        file.flush()
        os.fsync(file.fileno())


def read_held(folder: pathlib.Path, pid: int) -> list[inflight.Held]:
    """What worker ``pid`` wrote with :func:`record_held` before it died ([] if nothing)."""
    path = folder / f"{pid}.json"
    if not path.exists():
        return []
    return [(w, state, frozenset(keys)) for w, state, keys in json.loads(path.read_text())]


def _count_shared(path: str) -> int:
    """Adds one to the count in ``path`` (under an exclusive lock) and returns it."""
    with open(path, "a+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.seek(0)
        count = int(file.read() or 0) + 1
        file.seek(0)
        file.truncate()
        file.write(str(count))
        file.flush()
        return count


def crash_times(log: str) -> tuple[float, float] | None:
    """(monotonic, wall clock) of the crash a worker's log announces, or None."""
    for line in log.splitlines():
        if line.startswith(CRASH_MARK):
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            return float(fields["monotonic"]), float(fields["wall"])
    return None


def _engine(fault_hook: Any = None) -> Engine:
    settings = settings_module.from_env()
    logs.configure(0, secrets=settings.database.secrets)
    db = settings.database
    store = PostgresStore(conninfo(db), min_size=db.pool_min, max_size=db.pool_max,
                          secrets=db.secrets)
    return Engine(store, settings, fault_hook=fault_hook)


def command_worker(args: argparse.Namespace) -> int:
    hook = (crash_hook(args.crash_at, args.target, args.count_file, args.held_dir)
            if args.crash_at else None)
    worker = Worker(_engine(hook), concurrency=args.concurrency, until_idle=args.until_idle)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    worker.run()
    return 0


def command_advance(args: argparse.Namespace, stdin: IO[str] = sys.stdin) -> int:
    engine = _engine()
    ids = list(args.ids)
    print("ready", flush=True)
    stdin.readline()
    calls, errors_seen = 0, {}
    started = time.monotonic()
    deadline = started + args.deadline
    while ids and time.monotonic() < deadline:
        left = []
        for workflow_id in ids:
            calls += 1
            try:
                state = engine.advance(workflow_id)
            except errors.CPOAError as exc:
                errors_seen[type(exc).__name__] = errors_seen.get(type(exc).__name__, 0) + 1
                state = None
            if state not in machine.TERMINAL_STATES:
                left.append(workflow_id)
        ids = left
    print(json.dumps({"calls": calls, "seconds": time.monotonic() - started,
                      "unfinished": len(ids), "errors": errors_seen}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True)
    worker = sub.add_parser("worker", help="a worker that may crash itself")
    worker.add_argument("--crash-at", help="point:state[:n|every] (n-th time, default 1)")
    worker.add_argument("--target", help="the workflow whose boundary crashes the process")
    worker.add_argument("--count-file", help="count occurrences in this file, shared with "
                                             "other workers (default: in this process)")
    worker.add_argument("--held-dir", help="before a crash, write what this process leases "
                                           "to DIR/<pid>.json")
    worker.add_argument("--concurrency", type=int, default=4)
    worker.add_argument("--until-idle", action="store_true")
    worker.set_defaults(handler=command_worker)
    advance = sub.add_parser("advance", help="advance workflows in a loop until terminal")
    advance.add_argument("ids", nargs="+")
    advance.add_argument("--deadline", type=float, default=120.0, help="seconds at most")
    advance.set_defaults(handler=command_advance)
    args = parser.parse_args(argv)
    if getattr(args, "crash_at", None) and not args.target:
        parser.error("--crash-at needs --target")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
