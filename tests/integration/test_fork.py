"""Fork: a new workflow from a finished one, from a chosen state on, with changed parameters;
only the steps from that state call their agents, under the new workflow's own keys."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from cpoa import errors
from cpoa.testing.agent import Reply
from tests.fix_agents import drive, wait_until

BEFORE_VOICES = ("/harvest", "/discover_topics", "/weave_script")
VOICED = {"topic": "tides", "voice_params": {"voice_name": "en"}, "persona": "a sailor"}


def submits_of(agent, workflow_id) -> dict[str, int]:
    """Submits per path sent for one workflow (X-Workflow-ID), every one counted."""
    counts: dict[str, int] = {}
    for request in agent.requests:
        if request["method"] == "POST" and request["headers"].get("x-workflow-id") == str(
                workflow_id) and not request["path"].endswith("send_ui_update"):
            counts[request["path"]] = counts.get(request["path"], 0) + 1
    return counts


def test_fork__at_synthesizing_revoices_without_earlier_work(engine, agent, store):
    """A fork at synthesizing with another voice calls only VFA, IGA and ASF, under keys of
    its own, makes another audio file, and records forked_from."""
    source = engine.start_workflow("podcast", VOICED)
    assert drive(engine, source) == "completed"
    work_before = dict(agent.work)
    fork = engine.fork(source, "synthesizing", {"voice_params": {"voice_name": "en+f4"}})
    assert drive(engine, fork) == "completed"
    assert submits_of(agent, fork) == {"/forge_voice": 1, "/generate_image": 1,
                                       "/asf/internal/notify_new_audio": 1}
    assert not any(key.startswith(str(source)) for key in
                   set(agent.work) - set(work_before))  # no source key re-sent
    assert all(n == 1 for n in agent.work.values())
    status, origin = engine.get_workflow(fork), engine.get_workflow(source)
    assert status["forked_from"] == str(source)
    assert status["outputs"]["script"] == origin["outputs"]["script"]
    assert status["outputs"]["audio"]["url"] != origin["outputs"]["audio"]["url"]
    assert status["params"]["voice_params"] == {"voice_name": "en+f4"}
    assert status["params"]["persona"] == "a sailor"
    assert [(h["from"], h["to"], h["trigger"]) for h in status["history"]][0] == (
        None, "synthesizing", "fork")
    assert {t["idempotency_key"] for t in status["tasks"]} == {
        f"{fork}_vfa", f"{fork}_iga", f"{fork}_asf"}


def test_fork__at_scripting_copies_harvest_and_topics_only(engine, agent, store):
    """A fork at scripting keeps the harvest and topics and writes a new script (PSWA under
    the fork's key), not the source's script or audio."""
    source = engine.start_workflow("podcast", VOICED)
    assert drive(engine, source) == "completed"
    fork = engine.fork(source, "scripting", {"persona": "a pirate"})
    first = store.get_workflow(fork)
    assert set(first.context) == {"content", "source_urls", "topics"}
    assert drive(engine, fork) == "completed"
    assert submits_of(agent, fork)["/weave_script"] == 1
    assert "/harvest" not in submits_of(agent, fork)
    [script_request] = [r for r in agent.requests_to("/weave_script")
                        if r["headers"]["x-workflow-id"] == str(fork)]
    assert script_request["body"]["persona"] == "a pirate"


def test_fork__of_a_failed_workflow_from_a_reached_state(engine, agent, store):
    """A workflow that failed in synthesizing can be forked from synthesizing."""
    agent.script("POST", "/forge_voice", Reply(400, {"error": "bad voice"}))
    source = engine.start_workflow("podcast", VOICED)
    assert drive(engine, source) == "failed"
    fork = engine.fork(source, "synthesizing", {"voice_params": {"voice_name": "en+m3"}})
    assert drive(engine, fork) == "completed"


def test_fork__from_an_unreached_state_is_refused(engine, agent, store):
    """A workflow that failed in analyzing never reached synthesizing: refused naming
    from_state, and nothing is created."""
    agent.script("POST", "/discover_topics", Reply(400, {"error": "no"}))
    source = engine.start_workflow("podcast", VOICED)
    assert drive(engine, source) == "failed"
    before = len(store.list_workflows())
    with pytest.raises(errors.InvalidInput) as info:
        engine.fork(source, "synthesizing")
    assert info.value.field == "from_state"
    assert "never reached synthesizing" in str(info.value)
    assert len(store.list_workflows()) == before


@pytest.mark.parametrize(("from_state", "params", "field"), [
    ("awaiting_review", None, "from_state"),
    ("completed", None, "from_state"),
    ("nowhere", None, "from_state"),
    ("synthesizing", {"voice_params": {"pitch": "high"}}, "voice_params.pitch"),
    ("synthesizing", {"colour": "red"}, "colour"),
    ("synthesizing", ["not", "an", "object"], "params"),
])
def test_fork__bad_request_refused_naming_the_field(engine, store, from_state, params, field):
    """A state that is not a step, or a bad parameter, is refused naming the field."""
    source = engine.start_workflow("podcast", VOICED)
    assert drive(engine, source) == "completed"
    with pytest.raises(errors.InvalidInput) as info:
        engine.fork(source, from_state, params)
    assert info.value.field == field


def test_fork__of_a_working_workflow_is_refused(engine, store):
    """Only a completed, failed or cancelled workflow can be forked."""
    source = engine.start_workflow("podcast", VOICED)
    with pytest.raises(errors.InvalidTransition):
        engine.fork(source, "fetching")
    with pytest.raises(errors.UnknownWorkflow):
        engine.fork(uuid.uuid4(), "fetching")


def test_fork__retried_with_its_idempotency_key_returns_the_same_fork(engine, agent, store):
    """A fork retried with the same key returns the first fork and creates nothing; another
    key makes another fork; the key of a fork of another workflow is refused naming it."""
    source = engine.start_workflow("podcast", VOICED)
    other = engine.start_workflow("podcast", VOICED)
    for workflow_id in (source, other):
        assert drive(engine, workflow_id) == "completed"
    first = engine.fork(source, "synthesizing", idempotency_key="revoice-1")
    count = len(store.list_workflows())
    assert engine.fork(source, "synthesizing", idempotency_key="revoice-1") == first
    assert len(store.list_workflows()) == count
    assert store.get_workflow(first).idempotency_key == "revoice-1"
    assert engine.fork(source, "synthesizing", idempotency_key="revoice-2") != first
    with pytest.raises(errors.InvalidInput) as info:
        engine.fork(other, "synthesizing", idempotency_key="revoice-1")
    assert info.value.field == "idempotency_key"
    start = engine.start_workflow("podcast", VOICED, idempotency_key="revoice-3")
    assert engine.fork(source, "synthesizing", idempotency_key="revoice-3") != start


def test_fork__waits_for_a_change_to_its_source_in_flight(engine, agent, store, dsn):
    """The fork reads its source and history under a share lock: while another transaction
    holds the source's row lock (a retry moving it back to work), the fork waits, then sees
    the source working and is refused instead of copying a state that no longer holds."""
    agent.script("POST", "/forge_voice", Reply(400, {"error": "bad voice"}))
    source = engine.start_workflow("podcast", VOICED)
    assert drive(engine, source) == "failed"
    outcome: list = []
    with psycopg.connect(dsn) as other:
        other.execute("SELECT 1 FROM workflow_instances WHERE workflow_id = %s FOR UPDATE",
                      (source,))
        thread = threading.Thread(target=lambda: outcome.append(
            _attempt(lambda: engine.fork(source, "synthesizing"))))
        thread.start()
        wait_until(lambda: other.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()").fetchone()[0] == 1, timeout=10)
        other.execute("UPDATE workflow_instances SET state = 'synthesizing', "
                      "failed_from_state = NULL, error_message = NULL WHERE workflow_id = %s",
                      (source,))
        other.commit()
        thread.join(10)
    assert isinstance(outcome[0], errors.InvalidTransition), outcome


def _attempt(call):
    try:
        return call()
    except errors.CPOAError as exc:
        return exc
