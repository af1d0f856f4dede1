"""A local agent in its own process: the test suite's ScriptedAgent, instant or timed.

    python -m bench.scenarios.agent --mode sync          # every submit answers 200 SUCCESS
    python -m bench.scenarios.agent --mode timed --work-s 0.25,0.65
    python -m bench.scenarios.agent --mode slow --answer-s 60   # each submit answers 60 s later
    python -m bench.scenarios.agent --mode capped --work-s 0.5  # VFA tasks take 0.5 s each

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
import uuid
import signal
import sys
import threading
import time
from typing import Any

from cpoa.testing.agent import ASF_NOTIFY, ASF_UI, Reply, ScriptedAgent, default_result

VFA = "/forge_voice"
HOLD_RETRY_AFTER_S = 600.0
"""The Retry-After of a held VFA task: longer than any measurement window (CPOA polls it at its
polling timeout, VFA's 300 s by default, at the latest)."""


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


class CappedAgent(ScriptedAgent):
    """VFA tasks that take exactly ``work_s`` from their submit; every other path answers its
    submit 200 SUCCESS at once.

    A VFA submit is answered 202, and a poll before the task is done 202 PENDING, each with
    ``Retry-After`` = the time the task has left (CPOA honours it by default, so it polls when
    the task is done, not on its adaptive schedule). ``POST /bench/hold`` makes the VFA tasks
    submitted from then on never finish (Retry-After: HOLD_RETRY_AFTER_S); ``POST /bench/work``
    ``{"work_s": s}`` sets the time of the tasks submitted from then on.
    ``GET /bench/vfa`` returns every VFA task (submitted_at, done_at or null while held, seen_at:
    the first poll that got SUCCESS; ``time.time()`` of this process, one machine, one clock)
    and the number of requests received so far.
    """

    def __init__(self, work_s: float) -> None:
        self.work_s = work_s
        self.holding = False
        self.vfa: dict[str, dict[str, Any]] = {}
        self.vfa_by_key: dict[str, str] = {}
        self.received = 0
        super().__init__(sync=True)

    def _default(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if path == "/bench/hold" and method == "POST":
            with self.lock:
                self.holding = True
            return Reply(200, {"holding": True})
        if path == "/bench/work" and method == "POST":
            with self.lock:
                self.work_s = float(body["work_s"])
            return Reply(200, {"work_s": self.work_s})
        if path == "/bench/vfa":
            with self.lock:
                return Reply(200, {"tasks": [dict(t) for t in self.vfa.values()],
                                   "requests": self.received, "now": time.time()})
        with self.lock:
            self.received += 1
        if method == "POST" and path == VFA:
            return self._vfa_submit(headers, body)
        if method == "GET" and path.startswith("/v1/tasks/"):
            with self.lock:
                task = self.vfa.get(path.rsplit("/", 1)[-1])
            if task is not None:
                return self._vfa_answer(task)
        return super()._default(method, path, headers, body)

    def _vfa_submit(self, headers: dict[str, str], body: Any) -> Reply:
        key = headers.get("x-idempotency-key", "")
        now = time.time()
        with self.lock:
            task_id = self.vfa_by_key.get(key)
            if task_id is None:  # a resubmit of a key is the same task
                task_id = self.vfa_by_key[key] = uuid.uuid4().hex
                self.vfa[task_id] = {
                    "task_id": task_id, "workflow_id": headers.get("x-workflow-id"),
                    "submitted_at": now, "seen_at": None,
                    "done_at": None if self.holding else now + self.work_s,
                    "result": default_result(VFA, body or {})}
            task = self.vfa[task_id]
        return self._vfa_answer(task)

    def _vfa_answer(self, task: dict[str, Any]) -> Reply:
        now = time.time()
        with self.lock:
            done_at = task["done_at"]
            if done_at is not None and now >= done_at:
                task["seen_at"] = task["seen_at"] or now
                return Reply(200, {"task_id": task["task_id"], "status": "SUCCESS",
                                   "result": task["result"]})
        left = HOLD_RETRY_AFTER_S if done_at is None else done_at - now
        return Reply(202, {"task_id": task["task_id"], "status": "PENDING",
                           "status_url": f"/v1/tasks/{task['task_id']}"},
                     headers={"Retry-After": f"{left:.3f}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("sync", "timed", "slow", "capped"), default="sync")
    parser.add_argument("--work-s", default="0.25,0.65",
                        help="timed: a range LOW,HIGH; capped: one duration")
    parser.add_argument("--answer-s", type=float, default=60.0, help="slow: seconds per submit")
    args = parser.parse_args()
    if args.mode == "sync":
        agent = ScriptedAgent(sync=True)
    elif args.mode == "slow":
        agent = SlowAgent(args.answer_s)
    elif args.mode == "capped":
        agent = CappedAgent(float(args.work_s))
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
