# tqd's dashboard in a real browser: headless Chromium (Debian's chromium
# and chromium-driver) loads the page from a tqd connected as a role with
# only tq_worker's rights, against a cluster whose tasks are known, and the
# test asserts what the page shows.
#
#   1. The queues table: ready, scheduled, held, running, failure rate, dead
#      counts of each queue, and a paused queue marked.
#   2. The latest dead tasks, with their errors shown as text: an error
#      holding HTML and a script is not interpreted.
#   3. The page refreshes itself: new tasks show up without a reload.
#   4. Task look-up by id: a task that failed once then succeeded (both
#      attempts with worker, outcome and error; its log lines; its result);
#      a dead task reached from the dead list; an unknown id; a bad id; a
#      running task whose view follows it until it finishes.
#   5. This tqd's own section: its worker name and queues.
#   6. The database goes away: the page says so; when it is back, the page
#      recovers by itself.
#   7. Over plain HTTP: the JSON answers and their statuses, the security
#      headers, and no dashboard at all unless `dashboard = on`.
#   8. tqd stopping while a request waits for its database answer: the
#      request gets 503, tqd exits 0 (017 checks the same with sanitizers).
use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use TqdHarness;
use WebDriver;

my $src = $ENV{TQ_SRCDIR} or die "TQ_SRCDIR is not set (run through test/run-tests.sh)";
my $tqd = $ENV{TQ_TQD_BIN} // "$src/worker/tqd";
my $sanitized = defined $ENV{TQ_TQD_BIN};

my $node = tq_node('dash', '100ms');
my $dir = PostgreSQL::Test::Utils::tempdir();
TqdHarness::setup(node => $node, dir => $dir, tqd => $tqd, sanitized => $sanitized);
my $json = JSON::PP->new->utf8;

# ---------------------------------------------------------------------------
# Known tasks.  mail: one task failed once (with log lines) then succeeded;
# two dead; one running (leased by "w-sql"); four ready.  thumbs: three
# scheduled an hour ahead, the queue paused.  side: served by the tqd.
my $evil = q{<b>not bold</b> <img src=x onerror="window.__xss=1"> & more};
sq(q{CREATE ROLE dash_tqd LOGIN; GRANT tq_worker TO dash_tqd;
     SELECT tq_create_queue('mail', backoff_base => '10 ms', backoff_cap => '20 ms');
     SELECT tq_create_queue('thumbs');
     SELECT tq_create_queue('side');});

# lease_one QUEUE: (id, attempt) of the one task leased by w-sql.
sub lease_one
{
	my $q = shift;
	my $deadline = time + 30;
	while (time < $deadline)
	{
		my $r = sq("SELECT id || ',' || attempt FROM tq_lease('w-sql', ARRAY['$q'], 1, '1 hour')");
		return split(/,/, $r) if $r ne '';
		usleep(20_000);
	}
	die "nothing to lease in $q";
}

my $ok_id = sq(q{SELECT tq_submit('mail', '{"to": "ann@example.com"}')});
my ($id, $att) = lease_one('mail');
sq(qq{SELECT tq_append_log(ARRAY[$id], ARRAY[$att], ARRAY['["connecting to smtp", "smtp said 451"]'::jsonb]);
      SELECT tq_fail($id, $att, 'smtp 451: try later')});
($id, $att) = lease_one('mail');
is($id, $ok_id, 'the failed task is leased again');
sq(qq{SELECT tq_append_log(ARRAY[$id], ARRAY[$att], ARRAY['["sent on second try"]'::jsonb]);
      SELECT tq_complete($id, $att, '{"sent": true, "message_id": "m-1"}')});

my $dead1 = sq(q{SELECT tq_submit('mail', '{"to": "bob@example.com"}')});
($id, $att) = lease_one('mail');
my $evil_sql = $evil =~ s/'/''/gr;
sq(qq{SELECT tq_fail($id, $att, '$evil_sql', retry => 'never')});
my $dead2 = sq(q{SELECT tq_submit('mail', '{"to": "cid@example.com"}')});
($id, $att) = lease_one('mail');
sq(qq{SELECT tq_fail($id, $att, 'mailbox full', retry => 'never')});
my $running = sq(q{SELECT tq_submit('mail', '{"to": "dee@example.com"}')});
my ($run_id, $run_att) = lease_one('mail');
is($run_id, $running, 'the running task is leased');
sq(q{SELECT count(tq_submit('mail', jsonb_build_object('n', g))) FROM generate_series(1, 4) g;
     SELECT count(tq_submit('thumbs', '{}', run_at => now() + interval '1 hour')) FROM generate_series(1, 3);
     SELECT tq_pause('thumbs');});

