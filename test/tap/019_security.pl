# Attacks by roles that hold only the documented roles, or none (the two
# severe findings of the security review; the rest is listed in README's
# Security model as still open).
#
#   1. A tq_admin that may create schemas makes a schema "cron" with a
#      function cron.schedule that would make it superuser, then calls
#      tq_schedule and tq_unschedule (which run as the extension's owner):
#      refused, and the role is still not a superuser.
#   2. A role with no tq rights sends NOTIFY tq_cancel for a running task,
#      again and again: the task is not stopped and succeeds at its first
#      attempt.  A real tq_cancel still stops a running task.
#   3. Sessions waiting in tq_wait are terminated, more in all than there
#      are wait slots: tq_wait still works for everyone (a terminated
#      waiter used to keep its slot until a restart).
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

my $node = tq_node('security', '100ms');
# Few backends, so that terminated waiters would use up every wait slot.
$node->append_conf('postgresql.conf', "max_connections = 20\nmax_wal_senders = 0\nmax_worker_processes = 4\n");
$node->restart;
my $dir = PostgreSQL::Test::Utils::tempdir();
TqdHarness::setup(node => $node, dir => $dir, tqd => $tqd);

# ---------------------------------------------------------------------------
# 1. An impostor of pg_cron's cron.schedule, in a database without pg_cron.
sq(q{
CREATE ROLE admin1 LOGIN;
GRANT tq_admin TO admin1;
GRANT CREATE ON DATABASE postgres TO admin1;
SELECT tq_create_queue('cronq');
});
my ($rc, $out, $err) = $node->psql(
	'postgres', q{
CREATE SCHEMA cron;
CREATE FUNCTION cron.schedule(a text, b text, c text) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'ALTER ROLE admin1 SUPERUSER';
    RETURN 1;
END
$$;
CREATE FUNCTION cron.unschedule(a name) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'ALTER ROLE admin1 SUPERUSER';
    RETURN true;
END
$$;
CREATE TABLE cron.job (jobname text);
},
	extra_params => [ '-U', 'admin1' ]);
is($rc, 0, 'a tq_admin with CREATE on the database made schema cron and its impostors') or diag($err);
($rc, $out, $err) = $node->psql('postgres', q{SELECT tq_schedule('evil', '* * * * *', 'cronq')},
	extra_params => [ '-U', 'admin1' ]);
isnt($rc, 0, 'tq_schedule refuses to call them');
like($err, qr/periodic tasks need the pg_cron extension/, '... saying pg_cron is not installed');
($rc, $out, $err) = $node->psql('postgres', q{SELECT tq_unschedule('evil')}, extra_params => [ '-U', 'admin1' ]);
isnt($rc, 0, 'tq_unschedule refuses too');
is(sq(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'admin1'}), 'f', 'admin1 is still not a superuser');

# ---------------------------------------------------------------------------
# 2. Forged tq_cancel notifications.
sq(q{
CREATE ROLE nobody1 LOGIN;
SELECT tq_create_queue('slow', lease => '1 minute');
});
my $conf = tqd_conf('tqd.conf', <<"EOF");
heartbeat_interval = 10s

[queue:slow]
handler = exec
command = /bin/sleep 2
EOF
start_tqd('a', $conf);
ok(started('a'), 'tqd connected');

my $t1 = sq(q{SELECT tq_submit('slow', '{}')});
ok(poll(qq{SELECT state = 'running' FROM tq_task($t1)}, 30), 'a 2 s task is running');
for (1 .. 20)
{
	($rc, $out, $err) = $node->psql('postgres',
		qq{SELECT pg_notify('tq_cancel', '{"id":$t1,"attempt":1}')},
		extra_params => [ '-U', 'nobody1' ]);
	last if $rc != 0;
	usleep(50_000);
}
is($rc, 0, 'a role with no tq rights can send the notification (PostgreSQL allows it)') or diag($err);
ok(poll(qq{SELECT state = 'succeeded' FROM tq_task($t1)}, 30), 'the task was not stopped: it succeeded')
  or diag(sq(qq{SELECT row_to_json(t) FROM tq_task($t1) t}));
is(sq(qq{SELECT attempts FROM tq_task($t1)}), '1', '... at its first attempt');
unlike(tqd_log('a'), qr/task cancelled/, 'tqd logged no cancel');

# A real cancel is confirmed by the database and stops the task at once
# (the heartbeat it brings forward, not the 10 s interval).
my $t2 = sq(q{SELECT tq_submit('slow', '{}')});
ok(poll(qq{SELECT state = 'running' FROM tq_task($t2)}, 30), 'another task is running');
my $t0 = time;
sq(qq{SELECT tq_cancel($t2)});
ok(poll(qq{SELECT state = 'cancelled' FROM tq_task($t2)}, 30), 'tq_cancel stops it: cancelled');
ok(time - $t0 < 1.9, 'before the program would have ended by itself');
ok(poll_log('a', qr/msg="task cancelled: stopping it" task=$t2 /), 'tqd stopped it on the heartbeat\'s answer');

kill 'TERM', tqd_pid('a');
is(TqdHarness::wait_exit('a', 30), 0, 'tqd drains and exits 0');
# ---------------------------------------------------------------------------
# 3. Waiters terminated: slots come back.
my $slots = sq(q{SELECT current_setting('max_connections')::int + current_setting('autovacuum_max_workers')::int + 1
                      + current_setting('max_worker_processes')::int + current_setting('max_wal_senders')::int});
sq(q{SELECT tq_create_queue('never')});
my $never = sq(q{SELECT tq_submit('never', '{}')});
my $ended = 0;
my $round = 0;
while ($ended <= $slots && $round < 10)
{
	$round++;
	my @h;
	for (1 .. 12)
	{
		my ($o, $e) = ('', '');
		push @h, IPC::Run::start([ 'psql', '-X', '-d', $node->connstr('postgres'), '-c',
				"SELECT tq_wait($never, '5 minutes')" ], '>', \$o, '2>', \$e);
	}
	ok(poll(q{SELECT count(*) = 12 FROM pg_stat_activity WHERE query LIKE 'SELECT tq_wait%' AND wait_event = 'Extension'}, 30),
		"round $round: 12 sessions wait in tq_wait");
	sq(q{SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'SELECT tq_wait%' AND pid <> pg_backend_pid()});
	$_->finish for @h;
	$ended += 12;
}
ok($ended > $slots, "more waiters were terminated ($ended) than there are wait slots ($slots)");
($rc, $out, $err) = $node->psql('postgres', qq{SELECT (tq_wait($never, '100 ms')).state});
is($rc, 0, 'tq_wait still works afterwards') or diag($err);
is($out, 'ready', '... and answers the task\'s state');

done_testing();
