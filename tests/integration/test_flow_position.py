"""`flow_position` against the real fair share: the waiters it says go first are those that
cpoa_release_slots_v1 serves first, tenant by tenant, priority and wait included."""

from __future__ import annotations

import uuid

import psycopg

from cpoa.store import PostgresStore
from cpoa.testing.agent import ScriptedAgent
from tests.fix_agents import engine_for, wait_until

QUEUE = [("A", 0), ("A", 5), ("A", 0), ("B", 0), ("B", 0), ("C", 0)]
"""The waiters of VFA as they join its queue: (tenant, priority)."""


def _holder(db: psycopg.Connection) -> uuid.UUID:
    [row] = db.execute("SELECT workflow_id FROM agent_slots WHERE agent = 'VFA'").fetchall()
    return row["workflow_id"]


def test_flow_position__ahead_is_the_order_the_release_serves(store: PostgresStore,
                                                              agent: ScriptedAgent, db):
    """VFA capped at 1, held by tenant A; A queues three (one of priority 5), then B two and
    C one. `ahead` of each waiter is its place in the order that releasing the slot, one at a
    time, then hands it on (A's priority one, B, C, A, B, A): not arrival order, which would
    put B and C behind all of A's."""
    capped = engine_for(store, agent, CPOA_VFA_MAX_IN_FLIGHT="1")
    holder = capped.start_workflow("podcast", {"topic": "holder"}, user_id="A")
    waiters = [capped.start_workflow("podcast", {"topic": f"{tenant}{n}"}, user_id=tenant,
                                     priority=priority)
               for n, (tenant, priority) in enumerate(QUEUE)]
    for workflow_id in [holder, *waiters]:
        wait_until(lambda: capped.advance(workflow_id) == "synthesizing", interval=0.01)
        assert capped.advance(workflow_id) == "synthesizing"  # takes the slot, or queues
    positions = {w: store.flow_position(w) for w in waiters}
    assert {p.waiting_agent for p in positions.values()} == {"VFA"}
    predicted = sorted(waiters, key=lambda w: positions[w].ahead)
    assert sorted(p.ahead for p in positions.values()) == list(range(len(waiters)))
    served = []
    current = holder
    for _ in waiters:
        db.execute("SELECT cpoa_release_slots_v1(%s, NULL)", (current,))
        current = _holder(db)
        served.append(current)
    assert [waiters.index(w) for w in predicted] == [waiters.index(w) for w in served]
    assert [waiters.index(w) for w in served] == [1, 3, 5, 0, 4, 2]
    assert store.flow_position(holder) == store.flow_position(uuid.uuid4())  # waits for none


def test_claim_due__a_waiter_handed_a_slot_is_claimed_holding_it(store: PostgresStore,
                                                                  agent: ScriptedAgent, db):
    """VFA capped at 1: the waiter the freed slot goes to is claimed with that slot in its
    lease (so its submit needs no slot statement), and due just before the workflow that
    freed it (so a worker's next claim takes the waiter first); the holder had none."""
    capped = engine_for(store, agent, CPOA_VFA_MAX_IN_FLIGHT="1")
    holder, waiter = (capped.start_workflow("podcast", {"topic": t}) for t in ("h", "w"))
    for workflow_id in (holder, waiter):
        wait_until(lambda: capped.advance(workflow_id) == "synthesizing", interval=0.01)
        assert capped.advance(workflow_id) == "synthesizing"  # takes the slot, or queues
    assert _holder(db) == holder
    with db.transaction():  # as the holder's step write does: due now, its slot freed
        db.execute("UPDATE workflow_instances SET next_run_at = now() WHERE workflow_id = %s",
                   (holder,))
        db.execute("SELECT cpoa_release_slots_v1(%s, NULL)", (holder,))
    leases = [*store.claim_due("w1", 60.0, limit=1), *store.claim_due("w1", 60.0, limit=1)]
    assert [lease.workflow.workflow_id for lease in leases] == [waiter, holder]
    assert [lease.slots for lease in leases] == [frozenset({("VFA", "")}), frozenset()]
