"""Backlog scaling: the tables hold many finished and due workflows; does claiming stay flat?

Rows are bulk-inserted with ``generate_series`` (a real workflow's context copied into each):

- finished: ``completed`` podcast workflows, each with its idempotency key, 6 task rows and
  7 history rows, as the engine leaves them;
- due: podcast workflows spread over the six working states, with their idempotency key, due
  now, oldest first (a sixth of the step actions complete a workflow).

Then ``VACUUM ANALYZE`` (what autovacuum would do after a bulk load; it is off on the machine's
server). At each level a worker process (``bench.scenarios.engine``, instant client, 4 slots)
runs a fixed number of step actions and reports ``claim_due`` latency and its RSS; then the
plan of the claim statement is shown with ``EXPLAIN (ANALYZE, BUFFERS)`` (rolled back).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.scenarios import common
from cpoa.steps import PODCAST
from cpoa.store import TASK_NAMES

TASK_NAME = TASK_NAMES["podcast"]
STEPS = [(state, step.agent) for state, step in PODCAST.items()]


def sample_context(dsn: str) -> dict[str, Any]:
    """Runs one real workflow to completion (instant client) and returns its context."""
    from cpoa import settings as settings_module
    from cpoa.engine import Engine
    from cpoa.store import PostgresStore
    store = PostgresStore(dsn, min_size=1, max_size=2)
    engine = Engine(store, settings_module.from_env(common.agent_env("http://127.0.0.1:9")),
                    client=common.InstantClient())
    workflow_id = engine.start_workflow("podcast", {"topic": "sample"})
    for _ in range(6):
        engine.advance(workflow_id)
    status = engine.get_workflow(workflow_id)
    store.close()
    assert status["state"] == "completed", status["state"]
    return status["outputs"]


def _new_ids(conn: psycopg.Connection, count: int) -> None:
    """A temporary table of ``count`` new workflow ids numbered ``g``, gone at COMMIT."""
    conn.execute("""
        CREATE TEMP TABLE new_ids ON COMMIT DROP AS
        SELECT gen_random_uuid() AS workflow_id, g FROM generate_series(1, %(n)s) g""",
                 {"n": count})


def insert_finished(dsn: str, count: int, context: dict[str, Any]) -> None:
    """``count`` completed workflows with their keys, tasks and history rows."""
    steps = json.dumps([{"step": s, "agent": a} for s, a in STEPS])
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        _new_ids(conn, count)
        conn.execute("""
            INSERT INTO workflow_instances (workflow_id, kind, state, trigger_event_details_json,
                context_data_json, start_timestamp, last_updated_timestamp, end_timestamp,
                next_run_at, version)
            SELECT workflow_id, 'podcast', 'completed',
                   jsonb_build_object('topic', 'finished ' || g), %(ctx)s,
                   now() - interval '2 days' + g * interval '1 ms',
                   now() - interval '1 day' + g * interval '1 ms',
                   now() - interval '1 day' + g * interval '1 ms', NULL, 12
            FROM new_ids""", {"ctx": Jsonb(context)})
        conn.execute("""
            INSERT INTO idempotency_keys (idempotency_key, task_name, status, workflow_id,
                                          result_payload)
            SELECT workflow_id::text, %(task)s, 'completed', workflow_id,
                   jsonb_build_object('workflow_id', workflow_id::text, 'warnings', '[]'::jsonb)
            FROM new_ids""", {"task": TASK_NAME})
        conn.execute("""
            INSERT INTO task_instances (task_id, workflow_id, agent_name, step, item_key,
                attempt, status, idempotency_key, input_params_json,
                output_result_summary_json, first_submitted_at, completed_at)
            SELECT gen_random_uuid(), n.workflow_id, s->>'agent', s->>'step', '', 0,
                   'succeeded', n.workflow_id::text || '_' || lower(s->>'agent'),
                   '{"topic": "finished"}', '{"status": "success"}',
                   now() - interval '1 day', now() - interval '1 day'
            FROM new_ids n CROSS JOIN jsonb_array_elements(%(steps)s::jsonb) s""",
                     {"steps": steps})
        conn.execute("""
            INSERT INTO workflow_events (workflow_id, from_state, to_state, trigger, at)
            SELECT n.workflow_id, e.from_state, e.to_state, e.trigger,
                   now() - interval '1 day'
            FROM new_ids n CROSS JOIN (VALUES
                (NULL, 'fetching', 'start'), ('fetching', 'analyzing', 'step_done'),
                ('analyzing', 'scripting', 'step_done'), ('scripting', 'synthesizing', 'step_done'),
                ('synthesizing', 'imaging', 'step_done'), ('imaging', 'finalizing', 'step_done'),
                ('finalizing', 'completed', 'step_done')) AS e(from_state, to_state, trigger)""")


def insert_due(dsn: str, count: int, context: dict[str, Any],
               states: list[str] | None = None) -> None:
    """``count`` podcast workflows due now (oldest first) with their keys, spread evenly over
    ``states`` (by default the six working states, so that a sixth of the step actions
    complete a workflow), each with the sample context so that every state's request can be
    built (``fetching`` needs none)."""
    if count <= 0:
        return
    states = states or [s for s, _ in STEPS]
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        _new_ids(conn, count)
        conn.execute("""
            INSERT INTO workflow_instances (workflow_id, kind, state, trigger_event_details_json,
                context_data_json, next_run_at)
            SELECT workflow_id, 'podcast', state,
                   jsonb_build_object('topic', 'due ' || g,
                                      'urls', jsonb_build_array('https://example.org/' || g)),
                   CASE WHEN state = 'fetching' THEN '{}'::jsonb ELSE %(ctx)s END,
                   now() - interval '1 hour' + g * interval '1 ms'
            FROM (SELECT *, (%(states)s::text[])[1 + g %% %(n)s] AS state FROM new_ids) n""",
                     {"states": states, "n": len(states), "ctx": Jsonb(context)})
        conn.execute("""
            INSERT INTO idempotency_keys (idempotency_key, task_name, status, workflow_id)
            SELECT workflow_id::text, %(task)s, 'processing', workflow_id FROM new_ids""",
                     {"task": TASK_NAME})
        conn.execute("""
            INSERT INTO workflow_events (workflow_id, from_state, to_state, trigger)
            SELECT workflow_id, NULL, 'fetching', 'start' FROM new_ids""")


def stagger(dsn: str, context: dict[str, Any]) -> dict[str, int]:
    """Spreads the workflows still in ``fetching`` evenly over the six working states (in
    their queue order), with the sample context (in one history row, where transitions store
    what they add), so that any window of a run has the steady mix of transitions (a sixth of
    them complete a workflow) instead of every workflow moving through the states in lockstep.
    The transition trigger is off for this one UPDATE."""
    states = [s for s, _ in STEPS]
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("ALTER TABLE workflow_instances "
                     "DISABLE TRIGGER workflow_instances_transition_allowed")
        conn.execute("""
            WITH ranked AS (
                SELECT workflow_id, row_number() OVER (ORDER BY next_run_at, workflow_id) AS rn
                FROM workflow_instances WHERE state = 'fetching')
            UPDATE workflow_instances w
            SET state = (%(states)s::text[])[1 + rn %% 6]
            FROM ranked WHERE w.workflow_id = ranked.workflow_id""", {"states": states})
        conn.execute("""
            INSERT INTO workflow_events (workflow_id, from_state, to_state, trigger,
                                         context_updates)
            SELECT workflow_id, 'fetching', state, 'step_done', %(ctx)s FROM workflow_instances
            WHERE state <> 'fetching'""", {"ctx": Jsonb(context)})
        conn.execute("ALTER TABLE workflow_instances "
                     "ENABLE TRIGGER workflow_instances_transition_allowed")
        rows = conn.execute("SELECT state, count(*) FROM workflow_instances "
                            "GROUP BY state").fetchall()
    return dict(rows)


def vacuum_analyze(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("""
            SELECT (SELECT count(*) FROM workflow_instances
                    WHERE next_run_at IS NOT NULL AND lease_owner IS NULL),
                   (SELECT count(*) FROM workflow_instances WHERE next_run_at IS NULL),
                   (SELECT count(*) FROM task_instances),
                   (SELECT count(*) FROM workflow_events),
                   (SELECT count(*) FROM idempotency_keys)""").fetchone()
    return dict(zip(("due", "finished", "task_rows", "event_rows", "key_rows"), row))


def explain(dsn: str, name: str, **params: Any) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of one of CPOA's named statements, rolled back."""
    from cpoa import sql
    query = sql.queries()[name]
    with psycopg.connect(dsn) as conn:
        text = psycopg.ClientCursor(conn).mogrify(query, params)
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + text).fetchall()
        conn.rollback()
    return "\n".join(r[0] for r in rows)


def plans(dsn: str) -> dict[str, str]:
    """The plans of claim_due, and of two other statements a worker runs per transition."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        some_id = conn.execute("SELECT workflow_id FROM workflow_instances "
                               "WHERE next_run_at IS NOT NULL LIMIT 1").fetchone()[0]
    return {
        "claim_due": explain(dsn, "claim_due", owner="bench", ttl_s=60, limit=4,
                             liveness_key=None),
        "requeue_dead_leases": explain(dsn, "requeue_dead_leases", owner="bench"),
        "touch_idempotency_key": explain(
            dsn, "touch_idempotency_key", workflow_id=some_id, task_name=TASK_NAME,
            status="completed", result_payload=None, error_payload=None),
    }

