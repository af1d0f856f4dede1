"""What agent results mean for a workflow (contract §1, §3), cancel and retry, on real HTTP.

Each test makes one agent misbehave and checks what the workflow made of it: its final state,
its reason or warnings, and the task rows of the step concerned. The transport side of the
protocol (status codes, retries, timeouts, headers) is in test_agent_protocol.py.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable
from typing import Any

import pytest

from cpoa import errors
from cpoa.engine import Engine
from cpoa.testing.agent import ASF_NOTIFY, Reply, ScriptedAgent
from tests.fix_agents import (drive, engine_for, failed_with, leave, sent, step_task,
                               wait_until)

IGA_REJECTED = 'IGA rejected the request with HTTP 422: {"error": "prompt blocked"}'


def completed_with(engine: Engine, workflow_id: object) -> list[str]:
    """Drives a workflow that must complete; returns its warnings."""
    assert drive(engine, workflow_id) == "completed"
    status = engine.get_workflow(workflow_id)
    assert status["error"] is None
    return status["warnings"]


# -- results that break the contract -------------------------------------------------------------

def _result(path: str, result: Any) -> Callable[[ScriptedAgent], None]:
    return lambda agent: agent.set_result(path, result)


def _poll(*replies: Reply) -> Callable[[ScriptedAgent], None]:
    return lambda agent: agent.script("GET", "/v1/tasks", *replies)


SCRIPT = {"script_id": "s1", "title": "T", "segments": []}
TOPIC = {"topic_id": 7, "title_suggestion": "T", "summary": "", "keywords": [],
         "relevance_score": 0.5}
MALFORMED = {
    "content_missing": ("fetching", _result("/harvest", {"status": "success", "source_urls": []}),
                        "WCHA result.content must be a non-empty string (missing)"),
    "segments_empty": ("scripting", _result("/weave_script", {"script_data": SCRIPT}),
                       "PSWA result.script_data.segments must not be empty (got list)"),
    "topic_id_type": ("analyzing", _result("/discover_topics", {"discovered_topics": [TOPIC]}),
                      "TDA result.discovered_topics[0].topic_id must be a non-empty string "
                      "(got int)"),
    "duration_type": ("synthesizing", _result("/forge_voice", {
        "audio_url": "http://a/x.mp3", "audio_format": "mp3", "duration_s": "12",
        "stream_id": "s"}), "VFA result.duration_s must be a number (got str)"),
    "unknown_business_status": ("fetching", _result("/harvest", {"status": "done"}),
                                "WCHA result.status must be one of success"),
    "non_json_body": ("fetching", _poll(Reply(200, "all good")),
                      "WCHA reply: expected a JSON object, got 'all good'"),
    "json_list_body": ("fetching", _poll(Reply(200, [{"status": "SUCCESS"}])),
                       "WCHA reply: expected a JSON object"),
    # Past json.loads' own recursion limit: the same reason as for 65 levels, whatever the
    # depth of the stack that parses it.
    "json_nested_past_the_parser": ("fetching", _poll(Reply(200, b"[" * 50_000 + b"]" * 50_000)),
                                    "WCHA reply: expected a JSON object, nested deeper than 64 "
                                    "levels"),
    "result_missing": ("fetching", _poll(Reply(200, {"status": "SUCCESS"})),
                       "WCHA reply: missing field 'result'"),
    "unknown_task_status": ("fetching", _poll(Reply(200, {"status": "DONE"})),
                            "WCHA reply: field 'status' has unknown value 'DONE'"),
    "status_url_missing": ("fetching", lambda agent: agent.script(
        "POST", "/harvest", Reply(202, {"task_id": "t1"})),
        "WCHA reply: field 'status_url' must be a non-empty string (missing)"),
}


@pytest.mark.parametrize("case", MALFORMED.values(), ids=MALFORMED.keys())
def test_result__malformed_reply_fails_naming_the_field(engine, agent, store, case):
    """A reply or result that breaks the contract fails the step, naming the bad field."""
    state, arrange, expected = case
    arrange(agent)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    reason = failed_with(engine, workflow_id, state)
    assert expected in reason
    task = step_task(store, workflow_id, state)
    assert task.status == "failed" and task.retry_count == 0
    assert expected in task.error_details_json["reason"]
    assert all(t.status == "succeeded" for t in store.get_tasks(workflow_id) if t.step != state)


def test_result__oversized_body_fails_naming_the_limit(store, agent):
    """A poll reply larger than CPOA_MAX_RESPONSE_BYTES fails the step naming the limit."""
    engine = engine_for(store, agent, CPOA_MAX_RESPONSE_BYTES="2048")
    agent.set_result("/harvest", {"status": "success", "content": "x" * 5000})
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    reason = failed_with(engine, workflow_id, "fetching")
    assert "exceeds the 2048-byte limit" in reason
    task = step_task(store, workflow_id, "fetching")
    assert (task.status, task.retry_count) == ("failed", 0)
    assert task.external_task_id == agent.by_key[f"{workflow_id}_wcha"]
    assert "2048-byte limit" in task.error_details_json["reason"]


# -- podcast (§1.1) ------------------------------------------------------------------------------

IMAGING_FAILURES = {
    "rejected": (lambda agent: agent.script("POST", "/generate_image", Reply(
        422, {"error": "prompt blocked"})), IGA_REJECTED),
    "skipped": (lambda agent: agent.set_result("/generate_image", {
        "status": "skipped", "message": "image model offline"}),
        "IGA skipped the work: image model offline"),
    "invalid": (lambda agent: agent.set_result("/generate_image", {"status": "success"}),
                "IGA result.image_url must be a non-empty string (missing)"),
}


@pytest.mark.parametrize("case", IMAGING_FAILURES.values(), ids=IMAGING_FAILURES.keys())
def test_imaging__failure_completes_with_a_warning(engine, agent, store, case):
    """A cover-art failure completes the podcast without an image and with a warning."""
    arrange, reason = case
    arrange(agent)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert completed_with(engine, workflow_id) == [f"cover art skipped: {reason}"]
    outputs = engine.get_workflow(workflow_id)["outputs"]
    assert "image_url" not in outputs and outputs["asf_notified"] is True
    task = step_task(store, workflow_id, "imaging")
    assert (task.status, task.error_details_json["reason"]) == ("failed", reason)
    assert step_task(store, workflow_id, "finalizing").status == "succeeded"


def test_finalizing__asf_notify_rejected_completes_with_a_warning(engine, agent, store):
    """An ASF notification rejected with a 4xx still completes the podcast, with a warning."""
    agent.script("POST", ASF_NOTIFY, Reply(400, {"error": "unknown stream"}))
    reason = 'ASF rejected the request with HTTP 400: {"error": "unknown stream"}'
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert completed_with(engine, workflow_id) == [f"ASF notification failed: {reason}"]
    outputs = engine.get_workflow(workflow_id)["outputs"]
    assert outputs["asf_notified"] is False and outputs["image_url"]
    task = step_task(store, workflow_id, "finalizing")
    assert (task.status, task.error_details_json["reason"]) == ("failed", reason)
    assert len(sent(agent, ASF_NOTIFY)) == 1


def test_finalizing__asf_unavailable_is_retried_at_a_later_advance(engine, agent, store):
    """503 on every inline attempt is transient: the next advance notifies ASF again."""
    agent.script("POST", ASF_NOTIFY, *[Reply(503)] * 3)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert completed_with(engine, workflow_id) == []
    assert engine.get_workflow(workflow_id)["outputs"]["asf_notified"] is True
    task = step_task(store, workflow_id, "finalizing")
    assert (task.status, task.retry_count) == ("succeeded", 1)
    assert len(sent(agent, ASF_NOTIFY)) == 4


@pytest.mark.slow
def test_finalizing__asf_unavailable_past_its_timeout_completes_with_a_warning(store, agent):
    """ASF unavailable for longer than CPOA_ASF_NOTIFY_TIMEOUT_SECONDS: completed, warned."""
    engine = engine_for(store, agent, CPOA_ASF_NOTIFY_TIMEOUT_SECONDS="0.5")
    agent.script("POST", ASF_NOTIFY, *[Reply(503)] * 1000)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    [warning] = completed_with(engine, workflow_id)
    assert warning.startswith("ASF notification failed: ASF task did not finish within its "
                              "0.5 s") and "HTTP 503" in warning


def test_synthesizing__vfa_skipped_fails_with_its_message(engine, agent, store):
    """A VFA result with status ``skipped`` fails the podcast with VFA's message."""
    agent.set_result("/forge_voice", {"status": "skipped", "message": "no voice for 'xx'"})
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    reason = failed_with(engine, workflow_id, "synthesizing")
    assert reason == "synthesizing: VFA skipped the work: no voice for 'xx'"
    task = step_task(store, workflow_id, "synthesizing")
    assert task.status == "failed" and task.external_task_id
    assert "audio" not in engine.get_workflow(workflow_id)["outputs"]
    assert sent(agent, "/generate_image") == [] and sent(agent, ASF_NOTIFY) == []


