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

MAX_INLINE_RETRY_AFTER_S = 1.0
"""A Retry-After up to this many seconds is slept inside the call; a longer one is scheduled,
and (on a 429 or 503 to a submit) pauses every worker's new submits to that agent."""

AGENT_PAUSE_STATUSES = frozenset({429, 503})
"""Answers whose Retry-After pauses the agent's new submits for every workflow."""

BREAKER_FAILURES = 5
"""Failed requests to one agent in a row (no answer, a 5xx, a timeout; from any workflow and
worker) that open its breaker: its new submits pause (polls go on, and one answer closes it)."""

BREAKER_FIRST_PAUSE_S, BREAKER_MOST_PAUSE_S = 1.0, 60.0
"""The breaker's first pause; a failure after a pause ran out opens it again for twice the
last pause, up to the second figure."""

RATE_BURST = 1
"""Submits to a rate-limited agent that may go at once after a quiet spell
(``CPOA_<AGENT>_RATE_BURST``): any window of W seconds holds at most burst + W × rate."""

RATE_LIMIT_MAX, RATE_BURST_MAX = 10_000.0, 10_000
"""Largest ``CPOA_<AGENT>_RATE_LIMIT`` (submits per second) and ``CPOA_<AGENT>_RATE_BURST``."""

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

POLL_FIRST_FRACTION = 0.2
"""Adaptive polling: the first poll of a task comes this fraction of its agent's polling
interval after the submit (0.2 × 10 s = 2 s for WCHA); see ``cpoa.attempt.poll_pause``."""

POLL_GROWTH = 5.0
"""Adaptive polling: each poll comes at this many times the task's age (polls at 0.2 I, I,
then every I): at most one more poll per task than a fixed interval I makes."""

POLL_MIN_PAUSE_S = 0.1
"""Shortest pause before the next poll that an agent's Retry-After on a pending reply may ask."""

IDEMPOTENCY_LOCK_TIMEOUT_S = 3600.0
"""An orchestration lock older than this, with no progress, may be taken over."""

LEASE_TTL_S = 30.0
"""How long a lease lasts without renewal (CPOA_LEASE_TTL_SECONDS). While an agent request is
in flight the holder renews it every third of this (the heartbeat), so a long request never
loses it; a process that stops (SIGSTOP, a hung interpreter) loses it this long after its last
renewal. A worker that dies loses its leases at once (its liveness lock goes with its session)."""

HEARTBEATS_PER_TTL = 3
"""Lease renewals per lease TTL while a request is in flight."""

RECOVERY_CHECK_S = 0.5
"""While another worker holds a lease, how often a worker with free slots looks for dead
leases (one statement): a dead worker's workflows are taken up within about this long."""

TCP_KEEPALIVE_IDLE_S = 5.0
"""Idle seconds before the first TCP keepalive probe on every database connection."""

TCP_KEEPALIVE_INTERVAL_S = 2.0
"""Seconds between keepalive probes."""

TCP_KEEPALIVE_COUNT = 3
"""Unanswered probes before the connection is declared dead: a machine that vanished loses
its database sessions (and the leases they vouch for) within idle + interval * count = 11 s."""

TCP_USER_TIMEOUT_S = 11.0
"""Longest unacknowledged data may wait on a database connection before it is declared dead."""

POOL_WAIT_S = 5.0
"""Longest a caller waits for a pooled connection before the database counts as unavailable
(psycopg_pool's default, 30 s, kept a worker silent that long through a server restart)."""

POOL_RECONNECT_S = 5.0
"""How long the pool retries one failed connection (after 1 s, then twice as long each time)
before it gives up and the next caller starts afresh at once. psycopg_pool's default, 300 s,
let the waits grow past a minute: after a restart the server was back long before the pool
tried again."""

SLOT_ERROR_RETRY_S = 1.0
"""After an unexpected error in a worker slot, how soon its workflow is tried again."""

MAX_RECOVERY_ATTEMPTS = 5
"""Expired leases on one state before the workflow is quarantined as failed."""

