/*
 * test_util.c
 *	  Unit tests of tqd's small pure parts: the reconnect backoff
 *	  (pgconn.c) and logfmt quoting (log.c).
 */
#include <string.h>

#include "log.h"
#include "pgconn.h"
#include "tap.h"

static void
quote_is(const char *in, const char *want, const char *what)
{
	char buf[256];

	logfmt_quote(in, buf, sizeof(buf));
	is_str(buf, want, "logfmt: %s", what);
}

int
main(void)
{
	char small[16];

	plan(17);

	/* Backoff: doubles from min, capped at max, jitter takes up to a quarter. */
	ok(backoff_delay(1, 0.1, 10, 0) == 0.1, "backoff: the first retry waits min");
	ok(backoff_delay(2, 0.1, 10, 0) == 0.2, "backoff: then twice that");
	ok(backoff_delay(5, 0.1, 10, 0) == 1.6, "backoff: doubling each time");
	ok(backoff_delay(20, 0.1, 10, 0) == 10, "backoff: never above max");
	ok(backoff_delay(1000000, 0.1, 10, 0) == 10, "backoff: however many failures");
	ok(backoff_delay(3, 0.1, 10, 0.999) > 0.3 && backoff_delay(3, 0.1, 10, 0.999) <= 0.4,
	   "backoff: jitter keeps at least three quarters");
	ok(backoff_delay(1, 5, 1, 0) == 1, "backoff: max wins over a larger min");

	quote_is("plain", "plain", "a plain value is left alone");
	quote_is("two words", "\"two words\"", "a blank needs quotes");
	quote_is("", "\"\"", "an empty value is quoted");
	quote_is(NULL, "\"\"", "NULL prints as empty");
	quote_is("a=b", "\"a=b\"", "an equals sign needs quotes");
	quote_is("say \"hi\"\\", "\"say \\\"hi\\\"\\\\\"", "quotes and backslashes are escaped");
	quote_is("line1\nline2\t\x01", "\"line1\\nline2\\t\\x01\"", "control characters are escaped");
	quote_is("a\xc2\x85"
			 "b\xe2\x80\xa8"
			 "c\xe2\x80\xa9"
			 "d\xc3\xa9",
			 "\"a\\u0085b\\u2028c\\u2029d\xc3\xa9\"",
			 "U+0085, U+2028 and U+2029 are escaped, other UTF-8 kept");
	logfmt_quote("a value much longer than the buffer", small, sizeof(small));
	ok(strlen(small) < sizeof(small) && strstr(small, "...") != NULL,
	   "logfmt: a long value is cut with an ellipsis");
	logfmt_quote("verylongplainvaluewithoutblanks", small, sizeof(small));
	ok(strlen(small) < sizeof(small) && strstr(small, "...") != NULL,
	   "logfmt: also without quotes");
	return done_testing();
}
