-- W3C trace context: a task carries a traceparent from its submitter to
-- its handler.  Given as tq_submit's or tq_submit_many's traceparent
-- argument, or taken from the setting tq.traceparent (argument first);
-- checked the same way from both (22023 with a detail and a hint, nothing
-- stored); handled by tq_submit's C fast path itself; returned by tq_lease;
-- kept through retries, into history, and back with tq_retry.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(110);

\set tp '''00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'''
\set tp2 '''00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'''
\set tp3 '''00-0af7651916cd43dd8448eb211c80319c-b9c7c989f97918e1-00'''

-- The SQLSTATE, message, detail and hint of a statement's error (NULL: none).
CREATE FUNCTION pg_temp.err(p_sql text) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    st text; msg text; det text; hin text;
BEGIN
    EXECUTE p_sql;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
                            hin = PG_EXCEPTION_HINT;
    RETURN ARRAY[st, msg, det, hin];
END
$$;
-- How many times this transaction called tq.submit_slow (track_functions).
CREATE FUNCTION pg_temp.slow_calls() RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions
     WHERE schemaname = 'tq' AND funcname = 'submit_slow'
$$;
SET LOCAL track_functions = 'pl';

------------------------------------------------------------------------------
-- The objects
------------------------------------------------------------------------------
SELECT has_column('tq', 'task', 'traceparent', 'tq.task has a traceparent column');
SELECT has_column('tq', 'history', 'traceparent', 'tq.history has one too');
SELECT has_function('tq', 'submit_slow',
    ARRAY['text', 'jsonb', 'timestamp with time zone', 'integer', 'text', 'text', 'integer', 'interval', 'timestamp with time zone', 'text'],
    'tq.submit_slow takes a traceparent as its last argument');
SELECT is((SELECT pg_get_function_result('tq_lease(text,text[],integer,interval)'::regprocedure)),
    'TABLE(id bigint, queue text, payload jsonb, attempt integer, lease_until timestamp with time zone, tenant text, priority smallint, timeout interval, traceparent text, lease_token bigint)',
    'tq_lease returns the traceparent, and then (0.7.0) the lease token');
SELECT ok(pg_get_function_result('tq_task(bigint)'::regprocedure) LIKE '%, traceparent text)',
    'tq_task shows the traceparent');
SELECT has_column('public', 'tq_dead', 'traceparent', 'tq_dead shows the traceparent');
SELECT is((SELECT setting || '|' || context || '|' || vartype FROM pg_settings WHERE name = 'tq.traceparent'),
    '|user|string', 'tq.traceparent: a string any user may set, empty by default');
SELECT isnt(col_description('tq.task'::regclass,
                            (SELECT attnum FROM pg_attribute WHERE attrelid = 'tq.task'::regclass AND attname = 'traceparent')),
    NULL, 'tq.task.traceparent has a comment');

SELECT tq_create_queue('tp_q', max_attempts => 3, backoff_base => '1 ms', backoff_cap => '1 ms');
SELECT tq_create_queue('tp_once', max_attempts => 1);

------------------------------------------------------------------------------
-- Accepted forms, stored as given, through the fast path
------------------------------------------------------------------------------
SELECT tq_submit('tp_q', '{"n": 1}', traceparent => :tp) AS t1 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :t1), :tp, 'a version-00 traceparent is stored as given');
SELECT is(pg_temp.slow_calls(), 0::bigint, '... by the C fast path (tq.submit_slow was not called)');
SELECT tq_submit('tp_q', '{"n": 2}', traceparent => '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff') AS t2 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :t2), '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff',
    'flags other than 00 and 01 are kept (unknown flags are the handler''s business)');
SELECT tq_submit('tp_q', '{"n": 3}', traceparent => '01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01') AS t3 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :t3), '01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    'a higher version of 55 characters is accepted');
SELECT tq_submit('tp_q', '{"n": 4}', traceparent => 'cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-later-fields_v2') AS t4 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :t4), 'cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-later-fields_v2',
    'a higher version with more after a ''-'' is stored as given (forward compatibility)');
SELECT tq_submit('tp_q', '{"n": 5}', traceparent => '') AS t5 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :t5), NULL, 'an empty traceparent means none');
SELECT tq_submit('tp_q', '{"n": 6}') AS t6 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :t6), NULL, 'no traceparent and no setting: none');
SELECT is(pg_temp.slow_calls(), 0::bigint, 'all of these took the fast path');

