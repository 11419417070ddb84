-- lease_tq_n.sql that also submits back as many tasks as it completed, in
-- the same transaction, so that the backlog stays constant.
WITH l AS (SELECT * FROM tq_lease('bench-' || :client_id, '{bench}', :batch)),
     c AS (SELECT tq_complete(array_agg(id), array_agg(attempt), NULL) AS ok
             FROM l HAVING count(*) > 0)
SELECT cardinality(tq_submit_many('bench', array_fill('{"n":1}'::jsonb, ARRAY[cardinality(ok)])))
  FROM c;
