-- Submit: tq_submit and tq_submit_many, the state a new task starts in, and
-- what tq_task and tq_queue_stats show of it.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(44);

SELECT has_function('public', 'tq_submit',
    ARRAY['text', 'jsonb', 'timestamp with time zone', 'integer', 'text', 'text', 'integer', 'interval', 'timestamp with time zone', 'text'],
    'tq_submit(queue, payload, run_at, priority, tenant, dedup_key, max_attempts, timeout, expires_at, traceparent) exists');
SELECT has_function('public', 'tq_submit_many',
    ARRAY['text', 'jsonb[]', 'timestamp with time zone', 'integer', 'text', 'text[]', 'integer', 'interval', 'timestamp with time zone', 'text'],
    'tq_submit_many(queue, payloads, run_at, priority, tenant, dedup_keys, max_attempts, timeout, expires_at, traceparent) exists');
SELECT function_returns('public', 'tq_submit',
    ARRAY['text', 'jsonb', 'timestamp with time zone', 'integer', 'text', 'text', 'integer', 'interval', 'timestamp with time zone', 'text'],
    'bigint', 'tq_submit returns the task id (bigint)');
SELECT function_returns('public', 'tq_submit_many',
    ARRAY['text', 'jsonb[]', 'timestamp with time zone', 'integer', 'text', 'text[]', 'integer', 'interval', 'timestamp with time zone', 'text'],
    'bigint[]', 'tq_submit_many returns the task ids (bigint[])');

SELECT tq_create_queue('s1', max_attempts => 5);
SELECT tq_create_queue('s2', timeout => '1 minute');

-- A plain submit.
SELECT tq_submit('s1', '{"to": "a@example.com"}') AS t1 \gset
SELECT results_eq(
    format($$SELECT queue, state::text, priority::int, tenant, payload, dedup_key, run_at, expires_at, timeout,
                    max_attempts, attempt, worker, lease_until, submitted_at
               FROM tq.task WHERE id = %s$$, :t1),
    $$VALUES ('s1', 'ready', 0, NULL::text, '{"to": "a@example.com"}'::jsonb, NULL::text, now(), NULL::timestamptz,
              NULL::interval, 5, 0, NULL::text, NULL::timestamptz, now())$$,
    'tq_submit stores a ready task with the payload, the queue''s max_attempts and no attempt yet');
SELECT results_eq(
    format($$SELECT id, queue, state, payload, result, last_error, attempts, max_attempts, submitted_at,
                    first_started_at, finished_at
               FROM tq_task(%s)$$, :t1),
    format($$VALUES (%s::bigint, 's1', 'ready', '{"to": "a@example.com"}'::jsonb, NULL::jsonb, NULL::text, 0, 5,
                     now(), NULL::timestamptz, NULL::timestamptz)$$, :t1),
    'tq_task shows a submitted task as ready with no attempts, result or finish time');
SELECT is((SELECT count(*)::int FROM tq_task(-1)), 0, 'tq_task of an unknown id returns no row');

-- The default payload is an empty object.
SELECT tq_submit('s1') AS t_default \gset
SELECT is((SELECT payload FROM tq.task WHERE id = :t_default), '{}'::jsonb,
    'tq_submit without a payload submits an empty object');

-- Every option, by name.
SELECT tq_submit(queue => 's1', payload => '{"k": [1, 2]}', priority => -7, tenant => 'acme',
                 dedup_key => 'order-17', max_attempts => 2, timeout => '30 seconds',
                 expires_at => now() + interval '1 day') AS t_opts \gset
SELECT results_eq(
    format($$SELECT state::text, priority::int, tenant, dedup_key, max_attempts, timeout, expires_at
               FROM tq.task WHERE id = %s$$, :t_opts),
    $$VALUES ('ready', -7, 'acme', 'order-17', 2, interval '30 seconds', now() + interval '1 day')$$,
    'tq_submit stores priority, tenant, dedup_key, max_attempts, timeout and expires_at');
SELECT is((SELECT tenant FROM tq_task(:t_opts)), 'acme', 'tq_task shows the tenant');
SELECT is((SELECT dedup_key FROM tq_task(:t_opts)), 'order-17', 'tq_task shows the dedup_key');
SELECT lives_ok($$SELECT tq_submit('s1', priority => 32767)$$, 'priority 32767 (the largest) is accepted');
SELECT lives_ok($$SELECT tq_submit('s1', priority => -32768)$$, 'priority -32768 (the smallest) is accepted');
SELECT lives_ok($$SELECT tq_submit('s1', max_attempts => 1000, timeout => '7 days')$$,
    'max_attempts 1000 and timeout 7 days (the largest) are accepted');

