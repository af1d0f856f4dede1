"""The dashboard's pages over real HTTP (uvicorn on loopback, a real PostgreSQL and agent):
the list with its counts and filter, the workflow page, escaping, the state diagram."""

from __future__ import annotations

import datetime
import html
import re
import uuid
import xml.etree.ElementTree as ET

import psycopg
import pytest

from cpoa import machine
from cpoa.gateway import live, statechart
from cpoa.testing.agent import Reply, ScriptedAgent
from tests.fix_agents import drive
from tests.fix_gateway import LiveGateway

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
SVG = "{http://www.w3.org/2000/svg}"


def start(gateway: LiveGateway, topic: str = "tides", **params: object) -> str:
    return str(gateway.engine.start_workflow("podcast", {"topic": topic, **params}))


def page(gateway: LiveGateway, path: str, status: int = 200) -> str:
    answer = gateway.client.get(path)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    return answer.text


def rows(text: str) -> dict[str, str]:
    """{workflow id: state} of the list page's rows."""
    return dict(re.findall(r'<tr data-workflow-id="([0-9a-f-]+)" data-state="([a-z]+)"', text))


def count(text: str, state: str) -> int:
    return int(re.search(rf'data-testid="count-{state}">(\d+)<', text).group(1))


# -- the list ----------------------------------------------------------------------------------

def test_list__counts_per_state_and_filter(gateway: LiveGateway) -> None:
    """The list counts workflows per state, and ?state= shows only that state's rows."""
    done, waiting, stopped = start(gateway), start(gateway), start(gateway)
    assert drive(gateway.engine, done) == "completed"
    gateway.engine.cancel(stopped)
    text = page(gateway, "/")
    assert rows(text) == {done: "completed", waiting: "fetching", stopped: "cancelled"}
    assert [count(text, s) for s in ("completed", "fetching", "cancelled", "failed")] == \
        [1, 1, 1, 0]
    assert rows(page(gateway, "/?state=cancelled")) == {stopped: "cancelled"}
    assert rows(page(gateway, "/?kind=snippets")) == {}
    assert 'data-testid="empty">No workflows yet.' not in text


def test_list__unknown_filter_is_400(gateway: LiveGateway) -> None:
    """A state or kind no machine has is refused, the value shown as text."""
    assert "&lt;b&gt;" in page(gateway, "/?state=<b>", 400)
    page(gateway, "/?kind=radio", 400)


def test_list__markup_in_topic_is_escaped(gateway: LiveGateway) -> None:
    """A topic with markup is shown as text on the list and on the workflow page."""
    workflow_id = start(gateway, HOSTILE)
    for text in (page(gateway, "/"), page(gateway, f"/workflows/{workflow_id}")):
        assert html.escape(HOSTILE) in text
        assert "<script>alert" not in text and "<img src=x" not in text
        assert re.findall(r"<script[^>]*>", text) == [
            re.search(r'<script type="module" src="/static/[a-z]+\.js"></script>', text)
            .group(0).removesuffix("</script>")]


# -- one workflow --------------------------------------------------------------------------------

def test_workflow_page__completed_shows_player_cover_timeline_and_tasks(
        gateway: LiveGateway) -> None:
    """A completed podcast shows its episode and cover, every transition and task attempt."""
    workflow_id = start(gateway)
    assert drive(gateway.engine, workflow_id) == "completed"
    text = page(gateway, f"/workflows/{workflow_id}")
    assert '<audio controls preload="metadata" src="http://127.0.0.1/audio.mp3"' in text
    assert '<img src="http://127.0.0.1/cover.png" alt="Cover art"' in text
    timeline = re.search(r'<tbody id="timeline".*?</tbody>', text, re.DOTALL).group(0)
    assert timeline.count("<tr ") == 7
    assert "● → fetching" in timeline and "finalizing → completed" in timeline
    tasks = gateway.engine.store.get_tasks(workflow_id)
    table = re.search(r'<tbody id="tasks".*?</tbody>', text, re.DOTALL).group(0)
    assert table.count("<tr ") == len(tasks) == 6
    assert all(f"<code>{t.external_task_id}</code>" in table for t in tasks[:5])  # ASF: none
    last = gateway.engine.store.get_history(workflow_id)[-1]["event_id"]
    assert f'data-last-event-id="{last}"' in text
    assert 'class="state current final" data-state="completed"' in text
    assert 'data-testid="count-completed">1 now<' in text
    assert re.search(r'data-testid="dwell-fetching">avg [\d.]+ s · med [\d.]+ s<', text)
    assert 'data-testid="retry" disabled' in text and 'data-testid="cancel" disabled' in text
    assert "stateDiagram-v2" in text and "class completed current" in text


