"""Domain objects: frozen snapshots of rows, and what one step attempt decided."""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Mapping
from typing import Any

from cpoa import machine


def _fields(cls: type, row: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in row.items() if k in names}


@dataclasses.dataclass(frozen=True)
class Workflow:
    """One row of ``workflow_instances``, with its context.

    ``context_data_json`` is the whole context: the row's column of that name holds only what
    the workflow started with, and each transition's additions are in its history row
    (schema version 14; the reads select both merged, ``AS context``).
    """

    workflow_id: uuid.UUID
    kind: str
    state: str
    trigger_event_details_json: dict[str, Any]
    context_data_json: dict[str, Any]
    warnings: list[str]
    failed_from_state: str | None = None
    error_message: str | None = None
    client_id: str | None = None
    user_id: str | None = None
    idempotency_key: str | None = None
    start_timestamp: datetime.datetime | None = None
    last_updated_timestamp: datetime.datetime | None = None
    end_timestamp: datetime.datetime | None = None
    next_run_at: datetime.datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime.datetime | None = None
    version: int = 0
    recovery_attempts: int = 0
    retry_count: int = 0
    key_base: str | None = None
    forked_from: uuid.UUID | None = None
    callback_at: datetime.datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any],
                 context: Mapping[str, Any] | None = None) -> Workflow:
        """A workflow from a row that selects its ``context``, or from a row a write returned
        and the ``context`` that write leaves (the one its writer read, and what it added)."""
        whole = row["context"] if context is None else context
        return cls(**{**_fields(cls, row), "context_data_json": dict(whole)})

    @property
    def params(self) -> dict[str, Any]:
        """The validated input the workflow was started with."""
        return self.trigger_event_details_json

    @property
    def context(self) -> dict[str, Any]:
        """What the steps so far have produced."""
        return self.context_data_json

    @property
    def is_terminal(self) -> bool:
        return self.state in machine.TERMINAL_STATES

    @property
    def wants_review(self) -> bool:
        """Started with ``review: true``: a reviewer sees the script before the voices."""
        return bool(self.params.get("review"))

    @property
    def agent_key_base(self) -> str:
        """The base of every downstream idempotency key (contract §2): the workflow id, or
        for a workflow started before schema version 5 the base it has used all along."""
        return self.key_base or str(self.workflow_id)


@dataclasses.dataclass(frozen=True)
class Task:
    """One agent task: a step attempt, or one fan-out item of it. A row of ``task_instances``,
    or, when the write that moved its workflow on began and finished it, kept in that
    transition's history row (``workflow_events.task``)."""

    task_id: uuid.UUID
    workflow_id: uuid.UUID
    agent_name: str
    step: str
    idempotency_key: str
    status: str = "pending"
    item_key: str = ""
    attempt: int = 0
    external_task_id: str | None = None
    status_url: str | None = None
    input_params_json: Any = None
    output_result_summary_json: Any = None
    error_details_json: Any = None
    retry_count: int = 0
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    first_submitted_at: datetime.datetime | None = None
    completed_at: datetime.datetime | None = None
    next_poll_at: datetime.datetime | None = None
    poll_deadline_at: datetime.datetime | None = None
    progress_json: dict[str, Any] | None = None
    """The agent's latest live progress (:mod:`cpoa.reports`); None: it reported none."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Task:
        return cls(**_fields(cls, row))

    @property
    def is_finished(self) -> bool:
        return self.status in ("succeeded", "failed")

    def evolve(self, **changes: Any) -> Task:
        """Returns a copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class AgentReport:
    """What one request told of its agent, recorded for every workflow and worker.

    Attributes:
        agent: The agent's short name.
        ok: It answered (which closes its breaker); False: it failed or asked for a pause.
        pause_s: It answered a submit 429 or 503 with this Retry-After: every new submit to
            it waits this long. None with ``ok`` False: a failure, counted by the breaker.
        reason: Why it is paused (the status code), shown by ``why`` and ``cpoa agents``.
    """

    agent: str
    ok: bool
    pause_s: float | None = None
    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class AgentQueue:
    """One agent's flow control now, as every worker shares it (a row of ``agent_queues``).

    Attributes:
        agent: The agent's short name.
        in_flight: Its slots held: tasks submitted and not finished (0 without a cap).
        max_in_flight: Its cap as the workers last set it (None: never capped).
        waiting: Workflows waiting for one of its slots.
        rate_waiting: Workflows waiting for their place in its rate.
        paused_until: Until when its new submits are paused (None: not paused now).
        pause_reason: Why: ``429`` or ``503`` (the agent's Retry-After), or ``breaker``.
        failures: Its failed requests in a row (the breaker opens at BREAKER_FAILURES).
    """

    agent: str
    in_flight: int = 0
    max_in_flight: int | None = None
    waiting: int = 0
    rate_waiting: int = 0
    paused_until: datetime.datetime | None = None
    pause_reason: str | None = None
    failures: int = 0

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AgentQueue:
        return cls(**_fields(cls, row))


