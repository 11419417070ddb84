# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154	# top and log come from, results and want_* go to, the sourcing script
#
# lib.sh: what the benchmark scripts share -- test/bench/run.sh (`make
# bench`) and test/bench/observability.sh (rows 10 and 11, which run.sh
# also runs, and which can run alone): the server settings of the bench
# cluster, starting it and printing the header, the row selection
# (TQ_BENCH_ONLY), logging, psql and the figures' arithmetic, the server's
# CPU time, and the result tables.
#
# Source it after setting top (the repository); set log (the log file)
# before calling anything that logs.  It sources test/cluster.sh.

# shellcheck source=test/cluster.sh
. "$top/test/cluster.sh"

results=$top/test/results/bench

# The database the background worker serves (tq.database, below).
worker_db=bench_worker

# Server settings for a 2-core / 24 GiB machine.  Appended after
# cluster.sh's own lines, so these win.  Durability: fsync and
# full_page_writes stay on; synchronous_commit is off, which applies to tq
# and to the floor alike.
bench_conf="
# Added by test/bench/lib.sh (the benchmark).
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

# bench_select: reads TQ_BENCH_ONLY, a comma-separated list of the rows to
# run: "1-9" (the rows of run.sh's two tables, which run as one group:
# later rows are measured against earlier ones, and they share databases),
# 10 and 11 (observability.sh).  Unset or empty: all of them.  Sets
# want_main, want_10 and want_11 to 1 or 0; exits 2 on anything else.
bench_select()
{
	local only=${TQ_BENCH_ONLY:-} s sel
	want_main=0 want_10=0 want_11=0
	if [ -z "$only" ]; then
		want_main=1 want_10=1 want_11=1
		return 0
	fi
	IFS=, read -ra sel <<<"$only"
	for s in "${sel[@]}"; do
		case ${s// /} in
		1-9) want_main=1 ;;
		10) want_10=1 ;;
		11) want_11=1 ;;
		[1-9])
			echo "bench: TQ_BENCH_ONLY: rows 1 to 9 run together (later rows are measured against earlier ones); write 1-9, not $s" >&2
			exit 2
			;;
		*)
			echo "bench: TQ_BENCH_ONLY must list 1-9, 10 and 11 (comma-separated), not \"$only\"" >&2
			exit 2
			;;
		esac
	done
}

# check_positive NAME=VALUE...: exits 2 unless every VALUE is a positive
# integer.
check_positive()
{
	local v
	for v in "$@"; do
		case ${v#*=} in
		'' | *[!0-9]* | 0*)
			echo "bench: ${v%%=*} must be a positive integer, not \"${v#*=}\"" >&2
			exit 2
			;;
		esac
	done
}

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

drop_db()
{
	q postgres 'SET client_min_messages = warning' "DROP DATABASE IF EXISTS $1" || fail "could not drop database $1"
}

# bench_cluster_start PORT: the benchmark's cluster (test/cluster.sh with
# bench_conf), stopped and removed by the EXIT trap.
bench_cluster_start()
{
	TQ_TEST_PORT=$1 TQ_TEST_CONF=$bench_conf tq_cluster_start ||
		fail "could not start the benchmark cluster on port $1"
	# shellcheck disable=SC2154	# set by tq_cluster_start
	logonly "cluster: $tq_cluster_dir, port $1"
}

# bench_header TITLE: the first lines of the output: what, when, the
# machine and its load, the server, pgbench, the settings.  Sets load_start.
bench_header()
{
	local settings_sql
	say "$1: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), log: $log"
	load_start=$(cut -d' ' -f1-3 /proc/loadavg)
	say "machine: nproc $(nproc), $(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo), load average $load_start"
	say "server: $(q postgres 'SELECT version()')"
	say "$(pgbench --version)"
	settings_sql="SELECT string_agg(name || ' = ' || current_setting(name), ', ' ORDER BY ord)
	                FROM unnest(string_to_array(\$\$$(tr '\n' ' ' <<<"$shown_settings")\$\$, ' '))
	                     WITH ORDINALITY AS s(name, ord)
	               WHERE name <> ''"
	say "settings: $(q postgres "$settings_sql" | fold -s -w 110 | sed '2,$s/^/          /')"
}

