"""The dashboard's event stream over real HTTP: LISTEN/NOTIFY → Server-Sent Events, resumable by
Last-Event-ID, one listener connection per process, heartbeats, clean ends."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cpoa.gateway import live
from cpoa.gateway.hub import Hub
from cpoa.store import EVENTS_CHANNEL
from tests.fix_agents import drive, wait_until
from tests.fix_gateway import LiveGateway

READ_TIMEOUT_S = 10.0


class Frames:
    """Reads one SSE response frame by frame (comments appear as field ``comment``)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()

    def next(self) -> dict[str, str] | None:
        """Returns the next frame, or None when the stream ended."""
        fields: dict[str, str] = {}
        for line in self.lines:
            if not line:
                if fields:
                    return fields
                continue
            name, _, value = line.partition(":")
            fields[name or "comment"] = value.removeprefix(" ")
        return fields or None

    def until(self, event: str, deadline_s: float = READ_TIMEOUT_S) -> list[dict[str, Any]]:
        """Reads frames up to and including the first ``event`` one; returns the data frames."""
        deadline = time.monotonic() + deadline_s
        frames = []
        while time.monotonic() < deadline:
            frame = self.next()
            assert frame is not None, f"stream ended before a {event} frame"
            if "data" in frame:
                frames.append({"event": frame.get("event"), "id": frame.get("id"),
                               "data": json.loads(frame["data"])})
                if frame.get("event") == event:
                    return frames
        raise AssertionError(f"no {event} frame within {deadline_s} s")

    def transitions(self, count: int) -> list[tuple[str | None, str]]:
        """Reads until ``count`` transition frames came; returns their (from, to)."""
        got: list[tuple[str | None, str]] = []
        while len(got) < count:
            got += transitions(self.until("transition"))
        return got


