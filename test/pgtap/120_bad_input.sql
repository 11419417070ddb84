-- Bad input: every argument a caller can get wrong is refused with the
-- right SQLSTATE (never XX000), and a refused call writes nothing.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(169);

SELECT tq_create_queue('bad', backlog_limit => 5);
SELECT tq_create_queue('ok');
SELECT tq_submit('ok', '{"n": 1}') AS live \gset
SELECT count(*) FROM tq_lease('w', ARRAY['ok'], 1);
SELECT tq_submit('ok', '{"n": 2}') AS ready \gset
SELECT tq_submit('ok', '{"n": 3}', priority => 1) AS done \gset
SELECT tq_complete(l.id, l.attempt) FROM tq_lease('w', ARRAY['ok'], 1) l;

------------------------------------------------------------------------------
-- Unknown queue: 42704, with a hint naming tq_create_queue.
------------------------------------------------------------------------------
SELECT throws_ok($$SELECT tq_submit('nope', '{}')$$, '42704', 'queue "nope" does not exist', 'tq_submit to an unknown queue: 42704');
SELECT throws_ok($$SELECT tq_submit_many('nope', ARRAY['{}']::jsonb[])$$, '42704', NULL, 'tq_submit_many to an unknown queue: 42704');
SELECT throws_ok($$SELECT * FROM tq_lease('w', ARRAY['ok', 'nope'])$$, '42704', 'queue "nope" does not exist',
    'tq_lease of an unknown queue among known ones: 42704');
SELECT throws_ok($$SELECT tq_alter_queue('nope', max_attempts => 2)$$, '42704', NULL, 'tq_alter_queue of an unknown queue: 42704');
SELECT throws_ok($$SELECT tq_drop_queue('nope')$$, '42704', NULL, 'tq_drop_queue of an unknown queue: 42704');
SELECT throws_ok($$SELECT tq_cancel('nope')$$, '42704', NULL, 'tq_cancel of an unknown queue: 42704');
SELECT throws_ok($$SELECT tq_pause('nope')$$, '42704', NULL, 'tq_pause of an unknown queue: 42704');
SELECT throws_ok($$SELECT tq_resume('nope')$$, '42704', NULL, 'tq_resume of an unknown queue: 42704');
SELECT throws_ok($$SELECT tq_retry_dead('nope')$$, '42704', NULL, 'tq_retry_dead of an unknown queue: 42704');
SELECT throws_ok($$SELECT tq_purge('nope')$$, '42704', NULL, 'tq_purge of an unknown queue: 42704');

CREATE TEMP TABLE caught (call text, state text, hint text);
DO $$
DECLARE
    calls text[] := ARRAY[
        $c$SELECT tq_submit('nope', '{}')$c$,
        $c$SELECT tq_submit_many('nope', ARRAY['{}']::jsonb[])$c$,
        $c$SELECT * FROM tq_lease('w', ARRAY['nope'])$c$,
        $c$SELECT tq_alter_queue('nope')$c$,
        $c$SELECT tq_drop_queue('nope')$c$,
        $c$SELECT tq_cancel('nope')$c$,
        $c$SELECT tq_pause('nope')$c$,
        $c$SELECT tq_resume('nope')$c$,
        $c$SELECT tq_retry_dead('nope')$c$,
        $c$SELECT tq_purge('nope')$c$];
    c text;
    st text;
    h text;
BEGIN
    FOREACH c IN ARRAY calls LOOP
        BEGIN
            EXECUTE c;
            INSERT INTO caught VALUES (c, 'no error', NULL);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, h = PG_EXCEPTION_HINT;
            INSERT INTO caught VALUES (c, st, h);
        END;
    END LOOP;
END
$$;
SELECT is((SELECT hint FROM caught WHERE call LIKE 'SELECT tq_submit(%'), $$Create it first: SELECT tq_create_queue('nope');$$,
    'the unknown-queue hint of tq_submit says how to create the queue');
SELECT is(ARRAY(SELECT call FROM caught WHERE hint IS NULL OR hint NOT LIKE '%tq_create_queue(''nope'')%' ORDER BY call), '{}'::text[],
    'every entry point''s unknown-queue error hints at tq_create_queue with the queue''s name');
SELECT is(ARRAY(SELECT DISTINCT state FROM caught), ARRAY['42704'], 'every entry point reports an unknown queue as 42704');

