"""The JSON API: /v1/podcasts, /v1/snippets, /v1/workflows…, /healthz, /metrics.

Routes are plain functions, which FastAPI runs on its thread pool (the store is synchronous).
They raise the CPOA error tree; :mod:`cpoa.gateway.problems` turns it into HTTP answers.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from cpoa import bulk, defaults, errors, events, inputs, metrics, sql
from cpoa.engine import Engine
from cpoa.gateway import auth, schemas, why

logger = logging.getLogger(__name__)
router = APIRouter(route_class=auth.TokenRoute)
"""Every route; the POST ones need the API token when one is configured."""

_DESCRIPTIONS = {
    401: "CPOA_API_TOKEN is set and the bearer token is missing or wrong",
    404: "no workflow with this id",
    409: "the workflow's state does not allow this action",
    413: f"request body larger than {defaults.API_MAX_BODY_BYTES} bytes",
    422: "a bad field, named in `field`",
    503: "the database is unavailable or busy; try again (Retry-After)",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route (all of them ``Problem``)."""
    return {code: {"model": schemas.Problem, "description": _DESCRIPTIONS[code]}
            for code in codes}


def engine_of(request: Request) -> Engine:
    """FastAPI dependency: the engine the application was built with."""
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(engine_of)]
WorkflowId = Annotated[uuid.UUID, Path(description="the workflow's id (a UUID)")]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=inputs.TEXT_ID_MAX_CHARS,
    description="same key → same workflow, whatever its state; a failed one is resumed")]
ForkKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=inputs.TEXT_ID_MAX_CHARS,
    description="same key → the same fork (422 if the key forked another workflow)")]


# -- starting ---------------------------------------------------------------------------------

@router.post("/v1/podcasts", status_code=202, response_model=schemas.Started,
             responses=_errors(401, 413, 422, 503), tags=["workflows"])
def start_podcast(body: schemas.PodcastRequest, request: Request, response: Response,
                  engine: EngineDep, idempotency_key: IdempotencyKey = None) -> schemas.Started:
    """Starts a podcast workflow (or returns the one this idempotency key started)."""
    return _start(engine, request, response, "podcast", body, idempotency_key)


@router.post("/v1/snippets", status_code=202, response_model=schemas.Started,
             responses=_errors(401, 413, 422, 503), tags=["workflows"])
def start_snippets(body: schemas.SnippetsRequest, request: Request, response: Response,
                   engine: EngineDep, idempotency_key: IdempotencyKey = None) -> schemas.Started:
    """Starts a snippets workflow (or returns the one this idempotency key started)."""
    return _start(engine, request, response, "snippets", body, idempotency_key)


def _start(engine: Engine, request: Request, response: Response, kind: str,
           body: schemas.PodcastRequest | schemas.SnippetsRequest,
           key: str | None) -> schemas.Started:
    workflow_id = engine.start_workflow(kind, body.params(), idempotency_key=key,
                                        client_id=body.client_id, user_id=body.user_id,
                                        priority=body.priority)
    status_url = f"{request.scope.get('root_path', '')}/v1/workflows/{workflow_id}"
    response.headers["Location"] = status_url
    return schemas.Started(workflow_id=workflow_id, status_url=status_url)


# -- reading ----------------------------------------------------------------------------------

@router.get("/v1/workflows/{workflow_id}", response_model=schemas.WorkflowStatus,
            responses=_errors(404, 422, 503), tags=["workflows"])
def get_workflow(workflow_id: WorkflowId, engine: EngineDep) -> dict[str, Any]:
    """A workflow: state, progress, warnings, error, outputs, task attempts, history."""
    return engine.get_workflow(workflow_id)


@router.get("/v1/workflows", response_model=schemas.WorkflowPage,
            responses=_errors(422, 503), tags=["workflows"])
