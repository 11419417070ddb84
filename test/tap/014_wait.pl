# tq_wait across sessions: a session waiting for a task is woken by the
# commit of the session that finishes it -- promptly, without polling.
#
#   1. One waiter, the task completed by another session after a pause:
#      the waiter returns the final state and result within 0.2 s of the
#      commit (three times, with pauses that do not line up with the
#      waiter's one-second safety re-check), and while it waits it sleeps
#      (wait_event_type Extension), not running queries.
#   2. Twenty waiters, their tasks completed in one batch: all return.
#   3. A waiter for a task cancelled before it ran: returns 'cancelled'.
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

my $node = tq_node('wait', '200ms');
$node->safe_psql('postgres', q{SELECT tq_create_queue('w')});
TqdHarness::setup(node => $node, dir => PostgreSQL::Test::Utils::tempdir());

# A waiting session: psql running tq_wait, then printing the clock.
sub start_waiter
{
	my ($id, $out) = @_;
	my $sql = "SELECT state || '|' || coalesce(result::text, '') FROM tq_wait($id, '30 s'); "
	  . "SELECT extract(epoch FROM clock_timestamp());";
	return IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', $out, '2>&1');
}

sub waiting_count
{
	return sq(q{SELECT count(*) FROM pg_stat_activity
	            WHERE query LIKE '%tq_wait(%' AND wait_event_type = 'Extension' AND pid <> pg_backend_pid()});
}

sub poll_waiting
{
	my $n = shift;
	my $deadline = time + 30;
	while (time < $deadline)
	{
		return 1 if waiting_count() >= $n;
		usleep(20_000);
	}
	return 0;
}

# ---------------------------------------------------------------------------
# 1. One waiter, woken by the commit.
for my $pause (0.6, 1.3, 2.45)
{
	my $id = sq(q{SELECT tq_submit('w', '{"x": 1}')});
	my $out = '';
	my $h = start_waiter($id, \$out);
	ok(poll_waiting(1), "a session waits for task $id, asleep (wait_event_type Extension)");
	usleep($pause * 1e6);
	# The clock just before the statement's commit.
	my ($done, $commit) = split /\|/, sq(qq{SELECT cardinality(tq_complete(ARRAY[l.id], ARRAY[l.attempt],
	                                                    ARRAY['{"done": true}'::jsonb])),
	                                        extract(epoch FROM clock_timestamp())
	                                   FROM tq_lease('other', '{w}', 1) l});
	$h->finish;
	my ($row, $woke) = split /\n/, $out;
	is($row, 'succeeded|{"done": true}', "... it returns the final state and result after $pause s");
	cmp_ok($woke - $commit, '<', 0.2, sprintf('... %.1f ms after the completing statement (woken by its commit, not by polling)',
		1000 * ($woke - $commit)));
}

# ---------------------------------------------------------------------------
# 2. Twenty waiters, one batch.
my @ids = split /\n/, sq(q{SELECT tq_submit('w', jsonb_build_object('n', g)) FROM generate_series(1, 20) g});
my (@outs, @hs);
for my $i (0 .. $#ids)
{
	$outs[$i] = '';
	push @hs, start_waiter($ids[$i], \$outs[$i]);
}
ok(poll_waiting(20), 'twenty sessions wait, one task each');
my $batch = sq(q{SELECT cardinality(tq_complete(array_agg(l.id), array_agg(l.attempt),
                                               array_agg(jsonb_build_object('id', l.id))))
                 FROM tq_lease('other', '{w}', 20) l});
is($batch, '20', 'their twenty tasks are completed in one batch');
$_->finish for @hs;
my $right = grep { $outs[$_] =~ /^succeeded\|\{"id": $ids[$_]\}\n/ } 0 .. $#ids;
is($right, 20, 'every waiter returned its own task, succeeded');

# ---------------------------------------------------------------------------
# 3. Cancelled before it ran.
my $cid = sq(q{SELECT tq_submit('w', '{}', run_at => now() + interval '1 hour')});
my $cout = '';
my $ch = start_waiter($cid, \$cout);
ok(poll_waiting(1), 'a session waits for a task due in an hour');
sq("SELECT tq_cancel($cid)");
$ch->finish;
like($cout, qr/^cancelled\|\n/, 'tq_cancel: the waiter returns at once with cancelled');

$node->stop;
done_testing();
