"""Flow control as people read it (cpoa.queues) and the `why` sentence it gives (cpoa.gateway.why):
rows and a clock in, text out; no database, no network."""

from __future__ import annotations

import datetime
import uuid

from cpoa import decide, models, queues, steps
from cpoa.gateway import why

NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.timezone.utc)
UNTIL = datetime.datetime(2026, 12, 4, 12, 3, 10, tzinfo=datetime.timezone.utc)


def workflow(state: str = "synthesizing", **fields) -> models.Workflow:
    fields.setdefault("next_run_at", NOW + datetime.timedelta(hours=1))
    return models.Workflow(uuid.uuid4(), "podcast", state, {"topic": "tides"}, {}, [], **fields)


def vfa(**fields) -> models.AgentQueue:
    return models.AgentQueue("VFA", **fields)


def held(wf: models.Workflow, agents=(), position=models.FlowPosition(), tasks=()) -> str | None:
    return queues.held_by(wf, tasks, {q.agent: q for q in agents}, position, NOW)


# -- the sentences -----------------------------------------------------------------------------

def test_slot_wait__says_held_of_cap_and_ahead():
    """A capped agent's waiter: the slots held of the cap and the waiters served first."""
    assert queues.slot_wait(vfa(in_flight=3, max_in_flight=3), 12) == \
        "waiting for a VFA slot (3 of 3 in flight; 12 ahead of it)"


def test_slot_wait__no_cap_known_says_only_the_slots_held():
    """A waiter of an agent whose cap row is gone shows only the slots held."""
    assert queues.slot_wait(vfa(in_flight=2), 0) == \
        "waiting for a VFA slot (2 in flight; 0 ahead of it)"


def test_paused__names_the_status_code_or_the_breaker_and_its_failures():
    """A 429 pause names the code; a breaker pause says how many requests failed in a row."""
    assert queues.paused(vfa(paused_until=UNTIL, pause_reason="429"), NOW) == \
        "VFA paused until 12:03:10 UTC after 429"
    assert queues.paused(vfa(paused_until=UNTIL, pause_reason="breaker", failures=5), NOW) == \
        "VFA paused until 12:03:10 UTC after 5 failed requests in a row (breaker)"


def test_rate_wait__names_the_agent_and_the_time_of_its_place():
    """A rate wait says whose rate and until when."""
    assert queues.rate_wait("PSWA", UNTIL, NOW) == \
        "waiting for its place in PSWA's rate (until 12:03:10 UTC)"


def test_utc__shows_the_date_only_on_another_day_and_converts_to_utc():
    """The same day: the time; another day: the date too; any offset is shown in UTC."""
    paris = datetime.timezone(datetime.timedelta(hours=1))
    assert queues.utc(datetime.datetime(2026, 12, 4, 13, 3, 10, tzinfo=paris), NOW) == \
        "12:03:10 UTC"
    assert queues.utc(UNTIL + datetime.timedelta(days=1), NOW) == "2026-12-05 12:03:10 UTC"


# -- which one holds a workflow ------------------------------------------------------------------

def test_held_by__a_waiter_for_a_slot_is_told_its_place():
    """A workflow in VFA's queue: the slot sentence, with the agent's figures."""
    position = models.FlowPosition(waiting_agent="VFA", ahead=2)
    assert held(workflow(), [vfa(in_flight=1, max_in_flight=1, waiting=3)], position) == \
        "waiting for a VFA slot (1 of 1 in flight; 2 ahead of it)"


def test_held_by__a_place_in_a_rate_to_come():
    """A workflow with a place in PSWA's rate still to come: the rate sentence; a place
    already passed holds nothing."""
    wf = workflow("scripting", next_run_at=UNTIL)
    assert held(wf, position=models.FlowPosition(rate_agent="PSWA", rate_place_at=UNTIL)) == \
        "waiting for its place in PSWA's rate (until 12:03:10 UTC)"
    past = NOW - datetime.timedelta(seconds=1)
    assert held(wf, position=models.FlowPosition(rate_agent="PSWA", rate_place_at=past)) is None


def test_held_by__a_pause_of_the_steps_agent_holds_a_workflow_about_to_submit():
    """IGA paused: a podcast in imaging with nothing submitted yet is held by the pause; one
    whose IGA task was accepted (only polls left) and one in another step are not."""
    pause = models.AgentQueue("IGA", paused_until=UNTIL, pause_reason="503")
    wf = workflow("imaging", next_run_at=UNTIL)
    assert held(wf, [pause]) == "IGA paused until 12:03:10 UTC after 503"
    accepted = decide.new_task(wf, steps.step_for(wf), "").evolve(
        status="submitted", status_url="http://agent/v1/tasks/1")
    assert held(wf, [pause], tasks=[accepted]) is None
    assert held(workflow("synthesizing"), [pause]) is None


def test_held_by__a_pause_that_has_ended_holds_nothing():
    """A pause in the past is not reported (the query drops it too)."""
    over = models.AgentQueue("IGA", paused_until=NOW - datetime.timedelta(seconds=1),
                             pause_reason="429")
    assert held(workflow("imaging"), [over]) is None


def test_why_reason__flow_control_only_when_unleased_and_not_due():
    """The agent's limit is the reason of a scheduled workflow; a leased or due one is told
    as before."""
    text = "waiting for a VFA slot (1 of 1 in flight; 0 ahead of it)"
    assert why.reason(workflow(), [], NOW, text) == text
    due = workflow(next_run_at=NOW)
    assert why.reason(due, [], NOW, text).startswith("due now")
    leased = workflow(lease_owner="w1", lease_expires_at=UNTIL)
    assert why.reason(leased, [], NOW, text).startswith("leased by w1")


# -- the table -----------------------------------------------------------------------------------

def test_every_agent__pads_the_known_agents_in_name_order():
    """Known agents missing from the rows get an empty row; an unknown one is kept."""
    rows = queues.every_agent([vfa(in_flight=1), models.AgentQueue("ZZA")], known=("IGA", "VFA"))
    assert [q.agent for q in rows] == ["IGA", "VFA", "ZZA"]
    assert rows[1].in_flight == 1 and rows[0] == models.AgentQueue("IGA")


def test_table__aligned_columns_with_cap_waiters_and_pause():
    """One header and one line per agent: held / cap (– without one), waiters, pause."""
    text = queues.table([models.AgentQueue("IGA", paused_until=UNTIL, pause_reason="429",
                                           failures=2),
                         vfa(in_flight=3, max_in_flight=3, waiting=12)], NOW)
    assert text.splitlines() == [
        "agent  in flight  waiting  rate waits  paused until        failures",
        "IGA    0 / –      0        0           12:03:10 UTC (429)  2",
        "VFA    3 / 3      12       0           –                   0",
    ]


def test_as_json__the_time_in_iso():
    """The JSON row has every field, the pause as ISO 8601."""
    assert queues.as_json(vfa(paused_until=UNTIL, pause_reason="503")) == {
        "agent": "VFA", "in_flight": 0, "max_in_flight": None, "waiting": 0,
        "rate_waiting": 0, "paused_until": "2026-12-04T12:03:10+00:00", "pause_reason": "503",
        "failures": 0}