@pytest.mark.parametrize("path,state,agent_name", [
    ("/harvest", "fetching", "WCHA"), ("/weave_script", "scripting", "PSWA"),
    ("/forge_voice", "synthesizing", "VFA")])
def test_result__business_error_fails_with_its_message(engine, agent, store, path, state,
                                                       agent_name):
    """A SUCCESS task whose result has status ``error`` fails with the message and code."""
    agent.set_result(path, {"status": "error", "message": "model refused", "error_code": "E_LLM"})
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    reason = failed_with(engine, workflow_id, state)
    assert reason == f"{state}: {agent_name} reported an error: model refused (E_LLM)"
    task = step_task(store, workflow_id, state)
    assert (task.status, task.retry_count) == ("failed", 0)
    assert task.error_details_json["reason"] == reason[len(state) + 2:]


# -- snippets (§1.2) -----------------------------------------------------------------------------

def test_discovering__zero_topics_fails(engine, agent, store):
    """A TDA result with no topics fails the snippets workflow before any SCA call."""
    agent.set_result("/discover_topics", {"status": "success", "discovered_topics": []})
    workflow_id = engine.start_workflow("snippets", {"query": "ocean", "limit": 3})
    assert failed_with(engine, workflow_id, "discovering") == \
        "discovering: TDA discovered no topics"
    assert step_task(store, workflow_id, "discovering").status == "succeeded"
    assert sent(agent, "/craft_snippet") == []


