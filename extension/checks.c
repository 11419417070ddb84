/*-------------------------------------------------------------------------
 *
 * checks.c
 *	  Small C helpers called from tq's SQL functions on hot paths.
 *
 * Each helper validates or computes one thing and raises a complete
 * ereport (SQLSTATE, message, detail, hint) on bad input, so that every
 * SQL entry point reports the same mistake the same way.  They hold no
 * state and take no locks.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "common/pg_prng.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "tq.h"

PG_FUNCTION_INFO_V1(tq_check_payload);
PG_FUNCTION_INFO_V1(tq_check_name);
PG_FUNCTION_INFO_V1(tq_check_label);
PG_FUNCTION_INFO_V1(tq_backoff);
PG_FUNCTION_INFO_V1(tq_check_result);

/* Longest queue name: fits an unquoted identifier. */
#define TQ_NAME_MAX 63

/*
 * tq.check_payload(payload jsonb) returns jsonb
 *
 * Returns the payload unchanged when it is a JSON object no larger than
 * tq.max_payload_size; raises otherwise.  STRICT is deliberately off so
 * that a NULL payload gets a message instead of a silent NULL task.
 */
Datum
tq_check_payload(PG_FUNCTION_ARGS)
{
	Jsonb *payload;
	Size size;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("task payload must not be null"),
				 errhint("Pass a JSON object, for example '{}'::jsonb.")));

	payload = PG_GETARG_JSONB_P(0);
	if (!JB_ROOT_IS_OBJECT(payload) || JB_ROOT_IS_SCALAR(payload))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("task payload must be a JSON object"),
						errdetail("The payload given is a JSON %s.",
								  JB_ROOT_IS_SCALAR(payload) ? "scalar" : "array"),
						errhint("Wrap the value in an object, for example "
								"jsonb_build_object('items', ...).")));

	size = VARSIZE(payload);
	if (size > (Size) tq_max_payload_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED), errmsg("task payload is too large"),
				 errdetail("The payload takes %zu bytes; tq.max_payload_size is %d bytes.", size,
						   tq_max_payload_size),
				 errhint("Store large data in a table or object store and "
						 "pass a reference to it in the payload.")));

	PG_RETURN_JSONB_P(payload);
}

/*
 * tq.check_name(name text, what text) returns text
 *
 * Queue names are identifiers: a letter first, then letters, digits,
 * '_', '-' or '.', at most 63 bytes.  They appear in NOTIFY payloads,
 * logs, metrics labels and config section names, so anything that would
 * need quoting in one of those places is refused here.
 */
Datum
tq_check_name(PG_FUNCTION_ARGS)
{
	text *what_t = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	char *what = what_t ? text_to_cstring(what_t) : "queue";
	text *name_t;
	const char *name;
	int len;

	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("%s name must not be null", what)));

	name_t = PG_GETARG_TEXT_PP(0);
	name = VARDATA_ANY(name_t);
	len = VARSIZE_ANY_EXHDR(name_t);

	if (len == 0 || len > TQ_NAME_MAX)
		ereport(ERROR, (errcode(ERRCODE_INVALID_NAME),
						errmsg("invalid %s name \"%s\"", what, text_to_cstring(name_t)),
						errdetail("A %s name must be 1 to %d bytes long; this one has %d.", what,
								  TQ_NAME_MAX, len),
						errhint("Use letters, digits, '_', '-' and '.', starting with a letter.")));

	for (int i = 0; i < len; i++)
	{
		char c = name[i];
		bool ok;

		if (i == 0)
			ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
		else
			ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
				 c == '_' || c == '-' || c == '.';
		if (!ok)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_NAME),
					 errmsg("invalid %s name \"%s\"", what, text_to_cstring(name_t)),
					 errdetail("Character %d is not allowed%s.", i + 1,
							   i == 0 ? " at the start of a name" : ""),
					 errhint("Use letters, digits, '_', '-' and '.', starting with a letter.")));
	}

	PG_RETURN_TEXT_P(name_t);
}

/*
 * tq.check_label(value text, what text, max_len int) returns text
 *
 * Free-form labels (tenants, dedup keys, worker names): NULL passes
 * through (callers decide whether NULL is allowed), otherwise 1..max_len
 * bytes without control characters, which would corrupt logfmt lines and
 * NOTIFY payloads.  what and max_len must not be NULL.
 */
