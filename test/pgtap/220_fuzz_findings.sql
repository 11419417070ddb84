-- What fuzzing the SQL API and the internal functions found (CHANGELOG.md,
-- 0.7.0), each refused with tq's own error and nothing written, and the
-- server never crashes (the findings are numbered across this file and
-- TAP 018):
--   1. a row of tq.task without a queue (the trigger ran before NOT NULL
--      and crashed the server), or moved to another queue with its state;
--   2. option values the arithmetic cannot take (priority_aging 5e-324
--      stopped every queue after a restart: see also TAP 018);
--   3. NULL arguments to internal C functions (two crashed the server);
--      every C function of tq is called with NULL arguments here;
--   9. a reclaimed task keeps its place in line;
--  10. a batch naming an (id, attempt) twice, 2-D arrays, arrays of
--      different lengths to tq.note_finished.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(36);

SELECT tq_create_queue('fz', backoff_base => '1 ms', backoff_cap => '1 ms');
SELECT tq_create_queue('fz2');
SELECT tq_submit('fz', '{"n": 1}') AS t1 \gset

------------------------------------------------------------------------------
-- 1. tq.task rows the trigger must not count
------------------------------------------------------------------------------
SELECT throws_ok($$INSERT INTO tq.task (queue, state, payload, max_attempts) VALUES (NULL, 'ready', '{}', 1)$$,
    '23502', 'null value in column "queue" of relation "task" violates not-null constraint',
    'a task inserted without a queue: 23502, no crash');
SELECT throws_ok(format($$UPDATE tq.task SET queue = NULL, state = 'paused' WHERE id = %s$$, :t1),
    '23502', 'null value in column "queue" of relation "task" violates not-null constraint',
    'a task updated to no queue with its state: 23502, no crash');
SELECT throws_ok(format($$UPDATE tq.task SET queue = 'fz2', state = 'paused' WHERE id = %s$$, :t1),
    '0A000', 'a task cannot move to another queue or tenant',
    'a task moved to another queue with its state: 0A000');
SELECT throws_ok(format($$UPDATE tq.task SET tenant = 'x', state = 'paused' WHERE id = %s$$, :t1),
    '0A000', 'a task cannot move to another queue or tenant',
    'a task moved to another tenant with its state: 0A000');
SELECT throws_ok($$INSERT INTO tq.task (queue, state, payload, max_attempts) VALUES ('fz', NULL, '{}', 1)$$,
    '23502', NULL, 'a task inserted without a state: 23502');
SELECT results_eq($$SELECT ready::int FROM tq_queue_stats WHERE queue IN ('fz', 'fz2') ORDER BY queue$$,
    ARRAY[1, 0], 'the counters are as before the refused writes');

------------------------------------------------------------------------------
-- 2. Option bounds
------------------------------------------------------------------------------
SELECT throws_ok($$SELECT tq_create_queue('tiny', priority_aging => 5e-324)$$,
    '22023', 'priority_aging is out of range', 'priority_aging 5e-324 is refused');
SELECT throws_ok($$SELECT tq_alter_queue('fz', priority_aging => 0.0009)$$,
    '22023', 'priority_aging is out of range', 'priority_aging below 0.001 is refused by tq_alter_queue');
SELECT lives_ok($$SELECT tq_create_queue('tiny', priority_aging => 0.001)$$, 'priority_aging 0.001 is accepted');
SELECT throws_ok($$SELECT tq_create_queue('slow', rate_per_sec => 5e-324)$$,
    '22023', 'rate_per_sec is out of range', 'rate_per_sec 5e-324 is refused');
SELECT throws_ok($$SELECT tq_set_tenant('fz', 'a', rate_per_sec => 1e-7)$$,
    '22023', 'rate_per_sec is out of range', 'a tenant rate below 0.000001 is refused');
SELECT lives_ok($$SELECT tq_set_tenant('fz', 'a', rate_per_sec => 0.000001)$$, 'a tenant rate of 0.000001 is accepted');
SELECT throws_ok($$SELECT tq_set_tenant('fz', 'a', weight => 1e-300)$$,
    '22023', 'weight is out of range', 'a tenant weight of 1e-300 is refused');
SELECT throws_ok($$SELECT tq_alter_queue('fz', rate_per_sec => 'NaN')$$,
    '22023', 'rate_per_sec is out of range', 'rate_per_sec NaN is refused');
SELECT throws_ok($$SELECT tq_alter_queue('fz', priority_aging => 'Infinity')$$,
    '22023', 'priority_aging is out of range', 'priority_aging Infinity is refused');

