/*
 * exec_child.h
 *	  What exec.c shares with exec_child.c, the child's side of its fork:
 *	  the limits and environment prepared before the fork, the pipes, and
 *	  the error a child that could not exec writes to its status pipe.
 *	  Private to exec.c.
 */
#ifndef TQD_EXEC_CHILD_H
#define TQD_EXEC_CHILD_H

#include <stdbool.h>
#include <sys/resource.h>

#include "exec.h"

/* What the child tells the parent through the status pipe when it fails. */
typedef enum ChildStage
{
	STAGE_STDIO,  /* dup2 onto 0/1/2 */
	STAGE_RLIMIT, /* setrlimit */
	STAGE_EXEC,   /* execvp */
} ChildStage;

typedef struct ChildError
{
	int stage; /* a ChildStage */
	int err;   /* errno */
} ChildError;

/* Resource limits computed before the fork, set by the child. */
typedef struct ChildLimits
{
	bool set_as;       /* RLIMIT_AS to set */
	struct rlimit as;  /* its value */
	bool set_cpu;      /* RLIMIT_CPU to set */
	struct rlimit cpu; /* its value */
} ChildLimits;

/*
 * A pipe with both ends close-on-exec and above 2 (the child dup2s its
 * ends onto 0, 1 and 2); false with errno set.
 */
extern bool make_pipe(int fds[2]) __attribute__((warn_unused_result));
extern bool set_nonblock(int fd) __attribute__((warn_unused_result));
/*
 * The child's environment: tqd's variables that pass names (ExecSpec.pass_env;
 * NULL = all), changed by extra (ExecSpec.env); NULL when out of memory.
 */
extern char **build_env(char *const *extra, const char *pass) __attribute__((warn_unused_result));
/* Whether the variable of entry (NAME=VALUE) is one that pass names (pure). */
extern bool env_passed(const char *entry, const char *pass);
/* The child's rlimits, from the spec, bounded by the current hard limits. */
extern void prepare_limits(const ExecSpec *spec, ChildLimits *lim);
/*
 * The child, between fork and exec: never returns.  A failure goes to
 * status_fd as a ChildError, then the child exits 127.
 */
extern void child_exec(char *const *argv, char **envp, const int fds[3], int status_fd,
					   const ChildLimits *lim) __attribute__((noreturn));

#endif
