/*
 * log.h
 *	  tqd's logs: logfmt on stderr, one line per event.
 *
 *	  ts=2026-11-22T23:10:01.123Z level=info msg="task succeeded" task=42 queue=email attempt=1
 *
 * tlog(level, msg, fmt, ...) takes the message and then key=value pairs
 * built by the caller with the kv* helpers, which quote values as logfmt
 * wants (a value with a blank, '"', '=', a control character or any
 * non-ASCII byte is quoted; control characters and the line breaks
 * U+0085, U+2028 and U+2029 are escaped).  Lines are written with one
 * write(2) so that concurrent writers (tqd's children share stderr only
 * through their own pipes, but a supervisor may merge streams) do not
 * interleave within a line.
 */
#ifndef TQD_LOG_H
#define TQD_LOG_H

#include <stdarg.h>
#include <stddef.h>

#include "config.h"

extern LogLevel log_min_level;

/*
 * Logs msg with the fields in fmt (printf-style, already logfmt: use
 * kvq() for string values that may need quoting).
 */
extern void tlog(LogLevel level, const char *msg, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Returns value quoted for logfmt if it needs quoting, in one of a few
 * rotating static buffers (so several may appear in one tlog call); NULL
 * prints as "".  Long values are cut at 2000 bytes with "...".
 */
extern const char *kvq(const char *value);

/*
 * Quotes value for logfmt into buf (the pure part, unit-tested).
 */
extern void logfmt_quote(const char *value, char *buf, size_t len);

#endif
