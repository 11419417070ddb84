#!/usr/bin/env bash
# The drain table (issue 16): `make bench-drain`, after `make install`;
# `make bench` runs it too.  What a user sees end to end at the
# durability users run.
#
# Rows, each at synchronous_commit = on (the default) and then off:
#   - tqd, noop handler, draining TQ_DRAIN_N (50 000) tasks queued
#     beforehand (tq_submit_many, no tenant), one tqd with slots =
#     concurrency = c, for c = 8 and 32;
#   - the same through the http handler to the test server
#     (worker/test/tqtest_httpd: answers 200 at once), window fixed at c;
#   - with TQ_DRAIN_BASE=<git revision> (make bench: 0.6.0's last commit),
#     the noop and http rows again with that revision's tqd (built from
#     git archive into a temporary directory), on the same server and
#     extension: the ratios of today's tqd to that one;
#   - with TQ_BENCH_PEER=1, graphile-worker (test/bench/peer/graphile.sh:
#     installed from npm into test/bench/peer, its own throughput preset,
#     local queue c + 1, completions batched for 250 ms) draining as many
#     no-op jobs on the same cluster, at the same c, right after tqd's row:
#     the ratio tqd / graphile-worker is the issue's target (>= 2).
# Each figure is the median of TQ_DRAIN_ROUNDS (3) runs, the rounds
# interleaved (tqd, http, peer, tqd, ...) so that a slow spell of the
# machine hits all alike.  A run's time is from starting the worker to
# no task left (tq: tq_queue_stats' live counts, polled every 10 ms), and
# every run checks that all its tasks succeeded.  Also shown per task:
# the server's CPU (the postmaster and its children, from /proc) and
# tqd's own (utime + stime of the process).
#
# The cluster: test/cluster.sh with lib.sh's bench settings (fsync and
# full_page_writes on, shared_buffers 2GB); synchronous_commit set per
# row with ALTER SYSTEM and a reload.
#
# Settings: TQ_DRAIN_N, TQ_DRAIN_ROUNDS, TQ_DRAIN_CS ("8 32"),
# TQ_DRAIN_SYNC ("on off"), TQ_DRAIN_HTTP (1; 0 skips the http rows),
# TQ_DRAIN_BASE,
# TQ_BENCH_PEER, TQ_BENCH_PORT (21080), TQD_EXTRA (more [tqd] keys, for
# trying settings).
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$top"
benchdir=$top/test/bench
# shellcheck source=test/bench/lib.sh
. "$benchdir/lib.sh"

n=${TQ_DRAIN_N:-50000}
rounds=${TQ_DRAIN_ROUNDS:-3}
cs=${TQ_DRAIN_CS:-8 32}
syncs=${TQ_DRAIN_SYNC:-on off}
http=${TQ_DRAIN_HTTP:-1}
peer=${TQ_BENCH_PEER:-0}
port=${TQ_BENCH_PORT:-21080}
check_positive "TQ_DRAIN_N=$n" "TQ_DRAIN_ROUNDS=$rounds" "TQ_BENCH_PORT=$port"
tqd_bin=$top/worker/tqd
httpd_bin=$top/worker/test/tqtest_httpd
clk_tck=$(getconf CLK_TCK)

mkdir -p "$results"
log=$results/drain-$(date +%Y%m%d-%H%M%S).log
: >"$log"
bench_cluster_start "$port"
bench_header "tq drain benchmark"
db=drain
q postgres "CREATE DATABASE $db" >/dev/null
q "$db" "CREATE EXTENSION tq" >/dev/null
q "$db" "SELECT tq_create_queue('drain')" >/dev/null
work=$(mktemp -d /tmp/tq-drain.XXXXXX)
chmod 755 "$work"
httpd_pid=
cleanup_drain() { [ -z "$httpd_pid" ] || kill "$httpd_pid" 2>/dev/null || true; rm -rf "$work"; }
trap 'cleanup_drain' EXIT
if [ "$peer" = 1 ]; then
	q postgres "CREATE DATABASE peer" >/dev/null
fi
base=${TQ_DRAIN_BASE:-}
base_bin=
if [ -n "$base" ]; then
	mkdir -p "$work/base"
	git -C "$top" archive "$base" worker | tar -x -C "$work/base" || fail "git archive $base failed"
	make -C "$work/base/worker" >>"$log" 2>&1 || fail "could not build tqd at $base; see $log"
	base_bin=$work/base/worker/tqd
	base_version=$("$base_bin" --version | sed 's/^tqd //')
	say "base: tqd $base_version from $base"
