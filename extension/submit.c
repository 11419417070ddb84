/*-------------------------------------------------------------------------
 *
 * submit.c
 *	  tq_submit: the single-task submit, in C.
 *
 * A single tq_submit is what applications call most, often once per
 * request in their own transaction, so its cost is measured against a
 * plain single-row INSERT.  The PL/pgSQL version (now tq.submit_slow)
 * paid for a function-level SET search_path, a dozen interpreted
 * statements and a helper call per option.  Here the common case -- no
 * dedup key, no delay, no expiry or timeout, an existing queue -- is two
 * kept SPI plans: read the queue (and whether the tenant is paused), and
 * insert the row.  Everything else, including every error, is handed to
 * tq.submit_slow with the same arguments, so there is one definition of
 * each rule and each message.
 *
 * The function is SECURITY DEFINER without a SET clause: its queries name
 * every table, type and operator with its schema, so the caller's
 * search_path cannot change what they mean.
 *
 * A traceparent (0.6.0) is part of the common case: an application that
 * sets tq.traceparent on every request would otherwise pay for the slow
 * path on every submit.  Given or taken from the setting, it is checked
 * here with traceparent.c's rules (a bad one goes to the slow path, which
 * raises the error in its turn) and inserted by a plan of its own, so a
 * submit without one runs exactly as before.
 *
 * One library serves every installed version of the extension, so both
 * SQL signatures are served: tq_submit_fast for 0.3.0 to 0.5.0 (nine
 * arguments, no traceparent column), tq_submit_fast_0_6 from 0.6.0 (a
 * tenth, traceparent).  A database still at 0.5.0 keeps working with the
 * new library until it is updated.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/timestamp.h"

#include "tq.h"

PG_FUNCTION_INFO_V1(tq_submit_fast);
PG_FUNCTION_INFO_V1(tq_submit_fast_0_6);

extern Datum tq_wake(PG_FUNCTION_ARGS);

#define NARGS_0_3 9 /* tq_submit of 0.3.0 to 0.5.0 */
#define NARGS 10    /* from 0.6.0: traceparent last */

static SPIPlanPtr queue_plan = NULL;
static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr insert_tp_plan = NULL; /* with traceparent: 0.6.0 on */

/* Hands the whole call to tq.submit_slow. */
static Datum
submit_slow(FunctionCallInfo fcinfo)
{
	FmgrInfo flinfo;
	LOCAL_FCINFO(slow, NARGS);
	Datum result;
	Oid slow_oid;

	/*
	 * Looked up per call, not cached: the slow path is rare, and a cached
	 * OID would outlive DROP and CREATE EXTENSION in this session.  The
	 * signature is the caller's: the version of the extension installed.
	 */
	slow_oid = DatumGetObjectId(DirectFunctionCall1(
		to_regprocedure,
		CStringGetTextDatum(PG_NARGS() == NARGS
								? "tq.submit_slow(pg_catalog.text, pg_catalog.jsonb, "
								  "pg_catalog.timestamptz, pg_catalog.int4, pg_catalog.text, "
								  "pg_catalog.text, pg_catalog.int4, pg_catalog.interval, "
								  "pg_catalog.timestamptz, pg_catalog.text)"
								: "tq.submit_slow(pg_catalog.text, pg_catalog.jsonb, "
								  "pg_catalog.timestamptz, pg_catalog.int4, pg_catalog.text, "
								  "pg_catalog.text, pg_catalog.int4, pg_catalog.interval, "
								  "pg_catalog.timestamptz)")));
	if (!OidIsValid(slow_oid))
		elog(ERROR, "tq: function tq.submit_slow is missing; reinstall the extension");
	fmgr_info(slow_oid, &flinfo);
	InitFunctionCallInfoData(*slow, &flinfo, PG_NARGS(), PG_GET_COLLATION(), NULL, NULL);
	for (int i = 0; i < PG_NARGS(); i++)
	{
		slow->args[i].value = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		slow->args[i].isnull = PG_ARGISNULL(i);
	}
	result = FunctionCallInvoke(slow);
	if (slow->isnull)
		PG_RETURN_NULL();
	return result;
}