------------------------------------------------------------------------------
-- Queue names: 42602; duplicates: 42710; NULL: 22004.
------------------------------------------------------------------------------
SELECT throws_ok($$SELECT tq_create_queue('')$$, '42602', NULL, 'an empty queue name: 42602');
SELECT throws_ok($$SELECT tq_create_queue('1st')$$, '42602', NULL, 'a queue name starting with a digit: 42602');
SELECT throws_ok($$SELECT tq_create_queue('_q')$$, '42602', NULL, 'a queue name starting with _: 42602');
SELECT throws_ok($$SELECT tq_create_queue('a b')$$, '42602', NULL, 'a queue name with a space: 42602');
SELECT throws_ok($$SELECT tq_create_queue('a;drop table x')$$, '42602', NULL, 'a queue name with ; : 42602');
SELECT throws_ok($$SELECT tq_create_queue('a"b')$$, '42602', NULL, 'a queue name with a double quote: 42602');
SELECT throws_ok($$SELECT tq_create_queue('naïve')$$, '42602', NULL, 'a queue name with a non-ASCII letter: 42602');
SELECT throws_ok($$SELECT tq_create_queue(E'q\n')$$, '42602', NULL, 'a queue name with a newline: 42602');
SELECT throws_ok(format('SELECT tq_create_queue(%L)', repeat('q', 64)), '42602', NULL, 'a 64-byte queue name: 42602');
SELECT throws_ok($$SELECT tq_create_queue(NULL)$$, '22004', NULL, 'a NULL queue name: 22004');
SELECT throws_ok($$SELECT tq_create_queue('ok')$$, '42710', 'queue "ok" already exists', 'an existing queue name: 42710');
SELECT throws_ok($$SELECT tq_submit(NULL, '{}')$$, '22004', NULL, 'tq_submit with a NULL queue: 22004');
SELECT throws_ok($$SELECT tq_submit_many(NULL, ARRAY['{}']::jsonb[])$$, '22004', NULL, 'tq_submit_many with a NULL queue: 22004');
SELECT throws_ok($$SELECT tq_alter_queue(NULL)$$, '22004', NULL, 'tq_alter_queue with a NULL queue: 22004');
SELECT throws_ok($$SELECT tq_drop_queue(NULL)$$, '22004', NULL, 'tq_drop_queue with a NULL queue: 22004');
SELECT throws_ok($$SELECT tq_pause(NULL)$$, '22004', NULL, 'tq_pause with a NULL queue: 22004');
SELECT throws_ok($$SELECT tq_cancel(NULL::text)$$, '22004', NULL, 'tq_cancel with a NULL queue: 22004');
SELECT throws_ok($$SELECT tq_purge(NULL)$$, '22004', NULL, 'tq_purge with a NULL queue: 22004');
SELECT is((SELECT count(*)::int FROM tq.queue WHERE name NOT IN ('bad', 'ok')), 0, 'no refused tq_create_queue created a queue');

------------------------------------------------------------------------------
-- Queue options out of range: 22023 (NULL where required: 22004).
------------------------------------------------------------------------------
-- Every interval argument out of its range is 22023 "<what> is out of range".
SELECT throws_ok($$SELECT tq_create_queue('o1', max_attempts => 0)$$, '22023', NULL, 'max_attempts 0: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', max_attempts => 1001)$$, '22023', NULL, 'max_attempts 1001: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', max_attempts => NULL)$$, '22004', NULL, 'max_attempts NULL: 22004');
SELECT throws_ok($$SELECT tq_create_queue('o1', lease => '0')$$, '22023', NULL, 'lease 0: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', lease => '-1 minute')$$, '22023', NULL, 'a negative lease: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', lease => '8 days')$$, '22023', NULL, 'lease 8 days: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', lease => NULL)$$, '22004', NULL, 'lease NULL: 22004');
SELECT throws_ok($$SELECT tq_create_queue('o1', backoff_base => '0')$$, '22023', NULL, 'backoff_base 0: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', backoff_base => '2 days', backoff_cap => '3 days')$$, '22023', NULL, 'backoff_base 2 days: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', backoff_cap => '31 days')$$, '22023', NULL, 'backoff_cap 31 days: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', backoff_base => '1 minute', backoff_cap => '30 seconds')$$, '22023',
    'backoff_base must not exceed backoff_cap', 'backoff_base above backoff_cap: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', dedup_window => '-1 second')$$, '22023', NULL, 'a negative dedup_window: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', dedup_window => '367 days')$$, '22023', NULL, 'dedup_window 367 days: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', retention => '59 seconds')$$, '22023', NULL, 'retention under a minute: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', retention => '101 years')$$, '22023', NULL, 'retention 101 years: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', backlog_limit => 0)$$, '22023', NULL, 'backlog_limit 0: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', backlog_limit => -5)$$, '22023', NULL, 'a negative backlog_limit: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', timeout => '0.5 seconds')$$, '22023', NULL, 'timeout under a second: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', timeout => '8 days')$$, '22023', NULL, 'timeout 8 days: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', throttle_limit => -1)$$, '22023', NULL, 'a negative throttle_limit: 22023');
