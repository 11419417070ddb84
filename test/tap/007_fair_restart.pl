# A crash under load loses no task, and the shared state that fair
# dispatch and quotas live on (counts, virtual clocks), which is lost with
# shared memory, is rebuilt from tq.task well enough that the quotas hold
# at once and the shares stay fair afterwards.
#
#   1. Queue "fair": concurrency 4, 2-second leases, tiny retry backoff.
#      Tenants A (3000 tasks), B and C (600 each), weight 1; C has its own
#      concurrency quota of 2.
#   2. Six worker sessions loop lease (up to 3) / hold 2 ms / complete;
#      three in one transaction, three committing the lease first (so that
#      the crash leaves running tasks behind).  Each records every lease it
#      completed, with t0 right after tq_lease returned and t1 right before
#      tq_complete: [t0, t1] lies within the time the claim counts against
#      the quotas, so at no instant may more than 4 overlap (2 of C's).  A
#      monitoring session samples the shared and the committed running
#      counts meanwhile.  Once 300 leases are done, the test process takes
#      leases of its own, two with a 60-second lease and one with the
#      queue's 2-second lease that it abandons, and crashes the server
#      (immediate stop) and starts it again.
#   3. After the restart: the shared counts (tq_queue_stats, tq_tenants)
#      equal the counts of tq.task; the quota holds at once (a lease gets
#      at most 4 - 2 tasks while the test's two long leases run); the tasks
#      running at the crash are reclaimed when their leases expire.  Then
#      new work arrives: tenant D (new, 300 tasks) and 200 more of B.  D
#      must start at the queue's virtual time (not ahead of everyone, not
#      behind the backlog) and B's new tasks behind B's own backlog: that
#      needs the rebuilt clocks to be right.
#   4. The workers start again and drain the queue.  Over the first 400
#      leases after the restart A, B, C and D each get a quarter (+-10%),
#      as A, B and C each got a third of the first 300 before the crash;
#      the quotas held after the restart too, and were reached; every task
#      succeeded exactly once, those running at the crash at attempt 2.
#   5. Rebuilt clocks, with no load: a long job claimed early and still
#      running at a crash (with nothing else running) must not pull the
#      queue's virtual time back to its key (a new tenant after the
#      restart gets its third, not more); a tenant whose last task had
#      priority -1 must not have that priority's shift taken into its
#      finish time (its next tasks get half, not nothing).
#
# Counts leases, not seconds; every wait polls a condition with a
# deadline.  Durability is 002_crash_under_load.pl's subject: fsync stays
# off here (the TAP kit's default).  Takes about 10 s here.
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

my $queue_quota = 4;
my $c_quota = 2;
my %initial = (A => 3000, B => 600, C => 600);
my %later = (B => 200, D => 300);
my $workers = 6;
my $batch = 3;
my $hold = 0.002;
my $held_n = 2;
my $before_crash = 300;    # leases before the crash (at least)
my $window = 400;          # leases after the restart whose shares are checked
my $deadline_secs = 60;

my $total = 0;
$total += $_ for values %initial, values %later;

my $node = PostgreSQL::Test::Cluster->new('fair');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'tq'
tq.database = 'postgres'
tq.worker_naptime = '200ms'
max_connections = 30
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION tq');

# 1. The queue, the tenants, the tasks.
$node->safe_psql(
	'postgres', qq{
	SELECT tq_create_queue('fair', lease => interval '2 seconds', max_attempts => 100,
	                       backoff_base => interval '10 ms', backoff_cap => interval '50 ms',
	                       concurrency => $queue_quota);
	SELECT tq_set_tenant('fair', 'C', concurrency => $c_quota);
	SELECT tq_submit_many('fair', array_fill('{}'::jsonb, ARRAY[$initial{A}]), tenant => 'A');
	SELECT tq_submit_many('fair', array_fill('{}'::jsonb, ARRAY[$initial{B}]), tenant => 'B');
	SELECT tq_submit_many('fair', array_fill('{}'::jsonb, ARRAY[$initial{C}]), tenant => 'C');});

