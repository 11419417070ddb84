#!/usr/bin/env bash
# Upgrade-path test for the tq extension.
#
# A user who installed an old tq and ran ALTER EXTENSION tq UPDATE after
# every release must end up with exactly the database a fresh install of
# the current version gives.  The two are built from different files: a
# fresh install runs sql/tq.sql, the whole current schema (installed as
# tq--<default_version>.sql), an update runs the upgrade scripts.  A change
# made in one and not in the other fails this test.
#
#   1. Check that the server has the repository's scripts: the install
#      script of default_version (extension/tq.control) identical to
#      sql/tq.sql, and the oldest release's script and every upgrade script
#      identical to theirs in sql/.  Otherwise we would test whatever an
#      older `make install` left behind, or a default version that
#      PostgreSQL builds from the upgrade chain itself.
#   2. In a fresh database, CREATE EXTENSION tq at the oldest version that
#      has a full install script (sql/tq--X.sql, the frozen base).
#   3. Walk ALTER EXTENSION tq UPDATE TO each next version reachable through
#      the upgrade scripts (sql/tq--A--B.sql), in version order, up to
#      default_version, checking pg_extension's extversion after every step.
#   4. In another fresh database, CREATE EXTENSION tq: default_version, from
#      its own install script.
#   5. Compare the two catalog footprints (test/upgrade/footprint.sql says
#      what they hold: members, columns, constraints, indexes, triggers,
#      function bodies and properties, views, comments, privileges, the
#      config tables pg_dump keeps, data).  Any difference is printed as a
#      diff and fails the test.
#
# It talks to whatever server the libpq environment (PGHOST, PGPORT, PGUSER)
# points at, as a superuser (step 1 reads the installed files);
# test/run-tests.sh runs it against its throwaway cluster.  The extension
# must have been installed there with `make install`.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
walk_db=tq_upgrade_walk
direct_db=tq_upgrade_direct
workdir=$(mktemp -d /tmp/tq-upgrade.XXXXXX)

psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -d postgres -c 'SET client_min_messages = warning' "$@"; }
psql_in() { local db=$1; shift; psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$db" "$@"; }

cleanup()
{
	psql_admin -c "DROP DATABASE IF EXISTS $walk_db" -c "DROP DATABASE IF EXISTS $direct_db" \
		>/dev/null 2>&1 || true
	rm -rf "$workdir"
}
trap cleanup EXIT

fail() { echo "upgrade: FAILED: $*" >&2; exit 1; }

# Versions.  The current schema is sql/tq.sql; full install scripts of
# older releases are tq--X.sql (the build's copy of sql/tq.sql,
# tq--<default_version>.sql, may be there too); upgrade scripts tq--A--B.sql.
default_version=$(sed -n "s/^default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" \
	"$top/extension/tq.control")
[ -n "$default_version" ] || fail "no default_version in extension/tq.control"
[ -f "$top/sql/tq.sql" ] || fail "no sql/tq.sql, the current schema"

full_versions=()
upgrades=()
shopt -s nullglob
for f in "$top"/sql/tq--*.sql; do
	base=${f##*/}
	base=${base#tq--}
	base=${base%.sql}
	case $base in
	*--*) upgrades+=("$base") ;;                  # A--B
	"$default_version") ;;                        # built from sql/tq.sql
	*) full_versions+=("$base") ;;
	esac
done
shopt -u nullglob
[ "${#full_versions[@]}" -gt 0 ] ||
	fail "no full install script of an older release (sql/tq--<version>.sql) to start the walk from"

oldest=$(printf '%s\n' "${full_versions[@]}" | sort -V | head -n 1)

