-- tq_submit_trigger: a row trigger that submits the row as a task in the
-- writing transaction, with options, and its errors for bad options.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(28);

SELECT has_function('public', 'tq_submit_trigger', ARRAY[]::text[], 'tq_submit_trigger() exists');
SELECT function_returns('public', 'tq_submit_trigger', ARRAY[]::text[], 'trigger', 'tq_submit_trigger returns trigger');

SELECT tq_create_queue('orders');
SELECT tq_create_queue('audit');

CREATE TABLE pg_temp.orders (id int PRIMARY KEY, shop text, ref text, amount numeric);
CREATE TRIGGER orders_tq AFTER INSERT OR UPDATE ON pg_temp.orders
    FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('orders');

-- Bare trigger: the row is the payload.
INSERT INTO pg_temp.orders VALUES (1, 'shop-a', 'r-1', 9.5);
SELECT results_eq($$SELECT payload, state::text, tenant, dedup_key, priority::int FROM tq.task WHERE queue = 'orders'$$,
    $$VALUES ('{"id": 1, "shop": "shop-a", "ref": "r-1", "amount": 9.5}'::jsonb, 'ready', NULL::text, NULL::text, 0)$$,
    'an INSERT submits the new row as the payload of a ready task');
UPDATE pg_temp.orders SET amount = 10 WHERE id = 1;
SELECT is((SELECT payload FROM tq.task WHERE queue = 'orders' ORDER BY id DESC LIMIT 1),
    '{"id": 1, "shop": "shop-a", "ref": "r-1", "amount": 10}'::jsonb,
    'an UPDATE submits the new version of the row');
INSERT INTO pg_temp.orders SELECT g, 'bulk', NULL, g FROM generate_series(100, 149) g;
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'orders' AND payload->>'shop' = 'bulk'), 50,
    'a multi-row INSERT submits one task per row');

-- The task belongs to the writing transaction.
SAVEPOINT s;
INSERT INTO pg_temp.orders VALUES (2, 'shop-a', 'r-2', 1);
ROLLBACK TO SAVEPOINT s;
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'orders' AND payload->>'id' = '2'), 0,
    'a rolled-back INSERT leaves no task');

-- Options: tenant and dedup_key from columns, priority, delay.
CREATE TABLE pg_temp.orders2 (id int, shop text, ref text);
CREATE TRIGGER orders2_tq AFTER INSERT ON pg_temp.orders2
    FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('orders', 'tenant=shop', 'dedup_key=ref', 'priority=7', 'delay=10 minutes');
INSERT INTO pg_temp.orders2 VALUES (1, 'shop-b', 'ref-1');
SELECT results_eq($$SELECT tenant, dedup_key, priority::int, state::text, run_at FROM tq.task WHERE queue = 'orders' AND tenant = 'shop-b'$$,
    $$VALUES ('shop-b', 'ref-1', 7, 'scheduled', now() + interval '10 minutes')$$,
    'the options set tenant and dedup_key from columns, the priority, and a delay');
INSERT INTO pg_temp.orders2 VALUES (2, 'shop-b', 'ref-1');
SELECT is((SELECT count(*)::int FROM tq.task WHERE queue = 'orders' AND dedup_key = 'ref-1'), 1,
    'a row with a dedup_key already taken submits no second task');
INSERT INTO pg_temp.orders2 VALUES (3, 'shop-c', NULL);
SELECT results_eq($$SELECT tenant, dedup_key FROM tq.task WHERE queue = 'orders' AND tenant = 'shop-c'$$,
    $$VALUES ('shop-c', NULL::text)$$, 'a NULL dedup_key column submits a task without a key');

-- A paused tenant holds the triggered task.
SELECT tq_pause('orders', tenant => 'shop-d');
CREATE TABLE pg_temp.orders3 (id int, shop text);
CREATE TRIGGER orders3_tq AFTER INSERT ON pg_temp.orders3
    FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('orders', 'tenant=shop');
