# A periodic task really fires: pg_cron's scheduler runs the schedule's job
# at the next minute, and the job submits the task with the dedup key of
# its firing minute.  pg_cron fires once a minute at the earliest, so this
# test waits (polling, with a deadline) up to a minute and a bit.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('cron');
$node->init;
# Jobs run in background workers: the test cluster listens on a Unix
# socket only, not on the TCP localhost pg_cron connects to by default.
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'tq,pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 16
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tq; CREATE EXTENSION pg_cron');
$node->safe_psql('postgres', q{SELECT tq_create_queue('ticks')});
$node->safe_psql('postgres',
	q{SELECT tq_schedule('every_minute', '* * * * *', 'ticks', '{"tick": true}', priority => 2)});

ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) > 0 FROM tq.task WHERE queue = 'ticks'}),
	'pg_cron fires the schedule and the task is submitted');
like(
	$node->safe_psql('postgres', q{SELECT dedup_key FROM tq.task WHERE queue = 'ticks' ORDER BY id LIMIT 1}),
	qr/^schedule:every_minute:\d{4}-\d\d-\d\dT\d\d:\d\dZ$/,
	'with the dedup key of its firing minute');
is( $node->safe_psql(
		'postgres', q{SELECT payload::text || ' ' || priority FROM tq.task WHERE queue = 'ticks' ORDER BY id LIMIT 1}),
	'{"tick": true} 2',
	'and the schedule\'s payload and priority');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) > 0 FROM cron.job_run_details d JOIN cron.job j USING (jobid)
		              WHERE j.jobname = 'tq:every_minute' AND d.status = 'succeeded'}),
	't', 'pg_cron records the run as succeeded');

$node->safe_psql('postgres', q{SELECT tq_unschedule('every_minute')});
is($node->safe_psql('postgres', q{SELECT count(*) FROM cron.job}), '0', 'tq_unschedule removes the job');

$node->stop;
done_testing();
