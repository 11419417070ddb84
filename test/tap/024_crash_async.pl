# Asynchronous lease commits and lease ahead (issue 16) through server
# crashes: a lease the crash loses is made again with the same attempt
# number, and the lease token alone tells the two apart.
#
# tqd commits its leases and heartbeats with synchronous_commit = off
# (lease_commit = async, the default) and leases up to lease_ahead tasks
# more than it has free slots.  A crash may then lose a lease that tqd was
# told had committed: the task is 'ready' again at its old attempt number,
# is leased again at the same attempt, and may run twice.  Fencing by
# attempt number cannot tell the two leases apart; each lease's random
# lease_token can, and every call on a lease quotes it.
#
#   1. The SQL level, made to happen: wal_writer_delay = 10s and nothing
#      else committing, so an asynchronous commit stays in the WAL buffers.
#      A worker role (tq_worker, not tq_admin) leases a task with
#      synchronous_commit = off, and the server is crashed at once.  After
#      the restart the lease is gone (ready, attempt 0) -- tried a few times
#      should something flush the WAL meanwhile.  Leased again: attempt 1
#      again, another token.  The stale lease's calls are all refused:
#      tq_heartbeat says lost (and extends nothing), tq_fail, tq_release and
#      tq_complete say false and change nothing; the new lease's complete
#      succeeds, and the task is in the history once.
#   2. tqd under load: 3 000 quick exec tasks of 10 tenants (queue q, 8 at
#      a time, lease_ahead 64) in one tqd with lease_commit = async; once a
#      few hundred are done, 10 000 noop tasks (queue n) join them, and
#      while both flow the server is crashed (immediate stop) and started
#      again at once.  tqd reconnects by itself; its leases (and lease
#      calls on their way), running and buffered tasks and unreported
#      outcomes meet the crash.  Then every task is in the history exactly
#      once, succeeded; each exec task ran at least once, and the runs
#      beyond one per task are few (at-least-once, bounded); the shared
#      counters say nothing is ready or running.
#      The noop queue is there for its pace: a thousand and more leases
#      and outcomes a second, so that the crash likely finds lease batches
#      and outcomes in flight.  (Lease ahead buffers what the slots start in
#      two lease round trips: here, for the exec queue at a hundred or two
#      tasks a second, 0 to 3 tasks when last measured; a noop task starts
#      as soon as it comes.)  Whether a lease commit is lost depends on
#      where the crash falls, so the runs beyond one per task are counted
#      and bounded, not required.
#   3. A tenant quota of 2 on the same queue afterwards: 40 tasks of 50 ms;
#      never more than 2 of them running in the database (buffered tasks
#      are leased, so the quota counts them: lease ahead must not get
#      around it), nor running as programs.  tqd then stops on SIGTERM with
#      status 0.
#
# Every wait polls a condition with a deadline.  About 45 s here (2 CPUs),
# most of it the 3 000 exec runs.
#
# Run by test/run-tests.sh (make check) with PostgreSQL's TAP kit; needs tq
# installed (make install) and tqd built.
use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use TqdHarness;

my $t_start = time;
my $src = $ENV{TQ_SRCDIR} or die "TQ_SRCDIR is not set (run through test/run-tests.sh)";
my $tqd = $ENV{TQ_TQD_BIN} // "$src/worker/tqd";
my $handler = "$src/test/tap/handlers/record.sh";

# ---------------------------------------------------------------------------
# 1. A lease commit lost in a crash, at the SQL level.
#
# Nothing may flush the WAL between the lease and the crash: any
# synchronous commit anywhere in the cluster flushes all WAL before it, and
# the WAL writer flushes every wal_writer_delay.  So: no tq background
# worker (tq.database = '': it would commit its housekeeping), no
# autovacuum, a 10 s wal_writer_delay, and no other session.  (The WAL
# writer is also woken when an asynchronous commit fills a WAL page, but
# then writes only the full pages; the commit record stays in the last,
# partial one.)  An immediate stop kills the server without writing
# anything more; what was written stays in the kernel, and fsync is on so
# that this is also what a power loss would keep.
my $fnode = PostgreSQL::Test::Cluster->new('fence');
$fnode->init;
$fnode->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'tq'
tq.database = ''
autovacuum = off
fsync = on
wal_writer_delay = '10s'
});
$fnode->start;
$fnode->safe_psql(
	'postgres', q{
CREATE EXTENSION tq;
SELECT tq_create_queue('q');
CREATE ROLE wrk LOGIN;
GRANT tq_worker TO wrk;
});

