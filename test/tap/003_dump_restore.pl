# Backup and restore: pg_dump of a database using tq restores into a fresh
# database with every queue, live task, finished task, dedup key and history
# partition, and the restored tq keeps working (new tasks, new queues, the
# dedup window, leasing the restored backlog).
#
# tq's tables are extension members registered with pg_extension_config_dump;
# history partitions are made at run time and are ordinary tables that the
# dump recreates.  This test fails if either half goes missing.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tq'\n");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
$node->safe_psql(
	'src', q{
	CREATE EXTENSION tq;
	SELECT tq_create_queue('daily', retention => '3 days');
	SELECT tq_create_queue('hourly', retention => '6 hours', max_attempts => 1);
	SELECT tq_submit('daily', '{"n": 1}', dedup_key => 'once');          -- 1: will succeed
	SELECT tq_submit('hourly', '{"n": 2}');                               -- 2: will die
	SELECT tq_submit('daily', '{"n": 3}', run_at => now() + interval '1 hour');  -- 3: scheduled
	SELECT tq_submit('daily', '{"n": 4}', tenant => 't1');                -- 4: paused
	SELECT tq_submit('daily', '{"n": 5}', priority => 3);                 -- 5: running
	SELECT tq_submit_many('daily', ARRAY['{"n": 6}', '{"n": 7}']::jsonb[]); -- 6, 7: ready
	SELECT tq_pause('daily', tenant => 't1');
});
# Finish two tasks: 1 succeeds (priority order puts 5 first, so lease 5 and
# 1 by id), 2 dies.
$node->safe_psql(
	'src', q{
	SELECT tq_complete(l.id, l.attempt, '{"ok": true}')
	  FROM tq_lease('w', ARRAY['daily'], 2) l WHERE l.id = 1;
	SELECT tq_fail(l.id, l.attempt, 'broken', 'never') FROM tq_lease('w', ARRAY['hourly'], 1) l;
});

my $snapshot = q{
	SELECT string_agg(format('%s:%s:%s:%s:%s', t.id, t.queue, t.state, t.attempts,
	                         coalesce(t.result::text, t.last_error, '-')), ' ' ORDER BY t.id)
	  FROM generate_series(1, 7) i, tq_task(i) t};
my $before = $node->safe_psql('src', $snapshot);
like($before, qr/^1:daily:succeeded:1:\{"ok": true\} 2:hourly:dead:1:broken 3:daily:scheduled/,
	'the source holds tasks in every kind of state');

my $dump = $node->basedir . '/src.sql';
$node->command_ok(
	[ 'pg_dump', '-d', $node->connstr('src'), '-f', $dump ],
	'pg_dump of a database using tq succeeds');
$node->command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('dst'), '-f', $dump ],
	'the dump restores into an empty database without an error');

is($node->safe_psql('dst', $snapshot), $before,
	'every task comes back in the same state, with its attempts, result and error');
is( $node->safe_psql(
		'dst', q{SELECT string_agg(queue || ':' || paused_tenants::text, ' ' ORDER BY queue) FROM tq_queues}),
	'daily:{t1} hourly:{}',
	'queues and tenant pauses come back');
is( $node->safe_psql('src', 'SELECT count(*) FROM tq.history_part'),
	$node->safe_psql('dst', 'SELECT count(*) FROM tq.history_part'),
	'the history partitions come back');

# The restored tq works.
is($node->safe_psql('dst', q{SELECT tq_submit('daily', '{}', dedup_key => 'once')}),
	'1', 'the dedup window survives: a resubmit of the key returns the restored task');
my $new_id = $node->safe_psql('dst', q{SELECT tq_submit('daily', '{"n": 8}')});
cmp_ok($new_id, '>', 7, 'new tasks get ids past the restored ones');
$node->safe_psql('dst', q{SELECT tq_create_queue('fresh')});
is($node->safe_psql('dst', q{SELECT tq_submit('fresh', '{}') > 0}),
	't', 'a queue created after the restore gets partitions of its own and takes tasks');
is( $node->safe_psql(
		'dst', q{
		SELECT string_agg(l.id::text, ',' ORDER BY l.id)
		  FROM tq_lease('w2', ARRAY['daily'], 10) l}),
	"6,7,$new_id", 'the restored backlog is leasable (the running and paused tasks are not)');
is( $node->safe_psql(
		'dst', q{
		SELECT count(*) FILTER (WHERE c)
		  FROM (SELECT tq_complete(l.id, l.attempt) AS c
		          FROM tq_lease('w2', ARRAY['fresh'], 10) l) s}),
	'1', 'and its tasks complete into the restored history');

$node->stop;
done_testing();
