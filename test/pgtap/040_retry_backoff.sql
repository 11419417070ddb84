-- Retries: backoff with full jitter and a cap, max_attempts -> dead,
-- throttled failures, retry_after, tq_retry and tq_retry_dead.
-- Time never passes here: a backoff "runs out" by moving run_at into the past.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(71);

-- Helper: lease every ready task of a queue (after making due ones due)
-- and fail them all with the given mode; returns how many were failed.
CREATE FUNCTION pg_temp.fail_all(p_queue text, p_retry text DEFAULT 'auto', p_after interval DEFAULT NULL)
    RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    atts integer[];
BEGIN
    UPDATE tq.task SET run_at = now() - interval '1 second' WHERE queue = p_queue AND state = 'scheduled';
    SELECT array_agg(l.id), array_agg(l.attempt) INTO ids, atts FROM tq_lease('w', ARRAY[p_queue], 10000) l;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    RETURN (SELECT count(*) FILTER (WHERE x) FROM unnest(tq_fail(ids, atts,
                array_fill('failed'::text, ARRAY[cardinality(ids)]),
                array_fill(p_retry, ARRAY[cardinality(ids)]),
                array_fill(p_after, ARRAY[cardinality(ids)]))) x);
END
$$;

------------------------------------------------------------------------------
-- tq.backoff, sampled: uniform in [base/10, min(cap, base * 2^(n-1))].
------------------------------------------------------------------------------
CREATE TEMP TABLE samples AS
    SELECT n, tq.backoff(n, interval '10 seconds', interval '1 hour') AS d
    FROM generate_series(1, 2000) i, (VALUES (1), (3), (50)) v(n);
SELECT is((SELECT count(*)::int FROM samples WHERE n = 1 AND d NOT BETWEEN interval '1 second' AND interval '10 seconds'), 0,
    'the first retry''s delay lies within [base/10, base]');
SELECT is((SELECT count(*)::int FROM samples WHERE n = 3 AND d NOT BETWEEN interval '1 second' AND interval '40 seconds'), 0,
    'the third retry''s delay lies within [base/10, 4 * base]');
SELECT ok((SELECT max(d) FROM samples WHERE n = 3) > interval '20 seconds',
    'the window doubles per retry: the third retry''s delays reach past 2 * base');
SELECT is((SELECT count(*)::int FROM samples WHERE n = 50 AND d NOT BETWEEN interval '1 second' AND interval '1 hour'), 0,
    'a late retry''s delay never exceeds the cap');
SELECT ok((SELECT max(d) FROM samples WHERE n = 50) > interval '30 minutes',
    'a late retry''s delays spread over the whole capped window');
SELECT ok((SELECT count(DISTINCT d) FROM samples WHERE n = 1) > 1000,
    'delays are jittered, not one fixed value');
SELECT ok((SELECT min(d) FROM samples WHERE n = 1) < interval '2 seconds'
      AND (SELECT max(d) FROM samples WHERE n = 1) > interval '9 seconds',
    'full jitter: first-retry delays cover the window from near base/10 to near base');
SELECT is((SELECT count(*)::int FROM generate_series(1, 200) i
            WHERE tq.backoff(0, interval '10 seconds', interval '1 hour') > interval '10 seconds'), 0,
    'a retry number below 1 is treated as the first retry');
SELECT is((SELECT count(*)::int FROM generate_series(1, 200) i
            WHERE tq.backoff(1000000, interval '1 second', interval '1 minute') > interval '1 minute'), 0,
    'a huge retry number does not overflow past the cap');

------------------------------------------------------------------------------
-- Backoff through tq_fail: 300 tasks, failed round after round.
------------------------------------------------------------------------------
SELECT tq_create_queue('rb', backoff_base => '10 seconds', backoff_cap => '25 seconds', max_attempts => 4);
SELECT cardinality(tq_submit_many('rb', array_fill('{}'::jsonb, ARRAY[300])));

SELECT is(pg_temp.fail_all('rb'), 300, 'round 1: every task fails its first attempt');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'rb' AND state = 'scheduled'), 300,
    'round 1: every failed task is scheduled for a retry');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'rb'
            AND run_at - now() NOT BETWEEN interval '1 second' AND interval '10 seconds'), 0,
    'round 1: every retry waits within [base/10, base]');
SELECT ok((SELECT max(run_at - now()) FROM tq.task WHERE queue = 'rb') > interval '5 seconds',
    'round 1: retry times are spread over the window');
SELECT is((SELECT count(*)::int FROM tq_lease('w', ARRAY['rb'], 10000)), 0,
    'a task waiting out its backoff is not leased');

