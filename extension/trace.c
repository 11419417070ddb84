/*-------------------------------------------------------------------------
 *
 * trace.c
 *	  Per-attempt traces: a jsonb array on each task (tq.task.trace, moved
 *	  to tq.history with the task), one object per attempt:
 *
 *		{"attempt": 2, "ready_at": ..., "leased_at": ..., "worker": "w1",
 *		 "ended_at": ..., "outcome": "failed", "error": "..."}
 *
 *	  ready_at is when the attempt was due (the task's run_at, or its
 *	  submission if later); leased_at when a worker claimed it; ended_at
 *	  and outcome when the attempt ended: failed or throttled (it will be
 *	  tried again) or released (handed back).
 *
 *	  Only attempts that ended without finishing the task are stored: the
 *	  tq.task trigger (fair_trigger.c) appends one on every running -> ready or
 *	  scheduled change, in the row update the retry makes anyway.  The
 *	  last attempt of a task is its row's own columns (attempt, run_at,
 *	  started_at, worker, and for a finished task finished_at, state,
 *	  last_error), which tq_task_trace adds.  So a task that succeeds at
 *	  its first attempt -- most of them -- costs nothing: an earlier cut
 *	  that opened an attempt at every claim and closed it at every finish
 *	  cost 16 % of the lease+complete rate.  Error texts are cut to 500
 *	  characters here (last_error keeps the whole), and a task keeps the
 *	  last 100 stored attempts.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "tq.h"

#define TRACE_ERROR_CHARS 500
#define TRACE_MAX_ATTEMPTS 100 /* attempts kept per task, the last ones */

/*
 * The entry is built as a jsonb value directly (pushJsonbValue), not as
 * text parsed back: the parse was 71 % of an entry's cost in a profile of
 * tasks that fail once.  jsonb sorts the keys itself, so the stored value
 * is the same either way.
 */
static void
push_string(JsonbParseState **st, JsonbIteratorToken tok, const char *s, int len)
{
	JsonbValue v;

	v.type = jbvString;
	v.val.string.val = (char *) s;
	v.val.string.len = len;
	pushJsonbValue(st, tok, &v);
}

static void
push_key(JsonbParseState **st, const char *key)
{
	push_string(st, WJB_KEY, key, strlen(key));
}

/* "key": "timestamp", in ISO 8601 as jsonb shows timestamps. */
static void
push_ts(JsonbParseState **st, const char *key, TimestampTz ts)
{
	char tsbuf[MAXDATELEN + 1];
	/* Copied: the value points into it until the jsonb is built. */
	char *text = pstrdup(JsonEncodeDateTime(tsbuf, TimestampTzGetDatum(ts), TIMESTAMPTZOID, NULL));

	push_key(st, key);
	push_string(st, WJB_VALUE, text, strlen(text));
}

/*
 * The trace with one more ended attempt appended (trace may be null: a
 * new array).
 */
Datum
tq_trace_append(Datum trace, bool trace_null, int32 attempt, TimestampTz ready_at,
				TimestampTz leased_at, const char *worker, TimestampTz ended_at,
				const char *outcome, const char *error)
{
	JsonbParseState *st = NULL;
	JsonbValue v;
	JsonbValue *res;
	Jsonb *entry;

	pushJsonbValue(&st, WJB_BEGIN_ARRAY, NULL);
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	push_key(&st, "attempt");
	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(attempt);
	pushJsonbValue(&st, WJB_VALUE, &v);
	push_ts(&st, "ready_at", ready_at);
	push_ts(&st, "leased_at", leased_at);
	push_key(&st, "worker");
	if (worker)
		push_string(&st, WJB_VALUE, worker, strlen(worker));
	else
	{
		v.type = jbvNull;
		pushJsonbValue(&st, WJB_VALUE, &v);
	}
	push_ts(&st, "ended_at", ended_at);
	push_key(&st, "outcome");
	push_string(&st, WJB_VALUE, outcome, strlen(outcome));
	if (error)
	{
		push_key(&st, "error");
		push_string(&st, WJB_VALUE, error, pg_mbcliplen(error, strlen(error), TRACE_ERROR_CHARS));
	}
	pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	res = pushJsonbValue(&st, WJB_END_ARRAY, NULL);
	entry = JsonbValueToJsonb(res);
	if (trace_null)
		return JsonbPGetDatum(entry);
	/* The oldest go first: a task leased and handed back without end stays small. */
	while (JB_ROOT_IS_ARRAY(DatumGetJsonbP(trace)) &&
		   JB_ROOT_COUNT(DatumGetJsonbP(trace)) >= TRACE_MAX_ATTEMPTS)
		trace = DirectFunctionCall2(jsonb_delete_idx, trace, Int32GetDatum(0));
	return DirectFunctionCall2(jsonb_concat, trace, JsonbPGetDatum(entry));
}
