-- Fair dispatch: tenants share a queue in proportion to their weights
-- (start-time fair queuing on the dispatch key tq.task.vkey), priority is
-- bounded by priority_aging, and tq_set_tenant / the new queue options
-- refuse bad input.
--
-- Every check counts leases, never time: the order tq_lease claims in is a
-- function of what was submitted, so the shares below are exact up to the
-- size of a lease batch.  The virtual clocks live in shared memory and
-- outlive this file's ROLLBACK; every queue here is created by this file
-- (the pgTAP database is made afresh for each run).
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(62);

SELECT has_function('public', 'tq_set_tenant',
    ARRAY['text', 'text', 'double precision', 'double precision', 'double precision', 'integer', 'bigint'],
    'tq_set_tenant(queue, tenant, weight, rate_per_sec, burst, concurrency, backlog_limit) exists');
SELECT has_view('public', 'tq_tenants', 'view tq_tenants exists');

-- The lease log: every task tq_lease returned, in the order of the calls.
CREATE TEMP TABLE leased (seq bigserial, call int, queue text, id bigint, tenant text, priority int);

-- Calls tq_lease(max => p_max) p_calls times on one queue; returns how
-- many tasks were leased.
CREATE FUNCTION pg_temp.lease(p_queue text, p_max int, p_calls int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    n int;
    total int := 0;
    c int;
BEGIN
    FOR i IN 1 .. p_calls LOOP
        c := (SELECT coalesce(max(call), 0) + 1 FROM leased);
        INSERT INTO leased (call, queue, id, tenant, priority)
        SELECT c, l.queue, l.id, l.tenant, l.priority FROM tq_lease('fair-worker', ARRAY[p_queue], p_max) l;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
    END LOOP;
    RETURN total;
END
$$;

-- Leases in batches of p_max until task p_id has been leased; returns how
-- many tasks were leased up to and including the batch that returned it
-- (NULL if the queue ran dry first).
CREATE FUNCTION pg_temp.leases_until(p_queue text, p_id bigint, p_max int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    n int;
    total int := 0;
BEGIN
    LOOP
        n := pg_temp.lease(p_queue, p_max, 1);
        total := total + n;
        IF EXISTS (SELECT 1 FROM leased WHERE id = p_id) THEN
            RETURN total;
        END IF;
        IF n = 0 THEN
            RETURN NULL;
        END IF;
    END LOOP;
END
$$;

------------------------------------------------------------------------------
-- Equal weights: a tenant with 100x the backlog gets no more than the others.
------------------------------------------------------------------------------
SELECT tq_create_queue('fair_share');
-- The flooding tenant submits first: in FIFO order it would get every lease.
SELECT cardinality(tq_submit_many('fair_share', array_fill('{}'::jsonb, ARRAY[20000]), tenant => 't00'));
SELECT cardinality(tq_submit_many('fair_share', array_fill('{}'::jsonb, ARRAY[200]), tenant => format('t%s', to_char(g, 'FM00'))))
  FROM generate_series(1, 9) g;
SELECT is(pg_temp.lease('fair_share', 50, 20), 1000, 'fair_share: 20 leases of 50 return 1000 tasks');
SELECT is((SELECT count(DISTINCT tenant)::int FROM leased WHERE queue = 'fair_share'), 10,
    'every one of the 10 backlogged tenants gets leases');
SELECT is(ARRAY(SELECT tenant || ': ' || count(*) FROM leased WHERE queue = 'fair_share'
                 GROUP BY tenant HAVING count(*) NOT BETWEEN 95 AND 105 ORDER BY tenant),
          '{}'::text[],
    'over 1000 leases every tenant of equal weight gets 10% (within 5%), the one with 100x the backlog too');

------------------------------------------------------------------------------
-- Weights 1:2:4.
------------------------------------------------------------------------------
SELECT tq_create_queue('fair_weight');
SELECT lives_ok($$SELECT tq_set_tenant('fair_weight', 'w1', weight => 1),
                         tq_set_tenant('fair_weight', 'w2', weight => 2),
                         tq_set_tenant('fair_weight', 'w4', weight => 4)$$,
    'tq_set_tenant sets weights');
SELECT results_eq($$SELECT tenant, weight FROM tq_tenants WHERE queue = 'fair_weight' ORDER BY tenant$$,
    $$VALUES ('w1', 1::float8), ('w2', 2::float8), ('w4', 4::float8)$$,
    'tq_tenants shows each tenant''s weight, before it has any task');
SELECT cardinality(tq_submit_many('fair_weight', array_fill('{}'::jsonb, ARRAY[1000]), tenant => t))
  FROM unnest(ARRAY['w4', 'w2', 'w1']) t;
SELECT is(pg_temp.lease('fair_weight', 50, 14), 700, 'fair_weight: 14 leases of 50 return 700 tasks');
SELECT results_eq(
    $$SELECT tenant, count(*) BETWEEN 0.9 * share AND 1.1 * share
        FROM leased JOIN (VALUES ('w1', 100), ('w2', 200), ('w4', 400)) s(t, share) ON s.t = tenant
       WHERE queue = 'fair_weight' GROUP BY tenant, share ORDER BY tenant$$,
    $$VALUES ('w1', true), ('w2', true), ('w4', true)$$,
    'over 700 leases tenants of weight 1, 2 and 4 get 100, 200 and 400 (within 10%)');
SELECT results_eq(
    $$SELECT t.tenant, t.leased FROM tq_tenants t WHERE t.queue = 'fair_weight' ORDER BY 1$$,
    $$SELECT tenant, count(*) FROM leased WHERE queue = 'fair_weight' GROUP BY 1 ORDER BY 1$$,
    'tq_tenants.leased counts each tenant''s claims');

------------------------------------------------------------------------------
-- A newcomer is placed at the queue's virtual time, not behind the backlog.
------------------------------------------------------------------------------
SELECT tq_create_queue('fair_new');
SELECT cardinality(tq_submit_many('fair_new', array_fill('{}'::jsonb, ARRAY[150]), tenant => format('n%s', g)))
  FROM generate_series(1, 9) g;
SELECT is(pg_temp.lease('fair_new', 10, 30), 300, 'fair_new: 300 of the 9 tenants'' 1350 tasks are leased');
SELECT tq_submit('fair_new', '{}', tenant => 'newcomer') AS newcomer \gset
SELECT cmp_ok(pg_temp.leases_until('fair_new', :newcomer, 10), '<=', 9 + 10,
    'a new tenant''s one task is leased within (9 active tenants + one batch of 10) leases');
SELECT tq_submit('fair_new', '{}', tenant => 'newcomer') AS newcomer2 \gset
SELECT cmp_ok(pg_temp.leases_until('fair_new', :newcomer2, 10), '<=', 9 + 10,
    'and so is its next task, submitted after the first was leased');

-- A tenant whose submit rolled back consumed no service: its next task is
-- placed like any newcomer's.
SELECT tq_create_queue('fair_rollback');
SELECT cardinality(tq_submit_many('fair_rollback', array_fill('{}'::jsonb, ARRAY[150]), tenant => format('n%s', g)))
  FROM generate_series(1, 9) g;
SELECT pg_temp.lease('fair_rollback', 10, 10);
SAVEPOINT flood;
SELECT cardinality(tq_submit_many('fair_rollback', array_fill('{}'::jsonb, ARRAY[1000]), tenant => 'undone'));
ROLLBACK TO SAVEPOINT flood;
SELECT tq_submit('fair_rollback', '{}', tenant => 'undone') AS undone \gset
SELECT cmp_ok(pg_temp.leases_until('fair_rollback', :undone, 10), '<=', 9 + 10,
    'a tenant whose earlier submit of 1000 tasks was rolled back still gets its next task within (9 active tenants + one batch) leases');

-- (A tenant whose queued tasks were cancelled: see 170_limits.sql, which
-- commits the cancel, as the count drops when the cancel commits.)

------------------------------------------------------------------------------
-- A released task keeps its key and goes back to the head.
------------------------------------------------------------------------------
SELECT tq_create_queue('fair_release');
SELECT cardinality(tq_submit_many('fair_release', array_fill('{}'::jsonb, ARRAY[5]), tenant => t))
  FROM unnest(ARRAY['a', 'b']) t;
SELECT l.id AS rel_id, l.attempt AS rel_attempt FROM tq_lease('fair-worker', ARRAY['fair_release'], 1) l \gset
SELECT pg_temp.lease('fair_release', 1, 1);
SELECT is(tq_release(:rel_id, :rel_attempt), true, 'the first leased task is released');
SELECT is((SELECT id FROM tq_lease('fair-worker', ARRAY['fair_release'], 1)), :rel_id::bigint,
    'a released task is leased again before the tasks behind it');

------------------------------------------------------------------------------
-- Priority: strict by default ...
------------------------------------------------------------------------------
SELECT tq_create_queue('fair_prio');
CREATE TEMP TABLE prio_sub AS
SELECT o, p, tq_submit('fair_prio', jsonb_build_object('o', o), priority => p, tenant => t) AS id
  FROM unnest(ARRAY[0, 5, 0, 5, -1, 100, -1, 0],
              ARRAY[NULL, 'x', 'y', NULL, 'x', 'z', NULL, 'x']) WITH ORDINALITY AS u(p, t, o);
SELECT is(pg_temp.lease('fair_prio', 1, 8), 8, 'fair_prio: 8 tasks are leased one at a time');
SELECT results_eq(
    $$SELECT l.id FROM leased l WHERE l.queue = 'fair_prio' ORDER BY l.seq$$,
    $$SELECT id FROM prio_sub ORDER BY p DESC, o$$,
    'with the default priority_aging, higher priority is leased first (across tenants too), and equal priorities in submission order');

------------------------------------------------------------------------------
-- ... and bounded by priority_aging.
------------------------------------------------------------------------------
-- One tenant (the NULL tenant), so a round is one task.  Submission round
-- r has priority 0, +32767 or -32767 in turn; with priority_aging 20 no
-- shift exceeds 10 rounds either way.
SELECT tq_create_queue('fair_aging', priority_aging => 20);
SELECT is((SELECT priority_aging FROM tq_queues WHERE queue = 'fair_aging'), 20::float8, 'tq_queues shows priority_aging');
CREATE TEMP TABLE aging_sub AS
SELECT r, p, tq_submit('fair_aging', jsonb_build_object('r', r), priority => p) AS id
  FROM (SELECT r, (ARRAY[0, 32767, -32767])[r % 3 + 1] AS p FROM generate_series(0, 89) r) s
 ORDER BY r;
SELECT is(pg_temp.lease('fair_aging', 1, 90), 90, 'fair_aging: 90 tasks are leased one at a time');
CREATE TEMP TABLE aging_order AS
    SELECT s.r, s.p, l.seq FROM aging_sub s JOIN leased l ON l.id = s.id;
SELECT is((SELECT count(*)::int FROM aging_order a JOIN aging_order b ON b.r - a.r > 20 AND b.seq < a.seq), 0,
    'no task is overtaken by a task submitted more than priority_aging (20) rounds after it, whatever the priorities');
SELECT is((SELECT count(*)::int FROM aging_order a JOIN aging_order b ON b.r > a.r + 20 AND b.seq < a.seq
            WHERE a.p = 0 AND b.p = 32767), 0,
    'a priority-0 task is leased before every priority-32767 task submitted more than priority_aging rounds later');
SELECT ok((SELECT count(*) FROM aging_order a JOIN aging_order b ON b.r > a.r AND b.r - a.r <= 9 AND b.p > a.p) > 0
          AND (SELECT count(*) FROM aging_order a JOIN aging_order b ON b.r > a.r AND b.r - a.r <= 9 AND b.p > a.p
                WHERE b.seq > a.seq) = 0,
    'a higher-priority task still goes ahead of lower-priority tasks submitted up to 9 rounds before it');
SELECT ok((SELECT count(*) FROM aging_order a JOIN aging_order b ON b.r > a.r AND b.seq < a.seq) > 0,
    'priority does reorder the queue: some tasks are overtaken');

-- A fresh priority_aging applies to tasks becoming ready from then on.
SELECT lives_ok($$SELECT tq_alter_queue('fair_aging', priority_aging => 1000000)$$,
    'tq_alter_queue changes priority_aging');
SELECT is((SELECT priority_aging FROM tq_queues WHERE queue = 'fair_aging'), 1000000::float8,
    'tq_queues shows the new priority_aging');

------------------------------------------------------------------------------
-- tq_set_tenant: the policy shows in tq_tenants; defaults reset it.
------------------------------------------------------------------------------
SELECT tq_create_queue('fair_policy');
SELECT lives_ok($$SELECT tq_set_tenant('fair_policy', 'acme', weight => 2.5, rate_per_sec => 10, burst => 20,
                                       concurrency => 3, backlog_limit => 100)$$,
    'tq_set_tenant accepts every option');
SELECT results_eq(
    $$SELECT weight, rate_per_sec, burst, concurrency, backlog_limit, held FROM tq_tenants
       WHERE queue = 'fair_policy' AND tenant = 'acme'$$,
    $$VALUES (2.5::float8, 10::float8, 20::float8, 3, 100::bigint, false)$$,
    'tq_tenants shows the tenant''s policy');
SELECT lives_ok($$SELECT tq_set_tenant('fair_policy', 'acme')$$, 'tq_set_tenant with only queue and tenant');
SELECT results_eq(
    $$SELECT weight, rate_per_sec, burst, concurrency, backlog_limit FROM tq_tenants
       WHERE queue = 'fair_policy' AND tenant = 'acme'$$,
    $$VALUES (1::float8, NULL::float8, NULL::float8, NULL::int, NULL::bigint)$$,
    'tq_set_tenant with defaults resets the tenant to weight 1 and no limits');
SELECT lives_ok($$SELECT tq_set_tenant('fair_policy', 'light', weight => 0.001),
                         tq_set_tenant('fair_policy', 'heavy', weight => 1000000)$$,
    'weights 0.001 and 1000000 (the bounds) are accepted');

------------------------------------------------------------------------------
-- Bad input.
------------------------------------------------------------------------------
SELECT throws_ok($$SELECT tq_set_tenant('fair_policy', NULL)$$, '22004', NULL, 'tq_set_tenant with a NULL tenant: 22004');
SELECT throws_ok($$SELECT tq_set_tenant('fair_policy', '')$$, '22023', NULL, 'tq_set_tenant with an empty tenant: 22023');
SELECT throws_ok($$SELECT tq_set_tenant('fair_nope', 'acme')$$, '42704', 'queue "fair_nope" does not exist',
    'tq_set_tenant of an unknown queue: 42704');
SELECT throws_ok($$SELECT tq_set_tenant(NULL, 'acme')$$, '22004', NULL, 'tq_set_tenant with a NULL queue: 22004');
SELECT throws_ok($$SELECT tq_set_tenant('fair_policy', 'bad', weight => 0)$$, '22023', NULL, 'weight 0: 22023');
SELECT throws_ok($$SELECT tq_set_tenant('fair_policy', 'bad', weight => 0.0009)$$, '22023', NULL, 'weight below 0.001: 22023');
SELECT throws_ok($$SELECT tq_set_tenant('fair_policy', 'bad', weight => 1000001)$$, '22023', NULL, 'weight above 1000000: 22023');
SELECT throws_ok($$SELECT tq_set_tenant('fair_policy', 'bad', weight => NULL)$$, '22023', NULL, 'weight NULL: 22023');
SELECT throws_ok($$SELECT tq_set_tenant('fair_policy', 'bad', rate_per_sec => 0)$$, '22023', NULL, 'tenant rate_per_sec 0: 22023');
SELECT throws_ok($$SELECT tq_set_tenant('fair_policy', 'bad', rate_per_sec => -1)$$, '22023', NULL, 'tenant rate_per_sec -1: 22023');
SELECT throws_ok($$SELECT tq_set_tenant('fair_policy', 'bad', rate_per_sec => 5, burst => 0.5)$$, '22023', NULL, 'tenant burst below 1: 22023');
SELECT throws_ok($$SELECT tq_set_tenant('fair_policy', 'bad', burst => 5)$$, '22023', 'burst needs rate_per_sec',
    'tenant burst without rate_per_sec: 22023');
SELECT throws_ok($$SELECT tq_set_tenant('fair_policy', 'bad', concurrency => 0)$$, '22023', NULL, 'tenant concurrency 0: 22023');
SELECT throws_ok($$SELECT tq_set_tenant('fair_policy', 'bad', concurrency => -1)$$, '22023', NULL, 'tenant concurrency -1: 22023');
SELECT throws_ok($$SELECT tq_set_tenant('fair_policy', 'bad', backlog_limit => 0)$$, '22023', NULL, 'tenant backlog_limit 0: 22023');
SELECT is((SELECT count(*)::int FROM tq.tenant WHERE queue = 'fair_policy' AND tenant = 'bad'), 0,
    'a refused tq_set_tenant stores nothing');

SELECT throws_ok($$SELECT tq_create_queue('fair_bad', rate_per_sec => -1)$$, '22023', NULL, 'queue rate_per_sec -1: 22023');
SELECT throws_ok($$SELECT tq_create_queue('fair_bad', rate_per_sec => 0)$$, '22023', NULL, 'queue rate_per_sec 0 on create: 22023');
SELECT throws_ok($$SELECT tq_create_queue('fair_bad', rate_per_sec => 5, burst => 0)$$, '22023', NULL, 'queue burst 0: 22023');
SELECT throws_ok($$SELECT tq_create_queue('fair_bad', burst => 5)$$, '22023', 'burst needs rate_per_sec',
    'queue burst without rate_per_sec: 22023');
SELECT throws_ok($$SELECT tq_create_queue('fair_bad', concurrency => -1)$$, '22023', NULL, 'queue concurrency -1: 22023');
SELECT throws_ok($$SELECT tq_create_queue('fair_bad', concurrency => 0)$$, '22023', NULL, 'queue concurrency 0 on create: 22023');
SELECT throws_ok($$SELECT tq_create_queue('fair_bad', priority_aging => 0)$$, '22023', NULL, 'priority_aging 0: 22023');
SELECT throws_ok($$SELECT tq_create_queue('fair_bad', priority_aging => NULL)$$, '22023', NULL, 'priority_aging NULL: 22023');
SELECT is((SELECT count(*)::int FROM tq.queue WHERE name = 'fair_bad'), 0, 'a refused tq_create_queue creates nothing');

SELECT throws_ok($$SELECT tq_alter_queue('fair_policy', rate_per_sec => -1)$$, '22023', NULL, 'tq_alter_queue rate_per_sec -1: 22023');
SELECT throws_ok($$SELECT tq_alter_queue('fair_policy', rate_per_sec => 5, burst => 0)$$, '22023', NULL, 'tq_alter_queue burst 0: 22023');
SELECT throws_ok($$SELECT tq_alter_queue('fair_policy', burst => 5)$$, '22023', 'burst needs rate_per_sec',
    'tq_alter_queue burst on a queue without rate_per_sec: 22023');
SELECT throws_ok($$SELECT tq_alter_queue('fair_policy', concurrency => -1)$$, '22023', NULL, 'tq_alter_queue concurrency -1: 22023');
SELECT throws_ok($$SELECT tq_alter_queue('fair_policy', priority_aging => 0)$$, '22023', NULL, 'tq_alter_queue priority_aging 0: 22023');
SELECT results_eq($$SELECT rate_per_sec, burst, concurrency, priority_aging FROM tq_queues WHERE queue = 'fair_policy'$$,
    $$VALUES (NULL::float8, NULL::float8, NULL::int, 1000000::float8)$$,
    'a refused tq_alter_queue changes nothing');

SELECT * FROM finish();
ROLLBACK;