SELECT is(pg_temp.fail_all('rb'), 300, 'round 2: every task fails its second attempt');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'rb'
            AND run_at - now() NOT BETWEEN interval '1 second' AND interval '20 seconds'), 0,
    'round 2: every retry waits within [base/10, 2 * base]');
SELECT ok((SELECT max(run_at - now()) FROM tq.task WHERE queue = 'rb') > interval '10 seconds',
    'round 2: the window has doubled');

SELECT is(pg_temp.fail_all('rb'), 300, 'round 3: every task fails its third attempt');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'rb'
            AND run_at - now() NOT BETWEEN interval '1 second' AND interval '25 seconds'), 0,
    'round 3: the window is capped at backoff_cap');
SELECT ok((SELECT max(run_at - now()) FROM tq.task WHERE queue = 'rb') > interval '20 seconds',
    'round 3: retries use the capped window up to the cap');

-- max_attempts 4: the fourth failure is final.
SELECT is(pg_temp.fail_all('rb'), 300, 'round 4: every task fails its fourth attempt');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'rb'), 0, 'after max_attempts failures no task is left live');
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'rb' AND state = 'dead' AND attempt = 4 AND last_error = 'failed'), 300,
    'after max_attempts failures every task is dead with 4 attempts and its last error');
SELECT is((SELECT dead FROM tq_queue_stats_exact WHERE queue = 'rb'), 300::bigint, 'tq_queue_stats_exact counts dead tasks');

-- A per-task max_attempts overrides the queue's.
SELECT tq_submit('rb', '{}', max_attempts => 1) AS one \gset
SELECT is(pg_temp.fail_all('rb'), 1, 'a task with max_attempts 1 fails once');
SELECT is((SELECT state FROM tq_task(:one)), 'dead', 'a task''s own max_attempts overrides the queue''s');

-- retry => 'never': dead at once, whatever the attempts left.
SELECT tq_submit('rb', '{}') AS never \gset
SELECT is(pg_temp.fail_all('rb', 'never'), 1, 'tq_fail with retry never');
SELECT results_eq(format('SELECT state, attempts FROM tq_task(%s)', :never), $$VALUES ('dead', 1)$$,
    'retry => never makes the task dead after one attempt');

------------------------------------------------------------------------------
-- Throttled failures: do not use up attempts, bounded by throttle_limit.
------------------------------------------------------------------------------
SELECT tq_create_queue('th', max_attempts => 2, throttle_limit => 3, backoff_base => '1 second', backoff_cap => '1 minute');
SELECT tq_submit('th', '{}') AS thr \gset
SELECT pg_temp.fail_all('th', 'throttled');
SELECT results_eq(format('SELECT state::text, attempt, throttles, free_attempts FROM tq.task WHERE id = %s', :thr),
    $$VALUES ('scheduled', 1, 1, 1)$$, 'a throttled failure is retried and its attempt is free');
SELECT ok((SELECT run_at - now() BETWEEN interval '0.1 second' AND interval '1 second' FROM tq.task WHERE id = :thr),
    'the first throttle backs off within [base/10, base]');
SELECT pg_temp.fail_all('th', 'throttled');
SELECT pg_temp.fail_all('th', 'throttled');
SELECT results_eq(format('SELECT state::text, attempt, throttles, free_attempts FROM tq.task WHERE id = %s', :thr),
    $$VALUES ('scheduled', 3, 3, 3)$$, 'three throttled failures (with max_attempts 2) leave the task alive and unpenalised');
SELECT ok((SELECT run_at - now() BETWEEN interval '0.1 second' AND interval '4 seconds' FROM tq.task WHERE id = :thr),
    'throttle backoff grows with the number of throttles (third: within 4 * base)');
SELECT pg_temp.fail_all('th', 'throttled');
SELECT results_eq(format('SELECT state::text, attempt, throttles, free_attempts FROM tq.task WHERE id = %s', :thr),
    $$VALUES ('scheduled', 4, 3, 3)$$, 'past throttle_limit a throttled failure counts as an attempt');
SELECT pg_temp.fail_all('th', 'throttled');
SELECT results_eq(format('SELECT state, attempts FROM tq_task(%s)', :thr), $$VALUES ('dead', 5)$$,
    'throttling is bounded: max_attempts + throttle_limit leases, then dead');

SELECT tq_submit('th', '{}', max_attempts => 1) AS thr1 \gset
SELECT pg_temp.fail_all('th', 'throttled');
SELECT is((SELECT state::text FROM tq.task WHERE id = :thr1), 'scheduled',
    'a throttled failure on the last attempt does not make the task dead');
