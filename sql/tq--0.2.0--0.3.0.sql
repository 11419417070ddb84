/*
 * tq 0.2.0 -> 0.3.0: fair dispatch across tenants, priority aging, rate
 * limits and concurrency quotas per queue and tenant, back-pressure and
 * live counters from shared memory (extension/fair.c).
 *
 * One BEFORE ROW trigger on tq.task (tq.task_row) sees every state change
 * of every task and keeps the shared state: counts per (queue, tenant,
 * state), the fair dispatch key of tasks becoming ready, the claim gate
 * for limits and quotas, and the backlog check on submit.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION tq UPDATE TO '0.3.0'" to load this file. \quit

------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------

ALTER TABLE tq.task ADD COLUMN vkey double precision;
COMMENT ON COLUMN tq.task.vkey IS 'Fair dispatch key, set when the task becomes ready: its start tag in the queue''s virtual time minus its priority shift. tq_lease claims the lowest first.';

ALTER TABLE tq.queue
    ADD COLUMN rate_per_sec double precision,
    ADD COLUMN burst double precision,
    ADD COLUMN concurrency integer,
    ADD COLUMN priority_aging double precision NOT NULL DEFAULT 1000000;
COMMENT ON COLUMN tq.queue.rate_per_sec IS 'Most tasks started per second across all workers (token bucket); NULL for no limit.';
COMMENT ON COLUMN tq.queue.burst IS 'Bucket size of rate_per_sec: most tasks started at once after a quiet spell (default: one second''s worth).';
COMMENT ON COLUMN tq.queue.concurrency IS 'Most tasks running at once across all workers; NULL for no limit.';
COMMENT ON COLUMN tq.queue.priority_aging IS 'Bound on priority, in rounds: a task is never overtaken by work whose fair start tag is more than this later.';

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

-- Ready tasks of an upgraded database keep their order (priority, then id).
UPDATE tq.task t SET vkey = s.k
  FROM (SELECT x.id, row_number() OVER (PARTITION BY x.queue ORDER BY x.priority DESC, x.id)::float8 AS k
          FROM tq.task x WHERE x.state = 'ready') s
 WHERE t.id = s.id;

-- Dispatch order is the fair key; parked tasks come back in key order.
DROP INDEX tq.task_dispatch_idx;
CREATE INDEX task_dispatch_idx ON tq.task (queue, vkey, id) WHERE state = 'ready';
DROP INDEX tq.task_paused_idx;
CREATE INDEX task_paused_idx ON tq.task (queue, tenant, vkey) WHERE state = 'paused';

------------------------------------------------------------------------------
-- Shared state (C)
------------------------------------------------------------------------------

CREATE FUNCTION tq.task_row() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'tq_task_row';
COMMENT ON FUNCTION tq.task_row() IS 'Trigger on tq.task: keeps the shared counters, gives tasks becoming ready their fair key, applies limits and quotas to claims (parking tasks of throttled tenants) and refuses submits past a backlog_limit.';
CREATE TRIGGER task_account BEFORE INSERT OR DELETE ON tq.task
    FOR EACH ROW EXECUTE FUNCTION tq.task_row();
-- task_scheduled no longer fires on INSERT (task_account notes new
-- scheduled rows itself): a trigger's WHEN clause is read and compiled
-- again for every statement, which showed in single-row submits.
DROP TRIGGER task_scheduled ON tq.task;
CREATE TRIGGER task_scheduled BEFORE UPDATE OF state, run_at ON tq.task
    FOR EACH ROW WHEN (NEW.state = 'scheduled') EXECUTE FUNCTION tq.task_changed();
CREATE TRIGGER task_moved BEFORE UPDATE OF state ON tq.task
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION tq.task_row();

CREATE FUNCTION tq.lease_room(queue text, want integer) RETURNS integer
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'tq_lease_room';
COMMENT ON FUNCTION tq.lease_room(text, integer) IS 'How many tasks the queue''s concurrency and rate limits let a lease claim now (at most want).';

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

------------------------------------------------------------------------------
-- Parked tasks come back
------------------------------------------------------------------------------

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
                 (SELECT t.lease_until FROM tq.task t WHERE t.state = 'running'
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

-- Pause repair leaves parked tasks (they keep their key) to tq.unpark_held.
CREATE OR REPLACE FUNCTION @extschema@.tq_maintain()
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

------------------------------------------------------------------------------
-- Back-pressure moves to the trigger (shared counters, not COUNT(*))
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION tq.check_backlog(p_queue tq.queue, p_tenant text, p_n bigint) RETURNS void
    LANGUAGE sql STABLE AS $$ SELECT $$;
COMMENT ON FUNCTION tq.check_backlog(tq.queue, text, bigint) IS 'Kept for compatibility: backlog limits are enforced per task by tq.task_row from shared counters.';

------------------------------------------------------------------------------
-- Queues and tenants
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
    IF q.priority_aging IS NULL OR NOT (q.priority_aging > 0 AND q.priority_aging <= 1e12) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'priority_aging is out of range',
            DETAIL = format('The value given is %s.', coalesce(q.priority_aging::text, 'NULL')),
            HINT = 'priority_aging is a number of rounds above 0 and at most 1e12; the default is 1000000.';
    END IF;
    RETURN q;
END
$$;

-- Rate, burst and concurrency of a queue or a tenant.
CREATE FUNCTION tq.check_limits(p_rate double precision, p_burst double precision, p_concurrency integer)
    RETURNS void
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_rate IS NOT NULL AND NOT (p_rate > 0 AND p_rate <= 1e9) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'rate_per_sec is out of range',
            DETAIL = format('The value given is %s; it must be above 0 and at most 1e9.', p_rate),
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

DROP FUNCTION @extschema@.tq_create_queue(text, integer, interval, interval, interval, interval, interval, bigint, interval, integer, boolean);
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
DROP FUNCTION @extschema@.tq_alter_queue(text, integer, interval, interval, interval, interval, interval, bigint, interval, integer);
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
-- Lease
------------------------------------------------------------------------------

/*
 * Claims up to max ready tasks of the given queues for a worker.  Per
 * queue (in random order, so that a worker serving several queues shares
 * itself among them): ask the queue's limits how many may start
 * (tq.lease_room: no scan at all when none), then claim the head of
 * task_dispatch_idx -- the fair key order -- with FOR UPDATE SKIP LOCKED.
 * The claim passes the gate in tq.task_row: a task whose tenant is at its
 * quota or out of tokens is parked instead (out of the index), and the
 * lease claims again in its place, a bounded number of times.
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
            RETURN QUERY
            WITH picked AS (
                SELECT t.id FROM tq.task t
                WHERE t.queue = q.name AND t.state = 'ready'
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
-- tq_submit in C (extension/submit.c); the PL/pgSQL definition stays as
-- tq.submit_slow for every case but the common one, and for every error.
------------------------------------------------------------------------------

DROP FUNCTION @extschema@.tq_submit(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz);

CREATE FUNCTION tq.submit_slow(
    queue text,
    payload jsonb DEFAULT '{}',
    run_at timestamptz DEFAULT NULL,
    priority integer DEFAULT 0,
    tenant text DEFAULT NULL,
    dedup_key text DEFAULT NULL,
    max_attempts integer DEFAULT NULL,
    timeout interval DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    q tq.queue;
    v_state tq.task_state;
    v_id bigint;
    v_owner bigint;
BEGIN
    SELECT * INTO q FROM tq.queue x WHERE x.name = queue;
    IF NOT FOUND THEN
        PERFORM tq.get_queue(queue);
    END IF;
    PERFORM tq.check_payload(payload);
    v_state := tq.check_submit(q, run_at, priority, tenant, max_attempts, timeout, expires_at);
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
                         expires_at, timeout, max_attempts)
    VALUES (v_id, q.name, v_state, priority, tenant, payload, dedup_key,
            greatest(coalesce(run_at, now()), now()), expires_at, timeout,
            coalesce(max_attempts, q.max_attempts));
    IF v_state = 'ready' THEN
        PERFORM tq.wake(q.name);
    END IF;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION tq.submit_slow(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz) IS 'The full definition of tq_submit: every option, every check and error; tq_submit (C) hands it every call but the common case.';
REVOKE ALL ON FUNCTION tq.submit_slow(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz) FROM PUBLIC;

CREATE FUNCTION @extschema@.tq_submit(
    queue text,
    payload jsonb DEFAULT '{}',
    run_at timestamptz DEFAULT NULL,
    priority integer DEFAULT 0,
    tenant text DEFAULT NULL,
    dedup_key text DEFAULT NULL,
    max_attempts integer DEFAULT NULL,
    timeout interval DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL)
    RETURNS bigint
    LANGUAGE c VOLATILE SECURITY DEFINER AS 'MODULE_PATHNAME', 'tq_submit_fast';
COMMENT ON FUNCTION @extschema@.tq_submit(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz) IS
'Submits a task (payload: a JSON object) and returns its id. Options: run_at (not before), priority (higher first), tenant, dedup_key (a duplicate of a live or recently succeeded task returns that task''s id), max_attempts, timeout (run-time limit for the worker), expires_at (give up if not started by then). Visible to workers when the calling transaction commits.';
REVOKE ALL ON FUNCTION @extschema@.tq_submit(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.tq_submit(text, jsonb, timestamptz, integer, text, text, integer, interval, timestamptz) TO tq_producer;

------------------------------------------------------------------------------
-- Views
------------------------------------------------------------------------------

DROP VIEW @extschema@.tq_queues;
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
DROP VIEW @extschema@.tq_queue_stats;
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
      FULL JOIN tq.tenant p ON p.queue = s.queue AND p.tenant = s.tenant;
COMMENT ON VIEW @extschema@.tq_tenants IS 'Tenants with live tasks or a policy: their policy (tq_set_tenant) and live counts from shared memory; held means some tasks are parked until the tenant''s quota or bucket has room. The tenant is NULL for tasks without one.';
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


------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA tq FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tq FROM PUBLIC;
REVOKE ALL ON FUNCTION
    @extschema@.tq_create_queue(text, integer, interval, interval, interval, interval, interval, bigint, interval, integer, boolean, double precision, double precision, integer, double precision),
    @extschema@.tq_alter_queue(text, integer, interval, interval, interval, interval, interval, bigint, interval, integer, double precision, double precision, integer, double precision),
    @extschema@.tq_set_tenant(text, text, double precision, double precision, double precision, integer, bigint)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    @extschema@.tq_create_queue(text, integer, interval, interval, interval, interval, interval, bigint, interval, integer, boolean, double precision, double precision, integer, double precision),
    @extschema@.tq_alter_queue(text, integer, interval, interval, interval, interval, interval, bigint, interval, integer, double precision, double precision, integer, double precision),
    @extschema@.tq_set_tenant(text, text, double precision, double precision, double precision, integer, bigint)
    TO tq_admin;
GRANT SELECT ON @extschema@.tq_queue_stats, @extschema@.tq_queues, @extschema@.tq_tenants
    TO tq_producer, tq_worker, tq_admin;
GRANT SELECT ON @extschema@.tq_queue_stats_exact TO tq_admin;
-- The views call it as the reader.
GRANT EXECUTE ON FUNCTION tq.shared_counts() TO tq_producer, tq_worker, tq_admin;

-- Shared entries of this database start over from the tables.
SELECT tq.reset_shared();
