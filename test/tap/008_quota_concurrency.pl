# Concurrency quotas hold exactly under eight concurrent leasers, parked
# tasks come back, and the background worker alone brings them back.
#
#   1. Queue "quota" with concurrency 5; tenant A has concurrency 2 and
#      weight 2 (its fair share, 2.5 of the 5 slots, is above its quota, so
#      the quota binds and A's claims beyond it park), B and C weight 1;
#      2000 tasks.
#   2. Eight worker sessions each loop until the queue is empty: lease up
#      to 3, hold them 10 ms, complete them.  Four do lease and completion
#      in one transaction (and roll every 7th one back: a claim's count
#      must be undone on abort), four commit the lease first, so that
#      running tasks are visible to other sessions.  Each worker records
#      every lease it completed with two clock readings, t0 right after
#      tq_lease returned and t1 right before tq_complete: [t0, t1] lies
#      inside the time the claim counts against the quotas (from the claim
#      to the commit of the completion), so at no instant may more than 5
#      of these intervals overlap (2 of A's).  A ninth session samples the
#      shared counters (tq_queue_stats, tq_tenants) and the committed
#      running rows of tq.task meanwhile: neither may exceed the quotas.
#      The quotas must also be reached (else the test proves nothing), A
#      must have had tasks parked, and in the end every task succeeded
#      exactly once, at attempt 1 (neither parking nor a rolled-back claim
#      uses up an attempt).
#   3. The background worker unparks on its own: queue "solo", tenant X
#      with concurrency 1, 20 tasks.  One lease of 20 claims one task and
#      parks the other 19.  Once that task is completed (room frees), the
#      19 come back to ready with no tq_lease call at all (tq_lease can
#      unpark too, so none is made): the first at once, when the commit
#      that frees the room wakes the worker, the others right after, since
#      the tenant still has room (tq.held_next() says 0) -- not one per
#      tq.worker_naptime (2 s here).  The worker is made to run a pass
#      just before, so that its next timed pass is a full naptime away.
#   4. A lease that unparked and claimed a parked task and then rolled
#      back leaves the task parked; the next leases must still get it.
#
# Counts leases, not seconds; every wait polls a condition with a deadline.
# Takes about 10 s here when nothing fails (a failed wait runs to its deadline).
#
# Run by test/run-tests.sh (make check) with PostgreSQL's TAP kit; needs tq
# installed (make install).
use strict;
use warnings;

use File::Path qw(make_path);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $started = time;

my $queue_quota = 5;
my $tenant_quota = 2;
my %tasks = (A => 800, B => 600, C => 600);
my $total = 0;
$total += $_ for values %tasks;
my $workers = 8;
my $batch = 3;
my $hold = 0.010;             # seconds a worker holds its leases
my $rollback_every = 7;       # one-transaction workers roll back every 7th lease
my $run_deadline = 90;        # seconds, for the whole run (about 10 here)

my $node = PostgreSQL::Test::Cluster->new('quota');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'tq'
tq.database = 'postgres'
tq.worker_naptime = '2s'
max_connections = 30
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tq');

# 1. The queue, the tenants, the tasks; the workers' procedure.
$node->safe_psql(
	'postgres', qq{
	SELECT tq_create_queue('quota', concurrency => $queue_quota);
	SELECT tq_set_tenant('quota', 'A', weight => 2, concurrency => $tenant_quota);
	SELECT tq_set_tenant('quota', 'B');
	SELECT tq_set_tenant('quota', 'C');
	SELECT tq_submit_many('quota', array_fill('{}'::jsonb, ARRAY[$tasks{A}]), tenant => 'A');
	SELECT tq_submit_many('quota', array_fill('{}'::jsonb, ARRAY[$tasks{B}]), tenant => 'B');
	SELECT tq_submit_many('quota', array_fill('{}'::jsonb, ARRAY[$tasks{C}]), tenant => 'C');});
is( $node->safe_psql(
		'postgres', q{SELECT ready || ' ' || running FROM tq_queue_stats WHERE queue = 'quota'}),
	"$total 0", "$total tasks ready");

