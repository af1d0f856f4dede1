"""Prometheus metrics of CPOA (prometheus-client): this process's counters, the database's gauges.

Counters and histograms live in :data:`REGISTRY`, one per process (never prometheus-client's
global registry); each costs one in-memory increment on the hot path and no SQL. The gauges that
describe the database (workflows by state, age of the oldest due workflow, UI-event backlog,
each agent's flow control) and the connection pool are read when scraped, by a :class:`StoreCollector` bound to a store:
:func:`exposition` answers the gateway's GET /metrics, :func:`serve` runs the endpoint of
``cpoa worker --metrics-port``. Every name starts with ``cpoa_``; docs/metrics.md lists them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cpoa import defaults, errors, machine, models, queues

if TYPE_CHECKING:  # the store is psycopg's only user; this module never imports it
    from cpoa.store import PostgresStore

logger = logging.getLogger(__name__)

ERROR_KINDS = ("transient", "permanent", "timeout", "invalid")
"""The ``kind`` label of ``cpoa_agent_errors_total``."""

STEP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                  120.0)
"""Histogram buckets of one agent request, from a local agent's few ms to a slow submit's
timeout with its inline retries."""

STATES = tuple(dict.fromkeys(s for kind in machine.KINDS for s in machine.states(kind)))
"""Every state name of every kind, reported even when no workflow is in it."""

REGISTRY = CollectorRegistry(auto_describe=True)
"""This process's counters and histograms (the store-bound gauges are added per scrape)."""

TRANSITIONS = Counter(
    "cpoa_transitions", "Workflow transitions committed by this process, by kind and states.",
    ["kind", "from", "to"], registry=REGISTRY)
STEP_DURATION = Histogram(
    "cpoa_step_duration_seconds",
    "Duration of one step action: one agent request (submit, poll or notification, with its "
    "inline retries), by agent.", ["agent"], buckets=STEP_BUCKETS_S, registry=REGISTRY)
AGENT_ERRORS = Counter(
    "cpoa_agent_errors",
    "Failed agent requests and replies, by agent and kind: transient (retried later), permanent "
    "(4xx or a failed task), timeout (no answer in time or past the polling timeout), invalid "
    "(a reply that breaks the contract).", ["agent", "kind"], registry=REGISTRY)
LEASES_EXPIRED = Counter(
    "cpoa_leases_expired",
    "Expired leases released by this process's sweeper (their workflows were made due again).",
    registry=REGISTRY)
LEASES_RECOVERED = Counter(
    "cpoa_leases_recovered",
    "Steps completed by this process for workflows whose lease had expired (after a sweep or a "
    "take-over): recoveries that worked.", registry=REGISTRY)
prometheus_client.ProcessCollector(namespace="cpoa", registry=REGISTRY)

# Known label values start at 0, so that rate() and ratios see a series before its first event.
for _kind in machine.KINDS:
    for _source, _dest in sorted(machine.edges(_kind)):
        TRANSITIONS.labels(_kind, _source, _dest)
for _agent in defaults.AGENT_PORTS:
    for _error in ERROR_KINDS:
        AGENT_ERRORS.labels(_agent, _error)


def transitioned(workflow: models.Workflow, dest: str, trigger: str | None = None) -> None:
    """Counts one committed transition (call it after the commit).

    Args:
        workflow: The workflow as it was before the transition.
        dest: The state it moved to.
        trigger: The machine trigger; a ``step_done`` of a workflow whose lease had expired
            also counts one recovery.
    """
    TRANSITIONS.labels(workflow.kind, workflow.state, dest).inc()
    if trigger == "step_done" and workflow.recovery_attempts:
        LEASES_RECOVERED.inc()


def error_kind(exc: BaseException) -> str:
    """Returns the ``kind`` label of a failed agent request (one of :data:`ERROR_KINDS`)."""
    if isinstance(exc, errors.AgentTimeout):
        return "timeout"
    if isinstance(exc, errors.InvalidAgentResult):
        return "invalid"
    if isinstance(exc, errors.AgentUnavailable):
        return "transient"
    return "permanent"


def agent_error(agent: str, kind: str) -> None:
    """Counts one failed agent request or reply of ``kind`` (see :data:`ERROR_KINDS`)."""
    AGENT_ERRORS.labels(agent, kind).inc()


