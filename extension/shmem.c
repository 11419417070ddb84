/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  tq's shared-memory state and the commit hook that feeds it.
 *
 * What lives here.  One TqShared struct, allocated at postmaster start
 * (shmem_request_hook + shmem_startup_hook, chained to the previous
 * hooks).  It carries what backends tell the background worker (bgworker.c)
 * without a table row or a lock on a queue:
 *
 *   - which queues got ready work in transactions that have committed
 *     since the worker last looked (ready[]), so that the worker, not each
 *     producer, sends NOTIFY tq_ready: at most one per queue per pass,
 *     and no producer takes the database-wide notify lock at its commit;
 *   - that a committed transaction changed tq.task (schedule_changed), so
 *     that the worker re-reads when the next scheduled task, lease expiry
 *     or deadline is due instead of sleeping through it;
 *   - the worker's identity (pid, latch, database) and when it last
 *     finished a pass, for tq_worker_status and for deciding whether a
 *     backend can hand its wake-ups to the worker at all.
 *
 * Locking protocol.  TqShared->lock (an LWLock of our own tranche)
 * protects every field.  Holders do nothing but copy a few bytes: no
 * allocation, no ereport, no other lock is taken while it is held.
 * Backends take it exclusively in the commit callback (after their
 * transaction is durable; the callback must not fail, and cannot) and
 * shared to read the worker's identity in tq.wake.  The worker takes it
 * exclusively to swap out the ready set and to publish its state.  The
 * worker's latch is set after the lock is released.
 *
 * Backend-local state.  Between tq.wake / the tq.task statement trigger
 * and the end of the transaction, a backend collects queue names in
 * pending_ready (TopMemoryContext, fixed size) and a pending_schedule
 * flag.  XACT_EVENT_COMMIT publishes them; abort discards them.  A
 * subtransaction rolled back after a tq.wake leaves its queue flagged: the
 * worker then sends one NOTIFY that finds nothing, which is harmless.
 *
 * Overflow.  A transaction that readies more distinct queues than
 * TQ_READY_SLOTS, or commits while the shared set is full, sets
 * ready_all: the worker then notifies every queue.  Nothing is lost; a
 * few wake-ups are spurious.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "funcapi.h"
#include "access/htup_details.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "tq.h"

PG_FUNCTION_INFO_V1(tq_wake);
PG_FUNCTION_INFO_V1(tq_task_changed);
PG_FUNCTION_INFO_V1(tq_worker_status);
PG_FUNCTION_INFO_V1(tq_shared_usage);

TqShared *tq_shared = NULL;
bool tq_is_background_worker = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Backend-local: what this transaction will publish at commit. */
static char pending_ready[TQ_READY_SLOTS][NAMEDATALEN];
static int pending_nready = 0;
static bool pending_ready_all = false;
static bool pending_schedule = false;
static bool xact_callback_registered = false;

static void tq_shmem_request(void);
static void tq_shmem_startup(void);
static void tq_xact_callback(XactEvent event, void *arg);

/*
 * tq_shmem_init
 *		Install the shared-memory hooks; called from _PG_init while
 *		shared_preload_libraries are loaded.
 */
void
tq_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = tq_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = tq_shmem_startup;
}

static void
tq_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(TqShared)));
	RequestNamedLWLockTranche("tq", 1);
	RequestAddinShmemSpace(tq_rate_shmem_size());
	RequestNamedLWLockTranche("tq rate", 1);
	RequestAddinShmemSpace(tq_fair_shmem_size());
	RequestNamedLWLockTranche("tq fair", 1);
	RequestAddinShmemSpace(tq_wait_shmem_size());
}

static void
tq_shmem_startup(void)
{
	bool found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	tq_shared = ShmemInitStruct("tq", sizeof(TqShared), &found);
	if (!found)
	{
		memset(tq_shared, 0, sizeof(TqShared));
		tq_shared->lock = &(GetNamedLWLockTranche("tq"))->lock;
		tq_shared->worker_dboid = InvalidOid;
	}
	tq_rate_shmem_init();
	tq_fair_shmem_init();
	tq_wait_shmem_init();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * worker_serves_us
 *		True when a background worker runs in this backend's database, so
 *		that wake-ups can be handed to it instead of sent from this
 *		transaction.
 */
static bool
worker_serves_us(void)
{
	bool serves;

	if (tq_shared == NULL)
		return false;
	LWLockAcquire(tq_shared->lock, LW_SHARED);
	serves = tq_shared->worker_latch != NULL && tq_shared->worker_dboid == MyDatabaseId;
	LWLockRelease(tq_shared->lock);
	return serves;
}

static void
ensure_xact_callback(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(tq_xact_callback, NULL);
		xact_callback_registered = true;
	}
}

