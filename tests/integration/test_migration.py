"""Today's schema in place on a version 6 database with workflows in every state, and a
worker that refuses a database whose state machine is not its own."""

from __future__ import annotations

import pathlib

import psycopg
import pytest

from cpoa import errors, machine, sql
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.worker import Worker
from cpoa.testing.cli import cli_env, run_cli
from cpoa.testing.agent import Reply
from tests.fix_agents import drive, engine_for, wait_until
from tests.fix_db import database

SCHEMA_V6 = pathlib.Path(__file__).with_name("schema_v6.sql")
"""db/schema.sql as of 9ad6903 (schema version 6, before the review gate)."""


@pytest.fixture
def v6_store(server_dsn):
    """A store on a fresh database with schema version 6 applied."""
    with database(server_dsn) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA_V6.read_text("utf-8"))
        store = PostgresStore(dsn, min_size=1, max_size=4)
        yield store
        store.close()


def in_every_state(engine: Engine, agent) -> dict[str, object]:
    """Podcasts left in each state of the version 6 machine."""
    made = {}
    for steps_taken, state in enumerate(machine.PODCAST_STEPS):
        workflow_id = engine.start_workflow("podcast", {"topic": f"tides {state}"})
        wait_until(lambda: engine.advance(workflow_id) == state or
                   engine.store.get_workflow(workflow_id).state == state, interval=0.01)
        made[state] = workflow_id
    made["completed"] = engine.start_workflow("podcast", {"topic": "done"})
    assert drive(engine, made["completed"]) == "completed"
    agent.script("POST", "/discover_topics", Reply(400, {"error": "no"}))
    made["failed"] = engine.start_workflow("podcast", {"topic": "fails"})
    assert drive(engine, made["failed"]) == "failed"
    made["cancelled"] = engine.start_workflow("podcast", {"topic": "dropped"})
    engine.cancel(made["cancelled"])
    return made


MOVED_TABLES = ("workflow_instances", "idempotency_keys", "task_instances", "workflow_events",
                "ui_event_outbox")
SERIALS = (("workflow_events", "event_id"), ("ui_event_outbox", "seq"))


def _columns(conn: psycopg.Connection, table: str) -> list[str]:
    rows = conn.execute("SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = %s ORDER BY ordinal_position", (table,)).fetchall()
    return [r[0] for r in rows]


AS_WRITTEN_BEFORE = {("workflow_instances", "context_data_json"):
                     "cpoa_context_v1(workflow_id, context_data_json)"}


def copy_rows(source_dsn: str, target_dsn: str) -> None:
    """Copies every workflow's rows into an older schema: the columns both schemas have (what
    code of that version would have written; today's code cannot run on it). Before schema
    version 14 a workflow's row held its whole context."""
    with psycopg.connect(source_dsn) as source, psycopg.connect(target_dsn) as target:
        for table in MOVED_TABLES:
            old = set(_columns(target, table))
            both = [c for c in _columns(source, table) if c in old]
            names = ", ".join(both)
            selected = ", ".join(AS_WRITTEN_BEFORE.get((table, c), c) for c in both)
            with source.cursor().copy(f"COPY (SELECT {selected} FROM {table}) TO STDOUT") as out, \
                    target.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as into:
                for data in out:
                    into.write(data)
        for table, column in SERIALS:
            target.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                           f"(SELECT max({column}) FROM {table}))")


def test_db_init__migrates_v6_in_place_and_every_workflow_finishes(v6_store, store, dsn, agent):
    """Workflows in every state of a version 6 database keep going after `db init`
    applies today's version; the review gate then works there, and the machine is recorded.
    (The workflows are made by today's code on today's schema and their rows copied into the
    version 6 tables: today's code does not run on version 6, as the worker's refusal shows.)"""
    engine = engine_for(v6_store, agent)
    assert v6_store.enforced_machine()[0] is None
    with pytest.raises(errors.MachineMismatch, match="cpoa db init"):
        Worker(engine, until_idle=True).run()
    made = in_every_state(engine_for(store, agent), agent)
    copy_rows(dsn, v6_store.dsn)
    v6_store.apply_schema()
    assert v6_store.schema_version(5.0) == sql.schema_version()
    assert machine.difference(*v6_store.enforced_machine()) is None
    engine.retry(made["failed"])
    for state, workflow_id in made.items():
        if state != "cancelled":
            assert drive(engine, workflow_id) == "completed", state
    reviewed = engine.start_workflow("podcast", {"topic": "tides", "review": True},
                                     client_id="c1")
    wait_until(lambda: engine.advance(reviewed) == "awaiting_review", interval=0.01)
    assert v6_store.get_ui_events(reviewed)[-1]["event_name"] == "review_requested"
    engine.review(reviewed, approve=True)
    agent.script("GET", "/v1/tasks", Reply(202, {"task_id": "t", "status": "PENDING",
                                                 "progress": 0.5}))  # VFA's first poll
    assert drive(engine, reviewed) == "completed"
    assert "generation_progress" in [e["event_name"] for e in v6_store.get_ui_events(reviewed)]
    [vfa] = [t for t in v6_store.get_tasks(reviewed) if t.agent_name == "VFA"]
    assert vfa.progress_json["progress"] == 0.5  # schema version 12's column, added in place
    v6_store.apply_schema()  # again: nothing changes
    assert machine.difference(*v6_store.enforced_machine()) is None
    assert indexes(v6_store.dsn) == indexes(store.dsn)  # version 15's keys, in place too


def indexes(dsn: str) -> dict[str, str]:
    """{index: its definition} of the database's public tables."""
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes "
                                 "WHERE schemaname = 'public'").fetchall())


def test_worker__refuses_a_database_with_another_machine(store, db, engine):
    """A database lacking one of this code's edges makes the worker refuse to start, naming
    the edge and `cpoa db init`; nothing is claimed."""
    db.execute("DELETE FROM workflow_transitions WHERE from_state = 'awaiting_review' "
               "AND to_state = 'synthesizing'")
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    with pytest.raises(errors.MachineMismatch) as info:
        Worker(engine, until_idle=True).run()
    assert "lacks podcast awaiting_review -> synthesizing" in str(info.value)
    assert "cpoa db init" in str(info.value)
    assert store.get_workflow(workflow_id).state == "fetching"


def test_cli_worker__exits_2_naming_the_difference(dsn, db, agent):
    """`cpoa worker` on a database with another machine prints the difference and exits 2
    (a configuration problem, like a bad variable);
    after `cpoa db init` the fingerprint matches again."""
    db.execute("UPDATE cpoa_machine SET fingerprint = 'someone-else'")
    db.execute("INSERT INTO workflow_transitions VALUES ('podcast', 'imaging', 'scripting')")
    run = run_cli(cli_env(dsn, agent.url, CPOA_WORKER_UNTIL_IDLE="1"), "worker")
    assert run.returncode == 2, run.stderr
    assert "allows podcast imaging -> scripting" in run.stderr
    assert "upgrade" in run.stderr
