/*
 * tq 0.5.0 -> 0.6.0: W3C trace context.  A task carries a traceparent from
 * its submitter to its handler, so that a user's distributed trace joins
 * up across the queue: given to tq_submit or tq_submit_many (argument
 * traceparent), or taken from the setting tq.traceparent, which an
 * application sets once per request (SET LOCAL) for every task it submits,
 * through triggers and functions too.  tq_lease returns it; tqd hands it
 * to the handler (TRACEPARENT for exec, a traceparent header for http,
 * tq.traceparent for sql).  It stays with the task through retries, into
 * history, and back with tq_retry.
 *
 * Needs the 0.6.0 library loaded: install it, restart the server, then
 * ALTER EXTENSION tq UPDATE.  A database still at 0.5.0 keeps working with
 * the new library meanwhile (extension/submit.c serves both signatures of
 * tq_submit).
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION tq UPDATE TO '0.6.0'" to load this file. \quit

------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------

-- No default: adding the columns rewrites nothing.
ALTER TABLE tq.task ADD COLUMN traceparent text;
COMMENT ON COLUMN tq.task.traceparent IS 'W3C traceparent the task carries to its handler (from the submit''s traceparent argument or the tq.traceparent setting); NULL: none.';
ALTER TABLE tq.history ADD COLUMN traceparent text;
COMMENT ON COLUMN tq.history.traceparent IS 'The task''s W3C traceparent, kept from tq.task; NULL: none.';

------------------------------------------------------------------------------
-- The check (extension/traceparent.c)
------------------------------------------------------------------------------

CREATE FUNCTION tq.submit_traceparent(traceparent text) RETURNS text
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'tq_submit_traceparent';
COMMENT ON FUNCTION tq.submit_traceparent(text) IS 'The traceparent a task submitted now gets: the argument if not NULL (checked, 22023 if malformed; '''' means none), else the tq.traceparent setting; NULL for none.';

------------------------------------------------------------------------------
-- The traceparent goes to history with the task, and back with tq_retry
------------------------------------------------------------------------------

-- As in 0.5.0, and the traceparent goes to history.
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
 * As in 0.1.0, and a revived task keeps its traceparent: a retry of a
 * dead task is still part of the request that submitted it.
 */