/*
 * tq.wake(queue text) returns void
 *
 * Tells idle workers that a queue has ready work, once the calling
 * transaction commits.  When tq's background worker serves this database
 * the queue is handed to it at commit and the worker sends NOTIFY
 * tq_ready; otherwise (no worker, or one serving another database) this
 * transaction sends it, which PostgreSQL folds to one per queue.  Every
 * producer-side wake-up goes through this function.
 */
Datum
tq_wake(PG_FUNCTION_ARGS)
{
	const char *queue;

	if (!tq_producer_notify || PG_ARGISNULL(0))
		PG_RETURN_VOID();
	queue = text_to_cstring(PG_GETARG_TEXT_PP(0));

	if (!worker_serves_us())
	{
		Async_Notify("tq_ready", queue);
		PG_RETURN_VOID();
	}

	ensure_xact_callback();
	if (pending_ready_all)
		PG_RETURN_VOID();
	for (int i = 0; i < pending_nready; i++)
		if (strcmp(pending_ready[i], queue) == 0)
			PG_RETURN_VOID();
	if (pending_nready == TQ_READY_SLOTS)
		pending_ready_all = true;
	else
		strlcpy(pending_ready[pending_nready++], queue, NAMEDATALEN);
	PG_RETURN_VOID();
}

/*
 * tq_note_scheduled
 *		A row of this transaction became scheduled: at commit, the worker
 *		re-reads when its next event is due.  Called by the triggers.
 */
void
tq_note_scheduled(void)
{
	if (!pending_schedule && !tq_is_background_worker)
	{
		ensure_xact_callback();
		pending_schedule = true;
	}
}

/*
 * tq_wake_worker_for_housekeeping
 *		Something this backend committed needs a housekeeping pass soon (a
 *		tenant with parked tasks has room again): flag it and wake the
 *		worker, if one serves this database.  Called after commit; must
 *		not fail.
 */
void
tq_wake_worker_for_housekeeping(void)
{
	Latch *latch = NULL;

	if (tq_shared == NULL)
		return;
	LWLockAcquire(tq_shared->lock, LW_EXCLUSIVE);
	if (tq_shared->worker_latch != NULL && tq_shared->worker_dboid == MyDatabaseId)
	{
		tq_shared->schedule_changed = true;
		latch = tq_shared->worker_latch;
	}
	LWLockRelease(tq_shared->lock);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * tq.task_changed() returns trigger
 *
 * BEFORE ROW trigger on tq.task, for rows that become scheduled (WHEN
 * clause): such a row may be due before the worker plans to wake, so the
 * worker re-reads its next due time after this transaction commits.  Only
 * a backend-local flag is set here (no lock per row: a bulk submit of
 * delayed tasks fires this per row); the commit callback publishes it.
 * Rows scheduled by the worker itself are already in its next due time.
 */
Datum
tq_task_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						errmsg("tq.task_changed() must be called as a BEFORE ROW trigger")));
	tq_note_scheduled();
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		return PointerGetDatum(trigdata->tg_newtuple);
	return PointerGetDatum(trigdata->tg_trigtuple);
}

/* Is the queue in the shared ready set?  Caller holds the lock. */
static bool
shared_has_ready(const char *queue)
{
	for (int j = 0; j < tq_shared->nready; j++)
		if (strcmp(tq_shared->ready[j], queue) == 0)
			return true;
	return false;
}

/*
 * Would publishing this transaction's wake-ups change nothing?  Caller
 * holds the lock (shared is enough).
 */
static bool
already_published(void)
{
	if (pending_schedule && !tq_shared->schedule_changed)
		return false;
	if (tq_shared->ready_all)
		return true;
	if (pending_ready_all)
		return false;
	for (int i = 0; i < pending_nready; i++)
		if (!shared_has_ready(pending_ready[i]))
			return false;
	return true;
}

static void
reset_pending(void)
{
	pending_nready = 0;
	pending_ready_all = false;
	pending_schedule = false;
}

/*
 * tq_xact_callback
 *		At commit, publish this transaction's wake-ups and wake the worker;
 *		at abort, forget them.  Runs after the commit is durable and must
 *		not throw: it only copies bytes under the lock and sets a latch.
 */
