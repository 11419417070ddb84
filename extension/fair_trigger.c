/*-------------------------------------------------------------------------
 *
 * fair_trigger.c
 *	  tq.task_row: the BEFORE ROW trigger every change of a task's state
 *	  goes through.
 *
 * Every policy is applied where a task changes state, by one BEFORE ROW
 * trigger on tq.task (tq.task_row, below), so that every path -- submit,
 * lease, promotion, release, reclaim, pause, retry -- goes through it and
 * no SQL function can forget a rule.  It runs before the table's NOT NULL
 * checks, so it checks the columns it reads itself.
 *
 * Fair order (start-time fair queuing).  When a task becomes ready its
 * start tag is S = max(V, F) and F becomes S + 1/weight; its dispatch key
 * is S minus a bounded priority shift,
 *
 *		key = S - (priority_aging / 2) * p / (|p| + 1)
 *
 * so a higher priority always sorts earlier among tasks with the same
 * start tag, and no shift exceeds priority_aging / 2 either way: a task is
 * never overtaken by work whose start tag is more than priority_aging
 * later.  tq_lease claims in key order from one B-tree
 * (queue, vkey, id) WHERE state = 'ready' with SKIP LOCKED; each claim
 * advances V to the claimed key.  A flooding tenant spreads its own tasks
 * into the future; a quiet tenant's next task is placed at V.  The unit
 * of the keys is a round: one task of each backlogged tenant of weight 1.
 *
 * Limits at claim time.  A claim (ready -> running) passes the gate:
 * queue and tenant concurrency (running < quota) and token buckets (one
 * token each).  A claim the queue's limits refuse is skipped (the row
 * stays ready; tq_lease asks tq.lease_room first, so it does not even
 * scan when the queue has no room).  A claim a tenant's limits refuse
 * parks the task: it becomes paused with its key kept, out of the
 * dispatch index, so that no lease scans over a throttled tenant's
 * backlog; the tenant is marked held, and the background worker (or
 * tq_lease where no worker serves the database) moves parked tasks back to
 * ready, in key order, as the tenant's quota frees and its bucket refills
 * (fair_parked.c).
 *
 * Locking.  fair_shared->lock, as fair_entry.c describes: the row's queue and
 * tenant entries are found (and their policies read, before the lock)
 * by fair_lock_entries, which returns with the lock held; the trigger
 * releases it before it allocates or raises.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/pg_enum.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "tq.h"
#include "fair.h"

PG_FUNCTION_INFO_V1(tq_task_row);

typedef struct TaskCols
{
	Oid relid;
	int natts; /* a column added by an update (trace) is noticed */
	int att_state, att_queue, att_tenant, att_priority, att_vkey;
	/* for the trace; att_trace <= 0 before the 0.5.0 update added it */
	int att_trace, att_attempt, att_worker, att_run_at, att_submitted_at, att_started_at,
		att_last_error, att_throttles;
	Oid state_oid[NSTATES];
} TaskCols;

static TaskCols trig_cols;

/* The columns the trigger reads, by name: those it needs, then the trace's. */
typedef struct ColName
{
	const char *name;
	size_t offset; /* of the attribute number in TaskCols */
} ColName;
#define COL(f)                                                                                     \
	{                                                                                              \
#f, offsetof(TaskCols, att_##f)                                                            \
	}
static const ColName trig_needed[] = {COL(state), COL(queue), COL(tenant), COL(priority),
									  COL(vkey)};
static const ColName trig_traced[] = {COL(trace),      COL(attempt),      COL(worker),
									  COL(run_at),     COL(submitted_at), COL(started_at),
									  COL(last_error), COL(throttles)};

/* Finds the columns; whether every one was found. */
static bool
trig_find_columns(TupleDesc td, const ColName *cols, int n)
{
	bool all = true;

	for (int i = 0; i < n; i++)
	{
		int *att = (int *) ((char *) &trig_cols + cols[i].offset);

		*att = SPI_fnumber(td, cols[i].name);
		all = all && *att > 0;
	}
	return all;
}

