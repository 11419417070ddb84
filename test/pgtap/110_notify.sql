-- Notifications: the settings, and (through dblink, when it is installed)
-- what a listener receives: tq_ready at most once per queue and transaction,
-- never per row of a bulk submit, none with tq.producer_notify off, none for
-- tasks that are not ready; tq_done with a JSON array of {id, queue, state},
-- one notification for a whole batch.
--
-- NOTIFY is delivered at commit, which this file (one rolled-back
-- transaction) never reaches; so a second and a third session, opened with
-- dblink, submit and listen.  They commit into this database, in a queue of
-- their own that they drop again at the end.  This transaction takes no lock
-- on tq's tables before they are done, so they cannot wait for it.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(21);

-- The settings.
SELECT is(current_setting('tq.producer_notify'), 'on', 'tq.producer_notify exists and is on by default');
SET LOCAL tq.producer_notify = off;
SELECT is(current_setting('tq.producer_notify'), 'off', 'tq.producer_notify can be turned off in a session');
SET LOCAL tq.producer_notify = on;
SELECT is(current_setting('tq.producer_notify'), 'on', 'tq.producer_notify can be turned on again');
SELECT is((SELECT context FROM pg_settings WHERE name = 'tq.producer_notify'), 'user',
    'tq.producer_notify can be set by any user (no restart, no superuser)');
SELECT is((SELECT vartype FROM pg_settings WHERE name = 'tq.producer_notify'), 'bool', 'tq.producer_notify is a boolean');
SELECT throws_ok($$SET tq.no_such_setting = 1$$, '42602', NULL,
    'the tq. prefix is reserved: a misspelt setting is an error, not a silent placeholder');

-- Everything below needs dblink.
CREATE FUNCTION pg_temp.have_dblink() RETURNS boolean LANGUAGE sql AS
    $$ SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'dblink') $$;

CREATE FUNCTION pg_temp.setup() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    conn text := format('host=%s port=%s dbname=%s user=%s',
                        split_part(current_setting('unix_socket_directories'), ',', 1),
                        current_setting('port'), current_database(), current_user);
BEGIN
    IF NOT pg_temp.have_dblink() THEN
        RETURN false;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'dblink') THEN
        CREATE SCHEMA tap_dblink;                           -- both rolled back with this file
        CREATE EXTENSION dblink SCHEMA tap_dblink;
    END IF;
    PERFORM set_config('search_path',
                       (SELECT current_setting('search_path') || ', ' || quote_ident(n.nspname)
                          FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace
                         WHERE x.extname = 'dblink'), true);
    PERFORM dblink_connect('tap_listener', conn);
    PERFORM dblink_connect('tap_producer', conn);
    PERFORM dblink_exec('tap_producer', 'SET lock_timeout = ''10s''');
    PERFORM dblink_exec('tap_producer', 'SET client_min_messages = warning');
    PERFORM dblink_exec('tap_producer', 'SELECT tq_drop_queue(''tap_notify'', force => true) FROM tq_queues WHERE queue = ''tap_notify''; RESET application_name');
    PERFORM dblink_exec('tap_producer', 'SELECT tq_create_queue(''tap_notify''); RESET application_name');
    PERFORM dblink_exec('tap_listener', 'LISTEN tq_ready');
    PERFORM dblink_exec('tap_listener', 'LISTEN tq_done');
    RETURN true;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'tq notify test: cannot open dblink sessions: %', SQLERRM;
    RETURN false;
END
$$;

-- Runs one transaction in the producer session, then returns what the
-- listener received because of it.  The listener's round trip makes delivery
-- deterministic: the producer's commit has signalled the listener's backend
-- before its COMMIT returned, and a backend sends pending notifications
-- before it reports ready for the next query.  (The statements go in one
-- query string, one implicit transaction unless they say BEGIN; the closing
-- RESET makes the last result a command, as dblink_exec requires.)
CREATE FUNCTION pg_temp.received(p_sql text) RETURNS TABLE (channel text, payload text) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dblink_exec('tap_producer', p_sql || '; RESET application_name');
    PERFORM dblink_exec('tap_listener', 'RESET application_name');
    RETURN QUERY SELECT n.notify_name, n.extra FROM dblink_get_notify('tap_listener') n;
END
$$;

CREATE TEMP TABLE got (step text, channel text, payload text);
-- The producer's tq_lease may run (and commit) a maintenance pass; put the
-- schedule back afterwards.
SELECT next_maintenance AS saved_next_maintenance FROM tq.meta \gset
-- In the database tq's background worker serves, tq_ready is sent by the
-- worker, asynchronously (test/tap/004_background_worker.pl covers that);
-- this file checks the in-transaction path of every other database.
SELECT coalesce((SELECT s.database = d.oid FROM tq_worker_status() s, pg_database d
                  WHERE s.running AND d.datname = current_database()), false) AS worker_serves \gset
\if :worker_serves
SELECT false AS have_sessions \gset
\else
SELECT pg_temp.setup() AS have_sessions \gset
\endif

