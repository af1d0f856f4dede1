"""Prometheus metrics in one process: real workflows on a real database, real HTTP agents.

The counters belong to the process, so each test compares a scrape after with one before; the
gauges come from the test's own database, so they are compared as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cpoa import errors as cpoa_errors
from cpoa import machine, metrics, recovery
from cpoa.agents.client import AgentClient
from cpoa.testing.agent import Reply
from tests.fix_agents import drive, engine_for, failed_with, leave, wait_until
from tests.metrics.helpers import Samples, delta, errors, scrape, transitions, value

PODCAST_STEPS = list(zip(machine.PODCAST_STEPS, [*machine.PODCAST_STEPS[1:], "completed"]))


# -- transitions and steps -----------------------------------------------------------------------

def test_transitions__counted_once_committed_by_kind_and_states(engine, agent, store):
    """A completed podcast, and one failed in scripting, retried, then cancelled: each
    (kind, from, to) counts what happened, and every other edge stays at 0."""
    agent.script("POST", "/weave_script", Reply(422, {"error": "no script today"}))
    before = scrape(store)
    failing = engine.start_workflow("podcast", {"topic": "tides"})
    failed_with(engine, failing, "scripting")
    completing = engine.start_workflow("podcast", {"topic": "tides"})
    assert drive(engine, completing) == "completed"
    assert engine.retry(failing) == "scripting"
    assert engine.cancel(failing) == "cancelled"
    after = scrape(store)

    expected = {edge: 1 for edge in PODCAST_STEPS}
    expected.update({("fetching", "analyzing"): 2, ("analyzing", "scripting"): 2,
                     ("scripting", "failed"): 1, ("failed", "scripting"): 1,
                     ("scripting", "cancelled"): 1})
    for source, dest in sorted(machine.edges("podcast")):
        assert (transitions(after, "podcast", source, dest)
                - transitions(before, "podcast", source, dest)
                == expected.get((source, dest), 0)), (source, dest)
    assert all(transitions(after, "snippets", s, d) == transitions(before, "snippets", s, d)
               for s, d in machine.edges("snippets"))


def test_step_duration__one_observation_per_agent_request(engine, agent, store):
    """Every submit and poll of a podcast is one observation of its agent's histogram."""
    before = scrape(store)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert drive(engine, workflow_id) == "completed"
    after = scrape(store)
    for agent_name, requests in (("WCHA", 2), ("TDA", 2), ("PSWA", 2), ("VFA", 2), ("IGA", 2),
                                 ("ASF", 1)):
        count = ("cpoa_step_duration_seconds_count", (("agent", agent_name),))
        assert after[count] - before.get(count, 0.0) == requests, agent_name
        total = ("cpoa_step_duration_seconds_sum", (("agent", agent_name),))
        assert after[total] > before.get(total, 0.0)
        inf = ("cpoa_step_duration_seconds_bucket", (("agent", agent_name), ("le", "+Inf")))
        assert after[inf] == after[count]


# -- agent errors, one test per kind -------------------------------------------------------------

def test_agent_errors__4xx_is_permanent(engine, agent, store):
    """A 422 answer to WCHA's submit counts one permanent WCHA error."""
    agent.script("POST", "/harvest", Reply(422, {"error": "topic rejected"}))
    before = errors(scrape(store), "WCHA")
    failed_with(engine, engine.start_workflow("podcast", {"topic": "tides"}), "fetching")
    assert delta(errors(scrape(store), "WCHA"), before) == {"permanent": 1}


def test_agent_errors__failed_task_is_permanent(engine, agent, store):
    """A poll answering FAILURE counts one permanent error of that agent."""
    agent.script("GET", "/v1/tasks", Reply(500, {"status": "FAILURE",
                                                 "error": {"message": "robots.txt forbids"}}))
    before = errors(scrape(store), "WCHA")
    failed_with(engine, engine.start_workflow("podcast", {"topic": "tides"}), "fetching")
    assert delta(errors(scrape(store), "WCHA"), before) == {"permanent": 1}


def test_agent_errors__5xx_is_transient(store, agent):
    """A 503 that outlives the inline retries counts one transient error; the step goes on."""
    engine = engine_for(store, agent, CPOA_SERVICE_RETRY_COUNT="1")
    agent.script("POST", "/harvest", Reply(503))
    before = errors(scrape(store), "WCHA")
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert leave(engine, workflow_id, "fetching") == "analyzing"
    assert delta(errors(scrape(store), "WCHA"), before) == {"transient": 1}