# Workers and monitor: procedures, so that each loops in one session and
# commits as it goes.  Both stop when the queue has no live task or after
# p_secs; the crash stops them in phase 1.
$node->safe_psql(
	'postgres', q{
	CREATE TABLE leases (phase integer, worker text, id bigint, tenant text, attempt integer,
	                     t0 timestamptz, t1 timestamptz, completed boolean);
	CREATE TABLE held (id bigint, tenant text, attempt integer, t0 timestamptz, kind text);
	CREATE TABLE samples (phase integer, shared_q bigint, shared_c bigint, rows_q bigint,
	                      rows_c bigint);
	CREATE PROCEDURE work(p_phase integer, p_worker text, p_batch integer, p_hold float8,
	                      p_two_tx boolean, p_secs float8)
	LANGUAGE plpgsql AS $$
	DECLARE
		ids bigint[];
		atts integer[];
		tens text[];
		oks boolean[];
		t0 timestamptz;
		t1 timestamptz;
		deadline timestamptz := clock_timestamp() + make_interval(secs => p_secs);
	BEGIN
		LOOP
			EXIT WHEN clock_timestamp() > deadline
			       OR NOT EXISTS (SELECT 1 FROM tq.task t WHERE t.queue = 'fair');
			SELECT array_agg(l.id), array_agg(l.attempt), array_agg(l.tenant)
			  INTO ids, atts, tens
			  FROM tq_lease(p_worker, ARRAY['fair'], p_batch) AS l;
			t0 := clock_timestamp();
			IF ids IS NULL THEN
				COMMIT;
				PERFORM pg_sleep(0.001);    -- a worker would wait for tq_ready
				CONTINUE;
			END IF;
			IF p_two_tx THEN
				COMMIT;
			END IF;
			PERFORM pg_sleep(p_hold);
			t1 := clock_timestamp();
			oks := tq_complete(ids, atts);
			INSERT INTO leases
			SELECT p_phase, p_worker, u.id, u.tenant, u.att, t0, t1, u.ok
			  FROM unnest(ids, tens, atts, oks) AS u(id, tenant, att, ok);
			COMMIT;
		END LOOP;
	END
	$$;
	CREATE PROCEDURE monitor(p_phase integer, p_secs float8)
	LANGUAGE plpgsql AS $$
	DECLARE
		deadline timestamptz := clock_timestamp() + make_interval(secs => p_secs);
	BEGIN
		LOOP
			INSERT INTO samples
			SELECT p_phase,
			       coalesce((SELECT s.running FROM tq_queue_stats s WHERE s.queue = 'fair'), 0),
			       coalesce((SELECT s.running FROM tq_tenants s
			                  WHERE s.queue = 'fair' AND s.tenant = 'C'), 0),
			       (SELECT count(*) FROM tq.task t WHERE t.queue = 'fair' AND t.state = 'running'),
			       (SELECT count(*) FROM tq.task t WHERE t.queue = 'fair' AND t.state = 'running'
			                                         AND t.tenant = 'C');
			COMMIT;
			EXIT WHEN clock_timestamp() > deadline
			       OR NOT EXISTS (SELECT 1 FROM tq.task t WHERE t.queue = 'fair');
			PERFORM pg_sleep(0.002);
		END LOOP;
	END
	$$;});

my $outdir = "$PostgreSQL::Test::Utils::log_path/007_fair_restart";
make_path($outdir);

