"""`cpoa prune` on a real database: what goes, what stays, batches, dry run, locks, the CLI."""

from __future__ import annotations

import json
import threading
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from cpoa import defaults, prune
from cpoa.testing.cli import cli_env, run_cli
from cpoa.testing.agent import Reply
from tests.fix_agents import drive, engine_for

OLD_DAYS = 40
MONTH_S = 30 * 86400.0
TABLES = prune.TABLES


# -- helpers -----------------------------------------------------------------------------------

@pytest.fixture
def sync_agent(make_agent):
    """An agent that answers every submit at once: one transition per advance."""
    return make_agent(sync=True)


@pytest.fixture
def fast(store, sync_agent):
    """An engine on ``sync_agent``."""
    return engine_for(store, sync_agent)


def finished(engine, count=1, *, outcome="completed"):
    """Runs ``count`` podcasts (with a UI client) to ``outcome``; returns their ids.

    ``failed`` needs the agent scripted to reject the harvest first.
    """
    ids = []
    for i in range(count):
        workflow_id = engine.start_workflow("podcast", {"topic": f"t{i}"},
                                            idempotency_key=f"key-{uuid.uuid4().hex[:8]}",
                                            client_id="browser-1")
        if outcome == "cancelled":
            engine.advance(workflow_id)
            engine.cancel(workflow_id)
        else:
            assert drive(engine, workflow_id) == outcome
        ids.append(workflow_id)
    return ids


def deliver_all(db):
    """Marks every queued UI event delivered (what the outbox thread does after ASF's 200)."""
    db.execute("UPDATE ui_event_outbox SET delivered_at = now() WHERE delivered_at IS NULL")


def age(db, ids, days=OLD_DAYS):
    """Moves the workflows' last change ``days`` into the past."""
    db.execute("UPDATE workflow_instances SET "
               "last_updated_timestamp = now() - make_interval(days => %(days)s), "
               "end_timestamp = end_timestamp - make_interval(days => %(days)s) "
               "WHERE workflow_id = ANY(%(ids)s)", {"days": days, "ids": list(ids)})


def rows(db, ids):
    """Rows per table that belong to the workflows."""
    query = sql.SQL("SELECT count(*) AS n FROM {} WHERE workflow_id = ANY(%s)")
    return {table: db.execute(query.format(sql.Identifier(table)), (list(ids),)).fetchone()["n"]
            for table in TABLES}


def old_completed(engine, db, count):
    """``count`` completed podcasts, every UI event delivered, last changed 40 days ago."""
    ids = finished(engine, count)
    deliver_all(db)
    age(db, ids)
    return ids


# -- parse_duration ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("3600s", 3600), ("3600", 3600),
    ("1.5h", 5400), (" 7D ", 7 * 86400)])
def test_parse_duration__units(text, seconds):
    """Days, hours, minutes, seconds and plain seconds are read; case and spaces are forgiven."""
    assert prune.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "30x", "-5d", "0", "0s", "30 days", "1e3", "nan"])
def test_parse_duration__refuses_the_rest(text):
    """Anything else, zero and negatives included, is a ValueError quoting the value."""
    with pytest.raises(ValueError, match="duration|more than zero"):
        prune.parse_duration(text)


# -- what goes, what stays ---------------------------------------------------------------------

def test_prune__deletes_old_finished_workflows_with_all_their_rows(fast, sync_agent, store, db):
    """Old completed, failed and cancelled workflows go with their tasks, history, delivered
    UI events and keys; young finished and old unfinished ones are untouched."""
    sync_agent.sync = False  # submitted, then polled: task rows (not kept in history rows)
    completed = finished(fast)
    sync_agent.sync = True
    completed += finished(fast)
    sync_agent.script("POST", "/harvest", Reply(400, {"error": "no such topic"}))
    failed = finished(fast, outcome="failed")
    cancelled = finished(fast, outcome="cancelled")
    young = finished(fast)
    working = [fast.start_workflow("podcast", {"topic": "still going"}, client_id="b")]
    deliver_all(db)
    age(db, completed + failed + cancelled + working)
    doomed = completed + failed + cancelled
    expected = rows(db, doomed)
    assert all(expected.values()), expected  # every table really has rows to delete
    kept = rows(db, young + working)

    report = prune.prune(store, MONTH_S)

    assert report.counts == expected
    assert (report.batches, report.dry_run) == (1, False)
    assert sum(rows(db, doomed).values()) == 0
    assert rows(db, young + working) == kept
    assert store.get_workflow(working[0]).state == "fetching"


def test_prune__keeps_undelivered_events_and_live_leases(fast, store, db):
    """An old finished workflow with a UI event still undelivered, or holding a lease, stays."""
    undelivered, leased, plain = old_completed(fast, db, 3)
    db.execute("UPDATE ui_event_outbox SET delivered_at = NULL WHERE seq = (SELECT max(seq) "
               "FROM ui_event_outbox WHERE workflow_id = %s)", (undelivered,))
    db.execute("UPDATE workflow_instances SET lease_owner = 'w1', lease_expires_at = now() + "
               "interval '1 minute' WHERE workflow_id = %s", (leased,))
    kept = rows(db, [undelivered, leased])

    report = prune.prune(store, MONTH_S)

    assert report.counts["workflow_instances"] == 1
    assert rows(db, [plain])["workflow_instances"] == 0
    assert rows(db, [undelivered, leased]) == kept


