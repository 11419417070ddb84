# What fuzzing and the chaos matrix found (CHANGELOG.md, 0.7.0) that needs a
# real restart or a real tqd; the SQL items are in pgTAP 220, tqd's
# configuration in worker/test/test_config.c (the findings are numbered
# across this file and pgTAP 220).
#
#   2. A queue setting the arithmetic cannot take (priority_aging 5e-324,
#      written behind the checks) and a live task in that queue: after a
#      restart every queue still works, and the server log names the
#      queue whose value was clamped.  It used to stop every tq_submit,
#      tq_lease and the background worker of the database with 22003.
#   4. A task whose program cannot start (no file descriptor left for its
#      pipes) fails its attempts with the queue's backoff and ends dead at
#      max_attempts; it used to be released and leased again in a loop.
#   7. The server's notices and the FATAL of a terminated connection reach
#      tqd's log as logfmt lines, not raw libpq text on stderr.
#
# The server log of the run has no "terminated by signal".  Every wait
# polls a condition with a deadline.
use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use TqdHarness;

my $src = $ENV{TQ_SRCDIR} or die "TQ_SRCDIR is not set (run through test/run-tests.sh)";
my $tqd = $ENV{TQ_TQD_BIN} // "$src/worker/tqd";

my $node = tq_node('fuzz', '100ms');
my $dir = PostgreSQL::Test::Utils::tempdir();
TqdHarness::setup(node => $node, dir => $dir, tqd => $tqd);

# ---------------------------------------------------------------------------
# 2. A bad priority_aging and a restart.
sq(q{
SELECT tq_create_queue('tiny');
SELECT tq_create_queue('other');
SELECT tq_submit('tiny', '{}', priority => 3);
SELECT tq_submit('tiny', '{}', priority => -2);
UPDATE tq.queue SET priority_aging = 5e-324 WHERE name = 'tiny';
});
my $log_from = -s $node->logfile;
$node->restart;
my ($rc, $out, $err) = $node->psql('postgres', q{SELECT tq_submit('other', '{}') > 0});
is($rc, 0, 'after the restart, tq_submit to another queue works') or diag($err);
($rc, $out, $err) = $node->psql('postgres', q{SELECT count(*) FROM tq_lease('w', ARRAY['tiny'], 5)});
is($out, '2', 'the queue with the bad value leases its tasks, in order') or diag($err);
like(substr(slurp_file($node->logfile), $log_from),
	qr/WARNING:  tq: queue "tiny" has priority_aging 4\.94066e-324, out of range; 0\.001 is used/,
	'the server log names the queue whose value was clamped');
ok(poll(q{SELECT ready = 1 FROM tq_queue_stats WHERE queue = 'other'}, 10),
	'tq_queue_stats reads the counters');
ok(poll(q{SELECT passes > 0 FROM tq_worker_status()}, 30), 'the background worker makes its passes');

# ---------------------------------------------------------------------------
# 4 and 7: tqd.
sq(q{
SELECT tq_create_queue('nofd', max_attempts => 3, backoff_base => '10 ms', backoff_cap => '20 ms');
SELECT tq_create_queue('loud', max_attempts => 1);
CREATE FUNCTION public.loud(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RAISE WARNING 'loud task % says hello', p->>'n' USING DETAIL = 'a detail line';
    RETURN '{"ok": true}';
END
$$;
});
my $conf = tqd_conf('tqd.conf', <<"EOF");
reconnect_min = 50ms
reconnect_max = 500ms

[queue:nofd]
handler = exec
command = /bin/cat

[queue:loud]
handler = sql
function = public.loud
EOF
start_tqd('a', $conf);
ok(started('a'), 'tqd connected');
my $ok1 = sq(q{SELECT tq_submit('nofd', '{"n": 1}')});
ok(poll(qq{SELECT state = 'succeeded' FROM tq_task($ok1)}, 30), 'an exec task succeeds while descriptors are free');

# No descriptor left: the soft limit at the lowest free one, so that the
# next pipe(2) fails with EMFILE.
my $pid = tqd_pid('a');
my %open = map { $_ => 1 } grep { /^\d+$/ } map { s{.*/}{}r } glob("/proc/$pid/fd/*");
my $free = 0;
$free++ while $open{$free};
my $hard = `prlimit --pid $pid --nofile --noheadings --output=HARD`;
$hard =~ s/\s+//g;
system('prlimit', "--pid=$pid", "--nofile=$free:$hard") == 0 or die "prlimit failed";
my $bad = sq(q{SELECT tq_submit('nofd', '{"n": 2}')});
ok(poll(qq{SELECT state = 'dead' FROM tq_task($bad)}, 30),
	'a task whose program cannot start ends dead') or diag(sq(qq{SELECT row_to_json(t) FROM tq_task($bad) t}));
is(sq(qq{SELECT attempts FROM tq_task($bad)}), '3', 'after max_attempts (3), each one a failed attempt');
like(sq(qq{SELECT last_error FROM tq_task($bad)}), qr/^could not start the program: .*(open files|descriptor)/i,
	'its last_error says why');
is(sq(qq{SELECT count(*) FROM tq_task_trace($bad) WHERE outcome = 'failed'}), '2',
	'its trace holds two failed attempts before the last');
system('prlimit', "--pid=$pid", "--nofile=$hard:$hard") == 0 or die "prlimit failed";
my $ok2 = sq(q{SELECT tq_submit('nofd', '{"n": 3}')});
ok(poll(qq{SELECT state = 'succeeded' FROM tq_task($ok2)}, 30), 'with descriptors free again, tasks run');

# 7. A WARNING from a task's function, then every tqd connection terminated.
my $l1 = sq(q{SELECT tq_submit('loud', '{"n": 7}')});
ok(poll(qq{SELECT state = 'succeeded' FROM tq_task($l1)}, 30), 'the sql task raising a WARNING succeeds');
ok(poll_log('a', qr/level=warning msg="server notice" conn=\S+ severity=WARNING sqlstate=01000 message="loud task 7 says hello" detail="a detail line"/),
	'its WARNING is a logfmt line with severity, SQLSTATE, message and detail');
# Every client but this one is tqd's (the TAP kit sets PGAPPNAME for all).
is(sq(q{SELECT count(*) >= 3 FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                                   WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()) t}),
	't', "tqd's connections are terminated");
ok(poll_log('a', qr/level=error msg="server notice" conn=\S+ severity=FATAL sqlstate=57P01 message="terminating connection due to administrator command"/),
	'the FATAL of a terminated connection is a logfmt line');
ok(poll_count('a', qr/msg=connected conn=work/, 2), 'tqd reconnected');
my $ok3 = sq(q{SELECT tq_submit('nofd', '{"n": 4}')});
ok(poll(qq{SELECT state = 'succeeded' FROM tq_task($ok3)}, 30), 'and runs tasks again');
my @raw = grep { !/^ts=\S+ level=/ } split /\n/, tqd_log('a');
is_deeply(\@raw, [], 'every line tqd wrote is logfmt');

kill 'TERM', $pid;
is(TqdHarness::wait_exit('a', 30), 0, 'tqd drains and exits 0');

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no server process was terminated by a signal');
done_testing();
