/*
 * tq -- the whole schema of the current version, in one file.
 *
 * extension/Makefile copies this file to sql/tq--<version>.sql, <version>
 * being default_version in extension/tq.control, and installs it: CREATE
 * EXTENSION tq runs it.  The older versions are reached otherwise:
 * sql/tq--0.1.0.sql, the oldest release, and the upgrade scripts
 * sql/tq--A--B.sql are never edited, and CREATE EXTENSION tq VERSION
 * '0.5.0' runs 0.1.0 and the updates up to 0.5.0.
 *
 * A change to the schema is made twice: here, where the object is defined
 * as it now stands, and in the next upgrade script, for the databases
 * that update.  test/upgrade/run.sh installs this file in one database
 * and 0.1.0 plus every upgrade in another, and fails on any difference in
 * their catalogs (test/upgrade/footprint.sql lists what it compares).
 * Columns are in the order the upgrades added them, which is also the
 * order of SELECT * and of the tables' row types.
 *
 * Layout: the API (functions named tq_*, views tq_*) lives in the schema the
 * extension is installed into (@extschema@, public by default); tables,
 * types and internal helpers live in schema tq.  The file goes feature by
 * feature, each COMMENT beside its object: argument checks, queues, live
 * tasks, history, dedup, submit, lease, finish, retries, cancel and pause,
 * housekeeping, the background worker, fair dispatch and shared state,
 * limits, periodic tasks, inspection, task logs and traces, waiting,
 * activity, views, then roles and privileges.
 *
 * The task's life: scheduled (run_at in the future or waiting out a retry
 * backoff) -> ready -> running (leased, with a deadline and a fencing token,
 * the attempt number) -> succeeded | dead | cancelled | expired.  paused
 * holds ready tasks of a paused queue or tenant, and tasks parked until
 * their tenant's concurrency quota or rate bucket has room.
 *
 * Storage: live tasks (scheduled, ready, paused, running) sit in the small
 * hot table tq.task.  A finished task is deleted from it and written to
 * tq.history in the same statement.  tq.history is partitioned by queue and
 * then by finish time, so retention drops whole partitions and neither
 * table needs a vacuum of dead task rows to stay small.
 *
 * Dispatch: one partial B-tree per state that a reader scans
 * (task_dispatch_idx over ready tasks in fair dispatch order), claimed with
 * FOR UPDATE SKIP LOCKED, so tq_lease reads only the rows it returns.  One
 * C trigger on tq.task (tq.task_row, extension/fair_trigger.c) keeps counts, fair
 * keys, limits and quotas in shared memory.
 *
 * Privileges: every API function that touches tables runs as the
 * extension's owner (SECURITY DEFINER) or calls one that does, and names
 * every table, type and helper with its schema; callers need only
 * EXECUTE, granted through the roles tq_producer, tq_worker and tq_admin.
 * The SECURITY DEFINER functions pin SET search_path = pg_catalog, pg_temp,
 * all but one: tq_submit, which is C (extension/submit.c) and has no SET
 * clause, so that a single submit costs little more than a plain INSERT.
 * Its statements name every table, type and operator with its schema
 * (OPERATOR(pg_catalog.=)), so the caller's search_path cannot change what
 * they mean, and every call but the common case goes to tq.submit_slow,
 * which pins the path.
 *
 * The internal helpers in schema tq carry no SET search_path of their own
 * when they are reached only from those API functions (schema tq is closed
 * to PUBLIC), so they run under the caller's pinned path.  A SET clause
 * would make each nested call save and restore the setting and keep small
 * SQL helpers from being inlined -- measured as the largest overhead of a
 * single tq_submit.  The helpers entered from elsewhere pin it: the
 * background worker's tq.background_pass, pg_cron's tq.fire_schedule,
 * tq.submit_slow, and tq.shared_counts and tq.activity, which the views
 * call as their reader.
 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION tq" to load this file. \quit

------------------------------------------------------------------------------
-- Schema and task states
------------------------------------------------------------------------------

CREATE SCHEMA tq;
COMMENT ON SCHEMA tq IS 'Internal tables, types and helpers of the tq extension; use the tq_* functions and views instead.';

CREATE TYPE tq.task_state AS ENUM
    ('scheduled', 'ready', 'paused', 'running', 'succeeded', 'dead', 'cancelled', 'expired');
COMMENT ON TYPE tq.task_state IS 'Life cycle of a task: scheduled -> ready -> running -> succeeded | dead | cancelled | expired; paused holds ready tasks of a paused queue or tenant.';

------------------------------------------------------------------------------
-- Argument checks
------------------------------------------------------------------------------

-- In C (extension/checks.c): on the hot path of every submit, lease and finish.
CREATE FUNCTION tq.check_payload(payload jsonb) RETURNS jsonb
    LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'tq_check_payload';
COMMENT ON FUNCTION tq.check_payload(jsonb) IS 'Returns the payload if it is a JSON object within tq.max_payload_size; raises otherwise.';

CREATE FUNCTION tq.check_result(result jsonb) RETURNS jsonb
    LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'tq_check_result';
COMMENT ON FUNCTION tq.check_result(jsonb) IS 'Returns the result if it is within tq.max_payload_size; raises otherwise.';

CREATE FUNCTION tq.check_name(name text, what text DEFAULT 'queue') RETURNS text
    LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'tq_check_name';
COMMENT ON FUNCTION tq.check_name(text, text) IS 'Returns the name if it is a valid tq name (a letter, then letters, digits, _, -, .; at most 63 bytes); raises otherwise.';

CREATE FUNCTION tq.check_label(value text, what text, max_len integer) RETURNS text
    LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'tq_check_label';
COMMENT ON FUNCTION tq.check_label(text, text, integer) IS 'Returns the label (tenant, dedup key, worker) if non-empty, short enough and free of control characters; NULL passes.';

/*
 * Bounds check for an interval argument: NULL passes when allowed, zero
 * passes when allowed (meaning "none"), else it must lie within [lo, hi].
 */
CREATE FUNCTION tq.check_interval(p_what text, p_value interval, p_lo interval, p_hi interval,
                                  p_null_ok boolean DEFAULT true, p_zero_ok boolean DEFAULT false)
    RETURNS interval
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_value IS NULL THEN
        IF NOT p_null_ok THEN
            RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
                MESSAGE = format('%s must not be null', p_what);
        END IF;
        RETURN NULL;
    END IF;
    IF p_zero_ok AND p_value = interval '0' THEN
        RETURN p_value;
    END IF;
    IF p_value < p_lo OR p_value > p_hi THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s is out of range', p_what),
            DETAIL = format('The value given is %s; it must lie between %s and %s.', p_value, p_lo, p_hi),
            HINT = CASE WHEN p_zero_ok THEN 'Pass 0 for none.'
                        ELSE format('Pass an interval between %s and %s.', p_lo, p_hi) END;
    END IF;
    RETURN p_value;
END
$$;
COMMENT ON FUNCTION tq.check_interval(text, interval, interval, interval, boolean, boolean) IS 'Raises a clear error unless the interval lies within the given bounds.';

CREATE FUNCTION tq.check_int(p_what text, p_value bigint, p_lo bigint, p_hi bigint, p_null_ok boolean DEFAULT true)
    RETURNS bigint
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_value IS NULL THEN
        IF NOT p_null_ok THEN
            RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
                MESSAGE = format('%s must not be null', p_what);
        END IF;
        RETURN NULL;
    END IF;
    IF p_value < p_lo OR p_value > p_hi THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s is out of range', p_what),
            DETAIL = format('The value given is %s; it must lie between %s and %s.', p_value, p_lo, p_hi);
    END IF;
    RETURN p_value;
END
$$;
COMMENT ON FUNCTION tq.check_int(text, bigint, bigint, bigint, boolean) IS 'Raises a clear error unless the number lies within the given bounds.';

-- tq's own error for a two-dimensional array where a list is expected.
CREATE FUNCTION tq.check_dims(p_what text, p_array anyarray) RETURNS void
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF array_ndims(p_array) > 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'array_subscript_error',
            MESSAGE = format('%s must be a one-dimensional array', p_what),
            DETAIL = format('The array given has %s dimensions.', array_ndims(p_array)),
            HINT = 'Pass one flat array with an element per task, for example ARRAY[1, 2, 3].';
    END IF;
END
$$;
COMMENT ON FUNCTION tq.check_dims(text, anyarray) IS 'Raises a clear error for an array of more than one dimension where a list is expected.';

/*
 * Checks the arrays of a batch call: the ids and attempts are neither NULL
 * nor of more than one dimension (array_position would raise PostgreSQL's
 * own "searching for elements in multidimensional arrays is not
 * supported") nor hold NULL elements, and they and the optional other
 * array are as long as the ids.  Returns that length.
 */
CREATE FUNCTION tq.check_batch(p_ids bigint[], p_attempts integer[], p_other_len integer DEFAULT NULL,
                               p_other_name text DEFAULT NULL)
    RETURNS integer
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    n integer := coalesce(cardinality(p_ids), 0);
BEGIN
    IF p_ids IS NULL OR p_attempts IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'task ids and attempts must not be null',
            HINT = 'Pass the id and the attempt number that tq_lease returned for each task.';
    END IF;
    PERFORM tq.check_dims('task ids', p_ids);
    PERFORM tq.check_dims('attempts', p_attempts);
    IF array_position(p_ids, NULL) IS NOT NULL OR array_position(p_attempts, NULL) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'task ids and attempts must not contain NULL',
            HINT = 'Pass the id and the attempt number that tq_lease returned for each task.';
    END IF;
    IF cardinality(p_attempts) <> n THEN
        RAISE EXCEPTION USING ERRCODE = 'array_subscript_error',
            MESSAGE = 'the arrays of task ids and attempts differ in length',
            DETAIL = format('There are %s ids and %s attempts.', n, cardinality(p_attempts)),
            HINT = 'Pass one attempt number per task id, in the same order.';
    END IF;
    IF p_other_len IS NOT NULL AND p_other_len <> n THEN
        RAISE EXCEPTION USING ERRCODE = 'array_subscript_error',
            MESSAGE = format('the arrays of task ids and %s differ in length', p_other_name),
            DETAIL = format('There are %s ids and %s %s.', n, p_other_len, p_other_name),
            HINT = format('Pass one element of %s per task id, in the same order, or NULL for none.', p_other_name);
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION tq.check_batch(bigint[], integer[], integer, text) IS 'Validates the parallel arrays of a batch call and returns their length.';

------------------------------------------------------------------------------
-- Queues
------------------------------------------------------------------------------

CREATE TABLE tq.queue (
    name            text PRIMARY KEY,
    id              integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    max_attempts    integer NOT NULL DEFAULT 25,
    lease           interval NOT NULL DEFAULT '1 minute',
    backoff_base    interval NOT NULL DEFAULT '1 second',
    backoff_cap     interval NOT NULL DEFAULT '1 hour',
    throttle_limit  integer NOT NULL DEFAULT 20,
    dedup_window    interval NOT NULL DEFAULT '1 day',
    retention       interval NOT NULL DEFAULT '7 days',
    backlog_limit   bigint,
    timeout         interval,
    paused          boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    rate_per_sec    double precision,
    burst           double precision,
    concurrency     integer,
    priority_aging  double precision NOT NULL DEFAULT 1000000
);
COMMENT ON TABLE tq.queue IS 'One row per queue and its options; managed with tq_create_queue, tq_alter_queue and tq_drop_queue.';
COMMENT ON COLUMN tq.queue.name IS 'Queue name: a letter, then letters, digits, _, - or ., at most 63 bytes.';
COMMENT ON COLUMN tq.queue.id IS 'Short number used to name the queue''s history partitions.';
COMMENT ON COLUMN tq.queue.max_attempts IS 'Attempts a task gets before it is dead, unless the submit overrides it.';
COMMENT ON COLUMN tq.queue.lease IS 'How long a lease lasts without a heartbeat (visibility timeout).';
COMMENT ON COLUMN tq.queue.backoff_base IS 'Retry delay window of the first retry; it doubles with each retry up to backoff_cap (full jitter).';
COMMENT ON COLUMN tq.queue.backoff_cap IS 'Largest retry delay window.';
COMMENT ON COLUMN tq.queue.throttle_limit IS 'Throttled failures (retry => ''throttled'') a task may have that do not use up an attempt.';
COMMENT ON COLUMN tq.queue.dedup_window IS 'How long a succeeded task keeps its dedup_key taken.';
COMMENT ON COLUMN tq.queue.retention IS 'How long finished tasks stay in history before their partition is dropped.';
COMMENT ON COLUMN tq.queue.backlog_limit IS 'Most queued (scheduled, ready, paused) tasks the queue accepts; NULL for no limit.';
COMMENT ON COLUMN tq.queue.timeout IS 'Default run-time limit the worker enforces; NULL for none.';
COMMENT ON COLUMN tq.queue.paused IS 'True while the whole queue is paused (tq_pause).';
COMMENT ON COLUMN tq.queue.created_at IS 'When the queue was created.';
COMMENT ON COLUMN tq.queue.rate_per_sec IS 'Most tasks started per second across all workers (token bucket); NULL for no limit.';
COMMENT ON COLUMN tq.queue.burst IS 'Bucket size of rate_per_sec: most tasks started at once after a quiet spell (default: one second''s worth).';
COMMENT ON COLUMN tq.queue.concurrency IS 'Most tasks running at once across all workers; NULL for no limit.';
COMMENT ON COLUMN tq.queue.priority_aging IS 'Bound on priority, in rounds: a task is never overtaken by work whose fair start tag is more than this later.';

-- pg_dump keeps the contents of the tables registered here (extension
-- members are otherwise dumped without data).
SELECT pg_catalog.pg_extension_config_dump('tq.queue', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('tq.queue', 'id'), '');

/*
 * Raise the error for an unknown queue.  Kept in one place so that every
 * entry point says the same thing and points at tq_create_queue.
 */
CREATE FUNCTION tq.no_such_queue(p_queue text) RETURNS void
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'undefined_object',
        MESSAGE = format('queue "%s" does not exist', p_queue),
        HINT = format('Create it first: SELECT tq_create_queue(%L);', p_queue);
END
$$;
COMMENT ON FUNCTION tq.no_such_queue(text) IS 'Raises the unknown-queue error (SQLSTATE 42704) with a hint naming tq_create_queue.';

-- The queue row, or the unknown-queue error.
CREATE FUNCTION tq.get_queue(p_queue text) RETURNS tq.queue
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    q tq.queue;
BEGIN
    IF p_queue IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'queue must not be null',
            HINT = 'Pass the name of a queue created with tq_create_queue.';
    END IF;
    SELECT * INTO q FROM tq.queue WHERE name = p_queue;
    IF NOT FOUND THEN
        PERFORM tq.no_such_queue(p_queue);
    END IF;
    RETURN q;
END
$$;
COMMENT ON FUNCTION tq.get_queue(text) IS 'Returns the queue row; raises a clear error when the queue is NULL or unknown.';

/*
 * The queue row for an operator's call on (queue, tenant): both checked,
 * and with p_lock the row locked, which serialises tq_pause, tq_resume,
 * tq_alter_queue and tq_drop_queue of one queue.
 */
CREATE FUNCTION tq.admin_target(p_queue text, p_tenant text, p_lock boolean) RETURNS tq.queue
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q tq.queue := tq.get_queue(p_queue);
BEGIN
    PERFORM tq.check_label(p_tenant, 'tenant', 200);
    IF p_lock THEN
        SELECT * INTO q FROM tq.queue x WHERE x.name = q.name FOR UPDATE;
    END IF;
    RETURN q;
END
$$;
COMMENT ON FUNCTION tq.admin_target(text, text, boolean) IS 'Checks the queue and tenant of an operator''s call and returns the queue row, locked if asked.';

-- Validates queue options given to tq_create_queue / tq_alter_queue.
CREATE FUNCTION tq.check_queue_options(q tq.queue) RETURNS tq.queue
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM tq.check_int('max_attempts', q.max_attempts, 1, 1000, false);
    PERFORM tq.check_interval('lease', q.lease, '1 second', '7 days', false);
    PERFORM tq.check_interval('backoff_base', q.backoff_base, '1 millisecond', '1 day', false);
    PERFORM tq.check_interval('backoff_cap', q.backoff_cap, '1 millisecond', '30 days', false);
    IF q.backoff_base > q.backoff_cap THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'backoff_base must not exceed backoff_cap',
            DETAIL = format('backoff_base is %s and backoff_cap is %s.', q.backoff_base, q.backoff_cap);
    END IF;
    PERFORM tq.check_int('throttle_limit', q.throttle_limit, 0, 100000, false);
    PERFORM tq.check_interval('dedup_window', q.dedup_window, '0', '366 days', false);
    PERFORM tq.check_interval('retention', q.retention, '1 minute', '100 years', false);
    PERFORM tq.check_int('backlog_limit', q.backlog_limit, 1, 1000000000000);
    PERFORM tq.check_interval('timeout', q.timeout, '1 second', '7 days');
    PERFORM tq.check_limits(q.rate_per_sec, q.burst, q.concurrency);
    -- At least 0.001: the shift priority_aging / 2 * p / (|p| + 1) must
    -- neither underflow nor vanish (extension/fair_entry.c clamps to the same).
    IF q.priority_aging IS NULL OR NOT (q.priority_aging >= 0.001 AND q.priority_aging <= 1e12) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'priority_aging is out of range',
            DETAIL = format('The value given is %s; it must be between 0.001 and 1e12.',
                            coalesce(q.priority_aging::text, 'NULL')),
            HINT = 'priority_aging is a number of rounds; the default is 1000000.';
    END IF;
    RETURN q;
END
$$;
COMMENT ON FUNCTION tq.check_queue_options(tq.queue) IS 'Raises a clear error for any queue option out of range.';

CREATE FUNCTION @extschema@.tq_create_queue(
    name text,
    max_attempts integer DEFAULT 25,
    lease interval DEFAULT '1 minute',
    backoff_base interval DEFAULT '1 second',
    backoff_cap interval DEFAULT '1 hour',
    dedup_window interval DEFAULT '1 day',
    retention interval DEFAULT '7 days',
    backlog_limit bigint DEFAULT NULL,
    timeout interval DEFAULT NULL,
    throttle_limit integer DEFAULT 20,
    if_not_exists boolean DEFAULT false,
    rate_per_sec double precision DEFAULT NULL,
    burst double precision DEFAULT NULL,
    concurrency integer DEFAULT NULL,
    priority_aging double precision DEFAULT 1000000)
    RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    q tq.queue;
BEGIN
    PERFORM tq.check_name(name, 'queue');
    IF EXISTS (SELECT 1 FROM tq.queue x WHERE x.name = tq_create_queue.name) THEN
        IF if_not_exists THEN
            RAISE NOTICE 'queue "%" already exists, skipping', name;
            RETURN false;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'duplicate_object',
            MESSAGE = format('queue "%s" already exists', name),
            HINT = 'Change its options with tq_alter_queue, or pass if_not_exists => true.';
    END IF;
    q.name := name; q.max_attempts := max_attempts; q.lease := lease;
    q.backoff_base := backoff_base; q.backoff_cap := backoff_cap;
    q.dedup_window := dedup_window; q.retention := retention;
    q.backlog_limit := backlog_limit; q.timeout := timeout; q.throttle_limit := throttle_limit;
    q.rate_per_sec := rate_per_sec; q.burst := burst; q.concurrency := concurrency;
    q.priority_aging := priority_aging;
    PERFORM tq.check_queue_options(q);

    INSERT INTO tq.queue (name, max_attempts, lease, backoff_base, backoff_cap, dedup_window,
                          retention, backlog_limit, timeout, throttle_limit,
                          rate_per_sec, burst, concurrency, priority_aging)
    VALUES (q.name, q.max_attempts, q.lease, q.backoff_base, q.backoff_cap, q.dedup_window,
            q.retention, q.backlog_limit, q.timeout, q.throttle_limit,
            q.rate_per_sec, q.burst, q.concurrency, q.priority_aging)
    ON CONFLICT DO NOTHING
    RETURNING * INTO q;
    IF NOT FOUND THEN
        -- A concurrent tq_create_queue of the same name won.
        IF if_not_exists THEN
            RETURN false;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'duplicate_object',
            MESSAGE = format('queue "%s" already exists', name);
    END IF;
    PERFORM tq.ensure_partitions(q);
    PERFORM tq.policy_changed(q.name, NULL, true);
    RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_create_queue(text, integer, interval, interval, interval, interval, interval, bigint, interval, integer, boolean, double precision, double precision, integer, double precision) IS
'Creates a queue with its options (see the columns of tq_queues); returns false if it exists and if_not_exists is true.';

/*
 * NULL leaves an option unchanged.  backlog_limit, timeout, rate_per_sec
 * and concurrency are cleared with 0.
 */