# ---------------------------------------------------------------------------
# tqd with the dashboard, as dash_tqd (tq_worker's rights only).
my ($host, $port) = ($node->host, $node->port);
sub write_conf
{
	my ($name, $extra) = @_;
	my $path = "$dir/$name.conf";
	open(my $fh, '>', $path) or die;
	print $fh <<"EOF";
[tqd]
conninfo = host=$host port=$port dbname=postgres user=dash_tqd
worker_name = dash-tqd
poll_interval = 200ms
reconnect_min = 50ms
reconnect_max = 300ms
metrics_listen = 127.0.0.1:0
$extra

[queue:side]
handler = noop
EOF
	close($fh);
	return $path;
}
start_tqd('d', write_conf('d', 'dashboard = on'));
ok(started('d'), 'tqd with the dashboard is connected');
ok(poll_log('d', qr/msg=connected conn=dashboard/), 'the dashboard has its own connection');
my ($hport) = tqd_log('d') =~ /serving the dashboard at \/" port=(\d+)/;
ok($hport, "tqd serves the dashboard (port $hport)");
my $base = "http://127.0.0.1:$hport";

# ---------------------------------------------------------------------------
# 7. Plain HTTP first: statuses, JSON, headers.
my $http = HTTP::Tiny->new(timeout => 20);
my $r = $http->get("$base/");
is($r->{status}, 200, '/ answers 200');
like($r->{headers}{'content-type'}, qr{^text/html}, '... with HTML');
like($r->{headers}{'content-security-policy'}, qr/default-src 'self'/, '... under a same-origin content security policy');
is($r->{headers}{'x-content-type-options'}, 'nosniff', '... and nosniff');
$r = $http->get("$base/api/queues");
is($r->{status}, 200, '/api/queues answers 200');
my $q = $json->decode($r->{content});
my ($mail) = grep { $_->{queue} eq 'mail' } @{ $q->{queues} };
is_deeply([ @$mail{qw(ready running scheduled dead)} ], [ 4, 1, 0, 2 ], '... mail: 4 ready, 1 running, 2 dead');
is(scalar @{ $q->{dead_recent} }, 2, '... two recent dead tasks');
$r = $http->get("$base/api/task?id=$ok_id");
is($r->{status}, 200, '/api/task answers 200 for a task');
my $t = $json->decode($r->{content});
is($t->{task}{state}, 'succeeded', '... with its state');
is(scalar @{ $t->{trace} }, 2, '... its two attempts');
is(scalar @{ $t->{log} }, 3, '... and its three log lines');
$r = $http->get("$base/api/task?id=987654321");
is($r->{status}, 404, '/api/task: 404 for an unknown id');
$r = $http->get("$base/api/task?id=1;drop");
is($r->{status}, 400, '/api/task: 400 for an id that is not a number');
like($json->decode($r->{content})->{error}, qr/positive whole number/, '... saying what an id is');
$r = $http->get("$base/api/task?id=99999999999999999999");
is($r->{status}, 400, '/api/task: 400 for an id beyond bigint');
$r = $http->request('POST', "$base/api/queues");
is($r->{status}, 405, 'POST: 405 (read-only)');
$r = $http->get("$base/nope");
is($r->{status}, 404, 'an unknown path: 404');

# ---------------------------------------------------------------------------
# The browser.
my $wd = WebDriver->start(dir => $dir);
$wd->get("$base/?refresh=0.5");

