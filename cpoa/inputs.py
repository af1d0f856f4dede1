"""Validation of what callers pass in: workflow parameters and ids. Errors name the field."""

from __future__ import annotations

import datetime
import math
import re
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any

from cpoa import defaults, errors

VOICE_PARAMS = {"voice_name": str, "speaking_rate": (int, float), "pitch": (int, float),
                "language_code": str}
TEXT_ID_MAX_CHARS = 200
URL_MAX_CHARS = 2048
MAX_RESULTS_MIN, MAX_RESULTS_MAX = 1, 50
"""Bounds of a podcast's optional ``max_results``."""
FORMATS = ("conversation", "bulletin", "panel")
"""A podcast's optional ``format`` (passed to PSWA)."""
TARGET_MINUTES_MIN, TARGET_MINUTES_MAX = 1, 30
"""Bounds of a podcast's optional ``target_minutes`` (passed to WCHA and PSWA)."""
SNIPPETS_LIMIT_DEFAULT = 5
SNIPPETS_LIMIT_MIN, SNIPPETS_LIMIT_MAX = 1, 50
"""Default and bounds of a snippets workflow's ``limit`` (topics to discover)."""
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def workflow_params(kind: str, params: Any) -> dict[str, Any]:
    """Returns the cleaned parameters of a new workflow.

    Raises:
        InvalidInput: naming the first bad field.
    """
    if kind not in ("podcast", "snippets"):
        raise errors.InvalidInput(f"kind: unknown workflow kind {kind!r}", field="kind")
    if not isinstance(params, Mapping):
        raise errors.InvalidInput("params: expected an object", field="params")
    if kind == "podcast":
        return _podcast(params)
    return _snippets(params)


def _podcast(params: Mapping[str, Any]) -> dict[str, Any]:
    _only(params, ("topic", "urls", "files", "voice_params", "persona", "max_results", "format",
                   "target_minutes", "review", "cover_prompt"))
    cleaned: dict[str, Any] = {"topic": text(params.get("topic"), "topic")}
    urls = params.get("urls")
    urls = [] if urls is None else urls  # `or []` would let "", 0 or {} pass as no URLs
    if not isinstance(urls, list) or len(urls) > defaults.URLS_MAX:
        raise errors.InvalidInput(f"urls: expected a list of at most {defaults.URLS_MAX} URLs",
                                  field="urls")
    cleaned["urls"] = [_url(u, f"urls[{i}]") for i, u in enumerate(urls)]
    files = params.get("files")
    if files is not None:
        if not isinstance(files, list) or len(files) > defaults.URLS_MAX:
            raise errors.InvalidInput(f"files: expected a list of at most {defaults.URLS_MAX} "
                                      "document URLs", field="files")
        cleaned["files"] = [_url(u, f"files[{i}]") for i, u in enumerate(files)]
    cleaned["voice_params"] = _voice_params(params.get("voice_params"))
    if params.get("persona") is not None:
        cleaned["persona"] = text(params["persona"], "persona")
    if params.get("max_results") is not None:
        cleaned["max_results"] = integer(params["max_results"], "max_results", MAX_RESULTS_MIN,
                                         MAX_RESULTS_MAX)
    _episode_options(params, cleaned)
    return cleaned


def _voice_params(voice: Any) -> dict[str, Any]:
    """``voice_params``: an object of known fields, each of its type (None: no overrides)."""
    voice = {} if voice is None else voice
    if not isinstance(voice, Mapping):
        raise errors.InvalidInput("voice_params: expected an object", field="voice_params")
    for key, value in voice.items():
        expected = VOICE_PARAMS.get(key)
        if expected is None:
            raise errors.InvalidInput(f"voice_params.{key}: unknown field",
                                      field=f"voice_params.{key}")
        if not isinstance(value, expected) or isinstance(value, bool):
            raise errors.InvalidInput(f"voice_params.{key}: wrong type {type(value).__name__}",
                                      field=f"voice_params.{key}")
        if isinstance(value, float) and not math.isfinite(value):  # JSON has no NaN
            raise errors.InvalidInput(f"voice_params.{key}: must be a finite number",
                                      field=f"voice_params.{key}")
        if isinstance(value, str):
            text(value, f"voice_params.{key}", TEXT_ID_MAX_CHARS)
    return dict(voice)


