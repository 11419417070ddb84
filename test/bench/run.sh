#!/usr/bin/env bash
# The tq benchmark: one table from one run, each tq figure beside its floor
# measured in the same run on the same server (DESIGN.md §8, issue 2
# "Performance").  Run by `make bench` after `make install`; as root or as
# an ordinary user.
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
#      synchronous_commit = off and again at synchronous_commit = on (both
#      sides), where NOTIFY's commit lock covers the WAL flush.
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
#      Batch 50 also at synchronous_commit = on (tq_complete notifies).
#   4. the batch-50 cycle at a constant backlog of 1 000 and of 1 000 000
#      ready tasks: every transaction submits back as many tasks as it
#      completed (floor: inserts back as many rows as it deleted).
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
#   TQ_BENCH_SECS   seconds per measured pgbench run, default 12
#   TQ_BENCH_SYNC=0 skip the synchronous_commit = on rows
#   TQ_BENCH_LAT_N  measured submits of the wake-up latency, default 500
#   TQ_BENCH_DELAY_N  delayed tasks of the delayed-task latency, default 200
#   TQ_TEST_KEEP=1  keep the cluster directory afterwards (test/cluster.sh)
#
# The raw pgbench output and the derived figures of every run go to a log
# under test/results/bench/, whose path is printed.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$top"
benchdir=$top/test/bench

# shellcheck source=test/cluster.sh
. "$top/test/cluster.sh"

secs=${TQ_BENCH_SECS:-12}
port=${TQ_BENCH_PORT:-54700}
lat_n=${TQ_BENCH_LAT_N:-500}
delay_n=${TQ_BENCH_DELAY_N:-200}
for v in "TQ_BENCH_SECS=$secs" "TQ_BENCH_PORT=$port" "TQ_BENCH_LAT_N=$lat_n" "TQ_BENCH_DELAY_N=$delay_n"; do
	case ${v#*=} in
	'' | *[!0-9]* | 0*)
		echo "bench: ${v%%=*} must be a positive integer, not \"${v#*=}\"" >&2
		exit 2
		;;
	esac
done
warmup_secs=3
# Row 1, and the batch-50 lease+complete of row 3, are also measured at
# synchronous_commit = on unless TQ_BENCH_SYNC=0.
if [ "${TQ_BENCH_SYNC:-1}" = 0 ]; then
	sync_modes=(off)
else
	sync_modes=(off on)
fi
many_n=100000
# The database the background worker serves (tq.database, below).
worker_db=bench_worker
# Wake-up latency: warm-up submits (dropped), then lat_n, one every
# lat_spacing ms.  Delayed tasks: run_at offsets (ms), taken in turn.
lat_warmup=20
lat_spacing=20
delay_offsets=100,10,100,50,100,250,100,500

results=$top/test/results/bench
mkdir -p "$results"
log=$results/bench-$(date +%Y%m%d-%H%M%S).log
: >"$log"

# Server settings for a 2-core / 24 GiB machine.  Appended after
# cluster.sh's own lines, so these win.  Durability: fsync and
# full_page_writes stay on; synchronous_commit is off, which applies to tq
# and to the floor alike.
bench_conf="
# Added by test/bench/run.sh.
fsync = on
full_page_writes = on
synchronous_commit = off
shared_buffers = 2GB
effective_cache_size = 16GB
work_mem = 32MB
maintenance_work_mem = 1GB
wal_buffers = 64MB
max_wal_size = 16GB
min_wal_size = 1GB
checkpoint_timeout = 30min
autovacuum_naptime = 10s
jit = off
log_min_messages = warning
tq.database = '$worker_db'
"
shown_settings="server_version fsync synchronous_commit full_page_writes wal_level
shared_buffers effective_cache_size work_mem maintenance_work_mem wal_buffers
max_wal_size checkpoint_timeout autovacuum autovacuum_naptime jit max_connections
shared_preload_libraries tq.producer_notify tq.maintenance_interval tq.database
tq.notify_interval tq.worker_min_interval tq.worker_naptime"

