# The background worker does tq's housekeeping on its own, with no
# tq_lease traffic at all, and survives what can happen to it.
#
#   1. It runs, visible in pg_stat_activity and tq_worker_status().
#   2. A delayed task becomes ready after its run_at; an expired lease is
#      reclaimed (and the task retried); a task past expires_at expires;
#      the maintenance pass recreates a missing history partition and drops
#      one past retention.
#   3. A submit's tq_ready comes from the worker's process, not the
#      producer's.
#   4. A pass that fails is logged and the worker carries on (same pid).
#   5. Killed with SIGKILL (the postmaster then restarts everything) or
#      terminated with pg_terminate_backend, it comes back and works.
#
# Every wait is a poll with a deadline; no test sleeps for a fixed time.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('bgw');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'tq'
tq.database = 'postgres'
tq.worker_naptime = '200ms'
tq.maintenance_interval = '500ms'
restart_after_crash = on
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tq');

# 1. It runs.
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'tq background worker'"),
	'the worker shows in pg_stat_activity as "tq background worker"');
my $pid = $node->safe_psql('postgres', 'SELECT pid FROM tq_worker_status() WHERE running');
like($pid, qr/^\d+$/, 'tq_worker_status() reports it running, with its pid');

$node->safe_psql('postgres',
	q{SELECT tq_create_queue('bg', lease => '1 second', backoff_base => '10 ms', backoff_cap => '10 ms')});

# 2a. A delayed task becomes ready without anyone leasing.
my $delayed = $node->safe_psql('postgres',
	q{SELECT tq_submit('bg', '{}', run_at => clock_timestamp() + interval '300 ms')});
is($node->safe_psql('postgres', "SELECT state FROM tq_task($delayed)"),
	'scheduled', 'a delayed task starts scheduled');
ok($node->poll_query_until('postgres', "SELECT state = 'ready' FROM tq_task($delayed)"),
	'the worker makes it ready after its run_at');
ok( $node->safe_psql('postgres', "SELECT now() >= run_at FROM tq_task($delayed)") eq 't',
	'not before its run_at');

# 2b. An expired lease is reclaimed and the task retried.
my ($leased, $attempt) = split /\|/,
  $node->safe_psql('postgres', q{SELECT id, attempt FROM tq_lease('gone', ARRAY['bg'], 1)});
is($leased, $delayed, 'a worker that will vanish leases it');
ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'ready' AND last_error LIKE 'lease expired%' FROM tq_task($leased)"),
	'the worker reclaims the expired lease and the retry becomes ready');
is($node->safe_psql('postgres', "SELECT tq_complete($leased, $attempt)"),
	'f', 'the vanished worker\'s late completion is refused (fencing)');

# 2c. A task past its expires_at expires.
my $expiring = $node->safe_psql('postgres',
	q{SELECT tq_submit('bg', '{}', expires_at => clock_timestamp() + interval '300 ms')});
ok($node->poll_query_until('postgres', "SELECT state = 'expired' FROM tq_task($expiring)"),
	'the worker expires a task whose deadline passed before it started');

# 2d. Maintenance: a missing partition is recreated, one past retention dropped.
my $last = $node->safe_psql('postgres',
	q{SELECT relname FROM tq.history_part WHERE queue = 'bg' ORDER BY lo DESC LIMIT 1});
$node->safe_psql('postgres',
	"DROP TABLE tq.$last; DELETE FROM tq.history_part WHERE relname = '$last'");
ok( $node->poll_query_until(
		'postgres', "SELECT to_regclass('tq.$last') IS NOT NULL"),
	'the worker recreates a missing history partition ahead of need');
# A partition whose recorded end lies past the queue's retention is dropped
# with its tasks (the bound is moved back in the catalog to stand in for time).
my ($done, $done_attempt) = split /\|/,
  $node->safe_psql('postgres', q{SELECT id, attempt FROM tq_lease('w', ARRAY['bg'], 1)});
is($node->safe_psql('postgres', "SELECT tq_complete($done, $done_attempt)"), 't', 'a task completes into history');
my $part = $node->safe_psql('postgres',
	q{SELECT p.relname FROM tq.history_part p
	   WHERE p.queue = 'bg' AND now() >= p.lo AND now() < p.hi});
$node->safe_psql('postgres',
	"UPDATE tq.history_part SET hi = now() - interval '30 days' WHERE relname = '$part'");