INSERT INTO pg_temp.orders3 VALUES (1, 'shop-d');
SELECT is((SELECT state::text FROM tq.task WHERE queue = 'orders' AND tenant = 'shop-d'), 'paused',
    'a triggered task of a paused tenant is paused');

-- envelope=true: op, schema, table, row and old row.
CREATE TABLE pg_temp.accounts (id int, name text);
CREATE TRIGGER accounts_tq AFTER INSERT OR UPDATE OR DELETE ON pg_temp.accounts
    FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('audit', 'envelope=true');
INSERT INTO pg_temp.accounts VALUES (1, 'ann');
UPDATE pg_temp.accounts SET name = 'anne' WHERE id = 1;
DELETE FROM pg_temp.accounts WHERE id = 1;
SELECT results_eq(
    $$SELECT payload->>'op', payload->>'table', payload->'row', payload->'old'
        FROM tq.task WHERE queue = 'audit' ORDER BY id$$,
    $$VALUES ('INSERT', 'accounts', '{"id": 1, "name": "ann"}'::jsonb, 'null'::jsonb),
             ('UPDATE', 'accounts', '{"id": 1, "name": "anne"}'::jsonb, '{"id": 1, "name": "ann"}'::jsonb),
             ('DELETE', 'accounts', '{"id": 1, "name": "anne"}'::jsonb, 'null'::jsonb)$$,
    'envelope=true sends op, table, the row (the old row for DELETE) and the old row for UPDATE');
SELECT is((SELECT count(DISTINCT payload->>'schema')::int FROM tq.task WHERE queue = 'audit' AND payload->>'schema' LIKE 'pg_temp%'), 1,
    'envelope=true sends the table''s schema');

-- DELETE without envelope sends the old row.
CREATE TABLE pg_temp.gone (id int);
CREATE TRIGGER gone_tq AFTER DELETE ON pg_temp.gone
    FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('audit');
INSERT INTO pg_temp.gone VALUES (42);
DELETE FROM pg_temp.gone;
SELECT is((SELECT payload FROM tq.task WHERE queue = 'audit' ORDER BY id DESC LIMIT 1), '{"id": 42}'::jsonb,
    'a DELETE trigger sends the deleted row');

-- envelope=false is the bare row.
CREATE TABLE pg_temp.plain (id int);
CREATE TRIGGER plain_tq AFTER INSERT ON pg_temp.plain
    FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('audit', 'envelope=false', 'priority=-3', 'delay=0');
INSERT INTO pg_temp.plain VALUES (7);
SELECT results_eq($$SELECT payload, priority::int, state::text FROM tq.task WHERE queue = 'audit' ORDER BY id DESC LIMIT 1$$,
    $$VALUES ('{"id": 7}'::jsonb, -3, 'ready')$$, 'envelope=false, a negative priority and delay=0 are accepted');

------------------------------------------------------------------------------
-- Bad options: the writing statement fails, and nothing is submitted.
------------------------------------------------------------------------------
CREATE TABLE pg_temp.bad (id int, shop text);
SELECT count(*) AS before_bad FROM tq.task \gset

CREATE TRIGGER bad_tq AFTER INSERT ON pg_temp.bad FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('orders', 'colour=red');
SELECT throws_ok('INSERT INTO pg_temp.bad VALUES (1, ''x'')', '22023', NULL, 'an unknown option is an error (22023)');
DROP TRIGGER bad_tq ON pg_temp.bad;

CREATE TRIGGER bad_tq AFTER INSERT ON pg_temp.bad FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger();
SELECT throws_ok('INSERT INTO pg_temp.bad VALUES (1, ''x'')', '22023', NULL, 'a trigger without a queue name is an error (22023)');
DROP TRIGGER bad_tq ON pg_temp.bad;

CREATE TRIGGER bad_tq AFTER INSERT ON pg_temp.bad FOR EACH STATEMENT EXECUTE FUNCTION tq_submit_trigger('orders');
SELECT throws_ok('INSERT INTO pg_temp.bad VALUES (1, ''x'')', '22023', NULL, 'a statement-level trigger is an error (22023)');
DROP TRIGGER bad_tq ON pg_temp.bad;