class StoreCollector(Collector):
    """Reads the database and pool gauges of one store at scrape time (one query).

    Args:
        store: The store whose pool and database to read.
    """

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def describe(self) -> list[GaugeMetricFamily]:
        """The metric names, without touching the database (used at registration)."""
        return list(_gauges().values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yields the gauges; a database error yields ``cpoa_database_up 0`` instead of the
        database's gauges (the pool's and the counters are still scraped)."""
        gauges = _gauges()
        stats = self.store.pool.get_stats()  # before the query below takes a connection
        gauges["pool_in_use"].add_metric(
            [], stats.get("pool_size", 0) - stats.get("pool_available", 0))
        gauges["pool_waiting"].add_metric([], stats.get("requests_waiting", 0))
        gauges["pool_max"].add_metric([], stats.get("pool_max", 0))
        yield from (gauges[name] for name in ("pool_in_use", "pool_waiting", "pool_max"))
        try:
            snapshot = self.store.metrics_snapshot()
            agents = queues.every_agent(self.store.agent_queues())
        except errors.StoreError as exc:
            logger.warning("metrics snapshot failed: %s", exc, extra={"action": "metrics_failed"})
            gauges["up"].add_metric([], 0)
            yield gauges["up"]
            return
        gauges["up"].add_metric([], 1)
        counts = snapshot["workflows_by_state"]
        for state in (*STATES, *sorted(set(counts) - set(STATES))):
            gauges["workflows"].add_metric([state], counts.get(state, 0))
        gauges["oldest_due"].add_metric([], snapshot["oldest_due_s"])
        gauges["outbox"].add_metric([], snapshot["outbox_backlog"])
        yield from (gauges[name] for name in ("up", "workflows", "oldest_due", "outbox"))
        yield from _agent_gauges(gauges, agents)


def _agent_gauges(gauges: dict[str, GaugeMetricFamily],
                  agents: list[models.AgentQueue]) -> Iterator[GaugeMetricFamily]:
    """The flow-control gauges, one series per agent (the cap only where one is set)."""
    for queue in agents:
        labels = [queue.agent]
        gauges["agent_in_flight"].add_metric(labels, queue.in_flight)
        if queue.max_in_flight is not None:
            gauges["agent_limit"].add_metric(labels, queue.max_in_flight)
        gauges["agent_waiting"].add_metric(labels, queue.waiting)
        gauges["agent_rate_waiting"].add_metric(labels, queue.rate_waiting)
        gauges["agent_paused_until"].add_metric(
            labels, queue.paused_until.timestamp() if queue.paused_until else 0)
        gauges["agent_failures"].add_metric(labels, queue.failures)
    yield from (gauges[name] for name in AGENT_GAUGES)


def _gauges() -> dict[str, GaugeMetricFamily]:
    """Fresh, empty families of every gauge :class:`StoreCollector` reports."""
    def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, text, labels=labels)
    return {
        "pool_in_use": gauge("cpoa_db_pool_connections_in_use",
                             "Connections of this process's pool lent out now."),
        "pool_waiting": gauge("cpoa_db_pool_requests_waiting",
                              "Callers in this process waiting for a pooled connection."),
        "pool_max": gauge("cpoa_db_pool_max_connections",
                          "Connections this process's pool may open (DB_POOL_MAX_CONN)."),
        "up": gauge("cpoa_database_up", "1 when this scrape could read the database, else 0."),
        "workflows": gauge("cpoa_workflows",
                           "Workflows in the database by state (every kind, every process).",
                           ("state",)),
        "oldest_due": gauge("cpoa_oldest_due_workflow_age_seconds",
                            "How long the longest-waiting due, unclaimed workflow has been due "
                            "(0 when none is)."),
        "outbox": gauge("cpoa_outbox_backlog",
                        "UI events queued in the outbox and not delivered yet."),
        **_agent_families(gauge),
    }


AGENT_GAUGES = ("agent_in_flight", "agent_limit", "agent_waiting", "agent_rate_waiting",
                "agent_paused_until", "agent_failures")
"""The keys of the per-agent flow-control gauges in :func:`_gauges`."""


def _agent_families(gauge: Any) -> dict[str, GaugeMetricFamily]:
    agent = ("agent",)
    return {
        "agent_in_flight": gauge("cpoa_agent_in_flight",
                                 "Slots of the agent held now: tasks submitted and not finished "
                                 "(counted for capped agents), every worker.", agent),
        "agent_limit": gauge("cpoa_agent_max_in_flight",
                             "The agent's cap (CPOA_<AGENT>_MAX_IN_FLIGHT) as the workers last "
                             "set it; only agents that have one.", agent),
        "agent_waiting": gauge("cpoa_agent_waiting",
                               "Workflows waiting for a slot of the agent.", agent),
        "agent_rate_waiting": gauge("cpoa_agent_rate_waiting",
                                    "Workflows waiting for their place in the agent's rate "
                                    "(CPOA_<AGENT>_RATE_LIMIT).", agent),
        "agent_paused_until": gauge("cpoa_agent_paused_until_timestamp_seconds",
                                    "Until when new submits to the agent are paused (after a "
                                    "429/503 with Retry-After, or its breaker), Unix seconds; "
                                    "0 when not paused.", agent),
        "agent_failures": gauge("cpoa_agent_breaker_failures",
                                "The agent's failed requests in a row, every worker (its "
                                "breaker opens at BREAKER_FAILURES).", agent),
    }


def registry_for(store: PostgresStore) -> CollectorRegistry:
    """Returns a registry with this process's counters and ``store``'s gauges."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(REGISTRY)
    registry.register(StoreCollector(store))
    return registry


def exposition(store: PostgresStore) -> tuple[bytes, str]:
    """Returns one scrape in the Prometheus text format: (body, content type).

    The gateway's GET /metrics answers with exactly this.
    """
    return (prometheus_client.generate_latest(registry_for(store)),
            prometheus_client.CONTENT_TYPE_LATEST)


def serve(store: PostgresStore, port: int, host: str = defaults.METRICS_HOST) -> WSGIServer:
    """Serves this process's metrics over HTTP (any path, e.g. /metrics) on a daemon thread.

    Args:
        store: The store whose database and pool the gauges describe.
        port: The TCP port (1-65535).
        host: The address to listen on (``0.0.0.0``: every interface).

    Returns:
        The server; ``shutdown()`` stops it.

    Raises:
        ConfigError: the port is out of range or cannot be listened on.
    """
    if not 0 < port < 65536:
        raise errors.ConfigError(f"CPOA_METRICS_PORT: {port} is not a TCP port",
                                 variable="CPOA_METRICS_PORT")
    try:
        server, _ = prometheus_client.start_http_server(port, addr=host,
                                                        registry=registry_for(store))
    except OSError as exc:
        raise errors.ConfigError(
            f"CPOA_METRICS_PORT: cannot listen on {host}:{port}: {exc.strerror or exc}",
            variable="CPOA_METRICS_PORT") from exc
    logger.info("metrics served on %s:%d", host, port,
                extra={"action": "metrics_serve", "host": host, "port": port})
    return server
