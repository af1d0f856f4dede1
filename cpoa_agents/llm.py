"""PSWA's optional LLM backend: one call to an OpenAI-compatible chat API, checked as a script.

Any server that speaks ``POST <url>/chat/completions`` works (OpenAI, vLLM, llama.cpp, Ollama).
The answer must be the ``script_data`` JSON object; anything else raises :class:`LLMError`, and
the agent decides whether to fall back to its template.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import requests

from cpoa import errors
from cpoa.agents import results
from cpoa_agents import bounded

ENV_URL, ENV_MODEL, ENV_API_KEY = "PSWA_LLM_URL", "PSWA_LLM_MODEL", "PSWA_LLM_API_KEY"
TIMEOUT_S = 60.0
"""Longest wait for the whole answer, connection included."""
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
"""Largest answer read; a script is a few kilobytes, so more is a broken or hostile server."""
MAX_SCRIPT_CHARS, MAX_LINES, MAX_SPEAKER_CHARS = 100_000, 2_000, 100
"""The largest script VFA accepts: refuse a bigger one here, where fallback is still possible."""
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n?(.*?)\n?\s*```\s*$", re.S)

SYSTEM_PROMPT = """You write podcast scripts. Answer with one JSON object and nothing else, in \
exactly this shape:
{"script_id": "%(script_id)s", "title": "<episode title>", "segments": [{"segment_title": \
"<title>", "lines": [{"speaker": "Host", "text": "<spoken words>"}, {"speaker": "Guest", \
"text": "<spoken words>"}]}]}
Rules:
- Two speakers only, "Host" and "Guest", taking turns.
- First segment "Introduction": the host welcomes listeners and introduces the topic and the \
guest; the guest responds.
- Then one segment per listed topic, in the given order, with segment_title equal to the topic's \
title: the host asks questions, the guest answers using only facts from the content.
- Last segment "Wrap-up": the host thanks the guest and the listeners.
- 350 to 600 spoken words in total. Plain spoken sentences: no markdown, no stage directions."""


class LLMError(Exception):
    """The LLM could not be reached, or its answer is not a valid script."""


@dataclasses.dataclass(frozen=True)
class ChatClient:
    """An OpenAI-compatible chat-completions endpoint.

    Args:
        url: The full ``…/chat/completions`` URL.
        model: The model name sent with every request.
        api_key: Sent as ``Authorization: Bearer``; kept out of ``repr`` and logs.
        timeout_s: Deadline for one whole call.
        max_bytes: Largest response body read.
    """

    url: str
    model: str
    api_key: str = dataclasses.field(default="", repr=False)
    timeout_s: float = TIMEOUT_S
    max_bytes: int = MAX_RESPONSE_BYTES

    def complete(self, system: str, user: str) -> str:
        """Returns the first choice's message content.

        Raises:
            LLMError: The call failed, timed out, was too large or had no message content.
        """
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body: dict[str, Any] = {
            "model": self.model, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        try:
            with requests.post(self.url, json=body, headers=headers, timeout=self.timeout_s,
                               stream=True, allow_redirects=False) as response:
                raw = self._read(response)
        except requests.RequestException as exc:
            raise LLMError(f"request failed: {type(exc).__name__}: {str(exc)[:200]}") from None
        if not 200 <= response.status_code < 300:
            raise LLMError(f"HTTP {response.status_code}: {raw[:200].decode(errors='replace')}")
        return _message_content(raw)

    def _read(self, response: requests.Response) -> bytes:
        return bounded.read(response, self.max_bytes, time.monotonic() + self.timeout_s,
                            lambda reason: LLMError(f"answer {reason}"))


def configure(url: str | None, model: str | None, api_key: str | None, *,
              env: Mapping[str, str] | None = None) -> ChatClient | None:
    """Builds the client from arguments, else ``PSWA_LLM_*``; ``None`` when no URL is set.

    Raises:
        cpoa.errors.ConfigError: The URL is not http(s), or a URL is given without a model.
    """
    env = os.environ if env is None else env
    url = env.get(ENV_URL, "") if url is None else url
    if not url.strip():
        return None
    model = env.get(ENV_MODEL, "") if model is None else model
    api_key = env.get(ENV_API_KEY, "") if api_key is None else api_key
    url = url.strip().rstrip("/")
    if not re.match(r"https?://[^/\s]+", url):
        raise errors.ConfigError(f"{ENV_URL}: expected an http(s) URL", variable=ENV_URL)
    if not model.strip():
        raise errors.ConfigError(f"{ENV_MODEL}: required when {ENV_URL} is set",
                                 variable=ENV_MODEL)
    if not url.endswith("/chat/completions"):
        url += "/chat/completions"
    return ChatClient(url, model.strip(), api_key.strip())


def write_script(client: ChatClient, request: Mapping[str, Any], script_id: str) -> dict[str, Any]:
    """Asks the LLM for a script and returns it as ``script_data`` with ``script_id``.

    Raises:
        LLMError: The call failed or the answer is not a valid script.
    """
    brief = {"topic": request["topic"], "persona": request.get("persona") or None,
             "topics": [{"title": t["title_suggestion"], "keywords": t["keywords"],
                         "summary": t["summary"]} for t in request["topics"]],
             "content": request["content"]}
    if request.get("revision_notes"):  # a reviewer rejected the last script: say what to fix
        brief["revision_notes"] = request["revision_notes"]
    answer = client.complete(SYSTEM_PROMPT % {"script_id": script_id},
                             json.dumps(brief, ensure_ascii=False))
    return parse_script(answer, script_id)


def parse_script(answer: str, script_id: str) -> dict[str, Any]:
    """Turns the model's text into validated ``script_data`` (fences and chatter stripped).

    Raises:
        LLMError: No JSON object in the text, or one that fails :func:`results.script`.
    """
    data = _json_object(answer)
    if isinstance(data.get("script_data"), Mapping):  # some models wrap it once more
        data = data["script_data"]
    data = {**data, "script_id": script_id}  # ours, whatever the model made up
    try:
        results.script({"script_data": data})
    except errors.InvalidAgentResult as exc:
        raise LLMError(f"answer is not a script: {exc}") from None
    _check_size(data["segments"])
    return {"script_id": script_id, "title": data["title"].strip(),
            "segments": [{"segment_title": s["segment_title"],
                          "lines": [{"speaker": line["speaker"], "text": line["text"]}
                                    for line in s["lines"]]} for s in data["segments"]]}


def _check_size(segments: list[Any]) -> None:
    lines = [line for segment in segments for line in segment["lines"]]
    if len(lines) > MAX_LINES or sum(len(line["text"]) for line in lines) > MAX_SCRIPT_CHARS:
        raise LLMError(f"answer is too long: over {MAX_LINES} lines or {MAX_SCRIPT_CHARS} "
                       f"characters")
    if any(len(line["speaker"]) > MAX_SPEAKER_CHARS for line in lines):
        raise LLMError(f"answer has a speaker name over {MAX_SPEAKER_CHARS} characters")


def _json_object(answer: str) -> dict[str, Any]:
    fenced = _FENCE.match(answer)
    text = fenced.group(1) if fenced else answer.strip()
    try:
        value = json.loads(text)
    except ValueError:
        # Chatty models put prose around the object: try the outermost braces once.
        start, end = text.find("{"), text.rfind("}")
        try:
            value = json.loads(text[start:end + 1]) if 0 <= start < end else None
        except ValueError:
            value = None
        if value is None:
            raise LLMError(f"answer is not JSON: {_clip(answer)}") from None
    if not isinstance(value, dict):
        raise LLMError(f"answer is not a JSON object: {_clip(answer)}")
    return value


def _message_content(raw: bytes) -> str:
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError):
        raise LLMError(f"not a chat completion: {_clip(raw.decode(errors='replace'))}") from None
    if not isinstance(content, str) or not content.strip():
        raise LLMError("chat completion without message content")
    return content


def _clip(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
