"""The review and fork routes: 200/202 on success, 409 for the losing reviewer, 422 naming the
field, 401 without the token."""

from __future__ import annotations

import copy

from tests.fix_agents import drive, wait_until

TOKEN = "review-token"


def awaiting(engine) -> str:
    workflow_id = engine.start_workflow("podcast", {"topic": "tides", "review": True})
    wait_until(lambda: engine.advance(workflow_id) == "awaiting_review", interval=0.01)
    return str(workflow_id)


def test_review_route__approve_then_409(gateway):
    """An approval is a 200 with the next state; a second one is a 409 invalid_transition."""
    workflow_id = awaiting(gateway.engine)
    why = gateway.client.get(f"/v1/workflows/{workflow_id}/why")
    assert (why.status_code, why.json()["state"]) == (200, "awaiting_review")
    assert gateway.client.get(f"/workflows/{workflow_id}").status_code == 200
    answer = gateway.client.post(f"/v1/workflows/{workflow_id}/review",
                                 json={"decision": "approve"})
    assert (answer.status_code, answer.json()) == (200, {"workflow_id": workflow_id,
                                                         "state": "synthesizing"})
    again = gateway.client.post(f"/v1/workflows/{workflow_id}/review",
                                json={"decision": "reject", "notes": "too late"})
    assert (again.status_code, again.json()["error"]) == (409, "invalid_transition")
    assert "awaiting_review" in again.json()["message"]


def test_review_route__stale_expected_revision_is_409_naming_it(gateway, store):
    """A review of a revision the workflow has moved past is a 409 naming the current one;
    the dashboard's editor carries the revision it shows."""
    workflow_id = awaiting(gateway.engine)
    gateway.engine.review(workflow_id, approve=False, notes="Shorter.")
    wait_until(lambda: gateway.engine.advance(workflow_id) == "awaiting_review", interval=0.01)
    assert 'data-revision="2"' in gateway.client.get(f"/workflows/{workflow_id}").text
    stale = gateway.client.post(f"/v1/workflows/{workflow_id}/review",
                                json={"decision": "approve", "expected_revision": 1})
    assert (stale.status_code, stale.json()["error"]) == (409, "invalid_transition")
    assert "revision 2, not 1" in stale.json()["message"]
    assert store.get_workflow(workflow_id).state == "awaiting_review"
    fresh = gateway.client.post(f"/v1/workflows/{workflow_id}/review",
                                json={"decision": "approve", "expected_revision": 2})
    assert (fresh.status_code, fresh.json()["state"]) == (200, "synthesizing")


def test_review_route__bad_edit_is_422_naming_the_field(gateway, store):
    """An edited script with a bad line is a 422 naming it; nothing changes."""
    workflow_id = awaiting(gateway.engine)
    before = store.get_workflow(workflow_id)
    script = copy.deepcopy(before.context["script"])
    script["segments"][0]["lines"][0]["text"] = ""
    answer = gateway.client.post(f"/v1/workflows/{workflow_id}/review",
                                 json={"decision": "approve", "script": script})
    assert answer.status_code == 422
    assert answer.json()["field"] == "script.segments[0].lines[0].text"
    assert store.get_workflow(workflow_id) == before


def test_review_route__edit_and_reject_with_notes(gateway, store):
    """An edited approval is stored; a rejection with notes goes back to scripting."""
    workflow_id = awaiting(gateway.engine)
    script = copy.deepcopy(store.get_workflow(workflow_id).context["script"])
    script["title"] = "<b>Edited</b> title"
    answer = gateway.client.post(f"/v1/workflows/{workflow_id}/review",
                                 json={"decision": "approve", "script": script})
    assert answer.json()["state"] == "synthesizing"
    assert store.get_workflow(workflow_id).context["script"]["title"] == "<b>Edited</b> title"
    other = awaiting(gateway.engine)
    rejected = gateway.client.post(f"/v1/workflows/{other}/review",
                                   json={"decision": "reject", "notes": "Shorter."})
    assert rejected.json()["state"] == "scripting"
    missing = gateway.client.post(f"/v1/workflows/{other}/review", json={"decision": "maybe"})
    assert (missing.status_code, missing.json()["field"]) == (422, "decision")


