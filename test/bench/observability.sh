#!/usr/bin/env bash
# Rows 10 and 11 of the tq benchmark: the cost of observability (the
# targets: the stats views answer in under 10 ms on a queue with
# 10 000 000 finished and 1 000 000 ready tasks, and maintaining the
# counters and traces costs at most 10 % of the end-to-end rate).
#
# `make bench` (test/bench/run.sh) sources this file and runs both rows
# at its end, in its cluster, and prints them as its third table.  Run
# alone, it starts a cluster of its own with the same settings (lib.sh)
# and runs the rows TQ_BENCH_ONLY selects (10, 11 or both):
#
#   TQ_BENCH_ONLY=10 TQ_BENCH_PORT=54720 test/bench/observability.sh
#
# (run.sh with TQ_BENCH_ONLY=10,11 comes here too.)  Row 11 is measured
# before row 10, so that nothing of row 10's load (its writes, its
# autovacuum) is still going on during row 11's runs.
#
# Row 10, the reads a user or a dashboard makes, at scale.  Database
# bench_stats with the extension at TQ_BENCH_OBS_NEW_VERSION, one queue
# "big" (max_attempts 5, retention 7 days, so daily history partitions)
# holding:
#   - TQ_BENCH_BIG_FINISHED finished tasks in tq.history, finished evenly
#     over the last 7 days, in the daily partitions the maintenance would
#     have made day by day (made here as tq.ensure_partitions makes them:
#     tq.index_history_leaf, ATTACH, a tq.history_part row).  Task i:
#     dead if i % 100 = 0 (1 %: 5 attempts, a trace of the 4 failed ones,
#     a log of 5 lines, as tqd's http handler writes them); cancelled if
#     i % 200 = 1 (0.5 %); expired if i % 1000 = 3 (0.1 %); succeeded at
#     its second attempt with a trace of the first if i % 100 is 5, 6 or 7
#     (3 %); succeeded at the first the rest.  Written by INSERT ...
#     SELECT generate_series into tq.history (routed to the partitions),
#     ids from 1 up, then tq.task_id_seq set past them.
#   - TQ_BENCH_BIG_READY ready tasks over TQ_BENCH_BIG_TENANTS tenants,
#     submitted through tq_submit_many, one call per tenant, so that the
#     tq.task trigger keeps the shared-memory counts as it does for any
#     submit.
# Then VACUUM ANALYZE and CHECKPOINT, as a production table would have had
# them; the load's time is logged, and the sizes are checked against
# tq_queue_stats_exact (which counts the rows), tq_queue_stats and
# tq_tenants.  Each read is timed TQ_BENCH_STATS_N times after 5 warm-ups,
# in one session, on the server (test/bench/stats_time.sql: each a
# dynamic EXECUTE, planned each time, every row fetched); p50/p95/max in
# ms, met when the p95 is under 10 ms.  The reads: tq_queue_stats,
# tq_queue_activity, tq_tenants, tq_queues, the 50 newest dead tasks
# (tq_dead ORDER BY finished_at DESC LIMIT 50), the dead count per queue
# (tq_dead GROUP BY queue) and of all queues, and for a task looked up by
# id: tq_task (random ids in history), tq_task_trace and tq_task_log
# (random dead tasks); and, without a target, tq_queue_stats_exact
# (3 times after 1 warm-up), which counts the tables.  A read that misses
# the target gets its EXPLAIN (ANALYZE, BUFFERS) in the log.  Then the
# dashboard's two database answers through a tqd serving it (dashboard =
# on): GET /api/queues and GET /api/task?id= of random dead tasks,
# TQ_BENCH_STATS_N times each after 5 warm-ups, timed by curl on loopback
# (request sent to last byte), same target.
#
# Row 11, the cost of the counters and traces end to end: the same tqd
# (worker/tqd) and the same shared library on two databases, one with
# the extension at TQ_BENCH_OBS_OLD_VERSION (0.4.0: no traces, no
# per-minute finish counters, no tq_wait notes) and one at
# TQ_BENCH_OBS_NEW_VERSION, alternating old, new, old, new ...
# (TQ_BENCH_OBS_ROUNDS of each), in two workloads:
#   - noop: TQ_BENCH_OBS_N tasks drained by one tqd with the noop handler,
#     configured as row 8 (500 slots, leases of 100, outcomes flushed every
#     5 ms).  Tasks that succeed at their first attempt store no trace
#     (the last attempt is the row itself): what remains is the finish
#     counters and notes.
#   - fail once: TQ_BENCH_OBS_FAIL_N tasks through the http handler
#     (window fixed at 64, poll_interval 100 ms) to the test server
#     (worker/test/tqtest_httpd), path /flaky?code=500&times=1&retry_after=0:
#     each task's first attempt gets 500 with Retry-After: 0, so tqd
#     reports it failed (tq_fail, retry at once: the new version appends a
#     trace entry), and its second gets 200.  tqd's handler is the
#     bottleneck here, so the server's CPU per task is the figure that
#     shows the trace's cost.
# Each run: submit (tq_submit_many, chunks of 50 000), VACUUM ANALYZE +
# CHECKPOINT, start tqd, wait until the queue's shared counts show no live
# task (polled every 50 ms), stop tqd; then all tasks must be in history
# as succeeded (fail once: at attempt 2).  Rate: tasks over the time from
# starting tqd to drained.  Also the server's CPU time per task (lib.sh,
# server_cpu) and tqd's own.  Medians of the runs of each side; the
# ratio new/old, target >= 0.90.  The databases are served by no
# background worker (tq.database names another), like row 8's: tq_ready
# comes from the submitting transaction, and the retries are promoted by
# tqd's tq_lease calls.  The failed-attempt counter of tq_queue_activity
# is kept by the library's tq.task trigger, so both sides pay it.
#
# Settings (environment), besides run.sh's TQ_BENCH_PORT (default 54700):
#   TQ_BENCH_ONLY             rows to run: 10, 11 or 10,11 (run.sh also
#                             takes 1-9); default all
#   TQ_BENCH_BIG_FINISHED     finished tasks of row 10, default 10000000
#                             (at least 1000)
#   TQ_BENCH_BIG_READY        ready tasks of row 10, default 1000000
#   TQ_BENCH_BIG_TENANTS      tenants of the ready tasks, default 1000
#   TQ_BENCH_STATS_N          timed executions of each read, default 50
#   TQ_BENCH_OBS_N            noop tasks per run of row 11, default 300000
#   TQ_BENCH_OBS_FAIL_N       fail-once tasks per run, default 30000
#   TQ_BENCH_OBS_ROUNDS       runs of each side per workload, default 5
#   TQ_BENCH_OBS_OLD_VERSION  default 0.4.0
#   TQ_BENCH_OBS_NEW_VERSION  default: default_version of extension/tq.control
#                             (both must be installed: CREATE EXTENSION tq
#                             VERSION ...)
# The defaults take about 3.5 minutes on the 2-core machine (row 10 about
# 1.5, of which the load 1; row 11 about 2).  A quick run, about 15 s:
# TQ_BENCH_BIG_FINISHED=200000 TQ_BENCH_BIG_READY=20000
# TQ_BENCH_BIG_TENANTS=100 TQ_BENCH_OBS_N=20000 TQ_BENCH_OBS_FAIL_N=2000
# TQ_BENCH_OBS_ROUNDS=1.

