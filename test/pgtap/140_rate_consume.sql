-- tq_rate_consume: token buckets in shared memory, one per (role, key).
--
-- Buckets live in shared memory, not in tables, so they outlive this
-- file's ROLLBACK: every key here carries a prefix unique to this run.  A
-- rate of 0.001 per second makes refills negligible, so answers do not
-- depend on timing; the one refill check polls with a deadline.
BEGIN;
SELECT plan(29);

SELECT format('t140:%s:%s:', pg_backend_pid(), extract(epoch FROM clock_timestamp())) AS k \gset

SELECT is(ARRAY(SELECT tq_rate_consume(:'k' || 'a', 1, rate => 0.001, burst => 3) FROM generate_series(1, 5)),
          ARRAY[true, true, true, false, false],
          'a new bucket starts full: burst calls pass, then the next is refused');
SELECT is(tq_rate_consume(:'k' || 'b', 2, rate => 0.001, burst => 3), true, 'n tokens are taken at once');
SELECT is(tq_rate_consume(:'k' || 'b', 2, rate => 0.001, burst => 3), false, 'a request for more than is left takes nothing ...');
SELECT is(tq_rate_consume(:'k' || 'b', 1, rate => 0.001, burst => 3), true, '... so a smaller one still fits');
SELECT is(tq_rate_consume(:'k' || 'c', 1, rate => 0.001, burst => 1), true, 'keys have buckets of their own');
SELECT is(tq_rate_consume(:'k' || 'd', 5, rate => 5), true, 'burst defaults to one second''s worth (rate)');
SELECT is(tq_rate_consume(:'k' || 'd', 1, rate => 5), false, 'and is then empty');

-- A lowered burst drops the tokens above it.
SELECT tq_rate_consume(:'k' || 'e', 1, rate => 0.001, burst => 10);
SELECT is(ARRAY(SELECT tq_rate_consume(:'k' || 'e', 1, rate => 0.001, burst => 2) FROM generate_series(1, 3)),
          ARRAY[true, true, false], 'the latest call''s burst applies to the key');

-- Refill: at 1000 per second an empty bucket of 1 is full again within
-- milliseconds; poll for it with a deadline instead of sleeping.
SELECT tq_rate_consume(:'k' || 'f', 1, rate => 1000, burst => 1);
CREATE FUNCTION pg_temp.refills(p_key text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + interval '5 seconds';
BEGIN
    LOOP
        IF tq_rate_consume(p_key, 1, rate => 1000, burst => 1) THEN
            RETURN true;
        END IF;
        EXIT WHEN clock_timestamp() > deadline;
        PERFORM pg_sleep(0.001);
    END LOOP;
    RETURN false;
END
$$;
SELECT ok(pg_temp.refills(:'k' || 'f'), 'an empty bucket refills at its rate');

-- Bad input.
SELECT throws_ok($$SELECT tq_rate_consume(NULL, 1, rate => 1)$$, '22004', NULL, 'a NULL key: 22004');
SELECT throws_ok($$SELECT tq_rate_consume('x', 1)$$, '22004', NULL, 'no rate: 22004');
SELECT throws_ok($$SELECT tq_rate_consume('x', NULL, rate => 1)$$, '22004', NULL, 'a NULL n: 22004');
SELECT throws_ok($$SELECT tq_rate_consume('', 1, rate => 1)$$, '22023', NULL, 'an empty key: 22023');
SELECT throws_ok(format('SELECT tq_rate_consume(%L, 1, rate => 1)', repeat('x', 129)), '22023', NULL, 'a key over 128 bytes: 22023');
SELECT throws_ok($$SELECT tq_rate_consume('x', 0, rate => 1)$$, '22023', NULL, 'n below 1: 22023');
SELECT throws_ok($$SELECT tq_rate_consume('x', 1, rate => 0)$$, '22023', NULL, 'a rate of 0: 22023');
SELECT throws_ok($$SELECT tq_rate_consume('x', 1, rate => -1)$$, '22023', NULL, 'a negative rate: 22023');
SELECT throws_ok($$SELECT tq_rate_consume('x', 1, rate => 'NaN')$$, '22023', NULL, 'a NaN rate: 22023');
SELECT throws_ok($$SELECT tq_rate_consume('x', 1, rate => 1, burst => 0.5)$$, '22023', NULL, 'a burst below 1: 22023');
SELECT throws_ok($$SELECT tq_rate_consume('x', 3, rate => 1, burst => 2)$$, '22023',
    'n exceeds burst: the request could never be granted', 'n above burst could never be granted: 22023');
SELECT throws_ok($$SELECT tq_rate_consume('x', 1, rate => 1e-300)$$, '22023', 'rate is out of range',
    'a rate of 1e-300 (a bucket that never refills): 22023');
SELECT throws_ok($$SELECT tq_rate_consume('x', 1, rate => 0.0000009)$$, '22023', 'rate is out of range',
    'a rate below 0.000001 per second, the queues'' minimum: 22023');
SELECT is(tq_rate_consume(:'k' || 'slow', 1, rate => 0.000001), true, 'a rate of exactly 0.000001 is taken');

-- Key spaces: each role (current_user) has buckets of its own.  Roles
-- cannot run pgTAP's assertions (its tables are the test's), so the
-- answers are taken under SET ROLE into variables and checked after.
CREATE ROLE t140_a;
CREATE ROLE t140_b;
GRANT tq_producer TO t140_a;
GRANT tq_worker TO t140_b;
SET ROLE t140_a;
SELECT ARRAY(SELECT tq_rate_consume(:'k' || 'api', 1, rate => 0.001, burst => 2) FROM generate_series(1, 3)) AS a_drain \gset
SELECT tq_rate_consume(:'k' || 'w', 1, rate => 0.001, burst => 10) AS a_first \gset
SET ROLE t140_b;
SELECT ARRAY(SELECT tq_rate_consume(:'k' || 'api', 1, rate => 0.001, burst => 2) FROM generate_series(1, 3)) AS b_drain \gset
-- The overwrite attack: another role names the worker's key with a rate
-- that never refills and a burst of 1.
SELECT tq_rate_consume(:'k' || 'w', 1, rate => 0.000001, burst => 1) AS b_overwrite \gset
SET ROLE t140_a;
SELECT ARRAY(SELECT tq_rate_consume(:'k' || 'w', 1, rate => 0.001, burst => 10) FROM generate_series(1, 10)) AS a_rest \gset
RESET ROLE;
SELECT is(:'a_drain'::text, '{t,t,f}', 'a role drains its bucket of a key');
SELECT is(:'b_drain'::text, '{t,t,f}', 'another role naming the same key has a full bucket of its own');
SELECT ok(:'a_first'::boolean AND :'b_overwrite'::boolean, 'another role''s call with the key of a bucket in use and other rate and burst takes from its own bucket');
SELECT is(:'a_rest'::text, '{t,t,t,t,t,t,t,t,t,f}', '... and leaves the first role''s bucket as it was: 9 more of its 10 tokens, then empty');
SELECT ok((SELECT used >= 1 AND capacity = current_setting('tq.max_rate_keys')::bigint AND overflow IS NULL
             FROM tq_shared_usage WHERE name = 'rate_buckets'),
    'tq_shared_usage shows the rate buckets in use and the table''s size');

SELECT ok(has_function_privilege('tq_producer', 'tq_rate_consume(text, integer, double precision, double precision)', 'EXECUTE')
          AND has_function_privilege('tq_worker', 'tq_rate_consume(text, integer, double precision, double precision)', 'EXECUTE'),
    'producers and workers may call it');

SELECT * FROM finish();
ROLLBACK;
