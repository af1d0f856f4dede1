"""The pure state machines: every edge decided, every other trigger refused."""

from __future__ import annotations

import threading

import pytest

from cpoa import errors, machine


def definition_edges():
    """(kind, trigger, source, dest) for every edge of every kind, from the declared data."""
    for kind, (_, transitions, _) in machine.KINDS.items():
        for transition in transitions:
            sources = transition["source"]
            for source in [sources] if isinstance(sources, str) else sources:
                yield kind, transition["trigger"], source, transition["dest"]


EDGES = sorted(definition_edges())


def allowed(kind, state, trigger):
    """True when the definition has an edge for ``trigger`` out of ``state``."""
    return any(e[:3] == (kind, trigger, state) for e in EDGES)


@pytest.mark.parametrize(("kind", "trigger", "source", "dest"), EDGES)
def test_decide__every_edge(kind, trigger, source, dest):
    """Each declared edge is taken by decide, recording or clearing failed_from_state."""
    origin = dest if trigger == "retry" else None
    review = (trigger, dest) == ("step_done", "awaiting_review")  # the guarded edge
    model = machine.decide(kind, source, trigger, origin, review=review)
    assert model.state == dest
    if trigger == "fail":
        assert model.failed_from_state == source
    elif trigger == "retry":
        assert model.failed_from_state is None


REFUSED = [(kind, state, trigger)
           for kind in machine.KINDS for state in machine.states(kind)
           for trigger in machine.TRIGGERS if not allowed(kind, state, trigger)]


@pytest.mark.parametrize(("kind", "state", "trigger"), REFUSED)
def test_decide__refuses_undeclared_trigger(kind, state, trigger):
    """A trigger with no edge out of the state raises InvalidTransition carrying both."""
    with pytest.raises(errors.InvalidTransition) as info:
        machine.decide(kind, state, trigger, failed_from_state=machine.initial_state(kind))
    assert (info.value.state, info.value.trigger) == (state, trigger)


def test_decide__unknown_trigger_refused():
    """A trigger the machine does not know raises InvalidTransition, not AttributeError."""
    with pytest.raises(errors.InvalidTransition):
        machine.decide("podcast", "fetching", "explode")


def test_decide__unknown_state_refused():
    """A state the kind does not have raises InvalidTransition, not a bare ValueError."""
    with pytest.raises(errors.InvalidTransition):
        machine.decide("snippets", "fetching", "fail")


def test_decide__unknown_kind_is_invalid_input():
    """An unknown kind raises InvalidInput naming the kind field."""
    with pytest.raises(errors.InvalidInput) as info:
        machine.decide("radio", "fetching", "fail")
    assert info.value.field == "kind"


@pytest.mark.parametrize("kind", sorted(machine.KINDS))
def test_final_states__have_no_outgoing_edge(kind):
    """completed and cancelled are final: no edge leaves them and every trigger is refused."""
    declared_final = {s["name"] for s in machine.KINDS[kind][0]
                      if isinstance(s, dict) and s.get("final")}
    assert declared_final == machine.FINAL_STATES
    assert not {source for source, _ in machine.edges(kind)} & machine.FINAL_STATES
    for state in machine.FINAL_STATES:
        for trigger in machine.TRIGGERS:
            with pytest.raises(errors.InvalidTransition):
                machine.decide(kind, state, trigger, failed_from_state="failed")


@pytest.mark.parametrize("kind", sorted(machine.KINDS))
def test_retry__goes_only_to_failed_from_state(kind):
    """Retry from failed lands exactly on failed_from_state, for each working state."""
    for origin in machine.working_states(kind):
        assert machine.decide(kind, "failed", "retry", origin).state == origin
    assert {dest for source, dest in machine.edges(kind) if source == "failed"} == {
        *machine.working_states(kind), "cancelled"}


@pytest.mark.parametrize("origin", [None, "completed", "failed", "cancelled", "nowhere"])
def test_retry__without_resumable_origin_refused(origin):
    """Retry with no origin, or an origin that is not a working state, is refused."""
    with pytest.raises(errors.InvalidTransition):
        machine.decide("podcast", "failed", "retry", origin)


