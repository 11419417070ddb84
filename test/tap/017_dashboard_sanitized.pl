# 015_dashboard.pl again, with tqd built with AddressSanitizer and UBSan
# (worker/tqd-asan, made by `make -C worker check`): requests suspended
# while their query runs, answered after the database went away, and
# answered at shutdown, and in the end no sanitizer report from tqd.
use strict;
use warnings;
use FindBin;
# Loaded here, at compile time: their INIT blocks must run.
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $src = $ENV{TQ_SRCDIR} or die "TQ_SRCDIR is not set (run through test/run-tests.sh)";
$ENV{TQ_TQD_BIN} = "$src/worker/tqd-asan";
do "$FindBin::Bin/015_dashboard.pl";
die $@ if $@;