def test_review_and_fork_routes__need_the_token(make_gateway, store):
    """With CPOA_API_TOKEN set, review and fork without it are 401 and change nothing."""
    gateway = make_gateway(CPOA_API_TOKEN=TOKEN)
    workflow_id = awaiting(gateway.engine)
    refused = gateway.client.post(f"/v1/workflows/{workflow_id}/review",
                                  json={"decision": "approve"})
    assert refused.status_code == 401
    forked = gateway.client.post(f"/v1/workflows/{workflow_id}/fork",
                                 json={"from_state": "fetching"})
    assert forked.status_code == 401
    assert store.get_workflow(workflow_id).state == "awaiting_review"
    allowed = gateway.client.post(f"/v1/workflows/{workflow_id}/review",
                                  json={"decision": "approve"},
                                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert allowed.status_code == 200


def test_fork_route__202_with_forked_from_and_422_unreached(gateway, agent):
    """A fork is a 202 with its status URL, whose status names the source; a fork from a
    state the source never reached is a 422 naming from_state."""
    source = gateway.engine.start_workflow("podcast", {"topic": "tides"})
    assert drive(gateway.engine, source) == "completed"
    answer = gateway.client.post(f"/v1/workflows/{source}/fork", json={
        "from_state": "synthesizing", "params": {"voice_params": {"voice_name": "en+f4"}}})
    assert answer.status_code == 202
    status = gateway.client.get(answer.json()["status_url"]).json()
    assert status["forked_from"] == str(source)
    assert status["state"] == "synthesizing"
    listed = gateway.client.get("/v1/workflows").json()["items"]
    assert {str(source): None, status["workflow_id"]: str(source)} == {
        item["workflow_id"]: item["forked_from"] for item in listed}
    running = gateway.engine.start_workflow("podcast", {"topic": "tides"})
    busy = gateway.client.post(f"/v1/workflows/{running}/fork", json={"from_state": "fetching"})
    assert busy.status_code == 409
    failed = gateway.client.post(f"/v1/workflows/{source}/fork",
                                 json={"from_state": "awaiting_review"})
    assert (failed.status_code, failed.json()["field"]) == (422, "from_state")


def test_fork_route__voice_params_merged_and_ineffective_change_422(gateway):
    """The API merges voice_params into the source's like the CLI does, and refuses a
    parameter no step from from_state on reads, naming it."""
    source = gateway.engine.start_workflow("podcast", {
        "topic": "tides", "voice_params": {"voice_name": "en", "speaking_rate": 1.2}})
    assert drive(gateway.engine, source) == "completed"
    answer = gateway.client.post(f"/v1/workflows/{source}/fork", json={
        "from_state": "synthesizing", "params": {"voice_params": {"voice_name": "en+f4"}}})
    status = gateway.client.get(answer.json()["status_url"]).json()
    assert status["params"]["voice_params"] == {"voice_name": "en+f4", "speaking_rate": 1.2}
    useless = gateway.client.post(f"/v1/workflows/{source}/fork", json={
        "from_state": "synthesizing", "params": {"persona": "a pirate"}})
    assert (useless.status_code, useless.json()["field"]) == (422, "persona")


def test_fork_route__idempotency_key_returns_the_same_fork(gateway):
    """A fork retried with the same Idempotency-Key header is the same fork."""
    source = gateway.engine.start_workflow("podcast", {"topic": "tides"})
    assert drive(gateway.engine, source) == "completed"
    forks = [gateway.client.post(f"/v1/workflows/{source}/fork",
                                 json={"from_state": "synthesizing"},
                                 headers={"Idempotency-Key": "fork-once"}) for _ in range(2)]
    assert [f.status_code for f in forks] == [202, 202]
    assert forks[0].json()["workflow_id"] == forks[1].json()["workflow_id"]
    assert len(gateway.engine.store.list_workflows()) == 2


def test_dashboard__shows_forked_from_as_a_link(gateway):
    """A fork's page links to its source; a plain workflow's shows a dash."""
    source = gateway.engine.start_workflow("podcast", {"topic": "tides"})
    assert drive(gateway.engine, source) == "completed"
    fork = gateway.engine.fork(source, "synthesizing")
    page = gateway.client.get(f"/workflows/{fork}").text
    assert f'<a href="/workflows/{source}" data-testid="forked-from">{source}</a>' in page
    plain = gateway.client.get(f"/workflows/{source}").text
    assert 'data-testid="forked-from"' not in plain


def test_bulk_route__dry_run_then_retry(gateway, agent):
    """POST /v1/bulk/retry with dry_run lists the failed workflows and changes nothing; then
    it retries them; a bad time is a 422 naming it."""
    from cpoa.testing.agent import Reply

    agent.script("POST", "/harvest", Reply(400, {"error": "no"}), Reply(400, {"error": "no"}))
    failed = [gateway.engine.start_workflow("podcast", {"topic": f"t{i}"}) for i in range(2)]
    for workflow_id in failed:
        assert drive(gateway.engine, workflow_id) == "failed"
    dry = gateway.client.post("/v1/bulk/retry", json={"state": "failed", "dry_run": True})
    assert dry.status_code == 200
    assert (dry.json()["matched"], dry.json()["dry_run"]) == (2, True)
    assert {gateway.engine.store.get_workflow(w).state for w in failed} == {"failed"}
    done = gateway.client.post("/v1/bulk/retry", json={"state": "failed", "batch_size": 1})
    assert sorted(c["workflow_id"] for c in done.json()["changed"]) == sorted(map(str, failed))
    assert {gateway.engine.store.get_workflow(w).state for w in failed} == {"fetching"}
    bad = gateway.client.post("/v1/bulk/cancel", json={"started_after": "yesterday"})
    assert (bad.status_code, bad.json()["field"]) == (422, "started_after")
    unknown = gateway.client.post("/v1/bulk/explode", json={})
    assert unknown.status_code == 422


def test_bulk_route__empty_filter_is_422_naming_all(gateway):
    """An empty filter would hit every workflow: a 422 naming `all`, nothing changed;
    `"all": true` means it."""
    working = [gateway.engine.start_workflow("podcast", {"topic": f"t{i}"}) for i in range(2)]
    empty = gateway.client.post("/v1/bulk/cancel", json={})
    assert (empty.status_code, empty.json()["field"]) == (422, "all")
    assert {gateway.engine.store.get_workflow(w).state for w in working} == {"fetching"}
    meant = gateway.client.post("/v1/bulk/cancel", json={"all": True, "dry_run": True})
    assert (meant.status_code, meant.json()["matched"]) == (200, 2)


def test_dashboard__review_editor_escapes_the_script(gateway, agent):
    """The page of a workflow awaiting review has the editor, with the script's text escaped
    in form values; a finished workflow's page has the Fork form instead."""
    agent.set_result("/weave_script", {"status": "success", "script_data": {
        "script_id": "s", "title": '"><script>alert(1)</script>', "segments": [
            {"segment_title": "<i>Intro</i>", "lines": [
                {"speaker": "Host", "text": "</textarea><b>bold</b>"}]}]}})
    workflow_id = awaiting(gateway.engine)
    page = gateway.client.get(f"/workflows/{workflow_id}").text
    assert 'data-testid="review"' in page and 'data-testid="fork"' not in page
    assert "<script>alert(1)</script>" not in page and "<b>bold</b>" not in page
    assert "&lt;/textarea&gt;&lt;b&gt;bold&lt;/b&gt;" in page
    assert 'value="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in page
    gateway.engine.review(workflow_id, approve=True)
    assert drive(gateway.engine, workflow_id) == "completed"
    done = gateway.client.get(f"/workflows/{workflow_id}").text
    assert 'data-testid="review"' not in done and 'data-testid="fork"' in done
