-- History and retention: finished tasks move to tq.history (partitioned by
-- queue, then by finish time); tq_task finds them there; retention drops
-- whole partitions; rows that arrive where no partition exists land in the
-- queue's default partition and move into the partition once it is made.
-- Time passes by writing old finished_at values and partition bounds.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(31);

SELECT tq_create_queue('h1', max_attempts => 1);
SELECT id AS h1_id FROM tq.queue WHERE name = 'h1' \gset

-- One task finishing in each final state.
SELECT tq_submit('h1', '{"s": "ok"}', tenant => 'acme', priority => 3) AS h_ok \gset
SELECT tq_complete(l.id, l.attempt, '{"done": 1}') FROM tq_lease('worker-h', ARRAY['h1'], 1) l;
SELECT tq_submit('h1', '{"s": "dead"}') AS h_dead \gset
SELECT tq_fail(l.id, l.attempt, 'kaputt') FROM tq_lease('worker-h', ARRAY['h1'], 1) l;
SELECT tq_submit('h1', '{"s": "cancelled"}') AS h_canc \gset
SELECT tq_cancel(:h_canc::bigint);
SELECT tq_submit('h1', '{"s": "expired"}', expires_at => now() + interval '1 minute') AS h_exp \gset
UPDATE tq.task SET expires_at = now() - interval '1 second' WHERE id = :h_exp;
SELECT count(*) FROM tq_maintain();

SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'h1'), 0, 'finished tasks are no longer in the hot table');
SELECT results_eq('SELECT id, state::text FROM tq.history WHERE queue = ''h1'' ORDER BY id',
    format($$VALUES (%s::bigint, 'succeeded'), (%s::bigint, 'dead'), (%s::bigint, 'cancelled'), (%s::bigint, 'expired')$$,
           :h_ok, :h_dead, :h_canc, :h_exp),
    'every finished task is in tq.history in its final state');
SELECT is((SELECT count(*)::int FROM tq.history h
            WHERE h.queue = 'h1' AND h.tableoid NOT IN (SELECT format('tq.%I', relname)::regclass FROM tq.history_part WHERE queue = 'h1')), 0,
    'finished tasks land in the time-range partitions, not the default partition');
SELECT results_eq(format($$SELECT tenant, priority::int, payload, result, attempt, worker, submitted_at, first_started_at, finished_at
                            FROM tq.history WHERE id = %s$$, :h_ok),
    $$VALUES ('acme', 3, '{"s": "ok"}'::jsonb, '{"done": 1}'::jsonb, 1, 'worker-h', now(), now(), now())$$,
    'the history row keeps the task''s tenant, priority, payload, result, attempt, worker and timestamps');
SELECT results_eq(format('SELECT id, queue, state, attempts, result, last_error FROM tq_task(%s)', :h_ok),
    format($$VALUES (%s::bigint, 'h1', 'succeeded', 1, '{"done": 1}'::jsonb, NULL::text)$$, :h_ok),
    'tq_task finds a succeeded task in history');
SELECT results_eq(format('SELECT state, last_error, lease_until, cancel_requested FROM tq_task(%s)', :h_dead),
    $$VALUES ('dead', 'kaputt', NULL::timestamptz, false)$$,
    'tq_task finds a dead task in history with its last error');
SELECT results_eq(
    $$SELECT succeeded, dead, cancelled, expired, scheduled, ready, paused, running FROM tq_queue_stats_exact WHERE queue = 'h1'$$,
    $$VALUES (1::bigint, 1::bigint, 1::bigint, 1::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint)$$,
    'tq_queue_stats_exact counts the finished tasks in history');

-- A queue name with upper case, dots and dashes gets its history partitions too.
SELECT tq_create_queue('Billing.EU-1');
SELECT tq_submit('Billing.EU-1', '{}') AS odd \gset
SELECT tq_complete(l.id, l.attempt) FROM tq_lease('w', ARRAY['Billing.EU-1'], 1) l;
SELECT is((SELECT count(*)::int FROM tq.history h JOIN tq.history_part p ON h.tableoid = format('tq.%I', p.relname)::regclass
            WHERE h.id = :odd AND p.queue = 'Billing.EU-1'), 1,
    'a task of a queue named with upper case, dots and dashes lands in that queue''s partition');

