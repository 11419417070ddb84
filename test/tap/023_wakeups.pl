# Wake-ups under load (issue 16): steady submits while tqd completes tasks
# in the same database, and every tq_ready the background worker owes
# arrives within a bound.
#
# The worker sends tq_ready for the queues producers flagged, in a
# transaction of its own; its commit takes the notify lock, which tqd's
# completions (tq_done) take too.  Waiting for that lock resets the
# worker's latch, and producers that find their queue flagged already do
# not set it again: 0.6.0 then slept up to tq.worker_naptime with wake-ups
# pending (submit-to-claim p50 228 ms at 500 submits/s).  It now looks at
# the flags again before it sleeps.
#
# Three parts, each a count with a deadline, not a benchmark:
#   1. test/bench/latency.c (the benchmark's wake-up probe) submits one
#      task every 4 ms and times each tq_ready from just before its
#      submit, while tqd (noop) leases and completes them: none lost, none
#      later than 500 ms.  This closed loop does not meet the race (0.6.0
#      passes it too), but it is the probe's view of the same path.
#   2. Open loop, as the issue measured it: 500 submits/s from 4 clients
#      (pgbench --rate) for 10 s into tqd with 8 slots: no task may start
#      more than 500 ms after its submit.  0.6.0 fails it here (1 578 of
#      4 990 late, p50 273 ms, max 932 ms); with the fix none (p50 2 ms,
#      max 25 ms).
#      fsync is on (the test kit turns it off): a commit that flushes holds
#      the notify lock long enough for the worker to meet it.
#   3. The race made to happen: a session holds tq.meta, which the
#      worker's housekeeping reads, so the worker waits for a lock (and its
#      latch is reset) while a task is submitted; once the lock is gone the
#      task must start within 0.4 s (0.007 s with the fix, 0.84 s without:
#      the worker's next housekeeping).
# tqd leases on tq_ready here (poll_interval = 1h), so a lost wake-up
# shows.
use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TqdHarness;

my $src = $ENV{TQ_SRCDIR} or die "TQ_SRCDIR is not set (run through test/run-tests.sh)";
my $tqd = $ENV{TQ_TQD_BIN} // "$src/worker/tqd";

# A naptime far above the bound, and maintenance far away, so that a lost
# wake-up shows as the worker's full nap.
my $node = PostgreSQL::Test::Cluster->new('wakeups');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'tq'
tq.database = 'postgres'
tq.worker_naptime = '5s'
tq.maintenance_interval = '10min'
# PostgreSQL::Test::Cluster turns fsync off; a commit that flushes holds
# the notify lock long enough for the worker to meet it, as users run.
fsync = on
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tq');
my $dir = PostgreSQL::Test::Utils::tempdir();
TqdHarness::setup(node => $node, dir => $dir, tqd => $tqd);

# The probe, compiled as the benchmark compiles it.
my $latency = "$dir/latency";
my $inc = `pg_config --includedir`;
chomp $inc;
my $libdir = `pg_config --libdir`;
chomp $libdir;
system('cc', '-O2', '-Wall', '-I', $inc, '-o', $latency, "$src/test/bench/latency.c", "-L$libdir", '-lpq', '-lm') == 0
  or BAIL_OUT("could not compile test/bench/latency.c");

sq(q{SELECT tq_create_queue('wq')});
# tqd's own configuration, not tqd_conf's: that one polls every 200 ms,
# which would hide a lost wake-up.  Here tqd leases when tq_ready says so
# (and polls only every poll_interval).
sub conf
{
	my ($name, $text) = @_;
	my $path = "$dir/$name";
	open(my $fh, '>', $path) or die "$path: $!";
	printf $fh "[tqd]\nconninfo = host=%s port=%s dbname=postgres\nslots = 8\n%s",
	  $node->host, $node->port, $text;
	close($fh);
	return $path;
}
my $conf = conf('tqd.conf', "poll_interval = 1h\n\n[queue:wq]\nhandler = noop\nconcurrency = 8\n");
start_tqd('a', $conf);
ok(started('a'), 'tqd serves queue wq') or diag(tqd_log('a'));

