"""The reference agents' HTTP side: routing, bounded bodies, and the task protocol (contract §2).

A :class:`TaskAgent` answers ``POST <path>`` with 202 and a status URL, runs the work on a thread,
keeps every task in SQLite (same ``X-Idempotency-Key`` → same task and result, across restarts)
and answers ``GET /v1/tasks/<id>`` and ``GET /health``. Unfinished tasks found at start are run
again, so an agent killed mid-task finishes it after a restart. When a submit carried an
``X-Callback-URL``, the agent POSTs ``{task_id, status}`` to it once the task has finished
(best effort: on a thread of its own, bounded, never retried; CPOA polls anyway). A running
task may :meth:`TaskAgent.report_progress`: its pending poll replies then carry ``progress``
and ``partial`` (contract §2; kept in memory only: a resumed task reports afresh).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.server
import json
import logging
import pathlib
import re
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import requests

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 2 * 1024 * 1024
"""Largest request body an agent reads; a larger one is refused with 413."""

CALLBACK_TIMEOUT_S = 2.0
"""Timeout of one callback POST (connect and read); a callback that fails is not retried."""

CALLBACK_URL_MAX_CHARS = 2000
"""Longest X-Callback-URL remembered; a longer one (or one not http(s)) is ignored."""


class BadRequest(Exception):
    """A request the agent refuses; the message names the field."""

    def __init__(self, message: str, *, field: str = "", status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclasses.dataclass
class Request:
    """One HTTP request as a handler sees it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        """Returns the body as a JSON object, or raises BadRequest (400)."""
        try:
            value = json.loads(self.body or b"null")
        except (ValueError, RecursionError):
            raise BadRequest("body: not valid JSON", field="body", status=400) from None
        if not isinstance(value, dict):
            raise BadRequest("body: expected a JSON object", field="body", status=400)
        return value


@dataclasses.dataclass
class Response:
    """What a handler answers: a JSON value, text or bytes, or a stream of chunks."""

    status: int = 200
    body: Any = None
    content_type: str = ""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    stream: Iterator[bytes] | None = None

    def payload(self) -> tuple[bytes, str]:
        if isinstance(self.body, (bytes, bytearray)):
            return bytes(self.body), self.content_type or "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), self.content_type or "text/plain; charset=utf-8"
        return json.dumps(self.body).encode(), self.content_type or "application/json"


Handler = Callable[[Request], Response]


def error(status: int, message: str, field: str = "") -> Response:
    """A JSON error answer naming the field."""
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return Response(status, body)


class Service:
    """An HTTP service: a list of (method, path regex, handler) routes on one port.

    Args:
        name: Short name for logs (``"WCHA"``).
        data_dir: Where the service keeps its files.
    """

    name = "service"

    def __init__(self, data_dir: str | pathlib.Path) -> None:
        self.data_dir = pathlib.Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.base_url = ""
        self._server: http.server.ThreadingHTTPServer | None = None

    def routes(self) -> list[tuple[str, str, Handler]]:
        """Returns this service's routes; subclasses add theirs."""
        return [("GET", r"/health", lambda request: Response(200, {"status": "ok",
                                                                    "agent": self.name}))]

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serves on a background thread; returns the base URL."""
        self._server = http.server.ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        bound_host, bound_port = self._server.server_address[:2]
        shown = "127.0.0.1" if bound_host in ("0.0.0.0", "") else bound_host
        self.base_url = f"http://{shown}:{bound_port}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name=f"{self.name}-http",
                         daemon=True).start()
        self.started()
        return self.base_url

    def started(self) -> None:
        """Called once the service listens (TaskAgent resumes unfinished tasks here)."""

    def stop(self) -> None:
        """Stops serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def dispatch(self, request: Request) -> Response:
        for method, pattern, handler in self.routes():
            if method == request.method and re.fullmatch(pattern, request.path):
                try:
                    return handler(request)
                except BadRequest as exc:
                    return error(exc.status, str(exc), exc.field)
        return error(404, f"no route {request.method} {request.path}")