@contextlib.contextmanager
def stream(gateway: LiveGateway, query: str = "", **headers: str) -> Iterator[Frames]:
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=5.0)
    with gateway.client.stream("GET", "/events" + query, headers=headers,
                               timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Frames(response)


def hub(gateway: LiveGateway) -> Hub:
    return gateway.server.config.app.state.live_hub


def transitions(frames: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
    return [(f["data"]["from"], f["data"]["to"]) for f in frames if f["event"] == "transition"]


def test_events__workflow_stream_replays_then_snapshot(gateway: LiveGateway,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A workflow's stream from the start replays its history (ids = event ids), read a page
    at a time, then a snapshot."""
    monkeypatch.setattr(live, "REPLAY_PAGE", 2)
    workflow_id = str(gateway.engine.start_workflow("podcast", {"topic": "tides"}))
    assert drive(gateway.engine, workflow_id) == "completed"
    history = gateway.engine.store.get_history(workflow_id)
    with stream(gateway, f"?workflow_id={workflow_id}") as frames:
        got = frames.until("snapshot")
    assert [int(f["id"]) for f in got[:-1]] == [h["event_id"] for h in history]
    assert transitions(got)[0] == (None, "fetching")
    snapshot = got[-1]["data"]
    assert (snapshot["state"], snapshot["media"]["audio_url"]) == \
        ("completed", "http://127.0.0.1/audio.mp3")
    assert got[-1]["id"] is None  # a snapshot never moves the client's Last-Event-ID


def test_events__last_event_id_resumes_after_it(gateway: LiveGateway) -> None:
    """Last-Event-ID (header over query) gives only the later events."""
    workflow_id = str(gateway.engine.start_workflow("podcast", {"topic": "tides"}))
    assert drive(gateway.engine, workflow_id) == "completed"
    ids = [h["event_id"] for h in gateway.engine.store.get_history(workflow_id)]
    with stream(gateway, f"?workflow_id={workflow_id}&last_event_id={ids[1]}",
                **{"Last-Event-ID": str(ids[4])}) as frames:
        got = frames.until("snapshot")
    assert [int(f["id"]) for f in got if f["event"] == "transition"] == ids[5:]
    with stream(gateway, f"?workflow_id={workflow_id}&last_event_id={ids[-1]}") as frames:
        assert [f["event"] for f in frames.until("snapshot")] == ["snapshot"]


def test_events__live_transitions_arrive_in_order(gateway: LiveGateway) -> None:
    """The all-workflows stream shows a new workflow and each of its transitions as they
    commit, each followed by fresh counts."""
    with stream(gateway) as frames:
        assert frames.until("counts")[-1]["data"]["counts"] == {}
        workflow_id = str(gateway.engine.start_workflow("podcast", {"topic": "<b>tides</b>"}))
        got = frames.until("counts")
        assert got[0]["data"] | {"at": None, "event_id": None} == {
            "event_id": None, "workflow_id": workflow_id, "kind": "podcast",
            "label": "<b>tides</b>", "from": None, "to": "fetching", "trigger": "start",
            "at": None, "after_s": None, "reason": None, "warnings": []}
        assert got[-1]["data"]["counts"] == {"fetching": 1}
        gateway.engine.cancel(workflow_id)
        got = frames.until("counts")
        assert transitions(got) == [("fetching", "cancelled")]
        assert got[-1]["data"]["counts"] == {"cancelled": 1}


def test_events__one_listener_connection_for_every_stream(gateway: LiveGateway,
                                                          db: Any) -> None:
    """Three open streams share one LISTEN connection; a workflow stream sees only its own."""
    mine = str(gateway.engine.start_workflow("podcast", {"topic": "mine"}))
    with stream(gateway) as a, stream(gateway, "?kind=podcast") as b, \
            stream(gateway, f"?workflow_id={mine}") as c:
        for frames, last in ((a, "counts"), (b, "counts"), (c, "snapshot")):
            frames.until(last)
        listening = db.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
            " AND query = 'LISTEN \"cpoa_events\"'").fetchone()["n"]
        assert (listening, hub(gateway).subscribers) == (1, 3)
        gateway.engine.start_workflow("podcast", {"topic": "other"})
        gateway.engine.cancel(mine)
        assert a.transitions(2) == [(None, "fetching"), ("fetching", "cancelled")]
        assert b.transitions(2) == [(None, "fetching"), ("fetching", "cancelled")]
        # Only its own workflow's: the other one's start, committed first, is not in it.
        assert transitions(c.until("snapshot")) == [("fetching", "cancelled")]


def test_events__listener_cut_then_missed_events_replayed(gateway: LiveGateway,
                                                          db: Any) -> None:
    """When the LISTEN connection is cut, a transition committed meanwhile still reaches the
    stream: the hub reconnects and every stream re-reads the table from its cursor."""
    workflow_id = str(gateway.engine.start_workflow("podcast", {"topic": "tides"}))
    with stream(gateway, f"?workflow_id={workflow_id}") as frames:
        frames.until("snapshot")
        # The hub's LISTEN connection may still be opening after the snapshot (under load):
        # cut it as soon as it is there.
        cut = wait_until(lambda: db.execute(
            "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = 'LISTEN \"cpoa_events\"'"
        ).fetchall(), timeout=10.0)
        assert [r["ok"] for r in cut] == [True]
        gateway.engine.cancel(workflow_id)  # most likely while nobody listens
        got = frames.until("snapshot")
        assert transitions(got) == [("fetching", "cancelled")]
        assert got[-1]["data"]["state"] == "cancelled"


def test_store__history_trigger_notifies_workflow_and_event_id(gateway: LiveGateway) -> None:
    """Each history row notifies cpoa_events with '<workflow_id>:<event_id>' at commit."""
    store = gateway.engine.store
    listener = store.listener(EVENTS_CHANNEL)
    try:
        assert listener.receive(0.01) == []
        workflow_id = gateway.engine.start_workflow("podcast", {"topic": "tides"})
        gateway.engine.cancel(workflow_id)
        got: list[str] = []
        wait_until(lambda: got.extend(listener.receive(0.5)) or len(got) >= 2, timeout=10.0)
        assert got == [f"{workflow_id}:{h['event_id']}" for h in store.get_history(workflow_id)]
    finally:
        listener.close()


def test_events__heartbeat_when_silent(gateway: LiveGateway) -> None:
    """A silent stream sends a comment every heartbeat interval."""
    gateway.server.config.app.state.live_heartbeat_s = 0.2
    with stream(gateway) as frames:
        frames.until("counts")
        assert frames.next() == {"comment": "heartbeat"}


def test_events__client_disconnect_ends_the_stream(gateway: LiveGateway) -> None:
    """A client that goes away is unsubscribed at once, not at the next heartbeat."""
    with stream(gateway) as frames:
        frames.until("counts")
        assert hub(gateway).subscribers == 1
    wait_until(lambda: hub(gateway).subscribers == 0, timeout=5.0)


def test_events__server_shutdown_ends_open_streams(gateway: LiveGateway, db: Any) -> None:
    """Stopping the server ends every open stream cleanly and closes the listener connection."""
    with stream(gateway) as frames:
        frames.until("counts")
        started = time.monotonic()
        gateway.server.should_exit = True
        assert frames.next() is None  # the stream ended (no error, no hang)
    gateway.thread.join(10.0)
    assert not gateway.thread.is_alive() and time.monotonic() - started < 5.0
    assert hub(gateway).join(5.0)
    wait_until(lambda: db.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
        " AND query = 'LISTEN \"cpoa_events\"'").fetchone()["n"] == 0, timeout=5.0)


@pytest.mark.parametrize("query, headers, status", [
    ("?workflow_id=nope", {}, 400),
    ("?last_event_id=-1", {}, 400),
    ("", {"Last-Event-ID": "1e3"}, 400),
    ("?kind=radio", {}, 400),
    ("?workflow_id=00000000-0000-0000-0000-000000000000", {}, 404),
])
def test_events__bad_request_refused(gateway: LiveGateway, query: str,
                                     headers: dict[str, str], status: int) -> None:
    """A malformed id or kind is 400 naming the field; an unknown workflow 404."""
    answer = gateway.client.get("/events" + query, headers=headers)
    assert answer.status_code == status
    assert answer.json()["field"] in ("workflow_id", "last_event_id", "Last-Event-ID", "kind")