-- Ids grow in submission order.
SELECT tq_submit('s1') AS t_a \gset
SELECT tq_submit('s1') AS t_b \gset
SELECT cmp_ok(:t_b::bigint, '>', :t_a::bigint, 'a later submit gets a larger id');

-- run_at: in the future the task is scheduled, in the past it is ready now.
SELECT tq_submit('s1', run_at => now() + interval '1 hour') AS t_later \gset
SELECT results_eq(format('SELECT state::text, run_at FROM tq.task WHERE id = %s', :t_later),
    $$VALUES ('scheduled', now() + interval '1 hour')$$,
    'a task with run_at in the future is scheduled at run_at');
SELECT tq_submit('s1', run_at => now() - interval '1 hour') AS t_past \gset
SELECT results_eq(format('SELECT state::text, run_at FROM tq.task WHERE id = %s', :t_past),
    $$VALUES ('ready', now())$$,
    'a task with run_at in the past is ready with run_at now');
SELECT tq_submit('s1', run_at => NULL) AS t_null_run \gset
SELECT is((SELECT state::text FROM tq.task WHERE id = :t_null_run), 'ready', 'run_at => NULL means now');

-- A paused queue or tenant holds new tasks as paused.
SELECT tq_pause('s2');
SELECT tq_submit('s2') AS t_paused \gset
SELECT is((SELECT state::text FROM tq.task WHERE id = :t_paused), 'paused',
    'a task submitted to a paused queue is paused');
SELECT tq_resume('s2');
SELECT tq_pause('s2', tenant => 'slow');
SELECT tq_submit('s2', tenant => 'slow') AS t_slow \gset
SELECT tq_submit('s2', tenant => 'fast') AS t_fast \gset
SELECT is((SELECT state::text FROM tq.task WHERE id = :t_slow), 'paused',
    'a task of a paused tenant is paused');
SELECT is((SELECT state::text FROM tq.task WHERE id = :t_fast), 'ready',
    'a task of another tenant of that queue is ready');
SELECT tq_submit('s2', tenant => 'slow', run_at => now() + interval '1 minute') AS t_slow_later \gset
SELECT is((SELECT state::text FROM tq.task WHERE id = :t_slow_later), 'scheduled',
    'a future task of a paused tenant is scheduled (paused when it comes due)');

-- tq_queue_stats_exact counts per state, as this transaction sees the table
-- (tq_queue_stats counts from shared memory, settled at commit: 170_limits).
SELECT results_eq(
    $$SELECT scheduled, ready, paused, running FROM tq_queue_stats_exact WHERE queue = 's2'$$,
    $$VALUES (1::bigint, 2::bigint, 1::bigint, 0::bigint)$$,
    'tq_queue_stats_exact counts scheduled, ready (one resumed, one never paused), paused and running tasks');
SELECT is((SELECT oldest_ready_age FROM tq_queue_stats_exact WHERE queue = 's2'), interval '0',
    'tq_queue_stats_exact reports the oldest ready task''s age');
SELECT is((SELECT next_ready_wait FROM tq_queue_stats WHERE queue = 's2'), interval '0',
    'tq_queue_stats reports how long the next task in dispatch order has waited');

-- tq_submit_many: one task per payload, ids in payload order.
SELECT tq_submit_many('s1', ARRAY['{"i": 1}', '{"i": 2}', '{"i": 3}']::jsonb[]) AS many \gset
SELECT is(cardinality(:'many'::bigint[]), 3, 'tq_submit_many returns one id per payload');
SELECT results_eq(
    format($$SELECT (t.payload->>'i')::int FROM unnest(%L::bigint[]) WITH ORDINALITY AS u(id, o)
               JOIN tq.task t ON t.id = u.id ORDER BY u.o$$, :'many'),
    ARRAY[1, 2, 3],
    'tq_submit_many returns the ids in payload order');
SELECT ok((SELECT bool_and(a < b) FROM (SELECT x AS a, lead(x) OVER (ORDER BY o) AS b
                                          FROM unnest(:'many'::bigint[]) WITH ORDINALITY AS u(x, o)) s
           WHERE b IS NOT NULL),
    'tq_submit_many ids grow in payload order (dispatch order follows the batch)');
SELECT is((SELECT count(*)::int FROM tq.task WHERE id = ANY (:'many'::bigint[]) AND state = 'ready'
                                             AND queue = 's1' AND max_attempts = 5), 3,
    'tq_submit_many inserts every task as ready with the queue''s max_attempts');

