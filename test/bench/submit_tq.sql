-- One task per transaction through tq (row 1 of test/bench/run.sh).
SELECT tq_submit('bench', '{"n":1}');
