"""The result contract of every agent (contract §3): validate, name the bad field, clean up.

Pure functions: each takes the ``result`` object of a successful task and returns the part CPOA
keeps, or raises InvalidAgentResult naming ``result.<field>``, or AgentTaskFailed for a business
error (``result.status == "error"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cpoa import errors, logs

BUSINESS_STATUSES = ("success", "partial_success", "skipped", "error")
TEXT_LIMIT = 200


def business_status(result: Mapping[str, Any], service: str) -> str:
    """Returns ``result.status`` (``success`` when absent); raises on ``error``."""
    status = result.get("status", "success")
    if status not in BUSINESS_STATUSES:
        _bad(service, "status", f"must be one of {', '.join(BUSINESS_STATUSES)}", status)
    if status == "error":
        message = result.get("message") or "no message"
        code = result.get("error_code")
        detail = f"{message} ({code})" if code else str(message)
        raise errors.AgentTaskFailed(f"{service} reported an error: {logs.clip(detail, 500)}",
                                     service=service, body=logs.clip(detail, 500))
    return status


def harvest(result: Any) -> dict[str, Any]:
    """WCHA: ``content`` (non-empty text) and ``source_urls`` (list of text)."""
    r = _object(result, "WCHA")
    return {"content": _text(r, "content", "WCHA"),
            "source_urls": _list(r, "source_urls", "WCHA", str, required=False)}


def discovered_topics(result: Any) -> list[dict[str, Any]]:
    """TDA: ``discovered_topics``, each with the five TopicObject fields."""
    r = _object(result, "TDA")
    topics = _list(r, "discovered_topics", "TDA", Mapping)
    cleaned = []
    for i, topic in enumerate(topics):
        where = f"discovered_topics[{i}]"
        cleaned.append({
            "topic_id": _text(topic, "topic_id", "TDA", where),
            "title_suggestion": _text(topic, "title_suggestion", "TDA", where),
            "summary": _text(topic, "summary", "TDA", where, empty_ok=True),
            "keywords": _list(topic, "keywords", "TDA", str, where=where),
            "relevance_score": _number(topic, "relevance_score", "TDA", where),
        })
    return cleaned


def snippet(result: Any) -> dict[str, Any]:
    """SCA: one snippet with ids, title, summary, text and an optional cover-art prompt."""
    r = _object(result, "SCA")
    cleaned = {field: _text(r, field, "SCA") for field in
               ("snippet_id", "topic_id", "title", "text_content")}
    cleaned["summary"] = _text(r, "summary", "SCA", empty_ok=True)
    prompt = r.get("cover_art_prompt")
    if prompt is not None and not isinstance(prompt, str):
        _bad("SCA", "cover_art_prompt", "must be text", prompt)
    cleaned["cover_art_prompt"] = prompt or None
    return cleaned


def script(result: Any) -> dict[str, Any]:
    """PSWA: ``script_data`` with a title and non-empty segments of speaker lines."""
    r = _object(result, "PSWA")
    data = r.get("script_data")
    if not isinstance(data, Mapping):
        _bad("PSWA", "script_data", "must be an object", data)
    _text(data, "script_id", "PSWA", "script_data")
    _text(data, "title", "PSWA", "script_data")
    segments = _list(data, "segments", "PSWA", Mapping, where="script_data", non_empty=True)
    for i, segment in enumerate(segments):
        where = f"script_data.segments[{i}]"
        _text(segment, "segment_title", "PSWA", where, empty_ok=True)
        lines = _list(segment, "lines", "PSWA", Mapping, where=where)
        for j, line in enumerate(lines):
            _text(line, "speaker", "PSWA", f"{where}.lines[{j}]")
            _text(line, "text", "PSWA", f"{where}.lines[{j}]")
    return dict(data)


def audio(result: Any) -> dict[str, Any]:
    """VFA: the synthesised audio's URL, format, duration, stream id and settings."""
    r = _object(result, "VFA")
    cleaned = {
        "url": _text(r, "audio_url", "VFA"),
        "format": _text(r, "audio_format", "VFA"),
        "duration_s": _number(r, "duration_s", "VFA"),
        "stream_id": _text(r, "stream_id", "VFA"),
        "tts_settings_used": r.get("tts_settings_used"),
    }
    if cleaned["tts_settings_used"] is not None and not isinstance(
            cleaned["tts_settings_used"], Mapping):
        _bad("VFA", "tts_settings_used", "must be an object", cleaned["tts_settings_used"])
    for field in ("segments", "turns", "wav_url"):  # extras, when the agent gives them
        if isinstance(r.get(field), (list, str)):
            cleaned[field] = r[field]
    return cleaned


def image(result: Any) -> dict[str, Any]:
    """IGA: ``image_url``."""
    r = _object(result, "IGA")
    return {"image_url": _text(r, "image_url", "IGA")}


# -- field checks ---------------------------------------------------------------------------

def _object(result: Any, service: str) -> Mapping[str, Any]:
    if not isinstance(result, Mapping):
        _bad(service, "", "must be an object", result)
    business_status(result, service)
    return result


def _text(obj: Mapping[str, Any], field: str, service: str, where: str = "",
          empty_ok: bool = False) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or (not empty_ok and not value.strip()):
        _bad(service, _path(where, field), "must be a non-empty string" if not empty_ok
             else "must be a string", value)
    return value


def _number(obj: Mapping[str, Any], field: str, service: str, where: str = "") -> float:
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        _bad(service, _path(where, field), "must be a number", value)
    return value


def _list(obj: Mapping[str, Any], field: str, service: str, item_type: type, *,
          where: str = "", required: bool = True, non_empty: bool = False) -> list[Any]:
    value = obj.get(field)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        _bad(service, _path(where, field), "must be a list", value)
    if non_empty and not value:
        _bad(service, _path(where, field), "must not be empty", value)
    for i, item in enumerate(value):
        if not isinstance(item, item_type):
            _bad(service, f"{_path(where, field)}[{i}]",
                 f"must be {'an object' if item_type is Mapping else 'a string'}", item)
    return value


def _path(where: str, field: str) -> str:
    return f"{where}.{field}" if where else field


def _bad(service: str, field: str, problem: str, value: Any) -> None:
    got = "missing" if value is None else f"got {type(value).__name__}"
    name = f"result.{field}" if field else "result"
    raise errors.InvalidAgentResult(f"{service} {name} {problem} ({got})", service=service,
                                    field=name)
