"""The chaos agent (every agent on one loopback port, misbehaving at seeded rates) and the checks
of what the agents saw: duplicate work per workflow step, UI events lost or out of order.

The agent keeps ScriptedAgent's bookkeeping (``work``: every submit per idempotency key, counted
each time it arrives; ``ui_events``) and adds faults in front of it: a 503 before the request is
looked at, a connection closed after the work was accepted (the answer is lost, the work is
not), a bodiless 500 on a status poll. A submit whose answer the agent refused or lost is
recorded in ``unanswered``: it explains exactly one resubmit of its key.
"""

from __future__ import annotations

import collections
import itertools
import json
import random
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cpoa.testing.agent import ASF_NOTIFY, ASF_UI, Reply, ScriptedAgent


class ChaosAgent(ScriptedAgent):
    """A ScriptedAgent that fails at seeded rates and takes a while to finish each task.

    Args:
        seed: Seeds the fault decisions (the order of requests still varies between runs).
        submit_503: Share of POSTs (submits, ASF notifications and UI updates) answered 503
            before anything is recorded.
        drop: Share of requests (POSTs and polls) whose connection is closed without an
            answer after the agent did what the request asked.
        poll_500: Share of status polls answered with a bodiless 500.
        work_s: A task finishes this many seconds (uniform in the range) after its submit;
            polls before that answer PENDING.
        answer_s: Each submit is answered this many seconds (uniform in the range) after it
            arrived, so that a worker spends that long inside the request.
    """

    def __init__(self, *, seed: int = 0, submit_503: float = 0.0, drop: float = 0.0,
                 poll_500: float = 0.0, work_s: tuple[float, float] = (0.0, 0.0),
                 answer_s: tuple[float, float] = (0.0, 0.0), sync: bool = False) -> None:
        self.random = random.Random(seed)
        self.rates = {"submit_503": submit_503, "drop": drop, "poll_500": poll_500}
        self.work_s = work_s
        self.answer_s = answer_s
        self.ready_at: dict[str, float] = {}
        self.faults: collections.Counter[str] = collections.Counter()
        self.notifies: collections.Counter[str] = collections.Counter()
        """ASF notifications received per idempotency key (a redelivery counts again)."""
        self.unanswered: collections.Counter[str] = collections.Counter()
        """Submits per idempotency key answered 503 or whose connection was dropped."""
        super().__init__(sync=sync)
        self.server.handle_error = self._handle_error  # type: ignore[method-assign]

    def _handle_error(self, request: Any, client_address: Any) -> None:
        """Stays quiet about clients that died mid-request (the harness kills them on purpose)."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            type(self.server).handle_error(self.server, request, client_address)

    def _roll(self, fault: str, key: str | None = None) -> bool:
        """Decides whether ``fault`` hits this request; ``key``: the submit's idempotency key
        (None for requests that are not counted as submits), recorded as unanswered on a hit."""
        with self.lock:
            hit = self.random.random() < self.rates[fault]
            if hit:
                self.faults[fault] += 1
                if key is not None:
                    self.unanswered[key] += 1
            return hit

    def _default(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if path == ASF_NOTIFY:
            with self.lock:
                self.notifies[headers.get("x-idempotency-key", "")] += 1
        reply = super()._default(method, path, headers, body)
        if method == "POST" and isinstance(reply.body, dict) and "task_id" in reply.body:
            with self.lock:  # the first answer naming a task is the one that created it
                self.ready_at.setdefault(reply.body["task_id"],
                                         time.monotonic() + self.random.uniform(*self.work_s))
        return reply

    def _poll(self, task_id: str) -> Reply:
        ready = self.ready_at.get(task_id)
        if ready is not None and time.monotonic() < ready:
            return Reply(202, {"task_id": task_id, "status": "PENDING"})
        return super()._poll(task_id)

    def _handler(self) -> type:
        agent = self
        base = super()._handler()

        class Handler(base):  # type: ignore[misc, valid-type]
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:  # e.g. cut short by a killed client: never recorded
                    self._send(Reply(400, {"error": "body is not JSON"}))
                    return
                path = self.path.split("?", 1)[0]
                headers = {k.lower(): v for k, v in self.headers.items()}
                with agent.lock:
                    agent.requests.append({"method": method, "path": path, "headers": headers,
                                           "body": body, "at": time.monotonic()})
                    agent._count(method, path, headers, raw)  # every submit, each time
                key = submit_key(method, path, headers)
                if method == "POST" and agent._roll("submit_503", key):
                    self._send(Reply(503, {"error": "overloaded"}))
                    return
                if method == "GET" and path.startswith("/v1/tasks/") and agent._roll("poll_500"):
                    self._send(Reply(500, b""))
                    return
                reply = agent._default(method, path, headers, body)
                if key is not None and agent.answer_s[1]:
                    with agent.lock:
                        delay = agent.random.uniform(*agent.answer_s)
                    time.sleep(delay)  # the agent taking its time to answer
                if agent._roll("drop", key):  # done, but the answer never arrives
                    self.close_connection = True
                    self.connection.close()
                    return
                self._send(reply)

        return Handler


def submit_key(method: str, path: str, headers: Mapping[str, str]) -> str | None:
    """The idempotency key under which ScriptedAgent counts this request as a submit, or None
    (UI updates, health checks and polls are not submits)."""
    if method != "POST" or path in (ASF_UI, "/health"):
        return None
    return headers.get("x-idempotency-key", "")


# -- checks ------------------------------------------------------------------------------------

def expected_keys(workflow_id: str, kind: str, context: Mapping[str, Any]) -> set[str]:
    """The downstream keys one workflow's steps should have used (no retry, no caller key)."""
    if kind == "podcast":
        return {f"{workflow_id}_{k}" for k in ("wcha", "tda", "pswa", "vfa", "iga", "asf")}
    keys = {f"{workflow_id}_tda"}
    keys |= {f"{workflow_id}_sca_{t['topic_id']}" for t in context.get("topics", [])}
    keys |= {f"{workflow_id}_iga_{s['snippet_id']}" for s in context.get("snippets", [])
             if s.get("cover_art_prompt")}
    return keys


