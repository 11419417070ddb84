/*
 * exec.c
 *	  Runs one task's program for the exec handler (see exec.h for the life
 *	  of an ExecRun): fork + exec in a process group of its own, the input
 *	  written to its stdin, stdout kept as the result, stderr kept as log
 *	  lines, its end noticed through an ev_child watcher, all on the default
 *	  libev loop without ever blocking it.  The child's side of the fork,
 *	  and what is prepared for it, is in exec_child.c.
 *
 * Ownership:
 *	- An ExecRun owns its parent-side pipe ends (-1 once closed), a copy of
 *	  the input (freed as soon as stdin is closed), a copy of argv[0] for
 *	  messages, the output buffer and the log lines.  exec_start copies what
 *	  it needs from the spec: the caller may free the spec when it returns.
 *	- The ExecResult given to the done callback lives in the run and points
 *	  into it: it is valid until exec_free.
 *
 * Invariants:
 *	- Every watcher is embedded in the run and recovers it with
 *	  container_of.  An ev_io is stopped before its descriptor is closed.
 *	- The child's pid is its process group id too: both sides of the fork
 *	  call setpgid, so the group exists before the parent can signal it.
 *	  Signals go to the whole group, and never to a pgid <= 1 (kill(-1) and
 *	  kill(0) would hit tqd itself or everything it may signal).
 *	- done is called once, by finish(), from a watcher callback, when the
 *	  child was reaped and both output pipes are closed.  finish() does
 *	  nothing after the call, since done may exec_free the run: that is the
 *	  one way a run is freed inside one of its own callbacks, and it is safe
 *	  because finish() has stopped every watcher of the run first (libev
 *	  drops a stopped watcher's pending events).
 *	- Once the child was reaped its group is killed with SIGKILL when the
 *	  run ends, so no grandchild outlives its task.  Signalling the pgid
 *	  after the reap is safe: Linux keeps the number allocated while any
 *	  process still uses it as its group id, and once the group is empty
 *	  a new group could only get it after pids wrapped around (they are
 *	  handed out cyclically), which the linger is far too short for.
 *
 * What tqd must provide: the default loop (only it has child watchers),
 * SIGCHLD left to libev, and SIGPIPE ignored, so that writing to the stdin
 * of a program that has exited fails with EPIPE instead of killing tqd.
 */
#include "exec.h"
#include "exec_child.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

/*
 * The run being forked, seen by the child only.  A child whose exec fails
 * exits with the parent's heap copied; a leak checker that follows forks
 * (valgrind) would call this run lost in it without a pointer it can see.
 */
static ExecRun *volatile forking_run;

#define LOG_LINE_MAX 4096 /* a longer stderr line is cut here (exec.h) */
#define READ_CHUNK 65536  /* one pipe's default capacity on Linux */
#define OUTPUT_START 4096 /* first size of the output buffer; it doubles */

/*
 * How long a run waits, after the child was reaped, for stdout and stderr
 * to reach EOF before killing the group and closing them.  A grandchild
 * that inherited the pipes keeps them open; a real program flushes and
 * exits well within this.  Fixed rather than a config key because it only
 * bounds how long a misbehaving task delays its own completion.
 */
#define LINGER_SECONDS 0.25

/* At most this many reads empty a pipe before it is closed at the linger. */
#define LINGER_DRAIN_READS 16

typedef enum RunState
{
	RUN_RUNNING,  /* child started, not reaped, not signalled by us */
	RUN_STOPPING, /* SIGTERM sent (timeout or exec_stop); SIGKILL after the grace */
	RUN_REAPED,   /* child reaped; waiting for EOF on stdout/stderr, at most the linger */
	RUN_DONE,     /* done was called; only exec_free remains */
} RunState;

struct ExecRun
{
	struct ev_loop *loop; /* the default loop */
	RunState state;
	ExecEnd stop_reason; /* EXEC_TIMEOUT or EXEC_STOPPED once stopping */
	pid_t pid;           /* the child; 0 once reaped */
	pid_t pgid;          /* its group: stays set after reaping, for the final SIGKILL */
	double started;      /* CLOCK_MONOTONIC at the fork */
	double kill_grace;   /* s from SIGTERM to SIGKILL */
	char *argv0;         /* for messages */
	ExecDoneFn done;
	void *arg;

