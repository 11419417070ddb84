-- Lease and finish: tq_lease, tq_complete, tq_fail, tq_release and
-- tq_heartbeat in their single and array forms, and fencing by attempt.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(74);

SELECT has_function('public', 'tq_lease', ARRAY['text', 'text[]', 'integer', 'interval'], 'tq_lease(worker, queues, max, lease) exists');
SELECT has_function('public', 'tq_complete', ARRAY['bigint', 'integer', 'jsonb'], 'tq_complete(id, attempt, result) exists');
SELECT has_function('public', 'tq_complete', ARRAY['bigint[]', 'integer[]', 'jsonb[]', 'bigint[]'], 'tq_complete(ids, attempts, results, leases) exists');
SELECT has_function('public', 'tq_fail', ARRAY['bigint', 'integer', 'text', 'text', 'interval'], 'tq_fail(id, attempt, error, retry, retry_after) exists');
SELECT has_function('public', 'tq_fail', ARRAY['bigint[]', 'integer[]', 'text[]', 'text[]', 'interval[]', 'bigint[]'], 'tq_fail(ids, attempts, errors, retry, retry_after, leases) exists');
SELECT has_function('public', 'tq_release', ARRAY['bigint', 'integer'], 'tq_release(id, attempt) exists');
SELECT has_function('public', 'tq_release', ARRAY['bigint[]', 'integer[]', 'bigint[]'], 'tq_release(ids, attempts, leases) exists');
SELECT has_function('public', 'tq_heartbeat', ARRAY['text', 'bigint[]', 'integer[]', 'bigint[]'], 'tq_heartbeat(worker, ids, attempts, leases) exists');

SELECT tq_create_queue('l1', lease => '45 seconds', timeout => '3 minutes', max_attempts => 2);
SELECT tq_create_queue('l2');

-- An empty queue leases nothing.
SELECT is((SELECT count(*)::int FROM tq_lease('w1', ARRAY['l1'], 10)), 0, 'tq_lease of an empty queue returns no rows');

-- Dispatch order: priority (higher first), then submission order.
SELECT tq_submit('l1', '{"n": "a"}', priority => 0) AS a \gset
SELECT tq_submit('l1', '{"n": "b"}', priority => 5, tenant => 'tb') AS b \gset
SELECT tq_submit('l1', '{"n": "c"}', priority => 0) AS c \gset
SELECT tq_submit('l1', '{"n": "d"}', priority => 5, timeout => '9 seconds') AS d \gset
SELECT tq_submit('l1', '{"n": "e"}', priority => -1) AS e \gset

CREATE TEMP TABLE leased AS SELECT 1 AS round, * FROM tq_lease('w1', ARRAY['l1'], 1);
SELECT is((SELECT id FROM leased WHERE round = 1), :b::bigint, 'tq_lease takes the highest priority first');
SELECT results_eq(
    $$SELECT queue, payload, attempt, lease_until, tenant, priority::int, timeout FROM leased WHERE round = 1$$,
    $$VALUES ('l1', '{"n": "b"}'::jsonb, 1, now() + interval '45 seconds', 'tb', 5, interval '3 minutes')$$,
    'tq_lease returns queue, payload, attempt 1, deadline (queue lease), tenant, priority and the queue''s timeout');
INSERT INTO leased SELECT 2, * FROM tq_lease('w1', ARRAY['l1'], 1);
SELECT is((SELECT id FROM leased WHERE round = 2), :d::bigint, 'within a priority, tq_lease takes the earlier submit first');
SELECT is((SELECT timeout FROM leased WHERE round = 2), interval '9 seconds', 'a task''s own timeout overrides the queue''s');
INSERT INTO leased SELECT 3, * FROM tq_lease('w2', ARRAY['l1'], 2, lease => '5 minutes');
SELECT results_eq($$SELECT id FROM leased WHERE round = 3 ORDER BY id$$,
    format('VALUES (%s::bigint), (%s::bigint)', :a, :c),
    'then priority 0 in submission order, up to max tasks');
SELECT is((SELECT array_agg(DISTINCT lease_until) FROM leased WHERE round = 3), ARRAY[now() + interval '5 minutes'],
    'a lease given to tq_lease overrides the queue''s');
INSERT INTO leased SELECT 4, * FROM tq_lease('w1', ARRAY['l1'], 10);
SELECT results_eq($$SELECT id FROM leased WHERE round = 4$$, format('VALUES (%s::bigint)', :e),
    'the lowest priority comes last, and leased tasks are not leased again');
SELECT is((SELECT count(*)::int FROM tq_lease('w1', ARRAY['l1'], 10)), 0, 'a queue whose tasks are all leased leases nothing');

