/*-------------------------------------------------------------------------
 *
 * traceparent.c
 *	  W3C Trace Context: the traceparent a task carries from its submitter
 *	  to its handler, so that a user's distributed trace joins up across
 *	  the queue.
 *
 * A task gets a traceparent from the traceparent argument of tq_submit,
 * tq_submit_many or tq.submit_slow, or, when none is given, from the
 * setting tq.traceparent, which an application sets once per request
 * (SET LOCAL) so that every task it submits -- through triggers and
 * functions too -- joins that request's trace.  tq stores the value as
 * given, returns it from tq_lease, and tqd hands it to the handler; tq
 * itself creates no spans.
 *
 * The form (W3C Trace Context level 1, section 3.2):
 *
 *		version "-" trace-id "-" parent-id "-" trace-flags
 *		00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
 *
 * lowercase hex throughout; version ff is invalid, and an all-zero
 * trace-id or parent-id too.  Version 00 is exactly 55 characters; a
 * higher version starts the same way and may carry more after a "-"
 * (forward compatibility), which tq keeps but does not read: printable
 * ASCII without blanks, so that the value is safe as an environment
 * variable and as an HTTP header.  A value is at most TQ_TRACEPARENT_MAX
 * bytes.  The empty string means "none".
 *
 * One check serves the SQL functions (tq.submit_traceparent), the C fast
 * path of tq_submit (submit.c) and the check hook of tq.traceparent, so
 * the argument and the setting accept exactly the same values.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "tq.h"

PG_FUNCTION_INFO_V1(tq_submit_traceparent);

#define TP_HINT                                                                                    \
	"A traceparent looks like 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01: "           \
	"version, trace-id (32 hex digits), parent-id (16 hex digits) and trace-flags, in "            \
	"lowercase hex, separated by '-'; an empty string means none."

/* Whether the n characters at p are lowercase hex digits. */
static bool
lower_hex(const char *p, int n)
{
	for (int i = 0; i < n; i++)
		if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
			return false;
	return true;
}

/* Whether the n characters at p are all '0'. */
static bool
all_zero(const char *p, int n)
{
	for (int i = 0; i < n; i++)
		if (p[i] != '0')
			return false;
	return true;
}

/*
 * What is wrong with the traceparent s of len bytes (not NUL-terminated,
 * len > 0), as a sentence for an errdetail; NULL if nothing is.  The
 * sentence is in static storage, valid until the next call.
 */
const char *
tq_traceparent_problem(const char *s, int len)
{
	static char why[160];
	static const struct
	{
		const char *name;
		int at, n; /* position and length of the field */
	} field[] = {
		{"version", 0, 2}, {"trace-id", 3, 32}, {"parent-id", 36, 16}, {"trace-flags", 53, 2}};

	if (len > TQ_TRACEPARENT_MAX)
	{
		snprintf(why, sizeof(why), "It has %d bytes; the limit is %d.", len, TQ_TRACEPARENT_MAX);
		return why;
	}
	if (len < TQ_TRACEPARENT_LEN)
	{
		snprintf(why, sizeof(why), "It has %d characters; a traceparent has at least %d.", len,
				 TQ_TRACEPARENT_LEN);
		return why;
	}
	for (int f = 0; f < (int) lengthof(field); f++)
	{
		if (f > 0 && s[field[f].at - 1] != '-')
		{
			snprintf(why, sizeof(why), "Character %d must be '-', which ends the %s.", field[f].at,
					 field[f - 1].name);
			return why;
		}
		if (!lower_hex(s + field[f].at, field[f].n))
		{
			snprintf(why, sizeof(why), "The %s must be %d lowercase hex digits.", field[f].name,
					 field[f].n);
			return why;
		}
	}
	if (s[0] == 'f' && s[1] == 'f')
		return "Version ff is invalid.";
	if (all_zero(s + 3, 32))
		return "The trace-id is all zeros, which means no trace.";
	if (all_zero(s + 36, 16))
		return "The parent-id is all zeros, which means no parent.";
	if (len == TQ_TRACEPARENT_LEN)
		return NULL;
	if (s[0] == '0' && s[1] == '0')
	{
		snprintf(why, sizeof(why), "It has %d characters; version 00 has exactly %d.", len,
				 TQ_TRACEPARENT_LEN);
		return why;
	}
	if (s[TQ_TRACEPARENT_LEN] != '-')
		return "After the trace-flags a higher version may only continue with '-'.";
	for (int i = TQ_TRACEPARENT_LEN + 1; i < len; i++)
		if ((unsigned char) s[i] <= 0x20 || (unsigned char) s[i] >= 0x7f)
		{
			snprintf(why, sizeof(why),
					 "Character %d (byte 0x%02x) is not printable ASCII; blanks are not allowed "
					 "either.",
					 i + 1, (unsigned char) s[i]);
			return why;
		}
	return NULL;
}

/*
 * tq.submit_traceparent(traceparent text) returns text
 *
 * The traceparent a task submitted now gets: the argument when it is not
 * NULL (checked; '' means none), else the setting tq.traceparent (checked
 * when it was set; '' means none).  NULL when the task has none.
 */
Datum
tq_submit_traceparent(PG_FUNCTION_ARGS)
{
	text *tp;
	const char *why;

	if (PG_ARGISNULL(0))
	{
		if (tq_traceparent == NULL || tq_traceparent[0] == '\0')
			PG_RETURN_NULL();
		PG_RETURN_TEXT_P(cstring_to_text(tq_traceparent));
	}
	tp = PG_GETARG_TEXT_PP(0);
	if (VARSIZE_ANY_EXHDR(tp) == 0)
		PG_RETURN_NULL();
	why = tq_traceparent_problem(VARDATA_ANY(tp), VARSIZE_ANY_EXHDR(tp));
	if (why != NULL)
	{
		/* The value itself only where it is short and printable. */
		char *value = text_to_cstring(tp);
		bool show = strlen(value) <= 128;

		for (const char *c = value; show && *c; c++)
			show = (unsigned char) *c > 0x20 && (unsigned char) *c < 0x7f;
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 show ? errmsg("invalid traceparent \"%s\"", value) : errmsg("invalid traceparent"),
				 errdetail("%s", why), errhint(TP_HINT)));
	}
	PG_RETURN_TEXT_P(tp);
}

/*
 * Check hook of tq.traceparent: the same rules, so that a bad value is
 * refused when it is set (SET, set_config, ALTER ROLE ... SET) rather than
 * by every submit after it.  PostgreSQL reports the refusal with SQLSTATE
 * 22023 and the value; the detail and hint come from here.
 */
bool
tq_traceparent_check_hook(char **newval, void **extra, GucSource source)
{
	const char *why;

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	why = tq_traceparent_problem(*newval, strlen(*newval));
	if (why == NULL)
		return true;
	GUC_check_errdetail("%s", why);
	GUC_check_errhint(TP_HINT);
	return false;
}