def duplicate_work(agent: ChaosAgent | ScriptedAgent,
                   workflows: Iterable[tuple[str, str, Mapping[str, Any]]],
                   excused: Iterable[str] = (),
                   in_flight: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Counts agent work done more than once for one workflow step, and work never done.

    Every submit the agent received counts (not only a key's first). A key may be submitted
    once, plus exactly one more time for each of its submits the agent refused or whose
    answer it lost (``unanswered``), plus one more for each worker death while its request was
    in flight (``in_flight``); anything beyond is a duplicate. So is a key the workflow should
    never have used (two keys for one step means the step's work was done twice).

    Args:
        workflows: (workflow_id, kind, context) of every workflow to check.
        excused: Expected keys that may be missing (a step that failed for a known reason).
        in_flight: Key -> worker deaths (kills, cut sessions) while that key's request was
            in flight (:mod:`bench.chaos.inflight`); each excuses one more submit.
    """
    workflows = list(workflows)
    mine = {workflow_id for workflow_id, _, _ in workflows}
    in_flight = in_flight or {}
    with agent.lock:
        work = {k: c for k, c in agent.work.items() if _owner(k) in mine}
        notified = {k: c for k, c in getattr(agent, "notifies", {}).items() if _owner(k) in mine}
        unanswered = dict(getattr(agent, "unanswered", {}))
    allowed = {k: 1 + unanswered.get(k, 0) + in_flight.get(k, 0) for k in work}
    by_workflow: dict[str, set[str]] = collections.defaultdict(set)
    for key in [*work, *notified]:
        by_workflow[_owner(key)].add(key)
    twice = {k: c for k, c in work.items() if c > allowed[k]}
    extra, missing = [], []
    for workflow_id, kind, context in workflows:
        want = expected_keys(workflow_id, kind, context)
        extra += sorted(by_workflow[workflow_id] - want)
        missing += sorted(want - by_workflow[workflow_id] - set(excused))
    return {"duplicate_work": len(twice) + len(extra), "keys_worked_twice": len(twice),
            "keys_worked_twice_sample": dict(list(twice.items())[:5]),
            "submits": sum(work.values()),
            "resubmits_excused": sum(min(c, allowed[k]) - 1 for k, c in work.items()),
            "unexpected_keys": extra[:10], "keys_never_worked": len(missing),
            "keys_never_worked_sample": missing[:5],
            "work_keys": sum(len(keys) for keys in by_workflow.values()),
            "asf_notify_redeliveries": sum(c - 1 for c in notified.values())}


def _owner(key: str) -> str:
    """The workflow of a downstream key ``<workflow_id>_<step>…`` (no caller key is used)."""
    return key.split("_", 1)[0]


def ui_event_audit(delivered: Sequence[Mapping[str, Any]],
                   histories: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Compares what ASF received with each workflow's history.

    After dropping repeated ``event_id``s, the states ASF saw for a workflow must be exactly the
    states its history entered, in order.

    Args:
        delivered: UI event bodies in arrival order.
        histories: workflow_id -> the ``to_state`` of each history row, in order.
    """
    seen: set[str] = set()
    states: dict[str, list[str]] = collections.defaultdict(list)
    duplicates = 0
    delivered = [e for e in delivered
                 if isinstance(e, Mapping) and str(e.get("workflow_id")) in histories]
    for event in delivered:
        if event.get("event_id") in seen:
            duplicates += 1
            continue
        seen.add(event.get("event_id"))
        states[str(event.get("workflow_id"))].append(event["data"]["state"])
    lost = reordered = extra = 0
    for workflow_id, expected in histories.items():
        got = states.get(workflow_id, [])
        missing = collections.Counter(expected) - collections.Counter(got)
        surplus = collections.Counter(got) - collections.Counter(expected)
        lost += sum(missing.values())
        extra += sum(surplus.values())
        in_history = [s for s in got if s in expected]
        positions = [expected.index(s) for s in in_history]
        reordered += sum(1 for a, b in itertools.pairwise(positions) if b <= a)
    return {"ui_events_expected": sum(len(h) for h in histories.values()),
            "ui_events_delivered": len(delivered), "ui_duplicates_dropped": duplicates,
            "ui_events_lost": lost, "ui_events_reordered": reordered,
            "ui_events_unexpected": extra}
