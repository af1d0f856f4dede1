"""ASF, the audio stream frontend (contract §3–4): shows every workflow live in a browser.

CPOA posts UI events to ``/asf/internal/send_ui_update`` and finished episodes to
``/asf/internal/notify_new_audio``. Both are deduplicated (UI events by ``event_id``, episodes
by workflow, stream and URL) because CPOA retries a delivery until it gets a 2xx. Each accepted
record gets a per-server sequence number, is kept in memory (the last :data:`MAX_EVENTS`) and
appended to ``<data_dir>/asf-events.jsonl``, so a restarted ASF keeps its sequence, its dedupe
memory and every workflow's state. ``GET /events`` streams the records as Server-Sent Events
(``id:`` is the sequence number; ``Last-Event-ID`` resumes); ``GET /`` is the page rendering
them, where everything that came from an agent is treated as text, never as markup. A
``generation_progress`` event shows the step's own progress bar, and the audio URLs in its
``partial`` list (VFA's finished turns) play in order on the page before the episode is done.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import pathlib
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

from cpoa_agents import validate
from cpoa_agents.service import BadRequest, Handler, Request, Response, Service, error

logger = logging.getLogger(__name__)

# contract §4 (review_requested: issue 15's review gate; generation_progress: an agent's live
# progress, issue 13); also the SSE event names
PROGRESS_EVENT = "generation_progress"
UI_EVENT_NAMES = ("generation_status", "task_error", "review_requested", PROGRESS_EVENT)
AUDIO_EVENT = "new_audio"  # the SSE event name of a finished-episode notification
MAX_EVENTS = 10_000  # records kept in memory and replayed to a new page
# Dedupe keys outlive their records, so a late retry of an evicted event is still dropped.
MAX_SEEN_KEYS = 100_000
MAX_WORKFLOWS = 1_000  # summaries kept; the least recently updated goes first
HEARTBEAT_S = 10.0
RECONNECT_MS = 2_000
ID_MAX_CHARS = 200
URL_MAX_CHARS = 2_000
STATIC_DIR = pathlib.Path(__file__).with_name("static")
STATIC_NAME = r"[a-z][a-z0-9_-]{0,63}\.(?:html|js|css)"
CONTENT_TYPES = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8",
                 "css": "text/css; charset=utf-8"}
# No inline script at all: even a rendering bug that let markup through could not run it
# (defence in depth behind textContent).
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
               "img-src http: https:; media-src http: https:; base-uri 'none'; "
               "form-action 'none'; frame-ancestors 'none'")


@dataclasses.dataclass(frozen=True)
class Record:
    """One accepted UI event or episode notification.

    Attributes:
        seq: The per-server sequence number (the SSE ``id``).
        kind: The SSE event name: a UI event name or :data:`AUDIO_EVENT`.
        key: The dedupe key.
        payload: What the page receives (the validated request body).
    """

    seq: int
    kind: str
    key: str
    payload: dict[str, Any]

    def frame(self) -> bytes:
        """Returns the record as one SSE frame."""
        # json.dumps escapes every line break (ensure_ascii also covers U+2028/9), so the data
        # is one line and an agent's text cannot inject SSE fields.
        data = json.dumps({"seq": self.seq, "event": self.kind, **self.payload})
        return f"id: {self.seq}\nevent: {self.kind}\ndata: {data}\n\n".encode()

    def line(self) -> str:
        """Returns the record as one journal line."""
        return json.dumps({"seq": self.seq, "kind": self.kind, "key": self.key,
                           "payload": self.payload}) + "\n"


class EventLog:
    """The accepted records: bounded, deduplicated, ordered, waitable, optionally journalled.

    Args:
        journal: JSON-lines file to append to and to reload at start; None keeps memory only.
        max_events: Records kept in memory; the journal is compacted at twice as many lines.
    """

    def __init__(self, journal: pathlib.Path | None = None, max_events: int = MAX_EVENTS) -> None:
        self._cond = threading.Condition()
        self._records: collections.deque[Record] = collections.deque(maxlen=max_events)
        self._seen: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._workflows: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._last_seq = 0
        self._closed = False
        self._journal = journal
        self._journal_lines = 0
        if journal is not None and journal.exists():
            self._load(journal)

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest record (0 when there is none)."""
        with self._cond:
            return self._last_seq

    def add(self, kind: str, key: str, payload: dict[str, Any]) -> tuple[int, bool]:
        """Stores a record unless its key was seen before.

        Returns:
            The record's sequence number (the original one for a duplicate) and whether it was
            a duplicate.

        Raises:
            OSError: the journal could not be written; nothing was stored, so the sender's retry
                is not mistaken for a duplicate.
        """
        with self._cond:
            if key in self._seen:
                return self._seen[key], True
            record = Record(self._last_seq + 1, kind, key, payload)
            self._append(record)
            self._keep(record)
            self._cond.notify_all()
            return record.seq, False

    def wait_after(self, seq: int, timeout: float) -> tuple[list[Record], bool]:
        """Returns the records newer than ``seq``, waiting up to ``timeout`` s for one.

        Returns:
            The newer records (maybe none) and whether the log is closed.
        """
        with self._cond:
            if not self._closed and self._last_seq <= seq:
                self._cond.wait(timeout)
            return self._after(seq), self._closed

    def workflows(self) -> list[dict[str, Any]]:
        """Returns every workflow's summary, oldest first (copies)."""
        with self._cond:
            return [dict(summary, warnings=list(summary["warnings"]))
                    for summary in self._workflows.values()]

    def close(self) -> None:
        """Ends every waiting stream (the server is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        """Lets streams wait again (the server started again)."""
        with self._cond:
            self._closed = False

    def _after(self, seq: int) -> list[Record]:
        # Walk back from the newest: a live stream asks for the last few records only.
        newer = []
        for record in reversed(self._records):
            if record.seq <= seq:
                break
            newer.append(record)
        newer.reverse()
        return newer

    def _keep(self, record: Record) -> None:
        self._records.append(record)
        self._seen[record.key] = record.seq
        if len(self._seen) > MAX_SEEN_KEYS:
            self._seen.popitem(last=False)
        self._last_seq = record.seq
        workflow_id = record.payload["workflow_id"]
        summary = self._workflows.pop(workflow_id, None) or new_summary(workflow_id)
        self._workflows[workflow_id] = fold(summary, record)
        if len(self._workflows) > MAX_WORKFLOWS:
            self._workflows.popitem(last=False)

    def _append(self, record: Record) -> None:
        if self._journal is None:
            return
        if self._journal_lines >= 2 * (self._records.maxlen or MAX_EVENTS):
            self._compact()
        with self._journal.open("a", encoding="utf-8") as journal:
            journal.write(record.line())
        self._journal_lines += 1

    def _compact(self) -> None:
        # Rewrite to the records still in memory; os.replace makes the swap atomic.
        assert self._journal is not None
        partial = self._journal.with_suffix(".jsonl.tmp")
        with partial.open("w", encoding="utf-8") as out:
            out.writelines(record.line() for record in self._records)
        os.replace(partial, self._journal)
        self._journal_lines = len(self._records)

    def _load(self, journal: pathlib.Path) -> None:
        skipped = 0
        with journal.open(encoding="utf-8") as lines:
            for line in lines:
                self._journal_lines += 1
                try:
                    raw = json.loads(line)
                    record = Record(int(raw["seq"]), raw["kind"], raw["key"], raw["payload"])
                except (ValueError, KeyError, TypeError):
                    skipped += 1  # e.g. the half-written last line of a crash
                    continue
                if record.key not in self._seen and record.seq > self._last_seq:
                    self._keep(record)
        if skipped:
            logger.warning("skipped %d unreadable journal lines in %s", skipped, journal)


def new_summary(workflow_id: str) -> dict[str, Any]:
    """Returns the summary of a workflow nothing is known about yet."""
    return {"workflow_id": workflow_id, "client_id": None, "state": None, "stage": None,
            "message": "", "progress": 0.0, "warnings": [], "is_terminal": False,
            "final_status": None, "error": None, "audio_url": None, "stream_id": None,
            "image_url": None, "event_count": 0, "updated_seq": 0, "step_progress": None,
            "partial_count": 0}


def fold(summary: dict[str, Any], record: Record) -> dict[str, Any]:
    """Folds one record into its workflow's summary, keeping only well-typed fields.

    ``data`` is not validated field by field on the way in: a 422 would make CPOA retry the
    event forever and hold back the workflow's later events, so odd fields are ignored here.
    """
    payload = record.payload
    summary.update(updated_seq=record.seq, event_count=summary["event_count"] + 1)
    if record.kind == AUDIO_EVENT:
        summary.update(audio_url=payload["audio_url"], stream_id=payload["stream_id"])
        if payload.get("image_url"):
            summary["image_url"] = payload["image_url"]
        return summary
    data = payload["data"]
    summary["client_id"] = payload["client_id"]
    if record.kind == PROGRESS_EVENT:
        return _fold_progress(summary, data)
    summary["step_progress"], summary["partial_count"] = None, 0  # a new state: a new step
    for field in ("state", "stage", "message", "error"):
        if isinstance(data.get(field), str):
            summary[field] = data[field]
    progress = data.get("progress")  # NaN was refused at the door; clamp before float(10**400)
    if isinstance(progress, (int, float)) and not isinstance(progress, bool):
        summary["progress"] = float(min(1.0, max(0.0, progress)))
    # Terminality is per event: a retried workflow runs again after a terminal one.
    summary["is_terminal"] = data.get("is_terminal") is True
    final = data.get("final_status")
    summary["final_status"] = final if isinstance(final, str) else None
    if isinstance(data.get("warnings"), list):
        summary["warnings"] = [w for w in data["warnings"] if isinstance(w, str)]
    for field in ("image_url", "audio_url"):
        if is_web_url(data.get(field)):
            summary[field] = data[field]
    return summary


def _fold_progress(summary: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """A generation_progress event: the step's progress, the workflow's, the message and how
    many partial results there are (the page plays them; the summary only counts them)."""
    if isinstance(data.get("message"), str):
        summary["message"] = data["message"]
    for field, key in (("step_progress", "progress"), ("progress", "workflow_progress")):
        value = data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            summary[field] = float(min(1.0, max(0.0, value)))
    if isinstance(data.get("partial"), list):
        summary["partial_count"] = len(data["partial"])
    return summary


def is_web_url(value: Any) -> bool:
    """Tells whether ``value`` is an absolute http(s) URL (the only kind the page loads)."""
    if not isinstance(value, str) or len(value) > URL_MAX_CHARS:
        return False
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _web_url(body: dict[str, Any], field: str, *, required: bool = True) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not is_web_url(value):
        raise BadRequest(f"{field}: expected an absolute http(s) URL of at most "
                         f"{URL_MAX_CHARS} characters", field=field)
    return value


def ui_event(body: dict[str, Any]) -> dict[str, Any]:
    """Returns the validated UI event, or raises BadRequest (422) naming the field."""
    client_id = validate.text(body, "client_id", max_chars=ID_MAX_CHARS)
    event_name = body.get("event_name")
    if event_name not in UI_EVENT_NAMES:
        raise BadRequest(f"event_name: expected one of {', '.join(UI_EVENT_NAMES)}",
                         field="event_name")
    data = validate.obj(body, "data")
    try:  # NaN or Infinity would make the page's JSON.parse fail on every later replay
        json.dumps(data, allow_nan=False)
    except (ValueError, RecursionError):
        raise BadRequest("data: NaN, Infinity or too deeply nested", field="data") from None
    return {"client_id": client_id, "event_name": event_name, "data": data,
            "event_id": validate.text(body, "event_id", max_chars=ID_MAX_CHARS),
            "workflow_id": validate.text(body, "workflow_id", max_chars=ID_MAX_CHARS)}


def audio_notice(body: dict[str, Any]) -> dict[str, Any]:
    """Returns the validated episode notification, or raises BadRequest (422) naming the field."""
    notice = {"stream_id": validate.text(body, "stream_id", max_chars=ID_MAX_CHARS),
              "audio_url": _web_url(body, "audio_url"),
              "workflow_id": validate.text(body, "workflow_id", max_chars=ID_MAX_CHARS)}
    image_url = _web_url(body, "image_url", required=False)
    if image_url:
        notice["image_url"] = image_url
    return notice


def _resume_point(request: Request, last_seq: int) -> int:
    """Returns the sequence number a stream starts after (0: send everything)."""
    # The header wins: EventSource sends it on reconnect, while the query may be stale.
    field, value = "Last-Event-ID", request.headers.get("last-event-id", "").strip()
    if not value:
        field, value = "last_event_id", request.query.get("last_event_id", "").strip()
    if not value:
        return 0
    if not value.isdigit() or len(value) > 18:
        raise BadRequest(f"{field}: expected a sequence number", field=field, status=400)
    # An id from the future belongs to an ASF whose journal was lost: replay all we have.
    return int(value) if int(value) <= last_seq else 0


class FrontendAgent(Service):
    """The ASF service: UI event and episode intake, the live page and its event stream.

    Args:
        data_dir: Where ``asf-events.jsonl`` lives.
        journal: Whether to keep the journal (False: memory only).
    """

    name = "ASF"
    heartbeat_s = HEARTBEAT_S  # a comment after this much silence reveals dead clients

    def __init__(self, data_dir: str | pathlib.Path, *, journal: bool = True) -> None:
        super().__init__(data_dir)
        self.log = EventLog(self.data_dir / "asf-events.jsonl" if journal else None)

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [*super().routes(),
                ("POST", r"/asf/internal/send_ui_update", self.send_ui_update),
                ("POST", r"/asf/internal/notify_new_audio", self.notify_new_audio),
                ("GET", r"/|/static/" + STATIC_NAME, self.static),
                ("GET", r"/events", self.events),
                ("GET", r"/api/workflows", self.workflows)]

    def started(self) -> None:
        self.log.reopen()

    def stop(self) -> None:
        """Ends every event stream, then stops serving."""
        self.log.close()  # first: the stream threads finish and the browsers see a clean end
        super().stop()

    def send_ui_update(self, request: Request) -> Response:
        """``POST /asf/internal/send_ui_update``: stores a UI event once per ``event_id``."""
        event = ui_event(request.json())
        seq, duplicate = self.log.add(event["event_name"], "ui:" + event["event_id"], event)
        return Response(200, {"accepted": True, "duplicate": duplicate, "seq": seq})

    def notify_new_audio(self, request: Request) -> Response:
        """``POST /asf/internal/notify_new_audio``: stores a finished episode once."""
        notice = audio_notice(request.json())
        key = "audio:" + json.dumps([notice["workflow_id"], notice["stream_id"],
                                     notice["audio_url"]])
        seq, duplicate = self.log.add(AUDIO_EVENT, key, notice)
        return Response(200, {"accepted": True, "duplicate": duplicate, "seq": seq})

    def workflows(self, request: Request) -> Response:
        """``GET /api/workflows``: every workflow's latest state, oldest first."""
        return Response(200, {"workflows": self.log.workflows(), "last_seq": self.log.last_seq})

    def events(self, request: Request) -> Response:
        """``GET /events``: the records as Server-Sent Events, resumable by id."""
        after = _resume_point(request, self.log.last_seq)
        return Response(200, stream=self._stream(after),
                        content_type="text/event-stream; charset=utf-8",
                        headers={"X-Accel-Buffering": "no"})

    def static(self, request: Request) -> Response:
        """``GET /`` (the live page) and ``GET /static/<name>`` (names checked by the route)."""
        return self._file(request.path.rsplit("/", 1)[1] or "asf.html")

    def _stream(self, after: int) -> Iterator[bytes]:
        yield f"retry: {RECONNECT_MS}\n\n".encode()
        cursor = after
        while True:
            records, closed = self.log.wait_after(cursor, self.heartbeat_s)
            for record in records:
                yield record.frame()
                cursor = record.seq
            if closed:
                return
            if not records:
                yield b": heartbeat\n\n"

    @staticmethod
    def _file(name: str) -> Response:
        try:
            body = (STATIC_DIR / name).read_bytes()
        except OSError:
            return error(404, f"no file {name}")
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
        if name.endswith(".html"):
            headers.update({"Content-Security-Policy": PAGE_POLICY,
                            "Referrer-Policy": "no-referrer"})
        return Response(200, body, CONTENT_TYPES[name.rsplit(".", 1)[1]], headers)