@dataclasses.dataclass(frozen=True)
class FlowPosition:
    """Where one workflow stands in flow control (a row of ``flow_position``).

    Attributes:
        waiting_agent: The agent whose slot it waits for (None: it waits for none).
        ahead: The waiters the fair share serves before it (see ``flow_position``).
        rate_agent: The agent whose rate it has its next place in (None: no place to come).
        rate_place_at: When that place comes.
    """

    waiting_agent: str | None = None
    ahead: int = 0
    rate_agent: str | None = None
    rate_place_at: datetime.datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | None) -> FlowPosition:
        return cls(**_fields(cls, row)) if row else cls()


@dataclasses.dataclass(frozen=True)
class Lease:
    """A workflow this worker holds, with the step's task rows and the database's clock."""

    workflow: Workflow
    tasks: tuple[Task, ...]
    owner: str
    db_now: datetime.datetime
    agent_pauses: Mapping[str, datetime.datetime | None] = dataclasses.field(default_factory=dict)
    """Agents whose new submits are paused, and until when (a 429 or 503 with Retry-After, or
    an open breaker); and failing agents not paused (None or a past time): an answer from one
    is reported, to close its breaker."""
    slots: frozenset[tuple[str, str]] = frozenset()
    """The (agent, item key) slots it held when claimed: a waiter handed a slot has it."""
    callback_seen: datetime.datetime | None = None
    """The workflow's ``callback_at`` as of the read of ``tasks``: a callback since (a newer
    one) made a task due that ``tasks`` does not show (``record_progress``)."""

    @property
    def fence(self) -> int:
        """The version a result must still match to be applied."""
        return self.workflow.version


@dataclasses.dataclass(frozen=True)
class Schedule:
    """What a sweeper pass found and when its worker should look again.

    Attributes:
        requeued: The workflows whose dead leases were released (``workflow_id``, ``state``,
            ``recovery_attempts``).
        seconds: Until the earliest due workflow or lease expiry (0.0: something was just
            requeued); None when nothing waits.
        watch: Another live process holds a lease: its death would show only to a sweeper.
    """

    requeued: tuple[dict[str, Any], ...]
    seconds: float | None
    watch: bool


@dataclasses.dataclass(frozen=True)
class UIEvent:
    """A UI event to queue in the outbox with the transition."""

    event_name: str
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one advance decided; the store applies it in one fenced transaction.

    Attributes:
        task: The task row to write (None when no agent was called).
        trigger: ``"step_done"`` or ``"fail"`` to transition; None to stay in the state.
        dest: The state the machine chose for ``trigger``.
        failed_from_state: Set with ``trigger == "fail"``.
        context_updates: Keys to merge into the context (stored in the history row).
        warnings: Warnings to append.
        error_message: The failure reason.
        run_in_s: Seconds until the workflow is due again (a transition: 0, but for a
            waiting state, whose deadline it is).
        detail: Extra data for the history row.
        ui_event: The UI event to queue (when the workflow has a ``client_id``).
        agent_report: What the step's request told of its agent's health, for every
            workflow and worker (a pause, a failure, an answer after failures); None: nothing.
    """

    task: Task | None = None
    trigger: str | None = None
    dest: str | None = None
    failed_from_state: str | None = None
    context_updates: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    error_message: str | None = None
    run_in_s: float = 0.0
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    ui_event: UIEvent | None = None
    agent_report: AgentReport | None = None

    @classmethod
    def progress(cls, task: Task | None, run_in_s: float,
                 agent_report: AgentReport | None = None,
                 ui_event: UIEvent | None = None) -> Outcome:
        """The workflow stays in its state (``task`` updated, if a request was made) and is
        due again in ``run_in_s`` seconds; ``ui_event`` forwards the agent's live progress."""
        return cls(task=task, run_in_s=run_in_s, agent_report=agent_report, ui_event=ui_event)

    @classmethod
    def transition(cls, trigger: str, dest: str, **fields: Any) -> Outcome:
        """The workflow moves to ``dest`` by ``trigger``; ``fields`` as the attributes."""
        return cls(trigger=trigger, dest=dest, **fields)

    @property
    def is_transition(self) -> bool:
        return self.trigger is not None


@dataclasses.dataclass(frozen=True)
class OutboxEvent:
    """One queued UI event."""

    seq: int
    event_id: uuid.UUID
    workflow_id: uuid.UUID
    client_id: str
    event_name: str
    data: dict[str, Any]
    attempts: int = 0

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> OutboxEvent:
        return cls(**_fields(cls, row))