	/* stdin */
	int in_fd;        /* write end, non-blocking; -1 once closed */
	char *input;      /* copy of the input; freed when stdin is closed */
	size_t input_len; /* bytes in input */
	size_t input_off; /* bytes written so far */

	/* stdout */
	int out_fd;         /* read end, non-blocking; -1 at EOF */
	char *out;          /* out_cap + 1 bytes (room for the NUL) */
	size_t out_len;     /* bytes kept */
	size_t out_cap;     /* bytes that fit in out without growing */
	size_t max_output;  /* bytes to keep at most */
	bool out_truncated; /* bytes were dropped */

	/* stderr */
	int err_fd;              /* read end, non-blocking; -1 at EOF */
	char line[LOG_LINE_MAX]; /* the line being read */
	size_t line_len;         /* bytes in line */
	bool line_cut;           /* the line being read is longer than LOG_LINE_MAX */
	bool log_full;           /* a line was dropped: nothing more is kept */
	char **lines;            /* kept lines, each malloc'ed and NUL-terminated */
	int nlines;              /* lines kept */
	int lines_cap;           /* room in lines */
	size_t log_bytes;        /* bytes in the kept lines */
	size_t max_log_bytes;    /* at most this many bytes */
	int max_log_lines;       /* at most this many lines */
	bool log_truncated;      /* lines or bytes were dropped */

	int status_fd; /* read end of the child's exec-error pipe; -1 once read */

	ev_io in_w;         /* stdin writable */
	ev_io out_w;        /* stdout readable */
	ev_io err_w;        /* stderr readable */
	ev_child child_w;   /* the child's exit */
	ev_timer timeout_w; /* spec->timeout */
	ev_timer grace_w;   /* SIGTERM was sent kill_grace ago */
	ev_timer linger_w;  /* the child was reaped LINGER_SECONDS ago */

	ExecResult result; /* filled as the run ends; given to done */
};

static bool grow_output(ExecRun *run, size_t need) __attribute__((warn_unused_result));

static void
set_state(ExecRun *run, RunState to)
{
	/*
	 * The order is RUNNING -> (STOPPING) -> REAPED -> DONE; exec_free may end
	 * a run in any state.  Nothing goes back.
	 */
	if (to > run->state)
		run->state = to;
}

static double
monotonic_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Sends sig to the run's process group; an empty group (ESRCH) is fine. */
static void
kill_group(ExecRun *run, int sig)
{
	if (run->pgid > 1)
		(void) kill(-run->pgid, sig);
}

/* Stops an fd's watcher, then closes the fd. */
static void
close_watched(ExecRun *run, ev_io *w, int *fd)
{
	if (*fd < 0)
		return;
	ev_io_stop(run->loop, w);
	close(*fd);
	*fd = -1;
}

/*
 * Reads what a pipe has: > 0 bytes read, 0 at EOF or on an error (either
 * way nothing more will come), -1 if nothing is there yet.
 */
static ssize_t
read_pipe(int fd, char *buf, size_t len)
{
	ssize_t n;

	do
		n = read(fd, buf, len);
	while (n < 0 && errno == EINTR);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return -1;
	return n < 0 ? 0 : n;
}

/* Closes stdin, dropping the input not written (the child will never read it). */
static void
close_stdin(ExecRun *run)
{
	close_watched(run, &run->in_w, &run->in_fd);
	free(run->input);
	run->input = NULL;
}

/* Grows the output buffer to hold at least need <= max_output bytes. */
static bool
grow_output(ExecRun *run, size_t need)
{
	size_t cap = run->out_cap > 0 ? run->out_cap : OUTPUT_START;
	char *p;

	while (cap < need)
		cap = cap > run->max_output / 2 ? run->max_output : cap * 2;
	if (cap > run->max_output)
		cap = run->max_output;
	p = realloc(run->out, cap + 1);
	if (p == NULL)
		return false;
	run->out = p;
	run->out_cap = cap;
	return true;
}