SELECT tq_alter_queue('th', throttle_limit => 0);
SELECT tq_submit('th', '{}', max_attempts => 1) AS thr0 \gset
SELECT pg_temp.fail_all('th', 'throttled');
SELECT is((SELECT state FROM tq_task(:thr0)), 'dead', 'with throttle_limit 0 a throttled failure counts like any other');

------------------------------------------------------------------------------
-- retry_after: the caller's delay instead of the backoff.
------------------------------------------------------------------------------
SELECT tq_create_queue('ra', backoff_cap => '1 minute', max_attempts => 3);
SELECT tq_submit('ra', '{}') AS ra \gset
SELECT is((SELECT tq_fail(l.id, l.attempt, 'rate limited', retry_after => '90 seconds') FROM tq_lease('w', ARRAY['ra']) l), true,
    'tq_fail with retry_after');
SELECT is((SELECT run_at FROM tq.task WHERE id = :ra), now() + interval '90 seconds', 'retry_after sets the retry time exactly');
UPDATE tq.task SET run_at = now() - interval '1 second' WHERE id = :ra;
SELECT is((SELECT tq_fail(l.id, l.attempt, 'later', retry_after => '2 days') FROM tq_lease('w', ARRAY['ra']) l), true,
    'tq_fail with a retry_after beyond the backoff cap');
SELECT is((SELECT run_at FROM tq.task WHERE id = :ra), now() + interval '2 days', 'retry_after is honoured beyond backoff_cap');
UPDATE tq.task SET run_at = now() - interval '1 second' WHERE id = :ra;
SELECT is((SELECT tq_fail(l.id, l.attempt, 'last', retry_after => '1 minute') FROM tq_lease('w', ARRAY['ra']) l), true,
    'tq_fail with retry_after on the last attempt');
SELECT is((SELECT state FROM tq_task(:ra)), 'dead', 'retry_after does not grant an attempt beyond max_attempts');

SELECT tq_submit('ra', '{}') AS ra2 \gset
SELECT tq_fail(l.id, l.attempt, 'throttled', 'throttled', '3 minutes') FROM tq_lease('w', ARRAY['ra']) l;
SELECT results_eq(format('SELECT run_at, throttles FROM tq.task WHERE id = %s', :ra2),
    $$VALUES (now() + interval '3 minutes', 1)$$, 'retry_after also sets the time of a throttled retry');
UPDATE tq.task SET run_at = now() - interval '1 second' WHERE id = :ra2;
SELECT tq_fail(l.id, l.attempt, 'now', retry_after => '0') FROM tq_lease('w', ARRAY['ra']) l;
SELECT is((SELECT attempt FROM tq_lease('w', ARRAY['ra'])), 3, 'retry_after 0 makes the task leasable again at once');

------------------------------------------------------------------------------
-- tq_retry
------------------------------------------------------------------------------
SELECT tq_create_queue('rt', max_attempts => 2);
SELECT tq_submit('rt', '{"r": 1}') AS rt \gset
SELECT pg_temp.fail_all('rt');
SELECT pg_temp.fail_all('rt');
SELECT is((SELECT state FROM tq_task(:rt)), 'dead', 'the task is dead after two failures');
SELECT is(tq_retry(:rt), true, 'tq_retry of a dead task returns true');
SELECT results_eq(format('SELECT state::text, attempt, run_at, payload FROM tq.task WHERE id = %s', :rt),
    $$VALUES ('ready', 2, now(), '{"r": 1}'::jsonb)$$,
    'a retried dead task is ready now with its payload and its attempt count kept (fencing stays monotonic)');
SELECT is((SELECT count(*)::int FROM tq.history WHERE id = :rt), 0, 'a retried task leaves history');
SELECT is((SELECT attempt FROM tq_lease('w', ARRAY['rt'])), 3, 'the retried task is leased as attempt 3');
SELECT tq_fail(:rt, 3, 'once more');
SELECT is((SELECT state::text FROM tq.task WHERE id = :rt), 'scheduled',
    'a retried task has a fresh attempt budget: one failure does not make it dead');

SELECT is(tq_retry(:rt), true, 'tq_retry of a scheduled task returns true');
SELECT results_eq(format('SELECT state::text, run_at FROM tq.task WHERE id = %s', :rt),
    $$VALUES ('ready', now())$$, 'tq_retry makes a scheduled task ready at once');

SELECT tq_submit('rt', '{}') AS rt_c \gset
SELECT tq_cancel(:rt_c::bigint);
SELECT is(tq_retry(:rt_c), true, 'tq_retry of a cancelled task returns true');
SELECT is((SELECT state::text FROM tq.task WHERE id = :rt_c), 'ready', 'a retried cancelled task is ready');

