# tqd's http handler (push mode) against a real cluster and a real HTTP
# server on loopback (worker/test/tqtest_httpd, libmicrohttpd): every
# assertion is about what the tasks became in the database and what the
# server saw.
#
#   1. A request carries the payload as its body (application/json) and the
#      task in X-TQ-* headers, plus the queue's own headers; the method is
#      the queue's; a JSON answer is the result, a text answer a JSON string.
#   2. Retry-After is honoured: 429 with "Retry-After: 2" -> the retried
#      attempt starts at least 2 s after the first one's answer; 503 with an
#      HTTP date -> not before that date.
#   3. Other 4xx: dead at once, status and body in last_error.  5xx: retried,
#      then succeeds.  A timeout: retried, then succeeds.
#   4. TLS: against a self-signed certificate the request fails (curl's
#      words in last_error) unless the queue's ca_file trusts it.
#   5. Adaptive concurrency against a server of capacity C = 20 (429 over
#      it): 1 000 tasks; the window converges into [0.7 C, 1.3 C] and stays
#      there; under 10 % of the answers after convergence are throttled;
#      every task succeeds.
#   6. Quotas while AIMD moves: the queue's concurrency in tq (5) and a
#      tenant's (2) hold -- the server never sees more in flight.
#   5b. /metrics scraped during and after that run: its counters agree
#      with the database and with the server's own log; /healthz, /readyz.
#   7. tq_cancel of a task whose request is in flight: the request is
#      aborted, the task cancelled.
#   8. SIGTERM while requests are in flight: they finish, tqd exits 0.
#
# 013_http_sanitized.pl runs all of this again with tqd built with
# AddressSanitizer and UBSan.
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

my $node = tq_node('http', '100ms');
$node->safe_psql(
	'postgres', q{
SELECT tq_create_queue('echo');
SELECT tq_create_queue('echoput');
SELECT tq_create_queue('plain');
SELECT tq_create_queue('ra', backoff_base => '10 ms', backoff_cap => '20 ms');
SELECT tq_create_queue('radate', backoff_base => '10 ms', backoff_cap => '20 ms');
SELECT tq_create_queue('bad');
SELECT tq_create_queue('flaky', backoff_base => '10 ms', backoff_cap => '20 ms');
SELECT tq_create_queue('slow', backoff_base => '10 ms', backoff_cap => '20 ms');
SELECT tq_create_queue('tlsno', max_attempts => 1);
SELECT tq_create_queue('tlsca', max_attempts => 1);
SELECT tq_create_queue('cap', backoff_base => '50 ms', backoff_cap => '200 ms');
SELECT tq_create_queue('quota', concurrency => 5);
SELECT tq_create_queue('tquota');
SELECT tq_create_queue('hang');
SELECT tq_set_tenant('tquota', 'small', concurrency => 2);
});

my $dir = PostgreSQL::Test::Utils::tempdir();
my $host = $node->host;
my $port = $node->port;

TqdHarness::setup(node => $node, dir => $dir, tqd => $tqd, sanitized => $sanitized);

# ---------------------------------------------------------------------------
# The server's request log: a list of { t, path, task, attempt, status, inflight }.
sub requests
{
	my $name = shift;
	my @r;
	for my $line (split /\n/, slurp_file(httpd_log($name)))
	{
		my %f = $line =~ /(\w+)=(\S+)/g;
		push @r, \%f;
	}
	return @r;
}

sub server_stats
{
	my ($name, $reset) = @_;
	my $out = '';
	my $path = $reset ? 'stats/reset' : 'stats';
	IPC::Run::run([ 'curl', '-s', "http://127.0.0.1:" . httpd_port($name) . "/$path" ], '>', \$out);
	return $out;
}

# The HTTP servers: plain, capacity 20, TLS.
my $plain = start_httpd('plain');
my $capped = start_httpd('capped', '--capacity', '20', '--delay-ms', '100');

# A self-signed certificate for 127.0.0.1.
my $cert = "$dir/cert.pem";
my $key = "$dir/key.pem";
my $ssl_out = '';
IPC::Run::run(
	[
		'openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', $key, '-out', $cert,
		'-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'
	],
	'>', \$ssl_out, '2>&1') or die "openssl: $ssl_out";
my $tls = start_httpd('tls', '--tls-cert', $cert, '--tls-key', $key);

my $base = "http://127.0.0.1:$plain";
my $conf = "$dir/tqd.conf";
open(my $fh, '>', $conf) or die;
print $fh <<"EOF";
[tqd]
conninfo = host=$host port=$port dbname=postgres
slots = 100
flush_interval = 5ms
poll_interval = 200ms
drain_timeout = 10s
status_interval = 100ms
metrics_listen = 127.0.0.1:0
log_level = info