def test_agent_errors__invalid_result_is_invalid(engine, agent, store):
    """A TDA result that breaks the contract counts one invalid TDA error."""
    agent.set_result("/discover_topics", {"status": "success", "discovered_topics": "none"})
    before = errors(scrape(store), "TDA")
    reason = failed_with(engine, engine.start_workflow("podcast", {"topic": "tides"}),
                         "analyzing")
    assert "discovered_topics" in reason
    assert delta(errors(scrape(store), "TDA"), before) == {"invalid": 1}


@pytest.mark.slow
def test_agent_errors__request_timeout_is_timeout(store, agent):
    """A submit answered after the request timeout counts one timeout, not a transient."""
    engine = engine_for(store, agent, lambda s: AgentClient(s, submit_timeout_s=0.2),
                        CPOA_SERVICE_RETRY_COUNT="1")
    agent.script("POST", "/harvest", Reply(503, delay_s=0.5))
    before = errors(scrape(store), "WCHA")
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert leave(engine, workflow_id, "fetching") == "analyzing"
    assert delta(errors(scrape(store), "WCHA"), before) == {"timeout": 1}


@pytest.mark.slow
def test_agent_errors__polling_timeout_is_timeout(store, make_agent):
    """A task still pending at its step's polling timeout counts one timeout."""
    agent = make_agent(pending_polls=10**6)
    engine = engine_for(store, agent, CPOA_WCHA_POLLING_TIMEOUT_SECONDS="0.3")
    before = errors(scrape(store), "WCHA")
    reason = failed_with(engine, engine.start_workflow("podcast", {"topic": "tides"}),
                         "fetching")
    assert "polling timeout" in reason
    assert delta(errors(scrape(store), "WCHA"), before) == {"timeout": 1}


@pytest.mark.parametrize("exc, kind", [
    (cpoa_errors.AgentUnavailable("503"), "transient"),
    (cpoa_errors.AgentRejected("422"), "permanent"),
    (cpoa_errors.AgentTaskFailed("FAILURE"), "permanent"),
    (cpoa_errors.InvalidAgentResult("bad", field="result"), "invalid"),
    (cpoa_errors.AgentTimeout("late"), "timeout"),
])
def test_error_kind__follows_the_exception_tree(exc, kind):
    """Each AgentError class maps to one ``kind`` label."""
    assert metrics.error_kind(exc) == kind


# -- leases --------------------------------------------------------------------------------------

def test_leases__expired_by_the_sweeper_then_recovered(engine, store):
    """A lease left to expire by a dead worker is counted by the sweep that releases it, and
    the step completed afterwards counts one recovery (later steps none)."""
    before = scrape(store)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert len(store.claim_due("dead-worker", 0.05, 1)) == 1
    wait_until(lambda: recovery.sweep(store).requeued)
    assert drive(engine, workflow_id) == "completed"
    after = scrape(store)
    assert value(after, "cpoa_leases_expired_total") - value(
        before, "cpoa_leases_expired_total") == 1
    assert value(after, "cpoa_leases_recovered_total") - value(
        before, "cpoa_leases_recovered_total") == 1


def test_leases__taken_over_by_advance_counts_a_recovery(engine, store):
    """An expired lease taken over by ``advance`` (no sweep) counts one recovery, no expiry."""
    before = scrape(store)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert len(store.claim_due("dead-worker", 0.05, 1)) == 1
    assert leave(engine, workflow_id, "fetching") == "analyzing"
    after = scrape(store)
    assert value(after, "cpoa_leases_expired_total") == value(before, "cpoa_leases_expired_total")
    assert value(after, "cpoa_leases_recovered_total") - value(
        before, "cpoa_leases_recovered_total") == 1


# -- gauges read from the database ---------------------------------------------------------------

def test_gauges__workflows_by_state(engine, agent, store):
    """One completed, one failed and one fresh workflow show as 1, 1 and 1; every other state
    of both machines as 0."""
    agent.script("POST", "/harvest", Reply(422, {"error": "no"}))
    failed_with(engine, engine.start_workflow("podcast", {"topic": "a"}), "fetching")
    assert drive(engine, engine.start_workflow("podcast", {"topic": "b"})) == "completed"
    engine.start_workflow("snippets", {"query": "c"})
    samples = scrape(store)
    states = {s for kind in machine.KINDS for s in machine.states(kind)}
    assert {s: value(samples, "cpoa_workflows", state=s) for s in states} == {
        **dict.fromkeys(states, 0.0), "failed": 1.0, "completed": 1.0, "discovering": 1.0}
    assert value(samples, "cpoa_database_up") == 1


