"""Reading a scrape: the Prometheus text format parsed back into {(name, labels): value}."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from cpoa import metrics
from cpoa.store import PostgresStore

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(body: bytes) -> Samples:
    """Every sample of one exposition, keyed by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def scrape(store: PostgresStore) -> Samples:
    """One scrape of this process's metrics with ``store``'s gauges, as the gateway serves it."""
    body, content_type = metrics.exposition(store)
    assert content_type.startswith("text/plain")
    return parse(body)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: counters start there)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def transitions(samples: Samples, kind: str, source: str, dest: str) -> float:
    """``cpoa_transitions_total`` of one (kind, from, to)."""
    return value(samples, "cpoa_transitions_total", kind=kind, to=dest, **{"from": source})


def errors(samples: Samples, agent: str) -> dict[str, float]:
    """``cpoa_agent_errors_total`` of one agent, per kind."""
    return {kind: value(samples, "cpoa_agent_errors_total", agent=agent, kind=kind)
            for kind in metrics.ERROR_KINDS}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """The per-key increase between two readings (only keys that moved)."""
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
