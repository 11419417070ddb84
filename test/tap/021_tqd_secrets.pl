# tqd's side of the security review (issue 15, items 10, 11, 14 and 15):
# each attack is tried against a real tqd, and the refusal asserted.
#
#   1. Tenants that would break a request header (CR LF, tab, DEL, U+0085,
#      U+2028, U+2029), written into tq.task as superuser behind tq's
#      checks: no request for those tasks reaches the HTTP server; each is
#      dead at its first attempt, its last_error saying why, and tqd logs
#      it.  A plain tenant still goes out as X-TQ-Tenant.
#   2. An http queue's URL with an API key in its query: the key is in no
#      task log (tq_task_log, which producers read), no line of tqd's log
#      (the failed attempts, the endpoint status lines), not on /metrics,
#      not on the dashboard's /api/tqd; those show the URL with
#      "?<redacted>".  Two URLs that differ only in the query are two
#      series.  A URL with user:password@ is refused by --check-config and
#      by a reload, neither printing the password.
#   3. tqd runs with PGPASSWORD and AWS_SECRET_ACCESS_KEY in its
#      environment: an exec task that dumps its environment sees neither,
#      sees PATH (the default pass_env) and the task's TQ_* variables, and
#      a variable the queue's pass_env lists.
#   4. The configuration file holds an Authorization header and is
#      readable by every user: --check-config and tqd's startup warn,
#      naming the header (not its value) and saying chmod 600; after
#      chmod 600, no warning.
#
# The test's own listeners (the HTTP server, /metrics) use ports below
# 32768, from TQ_TEST_PORT + 40 on.  Every wait polls a condition with a
# deadline.
use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;
use IO::Socket::INET;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use TqdHarness;

my $src = $ENV{TQ_SRCDIR} or die "TQ_SRCDIR is not set (run through test/run-tests.sh)";
my $tqd = $ENV{TQ_TQD_BIN} // "$src/worker/tqd";

# The values that must never be seen.
my $api_key = 'SECRETKEY123';
my $other_key = 'OTHERSECRET456';
my $bearer = 'TOPSECRET-HEADER';
my $userpass = 'USERPASS789';
my $pgpassword = 'PGSECRET-hunter2';
my $aws_secret = 'AWSSECRET-wJalrXUtnFEMI';

# A free port below 32768, from TQ_TEST_PORT + 40 on.
my $next_port = ($ENV{TQ_TEST_PORT} // 21100) + 40;

sub free_port
{
	for (1 .. 50)
	{
		my $p = $next_port++;
		my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $p, Proto => 'tcp', ReuseAddr => 1);
		next unless $s;
		close($s);
		return $p if $p < 32768;
	}
	die "no free port below 32768 from " . ($next_port - 50);
}

my $node = tq_node('secrets', '100ms');
my $dir = PostgreSQL::Test::Utils::tempdir();
TqdHarness::setup(
	node => $node,
	dir => $dir,
	tqd => $tqd,
	sanitized => defined $ENV{TQ_TQD_BIN},
	env => { PGPASSWORD => $pgpassword, AWS_SECRET_ACCESS_KEY => $aws_secret, TQ_ALLOWED_VAR => 'allowed' });

my $hport = start_httpd('srv', '--port', free_port());
my $base = "http://127.0.0.1:$hport";
my $mport = free_port();

sq(q{
SELECT tq_create_queue('hdr', max_attempts => 3);
SELECT tq_create_queue('keyq', max_attempts => 2, backoff_base => '10 ms', backoff_cap => '20 ms');
SELECT tq_create_queue('keyq2', max_attempts => 1);
SELECT tq_create_queue('envdef');
SELECT tq_create_queue('envallow');
});

# ---------------------------------------------------------------------------
# 1. Bad tenants, written behind tq's checks (tq_submit would refuse the
# control characters); inserted before tqd starts, so each is leased as is.
my %bad = (
	'CR LF' => [ q{E'acme\r\nX-Injected: yes'}, qr/control character 0x0d at byte 5/ ],
	'tab' => [ q{E'tab\tx'}, qr/control character 0x09 at byte 4/ ],
	'DEL' => [ q{E'del\x7f'}, qr/control character 0x7f at byte 4/ ],
	'U+0085' => [ q{E'nel\u0085x'}, qr/U\+0085 at byte 4/ ],
	'U+2028' => [ q{E'ls\u2028x'}, qr/U\+2028 at byte 3/ ],
	'U+2029' => [ q{E'ps\u2029x'}, qr/U\+2029 at byte 3/ ],
);
my %bad_id;
for my $what (sort keys %bad)
{
	$bad_id{$what} = sq(qq{INSERT INTO tq.task (queue, state, tenant, payload, max_attempts)
	                       VALUES ('hdr', 'ready', $bad{$what}[0], '{}', 3) RETURNING id});
}
my $good = sq(q{SELECT tq_submit('hdr', '{"n": 1}', tenant => 'acme')});

# ---------------------------------------------------------------------------
# The configuration: an Authorization header, API keys in two URLs.
my $conf = tqd_conf('tqd.conf', <<"EOF");
status_interval = 100ms
metrics_listen = 127.0.0.1:$mport
dashboard = on

