#!/usr/bin/env bash
# Installs the Debian packages that building tq and running its tests need,
# and only those that are missing.  Quiet when everything is present, so
# `make check` can call it every time.
#
#   postgresql-server-dev-15               pg_config, PGXS, server headers, and the
#                                          Perl TAP kit (PostgreSQL::Test::Cluster)
#                                          with pg_regress and pg_isolation_regress
#   libev-dev                              tqd's event loop
#   libinih-dev                            tqd's INI config parser
#   libjansson-dev                         tqd's JSON (results, outcome batches)
#   libcurl4-openssl-dev                   tqd's http handler (curl's multi interface)
#   libmicrohttpd-dev                      tqd's /metrics endpoint, and the tests' HTTP server
#   openssl                                makes the TLS test's self-signed certificate
#   postgresql-15-pgtap                    the pgTAP extension
#   libtap-parser-sourcehandler-pgtap-perl pg_prove
#   libipc-run-perl                        IPC::Run, needed by PostgreSQL::Test::*
#   postgresql-15-cron                     pg_cron, under tq_schedule
#   chromium, chromium-driver              headless browser and its WebDriver, for the
#                                          dashboard's browser test (TAP 015, 017)
#
# pgbench ships with the server package (postgresql-15) itself.
#
# As root the missing packages are installed with apt-get; as anyone else
# the script says what is missing and how to install it, and fails.
set -euo pipefail

packages=(
	postgresql-server-dev-15
	libev-dev
	libinih-dev
	libjansson-dev
	libcurl4-openssl-dev
	libmicrohttpd-dev
	openssl
	postgresql-15-pgtap
	libtap-parser-sourcehandler-pgtap-perl
	libipc-run-perl
	postgresql-15-cron
	chromium
	chromium-driver
)

missing=()
for pkg in "${packages[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
	if [ "$status" != "install ok installed" ]; then
		missing+=("$pkg")
	fi
done

if [ "${#missing[@]}" -eq 0 ]; then
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "deps.sh: missing Debian packages: ${missing[*]}" >&2
	echo "deps.sh: install them with:" >&2
	echo "    sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
	exit 1
fi

echo "deps.sh: installing ${missing[*]}"
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
