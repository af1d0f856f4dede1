"""The happy paths of both workflows, end to end on a real database and real HTTP."""

from __future__ import annotations

from tests.fix_agents import drive


def test_podcast__completes_through_every_state(engine, agent, store):
    """A podcast goes fetching → … → completed, one history row per transition."""
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"}, client_id="c1")
    assert drive(engine, workflow_id) == "completed"
    history = [(h["from_state"], h["to_state"]) for h in store.get_history(workflow_id)]
    assert history == [(None, "fetching"), ("fetching", "analyzing"), ("analyzing", "scripting"),
                       ("scripting", "synthesizing"), ("synthesizing", "imaging"),
                       ("imaging", "finalizing"), ("finalizing", "completed")]
    status = engine.get_workflow(workflow_id)
    assert status["outputs"]["audio"]["stream_id"] == "stream-1"
    assert status["outputs"]["image_url"] == "http://127.0.0.1/cover.png"
    assert status["warnings"] == []


def test_snippets__fan_out_one_task_per_topic(engine, agent, store):
    """Snippets craft one SCA task per discovered topic and illustrate each snippet."""
    workflow_id = engine.start_workflow("snippets", {"query": "ocean", "limit": 2})
    assert drive(engine, workflow_id) == "completed"
    tasks = store.get_tasks(workflow_id)
    assert sorted(t.item_key for t in tasks if t.step == "crafting") == ["t0", "t1"]
    snippets = engine.get_workflow(workflow_id)["outputs"]["snippets"]
    assert [s["image_url"] for s in snippets] == ["http://127.0.0.1/cover.png"] * 2
