"""Bulk retry, cancel and fork by filter, in bounded batches; a dry run changes nothing."""

from __future__ import annotations

import datetime

import pytest

from cpoa import bulk, errors
from cpoa.testing.agent import Reply
from tests.fix_agents import drive


def failed_podcasts(engine, agent, count: int, path: str = "/discover_topics") -> list:
    """``count`` podcasts failed at the step whose agent path is ``path``."""
    agent.script("POST", path, *[Reply(400, {"error": "no"}) for _ in range(count)])
    made = []
    for i in range(count):
        workflow_id = engine.start_workflow("podcast", {"topic": f"tides {i}"})
        assert drive(engine, workflow_id) == "failed"
        made.append(workflow_id)
    return made


def states(store, ids) -> list[str]:
    return [store.get_workflow(i).state for i in ids]


def test_bulk_retry__twenty_failed_by_filter_in_batches_after_a_dry_run(engine, agent, store):
    """A dry run of a bulk retry lists the 20 failed podcasts and changes nothing; the retry
    itself (batches of 7) resumes exactly those, each once, and they complete."""
    failed = failed_podcasts(engine, agent, 20)
    done = engine.start_workflow("podcast", {"topic": "done"})
    assert drive(engine, done) == "completed"
    where = bulk.Filter.checked(state="failed", kind="podcast", failed_step="analyzing")
    versions = [store.get_workflow(i).version for i in failed]
    dry = bulk.run(engine, "retry", where, dry_run=True, batch_size=7)
    assert (dry.matched, len(dry.changed), dry.refused) == (20, 20, [])
    assert {c["to"] for c in dry.changed} == {"analyzing"}
    assert states(store, failed) == ["failed"] * 20
    assert [store.get_workflow(i).version for i in failed] == versions
    report = bulk.run(engine, "retry", where, dry_run=False, batch_size=7)
    assert sorted(c["workflow_id"] for c in report.changed) == sorted(map(str, failed))
    assert states(store, failed) == ["analyzing"] * 20
    assert all(store.get_workflow(i).retry_count == 1 for i in failed)
    for workflow_id in failed:
        assert drive(engine, workflow_id) == "completed"
    again = bulk.run(engine, "retry", where, dry_run=False)
    assert again.matched == 0


def test_bulk_cancel__by_time_range_and_refusals_reported(engine, store):
    """A bulk cancel of the workflows started in a range cancels the working ones and
    reports the completed one as refused."""
    before = store.db_now()
    working = [engine.start_workflow("podcast", {"topic": f"t{i}"}) for i in range(3)]
    finished = engine.start_workflow("podcast", {"topic": "done"})
    assert drive(engine, finished) == "completed"
    later = engine.start_workflow("podcast", {"topic": "later"})
    store_row = store.get_workflow(later)
    where = bulk.Filter.checked(started_after=before,
                                started_before=store_row.start_timestamp)
    report = bulk.run(engine, "cancel", where, dry_run=False, batch_size=2)
    assert report.matched == 4
    assert sorted(c["workflow_id"] for c in report.changed) == sorted(map(str, working))
    assert [r["workflow_id"] for r in report.refused] == [str(finished)]
    assert states(store, working) == ["cancelled"] * 3
    assert store.get_workflow(later).state == "fetching"


def test_bulk_fork__revoices_every_completed_podcast_once(engine, agent, store):
    """A bulk fork from synthesizing makes one fork per completed podcast (not of the forks
    it makes itself); a dry run makes none."""
    sources = [engine.start_workflow("podcast", {"topic": f"t{i}"}) for i in range(3)]
    for workflow_id in sources:
        assert drive(engine, workflow_id) == "completed"
    where = bulk.Filter.checked(state="completed")
    assert bulk.run(engine, "fork", where, dry_run=True, batch_size=1,
                    from_state="synthesizing").matched == 3
    assert len(store.list_workflows()) == 3
    report = bulk.run(engine, "fork", where, dry_run=False, batch_size=1,
                      from_state="synthesizing",
                      params={"voice_params": {"voice_name": "en+f4"}})
    forks = [c["new_workflow_id"] for c in report.changed]
    assert len(forks) == 3 and report.refused == []
    assert {str(store.get_workflow(f).forked_from) for f in forks} == set(map(str, sources))
    for fork in forks:
        assert drive(engine, fork) == "completed"