-- A value written behind the checks is clamped, with a warning, and
-- submits go on (a slow bucket's refill time stays an interval).
UPDATE tq.queue SET rate_per_sec = 5e-324 WHERE name = 'fz2';
SELECT tq.policy_changed('fz2', NULL, true);
SET LOCAL client_min_messages = error;
SELECT lives_ok($$SELECT tq_submit('fz2', '{}')$$, 'a submit to a queue whose rate was written as 5e-324 works');
SET LOCAL client_min_messages = warning;
SELECT ok((SELECT rate_per_sec FROM tq.shared_counts() WHERE queue = 'fz2' AND is_queue) = 0.000001,
    'the shared rate is clamped to 0.000001');
SELECT lives_ok($$SELECT tq.held_next()$$, 'tq.held_next works with the slow bucket');

------------------------------------------------------------------------------
-- 3. NULL arguments to internal C functions
------------------------------------------------------------------------------
SELECT throws_ok($$SELECT tq.check_label('v', NULL, 200)$$, '22004', 'what and max_len must not be null',
    'tq.check_label with a NULL what: 22004, no crash');
SELECT throws_ok($$SELECT tq.check_label('v', 'tenant', NULL)$$, '22004', 'what and max_len must not be null',
    'tq.check_label with a NULL max_len: 22004');
SELECT is(tq.check_label(NULL, 'tenant', 200), NULL, 'tq.check_label passes a NULL value through');
SELECT throws_ok($$SELECT tq.held_done(NULL, 't1', 0)$$, '22004', 'queue and gen must not be null',
    'tq.held_done with a NULL queue: 22004, no crash');

-- Every C function of tq that takes arguments, called with all of them
-- NULL: an error or a NULL, never a crash (a crash fails this whole file).
CREATE TEMP TABLE null_calls (fn text, outcome text);
DO $$
DECLARE
    f record;
    sqlstate_ text;
BEGIN
    FOR f IN SELECT p.oid::regprocedure AS sig, p.proname, n.nspname,
                    (SELECT string_agg('NULL::' || format_type(t, NULL), ', ' ORDER BY o)
                       FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, o)) AS args
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'tq'
              WHERE p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'c') AND p.pronargs > 0
              ORDER BY 1::text
    LOOP
        BEGIN
            EXECUTE format('SELECT %I.%I(%s)', f.nspname, f.proname, f.args);
            INSERT INTO null_calls VALUES (f.sig::text, 'ok');
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS sqlstate_ = RETURNED_SQLSTATE;
            INSERT INTO null_calls VALUES (f.sig::text, sqlstate_);
        END;
    END LOOP;
END
$$;
SELECT cmp_ok((SELECT count(*) FROM null_calls), '>=', 15::bigint, 'every C function with arguments was called with NULLs');
SELECT is_empty($$SELECT fn, outcome FROM null_calls WHERE outcome = 'XX000'$$,
    'none raised an internal error (XX000)');

------------------------------------------------------------------------------
-- 9. A reclaimed task keeps its place in line
------------------------------------------------------------------------------
SELECT id AS lost, attempt AS lost_attempt FROM tq_lease('w', ARRAY['fz'], 1) \gset
SELECT tq_submit('fz', format('{"n": %s}', g)::jsonb) FROM generate_series(2, 5) g;
SELECT vkey AS lost_key FROM tq.task WHERE id = :lost \gset
UPDATE tq.task SET lease_until = now() - interval '1 second' WHERE id = :lost;
SELECT is(tq.reclaim(), 1::bigint, 'the expired lease is reclaimed');
SELECT results_eq(format($$SELECT state::text, attempt, last_error LIKE 'lease expired:%%', vkey FROM tq.task WHERE id = %s$$, :lost),
    format($$VALUES ('scheduled', %s, true, %s::float8)$$, :lost_attempt, :lost_key),
    'it failed an attempt and waits out its backoff, with the key it had');
UPDATE tq.task SET run_at = now() WHERE id = :lost;
SELECT tq.promote(ARRAY['fz']);
SELECT ok((SELECT vkey FROM tq.task WHERE id = :lost) < ALL (SELECT vkey FROM tq.task WHERE queue = 'fz' AND id <> :lost),
    'once due, it is ahead of the tasks submitted since');
SELECT is((SELECT id FROM tq_lease('w', ARRAY['fz'], 1)), :lost::bigint, 'the next lease takes it first');
-- A failure a worker reports still goes to the back.
SELECT tq_fail(:lost, :lost_attempt + 1, 'boom');
SELECT is((SELECT vkey FROM tq.task WHERE id = :lost), NULL, 'a reported failure clears the key');

------------------------------------------------------------------------------
-- 10. Batch edges
------------------------------------------------------------------------------
SELECT id AS b1, attempt AS b1a FROM tq_lease('w', ARRAY['fz'], 1) \gset
SELECT is(tq_complete(ARRAY[:b1, :b1]::bigint[], ARRAY[:b1a, :b1a], ARRAY['{"r": 1}', '{"r": 2}']::jsonb[]),
    '{t,f}'::boolean[], 'a pair named twice: only its first occurrence is acted on');
SELECT is((SELECT result FROM tq_task(:b1)), '{"r": 1}'::jsonb, 'the result given first is kept');
SELECT id AS b2, attempt AS b2a FROM tq_lease('w', ARRAY['fz'], 1) \gset
SELECT is(tq_fail(ARRAY[:b2, 0, :b2]::bigint[], ARRAY[:b2a, 1, :b2a], ARRAY['first', 'none', 'second']),
    '{t,f,f}'::boolean[], 'tq_fail: a pair named twice is acted on once');
SELECT is((SELECT last_error FROM tq.task WHERE id = :b2), 'first', 'the error given first is kept');
SELECT throws_ok($$SELECT tq_complete('{{1,2}}'::bigint[], '{{1,1}}'::int[])$$, '2202E',
    'task ids must be a one-dimensional array', 'a 2-D id array: tq''s own 2202E');
SELECT throws_ok($$SELECT tq_fail('{1}'::bigint[], '{1}'::int[], '{{x}}'::text[])$$, '2202E',
    'errors must be a one-dimensional array', 'a 2-D errors array: tq''s own 2202E');
SELECT throws_ok($$SELECT tq.note_finished('{1,2}', '{a}', '{succeeded}')$$, '2202E',
    'the arrays of task ids, queues and states differ in length', 'tq.note_finished with arrays of different lengths: 2202E');

SELECT * FROM finish();
ROLLBACK;
