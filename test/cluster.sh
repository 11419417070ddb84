# shellcheck shell=bash
#
# cluster.sh: a throwaway PostgreSQL 15 cluster for tq's tests.
#
# Source this file, then:
#
#   tq_cluster_start    create, configure and start a cluster in a private
#                       directory under /tmp; export PGHOST, PGPORT, PGUSER
#                       and PGDATABASE so that psql, pg_prove and friends
#                       reach it with no options
#   tq_cluster_stop     stop it and remove its directory (idempotent)
#
#   tq_cluster_dir      the private directory (socket, data, log)
#   tq_cluster_datadir  the data directory
#   tq_cluster_logfile  the server log, to show when a test fails
#
# The server refuses to run as root, so when we are root every server-side
# command (initdb, pg_ctl) runs as the OS user postgres through runuser, from
# inside the private directory: the caller's working directory may be one
# that postgres cannot enter (a clone under /root), and PostgreSQL programs
# fail when they cannot resolve their working directory.  When we are not
# root, the cluster simply belongs to the current user.  Either way the
# database superuser is named postgres.
#
# Nothing outside the private directory is touched: the socket lives there
# and listen_addresses is empty, so the port only names the socket file and
# cannot clash with another server on the machine.
#
# Cleanup.  tq_cluster_start chains tq_cluster_stop onto the EXIT trap (the
# caller's own EXIT trap, if any, still runs afterwards) and turns INT, TERM
# and HUP into an exit when they have no trap of their own, so a failing
# test, Ctrl-C or kill all stop the server and remove the directory.  For
# the one exit no trap sees, SIGKILL, a small watchdog process notices the
# shell is gone and does the same.
#
# Settings (environment):
#   TQ_TEST_PORT        port, default 54329
#   TQ_TEST_CONF        extra postgresql.conf lines appended after ours
#   TQ_TEST_KEEP=1      keep the directory after stopping (for debugging)
#   TQ_TEST_PG_CRON     preload pg_cron too, serving this database

tq_cluster_dir=
tq_cluster_datadir=
tq_cluster_logfile=
_tq_cluster_watchdog_pid=

# The PostgreSQL binaries: the installation pg_config belongs to, that is the
# one `make install` put tq into.
tq_cluster_bindir=$(pg_config --bindir)

# _tq_cluster_as_owner CMD...
#	Runs CMD as the cluster's owner, from inside the cluster directory.
_tq_cluster_as_owner()
{
	if [ "$(id -u)" -eq 0 ]; then
		(cd "$tq_cluster_dir" && runuser -u postgres -- "$@")
	else
		(cd "$tq_cluster_dir" && "$@")
	fi
}

