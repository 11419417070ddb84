-- Limits: concurrency quotas and rate limits of queues and tenants,
-- back-pressure (backlog_limit), and the live counts of tq_queue_stats and
-- tq_tenants against the tables.
--
-- Unlike the other files this one commits.  The shared-memory counts that
-- quotas, backlog limits and the live views read go up at once but down
-- only when the changing transaction commits, so a slot freed by
-- tq_complete is seen by the next transaction -- as for real workers, which
-- finish and lease in transactions of their own.  So every statement here
-- runs in a transaction of its own (psql's autocommit), the few explicit
-- BEGIN blocks test rollbacks, and the queues (all named lim_*) are dropped
-- at the end.  Rate limits use 0.001 tokens per second: no refill happens
-- during the test, so nothing depends on timing.
SET client_min_messages = warning;
SELECT plan(58);

-- The lease log: every task tq_lease returned, with the call that did.
CREATE TEMP TABLE lim_leased (seq bigserial, call int, queue text, id bigint, attempt int, tenant text);
CREATE TEMP SEQUENCE lim_call;

-- One tq_lease call (a transaction of its own when called alone); returns
-- how many tasks it leased.
CREATE FUNCTION pg_temp.lease(p_queue text, p_max int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    c int := nextval('lim_call');
    n int;
BEGIN
    INSERT INTO lim_leased (call, queue, id, attempt, tenant)
    SELECT c, l.queue, l.id, l.attempt, l.tenant FROM tq_lease('lim-worker', ARRAY[p_queue], p_max) l;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Running tasks of a queue: in the table and in tq_queue_stats, noted
-- after each lease.
CREATE TEMP TABLE lim_running (queue text, in_table bigint, in_stats bigint);
CREATE FUNCTION pg_temp.note_running(p_queue text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO lim_running
    SELECT p_queue,
           (SELECT count(*) FROM tq.task WHERE queue = p_queue AND state = 'running'),
           (SELECT running FROM tq_queue_stats WHERE queue = p_queue);
$$;

-- The error a statement raises: SQLSTATE, message and hint.
CREATE FUNCTION pg_temp.error_of(p_sql text, OUT err_state text, OUT err_message text, OUT err_hint text)
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT, err_hint = PG_EXCEPTION_HINT;
END
$$;

-- Live counts per tenant (tenants with live tasks) as the views show them,
-- and as the table has them.
CREATE FUNCTION pg_temp.tenant_counts_view(p_queue text) RETURNS TABLE (tenant text, scheduled bigint, ready bigint, paused bigint, running bigint)
    LANGUAGE sql AS $$
    SELECT t.tenant, t.scheduled, t.ready, t.paused, t.running FROM tq_tenants t
     WHERE t.queue = p_queue AND t.scheduled + t.ready + t.paused + t.running > 0;
$$;
CREATE FUNCTION pg_temp.tenant_counts_table(p_queue text) RETURNS TABLE (tenant text, scheduled bigint, ready bigint, paused bigint, running bigint)
    LANGUAGE sql AS $$
    SELECT t.tenant, count(*) FILTER (WHERE t.state = 'scheduled'), count(*) FILTER (WHERE t.state = 'ready'),
           count(*) FILTER (WHERE t.state = 'paused'), count(*) FILTER (WHERE t.state = 'running')
      FROM tq.task t WHERE t.queue = p_queue GROUP BY t.tenant;
$$;

------------------------------------------------------------------------------
-- Queue concurrency quota.
------------------------------------------------------------------------------
SELECT tq_create_queue('lim_conc', concurrency => 3);
SELECT cardinality(tq_submit_many('lim_conc', array_fill('{}'::jsonb, ARRAY[10])));
SELECT is(pg_temp.lease('lim_conc', 2), 2, 'queue concurrency 3: a lease of 2 gets 2');
SELECT pg_temp.note_running('lim_conc');
SELECT is(pg_temp.lease('lim_conc', 2), 1, 'the next lease of 2 gets only the one slot left');
SELECT pg_temp.note_running('lim_conc');
SELECT is(pg_temp.lease('lim_conc', 10), 0, 'a queue at its concurrency quota leases nothing');
SELECT pg_temp.note_running('lim_conc');
SELECT is(pg_temp.lease('lim_conc', 1), 0, 'nor does the next lease');
SELECT pg_temp.note_running('lim_conc');
SELECT tq_complete(id, attempt) FROM lim_leased WHERE queue = 'lim_conc' ORDER BY seq LIMIT 1;
SELECT is((SELECT running FROM tq_queue_stats WHERE queue = 'lim_conc'), 2::bigint,
    'once tq_complete has committed, tq_queue_stats shows 2 running');
SELECT is(pg_temp.lease('lim_conc', 10), 1, 'after tq_complete of one task exactly one more is leased');
SELECT pg_temp.note_running('lim_conc');
SELECT tq_fail(id, attempt, 'later', retry_after => '1 hour')
  FROM (SELECT * FROM lim_leased WHERE queue = 'lim_conc' ORDER BY seq OFFSET 1 LIMIT 1) s;
SELECT is(pg_temp.lease('lim_conc', 10), 1, 'a task failed for a retry frees its slot too');
SELECT pg_temp.note_running('lim_conc');
SELECT is((SELECT max(in_table) FROM lim_running WHERE queue = 'lim_conc'), 3::bigint,
    'the running count never exceeded the queue''s concurrency of 3');
SELECT is((SELECT count(*)::int FROM lim_running WHERE queue = 'lim_conc' AND in_stats IS DISTINCT FROM in_table), 0,
    'after every lease tq_queue_stats.running agreed with the running tasks in the table');
SELECT lives_ok($$SELECT tq_alter_queue('lim_conc', concurrency => 5)$$, 'tq_alter_queue raises the quota to 5');
SELECT is(pg_temp.lease('lim_conc', 10), 2, 'a raised quota applies to the next lease at once');
SELECT lives_ok($$SELECT tq_alter_queue('lim_conc', concurrency => 0)$$, 'tq_alter_queue(concurrency => 0) clears the quota');
SELECT is(pg_temp.lease('lim_conc', 10), 3, 'without a quota the rest of the ready tasks are leased');

------------------------------------------------------------------------------
-- Tenant concurrency quota: the tenant's extra claims are parked, the lease
-- serves other tenants instead.
------------------------------------------------------------------------------
SELECT tq_create_queue('lim_tconc');
SELECT tq_set_tenant('lim_tconc', 'a', concurrency => 2);
SELECT cardinality(tq_submit_many('lim_tconc', array_fill('{}'::jsonb, ARRAY[10]), tenant => 'a'));
SELECT cardinality(tq_submit_many('lim_tconc', array_fill('{}'::jsonb, ARRAY[10]), tenant => 'b'));
SELECT is(pg_temp.lease('lim_tconc', 4), 4, 'tenant quota 2: a first lease of 4 gets 4');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'lim_tconc' AND tenant = 'a' AND state = 'running'), 2,
    'tenant a has 2 running, its quota');
SELECT pg_temp.lease('lim_tconc', 4) AS tconc_n \gset
SELECT ok(:tconc_n > 0 AND (SELECT array_agg(DISTINCT tenant) FROM lim_leased WHERE call = currval('lim_call')) = ARRAY['b'],
    'with tenant a at its quota, the next lease returns tenant b''s tasks (and only those)');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'lim_tconc' AND tenant = 'a' AND state = 'running'), 2,
    'tenant a still has 2 running');
