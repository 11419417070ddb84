/*
 * log.c
 *	  logfmt lines on stderr (see log.h).
 */
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

LogLevel log_min_level = LOG_INFO;

#define KVQ_BUFS 8
#define KVQ_LEN 2048

/*
 * The length of the UTF-8 sequence of U+0085, U+2028 or U+2029 at p, with
 * its code point in *cp; 0 for anything else.
 */
static size_t
line_break(const char *p, unsigned *cp)
{
	const unsigned char *u = (const unsigned char *) p;

	if (u[0] == 0xc2 && u[1] == 0x85)
	{
		*cp = 0x85;
		return 2;
	}
	if (u[0] == 0xe2 && u[1] == 0x80 && (u[2] == 0xa8 || u[2] == 0xa9))
	{
		*cp = u[2] == 0xa8 ? 0x2028 : 0x2029;
		return 3;
	}
	return 0;
}

void
logfmt_quote(const char *value, char *buf, size_t len)
{
	const char *p;
	size_t o = 0;
	int need = 0;

	if (len == 0)
		return;
	if (value == NULL)
		value = "";
	if (*value == '\0')
		need = 1;
	for (p = value; *p && !need; p++)
		if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
			need = 1;
	if (!need)
	{
		size_t n = strlen(value);

		if (n >= len)
		{
			/* Cut, and say so. */
			n = len > 4 ? len - 4 : 0;
			memcpy(buf, value, n);
			strcpy(buf + n, len > 4 ? "..." : "");
		}
		else
			memcpy(buf, value, n + 1);
		return;
	}
	/* Quoted: room for the closing quote, an ellipsis and the NUL. */
	buf[o++] = '"';
	for (p = value; *p; p++)
	{
		char esc[8];
		size_t el;
		unsigned char c = (unsigned char) *p;
		unsigned cp;
		size_t skip;

		if (c == '"' || c == '\\')
			el = (size_t) snprintf(esc, sizeof(esc), "\\%c", c);
		else if ((skip = line_break(p, &cp)) > 0)
		{
			/* U+0085, U+2028, U+2029: line breaks to some log readers. */
			el = (size_t) snprintf(esc, sizeof(esc), "\\u%04x", cp);
			p += skip - 1;
		}
		else if (c == '\n')
			el = (size_t) snprintf(esc, sizeof(esc), "\\n");
		else if (c == '\t')
			el = (size_t) snprintf(esc, sizeof(esc), "\\t");
		else if (c < ' ' || c == 0x7f)
			el = (size_t) snprintf(esc, sizeof(esc), "\\x%02x", c);
		else
		{
			esc[0] = (char) c;
			el = 1;
		}
		if (o + el + 5 > len)
		{
			if (o + 5 <= len)
			{
				memcpy(buf + o, "...", 3);
				o += 3;
			}
			break;
		}
		memcpy(buf + o, esc, el);
		o += el;
	}
	buf[o++] = '"';
	buf[o] = '\0';
}

const char *
kvq(const char *value)
{
	static char bufs[KVQ_BUFS][KVQ_LEN];
	static int next = 0;
	char *b = bufs[next];

	next = (next + 1) % KVQ_BUFS;
	logfmt_quote(value, b, KVQ_LEN);
	return b;
}

void
tlog(LogLevel level, const char *msg, const char *fmt, ...)
{
	char line[8192];
	struct timeval tv;
	struct tm tm;
	int n;
	va_list ap;

	if (level < log_min_level)
		return;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=%s",
				 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
				 (long) (tv.tv_usec / 1000), log_level_name(level), kvq(msg));
	if (n < 0)
		return;
	if (fmt != NULL && *fmt != '\0' && (size_t) n < sizeof(line) - 2)
	{
		line[n++] = ' ';
		va_start(ap, fmt);
		int m = vsnprintf(line + n, sizeof(line) - (size_t) n - 1, fmt, ap);
		va_end(ap);
		if (m > 0)
			n += m;
	}
	if ((size_t) n > sizeof(line) - 2)
		n = (int) sizeof(line) - 2;
	line[n++] = '\n';
	/* One write per line; a short write to a pipe of logs is not retried. */
	if (write(STDERR_FILENO, line, (size_t) n) < 0)
		return;
}