def test_discovering__repeated_topic_id_fails_naming_it(engine, agent, store):
    """Two topics with one topic_id fail the workflow, since both would share one SCA key."""
    topic = {"topic_id": "a", "title_suggestion": "T", "summary": "s", "keywords": [],
             "relevance_score": 1.0}
    agent.set_result("/discover_topics", {"discovered_topics": [
        topic, {**topic, "topic_id": "b"}, {**topic, "title_suggestion": "U"}]})
    workflow_id = engine.start_workflow("snippets", {"query": "ocean", "limit": 3})
    assert failed_with(engine, workflow_id, "discovering") == (
        "discovering: TDA result.discovered_topics[2].topic_id 'a' repeats topic 0")
    assert sent(agent, "/craft_snippet") == []


def test_crafting__some_items_failing_complete_with_warnings(engine, agent, store):
    """One rejected SCA item out of two completes with a warning and one snippet."""
    agent.script("POST", "/craft_snippet", Reply(422, {"error": "topic too vague"}))
    workflow_id = engine.start_workflow("snippets", {"query": "ocean", "limit": 2})
    assert completed_with(engine, workflow_id) == [
        'snippet for topic t0 failed: SCA rejected the request with HTTP 422: '
        '{"error": "topic too vague"}']
    snippets = engine.get_workflow(workflow_id)["outputs"]["snippets"]
    assert [(s["snippet_id"], s["image_url"]) for s in snippets] == [
        ("sn-t1", "http://127.0.0.1/cover.png")]
    crafting = {t.item_key: t for t in store.get_tasks(workflow_id) if t.step == "crafting"}
    assert (crafting["t0"].status, crafting["t0"].error_details_json["status_code"]) == (
        "failed", 422)
    assert crafting["t1"].status == "succeeded" and crafting["t1"].external_task_id
    assert [t.item_key for t in store.get_tasks(workflow_id) if t.step == "imaging"] == ["sn-t1"]


