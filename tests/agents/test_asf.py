"""ASF over real HTTP: intake and dedupe, the event stream, and the live page in Chromium."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import pathlib
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from cpoa_agents.asf import FrontendAgent
from cpoa_agents.service import MAX_BODY_BYTES, Response, Service
from tests.agents.protocol import serving
from tests.fix_browser import CHROMIUM, launch_chromium
from tests.media import PNG_1PX, tiny_wav

UI = "/asf/internal/send_ui_update"
NOTIFY = "/asf/internal/notify_new_audio"
HOSTILE = "<img src=x onerror=alert(1)><script>alert(1)</script>"
PODCAST_STATES = ("fetching", "analyzing", "scripting", "synthesizing", "imaging", "finalizing")
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason="Chromium not installed: apt-get install chromium")


@pytest.fixture
def asf(tmp_path: pathlib.Path) -> Iterator[FrontendAgent]:
    """A running ASF with its journal in tmp_path."""
    with serving(FrontendAgent(tmp_path / "asf")) as agent:
        yield agent


@pytest.fixture(scope="module")
def shared_asf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontendAgent]:
    """One ASF for the tests that store nothing (refusals, static files): each stop costs 0.5 s."""
    with serving(FrontendAgent(tmp_path_factory.mktemp("asf"))) as agent:
        yield agent


def ui_event(workflow_id: str, state: str, **data: Any) -> dict[str, Any]:
    """A UI event as CPOA's outbox posts it, with a fresh event_id."""
    return {"client_id": "client-1", "event_name": "generation_status",
            "event_id": str(uuid.uuid4()), "workflow_id": workflow_id,
            "data": {"workflow_id": workflow_id, "state": state, "stage": state,
                     "message": f"{state}...", "progress": 0.5, **data}}


def post(agent: Service, path: str, body: Any) -> requests.Response:
    """Posts JSON to the agent (json.dumps, unlike requests, lets a NaN through on purpose)."""
    return requests.post(agent.base_url + path, data=json.dumps(body), timeout=5,
                         headers={"Content-Type": "application/json"})


def workflows(agent: Service) -> dict[str, dict[str, Any]]:
    """The agent's workflow summaries by id."""
    answer = requests.get(agent.base_url + "/api/workflows", timeout=5).json()
    return {w["workflow_id"]: w for w in answer["workflows"]}


def read_frames(response: requests.Response, count: int, deadline_s: float = 10.0,
                field: str = "data") -> list[dict[str, str]]:
    """Reads SSE frames until ``count`` of them have ``field`` (comments are field "comment")."""
    deadline = time.monotonic() + deadline_s
    frames: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    # chunk_size=1: a larger chunk would block until that many bytes arrived.
    for raw in response.iter_lines(chunk_size=1):
        assert time.monotonic() < deadline, f"only {len(frames)} frames within {deadline_s} s"
        if raw:
            name, _, value = raw.decode().partition(":")
            fields[name or "comment"] = value.removeprefix(" ")
            continue
        if fields:
            frames.append(fields)
            fields = {}
        if sum(field in frame for frame in frames) >= count:
            return frames
    raise AssertionError(f"stream ended after {len(frames)} frames")


def open_stream(agent: Service, query: str = "", **headers: str) -> requests.Response:
    """Opens /events; the read timeout bounds every blocking read."""
    return requests.get(agent.base_url + "/events" + query, headers=headers, stream=True,
                        timeout=(5, 5))


def data_frames(frames: list[dict[str, str]]) -> list[dict[str, str]]:
    return [frame for frame in frames if "data" in frame]


def test_send_ui_update__accepted(asf: FrontendAgent) -> None:
    """An event is acknowledged and becomes the workflow's latest state."""
    answer = post(asf, UI, ui_event("wf-1", "fetching", progress=0.0))
    assert answer.status_code == 200
    assert answer.json() == {"accepted": True, "duplicate": False, "seq": 1}
    summary = workflows(asf)["wf-1"]
    assert (summary["state"], summary["message"], summary["progress"]) == \
        ("fetching", "fetching...", 0.0)


def test_send_ui_update__duplicate_event_id_stored_once(asf: FrontendAgent) -> None:
    """A redelivered event_id is answered 200 duplicate and neither stored nor journalled twice."""
    event = ui_event("wf-1", "fetching")
    first, again = post(asf, UI, event), post(asf, UI, event)
    assert again.status_code == 200
    assert again.json() == {"accepted": True, "duplicate": True, "seq": first.json()["seq"]}
    assert workflows(asf)["wf-1"]["event_count"] == 1
    assert len((asf.data_dir / "asf-events.jsonl").read_text().splitlines()) == 1


