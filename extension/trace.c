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
 *	  tq.task trigger (fair.c) appends one on every running -> ready or
 *	  scheduled change, in the row update the retry makes anyway.  The
 *	  last attempt of a task is its row's own columns (attempt, run_at,
 *	  started_at, worker, and for a finished task finished_at, state,
 *	  last_error), which tq_task_trace adds.  So a task that succeeds at
 *	  its first attempt -- most of them -- costs nothing: an earlier cut
 *	  that opened an attempt at every claim and closed it at every finish
 *	  cost 16 % of the lease+complete rate.  Error texts are cut to 500
 *	  characters here (last_error keeps the whole).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "access/xact.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "tq.h"

#define TRACE_ERROR_CHARS 500

/* Appends ,"key":"timestamp" to buf. */
static void
add_ts(StringInfo buf, const char *key, TimestampTz ts)
{
	char tsbuf[MAXDATELEN + 1];

	appendStringInfo(buf, ",\"%s\":", key);
	/* ISO 8601 in UTC, as jsonb shows timestamps. */
	escape_json(buf, JsonEncodeDateTime(tsbuf, TimestampTzGetDatum(ts), TIMESTAMPTZOID, NULL));
}

static Datum
parse(StringInfo buf)
{
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf->data));
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
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "[{\"attempt\":%d", attempt);
	add_ts(&buf, "ready_at", ready_at);
	add_ts(&buf, "leased_at", leased_at);
	appendStringInfoString(&buf, ",\"worker\":");
	if (worker)
		escape_json(&buf, worker);
	else
		appendStringInfoString(&buf, "null");
	add_ts(&buf, "ended_at", ended_at);
	appendStringInfoString(&buf, ",\"outcome\":");
	escape_json(&buf, outcome);
	if (error)
	{
		int len = pg_mbcliplen(error, strlen(error), TRACE_ERROR_CHARS);

		appendStringInfoString(&buf, ",\"error\":");
		escape_json(&buf, pnstrdup(error, len));
	}
	appendStringInfoString(&buf, "}]");
	if (trace_null)
		return parse(&buf);
	return DirectFunctionCall2(jsonb_concat, trace, parse(&buf));
}
