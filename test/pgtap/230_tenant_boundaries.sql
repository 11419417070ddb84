-- Tenants as boundaries (issue 15): each attack a holder of the documented
-- roles tried against 0.6.0, run as that role, and the refusal it now
-- gets.  Items 3 and 4 (tenants), 5 (leases), 9 (keeping a task alive)
-- and 10 (line separators in labels).
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(82);

-- Runs one statement as a role: 'ok' or the SQLSTATE.
CREATE FUNCTION pg_temp.as_role(p_role text, p_sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('SET LOCAL ROLE %I', p_role);
    EXECUTE p_sql;
    RESET ROLE;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END
$$;
-- Runs a query as a role and returns its single value as text.
CREATE FUNCTION pg_temp.val(p_role text, p_sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v text;
BEGIN
    EXECUTE format('SET LOCAL ROLE %I', p_role);
    EXECUTE p_sql INTO v;
    RESET ROLE;
    RETURN v;
END
$$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pg_temp TO PUBLIC;

CREATE ROLE tb_a LOGIN IN ROLE tq_producer;
CREATE ROLE tb_b LOGIN IN ROLE tq_producer;
CREATE ROLE tb_free LOGIN IN ROLE tq_producer;
CREATE ROLE tb_w1 LOGIN IN ROLE tq_worker;
CREATE ROLE tb_w2 LOGIN IN ROLE tq_worker;
CREATE ROLE tb_ops LOGIN IN ROLE tq_admin;
SELECT tq_create_queue('tb_q');
SELECT tq_create_queue('tb_q2');

------------------------------------------------------------------------------
-- Binding: only tq_admin binds; admins cannot be bound.
------------------------------------------------------------------------------
SELECT is(pg_temp.as_role('tb_a', $$SELECT tq_grant_tenant('tb_a', 'b')$$), '42501',
    'a producer cannot bind itself to another tenant');
SELECT is(pg_temp.as_role('tb_ops', $$SELECT tq_grant_tenant('tb_a', 'a')$$), 'ok', 'tq_admin binds tb_a to tenant a');
SELECT ok(tq_grant_tenant('tb_b', 'b'), 'binding tb_b to tenant b');
SELECT ok(NOT tq_grant_tenant('tb_b', 'b'), 'binding again says false');
SELECT is(pg_temp.as_role('tb_ops', $$SELECT tq_grant_tenant('tb_ops', 'a')$$), '0LP01',
    'a member of tq_admin cannot be bound (0LP01)');
SELECT throws_ok($$SELECT tq_grant_tenant('tb_a', E'x\ny')$$, '22023', NULL, 'a bad tenant label is refused');
SELECT throws_ok($$SELECT tq_grant_tenant('tb_a', 'a', 'no_such_q')$$, '42704', NULL, 'an unknown queue is refused');
SELECT throws_ok($$SELECT tq_grant_tenant('tb_a', NULL)$$, '22004', NULL, 'a NULL tenant is refused');
SELECT is(pg_temp.val('tb_a', $$SELECT string_agg(tenant, ',') FROM tq_tenant_grants$$), 'a',
    'a bound role sees its own grants only');
SELECT is(pg_temp.val('tb_ops', $$SELECT count(*) FROM tq_tenant_grants WHERE role::text LIKE 'tb_%'$$), '2',
    'tq_admin sees every grant');

------------------------------------------------------------------------------
-- Item 4: a bound producer submits only as its tenants.
------------------------------------------------------------------------------
SELECT is(pg_temp.as_role('tb_b', $$SELECT tq_submit('tb_q', '{}', tenant => 'a')$$), '42501',
    'tb_b cannot submit as tenant a (the fast path)');
SELECT is(pg_temp.as_role('tb_b', $$SELECT tq_submit('tb_q', '{}')$$), '42501',
    'tb_b cannot submit without a tenant');
SELECT is(pg_temp.as_role('tb_b', $$SELECT tq_submit('tb_q', '{}', tenant => 'a', dedup_key => 'k')$$), '42501',
    'tb_b cannot submit as tenant a (the slow path)');
SELECT is(pg_temp.as_role('tb_b', $$SELECT tq_submit_many('tb_q', ARRAY['{}'::jsonb], tenant => 'a')$$), '42501',
    'tb_b cannot submit many as tenant a');
SELECT throws_ok($$SELECT pg_temp.val('tb_b', 'SELECT tq_submit(''tb_q'', ''{}'', tenant => ''a'')')$$, '42501',
    'role "tb_b" may not submit as tenant "a" to queue "tb_q"', 'the refusal names role, tenant and queue');
SELECT is(pg_temp.as_role('tb_b', $$SELECT tq_submit('tb_q', '{}', tenant => 'b')$$), 'ok', 'tb_b submits as b');
SELECT is(pg_temp.as_role('tb_free', $$SELECT tq_submit('tb_q', '{}', tenant => 'a')$$), 'ok',
    'an unbound producer keeps today''s behaviour: any tenant');
-- A grant for one queue holds in that queue only.
SELECT tq_grant_tenant('tb_a', 'a2', 'tb_q');
SELECT is(pg_temp.as_role('tb_a', $$SELECT tq_submit('tb_q', '{}', tenant => 'a2')$$), 'ok', 'a2 in tb_q: granted');
SELECT is(pg_temp.as_role('tb_a', $$SELECT tq_submit('tb_q2', '{}', tenant => 'a2')$$), '42501', 'a2 in tb_q2: not granted');
SELECT is(pg_temp.as_role('tb_a', $$SELECT tq_submit('tb_q2', '{}', tenant => 'a')$$), 'ok', 'a in every queue');
-- SET ROLE to a bound role binds the session (the connection-pool pattern).
SELECT is(pg_temp.as_role('tb_b', $$SELECT tq_submit('tb_q', '{}', tenant => 'a')$$), '42501',
    'SET ROLE to a bound role is bound');

-- Dedup keys are per tenant: a taking key k first does not capture b's submit.
SELECT pg_temp.val('tb_a', $$SELECT tq_submit('tb_q', '{"who": "a"}', tenant => 'a', dedup_key => 'order-1')$$) AS a_task \gset
SELECT pg_temp.val('tb_b', $$SELECT tq_submit('tb_q', '{"who": "b"}', tenant => 'b', dedup_key => 'order-1')$$) AS b_task \gset
SELECT isnt(:'a_task'::bigint, :'b_task'::bigint, 'the same dedup key in another tenant is another task');
SELECT is((SELECT payload ->> 'who' FROM tq.task WHERE id = :b_task), 'b', 'b''s task was inserted with b''s payload');
SELECT is(pg_temp.val('tb_b', $$SELECT tq_submit('tb_q', '{"who": "b"}', tenant => 'b', dedup_key => 'order-1')$$),
    :'b_task', 'within the tenant the key still deduplicates');

------------------------------------------------------------------------------
-- Item 3: a bound producer reads, waits on and cancels only its tenants' tasks.
------------------------------------------------------------------------------
SELECT pg_temp.val('tb_a', $$SELECT tq_submit('tb_q', '{"secret": 1}', tenant => 'a')$$) AS a_id \gset
SELECT is(pg_temp.val('tb_b', format('SELECT count(*) FROM tq_task(%s)', :a_id)), '0', 'tq_task: b gets no row of a''s task');
SELECT is(pg_temp.val('tb_b', format('SELECT count(*) FROM tq_task_log(%s)', :a_id)), '0', 'tq_task_log: no rows');
SELECT is(pg_temp.val('tb_b', format('SELECT count(*) FROM tq_task_trace(%s)', :a_id)), '0', 'tq_task_trace: no rows');
SELECT is(pg_temp.val('tb_b', format('SELECT count(*) FROM tq_wait(%s, ''10 seconds'')', :a_id)), '0',
    'tq_wait: no row');
SELECT cmp_ok((SELECT extract(epoch FROM clock_timestamp() - now())::numeric), '<', 5::numeric,
    'and tq_wait returned at once, without waiting');
SELECT is(pg_temp.val('tb_a', format('SELECT payload ->> ''secret'' FROM tq_task(%s)', :a_id)), '1', 'a reads its own task');
SELECT is(pg_temp.val('tb_free', format('SELECT count(*) FROM tq_task(%s)', :a_id)), '1',
    'an unbound producer reads any task (documented)');
SELECT is(pg_temp.val('tb_b', $$SELECT string_agg(DISTINCT coalesce(tenant, '-'), ',') FROM tq_tenants WHERE queue = 'tb_q'$$),
    'b', 'tq_tenants shows b its own tenant only');
SELECT is(pg_temp.val('tb_free', $$SELECT string_agg(DISTINCT coalesce(tenant, '-'), ',' ORDER BY coalesce(tenant, '-')) FROM tq_tenants WHERE queue = 'tb_q'$$),
    'a,a2,b', 'an unbound producer sees every tenant');
SELECT is(pg_temp.as_role('tb_b', format('SELECT tq_cancel(%s)', :a_id)), '42704',
    'b cannot cancel a''s task: unknown to it (42704)');
SELECT is((SELECT state::text FROM tq.task WHERE id = :a_id), 'ready', 'a''s task is untouched');
SELECT is(pg_temp.val('tb_a', format('SELECT tq_cancel(%s)', :a_id)), 'true', 'a cancels its own task');
SELECT is(pg_temp.as_role('tb_free', format('SELECT tq_cancel(%s)', :b_task)), '42501',
    'an unbound producer cannot cancel (as before: tq_admin only)');
-- tq_dead for a bound role that is also a worker.
CREATE ROLE tb_aw LOGIN IN ROLE tq_worker;
SELECT tq_grant_tenant('tb_aw', 'a');
SELECT tq_submit('tb_q', '{}', tenant => 'b', max_attempts => 1) AS dead_b \gset
SELECT tq_fail(l.id, l.attempt, 'boom', 'never') FROM tq_lease('t', '{tb_q}', 100) l WHERE l.id = :dead_b;
SELECT is(pg_temp.val('tb_aw', format('SELECT count(*) FROM tq_dead WHERE id = %s', :dead_b)), '0',
    'tq_dead hides another tenant''s dead task from a bound role');
SELECT is(pg_temp.val('tb_w1', format('SELECT count(*) FROM tq_dead WHERE id = %s', :dead_b)), '1',
    'an unbound worker sees it');
-- Revoking unbinds.
SELECT is(tq_revoke_tenant('tb_aw'), 1, 'tq_revoke_tenant removes the grant');
SELECT is(pg_temp.val('tb_aw', format('SELECT count(*) FROM tq_dead WHERE id = %s', :dead_b)), '1',
    'and the role is unbound again');

------------------------------------------------------------------------------
-- Item 5: a lease is acted on only by the role that holds it.
------------------------------------------------------------------------------
SELECT tq_purge('tb_q');
SELECT tq_cancel('tb_q');
SELECT tq_submit('tb_q', '{}', tenant => 't5') AS t5 \gset
CREATE TEMP TABLE l5 (id bigint, queue text, payload jsonb, attempt integer, lease_until timestamptz,
                      tenant text, priority smallint, timeout interval, traceparent text, lease_token bigint);
GRANT ALL ON l5 TO PUBLIC;
SELECT pg_temp.as_role('tb_w1', $$INSERT INTO l5 SELECT * FROM tq_lease('w1', '{tb_q}', 1)$$) = 'ok' AS leased;
SELECT is((SELECT count(*)::int FROM l5), 1, 'tb_w1 leased the task');
SELECT ok((SELECT lease_token > 0 FROM l5), 'tq_lease returns a lease token');
SELECT is(pg_temp.val('tb_w2', format('SELECT (tq_complete(ARRAY[%s]::bigint[], ARRAY[1], ARRAY[''{"forged": 1}''::jsonb]))[1]', :t5)),
    'false', 'another worker role cannot complete it');
SELECT is(pg_temp.val('tb_w2', format('SELECT (tq_fail(ARRAY[%s]::bigint[], ARRAY[1], ARRAY[''x''], ARRAY[''never'']))[1]', :t5)),
    'false', 'nor fail it');
SELECT is(pg_temp.val('tb_w2', format('SELECT (tq_release(ARRAY[%s]::bigint[], ARRAY[1]))[1]', :t5)), 'false', 'nor release it');
SELECT is(pg_temp.val('tb_w2', format('SELECT reason FROM tq_heartbeat(''w2'', ARRAY[%s]::bigint[], ARRAY[1])', :t5)),
    'lost', 'nor extend it: lost');
SELECT is(pg_temp.val('tb_w2', format('SELECT tq_append_log(ARRAY[%s]::bigint[], ARRAY[1], ARRAY[''["forged"]''::jsonb])', :t5)),
    '0', 'nor log into it');
SELECT is(pg_temp.val('tb_w1', format('SELECT (tq_complete(ARRAY[%s]::bigint[], ARRAY[1], NULL, ARRAY[%s + 1]))[1]',
                                      :t5, (SELECT lease_token FROM l5))),
    'false', 'the holder quoting a wrong token changes nothing');
SELECT is((SELECT state::text FROM tq.task WHERE id = :t5), 'running', 'the task still runs');
SELECT is(pg_temp.val('tb_w1', format('SELECT reason FROM tq_heartbeat(''w1'', ARRAY[%s]::bigint[], ARRAY[1], ARRAY[%s])',
                                      :t5, (SELECT lease_token FROM l5))),
    NULL::text, 'the holder''s heartbeat with its token extends it');
SELECT is(pg_temp.val('tb_w1', format('SELECT (tq_complete(ARRAY[%s]::bigint[], ARRAY[1], NULL, ARRAY[%s]))[1]',
                                      :t5, (SELECT lease_token FROM l5))),
    'true', 'the holder completes with its token');
SELECT is((SELECT result FROM tq.history WHERE id = :t5), NULL, 'and no forged result was stored');
-- Tokens are never handed out twice: a re-lease of the same attempt after a
-- release gets a new one, and the old one is refused.
SELECT tq_submit('tb_q', '{}') AS t6 \gset
SELECT l.lease_token AS tok1 FROM tq_lease('w', '{tb_q}', 1) l \gset
SELECT tq_release(:t6, 1);
SELECT l.lease_token AS tok2 FROM tq_lease('w', '{tb_q}', 1) l \gset
SELECT isnt(:'tok1'::bigint, :'tok2'::bigint, 'a new lease of the task gets a new token');
SELECT is((tq_complete(ARRAY[:t6]::bigint[], ARRAY[2], NULL, ARRAY[:tok1]::bigint[]))[1], false, 'the old token is refused');
SELECT is((SELECT count(DISTINCT tq.lease_token())::int FROM generate_series(1, 1000)), 1000,
    '1000 tokens are distinct');
SELECT is(pg_temp.val('tb_ops', format('SELECT (tq_complete(ARRAY[%s]::bigint[], ARRAY[2]))[1]', :t6)), 'true',
    'tq_admin may finish any lease (operators)');

------------------------------------------------------------------------------
-- Item 9: a task cannot be kept alive for good.
------------------------------------------------------------------------------
SELECT tq_create_queue('tb_rel', max_attempts => 2, backoff_base => '1 second');
SELECT tq_submit('tb_rel', '{}') AS r \gset
DO $$
BEGIN
    FOR i IN 1 .. 2 LOOP
        PERFORM tq_release(l.id, l.attempt) FROM tq_lease('w', '{tb_rel}', 1) l;
    END LOOP;
END
$$;
SELECT is((SELECT state::text || ' ' || free_attempts FROM tq.task WHERE id = :r), 'ready 2',
    'two releases are free (max_attempts 2)');
SELECT ok((SELECT tq_release(l.id, l.attempt) FROM tq_lease('w', '{tb_rel}', 1) l), 'the third release is taken');
SELECT is((SELECT state::text FROM tq.task WHERE id = :r), 'scheduled', '... as a failed attempt: the task backs off');
SELECT alike((SELECT last_error FROM tq.task WHERE id = :r), 'released 3 times%', 'and says why');
UPDATE tq.task SET run_at = now() WHERE id = :r;
SELECT tq.promote(ARRAY['tb_rel']);
SELECT ok((SELECT tq_release(l.id, l.attempt) FROM tq_lease('w', '{tb_rel}', 1) l), 'the fourth release is taken');
SELECT is((SELECT state::text FROM tq.history WHERE id = :r), 'dead', '... and the task is dead: attempts used up');
-- 150 lease/release cycles of a task with many attempts keep 100 trace entries.
SELECT tq_create_queue('tb_cyc', max_attempts => 1000);
SELECT tq_submit('tb_cyc', '{}') AS c \gset
DO $$
BEGIN
    FOR i IN 1 .. 150 LOOP
        PERFORM tq_release(l.id, l.attempt) FROM tq_lease('w', '{tb_cyc}', 1) l;
    END LOOP;
END
$$;
SELECT is((SELECT jsonb_array_length(trace) FROM tq.task WHERE id = :c), 100, 'a task keeps its last 100 attempts in its trace');
SELECT is((SELECT (trace -> -1 ->> 'attempt')::int FROM tq.task WHERE id = :c), 150, '... the newest ones');
-- A 5 MB log line is cut.
SELECT l.id AS lid, l.attempt AS latt FROM tq_lease('w', '{tb_cyc}', 1) l \gset
SELECT tq_append_log(ARRAY[:lid]::bigint[], ARRAY[:latt], ARRAY[jsonb_build_array(repeat('x', 5000000))]);
SELECT cmp_ok((SELECT max(length(line)) FROM tq_task_log(:lid)), '<', 4200, 'a 5 MB log line is stored cut to 4096 characters');
SELECT alike((SELECT line FROM tq_task_log(:lid) ORDER BY n DESC LIMIT 1), '%[cut: 4995904 more characters]', 'saying so');
-- run_at must be finite and less than 10 years ahead.
SELECT throws_ok($$SELECT tq_submit('tb_q', '{}', run_at => 'infinity')$$, '22023', 'run_at is too far in the future',
    'run_at infinity is refused');
SELECT throws_ok($$SELECT tq_submit('tb_q', '{}', run_at => now() + interval '11 years')$$, '22023', NULL,
    'run_at 11 years ahead is refused');
SELECT throws_ok($$SELECT tq_submit_many('tb_q', ARRAY['{}'::jsonb], run_at => 'infinity')$$, '22023', NULL,
    'tq_submit_many too');
SELECT lives_ok($$SELECT tq_submit('tb_q', '{}', run_at => now() + interval '9 years')$$, '9 years ahead is fine');
SELECT lives_ok($$SELECT tq_submit('tb_q', '{}', run_at => '-infinity')$$, '-infinity means now');

------------------------------------------------------------------------------
-- Item 10: line separators and C1 controls in labels.
------------------------------------------------------------------------------
SELECT throws_ok($$SELECT tq_submit('tb_q', '{}', tenant => E'x\u2028y')$$, '22023', NULL, 'tenant with U+2028 (fast path)');
SELECT throws_ok($$SELECT tq_submit('tb_q', '{}', tenant => E'x\u2029y')$$, '22023', NULL, 'tenant with U+2029');
SELECT throws_ok($$SELECT tq_submit('tb_q', '{}', tenant => E'x\u0085y')$$, '22023', NULL, 'tenant with U+0085 (NEL)');
SELECT throws_ok($$SELECT tq_submit('tb_q', '{}', tenant => E'x\u009by')$$, '22023', NULL, 'tenant with U+009B (CSI)');
SELECT throws_ok($$SELECT tq_submit('tb_q', '{}', dedup_key => E'k\u2028')$$, '22023', NULL, 'dedup key with U+2028');
SELECT throws_ok($$SELECT tq_submit_many('tb_q', ARRAY['{}'::jsonb], tenant => E'x\u2029')$$, '22023', NULL, 'tq_submit_many');
SELECT throws_ok($$SELECT tq_set_tenant('tb_q', E'x\u0085')$$, '22023', NULL, 'tq_set_tenant');
SELECT throws_ok($$SELECT * FROM tq_lease(E'w\u2028', '{tb_q}')$$, '22023', NULL, 'worker name with U+2028');
SELECT throws_ok($$SELECT * FROM tq_lease(E'w\u2028', '{tb_q}')$$, '22023',
    'worker name contains a control character or line separator', 'the message says what is wrong');
SELECT lives_ok($$SELECT tq_submit('tb_q', '{}', tenant => 'ünïcødé ✓ テナント')$$, 'other non-ASCII text is fine');

SELECT * FROM finish();
ROLLBACK;