def list_workflows(
        engine: EngineDep,
        state: schemas.StateName | None = None,
        kind: schemas.KindName | None = None,
        limit: Annotated[int, Query(ge=1, le=defaults.API_PAGE_MAX)] = 50,
        cursor: Annotated[str | None, Query(
            max_length=200, description="`next_cursor` of the previous page")] = None,
) -> dict[str, Any]:
    """Workflows, newest first, one page at a time (keyset pagination: a workflow started
    meanwhile never makes a row repeat or go missing)."""
    after = decode_cursor(cursor) if cursor is not None else None
    rows = engine.store.list_workflows_page(state=state, kind=kind, limit=limit + 1,
                                            after=after)
    page = rows[:limit]
    more = len(rows) > limit
    return {"items": [_summary(row) for row in page],
            "next_cursor": encode_cursor(page[-1]) if more else None}


@router.get("/v1/workflows/{workflow_id}/why", response_model=schemas.Why,
            responses=_errors(404, 422, 503), tags=["workflows"])
def why_not_moving(workflow_id: WorkflowId, engine: EngineDep) -> dict[str, Any]:
    """Why is this workflow not moving: lease, schedule, the current step's agent tasks,
    retries and deadlines, the agents' limits (a slot, a place in a rate, a pause), and a
    one-line `reason`."""
    return why.diagnose(engine.store, engine.settings, workflow_id)


def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "workflow_id": row["workflow_id"], "kind": row["kind"], "state": row["state"],
        "progress": events.progress(row["kind"], row["state"], row["failed_from_state"]),
        "warnings": row["warnings"], "error": row["error_message"],
        "failed_from_state": row["failed_from_state"], "client_id": row["client_id"],
        "user_id": row["user_id"], "idempotency_key": row["idempotency_key"],
        "retry_count": row["retry_count"], "started_at": row["start_timestamp"],
        "updated_at": row["last_updated_timestamp"], "ended_at": row["end_timestamp"],
        "next_run_at": row["next_run_at"], "lease_owner": row["lease_owner"],
        "forked_from": row.get("forked_from"),
    }


def encode_cursor(row: Mapping[str, Any]) -> str:
    """The opaque position after ``row``: its (start time, id) keyset, base64url JSON."""
    raw = json.dumps([row["start_timestamp"].isoformat(), str(row["workflow_id"])])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime.datetime, uuid.UUID]:
    """Reads a cursor made by :func:`encode_cursor`.

    Raises:
        InvalidInput: naming ``cursor``, for anything else.
    """
    try:
        at, workflow_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if isinstance(at, str) and isinstance(workflow_id, str):
            started = datetime.datetime.fromisoformat(at)
            if started.tzinfo is not None:
                return started, uuid.UUID(workflow_id)
    except (ValueError, TypeError, binascii.Error):
        pass  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
    raise errors.InvalidInput("cursor: not a cursor returned by this API", field="cursor")


# -- acting -----------------------------------------------------------------------------------

@router.post("/v1/workflows/{workflow_id}/cancel", response_model=schemas.WorkflowState,
             responses=_errors(401, 404, 409, 413, 422, 503),
             tags=["workflows"])
def cancel(workflow_id: WorkflowId, engine: EngineDep) -> dict[str, Any]:
    """Cancels a working or failed workflow (409 when completed or already cancelled)."""
    return {"workflow_id": workflow_id, "state": engine.cancel(workflow_id)}


@router.post("/v1/workflows/{workflow_id}/retry", response_model=schemas.WorkflowState,
             responses=_errors(401, 404, 409, 413, 422, 503),
             tags=["workflows"])
def retry(workflow_id: WorkflowId, engine: EngineDep) -> dict[str, Any]:
    """Resumes a failed workflow at the state it failed in (409 unless failed)."""
    return {"workflow_id": workflow_id, "state": engine.retry(workflow_id)}


@router.post("/v1/workflows/{workflow_id}/review", response_model=schemas.WorkflowState,
             responses=_errors(401, 404, 409, 413, 422, 503), tags=["workflows"])
