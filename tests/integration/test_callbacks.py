"""Agent callbacks (contract §2) with a real gateway, a real worker and a real HTTP agent.

The agents here are polled every 60 s (adaptive: the first poll 12 s after a submit), so a
workflow that finishes within the deadlines below got there through its callbacks, never
through its poll schedule. No test here measures speed (bench/run.py does): the deadlines only
separate "acted on the callback" from "waited for the schedule".
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from cpoa import callbacks, defaults
from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.worker import Worker
from cpoa.testing.agent import Reply, ScriptedAgent, default_result
from cpoa.testing.agent import free_port
from tests.fix_agents import engine_for, sent, wait_until
from tests.fix_gateway import LiveGateway

SLOW_POLL = {f"CPOA_{name}_POLLING_INTERVAL_SECONDS": "60"
             for name in settings_module.POLLED_AGENTS}
"""First poll 12 s after a submit: far beyond every deadline of these tests."""
WITHIN_S = 8.0
"""A whole podcast (5 polled steps) done by callbacks finishes long before one first poll."""
TERMINAL = ("completed", "failed", "cancelled")


class Team:
    """A scripted agent, a gateway and a worker whose submits carry callback URLs to it."""

    def __init__(self, store: PostgresStore, agent: ScriptedAgent, **env: str) -> None:
        self.store, self.agent = store, agent
        self.gateway = LiveGateway(engine_for(store, agent, **{**SLOW_POLL, **env}))
        env = {"CPOA_CALLBACK_BASE_URL": self.gateway.url, **SLOW_POLL, **env}
        self.engine = engine_for(store, agent, **env)
        self.worker = Worker(self.engine, concurrency=2)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def finish(self, workflow_id: uuid.UUID, timeout: float = WITHIN_S) -> str:
        """Waits until the workflow is terminal; returns its state."""
        return wait_until(lambda: (s := self.store.get_workflow(workflow_id).state) in TERMINAL
                          and s, timeout=timeout)  # type: ignore[return-value]

    def close(self) -> None:
        self.worker.stop()
        self.thread.join(timeout=30)
        self.gateway.close()


@pytest.fixture
def make_team(store: PostgresStore,
              make_agent: Callable[..., ScriptedAgent]) -> Iterator[Callable[..., Team]]:
    """Builds a team on an agent made with ``agent_options``; stopped after the test."""
    made: list[Team] = []

    def make(agent_options: dict[str, Any] | None = None, **env: str) -> Team:
        made.append(Team(store, make_agent(**(agent_options or {})), **env))
        return made[-1]
    yield make
    for team in made:
        team.close()


def callback_answers(agent: ScriptedAgent, count: int = 5) -> list[int]:
    """The HTTP statuses of the agent's callbacks, once it has made ``count`` of them (a
    callback's answer may reach the agent after the worker acted on it)."""
    wait_until(lambda: len(agent.callbacks) >= count)
    return [status for _, _, status in agent.callbacks]


def callback_urls(agent: ScriptedAgent) -> list[str]:
    return [r["headers"]["x-callback-url"] for r in agent.requests
            if r["method"] == "POST" and "x-callback-url" in r["headers"]]


def test_callback__finished_tasks_are_polled_at_once(make_team, store):
    """Each polled step's agent calls back when its task finishes; the worker polls it at
    once, so the podcast completes long before a single scheduled poll, with exactly one poll
    per task. The secret is generated and stored in the database on first use."""
    team = make_team({"finish_after_s": 0.1})
    workflow_id = team.engine.start_workflow("podcast", {"topic": "tides"})
    assert team.finish(workflow_id) == "completed"
    assert callback_answers(team.agent) == [202] * 5
    assert len(sent(team.agent, "/v1/tasks")) == 5  # one poll per task: the called-back one
    urls = callback_urls(team.agent)
    assert len(urls) == 5 and all(u.startswith(team.gateway.url + "/v1/callbacks/")
                                  for u in urls)
    assert store.secret(callbacks.SECRET_NAME, "not used") == \
        team.engine.callback_key().decode()


@pytest.mark.parametrize("agent_options", [{"finish_after_s": 0.05}, {"callback_first": True}],
                         ids=["after_the_answer", "before_the_answer"])
