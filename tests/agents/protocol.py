"""Speaking the agent protocol to a reference agent under test: submit, then poll to the end."""

from __future__ import annotations

import contextlib
import http.client
import json
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import requests

from cpoa_agents.service import Service, TaskAgent
from tests.fix_agents import wait_until

S = TypeVar("S", bound=Service)


@contextlib.contextmanager
def serving(service: S) -> Iterator[S]:
    """Starts ``service`` on a free loopback port; stops it on exit."""
    service.start("127.0.0.1", 0)
    try:
        yield service
    finally:
        service.stop()


def submit(agent: TaskAgent | str, body: Any, key: str | None = None, *,
           path: str | None = None) -> requests.Response:
    """Posts a request to the agent's path (or ``path`` at a base URL) with an idempotency key
    (a fresh one unless given)."""
    if not isinstance(agent, str):
        agent, path = agent.base_url, path or agent.path
    assert path, "a base URL needs the agent's path"
    return requests.post(agent + path, data=json.dumps(body), timeout=30,
                         headers={"Content-Type": "application/json", "X-Workflow-ID": "wf-1",
                                  "X-Idempotency-Key": key or uuid.uuid4().hex})


def finished(agent: TaskAgent | str, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Polls a task (of an agent, or at a base URL) until SUCCESS or FAILURE; its report."""
    base = agent if isinstance(agent, str) else agent.base_url

    def poll() -> dict[str, Any] | None:
        report = requests.get(f"{base}/v1/tasks/{task_id}", timeout=15).json()
        return report if report["status"] in ("SUCCESS", "FAILURE") else None
    return wait_until(poll, timeout)  # type: ignore[return-value]


def succeeded(agent: TaskAgent, body: Any,
              validate: Callable[[dict[str, Any]], object] | None = None,
              key: str | None = None) -> dict[str, Any]:
    """Submits, expects 202, waits for SUCCESS and returns the result (after ``validate``, if
    given, accepted it)."""
    answer = submit(agent, body, key)
    assert answer.status_code == 202, answer.text
    report = finished(agent, answer.json()["task_id"])
    assert report["status"] == "SUCCESS", report
    if validate is not None:
        validate(report["result"])
    return report["result"]


class Status(int):
    """An HTTP status code that also carries the response body."""

    body: bytes


def raw_get(agent: Service | str, path: str) -> Status:
    """GETs ``path`` byte for byte (``requests`` would resolve ``..`` before sending); the
    status, with the body as ``.body``."""
    parts = urllib.parse.urlsplit(agent if isinstance(agent, str) else agent.base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        status = Status(response.status)
        status.body = response.read()  # closing with the body unread resets the connection
        return status
    finally:
        connection.close()
