"""Delivery of queued UI events to ASF: after commit, in order per workflow, until delivered.

A failed delivery never touches the workflow: the event stays queued and is tried again with a
growing pause; later events of the same workflow wait behind it so the order holds. Only a
live-progress event (``generation_progress``) that the receiver refuses for good (a 4xx, say
an ASF that predates it) is dropped instead: it is worth less than the events behind it.
"""

from __future__ import annotations

import logging
import uuid

from cpoa import defaults, errors, logs, models
from cpoa.agents.client import AgentClient
from cpoa.store import PostgresStore

logger = logging.getLogger(__name__)
BATCH = 20
PROGRESS_EVENT = "generation_progress"
FIRST_RETRY_S = 0.5


def deliver_due(store: PostgresStore, client: AgentClient, url: str) -> int:
    """Delivers the next event of every workflow that has one due; returns how many went."""
    return sum(_send(store, client, url, event)
               for event in store.claim_ui_events(BATCH, defaults.OUTBOX_LOCK_S))


def deliver_workflow(store: PostgresStore, client: AgentClient, url: str,
                     workflow_id: uuid.UUID) -> int:
    """Delivers the undelivered events of one workflow, in order, now; stops at the first
    that fails (it is tried again at the next call). For a process that drives a single
    workflow (`cpoa demo`): another workflow's events belong to its own UI, never to ``url``.
    The events are not locked: a worker that delivers one meanwhile only makes ASF see it
    twice, and ASF drops the second by ``event_id``.

    Returns:
        How many were delivered.
    """
    delivered = 0
    for row in store.get_ui_events(workflow_id):
        if row["delivered_at"] is None:
            if not _send(store, client, url, models.OutboxEvent.from_row(row)):
                break
            delivered += 1
    return delivered


def gives_up(event: models.OutboxEvent, exc: errors.AgentError) -> bool:
    """Whether a failed delivery drops the event: a progress event refused for good."""
    return event.event_name == PROGRESS_EVENT and isinstance(exc, errors.AgentRejected)


def _send(store: PostgresStore, client: AgentClient, url: str,
          event: models.OutboxEvent) -> bool:
    """Sends one event and records the outcome; True when it left the queue (delivered,
    or dropped by :func:`gives_up`)."""
    log = logs.for_workflow(logger, event.workflow_id)
    body = {"client_id": event.client_id, "event_name": event.event_name,
            "data": event.data, "event_id": str(event.event_id),
            "workflow_id": str(event.workflow_id)}
    try:
        client.notify("ASF", url, body, workflow_id=str(event.workflow_id),
                      idempotency_key=str(event.event_id), log=log, once=True,
                      timeout_s=defaults.UI_TIMEOUT_S)
    except errors.AgentError as exc:
        if gives_up(event, exc):
            log.warning("ui event refused; dropped", extra={
                "action": "ui_event_dropped", "seq": event.seq, "event_name": event.event_name})
            store.drop_ui_event(event.seq, str(exc))
            return True
        retry_in = min(defaults.OUTBOX_RETRY_MAX_S,
                       FIRST_RETRY_S * 2 ** max(event.attempts - 1, 0))
        log.warning("ui event delivery failed; retrying in %.1f s", retry_in,
                    extra={"action": "ui_event_failed", "seq": event.seq})
        store.mark_ui_event_failed(event.seq, str(exc), retry_in)
        return False
    store.mark_ui_event_delivered(event.seq)
    return True
