"""PSWA, the script weaver: a deterministic script from harvested text (contract §3).

The template backend (:mod:`cpoa_agents.template`) writes a ``conversation`` (host and guest,
the default), a ``bulletin`` (one voice) or a ``panel`` (host and two guests) of about
``target_minutes`` (1–30, default 3): an intro that says what the episode covers, one segment
per discovered topic whose guest lines quote the sources, and a wrap-up. An optional LLM
backend (:mod:`cpoa_agents.llm`) writes the script instead and falls back to the template when
its answer is not a valid script.

Live progress (contract §2): the segments written so far, as ``partial`` (``segment_index``,
``segment_title``, ``lines``) with ``progress`` = segments written / segments, reported as each
segment of the finished script is checked. Both backends write the whole script in one go (the
template in milliseconds), so a poll sees this only for a long script or a slow model.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from typing import Any

from cpoa import defaults
from cpoa_agents import llm, service, template, validate

logger = logging.getLogger(__name__)

TOPIC_MAX_CHARS, PERSONA_MAX_CHARS, CONTENT_MAX_CHARS, MAX_TOPICS = 1000, 1000, 50_000, 50
"""Request limits: characters of topic, persona and content (contract §3); number of topics."""
MAX_SOURCES = 50
SEGMENT_TITLE_CHARS = 100
"""Characters of a segment's title in a progress report."""
NOTES_MAX_CHARS = defaults.REVIEW_NOTES_MAX_CHARS
"""Longest ``revision_notes`` (a reviewer's notes on a rejected script, as CPOA accepts)."""
_DROP_WORDS = re.compile(r"\b(drop|remove|cut|skip|delete)\b", re.IGNORECASE)
"""Words in the notes that ask to drop a segment (the reference agent's reading of them)."""


class ScriptAgent(service.TaskAgent):
    """PSWA: ``POST /weave_script`` → ``script_data`` of Host/Guest segments.

    Args:
        data_dir: Where the agent keeps its task database.
        llm_url: Base URL of an OpenAI-compatible API; ``None`` reads ``PSWA_LLM_URL``, ``""``
            turns the LLM backend off.
        llm_model: Model name (``PSWA_LLM_MODEL``); required with a URL.
        llm_api_key: Bearer token (``PSWA_LLM_API_KEY``); never logged.
        llm_fallback: On an unusable LLM answer, write the template script (``True``) or fail
            the task naming the reason (``False``).
        env: Where ``PSWA_LLM_*`` are read (default ``os.environ``).

    Raises:
        cpoa.errors.ConfigError: The LLM settings are incomplete or malformed.
    """

    name = "PSWA"
    path = "/weave_script"

    def __init__(self, data_dir: Any, *, llm_url: str | None = None,
                 llm_model: str | None = None, llm_api_key: str | None = None,
                 llm_fallback: bool = True, env: Mapping[str, str] | None = None) -> None:
        # Configuration first: a bad setting must fail before any file or thread exists.
        self.llm = llm.configure(llm_url, llm_model, llm_api_key, env=env)
        self.llm_fallback = llm_fallback
        super().__init__(data_dir)

    def validate(self, body: dict[str, Any]) -> dict[str, Any]:
        """Returns the cleaned request or raises BadRequest naming the field."""
        topics = validate.array(body, "topics", max_items=MAX_TOPICS, required=False)
        return {"topic": validate.text(body, "topic", max_chars=TOPIC_MAX_CHARS),
                "content": validate.text(body, "content", max_chars=CONTENT_MAX_CHARS),
                "topics": [_topic(t, f"topics[{i}]") for i, t in enumerate(topics)],
                "persona": validate.text(body, "persona", max_chars=PERSONA_MAX_CHARS,
                                         required=False),
                "format": validate.choice(body, "format", template.FORMATS),
                "target_minutes": validate.number(body, "target_minutes",
                                                  *template.MINUTES_RANGE,
                                                  template.DEFAULT_MINUTES),
                "sources": _sources(body),
                "revision_notes": validate.text(body, "revision_notes",
                                                max_chars=NOTES_MAX_CHARS, required=False)}

    def run(self, request: dict[str, Any], task_id: str) -> dict[str, Any]:
        """Writes the script (:meth:`write`) and reports its segments as written.

        Raises:
            llm.LLMError: The LLM answer was unusable and fallback is off.
        """
        result = self.write(request, task_id)
        segments = result["script_data"]["segments"]
        written = []
        for i, segment in enumerate(segments):
            written.append({"segment_index": i,
                            "segment_title": segment["segment_title"][:SEGMENT_TITLE_CHARS],
                            "lines": len(segment["lines"])})
            self.report_progress(task_id, (i + 1) / len(segments), written)
        return result

    def write(self, request: dict[str, Any], task_id: str) -> dict[str, Any]:
        """Writes the script with the LLM when configured, else (or as fallback) the template.

        Raises:
            llm.LLMError: The LLM answer was unusable and fallback is off.
        """
        if self.llm is None:
            return _result(revise(template.weave(request), request.get("revision_notes")),
                           "template")
        script_id = template.script_id(request, f"llm:{self.llm.model}")
        try:
            return _result(llm.write_script(self.llm, request, script_id), "llm")
        except llm.LLMError as exc:
            if not self.llm_fallback:
                raise
            logger.warning("llm script unusable, using template",
                           extra={"agent": self.name, "task_id": task_id, "reason": str(exc)})
            return {**_result(template.weave(request), "template"), "llm_error": str(exc)[:500]}