-- What a lease writes on the task.
SELECT results_eq(
    format($$SELECT state::text, attempt, worker, lease_until, lease_duration, started_at, first_started_at
               FROM tq.task WHERE id = %s$$, :a),
    $$VALUES ('running', 1, 'w2', now() + interval '5 minutes', interval '5 minutes', now(), now())$$,
    'a leased task is running with attempt 1, the worker, the deadline and start times');
SELECT results_eq(format('SELECT state, attempts, worker, lease_until, first_started_at FROM tq_task(%s)', :a),
    $$VALUES ('running', 1, 'w2', now() + interval '5 minutes', now())$$,
    'tq_task shows a running task with its worker, attempt and deadline');
SELECT is((SELECT running FROM tq_queue_stats WHERE queue = 'l1'), 5::bigint, 'tq_queue_stats counts running tasks');

-- Leasing from several queues at once.
SELECT tq_submit('l2', '{"q": 2}') AS x2 \gset
SELECT tq_submit('l1', '{"q": 1}') AS x1 \gset
SELECT results_eq($$SELECT queue FROM tq_lease('w3', ARRAY['l1', 'l2'], 5) ORDER BY queue$$,
    ARRAY['l1', 'l2'], 'tq_lease serves every queue it is given');

-- tq_complete.
SELECT is(tq_complete(:b, 1, '{"sent": true}'), true, 'tq_complete of the current attempt returns true');
SELECT is((SELECT count(*)::int FROM tq.task WHERE id = :b), 0, 'a completed task leaves the hot table');
SELECT results_eq(format('SELECT state, result, finished_at, attempts FROM tq_task(%s)', :b),
    $$VALUES ('succeeded', '{"sent": true}'::jsonb, now(), 1)$$,
    'tq_task shows the completed task as succeeded with its result and finish time');
SELECT is(tq_complete(:b, 1), false, 'completing a finished task again returns false');
SELECT is(tq_complete(:d, 7), false, 'tq_complete with a wrong attempt returns false');
SELECT is((SELECT state::text FROM tq.task WHERE id = :d), 'running', 'a refused tq_complete leaves the task running');
SELECT is(tq_complete(-42, 1), false, 'tq_complete of an unknown id returns false');
SELECT is(tq_complete(:d, 1), true, 'tq_complete without a result succeeds');
SELECT is((SELECT result FROM tq_task(:d)), NULL, 'a task completed without a result has a NULL result');

-- A ready task cannot be completed (it was never leased).
SELECT tq_submit('l2', '{"never": "leased"}') AS r1 \gset
SELECT is(tq_complete(:r1, 0), false, 'tq_complete of a ready task returns false');
SELECT is((SELECT state::text FROM tq.task WHERE id = :r1), 'ready', 'and the ready task stays ready');

-- Array form of tq_complete: per-task answers and results.
SELECT is(tq_complete(ARRAY[:a, :c, :e]::bigint[], ARRAY[1, 1, 99], ARRAY['{"r": "a"}', '{"r": "c"}', NULL]::jsonb[]),
    ARRAY[true, true, false], 'the array tq_complete answers per task, false for the stale attempt');
SELECT results_eq(format('SELECT h.result FROM tq.history h WHERE h.id IN (%s, %s) ORDER BY h.id', :a, :c),
    $$VALUES ('{"r": "a"}'::jsonb), ('{"r": "c"}'::jsonb)$$,
    'the array tq_complete stores each task''s own result');
SELECT is(tq_complete(ARRAY[]::bigint[], ARRAY[]::integer[]), ARRAY[]::boolean[], 'the array tq_complete of no tasks returns an empty array');

-- The array forms answer per (id, attempt): the same id quoted twice, once
-- with a stale attempt, is true only for the current attempt.
SELECT tq_submit('l2', '{"dup": 1}') AS dup \gset
SELECT count(*) FROM tq_lease('w9', ARRAY['l2'], 5);
SELECT is(tq_complete(ARRAY[:dup, :dup]::bigint[], ARRAY[1, 9]), ARRAY[true, false],
    'the array tq_complete answers false for the element with the stale attempt even when its id also appears with the current one');

-- tq_fail with the default retry: back to scheduled, with the error.
SELECT is(tq_fail(:e, 1, 'smtp timeout'), true, 'tq_fail of the current attempt returns true');
SELECT results_eq(format('SELECT state::text, last_error, attempt, worker IS NOT NULL, lease_until FROM tq.task WHERE id = %s', :e),
    $$VALUES ('scheduled', 'smtp timeout', 1, true, NULL::timestamptz)$$,
    'a failed attempt is scheduled for a retry with its error and no lease');
SELECT cmp_ok((SELECT run_at FROM tq.task WHERE id = :e), '>', now(), 'the retry waits for a backoff');
SELECT is(tq_fail(:e, 1, 'again'), false, 'tq_fail of a task that is no longer running returns false');
SELECT is((SELECT last_error FROM tq_task(:e)), 'smtp timeout', 'tq_task shows the last error');