sub start_session
{
	my ($name, $sql) = @_;
	my $timer = IPC::Run::timeout($deadline_secs + 30, name => $name);
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

sub start_sessions
{
	my ($phase) = @_;
	my @s;
	for my $w (1 .. $workers)
	{
		my $two_tx = $w > $workers / 2 ? 'true' : 'false';
		push @s,
		  start_session("p${phase}w$w",
			"CALL work($phase, 'p${phase}w$w', $batch, $hold, $two_tx, $deadline_secs)");
	}
	push @s, start_session("p${phase}monitor", "CALL monitor($phase, $deadline_secs)");
	return @s;
}

# Waits for the sessions to end (they do by themselves, or the crash ends
# them); the timer only catches a hang.  Returns the ERROR lines they
# printed.
sub finish_sessions
{
	my ($grace, @sessions) = @_;
	my @errors;
	for my $p (@sessions)
	{
		$p->{timer}->start($grace) if defined $grace;
		if (!eval { $p->{h}->finish; 1 })
		{
			push @errors, "$p->{name}: did not end ($@)";
			$p->{h}->kill_kill(grace => 0);
			next;
		}
		push @errors, map { "$p->{name}: $_" }
		  grep { /\bERROR:/ } split /\n/, slurp_file("$outdir/$p->{name}.err");
	}
	return @errors;
}

# Differences between the shared counts and the counts of tq.task, per
# tenant and for the queue; '' when there are none.
my $count_diff = q{
	WITH shared AS (
		SELECT coalesce(tenant, '(no tenant)') AS who, scheduled, ready, paused, running
		  FROM tq_tenants WHERE queue = 'fair'
		UNION ALL
		SELECT '(queue)', scheduled, ready, paused, running FROM tq_queue_stats WHERE queue = 'fair'
	), exact AS (
		SELECT coalesce(tenant, '(no tenant)') AS who,
		       count(*) FILTER (WHERE state = 'scheduled') AS scheduled,
		       count(*) FILTER (WHERE state = 'ready') AS ready,
		       count(*) FILTER (WHERE state = 'paused') AS paused,
		       count(*) FILTER (WHERE state = 'running') AS running
		  FROM tq.task WHERE queue = 'fair' GROUP BY 1
		UNION ALL
		SELECT '(queue)',
		       count(*) FILTER (WHERE state = 'scheduled'),
		       count(*) FILTER (WHERE state = 'ready'),
		       count(*) FILTER (WHERE state = 'paused'),
		       count(*) FILTER (WHERE state = 'running')
		  FROM tq.task WHERE queue = 'fair'
	)
	SELECT coalesce(string_agg(format('%s: shared %s/%s/%s/%s, tq.task %s/%s/%s/%s',
	                                  coalesce(s.who, e.who), s.scheduled, s.ready, s.paused,
	                                  s.running, e.scheduled, e.ready, e.paused, e.running),
	                           '; '), '')
	  FROM shared s FULL JOIN exact e ON e.who = s.who
	 WHERE (coalesce(s.scheduled, 0), coalesce(s.ready, 0), coalesce(s.paused, 0),
	        coalesce(s.running, 0))
	       IS DISTINCT FROM
	       (coalesce(e.scheduled, 0), coalesce(e.ready, 0), coalesce(e.paused, 0),
	        coalesce(e.running, 0))};

# Leases per tenant among the first $n of a phase, in lease order, leaving
# out the tasks listed in $skip.
sub shares
{
	my ($phase, $n, $skip) = @_;
	$skip //= '';
	my %s = map { split /\|/ } split /\n/,
	  $node->safe_psql(
		'postgres', qq{
		SELECT tenant, count(*) FROM (
			SELECT tenant FROM leases
			 WHERE phase = $phase AND id <> ALL ('{$skip}'::bigint[])
			 ORDER BY t0, id LIMIT $n) s
		GROUP BY tenant});
	return \%s;
}

sub check_shares
{
	my ($label, $shares, @tenants) = @_;
	my $fair = 0;
	$fair += $shares->{$_} // 0 for keys %$shares;
	$fair /= @tenants;
	note("$label: " . join(', ', map { "$_ " . ($shares->{$_} // 0) } sort keys %$shares)
		  . sprintf(' (a fair share is %.0f)', $fair));
	for my $t (@tenants)
	{
		my $got = $shares->{$t} // 0;
		ok(abs($got - $fair) <= 0.1 * $fair,
			"$label: tenant $t got $got leases, within 10% of its fair share");
	}
	return;
}

# Most claims held at once in a phase, of the queue and of tenant C
# (intervals of the test's own leases too, when given).
sub overlap
{
	my ($phase, $extra) = @_;
	return split /\|/,
	  $node->safe_psql(
		'postgres', qq{
		WITH iv AS (SELECT tenant, t0, t1 FROM leases WHERE phase = $phase $extra),
		     ev AS (SELECT tenant, t0 AS t, 1 AS d FROM iv
		            UNION ALL SELECT tenant, t1, -1 FROM iv),
		     q AS (SELECT sum(d) OVER (ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS n FROM ev),
		     c AS (SELECT sum(d) OVER (ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS n
		             FROM ev WHERE tenant = 'C')
		SELECT (SELECT max(n) FROM q), coalesce((SELECT max(n) FROM c), 0)});
}

sub sample_max
{
	my ($phase) = @_;
	return split /\|/,
	  $node->safe_psql('postgres',
		"SELECT count(*), max(shared_q), max(shared_c), max(rows_q), max(rows_c)
		   FROM samples WHERE phase = $phase");
}

# 2. Load, then the crash.
my @sessions = start_sessions(1);
my $load_deadline = time + $deadline_secs / 2;
my $done = 0;
while (time < $load_deadline)
{
	$done = $node->safe_psql('postgres', 'SELECT count(*) FROM leases WHERE phase = 1');
	last if $done >= $before_crash;
	usleep(20_000);
}
ok($done >= $before_crash, "$before_crash leases done before the crash ($done)");

# Leases of the test's own, running across the crash: two with a 60-second
# lease, which the test completes after the restart, and one with the
# queue's 2-second lease, which it abandons (as a worker lost in the crash
# would).  The workers keep the queue at its quota, so a loop in the server
# takes room as it frees, one transaction per try: a transaction that
# leased once can hold row locks on tasks other workers claimed meanwhile,
# and waiting for room in it would keep their completions (the room) away.
$node->safe_psql(
	'postgres', q{
	CREATE PROCEDURE hold(p_n integer, p_lease interval, p_kind text)
	LANGUAGE plpgsql AS $$
	DECLARE
		deadline timestamptz := clock_timestamp() + interval '10 seconds';
		got integer := 0;
	BEGIN
		WHILE got < p_n AND clock_timestamp() < deadline LOOP
			INSERT INTO held
			SELECT l.id, l.tenant, l.attempt, clock_timestamp(), p_kind
			  FROM tq_lease('held', ARRAY['fair'], p_n - got, lease => p_lease) AS l;
			COMMIT;
			got := (SELECT count(*) FROM held WHERE kind = p_kind);
		END LOOP;
	END
	$$;});
$node->safe_psql('postgres', "CALL hold($held_n, interval '60 seconds', 'long')");
$node->safe_psql('postgres', "CALL hold(1, NULL, 'short')");
my @held = split /\n/,
  $node->safe_psql('postgres', q{SELECT id || '|' || attempt FROM held WHERE kind = 'long'});
my @abandoned = split /\n/,
  $node->safe_psql('postgres', q{SELECT id FROM held WHERE kind = 'short'});
is(scalar(@held) . ' ' . scalar(@abandoned), "$held_n 1",
	"the test process holds $held_n long leases and 1 short one");
note('leases done at the crash: '
	  . $node->safe_psql('postgres', 'SELECT count(*) FROM leases WHERE phase = 1'));

$node->stop('immediate');
my @errors = finish_sessions(20, @sessions);
is(scalar @errors, 0, 'the sessions met no SQL error before the crash')
  or diag(join("\n", @errors));

# 3. Restart.
my $log_offset = -s $node->logfile;
$node->start;
ok($node->log_contains(qr/database system was not properly shut down|redo done at/, $log_offset),
	'the server went through crash recovery');
note('after the restart: '
	  . $node->safe_psql(
		'postgres', q{
		SELECT string_agg(state || ' ' || n, ', ' ORDER BY state)
		  FROM (SELECT state::text, count(*) AS n FROM tq.task WHERE queue = 'fair' GROUP BY 1) s}));

# The shared counts are rebuilt from tq.task.  (The background worker may
# reclaim an expired lease between the two reads: compare until they agree.)
my $diff;
my $diff_deadline = time + 10;
while (time < $diff_deadline)
{
	$diff = $node->safe_psql('postgres', $count_diff);
	last if $diff eq '';
	usleep(50_000);
}
is($diff, '', 'after the restart the shared counts equal the counts of tq.task');

# The leases running at the crash still count against the quota.
my $held_ids = join(',', map { (split /\|/)[0] } @held);
my @crashed = split /\n/,
  $node->safe_psql('postgres',
	qq{SELECT id FROM tq.task WHERE queue = 'fair' AND id <> ALL ('{$held_ids}'::bigint[])
	    AND (state = 'running' OR last_error LIKE 'lease expired%')});
my @probe = split /\n/,
  $node->safe_psql('postgres',
	q{SELECT id || '|' || attempt FROM tq_lease('probe', ARRAY['fair'], 10, lease => interval '60 seconds')});
ok(@probe <= $queue_quota - $held_n,
	'a lease right after the restart gets at most ' . ($queue_quota - $held_n)
	  . ' tasks while the test\'s ' . "$held_n leases run (got " . scalar(@probe) . ')');
ok( $node->safe_psql('postgres',
		q{SELECT count(*) FROM tq.task WHERE queue = 'fair' AND state = 'running'}) <= $queue_quota,
	"no more than $queue_quota tasks are running");
note(scalar(@crashed) . ' tasks were running at the crash besides the test\'s long leases');
ok((grep { $_ eq ($abandoned[0] // '') } @crashed),
	'the lease the test abandoned is among the tasks running at the crash');

# The test's leases survived the crash and complete.
my @mine = (@held, @probe);
is( $node->safe_psql(
		'postgres', sprintf(q{
		SELECT count(*) FILTER (WHERE ok) FROM unnest(tq_complete('{%s}'::bigint[], '{%s}'::integer[])) AS ok},
			join(',', map { (split /\|/)[0] } @mine), join(',', map { (split /\|/)[1] } @mine))),
	scalar(@mine),
	'the test process completes the leases it held across the crash, and its probe\'s');

# The workers' leases expire (2 s) and their tasks are retried.
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 0 FROM tq.task WHERE queue = 'fair' AND state IN ('running', 'scheduled')}),
	'the tasks running at the crash are reclaimed and ready again');
is($node->safe_psql('postgres', $count_diff),
	'', 'and the shared counts still equal the counts of tq.task');

# Tasks owed from before the crash: parked ones (C at its quota, perhaps
# because the test's own leases are C's) and claims the crash rolled back
# keep their keys, below the queue's virtual time, and by design go first
# once they can run.  The shares after the restart are counted without
# them: they measure where the new dispatch keys are placed.
my $owed = $node->safe_psql(
	'postgres', q{
	SELECT coalesce(string_agg(t.id::text, ','), '') FROM tq.task t
	 WHERE t.queue = 'fair'
	   AND t.vkey < (SELECT c.vclock FROM tq.shared_counts() c WHERE c.queue = 'fair' AND c.is_queue)});
note('tasks owed from before the crash: '
	  . $node->safe_psql(
		'postgres', qq{
		SELECT coalesce(string_agg(tenant || ' ' || n, ', ' ORDER BY tenant), 'none')
		  FROM (SELECT tenant, count(*) AS n FROM tq.task
		         WHERE id = ANY ('{$owed}'::bigint[]) GROUP BY 1) s}));

# New work after the restart.
note('clocks before new work: '
	  . $node->safe_psql(
		'postgres', q{
		SELECT string_agg(coalesce(c.tenant, '(queue)') || ' ' || round(c.vclock::numeric, 1), ', '
		                  ORDER BY c.tenant NULLS FIRST)
		  FROM tq.shared_counts() c WHERE c.queue = 'fair'})
	  . '; lowest ready key '
	  . $node->safe_psql('postgres',
		q{SELECT min(vkey) FROM tq.task WHERE queue = 'fair' AND state = 'ready'}));
$node->safe_psql(
	'postgres', qq{
	SELECT tq_submit_many('fair', array_fill('{}'::jsonb, ARRAY[$later{D}]), tenant => 'D');
	SELECT tq_submit_many('fair', array_fill('{}'::jsonb, ARRAY[$later{B}]), tenant => 'B');});
is($node->safe_psql('postgres', $count_diff), '', 'the shared counts follow the new tasks');

# 4. The workers again, until the queue is empty.
@sessions = start_sessions(2);
@errors = finish_sessions(undef, @sessions);
is(scalar @errors, 0, 'after the restart the sessions ran without an error')
  or diag(join("\n", @errors));
is($node->safe_psql('postgres', q{SELECT count(*) FROM tq.task WHERE queue = 'fair'}),
	'0', 'the workers emptied the queue before their deadline');

# Fair shares, before and after the crash.
check_shares("first $before_crash leases before the crash", shares(1, $before_crash), qw(A B C));
check_shares("first $window leases after the restart (tasks owed from before left out)",
	shares(2, $window, $owed), qw(A B C D));

# Quotas.
my ($q1, $c1) = overlap(1,
	"UNION ALL SELECT tenant, t0, 'infinity' FROM held");
my ($q2, $c2) = overlap(2, '');
my @s1 = sample_max(1);
my @s2 = sample_max(2);
note("most claims held at once: before the crash $q1 (C $c1), after $q2 (C $c2); "
	  . "monitor before (samples, shared, shared C, rows, rows C): @s1; after: @s2");
ok($q1 <= $queue_quota && $c1 <= $c_quota,
	"before the crash no more than $queue_quota claims were held at once ($q1), $c_quota of C ($c1)");
ok($q2 <= $queue_quota && $c2 <= $c_quota,
	"after the restart no more than $queue_quota claims were held at once ($q2), $c_quota of C ($c2)");
is("$q2 $c2", "$queue_quota $c_quota", 'after the restart both quotas were reached');
ok($s1[0] > 0 && $s2[0] > 0, 'the monitor took samples before and after');
ok( $s1[1] <= $queue_quota && $s1[3] <= $queue_quota && $s1[2] <= $c_quota && $s1[4] <= $c_quota,
	'before the crash the monitor never saw a quota exceeded');
ok( $s2[1] <= $queue_quota && $s2[3] <= $queue_quota && $s2[2] <= $c_quota && $s2[4] <= $c_quota,
	'after the restart the monitor never saw a quota exceeded');

# Nothing lost, nothing twice.
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) || ' ' || count(DISTINCT id) || ' ' || count(*) FILTER (WHERE state = 'succeeded')
		FROM tq.history WHERE queue = 'fair'}),
	"$total $total $total",
	"all $total tasks succeeded, each once");
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) FILTER (WHERE n > 1) || ' ' || count(*) FILTER (WHERE NOT ok)
		FROM (SELECT id, count(*) FILTER (WHERE completed) AS n, bool_and(completed) AS ok
		        FROM leases GROUP BY id) s}),
	'0 0',
	'no task was completed twice by the workers, and no completion was refused');