def test_gauges__outbox_backlog_and_oldest_due_age(engine, store):
    """A due workflow with a client_id and no ASF delivering: one undelivered UI event, and the
    age of the oldest due workflow grows above 0; a workflow without client_id adds no event."""
    empty = scrape(store)
    assert value(empty, "cpoa_oldest_due_workflow_age_seconds") == 0
    assert value(empty, "cpoa_outbox_backlog") == 0
    engine.start_workflow("podcast", {"topic": "tides"}, client_id="browser-7")
    engine.start_workflow("podcast", {"topic": "tides"})

    def aged() -> Samples | None:
        samples = scrape(store)
        return samples if value(samples, "cpoa_oldest_due_workflow_age_seconds") > 0 else None
    samples = wait_until(aged)
    assert value(samples, "cpoa_outbox_backlog") == 1
    assert value(samples, "cpoa_workflows", state="fetching") == 2


def test_gauges__pool_in_use_and_max(store):
    """A connection held elsewhere shows as one in use (the scrape's own is not counted)."""
    with store.pool.connection():
        samples = scrape(store)
    assert value(samples, "cpoa_db_pool_connections_in_use") == 1
    assert value(samples, "cpoa_db_pool_requests_waiting") == 0
    assert value(samples, "cpoa_db_pool_max_connections") == 4


def test_exposition__database_down_reports_up_0_and_keeps_counters(store, dsn, server_dsn):
    """With the database gone, a scrape still answers: database_up 0, counters present."""
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    samples = scrape(store)
    assert value(samples, "cpoa_database_up") == 0
    assert ("cpoa_workflows", (("state", "completed"),)) not in samples
    assert ("cpoa_leases_expired_total", ()) in samples


def test_exposition__every_metric_is_prefixed_and_documented(store):
    """Every family is named cpoa_* and has HELP text."""
    body, _ = metrics.exposition(store)
    families = list(text_string_to_metric_families(body.decode()))
    assert {f.name for f in families} >= {
        "cpoa_transitions", "cpoa_step_duration_seconds", "cpoa_agent_errors",
        "cpoa_leases_expired", "cpoa_leases_recovered", "cpoa_workflows",
        "cpoa_oldest_due_workflow_age_seconds", "cpoa_outbox_backlog",
        "cpoa_db_pool_connections_in_use", "cpoa_db_pool_requests_waiting"}
    for family in families:
        assert family.name.startswith("cpoa_") and family.documentation, family.name


# -- the snapshot query --------------------------------------------------------------------------

def test_metrics_snapshot__reads_the_partial_indexes(store, db):
    """On 20 000 workflows and 60 000 UI events, the snapshot is one statement that reads the
    workflows per state, the oldest due workflow and the undelivered events from partial
    indexes (no table scanned whole), and is right."""
    db.execute("""
        INSERT INTO workflow_instances (workflow_id, kind, state, failed_from_state,
            trigger_event_details_json, next_run_at, lease_owner, lease_expires_at)
        SELECT gen_random_uuid(), 'podcast',
            CASE WHEN i % 10 < 8 THEN 'completed' WHEN i % 10 = 8 THEN 'failed' ELSE 'fetching' END,
            CASE WHEN i % 10 = 8 THEN 'fetching' END,
            jsonb_build_object('topic', repeat('t', 200)),  -- a row as wide as a real one
            CASE WHEN i % 10 = 9 THEN now() - make_interval(secs => i % 50) END,
            CASE WHEN i % 20 = 19 THEN 'w' END,
            CASE WHEN i % 20 = 19 THEN now() + interval '1 minute' END
        FROM generate_series(1, 20000) AS i""")
    db.execute("""
        INSERT INTO ui_event_outbox (workflow_id, client_id, event_name, data, delivered_at)
        SELECT workflow_id, 'c', 'generation_status', '{}',
               CASE WHEN n > 1 OR random() < 0.9 THEN now() END
        FROM workflow_instances, generate_series(1, 3) AS n""")
    db.execute("VACUUM ANALYZE workflow_instances")  # as autovacuum leaves them
    db.execute("VACUUM ANALYZE ui_event_outbox")
    [plan] = db.execute("EXPLAIN (FORMAT JSON) " + store.queries["metrics_snapshot"],
                        {"kind": None}).fetchone()["QUERY PLAN"]
    nodes = list(_nodes(plan["Plan"]))
    indexes = {n.get("Index Name") for n in nodes}
    assert {"workflow_instances_due", "workflow_instances_leased",
            "workflow_instances_finished_with_state", "ui_event_outbox_pending"} <= indexes
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"]
    snapshot = store.metrics_snapshot()
    assert snapshot["workflows_by_state"] == {"completed": 16000, "failed": 2000,
                                              "fetching": 2000}
    assert 48 <= snapshot["oldest_due_s"] < 60  # due 49 s ago, unleased (i % 20 == 9)
    undelivered = db.execute("SELECT count(*) AS n FROM ui_event_outbox "
                             "WHERE delivered_at IS NULL").fetchone()["n"]
    assert snapshot["outbox_backlog"] == undelivered > 0


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan tree."""
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)
