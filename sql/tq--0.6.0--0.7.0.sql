/*
 * tq 0.6.0 -> 0.7.0: bad input found by fuzzing.
 *
 * - Every numeric queue and tenant option is bounded to a range that the
 *   arithmetic on it survives (priority_aging at least 0.001, rate_per_sec
 *   at least 0.000001); values already stored outside the new bounds are
 *   moved to the nearest bound, with a notice.
 * - A batch that names the same (id, attempt) twice acts on it once, for
 *   its first occurrence, and reports only that one as acted on.
 * - Batch arrays must be one-dimensional, with tq's own error.
 * - tq_schedule and tq_unschedule call only pg_cron's own objects.
 * - A task reclaimed after a lost lease keeps its place in line: the
 *   failed attempt's backoff still applies, but then it is dispatched with
 *   the key it already had, not behind the work submitted since.
 * - tq_shared_usage: how full the tables in shared memory are that callers
 *   fill (fair-dispatch entries, rate buckets, wait slots).  With the 0.7.0
 *   library a full table of entries no longer drops a queue's or a
 *   configured tenant's limits, and tq_rate_consume's buckets are per role.
 *
 * The 0.7.0 library (extension/fair_rebuild.c) also rebuilds its shared state
 * arithmetic in C, clamping and reporting a queue's odd setting instead of
 * failing every queue; it serves a database still at 0.6.0 too.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION tq UPDATE TO '0.7.0'" to load this file. \quit

------------------------------------------------------------------------------
-- Bounds of the queue and tenant options
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION tq.check_queue_options(q tq.queue) RETURNS tq.queue
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

-- Rate, burst and concurrency of a queue or a tenant.  At least one start
-- per 11.6 days: a bucket's refill time (1 / rate) must stay a number of
-- seconds an interval can hold.
CREATE OR REPLACE FUNCTION tq.check_limits(p_rate double precision, p_burst double precision, p_concurrency integer)
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

-- Stored values outside the new bounds (accepted by 0.6.0) move to the
-- nearest bound.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN UPDATE tq.queue SET priority_aging = 0.001 WHERE priority_aging < 0.001 RETURNING name LOOP
        RAISE NOTICE 'tq: priority_aging of queue "%" raised to 0.001, the new lower bound', r.name;
    END LOOP;
    FOR r IN UPDATE tq.queue SET rate_per_sec = 0.000001 WHERE rate_per_sec < 0.000001 RETURNING name LOOP
        RAISE NOTICE 'tq: rate_per_sec of queue "%" raised to 0.000001, the new lower bound', r.name;
    END LOOP;
    FOR r IN UPDATE tq.tenant SET rate_per_sec = 0.000001 WHERE rate_per_sec < 0.000001
             RETURNING queue, tenant LOOP
        RAISE NOTICE 'tq: rate_per_sec of tenant "%" of queue "%" raised to 0.000001, the new lower bound',
            r.tenant, r.queue;
    END LOOP;
END
$$;

------------------------------------------------------------------------------
-- Batch calls
------------------------------------------------------------------------------

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
 * As in 0.1.0, and the arrays must be one-dimensional (array_position
 * raised PostgreSQL's own "searching for elements in multidimensional
 * arrays is not supported" instead).
 */
