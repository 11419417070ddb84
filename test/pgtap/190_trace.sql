-- Per-attempt traces: tq_task_trace(id) lists every attempt of a task --
-- when it was due, leased by which worker, when and how it ended -- and
-- the trace moves to history with the task.  Commits like 170 (each step
-- its own transaction, as for real workers); queues trace_* are dropped at
-- the end.
SET client_min_messages = warning;
SELECT plan(24);

SELECT has_function('tq_task_trace', ARRAY['bigint'], 'tq_task_trace(id) exists');
SELECT has_column('tq', 'task', 'trace', 'tq.task has a trace column');
SELECT has_column('tq', 'history', 'trace', 'tq.history too');

SELECT tq_create_queue('trace_q', max_attempts => 5, backoff_base => '1 ms', backoff_cap => '1 ms');
SELECT tq_create_queue('trace_once', max_attempts => 1);
CREATE TEMP TABLE trace_ids (name text PRIMARY KEY, id bigint);

-- One task through failure, throttling, a hand-back, a lost lease and success.
INSERT INTO trace_ids SELECT 'life', tq_submit('trace_q', '{}');
SELECT tq_fail(l.id, l.attempt, 'boom', 'auto', '0') FROM tq_lease('w1', '{trace_q}', 1) l;
SELECT tq_fail(l.id, l.attempt, 'slow down', 'throttled', '0') FROM tq_lease('w2', '{trace_q}', 1) l;
SELECT tq_release(l.id, l.attempt) FROM tq_lease('w3', '{trace_q}', 1) l;
SELECT count(*) FROM tq_lease('w4', '{trace_q}', 1);
-- w4's lease runs out; the next lease reclaims it.
UPDATE tq.task SET lease_until = now() - interval '1 second' WHERE id = (SELECT id FROM trace_ids WHERE name = 'life');
SELECT count(*) FROM tq_lease('w0', '{trace_q}', 1); -- reclaims w4's attempt (due again after the backoff)
SELECT tq_complete(l.id, l.attempt, '{"ok": true}') FROM tq_lease('w5', '{trace_q}', 1) l;

SELECT is((SELECT state FROM tq_task((SELECT id FROM trace_ids WHERE name = 'life'))), 'succeeded',
          'the task went through and succeeded');
SELECT results_eq(
    $$ SELECT worker, outcome FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'life')) $$,
    $$ VALUES ('w1', 'failed'), ('w2', 'throttled'), ('w3', 'released'), ('w4', 'failed'), ('w5', 'succeeded') $$,
    'five attempts in order: worker and outcome of each');
SELECT results_eq(
    $$ SELECT attempt FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'life')) $$,
    $$ SELECT attempt FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'life')) ORDER BY attempt $$,
    'attempt numbers never go down');
SELECT is((SELECT error FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'life')) WHERE worker = 'w1'),
          'boom', 'a failed attempt keeps its error');
SELECT is((SELECT error FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'life')) WHERE worker = 'w2'),
          'slow down', 'a throttled one too');
SELECT alike((SELECT error FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'life')) WHERE worker = 'w4'),
            '%lease%', 'the lost lease says so');
SELECT is((SELECT error FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'life')) WHERE worker = 'w5'),
          NULL, 'the successful attempt has no error');
SELECT is((SELECT count(*)::int FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'life'))
            WHERE ready_at IS NULL OR leased_at IS NULL OR ended_at IS NULL), 0,
          'every attempt has ready_at, leased_at and ended_at');
SELECT is((SELECT count(*)::int FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'life'))
            WHERE leased_at < ready_at OR ended_at < leased_at), 0,
          'ready_at <= leased_at <= ended_at for every attempt');
SELECT is((SELECT count(*)::int FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'life'))
            WHERE queue_wait <> leased_at - ready_at OR run_time <> ended_at - leased_at), 0,
          'queue_wait and run_time are the differences');
SELECT ok((SELECT trace FROM tq.history WHERE id = (SELECT id FROM trace_ids WHERE name = 'life')) IS NOT NULL,
          'the trace moved to history with the task');
SELECT is((SELECT count(*)::int FROM tq.task WHERE id = (SELECT id FROM trace_ids WHERE name = 'life')), 0,
          '... and the task left tq.task');

-- Dead at once.
INSERT INTO trace_ids SELECT 'dead', tq_submit('trace_once', '{}');
SELECT tq_fail(l.id, l.attempt, 'bad input', 'never') FROM tq_lease('w1', '{trace_once}', 1) l;
SELECT results_eq($$ SELECT outcome, error FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'dead')) $$,
                  $$ VALUES ('dead', 'bad input') $$, 'a dead task: one attempt, dead, with the error');

-- Cancelled while running: the worker's report ends the attempt as cancelled.
INSERT INTO trace_ids SELECT 'cancel', tq_submit('trace_q', '{}');
SELECT count(*) FROM tq_lease('w1', '{trace_q}', 1);
SELECT tq_cancel((SELECT id FROM trace_ids WHERE name = 'cancel'));
SELECT tq_fail(t.id, t.attempts, 'stopped') FROM tq_task((SELECT id FROM trace_ids WHERE name = 'cancel')) t;
SELECT results_eq($$ SELECT outcome FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'cancel')) $$,
                  $$ VALUES ('cancelled') $$, 'cancelled while running: the attempt ended cancelled');

-- Never run: no attempts.
INSERT INTO trace_ids SELECT 'never', tq_submit('trace_q', '{}', run_at => now() + interval '1 hour');
SELECT tq_cancel((SELECT id FROM trace_ids WHERE name = 'never'));
SELECT is((SELECT count(*)::int FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'never'))), 0,
          'a task cancelled before it ran has no attempt');
SELECT is((SELECT state FROM tq_task((SELECT id FROM trace_ids WHERE name = 'never'))), 'cancelled',
          '... and is cancelled');

-- A running task's trace shows its open attempt.
INSERT INTO trace_ids SELECT 'open', tq_submit('trace_q', '{}');
SELECT count(*) FROM tq_lease('w9', '{trace_q}', 1);
SELECT results_eq($$ SELECT worker, outcome, ended_at IS NULL FROM tq_task_trace((SELECT id FROM trace_ids WHERE name = 'open')) $$,
                  $$ VALUES ('w9', NULL::text, true) $$, 'a running task: its attempt is open');
SELECT tq_complete(l.id, l.attempts, NULL) FROM tq_task((SELECT id FROM trace_ids WHERE name = 'open')) l;

SELECT is((SELECT count(*)::int FROM tq_task_trace(-1)), 0, 'an unknown task has no trace');
SELECT function_privs_are('tq_task_trace', ARRAY['bigint'], 'tq_producer', ARRAY['EXECUTE'],
                          'producers may read traces');
SELECT ok(obj_description('tq_task_trace(bigint)'::regprocedure) IS NOT NULL, 'tq_task_trace has a comment');

-- ANALYZE leaves the JSON columns out (sorting traces was most of its
-- cost), on tq.task and on every history partition, new ones included.
SELECT results_eq(
    $$ SELECT count(*) > 3, count(*) FILTER (WHERE a.attstattarget <> 0)
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE c.relnamespace = 'tq'::regnamespace AND c.relkind = 'r'
          AND (c.relname = 'task' OR c.relname LIKE 'history\_q%')
          AND a.attname IN ('payload', 'result', 'log', 'trace') $$,
    $$ VALUES (true, 0::bigint) $$,
    'the JSON columns of tq.task and of the history partitions have no statistics target');

SELECT count(tq_drop_queue(name, force => true)) FROM tq.queue WHERE name LIKE 'trace\_%';

SELECT * FROM finish();