------------------------------------------------------------------------------
-- Retention drops whole partitions.
------------------------------------------------------------------------------
SELECT tq_create_queue('r1', retention => '2 hours');
SELECT id AS r1_id FROM tq.queue WHERE name = 'r1' \gset
SELECT is((SELECT array_agg(DISTINCT hi - lo) FROM tq.history_part WHERE queue = 'r1'), ARRAY[interval '1 hour'],
    'a queue with 2 hours retention has one-hour partitions');

-- An old partition, as maintenance would have made it five hours ago.
SELECT date_trunc('hour', now(), 'UTC') - interval '5 hours' AS old_lo,
       date_trunc('hour', now(), 'UTC') - interval '4 hours' AS old_hi,
       format('history_q%s_old', :r1_id) AS old_part \gset
SELECT format('CREATE TABLE tq.%I PARTITION OF tq.%I FOR VALUES FROM (%L) TO (%L)',
              :'old_part', 'history_q' || :r1_id, :'old_lo', :'old_hi') AS ddl \gset
:ddl;
INSERT INTO tq.history_part (queue, relname, lo, hi) VALUES ('r1', :'old_part', :'old_lo', :'old_hi');

CREATE FUNCTION pg_temp.add_history(p_queue text, p_finished timestamptz, p_n integer DEFAULT 1)
    RETURNS SETOF bigint LANGUAGE sql AS $$
    INSERT INTO tq.history (id, queue, state, priority, payload, run_at, max_attempts, attempt, free_attempts,
                            throttles, submitted_at, finished_at)
    SELECT nextval('tq.task_id_seq'), p_queue, 'succeeded', 0, '{"old": true}', p_finished, 1, 1, 0, 0,
           p_finished, p_finished
    FROM generate_series(1, p_n)
    RETURNING id
$$;
SELECT min(x) AS old_id FROM pg_temp.add_history('r1', :'old_lo'::timestamptz + interval '10 minutes', 3) x \gset
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'r1' AND tableoid = format('tq.%I', :'old_part')::regclass), 3,
    'rows finished five hours ago land in the old partition');
SELECT min(x) AS def_id FROM pg_temp.add_history('r1', now() - interval '3 hours', 2) x \gset
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'r1' AND tableoid = format('tq.history_q%s_default', :r1_id)::regclass), 2,
    'rows finished before the oldest partition land in the default partition');
SELECT min(x) AS recent_id FROM pg_temp.add_history('r1', now() - interval '30 minutes', 1) x \gset
SELECT tq_submit('r1', '{"fresh": true}') AS r_fresh \gset
SELECT tq_complete(l.id, l.attempt) FROM tq_lease('w', ARRAY['r1'], 1) l;

SELECT results_eq($$SELECT action, n FROM tq_maintain() WHERE queue = 'r1' AND action = 'tasks past retention dropped'$$,
    $$VALUES ('tasks past retention dropped', 5::bigint)$$,
    'tq_maintain reports the tasks past retention that it dropped');
SELECT ok(to_regclass(format('tq.%I', :'old_part')) IS NULL, 'the partition past retention is dropped');
SELECT is((SELECT count(*)::int FROM tq.history_part WHERE queue = 'r1' AND relname = :'old_part'), 0,
    'the dropped partition is no longer recorded');
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'r1' AND id >= :old_id AND id < :recent_id), 0,
    'tasks past retention are gone, from the old partition and from the default partition');
SELECT is((SELECT count(*)::int FROM tq_task(:old_id)), 0, 'tq_task no longer finds a task past retention');
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'r1' AND id IN (:recent_id, :r_fresh)), 2,
    'tasks within retention are kept');
SELECT is((SELECT count(*)::int FROM tq.history_part WHERE queue = 'r1' AND lo <= now() AND now() < hi), 1,
    'the current partition is kept');
SELECT is((SELECT count(*)::int FROM tq_maintain() WHERE queue = 'r1' AND action = 'tasks past retention dropped'), 0,
    'a second maintenance pass finds nothing more to drop');

