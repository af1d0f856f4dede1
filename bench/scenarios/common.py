"""Shared plumbing of the performance harness: databases, counters, percentiles, the instant client.

Nothing here changes CPOA: round trips are counted by giving ``PostgresStore``'s pool a
``psycopg.Connection`` subclass (every network exchange of psycopg goes through
``Connection.wait``), and timings by subclassing ``PostgresStore`` and ``Engine``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import pathlib
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[2]

import psycopg
from psycopg import conninfo as pg_conninfo

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PREFIX = "cpoa_perf_"


# -- databases -------------------------------------------------------------------------------

def with_dbname(dsn: str, dbname: str) -> str:
    """Returns ``dsn`` pointed at another database."""
    params = pg_conninfo.conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return pg_conninfo.make_conninfo(**params)


def dbname_of(dsn: str) -> str:
    return pg_conninfo.conninfo_to_dict(dsn).get("dbname") or "postgres"


def new_name(tag: str) -> str:
    return f"{PREFIX}{tag}_{uuid.uuid4().hex[:8]}"


def create_db(admin_dsn: str, name: str, *, template: str | None = None,
              schema: bool = False) -> str:
    """Creates a database (a copy of ``template`` if given), optionally with CPOA's schema."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        clause = f' TEMPLATE "{template}"' if template else ""
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    dsn = with_dbname(admin_dsn, name)
    if schema:
        from cpoa.store import PostgresStore
        store = PostgresStore(dsn, min_size=0, max_size=1)
        store.apply_schema()
        store.close()
    return dsn


def drop_db(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_db(admin_dsn: str, tag: str, *, template: str | None = None,
             schema: bool = False, keep: bool = False) -> Iterator[str]:
    """A new database for one scenario; dropped afterwards unless ``keep``."""
    name = new_name(tag)
    dsn = create_db(admin_dsn, name, template=template, schema=schema)
    try:
        yield dsn
    finally:
        if not keep:
            drop_db(admin_dsn, name)


def drop_leftovers(admin_dsn: str) -> None:
    """Drops databases an interrupted earlier run left behind."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (PREFIX + "%",))]
    for name in names:
        with contextlib.suppress(psycopg.Error):
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" IS_TEMPLATE false')
            drop_db(admin_dsn, name)


def wait_no_backends(admin_dsn: str, name: str, timeout: float = 5.0) -> None:
    """Waits until no session is connected to ``name`` (their statistics are then flushed)."""
    wait_no_backends_except(admin_dsn, name, 0, timeout)


def wait_no_backends_except(admin_dsn: str, name: str, expected: int,
                            timeout: float = 5.0) -> None:
    """Waits until at most ``expected`` sessions are connected to ``name``.

    A session flushes its statistics when it exits, so the counters read after this include
    everything the sessions that left did.
    """
    deadline = time.monotonic() + timeout
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                             (name,)).fetchone()[0]
            if n <= expected:
                break
            time.sleep(0.05)
    time.sleep(0.1)


# -- server-side figures ---------------------------------------------------------------------

def server_snapshot(admin_dsn: str, dbname: str) -> dict[str, Any]:
    """WAL position and the database's commit and tuple counters (pg_stat_database), and the
    server-wide count of full-page images and checkpoints (pg_stat_wal, pg_stat_bgwriter)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT pg_current_wal_lsn()::text, xact_commit, xact_rollback, tup_inserted, "
            "tup_updated, tup_deleted, tup_fetched, tup_returned, "
            "(SELECT wal_fpi FROM pg_stat_wal), "
            "(SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter) "
            "FROM pg_stat_database WHERE datname = %s", (dbname,)).fetchone()
    keys = ("lsn", "xact_commit", "xact_rollback", "tup_inserted", "tup_updated",
            "tup_deleted", "tup_fetched", "tup_returned", "wal_fpi", "checkpoints")
    return dict(zip(keys, row))


def server_delta(admin_dsn: str, before: Mapping[str, Any],
                 after: Mapping[str, Any]) -> dict[str, Any]:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        wal = conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint",
                           (after["lsn"], before["lsn"])).fetchone()[0]
    out = {k: after[k] - before[k] for k in before if k != "lsn"}
    out["wal_bytes"] = int(wal)
    return out


def postgres_pids(admin_dsn: str, dbname: str, *, background: bool = True) -> list[int]:
    """The server processes that work for ``dbname``: its sessions, and with ``background``
    the server's own processes (WAL writer, checkpointer, background writer…), which also
    serve whatever else runs on the server.

    Other databases' sessions (other work on a shared machine) are left out.
    """
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s "
            "OR (%s AND backend_type <> 'client backend' AND datname IS NULL)",
            (dbname, background))]


def pids_cpu_s(pids: list[int]) -> float:
    """CPU seconds used so far by these processes (those that exited count as 0)."""
    return sum(process_cpu_s(pid) for pid in pids)


def process_cpu_s(pid: int) -> float:
    import psutil
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def rss_mb(pid: int | None = None) -> float:
    """Current resident set size in MiB (from /proc)."""
    path = f"/proc/{pid or os.getpid()}/status"
    with open(path) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def peak_rss_mb() -> float:
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- client-side counting --------------------------------------------------------------------

