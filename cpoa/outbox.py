"""Delivery of queued UI events to ASF: after commit, in order per workflow, until delivered.

A failed delivery never touches the workflow: the event stays queued and is tried again with a
growing pause; later events of the same workflow wait behind it so the order holds.
"""

from __future__ import annotations

import logging

from cpoa import defaults, errors, logs
from cpoa.agents.client import AgentClient
from cpoa.store import PostgresStore

logger = logging.getLogger(__name__)
BATCH = 20
FIRST_RETRY_S = 0.5


def deliver_due(store: PostgresStore, client: AgentClient, url: str) -> int:
    """Delivers the next event of every workflow that has one due; returns how many went."""
    delivered = 0
    for event in store.claim_ui_events(BATCH, defaults.OUTBOX_LOCK_S):
        log = logs.for_workflow(logger, event.workflow_id)
        body = {"client_id": event.client_id, "event_name": event.event_name,
                "data": event.data, "event_id": str(event.event_id),
                "workflow_id": str(event.workflow_id)}
        try:
            client.notify("ASF", url, body, workflow_id=str(event.workflow_id),
                          idempotency_key=str(event.event_id), log=log, once=True,
                          timeout_s=defaults.UI_TIMEOUT_S)
        except errors.AgentError as exc:
            retry_in = min(defaults.OUTBOX_RETRY_MAX_S, FIRST_RETRY_S * 2 ** (event.attempts - 1))
            log.warning("ui event delivery failed; retrying in %.1f s", retry_in,
                        extra={"action": "ui_event_failed", "seq": event.seq})
            store.mark_ui_event_failed(event.seq, str(exc), retry_in)
            continue
        store.mark_ui_event_delivered(event.seq)
        delivered += 1
    return delivered
