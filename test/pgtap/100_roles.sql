-- Roles and privileges: tq_producer submits and reads tasks, tq_worker
-- leases, heartbeats and finishes, tq_admin does everything; nobody else
-- can call the API; SECURITY DEFINER functions pin search_path.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(76);

-- Runs one statement as a role and says how it went: 'ok' or the SQLSTATE.
-- (pgTAP itself must run as the superuser: its bookkeeping tables are ours.)
CREATE FUNCTION pg_temp.as_role(p_role text, p_sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('SET LOCAL ROLE %I', p_role);
    EXECUTE p_sql;
    RESET ROLE;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;   -- the role switch is undone with the failed block
END
$$;

SELECT has_role('tq_producer', 'role tq_producer exists');
SELECT has_role('tq_worker', 'role tq_worker exists');
SELECT has_role('tq_admin', 'role tq_admin exists');
SELECT is((SELECT count(*)::int FROM pg_roles WHERE rolname IN ('tq_producer', 'tq_worker', 'tq_admin') AND NOT rolcanlogin), 3,
    'the tq roles are group roles (NOLOGIN)');
SELECT is_member_of('tq_producer', 'tq_admin', 'tq_admin is a member of tq_producer');
SELECT is_member_of('tq_worker', 'tq_admin', 'tq_admin is a member of tq_worker');

CREATE ROLE tap_app LOGIN IN ROLE tq_producer;
CREATE ROLE tap_worker LOGIN IN ROLE tq_worker;
CREATE ROLE tap_ops LOGIN IN ROLE tq_admin;
CREATE ROLE tap_nobody LOGIN;

------------------------------------------------------------------------------
-- tq_admin: everything.
------------------------------------------------------------------------------
SELECT is(pg_temp.as_role('tap_ops', $$SELECT tq_create_queue('roles_q', max_attempts => 2)$$), 'ok', 'tq_admin can create a queue');
SELECT is(pg_temp.as_role('tap_ops', $$SELECT tq_alter_queue('roles_q', lease => '2 minutes')$$), 'ok', 'tq_admin can alter a queue');
SELECT is(pg_temp.as_role('tap_ops', $$SELECT tq_set_tenant('roles_q', 'big', weight => 3, concurrency => 5)$$), 'ok',
    'tq_admin can set a tenant''s policy');
SELECT is(pg_temp.as_role('tap_ops', 'SELECT * FROM tq_queue_stats_exact'), 'ok', 'tq_admin can read tq_queue_stats_exact');
SELECT is(pg_temp.as_role('tap_ops', $$SELECT tq_create_queue('roles_tmp')$$), 'ok', 'tq_admin can create another queue');
SELECT is(pg_temp.as_role('tap_ops', $$SELECT tq_drop_queue('roles_tmp')$$), 'ok', 'tq_admin can drop a queue');

------------------------------------------------------------------------------
-- tq_producer: submit and read.
------------------------------------------------------------------------------
SELECT is(pg_temp.as_role('tap_app', $$SELECT tq_submit('roles_q', '{"from": "app"}')$$), 'ok', 'tq_producer can tq_submit');
SELECT is(pg_temp.as_role('tap_app', $$SELECT tq_submit_many('roles_q', ARRAY['{"from": "app-many"}']::jsonb[])$$), 'ok',
    'tq_producer can tq_submit_many');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'roles_q'), 2, 'the producer''s tasks are stored');
SELECT is(pg_temp.as_role('tap_app', format('SELECT * FROM tq_task(%s)', (SELECT min(id) FROM tq.task WHERE queue = 'roles_q'))), 'ok',
    'tq_producer can read a task with tq_task');
SELECT is(pg_temp.as_role('tap_app', 'SELECT * FROM tq_queue_stats'), 'ok', 'tq_producer can read tq_queue_stats');
SELECT is(pg_temp.as_role('tap_app', 'SELECT * FROM tq_queues'), 'ok', 'tq_producer can read tq_queues');
SELECT is(pg_temp.as_role('tap_app', 'SELECT * FROM tq_tenants'), 'ok', 'tq_producer can read tq_tenants');
SELECT is(pg_temp.as_role('tap_app', 'SELECT * FROM tq_queue_stats_exact'), '42501',
    'tq_producer cannot read tq_queue_stats_exact (admin only: it scans the tables) (42501)');
SELECT is(pg_temp.as_role('tap_app', $$SELECT tq_set_tenant('roles_q', 't', weight => 2)$$), '42501',
    'tq_producer cannot set a tenant''s policy (42501)');