SELECT tq_submit('rt', '{}', expires_at => now() + interval '1 hour') AS rt_x \gset
UPDATE tq.task SET expires_at = now() - interval '1 second' WHERE id = :rt_x;
SELECT count(*) FROM tq_maintain();
SELECT is((SELECT state FROM tq_task(:rt_x)), 'expired', 'the task expired');
SELECT is(tq_retry(:rt_x), true, 'tq_retry of an expired task returns true');
SELECT results_eq(format('SELECT state::text, expires_at FROM tq.task WHERE id = %s', :rt_x),
    $$VALUES ('ready', NULL::timestamptz)$$, 'a retried expired task is ready and no longer expires');

SELECT tq_pause('rt');
SELECT tq_submit('rt', '{}') AS rt_p \gset
SELECT tq_cancel(:rt_p::bigint);
SELECT tq_retry(:rt_p);
SELECT is((SELECT state::text FROM tq.task WHERE id = :rt_p), 'paused', 'a task retried into a paused queue is paused');
SELECT tq_resume('rt');

-- Dedup: the key of a dead task is free; once taken, the dead task cannot come back.
SELECT tq_submit('rt', '{"v": 1}', dedup_key => 'job-1', max_attempts => 1) AS k_old \gset
SELECT tq_fail(l.id, l.attempt, 'x', 'never') FROM tq_lease('w', ARRAY['rt'], 100) l WHERE l.id = :k_old;
SELECT tq_submit('rt', '{"v": 2}', dedup_key => 'job-1') AS k_new \gset
SELECT isnt(:k_new::bigint, :k_old::bigint, 'a new task takes the key of a dead task');
SELECT throws_ok(format('SELECT tq_retry(%s)', :k_old), '23505',
    format('task %s cannot be retried: its dedup_key "job-1" is taken by task %s', :k_old, :k_new),
    'tq_retry of a dead task whose dedup_key is taken fails with 23505 and names the holder');
SELECT is((SELECT state FROM tq_task(:k_old)), 'dead', 'the refused task stays dead');

SELECT tq_submit('rt', '{"v": 3}', dedup_key => 'job-2', max_attempts => 1) AS k_free \gset
SELECT tq_fail(l.id, l.attempt, 'x', 'never') FROM tq_lease('w', ARRAY['rt'], 100) l WHERE l.id = :k_free;
SELECT is(tq_retry(:k_free), true, 'tq_retry of a dead task whose key is free returns true');
SELECT is(tq_submit('rt', '{"v": 4}', dedup_key => 'job-2'), :k_free::bigint,
    'a retried task holds its dedup_key again');

-- Wrong states.
SELECT tq_submit('rt', '{}') AS rt_ready \gset
SELECT throws_ok(format('SELECT tq_retry(%s)', :rt_ready), '55000', NULL, 'tq_retry of a ready task fails (55000)');

------------------------------------------------------------------------------
-- tq_retry_dead
------------------------------------------------------------------------------
SELECT tq_create_queue('rd', max_attempts => 1);
SELECT tq_create_queue('rd_other', max_attempts => 1);
SELECT tq_submit('rd', '{}', tenant => 't1');
SELECT tq_submit('rd', '{}', tenant => 't1');
SELECT tq_submit('rd', '{}', tenant => 't2');
SELECT tq_submit('rd', '{}', dedup_key => 'same');
SELECT tq_submit('rd_other', '{}', tenant => 't1');
SELECT pg_temp.fail_all('rd', 'never');
SELECT tq_submit('rd', '{}', dedup_key => 'same');                       -- dead -> key free again
SELECT pg_temp.fail_all('rd', 'never');
SELECT pg_temp.fail_all('rd_other', 'never');
SELECT tq_submit('rd', '{}', tenant => 't1') AS rd_c \gset
SELECT tq_cancel(:rd_c::bigint);

SELECT is(tq_retry_dead('rd', tenant => 't1'), 2::bigint, 'tq_retry_dead with a tenant brings back that tenant''s dead tasks');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'rd' AND tenant = 't1' AND state = 'ready'), 2,
    'the tenant''s dead tasks are ready again');
SELECT is(tq_retry_dead('rd', tenant => 'nobody'), 0::bigint, 'tq_retry_dead of a tenant without dead tasks returns 0');
SELECT is(tq_retry_dead('rd'), 2::bigint,
    'tq_retry_dead brings back the other dead tasks, one per dedup_key');
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'rd' AND state = 'dead' AND dedup_key = 'same'), 1,
    'of two dead tasks with one dedup_key, one stays dead');
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'rd' AND state = 'cancelled'), 1,
    'tq_retry_dead leaves cancelled tasks alone');
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'rd_other' AND state = 'dead'), 1,
    'tq_retry_dead leaves other queues alone');

SELECT * FROM finish();
ROLLBACK;
