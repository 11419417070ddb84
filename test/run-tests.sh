#!/usr/bin/env bash
# Runs every test layer of tq against the installed extension.
#
#   make check          installs the build dependencies, builds, installs,
#                       then runs this script
#   test/run-tests.sh   the same after `make install`
#
# Layers, each against what `make install` put into the PostgreSQL that
# pg_config names:
#
#   pgtap      test/pgtap/*.sql with pg_prove, in a database with pgtap and tq
#   isolation  test/isolation/specs/*.spec with pg_isolation_regress
#   upgrade    test/upgrade/run.sh: oldest version, every ALTER EXTENSION
#              UPDATE, and the same catalog as a fresh install (sql/tq.sql)
#   tap        test/tap/*.pl with prove and PostgreSQL::Test::Cluster; these
#              start (and crash) clusters of their own, and real tqd
#              processes (010_tqd.pl)
#   unit       tqd's C unit tests (worker/test/test_*.c, make -C worker check)
#
# The first three share one throwaway cluster (test/cluster.sh).  A failing
# layer does not stop the others; the exit status is non-zero if anything
# failed, and the last line printed is always "N passed, N failed", counting
# test files, isolation specs and the upgrade test.
#
# Output kept after a run, under test/results/ (ignored by git):
#   pgtap.log    pg_prove's output
#   isolation/   pg_isolation_regress results and regression.diffs
#   tap/         prove's output, and the TAP tests' logs when one failed
#
# One test at a time: name the tests, of any layer, and only those run
# (each in its layer, against the same throwaway cluster):
#
#   test/run-tests.sh test/pgtap/220_fuzz_findings.sql
#   test/run-tests.sh test/tap/018_fuzz_findings.pl worker/test/test_config.c
#   test/run-tests.sh test/isolation/specs/fencing.spec test/upgrade/run.sh
#
# Settings (environment): TQ_TEST_PORT, TQ_TEST_CONF, TQ_TEST_KEEP, see
# test/cluster.sh; TQ_TEST_LAYERS, a space-separated subset of
# "unit pgtap isolation upgrade tap" to run (default: all, or the layers of
# the tests named).
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

if ! command -v pg_config >/dev/null; then
	echo "pg_config not found: install postgresql-server-dev-15 (test/deps.sh does)"
	echo "0 passed, 1 failed"
	exit 1
fi

# shellcheck source=test/cluster.sh
. "$top/test/cluster.sh"

pgxs_dir=$(dirname "$(pg_config --pgxs)")
pg_testdir=$(cd "$pgxs_dir/../test" && pwd)
bindir=$(pg_config --bindir)
results=$top/test/results
layers=${TQ_TEST_LAYERS:-unit pgtap isolation upgrade tap}

