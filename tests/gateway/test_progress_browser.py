"""Live progress in a real browser (Debian Chromium, Playwright): a podcast driven by a real
worker through a real VFA (espeak-ng, held between turns so each stage can be looked at) and a
real ASF, followed on the dashboard's workflow page and on ASF's page, before it completes."""

from __future__ import annotations

import contextlib
import os
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright

from cpoa.store import PostgresStore
from cpoa.testing.agent import ScriptedAgent
from cpoa.worker import Worker
from cpoa_agents.asf import FrontendAgent
from tests.agents.gated import GatedVoiceAgent
from tests.agents.protocol import serving
from tests.fix_agents import engine_for, wait_until
from tests.fix_browser import CHROMIUM, CHROMIUM_ARGS
from tests.fix_gateway import LiveGateway

WAIT_MS = 20_000
TURNS = 6
LINES = ["The tide rises twice a day along most coasts.",
         "Why twice, and not once, as the moon passes overhead?",
         "Because the earth is pulled on both its near side and its far side.",
         "So there are two bulges of water, and we turn through both of them.",
         "And the sun adds its own smaller pull to the moon's.",
         "Which is why spring tides come at the full and the new moon."]
SCRIPT = {"status": "success", "script_data": {
    "script_id": "s-tides", "title": "Two tides a day", "segments": [
        {"segment_title": "Why two", "lines": [
            {"speaker": "Host" if i % 2 == 0 else "Guest", "text": text}
            for i, text in enumerate(LINES)]}]}}


@contextlib.contextmanager
def chromium_that_autoplays() -> Iterator[Any]:
    """Chromium allowed to play audio without a click (the test starts the live player)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"])
        yield browser
        browser.close()


def bar_value(page: Any, selector: str) -> float | None:
    """The value of a visible progress bar (None: absent or hidden)."""
    return page.evaluate(
        "s => { const p = document.querySelector(s); return p && !p.hidden"
        " && p.closest('[hidden]') === null ? p.value : null; }", selector)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Chromium not installed")
def test_progress__dashboard_bar_moves_and_asf_plays_turns_before_completion(
        store: PostgresStore, agent: ScriptedAgent, tmp_path: pathlib.Path) -> None:
    """VFA held after 2 of 6 turns: the dashboard's step bar shows 2/6 and ASF's card its own
    step bar with a live player whose source is the first turn, which starts playing, all while
    the workflow is synthesizing. 2 turns more: both bars move to 4/6 and the player knows 4
    parts. Let go: the workflow completes, the step bar goes away, the episode is offered."""
    agent.set_result("/weave_script", SCRIPT)
    with serving(GatedVoiceAgent(tmp_path / "vfa", open_turns=2)) as vfa, \
            serving(FrontendAgent(tmp_path / "asf", journal=False)) as asf, \
            chromium_that_autoplays() as browser:
        env = {"VFA_SERVICE_URL": vfa.base_url,
               "CPOA_ASF_SEND_UI_UPDATE_URL": asf.base_url + "/asf/internal/send_ui_update",
               "ASF_NOTIFICATION_URL": asf.base_url + "/asf/internal/notify_new_audio"}
        gateway = LiveGateway(engine_for(store, agent, **env))
        engine = engine_for(store, agent, **env)
        worker = Worker(engine, concurrency=1)
        thread = threading.Thread(target=worker.run, name="cpoa-worker", daemon=True)
        context = browser.new_context()
        problems: list[str] = []
        context.on("weberror", lambda error: problems.append(f"page error: {error.error}"))
        try:
            workflow_id = engine.start_workflow("podcast", {"topic": "tides"},
                                                client_id="browser-1")
            dashboard, live = context.new_page(), context.new_page()
            dashboard.goto(f"{gateway.url}/workflows/{workflow_id}")
            live.goto(asf.base_url + "/")
            for tab in (dashboard, live):
                expect(tab.get_by_test_id("connection")).to_have_text("live", timeout=WAIT_MS)
            expect(dashboard.get_by_test_id("step-progress")).to_be_hidden()
            thread.start()
            card = live.locator(f'[data-workflow-id="{workflow_id}"]')
            first_stage(store, workflow_id, vfa, dashboard, live, card)
            vfa.allow(2)
            dashboard.wait_for_function(
                "() => document.querySelector('[data-testid=step-progress]').value > 0.6",
                timeout=WAIT_MS)
            card_bar_at(live, workflow_id, 4 / 6)
            expect(card.get_by_test_id("live-caption")).to_contain_text("of 4", timeout=WAIT_MS)
            assert store.get_workflow(workflow_id).state == "synthesizing"
            vfa.go_on()
            expect(dashboard.get_by_test_id("state")).to_have_text("completed", timeout=WAIT_MS)
            assert bar_value(dashboard, "[data-testid=step-progress]") is None
            expect(dashboard.get_by_test_id("step-progress")).to_be_hidden()
            expect(card.get_by_test_id("step")).to_be_hidden(timeout=WAIT_MS)
            expect(card).to_have_attribute("data-final-status", "completed", timeout=WAIT_MS)
            expect(card.get_by_test_id("audio")).to_have_attribute(
                "src", store.get_workflow(workflow_id).context["audio"]["url"])
            live.screenshot(path=str(tmp_path / "asf-progress.png"), full_page=True)
        finally:
            context.close()
            worker.stop()
            if thread.ident is not None:
                thread.join(15.0)
            gateway.close()
    assert problems == []


def card_bar_at(live: Any, workflow_id: Any, value: float) -> None:
    """Waits until ASF's card of the workflow shows its step bar at ``value``."""
    live.wait_for_function(
        "([id, v]) => { const p = document.querySelector("
        "`[data-workflow-id='${id}'] [data-testid=step-progress]`);"
        " return p !== null && Math.abs(p.value - v) < 1e-3; }",
        arg=[str(workflow_id), value], timeout=WAIT_MS)


def first_stage(store: PostgresStore, workflow_id: Any, vfa: GatedVoiceAgent, dashboard: Any,
                live: Any, card: Any) -> None:
    """Two turns spoken, the third held: both pages show 2/6 and ASF plays the first turn."""
    wait_until(lambda: vfa.spoken == 2, timeout=30)
    dashboard.wait_for_function(
        "() => { const p = document.querySelector('[data-testid=step-progress]');"
        " return !p.hidden && Math.abs(p.value - 2 / 6) < 1e-3; }", timeout=WAIT_MS)
    expect(dashboard.get_by_test_id("step-percent")).to_have_text("33%")
    expect(dashboard.get_by_test_id("task-progress")).to_have_count(4)  # 3 done + VFA's
    expect(card.get_by_test_id("step")).to_be_visible(timeout=WAIT_MS)
    card_bar_at(live, workflow_id, 2 / 6)
    player = card.get_by_test_id("live-audio")
    src = player.get_attribute("src", timeout=WAIT_MS)
    assert src.startswith(f"{vfa.base_url}/turns/") and src.endswith(".wav")
    player.evaluate("audio => audio.play()")
    live.wait_for_function(  # really playing the first finished turn
        "a => !a.paused && a.currentTime > 0 && a.getAttribute('data-part') === '0'",
        arg=player.element_handle(), timeout=WAIT_MS)
    assert store.get_workflow(workflow_id).state == "synthesizing"