static bool
label_ok(text *t, int max_len)
{
	const unsigned char *p = (const unsigned char *) VARDATA_ANY(t);
	int len = VARSIZE_ANY_EXHDR(t);
	int width;

	if (len == 0 || len > max_len)
		return false;
	return tq_label_bad_char(p, len, &width) < 0;
}

static void
prepare_plans(void)
{
	Oid qtypes[2] = {TEXTOID, TEXTOID};
	Oid itypes[6] = {TEXTOID, TEXTOID, INT2OID, TEXTOID, JSONBOID, INT4OID};

	/* Kept plans are re-planned by the plan cache when their tables change. */
	if (queue_plan != NULL && insert_plan != NULL)
		return;
	queue_plan = SPI_prepare("SELECT q.max_attempts, q.paused OR ($2 IS NOT NULL AND EXISTS ("
							 "    SELECT 1 FROM tq.tenant_pause p"
							 "     WHERE p.queue OPERATOR(pg_catalog.=) q.name"
							 "       AND p.tenant OPERATOR(pg_catalog.=) $2))"
							 "  FROM tq.queue q WHERE q.name OPERATOR(pg_catalog.=) $1",
							 2, qtypes);
	if (queue_plan == NULL)
		elog(ERROR, "tq: preparing the queue look-up failed: %s",
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(queue_plan);
	insert_plan =
		SPI_prepare("INSERT INTO tq.task (queue, state, priority, tenant, payload, max_attempts)"
					" VALUES ($1, pg_catalog.text($2)::tq.task_state, $3, $4, $5, $6) RETURNING id",
					6, itypes);
	if (insert_plan == NULL)
		elog(ERROR, "tq: preparing the task insert failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(insert_plan);
}

/* The insert with a traceparent; prepared on first use (0.5.0 has no such column). */
static void
prepare_tp_plan(void)
{
	Oid itypes[7] = {TEXTOID, TEXTOID, INT2OID, TEXTOID, JSONBOID, INT4OID, TEXTOID};

	if (insert_tp_plan != NULL)
		return;
	insert_tp_plan = SPI_prepare(
		"INSERT INTO tq.task (queue, state, priority, tenant, payload, max_attempts, traceparent)"
		" VALUES ($1, pg_catalog.text($2)::tq.task_state, $3, $4, $5, $6, $7) RETURNING id",
		7, itypes);
	if (insert_tp_plan == NULL)
		elog(ERROR, "tq: preparing the task insert failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(insert_tp_plan);
}

/*
 * tq_submit(queue text, payload jsonb DEFAULT '{}', run_at timestamptz,
 *           priority integer DEFAULT 0, tenant text, dedup_key text,
 *           max_attempts integer, timeout interval, expires_at timestamptz
 *           [, traceparent text])
 *   returns bigint
 *
 * The common case of both signatures; with_tp for the one with a
 * traceparent.
 */
static Datum
submit(FunctionCallInfo fcinfo, bool with_tp)
{
	text *queue;
	Jsonb *payload;
	int32 priority;
	text *tenant = NULL;
	Datum qargs[2];
	char qnulls[2] = {' ', ' '};
	Datum iargs[7];
	char inulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	bool isnull;
	int32 max_attempts;
	bool paused;
	int64 id;
	int ret;
	Datum traceparent = (Datum) 0; /* (Datum) 0: none */

	/* Anything but the common case takes the one full definition. */
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(3) || !PG_ARGISNULL(5) ||
		!PG_ARGISNULL(7) || !PG_ARGISNULL(8))
		return submit_slow(fcinfo);
	if (!PG_ARGISNULL(2) && PG_GETARG_TIMESTAMPTZ(2) > GetCurrentTransactionStartTimestamp())
		return submit_slow(fcinfo);
	priority = PG_GETARG_INT32(3);
	if (priority < PG_INT16_MIN || priority > PG_INT16_MAX)
		return submit_slow(fcinfo);
	if (!PG_ARGISNULL(6) && (PG_GETARG_INT32(6) < 1 || PG_GETARG_INT32(6) > 1000))
		return submit_slow(fcinfo);
	payload = PG_GETARG_JSONB_P(1);
	if (!JB_ROOT_IS_OBJECT(payload) || JB_ROOT_IS_SCALAR(payload) ||
		VARSIZE(payload) > (Size) tq_max_payload_size)
		return submit_slow(fcinfo);
	if (!PG_ARGISNULL(4))
	{
		tenant = PG_GETARG_TEXT_PP(4);
		if (!label_ok(tenant, 200))
			return submit_slow(fcinfo);
	}
	if (with_tp)
	{
		/* The argument ('' means none), else the setting, checked when set. */
		if (!PG_ARGISNULL(9))
		{
			text *tp = PG_GETARG_TEXT_PP(9);

			if (VARSIZE_ANY_EXHDR(tp) > 0)
			{
				if (tq_traceparent_problem(VARDATA_ANY(tp), VARSIZE_ANY_EXHDR(tp)) != NULL)
					return submit_slow(fcinfo); /* its error */
				traceparent = PointerGetDatum(tp);
			}
		}
		else if (tq_traceparent != NULL && tq_traceparent[0] != '\0')
			traceparent = CStringGetTextDatum(tq_traceparent);
	}
	queue = PG_GETARG_TEXT_PP(0);
	/* A role bound to tenants (access.c): the slow path refuses others. */
	if (tq_caller_is_bound() &&
		!tq_tenant_ok(text_to_cstring(queue), tenant ? text_to_cstring(tenant) : NULL))
		return submit_slow(fcinfo);

	SPI_connect();
	prepare_plans();
	qargs[0] = PointerGetDatum(queue);
	qargs[1] = tenant ? PointerGetDatum(tenant) : (Datum) 0;
	qnulls[1] = tenant ? ' ' : 'n';
	ret = SPI_execute_plan(queue_plan, qargs, qnulls, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "tq: queue look-up failed: %s", SPI_result_code_string(ret));
	if (SPI_processed != 1)
	{
		SPI_finish();
		return submit_slow(fcinfo); /* unknown queue: its error */
	}
	max_attempts =
		DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	paused = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (!PG_ARGISNULL(6))
		max_attempts = PG_GETARG_INT32(6);

	iargs[0] = PointerGetDatum(queue);
	iargs[1] = CStringGetTextDatum(paused ? "paused" : "ready");
	iargs[2] = Int16GetDatum((int16) priority);
	iargs[3] = tenant ? PointerGetDatum(tenant) : (Datum) 0;
	inulls[3] = tenant ? ' ' : 'n';
	iargs[4] = JsonbPGetDatum(payload);
	iargs[5] = Int32GetDatum(max_attempts);
	if (traceparent != (Datum) 0)
	{
		prepare_tp_plan();
		iargs[6] = traceparent;
		ret = SPI_execute_plan(insert_tp_plan, iargs, inulls, false, 1);
	}
	else
		ret = SPI_execute_plan(insert_plan, iargs, inulls, false, 1);
	if (ret != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "tq: task insert failed: %s", SPI_result_code_string(ret));
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();

	if (!paused)
		DirectFunctionCall1(tq_wake, PointerGetDatum(queue));
	PG_RETURN_INT64(id);
}

/* tq_submit of 0.3.0 to 0.5.0: nine arguments, no traceparent. */
Datum
tq_submit_fast(PG_FUNCTION_ARGS)
{
	if (PG_NARGS() != NARGS_0_3)
		elog(ERROR, "tq: tq_submit_fast called with %d arguments, not %d", PG_NARGS(), NARGS_0_3);
	return submit(fcinfo, false);
}

/* tq_submit from 0.6.0: traceparent is the tenth argument. */
Datum
tq_submit_fast_0_6(PG_FUNCTION_ARGS)
{
	if (PG_NARGS() != NARGS)
		elog(ERROR, "tq: tq_submit_fast_0_6 called with %d arguments, not %d", PG_NARGS(), NARGS);
	return submit(fcinfo, true);
}