# wrk: a worker role.  Its calls on a lease are looked up (holder and
# token); a tq_admin's without tokens would not be.
sub as_worker { return $fnode->safe_psql('postgres', shift, extra_params => [ '-U', 'wrk' ]); }
sub fq { return $fnode->safe_psql('postgres', shift); }

is(as_worker(q{SELECT pg_has_role('tq_admin', 'USAGE')::text || ' ' || pg_has_role('tq_worker', 'USAGE')}),
	'false true', 'role wrk is a tq_worker, not a tq_admin');

my ($id, $t1, $lost_at, $after);
for my $try (1 .. 5)
{
	# The submit commits synchronously: only the lease can be lost.
	$id = fq(q{SELECT tq_submit('q', '{"n": 1}')});
	my $row = as_worker(
		q{SET synchronous_commit = off;
		  SELECT id, attempt, lease_token FROM tq_lease('w1', ARRAY['q'], 1)});
	my ($lid, $att);
	($lid, $att, $t1) = split /\|/, $row;
	is("$lid $att", "$id 1", "try $try: wrk leased the task at attempt 1, asynchronously");
	$fnode->stop('immediate');
	$fnode->start;
	$after = fq("SELECT state || ' ' || attempt FROM tq.task WHERE id = $id");
	if ($after eq 'ready 0')
	{
		$lost_at = $try;
		last;
	}
	note("try $try: the lease survived the crash ($after); something flushed the WAL");
	# Out of the way of the next try.
	fq("SELECT tq_complete($id, 1)");
}
ok(defined $lost_at,
	'the crash lost the asynchronous lease commit (the task is ready again at attempt 0)')
  or diag("the lease survived the crash 5 times in a row (last: $after): with wal_writer_delay = 10s "
	  . "and nothing else committing it should be lost; what flushed the WAL?");
SKIP:
{
	skip 'no lease was lost: nothing to fence', 13 unless defined $lost_at;
	note("the lease was lost at try $lost_at");

	# Leased again, synchronously: the same attempt number, another token.
	my ($lid2, $att2, $t2) = split /\|/,
	  as_worker(q{SELECT id, attempt, lease_token FROM tq_lease('w1', ARRAY['q'], 1)});
	is("$lid2 $att2", "$id 1", 'leased again: the same task at attempt 1 again');
	isnt($t2, $t1, 'with another lease token');
	ok($t1 =~ /^\d+$/ && $t2 =~ /^\d+$/ && $t1 > 0 && $t2 > 0, 'both tokens are positive numbers');

	my $ids = "ARRAY[$id]::bigint[]";
	my $stale = "ARRAY[$t1]::bigint[]";
	my $fresh = "ARRAY[$t2]::bigint[]";
	my $lease_until = "SELECT lease_until FROM tq.task WHERE id = $id";

	# The old run comes back, quoting its lease: every call is refused.
	my $until0 = fq($lease_until);
	is(as_worker("SELECT id || ' ' || reason FROM tq_heartbeat('w1', $ids, ARRAY[1], leases => $stale)"),
		"$id lost", 'tq_heartbeat with the lost lease\'s token: the task is lost');
	is(fq($lease_until), $until0, '... and its lease was not extended');
	is(as_worker("SELECT tq_fail($ids, ARRAY[1], ARRAY['stale run'], leases => $stale)"),
		'{f}', 'tq_fail with the lost lease\'s token is refused');
	is(as_worker("SELECT tq_release($ids, ARRAY[1], $stale)"),
		'{f}', 'tq_release with the lost lease\'s token is refused');
	is(as_worker("SELECT tq_complete($ids, ARRAY[1], NULL, leases => $stale)"),
		'{f}', 'tq_complete with the lost lease\'s token is refused');
	is( fq( "SELECT state || ' ' || attempt || ' ' || (lease_token = $t2) || ' ' || leased_by::regrole"
			  . " || ' ' || (SELECT count(*) FROM tq.history WHERE id = $id) FROM tq.task WHERE id = $id"),
		'running 1 true wrk 0',
		'the task still runs under the new lease (attempt 1, its token, wrk), not in the history');
	# Why the token: without it the attempt number is all there is to go by,
	# and the old run's calls would pass for the new lease's.
	note('without tokens, tq_heartbeat by wrk at attempt 1 says: "'
		  . as_worker("SELECT string_agg(reason, ',') FROM tq_heartbeat('w1', $ids, ARRAY[1])")
		  . '" (empty: the lease is taken for wrk\'s own)');

	# The new lease's calls go through.
	$until0 = fq($lease_until);
	is(as_worker("SELECT count(*) FROM tq_heartbeat('w1', $ids, ARRAY[1], leases => $fresh)"),
		'0', 'tq_heartbeat with the new token: nothing lost');
	ok(fq("SELECT lease_until > '$until0' FROM tq.task WHERE id = $id") eq 't', '... and the lease was extended');
	is(as_worker("SELECT tq_complete($ids, ARRAY[1], NULL, leases => $fresh)"),
		'{t}', 'tq_complete with the new token succeeds');
	is( fq( "SELECT count(*) || ' ' || string_agg(state::text || ' ' || attempt, ',')"
			  . " || ' ' || (SELECT count(*) FROM tq.task WHERE id = $id) FROM tq.history WHERE id = $id"),
		'1 succeeded 1 0', 'the task is in the history once, succeeded at attempt 1');
}
$fnode->stop;

