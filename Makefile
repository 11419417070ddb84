# tq top-level Makefile.
#
#   make            build the extension
#   make install    install it into the PostgreSQL found by pg_config
#   make check      install the build dependencies if missing, build, install,
#                   and run every test against a throwaway cluster
#   make demo       the main job: a throwaway cluster with tq, tasks flowing
#   make bench      the benchmark table (test/bench)
PG_CONFIG ?= pg_config

.PHONY: all extension install uninstall check demo bench deps clean

all: extension

extension:
	$(MAKE) -C extension PG_CONFIG=$(PG_CONFIG)

install: extension
	$(MAKE) -C extension PG_CONFIG=$(PG_CONFIG) install

uninstall:
	$(MAKE) -C extension PG_CONFIG=$(PG_CONFIG) uninstall

# Installs the Debian packages the build and the tests need, when missing.
deps:
	test/deps.sh

check: deps
	$(MAKE) install
	test/run-tests.sh

demo: deps
	$(MAKE) install
	test/demo.sh

bench: deps
	$(MAKE) install
	test/bench/run.sh

clean:
	$(MAKE) -C extension clean
	rm -rf test/results test/tmp