# One worker: loops until the queue has no live task (or p_secs passed).
# Completed leases go to "leases" with t0 (after tq_lease returned) and t1
# (before tq_complete); what each worker did, to "runs".
$node->safe_psql(
	'postgres', q{
	CREATE TABLE leases (worker text, id bigint, tenant text, attempt integer,
	                     t0 timestamptz, t1 timestamptz, completed boolean);
	CREATE TABLE runs (worker text, iterations integer, completed bigint, rolled_back bigint,
	                   empty_leases bigint);
	CREATE PROCEDURE work(p_worker text, p_queue text, p_batch integer, p_hold float8,
	                      p_two_tx boolean, p_rollback_every integer, p_secs float8)
	LANGUAGE plpgsql AS $$
	DECLARE
		ids bigint[];
		atts integer[];
		tens text[];
		oks boolean[];
		t0 timestamptz;
		t1 timestamptz;
		deadline timestamptz := clock_timestamp() + make_interval(secs => p_secs);
		n_iter integer := 0;
		n_done bigint := 0;
		n_rolled bigint := 0;
		n_empty bigint := 0;
	BEGIN
		LOOP
			EXIT WHEN clock_timestamp() > deadline
			       OR NOT EXISTS (SELECT 1 FROM tq.task t WHERE t.queue = p_queue);
			SELECT array_agg(l.id), array_agg(l.attempt), array_agg(l.tenant)
			  INTO ids, atts, tens
			  FROM tq_lease(p_worker, ARRAY[p_queue], p_batch) AS l;
			t0 := clock_timestamp();
			IF ids IS NULL THEN
				-- Nothing to do (the queue or the tenants at their quotas):
				-- a worker would wait for tq_ready; this one polls.
				n_empty := n_empty + 1;
				COMMIT;
				PERFORM pg_sleep(0.001);
				CONTINUE;
			END IF;
			n_iter := n_iter + 1;
			IF NOT p_two_tx AND p_rollback_every > 0 AND n_iter % p_rollback_every = 0 THEN
				PERFORM pg_sleep(p_hold);
				ROLLBACK;
				n_rolled := n_rolled + cardinality(ids);
				CONTINUE;
			END IF;
			IF p_two_tx THEN
				COMMIT;
			END IF;
			PERFORM pg_sleep(p_hold);
			t1 := clock_timestamp();
			oks := tq_complete(ids, atts);
			INSERT INTO leases
			SELECT p_worker, u.id, u.tenant, u.att, t0, t1, u.ok
			  FROM unnest(ids, tens, atts, oks) AS u(id, tenant, att, ok);
			n_done := n_done + cardinality(ids);
			COMMIT;
		END LOOP;
		INSERT INTO runs VALUES (p_worker, n_iter, n_done, n_rolled, n_empty);
		COMMIT;
	END
	$$;});

# The monitor: samples the shared counters and the committed running rows
# (each sample its own transaction) until the queue has no live task.
$node->safe_psql(
	'postgres', q{
	CREATE UNLOGGED TABLE samples (shared_q bigint, shared_a bigint, rows_q bigint, rows_a bigint,
	                               paused_a bigint);
	CREATE PROCEDURE monitor(p_queue text, p_tenant text, p_secs float8)
	LANGUAGE plpgsql AS $$
	DECLARE
		deadline timestamptz := clock_timestamp() + make_interval(secs => p_secs);
	BEGIN
		LOOP
			INSERT INTO samples
			SELECT coalesce((SELECT s.running FROM tq_queue_stats s WHERE s.queue = p_queue), 0),
			       coalesce((SELECT s.running FROM tq_tenants s
			                  WHERE s.queue = p_queue AND s.tenant = p_tenant), 0),
			       (SELECT count(*) FROM tq.task t WHERE t.queue = p_queue AND t.state = 'running'),
			       (SELECT count(*) FROM tq.task t WHERE t.queue = p_queue AND t.state = 'running'
			                                         AND t.tenant = p_tenant),
			       coalesce((SELECT s.paused FROM tq_tenants s
			                  WHERE s.queue = p_queue AND s.tenant = p_tenant), 0);
			COMMIT;
			EXIT WHEN clock_timestamp() > deadline
			       OR NOT EXISTS (SELECT 1 FROM tq.task t WHERE t.queue = p_queue);
			PERFORM pg_sleep(0.002);
		END LOOP;
	END
	$$;});

# 2. Eight workers and the monitoring session, until the queue is empty.
my $outdir = "$PostgreSQL::Test::Utils::log_path/008_quota_concurrency";
make_path($outdir);

