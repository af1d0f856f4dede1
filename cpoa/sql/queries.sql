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
-- IDEMPOTENCY_LOCK_TIMEOUT_SECONDS: an orchestration that made no progress for that long and
-- that nobody runs is taken over: a dead lease (expired, or its holder's session gone) is
-- released and counted as one recovery, and the workflow is due now. A live lease is never
-- touched, and a workflow waiting for its next poll (next_run_at ahead) is not stale.
UPDATE workflow_instances
SET lease_owner = NULL, lease_expires_at = NULL, lease_liveness_key = NULL,
    next_run_at = now(), version = version + 1,
    recovery_attempts = recovery_attempts + (lease_owner IS NOT NULL)::int
WHERE workflow_id = %(workflow_id)s AND next_run_at <= now()
  AND last_updated_timestamp < now() - make_interval(secs => %(timeout_s)s)
  AND NOT cpoa_lease_live(lease_owner, lease_expires_at, lease_liveness_key)
RETURNING workflow_id;

-- insert_workflow --
INSERT INTO workflow_instances (workflow_id, kind, state, trigger_event_details_json,
    client_id, user_id, priority, idempotency_key, next_run_at)
VALUES (%(workflow_id)s, %(kind)s, %(state)s, %(params)s, %(client_id)s, %(user_id)s,
    %(priority)s, %(idempotency_key)s, now())
RETURNING *, context_data_json AS context;

-- insert_fork --
-- A workflow forked from %(forked_from)s: it starts in %(state)s with the context copied up to
-- there, due now. %(idempotency_key)s: the caller's key of the fork, or NULL.
INSERT INTO workflow_instances (workflow_id, kind, state, trigger_event_details_json,
    context_data_json, client_id, user_id, next_run_at, forked_from, idempotency_key)
VALUES (%(workflow_id)s, %(kind)s, %(state)s, %(params)s, %(context)s, %(client_id)s,
    %(user_id)s, now(), %(forked_from)s, %(idempotency_key)s)
RETURNING *, context_data_json AS context;

-- lock_fork_source --
-- The workflow a fork copies, share-locked until the transaction that also reads its history
-- ends: a change to it (retry, cancel, review) waits, so the two reads agree.
SELECT *, clock_timestamp() AS db_now,
    cpoa_context_v1(workflow_id, context_data_json) AS context
FROM workflow_instances
WHERE workflow_id = %(workflow_id)s
FOR SHARE;

-- lock_workflow --
-- Every change to a workflow begins here: the row lock serialises it with every other one.
-- lease_live: somebody holds the lease now (unexpired, its holder's session alive).
SELECT *, clock_timestamp() AS db_now,
    cpoa_lease_live(lease_owner, lease_expires_at, lease_liveness_key) AS lease_live,
    cpoa_context_v1(workflow_id, context_data_json) AS context
FROM workflow_instances
WHERE workflow_id = %(workflow_id)s
FOR UPDATE;

-- take_lease --
-- A dead lease being taken over counts as one recovery of the workflow. Returns the row
-- with the current step's task rows (step_tasks, JSON) and the database's clock.
WITH taken AS (
    UPDATE workflow_instances
    SET lease_owner = %(owner)s,
        lease_expires_at = now() + make_interval(secs => %(ttl_s)s),
        lease_liveness_key = %(liveness_key)s,
        version = version + 1,
        recovery_attempts = recovery_attempts + (lease_owner IS NOT NULL)::int
    WHERE workflow_id = %(workflow_id)s
    RETURNING *
)
SELECT taken.*, clock_timestamp() AS db_now,
    -- Locked by the statement before: no callback comes between the row and its tasks' read.
    taken.callback_at AS callback_seen,
    cpoa_context_v1(taken.workflow_id, taken.context_data_json) AS context,
    cpoa_step_tasks(taken.workflow_id, taken.state, taken.retry_count) AS step_tasks,
    cpoa_agent_pauses() AS agent_pauses
FROM taken;

-- claim_due --
-- Take the leases of up to %(limit)s due workflows that nobody holds, with their current step's
-- task rows, in one statement (one round trip, autocommit); SKIP LOCKED lets many workers
-- claim at once without waiting on each other. A workflow recovered more than once in this
-- state is claimed alone: if it kills its worker again, nothing else claimed with it dies too
-- and gets charged a recovery (a poison workflow must not take healthy ones along). After one
-- death it is claimed like any other, so a crashed worker's workflows are taken up together.
-- Nothing is claimed under a %(liveness_key)s no live session holds (the claimer's listener was
-- cut a moment ago and has not noticed yet): such a lease would be dead when taken, and the
-- sweep would requeue it and charge a recovery, claim after claim, until quarantine.
WITH vouched AS (
    SELECT %(liveness_key)s::bigint IS NULL
        OR NOT pg_try_advisory_xact_lock(%(liveness_key)s::bigint) AS ok
), due AS (
    SELECT workflow_id, recovery_attempts FROM workflow_instances
    WHERE lease_owner IS NULL AND next_run_at <= now() AND (SELECT ok FROM vouched)
    ORDER BY next_run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT workflow_id FROM due WHERE NOT EXISTS (SELECT 1 FROM due WHERE recovery_attempts > 1)
    UNION ALL
    (SELECT workflow_id FROM due WHERE recovery_attempts > 1 LIMIT 1)
), claimed AS (
    UPDATE workflow_instances w
    SET lease_owner = %(owner)s,
        lease_expires_at = now() + make_interval(secs => %(ttl_s)s),
        lease_liveness_key = %(liveness_key)s,
        version = w.version + 1
    FROM picked
    WHERE w.workflow_id = picked.workflow_id
    RETURNING w.*
)
SELECT claimed.*, clock_timestamp() AS db_now,
    -- The callback time as of the step tasks' read, not as locked (record_progress says why).
    (SELECT s.callback_at FROM workflow_instances s WHERE s.workflow_id = claimed.workflow_id)
        AS callback_seen,
    cpoa_context_v1(claimed.workflow_id, claimed.context_data_json) AS context,
    cpoa_step_tasks(claimed.workflow_id, claimed.state, claimed.retry_count) AS step_tasks,
    cpoa_agent_pauses() AS agent_pauses,
    -- The agent slots it holds (a waiter is handed its slot before it is claimed).
    (SELECT jsonb_agg(jsonb_build_array(s.agent, s.item_key)) FROM agent_slots s
     WHERE s.workflow_id = claimed.workflow_id) AS held_slots
FROM claimed;

-- locked_step --
-- A fragment, written where @locked_step@ stands (record_progress, make_transition): the
-- workflow's row, locked first, and the lease the write leaves on it. With %(renew_ttl_s)s and
-- the lease still live, the holder keeps it; otherwise (not asked, or dead: its session was cut
-- while the step ran) none, or the sweep would hand the next step to a second worker while
-- this one runs it. Pasted, not a function: a function with FOR UPDATE is planned on every
-- call (PostgreSQL CPU per transition 1.3 -> 2.0 ms in a bench/run.py --quick run).
SELECT workflow_id, CASE WHEN renew THEN lease_owner END AS lease_owner,
       CASE WHEN renew THEN now() + make_interval(secs => %(renew_ttl_s)s::float8) END
           AS lease_expires_at,
       CASE WHEN renew THEN lease_liveness_key END AS lease_liveness_key, renew AS renewed,
       callback_at, called_back_task_ids
FROM (SELECT workflow_id, lease_owner, lease_liveness_key, callback_at, called_back_task_ids,
             %(renew_ttl_s)s::float8 IS NOT NULL
             AND cpoa_lease_live(lease_owner, lease_expires_at, lease_liveness_key) AS renew
      FROM workflow_instances WHERE workflow_id = %(workflow_id)s FOR UPDATE) l

-- agent_report --
-- A fragment, written where @agent_report@ stands (record_progress, make_transition): what the
-- step's request told of its agent (%(report_agent)s; NULL: nothing to tell), for every
-- workflow and worker: a 429 or 503 with Retry-After pauses its new submits (polls go on),
-- failures in a row open its breaker, an answer from a failing agent closes it.
SELECT cpoa_agent_report_v1(%(report_agent)s, %(report_ok)s, %(report_pause_s)s,
                            %(report_reason)s, %(breaker_failures)s, %(breaker_first_s)s,
                            %(breaker_most_s)s)
FROM moved WHERE %(report_agent)s::text IS NOT NULL

-- kept_lease --
-- A fragment, written where @kept_lease@ stands (record_progress, make_transition): read only
-- for a lease kept for the next step (lease_from_row), the step's task rows and the callback
-- time they reflect (callback_seen: as the statement began, before any callback it waited for;
-- record_progress says why).
CASE WHEN moved.lease_owner IS NOT NULL
     THEN cpoa_step_tasks(moved.workflow_id, moved.state, moved.retry_count) END AS step_tasks,
CASE WHEN moved.lease_owner IS NOT NULL
     THEN (SELECT s.callback_at FROM workflow_instances s
           WHERE s.workflow_id = moved.workflow_id) END AS callback_seen

-- record_progress --
-- A step that stays in its state: its task row (when it made a request) and when the workflow
-- is due again (in %(run_in_s)s s), in one statement that locks the row first (SELECT … FOR
-- UPDATE) and writes only while the lease is still the caller's: same state, same fencing
-- version, same owner. A lost race writes nothing (no row comes back). With %(renew_ttl_s)s
-- (not NULL) the caller keeps the lease for its next step, now, with a new fence; the step's
-- task rows come back as step_tasks (read before this statement's own writes). The agent's live
-- progress rides in the task row; with %(event_name)s (a generation_progress event, throttled
-- by cpoa/reports.py) it is also queued for the UI and announced to live dashboards.
WITH locked AS (
    @locked_step@
), called AS (
    -- The step's own open task, if its agent called back since the last step write (its poll,
    -- or its submit's answer, was under way), at a time (callback_at) after the lease was
    -- taken (%(leased_at)s): a poll made before the time a callback asked for does not answer
    -- it (a callback over its task's rate asks for a poll up to a second later).
    SELECT locked.callback_at >= %(leased_at)s::timestamptz
           AND (%(task)s::jsonb ->> 'task_id')::uuid = ANY(locked.called_back_task_ids)
           AND %(task)s::jsonb ->> 'status' NOT IN ('succeeded', 'failed') AS own_task
    FROM locked
), moved AS (
    UPDATE workflow_instances w
    -- Due when the callback asked (if sooner) after a callback the step did not see
    -- (callback_at is not what it was when the step's task rows were read: %(callback_seen)s),
    -- or one for its own task. Not a comparison of times for the first: a statement that
    -- waited for a callback's row lock locks the row as the callback left it, but reads every
    -- other row (the task the callback made due) as it was when the statement began, so a
    -- lease can be taken after a callback it did not see.
    SET next_run_at = CASE WHEN w.callback_at IS DISTINCT FROM %(callback_seen)s::timestamptz
                                OR called.own_task
                           THEN LEAST(GREATEST(now(), w.callback_at),
                                      now() + make_interval(secs => %(run_in_s)s))
                           ELSE now() + make_interval(secs => %(run_in_s)s) END,
        (lease_owner, lease_expires_at, lease_liveness_key)
            = (locked.lease_owner, locked.lease_expires_at, locked.lease_liveness_key),
        version = w.version + locked.renewed::int, called_back_task_ids = NULL,
        last_updated_timestamp = now()
    FROM locked, called
    WHERE w.workflow_id = %(workflow_id)s AND w.workflow_id = locked.workflow_id
      AND w.state = %(source)s
      AND w.version = %(version)s AND w.lease_owner = %(owner)s
    RETURNING w.*, called.own_task AS task_called_back
), task AS (
    -- ...and its own task, if called back, is polled then.
    SELECT cpoa_save_task_v1(CASE WHEN moved.task_called_back
        THEN jsonb_set(%(task)s::jsonb, '{next_poll_at}', to_jsonb(LEAST(
            GREATEST(now(), moved.callback_at),
            (%(task)s::jsonb ->> 'next_poll_at')::timestamptz)))
        ELSE %(task)s::jsonb END)
    FROM moved WHERE %(task)s::jsonb IS NOT NULL
), reported AS (
    @agent_report@
), freed AS (
    -- A finished item gives its agent slot (if it held one) to the next waiter.
    SELECT cpoa_release_slots_v1(moved.workflow_id, %(task)s::jsonb ->> 'item_key') FROM moved
    WHERE %(task)s::jsonb ->> 'status' IN ('succeeded', 'failed')
      AND EXISTS (SELECT 1 FROM agent_slots s WHERE s.workflow_id = moved.workflow_id)
), ui AS (
    -- The progress event, after the workflow's earlier events (outbox order), for its client.
    INSERT INTO ui_event_outbox (workflow_id, client_id, event_name, data)
    SELECT workflow_id, client_id, %(event_name)s::text, %(event_data)s::jsonb FROM moved
    WHERE %(event_name)s::text IS NOT NULL AND client_id IS NOT NULL
), shown AS (
    -- Live dashboards (cpoa/gateway/hub.py) hear '<workflow_id>:progress' at commit, with or
    -- without a client. A plain SELECT: it runs because the result below counts it.
    SELECT pg_notify('cpoa_events', moved.workflow_id::text || ':progress') FROM moved
    WHERE %(event_name)s::text IS NOT NULL
)
SELECT moved.*, clock_timestamp() AS db_now, (SELECT count(*) FROM task) AS tasks_saved,
    (SELECT count(*) FROM freed) AS slots_freed, (SELECT count(*) FROM reported) AS reports,
    (SELECT count(*) FROM shown) AS progress_shown,
    @kept_lease@,
    cpoa_agent_pauses() AS agent_pauses
FROM moved;

-- make_transition --
-- A transition %(trigger)s from %(source)s to %(dest)s: the new state and the warnings the
-- step added, its task row, the history row (with the context the step added), the UI event
-- and the settled idempotency key, in one statement that locks the row first and writes only
-- if the row is still in %(source)s at the fenced %(version)s (and, for a worker's step, still
-- leased by %(owner)s; cancel and retry pass no owner). Every other write is selected from the
-- UPDATE's RETURNING: a lost race writes nothing at all. A terminal state is never due again; a working
-- state is due after %(run_in_s)s (0 but for a waiting state). With %(renew_ttl_s)s the worker
-- keeps the lease for the next step.
WITH locked AS (
    @locked_step@
), moved AS (
    UPDATE workflow_instances w
    SET state = %(dest)s,
        failed_from_state = %(failed_from_state)s,
        warnings = w.warnings || %(warnings)s,
        error_message = %(error_message)s,
        -- A waiting state (awaiting_review) is due only at its deadline, %(run_in_s)s away.
        next_run_at = CASE WHEN %(terminal)s THEN NULL
                           ELSE now() + make_interval(secs => %(run_in_s)s) END,
        end_timestamp = CASE WHEN %(terminal)s THEN now() END,
        (lease_owner, lease_expires_at, lease_liveness_key)
            = (locked.lease_owner, locked.lease_expires_at, locked.lease_liveness_key),
        version = w.version + 1,
        -- A failure keeps the count (a quarantine reports it); any other move starts afresh.
        recovery_attempts = CASE WHEN %(trigger)s = 'fail' THEN w.recovery_attempts ELSE 0 END,
        retry_count = w.retry_count + (%(trigger)s = 'retry')::int,
        waiting_agent = NULL, waiting_item = NULL, waiting_since = NULL,
        called_back_task_ids = NULL, last_updated_timestamp = now()
    FROM locked
    WHERE w.workflow_id = %(workflow_id)s AND w.workflow_id = locked.workflow_id
      AND w.state = %(source)s
      AND w.version = %(version)s
      AND (%(owner)s::text IS NULL OR w.lease_owner = %(owner)s::text)
    RETURNING w.*
), task AS (
    SELECT cpoa_save_task_v1(%(task)s::jsonb) FROM moved
    WHERE %(task)s::jsonb IS NOT NULL AND NOT %(task_in_history)s
), history AS (
    -- The context the step added is stored here, not in the workflow's row (cpoa_context_v1);
    -- so is a task begun and finished by this write (%(task_in_history)s, schema.sql).
    INSERT INTO workflow_events (workflow_id, from_state, to_state, trigger, detail,
                                 context_updates, task)
    SELECT workflow_id, %(source)s, %(dest)s, %(trigger)s, %(detail)s, %(context_updates)s,
        CASE WHEN %(task_in_history)s THEN jsonb_strip_nulls(%(task)s::jsonb)
            - '{workflow_id,step,created_at,updated_at,poll_deadline_at}'::text[] END
    FROM moved
    RETURNING context_updates
), ui AS (
    INSERT INTO ui_event_outbox (workflow_id, client_id, event_name, data)
    SELECT workflow_id, client_id, %(event_name)s::text, %(event_data)s::jsonb FROM moved
    WHERE %(event_name)s::text IS NOT NULL AND client_id IS NOT NULL
), settled AS (
    -- The orchestration's key follows the workflow: completed, failed (failed or cancelled),
    -- processing again on a retry; unchanged otherwise.
    UPDATE idempotency_keys k
    SET status = s.status, locked_at = now(),
        result_payload = CASE WHEN s.status = 'completed' THEN jsonb_build_object(
            'workflow_id', moved.workflow_id::text, 'warnings', moved.warnings) END,
        error_payload = CASE WHEN s.status = 'failed' THEN jsonb_build_object(
            'state', moved.state, 'error', moved.error_message) END
    FROM moved, (SELECT CASE WHEN %(dest)s = 'completed' THEN 'completed'
                             WHEN %(dest)s IN ('failed', 'cancelled') THEN 'failed'
                             WHEN %(trigger)s = 'retry' THEN 'processing' END AS status) s
    WHERE s.status IS NOT NULL AND k.workflow_id = moved.workflow_id
      AND k.task_name = %(task_name)s
), reported AS (
    @agent_report@
), freed AS (
    -- Leaving the state gives back every agent slot its items held (to the next waiters).
    SELECT cpoa_release_slots_v1(moved.workflow_id, NULL) FROM moved
    WHERE EXISTS (SELECT 1 FROM agent_slots s WHERE s.workflow_id = moved.workflow_id)
)
SELECT moved.*, clock_timestamp() AS db_now, (SELECT count(*) FROM task) AS tasks_saved,
    (SELECT count(*) FROM freed) AS slots_freed, (SELECT count(*) FROM reported) AS reports,
    -- As stored: the caller merges them into the context it had (PostgresStore.record).
    (SELECT context_updates FROM history) AS context_updates,
    @kept_lease@,
    cpoa_agent_pauses() AS agent_pauses
FROM moved;

-- take_agent_slot --
-- Before a submit to an agent with CPOA_<AGENT>_MAX_IN_FLIGHT: the slot of this item
-- (granted: true), or a place in the agent's queue with the lease released (false; it is
-- handed a slot and made due by the write that frees one, or tries again after
-- %(recheck_s)s s). No row: the lease was lost.
SELECT granted FROM (
    SELECT cpoa_take_slot_v1(%(workflow_id)s, %(owner)s, %(version)s, %(agent)s, %(item_key)s,
                             %(max_in_flight)s, %(recheck_s)s) AS granted) t
WHERE granted IS NOT NULL;

-- take_agent_token --
-- Before a submit to an agent with CPOA_<AGENT>_RATE_LIMIT: 0 when the item may submit now;
-- else the seconds until its place in the agent's rate, which the workflow waits for with
-- its lease released. No row: the lease was lost.
SELECT wait_s FROM (
    SELECT cpoa_take_token_v1(%(workflow_id)s, %(owner)s, %(version)s, %(agent)s, %(item_key)s,
                              %(rate)s, %(burst)s) AS wait_s) t
WHERE wait_s IS NOT NULL;

-- insert_history --
INSERT INTO workflow_events (workflow_id, from_state, to_state, trigger, detail)
VALUES (%(workflow_id)s, %(from_state)s, %(to_state)s, %(trigger)s, %(detail)s);

-- insert_ui_event --
INSERT INTO ui_event_outbox (workflow_id, client_id, event_name, data)
VALUES (%(workflow_id)s, %(client_id)s, %(event_name)s, %(data)s);

-- wake_workers --
SELECT pg_notify('cpoa_due', %(payload)s);

-- poke_task --
-- A callback (agent contract §2): an agent says task %(task_id)s of workflow %(workflow_id)s
-- changed. Nothing it sent is trusted: this only makes the task due for a poll now, while the
-- workflow is unfinished and the task is too (a task with no row yet is one whose submit's
-- answer has not been recorded: the callback came first), and wakes the workers (NOTIFY, at
-- commit). One autocommit call: no SELECT ... FOR UPDATE, no lease; its UPDATEs hold their row
-- locks only until it commits; the task is read after any wait on the workflow's row
-- (cpoa_poke_task_v1 says why). %(delay_s)s > 0 (a task over its callback rate): due that much
-- later, not now. callback_at, when the callback asked to be polled, tells a worker holding the
-- lease that a callback came during its step (record_progress). Returns poked = 0 when nothing
-- was open.
SELECT poked, tasks FROM cpoa_poke_task_v1(%(workflow_id)s, %(task_id)s, %(delay_s)s);

-- insert_secret --
-- A generated secret, unless one of that name exists (insert-or-nothing: the first wins).
INSERT INTO cpoa_secrets (name, value) VALUES (%(secret_name)s, %(value)s)
ON CONFLICT (name) DO NOTHING;

-- select_secret --
SELECT value FROM cpoa_secrets WHERE name = %(secret_name)s;

-- select_workflow --
-- A workflow with the database's clock, which its lease and schedule times are relative to.
SELECT *, clock_timestamp() AS db_now,
    cpoa_context_v1(workflow_id, context_data_json) AS context
FROM workflow_instances
WHERE workflow_id = %(workflow_id)s;

-- select_tasks --
-- A workflow's tasks: its task rows, and the tasks kept in its history rows (schema.sql).
SELECT * FROM task_instances WHERE workflow_id = %(workflow_id)s
UNION ALL
SELECT (jsonb_populate_record(NULL::task_instances, e.task || jsonb_build_object(
    'workflow_id', e.workflow_id, 'step', e.from_state, 'created_at', e.at,
    'updated_at', e.at))).*
FROM workflow_events e WHERE e.workflow_id = %(workflow_id)s AND e.task IS NOT NULL
ORDER BY created_at, step, item_key, attempt;

-- select_history --
SELECT * FROM workflow_events WHERE workflow_id = %(workflow_id)s ORDER BY event_id;

-- list_workflows --
SELECT *, cpoa_context_v1(workflow_id, context_data_json) AS context FROM workflow_instances
WHERE (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(kind)s::text IS NULL OR kind = %(kind)s)
ORDER BY start_timestamp DESC, workflow_id
LIMIT %(limit)s;

-- requeue_dead_leases --
-- The sweeper: a lease that expired, or whose holder's session is gone, was held by a worker
-- that died or hung. Release it, make the workflow due now and count the recovery; the next
-- advance quarantines past the maximum. Rows locked right now (their holder is finishing the
-- step) are skipped. Then, from the same statement: how long the caller may sleep (until the
-- earliest due workflow or lease expiry; 0 when something was requeued; NULL when nothing
-- waits) and whether another process holds a lease its session vouches for (`watch`: that
-- process may die at any moment, and its death shows only here, so the caller looks again
-- soon).
WITH live AS (
    SELECT cpoa_live_session_keys() AS key
), dead AS (
    SELECT workflow_id FROM workflow_instances
    WHERE lease_owner IS NOT NULL
      AND (lease_expires_at < now()
           OR (lease_liveness_key IS NOT NULL
               AND lease_liveness_key NOT IN (SELECT key FROM live)))
    FOR UPDATE SKIP LOCKED
), requeued AS (
    UPDATE workflow_instances w
    SET lease_owner = NULL, lease_expires_at = NULL, lease_liveness_key = NULL,
        next_run_at = now(), recovery_attempts = w.recovery_attempts + 1,
        version = w.version + 1
    FROM dead
    WHERE w.workflow_id = dead.workflow_id
    RETURNING w.workflow_id, w.state, w.recovery_attempts
), earliest AS (
    SELECT LEAST(
        (SELECT min(next_run_at) FROM workflow_instances
         WHERE lease_owner IS NULL AND next_run_at IS NOT NULL),
        (SELECT min(lease_expires_at) FROM workflow_instances WHERE lease_owner IS NOT NULL)
    ) AS next_at
)
SELECT coalesce((SELECT jsonb_agg(jsonb_build_object(
           'workflow_id', workflow_id, 'state', state, 'recovery_attempts', recovery_attempts))
       FROM requeued), '[]'::jsonb) AS requeued,
    CASE WHEN EXISTS (SELECT 1 FROM requeued) THEN 0.0
         WHEN next_at IS NOT NULL
         THEN GREATEST(0, EXTRACT(EPOCH FROM next_at - now()))::float8 END AS seconds,
    EXISTS (SELECT 1 FROM workflow_instances
            WHERE lease_owner IS NOT NULL AND lease_owner <> %(owner)s
              AND lease_liveness_key IN (SELECT key FROM live)) AS watch
FROM earliest;

-- renew_leases --
-- The heartbeat: leases of this owner whose agent request is still in flight run on; nothing
-- else changes (no version bump: the step's result is fenced by the version it started with).
UPDATE workflow_instances
SET lease_expires_at = now() + make_interval(secs => %(ttl_s)s)
WHERE workflow_id = ANY(%(workflow_ids)s) AND lease_owner = %(owner)s;

-- release_lease --
-- A step that could not run (an unexpected error in this process, not the workflow's fault):
-- give the lease back, fenced like a result, and try again after %(run_in_s)s seconds, with
-- no recovery charged.
UPDATE workflow_instances
SET lease_owner = NULL, lease_expires_at = NULL, lease_liveness_key = NULL,
    next_run_at = now() + make_interval(secs => %(run_in_s)s), version = version + 1
WHERE workflow_id = %(workflow_id)s AND version = %(version)s AND lease_owner = %(owner)s
RETURNING workflow_id;

-- count_unfinished --
-- A workflow awaiting a reviewer is not unfinished work for a worker (`--until-idle` exits).
SELECT
    (SELECT count(*) FROM workflow_instances
     WHERE next_run_at IS NOT NULL AND state <> 'awaiting_review') AS workflows,
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

-- drop_ui_event --
-- A live-progress event the receiver refused for good (4xx): it leaves the queue undelivered,
-- with the reason, so the workflow's later events are not held behind it (delivered_at: when
-- it left the queue).
UPDATE ui_event_outbox SET delivered_at = now(), locked_until = NULL, last_error = %(error)s
WHERE seq = %(seq)s;

-- mark_ui_event_failed --
UPDATE ui_event_outbox
SET locked_until = NULL, last_error = %(error)s,
    next_attempt_at = now() + make_interval(secs => %(retry_in_s)s)
WHERE seq = %(seq)s;

-- select_ui_events --
SELECT * FROM ui_event_outbox WHERE workflow_id = %(workflow_id)s ORDER BY seq;

-- ---- prune: `cpoa prune` deletes finished workflows in short batches (cpoa/prune.py) ----

-- prune_cutoff --
-- One cutoff for a whole prune run, on the database's clock like every other time.
SELECT now() - make_interval(secs => %(older_than_s)s) AS cutoff;

-- count_prunable --
-- The dry run: what lock_prunable and its deletes would remove with no batch limit (same
-- WHERE as lock_prunable; rows locked by a worker at the time would be skipped, not counted).
WITH prunable AS (
    SELECT w.workflow_id FROM workflow_instances w
    WHERE w.next_run_at IS NULL AND w.last_updated_timestamp < %(cutoff)s
      AND w.state IN ('completed', 'failed', 'cancelled') AND w.lease_owner IS NULL
      AND NOT EXISTS (SELECT 1 FROM ui_event_outbox o
                      WHERE o.workflow_id = w.workflow_id AND o.delivered_at IS NULL)
      AND NOT EXISTS (SELECT 1 FROM idempotency_keys k
                      WHERE k.workflow_id = w.workflow_id AND k.status = 'processing')
)
SELECT
    (SELECT count(*) FROM prunable) AS workflow_instances,
    (SELECT count(*) FROM task_instances JOIN prunable USING (workflow_id)) AS task_instances,
    (SELECT count(*) FROM workflow_events JOIN prunable USING (workflow_id)) AS workflow_events,
    (SELECT count(*) FROM ui_event_outbox JOIN prunable USING (workflow_id)) AS ui_event_outbox,
    (SELECT count(*) FROM idempotency_keys JOIN prunable USING (workflow_id))
        AS idempotency_keys;

-- lock_prunable --
-- The next batch, oldest first: finished (terminal, unscheduled, unleased) before the cutoff,
-- every UI event delivered, no idempotency key still 'processing'. SKIP LOCKED: a row that a
-- worker, cancel or retry holds is left for the next run instead of waited on; a row changed
-- since this statement's snapshot is re-checked against the WHERE on its new version, and
-- anything that could add an undelivered event or reopen the workflow changes the row first.
SELECT w.workflow_id FROM workflow_instances w
WHERE w.next_run_at IS NULL AND w.last_updated_timestamp < %(cutoff)s
  AND w.state IN ('completed', 'failed', 'cancelled') AND w.lease_owner IS NULL
  AND NOT EXISTS (SELECT 1 FROM ui_event_outbox o
                  WHERE o.workflow_id = w.workflow_id AND o.delivered_at IS NULL)
  AND NOT EXISTS (SELECT 1 FROM idempotency_keys k
                  WHERE k.workflow_id = w.workflow_id AND k.status = 'processing')
ORDER BY w.last_updated_timestamp
LIMIT %(batch_size)s
FOR UPDATE OF w SKIP LOCKED;

-- count_pruned_rows --
-- The rows of a locked batch that ON DELETE CASCADE is about to remove (exact: nothing can be
-- added to a workflow whose row this transaction holds FOR UPDATE).
SELECT
    (SELECT count(*) FROM task_instances WHERE workflow_id = ANY(%(workflow_ids)s))
        AS task_instances,
    (SELECT count(*) FROM workflow_events WHERE workflow_id = ANY(%(workflow_ids)s))
        AS workflow_events,
    (SELECT count(*) FROM ui_event_outbox WHERE workflow_id = ANY(%(workflow_ids)s))
        AS ui_event_outbox;

-- delete_pruned_keys --
-- idempotency_keys has no foreign key (agents share the table): deleted by workflow_id.
DELETE FROM idempotency_keys
WHERE workflow_id = ANY(%(workflow_ids)s) AND status IN ('completed', 'failed');

-- delete_pruned_workflows --
-- Cascades to task_instances, workflow_events (its delete trigger allows a cascade only) and
-- ui_event_outbox.
DELETE FROM workflow_instances WHERE workflow_id = ANY(%(workflow_ids)s);

-- set_lock_timeout --
-- For this transaction only: wait at most %(timeout_ms)s ms for a row lock, then fail.
SELECT set_config('lock_timeout', %(timeout_ms)s, true);

-- dashboard reads --

-- events_after --
-- History rows of every workflow after %(after)s, oldest first, with the workflow's kind and
-- topic (or query). Ids are taken at INSERT, not at COMMIT: across workflows a lower id may
-- commit after a higher one (live streams follow NOTIFY, which comes in commit order).
SELECT * FROM workflow_events_labelled
WHERE event_id > %(after)s
ORDER BY event_id
LIMIT %(limit)s;

-- workflow_events_after --
-- The same for one workflow; its ids do grow in commit order (its row lock serialises them).
SELECT * FROM workflow_events_labelled
WHERE workflow_id = %(workflow_id)s AND event_id > %(after)s
ORDER BY event_id
LIMIT %(limit)s;

-- get_events --
-- The history rows the live stream was notified of, by (workflow id, event id): the primary key.
SELECT * FROM workflow_events_labelled
WHERE (workflow_id, event_id) IN (
    SELECT * FROM unnest(%(workflow_ids)s::uuid[], %(event_ids)s::bigint[]))
ORDER BY event_id;

-- count_by_state --
-- A fragment, written where @count_by_state@ stands (state_counts, metrics_snapshot): {state:
-- workflows} of kind %(kind)s (NULL: every kind) as JSON, from three disjoint parts that each
-- read a partial index: the finished rows (next_run_at NULL) from the one that carries their
-- state, the due and unleased ones from workflow_instances_due and the leased ones from
-- workflow_instances_leased. No index has every row's state: one would take an entry on each
-- transition of a working workflow (schema.sql, version 15).
coalesce((SELECT jsonb_object_agg(state, n) FROM (
    SELECT state, sum(n)::bigint AS n FROM (
        SELECT state, count(*) AS n FROM workflow_instances
        WHERE next_run_at IS NULL AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
        GROUP BY state
        UNION ALL
        SELECT state, count(*) FROM workflow_instances
        WHERE lease_owner IS NULL AND next_run_at IS NOT NULL
          AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
        GROUP BY state
        UNION ALL
        SELECT state, count(*) FROM workflow_instances
        WHERE lease_owner IS NOT NULL AND next_run_at IS NOT NULL
          AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
        GROUP BY state) parts
    GROUP BY state) per_state), '{}'::jsonb)

-- state_counts --
-- Workflows per state (of one kind, or all) and the newest event id, from one snapshot (one
-- statement): a page showing the counts follows the live stream from that id, counting each
-- later transition exactly once. The newest id is looked for among the last 10 000 the sequence
-- gave (the BRIN index reads the last pages only); none of them committed, it takes a scan.
SELECT coalesce(
           (SELECT max(event_id) FROM workflow_events
            WHERE event_id > (SELECT last_value FROM workflow_events_event_id_seq) - 10000),
           (SELECT max(event_id) FROM workflow_events), 0) AS last_event_id,
       @count_by_state@ AS counts;

-- state_dwell_times --
-- Seconds spent in each state by workflows of %(kind)s started in the last %(days)s days: from
-- the event that entered the state to the workflow's next event (stays not over yet left out).
SELECT to_state AS state, count(*) AS samples, avg(seconds) AS avg_s,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS median_s
FROM (
    SELECT e.to_state, EXTRACT(EPOCH FROM lead(e.at) OVER (
               PARTITION BY e.workflow_id ORDER BY e.event_id) - e.at)::float8 AS seconds
    FROM workflow_events e JOIN workflow_instances w USING (workflow_id)
    WHERE w.kind = %(kind)s AND w.start_timestamp > now() - make_interval(secs => %(days)s * 86400)
) stays
WHERE seconds IS NOT NULL
GROUP BY to_state;

-- metrics reads --

-- metrics_snapshot --
-- The database's gauges for /metrics, in one statement, each from an index: workflows per state
-- (@count_by_state@ with %(kind)s NULL: partial indexes, not the wide rows), how long the oldest
-- due and unclaimed workflow has waited (the first entry of the partial index
-- workflow_instances_due) and the undelivered UI events (the partial index
-- ui_event_outbox_pending, which holds only those).
SELECT
    @count_by_state@ AS workflows_by_state,
    coalesce((SELECT EXTRACT(EPOCH FROM now() - min(next_run_at))::float8
              FROM workflow_instances
              WHERE lease_owner IS NULL AND next_run_at IS NOT NULL AND next_run_at <= now()),
             0.0) AS oldest_due_s,
    (SELECT count(*) FROM ui_event_outbox WHERE delivered_at IS NULL) AS outbox_backlog;

-- agent_queues --
-- Each agent flow control knows of, as every worker sees it (what `cpoa agents status`, the
-- dashboard, /metrics and `why` show): its slots held now (tasks submitted, not finished),
-- its cap as the workers last set it, the workflows waiting for a slot and for their place in
-- its rate, its pause while it lasts and why, and its failed requests in a row. Cheap: the
-- slots are as many as the caps, the waiters are the partial index workflow_instances_waiting.
WITH held AS (SELECT agent, count(*) AS n FROM agent_slots GROUP BY agent),
     queued AS (SELECT waiting_agent AS agent, count(*) AS n FROM workflow_instances
                WHERE waiting_agent IS NOT NULL GROUP BY waiting_agent),
     placed AS (SELECT agent, count(*) AS n FROM agent_tokens WHERE usable_at > now()
                GROUP BY agent)
SELECT agent, coalesce(held.n, 0) AS in_flight, f.max_in_flight,
    coalesce(queued.n, 0) AS waiting, coalesce(placed.n, 0) AS rate_waiting,
    CASE WHEN f.paused_until > now() THEN f.paused_until END AS paused_until,
    CASE WHEN f.paused_until > now() THEN f.pause_reason END AS pause_reason,
    coalesce(f.failures, 0) AS failures
FROM agent_flow f
FULL JOIN held USING (agent) FULL JOIN queued USING (agent) FULL JOIN placed USING (agent)
ORDER BY agent;

-- flow_position --
-- Where one workflow stands in flow control (`why`): the agent whose slot it waits for and
-- how many waiters go first, and its next place in an agent's rate. "Ahead" plays
-- cpoa_release_slots_v1 forward with no new waiter: a tenant's k-th waiter (0 first, by
-- priority then wait) is served once its tenant has had granted + k slots, and the release
-- serves the least granted first, then priority, then the longest wait: so the waiters go
-- in the order of (granted + k, priority DESC, waiting_since), and that order is counted.
WITH me AS (SELECT workflow_id, waiting_agent FROM workflow_instances
            WHERE workflow_id = %(workflow_id)s),
queue AS (
    SELECT w.workflow_id, -w.priority AS rank, w.waiting_since,
        coalesce(u.granted, 0) + row_number() OVER (
            PARTITION BY coalesce(w.user_id, '')
            ORDER BY w.priority DESC, w.waiting_since, w.workflow_id) - 1 AS turn
    FROM workflow_instances w
    LEFT JOIN agent_tenants u ON u.agent = w.waiting_agent
        AND u.tenant = coalesce(w.user_id, '')
    WHERE w.waiting_agent = (SELECT waiting_agent FROM me)),
place AS (SELECT agent, usable_at FROM agent_tokens
          WHERE workflow_id = %(workflow_id)s AND usable_at > now()
          ORDER BY usable_at LIMIT 1)
SELECT me.waiting_agent,
    (SELECT count(*) FROM queue q, queue mine WHERE mine.workflow_id = me.workflow_id
        AND (q.turn, q.rank, q.waiting_since, q.workflow_id)
            < (mine.turn, mine.rank, mine.waiting_since, mine.workflow_id)) AS ahead,
    (SELECT agent FROM place) AS rate_agent, (SELECT usable_at FROM place) AS rate_place_at
FROM me;

-- gateway reads --

-- list_workflows_page --
-- One page of `GET /v1/workflows`, newest first, strictly after the keyset (%(after_ts)s,
-- %(after_id)s) of the previous page's last row: unlike an OFFSET, a workflow started between
-- two pages neither repeats nor hides a row. The large JSON columns are left out.
SELECT workflow_id, kind, state, failed_from_state, error_message, warnings, client_id,
    user_id, idempotency_key, retry_count, start_timestamp, last_updated_timestamp,
    end_timestamp, next_run_at, lease_owner, forked_from
FROM workflow_instances
WHERE (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
  AND (%(after_ts)s::timestamptz IS NULL
       OR (start_timestamp, workflow_id) < (%(after_ts)s::timestamptz, %(after_id)s::uuid))
ORDER BY start_timestamp DESC, workflow_id DESC
LIMIT %(limit)s;

-- schema_version --
SELECT version FROM cpoa_schema_version;

-- db_now --
SELECT now() AS now;

-- select_bulk_batch --
-- The next %(limit)s workflows a bulk action's filter matches, by id after %(after_id)s
-- (keyset), among those started by %(as_of)s: a workflow started during the run (a fork it
-- made) is not picked up, and one changed by the run neither repeats nor hides another.
-- A bulk fork skips forks unless %(include_forks)s.
SELECT workflow_id, kind, state, failed_from_state, start_timestamp FROM workflow_instances
WHERE start_timestamp <= %(as_of)s
  AND (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
  AND (%(failed_step)s::text IS NULL OR failed_from_state = %(failed_step)s::text)
  AND (%(started_after)s::timestamptz IS NULL OR start_timestamp >= %(started_after)s)
  AND (%(started_before)s::timestamptz IS NULL OR start_timestamp < %(started_before)s)
  AND (%(include_forks)s::boolean OR forked_from IS NULL)
  AND (%(after_id)s::uuid IS NULL OR workflow_id > %(after_id)s::uuid)
ORDER BY workflow_id
LIMIT %(limit)s;

-- enforced_machine --
-- The state machine the database enforces: its recorded fingerprint and every allowed edge.
SELECT (SELECT fingerprint FROM cpoa_machine) AS fingerprint,
    coalesce((SELECT jsonb_agg(jsonb_build_array(kind, from_state, to_state))
              FROM workflow_transitions), '[]'::jsonb) AS edges;

-- enforced_edges --
-- The same edges, for a database whose schema has no cpoa_machine yet (before version 9).
SELECT coalesce((SELECT jsonb_agg(jsonb_build_array(kind, from_state, to_state))
                 FROM workflow_transitions), '[]'::jsonb) AS edges;
