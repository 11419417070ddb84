# More (queue, tenant) pairs with live tasks than tq.max_tenants: the
# server says so in its log and degrades -- tenants beyond the table are
# still served, counts of the queue stay right, nothing fails -- and once
# tenants go idle their entries are reused.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('capacity');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'tq'\ntq.max_tenants = 64\ntq.database = ''\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tq');
$node->safe_psql('postgres', q{SELECT tq_create_queue('cap')});

# 100 tenants, 3 tasks each: 300 tasks, 101 entries wanted, 64 available.
my $log_offset = -s $node->logfile;
is( $node->safe_psql(
		'postgres', q{
		SELECT sum(cardinality(tq_submit_many('cap', array_fill('{}'::jsonb, ARRAY[3]),
		                                      tenant => 't' || i)))
		  FROM generate_series(1, 100) i}),
	'300', 'all 300 tasks of 100 tenants are accepted with room for 64 entries');
ok($node->log_contains(qr/all 64 fair-dispatch entries are in use/, $log_offset),
	'the server log says the table is full');
ok($node->log_contains(qr/Raise tq\.max_tenants/, $log_offset), 'and names the setting to raise');
is($node->safe_psql('postgres', q{SELECT ready FROM tq_queue_stats WHERE queue = 'cap'}),
	'300', "the queue's own count is exact");
cmp_ok($node->safe_psql('postgres', q{SELECT count(*) FROM tq_tenants WHERE queue = 'cap'}),
	'<=', 63, 'at most 63 tenants have entries of their own');

# Every task is served, those of tenants without an entry too.
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) FROM (SELECT tq_complete(l.id, l.attempt) AS ok
		                        FROM tq_lease('w', ARRAY['cap'], 1000) l) s WHERE ok}),
	'300', 'all 300 tasks are leased and completed');
is($node->safe_psql('postgres', q{SELECT ready + running FROM tq_queue_stats WHERE queue = 'cap'}),
	'0', "and the queue's counts go back to zero");

# Idle entries are reused: a new tenant gets its own share and limits.
$node->safe_psql('postgres',
	q{SELECT tq_set_tenant('cap', 'fresh', concurrency => 1);
	  SELECT tq_submit_many('cap', array_fill('{}'::jsonb, ARRAY[3]), tenant => 'fresh')});
is($node->safe_psql('postgres', q{SELECT ready FROM tq_tenants WHERE queue = 'cap' AND tenant = 'fresh'}),
	'3', 'a new tenant gets an entry once others are idle');
is($node->safe_psql('postgres', q{SELECT count(*) FROM tq_lease('w', ARRAY['cap'], 10)}),
	'1', 'and its concurrency quota (1) is enforced');

# Two-phase commit of a transaction that changed tasks is refused: the
# shared counts it changed are settled at commit, which PREPARE would
# orphan.  Nothing is left behind.
$node->append_conf('postgresql.conf', "max_prepared_transactions = 2\n");
$node->restart;
my ($ret, $out, $err) = $node->psql('postgres',
	q{BEGIN; SELECT tq_submit('cap', '{}'); PREPARE TRANSACTION 'tq_2pc';});
like($err, qr/cannot PREPARE a transaction that changed tq tasks/,
	'PREPARE TRANSACTION after a submit is refused, with a clear message');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_prepared_xacts}),
	'0', 'no prepared transaction is left');
is($node->safe_psql('postgres', q{SELECT ready FROM tq_queue_stats WHERE queue = 'cap'}),
	$node->safe_psql('postgres', q{SELECT count(*) FROM tq.task WHERE queue = 'cap' AND state = 'ready'}),
	'and the shared ready count still matches the table');

$node->stop;
done_testing();