CREATE FUNCTION @extschema@.tq_alter_queue(
    name text,
    max_attempts integer DEFAULT NULL,
    lease interval DEFAULT NULL,
    backoff_base interval DEFAULT NULL,
    backoff_cap interval DEFAULT NULL,
    dedup_window interval DEFAULT NULL,
    retention interval DEFAULT NULL,
    backlog_limit bigint DEFAULT NULL,
    timeout interval DEFAULT NULL,
    throttle_limit integer DEFAULT NULL,
    rate_per_sec double precision DEFAULT NULL,
    burst double precision DEFAULT NULL,
    concurrency integer DEFAULT NULL,
    priority_aging double precision DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    q tq.queue;
BEGIN
    IF name IS NOT NULL THEN
        SELECT * INTO q FROM tq.queue x WHERE x.name = tq_alter_queue.name FOR UPDATE;
    END IF;
    IF q.name IS NULL THEN
        PERFORM tq.get_queue(name);
    END IF;
    IF backlog_limit < 0 THEN
        PERFORM tq.check_int('backlog_limit', backlog_limit, 0, 1000000000000);
    END IF;
    IF concurrency < 0 THEN
        PERFORM tq.check_int('concurrency', concurrency, 0, 1000000);
    END IF;
    q.max_attempts := coalesce(max_attempts, q.max_attempts);
    q.lease := coalesce(lease, q.lease);
    q.backoff_base := coalesce(backoff_base, q.backoff_base);
    q.backoff_cap := coalesce(backoff_cap, q.backoff_cap);
    q.dedup_window := coalesce(dedup_window, q.dedup_window);
    q.retention := coalesce(retention, q.retention);
    q.backlog_limit := CASE WHEN backlog_limit = 0 THEN NULL ELSE coalesce(backlog_limit, q.backlog_limit) END;
    q.timeout := CASE WHEN timeout = interval '0' THEN NULL ELSE coalesce(timeout, q.timeout) END;
    q.throttle_limit := coalesce(throttle_limit, q.throttle_limit);
    q.rate_per_sec := CASE WHEN rate_per_sec = 0 THEN NULL ELSE coalesce(rate_per_sec, q.rate_per_sec) END;
    q.burst := CASE WHEN rate_per_sec = 0 THEN NULL ELSE coalesce(burst, q.burst) END;
    q.concurrency := CASE WHEN concurrency = 0 THEN NULL ELSE coalesce(concurrency, q.concurrency) END;
    q.priority_aging := coalesce(priority_aging, q.priority_aging);
    PERFORM tq.check_queue_options(q);
    UPDATE tq.queue x
       SET max_attempts = q.max_attempts, lease = q.lease, backoff_base = q.backoff_base,
           backoff_cap = q.backoff_cap, dedup_window = q.dedup_window, retention = q.retention,
           backlog_limit = q.backlog_limit, timeout = q.timeout, throttle_limit = q.throttle_limit,
           rate_per_sec = q.rate_per_sec, burst = q.burst, concurrency = q.concurrency,
           priority_aging = q.priority_aging
     WHERE x.name = q.name;
    PERFORM tq.policy_changed(q.name, NULL, true);
END
$$;
COMMENT ON FUNCTION @extschema@.tq_alter_queue(text, integer, interval, interval, interval, interval, interval, bigint, interval, integer, double precision, double precision, integer, double precision) IS
'Changes queue options; NULL leaves an option as it is, 0 clears backlog_limit, timeout, rate_per_sec and concurrency.';

/*
 * Drops a queue with its history partitions, dedup keys and tenant pauses
 * (its tenant policies go with the queue row, ON DELETE CASCADE), and with
 * its live tasks when forced.  tq.forget_activity zeroes the queue's
 * activity counters at commit, so that a queue made again under the same
 * name does not show the dropped one's activity in tq_queue_activity.
 */
CREATE FUNCTION @extschema@.tq_drop_queue(name text, force boolean DEFAULT false)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    q tq.queue;
    live bigint;
BEGIN
    q := tq.get_queue(name);
    PERFORM 1 FROM tq.queue x WHERE x.name = q.name FOR UPDATE;
    SELECT count(*) INTO live FROM tq.task t WHERE t.queue = q.name;
    IF live > 0 AND NOT coalesce(force, false) THEN
        RAISE EXCEPTION USING ERRCODE = 'object_in_use',
            MESSAGE = format('queue "%s" still has %s live tasks', q.name, live),
            DETAIL = 'Live tasks are scheduled, ready, paused or running.',
            HINT = 'Wait for them to finish, cancel them with tq_cancel, or drop the queue and its tasks with force => true.';
    END IF;
    DELETE FROM tq.task t WHERE t.queue = q.name;
    EXECUTE format('DROP TABLE IF EXISTS tq.%I', format('history_q%s', q.id));
    DELETE FROM tq.history_part h WHERE h.queue = q.name;
    DELETE FROM tq.dedup d WHERE d.queue = q.name;
    DELETE FROM tq.tenant_pause p WHERE p.queue = q.name;
    DELETE FROM tq.queue x WHERE x.name = q.name;
    PERFORM tq.forget_activity(q.name);
END
$$;
COMMENT ON FUNCTION @extschema@.tq_drop_queue(text, boolean) IS
'Drops a queue with its history and dedup keys. Refuses while it has live tasks unless force => true, which deletes them.';

------------------------------------------------------------------------------
-- Tenant binding (extension/access.c)
------------------------------------------------------------------------------

/*
 * Roles bound to tenants.  A role with rows here is bound: it may submit
 * as, read, wait on and cancel the tasks of these tenants only, in the
 * queue named or (queue NULL) in every queue.  A role without rows is
 * unbound and keeps what tq_producer, tq_worker and tq_admin give it;
 * members of tq_admin are never bound.  The caller is the session's role
 * (the one SET ROLE chose, else the login role), see tq.caller().
 */
CREATE TABLE tq.tenant_grant (
    role        regrole NOT NULL,
    tenant      text NOT NULL,
    queue       text,
    granted_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX tenant_grant_key ON tq.tenant_grant (role, tenant, coalesce(queue, ''));
COMMENT ON TABLE tq.tenant_grant IS 'Roles bound to tenants (tq_grant_tenant): a bound role submits as, reads, waits on and cancels only these tenants'' tasks.';
COMMENT ON COLUMN tq.tenant_grant.role IS 'The bound role.';
COMMENT ON COLUMN tq.tenant_grant.tenant IS 'A tenant the role may act as.';
COMMENT ON COLUMN tq.tenant_grant.queue IS 'The queue the grant holds in; NULL: every queue.';
COMMENT ON COLUMN tq.tenant_grant.granted_at IS 'When the grant was made.';
SELECT pg_catalog.pg_extension_config_dump('tq.tenant_grant', '');

CREATE FUNCTION tq.caller() RETURNS oid
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'tq_caller';
COMMENT ON FUNCTION tq.caller() IS 'The role tq acts for: the role SET ROLE chose, else the login role; SECURITY DEFINER functions do not change it.';

CREATE FUNCTION tq.caller_bound() RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'tq_caller_bound';
COMMENT ON FUNCTION tq.caller_bound() IS 'Whether the caller is bound to tenants (has tq_grant_tenant grants and is not a tq_admin).';

CREATE FUNCTION tq.tenant_allowed(queue text, tenant text) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'tq_tenant_allowed';
COMMENT ON FUNCTION tq.tenant_allowed(text, text) IS 'Whether the caller may act as this tenant in this queue: always when unbound, else for its granted tenants only (a task without a tenant belongs to no bound role).';

CREATE FUNCTION tq.check_tenant(queue text, tenant text) RETURNS void
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'tq_check_tenant';
COMMENT ON FUNCTION tq.check_tenant(text, text) IS 'Raises 42501 unless the caller may submit as this tenant to this queue.';

CREATE FUNCTION tq.lease_token() RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL SAFE AS 'MODULE_PATHNAME', 'tq_lease_token';
COMMENT ON FUNCTION tq.lease_token() IS 'A random lease token in [1, 2^63 - 1] (pg_strong_random): tq_lease gives one to each lease.';

CREATE FUNCTION tq.grants_changed() RETURNS void
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tq_grants_changed';
COMMENT ON FUNCTION tq.grants_changed() IS 'Makes every session read tq.tenant_grant again once this transaction commits.';

CREATE FUNCTION @extschema@.tq_grant_tenant(role regrole, tenant text, queue text DEFAULT NULL)
    RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    IF tq_grant_tenant.role IS NULL OR tq_grant_tenant.tenant IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'role and tenant must not be null',
            HINT = 'For example: tq_grant_tenant(''shop_a_app'', ''shop_a'').';
    END IF;
    PERFORM tq.check_label(tq_grant_tenant.tenant, 'tenant', 200);
    IF tq_grant_tenant.queue IS NOT NULL THEN
        PERFORM tq.get_queue(tq_grant_tenant.queue);
    END IF;
    IF pg_catalog.pg_has_role(tq_grant_tenant.role, 'tq_admin', 'USAGE') THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_grant_operation',
            MESSAGE = format('role "%s" is a member of tq_admin and cannot be bound to tenants',
                             tq_grant_tenant.role),
            DETAIL = 'Members of tq_admin act on every tenant''s tasks; a binding would not restrict them.',
            HINT = 'Bind a role that is not a member of tq_admin, for example the application''s login role.';
    END IF;
    INSERT INTO tq.tenant_grant (role, tenant, queue)
    VALUES (tq_grant_tenant.role, tq_grant_tenant.tenant, tq_grant_tenant.queue)
    ON CONFLICT (role, tenant, (coalesce(queue, ''))) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM tq.grants_changed();
    RETURN n > 0;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_grant_tenant(regrole, text, text) IS
'Binds a role to a tenant, in one queue or (queue NULL) in all: a bound role submits as, reads, waits on and cancels only its tenants'' tasks. False if the grant existed already.';

CREATE FUNCTION @extschema@.tq_revoke_tenant(role regrole, tenant text DEFAULT NULL, queue text DEFAULT NULL)
    RETURNS integer
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    n integer;
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'role must not be null',
            HINT = 'Name the role whose grants to remove; tenant and queue narrow it down.';
    END IF;
    DELETE FROM tq.tenant_grant g
     WHERE g.role = role
       AND (tenant IS NULL OR g.tenant = tenant)
       AND (queue IS NULL OR g.queue = queue);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM tq.grants_changed();
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_revoke_tenant(regrole, text, text) IS
'Removes a role''s tenant grants (all of them, or those of one tenant and/or queue); returns how many. A role left without grants is unbound again.';

-- The grants a caller may see: all for tq_admin, its own for a bound role.
CREATE FUNCTION tq.tenant_grants(OUT role regrole, OUT tenant text, OUT queue text, OUT granted_at timestamptz)
    RETURNS SETOF record
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT g.role, g.tenant, g.queue, g.granted_at FROM tq.tenant_grant g
     WHERE g.role = tq.caller() OR pg_catalog.pg_has_role(tq.caller(), 'tq_admin', 'USAGE')
$$;
COMMENT ON FUNCTION tq.tenant_grants() IS 'The tenant grants the caller may see: every grant for tq_admin, its own otherwise.';

------------------------------------------------------------------------------
-- Live tasks
------------------------------------------------------------------------------

CREATE SEQUENCE tq.task_id_seq AS bigint;
COMMENT ON SEQUENCE tq.task_id_seq IS 'Task ids; also the submission order used as tie-breaker in dispatch.';

/*
 * The hot table.  Autovacuum is set to keep up with a queue's churn:
 * every lease and finish leaves a dead tuple and dead index entries at
 * the head of task_dispatch_idx, and skipping them is the main cost of a
 * SKIP LOCKED queue that is not vacuumed often enough.
 */
CREATE TABLE tq.task (
    id               bigint PRIMARY KEY DEFAULT nextval('tq.task_id_seq'),
    queue            text NOT NULL,
    state            tq.task_state NOT NULL,
    priority         smallint NOT NULL DEFAULT 0,
    tenant           text,
    payload          jsonb NOT NULL,
    dedup_key        text,
    run_at           timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz,
    timeout          interval,
    max_attempts     integer NOT NULL,
    attempt          integer NOT NULL DEFAULT 0,
    free_attempts    integer NOT NULL DEFAULT 0,
    throttles        integer NOT NULL DEFAULT 0,
    worker           text,
    lease_until      timestamptz,
    lease_duration   interval,
    cancel_requested boolean NOT NULL DEFAULT false,
    last_error       text,
    submitted_at     timestamptz NOT NULL DEFAULT now(),
    first_started_at timestamptz,
    started_at       timestamptz,
    vkey             double precision,
    log              jsonb,
    trace            jsonb,
    traceparent      text,
    lease_token      bigint,
    leased_by        oid,
    CHECK (state IN ('scheduled', 'ready', 'paused', 'running'))
) WITH (autovacuum_vacuum_scale_factor = 0.0,
        autovacuum_vacuum_threshold = 5000,
        autovacuum_vacuum_insert_scale_factor = 0.0,
        autovacuum_vacuum_insert_threshold = 50000,
        autovacuum_vacuum_cost_delay = 0);
ALTER SEQUENCE tq.task_id_seq OWNED BY tq.task.id;
COMMENT ON TABLE tq.task IS 'Live tasks (scheduled, ready, paused, running); finished tasks move to tq.history.';
COMMENT ON COLUMN tq.task.id IS 'Task id, from tq.task_id_seq; also the tie-breaker of dispatch order.';
COMMENT ON COLUMN tq.task.queue IS 'Queue the task belongs to.';
COMMENT ON COLUMN tq.task.state IS 'scheduled, ready, paused or running; finished tasks are in tq.history.';
COMMENT ON COLUMN tq.task.priority IS 'Higher is leased first.';
COMMENT ON COLUMN tq.task.tenant IS 'Tenant the task belongs to (NULL: none).';
COMMENT ON COLUMN tq.task.payload IS 'The JSON object given at submit.';
COMMENT ON COLUMN tq.task.dedup_key IS 'Deduplication key (NULL: none); see tq.dedup.';
COMMENT ON COLUMN tq.task.run_at IS 'Not leased before this time; for a retry, when the backoff ends.';
COMMENT ON COLUMN tq.task.expires_at IS 'Deadline to start: still queued then, the task expires.';
COMMENT ON COLUMN tq.task.timeout IS 'Run-time limit for the worker (NULL: the queues).';
COMMENT ON COLUMN tq.task.max_attempts IS 'Attempts the task gets before it is dead.';
COMMENT ON COLUMN tq.task.attempt IS 'Times the task has been leased; the fencing token every lease-holder call must quote.';
COMMENT ON COLUMN tq.task.free_attempts IS 'Leases that do not count against max_attempts (throttled failures, releases, manual retries).';
COMMENT ON COLUMN tq.task.throttles IS 'Throttled failures so far, bounded by the queue''s throttle_limit.';
COMMENT ON COLUMN tq.task.worker IS 'Worker holding (or that last held) the lease.';
COMMENT ON COLUMN tq.task.lease_until IS 'When the current lease runs out unless extended.';
COMMENT ON COLUMN tq.task.lease_duration IS 'Length of the current lease; each heartbeat extends the lease by it.';
COMMENT ON COLUMN tq.task.cancel_requested IS 'Set by tq_cancel on a running task; the next heartbeat reports it to the worker.';
COMMENT ON COLUMN tq.task.last_error IS 'Error of the last failed attempt.';
COMMENT ON COLUMN tq.task.submitted_at IS 'When the task was submitted.';
COMMENT ON COLUMN tq.task.first_started_at IS 'When it was first leased.';
COMMENT ON COLUMN tq.task.started_at IS 'When the current (or last) attempt was leased.';
COMMENT ON COLUMN tq.task.vkey IS 'Fair dispatch key, set when the task becomes ready: its start tag in the queue''s virtual time minus its priority shift. tq_lease claims the lowest first.';
COMMENT ON COLUMN tq.task.log IS 'Log lines the workers reported, oldest first, as [attempt, line] pairs; the last 1000 are kept (tq_task_log).';
COMMENT ON COLUMN tq.task.trace IS 'The attempts that ended without finishing the task (failed, throttled, released), oldest first: attempt, ready_at, leased_at, worker, ended_at, outcome, error. Appended by the tq.task trigger; the last attempt is the row itself (tq_task_trace shows both).';
COMMENT ON COLUMN tq.task.traceparent IS 'W3C traceparent the task carries to its handler (from the submit''s traceparent argument or the tq.traceparent setting); NULL: none.';
COMMENT ON COLUMN tq.task.lease_token IS 'Random token of the current lease (tq.lease_token): cannot be guessed, and not handed out again after a crash that lost a lease''s commit, as an attempt number can be.';
COMMENT ON COLUMN tq.task.leased_by IS 'Role that holds the current lease (tq.caller() of tq_lease): only it, or a tq_admin, may complete, fail, release, extend or log into it.';

/*
 * No planner statistics on the JSON columns.  No query of tq filters or
 * joins on payload, log or trace, and ANALYZE sorting their values was
 * most of its cost: with traces, ANALYZE of a history partition took 60 %
 * longer than in 0.4.0 (autovacuum's work in make bench's row 11); with
 * these columns left out, it costs less than 0.4.0's did.  The same for
 * tq.history, below.
 */
ALTER TABLE tq.task
    ALTER COLUMN payload SET STATISTICS 0,
    ALTER COLUMN log SET STATISTICS 0,
    ALTER COLUMN trace SET STATISTICS 0;

-- Dispatch order: the fair key (see tq.task_row), then submission order.
CREATE INDEX task_dispatch_idx ON tq.task (queue, vkey, id) WHERE state = 'ready';
-- Promotion of due scheduled tasks.
CREATE INDEX task_scheduled_idx ON tq.task (queue, run_at) WHERE state = 'scheduled';
-- The background worker sleeps until the earliest due run_at over all queues.
CREATE INDEX task_due_idx ON tq.task (run_at) WHERE state = 'scheduled';
/*
 * Reclaim of expired leases.  The index serves only the lease-expiry scans
 * (lease_until < now(), ORDER BY lease_until), whose conditions imply its
 * predicate.  Under a predicate of state = 'running' alone, any query that
 * named that state could use it: with statistics taken while few tasks
 * ran, tq_complete, tq_fail, tq_release and tq_heartbeat planned a scan of
 * every running task (and of the dead entries of tasks just finished) to
 * find a few by id, instead of the primary key.  Running tasks always have
 * lease_until, so the index holds the same entries.
 */
CREATE INDEX task_running_idx ON tq.task (lease_until)
    WHERE state = 'running' AND lease_until IS NOT NULL;
-- Resume of paused tasks; parked tasks come back in key order.
CREATE INDEX task_paused_idx ON tq.task (queue, tenant, vkey) WHERE state = 'paused';
-- Expiry of tasks that did not start in time.
CREATE INDEX task_expires_idx ON tq.task (expires_at) WHERE expires_at IS NOT NULL AND state <> 'running';

SELECT pg_catalog.pg_extension_config_dump('tq.task', '');
SELECT pg_catalog.pg_extension_config_dump('tq.task_id_seq', '');

------------------------------------------------------------------------------
-- History: finished tasks
------------------------------------------------------------------------------

/*
 * Finished tasks.  LIST by queue, then RANGE by finished_at inside each
 * queue, so that per-queue retention drops whole partitions (see
 * tq.ensure_partitions).  Each queue's range table also has a DEFAULT
 * partition as a safety net for rows that arrive before maintenance has
 * created their partition.
 */
CREATE TABLE tq.history (
    id               bigint NOT NULL,
    queue            text NOT NULL,
    state            tq.task_state NOT NULL,
    priority         smallint NOT NULL,
    tenant           text,
    payload          jsonb NOT NULL,
    result           jsonb,
    last_error       text,
    dedup_key        text,
    run_at           timestamptz NOT NULL,
    expires_at       timestamptz,
    timeout          interval,
    max_attempts     integer NOT NULL,
    attempt          integer NOT NULL,
    free_attempts    integer NOT NULL,
    throttles        integer NOT NULL,
    worker           text,
    submitted_at     timestamptz NOT NULL,
    first_started_at timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz NOT NULL,
    log              jsonb,
    trace            jsonb,
    traceparent      text
) PARTITION BY LIST (queue);
COMMENT ON TABLE tq.history IS 'Finished tasks (succeeded, dead, cancelled, expired), partitioned by queue and finish time; retention drops old partitions.';
COMMENT ON COLUMN tq.history.id IS 'Task id, from tq.task_id_seq; also the tie-breaker of dispatch order.';
COMMENT ON COLUMN tq.history.queue IS 'Queue the task belongs to.';
COMMENT ON COLUMN tq.history.state IS 'Final state: succeeded, dead, cancelled or expired.';
COMMENT ON COLUMN tq.history.priority IS 'Higher is leased first.';
COMMENT ON COLUMN tq.history.tenant IS 'Tenant the task belongs to (NULL: none).';
COMMENT ON COLUMN tq.history.payload IS 'The JSON object given at submit.';
COMMENT ON COLUMN tq.history.result IS 'Result the worker reported on success.';
COMMENT ON COLUMN tq.history.last_error IS 'Error of the last failed attempt (the reason a dead task died).';
COMMENT ON COLUMN tq.history.dedup_key IS 'Deduplication key (NULL: none); see tq.dedup.';
COMMENT ON COLUMN tq.history.run_at IS 'Not leased before this time; for a retry, when the backoff ends.';
COMMENT ON COLUMN tq.history.expires_at IS 'Deadline to start: still queued then, the task expires.';
COMMENT ON COLUMN tq.history.timeout IS 'Run-time limit for the worker (NULL: the queues).';
COMMENT ON COLUMN tq.history.max_attempts IS 'Attempts the task gets before it is dead.';
COMMENT ON COLUMN tq.history.attempt IS 'Times the task was leased.';
COMMENT ON COLUMN tq.history.free_attempts IS 'Leases that did not count against max_attempts.';
COMMENT ON COLUMN tq.history.throttles IS 'Throttled failures.';
COMMENT ON COLUMN tq.history.worker IS 'Worker holding (or that last held) the lease.';
COMMENT ON COLUMN tq.history.submitted_at IS 'When the task was submitted.';
COMMENT ON COLUMN tq.history.first_started_at IS 'When it was first leased.';
COMMENT ON COLUMN tq.history.started_at IS 'When the current (or last) attempt was leased.';
COMMENT ON COLUMN tq.history.finished_at IS 'When the task finished; the partition key within the queue.';
COMMENT ON COLUMN tq.history.log IS 'The task''s log lines, kept from tq.task (tq_task_log).';
COMMENT ON COLUMN tq.history.trace IS 'The task''s per-attempt trace, kept from tq.task (tq_task_trace).';
COMMENT ON COLUMN tq.history.traceparent IS 'The task''s W3C traceparent, kept from tq.task; NULL: none.';
-- No indexes on the partitioned parent: each leaf gets its own from
-- tq.index_history_leaf.  A partitioned index on this extension-owned table
-- would be recreated on the runtime-made partitions by pg_dump's ATTACH and
-- then created again by the dump, failing the restore.

-- As on tq.task, and the result.  ALTER TABLE on the parent reaches every
-- existing partition; tq.index_history_leaf does it for each new one
-- (CREATE TABLE ... LIKE and PARTITION OF do not copy a column's
-- statistics target).
ALTER TABLE tq.history
    ALTER COLUMN payload SET STATISTICS 0,
    ALTER COLUMN result SET STATISTICS 0,
    ALTER COLUMN log SET STATISTICS 0,
    ALTER COLUMN trace SET STATISTICS 0;

CREATE TABLE tq.history_part (
    queue   text NOT NULL,
    relname name NOT NULL,
    lo      timestamptz NOT NULL,
    hi      timestamptz NOT NULL,
    PRIMARY KEY (queue, lo)
);
COMMENT ON TABLE tq.history_part IS 'The time-range partitions of tq.history that maintenance created, with their bounds.';
COMMENT ON COLUMN tq.history_part.queue IS 'Queue whose history the partition holds.';
COMMENT ON COLUMN tq.history_part.relname IS 'Partition table, in schema tq.';
COMMENT ON COLUMN tq.history_part.lo IS 'First finished_at the partition holds.';
COMMENT ON COLUMN tq.history_part.hi IS 'First finished_at it no longer holds.';
SELECT pg_catalog.pg_extension_config_dump('tq.history_part', '');

/*
 * History partitions of one queue.
 *
 * Width: one hour when the queue's retention is at most a day, else one
 * day, aligned in UTC.  A finished task is therefore kept for at least
 * its retention and at most retention + width.  Partitions are created
 * from the current period to two widths ahead; a row that arrives in a
 * period without a partition lands in the queue's DEFAULT partition and
 * is moved into the partition when maintenance creates it.
 */
CREATE FUNCTION tq.partition_width(p_retention interval) RETURNS interval
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_retention <= interval '1 day' THEN interval '1 hour' ELSE interval '1 day' END
$$;
COMMENT ON FUNCTION tq.partition_width(interval) IS 'Time span of one history partition for a queue with this retention.';

-- The indexes of one history leaf: by id (tq_task, tq_retry) and dead tasks
-- by finish time (the dead-letter view); and the statistics targets of the
-- parent's JSON columns.
CREATE FUNCTION tq.index_history_leaf(p_leaf text) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    EXECUTE format('CREATE INDEX ON tq.%I (id)', p_leaf);
    EXECUTE format('CREATE INDEX ON tq.%I (finished_at) WHERE state = ''dead''', p_leaf);
    EXECUTE format('ALTER TABLE tq.%I ALTER COLUMN payload SET STATISTICS 0, '
                   'ALTER COLUMN result SET STATISTICS 0, ALTER COLUMN log SET STATISTICS 0, '
                   'ALTER COLUMN trace SET STATISTICS 0', p_leaf);
END
$$;
COMMENT ON FUNCTION tq.index_history_leaf(text) IS 'Creates the indexes of a history partition and leaves its JSON columns out of ANALYZE.';

CREATE FUNCTION tq.ensure_partitions(p_queue tq.queue) RETURNS integer
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    width interval := tq.partition_width(p_queue.retention);
    unit text := CASE WHEN width = interval '1 hour' THEN 'hour' ELSE 'day' END;
    parent text := format('history_q%s', p_queue.id);
    lo timestamptz;
    hi timestamptz;
    part text;
    made integer := 0;
BEGIN
    IF to_regclass(format('tq.%I', parent)) IS NULL THEN
        EXECUTE format('CREATE TABLE tq.%I PARTITION OF tq.history FOR VALUES IN (%L) PARTITION BY RANGE (finished_at)',
                       parent, p_queue.name);
        EXECUTE format('CREATE TABLE tq.%I PARTITION OF tq.%I DEFAULT', parent || '_default', parent);
        PERFORM tq.index_history_leaf(parent || '_default');
    END IF;

    SELECT max(h.hi) INTO lo FROM tq.history_part h WHERE h.queue = p_queue.name;
    lo := greatest(lo, date_trunc(unit, now(), 'UTC'));
    WHILE lo < now() + 2 * width LOOP
        hi := lo + width;
        part := format('%s_%s', parent, to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD_HH24'));
        EXECUTE format('CREATE TABLE tq.%I (LIKE tq.history)', part);
        PERFORM tq.index_history_leaf(part);
        -- Rows that landed in the default partition for this period move in.
        EXECUTE format('WITH m AS (DELETE FROM tq.%I WHERE finished_at >= $1 AND finished_at < $2 RETURNING *) '
                       'INSERT INTO tq.%I SELECT * FROM m', parent || '_default', part)
            USING lo, hi;
        EXECUTE format('ALTER TABLE tq.%I ATTACH PARTITION tq.%I FOR VALUES FROM (%L) TO (%L)',
                       parent, part, lo, hi);
        INSERT INTO tq.history_part (queue, relname, lo, hi) VALUES (p_queue.name, part, lo, hi);
        made := made + 1;
        lo := hi;
    END LOOP;
    RETURN made;
END
$$;
COMMENT ON FUNCTION tq.ensure_partitions(tq.queue) IS 'Creates the queue''s history partitions up to two periods ahead; returns how many were created.';

CREATE FUNCTION tq.apply_retention(p_queue tq.queue) RETURNS bigint
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    p record;
    dropped bigint := 0;
    n bigint;
BEGIN
    FOR p IN SELECT * FROM tq.history_part h
             WHERE h.queue = p_queue.name AND h.hi <= now() - p_queue.retention
             ORDER BY h.lo
    LOOP
        EXECUTE format('SELECT count(*) FROM tq.%I', p.relname) INTO n;
        EXECUTE format('DROP TABLE tq.%I', p.relname);
        DELETE FROM tq.history_part h WHERE h.queue = p.queue AND h.lo = p.lo;
        dropped := dropped + n;
    END LOOP;
    EXECUTE format('DELETE FROM tq.%I WHERE finished_at < $1', format('history_q%s_default', p_queue.id))
        USING now() - p_queue.retention;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN dropped + n;
END
$$;
COMMENT ON FUNCTION tq.apply_retention(tq.queue) IS 'Drops the queue''s history partitions older than its retention; returns how many tasks went with them.';

------------------------------------------------------------------------------
-- Deduplication
------------------------------------------------------------------------------

/*
 * Deduplication keys, unique per queue and tenant (0.7.0: a tenant that
 * took a key first made another tenant's submit of the same key return
 * its task).  A row exists while its task is live (until =
 * infinity) and for the queue's dedup_window after it succeeded.  The
 * primary key makes concurrent submits of one key race-free: the second
 * waits for the first and then sees its row (INSERT ... ON CONFLICT).
 * The row outlives the task's move to history, which is why dedup is not
 * a unique index on tq.task.
 */
CREATE TABLE tq.dedup (
    queue       text NOT NULL,
    dedup_key   text NOT NULL,
    task_id     bigint NOT NULL,
    until       timestamptz NOT NULL DEFAULT 'infinity',
    tenant      text NOT NULL DEFAULT '',
    PRIMARY KEY (queue, tenant, dedup_key)
);
COMMENT ON TABLE tq.dedup IS 'Taken deduplication keys: held while the task is live and for dedup_window after it succeeded. A key is unique per queue and tenant.';
COMMENT ON COLUMN tq.dedup.queue IS 'Queue the key is unique in.';
COMMENT ON COLUMN tq.dedup.dedup_key IS 'The key.';
COMMENT ON COLUMN tq.dedup.task_id IS 'Task holding the key.';
COMMENT ON COLUMN tq.dedup.until IS 'infinity while the task is live; after success, when the key becomes free.';
COMMENT ON COLUMN tq.dedup.tenant IS 'Tenant the key is unique in ('''' for tasks without a tenant): one tenant''s key never returns another tenant''s task.';
CREATE INDEX dedup_until_idx ON tq.dedup (until) WHERE until <> 'infinity';
SELECT pg_catalog.pg_extension_config_dump('tq.dedup', '');

------------------------------------------------------------------------------
-- Submit
------------------------------------------------------------------------------

-- In C (extension/shmem.c): at most one wake-up per queue and transaction.
CREATE FUNCTION tq.wake(queue text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'tq_wake';
COMMENT ON FUNCTION tq.wake(text) IS 'Wakes idle workers of a queue once the transaction commits: the background worker sends NOTIFY tq_ready (this transaction does when no worker serves the database). Off with tq.producer_notify.';

/*
 * Validates the per-task options shared by tq_submit and tq_submit_many
 * and returns the initial state: scheduled if run_at lies ahead, paused if
 * the queue or tenant is paused, else ready.
 */
CREATE FUNCTION tq.check_submit(q tq.queue, p_run_at timestamptz, p_priority integer, p_tenant text,
                                p_max_attempts integer, p_timeout interval, p_expires_at timestamptz)
    RETURNS tq.task_state
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_priority IS NULL OR p_priority < -32768 OR p_priority > 32767 THEN
        PERFORM tq.check_int('priority', p_priority, -32768, 32767, false);
    END IF;
    IF p_max_attempts IS NOT NULL AND (p_max_attempts < 1 OR p_max_attempts > 1000) THEN
        PERFORM tq.check_int('max_attempts', p_max_attempts, 1, 1000);
    END IF;
    IF p_timeout IS NOT NULL THEN
        PERFORM tq.check_interval('timeout', p_timeout, '1 second', '7 days');
    END IF;
    IF p_tenant IS NOT NULL THEN
        PERFORM tq.check_label(p_tenant, 'tenant', 200);
    END IF;
    -- A role bound to tenants submits as one of them (extension/access.c).
    PERFORM tq.check_tenant(q.name, p_tenant);
    -- A task that never comes due would hold its dedup key and its shared
    -- entry for good.
    IF NOT p_run_at < now() + interval '10 years' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'run_at is too far in the future',
            DETAIL = format('run_at is %s; it must lie less than 10 years ahead.', p_run_at),
            HINT = 'Schedule the task nearer; for something that far off, keep a row of your own and submit later.';
    END IF;
    IF p_expires_at IS NOT NULL AND p_expires_at <= greatest(now(), p_run_at) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'expires_at must lie after run_at and after now',
            DETAIL = format('expires_at is %s, run_at is %s and now is %s.',
                            p_expires_at, coalesce(p_run_at, now()), now()),
            HINT = 'A task that expires before it may run would never run; drop expires_at or move it later.';
    END IF;
    -- tq.is_paused spelled out: called from PL/pgSQL the SQL helper is
    -- not inlined and was a third of a submit's cost.
    IF p_run_at > now() THEN
        RETURN 'scheduled';
    ELSIF q.paused THEN
        RETURN 'paused';
    ELSIF p_tenant IS NOT NULL
          AND EXISTS (SELECT 1 FROM tq.tenant_pause p WHERE p.queue = q.name AND p.tenant = p_tenant) THEN
        RETURN 'paused';
    END IF;
    RETURN 'ready';
END
$$;
COMMENT ON FUNCTION tq.check_submit(tq.queue, timestamptz, integer, text, integer, interval, timestamptz) IS 'Validates submit options and returns the state a new task starts in.';

-- The W3C traceparent check, in C (extension/traceparent.c).
CREATE FUNCTION tq.submit_traceparent(traceparent text) RETURNS text
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'tq_submit_traceparent';
COMMENT ON FUNCTION tq.submit_traceparent(text) IS 'The traceparent a task submitted now gets: the argument if not NULL (checked, 22023 if malformed; '''' means none), else the tq.traceparent setting; NULL for none.';

/*
 * tq_submit is C (extension/submit.c): the common case -- an existing
 * queue, no dedup key, no delay, no expiry or timeout -- is two kept SPI
 * plans, read the queue and insert the row.  Every other call, and every
 * error, goes to tq.submit_slow with the same arguments, so there is one
 * definition of each rule and each message.
 *
 * A task's traceparent is the argument, or when that is NULL the setting
 * tq.traceparent (an application sets it once per request, and every
 * task it submits carries it, through triggers and functions too).
 *
 * Backlog limits are checked by the insert's trigger (tq.task_row), after
 * dedup, so a producer retrying an idempotent submit gets its id back even
 * from a full queue.
 */
CREATE FUNCTION tq.submit_slow(
    queue text,
    payload jsonb DEFAULT '{}',
    run_at timestamptz DEFAULT NULL,
    priority integer DEFAULT 0,
    tenant text DEFAULT NULL,
    dedup_key text DEFAULT NULL,
    max_attempts integer DEFAULT NULL,
    timeout interval DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL,
    traceparent text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    q tq.queue;
    v_state tq.task_state;
    v_id bigint;
    v_owner bigint;
    v_traceparent text;
BEGIN
    SELECT * INTO q FROM tq.queue x WHERE x.name = queue;
    IF NOT FOUND THEN
        PERFORM tq.get_queue(queue);
    END IF;
    PERFORM tq.check_payload(payload);
    v_state := tq.check_submit(q, run_at, priority, tenant, max_attempts, timeout, expires_at);
    v_traceparent := tq.submit_traceparent(traceparent);
    v_id := nextval('tq.task_id_seq');

    IF dedup_key IS NOT NULL THEN
        PERFORM tq.check_label(dedup_key, 'dedup_key', 512);
        -- Take the key, or find who holds it.  A concurrent submit of the
        -- same key waits here for ours to commit or roll back.
        INSERT INTO tq.dedup AS d (queue, tenant, dedup_key, task_id)
        VALUES (q.name, coalesce(tenant, ''), dedup_key, v_id)
        ON CONFLICT ON CONSTRAINT dedup_pkey DO UPDATE
            SET task_id = excluded.task_id, until = 'infinity'
            WHERE d.until < now()
        RETURNING d.task_id INTO v_owner;
        IF v_owner IS NULL THEN
            SELECT d.task_id INTO v_owner FROM tq.dedup d
             WHERE d.queue = q.name AND d.tenant = coalesce(submit_slow.tenant, '')
               AND d.dedup_key = submit_slow.dedup_key;
            RETURN v_owner;
        END IF;
    END IF;
    -- Backlog limits: checked by the insert's trigger (tq.task_row), after
    -- dedup, so a producer retrying an idempotent submit gets its id back
    -- even from a full queue.

    INSERT INTO tq.task (id, queue, state, priority, tenant, payload, dedup_key, run_at,
                         expires_at, timeout, max_attempts, traceparent)
    VALUES (v_id, q.name, v_state, priority, tenant, payload, dedup_key,
            greatest(coalesce(run_at, now()), now()), expires_at, timeout,
            coalesce(max_attempts, q.max_attempts), v_traceparent);
    IF v_state = 'ready' THEN
        PERFORM tq.wake(q.name);
    END IF;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION tq.submit_slow(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz, text) IS 'The full definition of tq_submit: every option, every check and error; tq_submit (C) hands it every call but the common case.';

/*
 * SECURITY DEFINER without a SET clause: the queries of extension/submit.c
 * name every table, type and operator with its schema, so the caller's
 * search_path cannot change what they mean; tq.submit_slow pins
 * search_path for the rest.
 */
CREATE FUNCTION @extschema@.tq_submit(
    queue text,
    payload jsonb DEFAULT '{}',
    run_at timestamptz DEFAULT NULL,
    priority integer DEFAULT 0,
    tenant text DEFAULT NULL,
    dedup_key text DEFAULT NULL,
    max_attempts integer DEFAULT NULL,
    timeout interval DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL,
    traceparent text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE c VOLATILE SECURITY DEFINER AS 'MODULE_PATHNAME', 'tq_submit_fast_0_6';
COMMENT ON FUNCTION @extschema@.tq_submit(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz, text) IS
'Submits a task (payload: a JSON object) and returns its id. Options: run_at (not before), priority (higher first), tenant, dedup_key (a duplicate of a live or recently succeeded task of the same tenant returns that task''s id), max_attempts, timeout (run-time limit for the worker), expires_at (give up if not started by then), traceparent (W3C trace context handed to the worker; NULL: the tq.traceparent setting, '''': none). Visible to workers when the calling transaction commits.';

/*
 * Submits many tasks in one statement: one row per payload, ids returned
 * in payload order.  Options apply to every task except dedup_keys, which
 * is parallel to payloads (NULL elements: no key); one traceparent for
 * the whole batch (NULL: the tq.traceparent setting).  Within one batch,
 * the first payload with a key wins and later ones get its id.
 */
CREATE FUNCTION @extschema@.tq_submit_many(
    queue text,
    payloads jsonb[],
    run_at timestamptz DEFAULT NULL,
    priority integer DEFAULT 0,
    tenant text DEFAULT NULL,
    dedup_keys text[] DEFAULT NULL,
    max_attempts integer DEFAULT NULL,
    timeout interval DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL,
    traceparent text DEFAULT NULL)
    RETURNS bigint[]
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    q tq.queue;
    v_state tq.task_state;
    v_traceparent text;
    v_ids bigint[];
    v_owners bigint[];
    v_bad integer;
    n integer;
BEGIN
    q := tq.get_queue(queue);
    IF payloads IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'payloads must not be null',
            HINT = 'Pass an array of JSON objects, for example ARRAY[''{}''::jsonb].';
    END IF;
    n := coalesce(cardinality(payloads), 0);
    IF n = 0 THEN
        RETURN '{}';
    END IF;
    IF n > 10000000 THEN
        PERFORM tq.check_int('number of payloads', n, 1, 10000000);
    END IF;
    IF dedup_keys IS NOT NULL AND cardinality(dedup_keys) <> n THEN
        RAISE EXCEPTION USING ERRCODE = 'array_subscript_error',
            MESSAGE = 'payloads and dedup_keys differ in length',
            DETAIL = format('There are %s payloads and %s dedup keys.', n, cardinality(dedup_keys)),
            HINT = 'Pass one dedup key per payload (NULL for none), or no dedup_keys at all.';
    END IF;
    v_state := tq.check_submit(q, run_at, priority, tenant, max_attempts, timeout, expires_at);
    v_traceparent := tq.submit_traceparent(traceparent);

    -- Ids in payload order; the payload check reports the first bad element.
    SELECT array_agg(nextval('tq.task_id_seq') ORDER BY o) INTO v_ids
      FROM generate_series(1, n) o;
    SELECT min(o) INTO v_bad FROM unnest(payloads) WITH ORDINALITY AS u(p, o)
     WHERE p IS NULL OR jsonb_typeof(p) <> 'object';
    IF v_bad IS NOT NULL THEN
        BEGIN
            PERFORM tq.check_payload(payloads[v_bad]);
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION USING ERRCODE = SQLSTATE,
                MESSAGE = format('payload %s of %s: %s', v_bad, n, SQLERRM),
                HINT = 'Every payload must be a JSON object.';
        END;
    END IF;

    v_owners := v_ids;
    IF dedup_keys IS NOT NULL AND EXISTS (SELECT 1 FROM unnest(dedup_keys) k WHERE k IS NOT NULL) THEN
        PERFORM tq.check_label(k, 'dedup_key', 512) FROM unnest(dedup_keys) k WHERE k IS NOT NULL;
        -- Claim each distinct key for its first payload.
        INSERT INTO tq.dedup AS d (queue, tenant, dedup_key, task_id)
        SELECT DISTINCT ON (k) q.name, coalesce(tenant, ''), k, v_ids[o]
          FROM unnest(dedup_keys) WITH ORDINALITY AS u(k, o)
         WHERE k IS NOT NULL
         ORDER BY k, o
        ON CONFLICT ON CONSTRAINT dedup_pkey DO UPDATE
            SET task_id = excluded.task_id, until = 'infinity'
            WHERE d.until < now();
        -- Every keyed payload gets its key's holder (a new statement sees
        -- holders committed by concurrent submits we waited for).
        SELECT array_agg(coalesce(d.task_id, v_ids[u.o]) ORDER BY u.o) INTO v_owners
          FROM unnest(dedup_keys) WITH ORDINALITY AS u(k, o)
          LEFT JOIN tq.dedup d ON d.queue = q.name AND d.tenant = coalesce(tenant, '') AND d.dedup_key = u.k;
    END IF;
    -- Backlog limits: checked per row by the insert's trigger (tq.task_row).

    INSERT INTO tq.task (id, queue, state, priority, tenant, payload, dedup_key, run_at,
                         expires_at, timeout, max_attempts, traceparent)
    SELECT v_ids[o], q.name, v_state, priority, tenant, tq.check_payload(p), k,
           greatest(coalesce(run_at, now()), now()), expires_at, timeout,
           coalesce(max_attempts, q.max_attempts), v_traceparent
      FROM unnest(payloads, dedup_keys) WITH ORDINALITY AS u(p, k, o)  -- no text[] subscripts:
     WHERE v_owners[o] = v_ids[o];                                      -- each is a linear seek
    IF v_state = 'ready' THEN
        PERFORM tq.wake(q.name);
    END IF;
    RETURN v_owners;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_submit_many(text, jsonb[], timestamptz, integer, text, text[], integer, interval, timestamptz, text) IS
'Submits one task per payload in one statement; returns the ids in payload order. dedup_keys, if given, is parallel to payloads; the other options, traceparent included (NULL: the tq.traceparent setting), apply to every task.';

/*
 * Row trigger: submits the row as a task's payload, in the transaction
 * that wrote the row.
 *   CREATE TRIGGER t AFTER INSERT OR UPDATE ON orders
 *       FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('orders', 'tenant=shop_id');
 * Arguments: the queue, then options as name=value: tenant=<column>,
 * dedup_key=<column>, priority=<integer>, delay=<interval>, and
 * envelope=true to send {"op", "table", "schema", "row", "old"} instead of
 * the bare row.  DELETE triggers send the old row.  The task carries the
 * tq.traceparent setting of the writing transaction.
 */
CREATE FUNCTION @extschema@.tq_submit_trigger() RETURNS trigger
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_row jsonb;
    v_payload jsonb;
    opt text;
    k text;
    v text;
    v_tenant text;
    v_dedup text;
    v_priority integer := 0;
    v_run_at timestamptz;
    v_envelope boolean := false;
BEGIN
    IF TG_LEVEL <> 'ROW' OR TG_NARGS < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('trigger "%s" on "%s" must be a row trigger with a queue name', TG_NAME, TG_TABLE_NAME),
            HINT = 'CREATE TRIGGER ... FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger(''queue'');';
    END IF;
    v_row := to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END);
    FOR i IN 1 .. TG_NARGS - 1 LOOP
        opt := TG_ARGV[i];
        k := split_part(opt, '=', 1);
        v := substr(opt, length(k) + 2);
        IF v = '' THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('option "%s" of trigger "%s" on "%s" has no value', opt, TG_NAME, TG_TABLE_NAME),
                HINT = 'Write options as name=value, for example ''tenant=shop_id''.';
        END IF;
        IF k IN ('tenant', 'dedup_key') AND NOT v_row ? v THEN
            RAISE EXCEPTION USING ERRCODE = 'undefined_column',
                MESSAGE = format('option "%s" of trigger "%s" names column "%s", which "%s" does not have',
                                 opt, TG_NAME, v, TG_TABLE_NAME),
                HINT = 'Name a column of the table the trigger is on.';
        END IF;
        CASE k
            WHEN 'tenant' THEN v_tenant := v_row ->> v;
            WHEN 'dedup_key' THEN v_dedup := v_row ->> v;
            WHEN 'priority' THEN v_priority := v::integer;
            WHEN 'delay' THEN v_run_at := now() + v::interval;
            WHEN 'envelope' THEN v_envelope := v::boolean;
            ELSE
                RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                    MESSAGE = format('unknown option "%s" in trigger "%s" on "%s"', opt, TG_NAME, TG_TABLE_NAME),
                    HINT = 'Options are tenant=<column>, dedup_key=<column>, priority=<integer>, delay=<interval>, envelope=true.';
        END CASE;
    END LOOP;
    IF v_envelope THEN
        v_payload := jsonb_build_object('op', TG_OP, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
                                        'row', v_row,
                                        'old', CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) END);
    ELSE
        v_payload := v_row;
    END IF;
    PERFORM @extschema@.tq_submit(TG_ARGV[0], v_payload, run_at => v_run_at, priority => v_priority,
                                  tenant => v_tenant, dedup_key => v_dedup);
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_submit_trigger() IS
'Row trigger that submits the row as a task: tq_submit_trigger(''queue'' [, ''tenant=<column>'', ''dedup_key=<column>'', ''priority=<n>'', ''delay=<interval>'', ''envelope=true'']). The task carries the tq.traceparent setting of the writing transaction.';

-- A no-op that nothing calls since 0.3.0 moved backlog limits into
-- tq.task_row (per row, from shared counters).  The upgrades never dropped
-- it, so a fresh install has it too.
CREATE FUNCTION tq.check_backlog(p_queue tq.queue, p_tenant text, p_n bigint) RETURNS void
    LANGUAGE sql STABLE AS $$ SELECT $$;
COMMENT ON FUNCTION tq.check_backlog(tq.queue, text, bigint) IS 'Kept for compatibility: backlog limits are enforced per task by tq.task_row from shared counters.';

------------------------------------------------------------------------------
-- Lease (the worker's side)
------------------------------------------------------------------------------

/*
 * In C (extension/fair_floor.c).  Below the floor lie the index entries of tasks
 * claimed moments ago, dead but not yet removable (with synchronous_commit
 * = off, for up to a WAL flush): a scan from the head of task_dispatch_idx
 * would walk over all of them, a heap page each.
 */
CREATE FUNCTION tq.lease_floor(queue text, OUT vkey double precision, OUT id bigint)
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'tq_lease_floor';
COMMENT ON FUNCTION tq.lease_floor(text) IS 'Where a lease''s claim scan of the queue starts, in (vkey, id) order: the first ready task visible now at or after the queue''s scan floor (which this raises when safe).';

/*
 * Claims up to max ready tasks of the given queues for a worker.  Per
 * queue (in random order, so that a worker serving several queues shares
 * itself among them): ask the queue's limits how many may start
 * (tq.lease_room: no scan at all when none), then claim the head of
 * task_dispatch_idx -- the fair key order, from tq.lease_floor on -- with
 * FOR UPDATE SKIP LOCKED.  The claim passes the gate in tq.task_row: a
 * task whose tenant is at its quota or out of tokens is parked instead
 * (out of the index), and the lease claims again in its place, a bounded
 * number of times.  Each task comes with its traceparent, the last column.
 */
CREATE FUNCTION @extschema@.tq_lease(worker text, queues text[], max integer DEFAULT 1,
                                     lease interval DEFAULT NULL)
    RETURNS TABLE (id bigint, queue text, payload jsonb, attempt integer, lease_until timestamptz,
                   tenant text, priority smallint, timeout interval, traceparent text,
                   lease_token bigint)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_caller oid := tq.caller();
    qs tq.queue[];
    q tq.queue;
    v_worker text := tq_lease.worker;
    v_lease interval;
    v_tenant_pauses boolean;
    due_promote boolean;
    due_reclaim boolean;
    due_expire boolean;
    due_maintain boolean;
    remaining integer := tq_lease.max;
    room integer;
    f_key double precision;
    f_id bigint;
    n integer;
    parked bigint;
BEGIN
    IF v_worker IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'worker must not be null',
            HINT = 'Name the worker, for example host:pid; the name is recorded on each task it leases.';
    END IF;
    PERFORM tq.check_label(v_worker, 'worker name', 200);
    IF tq_lease.queues IS NULL OR cardinality(tq_lease.queues) = 0
       OR array_position(tq_lease.queues, NULL) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'queues must be a non-empty array of queue names',
            HINT = 'For example: tq_lease(''worker-1'', ARRAY[''email''], 10).';
    END IF;
    PERFORM tq.check_int('max', remaining, 1, 10000, false);
    IF tq_lease.lease IS NOT NULL THEN
        PERFORM tq.check_interval('lease', tq_lease.lease, '1 second', '7 days');
    END IF;

    SELECT array_agg(x ORDER BY random()) INTO qs FROM tq.queue x WHERE x.name = ANY (tq_lease.queues);
    IF coalesce(cardinality(qs), 0) < cardinality(tq_lease.queues) THEN
        PERFORM tq.no_such_queue(u)
           FROM unnest(tq_lease.queues) u
          WHERE NOT EXISTS (SELECT 1 FROM tq.queue x WHERE x.name = u)
          LIMIT 1;
    END IF;

    /*
     * Housekeeping the background worker does where it runs: one probe
     * of four index heads, and the work itself only where there is some.
     */
    SELECT EXISTS (SELECT 1 FROM tq.task t WHERE t.state = 'scheduled' AND t.run_at <= now()
                                              AND t.queue = ANY (tq_lease.queues)),
           EXISTS (SELECT 1 FROM tq.task t WHERE t.state = 'running' AND t.lease_until < now()),
           EXISTS (SELECT 1 FROM tq.task t WHERE t.expires_at <= now() AND t.expires_at IS NOT NULL
                                              AND t.state <> 'running'),
           EXISTS (SELECT 1 FROM tq.meta m WHERE m.next_maintenance <= now())
      INTO due_promote, due_reclaim, due_expire, due_maintain;
    IF due_promote THEN
        PERFORM tq.promote(tq_lease.queues, 1000);
    END IF;
    IF due_reclaim THEN
        PERFORM tq.reclaim(100);
    END IF;
    IF due_expire THEN
        PERFORM tq.expire(100);
    END IF;
    IF due_maintain THEN
        PERFORM tq.maybe_maintain();
    END IF;
    IF tq.held_next() <= 0 THEN
        PERFORM tq.unpark_held();
    END IF;

    FOREACH q IN ARRAY qs LOOP
        EXIT WHEN remaining <= 0;
        CONTINUE WHEN q.paused;
        v_lease := coalesce(tq_lease.lease, q.lease);
        v_tenant_pauses := EXISTS (SELECT 1 FROM tq.tenant_pause p WHERE p.queue = q.name);
        PERFORM tq.take_parked();
        FOR tries IN 1 .. 4 LOOP
            room := tq.lease_room(q.name, remaining);
            EXIT WHEN room <= 0;
            SELECT f.vkey, f.id INTO f_key, f_id FROM tq.lease_floor(q.name) f;
            RETURN QUERY
            WITH picked AS (
                SELECT t.id FROM tq.task t
                WHERE t.queue = q.name AND t.state = 'ready' AND (t.vkey, t.id) >= (f_key, f_id)
                  AND (t.expires_at IS NULL OR t.expires_at > now())
                  AND (NOT v_tenant_pauses
                       OR NOT EXISTS (SELECT 1 FROM tq.tenant_pause p
                                      WHERE p.queue = t.queue AND p.tenant = t.tenant))
                ORDER BY t.vkey, t.id
                LIMIT room
                FOR UPDATE SKIP LOCKED
            ), claimed AS (
                UPDATE tq.task t
                   SET state = 'running',
                       attempt = t.attempt + 1,
                       worker = v_worker,
                       lease_until = now() + v_lease,
                       lease_duration = v_lease,
                       started_at = now(),
                       first_started_at = coalesce(t.first_started_at, now()),
                       lease_token = tq.lease_token(),
                       leased_by = v_caller
                  FROM picked
                 WHERE t.id = picked.id
                RETURNING t.id, t.queue, t.payload, t.attempt, t.lease_until, t.tenant, t.priority,
                          coalesce(t.timeout, q.timeout) AS eff_timeout, t.state, t.traceparent,
                          t.lease_token
            )
            SELECT c.id, c.queue, c.payload, c.attempt, c.lease_until, c.tenant, c.priority, c.eff_timeout,
                   c.traceparent, c.lease_token
              FROM claimed c WHERE c.state = 'running';
            GET DIAGNOSTICS n = ROW_COUNT;
            remaining := remaining - n;
            parked := tq.take_parked();
            -- Claim again only where parked tasks left room unused.
            EXIT WHEN remaining <= 0 OR parked = 0;
        END LOOP;
    END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_lease(text, text[], integer, interval) IS
'Leases up to max ready tasks of the given queues to a worker, in fair dispatch order, with FOR UPDATE SKIP LOCKED. Returns each task with its attempt number, which every later call on the lease must quote (fencing), its lease_token (a random token the calls may quote as well, for exact fencing), and its traceparent (W3C trace context to hand to the handler; NULL: none). Only the role that leased a task (or a tq_admin) may act on the lease.';

------------------------------------------------------------------------------
-- Finish (the worker's side)
------------------------------------------------------------------------------

/*
 * tq.finish: the one way a task leaves the hot table.
 *
 * For each (id, attempt, to_state, result, error): if the task is in one of
 * p_from and (attempt is NULL or matches -- the fence), delete it from
 * tq.task, write it to tq.history in to_state with its log, trace and
 * traceparent, keep its dedup key for the queue's dedup_window if it
 * succeeded or free the key otherwise, note it for tq_wait and
 * tq_queue_activity (tq.note_finished: the commit wakes the sessions
 * waiting for it), and send tq_done.  An id named twice is acted on for
 * its first occurrence.  Returns the (id, attempt) pairs finished; stale
 * or unknown ids are simply absent.  The move is one statement, so a batch
 * of hundreds costs one pass; the dedup statements run only when a key is
 * involved.
 *
 * tq_done carries a JSON array of {"id", "queue", "state"}, one
 * notification per 100 tasks: a notification per task costs a third of a
 * batch completion.
 */
CREATE FUNCTION tq.finish(p_ids bigint[], p_attempts integer[], p_from tq.task_state[],
                          p_to tq.task_state[], p_results jsonb[], p_errors text[])
    RETURNS TABLE (id bigint, attempt integer)
    LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    f_ids bigint[];
    f_attempts integer[];
    f_queues text[];
    f_states tq.task_state[];
    f_keys text[];
    f_tenants text[];
BEGIN
    WITH u AS (
        SELECT DISTINCT ON (u.id) u.*
          FROM unnest(p_ids, p_attempts, p_to, p_results, p_errors) WITH ORDINALITY
               AS u(id, attempt, to_state, result, error, o)
         ORDER BY u.id, u.o
    ), d AS (
        DELETE FROM tq.task t
        USING u
        WHERE t.id = u.id
          AND (u.attempt IS NULL OR t.attempt = u.attempt)
          AND t.state = ANY (p_from)
        RETURNING t.*, u.to_state, u.result AS new_result, u.error AS new_error
    ), h AS (
        INSERT INTO tq.history (id, queue, state, priority, tenant, payload, result, last_error,
                                dedup_key, run_at, expires_at, timeout, max_attempts, attempt,
                                free_attempts, throttles, worker, submitted_at, first_started_at,
                                started_at, finished_at, log, trace, traceparent)
        SELECT d.id, d.queue, d.to_state, d.priority, d.tenant, d.payload, d.new_result,
               coalesce(d.new_error, d.last_error), d.dedup_key, d.run_at, d.expires_at, d.timeout,
               d.max_attempts, d.attempt, d.free_attempts, d.throttles, d.worker, d.submitted_at,
               d.first_started_at, d.started_at, now(), d.log,
               d.trace, d.traceparent
        FROM d
        RETURNING id, attempt, queue, state, dedup_key, tenant
    )
    SELECT array_agg(h.id), array_agg(h.attempt), array_agg(h.queue), array_agg(h.state),
           array_agg(h.dedup_key), array_agg(coalesce(h.tenant, ''))
      INTO f_ids, f_attempts, f_queues, f_states, f_keys, f_tenants
      FROM h;
    IF f_ids IS NULL THEN
        RETURN;
    END IF;

    IF array_remove(f_keys, NULL) <> '{}' THEN
        UPDATE tq.dedup x SET until = now() + q.dedup_window
          FROM unnest(f_ids, f_queues, f_states, f_keys, f_tenants) AS h(id, queue, state, dedup_key, tenant)
          JOIN tq.queue q ON q.name = h.queue
         WHERE h.state = 'succeeded' AND h.dedup_key IS NOT NULL
           AND x.queue = h.queue AND x.tenant = h.tenant AND x.dedup_key = h.dedup_key
           AND x.task_id = h.id;
        DELETE FROM tq.dedup x
         USING unnest(f_ids, f_queues, f_states, f_keys, f_tenants) AS h(id, queue, state, dedup_key, tenant)
         WHERE h.state <> 'succeeded' AND h.dedup_key IS NOT NULL
           AND x.queue = h.queue AND x.tenant = h.tenant AND x.dedup_key = h.dedup_key
           AND x.task_id = h.id;
    END IF;

    -- Whoever waits in tq_wait for one of these is woken at commit, and
    -- tq_queue_activity counts them then.
    PERFORM tq.note_finished(f_ids, f_queues, f_states::text[]);

    PERFORM pg_catalog.pg_notify('tq_done',
                pg_catalog.json_agg(pg_catalog.json_build_object('id', n.id, 'queue', n.queue,
                                                                 'state', n.state) ORDER BY n.o)::text)
       FROM unnest(f_ids, f_queues, f_states) WITH ORDINALITY AS n(id, queue, state, o)
      GROUP BY (n.o - 1) / 100;

    RETURN QUERY SELECT * FROM unnest(f_ids, f_attempts);
END
$$;
COMMENT ON FUNCTION tq.finish(bigint[], integer[], tq.task_state[], tq.task_state[], jsonb[], text[]) IS 'Moves tasks that are in one of the given states (and at the given attempt) to history in their final state; returns the (id, attempt) pairs moved.';

/*
 * The positions of a batch that the call acts on: the first occurrence of
 * each (id, attempt), so that a pair named twice takes the outcome,
 * result or error given first.
 */
CREATE FUNCTION tq.first_of(p_ids bigint[], p_attempts integer[]) RETURNS SETOF bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT min(x.o) FROM unnest(p_ids, p_attempts) WITH ORDINALITY AS x(id, attempt, o)
     GROUP BY x.id, x.attempt
$$;
COMMENT ON FUNCTION tq.first_of(bigint[], integer[]) IS 'Positions (1-based) of the first occurrence of each (id, attempt) in a batch.';

/*
 * Joins the (id, attempt) pairs acted on back to the input, in input
 * order.  A pair named more than once in a batch was acted on once: only
 * its first occurrence says true (tq.first_of is what the batch's outcome
 * was taken from).
 */
CREATE FUNCTION tq.mask(p_ids bigint[], p_attempts integer[], p_done_ids bigint[], p_done_attempts integer[])
    RETURNS boolean[]
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF cardinality(p_ids) = 1 THEN
        RETURN ARRAY[coalesce(p_done_ids[1] = p_ids[1] AND p_done_attempts[1] = p_attempts[1], false)];
    END IF;
    RETURN (SELECT coalesce(array_agg(d.id IS NOT NULL AND u.first ORDER BY u.o), '{}')
              FROM (SELECT x.id, x.attempt, x.o,
                           row_number() OVER (PARTITION BY x.id, x.attempt ORDER BY x.o) = 1 AS first
                      FROM unnest(p_ids, p_attempts) WITH ORDINALITY AS x(id, attempt, o)) u
              LEFT JOIN (SELECT DISTINCT z.x, z.y FROM unnest(p_done_ids, p_done_attempts) AS z(x, y)) d(id, attempt)
                     ON d.id = u.id AND d.attempt = u.attempt);
END
$$;
COMMENT ON FUNCTION tq.mask(bigint[], integer[], bigint[], integer[]) IS 'For each input (id, attempt), whether it is among the pairs acted on.';

/*
 * The fence of the lease holder's calls (tq_complete, tq_fail,
 * tq_release, tq_heartbeat, tq_append_log).  Per (id, attempt), the
 * attempt again when the caller holds that lease -- the role that leased
 * it (tq.task.leased_by), or a tq_admin -- and, when lease tokens are
 * given, the task's token matches; else -1, which no task has, so the
 * call acts on nothing for it and says false or lost.  Without tokens a
 * tq_admin's call is not looked up at all.  A lease made before 0.7.0 has
 * neither holder nor token, and is fenced by its attempt alone, so that
 * the tasks running through the update can still be finished.
 */
CREATE FUNCTION tq.fence(p_ids bigint[], p_attempts integer[], p_tokens bigint[]) RETURNS integer[]
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_caller oid := tq.caller();
    v_admin boolean := pg_catalog.pg_has_role(v_caller, 'tq_admin', 'USAGE');
BEGIN
    IF p_tokens IS NULL THEN
        IF v_admin THEN
            RETURN p_attempts;
        END IF;
    ELSE
        PERFORM tq.check_dims('leases', p_tokens);
        IF cardinality(p_tokens) <> coalesce(cardinality(p_ids), 0) THEN
            RAISE EXCEPTION USING ERRCODE = 'array_subscript_error',
                MESSAGE = 'the arrays of task ids and leases differ in length',
                DETAIL = format('There are %s ids and %s leases.', coalesce(cardinality(p_ids), 0),
                                cardinality(p_tokens)),
                HINT = 'Pass the lease_token tq_lease returned for each task, in the same order, or no leases.';
        END IF;
    END IF;
    RETURN (SELECT coalesce(array_agg(CASE WHEN (v_admin OR t.leased_by = v_caller OR t.leased_by IS NULL)
                                                AND (p_tokens IS NULL OR t.lease_token = u.token
                                                     OR t.lease_token IS NULL)
                                           THEN u.attempt ELSE -1 END ORDER BY u.o), '{}')
              FROM unnest(p_ids, p_attempts, p_tokens) WITH ORDINALITY AS u(id, attempt, token, o)
              LEFT JOIN tq.task t ON t.id = u.id);
END
$$;
COMMENT ON FUNCTION tq.fence(bigint[], integer[], bigint[]) IS 'Per (id, attempt), the attempt if the caller holds the lease (its role leased it, or it is a tq_admin) and the lease token, when given, matches; -1 otherwise.';

CREATE FUNCTION @extschema@.tq_complete(ids bigint[], attempts integer[], results jsonb[] DEFAULT NULL,
                                        leases bigint[] DEFAULT NULL)
    RETURNS boolean[]
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    n integer := tq.check_batch(ids, attempts, cardinality(results), 'results');
    done_ids bigint[];
    done_attempts integer[];
BEGIN
    PERFORM tq.check_dims('results', results);
    IF n = 0 THEN
        RETURN '{}';
    END IF;
    PERFORM tq.check_result(r) FROM unnest(results) r WHERE r IS NOT NULL;
    SELECT array_agg(f.id), array_agg(f.attempt) INTO done_ids, done_attempts
      FROM tq.finish(ids, tq.fence(ids, attempts, leases), '{running}',
                     array_fill('succeeded'::tq.task_state, ARRAY[n]), results, NULL) f;
    RETURN tq.mask(ids, attempts, done_ids, done_attempts);
END
$$;
COMMENT ON FUNCTION @extschema@.tq_complete(bigint[], integer[], jsonb[], bigint[]) IS
'Marks leased tasks succeeded with optional results. leases: the lease_token of each (optional; exact fencing). Returns, per task, false if the lease is not the caller''s to finish (stale attempt or token, lost lease, another role''s lease) and nothing changed.';

CREATE FUNCTION @extschema@.tq_complete(id bigint, attempt integer, result jsonb DEFAULT NULL)
    RETURNS boolean
    LANGUAGE sql VOLATILE AS $$
    SELECT (@extschema@.tq_complete(ARRAY[id], ARRAY[attempt], ARRAY[result]))[1]
$$;
COMMENT ON FUNCTION @extschema@.tq_complete(bigint, integer, jsonb) IS
'Marks a leased task succeeded with an optional result. Returns false if the attempt is stale and nothing changed.';

-- Longest error text kept per attempt; the rest is cut with a marker.
CREATE FUNCTION tq.clip_error(p_error text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN length(p_error) > 16384
                THEN left(p_error, 16384) || ' ... [truncated from ' || length(p_error) || ' characters]'
                ELSE p_error END
$$;
COMMENT ON FUNCTION tq.clip_error(text) IS 'Cuts an error text to 16384 characters, saying so.';

CREATE FUNCTION @extschema@.tq_fail(ids bigint[], attempts integer[], errors text[],
                                    retry text[] DEFAULT NULL, retry_after interval[] DEFAULT NULL,
                                    leases bigint[] DEFAULT NULL)
    RETURNS boolean[]
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    n integer := tq.check_batch(ids, attempts, cardinality(errors), 'errors');
    bad text;
    done_ids bigint[];
    done_attempts integer[];
BEGIN
    IF errors IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'errors must not be null',
            HINT = 'Pass one error text per task id, saying why each attempt failed.';
    END IF;
    PERFORM tq.check_dims('errors', errors);
    PERFORM tq.check_dims('retry', retry);
    PERFORM tq.check_dims('retry_after', retry_after);
    PERFORM tq.check_batch(ids, attempts, cardinality(retry), 'retry');
    PERFORM tq.check_batch(ids, attempts, cardinality(retry_after), 'retry_after');
    IF n = 0 THEN
        RETURN '{}';
    END IF;
    IF array_position(errors, NULL) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'error must not be null',
            HINT = 'Say why the attempt failed; the text is kept as the task''s last_error.';
    END IF;
    SELECT r INTO bad FROM unnest(retry) r WHERE r NOT IN ('auto', 'never', 'throttled') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid retry mode "%s"', bad),
            HINT = 'Use ''auto'' (retry with backoff), ''never'' (dead at once) or ''throttled'' (retry without using up an attempt).';
    END IF;
    PERFORM tq.check_interval('retry_after', d, '0', '30 days') FROM unnest(retry_after) d WHERE d IS NOT NULL;
    SELECT array_agg(f.id), array_agg(f.attempt) INTO done_ids, done_attempts
      FROM tq.fail_running(ids, tq.fence(ids, attempts, leases),
               ARRAY(SELECT tq.clip_error(e) FROM unnest(errors) WITH ORDINALITY AS x(e, o) ORDER BY o),
               ARRAY(SELECT coalesce(r, 'auto')
                       FROM unnest(coalesce(retry, array_fill(NULL::text, ARRAY[n]))) WITH ORDINALITY AS x(r, o)
                      ORDER BY o),
               retry_after) f;
    RETURN tq.mask(ids, attempts, done_ids, done_attempts);
END
$$;
COMMENT ON FUNCTION @extschema@.tq_fail(bigint[], integer[], text[], text[], interval[], bigint[]) IS
'Reports failed attempts. retry per task: auto (retry after backoff or retry_after, dead after max_attempts), never (dead now), throttled (retry without using up an attempt, up to the queue''s throttle_limit). leases: the lease_token of each (optional). Returns false per lease that is not the caller''s (stale, lost, another role''s).';

CREATE FUNCTION @extschema@.tq_fail(id bigint, attempt integer, error text, retry text DEFAULT 'auto',
                                    retry_after interval DEFAULT NULL)
    RETURNS boolean
    LANGUAGE sql VOLATILE AS $$
    SELECT (@extschema@.tq_fail(ARRAY[id], ARRAY[attempt], ARRAY[error], ARRAY[retry], ARRAY[retry_after]))[1]
$$;
COMMENT ON FUNCTION @extschema@.tq_fail(bigint, integer, text, text, interval) IS
'Reports a failed attempt; retry is auto, never or throttled. Returns false if the attempt is stale.';

/*
 * Hands leased tasks back without penalty (a draining worker): they are
 * ready again at once and the attempt does not count.  A task whose
 * cancellation was requested meanwhile is cancelled instead.
 */
/*
 * A release is free while the task's free attempts (releases, throttles,
 * manual retries) stay below its max_attempts; past that it counts as a
 * failed attempt, so that leasing and releasing a task without end
 * cannot keep it alive for good.
 */
CREATE FUNCTION @extschema@.tq_release(ids bigint[], attempts integer[], leases bigint[] DEFAULT NULL)
    RETURNS boolean[]
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    n integer := tq.check_batch(ids, attempts);
    fenced integer[];
    done_ids bigint[];
    done_attempts integer[];
BEGIN
    IF n = 0 THEN
        RETURN '{}';
    END IF;
    fenced := tq.fence(ids, attempts, leases);
    SELECT array_agg(f.id), array_agg(f.attempt) INTO done_ids, done_attempts
      FROM (SELECT array_agg(t.id) AS ids, array_agg(t.attempt) AS attempts
              FROM unnest(ids, fenced) AS u(id, attempt)
              JOIN tq.task t ON t.id = u.id AND t.attempt = u.attempt
             WHERE t.state = 'running' AND t.cancel_requested) c,
           LATERAL tq.finish(c.ids, c.attempts, '{running}',
                             array_fill('cancelled'::tq.task_state, ARRAY[coalesce(cardinality(c.ids), 0)]), NULL,
                             array_fill('cancelled while running (released by the worker)'::text,
                                        ARRAY[coalesce(cardinality(c.ids), 0)])) f;
    SELECT coalesce(done_ids, '{}') || coalesce(array_agg(f.id), '{}'),
           coalesce(done_attempts, '{}') || coalesce(array_agg(f.attempt), '{}')
      INTO done_ids, done_attempts
      FROM (SELECT array_agg(t.id) AS ids, array_agg(t.attempt) AS attempts,
                   array_agg(format('released %s times: this release counts as a failed attempt',
                                    t.free_attempts - t.throttles + 1)) AS errors
              FROM unnest(ids, fenced) AS u(id, attempt)
              JOIN tq.task t ON t.id = u.id AND t.attempt = u.attempt
             WHERE t.state = 'running' AND t.free_attempts >= t.max_attempts) c,
           LATERAL tq.fail_running(c.ids, c.attempts, c.errors,
                                   array_fill('auto'::text, ARRAY[coalesce(cardinality(c.ids), 0)]), NULL) f;
    WITH up AS (
        UPDATE tq.task t
           SET state = CASE WHEN tq.is_paused(q, t.tenant) THEN 'paused'::tq.task_state
                            ELSE 'ready'::tq.task_state END,
               free_attempts = t.free_attempts + 1,
               lease_until = NULL,
               lease_duration = NULL
          FROM unnest(ids, fenced) AS u(id, attempt), tq.queue q
         WHERE t.id = u.id AND t.attempt = u.attempt AND t.state = 'running'
           AND q.name = t.queue
        RETURNING t.id, t.attempt
    )
    SELECT coalesce(done_ids, '{}') || coalesce(array_agg(up.id), '{}'),
           coalesce(done_attempts, '{}') || coalesce(array_agg(up.attempt), '{}')
      INTO done_ids, done_attempts
      FROM up;
    PERFORM tq.wake(x.queue) FROM (SELECT DISTINCT t.queue FROM tq.task t
                                    WHERE t.id = ANY (ids) AND t.state = 'ready') x;
    RETURN tq.mask(ids, attempts, done_ids, done_attempts);
END
$$;
COMMENT ON FUNCTION @extschema@.tq_release(bigint[], integer[], bigint[]) IS
'Hands leased tasks back unrun and without penalty (a draining worker); they are ready again at once. Once a task''s free attempts reach its max_attempts, a release counts as a failed attempt. leases: the lease_token of each (optional). False per lease that is not the caller''s.';

CREATE FUNCTION @extschema@.tq_release(id bigint, attempt integer)
    RETURNS boolean
    LANGUAGE sql VOLATILE AS $$
    SELECT (@extschema@.tq_release(ARRAY[id], ARRAY[attempt]))[1]
$$;
COMMENT ON FUNCTION @extschema@.tq_release(bigint, integer) IS
'Hands a leased task back unrun and without penalty.';

/*
 * Extends the leases of running tasks by their lease duration.  Returns
 * the tasks the worker should stop: 'cancelled' (tq_cancel asked; the
 * lease was still extended so the worker can report the outcome) and
 * 'lost' (stale attempt, unknown or finished task: someone else owns it).
 */
CREATE FUNCTION @extschema@.tq_heartbeat(worker text, ids bigint[], attempts integer[],
                                         leases bigint[] DEFAULT NULL)
    RETURNS TABLE (id bigint, reason text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF tq_heartbeat.worker IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'worker must not be null';
    END IF;
    PERFORM tq.check_label(tq_heartbeat.worker, 'worker name', 200);
    PERFORM tq.check_batch(tq_heartbeat.ids, tq_heartbeat.attempts);
    RETURN QUERY
    WITH u AS (
        SELECT * FROM unnest(tq_heartbeat.ids,
                             tq.fence(tq_heartbeat.ids, tq_heartbeat.attempts, tq_heartbeat.leases))
                      AS u(id, attempt)
    ), ext AS (
        UPDATE tq.task t
           SET lease_until = now() + t.lease_duration
          FROM u
         WHERE t.id = u.id AND t.attempt = u.attempt AND t.state = 'running'
        RETURNING t.id, t.cancel_requested
    )
    SELECT ext.id, 'cancelled'::text FROM ext WHERE ext.cancel_requested
    UNION ALL
    SELECT u.id, 'lost'::text FROM u WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.id = u.id);
END
$$;
COMMENT ON FUNCTION @extschema@.tq_heartbeat(text, bigint[], integer[], bigint[]) IS
'Extends the leases of running tasks (leases: the lease_token of each, optional). Returns the tasks to stop: reason cancelled (tq_cancel asked) or lost (stale attempt or token, or another role''s lease: someone else owns the task).';

------------------------------------------------------------------------------
-- Retries and failures
------------------------------------------------------------------------------

-- In C (extension/checks.c).
CREATE FUNCTION tq.backoff(n integer, base interval, cap interval) RETURNS interval
    LANGUAGE c VOLATILE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'tq_backoff';
COMMENT ON FUNCTION tq.backoff(integer, interval, interval) IS 'Retry delay for retry number n: uniform in [0, min(cap, base * 2^(n-1))] (full jitter), at least base/10.';

/*
 * tq.fail_running: the failure path of running tasks, shared by tq_fail
 * and the reclaim of expired leases.  Per task, in this order:
 *   cancel requested            -> cancelled
 *   retry = 'never'             -> dead
 *   retry = 'throttled' and fewer than throttle_limit throttles so far
 *                               -> scheduled; the attempt does not count
 *   attempts used >= max        -> dead
 *   otherwise                   -> scheduled after backoff (or retry_after)
 * An (id, attempt) named twice is acted on once, with the error, retry
 * mode and delay given first (tq.first_of).  Returns the ids acted on
 * (stale attempts are absent).
 */
CREATE FUNCTION tq.fail_running(p_ids bigint[], p_attempts integer[], p_errors text[],
                                p_retry text[], p_delays interval[])
    RETURNS TABLE (id bigint, attempt integer)
    LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    c_ids bigint[];
    c_attempts integer[];
    c_outcomes text[];
    c_errors text[];
    c_delays interval[];
BEGIN
    SELECT array_agg(t.id), array_agg(t.attempt),
           array_agg(CASE
                WHEN t.cancel_requested THEN 'cancelled'
                WHEN u.retry = 'never' THEN 'dead'
                WHEN u.retry = 'throttled' AND t.throttles < q.throttle_limit THEN 'throttled'
                WHEN t.attempt - t.free_attempts >= t.max_attempts THEN 'dead'
                ELSE 'retry' END),
           array_agg(u.error),
           array_agg(coalesce(u.delay,
                CASE WHEN u.retry = 'throttled' AND t.throttles < q.throttle_limit
                     THEN tq.backoff(t.throttles + 1, q.backoff_base, q.backoff_cap)
                     ELSE tq.backoff(t.attempt - t.free_attempts, q.backoff_base, q.backoff_cap) END))
      INTO c_ids, c_attempts, c_outcomes, c_errors, c_delays
    FROM unnest(p_ids, p_attempts, p_errors, p_retry, p_delays) WITH ORDINALITY
         AS u(id, attempt, error, retry, delay, o)
    JOIN tq.first_of(p_ids, p_attempts) f(o) ON f.o = u.o
    JOIN tq.task t ON t.id = u.id AND t.attempt = u.attempt AND t.state = 'running'
    JOIN tq.queue q ON q.name = t.queue;

    IF c_ids IS NULL THEN
        RETURN;
    END IF;

    RETURN QUERY
    UPDATE tq.task t
       SET state = 'scheduled',
           run_at = now() + c.delay,
           throttles = t.throttles + (c.outcome = 'throttled')::integer,
           free_attempts = t.free_attempts + (c.outcome = 'throttled')::integer,
           last_error = c.error,
           lease_until = NULL,
           lease_duration = NULL
      FROM unnest(c_ids, c_attempts, c_outcomes, c_errors, c_delays) AS c(id, attempt, outcome, error, delay)
     WHERE t.id = c.id AND t.attempt = c.attempt AND t.state = 'running'
       AND c.outcome IN ('retry', 'throttled')
    RETURNING t.id, t.attempt;

    RETURN QUERY
    SELECT f.id, f.attempt
      FROM (SELECT array_agg(c.id) AS ids, array_agg(c.attempt) AS attempts,
                   array_agg(c.outcome::tq.task_state) AS outcomes, array_agg(c.error) AS errors
              FROM unnest(c_ids, c_attempts, c_outcomes, c_errors) AS c(id, attempt, outcome, error)
             WHERE c.outcome IN ('dead', 'cancelled')) a,
           LATERAL tq.finish(a.ids, a.attempts, '{running}', a.outcomes, NULL, a.errors) f;
END
$$;
COMMENT ON FUNCTION tq.fail_running(bigint[], integer[], text[], text[], interval[]) IS 'Failure path of running tasks: retry with backoff, throttle, or finish as dead or cancelled; returns the (id, attempt) pairs acted on.';

/*
 * Expired leases count as a failed attempt (the worker died or hung): the
 * task waits out the backoff, or is dead once out of attempts, as after
 * tq_fail.  Unlike a failure its handler reported, it keeps its dispatch
 * key: it was already waiting its turn when it was lost, so once due it
 * goes back to the head of its queue instead of behind the work submitted
 * since.  The key is put back on the scheduled row after the failure
 * (tq.task_row clears it on the way to scheduled and does not run for an
 * update of vkey alone); promotion to ready then keeps it.
 */
CREATE FUNCTION tq.reclaim(p_limit integer DEFAULT 1000) RETURNS bigint
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    ids bigint[];
    attempts integer[];
    workers text[];
    keys double precision[];
    n bigint;
BEGIN
    SELECT array_agg(id), array_agg(attempt), array_agg(worker), array_agg(vkey)
      INTO ids, attempts, workers, keys
      FROM (SELECT id, attempt, worker, vkey FROM tq.task
            WHERE state = 'running' AND lease_until < now()
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED) s;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    n := (SELECT count(*) FROM tq.fail_running(ids, attempts,
                (SELECT array_agg(format('lease expired: worker "%s" neither finished nor extended it', w)
                                  ORDER BY o)
                   FROM unnest(workers) WITH ORDINALITY AS x(w, o)),
                NULL, NULL));
    UPDATE tq.task t SET vkey = k.vkey
      FROM unnest(ids, attempts, keys) AS k(id, attempt, vkey)
     WHERE t.id = k.id AND t.attempt = k.attempt AND t.state = 'scheduled' AND k.vkey IS NOT NULL;
    RETURN n;
END
$$;
COMMENT ON FUNCTION tq.reclaim(integer) IS 'Treats running tasks whose lease expired as failed attempts (retried after a backoff, keeping their place in line, or dead); returns how many.';

/*
 * Moves finished tasks back into the hot table as ready (or paused): used
 * by tq_retry and tq_retry_dead.  The task keeps its id, its attempt count
 * (the fence stays monotonic) and its traceparent (a retry of a dead task
 * is still part of the request that submitted it), and gets a fresh
 * attempt budget.  A task whose dedup key has been taken by a newer live
 * task stays where it is: its key is claimed first, and only tasks with a
 * claimed key (or none) are moved.
 */
CREATE FUNCTION tq.revive(p_queue text, p_tenant text, p_id bigint, p_states tq.task_state[])
    RETURNS SETOF bigint
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    claimed bigint[];
BEGIN
    -- Claim the dedup keys of the candidates (one task per key).
    WITH cand AS (
        SELECT DISTINCT ON (h.queue, coalesce(h.tenant, ''), h.dedup_key) h.queue,
               coalesce(h.tenant, '') AS tenant, h.dedup_key, h.id
        FROM tq.history h
        WHERE (p_queue IS NULL OR h.queue = p_queue)
          AND (p_id IS NULL OR h.id = p_id)
          AND (p_tenant IS NULL OR h.tenant = p_tenant)
          AND h.state = ANY (p_states)
          AND h.dedup_key IS NOT NULL
        ORDER BY h.queue, coalesce(h.tenant, ''), h.dedup_key, h.finished_at DESC
    ), c AS (
        INSERT INTO tq.dedup AS x (queue, tenant, dedup_key, task_id)
        SELECT queue, tenant, dedup_key, id FROM cand
        ON CONFLICT ON CONSTRAINT dedup_pkey DO UPDATE
            SET task_id = excluded.task_id, until = 'infinity'
            WHERE x.until < now()
        RETURNING x.task_id
    )
    SELECT array_agg(task_id) INTO claimed FROM c;

    RETURN QUERY
    WITH m AS (
        DELETE FROM tq.history h
        WHERE (p_queue IS NULL OR h.queue = p_queue)
          AND (p_id IS NULL OR h.id = p_id)
          AND (p_tenant IS NULL OR h.tenant = p_tenant)
          AND h.state = ANY (p_states)
          AND (h.dedup_key IS NULL OR h.id = ANY (claimed))
        RETURNING h.*
    ), ins AS (
        INSERT INTO tq.task (id, queue, state, priority, tenant, payload, dedup_key, run_at,
                             expires_at, timeout, max_attempts, attempt, free_attempts, throttles,
                             worker, last_error, submitted_at, first_started_at, started_at,
                             traceparent)
        SELECT m.id, m.queue,
               CASE WHEN tq.is_paused(q, m.tenant) THEN 'paused'::tq.task_state
                    ELSE 'ready'::tq.task_state END,
               m.priority, m.tenant, m.payload, m.dedup_key, now(),
               CASE WHEN m.expires_at > now() THEN m.expires_at END,
               m.timeout, m.max_attempts, m.attempt, m.attempt, 0,
               m.worker, m.last_error, m.submitted_at, m.first_started_at, m.started_at,
               m.traceparent
        FROM m JOIN tq.queue q ON q.name = m.queue
        RETURNING id, queue, state
    )
    SELECT ins.id FROM ins
    LEFT JOIN LATERAL (SELECT tq.wake(ins.queue) WHERE ins.state = 'ready') w ON true;
END
$$;
COMMENT ON FUNCTION tq.revive(text, text, bigint, tq.task_state[]) IS 'Moves finished tasks in the given states back to ready with a fresh attempt budget; returns their ids.';

/*
 * Retries one task now: a dead, cancelled or expired task comes back with
 * a fresh attempt budget; a task waiting out a retry backoff or a delay
 * becomes ready at once.
 */
CREATE FUNCTION @extschema@.tq_retry(id bigint)
    RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    st tq.task_state;
    k text;
    holder bigint;
BEGIN
    IF id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'task id must not be null';
    END IF;
    UPDATE tq.task t SET run_at = now()
     WHERE t.id = tq_retry.id AND t.state = 'scheduled';
    IF FOUND THEN
        PERFORM tq.promote(ARRAY(SELECT t.queue FROM tq.task t WHERE t.id = tq_retry.id), 1000);
        RETURN true;
    END IF;
    IF EXISTS (SELECT tq.revive(NULL, NULL, id, '{dead,cancelled,expired}')) THEN
        RETURN true;
    END IF;

    SELECT t.state INTO st FROM tq.task t WHERE t.id = tq_retry.id;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('task %s is %s', id, st),
            HINT = 'Only dead, cancelled, expired and scheduled tasks can be retried.';
    END IF;
    SELECT h.state, h.dedup_key INTO st, k FROM tq.history h WHERE h.id = tq_retry.id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = format('task %s does not exist', id),
            HINT = 'It may never have existed, or its queue''s retention has removed it.';
    ELSIF st = 'succeeded' THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('task %s already succeeded', id),
            HINT = 'Submit a new task to run the work again.';
    END IF;
    SELECT d.task_id INTO holder FROM tq.dedup d
     JOIN tq.history h ON h.queue = d.queue AND coalesce(h.tenant, '') = d.tenant
                      AND h.dedup_key = d.dedup_key
     WHERE h.id = tq_retry.id;
    RAISE EXCEPTION USING ERRCODE = 'unique_violation',
        MESSAGE = format('task %s cannot be retried: its dedup_key "%s" is taken by task %s', id, k, holder),
        HINT = 'The newer task does the same work; inspect it with tq_task.';
END
$$;
COMMENT ON FUNCTION @extschema@.tq_retry(bigint) IS
'Brings a dead, cancelled or expired task back with a fresh attempt budget, or runs a scheduled task now.';

CREATE FUNCTION @extschema@.tq_retry_dead(queue text, tenant text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    q tq.queue := tq.admin_target(queue, tenant, false);
BEGIN
    RETURN (SELECT count(*) FROM tq.revive(q.name, tenant, NULL, '{dead}'));
END
$$;
COMMENT ON FUNCTION @extschema@.tq_retry_dead(text, text) IS
'Brings every dead task of a queue (or of one tenant in it) back with a fresh attempt budget. Returns how many.';

------------------------------------------------------------------------------
-- Cancel, pause, purge (the operator's side)
------------------------------------------------------------------------------

-- Asks the worker running a task to stop (seen by its next heartbeat).
CREATE FUNCTION tq.request_cancel(p_ids bigint[]) RETURNS bigint
    LANGUAGE sql VOLATILE AS $$
    WITH f AS (
        UPDATE tq.task t SET cancel_requested = true
         WHERE t.id = ANY (p_ids) AND t.state = 'running' AND NOT t.cancel_requested
        RETURNING t.id, t.attempt, t.worker
    )
    SELECT count(*) FROM f, LATERAL (SELECT pg_catalog.pg_notify('tq_cancel',
        pg_catalog.json_build_object('id', f.id, 'attempt', f.attempt, 'worker', f.worker)::text)) n
$$;
COMMENT ON FUNCTION tq.request_cancel(bigint[]) IS 'Flags running tasks for cancellation and sends tq_cancel; returns how many were flagged.';

CREATE FUNCTION @extschema@.tq_cancel(id bigint)
    RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
    IF id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'task id must not be null';
    END IF;
    -- tq_admin cancels any task; a role bound to tenants only its tenants'
    -- (another tenant's task is as unknown to it as a missing one).
    IF NOT pg_catalog.pg_has_role(tq.caller(), 'tq_admin', 'USAGE') THEN
        IF NOT tq.caller_bound() THEN
            RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
                MESSAGE = 'tq_cancel of a task needs tq_admin, or a role bound to the task''s tenant',
                HINT = 'Bind the role to its tenants with tq_grant_tenant, or cancel as a member of tq_admin.';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM tq.task t WHERE t.id = tq_cancel.id AND tq.tenant_allowed(t.queue, t.tenant))
           AND NOT EXISTS (SELECT 1 FROM tq.history h
                            WHERE h.id = tq_cancel.id AND tq.tenant_allowed(h.queue, h.tenant)) THEN
            RAISE EXCEPTION USING ERRCODE = 'undefined_object',
                MESSAGE = format('task %s does not exist', id),
                HINT = 'It may never have existed, or its queue''s retention has removed it.';
        END IF;
    END IF;
    IF EXISTS (SELECT tq.finish(ARRAY[id], NULL, '{scheduled,ready,paused}', '{cancelled}', NULL,
                                '{"cancelled by tq_cancel before it ran"}')) THEN
        RETURN true;
    END IF;
    IF EXISTS (SELECT 1 FROM tq.task t WHERE t.id = tq_cancel.id AND t.state = 'running') THEN
        PERFORM tq.request_cancel(ARRAY[id]);
        RETURN true;
    END IF;
    IF EXISTS (SELECT 1 FROM tq.history h WHERE h.id = tq_cancel.id) THEN
        RETURN false;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'undefined_object',
        MESSAGE = format('task %s does not exist', id),
        HINT = 'It may never have existed, or its queue''s retention has removed it.';
END
$$;
COMMENT ON FUNCTION @extschema@.tq_cancel(bigint) IS
'Cancels a queued task at once, or asks the worker running it to stop (reported by its next heartbeat). False if the task had already finished. tq_admin cancels any task, a role bound to tenants (tq_grant_tenant) its tenants'' tasks.';

CREATE FUNCTION @extschema@.tq_cancel(queue text, tenant text DEFAULT NULL, include_running boolean DEFAULT true)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    q tq.queue := tq.admin_target(queue, tenant, false);
    ids bigint[];
    n bigint;
BEGIN
    SELECT array_agg(t.id) INTO ids FROM tq.task t
     WHERE t.queue = q.name AND t.state IN ('scheduled', 'ready', 'paused')
       AND (tenant IS NULL OR t.tenant = tenant);
    n := (SELECT count(*) FROM tq.finish(ids, NULL, '{scheduled,ready,paused}',
              array_fill('cancelled'::tq.task_state, ARRAY[coalesce(cardinality(ids), 0)]), NULL,
              array_fill('cancelled by tq_cancel before it ran'::text, ARRAY[coalesce(cardinality(ids), 0)])));
    IF coalesce(include_running, true) THEN
        n := n + tq.request_cancel(ARRAY(
                SELECT t.id FROM tq.task t
                 WHERE t.state = 'running' AND t.queue = q.name
                   AND (tenant IS NULL OR t.tenant = tenant)));
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_cancel(text, text, boolean) IS
'Cancels every queued task of a queue (or of one tenant in it) and, unless include_running is false, asks workers to stop the running ones. Returns how many.';

CREATE TABLE tq.tenant_pause (
    queue       text NOT NULL,
    tenant      text NOT NULL,
    paused_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, tenant)
);
COMMENT ON TABLE tq.tenant_pause IS 'Tenants paused within a queue (tq_pause with a tenant).';
COMMENT ON COLUMN tq.tenant_pause.queue IS 'Queue in which the tenant is paused.';
COMMENT ON COLUMN tq.tenant_pause.tenant IS 'The paused tenant.';
COMMENT ON COLUMN tq.tenant_pause.paused_at IS 'When tq_pause paused it.';
SELECT pg_catalog.pg_extension_config_dump('tq.tenant_pause', '');

-- Is this tenant's work in this queue paused (whole queue or the tenant)?
CREATE FUNCTION tq.is_paused(p_queue tq.queue, p_tenant text) RETURNS boolean
    LANGUAGE sql STABLE AS $$
    SELECT p_queue.paused
        OR (p_tenant IS NOT NULL
            AND EXISTS (SELECT 1 FROM tq.tenant_pause p
                        WHERE p.queue = p_queue.name AND p.tenant = p_tenant))
$$;
COMMENT ON FUNCTION tq.is_paused(tq.queue, text) IS 'True when the queue or the tenant within it is paused.';

CREATE FUNCTION @extschema@.tq_pause(queue text, tenant text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    q tq.queue := tq.admin_target(queue, tenant, true);
    n bigint;
BEGIN
    IF tenant IS NULL THEN
        UPDATE tq.queue x SET paused = true WHERE x.name = q.name;
        UPDATE tq.task t SET state = 'paused' WHERE t.queue = q.name AND t.state = 'ready';
    ELSE
        INSERT INTO tq.tenant_pause (queue, tenant) VALUES (q.name, tenant) ON CONFLICT DO NOTHING;
        UPDATE tq.task t SET state = 'paused'
         WHERE t.queue = q.name AND t.state = 'ready' AND t.tenant = tenant;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_pause(text, text) IS
'Pauses a queue, or one tenant in it: its ready tasks are held as paused and not leased. Running tasks go on. Returns how many tasks were held.';

CREATE FUNCTION @extschema@.tq_resume(queue text, tenant text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    q tq.queue := tq.admin_target(queue, tenant, true);
    n bigint;
BEGIN
    IF tenant IS NULL THEN
        UPDATE tq.queue x SET paused = false WHERE x.name = q.name;
        q.paused := false;
    ELSE
        DELETE FROM tq.tenant_pause p WHERE p.queue = q.name AND p.tenant = tenant;
    END IF;
    UPDATE tq.task t SET state = 'ready'
     WHERE t.queue = q.name AND t.state = 'paused'
       AND (tenant IS NULL OR t.tenant = tenant)
       AND NOT tq.is_paused(q, t.tenant);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM tq.wake(q.name);
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_resume(text, text) IS
'Resumes a paused queue or tenant. Returns how many tasks became ready.';

CREATE FUNCTION @extschema@.tq_purge(queue text, state text DEFAULT NULL, older_than interval DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    q tq.queue := tq.get_queue(queue);
    states tq.task_state[] := '{succeeded,dead,cancelled,expired}';
    n bigint;
BEGIN
    IF state IS NOT NULL THEN
        IF state NOT IN ('succeeded', 'dead', 'cancelled', 'expired') THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('cannot purge tasks in state "%s"', state),
                DETAIL = 'Only finished tasks can be purged.',
                HINT = 'Use succeeded, dead, cancelled, expired, or NULL for all four; cancel live tasks with tq_cancel.';
        END IF;
        states := ARRAY[state::tq.task_state];
    END IF;
    PERFORM tq.check_interval('older_than', older_than, '0', '100 years');
    DELETE FROM tq.history h
     WHERE h.queue = q.name AND h.state = ANY (states)
       AND h.finished_at <= now() - coalesce(older_than, interval '0');
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_purge(text, text, interval) IS
'Deletes finished tasks of a queue from history: one state (succeeded, dead, cancelled, expired) or all, optionally only those finished longer ago than older_than. Dedup windows are unaffected.';

------------------------------------------------------------------------------
-- Housekeeping: promotion, expiry, maintenance
------------------------------------------------------------------------------

/*
 * Promotes due scheduled tasks of the given queues (all queues when NULL)
 * to ready, or to paused where the queue or tenant is paused, and wakes
 * the workers of each queue that got ready work.  Bounded per call.
 */
CREATE FUNCTION tq.promote(p_queues text[], p_limit integer DEFAULT 5000) RETURNS bigint
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n bigint;
    woke text[];
BEGIN
    WITH due AS (
        SELECT id FROM tq.task
        WHERE state = 'scheduled' AND run_at <= now()
          AND (p_queues IS NULL OR queue = ANY (p_queues))
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), up AS (
        UPDATE tq.task t
           SET state = CASE WHEN tq.is_paused(q, t.tenant) THEN 'paused'::tq.task_state
                            ELSE 'ready'::tq.task_state END
          FROM due, tq.queue q
         WHERE t.id = due.id AND q.name = t.queue
        RETURNING t.queue, t.state
    )
    SELECT count(*), array_agg(DISTINCT up.queue) FILTER (WHERE up.state = 'ready')
      INTO n, woke
      FROM up;
    PERFORM tq.wake(w) FROM unnest(woke) w;
    RETURN coalesce(n, 0);
END
$$;
COMMENT ON FUNCTION tq.promote(text[], integer) IS 'Makes due scheduled tasks ready (or paused) and wakes their queues'' workers; returns how many moved.';

-- Tasks whose expires_at passed before they started become expired.
CREATE FUNCTION tq.expire(p_limit integer DEFAULT 1000) RETURNS bigint
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    ids bigint[];
BEGIN
    SELECT array_agg(id) INTO ids
      FROM (SELECT id FROM tq.task
            WHERE expires_at <= now() AND expires_at IS NOT NULL AND state <> 'running'
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED) s;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    RETURN (SELECT count(*) FROM tq.finish(ids, NULL, '{scheduled,ready,paused}',
                array_fill('expired'::tq.task_state, ARRAY[cardinality(ids)]), NULL,
                array_fill('expired: expires_at passed before the task started'::text,
                           ARRAY[cardinality(ids)])));
END
$$;
COMMENT ON FUNCTION tq.expire(integer) IS 'Moves queued tasks whose expires_at has passed to history as expired; returns how many.';

CREATE TABLE tq.meta (
    one              boolean PRIMARY KEY DEFAULT true CHECK (one),
    next_maintenance timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO tq.meta DEFAULT VALUES;
COMMENT ON TABLE tq.meta IS 'Single row of extension-wide state: when the next opportunistic maintenance pass is due.';
COMMENT ON COLUMN tq.meta.one IS 'Always true: the table has one row.';
COMMENT ON COLUMN tq.meta.next_maintenance IS 'When tq_lease next runs tq_maintain.';

/*
 * Maintenance pass: promotion, lease reclaim and expiry for all queues,
 * pause repair, then history partitions ahead of need, retention, and
 * forgetting dedup keys whose window has passed.  Safe to run
 * concurrently: a second caller skips the partition work while another
 * holds it, and DDL gives up after a short lock wait (it is tried again on
 * the next pass) rather than queue behind a long reader of tq.history.
 * Pause repair leaves parked tasks (they keep their key) to
 * tq.unpark_held.
 */
CREATE FUNCTION @extschema@.tq_maintain()
    RETURNS TABLE (action text, queue text, n bigint)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    q tq.queue;
    k bigint;
    woke text[];
    old_timeout text := current_setting('lock_timeout');
BEGIN
    -- Schedule the next pass first: whatever happens below, the lease path
    -- does not retry at once.
    UPDATE tq.meta
       SET next_maintenance = now() + current_setting('tq.maintenance_interval')::interval;

    action := 'promoted'; queue := NULL; n := tq.promote(NULL, 100000); RETURN NEXT;
    action := 'reclaimed'; n := tq.reclaim(100000); RETURN NEXT;
    action := 'expired'; n := tq.expire(100000); RETURN NEXT;

    /*
     * Pause repair.  A submit, promotion or release decides between ready
     * and paused from what it reads, without locking the queue; one that
     * races tq_resume can leave a task paused in a queue that is running
     * again (and one racing tq_pause a task ready in a paused tenant,
     * which tq_lease filters out but must step over).  Put both right.
     */
    WITH up AS (
        UPDATE tq.task t SET state = 'ready'
          FROM tq.queue x
         WHERE t.state = 'paused' AND x.name = t.queue AND NOT x.paused
           AND t.vkey IS NULL  -- parked by a tenant limit: tq.unpark_held's
           AND NOT EXISTS (SELECT 1 FROM tq.tenant_pause p WHERE p.queue = t.queue AND p.tenant = t.tenant)
        RETURNING t.queue
    )
    SELECT count(*), array_agg(DISTINCT up.queue) INTO k, woke FROM up;
    PERFORM tq.wake(w) FROM unnest(woke) w;
    UPDATE tq.task t SET state = 'paused'
      FROM tq.tenant_pause p
     WHERE t.state = 'ready' AND t.queue = p.queue AND t.tenant = p.tenant;
    GET DIAGNOSTICS n = ROW_COUNT;
    n := n + k;
    action := 'pause state repaired'; RETURN NEXT;

    -- One partition maintainer at a time (key: 'tq' in ASCII).
    IF NOT pg_try_advisory_xact_lock(7417) THEN
        RETURN;
    END IF;
    FOR q IN SELECT * FROM tq.queue ORDER BY name LOOP
        BEGIN
            PERFORM set_config('lock_timeout', '500ms', true);
            action := 'partitions created'; queue := q.name; n := tq.ensure_partitions(q);
            IF n > 0 THEN RETURN NEXT; END IF;
            action := 'tasks past retention dropped'; n := tq.apply_retention(q);
            IF n > 0 THEN RETURN NEXT; END IF;
            PERFORM set_config('lock_timeout', old_timeout, true);
        EXCEPTION WHEN lock_not_available THEN
            PERFORM set_config('lock_timeout', old_timeout, true);
            RAISE NOTICE 'tq: maintenance of queue "%" postponed: history is locked by another session', q.name;
        END;
    END LOOP;
    DELETE FROM tq.dedup x WHERE x.until < now();
    GET DIAGNOSTICS k = ROW_COUNT;
    action := 'dedup keys forgotten'; queue := NULL; n := k; RETURN NEXT;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_maintain() IS
'Runs a maintenance pass now: promotes due tasks, reclaims expired leases, expires overdue tasks, creates history partitions, applies retention, forgets old dedup keys. tq_lease runs it every tq.maintenance_interval.';

/*
 * Called by tq_lease: runs tq_maintain when it is due, in at most one
 * session at a time (the others skip the locked meta row).  A failing
 * pass must not stop dispatch: its error becomes a WARNING, its work is
 * rolled back, and it is tried again after tq.maintenance_interval.
 */
CREATE FUNCTION tq.maybe_maintain() RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    msg text;
    state text;
BEGIN
    PERFORM 1 FROM tq.meta WHERE next_maintenance <= now() FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    BEGIN
        PERFORM @extschema@.tq_maintain();
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
        UPDATE tq.meta
           SET next_maintenance = now() + current_setting('tq.maintenance_interval')::interval;
        RAISE WARNING 'tq: maintenance pass failed: % (SQLSTATE %)', msg, state
            USING HINT = 'Leasing goes on; run SELECT * FROM tq_maintain() to see the error in full.';
    END;
END
$$;
COMMENT ON FUNCTION tq.maybe_maintain() IS 'Runs tq_maintain if tq.maintenance_interval has passed since the last pass and no other session is running one.';

------------------------------------------------------------------------------
-- The background worker (extension/bgworker.c)
------------------------------------------------------------------------------

/*
 * A background worker, started when tq.database names this database,
 * promotes due scheduled tasks, reclaims expired leases, expires overdue
 * tasks, brings parked tasks back and runs the maintenance pass on time,
 * without waiting for tq_lease traffic; and it sends tq_ready for
 * producers, so that a submitting transaction does not take the notify
 * lock at commit.
 *
 * One housekeeping pass of the background worker.  Returns the seconds
 * until the next event it must act on: the earliest scheduled run_at,
 * lease expiry, expires_at, maintenance time or room for a tenant's parked
 * tasks (negative if one is overdue, NULL if there is none).  Called by
 * the worker's own session, so it pins its search_path; the helpers it
 * calls run under it.
 */
CREATE FUNCTION tq.background_pass() RETURNS double precision
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nxt timestamptz;
BEGIN
    PERFORM tq.promote(NULL, 10000);
    PERFORM tq.reclaim(10000);
    PERFORM tq.expire(10000);
    PERFORM tq.unpark_held();
    PERFORM tq.maybe_maintain();
    SELECT least((SELECT t.run_at FROM tq.task t WHERE t.state = 'scheduled' ORDER BY t.run_at LIMIT 1),
                 (SELECT t.lease_until FROM tq.task t
                   WHERE t.state = 'running' AND t.lease_until IS NOT NULL
                   ORDER BY t.lease_until LIMIT 1),
                 (SELECT t.expires_at FROM tq.task t
                   WHERE t.expires_at IS NOT NULL AND t.state <> 'running'
                   ORDER BY t.expires_at LIMIT 1),
                 (SELECT greatest(m.next_maintenance, now()) FROM tq.meta m),  -- not -infinity
                 clock_timestamp() + make_interval(secs => tq.held_next()))
      INTO nxt;
    RETURN extract(epoch FROM nxt - clock_timestamp());
END
$$;
COMMENT ON FUNCTION tq.background_pass() IS 'One housekeeping pass of the background worker (promote, reclaim, expire, maintain when due); returns the seconds until the next due event.';

/*
 * Tells the worker, at commit, that a task became scheduled (perhaps due
 * before it plans to wake).  Per row, but only for rows becoming
 * scheduled, and it only sets a flag.  Not on INSERT: task_account notes
 * new scheduled rows itself, and a trigger's WHEN clause is read and
 * compiled again for every statement, which showed in single-row submits.
 */
CREATE FUNCTION tq.task_changed() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'tq_task_changed';
COMMENT ON FUNCTION tq.task_changed() IS 'Trigger on tq.task for rows becoming scheduled: at commit, the background worker re-reads when its next event is due.';
CREATE TRIGGER task_scheduled BEFORE UPDATE OF state, run_at ON tq.task
    FOR EACH ROW WHEN (NEW.state = 'scheduled') EXECUTE FUNCTION tq.task_changed();

CREATE FUNCTION @extschema@.tq_worker_status(
    OUT running boolean, OUT pid integer, OUT database oid, OUT started timestamptz,
    OUT last_pass timestamptz, OUT next_pass timestamptz, OUT passes bigint,
    OUT notifications bigint, OUT pending_queues integer)
    RETURNS record
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'tq_worker_status';
COMMENT ON FUNCTION @extschema@.tq_worker_status() IS
'The background worker: whether it runs, its pid and database, when it started, its last and next housekeeping pass, passes and tq_ready notifications so far, and queues waiting to be notified (-1: all).';

------------------------------------------------------------------------------
-- Fair dispatch and shared state (extension/fair_*.c)
------------------------------------------------------------------------------

/*
 * Per-tenant policy.  A tenant needs no row to be served: without one it
 * has weight 1 and no limits of its own.
 */
CREATE TABLE tq.tenant (
    queue           text NOT NULL REFERENCES tq.queue (name) ON DELETE CASCADE,
    tenant          text NOT NULL,
    weight          double precision NOT NULL DEFAULT 1,
    rate_per_sec    double precision,
    burst           double precision,
    concurrency     integer,
    backlog_limit   bigint,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, tenant)
);
COMMENT ON TABLE tq.tenant IS 'Policy of tenants within a queue (tq_set_tenant): fair-share weight, rate limit, concurrency quota, backlog limit.';
COMMENT ON COLUMN tq.tenant.queue IS 'The queue.';
COMMENT ON COLUMN tq.tenant.tenant IS 'The tenant.';
COMMENT ON COLUMN tq.tenant.weight IS 'Share of the queue relative to other backlogged tenants (default 1).';
COMMENT ON COLUMN tq.tenant.rate_per_sec IS 'Most of this tenant''s tasks started per second; NULL for no limit.';
COMMENT ON COLUMN tq.tenant.burst IS 'Bucket size of rate_per_sec (default: one second''s worth).';
COMMENT ON COLUMN tq.tenant.concurrency IS 'Most of this tenant''s tasks running at once; NULL for no limit.';
COMMENT ON COLUMN tq.tenant.backlog_limit IS 'Most queued tasks this tenant may have; NULL for no limit.';
COMMENT ON COLUMN tq.tenant.updated_at IS 'When tq_set_tenant last changed the row.';
SELECT pg_catalog.pg_extension_config_dump('tq.tenant', '');

/*
 * One BEFORE ROW trigger function on tq.task sees every state change of
 * every task and keeps the shared state: counts per (queue, tenant,
 * state), the fair dispatch key of tasks becoming ready, the claim gate
 * for limits and quotas, and the backlog check on submit.
 */
CREATE FUNCTION tq.task_row() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'tq_task_row';
COMMENT ON FUNCTION tq.task_row() IS 'Trigger on tq.task: keeps the shared counters, gives tasks becoming ready their fair key, applies limits and quotas to claims (parking tasks of throttled tenants) and refuses submits past a backlog_limit.';
CREATE TRIGGER task_account BEFORE INSERT OR DELETE ON tq.task
    FOR EACH ROW EXECUTE FUNCTION tq.task_row();
CREATE TRIGGER task_moved BEFORE UPDATE OF state ON tq.task
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION tq.task_row();

CREATE FUNCTION tq.take_parked() RETURNS bigint
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tq_take_parked';
COMMENT ON FUNCTION tq.take_parked() IS 'Tasks this session''s claims parked (tenant at its limit) since the last call.';

CREATE FUNCTION tq.held_work(OUT queue text, OUT tenant text, OUT room integer, OUT gen bigint)
    RETURNS SETOF record
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tq_held_work';
COMMENT ON FUNCTION tq.held_work() IS 'Tenants with parked tasks and room to run some now.';

CREATE FUNCTION tq.held_done(queue text, tenant text, gen bigint) RETURNS void
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tq_held_done';
COMMENT ON FUNCTION tq.held_done(text, text, bigint) IS 'Marks a tenant as having no parked task left, unless it parked more since gen.';

CREATE FUNCTION tq.held_next() RETURNS double precision
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tq_held_next';
COMMENT ON FUNCTION tq.held_next() IS 'Seconds until a tenant with parked tasks has room again (0: now; NULL: none waits on a bucket).';

CREATE FUNCTION tq.shared_counts(
    OUT queue text, OUT tenant text, OUT is_queue boolean,
    OUT scheduled bigint, OUT ready bigint, OUT paused bigint, OUT running bigint,
    OUT leased bigint, OUT lease_rate double precision, OUT held boolean,
    OUT weight double precision, OUT rate_per_sec double precision, OUT burst double precision,
    OUT concurrency bigint, OUT backlog_limit bigint, OUT vclock double precision,
    OUT tokens double precision)
    RETURNS SETOF record
    LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'tq_shared_counts';
COMMENT ON FUNCTION tq.shared_counts() IS 'The shared-memory entries of this database: live counts per state, claims, policy, virtual clock and bucket of each queue and (queue, tenant).';

CREATE FUNCTION tq.policy_changed(queue text, tenant text, is_queue boolean) RETURNS void
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tq_policy_changed';
COMMENT ON FUNCTION tq.policy_changed(text, text, boolean) IS 'Makes the shared entries of a queue (all of them) or of one tenant re-read their policy.';

CREATE FUNCTION tq.reset_shared() RETURNS void
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'tq_reset_shared';
COMMENT ON FUNCTION tq.reset_shared() IS 'Drops this database''s shared entries; they are rebuilt from tq.task on next use.';

/*
 * Moves parked tasks of tenants that have room again back to ready, in
 * key order (their keys were kept, so they return to their place).
 * Called by the background worker, and by tq_lease when one is due.
 */
CREATE FUNCTION tq.unpark_held() RETURNS bigint
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r record;
    n bigint;
    total bigint := 0;
BEGIN
    FOR r IN SELECT * FROM tq.held_work() LOOP
        WITH pick AS (
            SELECT t.id FROM tq.task t
             WHERE t.queue = r.queue AND t.state = 'paused'
               AND (CASE WHEN r.tenant IS NULL THEN t.tenant IS NULL ELSE t.tenant = r.tenant END)
               AND t.vkey IS NOT NULL
             ORDER BY t.queue, t.tenant, t.vkey
             LIMIT r.room
             FOR UPDATE SKIP LOCKED
        )
        UPDATE tq.task t SET state = 'ready'
          FROM pick, tq.queue q
         WHERE t.id = pick.id AND q.name = t.queue AND NOT tq.is_paused(q, t.tenant);
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n < r.room THEN
            PERFORM tq.held_done(r.queue, r.tenant, r.gen);
        END IF;
        IF n > 0 THEN
            PERFORM tq.wake(r.queue);
        END IF;
        total := total + n;
    END LOOP;
    RETURN total;
END
$$;
COMMENT ON FUNCTION tq.unpark_held() IS 'Returns parked tasks of tenants with room again to ready, in key order; returns how many.';

/*
 * Sets a tenant's policy within a queue.  Every argument is the new value
 * (NULL: no limit); weight 1 and no limits is the default a tenant has
 * without a row, so tq_set_tenant(q, t) resets it.
 */
CREATE FUNCTION @extschema@.tq_set_tenant(
    queue text,
    tenant text,
    weight double precision DEFAULT 1,
    rate_per_sec double precision DEFAULT NULL,
    burst double precision DEFAULT NULL,
    concurrency integer DEFAULT NULL,
    backlog_limit bigint DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    q tq.queue := tq.get_queue(queue);
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'tenant must not be null',
            HINT = 'Tasks without a tenant share the queue''s own limits; set those with tq_alter_queue.';
    END IF;
    PERFORM tq.check_label(tenant, 'tenant', 200);
    IF weight IS NULL OR NOT (weight >= 0.001 AND weight <= 1000000) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'weight is out of range',
            DETAIL = format('The value given is %s; it must be between 0.001 and 1000000.', coalesce(weight::text, 'NULL')),
            HINT = 'A tenant of weight 2 gets twice the share of a tenant of weight 1 while both have work.';
    END IF;
    PERFORM tq.check_limits(rate_per_sec, burst, concurrency);
    PERFORM tq.check_int('backlog_limit', backlog_limit, 1, 1000000000000);
    INSERT INTO tq.tenant AS x (queue, tenant, weight, rate_per_sec, burst, concurrency, backlog_limit)
    VALUES (q.name, tenant, weight, rate_per_sec, burst, concurrency, backlog_limit)
    ON CONFLICT ON CONSTRAINT tenant_pkey DO UPDATE
        SET weight = excluded.weight, rate_per_sec = excluded.rate_per_sec, burst = excluded.burst,
            concurrency = excluded.concurrency, backlog_limit = excluded.backlog_limit,
            updated_at = now();
    PERFORM tq.policy_changed(q.name, tenant, false);
END
$$;
COMMENT ON FUNCTION @extschema@.tq_set_tenant(text, text, double precision, double precision, double precision, integer, bigint) IS
'Sets a tenant''s fair-share weight, rate limit (rate_per_sec, burst), concurrency quota and backlog_limit within a queue; NULL means no limit.';

------------------------------------------------------------------------------
-- Limits
------------------------------------------------------------------------------

/*
 * Rate, burst and concurrency of a queue or a tenant.  At least one start
 * per 11.6 days: a bucket's refill time (1 / rate) must stay a number of
 * seconds an interval can hold.
 */
CREATE FUNCTION tq.check_limits(p_rate double precision, p_burst double precision, p_concurrency integer)
    RETURNS void
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_rate IS NOT NULL AND NOT (p_rate >= 0.000001 AND p_rate <= 1e9) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'rate_per_sec is out of range',
            DETAIL = format('The value given is %s; it must be between 0.000001 and 1e9.', p_rate),
            HINT = 'Pass NULL (or 0 to tq_alter_queue) for no rate limit.';
    END IF;
    IF p_burst IS NOT NULL AND NOT (p_burst >= 1 AND p_burst <= 1e12) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'burst is out of range',
            DETAIL = format('The value given is %s; it must be at least 1 and at most 1e12.', p_burst);
    END IF;
    IF p_burst IS NOT NULL AND p_rate IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'burst needs rate_per_sec',
            HINT = 'burst is the bucket size of a rate limit; set rate_per_sec too.';
    END IF;
    PERFORM tq.check_int('concurrency', p_concurrency, 1, 1000000);
END
$$;
COMMENT ON FUNCTION tq.check_limits(double precision, double precision, integer) IS 'Raises a clear error for a rate limit or concurrency quota out of range.';

CREATE FUNCTION tq.lease_room(queue text, want integer) RETURNS integer
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'tq_lease_room';
COMMENT ON FUNCTION tq.lease_room(text, integer) IS 'How many tasks the queue''s concurrency and rate limits let a lease claim now (at most want).';

/*
 * Token buckets in shared memory (extension/ratelimit.c), for any code
 * that must respect a third party's limit: true if n tokens were taken.
 * Each role (current_user) has keys of its own.
 */
CREATE FUNCTION @extschema@.tq_rate_consume(key text, n integer DEFAULT 1,
                                            rate double precision DEFAULT NULL,
                                            burst double precision DEFAULT NULL)
    RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'tq_rate_consume';
COMMENT ON FUNCTION @extschema@.tq_rate_consume(text, integer, double precision, double precision) IS
'Takes n tokens from the calling role''s shared token bucket of key (rate tokens per second, at least 0.000001; capacity burst, default one second''s worth) and returns true, or returns false and takes none. Shared by every session of the cluster that runs as the same role (current_user): other roles'' keys are other buckets. Buckets start full, also after a restart; a role holds at most tq.max_rate_keys_per_role of them.';

------------------------------------------------------------------------------
-- Periodic tasks, on pg_cron
------------------------------------------------------------------------------

/*
 * A schedule submits a task to a queue at each firing of a cron expression.
 * The cron part is pg_cron's (a parser of its own would be one more thing
 * to get wrong); tq keeps the task side: each firing submits with the dedup
 * key 'schedule:<name>:<firing minute, UTC>', so a double firing in one
 * minute (a retried job, two schedulers after a failover) runs once.
 * pg_cron must be installed in this database (it is the one named by
 * cron.database_name).
 */
CREATE TABLE tq.schedule (
    name        text PRIMARY KEY,
    cron        text NOT NULL,
    queue       text NOT NULL,
    payload     jsonb NOT NULL,
    priority    smallint NOT NULL,
    tenant      text,
    max_attempts integer,
    timeout     interval,
    jobid       bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE tq.schedule IS 'Periodic tasks (tq_schedule): what to submit at each firing of a pg_cron job.';
COMMENT ON COLUMN tq.schedule.name IS 'Schedule name; the pg_cron job is named tq:<name>.';
COMMENT ON COLUMN tq.schedule.cron IS 'Cron expression, as pg_cron reads it.';
COMMENT ON COLUMN tq.schedule.queue IS 'Queue each firing submits to.';
COMMENT ON COLUMN tq.schedule.payload IS 'Payload of each submitted task.';
COMMENT ON COLUMN tq.schedule.priority IS 'Priority of each submitted task.';
COMMENT ON COLUMN tq.schedule.tenant IS 'Tenant of each submitted task (NULL: none).';
COMMENT ON COLUMN tq.schedule.max_attempts IS 'max_attempts of each task (NULL: the queue''s).';
COMMENT ON COLUMN tq.schedule.timeout IS 'Run-time limit of each task (NULL: the queue''s).';
COMMENT ON COLUMN tq.schedule.jobid IS 'The pg_cron job (cron.job.jobid).';
COMMENT ON COLUMN tq.schedule.created_at IS 'When the schedule was created or last replaced.';
SELECT pg_catalog.pg_extension_config_dump('tq.schedule', '');

-- Raises the error for a database without pg_cron, or with impostors of its
-- objects.
CREATE FUNCTION tq.require_pg_cron() RETURNS void
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ext oid;
    bad text;
BEGIN
    SELECT e.oid INTO ext FROM pg_catalog.pg_extension e WHERE e.extname = 'pg_cron';
    IF ext IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
            MESSAGE = 'periodic tasks need the pg_cron extension in this database',
            DETAIL = 'tq_schedule creates pg_cron jobs; pg_cron is not installed here.',
            HINT = 'Install postgresql-15-cron, add pg_cron to shared_preload_libraries, set cron.database_name to this database, restart, then CREATE EXTENSION pg_cron.';
    END IF;
    -- tq_schedule and tq_unschedule run as the extension's owner: what they
    -- call must be pg_cron's own objects, owned by a superuser, not
    -- something of the same name that a role able to create a schema made.
    SELECT o.what INTO bad
      FROM (VALUES ('cron.schedule(text,text,text)', 'pg_catalog.pg_proc'::pg_catalog.regclass,
                    pg_catalog.to_regprocedure('cron.schedule(text,text,text)')::oid),
                   ('cron.unschedule(name)', 'pg_catalog.pg_proc'::pg_catalog.regclass,
                    pg_catalog.to_regprocedure('cron.unschedule(name)')::oid),
                   ('cron.job', 'pg_catalog.pg_class'::pg_catalog.regclass,
                    pg_catalog.to_regclass('cron.job')::oid)) AS o(what, cls, obj)
     WHERE o.obj IS NULL
        OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                        WHERE d.classid = o.cls AND d.objid = o.obj AND d.deptype = 'e'
                          AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                          AND d.refobjid = ext)
        OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                        WHERE r.rolsuper
                          AND r.oid = CASE WHEN o.cls = 'pg_catalog.pg_proc'::pg_catalog.regclass
                                           THEN (SELECT p.proowner FROM pg_catalog.pg_proc p WHERE p.oid = o.obj)
                                           ELSE (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = o.obj) END)
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('%s is not pg_cron''s', bad),
            DETAIL = 'tq calls only objects that belong to the pg_cron extension and are owned by a superuser.',
            HINT = 'Drop what stands in the way of pg_cron''s own objects, or install pg_cron as a superuser.';
    END IF;
END
$$;
COMMENT ON FUNCTION tq.require_pg_cron() IS 'Raises a clear error unless pg_cron is installed in this database (0A000) and cron.schedule, cron.unschedule and cron.job are its own, owned by a superuser (42501).';

/*
 * One firing: submit the schedule's task with the dedup key of this
 * firing's minute.  Run by pg_cron; a schedule dropped meanwhile does
 * nothing.
 */
CREATE FUNCTION tq.fire_schedule(p_name text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s tq.schedule;
BEGIN
    SELECT * INTO s FROM tq.schedule x WHERE x.name = p_name;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN @extschema@.tq_submit(s.queue, s.payload, priority => s.priority, tenant => s.tenant,
                                 max_attempts => s.max_attempts, timeout => s.timeout,
                                 dedup_key => format('schedule:%s:%s', s.name,
                                                     to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"')));
END
$$;
COMMENT ON FUNCTION tq.fire_schedule(text) IS 'One firing of a schedule: submits its task with the dedup key of the firing minute; returns the task id.';

CREATE FUNCTION @extschema@.tq_schedule(
    name text,
    cron text,
    queue text,
    payload jsonb DEFAULT '{}',
    priority integer DEFAULT 0,
    tenant text DEFAULT NULL,
    max_attempts integer DEFAULT NULL,
    timeout interval DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    q tq.queue;
    v_jobid bigint;
BEGIN
    PERFORM tq.check_name(name, 'schedule');
    q := tq.get_queue(queue);
    PERFORM tq.check_payload(payload);
    PERFORM tq.check_submit(q, NULL, priority, tenant, max_attempts, timeout, NULL);
    IF cron IS NULL OR btrim(cron) = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'cron must not be empty',
            HINT = 'Give a cron expression, for example ''*/5 * * * *'' for every five minutes.';
    END IF;
    PERFORM tq.require_pg_cron();
    BEGIN
        EXECUTE 'SELECT cron.schedule($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.text)'
           INTO v_jobid
          USING 'tq:' || name, cron, format('SELECT tq.fire_schedule(%L)', name);
    EXCEPTION WHEN OTHERS THEN
        IF SQLERRM LIKE 'invalid schedule%' THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('invalid cron expression "%s"', cron),
                DETAIL = SQLERRM,
                HINT = 'Use five fields (minute hour day month weekday), for example ''0 3 * * *'', or @daily and the like.';
        END IF;
        RAISE;
    END;
    INSERT INTO tq.schedule AS x (name, cron, queue, payload, priority, tenant, max_attempts, timeout, jobid)
    VALUES (name, cron, q.name, payload, priority, tenant, max_attempts, timeout, v_jobid)
    ON CONFLICT ON CONSTRAINT schedule_pkey DO UPDATE
        SET cron = excluded.cron, queue = excluded.queue, payload = excluded.payload,
            priority = excluded.priority, tenant = excluded.tenant,
            max_attempts = excluded.max_attempts, timeout = excluded.timeout,
            jobid = excluded.jobid, created_at = now();
    RETURN v_jobid;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_schedule(text, text, text, jsonb, integer, text, integer, interval) IS
'Creates or replaces a periodic task: at each firing of the cron expression (pg_cron), submits a task to queue with the given payload and options; a double firing in one minute runs once. Returns the pg_cron job id. Needs pg_cron in this database.';

CREATE FUNCTION @extschema@.tq_unschedule(name text)
    RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'schedule name must not be null';
    END IF;
    PERFORM tq.require_pg_cron();
    DELETE FROM tq.schedule x WHERE x.name = tq_unschedule.name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM cron.job j WHERE j.jobname = 'tq:' || name;
    IF FOUND THEN
        EXECUTE 'SELECT cron.unschedule($1::pg_catalog.name)' USING 'tq:' || name;
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_unschedule(text) IS
'Removes a periodic task and its pg_cron job. False if there was none.';

CREATE VIEW @extschema@.tq_schedules AS
    SELECT s.name, s.cron, s.queue, s.payload, s.priority, s.tenant, s.max_attempts, s.timeout,
           s.jobid, s.created_at
      FROM tq.schedule s
     WHERE tq.tenant_allowed(s.queue, s.tenant);
COMMENT ON VIEW @extschema@.tq_schedules IS 'Periodic tasks created with tq_schedule. A role bound to tenants sees only its own.';
COMMENT ON COLUMN @extschema@.tq_schedules.name IS 'Schedule name.';
COMMENT ON COLUMN @extschema@.tq_schedules.cron IS 'Cron expression.';
COMMENT ON COLUMN @extschema@.tq_schedules.queue IS 'Queue each firing submits to.';
COMMENT ON COLUMN @extschema@.tq_schedules.payload IS 'Payload of each task.';
COMMENT ON COLUMN @extschema@.tq_schedules.priority IS 'Priority of each task.';
COMMENT ON COLUMN @extschema@.tq_schedules.tenant IS 'Tenant of each task.';
COMMENT ON COLUMN @extschema@.tq_schedules.max_attempts IS 'max_attempts of each task (NULL: the queue''s).';
COMMENT ON COLUMN @extschema@.tq_schedules.timeout IS 'Run-time limit of each task (NULL: the queue''s).';
COMMENT ON COLUMN @extschema@.tq_schedules.jobid IS 'The pg_cron job id.';
COMMENT ON COLUMN @extschema@.tq_schedules.created_at IS 'When the schedule was created or last replaced.';

------------------------------------------------------------------------------
-- Inspection
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.tq_task(id bigint)
    RETURNS TABLE (id bigint, queue text, state text, tenant text, priority smallint, payload jsonb,
                   result jsonb, last_error text, attempts integer, max_attempts integer,
                   dedup_key text, run_at timestamptz, expires_at timestamptz,
                   submitted_at timestamptz, first_started_at timestamptz, finished_at timestamptz,
                   worker text, lease_until timestamptz, cancel_requested boolean,
                   traceparent text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.id, t.queue, t.state::text, t.tenant, t.priority, t.payload, NULL::jsonb, t.last_error,
           t.attempt, t.max_attempts, t.dedup_key, t.run_at, t.expires_at, t.submitted_at,
           t.first_started_at, NULL::timestamptz, t.worker, t.lease_until, t.cancel_requested,
           t.traceparent
      FROM tq.task t WHERE t.id = $1 AND tq.tenant_allowed(t.queue, t.tenant)
    UNION ALL
    SELECT h.id, h.queue, h.state::text, h.tenant, h.priority, h.payload, h.result, h.last_error,
           h.attempt, h.max_attempts, h.dedup_key, h.run_at, h.expires_at, h.submitted_at,
           h.first_started_at, h.finished_at, h.worker, NULL, false, h.traceparent
      FROM tq.history h WHERE h.id = $1 AND tq.tenant_allowed(h.queue, h.tenant)
    LIMIT 1
$$;
COMMENT ON FUNCTION @extschema@.tq_task(bigint) IS
'One task, live or finished: state, attempts, payload, result, last error, timestamps and traceparent. No row if the id is unknown, past retention, or of a tenant a bound caller may not see.';

------------------------------------------------------------------------------
-- Task logs (lines a worker captured, e.g. tqd's exec handler's stderr)
------------------------------------------------------------------------------

/*
 * Appends log lines to running tasks, each at the attempt the worker holds
 * (fencing: a stale attempt's lines are dropped, and so are those for
 * another role's lease).  lines[i] is a JSON array of strings, or null.
 * Keeps the last 1000 lines of a task, each cut to 4096 characters.
 */
CREATE FUNCTION tq.clip_line(p_line text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN length(p_line) <= 4096 THEN p_line
                ELSE left(p_line, 4096) || format(' [cut: %s more characters]', length(p_line) - 4096) END
$$;
COMMENT ON FUNCTION tq.clip_line(text) IS 'Cuts a task log line to 4096 characters, saying so.';

CREATE FUNCTION @extschema@.tq_append_log(ids bigint[], attempts integer[], lines jsonb[],
                                          leases bigint[] DEFAULT NULL)
    RETURNS integer
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    IF cardinality(tq_append_log.ids) IS DISTINCT FROM cardinality(tq_append_log.attempts)
       OR cardinality(tq_append_log.ids) IS DISTINCT FROM cardinality(tq_append_log.lines) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'ids, attempts and lines must have the same length',
            HINT = 'Pass one attempt and one JSON array of lines (or null) per task id.';
    END IF;
    WITH u AS (
        SELECT * FROM unnest(tq_append_log.ids,
                             tq.fence(tq_append_log.ids, tq_append_log.attempts, tq_append_log.leases),
                             tq_append_log.lines)
            AS u(id, attempt, l)
         WHERE CASE WHEN jsonb_typeof(u.l) = 'array' THEN jsonb_array_length(u.l) > 0 ELSE false END
    ), up AS (
        UPDATE tq.task t
           SET log = (SELECT jsonb_agg(x.e ORDER BY x.o)
                        FROM jsonb_array_elements(coalesce(t.log, '[]'::jsonb)
                                                  || (SELECT jsonb_agg(jsonb_build_array(u.attempt,
                                                                  tq.clip_line(CASE WHEN jsonb_typeof(e) = 'string'
                                                                                    THEN e #>> '{}' ELSE e::text END))
                                                                  ORDER BY o)
                                                        FROM jsonb_array_elements(u.l) WITH ORDINALITY a(e, o)))
                             WITH ORDINALITY x(e, o)
                       WHERE x.o > jsonb_array_length(coalesce(t.log, '[]'::jsonb)) + jsonb_array_length(u.l) - 1000)
          FROM u
         WHERE t.id = u.id AND t.attempt = u.attempt AND t.state = 'running'
        RETURNING 1
    )
    SELECT count(*) INTO n FROM up;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_append_log(bigint[], integer[], jsonb[], bigint[]) IS
'Appends log lines (a JSON array of strings per task) to running tasks at the given attempts (leases: the lease_token of each, optional); returns how many tasks took them. Keeps the last 1000 lines of a task, each cut to 4096 characters.';

CREATE FUNCTION @extschema@.tq_task_log(id bigint)
    RETURNS TABLE (attempt integer, n integer, line text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT (e ->> 0)::integer, o::integer, e ->> 1
      FROM (SELECT t.log FROM tq.task t
             WHERE t.id = tq_task_log.id AND tq.tenant_allowed(t.queue, t.tenant)
            UNION ALL
            SELECT h.log FROM tq.history h
             WHERE h.id = tq_task_log.id AND tq.tenant_allowed(h.queue, h.tenant)
            LIMIT 1) s,
           jsonb_array_elements(s.log) WITH ORDINALITY AS x(e, o)
     ORDER BY o
$$;
COMMENT ON FUNCTION @extschema@.tq_task_log(bigint) IS
'The task''s log lines, oldest first: the attempt that wrote each, its number, its text.';

------------------------------------------------------------------------------
-- Per-attempt traces
------------------------------------------------------------------------------

/*
 * The attempts that ended without finishing the task are appended to
 * tq.task.trace by the tq.task trigger (extension/trace.c).  tq_task_trace
 * shows the stored attempts, then the row's own last attempt when it is
 * not among them: open while the task runs, ended by the finish otherwise.
 */
CREATE FUNCTION @extschema@.tq_task_trace(id bigint)
    RETURNS TABLE (attempt integer, ready_at timestamptz, leased_at timestamptz, worker text,
                   ended_at timestamptz, outcome text, error text, queue_wait interval,
                   run_time interval)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH r AS (
        SELECT t.trace, t.attempt, t.run_at, t.submitted_at, t.started_at, t.worker,
               NULL::timestamptz AS finished_at, t.state::text AS state, t.last_error
          FROM tq.task t WHERE t.id = tq_task_trace.id AND tq.tenant_allowed(t.queue, t.tenant)
        UNION ALL
        SELECT h.trace, h.attempt, h.run_at, h.submitted_at, h.started_at, h.worker,
               h.finished_at, h.state::text, h.last_error
          FROM tq.history h WHERE h.id = tq_task_trace.id AND tq.tenant_allowed(h.queue, h.tenant)
        LIMIT 1
    ), a AS (
        SELECT (e ->> 'attempt')::integer AS attempt, (e ->> 'ready_at')::timestamptz AS ready_at,
               (e ->> 'leased_at')::timestamptz AS leased_at, e ->> 'worker' AS worker,
               (e ->> 'ended_at')::timestamptz AS ended_at, e ->> 'outcome' AS outcome,
               e ->> 'error' AS error
          FROM r, jsonb_array_elements(r.trace) e
        UNION ALL
        SELECT r.attempt, greatest(r.run_at, r.submitted_at), r.started_at, r.worker, r.finished_at,
               CASE WHEN r.state = 'running' THEN NULL ELSE r.state END,
               CASE WHEN r.state IN ('running', 'succeeded') THEN NULL ELSE left(r.last_error, 500) END
          FROM r
         WHERE r.attempt > 0 AND r.started_at IS NOT NULL AND r.state NOT IN ('ready', 'scheduled', 'paused')
           AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(r.trace) e
                            WHERE (e ->> 'attempt')::integer = r.attempt)
    )
    SELECT a.attempt, a.ready_at, a.leased_at, a.worker, a.ended_at, a.outcome, a.error,
           a.leased_at - a.ready_at, a.ended_at - a.leased_at
      FROM a ORDER BY a.attempt
$$;
COMMENT ON FUNCTION @extschema@.tq_task_trace(bigint) IS
'The task''s attempts, oldest first: when each was due, leased (by which worker), ended and how (succeeded, dead, cancelled, expired, failed, throttled, released), with the wait in the queue and the run time.';

------------------------------------------------------------------------------
-- Waiting for a task (extension/wait.c)
------------------------------------------------------------------------------

CREATE FUNCTION tq.note_finished(ids bigint[], queues text[], states text[]) RETURNS void
    AS 'MODULE_PATHNAME', 'tq_note_finished' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION tq.note_finished(bigint[], text[], text[]) IS 'Records tasks this transaction finished, so that its commit wakes the sessions waiting for them in tq_wait and counts them in tq_queue_activity.';

CREATE FUNCTION tq.wait_done(id bigint, timeout_ms double precision) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tq_wait_done' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION tq.wait_done(bigint, double precision) IS 'Sleeps until the task is in history (true) or timeout_ms passed (false); woken by the finishing commit.';

CREATE FUNCTION tq.wait_for(p_id bigint, p_timeout interval) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'id must not be null',
            HINT = 'Pass the id tq_submit returned.';
    END IF;
    PERFORM tq.check_interval('timeout', p_timeout, '0', '1 day', false, true);
    -- A bound caller waits only on its tenants' tasks: another's (or an
    -- unknown id) returns at once, without a row, like an unknown task.
    IF tq.caller_bound()
       AND NOT EXISTS (SELECT 1 FROM tq.task t WHERE t.id = p_id AND tq.tenant_allowed(t.queue, t.tenant))
       AND NOT EXISTS (SELECT 1 FROM tq.history h WHERE h.id = p_id AND tq.tenant_allowed(h.queue, h.tenant)) THEN
        RETURN false;
    END IF;
    RETURN tq.wait_done(p_id, extract(epoch FROM p_timeout) * 1000);
END
$$;
COMMENT ON FUNCTION tq.wait_for(bigint, interval) IS 'Checks tq_wait''s arguments and waits (tq.wait_done).';

/*
 * Two statements: the second takes a fresh snapshot (a volatile SQL
 * function's statements each do), which sees the finish the first waited
 * for.
 */
CREATE FUNCTION @extschema@.tq_wait(id bigint, timeout interval DEFAULT '30 seconds')
    RETURNS TABLE (id bigint, state text, result jsonb, last_error text, attempts integer,
                   finished_at timestamptz)
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT tq.wait_for(tq_wait.id, tq_wait.timeout);
    SELECT t.id, t.state, t.result, t.last_error, t.attempts, t.finished_at
      FROM @extschema@.tq_task(tq_wait.id) t;
$$;
COMMENT ON FUNCTION @extschema@.tq_wait(bigint, interval) IS
'Waits until the task finishes (succeeded, dead, cancelled or expired) and returns its final state and result, or returns its current state once timeout has passed. Sleeps without polling: the finishing commit wakes it. Needs READ COMMITTED and a task committed before the call.';

------------------------------------------------------------------------------
-- Activity per queue (shared-memory counters, extension/fair_xact.c and fair_stats.c)
------------------------------------------------------------------------------

CREATE FUNCTION tq.activity(minutes integer)
    RETURNS TABLE (queue text, succeeded bigint, failed bigint, dead bigint, other bigint)
    AS 'MODULE_PATHNAME', 'tq_activity' LANGUAGE C VOLATILE STRICT
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION tq.activity(integer) IS 'Per queue, from shared memory: tasks finished succeeded, dead, or cancelled/expired, and failed attempts to be retried, in the last minutes (1 to 15, the current minute included), since the server started.';

CREATE FUNCTION tq.forget_activity(queue text) RETURNS void
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'tq_forget_activity';
COMMENT ON FUNCTION tq.forget_activity(text) IS 'tq_drop_queue: when the transaction commits, the queue''s per-minute activity counters (tq_queue_activity) are zeroed, so that a queue made again under the same name starts from nothing.';

CREATE VIEW @extschema@.tq_queue_activity AS
    SELECT a.queue, w.minutes AS window_minutes,
           a.succeeded, a.failed, a.dead, a.other,
           round((a.succeeded + a.dead + a.other)
                 / (60 * (w.minutes - 1) + mod(extract(epoch FROM now()), 60) + 0.001), 2) AS finished_per_sec,
           CASE WHEN a.succeeded + a.failed + a.dead > 0
                THEN round((a.failed + a.dead)::numeric / (a.succeeded + a.failed + a.dead), 4) END
               AS failure_rate
      FROM (VALUES (1), (5), (15)) AS w(minutes),
           LATERAL tq.activity(w.minutes) a
     WHERE EXISTS (SELECT 1 FROM tq.queue q WHERE q.name = a.queue);
COMMENT ON VIEW @extschema@.tq_queue_activity IS 'What each queue did in the last 1, 5 and 15 minutes (a row each), from shared-memory counters (cheap at any size; counted since the server started): tasks finished, failed attempts, throughput and failure rate.';
COMMENT ON COLUMN @extschema@.tq_queue_activity.queue IS 'Queue name.';
COMMENT ON COLUMN @extschema@.tq_queue_activity.window_minutes IS 'The window: the last 1, 5 or 15 minutes, the current minute included.';
COMMENT ON COLUMN @extschema@.tq_queue_activity.succeeded IS 'Tasks that finished succeeded in the window.';
COMMENT ON COLUMN @extschema@.tq_queue_activity.failed IS 'Attempts that failed in the window and will be retried (throttled ones included).';
COMMENT ON COLUMN @extschema@.tq_queue_activity.dead IS 'Tasks that finished dead in the window.';
COMMENT ON COLUMN @extschema@.tq_queue_activity.other IS 'Tasks cancelled or expired in the window.';
COMMENT ON COLUMN @extschema@.tq_queue_activity.finished_per_sec IS 'Tasks finished (any final state) per second over the window.';
COMMENT ON COLUMN @extschema@.tq_queue_activity.failure_rate IS '(failed + dead) / (succeeded + failed + dead): the share of attempts that did not succeed; NULL without any.';

------------------------------------------------------------------------------
-- Views
------------------------------------------------------------------------------

CREATE VIEW @extschema@.tq_queues AS
    SELECT q.name AS queue, q.paused, q.max_attempts, q.lease, q.backoff_base, q.backoff_cap,
           q.throttle_limit, q.dedup_window, q.retention, q.backlog_limit, q.timeout,
           ARRAY(SELECT p.tenant FROM tq.tenant_pause p WHERE p.queue = q.name ORDER BY p.tenant)
               AS paused_tenants,
           q.created_at, q.rate_per_sec, q.burst, q.concurrency, q.priority_aging
      FROM tq.queue q;
COMMENT ON VIEW @extschema@.tq_queues IS 'Every queue with its options and pause state.';
COMMENT ON COLUMN @extschema@.tq_queues.queue IS 'Queue name.';
COMMENT ON COLUMN @extschema@.tq_queues.paused IS 'True while the whole queue is paused.';
COMMENT ON COLUMN @extschema@.tq_queues.max_attempts IS 'Attempts a task gets before it is dead.';
COMMENT ON COLUMN @extschema@.tq_queues.lease IS 'Lease length (visibility timeout).';
COMMENT ON COLUMN @extschema@.tq_queues.backoff_base IS 'Delay window of the first retry.';
COMMENT ON COLUMN @extschema@.tq_queues.backoff_cap IS 'Largest retry delay window.';
COMMENT ON COLUMN @extschema@.tq_queues.throttle_limit IS 'Throttled failures per task that do not use up an attempt.';
COMMENT ON COLUMN @extschema@.tq_queues.dedup_window IS 'How long a succeeded task keeps its dedup_key taken.';
COMMENT ON COLUMN @extschema@.tq_queues.retention IS 'How long finished tasks are kept.';
COMMENT ON COLUMN @extschema@.tq_queues.backlog_limit IS 'Most queued tasks accepted; NULL: no limit.';
COMMENT ON COLUMN @extschema@.tq_queues.timeout IS 'Default run-time limit; NULL: none.';
COMMENT ON COLUMN @extschema@.tq_queues.paused_tenants IS 'Tenants paused within the queue.';
COMMENT ON COLUMN @extschema@.tq_queues.created_at IS 'When the queue was created.';
COMMENT ON COLUMN @extschema@.tq_queues.rate_per_sec IS 'Most tasks started per second across all workers; NULL: no limit.';
COMMENT ON COLUMN @extschema@.tq_queues.burst IS 'Bucket size of the rate limit (NULL with a rate: one second''s worth).';
COMMENT ON COLUMN @extschema@.tq_queues.concurrency IS 'Most tasks running at once across all workers; NULL: no limit.';
COMMENT ON COLUMN @extschema@.tq_queues.priority_aging IS 'Bound on priority in rounds: no task is overtaken by work whose start tag is more than this later.';

/*
 * Live counts from shared memory: cheap at any table size.  The finished
 * counts (history) are in tq_queue_stats_exact, which counts rows.
 */
CREATE VIEW @extschema@.tq_queue_stats AS
    SELECT q.name AS queue,
           q.paused AS queue_paused,
           coalesce(s.scheduled, 0) AS scheduled,
           coalesce(s.ready, 0) AS ready,
           coalesce(s.paused, 0) AS paused,
           coalesce(s.running, 0) AS running,
           (SELECT now() - t.run_at FROM tq.task t
             WHERE t.queue = q.name AND t.state = 'ready'
             ORDER BY t.vkey, t.id LIMIT 1) AS next_ready_wait,
           coalesce(s.leased, 0) AS leased,
           coalesce(s.lease_rate, 0) AS lease_rate,
           s.tokens
      FROM tq.queue q
      LEFT JOIN tq.shared_counts() s ON s.is_queue AND s.queue = q.name;
COMMENT ON VIEW @extschema@.tq_queue_stats IS 'Live counts per queue from shared memory (cheap at any size): scheduled, ready, paused (incl. parked by a tenant limit), running; how long the next task in line has waited; claims since the server started and per second; tokens left in the rate bucket.';
COMMENT ON COLUMN @extschema@.tq_queue_stats.queue IS 'Queue name.';
COMMENT ON COLUMN @extschema@.tq_queue_stats.queue_paused IS 'True while the whole queue is paused.';
COMMENT ON COLUMN @extschema@.tq_queue_stats.scheduled IS 'Tasks waiting for run_at or a retry backoff.';
COMMENT ON COLUMN @extschema@.tq_queue_stats.ready IS 'Tasks that can be leased now.';
COMMENT ON COLUMN @extschema@.tq_queue_stats.paused IS 'Tasks held by a paused queue or tenant, or parked until their tenant''s quota or bucket has room.';
COMMENT ON COLUMN @extschema@.tq_queue_stats.running IS 'Leased tasks.';
COMMENT ON COLUMN @extschema@.tq_queue_stats.next_ready_wait IS 'How long the next task in dispatch order has been waiting since its run_at (NULL: none ready).';
COMMENT ON COLUMN @extschema@.tq_queue_stats.leased IS 'Tasks claimed since the server started (or the extension was installed or updated).';
COMMENT ON COLUMN @extschema@.tq_queue_stats.lease_rate IS 'Tasks claimed per second, smoothed over the last seconds.';
COMMENT ON COLUMN @extschema@.tq_queue_stats.tokens IS 'Tokens left in the queue''s rate bucket (NULL: no rate limit).';

CREATE VIEW @extschema@.tq_queue_stats_exact AS
    SELECT q.name AS queue,
           q.paused AS queue_paused,
           coalesce(l.scheduled, 0) AS scheduled,
           coalesce(l.ready, 0) AS ready,
           coalesce(l.paused, 0) AS paused,
           coalesce(l.running, 0) AS running,
           coalesce(h.succeeded, 0) AS succeeded,
           coalesce(h.dead, 0) AS dead,
           coalesce(h.cancelled, 0) AS cancelled,
           coalesce(h.expired, 0) AS expired,
           now() - l.oldest_ready AS oldest_ready_age
      FROM tq.queue q
      LEFT JOIN (SELECT t.queue,
                        count(*) FILTER (WHERE t.state = 'scheduled') AS scheduled,
                        count(*) FILTER (WHERE t.state = 'ready') AS ready,
                        count(*) FILTER (WHERE t.state = 'paused') AS paused,
                        count(*) FILTER (WHERE t.state = 'running') AS running,
                        min(t.run_at) FILTER (WHERE t.state = 'ready') AS oldest_ready
                   FROM tq.task t GROUP BY t.queue) l ON l.queue = q.name
      LEFT JOIN (SELECT x.queue,
                        count(*) FILTER (WHERE x.state = 'succeeded') AS succeeded,
                        count(*) FILTER (WHERE x.state = 'dead') AS dead,
                        count(*) FILTER (WHERE x.state = 'cancelled') AS cancelled,
                        count(*) FILTER (WHERE x.state = 'expired') AS expired
                   FROM tq.history x GROUP BY x.queue) h ON h.queue = q.name;
COMMENT ON VIEW @extschema@.tq_queue_stats_exact IS 'Per-queue counts by reading the tables: live tasks by state and finished tasks kept in history. Exact, and as slow as the tables are large; for audits.';
COMMENT ON COLUMN @extschema@.tq_queue_stats_exact.queue IS 'Queue name.';
COMMENT ON COLUMN @extschema@.tq_queue_stats_exact.queue_paused IS 'True while the whole queue is paused.';
COMMENT ON COLUMN @extschema@.tq_queue_stats_exact.scheduled IS 'Tasks waiting for run_at or a retry backoff.';
COMMENT ON COLUMN @extschema@.tq_queue_stats_exact.ready IS 'Tasks that can be leased now.';
COMMENT ON COLUMN @extschema@.tq_queue_stats_exact.paused IS 'Tasks held by a pause or parked by a tenant limit.';
COMMENT ON COLUMN @extschema@.tq_queue_stats_exact.running IS 'Leased tasks.';
COMMENT ON COLUMN @extschema@.tq_queue_stats_exact.succeeded IS 'Succeeded tasks still in history.';
COMMENT ON COLUMN @extschema@.tq_queue_stats_exact.dead IS 'Dead tasks (out of attempts or not retryable) still in history.';
COMMENT ON COLUMN @extschema@.tq_queue_stats_exact.cancelled IS 'Cancelled tasks still in history.';
COMMENT ON COLUMN @extschema@.tq_queue_stats_exact.expired IS 'Tasks that expired before they started, still in history.';
COMMENT ON COLUMN @extschema@.tq_queue_stats_exact.oldest_ready_age IS 'How long the oldest ready task has been ready (NULL: none ready).';

CREATE VIEW @extschema@.tq_tenants AS
    SELECT coalesce(s.queue, p.queue) AS queue,
           coalesce(s.tenant, p.tenant) AS tenant,
           coalesce(p.weight, 1) AS weight,
           p.rate_per_sec, p.burst, p.concurrency, p.backlog_limit,
           coalesce(s.scheduled, 0) AS scheduled,
           coalesce(s.ready, 0) AS ready,
           coalesce(s.paused, 0) AS paused,
           coalesce(s.running, 0) AS running,
           coalesce(s.leased, 0) AS leased,
           coalesce(s.lease_rate, 0) AS lease_rate,
           coalesce(s.held, false) AS held,
           s.tokens
      FROM (SELECT * FROM tq.shared_counts() c
             WHERE NOT c.is_queue AND c.scheduled + c.ready + c.paused + c.running > 0
               AND EXISTS (SELECT 1 FROM tq.queue x WHERE x.name = c.queue)) s
      FULL JOIN tq.tenant p ON p.queue = s.queue AND p.tenant = s.tenant
     WHERE tq.tenant_allowed(coalesce(s.queue, p.queue), coalesce(s.tenant, p.tenant));
COMMENT ON VIEW @extschema@.tq_tenants IS 'Tenants with live tasks or a policy: their policy (tq_set_tenant) and live counts from shared memory; held means some tasks are parked until the tenant''s quota or bucket has room. The tenant is NULL for tasks without one. A role bound to tenants sees only its own. Tenants without a policy whose tasks are counted in their queue''s overflow entry (tq.max_tenants reached: tq_shared_usage) are not listed.';
COMMENT ON COLUMN @extschema@.tq_tenants.queue IS 'Queue name.';
COMMENT ON COLUMN @extschema@.tq_tenants.tenant IS 'Tenant (NULL: tasks without a tenant).';
COMMENT ON COLUMN @extschema@.tq_tenants.weight IS 'Fair-share weight (1 unless set with tq_set_tenant).';
COMMENT ON COLUMN @extschema@.tq_tenants.rate_per_sec IS 'Most of the tenant''s tasks started per second; NULL: no limit.';
COMMENT ON COLUMN @extschema@.tq_tenants.burst IS 'Bucket size of the rate limit.';
COMMENT ON COLUMN @extschema@.tq_tenants.concurrency IS 'Most of the tenant''s tasks running at once; NULL: no limit.';
COMMENT ON COLUMN @extschema@.tq_tenants.backlog_limit IS 'Most queued tasks the tenant may have; NULL: no limit.';
COMMENT ON COLUMN @extschema@.tq_tenants.scheduled IS 'The tenant''s scheduled tasks.';
COMMENT ON COLUMN @extschema@.tq_tenants.ready IS 'The tenant''s ready tasks.';
COMMENT ON COLUMN @extschema@.tq_tenants.paused IS 'The tenant''s paused or parked tasks.';
COMMENT ON COLUMN @extschema@.tq_tenants.running IS 'The tenant''s running tasks.';
COMMENT ON COLUMN @extschema@.tq_tenants.leased IS 'The tenant''s tasks claimed since its shared entry was made.';
COMMENT ON COLUMN @extschema@.tq_tenants.lease_rate IS 'The tenant''s tasks claimed per second, smoothed.';
COMMENT ON COLUMN @extschema@.tq_tenants.held IS 'True while some of its tasks are parked until its quota or bucket has room.';
COMMENT ON COLUMN @extschema@.tq_tenants.tokens IS 'Tokens left in the tenant''s rate bucket (NULL: no rate limit).';

/*
 * The tables in shared memory that callers fill (extension/shmem.c), for
 * the whole server: how full each is, and how often a caller found it
 * full.  tqd's /metrics shows them.  Like tq.shared_counts, called by the
 * view as its reader, so definer with a pinned search_path (it reads only
 * shared memory).
 */
CREATE FUNCTION tq.shared_usage(
    OUT name text, OUT setting text, OUT used bigint, OUT capacity bigint,
    OUT full_events bigint, OUT last_full_at timestamptz, OUT overflow bigint)
    RETURNS SETOF record
    LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'tq_shared_usage';
COMMENT ON FUNCTION tq.shared_usage() IS 'The tables in shared memory that callers fill (fair-dispatch entries, rate buckets, wait slots), server-wide: entries used and at most, times a caller found the table full, and live tasks counted in overflow entries.';

CREATE VIEW @extschema@.tq_shared_usage AS
    SELECT u.name, u.setting, u.used, u.capacity, u.full_events, u.last_full_at, u.overflow
      FROM tq.shared_usage() u;
COMMENT ON VIEW @extschema@.tq_shared_usage IS 'The tables in shared memory that callers fill, for the whole server: entries used and at most, and how often a caller found one full since the server started. A full tenants table folds tenants without a policy into their queue''s overflow entry (limits still hold); a full rate_buckets table refuses new keys (53400).';
COMMENT ON COLUMN @extschema@.tq_shared_usage.name IS 'tenants (fair-dispatch entries of queues and tenants), rate_buckets (tq_rate_consume), wait_slots (tq_wait).';
COMMENT ON COLUMN @extschema@.tq_shared_usage.setting IS 'The setting that sizes the table (restart to change); NULL: one slot per backend.';
COMMENT ON COLUMN @extschema@.tq_shared_usage.used IS 'Entries in use now.';
COMMENT ON COLUMN @extschema@.tq_shared_usage.capacity IS 'Entries at most.';
COMMENT ON COLUMN @extschema@.tq_shared_usage.full_events IS 'Times a caller wanted a new entry and the table was full, since the server started (tenants: each state change of a task counted in an overflow entry; rate_buckets: calls refused for the table or the role''s tq.max_rate_keys_per_role).';
COMMENT ON COLUMN @extschema@.tq_shared_usage.last_full_at IS 'The last of those times (NULL: never).';
COMMENT ON COLUMN @extschema@.tq_shared_usage.overflow IS 'tenants: live tasks counted in overflow entries, whose tenants share one fair share per queue; NULL for the other tables.';

CREATE VIEW @extschema@.tq_dead AS
    SELECT h.id, h.queue, h.tenant, h.attempt AS attempts, h.last_error, h.payload, h.submitted_at,
           h.finished_at, h.traceparent
      FROM tq.history h
     WHERE h.state = 'dead' AND tq.tenant_allowed(h.queue, h.tenant);
COMMENT ON VIEW @extschema@.tq_dead IS 'Dead tasks (the dead-letter queue) with their last error; ORDER BY finished_at DESC LIMIT n reads each partition''s index of dead tasks. tq_retry(id) or tq_retry_dead(queue) runs them again. A role bound to tenants sees only its own.';
COMMENT ON COLUMN @extschema@.tq_dead.id IS 'Task id.';
COMMENT ON COLUMN @extschema@.tq_dead.queue IS 'Queue name.';
COMMENT ON COLUMN @extschema@.tq_dead.tenant IS 'Tenant, if any.';
COMMENT ON COLUMN @extschema@.tq_dead.attempts IS 'Attempts made.';
COMMENT ON COLUMN @extschema@.tq_dead.last_error IS 'Why the last attempt failed.';
COMMENT ON COLUMN @extschema@.tq_dead.payload IS 'The task''s payload.';
COMMENT ON COLUMN @extschema@.tq_dead.submitted_at IS 'When it was submitted.';
COMMENT ON COLUMN @extschema@.tq_dead.finished_at IS 'When it died.';
COMMENT ON COLUMN @extschema@.tq_dead.traceparent IS 'The task''s W3C traceparent (NULL: none): the trace of the request that submitted it.';

CREATE VIEW @extschema@.tq_tenant_grants AS
    SELECT g.role, g.tenant, g.queue, g.granted_at FROM tq.tenant_grants() g;
COMMENT ON VIEW @extschema@.tq_tenant_grants IS 'Roles bound to tenants (tq_grant_tenant): every grant for tq_admin, a role''s own grants for the role.';
COMMENT ON COLUMN @extschema@.tq_tenant_grants.role IS 'The bound role.';
COMMENT ON COLUMN @extschema@.tq_tenant_grants.tenant IS 'A tenant it may act as.';
COMMENT ON COLUMN @extschema@.tq_tenant_grants.queue IS 'The queue the grant holds in (NULL: every queue).';
COMMENT ON COLUMN @extschema@.tq_tenant_grants.granted_at IS 'When the grant was made.';

------------------------------------------------------------------------------
-- Roles and privileges
------------------------------------------------------------------------------

/*
 * Roles are cluster-wide and outlive the extension; they are created only
 * when missing.  Every API function that reads or writes tables runs as
 * its owner (SECURITY DEFINER) or calls one that does, so a role needs
 * nothing but EXECUTE (and SELECT on the views).
 */
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'tq_producer') THEN
        CREATE ROLE tq_producer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'tq_worker') THEN
        CREATE ROLE tq_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'tq_admin') THEN
        CREATE ROLE tq_admin NOLOGIN;
    END IF;
END
$$;
GRANT tq_producer, tq_worker TO tq_admin;

-- Schema tq is closed: its tables and helpers are reached through the API.
REVOKE ALL ON ALL TABLES IN SCHEMA tq FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tq FROM PUBLIC;
REVOKE ALL ON SCHEMA tq FROM PUBLIC;
-- The views call these as their reader.
GRANT EXECUTE ON FUNCTION tq.shared_counts(), tq.activity(integer) TO tq_producer, tq_worker, tq_admin;
GRANT EXECUTE ON FUNCTION tq.shared_usage() TO tq_producer, tq_worker, tq_admin;

-- The API: nothing for PUBLIC, then each role its part.
REVOKE ALL ON FUNCTION
    @extschema@.tq_create_queue(text, integer, interval, interval, interval, interval, interval, bigint, interval, integer, boolean, double precision, double precision, integer, double precision),
    @extschema@.tq_alter_queue(text, integer, interval, interval, interval, interval, interval, bigint, interval, integer, double precision, double precision, integer, double precision),
    @extschema@.tq_drop_queue(text, boolean),
    @extschema@.tq_set_tenant(text, text, double precision, double precision, double precision, integer, bigint),
    @extschema@.tq_submit(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz, text),
    @extschema@.tq_submit_many(text, jsonb[], timestamptz, integer, text, text[], integer, interval, timestamptz, text),
    @extschema@.tq_submit_trigger(),
    @extschema@.tq_lease(text, text[], integer, interval),
    @extschema@.tq_complete(bigint[], integer[], jsonb[], bigint[]),
    @extschema@.tq_complete(bigint, integer, jsonb),
    @extschema@.tq_fail(bigint[], integer[], text[], text[], interval[], bigint[]),
    @extschema@.tq_fail(bigint, integer, text, text, interval),
    @extschema@.tq_release(bigint[], integer[], bigint[]),
    @extschema@.tq_release(bigint, integer),
    @extschema@.tq_heartbeat(text, bigint[], integer[], bigint[]),
    @extschema@.tq_append_log(bigint[], integer[], jsonb[], bigint[]),
    @extschema@.tq_cancel(bigint),
    @extschema@.tq_cancel(text, text, boolean),
    @extschema@.tq_pause(text, text),
    @extschema@.tq_resume(text, text),
    @extschema@.tq_retry(bigint),
    @extschema@.tq_retry_dead(text, text),
    @extschema@.tq_purge(text, text, interval),
    @extschema@.tq_maintain(),
    @extschema@.tq_worker_status(),
    @extschema@.tq_rate_consume(text, integer, double precision, double precision),
    @extschema@.tq_schedule(text, text, text, jsonb, integer, text, integer, interval),
    @extschema@.tq_unschedule(text),
    @extschema@.tq_task(bigint),
    @extschema@.tq_task_log(bigint),
    @extschema@.tq_task_trace(bigint),
    @extschema@.tq_wait(bigint, interval),
    @extschema@.tq_grant_tenant(regrole, text, text),
    @extschema@.tq_revoke_tenant(regrole, text, text)
    FROM PUBLIC;

-- Producers submit.
GRANT EXECUTE ON FUNCTION
    @extschema@.tq_submit(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz, text),
    @extschema@.tq_submit_many(text, jsonb[], timestamptz, integer, text, text[], integer, interval, timestamptz, text),
    @extschema@.tq_submit_trigger(),
    @extschema@.tq_task(bigint)
    TO tq_producer;

-- Workers lease and finish.
GRANT EXECUTE ON FUNCTION
    @extschema@.tq_lease(text, text[], integer, interval),
    @extschema@.tq_complete(bigint[], integer[], jsonb[], bigint[]),
    @extschema@.tq_complete(bigint, integer, jsonb),
    @extschema@.tq_fail(bigint[], integer[], text[], text[], interval[], bigint[]),
    @extschema@.tq_fail(bigint, integer, text, text, interval),
    @extschema@.tq_release(bigint[], integer[], bigint[]),
    @extschema@.tq_release(bigint, integer),
    @extschema@.tq_heartbeat(text, bigint[], integer[], bigint[]),
    @extschema@.tq_append_log(bigint[], integer[], jsonb[], bigint[]),
    @extschema@.tq_task(bigint)
    TO tq_worker;

-- Administrators run the queues (and are producers and workers too).
GRANT EXECUTE ON FUNCTION
    @extschema@.tq_create_queue(text, integer, interval, interval, interval, interval, interval, bigint, interval, integer, boolean, double precision, double precision, integer, double precision),
    @extschema@.tq_alter_queue(text, integer, interval, interval, interval, interval, interval, bigint, interval, integer, double precision, double precision, integer, double precision),
    @extschema@.tq_drop_queue(text, boolean),
    @extschema@.tq_set_tenant(text, text, double precision, double precision, double precision, integer, bigint),
    @extschema@.tq_cancel(bigint),
    @extschema@.tq_cancel(text, text, boolean),
    @extschema@.tq_pause(text, text),
    @extschema@.tq_resume(text, text),
    @extschema@.tq_retry(bigint),
    @extschema@.tq_retry_dead(text, text),
    @extschema@.tq_purge(text, text, interval),
    @extschema@.tq_maintain(),
    @extschema@.tq_schedule(text, text, text, jsonb, integer, text, integer, interval),
    @extschema@.tq_unschedule(text),
    @extschema@.tq_grant_tenant(regrole, text, text),
    @extschema@.tq_revoke_tenant(regrole, text, text)
    TO tq_admin;

-- Granted to several roles.  Each statement names its roles in the order
-- the upgrades granted them, so that the privileges (as \dp and \df+ show
-- them) read the same after a fresh install and after the upgrades.
GRANT EXECUTE ON FUNCTION @extschema@.tq_worker_status() TO tq_admin, tq_worker;
GRANT EXECUTE ON FUNCTION
    @extschema@.tq_rate_consume(text, integer, double precision, double precision),
    @extschema@.tq_task_log(bigint),
    @extschema@.tq_task_trace(bigint),
    @extschema@.tq_wait(bigint, interval)
    TO tq_producer, tq_worker, tq_admin;
GRANT SELECT ON @extschema@.tq_queues, @extschema@.tq_queue_stats, @extschema@.tq_tenants,
                @extschema@.tq_queue_activity
    TO tq_producer, tq_worker, tq_admin;
GRANT SELECT ON @extschema@.tq_schedules TO tq_admin, tq_worker, tq_producer;
GRANT SELECT ON @extschema@.tq_dead TO tq_worker, tq_admin;
GRANT SELECT ON @extschema@.tq_shared_usage TO tq_producer, tq_worker, tq_admin;
GRANT SELECT ON @extschema@.tq_queue_stats_exact TO tq_admin;
-- Since 0.7.0: the tenant binding.  The views call the first three as
-- their reader; a bound producer cancels its tenants' tasks.
GRANT EXECUTE ON FUNCTION tq.caller(), tq.caller_bound(), tq.tenant_allowed(text, text), tq.tenant_grants()
    TO tq_producer, tq_worker, tq_admin;
GRANT EXECUTE ON FUNCTION @extschema@.tq_cancel(bigint) TO tq_producer;
GRANT SELECT ON @extschema@.tq_tenant_grants TO tq_producer, tq_worker, tq_admin;

------------------------------------------------------------------------------
-- Shared state
------------------------------------------------------------------------------

-- Shared entries of this database start over from the tables (a database
-- that dropped the extension may still have the old one's).
SELECT tq.reset_shared();
