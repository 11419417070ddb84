#!/usr/bin/env bash
# Steady load (issue 16): `make bench-steady`, after `make install`.
#
# An open-loop producer -- pgbench --rate, TQ_STEADY_RATE submits a second
# (500) from 4 clients, one tq_submit per transaction -- into one tqd with
# 8 slots (noop handler) for TQ_STEADY_SECS (180), at the durability users
# run: synchronous_commit = on, fsync on, the background worker sending
# tq_ready (tq.database).  Then, as the reference, the same tqd drains as
# many tasks queued beforehand (the batch drain).
#
# Printed: submit-to-start (first_started_at - submitted_at, server clock)
# p50, p99 and max over every task of the steady run; the server's CPU time
# per task (the postmaster and its children, from /proc, as in make bench)
# of the steady run, of the same submits alone (tqd paused, a third of the
# time), their difference (running the tasks), and of the batch drain;
# the ratio of running a task under steady load to the batch drain's.  The issue's targets: p50 <= 2 ms, p99 <= 10 ms,
# CPU per task within 2x of the batch drain's.
#
# Settings: TQ_STEADY_RATE, TQ_STEADY_SECS, TQ_TEST_PORT (21070).
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
rate=${TQ_STEADY_RATE:-500}
secs=${TQ_STEADY_SECS:-180}
export TQ_TEST_PORT=${TQ_TEST_PORT:-21070}
export TQ_TEST_CONF="
fsync = on
synchronous_commit = on
shared_buffers = 1GB
max_wal_size = 8GB
tq.database = 'postgres'
"
log=/dev/null
# shellcheck source=test/bench/lib.sh
. "$top/test/bench/lib.sh" # test/cluster.sh, server_cpu
tq_cluster_start >/dev/null
bindir=$(pg_config --bindir)
export PGDATABASE=postgres
psql -qAtX -v ON_ERROR_STOP=1 -c "CREATE EXTENSION tq; SELECT tq_create_queue('steady');" >/dev/null

work=$(mktemp -d /tmp/tq-steady.XXXXXX)
cat >"$work/tqd.conf" <<EOF
[tqd]
conninfo = host=$PGHOST port=$PGPORT dbname=postgres user=postgres
slots = 8
[queue:steady]
handler = noop
concurrency = 8
EOF
"$top/worker/tqd" -c "$work/tqd.conf" >"$work/tqd.log" 2>&1 &
tqd_pid=$!
trap 'kill "$tqd_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q 'msg=connected conn=work' "$work/tqd.log" && break; sleep 0.1; done

drained() { # wait (up to 10 min) until no task is live
	for _ in $(seq 6000); do
		[ "$(psql -qAtX -c 'SELECT count(*) FROM tq.task')" = 0 ] && return 0
		sleep 0.1
	done
	echo "steady: tasks left after 10 minutes" >&2
	return 1
}

echo "SELECT tq_submit('steady', '{}');" >"$work/submit.sql"
cpu0=$(server_cpu)
"$bindir/pgbench" -n -c 4 -j 2 -R "$rate" -T "$secs" -f "$work/submit.sql" postgres >"$work/pgbench.out" 2>&1
drained
cpu1=$(server_cpu)
read -r n p50 p99 max < <(psql -qAtX -F ' ' -c "
	SELECT count(*),
	       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms))::numeric, 2),
	       round((percentile_cont(0.99) WITHIN GROUP (ORDER BY ms))::numeric, 2),
	       round(max(ms)::numeric, 1)
	  FROM (SELECT extract(epoch FROM first_started_at - submitted_at) * 1000 AS ms
	          FROM tq.history WHERE queue = 'steady') x")
steady_cpu=$(echo "($cpu1 - $cpu0) / $n * 1000000" | bc -l)

# The submits alone, at the same rate with tqd paused, for a third of
# the time: the steady run's CPU includes them, the batch drain's not.
kill -STOP "$tqd_pid"
cpu_s0=$(server_cpu)
"$bindir/pgbench" -n -c 4 -j 2 -R "$rate" -T "$((secs / 3 > 0 ? secs / 3 : 1))" -f "$work/submit.sql" postgres \
	>"$work/pgbench-submit.out" 2>&1
cpu_s1=$(server_cpu)
n_sub=$(psql -qAtX -c "SELECT count(*) FROM tq.task")
submit_cpu=$(echo "($cpu_s1 - $cpu_s0) / $n_sub * 1000000" | bc -l)
kill -CONT "$tqd_pid"
drained

# The batch drain: as many tasks queued at once (tqd paused meanwhile).
kill -STOP "$tqd_pid"
psql -qAtX -c "SELECT count(*) FROM (SELECT tq_submit_many('steady', array_fill('{}'::jsonb, ARRAY[$n]))) x" >/dev/null
cpu2=$(server_cpu)
kill -CONT "$tqd_pid"
drained
cpu3=$(server_cpu)
drain_cpu=$(echo "($cpu3 - $cpu2) / $n * 1000000" | bc -l)

printf 'steady load: %s submits/s for %s s into one tqd (8 slots, noop), synchronous_commit = on\n' "$rate" "$secs"
printf '  tasks %d, submit-to-start p50 %s ms, p99 %s ms, max %s ms (targets: p50 <= 2, p99 <= 10)\n' \
	"$n" "$p50" "$p99" "$max"
printf '  server CPU per task: steady %.0f us (submit and run), of which the submit %.0f us (measured alone); run %.0f us\n' \
	"$steady_cpu" "$submit_cpu" "$(echo "$steady_cpu - $submit_cpu" | bc -l)"
printf '  batch drain (run only) %.0f us; steady run / batch drain %.2f (target <= 2)\n' \
	"$drain_cpu" "$(echo "($steady_cpu - $submit_cpu) / $drain_cpu" | bc -l)"
grep -E '^tps' "$work/pgbench.out" | sed 's/^/  pgbench: /'
