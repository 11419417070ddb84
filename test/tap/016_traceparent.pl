# W3C trace context through tqd: a task's traceparent (from tq_submit's
# argument or the tq.traceparent setting) reaches its handler unchanged.
#
#   1. exec: the program sees TRACEPARENT; a task without one sees none,
#      although tqd itself runs with TRACEPARENT and TRACESTATE set (they
#      are tqd's trace, not the task's).
#   2. http: the request carries a traceparent header; a task without one
#      sends none; a queue's headers may not set traceparent.
#   3. sql: the function runs with tq.traceparent set for its transaction,
#      so a task it submits joins the trace; the next task on the same
#      connection, without one, does not inherit it.
#   4. An extension at 0.5.0 (tq_lease without the column): tqd leases and
#      runs exec and sql tasks as before.
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

my $tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
my $tp2 = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
my $tqd_own = '00-11111111111111111111111111111111-2222222222222222-01';

my $node = tq_node('traceparent', '100ms');
$node->safe_psql(
	'postgres', q{
SELECT tq_create_queue('ex');
SELECT tq_create_queue('web');
SELECT tq_create_queue('fn');
SELECT tq_create_queue('child');   -- no worker serves it: the children stay put
CREATE FUNCTION public.spawn(p jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('child', tq_submit('child', jsonb_build_object('parent', p->'n')),
                              'setting', current_setting('tq.traceparent'))
$$;
CREATE DATABASE old;
});
$node->safe_psql(
	'old', q{
CREATE EXTENSION tq VERSION '0.5.0';
SELECT tq_create_queue('ex');
SELECT tq_create_queue('fn');
CREATE FUNCTION public.spawn(p jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('child', tq_submit('ex', '{"from": "fn"}'))
$$;
});

my $dir = PostgreSQL::Test::Utils::tempdir();
my $host = $node->host;
my $port = $node->port;

# The exec handler's program: what it found in its environment, as JSON.
my $show = "$dir/show-env.sh";
open(my $sh, '>', $show) or die "$show: $!";
print $sh <<'EOF';
#!/bin/sh
cat >/dev/null
tp=null
ts=null
[ -n "${TRACEPARENT+x}" ] && tp="\"$TRACEPARENT\""
[ -n "${TRACESTATE+x}" ] && ts="\"$TRACESTATE\""
printf '{"traceparent": %s, "tracestate": %s}' "$tp" "$ts"
EOF
close($sh);
chmod(0755, $show);


sub write_conf
{
	my ($path, $db, $extra) = @_;
	open(my $fh, '>', $path) or die "$path: $!";
	print $fh <<"EOF";
[tqd]
conninfo = host=$host port=$port dbname=$db
slots = 8
flush_interval = 5ms
poll_interval = 200ms
reconnect_min = 50ms
reconnect_max = 500ms

[queue:ex]
handler = exec
command = $show

[queue:fn]
handler = sql
function = public.spawn
concurrency = 1
EOF
	print $fh $extra if defined $extra;
	close($fh);
	return $path;
}

# tqd's own environment has a trace context; no task may inherit it.
TqdHarness::setup(
	node => $node,
	dir => $dir,
	tqd => $tqd,
	sanitized => defined $ENV{TQ_TQD_BIN},
	env => { TRACEPARENT => $tqd_own, TRACESTATE => 'tqd=own' });

# The test HTTP server: /ok echoes the traceparent header.
my $hport = start_httpd('echo');
ok($hport, 'the test HTTP server listens') or BAIL_OUT('no test server');

# A traceparent in a queue's headers is refused at load, as X-TQ-* are.
my $badconf = write_conf("$dir/bad.conf", 'postgres',
	"\n[queue:web]\nhandler = http\nurl = http://127.0.0.1:$hport/ok\nheaders = X-Env: test\n  traceparent: $tp\n");
my ($out, $err) = ('', '');
IPC::Run::run([ $tqd, '-c', $badconf, '--check-config' ], '>', \$out, '2>', \$err);
like($out . $err, qr/\Q$badconf\E:\d+: key "headers": header "traceparent" cannot be set: tqd sets it from each task's traceparent/,
	'--check-config refuses a traceparent in a queue\'s headers, naming file, line and key');

my $conf = write_conf("$dir/tqd.conf", 'postgres',
	"\n[queue:web]\nhandler = http\nurl = http://127.0.0.1:$hport/ok\nheaders = X-Test: yes\n");
start_tqd('a', $conf);
ok(started('a'), 'tqd connected');

# ---------------------------------------------------------------------------
# 1 and 2: exec and http, with the argument, with the setting, and without.
my $ex1 = sq(qq{SELECT tq_submit('ex', '{}', traceparent => '$tp')});
my $web1 = sq(qq{SELECT tq_submit('web', '{}', traceparent => '$tp')});
my $ex2 = sq(qq{SET tq.traceparent = '$tp2'; SELECT tq_submit('ex', '{}')});
my $web2 = sq(qq{SET tq.traceparent = '$tp2'; SELECT tq_submit('web', '{}')});
my $ex3 = sq(q{SELECT tq_submit('ex', '{}')});
my $web3 = sq(q{SELECT tq_submit('web', '{}')});
ok(poll("SELECT count(*) = 6 FROM unnest(ARRAY[$ex1, $ex2, $ex3, $web1, $web2, $web3]::bigint[]) i, tq_task(i) t"
	  . " WHERE t.state = 'succeeded'", 30),
	'the exec and http tasks succeeded');

is(sq("SELECT result->>'traceparent' FROM tq_task($ex1)"), $tp,
	'exec: the program sees TRACEPARENT, the task\'s traceparent (argument)');
is(sq("SELECT result->>'traceparent' FROM tq_task($ex2)"), $tp2,
	'exec: ... from the submitter\'s tq.traceparent setting');
is(sq("SELECT result->'traceparent' FROM tq_task($ex3)"), 'null',
	'exec: a task without one sees no TRACEPARENT, although tqd has one');
is(sq("SELECT count(*) FROM unnest(ARRAY[$ex1, $ex2, $ex3]::bigint[]) i, tq_task(i) t WHERE t.result->'tracestate' <> 'null'"),
	'0', 'exec: nor tqd\'s TRACESTATE');

is(sq("SELECT result->>'traceparent' FROM tq_task($web1)"), $tp,
	'http: the request carries "traceparent: <the task\'s>"');
is(sq("SELECT result->>'traceparent' FROM tq_task($web2)"), $tp2,
	'http: ... from the submitter\'s setting');
is(sq("SELECT result->>'traceparent' FROM tq_task($web3)"), '',
	'http: a task without one sends no traceparent header (the server echoes a missing one as "")');
is(sq("SELECT result->>'x_test' FROM tq_task($web1)"), 'yes', 'http: the queue\'s own headers still go along');

# ---------------------------------------------------------------------------
# 3: sql.  One connection (concurrency 1): the second task follows the first.
my $fn1 = sq(qq{SELECT tq_submit('fn', '{"n": 1}', traceparent => '$tp')});
ok(poll("SELECT state = 'succeeded' FROM tq_task($fn1)", 30), 'sql: the task with a traceparent succeeded');
my $fn2 = sq(q{SELECT tq_submit('fn', '{"n": 2}')});
ok(poll("SELECT state = 'succeeded' FROM tq_task($fn2)", 30), 'sql: the task without one succeeded');

is(sq("SELECT result->>'setting' FROM tq_task($fn1)"), $tp, 'sql: the function runs with tq.traceparent set');
is(sq("SELECT traceparent FROM tq_task((SELECT (result->>'child')::bigint FROM tq_task($fn1)))"), $tp,
	'sql: the task the function submitted carries the trace on');
is(sq("SELECT result->>'setting' FROM tq_task($fn2)"), '',
	'sql: the next task on the same connection runs without it (SET LOCAL)');
is(sq("SELECT coalesce(traceparent, 'none') FROM tq_task((SELECT (result->>'child')::bigint FROM tq_task($fn2)))"),
	'none', 'sql: ... and its child has none');

kill 'TERM', tqd_pid('a');
is(wait_exit('a', 30), 0, 'tqd exits 0 on SIGTERM');

# ---------------------------------------------------------------------------
# 4: an extension at 0.5.0.  tq_lease has no traceparent column there.
my $oconf = write_conf("$dir/old.conf", 'old');
start_tqd('old', $oconf);
ok(started('old'), 'tqd connected to the database at 0.5.0');
my $old_ex = $node->safe_psql('old', q{SELECT tq_submit('ex', '{}')});
my $old_fn = $node->safe_psql('old', q{SELECT tq_submit('fn', '{}')});
my $ok_old = 0;
my $deadline = time + 30;
while (time < $deadline)
{
	$ok_old = $node->safe_psql('old',
		"SELECT count(*) = 3 FROM tq.history WHERE state = 'succeeded'");
	last if $ok_old eq 't';
	usleep(50_000);
}
is($ok_old, 't', '0.5.0: the exec task, the sql task and the task it submitted all succeeded');
is($node->safe_psql('old', "SELECT result->'traceparent' FROM tq.history WHERE id = $old_ex"), 'null',
	'0.5.0: the program sees no TRACEPARENT');
unlike(tqd_log('old'), qr/level=(error|warning)/, 'tqd logged no error or warning against 0.5.0');
kill 'TERM', tqd_pid('old');
is(wait_exit('old', 30), 0, 'tqd exits 0');

no_sanitizer_reports() if defined $ENV{TQ_TQD_BIN};
done_testing();
