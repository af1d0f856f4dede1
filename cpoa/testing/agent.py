"""A scriptable agent: a real HTTP server (on 127.0.0.1 by default) that speaks the agent protocol.

By default it behaves like a well-kept agent (202 + status URL, idempotent per key, valid
results for every path). A test scripts deviations per route with :meth:`ScriptedAgent.script`:
each scripted :class:`Reply` is used once, in order, before the default behaviour resumes.
"""

from __future__ import annotations

import collections
import dataclasses
import http.server
import json
import socket
import threading
import time
import uuid
from typing import Any

import requests

from cpoa.settings import POLLED_AGENTS

ASF_NOTIFY = "/asf/internal/notify_new_audio"
ASF_UI = "/asf/internal/send_ui_update"
HOLD_MAX_S = 120.0
"""Longest :meth:`ScriptedAgent.hold_next` holds an answer."""
FAST_POLL_S = 0.05
"""The polling interval :func:`agent_env` sets for every agent."""


def agent_env(url: str, **overrides: str) -> dict[str, str]:
    """Environment variables that point every agent at ``url`` with fast polling."""
    env = {f"{name}_SERVICE_URL": url for name in POLLED_AGENTS}
    env.update({f"CPOA_{name}_POLLING_INTERVAL_SECONDS": str(FAST_POLL_S)
                for name in POLLED_AGENTS})
    env.update(ASF_NOTIFICATION_URL=url + ASF_NOTIFY, CPOA_ASF_SEND_UI_UPDATE_URL=url + ASF_UI,
               CPOA_SERVICE_RETRY_BACKOFF_FACTOR="0.01", CPOA_LEASE_TTL_SECONDS="30")
    env.update(overrides)
    return env


@dataclasses.dataclass
class Reply:
    """One scripted answer: status, body (dict → JSON, bytes/str sent raw), headers, delay."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # close the connection without answering
    trickle_s: float = 0.0  # send the body one byte at a time, this long apart


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (nothing listens on it now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def default_result(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A valid result for each agent path (contract §3)."""
    if path == "/harvest":
        return {"status": "success", "content": f"Articles about {body.get('topic')}.",
                "source_urls": body.get("urls", [])}
    if path == "/discover_topics":
        limit = int(body.get("limit") or 2)
        return {"status": "success", "discovered_topics": [
            {"topic_id": f"t{i}", "title_suggestion": f"Topic {i}", "summary": f"Summary {i}",
             "keywords": ["k"], "relevance_score": 1.0 - i / 10} for i in range(min(limit, 2))]}
    if path == "/weave_script":
        revised = " (revised)" if body.get("revision_notes") else ""  # a rejected script
        return {"status": "success", "script_data": {
            "script_id": "s2" if revised else "s1", "title": f"On {body.get('topic')}{revised}",
            "segments": [{"segment_title": "Intro", "lines": [
                {"speaker": "Host", "text": "Welcome."}, {"speaker": "Guest", "text": "Hi."}]}]}}
    if path == "/forge_voice":  # another voice, another file
        voice = (body.get("voice_params") or {}).get("voice_name")
        return {"status": "success",
                "audio_url": f"http://127.0.0.1/audio-{voice}.mp3" if voice
                else "http://127.0.0.1/audio.mp3",
                "audio_format": "mp3", "duration_s": 12.5, "stream_id": "stream-1",
                "tts_settings_used": {"voice_name": "en"}}
    if path == "/generate_image":
        return {"status": "success", "image_url": "http://127.0.0.1/cover.png"}
    if path == "/craft_snippet":
        return {"snippet_id": f"sn-{body.get('topic_id')}", "topic_id": body.get("topic_id"),
                "title": "A snippet", "summary": "short", "text_content": "Some text.",
                "cover_art_prompt": "a lighthouse"}
    return {"status": "success"}


