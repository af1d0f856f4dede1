"""The review gate and fork, pure: decisions, edits, deadlines, keys and fork plans."""

from __future__ import annotations

import datetime
import uuid

import pytest

from cpoa import decide, editorial, errors, models, steps

NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)
SCRIPT = {"script_id": "s1", "title": "Tides", "segments": [
    {"segment_title": "Intro", "lines": [{"speaker": "Host", "text": "Welcome."}]}]}


def waiting(**context) -> models.Workflow:
    return models.Workflow(uuid.UUID(int=1), "podcast", "awaiting_review",
                           {"topic": "tides", "review": True},
                           {"content": "c", "script": SCRIPT, **context}, [],
                           next_run_at=NOW + datetime.timedelta(days=7))


def test_next_action__awaiting_review_waits_until_the_deadline_then_fails():
    """Before the deadline the waiting state asks for nothing; at it the step fails."""
    action = decide.next_action(waiting(), {}, NOW, 5)
    assert isinstance(action, decide.Wait) and action.run_in_s == 7 * 86400
    late = decide.next_action(waiting(), {}, NOW + datetime.timedelta(days=8), 5)
    assert isinstance(late, decide.Finish) and not late.verdict.ok
    outcome = decide.outcome(waiting(), late)
    assert (outcome.dest, outcome.failed_from_state) == ("failed", "awaiting_review")
    assert "CPOA_REVIEW_TIMEOUT_SECONDS" in outcome.error_message


def test_verdict_outcome__scripting_with_review_waits_with_a_deadline():
    """A finished script of a reviewed workflow goes to awaiting_review, due at the deadline,
    with a review_requested event."""
    scripting = models.Workflow(uuid.UUID(int=2), "podcast", "scripting",
                                {"topic": "t", "review": True}, {}, [], client_id="c")
    outcome = decide.verdict_outcome(scripting, steps.Verdict(True, {"script": SCRIPT}),
                                     review_timeout_s=60.0)
    assert (outcome.dest, outcome.run_in_s) == ("awaiting_review", 60.0)
    assert outcome.ui_event.event_name == "review_requested"


def test_edited_script__names_the_field_like_the_issue():
    """A bad line of the third segment is named script.segments[2].lines[0].text."""
    bad = {**SCRIPT, "segments": [SCRIPT["segments"][0]] * 2 + [
        {"segment_title": "x", "lines": [{"speaker": "Host", "text": 3}]}]}
    with pytest.raises(errors.InvalidInput) as info:
        editorial.edited_script(bad)
    assert info.value.field == "script.segments[2].lines[0].text"
    assert str(info.value) == ("script.segments[2].lines[0].text: must be a non-empty string "
                               "(got int)")
    with pytest.raises(errors.InvalidInput) as info:
        editorial.edited_script("text")
    assert info.value.field == "script"


def test_decision_outcome__approval_with_edit_keeps_the_original():
    edited = {**SCRIPT, "title": "Edited"}
    outcome = editorial.decision_outcome(waiting(), editorial.Decision.checked(True, edited))
    assert outcome.dest == "synthesizing"
    assert outcome.context_updates["script"] == edited
    assert outcome.context_updates["script_history"] == [
        {"revision": 1, "script": SCRIPT, "replaced_by": "reviewer"}]


def test_decision_outcome__rejection_counts_the_revision_and_keys_follow():
    """A rejection numbers the next script; its PSWA item (and key) is v2, then v3."""
    outcome = editorial.decision_outcome(waiting(), editorial.Decision.checked(False,
                                                                               notes="Shorter"))
    assert outcome.dest == "scripting"
    assert outcome.context_updates["script_revision"] == 2
    second = models.Workflow(uuid.UUID(int=1), "podcast", "scripting", {"topic": "t"},
                             {"content": "c", **outcome.context_updates}, [])
    step = steps.step_for(second)
    [(item, _)] = step.items(second)
    assert step.idempotency_key(second, item) == f"{uuid.UUID(int=1)}_pswa_v2"
    assert step.request(second, None)["revision_notes"] == "Shorter"


def test_fork_plan__copies_only_the_steps_before_and_checks_params():
    source = models.Workflow(uuid.UUID(int=3), "podcast", "completed",
                             {"topic": "t", "voice_params": {}},
                             {"content": "c", "source_urls": [], "topics": [],
                              "script": SCRIPT, "audio": {"url": "a"}, "image_url": "i",
                              "asf_notified": True}, [])
    history = [{"to_state": s} for s in ("fetching", "analyzing", "scripting", "synthesizing",
                                         "imaging", "finalizing", "completed")]
    params, context = editorial.fork_plan(source, history, "synthesizing",
                                          {"voice_params": {"voice_name": "en+f4"}})
    assert set(context) == {"content", "source_urls", "topics", "script"}
    assert params["voice_params"] == {"voice_name": "en+f4"}
    with pytest.raises(errors.InvalidInput) as info:
        editorial.fork_plan(source, history[:2], "synthesizing", None)
    assert info.value.field == "from_state"


