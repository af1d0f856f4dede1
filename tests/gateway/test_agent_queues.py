"""Flow control made visible: a capped agent's queue, a 429 pause, the breaker and a rate wait,
set up through the real engine and SQL functions, then read back from every surface that shows
them: the gateway's `why` and `/metrics`, the dashboard (over HTTP and in Chromium) and
`cpoa agents status` run as a process."""

from __future__ import annotations

import datetime
import json
import re
import uuid
from typing import Any

import psycopg
from playwright.sync_api import expect

from cpoa import defaults
from cpoa.engine import Engine
from cpoa.testing.agent import Reply, ScriptedAgent
from cpoa.testing.cli import cli_env, run_cli
from tests.fix_agents import drive, engine_for, wait_until
from tests.fix_gateway import LiveGateway
from tests.metrics.helpers import parse

HOSTILE = "<img src=x onerror=alert(1)>"
IGA = "/generate_image"


def reach(engine: Engine, ids: list[uuid.UUID], state: str) -> None:
    """Advances each workflow until it has entered ``state`` (its step not yet run)."""
    for workflow_id in ids:
        wait_until(lambda: engine.advance(workflow_id) == state, interval=0.01)


def why(gateway: LiveGateway, workflow_id: uuid.UUID) -> str:
    answer = gateway.client.get(f"/v1/workflows/{workflow_id}/why")
    assert answer.status_code == 200, answer.text
    return answer.json()["reason"]


def scrape(gateway: LiveGateway) -> dict:
    answer = gateway.client.get("/metrics")
    assert answer.status_code == 200, answer.text
    return parse(answer.content)


def agent_gauges(samples: dict, agent: str) -> dict[str, float | None]:
    """The flow-control gauges of one agent (None: the series is absent)."""
    names = ("in_flight", "max_in_flight", "waiting", "rate_waiting",
             "paused_until_timestamp_seconds", "breaker_failures")
    return {name: samples.get((f"cpoa_agent_{name}", (("agent", agent),))) for name in names}


def status_lines(dsn: str, agent: ScriptedAgent) -> dict[str, list[str]]:
    """`cpoa agents status` as a process: {agent: its cells}, after a check of the header."""
    result = run_cli(cli_env(dsn, agent.url), "agents", "status")
    assert result.returncode == 0, result.stderr[-2000:]
    header, *lines = result.stdout.splitlines()
    assert re.split(r"\s{2,}", header) == ["agent", "in flight", "waiting", "rate waits",
                                           "paused until", "failures"]
    return {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line) for line in lines)}


def status_json(dsn: str, agent: ScriptedAgent) -> dict[str, dict[str, Any]]:
    result = run_cli(cli_env(dsn, agent.url), "agents", "status", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    return {row["agent"]: row for row in json.loads(result.stdout)}


def cli_why(dsn: str, agent: ScriptedAgent, workflow_id: uuid.UUID) -> list[str]:
    """`cpoa why` as a process: its lines, after a check that --json says the same."""
    env = cli_env(dsn, agent.url)
    result = run_cli(env, "why", str(workflow_id))
    assert result.returncode == 0, result.stderr[-2000:]
    document = run_cli(env, "why", str(workflow_id), "--json")
    assert json.loads(document.stdout)["reason"] == result.stdout.splitlines()[1]
    return result.stdout.splitlines()


def test_cpoa_why__a_bad_or_unknown_id_is_a_clear_error(dsn, agent):
    """`cpoa why` with a malformed or unknown id exits 2 (as `cpoa status` does) naming the
    field and what is wrong; never a traceback."""
    env = cli_env(dsn, agent.url)
    bad = run_cli(env, "why", "not-a-uuid")
    unknown = run_cli(env, "why", str(uuid.uuid4()))
    assert (bad.returncode, unknown.returncode) == (2, 2), (bad.stderr, unknown.stderr)
    assert bad.stderr == "error: workflow_id: 'not-a-uuid' is not a UUID\n"
    assert unknown.stderr.startswith("error: workflow_id: no workflow ")


def dashboard_rows(gateway: LiveGateway) -> dict[str, list[str]]:
    """The list page's agent table: {agent: its cells}."""
    text = gateway.client.get("/").text
    body = text.split('data-testid="agent-queues">', 1)[1].split("</tbody>", 1)[0]
    return {cells[0]: cells[1:] for cells in (
        re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body))}