/* Keeps the first max_output bytes of stdout; the rest is dropped. */
static void
take_stdout(ExecRun *run, const char *p, size_t n)
{
	size_t room = run->max_output - run->out_len;
	size_t take = n < room ? n : room;

	if (take < n)
		run->out_truncated = true;
	if (take == 0)
		return;
	if (run->out_len + take > run->out_cap && !grow_output(run, run->out_len + take))
	{
		/* out of memory: keep what we have, and nothing after it */
		run->max_output = run->out_len;
		run->out_truncated = true;
		return;
	}
	memcpy(run->out + run->out_len, p, take);
	run->out_len += take;
}

/* Keeps one complete line if the limits allow; else the log is full. */
static void
end_line(ExecRun *run)
{
	size_t len = run->line_len;
	bool cut = run->line_cut;
	char *copy;

	run->line_len = 0;
	run->line_cut = false;
	if (run->log_full)
		return;
	if (cut)
		run->log_truncated = true;

	/*
	 * Past either limit nothing more is kept, even a shorter line that
	 * would still fit: the log stays one unbroken stretch from the start.
	 */
	if (run->nlines >= run->max_log_lines || len > run->max_log_bytes - run->log_bytes)
		goto full;
	if (run->nlines == run->lines_cap)
	{
		int cap = run->lines_cap == 0                       ? 16
				  : run->lines_cap > run->max_log_lines / 2 ? run->max_log_lines
															: run->lines_cap * 2;
		char **p;

		if (cap > run->max_log_lines)
			cap = run->max_log_lines;
		p = realloc(run->lines, cap * sizeof *p);
		if (p == NULL)
			goto full;
		run->lines = p;
		run->lines_cap = cap;
	}
	copy = malloc(len + 1);
	if (copy == NULL)
		goto full;
	memcpy(copy, run->line, len);
	copy[len] = '\0';
	run->lines[run->nlines++] = copy;
	run->log_bytes += len;
	return;

full:
	run->log_full = true;
	run->log_truncated = true;
}

/* Splits stderr into lines, each cut at LOG_LINE_MAX bytes. */
static void
take_stderr(ExecRun *run, const char *p, size_t n)
{
	while (n > 0 && !run->log_full)
	{
		const char *nl = memchr(p, '\n', n);
		size_t len = nl ? (size_t) (nl - p) : n;
		size_t room = LOG_LINE_MAX - run->line_len;
		size_t take = len < room ? len : room;

		if (take < len)
			run->line_cut = true;
		memcpy(run->line + run->line_len, p, take);
		run->line_len += take;
		if (nl == NULL)
			return;
		end_line(run);
		p += len + 1;
		n -= len + 1;
	}
	/* log_full: log_truncated is already set; the bytes are dropped */
}

/* Closes stderr; a last line without its newline still counts. */
static void
close_stderr(ExecRun *run)
{
	close_watched(run, &run->err_w, &run->err_fd);
	if (run->line_len > 0)
		end_line(run);
}

/*
 * The end of the run: stops everything, kills what is left of the group,
 * fills the result and calls done.  Runs from a watcher callback only, once
 * the child was reaped.  Must not touch run after calling done.
 */
static void
finish(ExecRun *run)
{
	ExecResult *r = &run->result;

	ev_timer_stop(run->loop, &run->timeout_w);
	ev_timer_stop(run->loop, &run->grace_w);
	ev_timer_stop(run->loop, &run->linger_w);
	close_stdin(run);
	close_watched(run, &run->out_w, &run->out_fd);
	close_stderr(run);
	kill_group(run, SIGKILL);

	r->output = run->out;
	r->output[run->out_len] = '\0';
	r->output_len = run->out_len;
	r->output_truncated = run->out_truncated;
	r->log_lines = run->lines;
	r->nlog_lines = run->nlines;
	r->log_truncated = run->log_truncated;
	set_state(run, RUN_DONE);
	run->done(run, r, run->arg);
	/* run may be freed here */
}