def test_send_ui_update__odd_data_fields_ignored(asf: FrontendAgent) -> None:
    """Odd fields in data are accepted (a 422 would stall CPOA's outbox), markup kept as text."""
    event = ui_event("wf-1", "fetching", progress=10**400, warnings="w", message=HOSTILE,
                     image_url="javascript:alert(1)")
    event["data"]["state"] = 5
    assert post(asf, UI, event).status_code == 200
    summary = workflows(asf)["wf-1"]
    assert (summary["state"], summary["progress"], summary["warnings"], summary["image_url"],
            summary["message"]) == (None, 1.0, [], None, HOSTILE)


@pytest.mark.parametrize(("field", "value"), [
    ("client_id", None), ("client_id", "  "), ("event_name", "progress"), ("data", [1]),
    ("data", {"progress": math.nan}), ("event_id", 7), ("workflow_id", ""),
])
def test_send_ui_update__bad_input_names_field(shared_asf: FrontendAgent, field: str,
                                               value: Any) -> None:
    """A missing or mistyped field is refused with 422 naming it."""
    event = ui_event("wf-1", "fetching")
    event[field] = value
    answer = post(shared_asf, UI, event)
    assert answer.status_code == 422
    assert answer.json()["field"] == field
    assert workflows(shared_asf) == {}


def test_send_ui_update__oversized_body_is_413(shared_asf: FrontendAgent) -> None:
    """A body over the framework's limit is refused with 413 before it is read."""
    netloc = urllib.parse.urlsplit(shared_asf.base_url).netloc
    with contextlib.closing(http.client.HTTPConnection(netloc, timeout=5)) as connection:
        connection.putrequest("POST", UI)
        connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        connection.endheaders()  # announce the size only: the refusal must not need the body
        answer = connection.getresponse()
        assert (answer.status, json.loads(answer.read())["field"]) == (413, "body")


def test_notify_new_audio__accepted_and_listed(asf: FrontendAgent) -> None:
    """A finished episode is stored once and shown in /api/workflows."""
    notice = {"stream_id": "s-1", "audio_url": "http://vfa.test/a.mp3", "workflow_id": "wf-1"}
    first, again = post(asf, NOTIFY, notice), post(asf, NOTIFY, notice)
    assert first.status_code == again.status_code == 200
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    summary = workflows(asf)["wf-1"]
    assert (summary["audio_url"], summary["stream_id"], summary["event_count"]) == \
        ("http://vfa.test/a.mp3", "s-1", 1)


@pytest.mark.parametrize(("field", "value"), [
    ("audio_url", "javascript:alert(1)"), ("audio_url", "file:///etc/passwd"),
    ("audio_url", "/relative.mp3"), ("image_url", "data:image/png;base64,AAAA"),
    ("stream_id", None), ("workflow_id", 3),
])
def test_notify_new_audio__bad_input_names_field(shared_asf: FrontendAgent, field: str,
                                                 value: Any) -> None:
    """Non-http(s) URLs and missing ids are refused with 422 naming the field."""
    notice = {"stream_id": "s-1", "audio_url": "https://vfa.test/a.mp3", "workflow_id": "wf-1",
              field: value}
    answer = post(shared_asf, NOTIFY, notice)
    assert (answer.status_code, answer.json()["field"]) == (422, field)


def test_send_ui_update__dedupe_and_state_survive_restart(tmp_path: pathlib.Path) -> None:
    """A restarted ASF reloads its journal: same sequence, same workflows, duplicates dropped."""
    event = ui_event("wf-1", "analyzing")
    with serving(FrontendAgent(tmp_path)) as first:
        post(first, UI, event)
    with serving(FrontendAgent(tmp_path)) as second:
        assert post(second, UI, event).json() == {"accepted": True, "duplicate": True, "seq": 1}
        assert post(second, UI, ui_event("wf-1", "scripting")).json()["seq"] == 2
        assert workflows(second)["wf-1"]["state"] == "scripting"


