"""Downstream idempotency keys are unique to their workflow (contract §2): the caller's key
dedupes the start, never the agents' work. Real agent, real database."""

from __future__ import annotations

from cpoa import prune
from cpoa.testing.agent import ASF_NOTIFY
from tests.fix_agents import drive


def submitted_keys(agent, workflow_id) -> set[str]:
    """Every key the agent received a submit with from ``workflow_id``."""
    return {r["headers"]["x-idempotency-key"] for r in agent.requests
            if r["method"] == "POST" and r["path"] != ASF_NOTIFY
            and r["headers"].get("x-workflow-id") == str(workflow_id)}


def test_keys__podcast_and_snippets_on_one_caller_key_are_disjoint(engine, agent, store):
    """One caller key starting a podcast and a snippets workflow: each gets its own agent work
    (the snippets workflow with limit 1 crafts one snippet, not the podcast's two topics)."""
    podcast = engine.start_workflow("podcast", {"topic": "tides"}, idempotency_key="shared")
    snippets = engine.start_workflow("snippets", {"query": "tides", "limit": 1},
                                     idempotency_key="shared")
    assert podcast != snippets
    assert drive(engine, podcast) == "completed"
    assert drive(engine, snippets) == "completed"
    assert submitted_keys(agent, podcast).isdisjoint(submitted_keys(agent, snippets))
    crafted = [t for t in store.get_tasks(snippets) if t.step == "crafting"]
    assert [t.item_key for t in crafted] == ["t0"]
    assert agent.duplicates() == {}


def test_keys__caller_key_reused_after_prune_gets_new_work(engine, agent, store):
    """A caller key used again after its workflow was pruned starts a new workflow whose
    agents do the work again (no replay of the old episode's results)."""
    first = engine.start_workflow("podcast", {"topic": "tides"}, idempotency_key="weekly")
    assert drive(engine, first) == "completed"
    assert prune.prune(store, 0.0).counts["workflow_instances"] == 1
    second = engine.start_workflow("podcast", {"topic": "tides"}, idempotency_key="weekly")
    assert second != first
    assert drive(engine, second) == "completed"
    assert submitted_keys(agent, first).isdisjoint(submitted_keys(agent, second))
    assert len(submitted_keys(agent, second)) == 5
    assert agent.duplicates() == {}


def test_keys__workflow_started_before_the_change_keeps_its_keys(engine, agent, store, db):
    """A workflow started on schema version 4 (keys based on the caller's key) and migrated
    in flight keeps sending the keys it sent before."""
    db.execute("ALTER TABLE workflow_instances DROP COLUMN key_base")  # the version 4 table
    old = engine.start_workflow("podcast", {"topic": "tides"}, idempotency_key="ep-7")
    fresh = engine.start_workflow("podcast", {"topic": "tides"})
    store.apply_schema()  # `cpoa db init` with the new version
    assert drive(engine, old) == "completed"
    assert drive(engine, fresh) == "completed"
    assert submitted_keys(agent, old) == {f"ep-7_{step}"
                                          for step in ("wcha", "tda", "pswa", "vfa", "iga")}
    assert submitted_keys(agent, fresh) == {f"{fresh}_{step}"
                                            for step in ("wcha", "tda", "pswa", "vfa", "iga")}
