#!/usr/bin/perl
# The program tqd's integration tests run through the exec handler.  What
# it does comes from the task's payload (JSON on stdin), "do":
#
#   ok          print {"ok": true, "id": TQ_TASK_ID} and exit 0
#   text        print a line that is not JSON, exit 0
#   retry_once  exit 75 (EX_TEMPFAIL) on attempt 1, succeed afterwards
#   dead        print "bad input" on stderr, exit 65 (EX_DATAERR)
#   sleep       sleep "secs" seconds, then succeed
#   grandchild  fork a grandchild that sleeps 60 s, print its pid, sleep 60 s
#   segv        die of SIGSEGV
#   flood       write 20 MB to stdout and 100 000 lines to stderr, exit 0
#   noread      exit 0 without reading stdin
#   log         print "n" lines on stderr, then succeed
#
# Every run appends "TQ_TASK_ID TQ_ATTEMPT pid" to the file named by the
# environment variable TQ_TEST_RUNLOG, if set, so a test can count runs.
use strict;
use warnings;
use JSON::PP;

my $do = 'ok';
my $p = {};
if (($ENV{TQ_TEST_NOREAD} // '') ne '1')
{
	local $/;
	my $in = <STDIN>;
	$p = eval { decode_json($in) } || {};
	$do = $p->{do} // 'ok';
}
if (my $f = $ENV{TQ_TEST_RUNLOG})
{
	open(my $fh, '>>', $f) or die "runlog: $!";
	syswrite($fh, "$ENV{TQ_TASK_ID} $ENV{TQ_ATTEMPT} $$\n");
	close($fh);
}
$| = 1;
if ($do eq 'ok')
{
	print encode_json({ ok => JSON::PP::true, id => $ENV{TQ_TASK_ID} + 0, queue => $ENV{TQ_QUEUE} });
	exit 0;
}
elsif ($do eq 'text') { print "plain text, not JSON\n"; exit 0; }
elsif ($do eq 'retry_once')
{
	if ($ENV{TQ_ATTEMPT} == 1) { print STDERR "try again later\n"; exit 75; }
	print '{"retried": true}';
	exit 0;
}
elsif ($do eq 'dead') { print STDERR "bad input\n"; exit 65; }
elsif ($do eq 'sleep') { select(undef, undef, undef, $p->{secs} // 1); print '{"slept": true}'; exit 0; }
elsif ($do eq 'grandchild')
{
	my $pid = fork();
	if ($pid == 0) { close(STDOUT); exec('sleep', '60'); }
	print "$pid\n";
	if (my $f = $p->{pidfile}) { open(my $fh, '>', $f); print $fh "$pid\n"; close($fh); }
	sleep 60;
	exit 0;
}
elsif ($do eq 'segv') { kill 'SEGV', $$; sleep 5; exit 1; }
elsif ($do eq 'flood')
{
	my $chunk = 'x' x 65536;
	print $chunk for 1 .. 320;
	print STDERR "line $_\n" for 1 .. 100000;
	exit 0;
}
elsif ($do eq 'log') { print STDERR "log line $_\n" for 1 .. ($p->{n} // 3); print '{}'; exit 0; }
exit 0;