def test_events__delivers_in_order_with_ids_then_live(asf: FrontendAgent) -> None:
    """A new client gets every earlier event in order with ids, then new ones as they come."""
    sent = [ui_event("wf-1", state) for state in PODCAST_STATES[:3]]
    for event in sent:
        post(asf, UI, event)
    with open_stream(asf) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        frames = data_frames(read_frames(stream, 3))
        assert [f["id"] for f in frames] == ["1", "2", "3"]
        assert [f["event"] for f in frames] == ["generation_status"] * 3
        assert [json.loads(f["data"])["event_id"] for f in frames] == \
            [e["event_id"] for e in sent]
        post(asf, NOTIFY, {"stream_id": "s", "audio_url": "https://x.test/a.wav",
                           "workflow_id": "wf-1"})
        live = data_frames(read_frames(stream, 1))[0]
    assert (live["id"], live["event"]) == ("4", "new_audio")
    assert json.loads(live["data"])["audio_url"] == "https://x.test/a.wav"


@pytest.mark.parametrize(("query", "headers"), [("", {"Last-Event-ID": "2"}),
                                               ("?last_event_id=2", {})])
def test_events__resumes_after_last_event_id(asf: FrontendAgent, query: str,
                                             headers: dict[str, str]) -> None:
    """A client resuming with Last-Event-ID (or ?last_event_id=) gets only the later events."""
    for state in PODCAST_STATES[:4]:
        post(asf, UI, ui_event("wf-1", state))
    with open_stream(asf, query, **headers) as stream:
        frames = data_frames(read_frames(stream, 2))
    assert [(f["id"], json.loads(f["data"])["data"]["state"]) for f in frames] == \
        [("3", "scripting"), ("4", "synthesizing")]


def test_events__bad_last_event_id_is_400(shared_asf: FrontendAgent) -> None:
    """A Last-Event-ID that is not a sequence number is refused naming the header."""
    answer = requests.get(shared_asf.base_url + "/events", headers={"Last-Event-ID": "abc"},
                          timeout=5)
    assert (answer.status_code, answer.json()["field"]) == (400, "Last-Event-ID")


def test_events__heartbeat_when_idle(asf: FrontendAgent) -> None:
    """An idle stream gets comment heartbeats (interval shortened for the test)."""
    asf.heartbeat_s = 0.05
    post(asf, UI, ui_event("wf-1", "fetching"))
    with open_stream(asf) as stream:
        frames = read_frames(stream, 2, field="comment")
    assert [frame["id"] for frame in data_frames(frames)] == ["1"]
    assert [frame["comment"] for frame in frames if "comment" in frame] == ["heartbeat"] * 2


def test_events__stream_ends_when_server_stops(asf: FrontendAgent) -> None:
    """Stopping ASF ends open streams cleanly instead of leaving them hanging."""
    post(asf, UI, ui_event("wf-1", "fetching"))
    with open_stream(asf) as stream:
        read_frames(stream, 1)
        started = time.monotonic()
        asf.stop()  # stopping again in the fixture is harmless
        rest = list(stream.iter_lines(chunk_size=1))  # returns at EOF, not at the read timeout
    assert time.monotonic() - started < 3
    assert all(not line.startswith(b"data") for line in rest)


def test_page__served_with_strict_policy(shared_asf: FrontendAgent) -> None:
    """The page, script and style come with their types and a no-inline-script policy."""
    page = requests.get(shared_asf.base_url + "/", timeout=5)
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert 'src="/static/asf.js"' in page.text
    script = requests.get(shared_asf.base_url + "/static/asf.js", timeout=5)
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert "innerHTML" not in script.text
    style = requests.get(shared_asf.base_url + "/static/asf.css", timeout=5)
    assert style.headers["Content-Type"] == "text/css; charset=utf-8"


@pytest.mark.parametrize("path", ["/static/missing.js", "/static/..%2Fasf.py",
                                  "/static/ASF.JS", "/static/asf.py", "/static/sub/asf.js"])
def test_static__unknown_names_are_404(shared_asf: FrontendAgent, path: str) -> None:
    """Only existing files with a plain lower-case name and a known type are served."""
    assert requests.get(shared_asf.base_url + path, timeout=5).status_code == 404


class MediaServer(Service):
    """Serves a tiny WAV and a 1-pixel PNG, standing in for VFA and IGA."""

    name = "media"

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("GET", r"/tiny\.wav", lambda _: Response(200, tiny_wav(), "audio/wav")),
                ("GET", r"/long\.wav", lambda _: Response(200, tiny_wav(3.0), "audio/wav")),
                ("GET", r"/cover\.png", lambda _: Response(200, PNG_1PX, "image/png"))]