def test_workflow_page__failure_is_shown_as_text_and_retry_offered(
        gateway: LiveGateway, agent: ScriptedAgent) -> None:
    """A permanent agent failure shows the agent's text escaped; Retry is enabled."""
    agent.script("POST", "/weave_script", Reply(422, {"error": HOSTILE}))
    workflow_id = start(gateway)
    assert drive(gateway.engine, workflow_id) == "failed"
    text = page(gateway, f"/workflows/{workflow_id}")
    assert "<script>alert" not in text and html.escape(HOSTILE, quote=False)[:20] in text
    assert 'data-testid="retry">Retry' in text and 'data-testid="cancel">Cancel' in text
    assert 'class="state current" data-state="failed"' in text
    assert re.search(r'<td class="error">HTTP 422: ', text)


def test_workflow_page__only_web_urls_are_loaded(gateway: LiveGateway,
                                                 agent: ScriptedAgent) -> None:
    """An agent's javascript: URL for the audio or the cover never becomes a src or href."""
    agent.set_result("/forge_voice", {
        "status": "success", "audio_url": "javascript:alert(1)", "audio_format": "mp3",
        "duration_s": 1.0, "stream_id": "s", "tts_settings_used": {}})
    agent.set_result("/generate_image", {"status": "success", "image_url": "data:x,<svg>"})
    workflow_id = start(gateway)
    assert drive(gateway.engine, workflow_id) == "completed"
    text = page(gateway, f"/workflows/{workflow_id}")
    assert "<audio" not in text and "<img" not in text and "javascript:" not in text


@pytest.mark.parametrize("path", ["/workflows/00000000-0000-0000-0000-000000000000",
                                  "/workflows/not-a-uuid%3Cb%3E"])
def test_workflow_page__unknown_is_404(gateway: LiveGateway, path: str) -> None:
    """An unknown or malformed id is a 404 page that quotes it as text."""
    assert "<b>" not in page(gateway, path, 404)


def test_static__scripts_served_others_404(gateway: LiveGateway) -> None:
    """The pages' files are served with their types; any other name is 404."""
    for name, kind in (("list.js", "text/javascript"), ("workflow.js", "text/javascript"),
                       ("dom.js", "text/javascript"), ("dashboard.css", "text/css")):
        answer = gateway.client.get(f"/static/{name}")
        assert (answer.status_code, answer.headers["content-type"].split(";")[0]) == (200, kind)
    for name in ("nope.js", "..%2Fdashboard.py", "dashboard.py", "Dom.js"):
        assert gateway.client.get(f"/static/{name}").status_code == 404


def test_workflow_page__cancelled_workflow_task_is_not_running(gateway: LiveGateway,
                                                               agent: ScriptedAgent) -> None:
    """A task a cancelled workflow left unfinished is shown abandoned, never "(running)", on
    the page and in the live snapshot; its duration stops at the cancel."""
    agent.pending_polls = 1000  # WCHA's task never finishes
    workflow_id = start(gateway)
    assert gateway.engine.advance(workflow_id) == "fetching"
    assert gateway.engine.cancel(workflow_id) == "cancelled"
    table = re.search(r'<tbody id="tasks".*?</tbody>',
                      page(gateway, f"/workflows/{workflow_id}"), re.DOTALL).group(0)
    assert table.count("<tr ") == 1
    assert "(running)" not in table and "(abandoned)" in table
    [task] = live.snapshot(gateway.engine.store, uuid.UUID(workflow_id))["tasks"]
    assert (task["running"], task["abandoned"]) == (False, True)
    ended = gateway.engine.store.get_workflow(uuid.UUID(workflow_id)).end_timestamp
    assert task["duration_s"] == pytest.approx(
        (ended - datetime.datetime.fromisoformat(task["started_at"])).total_seconds())


# -- the pieces ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["podcast", "snippets"])
def test_statechart__draws_every_state_and_transition(kind: str) -> None:
    """The SVG has one box per state and arrows for exactly the machine's (source, dest) pairs."""
    current = machine.working_states(kind)[1]
    svg = ET.fromstring(statechart.render(kind, current))
    boxes = svg.findall(f"{SVG}g[@data-state]")
    assert [b.get("data-state") for b in boxes] == statechart.happy_path(kind) + [
        s for s in machine.states(kind) if s not in statechart.happy_path(kind)]
    assert [b.get("data-state") for b in boxes if "current" in b.get("class")] == [current]
    drawn = {tuple(pair.split("->")) for g in svg.findall(f"{SVG}g[@data-edges]")
             for pair in g.get("data-edges").split()}
    assert drawn == machine.edges(kind)


