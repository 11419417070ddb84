-- Queues: tq_create_queue, tq_alter_queue, tq_drop_queue, the tq_queues view
-- and the history partitions a queue gets.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(55);

-- The API exists with the documented signatures.
SELECT has_function('public', 'tq_create_queue',
    ARRAY['text', 'integer', 'interval', 'interval', 'interval', 'interval', 'interval', 'bigint', 'interval', 'integer', 'boolean',
          'double precision', 'double precision', 'integer', 'double precision'],
    'tq_create_queue(name, max_attempts, lease, backoff_base, backoff_cap, dedup_window, retention, backlog_limit, timeout, throttle_limit, if_not_exists, rate_per_sec, burst, concurrency, priority_aging) exists');
SELECT has_function('public', 'tq_alter_queue',
    ARRAY['text', 'integer', 'interval', 'interval', 'interval', 'interval', 'interval', 'bigint', 'interval', 'integer',
          'double precision', 'double precision', 'integer', 'double precision'],
    'tq_alter_queue(name, options..., rate_per_sec, burst, concurrency, priority_aging) exists');
SELECT has_function('public', 'tq_drop_queue', ARRAY['text', 'boolean'], 'tq_drop_queue(name, force) exists');
SELECT has_view('public', 'tq_queues', 'view tq_queues exists');
SELECT has_view('public', 'tq_queue_stats', 'view tq_queue_stats exists');
SELECT has_view('public', 'tq_queue_stats_exact', 'view tq_queue_stats_exact exists');
SELECT has_schema('tq', 'internal schema tq exists');
SELECT has_table('tq', 'task', 'hot table tq.task exists');
SELECT has_table('tq', 'history', 'history table tq.history exists');

-- Create with defaults.
SELECT is(tq_create_queue('q_defaults'), true, 'tq_create_queue returns true for a new queue');
SELECT results_eq(
    $$SELECT paused, max_attempts, lease, backoff_base, backoff_cap, throttle_limit, dedup_window,
             retention, backlog_limit, timeout, paused_tenants, rate_per_sec, burst, concurrency, priority_aging
        FROM tq_queues WHERE queue = 'q_defaults'$$,
    $$VALUES (false, 25, interval '1 minute', interval '1 second', interval '1 hour', 20, interval '1 day',
              interval '7 days', NULL::bigint, NULL::interval, '{}'::text[],
              NULL::float8, NULL::float8, NULL::int, 1000000::float8)$$,
    'a queue created without options has the documented defaults');
SELECT is((SELECT created_at FROM tq_queues WHERE queue = 'q_defaults'), now(),
    'tq_queues.created_at is the creating transaction''s time');

-- Create with every option, by name.
SELECT is(tq_create_queue(name => 'q_opts', max_attempts => 7, lease => '30 seconds', backoff_base => '2 seconds',
                          backoff_cap => '10 minutes', dedup_window => '2 hours', retention => '3 hours',
                          backlog_limit => 1000, timeout => '5 minutes', throttle_limit => 4,
                          rate_per_sec => 50, burst => 10, concurrency => 8, priority_aging => 100),
          true, 'tq_create_queue accepts every option as a named argument');
SELECT results_eq(
    $$SELECT max_attempts, lease, backoff_base, backoff_cap, throttle_limit, dedup_window,
             retention, backlog_limit, timeout, rate_per_sec, burst, concurrency, priority_aging
        FROM tq_queues WHERE queue = 'q_opts'$$,
    $$VALUES (7, interval '30 seconds', interval '2 seconds', interval '10 minutes', 4, interval '2 hours',
              interval '3 hours', 1000::bigint, interval '5 minutes', 50::float8, 10::float8, 8, 100::float8)$$,
    'tq_queues shows the options given to tq_create_queue');

-- if_not_exists: false, and the existing options are kept.
SELECT is(tq_create_queue('q_opts', max_attempts => 99, if_not_exists => true), false,
    'tq_create_queue(if_not_exists => true) returns false for an existing queue');
SELECT is((SELECT max_attempts FROM tq_queues WHERE queue = 'q_opts'), 7,
    'if_not_exists leaves the existing queue''s options unchanged');
SELECT throws_ok($$SELECT tq_create_queue('q_opts')$$, '42710', NULL,
    'creating an existing queue without if_not_exists is an error (42710)');

-- Valid names of every allowed shape.
SELECT lives_ok($$SELECT tq_create_queue('Mixed.Case-name_1')$$,
    'a name with letters, digits, _, - and . is accepted');
