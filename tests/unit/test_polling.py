"""Adaptive polling (cpoa.attempt.poll_pause and settle): short first, growing to the interval,
honouring Retry-After and the polling timeout. Pure: no database, no network."""

from __future__ import annotations

import datetime

import pytest

from cpoa import attempt, defaults, models, steps
from cpoa import settings as settings_module
from cpoa.agents.client import Reply
from tests.unit.test_decide import NOW, in_seconds, task_of, workflow

ADAPTIVE = attempt.Timing(interval_s=10.0, timeout_s=300.0, honour_retry_after=True,
                          adaptive=True)


def polls_until_done(duration_s: float, interval_s: float, adaptive: bool) -> list[float]:
    """The poll times (seconds after the submit) of a task lasting ``duration_s``: the last
    one is the first at or after ``duration_s``."""
    pace = attempt.Timing(interval_s, 1e9, True, adaptive=adaptive)
    step = steps.step_for(workflow())
    task = attempt.begin(task_of(workflow()), NOW, pace)
    task = attempt.settle(step, task, Reply("accepted", "t", "http://a/t"), NOW, pace)
    times = []
    while True:
        at = (task.next_poll_at - NOW).total_seconds()
        times.append(at)
        if at >= duration_s:
            return times
        task = attempt.settle(step, task, Reply("pending"), task.next_poll_at, pace)


def test_poll_pause__follows_the_formula():
    """pause = min(I, max(0.2 I, 4 * age)): 0.2 I at the submit, then up to I."""
    assert (defaults.POLL_FIRST_FRACTION, defaults.POLL_GROWTH) == (0.2, 5.0)
    assert attempt.poll_pause(0.0, 10.0) == pytest.approx(2.0)
    assert attempt.poll_pause(0.3, 10.0) == pytest.approx(2.0)
    assert attempt.poll_pause(1.0, 10.0) == pytest.approx(4.0)
    assert attempt.poll_pause(2.0, 10.0) == pytest.approx(8.0)
    assert attempt.poll_pause(30.0, 10.0) == pytest.approx(10.0)
    assert attempt.poll_pause(-1.0, 10.0) == pytest.approx(2.0)  # a clock step back


@pytest.mark.parametrize("interval_s", [3.0, 5.0, 10.0])
def test_settle__polls_come_at_a_fifth_of_the_interval_then_every_interval(interval_s):
    """A pending task is polled 0.2 I after its submit, then at I, 2 I, 3 I…"""
    times = polls_until_done(3 * interval_s, interval_s, adaptive=True)
    assert times == pytest.approx([0.2 * interval_s, interval_s, 2 * interval_s,
                                   3 * interval_s])


@pytest.mark.parametrize("interval_s", [3.0, 5.0, 10.0])
@pytest.mark.parametrize("lasting", [0.1, 0.5, 1.0, 2.0, 5.5, 30.0])
def test_settle__at_most_one_poll_more_than_a_fixed_interval(interval_s, lasting):
    """Whatever the task's duration (in intervals), adaptive polling costs at most one poll
    more than a fixed interval: never more than 2x for a task lasting the full interval."""
    duration = lasting * interval_s
    adaptive = polls_until_done(duration, interval_s, adaptive=True)
    fixed = polls_until_done(duration, interval_s, adaptive=False)
    assert len(adaptive) <= len(fixed) + 1
    assert len(adaptive) <= 2 * len(fixed)


@pytest.mark.parametrize("interval_s", [5.0, 10.0])
def test_settle__a_task_done_within_a_second_is_seen_within_a_fifth_of_the_interval(interval_s):
    """With intervals of 5 s or more, a task finishing within 1 s is polled done at 0.2 I."""
    for duration in (0.05, 0.5, 1.0):
        assert polls_until_done(duration, interval_s, adaptive=True)[-1] <= 0.2 * interval_s


def test_settle__pending_retry_after_sets_the_next_poll():
    """A pending reply with Retry-After: 7 is polled again in 7 s, not the adaptive 2 s."""
    task = attempt.begin(task_of(workflow()), NOW, ADAPTIVE)
    task = attempt.settle(steps.step_for(workflow()), task,
                          Reply("accepted", "t", "http://a/t", retry_after=7.0), NOW, ADAPTIVE)
    assert task.next_poll_at == in_seconds(7)
    task = attempt.settle(steps.step_for(workflow()), task, Reply("pending", retry_after=0.0),
                          in_seconds(7), ADAPTIVE)
    assert task.next_poll_at == in_seconds(7 + defaults.POLL_MIN_PAUSE_S)


def test_settle__the_adaptive_pause_never_passes_the_polling_deadline():
    """Near its deadline a task is polled at the deadline, not a full pause later."""
    pace = attempt.Timing(interval_s=10.0, timeout_s=25.0, honour_retry_after=True,
                          adaptive=True)
    task = attempt.begin(task_of(workflow()), NOW, pace).evolve(status="submitted",
                                                                 status_url="http://a/t")
    task = attempt.settle(steps.step_for(workflow()), task, Reply("pending"), in_seconds(20),
                          pace)
    assert task.next_poll_at == in_seconds(25)


def test_timing__polled_agents_are_adaptive_and_the_notified_step_is_not():
    """Every polled agent's pace is adaptive; ASF's notification keeps its fixed retry pace."""
    settings = settings_module.from_env({})
    assert attempt.timing(settings, steps.step_for(workflow())).adaptive is True
    assert attempt.timing(settings, steps.step_for(workflow("finalizing"))).adaptive is False


def test_settle__age_counts_from_the_first_submit_not_the_last_request():
    """A task resubmitted after a transient error keeps its age: its pauses keep growing."""
    first = NOW - datetime.timedelta(seconds=40)
    task = models.Task(**{**task_of(workflow()).__dict__, "first_submitted_at": first,
                          "poll_deadline_at": first + datetime.timedelta(seconds=300)})
    task = attempt.settle(steps.step_for(workflow()), task, Reply("pending"), NOW, ADAPTIVE)
    assert task.next_poll_at == in_seconds(10)
