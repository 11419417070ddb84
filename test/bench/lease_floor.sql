-- The floor of lease_tq_*.sql: the minimal hand-written SKIP LOCKED cycle on
-- the plain table, claim :batch rows, then delete them.  The two statements
-- go in one round trip and one transaction (\;), like the one tq statement;
-- the claimed ids pass from the first to the second through a
-- transaction-local setting.
WITH c AS (
    UPDATE plain SET state = 'running'
     WHERE id IN (SELECT id FROM plain WHERE state = 'ready'
                  ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED)
    RETURNING id)
SELECT set_config('bench.ids', coalesce(array_agg(id), '{}')::text, true) FROM c \;
DELETE FROM plain WHERE id = ANY (current_setting('bench.ids')::bigint[]);
