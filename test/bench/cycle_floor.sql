-- lease_floor.sql that also inserts back as many rows as it deleted, in the
-- same transaction, so that the backlog stays constant.
WITH c AS (
    UPDATE plain SET state = 'running'
     WHERE id IN (SELECT id FROM plain WHERE state = 'ready'
                  ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED)
    RETURNING id)
SELECT set_config('bench.ids', coalesce(array_agg(id), '{}')::text, true) FROM c \;
DELETE FROM plain WHERE id = ANY (current_setting('bench.ids')::bigint[]) \;
INSERT INTO plain (queue, payload)
SELECT 'bench', '{"n":1}' FROM generate_series(1, cardinality(current_setting('bench.ids')::bigint[]));