SELECT throws_ok($$SELECT tq_create_queue('o1', throttle_limit => 100001)$$, '22023', NULL, 'throttle_limit 100001: 22023');
SELECT is((SELECT count(*)::int FROM tq.queue WHERE name = 'o1'), 0, 'no refused option created the queue');

SELECT throws_ok($$SELECT tq_alter_queue('ok', max_attempts => 0)$$, '22023', NULL, 'tq_alter_queue max_attempts 0: 22023');
SELECT throws_ok($$SELECT tq_alter_queue('ok', lease => '0')$$, '22023', NULL, 'tq_alter_queue lease 0: 22023');
SELECT throws_ok($$SELECT tq_alter_queue('ok', backoff_cap => '1 millisecond')$$, '22023', NULL,
    'tq_alter_queue backoff_cap below the existing backoff_base: 22023');
SELECT throws_ok($$SELECT tq_alter_queue('ok', retention => '1 second')$$, '22023', NULL, 'tq_alter_queue retention 1 second: 22023');
SELECT throws_ok($$SELECT tq_alter_queue('ok', backlog_limit => -1)$$, '22023', NULL, 'tq_alter_queue backlog_limit -1: 22023');
SELECT throws_ok($$SELECT tq_alter_queue('ok', timeout => '-1 second')$$, '22023', NULL, 'tq_alter_queue negative timeout: 22023');
SELECT throws_ok($$SELECT tq_alter_queue('ok', throttle_limit => -1)$$, '22023', NULL, 'tq_alter_queue throttle_limit -1: 22023');
SELECT throws_ok($$SELECT tq_alter_queue('ok', dedup_window => '400 days')$$, '22023', NULL, 'tq_alter_queue dedup_window 400 days: 22023');
SELECT results_eq($$SELECT max_attempts, lease, retention FROM tq_queues WHERE queue = 'ok'$$,
    $$VALUES (25, interval '1 minute', interval '7 days')$$, 'no refused tq_alter_queue changed the queue');

SELECT throws_ok($$SELECT tq_drop_queue('ok')$$, '55006', NULL, 'tq_drop_queue of a queue with live tasks: 55006');

------------------------------------------------------------------------------
-- Payloads.
------------------------------------------------------------------------------
SELECT throws_ok($$SELECT tq_submit('bad', NULL)$$, '22004', NULL, 'a NULL payload: 22004');
SELECT throws_ok($$SELECT tq_submit('bad', '[1, 2]')$$, '22023', 'task payload must be a JSON object', 'a JSON array payload: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '"text"')$$, '22023', NULL, 'a JSON string payload: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '42')$$, '22023', NULL, 'a JSON number payload: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', 'null')$$, '22023', NULL, 'a JSON null payload: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{"unclosed": ')$$, '22P02', NULL, 'malformed JSON text: 22P02');
SELECT throws_ok($$SELECT tq_submit('bad', '{"a": 1}}'::jsonb)$$, '22P02', NULL, 'JSON text with trailing garbage: 22P02');

SET LOCAL tq.max_payload_size = '1kB';
SELECT throws_ok(format('SELECT tq_submit(%L, %L)', 'bad', jsonb_build_object('blob', repeat('x', 2000))), '54000',
    'task payload is too large', 'a payload over tq.max_payload_size: 54000');
SELECT throws_ok(format('SELECT tq_submit_many(%L, ARRAY[%L, %L]::jsonb[])', 'bad', '{}', jsonb_build_object('blob', repeat('x', 2000))),
    '54000', NULL, 'a batch with a payload over tq.max_payload_size: 54000');
