"""Where a transition's task is written (cpoa.store.rows.begun_and_finished): a pure decision."""

from __future__ import annotations

import uuid

import pytest

from cpoa import models
from cpoa.store.rows import begun_and_finished

WORKFLOW = uuid.uuid4()


def task(status="succeeded", item_key="", attempt=0, step="fetching"):
    return models.Task(task_id=uuid.uuid4(), workflow_id=WORKFLOW, agent_name="WCHA", step=step,
                       idempotency_key="k", status=status, item_key=item_key, attempt=attempt)


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_a_finished_task_the_lease_did_not_read_is_kept_in_history(status):
    assert begun_and_finished(task(status), ()) is True
    assert begun_and_finished(task(status, item_key="t1"), (task("pending", item_key="t0"),))


@pytest.mark.parametrize("status", ["pending", "submitted"])
def test_an_open_task_is_a_task_row(status):
    assert begun_and_finished(task(status), ()) is False


def test_a_task_the_lease_read_is_updated_in_its_row():
    """Same step, item and attempt as a row the lease read (its id may differ: rows written
    before task ids were derived)."""
    assert begun_and_finished(task(), (task("submitted"),)) is False
    assert begun_and_finished(task(attempt=1), (task("failed", attempt=0),)) is True


def test_nothing_is_kept_in_history_without_a_lease_or_a_task():
    assert begun_and_finished(task(), None) is False
    assert begun_and_finished(None, ()) is False