SELECT lives_ok(format('SELECT tq_create_queue(%L)', 'a' || repeat('b', 62)),
    'a 63-byte queue name is accepted');
SELECT is((SELECT count(*)::int FROM tq_queues WHERE queue = 'Mixed.Case-name_1'), 1,
    'queue names are case-sensitive and stored as given');

-- History partitions: a LIST partition per queue, RANGE partitions by finish time.
SELECT ok(to_regclass(format('tq.history_q%s', (SELECT id FROM tq.queue WHERE name = 'q_defaults'))) IS NOT NULL,
    'tq_create_queue creates the queue''s history partition');
SELECT ok(to_regclass(format('tq.history_q%s_default', (SELECT id FROM tq.queue WHERE name = 'q_defaults'))) IS NOT NULL,
    'tq_create_queue creates the queue''s default history partition');
SELECT ok(EXISTS (SELECT 1 FROM tq.history_part WHERE queue = 'q_defaults' AND lo <= now() AND now() < hi),
    'a history partition covers the current time');
SELECT ok((SELECT max(hi) FROM tq.history_part WHERE queue = 'q_defaults') >= now() + interval '2 days',
    'history partitions reach two periods ahead');
SELECT is((SELECT count(*)::int FROM (
              SELECT hi, lead(lo) OVER (ORDER BY lo) AS next_lo FROM tq.history_part WHERE queue = 'q_defaults') s
           WHERE next_lo IS NOT NULL AND next_lo <> hi), 0,
    'history partitions are contiguous');
SELECT is((SELECT array_agg(DISTINCT hi - lo) FROM tq.history_part WHERE queue = 'q_defaults'), ARRAY[interval '1 day'],
    'a queue with 7 days retention gets one-day partitions');
SELECT is((SELECT array_agg(DISTINCT hi - lo) FROM tq.history_part WHERE queue = 'q_opts'), ARRAY[interval '1 hour'],
    'a queue with retention of at most a day gets one-hour partitions');
SELECT is((SELECT count(*)::int FROM tq.history_part p
            WHERE p.queue = 'q_defaults' AND to_regclass(format('tq.%I', p.relname)) IS NULL), 0,
    'every partition recorded in tq.history_part exists');

-- tq_queue_stats (live, shared memory) and tq_queue_stats_exact (tables) for an empty queue.
SELECT results_eq(
    $$SELECT queue_paused, scheduled, ready, paused, running, next_ready_wait, leased, tokens
        FROM tq_queue_stats WHERE queue = 'q_defaults'$$,
    $$VALUES (false, 0::bigint, 0::bigint, 0::bigint, 0::bigint, NULL::interval, 0::bigint, NULL::float8)$$,
    'tq_queue_stats shows an empty queue with zero counts, no next ready task and no rate bucket');
SELECT results_eq(
    $$SELECT queue_paused, scheduled, ready, paused, running, succeeded, dead, cancelled, expired, oldest_ready_age
        FROM tq_queue_stats_exact WHERE queue = 'q_defaults'$$,
    $$VALUES (false, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, NULL::interval)$$,
    'tq_queue_stats_exact shows an empty queue with zero counts and no oldest ready age');

-- tq_alter_queue: NULL leaves an option as it is.
SELECT lives_ok($$SELECT tq_alter_queue('q_opts', max_attempts => 3, lease => '2 minutes')$$,
    'tq_alter_queue changes options');
SELECT results_eq(
    $$SELECT max_attempts, lease, backoff_base, backoff_cap, throttle_limit, dedup_window, retention, backlog_limit, timeout
        FROM tq_queues WHERE queue = 'q_opts'$$,
    $$VALUES (3, interval '2 minutes', interval '2 seconds', interval '10 minutes', 4, interval '2 hours',
              interval '3 hours', 1000::bigint, interval '5 minutes')$$,
    'tq_alter_queue changes the given options and leaves the NULL ones');
SELECT lives_ok($$SELECT tq_alter_queue('q_opts', backoff_base => '1 second', backoff_cap => '1 minute',
                                        dedup_window => '0', retention => '1 day', throttle_limit => 0)$$,
    'tq_alter_queue accepts the remaining options, including zero dedup_window and throttle_limit');
SELECT results_eq(
    $$SELECT backoff_base, backoff_cap, dedup_window, retention, throttle_limit FROM tq_queues WHERE queue = 'q_opts'$$,
    $$VALUES (interval '1 second', interval '1 minute', interval '0', interval '1 day', 0)$$,
    'tq_alter_queue stored backoff, dedup_window, retention and throttle_limit');
