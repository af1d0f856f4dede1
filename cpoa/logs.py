"""Logging helpers: a LoggerAdapter that carries workflow context, and the CLI's JSON setup.

The library only creates loggers and adapters; `configure()` is called by `cpoa.cli` alone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any


class WorkflowLogger(logging.LoggerAdapter):
    """Adds ``workflow_id`` and ``task_id`` to every record, merging the call's own ``extra``."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs

    def bind(self, **fields: object) -> WorkflowLogger:
        """Returns an adapter with more context fields (e.g. the task row's ``task_id``)."""
        return WorkflowLogger(self.logger, {**(self.extra or {}), **fields})


def for_workflow(logger: logging.Logger, workflow_id: object,
                 task_id: object = None) -> WorkflowLogger:
    """Returns an adapter whose records carry ``workflow_id`` and ``task_id``."""
    return WorkflowLogger(logger, {"workflow_id": str(workflow_id),
                                   "task_id": str(task_id) if task_id else None})


class RedactSecrets(logging.Filter):
    """Replaces known secret values in a record's message, arguments and extra fields."""

    MASK = "***"

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = self._clean(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if isinstance(value, str) and key not in ("msg", "name", "levelname"):
                setattr(record, key, self._clean(value))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True

    def _clean(self, text: str) -> str:
        return redact(text, self.secrets)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Masks each secret where it stands as a token of its own (so that a short password
    such as ``b`` is masked in ``user:b@host`` but leaves ``database`` alone)."""
    for secret in secrets:
        if secret:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])",
                          RedactSecrets.MASK, text)
    return text


def configure(verbosity: int = 0, secrets: Iterable[str] = (),
              stream: object = None) -> None:
    """Installs JSON logging on the root logger (for the CLI only).

    Args:
        verbosity: 0 warnings, 1 info, 2 or more debug.
        secrets: Values to mask wherever they would appear.
        stream: Where records go; standard error by default.
    """
    from pythonjsonlogger import json as jsonlogger

    handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(jsonlogger.JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "asctime": "time"}))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel([logging.WARNING, logging.INFO][verbosity] if verbosity < 2 else logging.DEBUG)
    # transitions narrates every callback at INFO; only -vv shows it.
    logging.getLogger("transitions").setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)


def clip(text: str | bytes | None, limit: int) -> str:
    """Returns at most ``limit`` characters of a response body, for logs and reasons."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "…"


def context(mapping: Mapping[str, object]) -> dict[str, object]:
    """Drops empty values from a log context dict."""
    return {k: v for k, v in mapping.items() if v is not None and v != ""}