------------------------------------------------------------------------------
-- Refusals: 22023 with a detail, from the argument (fast path, slow path,
-- tq_submit_many) and from the setting; nothing stored.
------------------------------------------------------------------------------
CREATE TEMP TABLE bad (o serial, v text, detail text, what text);
INSERT INTO bad (v, detail, what) VALUES
    ('abc', 'It has 3 characters; a traceparent has at least 55.', 'too short'),
    ('ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', 'Version ff is invalid.', 'version ff'),
    ('0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', 'The version must be 2 lowercase hex digits.', 'version not hex'),
    ('00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01', 'The trace-id must be 32 lowercase hex digits.', 'uppercase trace-id'),
    ('00-00000000000000000000000000000000-00f067aa0ba902b7-01', 'The trace-id is all zeros, which means no trace.', 'all-zero trace-id'),
    ('00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01', 'The parent-id is all zeros, which means no parent.', 'all-zero parent-id'),
    ('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01', 'The parent-id must be 16 lowercase hex digits.', 'parent-id not hex'),
    ('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g', 'The trace-flags must be 2 lowercase hex digits.', 'flags not hex'),
    ('00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', 'Character 3 must be ''-'', which ends the version.', 'wrong separator'),
    ('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00', 'It has 58 characters; version 00 has exactly 55.', 'version 00 with more'),
    ('01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x', 'After the trace-flags a higher version may only continue with ''-''.', 'higher version continued without ''-'''),
    ('01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-a b', 'Character 58 (byte 0x20) is not printable ASCII; blanks are not allowed either.', 'a blank in the later fields'),
    (E'01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-a\nb', 'Character 58 (byte 0x0a) is not printable ASCII; blanks are not allowed either.', 'a newline in the later fields'),
    ('01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-' || repeat('a', 500), 'It has 556 bytes; the limit is 512.', 'too long');

SELECT count(*) AS tasks_before FROM tq.task \gset
SELECT is(ARRAY[e[1], e[3]], ARRAY['22023', b.detail], 'tq_submit refuses: ' || b.what || ' (22023)')
  FROM bad b, pg_temp.err(format('SELECT tq_submit(%L, %L, traceparent => %L)', 'tp_q', '{}', b.v)) e
 ORDER BY b.o;
SELECT is(ARRAY[e[1], e[3]], ARRAY['22023', b.detail],
          'tq_submit with a dedup_key (slow path) refuses: ' || b.what || ' (22023)')
  FROM bad b, pg_temp.err(format('SELECT tq_submit(%L, %L, dedup_key => %L, traceparent => %L)', 'tp_q', '{}', 'k' || b.o, b.v)) e
 ORDER BY b.o;
SELECT is(ARRAY[e[1], e[3]], ARRAY['22023', b.detail], 'tq_submit_many refuses: ' || b.what || ' (22023)')
  FROM bad b, pg_temp.err(format('SELECT tq_submit_many(%L, ARRAY[%L, %L]::jsonb[], traceparent => %L)', 'tp_q', '{}', '{}', b.v)) e
 ORDER BY b.o;
SELECT is(ARRAY[e[1], e[3]], ARRAY['22023', b.detail], 'SET tq.traceparent refuses: ' || b.what || ' (22023)')
  FROM bad b, pg_temp.err(format('SET LOCAL tq.traceparent = %L', b.v)) e
 ORDER BY b.o;
SELECT is((SELECT count(*) FROM tq.task), :tasks_before::bigint, 'no refused submit stored a task');
SELECT is((SELECT count(*)::int FROM tq.dedup WHERE queue = 'tp_q'), 0, '... nor took a dedup key');

SELECT results_eq(
    $$ SELECT x[1], x[2], x[4] FROM pg_temp.err('SELECT tq_submit(''tp_q'', ''{}'', traceparent => ''abc'')') x $$,
    $$ VALUES ('22023', 'invalid traceparent "abc"',
               'A traceparent looks like 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01: version, trace-id (32 hex digits), parent-id (16 hex digits) and trace-flags, in lowercase hex, separated by ''-''; an empty string means none.') $$,
    'the argument''s error names the value and its hint shows the form');
SELECT results_eq(
    $$ SELECT x[2], x[4] LIKE 'A traceparent looks like 00-%' FROM pg_temp.err('SET LOCAL tq.traceparent = ''abc''') x $$,
    $$ VALUES ('invalid value for parameter "tq.traceparent": "abc"', true) $$,
    'the setting''s error names the setting and the value, with the same hint');
