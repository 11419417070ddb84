# Crash recovery: a server crash loses no task, and a task whose worker was
# lost in the crash runs again once its lease expires.
#
#   1. Submit 20 tasks; worker w1 leases 10 of them.
#   2. Crash the server (immediate stop: no shutdown checkpoint) and start it.
#   3. All 20 tasks are still there: the 10 leased ones running, the other
#      10 ready.
#   4. Worker w2 keeps leasing and completing until every task succeeded.
#      The 10 never-leased tasks run at attempt 1; the 10 that w1 held come
#      back, once their 2-second leases expire and the retry backoff (about
#      a second) has passed, at attempt 2.  No fixed sleeps: w2 polls with a
#      deadline.
#   5. Every task succeeded exactly once, at attempt 1 or 2, and w1 coming
#      back late with its old attempt number could not complete a task that
#      w2 held (fencing).
#
# Run by test/run-tests.sh (make check) with PostgreSQL's TAP kit; needs tq
# installed (make install).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
# No background worker: this test is about tq_lease's own reclaim, and the
# check that the leases survived the crash must not race the worker's
# (004_background_worker.pl covers the worker).
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'tq'\ntq.database = ''\n");
$node->start;

$node->safe_psql('postgres', 'CREATE EXTENSION tq');
$node->safe_psql('postgres',
	"SELECT tq_create_queue('q', lease => interval '2 seconds')");

# 1. Twenty tasks, ten of them leased by w1.
my @all = split /\n/,
  $node->safe_psql('postgres',
	"SELECT tq_submit('q', jsonb_build_object('n', n)) FROM generate_series(1, 20) AS n");
is(scalar @all, 20, 'twenty tasks submitted');

my @leased_rows = split /\n/,
  $node->safe_psql('postgres',
	"SELECT id, attempt FROM tq_lease('w1', ARRAY['q'], 10)");
is(scalar @leased_rows, 10, 'w1 leased ten tasks');
my %held_by_w1;
my @w1_attempts;
for my $row (@leased_rows)
{
	my ($id, $attempt) = split /\|/, $row;
	$held_by_w1{$id} = 1;
	push @w1_attempts, $attempt;
}
is(scalar(grep { $_ != 1 } @w1_attempts), 0, 'w1 leased them at attempt 1');
my @held = sort { $a <=> $b } keys %held_by_w1;
my @not_held = grep { !$held_by_w1{$_} } @all;
my $held_list = join(',', @held);
my $all_list = join(',', @all);

# 2. Crash and restart.
$node->stop('immediate');
$node->start;

# 3. Nothing lost; the leases survived the crash.  (Nothing has leased since
# the restart, so no expired lease has been reclaimed yet.)
my $states = $node->safe_psql(
	'postgres', qq{
	SELECT string_agg(state::text || ' ' || n, ', ' ORDER BY state::text)
	FROM (SELECT (SELECT t.state FROM tq_task(i) AS t) AS state, count(*) AS n
	      FROM unnest(ARRAY[$all_list]::bigint[]) AS i
	      GROUP BY 1) AS s});
is($states, 'ready 10, running 10',
	'after the crash all 20 tasks exist: 10 running, 10 ready');
is( $node->safe_psql(
		'postgres', qq{
		SELECT count(*) FROM unnest(ARRAY[$held_list]::bigint[]) AS i
		WHERE (SELECT t.state FROM tq_task(i) AS t) = 'running'}),
	'10',
	'the tasks w1 held are the running ones');

# 4. Worker w2 leases and completes whatever is available, recording each
# completion, until all 20 succeeded.  Before completing a task that runs
# again, it also plays the part of w1 coming back late: completing with the
# old attempt number must be refused (fencing).
$node->safe_psql(
	'postgres', q{
	CREATE TABLE completions (id bigint, attempt integer, stale_accepted boolean,
	                          completed boolean);
	CREATE FUNCTION work_as(worker text) RETURNS bigint
	LANGUAGE plpgsql AS $$
	DECLARE
		t record;
		stale boolean;
	BEGIN
		FOR t IN SELECT l.id, l.attempt FROM tq_lease(worker, ARRAY['q'], 20) AS l
		LOOP
			stale := NULL;
			IF t.attempt > 1 THEN
				stale := tq_complete(t.id, t.attempt - 1);
			END IF;
			INSERT INTO completions
			VALUES (t.id, t.attempt, stale, tq_complete(t.id, t.attempt));
		END LOOP;
		RETURN (SELECT count(*) FROM completions WHERE completed);
	END
	$$;});
ok($node->poll_query_until('postgres', "SELECT work_as('w2') >= 20"),
	'w2 completed 20 tasks, including the 10 w1 lost in the crash');

# 5. The outcome a user cares about.
is( $node->safe_psql(
		'postgres', qq{
		SELECT count(*) FROM unnest(ARRAY[$all_list]::bigint[]) AS i
		WHERE (SELECT t.state FROM tq_task(i) AS t) = 'succeeded'}),
	'20',
	'all 20 tasks succeeded');
is( $node->safe_psql(
		'postgres',
		'SELECT count(*) FROM completions WHERE NOT completed'),
	'0',
	'no completion by w2 was refused');
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) || ' ' || count(DISTINCT id) FROM completions
		WHERE completed AND attempt IN (1, 2)}),
	'20 20',
	'every task succeeded exactly once, at attempt 1 or 2');
is( $node->safe_psql(
		'postgres', qq{
		SELECT string_agg(DISTINCT attempt::text, ',') FROM completions
		WHERE completed AND id = ANY (ARRAY[$held_list]::bigint[])}),
	'2',
	'the tasks w1 lost in the crash ran again at attempt 2');
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) FILTER (WHERE stale_accepted IS false) || ' of ' || count(*)
		FROM completions WHERE attempt = 2}),
	'10 of 10',
	'while w2 held them, completing with w1\'s stale attempt number was refused');
my $not_held_list = join(',', @not_held);
is( $node->safe_psql(
		'postgres', qq{
		SELECT string_agg(DISTINCT attempt::text, ',') FROM completions
		WHERE completed AND id = ANY (ARRAY[$not_held_list]::bigint[])}),
	'1',
	'the tasks nobody had leased ran at attempt 1');

$node->stop;
done_testing();