# obs_settings: reads and checks the settings above (before any work, so
# that run.sh refuses a bad one at its start, not after its rows 1 to 9).
obs_settings()
{
	big_finished=${TQ_BENCH_BIG_FINISHED:-10000000}
	big_ready=${TQ_BENCH_BIG_READY:-1000000}
	big_tenants=${TQ_BENCH_BIG_TENANTS:-1000}
	stats_n=${TQ_BENCH_STATS_N:-50}
	obs_n=${TQ_BENCH_OBS_N:-300000}
	obs_fail_n=${TQ_BENCH_OBS_FAIL_N:-30000}
	obs_rounds=${TQ_BENCH_OBS_ROUNDS:-5}
	obs_old=${TQ_BENCH_OBS_OLD_VERSION:-0.4.0}
	obs_new=${TQ_BENCH_OBS_NEW_VERSION:-$(sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" "$top/extension/tq.control")}
	check_positive "TQ_BENCH_BIG_FINISHED=$big_finished" "TQ_BENCH_BIG_READY=$big_ready" \
		"TQ_BENCH_BIG_TENANTS=$big_tenants" "TQ_BENCH_STATS_N=$stats_n" "TQ_BENCH_OBS_N=$obs_n" \
		"TQ_BENCH_OBS_FAIL_N=$obs_fail_n" "TQ_BENCH_OBS_ROUNDS=$obs_rounds"
	if [ "$big_finished" -lt 1000 ] || [ "$big_ready" -lt "$big_tenants" ]; then
		echo "bench: TQ_BENCH_BIG_FINISHED must be at least 1000, TQ_BENCH_BIG_READY at least TQ_BENCH_BIG_TENANTS" >&2
		exit 2
	fi
	local v
	for v in "TQ_BENCH_OBS_OLD_VERSION=$obs_old" "TQ_BENCH_OBS_NEW_VERSION=$obs_new"; do
		[[ ${v#*=} =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || {
			echo "bench: ${v%%=*} must be a version like 0.4.0, not \"${v#*=}\"" >&2
			exit 2
		}
	done
}

# obs_ms X: milliseconds, with 2 decimals below 10, 1 below 100, else none.
obs_ms() { awk "BEGIN { x = $1; printf (x < 10) ? \"%.2f\" : (x < 100) ? \"%.1f\" : \"%.0f\", x }"; }

# Processes to end if the script stops half-way (tqd, the HTTP server):
# started and not yet reaped (obs_forget once reaped, so that the EXIT trap
# never signals a process id that may have been reused).
obs_pids=()
obs_cleanup()
{
	local p
	for p in "${obs_pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
}
obs_forget()
{
	local p keep=()
	for p in "${obs_pids[@]}"; do
		[ "$p" = "$1" ] || keep+=("$p")
	done
	obs_pids=("${keep[@]}")
}

# obs_db DB VERSION: a fresh database with tq at VERSION.
obs_db()
{
	q postgres 'SET client_min_messages = warning' "DROP DATABASE IF EXISTS $1" "CREATE DATABASE $1" ||
		fail "could not create database $1"
	q "$1" 'SET client_min_messages = warning' "CREATE EXTENSION tq VERSION '$2'" ||
		fail "could not create extension tq version $2 in $1 (is its SQL script installed?)"
	[ "$(q "$1" "SELECT extversion FROM pg_extension WHERE extname = 'tq'")" = "$2" ] ||
		fail "database $1 does not have tq $2"
}

# ---------------------------------------------------------------------------
# Row 10: the reads, at scale.

# stats_read LABEL SQL N WARM IDS TARGET_MS: times SQL (IDS: an SQL
# expression of a bigint[] of ids to pass as $1, or NULL), adds its row;
# below the target when its p95 is.  TARGET_MS -: no target.
stats_read()
{
	local label=$1 sql=$2 n=$3 warm=$4 ids=$5 target=$6 res p50 p95 max nrows verdict
	res=$(q "$sdb" "SELECT concat_ws(' ', p50, p95, max, nrows)
	                  FROM bench_time(\$sql\$$sql\$sql\$, $n, $warm, $ids)") ||
		fail "row 10: could not time \"$sql\""
	read -r p50 p95 max nrows <<<"$res"
	logonly "-> $sql: $n times after $warm warm-ups: p50 $p50 ms, p95 $p95 ms, max $max ms; $nrows rows"
	if [ "$target" = - ]; then
		verdict=-
		target="- (no target)"
	else
		verdict=$(awk "BEGIN { print ($p95 < $target) ? \"yes\" : \"no\" }")
		target="p95 < $target ms"
	fi
	if [ "$verdict" != yes ]; then
		[ "$ids" = NULL ] || sql=${sql//\$1/$(q "$sdb" "SELECT ($ids)[1]")}
		logonly "EXPLAIN (ANALYZE, BUFFERS) $sql"
		q "$sdb" "EXPLAIN (ANALYZE, BUFFERS) $sql" >>"$log" || fail "row 10: could not explain \"$sql\""
	fi
	row3 "$label" "$(obs_ms "$p50")/$(obs_ms "$p95")/$(obs_ms "$max")" - - "$target" "$verdict"
}

obs_row10()
{
	local t0 t1 t2 t3 hist_s ready_s clean_s got exact dead_n warm=5 ids dead_ids
	sdb=bench_stats
	obs_db "$sdb" "$obs_new"
	q "$sdb" "SELECT tq_create_queue('big', max_attempts => 5)" >/dev/null ||
		fail "could not create queue big in $sdb"
	psql -X -q -v ON_ERROR_STOP=1 -d "$sdb" -f "$benchdir/stats_time.sql" >>"$log" ||
		fail "could not create bench_time in $sdb"
	logonly ""
	logonly "=== row 10: $(thousands "$big_finished") finished and $(thousands "$big_ready") ready tasks in $sdb (tq $obs_new)"

	# The daily partitions of the days before today, back to the start of
	# the retention, made as tq.ensure_partitions makes the ones ahead.
	q "$sdb" "DO \$\$
	          DECLARE
	              q tq.queue;
	              width interval;
	              parent text;
	              lo timestamptz;
	              part text;
	          BEGIN
	              SELECT * INTO q FROM tq.queue WHERE name = 'big';
	              width := tq.partition_width(q.retention);
	              parent := format('history_q%s', q.id);
	              SELECT min(h.lo) INTO lo FROM tq.history_part h WHERE h.queue = q.name;
	              WHILE lo > now() - q.retention LOOP
	                  lo := lo - width;
	                  part := format('%s_%s', parent, to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD_HH24'));
	                  EXECUTE format('CREATE TABLE tq.%I (LIKE tq.history)', part);
	                  PERFORM tq.index_history_leaf(part);
	                  EXECUTE format('ALTER TABLE tq.%I ATTACH PARTITION tq.%I FOR VALUES FROM (%L) TO (%L)',
	                                 parent, part, lo, lo + width);
	                  INSERT INTO tq.history_part (queue, relname, lo, hi) VALUES (q.name, part, lo, lo + width);
	              END LOOP;
	          END
	          \$\$" || fail "could not make the past history partitions in $sdb"
	logonly "history partitions: $(q "$sdb" "SELECT count(*) || ' (' || min(lo) || ' to ' || max(hi) || ')'
	                                           FROM tq.history_part WHERE queue = 'big'")"

	t0=$(date +%s.%N)
	q "$sdb" "INSERT INTO tq.history (id, queue, state, priority, tenant, payload, result, last_error,
	                                  dedup_key, run_at, expires_at, timeout, max_attempts, attempt,
	                                  free_attempts, throttles, worker, submitted_at, first_started_at,
	                                  started_at, finished_at, log, trace)
	          SELECT i, 'big', s.state, 0, 'tenant-' || (i % $big_tenants + 1),
	                 jsonb_build_object('order', i, 'customer', i % 50000),
	                 CASE WHEN s.state = 'succeeded' THEN '{\"status\": \"sent\"}'::jsonb END,
	                 CASE WHEN s.state = 'dead' OR s.attempt = 2 THEN s.error END,
	                 NULL, f - s.attempt * interval '1 minute', NULL, NULL, 5, s.attempt, 0, 0,
	                 CASE WHEN s.attempt > 0 THEN s.worker END,
	                 f - s.attempt * interval '1 minute' - interval '2 s',
	                 CASE WHEN s.attempt > 0 THEN f - s.attempt * interval '1 minute' END,
	                 CASE WHEN s.attempt > 0 THEN f - interval '1 s' END,
	                 f,
	                 CASE WHEN s.attempt > 1 THEN
	                     (SELECT jsonb_agg(jsonb_build_array(a, 'POST https://api.example.com/orders: '
	                                                            || s.error || ' (0.120 s)') ORDER BY a)
	                        FROM generate_series(1, s.attempt - (s.state = 'succeeded')::integer) a) END,
	                 CASE WHEN s.attempt > 1 THEN
	                     (SELECT jsonb_agg(jsonb_build_object('attempt', a,
	                                                          'ready_at', f - (s.attempt - a + 1) * interval '1 minute',
	                                                          'leased_at', f - (s.attempt - a + 1) * interval '1 minute',
	                                                          'worker', s.worker,
	                                                          'ended_at', f - (s.attempt - a + 1) * interval '1 minute'
	                                                                      + interval '120 ms',
	                                                          'outcome', 'failed', 'error', s.error) ORDER BY a)
	                        FROM generate_series(1, s.attempt - 1) a) END
	            FROM (SELECT i,
	                         now() - q.retention * (1 - i::double precision / $big_finished) AS f,
	                         CASE WHEN i % 100 = 0 THEN 'dead' WHEN i % 200 = 1 THEN 'cancelled'
	                              WHEN i % 1000 = 3 THEN 'expired' ELSE 'succeeded' END::tq.task_state AS state,
	                         CASE WHEN i % 100 = 0 THEN 5 WHEN i % 200 = 1 OR i % 1000 = 3 THEN 0
	                              WHEN i % 100 IN (5, 6, 7) THEN 2 ELSE 1 END AS attempt,
	                         'worker-' || (i % 8 + 1) || ':' || (4000 + i % 4) AS worker,
	                         'HTTP 500 Internal Server Error: upstream timeout'::text AS error
	                    FROM generate_series(1, $big_finished) i, tq.queue q
	                   WHERE q.name = 'big') s" \
		"SELECT setval('tq.task_id_seq', $big_finished)" >/dev/null ||
		fail "could not load the history of $sdb"
	t1=$(date +%s.%N)
	q "$sdb" "DO \$\$
	          BEGIN
	              FOR t IN 1 .. $big_tenants LOOP
	                  PERFORM tq_submit_many('big',
	                              (SELECT array_agg(jsonb_build_object('order', g))
	                                 FROM generate_series(1, $((big_ready / big_tenants)) + (t <= $((big_ready % big_tenants)))::integer) g),
	                              tenant => 'tenant-' || t);
	              END LOOP;
	          END
	          \$\$" || fail "could not submit the ready tasks of $sdb"
	t2=$(date +%s.%N)
	clean "$sdb"
	t3=$(date +%s.%N)
	hist_s=$(calc "$t1 - $t0")
	ready_s=$(calc "$t2 - $t1")
	clean_s=$(calc "$t3 - $t2")
	obs_load_s=$(calc "$t3 - $t0")
	obs_load="$(fmt_1 "$obs_load_s") s (history $(fmt_1 "$hist_s") s, ready tasks $(fmt_1 "$ready_s") s, VACUUM ANALYZE + CHECKPOINT $(fmt_1 "$clean_s") s)"
	logonly "-> loaded in $obs_load"
	logonly "$(q "$sdb" "SELECT string_agg(format('%s: %s rows, %s', c.relname, c.reltuples::bigint,
	                                              pg_size_pretty(pg_total_relation_size(c.oid))), E'\n' ORDER BY c.relname)
	                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	                      WHERE n.nspname = 'tq' AND c.relkind = 'r'
	                        AND (c.relname LIKE 'history%' OR c.relname = 'task')")"

	# The sizes, counted: the tables (the exact view), and the shared counts.
	exact=$(q "$sdb" "SELECT concat_ws(' ', ready, succeeded + dead + cancelled + expired, succeeded, dead,
	                                   cancelled, expired)
	                    FROM tq_queue_stats_exact WHERE queue = 'big'") ||
		fail "could not read tq_queue_stats_exact in $sdb"
	read -r got obs_fin_got obs_succ obs_dead obs_canc obs_exp <<<"$exact"
	dead_n=$((big_finished / 100))
	if [ "$got" -ne "$big_ready" ] || [ "$obs_fin_got" -ne "$big_finished" ] || [ "$obs_dead" -ne "$dead_n" ]; then
		fail "row 10: loaded $got ready and $obs_fin_got finished tasks ($obs_dead dead), not $big_ready, $big_finished ($dead_n)"
	fi
	got=$(q "$sdb" "SELECT ready FROM tq_queue_stats WHERE queue = 'big'")
	[ "$got" -eq "$big_ready" ] || fail "row 10: tq_queue_stats shows $got ready tasks, not $big_ready"
	got=$(q "$sdb" "SELECT count(*) FROM tq_tenants WHERE queue = 'big' AND ready > 0")
	[ "$got" -eq "$big_tenants" ] || fail "row 10: tq_tenants shows $got tenants with ready tasks, not $big_tenants"
	obs_parts=$(q "$sdb" "SELECT count(*) FROM tq.history_part WHERE queue = 'big'")
	logonly "-> counted: $big_ready ready ($big_tenants tenants); finished: $obs_succ succeeded, $obs_dead dead, $obs_canc cancelled, $obs_exp expired"

	# Ids to look up: any task in history; dead tasks (ids multiple of 100).
	ids="(SELECT array_agg(1 + (random() * ($big_finished - 1))::bigint) FROM generate_series(1, $((stats_n + warm))))"
	dead_ids="(SELECT array_agg(100 * (1 + (random() * ($dead_n - 1))::bigint)) FROM generate_series(1, $((stats_n + warm))))"
	logonly ""
	logonly "=== row 10: the reads, $stats_n times each after $warm warm-ups (ms, on the server)"
	stats_read "tq_queue_stats, $(thousands "$big_finished") finished + $(thousands "$big_ready") ready (ms)" \
		'SELECT * FROM tq_queue_stats' "$stats_n" "$warm" NULL 10
	stats_read "  tq_queue_activity (ms)" 'SELECT * FROM tq_queue_activity' "$stats_n" "$warm" NULL 10
	stats_read "  tq_tenants, $(thousands "$big_tenants") tenants (ms)" 'SELECT * FROM tq_tenants' "$stats_n" "$warm" NULL 10
	stats_read "  tq_queues (ms)" 'SELECT * FROM tq_queues' "$stats_n" "$warm" NULL 10
	stats_read "  tq_dead ORDER BY finished_at DESC LIMIT 50 (ms)" \
		'SELECT * FROM tq_dead ORDER BY finished_at DESC LIMIT 50' "$stats_n" "$warm" NULL 10
	stats_read "  dead count per queue: tq_dead GROUP BY queue (ms)" \
		'SELECT queue, count(*) FROM tq_dead GROUP BY queue' "$stats_n" "$warm" NULL 10
	stats_read "  dead count of all queues: count(*) FROM tq_dead (ms)" \
		'SELECT count(*) FROM tq_dead' "$stats_n" "$warm" NULL 10
	# shellcheck disable=SC2016	# $1: the id, a parameter of the query
	stats_read "  tq_task(id), a random task in history (ms)" 'SELECT * FROM tq_task($1)' "$stats_n" "$warm" "$ids" 10
	# shellcheck disable=SC2016
	stats_read "  tq_task_trace(id), a random dead task (ms)" \
		'SELECT * FROM tq_task_trace($1)' "$stats_n" "$warm" "$dead_ids" 10
	# shellcheck disable=SC2016
	stats_read "  tq_task_log(id), a random dead task (ms)" \
		'SELECT * FROM tq_task_log($1)' "$stats_n" "$warm" "$dead_ids" 10
	stats_read "  tq_queue_stats_exact: counts the tables (ms)" 'SELECT * FROM tq_queue_stats_exact' 3 1 NULL -
	dash_reads "$dead_n"
	drop_db "$sdb"
}

# dash_time LABEL N URL...: GETs the URLs in turn (N in all, after 5
# warm-ups), timed by curl from sending the request to the last byte of the
# answer; adds a row with p50/p95/max (target: p95 < 10 ms).
dash_time()
{
	local label=$1 n=$2 out p50 p95 max bad verdict
	shift 2
	local urls=("$@") i
	for ((i = 0; i < 5; i++)); do
		curl -s -o /dev/null "${urls[$((i % ${#urls[@]}))]}" || fail "row 10: tqd does not answer ${urls[0]}"
	done
	out=$obs_dash_work/times
	: >"$out"
	for ((i = 0; i < n; i++)); do
		curl -s -o /dev/null -w '%{http_code} %{time_total}\n' "${urls[$((i % ${#urls[@]}))]}" >>"$out"
	done
	bad=$(awk '$1 != 200' "$out" | wc -l)
	[ "$bad" -eq 0 ] || fail "row 10: $bad of $n dashboard answers were not 200 ($(awk '$1 != 200 { print $1; exit }' "$out"))"
	read -r p50 p95 max < <(awk '{ print $2 * 1000 }' "$out" | sort -g |
		awk '{ v[NR] = $1 } END { p = int(NR * 0.95 + 0.5); if (p < 1) p = 1; print v[int((NR + 1) / 2)], v[p], v[NR] }')
	logonly "-> GET ${urls[0]} (and ${#urls[@]} URLs in turn): $n times: p50 $p50 ms, p95 $p95 ms, max $max ms"
	verdict=$(awk "BEGIN { print ($p95 < 10) ? \"yes\" : \"no\" }")
	row3 "$label" "$(obs_ms "$p50")/$(obs_ms "$p95")/$(obs_ms "$max")" - - "p95 < 10 ms" "$verdict"
}

# dash_reads DEAD_N: the dashboard's answers through a tqd serving it on
# the big database: /api/queues (every queue's counts, rates, dead count
# and the latest dead tasks: one query) and /api/task of random dead tasks
# (row, trace, log: one query), HTTP on loopback included.
dash_reads()
{
	local dead_n=$1 pid port deadline ids=() id
	command -v curl >/dev/null || {
		logonly "-> row 10: curl is not installed: the dashboard's answers are not timed"
		return 0
	}
	obs_dash_work=$(mktemp -d /tmp/tq-bench-dash.XXXXXX)
	q "$sdb" "SELECT tq_create_queue('dash_idle')" >/dev/null || fail "row 10: could not create queue dash_idle"
	cat >"$obs_dash_work/tqd.conf" <<CONF
[tqd]
conninfo = dbname=$sdb
metrics_listen = 127.0.0.1:0
dashboard = on

[queue:dash_idle]
handler = noop
CONF
	"$top/worker/tqd" -c "$obs_dash_work/tqd.conf" 2>"$obs_dash_work/tqd.log" &
	pid=$!
	obs_pids+=("$pid")
	deadline=$((SECONDS + 30))
	until grep -q 'msg=connected conn=dashboard' "$obs_dash_work/tqd.log"; do
		[ $SECONDS -lt $deadline ] || fail "row 10: tqd's dashboard did not connect; see $obs_dash_work/tqd.log"
		sleep 0.05
	done
	port=$(sed -n 's/.*serving the dashboard at \/" port=\([0-9]*\).*/\1/p' "$obs_dash_work/tqd.log")
	while read -r id; do
		ids+=("http://127.0.0.1:$port/api/task?id=$id")
	done < <(q "$sdb" "SELECT 100 * (1 + (random() * ($dead_n - 1))::bigint) FROM generate_series(1, $stats_n)")
	dash_time "  dashboard via tqd: GET /api/queues (ms)" "$stats_n" "http://127.0.0.1:$port/api/queues"
	dash_time "  dashboard via tqd: GET /api/task, dead task (ms)" "$stats_n" "${ids[@]}"
	kill "$pid"
	wait "$pid" || fail "row 10: tqd (dashboard) exited with an error; see $obs_dash_work/tqd.log"
	obs_forget "$pid"
	rm -rf "$obs_dash_work"
}

# ---------------------------------------------------------------------------
# Row 11: the same tqd on the old and the new extension.

# obs_ver SIDE: the extension version of SIDE (old or new).
obs_ver() { if [ "$1" = old ]; then echo "$obs_old"; else echo "$obs_new"; fi; }

# obs_submit DB QUEUE N: N tasks in calls of up to 50 000.
obs_submit()
{
	local left=$3 k
	while [ "$left" -gt 0 ]; do
		k=$((left < 50000 ? left : 50000))
		q "$1" "SELECT cardinality(tq_submit_many('$2', array_fill('{\"n\":1}'::jsonb, ARRAY[$k])))" \
			>/dev/null || fail "could not submit to $2 in $1"
		left=$((left - k))
	done
}

# obs_drain SIDE WORKLOAD N: one run: N tasks of WORKLOAD (noop or flaky)
# drained by one tqd in the database of SIDE (old or new); sets OBS_RATE
# (tasks/s), OBS_SCPU and OBS_TCPU (server's and tqd's CPU per task, us).
OBS_RATE=0
OBS_SCPU=0
OBS_TCPU=0
obs_drain()
{
	local side=$1 wl=$2 n=$3 db=bench_obs_$1 before after t0 t1 cpu0 cpu1 pid tcpu deadline
	before=$(q "$db" "SELECT count(*) FILTER (WHERE attempt = $([ "$wl" = flaky ] && echo 2 || echo 1))
	                    FROM tq.history WHERE queue = '$wl' AND state = 'succeeded'")
	obs_submit "$db" "$wl" "$n"
	clean "$db"
	cpu0=$(server_cpu)
	t0=$(date +%s.%N)
	"$tqd_bin" -c "$obs_work/$wl-$side.conf" 2>>"$obs_work/$wl-$side.log" &
	pid=$!
	obs_pids+=("$pid")
	deadline=$((SECONDS + 300))
	until [ "$(q "$db" "SELECT scheduled + ready + paused + running FROM tq_queue_stats WHERE queue = '$wl'")" -eq 0 ]; do
		[ $SECONDS -lt $deadline ] || fail "row 11, $wl, $side: tasks still live after 300 s; see $obs_work"
		if ! kill -0 "$pid" 2>/dev/null; then
			obs_forget "$pid"
			fail "row 11, $wl, $side: tqd exited; see $obs_work/$wl-$side.log"
		fi
		sleep 0.05
	done
	t1=$(date +%s.%N)
	tcpu=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
	kill -TERM "$pid"
	wait "$pid" || fail "row 11, $wl, $side: tqd exited with an error; see $obs_work/$wl-$side.log"
	obs_forget "$pid"
	cpu1=$(server_cpu)
	after=$(q "$db" "SELECT count(*) FILTER (WHERE attempt = $([ "$wl" = flaky ] && echo 2 || echo 1))
	                   FROM tq.history WHERE queue = '$wl' AND state = 'succeeded'")
	[ $((after - before)) -eq "$n" ] ||
		fail "row 11, $wl, $side: $((after - before)) of $n tasks succeeded$([ "$wl" = flaky ] && echo ' at attempt 2')"
	OBS_RATE=$(calc "$n / ($t1 - $t0)")
	OBS_SCPU=$(calc "($cpu1 - $cpu0) * 1000000 / $n")
	OBS_TCPU=$(calc "$tcpu * 1000000 / $clk_tck / $n")
	logonly "-> $wl, $side (tq $(obs_ver "$side")): $n tasks in $(calc "$t1 - $t0") s: $OBS_RATE tasks/s;" \
		"server CPU $(calc "$cpu1 - $cpu0") s, $OBS_SCPU us/task; tqd CPU $OBS_TCPU us/task"
}

# obs_conf FILE DB QUEUE_LINES: a tqd configuration serving DB.
obs_conf()
{
	cat >"$1" <<CONF
[tqd]
conninfo = dbname=$2
slots = 500
lease_batch = 100
flush_interval = 5ms
poll_interval = 100ms
log_level = warning

$3
CONF
}

obs_row11()
{
	local side wl r n port httpd_pid deadline db trace
	tqd_bin=$top/worker/tqd
	[ -x "$tqd_bin" ] || fail "$tqd_bin is not built"
	local httpd_bin=$top/worker/test/tqtest_httpd
	[ -x "$httpd_bin" ] || fail "$httpd_bin is not built (make -C worker test/tqtest_httpd)"
	obs_work=$(mktemp -d /tmp/tq-bench-obs.XXXXXX)
	"$httpd_bin" --port 0 >"$obs_work/httpd.out" 2>&1 &
	httpd_pid=$!
	obs_pids+=("$httpd_pid")
	deadline=$((SECONDS + 10))
	until grep -q 'listening port=' "$obs_work/httpd.out" 2>/dev/null; do
		[ $SECONDS -lt $deadline ] || fail "the test HTTP server did not start"
		sleep 0.05
	done
	port=$(sed -n 's/^listening port=//p' "$obs_work/httpd.out")
	for side in old new; do
		obs_db "bench_obs_$side" "$(obs_ver "$side")"
		q "bench_obs_$side" "SELECT tq_create_queue('noop')" "SELECT tq_create_queue('flaky')" >/dev/null ||
			fail "could not create the queues of bench_obs_$side"
		obs_conf "$obs_work/noop-$side.conf" "bench_obs_$side" "[queue:noop]
handler = noop
concurrency = 500"
		obs_conf "$obs_work/flaky-$side.conf" "bench_obs_$side" "[queue:flaky]
handler = http
url = http://127.0.0.1:$port/flaky?code=500&times=1&retry_after=0
concurrency = 64
adaptive = off"
	done
	logonly ""
	logonly "=== row 11: tqd on tq $obs_old (bench_obs_old) and tq $obs_new (bench_obs_new), alternating"
	logonly "tqd configurations (the old side's; the new side's differ in dbname):"
	logonly "$(cat "$obs_work/noop-old.conf" "$obs_work/flaky-old.conf")"
	declare -gA obs_runs
	for wl in noop flaky; do
		n=$([ "$wl" = noop ] && echo "$obs_n" || echo "$obs_fail_n")
		for r in $(seq "$obs_rounds"); do
			for side in old new; do
				obs_drain "$side" "$wl" "$n"
				obs_runs[$wl,$side,rate]+=" $OBS_RATE"
				obs_runs[$wl,$side,scpu]+=" $OBS_SCPU"
				obs_runs[$wl,$side,tcpu]+=" $OBS_TCPU"
			done
		done
	done
	kill -TERM "$httpd_pid"
	wait "$httpd_pid" || true
	obs_forget "$httpd_pid"
	# What each side stored: traces (only a version with the column) and
	# logs of the retried tasks, and the activity counters.
	for side in old new; do
		db=bench_obs_$side
		trace=0
		[ "$(q "$db" "SELECT count(*) FROM pg_attribute
		              WHERE attrelid = 'tq.history'::regclass AND attname = 'trace'")" = 0 ] ||
			trace="count(trace)"
		logonly "-> $db: $(q "$db" "SELECT format('noop: %s succeeded', count(*)) FROM tq.history WHERE queue = 'noop'");" \
			"$(q "$db" "SELECT format('flaky: %s succeeded, %s at attempt 2, %s with a trace, %s with a log',
			                          count(*), count(*) FILTER (WHERE attempt = 2), $trace, count(log))
			              FROM tq.history WHERE queue = 'flaky'")"
	done
	logonly "-> bench_obs_new, tq_queue_activity: $(q bench_obs_new "SELECT string_agg(format('%s %s min: %s succeeded, %s failed', queue, window_minutes, succeeded, failed), '; ')
	                                                                  FROM tq_queue_activity")"
	rm -rf "$obs_work"
	drop_db bench_obs_old
	drop_db bench_obs_new
}

# obs_ab_rows LABEL WORKLOAD: the rate row and the CPU row of a workload.
obs_ab_rows()
{
	local wl=$2 rn ro sn so ratio
	# shellcheck disable=SC2086	# the lists of figures split on purpose
	{
		rn=$(median ${obs_runs[$wl,new,rate]})
		ro=$(median ${obs_runs[$wl,old,rate]})
		sn=$(median ${obs_runs[$wl,new,scpu]})
		so=$(median ${obs_runs[$wl,old,scpu]})
	}
	ratio=$(calc "$rn / $ro")
	row3 "$1" "$(fmt_rate "$rn")" "$(fmt_rate "$ro")" "$(fmt_ratio "$ratio")" ">= 0.90 of $obs_old" "$(met "$ratio" 0.90)"
	row3 "  server CPU per task (us); ratio: $obs_old / $obs_new" "$(fmt_1 "$sn")" "$(fmt_1 "$so")" \
		"$(fmt_ratio "$(calc "$so / $sn")")" "- (CPU cost)" -
}

# obs_rows: the selected rows (want_10, want_11), into rows3.
obs_rows()
{
	local t0
	_tq_cluster_chain_trap EXIT obs_cleanup
	obs_secs10=- obs_secs11=-
	if [ "$want_11" = 1 ]; then
		t0=$SECONDS
		obs_row11
		obs_secs11=$((SECONDS - t0))
	fi
	if [ "$want_10" = 1 ]; then
		t0=$SECONDS
		obs_row10
		obs_secs10=$((SECONDS - t0))
	fi
	if [ "$want_11" = 1 ]; then
		obs_ab_rows "tqd noop, $(thousands "$obs_n") tasks: tq $obs_new vs $obs_old (median of $obs_rounds)" noop
		obs_ab_rows "tqd http, fail 1st attempt, $(thousands "$obs_fail_n") tasks (median of $obs_rounds)" flaky
	fi
}

# obs_print: the third table and its notes.
obs_print()
{
	local wl side
	[ "${#rows3[@]}" -gt 0 ] || return 0
	say "observability: reads at scale (row 10), cost of the counters and traces end to end (row 11):"
	print_table rows3 measured reference ratio
	say ""
	if [ "$want_10" = 1 ]; then
		say "row 10 (tq $obs_new, $obs_secs10 s): one queue, $(thousands "$big_finished") finished tasks in history ($obs_succ succeeded, $obs_dead dead,"
		say "      $obs_canc cancelled, $obs_exp expired; finished over the last 7 days, $obs_parts daily partitions) and $(thousands "$big_ready") ready"
		say "      over $(thousands "$big_tenants") tenants; loaded in $obs_load."
		say "      Each read $stats_n times after 5 warm-ups in one session, timed on the server (EXECUTE, planned each time,"
		say "      every row fetched; no client round trip): p50/p95/max ms; met: p95 under 10 ms. Misses: EXPLAIN in the log."
	fi
	if [ "$want_11" = 1 ]; then
		say "row 11 ($obs_secs11 s): the same tqd and library on tq $obs_old (no traces, finish counters, tq_wait notes) and tq $obs_new,"
		say "      runs alternating $obs_old, $obs_new, ... ($obs_rounds each); tasks/s from starting tqd to drained; medians."
		say "      noop: as row 8 (500 slots, leases of 100). fail once: http handler, window 64, to the test server's /flaky:"
		say "      500 with Retry-After: 0 at attempt 1 (tq_fail; $obs_new appends a trace entry), 200 at attempt 2."
		for wl in noop flaky; do
			for side in old new; do
				# shellcheck disable=SC2086	# the lists of figures split on purpose
				say "      $wl, tq $(obs_ver "$side"): tasks/s$(printf ' %.0f' ${obs_runs[$wl,$side,rate]});" \
					"server CPU us/task$(printf ' %.1f' ${obs_runs[$wl,$side,scpu]}); tqd CPU us/task$(printf ' %.1f' ${obs_runs[$wl,$side,tcpu]})"
			done
		done
	fi
}

# ---------------------------------------------------------------------------
# Run alone: a cluster of its own.

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	set -euo pipefail
	top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
	cd "$top"
	benchdir=$top/test/bench
	# shellcheck source=test/bench/lib.sh
	. "$benchdir/lib.sh"
	port=${TQ_BENCH_PORT:-54700}
	check_positive "TQ_BENCH_PORT=$port"
	bench_select
	if [ "$want_main" = 1 ]; then
		echo "bench: rows 1 to 9 are test/bench/run.sh's (make bench); here TQ_BENCH_ONLY takes 10 and 11" >&2
		exit 2
	fi
	obs_settings
	mkdir -p "$results"
	log=$results/observability-$(date +%Y%m%d-%H%M%S).log
	: >"$log"
	bench_cluster_start "$port"
	bench_header "tq benchmark, rows 10 and 11 (test/bench/observability.sh)"
	say ""
	# The background worker's database, as in run.sh, so that the server
	# runs what it runs there (it serves none of the measured databases).
	obs_db "$worker_db" "$obs_new"
	obs_rows
	say ""
	obs_print
	say "load average at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores: other work on the machine is noise)."
	save_server_log
	say "log: $log"
fi