@pytest.mark.parametrize("kind", sorted(machine.KINDS))
def test_fail__from_every_working_state(kind):
    """Every working state can fail, and failing records it as the origin."""
    for state in machine.working_states(kind):
        model = machine.decide(kind, state, "fail")
        assert (model.state, model.failed_from_state) == ("failed", state)


def test_step_done__podcast_chain():
    """step_done walks the podcast states in contract order to completed."""
    state, seen = machine.initial_state("podcast"), []
    while state != "completed":
        seen.append(state)
        state = machine.decide("podcast", state, "step_done").state
    assert seen == ["fetching", "analyzing", "scripting", "synthesizing", "imaging",
                    "finalizing"]


def test_step_done__snippets_chain():
    """step_done walks the snippets states in contract order to completed."""
    state, seen = machine.initial_state("snippets"), []
    while state != "completed":
        seen.append(state)
        state = machine.decide("snippets", state, "step_done").state
    assert seen == ["discovering", "crafting", "imaging"]


def test_states__lists_and_initial():
    """states, working_states and initial_state agree with the definitions."""
    assert machine.states("snippets") == ["discovering", "crafting", "imaging", "completed",
                                          "failed", "cancelled"]
    assert machine.working_states("podcast") == machine.PODCAST_WORKING
    assert machine.initial_state("podcast") == "fetching"
    assert machine.initial_state("snippets") == "discovering"


def test_triggers__cover_every_declared_trigger():
    """TRIGGERS names exactly the triggers the definitions use."""
    assert {e[1] for e in EDGES} == set(machine.TRIGGERS)


def test_build_machine__has_no_auto_transitions():
    """The built machine has no to_<state>() backdoor; may_<trigger>() follows the guards."""
    model = machine.WorkflowModel(state="fetching")
    machine.build_machine("podcast", model=model)
    assert not hasattr(model, "to_completed")
    assert model.may_fail() and not model.may_retry()
    model.fail()
    assert (model.state, model.failed_from_state) == ("failed", "fetching")
    assert model.may_retry() and model.may_cancel() and not model.may_step_done()


def test_decide__is_thread_safe():
    """Many threads deciding at once all get the right answer."""
    failures = []

    def work():
        for _ in range(200):
            if machine.decide("podcast", "failed", "retry", "imaging").state != "imaging":
                failures.append("wrong state")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_decide__scripting_goes_to_review_only_when_asked():
    """step_done out of scripting waits for a reviewer only with review=True."""
    assert machine.decide("podcast", "scripting", "step_done").state == "synthesizing"
    assert machine.decide("podcast", "scripting", "step_done",
                          review=True).state == "awaiting_review"


@pytest.mark.parametrize("trigger", ["approve", "reject"])
def test_decide__review_refused_elsewhere_names_the_gate(trigger):
    """Approving or rejecting a workflow not awaiting review is refused, saying why."""
    with pytest.raises(errors.InvalidTransition) as info:
        machine.decide("podcast", "synthesizing", trigger)
    assert "only a workflow awaiting_review" in str(info.value)


def test_fingerprint__recorded_by_the_schema():
    """schema.sql records this code's machine fingerprint (change both together)."""
    from cpoa import sql

    assert f"INSERT INTO cpoa_machine (fingerprint) VALUES ('{machine.fingerprint()}')" in (
        sql.schema())


def test_difference__names_missing_and_extra_edges():
    """A database lacking an edge is told to run `cpoa db init`; one with an edge this code
    lacks says this CPOA is the older; the same machine has no difference."""
    mine = machine.enforced_edges()
    assert machine.difference(machine.fingerprint(), mine) is None
    older = machine.difference("old", mine - {("podcast", "scripting", "awaiting_review")})
    assert "lacks podcast scripting -> awaiting_review" in older
    assert "cpoa db init" in older
    assert "cpoa db init" in machine.difference(None, mine)
    newer = machine.difference("new", mine | {("podcast", "imaging", "scripting")})
    assert "allows podcast imaging -> scripting" in newer and "upgrade" in newer
