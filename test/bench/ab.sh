#!/usr/bin/env bash
# A/B of tq's hot paths against an earlier revision, on the same machine,
# in interleaved rounds: `make bench-ab` (BASE=<git revision>, default the
# last 0.6.0 commit).  Each side's extension is built and installed into a
# private copy of the PostgreSQL installation (its binaries find their
# files relative to themselves), so the system's installation is not
# touched and both servers run at once, each on its own port.
#
# Rows (pgbench, one script each, TQ_AB_SECONDS per round):
#   submit1, submit8   tq_submit, one task per transaction, 1 and 8 clients
#   cycle1, cycle50    lease 1 / 50 + tq_complete + tq_submit_many of as
#                      many (constant backlog), 4 clients
# Printed: the median of the rounds per side and their ratio (new / base),
# with every round's figure, at synchronous_commit = TQ_AB_SYNC (on, as
# users run; off shows the CPU path alone).  The first rounds of the cycle
# rows warm the 200 000-task backlog up and come out low on both sides.
#
# Settings: BASE, TQ_AB_SYNC (on), TQ_AB_ROUNDS (5), TQ_AB_SECONDS (8),
# TQ_AB_ROWS ("submit1 submit8 cycle1 cycle50"), TQ_AB_PORT (21050: it
# and the next).
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
base=${BASE:-7206ca7~1}
sync=${TQ_AB_SYNC:-on}
rounds=${TQ_AB_ROUNDS:-5}
secs=${TQ_AB_SECONDS:-8}
rows=${TQ_AB_ROWS:-submit1 submit8 cycle1 cycle50}
port0=${TQ_AB_PORT:-21050}
work=$(mktemp -d /tmp/tq-ab.XXXXXX)
chmod 755 "$work"
declare -A port=([base]=$port0 [new]=$((port0 + 1)))

run_pg() { # as the postgres OS user when root (PostgreSQL refuses root)
	if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else bash -c "$*"; fi
}

# A private copy of the installation pg_config names, under $1.
copy_pg() {
	local p=$1 d
	for d in "$(pg_config --bindir)/.." "$(pg_config --sharedir)" "$(pg_config --includedir)"; do
		d=$(cd "$d" && pwd)
		mkdir -p "$p$(dirname "$d")"
		cp -a "$d" "$p$(dirname "$d")/"
	done
	echo "$p$(cd "$(pg_config --bindir)" && pwd)"
}

stop_all() {
	local v
	for v in base new; do
		[ -d "$work/$v/data" ] && run_pg "'${bin[$v]}/pg_ctl' -D '$work/$v/data' -m immediate stop" >/dev/null 2>&1
	done
	rm -rf "$work"
}
declare -A bin
trap stop_all EXIT

echo "ab: building $base and the working tree into private copies under $work"
bin[base]=$(copy_pg "$work/pg-base")
bin[new]=$(copy_pg "$work/pg-new")
mkdir -p "$work/src-base"
git -C "$top" archive "$base" | tar -x -C "$work/src-base"
make -s -C "$work/src-base/extension" PG_CONFIG="${bin[base]}/pg_config" install >/dev/null
make -s -C "$top/extension" PG_CONFIG="${bin[new]}/pg_config" install >/dev/null
echo "ab: base $(git -C "$top" rev-parse --short "$base") ($(sed -n "s/^default_version = '\(.*\)'/\1/p" "$work/src-base/extension/tq.control")), new: the working tree ($(git -C "$top" rev-parse --short HEAD))"

for v in base new; do
	mkdir -p "$work/$v"
	chown postgres "$work/$v" 2>/dev/null || true
	run_pg "'${bin[$v]}/initdb' -D '$work/$v/data' -A trust >/dev/null"
	cat >>"$work/$v/data/postgresql.conf" <<EOF
shared_preload_libraries = 'tq'
port = ${port[$v]}
unix_socket_directories = '$work/$v'
listen_addresses = ''
synchronous_commit = $sync
shared_buffers = 512MB
max_connections = 50
tq.database = ''
EOF
	run_pg "'${bin[$v]}/pg_ctl' -D '$work/$v/data' -l '$work/$v/log' -w start" >/dev/null
	"${bin[$v]}/psql" -h "$work/$v" -p "${port[$v]}" -U postgres -qAt -v ON_ERROR_STOP=1 -c "
		CREATE EXTENSION tq; SELECT tq_create_queue('bench');
		SELECT count(*) FROM (SELECT tq_submit_many('bench', array_fill('{\"n\":1}'::jsonb, ARRAY[200000]))) x;" >/dev/null
done

cat >"$work/submit.sql" <<'EOF'
SELECT tq_submit('bench', '{"n":1}');
EOF
cat >"$work/cycle.sql" <<'EOF'
WITH l AS (SELECT * FROM tq_lease('bench-' || :client_id, '{bench}', :batch)),
     c AS (SELECT tq_complete(array_agg(id), array_agg(attempt), NULL) AS ok
             FROM l HAVING count(*) > 0)
SELECT cardinality(tq_submit_many('bench', array_fill('{"n":1}'::jsonb, ARRAY[cardinality(ok)])))
  FROM c;
EOF

tps() { # side clients script [pgbench options]
	local v=$1 c=$2 f=$3
	shift 3
	"${bin[$v]}/pgbench" -h "$work/$v" -p "${port[$v]}" -U postgres -n -c "$c" -j "$c" -T "$secs" \
		-f "$work/$f" "$@" postgres 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
row() { # side row
	case $2 in
	submit1) tps "$1" 1 submit.sql ;;
	submit8) tps "$1" 8 submit.sql ;;
	cycle1) tps "$1" 4 cycle.sql -D batch=1 ;;
	cycle50) tps "$1" 4 cycle.sql -D batch=50 ;;
	*) echo "ab: unknown row $2" >&2 && exit 1 ;;
	esac
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

declare -A got
for ((r = 1; r <= rounds; r++)); do
	for k in $rows; do
		for v in base new; do
			got[$v,$k]+="$(printf '%.0f' "$(row "$v" "$k")") "
		done
	done
done

printf '\n%-9s %9s %9s %6s   rounds (tps), synchronous_commit = %s, %d x %d s\n' row base new ratio "$sync" "$rounds" "$secs"
for k in $rows; do
	b=$(echo "${got[base,$k]}" | median)
	n=$(echo "${got[new,$k]}" | median)
	printf '%-9s %9d %9d %6.3f   base: %s new: %s\n' "$k" "$b" "$n" "$(echo "$n / $b" | bc -l)" \
		"${got[base,$k]}" "${got[new,$k]}"
done