SELECT is((pg_temp.err(E'SELECT tq_submit(''tp_q'', ''{}'', traceparent => E''00-\\x01'')'))[2],
          'invalid traceparent', 'a value with control characters is not repeated in the message');

------------------------------------------------------------------------------
-- The setting: used when no argument is given; the argument wins; '' means
-- none; any role may set it.
------------------------------------------------------------------------------
SET LOCAL tq.traceparent = :tp2;
SELECT pg_temp.slow_calls() AS slow0 \gset
SELECT is(current_setting('tq.traceparent'), :tp2, 'SET LOCAL tq.traceparent takes a good value');
SELECT is(pg_temp.err('SET LOCAL tq.traceparent = ''abc'''), ARRAY['22023', 'invalid value for parameter "tq.traceparent": "abc"',
          'It has 3 characters; a traceparent has at least 55.',
          'A traceparent looks like 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01: version, trace-id (32 hex digits), parent-id (16 hex digits) and trace-flags, in lowercase hex, separated by ''-''; an empty string means none.'],
          'a bad value is refused ...');
SELECT is(current_setting('tq.traceparent'), :tp2, '... and the setting keeps its value');

SELECT tq_submit('tp_q', '{"n": 10}') AS g1 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :g1), :tp2, 'without an argument the task gets the setting');
SELECT tq_submit('tp_q', '{"n": 11}', traceparent => :tp3) AS g2 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :g2), :tp3, 'an argument wins over the setting');
SELECT tq_submit('tp_q', '{"n": 12}', traceparent => '') AS g3 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :g3), NULL, 'an empty argument means none, whatever the setting');
SELECT is(pg_temp.slow_calls() - :slow0, 0::bigint, 'the setting is read by the fast path too');

SELECT tq_submit('tp_q', '{"n": 13}', dedup_key => 'g4') AS g4 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :g4), :tp2, 'the slow path (a dedup_key) takes the setting');
SELECT tq_submit('tp_q', '{"n": 14}', dedup_key => 'g5', traceparent => :tp3) AS g5 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :g5), :tp3, '... and the argument over it');
SELECT tq_submit('tp_q', '{"n": 15}', dedup_key => 'g6', traceparent => '') AS g6 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :g6), NULL, '... and an empty argument as none');
SELECT is(pg_temp.slow_calls() - :slow0, 3::bigint, 'those three went through tq.submit_slow');
SELECT is(tq_submit('tp_q', '{"n": 16}', dedup_key => 'g4', traceparent => :tp3), :g4::bigint,
    'a duplicate dedup_key returns the first task ...');
SELECT is((SELECT traceparent FROM tq.task WHERE id = :g4), :tp2, '... which keeps its own traceparent');

SELECT tq_submit_many('tp_q', ARRAY['{"m": 1}', '{"m": 2}']::jsonb[]) AS m1 \gset
SELECT is(ARRAY(SELECT traceparent FROM tq.task WHERE id = ANY (:'m1'::bigint[]) ORDER BY id),
    ARRAY[:tp2, :tp2], 'tq_submit_many gives every task the setting');
SELECT tq_submit_many('tp_q', ARRAY['{"m": 3}', '{"m": 4}', '{"m": 5}']::jsonb[], traceparent => :tp3) AS m2 \gset
SELECT is(ARRAY(SELECT traceparent FROM tq.task WHERE id = ANY (:'m2'::bigint[]) ORDER BY id),
    ARRAY[:tp3, :tp3, :tp3], '... or the argument, one traceparent for the whole batch');
SELECT tq_submit_many('tp_q', ARRAY['{"m": 6}']::jsonb[], traceparent => '') AS m3 \gset
SELECT is(ARRAY(SELECT traceparent FROM tq.task WHERE id = ANY (:'m3'::bigint[])), ARRAY[NULL::text],
    '... or none for an empty argument');

-- The trigger and a periodic task's firing submit through tq_submit.
CREATE TABLE public.tp_orders (id int, shop text);
CREATE TRIGGER tp_orders_tq AFTER INSERT ON public.tp_orders
    FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('tp_q', 'tenant=shop');
INSERT INTO public.tp_orders VALUES (1, 'shop-1'), (2, 'shop-2');
SELECT is(ARRAY(SELECT traceparent FROM tq.task WHERE queue = 'tp_q' AND payload ? 'shop' ORDER BY id),
    ARRAY[:tp2, :tp2], 'tasks submitted by tq_submit_trigger carry the writing transaction''s setting');