# ---------------------------------------------------------------------------
# 2. tqd under load, the server crashed.
my $node = PostgreSQL::Test::Cluster->new('load');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'tq'
tq.database = 'postgres'
tq.worker_naptime = '200ms'
tq.maintenance_interval = '1s'
# The TAP kit turns fsync off; users run with it, and the crash should
# find what a crash finds.
fsync = on
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tq');
my $dir = PostgreSQL::Test::Utils::tempdir();
my $runlog = "$dir/runs.log";
TqdHarness::setup(node => $node, dir => $dir, tqd => $tqd);

# A 10 s lease: longer than the server is down, so leases do not expire
# meanwhile (and a task stuck behind one would not hold the test long).
sq(q{SELECT tq_create_queue('q', lease => '10 seconds', backoff_base => '10 ms', backoff_cap => '50 ms')});
sq(q{SELECT tq_create_queue('n', lease => '10 seconds', backoff_base => '10 ms', backoff_cap => '50 ms')});

my $slots = 16;          # 8 for each queue
my $concurrency = 8;     # of queue q
my $lease_ahead = 64;    # of each queue
my $tasks = 3000;        # exec, queue q
my $tenants = 10;
my $noops = 10000;       # queue n
# tqd's configuration, not tqd_conf's (which has slots = 4, and a key may
# not be given twice): quick flushes and polls as there, and quick
# reconnects, so that the restart costs tqd a fraction of a second.
my $conf = "$dir/tqd.conf";
{
	open(my $fh, '>', $conf) or die "$conf: $!";
	my @values = ($node->host, $node->port, $slots, $handler, $runlog, $concurrency, $lease_ahead, $lease_ahead);
	printf $fh <<'EOF', @values;
[tqd]
conninfo = host=%s port=%s dbname=postgres
worker_name = tqd-024
slots = %d
flush_interval = 5ms
poll_interval = 200ms
reconnect_min = 50ms
reconnect_max = 500ms
lease_commit = async
outcome_commit = sync

[queue:q]
handler = exec
command = /bin/sh %s %s
concurrency = %d
lease_ahead = %d

[queue:n]
handler = noop
concurrency = 8
lease_ahead = %d
EOF
	close($fh);
}

sq(join(";\n",
		map { "SELECT count(*) FROM unnest(tq_submit_many('q', array_fill('{}'::jsonb, ARRAY[" . ($tasks / $tenants) . "]), tenant => 't$_'))" }
		  0 .. $tenants - 1));
is(sq(q{SELECT count(*) FROM tq.task WHERE queue = 'q'}), $tasks, "$tasks tasks of $tenants tenants submitted");

start_tqd('a', $conf);
ok(started('a'), 'tqd serves queue q') or diag(tqd_log('a'));

my $done_sql = q{SELECT count(*) FROM tq.history WHERE queue = 'q'};
my $noop_done_sql = q{SELECT count(*) FROM tq.history WHERE queue = 'n'};
ok(poll("SELECT ($done_sql) >= 500", 60), 'a few hundred exec tasks are done')
  or diag(tqd_log('a'));