[queue:echo]
handler = http
url = $base/ok
headers = X-Test: yes
  X-Other: two words

[queue:echoput]
handler = http
url = $base/ok
method = PUT

[queue:plain]
handler = http
url = $base/status?code=200&body=just%20text

[queue:ra]
handler = http
url = $base/flaky?code=429&times=1&retry_after=2

[queue:radate]
handler = http
url = $base/flaky?code=503&times=1&retry_after_date=3

[queue:bad]
handler = http
url = $base/status?code=422&body=field%20x%20is%20missing

[queue:flaky]
handler = http
url = $base/flaky?code=500&times=2

[queue:slow]
handler = http
url = $base/flaky?code=hang&times=1&hang_ms=3000
timeout = 1s

[queue:tlsno]
handler = http
url = https://127.0.0.1:$tls/ok

[queue:tlsca]
handler = http
url = https://127.0.0.1:$tls/ok
ca_file = $cert

[queue:cap]
handler = http
url = http://127.0.0.1:$capped/ok
concurrency = 50
aimd_interval = 250ms
aimd_decrease = 0.75
aimd_cooldown = 1s

[queue:quota]
handler = http
url = $base/ok?delay_ms=200
concurrency = 50
aimd_initial = 50

[queue:tquota]
handler = http
url = $base/ok?delay_ms=200
concurrency = 50
aimd_initial = 50

[queue:hang]
handler = http
url = $base/hang?hang_ms=20000
EOF
close($fh);

my $out;
IPC::Run::run([ $tqd, '-c', $conf, '--check-config' ], '>', \$out, '2>&1');
is($?, 0, 'the configuration with http queues passes --check-config') or diag($out);

start_tqd('a', $conf);
ok(started('a'), 'tqd started');

# ---------------------------------------------------------------------------
# 1. What a request carries; what an answer becomes.
my $echo = sq(q{SELECT tq_submit('echo', '{"hello": "wörld", "n": [1, 2]}', tenant => 'acme', timeout => '1 minute')});
my $put = sq(q{SELECT tq_submit('echoput', '{"x": 1}')});
my $plain_task = sq(q{SELECT tq_submit('plain', '{}')});
ok(poll("SELECT count(*) = 3 FROM unnest(ARRAY[$echo, $put, $plain_task]::bigint[]) i, tq_task(i) t WHERE t.state = 'succeeded'", 30),
	'three tasks succeeded')
  or diag(sq("SELECT id, state, last_error FROM tq.task WHERE id IN ($echo, $put, $plain_task)"));
