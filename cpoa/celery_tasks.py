"""Celery integration (the ``[celery]`` extra): tasks that start a workflow and drive it.

A task run advances its workflow while it is due, then re-enqueues itself with a countdown
until the workflow's next due time, so no Celery worker ever waits out an agent's polling
interval. Run the tasks with ``celery -A cpoa.celery_tasks worker``; see docs/celery.md.

``import cpoa`` never imports this module (nor Celery).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

import celery
import celery.signals

from cpoa import api, defaults, errors, inputs, logs, models
from cpoa import engine as engine_module
from cpoa import settings as settings_module
from cpoa.store import TASK_NAMES

logger = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis", "rediss", "sentinel")
"""Broker schemes with a visibility timeout: an unacknowledged message comes back after it."""


@dataclasses.dataclass(frozen=True)
class CelerySettings:
    """How the Celery app is wired; build it with :func:`settings_from_env`.

    Args:
        broker_url: Where tasks are queued (may hold a password: never shown).
        result_backend: Where task results go; None when disabled.
        transport_options: Celery's ``broker_transport_options``.
        max_countdown_s: Longest pause before a task looks at its workflow again.
        advances_per_run: Most advances one task run makes.
    """

    broker_url: str = dataclasses.field(repr=False)
    result_backend: str | None = dataclasses.field(repr=False)
    transport_options: Mapping[str, Any]
    max_countdown_s: float = defaults.CELERY_MAX_COUNTDOWN_S
    advances_per_run: int = defaults.CELERY_ADVANCES_PER_RUN


def settings_from_env(env: Mapping[str, str] | None = None) -> CelerySettings:
    """Reads and validates the ``CPOA_CELERY_*`` variables.

    Args:
        env: The environment to read; ``os.environ`` by default.

    Raises:
        ConfigError: naming the first variable whose value is unusable.
    """
    env = os.environ if env is None else env
    reader = settings_module.EnvReader(env)
    broker = _url(env, "CPOA_CELERY_BROKER_URL", defaults.CELERY_BROKER_URL)
    backend = env.get("CPOA_CELERY_RESULT_BACKEND", "").strip()
    options = _transport_options(env, broker)
    config = CelerySettings(
        broker_url=broker,
        result_backend=None if backend == "disabled" else _url(
            env, "CPOA_CELERY_RESULT_BACKEND", broker),
        transport_options=options,
        max_countdown_s=reader.number("CPOA_CELERY_MAX_COUNTDOWN_SECONDS",
                                      defaults.CELERY_MAX_COUNTDOWN_S, positive=True),
        advances_per_run=reader.integer("CPOA_CELERY_ADVANCES_PER_RUN",
                                        defaults.CELERY_ADVANCES_PER_RUN, minimum=1),
    )
    visibility = options.get("visibility_timeout")
    if isinstance(visibility, (int, float)) and config.max_countdown_s >= visibility:
        raise errors.ConfigError(
            f"CPOA_CELERY_MAX_COUNTDOWN_SECONDS: {config.max_countdown_s:g} must be below the "
            f"broker's visibility_timeout ({visibility:g} s), or waiting tasks are delivered "
            "twice", variable="CPOA_CELERY_MAX_COUNTDOWN_SECONDS")
    return config


def make_app(env: Mapping[str, str] | None = None) -> celery.Celery:
    """Returns a Celery app configured from the environment, with both tasks registered.

    Raises:
        ConfigError: a bad ``CPOA_CELERY_*`` variable.
    """
    config = settings_from_env(env)
    app = celery.Celery("cpoa", broker=config.broker_url, backend=config.result_backend,
                        set_as_current=False)
    app.conf.update(broker_transport_options=dict(config.transport_options),
                    broker_connection_retry_on_startup=True,
                    task_serializer="json", result_serializer="json", accept_content=["json"])
    register(app, config)
    return app


def register(app: celery.Celery, config: CelerySettings | None = None) -> dict[str, Any]:
    """Registers the orchestration tasks on a Celery app (yours, or the one :func:`make_app`
    builds); returns them by workflow kind.

    Both are ``acks_late`` with ``reject_on_worker_lost``: the message of a killed worker is
    delivered again, which is safe because ``advance`` is lease-fenced and idempotent.
    """
    config = config or settings_from_env()
    return {kind: app.task(_task_function(kind, config), bind=True, name=name, acks_late=True,
                           reject_on_worker_lost=True, max_retries=None,
                           shared=False)
            for kind, name in TASK_NAMES.items()}


def _task_function(kind: str, config: CelerySettings) -> Any:
    def run(task: celery.Task, params: Mapping[str, Any] | None = None, *,
            idempotency_key: str | None = None, client_id: str | None = None,
            user_id: str | None = None, workflow_id: str | None = None) -> dict[str, Any]:
        return orchestrate(task, config, kind, params, idempotency_key=idempotency_key,
                           client_id=client_id, user_id=user_id, workflow_id=workflow_id)
    run.__doc__ = (f"Starts a {kind} workflow (or finds the one with this idempotency key, by "
                   "default the Celery task id) and drives it to its end; returns its final "
                   "state. With ``workflow_id``, drives that existing workflow.")
    return run


def orchestrate(task: celery.Task, config: CelerySettings, kind: str,
                params: Mapping[str, Any] | None, *, idempotency_key: str | None = None,
                client_id: str | None = None, user_id: str | None = None,
                workflow_id: str | None = None) -> dict[str, Any]:
    """One task run: start the workflow if needed, advance it while it is due, then return
    its outcome if it ended or re-enqueue this task (same task id) for its next due time.

    Raises:
        InvalidInput: bad parameters, or an unknown ``workflow_id`` (the task fails).
        celery.exceptions.Retry: the task was re-enqueued (normal operation).
    """
    try:
        engine = api.default_engine()  # built lazily, after a prefork worker has forked
        if workflow_id is None:
            if params is None:
                raise errors.InvalidInput("params: required to start a workflow",
                                          field="params")
            workflow_id = str(engine.start_workflow(
                kind, params, idempotency_key=idempotency_key or task.request.id,
                client_id=client_id, user_id=user_id))
        workflow, wait_s = drive(engine, workflow_id, config.advances_per_run)
    except errors.StoreError as exc:  # the database is down or busy: try again later
        logs.for_workflow(logger, workflow_id).warning(
            "celery run failed on the database: %s", exc, extra={"action": "celery_store_error"})
        rerun = {"workflow_id": workflow_id} if workflow_id else None
        raise task.retry(args=() if rerun else None, kwargs=rerun,
                         countdown=defaults.CELERY_STORE_RETRY_S) from None
    if wait_s is None:
        return outcome(workflow)
    countdown = min(max(wait_s, defaults.CELERY_MIN_COUNTDOWN_S), config.max_countdown_s)
    logs.for_workflow(logger, workflow_id).debug(
        "celery run re-enqueued in %.2f s", countdown,
        extra={"action": "celery_reschedule", "state": workflow.state})
    raise task.retry(args=(), kwargs={"workflow_id": workflow_id}, countdown=countdown)


def drive(engine: engine_module.Engine, workflow_id: Any,
          advances: int) -> tuple[models.Workflow, float | None]:
    """Advances a workflow while it is due, at most ``advances`` times.

    Returns:
        The workflow, and the seconds until it is due again (0 when it still is, after the
        last advance), or None once it is terminal.
    """
    workflow_id = inputs.workflow_id(workflow_id)
    for _ in range(advances):
        workflow = engine.advance_workflow(workflow_id)
        wait_s = due_in(workflow, datetime.datetime.now(datetime.UTC))
        if wait_s is None or wait_s > 0:
            return workflow, wait_s
    return workflow, 0.0


def due_in(workflow: models.Workflow, now: datetime.datetime) -> float | None:
    """Seconds until ``advance`` can act on the workflow; None once it is terminal.

    A lease held by another process (a ``cpoa worker``, another task) is looked at again
    after ``CELERY_HELD_RECHECK_S`` or when it expires, whichever comes first; an expired
    lease can be taken over at once. ``now`` is this host's clock (Celery's countdowns rely
    on synchronised clocks already).
    """
    if workflow.is_terminal:
        return None
    if workflow.lease_owner is not None and workflow.lease_expires_at is not None:
        left = (workflow.lease_expires_at - now).total_seconds()
        return min(left, defaults.CELERY_HELD_RECHECK_S) if left > 0 else 0.0
    if workflow.next_run_at is None:  # not terminal yet not scheduled: look again later
        return defaults.CELERY_MAX_COUNTDOWN_S
    return max(0.0, (workflow.next_run_at - now).total_seconds())


def outcome(workflow: models.Workflow) -> dict[str, Any]:
    """The JSON-ready result of a task whose workflow ended."""
    return {"workflow_id": str(workflow.workflow_id), "kind": workflow.kind,
            "state": workflow.state, "error": workflow.error_message,
            "warnings": list(workflow.warnings)}


# -- reading the environment -------------------------------------------------------------------

def _url(env: Mapping[str, str], name: str, default: str) -> str:
    """A broker or backend URL (``;`` separates failover brokers); never echoed, it may hold
    a password."""
    value = env.get(name, "").strip() or default
    for part in value.split(";"):
        try:
            parts = urllib.parse.urlsplit(part.strip())
            valid = bool(parts.scheme) and "://" in part and parts.port != 0  # port may raise
        except ValueError:
            raise errors.ConfigError(f"{name}: not a valid URL", variable=name) from None
        if not valid:
            raise errors.ConfigError(
                f"{name}: expected a URL such as {defaults.CELERY_BROKER_URL}", variable=name)
    return value


def _transport_options(env: Mapping[str, str], broker: str) -> dict[str, Any]:
    """Celery's ``broker_transport_options``: CPOA's defaults for a Redis broker, overridden
    by the JSON object in CPOA_CELERY_BROKER_TRANSPORT_OPTIONS."""
    name = "CPOA_CELERY_BROKER_TRANSPORT_OPTIONS"
    options: dict[str, Any] = {}
    if urllib.parse.urlsplit(broker.split(";")[0]).scheme in REDIS_SCHEMES:
        options = {"visibility_timeout": defaults.CELERY_VISIBILITY_TIMEOUT_S,
                   "unacked_restore_interval": defaults.CELERY_RESTORE_INTERVAL_S,
                   "unacked_restore_throttle": 1}
    raw = env.get(name, "").strip()
    try:
        given = json.loads(raw) if raw else {}
    except ValueError:
        raise errors.ConfigError(f"{name}: not valid JSON", variable=name) from None
    if not isinstance(given, dict):
        raise errors.ConfigError(f"{name}: expected a JSON object", variable=name)
    return {**options, **given}


@celery.signals.worker_init.connect
def check_engine_settings(**_: Any) -> None:
    """Refuses to start a worker whose CPOA variables are bad, before it takes a task (the
    engine itself is built by the first task, after a prefork worker has forked).

    Raises:
        SystemExit: naming the variable (Celery would only log an exception from a signal).
    """
    try:
        settings_module.from_env()
    except errors.ConfigError as exc:
        raise SystemExit(f"cpoa: {exc}") from None


app = make_app()
"""The app ``celery -A cpoa.celery_tasks worker`` runs, configured from the environment."""

cpoa_orchestrate_podcast_task = app.tasks[TASK_NAMES["podcast"]]
cpoa_orchestrate_snippets_task = app.tasks[TASK_NAMES["snippets"]]