SELECT lives_ok(format('SELECT tq_submit(%L, %L)', 'ok', jsonb_build_object('small', repeat('x', 500))),
    'a payload within tq.max_payload_size is accepted');
SELECT tq_submit('ok', '{"big": 1}', priority => 100) AS big \gset
SELECT count(*) FROM tq_lease('w', ARRAY['ok'], 1);
SELECT throws_ok(format('SELECT tq_complete(%s, 1, %L)', :big, jsonb_build_object('blob', repeat('x', 2000))), '54000',
    'task result is too large', 'a result over tq.max_payload_size: 54000');
SELECT is((SELECT state::text FROM tq.task WHERE id = :big), 'running', 'a refused result leaves the task running');
RESET tq.max_payload_size;
SELECT tq_complete(:big, 1);

------------------------------------------------------------------------------
-- Submit options.
------------------------------------------------------------------------------
SELECT throws_ok($$SELECT tq_submit('bad', '{}', priority => 32768)$$, '22023', NULL, 'priority 32768: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', priority => -32769)$$, '22023', NULL, 'priority -32769: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', priority => NULL)$$, '22004', NULL, 'priority NULL: 22004');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', max_attempts => 0)$$, '22023', NULL, 'max_attempts 0: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', max_attempts => 1001)$$, '22023', NULL, 'max_attempts 1001: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', timeout => '0')$$, '22023', NULL, 'timeout 0: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', timeout => '8 days')$$, '22023', NULL, 'timeout 8 days: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', run_at => now() + interval '1 hour', expires_at => now() + interval '30 minutes')$$,
    '22023', 'expires_at must lie after run_at and after now', 'expires_at before run_at: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', run_at => now() + interval '1 hour', expires_at => now() + interval '1 hour')$$,
    '22023', NULL, 'expires_at equal to run_at: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', expires_at => now() - interval '1 second')$$, '22023', NULL, 'expires_at in the past: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', tenant => '')$$, '22023', NULL, 'an empty tenant: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', tenant => E'acme\n')$$, '22023', NULL, 'a tenant with a newline: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', tenant => E'a\tb')$$, '22023', NULL, 'a tenant with a tab: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', tenant => E'a\x7fb')$$, '22023', NULL, 'a tenant with DEL: 22023');
SELECT throws_ok(format('SELECT tq_submit(%L, %L, tenant => %L)', 'bad', '{}', repeat('t', 201)), '22023', NULL, 'a 201-byte tenant: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', dedup_key => '')$$, '22023', NULL, 'an empty dedup_key: 22023');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', dedup_key => E'k\r')$$, '22023', NULL, 'a dedup_key with a carriage return: 22023');
SELECT throws_ok(format('SELECT tq_submit(%L, %L, dedup_key => %L)', 'bad', '{}', repeat('k', 513)), '22023', NULL, 'a 513-byte dedup_key: 22023');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'bad'), 0, 'no refused tq_submit inserted a task');
SELECT is((SELECT count(*)::int FROM tq.dedup WHERE queue = 'bad'), 0, 'no refused tq_submit took a dedup key');

------------------------------------------------------------------------------
-- tq_submit_many: bad arrays, and nothing half-written.
------------------------------------------------------------------------------
SELECT throws_ok($$SELECT tq_submit_many('bad', NULL)$$, '22004', NULL, 'tq_submit_many with NULL payloads: 22004');
SELECT throws_ok($$SELECT tq_submit_many('bad', ARRAY['{}', NULL]::jsonb[])$$, '22004', NULL, 'tq_submit_many with a NULL payload element: 22004');
SELECT throws_ok($$SELECT tq_submit_many('bad', ARRAY['{}', '[]']::jsonb[])$$, '22023', NULL, 'tq_submit_many with an array element: 22023');
SELECT throws_ok($$SELECT tq_submit_many('bad', ARRAY['{}', '{}']::jsonb[], dedup_keys => ARRAY['a'])$$, '2202E', NULL,
    'tq_submit_many with fewer dedup_keys than payloads: 2202E');
SELECT throws_ok($$SELECT tq_submit_many('bad', ARRAY['{}']::jsonb[], dedup_keys => ARRAY['a', 'b'])$$, '2202E', NULL,
    'tq_submit_many with more dedup_keys than payloads: 2202E');
SELECT throws_ok($$SELECT tq_submit_many('bad', ARRAY['{}', '{}']::jsonb[], dedup_keys => ARRAY['a', ''])$$, '22023', NULL,
    'tq_submit_many with an empty dedup key: 22023');
