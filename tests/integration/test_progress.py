"""Live progress (contract §2 and §4) with a real worker, real PostgreSQL and real HTTP agents: a
VFA that reports progress and partial results in its pending poll replies, and ASF receiving
the generation_progress events through the outbox."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator

import pytest

from cpoa import defaults
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.testing.agent import ASF_UI, Reply, ScriptedAgent
from cpoa.worker import Worker
from tests.fix_agents import engine_for, step_task, wait_until

TURN_URL = "http://vfa.example/turns/{}.wav"


def pending(**fields: object) -> Reply:
    """A pending poll reply with extra fields (progress, partial)."""
    return Reply(202, {"task_id": "t", "status": "PENDING", **fields})


def turns(count: int) -> list[dict]:
    return [{"turn": i, "speaker": "Host", "audio_url": TURN_URL.format(i)} for i in range(count)]


@pytest.fixture
def vfa() -> Iterator[ScriptedAgent]:
    """A second scripted agent, playing VFA only: its polls are scripted per test."""
    server = ScriptedAgent()
    yield server
    server.close()


def run(engine: Engine, store: PostgresStore, workflow_id: uuid.UUID) -> str:
    """Runs a worker until the workflow is terminal and its UI events are all delivered."""
    worker = Worker(engine, concurrency=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        return wait_until(lambda: (state := store.get_workflow(workflow_id).state)
                          in ("completed", "failed") and store.count_unfinished()[1] == 0
                          and state, timeout=30)  # type: ignore[return-value]
    finally:
        worker.stop()
        thread.join(timeout=30)


def progress_events(store: PostgresStore, workflow_id: uuid.UUID) -> list[dict]:
    return [row for row in store.get_ui_events(workflow_id)
            if row["event_name"] == "generation_progress"]


def test_progress__stored_on_the_task_and_forwarded_in_order(store, agent, vfa):
    """VFA reports 1/3, 2/3, 3/3 of its turns with their URLs, then succeeds: the task row
    keeps the last report, and ASF gets one generation_progress per report, in order, between
    the synthesizing and imaging events, and the workflow completes."""
    vfa.script("GET", "/v1/tasks", *(pending(progress=n / 3, partial=turns(n))
                                     for n in (1, 2, 3)))
    engine = engine_for(store, agent, VFA_SERVICE_URL=vfa.url,
                        CPOA_PROGRESS_EVENT_INTERVAL_SECONDS="0")
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"}, client_id="c1")
    assert run(engine, store, workflow_id) == "completed"
    kept = step_task(store, workflow_id, "synthesizing").progress_json
    assert (kept["progress"], kept["partial"]) == (1.0, turns(3))
    [shown] = [t["progress"] for t in engine.get_workflow(workflow_id)["tasks"]
               if t["agent"] == "VFA"]
    assert (shown["progress"], shown["partial"]) == (1.0, turns(3)) and shown["reported_at"]
    delivered = [e for e in agent.ui_events if e["workflow_id"] == str(workflow_id)]
    states = [(e["event_name"], e["data"]["state"]) for e in delivered]
    at = states.index(("generation_status", "synthesizing"))
    assert states[at + 1:at + 5] == [("generation_progress", "synthesizing")] * 3 + [
        ("generation_status", "imaging")]
    reported = [e["data"] for e in delivered if e["event_name"] == "generation_progress"]
    assert [d["progress"] for d in reported] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [d["partial"] for d in reported] == [turns(1), turns(2), turns(3)]
    assert all(d["agent"] == "VFA" and d["workflow_id"] == str(workflow_id) for d in reported)


def test_progress__throttled_to_one_event_per_interval_and_the_last_value_kept(
        store, agent, vfa):
    """Eight reports in quick succession (polls every 0.05 s), with the default interval
    (1 s): fewer events than reports, never two within a second, in increasing order; the
    row keeps the last report."""
    vfa.script("GET", "/v1/tasks", *(pending(progress=n / 8) for n in range(1, 9)))
    engine = engine_for(store, agent, VFA_SERVICE_URL=vfa.url)
    assert engine.settings.progress_event_interval_s == defaults.PROGRESS_EVENT_INTERVAL_S
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"}, client_id="c1")
    assert run(engine, store, workflow_id) == "completed"
    rows = progress_events(store, workflow_id)
    values = [row["data"]["progress"] for row in rows]
    assert 1 <= len(values) < 8 and values == sorted(values)
    created = [row["created_at"] for row in rows]
    assert all((b - a).total_seconds() >= 0.99 for a, b in zip(created, created[1:]))
    assert step_task(store, workflow_id, "synthesizing").progress_json["progress"] == 1.0


def test_progress__malformed_reports_are_ignored_and_the_workflow_completes(
        store, agent, vfa, caplog):
    """progress as a string, above 1, and a partial of too many items or too many bytes:
    each ignored with a warning naming the field, nothing forwarded for them, the good
    progress of the same reply kept, and the workflow completes."""
    huge_items = [0] * (defaults.PROGRESS_PARTIAL_MAX_ITEMS + 1)
    huge_bytes = ["x" * (defaults.PROGRESS_PARTIAL_MAX_CHARS + 1)]
    vfa.script("GET", "/v1/tasks", pending(progress="0.5"), pending(progress=1.5),
               pending(progress=0.5, partial=huge_items), pending(partial=huge_bytes),
               pending(partial="not a list"))
    engine = engine_for(store, agent, VFA_SERVICE_URL=vfa.url,
                        CPOA_PROGRESS_EVENT_INTERVAL_SECONDS="0")
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"}, client_id="c1")
    with caplog.at_level(logging.WARNING, logger="cpoa"):
        assert run(engine, store, workflow_id) == "completed"
    ignored = [r.problem for r in caplog.records
               if getattr(r, "action", None) == "progress_ignored"]
    assert [p.split(":")[0] for p in ignored] == ["progress", "progress", "partial", "partial",
                                                  "partial"]
    kept = step_task(store, workflow_id, "synthesizing").progress_json
    assert (kept["progress"], kept["partial"]) == (0.5, None)
    assert [row["data"]["progress"] for row in progress_events(store, workflow_id)] == [0.5]
    assert store.get_workflow(workflow_id).warnings == []


def test_progress__a_rejected_progress_event_does_not_hold_back_the_rest(store, agent, vfa):
    """An ASF that refuses generation_progress (422, an older ASF): the event is dropped
    (with its error kept) and every later event of the workflow is still delivered."""
    vfa.script("GET", "/v1/tasks", pending(progress=0.5))
    engine = engine_for(store, agent, VFA_SERVICE_URL=vfa.url)
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"}, client_id="c1")
    # Four state events come before the progress one (fetching ... synthesizing).
    agent.script("POST", ASF_UI, *([Reply(200, {"ok": True})] * 4),
                 Reply(422, {"error": "event_name: unknown"}))
    assert run(engine, store, workflow_id) == "completed"
    [dropped] = progress_events(store, workflow_id)
    assert dropped["delivered_at"] is not None and "422" in dropped["last_error"]
    delivered = [e["data"]["state"] for e in agent.ui_events
                 if e["workflow_id"] == str(workflow_id)]
    assert delivered[-1] == "completed"
