# Attacks on tqd's HTTP endpoint (metrics_listen), items 12 and 13 of the
# security review (issue 15).  Each tries the attack and asserts the refusal.
#
#   1. DNS rebinding: requests naming a foreign Host (as a browser sends
#      them for a page of rebind.attacker.example whose name now resolves
#      to tqd) get 421 on the dashboard's data, /metrics and the page, and
#      no payload; a missing Host (HTTP/1.1) or two Hosts too.  Loopback
#      names, IP addresses and http_allowed_hosts are answered; the probes
#      answer whatever the Host.
#   2. A flood of silent and half-sent connections from one address (200,
#      50 of them stopping in the middle of a header): /healthz and /readyz
#      from another address (as kubelet's) still answer at once while the
#      flood's connections are open, the dashboard and /metrics too, and
#      tqd goes on running tasks.  A silent connection is closed after
#      http_timeout.  (Before: 64 connections in all, 10 s timeout, and 70
#      silent connections held /healthz for 10 s.)
#   3. The bearer token (http_token_file, set by a reload): /metrics and
#      /api/* answer 401 with WWW-Authenticate: Bearer without it or with a
#      wrong one, 200 with it; the probes and the page need none; a new
#      token replaces the old at the next reload.  In headless Chromium the
#      page asks for the token, takes it from /#token=..., keeps it for the
#      tab and shows the queues.
#
# Every wait polls a condition with a deadline.
use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;
use IO::Select;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use TqdHarness;
use WebDriver;

my $src = $ENV{TQ_SRCDIR} or die "TQ_SRCDIR is not set (run through test/run-tests.sh)";
my $tqd = $ENV{TQ_TQD_BIN} // "$src/worker/tqd";
my $sanitized = defined $ENV{TQ_TQD_BIN};    # TQ_TQD_BIN=worker/tqd-asan: with sanitizers

my $node = tq_node('http_access', '100ms');
my $dir = PostgreSQL::Test::Utils::tempdir();
TqdHarness::setup(node => $node, dir => $dir, tqd => $tqd, sanitized => $sanitized);

my $secret = 'payload-s3cr3t-4711';
sq(q{SELECT tq_create_queue('acc'); SELECT tq_create_queue('held');});
my $task = sq(qq{SELECT tq_submit('held', '{"card": "$secret"}')});
my $token_file = "$dir/token";

# The token file, as an operator writes it.
sub write_token
{
	my $t = shift;
	open(my $fh, '>', $token_file) or die "$token_file: $!";
	print $fh "$t\n";
	close($fh);
	return;
}

# tqd's configuration, with more [tqd] keys in $extra.
sub write_conf
{
	my $extra = shift // '';
	return tqd_conf('tqd.conf', <<"EOF");
metrics_listen = 127.0.0.1:0
dashboard = on
http_allowed_hosts = tqd.internal
http_timeout = 3s
$extra

[queue:acc]
handler = noop
EOF
}
start_tqd('a', write_conf());
ok(started('a'), 'tqd connected');
ok(poll_log('a', qr/msg=connected conn=dashboard/), 'the dashboard is connected');
my ($port) = tqd_log('a') =~ /serving the dashboard at \/" port=(\d+)/;
ok($port, "tqd serves the dashboard (port $port)");

