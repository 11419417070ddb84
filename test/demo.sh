#!/usr/bin/env bash
#
# demo.sh: the main job, end to end, on a throwaway cluster.
#
# Starts a PostgreSQL cluster with tq preloaded (as the postgres OS user, on a
# private socket), creates two queues, submits example tasks -- one that
# succeeds, one that fails once and is retried, one that is dead-lettered,
# a duplicate, a delayed task and a bulk batch -- and runs a worker written
# in plain SQL against them (lease, do the work, complete or fail) until
# every task has finished.  Then it prints the tasks and the queue stats.
# The cluster is stopped and removed on exit, also on failure.
#
# tq's background worker promotes the delayed task and the retries on
# time and sends tq_ready; tqd, the worker daemon, replaces the SQL worker
# when it lands.
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

step "A worker in plain SQL: lease up to 100, do the work, report, repeat"
psql <<'SQL'
-- The "work": succeed, fail once, fail with bad input, or always fail.
CREATE FUNCTION demo_worker_round() RETURNS TABLE (leased int, succeeded int, failed int)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    leased := 0; succeeded := 0; failed := 0;
    FOR t IN SELECT * FROM tq_lease('demo-worker', ARRAY['email', 'thumbnails'], 100) LOOP
        leased := leased + 1;
        CASE t.payload->>'work'
            WHEN 'fail_once' THEN
                IF t.attempt = 1 THEN
                    PERFORM tq_fail(t.id, t.attempt, 'converter crashed (transient)');
                    failed := failed + 1; CONTINUE;
                END IF;
            WHEN 'bad_input' THEN
                PERFORM tq_fail(t.id, t.attempt, 'invalid address: ' || (t.payload->>'to'), retry => 'never');
                failed := failed + 1; CONTINUE;
            WHEN 'always_fail' THEN
                PERFORM tq_fail(t.id, t.attempt, format('SMTP 451 on attempt %s', t.attempt));
                failed := failed + 1; CONTINUE;
            ELSE NULL;
        END CASE;
        PERFORM tq_complete(t.id, t.attempt, jsonb_build_object('done_by', 'demo-worker', 'attempt', t.attempt));
        succeeded := succeeded + 1;
    END LOOP;
    RETURN NEXT;
END $$;
SQL

# Rounds until nothing is live, with a deadline; retries wait out their backoff.
deadline=$((SECONDS + 60))
round=0
while :; do
	live=$(psql -At -c "SELECT sum(scheduled + ready + paused + running) FROM tq_queue_stats")
	[ "$live" -eq 0 ] && break
	if [ $SECONDS -ge $deadline ]; then
		echo "demo: tasks still live after 60 s" >&2
		exit 1
	fi
	out=$(psql -At -F ' ' -c "SELECT * FROM demo_worker_round()")
	read -r leased ok failed <<<"$out"
	round=$((round + 1))
	if [ "$leased" -gt 0 ]; then
		printf 'round %2d: leased %4d, succeeded %4d, failed %d\n' "$round" "$leased" "$ok" "$failed"
	else
		sleep 0.2	# nothing ready: retries and the delayed task are waiting
	fi
done

step "Results: each example task"
psql <<'SQL'
\pset footer off
SELECT d.name, t.id, t.state, t.attempts, coalesce(t.result::text, t.last_error) AS "result or last error"
  FROM demo_ids d CROSS JOIN LATERAL tq_task(d.id) t
 ORDER BY t.id, d.name;
SQL

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