CREATE OR REPLACE FUNCTION tq.check_batch(p_ids bigint[], p_attempts integer[], p_other_len integer DEFAULT NULL,
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

/*
 * For each input (id, attempt), whether it was acted on.  A pair named
 * more than once in a batch was acted on once: only its first occurrence
 * says true (tq.first_of is what the batch's outcome was taken from).
 */
CREATE OR REPLACE FUNCTION tq.mask(p_ids bigint[], p_attempts integer[], p_done_ids bigint[], p_done_attempts integer[])
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
 * As in 0.6.0, acting on the first occurrence of an (id, attempt) named
 * twice (before, the row deleted took whichever result the join met).
 */
CREATE OR REPLACE FUNCTION tq.finish(p_ids bigint[], p_attempts integer[], p_from tq.task_state[],
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
        RETURNING id, attempt, queue, state, dedup_key
    )
    SELECT array_agg(h.id), array_agg(h.attempt), array_agg(h.queue), array_agg(h.state),
           array_agg(h.dedup_key)
      INTO f_ids, f_attempts, f_queues, f_states, f_keys
      FROM h;
    IF f_ids IS NULL THEN
        RETURN;
    END IF;

    IF array_remove(f_keys, NULL) <> '{}' THEN
        UPDATE tq.dedup x SET until = now() + q.dedup_window
          FROM unnest(f_ids, f_queues, f_states, f_keys) AS h(id, queue, state, dedup_key)
          JOIN tq.queue q ON q.name = h.queue
         WHERE h.state = 'succeeded' AND h.dedup_key IS NOT NULL
           AND x.queue = h.queue AND x.dedup_key = h.dedup_key AND x.task_id = h.id;
        DELETE FROM tq.dedup x
         USING unnest(f_ids, f_queues, f_states, f_keys) AS h(id, queue, state, dedup_key)
         WHERE h.state <> 'succeeded' AND h.dedup_key IS NOT NULL
           AND x.queue = h.queue AND x.dedup_key = h.dedup_key AND x.task_id = h.id;
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

/*
 * As in 0.1.0, acting on the first occurrence of an (id, attempt) named
 * twice (before, both were aggregated and the update took either).
 */
CREATE OR REPLACE FUNCTION tq.fail_running(p_ids bigint[], p_attempts integer[], p_errors text[],
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

-- As in 0.1.0, and the results array must be one-dimensional.
CREATE OR REPLACE FUNCTION @extschema@.tq_complete(ids bigint[], attempts integer[], results jsonb[] DEFAULT NULL)
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
      FROM tq.finish(ids, attempts, '{running}', array_fill('succeeded'::tq.task_state, ARRAY[n]),
                     results, NULL) f;
    RETURN tq.mask(ids, attempts, done_ids, done_attempts);
END
$$;

-- As in 0.1.0, and the errors, retry and retry_after arrays must be one-dimensional.
CREATE OR REPLACE FUNCTION @extschema@.tq_fail(ids bigint[], attempts integer[], errors text[],
                                    retry text[] DEFAULT NULL, retry_after interval[] DEFAULT NULL)
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
      FROM tq.fail_running(ids, attempts,
               ARRAY(SELECT tq.clip_error(e) FROM unnest(errors) WITH ORDINALITY AS x(e, o) ORDER BY o),
               ARRAY(SELECT coalesce(r, 'auto')
                       FROM unnest(coalesce(retry, array_fill(NULL::text, ARRAY[n]))) WITH ORDINALITY AS x(r, o)
                      ORDER BY o),
               retry_after) f;
    RETURN tq.mask(ids, attempts, done_ids, done_attempts);
END
$$;

------------------------------------------------------------------------------
-- Lost leases keep their place in line
------------------------------------------------------------------------------

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
CREATE OR REPLACE FUNCTION tq.reclaim(p_limit integer DEFAULT 1000) RETURNS bigint
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

------------------------------------------------------------------------------
-- Periodic tasks call only pg_cron's own objects
------------------------------------------------------------------------------

/*
 * tq_schedule and tq_unschedule run as the extension's owner.  They found
 * cron.schedule by name: a tq_admin able to create a schema named cron
 * (in a database without pg_cron) had their own function run with the
 * owner's rights.  Now the objects must belong to the pg_cron extension
 * and be owned by a superuser, and the calls name exact argument types.
 */
-- Raises the error for a database without pg_cron, or with impostors of its
-- objects.
CREATE OR REPLACE FUNCTION tq.require_pg_cron() RETURNS void
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

CREATE OR REPLACE FUNCTION @extschema@.tq_schedule(
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

CREATE OR REPLACE FUNCTION @extschema@.tq_unschedule(name text)
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

------------------------------------------------------------------------------
-- Shared memory a caller can fill (issue 15)
------------------------------------------------------------------------------

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

COMMENT ON VIEW @extschema@.tq_tenants IS 'Tenants with live tasks or a policy: their policy (tq_set_tenant) and live counts from shared memory; held means some tasks are parked until the tenant''s quota or bucket has room. The tenant is NULL for tasks without one. Tenants without a policy whose tasks are counted in their queue''s overflow entry (tq.max_tenants reached: tq_shared_usage) are not listed.';

COMMENT ON FUNCTION @extschema@.tq_rate_consume(text, integer, double precision, double precision) IS
'Takes n tokens from the calling role''s shared token bucket of key (rate tokens per second, at least 0.000001; capacity burst, default one second''s worth) and returns true, or returns false and takes none. Shared by every session of the cluster that runs as the same role (current_user): other roles'' keys are other buckets. Buckets start full, also after a restart; a role holds at most tq.max_rate_keys_per_role of them.';

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION tq.check_dims(text, anyarray), tq.first_of(bigint[], integer[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION tq.shared_usage() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tq.shared_usage() TO tq_producer, tq_worker, tq_admin;
GRANT SELECT ON @extschema@.tq_shared_usage TO tq_producer, tq_worker, tq_admin;
