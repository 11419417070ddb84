# tq_rate_consume's buckets are shared by every session of a role (all of
# this test's run as one; TAP 022 has several roles), have a bounded table
# that frees refilled buckets, and start full again after a restart.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('rate');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tq'\ntq.max_rate_keys = 16\n");
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql($_, 'CREATE EXTENSION tq') for qw(postgres other);

# Shared: two sessions (two databases, even) draw from one bucket.
my $take = q{SELECT tq_rate_consume('smtp', 1, rate => 0.001, burst => 3)};
is($node->safe_psql('postgres', "$take; $take"), "t\nt", 'one session takes two of three tokens');
is($node->safe_psql('other', "$take; $take"), "t\nf",
	'another session, in another database, gets the third and is then refused');

# Bounded: 16 buckets in use (smtp + 15), the 17th key is refused cleanly.
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FILTER (WHERE tq_rate_consume('k' || i, 1, rate => 0.001, burst => 2))
		    FROM generate_series(1, 15) i}),
	'15', 'fifteen more keys fill the table');
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT tq_rate_consume('one-more', 1, rate => 1)});
isnt($ret, 0, 'a seventeenth key is refused');
like($err, qr/no room for rate key "one-more": all 16 rate buckets are in use/, 'with a message naming the limit');
like($err, qr/tq\.max_rate_keys/, 'and a hint naming the setting');
is($node->safe_psql('postgres', q{SELECT tq_rate_consume('k1', 1, rate => 0.001, burst => 2)}),
	't', 'keys already in the table keep working');

# A bucket that has refilled to its burst is reused: make k2 refill fast.
$node->safe_psql('postgres', q{SELECT tq_rate_consume('k2', 1, rate => 1000, burst => 1)});
ok( $node->poll_query_until(
		'postgres', q{SELECT tq_rate_consume('newcomer', 1, rate => 1)}),
	'once a bucket has refilled, a new key takes its place');

# Restart: buckets are memory only and start full.
$node->restart;
is($node->safe_psql('postgres', "$take; $take; $take; $take"), "t\nt\nt\nf",
	'after a restart a bucket starts full again');

$node->stop;
done_testing();
