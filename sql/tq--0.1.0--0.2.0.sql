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
