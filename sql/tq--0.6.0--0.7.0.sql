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
 * - Tenants as boundaries (issue 15): tq_grant_tenant binds roles to
 *   tenants (a bound role submits as, reads, waits on and cancels only its
 *   tenants' tasks); dedup keys are unique per queue and tenant; a lease
 *   belongs to the role that took it and has a random token that the
 *   worker's calls may quote (tq_lease returns it, so it and the lease
 *   holder's batch calls are dropped and created with new signatures);
 *   labels refuse C1 controls and U+2028/U+2029; run_at lies less than 10
 *   years ahead; releases past max_attempts count as failed attempts; log
 *   lines are cut to 4096 characters and traces keep 100 attempts.
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
-- Tenants as boundaries: binding roles to tenants, leases held by a role
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

CREATE FUNCTION tq.tenant_grants(OUT role regrole, OUT tenant text, OUT queue text, OUT granted_at timestamptz)
    RETURNS SETOF record
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT g.role, g.tenant, g.queue, g.granted_at FROM tq.tenant_grant g
     WHERE g.role = tq.caller() OR pg_catalog.pg_has_role(tq.caller(), 'tq_admin', 'USAGE')
$$;
COMMENT ON FUNCTION tq.tenant_grants() IS 'The tenant grants the caller may see: every grant for tq_admin, its own otherwise.';

-- Dedup keys are unique per queue and tenant.  A key taken now belongs to
-- its task's tenant ('' for none).
ALTER TABLE tq.dedup ADD COLUMN tenant text NOT NULL DEFAULT '';
UPDATE tq.dedup d SET tenant = t.tenant FROM tq.task t WHERE t.id = d.task_id AND t.tenant IS NOT NULL;
UPDATE tq.dedup d SET tenant = h.tenant FROM tq.history h WHERE h.id = d.task_id AND h.tenant IS NOT NULL;
ALTER TABLE tq.dedup DROP CONSTRAINT dedup_pkey, ADD PRIMARY KEY (queue, tenant, dedup_key);
COMMENT ON TABLE tq.dedup IS 'Taken deduplication keys: held while the task is live and for dedup_window after it succeeded. A key is unique per queue and tenant.';
COMMENT ON COLUMN tq.dedup.tenant IS 'Tenant the key is unique in ('''' for tasks without a tenant): one tenant''s key never returns another tenant''s task.';

-- The lease's token and holder.  Leases made before the update have
-- neither, and are fenced by their attempt alone (tq.fence).
ALTER TABLE tq.task ADD COLUMN lease_token bigint, ADD COLUMN leased_by oid;
COMMENT ON COLUMN tq.task.lease_token IS 'Random token of the current lease (tq.lease_token): cannot be guessed, and not handed out again after a crash that lost a lease''s commit, as an attempt number can be.';
COMMENT ON COLUMN tq.task.leased_by IS 'Role that holds the current lease (tq.caller() of tq_lease): only it, or a tq_admin, may complete, fail, release, extend or log into it.';
COMMENT ON FUNCTION @extschema@.tq_submit(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz, text) IS
'Submits a task (payload: a JSON object) and returns its id. Options: run_at (not before), priority (higher first), tenant, dedup_key (a duplicate of a live or recently succeeded task of the same tenant returns that task''s id), max_attempts, timeout (run-time limit for the worker), expires_at (give up if not started by then), traceparent (W3C trace context handed to the worker; NULL: the tq.traceparent setting, '''': none). Visible to workers when the calling transaction commits.';

CREATE OR REPLACE FUNCTION tq.check_submit(q tq.queue, p_run_at timestamptz, p_priority integer, p_tenant text,
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

CREATE OR REPLACE FUNCTION tq.submit_slow(
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

CREATE OR REPLACE FUNCTION @extschema@.tq_submit_many(
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

CREATE OR REPLACE FUNCTION tq.revive(p_queue text, p_tenant text, p_id bigint, p_states tq.task_state[])
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

CREATE OR REPLACE FUNCTION @extschema@.tq_retry(id bigint)
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

CREATE OR REPLACE FUNCTION tq.wait_for(p_id bigint, p_timeout interval) RETURNS boolean
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

CREATE OR REPLACE FUNCTION @extschema@.tq_cancel(id bigint)
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

CREATE FUNCTION tq.clip_line(p_line text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN length(p_line) <= 4096 THEN p_line
                ELSE left(p_line, 4096) || format(' [cut: %s more characters]', length(p_line) - 4096) END
$$;
COMMENT ON FUNCTION tq.clip_line(text) IS 'Cuts a task log line to 4096 characters, saying so.';

-- Inspection shows a bound role its own tenants' tasks only.
CREATE OR REPLACE FUNCTION @extschema@.tq_task(id bigint)
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

CREATE OR REPLACE FUNCTION @extschema@.tq_task_log(id bigint)
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

CREATE OR REPLACE FUNCTION @extschema@.tq_task_trace(id bigint)
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

-- New signatures: tq_lease returns the lease token, and the lease
-- holder's batch calls take the tokens (optional).
DROP FUNCTION @extschema@.tq_lease(text, text[], integer, interval);
DROP FUNCTION @extschema@.tq_complete(bigint[], integer[], jsonb[]);
DROP FUNCTION @extschema@.tq_fail(bigint[], integer[], text[], text[], interval[]);
DROP FUNCTION @extschema@.tq_release(bigint[], integer[]);
DROP FUNCTION @extschema@.tq_heartbeat(text, bigint[], integer[]);
DROP FUNCTION @extschema@.tq_append_log(bigint[], integer[], jsonb[]);
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

CREATE OR REPLACE VIEW @extschema@.tq_tenants AS
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
COMMENT ON VIEW @extschema@.tq_tenants IS 'Tenants with live tasks or a policy: their policy (tq_set_tenant) and live counts from shared memory; held means some tasks are parked until the tenant''s quota or bucket has room. The tenant is NULL for tasks without one. A role bound to tenants sees only its own.';

CREATE OR REPLACE VIEW @extschema@.tq_dead AS
    SELECT h.id, h.queue, h.tenant, h.attempt AS attempts, h.last_error, h.payload, h.submitted_at,
           h.finished_at, h.traceparent
      FROM tq.history h
     WHERE h.state = 'dead' AND tq.tenant_allowed(h.queue, h.tenant);
COMMENT ON VIEW @extschema@.tq_dead IS 'Dead tasks (the dead-letter queue) with their last error; ORDER BY finished_at DESC LIMIT n reads each partition''s index of dead tasks. tq_retry(id) or tq_retry_dead(queue) runs them again. A role bound to tenants sees only its own.';

CREATE OR REPLACE VIEW @extschema@.tq_schedules AS
    SELECT s.name, s.cron, s.queue, s.payload, s.priority, s.tenant, s.max_attempts, s.timeout,
           s.jobid, s.created_at
      FROM tq.schedule s
     WHERE tq.tenant_allowed(s.queue, s.tenant);
COMMENT ON VIEW @extschema@.tq_schedules IS 'Periodic tasks created with tq_schedule. A role bound to tenants sees only its own.';

CREATE VIEW @extschema@.tq_tenant_grants AS
    SELECT g.role, g.tenant, g.queue, g.granted_at FROM tq.tenant_grants() g;
COMMENT ON VIEW @extschema@.tq_tenant_grants IS 'Roles bound to tenants (tq_grant_tenant): every grant for tq_admin, a role''s own grants for the role.';
COMMENT ON COLUMN @extschema@.tq_tenant_grants.role IS 'The bound role.';
COMMENT ON COLUMN @extschema@.tq_tenant_grants.tenant IS 'A tenant it may act as.';
COMMENT ON COLUMN @extschema@.tq_tenant_grants.queue IS 'The queue the grant holds in (NULL: every queue).';
COMMENT ON COLUMN @extschema@.tq_tenant_grants.granted_at IS 'When the grant was made.';

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

COMMENT ON VIEW @extschema@.tq_tenants IS 'Tenants with live tasks or a policy: their policy (tq_set_tenant) and live counts from shared memory; held means some tasks are parked until the tenant''s quota or bucket has room. The tenant is NULL for tasks without one. A role bound to tenants sees only its own. Tenants without a policy whose tasks are counted in their queue''s overflow entry (tq.max_tenants reached: tq_shared_usage) are not listed.';

COMMENT ON FUNCTION @extschema@.tq_rate_consume(text, integer, double precision, double precision) IS
'Takes n tokens from the calling role''s shared token bucket of key (rate tokens per second, at least 0.000001; capacity burst, default one second''s worth) and returns true, or returns false and takes none. Shared by every session of the cluster that runs as the same role (current_user): other roles'' keys are other buckets. Buckets start full, also after a restart; a role holds at most tq.max_rate_keys_per_role of them.';

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION tq.check_dims(text, anyarray), tq.first_of(bigint[], integer[]) FROM PUBLIC;
REVOKE ALL ON TABLE tq.tenant_grant FROM PUBLIC;
REVOKE ALL ON FUNCTION tq.caller(), tq.caller_bound(), tq.tenant_allowed(text, text), tq.check_tenant(text, text),
    tq.lease_token(), tq.grants_changed(), tq.tenant_grants(), tq.fence(bigint[], integer[], bigint[]),
    tq.clip_line(text)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION
    @extschema@.tq_lease(text, text[], integer, interval),
    @extschema@.tq_complete(bigint[], integer[], jsonb[], bigint[]),
    @extschema@.tq_fail(bigint[], integer[], text[], text[], interval[], bigint[]),
    @extschema@.tq_release(bigint[], integer[], bigint[]),
    @extschema@.tq_heartbeat(text, bigint[], integer[], bigint[]),
    @extschema@.tq_append_log(bigint[], integer[], jsonb[], bigint[]),
    @extschema@.tq_grant_tenant(regrole, text, text),
    @extschema@.tq_revoke_tenant(regrole, text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    @extschema@.tq_lease(text, text[], integer, interval),
    @extschema@.tq_complete(bigint[], integer[], jsonb[], bigint[]),
    @extschema@.tq_fail(bigint[], integer[], text[], text[], interval[], bigint[]),
    @extschema@.tq_release(bigint[], integer[], bigint[]),
    @extschema@.tq_heartbeat(text, bigint[], integer[], bigint[]),
    @extschema@.tq_append_log(bigint[], integer[], jsonb[], bigint[])
    TO tq_worker;
GRANT EXECUTE ON FUNCTION
    @extschema@.tq_grant_tenant(regrole, text, text),
    @extschema@.tq_revoke_tenant(regrole, text, text)
    TO tq_admin;
GRANT EXECUTE ON FUNCTION tq.caller(), tq.caller_bound(), tq.tenant_allowed(text, text), tq.tenant_grants()
    TO tq_producer, tq_worker, tq_admin;
GRANT EXECUTE ON FUNCTION @extschema@.tq_cancel(bigint) TO tq_producer;
GRANT SELECT ON @extschema@.tq_tenant_grants TO tq_producer, tq_worker, tq_admin;
REVOKE ALL ON FUNCTION tq.shared_usage() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tq.shared_usage() TO tq_producer, tq_worker, tq_admin;
GRANT SELECT ON @extschema@.tq_shared_usage TO tq_producer, tq_worker, tq_admin;
