-- tq_queue_activity (per-queue counts of the last minutes from shared
-- memory) and tq_dead (the dead-letter view).  Commits like 170: the
-- counts are added when the finishing transaction commits.  The queue
-- act_q is dropped at the end.
SET client_min_messages = warning;
SELECT plan(15);

SELECT has_view('tq_queue_activity', 'view tq_queue_activity exists');
SELECT has_view('tq_dead', 'view tq_dead exists');

SELECT tq_create_queue('act_q', max_attempts => 2, backoff_base => '1 ms', backoff_cap => '1 ms');
SELECT count(tq_submit('act_q', jsonb_build_object('n', g))) FROM generate_series(1, 10) g;
-- 6 succeed; 4 fail once (retried), then fail again (dead); 1 more is cancelled.
SELECT tq_complete(array_agg(id), array_agg(attempt), NULL) FROM tq_lease('act-w', '{act_q}', 6);
SELECT tq_fail(array_agg(id), array_agg(attempt), array_fill('first'::text, ARRAY[count(*)::int]))
  FROM tq_lease('act-w', '{act_q}', 4);
SELECT tq_fail(array_agg(id), array_agg(attempt), array_fill('second'::text, ARRAY[count(*)::int]))
  FROM tq_lease('act-w', '{act_q}', 4);
SELECT tq_cancel(tq_submit('act_q', '{}', run_at => now() + interval '1 hour'));
-- A rolled-back finish counts nothing.
BEGIN;
SELECT tq_submit('act_q', '{}');
SELECT tq_complete(array_agg(id), array_agg(attempt), NULL) FROM tq_lease('act-w', '{act_q}', 1);
ROLLBACK;

SELECT results_eq(
    $$ SELECT succeeded, failed, dead, other FROM tq_queue_activity WHERE queue = 'act_q' AND window_minutes = 15 $$,
    $$ VALUES (6::bigint, 4::bigint, 4::bigint, 1::bigint) $$,
    'the last 15 minutes: 6 succeeded, 4 failed attempts, 4 dead, 1 cancelled');
SELECT is((SELECT count(DISTINCT window_minutes)::int FROM tq_queue_activity WHERE queue = 'act_q'), 3,
          'three windows: 1, 5 and 15 minutes');
SELECT is((SELECT failure_rate FROM tq_queue_activity WHERE queue = 'act_q' AND window_minutes = 15),
          round(8 / 14.0, 4), 'failure rate = (failed + dead) / (succeeded + failed + dead)');
SELECT ok((SELECT finished_per_sec > 0 FROM tq_queue_activity WHERE queue = 'act_q' AND window_minutes = 1),
          'a throughput per second');
SELECT ok((SELECT succeeded >= 6 FROM tq_queue_activity WHERE queue = 'act_q' AND window_minutes = 1)
          OR extract(second FROM now()) < 2, 'the 1-minute window has them too (unless the minute just turned)');

SELECT is((SELECT count(*)::int FROM tq_dead WHERE queue = 'act_q'), 4, 'tq_dead lists the four dead tasks');
SELECT is((SELECT DISTINCT last_error FROM tq_dead WHERE queue = 'act_q'), 'second', '... with their last error');
SELECT is((SELECT DISTINCT attempts FROM tq_dead WHERE queue = 'act_q'), 2, '... and their attempts');
SELECT ok(obj_description('tq_queue_activity'::regclass) IS NOT NULL AND obj_description('tq_dead'::regclass) IS NOT NULL,
          'both views have a comment (\dv+)');
SELECT throws_ok($$ SELECT * FROM tq.activity(16) $$, '22023', 'minutes must be between 1 and 15',
                 'the shared counters keep 15 minutes');

-- Subtransactions: a finish rolled back to its savepoint counts nothing,
-- one in a released savepoint counts when the transaction commits.
SELECT tq_submit('act_q', '{}');
BEGIN;
SAVEPOINT s1;
SELECT tq_complete(array_agg(id), array_agg(attempt), NULL) FROM tq_lease('act-w', '{act_q}', 1);
ROLLBACK TO SAVEPOINT s1;
SAVEPOINT s2;
SELECT tq_complete(array_agg(id), array_agg(attempt), NULL) FROM tq_lease('act-w', '{act_q}', 1);
RELEASE SAVEPOINT s2;
COMMIT;
SELECT results_eq(
    $$ SELECT succeeded, failed, dead, other FROM tq_queue_activity WHERE queue = 'act_q' AND window_minutes = 15 $$,
    $$ VALUES (7::bigint, 4::bigint, 4::bigint, 1::bigint) $$,
    'a finish rolled back to a savepoint is not counted, one in a released savepoint is');

-- Dropping the queue forgets its counters, at commit: a rolled-back drop
-- keeps them, and a queue made again under the same name starts from zero.
BEGIN;
SELECT tq_drop_queue('act_q', force => true);
ROLLBACK;
SELECT results_eq(
    $$ SELECT succeeded, failed, dead, other FROM tq_queue_activity WHERE queue = 'act_q' AND window_minutes = 15 $$,
    $$ VALUES (7::bigint, 4::bigint, 4::bigint, 1::bigint) $$,
    'a rolled-back tq_drop_queue keeps the counters');
SELECT tq_drop_queue('act_q', force => true);
SELECT tq_create_queue('act_q');
SELECT results_eq(
    $$ SELECT succeeded, failed, dead, other FROM tq_queue_activity WHERE queue = 'act_q' AND window_minutes = 15 $$,
    $$ VALUES (0::bigint, 0::bigint, 0::bigint, 0::bigint) $$,
    'a queue dropped and made again under the same name starts from zero');

SELECT count(tq_drop_queue(name, force => true)) FROM tq.queue WHERE name = 'act_q';

SELECT * FROM finish();
