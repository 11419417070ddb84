/*
 * argv.c
 *	  Splitting a command line into words without a shell (argv.h): how
 *	  an exec queue's command becomes the program and its arguments.
 *
 * Why our own splitter, not glib's g_shell_parse_argv (Debian's
 * libglib2.0-dev).  glib 2.74 was run on the 14 split_argv cases of
 * test_config and on the commands README.md and tqd.conf.sample show
 * ("/usr/local/bin/make-thumbnail --quality 85", "/bin/cat"), plus a few
 * more.  The documented commands split the same; 5 of the 14 tests and
 * these inputs do not:
 *
 *	input               split_argv                glib
 *	"" and " \t "       0 words                   error "Text was empty (or
 *	                                              contained only whitespace)"
 *	echo 'oops          error "unterminated       error "Text ended before
 *	                    single quote at           matching quote was found
 *	                    character 6"              for '. (The text was ...)"
 *	echo "a \" b        the same for a double     the same, without the
 *	                    quote                     place
 *	echo a\             error "backslash at the   error "Text ended just
 *	                    end, with nothing to      after a '\' character.
 *	                    escape"                   (The text was ...)"
 *	prog #x             prog, #x                  prog ('#' starts a comment)
 *	prog "\$HOME"       \$HOME                    $HOME
 *	prog "a\`b"         a\`b                      a`b
 *	prog "a\<NL>b"      a\<NL>b                   a<NL>b
 *	prog a\<NL>b        a<NL>b                    ab
 *
 * Switching would change what some commands run ('#', and a backslash
 * before $ or ` in double quotes) and lose the place of a quote left
 * open, so the rules stay these, sh's for quotes and backslashes and
 * nothing else: blanks separate words; single quotes keep everything
 * literal; double quotes keep blanks, and a backslash inside them escapes
 * only " and \; outside quotes a backslash escapes the next character.
 * No variables, globs, comments or substitutions.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "argv.h"
#include "util.h"

/* snprintf into the caller's err, which may be NULL. */
static void __attribute__((format(printf, 3, 4)))
set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/*
 * Adds a copy of word (len bytes) to the growing argv, keeping it
 * NULL-terminated; word NULL only terminates.  False when out of memory.
 */
static bool
push_word(char ***argv, int *n, int *cap, const char *word, size_t len)
{
	if (*n + 1 >= *cap)
	{
		int newcap = *cap ? *cap * 2 : 8;
		char **grown = realloc(*argv, newcap * sizeof(char *));

		if (grown == NULL)
			return false;
		*argv = grown;
		*cap = newcap;
	}
	if (word != NULL)
	{
		if (((*argv)[*n] = strndup(word, len)) == NULL)
			return false;
		(*n)++;
	}
	(*argv)[*n] = NULL;
	return true;
}

/*
 * The rules are sh's for quotes and backslashes, and only those: what the
 * user would type at a prompt for a plain command, with nothing expanded.
 * A word is built in a buffer as long as the input, which no word exceeds.
 */
int
split_argv(const char *s, char ***argvp, char *err, size_t errlen)
{
	char **argv = NULL;
	int n = 0, cap = 0;
	char *word = malloc(strlen(s) + 1);
	const char *q = s;

	*argvp = NULL;
	if (word == NULL || !push_word(&argv, &n, &cap, NULL, 0))
		goto oom;
	for (;;)
	{
		size_t len = 0;

		q = skip_blanks(q);
		if (*q == '\0')
			break;
		while (*q != '\0' && !is_blank(*q))
		{
			if (*q == '\'')
			{
				/* '...': everything literal up to the next quote, even \. */
				const char *end = strchr(q + 1, '\'');

				if (end == NULL)
				{
					set_err(err, errlen, "unterminated single quote at character %d",
							(int) (q - s) + 1);
					goto fail;
				}
				memcpy(word + len, q + 1, end - q - 1);
				len += end - q - 1;
				q = end + 1;
			}
			else if (*q == '"')
			{
				/* "...": blanks kept; \" and \\ escaped, any other \ kept (sh). */
				const char *open = q++;

				while (*q != '"')
				{
					if (*q == '\0')
					{
						set_err(err, errlen, "unterminated double quote at character %d",
								(int) (open - s) + 1);
						goto fail;
					}
					if (*q == '\\' && (q[1] == '"' || q[1] == '\\'))
						q++;
					word[len++] = *q++;
				}
				q++;
			}
			else if (*q == '\\')
			{
				/* Outside quotes \x is x; a final \ would escape nothing. */
				if (q[1] == '\0')
				{
					set_err(err, errlen, "backslash at the end, with nothing to escape");
					goto fail;
				}
				word[len++] = q[1];
				q += 2;
			}
			else
				word[len++] = *q++;
		}
		/* A word ends at a blank or the end, even if empty ('' or ""). */
		if (!push_word(&argv, &n, &cap, word, len))
			goto oom;
	}
	free(word);
	*argvp = argv;
	return n;

oom:
	set_err(err, errlen, "out of memory");
fail:
	free(word);
	free_argv(argv);
	return -1;
}

void
free_argv(char **argv)
{
	if (argv == NULL)
		return;
	for (char **a = argv; *a != NULL; a++)
		free(*a);
	free(argv);
}
