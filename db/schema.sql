-- CPOA schema: the canonical DDL. Applied by `cpoa db init`; safe to apply any number of times.
-- The Python machine (cpoa/machine.py) holds the same states and transitions; the integration
-- tests assert that the CHECK below and workflow_transitions agree with it.

-- Serialise concurrent `db init` runs: CREATE ... IF NOT EXISTS is not race-free on its own.
SELECT pg_advisory_xact_lock(7304190231);

CREATE TABLE IF NOT EXISTS workflow_instances (
    workflow_id                 uuid PRIMARY KEY,
    kind                        text NOT NULL CHECK (kind IN ('podcast', 'snippets')),
    state                       text NOT NULL,
    failed_from_state           text,
    trigger_event_details_json  jsonb NOT NULL,
    context_data_json           jsonb NOT NULL DEFAULT '{}'::jsonb,
    warnings                    jsonb NOT NULL DEFAULT '[]'::jsonb,
    error_message               text,
    client_id                   text,
    user_id                     text,
    idempotency_key             text,
    start_timestamp             timestamptz NOT NULL DEFAULT now(),
    last_updated_timestamp      timestamptz NOT NULL DEFAULT now(),
    end_timestamp               timestamptz,
    -- Scheduling: due when next_run_at <= now() and nobody holds the lease. NULL once terminal.
    next_run_at                 timestamptz,
    -- Lease: the HTTP call to an agent happens outside any transaction; the lease keeps other
    -- workers away meanwhile, and `version` fences a stale owner's late result.
    lease_owner                 text,
    lease_expires_at            timestamptz,
    version                     bigint NOT NULL DEFAULT 0,
    -- Leases that expired without being released (a crashed or stuck worker).
    recovery_attempts           integer NOT NULL DEFAULT 0,
    -- Manual retries: the n-th one suffixes agent idempotency keys with _r<n>.
    retry_count                 integer NOT NULL DEFAULT 0,
    -- The base of the keys sent to agents (contract §2): NULL means the workflow id. Only
    -- workflows started before schema version 5 have one (their caller's key, kept).
    key_base                    text,
    -- The lease holder's liveness: the key of a session-level advisory lock its process holds
    -- on a connection of its own. When that session ends (the process died), the lease is
    -- recoverable at once, not only at lease_expires_at. NULL: the expiry alone decides.
    lease_liveness_key          bigint,
    -- The workflow this one was forked from (`cpoa fork`): its context up to the fork's
    -- starting state was copied from there. NULL: started afresh.
    forked_from                 uuid,
    CONSTRAINT workflow_state_known CHECK (
        (kind = 'podcast' AND state IN ('fetching', 'analyzing', 'scripting', 'awaiting_review',
                                        'synthesizing', 'imaging', 'finalizing', 'completed',
                                        'failed', 'cancelled'))
        OR (kind = 'snippets' AND state IN ('discovering', 'crafting', 'imaging',
                                            'completed', 'failed', 'cancelled'))),
    CONSTRAINT failed_records_origin CHECK (state <> 'failed' OR failed_from_state IS NOT NULL),
    CONSTRAINT lease_is_whole CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL))
);

-- Schema version 5, in place on an older database: workflows already started keep the keys
-- they have sent (their caller's key, when they had one); new ones use their workflow id.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'workflow_instances'::regclass AND attname = 'key_base'
                     AND NOT attisdropped) THEN
        ALTER TABLE workflow_instances ADD COLUMN key_base text;
        UPDATE workflow_instances SET key_base = idempotency_key
        WHERE idempotency_key IS NOT NULL;
    END IF;
