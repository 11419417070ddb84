# One spoiler must not exhaust what everyone shares (issue 15, items 6 and
# 8 of the security review): the tables in shared memory that callers fill.
#
#   1. Fair-dispatch entries (tq.max_tenants = 64).  A producer fills the
#      table with 80 tenants whose tasks run in nine years; a queue made
#      afterwards with backlog_limit 1 and concurrency 1 accepted 5 tasks,
#      ran all 5 at once and showed 0 in its stats.  Now its limits hold,
#      and so do they when the table stays full of tenants with ready
#      tasks, for a tenant given a policy then, and after a restart.  The
#      event is in the server log (once a minute, not once per submit), in
#      tq_shared_usage, and in tqd's /metrics.
#   2. tq_rate_consume.  1,100 calls with rate => 1e-300 filled all 1,024
#      buckets for good, and another role's call with the same key
#      re-rated a worker's bucket.  Now such a rate is refused (22023), a
#      role holds at most tq.max_rate_keys_per_role buckets (53400 beyond,
#      others unaffected), keys are per role, and a role at its cap gets
#      room again once one of its buckets has refilled.
#
# Every wait polls a condition with a deadline.
use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use TqdHarness;

my $src = $ENV{TQ_SRCDIR} or die "TQ_SRCDIR is not set (run through test/run-tests.sh)";
my $tqd = $ENV{TQ_TQD_BIN} // "$src/worker/tqd";

my $node = tq_node('shared', '100ms');
$node->append_conf('postgresql.conf', "tq.max_tenants = 64\n");
$node->restart;
my $dir = PostgreSQL::Test::Utils::tempdir();
TqdHarness::setup(node => $node, dir => $dir, tqd => $tqd);

sq(q{
CREATE ROLE spoiler LOGIN;
CREATE ROLE spoiler2 LOGIN;
CREATE ROLE producer1 LOGIN;
CREATE ROLE worker1 LOGIN;
CREATE ROLE fast LOGIN;
GRANT tq_producer TO spoiler, spoiler2, producer1, fast;
GRANT tq_worker TO worker1;
SELECT tq_create_queue('spoil');
SELECT tq_create_queue('busy');
});

# psql as a role, errors with their SQLSTATE: (exit code, stdout, stderr).
sub as
{
	my ($role, $sql) = @_;
	return $node->psql('postgres', $sql, extra_params => [ '-U', $role, '-v', 'VERBOSITY=verbose' ]);
}

# Submits n tasks one by one as producer1: (accepted, errors of the refused).
sub submit_n
{
	my ($n, $sql) = @_;
	my ($ok, @errs) = (0);
	for (1 .. $n)
	{
		my ($rc, $out, $err) = as('producer1', $sql);
		$rc == 0 ? $ok++ : push(@errs, $err);
	}
	return ($ok, @errs);
}

# Live counts of queue q from shared memory: "scheduled|ready|paused|running".
sub stats
{
	my $q = shift;
	return sq(qq{SELECT concat_ws('|', scheduled, ready, paused, running) FROM tq_queue_stats WHERE queue = '$q'});
}

# Every task is counted once per queue and once per tenant (or overflow entry).
sub counts_add_up
{
	return sq(q{
		SELECT (SELECT sum(scheduled + ready + paused + running) FROM tq_queue_stats)
		     = (SELECT coalesce(sum(scheduled + ready + paused + running), 0) FROM tq_tenants)
		       + (SELECT overflow FROM tq_shared_usage WHERE name = 'tenants')
		   AND (SELECT array_agg(concat_ws('|', queue, scheduled, ready, paused, running) ORDER BY queue) FROM tq_queue_stats)
		     = (SELECT array_agg(concat_ws('|', queue, scheduled, ready, paused, running) ORDER BY queue) FROM tq_queue_stats_exact)});
}

sub full_log_lines
{
	my $offset = shift;
	my $log = slurp_file($node->logfile, $offset);
	my @m = $log =~ /all 64 fair-dispatch entries are in use/g;
	return scalar @m;
}

