-- Runtime statements of CPOA, one per `-- name --` block, with %(named)s parameters.
-- cpoa/sql/__init__.py parses this file once; store.py refers to queries["<name>"].

-- insert_idempotency_key --
-- Insert-or-nothing: the caller that inserts the key owns the workflow; others read it after.
INSERT INTO idempotency_keys (idempotency_key, task_name, status, workflow_id, locked_at)
VALUES (%(idempotency_key)s, %(task_name)s, 'processing', %(workflow_id)s, now())
ON CONFLICT (idempotency_key, task_name) DO NOTHING
RETURNING workflow_id;

-- select_idempotency_key --
-- The key row with its workflow's state, locked so that a take-over cannot race another.
SELECT k.*, w.state, w.last_updated_timestamp
FROM idempotency_keys k LEFT JOIN workflow_instances w USING (workflow_id)
WHERE k.idempotency_key = %(idempotency_key)s AND k.task_name = %(task_name)s
FOR UPDATE OF k;

-- touch_idempotency_key --
UPDATE idempotency_keys SET status = %(status)s, locked_at = now(),
    result_payload = %(result_payload)s, error_payload = %(error_payload)s
WHERE workflow_id = %(workflow_id)s AND task_name = %(task_name)s;

-- take_over_stale_workflow --
-- IDEMPOTENCY_LOCK_TIMEOUT_SECONDS: an orchestration that made no progress for that long is
-- taken over: its lease (if any) is dropped and it is due now. Counts as one recovery.
UPDATE workflow_instances
SET lease_owner = NULL, lease_expires_at = NULL, next_run_at = now(), version = version + 1,
    recovery_attempts = recovery_attempts + 1
WHERE workflow_id = %(workflow_id)s AND next_run_at IS NOT NULL
  AND last_updated_timestamp < now() - make_interval(secs => %(timeout_s)s)
RETURNING workflow_id;

-- insert_workflow --
INSERT INTO workflow_instances (workflow_id, kind, state, trigger_event_details_json,
    client_id, user_id, idempotency_key, next_run_at)
VALUES (%(workflow_id)s, %(kind)s, %(state)s, %(params)s, %(client_id)s, %(user_id)s,
    %(idempotency_key)s, now())
RETURNING *;

-- lock_workflow --
-- Every change to a workflow begins here: the row lock serialises it with every other one.
SELECT *, clock_timestamp() AS db_now FROM workflow_instances
WHERE workflow_id = %(workflow_id)s
FOR UPDATE;

-- take_lease --
-- An expired lease being taken over counts as one recovery of the workflow.
UPDATE workflow_instances
SET lease_owner = %(owner)s,
    lease_expires_at = now() + make_interval(secs => %(ttl_s)s),
    version = version + 1,
    recovery_attempts = recovery_attempts + (lease_owner IS NOT NULL)::int
WHERE workflow_id = %(workflow_id)s
RETURNING *, clock_timestamp() AS db_now;

-- claim_due --
-- Take the leases of up to %(limit)s due workflows that nobody holds; SKIP LOCKED lets many
-- workers claim at once without waiting on each other. A workflow being recovered (its last
-- lease expired) is claimed alone: if it kills its worker again, nothing else claimed with it
-- dies too and gets charged a recovery (a poison workflow must not take healthy ones along).
WITH due AS (
    SELECT workflow_id, recovery_attempts FROM workflow_instances
    WHERE lease_owner IS NULL AND next_run_at <= now()
    ORDER BY next_run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT workflow_id FROM due WHERE NOT EXISTS (SELECT 1 FROM due WHERE recovery_attempts > 0)
    UNION ALL
    (SELECT workflow_id FROM due WHERE recovery_attempts > 0 LIMIT 1)
)
UPDATE workflow_instances w
SET lease_owner = %(owner)s,
    lease_expires_at = now() + make_interval(secs => %(ttl_s)s),
    version = w.version + 1
FROM picked
WHERE w.workflow_id = picked.workflow_id
RETURNING w.*, clock_timestamp() AS db_now;

-- select_step_tasks --
SELECT * FROM task_instances
WHERE workflow_id = ANY(%(workflow_ids)s)
ORDER BY created_at, item_key;

-- upsert_task --
INSERT INTO task_instances (task_id, workflow_id, agent_name, step, item_key, attempt, status,
    idempotency_key, external_task_id, status_url, input_params_json,
    output_result_summary_json, error_details_json, retry_count, first_submitted_at,
    completed_at, next_poll_at, poll_deadline_at)
VALUES (%(task_id)s, %(workflow_id)s, %(agent_name)s, %(step)s, %(item_key)s, %(attempt)s,
    %(status)s, %(idempotency_key)s, %(external_task_id)s, %(status_url)s,
    %(input_params_json)s, %(output_result_summary_json)s, %(error_details_json)s,
    %(retry_count)s, %(first_submitted_at)s, %(completed_at)s, %(next_poll_at)s,
    %(poll_deadline_at)s)
ON CONFLICT (workflow_id, step, item_key, attempt) DO UPDATE SET
    status = EXCLUDED.status,
    external_task_id = EXCLUDED.external_task_id,
    status_url = EXCLUDED.status_url,
    input_params_json = EXCLUDED.input_params_json,
    output_result_summary_json = EXCLUDED.output_result_summary_json,
    error_details_json = EXCLUDED.error_details_json,
    retry_count = EXCLUDED.retry_count,
    first_submitted_at = EXCLUDED.first_submitted_at,
    completed_at = EXCLUDED.completed_at,
    next_poll_at = EXCLUDED.next_poll_at,
    poll_deadline_at = EXCLUDED.poll_deadline_at,
    updated_at = now();

