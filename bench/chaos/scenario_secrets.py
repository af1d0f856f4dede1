"""Scenario 8, secrets: the database password never reaches a log line or an error message.

An embedded PostgreSQL of the scenario's own is given a password (SCRAM over its socket, so the
password is really used). The CLI then runs with DEBUG logs (``-vv``) and the password in
``CPOA_DATABASE_URL`` (as a URL and as a libpq key=value string) or in ``POSTGRES_PASSWORD``:
successful runs with agent errors, a worker, and failing connections (wrong port, wrong user,
wrong database, malformed URLs). Every captured line (stdout, stderr, in-process error messages
and their causes) is scanned for the password, plain and percent-encoded.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import re
import urllib.parse
from typing import Any

import psycopg
from psycopg import sql

from bench.chaos import common
from bench.chaos.scenario_agent_outage import capture_logs
from bench.chaos.scenario_db_faults import start_server
from cpoa import embedded, errors
from cpoa import settings as settings_module
from cpoa import sql as cpoa_sql
from cpoa.store import PostgresStore
from cpoa.testing.cli import cli_env, run_cli
from cpoa.testing.agent import Reply, ScriptedAgent

PASSWORD = "Zq8-s3cr%t_pw"
"""Holds a ``%``: a URL must carry it percent-encoded, and a user who forgets is the test."""
ENCODED = urllib.parse.quote(PASSWORD, safe="")


def run(ctx: common.Context) -> dict[str, Any]:
    """Runs the scenario; returns ``ok`` and the figures."""
    data_dir = ctx.scratch / "pgdata"
    agent = ScriptedAgent()
    try:
        socket_dir = _protected_server(data_dir)
        runs = _runs(socket_dir, agent, ctx.quick)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            results = dict(zip(runs, pool.map(lambda r: _cli(*runs[r][:2]), runs)))
        results.update(_sequence(socket_dir, agent))
        with capture_logs():
            results["in_process"] = _in_process(socket_dir)
    finally:
        agent.close()
        embedded.stop(data_dir)
    expected = {name: spec[2] for name, spec in runs.items()}
    expected.update(start_then_worker=0, in_process=1)
    return _figures(results, expected)


# -- the server ------------------------------------------------------------------------------

def _protected_server(data_dir: pathlib.Path) -> str:
    """Starts the server, sets the password, requires it (SCRAM); returns the socket folder."""
    uri = start_server(data_dir)
    socket_dir = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["host"][0]
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER USER postgres PASSWORD {}").format(sql.Literal(PASSWORD)))
        conn.execute("CREATE DATABASE cpoa")
        hba = conn.execute("SHOW hba_file").fetchone()[0]
        pathlib.Path(hba).write_text("local all all scram-sha-256\n")
        conn.execute("SELECT pg_reload_conf()")
    # The password works...
    with psycopg.connect(_url(socket_dir), autocommit=True) as conn, conn.transaction():
        conn.execute(cpoa_sql.schema())
    try:  # ... and is needed
        psycopg.connect(uri).close()
    except psycopg.OperationalError:
        return socket_dir
    raise RuntimeError("the server still trusts connections without a password")


def _url(socket_dir: str, *, password: str = ENCODED, user: str = "postgres",
         db: str = "cpoa") -> str:
    return f"postgresql://{user}:{password}@/{db}?host={urllib.parse.quote(socket_dir)}"


# -- the runs --------------------------------------------------------------------------------

def _runs(socket_dir: str, agent: ScriptedAgent,
          quick: bool) -> dict[str, tuple[dict[str, str], list[str], set[int]]]:
    """name: (environment, arguments, acceptable exit codes)."""
    env_vars = {"CPOA_DATABASE_URL": "", "POSTGRES_HOST": socket_dir, "POSTGRES_USER": "postgres",
                "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": "cpoa"}
    keyvalue = f"host={socket_dir} user=postgres dbname=cpoa password='{PASSWORD}'"
    down = f"postgresql://postgres:{ENCODED}@127.0.0.1:1/cpoa"
    start = ["-vv", "start", "podcast", "--topic", "secrets", "--client-id", "c", "--wait"]
    runs = {
        "url_start_wait": (_env(agent, _url(socket_dir)), start, {0}),
        "env_vars_start_wait": (_env(agent, "", **env_vars), start, {0}),
        "keyvalue_list": (_env(agent, keyvalue), ["-vv", "list", "--json"], {0}),
        "url_wrong_port": (_env(agent, down), ["-vv", "list"], {1}),
        "env_wrong_port": (_env(agent, "", **{**env_vars, "POSTGRES_HOST": "127.0.0.1",
                                              "POSTGRES_PORT": "1"}), ["-vv", "list"], {1}),
        "url_wrong_user": (_env(agent, _url(socket_dir, user="nobody")), ["-vv", "list"], {1}),
        "url_wrong_db": (_env(agent, _url(socket_dir, db="nope")), ["-vv", "list"], {1}),
        # A user who forgets to percent-encode the password: a usage error, not a traceback.
        "url_password_not_encoded": (_env(agent, _url(socket_dir, password=PASSWORD)),
                                     ["-vv", "list"], {1, 2}),
        "url_malformed_host": (_env(agent, f"postgresql://postgres:{ENCODED}@[::1/cpoa"),
                               ["-vv", "list"], {1, 2}),
        "keyvalue_unterminated": (_env(agent, keyvalue[:-1]), ["-vv", "list"], {1, 2}),
    }
    if quick:
        for name in ("keyvalue_list", "url_wrong_db", "url_malformed_host"):
            del runs[name]
    return runs


def _env(agent: ScriptedAgent, url: str, **extra: str) -> dict[str, str]:
    return cli_env(url, agent.url, **extra)


def _cli(env: dict[str, str], args: list[str]) -> dict[str, Any]:
    result = run_cli(env, *args, timeout=120)
    return {"exit": result.returncode, "text": result.stdout + result.stderr,
            "crashed": any(line.startswith("Traceback") for line in result.stderr.splitlines())}


def _sequence(socket_dir: str, agent: ScriptedAgent) -> dict[str, dict[str, Any]]:
    """Two workflows and a worker at debug level, with agent errors on the way; then status."""
    env = _env(agent, "", CPOA_DATABASE_URL="", POSTGRES_HOST=socket_dir,
               POSTGRES_USER="postgres", POSTGRES_PASSWORD=PASSWORD, POSTGRES_DB="cpoa")
    agent.script("POST", "/weave_script", Reply(422, {"error": "script_data: topic too long"}))
    agent.script("POST", "/generate_image", Reply(503), Reply(drop=True), Reply(503),
                 Reply(500, b"<html>internal error</html>"))
    texts, codes, crashed = [], [], False
    ids = []
    for args in (["-vv", "start", "podcast", "--topic", "one"],
                 ["-vv", "start", "podcast", "--topic", "two"],
                 ["-vv", "worker", "--until-idle"], ["-vv", "list", "--json"]):
        result = run_cli(env, *args, timeout=120)
        texts.append(result.stdout + result.stderr)
        codes.append(result.returncode)
        crashed |= any(line.startswith("Traceback") for line in result.stderr.splitlines())
        if args[1] == "start":
            ids.append(result.stdout.strip())
    for workflow_id in ids:
        result = run_cli(env, "-vv", "status", workflow_id, "--json")
        texts.append(result.stdout + result.stderr)
        codes.append(result.returncode)
    agent_errors = sum(t.count('"agent_call_failed"') for t in texts)
    return {"start_then_worker": {"exit": max(codes), "text": "\n".join(texts),
                                  "crashed": crashed, "agent_error_logs": agent_errors}}


def _in_process(socket_dir: str) -> dict[str, Any]:
    """The error a library caller sees for a down server: message, causes and repr."""
    env = {"CPOA_DATABASE_URL": f"postgresql://postgres:{ENCODED}@127.0.0.1:1/cpoa"}
    settings = settings_module.from_env(env)
    texts = [repr(settings), repr(settings.database)]
    try:
        PostgresStore(env["CPOA_DATABASE_URL"], secrets=settings.database.secrets).close()
    except errors.StoreError as exc:
        cause: BaseException | None = exc
        while cause is not None:
            texts += [str(cause), repr(cause)]
            cause = cause.__cause__
        return {"exit": 1, "text": "\n".join(texts), "crashed": False}
    return {"exit": 0, "text": "\n".join(texts), "crashed": False}


# -- figures ---------------------------------------------------------------------------------

def _figures(results: dict[str, dict[str, Any]],
             expected: dict[str, set[int] | int]) -> dict[str, Any]:
    needles = {PASSWORD, ENCODED}
    leaks, bad_exits, crashes, lines = [], [], [], 0
    for name, result in results.items():
        text = result["text"]
        lines += len(text.splitlines())
        if any(needle in text for needle in needles):
            leaks.append(name)
        wanted = expected[name]
        if result["exit"] not in (wanted if isinstance(wanted, set) else {wanted}):
            bad_exits.append(f"{name}: exit {result['exit']}")
        if result["crashed"]:
            last = [line for line in text.splitlines()
                    if re.match(r"[\w.]*(Error|Exception):", line)]
            shown = last[-1][:120] if last else "traceback"
            crashes.append(f"{name}: {shown}".replace(PASSWORD, "<password>"))
    debug = sum(r["text"].count('"level": "DEBUG"') for r in results.values())
    agent_errors = results["start_then_worker"]["agent_error_logs"]
    ok = not leaks and not bad_exits and not crashes and debug > 0 and agent_errors > 0
    return {"ok": ok, "runs": len(results), "lines_scanned": lines, "debug_records": debug,
            "agent_error_logs": agent_errors, "leaks": leaks, "bad_exits": bad_exits,
            "crashes": crashes}
