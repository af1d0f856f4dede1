"""The review gate on a real database and a real HTTP agent: a script waits for a reviewer
between scripting and the voices; approve (as is, or edited), reject with notes, deadline,
concurrent reviewers."""

from __future__ import annotations

import copy
import datetime
import threading

import pytest

from cpoa import errors
from cpoa.engine import Engine
from cpoa.testing.agent import ScriptedAgent
from tests.fix_agents import drive, engine_for, sent, wait_until

REVIEWED = {"topic": "tides", "review": True}


def to_review(engine: Engine, **params: object) -> object:
    """Starts a podcast with review on and advances it until it awaits the reviewer."""
    workflow_id = engine.start_workflow("podcast", {**REVIEWED, **params}, client_id="c1")
    wait_until(lambda: engine.advance(workflow_id) == "awaiting_review", interval=0.01)
    return workflow_id


def voiced_script(agent: ScriptedAgent) -> dict:
    """The script VFA was sent (the only /forge_voice submit)."""
    [request] = sent(agent, "/forge_voice")
    return request["body"]["script"]


def test_review__waits_unleased_then_approval_completes(engine, agent, store):
    """After scripting the workflow waits unleased, due only at its deadline, with a
    review_requested event queued; advancing it calls no agent; approval resumes it."""
    workflow_id = to_review(engine)
    waiting = store.get_workflow(workflow_id)
    assert waiting.lease_owner is None
    assert waiting.next_run_at - waiting.last_updated_timestamp > datetime.timedelta(days=6)
    assert store.claim_due("someone", 30.0, 10) == []
    requests_before = len(agent.requests)
    assert engine.advance(workflow_id) == "awaiting_review"
    assert len(agent.requests) == requests_before  # no polling, no cost
    names = [e["event_name"] for e in store.get_ui_events(workflow_id)]
    assert names[-1] == "review_requested"
    assert engine.review(workflow_id, approve=True) == "synthesizing"
    assert drive(engine, workflow_id) == "completed"
    status = engine.get_workflow(workflow_id)
    assert voiced_script(agent) == status["outputs"]["script"]
    assert status["outputs"]["review"]["decision"] == "approved"
    assert [h["trigger"] for h in status["history"]].count("approve") == 1


def test_review__approved_edit_reaches_vfa_and_transcript(engine, agent, store):
    """An edited line replaces PSWA's: VFA voices it, the transcript shows it, and the
    original script is kept in the history."""
    from cpoa_agents import episode

    workflow_id = to_review(engine)
    original = engine.get_workflow(workflow_id)["outputs"]["script"]
    edited = copy.deepcopy(original)
    edited["segments"][0]["lines"][0]["text"] = "An edited line about the spring tide."
    assert engine.review(workflow_id, approve=True, script=edited) == "synthesizing"
    assert drive(engine, workflow_id) == "completed"
    outputs = engine.get_workflow(workflow_id)["outputs"]
    assert voiced_script(agent)["segments"][0]["lines"][0]["text"] == (
        "An edited line about the spring tide.")
    assert "An edited line about the spring tide." in episode.transcript(outputs["script"])
    assert outputs["script_history"] == [{"revision": 1, "script": original,
                                          "replaced_by": "reviewer"}]


def test_review__rejection_sends_notes_under_a_new_key(engine, agent, store):
    """A rejection goes back to scripting; PSWA gets the notes under <base>_pswa_v2 and
    writes a second script; approving it completes the episode, each key submitted once."""
    workflow_id = to_review(engine)
    assert engine.review(workflow_id, approve=False, notes="Drop the intro.") == "scripting"
    wait_until(lambda: engine.advance(workflow_id) == "awaiting_review", interval=0.01)
    first, second = sent(agent, "/weave_script")
    assert "revision_notes" not in first["body"]
    assert second["body"]["revision_notes"] == "Drop the intro."
    assert second["headers"]["x-idempotency-key"] == f"{workflow_id}_pswa_v2"
    outputs = engine.get_workflow(workflow_id)["outputs"]
    assert outputs["script"]["script_id"] == "s2"
    assert outputs["script_history"][0]["rejected"] == "Drop the intro."
    assert engine.review(workflow_id, approve=True) == "synthesizing"
    assert drive(engine, workflow_id) == "completed"
    assert voiced_script(agent)["script_id"] == "s2"
    assert agent.duplicates() == {}


