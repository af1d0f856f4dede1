"""Scale-out, done for real: a `cpoa serve` gateway and three `cpoa worker` processes on one
database; thirty podcasts started over HTTP.

The agents are real HTTP servers on 127.0.0.1: WCHA, TDA and PSWA answer 202 and need a poll
that says PENDING before SUCCESS; VFA, IGA and ASF answer at once. Every submit takes a little
time, so a worker holds its leases long enough to be killed while holding them.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cpoa import machine
from cpoa.testing.cli import ROOT, cli_env
from cpoa.testing.agent import ASF_NOTIFY, ASF_UI, ScriptedAgent
from tests.fix_agents import wait_until

WORKERS = 3
SLOTS = 4
PODCASTS = 30
SUBMIT_LATENCY_S = 0.1
AGENT_STEPS = 6
"""Keys submitted per podcast: WCHA, TDA, PSWA, VFA, IGA and the ASF notification."""
"""Agent calls that do work per podcast: WCHA, TDA, PSWA, VFA, IGA (ASF is only notified)."""
CHAIN = [None, *machine.PODCAST_STEPS, "completed"]
HISTORY = list(itertools.pairwise(CHAIN))
"""Every podcast's history: the start and six transitions, seven rows."""


class SlowAgent(ScriptedAgent):
    """A ScriptedAgent whose work submits take ``latency_s`` (after the work is counted)."""

    def __init__(self, *, latency_s: float, **options: Any) -> None:
        super().__init__(**options)
        self.latency_s = latency_s

    def _default(self, method: str, path: str, headers: dict[str, str], body: Any) -> Any:
        reply = super()._default(method, path, headers, body)
        if method == "POST" and path not in (ASF_NOTIFY, ASF_UI):
            time.sleep(self.latency_s)
        return reply


class Fleet:
    """Worker subprocesses with their JSON logs in files (read after or during the run)."""

    def __init__(self, env: dict[str, str], folder: str) -> None:
        self.env = env
        self.folder = folder
        self.procs: list[subprocess.Popen] = []

    def start(self, count: int) -> None:
        for _ in range(count):
            index = len(self.procs)
            with open(os.path.join(self.folder, f"worker{index}.log"), "w") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "cpoa.cli", "worker", "-v"], env=self.env, cwd=ROOT,
                    stdout=subprocess.DEVNULL, stderr=log))
        wait_until(lambda: all(self.records(i, "worker_start") for i in range(len(self.procs))),
                   timeout=20)

    def records(self, index: int, action: str) -> list[dict[str, Any]]:
        """The log records of one worker with this ``action``."""
        found = []
        with open(os.path.join(self.folder, f"worker{index}.log")) as log:
            for line in log:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("action") == action:
                    found.append(record)
        return found

    def owner_prefix(self, index: int) -> str:
        """The start of every lease owner name of one worker (host:pid:)."""
        return f"{socket.gethostname()}:{self.procs[index].pid}:"

    def signal(self, index: int, signum: int) -> None:
        self.procs[index].send_signal(signum)

    def kill(self, index: int) -> None:
        self.signal(index, signal.SIGKILL)
        self.procs[index].wait(timeout=10)

    def stop(self) -> list[int]:
        """SIGTERMs every live worker; returns the exit codes of those."""
        live = [p for p in self.procs if p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        return [proc.wait(timeout=30) for proc in live]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def polled_agent() -> Iterator[SlowAgent]:
    """WCHA, TDA, PSWA: 202, then one PENDING poll, then SUCCESS."""
    server = SlowAgent(latency_s=SUBMIT_LATENCY_S, pending_polls=1)
    yield server
    server.close()


@pytest.fixture
def sync_agent() -> Iterator[SlowAgent]:
    """VFA, IGA and ASF: the result in the submit's answer."""
    server = SlowAgent(latency_s=SUBMIT_LATENCY_S, sync=True)
    yield server
    server.close()


@pytest.fixture
def deployment_env(dsn, polled_agent, sync_agent) -> dict[str, str]:
    """The environment every process of the deployment shares: one database, the agents,
    CPOA_WORKER_CONCURRENCY slots and a pool of slots + 2 (docs/deployment.md)."""
    env = cli_env(dsn, polled_agent.url, CPOA_WORKER_CONCURRENCY=str(SLOTS),
                  DB_POOL_MAX_CONN=str(SLOTS + 2))  # lease and sweep settings: defaults
    env.update(VFA_SERVICE_URL=sync_agent.url, IGA_SERVICE_URL=sync_agent.url,
               ASF_NOTIFICATION_URL=sync_agent.url + ASF_NOTIFY,
               CPOA_ASF_SEND_UI_UPDATE_URL=sync_agent.url + ASF_UI)
    return env


@pytest.fixture
def fleet(deployment_env, tmp_path) -> Iterator[Fleet]:
    """The worker processes (started by the test), killed at the end if still running."""
    workers = Fleet(deployment_env, str(tmp_path))
    yield workers
    workers.close()


@pytest.fixture
def gateway(deployment_env, tmp_path) -> Iterator[httpx.Client]:
    """`cpoa serve --port 0` as a subprocess; an HTTP client on the URL it prints."""
    out = tmp_path / "gateway.out"
    with open(out, "w") as stdout, open(tmp_path / "gateway.log", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "cpoa.cli", "serve", "--port", "0"],
                                env=deployment_env, cwd=ROOT, stdout=stdout, stderr=stderr)
    try:
        wait_until(lambda: proc.poll() is not None or "\n" in out.read_text(), timeout=30)
        assert proc.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
        line = out.read_text().partition("\n")[0]
        assert line.startswith("serving on http://"), line
        with httpx.Client(base_url=line.split()[-1], timeout=30.0) as client:
            yield client
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def start_podcasts(gateway: httpx.Client, count: int) -> list[str]:
    """POSTs ``count`` podcasts (a UI client and an idempotency key each), four at a time;
    returns their ids after checking each answer (202, status URL)."""
    def start(i: int) -> str:
        answer = gateway.post("/v1/podcasts", json={"topic": f"topic {i}",
                                                    "client_id": f"browser-{i}"},
                              headers={"Idempotency-Key": f"req-{i}"})
        assert answer.status_code == 202, answer.text
        started = answer.json()
        assert started["status_url"] == f"/v1/workflows/{started['workflow_id']}"
        return started["workflow_id"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(start, range(count)))