SELECT ok((SELECT count(*) FROM tq.task WHERE queue = 'lim_tconc' AND tenant = 'a' AND state = 'paused') > 0,
    'tenant a''s tasks claimed beyond its quota are parked (paused)');
SELECT results_eq(
    $$SELECT held, paused, running FROM tq_tenants WHERE queue = 'lim_tconc' AND tenant = 'a'$$,
    $$SELECT true, count(*) FILTER (WHERE state = 'paused'), count(*) FILTER (WHERE state = 'running')
        FROM tq.task WHERE queue = 'lim_tconc' AND tenant = 'a'$$,
    'tq_tenants shows tenant a held, with its parked tasks counted as paused');
SELECT id AS next_a FROM tq.task WHERE queue = 'lim_tconc' AND tenant = 'a' AND state <> 'running'
 ORDER BY vkey, id LIMIT 1 \gset
SELECT tq_complete(id, attempt) FROM lim_leased WHERE queue = 'lim_tconc' AND tenant = 'a' ORDER BY seq LIMIT 1;
SELECT is(pg_temp.lease('lim_tconc', 1), 1, 'after one of tenant a''s tasks completes, a lease of 1 gets a task');
SELECT is((SELECT id FROM lim_leased WHERE call = currval('lim_call')), :next_a::bigint,
    '... tenant a''s parked task that is first in key order');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'lim_tconc' AND tenant = 'a' AND state = 'running'), 2,
    'tenant a is back at its quota of 2');
