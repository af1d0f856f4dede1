"""Scenario 6, bad agent replies: hypothesis-generated HTTP answers against the real client.

Each generated reply is written byte for byte by a raw loopback HTTP server (a real socket) to a
real ``AgentClient`` through ``attempt.act`` (one submit or one poll of one step): wrong types,
missing and extra fields, invalid JSON, non-UTF-8 bytes, deep nesting, bodies over
``CPOA_MAX_RESPONSE_BYTES`` (4096 here, also gzip bombs), wrong content types, huge strings, odd
status codes, malformed HTTP, odd ``Retry-After`` values and Unicode that PostgreSQL cannot store.

The promise: no exception escapes; a bad reply leaves its step failed (or transient, for
answers the contract calls transient) with a reason naming the field or the problem; a good one
still succeeds. Every 50th reply, and the first few of each kind that is hard to store (NUL,
lone surrogates, deep nesting), is also driven end to end through ``Engine.advance`` on a
database, next to healthy "bystander" workflows that must all complete untouched.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import gzip
import json
import logging
import math
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import requests
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from bench.chaos import common
from bench.chaos.scenario_agent_outage import capture_logs
from cpoa import attempt, defaults, logs, models, steps
from cpoa import settings as settings_module
from cpoa.agents.client import (
    MAX_JSON_DEPTH,
    PENDING_STATUSES,
    TRANSIENT_STATUS,
    AgentClient,
)
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.testing.agent import ScriptedAgent, default_result
from cpoa.testing.agent import agent_env

LIMIT = 4096
"""CPOA_MAX_RESPONSE_BYTES for this scenario."""
SEED = 20240604
DB_EVERY = 50
REASON_MAX_CHARS = 1200
"""A failure reason quotes at most 500 characters of a body: a longer one is a clipping bug."""

STEPS = {  # state: (kind, agent, path)
    "fetching": ("podcast", "WCHA", "/harvest"),
    "analyzing": ("podcast", "TDA", "/discover_topics"),
    "scripting": ("podcast", "PSWA", "/weave_script"),
    "synthesizing": ("podcast", "VFA", "/forge_voice"),
    "imaging": ("podcast", "IGA", "/generate_image"),
    "crafting": ("snippets", "SCA", "/craft_snippet"),
}
FIELDS = {  # the result fields CPOA validates (contract §3), with the kind of value each takes
    "fetching": [("content", "text"), ("source_urls", "list_str_opt")],
    "analyzing": [("discovered_topics", "list_obj"), ("discovered_topics[0].topic_id", "text"),
                  ("discovered_topics[0].title_suggestion", "text"),
                  ("discovered_topics[0].summary", "text_empty_ok"),
                  ("discovered_topics[0].keywords", "list_str"),
                  ("discovered_topics[0].relevance_score", "number")],
    "scripting": [("script_data", "object"), ("script_data.script_id", "text"),
                  ("script_data.title", "text"), ("script_data.segments", "list_obj_nonempty"),
                  ("script_data.segments[0].segment_title", "text_empty_ok"),
                  ("script_data.segments[0].lines", "list_obj"),
                  ("script_data.segments[0].lines[0].speaker", "text"),
                  ("script_data.segments[0].lines[0].text", "text")],
    "synthesizing": [("audio_url", "text"), ("audio_format", "text"), ("duration_s", "number"),
                     ("stream_id", "text"), ("tts_settings_used", "object_opt")],
    "imaging": [("image_url", "text")],
    "crafting": [("snippet_id", "text"), ("topic_id", "text"), ("title", "text"),
                 ("text_content", "text"), ("summary", "text_empty_ok"),
                 ("cover_art_prompt", "text_opt")],
}
ODD_VALUES = [None, True, False, 0, -1, 2.5, float("nan"), 1e308, "", " ", "x", "\u3000",
              [], [1], ["x"], [{}], {}, {"a": 1}]
UNICODE_EDGES = ["\\u0000", "a\\u0000b", "\\ud800", "x\\udfff", "\\ud83d\\ude00", "\\u202e",
                 "\\ufeff", "\\u0007bell", "\\u3000", "\\u200b", "caf\\u00e9", "\\uffff"]
BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe9t\xe9", b"\x80abc"]
STATUS_URLS = ["/v1/tasks/t1", "relative/t1", "//other.example/t1", "http://127.0.0.1:1/t",
               "https://agent.example/t", "", None, 5, ["x"], "ftp://x/y",
               "javascript:alert(1)", "file:///etc/passwd", "data:,x"]
ODD_CODES = [101, 102, 103, 199, 200, 201, 202, 203, 204, 205, 206, 226, 299, 300, 301, 302, 304,
             307, 308, 399, 400, 401, 403, 404, 405, 408, 409, 410, 413, 418, 422, 425, 429,
             451, 499, 500, 501, 502, 503, 504, 505, 507, 511, 599, 600, 799, 999]
RETRY_AFTER = ["0", "0.001", "-5", "nan", "NaN", "inf", "-inf", "1e9", "1e20", "3e11",
               "9" * 400, "abc", "", "Wed, 21 Oct 2015 07:28:00 GMT", "6", "120"]
CONTENT_TYPES = [None, "application/json", "text/html", "text/plain", "application/xml",
                 "application/octet-stream", "application/json; charset=latin-1", "\x7f/\x01"]
BAD_HTTP = [b"", b"HELLO\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 150 + b"Content-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nX-A: " + b"b" * 70000 + b"\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nGARBAGE\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 7\r\n\r\nnotgzip",
            b"HTTP/1.1 200 O\x00K\r\nX-B: \xff\xfe\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 -1 OK\r\n\r\n", b"HTTP/2 200\r\n\r\n{}", b"\x16\x03\x01\x02\x00\x01"]


@dataclasses.dataclass(frozen=True)
class Case:
    """One generated reply and what the contract says must come of it.

    Attributes:
        category: What kind of damage it carries.
        state: The step it answers (fetching, analyzing, ...).
        phase: ``"submit"`` (the POST) or ``"poll"`` (a GET of the status URL).
        raw: The HTTP response, byte for byte.
        expect: The outcomes allowed (succeeded, open, transient, failed); None when any
            documented outcome will do (malformed HTTP).
        reason: A pattern the reason of a failed or transient step must match.
    """

    category: str
    state: str
    phase: str
    raw: bytes
    expect: frozenset[str] | None
    reason: str | None = None
    storage: str = ""
    """Why this reply is hard to store ("nul", "surrogate", "deep"), for the database sample."""


# -- the raw HTTP server ---------------------------------------------------------------------

class RawServer:
    """Answers every request with the configured bytes (per method), then closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.replies = {"POST": b"", "GET": b""}
        self.served: collections.Counter[str] = collections.Counter()
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, name="raw-agent", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):  # wakes accept()
            socket.create_connection(self.sock.getsockname(), timeout=5).close()
        self.thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.stopping:
                conn.close()
                return
            with conn:
                conn.settimeout(5)
                try:
                    method = _read_request(conn)
                    self.served[method] += 1
                    conn.sendall(self.replies.get(method, b""))
                    conn.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the client stopped reading (a body over its limit)


