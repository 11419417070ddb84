/*
 * test_exec.c
 *	  exec.c against real processes on the default libev loop: output,
 *	  input, environment, the child's signal state and descriptors, exit
 *	  statuses and their classification, signals, the timeout and the kill
 *	  grace, exec_stop, floods on stdout and stderr, programs that ignore
 *	  their input, exec failures, grandchildren that keep the pipes open,
 *	  rlimits, exec_free on running programs, and no descriptor or child
 *	  left behind after it all.
 *
 *	  Each case runs the loop until its done callback fired, under a
 *	  deadline, so that a bug fails the case instead of hanging the test.
 *	  The programs are /bin/sh scripts and coreutils (tqd never runs a
 *	  shell; a test may).  The memory limit case runs this binary itself in
 *	  its "alloc" mode, so no helper needs building.
 */
#include "exec.h"
#include "exec_child.h" /* env_passed */
#include "tap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NTESTS 179

/* An AddressSanitizer binary cannot start under a small RLIMIT_AS. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static char self_path[PATH_MAX]; /* this binary, for the alloc mode */

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One run and what its done callback saw. */
typedef struct Case
{
	ExecRun *run;   /* as exec_start returned it */
	int calls;      /* done callbacks so far */
	bool in_start;  /* a done callback ran inside exec_start */
	bool same_run;  /* done got the run exec_start returned */
	ExecResult res; /* copy of the result: its pointers live until exec_free */
	double t0;      /* when exec_start was called */
	double elapsed; /* from exec_start to done */
} Case;

static bool starting; /* inside exec_start */

static void
on_done(ExecRun *run, const ExecResult *r, void *arg)
{
	Case *c = arg;

	c->calls++;
	c->in_start = c->in_start || starting;
	c->same_run = run == c->run;
	c->res = *r;
	c->elapsed = now() - c->t0;
}

static bool deadline_hit;

static void
deadline_cb(EV_P_ ev_timer *w, int revents)
{
	deadline_hit = true;
}

/* Runs the loop until *count >= want or limit seconds passed. */
static bool
loop_until(const int *count, int want, double limit)
{
	ev_timer t;

	deadline_hit = false;
	ev_timer_init(&t, deadline_cb, limit, 0.);
	ev_timer_start(EV_DEFAULT, &t);
	while (*count < want && !deadline_hit)
		ev_run(EV_DEFAULT, EVRUN_ONCE);
	ev_timer_stop(EV_DEFAULT, &t);
	return *count >= want;
}

/* Runs the loop for s seconds: timers fire, libev reaps children. */
static void
loop_for(double s)
{
	int never = 0;

	(void) loop_until(&never, 1, s);
}

static ExecSpec
spec_of(char **argv)
{
	ExecSpec s;

	memset(&s, 0, sizeof s);
	s.argv = argv;
	s.kill_grace = 2;
	s.max_output = 4 << 20;
	s.max_log_bytes = 64 << 10;
	s.max_log_lines = 100;
	return s;
}

static bool
start_case(Case *c, const ExecSpec *spec)
{
	char err[256];

	memset(c, 0, sizeof *c);
	c->t0 = now();
	starting = true;
	c->run = exec_start(EV_DEFAULT, spec, on_done, c, err, sizeof err);
	starting = false;
	if (c->run == NULL)
		printf("# exec_start: %s\n", err);
	return c->run != NULL;
}

static bool
wait_case(Case *c, double limit)
{
	if (!loop_until(&c->calls, 1, limit))
	{
		printf("# no done callback within %g s\n", limit);
		return false;
	}
	return true;
}

/* Starts spec and runs the loop until it is done; the caller exec_frees c->run. */
static bool
run_case(Case *c, const ExecSpec *spec, double limit)
{
	return start_case(c, spec) && wait_case(c, limit);
}

static const char *
describe(const ExecResult *r)
{
	static char buf[300];

	exec_describe(r, buf, sizeof buf);
	return buf;
}

