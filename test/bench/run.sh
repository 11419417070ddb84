#!/usr/bin/env bash
# The tq benchmark: one table from one run, each tq figure beside its floor
# measured in the same run on the same server (README.md, Performance).
# Run by `make bench` after `make install`; as root or as an ordinary user.
#
# Rows:
#   1. tq_submit, one task per transaction, at 1 and 8 clients, with the
#      wake-up sent from the submitting transaction (NOTIFY in transaction:
#      a database the background worker does not serve) and with none
#      (tq.producer_notify = off); at 8 clients also through the background
#      worker (database bench_worker, which tq.database names: the commit
#      only flags the queue in shared memory, the worker sends tq_ready);
#      floor: a plain single-row INSERT, measured in the same database as
#      the tq figure beside it.  Measured at the cluster's
#      synchronous_commit = off and, with TQ_BENCH_SYNC=1, again at
#      synchronous_commit = on (both sides), where NOTIFY's commit lock
#      covers the WAL flush.
#   1b. wake-up latency with every worker idle (test/bench/latency.c): one
#      tq_submit every 20 ms in autocommit, timed from just before it is
#      sent to the arrival of tq_ready at a LISTENing session; through the
#      background worker, and for comparison from the submitting
#      transaction (a database the worker does not serve).  p50/p99/max.
#   1c. delayed tasks (latency.c): tq_submit with run_at = clock_timestamp()
#      + 10 to 500 ms, one task due at a time; the time from the run_at the
#      server stored to the arrival of the tq_ready the worker sends when
#      it promotes the task (the promotion commits before that: an upper
#      bound of run_at-to-leasable).  p50/p99/max.
#   2. tq_submit_many of 100 000 payloads in one call; floor: INSERT ...
#      SELECT of 100 000 rows.  Median of three, timed in SQL, commit included.
#   3. lease + complete in one transaction, batch 1 and 50, 4 clients,
#      against a backlog sized from a warm-up run so that it cannot run dry;
#      floor: the minimal SKIP LOCKED cycle on the plain table (UPDATE ...
#      SET state = 'running' ... RETURNING id, then DELETE of those ids).
#      With TQ_BENCH_SYNC=1, batch 50 also at synchronous_commit = on
#      (tq_complete notifies).
#   4. the batch-50 cycle at a constant backlog of 1 000 and of 1 000 000
#      ready tasks: every transaction submits back as many tasks as it
#      completed (floor: inserts back as many rows as it deleted).
#
# A second table, fair dispatch and limits (0.3.0):
#   5. the cost of fair dispatch: the batch-50 lease+complete of row 3 (4
#      clients, same script, same checks) on a queue whose backlog is
#      spread over 10 000 tenants, each with a policy row (tq_set_tenant:
#      weights 1 to 4, and a rate of 1 000/s with burst 1 000, concurrency
#      100 and backlog_limit 1 000 000, all configured but none binding);
#      compared with the single-tenant tq figure of row 3 (tasks without a
#      tenant, measured just before).  Two backlogs: per tenant, each
#      tenant's submitted by one tq_submit_many, proportional to its weight
#      so that all drain at the same pace and stay backlogged (in the table
#      a tenant's tasks lie together, while the fair order takes one of
#      each tenant in turn); and mixed, single tq_submit calls for random
#      tenants from 8 pgbench clients, as from many producers at once (the
#      table's order is then close to the fair order), on the same tenants
#      in the queue dropped (with its tasks) and made again.  After each:
#      no task may be parked (a limit would have bound), and every tenant
#      with ready tasks must have its own shared entry; after the first,
#      the spread of the tasks run per unit of weight across tenants is
#      logged as a check of the fair order.  Also shown: the server's CPU
#      time per task of these runs and of row 3's (the postmaster and its
#      children, from /proc), which other load on the machine hardly
#      changes, as a check of a rate ratio that it does; and in the log,
#      the server's share of the machine's CPU during each run.
#   6. rate limit accuracy: a queue with rate_per_sec = 100, burst = 1, a
#      backlog of 100 000, and 4 clients running the batch lease+complete
#      (up to 10 per lease) as fast as they can for 30 s; the tasks started
#      between two server timestamps taken just before and just after
#      pgbench (started_at in tq.history), per second of that window.
#   7. tq_submit, one task per transaction, at 16 clients, in the worker's
#      database (wake-up by the worker, as in row 1), against a single-row
#      INSERT into a copy of tq.task of the full shape: same columns,
#      defaults, constraints, indexes and storage parameters, no triggers
#      (CREATE TABLE ... (LIKE tq.task INCLUDING ALL), with a sequence of
#      its own).  Breakdown: the same INSERT into a copy that also has
#      tq.task's triggers (tq.task_row, in C, and the others, copied from
#      the catalog; its rows use a queue name no queue has, so that they
#      only add shared-memory entries of their own); tq_submit with no
#      wake-up (tq.producer_notify = off); and the reduced-shape INSERT of
#      row 1 for reference.  Also the server's CPU time per row of tq_submit
#      and of the full-shape INSERT (see row 5).
#   8. tqd end to end: 100 000 tasks with the noop handler drained by one
#      tqd, then by two, beside row 3's batch-50 floor; submit-to-start
#      latency with tqd idle at 100 submits/s (started_at - submitted_at);
#      tqd's resident memory with 1 000 exec tasks running.
#   9. push mode (0.5.0): 50 000 tasks through the http handler to the test
#      server (worker/test/tqtest_httpd, unlimited capacity, answers at
#      once), one tqd, window fixed at 64 and adaptive from its defaults,
#      beside the noop figure of row 8; and the adaptive window over time
#      against a server of capacity 20 (429 above it, 50 ms per request),
#      with aimd_decrease 0.5 (the default) and 0.75, printed as a table.
#
# A third table, observability, from test/bench/observability.sh
# (sourced; it says how they are measured):
#  10. the stats views and a dashboard's reads (tq_queue_stats,
#      tq_queue_activity, tq_tenants, tq_queues, the newest dead tasks, dead
#      counts, tq_task, tq_task_trace, tq_task_log by id; tq_queue_stats_exact
#      for contrast) on a queue with 10 000 000 finished tasks in history
#      and 1 000 000 ready over 1 000 tenants: p50/p95/max ms on the server.
#  11. the cost of the counters and traces end to end: the same tqd on the
#      0.4.0 SQL (none of them) and on the current one, alternating: noop
#      tasks, and tasks that fail their first attempt (http handler).
#
# Every measurement is checked: the tasks (rows) actually finished must be
# the pgbench transactions times the batch, so a backlog that ran dry shows
# up; a run that comes out short is repeated once on a backlog twice the
# size, and a measurement that is still short is marked INVALID.
#
# Method: one throwaway cluster (test/cluster.sh, overridden to keep fsync
# and full_page_writes on), each row group in a fresh database with the tq
# extension and the plain table, VACUUM ANALYZE and CHECKPOINT before every
# measured run, pgbench in simple protocol with -j min(clients, 2).  The
# plain table gets the same autovacuum storage parameters as tq.task, read
# from the catalog.  The exception is bench_worker, the database the
# background worker serves: tq.database is fixed at server start and DROP
# DATABASE fails while the worker is connected, so it is made once, right
# after the cluster starts, and kept; nothing is measured before the
# worker is seen running in it.  The latency program is compiled from
# latency.c into a temporary directory at each run.
#
# Settings (environment):
#   TQ_BENCH_PORT   port of the private socket, default 54700
#   TQ_BENCH_SECS   seconds per measured pgbench run, default 8
#   TQ_BENCH_SYNC=1 also the synchronous_commit = on rows (about 2 minutes
#                   more; with the defaults, rows 1 to 9 take about 11
#                   minutes and rows 10 and 11 about 3.5 more;
#                   TQ_BENCH_SECS=12 TQ_BENCH_SYNC=1 gives the table of
#                   0.2.0's figures)
#   TQ_BENCH_LAT_N  measured submits of the wake-up latency, default 500
#   TQ_BENCH_DELAY_N  delayed tasks of the delayed-task latency, default 200
#   TQ_BENCH_TENANTS  tenants of row 5, default 10000 (at most
#                   tq.max_tenants - 100: each needs a shared entry)
#   TQ_BENCH_RATE_SECS  seconds of the rate-limit run of row 6, default 30
#   TQ_BENCH_ONLY   the rows to run, comma-separated: 1-9 (this table and
#                   the second, which run together: later rows are measured
#                   against earlier ones), 10, 11; default all.  Without
#                   1-9, observability.sh runs alone, in a cluster of its own
#   TQ_BENCH_BIG_*, TQ_BENCH_STATS_N, TQ_BENCH_OBS_*: rows 10 and 11, see
#                   observability.sh
#   TQ_TEST_KEEP=1  keep the cluster directory afterwards (test/cluster.sh)
#
# The machine's load average is printed at the start and the end: other
# work on the machine (tests run concurrently) shows there as noise.
#
# The raw pgbench output and the derived figures of every run go to a log
# under test/results/bench/, whose path is printed.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$top"
benchdir=$top/test/bench

# shellcheck source=test/bench/lib.sh
. "$benchdir/lib.sh"