class Counters:
    """Round trips (every ``Connection.wait``) and statements (every ``Connection.execute``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.round_trips = 0
        self.statements = 0

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {"round_trips": self.round_trips, "statements": self.statements}


COUNTERS = Counters()


def _count_if_io(gen):  # type: ignore[no-untyped-def]
    """Passes a psycopg I/O generator through, counting one round trip if it waits at all.

    psycopg runs every exchange with the server as a generator that yields when it must wait
    on the socket; one that finishes without yielding (``commit()`` on an idle autocommit
    connection, as the pool does on every return) sent nothing.
    """
    try:
        value = gen.send(None)
    except StopIteration as stop:
        return stop.value
    with COUNTERS.lock:
        COUNTERS.round_trips += 1
    while True:
        sent = yield value
        try:
            value = gen.send(sent)
        except StopIteration as stop:
            return stop.value


class CountingConnection(psycopg.Connection):
    """A psycopg connection that counts its network exchanges and statements."""

    def wait(self, gen, *args, **kwargs):  # type: ignore[no-untyped-def]
        return super().wait(_count_if_io(gen), *args, **kwargs)

    def execute(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        with COUNTERS.lock:
            COUNTERS.statements += 1
        return super().execute(*args, **kwargs)


def install_counting() -> None:
    """Makes every pool that ``cpoa.store`` builds from now on use CountingConnection.

    The LISTEN connection (``psycopg.connect`` in ``Listener``) is not counted: after its one
    ``LISTEN`` it only waits on its socket.
    """
    import psycopg_pool

    from cpoa.store import postgres
    shim = types.SimpleNamespace(**{k: getattr(psycopg_pool, k) for k in dir(psycopg_pool)
                                    if not k.startswith("__")})
    shim.ConnectionPool = functools.partial(psycopg_pool.ConnectionPool,
                                            connection_class=CountingConnection)
    postgres.psycopg_pool = shim


# -- the instant in-process client -----------------------------------------------------------

class InstantClient:
    """The AgentClient interface, answering every submit and poll with a valid result at once.

    The results are those of the test suite's scripted agent (``cpoa.testing.agent``).
    """

    def __init__(self) -> None:
        from cpoa.testing.agent import default_result
        self.default_result = default_result

    def submit(self, service: str, base_url: str, path: str, body: Mapping[str, Any], *,
               idempotency_key: str, workflow_id: str, callback_url: Any = None,
               log: Any = None) -> Any:
        from cpoa.agents.client import Reply
        return Reply("done", task_id=uuid.uuid4().hex,
                     result=self.default_result(path, dict(body or {})), http_status=200)

    def poll(self, service: str, base_url: str, status_url: str, *, workflow_id: str,
             idempotency_key: str = "", log: Any = None) -> Any:
        from cpoa.agents.client import Reply
        return Reply("done", result={"status": "success"}, http_status=200)

    def notify(self, service: str, url: str, body: Mapping[str, Any], *, workflow_id: str,
               idempotency_key: str = "", log: Any = None) -> int:
        return 200


def agent_env(url: str, poll_s: float = 0.05, **overrides: str) -> dict[str, str]:
    """The test suite's agent_env, with polls every ``poll_s`` and a 60 s lease."""
    from cpoa.settings import POLLED_AGENTS
    from cpoa.testing.agent import agent_env as test_agent_env
    polls = {f"CPOA_{name}_POLLING_INTERVAL_SECONDS": str(poll_s) for name in POLLED_AGENTS}
    return test_agent_env(url, **{"CPOA_LEASE_TTL_SECONDS": "60", **polls, **overrides})


def leases_held(dsn: str) -> int:
    """Workflows whose lease somebody holds now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM workflow_instances"
                            " WHERE lease_owner IS NOT NULL").fetchone()[0]


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Polls ``check`` until truthy; raises TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


# -- processes -------------------------------------------------------------------------------

def run_module(module: str, *argv: str, python: str = sys.executable, env: dict | None = None,
               prefix: list[str] | None = None, timeout: float = 900,
               inherit: bool = True) -> dict[str, Any]:
    """Runs ``python -m module argv…`` (optionally under a profiler) and returns its RESULT.

    ``env`` is added to this process's environment, or with ``inherit=False`` is the whole
    environment (a run whose settings must be exactly those given)."""
    cmd = [*(prefix or []), python, "-m", module, *argv]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                         env={**(os.environ if inherit else {}), **(env or {})}, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{module} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result = read_result(out.stdout)
    result["load_1min_after"] = round(os.getloadavg()[0], 2)
    return result


class Agent:
    """A local agent in its own process (``bench.scenarios.agent --mode MODE ARGV…``)."""

    def __init__(self, mode: str, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.scenarios.agent", "--mode", mode, *argv],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("URL "):
            raise RuntimeError(f"agent did not start: {line!r}")
        self.url = line.split()[1]
        self.pid = self.proc.pid

    def close(self) -> None:
        self.proc.stdin.close()  # the agent exits when its stdin closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- statistics and output -------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0–100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def ms(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value * 1000, digits)


def emit(document: Mapping[str, Any]) -> None:
    """Prints one result line for the harness to pick up."""
    print("RESULT " + json.dumps(document, default=str), flush=True)


def read_result(stdout: str) -> dict[str, Any]:
    """The last ``RESULT`` line a scenario subprocess printed."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError("the scenario printed no RESULT line:\n" + stdout[-2000:])


# -- workloads -------------------------------------------------------------------------------

def start_podcasts(dsn: str, n: int, threads: int = 4) -> float:
    """Starts ``n`` podcast workflows through ``Engine.start_workflow``; returns the seconds."""
    import concurrent.futures

    from cpoa import settings as settings_module
    from cpoa.engine import Engine
    from cpoa.store import PostgresStore
    store = PostgresStore(dsn, min_size=threads, max_size=threads)
    engine = Engine(store, settings_module.from_env(agent_env("http://127.0.0.1:9")),
                    client=InstantClient())
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: engine.start_workflow(
            "podcast", {"topic": f"topic {i}", "urls": [f"https://example.org/{i}"]}),
            range(n)))
    store.close()
    return time.perf_counter() - started
