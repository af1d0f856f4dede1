"""The JSON shapes of the gateway API (pydantic models): requests, answers, problems.

Request models mirror what :mod:`cpoa.inputs` accepts, so that the OpenAPI document says it and
a bad field is refused before the engine is called; the engine validates again all the same.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cpoa import defaults, inputs, machine

STATES = tuple(sorted({state for kind in machine.KINDS for state in machine.states(kind)}))
StateName = Literal[STATES]  # type: ignore[valid-type]
KindName = Literal[tuple(sorted(machine.KINDS))]  # type: ignore[valid-type]

Text = Annotated[str, Field(min_length=1, max_length=defaults.TOPIC_MAX_CHARS)]
Identifier = Annotated[str, Field(min_length=1, max_length=inputs.TEXT_ID_MAX_CHARS)]
Url = Annotated[str, Field(min_length=1, max_length=inputs.URL_MAX_CHARS,
                           examples=["https://example.org/tides"])]
Number = Annotated[float, Field(allow_inf_nan=False)]
Notes = Annotated[str, Field(min_length=1, max_length=defaults.REVIEW_NOTES_MAX_CHARS)]


class _Request(BaseModel):
    """A request body: exact JSON types, unknown fields refused (naming them)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class VoiceParams(_Request):
    """How VFA should speak; every field optional."""

    voice_name: Identifier | None = None
    speaking_rate: Number | None = None
    pitch: Number | None = None
    language_code: Identifier | None = None


class _Caller(_Request):
    client_id: Identifier | None = Field(
        None, description="the UI client that receives progress events (through ASF)")
    user_id: Identifier | None = None
    priority: int = Field(0, ge=defaults.PRIORITY_MIN, le=defaults.PRIORITY_MAX, description=(
        "higher first among this user's workflows waiting for a capped agent"))


class PodcastRequest(_Caller):
    """`POST /v1/podcasts`: make an episode about a topic."""

    topic: Text = Field(examples=["tidal power"])
    urls: list[Url] = Field(default_factory=list, max_length=defaults.URLS_MAX,
                            description="web pages to harvest; none: WCHA searches")
    voice_params: VoiceParams | None = None
    persona: Text | None = None
    max_results: int | None = Field(None, ge=inputs.MAX_RESULTS_MIN, le=inputs.MAX_RESULTS_MAX)
    files: list[Url] | None = Field(None, max_length=defaults.URLS_MAX, description=(
        "your own documents (Markdown, text, HTML, PDF) as URLs WCHA can fetch"))
    format: Literal["conversation", "bulletin", "panel"] | None = None
    target_minutes: int | None = Field(None, ge=inputs.TARGET_MINUTES_MIN,
                                       le=inputs.TARGET_MINUTES_MAX)
    review: bool | None = Field(None, description=(
        "wait for a reviewer after the script (default: CPOA_REVIEW_SCRIPTS)"))
    cover_prompt: Text | None = Field(None, description="IGA's prompt (default: from the title)")

    def params(self) -> dict[str, Any]:
        """The workflow parameters (``inputs.workflow_params`` of kind ``podcast``)."""
        return self.model_dump(exclude_none=True, exclude={"client_id", "user_id", "priority"})


class SnippetsRequest(_Caller):
    """`POST /v1/snippets`: short snippets about the topics found for a query."""

    query: Text = Field(examples=["ocean energy"])
    limit: int = Field(inputs.SNIPPETS_LIMIT_DEFAULT, ge=inputs.SNIPPETS_LIMIT_MIN,
                       le=inputs.SNIPPETS_LIMIT_MAX, description="topics to discover")

    def params(self) -> dict[str, Any]:
        """The workflow parameters (``inputs.workflow_params`` of kind ``snippets``)."""
        return self.model_dump(exclude={"client_id", "user_id", "priority"})


class ReviewRequest(_Request):
    """`POST /v1/workflows/{id}/review`: approve (optionally with an edited script) or reject
    (with notes for PSWA) the script of a workflow awaiting review."""

    decision: Literal["approve", "reject"]
    script: dict[str, Any] | None = Field(None, description=(
        "approve only: the edited script ({script_id, title, segments}), checked like a PSWA "
        "result; the original is kept in outputs.script_history"))
    notes: Notes | None = Field(None, description="required to reject: what PSWA should change")
    expected_revision: int | None = Field(None, ge=1, le=defaults.REVIEW_MAX_REVISIONS,
                                          description=(
        "the script revision the reviewer saw (outputs.script_revision, 1 when absent); "
        "409 naming the current revision when the script has changed since"))


class ForkRequest(_Request):
    """`POST /v1/workflows/{id}/fork`: a new workflow from a finished one, starting at
    `from_state` with the context before it copied and `params` changed."""

    from_state: Identifier = Field(examples=["synthesizing"])
    params: dict[str, Any] = Field(default_factory=dict, description=(
        "parameters to change (voice_params, persona, cover_prompt…), checked like a start"))
    client_id: Identifier | None = Field(None, description="default: the source's client")


class BulkRequest(_Request):
    """`POST /v1/bulk/{action}`: retry, cancel or fork every workflow matching the filter."""

    state: StateName | None = None
    kind: KindName | None = None
    failed_step: StateName | None = Field(None, description="the state they failed in")
    started_after: Identifier | None = Field(None, examples=["2026-12-01T00:00:00+00:00"],
                                             description="ISO 8601 with its UTC offset")
    started_before: Identifier | None = Field(None, description="ISO 8601 with its UTC offset")
    all: bool = Field(False, description=(
        "every workflow is meant: required when no other filter field is given (422 otherwise)"))
    include_forks: bool = Field(False, description="fork only: fork forks too (skipped by "
                                                   "default)")
    dry_run: bool = Field(False, description="list what would change; change nothing")
    batch_size: int = Field(defaults.BULK_BATCH_SIZE, ge=1, le=defaults.BULK_BATCH_MAX)
    from_state: StateName | None = Field(None, description="fork only: where the forks start")
    params: dict[str, Any] | None = Field(None, description="fork only: parameters to change")