secs=${TQ_BENCH_SECS:-8}
port=${TQ_BENCH_PORT:-54700}
lat_n=${TQ_BENCH_LAT_N:-500}
delay_n=${TQ_BENCH_DELAY_N:-200}
tenants=${TQ_BENCH_TENANTS:-10000}
rate_secs=${TQ_BENCH_RATE_SECS:-30}
check_positive "TQ_BENCH_SECS=$secs" "TQ_BENCH_PORT=$port" "TQ_BENCH_LAT_N=$lat_n" "TQ_BENCH_DELAY_N=$delay_n" \
	"TQ_BENCH_TENANTS=$tenants" "TQ_BENCH_RATE_SECS=$rate_secs"
# TQ_BENCH_ONLY (lib.sh): rows 10 and 11 alone are observability.sh's
# own run, in a cluster of its own.
bench_select
if [ "$want_main" = 0 ]; then
	exec "$benchdir/observability.sh"
fi
# shellcheck source=test/bench/observability.sh
. "$benchdir/observability.sh"
obs_settings
warmup_secs=3
# Row 1, and the batch-50 lease+complete of row 3, are also measured at
# synchronous_commit = on with TQ_BENCH_SYNC=1.
if [ "${TQ_BENCH_SYNC:-0}" = 1 ]; then
	sync_modes=(off on)
else
	sync_modes=(off)
fi
many_n=100000
# Wake-up latency: warm-up submits (dropped), then lat_n, one every
# lat_spacing ms.  Delayed tasks: run_at offsets (ms), taken in turn.
lat_warmup=20
lat_spacing=20
delay_offsets=100,10,100,50,100,250,100,500
# Row 6: the queue's rate limit (tasks/s) and bucket, the backlog it works
# on, and how many tasks a lease asks for.
rate_limit=100
rate_burst=1
rate_backlog=100000
rate_batch=10
# Row 7: clients of the single submits.
submit_clients=16

mkdir -p "$results"
log=$results/bench-$(date +%Y%m%d-%H%M%S).log
: >"$log"

# new_db DB: a fresh database with tq, queue "bench" and the plain table.
new_db()
{
	local db=$1 relopts
	q postgres 'SET client_min_messages = warning' "DROP DATABASE IF EXISTS $db" "CREATE DATABASE $db" ||
		fail "could not create database $db"
	q "$db" 'SET client_min_messages = warning' 'CREATE EXTENSION tq' \
		"SELECT tq_create_queue('bench')" >/dev/null ||
		fail "could not set up tq in database $db"
	# The floor's table: the shape of a task row reduced to what a
	# hand-written queue keeps, with a primary key and one partial index for
	# the claim, like tq.task_dispatch_idx.
	relopts=$(q "$db" "SELECT coalesce(array_to_string(reloptions, ', '), '')
	                     FROM pg_class WHERE oid = 'tq.task'::regclass") ||
		fail "could not read the storage parameters of tq.task"
	q "$db" "CREATE TABLE plain (
	             id           bigserial PRIMARY KEY,
	             queue        text NOT NULL,
	             payload      jsonb NOT NULL,
	             submitted_at timestamptz NOT NULL DEFAULT now(),
	             priority     integer NOT NULL DEFAULT 0,
	             state        text NOT NULL DEFAULT 'ready'
	         )${relopts:+ WITH ($relopts)}" \
		"CREATE INDEX plain_ready_idx ON plain (id) WHERE state = 'ready'" ||
		fail "could not create the plain table in $db"
	logonly "database $db: plain table WITH (${relopts:-defaults})"
}

# Counters of finished work.  tq: tasks that reached history as succeeded;
# floor: rows gone from the plain table (or inserted back, for the cycles
# that replenish).
tq_done() { q "$1" "SELECT count(*) FROM tq.history WHERE state = 'succeeded'"; }
tq_ready() { q "$1" "SELECT count(*) FROM tq.task WHERE queue = 'bench' AND state = 'ready'"; }
tq_rows() { q "$1" "SELECT count(*) FROM tq.task"; }
plain_ready() { q "$1" "SELECT count(*) FROM plain WHERE state = 'ready'"; }
plain_rows() { q "$1" "SELECT count(*) FROM plain"; }
# Rows ever inserted: in the cycles that replenish, each transaction inserts
# as many rows as it deleted.
plain_inserted() { q "$1" "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM plain_id_seq"; }

# Row 5's tenants: tenant-1 .. tenant-N, tenant i of weight 1 + i % 4 (an
# SQL expression of i).
fair_weight='(1 + i % 4)'

# top_up DB SIDE N: brings the ready backlog of SIDE (tq, fair, fair_mixed
# or floor) up to N, tq through tq_submit_many in chunks of 100 000; fair
# through one tq_submit_many per tenant, each tenant getting the same number
# of tasks per unit of its weight (so that all of them drain at the same
# pace), at least as many as are missing in all; fair_mixed through single
# tq_submit calls for random tenants from 8 pgbench clients.
top_up()
{
	local db=$1 side=$2 want=$3 have n out
	if [ "$side" = fair_mixed ]; then
		have=$(tq_ready "$db")
		if [ "$have" -lt "$want" ]; then
			n=$(((want - have + 7) / 8))
			logonly "\$ pgbench -n -c 8 -j 2 -t $n -f ${benchdir#"$top"/}/submit_tenant.sql -D tenants=$tenants $db"
			out=$(pgbench -n -c 8 -j 2 -t "$n" -f "$benchdir/submit_tenant.sql" -D tenants="$tenants" "$db" 2>&1) ||
				fail "prefill of the tenants' mixed backlog in $db failed: $out"
			logonly "$(grep -E '^(number of transactions actually|tps)' <<<"$out")"
		fi
	elif [ "$side" = fair ]; then
		have=$(tq_ready "$db")
		if [ "$have" -lt "$want" ]; then
			q "$db" "DO \$\$
			         DECLARE
			             k integer := ceil($((want - have))::numeric
			                               / (SELECT sum($fair_weight) FROM generate_series(1, $tenants) i));
			         BEGIN
			             FOR i IN 1 .. $tenants LOOP
			                 PERFORM tq_submit_many('bench', array_fill('{\"n\":1}'::jsonb, ARRAY[k * $fair_weight]),
			                                        tenant => 'tenant-' || i);
			             END LOOP;
			         END
			         \$\$" || fail "prefill of the tenants' backlog in $db failed"
		fi
	elif [ "$side" = tq ]; then
		have=$(tq_ready "$db")
		while [ "$have" -lt "$want" ]; do
			n=$((want - have))
			[ "$n" -le 100000 ] || n=100000
			q "$db" "SELECT cardinality(tq_submit_many('bench',
			             array_fill('{\"n\":1}'::jsonb, ARRAY[$n])))" >/dev/null ||
				fail "prefill of tq in $db failed"
			have=$((have + n))
		done
	else
		have=$(plain_ready "$db")
		if [ "$have" -lt "$want" ]; then
			q "$db" "INSERT INTO plain (queue, payload)
			         SELECT 'bench', '{\"n\":1}' FROM generate_series(1, $((want - have)))" ||
				fail "prefill of the plain table in $db failed"
		fi
	fi
}

# pgb LABEL DB CLIENTS SECS SCRIPT [pgbench options...]
#	Runs pgbench, logs its whole output, and sets PB_TPS and PB_XACTS.
#	Fails the benchmark when pgbench reports an error or an aborted client.
PB_TPS=0
PB_XACTS=0
pgb()
{
	local label=$1 db=$2 clients=$3 t=$4 script=$5 jobs out rc=0
	shift 5
	jobs=$((clients < 2 ? clients : 2))
	logonly ""
	logonly "=== $label"
	logonly "\$ ${PGOPTIONS:+PGOPTIONS=\"$PGOPTIONS\" }pgbench -n -c $clients -j $jobs -T $t -f ${script#"$top"/}${*:+ $*} $db"
	out=$(pgbench -n -c "$clients" -j "$jobs" -T "$t" -f "$script" "$@" "$db" 2>&1) || rc=$?
	printf '%s\n' "$out" >>"$log"
	if [ "$rc" -ne 0 ] || grep -qiE 'aborted|error:' <<<"$out"; then
		fail "pgbench run \"$label\" failed (exit $rc); see $log"
	fi
	PB_TPS=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -n 1)
	PB_XACTS=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
	if [ -z "$PB_TPS" ] || [ -z "$PB_XACTS" ] || [ "$PB_XACTS" -eq 0 ]; then
		fail "no transactions in the output of pgbench run \"$label\"; see $log"
	fi
}

# ---------------------------------------------------------------------------
# The latency program (rows 1b and 1c), built before the cluster starts so
# that a build failure costs nothing.  The EXIT trap set here is chained
# after the cluster's own by tq_cluster_start.

bindir=$(mktemp -d /tmp/tq-bench-bin.XXXXXX) || fail "could not make a temporary directory"
trap 'rm -rf "$bindir"' EXIT
latency=$bindir/latency
cc -O2 -Wall -Wextra -Werror -I"$(pg_config --includedir)" -o "$latency" "$benchdir/latency.c" \
	-L"$(pg_config --libdir)" -lpq -lm >>"$log" 2>&1 ||
	fail "could not compile $benchdir/latency.c (libpq-fe.h in $(pg_config --includedir)?); see $log"