def _read_request(conn: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("request cut")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head.split(b" ", 1)[0].decode()


def response(code: int, body: bytes, *, content_type: str | None = "application/json",
             framing: str = "length", gzipped: bool = False,
             headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """An HTTP/1.1 response: ``framing`` is length (Content-Length), close or chunked."""
    lines = [f"HTTP/1.1 {code} Reply"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    payload = gzip.compress(body) if gzipped else body
    if gzipped:
        lines.append("Content-Encoding: gzip")
    if framing == "length":
        lines.append(f"Content-Length: {len(payload)}")
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 1000]), payload[i:i + 1000])
                           for i in range(0, len(payload), 1000)) + b"0\r\n\r\n"
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


# -- the oracle: what contract §2 says a reply means ----------------------------------------

def reference_parse(body: bytes) -> Any:
    """The body as JSON, or None (the client's reading, done independently): not JSON, or
    containers nested deeper than the client's MAX_JSON_DEPTH."""
    try:
        value = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None
    return None if _nesting(value) > MAX_JSON_DEPTH else value


def _as_stored(text: str | None) -> str | None:
    """Text as PostgreSQL keeps it: CPOA stores U+0000 and lone surrogates as U+FFFD."""
    if text is None:
        return None
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _nesting(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((c, depth + 1) for c in (item.values() if isinstance(item, dict)
                                                   else item))
    return deepest


def expectation(code: int, body: bytes, phase: str, result_expect: tuple | None,
                declared: int | None = None) -> tuple[frozenset[str] | None, str | None]:
    """Outcomes allowed for a reply, and the pattern its reason must match.

    Args:
        result_expect: For a SUCCESS reply, what validating its ``result`` must give:
            ``("ok",)`` or ``("failed", pattern)``; None when unknown.
    """
    if 100 <= code < 200 or code in (204, 304):
        body = b""  # http.client reads no body for these
    transient_code = code in TRANSIENT_STATUS or code >= 500
    if len(body) > LIMIT or (declared or 0) > LIMIT:
        if transient_code:
            return frozenset({"transient"}), None
        return frozenset({"failed"}), r"exceeds the \d+-byte limit"
    payload = reference_parse(body)
    answered = isinstance(payload, dict) and "status" in payload
    if code in TRANSIENT_STATUS or (code >= 500 and not answered):
        return frozenset({"transient"}), None
    if 400 <= code < 500 and code != 409 and not (code == 404 and phase == "poll"):
        return frozenset({"failed"}), rf"rejected the request with HTTP {code}"
    if 300 <= code < 400:
        return frozenset({"failed"}), rf"redirect \(HTTP {code}\)"
    if code not in (404, 409) and not isinstance(payload, dict):
        return frozenset({"failed"}), "expected a JSON object"
    if code == 409 or (code == 404 and phase == "poll"):
        return frozenset({"open"}), None  # busy, pending, or lost (submitted again)
    if phase == "submit" and code == 202:
        return _accepted(payload)
    return _task_reply(payload, result_expect)


def _accepted(payload: dict) -> tuple[frozenset[str], str | None]:
    for field in ("task_id", "status_url"):
        if not isinstance(payload.get(field), str) or not payload[field]:
            return frozenset({"failed"}), f"'{field}'"
    if not _http_url(payload["status_url"]):
        return frozenset({"failed"}), "'status_url'"
    return frozenset({"open"}), None


def _task_reply(payload: dict, result_expect: tuple | None) -> tuple[frozenset[str] | None,
                                                                      str | None]:
    status = payload.get("status")
    if status == "SUCCESS":
        if "result" not in payload:
            return frozenset({"failed"}), "'result'"
        if result_expect is None:
            return None, None
        if result_expect[0] == "ok":
            return frozenset({"succeeded"}), None
        return frozenset({"failed"}), result_expect[1]
    if status == "FAILURE":
        return frozenset({"failed"}), "task failed"
    if isinstance(status, str) and status in PENDING_STATUSES:
        url = payload.get("status_url")
        if isinstance(url, str) and not _http_url(url):
            return frozenset({"failed"}), "'status_url'"
        return frozenset({"open"}), None
    return frozenset({"failed"}), "'status'"


def _http_url(url: str) -> bool:
    joined = urllib.parse.urljoin("http://agent.example/", url)
    return urllib.parse.urlsplit(joined).scheme in ("http", "https")


def valid(kind: str, value: Any) -> bool:
    """Whether a value of a result field passes contract §3 (the generator's own model)."""
    if kind == "text":
        return isinstance(value, str) and bool(value.strip())
    if kind == "text_empty_ok":
        return isinstance(value, str)
    if kind == "text_opt":
        return value is None or isinstance(value, str)
    if kind == "number":
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and not math.isnan(value))
    if kind in ("list_str", "list_str_opt"):
        return (value is None and kind.endswith("_opt")) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value))
    if kind == "list_obj":
        return value == []  # any non-empty list here lacks the items' own fields
    if kind == "object_opt":
        return value is None or isinstance(value, dict)
    return False  # object, list_obj_nonempty: nothing in ODD_VALUES is a complete one