class BulkReport(BaseModel):
    """What a bulk action changed (or would change, in a dry run) and what it refused."""

    action: Literal["retry", "cancel", "fork"]
    dry_run: bool
    matched: int
    changed: list[dict[str, Any]]
    refused: list[dict[str, Any]]


class Started(BaseModel):
    """A workflow was started, or found by its idempotency key."""

    workflow_id: uuid.UUID
    status_url: str = Field(description="its status, relative to this server")


class WorkflowState(BaseModel):
    """The state a workflow is in after an action."""

    workflow_id: uuid.UUID
    state: StateName


class TaskView(BaseModel):
    """One agent task attempt (a row of ``task_instances``, or one kept in the history row of
    the transition that began and finished it)."""

    task_id: uuid.UUID
    step: str
    agent: str
    item_key: str
    attempt: int
    status: str
    idempotency_key: str
    external_task_id: str | None = None
    retry_count: int
    error: Any = None
    next_poll_at: datetime.datetime | None = None
    progress: dict[str, Any] | None = Field(
        None, description="the agent's latest live progress (contract §2): progress (0-1 or "
                          "null), partial (list or null), reported_at")


class HistoryEntry(BaseModel):
    """One transition of the append-only history."""

    model_config = ConfigDict(populate_by_name=True)

    from_: str | None = Field(None, alias="from")
    to: str
    trigger: str
    at: datetime.datetime
    detail: Any = None


class _Summary(BaseModel):
    workflow_id: uuid.UUID
    kind: KindName
    state: StateName
    progress: float = Field(ge=0, le=1)
    warnings: list[str]
    error: str | None = None
    failed_from_state: str | None = None
    client_id: str | None = None
    idempotency_key: str | None = None
    retry_count: int = Field(description="manual retries so far")
    started_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    ended_at: datetime.datetime | None = None
    next_run_at: datetime.datetime | None = None
    lease_owner: str | None = None
    forked_from: uuid.UUID | None = Field(None, description="the workflow this one was forked "
                                                            "from")


class WorkflowStatus(_Summary):
    """A workflow in full: input, outputs, task attempts and transition history."""

    params: dict[str, Any]
    outputs: dict[str, Any]
    recovery_attempts: int
    tasks: list[TaskView]
    history: list[HistoryEntry]


class WorkflowSummary(_Summary):
    """A workflow as listed (no input, outputs or tasks)."""

    user_id: str | None = None


class WorkflowPage(BaseModel):
    """One page of the listing, newest first."""

    items: list[WorkflowSummary]
    next_cursor: str | None = Field(
        None, description="pass as `cursor` for the next page; null on the last page")


class WhyTask(BaseModel):
    """A task of the current step, as the diagnosis sees it."""

    task_id: uuid.UUID
    agent: str
    step: str
    item_key: str
    attempt: int
    status: str
    external_task_id: str | None = None
    status_url: str | None = None
    result: Any = Field(None, description="what the agent answered (summary)")
    error: Any = Field(None, description="the last failure, transient or final")
    transient_failures: int = Field(description="requests that failed transiently so far")
    attempts_per_request: int = Field(description="CPOA_SERVICE_RETRY_COUNT")
    first_submitted_at: datetime.datetime | None = None
    next_poll_at: datetime.datetime | None = None
    next_poll_in_s: float | None = None
    poll_deadline_at: datetime.datetime | None = None
    deadline_in_s: float | None = Field(
        None, description="transient failures are retried until this deadline, then the "
                          "step fails")


class Why(BaseModel):
    """Why a workflow is (not) moving: one human sentence and the facts behind it."""

    workflow_id: uuid.UUID
    kind: KindName
    state: StateName
    reason: str = Field(examples=[("waiting for WCHA task 3f2a, next poll in 3.2 s, deadline "
                                   "2026-11-24T10:05:00+00:00")])
    now: datetime.datetime = Field(description="the database's clock")
    due: bool
    lease_owner: str | None = None
    lease_expires_at: datetime.datetime | None = None
    lease_expires_in_s: float | None = None
    next_run_at: datetime.datetime | None = None
    next_run_in_s: float | None = None
    failed_from_state: str | None = None
    error: str | None = None
    retry_count: int = Field(description="manual retries so far")
    recovery_attempts: int = Field(description="expired leases in this state")
    max_recovery_attempts: int
    recoveries_left: int = Field(description="expired leases before quarantine as failed")
    tasks: list[WhyTask]


class Health(BaseModel):
    """Whether the gateway can serve: database reachable, schema applied and current."""

    status: Literal["ok", "unavailable"]
    database: Literal["reachable", "unreachable"]
    schema_version: int | None = None
    expected_schema_version: int
    message: str | None = None


class FieldProblem(BaseModel):
    """One refused field."""

    field: str
    message: str


class CallbackAccepted(BaseModel):
    """A callback was taken: the task will be polled at once."""

    polled: bool = True


class Problem(BaseModel):
    """Every error answer: a stable code, a human message, the field at fault if any."""

    error: str = Field(examples=["invalid_input"])
    message: str
    field: str | None = None
    details: list[FieldProblem] | None = None