SELECT lives_ok($$SELECT tq_alter_queue('q_opts', backlog_limit => 0, timeout => '0')$$,
    'tq_alter_queue accepts 0 for backlog_limit and timeout');
SELECT results_eq(
    $$SELECT backlog_limit, timeout FROM tq_queues WHERE queue = 'q_opts'$$,
    $$VALUES (NULL::bigint, NULL::interval)$$,
    'backlog_limit => 0 and timeout => 0 clear the limit and the timeout');
SELECT lives_ok($$SELECT tq_alter_queue('q_opts', rate_per_sec => 0, concurrency => 0, priority_aging => 7)$$,
    'tq_alter_queue accepts 0 for rate_per_sec and concurrency');
SELECT results_eq(
    $$SELECT rate_per_sec, burst, concurrency, priority_aging FROM tq_queues WHERE queue = 'q_opts'$$,
    $$VALUES (NULL::float8, NULL::float8, NULL::int, 7::float8)$$,
    'rate_per_sec => 0 and concurrency => 0 clear the rate limit (and its burst) and the quota; priority_aging is changed');
SELECT throws_ok($$SELECT tq_alter_queue('q_opts', backoff_base => '2 minutes')$$, '22023', NULL,
    'tq_alter_queue refuses a backoff_base above the existing backoff_cap');
SELECT is((SELECT backoff_base FROM tq_queues WHERE queue = 'q_opts'), interval '1 second',
    'a refused tq_alter_queue changes nothing');
SELECT throws_ok($$SELECT tq_alter_queue('no_such_queue', max_attempts => 3)$$, '42704', NULL,
    'tq_alter_queue of an unknown queue is an error (42704)');

-- Existing tasks keep their own max_attempts.
SELECT tq_submit('q_opts', '{}') AS t_before_alter \gset
SELECT tq_alter_queue('q_opts', max_attempts => 9);
SELECT is((SELECT max_attempts FROM tq.task WHERE id = :t_before_alter), 3,
    'tq_alter_queue does not change the max_attempts of existing tasks');
SELECT tq_submit('q_opts', '{}') AS t_after_alter \gset
SELECT is((SELECT max_attempts FROM tq.task WHERE id = :t_after_alter), 9,
    'tasks submitted after tq_alter_queue get the new max_attempts');

-- tq_drop_queue.
SELECT lives_ok($$SELECT tq_drop_queue('Mixed.Case-name_1')$$, 'tq_drop_queue drops an empty queue');
SELECT is((SELECT count(*)::int FROM tq_queues WHERE queue = 'Mixed.Case-name_1'), 0,
    'a dropped queue is gone from tq_queues');
SELECT is((SELECT count(*)::int FROM tq.history_part WHERE queue = 'Mixed.Case-name_1'), 0,
    'a dropped queue''s history partitions are forgotten');

SELECT tq_submit('q_defaults', '{"n": 1}', dedup_key => 'k1');
SELECT tq_pause('q_defaults', tenant => 't1');
SELECT throws_ok($$SELECT tq_drop_queue('q_defaults')$$, '55006', NULL,
    'tq_drop_queue refuses a queue with live tasks (55006)');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'q_defaults'), 1,
    'a refused tq_drop_queue keeps the live task');
SELECT lives_ok($$SELECT tq_drop_queue('q_defaults', force => true)$$,
    'tq_drop_queue(force => true) drops a queue with live tasks');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'q_defaults'), 0,
    'force => true deletes the queue''s live tasks');
SELECT is((SELECT count(*)::int FROM tq.dedup WHERE queue = 'q_defaults')
        + (SELECT count(*)::int FROM tq.tenant_pause WHERE queue = 'q_defaults'), 0,
    'tq_drop_queue forgets the queue''s dedup keys and tenant pauses');
SELECT throws_ok($$SELECT tq_submit('q_defaults', '{}')$$, '42704', NULL,
    'submitting to a dropped queue is an error (42704)');
SELECT throws_ok($$SELECT tq_drop_queue('q_defaults')$$, '42704', NULL,
    'dropping a dropped queue is an error (42704)');

-- A dropped name can be created again, fresh.
SELECT is(tq_create_queue('q_defaults'), true, 'a dropped queue name can be created again');
SELECT tq_submit('q_defaults', '{}', dedup_key => 'k1');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'q_defaults' AND dedup_key = 'k1'), 1,
    'the recreated queue does not remember the old queue''s dedup keys');

SELECT * FROM finish();
ROLLBACK;
