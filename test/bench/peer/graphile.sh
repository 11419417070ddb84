#!/usr/bin/env bash
# The peer queue (issue 16): graphile-worker draining pre-queued no-op
# jobs, for the drain table (test/bench/drain.sh, TQ_BENCH_PEER=1) to show
# beside tqd.  Usage:
#
#   test/bench/peer/graphile.sh DB C N
#
# on a running cluster reached through PGHOST, PGPORT and PGUSER (a
# superuser: it checkpoints), in the existing database DB.
#
# graphile-worker, the version pinned in package.json (package-lock.json),
# is installed with npm ci into test/bench/peer/node_modules when that is
# not there already.  Then, in graphile_drain.mjs: the schema
# graphile_worker, dropped first, is rebuilt by the library's migrations; N
# jobs of task "noop", payload {}, are queued in one
# graphile_worker.add_jobs call; VACUUM ANALYZE of the jobs table and a
# CHECKPOINT, as drain.sh does before tqd's drain; then one runner (one
# node process) with graphile-worker's own throughput preset
# (website/docs/performance.md): concurrentJobs C, local queue C + 1,
# completions and failures batched for 250 ms, pollInterval left at its
# default, maxPoolSize max(10, C + 2), the task `async () => {}`.
#
# Timed: from starting the runner (run(): connecting, the migration check,
# starting the pool; not node's start-up nor loading the package) until a
# poll finds graphile_worker._private_jobs empty -- graphile-worker deletes
# a job when it writes its completion, which the preset batches, so the
# last batch's 250 ms count.  The table is polled every 10 ms once the
# runner has reported all N jobs successful (so the polling does not load
# the drain).  Then the runner is stopped gracefully (untimed) and every
# job must have succeeded, none may be left, and no error reported.
#
# Printed on stdout, one line (diagnostics on stderr):
#   graphile-worker VERSION c=C n=N secs=S rate=JOBS_PER_S synchronous_commit=S
# synchronous_commit as the server reports it to the worker's connection.
# Exits non-zero, with a message on stderr, on any failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

fail()
{
	echo "graphile.sh: $*" >&2
	exit 1
}

[ $# -eq 3 ] || fail "usage: graphile.sh DB C N"
db=$1 c=$2 n=$3
[[ $c =~ ^[1-9][0-9]*$ ]] || fail "C must be a positive integer, not '$c'"
[[ $n =~ ^[1-9][0-9]*$ ]] || fail "N must be a positive integer, not '$n'"
[ -n "${PGHOST:-}" ] || fail "PGHOST must name the cluster's socket directory"
[ -n "${PGPORT:-}" ] || fail "PGPORT must name the cluster's port"
command -v node >/dev/null || fail "node is not installed"
command -v npm >/dev/null || fail "npm is not installed"

# Install (idempotent): the pinned version, as in package.json.
want=$(node -p 'require(process.argv[1]).dependencies["graphile-worker"]' "$here/package.json")
have=$(node -p 'try { require(process.argv[1]).version } catch { "" }' \
	"$here/node_modules/graphile-worker/package.json" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
	echo "graphile.sh: installing graphile-worker $want into $here/node_modules" >&2
	# No install scripts are needed (pg's native binding is not used);
	# --ignore-scripts also keeps npm from running any as root.
	if [ -f "$here/package-lock.json" ]; then
		npm_cmd=ci
	else
		npm_cmd=install
	fi
	(cd "$here" && npm "$npm_cmd" --ignore-scripts --no-audit --no-fund --loglevel=error) >&2 ||
		fail "npm $npm_cmd failed in $here"
fi

psql -qAtX -v ON_ERROR_STOP=1 -d "$db" -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS graphile_worker CASCADE" >&2 ||
	fail "could not reach database $db or drop its schema graphile_worker"

# graphile-worker reads DATABASE_URL before PG*, and GRAPHILE_WORKER_SCHEMA
# for its schema: neither may come from the caller.
unset DATABASE_URL GRAPHILE_WORKER_SCHEMA
PGDATABASE=$db NO_LOG_SUCCESS=1 node "$here/graphile_drain.mjs" "$c" "$n" ||
	fail "graphile-worker c=$c n=$n failed (see above)"