def test_crafting__every_item_failing_fails(engine, agent, store):
    """When every SCA item reports an error the workflow fails listing each one."""
    agent.set_result("/craft_snippet", {"status": "error", "message": "model offline"})
    workflow_id = engine.start_workflow("snippets", {"query": "ocean", "limit": 2})
    reason = failed_with(engine, workflow_id, "crafting")
    assert reason == ("crafting: every snippet failed: "
                      "snippet for topic t0 failed: SCA reported an error: model offline; "
                      "snippet for topic t1 failed: SCA reported an error: model offline")
    crafting = [t for t in store.get_tasks(workflow_id) if t.step == "crafting"]
    assert sorted((t.item_key, t.status) for t in crafting) == [("t0", "failed"),
                                                                 ("t1", "failed")]
    assert sent(agent, "/generate_image") == []


def test_crafting__lost_task_is_resubmitted_with_the_same_key(engine, agent, store):
    """A poll answered 404 (the agent lost the task) resubmits that item with the same key."""
    workflow_id = engine.start_workflow("snippets", {"query": "ocean", "limit": 2})
    assert leave(engine, workflow_id, "discovering") == "crafting"
    agent.script("GET", "/v1/tasks", Reply(404, {"error": "unknown task"}))
    wait_until(lambda: engine.advance(workflow_id) and len(sent(agent, "/v1/tasks")) == 2)
    [lost] = [t for t in store.get_tasks(workflow_id) if t.status == "pending"]
    assert (lost.step, lost.external_task_id, lost.status_url) == ("crafting", None, None)
    assert lost.error_details_json is None and lost.retry_count == 0
    assert completed_with(engine, workflow_id) == []
    keys = collections.Counter(r["headers"]["x-idempotency-key"]
                               for r in sent(agent, "/craft_snippet"))
    assert keys == {lost.idempotency_key: 2, f"{workflow_id}_sca_t{1 - int(lost.item_key[1])}": 1}
    crafting = [t for t in store.get_tasks(workflow_id) if t.step == "crafting"]
    assert all(t.status == "succeeded" and t.external_task_id == agent.by_key[t.idempotency_key]
               for t in crafting)


def test_imaging__snippet_image_failure_completes_with_a_warning(engine, agent, store):
    """A failed snippet image leaves that snippet without an image and adds a warning."""
    agent.script("POST", "/generate_image", Reply(422, {"error": "prompt blocked"}))
    workflow_id = engine.start_workflow("snippets", {"query": "ocean", "limit": 2})
    assert completed_with(engine, workflow_id) == [f"image for snippet sn-t0 skipped: "
                                                   f"{IGA_REJECTED}"]
    snippets = engine.get_workflow(workflow_id)["outputs"]["snippets"]
    assert [(s["snippet_id"], s["image_url"]) for s in snippets] == [
        ("sn-t0", None), ("sn-t1", "http://127.0.0.1/cover.png")]


# -- cancel and retry ----------------------------------------------------------------------------

def test_cancel__working_workflow_stops_and_advance_does_nothing(engine, agent, store, db):
    """A cancelled workflow is never advanced again, even once its next poll is due."""
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert engine.advance(workflow_id) == "fetching"
    submitted = step_task(store, workflow_id, "fetching")
    assert engine.cancel(workflow_id) == "cancelled"

    def poll_was_due() -> bool:
        assert engine.advance(workflow_id) == "cancelled"
        return db.execute("SELECT clock_timestamp() > %s AS due",
                          [submitted.next_poll_at]).fetchone()["due"]
    wait_until(poll_was_due)
    assert engine.advance(workflow_id) == "cancelled"
    assert len(agent.requests) == 1 and sent(agent, "/v1/tasks") == []
    assert step_task(store, workflow_id, "fetching") == submitted
    status = engine.get_workflow(workflow_id)
    assert (status["state"], status["error"], status["next_run_at"]) == ("cancelled", None, None)
    assert status["history"][-1]["trigger"] == "cancel"


