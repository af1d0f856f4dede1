"""The JSON API over real HTTP (uvicorn on loopback), a real PostgreSQL and a real agent."""

from __future__ import annotations

import base64
import datetime
import json
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import conninfo as pg_conninfo

from cpoa import defaults, sql
from cpoa.testing.agent import Reply, ScriptedAgent
from tests.fix_agents import drive, engine_for
from tests.fix_gateway import LiveGateway

MIB = 1024 * 1024


def started(gateway: LiveGateway, kind: str = "podcast", key: str | None = None,
            **body: Any) -> str:
    """Starts a workflow through the API; returns its id."""
    body = body or ({"topic": "tides"} if kind == "podcast" else {"query": "ocean"})
    headers = {"Idempotency-Key": key} if key else {}
    answer = gateway.client.post(f"/v1/{'podcasts' if kind == 'podcast' else 'snippets'}",
                                 json=body, headers=headers)
    assert answer.status_code == 202, answer.text
    return answer.json()["workflow_id"]


def count_workflows(db: Any) -> int:
    return db.execute("SELECT count(*) AS n FROM workflow_instances").fetchone()["n"]


# -- starting ---------------------------------------------------------------------------------

def test_start_podcast__202_then_status_url_shows_it(gateway):
    """A started podcast answers 202 with a status URL (and Location) that shows the workflow."""
    body = {"topic": " tidal power ", "urls": ["https://example.org/tides"],
            "voice_params": {"voice_name": "en-GB", "speaking_rate": 1.1},
            "persona": "curious host", "client_id": "browser-7", "user_id": "u-1"}
    answer = gateway.client.post("/v1/podcasts", json=body)
    assert answer.status_code == 202, answer.text
    workflow_id = answer.json()["workflow_id"]
    assert answer.json()["status_url"] == f"/v1/workflows/{workflow_id}"
    assert answer.headers["location"] == answer.json()["status_url"]
    status = gateway.client.get(answer.json()["status_url"]).json()
    assert (status["kind"], status["state"], status["progress"]) == ("podcast", "fetching", 0.0)
    assert status["params"] == {"topic": "tidal power", "urls": ["https://example.org/tides"],
                                "voice_params": {"voice_name": "en-GB", "speaking_rate": 1.1},
                                "persona": "curious host"}
    assert status["client_id"] == "browser-7"
    assert [(h["from"], h["to"], h["trigger"]) for h in status["history"]] == [
        (None, "fetching", "start")]


def test_start__same_idempotency_key_same_workflow(gateway):
    """The same Idempotency-Key gives the same workflow; another key a new one."""
    first = started(gateway, key="req-42")
    assert started(gateway, key="req-42", topic="something else") == first
    assert started(gateway, key="req-43") != first
    assert started(gateway, "snippets", key="req-42") != first  # another kind, another task name


def test_start_snippets__202_with_limit(gateway):
    """Snippets start with the query and limit given."""
    workflow_id = started(gateway, "snippets", query="ocean energy", limit=3)
    status = gateway.client.get(f"/v1/workflows/{workflow_id}").json()
    assert (status["kind"], status["state"]) == ("snippets", "discovering")
    assert status["params"] == {"query": "ocean energy", "limit": 3}