# ---------------------------------------------------------------------------
# The cluster.

bench_cluster_start "$port"

# worker_serves DB: true when the background worker runs, connected to DB.
worker_serves()
{
	[ "$(q "$worker_db" "SELECT coalesce(running AND database = (SELECT oid FROM pg_database
	                                                              WHERE datname = '$1'), false)
	                       FROM tq_worker_status()")" = t ]
}
# tq_ready notifications the background worker has sent so far.
worker_notified() { q "$worker_db" "SELECT notifications FROM tq_worker_status()"; }

bench_header "tq benchmark"
say "runs: pgbench -n (simple protocol), ${secs} s per measured run, ${warmup_secs} s warm-ups; VACUUM ANALYZE + CHECKPOINT before each run"
say "latency: $lat_n submits ($lat_warmup warm-up) one per ${lat_spacing} ms; $delay_n delayed tasks, run_at offsets $delay_offsets ms in turn"
say ""

# The background worker's database (tq.database), made first: the worker
# tries to connect every 5 s until it exists.  Never dropped (see
# "Method").  Nothing is measured before the worker runs in it.
new_db "$worker_db"
deadline=$((SECONDS + 60))
until worker_serves "$worker_db"; do
	[ "$SECONDS" -lt "$deadline" ] ||
		fail "the background worker did not start in database $worker_db within 60 s"
	sleep 0.1
done
logonly "background worker running in $worker_db: $(q "$worker_db" "SELECT row(w.*) FROM tq_worker_status() w")"

# ---------------------------------------------------------------------------
# Rows 1b and 1c, measured first, on an idle cluster, and shown after row 1.
# latency.c says what it measures and how.

# lat_run LABEL ARGS...: runs the latency program, logs its output, and
# sets LAT_CELL (p50/p99/max ms), LAT_P99, LAT_LOST and LAT_EARLY.
LAT_CELL=-
LAT_P99=0
LAT_LOST=0
LAT_EARLY=0
lat_run()
{
	local label=$1 out res rc=0
	shift
	logonly ""
	logonly "=== $label"
	logonly "\$ latency $*"
	out=$("$latency" "$@" 2>&1) || rc=$?
	printf '%s\n' "$out" >>"$log"
	res=$(grep '^result ' <<<"$out" || true)
	if [ "$rc" -ne 0 ] || [ -z "$res" ]; then
		fail "latency run \"$label\" failed (exit $rc); see $log"
	fi
	field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$res"; }
	LAT_P99=$(field p99)
	LAT_LOST=$(field lost)
	LAT_EARLY=$(field early)
	LAT_EARLY=${LAT_EARLY:-0}
	if [ "$(field n)" = 0 ]; then
		LAT_CELL="none received"
	else
		LAT_CELL=$(awk "BEGIN { printf \"%.2f/%.2f/%.2f\", $(field p50), $(field p99), $(field max) }")
	fi
}

# lat_verdict TARGET_MS: yes or no for LAT_P99; no when a notification was
# lost, INVALID when one came before its run_at.
lat_verdict()
{
	if [ "$LAT_EARLY" != 0 ]; then
		echo "INVALID ($LAT_EARLY early)"
	elif [ "$LAT_LOST" != 0 ]; then
		echo "no ($LAT_LOST lost)"
	else
		awk "BEGIN { print ($LAT_P99 <= $1) ? \"yes\" : \"no\" }"
	fi
}

q "$worker_db" "SELECT tq_create_queue('lat')" "SELECT tq_create_queue('delay')" >/dev/null ||
	fail "could not create the latency queues in $worker_db"
clean "$worker_db"
worker_serves "$worker_db" || fail "the background worker no longer serves $worker_db"
n0=$(worker_notified)
lat_run "wake-up latency, through the background worker ($worker_db)" \
	ready "$worker_db" lat "$lat_n" "$lat_warmup" "$lat_spacing"
n1=$(worker_notified)
logonly "-> the worker sent $((n1 - n0)) tq_ready during the run"
[ $((n1 - n0)) -ge $((lat_n + lat_warmup)) ] ||
	fail "the worker sent $((n1 - n0)) tq_ready for $((lat_n + lat_warmup)) submits: not the worker's path"
lat_worker=("$LAT_CELL" "$(lat_verdict 5)")

lat_run "delayed tasks: run_at to tq_ready ($worker_db)" \
	delayed "$worker_db" delay "$delay_n" "$delay_offsets"
lat_delayed=("$LAT_CELL" "$(lat_verdict 50)")
q "$worker_db" "SELECT tq_drop_queue('lat', force => true)" \
	"SELECT tq_drop_queue('delay', force => true)" >/dev/null ||
	fail "could not drop the latency queues in $worker_db"

db=bench_notify
new_db "$db"
q "$db" "SELECT tq_create_queue('lat')" >/dev/null || fail "could not create queue lat in $db"
clean "$db"
n0=$(worker_notified)
lat_run "wake-up latency, NOTIFY in the submitting transaction ($db, not served by the worker)" \
	ready "$db" lat "$lat_n" "$lat_warmup" "$lat_spacing"
n1=$(worker_notified)
[ "$n1" -eq "$n0" ] ||
	fail "the worker sent $((n1 - n0)) tq_ready while $db, which it does not serve, was measured"
lat_notify=("$LAT_CELL")
drop_db "$db"

# ---------------------------------------------------------------------------
# Row 1: single submits.  First at the cluster's synchronous_commit = off,
# then, with TQ_BENCH_SYNC=1, again at synchronous_commit = on for tq and
# floor alike: a transaction that sent a NOTIFY holds a database-wide lock
# from before its commit record until after it, so with synchronous commit
# the WAL flush happens under that lock, which is what the producer-side
# NOTIFY costs in a durable setup.
#
# Sides: floor and tq_on / tq_off (tq.producer_notify) in bench_submit,
# which the background worker does not serve, so tq_on notifies from the
# submitting transaction; at 8 clients also wfloor and worker in
# bench_worker, where tq_submit hands the wake-up to the worker.  The
# worker's tq_ready count tells that each path is the one its label says.

db=bench_submit
new_db "$db"
declare -A submit
for sc in "${sync_modes[@]}"; do
	for c in 1 8; do
		sides=(floor tq_on tq_off)
		[ "$c" -eq 1 ] || sides+=(wfloor worker)
		for side in "${sides[@]}"; do
			d=$db
			case $side in wfloor | worker) d=$worker_db ;; esac
			clean "$d"
			label="submit, $c clients, synchronous_commit $sc"
			n0=$(worker_notified)
			case $side in
			floor | wfloor)
				before=$(plain_rows "$d")
				PGOPTIONS="-c synchronous_commit=$sc" \
					pgb "$label, plain INSERT ($d)" "$d" "$c" "$secs" "$benchdir/submit_floor.sql"
				done_n=$(($(plain_rows "$d") - before))
				;;
			tq_*)
				before=$(tq_rows "$d")
				PGOPTIONS="-c synchronous_commit=$sc -c tq.producer_notify=${side#tq_}" \
					pgb "$label, tq_submit, producer_notify ${side#tq_} ($d)" "$d" "$c" "$secs" \
					"$benchdir/submit_tq.sql"
				done_n=$(($(tq_rows "$d") - before))
				;;
			worker)
				worker_serves "$d" || fail "the background worker does not serve $d"
				before=$(tq_rows "$d")
				PGOPTIONS="-c synchronous_commit=$sc -c tq.producer_notify=on" \
					pgb "$label, tq_submit, wake-up by the worker ($d)" "$d" "$c" "$secs" \
					"$benchdir/submit_tq.sql"
				done_n=$(($(tq_rows "$d") - before))
				;;
			esac
			[ "$done_n" -eq "$PB_XACTS" ] ||
				fail "$label, $side: $PB_XACTS transactions but $done_n rows"
			n1=$(worker_notified)
			logonly "-> $side: $PB_TPS rows/s ($done_n rows); the worker sent $((n1 - n0)) tq_ready"
			if [ "$side" = worker ]; then
				[ "$n1" -gt "$n0" ] || fail "$label: the worker sent no tq_ready"
			elif [ "$n1" -ne "$n0" ]; then
				fail "$label, $side: the worker sent $((n1 - n0)) tq_ready for a database it does not serve"
			fi
			submit[$side,$c]=$PB_TPS
		done
		for side in worker tq_on tq_off; do
			[ "$c" -ne 1 ] || [ "$side" != worker ] || continue
			m="tq_submit, $c client$([ "$c" -eq 1 ] || echo s)"
			case $side in
			worker)
				m="$m, wake-up by worker"
				fl=${submit[wfloor,$c]}
				target=">= 0.90"
				;;
			tq_on)
				m="$m, NOTIFY in transaction"
				fl=${submit[floor,$c]}
				target=-
				;;
			tq_off)
				m="$m, no wake-up"
				fl=${submit[floor,$c]}
				target=-
				;;
			esac
			[ "$sc" = off ] || m="$m, sync commit on"
			ratio=$(calc "${submit[$side,$c]} / $fl")
			verdict=-
			[ "$target" = - ] || verdict=$(met "$ratio" 0.90)
			row "$m" "$(fmt_rate "${submit[$side,$c]}")" "$(fmt_rate "$fl")" \
				"$(fmt_ratio "$ratio")" "$target" "$verdict"
		done
	done