static void
tq_xact_callback(XactEvent event, void *arg)
{
	Latch *latch = NULL;

	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (tq_shared == NULL ||
				(pending_nready == 0 && !pending_ready_all && !pending_schedule))
				break;
			/*
			 * Fast path, under the shared lock: everything this transaction
			 * would publish is flagged already, and the worker has been
			 * woken for it.  Under load most commits end here, so the
			 * worker is signalled once per pass, not once per commit.
			 */
			LWLockAcquire(tq_shared->lock, LW_SHARED);
			if (already_published())
			{
				LWLockRelease(tq_shared->lock);
				break;
			}
			LWLockRelease(tq_shared->lock);

			LWLockAcquire(tq_shared->lock, LW_EXCLUSIVE);
			if (pending_ready_all)
				tq_shared->ready_all = true;
			for (int i = 0; i < pending_nready && !tq_shared->ready_all; i++)
			{
				if (shared_has_ready(pending_ready[i]))
					continue;
				if (tq_shared->nready == TQ_READY_SLOTS)
					tq_shared->ready_all = true;
				else
					strlcpy(tq_shared->ready[tq_shared->nready++], pending_ready[i], NAMEDATALEN);
			}
			if (pending_schedule)
				tq_shared->schedule_changed = true;
			latch = tq_shared->worker_latch;
			LWLockRelease(tq_shared->lock);
			if (latch != NULL)
				SetLatch(latch);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			break;
		case XACT_EVENT_PREPARE:
			/*
			 * COMMIT PREPARED may run in another session, long after: the
			 * wake-ups are dropped, and workers find the tasks by polling.
			 */
			break;
		default:
			return; /* prepare and pre-commit events: keep collecting */
	}
	reset_pending();
}

/*
 * tq_worker_status() returns record
 *
 * The background worker as shared memory knows it: (running, pid,
 * database oid, started, last housekeeping pass, next planned pass,
 * passes, tq_ready notifications sent, queues waiting to be notified).
 */
Datum
tq_worker_status(PG_FUNCTION_ARGS)
{
	TupleDesc tupdesc;
	Datum values[9];
	bool nulls[9] = {0};
	TqShared copy;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "tq_worker_status: return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);

	LWLockAcquire(tq_shared->lock, LW_SHARED);
	memcpy(&copy, tq_shared, offsetof(TqShared, ready));
	LWLockRelease(tq_shared->lock);

	values[0] = BoolGetDatum(copy.worker_latch != NULL);
	values[1] = Int32GetDatum(copy.worker_pid);
	nulls[1] = copy.worker_latch == NULL;
	values[2] = ObjectIdGetDatum(copy.worker_dboid);
	nulls[2] = copy.worker_latch == NULL;
	values[3] = TimestampTzGetDatum(copy.worker_started);
	nulls[3] = copy.worker_started == 0;
	values[4] = TimestampTzGetDatum(copy.worker_last_pass);
	nulls[4] = copy.worker_last_pass == 0;
	values[5] = TimestampTzGetDatum(copy.worker_next_wakeup);
	nulls[5] = copy.worker_next_wakeup == 0;
	values[6] = Int64GetDatum(copy.worker_passes);
	values[7] = Int64GetDatum(copy.worker_notifies);
	values[8] = Int32GetDatum(copy.ready_all ? -1 : copy.nready);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * tq.shared_usage() returns setof (name text, setting text, used bigint,
 * capacity bigint, full_events bigint, last_full_at timestamptz,
 * overflow bigint)
 *
 * The tables in shared memory that callers fill, cluster-wide: the
 * fair-dispatch entries (fair_entry.c), the token buckets of
 * tq_rate_consume (ratelimit.c) and the wait slots of tq_wait (wait.c).
 * Each module copies its figures under its own lock.
 */
Datum
tq_shared_usage(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	static const struct
	{
		const char *name;
		const char *setting; /* NULL: one per backend, never full */
		void (*read)(TqUsage *u);
	} tables[] = {
		{"tenants", "tq.max_tenants", tq_fair_usage},
		{"rate_buckets", "tq.max_rate_keys", tq_rate_usage},
		{"wait_slots", NULL, tq_wait_usage},
	};

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < lengthof(tables); i++)
	{
		TqUsage u;
		Datum v[7];
		bool nulls[7] = {0};

		tables[i].read(&u);
		v[0] = CStringGetTextDatum(tables[i].name);
		v[1] = tables[i].setting ? CStringGetTextDatum(tables[i].setting) : (Datum) 0;
		nulls[1] = tables[i].setting == NULL;
		v[2] = Int64GetDatum(u.used);
		v[3] = Int64GetDatum(u.capacity);
		v[4] = Int64GetDatum(u.full_events);
		v[5] = TimestampTzGetDatum(u.last_full_at);
		nulls[5] = u.last_full_at == 0;
		v[6] = Int64GetDatum(u.overflow);
		nulls[6] = tables[i].read != tq_fair_usage;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
	}
	return (Datum) 0;
}
