"""The dashboard in a real browser (Debian Chromium driven by Playwright): a workflow started
through the API, driven by a real worker against a real agent, followed live; Retry clicked."""

from __future__ import annotations

import functools
import http.server
import pathlib
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from cpoa.store import PostgresStore
from cpoa.worker import Worker
from cpoa.testing.agent import Reply, ScriptedAgent
from tests.fix_agents import engine_for
from tests.fix_gateway import LiveGateway
from tests.media import PNG_1PX, tiny_wav

WAIT_MS = 20_000
TOKEN = "tok-dashboard-7d41c9"



@pytest.fixture
def media(tmp_path: pathlib.Path) -> Iterator[str]:
    """A loopback server of an episode (WAV) and a cover (PNG), standing in for VFA and IGA."""
    (tmp_path / "episode.wav").write_bytes(tiny_wav())
    (tmp_path / "cover.png").write_bytes(PNG_1PX)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def start_worker(store: PostgresStore, agent: ScriptedAgent) -> Iterator[Callable[[], None]]:
    """Starts a real worker on the test database and agent when called; stops it after."""
    worker = Worker(engine_for(store, agent), concurrency=2)
    thread = threading.Thread(target=worker.run, name="cpoa-worker", daemon=True)
    yield thread.start
    worker.stop()
    if thread.ident is not None:
        thread.join(15.0)
    assert not thread.is_alive(), "the worker did not stop"



@pytest.mark.slow
def test_dashboard__follows_a_workflow_live_and_retries_it(
        make_gateway: Callable[..., LiveGateway], agent: ScriptedAgent,
        start_worker: Callable[[], None], media: str, browser: Any,
        tmp_path: pathlib.Path) -> None:
    """The list and the workflow page show a workflow's states as a worker makes them; after a
    permanent PSWA failure, Retry (asking for the API token first) resumes it and the page ends
    with a playable episode."""
    gateway = make_gateway(CPOA_API_TOKEN=TOKEN)
    agent.script("POST", "/weave_script", Reply(422, {"error": "<b>script refused</b>"}))
    agent.set_result("/forge_voice", {
        "status": "success", "audio_url": media + "/episode.wav", "audio_format": "wav",
        "duration_s": 0.5, "stream_id": "s-1", "tts_settings_used": {}})
    agent.set_result("/generate_image", {"status": "success", "image_url": media + "/cover.png"})
    answer = gateway.client.post("/v1/podcasts", json={"topic": "<i>tidal</i> power"},
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 202, answer.text
    workflow_id = answer.json()["workflow_id"]

    context = browser.new_context()
    problems: list[str] = []
    context.on("weberror", lambda error: problems.append(f"page error: {error.error}"))
    listing, page = context.new_page(), context.new_page()
    for tab in (listing, page):
        tab.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text} {m.location}"))
        tab.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    listing.goto(gateway.url + "/")
    page.goto(f"{gateway.url}/workflows/{workflow_id}")
    for tab in (listing, page):
        expect(tab.get_by_test_id("connection")).to_have_text("live", timeout=WAIT_MS)
    row = listing.locator(f'tr[data-workflow-id="{workflow_id}"]')
    expect(row.get_by_test_id("row-state")).to_have_text("fetching")
    expect(page.get_by_test_id("title")).to_have_text("<i>tidal</i> power")
    expect(page.get_by_test_id("state")).to_have_text("fetching")

    start_worker()  # only now: every change below reaches the open pages live
    expect(page.get_by_test_id("state")).to_have_text("failed", timeout=WAIT_MS)
    expect(page.get_by_test_id("error")).to_contain_text("<b>script refused</b>")
    expect(page.get_by_test_id("timeline").locator("tr")).to_have_count(4)
    expect(page.locator('svg [data-state="failed"]')).to_have_class("state current")
    expect(row.get_by_test_id("row-state")).to_have_text("failed", timeout=WAIT_MS)
    expect(listing.get_by_test_id("count-failed")).to_have_text("1")
    expect(row.locator("[data-cell=error]")).to_contain_text("<b>script refused</b>")
    expect(page.get_by_test_id("cancel")).to_be_enabled()

    page.get_by_test_id("retry").click()
    expect(page.get_by_test_id("action-status")).to_contain_text("API token")
    expect(page.get_by_test_id("token")).to_be_focused()
    page.get_by_test_id("token").fill(TOKEN)
    page.get_by_test_id("retry").click()
    expect(page.get_by_test_id("state")).to_have_text("completed", timeout=WAIT_MS)
    expect(page.get_by_test_id("timeline")).to_contain_text("failed → scripting")
    expect(page.get_by_test_id("timeline").locator("tr")).to_have_count(9)
    expect(page.get_by_test_id("tasks").locator('tr[data-status="failed"]')).to_have_count(1)
    expect(page.get_by_test_id("tasks").locator('tr[data-status="succeeded"]')).to_have_count(6)
    expect(page.get_by_test_id("audio")).to_have_attribute("src", media + "/episode.wav")
    expect(page.get_by_test_id("cover")).to_have_attribute("src", media + "/cover.png")
    expect(page.get_by_test_id("retry")).to_be_disabled()
    expect(page.get_by_test_id("cancel")).to_be_disabled()
    expect(page.locator('svg [data-state="completed"]')).to_have_class("state final current")
    expect(page.locator("svg").get_by_test_id("count-completed")).to_have_text("1 now")
    expect(page.locator("svg").get_by_test_id("count-fetching")).to_have_text("0 now")
    page.wait_for_function(  # the browser really loaded the episode
        "() => { const a = document.querySelector('audio');"
        " return a !== null && a.readyState >= 1 && a.duration > 0.4; }", timeout=WAIT_MS)
    expect(row.get_by_test_id("row-state")).to_have_text("completed", timeout=WAIT_MS)
    expect(listing.get_by_test_id("count-completed")).to_have_text("1")
    expect(listing.get_by_test_id("count-failed")).to_have_text("0")
    expect(row.locator("[data-cell=error]")).to_have_text("")
    page.screenshot(path=str(tmp_path / "workflow.png"), full_page=True)
    listing.screenshot(path=str(tmp_path / "list.png"), full_page=True)
    assert page.evaluate("[...document.scripts].map(s => new URL(s.src).pathname)") == \
        ["/static/workflow.js"]
    assert page.evaluate("sessionStorage.getItem('cpoa-api-token')") == TOKEN
    problems.remove(next(p for p in problems if "401" in p))  # the refused first click
    context.close()  # closes the streams before the gateway stops
    assert problems == []