def test_prune__same_key_starts_a_new_workflow_afterwards(fast, store, db):
    """The pruned workflow's idempotency key goes with it: the key then starts a new one."""
    workflow_id = fast.start_workflow("podcast", {"topic": "t"}, idempotency_key="req-42")
    assert drive(fast, workflow_id) == "completed"
    age(db, [workflow_id])
    prune.prune(store, MONTH_S)
    again = fast.start_workflow("podcast", {"topic": "t"}, idempotency_key="req-42")
    assert again != workflow_id and store.get_workflow(again).state == "fetching"


# -- batches, dry run, locks -------------------------------------------------------------------

def test_prune__batches_of_two_delete_all_five(fast, store, db):
    """Five old workflows with batch size 2 go in three transactions; the counts add up."""
    ids = old_completed(fast, db, 5)
    expected = rows(db, ids)
    report = prune.prune(store, MONTH_S, batch_size=2)
    assert report.batches == 3 and report.counts == expected
    assert expected["workflow_instances"] == 5 and sum(rows(db, ids).values()) == 0


def test_prune__dry_run_counts_and_deletes_nothing(fast, store, db):
    """A dry run reports exactly what the real run then deletes, and deletes nothing."""
    ids = old_completed(fast, db, 3)
    finished(fast)  # young: not counted
    before = rows(db, ids)
    dry = prune.prune(store, MONTH_S, dry_run=True)
    assert dry.dry_run and dry.counts == before and rows(db, ids) == before
    assert prune.prune(store, MONTH_S).counts == before


def test_prune__skips_a_workflow_locked_by_a_worker(fast, store, db, dsn):
    """A row held FOR UPDATE by another connection is skipped, not waited on: the prune ends
    well within its lock timeout, and the next run takes the row once it is free."""
    locked, *others = old_completed(fast, db, 3)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(dsn) as conn, conn.transaction():
            conn.execute("SELECT 1 FROM workflow_instances WHERE workflow_id = %s FOR UPDATE",
                         (locked,))
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        report = prune.prune(store, MONTH_S)
        elapsed = time.monotonic() - started
    finally:
        release.set()
        holder.join(10)
    assert elapsed < defaults.PRUNE_LOCK_TIMEOUT_S, elapsed
    assert report.counts["workflow_instances"] == 2
    assert rows(db, others)["workflow_instances"] == 0
    assert rows(db, [locked])["workflow_instances"] == 1
    assert prune.prune(store, MONTH_S).counts["workflow_instances"] == 1


# -- the history stays append-only -------------------------------------------------------------

def test_workflow_events__delete_only_with_the_workflow(fast, db):
    """A DELETE aimed at history rows is refused; deleting the workflow takes them along."""
    [workflow_id] = finished(fast)
    with pytest.raises(psycopg.errors.CheckViolation, match="only with their workflow"):
        db.execute("DELETE FROM workflow_events WHERE workflow_id = %s", (workflow_id,))
    db.execute("DELETE FROM workflow_instances WHERE workflow_id = %s", (workflow_id,))
    assert rows(db, [workflow_id])["workflow_events"] == 0


# -- the command line --------------------------------------------------------------------------

def test_cli_prune__json_dry_run_then_prune(fast, db, dsn, agent):
    """`cpoa prune --dry-run --json` counts, `cpoa prune --json` deletes, each one document."""
    ids = old_completed(fast, db, 2)
    env = cli_env(dsn, agent.url)
    dry = run_cli(env, "prune", "--older-than", "30d", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    counts = json.loads(dry.stdout)["counts"]
    assert counts["workflow_instances"] == 2 and rows(db, ids)["workflow_instances"] == 2
    real = run_cli(env, "prune", "--older-than", "720h", "--batch-size", "1", "--json")
    assert real.returncode == 0, real.stderr
    document = json.loads(real.stdout)
    assert (document["counts"], document["batches"], document["dry_run"]) == (counts, 2, False)
    assert sum(rows(db, ids).values()) == 0
    text = run_cli(env, "prune", "--older-than", "2592000")
    assert text.returncode == 0 and "workflow_instances   0" in text.stdout


@pytest.mark.parametrize("args", [
    ["--older-than", "30x"], ["--older-than", "-1d"], ["--older-than", "0"], [],
    ["--older-than", "30d", "--batch-size", "0"]])
def test_cli_prune__bad_arguments_exit_2(dsn, agent, db, args):
    """A bad or missing duration (or batch size) exits 2 naming the option; nothing changes."""
    result = run_cli(cli_env(dsn, agent.url), "prune", *args)
    assert result.returncode == 2
    assert ("--batch-size" if "--batch-size" in args else "--older-than") in result.stderr


def test_cli_prune__bad_duration_in_the_environment_exits_2(dsn, agent):
    """CPOA_PRUNE_OLDER_THAN, the twin of --older-than, is checked the same way and the error
    names the variable."""
    result = run_cli(cli_env(dsn, agent.url, CPOA_PRUNE_OLDER_THAN="soon"), "prune")
    assert result.returncode == 2
    assert "error: CPOA_PRUNE_OLDER_THAN: 'soon' is not a duration" in result.stderr


def test_cli_prune__bad_batch_size_in_the_environment_spares_other_commands(dsn, agent):
    """A bad CPOA_PRUNE_BATCH_SIZE fails `prune` (exit 2, naming the variable), not `list`."""
    env = cli_env(dsn, agent.url, CPOA_PRUNE_BATCH_SIZE="many")
    result = run_cli(env, "prune", "--older-than", "30d")
    assert result.returncode == 2
    assert "error: CPOA_PRUNE_BATCH_SIZE: 'many' is not valid" in result.stderr
    assert run_cli(env, "list").returncode == 0
