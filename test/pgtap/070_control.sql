-- Control: tq_cancel (one task, a queue, a tenant), tq_pause / tq_resume of
-- queues and tenants, tq_purge.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(61);

SELECT has_function('public', 'tq_cancel', ARRAY['bigint'], 'tq_cancel(id) exists');
SELECT has_function('public', 'tq_cancel', ARRAY['text', 'text', 'boolean'], 'tq_cancel(queue, tenant, include_running) exists');
SELECT has_function('public', 'tq_pause', ARRAY['text', 'text'], 'tq_pause(queue, tenant) exists');
SELECT has_function('public', 'tq_resume', ARRAY['text', 'text'], 'tq_resume(queue, tenant) exists');
SELECT has_function('public', 'tq_purge', ARRAY['text', 'text', 'interval'], 'tq_purge(queue, state, older_than) exists');

SELECT tq_create_queue('c1');

------------------------------------------------------------------------------
-- tq_cancel(id)
------------------------------------------------------------------------------
SELECT tq_submit('c1', '{"c": "ready"}') AS c_ready \gset
SELECT tq_submit('c1', '{"c": "sched"}', run_at => now() + interval '1 hour') AS c_sched \gset
SELECT is(tq_cancel(:c_ready::bigint), true, 'tq_cancel of a ready task returns true');
SELECT results_eq(format('SELECT state, last_error, finished_at FROM tq_task(%s)', :c_ready),
    $$VALUES ('cancelled', 'cancelled by tq_cancel before it ran', now())$$,
    'a cancelled ready task is finished as cancelled at once');
SELECT is((SELECT count(*)::int FROM tq.task WHERE id = :c_ready), 0, 'a cancelled task leaves the hot table');
SELECT is(tq_cancel(:c_sched::bigint), true, 'tq_cancel of a scheduled task returns true');
SELECT is((SELECT state FROM tq_task(:c_sched)), 'cancelled', 'a cancelled scheduled task is cancelled');
SELECT is(tq_cancel(:c_ready::bigint), false, 'tq_cancel of a finished task returns false');
SELECT is((SELECT cancelled FROM tq_queue_stats_exact WHERE queue = 'c1'), 2::bigint, 'tq_queue_stats_exact counts cancelled tasks');

-- A running task: flagged, reported by the next heartbeat, stopped by the worker.
SELECT tq_submit('c1', '{"c": "run"}') AS c_run \gset
SELECT count(*) FROM tq_lease('w1', ARRAY['c1'], 1);
UPDATE tq.task SET lease_until = now() + interval '1 second' WHERE id = :c_run;
SELECT is(tq_cancel(:c_run::bigint), true, 'tq_cancel of a running task returns true');
SELECT results_eq(format('SELECT state::text, cancel_requested FROM tq.task WHERE id = %s', :c_run),
    $$VALUES ('running', true)$$, 'a running task keeps running, flagged for cancellation');
SELECT is((SELECT cancel_requested FROM tq_task(:c_run)), true, 'tq_task shows the cancellation request');
SELECT results_eq(format('SELECT id, reason FROM tq_heartbeat(%L, ARRAY[%s]::bigint[], ARRAY[1])', 'w1', :c_run),
    format($$VALUES (%s::bigint, 'cancelled')$$, :c_run),
    'the next heartbeat reports the task as cancelled');
SELECT is((SELECT lease_until FROM tq.task WHERE id = :c_run), now() + interval '1 minute',
    'the heartbeat still extends the lease, so the worker can report the outcome');
SELECT is(tq_fail(:c_run, 1, 'stopped on request'), true, 'the worker reports the stopped task as failed');
SELECT results_eq(format('SELECT state, last_error FROM tq_task(%s)', :c_run),
    $$VALUES ('cancelled', 'stopped on request')$$, 'a failed task whose cancellation was requested is cancelled, not retried');

SELECT tq_submit('c1', '{"c": "run2"}') AS c_run2 \gset
SELECT count(*) FROM tq_lease('w1', ARRAY['c1'], 1);
SELECT tq_cancel(:c_run2::bigint);
SELECT is(tq_release(:c_run2, 1), true, 'the worker releases a task whose cancellation was requested');
SELECT is((SELECT state FROM tq_task(:c_run2)), 'cancelled', 'a released task whose cancellation was requested is cancelled');

SELECT tq_submit('c1', '{"c": "run3"}') AS c_run3 \gset
SELECT count(*) FROM tq_lease('w1', ARRAY['c1'], 1);
SELECT tq_cancel(:c_run3::bigint);
UPDATE tq.task SET lease_until = now() - interval '1 second' WHERE id = :c_run3;
SELECT count(*) FROM tq_maintain();
SELECT is((SELECT state FROM tq_task(:c_run3)), 'cancelled',
    'a task whose cancellation was requested and whose lease expired is cancelled, not retried');

