/*-------------------------------------------------------------------------
 *
 * fair_rebuild.c
 *	  Per-database fair-dispatch state, and its rebuild from tq.task.
 *
 * Rebuild.  Shared memory starts empty after a server start or crash
 * restart.  The first state change in a database (or the first read of
 * its counters) rebuilds that database's entries from tq.task in one
 * aggregate scan -- counts per state, V from the last claimed key, each
 * tenant's F from its highest key -- while other backends of the database
 * wait on a condition variable.  Nothing can change tq.task in between,
 * because every change passes through the trigger (fair_trigger.c) first.
 * Start tags are computed in C, not SQL: float8 arithmetic in SQL raises
 * on underflow, and one queue's odd priority_aging must not stop every
 * queue of the database.  Token buckets start full.  Entries that must
 * exist (queues, tenants with a policy row) are made first; tenants
 * without a policy then get entries while there is room, and beyond it are
 * counted in their queue's overflow entry (fair_entry.c, "Capacity").
 * CREATE and ALTER EXTENSION reset a database's entries (tq.reset_shared).
 *
 * Databases.  At most TQ_MAX_DBS databases have state at once; the slot of
 * a dropped database is reclaimed when one is needed.
 *
 * Locking.  fair_shared->lock, as fair_entry.c describes: the rebuild reads tq.task
 * with SPI, then takes the lock once to replace the database's entries.
 * The database's state (empty, building, ready) is an atomic, read without
 * the lock on the hot path; backends that find it building sleep on
 * fair_shared->cv.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/syscache.h"
#include "utils/wait_event.h"

#include "tq.h"
#include "fair.h"

PG_FUNCTION_INFO_V1(tq_reset_shared);

/*
 * Frees the slots (and entries) of databases that no longer exist.
 * Returns whether one was freed.  Reads the catalog, so it runs before
 * the lock is taken; a database dropped is never used again, so the check
 * cannot go stale.
 */
bool
fair_reclaim_dropped_dbs(void)
{
	Oid gone[TQ_MAX_DBS];
	int ngone = 0;
	HASH_SEQ_STATUS seq;
	FairEntry *e;

	for (int i = 0; i < TQ_MAX_DBS; i++)
	{
		Oid db = fair_shared->dbs[i].dboid;

		if (OidIsValid(db) && !SearchSysCacheExists1(DATABASEOID, ObjectIdGetDatum(db)))
			gone[ngone++] = db;
	}
	if (ngone == 0)
		return false;
	LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, fair_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		for (int j = 0; j < ngone; j++)
			if (e->key.dboid == gone[j])
			{
				if (e->held)
					fair_shared->nheld--;
				hash_search(fair_hash, &e->key, HASH_REMOVE, NULL);
				break;
			}
	for (int i = 0; i < TQ_MAX_DBS; i++)
		for (int j = 0; j < ngone; j++)
			if (fair_shared->dbs[i].dboid == gone[j])
			{
				pg_atomic_write_u32(&fair_shared->dbs[i].state, DB_EMPTY);
				fair_shared->dbs[i].dboid = InvalidOid;
			}
	LWLockRelease(fair_shared->lock);
	return true;
}

static FairDb *
rebuild_my_db(bool create)
{
	/*
	 * A backend serves one database for life, and a slot is reclaimed only
	 * once its database is gone, so the slot found is kept.
	 */
	static FairDb *mine = NULL;
	FairDb *freeslot = NULL;

	if (mine != NULL && mine->dboid == MyDatabaseId)
		return mine;

	for (int i = 0; i < TQ_MAX_DBS; i++)
	{
		if (fair_shared->dbs[i].dboid == MyDatabaseId)
			return mine = &fair_shared->dbs[i];
		if (fair_shared->dbs[i].dboid == InvalidOid && freeslot == NULL)
			freeslot = &fair_shared->dbs[i];
	}
	if (!create)
		return NULL;
	if (freeslot == NULL && fair_reclaim_dropped_dbs())
		return rebuild_my_db(true);
	if (freeslot == NULL)
		return NULL;
	LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < TQ_MAX_DBS; i++)
		if (fair_shared->dbs[i].dboid == MyDatabaseId)
		{
			LWLockRelease(fair_shared->lock);
			return &fair_shared->dbs[i];
		}
	if (freeslot->dboid != InvalidOid)
	{
		LWLockRelease(fair_shared->lock);
		return rebuild_my_db(true);
	}
	freeslot->dboid = MyDatabaseId;
	pg_atomic_write_u32(&freeslot->state, DB_EMPTY);
	LWLockRelease(fair_shared->lock);
	return mine = freeslot;
}

