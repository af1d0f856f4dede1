"""The review editor in a real browser (Debian Chromium, Playwright): a workflow awaiting
review shows its script escaped in a form; a line is edited and approved with the API token;
the page follows it live to completed; the edited line reaches VFA and the transcript; then
Fork re-voices it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from cpoa.worker import Worker
from cpoa.testing.agent import ScriptedAgent
from tests.fix_agents import engine_for, wait_until
from tests.fix_gateway import LiveGateway
from tests.gateway.test_dashboard_browser import WAIT_MS

TOKEN = "tok-review-51e0"
SCRIPT = {"status": "success", "script_data": {
    "script_id": "s1", "title": "Tides <script>alert(1)</script>",
    "segments": [{"segment_title": "Intro", "lines": [
        {"speaker": "Host", "text": "Welcome to <b>tides</b>."},
        {"speaker": "Guest", "text": "Hi."}]}]}}



@pytest.mark.slow
def test_review_editor__edit_approve_follow_and_fork(
        make_gateway: Callable[..., LiveGateway], agent: ScriptedAgent, store: Any,
        browser: Any) -> None:
    """Edit a line in the browser, approve, watch completion live, find the edit voiced."""
    from cpoa_agents import episode

    gateway = make_gateway(CPOA_API_TOKEN=TOKEN)
    agent.set_result("/weave_script", SCRIPT)
    worker = Worker(engine_for(store, agent), concurrency=2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        answer = gateway.client.post("/v1/podcasts", json={"topic": "tides", "review": True},
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        workflow_id = answer.json()["workflow_id"]
        wait_until(lambda: store.get_workflow(workflow_id).state == "awaiting_review",
                   timeout=20)
        context = browser.new_context()
        problems: list[str] = []
        context.on("weberror", lambda error: problems.append(f"page error: {error.error}"))
        page = context.new_page()
        page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
        page.goto(f"{gateway.url}/workflows/{workflow_id}")
        expect(page.get_by_test_id("connection")).to_have_text("live", timeout=WAIT_MS)
        expect(page.get_by_test_id("script-title")).to_have_value(
            "Tides <script>alert(1)</script>")
        line = page.get_by_test_id("line-0-0")
        expect(line).to_have_value("Welcome to <b>tides</b>.")
        assert page.locator("#review b").count() == 0  # shown as text, never as markup
        line.fill("Welcome aboard, this line was edited in the browser.")
        page.get_by_test_id("token").fill(TOKEN)
        page.get_by_test_id("approve").click()
        expect(page.get_by_test_id("state")).to_have_text("completed", timeout=WAIT_MS)
        expect(page.get_by_test_id("review")).to_have_count(0)
        [voiced] = [r for r in agent.requests_to("/forge_voice")
                    if r["headers"]["x-workflow-id"] == workflow_id]
        edited = "Welcome aboard, this line was edited in the browser."
        assert voiced["body"]["script"]["segments"][0]["lines"][0]["text"] == edited
        outputs = gateway.client.get(f"/v1/workflows/{workflow_id}").json()["outputs"]
        assert edited in episode.transcript(outputs["script"])
        assert outputs["script_history"][0]["script"]["segments"][0]["lines"][0]["text"] == (
            "Welcome to <b>tides</b>.")
        page.reload()
        page.get_by_test_id("fork-from").select_option("synthesizing")
        page.get_by_test_id("fork-voice").fill("en+f4")
        page.get_by_test_id("fork").click()
        expect(page.get_by_test_id("fork-link")).to_be_visible(timeout=WAIT_MS)
        fork_id = page.get_by_test_id("fork-link").inner_text().split()[-1]
        wait_until(lambda: store.get_workflow(fork_id).state == "completed", timeout=20)
        assert str(store.get_workflow(fork_id).forked_from) == workflow_id
        context.close()
        assert problems == []
    finally:
        worker.stop()
        thread.join(15)


@pytest.mark.slow
def test_review_editor__a_new_revision_replaces_the_stale_form(
        make_gateway: Callable[..., LiveGateway], agent: ScriptedAgent, store: Any,
        browser: Any) -> None:
    """A page showing revision 1 while another reviewer rejects it and PSWA writes revision 2
    reloads its form with revision 2 (the stale edit is dropped, never laid over the new
    script); approving from it sends expected_revision 2."""
    gateway = make_gateway()
    engine = gateway.engine
    workflow_id = str(engine.start_workflow("podcast", {"topic": "tides", "review": True}))
    wait_until(lambda: engine.advance(workflow_id) == "awaiting_review", interval=0.01)
    context = browser.new_context()
    problems: list[str] = []
    context.on("weberror", lambda error: problems.append(f"page error: {error.error}"))
    page = context.new_page()
    page.goto(f"{gateway.url}/workflows/{workflow_id}")
    expect(page.get_by_test_id("connection")).to_have_text("live", timeout=WAIT_MS)
    expect(page.get_by_test_id("review")).to_have_attribute("data-revision", "1")
    page.get_by_test_id("line-0-0").fill("A stale edit of revision 1.")
    engine.review(workflow_id, approve=False, notes="Shorter.")  # another reviewer
    wait_until(lambda: engine.advance(workflow_id) == "awaiting_review", interval=0.01)
    second = store.get_workflow(workflow_id).context["script"]
    expect(page.get_by_test_id("review")).to_have_attribute("data-revision", "2",
                                                            timeout=WAIT_MS)
    expect(page.get_by_test_id("line-0-0")).to_have_value(
        second["segments"][0]["lines"][0]["text"])
    page.get_by_test_id("approve").click()
    expect(page.get_by_test_id("state")).to_have_text("synthesizing", timeout=WAIT_MS)
    review = store.get_workflow(workflow_id).context["review"]
    assert (review["revision"], review["edited"]) == (2, False)
    context.close()
    assert problems == []