------------------------------------------------------------------------------
-- tq_cancel(queue, tenant, include_running)
------------------------------------------------------------------------------
SELECT tq_create_queue('c2');
SELECT cardinality(tq_submit_many('c2', array_fill('{}'::jsonb, ARRAY[3]), tenant => 'a'));
SELECT cardinality(tq_submit_many('c2', array_fill('{}'::jsonb, ARRAY[2]), tenant => 'b'));
SELECT cardinality(tq_submit_many('c2', array_fill('{}'::jsonb, ARRAY[2]), tenant => 'b', run_at => now() + interval '1 day'));
SELECT tq_submit('c2', '{}', tenant => 'a', priority => 100) AS c2_run_a \gset
SELECT count(*) FROM tq_lease('w2', ARRAY['c2'], 1);
SELECT is((SELECT state::text FROM tq.task WHERE id = :c2_run_a), 'running', 'one task of tenant a is running');

SELECT tq_pause('c2', tenant => 'b');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'c2' AND tenant = 'b' AND state = 'paused'), 2,
    'tenant b has paused tasks');
SELECT is(tq_cancel('c2', tenant => 'b'), 4::bigint, 'tq_cancel with a tenant cancels that tenant''s queued (paused and scheduled) tasks and returns how many');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'c2' AND tenant = 'b'), 0, 'no task of the cancelled tenant is left');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'c2' AND tenant = 'a'), 4, 'other tenants'' tasks are untouched');
SELECT is(tq_cancel('c2', tenant => 'a', include_running => false), 3::bigint,
    'include_running => false cancels only the queued tasks');
SELECT is((SELECT cancel_requested FROM tq.task WHERE id = :c2_run_a), false,
    'include_running => false leaves the running task alone');
SELECT is(tq_cancel('c2'), 1::bigint, 'tq_cancel of a queue counts the running tasks it flags');
SELECT is((SELECT cancel_requested FROM tq.task WHERE id = :c2_run_a), true, 'tq_cancel of a queue flags running tasks');
SELECT is(tq_cancel('c2'), 0::bigint, 'tq_cancel of a queue with nothing left to cancel returns 0');

------------------------------------------------------------------------------
-- tq_pause / tq_resume of a queue
------------------------------------------------------------------------------
SELECT tq_create_queue('p1');
SELECT cardinality(tq_submit_many('p1', array_fill('{}'::jsonb, ARRAY[3])));
SELECT tq_submit('p1', '{}', priority => 100) AS p1_run \gset
SELECT count(*) FROM tq_lease('w', ARRAY['p1'], 1);
SELECT is(tq_pause('p1'), 3::bigint, 'tq_pause of a queue returns how many ready tasks it holds');
SELECT is((SELECT paused FROM tq_queues WHERE queue = 'p1'), true, 'tq_queues shows the queue paused');
SELECT is((SELECT queue_paused FROM tq_queue_stats WHERE queue = 'p1'), true, 'tq_queue_stats shows the queue paused');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'p1' AND state = 'paused'), 3, 'the ready tasks are paused');
SELECT is((SELECT state::text FROM tq.task WHERE id = :p1_run), 'running', 'a running task goes on when its queue is paused');
SELECT is((SELECT count(*)::int FROM tq_lease('w', ARRAY['p1'], 10)), 0, 'a paused queue leases nothing');
SELECT is(tq_release(:p1_run, 1), true, 'a task of a paused queue is released');
SELECT is((SELECT state::text FROM tq.task WHERE id = :p1_run), 'paused', 'a task released into a paused queue is paused');
SELECT is(tq_pause('p1'), 0::bigint, 'pausing a paused queue again holds nothing more');
SELECT is(tq_resume('p1'), 4::bigint, 'tq_resume of a queue returns how many tasks became ready');
SELECT is((SELECT count(*)::int FROM tq_lease('w', ARRAY['p1'], 10)), 4, 'a resumed queue leases its tasks');