END
$$;
ALTER TABLE workflow_instances ADD COLUMN IF NOT EXISTS lease_liveness_key bigint;
-- Schema version 8: when the last agent callback for a task of this workflow asked for a
-- poll (agent contract §2, `poke_task`: its arrival, or later when it was over its task's
-- rate). A callback that comes while a worker holds the lease (its request still in flight,
-- even before the submit's answer) is seen by that worker's record_progress, which then makes
-- the workflow due at that time instead of at its next poll time.
ALTER TABLE workflow_instances ADD COLUMN IF NOT EXISTS callback_at timestamptz;
-- Schema version 16: the tasks called back (`poke_task`) since the workflow's last step write
-- (each step write empties it; a claim does not: a claim can lock the row as a callback left
-- it while reading the task rows as they were before, and its step's write must still know).
-- A step's write makes its own task due when it is among them (its poll, or its submit's
-- answer, was under way when its agent called back), and only then. Before, any callback
-- during a step made the step's task due: a fan-out item was polled before it had finished
-- when another item called back while it was being submitted.
ALTER TABLE workflow_instances ADD COLUMN IF NOT EXISTS called_back_task_ids uuid[];

-- Schema version 8: secrets CPOA generates for itself on first use, by name. 'callback' signs
-- the callback URLs when CPOA_CALLBACK_SECRET is unset: every worker and gateway on this
-- database reads the same one. Anybody who can read this table can forge callbacks (which
-- only ever make a task polled sooner).
CREATE TABLE IF NOT EXISTS cpoa_secrets (
    name        text PRIMARY KEY,
    value       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A CHECK that lists allowed values, rebuilt when its definition lacks p_needs (a rebuild scans
-- the table, so only then): how a schema version adds a state or an event name in place.
CREATE OR REPLACE FUNCTION cpoa_ensure_check(p_table regclass, p_name text, p_needs text,
                                             p_check text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = p_table AND conname = p_name
                     AND pg_get_constraintdef(oid) LIKE '%' || p_needs || '%') THEN
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', p_table, p_name);
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (%s)', p_table, p_name, p_check);
    END IF;
END
$$;

-- Schema version 9, in place on an older database: the review gate's state awaiting_review
-- and fork lineage.
SELECT cpoa_ensure_check('workflow_instances', 'workflow_state_known', 'awaiting_review', $check$
    (kind = 'podcast' AND state IN ('fetching', 'analyzing', 'scripting', 'awaiting_review',
                                    'synthesizing', 'imaging', 'finalizing', 'completed',
                                    'failed', 'cancelled'))
    OR (kind = 'snippets' AND state IN ('discovering', 'crafting', 'imaging', 'completed',
                                        'failed', 'cancelled'))$check$);
ALTER TABLE workflow_instances ADD COLUMN IF NOT EXISTS forked_from uuid;

-- What a worker claims: unleased and due. Terminal rows have next_run_at NULL and stay out.
CREATE INDEX IF NOT EXISTS workflow_instances_due
    ON workflow_instances (next_run_at) WHERE lease_owner IS NULL AND next_run_at IS NOT NULL;
-- What the sweeper looks at: leases that may have expired.
CREATE INDEX IF NOT EXISTS workflow_instances_leased
    ON workflow_instances (lease_expires_at) WHERE lease_owner IS NOT NULL;
-- What `GET /v1/workflows` pages through (keyset: newest first, the id breaks ties).
CREATE INDEX IF NOT EXISTS workflow_instances_by_start
    ON workflow_instances (start_timestamp DESC, workflow_id DESC);
-- What `cpoa prune` looks at: finished workflows (next_run_at NULL), oldest first, with their
-- state for the counts per state (cpoa_count_by_state in queries.sql). Working rows are not
-- in it, so a running workflow's updates never touch it.
CREATE INDEX IF NOT EXISTS workflow_instances_finished_with_state
    ON workflow_instances (last_updated_timestamp) INCLUDE (state) WHERE next_run_at IS NULL;
-- Schema version 15: every index of a working row costs an entry on each of its transitions
-- (a state change is never a HOT update), and an index on (state, start_timestamp) was one of
-- four (93 bytes of WAL a transition, bench/wal_study.py). The counts per state read the
-- finished rows from the index above and the working ones from workflow_instances_due and
-- workflow_instances_leased; a listing by state filters workflow_instances_by_start.
DROP INDEX IF EXISTS workflow_instances_by_state;
DROP INDEX IF EXISTS workflow_instances_finished;

-- Per-agent flow control (CPOA_<AGENT>_MAX_IN_FLIGHT), schema version 8. A workflow that
-- finds its agent's slots all taken waits in the agent's queue (waiting_agent, the item it
-- will submit, since when) with no lease and no polling; the write that frees a slot hands it
-- to the next waiter and wakes the workers (cpoa_release_slots_v1). `priority` orders the
-- queue within a tenant (user_id); tenants take turns by the slots they had (agent_tenants).
ALTER TABLE workflow_instances ADD COLUMN IF NOT EXISTS priority integer NOT NULL DEFAULT 0;
ALTER TABLE workflow_instances ADD COLUMN IF NOT EXISTS waiting_agent text;
ALTER TABLE workflow_instances ADD COLUMN IF NOT EXISTS waiting_item text;
ALTER TABLE workflow_instances ADD COLUMN IF NOT EXISTS waiting_since timestamptz;
CREATE INDEX IF NOT EXISTS workflow_instances_waiting
    ON workflow_instances (waiting_agent, (coalesce(user_id, '')), priority DESC, waiting_since)
    WHERE waiting_agent IS NOT NULL;

-- Every (kind, from, to) the machine allows; a trigger refuses any other state change.
CREATE TABLE IF NOT EXISTS workflow_transitions (
    kind        text NOT NULL,
    from_state  text NOT NULL,
    to_state    text NOT NULL,
    PRIMARY KEY (kind, from_state, to_state)
);

INSERT INTO workflow_transitions (kind, from_state, to_state) VALUES
    ('podcast', 'fetching', 'analyzing'),
    ('podcast', 'analyzing', 'scripting'),
    ('podcast', 'scripting', 'synthesizing'),
    ('podcast', 'scripting', 'awaiting_review'),
    ('podcast', 'awaiting_review', 'synthesizing'),
    ('podcast', 'awaiting_review', 'scripting'),
    ('podcast', 'awaiting_review', 'failed'),
    ('podcast', 'failed', 'awaiting_review'),
    ('podcast', 'awaiting_review', 'cancelled'),
    ('podcast', 'synthesizing', 'imaging'),
    ('podcast', 'imaging', 'finalizing'),
    ('podcast', 'finalizing', 'completed'),
    ('podcast', 'fetching', 'failed'),
    ('podcast', 'analyzing', 'failed'),
    ('podcast', 'scripting', 'failed'),
    ('podcast', 'synthesizing', 'failed'),
    ('podcast', 'imaging', 'failed'),
    ('podcast', 'finalizing', 'failed'),
    ('podcast', 'failed', 'fetching'),
    ('podcast', 'failed', 'analyzing'),
    ('podcast', 'failed', 'scripting'),
    ('podcast', 'failed', 'synthesizing'),
    ('podcast', 'failed', 'imaging'),
    ('podcast', 'failed', 'finalizing'),
    ('podcast', 'fetching', 'cancelled'),
    ('podcast', 'analyzing', 'cancelled'),
    ('podcast', 'scripting', 'cancelled'),
    ('podcast', 'synthesizing', 'cancelled'),
    ('podcast', 'imaging', 'cancelled'),
    ('podcast', 'finalizing', 'cancelled'),
    ('podcast', 'failed', 'cancelled'),
    ('snippets', 'discovering', 'crafting'),
    ('snippets', 'crafting', 'imaging'),
    ('snippets', 'imaging', 'completed'),
    ('snippets', 'discovering', 'failed'),
    ('snippets', 'crafting', 'failed'),
    ('snippets', 'imaging', 'failed'),
    ('snippets', 'failed', 'discovering'),
    ('snippets', 'failed', 'crafting'),
    ('snippets', 'failed', 'imaging'),
    ('snippets', 'discovering', 'cancelled'),
    ('snippets', 'crafting', 'cancelled'),
    ('snippets', 'imaging', 'cancelled'),
    ('snippets', 'failed', 'cancelled')
ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION cpoa_refuse_unknown_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IS DISTINCT FROM OLD.state AND NOT EXISTS (
        SELECT 1 FROM workflow_transitions
        WHERE kind = NEW.kind AND from_state = OLD.state AND to_state = NEW.state
    ) THEN
        RAISE EXCEPTION 'transition % -> % is not allowed for a % workflow',
            OLD.state, NEW.state, NEW.kind USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER workflow_instances_transition_allowed
    BEFORE UPDATE OF state ON workflow_instances
    FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state)
    EXECUTE FUNCTION cpoa_refuse_unknown_transition();

-- One row per step attempt and per fan-out item.
CREATE TABLE IF NOT EXISTS task_instances (
    task_id                     uuid PRIMARY KEY,
    workflow_id                 uuid NOT NULL REFERENCES workflow_instances ON DELETE CASCADE,
    agent_name                  text NOT NULL,
    step                        text NOT NULL,
    item_key                    text NOT NULL DEFAULT '',
    attempt                     integer NOT NULL DEFAULT 0,
    status                      text NOT NULL
        CHECK (status IN ('pending', 'submitted', 'succeeded', 'failed')),
    idempotency_key             text NOT NULL,
    external_task_id            text,
    status_url                  text,
    input_params_json           jsonb,
    output_result_summary_json  jsonb,
    error_details_json          jsonb,
    retry_count                 integer NOT NULL DEFAULT 0,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    first_submitted_at          timestamptz,
    completed_at                timestamptz,
    next_poll_at                timestamptz,
    poll_deadline_at            timestamptz,
    UNIQUE (workflow_id, step, item_key, attempt)
);
-- Schema version 12: the live progress an agent last reported in a pending poll reply (agent
-- contract §2), as cpoa/reports.py keeps it: {"progress": 0-1 or null, "partial": [...] or
-- null, "reported_at", "sent_at" (when a generation_progress UI event last went out),
-- "unsent" (a change the throttle held back)}. NULL: the agent never reported any. Written
-- by the step's own record_progress / make_transition (no statement of its own).
ALTER TABLE task_instances ADD COLUMN IF NOT EXISTS progress_json jsonb;

-- A step's task row, inserted or brought up to date: the engine's one writer of task_instances,
-- called from record_progress and make_transition (queries.sql) with the row as JSON
-- (cpoa/store/rows.py, task_document). Versioned name: a changed signature gets a new one.
-- Functions on the hot path are PL/pgSQL, not SQL: PostgreSQL plans a SQL function that it
-- cannot inline on every call, and keeps a PL/pgSQL function's plans for the session (this
-- one cost 0.30 ms of PostgreSQL CPU a call as SQL: a sixth of a transition's). enable_seqscan
-- off keeps the UPDATE's kept plan on the index, as in cpoa_step_tasks below (with a plan made
-- while the table was small, 0.07 -> 0.16 ms a call in a 1-slot bench run).
CREATE OR REPLACE FUNCTION cpoa_save_task_v1(p_task jsonb) RETURNS void
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    t task_instances := jsonb_populate_record(NULL::task_instances, p_task);
BEGIN
    -- An UPDATE, then an INSERT when there was no row: every caller holds its workflow's row
    -- lock (the step writes lock it first), so no other writer inserts the same task row
    -- meanwhile. (INSERT ... ON CONFLICT inserted speculatively, even for a new row: one more
    -- WAL record per transition.)
    UPDATE task_instances SET
        status = t.status, external_task_id = t.external_task_id, status_url = t.status_url,
        input_params_json = t.input_params_json,
        output_result_summary_json = t.output_result_summary_json,
        error_details_json = t.error_details_json, retry_count = t.retry_count,
        first_submitted_at = t.first_submitted_at, completed_at = t.completed_at,
        next_poll_at = t.next_poll_at, poll_deadline_at = t.poll_deadline_at,
        progress_json = t.progress_json, updated_at = now()
    WHERE workflow_id = t.workflow_id AND step = t.step AND item_key = t.item_key
      AND attempt = t.attempt;
    IF NOT FOUND THEN
        INSERT INTO task_instances (task_id, workflow_id, agent_name, step, item_key, attempt,
            status, idempotency_key, external_task_id, status_url, input_params_json,
            output_result_summary_json, error_details_json, retry_count, first_submitted_at,
            completed_at, next_poll_at, poll_deadline_at, progress_json)
        VALUES (t.task_id, t.workflow_id, t.agent_name, t.step, t.item_key, t.attempt,
            t.status, t.idempotency_key, t.external_task_id, t.status_url,
            t.input_params_json, t.output_result_summary_json, t.error_details_json,
            t.retry_count, t.first_submitted_at, t.completed_at, t.next_poll_at,
            t.poll_deadline_at, t.progress_json);
    END IF;
