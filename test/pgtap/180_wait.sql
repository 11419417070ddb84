-- tq_wait: returns a finished task's final state and result at once,
-- returns the current state once the timeout passes, and refuses what it
-- cannot do with a clear error.  (A task finished by another session while
-- one waits is in TAP test 014, which needs two sessions.)
--
-- Like 170, this file commits: tq_wait waits for committed tasks only, so
-- every statement runs in a transaction of its own; the queue (wait_q) is
-- dropped at the end.
SET client_min_messages = warning;
SELECT plan(22);

SELECT has_function('tq_wait', ARRAY['bigint', 'interval'], 'tq_wait(id, timeout) exists');
SELECT function_returns('tq_wait', ARRAY['bigint', 'interval'], 'setof record', 'it returns a row');

SELECT tq_create_queue('wait_q', max_attempts => 1);
CREATE TEMP TABLE wait_ids (name text PRIMARY KEY, id bigint);
CREATE TEMP TABLE wait_clock (name text PRIMARY KEY, t timestamptz);

-- A finished task: returned at once, with its result.
INSERT INTO wait_ids SELECT 'done', tq_submit('wait_q', '{"n": 1}');
SELECT is(cardinality(tq_complete(ARRAY[l.id], ARRAY[l.attempt], ARRAY['{"answer": 42}'::jsonb])), 1,
          'the first task is leased and completed')
  FROM tq_lease('wait-worker', '{wait_q}', 1) l;
INSERT INTO wait_clock VALUES ('done-before', clock_timestamp());
CREATE TEMP TABLE wait_done AS SELECT * FROM tq_wait((SELECT id FROM wait_ids WHERE name = 'done'), '10 s');
INSERT INTO wait_clock VALUES ('done-after', clock_timestamp());
SELECT is((SELECT state FROM wait_done), 'succeeded', 'a finished task: its final state');
SELECT is((SELECT result FROM wait_done), '{"answer": 42}'::jsonb, '... its result');
SELECT is((SELECT id FROM wait_done), (SELECT id FROM wait_ids WHERE name = 'done'), '... its id');
SELECT ok((SELECT finished_at FROM wait_done) IS NOT NULL, '... and when it finished');
SELECT cmp_ok((SELECT t FROM wait_clock WHERE name = 'done-after') - (SELECT t FROM wait_clock WHERE name = 'done-before'),
              '<', interval '1 second', '... at once, not after the timeout');

-- A dead task is final too.
INSERT INTO wait_ids SELECT 'dead', tq_submit('wait_q', '{"n": 2}');
SELECT is(cardinality(tq_fail(ARRAY[l.id], ARRAY[l.attempt], ARRAY['broken'])), 1, 'the second task fails')
  FROM tq_lease('wait-worker', '{wait_q}', 1) l;
SELECT results_eq($$ SELECT state, last_error FROM tq_wait((SELECT id FROM wait_ids WHERE name = 'dead'), '10 s') $$,
                  $$ VALUES ('dead', 'broken') $$, 'a dead task: dead, with its last error');

-- A task still waiting to run: its current state once the timeout passed.
INSERT INTO wait_ids SELECT 'ready', tq_submit('wait_q', '{"n": 3}');
INSERT INTO wait_clock VALUES ('ready-before', clock_timestamp());
CREATE TEMP TABLE wait_ready AS SELECT * FROM tq_wait((SELECT id FROM wait_ids WHERE name = 'ready'), '300 ms');
INSERT INTO wait_clock VALUES ('ready-after', clock_timestamp());
SELECT is((SELECT state FROM wait_ready), 'ready', 'a live task: its current state after the timeout');
SELECT ok((SELECT result FROM wait_ready) IS NULL AND (SELECT finished_at FROM wait_ready) IS NULL,
          '... without a result or a finish time');
SELECT cmp_ok((SELECT t FROM wait_clock WHERE name = 'ready-after') - (SELECT t FROM wait_clock WHERE name = 'ready-before'),
              '>=', interval '300 ms', '... not before the timeout');
SELECT cmp_ok((SELECT t FROM wait_clock WHERE name = 'ready-after') - (SELECT t FROM wait_clock WHERE name = 'ready-before'),
              '<', interval '3 seconds', '... nor long after it');
SELECT is((SELECT state FROM tq_wait((SELECT id FROM wait_ids WHERE name = 'ready'), '0')), 'ready',
          'timeout 0: the current state at once');

-- What tq_wait refuses.
SELECT throws_ok($$ SELECT * FROM tq_wait(NULL, '1 s') $$, '22004', 'id must not be null',
                 'a null id is refused');
SELECT throws_ok($$ SELECT * FROM tq_wait(1, '-1 s') $$, '22023', 'timeout is out of range',
                 'a negative timeout is refused');
SELECT throws_ok($$ SELECT * FROM tq_wait(1, '2 days') $$, '22023', 'timeout is out of range',
                 'a timeout over a day is refused');
SELECT throws_ok($$ SELECT * FROM tq_wait(-5, '1 s') $$, '42704', 'task -5 does not exist',
                 'an unknown task is refused');
SELECT throws_ok($$ SELECT * FROM tq_wait(tq_submit('wait_q', '{}'), '1 s') $$, '55000', NULL,
                 'a task submitted in the same transaction is refused: it cannot finish before the commit');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT throws_ok($$ SELECT * FROM tq_wait((SELECT id FROM wait_ids WHERE name = 'ready'), '1 s') $$,
                 '0A000', NULL, 'under REPEATABLE READ it is refused (the snapshot cannot see the finish)');
COMMIT;
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'wait_q'), 1,
          'nothing was left behind by the refused calls (only the ready task is live)');

SELECT count(tq_drop_queue(name, force => true)) FROM tq.queue WHERE name = 'wait_q';

SELECT * FROM finish();
