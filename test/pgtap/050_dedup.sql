-- Deduplication keys: unique per queue among live tasks and, for the
-- queue's dedup_window, succeeded ones.  Time passes by moving
-- tq.dedup.until into the past, never by sleeping.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(36);

SELECT tq_create_queue('d1', dedup_window => '1 hour', max_attempts => 1);
SELECT tq_create_queue('d2');

-- A live key: the duplicate returns the holder's id and inserts nothing.
SELECT tq_submit('d1', '{"v": 1}', dedup_key => 'order-1') AS t1 \gset
SELECT is(tq_submit('d1', '{"v": 2}', dedup_key => 'order-1'), :t1::bigint,
    'a duplicate of a ready task returns the existing task''s id');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'd1'), 1, 'a duplicate submit inserts nothing');
SELECT is((SELECT payload FROM tq.task WHERE id = :t1), '{"v": 1}'::jsonb, 'a duplicate submit does not change the existing task');
SELECT results_eq($$SELECT task_id, until FROM tq.dedup WHERE queue = 'd1' AND dedup_key = 'order-1'$$,
    format($$VALUES (%s::bigint, 'infinity'::timestamptz)$$, :t1),
    'a live task holds its key with no end');

SELECT is(tq_submit('d2', '{}', dedup_key => 'order-1') <> :t1::bigint, true,
    'keys are per queue: the same key in another queue is a new task');
SELECT is(tq_submit('d1', '{}', dedup_key => 'Order-1') <> :t1::bigint, true, 'keys are case-sensitive');

-- Scheduled and running tasks hold their key too.
SELECT tq_submit('d1', '{}', dedup_key => 'later', run_at => now() + interval '1 day') AS t_later \gset
SELECT is(tq_submit('d1', '{}', dedup_key => 'later'), :t_later::bigint, 'a duplicate of a scheduled task returns its id');
SELECT tq_pause('d1');
SELECT tq_submit('d1', '{}', dedup_key => 'held') AS t_held \gset
SELECT is(tq_submit('d1', '{}', dedup_key => 'held'), :t_held::bigint, 'a duplicate of a paused task returns its id');
SELECT tq_resume('d1');

SELECT count(*) FROM tq_lease('w', ARRAY['d1'], 1);     -- leases t1 (the oldest)
SELECT is((SELECT state::text FROM tq.task WHERE id = :t1), 'running', 't1 is running');
SELECT is(tq_submit('d1', '{}', dedup_key => 'order-1'), :t1::bigint, 'a duplicate of a running task returns its id');

-- Success: the key stays taken for the dedup window, after the move to history.
SELECT tq_complete(:t1, 1);
SELECT results_eq($$SELECT task_id, until FROM tq.dedup WHERE queue = 'd1' AND dedup_key = 'order-1'$$,
    format($$VALUES (%s::bigint, now() + interval '1 hour')$$, :t1),
    'a succeeded task keeps its key for the queue''s dedup_window');
SELECT is(tq_submit('d1', '{}', dedup_key => 'order-1'), :t1::bigint,
    'within the dedup window, a duplicate of a succeeded task returns its id');
SELECT is((SELECT count(*)::int FROM tq.task WHERE dedup_key = 'order-1' AND queue = 'd1'), 0,
    'within the dedup window, a duplicate of a succeeded task inserts nothing');

-- Past the window: the key is free (the window "passes" by moving until back).
UPDATE tq.dedup SET until = now() - interval '1 second' WHERE queue = 'd1' AND dedup_key = 'order-1';
SELECT tq_submit('d1', '{"again": true}', dedup_key => 'order-1') AS t1b \gset
SELECT isnt(:t1b::bigint, :t1::bigint, 'past the dedup window the key is free: a new task is created');
SELECT results_eq($$SELECT task_id, until FROM tq.dedup WHERE queue = 'd1' AND dedup_key = 'order-1'$$,
    format($$VALUES (%s::bigint, 'infinity'::timestamptz)$$, :t1b),
    'the new task holds the key');

-- tq_maintain forgets keys whose window has passed.
SELECT tq_submit('d1', '{}', dedup_key => 'old') AS t_old \gset
SELECT tq_cancel(:t_old::bigint);
INSERT INTO tq.dedup (queue, dedup_key, task_id, until) VALUES ('d1', 'stale', :t_old, now() - interval '1 minute');
SELECT is((SELECT n FROM tq_maintain() WHERE action = 'dedup keys forgotten'), 1::bigint,
    'tq_maintain forgets keys whose window has passed');
SELECT is((SELECT count(*)::int FROM tq.dedup WHERE dedup_key = 'stale'), 0, 'the forgotten key is gone');

-- Dead, cancelled and expired tasks free their key at once.
SELECT tq_submit('d1', '{}', dedup_key => 'dies') AS t_dies \gset
SELECT tq_fail(l.id, l.attempt, 'no', 'never') FROM tq_lease('w', ARRAY['d1'], 100) l WHERE l.id = :t_dies;
SELECT is((SELECT state FROM tq_task(:t_dies)), 'dead', 'the task died');
SELECT is((SELECT count(*)::int FROM tq.dedup WHERE queue = 'd1' AND dedup_key = 'dies'), 0, 'a dead task frees its key');
SELECT isnt(tq_submit('d1', '{}', dedup_key => 'dies'), :t_dies::bigint, 'the key of a dead task may be submitted again');