class ScriptedAgent:
    """Every agent of the contract on one port (of loopback, or of ``host``), with scriptable
    misbehaviour.

    Attributes:
        requests: Every request received, as dicts (method, path, headers, body).
        work: Every submit received per idempotency key, counted each time it arrives (not
            only the first time a key is seen): a step submitted twice shows as 2, even though
            this agent, being idempotent, does the work once. Only a crash between a submit
            and the record of its answer may cause a second submit of a key.
        work_items: Every submit per piece of work: (X-Workflow-ID, path, request body), so
            the same work sent under two different keys shows too.
        ui_events: UI events delivered to the ASF endpoint, in arrival order.
        callbacks: Every callback this agent POSTed: (task_id, callback URL, HTTP status of
            the answer, or 0 when none came).
        finished_at: When (``time.time()``) each timed task finished.

    Args:
        finish_after_s: Tasks finish this long after their submit (polls answer PENDING
            until then), and the agent then POSTs ``{task_id, status}`` to the submit's
            X-Callback-URL, if it had one (contract §2).
        callback_first: A new task finishes at once, and the agent POSTs its callback (and
            waits for the answer) before it answers the submit with 202.
    """

    def __init__(self, *, pending_polls: int = 0, sync: bool = False,
                 host: str = "127.0.0.1", finish_after_s: float | None = None,
                 callback_first: bool = False) -> None:
        self.pending_polls = pending_polls
        self.sync = sync
        self.finish_after_s = 0.0 if callback_first else finish_after_s
        self.callback_first = callback_first
        self.callbacks: list[tuple[str, str, int]] = []
        self.finished_at: dict[str, float] = {}
        self.lock = threading.Lock()
        self.scripts: dict[tuple[str, str], collections.deque[Reply]] = collections.defaultdict(
            collections.deque)
        self.requests: list[dict[str, Any]] = []
        self.work: collections.Counter[str] = collections.Counter()
        self.work_items: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.tasks: dict[str, dict[str, Any]] = {}
        self.by_key: dict[str, str] = {}
        self.ui_events: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        self.unfinished: dict[str, set[str]] = collections.defaultdict(set)
        """Per path: tasks created and not yet reported SUCCESS (what the agent is working on)."""
        self.max_unfinished: collections.Counter[str] = collections.Counter()
        """Per path: the most tasks ever unfinished at once."""
        self.delays: dict[str, float] = {}
        self.holds: dict[str, threading.Event] = {}
        self.server = http.server.ThreadingHTTPServer((host, 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        with self.lock:
            for hold in self.holds.values():
                hold.set()
        self.server.shutdown()
        self.server.server_close()

    def script(self, method: str, path: str, *replies: Reply) -> None:
        """Queues answers for a route; ``path`` ``/v1/tasks`` covers every poll."""
        with self.lock:
            self.scripts[(method, path)].extend(replies)

    def delay_next(self, path: str, seconds: float) -> None:
        """Delays the next default answer to ``path`` (the work is accepted first)."""
        with self.lock:
            self.delays[path] = seconds

    def hold_next(self, path: str) -> threading.Event:
        """Holds the next default answer to ``path`` (the work is accepted first) until the
        returned event is set, or at most HOLD_MAX_S."""
        with self.lock:
            self.holds[path] = threading.Event()
            return self.holds[path]

    def set_result(self, path: str, result: Any) -> None:
        """Makes every task of ``path`` finish with this result."""
        self.results[path] = result

    def requests_to(self, path: str, method: str = "POST") -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path and r["method"] == method]

    def duplicates(self) -> dict[str, int]:
        """Keys submitted more than once, with their counts (every submit counted)."""
        with self.lock:
            return {key: n for key, n in self.work.items() if n != 1}

    def _count(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> None:
        if method != "POST" or path in (ASF_UI, "/health"):
            return
        self.work[headers.get("x-idempotency-key", "")] += 1
        body = raw.decode("utf-8", "replace")
        self.work_items[(headers.get("x-workflow-id", ""), path, body)] += 1

    # -- the default, well-behaved agent --------------------------------------------------------

    def _default(self, method: str, path: str, headers: dict[str, str],
                 body: Any) -> Reply:
        if path == ASF_UI:
            self.ui_events.append(body)
            return Reply(200, {"ok": True})
        if path == ASF_NOTIFY:
            return Reply(200, {"ok": True})
        if method == "GET" and path.startswith("/v1/tasks/"):
            return self._poll(path.rsplit("/", 1)[-1])
        if method == "GET" and path == "/health":
            return Reply(200, {"status": "ok"})
        key = headers.get("x-idempotency-key", "")
        with self.lock:
            task_id = self.by_key.get(key)
            created = task_id is None
            if task_id is None:
                task_id = uuid.uuid4().hex
                self.by_key[key] = task_id
                result = self.results.get(path) or default_result(path, body or {})
                self.tasks[task_id] = {"result": result, "polls": 0, "path": path}
                self.unfinished[path].add(task_id)
                self.max_unfinished[path] = max(self.max_unfinished[path],
                                                len(self.unfinished[path]))
            task = self.tasks[task_id]
            done = self.sync or task["polls"] > self.pending_polls
            if done:
                self.unfinished[path].discard(task_id)
        if created and self.finish_after_s is not None and not self.sync:
            self._time(task_id, task, headers.get("x-callback-url"))
        if done:
            return Reply(200, {"task_id": task_id, "status": "SUCCESS", "result": task["result"]})
        return Reply(202, {"task_id": task_id, "status_url": f"/v1/tasks/{task_id}"})

    def _time(self, task_id: str, task: dict[str, Any], callback_url: str | None) -> None:
        """Makes a new task finish ``finish_after_s`` from now, then call back."""
        task["done_at"] = time.monotonic() + self.finish_after_s

        def finish() -> None:
            self.finished_at[task_id] = time.time()
            if callback_url:
                self.call_back(task_id, callback_url)
        if self.callback_first:
            finish()
        else:
            timer = threading.Timer(self.finish_after_s, finish)
            timer.daemon = True
            timer.start()

    def call_back(self, task_id: str, url: str, body: Any = None) -> int:
        """POSTs a callback (``{task_id, status}`` by default); returns the answer's status."""
        try:
            with requests.post(url, json=body or {"task_id": task_id, "status": "SUCCESS"},
                               timeout=10) as answer:
                status = answer.status_code
        except requests.RequestException:
            status = 0
        with self.lock:
            self.callbacks.append((task_id, url, status))
        return status

    def _poll(self, task_id: str) -> Reply:
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return Reply(404, {"error": "unknown task"})
            task["polls"] += 1
            if "done_at" in task and time.monotonic() < task["done_at"]:
                return Reply(202, {"task_id": task_id, "status": "PENDING"})
            if "done_at" not in task and task["polls"] <= self.pending_polls:
                return Reply(202, {"task_id": task_id, "status": "PENDING"})
            self.unfinished[task["path"]].discard(task_id)
        return Reply(200, {"task_id": task_id, "status": "SUCCESS", "result": task["result"]})

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        return type("Handler", (_Handler,), {"agent": self})

    def _reply_to(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                  body: Any) -> Reply:
        """Records a request and returns its answer: the next scripted one for its route, or
        the default (held or delayed when a test asked)."""
        route = (method, "/v1/tasks" if path.startswith("/v1/tasks/") else path)
        with self.lock:
            self.requests.append({"method": method, "path": path, "headers": headers,
                                  "body": body, "at": time.monotonic()})
            self._count(method, path, headers, raw)
            scripted = self.scripts[route].popleft() if self.scripts[route] else None
        if scripted is not None:
            if path == ASF_UI and 200 <= scripted.status < 300:
                self.ui_events.append(body)
            return scripted
        reply = self._default(method, path, headers, body)
        with self.lock:
            reply.delay_s = self.delays.pop(path, 0.0)
            hold = self.holds.pop(path, None)
        if hold is not None:
            hold.wait(HOLD_MAX_S)
        return reply


class _Handler(http.server.BaseHTTPRequestHandler):
    """One HTTP exchange with a :class:`ScriptedAgent` (``agent``, set per server)."""

    agent: ScriptedAgent
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:  # the client went away mid-body (a killed worker): no request
            self.close_connection = True
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.agent._reply_to(method, self.path.split("?", 1)[0], headers, raw, body)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.drop:
            self.close_connection = True
            self.connection.close()
            return
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        if isinstance(reply.body, (dict, list)):
            payload = json.dumps(reply.body).encode()
            content_type = "application/json"
        elif isinstance(reply.body, str):
            payload, content_type = reply.body.encode(), "text/plain"
        else:
            payload, content_type = reply.body or b"", "application/octet-stream"
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.headers.get("Content-Type", content_type))
        for name, value in reply.headers.items():
            if name != "Content-Type":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not reply.trickle_s:
            self.wfile.write(payload)
            return
        for index in range(len(payload)):
            self.wfile.write(payload[index:index + 1])
            self.wfile.flush()
            time.sleep(reply.trickle_s)