/* Finishes if the child was reaped and both output pipes reached EOF. */
static void
maybe_finish(ExecRun *run)
{
	if (run->state == RUN_REAPED && run->out_fd < 0 && run->err_fd < 0)
		finish(run);
}

static void
stdin_cb(EV_P_ ev_io *w, int revents)
{
	ExecRun *run = container_of(w, ExecRun, in_w);

	while (run->input_off < run->input_len)
	{
		ssize_t n = write(run->in_fd, run->input + run->input_off, run->input_len - run->input_off);

		if (n >= 0)
			run->input_off += (size_t) n;
		else if (errno == EAGAIN || errno == EWOULDBLOCK)
			return; /* the pipe is full: wait until the child reads */
		else if (errno != EINTR)
			break; /* EPIPE: the child closed its stdin and reads no more */
	}
	close_stdin(run);
}

static void
stdout_cb(EV_P_ ev_io *w, int revents)
{
	ExecRun *run = container_of(w, ExecRun, out_w);
	char buf[READ_CHUNK];
	ssize_t n = read_pipe(run->out_fd, buf, sizeof buf);

	if (n > 0)
		take_stdout(run, buf, (size_t) n);
	else if (n == 0)
	{
		close_watched(run, &run->out_w, &run->out_fd);
		maybe_finish(run); /* last: may free run */
	}
}

static void
stderr_cb(EV_P_ ev_io *w, int revents)
{
	ExecRun *run = container_of(w, ExecRun, err_w);
	char buf[READ_CHUNK];
	ssize_t n = read_pipe(run->err_fd, buf, sizeof buf);

	if (n > 0)
		take_stderr(run, buf, (size_t) n);
	else if (n == 0)
	{
		close_stderr(run);
		maybe_finish(run); /* last: may free run */
	}
}

/*
 * After the child's exit, whether it had failed to exec: the status pipe
 * then holds its ChildError (written before it exited); otherwise it is at
 * EOF, since the exec closed the child's end.
 */
static void
read_child_error(ExecRun *run)
{
	ExecResult *r = &run->result;
	ChildError ce;
	ssize_t n;

	do
		n = read(run->status_fd, &ce, sizeof ce);
	while (n < 0 && errno == EINTR);
	close(run->status_fd);
	run->status_fd = -1;
	if (n != (ssize_t) sizeof ce)
		return;

	r->end = EXEC_FAILED;
	r->error_errno = ce.err;
	errno = ce.err;
	switch (ce.stage)
	{
		case STAGE_EXEC:
			snprintf(r->error, sizeof r->error, "could not run \"%s\": %m", run->argv0);
			break;
		case STAGE_RLIMIT:
			snprintf(r->error, sizeof r->error, "could not set resource limits for \"%s\": %m",
					 run->argv0);
			break;
		default:
			snprintf(r->error, sizeof r->error,
					 "could not set up stdin/stdout/stderr for \"%s\": %m", run->argv0);
			break;
	}
}

static void
child_cb(EV_P_ ev_child *w, int revents)
{
	ExecRun *run = container_of(w, ExecRun, child_w);
	ExecResult *r = &run->result;
	int status = w->rstatus;

	/* with trace 0 only an exit is reported; be safe about the rest */
	if (!WIFEXITED(status) && !WIFSIGNALED(status))
		return;
	ev_child_stop(EV_A_ w);
	run->pid = 0;
	r->seconds = monotonic_now() - run->started;
	if (WIFEXITED(status))
	{
		r->end = EXEC_EXITED;
		r->exit_status = WEXITSTATUS(status);
	}
	else
	{
		r->end = EXEC_SIGNALED;
		r->term_signal = WTERMSIG(status);
	}
	/* killed or not, a run we stopped ends as stopped; the status stays as detail */
	if (run->state == RUN_STOPPING)
		r->end = run->stop_reason;
	read_child_error(run);

	ev_timer_stop(run->loop, &run->timeout_w);
	ev_timer_stop(run->loop, &run->grace_w);
	close_stdin(run);
	set_state(run, RUN_REAPED);
	if (run->out_fd >= 0 || run->err_fd >= 0)
	{
		ev_timer_set(&run->linger_w, LINGER_SECONDS, 0.);
		ev_timer_start(run->loop, &run->linger_w);
		return;
	}
	finish(run); /* last: may free run */
}