static char *trig_row_text(HeapTuple tup, TupleDesc td, int att);
static void trig_check_row(Relation rel, HeapTuple oldt, HeapTuple newt, TupleDesc desc,
						   const char *queue, const char *tenant);

static void
trig_init_cols(Relation rel)
{
	TupleDesc td = RelationGetDescr(rel);
	Oid enumtype;

	if (trig_cols.relid == RelationGetRelid(rel) && trig_cols.natts == td->natts)
		return;
	if (!trig_find_columns(td, trig_needed, lengthof(trig_needed)))
		elog(ERROR, "tq.task_row: table \"%s\" lacks a column of tq.task",
			 RelationGetRelationName(rel));
	if (!trig_find_columns(td, trig_traced, lengthof(trig_traced)))
		trig_cols.att_trace = 0; /* not the shape the trace needs: no trace */
	enumtype = TupleDescAttr(td, trig_cols.att_state - 1)->atttypid;
	for (int s = 0; s < NSTATES; s++)
	{
		trig_cols.state_oid[s] =
			GetSysCacheOid2(ENUMTYPOIDNAME, Anum_pg_enum_oid, ObjectIdGetDatum(enumtype),
							CStringGetDatum(fair_state_names[s]));
		if (!OidIsValid(trig_cols.state_oid[s]))
			elog(ERROR, "tq.task_row: state type lacks label \"%s\"", fair_state_names[s]);
	}
	trig_cols.relid = RelationGetRelid(rel);
	trig_cols.natts = td->natts;
}

/*
 * The trace of a task leaving running for ready (handed back) or
 * scheduled (to be tried again: throttled if it used a free attempt): the
 * attempt that ended, from the old row (trace.c).
 */
static Datum
trig_trace_leave(HeapTuple oldt, HeapTuple newt, TupleDesc desc, bool to_ready, bool *isnull)
{
	bool tnull, n;
	Datum trace = heap_getattr(newt, trig_cols.att_trace, desc, &tnull);
	int32 attempt = DatumGetInt32(heap_getattr(oldt, trig_cols.att_attempt, desc, &n));
	TimestampTz run_at = DatumGetTimestampTz(heap_getattr(oldt, trig_cols.att_run_at, desc, &n));
	TimestampTz submitted =
		DatumGetTimestampTz(heap_getattr(oldt, trig_cols.att_submitted_at, desc, &n));
	Datum started = heap_getattr(oldt, trig_cols.att_started_at, desc, &n);
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	const char *outcome;

	if (to_ready)
		outcome = "released";
	else if (DatumGetInt32(heap_getattr(newt, trig_cols.att_throttles, desc, &n)) >
			 DatumGetInt32(heap_getattr(oldt, trig_cols.att_throttles, desc, &n)))
		outcome = "throttled";
	else
		outcome = "failed";
	*isnull = false;
	return tq_trace_append(trace, tnull, attempt, Max(run_at, submitted),
						   n ? now : DatumGetTimestampTz(started),
						   trig_row_text(oldt, desc, trig_cols.att_worker), now, outcome,
						   to_ready ? NULL : trig_row_text(newt, desc, trig_cols.att_last_error));
}

static int
trig_row_state(HeapTuple tup, TupleDesc td)
{
	bool isnull;
	Oid v = DatumGetObjectId(heap_getattr(tup, trig_cols.att_state, td, &isnull));

	if (isnull)
		return -1;
	for (int s = 0; s < NSTATES; s++)
		if (trig_cols.state_oid[s] == v)
			return s;
	return -1;
}

