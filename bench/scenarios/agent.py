"""A local agent in its own process: the test suite's ScriptedAgent, instant or timed.

    python -m bench.scenarios.agent --mode sync          # every submit answers 200 SUCCESS
    python -m bench.scenarios.agent --mode timed --work-s 0.25,0.65

Prints ``URL http://127.0.0.1:PORT`` once it listens, then serves until SIGTERM or until its
standard input closes.

``timed``: a task finishes ``work`` seconds (uniform in the range) after its submit, whatever the
polling; polls before then answer PENDING. ``GET /bench/finishes`` returns when each task
finished (wall clock, ``time.time()``) with its workflow id and path, so that the harness can
measure the delay from an agent's task finishing to the workflow's next state.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
import time
import uuid
from typing import Any

from bench.scenarios import common  # noqa: F401  (puts the repository on sys.path)
from tests.agent_server import ASF_NOTIFY, ASF_UI, Reply, ScriptedAgent, default_result


class TimedAgent(ScriptedAgent):
    """Tasks finish at a set time after their submit; polls see SUCCESS only from then on."""

    def __init__(self, work_s: tuple[float, float]) -> None:
        self.work_s = work_s
        self.finishes: list[dict[str, Any]] = []
        self.rng = random.Random(7)
        super().__init__(pending_polls=0, sync=False)

    def _default(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if method == "GET" and path == "/bench/finishes":
            with self.lock:
                return Reply(200, {"finishes": list(self.finishes)})
        if path in (ASF_NOTIFY, ASF_UI) or method != "POST":
            if method == "GET" and path.startswith("/v1/tasks/"):
                return self._timed_poll(path.rsplit("/", 1)[-1])
            return super()._default(method, path, headers, body)
        key = headers.get("x-idempotency-key", "")
        with self.lock:
            task_id = self.by_key.get(key)
            if task_id is None:
                task_id = uuid.uuid4().hex
                self.by_key[key] = task_id
                self.work[key] += 1
                done_at = time.time() + self.rng.uniform(*self.work_s)
                self.tasks[task_id] = {"result": default_result(path, body or {}),
                                       "done_at": done_at, "polls": 0}
                self.finishes.append({"workflow_id": headers.get("x-workflow-id"),
                                      "path": path, "done_at": done_at})
        return Reply(202, {"task_id": task_id, "status_url": f"/v1/tasks/{task_id}"})

    def _timed_poll(self, task_id: str) -> Reply:
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return Reply(404, {"error": "unknown task"})
            task["polls"] += 1
            if time.time() < task["done_at"]:
                return Reply(202, {"task_id": task_id, "status": "PENDING"})
        return Reply(200, {"task_id": task_id, "status": "SUCCESS", "result": task["result"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("sync", "timed"), default="sync")
    parser.add_argument("--work-s", default="0.25,0.65")
    args = parser.parse_args()
    if args.mode == "sync":
        agent = ScriptedAgent(sync=True)
    else:
        low, high = (float(x) for x in args.work_s.split(","))
        agent = TimedAgent((low, high))
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stopped.set()), daemon=True).start()
    print(f"URL {agent.url}", flush=True)
    stopped.wait()
    agent.close()


if __name__ == "__main__":
    main()