done
drop_db "$db"

# ---------------------------------------------------------------------------
# Row 7: single submits at 16 clients against the full shape of tq.task, in
# the worker's database (tq_submit's wake-up goes through the worker, as in
# row 1's "wake-up by worker").  full_notrig and full_trig are copies of
# tq.task; full_trig also gets tq.task's triggers, copied from the catalog.

db=$worker_db
relopts=$(q "$db" "SELECT coalesce(array_to_string(reloptions, ', '), '')
                     FROM pg_class WHERE oid = 'tq.task'::regclass") ||
	fail "could not read the storage parameters of tq.task"
for t in full_notrig full_trig; do
	q "$db" "CREATE SEQUENCE ${t}_id_seq" \
		"CREATE TABLE $t (LIKE tq.task INCLUDING ALL)${relopts:+ WITH ($relopts)}" \
		"ALTER TABLE $t ALTER COLUMN id SET DEFAULT nextval('${t}_id_seq')" \
		"ALTER SEQUENCE ${t}_id_seq OWNED BY $t.id" ||
		fail "could not create the full-shape copy $t of tq.task in $db"
done
q "$db" "DO \$\$
         DECLARE
             d text;
         BEGIN
             FOR d IN SELECT pg_get_triggerdef(oid) FROM pg_trigger
                       WHERE tgrelid = 'tq.task'::regclass AND NOT tgisinternal LOOP
                 EXECUTE regexp_replace(d, ' ON tq\.task ', ' ON public.full_trig ');
             END LOOP;
         END
         \$\$" || fail "could not copy the triggers of tq.task to full_trig in $db"
# The copies must have tq.task's shape: its columns (type, NOT NULL, whether
# there is a default), indexes (partial ones included, as definitions),
# constraints and triggers; full_notrig without the triggers.
shape()
{
	q "$db" "SELECT (SELECT string_agg(format('%s %s %s %s', attname, format_type(atttypid, atttypmod),
	                                            attnotnull, pg_get_expr(adbin, adrelid) IS NOT NULL), ', '
	                                     ORDER BY attnum)
	                   FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum
	                  WHERE attrelid = '$1'::regclass AND attnum > 0 AND NOT attisdropped)
	              || ' | ' ||
	             (SELECT string_agg(regexp_replace(pg_get_indexdef(indexrelid),
	                                               '^CREATE (UNIQUE )?INDEX \S+ ON \S+ USING ', '\1'), ', '
	                                ORDER BY 1)
	                FROM pg_index WHERE indrelid = '$1'::regclass)
	              || ' | ' ||
	             (SELECT string_agg(pg_get_constraintdef(oid), ', ' ORDER BY 1)
	                FROM pg_constraint WHERE conrelid = '$1'::regclass)
	              || ' | ' ||
	             (SELECT count(*) FROM pg_trigger WHERE tgrelid = '$1'::regclass AND NOT tgisinternal)"
}
task_shape=$(shape tq.task) || fail "could not read the shape of tq.task"
notrig_shape=$(shape full_notrig) || fail "could not read the shape of full_notrig"
trig_shape=$(shape full_trig) || fail "could not read the shape of full_trig"
logonly ""
logonly "tq.task:     $task_shape"
[ "$trig_shape" = "$task_shape" ] || fail "full_trig does not have the shape of tq.task: $trig_shape"
[ "$notrig_shape" = "${task_shape% | *} | 0" ] ||
	fail "full_notrig does not have the shape of tq.task without triggers: $notrig_shape"

declare -A submit16 submit16_cpu
for side in full_notrig full_trig worker tq_off plain; do
	clean "$db"
	label="submit, $submit_clients clients ($db)"
	n0=$(worker_notified)
	cpu0=$(server_cpu)
	case $side in
	full_*)
		before=$(q "$db" "SELECT count(*) FROM $side")
		pgb "$label, INSERT into $side" "$db" "$submit_clients" "$secs" "$benchdir/submit_full.sql" -D table="$side"
		done_n=$(($(q "$db" "SELECT count(*) FROM $side") - before))
		;;
	plain)
		before=$(plain_rows "$db")
		pgb "$label, INSERT into plain (reduced shape)" "$db" "$submit_clients" "$secs" "$benchdir/submit_floor.sql"
		done_n=$(($(plain_rows "$db") - before))
		;;
	worker | tq_off)
		worker_serves "$db" || fail "the background worker does not serve $db"
		before=$(tq_rows "$db")
		PGOPTIONS="-c tq.producer_notify=$([ "$side" = worker ] && echo on || echo off)" \
			pgb "$label, tq_submit, $([ "$side" = worker ] && echo 'wake-up by the worker' || echo 'no wake-up')" \
			"$db" "$submit_clients" "$secs" "$benchdir/submit_tq.sql"
		done_n=$(($(tq_rows "$db") - before))
		;;
	esac
	cpu1=$(server_cpu)
	[ "$done_n" -eq "$PB_XACTS" ] || fail "$label, $side: $PB_XACTS transactions but $done_n rows"
	n1=$(worker_notified)
	submit16_cpu[$side]=$(calc "($cpu1 - $cpu0) * 1000000 / $done_n")
	logonly "-> $side: $PB_TPS rows/s ($done_n rows); the worker sent $((n1 - n0)) tq_ready"
	logonly "-> server CPU $(calc "$cpu1 - $cpu0") s ($(fmt_ratio "$(calc "($cpu1 - $cpu0) / $secs / $(nproc)")") of the machine's for $secs s): ${submit16_cpu[$side]} us per row"
	if [ "$side" = worker ]; then
		[ "$n1" -gt "$n0" ] || fail "$label: the worker sent no tq_ready"
	elif [ "$side" = tq_off ] && [ "$n1" -ne "$n0" ]; then
		fail "$label, $side: the worker sent $((n1 - n0)) tq_ready with tq.producer_notify = off"
	fi
	submit16[$side]=$PB_TPS
done
fl=${submit16[full_notrig]}
ratio=$(calc "${submit16[worker]} / $fl")
row2 "tq_submit, $submit_clients clients, wake-up by worker" \
	"$(fmt_rate "${submit16[worker]}")" "$(fmt_rate "$fl")" "$(fmt_ratio "$ratio")" ">= 0.90 of full INSERT" \
	"$(met "$ratio" 0.90)"
row2 "  server CPU per row (us); ratio: INSERT / tq_submit" \
	"$(fmt_1 "${submit16_cpu[worker]}")" "$(fmt_1 "${submit16_cpu[full_notrig]}")" \
	"$(fmt_ratio "$(calc "${submit16_cpu[full_notrig]} / ${submit16_cpu[worker]}")")" "- (CPU cost)" -
row2 "  breakdown: full-shape INSERT + tq.task's triggers" \
	"$(fmt_rate "${submit16[full_trig]}")" "$(fmt_rate "$fl")" \
	"$(fmt_ratio "$(calc "${submit16[full_trig]} / $fl")")" "- (breakdown)" -
row2 "  breakdown: tq_submit (by worker) / (INSERT + triggers)" \
	"$(fmt_rate "${submit16[worker]}")" "$(fmt_rate "${submit16[full_trig]}")" \
	"$(fmt_ratio "$(calc "${submit16[worker]} / ${submit16[full_trig]}")")" "- (breakdown)" -
row2 "  breakdown: tq_submit, no wake-up" \
	"$(fmt_rate "${submit16[tq_off]}")" "$(fmt_rate "$fl")" \
	"$(fmt_ratio "$(calc "${submit16[tq_off]} / $fl")")" "- (breakdown)" -
row2 "  reference: reduced-shape INSERT (row 1's floor)" \
	"$(fmt_rate "${submit16[plain]}")" "$(fmt_rate "$fl")" \
	"$(fmt_ratio "$(calc "${submit16[plain]} / $fl")")" "- (reference)" -

row "wake-up latency, idle, by worker: p50/p99/max ms" "${lat_worker[0]}" - - "p99 <= 5 ms" "${lat_worker[1]}"
row "  same, NOTIFY in transaction (no worker)" "${lat_notify[0]}" - - "- (comparison)" -
row "delayed task, run_at to tq_ready: p50/p99/max ms" "${lat_delayed[0]}" - - "p99 <= 50 ms" "${lat_delayed[1]}"

# ---------------------------------------------------------------------------
# Row 2: tq_submit_many of 100 000 payloads in one call.  Both sides build
# the same 100 000 distinct payloads on the server; the time runs from before
# the statement to after its commit.

# timed DB SQL: prints the seconds SQL took, its commit included.
timed()
{
	psql -X -q -At -v ON_ERROR_STOP=1 -d "$1" <<-EOF
		SELECT clock_timestamp() AS t0 \gset
		\o /dev/null
		$2;
		\o
		SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz);
	EOF
}