is( $node->safe_psql(
		'postgres', sprintf(q{
		SELECT count(*) FROM tq.history
		 WHERE queue = 'fair' AND id = ANY ('{%s}'::bigint[]) AND attempt >= 2},
			join(',', @crashed))),
	scalar(@crashed),
	'the tasks running at the crash ran again (attempt 2) and succeeded');
is( $node->safe_psql(
		'postgres', q{
		SELECT scheduled + ready + paused + running FROM tq_queue_stats WHERE queue = 'fair'
		UNION ALL
		SELECT count(*) FROM tq_tenants WHERE queue = 'fair' AND scheduled + ready + paused + running > 0}),
	"0\n0",
	'the shared counts end at zero, for the queue and every tenant');

# 5. Two more restarts' worth of clocks, with no load, so that nothing
# else decides the outcome; one crash serves both queues.
#
# Queue "long": a task claimed long before the crash, still running at it,
# must not pull the queue's virtual time back.  Tenants A and B with 500
# tasks each; a long job is claimed first (1-hour lease), then 200 leases
# complete; nothing else runs at the crash.  After the restart a new tenant
# D starts at the queue's virtual time: over the next 150 leases A, B and D
# get a third each, as they do without the crash.
#
# Queue "prio": a tenant's finish time must not take in the priority shift
# of its last task's key.  Tenant A has 500 tasks; tenant L one task of
# priority -1 (its key lies priority_aging / 4 rounds later); 100 leases
# complete.  After the restart L submits 50 tasks of priority 0: over the
# next 100 leases A and L get half each, as they do without the crash.
$node->safe_psql(
	'postgres', q{
	SELECT tq_create_queue('long');
	SELECT tq_submit_many('long', array_fill('{}'::jsonb, ARRAY[500]), tenant => 'A');
	SELECT tq_submit_many('long', array_fill('{}'::jsonb, ARRAY[500]), tenant => 'B');
	SELECT tq_create_queue('prio');
	SELECT tq_submit_many('prio', array_fill('{}'::jsonb, ARRAY[500]), tenant => 'A');
	SELECT tq_submit('prio', '{}', tenant => 'L', priority => -1);
	CREATE TABLE quiet_leases (queue text, phase integer, n serial, tenant text);
	CREATE FUNCTION run_quiet(p_queue text, p_phase integer, p_leases integer) RETURNS bigint
	LANGUAGE plpgsql AS $$
	DECLARE
		r record;
	BEGIN
		WHILE (SELECT count(*) FROM quiet_leases WHERE queue = p_queue AND phase = p_phase)
		      < p_leases LOOP
			FOR r IN SELECT * FROM tq_lease('w', ARRAY[p_queue], 10) LOOP
				PERFORM tq_complete(r.id, r.attempt);
				INSERT INTO quiet_leases (queue, phase, tenant) VALUES (p_queue, p_phase, r.tenant);
			END LOOP;
		END LOOP;
		RETURN (SELECT count(*) FROM quiet_leases WHERE queue = p_queue AND phase = p_phase);
	END
	$$;});
