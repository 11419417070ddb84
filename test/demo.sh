#!/usr/bin/env bash
#
# demo.sh: the main job, end to end, on a throwaway cluster.
#
# Starts a PostgreSQL cluster with tq preloaded (as the postgres OS user, on a
# private socket), creates two queues, submits example tasks -- one that
# succeeds, one that fails once and is retried, one that is dead-lettered,
# a duplicate, a delayed task and a bulk batch -- and runs tqd, the worker
# daemon, on them: the sample configuration (worker/tqd.conf.sample, every
# key at its default) with its example queue replaced by the demo's two,
# whose tasks run worker/examples/demo-handler.pl through the exec handler,
# and the dashboard on.  Once every task has finished it prints the tasks, a
# task's log, some of tqd's log lines, what tqd's dashboard and /metrics
# answer, and the queue stats, and stops tqd with SIGTERM.  The
# cluster is stopped and removed on exit, also on failure, and tqd with it.
#
# tq's background worker promotes the delayed task and the retries on
# time and sends tq_ready, which wakes tqd.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=test/cluster.sh
. "$here/cluster.sh"

TQ_TEST_PORT=${TQ_DEMO_PORT:-54339}
export TQ_TEST_PORT
tq_cluster_start
# The database the background worker serves by default (tq.database).
export PGDATABASE=postgres
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }

step() { printf '\n== %s\n' "$*"; }

step "CREATE EXTENSION tq; two queues"
psql <<'SQL'
CREATE EXTENSION tq;
SELECT tq_create_queue('email', max_attempts => 3, backoff_base => '200 ms', backoff_cap => '1 s');
SELECT tq_create_queue('thumbnails', backoff_base => '200 ms', backoff_cap => '1 s');
SQL

step "The application submits tasks (in its own transactions)"
psql <<'SQL'
\pset footer off
CREATE TABLE demo_ids (name text PRIMARY KEY, id bigint);
BEGIN;
INSERT INTO demo_ids VALUES
  ('welcome e-mail',         tq_submit('email', '{"to": "ada@example.com", "work": "ok"}', dedup_key => 'welcome:ada')),
  ('duplicate of it',        tq_submit('email', '{"to": "ada@example.com", "work": "ok"}', dedup_key => 'welcome:ada')),
  ('flaky thumbnail',        tq_submit('thumbnails', '{"image": 7, "work": "fail_once"}')),
  ('bad input',              tq_submit('email', '{"to": "not-an-address", "work": "bad_input"}')),
  ('always failing',         tq_submit('email', '{"to": "bob@example.com", "work": "always_fail"}')),
  ('delayed 2 s, priority 9', tq_submit('email', '{"to": "eve@example.com", "work": "ok"}',
                                        run_at => now() + interval '2 seconds', priority => 9));
COMMIT;
SELECT name, id FROM demo_ids ORDER BY id, name;
SELECT cardinality(tq_submit_many('thumbnails',
         (SELECT array_agg(jsonb_build_object('image', i, 'work', 'ok')) FROM generate_series(100, 1099) i)))
       AS "bulk: thumbnails submitted in one call";
SELECT queue, scheduled, ready, running, succeeded, dead FROM tq_queue_stats_exact ORDER BY queue;
SQL

step "tqd runs them: the sample configuration, with the demo's two queues"
top=$(cd "$here/.." && pwd)
tqd=$top/worker/tqd
[ -x "$tqd" ] || { echo "demo: $tqd is not built (make)" >&2; exit 1; }
work=$(mktemp -d /tmp/tq-demo.XXXXXX)
conf=$work/tqd.conf
# The sample's [tqd] section as it is (conninfo "" takes PGHOST, PGPORT and
# PGDATABASE from the environment: this cluster) but for /metrics and the
# dashboard, on a free loopback port, then the demo's queues.
sed -n -e '/^\[queue:/q' -e 's/^metrics_listen =.*/metrics_listen = 127.0.0.1:0/' \
	-e 's/^dashboard = off$/dashboard = on/' -e p "$top/worker/tqd.conf.sample" >"$conf"
cat >>"$conf" <<CONF
[queue:email]
handler = exec
command = $top/worker/examples/demo-handler.pl
concurrency = 4

[queue:thumbnails]
handler = exec
command = $top/worker/examples/demo-handler.pl
concurrency = 8
CONF
"$tqd" -c "$conf" --check-config
"$tqd" -c "$conf" 2>"$work/tqd.log" &
tqd_pid=$!
stop_tqd() { kill "$tqd_pid" 2>/dev/null || true; rm -rf "$work"; }
_tq_cluster_chain_trap EXIT stop_tqd
echo "tqd started (pid $tqd_pid)"