# Tests named on the command line, by layer (empty: every test of a layer).
only_unit=() only_pgtap=() only_isolation=() only_tap=()
if [ "$#" -gt 0 ]; then
	layers=
	for arg in "$@"; do
		arg=${arg#./}
		if [ ! -f "$arg" ]; then
			echo "run-tests.sh: no such test: $arg"
			echo "0 passed, 1 failed"
			exit 1
		fi
		case $arg in
		worker/test/test_*.c) only_unit+=("test/$(basename "$arg" .c)") layer=unit ;;
		test/pgtap/*.sql) only_pgtap+=("$arg") layer=pgtap ;;
		test/isolation/specs/*.spec) only_isolation+=("$arg") layer=isolation ;;
		test/upgrade/run.sh) layer=upgrade ;;
		test/tap/*.pl) only_tap+=("$arg") layer=tap ;;
		*)
			echo "run-tests.sh: not a test of any layer: $arg"
			echo "(worker/test/test_*.c, test/pgtap/*.sql, test/isolation/specs/*.spec,"
			echo " test/upgrade/run.sh, test/tap/*.pl)"
			echo "0 passed, 1 failed"
			exit 1
			;;
		esac
		case " $layers " in
		*" $layer "*) ;;
		*) layers="$layers $layer" ;;
		esac
	done
fi

passed=0
failed=0
failed_layers=()

summary_printed=0
summary()
{
	echo "$passed passed, $failed failed"
	summary_printed=1
}

# Last in the EXIT trap: when the harness itself stopped early (an
# interrupt, a broken tool), still end with the summary line, counting the
# interruption as a failure.
# shellcheck disable=SC2317  # invoked from the EXIT trap
final_summary()
{
	if [ "$summary_printed" -eq 0 ]; then
		echo
		echo "tests: stopped before all layers ran"
		failed=$((failed + 1))
		summary
	fi
}

say() { printf '\n== %s\n' "$*"; }

layer_failed()
{
	failed_layers+=("$1")
}

want_layer()
{
	case " $layers " in
	*" $1 "*) return 0 ;;
	*) return 1 ;;
	esac
}

# fresh_db NAME EXTENSION...
#	(Re)creates database NAME on the test cluster with the extensions.
fresh_db()
{
	local db=$1 ext
	shift
	psql -X -q -v ON_ERROR_STOP=1 -c 'SET client_min_messages = warning' \
		-c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" || return 1
	for ext in "$@"; do
		psql -X -q -v ON_ERROR_STOP=1 -d "$db" -c "CREATE EXTENSION $ext" || return 1
	done
}

# count_harness_failures OUTPUT_FILE FILE...
#	Prints how many of FILE... a TAP::Harness run (prove, pg_prove) reported
#	as failed in its "Test Summary Report".
count_harness_failures()
{
	local out=$1 n=0 f
	shift
	for f in "$@"; do
		# The summary pads names to a common width: "file.sql   (Wstat: ...".
		if grep -qE -- "^$(printf '%s' "$f" | sed 's/[.[\*^$/]/\\&/g') +\(Wstat:" "$out"; then
			n=$((n + 1))
		fi
	done
	echo "$n"
}

# ---------------------------------------------------------------------------
# tqd's C unit tests: the pure parts (config, exec classification, capture
# limits, backoff, logfmt), each test_*.c a TAP program run by prove.
layer_unit()
{
	local out rc=0 nfail names=() f
	if [ "${#only_unit[@]}" -gt 0 ]; then
		names=("${only_unit[@]}")
	else
		for f in worker/test/test_*.c; do
			[ -f "$f" ] || continue
			names+=("test/$(basename "$f" .c)")
		done
	fi
	if [ "${#names[@]}" -eq 0 ]; then
		echo "unit: no tests in worker/test, skipped"
		return 0
	fi
	say "unit: ${#names[@]} C test program(s) with prove"
	mkdir -p "$results"
	out=$results/unit.log
	make -s -C worker check TESTS="${names[*]}" 2>&1 | tee "$out" || rc=$?
	nfail=$(count_harness_failures "$out" "${names[@]}")
	if [ "$rc" -ne 0 ] && [ "$nfail" -eq 0 ]; then
		nfail=${#names[@]}
	fi
	passed=$((passed + ${#names[@]} - nfail))
	failed=$((failed + nfail))
	[ "$nfail" -eq 0 ] || layer_failed unit
}

# ---------------------------------------------------------------------------
# pgTAP: the SQL API.
layer_pgtap()
{
	local files=() out rc nfail
	shopt -s nullglob
	files=(test/pgtap/*.sql)
	shopt -u nullglob
	[ "${#only_pgtap[@]}" -eq 0 ] || files=("${only_pgtap[@]}")
	if [ "${#files[@]}" -eq 0 ]; then
		echo "pgtap: no test files in test/pgtap, skipped"
		return 0
	fi

	say "pgtap: ${#files[@]} file(s) with pg_prove"
	if ! fresh_db tq_test pgtap tq pg_cron; then
		echo "pgtap: could not prepare database tq_test"
		failed=$((failed + ${#files[@]}))
		layer_failed pgtap
		return 0
	fi

	mkdir -p "$results"
	out=$results/pgtap.log
	rc=0
	pg_prove --nocolor -f -d tq_test "${files[@]}" 2>&1 | tee "$out" || rc=$?
	nfail=$(count_harness_failures "$out" "${files[@]}")
	# A harness that failed without naming a file (it could not run at
	# all) failed every file.
	if [ "$rc" -ne 0 ] && [ "$nfail" -eq 0 ]; then
		nfail=${#files[@]}
	fi
	passed=$((passed + ${#files[@]} - nfail))
	failed=$((failed + nfail))
	[ "$nfail" -eq 0 ] || layer_failed pgtap
}

# ---------------------------------------------------------------------------
# Isolation specs: races between sessions.
layer_isolation()
{
	local specs=() tests=() s out rc nok nfail outdir=$results/isolation
	shopt -s nullglob
	specs=(test/isolation/specs/*.spec)
	shopt -u nullglob
	[ "${#only_isolation[@]}" -eq 0 ] || specs=("${only_isolation[@]}")
	if [ "${#specs[@]}" -eq 0 ]; then
		echo "isolation: no specs in test/isolation/specs, skipped"
		return 0
	fi
	for s in "${specs[@]}"; do
		s=${s##*/}
		tests+=("${s%.spec}")
	done

	say "isolation: ${#tests[@]} spec(s) with pg_isolation_regress"
	# --use-existing creates no database, and so --load-extension would do
	# nothing: the database and the extension are made here.
	if ! fresh_db tq_isolation tq; then
		echo "isolation: could not prepare database tq_isolation"
		failed=$((failed + ${#tests[@]}))
		layer_failed isolation
		return 0
	fi

	rm -rf "$outdir"
	mkdir -p "$outdir"
	out=$outdir/run.log
	rc=0
	"$pg_testdir/isolation/pg_isolation_regress" --use-existing \
		--host="$PGHOST" --port="$PGPORT" --user=postgres \
		--dbname=tq_isolation \
		--inputdir=test/isolation --outputdir="$outdir" \
		"${tests[@]}" 2>&1 | tee "$out" || rc=$?

	# One line per spec: "test <name> ... ok" or "... FAILED".
	nok=$(grep -cE '^(test|ok) .*\.\.\. +ok' "$out" || true)
	nfail=$((${#tests[@]} - nok))
	if [ "$rc" -ne 0 ] && [ "$nfail" -eq 0 ]; then
		nfail=${#tests[@]}
	fi
	passed=$((passed + ${#tests[@]} - nfail))
	failed=$((failed + nfail))
	if [ "$nfail" -ne 0 ]; then
		layer_failed isolation
		if [ -s "$outdir/regression.diffs" ]; then
			echo "isolation: $outdir/regression.diffs:"
			cat "$outdir/regression.diffs"
		fi
	fi
}

# ---------------------------------------------------------------------------
# Upgrade path: oldest version, every update, same catalog as a fresh install.
layer_upgrade()
{
	say "upgrade: test/upgrade/run.sh"
	if test/upgrade/run.sh; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		layer_failed upgrade
	fi
}

# ---------------------------------------------------------------------------
# Perl TAP: restarts and crashes, with clusters of the tests' own.
#
# PostgreSQL::Test::Cluster starts its servers as the user running the test,
# so prove runs as postgres when we are root, and the tests and their
# tmp_check must live where postgres can write: a copy of the repository in
# a temporary directory.  TQ_SRCDIR names that copy for tests that need
# repository files (the tqd binary, sample configs).
tap_copy=

# Stops any server a TAP test left running (it was killed before its END
# block ran), then removes the copy.
# shellcheck disable=SC2317  # invoked from the EXIT trap
tap_cleanup()
{
	local pidfile
	[ -n "$tap_copy" ] || return 0
	while IFS= read -r -d '' pidfile; do
		as_postgres "$bindir/pg_ctl" -D "${pidfile%/postmaster.pid}" -m immediate -w stop \
			>/dev/null 2>&1 || true
	done < <(find "$tap_copy" -name postmaster.pid -print0 2>/dev/null)
	rm -rf "$tap_copy"
	tap_copy=
}

as_postgres()
{
	if [ "$(id -u)" -eq 0 ]; then
		(cd "$tap_copy" && runuser -u postgres -- "$@")
	else
		(cd "$tap_copy" && "$@")
	fi
}

layer_tap()
{
	local files=() names=() f out rc nfail
	shopt -s nullglob
	files=(test/tap/*.pl)
	shopt -u nullglob
	[ "${#only_tap[@]}" -eq 0 ] || files=("${only_tap[@]}")
	if [ "${#files[@]}" -eq 0 ]; then
		echo "tap: no test files in test/tap, skipped"
		return 0
	fi
	for f in "${files[@]}"; do
		names+=("${f##*/}")
	done

	say "tap: ${#files[@]} file(s) with prove"
	# What the tests run besides tqd (built by the unit layer when it runs).
	make -s -C worker tqd tqd-asan test/tqtest_httpd
	tap_copy=$(mktemp -d /tmp/tq-tap.XXXXXX)
	tar -C "$top" --exclude=./.git --exclude=./test/results --exclude=./test/tmp \
		--exclude=./test/tap/tmp_check -cf - . | tar -C "$tap_copy" -xf -
	# TMPDIR: the TAP kit's socket directories, kept when a test fails, go
	# into the copy too, so that nothing is left behind in /tmp.
	mkdir "$tap_copy/tmp"
	if [ "$(id -u)" -eq 0 ]; then
		chown -R postgres: "$tap_copy"
	fi

	rm -rf "$results/tap"
	mkdir -p "$results/tap"
	out=$results/tap/prove.log
	rc=0
	(
		cd "$tap_copy/test/tap"
		cmd=(env PATH="$bindir:$PATH"
			PERL5LIB="$pg_testdir/perl${PERL5LIB:+:$PERL5LIB}"
			PG_REGRESS="$pg_testdir/regress/pg_regress"
			TESTDIR="$tap_copy/test/tap" TQ_SRCDIR="$tap_copy"
			TMPDIR="$tap_copy/tmp"
			prove --nocolor -f "${names[@]}")
		if [ "$(id -u)" -eq 0 ]; then
			runuser -u postgres -- "${cmd[@]}"
		else
			"${cmd[@]}"
		fi
	) 2>&1 | tee "$out" || rc=$?
	nfail=$(count_harness_failures "$out" "${names[@]}")
	if [ "$rc" -ne 0 ] && [ "$nfail" -eq 0 ]; then
		nfail=${#files[@]}
	fi
	passed=$((passed + ${#files[@]} - nfail))
	failed=$((failed + nfail))

	if [ "$nfail" -ne 0 ]; then
		layer_failed tap
		# Keep the logs (test narrative, every node's server log).
		if [ -d "$tap_copy/test/tap/tmp_check/log" ]; then
			cp -R "$tap_copy/test/tap/tmp_check/log/." "$results/tap/"
			echo "tap: logs kept in $results/tap"
			for f in "$results"/tap/regress_log_*; do
				[ -f "$f" ] || continue
				echo "tap: last lines of $f:"
				tail -n 40 "$f"
			done
		fi
	fi
	tap_cleanup
}

# ---------------------------------------------------------------------------

control=$(pg_config --sharedir)/extension/tq.control
if [ ! -f "$control" ] || [ ! -f "$(pg_config --pkglibdir)/tq.so" ]; then
	echo "tq is not installed in $(pg_config --sharedir); run make install (or make check) first"
	failed=1
	summary
	exit 1
fi

# On exit: the TAP copy is cleaned, then the cluster stopped, then the
# summary printed if it was not yet (traps chain in reverse order of
# registration).
trap final_summary EXIT
# pg_cron serves the pgTAP database, for the tq_schedule tests.
export TQ_TEST_PG_CRON=tq_test
if ! tq_cluster_start; then
	failed=1
	summary
	exit 1
fi
_tq_cluster_chain_trap EXIT tap_cleanup
echo "tests: cluster running on socket $PGHOST port $PGPORT, log $tq_cluster_logfile"

if want_layer unit; then layer_unit; fi
if want_layer pgtap; then layer_pgtap; fi
if want_layer isolation; then layer_isolation; fi
if want_layer upgrade; then layer_upgrade; fi
if want_layer tap; then layer_tap; fi

# No input of any test may crash a server process.  (TAP tests that kill
# processes on purpose run clusters of their own, and check their logs.)
if grep -q 'terminated by signal' "$tq_cluster_logfile"; then
	echo
	echo "server: a server process was terminated by a signal:"
	grep -B2 -A2 'terminated by signal' "$tq_cluster_logfile" | head -n 40
	failed=$((failed + 1))
	layer_failed server
fi

status=0
if [ "${#failed_layers[@]}" -ne 0 ]; then
	status=1
	echo
	echo "FAILED layers: ${failed_layers[*]}"
	if [ -s "$tq_cluster_logfile" ]; then
		echo "last lines of the server log ($tq_cluster_logfile):"
		tail -n 50 "$tq_cluster_logfile"
	fi
fi
echo
summary
exit "$status"
