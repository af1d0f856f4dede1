"""One Celery task run's work, without Celery: `drive` on the real store and an HTTP agent."""

from __future__ import annotations

import pytest

from cpoa import defaults
from tests.fix_agents import engine_for, sent

celery_tasks = pytest.importorskip("cpoa.celery_tasks", reason="the [celery] extra is missing")


def test_drive__runs_a_due_workflow_to_its_end(store, make_agent):
    """Steps whose agents answer at once are all made in one run, which reports the end."""
    engine = engine_for(store, make_agent(sync=True))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    workflow, wait_s = celery_tasks.drive(engine, workflow_id, advances=20)
    assert (workflow.state, wait_s) == ("completed", None)


def test_drive__stops_at_the_next_poll(store, make_agent):
    """A pending agent: the run submits, then returns the time until the poll is due."""
    engine = engine_for(store, make_agent(pending_polls=3), CPOA_WCHA_POLLING_INTERVAL_SECONDS="30")
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    workflow, wait_s = celery_tasks.drive(engine, workflow_id, advances=20)
    assert workflow.state == "fetching"
    assert 5 < wait_s <= 6  # adaptive polling: the first poll at a fifth of the 30 s interval


def test_drive__bounded_number_of_advances(store, make_agent):
    """After its last advance a run reports a workflow that is still due as due now."""
    engine = engine_for(store, make_agent(sync=True))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    workflow, wait_s = celery_tasks.drive(engine, workflow_id, advances=2)
    assert (workflow.state, wait_s) == ("scripting", 0.0)


def test_drive__leaves_a_workflow_leased_by_another_process(engine, store, agent):
    """A lease held elsewhere (a `cpoa worker`) is not touched: no agent call, look again soon."""
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    store.lease(workflow_id, "elsewhere", 60.0)
    workflow, wait_s = celery_tasks.drive(engine, workflow_id, advances=20)
    assert (workflow.state, workflow.lease_owner) == ("fetching", "elsewhere")
    assert 0 < wait_s <= defaults.CELERY_HELD_RECHECK_S
    assert sent(agent, "/harvest") == []