def test_agent_queues__a_capped_agents_waiters_on_every_surface(gateway, store, agent, dsn):
    """CPOA_VFA_MAX_IN_FLIGHT=1 and three podcasts at VFA: the first holds the slot (its task
    submitted), the two others wait. `why` tells each waiter the slot count and its place
    (0, then 1 ahead); /metrics, the dashboard and `cpoa agents status` show VFA with 1 of 1
    in flight and 2 waiting. Once the first finishes, the slot passes on and every surface
    shows 1 waiting, the last one 0 ahead."""
    capped = engine_for(store, agent, CPOA_VFA_MAX_IN_FLIGHT="1")
    ids = [capped.start_workflow("podcast", {"topic": f"capped {n}"}) for n in range(3)]
    reach(capped, ids, "synthesizing")
    for workflow_id in ids:
        assert capped.advance(workflow_id) == "synthesizing"
    assert [why(gateway, w) for w in ids[1:]] == [
        "waiting for a VFA slot (1 of 1 in flight; 0 ahead of it)",
        "waiting for a VFA slot (1 of 1 in flight; 1 ahead of it)"]
    assert agent_gauges(scrape(gateway), "VFA") == {
        "in_flight": 1.0, "max_in_flight": 1.0, "waiting": 2.0, "rate_waiting": 0.0,
        "paused_until_timestamp_seconds": 0.0, "breaker_failures": 0.0}
    assert agent_gauges(scrape(gateway), "IGA")["max_in_flight"] is None  # never capped
    assert dashboard_rows(gateway)["VFA"] == ["1 / 1", "2", "0", "–", "0"]
    assert status_lines(dsn, agent)["VFA"] == ["1 / 1", "2", "0", "–", "0"]
    assert cli_why(dsn, agent, ids[2]) == [
        f"{ids[2]}  podcast  synthesizing",
        "waiting for a VFA slot (1 of 1 in flight; 1 ahead of it)"]
    assert status_json(dsn, agent)["VFA"] == {
        "agent": "VFA", "in_flight": 1, "max_in_flight": 1, "waiting": 2, "rate_waiting": 0,
        "paused_until": None, "pause_reason": None, "failures": 0}
    assert drive(capped, ids[0]) == "completed"
    assert why(gateway, ids[2]) == "waiting for a VFA slot (1 of 1 in flight; 0 ahead of it)"
    assert agent_gauges(scrape(gateway), "VFA")["waiting"] == 1.0
    assert status_lines(dsn, agent)["VFA"][:2] == ["1 / 1", "1"]


def _pause(db: psycopg.Connection, agent: str) -> datetime.datetime:
    return db.execute("SELECT paused_until FROM agent_flow WHERE agent = %s",
                      (agent,)).fetchone()["paused_until"]


def _clock(value: datetime.datetime) -> str:
    return value.astimezone(datetime.timezone.utc).strftime("%H:%M:%S")


def test_agent_queues__a_429_pause_on_every_surface(gateway, store, agent, engine, db, dsn):
    """IGA answers one podcast's submit 429 with Retry-After: 30: the other podcast, about to
    submit to IGA, is told "IGA paused until <time> UTC after 429"; /metrics has the pause's
    Unix time, and the dashboard and `cpoa agents status` show it with its reason; once it
    has passed, none of them shows it."""
    ids = [engine.start_workflow("podcast", {"topic": f"paused {n}"}) for n in range(2)]
    reach(engine, ids, "imaging")
    agent.script("POST", IGA, Reply(429, {"error": "slow down"}, headers={"Retry-After": "30"}))
    assert engine.advance(ids[0]) == "imaging"
    assert engine.advance(ids[1]) == "imaging"  # waits for the pause, no request
    until = _pause(db, "IGA")
    assert len(agent.requests_to(IGA)) == 1
    assert re.fullmatch(rf"IGA paused until (\d{{4}}-\d\d-\d\d )?{_clock(until)} UTC after 429",
                        why(gateway, ids[1])), why(gateway, ids[1])
    gauges = agent_gauges(scrape(gateway), "IGA")
    assert gauges["paused_until_timestamp_seconds"] == until.timestamp()
    assert gauges["breaker_failures"] == 0.0
    assert dashboard_rows(gateway)["IGA"][3].endswith(f"{_clock(until)} UTC (429)")
    assert status_lines(dsn, agent)["IGA"][3].endswith(f"{_clock(until)} UTC (429)")
    assert status_json(dsn, agent)["IGA"]["paused_until"] == until.isoformat()
    db.execute("UPDATE agent_flow SET paused_until = now() - interval '1 second' "
               "WHERE agent = 'IGA'")  # as if the 30 s had passed: the pause and its reason go
    assert status_lines(dsn, agent)["IGA"][3] == "–"
    assert agent_gauges(scrape(gateway), "IGA")["paused_until_timestamp_seconds"] == 0.0


