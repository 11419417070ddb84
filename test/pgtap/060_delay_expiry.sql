-- Delayed and expiring tasks: never leased before run_at; expired (and
-- never run) when expires_at passes before the task starts.  Time passes by
-- moving run_at / expires_at into the past with UPDATE tq.task.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(26);

SELECT tq_create_queue('dl');

-- Delayed.
SELECT tq_submit('dl', '{"when": "later"}', run_at => now() + interval '10 minutes') AS later \gset
SELECT is((SELECT count(*)::int FROM tq_lease('w', ARRAY['dl'], 10)), 0, 'a task is not leased before its run_at');
SELECT is((SELECT n FROM tq_maintain() WHERE action = 'promoted'), 0::bigint, 'maintenance does not promote a task before its run_at');
SELECT is((SELECT state::text FROM tq.task WHERE id = :later), 'scheduled', 'the delayed task is still scheduled');
SELECT is((SELECT scheduled FROM tq_queue_stats WHERE queue = 'dl'), 1::bigint, 'tq_queue_stats counts the delayed task as scheduled');

UPDATE tq.task SET run_at = now() - interval '1 second' WHERE id = :later;    -- ten minutes pass
SELECT results_eq($$SELECT id, attempt FROM tq_lease('w', ARRAY['dl'], 10)$$,
    format('VALUES (%s::bigint, 1)', :later), 'once run_at has passed, tq_lease promotes and leases the task');

SELECT tq_submit('dl', '{}', run_at => now() + interval '1 hour') AS later2 \gset
UPDATE tq.task SET run_at = now() - interval '1 second' WHERE id = :later2;
SELECT is((SELECT n FROM tq_maintain() WHERE action = 'promoted'), 1::bigint, 'tq_maintain promotes a due task');
SELECT is((SELECT state::text FROM tq.task WHERE id = :later2), 'ready', 'a promoted task is ready');

-- A due task of a paused queue becomes paused, not ready.
SELECT tq_create_queue('dl_p');
SELECT tq_submit('dl_p', '{}', run_at => now() + interval '1 hour') AS lp \gset
SELECT tq_submit('dl_p', '{}', run_at => now() + interval '1 hour', tenant => 'quiet') AS lt \gset
SELECT tq_pause('dl_p', tenant => 'quiet');
UPDATE tq.task SET run_at = now() - interval '1 second' WHERE id IN (:lp, :lt);
SELECT results_eq($$SELECT id FROM tq_lease('w', ARRAY['dl_p'], 10)$$, format('VALUES (%s::bigint)', :lp),
    'a due task of a paused tenant is not leased; the other one is');
SELECT is((SELECT state::text FROM tq.task WHERE id = :lt), 'paused', 'a due task of a paused tenant is promoted to paused');
SELECT tq_pause('dl_p');
SELECT tq_submit('dl_p', '{}', run_at => now() + interval '1 hour') AS lq \gset
UPDATE tq.task SET run_at = now() - interval '1 second' WHERE id = :lq;
SELECT count(*) FROM tq_maintain();
SELECT is((SELECT state::text FROM tq.task WHERE id = :lq), 'paused', 'a due task of a paused queue is promoted to paused');

-- Expiry of a ready task.
SELECT tq_create_queue('ex');
SELECT tq_submit('ex', '{"x": 1}', expires_at => now() + interval '5 minutes') AS x1 \gset
SELECT is((SELECT expires_at FROM tq_task(:x1)), now() + interval '5 minutes', 'tq_task shows expires_at');
UPDATE tq.task SET expires_at = now() - interval '1 second' WHERE id = :x1;     -- five minutes pass
SELECT is((SELECT count(*)::int FROM tq_lease('w', ARRAY['ex'], 10)), 0, 'a task past its expires_at is not leased');
SELECT results_eq(format('SELECT state, attempts, first_started_at, finished_at FROM tq_task(%s)', :x1),
    $$VALUES ('expired', 0, NULL::timestamptz, now())$$, 'a task past its expires_at is expired without ever running');
