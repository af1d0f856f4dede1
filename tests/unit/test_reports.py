"""Live progress (cpoa.reports, and how attempt.settle and decide.after_call use it): what an
agent's progress and partial become, when they are forwarded. Pure: no database, no network."""

from __future__ import annotations

import pytest

from cpoa import attempt, decide, defaults, events, machine, reports
from cpoa.agents.client import Reply
from tests.unit.test_decide import NOW, in_seconds, task_of, workflow

PACE = attempt.Timing(interval_s=5.0, timeout_s=60.0, honour_retry_after=True,
                      progress_every_s=1.0)
TURNS = [{"turn": 0, "audio_url": "http://vfa/turns/a.wav"}]


# -- read ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("progress", [0, 0.0, 0.25, 1, 1.0])
def test_read__a_fraction_is_kept(progress):
    """A number from 0 to 1 (int or float) is the report's progress."""
    assert reports.read(progress, None) == (reports.Report(float(progress), None), ())


@pytest.mark.parametrize("progress", ["0.5", 1.5, -0.1, float("nan"), float("inf"), True,
                                      10 ** 400, [0.5], {"p": 1}])
def test_read__a_bad_progress_is_ignored_with_a_problem(progress):
    """A string, a number outside 0-1, NaN, a boolean, a huge int or a container: ignored,
    one problem naming the field."""
    report, problems = reports.read(progress, None)
    assert report is None
    assert len(problems) == 1 and problems[0].startswith("progress: expected a number")


def test_read__a_bad_progress_keeps_a_good_partial():
    """Each field is checked on its own: a bad progress does not cost a good partial."""
    report, problems = reports.read("half", TURNS)
    assert report == reports.Report(None, TURNS) and len(problems) == 1


@pytest.mark.parametrize("partial, problem", [
    ("a, b", "expected a list"),
    ({"turn": 0}, "expected a list"),
    ([{}] * (defaults.PROGRESS_PARTIAL_MAX_ITEMS + 1), "items, more than"),
    (["x" * defaults.PROGRESS_PARTIAL_MAX_CHARS], "characters of JSON"),
    ([float("nan")], "NaN or Infinity"),
])
def test_read__a_bad_partial_is_ignored_with_a_problem(partial, problem):
    """Not a list, too many items, too large, or NaN inside: ignored; the progress stays."""
    report, problems = reports.read(0.5, partial)
    assert report == reports.Report(0.5, None)
    assert len(problems) == 1 and problems[0].startswith("partial: ") and problem in problems[0]


def test_read__the_largest_partial_allowed_is_kept():
    """Exactly the item limit is kept (the bound is not off by one)."""
    partial = [0] * defaults.PROGRESS_PARTIAL_MAX_ITEMS
    assert reports.read(None, partial) == (reports.Report(None, partial), ())


def test_read__nothing_reported_is_no_report():
    assert reports.read(None, None) == (None, ())


# -- fold: what is kept, when it is sent --------------------------------------------------------

def test_fold__a_first_report_is_sent_at_once():
    """The first progress of a task goes out with the poll that brought it."""
    kept = reports.fold(None, reports.Report(0.1, TURNS), NOW, 1.0)
    assert kept == {"progress": 0.1, "partial": TURNS, "reported_at": NOW.isoformat(),
                    "sent_at": NOW.isoformat(), "unsent": False}


def test_fold__a_change_within_the_interval_is_held_then_sent_at_a_later_poll():
    """0.1 sent; 0.2 half a second later is held (unsent); a poll after the interval sends
    it even though it brought nothing new: the latest value is never lost."""
    first = reports.fold(None, reports.Report(0.1), NOW, 1.0)
    held = reports.fold(first, reports.Report(0.2), in_seconds(0.5), 1.0)
    assert held["progress"] == 0.2 and held["unsent"] is True
    assert held["sent_at"] == NOW.isoformat()
    later = reports.fold(held, None, in_seconds(1.0), 1.0)
    assert later["sent_at"] == in_seconds(1.0).isoformat() and later["unsent"] is False