sub start_session
{
	my ($name, $sql) = @_;
	my $timer = IPC::Run::timeout($run_deadline + 30, name => $name);
	my $h = IPC::Run::start(
		[
			'psql', '-X', '-At', '-v', 'ON_ERROR_STOP=1', '-d',
			$node->connstr('postgres'), '-c', $sql
		],
		'<', \undef,
		'>', "$outdir/$name.out",
		'2>', "$outdir/$name.err",
		$timer);
	return { name => $name, h => $h, timer => $timer };
}

my @sessions;
for my $w (1 .. $workers)
{
	my $two_tx = $w > $workers / 2 ? 'true' : 'false';
	push @sessions,
	  start_session("w$w",
		"CALL work('w$w', 'quota', $batch, $hold, $two_tx, $rollback_every, $run_deadline)");
}
push @sessions, start_session('monitor', "CALL monitor('quota', 'A', $run_deadline)");

# Each session ends by itself once the queue is empty (or its deadline
# passed); the timers only catch a hang.
my $all_ok = 1;
for my $p (@sessions)
{
	my $ok = eval { $p->{h}->finish; 1 };
	if (!$ok)
	{
		diag("$p->{name} did not end: $@");
		$p->{h}->kill_kill(grace => 0);
		$all_ok = 0;
		next;
	}
	if (($p->{h}->result(0) // -1) != 0)
	{
		diag("$p->{name} failed: " . slurp_file("$outdir/$p->{name}.err"));
		$all_ok = 0;
	}
}
note(sprintf('%.1f s of load', time - $started));
ok($all_ok, 'every worker session and the monitor ended without an error');
is($node->safe_psql('postgres', q{SELECT count(*) FROM tq.task WHERE queue = 'quota'}),
	'0', 'the workers emptied the queue before their deadline');
note('per worker (iterations, completed, rolled back, empty leases): '
	  . $node->safe_psql('postgres',
		q{SELECT string_agg(format('%s %s/%s/%s/%s', worker, iterations, completed, rolled_back,
		                           empty_leases), ', ' ORDER BY worker) FROM runs}));
my %max;
@max{qw(samples shared_q shared_a rows_q rows_a paused_a)} = split /\|/,
  $node->safe_psql('postgres',
	'SELECT count(*), max(shared_q), max(shared_a), max(rows_q), max(rows_a), max(paused_a) FROM samples');

# Quotas held: the hold intervals, then the monitor's samples.
my ($overlap_q, $overlap_a) = split /\|/,
  $node->safe_psql(
	'postgres', q{
	WITH ev AS (SELECT tenant, t0 AS t, 1 AS d FROM leases
	            UNION ALL SELECT tenant, t1, -1 FROM leases),
	     q AS (SELECT sum(d) OVER (ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS n FROM ev),
	     a AS (SELECT sum(d) OVER (ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS n
	             FROM ev WHERE tenant = 'A')
	SELECT (SELECT max(n) FROM q), (SELECT max(n) FROM a)});
note("most leases held at once: $overlap_q of the queue, $overlap_a of tenant A; monitor: "
	  . join(', ', map { "$_ $max{$_}" } sort keys %max));
ok($overlap_q <= $queue_quota,
	"leases held at once never exceeded the queue's concurrency $queue_quota ($overlap_q)");
ok($overlap_a <= $tenant_quota,
	"tenant A's leases held at once never exceeded its concurrency $tenant_quota ($overlap_a)");
is($overlap_q, $queue_quota, 'the queue did reach its concurrency');
is($overlap_a, $tenant_quota, 'tenant A did reach its concurrency');
ok($max{shared_q} <= $queue_quota,
	"the shared running count of the queue never exceeded $queue_quota ($max{shared_q})");
ok($max{shared_a} <= $tenant_quota,
	"the shared running count of tenant A never exceeded $tenant_quota ($max{shared_a})");
ok($max{rows_q} <= $queue_quota,
	"committed running tasks of the queue never exceeded $queue_quota ($max{rows_q})");
ok($max{rows_a} <= $tenant_quota,
	"committed running tasks of tenant A never exceeded $tenant_quota ($max{rows_a})");
ok($max{samples} > 100, "the monitor took $max{samples} samples");
ok($max{paused_a} > 0, "some of A's claims were parked (at most $max{paused_a} at once)");
ok( $node->safe_psql('postgres', 'SELECT sum(rolled_back) > 0 FROM runs') eq 't',
	'some claims were rolled back');

# Every task succeeded exactly once.
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) || ' ' || count(DISTINCT id) || ' '
		       || count(*) FILTER (WHERE state = 'succeeded') || ' '
		       || count(*) FILTER (WHERE attempt = 1)
		FROM tq.history WHERE queue = 'quota'}),
	"$total $total $total $total",
	"all $total tasks succeeded, each once, at attempt 1");
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) || ' ' || count(DISTINCT id) || ' ' || count(*) FILTER (WHERE completed)
		FROM leases}),
	"$total $total $total",
	'the workers completed each task once, and no completion was refused');