[queue:hdr]
handler = http
url = $base/ok
headers = Authorization: Bearer $bearer

[queue:keyq]
handler = http
url = $base/status?code=500&api_key=$api_key

[queue:keyq2]
handler = http
url = $base/status?code=500&api_key=$other_key

[queue:envdef]
handler = exec
command = /usr/bin/env

[queue:envallow]
handler = exec
command = /usr/bin/env
pass_env = PATH TQ_ALLOWED_*
EOF

# 4. Readable by every user, with a secret in it.
chmod(0644, $conf) or die "chmod: $!";
my ($out, $err) = ('', '');
IPC::Run::run([ $tqd, '-c', $conf, '--check-config' ], '>', \$out, '2>', \$err);
is($?, 0, '--check-config passes a mode 0644 file with an Authorization header');
like($err, qr/warning: \Q$conf\E can be read by every user \(mode 0644\) and holds secrets: header "Authorization" of queue "hdr", URL parameter "api_key" of queue "keyq", URL parameter "api_key" of queue "keyq2"/,
	'... and warns, naming the secrets');
like($err, qr/hint: chmod 600 \Q$conf\E/, '... saying how to fix it');
unlike($err . $out, qr/\Q$bearer\E|\Q$api_key\E|\Q$other_key\E/, '... without printing a secret');

