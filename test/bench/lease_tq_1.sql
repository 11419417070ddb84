-- Lease one task and complete it (scalar form), in one transaction.
SELECT tq_complete(id, attempt) FROM tq_lease('bench-' || :client_id, '{bench}', 1);