-- Retention is per queue: the same age is kept in a queue with longer retention.
SELECT tq_create_queue('r_long', retention => '30 days');
SELECT min(x) AS long_id FROM pg_temp.add_history('r_long', now() - interval '3 days', 1) x \gset
SELECT count(*) FROM tq_maintain();
SELECT is((SELECT count(*)::int FROM tq.history WHERE id = :long_id), 1,
    'a task three days old is kept in a queue with 30 days retention');

-- Changing retention applies at the next pass.
SELECT tq_alter_queue('r_long', retention => '1 day');
SELECT count(*) FROM tq_maintain();
SELECT is((SELECT count(*)::int FROM tq.history WHERE id = :long_id), 0,
    'after tq_alter_queue shortens retention to a day, maintenance drops the three-day-old task');

------------------------------------------------------------------------------
-- A row without a partition: the default partition, then moved in.
------------------------------------------------------------------------------
SELECT tq_create_queue('m1', retention => '1 day');
SELECT id AS m1_id FROM tq.queue WHERE name = 'm1' \gset
SELECT relname AS last_part, lo AS last_lo, hi AS last_hi
  FROM tq.history_part WHERE queue = 'm1' ORDER BY lo DESC LIMIT 1 \gset
-- As if maintenance had not yet made the newest partition.
SELECT format('DROP TABLE tq.%I', :'last_part') AS ddl \gset
:ddl;
DELETE FROM tq.history_part WHERE queue = 'm1' AND relname = :'last_part';
SELECT min(x) AS stray_id FROM pg_temp.add_history('m1', :'last_lo'::timestamptz + interval '1 minute', 2) x \gset
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'm1' AND tableoid = format('tq.history_q%s_default', :m1_id)::regclass), 2,
    'rows finished in a period without a partition land in the default partition');
SELECT is((SELECT count(*)::int FROM tq_task(:stray_id)), 1, 'tq_task finds a task in the default partition');

SELECT results_eq($$SELECT n FROM tq_maintain() WHERE queue = 'm1' AND action = 'partitions created'$$,
    ARRAY[1::bigint], 'tq_maintain creates the missing partition');
SELECT results_eq(format($$SELECT relname::text COLLATE "default", lo, hi FROM tq.history_part WHERE queue = 'm1' AND lo = %L$$, :'last_lo'),
    format($$VALUES (%L, %L::timestamptz, %L::timestamptz)$$, :'last_part', :'last_lo', :'last_hi'),
    'the new partition is recorded with its bounds');
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'm1' AND tableoid = format('tq.%I', :'last_part')::regclass), 2,
    'the rows from the default partition moved into the new partition');
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'm1' AND tableoid = format('tq.history_q%s_default', :m1_id)::regclass), 0,
    'the default partition is empty again');
SELECT is((SELECT count(*)::int FROM tq_task(:stray_id)), 1, 'tq_task finds the moved task');

-- A maintenance pass that fails must not stop dispatch: tq_lease still
-- leases, the pass is rescheduled, and the error becomes a warning.
SELECT tq_create_queue('mfail');
SELECT tq_submit('mfail', '{}') AS mfail_task \gset
INSERT INTO tq.history_part (queue, relname, lo, hi)
VALUES ('mfail', 'no_such_partition', now() - interval '30 days', now() - interval '29 days');
UPDATE tq.meta SET next_maintenance = '-infinity';
SET LOCAL client_min_messages = error;
SELECT is((SELECT array_agg(id) FROM tq_lease('w-mfail', ARRAY['mfail'], 5)), ARRAY[:mfail_task]::bigint[],
    'tq_lease leases even when the maintenance pass it runs fails');
RESET client_min_messages;
SELECT ok((SELECT next_maintenance > now() FROM tq.meta), 'a failed maintenance pass is rescheduled, not retried by every lease');
SELECT throws_ok($$SELECT * FROM tq_maintain()$$, '42P01', NULL, 'tq_maintain called directly reports the error in full');
DELETE FROM tq.history_part WHERE relname = 'no_such_partition';

SELECT * FROM finish();
ROLLBACK;