static char *
trig_row_text(HeapTuple tup, TupleDesc td, int att)
{
	bool isnull;
	Datum d = heap_getattr(tup, att, td, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/*
 * The trigger runs before the table's NOT NULL checks, and counts a row
 * under its queue and tenant: a row without a queue, or an update that
 * moves a task to another queue or tenant while changing its state, would
 * corrupt the counters of both (only the table's owner can write tq.task,
 * but nothing it writes may crash the server or skew the limits).
 */
static void
trig_check_row(Relation rel, HeapTuple oldt, HeapTuple newt, TupleDesc desc, const char *queue,
			   const char *tenant)
{
	char *old_queue, *old_tenant;

	if (queue == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("null value in column \"queue\" of relation \"%s\" violates not-null "
						"constraint",
						RelationGetRelationName(rel)),
				 errdetail("Every task belongs to a queue."),
				 errhint("Submit tasks with tq_submit.")));
	if (oldt == NULL || newt == NULL)
		return;
	old_queue = trig_row_text(oldt, desc, trig_cols.att_queue);
	old_tenant = trig_row_text(oldt, desc, trig_cols.att_tenant);
	if (old_queue == NULL || strcmp(old_queue, queue) != 0 ||
		(old_tenant == NULL) != (tenant == NULL) ||
		(tenant != NULL && strcmp(old_tenant, tenant) != 0))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a task cannot move to another queue or tenant"),
				 errdetail("Task counts, limits and fair shares are kept per queue and tenant."),
				 errhint("Cancel the task and submit it again to the other queue or tenant.")));
}

/*
 * Back-pressure: refuse a new queued task past the queue's or the
 * tenant's backlog_limit.  Called with the lock held; releases it before
 * raising.
 */
static void
trig_check_backlog(FairEntry *qe, FairEntry *te, const char *queue, const char *tenant,
				   TimestampTz now)
{
	FairEntry *over = NULL;
	int64 have = 0, limit = 0;
	double rate = 0;
	double secs;

	for (int i = 0; i < 2 && over == NULL; i++)
	{
		FairEntry *e = i == 0 ? qe : te;
		int64 backlog;

		if (e == NULL || e->backlog_limit < 0)
			continue;
		backlog = e->count[ST_SCHEDULED] + e->count[ST_READY] + e->count[ST_PAUSED];
		if (backlog + 1 > e->backlog_limit)
		{
			over = e;
			have = backlog;
			limit = e->backlog_limit;
			rate = fair_drain_rate(e, now);
		}
	}
	if (over == NULL)
		return;
	LWLockRelease(fair_shared->lock);
	secs = rate > 0 ? ceil((double) (have + 1 - limit) / rate) : 0;
	if (over == qe)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("queue \"%s\" is full", queue),
				 errdetail("The queue holds %lld queued tasks and its backlog_limit is %lld%s%s%s.",
						   (long long) have, (long long) limit,
						   tenant ? "; the task was for tenant \"" : "", tenant ? tenant : "",
						   tenant ? "\"" : ""),
				 rate > 0 ? errhint("Retry in about %.0f s (the queue drains about %.1f tasks/s), "
									"or raise backlog_limit with tq_alter_queue.",
									Max(secs, 1), rate)
						  : errhint("Retry when workers have drained the queue (none is "
									"draining it now), or raise backlog_limit with "
									"tq_alter_queue.")));
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("tenant \"%s\" of queue \"%s\" is full", tenant ? tenant : "(null)", queue),
			 errdetail("The tenant holds %lld queued tasks and its backlog_limit is %lld; other "
					   "tenants of the queue are not affected.",
					   (long long) have, (long long) limit),
			 rate > 0 ? errhint("Retry in about %.0f s (the tenant drains about %.1f tasks/s), "
								"or raise its backlog_limit with tq_set_tenant.",
								Max(secs, 1), rate)
					  : errhint("Retry when workers have drained the tenant's tasks (none is "
								"draining them now), or raise its backlog_limit with "
								"tq_set_tenant.")));
}