END
$$;

-- The task rows of a workflow's current step attempt, as JSON, oldest first: what a lease
-- carries (claim_due, take_lease and the step writes return it beside the workflow row).
-- PL/pgSQL keeps its plan for the session; enable_seqscan off keeps that plan on the index
-- when it was made while task_instances was small (a plan that scans the table whole went
-- from 0.14 to 0.35 ms a call as the table grew in a bench run; planned on every call as SQL,
-- 0.08 ms).
CREATE OR REPLACE FUNCTION cpoa_step_tasks(p_workflow_id uuid, p_step text, p_attempt integer)
RETURNS jsonb LANGUAGE plpgsql STABLE SET enable_seqscan = off AS $$
BEGIN
    RETURN (SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.created_at, t.item_key), '[]')
            FROM task_instances t
            WHERE t.workflow_id = p_workflow_id AND t.step = p_step
              AND t.attempt = p_attempt);
END
$$;

-- The advisory-lock keys held right now by sessions of this database (pg_locks is not
-- transactional: it is the lock table as it is at this instant). A worker process holds one
-- such lock for as long as it lives (cpoa/store/connection.py, Listener); its leases carry the
-- key in lease_liveness_key.
CREATE OR REPLACE FUNCTION cpoa_live_session_keys() RETURNS SETOF bigint
LANGUAGE sql STABLE AS $$
    SELECT (l.classid::bigint << 32) | l.objid::bigint FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
