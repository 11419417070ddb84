/*
 * util.c
 *	  Allocation that cannot fail, and freeing a secret (util.h).
 */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

/*
 * Out of memory, tqd cannot keep its promises about the tasks it holds:
 * it stops, and tq reclaims the leases when they expire.
 */
char *
xstrdup(const char *s)
{
	char *r = strdup(s ? s : "");

	if (r == NULL)
	{
		tlog(LOG_ERROR, "out of memory", NULL);
		abort();
	}
	return r;
}

void *
xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);

	if (p == NULL)
	{
		tlog(LOG_ERROR, "out of memory", NULL);
		abort();
	}
	return p;
}

/* Zeroes a secret before freeing it, so that it does not linger in the heap. */
void
free_secret(char *s)
{
	if (s == NULL)
		return;
	explicit_bzero(s, strlen(s));
	free(s);
}
