"""Every tunable of CPOA as a named constant with its unit; `settings` reads the env twins."""

from __future__ import annotations

DB_PORT = 5432
"""PostgreSQL port when POSTGRES_HOST is given without POSTGRES_PORT."""

DB_POOL_MIN_CONN = 1
"""Connections the pool keeps open (DB_POOL_MIN_CONN)."""

DB_POOL_MAX_CONN = 5
"""Connections the pool may open at most (DB_POOL_MAX_CONN)."""

SERVICE_RETRY_COUNT = 3
"""Attempts in total for one agent request on a transient error (CPOA_SERVICE_RETRY_COUNT)."""

SERVICE_RETRY_BACKOFF_FACTOR = 0.5
"""Sleep factor * 2**n seconds between those attempts (CPOA_SERVICE_RETRY_BACKOFF_FACTOR)."""

MAX_INLINE_RETRY_AFTER_S = 5.0
"""A Retry-After up to this many seconds is slept inside the call; a longer one is scheduled."""

SUBMIT_TIMEOUT_S = 30.0
"""Timeout of one submit request to an agent."""

POLL_REQUEST_TIMEOUT_S = 15.0
"""Timeout of one status poll request."""

NOTIFY_TIMEOUT_S = 10.0
"""Timeout of one ASF notification or UI update request."""

MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""Largest agent response body read (CPOA_MAX_RESPONSE_BYTES); a larger one fails the step."""

ERROR_BODY_CHARS = 500
"""Characters of an agent's response body kept in logs and failure reasons."""

AGENT_PORTS = {"TDA": 5000, "SCA": 5002, "WCHA": 5003, "PSWA": 5004, "VFA": 5005,
               "ASF": 5006, "IGA": 5007}
"""Default local port of each agent service."""

POLLING_S = {"WCHA": (10.0, 300.0), "TDA": (5.0, 180.0), "SCA": (3.0, 180.0),
             "PSWA": (5.0, 600.0), "VFA": (5.0, 300.0), "IGA": (5.0, 240.0)}
"""(poll interval, poll timeout) in seconds per agent (CPOA_<AGENT>_POLLING_*_SECONDS)."""

IDEMPOTENCY_LOCK_TIMEOUT_S = 3600.0
"""An orchestration lock older than this, with no progress, may be taken over."""

LEASE_TTL_S = 5 * 60.0
"""How long a worker owns a workflow while it calls an agent (CPOA_LEASE_TTL_SECONDS)."""

MAX_RECOVERY_ATTEMPTS = 5
"""Expired leases on one state before the workflow is quarantined as failed."""

SWEEP_INTERVAL_S = 30.0
"""How often a worker looks for expired leases (CPOA_SWEEP_INTERVAL_SECONDS)."""

IDLE_WAIT_MAX_S = 30.0
"""Longest a worker sleeps on LISTEN before it looks at the schedule again."""

OUTBOX_RETRY_MAX_S = 60.0
"""Longest pause between two delivery attempts of one UI event."""

OUTBOX_IDLE_S = 5.0
"""Longest an idle outbox thread sleeps before it looks for retries that came due."""

OUTBOX_LOCK_S = 10.0
"""How long a worker holds a UI event it is delivering (one request of UI_TIMEOUT_S): a worker
killed mid-delivery delays that workflow's later events by at most this."""

UI_TIMEOUT_S = 5.0
"""Timeout of one UI-event delivery; the outbox retries on its own schedule, not inline."""

ASF_NOTIFY_TIMEOUT_S = 60.0
"""How long transient failures of the ASF new-episode notification are retried
(CPOA_ASF_NOTIFY_TIMEOUT_SECONDS); then the podcast completes with a warning."""

WORKER_CONCURRENCY = 4
"""Workflows one worker process drives at once (CPOA_WORKER_CONCURRENCY)."""

TOPIC_MAX_CHARS = 1000
"""Longest topic or query accepted by start_workflow."""

URLS_MAX = 20
"""Most source URLs accepted by start_workflow."""