-- reschedule_workflow --
-- Stay in the state, release the lease, be due again in %(run_in_s)s seconds.
UPDATE workflow_instances
SET lease_owner = NULL, lease_expires_at = NULL,
    next_run_at = now() + make_interval(secs => %(run_in_s)s),
    last_updated_timestamp = now()
WHERE workflow_id = %(workflow_id)s AND version = %(version)s;

-- transition_workflow --
-- Compare-and-set: applies only if the row is still in %(source)s at the fenced version.
UPDATE workflow_instances
SET state = %(dest)s,
    failed_from_state = %(failed_from_state)s,
    context_data_json = context_data_json || %(context_updates)s,
    warnings = warnings || %(warnings)s,
    error_message = %(error_message)s,
    lease_owner = NULL, lease_expires_at = NULL,
    next_run_at = CASE WHEN %(schedulable)s THEN now() END,
    end_timestamp = CASE WHEN %(schedulable)s THEN NULL ELSE now() END,
    last_updated_timestamp = now(),
    version = version + 1,
    recovery_attempts = CASE WHEN %(keep_recoveries)s THEN recovery_attempts ELSE 0 END,
    retry_count = retry_count + %(retry_increment)s
WHERE workflow_id = %(workflow_id)s AND state = %(source)s AND version = %(version)s
RETURNING *;

-- insert_history --
INSERT INTO workflow_events (workflow_id, from_state, to_state, trigger, detail)
VALUES (%(workflow_id)s, %(from_state)s, %(to_state)s, %(trigger)s, %(detail)s);

-- insert_ui_event --
INSERT INTO ui_event_outbox (workflow_id, client_id, event_name, data)
VALUES (%(workflow_id)s, %(client_id)s, %(event_name)s, %(data)s);

-- wake_workers --
SELECT pg_notify('cpoa_due', %(payload)s);

-- select_workflow --
SELECT * FROM workflow_instances WHERE workflow_id = %(workflow_id)s;

-- select_tasks --
SELECT * FROM task_instances WHERE workflow_id = %(workflow_id)s
ORDER BY created_at, step, item_key, attempt;

-- select_history --
SELECT * FROM workflow_events WHERE workflow_id = %(workflow_id)s ORDER BY event_id;

-- list_workflows --
SELECT * FROM workflow_instances
WHERE (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(kind)s::text IS NULL OR kind = %(kind)s)
ORDER BY start_timestamp DESC, workflow_id
LIMIT %(limit)s;

-- requeue_expired_leases --
-- The sweeper: a lease that expired was held by a worker that died or hung. Release it, make
-- the workflow due now and count the recovery; the next advance quarantines past the maximum.
WITH expired AS (
    SELECT workflow_id FROM workflow_instances
    WHERE lease_owner IS NOT NULL AND lease_expires_at < now()
    FOR UPDATE SKIP LOCKED
)
UPDATE workflow_instances w
SET lease_owner = NULL, lease_expires_at = NULL, next_run_at = now(),
    recovery_attempts = w.recovery_attempts + 1, version = w.version + 1
FROM expired
WHERE w.workflow_id = expired.workflow_id
RETURNING w.workflow_id, w.state, w.recovery_attempts;

-- seconds_until_due --
-- How long a worker may sleep: until the earliest due workflow or the earliest lease expiry.
-- NULL when nothing waits (GREATEST ignores a NULL argument, so it must not see one).
SELECT CASE WHEN next_at IS NOT NULL
            THEN GREATEST(0, EXTRACT(EPOCH FROM next_at - now()))::float8 END AS seconds
FROM (SELECT LEAST(
    (SELECT min(next_run_at) FROM workflow_instances
     WHERE lease_owner IS NULL AND next_run_at IS NOT NULL),
    (SELECT min(lease_expires_at) FROM workflow_instances WHERE lease_owner IS NOT NULL)
) AS next_at) AS earliest;

-- count_unfinished --
SELECT
    (SELECT count(*) FROM workflow_instances WHERE next_run_at IS NOT NULL) AS workflows,
    (SELECT count(*) FROM ui_event_outbox
     WHERE delivered_at IS NULL AND next_attempt_at <= now()) AS events;

-- claim_ui_events --
-- The head (lowest seq) undelivered event of each workflow, if nobody is delivering it:
-- later events of a workflow wait until the earlier one is delivered, which keeps the order.
WITH heads AS (
    SELECT DISTINCT ON (workflow_id) seq FROM ui_event_outbox
    WHERE delivered_at IS NULL
    ORDER BY workflow_id, seq
), due AS (
    SELECT o.seq FROM ui_event_outbox o JOIN heads USING (seq)
    WHERE o.next_attempt_at <= now() AND (o.locked_until IS NULL OR o.locked_until < now())
      AND o.delivered_at IS NULL  -- re-checked after the lock: delivered meanwhile
    ORDER BY o.seq
    LIMIT %(limit)s
    FOR UPDATE OF o SKIP LOCKED
)
UPDATE ui_event_outbox o
SET locked_until = now() + make_interval(secs => %(lock_s)s), attempts = o.attempts + 1
FROM due WHERE o.seq = due.seq
RETURNING o.*;

-- mark_ui_event_delivered --
UPDATE ui_event_outbox SET delivered_at = now(), locked_until = NULL, last_error = NULL
WHERE seq = %(seq)s;

-- mark_ui_event_failed --
UPDATE ui_event_outbox
SET locked_until = NULL, last_error = %(error)s,
    next_attempt_at = now() + make_interval(secs => %(retry_in_s)s)
WHERE seq = %(seq)s;

-- select_ui_events --
SELECT * FROM ui_event_outbox WHERE workflow_id = %(workflow_id)s ORDER BY seq;