# Until nothing is live, with a deadline; retries wait out their backoff.
deadline=$((SECONDS + 90))
while :; do
	live=$(psql -At -c "SELECT sum(scheduled + ready + paused + running) FROM tq_queue_stats")
	[ "$live" -eq 0 ] && break
	if [ $SECONDS -ge $deadline ]; then
		echo "demo: tasks still live after 90 s; tqd's log:" >&2
		tail -n 20 "$work/tqd.log" >&2
		exit 1
	fi
	printf 'live tasks: %s\n' "$live"
	sleep 0.5
done
echo "every task has finished"

step "Results: each example task"
psql <<'SQL'
\pset footer off
SELECT d.name, t.id, t.state, t.attempts, coalesce(t.result::text, t.last_error) AS "result or last error"
  FROM demo_ids d CROSS JOIN LATERAL tq_task(d.id) t
 ORDER BY t.id, d.name;
SQL

step "The flaky thumbnail's log (stderr of each attempt), and some of tqd's own log lines"
psql <<'SQL'
\pset footer off
SELECT attempt, n, line FROM tq_task_log((SELECT id FROM demo_ids WHERE name = 'flaky thumbnail'));
SQL
grep -E 'msg=(starting|connected|"task failed")' "$work/tqd.log" | head -n 8

step "tqd's dashboard and /metrics (metrics_listen, dashboard = on)"
hport=$(sed -n 's/.*serving the dashboard at \/" port=\([0-9]*\).*/\1/p' "$work/tqd.log" | head -n 1)
echo "dashboard: http://127.0.0.1:$hport/ while tqd runs; what it shows of the flaky thumbnail,"
echo "GET /api/task?id=N (its row, each attempt, its log):"
flaky=$(psql -At -c "SELECT id FROM demo_ids WHERE name = 'flaky thumbnail'")
if command -v curl >/dev/null; then
	curl -sS "http://127.0.0.1:$hport/api/task?id=$flaky" | cut -c 1-1200
	echo "GET /metrics (tasks finished, by queue and outcome, those not zero):"
	curl -sS "http://127.0.0.1:$hport/metrics" | grep '^tqd_tasks_finished_total' | grep -v ' 0$'
else
	echo "(curl is not installed: skipped)"
fi

step "tqd stops on SIGTERM: lets running tasks finish, reports, exits 0"
kill -TERM "$tqd_pid"
status=0
wait "$tqd_pid" || status=$?
echo "tqd exited with status $status"
tail -n 1 "$work/tqd.log"

step "Dead letters: tq_retry brings a dead task back (then tq_cancel ends it)"
psql <<'SQL'
\pset footer off
SELECT tq_retry((SELECT id FROM demo_ids WHERE name = 'bad input')) AS retried;
SELECT id, state, attempts FROM tq_task((SELECT id FROM demo_ids WHERE name = 'bad input'));
SELECT tq_cancel((SELECT id FROM demo_ids WHERE name = 'bad input')) AS cancelled_instead;
SQL

step "Fair sharing: tenant big floods a queue with 1000 tasks, small-1 and small-2 submit 20 each"
psql <<'SQL'
\pset footer off
SELECT tq_create_queue('reports', concurrency => 50);
SELECT tq_set_tenant('reports', 'small-2', weight => 2);
SELECT cardinality(tq_submit_many('reports', array_fill('{}'::jsonb, ARRAY[1000]), tenant => 'big')) AS big,
       cardinality(tq_submit_many('reports', array_fill('{}'::jsonb, ARRAY[20]), tenant => 'small-1')) AS "small-1",
       cardinality(tq_submit_many('reports', array_fill('{}'::jsonb, ARRAY[20]), tenant => 'small-2')) AS "small-2 (weight 2)";
-- A worker leases 40: big gets a quarter, not 96 %; the queue's concurrency quota (50) holds.
SELECT tenant, count(*) AS "of the first 40 leased" FROM tq_lease('demo', ARRAY['reports'], 40) GROUP BY tenant ORDER BY tenant;
SELECT count(*) AS "more leased while 40 run (quota 50)" FROM tq_lease('demo', ARRAY['reports'], 100);
SELECT tenant, ready, running FROM tq_tenants WHERE queue = 'reports' ORDER BY tenant;
SELECT tq_drop_queue('reports', force => true);
SQL

step "Queue stats"
psql -c "SELECT queue, scheduled, ready, running, succeeded, dead, cancelled, expired FROM tq_queue_stats_exact ORDER BY queue"

step "The background worker"
psql -c "SELECT running, passes, notifications FROM tq_worker_status()"
echo
echo "demo: done; the cluster is stopped and removed on exit"
