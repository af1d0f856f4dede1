"""UI events (contract §4): one per state entered, progress, terminal markers."""

from __future__ import annotations

import uuid

import pytest

from cpoa import events, machine, models

PODCAST_ORDER = ["fetching", "analyzing", "scripting", "synthesizing", "imaging", "finalizing",
                 "completed"]
REQUIRED = {"workflow_id", "state", "stage", "message", "progress"}


def workflow(kind="podcast", warnings=()):
    return models.Workflow(uuid.uuid4(), kind, machine.initial_state(kind), {}, {},
                           list(warnings))


@pytest.mark.parametrize("kind", sorted(machine.KINDS))
def test_progress__monotonic_from_zero_to_one(kind):
    """Progress rises strictly along the step_done chain, from 0 at the start to 1 at the end."""
    order = [*machine.working_states(kind), "completed"]
    values = [events.progress(kind, state) for state in order]
    assert values[0] == 0.0 and values[-1] == 1.0
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert all(0.0 <= v <= 1.0 for v in values)


def test_progress__podcast_order_is_the_contract_order():
    """The podcast progress order is the contract's state order."""
    values = [events.progress("podcast", state) for state in PODCAST_ORDER]
    assert values == sorted(values) and len(set(values)) == len(values)


@pytest.mark.parametrize("origin", machine.working_states("podcast"))
def test_progress__failed_keeps_progress_of_origin(origin):
    """A failed workflow shows the progress of the state it failed in."""
    assert events.progress("podcast", "failed", origin) == events.progress("podcast", origin)


@pytest.mark.parametrize("state", PODCAST_ORDER)
def test_entered__generation_status_for_each_podcast_state(state):
    """Entering any podcast state except failed is one generation_status with the §4 data."""
    wf = workflow()
    event = events.entered(wf, state)
    assert event.event_name == "generation_status"
    assert REQUIRED <= event.data.keys()
    assert event.data["workflow_id"] == str(wf.workflow_id)
    assert event.data["state"] == event.data["stage"] == state
    assert event.data["message"]
    assert event.data["progress"] == events.progress("podcast", state)
    assert ("is_terminal" in event.data) == (state == "completed")


def test_entered__fetching_message():
    """The fetching message is the contract's example text."""
    assert events.entered(workflow(), "fetching").data["message"] == "Fetching web content..."


def test_entered__imaging_message_depends_on_kind():
    """Imaging tells cover art for podcasts and snippet images for snippets."""
    assert "cover art" in events.entered(workflow("podcast"), "imaging").data["message"]
    assert "snippet" in events.entered(workflow("snippets"), "imaging").data["message"]


def test_entered__failed_is_terminal_task_error():
    """Entering failed is one task_error, terminal, final_status failed, with reason and origin."""
    event = events.entered(workflow(), "failed", failed_from_state="scripting",
                           error="scripting: PSWA rejected")
    assert event.event_name == "task_error"
    assert event.data["is_terminal"] is True and event.data["final_status"] == "failed"
    assert event.data["state"] == "failed"
    assert event.data["error"] == "scripting: PSWA rejected"
    assert event.data["failed_from_state"] == "scripting"
    assert "PSWA rejected" in event.data["message"]
    assert event.data["progress"] == events.progress("podcast", "scripting")


def test_entered__failed_without_reason():
    """A failure without a reason still has a message."""
    assert events.entered(workflow(), "failed", failed_from_state="fetching").data[
        "message"] == "Failed."


def test_entered__completed_is_terminal_success():
    """Completing without warnings is terminal with final_status completed and progress 1."""
    data = events.entered(workflow(), "completed").data
    assert (data["is_terminal"], data["final_status"], data["progress"]) == (True, "completed",
                                                                              1.0)
    assert data["warnings"] == []


def test_entered__completed_with_warnings():
    """Warnings already on the workflow or added now make final_status completed_with_warnings."""
    data = events.entered(workflow(warnings=["no cover art"]), "completed",
                          warnings=("ASF not notified",)).data
    assert data["final_status"] == "completed_with_warnings"
    assert data["warnings"] == ["no cover art", "ASF not notified"]


def test_entered__cancelled_is_terminal():
    """Entering cancelled is a terminal generation_status with final_status cancelled."""
    event = events.entered(workflow(), "cancelled")
    assert event.event_name == "generation_status"
    assert event.data["is_terminal"] is True and event.data["final_status"] == "cancelled"