SELECT throws_ok($$SELECT tq_submit_many('bad', ARRAY['{}']::jsonb[], priority => 40000)$$, '22023', NULL, 'tq_submit_many priority 40000: 22023');
SELECT throws_ok($$SELECT tq_submit_many('bad', ARRAY['{}']::jsonb[], tenant => '')$$, '22023', NULL, 'tq_submit_many with an empty tenant: 22023');
SELECT throws_ok($$SELECT tq_submit_many('bad', ARRAY['{}']::jsonb[], expires_at => now())$$, '22023', NULL,
    'tq_submit_many with expires_at now: 22023');
SELECT throws_ok($$SELECT tq_submit_many('bad', ARRAY['{"n": 1}', '{"n": 2}', '"bad"', '{"n": 4}']::jsonb[],
                                        dedup_keys => ARRAY['h1', 'h2', 'h3', 'h4'])$$,
    '22023', 'payload 3 of 4: task payload must be a JSON object',
    'tq_submit_many with one bad payload in the middle: 22023, naming the payload');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'bad'), 0, 'nothing half-written: no task of the refused batch exists');
SELECT is((SELECT count(*)::int FROM tq.dedup WHERE queue = 'bad'), 0, 'nothing half-written: no dedup key of the refused batch is taken');
SELECT lives_ok($$SELECT tq_submit_many('bad', ARRAY['{"n": 1}', '{"n": 2}']::jsonb[], dedup_keys => ARRAY['h1', 'h2'])$$,
    'the same keys can be submitted after the refused batch');

------------------------------------------------------------------------------
-- backlog_limit: 53400.  ('bad' holds 2 of 5.)
------------------------------------------------------------------------------
SELECT throws_ok($$SELECT tq_submit_many('bad', array_fill('{}'::jsonb, ARRAY[4]))$$, '53400', 'queue "bad" is full',
    'a batch that would pass backlog_limit: 53400');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'bad'), 2, 'a batch refused for the backlog inserts nothing');
SELECT lives_ok($$SELECT tq_submit_many('bad', array_fill('{}'::jsonb, ARRAY[3]))$$, 'a batch that fills the backlog exactly is accepted');
SELECT throws_ok($$SELECT tq_submit('bad', '{}')$$, '53400', NULL, 'a submit to a full queue: 53400');
SELECT throws_ok($$SELECT tq_submit('bad', '{}', run_at => now() + interval '1 day')$$, '53400', NULL,
    'a delayed submit to a full queue: 53400 (scheduled tasks count)');

------------------------------------------------------------------------------
-- tq_lease arguments.
------------------------------------------------------------------------------
SELECT throws_ok($$SELECT * FROM tq_lease(NULL, ARRAY['ok'])$$, '22004', NULL, 'tq_lease with a NULL worker: 22004');
SELECT throws_ok($$SELECT * FROM tq_lease('', ARRAY['ok'])$$, '22023', NULL, 'tq_lease with an empty worker: 22023');
SELECT throws_ok($$SELECT * FROM tq_lease(E'w\n1', ARRAY['ok'])$$, '22023', NULL, 'tq_lease with a control character in the worker: 22023');
SELECT throws_ok($$SELECT * FROM tq_lease('w', NULL)$$, '22004', NULL, 'tq_lease with NULL queues: 22004');
SELECT throws_ok($$SELECT * FROM tq_lease('w', '{}')$$, '22004', NULL, 'tq_lease with no queues: 22004');
SELECT throws_ok($$SELECT * FROM tq_lease('w', ARRAY['ok', NULL])$$, '22004', NULL, 'tq_lease with a NULL queue name: 22004');
SELECT throws_ok($$SELECT * FROM tq_lease('w', ARRAY['ok'], 0)$$, '22023', NULL, 'tq_lease with max 0: 22023');
SELECT throws_ok($$SELECT * FROM tq_lease('w', ARRAY['ok'], -1)$$, '22023', NULL, 'tq_lease with a negative max: 22023');
SELECT throws_ok($$SELECT * FROM tq_lease('w', ARRAY['ok'], 10001)$$, '22023', NULL, 'tq_lease with max 10001: 22023');
SELECT throws_ok($$SELECT * FROM tq_lease('w', ARRAY['ok'], NULL)$$, '22004', NULL, 'tq_lease with max NULL: 22004');
SELECT throws_ok($$SELECT * FROM tq_lease('w', ARRAY['ok'], 1, lease => '0')$$, '22023', NULL, 'tq_lease with lease 0: 22023');
SELECT throws_ok($$SELECT * FROM tq_lease('w', ARRAY['ok'], 1, lease => '8 days')$$, '22023', NULL, 'tq_lease with lease 8 days: 22023');
SELECT is((SELECT state::text FROM tq.task WHERE id = :ready), 'ready', 'no refused tq_lease leased a task');