def test_store__state_counts_and_dwell_times(gateway: LiveGateway) -> None:
    """Counts come with the newest event id; dwell times cover only the stays that ended."""
    store = gateway.engine.store
    first, second = start(gateway), start(gateway)
    assert drive(gateway.engine, first) == "completed"
    counts, last_event_id = store.state_counts("podcast")
    assert counts == {"completed": 1, "fetching": 1}
    assert last_event_id == store.get_history(first)[-1]["event_id"]
    assert store.state_counts("snippets")[0] == {}
    dwell = store.state_dwell_times("podcast")
    # not completed, not second's, not the review gate's (neither was started with review)
    assert set(dwell) == set(machine.working_states("podcast")) - machine.WAITING_STATES
    assert all(d["samples"] == 1 and d["avg_s"] == d["median_s"] >= 0 for d in dwell.values())
    assert [e["event_id"] for e in store.events_after(0, second)] == [
        h["event_id"] for h in store.get_history(second)]


def test_store__state_counts_finds_the_newest_event_past_ids_never_committed(
        gateway: LiveGateway) -> None:
    """The newest event id is looked for among the sequence's last ids first: when none of
    them committed (rolled back, or still running), it is still found."""
    store = gateway.engine.store
    workflow_id = start(gateway)
    newest = store.get_history(workflow_id)[-1]["event_id"]
    with psycopg.connect(store.dsn, autocommit=True) as conn:
        conn.execute("SELECT setval('workflow_events_event_id_seq', %s)", (newest + 50_000,))
    assert store.state_counts()[1] == newest


def test_store__get_events_by_workflow_and_event_id(gateway: LiveGateway) -> None:
    """A live notification's rows are read by (workflow id, event id): an id of another
    workflow's event with this workflow's id reads nothing."""
    store = gateway.engine.store
    first, second = uuid.UUID(start(gateway)), uuid.UUID(start(gateway))
    [mine] = store.get_history(first)
    [theirs] = store.get_history(second)
    got = store.get_events([(first, mine["event_id"]), (first, theirs["event_id"])])
    assert [(e["workflow_id"], e["event_id"]) for e in got] == [(first, mine["event_id"])]


def _segments(svg: ET.Element, css: str) -> list[tuple[str, list[tuple[float, float]]]]:
    """(edges, points) of every drawn arrow of one class (a line or a polyline)."""
    found = []
    for group in svg.findall(f"{SVG}g[@data-edges]"):
        for shape in group:
            if css not in (shape.get("class") or "").split():
                continue
            if shape.tag == f"{SVG}line":
                points = [(float(shape.get("x1")), float(shape.get("y1"))),
                          (float(shape.get("x2")), float(shape.get("y2")))]
            else:
                points = [tuple(map(float, p.split(","))) for p in shape.get("points").split()]
            found.append((group.get("data-edges"), points))
    return found


def _cross(p: tuple, q: tuple, r: tuple, s: tuple) -> bool:
    """True when segments pq and rs properly cross (touching ends do not count)."""
    def side(a: tuple, b: tuple, c: tuple) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    return side(p, q, r) * side(p, q, s) < 0 and side(r, s, p) * side(r, s, q) < 0


@pytest.mark.parametrize("kind", ["podcast", "snippets"])
def test_statechart__no_arrow_crosses_another(kind: str) -> None:
    """The cancel arrows do not tangle with the fail / retry arrows or with each other: no two
    drawn arrows cross. The review gate's waiting state is left out: joined to failed,
    cancelled, scripting and synthesizing, it cannot be placed in this three-row layout
    without its arrows crossing some fail or cancel arrow (placements along the upper and
    lower rows were tried: five crossings at best)."""
    svg = ET.fromstring(statechart.render(kind))
    arrows = [(edges, pair) for css in ("step_done", "fail", "cancel")
              for edges, points in _segments(svg, css) for pair in zip(points, points[1:])
              if not any(waiting in edges for waiting in machine.WAITING_STATES)]
    crossings = [(a, b) for i, (a, (p, q)) in enumerate(arrows)
                 for b, (r, s) in arrows[i + 1:] if _cross(p, q, r, s)]
    assert crossings == []