start_tqd('a', $conf);
ok(started('a'), 'tqd connected');
ok(poll_log('a', qr/level=warning msg="configuration file holds secrets that others can read" file=\S+ mode=0644 readable_by=all secrets=.*header \\"Authorization\\" of queue \\"hdr\\".* hint="chmod 600 /),
	'tqd warns at startup too');

# ---------------------------------------------------------------------------
# 1. The header.
ok(poll(qq{SELECT state = 'succeeded' FROM tq_task($good)}, 30), 'a task with a plain tenant succeeds');
like(sq(qq{SELECT result::text FROM tq_task($good)}), qr/"tenant": "acme"/, '... its tenant sent in X-TQ-Tenant');
for my $what (sort keys %bad)
{
	my $id = $bad_id{$what};
	ok(poll(qq{SELECT state = 'dead' FROM tq_task($id)}, 30), "tenant with $what: the task is dead")
	  or diag(sq(qq{SELECT row_to_json(t) FROM tq_task($id) t}));
	is(sq(qq{SELECT attempts FROM tq_task($id)}), '1', "tenant with $what: at its first attempt (never retried)");
	like(sq(qq{SELECT last_error FROM tq_task($id)}),
		qr/^the task's tenant cannot be sent in the X-TQ-Tenant header: $bad{$what}[1]/,
		"tenant with $what: last_error says why");
	ok(poll_log('a', qr/level=error msg="tenant not sent: it cannot be a header value" task=$id /),
		"tenant with $what: tqd logs it");
}
my @requests = split /\n/, slurp_file(httpd_log('srv'));
my %sent = map { /task=(\d+)/ ? ($1 => 1) : () } @requests;
ok($sent{$good}, 'the server saw the good task');
is_deeply([ grep { $sent{$_} } map { $bad_id{$_} } sort keys %bad ], [],
	'the server saw no request of a task with a bad tenant');

# ---------------------------------------------------------------------------
# 2. The API keys.
my $k1 = sq(q{SELECT tq_submit('keyq', '{}')});
my $k2 = sq(q{SELECT tq_submit('keyq2', '{}')});
ok(poll(qq{SELECT state = 'dead' FROM tq_task($k1)}, 30), 'a task of the queue with an API key in its URL fails its attempts');
ok(poll(qq{SELECT state = 'dead' FROM tq_task($k2)}, 30), 'so does one of the other queue');
my $log1 = sq(qq{SELECT string_agg(line, E'\\n' ORDER BY n) FROM tq_task_log($k1)});
my $log2 = sq(qq{SELECT string_agg(line, E'\\n' ORDER BY n) FROM tq_task_log($k2)});
like($log1, qr/^POST \Q$base\E\/status\?<redacted>: HTTP 500/m, 'the task log shows the URL with ?<redacted>');
is(scalar(() = $log1 =~ /^POST /mg), 2, '... one line per failed attempt');
unlike($log1 . $log2, qr/\Q$api_key\E|\Q$other_key\E|api_key/, 'no task log holds the key');

sub fetch
{
	my $path = shift;
	my $body = '';
	IPC::Run::run([ 'curl', '-s', "http://127.0.0.1:$mport/$path" ], '>', \$body);
	return $body;
}
my $metrics = fetch('metrics');
like($metrics, qr/^tqd_http_answers_total\{url="\Q$base\E\/status\?<redacted>"\} \d+$/m, '/metrics labels the endpoint with ?<redacted>');
like($metrics, qr/^tqd_http_answers_total\{url="\Q$base\E\/status\?<redacted> \(2\)"\} \d+$/m,
	'... and the other URL of the same path as a series of its own, " (2)"');
unlike($metrics, qr/\Q$api_key\E|\Q$other_key\E/, '/metrics holds neither key');
my $api = fetch('api/tqd');
like($api, qr/"url":"\Q$base\E\/status\?<redacted>"/, 'the dashboard\'s /api/tqd shows the URL redacted');
unlike($api, qr/\Q$api_key\E|\Q$other_key\E/, '... and no key');
ok(poll_log('a', qr/msg="endpoint status" url="?\Q$base\E\/status\?<redacted>"? /), 'the endpoint status line shows it redacted');

# A reload to a URL with user info: refused, the old configuration kept.
(my $text = slurp_file($conf)) =~ s{url = \Q$base\E/ok}{url = http://bob:$userpass\@127.0.0.1:$hport/ok};
my $bad_conf = "$dir/userinfo.conf";
open(my $fh, '>', $bad_conf) or die "$bad_conf: $!";
print $fh $text;
close($fh);
chmod(0600, $bad_conf);
IPC::Run::run([ $tqd, '-c', $bad_conf, '--check-config' ], '>', \$out, '2>', \$err);
is($? >> 8, 1, '--check-config refuses a URL with a user name and password');
like($err, qr/key "url": URL "http:\/\/<redacted>\@127\.0\.0\.1:\d+\/ok" has a user name or password in it: .* give credentials with the headers key instead/,
	'... saying to use the headers key');
unlike($err, qr/\Q$userpass\E|bob/, '... without printing them');
open($fh, '>', $conf) or die "$conf: $!";
print $fh $text;
close($fh);
kill 'HUP', tqd_pid('a');
ok(poll_log('a', qr/msg="reload failed: keeping the old configuration" error=.*has a user name or password in it/),
	'a reload to it is refused');
my $g2 = sq(q{SELECT tq_submit('hdr', '{"n": 2}', tenant => 'acme')});
ok(poll(qq{SELECT state = 'succeeded' FROM tq_task($g2)}, 30), '... and the old configuration serves on');

# ---------------------------------------------------------------------------
# 3. The environment of exec tasks.
my $e1 = sq(q{SELECT tq_submit('envdef', '{}', tenant => 't1')});
my $e2 = sq(q{SELECT tq_submit('envallow', '{}')});
ok(poll(qq{SELECT state = 'succeeded' FROM tq_task($e1)}, 30), 'an exec task dumps its environment (default pass_env)');
ok(poll(qq{SELECT state = 'succeeded' FROM tq_task($e2)}, 30), 'so does one of a queue with pass_env = PATH TQ_ALLOWED_*');
my $env1 = sq(qq{SELECT result #>> '{}' FROM tq_task($e1)});
my $env2 = sq(qq{SELECT result #>> '{}' FROM tq_task($e2)});
like(slurp_file("/proc/" . tqd_pid('a') . "/environ"), qr/PGPASSWORD=\Q$pgpassword\E/, 'tqd itself has PGPASSWORD');
unlike($env1 . $env2, qr/PGPASSWORD|\Q$pgpassword\E/, 'no task sees PGPASSWORD');
unlike($env1 . $env2, qr/AWS_SECRET_ACCESS_KEY|\Q$aws_secret\E/, 'no task sees AWS_SECRET_ACCESS_KEY');
like($env1, qr/^PATH=/m, 'the default passes PATH');
like($env1, qr/^TQ_TASK_ID=$e1$/m, 'the task\'s own variables are set');
like($env1, qr/^TQ_TENANT=t1$/m, '... TQ_TENANT too');
unlike($env1, qr/TQ_ALLOWED_VAR/, 'a variable the default does not list is not passed');
like($env2, qr/^TQ_ALLOWED_VAR=allowed$/m, 'pass_env passes what it lists (TQ_ALLOWED_*)');
like($env2, qr/^TQ_TASK_ID=$e2$/m, '... and the task\'s own variables');

kill 'TERM', tqd_pid('a');
is(TqdHarness::wait_exit('a', 30), 0, 'tqd drains and exits 0');
my $whole = tqd_log('a');
unlike($whole, qr/\Q$api_key\E|\Q$other_key\E/, 'tqd\'s log holds neither API key');
unlike($whole, qr/\Q$bearer\E|\Q$userpass\E|\Q$pgpassword\E|\Q$aws_secret\E/, '... nor any other secret');

# 4. A private file (the URL without user info again): no warning.
(my $private = slurp_file($conf)) =~ s{url = http://bob:\Q$userpass\E\@}{url = http://};
open($fh, '>', $conf) or die "$conf: $!";
print $fh $private;
close($fh);
chmod(0600, $conf) or die "chmod: $!";
IPC::Run::run([ $tqd, '-c', $conf, '--check-config' ], '>', \$out, '2>', \$err);
is($?, 0, '--check-config passes the file at mode 0600');
is($err, '', '... without a warning');
chmod(0640, $conf) or die "chmod: $!";
IPC::Run::run([ $tqd, '-c', $conf, '--check-config' ], '>', \$out, '2>', \$err);
like($err, qr/can be read by its group \(mode 0640\)/, 'at mode 0640 it warns: the group can read it');

TqdHarness::no_sanitizer_reports() if defined $ENV{TQ_TQD_BIN};
done_testing();