def _completed(params: dict) -> tuple[models.Workflow, list[dict]]:
    source = models.Workflow(uuid.UUID(int=4), "podcast", "completed",
                             {"topic": "t", **params},
                             {"content": "c", "source_urls": [], "topics": [],
                              "script": SCRIPT, "audio": {"url": "a"}}, [])
    return source, [{"to_state": s} for s in ("fetching", "analyzing", "scripting",
                                              "synthesizing", "imaging", "finalizing")]


@pytest.mark.parametrize(("from_state", "changes", "field"), [
    ("synthesizing", {"persona": "a pirate"}, "persona"),
    ("synthesizing", {"format": "panel"}, "format"),
    ("synthesizing", {"urls": ["https://example.org/a"]}, "urls"),
    ("synthesizing", {"target_minutes": 9}, "target_minutes"),
    ("synthesizing", {"review": True}, "review"),
    ("imaging", {"voice_params": {"voice_name": "en+f4"}}, "voice_params"),
    ("finalizing", {"topic": "other"}, "topic"),
    ("finalizing", {"cover_prompt": "a boat"}, "cover_prompt"),
])
def test_fork_plan__a_change_no_later_step_reads_is_refused(from_state, changes, field):
    """A parameter only the steps before from_state read would change nothing: refused,
    named."""
    source, history = _completed({"persona": "a sailor"})
    with pytest.raises(errors.InvalidInput) as info:
        editorial.fork_plan(source, history, from_state, changes)
    assert info.value.field == field
    assert f"no step from {from_state} on reads it" in str(info.value)


def test_fork_plan__effective_changes_allowed_and_voice_params_merged():
    """voice_params, cover_prompt (and topic, the default cover prompt) are read from
    synthesizing on; voice_params is merged into the source's; an unchanged value of an
    earlier step's parameter is no change."""
    source, history = _completed({"persona": "a sailor",
                                  "voice_params": {"voice_name": "en", "speaking_rate": 1.2}})
    params, _ = editorial.fork_plan(source, history, "synthesizing", {
        "voice_params": {"voice_name": "en+f4"}, "cover_prompt": "a boat",
        "persona": "a sailor"})
    assert params["voice_params"] == {"voice_name": "en+f4", "speaking_rate": 1.2}
    assert params["cover_prompt"] == "a boat"
    params, _ = editorial.fork_plan(source, history, "scripting", {"persona": "a pirate"})
    assert params["persona"] == "a pirate"


def test_edited_script__longer_than_the_limit_refused_naming_script():
    """An edited script whose JSON is longer than REVIEW_SCRIPT_MAX_CHARS is refused naming
    `script` (before its lines are checked); one just under it is checked as usual."""
    from cpoa import defaults

    line = {"speaker": "Host", "text": "x" * 1000}
    lines = [line] * (defaults.REVIEW_SCRIPT_MAX_CHARS // 1000 + 1)
    huge = {**SCRIPT, "segments": [{"segment_title": "Intro", "lines": lines}]}
    with pytest.raises(errors.InvalidInput) as info:
        editorial.Decision.checked(True, huge)
    assert info.value.field == "script"
    assert f"more than the {defaults.REVIEW_SCRIPT_MAX_CHARS}" in str(info.value)
    editorial.Decision.checked(True, {**huge, "segments": [
        {"segment_title": "Intro", "lines": lines[:len(lines) // 2]}]})


def test_decision_outcome__rejection_of_the_last_revision_allowed_refused():
    """At REVIEW_MAX_REVISIONS a rejection is refused naming the revision count; an
    approval still goes on."""
    from cpoa import defaults

    last = waiting(script_revision=defaults.REVIEW_MAX_REVISIONS)
    with pytest.raises(errors.InvalidTransition) as info:
        editorial.decision_outcome(last, editorial.Decision.checked(False, notes="Again."))
    assert f"revision {defaults.REVIEW_MAX_REVISIONS}, the most allowed" in str(info.value)
    assert editorial.decision_outcome(last, editorial.Decision.checked(True)).dest == (
        "synthesizing")
    below = waiting(script_revision=defaults.REVIEW_MAX_REVISIONS - 1)
    assert editorial.decision_outcome(
        below, editorial.Decision.checked(False, notes="Again.")).dest == "scripting"
