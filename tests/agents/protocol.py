"""Speaking the agent protocol to a reference agent under test: submit, then poll to the end."""

from __future__ import annotations

import json
import uuid
from typing import Any

import requests

from cpoa_agents.service import TaskAgent
from tests.fix_agents import wait_until


def submit(agent: TaskAgent, body: Any, key: str | None = None) -> requests.Response:
    """Posts a request to the agent's path with an idempotency key (a fresh one unless given)."""
    return requests.post(agent.base_url + agent.path, data=json.dumps(body), timeout=30,
                         headers={"Content-Type": "application/json", "X-Workflow-ID": "wf-1",
                                  "X-Idempotency-Key": key or uuid.uuid4().hex})


def finished(agent: TaskAgent | str, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Polls a task (of an agent, or at a base URL) until SUCCESS or FAILURE; its report."""
    base = agent if isinstance(agent, str) else agent.base_url

    def poll() -> dict[str, Any] | None:
        report = requests.get(f"{base}/v1/tasks/{task_id}", timeout=15).json()
        return report if report["status"] in ("SUCCESS", "FAILURE") else None
    return wait_until(poll, timeout)  # type: ignore[return-value]