@pytest.mark.parametrize("body, field", [
    ({}, "topic"),
    ({"topic": ""}, "topic"),
    ({"topic": "   "}, "topic"),
    ({"topic": 7}, "topic"),
    ({"topic": "x" * 1001}, "topic"),
    ({"topic": "t", "colour": "red"}, "colour"),
    ({"topic": "t", "urls": "https://example.org"}, "urls"),
    ({"topic": "t", "urls": ["ftp://example.org/x"]}, "urls[0]"),
    ({"topic": "t", "urls": ["https://e.org"] * 21}, "urls"),
    ({"topic": "t", "voice_params": {"pitch": "high"}}, "voice_params.pitch"),
    ({"topic": "t", "voice_params": {"speed": 2}}, "voice_params.speed"),
    ({"topic": "t", "max_results": 0}, "max_results"),
    ({"topic": "t", "client_id": ""}, "client_id"),
    (b'{"topic": "t", "voice_params": {"pitch": NaN}}', "voice_params.pitch"),
    (b'{"topic": "t", "voice_params": {"pitch": 1e999}}', "voice_params.pitch"),
    (b'{"topic": "\\ud800 lone surrogate"}', "topic"),
    (b'{"topic": "t\\u0000"}', "topic"),
    (b'{"topic": ', "body"),
    (b'\xff\xfe{"topic": "t"}', "body"),
    (b"[" * 100_000, "body"),
    (b'["topic"]', "body"),
    (b"", "body"),
])
def test_start_podcast__bad_input_is_422_naming_the_field(gateway, db, body, field):
    """A bad body is refused with 422 naming the field, and nothing is written."""
    if isinstance(body, bytes):
        answer = gateway.client.post("/v1/podcasts", content=body,
                                     headers={"Content-Type": "application/json"})
    else:
        answer = gateway.client.post("/v1/podcasts", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_input"
    assert answer.json()["field"] == field, answer.text
    assert count_workflows(db) == 0


@pytest.mark.parametrize("body, field", [
    ({"query": "q", "limit": 51}, "limit"),
    ({"query": "q", "limit": "5"}, "limit"),
    ({"limit": 5}, "query"),
])
def test_start_snippets__bad_input_is_422_naming_the_field(gateway, db, body, field):
    """Snippets parameters are validated like the podcast's."""
    answer = gateway.client.post("/v1/snippets", json=body)
    assert (answer.status_code, answer.json()["field"]) == (422, field), answer.text
    assert count_workflows(db) == 0


def test_start__bad_idempotency_key_is_422(gateway, db):
    """An Idempotency-Key over 200 characters is refused naming the header."""
    answer = gateway.client.post("/v1/podcasts", json={"topic": "t"},
                                 headers={"Idempotency-Key": "k" * 201})
    assert (answer.status_code, answer.json()["field"]) == (422, "Idempotency-Key")
    assert count_workflows(db) == 0


# -- body size --------------------------------------------------------------------------------

def test_body__over_1_mib_is_413(gateway, db):
    """A body over 1 MiB is refused with 413, declared or streamed; exactly 1 MiB is read."""
    answer = gateway.client.post("/v1/podcasts", content=b" " * (MIB + 1),
                                 headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert (answer.json()["error"], answer.json()["field"]) == ("payload_too_large", "body")
    chunks = (b" " * 65536 for _ in range(17))  # no Content-Length: chunked transfer
    answer = gateway.client.post("/v1/snippets", content=chunks,
                                 headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert count_workflows(db) == 0
    exact = json.dumps({"topic": "tides"}).encode().ljust(MIB)
    answer = gateway.client.post("/v1/podcasts", content=exact,
                                 headers={"Content-Type": "application/json"})
    assert answer.status_code == 202, answer.text


# -- reading ----------------------------------------------------------------------------------

def test_get_workflow__finished_podcast_in_full(gateway, engine):
    """A completed workflow shows outputs, every task attempt and the whole history."""
    workflow_id = started(gateway)
    assert drive(engine, workflow_id) == "completed"
    status = gateway.client.get(f"/v1/workflows/{workflow_id}").json()
    assert (status["state"], status["progress"], status["error"]) == ("completed", 1.0, None)
    assert status["outputs"]["audio"]["url"] == "http://127.0.0.1/audio.mp3"
    assert [t["agent"] for t in status["tasks"]] == ["WCHA", "TDA", "PSWA", "VFA", "IGA", "ASF"]
    assert all(t["status"] == "succeeded" for t in status["tasks"])
    assert [h["to"] for h in status["history"]] == [
        "fetching", "analyzing", "scripting", "synthesizing", "imaging", "finalizing",
        "completed"]
    assert status["ended_at"] is not None and status["next_run_at"] is None


@pytest.mark.parametrize("path, status, field", [
    (f"/v1/workflows/{uuid.UUID(int=7)}", 404, "workflow_id"),
    ("/v1/workflows/not-a-uuid", 422, "workflow_id"),
    (f"/v1/workflows/{uuid.UUID(int=7)}/why", 404, "workflow_id"),
    ("/v1/workflows/123/why", 422, "workflow_id"),
])
def test_get_workflow__unknown_404_malformed_422(gateway, path, status, field):
    """An unknown id is a 404 and a malformed one a 422, both naming workflow_id."""
    answer = gateway.client.get(path)
    assert (answer.status_code, answer.json()["field"]) == (status, field), answer.text


# -- listing ----------------------------------------------------------------------------------

def test_list_workflows__pages_return_each_workflow_once(gateway, engine, db):
    """Paging through 15 workflows 4 at a time, some with equal start times, while new ones
    start between pages, returns each of the 15 once, newest first."""
    ids = [str(engine.start_workflow("podcast", {"topic": f"t{i}"}) if i % 3
               else engine.start_workflow("snippets", {"query": f"q{i}"})) for i in range(15)]
    db.execute("UPDATE workflow_instances SET start_timestamp = now() - interval '1 hour' "
               "WHERE workflow_id = ANY(%s::uuid[])", (ids[4:10],))
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = gateway.client.get("/v1/workflows", params=params).json()
        assert len(page["items"]) <= 4
        seen += page["items"]
        engine.start_workflow("podcast", {"topic": "newer than every page so far"})
        cursor = page["next_cursor"]
        if cursor is None:
            break
    got = [w["workflow_id"] for w in seen]
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))
    keys = [(datetime.datetime.fromisoformat(w["started_at"]), w["workflow_id"]) for w in seen]
    assert keys == sorted(keys, reverse=True)
    assert len(seen) == 15 and len(gateway.client.get("/v1/workflows").json()["items"]) == 19


def test_list_workflows__filters_by_state_and_kind(gateway, engine):
    """state and kind narrow the listing; a summary carries no params or outputs."""
    podcast, other = started(gateway), started(gateway)
    snippets = started(gateway, "snippets")
    engine.cancel(other)

    def listed(**params: str) -> list[str]:
        answer = gateway.client.get("/v1/workflows", params=params)
        assert answer.status_code == 200, answer.text
        return [w["workflow_id"] for w in answer.json()["items"]]
    assert listed(kind="snippets") == [snippets]
    assert listed(state="cancelled") == [other]
    assert listed(state="fetching", kind="podcast") == [podcast]
    assert listed(state="completed") == []
    item = gateway.client.get("/v1/workflows").json()["items"][0]
    assert "params" not in item and "outputs" not in item and "progress" in item


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("params, field", [
    ({"cursor": "not a cursor"}, "cursor"),
    ({"cursor": _b64("[1, 2]")}, "cursor"),
    ({"cursor": _b64(f'["2026-01-01T00:00:00", "{uuid.UUID(int=1)}"]')}, "cursor"),
    ({"cursor": _b64('["2026-01-01T00:00:00+00:00", "not-a-uuid"]')}, "cursor"),
    ({"cursor": _b64('{"a": 1}')}, "cursor"),
    ({"cursor": "x" * 201}, "cursor"),
    ({"state": "sleeping"}, "state"),
    ({"kind": "radio"}, "kind"),
    ({"limit": "0"}, "limit"),
    ({"limit": "201"}, "limit"),
    ({"limit": "many"}, "limit"),
])
def test_list_workflows__bad_query_is_422_naming_it(gateway, params, field):
    """A cursor this API did not make, an unknown state or kind, a bad limit: 422 naming it."""
    answer = gateway.client.get("/v1/workflows", params=params)
    assert (answer.status_code, answer.json()["field"]) == (422, field), answer.text


# -- cancel and retry -------------------------------------------------------------------------

def test_cancel__200_then_409(gateway):
    """A working workflow is cancelled (200); cancelling it again is a 409."""
    workflow_id = started(gateway)
    answer = gateway.client.post(f"/v1/workflows/{workflow_id}/cancel")
    assert (answer.status_code, answer.json()) == (200, {"workflow_id": workflow_id,
                                                         "state": "cancelled"})
    again = gateway.client.post(f"/v1/workflows/{workflow_id}/cancel")
    assert (again.status_code, again.json()["error"]) == (409, "invalid_transition")
    retried = gateway.client.post(f"/v1/workflows/{workflow_id}/retry")
    assert retried.status_code == 409


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_actions__unknown_404_malformed_422(gateway, action):
    """cancel and retry of an unknown id are 404, of a malformed id 422 naming workflow_id."""
    unknown = gateway.client.post(f"/v1/workflows/{uuid.UUID(int=9)}/{action}")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_workflow")
    malformed = gateway.client.post(f"/v1/workflows/zzz/{action}")
    assert (malformed.status_code, malformed.json()["field"]) == (422, "workflow_id")


def test_retry__failed_workflow_resumes_then_409(gateway, engine, agent):
    """A failed workflow is retried where it failed (200), and completes; retrying a working
    one is a 409."""
    agent.script("POST", "/harvest", Reply(422, {"error": "topic blocked"}))
    workflow_id = started(gateway)
    assert drive(engine, workflow_id) == "failed"
    answer = gateway.client.post(f"/v1/workflows/{workflow_id}/retry")
    assert (answer.status_code, answer.json()["state"]) == (200, "fetching")
    assert gateway.client.post(f"/v1/workflows/{workflow_id}/retry").status_code == 409
    assert drive(engine, workflow_id) == "completed"
    completed = gateway.client.post(f"/v1/workflows/{workflow_id}/cancel")
    assert (completed.status_code, completed.json()["error"]) == (409, "invalid_transition")


# -- why --------------------------------------------------------------------------------------

def why(gateway: LiveGateway, workflow_id: str) -> dict[str, Any]:
    answer = gateway.client.get(f"/v1/workflows/{workflow_id}/why")
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_why__new_workflow_is_due_now(gateway):
    """A workflow nobody has touched is due, waiting for a worker."""
    report = why(gateway, started(gateway))
    assert report["reason"] == "due now, waiting for a worker"
    assert report["due"] is True and report["tasks"] == [] and report["lease_owner"] is None
    assert report["recoveries_left"] == report["max_recovery_attempts"] == 5


def test_why__leased_names_owner_and_expiry(gateway, store):
    """A workflow leased by a worker names the owner and when the lease expires."""
    workflow_id = started(gateway)
    _, lease = store.lease(uuid.UUID(workflow_id), "host-a:4242:c0ffee", 60.0)
    assert lease is not None
    report = why(gateway, workflow_id)
    expires = datetime.datetime.fromisoformat(report["lease_expires_at"])
    assert report["reason"] == (f"leased by host-a:4242:c0ffee until "
                                f"{expires.isoformat(timespec='seconds')} "
                                f"(running the fetching step)")
    assert report["lease_owner"] == "host-a:4242:c0ffee" and report["due"] is False
    assert 55 < report["lease_expires_in_s"] <= 60


def test_why__waiting_for_agent_names_task_poll_and_deadline(gateway, store, agent):
    """A submitted task names the agent's task id, the next poll and the step's deadline."""
    slow = engine_for(store, agent, CPOA_WCHA_POLLING_INTERVAL_SECONDS="30",
                      CPOA_WCHA_POLLING_TIMEOUT_SECONDS="300")
    workflow_id = started(gateway)
    assert slow.advance(workflow_id) == "fetching"
    report = why(gateway, workflow_id)
    [task] = report["tasks"]
    assert (task["agent"], task["status"], task["transient_failures"]) == ("WCHA", "submitted", 0)
    assert task["attempts_per_request"] == 3 and task["external_task_id"]
    # Adaptive polling: the first poll comes at a fifth of the 30 s interval.
    assert 5 < task["next_poll_in_s"] <= 6 and 295 < task["deadline_in_s"] <= 300
    deadline = datetime.datetime.fromisoformat(task["poll_deadline_at"])
    assert report["reason"] == (f"waiting for WCHA task {task['external_task_id']}, next poll "
                                f"in {task['next_poll_in_s']:.1f} s, deadline "
                                f"{deadline.isoformat(timespec='seconds')}")
    assert report["due"] is False and 5 < report["next_run_in_s"] <= 6


def test_why__transient_failure_is_retried_until_the_deadline(gateway, store, agent):
    """An agent answering 503 is retried: the reason says so, with the error and deadline."""
    agent.script("POST", "/harvest", *[Reply(503, {"error": "overloaded"})] * 3)
    slow = engine_for(store, agent, CPOA_WCHA_POLLING_INTERVAL_SECONDS="30")
    workflow_id = started(gateway)
    assert slow.advance(workflow_id) == "fetching"
    report = why(gateway, workflow_id)
    [task] = report["tasks"]
    assert (task["status"], task["transient_failures"]) == ("pending", 1)
    assert task["error"]["transient"] is True
    assert report["reason"].startswith(f"retrying the WCHA request after: {task['error']['reason']}"
                                       f"; next attempt in ")
    assert "deadline" in report["reason"] and "503" in report["reason"]


def test_why__failed_gives_the_reason_and_the_failed_task(gateway, engine, agent):
    """A failed workflow's reason is its error; the failed step's task shows the agent's 422."""
    agent.script("POST", "/harvest", Reply(422, {"error": "topic blocked"}))
    workflow_id = started(gateway)
    assert drive(engine, workflow_id) == "failed"
    report = why(gateway, workflow_id)
    assert report["reason"] == f"failed: {report['error']}"
    assert report["reason"].startswith("failed: fetching: WCHA rejected the request with HTTP 422")
    [task] = report["tasks"]
    assert (task["status"], task["error"]["status_code"]) == ("failed", 422)
    assert report["due"] is False and report["failed_from_state"] == "fetching"


def test_why__completed(gateway, engine):
    """A completed workflow says so."""
    workflow_id = started(gateway)
    assert drive(engine, workflow_id) == "completed"
    assert why(gateway, workflow_id)["reason"] == "completed"


# -- operations -------------------------------------------------------------------------------

def test_healthz__ok_with_schema_version(gateway):
    """healthz answers 200 with the applied and the expected schema version."""
    answer = gateway.client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "database": "reachable", "message": None,
                             "schema_version": sql.schema_version(),
                             "expected_schema_version": sql.schema_version()}