SELECT is(pg_temp.as_role('tap_app', $$SELECT * FROM tq_lease('w', ARRAY['roles_q'])$$), '42501', 'tq_producer cannot lease (42501)');
SELECT is(pg_temp.as_role('tap_app', $$SELECT tq_complete(1, 1)$$), '42501', 'tq_producer cannot complete (42501)');
SELECT is(pg_temp.as_role('tap_app', $$SELECT tq_fail(1, 1, 'x')$$), '42501', 'tq_producer cannot fail a task (42501)');
SELECT is(pg_temp.as_role('tap_app', $$SELECT * FROM tq_heartbeat('w', ARRAY[1]::bigint[], ARRAY[1])$$), '42501',
    'tq_producer cannot heartbeat (42501)');
SELECT is(pg_temp.as_role('tap_app', $$SELECT tq_create_queue('by_producer')$$), '42501', 'tq_producer cannot create a queue (42501)');
SELECT is(pg_temp.as_role('tap_app', $$SELECT tq_cancel('roles_q')$$), '42501', 'tq_producer cannot cancel a queue''s tasks (42501)');
SELECT is(pg_temp.as_role('tap_app', $$SELECT tq_pause('roles_q')$$), '42501', 'tq_producer cannot pause a queue (42501)');
SELECT is(pg_temp.as_role('tap_app', $$SELECT * FROM tq_maintain()$$), '42501', 'tq_producer cannot run maintenance (42501)');
SELECT is(pg_temp.as_role('tap_app', 'SELECT * FROM tq.task'), '42501', 'tq_producer cannot read the internal tables (42501)');
SELECT is(pg_temp.as_role('tap_app', 'DELETE FROM tq.queue'), '42501', 'tq_producer cannot write the internal tables (42501)');
SELECT is(pg_temp.as_role('tap_app', $$SELECT tq.check_payload('{}')$$), '42501', 'tq_producer cannot call internal functions (42501)');

-- The producer submits through a trigger on a table it writes.
CREATE TABLE public.tap_roles_orders (id int);
CREATE TRIGGER tap_roles_orders_tq AFTER INSERT ON public.tap_roles_orders
    FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('roles_q');
GRANT INSERT ON public.tap_roles_orders TO tap_app, tap_nobody;
SELECT is(pg_temp.as_role('tap_app', 'INSERT INTO public.tap_roles_orders VALUES (1)'), 'ok',
    'tq_producer can submit through tq_submit_trigger');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'roles_q' AND payload = '{"id": 1}'), 1,
    'the triggered task is stored');
SELECT is(pg_temp.as_role('tap_nobody', 'INSERT INTO public.tap_roles_orders VALUES (2)'), '42501',
    'a role without tq_producer cannot submit through the trigger (42501)');

------------------------------------------------------------------------------
-- tq_worker: lease, heartbeat, finish.
------------------------------------------------------------------------------
SELECT is(pg_temp.as_role('tap_worker', $$SELECT * FROM tq_lease('w', ARRAY['roles_q'], 3)$$), 'ok', 'tq_worker can lease');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'roles_q' AND state = 'running'), 3, 'the worker''s lease took the tasks');
SELECT min(id) AS t1, max(id) AS t3, (SELECT id FROM tq.task WHERE queue = 'roles_q' AND state = 'running' ORDER BY id OFFSET 1 LIMIT 1) AS t2
  FROM tq.task WHERE queue = 'roles_q' AND state = 'running' \gset
SELECT is(pg_temp.as_role('tap_worker', format('SELECT * FROM tq_heartbeat(%L, ARRAY[%s]::bigint[], ARRAY[1])', 'w', :t1)), 'ok',
    'tq_worker can heartbeat');
SELECT is(pg_temp.as_role('tap_worker', format('SELECT tq_complete(%s, 1, %L)', :t1, '{"ok": 1}')), 'ok', 'tq_worker can complete');
SELECT is(pg_temp.as_role('tap_worker', format('SELECT tq_fail(%s, 1, %L)', :t2, 'nope')), 'ok', 'tq_worker can fail a task');
SELECT is(pg_temp.as_role('tap_worker', format('SELECT tq_release(%s, 1)', :t3)), 'ok', 'tq_worker can release a task');
SELECT results_eq(format('SELECT state FROM tq_task(%s) UNION ALL SELECT state FROM tq_task(%s) UNION ALL SELECT state FROM tq_task(%s)', :t1, :t2, :t3),
    $$VALUES ('succeeded'), ('scheduled'), ('ready')$$, 'the worker''s calls took effect');
SELECT is(pg_temp.as_role('tap_worker', format('SELECT * FROM tq_task(%s)', :t1)), 'ok', 'tq_worker can read a task');
SELECT is(pg_temp.as_role('tap_worker', 'SELECT * FROM tq_queue_stats'), 'ok', 'tq_worker can read tq_queue_stats');
SELECT is(pg_temp.as_role('tap_worker', 'SELECT * FROM tq_tenants'), 'ok', 'tq_worker can read tq_tenants');
SELECT is(pg_temp.as_role('tap_worker', 'SELECT * FROM tq_queue_stats_exact'), '42501',
    'tq_worker cannot read tq_queue_stats_exact (42501)');