db=bench_many
new_db "$db"
tq_many=()
floor_many=()
logonly ""
logonly "=== tq_submit_many of $many_n payloads vs INSERT ... SELECT of $many_n rows, 3 times each"
for i in 1 2 3; do
	clean "$db"
	t=$(timed "$db" "INSERT INTO plain (queue, payload)
	                 SELECT 'bench', jsonb_build_object('n', i) FROM generate_series(1, $many_n) i") ||
		fail "INSERT ... SELECT of $many_n rows failed"
	floor_many+=("$(calc "$many_n / $t")")
	logonly "floor $i: $t s, ${floor_many[-1]} rows/s"
	clean "$db"
	t=$(timed "$db" "SELECT tq_submit_many('bench',
	                     (SELECT array_agg(jsonb_build_object('n', i) ORDER BY i)
	                        FROM generate_series(1, $many_n) i))") ||
		fail "tq_submit_many of $many_n payloads failed"
	tq_many+=("$(calc "$many_n / $t")")
	logonly "tq    $i: $t s, ${tq_many[-1]} tasks/s"
done
[ "$(tq_ready "$db")" -eq $((3 * many_n)) ] || fail "tq_submit_many did not submit $((3 * many_n)) tasks"
[ "$(plain_rows "$db")" -eq $((3 * many_n)) ] || fail "INSERT ... SELECT did not insert $((3 * many_n)) rows"
tqm=$(median "${tq_many[@]}")
flm=$(median "${floor_many[@]}")
logonly "-> median: tq $tqm tasks/s, floor $flm rows/s"
row "tq_submit_many, 100 000 per call (median of 3)" "$(fmt_rate "$tqm")" "$(fmt_rate "$flm")" \
	"$(fmt_ratio "$(calc "$tqm / $flm")")" ">= 100000 tasks/s" "$(met "$tqm" 100000)"
drop_db "$db"

# ---------------------------------------------------------------------------
# Rows 3 and 4: lease + complete.

# cycle_run LABEL DB SIDE REPLENISH BATCH CLIENTS SECS SCRIPT
#	SIDE: floor (the plain table), or tq, fair or fair_mixed (tq's tables;
#	fair and fair_mixed are row 5's backlogs spread over tenants).
#	One pgbench run of a lease+complete script; sets DONE (tasks, or rows,
#	finished during the run), END_READY (backlog left), RATE (tasks/s:
#	pgbench's tps times the tasks finished per transaction) and CPU_US (the
#	server's CPU time per task finished, in microseconds).
DONE=0
END_READY=0
RATE=0
CPU_US=0
cycle_run()
{
	local label=$1 db=$2 side=$3 replenish=$4 batch=$5 clients=$6 t=$7 script=$8 before cpu0 cpu1
	if [ "$side" != floor ]; then
		before=$(tq_done "$db")
	elif [ "$replenish" = 1 ]; then
		before=$(plain_inserted "$db")
	else
		before=$(plain_rows "$db")
	fi
	logonly ""
	if [ "$side" != floor ]; then
		logonly "backlog before the run: $(tq_ready "$db") ready"
	else
		logonly "backlog before the run: $(plain_ready "$db") ready"
	fi
	cpu0=$(server_cpu)
	pgb "$label" "$db" "$clients" "$t" "$script" -D batch="$batch"
	cpu1=$(server_cpu)
	if [ "$side" != floor ]; then
		DONE=$(($(tq_done "$db") - before))
		END_READY=$(tq_ready "$db")
	elif [ "$replenish" = 1 ]; then
		DONE=$(($(plain_inserted "$db") - before))
		END_READY=$(plain_ready "$db")
	else
		DONE=$((before - $(plain_rows "$db")))
		END_READY=$(plain_ready "$db")
	fi
	RATE=$(calc "$PB_TPS * $DONE / $PB_XACTS")
	CPU_US=$(calc "($cpu1 - $cpu0) * 1000000 / ($DONE > 0 ? $DONE : 1)")
	logonly "-> $DONE finished in $PB_XACTS transactions (expected $((PB_XACTS * batch))), $END_READY left ready; $RATE tasks/s"
	logonly "-> server CPU $(calc "$cpu1 - $cpu0") s ($(fmt_ratio "$(calc "($cpu1 - $cpu0) / $t / $(nproc)")") of the machine's for $t s): $CPU_US us per task"
}

# measure_cycle DB SIDE BATCH CLIENTS REPLENISH BACKLOG LABEL
#	Measures one lease+complete configuration; sets RATE (tasks/s), CPU_US
#	(of the measured run) and VALID (1 or 0).  A warm-up run comes first.  Without REPLENISH (0),
#	the measured run starts on a backlog of 1.5 times what the warm-up's
#	pace finishes in the run (at least BACKLOG), and a run that still runs
#	dry is repeated on twice the backlog; with REPLENISH (1), the backlog
#	is BACKLOG and stays there.
VALID=0
measure_cycle()
{
	local db=$1 side=$2 batch=$3 clients=$4 replenish=$5 backlog=$6 label=$7
	local script need try
	if [ "$side" != floor ]; then
		if [ "$replenish" = 1 ]; then
			script=$benchdir/cycle_tq.sql
		elif [ "$batch" = 1 ]; then
			script=$benchdir/lease_tq_1.sql
		else
			script=$benchdir/lease_tq_n.sql
		fi
	else
		if [ "$replenish" = 1 ]; then
			script=$benchdir/cycle_floor.sql
		else
			script=$benchdir/lease_floor.sql
		fi
	fi

	# Warm-up: fills caches and plan caches, and tells how fast this goes.
	top_up "$db" "$side" "$backlog"
	clean "$db"
	cycle_run "$label, warm-up" "$db" "$side" "$replenish" "$batch" "$clients" "$warmup_secs" "$script"
	need=$backlog
	if [ "$replenish" = 0 ]; then
		need=$(awk "BEGIN { n = $RATE * $secs * 1.5 + 20000;
		                    printf \"%d\", (n > $backlog) ? n : $backlog }")
	fi

	for try in 1 2; do
		top_up "$db" "$side" "$need"
		clean "$db"
		cycle_run "$label$([ "$try" = 1 ] || echo ', again on a bigger backlog')" \
			"$db" "$side" "$replenish" "$batch" "$clients" "$secs" "$script"
		if [ "$DONE" -eq $((PB_XACTS * batch)) ] && [ "$END_READY" -gt 0 ]; then
			VALID=1
			return 0
		fi
		VALID=0
		if [ "$replenish" = 1 ]; then
			logonly "-> INVALID: some transactions found fewer than $batch ready tasks"
			return 0
		fi
		logonly "-> INVALID: the backlog ran dry; again on a backlog twice as big"
		need=$((need * 2))
	done
}

# cycle_row MEASUREMENT TQ_RATE TQ_VALID FLOOR_RATE FLOOR_VALID TARGET THRESHOLD
cycle_row()
{
	local m=$1 tr=$2 tv=$3 fr=$4 fv=$5 target=$6 thr=$7 ratio verdict
	ratio=$(calc "$tr / $fr")
	if [ "$tv" != 1 ] || [ "$fv" != 1 ]; then
		verdict=INVALID
	elif [ -n "$thr" ]; then
		verdict=$(met "$ratio" "$thr")
	else
		verdict=-
	fi
	row "$m" "$(fmt_rate "$tr")" "$(fmt_rate "$fr")" "$(fmt_ratio "$ratio")" "$target" "$verdict"
}

db=bench_lease
new_db "$db"
for batch in 1 50; do
	# The starting backlog only has to last through the warm-up.
	start=$((batch == 1 ? 100000 : 400000))
	measure_cycle "$db" floor "$batch" 4 0 "$start" "lease+complete, batch $batch, 4 clients, floor"
	fr=$RATE fv=$VALID
	measure_cycle "$db" tq "$batch" 4 0 "$start" "lease+complete, batch $batch, 4 clients, tq"
	tr=$RATE tv=$VALID tc=$CPU_US
	if [ "$batch" = 50 ]; then
		cycle_row "tq_lease+tq_complete, batch 50, 4 clients" "$tr" "$tv" "$fr" "$fv" ">= 0.70 of floor" 0.70
		batch50_floor=$fr batch50_valid=$fv
		single_rate=$tr single_valid=$tv single_cpu=$tc
	else
		cycle_row "tq_lease+tq_complete, batch 1, 4 clients" "$tr" "$tv" "$fr" "$fv" "-" ""
	fi
done

# ---------------------------------------------------------------------------
# Row 5: the batch-50 cycle on a backlog spread over many tenants, each with
# a policy row, right after the single-tenant figure above, in a database of
# its own (bench_lease stays for the synchronous_commit rows).

fdb=bench_fair
new_db "$fdb"
max_tenants=$(q "$fdb" "SELECT current_setting('tq.max_tenants')::integer") ||
	fail "could not read tq.max_tenants"
[ "$tenants" -le $((max_tenants - 100)) ] ||
	fail "TQ_BENCH_TENANTS=$tenants needs tq.max_tenants >= $((tenants + 100)); it is $max_tenants"
# fair_policies: the tenants' policy rows in queue bench of $fdb.
fair_policies()
{
	q "$fdb" "DO \$\$
	          BEGIN
	              FOR i IN 1 .. $tenants LOOP
	                  PERFORM tq_set_tenant('bench', 'tenant-' || i, weight => $fair_weight,
	                                        rate_per_sec => 1000, burst => 1000, concurrency => 100,
	                                        backlog_limit => 1000000);
	              END LOOP;
	          END
	          \$\$" || fail "could not set the policies of $tenants tenants in $fdb"
}
fair_policies
# fair_checks LABEL: logs, and sets FAIR_CHECK to, the checks of a fair run:
# nothing parked (no limit bound), and how many tenants have ready tasks
# and a shared entry each; FAIR_PARKED: the tasks parked.
FAIR_CHECK=
FAIR_PARKED=0
fair_checks()
{
	FAIR_PARKED=$(q "$fdb" "SELECT count(*) FROM tq.task WHERE state = 'paused'") ||
		fail "could not count the parked tasks of $fdb"
	FAIR_CHECK=$(q "$fdb" "SELECT format('%s parked, %s tenants with ready tasks, %s with a shared entry',
	                                     $FAIR_PARKED,
	                                     (SELECT count(DISTINCT tenant) FROM tq.task WHERE state = 'ready'),
	                                     (SELECT count(*) FROM tq_tenants WHERE tenant IS NOT NULL AND ready > 0))") ||
		fail "could not check the tenants of $fdb"
	logonly "-> $1: $FAIR_CHECK"
}

# fair_rows LABEL RATE VALID CPU_US: the row of a fair run and its CPU row.
fair_rows()
{
	local ratio verdict
	ratio=$(calc "$2 / $single_rate")
	if [ "$3$single_valid" != 11 ]; then
		verdict=INVALID
	elif [ "$FAIR_PARKED" != 0 ]; then
		verdict="INVALID (limit bound)"
	else
		verdict=$(met "$ratio" 0.80)
	fi
	row2 "$1" "$(fmt_rate "$2")" "$(fmt_rate "$single_rate")" "$(fmt_ratio "$ratio")" ">= 0.80 of no tenant" "$verdict"
	row2 "  server CPU per task (us); ratio: no tenant / tenants" \
		"$(fmt_1 "$4")" "$(fmt_1 "$single_cpu")" "$(fmt_ratio "$(calc "$single_cpu / $4")")" "- (CPU cost)" -
}

# Each tenant's backlog submitted by one call: in the table, a tenant's
# tasks lie together, while the fair order takes one task of each tenant in
# turn.
measure_cycle "$fdb" fair 50 4 0 400000 \
	"lease+complete, batch 50, 4 clients, $tenants tenants with policies, per-tenant backlog, tq"
fair_rate=$RATE fair_valid=$VALID fair_cpu=$CPU_US
fair_checks "per-tenant backlog"
fair_check=$FAIR_CHECK
fair_spread=$(q "$fdb" "SELECT format('%s tenants ran tasks; per unit of weight min %s, mean %s, max %s',
                                      count(*), min(r), round(avg(r), 2), max(r))
                          FROM (SELECT h.tenant, round((count(*) / min(p.weight))::numeric, 2) AS r
                                  FROM tq.history h JOIN tq.tenant p USING (queue, tenant)
                                 WHERE h.queue = 'bench' AND h.state = 'succeeded'
                                 GROUP BY h.tenant) s") ||
	fail "could not read the spread of the tasks over the tenants of $fdb"
logonly "-> tasks run (warm-up and measured run): $fair_spread"
fair_rows "tq_lease+tq_complete, $(thousands "$tenants") tenants, per-tenant backlog" \
	"$fair_rate" "$fair_valid" "$fair_cpu"

# The same tenants with a mixed backlog (single submits for random tenants,
# as from many producers at once).  The queue is dropped with its tasks and
# made again first, with the same policies: the table starts empty again
# (VACUUM truncates it), the tenants keep their shared entries (a new
# database would need as many new ones again, while the dropped database's
# entries, with live tasks, stay in use).
t0=$SECONDS
q "$fdb" "SELECT tq_drop_queue('bench', force => true)" "SELECT tq_create_queue('bench')" >/dev/null ||
	fail "could not make queue bench again in $fdb"
fair_policies
logonly ""
logonly "queue bench dropped with its tasks and made again, with the tenants' policies, in $((SECONDS - t0)) s"
measure_cycle "$fdb" fair_mixed 50 4 0 400000 \
	"lease+complete, batch 50, 4 clients, $tenants tenants with policies, mixed backlog, tq"
mixed_rate=$RATE mixed_valid=$VALID mixed_cpu=$CPU_US
fair_checks "mixed backlog"
mixed_check=$FAIR_CHECK
fair_rows "tq_lease+tq_complete, $(thousands "$tenants") tenants, mixed backlog" \
	"$mixed_rate" "$mixed_valid" "$mixed_cpu"
drop_db "$fdb"
if [ "${#sync_modes[@]}" -gt 1 ]; then
	# tq_complete sends a NOTIFY (tq_done) per task: see row 1.
	PGOPTIONS='-c synchronous_commit=on' measure_cycle "$db" floor 50 4 0 400000 \
		"lease+complete, batch 50, 4 clients, synchronous_commit on, floor"
	fr=$RATE fv=$VALID
	PGOPTIONS='-c synchronous_commit=on' measure_cycle "$db" tq 50 4 0 400000 \
		"lease+complete, batch 50, 4 clients, synchronous_commit on, tq"
	tr=$RATE tv=$VALID
	cycle_row "  same, synchronous_commit on" "$tr" "$tv" "$fr" "$fv" "-" ""
fi
drop_db "$db"

declare -A at
for backlog in 1000 1000000; do
	db=bench_backlog_$backlog
	new_db "$db"
	for side in floor tq; do
		measure_cycle "$db" "$side" 50 4 1 "$backlog" \
			"lease+complete+resubmit, batch 50, 4 clients, backlog $backlog, $side"
		at[$side,$backlog]=$RATE
		at[$side,$backlog,valid]=$VALID
	done
	drop_db "$db"
done
for backlog in 1000 1000000; do
	cycle_row "  same + resubmit, constant backlog $([ "$backlog" = 1000 ] && echo '1 000' || echo '1 000 000')" \
		"${at[tq,$backlog]}" "${at[tq,$backlog,valid]}" \
		"${at[floor,$backlog]}" "${at[floor,$backlog,valid]}" "-" ""
done
tq_scale=$(calc "${at[tq,1000000]} / ${at[tq,1000]}")
floor_scale=$(calc "${at[floor,1000000]} / ${at[floor,1000]}")
if [ "${at[tq,1000,valid]}${at[tq,1000000,valid]}" = 11 ]; then
	verdict=$(met "$tq_scale" "$(calc "1 / 1.5")")
else
	verdict=INVALID
fi
row "  rate at 1M backlog / rate at 1k backlog" "$(fmt_ratio "$tq_scale")" "$(fmt_ratio "$floor_scale")" \
	"-" ">= 0.67 (within 1.5x)" "$verdict"

# ---------------------------------------------------------------------------
# Row 6: rate limit accuracy.  The window runs from a server timestamp taken
# just before pgbench starts to one taken just after it ends; a task counts
# when its claim (started_at, the start of the leasing transaction) falls in
# the window.

rdb=bench_rate
new_db "$rdb"
q "$rdb" "SELECT tq_alter_queue('bench', rate_per_sec => $rate_limit, burst => $rate_burst)" >/dev/null ||
	fail "could not set the rate limit of queue bench in $rdb"
top_up "$rdb" tq "$rate_backlog"
clean "$rdb"
before=$(tq_done "$rdb")
t0=$(q "$rdb" "SELECT extract(epoch FROM clock_timestamp())")
pgb "rate limit $rate_limit/s, burst $rate_burst, batch $rate_batch, 4 clients" \
	"$rdb" 4 "$rate_secs" "$benchdir/lease_tq_n.sql" -D batch="$rate_batch"
t1=$(q "$rdb" "SELECT extract(epoch FROM clock_timestamp())")
done_n=$(($(tq_done "$rdb") - before))
started=$(q "$rdb" "SELECT count(*) FROM tq.history
                     WHERE queue = 'bench' AND started_at >= to_timestamp($t0) AND started_at < to_timestamp($t1)")
[ "$started" -eq "$done_n" ] ||
	fail "rate limit: $done_n tasks completed during the run but $started started in its window"
[ "$(q "$rdb" "SELECT count(*) FROM tq.task WHERE state <> 'ready'")" -eq 0 ] ||
	fail "rate limit: tasks left in a state other than ready"
rate_measured=$(calc "$started / ($t1 - $t0)")
# Tasks started in each whole second of the window.
per_sec=$(q "$rdb" "SELECT format('min %s, max %s over %s whole seconds', min(n), max(n), count(*))
                      FROM (SELECT count(*) AS n FROM tq.history
                             WHERE queue = 'bench'
                               AND started_at >= to_timestamp(ceil($t0)) AND started_at < to_timestamp(floor($t1))
                             GROUP BY date_trunc('second', started_at)) s")
rate_tps=$PB_TPS
logonly "-> $started tasks started in $(calc "$t1 - $t0") s: $rate_measured tasks/s; $PB_TPS leases/s"
logonly "-> tasks started per second: $per_sec"
row2 "rate limit $rate_limit/s (burst $rate_burst), 4 leasers, ${rate_secs} s (tasks/s)" \
	"$(fmt_1 "$rate_measured")" "$rate_limit" \
	"$(fmt_ratio "$(calc "$rate_measured / $rate_limit")")" "95 - 105 tasks/s" \
	"$(awk "BEGIN { print ($rate_measured >= 95 && $rate_measured <= 105) ? \"yes\" : \"no\" }")"
drop_db "$rdb"

# ---------------------------------------------------------------------------
# Row 8: tqd end to end (0.4.0).  100 000 tasks submitted in batches of
# 10 000 to a queue served with the noop handler, drained by one tqd and
# then (a new 100 000) by two; the time from starting the tqd processes to
# the queue's shared counters showing no live task (polled every 50 ms),
# after which all 100 000 must be in history as succeeded.  Reference:
# the batch-50 lease+complete floor of row 3 (the plain SKIP LOCKED cycle
# in SQL, 4 clients), measured earlier in this run.

tdb=bench_tqd
new_db "$tdb"
tqd_bin=$top/worker/tqd
[ -x "$tqd_bin" ] || fail "$tqd_bin is not built"
tqd_work=$(mktemp -d /tmp/tq-bench-tqd.XXXXXX)
cat >"$tqd_work/tqd.conf" <<CONF
[tqd]
conninfo = dbname=$tdb
slots = 500
lease_batch = 100
flush_interval = 5ms
log_level = warning

[queue:bench]
handler = noop
concurrency = 500
CONF
logonly ""
logonly "tqd configuration:"
logonly "$(cat "$tqd_work/tqd.conf")"
# submit_backlog QUEUE TOTAL: TOTAL tasks in 10 tq_submit_many calls.
submit_backlog()
{
	for i in $(seq 10); do
		q "$tdb" "SELECT cardinality(tq_submit_many('$1', array_fill('{\"n\":1}'::jsonb, ARRAY[$(($2 / 10))])))" \
			>/dev/null || fail "could not submit to $tdb"
	done
	clean "$tdb"
}
# wait_drained QUEUE WHAT: waits until QUEUE has no live task.  Polls the
# shared counters (a constant-time read): counting history every 50 ms
# took a tenth of a core from the server being measured.
wait_drained()
{
	local deadline=$((SECONDS + 300))
	until [ "$(q "$tdb" "SELECT scheduled + ready + paused + running FROM tq_queue_stats WHERE queue = '$1'")" -eq 0 ]; do
		[ $SECONDS -lt $deadline ] || fail "$2: tasks still live after 300 s"
		sleep 0.05
	done
}
# tqd_drain N: starts N tqd on the backlog, waits until it is drained;
# sets TQD_RATE (tasks/s).
TQD_RATE=0
tqd_drain()
{
	local n=$1 total=100000 before pids=() i t0 t1 done_n
	before=$(tq_done "$tdb")
	submit_backlog bench "$total"
	t0=$(date +%s.%N)
	for i in $(seq "$n"); do
		"$tqd_bin" -c "$tqd_work/tqd.conf" 2>>"$tqd_work/tqd-$n-$i.log" &
		pids+=($!)
	done
	wait_drained bench "tqd x$n"
	t1=$(date +%s.%N)
	done_n=$(($(tq_done "$tdb") - before))
	[ "$done_n" -eq "$total" ] || fail "tqd x$n: $done_n of $total tasks succeeded"
	kill -TERM "${pids[@]}"
	for i in "${pids[@]}"; do
		wait "$i" || fail "tqd x$n exited with an error; see $tqd_work"
	done
	TQD_RATE=$(calc "$total / ($t1 - $t0)")
	logonly "-> tqd x$n: $total tasks in $(calc "$t1 - $t0") s: $TQD_RATE tasks/s"
}
tqd_drain 1
tqd1=$TQD_RATE
tqd_drain 2
tqd2=$TQD_RATE
for n in 1 2; do
	r=$([ "$n" = 1 ] && echo "$tqd1" || echo "$tqd2")
	row2 "tqd end to end, noop, 100 000 tasks, $n tqd" "$(fmt_rate "$r")" "$(fmt_rate "$batch50_floor")" \
		"$(fmt_ratio "$(calc "$r / $batch50_floor")")" ">= 0.80 of batched floor" \
		"$([ "$batch50_valid" = 1 ] && met "$(calc "$r / $batch50_floor")" 0.80 || echo INVALID)"
done
# Submit-to-start latency with idle workers: one tqd idle on the empty
# queue, then pgbench submits single tasks at 100/s for lat_tqd_secs; each
# task's latency is started_at (the claim's transaction start, server
# clock) minus submitted_at (the submit's transaction start): the commit,
# its tq_ready (sent by the submitting transaction here: the background
# worker serves another database), tqd's LISTEN wake-up and its lease.
# With the noop handler nothing runs in between; an exec handler adds its
# fork and exec.
tqd_lat_secs=${TQ_BENCH_TQD_LAT_SECS:-10}
"$tqd_bin" -c "$tqd_work/tqd.conf" 2>>"$tqd_work/tqd-latency.log" &
lat_pid=$!
before=$(tq_done "$tdb")
deadline=$((SECONDS + 30))
until [ "$(q "$tdb" "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tqd' AND state = 'idle'")" -ge 2 ]; do
	[ $SECONDS -lt $deadline ] || fail "tqd did not connect within 30 s"
	sleep 0.05
done
logonly "\$ pgbench -n -c 1 -R 100 -T $tqd_lat_secs -f ${benchdir#"$top"/}/submit_tq.sql $tdb"
pgbench -n -c 1 -R 100 -T "$tqd_lat_secs" -f "$benchdir/submit_tq.sql" "$tdb" >>"$log" 2>&1 ||
	fail "pgbench at 100 submits/s failed"
deadline=$((SECONDS + 30))
until [ "$(q "$tdb" "SELECT count(*) FROM tq.task")" -eq 0 ]; do
	[ $SECONDS -lt $deadline ] || fail "tqd left tasks undone after the latency run"
	sleep 0.1
done
kill -TERM "$lat_pid"
wait "$lat_pid" || fail "tqd (latency run) exited with an error"
tqd_lat=$(q "$tdb" "WITH l AS (SELECT extract(epoch FROM started_at - submitted_at) * 1000 AS ms
                                 FROM tq.history WHERE queue = 'bench' ORDER BY id OFFSET $before)
                   SELECT format('%s/%s/%s|%s|%s', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2),
                                 round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 2),
                                 round(max(ms)::numeric, 2),
                                 round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 2), count(*))
                     FROM l")
IFS='|' read -r tqd_lat_s tqd_p99 tqd_lat_n <<<"$tqd_lat"
logonly "-> submit to start, $tqd_lat_n tasks at 100/s: p50/p99/max $tqd_lat_s ms"
row2 "tqd submit-to-start latency, 100 tasks/s, idle: p50/p99/max ms" "$tqd_lat_s" "-" "-" \
	"p99 <= 5 ms" "$(awk "BEGIN { print ($tqd_p99 <= 5) ? \"yes\" : \"no\" }")"

# Resident memory of tqd with 1 000 exec tasks running at once (each a
# sleep 30 of coreutils), read from /proc once all 1 000 run; then SIGINT
# stops them at once and hands the tasks back.
cat >"$tqd_work/tqd-rss.conf" <<CONF
[tqd]
conninfo = dbname=$tdb
slots = 1000
lease_batch = 200
log_level = warning

[queue:sleepers]
handler = exec
command = /bin/sleep 30
concurrency = 1000
CONF
q "$tdb" "SELECT tq_create_queue('sleepers')" >/dev/null
q "$tdb" "SELECT cardinality(tq_submit_many('sleepers', array_fill('{}'::jsonb, ARRAY[1000])))" >/dev/null
"$tqd_bin" -c "$tqd_work/tqd-rss.conf" 2>>"$tqd_work/tqd-rss.log" &
rss_pid=$!
deadline=$((SECONDS + 60))
until [ "$(q "$tdb" "SELECT count(*) FROM tq.task WHERE queue = 'sleepers' AND state = 'running'")" -eq 1000 ]; do
	[ $SECONDS -lt $deadline ] || fail "tqd did not get 1 000 exec tasks running within 60 s"
	sleep 0.2
done
# The programs are forked as their leases come back: wait for all of them.
until [ "$(pgrep -c -P "$rss_pid" || true)" -ge 1000 ]; do
	[ $SECONDS -lt $deadline ] || fail "tqd did not start 1 000 programs within 60 s"
	sleep 0.1
done
children=$(pgrep -c -P "$rss_pid" || true)
rss_kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$rss_pid/status")
logonly "-> tqd with 1 000 exec tasks running: VmRSS $rss_kb kB, $children child processes"
kill -INT "$rss_pid"
wait "$rss_pid" || fail "tqd (memory run) exited with an error"
row2 "tqd resident memory, 1 000 exec tasks running (MB)" "$(fmt_1 "$(calc "$rss_kb / 1024")")" "-" "-" "- (reported)" "-"

# Row 9: push mode (0.5.0).  The test server on loopback answers /ok at
# once (no capacity limit); 50 000 tasks submitted as in row 8, drained by
# one tqd whose queue uses the http handler with concurrency 64: once with
# the window fixed (adaptive = off), once adaptive from its defaults
# (initial 4, slow start per aimd_interval, 1 s).  Reference: row 8's noop
# figure with one tqd.  Then the convergence trace: a server of capacity
# 20 taking 50 ms per request, 6 000 tasks, status lines every 500 ms.
httpd_bin=$top/worker/test/tqtest_httpd
[ -x "$httpd_bin" ] || fail "$httpd_bin is not built (make -C worker test/tqtest_httpd)"
# start_httpd NAME ARGS...: starts the server, sets HTTPD_PORT and HTTPD_PID.
start_httpd()
{
	local name=$1 deadline
	shift
	"$httpd_bin" --port 0 "$@" >"$tqd_work/httpd-$name.out" 2>&1 &
	HTTPD_PID=$!
	deadline=$((SECONDS + 10))
	until grep -q 'listening port=' "$tqd_work/httpd-$name.out" 2>/dev/null; do
		[ $SECONDS -lt $deadline ] || fail "the test HTTP server did not start"
		sleep 0.05
	done
	HTTPD_PORT=$(sed -n 's/^listening port=//p' "$tqd_work/httpd-$name.out")
}
# push_conf FILE PORT EXTRA [LEVEL]: a tqd configuration with one http
# queue (EXTRA: more keys for it), logging at LEVEL (warning).
push_conf()
{
	cat >"$1" <<CONF
[tqd]
conninfo = dbname=$tdb
slots = 500
lease_batch = 100
flush_interval = 5ms
log_level = ${4:-warning}
status_interval = 500ms

[queue:push]
handler = http
url = http://127.0.0.1:$2/ok
concurrency = 64
$3
CONF
}
# push_drain CONF TOTAL: drains TOTAL tasks of queue push with one tqd;
# sets PUSH_RATE and PUSH_CPU (tqd's CPU µs per task).
push_drain()
{
	local conf=$1 total=$2 pid t0 t1 done_n before
	before=$(q "$tdb" "SELECT count(*) FROM tq.history WHERE queue = 'push' AND state = 'succeeded'")
	submit_backlog push "$total"
	t0=$(date +%s.%N)
	"$tqd_bin" -c "$conf" 2>>"$conf.log" &
	pid=$!
	wait_drained push push
	t1=$(date +%s.%N)
	PUSH_CPU=$(awk -v n="$total" '{ printf "%.1f", ($14 + $15) * 10000 / n }' "/proc/$pid/stat")
	kill -TERM "$pid"
	wait "$pid" || fail "tqd (push) exited with an error; see $conf.log"
	done_n=$(($(q "$tdb" "SELECT count(*) FROM tq.history WHERE queue = 'push' AND state = 'succeeded'") - before))
	[ "$done_n" -eq "$total" ] || fail "push: $done_n of $total tasks succeeded"
	PUSH_RATE=$(calc "$total / ($t1 - $t0)")
	logonly "-> push ($conf): $total tasks in $(calc "$t1 - $t0") s: $PUSH_RATE tasks/s, tqd CPU $PUSH_CPU us/task"
}
q "$tdb" "SELECT tq_create_queue('push', backoff_base => '50 ms', backoff_cap => '500 ms')" >/dev/null
start_httpd fast
fast_pid=$HTTPD_PID
push_conf "$tqd_work/push-fixed.conf" "$HTTPD_PORT" "adaptive = off"
push_conf "$tqd_work/push-aimd.conf" "$HTTPD_PORT" ""
logonly "tqd configuration (push, fixed window):"
logonly "$(cat "$tqd_work/push-fixed.conf")"
push_drain "$tqd_work/push-fixed.conf" 50000
push_fixed=$PUSH_RATE
push_fixed_cpu=$PUSH_CPU
push_drain "$tqd_work/push-aimd.conf" 50000
push_aimd=$PUSH_RATE
push_aimd_cpu=$PUSH_CPU
kill -TERM "$fast_pid"
wait "$fast_pid" || true
row2 "tqd push (http), 50 000 tasks, window fixed at 64" "$(fmt_rate "$push_fixed")" "$(fmt_rate "$tqd1")" \
	"$(fmt_ratio "$(calc "$push_fixed / $tqd1")")" "- (reported; ref: noop, 1 tqd)" "-"
row2 "tqd push (http), 50 000 tasks, adaptive (defaults)" "$(fmt_rate "$push_aimd")" "$(fmt_rate "$tqd1")" \
	"$(fmt_ratio "$(calc "$push_aimd / $tqd1")")" "- (reported; ref: noop, 1 tqd)" "-"

# The convergence trace: the window from the status lines, per 500 ms.
start_httpd capped --capacity 20 --delay-ms 50 --log "$tqd_work/capped.log"
capped_pid=$HTTPD_PID
for f in 0.5 0.75; do
	push_conf "$tqd_work/push-cap-$f.conf" "$HTTPD_PORT" "aimd_decrease = $f" info
	push_drain "$tqd_work/push-cap-$f.conf" 6000
done
kill -TERM "$capped_pid"
wait "$capped_pid" || true
# trace F: "t window answers throttled" per status line while work was there.
trace()
{
	awk '/msg="endpoint status"/ {
		for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
		if (v["answers"] > 0 || v["in_flight"] > 0) { n++; printf "%.1f %s %s %s %s\n", n * 0.5, v["window"], v["answers"], v["throttled"], v["cuts"] }
	}' "$tqd_work/push-cap-$1.conf.log"
}
trace 0.5 >"$tqd_work/trace-0.5"
trace 0.75 >"$tqd_work/trace-0.75"
# summary F: mean and range of the window after the first cut, throttled share after it.
summary()
{
	awk '$5 > 0 { n++; s += $2; if (min == "" || $2 < min) min = $2; if ($2 > max) max = $2; a += $3; t += $4 }
		END { printf "window after the first cut: mean %.1f, range %.2f-%.2f; throttled %.1f%% of %d answers", s / n, min, max, 100 * t / a, a }' \
		"$tqd_work/trace-$1"
}
conv_05=$(summary 0.5)
conv_075=$(summary 0.75)
logonly "-> convergence, decrease 0.5: $conv_05"
logonly "-> convergence, decrease 0.75: $conv_075"
trace_05=$results/push-trace-0.5.txt
trace_075=$results/push-trace-0.75.txt
cp "$tqd_work/trace-0.5" "$trace_05"
cp "$tqd_work/trace-0.75" "$trace_075"