CREATE TRIGGER bad_tq AFTER INSERT ON pg_temp.bad FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('no_such_queue');
SELECT throws_ok('INSERT INTO pg_temp.bad VALUES (1, ''x'')', '42704', NULL, 'a trigger naming an unknown queue is an error (42704)');
DROP TRIGGER bad_tq ON pg_temp.bad;

CREATE TRIGGER bad_tq AFTER INSERT ON pg_temp.bad FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('orders', 'priority=high');
SELECT throws_ok('INSERT INTO pg_temp.bad VALUES (1, ''x'')', '22P02', NULL, 'a priority that is not a number is an error (22P02)');
DROP TRIGGER bad_tq ON pg_temp.bad;

CREATE TRIGGER bad_tq AFTER INSERT ON pg_temp.bad FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('orders', 'priority=99999');
SELECT throws_ok('INSERT INTO pg_temp.bad VALUES (1, ''x'')', '22023', NULL, 'a priority out of range is an error (22023)');
DROP TRIGGER bad_tq ON pg_temp.bad;

CREATE TRIGGER bad_tq AFTER INSERT ON pg_temp.bad FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('orders', 'delay=soon');
SELECT throws_ok('INSERT INTO pg_temp.bad VALUES (1, ''x'')', '22007', NULL, 'a delay that is not an interval is an error (22007)');
DROP TRIGGER bad_tq ON pg_temp.bad;

CREATE TRIGGER bad_tq AFTER INSERT ON pg_temp.bad FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('orders', 'envelope=maybe');
SELECT throws_ok('INSERT INTO pg_temp.bad VALUES (1, ''x'')', '22P02', NULL, 'an envelope that is not a boolean is an error (22P02)');
DROP TRIGGER bad_tq ON pg_temp.bad;

CREATE TRIGGER bad_tq AFTER INSERT ON pg_temp.bad FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('orders', 'tenant=shop');
SELECT throws_ok('INSERT INTO pg_temp.bad VALUES (1, '''')', '22023', NULL, 'an empty tenant column value is an error (22023)');
DROP TRIGGER bad_tq ON pg_temp.bad;

SELECT is((SELECT count(*) FROM tq.task), :before_bad::bigint, 'no failed trigger submitted a task');
SELECT is((SELECT count(*)::int FROM pg_temp.bad), 0, 'no failed trigger let its row be written');

-- An option naming a column the table does not have is an error, not a
-- task silently submitted without its tenant or dedup key.
CREATE FUNCTION pg_temp.sqlstate_of(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END
$$;
CREATE TRIGGER bad_tq AFTER INSERT ON pg_temp.bad FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('orders', 'tenant=shopp');
SELECT matches(pg_temp.sqlstate_of('INSERT INTO pg_temp.bad VALUES (1, ''x'')'), '^(42703|22023)$',
    'a tenant option naming a column the table lacks is an error (42703 or 22023)');
DROP TRIGGER bad_tq ON pg_temp.bad;
CREATE TRIGGER bad_tq AFTER INSERT ON pg_temp.bad FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('orders', 'dedup_key=reff');
SELECT matches(pg_temp.sqlstate_of('INSERT INTO pg_temp.bad VALUES (1, ''x'')'), '^(42703|22023)$',
    'a dedup_key option naming a column the table lacks is an error (42703 or 22023)');
DROP TRIGGER bad_tq ON pg_temp.bad;
-- An option without "=value" ('tenant') is refused too.
CREATE TRIGGER bad_tq AFTER INSERT ON pg_temp.bad FOR EACH ROW EXECUTE FUNCTION tq_submit_trigger('orders', 'tenant');
SELECT matches(pg_temp.sqlstate_of('INSERT INTO pg_temp.bad VALUES (1, ''x'')'), '^(42703|22023)$',
    'an option without a value is an error (22023 or 42703)');
DROP TRIGGER bad_tq ON pg_temp.bad;

SELECT * FROM finish();
ROLLBACK;
