-- Row 5's interleaved backlog: one task per transaction for a tenant drawn
-- at random among tenant-1 .. tenant-:tenants (pgbench -D tenants=N), as
-- many producers of many tenants submitting at once would.
\set t random(1, :tenants)
SELECT tq_submit('bench', '{"n":1}', tenant => 'tenant-' || :t);
