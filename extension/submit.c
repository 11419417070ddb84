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

extern Datum tq_wake(PG_FUNCTION_ARGS);

#define NARGS 9

static SPIPlanPtr queue_plan = NULL;
static SPIPlanPtr insert_plan = NULL;

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
	 * OID would outlive DROP and CREATE EXTENSION in this session.
	 */
	slow_oid = DatumGetObjectId(DirectFunctionCall1(
		to_regprocedure,
		CStringGetTextDatum("tq.submit_slow(pg_catalog.text, pg_catalog.jsonb, "
							"pg_catalog.timestamptz, pg_catalog.int4, pg_catalog.text, "
							"pg_catalog.text, pg_catalog.int4, pg_catalog.interval, "
							"pg_catalog.timestamptz)")));
	if (!OidIsValid(slow_oid))
		elog(ERROR, "tq: function tq.submit_slow is missing; reinstall the extension");
	fmgr_info(slow_oid, &flinfo);
	InitFunctionCallInfoData(*slow, &flinfo, NARGS, PG_GET_COLLATION(), NULL, NULL);
	for (int i = 0; i < NARGS; i++)
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

	if (len == 0 || len > max_len)
		return false;
	for (int i = 0; i < len; i++)
		if (p[i] < 0x20 || p[i] == 0x7f)
			return false;
	return true;
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

/*
 * tq_submit(queue text, payload jsonb DEFAULT '{}', run_at timestamptz,
 *           priority integer DEFAULT 0, tenant text, dedup_key text,
 *           max_attempts integer, timeout interval, expires_at timestamptz)
 *   returns bigint
 */
Datum
tq_submit_fast(PG_FUNCTION_ARGS)
{
	text *queue;
	Jsonb *payload;
	int32 priority;
	text *tenant = NULL;
	Datum qargs[2];
	char qnulls[2] = {' ', ' '};
	Datum iargs[6];
	char inulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	bool isnull;
	int32 max_attempts;
	bool paused;
	int64 id;
	int ret;

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
	queue = PG_GETARG_TEXT_PP(0);

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
	ret = SPI_execute_plan(insert_plan, iargs, inulls, false, 1);
	if (ret != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "tq: task insert failed: %s", SPI_result_code_string(ret));
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();

	if (!paused)
		DirectFunctionCall1(tq_wake, PointerGetDatum(queue));
	PG_RETURN_INT64(id);
}