# calc EXPR: floating-point arithmetic.
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

# median X...: the median of the numbers (the mean of the middle two of an
# even count).
median()
{
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
		END { printf "%.6f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# server_cpu: CPU seconds the server has used so far: the postmaster and its
# live children (backends, background worker, autovacuum, checkpointer...)
# from /proc, plus the children it has reaped (cutime and cstime of the
# postmaster).  The difference across a run is the server's CPU time for
# that run, which other work on the machine hardly changes, unlike the
# rate (row 5 shows both).  A backend that is exiting, or has exited but
# is not reaped yet, may show no time at all while its time is not yet the
# postmaster's either, so this first waits (up to 5 s) until no client
# backend is left (pgbench's are exiting when pgbench returns; this
# script's own sessions are over) and no child is ending (its command line
# reads empty then).  Only client backends name a socket ("[local]"): the
# cluster listens on no TCP address.
clk_tck=$(getconf CLK_TCK)
server_cpu()
{
	local pm p c busy
	pm=$(head -n 1 "$tq_cluster_datadir/postmaster.pid")
	for _ in $(seq 500); do
		busy=0
		for p in $(pgrep -P "$pm"); do
			c=$({ tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null) || continue
			case $c in
			'' | *'[local]'*)
				busy=1
				break
				;;
			esac
		done
		[ "$busy" = 1 ] || break
		sleep 0.01
	done
	{
		cat "/proc/$pm/stat"
		# A child may end meanwhile: its time is then in the postmaster's.
		for p in $(pgrep -P "$pm"); do
			cat "/proc/$p/stat" 2>/dev/null || true
		done
	} | awk -v pm="$pm" -v hz="$clk_tck" '
		{
			pid = $1
			line = $0
			sub(/^.*\) /, "", line)
			split(line, f, " ")
			# f[12], f[13]: utime, stime; f[14], f[15]: those of its reaped
			# children.
			t += f[12] + f[13]
			if (pid == pm)
				t += f[14] + f[15]
		}
		END { printf "%.2f", t / hz }'
}

# ---------------------------------------------------------------------------
# The result tables.

rows=()
# The second table (rows 5 to 9): a measured figure beside its reference.
rows2=()
# The third table (rows 10 and 11, observability.sh).
rows3=()

# row MEASUREMENT TQ FLOOR RATIO TARGET MET
row() { rows+=("$(printf '%s|%s|%s|%s|%s|%s' "$@")"); }
# row2 MEASUREMENT MEASURED REFERENCE RATIO TARGET MET
row2() { rows2+=("$(printf '%s|%s|%s|%s|%s|%s' "$@")"); }
# row3 MEASUREMENT MEASURED REFERENCE RATIO TARGET MET
row3() { rows3+=("$(printf '%s|%s|%s|%s|%s|%s' "$@")"); }

fmt_rate() { awk "BEGIN { printf \"%.0f\", $1 }"; }
fmt_ratio() { awk "BEGIN { printf \"%.2f\", $1 }"; }
fmt_1() { awk "BEGIN { printf \"%.1f\", $1 }"; }

# met VALUE THRESHOLD: yes when VALUE >= THRESHOLD.
met() { awk "BEGIN { print ($1 >= $2) ? \"yes\" : \"no\" }"; }

# thousands 12345: 12 345
thousands() { printf '%d' "$1" | sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\| \)/\1 \2\3/' -e 'ta'; }

# print_table [ARRAY HEADER_MEASURED HEADER_REFERENCE HEADER_RATIO]: the
# rows of ARRAY (default: rows, the first table).
print_table()
{
	local -n tbl=${1:-rows}
	local r fmt='%-59s | %15s | %14s | %8s | %-22s | %s\n'
	# shellcheck disable=SC2059
	{
		printf "$fmt" measurement "${2:-tq (tasks/s)}" "${3:-floor (rows/s)}" "${4:-tq/floor}" target 'met?'
		printf '%s\n' "$(printf '%.0s-' {1..140})"
		for r in "${tbl[@]}"; do
			IFS='|' read -r m a b c d e <<<"$r"
			printf "$fmt" "$m" "$a" "$b" "$c" "$d" "$e"
		done
	} | tee -a "$log"
}
