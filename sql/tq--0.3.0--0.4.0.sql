/*
 * tq 0.3.0 -> 0.4.0: leases that do not walk over the dead index entries
 * of tasks just claimed, plans that do not scan every running task to
 * finish a few, and task logs (tq_append_log, tq_task_log) for workers
 * such as tqd.
 *
 * Needs the 0.4.0 library loaded: install it, restart the server, then
 * ALTER EXTENSION tq UPDATE.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION tq UPDATE TO '0.4.0'" to load this file. \quit

------------------------------------------------------------------------------
-- Indexes
------------------------------------------------------------------------------

/*
 * The running index serves only the lease-expiry scans (lease_until <
 * now(), ORDER BY lease_until), whose conditions imply the new predicate.
 * Under the old one, any query that named state = 'running' could use it:
 * with statistics taken while few tasks ran, tq_complete, tq_fail,
 * tq_release and tq_heartbeat planned a scan of every running task (and of
 * the dead entries of tasks just finished) to find a few by id, instead of
 * the primary key.  Running tasks always have lease_until, so the index
 * holds the same entries.
 */
DROP INDEX tq.task_running_idx;
CREATE INDEX task_running_idx ON tq.task (lease_until)
    WHERE state = 'running' AND lease_until IS NOT NULL;

------------------------------------------------------------------------------
-- Lease
------------------------------------------------------------------------------

CREATE FUNCTION tq.lease_floor(queue text, OUT vkey double precision, OUT id bigint)
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'tq_lease_floor';
COMMENT ON FUNCTION tq.lease_floor(text) IS 'Where a lease''s claim scan of the queue starts, in (vkey, id) order: the first ready task visible now at or after the queue''s scan floor (which this raises when safe).';

CREATE OR REPLACE FUNCTION tq.background_pass() RETURNS double precision
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

/*
 * As in 0.3.0, but the claim scan starts at tq.lease_floor, in (vkey, id)
 * order:
 * below lie the index entries of tasks claimed moments ago, dead but not
 * yet removable (with synchronous_commit = off, for up to a WAL flush).
 */
CREATE OR REPLACE FUNCTION @extschema@.tq_lease(worker text, queues text[], max integer DEFAULT 1,
                                                lease interval DEFAULT NULL)
    RETURNS TABLE (id bigint, queue text, payload jsonb, attempt integer, lease_until timestamptz,
                   tenant text, priority smallint, timeout interval)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
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
                       first_started_at = coalesce(t.first_started_at, now())
                  FROM picked
                 WHERE t.id = picked.id
                RETURNING t.id, t.queue, t.payload, t.attempt, t.lease_until, t.tenant, t.priority,
                          coalesce(t.timeout, q.timeout) AS eff_timeout, t.state
            )
            SELECT c.id, c.queue, c.payload, c.attempt, c.lease_until, c.tenant, c.priority, c.eff_timeout
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

------------------------------------------------------------------------------
-- Task logs (lines a worker captured, e.g. tqd's exec handler's stderr)
------------------------------------------------------------------------------

ALTER TABLE tq.task ADD COLUMN log jsonb;
COMMENT ON COLUMN tq.task.log IS 'Log lines the workers reported, oldest first, as [attempt, line] pairs; the last 1000 are kept (tq_task_log).';
ALTER TABLE tq.history ADD COLUMN log jsonb;
COMMENT ON COLUMN tq.history.log IS 'The task''s log lines, kept from tq.task (tq_task_log).';

-- As in 0.1.0, and the log goes to history with the task.
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
        SELECT * FROM unnest(p_ids, p_attempts, p_to, p_results, p_errors)
            AS u(id, attempt, to_state, result, error)
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
                                started_at, finished_at, log)
        SELECT d.id, d.queue, d.to_state, d.priority, d.tenant, d.payload, d.new_result,
               coalesce(d.new_error, d.last_error), d.dedup_key, d.run_at, d.expires_at, d.timeout,
               d.max_attempts, d.attempt, d.free_attempts, d.throttles, d.worker, d.submitted_at,
               d.first_started_at, d.started_at, now(), d.log
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

    PERFORM pg_catalog.pg_notify('tq_done',
                pg_catalog.json_agg(pg_catalog.json_build_object('id', n.id, 'queue', n.queue,
                                                                 'state', n.state) ORDER BY n.o)::text)
       FROM unnest(f_ids, f_queues, f_states) WITH ORDINALITY AS n(id, queue, state, o)
      GROUP BY (n.o - 1) / 100;

    RETURN QUERY SELECT * FROM unnest(f_ids, f_attempts);
END
$$;

/*
 * Appends log lines to running tasks, each at the attempt the worker holds
 * (fencing: a stale attempt's lines are dropped).  lines[i] is a JSON array
 * of strings, or null.  Keeps the last 1000 lines of a task.
 */
CREATE FUNCTION @extschema@.tq_append_log(ids bigint[], attempts integer[], lines jsonb[])
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
        SELECT * FROM unnest(tq_append_log.ids, tq_append_log.attempts, tq_append_log.lines)
            AS u(id, attempt, l)
         WHERE CASE WHEN jsonb_typeof(u.l) = 'array' THEN jsonb_array_length(u.l) > 0 ELSE false END
    ), up AS (
        UPDATE tq.task t
           SET log = (SELECT jsonb_agg(x.e ORDER BY x.o)
                        FROM jsonb_array_elements(coalesce(t.log, '[]'::jsonb)
                                                  || (SELECT jsonb_agg(jsonb_build_array(u.attempt,
                                                                  CASE WHEN jsonb_typeof(e) = 'string'
                                                                       THEN e #>> '{}' ELSE e::text END)
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
COMMENT ON FUNCTION @extschema@.tq_append_log(bigint[], integer[], jsonb[]) IS
'Appends log lines (a JSON array of strings per task) to running tasks at the given attempts; returns how many tasks took them. Keeps the last 1000 lines of a task.';

CREATE FUNCTION @extschema@.tq_task_log(id bigint)
    RETURNS TABLE (attempt integer, n integer, line text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT (e ->> 0)::integer, o::integer, e ->> 1
      FROM (SELECT t.log FROM tq.task t WHERE t.id = tq_task_log.id
            UNION ALL
            SELECT h.log FROM tq.history h WHERE h.id = tq_task_log.id
            LIMIT 1) s,
           jsonb_array_elements(s.log) WITH ORDINALITY AS x(e, o)
     ORDER BY o
$$;
COMMENT ON FUNCTION @extschema@.tq_task_log(bigint) IS
'The task''s log lines, oldest first: the attempt that wrote each, its number, its text.';

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION tq.lease_floor(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.tq_append_log(bigint[], integer[], jsonb[]),
    @extschema@.tq_task_log(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.tq_append_log(bigint[], integer[], jsonb[]) TO tq_worker;
GRANT EXECUTE ON FUNCTION @extschema@.tq_task_log(bigint) TO tq_producer, tq_worker, tq_admin;