my ($long_id, $long_attempt) = split /\|/,
  $node->safe_psql('postgres',
	q{SELECT id, attempt FROM tq_lease('long-job', ARRAY['long'], 1, lease => interval '1 hour')});
$node->safe_psql('postgres', q{SELECT run_quiet('long', 1, 200); SELECT run_quiet('prio', 1, 100);});
my $clocks = q{
	SELECT string_agg(coalesce(c.tenant, 'V') || ' ' || round(c.vclock::numeric, 1), ', '
	                  ORDER BY c.tenant NULLS FIRST)
	  FROM tq.shared_counts() c WHERE c.queue = $1};
my %clocks_before = map { $_ => $node->safe_psql('postgres', $clocks =~ s/\$1/'$_'/r) } qw(long prio);
$node->stop('immediate');
$node->start;
note("queue $_: clocks before the crash $clocks_before{$_}; after "
	  . $node->safe_psql('postgres', $clocks =~ s/\$1/'$_'/r))
  for qw(long prio);
$node->safe_psql(
	'postgres', q{
	SELECT tq_submit_many('long', array_fill('{}'::jsonb, ARRAY[150]), tenant => 'D');
	SELECT tq_submit_many('prio', array_fill('{}'::jsonb, ARRAY[50]), tenant => 'L');
	SELECT run_quiet('long', 2, 150);
	SELECT run_quiet('prio', 2, 100);});

sub quiet_shares
{
	my ($queue, $n) = @_;
	my %s = map { split /\|/ } split /\n/,
	  $node->safe_psql(
		'postgres', qq{
		SELECT tenant, count(*) FROM (
			SELECT tenant FROM quiet_leases WHERE queue = '$queue' AND phase = 2
			 ORDER BY n LIMIT $n) s
		GROUP BY tenant});
	return \%s;
}
check_shares('queue long (a long job ran across the crash), first 150 leases after it',
	quiet_shares('long', 150), qw(A B D));
check_shares('queue prio (L\'s last task had priority -1), first 100 leases after the crash',
	quiet_shares('prio', 100), qw(A L));
is($node->safe_psql('postgres', "SELECT tq_complete($long_id, $long_attempt)"),
	't', 'the long job completes after the crash');

$node->stop;
note(sprintf('007_fair_restart: %.1f s', time - $started));
done_testing();
