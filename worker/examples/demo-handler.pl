#!/usr/bin/perl
# An example task program for tqd's exec handler (make demo runs it).
#
# tqd gives it the task's payload on stdin and TQ_TASK_ID, TQ_ATTEMPT,
# TQ_QUEUE, TQ_TENANT and TQ_DEADLINE in the environment; what it prints on
# stdout becomes the task's result (JSON here), what it prints on stderr
# the task's log (tq_task_log), and its exit status the outcome:
#
#   0    success
#   75   EX_TEMPFAIL: failed for now, retry with backoff
#   65   EX_DATAERR: bad input, never retry (dead at once)
#   69   throttled (the queue's throttled_exit): retry without using an attempt
#   else failed, retry with backoff
#
# The payload's "work" says what this example does: ok, fail_once,
# bad_input or always_fail.
use strict;
use warnings;
use JSON::PP;

my $in = do { local $/; <STDIN> };
my $task = eval { decode_json($in) } || {};
my $work = $task->{work} // 'ok';
my $attempt = $ENV{TQ_ATTEMPT} // 1;

print STDERR "task $ENV{TQ_TASK_ID} attempt $attempt on queue $ENV{TQ_QUEUE}: $work\n";
if ($work eq 'fail_once' && $attempt == 1)
{
	print STDERR "converter crashed (transient)\n";
	exit 75;
}
if ($work eq 'bad_input')
{
	print STDERR "invalid address: " . ($task->{to} // '') . "\n";
	exit 65;
}
if ($work eq 'always_fail')
{
	print STDERR "SMTP 451 on attempt $attempt\n";
	exit 75;
}
print encode_json({ done_by => 'demo-handler.pl', attempt => $attempt + 0, pid => $$ + 0 });
exit 0;