def review(workflow_id: WorkflowId, body: schemas.ReviewRequest,
           engine: EngineDep) -> dict[str, Any]:
    """Approves (optionally with an edited script) or rejects (with notes) the script of a
    workflow awaiting review. 409 when it is not awaiting review (another reviewer acted
    first, or the script is no longer at `expected_revision`); 422 naming the field of a bad
    edit (nothing stored)."""
    state = engine.review(workflow_id, approve=body.decision == "approve", script=body.script,
                          notes=body.notes, expected_revision=body.expected_revision)
    return {"workflow_id": workflow_id, "state": state}


@router.post("/v1/workflows/{workflow_id}/fork", status_code=202, response_model=schemas.Started,
             responses=_errors(401, 404, 409, 413, 422, 503), tags=["workflows"])
def fork(workflow_id: WorkflowId, body: schemas.ForkRequest, request: Request,
         response: Response, engine: EngineDep,
         idempotency_key: ForkKey = None) -> schemas.Started:
    """Starts a new workflow from a completed, failed or cancelled one at `from_state` (422
    naming the field for a state it never reached or a bad parameter; 409 while it works).
    A fork retried with the same Idempotency-Key returns the same fork."""
    new_id = engine.fork(workflow_id, body.from_state, body.params, client_id=body.client_id,
                         idempotency_key=idempotency_key)
    status_url = f"{request.scope.get('root_path', '')}/v1/workflows/{new_id}"
    response.headers["Location"] = status_url
    return schemas.Started(workflow_id=new_id, status_url=status_url)


@router.post("/v1/bulk/{action}", response_model=schemas.BulkReport,
             responses=_errors(401, 413, 422, 503), tags=["workflows"])
def bulk_action(action: Annotated[Literal["retry", "cancel", "fork"], Path()],
                body: schemas.BulkRequest, engine: EngineDep) -> dict[str, Any]:
    """Retries, cancels or forks every workflow matching the filter, in bounded batches; each
    is changed on its own (one that changed meanwhile is refused and listed). `dry_run` lists
    what would change and changes nothing. An empty filter is a 422 naming `all` unless
    `"all": true`; a fork skips forks unless `include_forks`."""
    where = bulk.Filter.checked(
        state=body.state, kind=body.kind, failed_step=body.failed_step,
        started_after=inputs.instant(body.started_after, "started_after"),
        started_before=inputs.instant(body.started_before, "started_before"),
        all_workflows=body.all, include_forks=body.include_forks)
    return bulk.run(engine, action, where, dry_run=body.dry_run, batch_size=body.batch_size,
                    from_state=body.from_state, params=body.params).as_json()


# -- operations -------------------------------------------------------------------------------

@router.get("/healthz", response_model=schemas.Health,
            responses={503: {"model": schemas.Health,
                             "description": "database unreachable or schema not current"}},
            tags=["operations"])
def healthz(engine: EngineDep, response: Response) -> dict[str, Any]:
    """200 when the database answers and its schema is at least this code's version."""
    expected = sql.schema_version()
    health: dict[str, Any] = {"status": "ok", "database": "reachable",
                              "expected_schema_version": expected}
    try:
        health["schema_version"] = version = engine.store.schema_version(
            defaults.HEALTHZ_TIMEOUT_S)
    except errors.StoreError as exc:
        logger.warning("health check failed: %s", exc, extra={"action": "healthz"})
        health.update(database="unreachable", message="the database cannot be reached")
    else:
        if version is None:
            health["message"] = "schema not applied: run `cpoa db init`"
        elif version < expected:
            health["message"] = (f"schema version {version} is older than {expected}: "
                                 f"run `cpoa db init`")
    if "message" in health:
        health["status"] = "unavailable"
        response.status_code = 503
    return health


@router.get("/metrics", response_class=Response, tags=["operations"],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition"},
                       **_errors(503)})
def metrics_exposition(engine: EngineDep) -> Response:
    """Prometheus metrics of the engine and the database."""
    body, content_type = metrics.exposition(engine.store)
    return Response(body, media_type=content_type)
