-- Periodic tasks on pg_cron: tq_schedule, tq_unschedule, tq_schedules, and
-- the dedup key that makes a double firing in one minute run once.  The
-- test harness preloads pg_cron for this database; without it the file
-- checks only the error that says how to install it.  (A real firing by
-- pg_cron's scheduler is in test/tap/006_schedule_fires.pl.)
BEGIN;
SELECT plan(22);

SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') AS have_cron \gset
\if :have_cron
SELECT tq_create_queue('sched');

SELECT tq_schedule('nightly', '0 3 * * *', 'sched', '{"report": "daily"}', priority => 4, tenant => 'acme') AS job \gset
SELECT ok(:job > 0, 'tq_schedule returns the pg_cron job id');
SELECT is((SELECT format('%s | %s | %s', jobname, schedule, command) FROM cron.job WHERE jobid = :job),
    'tq:nightly | 0 3 * * * | SELECT tq.fire_schedule(''nightly'')',
    'it creates a pg_cron job named tq:<name> that fires the schedule');
SELECT results_eq($$SELECT name, cron, queue, payload, priority::int, tenant FROM tq_schedules$$,
    $$VALUES ('nightly', '0 3 * * *', 'sched', '{"report": "daily"}'::jsonb, 4, 'acme')$$,
    'tq_schedules lists it');

SELECT is(tq_schedule('nightly', '30 4 * * *', 'sched', '{"report": "daily"}'), :job::bigint,
    'scheduling the same name again replaces it, keeping the job');
SELECT is((SELECT schedule FROM cron.job WHERE jobid = :job), '30 4 * * *', 'with the new cron expression');
SELECT is((SELECT count(*)::int FROM tq_schedules), 1, 'and still one schedule');

SELECT tq.fire_schedule('nightly') AS t1, tq.fire_schedule('nightly') AS t2 \gset
SELECT is(:t1::bigint, :t2::bigint, 'two firings in one minute submit one task');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'sched'), 1, 'only one task exists');
SELECT matches((SELECT dedup_key FROM tq_task(:t1)), '^schedule:nightly:\d{4}-\d\d-\d\dT\d\d:\d\dZ$',
    'its dedup key names the schedule and the firing minute (UTC)');
SELECT results_eq(format('SELECT payload, priority::int FROM tq_task(%s)', :t1),
    $$VALUES ('{"report": "daily"}'::jsonb, 0)$$, 'the task carries the schedule''s payload and priority');
SELECT is(tq.fire_schedule('no_such_schedule'), NULL, 'a firing of a dropped schedule does nothing');

-- Bad input.
SELECT throws_ok($$SELECT tq_schedule('bad', 'not a cron', 'sched')$$, '22023', 'invalid cron expression "not a cron"',
    'an invalid cron expression: 22023, naming it');
SELECT throws_ok($$SELECT tq_schedule('bad', '', 'sched')$$, '22004', NULL, 'an empty cron expression: 22004');
SELECT throws_ok($$SELECT tq_schedule('no good', '* * * * *', 'sched')$$, '42602', NULL, 'a name that is not an identifier: 42602');
SELECT throws_ok($$SELECT tq_schedule('x', '* * * * *', 'nope')$$, '42704', NULL, 'an unknown queue: 42704');
SELECT throws_ok($$SELECT tq_schedule('x', '* * * * *', 'sched', '[1]')$$, '22023', NULL, 'a payload that is not an object: 22023');
SELECT throws_ok($$SELECT tq_schedule('x', '* * * * *', 'sched', priority => 100000)$$, '22023', NULL, 'a priority out of range: 22023');
SELECT is((SELECT count(*)::int FROM cron.job WHERE jobname LIKE 'tq:%'), 1, 'no refused call left a pg_cron job');

SELECT is(tq_unschedule('nightly'), true, 'tq_unschedule removes a schedule');
SELECT is((SELECT count(*)::int FROM cron.job WHERE jobid = :job), 0, 'and its pg_cron job');
SELECT is(tq_unschedule('nightly'), false, 'and says false when there is none');

-- Without pg_cron in the database (dropped inside this transaction).
DROP EXTENSION pg_cron CASCADE;
\else
SELECT skip('pg_cron is not installed in this database', 21);
\endif
SELECT throws_ok($$SELECT tq_schedule('x', '* * * * *', 'sched')$$, '0A000',
    'periodic tasks need the pg_cron extension in this database',
    'without pg_cron, tq_schedule says what is missing (0A000)');

SELECT * FROM finish();
ROLLBACK;