-- Array tq_fail: per-task retry modes.
SELECT tq_submit('l2', '{"f": 1}') AS f1 \gset
SELECT tq_submit('l2', '{"f": 2}') AS f2 \gset
SELECT tq_submit('l2', '{"f": 3}') AS f3 \gset
SELECT count(*) FROM tq_lease('w4', ARRAY['l2'], 10);
SELECT is(tq_fail(ARRAY[:f1, :f2, :f3, :e]::bigint[], ARRAY[1, 1, 1, 1], ARRAY['e1', 'e2', 'e3', 'not running'],
                  ARRAY['auto', 'never', NULL, 'auto'], ARRAY[NULL, NULL, interval '10 minutes', NULL]),
    ARRAY[true, true, true, false], 'the array tq_fail answers per task, false for a task that is not running');
SELECT results_eq(format($$SELECT state, last_error FROM tq_task(%s) UNION ALL SELECT state, last_error FROM tq_task(%s)
                            UNION ALL SELECT state, last_error FROM tq_task(%s)$$, :f1, :f2, :f3),
    $$VALUES ('scheduled', 'e1'), ('dead', 'e2'), ('scheduled', 'e3')$$,
    'the array tq_fail applies each task''s retry mode and error (NULL mode means auto)');
SELECT is((SELECT run_at FROM tq.task WHERE id = :f3), now() + interval '10 minutes',
    'the array tq_fail applies each task''s retry_after');

-- tq_release: back to ready at once, the attempt does not count.
SELECT tq_submit('l1', '{"rel": 1}') AS rel \gset
SELECT count(*) FROM tq_lease('w5', ARRAY['l1'], 1);
SELECT is(tq_release(:rel, 1), true, 'tq_release of the current attempt returns true');
SELECT results_eq(format('SELECT state::text, attempt, free_attempts, lease_until FROM tq.task WHERE id = %s', :rel),
    $$VALUES ('ready', 1, 1, NULL::timestamptz)$$,
    'a released task is ready again and its attempt does not count');
SELECT is(tq_release(:rel, 1), false, 'releasing a task that is no longer running returns false');
SELECT is((SELECT attempt FROM tq_lease('w5', ARRAY['l1'], 1)), 2, 'the released task is leased again with attempt 2');
-- l1 has max_attempts 2: with the released attempt free, one failure still leaves a retry.
SELECT is(tq_fail(:rel, 2, 'boom'), true, 'tq_fail after a release');
SELECT is((SELECT state::text FROM tq.task WHERE id = :rel), 'scheduled',
    'a released attempt is not counted against max_attempts (2 leases, 1 counted, max 2: retried, not dead)');

SELECT tq_submit('l2', '{"rel": 2}') AS rel2 \gset
SELECT tq_submit('l2', '{"rel": 3}') AS rel3 \gset
SELECT count(*) FROM tq_lease('w6', ARRAY['l2'], 10);
SELECT is(tq_release(ARRAY[:rel2, :rel3, :a]::bigint[], ARRAY[1, 1, 1]), ARRAY[true, true, false],
    'the array tq_release answers per task, false for a finished task');
SELECT is((SELECT count(*)::int FROM tq.task WHERE id IN (:rel2, :rel3) AND state = 'ready'), 2,
    'the array tq_release makes every released task ready');

-- tq_heartbeat: extends the lease by its duration; reports lost tasks.
SELECT tq_submit('l1', '{"hb": 1}') AS hb \gset
SELECT count(*) FROM tq_lease('w7', ARRAY['l1'], 1, lease => '2 minutes');
UPDATE tq.task SET lease_until = now() + interval '1 second' WHERE id = :hb;
SELECT is((SELECT count(*)::int FROM tq_heartbeat('w7', ARRAY[:hb]::bigint[], ARRAY[1])), 0,
    'a heartbeat for a healthy lease reports nothing');
SELECT is((SELECT lease_until FROM tq.task WHERE id = :hb), now() + interval '2 minutes',
    'a heartbeat extends the lease by the lease''s own duration');
SELECT results_eq(format('SELECT id, reason FROM tq_heartbeat(%L, ARRAY[%s, %s, -5]::bigint[], ARRAY[9, 1, 1]) ORDER BY id', 'w7', :hb, :b),
    format($$VALUES (-5::bigint, 'lost'), (%s::bigint, 'lost'), (%s::bigint, 'lost')$$, :b, :hb),
    'a heartbeat reports stale attempts, finished and unknown tasks as lost');
SELECT is((SELECT count(*)::int FROM tq_heartbeat('w7', ARRAY[]::bigint[], ARRAY[]::integer[])), 0,
    'a heartbeat with no tasks reports nothing');