SELECT set_eq($$SELECT * FROM pg_temp.tenant_counts_view('lim_tconc')$$, $$SELECT * FROM pg_temp.tenant_counts_table('lim_tconc')$$,
    'tq_tenants counts match the table for tenants a and b');

------------------------------------------------------------------------------
-- Rate limits.
------------------------------------------------------------------------------
SELECT tq_create_queue('lim_trate');
SELECT tq_set_tenant('lim_trate', 'a', rate_per_sec => 0.001, burst => 5);
SELECT cardinality(tq_submit_many('lim_trate', array_fill('{}'::jsonb, ARRAY[20]), tenant => 'a'));
SELECT cardinality(tq_submit_many('lim_trate', array_fill('{}'::jsonb, ARRAY[20]), tenant => 'b'));
SELECT pg_temp.lease('lim_trate', 5);
SELECT pg_temp.lease('lim_trate', 5);
SELECT pg_temp.lease('lim_trate', 5);
SELECT pg_temp.lease('lim_trate', 5);
SELECT is((SELECT count(*)::int FROM lim_leased WHERE queue = 'lim_trate' AND tenant = 'a'), 5,
    'a tenant with burst 5 and a negligible rate gets exactly 5 tasks leased');
SELECT is((SELECT count(*)::int FROM (SELECT call FROM lim_leased WHERE queue = 'lim_trate' AND tenant = 'b' GROUP BY call) s), 4,
    'another tenant''s tasks are leased by every one of the 4 calls: an empty bucket does not block the queue');
SELECT ok((SELECT tokens < 1 AND held FROM tq_tenants WHERE queue = 'lim_trate' AND tenant = 'a'),
    'tq_tenants shows the tenant''s bucket empty and the tenant held');

SELECT tq_create_queue('lim_qrate', rate_per_sec => 0.001, burst => 3);
SELECT cardinality(tq_submit_many('lim_qrate', array_fill('{}'::jsonb, ARRAY[10])));
SELECT is(pg_temp.lease('lim_qrate', 10), 3, 'queue rate limit with burst 3: a lease of 10 gets 3');
SELECT is(pg_temp.lease('lim_qrate', 10), 0, 'and the next lease gets none');
SELECT results_eq($$SELECT ready, running, tokens < 1 FROM tq_queue_stats WHERE queue = 'lim_qrate'$$,
    $$VALUES (7::bigint, 3::bigint, true)$$,
    'tq_queue_stats shows 7 ready, 3 running and the bucket empty');

------------------------------------------------------------------------------
-- Back-pressure: backlog_limit of a tenant and of a queue.
------------------------------------------------------------------------------
SELECT tq_create_queue('lim_bp');
SELECT tq_set_tenant('lim_bp', 'a', backlog_limit => 5);
-- The other tenants' tasks are delayed so that leases below return only a's.
SELECT lives_ok($$SELECT tq_submit('lim_bp', '{}', tenant => 'a', dedup_key => 'a-' || g) FROM generate_series(1, 5) g$$,
    'a tenant with backlog_limit 5 submits 5 tasks');
SELECT throws_ok($$SELECT tq_submit('lim_bp', '{}', tenant => 'a')$$, '53400', 'tenant "a" of queue "lim_bp" is full',
    'its 6th submit is refused: 53400, naming the tenant and the queue');
SELECT is(tq_submit('lim_bp', '{}', tenant => 'a', dedup_key => 'a-5'), (SELECT id FROM tq.task WHERE queue = 'lim_bp' AND dedup_key = 'a-5'),
    'a duplicate submit of a queued task still returns its id from a full tenant');
SELECT lives_ok($$SELECT tq_submit('lim_bp', '{}', tenant => 'b', run_at => now() + interval '1 hour'),
                         tq_submit('lim_bp', '{}', run_at => now() + interval '1 hour')$$,
    'other tenants (and tasks without a tenant) of the queue still submit');
SELECT matches((pg_temp.error_of($$SELECT tq_submit('lim_bp', '{}', tenant => 'a')$$)).err_hint, '^Retry ',
    'the refusal''s hint says when to retry');