/* Removes every entry of this database.  Caller holds the lock. */
static void
rebuild_drop_db_entries(void)
{
	HASH_SEQ_STATUS seq;
	FairEntry *e;

	hash_seq_init(&seq, fair_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->key.dboid == MyDatabaseId)
		{
			if (e->held)
				fair_shared->nheld--;
			hash_search(fair_hash, &e->key, HASH_REMOVE, NULL);
		}
}

typedef struct RebuildRow
{
	FairKey key;
	bool configured; /* the tenant has a policy row */
	int state;
	int64 n;
	double maxkey;
	bool has_max;
	double minkey;
	bool has_min;
} RebuildRow;

/*
 * A queue's priority_aging as the shift arithmetic can use it.  The SQL
 * checks keep it within [TQ_AGING_MIN, TQ_AGING_MAX]; a value written to
 * tq.queue behind their back is clamped here, and said once per rebuild,
 * naming the queue, instead of failing every queue of the database.
 */
static double
rebuild_aging(const char *queue, double aging, char **warned)
{
	double sane = fair_clamp(aging, TQ_AGING_MIN, TQ_AGING_MAX, 1e6);

	if (sane != aging && (*warned == NULL || strcmp(*warned, queue) != 0))
	{
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tq: queue \"%s\" has priority_aging %g, out of range; %g is used", queue,
						aging, sane),
				 errhint("Set it with tq_alter_queue('%s', priority_aging => ...).", queue)));
		*warned = pstrdup(queue);
	}
	return sane;
}

/*
 * Counts a row of the rebuild into its queue's entry and its tenant's
 * (the overflow entry for a tenant without a policy, when the table is
 * full).  Caller holds the lock exclusively.  False when an entry that
 * must exist found no room: *refused says which.
 */
static bool
rebuild_count_row(const RebuildRow *r, TimestampTz now, FairKey *refused)
{
	FairEntry *qe, *te;

	fair_make_key(refused, r->key.queue, NULL, true);
	qe = fair_enter(refused, true, now);
	if (qe == NULL)
		return false;
	*refused = r->key;
	te = fair_enter(refused, r->configured, now);
	if (te == NULL && !r->configured)
	{
		fair_overflow_key(refused, &r->key);
		te = fair_enter(refused, true, now);
	}
	if (te == NULL)
		return false;
	if (te->key.kind != KIND_OVERFLOW && !te->policy_loaded)
		te->keep = r->configured;
	qe->count[r->state] += r->n;
	/* V: the highest key claimed (running), else the lowest ready. */
	if (r->state == ST_RUNNING && r->has_max)
		qe->vclock = Max(qe->vclock, r->maxkey);
	te->count[r->state] += r->n;
	if (r->has_max)
		te->vclock = Max(te->vclock, r->maxkey + 1.0);
	/* Parked tasks wait for their tenant's room; overflow tenants have no limits. */
	if (r->state == ST_PAUSED && !te->held && te->key.kind != KIND_OVERFLOW)
	{
		te->held = true;
		te->held_gen++;
		fair_shared->nheld++;
	}
	return true;
}

