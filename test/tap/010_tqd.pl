# tqd, the worker daemon, against a real cluster: every assertion is about
# the tasks' final states in the database.
#
#   1. --check-config: a good file passes; a bad one names file, line and key
#      and exits non-zero; so does starting with it.
#   2. 1 000 exec tasks across two tqd processes: all succeed, each run once
#      (every run of the handler appends a line to a log file).
#   3. Outcomes: JSON stdout is the result, other text a JSON string; exit 75
#      retries (and then succeeds); exit 65 is dead at once with the stderr
#      line in last_error; stderr lines become tq_task_log; a crash
#      (SIGSEGV) is a failure that names the signal; 20 MB of output is
#      capped and the task still succeeds; a program that reads nothing from
#      stdin is fine; a noop queue; a sql queue calling a function.
#   4. A timeout kills the whole process group (the grandchild too).
#   5. tq_cancel of a running task stops it: cancelled.
#   6. SIGHUP with a broken file keeps the old config; with a good one adds
#      a queue.
#   7. SIGTERM drains: a running task finishes, tqd exits 0; with a task
#      longer than drain_timeout, it is handed back (ready again, no attempt
#      used) and tqd exits 0.
#   8. kill -9 of a tqd with tasks running: the leases expire, the other tqd
#      runs them, every task succeeds.
#   9. The server restarted in immediate mode while tqd runs: tqd
#      reconnects, nothing lost, nothing stuck.
#  10. Heartbeats: a task running 5 s under a 2 s lease succeeds at its
#      first attempt (without them it would be reclaimed and run again).
#  11. tqd's connections are terminated while a task runs: the task keeps
#      running, tqd reconnects and reports it: succeeded at attempt 1, run
#      once.
#
# 011_tqd_sanitized.pl runs all of this again with tqd built with
# AddressSanitizer and UBSan (worker/tqd-asan, TQ_TQD_BIN): then, in the end,
# no tqd may have written a report -- no invalid access, no undefined
# behaviour, and no leak at exit (LeakSanitizer) after all these tasks.
#
# Every wait polls a condition with a deadline.
use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;
use IPC::Run;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use TqdHarness;

my $src = $ENV{TQ_SRCDIR} or die "TQ_SRCDIR is not set (run through test/run-tests.sh)";
my $tqd = $ENV{TQ_TQD_BIN} // "$src/worker/tqd";
my $sanitized = defined $ENV{TQ_TQD_BIN};
my $handler = "$src/test/tap/handlers/task.pl";