$$;

-- Is a lease still held? Unexpired, and its holder's session (when it named one) alive: that
-- session's advisory lock cannot be taken. Trying it costs a lookup in the lock manager, where
-- reading pg_locks copies the whole lock table (about 1 ms: it was most of the PostgreSQL CPU
-- of a transition, which asks this of its own lease). When the session is gone the caller
-- holds the key until its transaction ends, which changes no answer: the lease is dead anyway.
CREATE OR REPLACE FUNCTION cpoa_lease_live(p_owner text, p_expires_at timestamptz,
                                           p_liveness_key bigint) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT p_owner IS NOT NULL AND p_expires_at > now()
       AND (p_liveness_key IS NULL OR NOT pg_try_advisory_xact_lock(p_liveness_key))
$$;

-- An agent's limit, as the workers were configured when they last took a slot (its row is
-- also the lock that makes taking and freeing its slots one at a time), and the pause of its
-- new submits that its last 429 or 503 with Retry-After asked for.
CREATE TABLE IF NOT EXISTS agent_flow (
    agent          text PRIMARY KEY,
    max_in_flight  integer CHECK (max_in_flight > 0),
    paused_until   timestamptz
);

-- Schema version 11: an agent's rate limit (CPOA_<AGENT>_RATE_LIMIT), kept as the
-- theoretical arrival time of the generic cell rate algorithm (rate_tat: when its bucket is
-- empty again), and its breaker: failed requests in a row, and why its new submits are paused
-- ('429' or '503' with Retry-After from the agent, 'breaker' after failures).
ALTER TABLE agent_flow ADD COLUMN IF NOT EXISTS rate_tat timestamptz;
ALTER TABLE agent_flow ADD COLUMN IF NOT EXISTS failures integer NOT NULL DEFAULT 0;
ALTER TABLE agent_flow ADD COLUMN IF NOT EXISTS pause_reason text;

-- The agents whose new submits are paused now, until when, and those failing but not paused
-- (paused_until NULL or past): what every lease carries. A worker whose request to a failing
-- agent is answered reports it (cpoa_agent_report_v1), which closes the breaker.
CREATE OR REPLACE FUNCTION cpoa_agent_pauses() RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(jsonb_object_agg(agent, paused_until), '{}'::jsonb) FROM agent_flow
            WHERE paused_until > now() OR failures > 0);
END
$$;

ALTER TABLE agent_flow ADD COLUMN IF NOT EXISTS breaker_pause_s float8;

-- What one request told of its agent: answered (p_ok: one success closes the breaker and
-- ends its pause), answered 429 or 503 with Retry-After (p_pause_s: every new submit waits
-- that long), or failed (no answer, 5xx, timeout): the p_threshold-th failure in a row opens
-- the breaker for p_first_s; a failure after that pause (the agent still down) opens it again
-- for twice the last pause (breaker_pause_s), up to p_most_s. Failures while it is open (polls
-- go on) are counted but do not lengthen it.
CREATE OR REPLACE FUNCTION cpoa_agent_report_v1(p_agent text, p_ok boolean, p_pause_s float8,
                                                p_reason text, p_threshold integer,
                                                p_first_s float8, p_most_s float8)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_failures integer;
    v_open boolean;
    v_last float8;
BEGIN
    INSERT INTO agent_flow (agent) VALUES (p_agent) ON CONFLICT (agent) DO NOTHING;
    IF p_ok THEN
        UPDATE agent_flow SET failures = 0, breaker_pause_s = NULL,
            paused_until = CASE WHEN pause_reason = 'breaker' THEN NULL ELSE paused_until END,
            pause_reason = CASE WHEN pause_reason = 'breaker' THEN NULL ELSE pause_reason END
        WHERE agent = p_agent AND (failures > 0 OR pause_reason = 'breaker');
    ELSIF p_pause_s IS NOT NULL THEN
        UPDATE agent_flow
        SET paused_until = greatest(paused_until, now() + make_interval(secs => p_pause_s)),
            pause_reason = p_reason
        WHERE agent = p_agent;
    ELSE
        UPDATE agent_flow SET failures = failures + 1 WHERE agent = p_agent
        RETURNING failures, coalesce(pause_reason = 'breaker' AND paused_until > now(), false),
                  breaker_pause_s
        INTO v_failures, v_open, v_last;
        IF v_failures >= p_threshold AND NOT v_open THEN
            v_last := least(p_most_s, coalesce(v_last * 2, p_first_s));
            UPDATE agent_flow
            SET paused_until = greatest(paused_until, now() + make_interval(secs => v_last)),
                pause_reason = 'breaker', breaker_pause_s = v_last
            WHERE agent = p_agent;
        END IF;
    END IF;