def test_review__stale_revision_refused_under_the_lock(engine, agent, store):
    """A reviewer who saw revision 1 cannot approve (nor reject) revision 2, which PSWA wrote
    after another reviewer's rejection: refused naming both revisions, nothing stored;
    the revision seen now is accepted."""
    workflow_id = to_review(engine)
    assert engine.review(workflow_id, approve=False, notes="Shorter.",
                         expected_revision=1) == "scripting"
    wait_until(lambda: engine.advance(workflow_id) == "awaiting_review", interval=0.01)
    before = store.get_workflow(workflow_id)
    for approve, notes in ((True, None), (False, "Longer.")):
        with pytest.raises(errors.InvalidTransition, match="revision 2, not 1"):
            engine.review(workflow_id, approve=approve, notes=notes, expected_revision=1)
    assert store.get_workflow(workflow_id) == before
    with pytest.raises(errors.InvalidInput, match="expected_revision"):
        engine.review(workflow_id, approve=True, expected_revision=0)
    assert engine.review(workflow_id, approve=True, expected_revision=2) == "synthesizing"
    assert engine.get_workflow(workflow_id)["outputs"]["review"]["revision"] == 2


def test_review__rejection_with_the_reference_pswa_drops_the_named_segment(store, agent,
                                                                           tmp_path):
    """The reference PSWA reads the notes: a segment they ask to drop is gone from the
    second script, which has an id of its own."""
    from cpoa_agents.pswa import ScriptAgent

    pswa = ScriptAgent(tmp_path / "pswa", env={})
    pswa.start("127.0.0.1", 0)
    try:
        engine = engine_for(store, agent, PSWA_SERVICE_URL=pswa.base_url)
        workflow_id = to_review(engine)
        first = engine.get_workflow(workflow_id)["outputs"]["script"]
        titles = [s["segment_title"] for s in first["segments"]]
        assert len(titles) > 1
        engine.review(workflow_id, approve=False, notes=f'Please drop "{titles[1]}".')
        wait_until(lambda: engine.advance(workflow_id) == "awaiting_review", timeout=30,
                   interval=0.01)
        second = engine.get_workflow(workflow_id)["outputs"]["script"]
        assert titles[1] not in [s["segment_title"] for s in second["segments"]]
        assert second["script_id"] != first["script_id"]
        engine.review(workflow_id, approve=True)
        assert drive(engine, workflow_id) == "completed"
    finally:
        pswa.stop()


BAD_EDITS = [
    (lambda s: s["segments"][0]["lines"][0].update(text=5), "script.segments[0].lines[0].text"),
    (lambda s: s["segments"][0]["lines"][0].update(text="  "),
     "script.segments[0].lines[0].text"),
    (lambda s: s["segments"][0]["lines"][1].pop("speaker"),
     "script.segments[0].lines[1].speaker"),
    (lambda s: s.pop("title"), "script.title"),
    (lambda s: s.update(segments=[]), "script.segments"),
    (lambda s: s["segments"].append("not a segment"), "script.segments[1]"),
]


@pytest.mark.parametrize(("edit", "field"), BAD_EDITS)
def test_review__bad_edit_refused_naming_the_field(engine, store, edit, field):
    """A bad edit is refused naming its field; nothing is stored and the workflow still
    awaits review."""
    workflow_id = to_review(engine)
    before = store.get_workflow(workflow_id)
    script = copy.deepcopy(before.context["script"])
    edit(script)
    with pytest.raises(errors.InvalidInput) as info:
        engine.review(workflow_id, approve=True, script=script)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert store.get_workflow(workflow_id) == before


def test_review__three_segments_refused_names_the_third(engine, store):
    """The issue's example: a bad line in the third segment is named segments[2]."""
    workflow_id = to_review(engine)
    script = copy.deepcopy(store.get_workflow(workflow_id).context["script"])
    script["segments"] = [copy.deepcopy(script["segments"][0]) for _ in range(3)]
    script["segments"][2]["lines"][0]["text"] = None
    with pytest.raises(errors.InvalidInput) as info:
        engine.review(workflow_id, approve=True, script=script)
    assert info.value.field == "script.segments[2].lines[0].text"