def test_agent_queues__the_breaker_is_named_with_its_failures(gateway, engine, db):
    """Five failures in a row reported for IGA (cpoa_agent_report_v1, as the steps' writes
    call it) open its breaker: a podcast about to submit to IGA is told so, with the count,
    and /metrics shows the failures and the pause."""
    [workflow_id] = [engine.start_workflow("podcast", {"topic": "broken"})]
    reach(engine, [workflow_id], "imaging")
    for _ in range(defaults.BREAKER_FAILURES):
        db.execute("SELECT cpoa_agent_report_v1('IGA', false, NULL, NULL, %s, %s, %s)",
                   (defaults.BREAKER_FAILURES, 30.0, 60.0))
    assert engine.advance(workflow_id) == "imaging"
    until = _pause(db, "IGA")
    assert re.fullmatch(rf"IGA paused until (\d{{4}}-\d\d-\d\d )?{_clock(until)} UTC after "
                        rf"5 failed requests in a row \(breaker\)", why(gateway, workflow_id))
    gauges = agent_gauges(scrape(gateway), "IGA")
    assert gauges["breaker_failures"] == 5.0
    assert gauges["paused_until_timestamp_seconds"] == until.timestamp()


def test_agent_queues__a_place_in_a_rate(gateway, store, agent, db, dsn):
    """CPOA_PSWA_RATE_LIMIT=0.01 (one submit per 100 s): of two podcasts at PSWA the first
    submits, the second is given its place 100 s later and is told "waiting for its place in
    PSWA's rate (until <time> UTC)"; /metrics and `cpoa agents status` count one rate wait."""
    rated = engine_for(store, agent, CPOA_PSWA_RATE_LIMIT="0.01")
    ids = [rated.start_workflow("podcast", {"topic": f"rated {n}"}) for n in range(2)]
    reach(rated, ids, "scripting")
    for workflow_id in ids:
        assert rated.advance(workflow_id) == "scripting"
    assert len(agent.requests_to("/weave_script")) == 1
    place = db.execute("SELECT usable_at FROM agent_tokens WHERE workflow_id = %s",
                       (ids[1],)).fetchone()["usable_at"]
    assert re.fullmatch(rf"waiting for its place in PSWA's rate \(until "
                        rf"(\d{{4}}-\d\d-\d\d )?{_clock(place)} UTC\)", why(gateway, ids[1]))
    assert agent_gauges(scrape(gateway), "PSWA")["rate_waiting"] == 1.0
    assert status_lines(dsn, agent)["PSWA"][2] == "1"


def test_agents_status__no_database_is_a_clear_error():
    """With no database to reach, `cpoa agents status` exits 1 with an error line and the
    cause, no traceback."""
    result = run_cli(cli_env("postgresql://nobody@127.0.0.1:1/x", "http://127.0.0.1:9"),
                     "agents", "status", timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_dashboard__agent_queues_in_chromium_with_hostile_names_escaped(
        gateway, store, agent, db, browser):
    """In Chromium the list page's agent table shows VFA's slot held of its cap and its
    waiter, and an agent named with markup (written straight into agent_flow) as text: no
    element is made of it."""
    capped = engine_for(store, agent, CPOA_VFA_MAX_IN_FLIGHT="1")
    ids = [capped.start_workflow("podcast", {"topic": f"seen {n}"}) for n in range(2)]
    reach(capped, ids, "synthesizing")
    for workflow_id in ids:
        assert capped.advance(workflow_id) == "synthesizing"
    db.execute("INSERT INTO agent_flow (agent, max_in_flight) VALUES (%s, 2)", (HOSTILE,))
    page = browser.new_page()
    page.goto(gateway.url + "/")
    table = page.get_by_test_id("agent-queues")
    vfa = table.locator('tr[data-agent="VFA"] td')
    expect(vfa).to_have_text(["VFA", "1 / 1", "1", "0", "–", "0"])
    expect(table.locator("tr").first.locator("td").first).to_have_text(HOSTILE)
    assert page.locator("main img").count() == 0
    page.close()
