#!/usr/bin/env bash
# Upgrade-path test for the tq extension.
#
# A user who installed an old tq and ran ALTER EXTENSION tq UPDATE after
# every release must end up with exactly the database a fresh install of
# the current version gives.  This script checks that:
#
#   1. In a fresh database, CREATE EXTENSION tq at the oldest version that
#      has a full install script (sql/tq--X.sql).
#   2. Walk ALTER EXTENSION tq UPDATE TO each next version reachable through
#      the upgrade scripts (sql/tq--A--B.sql), in version order, up to
#      default_version from extension/tq.control, checking pg_extension's
#      extversion after every step.
#   3. In another fresh database, CREATE EXTENSION tq at default_version.
#   4. Compare the two catalog footprints: the extension's member objects,
#      its functions' signatures, result types and properties, and the
#      columns, constraints and indexes of its tables.  Any difference is a
#      bug in an upgrade script.
#
# It talks to whatever server the libpq environment (PGHOST, PGPORT, PGUSER)
# points at; test/run-tests.sh runs it against its throwaway cluster.  The
# extension must have been installed there with `make install`.
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

# Versions.  Full install scripts are tq--X.sql; upgrade scripts tq--A--B.sql.
default_version=$(sed -n "s/^default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" \
	"$top/extension/tq.control")
[ -n "$default_version" ] || fail "no default_version in extension/tq.control"

full_versions=()
upgrades=()
shopt -s nullglob
for f in "$top"/sql/tq--*.sql; do
	base=${f##*/}
	base=${base#tq--}
	base=${base%.sql}
	case $base in
	*--*) upgrades+=("$base") ;;     # A--B
	*) full_versions+=("$base") ;;
	esac
done
shopt -u nullglob
[ "${#full_versions[@]}" -gt 0 ] || fail "no full install script sql/tq--<version>.sql"

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

echo "upgrade: default_version $default_version; full install scripts: ${full_versions[*]}"
echo "upgrade: walk: ${path[*]}"

# The installed files must be the repository's: otherwise we would test
# whatever an older `make install` left behind.
available=$(psql_in postgres -c \
	"SELECT string_agg(version, ' ') FROM pg_available_extension_versions WHERE name = 'tq'")
for v in "${path[@]}" "$default_version"; do
	case " $available " in
	*" $v "*) ;;
	*) fail "version $v of tq is not installed on the server (it has: ${available:-none}); run make install" ;;
	esac
done

extversion() { psql_in "$1" -c "SELECT extversion FROM pg_extension WHERE extname = 'tq'"; }

psql_admin -c "DROP DATABASE IF EXISTS $walk_db" -c "DROP DATABASE IF EXISTS $direct_db" >/dev/null
psql_admin -c "CREATE DATABASE $walk_db" -c "CREATE DATABASE $direct_db" >/dev/null

# 1 and 2: the oldest version, then every step.
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

# 3: the direct install.
psql_in "$direct_db" -c "CREATE EXTENSION tq VERSION '$default_version'" >/dev/null ||
	fail "CREATE EXTENSION tq VERSION '$default_version'"
got=$(extversion "$direct_db")
[ "$got" = "$default_version" ] || fail "after CREATE EXTENSION tq extversion is '$got'"

