"""A local agent in its own process: the test suite's ScriptedAgent, instant or timed.

    python -m bench.scenarios.agent --mode sync          # every submit answers 200 SUCCESS
    python -m bench.scenarios.agent --mode timed --work-s 0.25,0.65
    python -m bench.scenarios.agent --mode slow --answer-s 60   # each submit answers 60 s later

Prints ``URL http://127.0.0.1:PORT`` once it listens, then serves until SIGTERM or until its
standard input closes.

``timed``: a task finishes ``work`` seconds (uniform in the range) after its submit, whatever the
polling; polls before then answer PENDING. ``GET /bench/finishes`` returns when each task
finished (wall clock, ``time.time()``) with its workflow id, path and the polls it got, so that
the harness can measure the delay from an agent's task finishing to the workflow's next state.
A submit with an ``X-Callback-URL`` gets a callback (``{task_id, status}``) the moment its task
finishes, from a timer thread (contract §2).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
import time
from typing import Any

from cpoa.testing.agent import ASF_NOTIFY, ASF_UI, Reply, ScriptedAgent


class TimedAgent(ScriptedAgent):
    """Tasks finish at a set time after their submit; polls see SUCCESS only from then on.

    A thin layer over ScriptedAgent's tasks, as ``bench/chaos/agents.ChaosAgent`` is.
    """

    def __init__(self, work_s: tuple[float, float]) -> None:
        self.work_s = work_s
        self.finishes: list[dict[str, Any]] = []
        self.done_at: dict[str, float] = {}
        self.rng = random.Random(7)
        super().__init__(pending_polls=0, sync=False)

    def _default(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if method == "GET" and path == "/bench/finishes":
            with self.lock:
                return Reply(200, {"finishes": [
                    {**f, "polls": self.tasks[f["task_id"]]["polls"]} for f in self.finishes]})
        reply = super()._default(method, path, headers, body)
        if (method != "POST" or path in (ASF_NOTIFY, ASF_UI) or not isinstance(reply.body, dict)
                or "task_id" not in reply.body):
            return reply
        task_id = reply.body["task_id"]
        with self.lock:
            if task_id not in self.done_at:  # the first answer naming a task created it
                work_s = self.rng.uniform(*self.work_s)
                self.done_at[task_id] = time.time() + work_s
                self.finishes.append({"workflow_id": headers.get("x-workflow-id"),
                                      "path": path, "done_at": self.done_at[task_id],
                                      "task_id": task_id})
                if headers.get("x-callback-url"):
                    timer = threading.Timer(work_s, self.call_back,
                                            (task_id, headers["x-callback-url"]))
                    timer.daemon = True
                    timer.start()
            if time.time() < self.done_at[task_id]:  # a resubmit before then: still running
                return Reply(202, {"task_id": task_id, "status_url": f"/v1/tasks/{task_id}"})
        return reply

    def _poll(self, task_id: str) -> Reply:
        with self.lock:
            done_at = self.done_at.get(task_id)
        if done_at is not None and time.time() < done_at:
            return Reply(202, {"task_id": task_id, "status": "PENDING"})
        return super()._poll(task_id)


class SlowAgent(ScriptedAgent):
    """Answers every submit (and ASF notification) ``answer_s`` after it arrived, with SUCCESS:
    the worker is inside the request all that time."""

    def __init__(self, answer_s: float) -> None:
        self.answer_s = answer_s
        super().__init__(sync=True)

    def _default(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if method == "POST" and path != ASF_UI:
            time.sleep(self.answer_s)  # the agent at work (this request's handler thread)
        return super()._default(method, path, headers, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("sync", "timed", "slow"), default="sync")
    parser.add_argument("--work-s", default="0.25,0.65")
    parser.add_argument("--answer-s", type=float, default=60.0, help="slow: seconds per submit")
    args = parser.parse_args()
    if args.mode == "sync":
        agent = ScriptedAgent(sync=True)
    elif args.mode == "slow":
        agent = SlowAgent(args.answer_s)
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
