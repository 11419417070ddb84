-- The floor of submit_tq.sql: one plain single-row INSERT per transaction.
INSERT INTO plain (queue, payload) VALUES ('bench', '{"n":1}');
