"""Scenario 4, agent outage: PSWA down shorter, then longer, than its polling timeout.

A worker (in-process, on its own thread) drives podcast workflows while the script-weaving agent
answers every request with a dropped connection or a 503. Down for longer than its polling
interval but shorter than its polling timeout, the workflows wait in ``scripting`` and finish
when it is back; down for longer than the timeout, they fail with a reason naming the agent and
the timeout, and ``retry`` completes them once the agent is back.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.chaos import common
from bench.chaos.agents import submit_key
from cpoa import defaults
from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.store import PostgresStore
from cpoa.worker import Worker
from cpoa.testing.agent import Reply, ScriptedAgent
from cpoa.testing.agent import agent_env

INTERVAL_S = 0.1
TIMEOUT_S = 8.0
"""Long enough for a short outage and the breaker's pauses after it: the fifth failure in a
row pauses PSWA's new submits for the whole fleet (1 s, then 2 s, 4 s while it stays down), so
a workflow's next submit after the outage can come a pause later than the agent's return."""
SHORT_OUTAGE_S = 1.0
"""The short outage: this long (10 polling intervals) from its first refused request."""
TIMEOUT_REASON = re.compile(
    rf"^scripting: PSWA task did not finish within its {TIMEOUT_S:g} s polling timeout"
    r" \(last error: PSWA (unreachable|answered HTTP 503)")


class FlakyAgent(ScriptedAgent):
    """A well-behaved agent that, while ``down`` is set, drops every other connection and
    answers 503 to the rest; it counts those refusals per workflow, and the refused submits
    per idempotency key (``unanswered``: each explains one resubmit)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.refused: dict[str, list[float]] = collections.defaultdict(list)
        self.unanswered: collections.Counter[str] = collections.Counter()

    def _default(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if not self.down.is_set():
            return super()._default(method, path, headers, body)
        with self.lock:
            times = self.refused[headers.get("x-workflow-id", "")]
            times.append(time.monotonic())
            drop = len(times) % 2 == 1
            key = submit_key(method, path, headers)
            if key is not None:
                self.unanswered[key] += 1
        return Reply(drop=True) if drop else Reply(503, {"error": "down for maintenance"})


def run(ctx: common.Context) -> dict[str, Any]:
    """Runs the scenario; returns ``ok`` and the figures."""
    count = 4 if ctx.quick else 20
    agents, pswa = ScriptedAgent(), FlakyAgent()
    try:
        with ctx.database() as dsn, capture_logs() as records:
            store = PostgresStore(dsn, min_size=1, max_size=10)
            settings = settings_module.from_env(agent_env(
                agents.url, PSWA_SERVICE_URL=pswa.url,
                CPOA_PSWA_POLLING_INTERVAL_SECONDS=str(INTERVAL_S),
                CPOA_PSWA_POLLING_TIMEOUT_SECONDS=str(TIMEOUT_S)))
            engine = Engine(store, settings)
            worker = Worker(engine, concurrency=8)
            thread = threading.Thread(target=worker.run, name="outage-worker", daemon=True)
            thread.start()
            try:
                short = _short_outage(engine, pswa, count)
                long = _long_outage(engine, pswa, count)
            finally:
                worker.stop()
                thread.join(timeout=30)
                store.close()
    finally:
        agents.close()
        pswa.close()
    # Every submit counts; one refused by the outage explains exactly one resubmit.
    duplicates = {k: n for k, n in pswa.work.items() if n > 1 + pswa.unanswered[k]}
    ok = short.pop("ok") and long.pop("ok") and not duplicates and not thread.is_alive()
    return {"ok": ok, "workflows": 2 * count, "poll_interval_s": INTERVAL_S,
            "poll_timeout_s": TIMEOUT_S, "short_outage": short, "long_outage": long,
            "duplicate_pswa_work": len(duplicates), "pswa_submits": sum(pswa.work.values()),
            "pswa_submits_refused": sum(pswa.unanswered.values()),
            "agent_failure_logs": sum(r.action == "agent_call_failed" for r in records),
            "step_crashes": sum(r.action == "step_crashed" for r in records)}


@contextlib.contextmanager
def capture_logs() -> Iterator[list[logging.LogRecord]]:
    """Collects the records of the ``cpoa`` loggers (and keeps them off standard error)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("cpoa")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        for record in records:
            record.action = getattr(record, "action", None)


def _short_outage(engine: Engine, pswa: FlakyAgent, count: int) -> dict[str, Any]:
    """Down for SHORT_OUTAGE_S from the first refused request, then back: every workflow
    completes, none failed, and the outage's refusals were retried as transient failures (a
    request refused as the outage ends may be retried by the client itself and succeed)."""
    pswa.down.set()
    ids = _start(engine, count, "short")
    held = _wait(lambda: any(pswa.refused.get(str(wf)) for wf in ids), 30)
    time.sleep(SHORT_OUTAGE_S)  # the outage's length, a fixed time from its first refusal
    pswa.down.clear()
    ended = time.monotonic()
    refused = [wf for wf in ids if pswa.refused.get(str(wf))]
    experienced = [ended - pswa.refused[str(wf)][0] for wf in refused]
    finished = _wait(lambda: _states(engine, ids) == {"completed"}, 30)
    states = collections.Counter(engine.store.get_workflow(wf).state for wf in ids)
    waits = [_time_in(engine, wf, "scripting") for wf in ids]
    retries = [_pswa_task(engine, wf).retry_count for wf in refused]
    ok = (held and finished and states == {"completed": count} and bool(refused)
          and max(experienced) < TIMEOUT_S and max(retries) >= 1)
    return {"ok": ok, "states": dict(states), "refused_workflows": len(refused),
            "outage_seen_max_s": round(max(experienced, default=0.0), 2),
            "scripting_wait_s": _spread(waits), "transient_retries": _spread(retries or [0]),
            "refused_requests": sum(len(pswa.refused.get(str(wf), [])) for wf in ids)}


def _long_outage(engine: Engine, pswa: FlakyAgent, count: int) -> dict[str, Any]:
    """Down until every workflow has failed on its polling timeout; then back, and retried."""
    pswa.down.set()
    ids = _start(engine, count, "long")
    # A workflow that reaches scripting while the breaker is open makes its first submit (and
    # starts its timeout) when the pause ends: up to the breaker's longest pause later.
    failed = _wait(lambda: _states(engine, ids) == {"failed"},
                   TIMEOUT_S + defaults.BREAKER_MOST_PAUSE_S + 30)
    statuses = [engine.get_workflow(wf) for wf in ids]
    reasons = [s["error"] or "" for s in statuses]
    to_fail = [_time_in(engine, wf, "scripting") for wf in ids]
    pswa.down.clear()
    retried_at = time.monotonic()
    for wf in ids:
        engine.retry(wf)
    completed = _wait(lambda: _states(engine, ids) == {"completed"}, 30)
    retry_s = time.monotonic() - retried_at
    retry_keys = [_pswa_task(engine, wf, attempt=1).idempotency_key for wf in ids]
    ok = (failed and completed and len(retry_keys) == count
          and all(TIMEOUT_REASON.match(r) for r in reasons)
          and all(s["failed_from_state"] == "scripting" for s in statuses)
          and min(to_fail) >= TIMEOUT_S and all(k.endswith("_pswa_r1") for k in retry_keys))
    return {"ok": ok, "failed": sum(s["state"] == "failed" for s in statuses),
            "time_to_fail_s": _spread(to_fail), "reason": reasons[0][:160],
            "reasons_matching": sum(bool(TIMEOUT_REASON.match(r)) for r in reasons),
            "retried_completed": len(ids) if completed else 0,
            "retry_to_completed_s": round(retry_s, 2)}


# -- helpers ---------------------------------------------------------------------------------

def _start(engine: Engine, count: int, label: str) -> list:
    return [engine.start_workflow("podcast", {"topic": f"{label} outage {i}"})
            for i in range(count)]


def _states(engine: Engine, ids: list) -> set[str]:
    return {engine.store.get_workflow(wf).state for wf in ids}


def _time_in(engine: Engine, workflow_id: object, state: str) -> float:
    """Seconds between entering ``state`` and first leaving it (from the history)."""
    history = engine.store.get_history(workflow_id)
    entered = next(h["at"] for h in history if h["to_state"] == state)
    left = next(h["at"] for h in history if h["from_state"] == state)
    return (left - entered).total_seconds()


def _pswa_task(engine: Engine, workflow_id: object, attempt: int = 0) -> Any:
    return next(t for t in engine.store.get_tasks(workflow_id)
                if t.step == "scripting" and t.attempt == attempt)


def _spread(values: list[float]) -> dict[str, float | None]:
    return {"min": round(min(values), 2), "p50": common.percentile(values, 50),
            "max": round(max(values), 2)}


def _wait(check: Callable[[], bool], timeout: float) -> bool:
    """Polls ``check`` until true; False at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False