# A request as written (HTTP/$version, Host $host unless undef, more header
# lines), on a connection of its own from address $from (of 127/8), read
# to its end: (status, headers with lowercase names, body); status 0 when
# the connection ended without an answer.
sub request
{
	my ($path, %o) = @_;
	my $from = $o{from} // '127.0.0.1';
	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, LocalAddr => $from, Timeout => 10)
	  or die "connect from $from: $!";
	my $req = sprintf("GET %s HTTP/%s\r\n", $path, $o{version} // '1.1');
	$req .= "Host: $o{host}\r\n" if defined $o{host};
	$req .= "$_\r\n" for @{ $o{lines} // [] };
	$req .= "Authorization: Bearer $o{token}\r\n" if defined $o{token};
	$req .= "Connection: close\r\n\r\n";
	print $s $req;
	my ($raw, $sel, $deadline) = ('', IO::Select->new($s), time + 20);
	while (time < $deadline)
	{
		next unless $sel->can_read(0.2);
		my $n = sysread($s, my $chunk, 65536);
		last unless $n;
		$raw .= $chunk;
	}
	close($s);
	my ($head, $body) = split(/\r\n\r\n/, $raw, 2);
	my ($status) = ($head // '') =~ m{^HTTP/1\.[01] (\d{3})};
	my %h = map { /^([^:]+):\s*(.*)$/ ? (lc $1 => $2) : () } split(/\r\n/, $head // '');
	return ($status // 0, \%h, $body // '');
}

# ---------------------------------------------------------------------------
# 1. DNS rebinding.
my @paths = ("/api/task?id=$task", '/api/queues', '/api/tqd', '/metrics', '/', '/dashboard.js');
for my $host ('rebind.attacker.example', "rebind.attacker.example:$port", 'localhost.attacker.example',
	'127.0.0.1.nip.io')
{
	for my $path (@paths)
	{
		my ($st, undef, $body) = request($path, host => $host);
		is($st, 421, "Host $host, $path: 421");
		unlike($body, qr/$secret|tq_queue_tasks|<html/, '... nothing of the answer');
	}
}
my ($st, $h, $body) = request("/api/task?id=$task");
is($st, 421, 'HTTP/1.1 without Host: 421');
unlike($body, qr/$secret/, '... without the payload');
($st, $h, $body) = request("/api/task?id=$task", host => "localhost:$port", lines => ['Host: rebind.attacker.example']);
is($st, 421, 'two Host headers (one allowed): 421');
unlike($body, qr/$secret/, '... without the payload');
($st, $h, $body) = request("/api/task?id=$task", version => '1.0');
is($st, 200, 'HTTP/1.0 without Host (which browsers never send): answered');

for my $host ("localhost:$port", 'localhost', "127.0.0.1:$port", "[::1]:$port", 'tqd.internal', "TQD.internal:$port")
{
	($st, $h, $body) = request("/api/task?id=$task", host => $host);
	is($st, 200, "Host $host: /api/task answered");
	like($body, qr/$secret/, '... with the payload');
}
($st, $h, $body) = request('/metrics', host => 'tqd.internal:9187');
is($st, 200, 'a name of http_allowed_hosts with another port (a proxy\'s): /metrics answered');
for my $probe ('/healthz', '/readyz')
{
	($st, $h, $body) = request($probe, host => 'rebind.attacker.example');
	is($st, 200, "$probe answers a foreign Host");
	($st, $h, $body) = request($probe);
	is($st, 200, "$probe answers without Host");
}

# ---------------------------------------------------------------------------
# 2. A flood of connections from one address, 127.0.0.1; the probes come
# from another, 127.0.0.2, as kubelet's come from the node's address.
my @flood;
for my $i (1 .. 200)
{
	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, LocalAddr => '127.0.0.1', Timeout => 10);
	next unless $s;
	print $s "GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Slow: " if $i % 4 == 0;
	push @flood, $s;
}
is(scalar @flood, 200, '200 connections from 127.0.0.1, 50 of them stopped in the middle of a header');
my $t0 = time;
($st, $h, $body) = request('/healthz', from => '127.0.0.2');
my $took = time - $t0;
is($st, 200, '/healthz from 127.0.0.2 answers 200 during the flood');
ok($took < 2, sprintf('... within 2 s (%.3f s)', $took));
$t0 = time;
($st, $h, $body) = request('/readyz', from => '127.0.0.2');
is($st, 200, '/readyz too');
ok(time - $t0 < 2, '... within 2 s');
($st, $h, $body) = request("/api/task?id=$task", from => '127.0.0.2', host => 'localhost');
is($st, 200, 'the dashboard answers another client during the flood');
($st, $h, $body) = request('/metrics', from => '127.0.0.3', host => 'localhost');
is($st, 200, '/metrics too');

# Which of the flood's connections tqd still holds: a read would block.
my $open = 0;
for my $s (@flood)
{
	$s->blocking(0);
	my $n = sysread($s, my $buf, 1);
	$open++ if !defined $n && $!{EAGAIN};
}
ok($open >= 1 && $open <= 16,
	"tqd holds $open of them, at most 16 (http_max_connections_per_ip); it closed the rest at once");

my $ids = sq(q{SELECT string_agg(tq_submit('acc', jsonb_build_object('n', g))::text, ',') FROM generate_series(1, 40) g});
ok(poll(qq{SELECT count(*) FILTER (WHERE t.state = 'succeeded') = 40 FROM unnest('{$ids}'::bigint[]) i, tq_task(i) t}, 30),
	'tqd runs 40 tasks during the flood');

# A silent connection is closed after http_timeout (3 s), not before.
my $quiet = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, LocalAddr => '127.0.0.4', Timeout => 10)
  or die "connect: $!";
$t0 = time;
my $sel = IO::Select->new($quiet);
my $closed;
while (time < $t0 + 15)
{
	next unless $sel->can_read(0.1);
	my $n = sysread($quiet, my $buf, 1);
	if (defined $n && $n == 0) { $closed = time - $t0; last; }
}
ok(defined $closed && $closed >= 2.5, sprintf('a silent connection is closed after http_timeout (%.1f s)', $closed // -1));
close($_) for @flood;
close($quiet);
($st) = request('/healthz');
is($st, 200, 'the flood over, 127.0.0.1 is answered again');

# ---------------------------------------------------------------------------
# 3. The token, set by a reload.
my $tok = 'f3a1c2b4d5e6f708192a3b4c5d6e7f80';
write_token($tok);
write_conf("http_token_file = $token_file");
kill 'HUP', tqd_pid('a');
ok(poll_log('a', qr/msg="configuration reloaded"/), 'reloaded with http_token_file');

for my $path ("/api/task?id=$task", '/api/queues', '/api/tqd', '/metrics', '/nope')
{
	($st, $h, $body) = request($path, host => 'localhost');
	is($st, 401, "$path without the token: 401");
	like($h->{'www-authenticate'} // '', qr/^Bearer\b/, '... with WWW-Authenticate: Bearer');
	unlike($body, qr/$secret|tq_queue_tasks|"worker"/, '... and nothing of the answer');
	($st, $h, $body) = request($path, host => 'localhost', token => "${tok}0");
	is($st, 401, "$path with a wrong token: 401");
	($st, $h, $body) = request($path, host => 'localhost', token => substr($tok, 0, 31));
	is($st, 401, "$path with the token less its last character: 401");
	($st, $h, $body) = request($path, host => 'localhost', lines => ["Authorization: Basic $tok"]);
	is($st, 401, "$path with the token under another scheme: 401");
}
($st, $h, $body) = request("/api/task?id=$task", host => 'localhost', token => $tok);
is($st, 200, '/api/task with the token: 200');
like($body, qr/$secret/, '... with the payload');
($st, $h, $body) = request('/metrics', host => 'localhost', token => $tok);
is($st, 200, '/metrics with the token: 200');
like($body, qr/tqd_slots/, '... the metrics');
($st, $h, $body) = request("/api/task?id=$task", host => 'rebind.attacker.example', token => $tok);
is($st, 421, 'the token does not make a foreign Host acceptable');
for my $path ('/', '/dashboard.js', '/dashboard.css', '/healthz', '/readyz')
{
	($st, $h, $body) = request($path, host => 'localhost');
	is($st, 200, "$path needs no token (the page holds no data; the probes tell only ok)");
}

# A new token at the next reload; the old one is refused.
my $tok2 = 'b00c0ffee0ddba11deadbeef12345678';
write_token($tok2);
kill 'HUP', tqd_pid('a');
ok(poll_count('a', qr/msg="configuration reloaded"/, 2), 'reloaded with a new token');
($st) = request('/metrics', host => 'localhost', token => $tok);
is($st, 401, 'the old token: 401');
($st) = request('/metrics', host => 'localhost', token => $tok2);
is($st, 200, 'the new token: 200');

# The page in a browser: it asks for the token, takes it from the address,
# keeps it for the tab.
my $wd = WebDriver->start(dir => $dir);
my $base = "http://127.0.0.1:$port";
$wd->get("$base/?refresh=0.5");
ok($wd->wait_until(sub { ($wd->text('#status') // '') =~ /needs a token/ }, 20),
	'page without the token: it says it needs one') or diag($wd->text('#status'));
ok(!defined $wd->text('#queues tr[data-queue="acc"]'), '... and shows no queue');
$wd->get("$base/?refresh=0.5#token=$tok2");
ok($wd->wait_until(sub { defined $wd->text('#queues tr[data-queue="acc"]') }, 20),
	'page given /#token=...: it shows the queues');
is($wd->js(q{return location.hash}), '', '... and took the token out of the address');
$wd->get("$base/?refresh=0.6");
ok($wd->wait_until(sub { defined $wd->text('#queues tr[data-queue="held"]') }, 20),
	'reloaded without the fragment: the tab kept the token');
$wd->get("$base/?refresh=0.7#task=$task");
ok($wd->wait_until(sub { ($wd->text('#task-payload') // '') =~ /$secret/ }, 20), 'a task look-up works with the token');
$wd->js(q{sessionStorage.setItem('tqd-token', 'wrong-token-0123456789')});
$wd->get("$base/?refresh=0.8");
ok($wd->wait_until(sub { ($wd->text('#status') // '') =~ /refused the token/ }, 20),
	'a wrong token kept by the tab: the page says tqd refused it');
$wd->stop;

kill 'TERM', tqd_pid('a');
is(TqdHarness::wait_exit('a', 30), 0, 'tqd drains and exits 0');
no_sanitizer_reports() if $sanitized;
done_testing();