\if :have_sessions
    INSERT INTO got SELECT 'drain', * FROM pg_temp.received('SELECT 1');

    INSERT INTO got SELECT 'single', * FROM pg_temp.received($$SELECT tq_submit('tap_notify', '{}')$$);
    SELECT results_eq($$SELECT channel, payload FROM got WHERE step = 'single'$$,
        $$VALUES ('tq_ready', 'tap_notify')$$, 'a submit of a ready task sends one tq_ready with the queue name');

    INSERT INTO got SELECT 'bulk', * FROM pg_temp.received(
        $$SELECT tq_submit_many('tap_notify', array_fill('{}'::jsonb, ARRAY[500]))$$);
    SELECT results_eq($$SELECT channel, payload FROM got WHERE step = 'bulk'$$,
        $$VALUES ('tq_ready', 'tap_notify')$$, 'a bulk submit of 500 tasks sends one tq_ready, not one per row');

    INSERT INTO got SELECT 'txn', * FROM pg_temp.received(
        $$BEGIN; SELECT tq_submit('tap_notify', '{}'); SELECT tq_submit('tap_notify', '{}');
          SELECT tq_submit_many('tap_notify', ARRAY['{}', '{}']::jsonb[]); COMMIT$$);
    SELECT results_eq($$SELECT channel, payload FROM got WHERE step = 'txn'$$,
        $$VALUES ('tq_ready', 'tap_notify')$$, 'several submits in one transaction send one tq_ready');

    INSERT INTO got SELECT 'off', * FROM pg_temp.received(
        $$SET tq.producer_notify = off; SELECT tq_submit('tap_notify', '{}')$$);
    SELECT is((SELECT count(*)::int FROM got WHERE step = 'off'), 0, 'with tq.producer_notify off a submit sends nothing');

    INSERT INTO got SELECT 'delayed', * FROM pg_temp.received(
        $$SET tq.producer_notify = on; SELECT tq_submit('tap_notify', '{}', run_at => now() + interval '1 hour')$$);
    SELECT is((SELECT count(*)::int FROM got WHERE step = 'delayed'), 0, 'a submit of a task that is not ready yet sends nothing');

    INSERT INTO got SELECT 'rollback', * FROM pg_temp.received(
        $$BEGIN; SELECT tq_submit('tap_notify', '{}'); ROLLBACK$$);
    SELECT is((SELECT count(*)::int FROM got WHERE step = 'rollback'), 0, 'a rolled-back submit sends nothing');

    INSERT INTO got SELECT 'done', * FROM pg_temp.received(
        $$SELECT tq_complete(l.id, l.attempt) FROM tq_lease('tap-w', ARRAY['tap_notify'], 1) l$$);
    SELECT is((SELECT count(*)::int FROM got WHERE step = 'done' AND channel = 'tq_done'), 1, 'a completed task sends one tq_done');
    SELECT is((SELECT jsonb_array_length(payload::jsonb) FROM got WHERE step = 'done' AND channel = 'tq_done'), 1,
        'tq_done of one task is an array of one');
    SELECT is((SELECT payload::jsonb->0->>'state' FROM got WHERE step = 'done' AND channel = 'tq_done'), 'succeeded',
        'tq_done carries the final state');
    SELECT is((SELECT payload::jsonb->0->>'queue' FROM got WHERE step = 'done' AND channel = 'tq_done'), 'tap_notify',
        'tq_done carries the queue');
    SELECT ok((SELECT (payload::jsonb->0->>'id')::bigint > 0 FROM got WHERE step = 'done' AND channel = 'tq_done'),
        'tq_done carries the task id');

    INSERT INTO got SELECT 'dead', * FROM pg_temp.received(
        $$SELECT tq_fail(l.id, l.attempt, 'x', 'never') FROM tq_lease('tap-w', ARRAY['tap_notify'], 3) l$$);
    SELECT results_eq($$SELECT channel, payload::jsonb->0->>'state' FROM got WHERE step = 'dead'$$,
        $$VALUES ('tq_done', 'dead'), ('tq_done', 'dead'), ('tq_done', 'dead')$$,
        'each task finished by its own call sends its own tq_done with its final state');

    INSERT INTO got SELECT 'batch', * FROM pg_temp.received(
        $$SELECT tq_submit_many('tap_notify', ARRAY['{}', '{}', '{}']::jsonb[]);
          WITH l AS (SELECT * FROM tq_lease('tap-w', ARRAY['tap_notify'], 3))
          SELECT tq_complete(array_agg(l.id), array_agg(l.attempt)) FROM l$$);
    SELECT results_eq($$SELECT jsonb_array_length(payload::jsonb),
                               (SELECT array_agg(DISTINCT e->>'state') FROM jsonb_array_elements(payload::jsonb) e)
                          FROM got WHERE step = 'batch' AND channel = 'tq_done'$$,
        $$VALUES (3, ARRAY['succeeded'])$$,
        'a batch of three completions sends one tq_done listing all three');

    INSERT INTO got SELECT 'retry', * FROM pg_temp.received(
        $$SELECT tq_fail(l.id, l.attempt, 'x') FROM tq_lease('tap-w', ARRAY['tap_notify'], 1) l$$);
    SELECT is((SELECT count(*)::int FROM got WHERE step = 'retry'), 0, 'a failed attempt that will be retried sends no tq_done');

    INSERT INTO got SELECT 'cleanup', * FROM pg_temp.received(format(
        $$SELECT tq_drop_queue('tap_notify', force => true); UPDATE tq.meta SET next_maintenance = %L$$,
        :'saved_next_maintenance'));
    SELECT is((SELECT count(*)::int FROM dblink('tap_producer', 'SELECT 1 FROM tq_queues WHERE queue = ''tap_notify''') AS t(x int)), 0,
        'the helper queue is dropped again');
    SELECT dblink_disconnect('tap_listener');
    SELECT dblink_disconnect('tap_producer');
\else
    SELECT skip('no dblink sessions (see the warning above): notifications cannot be observed from one rolled-back transaction', 15);
\endif

SELECT * FROM finish();
ROLLBACK;