def _review_options(params: Mapping[str, Any], cleaned: dict[str, Any]) -> None:
    """Copies the optional ``review`` (a yes/no) and ``cover_prompt``, checked."""
    if params.get("review") is not None:
        if not isinstance(params["review"], bool):
            raise errors.InvalidInput("review: expected true or false", field="review")
        if params["review"]:
            cleaned["review"] = True
    if params.get("cover_prompt") is not None:
        cleaned["cover_prompt"] = text(params["cover_prompt"], "cover_prompt")


def _episode_options(params: Mapping[str, Any], cleaned: dict[str, Any]) -> None:
    """Copies the optional ``format`` and ``target_minutes``, checked, into ``cleaned``."""
    if params.get("format") is not None:
        if params["format"] not in FORMATS:
            raise errors.InvalidInput(f"format: expected one of {', '.join(FORMATS)}",
                                      field="format")
        cleaned["format"] = params["format"]
    if params.get("target_minutes") is not None:
        cleaned["target_minutes"] = integer(params["target_minutes"], "target_minutes",
                                            TARGET_MINUTES_MIN, TARGET_MINUTES_MAX)
    _review_options(params, cleaned)


def _snippets(params: Mapping[str, Any]) -> dict[str, Any]:
    _only(params, ("query", "limit"))
    limit = params.get("limit")
    limit = SNIPPETS_LIMIT_DEFAULT if limit is None else limit
    return {"query": text(params.get("query"), "query"),
            "limit": integer(limit, "limit", SNIPPETS_LIMIT_MIN, SNIPPETS_LIMIT_MAX)}


def text(value: Any, field: str, max_chars: int = defaults.TOPIC_MAX_CHARS) -> str:
    """Returns a non-empty, bounded text value."""
    if not isinstance(value, str):
        got = "missing" if value is None else type(value).__name__
        raise errors.InvalidInput(f"{field}: expected text, got {got}", field=field)
    if not value.strip():
        raise errors.InvalidInput(f"{field}: must not be empty", field=field)
    if len(value) > max_chars or "\x00" in value:
        raise errors.InvalidInput(f"{field}: longer than {max_chars} characters or has NUL",
                                  field=field)
    if not value.isascii() and _LONE_SURROGATE.search(value):  # UTF-8 cannot store it
        raise errors.InvalidInput(f"{field}: has a lone surrogate (not valid Unicode text)",
                                  field=field)
    return value.strip()


def integer(value: Any, field: str, low: int, high: int) -> int:
    """Returns a whole number within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.InvalidInput(f"{field}: expected a whole number from {low} to {high}",
                                  field=field)
    return value


def optional_id(value: Any, field: str) -> str | None:
    """Returns a caller-given id (client, user, idempotency key) or None."""
    if value is None:
        return None
    return text(value, field, TEXT_ID_MAX_CHARS)


def instant(value: str | None, field: str) -> datetime.datetime | None:
    """Parses an ISO 8601 time with its UTC offset (None stays None).

    Raises:
        InvalidInput: naming ``field``.
    """
    if value is None:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise errors.InvalidInput(f"{field}: expected an ISO 8601 time with its UTC offset, "
                                  "e.g. 2026-12-01T00:00:00+00:00", field=field)
    return parsed


def workflow_id(value: Any) -> uuid.UUID:
    """Parses a workflow id.

    Raises:
        InvalidInput: it is not a UUID.
    """
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        shown = str(value)[:60]
        raise errors.InvalidInput(f"workflow_id: {shown!r} is not a UUID",
                                  field="workflow_id") from None


def _url(value: Any, field: str) -> str:
    value = text(value, field, URL_MAX_CHARS)
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise errors.InvalidInput(f"{field}: not an http(s) URL", field=field)
    return value


def _only(params: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in params:
        if key not in allowed:
            raise errors.InvalidInput(f"{key}: unknown field (allowed: {', '.join(allowed)})",
                                      field=str(key))