local $ENV{PGHOST} = $node->host;
local $ENV{PGPORT} = $node->port;
my $out = `$latency ready postgres wq 1500 50 4 2>&1`;
is($? >> 8, 0, 'the probe ran') or diag($out);
my ($n, $lost, $p50, $p99, $max) = $out =~ /result n=(\d+) lost=(\d+) p50=([\d.]+) p99=([\d.]+) max=([\d.]+)/;
ok(defined $n, 'the probe reported') or diag($out);
note("1500 submits, one per 4 ms, tqd completing: p50 $p50 ms, p99 $p99 ms, max $max ms, lost $lost")
  if defined $n;
is($lost, 0, 'no tq_ready was lost (none later than 2 s)');
cmp_ok($max, '<', 500, 'every tq_ready arrived within 500 ms of its submit');
ok(poll(q{SELECT count(*) = 1550 FROM tq.history WHERE queue = 'wq' AND state = 'succeeded'}, 60),
	'and tqd completed every task meanwhile');


# ---------------------------------------------------------------------------
# 2. Open loop: 500 submits/s for 10 s.
my $script = "$dir/submit.sql";
open(my $sfh, '>', $script) or die "$script: $!";
print $sfh "SELECT tq_submit('wq', '{}');\n";
close($sfh);
my $before = sq(q{SELECT count(*) FROM tq.history WHERE queue = 'wq'});
my ($pb_out, $pb_err) = ('', '');
IPC::Run::run([ 'pgbench', '-n', '-c', '4', '-j', '2', '-R', '500', '-T', '10', '-f', $script,
				'-h', $node->host, '-p', $node->port, 'postgres' ], '>', \$pb_out, '2>', \$pb_err);
is($?, 0, 'pgbench submitted at 500/s for 10 s') or diag($pb_err);
my ($sent) = $pb_out =~ /number of transactions actually processed: (\d+)/;
ok(poll("SELECT count(*) = $before + $sent FROM tq.history WHERE queue = 'wq'", 60),
	"tqd ran all $sent tasks");
my $late = sq(qq{SELECT count(*) FILTER (WHERE first_started_at - submitted_at > interval '500 ms')
                   || ' of ' || count(*) || ', p50 '
                   || round(extract(epoch FROM percentile_cont(0.5) WITHIN GROUP
                                      (ORDER BY first_started_at - submitted_at)) * 1000)
                   || ' ms, max ' || round(extract(epoch FROM max(first_started_at - submitted_at)) * 1000)
                   || ' ms'
                   FROM (SELECT * FROM tq.history WHERE queue = 'wq' ORDER BY id OFFSET $before) h});
note("open loop: late $late");
like($late, qr/^0 of /, 'no task started later than 500 ms after its submit');

kill 'TERM', tqd_pid('a');
is(wait_exit('a', 30) // -1, 0, 'tqd exits 0');

# ---------------------------------------------------------------------------
# 3. The worker waits for a lock while a producer commits.  Maintenance is
# run first, so that nothing is due for the worker before its 5 s nap.
sq(q{SELECT tq_create_queue('wq2'); SELECT count(*) FROM tq_maintain()});
my $conf2 = conf('tqd2.conf', "poll_interval = 1h\n\n[queue:wq2]\nhandler = noop\n");
start_tqd('b', $conf2);
ok(started('b'), 'a second tqd serves wq2') or diag(tqd_log('b'));
my $locker = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-c',
	  'BEGIN; LOCK TABLE tq.meta IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);' ],
	'>', \my $lock_out, '2>&1');
ok(poll(q{SELECT count(*) = 1 FROM pg_stat_activity
           WHERE backend_type = 'tq background worker' AND wait_event_type = 'Lock'}, 30),
	'the background worker waits for the lock on tq.meta');
my $id = sq(q{SELECT tq_submit('wq2', '{}')});
ok($id, 'a task is submitted meanwhile');
my $t0 = sq(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid();
              SELECT extract(epoch FROM clock_timestamp())});
$t0 = (split /\n/, $t0)[-1];
$locker->finish;
ok(poll("SELECT state = 'succeeded' FROM tq_task($id)", 30), 'the task ran');
my $wait = sq("SELECT extract(epoch FROM t.first_started_at) - $t0 FROM tq_task($id) t");
note("started ${wait} s after the lock was released");
cmp_ok($wait, '<', 0.4, 'it started within 0.4 s of the lock being released, not at the worker\'s next wake-up');
kill 'TERM', tqd_pid('b');
is(wait_exit('b', 30) // -1, 0, 'the second tqd exits 0');

$node->stop;
done_testing();