SELECT is(pg_temp.as_role('tap_worker', $$SELECT tq_set_tenant('roles_q', 't', concurrency => 1)$$), '42501',
    'tq_worker cannot set a tenant''s policy (42501)');
SELECT is(pg_temp.as_role('tap_worker', $$SELECT tq_create_queue('by_worker')$$), '42501', 'tq_worker cannot create a queue (42501)');
SELECT is(pg_temp.as_role('tap_worker', $$SELECT tq_drop_queue('roles_q', force => true)$$), '42501', 'tq_worker cannot drop a queue (42501)');
SELECT is(pg_temp.as_role('tap_worker', $$SELECT tq_pause('roles_q')$$), '42501', 'tq_worker cannot pause a queue (42501)');
SELECT is(pg_temp.as_role('tap_worker', format('SELECT tq_retry(%s)', :t2)), '42501', 'tq_worker cannot retry a task (42501)');
SELECT is(pg_temp.as_role('tap_worker', $$SELECT tq_purge('roles_q')$$), '42501', 'tq_worker cannot purge (42501)');

------------------------------------------------------------------------------
-- tq_admin again: the control functions, and the producer and worker sides.
------------------------------------------------------------------------------
SELECT is(pg_temp.as_role('tap_ops', $$SELECT tq_pause('roles_q', tenant => 't')$$), 'ok', 'tq_admin can pause a tenant');
SELECT is(pg_temp.as_role('tap_ops', $$SELECT tq_resume('roles_q', tenant => 't')$$), 'ok', 'tq_admin can resume a tenant');
SELECT is(pg_temp.as_role('tap_ops', format('SELECT tq_retry(%s)', :t2)), 'ok', 'tq_admin can retry a task');
SELECT is(pg_temp.as_role('tap_ops', $$SELECT tq_retry_dead('roles_q')$$), 'ok', 'tq_admin can retry dead tasks');
SELECT is(pg_temp.as_role('tap_ops', $$SELECT tq_submit('roles_q', '{"from": "ops"}')$$), 'ok', 'tq_admin can submit');
SELECT is(pg_temp.as_role('tap_ops', $$SELECT * FROM tq_lease('ops', ARRAY['roles_q'], 1)$$), 'ok', 'tq_admin can lease');
SELECT is(pg_temp.as_role('tap_ops', $$SELECT tq_cancel('roles_q')$$), 'ok', 'tq_admin can cancel a queue''s tasks');
SELECT is(pg_temp.as_role('tap_ops', $$SELECT tq_purge('roles_q', 'succeeded')$$), 'ok', 'tq_admin can purge');
SELECT is(pg_temp.as_role('tap_ops', $$SELECT * FROM tq_maintain()$$), 'ok', 'tq_admin can run maintenance');
SELECT is(pg_temp.as_role('tap_ops', $$SELECT tq_drop_queue('roles_q', force => true)$$), 'ok', 'tq_admin can drop a queue with force');

------------------------------------------------------------------------------
-- Everybody else: nothing.
------------------------------------------------------------------------------
SELECT tq_create_queue('roles_q2');
SELECT is(pg_temp.as_role('tap_nobody', $$SELECT tq_submit('roles_q2', '{}')$$), '42501', 'a role without a tq role cannot submit (42501)');
SELECT is(pg_temp.as_role('tap_nobody', $$SELECT * FROM tq_lease('w', ARRAY['roles_q2'])$$), '42501', 'a role without a tq role cannot lease (42501)');
SELECT is(pg_temp.as_role('tap_nobody', 'SELECT * FROM tq_task(1)'), '42501', 'a role without a tq role cannot read tasks (42501)');
SELECT is(pg_temp.as_role('tap_nobody', 'SELECT * FROM tq_queue_stats'), '42501', 'a role without a tq role cannot read tq_queue_stats (42501)');
SELECT is(pg_temp.as_role('tap_nobody', 'SELECT * FROM tq_tenants'), '42501', 'a role without a tq role cannot read tq_tenants (42501)');

-- No function of the extension is executable by PUBLIC.
SELECT is(ARRAY(
    SELECT p.oid::regprocedure::text
      FROM pg_proc p
      JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
      JOIN pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_extension'::regclass
     WHERE e.extname = 'tq' AND has_function_privilege('public', p.oid, 'EXECUTE')
     ORDER BY 1), '{}'::text[],
    'no function of the extension is executable by PUBLIC');