------------------------------------------------------------------------------
-- tq_pause / tq_resume of a tenant
------------------------------------------------------------------------------
SELECT tq_create_queue('p2');
SELECT cardinality(tq_submit_many('p2', array_fill('{}'::jsonb, ARRAY[3]), tenant => 'noisy'));
SELECT cardinality(tq_submit_many('p2', array_fill('{}'::jsonb, ARRAY[2]), tenant => 'calm'));
SELECT tq_submit('p2', '{}') AS p2_none \gset
SELECT is(tq_pause('p2', tenant => 'noisy'), 3::bigint, 'tq_pause of a tenant holds that tenant''s ready tasks');
SELECT is((SELECT paused_tenants FROM tq_queues WHERE queue = 'p2'), ARRAY['noisy'], 'tq_queues lists the paused tenant');
SELECT results_eq($$SELECT coalesce(tenant, '-') FROM tq_lease('w', ARRAY['p2'], 10) ORDER BY 1$$,
    ARRAY['-', 'calm', 'calm'], 'a lease with a paused tenant still returns the other tenants'' tasks (and untenanted ones)');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'p2' AND tenant = 'noisy' AND state = 'paused'), 3,
    'the paused tenant''s tasks were not leased');

-- Queue pause and tenant pause combine.
SELECT tq_pause('p2');
SELECT is(tq_resume('p2', tenant => 'noisy'), 0::bigint, 'resuming a tenant of a paused queue makes nothing ready');
SELECT tq_pause('p2', tenant => 'noisy');
SELECT tq_resume('p2');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'p2' AND tenant = 'noisy' AND state = 'paused'), 3,
    'resuming the queue leaves a paused tenant''s tasks paused');
SELECT is(tq_resume('p2', tenant => 'noisy'), 3::bigint, 'tq_resume of the tenant makes its tasks ready');
SELECT is((SELECT paused_tenants FROM tq_queues WHERE queue = 'p2'), '{}'::text[], 'tq_queues lists no paused tenant any more');
SELECT is((SELECT count(*)::int FROM tq_lease('w', ARRAY['p2'], 10)), 3, 'the resumed tenant''s tasks are leased');

-- Pause state left wrong by a race (simulated by writing the state directly).
SELECT tq_create_queue('p3');
SELECT tq_submit('p3', '{}', tenant => 'held') AS p3_held \gset
SELECT tq_submit('p3', '{}', tenant => 'free') AS p3_free \gset
SELECT tq_pause('p3', tenant => 'held');
UPDATE tq.task SET state = 'ready' WHERE id = :p3_held;     -- a submit that raced tq_pause
UPDATE tq.task SET state = 'paused' WHERE id = :p3_free;    -- a submit that raced tq_resume
UPDATE tq.meta SET next_maintenance = 'infinity';           -- no maintenance inside tq_lease
SELECT is((SELECT count(*)::int FROM tq_lease('w', ARRAY['p3'], 10)), 0,
    'tq_lease does not lease a ready task of a paused tenant');
SELECT is((SELECT n FROM tq_maintain() WHERE action = 'pause state repaired'), 2::bigint,
    'tq_maintain repairs both tasks'' pause state');
SELECT results_eq(format('SELECT id, state::text FROM tq.task WHERE id IN (%s, %s) ORDER BY id', :p3_held, :p3_free),
    format($$VALUES (%s::bigint, 'paused'), (%s::bigint, 'ready')$$, :p3_held, :p3_free),
    'after repair the paused tenant''s task is paused and the other one ready');

------------------------------------------------------------------------------
-- tq_purge
------------------------------------------------------------------------------
SELECT tq_create_queue('pg1', max_attempts => 1);
SELECT tq_create_queue('pg2');
SELECT cardinality(tq_submit_many('pg1', array_fill('{}'::jsonb, ARRAY[4])));
SELECT tq_complete(l.id, l.attempt) FROM tq_lease('w', ARRAY['pg1'], 2) l;
SELECT tq_fail(l.id, l.attempt, 'x', 'never') FROM tq_lease('w', ARRAY['pg1'], 1) l;
SELECT tq_cancel('pg1');
SELECT tq_submit('pg2', '{}') AS pg2_t \gset
SELECT tq_complete(l.id, l.attempt) FROM tq_lease('w', ARRAY['pg2'], 1) l;
UPDATE tq.history SET finished_at = now() - interval '3 days'
 WHERE id = (SELECT min(id) FROM tq.history WHERE queue = 'pg1' AND state = 'succeeded');

SELECT is(tq_purge('pg1', 'succeeded', older_than => '1 day'), 1::bigint,
    'tq_purge with older_than deletes only tasks finished longer ago');
SELECT is(tq_purge('pg1', 'succeeded'), 1::bigint, 'tq_purge of one state deletes that state''s tasks');
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'pg1'), 2, 'tq_purge of one state leaves the others');
SELECT is(tq_purge('pg1'), 2::bigint, 'tq_purge without a state deletes every finished task of the queue');
SELECT is((SELECT count(*)::int FROM tq.history WHERE queue = 'pg2'), 1, 'tq_purge leaves other queues alone');
SELECT is(tq_purge('pg1'), 0::bigint, 'tq_purge of an empty history returns 0');

SELECT * FROM finish();
ROLLBACK;