SELECT is((SELECT last_error FROM tq_task(:x1)), 'expired: expires_at passed before the task started',
    'an expired task says why in last_error');
SELECT is((SELECT expired FROM tq_queue_stats_exact WHERE queue = 'ex'), 1::bigint, 'tq_queue_stats_exact counts expired tasks');

-- Expiry of a scheduled task (delayed, or waiting out a retry).
SELECT tq_submit('ex', '{}', run_at => now() + interval '1 hour', expires_at => now() + interval '2 hours') AS x2 \gset
UPDATE tq.task SET run_at = now() + interval '1 hour', expires_at = now() - interval '1 second' WHERE id = :x2;
SELECT is((SELECT n FROM tq_maintain() WHERE action = 'expired'), 1::bigint, 'tq_maintain expires a scheduled task past its expires_at');
SELECT is((SELECT state FROM tq_task(:x2)), 'expired', 'a scheduled task can expire before its run_at');

SELECT tq_submit('ex', '{}', expires_at => now() + interval '1 hour') AS x3 \gset
SELECT tq_fail(l.id, l.attempt, 'try later') FROM tq_lease('w', ARRAY['ex'], 10) l;
UPDATE tq.task SET expires_at = now() - interval '1 second' WHERE id = :x3;
UPDATE tq.task SET run_at = now() - interval '1 second' WHERE id = :x3;
SELECT is((SELECT count(*)::int FROM tq_lease('w', ARRAY['ex'], 10)), 0, 'a retry past expires_at is not leased');
SELECT results_eq(format('SELECT state, attempts FROM tq_task(%s)', :x3), $$VALUES ('expired', 1)$$,
    'a task waiting for a retry when expires_at passes is expired');

-- Expiry of a paused task.
SELECT tq_pause('ex');
SELECT tq_submit('ex', '{}', expires_at => now() + interval '1 hour') AS x4 \gset
UPDATE tq.task SET expires_at = now() - interval '1 second' WHERE id = :x4;
SELECT count(*) FROM tq_maintain();
SELECT is((SELECT state FROM tq_task(:x4)), 'expired', 'a paused task past its expires_at is expired');
SELECT tq_resume('ex');

-- A running task does not expire: expires_at is a deadline to start.
SELECT tq_submit('ex', '{}', expires_at => now() + interval '1 hour') AS x5 \gset
SELECT count(*) FROM tq_lease('w', ARRAY['ex'], 10);
UPDATE tq.task SET expires_at = now() - interval '1 second' WHERE id = :x5;
SELECT is((SELECT n FROM tq_maintain() WHERE action = 'expired'), 0::bigint, 'tq_maintain does not expire a running task');
SELECT is(tq_complete(:x5, 1), true, 'a task that started before expires_at can still complete');
SELECT is((SELECT state FROM tq_task(:x5)), 'succeeded', 'and it succeeds');

-- More overdue tasks than one lease call expires: tq_lease still returns none of them.
-- (tq_lease must not run a full maintenance pass here: it is not due.)
UPDATE tq.meta SET next_maintenance = 'infinity';
SELECT tq_create_queue('ex_many');
SELECT cardinality(tq_submit_many('ex_many', array_fill('{}'::jsonb, ARRAY[250]), expires_at => now() + interval '1 minute'));
UPDATE tq.task SET expires_at = now() - interval '1 second' WHERE queue = 'ex_many';
SELECT tq_submit('ex_many', '{"fresh": true}') AS fresh \gset
SELECT results_eq($$SELECT id FROM tq_lease('w', ARRAY['ex_many'], 10)$$, format('VALUES (%s::bigint)', :fresh),
    'tq_lease skips overdue tasks it has not expired yet and leases the fresh one');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'ex_many' AND state = 'running'), 1,
    'no overdue task was leased');
SELECT count(*) FROM tq_maintain();
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'ex_many' AND state = 'expired'), 250,
    'maintenance expires every overdue task');

SELECT * FROM finish();
ROLLBACK;