@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (never `playwright install`)."""
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
def page(browser: Any, asf: FrontendAgent) -> Iterator[Any]:
    """The live page, opened and connected to /events; fails the test on any page error."""
    tab = browser.new_page()  # in a fresh context of its own
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"),
                                     dialog.dismiss()))
    tab.goto(asf.base_url + "/")
    expect(tab.get_by_test_id("connection")).to_have_text("live", timeout=10_000)
    yield tab
    tab.close()
    assert problems == []


@pytest.mark.slow
@needs_chromium
def test_page__shows_states_live_then_audio(asf: FrontendAgent, page: Any,
                                             tmp_path: pathlib.Path) -> None:
    """The open page shows each state as it is posted, then the cover and a playable episode."""
    media = MediaServer(tmp_path / "media")
    media.start("127.0.0.1", 0)
    try:
        workflow_id = str(uuid.uuid4())
        card = page.locator(f'[data-workflow-id="{workflow_id}"]')
        for number, state in enumerate(PODCAST_STATES):
            post(asf, UI, ui_event(workflow_id, state, progress=number / len(PODCAST_STATES)))
            expect(card.get_by_test_id("state")).to_have_text(state, timeout=10_000)
        wav_url, png_url = media.base_url + "/tiny.wav", media.base_url + "/cover.png"
        post(asf, NOTIFY, {"stream_id": "s-1", "audio_url": wav_url, "workflow_id": workflow_id,
                           "image_url": png_url})
        post(asf, UI, ui_event(workflow_id, "completed", progress=1.0, is_terminal=True,
                               final_status="completed", warnings=["cover art: best effort"]))
        expect(card.get_by_test_id("state")).to_have_text("completed", timeout=10_000)
        expect(card.get_by_test_id("audio")).to_have_attribute("src", wav_url, timeout=10_000)
        expect(card.get_by_test_id("cover")).to_have_attribute("src", png_url)
        expect(card.get_by_test_id("percent")).to_have_text("100 %")
        expect(card.get_by_test_id("warnings")).to_have_text("cover art: best effort")
        expect(card.get_by_test_id("history").locator("li")).to_have_count(7)
        page.wait_for_function(  # the browser really loaded the episode
            "id => { const a = document.querySelector(`[data-workflow-id='${id}'] audio`);"
            " return a !== null && a.readyState >= 1 && a.duration > 0.4; }",
            arg=workflow_id, timeout=10_000)
        page.screenshot(path=str(tmp_path / "asf.png"), full_page=True)
    finally:
        media.stop()
    assert (tmp_path / "asf.png").stat().st_size > 0


@pytest.mark.slow
@needs_chromium
def test_page__markup_in_events_is_inert(asf: FrontendAgent, page: Any) -> None:
    """Markup and javascript: URLs from agents appear as text and create no element."""
    post(asf, UI, ui_event("wf-x", "fetching", message=HOSTILE, image_url="javascript:alert(1)",
                           warnings=[HOSTILE]))
    post(asf, UI, {**ui_event("wf-x", "failed", message=HOSTILE, final_status="failed",
                              is_terminal=True), "event_name": "task_error"})
    card = page.locator('[data-workflow-id="wf-x"]')
    expect(card.get_by_test_id("state")).to_have_text("failed", timeout=10_000)
    expect(card.get_by_test_id("message")).to_have_text(HOSTILE)
    expect(card.get_by_test_id("warnings")).to_have_text(HOSTILE)
    assert card.locator("script, img, audio").count() == 0
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert page.evaluate("[...document.scripts].map(s => new URL(s.src).pathname)") == \
        ["/static/asf.js"]


@pytest.mark.slow
@needs_chromium
def test_page__reconnects_to_a_restarted_server(asf: FrontendAgent, page: Any) -> None:
    """After ASF restarts on the same port, the page reconnects and shows newer events."""
    post(asf, UI, ui_event("wf-r", "fetching"))
    card = page.locator('[data-workflow-id="wf-r"]')
    expect(card.get_by_test_id("state")).to_have_text("fetching", timeout=10_000)
    port = int(urllib.parse.urlsplit(asf.base_url).port or 0)
    asf.stop()
    expect(page.get_by_test_id("connection")).not_to_have_text("live", timeout=10_000)
    asf.start("127.0.0.1", port)  # same object: the fixture stops it again afterwards
    post(asf, UI, ui_event("wf-r", "analyzing"))
    expect(card.get_by_test_id("state")).to_have_text("analyzing", timeout=15_000)
    expect(card.get_by_test_id("history").locator("li")).to_have_count(2)


def progress_event(workflow_id: str, progress: float, partial: list[Any],
                   **data: Any) -> dict[str, Any]:
    """A generation_progress event as CPOA's outbox posts it (an agent's live progress)."""
    event = ui_event(workflow_id, "synthesizing", **{
        "progress": progress, "partial": partial, "agent": "VFA",
        "workflow_progress": 0.5 + progress / 7, **data})
    return {**event, "event_name": "generation_progress"}


def test_send_ui_update__progress_folds_into_the_summary(asf: FrontendAgent) -> None:
    """generation_progress is accepted; the summary keeps the workflow's progress, the step's
    and how many parts are finished; the next state starts the step afresh."""
    parts = [{"turn": 0, "audio_url": "http://vfa/turns/a.wav"}]
    assert post(asf, UI, ui_event("wf-p", "synthesizing", progress=0.5)).status_code == 200
    assert post(asf, UI, progress_event("wf-p", 0.25, parts)).status_code == 200
    summary = workflows(asf)["wf-p"]
    assert (summary["state"], summary["step_progress"], summary["partial_count"]) == (
        "synthesizing", 0.25, 1)
    assert summary["progress"] == pytest.approx(0.5 + 0.25 / 7)
    post(asf, UI, ui_event("wf-p", "imaging", progress=0.7))
    summary = workflows(asf)["wf-p"]
    assert (summary["step_progress"], summary["partial_count"], summary["progress"]) == (
        None, 0, 0.7)


@pytest.mark.slow
@needs_chromium
def test_page__live_player_plays_finished_parts_in_order(
        asf: FrontendAgent, page: Any, tmp_path: pathlib.Path) -> None:
    """Progress events show the step's bar; their http(s) parts queue on a live player in
    order (a javascript: URL and a non-URL are skipped, the agent's markup stays text). A
    click on play plays the first; it ends before the second is reported, which then plays at
    once; the third, reported while the second (3 s) plays, follows when it ends."""
    media = MediaServer(tmp_path / "media")
    media.start("127.0.0.1", 0)
    try:
        first, second = media.base_url + "/tiny.wav?part=0", media.base_url + "/long.wav"
        third = media.base_url + "/tiny.wav?part=2"
        post(asf, UI, ui_event("wf-live", "synthesizing", progress=0.5))
        post(asf, UI, progress_event("wf-live", 0.25, [
            {"audio_url": "javascript:alert(1)"}, "<b>x</b>", {"audio_url": first}],
            agent=HOSTILE))
        card = page.locator('[data-workflow-id="wf-live"]')
        expect(card.get_by_test_id("step")).to_be_visible(timeout=10_000)
        expect(card.get_by_test_id("step-label")).to_have_text(f"{HOSTILE} 25 %")
        player = card.get_by_test_id("live-audio")
        expect(player).to_have_attribute("src", first)
        expect(card.get_by_test_id("live-caption")).to_have_text("part 1 of 1 ready")
        box = player.bounding_box()
        page.mouse.click(box["x"] + 20, box["y"] + box["height"] / 2)  # the play button
        page.wait_for_function("a => a.ended", arg=player.element_handle(), timeout=10_000)
        post(asf, UI, progress_event("wf-live", 0.5, [{"audio_url": first},
                                                      {"audio_url": second}]))
        expect(player).to_have_attribute("data-part", "1", timeout=10_000)
        expect(player).to_have_attribute("src", second)
        page.wait_for_function("a => !a.paused && a.currentTime > 0",
                               arg=player.element_handle(), timeout=10_000)
        post(asf, UI, progress_event("wf-live", 0.75, [{"audio_url": u}
                                                       for u in (first, second, third)]))
        expect(card.get_by_test_id("live-caption")).to_have_text("part 2 of 3 ready")
        assert player.evaluate("a => !a.ended")  # the third waits for the second to end
        expect(player).to_have_attribute("data-part", "2", timeout=10_000)
        expect(player).to_have_attribute("src", third)
        assert card.locator("script, img, b").count() == 0
    finally:
        media.stop()