say() { printf '%s\n' "$*" | tee -a "$log"; }
logonly() { printf '%s\n' "$*" >>"$log"; }

# Copies the server log next to the bench log (the cluster directory goes
# away when the cluster stops).
save_server_log()
{
	if [ -n "${tq_cluster_logfile:-}" ] && [ -f "$tq_cluster_logfile" ]; then
		cp "$tq_cluster_logfile" "${log%.log}.server.log" 2>/dev/null || true
	fi
}

fail()
{
	echo "bench: $*" | tee -a "$log" >&2
	save_server_log
	if [ -n "${tq_cluster_logfile:-}" ] && [ -f "$tq_cluster_logfile" ]; then
		echo "bench: last lines of the server log:" >&2
		tail -n 20 "$tq_cluster_logfile" >&2 || true
	fi
	echo "bench: log: $log" >&2
	exit 1
}

# q DB SQL...: runs each SQL in DB, prints the unaligned result.
q()
{
	local db=$1 args=() s
	shift
	for s in "$@"; do
		args+=(-c "$s")
	done
	psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" "${args[@]}"
}

# clean DB: VACUUM ANALYZE the database, then CHECKPOINT, so that every
# measured run starts without dead tuples, with fresh statistics and with
# no checkpoint pending.
clean()
{
	q "$1" 'VACUUM ANALYZE' 'CHECKPOINT' || fail "VACUUM ANALYZE of $1 failed"
}

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