# The walk: from the current version, take the upgrade script to the lowest
# higher version, until default_version.  Every released version on the way
# is visited, so each upgrade script is run in the order users run them.
path=("$oldest")
current=$oldest
while [ "$current" != "$default_version" ]; do
	next=
	for u in "${upgrades[@]+"${upgrades[@]}"}"; do
		[ "${u%%--*}" = "$current" ] || continue
		to=${u#*--}
		# only forward steps; sort -V decides what "higher" means
		[ "$(printf '%s\n%s\n' "$current" "$to" | sort -V | tail -n 1)" = "$to" ] || continue
		[ "$to" != "$current" ] || continue
		if [ -z "$next" ] || [ "$(printf '%s\n%s\n' "$next" "$to" | sort -V | head -n 1)" = "$to" ]; then
			next=$to
		fi
	done
	[ -n "$next" ] || fail "no upgrade script leads from $current towards $default_version (expected sql/tq--$current--<next>.sql)"
	path+=("$next")
	current=$next
	[ "${#path[@]}" -le 1000 ] || fail "the upgrade walk does not end"
done

echo "upgrade: default_version $default_version from sql/tq.sql; walk from sql/tq--$oldest.sql: ${path[*]}"

# 1: the installed files must be the repository's.
installed_default=$(psql_in postgres -c \
	"SELECT default_version FROM pg_available_extensions WHERE name = 'tq'") ||
	fail "could not ask the server for tq's default version"
[ "$installed_default" = "$default_version" ] ||
	fail "the server's tq.control has default_version '${installed_default:-none}', extension/tq.control '$default_version'; run make install"
extdir=$(psql_in postgres -c "SELECT setting || '/extension' FROM pg_config WHERE name = 'SHAREDIR'") ||
	fail "could not read the server's SHAREDIR (pg_config needs a superuser)"
# same_file INSTALLED REPOSITORY_FILE
#	True when the server's INSTALLED script has the bytes of the file.
same_file()
{
	local installed want
	installed=$(psql_in postgres -c \
		"SELECT md5(pg_read_binary_file(f)) FROM (VALUES ('$extdir/$1')) AS v(f)
		  WHERE (pg_stat_file(f, true)).size IS NOT NULL")
	want=$(md5sum <"$2")
	[ "$installed" = "${want%% *}" ]
}
same_file "tq--$default_version.sql" "$top/sql/tq.sql" ||
	fail "the server's $extdir/tq--$default_version.sql is missing or differs from sql/tq.sql; run make install"
same_file "tq--$oldest.sql" "$top/sql/tq--$oldest.sql" ||
	fail "the server's $extdir/tq--$oldest.sql is missing or differs from sql/tq--$oldest.sql; run make install"
prev=$oldest
for v in "${path[@]:1}"; do
	same_file "tq--$prev--$v.sql" "$top/sql/tq--$prev--$v.sql" ||
		fail "the server's $extdir/tq--$prev--$v.sql is missing or differs from sql/tq--$prev--$v.sql; run make install"
	prev=$v
done

extversion() { psql_in "$1" -c "SELECT extversion FROM pg_extension WHERE extname = 'tq'"; }

psql_admin -c "DROP DATABASE IF EXISTS $walk_db" -c "DROP DATABASE IF EXISTS $direct_db" >/dev/null
psql_admin -c "CREATE DATABASE $walk_db" -c "CREATE DATABASE $direct_db" >/dev/null

# 2 and 3: the oldest version, then every step.
psql_in "$walk_db" -c "CREATE EXTENSION tq VERSION '$oldest'" >/dev/null ||
	fail "CREATE EXTENSION tq VERSION '$oldest'"
got=$(extversion "$walk_db")
[ "$got" = "$oldest" ] || fail "after CREATE EXTENSION tq VERSION '$oldest' extversion is '$got'"
echo "upgrade: created tq $oldest"
for v in "${path[@]:1}"; do
	psql_in "$walk_db" -c "ALTER EXTENSION tq UPDATE TO '$v'" >/dev/null ||
		fail "ALTER EXTENSION tq UPDATE TO '$v' (from $got)"
	got=$(extversion "$walk_db")
	[ "$got" = "$v" ] || fail "after ALTER EXTENSION tq UPDATE TO '$v' extversion is '$got'"
	echo "upgrade: updated to tq $v"
done

# 4: the fresh install, from tq--<default_version>.sql alone.
psql_in "$direct_db" -c "CREATE EXTENSION tq" >/dev/null ||
	fail "CREATE EXTENSION tq (sql/tq.sql)"
got=$(extversion "$direct_db")
[ "$got" = "$default_version" ] || fail "after CREATE EXTENSION tq extversion is '$got'"
echo "upgrade: created tq $default_version from sql/tq.sql"

# 5: the footprints.
psql_in "$walk_db" -f "$top/test/upgrade/footprint.sql" >"$workdir/upgraded.txt" ||
	fail "could not read the catalog footprint of the upgraded database"
psql_in "$direct_db" -f "$top/test/upgrade/footprint.sql" >"$workdir/direct.txt" ||
	fail "could not read the catalog footprint of the freshly installed database"

if ! diff -u --label "fresh install of $default_version (sql/tq.sql)" \
	--label "upgraded from $oldest (the upgrade scripts)" \
	"$workdir/direct.txt" "$workdir/upgraded.txt"; then
	fail "the upgraded database differs from a fresh install of $default_version (diff above: - is sql/tq.sql only, + the upgrade scripts only)"
fi

echo "upgrade: ok: $(( ${#path[@]} - 1 )) update step(s) from $oldest; the footprint ($(wc -l <"$workdir/direct.txt") lines) matches a fresh install of $default_version from sql/tq.sql"