END
$$;

-- A place in an agent's rate (CPOA_<AGENT>_RATE_LIMIT) that an item was given for a time to
-- come: its workflow waits until then with no lease, and submits then.
CREATE TABLE IF NOT EXISTS agent_tokens (
    workflow_id  uuid NOT NULL REFERENCES workflow_instances ON DELETE CASCADE,
    agent        text NOT NULL,
    item_key     text NOT NULL,
    usable_at    timestamptz NOT NULL,
    PRIMARY KEY (workflow_id, agent, item_key)
);

-- A leased workflow's step asks for a submit to p_agent at p_rate per second with bursts of
-- p_burst (the generic cell rate algorithm: any window of W seconds holds at most
-- p_burst + W * p_rate submits). 0: submit now. More: the item has its place that many
-- seconds from now, and the workflow waits for it, lease released. NULL: the lease was lost.
CREATE OR REPLACE FUNCTION cpoa_take_token_v1(p_workflow_id uuid, p_owner text, p_version bigint,
                                              p_agent text, p_item_key text, p_rate float8,
                                              p_burst integer)
RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    v_emission interval := make_interval(secs => 1.0 / p_rate);
    v_at timestamptz;
    v_tat timestamptz;
BEGIN
    PERFORM 1 FROM workflow_instances
    WHERE workflow_id = p_workflow_id AND version = p_version AND lease_owner = p_owner
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    DELETE FROM agent_tokens WHERE workflow_id = p_workflow_id AND agent = p_agent
        AND item_key = p_item_key RETURNING usable_at INTO v_at;
    IF v_at IS NULL OR v_at < now() - v_emission THEN  -- none, or one it let pass: a new one
        INSERT INTO agent_flow (agent) VALUES (p_agent) ON CONFLICT (agent) DO NOTHING;
        SELECT greatest(rate_tat, now()) INTO v_tat FROM agent_flow WHERE agent = p_agent
        FOR UPDATE;
        v_at := v_tat - (p_burst - 1) * v_emission;
        UPDATE agent_flow SET rate_tat = v_tat + v_emission WHERE agent = p_agent;
    END IF;
    IF v_at <= now() THEN
        RETURN 0;
    END IF;
    INSERT INTO agent_tokens (workflow_id, agent, item_key, usable_at)
    VALUES (p_workflow_id, p_agent, p_item_key, v_at);
    UPDATE workflow_instances
    SET next_run_at = v_at, lease_owner = NULL, lease_expires_at = NULL,
        lease_liveness_key = NULL, version = version + 1, last_updated_timestamp = now()
    WHERE workflow_id = p_workflow_id;
    RETURN extract(epoch FROM v_at - now());
END
$$;

-- A slot of a capped agent held by one item of a workflow's step, from before its submit until
-- its task finished or the workflow left the state. It belongs to the workflow, not to a
-- worker: a worker that dies holding one leaves it to whoever resumes the workflow.
CREATE TABLE IF NOT EXISTS agent_slots (
    agent        text NOT NULL,
    workflow_id  uuid NOT NULL REFERENCES workflow_instances ON DELETE CASCADE,
    item_key     text NOT NULL,
    tenant       text NOT NULL,
    granted_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, agent, item_key)
);
CREATE INDEX IF NOT EXISTS agent_slots_by_agent ON agent_slots (agent);

-- Fair share: slots each tenant has had of each agent. A tenant that starts waiting again is
-- brought up to the least of those already waiting, so old savings buy no burst.
CREATE TABLE IF NOT EXISTS agent_tenants (
    agent    text NOT NULL,
    tenant   text NOT NULL,
    granted  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (agent, tenant)
);