# _tq_cluster_chain_trap SIGNAL COMMAND
#	Makes COMMAND run on SIGNAL before whatever trap was already there.
_tq_cluster_chain_trap()
{
	local sig=$1 cmd=$2 old

	old=$(trap -p "$sig")
	if [ -n "$old" ]; then
		# trap -p prints: trap -- 'quoted command' SIG
		old=${old#"trap -- "}
		old=${old%" $sig"}
		eval "old=$old"
		# shellcheck disable=SC2064	# expanded now on purpose
		trap -- "$cmd; $old" "$sig"
	else
		# shellcheck disable=SC2064
		trap -- "$cmd" "$sig"
	fi
}

# _tq_cluster_watchdog PARENT_PID DIR DATADIR
#	Waits for PARENT_PID to disappear, then stops the cluster in DATADIR and
#	removes DIR if tq_cluster_stop has not done so already.  Only reaches
#	its end when the shell died without running its traps (SIGKILL).
_tq_cluster_watchdog()
{
	local parent=$1 dir=$2 datadir=$3 sleeper=

	# tq_cluster_stop ends the watchdog with SIGTERM; take the sleep along.
	trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
	while kill -0 "$parent" 2>/dev/null; do
		sleep 1 &
		sleeper=$!
		wait "$sleeper"
	done
	if [ -f "$datadir/postmaster.pid" ]; then
		_tq_cluster_as_owner "$tq_cluster_bindir/pg_ctl" -D "$datadir" \
			-m immediate -w stop
	fi
	rm -rf "$dir"
}

# tq_cluster_start
#	Creates, configures and starts the cluster; exports the connection
#	variables.  Returns non-zero, after printing the server log if there is
#	one, when the cluster could not be started.
tq_cluster_start()
{
	local port=${TQ_TEST_PORT:-54329}

	if [ -n "$tq_cluster_dir" ]; then
		echo "tq_cluster_start: a cluster is already running in $tq_cluster_dir" >&2
		return 1
	fi
	if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
		echo "tq_cluster_start: running as root needs an OS user named postgres to own the server" >&2
		return 1
	fi

	tq_cluster_dir=$(mktemp -d /tmp/tq-test.XXXXXX) || return 1
	tq_cluster_datadir=$tq_cluster_dir/data
	tq_cluster_logfile=$tq_cluster_dir/server.log

	# Cleanup first, so that every failure from here on is cleaned up too.
	_tq_cluster_chain_trap EXIT tq_cluster_stop
	[ -n "$(trap -p INT)" ] || trap 'exit 130' INT
	[ -n "$(trap -p TERM)" ] || trap 'exit 143' TERM
	[ -n "$(trap -p HUP)" ] || trap 'exit 129' HUP

	if [ "$(id -u)" -eq 0 ]; then
		chown postgres: "$tq_cluster_dir" || return 1
	fi

	_tq_cluster_watchdog "$$" "$tq_cluster_dir" "$tq_cluster_datadir" \
		</dev/null >/dev/null 2>&1 &
	_tq_cluster_watchdog_pid=$!

	# -N: no fsync of the new files; this cluster is thrown away.
	if ! _tq_cluster_as_owner "$tq_cluster_bindir/initdb" -D "$tq_cluster_datadir" \
		-U postgres -A trust -E UTF8 --no-locale -N \
		>"$tq_cluster_dir/initdb.log" 2>&1; then
		echo "tq_cluster_start: initdb failed:" >&2
		cat "$tq_cluster_dir/initdb.log" >&2
		return 1
	fi

	# pg_cron (for tq_schedule) when asked: TQ_TEST_PG_CRON names the
	# database its scheduler serves, which the caller then creates.
	local preload=tq
	if [ -n "${TQ_TEST_PG_CRON:-}" ]; then
		preload=tq,pg_cron
	fi

	# Durability off: nothing here outlives the test run.
	cat >>"$tq_cluster_datadir/postgresql.conf" <<-EOF || return 1

		# Added by tq's test/cluster.sh: a throwaway cluster for tests only.
		shared_preload_libraries = '$preload'
		listen_addresses = ''
		unix_socket_directories = '$tq_cluster_dir'
		port = $port
		max_connections = 100
		fsync = off
		synchronous_commit = off
		full_page_writes = off
		log_line_prefix = '%m [%p] %q%a '
		log_min_messages = warning
		log_checkpoints = off
	EOF
	if [ -n "${TQ_TEST_PG_CRON:-}" ]; then
		printf "cron.database_name = '%s'\n" "$TQ_TEST_PG_CRON" >>"$tq_cluster_datadir/postgresql.conf" || return 1
	fi
	if [ -n "${TQ_TEST_CONF:-}" ]; then
		printf '%s\n' "$TQ_TEST_CONF" >>"$tq_cluster_datadir/postgresql.conf" || return 1
	fi

	if ! _tq_cluster_as_owner "$tq_cluster_bindir/pg_ctl" -D "$tq_cluster_datadir" \
		-l "$tq_cluster_logfile" -w -t 60 start >/dev/null; then
		echo "tq_cluster_start: the server did not start; its log ($tq_cluster_logfile):" >&2
		cat "$tq_cluster_logfile" >&2 || true
		return 1
	fi

	export PGHOST=$tq_cluster_dir
	export PGPORT=$port
	export PGUSER=postgres
	export PGDATABASE=postgres
}

# tq_cluster_stop
#	Stops the cluster (fast, falling back to immediate) and removes its
#	directory unless TQ_TEST_KEEP=1.  Safe to call more than once, and
#	silent, so that it can run from an EXIT trap after a summary line.
tq_cluster_stop()
{
	[ -n "$tq_cluster_dir" ] || return 0

	if [ -n "$_tq_cluster_watchdog_pid" ]; then
		kill "$_tq_cluster_watchdog_pid" 2>/dev/null || true
		wait "$_tq_cluster_watchdog_pid" 2>/dev/null || true
		_tq_cluster_watchdog_pid=
	fi

	if [ -f "$tq_cluster_datadir/postmaster.pid" ]; then
		_tq_cluster_as_owner "$tq_cluster_bindir/pg_ctl" -D "$tq_cluster_datadir" \
			-m fast -w -t 30 stop >/dev/null 2>&1 ||
			_tq_cluster_as_owner "$tq_cluster_bindir/pg_ctl" -D "$tq_cluster_datadir" \
				-m immediate -w stop >/dev/null 2>&1 ||
			echo "tq_cluster_stop: could not stop the server in $tq_cluster_datadir" >&2
	fi

	if [ "${TQ_TEST_KEEP:-0}" = 1 ]; then
		echo "tq_cluster_stop: kept $tq_cluster_dir" >&2
	else
		rm -rf "$tq_cluster_dir"
	fi

	unset PGHOST PGPORT PGUSER PGDATABASE
	tq_cluster_dir=
	tq_cluster_datadir=
	tq_cluster_logfile=
}
