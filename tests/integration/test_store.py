"""PostgresStore on a real database: one test per public method, with its invalid cases."""

from __future__ import annotations

import dataclasses
import datetime
import threading
import uuid

import psycopg
import pytest
from psycopg import sql

from cpoa import errors, events, machine, models
from cpoa import store as store_module
from cpoa.testing.agent import Reply
from tests.fix_agents import drive, wait_until

LONG_TTL_S = 30.0
SHORT_TTL_S = 0.05


# -- helpers -----------------------------------------------------------------------------------

def create(store, *, kind="podcast", client_id=None, key=None, workflow_id=None):
    """Creates a workflow through the store as the engine does; returns its id (or None)."""
    workflow_id = workflow_id or uuid.uuid4()
    params = {"topic": "tides"} if kind == "podcast" else {"query": "tides", "limit": 2}
    first = models.Workflow(workflow_id, kind, machine.initial_state(kind), params, {}, [])
    return store.create_workflow(
        kind=kind, params=params, key=key or str(workflow_id), client_id=client_id,
        user_id="u1", priority=0, idempotency_key=key, workflow_id=workflow_id,
        ui_event=events.entered(first, first.state))


def outcome(workflow, trigger, *, task=None, error=None):
    """The Outcome the engine would build for ``trigger`` on ``workflow``."""
    decision = machine.decide(workflow.kind, workflow.state, trigger, workflow.failed_from_state)
    return models.Outcome.transition(
        trigger, decision.state, task=task,
        failed_from_state=decision.failed_from_state, error_message=error,
        ui_event=events.entered(workflow, decision.state,
                                failed_from_state=decision.failed_from_state, error=error))


def a_task(workflow, **changes):
    """A task row of the workflow's current step."""
    task = models.Task(task_id=uuid.uuid4(), workflow_id=workflow.workflow_id,
                       agent_name="WCHA", step=workflow.state,
                       idempotency_key=f"{workflow.agent_key_base}_wcha", attempt=workflow.retry_count)
    return task.evolve(**changes)


def take(store, workflow_id, owner="w1", ttl_s=LONG_TTL_S):
    """Takes the lease of a due workflow, failing the test if it is not granted."""
    _, lease = store.lease(workflow_id, owner, ttl_s)
    assert lease is not None
    return lease


def step(store, workflow_id, trigger="step_done", **kwargs):
    """Makes one transition through lease + finish; returns the updated workflow."""
    lease = take(store, workflow_id)
    return store.record(lease, outcome(lease.workflow, trigger, **kwargs))[0]


def cancel(workflow):
    """The Outcome of a cancel, for ``store.apply``."""
    return outcome(workflow, "cancel")


def count(db, table, workflow_id):
    """Rows of ``table`` that belong to the workflow."""
    query = sql.SQL("SELECT count(*) AS n FROM {} WHERE workflow_id = %s").format(
        sql.Identifier(table))
    return db.execute(query, (workflow_id,)).fetchone()["n"]


# -- create_workflow / find_key ----------------------------------------------------------------

def test_create_workflow__inserts_row_key_and_history(store):
    """A new workflow starts in its initial state, due now, with a start history row and key."""
    workflow_id = create(store, key="k1")
    workflow = store.get_workflow(workflow_id)
    assert (workflow.state, workflow.kind, workflow.version) == ("fetching", "podcast", 0)
    assert workflow.params == {"topic": "tides"}
    assert workflow.next_run_at is not None and workflow.lease_owner is None
    assert (workflow.idempotency_key, workflow.user_id) == ("k1", "u1")
    assert [(h["from_state"], h["to_state"], h["trigger"])
            for h in store.get_history(workflow_id)] == [(None, "fetching", "start")]
    key = store.find_key("k1", "podcast")
    assert (key["workflow_id"], key["status"], key["state"]) == (workflow_id, "processing",
                                                                  "fetching")


def test_create_workflow__same_key_returns_none(store, db):
    """A second workflow with an existing key is not created: None, and still one row."""
    first = create(store, key="same")
    assert create(store, key="same") is None
    assert db.execute("SELECT count(*) AS n FROM workflow_instances").fetchone()["n"] == 1
    assert store.find_key("same", "podcast")["workflow_id"] == first


def test_create_workflow__same_key_other_kind_is_another_workflow(store):
    """Keys are per task name: the same key for a snippets workflow creates a new one."""
    podcast = create(store, key="shared")
    snippets = create(store, kind="snippets", key="shared")
    assert snippets is not None and snippets != podcast
    assert store.get_workflow(snippets).state == "discovering"


def test_create_workflow__duplicate_id_raises_duplicate_workflow(store):
    """Reusing a workflow id under another key is a DuplicateWorkflow, with nothing written."""
    workflow_id = create(store)
    with pytest.raises(errors.DuplicateWorkflow):
        create(store, key="other", workflow_id=workflow_id)
    assert store.find_key("other", "podcast") is None


def test_create_workflow__queues_start_event_only_with_client_id(store, db):
    """The start event goes to the outbox with a client id, and nothing without one."""
    with_client = create(store, client_id="c1")
    without = create(store)
    queued = store.get_ui_events(with_client)
    assert [(e["event_name"], e["data"]["state"], e["client_id"]) for e in queued] == [
        ("generation_status", "fetching", "c1")]
    assert count(db, "ui_event_outbox", without) == 0


def test_find_key__unknown_key_is_none(store):
    """An unknown key (or a known key under another kind) finds nothing."""
    create(store, key="known")
    assert store.find_key("unknown", "podcast") is None
    assert store.find_key("known", "snippets") is None


def test_take_over_stale__live_lease_is_never_touched(store):
    """A repeated start never takes a lease from a worker that is alive and in its request."""
    workflow_id = create(store, key="k-live")
    lease = take(store, workflow_id, "w1")
    assert store.take_over_stale(workflow_id, "podcast", 0.0) is False
    assert store.get_workflow(workflow_id) == lease.workflow
    assert store.record(lease, outcome(lease.workflow, "step_done"))[0].state == "analyzing"


def test_take_over_stale__expired_lease_is_released_and_counted(store):
    """A workflow with no progress for the timeout whose lease expired is due now, and the
    dead lease counts as one recovery; the late holder's result is refused."""
    workflow_id = create(store, key="k-stale")
    lease = take(store, workflow_id, "w1", ttl_s=SHORT_TTL_S)
    assert store.take_over_stale(workflow_id, "podcast", 3600.0) is False
    assert wait_until(lambda: store.take_over_stale(workflow_id, "podcast", SHORT_TTL_S))
    workflow = store.get_workflow(workflow_id)
    assert (workflow.lease_owner, workflow.recovery_attempts, workflow.version) == (None, 1, 2)
    assert workflow.next_run_at is not None
    assert store.find_key("k-stale", "podcast")["status"] == "processing"
    with pytest.raises(errors.StaleState):
        store.record(lease, outcome(lease.workflow, "step_done"))[0]