@pytest.mark.parametrize("statement, message", [
    ("UPDATE cpoa_schema_version SET version = 0",
     "schema version 0 is older than {v}: run `cpoa db init`"),
    ("DROP TABLE cpoa_schema_version", "schema not applied: run `cpoa db init`"),
])
def test_healthz__old_or_missing_schema_is_503(gateway, db, statement, message):
    """A schema older than the code's, or none, is a 503 that says to run `cpoa db init`."""
    db.execute(statement)
    answer = gateway.client.get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["database"] == "reachable" and answer.json()["status"] == "unavailable"
    assert answer.json()["message"] == message.format(v=sql.schema_version())


def test_healthz__database_gone_is_503_promptly(gateway, server_dsn, dsn):
    """With the database gone, healthz answers 503 within its connection timeout."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{pg_conninfo.conninfo_to_dict(dsn)["dbname"]}" WITH (FORCE)')
    for _ in range(2):  # the broken pooled connection first, then no connection at all
        began = time.monotonic()
        answer = gateway.client.get("/healthz")
        assert answer.status_code == 503
        assert time.monotonic() - began < defaults.HEALTHZ_TIMEOUT_S + 2.0
        assert answer.json()["database"] == "unreachable"
        assert answer.json()["message"] == "the database cannot be reached"


def test_database_error__503_without_the_database_words(gateway, db):
    """A failing query is a 503 with Retry-After and a fixed message, not the driver's text."""
    db.execute("DROP TABLE workflow_instances CASCADE")
    answer = gateway.client.get("/v1/workflows")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json() == {"error": "database_unavailable", "field": None,
                             "message": "the database is unavailable; try again later"}


