"""The schema agrees with the machine: one list of states and edges, enforced in the database."""

from __future__ import annotations

import pathlib
import re
import threading
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from cpoa import machine, sql
from cpoa.store import PostgresStore

SCHEMA_FILE = pathlib.Path(__file__).resolve().parents[2] / "db" / "schema.sql"
_KIND = re.compile(r"kind = '(\w+)'")
_QUOTED = re.compile(r"'(\w+)'::text")


def allowed_states(constraint: str) -> dict[str, set[str]]:
    """Parses ``pg_get_constraintdef`` of the state CHECK into {kind: states}."""
    matches = list(_KIND.finditer(constraint))
    found = {}
    for match, following in zip(matches, [*matches[1:], None]):
        part = constraint[match.end():following.start() if following else len(constraint)]
        found[match.group(1)] = set(_QUOTED.findall(part))
    return found


def insert_workflow(db: psycopg.Connection, kind: str, state: str,
                    failed_from_state: str | None = None) -> uuid.UUID:
    """Inserts a bare workflow row (INSERT is not what the transition trigger guards)."""
    workflow_id = uuid.uuid4()
    db.execute("INSERT INTO workflow_instances (workflow_id, kind, state, failed_from_state, "
               "trigger_event_details_json) VALUES (%s, %s, %s, %s, %s)",
               (workflow_id, kind, state, failed_from_state, Jsonb({})))
    return workflow_id


def test_state_check__equals_machine_states(db):
    """The CHECK workflow_state_known allows exactly the machine's states, per kind."""
    row = db.execute("SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint "
                     "WHERE conname = 'workflow_state_known' "
                     "AND conrelid = 'workflow_instances'::regclass").fetchone()
    parsed = allowed_states(row["def"])
    assert parsed == {kind: set(machine.states(kind)) for kind in machine.KINDS}


def test_workflow_transitions__equal_machine_edges(db):
    """The rows of workflow_transitions are exactly the machine's (source, dest) pairs."""
    rows = db.execute("SELECT kind, from_state, to_state FROM workflow_transitions").fetchall()
    for kind in machine.KINDS:
        in_table = {(r["from_state"], r["to_state"]) for r in rows if r["kind"] == kind}
        assert in_table == machine.edges(kind), kind
    assert {r["kind"] for r in rows} == set(machine.KINDS)


@pytest.mark.parametrize(("kind", "source", "dest"), [
    ("podcast", "fetching", "completed"),
    ("podcast", "completed", "fetching"),
    ("podcast", "cancelled", "failed"),
    ("snippets", "crafting", "discovering"),
])
def test_transition_trigger__refuses_unknown_edge(db, kind, source, dest):
    """An UPDATE making a transition the table does not list is refused and changes nothing."""
    failed_from = "imaging" if dest == "failed" else None
    workflow_id = insert_workflow(db, kind, source)
    with pytest.raises(psycopg.errors.CheckViolation, match="not allowed"):
        db.execute("UPDATE workflow_instances SET state = %s, failed_from_state = %s "
                   "WHERE workflow_id = %s", (dest, failed_from, workflow_id))
    row = db.execute("SELECT state FROM workflow_instances WHERE workflow_id = %s",
                     (workflow_id,)).fetchone()
    assert row["state"] == source


def test_transition_trigger__allows_listed_edge(db):
    """An UPDATE along a listed edge goes through; an update not touching state is untouched."""
    workflow_id = insert_workflow(db, "podcast", "fetching")
    db.execute("UPDATE workflow_instances SET state = 'analyzing' WHERE workflow_id = %s",
               (workflow_id,))
    db.execute("UPDATE workflow_instances SET version = version + 1 WHERE workflow_id = %s",
               (workflow_id,))
    row = db.execute("SELECT state, version FROM workflow_instances WHERE workflow_id = %s",
                     (workflow_id,)).fetchone()
    assert (row["state"], row["version"]) == ("analyzing", 1)


def test_failed_check__requires_origin(db):
    """A failed row without failed_from_state is refused by the CHECK."""
    with pytest.raises(psycopg.errors.CheckViolation):
        insert_workflow(db, "podcast", "failed")


def test_workflow_events__refuse_update(db):
    """The history table is append-only: an UPDATE of a row is refused."""
    workflow_id = insert_workflow(db, "podcast", "fetching")
    db.execute("INSERT INTO workflow_events (workflow_id, from_state, to_state, trigger) "
               "VALUES (%s, NULL, 'fetching', 'start')", (workflow_id,))
    with pytest.raises(psycopg.errors.CheckViolation, match="append-only"):
        db.execute("UPDATE workflow_events SET to_state = 'completed' WHERE workflow_id = %s",
                   (workflow_id,))
    row = db.execute("SELECT to_state FROM workflow_events WHERE workflow_id = %s",
                     (workflow_id,)).fetchone()
    assert row["to_state"] == "fetching"


def test_apply_schema__twice_is_harmless(store, db):
    """Applying the schema again (twice) keeps the tables, rows and transitions as they were."""
    workflow_id = insert_workflow(db, "podcast", "fetching")
    before = db.execute("SELECT count(*) AS n FROM workflow_transitions").fetchone()["n"]
    store.apply_schema()
    store.apply_schema()
    after = db.execute("SELECT count(*) AS n FROM workflow_transitions").fetchone()["n"]
    assert after == before
    assert store.schema_applied()
    assert store.get_workflow(workflow_id).state == "fetching"


def test_apply_schema__concurrently_on_empty_database(empty_dsn):
    """Two stores applying the schema at once to an empty database both succeed."""
    stores = [PostgresStore(empty_dsn, min_size=1, max_size=1) for _ in range(2)]
    barrier, failures = threading.Barrier(2), []

    def apply(store: PostgresStore) -> None:
        barrier.wait()
        try:
            store.apply_schema()
        except Exception as exc:  # reported below, in the test's thread
            failures.append(exc)

    try:
        assert not stores[0].schema_applied()
        threads = [threading.Thread(target=apply, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert stores[0].schema_applied()
    finally:
        for store in stores:
            store.close()


def test_packaged_schema__equals_db_schema_sql():
    """The packaged schema a non-editable install applies is the text of db/schema.sql."""
    assert sql.schema() == SCHEMA_FILE.read_text("utf-8")