def test_fold__no_change_sends_nothing():
    """The same values again, after the interval: nothing to send."""
    first = reports.fold(None, reports.Report(0.5, TURNS), NOW, 1.0)
    again = reports.fold(first, reports.Report(0.5, TURNS), in_seconds(5), 1.0)
    assert again["sent_at"] == first["sent_at"] and again["unsent"] is False


def test_fold__a_missing_field_keeps_its_last_value():
    """A poll reporting only progress keeps the partial reported before."""
    first = reports.fold(None, reports.Report(0.1, TURNS), NOW, 1.0)
    kept = reports.fold(first, reports.Report(0.3), in_seconds(2), 1.0)
    assert (kept["progress"], kept["partial"]) == (0.3, TURNS)


def test_fold__no_report_and_nothing_waiting_changes_nothing():
    first = reports.fold(None, reports.Report(0.1), NOW, 1.0)
    assert reports.fold(first, None, in_seconds(3), 1.0) == first
    assert reports.fold(None, None, NOW, 1.0) is None


def test_fold__interval_zero_sends_every_change():
    first = reports.fold(None, reports.Report(0.1), NOW, 0.0)
    second = reports.fold(first, reports.Report(0.2), NOW, 0.0)
    assert second["sent_at"] == NOW.isoformat() and second["unsent"] is False


# -- settle and after_call: the row keeps it, the write sends it ----------------------------------

def polled(task, reply, at, report):
    wf = workflow("synthesizing", context={"script": {}})
    step = decide.steps.step_for(wf)
    return wf, attempt.settle(step, task, reply, at, PACE, report)


def test_settle__a_pending_reply_folds_the_report_into_the_row():
    """The task row keeps the report; a finished task's row keeps its last one."""
    wf = workflow("synthesizing")
    task = task_of(wf, status="submitted", status_url="http://a/t", first_submitted_at=NOW)
    _, after = polled(task, Reply("pending"), NOW, reports.Report(0.4, TURNS))
    assert after.progress_json["progress"] == 0.4 and after.status == "submitted"


def test_after_call__one_event_per_send_in_order_of_the_polls():
    """Polls bringing 0.2, 0.4 (0.3 s later: held), 0.6 (1.1 s after the first): events for
    0.2 and 0.6 only, each the generation_progress of the step with its partial."""
    wf = workflow("synthesizing")
    task = task_of(wf, status="submitted", status_url="http://a/t", first_submitted_at=NOW)
    sent = []
    for seconds, fraction in ((0.0, 0.2), (0.3, 0.4), (1.1, 0.6)):
        _, after = polled(task, Reply("pending"), in_seconds(seconds),
                          reports.Report(fraction, TURNS[:1]))
        action = decide.after_call(wf, {"": task}, after, in_seconds(seconds))
        assert isinstance(action, decide.Wait)
        if action.ui_event is not None:
            sent.append(action.ui_event)
        task = after
    assert [e.data["progress"] for e in sent] == [0.2, 0.6]
    event = sent[-1]
    assert event.event_name == "generation_progress"
    assert event.data["state"] == "synthesizing" and event.data["agent"] == "VFA"
    assert event.data["partial"] == TURNS[:1]
    steps_count = len(machine.working_states("podcast"))
    assert event.data["workflow_progress"] == pytest.approx(
        events.progress("podcast", "synthesizing") + 0.6 / steps_count, abs=1e-3)
    assert decide.outcome(wf, action).ui_event == event


def test_after_call__no_report_no_event():
    """A plain pending poll queues no event."""
    wf = workflow("synthesizing")
    task = task_of(wf, status="submitted", status_url="http://a/t", first_submitted_at=NOW)
    _, after = polled(task, Reply("pending"), NOW, None)
    assert decide.after_call(wf, {"": task}, after, NOW).ui_event is None
