-- Lease :batch tasks and complete them with the array form, in one
-- transaction (pgbench -D batch=N).  HAVING skips the complete when the
-- lease found nothing (tq_complete refuses NULL arrays), so that a backlog
-- that runs dry shows in the counts instead of aborting the client.
WITH l AS (SELECT * FROM tq_lease('bench-' || :client_id, '{bench}', :batch))
SELECT tq_complete(array_agg(id), array_agg(attempt), NULL) FROM l HAVING count(*) > 0;
