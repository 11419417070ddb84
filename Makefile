# tq top-level Makefile.
#
#   make            build the extension and tqd, the worker daemon
#   make install    install the extension into the PostgreSQL found by
#                   pg_config, and tqd into $(prefix)/bin
#   make check      install the build dependencies if missing, build, install,
#                   and run every test against a throwaway cluster
#   make demo       the main job: a throwaway cluster with tq, tasks flowing
#   make bench      the benchmark table (test/bench)
#   make format     reformat the C sources with the pinned .clang-format
PG_CONFIG ?= pg_config

.PHONY: bench-ab bench-steady bench-drain all extension worker install uninstall check demo bench deps clean format format-check

# Our C sources, formatted by the pinned .clang-format.
C_SOURCES = $(wildcard extension/*.c extension/*.h worker/src/*.c worker/src/*.h worker/test/*.c worker/test/*.h)
CLANG_FORMAT ?= clang-format

all: extension worker

extension:
	$(MAKE) -C extension PG_CONFIG=$(PG_CONFIG)

worker:
	$(MAKE) -C worker PG_CONFIG=$(PG_CONFIG)

install: extension worker
	$(MAKE) -C extension PG_CONFIG=$(PG_CONFIG) install
	$(MAKE) -C worker PG_CONFIG=$(PG_CONFIG) install

uninstall:
	$(MAKE) -C extension PG_CONFIG=$(PG_CONFIG) uninstall

# Installs the Debian packages the build and the tests need, when missing.
deps:
	test/deps.sh

check: deps format-check
	$(MAKE) install
	test/run-tests.sh

format:
	$(CLANG_FORMAT) -i $(C_SOURCES)

# Fails when a C file differs from what clang-format makes of it.
format-check:
	@if ! command -v $(CLANG_FORMAT) >/dev/null; then \
		echo "format-check: $(CLANG_FORMAT) not found, skipped"; \
	else \
		$(CLANG_FORMAT) --dry-run --Werror $(C_SOURCES) && echo "format-check: ok"; \
	fi

demo: deps
	$(MAKE) install
	test/demo.sh

bench: deps
	$(MAKE) install
	$(MAKE) -C worker test/tqtest_httpd
	test/bench/run.sh
	$(DRAIN)

# Issue 16's drain table at synchronous_commit = on and off, beside tqd of
# DRAIN_BASE (0.6.0; TQ_DRAIN_BASE= skips it) and, with TQ_BENCH_PEER=1,
# graphile-worker.
DRAIN_BASE ?= 7206ca7~1
DRAIN = TQ_DRAIN_BASE=$${TQ_DRAIN_BASE-$(DRAIN_BASE)} test/bench/drain.sh
bench-drain: deps
	$(MAKE) install
	$(MAKE) -C worker test/tqtest_httpd
	$(DRAIN)

# Issue 16's steady load: open-loop submits into one tqd, submit-to-start.
bench-steady: deps
	$(MAKE) install
	test/bench/steady.sh

# The hot paths against an earlier revision (BASE=<rev>), side by side.
bench-ab: deps
	$(MAKE) -C extension
	test/bench/ab.sh

clean:
	$(MAKE) -C extension clean
	$(MAKE) -C worker clean
	rm -rf test/results test/tmp