/* The fair dispatch key of a task becoming ready.  Caller holds the lock. */
static double
trig_dispatch_key(FairEntry *qe, FairEntry *te, int priority)
{
	double v = qe ? qe->vclock : 0;
	/*
	 * A tenant with no ready task starts at V: its finish time may lie
	 * ahead for tasks that were rolled back, cancelled or paused without
	 * being served, and must not count against it.
	 */
	double s = te && te->count[ST_READY] > 0 ? Max(v, te->vclock) : v;
	double aging = qe ? qe->aging : 1e6;

	if (te)
		te->vclock = s + 1.0 / te->weight;
	return s - (aging / 2.0) * (double) priority / (fabs((double) priority) + 1.0);
}

static void
trig_account(const FairEntry *e, int s, int delta)
{
	LocalAcct *a;

	if (e == NULL || s < 0)
		return;
	a = fair_local_slot(&e->key);
	if (delta > 0)
		a->applied[s] += delta;
	else
		a->deferred[s] -= delta;
}

/*
 * tq.task_row() returns trigger
 *
 * BEFORE INSERT, DELETE, and UPDATE OF state (when it changes) on
 * tq.task: counts, dispatch key, claim gate, back-pressure.  See the
 * file header.
 */
Datum
tq_task_row(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc desc;
	HeapTuple oldt = NULL, newt = NULL;
	int olds = -1, news = -1;
	char *queue;
	char *tenant;
	FairEntry *qe, *te;
	TimestampTz now;
	bool isnull;
	Datum vkey_d = (Datum) 0;
	bool vkey_null = true;
	int priority = 0;
	enum
	{
		KEEP,
		SET_KEY,
		CLEAR_KEY,
		PARK,
		SKIP
	} action = KEEP;
	double key = 0;
	double old_key = NAN; /* of a task leaving ready */

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event))
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						errmsg("tq.task_row() must be called as a BEFORE ROW trigger")));
	trig_init_cols(td->tg_relation);
	desc = RelationGetDescr(td->tg_relation);
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
		newt = td->tg_trigtuple;
	else if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
		oldt = td->tg_trigtuple;
	else
	{
		oldt = td->tg_trigtuple;
		newt = td->tg_newtuple;
	}
	if (oldt)
		olds = trig_row_state(oldt, desc);
	if (newt)
		news = trig_row_state(newt, desc);
	/* New scheduled rows (rows becoming scheduled: trigger task_scheduled). */
	if (!oldt && news == ST_SCHEDULED)
		tq_note_scheduled();
	if (olds == news)
		return PointerGetDatum(newt ? newt : oldt);

	queue = trig_row_text(newt ? newt : oldt, desc, trig_cols.att_queue);
	tenant = trig_row_text(newt ? newt : oldt, desc, trig_cols.att_tenant);
	trig_check_row(td->tg_relation, oldt, newt, desc, queue, tenant);
	fair_ensure_ready();
	if (newt)
	{
		vkey_d = heap_getattr(newt, trig_cols.att_vkey, desc, &vkey_null);
		priority = DatumGetInt16(heap_getattr(newt, trig_cols.att_priority, desc, &isnull));
		if (isnull)
			priority = 0;
	}
	now = GetCurrentTimestamp();
	fair_lock_entries(queue, tenant, true, &qe, &te, now);

	if (olds == ST_READY)
	{
		Datum d = heap_getattr(oldt, trig_cols.att_vkey, desc, &isnull);

		if (!isnull)
			old_key = DatumGetFloat8(d);
	}
	if (olds == ST_READY && news == ST_RUNNING)
	{
		/* The claim gate. */
		if ((qe && fair_room_now(qe, now) < 1))
			action = SKIP;
		else if (te && fair_room_now(te, now) < 1)
			action = PARK;
		else
		{
			if (qe)
			{
				fair_take_token(qe, now);
				fair_count_lease(qe, now);
			}
			if (te)
			{
				fair_take_token(te, now);
				fair_count_lease(te, now);
			}
			vkey_d = heap_getattr(oldt, trig_cols.att_vkey, desc, &isnull);
			if (qe && !isnull)
				qe->vclock = Max(qe->vclock, DatumGetFloat8(vkey_d));
			if (te && te->unparked > 0)
				te->unparked--;
		}
	}
	else if (olds == ST_PAUSED && news == ST_READY && !vkey_null && te)
		te->unparked++; /* a parked task moved back */
	else if (news == ST_READY && vkey_null)
	{
		action = SET_KEY;
		key = trig_dispatch_key(qe, te, priority);
	}
	else if ((news == ST_SCHEDULED || news == ST_PAUSED) && !vkey_null)
		action = CLEAR_KEY;

	if (!oldt && news >= 0 && news != ST_RUNNING)
		trig_check_backlog(qe, te, queue, tenant, now); /* releases the lock if it raises */

	if (action == SKIP)
	{
		LWLockRelease(fair_shared->lock);
		return PointerGetDatum(NULL);
	}
	if (action == PARK)
	{
		news = ST_PAUSED;
		/* counted below; shared counts first, local accounting after */
	}
	for (int pass = 0; pass < 2; pass++)
	{
		FairEntry *e = pass == 0 ? qe : te;

		if (e == NULL)
			continue;
		if (news >= 0)
			e->count[news]++;
	}
	LWLockRelease(fair_shared->lock);

	/* Local accounting (allocates; outside the lock). */
	if (olds == ST_RUNNING && news == ST_SCHEDULED)
		tq_fair_note_activity(queue, TQ_ACT_FAILED, 1);
	trig_account(qe, news, 1);
	trig_account(te, news, 1);
	trig_account(qe, olds, -1);
	trig_account(te, olds, -1);
	if (qe && news == ST_READY)
	{
		/* The scan floor drops to this key at commit. */
		double k = action == SET_KEY ? key : vkey_null ? NAN : DatumGetFloat8(vkey_d);

		if (!isnan(k))
		{
			LocalAcct *a = fair_local_slot(&qe->key);

			a->lower = Min(a->lower, k);
		}
	}
	else if (qe && !isnan(old_key))
	{
		/* ... and to this one if the transaction aborts. */
		LocalAcct *a = fair_local_slot(&qe->key);

		a->taken_min = Min(a->taken_min, old_key);
	}

	if (action == PARK)
	{
		Datum v = ObjectIdGetDatum(trig_cols.state_oid[ST_PAUSED]);
		bool n = false;
		int c = trig_cols.att_state;

		if (te)
			fair_local_slot(&te->key)->set_held = true;
		fair_parked_in_xact++;
		return PointerGetDatum(heap_modify_tuple_by_cols(oldt, desc, 1, &c, &v, &n));
	}
	{
		/* Columns to change in the new row: the dispatch key, the trace. */
		int c[2];
		Datum v[2];
		bool n[2];
		int nc = 0;

		if (action == SET_KEY || action == CLEAR_KEY)
		{
			c[nc] = trig_cols.att_vkey;
			v[nc] = Float8GetDatum(key);
			n[nc++] = action == CLEAR_KEY;
		}
		if (trig_cols.att_trace > 0 && oldt && newt)
		{
			if (olds == ST_RUNNING && (news == ST_READY || news == ST_SCHEDULED))
			{
				c[nc] = trig_cols.att_trace;
				v[nc] = trig_trace_leave(oldt, newt, desc, news == ST_READY, &n[nc]);
				nc++;
			}
		}
		if (nc > 0)
			return PointerGetDatum(heap_modify_tuple_by_cols(newt, desc, nc, c, v, n));
	}
	return PointerGetDatum(newt ? newt : oldt);
}

/* tq.reset_shared: the table may have changed shape (an update). */
void
fair_forget_columns(void)
{
	trig_cols.relid = InvalidOid;
}