------------------------------------------------------------------------------
-- SECURITY DEFINER functions pin search_path.
------------------------------------------------------------------------------
CREATE TEMP VIEW tq_functions AS
    SELECT p.oid, p.oid::regprocedure::text AS signature, p.prosecdef, p.proconfig
      FROM pg_proc p
      JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
      JOIN pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_extension'::regclass
     WHERE e.extname = 'tq';
SELECT cmp_ok((SELECT count(*)::int FROM tq_functions WHERE prosecdef), '>=', 19,
    'the API functions that touch tables are SECURITY DEFINER (19 of them)');
SELECT is(ARRAY(SELECT signature FROM tq_functions f JOIN pg_proc p ON p.oid = f.oid
                 WHERE NOT f.prosecdef AND p.pronamespace = 'public'::regnamespace ORDER BY 1),
          ARRAY['tq_complete(bigint,integer,jsonb)', 'tq_fail(bigint,integer,text,text,interval)',
                'tq_rate_consume(text,integer,double precision,double precision)',
                'tq_release(bigint,integer)', 'tq_submit_trigger()', 'tq_worker_status()'],
    'the only API functions running as the caller are the single-task wrappers, the trigger, and tq_rate_consume and tq_worker_status (shared memory only)');
SELECT is(ARRAY(SELECT signature FROM tq_functions
                 WHERE prosecdef AND NOT ('search_path=pg_catalog, pg_temp' = ANY (coalesce(proconfig, '{}')))
                 ORDER BY 1),
          ARRAY['tq_submit(text,jsonb,timestamp with time zone,integer,text,text,integer,interval,timestamp with time zone,text)'],
    'every SECURITY DEFINER function of the extension has SET search_path = pg_catalog, pg_temp, but tq_submit (C; every name in its queries is schema-qualified)');
SELECT is(ARRAY(SELECT signature FROM tq_functions f JOIN pg_proc p ON p.oid = f.oid
                 WHERE f.prosecdef AND p.proowner <> (SELECT extowner FROM pg_extension WHERE extname = 'tq')
                 ORDER BY 1), '{}'::text[],
    'every SECURITY DEFINER function is owned by the extension''s owner');
-- Internal helpers run under the calling API function's pinned search_path
-- (they carry no SET of their own, see the install script), which is safe
-- only as long as nobody else can call them.  The exceptions are
-- tq.shared_counts(), tq.activity() and tq.shared_usage(): the live views
-- (tq_queue_stats, tq_tenants, tq_queue_activity, tq_shared_usage) call
-- them as the reader, so the tq roles
-- must be able to execute them; they are SECURITY DEFINER with a pinned
-- search_path (checked above) and only read shared memory.  And, since
-- 0.7.0, the tenant binding's view helpers: tq.caller(), tq.caller_bound()
-- and tq.tenant_allowed() (C, they read only the caller's own grants) and
-- tq.tenant_grants() (SECURITY DEFINER, the caller's own rows).
SELECT is(ARRAY(SELECT f.signature FROM tq_functions f JOIN pg_proc p ON p.oid = f.oid
                 WHERE p.pronamespace = 'tq'::regnamespace
                   AND (has_function_privilege('public', f.oid, 'EXECUTE')
                        OR has_function_privilege('tq_producer', f.oid, 'EXECUTE')
                        OR has_function_privilege('tq_worker', f.oid, 'EXECUTE')
                        OR has_function_privilege('tq_admin', f.oid, 'EXECUTE'))
                 ORDER BY 1), ARRAY['tq.activity(integer)', 'tq.caller()', 'tq.caller_bound()', 'tq.shared_counts()',
                                    'tq.shared_usage()', 'tq.tenant_allowed(text,text)', 'tq.tenant_grants()'],
    'no internal function in schema tq is executable by PUBLIC or the tq roles, except those the views call');
SELECT ok((SELECT prosecdef FROM pg_proc WHERE oid = 'tq.shared_counts()'::regprocedure)
          AND NOT has_function_privilege('public', 'tq.shared_counts()', 'EXECUTE'),
    'tq.shared_counts() is SECURITY DEFINER and not executable by PUBLIC');
SELECT ok((SELECT prosecdef FROM pg_proc WHERE oid = 'tq.shared_usage()'::regprocedure)
          AND NOT has_function_privilege('public', 'tq.shared_usage()', 'EXECUTE')
          AND has_table_privilege('tq_producer', 'tq_shared_usage', 'SELECT')
          AND has_table_privilege('tq_worker', 'tq_shared_usage', 'SELECT'),
    'tq.shared_usage() is SECURITY DEFINER and not executable by PUBLIC; the tq roles read tq_shared_usage');
SELECT ok(NOT has_schema_privilege('tq_admin', 'tq', 'USAGE') AND NOT has_schema_privilege('public', 'tq', 'USAGE'),
    'schema tq is closed to PUBLIC and the tq roles');

SELECT * FROM finish();
ROLLBACK;