sub cell
{
	my ($table, $queue, $field) = @_;
	return $wd->text(qq{#$table tr[data-queue="$queue"] td[data-field="$field"]});
}

sub shows
{
	my ($what, $want, $secs) = @_;
	my $got;
	my $ok = $wd->wait_until(sub { $got = $what->(); defined $got && $got =~ $want }, $secs // 20);
	return ($ok, $got);
}

# 1. The queues table.
my ($ok, $got) = shows(sub { cell('queues', 'mail', 'ready') }, qr/^4$/);
ok($ok, 'page: mail shows 4 ready') or diag("shows '" . ($got // 'nothing') . "'");
is(cell('queues', 'mail', 'running'), '1', 'page: mail shows 1 running');
is(cell('queues', 'mail', 'dead'), '2', 'page: mail shows 2 dead tasks kept');
is(cell('queues', 'mail', 'dead_15'), '2', 'page: mail shows 2 dead in the last 15 minutes');
is(cell('queues', 'mail', 'done_5'), '3', 'page: mail shows 3 finished in the last 5 minutes');
# One failed attempt, two dead, one success: (1 + 2) / (1 + 1 + 2).
is(cell('queues', 'mail', 'failure_rate'), '75 %', 'page: mail shows a failure rate of 75 %');
is(cell('queues', 'thumbs', 'scheduled'), '3', 'page: thumbs shows 3 scheduled');
like(cell('queues', 'thumbs', 'queue'), qr/^thumbs\s*paused$/, 'page: thumbs is marked paused');
is(cell('queues', 'side', 'ready'), '0', 'page: side shows 0 ready');
is($wd->text('#database'), 'postgres', 'page: the database name in the title');

# 2. Dead tasks, errors as text.
is($wd->text(qq{#dead tr[data-task="$dead1"] td[data-field="last_error"]}), $evil,
	'page: the dead task\'s error is shown as written, HTML and all');
is($wd->js(q{return document.querySelectorAll('#dead b, #dead img').length}), 0,
	'page: ... and not interpreted (no element made of it)');
ok(!$wd->js(q{return window.__xss === 1}), 'page: ... its script did not run');
is($wd->text(qq{#dead tr[data-task="$dead2"] td[data-field="last_error"]}), 'mailbox full',
	'page: the other dead task is listed');

# 5. This tqd.
like($wd->text('#tqd-worker'), qr/^dash-tqd \(tqd [0-9.]+\)$/, 'page: this tqd\'s worker name and version');
is(cell('tqd-queues', 'side', 'handler'), 'noop', 'page: the queue it serves and its handler');

# 3. It refreshes itself.
$wd->js(q{window.__marker = 42});
sq(q{SELECT count(tq_submit('mail', '{}')) FROM generate_series(1, 3)});
($ok, $got) = shows(sub { cell('queues', 'mail', 'ready') }, qr/^7$/);
ok($ok, 'page: three more tasks show up (7 ready) by themselves') or diag("shows '" . ($got // 'nothing') . "'");
is($wd->js(q{return window.__marker}), 42, 'page: ... without a reload');

# 4. Look-ups.
$wd->clear('#task-id');
$wd->type('#task-id', $ok_id);
$wd->click('#task-go');
($ok, $got) = shows(sub { $wd->text('#task-state') }, qr/^succeeded$/);
ok($ok, 'look-up: the task that was retried is succeeded') or diag("shows '" . ($got // 'nothing') . "'");
like($wd->js(q{return location.hash}), qr/^#task=$ok_id$/, 'look-up: the address names the task (a link to it)');
is($wd->text('#task-attempts'), '2 of 25', 'look-up: two attempts of 25');
is($wd->text('#task-trace tr[data-attempt="1"] td[data-field="outcome"]'), 'failed', 'look-up: attempt 1 failed');
is($wd->text('#task-trace tr[data-attempt="1"] td[data-field="error"]'), 'smtp 451: try later',
	'look-up: ... with its error');
is($wd->text('#task-trace tr[data-attempt="1"] td[data-field="worker"]'), 'w-sql', 'look-up: ... by worker w-sql');
like($wd->text('#task-trace tr[data-attempt="1"] td[data-field="queue_wait"]'), qr/^\d+(\.\d)? (ms|s|min)$/,
	'look-up: ... its queue wait as a duration');
like($wd->text('#task-trace tr[data-attempt="1"] td[data-field="run_time"]'), qr/^\d+(\.\d)? (ms|s|min)$/,
	'look-up: ... and its run time');
is($wd->text('#task-trace tr[data-attempt="2"] td[data-field="outcome"]'), 'succeeded', 'look-up: attempt 2 succeeded');
like($wd->text('#task-result'), qr/"sent": true.*"message_id": "m-1"/s, 'look-up: the result');
is($wd->text('#task-log'),
	"[attempt 1] connecting to smtp\n[attempt 1] smtp said 451\n[attempt 2] sent on second try",
	'look-up: the log lines, attempt by attempt');
like($wd->text('#task-payload'), qr/ann\@example\.com/, 'look-up: the payload');

$wd->click(qq{#dead tr[data-task="$dead1"] button});
($ok, $got) = shows(sub { $wd->text('#task-state') }, qr/^dead$/);
ok($ok, 'look-up from the dead list: the task is dead') or diag("shows '" . ($got // 'nothing') . "'");
is($wd->text('#task-last_error'), $evil, 'look-up from the dead list: its error as text');

$wd->clear('#task-id');
$wd->type('#task-id', '987654321');
$wd->click('#task-go');
($ok, $got) = shows(sub { $wd->text('#task-message') }, qr/No task 987654321/);
ok($ok, 'look-up: an unknown id says there is no such task') or diag("shows '" . ($got // 'nothing') . "'");
ok(!$wd->js(q{return document.getElementById('task').hidden === false}), 'look-up: ... and shows no task');

$wd->clear('#task-id');
$wd->type('#task-id', 'abc');
$wd->click('#task-go');
($ok, $got) = shows(sub { $wd->text('#task-message') }, qr/positive whole number/);
ok($ok, 'look-up: a bad id is refused, saying why') or diag("shows '" . ($got // 'nothing') . "'");

$wd->clear('#task-id');
$wd->type('#task-id', $running);
$wd->click('#task-go');
($ok, $got) = shows(sub { $wd->text('#task-state') }, qr/^running$/);
ok($ok, 'look-up: the leased task is running') or diag("shows '" . ($got // 'nothing') . "'");
is($wd->text('#task-trace tr[data-attempt="1"] td[data-field="outcome"]'), 'running', 'look-up: its attempt is open');
sq(qq{SELECT tq_complete($run_id, $run_att, '"done late"')});
($ok, $got) = shows(sub { $wd->text('#task-state') }, qr/^succeeded$/);
ok($ok, 'look-up: the view follows the task until it finishes') or diag("shows '" . ($got // 'nothing') . "'");
is($wd->text('#task-result'), 'done late', 'look-up: ... and shows its result (a JSON string as its text)');

# 6. The database goes away and comes back.
$node->stop('fast');
($ok, $got) = shows(sub { $wd->text('#status') }, qr/database/);
ok($ok, 'page: with the database down it says so') or diag("shows '" . ($got // 'nothing') . "'");
ok($wd->js(q{return document.getElementById('status').classList.contains('error')}), 'page: ... as an error');
$node->start;
($ok, $got) = shows(sub { $wd->text('#status') }, qr/^updated /, 30);
ok($ok, 'page: when the database is back the page recovers by itself') or diag("shows '" . ($got // 'nothing') . "'");
$wd->stop;

# ---------------------------------------------------------------------------
# 8. tqd stops while a request waits for its query (held up by a lock): the
# request is answered 503, and tqd exits cleanly.
my $locker = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-c',
	  'BEGIN; LOCK TABLE tq.queue IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);' ],
	'>', \my $lock_out, '2>&1');
ok(poll(q{SELECT count(*) = 1 FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted
            AND relation = 'tq.queue'::regclass}, 30), 'a session holds tq.queue');
my $pending_out = '';
my $pending = IPC::Run::start([ 'curl', '-s', '-w', '\n%{http_code}', "$base/api/queues" ],
	'>', \$pending_out, '2>&1');
ok(poll(q{SELECT count(*) >= 1 FROM pg_stat_activity
           WHERE wait_event_type = 'Lock' AND query LIKE '%tq_queue_activity%'}, 30),
	'a dashboard request waits for its query');
kill 'TERM', tqd_pid('d');
is(wait_exit('d', 30), 0, 'tqd exits 0 on SIGTERM with the request waiting');
$pending->finish;
like($pending_out, qr/tqd is stopping\s+503$/, 'the waiting request is answered 503: tqd is stopping');
sq(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()});
$locker->finish;

# ---------------------------------------------------------------------------
# Without dashboard = on there is no dashboard (the metrics stay).
start_tqd('n', write_conf('n', ''));
ok(started('n'), 'tqd without the dashboard is connected');
my ($nport) = tqd_log('n') =~ /serving \/metrics.* port=(\d+)/;
is($http->get("http://127.0.0.1:$nport/")->{status}, 404, 'no dashboard unless dashboard = on');
is($http->get("http://127.0.0.1:$nport/api/queues")->{status}, 404, '... and no /api');
is($http->get("http://127.0.0.1:$nport/metrics")->{status}, 200, '... /metrics as before');
unlike(tqd_log('n'), qr/conn=dashboard/, '... and no dashboard connection');
kill 'TERM', tqd_pid('n');
is(wait_exit('n', 30), 0, 'tqd exits 0');
no_sanitizer_reports() if $sanitized;

done_testing();