/* Reads what a pipe already holds (bounded), then closes it. */
static void
drain_and_close(ExecRun *run, int *fd, void (*take)(ExecRun *, const char *, size_t),
				void (*close_fn)(ExecRun *))
{
	char buf[READ_CHUNK];

	for (int i = 0; *fd >= 0 && i < LINGER_DRAIN_READS; i++)
	{
		ssize_t n = read_pipe(*fd, buf, sizeof buf);

		if (n <= 0)
			break;
		take(run, buf, (size_t) n);
	}
	close_fn(run);
}

static void
close_stdout(ExecRun *run)
{
	close_watched(run, &run->out_w, &run->out_fd);
}

/*
 * The child is gone but something still holds stdout or stderr open: a
 * grandchild.  Kill the group, keep what is already in the pipes, and end
 * the run without waiting for EOF (a grandchild that left the group with
 * setsid may keep the pipes open forever).
 */
static void
linger_cb(EV_P_ ev_timer *w, int revents)
{
	ExecRun *run = container_of(w, ExecRun, linger_w);

	kill_group(run, SIGKILL);
	drain_and_close(run, &run->out_fd, take_stdout, close_stdout);
	drain_and_close(run, &run->err_fd, take_stderr, close_stderr);
	finish(run); /* last: may free run */
}

static void
grace_cb(EV_P_ ev_timer *w, int revents)
{
	ExecRun *run = container_of(w, ExecRun, grace_w);

	kill_group(run, SIGKILL);
}

/* The stop path, for exec_stop and the timeout. */
static void
begin_stop(ExecRun *run, ExecEnd reason)
{
	if (run->state != RUN_RUNNING)
		return; /* already stopping (the first reason stays), or already exited */
	run->stop_reason = reason;
	set_state(run, RUN_STOPPING);
	ev_timer_stop(run->loop, &run->timeout_w);
	if (run->kill_grace <= 0)
	{
		kill_group(run, SIGKILL);
		return;
	}
	kill_group(run, SIGTERM);
	/* a stopped (SIGSTOP) process would not act on SIGTERM until continued */
	kill_group(run, SIGCONT);
	ev_timer_set(&run->grace_w, run->kill_grace, 0.);
	ev_timer_start(run->loop, &run->grace_w);
}

static void
timeout_cb(EV_P_ ev_timer *w, int revents)
{
	ExecRun *run = container_of(w, ExecRun, timeout_w);

	begin_stop(run, EXEC_TIMEOUT);
}

/* Frees what a run owns; its watchers must be stopped and its fds closed. */
static void
free_run(ExecRun *run)
{
	for (int i = 0; i < run->nlines; i++)
		free(run->lines[i]);
	free(run->lines);
	free(run->out);
	free(run->input);
	free(run->argv0);
	free(run);
}