# ---------------------------------------------------------------------------
# 1a. The finding, as reported.
my $log_offset = -s $node->logfile;
my ($rc, $out, $err) = as('spoiler',
	q{SELECT count(tq_submit('spoil', '{}', run_at => now() + interval '9 years', tenant => 'far' || i)) FROM generate_series(1, 80) i});
is($out, '80', 'the spoiler submits 80 tasks of 80 tenants, due in nine years') or diag($err);
sq(q{SELECT tq_create_queue('limited', backlog_limit => 1, concurrency => 1);
     SELECT tq_create_queue('conc', concurrency => 1)});
my ($ok, @refused) = submit_n(5, q{SELECT tq_submit('limited', '{}')});
is($ok, 1, 'the queue made afterwards with backlog_limit 1 accepts one of five tasks');
is(scalar(grep { /ERROR:  53400: queue "limited" is full/ } @refused), 4, '... and refuses four with 53400, naming the queue');
is(stats('limited'), '0|1|0|0', 'its stats show the task');
($ok) = submit_n(5, q{SELECT tq_submit('conc', '{}', tenant => 'c' || (random() * 1e9)::bigint)});
is($ok, 5, 'a queue with concurrency 1 takes five tasks of five new tenants');
($rc, $out, $err) = as('worker1', q{SELECT count(*) FROM tq_lease('w', ARRAY['limited', 'conc'], 10)});
is($out, '2', 'a worker\'s lease of ten claims two tasks, one of each queue') or diag($err);
is(stats('limited'), '0|0|0|1', 'the limited queue: its one task runs');
is(stats('conc'), '0|4|0|1', 'the concurrency-1 queue: one task runs, four wait');
is(sq(q{SELECT count(*) FROM tq_lease('w2', ARRAY['conc'], 10)}), '0', 'another lease gets none: concurrency 1 holds');
ok(sq(q{SELECT full_events >= 1 AND last_full_at IS NOT NULL AND overflow > 0 AND capacity = 64
          FROM tq_shared_usage WHERE name = 'tenants'}) eq 't',
	'tq_shared_usage shows the table was full, and tasks counted in the overflow entry')
  or diag(sq(q{SELECT row_to_json(u) FROM tq_shared_usage u WHERE name = 'tenants'}));
is(stats('spoil'), '80|0|0|0', "the spoiler's queue counts its 80 tasks");
is(counts_add_up(), 't', 'queue counts equal the tables, and tenants plus overflow add up to them');
ok(full_log_lines($log_offset) >= 1, 'the server log says the table is full');
like(slurp_file($node->logfile, $log_offset), qr/HINT:  Raise tq\.max_tenants/, '... and names the setting');

# ---------------------------------------------------------------------------
# 1b. A table that stays full: 80 tenants with ready tasks (no entry can be
# folded without losing their fair share).
($rc, $out, $err) = as('spoiler', q{SELECT count(tq_submit('busy', '{}', tenant => 'b' || i)) FROM generate_series(1, 80) i});
is($out, '80', 'the spoiler submits 80 ready tasks of 80 tenants') or diag($err);
is(sq(q{SELECT used = capacity FROM tq_shared_usage WHERE name = 'tenants'}), 't', 'the table is full');
sq(q{SELECT tq_create_queue('limited2', backlog_limit => 1, concurrency => 1);
     SELECT tq_create_queue('conc2', concurrency => 1)});
($ok, @refused) = submit_n(5, q{SELECT tq_submit('limited2', '{}')});
is($ok, 1, 'a new queue with backlog_limit 1 accepts one of five tasks while the table is full');
is(scalar(grep { /ERROR:  53400: queue "limited2" is full/ } @refused), 4, '... and refuses four with 53400');
($ok) = submit_n(5, q{SELECT tq_submit('conc2', '{}', tenant => 'n' || (random() * 1e9)::bigint)});
is($ok, 5, 'a new queue with concurrency 1 takes five tasks of five new tenants');
is(sq(q{SELECT count(*) FROM tq_lease('w', ARRAY['limited2', 'conc2'], 10)}), '2', 'a lease claims one task of each');
is(stats('conc2'), '0|4|0|1', 'concurrency 1 holds; the stats are right');

