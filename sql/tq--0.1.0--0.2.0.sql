/*
 * tq 0.1.0 -> 0.2.0: the background worker.
 *
 * A background worker (extension/worker.c, started when tq.database names
 * this database) promotes due scheduled tasks, reclaims expired leases,
 * expires overdue tasks and runs the maintenance pass on time, without
 * waiting for tq_lease traffic; and it sends tq_ready for producers, so
 * that a submitting transaction no longer takes the notify lock at commit.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION tq UPDATE TO '0.2.0'" to load this file. \quit

-- The worker sleeps until the earliest due run_at over all queues.
CREATE INDEX task_due_idx ON tq.task (run_at) WHERE state = 'scheduled';

/*
 * One housekeeping pass of the background worker.  Returns the seconds
 * until the next event it must act on: the earliest scheduled run_at, lease
 * expiry, expires_at or maintenance time (negative if one is overdue, NULL
 * if there is none).  Called by the worker's own session, so it pins its
 * search_path; the helpers it calls run under it.
 */
CREATE FUNCTION tq.background_pass() RETURNS double precision
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nxt timestamptz;
BEGIN
    PERFORM tq.promote(NULL, 10000);
    PERFORM tq.reclaim(10000);
    PERFORM tq.expire(10000);
    PERFORM tq.maybe_maintain();
    SELECT least((SELECT t.run_at FROM tq.task t WHERE t.state = 'scheduled' ORDER BY t.run_at LIMIT 1),
                 (SELECT t.lease_until FROM tq.task t WHERE t.state = 'running'
                   ORDER BY t.lease_until LIMIT 1),
                 (SELECT t.expires_at FROM tq.task t
                   WHERE t.expires_at IS NOT NULL AND t.state <> 'running'
                   ORDER BY t.expires_at LIMIT 1),
                 (SELECT m.next_maintenance FROM tq.meta m))
      INTO nxt;
    RETURN extract(epoch FROM nxt - clock_timestamp());
END
$$;
COMMENT ON FUNCTION tq.background_pass() IS 'One housekeeping pass of the background worker (promote, reclaim, expire, maintain when due); returns the seconds until the next due event.';
REVOKE ALL ON FUNCTION tq.background_pass() FROM PUBLIC;

-- Tells the worker, at commit, that a task became scheduled (perhaps due
-- before it plans to wake).  Per row, but only for rows becoming scheduled,
-- and it only sets a flag.
CREATE FUNCTION tq.task_changed() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'tq_task_changed';
COMMENT ON FUNCTION tq.task_changed() IS 'Trigger on tq.task for rows becoming scheduled: at commit, the background worker re-reads when its next event is due.';
REVOKE ALL ON FUNCTION tq.task_changed() FROM PUBLIC;
CREATE TRIGGER task_scheduled BEFORE INSERT OR UPDATE OF state, run_at ON tq.task
    FOR EACH ROW WHEN (NEW.state = 'scheduled') EXECUTE FUNCTION tq.task_changed();

COMMENT ON FUNCTION tq.wake(text) IS 'Wakes idle workers of a queue once the transaction commits: the background worker sends NOTIFY tq_ready (this transaction does when no worker serves the database). Off with tq.producer_notify.';

CREATE FUNCTION @extschema@.tq_worker_status(
    OUT running boolean, OUT pid integer, OUT database oid, OUT started timestamptz,
    OUT last_pass timestamptz, OUT next_pass timestamptz, OUT passes bigint,
    OUT notifications bigint, OUT pending_queues integer)
    RETURNS record
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'tq_worker_status';
COMMENT ON FUNCTION @extschema@.tq_worker_status() IS
'The background worker: whether it runs, its pid and database, when it started, its last and next housekeeping pass, passes and tq_ready notifications so far, and queues waiting to be notified (-1: all).';
REVOKE ALL ON FUNCTION @extschema@.tq_worker_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.tq_worker_status() TO tq_admin, tq_worker;

/*
 * Token buckets in shared memory (extension/ratelimit.c), for any code
 * that must respect a third party's limit: true if n tokens were taken.
 */
CREATE FUNCTION @extschema@.tq_rate_consume(key text, n integer DEFAULT 1,
                                            rate double precision DEFAULT NULL,
                                            burst double precision DEFAULT NULL)
    RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'tq_rate_consume';
COMMENT ON FUNCTION @extschema@.tq_rate_consume(text, integer, double precision, double precision) IS
'Takes n tokens from the shared token bucket of key (rate tokens per second, capacity burst, default one second''s worth) and returns true, or returns false and takes none. Shared by every session of the cluster; buckets start full, also after a restart.';
REVOKE ALL ON FUNCTION @extschema@.tq_rate_consume(text, integer, double precision, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.tq_rate_consume(text, integer, double precision, double precision)
    TO tq_producer, tq_worker, tq_admin;

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
REVOKE ALL ON tq.schedule FROM PUBLIC;

-- Raises the error for a database without pg_cron.
CREATE FUNCTION tq.require_pg_cron() RETURNS void
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF pg_catalog.to_regprocedure('cron.schedule(text,text,text)') IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
            MESSAGE = 'periodic tasks need the pg_cron extension in this database',
            DETAIL = 'tq_schedule creates pg_cron jobs; pg_cron is not installed here.',
            HINT = 'Install postgresql-15-cron, add pg_cron to shared_preload_libraries, set cron.database_name to this database, restart, then CREATE EXTENSION pg_cron.';
    END IF;
END
$$;
COMMENT ON FUNCTION tq.require_pg_cron() IS 'Raises a clear error (0A000) unless pg_cron is installed in this database.';

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
        EXECUTE 'SELECT cron.schedule($1, $2, $3)'
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
        EXECUTE 'SELECT cron.unschedule($1)' USING 'tq:' || name;
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@.tq_unschedule(text) IS
'Removes a periodic task and its pg_cron job. False if there was none.';

CREATE VIEW @extschema@.tq_schedules AS
    SELECT s.name, s.cron, s.queue, s.payload, s.priority, s.tenant, s.max_attempts, s.timeout,
           s.jobid, s.created_at
      FROM tq.schedule s;
COMMENT ON VIEW @extschema@.tq_schedules IS 'Periodic tasks created with tq_schedule.';
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

REVOKE ALL ON FUNCTION tq.require_pg_cron(), tq.fire_schedule(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.tq_schedule(text, text, text, jsonb, integer, text, integer, interval),
                       @extschema@.tq_unschedule(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.tq_schedule(text, text, text, jsonb, integer, text, integer, interval),
                          @extschema@.tq_unschedule(text) TO tq_admin;
GRANT SELECT ON @extschema@.tq_schedules TO tq_admin, tq_worker, tq_producer;