INSERT INTO tq.schedule (name, cron, queue, payload, priority, jobid) VALUES ('tp_sched', '* * * * *', 'tp_q', '{"s": 1}', 0, 0);
SELECT tq.fire_schedule('tp_sched') AS s1 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :s1), :tp2, 'so does a periodic task''s firing (tq.fire_schedule)');

-- Any role may set it: an application's own login role.
CREATE ROLE tap_tp_app LOGIN IN ROLE tq_producer;
SET LOCAL ROLE tap_tp_app;
SELECT set_config('tq.traceparent', :tp3, true);
SELECT tq_submit('tp_q', '{"n": 20}') AS r1 \gset
RESET ROLE;
SELECT is((SELECT traceparent FROM tq.task WHERE id = :r1), :tp3, 'a producer role sets tq.traceparent and its task carries it');
SET LOCAL tq.traceparent = '';
SELECT tq_submit('tp_q', '{"n": 21}') AS r2 \gset
SELECT is((SELECT traceparent FROM tq.task WHERE id = :r2), NULL, 'tq.traceparent = '''' means none again');

------------------------------------------------------------------------------
-- The worker's side: tq_lease returns it; a failed attempt, a release and a
-- lost lease keep it; history keeps it; tq_retry brings it back.
------------------------------------------------------------------------------
SELECT tq_cancel('tp_q');
SELECT tq_submit('tp_q', '{"life": 1}', traceparent => :tp) AS l1 \gset
SELECT tq_submit('tp_q', '{"life": 2}') AS l2 \gset
SELECT results_eq($$ SELECT id, traceparent FROM tq_lease('w1', '{tp_q}', 2) ORDER BY id $$,
    format('VALUES (%s::bigint, %L::text), (%s, NULL)', :l1, :tp, :l2),
    'tq_lease returns each task''s traceparent (NULL for none)');
SELECT tq_fail(:l1, 1, 'boom');
SELECT is((SELECT state::text || ' ' || traceparent FROM tq.task WHERE id = :l1), 'scheduled ' || :tp,
    'a failed attempt keeps the traceparent');
SELECT tq_retry(:l1);
SELECT is((SELECT traceparent FROM tq_lease('w2', '{tp_q}', 1) WHERE id = :l1), :tp,
    'the retry is leased with the same traceparent');
SELECT tq_release(:l1, 2);
SELECT is((SELECT traceparent FROM tq_lease('w3', '{tp_q}', 1) WHERE id = :l1), :tp,
    'so is a task handed back with tq_release');
UPDATE tq.task SET lease_until = now() - interval '1 second' WHERE id = :l1;
SELECT tq.reclaim();
SELECT is((SELECT traceparent FROM tq.task WHERE id = :l1 AND state = 'scheduled'), :tp,
    'a lost lease keeps it');
SELECT tq_retry(:l1);
SELECT tq_complete(l.id, l.attempt, '{"done": true}') FROM tq_lease('w4', '{tp_q}', 1) l WHERE l.id = :l1;
SELECT is((SELECT state::text || ' ' || traceparent FROM tq.history WHERE id = :l1), 'succeeded ' || :tp,
    'history keeps the traceparent of a completed task');
SELECT is((SELECT traceparent FROM tq_task(:l1)), :tp, 'tq_task shows it');
SELECT is((SELECT traceparent FROM tq_task(:l2)), NULL, 'tq_task of a task without one: NULL');

SELECT tq_submit('tp_once', '{"dies": 1}', traceparent => :tp2) AS d1 \gset
SELECT tq_fail(l.id, l.attempt, 'bad input', 'never') FROM tq_lease('w5', '{tp_once}', 1) l;
SELECT is((SELECT traceparent FROM tq_dead WHERE id = :d1), :tp2, 'tq_dead shows a dead task''s traceparent');
SELECT ok(tq_retry(:d1), 'tq_retry brings the dead task back ...');
SELECT is((SELECT state::text || ' ' || traceparent FROM tq.task WHERE id = :d1), 'ready ' || :tp2,
    '... with its traceparent');
SELECT tq_fail(l.id, l.attempt, 'bad again', 'never') FROM tq_lease('w6', '{tp_once}', 1) l;
SELECT is(tq_retry_dead('tp_once'), 1::bigint, 'tq_retry_dead brings it back again ...');
SELECT is((SELECT traceparent FROM tq_lease('w7', '{tp_once}', 1)), :tp2, '... and tq_lease hands out the same traceparent');

SELECT * FROM finish();
ROLLBACK;