class TaskAgent(Service):
    """An agent that accepts work, runs it in the background and reports it by task id.

    Subclasses set ``name`` and ``path`` and implement :meth:`validate` and :meth:`run`.
    """

    path = "/"
    workers = 2

    def __init__(self, data_dir: str | pathlib.Path) -> None:
        super().__init__(data_dir)
        self.tasks = TaskStore(self.data_dir / f"{self.name.lower()}-tasks.sqlite3")
        self.pool = concurrent.futures.ThreadPoolExecutor(self.workers,
                                                          thread_name_prefix=self.name)
        self.callback_urls: dict[str, str] = {}
        """X-Callback-URL of each unfinished task (the latest submit's), kept in memory."""
        self._callback_lock = threading.Lock()
        self.progress: dict[str, dict[str, Any]] = {}
        """The latest ``{progress, partial}`` of each unfinished task (:meth:`report_progress`)."""

    def validate(self, body: dict[str, Any]) -> dict[str, Any]:
        """Returns the cleaned request or raises BadRequest naming the field."""
        raise NotImplementedError

    def run(self, request: dict[str, Any], task_id: str) -> dict[str, Any]:
        """Does the work and returns the task's ``result``."""
        raise NotImplementedError

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [*super().routes(), ("POST", re.escape(self.path), self.submit),
                ("GET", r"/v1/tasks/[0-9a-f]{32}", self.status)]

    def submit(self, request: Request) -> Response:
        key = request.headers.get("x-idempotency-key", "").strip()
        if not key:
            raise BadRequest("X-Idempotency-Key: header required", field="X-Idempotency-Key",
                             status=400)
        cleaned = self.validate(request.json())
        task, created = self.tasks.create(key, cleaned)
        self._remember_callback(task, request.headers.get("x-callback-url", ""))
        if created:
            self.pool.submit(self._execute, task["task_id"], cleaned)
            return Response(202, self._accepted(task))
        if task["status"] == "SUCCESS":
            return Response(200, self._report(task))
        if task["status"] == "FAILURE":
            return Response(200, self._report(task))
        return Response(409, self._accepted(task))

    def status(self, request: Request) -> Response:
        task = self.tasks.get(request.path.rsplit("/", 1)[-1])
        if task is None:
            return error(404, "unknown task")
        return Response(500 if task["status"] == "FAILURE" else 200, self._report(task))

    def started(self) -> None:
        for task in self.tasks.unfinished():
            logger.info("resuming task %s", task["task_id"], extra={"agent": self.name})
            self.pool.submit(self._execute, task["task_id"], task["request"])

    def stop(self) -> None:
        super().stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def report_progress(self, task_id: str, progress: float,
                        partial: list[Any] | None = None) -> None:
        """Called by :meth:`run` as the work goes: the task's pending poll replies carry
        ``progress`` (0 to 1) and ``partial`` (what is finished so far) until it ends."""
        report: dict[str, Any] = {"progress": round(min(1.0, max(0.0, progress)), 4)}
        if partial is not None:
            report["partial"] = list(partial)
        with self._callback_lock:
            self.progress[task_id] = report

    def _execute(self, task_id: str, cleaned: dict[str, Any]) -> None:
        self.tasks.update(task_id, "STARTED")
        try:
            result = self.run(cleaned, task_id)
        except Exception as exc:  # the task fails; the agent lives on
            logger.exception("task failed", extra={"agent": self.name, "task_id": task_id})
            self.tasks.update(task_id, "FAILURE", error={"message": str(exc)[:500],
                                                        "error_code": type(exc).__name__})
            self._call_back(task_id, "FAILURE")
            return
        self.tasks.update(task_id, "SUCCESS", result=result)
        self._call_back(task_id, "SUCCESS")

    def _remember_callback(self, task: dict[str, Any], url: str) -> None:
        url = url.strip()
        if task["status"] in ("SUCCESS", "FAILURE") or len(url) > CALLBACK_URL_MAX_CHARS:
            return
        if urllib.parse.urlsplit(url).scheme in ("http", "https"):
            with self._callback_lock:
                self.callback_urls[task["task_id"]] = url

    def _call_back(self, task_id: str, status: str) -> None:
        """POSTs ``{task_id, status}`` to the task's callback URL, if it has one, on a thread
        of its own: a slow or absent receiver never holds the agent's work."""
        with self._callback_lock:
            url = self.callback_urls.pop(task_id, None)
            self.progress.pop(task_id, None)
        if url is not None:
            threading.Thread(target=_post_callback, args=(url, task_id, status, self.name),
                             name=f"{self.name}-callback", daemon=True).start()

    def _accepted(self, task: dict[str, Any]) -> dict[str, Any]:
        return {"task_id": task["task_id"], "status_url": f"/v1/tasks/{task['task_id']}",
                "status": task["status"]}

    def _report(self, task: dict[str, Any]) -> dict[str, Any]:
        report = {"task_id": task["task_id"], "status": task["status"]}
        if task["status"] == "SUCCESS":
            report["result"] = task["result"]
        if task["status"] == "FAILURE":
            report["error"] = task["error"]
        if task["status"] in ("PENDING", "STARTED"):
            with self._callback_lock:
                report.update(self.progress.get(task["task_id"], {}))
        return report