def test_take_over_stale__dead_session_lease_is_released_at_once(store):
    """A lease whose holder's liveness session ended is dead long before it expires."""
    workflow_id = create(store, key="k-dead")
    holder = store.listener(liveness=True)
    holder.connect()
    _, lease = store.lease(workflow_id, "w1", LONG_TTL_S, holder.liveness_key)
    assert store.take_over_stale(workflow_id, "podcast", 0.0) is False  # alive
    holder.close()  # the process died: PostgreSQL ends its session
    assert wait_until(lambda: store.take_over_stale(workflow_id, "podcast", 0.0))
    assert store.get_workflow(workflow_id).recovery_attempts == 1
    with pytest.raises(errors.StaleState):
        store.record(lease, outcome(lease.workflow, "step_done"))[0]


def test_take_over_stale__workflow_waiting_for_its_next_poll_is_not_stale(store):
    """An unleased workflow scheduled for later is waiting, not stale, however old."""
    workflow_id = create(store, key="k-wait")
    lease = take(store, workflow_id)
    store.record(lease, models.Outcome.progress(a_task(lease.workflow, status="submitted"), 60.0))
    assert store.take_over_stale(workflow_id, "podcast", 0.0) is False


def test_take_over_stale__terminal_workflow_is_left_alone(store):
    """A cancelled workflow is never taken over, however old."""
    workflow_id = create(store)
    before = store.apply(workflow_id, cancel)
    assert store.take_over_stale(workflow_id, "podcast", 0.0) is False
    assert store.get_workflow(workflow_id) == before


# -- lease -------------------------------------------------------------------------------------

def test_lease__due_workflow_is_granted(store):
    """A due, free workflow is leased to the caller and its version is bumped as the fence."""
    workflow_id = create(store)
    workflow, lease = store.lease(workflow_id, "w1", LONG_TTL_S)
    assert lease is not None and lease.owner == "w1"
    assert workflow.lease_owner == "w1" and workflow.version == 1 and lease.fence == 1
    assert lease.workflow.recovery_attempts == 0
    stored = store.get_workflow(workflow_id)
    assert stored.lease_owner == "w1"
    assert stored.lease_expires_at > lease.db_now + datetime.timedelta(seconds=LONG_TTL_S - 5)


def test_lease__not_due_returns_none(store):
    """A workflow rescheduled for later is not leased before its time."""
    workflow_id = create(store)
    lease = take(store, workflow_id)
    store.record(lease, models.Outcome.progress(None, 60.0))[0]
    workflow, again = store.lease(workflow_id, "w2", LONG_TTL_S)
    assert again is None and workflow.lease_owner is None and workflow.version == 1


def test_lease__held_by_another_owner_returns_none(store):
    """A live lease keeps every other owner (and a second call of the same one) out."""
    workflow_id = create(store)
    take(store, workflow_id, "w1")
    workflow, lease = store.lease(workflow_id, "w2", LONG_TTL_S)
    assert lease is None and workflow.lease_owner == "w1"
    assert store.lease(workflow_id, "w1", LONG_TTL_S)[1] is None
    assert store.get_workflow(workflow_id).version == 1


def test_lease__expired_lease_is_taken_over(store):
    """An expired lease is taken over by another owner and counts one recovery attempt."""
    workflow_id = create(store)
    take(store, workflow_id, "w1", ttl_s=SHORT_TTL_S)
    lease = wait_until(lambda: store.lease(workflow_id, "w2", LONG_TTL_S)[1])
    assert lease.owner == "w2" and lease.fence == 2
    assert lease.workflow.recovery_attempts == 1
    assert store.get_workflow(workflow_id).lease_owner == "w2"


def test_lease__terminal_workflow_returns_none(store):
    """A cancelled workflow is never leased."""
    workflow_id = create(store)
    store.apply(workflow_id, cancel)
    workflow, lease = store.lease(workflow_id, "w1", LONG_TTL_S)
    assert lease is None and workflow.state == "cancelled"


def test_lease__carries_current_step_tasks(store):
    """The lease holds the task rows of the current step and attempt only."""
    workflow_id = create(store)
    lease = take(store, workflow_id)
    task = a_task(lease.workflow, status="submitted", external_task_id="ext-1")
    store.record(lease, models.Outcome.progress(task, 0.0))[0]
    again = take(store, workflow_id, "w2")
    assert [(t.task_id, t.status, t.external_task_id) for t in again.tasks] == [
        (task.task_id, "submitted", "ext-1")]
    done = store.record(again, outcome(again.workflow, "step_done",
                                       task=task.evolve(status="succeeded")))[0]
    assert done.state == "analyzing"
    assert take(store, workflow_id, "w3").tasks == ()


def test_lease__unknown_id_raises(store):
    """Leasing an id with no workflow raises UnknownWorkflow naming the id."""
    missing = uuid.uuid4()
    with pytest.raises(errors.UnknownWorkflow) as info:
        store.lease(missing, "w1", LONG_TTL_S)
    assert info.value.workflow_id == missing and info.value.field == "workflow_id"


# -- claim_due ---------------------------------------------------------------------------------

def test_claim_due__respects_limit(store):
    """Each claim takes at most ``limit`` workflows, until none is left."""
    ids = {create(store) for _ in range(5)}
    sizes, claimed = [], set()
    for _ in range(4):
        leases = store.claim_due("w1", LONG_TTL_S, limit=2)
        sizes.append(len(leases))
        claimed |= {lease.workflow.workflow_id for lease in leases}
    assert sizes == [2, 2, 1, 0]
    assert claimed == ids


def test_claim_due__skips_leased_not_due_and_terminal(store):
    """Only due, unleased, working workflows are claimed."""
    due = create(store)
    leased = create(store)
    take(store, leased)
    later = create(store)
    store.record(take(store, later), models.Outcome.progress(None, 60.0))[0]
    store.apply(create(store), cancel)
    leases = store.claim_due("w2", LONG_TTL_S, limit=10)
    assert [lease.workflow.workflow_id for lease in leases] == [due]
    assert leases[0].workflow.lease_owner == "w2" and leases[0].owner == "w2"


def test_claim_due__nothing_under_a_liveness_key_no_session_holds(store):
    """A claimer whose liveness connection was cut (its key held by no session, before its
    listener noticed) claims nothing: the lease would be dead as soon as taken, and the sweep
    would requeue it and charge a recovery, claim after claim. Under a held key it claims."""
    workflow_id = create(store)
    listener = store.listener(liveness=True)
    listener.connect()
    try:
        key = listener.liveness_key
        assert store.claim_due("w3", LONG_TTL_S, limit=10, liveness_key=key + 1) == []
        assert store.get_workflow(workflow_id).lease_owner is None
        [lease] = store.claim_due("w3", LONG_TTL_S, limit=10, liveness_key=key)
        assert lease.workflow.workflow_id == workflow_id
    finally:
        listener.close()