# -- generating replies ----------------------------------------------------------------------

def _path(path: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"\.|\[|\]\.?", path) if p != ""]


def _set(obj: Any, path: str, value: Any, delete: bool = False) -> None:
    keys = _path(path)
    for key in keys[:-1]:
        obj = obj[key]
    if delete:
        del obj[keys[-1]]
    else:
        obj[keys[-1]] = value


def _base_result(state: str) -> dict[str, Any]:
    _, _, path = STEPS[state]
    return json.loads(json.dumps(default_result(path, {"topic": "t", "topic_id": "t0"})))


def _envelope(result: Any, **extra: Any) -> dict[str, Any]:
    return {"task_id": "t1", "status": "SUCCESS", "result": result, **extra}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Draws one reply of one category."""
    category = draw(st.sampled_from(sorted(GENERATORS)))
    state = draw(st.sampled_from(sorted(STEPS)))
    phase = draw(st.sampled_from(["submit", "poll"]))
    return GENERATORS[category](draw, state, phase)


def _success(draw: st.DrawFn, state: str, phase: str, category: str, result: Any,
             result_expect: tuple, *, extra: dict | None = None, storage: str = "",
             body: bytes | None = None) -> Case:
    """A SUCCESS reply carrying ``result`` (200, or 202 on a poll), in a random framing."""
    code = 200 if phase == "submit" else draw(st.sampled_from([200, 202]))
    body = body if body is not None else _dumps(_envelope(result, **(extra or {})))
    raw = response(code, body, framing=draw(st.sampled_from(["length", "close", "chunked"])))
    expect, reason = expectation(code, body, phase, result_expect)
    return Case(category, state, phase, raw, expect, reason, storage or _storage(body))


def gen_valid(draw: st.DrawFn, state: str, phase: str) -> Case:
    if phase == "submit" and draw(st.booleans()):
        body = _dumps({"task_id": "t1", "status_url": draw(st.sampled_from(
            ["/v1/tasks/t1", "relative/t1", "http://127.0.0.1:9/x"]))})
        return Case("valid", state, phase, response(202, body), frozenset({"open"}))
    if phase == "poll" and draw(st.booleans()):
        body = _dumps({"task_id": "t1", "status": draw(st.sampled_from(sorted(PENDING_STATUSES)))})
        code = draw(st.sampled_from([200, 202]))
        return Case("valid", state, phase, response(code, body), frozenset({"open"}))
    result = _base_result(state)
    if draw(st.booleans()) and state != "crafting":
        result["status"] = draw(st.sampled_from(["success", "partial_success"]))
    return _success(draw, state, phase, "valid", result, ("ok",))


def gen_extra_fields(draw: st.DrawFn, state: str, phase: str) -> Case:
    result = _base_result(state)
    where = draw(st.sampled_from(["result", "envelope", "nested"]))
    extra = draw(st.dictionaries(st.text(min_size=1, max_size=12).filter(
        lambda k: k not in ("status", "result", "task_id", "status_url")),
        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8),
        min_size=1, max_size=4))
    envelope_extra = {}
    if where == "result":
        extra = {k: v for k, v in extra.items() if k not in dict(FIELDS[state])}
        result.update(extra)
    elif where == "envelope":
        envelope_extra = extra
    else:
        target = {"analyzing": "discovered_topics[0]", "scripting": "script_data"}.get(state)
        if target is None:
            result.update({k: v for k, v in extra.items() if k not in dict(FIELDS[state])})
        else:
            node = result
            for key in _path(target):
                node = node[key]
            fields = {p.rsplit(".", 1)[-1] for p, _ in FIELDS[state]}
            node.update({k: v for k, v in extra.items() if k not in fields})
    return _success(draw, state, phase, "extra_fields", result, ("ok",), extra=envelope_extra)


def gen_content_type(draw: st.DrawFn, state: str, phase: str) -> Case:
    body = _dumps(_envelope(_base_result(state)))
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    raw = response(200, body, content_type=content_type,
                   framing=draw(st.sampled_from(["length", "close", "chunked"])),
                   gzipped=draw(st.booleans()))
    expect, reason = expectation(200, body, phase, ("ok",))
    return Case("content_type", state, phase, raw, expect, reason)


def gen_missing_field(draw: st.DrawFn, state: str, phase: str) -> Case:
    result = _base_result(state)
    path, kind = draw(st.sampled_from(FIELDS[state]))
    _set(result, path, None, delete=True)
    result_expect = ("ok",) if kind.endswith("_opt") else (
        "failed", re.escape(f"result.{path}"))
    return _success(draw, state, phase, "missing_field", result, result_expect)


def gen_wrong_type(draw: st.DrawFn, state: str, phase: str) -> Case:
    result = _base_result(state)
    path, kind = draw(st.sampled_from(FIELDS[state]))
    value = draw(st.sampled_from(ODD_VALUES))
    _set(result, path, value)
    result_expect = ("ok",) if valid(kind, value) else ("failed", re.escape(f"result.{path}"))
    return _success(draw, state, phase, "wrong_type", result, result_expect)


def gen_result_not_object(draw: st.DrawFn, state: str, phase: str) -> Case:
    value = draw(st.sampled_from([None, [], [1], "text", 5, True]))
    return _success(draw, state, phase, "result_not_object", value,
                    ("failed", r"result must be an object"))


def gen_business_status(draw: st.DrawFn, state: str, phase: str) -> Case:
    result = _base_result(state)
    status = draw(st.sampled_from(["error", "skipped", "partial_success", "success", "SUCCESS",
                                   "", None, 1, "unknown"]))
    result["status"] = status
    result["message"] = draw(st.sampled_from(["it broke", "", "x" * 3000, "nul \u0000 here"]))
    result["error_code"] = draw(st.sampled_from([None, "E42", 7]))
    result_expect = {"error": ("failed", "reported an error"),
                     "skipped": ("failed", "skipped the work"),
                     "partial_success": ("ok",), "success": ("ok",)}.get(
        status, ("failed", r"result\.status"))
    return _success(draw, state, phase, "business_status", result, result_expect)


def gen_envelope(draw: st.DrawFn, state: str, phase: str) -> Case:
    if phase == "submit" and draw(st.booleans()):
        payload: dict[str, Any] = {}
        for field, values in (("task_id", ["t1", "", None, 5, ["t"]]), ("status_url", STATUS_URLS)):
            value = draw(st.sampled_from(values + ["<missing>"]))
            if value != "<missing>":
                payload[field] = value
        body = _dumps(payload)
        expect, reason = expectation(202, body, phase, None)
        return Case("envelope", state, phase, response(202, body), expect, reason)
    payload = _envelope(_base_result(state))
    change = draw(st.sampled_from(["status", "no_result", "task_id", "pending_url"]))
    if change == "status":
        payload["status"] = draw(st.sampled_from(["success", "DONE", "", None, 5, ["SUCCESS"],
                                                  "SUCCESS ", "<missing>"]))
        if payload["status"] == "<missing>":
            del payload["status"]
    elif change == "no_result":
        del payload["result"]
    elif change == "task_id":
        payload["task_id"] = draw(st.sampled_from([None, 5, {}, "", "x" * 300]))
    else:
        payload = {"task_id": "t1", "status": "PENDING",
                   "status_url": draw(st.sampled_from(STATUS_URLS))}
    body = _dumps(payload)
    code = 200 if phase == "submit" else draw(st.sampled_from([200, 202]))
    expect, reason = expectation(code, body, phase, ("ok",))
    return Case("envelope", state, phase, response(code, body), expect, reason)


def gen_failure_reply(draw: st.DrawFn, state: str, phase: str) -> Case:
    error = draw(st.sampled_from([None, "", "boom", {"message": "m", "error_code": "E1"},
                                  {"error": "x"}, {}, [1, 2], 5, "e" * 3000,
                                  {"message": "nul \u0000"}, "<script>alert(1)</script>"]))
    body = _dumps({"task_id": "t1", "status": "FAILURE", "error": error})
    code = draw(st.sampled_from([200, 500] + ([202] if phase == "poll" else [])))
    expect, reason = expectation(code, body, phase, None)
    return Case("failure_reply", state, phase, response(code, body), expect, reason,
                _storage(body))


def gen_not_object(draw: st.DrawFn, state: str, phase: str) -> Case:
    body = _dumps(draw(st.sampled_from([[], [1, 2], "text", 5, None, True,
                                        [{"status": "SUCCESS"}]])))
    code = draw(st.sampled_from([200, 201, 202, 400, 422, 500]))
    expect, reason = expectation(code, body, phase, None)
    return Case("not_object", state, phase, response(code, body), expect, reason)


def gen_invalid_json(draw: st.DrawFn, state: str, phase: str) -> Case:
    original = _envelope(_base_result(state))
    body = bytearray(_dumps(original))
    how = draw(st.sampled_from(["truncate", "insert", "delete", "quotes", "trailing"]))
    at = draw(st.integers(1, len(body) - 1))
    if how == "truncate":
        del body[at:]
    elif how == "insert":
        body[at:at] = draw(st.sampled_from([b"{", b"}", b",", b":", b'"', b"'", b"\\", b"x",
                                            b"\x00", b"/*c*/"]))
    elif how == "delete":
        del body[at]
    elif how == "quotes":
        body = bytearray(bytes(body).replace(b'"', b"'"))
    else:
        body += draw(st.sampled_from([b",", b"}", b"garbage", b"\x00", b"{}"]))
    body = bytes(body)
    parsed = reference_parse(body)
    code = 200 if phase == "submit" else draw(st.sampled_from([200, 202, 500]))
    if parsed is None or not isinstance(parsed, dict):
        expect, reason = expectation(code, body, phase, None)
    elif parsed == original:
        expect, reason = expectation(code, body, phase, ("ok",))
    else:
        expect, reason = None, None  # still JSON, but something else: any documented outcome
    return Case("invalid_json", state, phase, response(code, body), expect, reason)


def gen_non_utf8(draw: st.DrawFn, state: str, phase: str) -> Case:
    text = _dumps(_envelope(_base_result(state)))
    bad = draw(st.sampled_from(BAD_UTF8))
    body = text.replace(b'"t1"', b'"t1' + bad + b'"', 1)
    code = draw(st.sampled_from([200, 422, 500]))
    expect, reason = expectation(code, body, phase, None)
    return Case("non_utf8", state, phase, response(code, body), expect, reason)


def gen_deep_nesting(draw: st.DrawFn, state: str, phase: str) -> Case:
    where = draw(st.sampled_from(["envelope", "result"]))
    # Depths chosen away from the parser's recursion limit, where the answer would depend on
    # the caller's stack depth rather than on the reply.
    depth = draw(st.integers(2, 300) | st.integers(450, 900) | st.integers(1500, 4000))
    if where == "envelope":
        opening, closing = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        body = opening * depth + b"1" + closing * depth
        code = 200 if phase == "submit" else draw(st.sampled_from([200, 202]))
        expect, reason = expectation(code, body, phase, None)
        return Case("deep_nesting", state, phase, response(code, body), expect, reason)
    depth = draw(st.integers(2, 300) | st.integers(550, 900))  # parseable: reaches validation
    result = _base_result(state)
    holder = result["script_data"] if state == "scripting" else result
    key = draw(st.sampled_from(["extra", "segments", "turns"]))  # VFA keeps these two
    if key in holder or key in dict(FIELDS[state]):
        key = "extra"
    holder[key] = "@@DEEP@@"
    body = _dumps(_envelope(result)).replace(b'"@@DEEP@@"', b"[" * depth + b"]" * depth)
    return _success(draw, state, phase, "deep_nesting", result, ("ok",), storage="deep",
                    body=body)


def gen_oversize(draw: st.DrawFn, state: str, phase: str) -> Case:
    size = draw(st.integers(LIMIT - 200, 6 * LIMIT))
    gzipped = draw(st.booleans())
    if gzipped and draw(st.booleans()):
        size = draw(st.integers(10_000, 3_000_000))  # a gzip bomb: small on the wire
    result = _base_result(state)
    result["padding"] = "p" * size
    body = _dumps(_envelope(result))
    code = draw(st.sampled_from([200, 202, 200, 422, 500, 503]))
    framing = draw(st.sampled_from(["length", "close", "chunked"]))
    raw = response(code, body, framing=framing, gzipped=gzipped)
    wire = len(gzip.compress(body)) if gzipped else len(body)
    declared = wire if framing == "length" else None
    expect, reason = expectation(code, body, phase, ("ok",), declared=declared)
    return Case("oversize", state, phase, raw, expect, reason)


def gen_huge_string(draw: st.DrawFn, state: str, phase: str) -> Case:
    char = draw(st.sampled_from(["a", "é", "😀", " ", "\\n", "<"]))
    count = draw(st.integers(500, 3500))
    where = draw(st.sampled_from(["field", "error", "reject"]))
    if where == "reject":
        code = draw(st.sampled_from([400, 413, 422]))
        body = ("bad field " + char * count).encode()
        expect, reason = expectation(code, body, phase, None)
        return Case("huge_string", state, phase, response(code, body, content_type="text/plain"),
                    expect, reason)
    if where == "error":
        body = _dumps({"task_id": "t1", "status": "FAILURE", "error": {"message": char * count}})
        expect, reason = expectation(200, body, phase, None)
        return Case("huge_string", state, phase, response(200, body), expect, reason)
    path, kind = draw(st.sampled_from([f for f in FIELDS[state] if f[1].startswith("text")]))
    result = _base_result(state)
    _set(result, path, "@@HUGE@@")
    body = _dumps(_envelope(result)).replace(b"@@HUGE@@", (char * count).encode())
    value = json.loads(f'"{char * count}"')
    result_expect = ("ok",) if valid(kind, value) else ("failed", re.escape(f"result.{path}"))
    return _success(draw, state, phase, "huge_string", result, result_expect, body=body)


def gen_odd_status(draw: st.DrawFn, state: str, phase: str) -> Case:
    code = draw(st.sampled_from(ODD_CODES))
    payload = draw(st.sampled_from(["success", "failure", "pending", "accepted", "empty",
                                    "garbage", "list"]))
    body = {"success": _dumps(_envelope(_base_result(state))),
            "failure": _dumps({"status": "FAILURE", "error": "no"}),
            "pending": _dumps({"task_id": "t1", "status": "PENDING"}),
            "accepted": _dumps({"task_id": "t1", "status_url": "/v1/tasks/t1"}),
            "empty": b"", "garbage": b"<html>oops</html>", "list": b"[]"}[payload]
    expect, reason = expectation(code, body, phase, ("ok",))
    return Case("odd_status", state, phase, response(code, body), expect, reason)


def gen_bad_http(draw: st.DrawFn, state: str, phase: str) -> Case:
    if draw(st.booleans()):
        raw = draw(st.sampled_from(BAD_HTTP))
        return Case("bad_http", state, phase, raw, None)
    body = _dumps(_envelope(_base_result(state)))
    inner = response(200, body)
    raw = b"HTTP/1.1 100 Continue\r\n\r\n" + inner  # an interim answer before the real one
    expect, reason = expectation(200, body, phase, ("ok",))
    return Case("bad_http", state, phase, raw, expect, reason)


def gen_retry_after(draw: st.DrawFn, state: str, phase: str) -> Case:
    code = draw(st.sampled_from([429, 503]))
    value = draw(st.sampled_from(RETRY_AFTER))
    body = draw(st.sampled_from([b"", b'{"error": "busy"}']))
    raw = response(code, body, headers=(("Retry-After", value),))
    return Case("retry_after", state, phase, raw, frozenset({"transient"}))


def gen_unicode_edge(draw: st.DrawFn, state: str, phase: str) -> Case:
    escape = draw(st.sampled_from(UNICODE_EDGES))
    path, kind = draw(st.sampled_from([f for f in FIELDS[state] if f[1].startswith("text")]))
    result = _base_result(state)
    _set(result, path, "@@EDGE@@")
    body = json.dumps(_envelope(result)).encode().replace(b"@@EDGE@@", escape.encode())
    value = json.loads(f'"{escape}"')
    result_expect = ("ok",) if valid(kind, value) else ("failed", re.escape(f"result.{path}"))
    return _success(draw, state, phase, "unicode_edge", result, result_expect, body=body)


GENERATORS: dict[str, Callable[[st.DrawFn, str, str], Case]] = {
    "valid": gen_valid, "extra_fields": gen_extra_fields, "content_type": gen_content_type,
    "missing_field": gen_missing_field, "wrong_type": gen_wrong_type,
    "result_not_object": gen_result_not_object, "business_status": gen_business_status,
    "envelope": gen_envelope, "failure_reply": gen_failure_reply, "not_object": gen_not_object,
    "invalid_json": gen_invalid_json, "non_utf8": gen_non_utf8, "deep_nesting": gen_deep_nesting,
    "oversize": gen_oversize, "huge_string": gen_huge_string, "odd_status": gen_odd_status,
    "bad_http": gen_bad_http, "retry_after": gen_retry_after, "unicode_edge": gen_unicode_edge,
}


def _storage(body: bytes) -> str:
    """Why PostgreSQL may refuse what this body carries: NUL, a lone surrogate, deep nesting."""
    if b"\\u0000" in body or b"\x00" in body:
        return "nul"
    if re.search(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}", body):
        return "surrogate"
    depth = deepest = 0
    for byte in body:
        depth += byte in b"[{"
        depth -= byte in b"]}"
        deepest = max(deepest, depth)
    return "deep" if deepest >= 100 else ""


# -- running one reply -----------------------------------------------------------------------

@dataclasses.dataclass
class Harness:
    """The raw agent, the settings and workflows each step is acted on."""

    raw: RawServer
    settings: settings_module.Settings
    workflows: dict[str, models.Workflow]

    @classmethod
    def build(cls, raw: RawServer) -> Harness:
        env = {f"{agent}_SERVICE_URL": raw.url for _, agent, _ in STEPS.values()}
        settings = settings_module.from_env(agent_env(
            raw.url, CPOA_MAX_RESPONSE_BYTES=str(LIMIT),
            CPOA_SERVICE_RETRY_BACKOFF_FACTOR="0.0001", **env))
        return cls(raw, settings, {state: _workflow(state) for state in STEPS})

    def act(self, case: Case) -> tuple[str, models.Task | None, str]:
        """Serves the case to one submit or poll; returns (outcome, task, error)."""
        self.raw.replies = {"POST": case.raw, "GET": case.raw}
        workflow = self.workflows[case.state]
        step = steps.step_for(workflow)
        item = (None if case.state != "crafting"
                else workflow.context["topics"][0])
        now = datetime.datetime.now(datetime.UTC)
        task = models.Task(uuid.uuid4(), workflow.workflow_id, step.agent, case.state,
                           f"{workflow.workflow_id}_key")
        if case.phase == "poll":
            task = task.evolve(status="submitted", external_task_id="t1",
                               status_url=self.raw.url + "/v1/tasks/t1",
                               first_submitted_at=now - datetime.timedelta(seconds=1),
                               poll_deadline_at=now + datetime.timedelta(seconds=300))
        client = AgentClient(self.settings, requests.Session(), submit_timeout_s=5,
                             poll_timeout_s=5)
        log = logs.for_workflow(logging.getLogger("cpoa.chaos"), workflow.workflow_id)
        try:
            task = attempt.act(client, self.settings, step, workflow, task, item,
                               lambda: datetime.datetime.now(datetime.UTC), log)
        except Exception as exc:  # noqa: BLE001 -- the promise under test: nothing escapes
            return "exception", None, f"{type(exc).__name__}: {exc}"[:200]
        finally:
            client.session.close()
        return classify(task), task, ""


def _workflow(state: str) -> models.Workflow:
    kind = STEPS[state][0]
    if kind == "snippets":
        topic = _base_result("analyzing")["discovered_topics"][0]
        return models.Workflow(uuid.uuid4(), kind, state, {"query": "q", "limit": 2},
                               {"topics": [topic]}, [])
    context = {"content": "Some content.", "topics": _base_result("analyzing")["discovered_topics"],
               "script": _base_result("scripting")["script_data"]}
    return models.Workflow(uuid.uuid4(), kind, state, {"topic": "t", "urls": []}, context, [])


def classify(task: models.Task) -> str:
    """succeeded, failed, transient (open after a transient error) or open."""
    if task.status in ("succeeded", "failed"):
        return task.status
    return "transient" if (task.error_details_json or {}).get("transient") else "open"


def reason_of(task: models.Task | None) -> str:
    return str((task.error_details_json or {}).get("reason") or "") if task else ""


def violation(case: Case, outcome: str, task: models.Task | None) -> str:
    """Why this outcome breaks the promise, or "" when it keeps it."""
    reason = reason_of(task)
    if outcome == "exception":
        return "an exception escaped"
    if outcome in ("failed", "transient") and not reason.strip():
        return "no reason"
    if len(reason) > REASON_MAX_CHARS:
        return f"reason of {len(reason)} characters"
    if case.expect is not None and outcome not in case.expect:
        return f"expected {sorted(case.expect)}"
    if case.reason and outcome == "failed" and not re.search(case.reason, reason):
        return f"reason does not match {case.reason!r}"
    return ""


# -- the database sample ---------------------------------------------------------------------

class DatabaseSample:
    """Victims driven through Engine.advance into the bad reply; healthy bystanders beside them."""

    def __init__(self, store: PostgresStore, raw: RawServer, healthy: ScriptedAgent) -> None:
        self.store, self.raw = store, raw
        self.engines: dict[str, Engine] = {}
        for state, (kind, agent, _) in STEPS.items():
            if kind == "podcast":
                self.engines[state] = Engine(store, settings_module.from_env(agent_env(
                    healthy.url, CPOA_MAX_RESPONSE_BYTES=str(LIMIT),
                    CPOA_SERVICE_RETRY_BACKOFF_FACTOR="0.0001",
                    **{f"{agent}_SERVICE_URL": raw.url,
                       f"CPOA_{agent}_POLLING_INTERVAL_SECONDS": "0.001"})))
        self.healthy = Engine(store, settings_module.from_env(agent_env(healthy.url)))
        self.bystanders: list[uuid.UUID] = []
        self.running: list[uuid.UUID] = []
        self.results: collections.Counter[str] = collections.Counter()
        self.exceptions: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []

    def run(self, case: Case, outcome: str, task: models.Task | None) -> None:
        self.bystanders.append(self.healthy.start_workflow("podcast", {"topic": "bystander"}))
        self.running = [w for w in self.running + self.bystanders[-1:]
                        if self.healthy.advance(w) not in ("completed", "failed", "cancelled")]
        verdict = self._victim(case, outcome, task)
        self.results[verdict.split(":", 1)[0]] += 1
        if verdict.startswith("exception:"):
            self.exceptions[verdict.split(":", 2)[1].strip()] += 1
        if verdict != "consistent" and sum(e.startswith(case.storage or "-")
                                           for e in self.examples) < 3:
            self.examples.append(f"{case.storage or '-'}: {case.category}/{case.state}/"
                                 f"{case.phase} {verdict}"[:300])

    def _victim(self, case: Case, outcome: str, task: models.Task | None) -> str:
        self._close_breakers()
        engine = self.engines[case.state]
        engine.client.session = requests.Session()
        workflow_id = engine.start_workflow("podcast", {"topic": "bad replies"})
        def reached() -> bool:  # the earlier steps run on the healthy agent
            if self.store.get_workflow(workflow_id).state == case.state:
                return True
            engine.advance(workflow_id)
            return False
        if not _wait(reached, 10):
            return "mismatch: never reached the state"
        accepted = response(202, b'{"task_id": "t1", "status_url": "/v1/tasks/t1"}')
        self.raw.replies = {"POST": case.raw if case.phase == "submit" else accepted,
                            "GET": case.raw}
        polls = self.raw.served["GET"]
        try:
            engine.advance(workflow_id)
            if case.phase == "poll":
                _wait(lambda: engine.advance(workflow_id) and self.raw.served["GET"] > polls, 10)
        except Exception as exc:  # noqa: BLE001 -- an escaped exception is the finding
            return f"exception: {type(exc).__name__}: {exc}"[:240]
        return self._compare(case, workflow_id, outcome, task)

    def _close_breakers(self) -> None:
        """Every agent's breaker closed and its pause over: the earlier samples' bad replies
        (thousands, mostly failures in a row) open the breaker of the agent under test, which
        then holds this sample's submit (fleet-wide flow control, tested on its own in
        tests/integration/test_agent_health.py; this samples what one reply does)."""
        with self.store.pool.connection() as conn:
            conn.execute("UPDATE agent_flow SET failures = 0, paused_until = NULL, "
                         "pause_reason = NULL, breaker_pause_s = NULL")

    def _compare(self, case: Case, workflow_id: uuid.UUID, outcome: str,
                 task: models.Task | None) -> str:
        workflow = self.store.get_workflow(workflow_id)
        rows = [t for t in self.store.get_tasks(workflow_id) if t.step == case.state]
        if not rows:
            return "mismatch: no task row"
        stored, reason = classify(rows[-1]), reason_of(rows[-1])
        if outcome == "failed":
            expected_state = "finalizing" if case.state == "imaging" else "failed"
            if stored != "failed" or reason != _as_stored(reason_of(task)) or \
                    workflow.state != expected_state:
                return f"mismatch: {workflow.state}/{stored} for a failed step"
            if case.state == "imaging":
                return "consistent" if any(reason in w for w in workflow.warnings) else \
                    "mismatch: no warning"
            return ("consistent" if workflow.error_message == _as_stored(f"{case.state}: {reason}")
                    else "mismatch: error message")
        if outcome == "succeeded":
            return ("consistent" if stored == "succeeded"
                    and workflow.state not in (case.state, "failed")
                    else f"mismatch: {workflow.state}/{stored} for a good reply")
        return ("consistent" if stored in ("open", "transient") and workflow.state == case.state
                else f"mismatch: {workflow.state}/{stored} for an open step")

    def finish(self) -> dict[str, Any]:
        """Drives every bystander to its end; they must all complete, untouched. A bystander
        whose submit a breaker pause holds (the victims' failures open it for the whole fleet,
        up to BREAKER_MOST_PAUSE_S) is due when the pause ends."""
        def done() -> bool:
            return all(self.healthy.advance(w) == "completed" for w in self.bystanders)
        _wait(done, 60 + defaults.BREAKER_MOST_PAUSE_S)
        statuses = [self.healthy.get_workflow(w) for w in self.bystanders]
        clean = sum(s["state"] == "completed" and not s["warnings"] and not s["error"]
                    and len(s["history"]) == 7 for s in statuses)
        return {"bystanders": len(statuses), "bystanders_clean": clean}


def _wait(check: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.001)
    return False


# -- the scenario ----------------------------------------------------------------------------

def run(ctx: common.Context) -> dict[str, Any]:
    """Runs the scenario; returns ``ok`` and the figures."""
    count = 500 if ctx.quick else 10_000
    per_storage_kind = 4 if ctx.quick else 10  # per (kind, state)
    raw, healthy = RawServer(), ScriptedAgent(sync=True)
    outcomes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    violations: collections.Counter[str] = collections.Counter()
    escaped: collections.Counter[str] = collections.Counter()
    examples: list[str] = []
    storage_sampled: collections.Counter[tuple[str, str]] = collections.Counter()
    chosen: list[tuple[Case, str, models.Task | None]] = []
    seen = [0]
    try:
        with ctx.database() as dsn, capture_logs() as records:
            store = PostgresStore(dsn, min_size=1, max_size=2)
            sample = DatabaseSample(store, raw, healthy)
            harness = Harness.build(raw)

            @seed(SEED)
            @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck), print_blob=False)
            @given(cases())
            def check(case: Case) -> None:
                seen[0] += 1
                outcome, task, error = harness.act(case)
                outcomes[case.category][outcome] += 1
                if outcome == "exception":
                    escaped[error.split(":", 1)[0]] += 1
                problem = violation(case, outcome, task)
                if problem:
                    violations[case.category] += 1
                    if violations[case.category] <= 2:  # a few of each kind
                        examples.append(f"{case.category}/{case.state}/{case.phase}: {outcome} "
                                        f"({problem}) {error or reason_of(task)[:120]!r} "
                                        f"raw={case.raw[:100]!r}")
                kind = (case.storage, case.state)
                if case.state in sample.engines and outcome != "exception" and (
                        seen[0] % DB_EVERY == 0
                        or (case.storage and storage_sampled[kind] < per_storage_kind)):
                    storage_sampled[kind] += 1
                    chosen.append((case, outcome, task))

            started = time.monotonic()
            check()
            elapsed = time.monotonic() - started
            # After the run: hypothesis raises the recursion limit while it runs, which would
            # hide what deep nesting does to a worker (whose limit is Python's default).
            for case, outcome, task in chosen:
                sample.run(case, outcome, task)
            bystanders = sample.finish()
            store.close()
    finally:
        raw.close()
        healthy.close()
    totals = collections.Counter()
    for counter in outcomes.values():
        totals.update(counter)
    db = dict(sample.results)
    ok = (seen[0] == count and not violations and totals["exception"] == 0
          and db.get("consistent", 0) == sum(db.values())
          and bystanders["bystanders_clean"] == bystanders["bystanders"])
    return {
        "ok": ok, "replies": seen[0], "seed": SEED, "max_response_bytes": LIMIT,
        "categories": sorted(GENERATORS),
        "outcomes": dict(totals), "by_category": {k: dict(v) for k, v in sorted(outcomes.items())},
        "violations": sum(violations.values()), "violations_by_category": dict(violations),
        "escaped_exceptions": dict(escaped), "violation_examples": examples,
        "replies_per_s": round(seen[0] / elapsed, 1), "act_seconds": round(elapsed, 1),
        "db_samples": sum(db.values()), "db_results": db,
        "db_exceptions": dict(sample.exceptions), "db_examples": sample.examples,
        **bystanders,
        "step_crash_logs": sum(r.action == "step_crashed" for r in records),
    }