rm -rf "$tqd_work"
drop_db "$tdb"

# ---------------------------------------------------------------------------
# Rows 10 and 11 (observability.sh, which says what they measure), unless
# TQ_BENCH_ONLY leaves them out.

obs_rows

# ---------------------------------------------------------------------------

say ""
print_table
say ""
say "fair dispatch and limits (0.3.0), tqd (0.4.0):"
print_table rows2 measured reference ratio
say ""
say "tasks/s and rows/s: finished tasks (rows) per second of pgbench run time; tq/floor: their ratio."
say "floor beside \"wake-up by worker\": measured in $worker_db, the worker's database; the other submit floors in bench_submit."
say "latencies: ms from sending tq_submit (or from run_at) to a LISTENing session receiving tq_ready; $lat_n submits, $delay_n delayed tasks."
say "second table: tasks/s (rows/s) or, for the rate limit, tasks started per second; reference: the figure the ratio divides by."
say "fair: lease+complete, batch 50, 4 clients; $(thousands "$tenants") tenants of weights 1-4, each with rate 1000/s, burst 1000,"
say "      concurrency 100, backlog_limit 1e6; reference: row 3's tq (tasks without a tenant)."
say "      per-tenant backlog: one tq_submit_many per tenant, tasks per unit of weight alike; after the run:"
say "      $fair_check; $fair_spread."
say "      mixed backlog: tq_submit of one task for a random tenant, 8 clients, into the queue dropped and made again;"
say "      after the run: $mixed_check."
say "CPU cost: the server's CPU time (postmaster and children, /proc) per task or row; ratio: reference / measured."
say "rate: $started tasks started in a $(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }") s window ($rate_tps lease calls/s); per whole second: $per_sec."
say "submits at $submit_clients clients: in $worker_db; reference: INSERT into a copy of tq.task (LIKE ... INCLUDING ALL, no triggers), $submit_clients clients."
say "push: tqd's CPU per task $push_fixed_cpu us (fixed), $push_aimd_cpu us (adaptive); noop's is in the log."
say ""
say "push mode, adaptive window against a server of capacity 20 (429 above it, 50 ms per request), 6 000 tasks:"
say "  aimd_decrease 0.5 (default): $conv_05"
say "  aimd_decrease 0.75:          $conv_075"
say "  t (s)   window (0.5)  throttled/answers   window (0.75)  throttled/answers   (answers per 0.5 s; one row per second)"
paste -d' ' <(awk '{ printf "%s %s %s/%s\n", $1, $2, $4, $3 }' "$trace_05") <(awk '{ printf "%s %s/%s\n", $2, $4, $3 }' "$trace_075") |
	awk 'NR % 2 == 1 { printf "  %5s   %12s  %17s   %13s  %17s\n", $1, $2, $3, $4, $5 }' | head -40 | tee -a "$log"
if [ "${#rows3[@]}" -gt 0 ]; then
	say ""
	obs_print
fi
say "load average at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores: other work on the machine is noise)."
save_server_log
say "raw pgbench output: $log"