@pytest.mark.parametrize(("approve", "script", "notes", "field"), [
    (False, None, None, "notes"),
    (False, {"title": "x"}, "notes", "script"),
    (False, None, "x" * 5001, "notes"),
])
def test_review__bad_decision_refused(engine, store, approve, script, notes, field):
    """A rejection needs notes (bounded) and carries no script."""
    workflow_id = to_review(engine)
    with pytest.raises(errors.InvalidInput) as info:
        engine.review(workflow_id, approve=approve, script=script, notes=notes)
    assert info.value.field == field
    assert store.get_workflow(workflow_id).state == "awaiting_review"


def test_review__deadline_fails_with_its_reason_and_retry_waits_again(store, agent):
    """Unreviewed past CPOA_REVIEW_TIMEOUT_SECONDS, the workflow fails saying so; a retry
    puts it back awaiting review with a new deadline."""
    engine = engine_for(store, agent, CPOA_REVIEW_TIMEOUT_SECONDS="0.5")
    workflow_id = to_review(engine)
    assert drive(engine, workflow_id, timeout=10) == "failed"
    status = engine.get_workflow(workflow_id)
    assert status["failed_from_state"] == "awaiting_review"
    assert "review deadline passed" in status["error"]
    assert "CPOA_REVIEW_TIMEOUT_SECONDS" in status["error"]
    assert engine.retry(workflow_id) == "awaiting_review"
    waiting = store.get_workflow(workflow_id)
    assert waiting.next_run_at > waiting.last_updated_timestamp
    assert engine.review(workflow_id, approve=True) == "synthesizing"


def test_review__not_awaiting_review_is_refused(engine, store):
    """A workflow started without review never waits, and cannot be approved."""
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert drive(engine, workflow_id) == "completed"
    with pytest.raises(errors.InvalidTransition):
        engine.review(workflow_id, approve=True)


@pytest.mark.parametrize("second_approves", [True, False])
def test_review__concurrent_reviewers_exactly_one_wins(engine, store, second_approves):
    """Two reviewers acting at once: exactly one decision is applied; the other is refused
    with InvalidTransition (409 at the gateway) and the history has one review."""
    workflow_id = to_review(engine)
    barrier = threading.Barrier(4)
    outcomes: list[object] = []

    def act(approve: bool) -> None:
        barrier.wait()
        try:
            outcomes.append(engine.review(workflow_id, approve=approve,
                                          notes=None if approve else "Shorter, please."))
        except errors.CPOAError as exc:
            outcomes.append(exc)
    threads = [threading.Thread(target=act, args=(i % 2 == 0 or second_approves,))
               for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    won = [o for o in outcomes if isinstance(o, str)]
    lost = [o for o in outcomes if isinstance(o, errors.CPOAError)]
    assert len(won) == 1 and len(lost) == 3, outcomes
    assert all(isinstance(o, errors.InvalidTransition) for o in lost)
    triggers = [h["trigger"] for h in store.get_history(workflow_id)]
    assert triggers.count("approve") + triggers.count("reject") == 1


def test_review__default_from_cpoa_review_scripts(store, agent):
    """CPOA_REVIEW_SCRIPTS=1 makes review the default; review: false still opts out."""
    engine = engine_for(store, agent, CPOA_REVIEW_SCRIPTS="1")
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    wait_until(lambda: engine.advance(workflow_id) == "awaiting_review", interval=0.01)
    opted_out = engine.start_workflow("podcast", {"topic": "tides", "review": False})
    assert drive(engine, opted_out) == "completed"


def test_review__worker_leaves_it_waiting_then_finishes_after_approval(engine, store):
    """A real worker runs the workflow to the gate, leaves it unleased while it sleeps, and
    finishes it once a reviewer approves."""
    from cpoa.worker import Worker

    worker = Worker(engine, concurrency=2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        workflow_id = engine.start_workflow("podcast", REVIEWED)
        wait_until(lambda: store.get_workflow(workflow_id).state == "awaiting_review")
        wait_until(worker.sleeping.is_set, timeout=5)
        assert store.get_workflow(workflow_id).lease_owner is None
        engine.review(workflow_id, approve=True)
        wait_until(lambda: store.get_workflow(workflow_id).state == "completed", timeout=15)
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()


def test_review__podcast_review_flag_is_checked(engine):
    """review must be true or false."""
    with pytest.raises(errors.InvalidInput) as info:
        engine.start_workflow("podcast", {"topic": "tides", "review": "yes"})
    assert info.value.field == "review"
