"""The reference agents call back (contract §2): a submit's X-Callback-URL gets one POST of
``{task_id, status}`` when the task finishes, on a thread of its own (real HTTP, TDA as the
example: every reference agent shares cpoa_agents.service.TaskAgent)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import requests

from cpoa_agents.tda import TopicAgent
from cpoa.testing.agent import ScriptedAgent
from tests.agents.protocol import finished, serving
from tests.fix_agents import wait_until

BODY = {"query": "tides", "limit": 2, "content": "The tide rises and falls twice a day."}


@pytest.fixture
def tda(tmp_path) -> Iterator[TopicAgent]:
    with serving(TopicAgent(tmp_path)) as agent:
        yield agent


def submit(agent: TopicAgent, callback_url: str) -> str:
    answer = requests.post(agent.base_url + agent.path, data=json.dumps(BODY), timeout=30,
                           headers={"Content-Type": "application/json",
                                    "X-Idempotency-Key": uuid.uuid4().hex,
                                    "X-Callback-URL": callback_url})
    assert answer.status_code == 202, answer.text
    return answer.json()["task_id"]


def test_task_agent__calls_back_once_when_the_task_finishes(tda, agent: ScriptedAgent):
    """One POST of {task_id, status: SUCCESS} to the callback URL, after the task finished."""
    task_id = submit(tda, agent.url + "/callbacks/one?token=abc")
    assert finished(tda, task_id)["status"] == "SUCCESS"
    wait_until(lambda: agent.requests_to("/callbacks/one"))
    [callback] = agent.requests_to("/callbacks/one")
    assert callback["body"] == {"task_id": task_id, "status": "SUCCESS"}


def test_task_agent__receivers_that_never_answer_do_not_hold_the_agent(tda, agent):
    """Callbacks are sent on threads of their own: with two of them held unanswered (as many
    as the agent has work threads), a third task still runs and finishes."""
    assert tda.workers == 2
    releases = [agent.hold_next(f"/callbacks/held{n}") for n in range(2)]
    try:
        for n in range(2):
            submit(tda, agent.url + f"/callbacks/held{n}")
        wait_until(lambda: all(agent.requests_to(f"/callbacks/held{n}") for n in range(2)))
        assert finished(tda, submit(tda, agent.url + "/callbacks/free"))["status"] == "SUCCESS"
    finally:
        for release in releases:
            release.set()


def test_task_agent__ignores_a_callback_url_that_is_not_http(tda, agent):
    """A non-http(s) callback URL is ignored; the task runs and reports as usual."""
    task_id = submit(tda, "file:///etc/passwd")
    assert finished(tda, task_id)["status"] == "SUCCESS"
    assert tda.callback_urls == {}
