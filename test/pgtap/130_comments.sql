-- Documentation in the catalog: every function, view and view column the
-- extension creates in its install schema has a COMMENT (\df+ and \d+ show
-- them), and so does every internal function and table.
BEGIN;
SELECT plan(10);

CREATE TEMP VIEW tq_members AS
    SELECT d.classid, d.objid, d.objsubid
      FROM pg_depend d
      JOIN pg_extension e ON e.oid = d.refobjid
     WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'tq';

CREATE TEMP VIEW tq_api_functions AS
    SELECT p.oid, p.oid::regprocedure::text AS signature
      FROM tq_members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
     WHERE p.pronamespace = (SELECT extnamespace FROM pg_extension WHERE extname = 'tq');

CREATE TEMP VIEW tq_api_views AS
    SELECT c.oid, c.oid::regclass::text AS name
      FROM tq_members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
     WHERE c.relnamespace = (SELECT extnamespace FROM pg_extension WHERE extname = 'tq') AND c.relkind = 'v';

SELECT cmp_ok((SELECT count(*)::int FROM tq_api_functions), '>=', 23,
    'the extension creates its API functions in the install schema (at least 23)');
SELECT is(ARRAY(SELECT signature FROM tq_api_functions WHERE coalesce(obj_description(oid, 'pg_proc'), '') = '' ORDER BY 1),
    '{}'::text[], 'every API function in the install schema has a comment');

SELECT set_eq($$SELECT name FROM tq_api_views$$,
    ARRAY['tq_queue_stats', 'tq_queue_stats_exact', 'tq_queues', 'tq_schedules', 'tq_tenants',
          'tq_queue_activity', 'tq_dead', 'tq_tenant_grants', 'tq_shared_usage'],
    'the extension creates the views tq_queue_stats, tq_queue_stats_exact, tq_queues, tq_schedules, tq_tenants, tq_queue_activity, tq_dead, tq_tenant_grants and tq_shared_usage in the install schema');
SELECT is(ARRAY(SELECT name FROM tq_api_views WHERE coalesce(obj_description(oid, 'pg_class'), '') = '' ORDER BY 1),
    '{}'::text[], 'every view in the install schema has a comment');
SELECT is(ARRAY(SELECT v.name || '.' || a.attname
                  FROM tq_api_views v JOIN pg_attribute a ON a.attrelid = v.oid AND a.attnum > 0 AND NOT a.attisdropped
                 WHERE coalesce(col_description(v.oid, a.attnum), '') = ''
                 ORDER BY 1),
    '{}'::text[], 'every column of every view in the install schema has a comment');
SELECT ok((SELECT count(*) FROM tq_api_views v JOIN pg_attribute a ON a.attrelid = v.oid AND a.attnum > 0) >= 20,
    'the view column check covers the views'' columns');

-- Internal objects (schema tq) are documented too.
SELECT is(ARRAY(SELECT p.oid::regprocedure::text
                  FROM tq_members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
                 WHERE p.pronamespace = 'tq'::regnamespace AND coalesce(obj_description(p.oid, 'pg_proc'), '') = ''
                 ORDER BY 1),
    '{}'::text[], 'every internal function in schema tq has a comment');
SELECT is(ARRAY(SELECT c.oid::regclass::text
                  FROM tq_members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
                 WHERE c.relnamespace = 'tq'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'S')
                   AND coalesce(obj_description(c.oid, 'pg_class'), '') = ''
                   AND NOT EXISTS (SELECT 1 FROM pg_depend i          -- identity sequences are implicit
                                    WHERE i.classid = 'pg_class'::regclass AND i.objid = c.oid AND i.deptype = 'i')
                 ORDER BY 1),
    '{}'::text[], 'every table and (explicit) sequence in schema tq has a comment');
SELECT isnt(obj_description('tq'::regnamespace, 'pg_namespace'), NULL, 'schema tq has a comment');

SELECT is(ARRAY(SELECT format('%s.%s', c.oid::regclass, a.attname)
                  FROM pg_class c
                  JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
                  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'tq'
                  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                 WHERE c.relkind IN ('r', 'p') AND col_description(c.oid, a.attnum) IS NULL
                 ORDER BY 1), '{}'::text[],
    'every column of the tables in schema tq has a comment, for operators who query them');

SELECT * FROM finish();
ROLLBACK;
