/*
 * util.h
 *	  Small helpers every module of tqd uses, in one place.
 *
 * container_of recovers the struct that embeds a libev watcher (or any
 * member) from a pointer to that member: tqd's watchers live inside their
 * owner (ExecRun, PgConn, Httpd, HttpClient, Task, Daemon), never on their
 * own, so a callback finds its object without a lookup or a data pointer.
 *
 * xstrdup and xcalloc (util.c) are for what tqd cannot do without: they
 * log and abort when memory runs out.
 */
#ifndef TQD_UTIL_H
#define TQD_UTIL_H

#include <stdbool.h>
#include <stddef.h>

/* The object of type whose member is at ptr. */
#define container_of(ptr, type, member) ((type *) ((char *) (ptr) -offsetof(type, member)))

/* Elements of an array (not of a pointer). */
#define lengthof(a) (sizeof(a) / sizeof((a)[0]))

/* strdup and calloc that abort when out of memory; xstrdup(NULL) is "". */
extern char *xstrdup(const char *s);
extern void *xcalloc(size_t n, size_t size);
/* Overwrites a string (a token) with zeroes, then frees it; NULL is allowed. */
extern void free_secret(char *s);

/* A blank as C's isspace sees one in the C locale (but never NUL). */
static inline bool
is_blank(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

static inline const char *
skip_blanks(const char *s)
{
	while (*s && is_blank(*s))
		s++;
	return s;
}

#endif