@pytest.mark.slow
def test_cancel__result_of_an_advance_in_flight_is_discarded(engine, agent, store):
    """Cancelling while an advance waits on the agent fences out that advance's result."""
    agent.script("POST", "/harvest", Reply(200, {"status": "SUCCESS", "result": {
        "content": "late", "source_urls": []}}, delay_s=0.5))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        advancing = pool.submit(engine.advance, workflow_id)
        wait_until(lambda: sent(agent, "/harvest"))
        assert engine.cancel(workflow_id) == "cancelled"
        assert advancing.result(timeout=10) == "cancelled"
    status = engine.get_workflow(workflow_id)
    assert status["state"] == "cancelled" and "content" not in status["outputs"]
    assert store.get_tasks(workflow_id) == []
    assert engine.advance(workflow_id) == "cancelled"
    assert len(agent.requests) == 1


def test_cancel__completed_workflow_is_refused(engine, agent):
    """Cancelling a completed workflow raises InvalidTransition and changes nothing."""
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    assert drive(engine, workflow_id) == "completed"
    with pytest.raises(errors.InvalidTransition):
        engine.cancel(workflow_id)
    assert engine.get_workflow(workflow_id)["state"] == "completed"


def test_retry__resumes_at_failed_from_state(engine, agent, store):
    """Retrying a workflow that failed in synthesizing redoes only synthesizing and later."""
    agent.script("POST", "/forge_voice", Reply(422, {"error": "voice unknown"}))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    failed_with(engine, workflow_id, "synthesizing")
    assert engine.retry(workflow_id) == "synthesizing"
    status = engine.get_workflow(workflow_id)
    assert (status["state"], status["error"], status["failed_from_state"]) == (
        "synthesizing", None, None)
    assert completed_with(engine, workflow_id) == []
    assert [len(sent(agent, p)) for p in ("/harvest", "/discover_topics", "/weave_script",
                                          "/forge_voice")] == [1, 1, 1, 2]
    first, second = (step_task(store, workflow_id, "synthesizing", attempt=n) for n in (0, 1))
    assert (first.status, first.error_details_json["status_code"]) == ("failed", 422)
    assert (second.status, second.error_details_json) == ("succeeded", None)
    assert [(h["from"], h["to"]) for h in engine.get_workflow(workflow_id)["history"]][-5:] == [
        ("synthesizing", "failed"), ("failed", "synthesizing"), ("synthesizing", "imaging"),
        ("imaging", "finalizing"), ("finalizing", "completed")]


def test_retry__later_keys_end_in_r1(engine, agent, store):
    """After ``retry`` the failed step and every later step send keys ending in ``_r1``."""
    agent.script("POST", "/weave_script", Reply(422, {"error": "persona unknown"}))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    failed_with(engine, workflow_id, "scripting")
    assert engine.retry(workflow_id) == "scripting"
    assert drive(engine, workflow_id) == "completed"
    base = str(workflow_id)
    keys = [r["headers"]["x-idempotency-key"] for r in agent.requests if r["method"] == "POST"]
    assert keys == [f"{base}_wcha", f"{base}_tda", f"{base}_pswa", f"{base}_pswa_r1",
                    f"{base}_vfa_r1", f"{base}_iga_r1", f"{base}_asf_r1"]
    assert step_task(store, workflow_id, "scripting", attempt=1).idempotency_key == \
        f"{base}_pswa_r1"


def test_retry__working_workflow_is_refused(engine, agent):
    """Retrying a workflow that has not failed raises InvalidTransition."""
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"})
    with pytest.raises(errors.InvalidTransition):
        engine.retry(workflow_id)
    assert engine.get_workflow(workflow_id)["state"] == "fetching"