def states(db) -> dict[str, int]:
    rows = db.execute("SELECT state, count(*) AS n FROM workflow_instances GROUP BY state")
    return {r["state"]: r["n"] for r in rows.fetchall()}


def undelivered(db) -> int:
    return db.execute("SELECT count(*) AS n FROM ui_event_outbox "
                      "WHERE delivered_at IS NULL").fetchone()["n"]


def assert_done_once(db, gateway, ids, agents, orphans=()) -> None:
    """Every podcast completed (as the gateway reports it) with the seven-row history, every
    agent submit made once per idempotency key (every submit counted) but for one repeat of
    the step each orphan of a killed worker had in flight, and every UI event delivered."""
    assert states(db) == {"completed": PODCASTS}
    for workflow_id in ids:
        status = gateway.get(f"/v1/workflows/{workflow_id}").json()
        assert status["state"] == "completed", status
        assert [(h["from"], h["to"]) for h in status["history"]] == HISTORY, workflow_id
    work = {key: n for agent in agents for key, n in agent.work.items()}
    assert len(work) == PODCASTS * AGENT_STEPS
    repeated = {key: n for key, n in work.items() if n != 1}
    assert set(repeated.values()) <= {2}, repeated
    owners = [key.split("_")[0] for key in repeated]
    assert set(owners) <= set(orphans) and len(owners) == len(set(owners)), (repeated, orphans)
    wait_until(lambda: undelivered(db) == 0, timeout=20)
    queued = db.execute("SELECT count(*) AS n FROM ui_event_outbox").fetchone()["n"]
    received = {event["event_id"] for agent in agents for event in agent.ui_events}
    assert queued == PODCASTS * len(CHAIN[1:]) == len(received)


@pytest.mark.slow
def test_scale_out__three_workers_complete_thirty_podcasts_once(
        fleet, gateway, db, polled_agent, sync_agent):
    """Three worker processes drain thirty podcasts started through the gateway: all complete,
    each with seven history rows, no agent work twice, and more than one worker made
    transitions."""
    fleet.start(WORKERS)
    ids = start_podcasts(gateway, PODCASTS)
    wait_until(lambda: states(db).get("completed") == PODCASTS, timeout=45)
    assert_done_once(db, gateway, ids, [polled_agent, sync_agent])
    assert fleet.stop() == [0] * WORKERS
    per_worker = [len(fleet.records(i, "transition")) for i in range(WORKERS)]
    assert sum(per_worker) == PODCASTS * len(machine.PODCAST_STEPS), per_worker
    assert sum(1 for n in per_worker if n) > 1, per_worker
    print(f"transitions per worker: {per_worker}")


@pytest.mark.slow
def test_scale_out__kill_9_of_one_worker_the_others_finish(
        fleet, gateway, db, polled_agent, sync_agent):
    """A worker SIGKILLed while it holds leases (default settings): its leases die with its
    database session, a surviving worker requeues them at once, and everything completes;
    only the steps the victim had in flight are submitted again (same key), once each."""
    fleet.start(WORKERS)
    victim = fleet.owner_prefix(0)

    def frozen_holding_leases() -> list[str]:
        """Freezes the victim (SIGSTOP) and returns the workflows it leases; thaws it and
        returns nothing when it holds none (a frozen process releases nothing)."""
        fleet.signal(0, signal.SIGSTOP)
        rows = db.execute("SELECT workflow_id FROM workflow_instances "
                          "WHERE starts_with(lease_owner, %s)", (victim,)).fetchall()
        if not rows:
            fleet.signal(0, signal.SIGCONT)
        return [str(r["workflow_id"]) for r in rows]

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = pool.submit(start_podcasts, gateway, PODCASTS)
        orphans = wait_until(frozen_holding_leases, timeout=30, interval=0.01)
        fleet.kill(0)
        killed_at = time.monotonic()
        ids = started.result(timeout=60)
    wait_until(lambda: states(db).get("completed") == PODCASTS, timeout=45)
    recovered_in = time.monotonic() - killed_at
    assert_done_once(db, gateway, ids, [polled_agent, sync_agent], orphans)
    assert fleet.stop() == [0] * (WORKERS - 1)
    print(f"{len(orphans)} orphaned workflow(s); all complete {recovered_in:.1f} s after the kill")