-- A measured drain rate gives an estimate in seconds: two claims a second apart.
SELECT pg_temp.lease('lim_bp', 1);
SELECT pg_sleep(1.1);
SELECT pg_temp.lease('lim_bp', 1);
SELECT tq_submit('lim_bp', '{}', tenant => 'a'), tq_submit('lim_bp', '{}', tenant => 'a');
SELECT matches((pg_temp.error_of($$SELECT tq_submit('lim_bp', '{}', tenant => 'a')$$)).err_hint, '^Retry in about [0-9]+ s',
    'once the tenant has been drained for a while, the hint estimates the seconds until there is room');
SELECT tq_complete(id, attempt) FROM lim_leased WHERE queue = 'lim_bp';
SELECT pg_temp.lease('lim_bp', 1);
SELECT tq_complete(id, attempt) FROM lim_leased WHERE call = currval('lim_call');
SELECT lives_ok($$SELECT tq_submit('lim_bp', '{}', tenant => 'a')$$,
    'after one of its tasks is leased and completed, the tenant submits one more');
SELECT throws_ok($$SELECT tq_submit('lim_bp', '{}', tenant => 'a')$$, '53400', 'tenant "a" of queue "lim_bp" is full',
    'and the next one is refused again');
SELECT pg_temp.lease('lim_bp', 2);
SELECT tq_complete(id, attempt) FROM lim_leased WHERE call = currval('lim_call');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'lim_bp' AND tenant = 'a'), 3, 'tenant a has 3 queued tasks');
SELECT throws_ok($$SELECT tq_submit_many('lim_bp', array_fill('{}'::jsonb, ARRAY[3]), tenant => 'a')$$, '53400', NULL,
    'a tq_submit_many of 3 that would take the tenant to 6 is refused');
SELECT results_eq(
    $$SELECT (SELECT count(*) FROM tq.task WHERE queue = 'lim_bp' AND tenant = 'a'),
             (SELECT scheduled + ready + paused FROM tq_tenants WHERE queue = 'lim_bp' AND tenant = 'a')$$,
    $$VALUES (3::bigint, 3::bigint)$$,
    'the refused batch wrote none of its tasks and left the tenant''s count at 3');
SELECT lives_ok($$SELECT tq_submit_many('lim_bp', array_fill('{}'::jsonb, ARRAY[2]), tenant => 'a')$$,
    'a tq_submit_many of 2 that fills the tenant to its limit is accepted');

SELECT tq_create_queue('lim_bpq', backlog_limit => 4);
SELECT cardinality(tq_submit_many('lim_bpq', array_fill('{}'::jsonb, ARRAY[2]), tenant => 'x'));
SELECT cardinality(tq_submit_many('lim_bpq', array_fill('{}'::jsonb, ARRAY[2]), tenant => 'y', run_at => now() + interval '1 hour'));
SELECT throws_ok($$SELECT tq_submit('lim_bpq', '{}', tenant => 'z')$$, '53400', 'queue "lim_bpq" is full',
    'a queue at its backlog_limit (ready and scheduled tasks count) refuses a new tenant: 53400, naming the queue');
SELECT throws_ok($$SELECT tq_submit('lim_bpq', '{}')$$, '53400', 'queue "lim_bpq" is full',
    'and a task without a tenant');
SELECT pg_temp.lease('lim_bpq', 1);
SELECT lives_ok($$SELECT tq_submit('lim_bpq', '{}', tenant => 'z')$$,
    'a running task does not count toward the backlog: after a lease the queue takes one more');