CREATE OR REPLACE FUNCTION cpoa_grant_slot_v1(p_agent text, p_workflow_id uuid, p_item_key text,
                                              p_tenant text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO agent_slots (agent, workflow_id, item_key, tenant)
    VALUES (p_agent, p_workflow_id, p_item_key, p_tenant);
    INSERT INTO agent_tenants AS t (agent, tenant, granted) VALUES (p_agent, p_tenant, 1)
    ON CONFLICT (agent, tenant) DO UPDATE SET granted = t.granted + 1;
END
$$;

-- A leased workflow's step takes a slot of p_agent for p_item_key before it submits: true
-- when it holds one (already, or now); false when all p_max_in_flight are taken and the
-- workflow now waits in the agent's queue, lease released; NULL when the lease was lost.
CREATE OR REPLACE FUNCTION cpoa_take_slot_v1(p_workflow_id uuid, p_owner text, p_version bigint,
                                             p_agent text, p_item_key text,
                                             p_max_in_flight integer, p_recheck_s float8)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_tenant text;
    v_waiting text;
BEGIN
    SELECT coalesce(user_id, ''), waiting_agent INTO v_tenant, v_waiting
    FROM workflow_instances
    WHERE workflow_id = p_workflow_id AND version = p_version AND lease_owner = p_owner
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM agent_slots WHERE workflow_id = p_workflow_id
               AND agent = p_agent AND item_key = p_item_key) THEN
        RETURN true;
    END IF;
    INSERT INTO agent_flow AS f (agent, max_in_flight) VALUES (p_agent, p_max_in_flight)
    ON CONFLICT (agent) DO UPDATE SET max_in_flight = EXCLUDED.max_in_flight
        WHERE f.max_in_flight IS DISTINCT FROM EXCLUDED.max_in_flight;
    PERFORM 1 FROM agent_flow WHERE agent = p_agent FOR UPDATE;
    IF (SELECT count(*) FROM agent_slots WHERE agent = p_agent) < p_max_in_flight THEN
        PERFORM cpoa_grant_slot_v1(p_agent, p_workflow_id, p_item_key, v_tenant);
        UPDATE workflow_instances
        SET waiting_agent = NULL, waiting_item = NULL, waiting_since = NULL
        WHERE workflow_id = p_workflow_id AND waiting_agent IS NOT NULL;
        RETURN true;
    END IF;
    IF v_waiting IS NULL AND NOT EXISTS (
            SELECT 1 FROM workflow_instances WHERE waiting_agent = p_agent
            AND coalesce(user_id, '') = v_tenant) THEN
        INSERT INTO agent_tenants AS t (agent, tenant, granted)
        SELECT p_agent, v_tenant, coalesce(min(u.granted), 0) FROM agent_tenants u
        WHERE u.agent = p_agent AND EXISTS (
            SELECT 1 FROM workflow_instances w WHERE w.waiting_agent = p_agent
            AND coalesce(w.user_id, '') = u.tenant)
        ON CONFLICT (agent, tenant) DO UPDATE SET granted = greatest(t.granted, EXCLUDED.granted);
    END IF;
    UPDATE workflow_instances
    SET waiting_agent = p_agent, waiting_item = p_item_key,
        waiting_since = coalesce(waiting_since, now()),
        next_run_at = now() + make_interval(secs => p_recheck_s),
        lease_owner = NULL, lease_expires_at = NULL, lease_liveness_key = NULL,
        version = version + 1, last_updated_timestamp = now()
    WHERE workflow_id = p_workflow_id;
    RETURN false;
END
$$;

-- Frees p_workflow_id's slots (of item p_item_key; NULL: all of them) and hands each freed
-- agent's slots to its next waiters: the tenant that had the fewest, then the highest
-- priority, then the longest wait. A waiter given a slot is due now, and the workers hear it:
-- a microsecond before the releasing workflow (due now too, when its worker gave its thread up
-- for the waiter: cpoa.decide.hands_over_slot), so that claims take the waiter first.
CREATE OR REPLACE FUNCTION cpoa_release_slots_v1(p_workflow_id uuid, p_item_key text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_agent text;
    v_next record;
    v_granted integer := 0;
BEGIN
    FOR v_agent IN
        WITH freed AS (DELETE FROM agent_slots WHERE workflow_id = p_workflow_id
                       AND (p_item_key IS NULL OR item_key = p_item_key) RETURNING agent)
        SELECT DISTINCT agent FROM freed ORDER BY agent
    LOOP
        PERFORM 1 FROM agent_flow WHERE agent = v_agent FOR UPDATE;
        LOOP
            EXIT WHEN (SELECT count(*) FROM agent_slots WHERE agent = v_agent)
                      >= coalesce((SELECT max_in_flight FROM agent_flow WHERE agent = v_agent),
                                  2147483647);  -- no limit (any more): every waiter goes
            SELECT w.workflow_id, w.waiting_item, u.tenant INTO v_next
            FROM agent_tenants u
            CROSS JOIN LATERAL (
                SELECT workflow_id, waiting_item, priority, waiting_since
                FROM workflow_instances
                WHERE waiting_agent = v_agent AND coalesce(user_id, '') = u.tenant
                ORDER BY priority DESC, waiting_since
                LIMIT 1 FOR UPDATE SKIP LOCKED) w
            WHERE u.agent = v_agent
            ORDER BY u.granted, w.priority DESC, w.waiting_since
            LIMIT 1;
            EXIT WHEN NOT FOUND;
            PERFORM cpoa_grant_slot_v1(v_agent, v_next.workflow_id, v_next.waiting_item,
                                       v_next.tenant);
            UPDATE workflow_instances
            SET waiting_agent = NULL, waiting_item = NULL, waiting_since = NULL,
                next_run_at = now() - interval '1 microsecond'
            WHERE workflow_id = v_next.workflow_id;
            v_granted := v_granted + 1;
        END LOOP;
    END LOOP;
    IF v_granted > 0 THEN
        PERFORM pg_notify('cpoa_due', '');
    END IF;
    RETURN v_granted;
END
$$;

-- A callback (poke_task in queries.sql): makes open task p_task_id of unfinished workflow
-- p_workflow_id due for a poll after p_delay_s (0: now), notes it among the workflow's
-- called_back_task_ids (for the write of a step under way) and wakes the workers at commit.
-- Two statements on purpose: the workflow's UPDATE may wait for the row lock of a step write
-- that is recording this very task (the agent called back as its submit's answer was being
-- stored); the task's UPDATE after it then reads with a snapshot taken after that write, so it
-- finds the row (one statement read it from before the write: the callback went nowhere and
-- the task waited for its scheduled poll). Schema version 13; it was one statement before.
CREATE OR REPLACE FUNCTION cpoa_poke_task_v1(p_workflow_id uuid, p_task_id uuid,
                                             p_delay_s float8)
RETURNS TABLE (poked integer, tasks integer) LANGUAGE plpgsql AS $$
DECLARE
    v_due timestamptz;
BEGIN
    UPDATE workflow_instances
    SET callback_at = clock_timestamp() + make_interval(secs => p_delay_s),
        next_run_at = LEAST(next_run_at, clock_timestamp() + make_interval(secs => p_delay_s)),
        called_back_task_ids = CASE WHEN p_task_id = ANY(called_back_task_ids)
                                    THEN called_back_task_ids
                                    ELSE array_append(called_back_task_ids, p_task_id) END
    WHERE workflow_id = p_workflow_id AND next_run_at IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM task_instances
                      WHERE task_id = p_task_id AND status IN ('succeeded', 'failed'))
      AND NOT EXISTS (SELECT 1 FROM workflow_events e  -- finished within its transition
                      WHERE e.workflow_id = p_workflow_id
                        AND e.task->>'task_id' = p_task_id::text)
    RETURNING callback_at INTO v_due;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0, 0;
        RETURN;
    END IF;
    UPDATE task_instances SET next_poll_at = LEAST(next_poll_at, v_due)
    WHERE task_id = p_task_id AND workflow_id = p_workflow_id;
    GET DIAGNOSTICS tasks = ROW_COUNT;
    PERFORM pg_notify('cpoa_due', p_workflow_id::text);
    RETURN QUERY SELECT 1, tasks;