# A tenant given a policy while the table is full gets its limits.
sq(q{SELECT tq_set_tenant('busy', 'vip', concurrency => 1, backlog_limit => 2)});
($ok, @refused) = submit_n(3, q{SELECT tq_submit('busy', '{}', tenant => 'vip')});
is($ok, 2, 'a tenant given backlog_limit 2 while the table is full accepts two tasks');
like($refused[0] // '', qr/ERROR:  53400: tenant "vip" of queue "busy" is full/, '... and refuses the third');

# A tenant counted in the overflow entry, then given a policy: its tasks
# there count against its new limits.
my $folded = sq(q{SELECT 'b' || i FROM generate_series(1, 80) i
                   WHERE NOT EXISTS (SELECT 1 FROM tq_tenants WHERE queue = 'busy' AND tenant = 'b' || i)
                   ORDER BY i LIMIT 1});
ok($folded, "tenant $folded of the busy queue has no entry of its own");
($ok) = submit_n(2, qq{SELECT tq_submit('busy', '{}', tenant => '$folded')});
is($ok, 2, '... and takes two more tasks (three ready)');
sq(qq{SELECT tq_set_tenant('busy', '$folded', concurrency => 1, backlog_limit => 3)});
is(sq(qq{SELECT ready FROM tq_tenants WHERE queue = 'busy' AND tenant = '$folded'}), '3',
	'given a policy, it has an entry that counts its three tasks');
($ok, @refused) = submit_n(1, qq{SELECT tq_submit('busy', '{}', tenant => '$folded')});
is($ok, 0, '... so its backlog_limit of 3 refuses a fourth');
is(sq(q{SELECT count(*) FROM tq_lease('w', ARRAY['busy'], 1000)}), '81',
	'a lease of the busy queue claims one task of each tenant: the 79 others, vip and it (concurrency 1 each)');
is(sq(qq{SELECT string_agg(tenant || ':' || running || '/' || (ready + paused), ',' ORDER BY tenant) FROM tq_tenants
          WHERE queue = 'busy' AND tenant IN ('vip', '$folded')}),
	join(',', sort("$folded:1/2", 'vip:1/1')), 'each runs one task and keeps the others waiting (parked)');
is(counts_add_up(), 't', 'queue counts equal the tables, and tenants plus overflow add up to them');
cmp_ok(sq(q{SELECT full_events FROM tq_shared_usage WHERE name = 'tenants'}), '>', 20,
	'tq_shared_usage counts every time the table was full');
is(full_log_lines($log_offset), 1, '... the server log says it once (once a minute at most), not once per submit');

# ---------------------------------------------------------------------------
# 1c. tqd's /metrics shows it.
my $conf = tqd_conf('tqd.conf', <<"EOF");
metrics_listen = 127.0.0.1:0

[queue:idle]
handler = exec
command = /bin/true
EOF
start_tqd('a', $conf);
ok(started('a'), 'tqd connected');
ok(poll_log('a', qr/serving \/metrics.* port=\d+/), 'tqd serves /metrics');
my ($mport) = tqd_log('a') =~ /serving \/metrics.* port=(\d+)/;
sub scrape
{
	my $text = '';
	IPC::Run::run([ 'curl', '-s', "http://127.0.0.1:$mport/metrics" ], '>', \$text);
	return $text;
}
my $metrics = '';
my $deadline = time + 30;
while (time < $deadline)
{
	$metrics = scrape();
	last if $metrics =~ /^tq_shared_used\{table="tenants"\} 64$/m;
	usleep(100_000);
}
like($metrics, qr/^tq_shared_used\{table="tenants"\} 64$/m, '/metrics: tq_shared_used{table="tenants"} 64');
like($metrics, qr/^tq_shared_capacity\{table="tenants"\} 64$/m, '... tq_shared_capacity 64');
like($metrics, qr/^tq_shared_full_events_total\{table="tenants"\} [1-9]\d*$/m, '... tq_shared_full_events_total above 0');
like($metrics, qr/^tq_shared_overflow_tasks\{table="tenants"\} [1-9]\d*$/m, '... tq_shared_overflow_tasks above 0');
like($metrics, qr/^tq_shared_capacity\{table="rate_buckets"\} 1024$/m, '... and the rate buckets\' capacity');
kill 'TERM', tqd_pid('a');
is(TqdHarness::wait_exit('a', 30), 0, 'tqd drains and exits 0');

# ---------------------------------------------------------------------------
# 1d. A restart while the table is full: the rebuild keeps every limit.
$node->restart;
# Running tasks are not backlog: limited2 (its task runs) has room for one.
($ok) = submit_n(2, q{SELECT tq_submit('limited2', '{}')});
is($ok, 1, 'after a restart, the new queue (its one task running) takes one task and refuses the next (backlog_limit 1)');
is(sq(q{SELECT count(*) FROM tq_lease('w', ARRAY['conc2', 'limited2'], 10)}), '0',
	'... and both new queues lease none while one task of each runs (concurrency 1)');
is(sq(q{SELECT count(*) FROM tq_lease('w', ARRAY['busy'], 1000)}), '0',
	'vip and the adopted tenant, each with one running, get no second');
($ok) = submit_n(2, qq{SELECT tq_submit('busy', '{}', tenant => '$folded')});
is($ok, 1, 'the adopted tenant (one running, two parked) takes one task and refuses the next (backlog_limit 3)');
($ok) = submit_n(2, q{SELECT tq_submit('busy', '{}', tenant => 'vip')});
is($ok, 1, 'so does vip (one running, one parked; backlog_limit 2)');
is(counts_add_up(), 't', 'after the rebuild, queue counts equal the tables, and tenants plus overflow add up');

# Everything runs to the end; the counts go back to what is left (the
# spoiler's 80 tasks due in nine years).
my $rounds = 0;
while (sq(q{SELECT count(*) FROM tq.task WHERE queue <> 'spoil'}) > 0 && $rounds++ < 50)
{
	sq(q{SELECT count(tq_complete(id, attempt)) FROM tq.task WHERE state = 'running'});
	sq(q{SELECT count(tq_complete(l.id, l.attempt))
	       FROM tq_lease('w', ARRAY['limited', 'conc', 'limited2', 'conc2', 'busy'], 1000) l});
}
is(sq(q{SELECT count(*) FROM tq.task WHERE queue <> 'spoil'}), '0', 'every task of the other queues ran');
is(sq(q{SELECT sum(scheduled + ready + paused + running) FROM tq_queue_stats WHERE queue <> 'spoil'}), '0',
	'their counts are back to zero');
is(counts_add_up(), 't', 'queue counts equal the tables, and tenants plus overflow add up');

# ---------------------------------------------------------------------------
# 2a. tq_rate_consume: the 1,100-call attack with a rate that never refills.
sub rate_attack
{
	my ($role, $rate) = @_;
	my ($rc, $out, $err) = as(
		$role, qq{
DO \$\$
DECLARE ok int := 0; bad_rate int := 0; no_room int := 0;
BEGIN
    FOR i IN 1..1100 LOOP
        BEGIN
            PERFORM tq_rate_consume('attack:' || i, 1, rate => $rate, burst => 1);
            ok := ok + 1;
        EXCEPTION
            WHEN invalid_parameter_value THEN bad_rate := bad_rate + 1;
            WHEN configuration_limit_exceeded THEN no_room := no_room + 1;
        END;
    END LOOP;
    RAISE NOTICE 'taken %, bad rate %, no room %', ok, bad_rate, no_room;
END
\$\$});
	my ($counts) = $err =~ /(taken \d+, bad rate \d+, no room \d+)/;
	return $counts // $err;
}
is(rate_attack('spoiler', '1e-300'), 'taken 0, bad rate 1100, no room 0',
	'1,100 calls with rate => 1e-300 are all refused with 22023');
($rc, $out, $err) = as('spoiler', q{SELECT tq_rate_consume('x', 1, rate => 1e-300)});
like($err, qr/ERROR:  22023: rate is out of range.*HINT:  0\.000001 per second/s, '... saying the rate is out of range, with a hint');
is(rate_attack('spoiler', '0.000001'), 'taken 256, bad rate 0, no room 844',
	'at the lowest rate, one role gets 256 buckets (tq.max_rate_keys_per_role), and 844 calls are refused with 53400');
($rc, $out, $err) = as('spoiler', q{SELECT tq_rate_consume('one-more', 1, rate => 1)});
like($err, qr/ERROR:  53400: no room for rate key "one-more": role "spoiler" holds 256 rate buckets, its most/,
	'the role at its cap is told so');
like($err, qr/HINT: .*tq\.max_rate_keys_per_role/, '... with a hint naming the setting');
($rc, $out, $err) = as('worker1', q{SELECT tq_rate_consume('brand-new', 1, rate => 1)});
is($out, 't', 'another role still gets a new key') or diag($err);

# 2b. The overwrite attack: another role names the worker's key with other
# rate and burst.
($rc, $out, $err) = as('worker1', q{SELECT tq_rate_consume('api', 1, rate => 0.001, burst => 10)});
is($out, 't', 'the worker takes a token of its bucket "api" (burst 10)') or diag($err);
($rc, $out, $err) = as('spoiler2', q{SELECT tq_rate_consume('api', 1, rate => 0.000001, burst => 1)});
is($out, 't', 'another role calls with key "api", rate 0.000001 and burst 1: it gets a bucket of its own') or diag($err);
($rc, $out, $err) = as('spoiler', q{SELECT tq_rate_consume('api', 1, rate => 0.000001, burst => 1)});
like($err, qr/53400/, 'the spoiler at its cap cannot even make one');
($rc, $out) = as('worker1', q{SELECT string_agg(tq_rate_consume('api', 1, rate => 0.001, burst => 10)::text, ',') FROM generate_series(1, 10)});
is($out, 'true,true,true,true,true,true,true,true,true,false', "the worker's bucket is intact: 9 more of its 10 tokens, then empty");

# 2c. A role at its cap gets room once one of its buckets has refilled.
$node->append_conf('postgresql.conf', "tq.max_rate_keys_per_role = 3\n");
$node->reload;
ok(poll(q{SELECT current_setting('tq.max_rate_keys_per_role') = '3'}), 'tq.max_rate_keys_per_role = 3 after a reload');
($rc, $out, $err) = as('fast', q{SELECT tq_rate_consume('f1', 1, rate => 1000, burst => 1);
                                 SELECT tq_rate_consume('f2', 1, rate => 0.001);
                                 SELECT tq_rate_consume('f3', 1, rate => 0.001)});
is($rc, 0, 'a role takes three buckets, one that refills in a millisecond') or diag($err);
my $got = 0;
$deadline = time + 30;
while (!$got && time < $deadline)
{
	($rc, $out, $err) = as('fast', q{SELECT tq_rate_consume('f4', 1, rate => 0.001)});
	$got = $rc == 0 && $out eq 't';
	usleep(10_000) unless $got;
}
ok($got, 'a fourth key takes the place of the refilled bucket') or diag($err);
($rc, $out, $err) = as('fast', q{SELECT tq_rate_consume('f5', 1, rate => 0.001)});
like($err, qr/53400: no room for rate key "f5": role "fast" holds 3 rate buckets/, 'a fifth finds none refilled: refused');
is(sq(q{SELECT used >= 256 + 3 AND full_events >= 844 FROM tq_shared_usage WHERE name = 'rate_buckets'}), 't',
	'tq_shared_usage shows the buckets in use and the refusals');

$node->stop;
done_testing();