fi
if [ "$http" = 1 ]; then
	[ -x "$httpd_bin" ] || fail "$httpd_bin is not built (make -C worker test/tqtest_httpd)"
	"$httpd_bin" --port 0 >"$work/httpd.out" 2>&1 &
	httpd_pid=$!
	for _ in $(seq 200); do grep -q 'listening port=' "$work/httpd.out" && break; sleep 0.05; done
	httpd_port=$(sed -n 's/^listening port=//p' "$work/httpd.out")
	[ -n "$httpd_port" ] || fail "the test HTTP server did not start"
fi

set_sync()
{
	q postgres "ALTER SYSTEM SET synchronous_commit = $1" >/dev/null
	q postgres "SELECT pg_reload_conf()" >/dev/null
	[ "$(q "$db" "SHOW synchronous_commit")" = "$1" ] || fail "synchronous_commit did not become $1"
}

# tqd_conf C HANDLER: a configuration for one queue at concurrency C.
tqd_conf()
{
	cat <<CONF
[tqd]
conninfo = host=$PGHOST port=$PGPORT dbname=$db user=postgres
slots = $1
log_level = warning
${TQD_EXTRA:-}

[queue:drain]
concurrency = $1
CONF
	if [ "$2" = http ]; then
		printf 'handler = http\nurl = http://127.0.0.1:%s/ok\nadaptive = off\n' "$httpd_port"
	else
		printf 'handler = noop\n'
	fi
}

# drained QUEUE WHAT: returns once QUEUE has no live task, polling
# tq_queue_stats (shared counters) every 10 ms from one session on the
# server: a psql per poll would cost the server a backend start each time.
drained()
{
	q "$db" "SET statement_timeout = '600s'" "DO \$\$ BEGIN
	           WHILE (SELECT scheduled + ready + paused + running FROM tq_queue_stats WHERE queue = '$1') > 0 LOOP
	               PERFORM pg_sleep(0.01);
	           END LOOP; END \$\$" >/dev/null || fail "$2: tasks still live after 600 s"
}

# tqd_run C HANDLER [BIN]: one drain; prints "rate server_us tqd_us".
tqd_run()
{
	local c=$1 h=$2 bin=${3:-$tqd_bin} before pid t0 t1 cpu0 cpu1 tcpu done_n
	tqd_conf "$c" "$h" >"$work/tqd.conf"
	before=$(q "$db" "SELECT count(*) FROM tq.history WHERE state = 'succeeded'")
	q "$db" "SELECT count(*) FROM tq_submit_many('drain', array_fill('{}'::jsonb, ARRAY[$n]))" >/dev/null
	q "$db" "VACUUM ANALYZE tq.task" >/dev/null
	q "$db" "CHECKPOINT" >/dev/null
	cpu0=$(server_cpu)
	t0=$(date +%s.%N)
	"$bin" -c "$work/tqd.conf" 2>>"$work/tqd.log" &
	pid=$!
	drained drain "tqd c=$c $h"
	t1=$(date +%s.%N)
	tcpu=$(awk -v n="$n" -v hz="$clk_tck" '{ printf "%.1f", ($14 + $15) / hz * 1000000 / n }' "/proc/$pid/stat")
	kill -TERM "$pid"
	wait "$pid" || fail "tqd c=$c $h exited with an error; see $work/tqd.log"
	cpu1=$(server_cpu)
	done_n=$(($(q "$db" "SELECT count(*) FROM tq.history WHERE state = 'succeeded'") - before))
	[ "$done_n" -eq "$n" ] || fail "tqd c=$c $h: $done_n of $n tasks succeeded"
	logonly "tqd c=$c $h: $n tasks in $(calc "$t1 - $t0") s"
	echo "$(calc "$n / ($t1 - $t0)") $(calc "($cpu1 - $cpu0) / $n * 1000000") $tcpu"
}

# peer_run C: prints "rate server_us -" (the server's CPU of the drain
# alone, which graphile_drain.mjs reads from /proc).
peer_run()
{
	local out rate cpu
	out=$(TQ_PEER_PM_PID=$(head -n 1 "$tq_cluster_datadir/postmaster.pid") \
		"$benchdir/peer/graphile.sh" peer "$1" "$n" 2>>"$log") || fail "graphile-worker c=$1 failed; see $log"
	logonly "$out"
	rate=$(sed -n 's/.* rate=\([0-9.]*\).*/\1/p' <<<"$out")
	cpu=$(sed -n 's/.* server_cpu_s=\([0-9.]*\).*/\1/p' <<<"$out")
	echo "$rate $(calc "$cpu / $n * 1000000") -"
}