static bool
has_prefix(const char *s, const char *prefix)
{
	return s != NULL && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Open descriptors of this process. */
static int
count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* Children of this process, zombies included. */
static int
count_children(void)
{
	char path[64], buf[4096];
	int fd, n = 0;
	ssize_t len;

	snprintf(path, sizeof path, "/proc/self/task/%d/children", (int) getpid());
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	len = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (len < 0)
		return -1;
	buf[len] = '\0';
	for (char *p = strtok(buf, " \n"); p; p = strtok(NULL, " \n"))
		n++;
	return n;
}

/* Whether pid is gone or a zombie (an orphan's reaper may be slow), within 2 s. */
static bool
process_gone(pid_t pid)
{
	for (int i = 0; i < 200; i++)
	{
		char path[64], buf[512], *p;
		FILE *f;

		if (kill(pid, 0) < 0 && errno == ESRCH)
			return true;
		snprintf(path, sizeof path, "/proc/%d/stat", (int) pid);
		f = fopen(path, "r");
		if (f != NULL)
		{
			bool zombie = false;

			if (fgets(buf, sizeof buf, f) != NULL && (p = strrchr(buf, ')')) != NULL)
				zombie = p[1] == ' ' && p[2] == 'Z';
			fclose(f);
			if (zombie)
				return true;
		}
		loop_for(0.01);
	}
	return false;
}

static void
test_output(void)
{
	char *argv[] = {"printf", "hello", NULL};
	char *both_argv[] = {"sh", "-c", "echo out; echo err >&2", NULL};
	ExecSpec s = spec_of(argv);
	Case c;

	ok(run_case(&c, &s, 5), "printf: done");
	loop_for(0.05); /* a second callback would come now */
	is_int(c.calls, 1, "printf: done called once");
	ok(!c.in_start && c.same_run, "printf: done from the loop, with its run");
	is_int(c.res.end, EXEC_EXITED, "printf: exited");
	is_int(c.res.exit_status, 0, "printf: exit status 0");
	is_str(c.res.output, "hello", "printf: output captured");
	is_int(c.res.output_len, 5, "printf: output_len");
	ok(!c.res.output_truncated, "printf: output not truncated");
	ok(c.res.nlog_lines == 0 && !c.res.log_truncated, "printf: no log");
	is_int(exec_classify(&c.res, 69), OUTCOME_SUCCESS, "printf: success");
	is_str(describe(&c.res), "exit status 0", "printf: described");
	ok(c.res.seconds > 0 && c.res.seconds < 5, "printf: seconds %.3f", c.res.seconds);
	is_int(exec_pid(c.run), 0, "printf: exec_pid is 0 once reaped");
	exec_free(c.run);

	s.argv = both_argv;
	s.max_output = 0;
	s.max_log_lines = 0;
	ok(run_case(&c, &s, 5), "nothing kept: done");
	ok(c.res.output && c.res.output[0] == '\0' && c.res.output_len == 0 && c.res.output_truncated,
	   "nothing kept: empty output, truncated");
	ok(c.res.nlog_lines == 0 && c.res.log_truncated, "nothing kept: no log line, truncated");
	exec_free(c.run);
}

static void
test_input(void)
{
	char *argv[] = {"cat", NULL};
	ExecSpec s = spec_of(argv);
	size_t n = 1 << 20;
	char *payload = malloc(n);
	Case c;

	for (size_t i = 0; i < n; i++)
		payload[i] = (char) (i * 7 % 251);
	s.input = payload;
	s.input_len = n;
	s.max_output = 2 << 20;
	ok(run_case(&c, &s, 10), "cat 1 MB: done");
	ok(c.res.end == EXEC_EXITED && c.res.exit_status == 0, "cat 1 MB: exit status 0");
	is_int(c.res.output_len, n, "cat 1 MB: all of it back");
	ok(c.res.output && memcmp(c.res.output, payload, n) == 0, "cat 1 MB: the same bytes");
	ok(!c.res.output_truncated, "cat 1 MB: not truncated");
	exec_free(c.run);

	s.max_output = 1000;
	ok(run_case(&c, &s, 10), "cat 1 MB, max_output 1000: done");
	ok(c.res.end == EXEC_EXITED && c.res.exit_status == 0,
	   "cat 1 MB, max_output 1000: cat read and wrote it all");
	is_int(c.res.output_len, 1000, "cat 1 MB, max_output 1000: 1000 bytes kept");
	ok(c.res.output && memcmp(c.res.output, payload, 1000) == 0 && c.res.output[1000] == '\0',
	   "cat 1 MB, max_output 1000: the first bytes, NUL-terminated");
	ok(c.res.output_truncated, "cat 1 MB, max_output 1000: truncated");
	exec_free(c.run);
	free(payload);
}

static void
test_env(void)
{
	char *argv[] = {
		"sh", "-c",
		"printf '%s %s ' \"$TQ_TASK_ID\" \"$TQ_TEST_VAR\"; env | grep -c '^TQ_TEST_VAR='", NULL};
	char *env[] = {"TQ_TASK_ID=41", "TQ_TEST_VAR", "TQ_TASK_ID=42", "TQ_TEST_VAR=child", NULL};
	ExecSpec s = spec_of(argv);
	Case c;

	setenv("TQ_TEST_VAR", "parent", 1);
	s.env = env;
	ok(run_case(&c, &s, 5), "env: done");
	is_str(c.res.output, "42 child 1\n", "env: set, later entries win, tqd's own replaced");
	exec_free(c.run);
	unsetenv("TQ_TEST_VAR");
}

/*
 * A bare NAME unsets the variable: the exec handler's TRACEPARENT for a
 * task without one, so that the program does not inherit tqd's own.
 */
static void
test_env_unset(void)
{
	char *argv[] = {"sh", "-c",
					"env | grep -c '^TRACEPARENT=' || true; env | grep -c '^TRACESTATE=' || true; "
					"printf '%s' \"${TQ_KEEP-unset}\"",
					NULL};
	char *unset[] = {"TRACEPARENT", "TRACESTATE", NULL};
	char *set[] = {"TRACEPARENT",
				   "TRACEPARENT=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
				   "TRACESTATE", NULL};
	char *set_unset[] = {"TRACEPARENT=00-x", "TRACEPARENT", NULL};
	char *show[] = {"sh", "-c", "printf '%s' \"${TRACEPARENT-unset}\"", NULL};
	ExecSpec s = spec_of(argv);
	Case c;

	setenv("TRACEPARENT", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", 1);
	setenv("TRACESTATE", "vendor=tqd", 1);
	setenv("TQ_KEEP", "kept", 1);
	s.env = unset;
	ok(run_case(&c, &s, 5), "env unset: done");
	is_str(c.res.output, "0\n0\nkept",
		   "env unset: tqd's TRACEPARENT and TRACESTATE are gone, the rest is kept");
	exec_free(c.run);

	s = spec_of(show);
	s.env = set;
	ok(run_case(&c, &s, 5), "env set after unset: done");
	is_str(c.res.output, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		   "env: a later NAME=VALUE wins over an earlier bare NAME");
	exec_free(c.run);

	s.env = set_unset;
	ok(run_case(&c, &s, 5), "env unset after set: done");
	is_str(c.res.output, "unset", "env: a later bare NAME wins over an earlier NAME=VALUE");
	exec_free(c.run);
	unsetenv("TRACEPARENT");
	unsetenv("TRACESTATE");
	unsetenv("TQ_KEEP");
}

/*
 * pass_env: only the variables of tqd's environment that it names reach
 * the program; the task's own (ExecSpec.env) always do.  The names match
 * whole, a trailing * as a prefix.
 */
static void
test_pass_env(void)
{
	char *argv[] = {"sh", "-c",
					"printf '%s|%s|%s|%s|%s|%s' \"${PGPASSWORD-unset}\" "
					"\"${AWS_SECRET_ACCESS_KEY-unset}\" \"${TQ_PASS_ME-unset}\" "
					"\"${LC_TQTEST-unset}\" \"${TQ_TASK_ID-unset}\" \"${TQ_PASS_ME_NOT-unset}\"",
					NULL};
	char *env[] = {"TQ_TASK_ID=7", NULL};
	ExecSpec s = spec_of(argv);
	Case c;

	ok(env_passed("PATH=/bin", "PATH HOME") && env_passed("HOME=/", "PATH HOME"),
	   "env_passed: listed names pass");
	ok(!env_passed("PATHX=1", "PATH") && !env_passed("PAT=1", "PATH"),
	   "env_passed: a name matches whole, not as a prefix");
	ok(env_passed("LC_ALL=C", "PATH LC_*") && env_passed("LC_=x", "LC_*") &&
		   !env_passed("LANG=C", "LC_*"),
	   "env_passed: NAME* matches the names that start with NAME");
	ok(env_passed("ANY=1", "*") && env_passed("X=1", NULL), "env_passed: * and NULL pass all");
	ok(!env_passed("PATH=/bin", "") && !env_passed("PATH=/bin", "  "),
	   "env_passed: an empty list passes nothing");
	ok(env_passed("B=1", " A\tB\n C "), "env_passed: any blanks between names");

	setenv("PGPASSWORD", "hunter2", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI", 1);
	setenv("TQ_PASS_ME", "yes", 1);
	setenv("TQ_PASS_ME_NOT", "no", 1);
	setenv("LC_TQTEST", "lc", 1);
	s.env = env;
	s.pass_env = "PATH TQ_PASS_ME LC_*";
	ok(run_case(&c, &s, 5), "pass_env: done");
	is_str(c.res.output, "unset|unset|yes|lc|7|unset",
		   "pass_env: secrets not listed stay with tqd; listed names, globs and the task's own "
		   "variables reach the program");
	exec_free(c.run);

	s.pass_env = "";
	ok(run_case(&c, &s, 5), "pass_env empty: done (sh found without PATH)");
	is_str(c.res.output, "unset|unset|unset|unset|7|unset",
		   "pass_env empty: only the task's own variables");
	exec_free(c.run);
	unsetenv("PGPASSWORD");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	unsetenv("TQ_PASS_ME");
	unsetenv("TQ_PASS_ME_NOT");
	unsetenv("LC_TQTEST");
}

/* The test blocks SIGUSR2, ignores SIGPIPE and holds a descriptor without O_CLOEXEC. */
static void
test_child_state(void)
{
	char *sig_argv[] = {"grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status", NULL};
	char *fd_argv[] = {"ls", "/proc/self/fd", NULL};
	ExecSpec s = spec_of(sig_argv);
	int leak = open("/dev/null", O_RDONLY);
	Case c;

	ok(run_case(&c, &s, 5), "signal state: done");
	{
		/*
		 * Signals 32 and 33 are glibc's own (thread cancellation, setxid):
		 * sigaction refuses them, so a disposition inherited from whoever
		 * started tqd (make ignores them) stays.  Everything else is reset.
		 */
		unsigned long long blk = ~0ULL, ign = ~0ULL;
		const char *b = c.res.output ? strstr(c.res.output, "SigBlk:") : NULL;
		const char *i = c.res.output ? strstr(c.res.output, "SigIgn:") : NULL;
		unsigned long long glibc = (1ULL << 31) | (1ULL << 32);

		if (b)
			blk = strtoull(b + 7, NULL, 16);
		if (i)
			ign = strtoull(i + 7, NULL, 16);
		ok(blk == 0 && (ign & ~glibc) == 0,
		   "signal state: nothing blocked or ignored in the child (but glibc's own)");
		if (!(blk == 0 && (ign & ~glibc) == 0))
			printf("#     got: %s\n", c.res.output ? c.res.output : "(null)");
	}
	exec_free(c.run);

	s = spec_of(fd_argv);
	ok(run_case(&c, &s, 5), "descriptors: done");
	is_str(c.res.output, "0\n1\n2\n3\n", "descriptors: only stdio (and ls's own 3)");
	exec_free(c.run);
	close(leak);
}

static void
test_exit_codes(void)
{
	static const struct
	{
		int code;
		Outcome want;
	} codes[] = {
		{0, OUTCOME_SUCCESS}, {3, OUTCOME_RETRY},  {64, OUTCOME_NEVER},
		{65, OUTCOME_NEVER},  {75, OUTCOME_RETRY}, {69, OUTCOME_THROTTLED},
	};

	for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
	{
		char script[32];
		char *argv[] = {"sh", "-c", script, NULL};
		ExecSpec s = spec_of(argv);
		Case c;

		snprintf(script, sizeof script, "exit %d", codes[i].code);
		ok(run_case(&c, &s, 5) && c.res.end == EXEC_EXITED && c.res.exit_status == codes[i].code,
		   "exit %d: exited with it", codes[i].code);
		is_str(outcome_name(exec_classify(&c.res, 69)), outcome_name(codes[i].want),
			   "exit %d: classified", codes[i].code);
		exec_free(c.run);
	}
}

static void
test_signaled(void)
{
	char *argv[] = {"sh", "-c", "kill -SEGV $$", NULL};
	ExecSpec s = spec_of(argv);
	Case c;

	ok(run_case(&c, &s, 5), "SIGSEGV: done");
	is_int(c.res.end, EXEC_SIGNALED, "SIGSEGV: signaled");
	is_int(c.res.term_signal, SIGSEGV, "SIGSEGV: signal 11");
	is_int(exec_classify(&c.res, 69), OUTCOME_RETRY, "SIGSEGV: retry");
	is_str(describe(&c.res), "killed by signal 11 (Segmentation fault)", "SIGSEGV: described");
	exec_free(c.run);
}

static void
test_timeout(void)
{
	char *argv[] = {"sh", "-c", "sleep 60 & echo $!; sleep 60", NULL};
	ExecSpec s = spec_of(argv);
	Case c;
	pid_t grandchild;

	s.timeout = 0.3;
	ok(run_case(&c, &s, 5), "timeout: done");
	is_int(c.res.end, EXEC_TIMEOUT, "timeout: timed out");
	ok(c.elapsed >= 0.29 && c.elapsed < 1.0, "timeout: after %.3f s", c.elapsed);
	is_int(c.res.term_signal, SIGTERM, "timeout: SIGTERM was enough");
	is_int(exec_classify(&c.res, 69), OUTCOME_RETRY, "timeout: retry");
	ok(has_prefix(describe(&c.res), "timed out after 0.") &&
		   strcmp(describe(&c.res) + strlen(describe(&c.res)) - 2, " s") == 0,
	   "timeout: described: %s", describe(&c.res));
	grandchild = c.res.output ? (pid_t) atoi(c.res.output) : 0;
	ok(grandchild > 1 && process_gone(grandchild), "timeout: grandchild %d is dead too",
	   (int) grandchild);
	exec_free(c.run);
}

static void
test_kill_grace(void)
{
	char *argv[] = {"sh", "-c", "trap '' TERM; sleep 60", NULL};
	ExecSpec s = spec_of(argv);
	Case c;

	s.timeout = 0.2;
	s.kill_grace = 0.3;
	ok(run_case(&c, &s, 5), "kill grace: done");
	is_int(c.res.end, EXEC_TIMEOUT, "kill grace: timed out");
	is_int(c.res.term_signal, SIGKILL, "kill grace: SIGKILL after the grace");
	ok(c.elapsed >= 0.49 && c.elapsed < 1.5, "kill grace: after %.3f s", c.elapsed);
	exec_free(c.run);
}

static void
stop_cb(EV_P_ ev_timer *w, int revents)
{
	Case *c = w->data;

	exec_stop(c->run);
}

static void
test_stop(void)
{
	char *argv[] = {"sleep", "60", NULL};
	char *trap_argv[] = {"sh", "-c", "trap '' TERM; sleep 60", NULL};
	ExecSpec s = spec_of(argv);
	ev_timer t;
	Case c;
	pid_t pid;

	ev_timer_init(&t, stop_cb, 0.1, 0.);
	t.data = &c;
	ok(start_case(&c, &s), "exec_stop: started");
	pid = exec_pid(c.run);
	ok(pid > 1 && getpgid(pid) == pid, "exec_stop: pid %d leads its own group", (int) pid);
	ev_timer_start(EV_DEFAULT, &t);
	ok(wait_case(&c, 5), "exec_stop: done");
	is_int(c.res.end, EXEC_STOPPED, "exec_stop: stopped");
	is_int(c.res.term_signal, SIGTERM, "exec_stop: by SIGTERM");
	is_str(describe(&c.res), "stopped", "exec_stop: described");
	is_int(exec_classify(&c.res, 69), OUTCOME_RETRY, "exec_stop: retry");
	exec_stop(c.run); /* after done: nothing happens */
	loop_for(0.05);
	is_int(c.calls, 1, "exec_stop: a stop after done changes nothing");
	exec_free(c.run);

	s = spec_of(trap_argv);
	s.kill_grace = 0.3;
	ok(start_case(&c, &s), "exec_stop, TERM ignored: started");
	ev_timer_set(&t, 0.1, 0.); /* a fired timer keeps no useful "after" */
	ev_timer_start(EV_DEFAULT, &t);
	ok(wait_case(&c, 5), "exec_stop, TERM ignored: done");
	ok(c.res.end == EXEC_STOPPED && c.res.term_signal == SIGKILL,
	   "exec_stop, TERM ignored: stopped by SIGKILL");
	ok(c.elapsed >= 0.39 && c.elapsed < 1.5, "exec_stop, TERM ignored: after %.3f s", c.elapsed);
	exec_free(c.run);
	ev_timer_stop(EV_DEFAULT, &t);
}

static void
test_stdout_flood(void)
{
	char *argv[] = {"head", "-c", "50000000", "/dev/zero", NULL};
	ExecSpec s = spec_of(argv);
	static const char zeros[1000];
	Case c;

	s.max_output = 1000;
	ok(run_case(&c, &s, 10), "stdout flood: done");
	ok(c.res.end == EXEC_EXITED && c.res.exit_status == 0,
	   "stdout flood: head wrote it all (the rest was read and dropped)");
	is_int(c.res.output_len, 1000, "stdout flood: max_output kept");
	ok(c.res.output && memcmp(c.res.output, zeros, 1000) == 0, "stdout flood: the bytes");
	ok(c.res.output_truncated, "stdout flood: truncated");
	exec_free(c.run);
}

static void
test_stderr(void)
{
	char *seq_argv[] = {"sh", "-c", "seq 1 100000 >&2", NULL};
	char *long_argv[] = {
		"sh", "-c", "head -c 10000 /dev/zero | tr '\\0' x >&2; printf '\\nshort\\n\\nlast' >&2",
		NULL};
	char *fit_argv[] = {"sh", "-c", "printf 'a\\nbc' >&2", NULL};
	ExecSpec s = spec_of(seq_argv);
	Case c;

	s.max_log_lines = 10;
	ok(run_case(&c, &s, 10), "stderr lines: done");
	ok(c.res.end == EXEC_EXITED && c.res.exit_status == 0, "stderr lines: exit status 0");
	is_int(c.res.nlog_lines, 10, "stderr lines: max_log_lines kept");
	ok(c.res.nlog_lines == 10 && strcmp(c.res.log_lines[0], "1") == 0 &&
		   strcmp(c.res.log_lines[9], "10") == 0,
	   "stderr lines: the first ones");
	ok(c.res.log_truncated, "stderr lines: truncated");
	exec_free(c.run);

	s.max_log_lines = 1000;
	s.max_log_bytes = 20;
	ok(run_case(&c, &s, 10), "stderr bytes: done");
	/* 1..9 are 9 bytes, 10..14 are 10 more: 15 would make 21 */
	is_int(c.res.nlog_lines, 14, "stderr bytes: lines within max_log_bytes kept");
	ok(c.res.nlog_lines == 14 && strcmp(c.res.log_lines[13], "14") == 0,
	   "stderr bytes: the last one kept whole");
	ok(c.res.log_truncated, "stderr bytes: truncated");
	exec_free(c.run);

	s = spec_of(long_argv);
	ok(run_case(&c, &s, 5), "stderr long line: done");
	is_int(c.res.nlog_lines, 4, "stderr long line: 4 lines");
	ok(c.res.nlog_lines == 4 && strlen(c.res.log_lines[0]) == 4096 &&
		   c.res.log_lines[0][4095] == 'x',
	   "stderr long line: cut at 4096 bytes");
	ok(c.res.nlog_lines == 4 && strcmp(c.res.log_lines[1], "short") == 0 &&
		   strcmp(c.res.log_lines[2], "") == 0 && strcmp(c.res.log_lines[3], "last") == 0,
	   "stderr long line: the next lines, an empty one, the last without newline");
	ok(c.res.log_truncated, "stderr long line: truncated");
	exec_free(c.run);

	s = spec_of(fit_argv);
	s.max_log_lines = 2;
	s.max_log_bytes = 3;
	ok(run_case(&c, &s, 5), "stderr exact fit: done");
	ok(c.res.nlog_lines == 2 && strcmp(c.res.log_lines[0], "a") == 0 &&
		   strcmp(c.res.log_lines[1], "bc") == 0,
	   "stderr exact fit: both lines");
	ok(!c.res.log_truncated, "stderr exact fit: not truncated");
	exec_free(c.run);
}

static void
test_unread_input(void)
{
	char *true_argv[] = {"true", NULL};
	char *sleep_argv[] = {"sleep", "0.2", NULL};
	size_t n = 10 << 20;
	char *payload = calloc(1, n);
	ExecSpec s = spec_of(true_argv);
	Case c;

	s.input = payload;
	s.input_len = n;
	ok(run_case(&c, &s, 5), "10 MB to true: done");
	ok(c.res.end == EXEC_EXITED && c.res.exit_status == 0, "10 MB to true: exit status 0");
	exec_free(c.run);

	s.argv = sleep_argv;
	ok(run_case(&c, &s, 5), "10 MB to sleep 0.2: done");
	ok(c.res.end == EXEC_EXITED && c.res.exit_status == 0, "10 MB to sleep 0.2: exit status 0");
	ok(c.elapsed >= 0.19 && c.elapsed < 2, "10 MB to sleep 0.2: after %.3f s", c.elapsed);
	exec_free(c.run);
	free(payload);
}

static void
test_exec_failure(void)
{
	char *abs_argv[] = {"/nonexistent/tq-test-program", "arg", NULL};
	char *path_argv[] = {"tq-test-no-such-program", NULL};
	char *noexec_argv[] = {"/etc/passwd", NULL};
	ExecSpec s = spec_of(abs_argv);
	Case c;

	ok(run_case(&c, &s, 5), "missing program: done");
	ok(!c.in_start, "missing program: reported from the loop, not from exec_start");
	is_int(c.res.end, EXEC_FAILED, "missing program: failed");
	is_str(c.res.error, "could not run \"/nonexistent/tq-test-program\": No such file or directory",
		   "missing program: error");
	is_int(c.res.error_errno, ENOENT, "missing program: ENOENT");
	is_str(describe(&c.res), c.res.error, "missing program: described");
	is_int(exec_classify(&c.res, 69), OUTCOME_NEVER, "missing program: never");
	ok(c.res.output && c.res.output_len == 0 && c.res.output[0] == '\0' && c.res.nlog_lines == 0,
	   "missing program: no output, no log");
	exec_free(c.run);

	s.argv = path_argv;
	ok(run_case(&c, &s, 5), "missing program in PATH: done");
	ok(c.res.end == EXEC_FAILED && c.res.error_errno == ENOENT,
	   "missing program in PATH: failed, ENOENT");
	exec_free(c.run);

	s.argv = noexec_argv;
	ok(run_case(&c, &s, 5), "not executable: done");
	ok(c.res.end == EXEC_FAILED && c.res.error_errno == EACCES, "not executable: EACCES");
	is_str(c.res.error, "could not run \"/etc/passwd\": Permission denied",
		   "not executable: error");
	is_int(exec_classify(&c.res, 69), OUTCOME_NEVER, "not executable: never");
	exec_free(c.run);
}

static void
test_linger(void)
{
	char *argv[] = {"sh", "-c", "sleep 60 & echo $!", NULL};
	char *detached_argv[] = {"sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!", NULL};
	char *escaped_argv[] = {"sh", "-c", "setsid sh -c 'echo $$; exec sleep 60' & sleep 0.1", NULL};
	ExecSpec s = spec_of(argv);
	Case c;
	pid_t grandchild;

	ok(run_case(&c, &s, 5), "grandchild holding stdout: done");
	ok(c.res.end == EXEC_EXITED && c.res.exit_status == 0,
	   "grandchild holding stdout: exit status 0");
	ok(c.elapsed >= 0.2 && c.elapsed < 1.0, "grandchild holding stdout: after the linger (%.3f s)",
	   c.elapsed);
	grandchild = c.res.output ? (pid_t) atoi(c.res.output) : 0;
	ok(grandchild > 1 && process_gone(grandchild), "grandchild holding stdout: %d killed",
	   (int) grandchild);
	exec_free(c.run);

	/* not holding the pipes: no linger, but it dies with the run all the same */
	s.argv = detached_argv;
	ok(run_case(&c, &s, 5), "grandchild without the pipes: done");
	ok(c.res.end == EXEC_EXITED && c.res.exit_status == 0 && c.elapsed < 0.2,
	   "grandchild without the pipes: exit status 0 after %.3f s (no linger)", c.elapsed);
	grandchild = c.res.output ? (pid_t) atoi(c.res.output) : 0;
	ok(grandchild > 1 && process_gone(grandchild), "grandchild without the pipes: %d killed",
	   (int) grandchild);
	exec_free(c.run);

	/* out of the group: the linger cannot kill it, but closes the pipes */
	s.argv = escaped_argv;
	ok(run_case(&c, &s, 5), "grandchild in its own session: done");
	ok(c.res.end == EXEC_EXITED && c.res.exit_status == 0 && c.elapsed < 1.0,
	   "grandchild in its own session: exit status 0 after %.3f s", c.elapsed);
	grandchild = c.res.output ? (pid_t) atoi(c.res.output) : 0;
	ok(grandchild > 1, "grandchild in its own session: its pid read before the close");
	if (grandchild > 1)
		kill(grandchild, SIGKILL);
	exec_free(c.run);
}

static void
test_limits(void)
{
	char *alloc_argv[] = {self_path, "alloc", "200", NULL};
	char *spin_argv[] = {"sh", "-c", "while :; do :; done", NULL};
	ExecSpec s = spec_of(alloc_argv);
	Case c;

#ifdef UNDER_ASAN
	for (int i = 0; i < 5; i++)
		ok(true, "# SKIP the alloc helper is this binary, built with AddressSanitizer");
#else
	s.memory_limit = 64 << 20;
	ok(run_case(&c, &s, 5), "memory_limit 64 MB: done");
	ok(c.res.end == EXEC_EXITED && c.res.exit_status == 1, "memory_limit 64 MB: 200 MB refused");
	is_str(c.res.output, "fail", "memory_limit 64 MB: malloc failed");
	exec_free(c.run);

	s.memory_limit = (size_t) 1 << 30;
	ok(run_case(&c, &s, 5), "memory_limit 1 GB: done");
	ok(c.res.end == EXEC_EXITED && c.res.exit_status == 0, "memory_limit 1 GB: 200 MB allowed");
	exec_free(c.run);
#endif

	s = spec_of(spin_argv);
	s.cpu_limit = 0.3; /* rounded up to 1 s */
	ok(run_case(&c, &s, 5), "cpu_limit: done");
	ok(c.res.end == EXEC_SIGNALED && c.res.term_signal == SIGXCPU,
	   "cpu_limit: SIGXCPU after a second of CPU (%.3f s)", c.elapsed);
	exec_free(c.run);
}

/* Runs started one after the other from the done callback, which frees each. */
typedef struct Chain
{
	int started; /* runs started */
	int done;    /* done callbacks */
	int bad;     /* runs that did not start or did not echo their input */
} Chain;

#define CHAIN_RUNS 200

static void chain_start(Chain *ch);

static void
chain_done(ExecRun *run, const ExecResult *r, void *arg)
{
	Chain *ch = arg;

	ch->done++;
	if (r->end != EXEC_EXITED || r->exit_status != 0 || strcmp(r->output, "abc") != 0)
		ch->bad++;
	exec_free(run); /* inside the callback: the documented way */
	if (ch->started < CHAIN_RUNS)
		chain_start(ch);
}

static void
chain_start(Chain *ch)
{
	char *argv[] = {"cat", NULL};
	ExecSpec s = spec_of(argv);
	char err[256];

	s.input = "abc";
	s.input_len = 3;
	ch->started++;
	if (exec_start(EV_DEFAULT, &s, chain_done, ch, err, sizeof err) == NULL)
	{
		printf("# exec_start: %s\n", err);
		ch->bad++;
		ch->done++;
	}
}

static void
test_many_runs(void)
{
	Chain ch = {0};

	chain_start(&ch);
	ok(loop_until(&ch.done, CHAIN_RUNS, 20), "%d runs in a row: all done", CHAIN_RUNS);
	is_int(ch.bad, 0, "%d runs in a row: all echoed their input", CHAIN_RUNS);
}

static void
test_free_running(void)
{
	char *argv[] = {"sleep", "60", NULL};
	ExecSpec s = spec_of(argv);
	Case c, c2;
	pid_t pid;
	int children = -1;

	ok(start_case(&c, &s), "exec_free while running: started");
	loop_for(0.1);
	pid = exec_pid(c.run);
	exec_free(c.run);
	ok(start_case(&c2, &s), "exec_free at once: started");
	exec_free(c2.run);
	for (int i = 0; i < 100 && (children = count_children()) != 0; i++)
		loop_for(0.02);
	is_int(children, 0, "exec_free: libev reaped the killed children");
	ok(pid > 1 && kill(pid, 0) < 0 && errno == ESRCH, "exec_free: %d is gone", (int) pid);
	ok(c.calls == 0 && c2.calls == 0, "exec_free: no done callback for a freed run");
}

static void
test_bad_start(void)
{
	char *argv[] = {"true", NULL};
	char *empty[] = {NULL};
	ExecSpec s = spec_of(empty);
	struct ev_loop *other = ev_loop_new(EVFLAG_AUTO);
	char err[256] = "";
	ExecRun *run;

	errno = 0;
	run = exec_start(EV_DEFAULT, &s, on_done, NULL, err, sizeof err);
	ok(run == NULL && errno == EINVAL && err[0] != '\0', "no argv[0]: refused (%s)", err);

	s.argv = argv;
	err[0] = '\0';
	errno = 0;
	run = exec_start(other, &s, on_done, NULL, err, sizeof err);
	ok(run == NULL && errno == EINVAL && err[0] != '\0', "not the default loop: refused (%s)", err);
	ev_loop_destroy(other);
}

static void
test_classify(void)
{
	ExecResult r;

	memset(&r, 0, sizeof r);
	r.end = EXEC_EXITED;
	r.exit_status = 1;
	is_int(exec_classify(&r, 69), OUTCOME_RETRY, "classify: exit 1 retries");
	r.exit_status = 75;
	is_int(exec_classify(&r, 100), OUTCOME_RETRY, "classify: EX_TEMPFAIL retries");
	r.exit_status = 100;
	is_int(exec_classify(&r, 100), OUTCOME_THROTTLED, "classify: the configured code throttles");
	r.end = EXEC_SIGNALED;
	r.term_signal = SIGKILL;
	is_int(exec_classify(&r, 69), OUTCOME_RETRY, "classify: signaled retries");
	r.end = EXEC_TIMEOUT;
	is_int(exec_classify(&r, 69), OUTCOME_RETRY, "classify: timeout retries");
	r.end = EXEC_STOPPED;
	is_int(exec_classify(&r, 69), OUTCOME_RETRY, "classify: stopped retries");
	r.end = EXEC_FAILED;
	r.error_errno = ENOEXEC;
	is_int(exec_classify(&r, 69), OUTCOME_NEVER, "classify: ENOEXEC never");
	r.error_errno = EACCES;
	is_int(exec_classify(&r, 69), OUTCOME_NEVER, "classify: EACCES never");
	r.error_errno = ENOMEM;
	is_int(exec_classify(&r, 69), OUTCOME_RETRY, "classify: ENOMEM retries");

	is_str(outcome_name(OUTCOME_SUCCESS), "success", "outcome_name: success");
	is_str(outcome_name(OUTCOME_RETRY), "retry", "outcome_name: retry");
	is_str(outcome_name(OUTCOME_NEVER), "never", "outcome_name: never");
	is_str(outcome_name(OUTCOME_THROTTLED), "throttled", "outcome_name: throttled");
}

static void
test_describe(void)
{
	ExecResult r;
	char small[8];

	memset(&r, 0, sizeof r);
	r.end = EXEC_EXITED;
	r.exit_status = 3;
	is_str(describe(&r), "exit status 3", "describe: exit status");
	r.end = EXEC_SIGNALED;
	r.term_signal = SIGKILL;
	is_str(describe(&r), "killed by signal 9 (Killed)", "describe: signal");
	r.end = EXEC_TIMEOUT;
	r.seconds = 30;
	is_str(describe(&r), "timed out after 30 s", "describe: timeout, whole seconds");
	r.seconds = 0.5;
	is_str(describe(&r), "timed out after 0.5 s", "describe: timeout, trimmed");
	r.seconds = 1.2345;
	is_str(describe(&r), "timed out after 1.234 s", "describe: timeout, 3 decimals at most");
	r.seconds = 2.0004;
	is_str(describe(&r), "timed out after 2 s", "describe: timeout, rounded to whole");
	r.end = EXEC_STOPPED;
	is_str(describe(&r), "stopped", "describe: stopped");
	r.end = EXEC_FAILED;
	snprintf(r.error, sizeof r.error, "could not run \"x\": No such file or directory");
	is_str(describe(&r), "could not run \"x\": No such file or directory", "describe: failed");
	exec_describe(&r, small, sizeof small);
	is_str(small, "could n", "describe: cut to the buffer");
}

/* "alloc MB": what the memory limit case runs (this binary, exec'd). */
static int
alloc_mode(const char *mb)
{
	void *p = malloc((size_t) atoi(mb) << 20);

	fputs(p ? "ok" : "fail", stdout);
	free(p);
	return p ? 0 : 1;
}

int
main(int argc, char **argv)
{
	struct rlimit no_core = {0, 0};
	sigset_t usr2;
	int fds_before, fds_after;

	if (argc == 3 && strcmp(argv[1], "alloc") == 0)
		return alloc_mode(argv[2]);
	if (realpath(argv[0], self_path) == NULL)
	{
		perror("realpath");
		return 2;
	}

	/* as tqd does: a write to a gone child's stdin must fail, not kill us */
	signal(SIGPIPE, SIG_IGN);
	/* a blocked signal the children must not inherit (test_child_state) */
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	sigprocmask(SIG_BLOCK, &usr2, NULL);
	/* the programs killed by SIGSEGV and SIGXCPU need not leave cores */
	setrlimit(RLIMIT_CORE, &no_core);
	setvbuf(stdout, NULL, _IONBF, 0);

	(void) EV_DEFAULT; /* its descriptors count as there before */
	fds_before = count_fds();

	plan(NTESTS);
	test_classify();
	test_describe();
	test_bad_start();
	test_output();
	test_input();
	test_env();
	test_env_unset();
	test_pass_env();
	test_child_state();
	test_exit_codes();
	test_signaled();
	test_timeout();
	test_kill_grace();
	test_stop();
	test_stdout_flood();
	test_stderr();
	test_unread_input();
	test_exec_failure();
	test_linger();
	test_limits();
	test_many_runs();
	test_free_running();

	fds_after = count_fds();
	is_int(fds_after, fds_before, "no descriptor left open");
	is_int(count_children(), 0, "no child left, zombie or not");
	return done_testing();
}