Datum
tq_check_label(PG_FUNCTION_ARGS)
{
	text *value_t;
	char *what;
	int32 max_len;
	const unsigned char *p;
	int len;

	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("what and max_len must not be null"),
						errhint("Name the label and give its longest length in bytes.")));
	what = text_to_cstring(PG_GETARG_TEXT_PP(1));
	max_len = PG_GETARG_INT32(2);
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();

	value_t = PG_GETARG_TEXT_PP(0);
	p = (const unsigned char *) VARDATA_ANY(value_t);
	len = VARSIZE_ANY_EXHDR(value_t);

	if (len == 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("%s must not be an empty string", what),
						errhint("Pass NULL to leave it unset.")));
	if (len > max_len)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s is too long", what),
						errdetail("It has %d bytes; the limit is %d.", len, max_len),
						errhint("Use a shorter value, for example a hash of the long one.")));
	{
		int width;
		int i = tq_label_bad_char(p, len, &width);

		if (i >= 0)
		{
			StringInfoData hex;

			initStringInfo(&hex);
			for (int k = 0; k < width; k++)
				appendStringInfo(&hex, "%s0x%02x", k ? " " : "", p[i + k]);
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							errmsg("%s contains a control character or line separator", what),
							errdetail("Byte %d starts the sequence %s.", i + 1, hex.data),
							errhint("Remove newlines, tabs, other control characters and the "
									"separators U+0085, U+2028 and U+2029.")));
		}
	}

	PG_RETURN_TEXT_P(value_t);
}

/*
 * The first character a label must not hold: an ASCII control character
 * (below 0x20, or 0x7f), or, in a UTF-8 database, a C1 control (U+0080 to
 * U+009F, among them NEL, U+0085) or the line and paragraph separators
 * U+2028 and U+2029.  Each of these ends a line somewhere -- in a logfmt
 * line, an HTTP header, a terminal or a JavaScript string -- so a tenant
 * or key holding one could forge lines downstream.  Returns the byte
 * offset and sets *width to the sequence's length, or returns -1.
 */
int
tq_label_bad_char(const unsigned char *p, int len, int *width)
{
	bool utf8 = GetDatabaseEncoding() == PG_UTF8;

	for (int i = 0; i < len; i++)
	{
		*width = 1;
		if (p[i] < 0x20 || p[i] == 0x7f)
			return i;
		if (!utf8 || p[i] < 0xc2)
			continue;
		if (p[i] == 0xc2 && i + 1 < len && p[i + 1] >= 0x80 && p[i + 1] <= 0x9f)
		{
			*width = 2;
			return i;
		}
		if (p[i] == 0xe2 && i + 2 < len && p[i + 1] == 0x80 &&
			(p[i + 2] == 0xa8 || p[i + 2] == 0xa9))
		{
			*width = 3;
			return i;
		}
	}
	return -1;
}

/*
 * tq.backoff(n int, base interval, cap interval) returns interval
 *
 * Delay before retry number n (1 for the first retry): "full jitter",
 * uniform in [0, min(cap, base * 2^(n-1))].  Full jitter spreads a burst
 * of failures over the whole window instead of synchronising the retries
 * (AWS Architecture Blog, "Exponential Backoff And Jitter").  A floor of
 * one tenth of base keeps a retry from landing in the same millisecond as
 * the failure.  Only the time part of the intervals is used; months and
 * days count as 30 and 1 days.
 */
Datum
tq_backoff(PG_FUNCTION_ARGS)
{
	int32 n = PG_GETARG_INT32(0);
	Interval *base = PG_GETARG_INTERVAL_P(1);
	Interval *cap = PG_GETARG_INTERVAL_P(2);
	Interval *result;
	double base_us, cap_us, window, delay;

	base_us = (double) base->time +
			  ((double) base->day + (double) base->month * DAYS_PER_MONTH) * USECS_PER_DAY;
	cap_us = (double) cap->time +
			 ((double) cap->day + (double) cap->month * DAYS_PER_MONTH) * USECS_PER_DAY;
	if (base_us < 0)
		base_us = 0;
	if (cap_us < base_us)
		cap_us = base_us;
	if (n < 1)
		n = 1;

	/* 2^62 overflows nothing in a double and exceeds any sane cap */
	window = base_us * ldexp(1.0, Min(n - 1, 62));
	if (window > cap_us)
		window = cap_us;
	delay = window * pg_prng_double(&pg_global_prng_state);
	if (delay < base_us / 10)
		delay = base_us / 10;

	result = (Interval *) palloc0(sizeof(Interval));
	result->time = (TimeOffset) delay;
	PG_RETURN_INTERVAL_P(result);
}

/*
 * tq.check_result(result jsonb) returns jsonb
 *
 * A task's result may be any JSON value (or NULL), but no larger than
 * tq.max_payload_size: results live in the history table, and a worker
 * bug that reports a 500 MB blob must not be able to fill it.
 */
Datum
tq_check_result(PG_FUNCTION_ARGS)
{
	Jsonb *result;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	result = PG_GETARG_JSONB_P(0);
	if (VARSIZE(result) > (Size) tq_max_payload_size)
		ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED), errmsg("task result is too large"),
						errdetail("The result takes %zu bytes; tq.max_payload_size is %d bytes.",
								  (Size) VARSIZE(result), tq_max_payload_size),
						errhint("Store large results elsewhere and return a reference to them.")));
	PG_RETURN_JSONB_P(result);
}