declare -A fig
peer_version=
[ "$peer" != 1 ] || peer_version=$(sed -n 's/.*"graphile-worker": *"\([^"]*\)".*/\1/p' "$benchdir/peer/package.json")
for s in $syncs; do
	set_sync "$s"
	for c in $cs; do
		for r in $(seq "$rounds"); do
			fig[$s,$c,noop,$r]=$(tqd_run "$c" noop)
			[ "$http" != 1 ] || fig[$s,$c,http,$r]=$(tqd_run "$c" http)
			if [ -n "$base_bin" ]; then
				fig[$s,$c,bnoop,$r]=$(tqd_run "$c" noop "$base_bin")
				[ "$http" != 1 ] || fig[$s,$c,bhttp,$r]=$(tqd_run "$c" http "$base_bin")
			fi
			[ "$peer" != 1 ] || fig[$s,$c,peer,$r]=$(peer_run "$c")
			logonly "round $r sync=$s c=$c: noop ${fig[$s,$c,noop,$r]} http ${fig[$s,$c,http,$r]:-} peer ${fig[$s,$c,peer,$r]:-}"
		done
	done
done

# med S C KIND FIELD: the median of a field (1 rate, 2 server us, 3 tqd us).
med()
{
	local r vals=()
	for r in $(seq "$rounds"); do
		vals+=("$(cut -d' ' -f"$4" <<<"${fig[$1,$2,$3,$r]}")")
	done
	median "${vals[@]}"
}
say ""
say "drain of $n tasks queued beforehand, one worker process, median of $rounds (tasks/s; CPU us per task)"
printf '%-44s %10s %10s %9s %9s\n' "row" "sync on" "sync off" "srv us" "tqd us" | tee -a "$log"
line() { printf '%-44s %10s %10s %9s %9s\n' "$@" | tee -a "$log"; }
for c in $cs; do
	kinds="noop"
	[ "$http" != 1 ] || kinds="$kinds http"
	[ -z "$base_bin" ] || kinds="$kinds bnoop"
	[ -z "$base_bin" ] || [ "$http" != 1 ] || kinds="$kinds bhttp"
	[ "$peer" != 1 ] || kinds="$kinds peer"
	for k in $kinds; do
		case $k in
		noop) name="tqd, noop, c=$c" ;;
		http) name="tqd, http to tqtest_httpd, c=$c" ;;
		bnoop) name="tqd $base_version, noop, c=$c" ;;
		bhttp) name="tqd $base_version, http, c=$c" ;;
		peer) name="graphile-worker $peer_version, c=$c" ;;
		esac
		on=- off=- srv=- tcpu=-
		case " $syncs " in *" on "*) on=$(fmt_rate "$(med on "$c" "$k" 1)")
			srv=$(fmt_rate "$(med on "$c" "$k" 2)")
			[ "$k" = peer ] || tcpu=$(fmt_1 "$(med on "$c" "$k" 3)") ;; esac
		case " $syncs " in *" off "*) off=$(fmt_rate "$(med off "$c" "$k" 1)") ;; esac
		line "$name" "$on" "$off" "$srv" "$tcpu"
	done
	if [ -n "$base_bin" ]; then
		for s in $syncs; do
			say "  tqd / tqd $base_version, c=$c, sync $s: noop $(fmt_ratio "$(calc "$(med "$s" "$c" noop 1) / $(med "$s" "$c" bnoop 1)")")$(
				[ "$http" != 1 ] || printf ', http %s (target >= 1.5 at c=32)' "$(fmt_ratio "$(calc "$(med "$s" "$c" http 1) / $(med "$s" "$c" bhttp 1)")")")"
		done
		case " $syncs " in *" on "*)
			[ "$http" != 1 ] || say "  tqd CPU per pushed task, c=$c: $(fmt_ratio "$(calc "$(med on "$c" http 3) / $(med on "$c" bhttp 3)")") of tqd $base_version's (target <= 0.5)" ;;
		esac
	fi
	if [ "$peer" = 1 ]; then
		for s in $syncs; do
			say "  tqd noop / graphile-worker, c=$c, sync $s: $(fmt_ratio "$(calc "$(med "$s" "$c" noop 1) / $(med "$s" "$c" peer 1)")") (target >= 2)"
		done
	fi
done
say "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