FAIL_UPDATES = """
CREATE FUNCTION test_fail_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.workflow_id = '{busy}' THEN
    RAISE EXCEPTION 'row is locked elsewhere' USING ERRCODE = 'lock_not_available';
  END IF;
  RAISE EXCEPTION 'disk is full';
END $$;
CREATE TRIGGER test_fail_update BEFORE UPDATE ON workflow_instances FOR EACH ROW
  WHEN (OLD.workflow_id IN ('{busy}', '{broken}')) EXECUTE FUNCTION test_fail_update();
"""


def test_bulk_retry__database_errors_reported_per_workflow(engine, agent, store, db):
    """A workflow whose update fails in the database (StoreBusy, StoreError) mid-run is
    listed as refused with the reason; the run goes on and the others are retried."""
    failed = failed_podcasts(engine, agent, 4)
    busy, broken = sorted(failed)[1:3]
    db.execute(FAIL_UPDATES.format(busy=busy, broken=broken))
    report = bulk.run(engine, "retry", bulk.Filter.checked(state="failed"), dry_run=False,
                      batch_size=2)
    assert report.matched == 4
    assert sorted(c["workflow_id"] for c in report.changed) == sorted(
        str(w) for w in failed if w not in (busy, broken))
    reasons = {r["workflow_id"]: r["error"] for r in report.refused}
    assert set(reasons) == {str(busy), str(broken)}
    assert "row is locked elsewhere" in reasons[str(busy)]
    assert "disk is full" in reasons[str(broken)]
    assert states(store, [busy, broken]) == ["failed", "failed"]


def test_bulk_fork__skips_forks_unless_asked(engine, agent, store):
    """A bulk fork of the completed podcasts forks the sources, not an earlier fork of
    them; with include_forks it forks the fork too."""
    source = engine.start_workflow("podcast", {"topic": "tides"})
    assert drive(engine, source) == "completed"
    earlier = engine.fork(source, "synthesizing")
    assert drive(engine, earlier) == "completed"
    where = bulk.Filter.checked(state="completed")
    report = bulk.run(engine, "fork", where, dry_run=True, from_state="synthesizing")
    assert [c["workflow_id"] for c in report.changed] == [str(source)]
    both = bulk.run(engine, "fork", bulk.Filter.checked(state="completed", include_forks=True),
                    dry_run=True, from_state="synthesizing")
    assert sorted(c["workflow_id"] for c in both.changed) == sorted([str(source), str(earlier)])
    cancel = bulk.run(engine, "cancel", where, dry_run=True)  # a cancel does not skip forks
    assert cancel.matched == 2


def test_bulk_filter__empty_refused_naming_all_unless_meant(engine, store):
    """An empty filter is refused naming `all` before anything is read; all_workflows
    means every workflow."""
    working = [engine.start_workflow("podcast", {"topic": f"t{i}"}) for i in range(2)]
    with pytest.raises(errors.InvalidInput) as info:
        bulk.Filter.checked()
    assert info.value.field == "all"
    with pytest.raises(errors.InvalidInput):
        bulk.Filter.checked(state=None, include_forks=True)
    report = bulk.run(engine, "cancel", bulk.Filter.checked(all_workflows=True), dry_run=False)
    assert sorted(c["workflow_id"] for c in report.changed) == sorted(map(str, working))


@pytest.mark.parametrize(("fields", "field"), [
    ({"state": "asleep"}, "state"), ({"kind": "radio"}, "kind"),
    ({"failed_step": "nowhere"}, "failed_step"),
    ({"started_after": datetime.datetime(2026, 1, 1)}, "started_after"),
])
def test_bulk_filter__bad_fields_named(fields, field):
    """A filter with an unknown state or kind, or a time without its offset, is refused."""
    with pytest.raises(errors.InvalidInput) as info:
        bulk.Filter.checked(**fields)
    assert info.value.field == field