END
$$;

-- Schema versions 7 to 10 had the lock of a step's write as a function; it is inline again
-- (queries.sql, record_progress): planned on every call, it cost 0.6 ms of PostgreSQL CPU a step.
DROP FUNCTION IF EXISTS cpoa_lock_step_v1(uuid, float8);

-- Insert-or-nothing idempotency, shared with the agents (task_name tells the users apart).
CREATE TABLE IF NOT EXISTS idempotency_keys (
    idempotency_key  text NOT NULL,
    task_name        text NOT NULL,
    status           text NOT NULL CHECK (status IN ('processing', 'completed', 'failed')),
    workflow_id      uuid,
    result_payload   jsonb,
    error_payload    jsonb,
    locked_at        timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz,
    PRIMARY KEY (idempotency_key, task_name)
);

-- The store settles a workflow's key by workflow_id inside the transition's transaction:
-- without this index that was a sequential scan under the workflow's row lock.
CREATE INDEX IF NOT EXISTS idempotency_keys_by_workflow ON idempotency_keys (workflow_id);

-- Append-only transition history, written in the transaction of the change it records.
-- Its primary key leads with the workflow: a claim folds the workflow's context from it
-- (cpoa_context_v1), and the history, a prune's cascade and the dashboard's reads of one
-- workflow go through it. The reads across workflows by event_id (the live dashboard's
-- catch-up) use a BRIN index: the ids grow with the table's pages, and a BRIN index costs
-- no entry per row. Schema version 15; before it, event_id alone was the primary key and
-- (workflow_id, event_id) a second index: one btree entry more on every transition.
CREATE TABLE IF NOT EXISTS workflow_events (
    event_id     bigserial,
    workflow_id  uuid NOT NULL REFERENCES workflow_instances ON DELETE CASCADE,
    from_state   text,
    to_state     text NOT NULL,
    trigger      text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    detail       jsonb,
    PRIMARY KEY (workflow_id, event_id)
);
DO $$
BEGIN
    IF (SELECT i.indnatts FROM pg_index i
        WHERE i.indrelid = 'workflow_events'::regclass AND i.indisprimary) = 1 THEN
        ALTER TABLE workflow_events DROP CONSTRAINT workflow_events_pkey;
        ALTER TABLE workflow_events ADD PRIMARY KEY (workflow_id, event_id);
    END IF;
END
$$;
DROP INDEX IF EXISTS workflow_events_by_workflow;
CREATE INDEX IF NOT EXISTS workflow_events_by_id
    ON workflow_events USING brin (event_id) WITH (pages_per_range = 16);