ExecRun *
exec_start(struct ev_loop *loop, const ExecSpec *spec, ExecDoneFn done, void *arg, char *err,
		   size_t errlen)
{
	ExecRun *run = NULL;
	int in[2] = {-1, -1}, out[2] = {-1, -1}, errp[2] = {-1, -1}, st[2] = {-1, -1};
	char **envp = NULL;
	ChildLimits lim;
	sigset_t all, old;
	pid_t pid;
	int saved;

	if (!ev_is_default_loop(loop))
	{
		snprintf(err, errlen, "programs can only be run on the default libev loop");
		errno = EINVAL;
		return NULL;
	}
	if (spec->argv == NULL || spec->argv[0] == NULL || spec->argv[0][0] == '\0')
	{
		snprintf(err, errlen, "no program to run");
		errno = EINVAL;
		return NULL;
	}

	run = calloc(1, sizeof *run);
	if (run == NULL)
		goto fail_nomem;
	run->loop = loop;
	run->in_fd = run->out_fd = run->err_fd = run->status_fd = -1;
	run->stop_reason = EXEC_STOPPED;
	run->kill_grace = spec->kill_grace;
	run->done = done;
	run->arg = arg;
	run->max_output = spec->max_output;
	run->max_log_bytes = spec->max_log_bytes;
	run->max_log_lines = spec->max_log_lines > 0 ? spec->max_log_lines : 0;
	run->argv0 = strdup(spec->argv[0]);
	if (run->argv0 == NULL)
		goto fail_nomem;
	run->out_cap = spec->max_output < OUTPUT_START ? spec->max_output : OUTPUT_START;
	run->out = malloc(run->out_cap + 1);
	if (run->out == NULL)
		goto fail_nomem;
	if (spec->input_len > 0)
	{
		/* a copy: the caller's buffer need not outlive this call */
		run->input = malloc(spec->input_len);
		if (run->input == NULL)
			goto fail_nomem;
		memcpy(run->input, spec->input, spec->input_len);
		run->input_len = spec->input_len;
	}
	envp = build_env(spec->env, spec->pass_env);
	if (envp == NULL)
		goto fail_nomem;
	prepare_limits(spec, &lim);

	if (!make_pipe(in) || !make_pipe(out) || !make_pipe(errp) || !make_pipe(st))
	{
		snprintf(err, errlen, "could not create a pipe: %m");
		goto fail;
	}
	if (!set_nonblock(in[1]) || !set_nonblock(out[0]) || !set_nonblock(errp[0]) ||
		!set_nonblock(st[0]))
	{
		snprintf(err, errlen, "could not make a pipe non-blocking: %m");
		goto fail;
	}

	/*
	 * Block every signal across the fork, so that no handler of tqd's runs
	 * in the child before it has reset them (libev's would write to the
	 * loop's wakeup pipe, which the child shares).
	 */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	forking_run = run;
	pid = fork();
	if (pid == 0)
	{
		int fds[3] = {in[0], out[1], errp[1]};

		child_exec(spec->argv, envp, fds, st[1], &lim);
	}
	saved = errno;
	forking_run = NULL;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (pid < 0)
	{
		errno = saved;
		snprintf(err, errlen, "could not fork: %m");
		goto fail;
	}

	/* the child does the same: whichever runs first makes the group */
	(void) setpgid(pid, pid);
	run->started = monotonic_now();
	run->pid = run->pgid = pid;
	free(envp);
	close(in[0]);
	close(out[1]);
	close(errp[1]);
	close(st[1]);
	run->in_fd = in[1];
	run->out_fd = out[0];
	run->err_fd = errp[0];
	run->status_fd = st[0];

	/* the child watcher must be started before control returns to the loop */
	ev_child_init(&run->child_w, child_cb, pid, 0);
	ev_child_start(loop, &run->child_w);
	ev_io_init(&run->in_w, stdin_cb, run->in_fd, EV_WRITE);
	ev_io_init(&run->out_w, stdout_cb, run->out_fd, EV_READ);
	ev_io_init(&run->err_w, stderr_cb, run->err_fd, EV_READ);
	ev_timer_init(&run->timeout_w, timeout_cb, 0., 0.);
	ev_timer_init(&run->grace_w, grace_cb, 0., 0.);
	ev_timer_init(&run->linger_w, linger_cb, 0., 0.);
	ev_io_start(loop, &run->out_w);
	ev_io_start(loop, &run->err_w);
	if (run->input_len > 0)
		ev_io_start(loop, &run->in_w);
	else
		close_stdin(run); /* nothing to write: the child sees EOF at once */
	if (spec->timeout > 0)
	{
		ev_timer_set(&run->timeout_w, spec->timeout, 0.);
		ev_timer_start(loop, &run->timeout_w);
	}
	return run;

fail_nomem:
	errno = ENOMEM;
	snprintf(err, errlen, "out of memory");
fail:
	saved = errno;
	for (int i = 0; i < 2; i++)
	{
		if (st[i] >= 0)
			close(st[i]);
		if (errp[i] >= 0)
			close(errp[i]);
		if (out[i] >= 0)
			close(out[i]);
		if (in[i] >= 0)
			close(in[i]);
	}
	free(envp);
	if (run != NULL)
		free_run(run);
	errno = saved;
	return NULL;
}

