"""Random runs of start / advance / fail / cancel / retry against the real engine and store.

A shadow ``transitions`` model of each workflow (built from the same declarative machine) says
which triggers are allowed; after every step the database must agree with it and its history
must replay to the current state.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cpoa import decide, errors, machine, models, steps
from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.testing.agent import ScriptedAgent
from tests.fix_agents import agent_env
from tests.fix_db import database

KIND = "podcast"
MAX_WORKFLOWS = 5
RUNS = settings(max_examples=25, stateful_step_count=20, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
TRIGGERS = ("step_done", "cancel", "retry")


@pytest.fixture(scope="module")
def sync_agent() -> Iterator[ScriptedAgent]:
    """One agent for every run: it answers each submit with a synchronous SUCCESS."""
    server = ScriptedAgent(sync=True)
    yield server
    server.close()


def forced_failure(workflow: models.Workflow) -> models.Outcome:
    """The Outcome of a step failure, as the engine builds it, for ``store.apply``."""
    return decide.verdict_outcome(workflow, steps.Verdict(False, reason="forced failure"))


class WorkflowRuns(RuleBasedStateMachine):
    """Drives podcast workflows on a fresh clone of the template database per example."""

    def __init__(self, server_dsn: str, template_db: str, agent_url: str) -> None:
        super().__init__()
        with contextlib.ExitStack() as stack:
            dsn = stack.enter_context(database(server_dsn, template=template_db,
                                               prefix="cpoa_p_"))
            self.store = PostgresStore(dsn, min_size=1, max_size=2)
            stack.callback(self.store.close)
            self._cleanup = stack.pop_all()  # closed by teardown: the store, then the database
        self.engine = Engine(self.store, settings_module.from_env(agent_env(agent_url)))
        self.shadows: dict[uuid.UUID, machine.WorkflowModel] = {}
        self.keys: dict[uuid.UUID, str] = {}
        self.frozen: dict[uuid.UUID, tuple] = {}
        self.steps = 0
        self._snapshot_at = -1
        self._snapshot: dict[uuid.UUID, tuple] = {}

    def teardown(self) -> None:
        self._cleanup.close()

    # -- the model -------------------------------------------------------------------------

    def may(self, trigger: str) -> list[uuid.UUID]:
        """The workflows whose shadow allows ``trigger`` now."""
        return [wid for wid, shadow in self.shadows.items()
                if getattr(shadow, f"may_{trigger}")()]

    def refusals(self) -> list[tuple[uuid.UUID, str]]:
        """(workflow, trigger) pairs the shadow refuses."""
        return [(wid, trigger) for wid, shadow in self.shadows.items() for trigger in TRIGGERS
                if not getattr(shadow, f"may_{trigger}")()]

    def pick(self, data: st.DataObject, candidates: list) -> object:
        self.steps += 1
        return data.draw(st.sampled_from(candidates))

    # -- rules: the triggers ---------------------------------------------------------------

    @precondition(lambda self: len(self.shadows) < MAX_WORKFLOWS)
    @rule(keyed=st.booleans(), client=st.booleans())
    def start(self, keyed: bool, client: bool) -> None:
        self.steps += 1
        key = f"key-{len(self.shadows)}" if keyed else None
        wid = self.engine.start_workflow(KIND, {"topic": "tides"}, idempotency_key=key,
                                         client_id="c1" if client else None)
        shadow = machine.WorkflowModel(state=machine.initial_state(KIND))
        machine.build_machine(KIND, model=shadow)
        self.shadows[wid] = shadow
        if key:
            self.keys[wid] = key

    @precondition(lambda self: self.may("step_done"))
    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        wid = self.pick(data, self.may("step_done"))
        self.shadows[wid].step_done()
        assert self.engine.advance(wid) == self.shadows[wid].state

    @precondition(lambda self: self.may("fail"))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        wid = self.pick(data, self.may("fail"))
        self.shadows[wid].fail()
        assert self.store.apply(wid, forced_failure).state == "failed"

    @precondition(lambda self: self.may("cancel"))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        wid = self.pick(data, self.may("cancel"))
        self.shadows[wid].cancel()
        assert self.engine.cancel(wid) == "cancelled"

    @precondition(lambda self: self.may("retry"))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        wid = self.pick(data, self.may("retry"))
        self.shadows[wid].retry()
        assert self.engine.retry(wid) == self.shadows[wid].state

    @precondition(lambda self: self.keys)
    @rule(data=st.data())
    def start_again(self, data: st.DataObject) -> None:
        """The same idempotency key returns the same workflow and resumes it if it failed."""
        wid = self.pick(data, list(self.keys))
        shadow = self.shadows[wid]
        if shadow.state == "failed":
            shadow.retry()
        assert self.engine.start_workflow(KIND, {"topic": "tides"},
                                          idempotency_key=self.keys[wid]) == wid

    @precondition(lambda self: self.refusals())
    @rule(data=st.data())
    def refused(self, data: st.DataObject) -> None:
        """A trigger the machine refuses changes nothing in the database."""
        wid, trigger = self.pick(data, self.refusals())
        before = self.store.get_workflow(wid)
        if trigger == "step_done":
            assert self.engine.advance(wid) == before.state
        else:
            with pytest.raises(errors.InvalidTransition):
                getattr(self.engine, trigger)(wid)
        assert self.store.get_workflow(wid) == before

    # -- invariants ------------------------------------------------------------------------

    def rows(self) -> dict[uuid.UUID, tuple]:
        """{id: (workflow row, history, ui events)}, read once per step."""
        if self._snapshot_at != self.steps:
            self._snapshot = {w.workflow_id: (w, self.store.get_history(w.workflow_id),
                                              self.store.get_ui_events(w.workflow_id))
                              for w in self.store.list_workflows(limit=1000)}
            self._snapshot_at = self.steps
        return self._snapshot

    @invariant()
    def model_state_equals_row(self) -> None:
        rows = self.rows()
        assert set(rows) == set(self.shadows)
        for wid, (workflow, _, _) in rows.items():
            shadow = self.shadows[wid]
            assert workflow.state == shadow.state, wid
            if workflow.state == "failed":
                assert workflow.failed_from_state == shadow.failed_from_state

    @invariant()
    def final_workflows_never_change(self) -> None:
        for wid, (workflow, history, _) in self.rows().items():
            if workflow.state in machine.FINAL_STATES:
                seen = (workflow, len(history))
                assert self.frozen.setdefault(wid, seen) == seen

    @invariant()
    def history_replays_to_current_state(self) -> None:
        for workflow, history, _ in self.rows().values():
            assert (history[0]["from_state"], history[0]["trigger"]) == (None, "start")
            assert history[0]["to_state"] == machine.initial_state(workflow.kind)
            for previous, event in zip(history, history[1:]):
                assert event["from_state"] == previous["to_state"]
            assert history[-1]["to_state"] == workflow.state
            retries = sum(1 for h in history if h["trigger"] == "retry")
            assert workflow.retry_count == retries

    @invariant()
    def failed_records_origin(self) -> None:
        for workflow, _, _ in self.rows().values():
            if workflow.state == "failed":
                assert workflow.failed_from_state in machine.working_states(workflow.kind)
                assert workflow.error_message

    @invariant()
    def history_uses_only_machine_edges(self) -> None:
        for workflow, history, _ in self.rows().values():
            edges = machine.edges(workflow.kind)
            for event in history[1:]:
                assert (event["from_state"], event["to_state"]) in edges

    @invariant()
    def scheduling_matches_state(self) -> None:
        for workflow, _, _ in self.rows().values():
            assert workflow.lease_owner is None  # every rule finishes what it starts
            assert (workflow.next_run_at is None) == workflow.is_terminal
            assert (workflow.end_timestamp is not None) == workflow.is_terminal

    @invariant()
    def one_ui_event_per_state_entered(self) -> None:
        for workflow, history, queued in self.rows().values():
            expected = [h["to_state"] for h in history] if workflow.client_id else []
            assert [e["data"]["state"] for e in queued] == expected
            assert [e["event_name"] == "task_error" for e in queued] == [
                state == "failed" for state in expected]


def test_workflow_machine__random_runs_keep_invariants(server_dsn, template_db, sync_agent):
    """Any run of start/advance/fail/cancel/retry keeps the database and the machine in step."""
    run_state_machine_as_test(
        lambda: WorkflowRuns(server_dsn, template_db, sync_agent.url), settings=RUNS)