-- Schema version 14: what each transition added to the context (its step's output, a
-- reviewer's edit) rides in its history row, and workflow_instances.context_data_json keeps
-- only what the workflow started with (a fork's copy; before version 14, everything). A
-- workflow's context is that base with every transition's updates merged in order
-- (cpoa_context_v1): a transition writes its own output once instead of rewriting the whole
-- context into the workflow's row (830 of that row's 1 020 bytes in bench/wal_study.py, and
-- the largest part of a transition's WAL). NULL: the transition added nothing.
ALTER TABLE workflow_events ADD COLUMN IF NOT EXISTS context_updates jsonb;

-- Schema version 17: a task begun and finished by the one step write that moves its workflow
-- on (its agent answered the submit with the result, or refused it) is kept in that
-- transition's history row, as JSON of its task_instances row, instead of in task_instances:
-- a row and two btree entries fewer on such a transition. The JSON leaves out what the
-- history row holds (workflow_id; step: from_state; created_at and updated_at: at), the
-- polling deadline of a task no longer polled, and nulls (make_transition). A task written
-- before its step's transition (submitted, then polled) stays in task_instances.
-- select_tasks reads both; a callback for a task kept here is for a finished task
-- (cpoa_poke_task_v1). NULL: none.
ALTER TABLE workflow_events ADD COLUMN IF NOT EXISTS task jsonb;

-- jsonb || over rows, in the aggregate's ORDER BY: later keys replace earlier ones.
CREATE OR REPLACE AGGREGATE cpoa_jsonb_merge(jsonb) (
    SFUNC = jsonb_concat, STYPE = jsonb, INITCOND = '{}');

-- A workflow's context: its row's base and its history's updates, oldest first. Every read
-- that makes a workflow of a row selects it (queries.sql, AS context). PL/pgSQL with the plan
-- kept on the index, as cpoa_step_tasks.
CREATE OR REPLACE FUNCTION cpoa_context_v1(p_workflow_id uuid, p_base jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SET enable_seqscan = off AS $$
BEGIN
    RETURN p_base || (SELECT cpoa_jsonb_merge(e.context_updates ORDER BY e.event_id)
                      FROM workflow_events e
                      WHERE e.workflow_id = p_workflow_id AND e.context_updates IS NOT NULL);
END
$$;

-- History rows with their workflow's kind and topic (or query): what the dashboard shows.
CREATE OR REPLACE VIEW workflow_events_labelled AS
SELECT e.event_id, e.workflow_id, e.from_state, e.to_state, e.trigger, e.at, e.detail, w.kind,
       coalesce(w.trigger_event_details_json ->> 'topic',
                w.trigger_event_details_json ->> 'query') AS label
FROM workflow_events e JOIN workflow_instances w USING (workflow_id);

CREATE OR REPLACE FUNCTION cpoa_refuse_history_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'workflow_events is append-only' USING ERRCODE = 'check_violation';
END
$$;

CREATE OR REPLACE TRIGGER workflow_events_append_only
    BEFORE UPDATE ON workflow_events
    FOR EACH ROW EXECUTE FUNCTION cpoa_refuse_history_update();

-- Live dashboards (`cpoa serve`) LISTEN on cpoa_events. NOTIFY is delivered at COMMIT, in
-- commit order, so a listener never sees an event that could still roll back.
-- Payload: '<workflow_id>:<event_id>'.
CREATE OR REPLACE FUNCTION cpoa_notify_history() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cpoa_events', NEW.workflow_id::text || ':' || NEW.event_id::text);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER workflow_events_notify
    AFTER INSERT ON workflow_events
    FOR EACH ROW EXECUTE FUNCTION cpoa_notify_history();

-- History rows leave only with their workflow: a DELETE of the workflow (what `cpoa prune`
-- does) cascades here from the foreign key's trigger, at trigger depth 2; a DELETE aimed at
-- workflow_events itself runs at depth 1 and is refused, so no workflow that still exists can
-- lose part of its history (it always replays to the workflow's state).
CREATE OR REPLACE FUNCTION cpoa_refuse_history_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'workflow_events rows are deleted only with their workflow (cpoa prune)'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN OLD;
END
$$;

CREATE OR REPLACE TRIGGER workflow_events_delete_with_workflow
    BEFORE DELETE ON workflow_events
    FOR EACH ROW EXECUTE FUNCTION cpoa_refuse_history_delete();

-- UI events, queued in the transition's transaction and delivered after commit, in seq order
-- per workflow. event_id lets the receiver drop a duplicate delivery.
CREATE TABLE IF NOT EXISTS ui_event_outbox (
    seq              bigserial PRIMARY KEY,
    event_id         uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    workflow_id      uuid NOT NULL REFERENCES workflow_instances ON DELETE CASCADE,
    client_id        text NOT NULL,
    event_name       text NOT NULL CONSTRAINT ui_event_outbox_event_name_check
        CHECK (event_name IN ('generation_status', 'task_error', 'review_requested',
                              'generation_progress')),
    data             jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    locked_until     timestamptz,
    last_error       text
);
-- Schema version 9, in place: the review gate's UI event review_requested.
-- Schema version 12, in place: generation_progress, an agent's live progress (the throttled
-- events record_progress queues).
SELECT cpoa_ensure_check('ui_event_outbox', 'ui_event_outbox_event_name_check',
    'generation_progress', $check$event_name IN ('generation_status', 'task_error',
                                                 'review_requested', 'generation_progress')$check$);
CREATE INDEX IF NOT EXISTS ui_event_outbox_pending
    ON ui_event_outbox (workflow_id, seq) WHERE delivered_at IS NULL;
-- Every event of a workflow: the ON DELETE CASCADE from workflow_instances (cpoa prune) looks
-- rows up by workflow_id, and without this it scanned the whole outbox once per workflow.
CREATE INDEX IF NOT EXISTS ui_event_outbox_by_workflow ON ui_event_outbox (workflow_id, seq);

-- The state machine this schema enforces (schema version 9): cpoa.machine.fingerprint(), a
-- hash of every kind's states and edges (the CHECK workflow_state_known and the rows of
-- workflow_transitions above). A worker whose machine differs refuses to start
-- (cpoa/worker.py); a unit test keeps this literal equal to the code's.
CREATE TABLE IF NOT EXISTS cpoa_machine (
    only_row     boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    fingerprint  text NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO cpoa_machine (fingerprint) VALUES ('e36f5960f7394684')
ON CONFLICT (only_row) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, applied_at = now()
    WHERE cpoa_machine.fingerprint <> EXCLUDED.fingerprint;

-- The version of this file: bump the number below with every change to it. `GET /healthz`
-- compares it with the version the running code carries (cpoa.sql.schema_version()); applying
-- an older file never lowers it.
CREATE TABLE IF NOT EXISTS cpoa_schema_version (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version     integer NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO cpoa_schema_version (version) VALUES (17)
ON CONFLICT (only_row) DO UPDATE SET version = EXCLUDED.version, applied_at = now()
    WHERE cpoa_schema_version.version < EXCLUDED.version;
