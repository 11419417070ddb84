#!/bin/sh
# A quick program for tqd's exec handler that records its runs (TAP 024):
#
#   record.sh RUNLOG
#
# appends one line "TQ_TASK_ID TQ_ATTEMPT" to the file RUNLOG and exits 0.
# A payload with a "sleep" number ({"sleep": 0.05}) makes it sleep that
# many seconds, and the line then says when the run began and ended too:
# "TQ_TASK_ID TQ_ATTEMPT START END" (seconds since the epoch, to the
# nanosecond: date +%s.%N).
#
# sh, and nothing but builtins for a run without sleep: thousands of runs
# cost a millisecond or two each.  The line is one write(2) to a file
# opened for appending, so the lines of concurrent runs do not mix.  A run
# stopped before its end leaves no line.
log=${1:?usage: record.sh RUNLOG}
IFS= read -r payload || :
case $payload in
*'"sleep":'*)
	start=$(date +%s.%N)
	secs=${payload#*\"sleep\":}
	secs=${secs# }
	secs=${secs%%[!0-9.]*}
	sleep "$secs"
	end=$(date +%s.%N)
	echo "$TQ_TASK_ID $TQ_ATTEMPT $start $end" >>"$log"
	;;
*)
	echo "$TQ_TASK_ID $TQ_ATTEMPT" >>"$log"
	;;
esac