------------------------------------------------------------------------------
-- Finish calls: NULL ids (22004), mismatched arrays (2202E), bad modes (22023).
------------------------------------------------------------------------------
SELECT throws_ok($$SELECT tq_complete(NULL::bigint, 1)$$, '22004', NULL, 'tq_complete with a NULL id: 22004');
SELECT throws_ok(format('SELECT tq_complete(%s, NULL)', :live), '22004', NULL, 'tq_complete with a NULL attempt: 22004');
SELECT throws_ok($$SELECT tq_complete(NULL::bigint[], ARRAY[1])$$, '22004', NULL, 'tq_complete with NULL ids: 22004');
SELECT throws_ok($$SELECT tq_complete(ARRAY[1]::bigint[], NULL)$$, '22004', NULL, 'tq_complete with NULL attempts: 22004');
SELECT throws_ok($$SELECT tq_complete(ARRAY[1, NULL]::bigint[], ARRAY[1, 1])$$, '22004', NULL, 'tq_complete with a NULL id element: 22004');
SELECT throws_ok($$SELECT tq_complete(ARRAY[1, 2]::bigint[], ARRAY[1])$$, '2202E', NULL, 'tq_complete with fewer attempts than ids: 2202E');
SELECT throws_ok($$SELECT tq_complete(ARRAY[1]::bigint[], ARRAY[1], ARRAY['{}', '{}']::jsonb[])$$, '2202E', NULL,
    'tq_complete with more results than ids: 2202E');
SELECT throws_ok($$SELECT tq_fail(NULL::bigint, 1, 'e')$$, '22004', NULL, 'tq_fail with a NULL id: 22004');
SELECT throws_ok(format('SELECT tq_fail(%s, 1, NULL)', :live), '22004', NULL, 'tq_fail with a NULL error: 22004');
SELECT throws_ok(format('SELECT tq_fail(%s, 1, %L, %L)', :live, 'e', 'sometimes'), '22023', 'invalid retry mode "sometimes"',
    'tq_fail with an unknown retry mode: 22023');
SELECT throws_ok(format('SELECT tq_fail(%s, 1, %L, retry_after => %L)', :live, 'e', '-1 second'), '22023', NULL,
    'tq_fail with a negative retry_after: 22023');
SELECT throws_ok(format('SELECT tq_fail(%s, 1, %L, retry_after => %L)', :live, 'e', '31 days'), '22023', NULL,
    'tq_fail with retry_after 31 days: 22023');
SELECT throws_ok($$SELECT tq_fail(ARRAY[1, 2]::bigint[], ARRAY[1, 1], ARRAY['e'])$$, '2202E', NULL, 'tq_fail with fewer errors than ids: 2202E');
SELECT throws_ok($$SELECT tq_fail(ARRAY[1]::bigint[], ARRAY[1], ARRAY['e'], ARRAY['auto', 'never'])$$, '2202E', NULL,
    'tq_fail with more retry modes than ids: 2202E');
SELECT throws_ok($$SELECT tq_fail(ARRAY[1]::bigint[], ARRAY[1], ARRAY['e'], NULL, ARRAY[NULL, NULL]::interval[])$$, '2202E', NULL,
    'tq_fail with more retry_after values than ids: 2202E');