SELECT tq_submit('d1', '{}', dedup_key => 'cancelled') AS t_canc \gset
SELECT tq_cancel(:t_canc::bigint);
SELECT isnt(tq_submit('d1', '{}', dedup_key => 'cancelled'), :t_canc::bigint,
    'the key of a cancelled task may be submitted again');

SELECT tq_submit('d1', '{}', dedup_key => 'expires', expires_at => now() + interval '1 minute') AS t_exp \gset
UPDATE tq.task SET expires_at = now() - interval '1 second' WHERE id = :t_exp;
SELECT count(*) FROM tq_maintain();
SELECT is((SELECT state FROM tq_task(:t_exp)), 'expired', 'the task expired');
SELECT isnt(tq_submit('d1', '{}', dedup_key => 'expires'), :t_exp::bigint,
    'the key of an expired task may be submitted again');

-- A running task that is cancelled (via its worker) frees the key too.
SELECT tq_submit('d1', '{}', dedup_key => 'run-cancel') AS t_rc \gset
SELECT count(*) FROM tq_lease('w', ARRAY['d1'], 100);
SELECT tq_cancel(:t_rc::bigint);
SELECT is(tq_submit('d1', '{}', dedup_key => 'run-cancel'), :t_rc::bigint,
    'a running task asked to cancel still holds its key');
SELECT tq_fail(:t_rc, 1, 'stopped');
SELECT isnt(tq_submit('d1', '{}', dedup_key => 'run-cancel'), :t_rc::bigint,
    'once the worker has stopped it (cancelled), the key is free');

-- dedup_window 0: a succeeded task holds its key no longer than now.
SELECT tq_create_queue('d0', dedup_window => '0');
SELECT tq_submit('d0', '{}', dedup_key => 'k') AS t0 \gset
SELECT tq_complete(l.id, l.attempt) FROM tq_lease('w', ARRAY['d0']) l;
SELECT is((SELECT until FROM tq.dedup WHERE queue = 'd0' AND dedup_key = 'k'), now(),
    'with dedup_window 0 the key of a succeeded task is held until its finish time');
UPDATE tq.dedup SET until = until - interval '1 microsecond' WHERE queue = 'd0';
SELECT isnt(tq_submit('d0', '{}', dedup_key => 'k'), :t0::bigint,
    'with dedup_window 0 the key is free as soon as any time has passed');

-- tq_purge does not shorten the dedup window.
SELECT tq_submit('d2', '{}', dedup_key => 'purged') AS t_pur \gset
SELECT tq_complete(l.id, l.attempt) FROM tq_lease('w', ARRAY['d2'], 100) l WHERE l.id = :t_pur;
SELECT tq_purge('d2', 'succeeded');
SELECT is((SELECT count(*)::int FROM tq_task(:t_pur)), 0, 'the succeeded task was purged');
SELECT is(tq_submit('d2', '{}', dedup_key => 'purged'), :t_pur::bigint,
    'a purged succeeded task still holds its key for the dedup window');

-- tq_submit_many against held keys.
SELECT tq_submit('d2', '{}', dedup_key => 'm1') AS m1 \gset
SELECT tq_submit_many('d2', ARRAY['{}', '{}', '{}']::jsonb[], dedup_keys => ARRAY['m1', 'm2', 'm1']) AS many \gset
SELECT is((:'many'::bigint[])[1], :m1::bigint, 'tq_submit_many returns the holder''s id for a held key');
SELECT is((:'many'::bigint[])[3], :m1::bigint, 'tq_submit_many returns the holder''s id for every payload with a held key');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'd2' AND dedup_key IN ('m1', 'm2')), 2,
    'tq_submit_many inserts only the payload with a free key');

-- A duplicate submit inserts nothing, so a full queue (backlog_limit) does
-- not refuse it: a producer retrying an idempotent submit gets the id of the
-- task it already submitted, not "queue is full".
SELECT tq_create_queue('dfull', backlog_limit => 1);
SELECT tq_submit('dfull', '{}', dedup_key => 'once') AS t_full \gset
CREATE FUNCTION pg_temp.try_ids(p_sql text) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    r bigint[];
BEGIN
    EXECUTE p_sql INTO r;
    RETURN r;
EXCEPTION WHEN OTHERS THEN
    RETURN ARRAY[NULL::bigint];   -- the call failed
END
$$;
SELECT lives_ok($$SELECT tq_submit('dfull', '{}', dedup_key => 'once')$$,
    'a duplicate submit to a queue at its backlog_limit is not refused (it inserts nothing)');
SELECT is(pg_temp.try_ids($$SELECT ARRAY[tq_submit('dfull', '{}', dedup_key => 'once')]$$), ARRAY[:t_full::bigint],
    'a duplicate submit to a queue at its backlog_limit returns the existing task''s id');
SELECT is(pg_temp.try_ids($$SELECT tq_submit_many('dfull', ARRAY['{}']::jsonb[], dedup_keys => ARRAY['once'])$$),
    ARRAY[:t_full::bigint],
    'a tq_submit_many of only duplicates to a queue at its backlog_limit returns the existing id');
SELECT throws_ok($$SELECT tq_submit('dfull', '{}', dedup_key => 'new-key')$$, '53400', NULL,
    'a submit with a new key to a full queue is refused (53400)');

SELECT * FROM finish();
ROLLBACK;