------------------------------------------------------------------------------
-- tq_queue_stats and tq_tenants against the tables, after a mix of
-- everything that moves tasks.
------------------------------------------------------------------------------
SELECT tq_create_queue('lim_mix');
SELECT cardinality(tq_submit_many('lim_mix', array_fill('{}'::jsonb, ARRAY[6]), tenant => 'a'));
SELECT cardinality(tq_submit_many('lim_mix', array_fill('{}'::jsonb, ARRAY[4]), tenant => 'b'));
SELECT cardinality(tq_submit_many('lim_mix', array_fill('{}'::jsonb, ARRAY[3])));
SELECT cardinality(tq_submit_many('lim_mix', array_fill('{}'::jsonb, ARRAY[2]), tenant => 'a', run_at => now() + interval '1 hour'));
SELECT pg_temp.lease('lim_mix', 7);
SELECT tq_complete(id, attempt) FROM (SELECT * FROM lim_leased WHERE queue = 'lim_mix' ORDER BY seq LIMIT 2) s;
SELECT tq_fail(id, attempt, 'later', retry_after => '1 hour') FROM (SELECT * FROM lim_leased WHERE queue = 'lim_mix' ORDER BY seq OFFSET 2 LIMIT 1) s;
SELECT tq_fail(id, attempt, 'never', retry => 'never') FROM (SELECT * FROM lim_leased WHERE queue = 'lim_mix' ORDER BY seq OFFSET 3 LIMIT 1) s;
SELECT tq_release(id, attempt) FROM (SELECT * FROM lim_leased WHERE queue = 'lim_mix' ORDER BY seq OFFSET 4 LIMIT 1) s;
SELECT tq_cancel((SELECT min(id) FROM tq.task WHERE queue = 'lim_mix' AND state = 'ready'));
SELECT tq_cancel((SELECT min(id) FROM tq.task WHERE queue = 'lim_mix' AND state = 'scheduled'));
SELECT tq_pause('lim_mix', tenant => 'b');
SELECT tq_pause('lim_mix');
SELECT tq_resume('lim_mix');
SELECT tq_submit('lim_mix', '{}', tenant => 'b');
SELECT results_eq(
    $$SELECT scheduled, ready, paused, running FROM tq_queue_stats WHERE queue = 'lim_mix'$$,
    $$SELECT scheduled, ready, paused, running FROM tq_queue_stats_exact WHERE queue = 'lim_mix'$$,
    'after submits, leases, complete, fail, release, cancel and pauses, tq_queue_stats counts match tq_queue_stats_exact');
SELECT ok((SELECT scheduled > 0 AND ready > 0 AND paused > 0 AND running > 0 FROM tq_queue_stats_exact WHERE queue = 'lim_mix'),
    'the mix left tasks in every live state');
SELECT set_eq($$SELECT * FROM pg_temp.tenant_counts_view('lim_mix')$$, $$SELECT * FROM pg_temp.tenant_counts_table('lim_mix')$$,
    'tq_tenants counts match the table for every tenant, the NULL tenant too');

-- Rolled back work is not counted.
CREATE TEMP TABLE mix_before AS SELECT scheduled, ready, paused, running FROM tq_queue_stats WHERE queue = 'lim_mix';
BEGIN;
SELECT tq_submit('lim_mix', '{}', tenant => 'a');
SELECT cardinality(tq_submit_many('lim_mix', array_fill('{}'::jsonb, ARRAY[5]), tenant => 'c'));
SELECT count(*) FROM tq_lease('lim-worker', ARRAY['lim_mix'], 2);
ROLLBACK;
SELECT results_eq($$SELECT scheduled, ready, paused, running FROM tq_queue_stats WHERE queue = 'lim_mix'$$,
    $$SELECT * FROM mix_before$$,
    'a rolled-back transaction''s submits and lease leave tq_queue_stats as it was');
SELECT set_eq($$SELECT * FROM pg_temp.tenant_counts_view('lim_mix')$$, $$SELECT * FROM pg_temp.tenant_counts_table('lim_mix')$$,
    'and tq_tenants still matches the table');
BEGIN;
SAVEPOINT s1;
SELECT tq_submit('lim_mix', '{}', tenant => 'a');
SELECT count(*) FROM tq_lease('lim-worker', ARRAY['lim_mix'], 1);
ROLLBACK TO SAVEPOINT s1;
SELECT tq_submit('lim_mix', '{}', tenant => 'c', run_at => now() + interval '1 hour');
COMMIT;
SELECT results_eq($$SELECT scheduled, ready, paused, running FROM tq_queue_stats WHERE queue = 'lim_mix'$$,
    $$SELECT scheduled + 1, ready, paused, running FROM mix_before$$,
    'work rolled back to a savepoint is not counted; the committed submit after it is');
SELECT set_eq($$SELECT * FROM pg_temp.tenant_counts_view('lim_mix')$$, $$SELECT * FROM pg_temp.tenant_counts_table('lim_mix')$$,
    'and tq_tenants matches the table');
SELECT throws_ok($$SELECT tq_submit('lim_nope', '{}')$$, '42704', NULL, 'a refused submit (unknown queue) is no problem for the counters');
SELECT results_eq($$SELECT scheduled, ready, paused, running FROM tq_queue_stats WHERE queue = 'lim_mix'$$,
    $$SELECT scheduled, ready, paused, running FROM tq_queue_stats_exact WHERE queue = 'lim_mix'$$,
    'at the end tq_queue_stats still matches tq_queue_stats_exact');

