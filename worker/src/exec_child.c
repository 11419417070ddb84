/*
 * exec_child.c
 *	  The child's side of exec.c's fork, and what is prepared for it
 *	  before the fork: pipes, the environment, the rlimits.
 *
 * Between fork and exec the child may only make async-signal-safe calls:
 * tqd may have other threads (libcurl's resolver) whose locks the fork
 * copied held.  So everything that allocates or computes (the environment
 * array, the limits) is done here in the parent, before the fork, and
 * child_exec only uses it.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "exec_child.h"

extern char **environ;

/*
 * A pipe with both ends close-on-exec and above 2: the child dup2s its ends
 * onto 0, 1 and 2, which must not close another of its pipe ends (possible
 * if tqd was started with one of 0/1/2 closed).
 */
bool
make_pipe(int fds[2])
{
	if (pipe2(fds, O_CLOEXEC) < 0)
		return false;
	for (int i = 0; i < 2; i++)
	{
		if (fds[i] < 3)
		{
			int fd = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);

			if (fd < 0)
			{
				int saved = errno;

				close(fds[0]);
				close(fds[1]);
				fds[0] = fds[1] = -1;
				errno = saved;
				return false;
			}
			close(fds[i]);
			fds[i] = fd;
		}
	}
	return true;
}

bool
set_nonblock(int fd)
{
	int flags = fcntl(fd, F_GETFL);

	return flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

/* Length of the NAME in a NAME=VALUE entry. */
static size_t
env_name_len(const char *entry)
{
	return strcspn(entry, "=");
}

/*
 * Whether some entry of list, NAME=VALUE or a bare NAME, names the same
 * variable as entry.
 */
static bool
env_named_in(const char *entry, char *const *list)
{
	size_t len = env_name_len(entry);

	for (; list && *list; list++)
		if (env_name_len(*list) == len && ((*list)[len] == '=' || (*list)[len] == '\0') &&
			memcmp(*list, entry, len) == 0)
			return true;
	return false;
}

/*
 * pass is blank-separated words: a NAME matches that variable only, a
 * word ending in * every variable whose name starts with what comes
 * before it ("*" all of them).  config_check.c's check_pass_env says
 * which words a configuration may give.
 */
bool
env_passed(const char *entry, const char *pass)
{
	size_t len = env_name_len(entry);
	const char *s = pass;

	if (pass == NULL)
		return true;
	while (*s != '\0')
	{
		size_t n = 0;

		while (*s == ' ' || *s == '\t' || *s == '\n')
			s++;
		while (s[n] != '\0' && s[n] != ' ' && s[n] != '\t' && s[n] != '\n')
			n++;
		if (n > 0 && s[n - 1] == '*')
		{
			if (len >= n - 1 && memcmp(entry, s, n - 1) == 0)
				return true;
		}
		else if (n > 0 && n == len && memcmp(entry, s, n) == 0)
			return true;
		s += n;
	}
	return false;
}

/*
 * The child's environment: the variables of tqd's environ that pass names
 * (secrets in tqd's environment stay with tqd unless a queue's pass_env
 * lists them) and that extra does not name, then extra's NAME=VALUE
 * entries (of two entries in extra for one variable the later wins; a
 * bare NAME unsets it).  The array points into environ and extra, which
 * stay put until the fork; it is built here because the child may not
 * call malloc.
 */
char **
build_env(char *const *extra, const char *pass)
{
	size_t n = 0;
	char **envp;

	for (char **e = environ; e && *e; e++)
		n++;
	for (char *const *x = extra; x && *x; x++)
		n++;
	envp = malloc((n + 1) * sizeof *envp);
	if (envp == NULL)
		return NULL;

	n = 0;
	for (char **e = environ; e && *e; e++)
		if (env_passed(*e, pass) && !env_named_in(*e, extra))
			envp[n++] = *e;
	for (char *const *x = extra; x && *x; x++)
		if ((*x)[env_name_len(*x)] == '=' && !env_named_in(*x, x + 1))
			envp[n++] = *x;
	envp[n] = NULL;
	return envp;
}

/*
 * The rlimits for the child, computed before the fork.  Neither may exceed
 * the current hard limit (only root may raise it).  RLIMIT_CPU is rounded
 * up to whole seconds; its hard limit is a second past the soft one, so the
 * program gets SIGXCPU first and a moment to clean up before the kernel's
 * SIGKILL.
 */
void
prepare_limits(const ExecSpec *spec, ChildLimits *lim)
{
	struct rlimit cur;

	memset(lim, 0, sizeof *lim);
	if (spec->memory_limit > 0)
	{
		rlim_t bytes = (rlim_t) spec->memory_limit;

		if (getrlimit(RLIMIT_AS, &cur) == 0 && cur.rlim_max != RLIM_INFINITY &&
			bytes > cur.rlim_max)
			bytes = cur.rlim_max;
		lim->set_as = true;
		lim->as.rlim_cur = lim->as.rlim_max = bytes;
	}
	if (spec->cpu_limit > 0)
	{
		/* bounded so that the conversion cannot overflow */
		double s = ceil(spec->cpu_limit < 1e9 ? spec->cpu_limit : 1e9);

		lim->set_cpu = true;
		lim->cpu.rlim_cur = (rlim_t) s;
		lim->cpu.rlim_max = (rlim_t) s + 1;
		if (getrlimit(RLIMIT_CPU, &cur) == 0 && cur.rlim_max != RLIM_INFINITY)
		{
			if (lim->cpu.rlim_cur > cur.rlim_max)
				lim->cpu.rlim_cur = cur.rlim_max;
			if (lim->cpu.rlim_max > cur.rlim_max)
				lim->cpu.rlim_max = cur.rlim_max;
		}
	}
}

/*
 * The child, between fork and exec.  Only async-signal-safe calls: tqd may
 * have other threads (libcurl's resolver) whose locks a fork copies held.
 * glibc's execvp allocates nothing (its path buffer is on the stack).  All
 * signals are blocked on entry (see exec_start), so no handler of tqd's
 * runs here.  On failure the errno goes through status_fd, which the exec
 * closes on success; the child then exits 127 without writing anything.
 */
void
child_exec(char *const *argv, char **envp, const int fds[3], int status_fd, const ChildLimits *lim)
{
	struct sigaction dfl;
	sigset_t none;
	ChildError ce;
	ssize_t unused;

	/*
	 * Exec resets caught signals but keeps ignored ones and the mask: tqd
	 * ignores SIGPIPE, libev owns SIGCHLD and may block signals.  A task
	 * starts from the defaults.
	 */
	memset(&dfl, 0, sizeof dfl);
	dfl.sa_handler = SIG_DFL;
	sigemptyset(&dfl.sa_mask);
	for (int sig = 1; sig < NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			(void) sigaction(sig, &dfl, NULL); /* EINVAL for the ones libc reserves */

	/* the parent does the same; whichever runs first makes the group */
	(void) setpgid(0, 0);

	ce.stage = STAGE_STDIO;
	for (int i = 0; i < 3; i++)
		if (dup2(fds[i], i) < 0)
			goto fail;

#ifdef CLOSE_RANGE_CLOEXEC
	/*
	 * Whatever another part of tqd opened without O_CLOEXEC is not the
	 * task's business.  Best effort: CLOSE_RANGE_CLOEXEC is Linux 5.11+.
	 */
	(void) close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
#endif

	ce.stage = STAGE_RLIMIT;
	if (lim->set_as && setrlimit(RLIMIT_AS, &lim->as) < 0)
		goto fail;
	if (lim->set_cpu && setrlimit(RLIMIT_CPU, &lim->cpu) < 0)
		goto fail;

	/* execvp looks argv[0] up in the PATH of environ: the task's own */
	environ = envp;
	sigemptyset(&none);
	(void) sigprocmask(SIG_SETMASK, &none, NULL);
	ce.stage = STAGE_EXEC;
	execvp(argv[0], argv);

fail:
	ce.err = errno;
	unused = write(status_fd, &ce, sizeof ce); /* 8 bytes: atomic on a pipe */
	(void) unused;
	_exit(127);
}
