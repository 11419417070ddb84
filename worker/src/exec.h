/*
 * exec.h
 *	  Running one task's program: fork + exec in a process group of its
 *	  own, the payload written to its stdin, stdout captured as the result,
 *	  stderr captured line by line as the task's log, all on the libev
 *	  loop (ev_io for the pipes, ev_child for the exit, ev_timer for the
 *	  timeout and the kill grace).  Never through a shell.
 *
 * Life of an ExecRun:
 *
 *	exec_start      forks; the child gets the payload on stdin, the
 *	                environment given, rlimits, default signal handling
 *	running         reads stdout/stderr, writes stdin (a child that does not
 *	                read its stdin is fine: the rest is dropped on EPIPE or
 *	                when it exits)
 *	exec_stop       or the timeout: SIGTERM to the group, SIGKILL to it
 *	                after the grace period
 *	done            once the child was reaped and both pipes reached EOF
 *	                (or, after the exit, a short linger: a grandchild that
 *	                keeps the pipes open is killed with the group) -- the
 *	                done callback runs once, from the loop
 *
 * The done callback may call exec_free on the run.  exec_free on a run
 * still going kills its group with SIGKILL first (used at fast shutdown).
 *
 * Requires the default libev loop (child watchers only work there) and
 * SIGCHLD left to libev.
 */
#ifndef TQD_EXEC_H
#define TQD_EXEC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <ev.h>

typedef struct ExecSpec
{
	char *const *argv;    /* argv[0] is looked up in PATH if it has no '/' */
	char *const *env;     /* NAME=VALUE entries added to tqd's own; a bare NAME unsets it */
	const char *pass_env; /* tqd's variables passed on: NAME and PREFIX* separated by
						   * blanks ("*": all; "": none); NULL = all of them */
	const char *input;    /* written to stdin, then stdin is closed */
	size_t input_len;
	double timeout;       /* s; 0 = none */
	double kill_grace;    /* s between SIGTERM and SIGKILL */
	size_t max_output;    /* stdout bytes kept; the rest is read and dropped */
	size_t max_log_bytes; /* stderr bytes kept in lines */
	int max_log_lines;    /* stderr lines kept (each line also cut at 4 kB) */
	size_t memory_limit;  /* RLIMIT_AS in bytes; 0 = unchanged */
	double cpu_limit;     /* RLIMIT_CPU in s; 0 = unchanged */
} ExecSpec;

typedef enum ExecEnd
{
	EXEC_EXITED,   /* exited; exit_status is valid */
	EXEC_SIGNALED, /* killed by a signal it did not get from us; term_signal */
	EXEC_TIMEOUT,  /* we stopped it: timeout */
	EXEC_STOPPED,  /* we stopped it: exec_stop (cancel, shutdown) */
	EXEC_FAILED,   /* could not be started (exec failed); error says why */
} ExecEnd;

typedef struct ExecResult
{
	ExecEnd end;
	int exit_status; /* EXEC_EXITED */
	int term_signal; /* EXEC_SIGNALED */
	char *output;    /* stdout, NUL-terminated, at most max_output bytes */
	size_t output_len;
	bool output_truncated;
	char **log_lines; /* stderr lines without their newline */
	int nlog_lines;
	bool log_truncated; /* lines or bytes were dropped */
	char error[256];    /* EXEC_FAILED: strerror of exec, or of fork/pipe */
	double seconds;     /* wall time from fork to reaping */
	int error_errno;    /* EXEC_FAILED: the errno, for exec_classify */
} ExecResult;

typedef struct ExecRun ExecRun;
typedef void (*ExecDoneFn)(ExecRun *run, const ExecResult *result, void *arg);

/*
 * Starts the program.  Returns NULL (errno set, message in err) when the
 * pipes or the fork fail; an exec that fails in the child is reported
 * through the callback as EXEC_FAILED instead.
 */
extern ExecRun *exec_start(struct ev_loop *loop, const ExecSpec *spec, ExecDoneFn done, void *arg,
						   char *err, size_t errlen) __attribute__((warn_unused_result));
/* Stops a running program: SIGTERM to its group, SIGKILL after the grace. */
extern void exec_stop(ExecRun *run);
/* The child's pid (its process group id too); 0 once reaped. */
extern pid_t exec_pid(const ExecRun *run);
/* Frees the run; kills the group first if it is still running. */
extern void exec_free(ExecRun *run);

/*
 * What a finished program means for its task: the pure classification,
 * unit-tested.  throttled_exit is the queue's configured code.
 */
typedef enum Outcome
{
	OUTCOME_SUCCESS,   /* tq_complete */
	OUTCOME_RETRY,     /* tq_fail, retry 'auto' (backoff, counts an attempt) */
	OUTCOME_NEVER,     /* tq_fail, retry 'never' (dead at once) */
	OUTCOME_THROTTLED, /* tq_fail, retry 'throttled' (backoff, free attempt) */
} Outcome;

extern Outcome exec_classify(const ExecResult *r, int throttled_exit);
extern const char *outcome_name(Outcome o);

/*
 * A one-line description of how the program ended, for last_error:
 * "exit status 3", "killed by signal 11 (Segmentation fault)", "timed out
 * after 30 s", "could not run \"x\": No such file or directory".
 */
extern void exec_describe(const ExecResult *r, char *buf, size_t len);

#endif