SWEEP_INTERVAL_S = 30.0
"""Longest an idle worker goes without looking for dead leases (CPOA_SWEEP_INTERVAL_SECONDS);
it also looks whenever its schedule says a lease runs out, and every RECOVERY_CHECK_S while
another worker holds a lease."""

IDLE_WAIT_MAX_S = 30.0
"""Longest a worker sleeps on LISTEN before it looks at the schedule again."""

WAKE_LATE_S = 0.001
"""A worker sleeping until the next due workflow or lease expiry wakes this much after it (its
schedule is read from the database's clock, so the wake is already later by the round trip).
It was 10 ms: a poll due when an agent's task ends was made 10 ms late, which a capped agent's
next task waited for too."""

STEPS_PER_CLAIM = 20
"""Most steps a worker slot runs on one claimed workflow in a row: after a transition that
leaves the workflow due, the slot keeps the lease and goes on (no release and re-claim)."""

OUTBOX_RETRY_MAX_S = 60.0
"""Longest pause between two delivery attempts of one UI event."""

OUTBOX_IDLE_S = 5.0
"""Longest an idle outbox thread sleeps before it looks for retries that came due."""

OUTBOX_LOCK_S = 10.0
"""How long a worker holds a UI event it is delivering (one request of UI_TIMEOUT_S): a worker
killed mid-delivery delays that workflow's later events by at most this."""

UI_TIMEOUT_S = 5.0
"""Timeout of one UI-event delivery; the outbox retries on its own schedule, not inline."""

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
"""Bounds of a workflow's ``priority`` (higher first within a tenant in a capped agent's queue)."""

SLOT_RECHECK_S = 3600.0
"""A workflow waiting for an agent slot is handed one by the write that frees it; it also
tries again on its own after this long (a safety net: one claim an hour per waiter)."""

NOTIFY_RETRY_S = 1.0
"""Pause between tries of the ASF new-episode notification after a transient failure."""

ASF_NOTIFY_TIMEOUT_S = 60.0
"""How long transient failures of the ASF new-episode notification are retried
(CPOA_ASF_NOTIFY_TIMEOUT_SECONDS); then the podcast completes with a warning."""

WORKER_CONCURRENCY = 4
"""Workflows one worker process drives at once (CPOA_WORKER_CONCURRENCY)."""

PRUNE_BATCH_SIZE = 500
"""Workflows `cpoa prune` deletes per transaction (CPOA_PRUNE_BATCH_SIZE)."""

PRUNE_LOCK_TIMEOUT_S = 2.0
"""Longest a prune batch waits for a row lock it cannot skip; then the batch is tried again."""

PRUNE_BUSY_RETRIES = 3
"""Batches in a row that may fail on a lock before `cpoa prune` gives up (exit 1)."""

TOPIC_MAX_CHARS = 1000
"""Longest topic or query accepted by start_workflow."""

REVIEW_TIMEOUT_S = 7 * 24 * 3600.0
"""How long a script awaits its reviewer before the workflow fails
(CPOA_REVIEW_TIMEOUT_SECONDS)."""

REVIEW_TIMEOUT_MAX_S = 365 * 24 * 3600.0
"""Longest CPOA_REVIEW_TIMEOUT_SECONDS accepted: a deadline far enough out to overflow a
PostgreSQL timestamp would fail every scripting -> awaiting_review transition."""

BULK_BATCH_SIZE = 100
"""Workflows a bulk retry, cancel or fork reads per batch (`cpoa bulk --batch-size`,
CPOA_BULK_BATCH_SIZE)."""

BULK_BATCH_MAX = 1000
"""Largest batch of a bulk action (CPOA_BULK_BATCH_SIZE, the API's batch_size)."""

REVIEW_NOTES_MAX_CHARS = 5000
"""Longest reviewer's notes accepted with a rejection (passed to PSWA as revision_notes)."""

REVIEW_MAX_REVISIONS = 20
"""Most script revisions of one workflow: a rejection of the last one is refused (each
revision is kept in the context's script_history)."""

REVIEW_SCRIPT_MAX_CHARS = 200_000
"""Longest reviewer's edited script accepted (its JSON, in characters)."""

URLS_MAX = 20
"""Most source URLs accepted by start_workflow."""

CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"
"""Broker of the Celery integration (CPOA_CELERY_BROKER_URL; CPOA_CELERY_RESULT_BACKEND
defaults to it too)."""

CELERY_MAX_COUNTDOWN_S = 60.0
"""Longest a Celery orchestration task waits before it looks at its workflow again
(CPOA_CELERY_MAX_COUNTDOWN_SECONDS): bounds the delay a lost or late wake-up can cause."""

CELERY_MIN_COUNTDOWN_S = 0.05
"""Shortest re-scheduling countdown, so a clock running behind the database cannot make a
task re-enqueue itself in a tight loop."""

CELERY_HELD_RECHECK_S = 1.0
"""How soon a Celery task looks again at a workflow whose lease another process holds."""

CELERY_STORE_RETRY_S = 2.0
"""Pause before a Celery task tries again after the database failed."""

CELERY_ADVANCES_PER_RUN = 20
"""Most advances one Celery task run makes before it re-enqueues itself
(CPOA_CELERY_ADVANCES_PER_RUN): keeps one busy workflow from holding a worker."""

CELERY_VISIBILITY_TIMEOUT_S = 300.0
"""Redis broker: a message whose worker died unacknowledged is redelivered after this long;
it must exceed the longest countdown, or held countdown messages are delivered twice."""

CELERY_RESTORE_INTERVAL_S = 10
"""Redis broker: how often a Celery worker looks for such messages to redeliver."""

METRICS_PORT = 0
"""Port of a worker's Prometheus endpoint (CPOA_METRICS_PORT); 0 serves none."""

METRICS_HOST = "0.0.0.0"
"""Address a worker's Prometheus endpoint listens on (CPOA_METRICS_HOST): every interface."""

API_HOST = "127.0.0.1"
"""Address `cpoa serve` listens on (CPOA_API_HOST); loopback unless asked otherwise."""

API_PORT = 8080
"""Port `cpoa serve` listens on (CPOA_API_PORT)."""

API_MAX_BODY_BYTES = 1024 * 1024
"""Largest request body the gateway reads; a larger one is refused with 413."""

API_PAGE_MAX = 200
"""Most workflows one page of `GET /v1/workflows` returns."""

CALLBACK_MAX_BODY_BYTES = 4096
"""Largest callback body the gateway reads (``{task_id, status}`` is far smaller); 413 above."""

CALLBACK_BURST = 5
"""Callbacks one task may make at once before the gateway answers 429 (per gateway process)."""

CALLBACK_RATE_PER_S = 1.0
"""Callbacks per second one task earns back after its burst (per gateway process)."""

CALLBACK_TRACKED_TASKS = 10_000
"""Tasks whose callback rate a gateway remembers; the least recently seen are forgotten."""

CALLBACK_SECRET_MIN_CHARS = 16
"""Shortest CPOA_CALLBACK_SECRET accepted."""

HEALTHZ_TIMEOUT_S = 3.0
"""Longest `GET /healthz` waits for a database connection before answering 503."""

API_SHUTDOWN_GRACE_S = 10.0
"""On SIGTERM, how long `cpoa serve` lets requests in flight (and live streams) finish."""

DRIVE_RECHECK_MAX_S = 1.0
"""Longest `cpoa start --wait` and `cpoa demo` sleep before advancing their workflow again
(they wake earlier when it is due)."""

DRIVE_HELD_RECHECK_S = 0.05
"""How soon they look again at a workflow whose lease another process holds."""

PROGRESS_EVENT_INTERVAL_S = 1.0
"""Least time between two generation_progress UI events of one task
(CPOA_PROGRESS_EVENT_INTERVAL_SECONDS): an agent's progress that changes faster is forwarded
at this pace (its latest value, never lost: held back and sent at a later poll)."""

PROGRESS_PARTIAL_MAX_ITEMS = 200
"""Most items of an agent's ``partial`` list kept; a longer list is ignored (with a warning)."""

PROGRESS_PARTIAL_MAX_CHARS = 32_000
"""Largest ``partial`` list kept, as JSON characters; a larger one is ignored (a warning)."""