my $node = tq_node('tqd', '200ms');
$node->safe_psql(
	'postgres', q{
SELECT tq_create_queue('work', lease => '3 seconds', backoff_base => '10 ms', backoff_cap => '20 ms');
SELECT tq_create_queue('short', max_attempts => 1, lease => '5 seconds');
SELECT tq_create_queue('quick', lease => '30 seconds');
SELECT tq_create_queue('noread');
SELECT tq_create_queue('sqlq', max_attempts => 1);
SELECT tq_create_queue('hb', lease => '2 seconds');
SELECT tq_create_queue('slowq', lease => '1 minute');
SELECT tq_create_queue('sqlslow', max_attempts => 1);
SELECT tq_create_queue('bigout');
CREATE FUNCTION public.slow_it(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep((p->>'secs')::float8);
    RETURN '{"slept": true}';
END
$$;
CREATE FUNCTION public.double_it(p jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('doubled', (p->>'n')::int * 2)
$$;
});

my $dir = PostgreSQL::Test::Utils::tempdir();
my $runlog = "$dir/runs.log";
my $host = $node->host;
my $port = $node->port;

sub write_conf
{
	my ($path, $extra) = @_;
	open(my $fh, '>', $path) or die "$path: $!";
	print $fh <<"EOF";
[tqd]
conninfo = host=$host port=$port dbname=postgres
slots = 16
flush_interval = 5ms
poll_interval = 500ms
drain_timeout = 10s
reconnect_min = 50ms
reconnect_max = 500ms
log_level = info

[queue:work]
handler = exec
command = $handler
concurrency = 8
pass_env = PATH TQ_TEST_*   ; TQ_TEST_RUNLOG, the run log

[queue:short]
handler = exec
command = $handler
pass_env = PATH TQ_TEST_*
timeout = 1s
kill_grace = 500ms

[queue:quick]
handler = noop

[queue:noread]
handler = exec
command = /bin/true

[queue:sqlq]
handler = sql
function = public.double_it

[queue:hb]
handler = exec
command = $handler
pass_env = PATH TQ_TEST_*

[queue:slowq]
handler = exec
command = $handler
pass_env = PATH TQ_TEST_*

[queue:sqlslow]
handler = sql
function = public.slow_it
timeout = 1s

[queue:bigout]
handler = exec
command = $handler
pass_env = PATH TQ_TEST_*
max_output = 2MB
EOF
	print $fh $extra if defined $extra;
	close($fh);
	return $path;
}

my $conf = write_conf("$dir/tqd.conf");

TqdHarness::setup(node => $node, dir => $dir, tqd => $tqd, sanitized => $sanitized,
	env => { TQ_TEST_RUNLOG => $runlog });

# ---------------------------------------------------------------------------
# 1. Configuration checks.
my $out;
IPC::Run::run([ $tqd, '-c', $conf, '--check-config' ], '>', \$out, '2>&1');
is($?, 0, 'the test configuration passes --check-config');
like($out, qr/ok \(9 queues\)/, '... and says how many queues it has');

my $bad = "$dir/bad.conf";
open(my $bfh, '>', $bad) or die;
print $bfh "[tqd]\nslots = 4\nslot = 5\n[queue:x]\nhandler = noop\n";
close($bfh);
IPC::Run::run([ $tqd, '-c', $bad, '--check-config' ], '>', \$out, '2>&1');
isnt($?, 0, 'a file with an unknown key fails --check-config');
like($out, qr/\Q$bad\E:3:.*slot/, '... with the file, the line and the key in the message');
IPC::Run::run([ $tqd, '-c', $bad ], '>', \$out, '2>&1');
isnt($?, 0, 'tqd refuses to start with it');
like($out, qr/\Q$bad\E:3:/, '... saying why');

# ---------------------------------------------------------------------------
# 2. 1 000 tasks across two tqd.
start_tqd('a', $conf);
start_tqd('b', $conf);
sq(q{SELECT count(*) FROM tq_submit_many('work', array_fill('{"do":"ok"}'::jsonb, ARRAY[1000]))});
ok(poll(q{SELECT count(*) = 1000 FROM tq.history WHERE queue = 'work' AND state = 'succeeded'}, 120),
	'1 000 exec tasks succeeded across two tqd');
is(sq(q{SELECT count(*) FROM tq.task WHERE queue = 'work'}), '0', 'none is left in the queue');
my @runs = split /\n/, slurp_file($runlog);
my %seen;
$seen{ (split / /, $_)[0] }++ for @runs;
is(scalar(@runs), 1000, 'the handler ran 1 000 times');
is(scalar(keys %seen), 1000, '... once for each task');
is( sq(q{SELECT count(*) FROM tq.history WHERE queue = 'work' AND state = 'succeeded'
          AND result->>'ok' = 'true' AND (result->>'id')::bigint = id AND attempt = 1}),
	'1000', 'each result is the JSON the program printed, for its own task, at attempt 1');
my $workers = sq(q{SELECT count(DISTINCT worker) FROM tq.history WHERE queue = 'work'});
is($workers, '2', 'both tqd took part');

# ---------------------------------------------------------------------------
# 3. Outcomes.
my %id;
for my $case (qw(text retry_once dead segv flood log))
{
	my $queue = $case eq 'segv' ? 'short' : 'work';
	$id{$case} = sq("SELECT tq_submit('$queue', '{\"do\":\"$case\",\"n\":3}')");
}
$id{noread} = sq(q{SELECT tq_submit('noread', jsonb_build_object('big', repeat('x', 500000)))});
$id{noop} = sq(q{SELECT tq_submit('quick', '{}')});
$id{sql} = sq(q{SELECT tq_submit('sqlq', '{"n": 21}')});
$id{sqlbad} = sq(q{SELECT tq_submit('sqlq', '{"n": "x"}')});
$id{sqlslow} = sq(q{SELECT tq_submit('sqlslow', '{"secs": 30}')});
$id{bigout} = sq(q{SELECT tq_submit('bigout', '{"do":"flood"}')});
my $all = join(',', values %id);
ok(poll("SELECT count(*) = " . scalar(keys %id) . " FROM tq.history WHERE id IN ($all)", 60),
	'every outcome case finished');
my %st;
for my $case (keys %id)
{
	$st{$case} = sq("SELECT state || '|' || attempt || '|' || coalesce(last_error, '') || '|' || coalesce(result::text, '') FROM tq.history WHERE id = $id{$case}");
}
like($st{text}, qr/^succeeded\|1\|\|"plain text, not JSON\\n"$/, 'output that is not JSON is stored as a JSON string');
like($st{retry_once}, qr/^succeeded\|2\|exit status 75: try again later\|\{"retried": true\}$/,
	'exit 75 retried, then succeeded (the first failure kept as last_error)');
like($st{dead}, qr/^dead\|1\|exit status 65: bad input\|/, 'exit 65 is dead at once, with the stderr line');
like($st{segv}, qr/^dead\|1\|killed by signal 11/, 'a crash by SIGSEGV names the signal');
like($st{flood}, qr/^succeeded\|1\|/, '20 MB of output: the task still succeeds');
ok(sq("SELECT octet_length(result::text) < 2000000 FROM tq.history WHERE id = $id{flood}") eq 't',
	'... with the output capped');
is(sq("SELECT count(*) FROM tq_task_log($id{log})"), '3', 'stderr lines become the task log');
is(sq("SELECT string_agg(line, ',' ORDER BY n) FROM tq_task_log($id{log})"),
	'log line 1,log line 2,log line 3', '... in order');
like($st{noread}, qr/^succeeded\|1\|/, 'a program that does not read its stdin succeeds');
like($st{noop}, qr/^succeeded\|1\|\|null$/, 'the noop handler completes at once');
like($st{sql}, qr/^succeeded\|1\|\|\{"doubled": 42\}$/, 'the sql handler returns the function\'s result');
like($st{sqlbad}, qr/^dead\|1\|.*SQLSTATE 22P02/, 'a function error is the task\'s error, with its SQLSTATE');
like($st{bigout}, qr/^succeeded\|1\|\|\{"head": .*"tqd_error": "the result was larger than tq.max_payload_size allows"/,
	'a result over tq.max_payload_size is replaced by a note (and the batch still lands)');
like($st{sqlslow}, qr/^dead\|1\|.*statement timeout.*SQLSTATE 57014/, 'a function past the queue\'s timeout is stopped (statement_timeout)');

# ---------------------------------------------------------------------------
# 4. A timeout kills the process group.
my $pidfile = "$dir/grandchild.pid";
my $gc = sq("SELECT tq_submit('short', '{\"do\":\"grandchild\",\"pidfile\":\"$pidfile\"}')");
ok(poll("SELECT state = 'dead' FROM tq_task($gc)", 30), 'a task past its timeout fails (max_attempts 1: dead)');
like(sq("SELECT last_error FROM tq_task($gc)"), qr/timed out after 1 s/, '... with "timed out" as its error');
my $gpid = -e $pidfile ? slurp_file($pidfile) : '';
chomp $gpid;
like($gpid, qr/^\d+$/, 'the program had started a grandchild');
ok(gone($gpid), '... which is gone too: the whole process group was killed') if $gpid =~ /^\d+$/;

# gone PID: the process has exited (a zombie waiting for a reaper counts).
sub gone
{
	my $pid = shift;
	my $deadline = time + 10;
	while (time < $deadline)
	{
		my $stat = -e "/proc/$pid/stat" ? slurp_file("/proc/$pid/stat") : '';
		return 1 if $stat eq '' || $stat =~ /^\d+ \(.*\) [ZX] /;
		usleep(20_000);
	}
	return 0;
}

# ---------------------------------------------------------------------------
# 5. Cancel of a running task.
my $long = sq(q{SELECT tq_submit('work', '{"do":"sleep","secs":60}')});
ok(poll("SELECT state = 'running' FROM tq_task($long)", 30), 'a long task is running');
sq("SELECT tq_cancel($long)");
ok(poll("SELECT state = 'cancelled' FROM tq_task($long)", 30), 'tq_cancel stops it: cancelled');

# ---------------------------------------------------------------------------
# 6. SIGHUP.
my $conf_a = "$dir/a.conf";
write_conf($conf_a);
kill 'TERM', tqd_pid('b');
is(wait_exit('b', 30) // -1, 0, 'tqd b stops on SIGTERM with status 0');
# a: restart on its own file so it can be rewritten.
kill 'TERM', tqd_pid('a');
is(wait_exit('a', 30) // -1, 0, 'tqd a too');
sq(q{SELECT tq_create_queue('later')});
start_tqd('a', $conf_a);
ok(started('a'), 'tqd a starts again on its own file');
my $apid = tqd_pid('a');
open(my $afh, '>>', $conf_a) or die;
print $afh "bogus line without equals\n";
close($afh);
kill 'HUP', $apid;
ok(poll_log('a', qr/reload failed: keeping the old configuration/), 'SIGHUP with a broken file: logged, old config kept');
my $after = sq(q{SELECT tq_submit('work', '{"do":"ok"}')});
ok(poll("SELECT state = 'succeeded' FROM tq_task($after)", 30), '... and tasks still run');
write_conf($conf_a, "\n[queue:later]\nhandler = noop\n");
kill 'HUP', $apid;
ok(poll_log('a', qr/configuration reloaded.*queues=10/), 'SIGHUP with a good file: reloaded');
my $later = sq(q{SELECT tq_submit('later', '{}')});
ok(poll("SELECT state = 'succeeded' FROM tq_task($later)", 30), '... the new queue is served');

# ---------------------------------------------------------------------------
# 7. SIGTERM drains.
my $short_sleep = sq(q{SELECT tq_submit('work', '{"do":"sleep","secs":1.5}')});
ok(poll("SELECT state = 'running' FROM tq_task($short_sleep)", 30), 'a 1.5 s task is running');
kill 'TERM', $apid;
is(wait_exit('a', 30) // -1, 0, 'SIGTERM: tqd exits 0 after the running task');
is(sq("SELECT state FROM tq_task($short_sleep)"), 'succeeded', '... which it let finish');

write_conf($conf_a, "");
{
	open(my $fh, '<', $conf_a) or die;
	local $/;
	my $text = <$fh>;
	close($fh);
	$text =~ s/drain_timeout = 10s/drain_timeout = 500ms/;
	open($fh, '>', $conf_a) or die;
	print $fh $text;
	close($fh);
}
start_tqd('a', $conf_a);
ok(started('a'), 'tqd a starts with drain_timeout 500ms');
$apid = tqd_pid('a');
my $too_long = sq(q{SELECT tq_submit('work', '{"do":"sleep","secs":60}')});
ok(poll("SELECT state = 'running' FROM tq_task($too_long)", 30), 'a 60 s task is running');
kill 'TERM', $apid;
is(wait_exit('a', 30) // -1, 0, 'SIGTERM with drain_timeout 500ms: tqd exits 0');
is(sq("SELECT state || ' ' || (attempt - free_attempts) FROM tq.task WHERE id = $too_long"), 'ready 0',
	'... handing the task back: ready again, no attempt used');
sq("SELECT tq_cancel($too_long)");

# ---------------------------------------------------------------------------
# 8. kill -9 of a tqd with tasks running.
start_tqd('a', $conf);
start_tqd('b', $conf);
ok(started('a') && started('b'), 'two tqd run again');
my @slow = split /\n/, sq(q{SELECT tq_submit('work', '{"do":"sleep","secs":0.5}') FROM generate_series(1, 40)});
my $slow_ids = join(',', @slow);
my $a_pid = tqd_pid('a');
ok(poll("SELECT count(*) > 0 FROM tq.task WHERE id IN ($slow_ids) AND state = 'running'"
	  . " AND worker LIKE '%:$a_pid'", 30), 'tqd a runs some of 40 tasks');
kill 'KILL', tqd_pid('a');
wait_exit('a', 10);
ok(poll("SELECT count(*) = 40 FROM tq.history WHERE id IN ($slow_ids) AND state = 'succeeded'", 60),
	'after kill -9 of tqd a, every task succeeded (the rest by tqd b)');

# ---------------------------------------------------------------------------
# 9. The server restarts in immediate mode under tqd.
my @batch = split /\n/, sq(q{SELECT tq_submit('work', '{"do":"sleep","secs":0.2}') FROM generate_series(1, 60)});
my $batch_ids = join(',', @batch);
ok(poll("SELECT count(*) > 0 FROM tq.history WHERE id IN ($batch_ids)", 30), 'tqd b is working through 60 tasks');
$node->stop('immediate');
$node->start;
ok(poll_count('b', qr/msg=connected conn=work/, 2), 'tqd b reconnects after the restart');
ok(poll("SELECT count(*) = 60 FROM tq.history WHERE id IN ($batch_ids) AND state = 'succeeded'", 90),
	'after an immediate restart of the server, all 60 tasks succeeded');
is(sq("SELECT count(*) FROM tq.task WHERE id IN ($batch_ids)"), '0', 'none is stuck');

# ---------------------------------------------------------------------------
# 10. Heartbeats keep a long task's lease.
my $hb = sq(q{SELECT tq_submit('hb', '{"do":"sleep","secs":5}')});
ok(poll("SELECT state = 'succeeded' FROM tq_task($hb)", 60), 'a 5 s task under a 2 s lease succeeded');
is(sq("SELECT attempts FROM tq_task($hb)"), '1', '... at its first attempt: heartbeats extended the lease');

# ---------------------------------------------------------------------------
# 11. Connections lost while a task runs.
my $runs_before = () = slurp_file($runlog) =~ /\n/g;
my $held = sq(q{SELECT tq_submit('slowq', '{"do":"sleep","secs":3}')});
ok(poll("SELECT state = 'running' FROM tq_task($held)", 30), 'a 3 s task is running');
# Every client but this one is tqd's (the TAP kit sets PGAPPNAME for all).
is(sq(q{SELECT count(*) >= 3 FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                                   WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()) t}),
	't', "tqd's connections are terminated");
ok(poll("SELECT state = 'succeeded' FROM tq_task($held)", 60), 'the task still succeeded');
is(sq("SELECT attempts FROM tq_task($held)"), '1', '... at attempt 1: its outcome was reported after reconnecting');
my $runs_after = () = slurp_file($runlog) =~ /\n/g;
is($runs_after - $runs_before, 1, '... and it ran once');

kill 'TERM', tqd_pid('b');
is(wait_exit('b', 30) // -1, 0, 'tqd b stops cleanly');

no_sanitizer_reports() if $sanitized;

$node->stop;
done_testing();