NARROW = {"width": 390, "height": 844}
"""A phone's viewport, in CSS pixels."""
CONFIRM = "Cancel this workflow? Its unfinished agent work is abandoned; this cannot be undone."


def _sideways_overflow(page: Any) -> int:
    """How many CSS pixels the page is wider than the viewport (0: it fits)."""
    return page.evaluate("() => document.documentElement.scrollWidth"
                         " - document.documentElement.clientWidth")


@pytest.mark.slow
def test_dashboard__fits_a_phone_and_cancel_asks_first(
        make_gateway: Callable[..., LiveGateway], agent: ScriptedAgent, browser: Any,
        tmp_path: pathlib.Path) -> None:
    """At 390 px wide neither page overflows sideways (screenshots kept in tmp_path); Cancel
    asks first: declined, nothing changes; confirmed, the workflow is cancelled and its
    unfinished task shows abandoned instead of running."""
    gateway = make_gateway()
    agent.pending_polls = 1000  # WCHA's task stays unfinished
    workflow_id = str(gateway.engine.start_workflow(
        "podcast", {"topic": "tidal power and the long swell of the open ocean"}))
    assert gateway.engine.advance(workflow_id) == "fetching"
    context = browser.new_context(viewport=NARROW)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    dialogs: list[tuple[str, str]] = []
    answers = iter([False, True])

    def answer(dialog: Any) -> None:
        dialogs.append((dialog.type, dialog.message))
        dialog.accept() if next(answers) else dialog.dismiss()
    page.on("dialog", answer)
    page.goto(f"{gateway.url}/workflows/{workflow_id}")
    expect(page.get_by_test_id("connection")).to_have_text("live", timeout=WAIT_MS)
    expect(page.get_by_test_id("tasks")).to_contain_text("(running)")
    page.screenshot(path=str(tmp_path / "workflow-390.png"), full_page=True)
    assert _sideways_overflow(page) == 0

    page.get_by_test_id("cancel").click()
    expect(page.get_by_test_id("action-status")).to_have_text("cancel: not confirmed")
    assert gateway.engine.store.get_workflow(uuid.UUID(workflow_id)).state == "fetching"
    page.get_by_test_id("cancel").click()
    expect(page.get_by_test_id("state")).to_have_text("cancelled", timeout=WAIT_MS)
    expect(page.get_by_test_id("tasks")).to_contain_text("(abandoned)")
    expect(page.get_by_test_id("tasks")).not_to_contain_text("(running)")
    assert dialogs == [("confirm", CONFIRM)] * 2

    listing = context.new_page()
    listing.goto(gateway.url + "/")
    expect(listing.get_by_test_id("connection")).to_have_text("live", timeout=WAIT_MS)
    listing.screenshot(path=str(tmp_path / "list-390.png"), full_page=True)
    assert _sideways_overflow(listing) == 0
    context.close()
    assert problems == []