SELECT is(tq_submit_many('s1', '{}'::jsonb[]), '{}'::bigint[], 'tq_submit_many of an empty array returns no ids');

-- Options apply to every task of the batch.
SELECT tq_submit_many('s1', ARRAY['{}', '{}']::jsonb[], run_at => now() + interval '5 minutes', priority => 3,
                      tenant => 'bulk', max_attempts => 9, timeout => '2 minutes',
                      expires_at => now() + interval '1 hour') AS many_opts \gset
SELECT results_eq(
    format($$SELECT state::text, run_at, priority::int, tenant, max_attempts, timeout, expires_at
               FROM tq.task WHERE id = ANY (%L::bigint[]) ORDER BY id$$, :'many_opts'),
    $$VALUES ('scheduled', now() + interval '5 minutes', 3, 'bulk', 9, interval '2 minutes', now() + interval '1 hour'),
             ('scheduled', now() + interval '5 minutes', 3, 'bulk', 9, interval '2 minutes', now() + interval '1 hour')$$,
    'tq_submit_many applies run_at, priority, tenant, max_attempts, timeout and expires_at to every task');

-- tq_submit_many into a paused tenant.
SELECT tq_submit_many('s2', ARRAY['{}', '{}']::jsonb[], tenant => 'slow') AS many_paused \gset
SELECT is((SELECT count(*)::int FROM tq.task WHERE id = ANY (:'many_paused'::bigint[]) AND state = 'paused'), 2,
    'tq_submit_many into a paused tenant holds the tasks as paused');

-- dedup_keys in a batch: parallel to payloads; the first payload of a key wins.
SELECT tq_submit_many('s1', ARRAY['{"n": 1}', '{"n": 2}', '{"n": 3}', '{"n": 4}']::jsonb[],
                      dedup_keys => ARRAY['x', NULL, 'x', 'y']) AS many_keys \gset
SELECT is((:'many_keys'::bigint[])[3], (:'many_keys'::bigint[])[1],
    'a payload whose key appeared earlier in the batch gets the earlier task''s id');
SELECT is((SELECT count(*)::int FROM tq.task WHERE id = ANY (:'many_keys'::bigint[])), 3,
    'a key repeated within a batch inserts one task');
SELECT is((SELECT payload FROM tq.task WHERE id = (:'many_keys'::bigint[])[1]), '{"n": 1}'::jsonb,
    'the first payload of a repeated key is the one kept');
SELECT is((SELECT dedup_key FROM tq.task WHERE id = (:'many_keys'::bigint[])[2]), NULL,
    'a NULL element of dedup_keys submits a task without a key');
SELECT tq_submit_many('s1', ARRAY['{"n": 5}', '{"n": 6}']::jsonb[], dedup_keys => ARRAY['y', 'z']) AS many_keys2 \gset
SELECT is((:'many_keys2'::bigint[])[1], (:'many_keys'::bigint[])[4],
    'a batch payload whose key is held by a live task gets that task''s id');
SELECT is((SELECT count(*)::int FROM tq.task WHERE dedup_key IN ('y', 'z')), 2,
    'only the batch payload with a free key was inserted');
SELECT is(tq_submit('s1', '{"n": 7}', dedup_key => 'z'), (:'many_keys2'::bigint[])[2],
    'tq_submit sees a key taken by tq_submit_many');

-- A larger batch in one statement.
SELECT is(cardinality(tq_submit_many('s1', array_fill('{"bulk": true}'::jsonb, ARRAY[20000]))), 20000,
    'tq_submit_many submits 20000 tasks in one call');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 's1' AND payload = '{"bulk": true}'), 20000,
    'all 20000 tasks of the batch are stored');
SELECT is((SELECT count(DISTINCT id)::int FROM tq.task WHERE queue = 's1' AND payload = '{"bulk": true}'), 20000,
    'the tasks of a batch get distinct ids');

-- Submit works inside a caller's transaction and is undone with it.
SAVEPOINT before_undo;
SELECT tq_submit('s1', '{"undo": true}');
ROLLBACK TO SAVEPOINT before_undo;
SELECT is((SELECT count(*)::int FROM tq.task WHERE payload = '{"undo": true}'), 0,
    'a submit rolled back with the caller''s transaction leaves no task');

-- Timeout: the task's own, else the queue's (shown by tq_lease; stored here).
SELECT tq_submit('s2', tenant => 'fast', timeout => '10 seconds') AS t_to \gset
SELECT is((SELECT timeout FROM tq.task WHERE id = :t_to), interval '10 seconds',
    'a task''s own timeout is stored with the task');

SELECT * FROM finish();
ROLLBACK;