def _post_callback(url: str, task_id: str, status: str, agent: str) -> None:
    try:
        requests.post(url, json={"task_id": task_id, "status": status},
                      timeout=CALLBACK_TIMEOUT_S, allow_redirects=False).close()
    except requests.RequestException as exc:  # best effort: the task is polled anyway
        logger.info("callback failed: %s", type(exc).__name__,
                    extra={"agent": agent, "task_id": task_id})


class TaskStore:
    """Tasks on disk: one row per idempotency key (stdlib sqlite3, safe across threads)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.lock = threading.Lock()
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS tasks (task_id TEXT PRIMARY KEY, key TEXT UNIQUE, "
            "status TEXT, request TEXT, result TEXT, error TEXT, created REAL, updated REAL)")

    def create(self, key: str, request: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Returns the key's task and whether it was created now (insert-or-nothing)."""
        with self.lock:
            cursor = self.db.execute(
                "INSERT INTO tasks VALUES (?, ?, 'PENDING', ?, NULL, NULL, ?, ?) "
                "ON CONFLICT (key) DO NOTHING",
                (uuid.uuid4().hex, key, json.dumps(request), time.time(), time.time()))
            row = self.db.execute("SELECT * FROM tasks WHERE key = ?", (key,)).fetchone()
        return self._task(row), cursor.rowcount == 1

    def get(self, task_id: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return self._task(row) if row else None

    def unfinished(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute(
                "SELECT * FROM tasks WHERE status IN ('PENDING', 'STARTED') ORDER BY created")
            return [self._task(r) for r in rows.fetchall()]

    def update(self, task_id: str, status: str, *, result: Any = None, error: Any = None) -> None:
        with self.lock:
            self.db.execute(
                "UPDATE tasks SET status = ?, result = ?, error = ?, updated = ? "
                "WHERE task_id = ?",
                (status, json.dumps(result) if result is not None else None,
                 json.dumps(error) if error is not None else None, time.time(), task_id))

    @staticmethod
    def _task(row: Iterable[Any]) -> dict[str, Any]:
        task_id, key, status, request, result, error, created, updated = row
        return {"task_id": task_id, "key": key, "status": status, "request": json.loads(request),
                "result": json.loads(result) if result else None,
                "error": json.loads(error) if error else None}


def _handler_for(service: Service) -> type[http.server.BaseHTTPRequestHandler]:
    class _Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall
        server_version = f"cpoa-{service.name}"

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s " + format, service.name, *args)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = self.headers.get("Content-Length", "0")
            if not length.isdigit():
                return self._answer(error(400, "Content-Length: not a number",
                                          "Content-Length"))
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True
                return self._answer(error(413, f"body: larger than {MAX_BODY_BYTES} bytes",
                                          "body"))
            parts = urllib.parse.urlsplit(self.path)
            request = Request(method, parts.path, dict(urllib.parse.parse_qsl(parts.query)),
                              {k.lower(): v for k, v in self.headers.items()},
                              self.rfile.read(int(length)) if int(length) else b"")
            try:
                response = service.dispatch(request)
            except Exception:  # never let a bug kill the connection silently
                logger.exception("handler failed", extra={"agent": service.name})
                response = error(500, "internal error")
            self._answer(response)

        def _answer(self, response: Response) -> None:
            try:
                self._send(response)
            except (BrokenPipeError, ConnectionResetError):  # the client went away (Ctrl-C)
                self.close_connection = True

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.stream is not None:
                self.send_header("Content-Type", response.content_type)
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for chunk in response.stream:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                return
            payload, content_type = response.payload()
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if method_has_body(self.command):
                self.wfile.write(payload)

    return _Handler


def method_has_body(method: str) -> bool:
    return method != "HEAD"