CREATE OR REPLACE FUNCTION tq.revive(p_queue text, p_tenant text, p_id bigint, p_states tq.task_state[])
    RETURNS SETOF bigint
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    claimed bigint[];
BEGIN
    -- Claim the dedup keys of the candidates (one task per key).
    WITH cand AS (
        SELECT DISTINCT ON (h.queue, h.dedup_key) h.queue, h.dedup_key, h.id
        FROM tq.history h
        WHERE (p_queue IS NULL OR h.queue = p_queue)
          AND (p_id IS NULL OR h.id = p_id)
          AND (p_tenant IS NULL OR h.tenant = p_tenant)
          AND h.state = ANY (p_states)
          AND h.dedup_key IS NOT NULL
        ORDER BY h.queue, h.dedup_key, h.finished_at DESC
    ), c AS (
        INSERT INTO tq.dedup AS x (queue, dedup_key, task_id)
        SELECT queue, dedup_key, id FROM cand
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

------------------------------------------------------------------------------
-- Submit: a traceparent argument (NULL: the tq.traceparent setting)
------------------------------------------------------------------------------

DROP FUNCTION @extschema@.tq_submit(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz);
DROP FUNCTION tq.submit_slow(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz);

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
        INSERT INTO tq.dedup AS d (queue, dedup_key, task_id)
        VALUES (q.name, dedup_key, v_id)
        ON CONFLICT ON CONSTRAINT dedup_pkey DO UPDATE
            SET task_id = excluded.task_id, until = 'infinity'
            WHERE d.until < now()
        RETURNING d.task_id INTO v_owner;
        IF v_owner IS NULL THEN
            SELECT d.task_id INTO v_owner FROM tq.dedup d
             WHERE d.queue = q.name AND d.dedup_key = submit_slow.dedup_key;
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
REVOKE ALL ON FUNCTION tq.submit_slow(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz, text) FROM PUBLIC;

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
'Submits a task (payload: a JSON object) and returns its id. Options: run_at (not before), priority (higher first), tenant, dedup_key (a duplicate of a live or recently succeeded task returns that task''s id), max_attempts, timeout (run-time limit for the worker), expires_at (give up if not started by then), traceparent (W3C trace context handed to the worker; NULL: the tq.traceparent setting, '''': none). Visible to workers when the calling transaction commits.';
REVOKE ALL ON FUNCTION @extschema@.tq_submit(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.tq_submit(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz, text) TO tq_producer;

/*
 * As in 0.1.0, with one traceparent for the whole batch (NULL: the
 * tq.traceparent setting), and without the call of tq.check_backlog, a
 * no-op since 0.3.0 (the insert's trigger checks backlog limits per row).
 */
DROP FUNCTION @extschema@.tq_submit_many(text, jsonb[], timestamptz, integer, text, text[], integer, interval, timestamptz);
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
        INSERT INTO tq.dedup AS d (queue, dedup_key, task_id)
        SELECT DISTINCT ON (k) q.name, k, v_ids[o]
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
          LEFT JOIN tq.dedup d ON d.queue = q.name AND d.dedup_key = u.k;
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
REVOKE ALL ON FUNCTION @extschema@.tq_submit_many(text, jsonb[], timestamptz, integer, text, text[], integer, interval, timestamptz, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.tq_submit_many(text, jsonb[], timestamptz, integer, text, text[], integer, interval, timestamptz, text) TO tq_producer;

COMMENT ON FUNCTION @extschema@.tq_submit_trigger() IS
'Row trigger that submits the row as a task: tq_submit_trigger(''queue'' [, ''tenant=<column>'', ''dedup_key=<column>'', ''priority=<n>'', ''delay=<interval>'', ''envelope=true'']). The task carries the tq.traceparent setting of the writing transaction.';

------------------------------------------------------------------------------
-- Lease: the traceparent comes with each task
------------------------------------------------------------------------------

/*
 * As in 0.4.0, with the task's traceparent as the last column.  A new
 * output column changes the result type, hence DROP and CREATE; workers
 * that name their columns (tqd does) are not affected.
 */
DROP FUNCTION @extschema@.tq_lease(text, text[], integer, interval);
CREATE FUNCTION @extschema@.tq_lease(worker text, queues text[], max integer DEFAULT 1,
                                     lease interval DEFAULT NULL)
    RETURNS TABLE (id bigint, queue text, payload jsonb, attempt integer, lease_until timestamptz,
                   tenant text, priority smallint, timeout interval, traceparent text)
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
                          coalesce(t.timeout, q.timeout) AS eff_timeout, t.state, t.traceparent
            )
            SELECT c.id, c.queue, c.payload, c.attempt, c.lease_until, c.tenant, c.priority, c.eff_timeout,
                   c.traceparent
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
'Leases up to max ready tasks of the given queues to a worker, in fair dispatch order, with FOR UPDATE SKIP LOCKED. Returns each task with its attempt number, which every later call on the lease must quote (fencing), and its traceparent (W3C trace context to hand to the handler; NULL: none).';
REVOKE ALL ON FUNCTION @extschema@.tq_lease(text, text[], integer, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.tq_lease(text, text[], integer, interval) TO tq_worker;

------------------------------------------------------------------------------
-- Inspection: tq_task and tq_dead show the traceparent
------------------------------------------------------------------------------

DROP FUNCTION @extschema@.tq_task(bigint);
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
      FROM tq.task t WHERE t.id = $1
    UNION ALL
    SELECT h.id, h.queue, h.state::text, h.tenant, h.priority, h.payload, h.result, h.last_error,
           h.attempt, h.max_attempts, h.dedup_key, h.run_at, h.expires_at, h.submitted_at,
           h.first_started_at, h.finished_at, h.worker, NULL, false, h.traceparent
      FROM tq.history h WHERE h.id = $1
    LIMIT 1
$$;
COMMENT ON FUNCTION @extschema@.tq_task(bigint) IS
'One task, live or finished: state, attempts, payload, result, last error, timestamps and traceparent. No row if the id is unknown or past retention.';
REVOKE ALL ON FUNCTION @extschema@.tq_task(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.tq_task(bigint) TO tq_producer, tq_worker;

-- As in 0.5.0, and the traceparent, to find the failure's trace.
CREATE OR REPLACE VIEW @extschema@.tq_dead AS
    SELECT h.id, h.queue, h.tenant, h.attempt AS attempts, h.last_error, h.payload, h.submitted_at,
           h.finished_at, h.traceparent
      FROM tq.history h
     WHERE h.state = 'dead';
COMMENT ON COLUMN @extschema@.tq_dead.traceparent IS 'The task''s W3C traceparent (NULL: none): the trace of the request that submitted it.';

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION tq.submit_traceparent(text) FROM PUBLIC;

------------------------------------------------------------------------------
-- A dropped queue's activity counters start from zero
------------------------------------------------------------------------------

CREATE FUNCTION tq.forget_activity(queue text) RETURNS void
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'tq_forget_activity';
COMMENT ON FUNCTION tq.forget_activity(text) IS 'tq_drop_queue: when the transaction commits, the queue''s per-minute activity counters (tq_queue_activity) are zeroed, so that a queue made again under the same name starts from nothing.';
REVOKE ALL ON FUNCTION tq.forget_activity(text) FROM PUBLIC;

-- As in 0.1.0, and the shared activity counters are forgotten at commit
-- (in 0.5.0 a queue dropped and made again within 15 minutes showed the
-- old one's activity in tq_queue_activity).
CREATE OR REPLACE FUNCTION @extschema@.tq_drop_queue(name text, force boolean DEFAULT false)
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

------------------------------------------------------------------------------
-- No planner statistics on the JSON columns
------------------------------------------------------------------------------

-- No query of tq filters or joins on payload, result, log or trace (the
-- task table has no result), and
-- ANALYZE sorting their values was most of its cost: with traces, ANALYZE
-- of a history partition took 60 % longer than in 0.4.0 (autovacuum's
-- work in make bench's row 11); with these columns left out, it costs
-- less than 0.4.0's did.  ALTER TABLE on the parent reaches every existing
-- partition; tq.index_history_leaf does it for each new one (CREATE TABLE
-- ... LIKE and PARTITION OF do not copy a column's statistics target).
ALTER TABLE tq.task
    ALTER COLUMN payload SET STATISTICS 0,
    ALTER COLUMN log SET STATISTICS 0,
    ALTER COLUMN trace SET STATISTICS 0;
ALTER TABLE tq.history
    ALTER COLUMN payload SET STATISTICS 0,
    ALTER COLUMN result SET STATISTICS 0,
    ALTER COLUMN log SET STATISTICS 0,
    ALTER COLUMN trace SET STATISTICS 0;

-- As in 0.1.0, and the statistics targets above.
CREATE OR REPLACE FUNCTION tq.index_history_leaf(p_leaf text) RETURNS void
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