def test_callback__fan_out_items_are_each_polled_when_they_call_back(make_team, agent_options):
    """Snippets: TDA, then one SCA task per topic (submitted one after another by one slot
    that keeps the lease, each calling back while the next is submitted, or even before its
    own submit is answered), then IGA per snippet: all moved on by their callbacks."""
    team = make_team(agent_options)
    workflow_id = team.engine.start_workflow("snippets", {"query": "tides", "limit": 2})
    assert team.finish(workflow_id) == "completed"
    assert callback_answers(team.agent, 5) == [202] * 5  # TDA, 2 SCA, 2 IGA
    assert len(sent(team.agent, "/v1/tasks")) == 5


class FirstItemCallsBack(ScriptedAgent):
    """Calls back before answering each submit, except SCA's second item, which it answers
    at once with its result (200) and which therefore brings no callback."""

    def _default(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if path == "/craft_snippet" and (body or {}).get("topic_id") == "t1":
            return Reply(200, {"task_id": "sync", "status": "SUCCESS",
                               "result": default_result(path, body)})
        return super()._default(method, path, headers, body)


def test_callback__during_a_step_that_keeps_the_lease_is_not_lost(store):
    """SCA's first item calls back before its submit is answered, while the slot keeps the
    lease to submit the second item (answered at once, no callback): the first item is still
    polled at once, not at its scheduled poll."""
    agent = FirstItemCallsBack(callback_first=True)
    team = Team(store, agent)
    try:
        workflow_id = team.engine.start_workflow("snippets", {"query": "tides", "limit": 2})
        assert team.finish(workflow_id) == "completed"
    finally:
        team.close()
        agent.close()


def test_callback__before_the_submit_answer_is_not_lost(make_team):
    """An agent that calls back before it answers the submit (the task row does not exist
    yet and the worker holds the lease): the worker records the 202 as due at once."""
    team = make_team({"callback_first": True})
    workflow_id = team.engine.start_workflow("podcast", {"topic": "early"})
    assert team.finish(workflow_id) == "completed"
    assert callback_answers(team.agent) == [202] * 5
    assert len(sent(team.agent, "/v1/tasks")) == 5


def test_callback__a_configured_secret_signs_and_none_is_stored(make_team, store):
    """With CPOA_CALLBACK_SECRET set, it signs the URLs and nothing is stored."""
    secret = "s" * defaults.CALLBACK_SECRET_MIN_CHARS
    team = make_team({"finish_after_s": 0.1}, CPOA_CALLBACK_SECRET=secret)
    assert team.finish(team.engine.start_workflow("podcast", {"topic": "a"})) == "completed"
    assert callback_answers(team.agent) == [202] * 5
    assert team.engine.callback_key() == secret.encode()
    assert store.secret(callbacks.SECRET_NAME, "generated") == "generated"  # none stored before


def test_callback__a_gateway_with_another_secret_refuses_and_polling_goes_on(make_team):
    """A gateway whose secret is not the workers' refuses every callback (403); the tasks are
    polled on their schedule instead and the workflow completes."""
    team = make_team({"finish_after_s": 0.05}, CPOA_CALLBACK_SECRET="s" * 20,
                     **{f"CPOA_{n}_POLLING_INTERVAL_SECONDS": "0.5"
                        for n in settings_module.POLLED_AGENTS})
    team.gateway.engine._callback_key = b"another secret, not the workers'"
    assert team.finish(team.engine.start_workflow("podcast", {"topic": "b"}),
                       timeout=30) == "completed"
    assert callback_answers(team.agent) == [403] * 5


def test_callback__gateway_down_polling_takes_over(store, make_agent):
    """CPOA_CALLBACK_BASE_URL pointing at nothing: the agent's callbacks fail and the
    workflow completes on its (adaptive) poll schedule."""
    agent = make_agent(finish_after_s=0.05)
    engine = engine_for(store, agent, CPOA_CALLBACK_BASE_URL=f"http://127.0.0.1:{free_port()}",
                        **{f"CPOA_{n}_POLLING_INTERVAL_SECONDS": "0.5"
                           for n in settings_module.POLLED_AGENTS})
    worker = Worker(engine, concurrency=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        workflow_id = engine.start_workflow("podcast", {"topic": "down"})
        wait_until(lambda: store.get_workflow(workflow_id).state == "completed", timeout=30)
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert callback_answers(agent) == [0] * 5


# -- refusals: an open task, its real callback URL, and requests that must change nothing ------

@pytest.fixture
def open_task(store, make_agent, make_gateway_for) -> dict[str, Any]:
    """A podcast whose WCHA task was submitted (with a callback URL) and is still running;
    no worker runs, so only a callback can make it due before its first poll (12 s)."""
    agent = make_agent(finish_after_s=300.0)
    gateway = make_gateway_for(agent)
    engine = engine_for(store, agent, CPOA_CALLBACK_BASE_URL=gateway.url, **SLOW_POLL)
    workflow_id = engine.start_workflow("podcast", {"topic": "open"})
    engine.advance(workflow_id)
    [url] = callback_urls(agent)
    [task] = store.get_tasks(workflow_id)
    return {"url": url, "workflow_id": workflow_id, "task": task, "gateway": gateway,
            "engine": engine, "agent": agent}


@pytest.fixture
def make_gateway_for(store) -> Iterator[Callable[[ScriptedAgent], LiveGateway]]:
    made: list[LiveGateway] = []

    def make(agent: ScriptedAgent) -> LiveGateway:
        made.append(LiveGateway(engine_for(store, agent, **SLOW_POLL)))
        return made[-1]
    yield make
    for gateway in made:
        gateway.close()


def post(url: str, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("json", {"task_id": "t", "status": "SUCCESS"})
    return httpx.post(url, timeout=10, **kwargs)


def unchanged(store: PostgresStore, open_task: dict[str, Any]) -> bool:
    workflow = store.get_workflow(open_task["workflow_id"])
    [task] = store.get_tasks(open_task["workflow_id"])
    return (workflow.state == "fetching" and workflow.callback_at is None
            and task.next_poll_at == open_task["task"].next_poll_at)


def other_token_url(url: str, **changes: str) -> str:
    parsed = httpx.URL(url)
    return str(parsed.copy_merge_params(changes))


def test_callback__wrong_token_is_refused_and_changes_nothing(open_task, store):
    """A token that is not the URL's (one character changed) gets 403."""
    url = httpx.URL(open_task["url"])
    token = url.params["token"]
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert post(str(url.copy_set_param("token", forged))).status_code == 403
    assert post(str(url.copy_set_param("key", "another-key"))).status_code == 403
    assert unchanged(store, open_task)


def test_callback__a_token_for_another_task_is_refused(open_task, store):
    """The valid token of this task, put on another task's (or workflow's) path: 403."""
    url = open_task["url"]
    task_id, workflow_id = str(open_task["task"].task_id), str(open_task["workflow_id"])
    assert post(url.replace(task_id, str(uuid.uuid4()))).status_code == 403
    assert post(url.replace(workflow_id, str(uuid.uuid4()))).status_code == 403
    assert unchanged(store, open_task)


def test_callback__oversized_or_not_json_is_refused(open_task, store):
    """A valid URL with a body over the limit gets 413; a body that is not a JSON object,
    400. Neither changes anything."""
    url = open_task["url"]
    big = {"task_id": "x" * defaults.CALLBACK_MAX_BODY_BYTES}
    assert post(url, json=big).status_code == 413
    assert post(url, json=None, content=b"not json").status_code == 400
    assert post(url, json=[1, 2]).status_code == 400
    assert unchanged(store, open_task)


def test_callback__valid_makes_the_task_due_now_and_replays_are_rate_bounded(open_task, store):
    """A valid callback makes the task and workflow due now (no lease taken, the state
    untouched); the same callback repeated past the burst is deferred once (202), then gets
    429 while that deferred poll is ahead."""
    url = open_task["url"]
    assert post(url).status_code == 202
    workflow, now = store.workflow_with_clock(open_task["workflow_id"])
    [task] = store.get_tasks(open_task["workflow_id"])
    assert workflow.state == "fetching" and workflow.lease_owner is None
    assert workflow.next_run_at <= now and task.next_poll_at <= now
    answers = [post(url).status_code for _ in range(defaults.CALLBACK_BURST + 1)]
    assert answers == [202] * defaults.CALLBACK_BURST + [429]


def test_callback__an_honest_callback_behind_a_flood_of_duplicates_still_acts(make_team):
    """Valid duplicate callbacks for a running task (a leaked URL, an agent calling back in a
    loop) spend its burst at once; the agent's own callback when the task finishes, half a
    second later with no token back yet, is not dropped: its poll is deferred to the next
    token (within 1 / CALLBACK_RATE_PER_S s), not left to the task's poll schedule (12 s)."""
    team = make_team({"finish_after_s": 0.5})
    workflow_id = team.engine.start_workflow("podcast", {"topic": "flood"})
    [url] = wait_until(lambda: callback_urls(team.agent))
    with httpx.Client(timeout=10) as client:
        answers = [client.post(url, json={"status": "PENDING"}).status_code
                   for _ in range(defaults.CALLBACK_BURST + 5)]
    assert answers.count(429) >= 4  # the flood was rate-bounded
    wait_until(lambda: team.store.get_workflow(workflow_id).state != "fetching",
               timeout=WITHIN_S)


def test_callback__a_deferred_poll_is_not_made_early_by_a_step_in_flight(make_team):
    """Duplicates spend the burst while the worker is inside a poll of the task; the one
    deferred to the next token arrives during that step too. The step's record keeps the
    deferred time (it does not poll again at once, and again, until then), so the honest
    callback refused behind it (429) is answered by that one deferred poll."""
    team = make_team({"finish_after_s": 0.5})
    workflow_id = team.engine.start_workflow("podcast", {"topic": "in flight"})
    [url] = wait_until(lambda: callback_urls(team.agent))
    [agent_task] = list(team.agent.by_key.values())
    release = team.agent.hold_next(f"/v1/tasks/{agent_task}")
    try:
        with httpx.Client(timeout=10) as client:
            assert client.post(url, json={}).status_code == 202  # the worker polls: held
            wait_until(lambda: sent(team.agent, "/v1/tasks"))
            answers = [client.post(url, json={}).status_code
                       for _ in range(defaults.CALLBACK_BURST + 1)]
    finally:
        release.set()
    assert answers == [202] * defaults.CALLBACK_BURST + [429]
    wait_until(lambda: team.store.get_workflow(workflow_id).state != "fetching",
               timeout=WITHIN_S)
    # The held poll, then the deferred one (which saw the task done): no poll in between.
    assert len([r for r in sent(team.agent, "/v1/tasks") if agent_task in r["path"]]) == 2


def test_callback__replayed_after_the_task_finished_is_refused(open_task, store):
    """Once the task has finished (polled done, the workflow moved on), its callback gets 404
    and changes nothing; so does one for a workflow that was cancelled."""
    agent, engine = open_task["agent"], open_task["engine"]
    with agent.lock:
        for task in agent.tasks.values():
            task["done_at"] = 0.0
    assert post(open_task["url"]).status_code == 202
    wait_until(lambda: engine.advance(open_task["workflow_id"]) == "analyzing")
    before = store.get_workflow(open_task["workflow_id"])
    assert post(open_task["url"]).status_code == 404
    after = store.get_workflow(open_task["workflow_id"])
    assert (after.version, after.next_run_at, after.callback_at) == (
        before.version, before.next_run_at, before.callback_at)
    engine.advance(open_task["workflow_id"])  # submits TDA's task, still running
    [second_url] = callback_urls(agent)[1:]
    engine.cancel(open_task["workflow_id"])
    assert post(second_url).status_code == 404


def test_callback__needs_no_api_token(store, make_agent):
    """With CPOA_API_TOKEN set, callbacks still work: the signed URL is their credential."""
    agent = make_agent(finish_after_s=300.0)
    gateway = LiveGateway(engine_for(store, agent, CPOA_API_TOKEN="t" * 20, **SLOW_POLL))
    try:
        engine = engine_for(store, agent, CPOA_CALLBACK_BASE_URL=gateway.url, **SLOW_POLL)
        workflow_id = engine.start_workflow("podcast", {"topic": "token"})
        engine.advance(workflow_id)
        [url] = callback_urls(agent)
        assert post(url).status_code == 202
    finally:
        gateway.close()


def test_engine__no_callback_base_url_sends_no_header(store, agent):
    """Without CPOA_CALLBACK_BASE_URL no submit carries X-Callback-URL (polling only)."""
    engine: Engine = engine_for(store, agent)
    engine.advance(engine.start_workflow("podcast", {"topic": "plain"}))
    assert sent(agent, "/harvest") and not callback_urls(agent)