def revise(script_data: dict[str, Any], notes: str | None) -> dict[str, Any]:
    """The template backend's answer to a reviewer's notes: when they ask to drop, remove, cut,
    skip or delete, every segment whose title they name goes (never all of them); the script
    gets an id of its own. (The LLM backend reads the notes in its brief instead.)"""
    if not notes:
        return script_data
    lowered = notes.lower()
    kept = [s for s in script_data["segments"]
            if not (_DROP_WORDS.search(notes) and s["segment_title"].strip()
                    and s["segment_title"].strip().lower() in lowered)]
    digest = hashlib.sha256(notes.encode("utf-8", "replace")).hexdigest()[:6]
    return {**script_data, "script_id": f"{script_data['script_id']}-rev-{digest}",
            "segments": kept or script_data["segments"]}


def _result(script_data: dict[str, Any], backend: str) -> dict[str, Any]:
    words = sum(len(line["text"].split()) for segment in script_data["segments"]
                for line in segment["lines"])
    return {"status": "success", "script_data": script_data, "word_count": words,
            "backend": backend}


def _topic(value: Any, where: str) -> dict[str, Any]:
    """Cleans one TopicObject; errors name ``topics[i].<field>``."""
    if not isinstance(value, dict):
        raise service.BadRequest(f"{where}: expected an object", field=where)
    try:
        keywords = validate.array(value, "keywords", max_items=MAX_TOPICS)
        if not all(isinstance(k, str) for k in keywords):
            raise service.BadRequest("keywords: expected a list of text", field="keywords")
        summary = value.get("summary") or ""
        if not isinstance(summary, str):
            raise service.BadRequest("summary: expected text", field="summary")
        return {"topic_id": validate.text(value, "topic_id", max_chars=200),
                "title_suggestion": validate.text(value, "title_suggestion", max_chars=300),
                "summary": summary.strip()[:2000],
                "keywords": [k.strip() for k in keywords if k.strip()],
                "relevance_score": validate.number(value, "relevance_score", -1e9, 1e9, 0.0)}
    except service.BadRequest as exc:
        raise service.BadRequest(f"{where}.{exc}", field=f"{where}.{exc.field}") from None


def _sources(body: dict[str, Any]) -> list[dict[str, str]]:
    """The harvested articles' ``{url, title}`` (WCHA's ``articles``), optional."""
    sources = validate.array(body, "sources", max_items=MAX_SOURCES, required=False)
    cleaned = []
    for i, source in enumerate(sources):
        if not isinstance(source, dict) or not all(
                isinstance(source.get(k, ""), str) for k in ("url", "title")):
            raise service.BadRequest(f"sources[{i}]: expected an object with text url and "
                                     "title", field=f"sources[{i}]")
        cleaned.append({"url": source.get("url", "")[:2048],
                        "title": source.get("title", "")[:300]})
    return cleaned