my $r = sq("SELECT result FROM tq_task($echo)");
like($r, qr/"task": "$echo"/, 'the task id came in X-TQ-Task-Id');
like($r, qr/"attempt": "1"/, 'the attempt in X-TQ-Attempt');
like($r, qr/"queue": "echo"/, 'the queue in X-TQ-Queue');
like($r, qr/"tenant": "acme"/, 'the tenant in X-TQ-Tenant');
like($r, qr/"deadline": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"/, 'the deadline in X-TQ-Deadline');
like($r, qr/"method": "POST"/, 'POST by default');
like($r, qr/"content_type": "application\/json"/, 'Content-Type: application/json');
like($r, qr/"x_test": "yes"/, "the queue's own header was sent");
is(sq("SELECT (result->>'body')::jsonb = '{\"hello\": \"wörld\", \"n\": [1, 2]}' FROM tq_task($echo)"),
	't', 'the body is the payload');
my ($echo_req) = grep { ($_->{task} // '') eq $echo } requests('plain');
is($echo_req->{path}, '/ok', 'the payload is not in the URL');
like(sq("SELECT result FROM tq_task($put)"), qr/"method": "PUT"/, 'method = PUT is used');
is(sq("SELECT result #>> '{}' FROM tq_task($plain_task)"), 'just text', 'a text answer is the result as a JSON string');

# ---------------------------------------------------------------------------
# 2. Retry-After.
my $ra = sq(q{SELECT tq_submit('ra', '{}')});
my $radate = sq(q{SELECT tq_submit('radate', '{}')});
ok(poll("SELECT count(*) = 2 FROM unnest(ARRAY[$ra, $radate]::bigint[]) i, tq_task(i) t WHERE t.state = 'succeeded'", 30),
	'429 then 200, 503 then 200: both succeeded');
my @ra = grep { ($_->{task} // '') eq $ra } requests('plain');
is(scalar(@ra), 2, 'the 429 task was sent twice');
is($ra[0]{status}, '429', '... first answered 429');
cmp_ok($ra[1]{t} - $ra[0]{t}, '>=', 2.0, '... and the retry came at least 2 s later (Retry-After: 2)');
is(sq("SELECT attempt - free_attempts FROM tq.history WHERE id = $ra"), '1',
	'a throttled attempt does not count against max_attempts');
like(sq("SELECT string_agg(line, ' ') FROM tq_task_log($ra)"), qr/HTTP 429.*Retry-After honoured/,
	"the task's log says what the first attempt got");
my @rd = grep { ($_->{task} // '') eq $radate } requests('plain');
is($rd[0]{status}, '503', 'the 503 task was first answered 503 with an HTTP-date');
cmp_ok($rd[1]{t}, '>=', POSIX::floor($rd[0]{t}) + 3, '... and the retry did not start before that date');

# ---------------------------------------------------------------------------
# 3. 4xx, 5xx, timeouts.
my $bad = sq(q{SELECT tq_submit('bad', '{}')});
my $flaky = sq(q{SELECT tq_submit('flaky', '{}')});
my $slow = sq(q{SELECT tq_submit('slow', '{}')});
ok(poll("SELECT state = 'dead' FROM tq_task($bad)", 30), 'a 422 answer: dead');
is(sq("SELECT attempts FROM tq_task($bad)"), '1', '... at once, without a retry');
like(sq("SELECT last_error FROM tq_task($bad)"), qr/^HTTP 422 Unprocessable (Entity|Content): field x is missing$/,
	'... with the status and the body in last_error');
ok(poll("SELECT state = 'succeeded' FROM tq_task($flaky)", 30), '500 twice, then 200: succeeded');
is(sq("SELECT attempts FROM tq_task($flaky)"), '3', '... at the third attempt');
ok(poll("SELECT state = 'succeeded' FROM tq_task($slow)", 30), 'a request past the timeout is retried: succeeded');
is(sq("SELECT attempts FROM tq_task($slow)"), '2', '... at the second attempt');
like(sq("SELECT string_agg(line, ' ') FROM tq_task_log($slow)"), qr/timed out after 1 s/,
	"... and the task's log says the first timed out");

# ---------------------------------------------------------------------------
# 4. TLS.
my $tlsno = sq(q{SELECT tq_submit('tlsno', '{}')});
my $tlsca = sq(q{SELECT tq_submit('tlsca', '{}')});
ok(poll("SELECT state = 'dead' FROM tq_task($tlsno)", 30), 'https to a self-signed certificate without its CA fails');
like(sq("SELECT last_error FROM tq_task($tlsno)"), qr/request failed: .*certificate/i,
	'... and last_error says it is the certificate');
ok(poll("SELECT state = 'succeeded' FROM tq_task($tlsca)", 30), 'with ca_file trusting it, the request succeeds');

# ---------------------------------------------------------------------------
# 5. Adaptive concurrency against capacity 20.
# /metrics: the port tqd logged (metrics_listen = 127.0.0.1:0).
my ($mport) = tqd_log('a') =~ /serving \/metrics.* port=(\d+)/;
ok($mport, "tqd serves /metrics (port $mport)");
{
	# A second tqd on the same metrics port refuses to start, saying why.
	my $taken = "$dir/taken.conf";
	my $text = slurp_file($conf);
	$text =~ s/metrics_listen = 127\.0\.0\.1:0/metrics_listen = 127.0.0.1:$mport/;
	open(my $tfh, '>', $taken) or die;
	print $tfh $text;
	close($tfh);
	my $tout = '';
	IPC::Run::run([ $tqd, '-c', $taken ], '>', \$tout, '2>&1', IPC::Run::timeout(30));
	isnt($?, 0, 'a tqd whose metrics port is taken exits with an error');
	like($tout, qr/cannot serve \/metrics.*Address already in use/, '... saying the address is in use');
}
sub scrape
{
	my $path = shift // 'metrics';
	my $out = '';
	IPC::Run::run([ 'curl', '-s', '-w', '\n%{http_code}', "http://127.0.0.1:$mport/$path" ], '>', \$out);
	return $out;
}
# metric NAME LABELS-REGEX TEXT: the value of the one sample that matches.
sub metric
{
	my ($text, $name, $labels) = @_;
	my ($v) = $text =~ /^\Q$name\E\{$labels\} (\S+)$/m;
	return $v;
}

my $t0 = time;
sq(q{SELECT count(tq_submit('cap', jsonb_build_object('n', g))) FROM generate_series(1, 1000) g});
# A scrape while it runs.
ok(poll(q{SELECT count(*) > 100 FROM tq.history WHERE queue = 'cap'}, 60), 'the capacity run is under way');
my $mid = scrape();
my $mid_running = metric($mid, 'tqd_tasks_running', 'queue="cap"');
ok(defined $mid_running && $mid_running <= 50, "during the run: tqd_tasks_running{queue=\"cap\"} = $mid_running, within the queue's concurrency");
my $mid_buffered = metric($mid, 'tqd_tasks_buffered', 'queue="cap"');
ok(defined $mid_buffered && $mid_buffered <= 128,
	"during the run: tqd_tasks_buffered{queue=\"cap\"} = $mid_buffered, within lease_ahead (128)");
my $mid_done = metric($mid, 'tqd_tasks_finished_total', 'queue="cap",outcome="succeeded"');
my $db_done = sq(q{SELECT count(*) FROM tq.history WHERE queue = 'cap'});
ok(defined $mid_done && $mid_done >= 100 && $mid_done <= $db_done + 50,
	"during the run: succeeded so far $mid_done, database $db_done (reported in batches)");
like(metric($mid, 'tqd_http_window', 'url="[^"]*' . $capped . '/ok"') // '', qr/^\d+\.\d\d$/, 'the window is exported');
ok(poll(q{SELECT count(*) = 1000 FROM tq.history WHERE queue = 'cap' AND state = 'succeeded'}, 120),
	'1 000 tasks against capacity 20: every one succeeded');
my $t1 = time;
is(metric(scrape(), 'tqd_tasks_buffered', 'queue="cap"'), '0', 'after the run nothing is left buffered');

# The window over time, from the status lines (every 100 ms) while work was there.
my @trace;
for my $line (split /\n/, tqd_log('a'))
{
	next unless $line =~ /ts=(\S+) .*msg="endpoint status" url=\S+:$capped\/ok window=([\d.]+) limit=\d+ in_flight=(\d+) answers=(\d+) throttled=\d+ cuts=(\d+)/;
	push @trace, { ts => $1, window => $2, busy => $3 + $4, cuts => $5 };
}
# Converged: in range after the first cut (slow start passes through the
# range on its way up, which is not convergence).
my @busy = grep { $_->{busy} > 0 && $_->{cuts} > 0 } @trace;
my $first_in = -1;
for my $i (0 .. $#busy)
{
	if ($busy[$i]{window} >= 14 && $busy[$i]{window} <= 26)
	{
		$first_in = $i;
		last;
	}
}
cmp_ok($first_in, '>=', 0, 'the window came into [14, 26]');
my @after = $first_in >= 0 ? @busy[ $first_in .. $#busy ] : ();
my @outside = grep { $_->{window} < 14 || $_->{window} > 26 } @after;
is(scalar(@outside), 0, sprintf('... and stayed there (%d samples over %.1f s; windows %s)',
	scalar(@after), $t1 - $t0, join(' ', map { $_->{window} } @after)));
my $converged_at = 0;
if ($first_in >= 0 && $busy[$first_in]{ts} =~ /^(\d+)-(\d+)-(\d+)T(\d+):(\d+):([\d.]+)Z$/)
{
	local $ENV{TZ} = 'UTC';
	POSIX::tzset();
	$converged_at = POSIX::mktime(0, $5, $4, $3, $2 - 1, $1 - 1900) + $6;
}
my @cap_req = requests('capped');
my @late = grep { $_->{t} >= $converged_at } @cap_req;
my $thr = grep { $_->{status} eq '429' } @late;
cmp_ok($thr / (@late || 1), '<', 0.10,
	sprintf('after convergence, %d of %d answers (%.1f%%) were throttled: under 10%%',
		$thr, scalar(@late), 100 * $thr / (@late || 1)));
my $max_inflight = 0;
$_->{inflight} > $max_inflight and $max_inflight = $_->{inflight} for @cap_req;
cmp_ok($max_inflight, '<=', 50, "the server never had more in flight than the queue's concurrency (50)");
like(tqd_log('a'), qr/msg="endpoint throttled: window cut" url=\S+:$capped\/ok/, 'the cuts are logged');

# The counters after the run, against the database and the server's log.
my $end = scrape();
is(metric($end, 'tqd_tasks_finished_total', 'queue="cap",outcome="succeeded"'),
	sq(q{SELECT count(*) FROM tq.history WHERE queue = 'cap' AND state = 'succeeded'}),
	'tqd_tasks_finished_total{outcome="succeeded"} equals the succeeded tasks in the database (1 000)');
my $srv429 = grep { $_->{status} eq '429' } @cap_req;
is(metric($end, 'tqd_tasks_finished_total', 'queue="cap",outcome="throttled"'), $srv429,
	"... throttled equals the server's 429 answers ($srv429)");
is(metric($end, 'tqd_http_throttled_total', 'url="[^"]*' . $capped . '/ok"'), $srv429, '... and so does tqd_http_throttled_total');
is(metric($end, 'tqd_tasks_started_total', 'queue="cap"'), scalar(@cap_req),
	'tqd_tasks_started_total equals the requests the server saw');
is(metric($end, 'tqd_http_answers_total', 'url="[^"]*' . $capped . '/ok"'), scalar(@cap_req), '... and the answers');
like($end, qr/^tqd_lease_seconds_count [1-9]\d*$/m, 'the lease round-trip histogram has observations');
{
	# The backlog is read every poll_interval (200 ms here): wait for a fresh one.
	my $deadline = time + 10;
	my $ready;
	while (time < $deadline)
	{
		$ready = metric(scrape(), 'tq_queue_tasks', 'queue="cap",state="ready"');
		last if defined $ready && $ready eq '0';
		usleep(100_000);
	}
	is($ready, '0', "the queue's backlog from tq_queue_stats: none left");
}
like(scrape('healthz'), qr/^ok\s+200$/, '/healthz: 200');
like(scrape('readyz'), qr/^ready\s+200$/, '/readyz: 200 while the database is reachable');

# ---------------------------------------------------------------------------
# 6. tq's quotas hold while the window is wide open (initial = concurrency = 50).
# Nothing of the earlier tests may still be in flight at the server.
sub server_idle
{
	my $deadline = time + 30;
	while (time < $deadline)
	{
		return 1 if server_stats('plain') =~ /"inflight":\s*0\b/;
		usleep(50_000);
	}
	return 0;
}
ok(server_idle(), 'the server has nothing in flight');
server_stats('plain', 1);
sq(q{SELECT count(tq_submit('quota', '{}')) FROM generate_series(1, 40)});
ok(poll(q{SELECT count(*) = 40 FROM tq.history WHERE queue = 'quota' AND state = 'succeeded'}, 60),
	'40 tasks of a queue with concurrency 5 in tq succeeded');
my ($mx) = server_stats('plain') =~ /"max_inflight":\s*(\d+)/;
ok(defined $mx && $mx <= 5 && $mx >= 4, "the server saw at most 5 at once (saw $mx): tq's queue quota held");
server_idle();
server_stats('plain', 1);
sq(q{SELECT count(tq_submit('tquota', '{}', tenant => 'small')) FROM generate_series(1, 12)});
ok(poll(q{SELECT count(*) = 12 FROM tq.history WHERE queue = 'tquota' AND state = 'succeeded'}, 60),
	"12 tasks of a tenant with concurrency 2 succeeded");
($mx) = server_stats('plain') =~ /"max_inflight":\s*(\d+)/;
ok(defined $mx && $mx <= 2, "the server saw at most 2 at once (saw $mx): the tenant's quota held");

# ---------------------------------------------------------------------------
# 7. Cancel while the request is in flight.
my $hang = sq(q{SELECT tq_submit('hang', '{}')});
ok(poll("SELECT state = 'running' FROM tq_task($hang)", 30), 'a task whose endpoint hangs is running');
my $c0 = time;
sq("SELECT tq_cancel($hang)");
ok(poll("SELECT state = 'cancelled' FROM tq_task($hang)", 30), 'tq_cancel: the request is aborted, the task cancelled');
cmp_ok(time - $c0, '<', 10, '... long before the endpoint would have answered');

# ---------------------------------------------------------------------------
# 8. SIGTERM with requests in flight: they finish, then tqd exits 0.
# One statement: submitted one by one, the first (200 ms) could finish
# before the third is leased on a loaded machine.
my @drain = split /,/, sq(q{SELECT string_agg(tq_submit('quota', '{}')::text, ',') FROM generate_series(1, 3)});
ok(poll("SELECT count(*) = 3 FROM unnest(ARRAY[" . join(',', @drain) . "]::bigint[]) i, tq_task(i) t WHERE t.state = 'running'", 30),
	'three requests in flight');
kill 'TERM', tqd_pid('a');
is(wait_exit('a', 30) // -1, 0, 'SIGTERM: tqd exits 0');
is(sq("SELECT count(*) FROM unnest(ARRAY[" . join(',', @drain) . "]::bigint[]) i, tq_task(i) t WHERE t.state = 'succeeded'"), '3',
	'... after the requests in flight finished');

no_sanitizer_reports() if $sanitized;

$node->stop;
done_testing();