ok($node->poll_query_until('postgres', "SELECT to_regclass('tq.$part') IS NULL"),
	'the worker drops a partition past retention');
is($node->safe_psql('postgres', "SELECT count(*) FROM tq_task($done)"),
	'0', 'and the finished task in it is gone');

# 3. tq_ready comes from the worker.  The listening session submits the
# task itself, so a notification sent by the producer would carry the
# listener's own pid; it then waits in short steps (psql prints a
# notification after the statement during which it arrived) until it has
# heard one, at most 3 s.
my ($out, $err) = ('', '');
my $script = "LISTEN tq_ready;\nSELECT 'me ' || pg_backend_pid();\nSELECT tq_submit('bg', '{}') > 0;\n"
  . ("SELECT pg_sleep(0.05);\n" x 60);
IPC::Run::run([ 'psql', '-X', '-At', '-d', $node->connstr('postgres') ], '<', \$script, '>', \$out, '2>', \$err);
my ($me) = $out =~ /^me (\d+)$/m;
like($out, qr/Asynchronous notification "tq_ready" with payload "bg" received from server process with PID $pid\./,
	'a listener hears tq_ready for the queue from the worker\'s process');
unlike($out, qr/received from server process with PID $me\./,
	'and not from the producing session');

# 4. A failing pass is logged and the worker carries on.
my $def = $node->safe_psql('postgres', q{SELECT pg_get_functiondef('tq.background_pass()'::regprocedure)});
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres',
	q{CREATE OR REPLACE FUNCTION tq.background_pass() RETURNS double precision LANGUAGE plpgsql
	  AS $$ BEGIN RAISE EXCEPTION 'pass sabotaged by the test'; END $$});
ok( $node->wait_for_log(qr/pass sabotaged by the test/, $log_offset),
	'a failing pass is logged with its error');
$node->safe_psql('postgres', $def);
my $after = $node->safe_psql('postgres',
	q{SELECT tq_submit('bg', '{}', run_at => clock_timestamp() + interval '100 ms')});
ok($node->poll_query_until('postgres', "SELECT state = 'ready' FROM tq_task($after)"),
	'once the pass works again, so does the worker');
is($node->safe_psql('postgres', 'SELECT pid FROM tq_worker_status()'),
	$pid, 'without having been restarted');

# 5a. SIGKILL: the postmaster resets every backend; the worker comes back.
kill 'KILL', $pid;
ok( $node->poll_query_until(
		'postgres', "SELECT running AND pid <> $pid FROM tq_worker_status()"),
	'after SIGKILL (and the crash recovery it causes) a new worker runs');
my $after_kill = $node->safe_psql('postgres',
	q{SELECT tq_submit('bg', '{}', run_at => clock_timestamp() + interval '100 ms')});
ok($node->poll_query_until('postgres', "SELECT state = 'ready' FROM tq_task($after_kill)"),
	'and does its work');

# 5b. pg_terminate_backend: restarted after bgw_restart_time (5 s).
$pid = $node->safe_psql('postgres', 'SELECT pid FROM tq_worker_status()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( $node->poll_query_until(
		'postgres', "SELECT running AND pid <> $pid FROM tq_worker_status()"),
	'a terminated worker is started again');

# 6. A database still at extension version 0.1.0 under this library (the
# library was updated, ALTER EXTENSION not run yet): producers hand their
# wake-ups to the worker, which must still send them.
$pid = $node->safe_psql('postgres', 'SELECT pid FROM tq_worker_status() WHERE running');
$node->safe_psql('postgres',
	q{DROP EXTENSION tq CASCADE; CREATE EXTENSION tq VERSION '0.1.0'; SELECT tq_create_queue('old')});
$script = "LISTEN tq_ready;\nSELECT 'me ' || pg_backend_pid();\nSELECT tq_submit('old', '{}') > 0;\n"
  . ("SELECT pg_sleep(0.05);\n" x 60);
($out, $err) = ('', '');
IPC::Run::run([ 'psql', '-X', '-At', '-d', $node->connstr('postgres') ], '<', \$script, '>', \$out, '2>', \$err);
like($out, qr/Asynchronous notification "tq_ready" with payload "old" received from server process with PID $pid\./,
	'at extension version 0.1.0 the worker still sends the tq_ready producers hand it');

$node->stop;
done_testing();