static void
rebuild_from_tasks(void)
{
	int ret;
	List *rows = NIL;
	ListCell *lc;
	TimestampTz now = GetCurrentTimestamp();
	bool full;
	int64 events;
	bool refused = false;
	FairKey refused_key;
	MemoryContext oldcxt = CurrentMemoryContext;
	MemoryContext spicxt;
	RebuildRow *r = NULL;
	char *warned = NULL;

	SPI_connect();
	spicxt = CurrentMemoryContext;
	/*
	 * Start tags are keys with the priority shift taken back out, computed
	 * here rather than in SQL: float8 arithmetic in SQL raises on underflow
	 * and overflow, and one queue's odd setting must not stop the rebuild
	 * of every queue.  Rows come per (queue, tenant, state, priority),
	 * sorted, and are merged per (queue, tenant, state).
	 */
	ret =
		SPI_execute("SELECT t.queue, t.tenant, pg_catalog.text(t.state), t.priority,"
					" pg_catalog.count(*), pg_catalog.max(t.vkey), pg_catalog.min(t.vkey),"
					" q.priority_aging::pg_catalog.float8,"
					" EXISTS (SELECT FROM tq.tenant p WHERE p.queue OPERATOR(pg_catalog.=) t.queue"
					"         AND p.tenant OPERATOR(pg_catalog.=) t.tenant)"
					" FROM tq.task t JOIN tq.queue q ON q.name OPERATOR(pg_catalog.=) t.queue"
					" GROUP BY 1, 2, 3, 4, 8 ORDER BY 1, 2, 3",
					true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "tq: rebuilding shared state failed: %s", SPI_result_code_string(ret));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple t = SPI_tuptable->vals[i];
		TupleDesc td = SPI_tuptable->tupdesc;
		char *queue = SPI_getvalue(t, td, 1);
		char *tenant = SPI_getvalue(t, td, 2);
		char *state = SPI_getvalue(t, td, 3);
		bool isnull;
		int priority = DatumGetInt16(SPI_getbinval(t, td, 4, &isnull));
		double aging, shift;
		FairKey k;
		int st = -1;
		Datum d;

		if (isnull)
			priority = 0;
		aging = rebuild_aging(queue, DatumGetFloat8(SPI_getbinval(t, td, 8, &isnull)), &warned);
		shift = (aging / 2.0) * (double) priority / (fabs((double) priority) + 1.0);
		fair_make_key(&k, queue, tenant, false);
		for (int s = 0; s < NSTATES; s++)
			if (strcmp(state, fair_state_names[s]) == 0)
				st = s;
		if (r == NULL || r->state != st || memcmp(&r->key, &k, sizeof(FairKey)) != 0)
		{
			r = MemoryContextAllocZero(oldcxt, sizeof(RebuildRow));
			r->key = k;
			r->state = st;
			r->configured = DatumGetBool(SPI_getbinval(t, td, 9, &isnull));
			MemoryContextSwitchTo(oldcxt);
			rows = lappend(rows, r);
			MemoryContextSwitchTo(spicxt);
		}
		r->n += DatumGetInt64(SPI_getbinval(t, td, 5, &isnull));
		d = SPI_getbinval(t, td, 6, &isnull);
		if (!isnull && isfinite(DatumGetFloat8(d) + shift))
		{
			r->maxkey =
				r->has_max ? Max(r->maxkey, DatumGetFloat8(d) + shift) : DatumGetFloat8(d) + shift;
			r->has_max = true;
		}
		d = SPI_getbinval(t, td, 7, &isnull);
		if (!isnull && isfinite(DatumGetFloat8(d) + shift))
		{
			r->minkey =
				r->has_min ? Min(r->minkey, DatumGetFloat8(d) + shift) : DatumGetFloat8(d) + shift;
			r->has_min = true;
		}
	}
	SPI_finish();

	LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
	rebuild_drop_db_entries();
	events = fair_shared->full_events;
	/*
	 * Entries that must exist first (queues, tenants with a policy), then
	 * the others while there is room, and their queue's overflow entry
	 * beyond it (fair_entry.c, "Capacity").
	 */
	for (int pass = 0; pass < 2 && !refused; pass++)
		foreach (lc, rows)
		{
			RebuildRow *r = lfirst(lc);

			if (r->state < 0 || r->configured != (pass == 0))
				continue;
			refused = !rebuild_count_row(r, now, &refused_key);
			if (refused)
				break;
		}
	/*
	 * V: the highest start tag running (set above), but at least the
	 * lowest ready one over all tenants of the queue -- a long job claimed
	 * early must not pull V back behind work that waits.
	 */
	foreach (lc, rows)
	{
		RebuildRow *r = lfirst(lc);
		double lowest = r->minkey;
		FairKey qk;
		FairEntry *qe;
		ListCell *lc2;

		if (r->state != ST_READY || !r->has_min)
			continue;
		foreach (lc2, rows)
		{
			RebuildRow *o = lfirst(lc2);

			if (o->state == ST_READY && o->has_min && strcmp(o->key.queue, r->key.queue) == 0)
				lowest = Min(lowest, o->minkey);
		}
		fair_make_key(&qk, r->key.queue, NULL, true);
		qe = hash_search(fair_hash, &qk, HASH_FIND, NULL);
		if (qe != NULL)
			qe->vclock = Max(qe->vclock, lowest);
	}
	full = fair_shared->full_events != events;
	LWLockRelease(fair_shared->lock);
	if (full)
		fair_log_full();
	if (refused)
		fair_refuse_no_room(&refused_key);
}