def test_metrics__prometheus_text(gateway):
    """/metrics answers the Prometheus text format."""
    started(gateway)
    answer = gateway.client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert "# TYPE cpoa_" in answer.text


def test_openapi__documents_every_route_and_the_token(gateway):
    """/openapi.json lists every route; POSTs declare the bearer scheme, GETs do not."""
    spec = gateway.client.get("/openapi.json").json()
    operations = {(path, method): op for path, methods in spec["paths"].items()
                  for method, op in methods.items()}
    assert set(operations) >= {
        ("/v1/podcasts", "post"), ("/v1/snippets", "post"), ("/v1/workflows", "get"),
        ("/v1/workflows/{workflow_id}", "get"), ("/v1/workflows/{workflow_id}/why", "get"),
        ("/v1/workflows/{workflow_id}/cancel", "post"),
        ("/v1/workflows/{workflow_id}/retry", "post"), ("/healthz", "get"), ("/metrics", "get")}
    for (path, method), op in operations.items():
        if path.startswith("/v1/callbacks/"):  # an agent's: its signed URL is the credential
            assert "security" not in op, path
        elif path.startswith("/v1/") or path in ("/healthz", "/metrics"):
            assert (op.get("security") == [{"bearer": []}]) == (method == "post"), path


def test_agent_is_not_called_by_reads(gateway, agent: ScriptedAgent):
    """Starting, reading and diagnosing never call an agent (only workers do)."""
    workflow_id = started(gateway)
    for path in (f"/v1/workflows/{workflow_id}", f"/v1/workflows/{workflow_id}/why",
                 "/v1/workflows", "/healthz"):
        assert gateway.client.get(path).status_code == 200
    assert agent.requests == []