is( $node->safe_psql(
		'postgres', q{
		SELECT string_agg(tenant || ' ' || n, ', ' ORDER BY tenant)
		FROM (SELECT tenant, count(*) AS n FROM tq.history WHERE queue = 'quota' GROUP BY 1) s}),
	join(', ', map { "$_ $tasks{$_}" } sort keys %tasks),
	'per tenant too');
is( $node->safe_psql(
		'postgres', q{
		SELECT string_agg(coalesce(tenant, '-') || ' ' || scheduled || '/' || ready || '/'
		                  || paused || '/' || running || CASE WHEN held THEN ' held' ELSE '' END,
		                  ', ' ORDER BY tenant)
		FROM tq_tenants WHERE queue = 'quota'}),
	'A 0/0/0/0, B 0/0/0/0, C 0/0/0/0',
	'the shared counters are back to zero, nothing held');

# 3. The background worker brings parked tasks back by itself.
is( $node->safe_psql('postgres', 'SELECT running FROM tq_worker_status()'),
	't', 'the background worker runs');
$node->safe_psql(
	'postgres', q{
	SELECT tq_create_queue('solo');
	SELECT tq_set_tenant('solo', 'X', concurrency => 1);
	SELECT tq_submit_many('solo', array_fill('{}'::jsonb, ARRAY[20]), tenant => 'X');
	SELECT tq_create_queue('tick');});
my @solo = split /\n/,
  $node->safe_psql('postgres', q{SELECT id, attempt FROM tq_lease('solo-worker', ARRAY['solo'], 20)});
is(scalar @solo, 1, 'a lease of 20 gets one task (tenant quota 1)');
my ($solo_id, $solo_attempt) = split /\|/, $solo[0] // '0|0';
my $counts_x = q{
	SELECT ready || ' ready, ' || paused || ' paused, ' || running || ' running'
	FROM tq_tenants WHERE queue = 'solo' AND tenant = 'X'};
is($node->safe_psql('postgres', $counts_x),
	'0 ready, 19 paused, 1 running', 'and parks the other 19');
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) FILTER (WHERE state = 'ready') || ' ready, '
		       || count(*) FILTER (WHERE state = 'paused') || ' paused, '
		       || count(*) FILTER (WHERE state = 'running') || ' running'
		FROM tq.task WHERE queue = 'solo'}),
	'0 ready, 19 paused, 1 running',
	'as tq.task says too');

# Make the worker's timed passes predictable: a task delayed by an hour
# makes it run a pass now, after which nothing is due for an hour, so it
# plans its next pass tq.worker_naptime (2 s) later.  Anything it does
# sooner, it does because the room freed.
my $passes = $node->safe_psql('postgres', 'SELECT passes FROM tq_worker_status()');
$node->safe_psql('postgres',
	q{SELECT tq_submit('tick', '{}', run_at => now() + interval '1 hour')});
ok( $node->poll_query_until(
		'postgres', "SELECT passes > $passes FROM tq_worker_status()"),
	'the worker ran a pass, its next timed one is tq.worker_naptime away');

# The room frees; nobody calls tq_lease.
is($node->safe_psql('postgres', "SELECT tq_complete($solo_id, $solo_attempt)"),
	't', 'the running task completes: room for one');
my $freed = time;
my $first_back;
my $back_deadline = $freed + 8;
while (time < $back_deadline)
{
	my $ready = $node->safe_psql('postgres',
		q{SELECT ready FROM tq_tenants WHERE queue = 'solo' AND tenant = 'X'});
	if ($ready > 0)
	{
		$first_back = time - $freed;
		last;
	}
	usleep(20_000);
}
note(sprintf('first parked task back after %s s; now %s',
		defined $first_back ? sprintf('%.2f', $first_back) : 'more than 8',
		$node->safe_psql('postgres', $counts_x)));
ok(defined $first_back && $first_back < 0.5,
	'with no tq_lease call, the worker brings a parked task back to ready at once (< 0.5 s)');
