"""The Celery integration for real: a Redis broker, `celery worker` subprocesses, HTTP agents."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cpoa.testing.cli import ROOT, cli_env
from tests.fix_agents import wait_until

celery_tasks = pytest.importorskip("cpoa.celery_tasks", reason="the [celery] extra is missing")
redis = pytest.importorskip("redis", reason="the [celery] extra is missing")
celery_exceptions = pytest.importorskip("celery.exceptions")

REDIS_URL = "redis://127.0.0.1:6379/0"
PODCAST, SNIPPETS = celery_tasks.TASK_NAMES["podcast"], celery_tasks.TASK_NAMES["snippets"]


@pytest.fixture(scope="module")
def redis_client() -> Iterator[Any]:
    """A client of the Redis server on 127.0.0.1:6379; the tests skip when there is none."""
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        pytest.skip("no Redis server on 127.0.0.1:6379 (the Celery tests need one as broker)")
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def celery_env(dsn: str, redis_client: Any) -> Iterator[Callable[..., dict[str, str]]]:
    """Builds the environment of a Celery worker on the test database; every Redis key of
    the test carries its own prefix (queues and unacknowledged messages: no cross-talk with
    other runs) and is deleted afterwards."""
    prefix = f"cpoa-test-{uuid.uuid4().hex[:10]}:"

    def make(agent_url: str, visibility_s: float = 30.0, **overrides: str) -> dict[str, str]:
        options = {"global_keyprefix": prefix, "visibility_timeout": visibility_s,
                   "unacked_restore_interval": 1, "unacked_restore_throttle": 1}
        return cli_env(dsn, agent_url, CPOA_CELERY_BROKER_URL=REDIS_URL,
                       CPOA_CELERY_BROKER_TRANSPORT_OPTIONS=json.dumps(options),
                       CPOA_CELERY_MAX_COUNTDOWN_SECONDS="1", **overrides)
    yield make
    for key in redis_client.scan_iter(match=f"{prefix}*"):
        redis_client.delete(key)


@pytest.fixture
def spawn_worker(tmp_path: Any) -> Iterator[Callable[[dict[str, str]], subprocess.Popen]]:
    """Starts `celery -A cpoa.celery_tasks worker` (solo pool: one task at a time); stops
    the ones still running afterwards."""
    workers: list[subprocess.Popen] = []

    def spawn(env: dict[str, str]) -> subprocess.Popen:
        log = open(tmp_path / f"worker-{len(workers)}.log", "w")  # noqa: SIM115 (closed below)
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "cpoa.celery_tasks", "worker",
             "--pool=solo", "--concurrency=1", "--loglevel=INFO", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "-n", f"cpoa-{uuid.uuid4().hex[:8]}@%h"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        log.close()  # the child has its own copy
        return workers[-1]
    yield spawn
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)


def worker_logs(tmp_path: Any) -> str:
    """The last lines of every worker's log, for assertion messages."""
    return "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("worker-*.log")))


def final(result: Any, tmp_path: Any, timeout: float) -> dict[str, Any]:
    """The task's return value, waited for with a deadline (the workers' logs if missed)."""
    try:
        return result.get(timeout=timeout)
    except celery_exceptions.TimeoutError:
        raise AssertionError(f"task {result.id} unfinished after {timeout} s\n"
                             f"{worker_logs(tmp_path)}") from None


@pytest.mark.slow
def test_orchestrate__drives_workflows_to_the_end_with_countdowns(
        celery_env, spawn_worker, make_agent, store, tmp_path):
    """One solo worker completes a podcast sent twice with one idempotency key and a snippets
    workflow, interleaving them while their agents answer PENDING (it never waits on a poll)."""
    agent = make_agent(pending_polls=2)
    env = celery_env(agent.url, **{f"CPOA_{name}_POLLING_INTERVAL_SECONDS": "0.3"
                                   for name in ("WCHA", "TDA", "SCA", "PSWA", "VFA", "IGA")})
    app = celery_tasks.make_app(env)
    sent: list[Any] = []
    try:
        sent.append(app.tasks[PODCAST].delay({"topic": "tides"}, idempotency_key="episode-1"))
        sent.append(app.tasks[PODCAST].apply_async(args=[{"topic": "tides"}],
                                                   kwargs={"idempotency_key": "episode-1"}))
        sent.append(app.tasks[SNIPPETS].delay({"query": "ocean", "limit": 2}))
        spawn_worker(env)
        results = [final(r, tmp_path, 40) for r in sent]
    finally:
        for result in sent:
            result.forget()
        app.close()
    assert [r["state"] for r in results] == ["completed"] * 3, worker_logs(tmp_path)
    assert results[0]["workflow_id"] == results[1]["workflow_id"]
    assert len(store.list_workflows()) == 2
    assert store.get_workflow(results[2]["workflow_id"]).idempotency_key == sent[2].id
    assert agent.duplicates() == {}
    order = [r["headers"].get("x-workflow-id") for r in agent.requests]
    podcast_span = [i for i, w in enumerate(order) if w == results[0]["workflow_id"]]
    between = order[podcast_span[0]:podcast_span[-1]]
    assert results[2]["workflow_id"] in between, "the worker blocked on the podcast's polls"
    assert "retry: Retry in" in worker_logs(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["inside_the_request", "between_polls"])
def test_orchestrate__worker_sigkill_redelivers_without_duplicate_work(
        celery_env, spawn_worker, make_agent, store, tmp_path, moment):
    """A Celery worker SIGKILLed while its podcast is in `scripting` (inside the PSWA submit,
    or waiting for PSWA's next poll) is replaced: the unacknowledged message comes back, the
    podcast completes and no agent work is done twice."""
    agent = make_agent(pending_polls=0 if moment == "inside_the_request" else 4)
    env = celery_env(agent.url, visibility_s=3.0, CPOA_LEASE_TTL_SECONDS="1.5",
                     CPOA_PSWA_POLLING_INTERVAL_SECONDS="0.4")
    if moment == "inside_the_request":
        agent.delay_next("/weave_script", 30.0)  # accepted, counted, answered too late
    app = celery_tasks.make_app(env)
    try:
        result = app.tasks[PODCAST].delay({"topic": "tides"})
        doomed = spawn_worker(env)
        wait_until(lambda: _pswa_polls(agent) >= (0 if moment == "inside_the_request" else 1)
                   and agent.requests_to("/weave_script"), timeout=20)
        doomed.kill()
        doomed.wait(timeout=10)
        [workflow] = store.list_workflows()
        assert workflow.state == "scripting"
        spawn_worker(env)
        outcome = final(result, tmp_path, 30)
    finally:
        result.forget()
        app.close()
    assert outcome["state"] == "completed", worker_logs(tmp_path)
    assert outcome["workflow_id"] == str(workflow.workflow_id)
    # The submit in flight when the worker died is sent once more, under the same key (the
    # agent replays it); between polls, nothing is sent twice.
    repeated = {f"{workflow.workflow_id}_pswa": 2} if moment == "inside_the_request" else {}
    assert agent.duplicates() == repeated
    keys = {r["headers"]["x-idempotency-key"] for r in agent.requests_to("/weave_script")}
    assert keys == {f"{workflow.workflow_id}_pswa"}


def _pswa_polls(agent: Any) -> int:
    """Status polls of the PSWA task so far."""
    submits = agent.requests_to("/weave_script")
    return sum(1 for r in agent.requests
               if r["path"].startswith("/v1/tasks/") and submits and r["at"] > submits[0]["at"])
