"""The module-level API an API gateway imports, backed by one engine built from the environment."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from typing import Any

from cpoa import embedded, settings as settings_module
from cpoa.engine import Engine
from cpoa.settings import Settings
from cpoa.store import PostgresStore, conninfo

_lock = threading.Lock()
_default: Engine | None = None


def connect(settings: Settings | None = None) -> Engine:
    """Builds an engine from settings (the environment by default).

    With no database configured, the embedded PostgreSQL is started (or reused) and the
    schema applied, so a fresh machine needs nothing else.

    Raises:
        ConfigError: a bad environment variable.
        StoreError: the database cannot be reached.
    """
    settings = settings or settings_module.from_env()
    db = settings.database
    embedded_url = embedded.start(settings.embedded_data_dir) if db.embedded else ""
    store = PostgresStore(conninfo(db, embedded_url), min_size=db.pool_min,
                          max_size=db.pool_max, secrets=db.secrets)
    if db.embedded:
        store.apply_schema()
    return Engine(store, settings)


def default_engine() -> Engine:
    """Returns the process-wide engine, building it on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = connect()
        return _default


def start_workflow(kind: str, params: Mapping[str, Any], *, idempotency_key: str | None = None,
                   client_id: str | None = None, user_id: str | None = None,
                   priority: int = 0) -> uuid.UUID:
    """Starts a workflow (see :meth:`Engine.start_workflow`)."""
    return default_engine().start_workflow(kind, params, idempotency_key=idempotency_key,
                                           client_id=client_id, user_id=user_id,
                                           priority=priority)


def advance(workflow_id: Any) -> str:
    """Makes at most one transition (see :meth:`Engine.advance`)."""
    return default_engine().advance(workflow_id)


def get_workflow(workflow_id: Any) -> dict[str, Any]:
    """Returns a workflow's status (see :meth:`Engine.get_workflow`)."""
    return default_engine().get_workflow(workflow_id)


def cancel(workflow_id: Any) -> str:
    """Cancels a workflow (see :meth:`Engine.cancel`)."""
    return default_engine().cancel(workflow_id)


def retry(workflow_id: Any) -> str:
    """Retries a failed workflow (see :meth:`Engine.retry`)."""
    return default_engine().retry(workflow_id)


def review(workflow_id: Any, *, approve: bool, script: Any = None, notes: Any = None) -> str:
    """Approves or rejects a script awaiting review (see :meth:`Engine.review`)."""
    return default_engine().review(workflow_id, approve=approve, script=script, notes=notes)


def fork(workflow_id: Any, from_state: str, params: Mapping[str, Any] | None = None, *,
         client_id: str | None = None) -> uuid.UUID:
    """Starts a workflow from a finished one at ``from_state`` (see :meth:`Engine.fork`)."""
    return default_engine().fork(workflow_id, from_state, params, client_id=client_id)