SELECT throws_ok($$SELECT tq_fail(ARRAY[1]::bigint[], ARRAY[1], ARRAY[NULL]::text[])$$, '22004', NULL, 'tq_fail with a NULL error element: 22004');
-- A NULL errors array is a missing value (22004), not a length mismatch.
SELECT throws_ok($$SELECT tq_fail(ARRAY[1]::bigint[], ARRAY[1], NULL::text[])$$, '22004', NULL, 'tq_fail with NULL errors: 22004');
SELECT throws_ok($$SELECT tq_release(NULL::bigint, 1)$$, '22004', NULL, 'tq_release with a NULL id: 22004');
SELECT throws_ok($$SELECT tq_release(ARRAY[1, 2]::bigint[], ARRAY[1])$$, '2202E', NULL, 'tq_release with mismatched arrays: 2202E');
SELECT throws_ok($$SELECT * FROM tq_heartbeat(NULL, ARRAY[1]::bigint[], ARRAY[1])$$, '22004', NULL, 'tq_heartbeat with a NULL worker: 22004');
SELECT throws_ok($$SELECT * FROM tq_heartbeat('w', NULL, ARRAY[1])$$, '22004', NULL, 'tq_heartbeat with NULL ids: 22004');
SELECT throws_ok($$SELECT * FROM tq_heartbeat('w', ARRAY[1, 2]::bigint[], ARRAY[1])$$, '2202E', NULL, 'tq_heartbeat with mismatched arrays: 2202E');
-- tq_heartbeat checks its worker name as tq_lease does.
SELECT throws_ok(format('SELECT * FROM tq_heartbeat(%L, ARRAY[%s]::bigint[], ARRAY[1])', '', :live), '22023', NULL,
    'tq_heartbeat with an empty worker: 22023, as tq_lease');
SELECT is((SELECT state::text FROM tq.task WHERE id = :live), 'running', 'no refused finish call changed the running task');

------------------------------------------------------------------------------
-- Control calls.
------------------------------------------------------------------------------
SELECT throws_ok($$SELECT tq_cancel(NULL::bigint)$$, '22004', NULL, 'tq_cancel with a NULL id: 22004');
SELECT throws_ok($$SELECT tq_cancel(-1::bigint)$$, '42704', 'task -1 does not exist', 'tq_cancel of an unknown task: 42704');
SELECT throws_ok($$SELECT tq_cancel('ok', tenant => '')$$, '22023', NULL, 'tq_cancel with an empty tenant: 22023');
SELECT throws_ok($$SELECT tq_pause('ok', tenant => E'x\ny')$$, '22023', NULL, 'tq_pause with a control character in the tenant: 22023');
SELECT throws_ok($$SELECT tq_resume('ok', tenant => '')$$, '22023', NULL, 'tq_resume with an empty tenant: 22023');
SELECT throws_ok($$SELECT tq_retry(NULL)$$, '22004', NULL, 'tq_retry with a NULL id: 22004');
SELECT throws_ok($$SELECT tq_retry(-1)$$, '42704', 'task -1 does not exist', 'tq_retry of an unknown task: 42704');
SELECT throws_ok(format('SELECT tq_retry(%s)', :done), '55000', format('task %s already succeeded', :done),
    'tq_retry of a succeeded task: 55000');
SELECT throws_ok(format('SELECT tq_retry(%s)', :live), '55000', NULL, 'tq_retry of a running task: 55000');
SELECT throws_ok(format('SELECT tq_retry(%s)', :ready), '55000', NULL, 'tq_retry of a ready task: 55000');
SELECT throws_ok($$SELECT tq_retry_dead('ok', tenant => '')$$, '22023', NULL, 'tq_retry_dead with an empty tenant: 22023');
SELECT throws_ok($$SELECT tq_purge('ok', 'running')$$, '22023', 'cannot purge tasks in state "running"', 'tq_purge of running tasks: 22023');
SELECT throws_ok($$SELECT tq_purge('ok', 'ready')$$, '22023', NULL, 'tq_purge of ready tasks: 22023');
SELECT throws_ok($$SELECT tq_purge('ok', 'scheduled')$$, '22023', NULL, 'tq_purge of scheduled tasks: 22023');
SELECT throws_ok($$SELECT tq_purge('ok', 'paused')$$, '22023', NULL, 'tq_purge of paused tasks: 22023');
SELECT throws_ok($$SELECT tq_purge('ok', 'finished')$$, '22023', NULL, 'tq_purge of a state that does not exist: 22023');
SELECT throws_ok($$SELECT tq_purge('ok', 'succeeded', older_than => '-1 day')$$, '22023', NULL, 'tq_purge with a negative older_than: 22023');
SELECT results_eq($$SELECT ready, running, succeeded FROM tq_queue_stats_exact WHERE queue = 'ok'$$,
    $$VALUES (2::bigint, 1::bigint, 2::bigint)$$, 'no refused control call changed the queue');

SELECT * FROM finish();
ROLLBACK;