def test_claim_due__concurrent_claims_never_overlap(store, dsn):
    """Two workers claiming at once on two connections never get the same workflow."""
    ids = {create(store) for _ in range(30)}
    other = store_module.PostgresStore(dsn, min_size=1, max_size=1)
    barrier = threading.Barrier(2)
    claimed: dict[str, list[uuid.UUID]] = {"a": [], "b": []}

    def claim(name, claimer):
        barrier.wait()
        while leases := claimer.claim_due(name, LONG_TTL_S, limit=3):
            claimed[name] += [lease.workflow.workflow_id for lease in leases]

    try:
        threads = [threading.Thread(target=claim, args=("a", store)),
                   threading.Thread(target=claim, args=("b", other))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        other.close()
    both = claimed["a"] + claimed["b"]
    assert len(both) == len(set(both)) == len(ids)
    assert set(both) == ids
    owners = {w.workflow_id: w.lease_owner for w in store.list_workflows()}
    assert all(owners[w] == "a" for w in claimed["a"])
    assert all(owners[w] == "b" for w in claimed["b"])


# -- finish ------------------------------------------------------------------------------------

def test_record__wrong_owner_raises_stale_and_writes_nothing(store, db):
    """A lease presented by someone else is refused; no task, transition or history is written."""
    workflow_id = create(store)
    lease = take(store, workflow_id, "w1")
    forged = dataclasses.replace(lease, owner="intruder")
    with pytest.raises(errors.StaleState):
        store.record(forged, outcome(lease.workflow, "step_done", task=a_task(lease.workflow)))[0]
    workflow = store.get_workflow(workflow_id)
    assert (workflow.state, workflow.lease_owner, workflow.version) == ("fetching", "w1", 1)
    assert store.get_tasks(workflow_id) == []
    assert len(store.get_history(workflow_id)) == 1


def test_record__stale_version_raises_stale_and_writes_nothing(store):
    """A lease that expired and was taken again (new fence) can no longer finish."""
    workflow_id = create(store)
    old = take(store, workflow_id, "w1", ttl_s=SHORT_TTL_S)
    new = wait_until(lambda: store.lease(workflow_id, "w1", LONG_TTL_S)[1])
    assert new.fence == old.fence + 1
    with pytest.raises(errors.StaleState):
        store.record(old, outcome(old.workflow, "fail", error="late", task=a_task(old.workflow)))[0]
    workflow = store.get_workflow(workflow_id)
    assert (workflow.state, workflow.version) == ("fetching", new.fence)
    assert store.get_tasks(workflow_id) == []
    assert store.record(new, outcome(new.workflow, "step_done"))[0].state == "analyzing"


RACES = 25


def race(*actions):
    """Runs the actions at once (threads released together by a barrier); returns what each
    returned, or the StaleState / InvalidTransition it raised."""
    barrier = threading.Barrier(len(actions))
    results = [None] * len(actions)

    def run(index, action):
        barrier.wait()
        try:
            results[index] = action()
        except (errors.StaleState, errors.InvalidTransition) as exc:
            results[index] = exc
    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_record__races_cancel_and_sweep_one_outcome_each_time(store):
    """A step's result, a cancel and a sweep of the (dead) lease, released together, RACES
    times: the result is applied only if it came first (neither the cancel nor the sweep had
    fenced it out), a sweep never requeues a lease the result already released, and the
    history replays to the stored state every time."""
    seen = set()
    for _ in range(RACES):
        holder = store.listener(liveness=True)
        holder.connect()
        workflow_id = create(store)
        _, lease = store.lease(workflow_id, "w1", LONG_TTL_S, holder.liveness_key)
        holder.close()  # its worker died (or is partitioned) while the request was in flight
        task = a_task(lease.workflow, status="succeeded", output_result_summary_json={})
        finished, cancelled, swept = race(
            lambda: store.record(lease, outcome(lease.workflow, "step_done", task=task))[0],
            lambda: store.apply(workflow_id, cancel),
            lambda: store.requeue_dead_leases("sweeper").requeued)
        history = [(h["from_state"], h["to_state"]) for h in store.get_history(workflow_id)]
        applied = not isinstance(finished, errors.StaleState)
        assert isinstance(cancelled, models.Workflow)  # cancel is valid from either state
        assert not (applied and swept), "a sweep requeued a lease the result had released"
        if applied:
            assert history == [(None, "fetching"), ("fetching", "analyzing"),
                               ("analyzing", "cancelled")]
            assert [t.task_id for t in store.get_tasks(workflow_id)] == [task.task_id]
        else:
            assert history == [(None, "fetching"), ("fetching", "cancelled")]
            assert store.get_tasks(workflow_id) == []
        assert store.get_workflow(workflow_id).state == history[-1][1]
        seen.add("result" if applied else "sweep" if swept else "cancel")
    print(f"winners seen: {sorted(seen)}")


def test_record__reschedule_stays_and_releases_lease(store, db):
    """With no trigger the workflow stays, the task is written and it is due after run_in_s."""
    workflow_id = create(store, client_id="c1")
    lease = take(store, workflow_id)
    task = a_task(lease.workflow, status="submitted")
    store.record(lease, models.Outcome.progress(task, 60.0))[0]
    workflow = store.get_workflow(workflow_id)
    assert (workflow.state, workflow.lease_owner, workflow.lease_expires_at) == (
        "fetching", None, None)
    wait = (workflow.next_run_at - lease.db_now).total_seconds()
    assert 55.0 < wait <= 61.0
    assert [t.task_id for t in store.get_tasks(workflow_id)] == [task.task_id]
    assert len(store.get_history(workflow_id)) == 1
    assert count(db, "ui_event_outbox", workflow_id) == 1


def test_record__transition_writes_one_history_row_and_one_ui_event(store, db):
    """A transition of a workflow with a client id adds one history row and one outbox row."""
    workflow_id = create(store, client_id="c1")
    updated = step(store, workflow_id)
    assert (updated.state, updated.lease_owner, updated.version) == ("analyzing", None, 2)
    assert updated.next_run_at is not None
    history = store.get_history(workflow_id)
    assert [(h["from_state"], h["to_state"], h["trigger"]) for h in history] == [
        (None, "fetching", "start"), ("fetching", "analyzing", "step_done")]
    queued = store.get_ui_events(workflow_id)
    assert [e["data"]["state"] for e in queued] == ["fetching", "analyzing"]


def test_record__transition_without_client_id_queues_no_ui_event(store, db):
    """A transition of a workflow without a client id writes history but no UI event."""
    workflow_id = create(store)
    assert step(store, workflow_id).state == "analyzing"
    assert count(db, "workflow_events", workflow_id) == 2
    assert count(db, "ui_event_outbox", workflow_id) == 0


def test_record__fail_records_origin_reason_and_key(store):
    """A fail records failed_from_state and the reason, ends scheduling and fails the key."""
    workflow_id = create(store, key="k-fail", client_id="c1")
    step(store, workflow_id)
    failed = step(store, workflow_id, "fail", error="analyzing: TDA rejected")
    assert (failed.state, failed.failed_from_state) == ("failed", "analyzing")
    assert failed.error_message == "analyzing: TDA rejected"
    assert failed.next_run_at is None and failed.end_timestamp is not None
    assert store.get_history(workflow_id)[-1]["detail"] == {"reason": "analyzing: TDA rejected"}
    key = store.find_key("k-fail", "podcast")
    assert key["status"] == "failed" and key["error_payload"]["state"] == "failed"
    last = store.get_ui_events(workflow_id)[-1]
    assert last["event_name"] == "task_error" and last["data"]["final_status"] == "failed"


def test_record__completion_settles_key_and_merges_context(store):
    """Reaching completed ends scheduling, merges context and warnings and completes the key."""
    workflow_id = create(store, key="k-done")
    while (workflow := store.get_workflow(workflow_id)).state != "finalizing":
        step(store, workflow_id)
    lease = take(store, workflow_id)
    done = store.record(lease, dataclasses.replace(
        outcome(lease.workflow, "step_done"), context_updates={"asf_notified": True},
        warnings=("cover art skipped",)))[0]
    assert done.state == "completed" and done.next_run_at is None
    assert done.context == {"asf_notified": True} and done.warnings == ["cover art skipped"]
    key = store.find_key("k-done", "podcast")
    assert key["status"] == "completed"
    assert key["result_payload"] == {"workflow_id": str(workflow_id),
                                     "warnings": ["cover art skipped"]}
    assert workflow.state == "finalizing"


def test_record__a_transition_stores_what_it_adds_to_the_context_in_its_history_row(store, db):
    """What a transition adds to the context rides in its history row, and the workflow's row
    keeps the context it started with (schema version 14). The lease a write keeps and every
    read have the whole context, merged in order: a later transition's key replaces an
    earlier one's."""
    workflow_id = create(store)
    lease = take(store, workflow_id)
    for updates in ({"content": "first", "topics": []}, {"content": "second"}):
        _, lease = store.record(lease, dataclasses.replace(
            outcome(lease.workflow, "step_done"), context_updates=updates),
            renew_ttl_s=LONG_TTL_S)
    assert lease.workflow.context == {"content": "second", "topics": []}
    assert store.get_workflow(workflow_id).context == {"content": "second", "topics": []}
    row = db.execute("SELECT context_data_json FROM workflow_instances WHERE workflow_id = %s",
                     (workflow_id,)).fetchone()
    assert row["context_data_json"] == {}
    assert [h["context_updates"] for h in store.get_history(workflow_id)] == [
        None, {"content": "first", "topics": []}, {"content": "second"}]


# -- apply -------------------------------------------------------------------------------------

def test_apply__invalid_transition_leaves_row_unchanged(store, db):
    """An InvalidTransition raised by decide propagates and nothing is written."""
    workflow_id = create(store, client_id="c1")
    before = store.get_workflow(workflow_id)

    def retry(workflow):
        return outcome(workflow, "retry")

    with pytest.raises(errors.InvalidTransition):
        store.apply(workflow_id, retry)
    assert store.get_workflow(workflow_id) == before
    assert count(db, "workflow_events", workflow_id) == 1
    assert count(db, "ui_event_outbox", workflow_id) == 1


def test_apply__none_changes_nothing(store):
    """A decide returning None leaves the workflow exactly as it was."""
    workflow_id = create(store)
    before = store.get_workflow(workflow_id)
    assert store.apply(workflow_id, lambda workflow: None) == before
    assert store.get_workflow(workflow_id) == before


def test_apply__cancel_fences_out_the_lease_holder(store):
    """A cancel while a worker holds the lease wins; the worker's late result is refused."""
    workflow_id = create(store)
    lease = take(store, workflow_id)
    cancelled = store.apply(workflow_id, cancel)
    assert (cancelled.state, cancelled.lease_owner, cancelled.next_run_at) == (
        "cancelled", None, None)
    with pytest.raises(errors.StaleState):
        store.record(lease, outcome(lease.workflow, "step_done"))[0]
    assert store.get_workflow(workflow_id).state == "cancelled"


def test_apply__retry_resumes_at_origin(store):
    """Retry of a failed workflow goes back to failed_from_state and counts the retry."""
    workflow_id = create(store, key="k-retry")
    step(store, workflow_id)
    step(store, workflow_id, "fail", error="boom")
    retried = store.apply(workflow_id, lambda workflow: outcome(workflow, "retry"))
    assert (retried.state, retried.failed_from_state, retried.retry_count) == (
        "analyzing", None, 1)
    assert retried.error_message is None and retried.next_run_at is not None
    assert store.find_key("k-retry", "podcast")["status"] == "processing"


def test_apply__unknown_id_raises(store):
    """Applying to an id with no workflow raises UnknownWorkflow without calling decide."""
    called = []
    with pytest.raises(errors.UnknownWorkflow):
        store.apply(uuid.uuid4(), called.append)
    assert called == []


# -- requeue_dead_leases ----------------------------------------------------------------------

def liveness(store):
    """A connected liveness session: what a worker process holds while it lives."""
    holder = store.listener(liveness=True)
    holder.connect()
    return holder


def test_requeue_dead_leases__releases_expired_and_counts(store):
    """Expired leases are released, made due and counted; live leases are left alone."""
    expired = create(store)
    live = create(store)
    take(store, expired, "w1", ttl_s=SHORT_TTL_S)
    take(store, live, "w2", ttl_s=LONG_TTL_S)
    rows = wait_until(lambda: store.requeue_dead_leases("me").requeued)
    assert [(r["workflow_id"], r["state"], r["recovery_attempts"]) for r in rows] == [
        (expired, "fetching", 1)]
    workflow = store.get_workflow(expired)
    assert workflow.lease_owner is None and workflow.next_run_at is not None
    assert store.get_workflow(live).lease_owner == "w2"
    assert store.requeue_dead_leases("me").requeued == ()
    assert take(store, expired, "w3").workflow.recovery_attempts == 1


def test_requeue_dead_leases__releases_lease_of_a_dead_session_at_once(store):
    """A lease whose holder's session ended is requeued at once, long before its expiry;
    the lease of a live session is left alone and watched."""
    dead_holder, live_holder = liveness(store), liveness(store)
    dead, live = create(store), create(store)
    store.claim_due("w-dead", LONG_TTL_S, 1, dead_holder.liveness_key)
    store.claim_due("w-live", LONG_TTL_S, 1, live_holder.liveness_key)
    schedule = store.requeue_dead_leases("me")
    assert (schedule.requeued, schedule.watch) == ((), True)
    dead_holder.close()
    schedule = wait_until(lambda: store.requeue_dead_leases("me").requeued)
    assert [(r["workflow_id"], r["recovery_attempts"]) for r in schedule] == [(dead, 1)]
    assert store.get_workflow(live).lease_owner == "w-live"
    live_holder.close()


def test_requeue_dead_leases__watch_only_for_other_owners_live_sessions(store):
    """`watch` is set for another owner's session-vouched lease; not for the caller's own,
    nor for a lease only its expiry vouches for (its expiry is in `seconds`)."""
    holder = liveness(store)
    create(store), create(store)
    store.claim_due("me", LONG_TTL_S, 1, holder.liveness_key)
    store.claim_due("other", LONG_TTL_S, 1, None)
    schedule = store.requeue_dead_leases("me")
    assert schedule.watch is False and LONG_TTL_S - 5 < schedule.seconds <= LONG_TTL_S
    assert store.requeue_dead_leases("someone-else").watch is True
    holder.close()


def test_renew_leases__extends_only_the_owners_leases(store):
    """The heartbeat extends the owner's leases and leaves the version (the fence) alone."""
    mine, theirs = create(store), create(store)
    take(store, mine, "w1", ttl_s=SHORT_TTL_S)
    take(store, theirs, "w2", ttl_s=SHORT_TTL_S)
    store.renew_leases("w1", [mine, theirs], LONG_TTL_S)
    rows = wait_until(lambda: store.requeue_dead_leases("me").requeued)
    assert [r["workflow_id"] for r in rows] == [theirs]
    workflow = store.get_workflow(mine)
    assert workflow.lease_owner == "w1" and workflow.version == 1


def test_release_lease__gives_the_workflow_back_without_a_recovery(store):
    """A released lease makes the workflow due later with no recovery counted; a second
    release (the lease is no longer held) changes nothing."""
    workflow_id = create(store)
    lease = take(store, workflow_id)
    assert store.release_lease(lease, 60.0) is True
    workflow = store.get_workflow(workflow_id)
    assert (workflow.lease_owner, workflow.recovery_attempts, workflow.version) == (None, 0, 2)
    assert store.lease(workflow_id, "w2", LONG_TTL_S)[1] is None  # not due for a minute
    assert store.release_lease(lease, 0.0) is False


# -- reading -----------------------------------------------------------------------------------

def test_get_workflow__unknown_id_raises(store):
    """Reading an id with no workflow raises UnknownWorkflow."""
    with pytest.raises(errors.UnknownWorkflow):
        store.get_workflow(uuid.uuid4())


def test_get_tasks__returns_rows_of_the_workflow_oldest_first(store):
    """Task rows come back oldest first, and only those of the asked workflow."""
    workflow_id = create(store)
    create(store)
    first = a_task(store.get_workflow(workflow_id), status="succeeded")
    step(store, workflow_id, task=first)
    second = a_task(store.get_workflow(workflow_id), agent_name="TDA", status="submitted")
    store.record(take(store, workflow_id), models.Outcome.progress(second, 1.0))[0]
    tasks = store.get_tasks(workflow_id)
    assert [(t.task_id, t.step, t.status) for t in tasks] == [
        (first.task_id, "fetching", "succeeded"), (second.task_id, "analyzing", "submitted")]
    assert store.get_tasks(uuid.uuid4()) == []


def test_record__a_task_begun_and_finished_by_its_transition_is_kept_in_its_history_row(
        store, db):
    """A task that the step write moving its workflow on both begins and finishes (its agent
    answered the submit with the result) is kept in that transition's history row, not in
    task_instances (schema version 17); a task written before its transition (submitted,
    then polled) stays a task row. get_tasks returns both, oldest first, as task rows."""
    workflow_id = create(store)
    at_once = a_task(store.get_workflow(workflow_id), status="succeeded",
                     output_result_summary_json={"content": "x"})
    step(store, workflow_id, task=at_once)
    lease = take(store, workflow_id)
    polled = a_task(lease.workflow, agent_name="TDA", status="submitted")
    _, lease = store.record(lease, models.Outcome.progress(polled, 0.0), renew_ttl_s=LONG_TTL_S)
    store.record(lease, outcome(lease.workflow, "step_done", task=polled.evolve(
        status="succeeded")))
    kept = [h["task"] for h in store.get_history(workflow_id)]
    assert [k and k["task_id"] for k in kept] == [None, str(at_once.task_id), None]
    rows = db.execute("SELECT task_id FROM task_instances WHERE workflow_id = %s",
                      (workflow_id,)).fetchall()
    assert [r["task_id"] for r in rows] == [polled.task_id]
    tasks = store.get_tasks(workflow_id)
    assert [(t.task_id, t.step, t.status) for t in tasks] == [
        (at_once.task_id, "fetching", "succeeded"), (polled.task_id, "analyzing", "succeeded")]
    assert tasks[0].output_result_summary_json == {"content": "x"}
    assert tasks[0].workflow_id == workflow_id  # kept without what its history row holds
    assert tasks[0].created_at == store.get_history(workflow_id)[1]["at"]


def test_poke_task__a_callback_for_a_task_kept_in_history_finds_it_finished(store, db):
    """A callback for a task its transition kept in the history row is for a finished task:
    nothing is made due (the workflow's next step is not woken for it)."""
    workflow_id = create(store)
    done = a_task(store.get_workflow(workflow_id), status="succeeded")
    lease = take(store, workflow_id)
    store.record(lease, dataclasses.replace(outcome(lease.workflow, "step_done", task=done),
                                            run_in_s=3600.0))
    assert store.poke_task(workflow_id, done.task_id) is False
    assert not _due_now(db, workflow_id)


def test_get_history__is_ordered_and_per_workflow(store):
    """History rows come back in the order they were written, only for the asked workflow."""
    workflow_id = create(store)
    other = create(store)
    step(store, workflow_id)
    store.apply(workflow_id, cancel)
    assert [(h["from_state"], h["to_state"], h["trigger"])
            for h in store.get_history(workflow_id)] == [
        (None, "fetching", "start"), ("fetching", "analyzing", "step_done"),
        ("analyzing", "cancelled", "cancel")]
    assert len(store.get_history(other)) == 1
    assert store.get_history(uuid.uuid4()) == []


def test_list_workflows__filters_by_state_kind_and_limit(store):
    """Listing filters on state and kind, newest first, at most ``limit`` rows."""
    podcasts = [create(store) for _ in range(3)]
    snippets = create(store, kind="snippets")
    store.apply(podcasts[0], cancel)
    assert {w.workflow_id for w in store.list_workflows()} == {*podcasts, snippets}
    assert [w.workflow_id for w in store.list_workflows(state="cancelled")] == [podcasts[0]]
    assert [w.workflow_id for w in store.list_workflows(kind="snippets")] == [snippets]
    assert {w.workflow_id for w in store.list_workflows(state="fetching", kind="podcast")} == set(
        podcasts[1:])
    assert len(store.list_workflows(limit=2)) == 2
    assert store.list_workflows(state="completed") == []


def test_requeue_dead_leases__seconds_none_when_nothing_waits(store):
    """An empty database, or one with only terminal workflows, has nothing to wait for."""
    assert store.requeue_dead_leases().seconds is None
    store.apply(create(store), cancel)
    assert store.requeue_dead_leases().seconds is None


def test_requeue_dead_leases__seconds_zero_for_due_workflow(store):
    """A workflow due now means no wait."""
    create(store)
    assert store.requeue_dead_leases().seconds == 0.0


def test_requeue_dead_leases__seconds_until_reschedule_or_lease_expiry(store):
    """The wait is the earliest of the next scheduled run and the next lease expiry."""
    later = create(store)
    store.record(take(store, later), models.Outcome.progress(None, 60.0))[0]
    assert 55.0 < store.requeue_dead_leases().seconds <= 60.0
    take(store, create(store), ttl_s=LONG_TTL_S)
    assert LONG_TTL_S - 5 < store.requeue_dead_leases().seconds <= LONG_TTL_S


def test_count_unfinished__counts_working_workflows_and_due_events(store):
    """Working workflows and undelivered due events are counted; terminal and delivered not."""
    assert store.count_unfinished() == (0, 0)
    workflow_id = create(store, client_id="c1")
    create(store)
    assert store.count_unfinished() == (2, 1)
    store.apply(workflow_id, cancel)
    assert store.count_unfinished() == (1, 2)
    for event in store.claim_ui_events(10, 30.0):
        store.mark_ui_event_delivered(event.seq)
    assert store.count_unfinished() == (1, 1)


# -- UI event outbox ---------------------------------------------------------------------------

def test_claim_ui_events__head_of_line_per_workflow(store):
    """Only the oldest undelivered event of a workflow is claimable; delivery releases the next."""
    workflow_id = create(store, client_id="c1")
    step(store, workflow_id)
    first = store.claim_ui_events(10, 30.0)
    assert [(e.workflow_id, e.data["state"], e.attempts) for e in first] == [
        (workflow_id, "fetching", 1)]
    assert store.claim_ui_events(10, 30.0) == []  # the head is locked, the next waits behind it
    store.mark_ui_event_delivered(first[0].seq)
    second = store.claim_ui_events(10, 30.0)
    assert [e.data["state"] for e in second] == ["analyzing"]
    assert second[0].seq > first[0].seq
    store.mark_ui_event_delivered(second[0].seq)
    assert store.claim_ui_events(10, 30.0) == []
    assert all(e["delivered_at"] is not None for e in store.get_ui_events(workflow_id))


def test_claim_ui_events__one_head_per_workflow_up_to_limit(store):
    """Heads of different workflows are claimed together, at most ``limit`` of them."""
    ids = {create(store, client_id=f"c{i}") for i in range(3)}
    for workflow_id in ids:
        step(store, workflow_id)
    claimed = store.claim_ui_events(2, 30.0)
    assert len(claimed) == 2 and len({e.workflow_id for e in claimed}) == 2
    rest = store.claim_ui_events(10, 30.0)
    assert {e.workflow_id for e in claimed + rest} == ids
    assert all(e.data["state"] == "fetching" for e in claimed + rest)


def test_claim_ui_events__expired_claim_is_claimed_again(store):
    """An event whose delivery lock expired (a worker died) is claimed again."""
    create(store, client_id="c1")
    first = store.claim_ui_events(10, SHORT_TTL_S)
    again = wait_until(lambda: store.claim_ui_events(10, 30.0))
    assert [e.seq for e in again] == [first[0].seq]
    assert again[0].attempts == 2


def test_mark_ui_event_failed__schedules_retry_and_blocks_followers(store):
    """A failed delivery is retried after the pause, and later events wait behind it."""
    workflow_id = create(store, client_id="c1")
    step(store, workflow_id)
    head = store.claim_ui_events(10, 30.0)[0]
    store.mark_ui_event_failed(head.seq, "ASF down: " + "x" * 1000, retry_in_s=60.0)
    assert store.claim_ui_events(10, 30.0) == []
    row = store.get_ui_events(workflow_id)[0]
    assert row["delivered_at"] is None and row["locked_until"] is None
    assert row["last_error"].startswith("ASF down") and len(row["last_error"]) == 500
    assert (row["next_attempt_at"] - row["created_at"]).total_seconds() > 55.0
    store.mark_ui_event_failed(head.seq, "still down", retry_in_s=0.0)
    retried = store.claim_ui_events(10, 30.0)
    assert [(e.seq, e.attempts) for e in retried] == [(head.seq, 2)]


def test_get_ui_events__in_queue_order(store):
    """The queued events of a workflow come back in seq order, state by state."""
    workflow_id = create(store, client_id="c1")
    step(store, workflow_id)
    step(store, workflow_id, "fail", error="boom")
    queued = store.get_ui_events(workflow_id)
    assert [(e["event_name"], e["data"]["state"]) for e in queued] == [
        ("generation_status", "fetching"), ("generation_status", "analyzing"),
        ("task_error", "failed")]
    assert [e["seq"] for e in queued] == sorted(e["seq"] for e in queued)


# -- schema, wake-ups, errors ------------------------------------------------------------------

def test_schema_applied__false_on_empty_database(empty_dsn):
    """schema_applied tells an empty database from one with the schema."""
    empty = store_module.PostgresStore(empty_dsn, min_size=1, max_size=1)
    try:
        assert empty.schema_applied() is False
        empty.apply_schema()
        assert empty.schema_applied() is True
    finally:
        empty.close()


def test_listener__woken_by_new_workflow(store):
    """A listener times out when nothing happens and wakes when a workflow is created."""
    listener = store.listener()
    try:
        assert listener.wait(0.01) is False
        create(store)
        assert listener.wait(5.0) is True
    finally:
        listener.close()


def test_wrap_db_errors__hides_secrets_and_keeps_cause():
    """Driver errors become StoreError without the password, with the cause chained."""
    with pytest.raises(errors.StoreError) as info:
        with store_module.wrap_db_errors(["s3cret"]):
            raise psycopg.OperationalError("password s3cret rejected")
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


# -- idempotent start through the engine -------------------------------------------------------

def test_start_workflow__same_key_race_creates_one_workflow(engine, db):
    """Two callers starting with the same key at the same moment get one and the same workflow."""
    for round_ in range(5):
        key = f"same-{round_}"
        barrier, results, failures = threading.Barrier(2), [], []

        def start(key=key, barrier=barrier, results=results, failures=failures):
            barrier.wait()
            try:
                results.append(engine.start_workflow("podcast", {"topic": "tides"},
                                                     idempotency_key=key))
            except Exception as exc:  # reported below, in the test's thread
                failures.append(exc)

        threads = [threading.Thread(target=start) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert len(results) == 2 and results[0] == results[1]
        rows = db.execute("SELECT workflow_id FROM workflow_instances WHERE idempotency_key = %s",
                          (key,)).fetchall()
        assert [r["workflow_id"] for r in rows] == [results[0]]
        keys = db.execute("SELECT workflow_id FROM idempotency_keys WHERE idempotency_key = %s",
                          (key,)).fetchall()
        assert [r["workflow_id"] for r in keys] == [results[0]]


def test_start_workflow__same_key_resumes_failed_workflow(engine, agent, store):
    """Starting again with the key of a failed workflow resumes it where it failed."""
    agent.script("POST", "/discover_topics", Reply(422, {"error": "bad query"}))
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"}, idempotency_key="again")
    assert drive(engine, workflow_id) == "failed"
    assert store.get_workflow(workflow_id).failed_from_state == "analyzing"
    assert engine.start_workflow("podcast", {"topic": "tides"},
                                 idempotency_key="again") == workflow_id
    resumed = store.get_workflow(workflow_id)
    assert (resumed.state, resumed.retry_count, resumed.failed_from_state) == (
        "analyzing", 1, None)
    assert drive(engine, workflow_id) == "completed"
    keys = [r["headers"]["x-idempotency-key"] for r in agent.requests_to("/discover_topics")]
    assert keys[0] == f"{workflow_id}_tda" and keys[-1] == f"{workflow_id}_tda_r1"


def test_start_workflow__same_key_of_completed_workflow_changes_nothing(engine, store):
    """Starting again with the key of a completed workflow returns it untouched."""
    workflow_id = engine.start_workflow("podcast", {"topic": "tides"}, idempotency_key="done")
    assert drive(engine, workflow_id) == "completed"
    before = store.get_workflow(workflow_id)
    assert engine.start_workflow("podcast", {"topic": "tides"},
                                 idempotency_key="done") == workflow_id
    assert store.get_workflow(workflow_id) == before


def test_record__agent_text_with_lone_surrogates_is_stored_replaced(store):
    """An agent's task id or status URL with a lone surrogate (undecodable bytes) is stored
    with '?' in its place, never a driver exception that would lose the step."""
    workflow_id = create(store)
    lease = take(store, workflow_id)
    task = a_task(lease.workflow, external_task_id="ab\ud800", status_url="http://x/\udcff")
    store.record(lease, models.Outcome.progress(task, 60.0))[0]
    [stored] = store.get_tasks(workflow_id)
    assert (stored.external_task_id, stored.status_url) == ("ab?", "http://x/?")


def test_record__a_transition_keeps_the_lease_for_the_next_step(store):
    """With renew, the workflow moves on still leased by the same owner at a new fence: no
    other worker can claim it, and the old lease is fenced out."""
    workflow_id = create(store)
    lease = take(store, workflow_id)
    workflow, renewed = store.record(
        lease, outcome(lease.workflow, "step_done", task=a_task(lease.workflow)),
        renew_ttl_s=LONG_TTL_S)
    assert workflow.state == "analyzing" and renewed is not None
    assert renewed.owner == "w1" and renewed.fence == lease.fence + 1 and renewed.tasks == ()
    stored = store.get_workflow(workflow_id)
    assert stored.lease_owner == "w1" and stored.version == renewed.fence
    assert store.claim_due("w2", LONG_TTL_S, limit=10) == []
    with pytest.raises(errors.StaleState):
        store.record(lease, models.Outcome.progress(None, 0.0))[0]
    assert store.record(renewed, outcome(renewed.workflow, "step_done"))[0].state == "scripting"
    assert store.get_workflow(workflow_id).lease_owner is None


def test_record__a_dead_lease_is_applied_but_not_renewed(store, db):
    """A step whose holder's liveness session was cut while it ran is still applied (its
    fence holds), but the lease is released, not renewed: renewed, the sweep would requeue it
    and hand the next step to a second worker while this one runs it."""
    holder = store.listener(liveness=True)
    holder.connect()
    workflow_id = create(store)
    holder_key = holder.liveness_key
    _, lease = store.lease(workflow_id, "w1", LONG_TTL_S, holder_key)
    holder.close()  # the server ends the session (and drops its lock) a moment later
    wait_until(lambda: db.execute("SELECT count(*) AS n FROM pg_locks WHERE locktype = "
                                  "'advisory' AND objid = %s", (holder_key & 0xFFFFFFFF,))
               .fetchone()["n"] == 0)
    workflow, renewed = store.record(lease, outcome(lease.workflow, "step_done"),
                                     renew_ttl_s=LONG_TTL_S)
    assert (workflow.state, workflow.lease_owner, renewed) == ("analyzing", None, None)


def test_record__due_now_reschedule_returns_the_written_task(store):
    """A step left due now (more fan-out items) keeps its lease, and the renewed lease carries
    the task row just written (the statement reads the step's tasks before writing it)."""
    workflow_id = create(store)
    lease = take(store, workflow_id)
    first = a_task(lease.workflow, item_key="a", status="submitted")
    _, renewed = store.record(lease, models.Outcome.progress(first, 0.0), renew_ttl_s=LONG_TTL_S)
    assert renewed is not None and [t.item_key for t in renewed.tasks] == ["a"]
    second = first.evolve(status="succeeded")
    _, again = store.record(renewed, models.Outcome.progress(second, 0.0), renew_ttl_s=LONG_TTL_S)
    assert again is not None and [t.status for t in again.tasks] == ["succeeded"]


def test_record__later_or_terminal_releases_the_lease(store):
    """Renewal only applies to a workflow due now: a reschedule for later or a terminal
    transition releases the lease."""
    workflow_id = create(store)
    lease = take(store, workflow_id)
    _, renewed = store.record(lease, models.Outcome.progress(None, 60.0), renew_ttl_s=LONG_TTL_S)
    assert renewed is None and store.get_workflow(workflow_id).lease_owner is None
    other = create(store)
    lease = take(store, other)
    workflow, renewed = store.record(
        lease, outcome(lease.workflow, "fail", error="boom"), renew_ttl_s=LONG_TTL_S)
    assert workflow.state == "failed" and renewed is None and workflow.lease_owner is None


# -- poke_task (a callback) ---------------------------------------------------------------------

def test_poke_task__waiting_for_the_write_of_its_task_row_still_makes_that_task_due(store, db,
                                                                                   dsn):
    """A callback that comes while the step write recording its task row holds the workflow's
    row lock (the agent called back as its submit's answer was being stored) waits for that
    write, then makes the task due now: the task row is read after the lock, not as it was
    before (then the callback found no row, and the task waited for its scheduled poll)."""
    workflow_id = create(store)
    lease = take(store, workflow_id)
    far = lease.db_now + datetime.timedelta(hours=1)
    task = a_task(lease.workflow, status="submitted", next_poll_at=far)
    poked: list[bool] = []
    with psycopg.connect(dsn) as writer:  # the step's write, by hand: locked, then the row
        writer.execute("SELECT 1 FROM workflow_instances WHERE workflow_id = %s FOR UPDATE",
                       (workflow_id,))
        writer.execute("SELECT cpoa_save_task_v1(%s)", (store_module.rows.task_document(task),))
        callback = threading.Thread(
            target=lambda: poked.append(store.poke_task(workflow_id, task.task_id)))
        callback.start()
        wait_until(lambda: db.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'").fetchone()["n"] == 1)
    callback.join(timeout=10)  # the writer committed when its block ended
    assert poked == [True]
    due = db.execute("SELECT next_poll_at <= now() AS due FROM task_instances "
                     "WHERE task_id = %s", (task.task_id,)).fetchone()["due"]
    assert due


def _first_item_submitted(store):
    """A workflow whose step submitted its first fan-out item (task row "t0", polled in an
    hour) and kept the lease for the next item: (its id, that lease, the task)."""
    workflow_id = create(store)
    lease = take(store, workflow_id)
    far = lease.db_now + datetime.timedelta(hours=1)
    first = a_task(lease.workflow, status="submitted", next_poll_at=far, item_key="t0")
    _, lease = store.record(lease, models.Outcome.progress(first, 0.0), renew_ttl_s=LONG_TTL_S)
    return workflow_id, lease, first


def _due_now(db, workflow_id):
    return db.execute("SELECT next_run_at <= now() AS due FROM workflow_instances "
                      "WHERE workflow_id = %s", (workflow_id,)).fetchone()["due"]


def test_poke_task__the_step_after_a_callback_it_waited_for_still_polls_its_task(store, db, dsn):
    """A step's write that waited for a callback's row lock locks the row as the callback
    left it, yet reads the step's task rows as they were when the statement began: the lease it
    keeps for the next step holds the called-back task as not yet due. That next step must
    still leave the workflow due when the callback asked (the task's poll was lost, and the
    workflow waited for its scheduled one: a fan-out that kept its lease across items, seen once
    in CI as a snippet stuck 12 s at its first poll)."""
    workflow_id, lease, called_back = _first_item_submitted(store)
    far = called_back.next_poll_at
    renewed: list[models.Lease | None] = []
    with psycopg.connect(dsn) as callback:  # the callback, by hand, holding its row lock
        callback.execute("SELECT * FROM cpoa_poke_task_v1(%s, %s, 0)",
                         (workflow_id, called_back.task_id))
        next_item = a_task(lease.workflow, status="submitted", next_poll_at=far, item_key="t1")
        step = threading.Thread(target=lambda: renewed.append(store.record(
            lease, models.Outcome.progress(next_item, 0.0), renew_ttl_s=LONG_TTL_S)[1]))
        step.start()
        wait_until(lambda: db.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'").fetchone()["n"] == 1)
    step.join(timeout=10)
    [lease] = renewed
    assert lease is not None
    store.record(lease, models.Outcome.progress(None, 3600.0))  # nothing seen due
    assert _due_now(db, workflow_id)


def test_poke_task__a_callback_for_another_item_leaves_the_step_s_own_task_to_its_schedule(
        store, db):
    """A fan-out keeps its lease across items: a callback for the first item while the step
    submitting the second one runs makes the workflow and the first item due, but not the
    second item (its agent has not said it finished: polling it now is a wasted request). Only
    a callback that came before its own task had a row makes that task due when written."""
    workflow_id, lease, called_back = _first_item_submitted(store)
    far = called_back.next_poll_at
    assert store.poke_task(workflow_id, called_back.task_id)
    next_item = a_task(lease.workflow, status="submitted", next_poll_at=far, item_key="t1")
    _, lease = store.record(lease, models.Outcome.progress(next_item, 0.0),
                            renew_ttl_s=LONG_TTL_S)
    early = a_task(lease.workflow, status="submitted", next_poll_at=far, item_key="t2")
    assert store.poke_task(workflow_id, early.task_id)  # before its row: its submit in flight
    store.record(lease, models.Outcome.progress(early, 0.0))
    due = {row["item_key"]: row["due"] for row in db.execute(
        "SELECT item_key, next_poll_at <= now() AS due FROM task_instances "
        "WHERE workflow_id = %s", (workflow_id,))}
    assert due == {"t0": True, "t1": False, "t2": True}
    assert _due_now(db, workflow_id)


def _poll_times(db, workflow_id):
    """The task's next poll and the workflow's next run, and the callback time."""
    row = db.execute(
        "SELECT t.next_poll_at, w.next_run_at, w.callback_at FROM task_instances t "
        "JOIN workflow_instances w USING (workflow_id) WHERE workflow_id = %s",
        (workflow_id,)).fetchone()
    return row["next_poll_at"], row["next_run_at"], row["callback_at"]


def test_poke_task__a_deferred_callback_is_answered_by_a_poll_at_its_time(store, db):
    """A callback over its task's rate asks for a poll a moment later (the honest "finished"
    one behind it is refused meanwhile). A step that polls the task before that time (it was
    due anyway) and is told PENDING must leave the task, and the workflow, due at the time the
    callback asked for, not at the task's next scheduled poll."""
    workflow_id = create(store)
    lease = take(store, workflow_id)
    task = a_task(lease.workflow, status="submitted", next_poll_at=lease.db_now)
    store.record(lease, models.Outcome.progress(task, 0.0))  # due now, released
    assert store.poke_task(workflow_id, task.task_id, 5.0)
    lease = take(store, workflow_id)
    assert lease.tasks[0].next_poll_at <= lease.db_now  # the step polls it now: PENDING
    far = lease.db_now + datetime.timedelta(hours=1)
    store.record(lease, models.Outcome.progress(task.evolve(next_poll_at=far), 3600.0))
    next_poll_at, next_run_at, asked = _poll_times(db, workflow_id)
    assert next_poll_at == asked and next_run_at == asked


def test_poke_task__a_callback_before_the_step_is_answered_by_its_poll(store, db):
    """A callback while nobody holds the workflow makes it due; the step that then polls the
    task has answered it: told PENDING, it leaves the task to its schedule (no second poll at
    once)."""
    workflow_id = create(store)
    lease = take(store, workflow_id)
    far = lease.db_now + datetime.timedelta(hours=1)
    task = a_task(lease.workflow, status="submitted", next_poll_at=far)
    store.record(lease, models.Outcome.progress(task, 3600.0))
    assert store.poke_task(workflow_id, task.task_id)
    lease = take(store, workflow_id)
    store.record(lease, models.Outcome.progress(task, 3600.0))  # polled: PENDING
    next_poll_at, next_run_at, _ = _poll_times(db, workflow_id)
    assert next_poll_at == far and next_run_at > lease.db_now + datetime.timedelta(minutes=59)
