-- The full-shape floor of submit_tq.sql at 16 clients: one single-row
-- INSERT per transaction into a copy of tq.task (same columns, defaults,
-- constraints, indexes and storage parameters; no triggers), with the
-- values tq_submit stores for a ready task.  The table name comes from
-- pgbench -D table=... (full_notrig, or full_trig: the same copy with
-- tq.task's triggers).
INSERT INTO :table (queue, state, payload, max_attempts) VALUES ('bench_copy', 'ready', '{"n":1}', 25);
