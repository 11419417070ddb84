/*
 * argv.h
 *	  Splitting a command line into words as sh would, without a shell
 *	  (argv.c; its banner says why not glib's g_shell_parse_argv).
 */
#ifndef TQD_ARGV_H
#define TQD_ARGV_H

#include <stddef.h>

/*
 * Splits a command line into words without a shell: blanks separate
 * words; single quotes keep everything literal; double quotes keep blanks,
 * and a backslash inside them escapes " and \ only; outside quotes a
 * backslash escapes the next character.  No variables, globs, comments
 * or substitutions.  Returns the number of words (argv NULL-terminated,
 * owned by the caller: free with free_argv), or -1 with a message in err.
 */
extern int split_argv(const char *s, char ***argv, char *err, size_t errlen)
	__attribute__((warn_unused_result));
extern void free_argv(char **argv);

#endif