-- Fencing: the lease expires, the task is leased again, the first worker is refused.
SELECT tq_create_queue('fence', max_attempts => 5);
SELECT tq_submit('fence', '{"fence": 1}') AS fe \gset
SELECT count(*) FROM tq_lease('worker-A', ARRAY['fence'], 1);
UPDATE tq.task SET lease_until = now() - interval '1 second' WHERE id = :fe;   -- the lease runs out
SELECT is((SELECT count(*)::int FROM tq_lease('worker-B', ARRAY['fence'], 1)), 0,
    'an expired lease is reclaimed as a failed attempt, not handed straight to another worker');
SELECT results_eq(format('SELECT state::text, attempt, last_error ~ ''lease expired'' FROM tq.task WHERE id = %s', :fe),
    $$VALUES ('scheduled', 1, true)$$,
    'the reclaimed task waits for its retry with a "lease expired" error');
UPDATE tq.task SET run_at = now() - interval '1 second' WHERE id = :fe;         -- the backoff passes
SELECT is((SELECT attempt FROM tq_lease('worker-B', ARRAY['fence'], 1)), 2, 'worker B leases the task as attempt 2');
SELECT is(tq_complete(:fe, 1, '{"from": "A"}'), false, 'worker A''s tq_complete with the stale attempt returns false');
SELECT is(tq_fail(:fe, 1, 'A failed'), false, 'worker A''s tq_fail with the stale attempt returns false');
SELECT is(tq_release(:fe, 1), false, 'worker A''s tq_release with the stale attempt returns false');
SELECT results_eq(format('SELECT id, reason FROM tq_heartbeat(%L, ARRAY[%s]::bigint[], ARRAY[1])', 'worker-A', :fe),
    format($$VALUES (%s::bigint, 'lost')$$, :fe), 'worker A''s heartbeat reports the task lost');
SELECT results_eq(format('SELECT state::text, attempt, worker, last_error ~ ''lease expired'' FROM tq.task WHERE id = %s', :fe),
    $$VALUES ('running', 2, 'worker-B', true)$$,
    'stale calls changed nothing: the task still runs under worker B');
SELECT is(tq_complete(:fe, 2, '{"from": "B"}'), true, 'worker B''s tq_complete succeeds');
SELECT is((SELECT result FROM tq_task(:fe)), '{"from": "B"}'::jsonb, 'the result is worker B''s');

-- An expired lease uses up an attempt: with max_attempts 1 the task is dead.
SELECT tq_submit('fence', '{"fence": 2}', max_attempts => 1) AS fe2 \gset
SELECT count(*) FROM tq_lease('worker-A', ARRAY['fence'], 1);
UPDATE tq.task SET lease_until = now() - interval '1 second' WHERE id = :fe2;
SELECT is((SELECT n FROM tq_maintain() WHERE action = 'reclaimed'), 1::bigint, 'tq_maintain reclaims the expired lease');
SELECT results_eq(format('SELECT state, attempts, last_error ~ ''lease expired: worker "worker-A"'' FROM tq_task(%s)', :fe2),
    $$VALUES ('dead', 1, true)$$,
    'a task whose last attempt''s lease expired is dead, and the error names the worker');

-- Every argument can be passed by name.
SELECT tq_submit(queue => 'fence', payload => '{"named": 1}') AS nm1 \gset
SELECT tq_submit(queue => 'fence', payload => '{"named": 2}') AS nm2 \gset
SELECT tq_submit(queue => 'fence', payload => '{"named": 3}') AS nm3 \gset
SELECT is((SELECT count(*)::int FROM tq_lease(worker => 'named', queues => ARRAY['fence'], max => 3, lease => '1 minute')), 3,
    'tq_lease takes named arguments');
SELECT is((SELECT count(*)::int FROM tq_heartbeat(worker => 'named', ids => ARRAY[:nm1]::bigint[], attempts => ARRAY[1])), 0,
    'tq_heartbeat takes named arguments');
SELECT is(tq_complete(id => :nm1, attempt => 1, result => '{"r": 1}'), true, 'tq_complete takes named arguments');
SELECT is(tq_fail(id => :nm2, attempt => 1, error => 'e', retry => 'never', retry_after => NULL), true, 'tq_fail takes named arguments');
SELECT is(tq_release(id => :nm3, attempt => 1), true, 'tq_release takes named arguments');

-- Lease with no ready task in a given queue among several.
SELECT tq_cancel(:nm3::bigint);
SELECT is((SELECT count(*)::int FROM tq_lease('w8', ARRAY['fence'], 3)), 0, 'tq_lease returns nothing when nothing is ready');

SELECT * FROM finish();
ROLLBACK;