------------------------------------------------------------------------------
-- A policy change that rolled back leaves no limit behind.
------------------------------------------------------------------------------
SELECT tq_create_queue('lim_pol');
BEGIN;
SELECT tq_set_tenant('lim_pol', 'p', concurrency => 1);
SELECT tq_submit('lim_pol', '{}', tenant => 'p');
ROLLBACK;
SELECT cardinality(tq_submit_many('lim_pol', array_fill('{}'::jsonb, ARRAY[3]), tenant => 'p'));
SELECT is(pg_temp.lease('lim_pol', 3), 3,
    'after a rolled-back tq_set_tenant(concurrency => 1), all 3 of the tenant''s tasks are leased');

SELECT tq_create_queue('lim_qpol');
BEGIN;
SELECT tq_alter_queue('lim_qpol', concurrency => 1);
SELECT tq_submit('lim_qpol', '{}');
ROLLBACK;
SELECT cardinality(tq_submit_many('lim_qpol', array_fill('{}'::jsonb, ARRAY[3])));
SELECT is(pg_temp.lease('lim_qpol', 3), 3,
    'after a rolled-back tq_alter_queue(concurrency => 1), all 3 of the queue''s tasks are leased');

-- A policy committed while another session was using the tenant applies.
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'dblink') AS has_dblink,
       NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'dblink') AS own_dblink \gset
\if :has_dblink
CREATE EXTENSION IF NOT EXISTS dblink;
SELECT tq_create_queue('lim_race');
SELECT dblink_connect('lim_other', format('host=%s port=%s dbname=%s user=%s',
                      split_part(current_setting('unix_socket_directories'), ',', 1),
                      current_setting('port'), current_database(), current_user));
SELECT dblink_exec('lim_other', 'BEGIN');
SELECT * FROM dblink('lim_other', $$SELECT tq_set_tenant('lim_race', 'r', concurrency => 1)::text$$) AS t(x text);
SELECT tq_submit('lim_race', '{}', tenant => 'r');      -- uses the tenant before the other session commits
SELECT dblink_exec('lim_other', 'COMMIT');
SELECT dblink_disconnect('lim_other');
SELECT cardinality(tq_submit_many('lim_race', array_fill('{}'::jsonb, ARRAY[2]), tenant => 'r'));
SELECT is(pg_temp.lease('lim_race', 3), 1,
    'a tenant quota of 1 committed while this session was submitting for the tenant is enforced');
\if :own_dblink
DROP EXTENSION dblink;
\endif
\else
SELECT skip('dblink is not available', 1);
\endif

-- Fair share: a tenant whose queued tasks were cancelled (and the cancel
-- committed) consumed no service; its next task is placed like a newcomer's.
SELECT tq_create_queue('lim_cancel');
SELECT cardinality(tq_submit_many('lim_cancel', array_fill('{}'::jsonb, ARRAY[150]), tenant => format('n%s', g)))
  FROM generate_series(1, 9) g;
SELECT cardinality(tq_submit_many('lim_cancel', array_fill('{}'::jsonb, ARRAY[1000]), tenant => 'quitter'));
SELECT count(*) FROM tq_lease('lim-fair', ARRAY['lim_cancel'], 10);
SELECT is(tq_cancel('lim_cancel', tenant => 'quitter', include_running => false), 999::bigint,
    'the tenant''s 999 queued tasks are cancelled');
SELECT tq_submit('lim_cancel', '{}', tenant => 'quitter') AS quitter \gset
CREATE TEMP TABLE lim_fair_leased AS SELECT 0 AS call, 0::bigint AS id LIMIT 0;
DO $$
BEGIN
    FOR c IN 1 .. 20 LOOP
        INSERT INTO lim_fair_leased SELECT c, l.id FROM tq_lease('lim-fair', ARRAY['lim_cancel'], 10) l;
        EXIT WHEN EXISTS (SELECT 1 FROM lim_fair_leased WHERE id = currval('tq.task_id_seq'));
    END LOOP;
END $$;
SELECT cmp_ok((SELECT count(*)::int FROM lim_fair_leased), '<=', 9 + 1 + 10,
    'a tenant whose queued tasks were cancelled gets its next task within (active tenants + one batch) leases');

-- Clean up: this file committed its queues.
SELECT count(tq_drop_queue(name, force => true)) FROM tq.queue WHERE name LIKE 'lim\_%';

SELECT * FROM finish();
