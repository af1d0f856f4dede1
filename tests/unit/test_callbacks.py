"""Callback URLs and their tokens (cpoa.callbacks), and the gateway's per-task rate bound.
Pure: no database, no network."""

from __future__ import annotations

import urllib.parse
import uuid

import pytest

from cpoa import callbacks
from cpoa.gateway.callbacks import RateLimit

KEY = b"a secret of the deployment"
WORKFLOW, TASK = uuid.uuid4(), uuid.uuid4()


def test_url__names_workflow_task_key_and_a_token_that_verifies():
    """The URL is on the base, names the workflow and task, and carries key and token."""
    url = callbacks.url("http://gw:8080/", KEY, WORKFLOW, TASK, f"{WORKFLOW}_wcha")
    parts = urllib.parse.urlsplit(url)
    assert url.startswith(f"http://gw:8080/v1/callbacks/{WORKFLOW}/{TASK}?")
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert query["key"] == f"{WORKFLOW}_wcha" and len(query["token"]) == 64
    assert callbacks.verify(KEY, WORKFLOW, TASK, query["key"], query["token"])


def test_verify__any_other_workflow_task_key_or_secret_fails():
    """The token binds the secret, the workflow, the task and the key."""
    token = callbacks.token(KEY, WORKFLOW, TASK, "k")
    assert not callbacks.verify(b"another secret", WORKFLOW, TASK, "k", token)
    assert not callbacks.verify(KEY, uuid.uuid4(), TASK, "k", token)
    assert not callbacks.verify(KEY, WORKFLOW, uuid.uuid4(), "k", token)
    assert not callbacks.verify(KEY, WORKFLOW, TASK, "k_r1", token)
    assert not callbacks.verify(KEY, WORKFLOW, TASK, "k", token.upper())
    assert not callbacks.verify(KEY, WORKFLOW, TASK, "k", "\udcff" + token[1:])


def test_rate_limit__a_burst_then_one_deferred_then_refused():
    """Five act at once; the sixth is deferred to the next token (1 s); while that poll is
    ahead the others are refused; then the next is deferred again. Another task has its own
    bucket."""
    limit = RateLimit(burst=5, rate_per_s=1.0, tracked=100)
    assert [limit.take("a", now=0.0) for _ in range(5)] == [0.0] * 5
    assert limit.take("a", now=0.0) == pytest.approx(1.0)
    assert limit.take("b", now=0.0) == 0.0
    assert limit.take("a", now=0.5) is None and not limit.allow("a", now=0.9)
    assert limit.take("a", now=1.2) == pytest.approx(0.8)
    assert limit.take("a", now=4.0) == 0.0


def test_rate_limit__remembers_a_bounded_number_of_tasks():
    """A storm of task ids never grows the table past ``tracked``."""
    limit = RateLimit(burst=1, rate_per_s=0.0, tracked=10)
    for n in range(1000):
        limit.allow(n, now=0.0)
    assert len(limit.buckets) == 10