sq("SELECT count(*) FROM unnest(tq_submit_many('n', array_fill('{}'::jsonb, ARRAY[$noops])))");
ok(poll("SELECT ($noop_done_sql) >= 1500", 60), 'the noop tasks flow too');
my ($done_at_crash, $leased_at_crash, $noop_done_at_crash, $noop_leased_at_crash) = split /\|/,
  sq("SELECT ($done_sql), (SELECT count(*) FROM tq.task WHERE queue = 'q' AND state = 'running'),
             ($noop_done_sql), (SELECT count(*) FROM tq.task WHERE queue = 'n' AND state = 'running')");

# Crash, and up again at once.
my $log_offset = -s $node->logfile;
$node->stop('immediate');
$node->start;
ok($node->log_contains(qr/database system was not properly shut down|redo done at/, $log_offset),
	'the server log shows crash recovery');
note("just before the crash: exec $done_at_crash done, $leased_at_crash leased; noop $noop_done_at_crash "
	  . "done, $noop_leased_at_crash leased (leased: 'running' in the database, that is running, "
	  . "buffered or not yet reported in tqd)");

ok(poll_count('a', qr/msg=connected conn=work/, 2), 'tqd reconnects after the restart');
my $t_wait = time;
ok(poll("SELECT ($done_sql) = $tasks AND ($noop_done_sql) = $noops", 60),
	'every task finished after the restart')
  or diag("done: exec " . sq($done_sql) . ', noop ' . sq($noop_done_sql) . "\n" . tqd_log('a'));
note(sprintf('the rest took %.1f s after the restart', time - $t_wait));

is( sq( q{SELECT count(*) || ' ' || count(DISTINCT id) || ' '
             || count(*) FILTER (WHERE state = 'succeeded') FROM tq.history WHERE queue = 'q'}),
	"$tasks $tasks $tasks",
	'every task is in the history exactly once, succeeded (none lost, none dead)');
is( sq( q{SELECT count(*) || ' ' || count(DISTINCT id) || ' '
             || count(*) FILTER (WHERE state = 'succeeded') FROM tq.history WHERE queue = 'n'}),
	"$noops $noops $noops",
	'... and so is every noop task');
is(sq(q{SELECT count(*) FROM tq.task WHERE queue IN ('q', 'n')}), '0', 'none is left in tq.task');
is( sq( q{SELECT count(DISTINCT tenant) || ' ' || min(n) || ' ' || max(n)
             FROM (SELECT tenant, count(*) AS n FROM tq.history WHERE queue = 'q' GROUP BY 1) s}),
	"$tenants " . ($tasks / $tenants) . ' ' . ($tasks / $tenants),
	'... all of every tenant');

# Runs: at least once each; the ones beyond are the price of losing leases.
my %runs;
my @attempts;
for (split /\n/, (-e $runlog ? slurp_file($runlog) : ''))
{
	my ($tid, $att) = split / /;
	$runs{$tid}++;
	push @attempts, $att;
}
my $history_ids = sq(q{SELECT string_agg(id::text, ' ') FROM tq.history WHERE queue = 'q'});
my @never = grep { !$runs{$_} } split / /, $history_ids;
is(scalar(@never), 0, 'every task ran at least once (a line each in the run log)')
  or diag('never ran: ' . join(' ', @never[ 0 .. ($#never < 20 ? $#never : 19) ]));
my $beyond = 0;
my $twice = 0;
for (values %runs)
{
	$beyond += $_ - 1;
	$twice++ if $_ > 1;
}
my $refused = () = tqd_log('a') =~ /outcome refused/g;
# "lease lost" also comes when a heartbeat meets a task whose outcome has
# just committed on the report connection, before tqd has its answer.
my $hb_lost = () = tqd_log('a') =~ /msg="lease lost: stopping the task"/g;
my $dropped = () = tqd_log('a') =~ /msg="(?:buffered task|outcome) dropped/g;
my $most_runs = (sort { $b <=> $a } values %runs)[0];
note("runs: " . scalar(@attempts) . " for $tasks tasks; $twice tasks ran more than once (at most "
	  . "$most_runs times), $beyond runs beyond one per task; tqd logged $refused outcomes refused, "
	  . "$hb_lost heartbeat answers \"lost\", $dropped buffered tasks or outcomes dropped");
# A run beyond the first needs a lease the crash lost (or one that expired:
# the lease is longer than the server was down).  The leases lost are the
# ones committed after the last WAL flush: outcome batches commit
# synchronously every few milliseconds and flush all WAL before them, so
# only what tqd leased since then -- at most what it holds: its slots, its
# lease-ahead buffer, a lease batch (lease_batch, 200) on its way, and
# outcomes not yet reported.  Each such task runs once more.  500 is
# generous for that (8 running + 64 buffered + 200), and far below the
# 3 000 tasks.
cmp_ok($beyond, '<=', 500,
	"runs beyond one per task are bounded ($beyond <= 500: concurrency $concurrency + lease_ahead "
	  . "$lease_ahead + a lease batch, generously)");
is( sq(q{SELECT string_agg(queue || ' ' || (scheduled + ready + paused + running), ', ' ORDER BY queue)
            FROM tq_queue_stats WHERE queue IN ('q', 'n')}),
	'n 0, q 0', 'tq_queue_stats (shared counters, rebuilt after the restart): nothing ready or running');
unlike(tqd_log('a'), qr/could not set synchronous_commit/, 'tqd set synchronous_commit = off');

# ---------------------------------------------------------------------------
# 3. A tenant quota holds, lease ahead or not.  A session samples, as fast
# as it can, how many of the tenant's tasks are running (leased) in
# tq.task, until all 40 are in the history; each task's program records
# when it ran.
sq(q{SELECT tq_set_tenant('q', 'quota-t', concurrency => 2)});
sq(q{
CREATE FUNCTION quota_sample(secs float8) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    stop timestamptz := clock_timestamp() + make_interval(secs => secs);
    n integer;
    most integer := 0;
    samples integer := 0;
BEGIN
    LOOP
        SELECT count(*) INTO n FROM tq.task
         WHERE queue = 'q' AND tenant = 'quota-t' AND state = 'running';
        most := greatest(most, n);
        samples := samples + 1;
        EXIT WHEN clock_timestamp() > stop
               OR (SELECT count(*) FROM tq.history WHERE queue = 'q' AND tenant = 'quota-t') >= 40;
        PERFORM pg_sleep(0.001);
    END LOOP;
    RETURN most || ' ' || samples;
END
$$});
my ($sample_out, $sample_err) = ('', '');
my $sampler = IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-c', 'SELECT quota_sample(60)' ],
	'>', \$sample_out, '2>', \$sample_err);
ok(poll(q{SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE 'SELECT quota_sample%'}, 30),
	'the sampler runs');
my $quota_ids = sq(q{SELECT array_to_string(tq_submit_many('q', array_fill('{"sleep": 0.05}'::jsonb, ARRAY[40]),
                                                            tenant => 'quota-t'), ' ')});
my %quota = map { $_ => 1 } split / /, $quota_ids;
is(scalar(keys %quota), 40, '40 tasks of tenant quota-t (concurrency 2) submitted');
ok(poll(q{SELECT count(*) = 40 FROM tq.history WHERE queue = 'q' AND tenant = 'quota-t' AND state = 'succeeded'}, 60),
	'they all succeeded');
$sampler->finish;
my ($most, $samples) = split / /, $sample_out;
ok(defined $samples && $samples > 10, 'the sampler looked often (' . ($samples // 0) . ' samples)')
  or diag($sample_err);
# 2 were, too: the quota is not held lower by counts left from the crash.
is($most, '2', 'at most 2 of them were ever running (leased, buffered included) in the database, and 2 were');

# The programs: at most 2 at once, from their start and end times.
my @ev;
my %quota_runs;
for (split /\n/, (-e $runlog ? slurp_file($runlog) : ''))
{
	my ($tid, $att, $s, $e) = split / /;
	next unless $quota{$tid};
	$quota_runs{$tid}++;
	push @ev, [ $s, 1 ], [ $e, -1 ];
}
is(scalar(keys %quota_runs), 40, 'each of them ran');
my ($cur, $peak) = (0, 0);
for (sort { $a->[0] <=> $b->[0] || $a->[1] <=> $b->[1] } @ev)
{
	$cur += $_->[1];
	$peak = $cur if $cur > $peak;
}
cmp_ok($peak, '<=', 2, "at most 2 of their programs ran at once ($peak)");

# ---------------------------------------------------------------------------
kill 'TERM', tqd_pid('a');
is(wait_exit('a', 30) // -1, 0, 'tqd exits 0 on SIGTERM');
is(sq(q{SELECT count(*) FROM tq.task WHERE state = 'running'}), '0', 'and holds no lease after it stopped');

$node->stop;
note(sprintf('024_crash_async: %.1f s', time - $t_start));
done_testing();