void
exec_stop(ExecRun *run)
{
	begin_stop(run, EXEC_STOPPED);
}

pid_t
exec_pid(const ExecRun *run)
{
	return run->pid;
}

/*
 * On a run still going: SIGKILL to the group, then a reap without waiting.
 * The child is usually not dead yet at that point (the signal takes a
 * moment); it is then left to libev, whose SIGCHLD handling reaps every
 * child, watched or not, on a later loop iteration.  Waiting here could
 * block the loop (a process in uninterruptible sleep dies late).
 */
void
exec_free(ExecRun *run)
{
	if (run == NULL)
		return;
	if (run->state != RUN_DONE)
		kill_group(run, SIGKILL);
	if (run->pid > 0)
	{
		int status;

		ev_child_stop(run->loop, &run->child_w);
		(void) waitpid(run->pid, &status, WNOHANG);
		run->pid = 0;
	}
	ev_timer_stop(run->loop, &run->timeout_w);
	ev_timer_stop(run->loop, &run->grace_w);
	ev_timer_stop(run->loop, &run->linger_w);
	close_watched(run, &run->in_w, &run->in_fd);
	close_watched(run, &run->out_w, &run->out_fd);
	close_watched(run, &run->err_w, &run->err_fd);
	if (run->status_fd >= 0)
		close(run->status_fd);
	free_run(run);
}

Outcome
exec_classify(const ExecResult *r, int throttled_exit)
{
	switch (r->end)
	{
		case EXEC_EXITED:
			if (r->exit_status == 0)
				return OUTCOME_SUCCESS;
			/* the queue's own code wins over the sysexits conventions below */
			if (r->exit_status == throttled_exit)
				return OUTCOME_THROTTLED;
			if (r->exit_status == EX_USAGE || r->exit_status == EX_DATAERR)
				return OUTCOME_NEVER;
			return OUTCOME_RETRY; /* EX_TEMPFAIL and anything else */
		case EXEC_SIGNALED:
		case EXEC_TIMEOUT:
		case EXEC_STOPPED:
			return OUTCOME_RETRY;
		case EXEC_FAILED:
			/* a missing or non-executable program will not fix itself */
			if (r->error_errno == ENOENT || r->error_errno == EACCES || r->error_errno == ENOEXEC)
				return OUTCOME_NEVER;
			return OUTCOME_RETRY;
	}
	return OUTCOME_RETRY;
}

const char *
outcome_name(Outcome o)
{
	switch (o)
	{
		case OUTCOME_SUCCESS:
			return "success";
		case OUTCOME_RETRY:
			return "retry";
		case OUTCOME_NEVER:
			return "never";
		case OUTCOME_THROTTLED:
			return "throttled";
	}
	return "unknown";
}

/* Seconds with at most 3 decimals, trailing zeros trimmed: "30", "0.5". */
static void
format_seconds(double s, char *buf, size_t len)
{
	char *p;

	snprintf(buf, len, "%.3f", s);
	p = strchr(buf, '.');
	if (p == NULL)
		return;
	p += strlen(p) - 1;
	while (*p == '0')
		*p-- = '\0';
	if (*p == '.')
		*p = '\0';
}

void
exec_describe(const ExecResult *r, char *buf, size_t len)
{
	char secs[64];

	if (len == 0)
		return;
	switch (r->end)
	{
		case EXEC_EXITED:
			snprintf(buf, len, "exit status %d", r->exit_status);
			return;
		case EXEC_SIGNALED:
			snprintf(buf, len, "killed by signal %d (%s)", r->term_signal,
					 strsignal(r->term_signal));
			return;
		case EXEC_TIMEOUT:
			format_seconds(r->seconds, secs, sizeof secs);
			snprintf(buf, len, "timed out after %s s", secs);
			return;
		case EXEC_STOPPED:
			snprintf(buf, len, "stopped");
			return;
		case EXEC_FAILED:
			snprintf(buf, len, "%s", r->error);
			return;
	}
	snprintf(buf, len, "unknown end %d", (int) r->end);
}