/*
 * Makes sure this database's entries reflect tq.task.  The fast path is
 * one atomic read.
 */
void
fair_ensure_ready(void)
{
	FairDb *db;

	if (fair_shared == NULL)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("tq's shared memory is not initialised"),
						errhint("Load tq through shared_preload_libraries.")));
	db = rebuild_my_db(true);
	if (db == NULL)
		ereport(ERROR, (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						errmsg("tq serves at most %d databases per server", TQ_MAX_DBS)));
	if (pg_atomic_read_u32(&db->state) == DB_READY)
		return;

	for (;;)
	{
		bool mine = false;

		LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
		if (pg_atomic_read_u32(&db->state) == DB_READY)
		{
			LWLockRelease(fair_shared->lock);
			break;
		}
		if (pg_atomic_read_u32(&db->state) == DB_EMPTY)
		{
			pg_atomic_write_u32(&db->state, DB_BUILDING);
			mine = true;
		}
		LWLockRelease(fair_shared->lock);

		if (mine)
		{
			PG_TRY();
			{
				rebuild_from_tasks();
			}
			PG_CATCH();
			{
				pg_atomic_write_u32(&db->state, DB_EMPTY);
				ConditionVariableBroadcast(&fair_shared->cv);
				PG_RE_THROW();
			}
			PG_END_TRY();
			pg_atomic_write_u32(&db->state, DB_READY);
			ConditionVariableBroadcast(&fair_shared->cv);
			break;
		}
		ConditionVariablePrepareToSleep(&fair_shared->cv);
		while (pg_atomic_read_u32(&db->state) == DB_BUILDING)
			ConditionVariableTimedSleep(&fair_shared->cv, 100, PG_WAIT_EXTENSION);
		ConditionVariableCancelSleep();
	}
}

/* tq.reset_shared() returns void: this database's entries are rebuilt on next use. */
Datum
tq_reset_shared(PG_FUNCTION_ARGS)
{
	FairDb *db;

	if (fair_shared == NULL)
		PG_RETURN_VOID();
	db = rebuild_my_db(true);
	if (db == NULL)
		PG_RETURN_VOID();
	LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
	rebuild_drop_db_entries();
	if (pg_atomic_read_u32(&db->state) == DB_READY)
		pg_atomic_write_u32(&db->state, DB_EMPTY);
	LWLockRelease(fair_shared->lock);
	fair_forget_columns();
	PG_RETURN_VOID();
}