# 4: the footprint.  Everything is printed as text that does not depend on
# OIDs, and sorted in the C collation.
footprint_sql=$(cat <<'EOF'
WITH ext AS (
    SELECT oid FROM pg_extension WHERE extname = 'tq'
), members AS (
    SELECT d.classid, d.objid, d.objsubid
    FROM pg_depend d, ext
    WHERE d.refclassid = 'pg_extension'::regclass
      AND d.refobjid = ext.oid
      AND d.deptype = 'e'
), rels AS (
    SELECT c.oid FROM pg_class c JOIN members m
      ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
)
SELECT line FROM (
    -- every member object
    SELECT 'member: ' || pg_describe_object(classid, objid, objsubid) AS line
    FROM members
  UNION ALL
    -- functions: identity, result, and what changes behaviour
    SELECT format('function: %s.%s(%s) returns %s; %s%s%s parallel %s; %s; config %s',
                  n.nspname, p.proname,
                  pg_get_function_identity_arguments(p.oid),
                  coalesce(pg_get_function_result(p.oid), '-'),
                  CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END,
                  CASE WHEN p.proisstrict THEN ' strict' ELSE '' END,
                  CASE WHEN p.prosecdef THEN ' security definer' ELSE '' END,
                  p.proparallel,
                  l.lanname,
                  coalesce(array_to_string(p.proconfig, ','), '-'))
    FROM pg_proc p
    JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
    JOIN pg_namespace n ON n.oid = p.pronamespace
    JOIN pg_language l ON l.oid = p.prolang
  UNION ALL
    -- function bodies (whitespace folded), so that a fix made in an
    -- upgrade script is also in the install script and the other way round
    SELECT format('function body: %s(%s) md5 %s',
                  p.oid::regproc, pg_get_function_identity_arguments(p.oid),
                  md5(btrim(regexp_replace(coalesce(p.prosrc, ''), '\s+', ' ', 'g'))
                      || coalesce(p.probin, '')))
    FROM pg_proc p
    JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
  UNION ALL
    -- columns of member tables, views and types
    SELECT format('column: %s.%s %s%s%s', a.attrelid::regclass, a.attname,
                  format_type(a.atttypid, a.atttypmod),
                  CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                  coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), ''))
    FROM pg_attribute a
    JOIN rels r ON r.oid = a.attrelid
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    WHERE a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
    -- constraints of member tables
    SELECT format('constraint: %s %s %s', co.conrelid::regclass, co.conname,
                  pg_get_constraintdef(co.oid))
    FROM pg_constraint co JOIN rels r ON r.oid = co.conrelid
  UNION ALL
    -- indexes of member tables
    SELECT 'index: ' || pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN rels r ON r.oid = i.indrelid
  UNION ALL
    -- triggers of member tables
    SELECT 'trigger: ' || pg_get_triggerdef(t.oid)
    FROM pg_trigger t JOIN rels r ON r.oid = t.tgrelid
    WHERE NOT t.tgisinternal
  UNION ALL
    -- view definitions
    SELECT format('view: %s %s', c.oid::regclass, md5(pg_get_viewdef(c.oid)))
    FROM pg_class c JOIN rels r ON r.oid = c.oid
    WHERE c.relkind IN ('v', 'm')
  UNION ALL
    -- comments users read in psql, on members and on their columns
    SELECT format('comment: %s: %s',
                  pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description)
    FROM pg_description d
    WHERE (d.classoid, d.objoid) IN (SELECT classid, objid FROM members)
       OR (d.classoid = 'pg_class'::regclass AND d.objoid IN (SELECT oid FROM rels))
  UNION ALL
    -- enum labels, in their order (ALTER TYPE ... ADD VALUE can misplace one)
    SELECT format('enum: %s %s', t.oid::regtype,
                  string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder))
    FROM pg_type t
    JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
    JOIN pg_enum e ON e.enumtypid = t.oid
    GROUP BY t.oid
  UNION ALL
    -- privileges (roles tq_producer, tq_worker, tq_admin)
    SELECT format('acl: %s %s', c.oid::regclass, coalesce(c.relacl::text, '-'))
    FROM pg_class c JOIN rels r ON r.oid = c.oid
  UNION ALL
    SELECT format('acl: %s(%s) %s', p.oid::regproc, pg_get_function_identity_arguments(p.oid),
                  coalesce(p.proacl::text, '-'))
    FROM pg_proc p
    JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
) AS footprint
ORDER BY line COLLATE "C";
EOF
)

psql_in "$walk_db" -c "$footprint_sql" >"$workdir/upgraded.txt" ||
	fail "could not read the catalog footprint of the upgraded database"
psql_in "$direct_db" -c "$footprint_sql" >"$workdir/direct.txt" ||
	fail "could not read the catalog footprint of the directly installed database"

if ! diff -u --label "installed at $default_version" --label "upgraded from $oldest" \
	"$workdir/direct.txt" "$workdir/upgraded.txt"; then
	fail "the upgraded database differs from a fresh install of $default_version (diff above)"
fi

echo "upgrade: ok: $(( ${#path[@]} - 1 )) update step(s) from $oldest; the footprint ($(wc -l <"$workdir/direct.txt") lines) matches a fresh install of $default_version"
