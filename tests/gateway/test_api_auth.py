"""CPOA_API_TOKEN: every POST needs the bearer token; GETs stay open; the token never leaks."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from cpoa import settings as settings_module
from cpoa.gateway import auth
from tests.fix_agents import agent_env
from tests.fix_gateway import LiveGateway

TOKEN = "tok-9f3a81c2e5d74b6a"  # distinctive enough to search the logs for
CHALLENGE = 'Bearer realm="cpoa"'
INVALID = 'Bearer realm="cpoa", error="invalid_token"'


@pytest.fixture
def secured(make_gateway: Any) -> LiveGateway:
    """A gateway whose server has CPOA_API_TOKEN set."""
    return make_gateway(CPOA_API_TOKEN=TOKEN)


def posts(workflow_id: str) -> list[tuple[str, dict[str, Any] | None]]:
    """Every mutating call, with a valid body."""
    return [("/v1/podcasts", {"topic": "tides"}), ("/v1/snippets", {"query": "ocean"}),
            (f"/v1/workflows/{workflow_id}/cancel", None),
            (f"/v1/workflows/{workflow_id}/retry", None)]


def snapshot(db: Any) -> list[tuple[Any, ...]]:
    rows = db.execute("SELECT workflow_id, state, version FROM workflow_instances "
                      "ORDER BY workflow_id").fetchall()
    return [tuple(r.values()) for r in rows]


@pytest.mark.parametrize("authorization, challenge", [
    (None, CHALLENGE),
    ("Bearer", CHALLENGE),
    (f"Basic {TOKEN}", CHALLENGE),
    ("Bearer wrong-token", INVALID),
    (f"Bearer {TOKEN}x", INVALID),
    (f"Bearer {TOKEN[:-1]}", INVALID),
    ("Bearer tok-é-latin1", INVALID),
])
def test_auth__post_without_the_right_token_is_401(secured, engine, db, authorization,
                                                   challenge):
    """Every POST without the right bearer token is a 401 with WWW-Authenticate; nothing
    changes, and the answer never contains the token."""
    workflow_id = str(engine.start_workflow("podcast", {"topic": "tides"}))
    before = snapshot(db)
    headers = {"Authorization": authorization.encode("latin-1")} if authorization else {}
    for path, body in posts(workflow_id):
        answer = secured.client.post(path, json=body, headers=headers)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.headers["www-authenticate"] == challenge
        assert answer.json()["error"] == "unauthorized"
        assert TOKEN not in answer.text
    assert snapshot(db) == before


def test_auth__checked_before_the_body_is_read(secured, db):
    """Without the token a malformed body is a 401 too (the body is not even parsed)."""
    answer = secured.client.post("/v1/podcasts", content=b"{not json",
                                 headers={"Content-Type": "application/json"})
    assert answer.status_code == 401
    assert snapshot(db) == []


def test_auth__right_token_is_accepted(secured, engine):
    """With the token, POSTs do their work; GETs need no token."""
    good = {"Authorization": f"Bearer {TOKEN}"}
    answer = secured.client.post("/v1/podcasts", json={"topic": "tides"}, headers=good)
    assert answer.status_code == 202, answer.text
    workflow_id = answer.json()["workflow_id"]
    assert secured.client.post("/v1/snippets", json={"query": "q"}, headers=good).status_code == 202
    invalid = secured.client.post(f"/v1/workflows/{workflow_id}/retry", headers=good)
    assert invalid.status_code == 409  # authorised, but not failed
    cancelled = secured.client.post(f"/v1/workflows/{workflow_id}/cancel", headers=good)
    assert (cancelled.status_code, cancelled.json()["state"]) == (200, "cancelled")
    for path in ("/v1/workflows", f"/v1/workflows/{workflow_id}",
                 f"/v1/workflows/{workflow_id}/why", "/healthz", "/metrics", "/openapi.json"):
        assert secured.client.get(path).status_code == 200, path


def test_auth__no_token_configured_means_open(gateway):
    """Without CPOA_API_TOKEN, POSTs need no header (loopback default)."""
    assert gateway.client.post("/v1/podcasts", json={"topic": "t"}).status_code == 202


def test_auth__token_never_logged(secured, engine, caplog):
    """At DEBUG, with right, wrong and bad calls, no log record carries the token."""
    caplog.set_level(logging.DEBUG)
    workflow_id = str(engine.start_workflow("podcast", {"topic": "tides"}))
    for authorization in (f"Bearer {TOKEN}", f"Bearer {TOKEN}-wrong", f"Basic {TOKEN}"):
        headers = {"Authorization": authorization}
        for path, body in posts(workflow_id):
            secured.client.post(path, json=body, headers=headers)
        secured.client.post("/v1/podcasts", content=b"{", headers=headers)
    assert caplog.records, "nothing was logged: the test would prove nothing"
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert not any(TOKEN in str(value) for value in vars(record).values())


def test_settings__token_is_a_secret():
    """The token is read from CPOA_API_TOKEN, kept out of repr, and listed as a secret."""
    settings = settings_module.from_env(agent_env("http://127.0.0.1:1", CPOA_API_TOKEN=TOKEN))
    assert settings.api_token == TOKEN
    assert TOKEN not in repr(settings)
    assert TOKEN in settings.secrets


@pytest.mark.parametrize("given, expected", [
    (TOKEN, True), (TOKEN + "x", False), ("", False), ("é" * 3, False), ("\udcff", False)])
def test_token_matches__exact_only(given, expected):
    """Only the exact token matches, whatever characters the guess holds."""
    assert auth.token_matches(given, TOKEN) is expected