# Only as many come back as the tenant has room for (one): the others stay
# parked until that one is claimed, instead of churning between ready and
# paused.  Several worker passes (tq.worker_min_interval apart) go by.
my $passes_now = $node->safe_psql('postgres', 'SELECT passes FROM tq_worker_status()');
$node->poll_query_until('postgres',
	"SELECT passes >= $passes_now + 2 FROM tq_worker_status()");
is($node->safe_psql('postgres', $counts_x),
	'1 ready, 18 paused, 0 running',
	"only the room's worth (one task) comes back while it is not claimed");
ok( $node->poll_query_until(
		'postgres', q{
		SELECT (SELECT count(*) FROM tq.task
		         WHERE queue = 'solo' AND state = 'ready' AND vkey IS NOT NULL)
		       = (SELECT ready FROM tq_tenants WHERE queue = 'solo' AND tenant = 'X')}),
	'tq.task agrees with the shared counts: the tasks back are ready, with their keys');

# They run, one at a time.
$node->safe_psql(
	'postgres', q{
	CREATE TABLE solo_done (id bigint);
	CREATE FUNCTION solo_step() RETURNS bigint LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO solo_done
		SELECT l.id FROM tq_lease('solo-worker', ARRAY['solo'], 5) AS l
		 WHERE tq_complete(l.id, l.attempt);
		RETURN (SELECT count(*) FROM solo_done);
	END
	$$;});
ok($node->poll_query_until('postgres', 'SELECT solo_step() >= 19'),
	'the other 19 are leased and completed');
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) || ' ' || count(DISTINCT id) || ' ' || count(*) FILTER (WHERE attempt = 1)
		FROM tq.history WHERE queue = 'solo' AND state = 'succeeded'}),
	'20 20 20',
	'all 20 succeeded once, at attempt 1');

# 4. A lease that unparks a task and then rolls back leaves it parked: it
# must still come back.  Queue "undo", tenant Y with concurrency 2, three
# tasks: a lease of 3 runs two and parks one; both complete (room for two);
# a lease in a transaction that rolls back takes the parked task (unparked
# and claimed in that transaction); after the rollback the task is parked
# again, and the next leases must get it (within 5 s: the maintenance
# pass, every tq.maintenance_interval, is not what should bring it back).
$node->safe_psql(
	'postgres', q{
	SELECT tq_create_queue('undo');
	SELECT tq_set_tenant('undo', 'Y', concurrency => 2);
	SELECT tq_submit_many('undo', array_fill('{}'::jsonb, ARRAY[3]), tenant => 'Y');});
my @undo = split /\n/,
  $node->safe_psql('postgres', q{SELECT id || ', ' || attempt FROM tq_lease('w', ARRAY['undo'], 3)});
is(scalar @undo, 2, 'queue undo: a lease of 3 gets two tasks and parks the third');
is( $node->safe_psql(
		'postgres', join('', map { "SELECT tq_complete($_);" } @undo)),
	"t\nt", 'both complete');
my $counts_y = q{
	SELECT ready || ' ready, ' || paused || ' paused, ' || running || ' running'
	FROM tq_tenants WHERE queue = 'undo' AND tenant = 'Y'};
my $rolled = $node->safe_psql('postgres',
	q{BEGIN; SELECT id FROM tq_lease('w', ARRAY['undo'], 1); ROLLBACK;});
like($rolled, qr/^\d+$/, 'a lease in a transaction that rolls back gets the parked task');
like($node->safe_psql('postgres', $counts_y),
	qr/^(0 ready, 1 paused|1 ready, 0 paused), 0 running$/,
	'after the rollback it is parked again (or already back in ready: the worker saw the room)');
my $undo_back;
my $undo_deadline = time + 5;
while (time < $undo_deadline)
{
	$undo_back = $node->safe_psql('postgres',
		q{SELECT l.id FROM tq_lease('w', ARRAY['undo'], 1) AS l WHERE tq_complete(l.id, l.attempt)});
	last if $undo_back ne '';
	usleep(50_000);
}
is($undo_back, $rolled, 'and the next leases get it (within 5 s)')
  or diag('tq_tenants: ' . $node->safe_psql('postgres', $counts_y) . ', held: '
	  . $node->safe_psql('postgres', q{SELECT held FROM tq_tenants WHERE queue = 'undo' AND tenant = 'Y'})
	  . ', tq.task: '
	  . $node->safe_psql('postgres', q{SELECT string_agg(state::text, ',') FROM tq.task WHERE queue = 'undo'}));

$node->stop;
note(sprintf('008_quota_concurrency: %.1f s', time - $started));
done_testing();
