/*
 * tq 0.4.0 -> 0.5.0: tq_wait, a session sleeping until a task finishes
 * (woken by the finishing commit through a condition variable in shared
 * memory, no polling); per-attempt traces (tq_task_trace).
 *
 * Needs the 0.5.0 library loaded: install it, restart the server, then
 * ALTER EXTENSION tq UPDATE.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION tq UPDATE TO '0.5.0'" to load this file. \quit

------------------------------------------------------------------------------
-- Per-attempt traces
------------------------------------------------------------------------------

ALTER TABLE tq.task ADD COLUMN trace jsonb;
COMMENT ON COLUMN tq.task.trace IS 'The attempts that ended without finishing the task (failed, throttled, released), oldest first: attempt, ready_at, leased_at, worker, ended_at, outcome, error. Appended by the tq.task trigger; the last attempt is the row itself (tq_task_trace shows both).';
ALTER TABLE tq.history ADD COLUMN trace jsonb;
COMMENT ON COLUMN tq.history.trace IS 'The task''s per-attempt trace, kept from tq.task (tq_task_trace).';

------------------------------------------------------------------------------
-- Waiting for a task
------------------------------------------------------------------------------

CREATE FUNCTION tq.note_finished(ids bigint[], queues text[], states text[]) RETURNS void
    AS 'MODULE_PATHNAME', 'tq_note_finished' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION tq.note_finished(bigint[], text[], text[]) IS 'Records tasks this transaction finished, so that its commit wakes the sessions waiting for them in tq_wait and counts them in tq_queue_activity.';

CREATE FUNCTION tq.wait_done(id bigint, timeout_ms double precision) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tq_wait_done' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION tq.wait_done(bigint, double precision) IS 'Sleeps until the task is in history (true) or timeout_ms passed (false); woken by the finishing commit.';

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
                                started_at, finished_at, log, trace)
        SELECT d.id, d.queue, d.to_state, d.priority, d.tenant, d.payload, d.new_result,
               coalesce(d.new_error, d.last_error), d.dedup_key, d.run_at, d.expires_at, d.timeout,
               d.max_attempts, d.attempt, d.free_attempts, d.throttles, d.worker, d.submitted_at,
               d.first_started_at, d.started_at, now(), d.log,
               d.trace
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

CREATE FUNCTION tq.wait_for(p_id bigint, p_timeout interval) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'id must not be null',
            HINT = 'Pass the id tq_submit returned.';
    END IF;
    PERFORM tq.check_interval('timeout', p_timeout, '0', '1 day', false, true);
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

/*
 * The stored attempts, then the row's own last attempt when it is not
 * among them: open while the task runs, ended by the finish otherwise.
 */
CREATE FUNCTION @extschema@.tq_task_trace(id bigint)
    RETURNS TABLE (attempt integer, ready_at timestamptz, leased_at timestamptz, worker text,
                   ended_at timestamptz, outcome text, error text, queue_wait interval,
                   run_time interval)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH r AS (
        SELECT t.trace, t.attempt, t.run_at, t.submitted_at, t.started_at, t.worker,
               NULL::timestamptz AS finished_at, t.state::text AS state, t.last_error
          FROM tq.task t WHERE t.id = tq_task_trace.id
        UNION ALL
        SELECT h.trace, h.attempt, h.run_at, h.submitted_at, h.started_at, h.worker,
               h.finished_at, h.state::text, h.last_error
          FROM tq.history h WHERE h.id = tq_task_trace.id
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
-- Views: activity per queue, dead tasks
------------------------------------------------------------------------------

CREATE FUNCTION tq.activity(minutes integer)
    RETURNS TABLE (queue text, succeeded bigint, failed bigint, dead bigint, other bigint)
    AS 'MODULE_PATHNAME', 'tq_activity' LANGUAGE C VOLATILE STRICT
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION tq.activity(integer) IS 'Per queue, from shared memory: tasks finished succeeded, dead, or cancelled/expired, and failed attempts to be retried, in the last minutes (1 to 15, the current minute included), since the server started.';

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

CREATE VIEW @extschema@.tq_dead AS
    SELECT h.id, h.queue, h.tenant, h.attempt AS attempts, h.last_error, h.payload, h.submitted_at,
           h.finished_at
      FROM tq.history h
     WHERE h.state = 'dead';
COMMENT ON VIEW @extschema@.tq_dead IS 'Dead tasks (the dead-letter queue) with their last error; ORDER BY finished_at DESC LIMIT n reads each partition''s index of dead tasks. tq_retry(id) or tq_retry_dead(queue) runs them again.';
COMMENT ON COLUMN @extschema@.tq_dead.id IS 'Task id.';
COMMENT ON COLUMN @extschema@.tq_dead.queue IS 'Queue name.';
COMMENT ON COLUMN @extschema@.tq_dead.tenant IS 'Tenant, if any.';
COMMENT ON COLUMN @extschema@.tq_dead.attempts IS 'Attempts made.';
COMMENT ON COLUMN @extschema@.tq_dead.last_error IS 'Why the last attempt failed.';
COMMENT ON COLUMN @extschema@.tq_dead.payload IS 'The task''s payload.';
COMMENT ON COLUMN @extschema@.tq_dead.submitted_at IS 'When it was submitted.';
COMMENT ON COLUMN @extschema@.tq_dead.finished_at IS 'When it died.';

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION tq.note_finished(bigint[], text[], text[]), tq.activity(integer),
    tq.wait_done(bigint, double precision),
    tq.wait_for(bigint, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.tq_wait(bigint, interval), @extschema@.tq_task_trace(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.tq_task_trace(bigint) TO tq_producer, tq_worker, tq_admin;
GRANT EXECUTE ON FUNCTION @extschema@.tq_wait(bigint, interval) TO tq_producer, tq_worker, tq_admin;
GRANT SELECT ON @extschema@.tq_queue_activity TO tq_producer, tq_worker, tq_admin;
GRANT SELECT ON @extschema@.tq_dead TO tq_worker, tq_admin;
-- The view calls it as the reader.
GRANT EXECUTE ON FUNCTION tq.activity(integer) TO tq_producer, tq_worker, tq_admin;