drop_db()
{
	q postgres 'SET client_min_messages = warning' "DROP DATABASE IF EXISTS $1" || fail "could not drop database $1"
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

# top_up DB SIDE N: brings the ready backlog of SIDE (tq or floor) up to N,
# tq through tq_submit_many in chunks of 100 000.
top_up()
{
	local db=$1 side=$2 want=$3 have n
	if [ "$side" = tq ]; then
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

# calc EXPR: floating-point arithmetic.
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

# ---------------------------------------------------------------------------
# The result table.

rows=()

# row MEASUREMENT TQ FLOOR RATIO TARGET MET
row() { rows+=("$(printf '%s|%s|%s|%s|%s|%s' "$@")"); }

fmt_rate() { awk "BEGIN { printf \"%.0f\", $1 }"; }
fmt_ratio() { awk "BEGIN { printf \"%.2f\", $1 }"; }

# met VALUE THRESHOLD: yes when VALUE >= THRESHOLD.
met() { awk "BEGIN { print ($1 >= $2) ? \"yes\" : \"no\" }"; }

print_table()
{
	local r fmt='%-59s | %15s | %14s | %8s | %-22s | %s\n'
	# shellcheck disable=SC2059
	{
		printf "$fmt" measurement 'tq (tasks/s)' 'floor (rows/s)' tq/floor target 'met?'
		printf '%s\n' "$(printf '%.0s-' {1..140})"
		for r in "${rows[@]}"; do
			IFS='|' read -r m a b c d e <<<"$r"
			printf "$fmt" "$m" "$a" "$b" "$c" "$d" "$e"
		done
	} | tee -a "$log"
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

TQ_TEST_PORT=$port TQ_TEST_CONF=$bench_conf tq_cluster_start ||
	fail "could not start the benchmark cluster on port $port"
# shellcheck disable=SC2154	# set by tq_cluster_start
logonly "cluster: $tq_cluster_dir, port $port"

# worker_serves DB: true when the background worker runs, connected to DB.
worker_serves()
{
	[ "$(q "$worker_db" "SELECT coalesce(running AND database = (SELECT oid FROM pg_database
	                                                              WHERE datname = '$1'), false)
	                       FROM tq_worker_status()")" = t ]
}
# tq_ready notifications the background worker has sent so far.
worker_notified() { q "$worker_db" "SELECT notifications FROM tq_worker_status()"; }

say "tq benchmark: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), log: $log"
say "machine: nproc $(nproc), $(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
say "server: $(q postgres 'SELECT version()')"
say "$(pgbench --version)"
settings_sql="SELECT string_agg(name || ' = ' || current_setting(name), ', ' ORDER BY ord)
                FROM unnest(string_to_array(\$\$$(tr '\n' ' ' <<<"$shown_settings")\$\$, ' '))
                     WITH ORDINALITY AS s(name, ord)
               WHERE name <> ''"
say "settings: $(q postgres "$settings_sql" | fold -s -w 110 | sed '2,$s/^/          /')"
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
# then, unless TQ_BENCH_SYNC=0, again at synchronous_commit = on for tq and
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
				target=">= 0.90 (issue 3)"
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
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
tqm=$(median "${tq_many[@]}")
flm=$(median "${floor_many[@]}")
logonly "-> median: tq $tqm tasks/s, floor $flm rows/s"
row "tq_submit_many, 100 000 per call (median of 3)" "$(fmt_rate "$tqm")" "$(fmt_rate "$flm")" \
	"$(fmt_ratio "$(calc "$tqm / $flm")")" ">= 100000 tasks/s" "$(met "$tqm" 100000)"
drop_db "$db"

# ---------------------------------------------------------------------------
# Rows 3 and 4: lease + complete.

# cycle_run LABEL DB SIDE REPLENISH BATCH CLIENTS SECS SCRIPT
#	One pgbench run of a lease+complete script; sets DONE (tasks, or rows,
#	finished during the run), END_READY (backlog left) and RATE (tasks/s:
#	pgbench's tps times the tasks finished per transaction).
DONE=0
END_READY=0
RATE=0
cycle_run()
{
	local label=$1 db=$2 side=$3 replenish=$4 batch=$5 clients=$6 t=$7 script=$8 before
	if [ "$side" = tq ]; then
		before=$(tq_done "$db")
	elif [ "$replenish" = 1 ]; then
		before=$(plain_inserted "$db")
	else
		before=$(plain_rows "$db")
	fi
	logonly ""
	if [ "$side" = tq ]; then
		logonly "backlog before the run: $(tq_ready "$db") ready"
	else
		logonly "backlog before the run: $(plain_ready "$db") ready"
	fi
	pgb "$label" "$db" "$clients" "$t" "$script" -D batch="$batch"
	if [ "$side" = tq ]; then
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
	logonly "-> $DONE finished in $PB_XACTS transactions (expected $((PB_XACTS * batch))), $END_READY left ready; $RATE tasks/s"
}

# measure_cycle DB SIDE BATCH CLIENTS REPLENISH BACKLOG LABEL
#	Measures one lease+complete configuration; sets RATE (tasks/s) and
#	VALID (1 or 0).  A warm-up run comes first.  Without REPLENISH (0),
#	the measured run starts on a backlog of 1.5 times what the warm-up's
#	pace finishes in the run (at least BACKLOG), and a run that still runs
#	dry is repeated on twice the backlog; with REPLENISH (1), the backlog
#	is BACKLOG and stays there.
VALID=0
measure_cycle()
{
	local db=$1 side=$2 batch=$3 clients=$4 replenish=$5 backlog=$6 label=$7
	local script need try
	if [ "$side" = tq ]; then
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
	tr=$RATE tv=$VALID
	if [ "$batch" = 50 ]; then
		cycle_row "tq_lease+tq_complete, batch 50, 4 clients" "$tr" "$tv" "$fr" "$fv" ">= 0.70 of floor" 0.70
	else
		cycle_row "tq_lease+tq_complete, batch 1, 4 clients" "$tr" "$tv" "$fr" "$fv" "-" ""
	fi
done
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

say ""
print_table
say ""
say "tasks/s and rows/s: finished tasks (rows) per second of pgbench run time; tq/floor: their ratio."
say "floor beside \"wake-up by worker\": measured in $worker_db, the worker's database; the other submit floors in bench_submit."
say "latencies: ms from sending tq_submit (or from run_at) to a LISTENing session receiving tq_ready; $lat_n submits, $delay_n delayed tasks."
save_server_log
say "raw pgbench output: $log"
