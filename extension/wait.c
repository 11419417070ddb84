/*-------------------------------------------------------------------------
 *
 * wait.c
 *	  tq_wait: a session sleeps until a task finishes, woken by the
 *	  finishing transaction's commit, without polling.
 *
 * Shared memory holds one wait slot per backend that may wait (MaxBackends
 * slots): the database and task it waits for, and a condition variable.
 *
 * Waiter (tq.wait_done):
 *	1. takes a free slot and writes (database, task) into it;
 *	2. ConditionVariablePrepareToSleep on the slot's variable;
 *	3. checks the task with a fresh snapshot (READ COMMITTED: each SPI
 *	   query takes one): finished -> done;
 *	4. sleeps until woken or the deadline, then goes back to 3.
 * Finisher: tq.finish records the ids it moved to history in a list of
 * this backend's (tq.note_finished); at commit -- after the commit became
 * visible to other snapshots (XACT_EVENT_COMMIT comes after
 * ProcArrayEndTransaction) -- if any slot is in use, every slot whose task
 * is in the list is broadcast.
 *
 * No wake-up is lost: a waiter registers before it checks, and the check
 * after registering sees every commit that came before it; a commit after
 * the check finds the slot registered.  Each sleep is also capped at one
 * second, so that a finish that did not pass through tq.finish (there is
 * none today) or an aborted subtransaction's stale ids cost at most a
 * late or a spurious check, never a wrong answer: the answer always comes
 * from the check, never from the signal.
 *
 * A slot is given back when the wait ends, by any error, or by the
 * backend's exit (wait_exit, for a FATAL such as pg_terminate_backend).
 *
 * Locking: one spinlock guards the slots' (database, task) fields, held
 * only to claim, release or scan them; condition variables are broadcast
 * after it is released.  nwaiting (atomic) lets a committing transaction
 * skip the scan when nobody waits, which is the common case.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "tq.h"

typedef struct WaitSlot
{
	Oid dboid;     /* InvalidOid: free */
	int64 task_id; /* the task waited for */
	ConditionVariable cv;
} WaitSlot;

typedef struct WaitShared
{
	slock_t mutex;             /* guards every slot's dboid and task_id */
	pg_atomic_uint32 nwaiting; /* slots in use */
	int nslots;
	int64 refusals;           /* tq_wait calls that found no free slot (guarded by mutex) */
	TimestampTz last_refusal; /* the last of them (guarded by mutex) */
	WaitSlot slots[FLEXIBLE_ARRAY_MEMBER];
} WaitShared;

static WaitShared *waits = NULL;

/* This backend's finished ids, kept until its transaction ends. */
static int64 *finished = NULL;
static int nfinished = 0;
static int finished_cap = 0;
static bool callback_registered = false;

/*
 * The slot this backend holds while it waits.  A backend ended while it
 * sleeps (pg_terminate_backend: a FATAL, which runs no PG_FINALLY) gives
 * it back on its way out, in wait_exit: without that, every terminated
 * waiter leaked a slot until the server restarted, and tq_wait failed for
 * everyone once all were gone.
 */
static WaitSlot *my_slot = NULL;
static bool exit_registered = false;

static void release_slot(WaitSlot *s);

static void
wait_exit(int code, Datum arg)
{
	if (my_slot != NULL)
		release_slot(my_slot);
}

PG_FUNCTION_INFO_V1(tq_note_finished);
PG_FUNCTION_INFO_V1(tq_wait_done);

Size
tq_wait_shmem_size(void)
{
	return MAXALIGN(offsetof(WaitShared, slots) + sizeof(WaitSlot) * (Size) MaxBackends);
}

/* Called with AddinShmemInitLock held. */
void
tq_wait_shmem_init(void)
{
	bool found;

	waits = ShmemInitStruct("tq waits", tq_wait_shmem_size(), &found);
	if (!found)
	{
		SpinLockInit(&waits->mutex);
		pg_atomic_init_u32(&waits->nwaiting, 0);
		waits->nslots = MaxBackends;
		waits->refusals = 0;
		waits->last_refusal = 0;
		for (int i = 0; i < waits->nslots; i++)
		{
			waits->slots[i].dboid = InvalidOid;
			waits->slots[i].task_id = 0;
			ConditionVariableInit(&waits->slots[i].cv);
		}
	}
}

static int
cmp_int64(const void *a, const void *b)
{
	int64 x = *(const int64 *) a, y = *(const int64 *) b;

	return x < y ? -1 : x > y;
}

/* At commit: wake whoever waits for a task this transaction finished. */
static void
wake_waiters(void)
{
	int hits[64];
	int nhits = 0;
	bool more = false;

	if (nfinished == 0 || waits == NULL || pg_atomic_read_u32(&waits->nwaiting) == 0)
		return;
	if (nfinished > 8)
		qsort(finished, nfinished, sizeof(int64), cmp_int64);
	SpinLockAcquire(&waits->mutex);
	for (int i = 0; i < waits->nslots; i++)
	{
		WaitSlot *s = &waits->slots[i];
		bool match = false;

		if (s->dboid != MyDatabaseId)
			continue;
		if (nfinished > 8)
			match = bsearch(&s->task_id, finished, nfinished, sizeof(int64), cmp_int64) != NULL;
		else
			for (int j = 0; j < nfinished && !match; j++)
				match = finished[j] == s->task_id;
		if (!match)
			continue;
		if (nhits < (int) lengthof(hits))
			hits[nhits++] = i;
		else
			more = true;
	}
	SpinLockRelease(&waits->mutex);
	for (int i = 0; i < nhits; i++)
		ConditionVariableBroadcast(&waits->slots[hits[i]].cv);
	if (more)
	{
		/* More waiters of this batch than we noted: wake every slot; they re-check. */
		for (int i = 0; i < waits->nslots; i++)
			ConditionVariableBroadcast(&waits->slots[i].cv);
	}
}

static void
wait_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			wake_waiters();
			nfinished = 0;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			nfinished = 0;
			break;
		default:
			break;
	}
}

/*
 * tq.note_finished(ids bigint[], queues text[], states text[]): called by
 * tq.finish with the tasks it moved to history, so that the commit wakes
 * their waiters and counts them in the queues' activity (fair_xact.c).
 */
Datum
tq_note_finished(PG_FUNCTION_ARGS)
{
	ArrayType *arr = PG_GETARG_ARRAYTYPE_P(0);
	Datum *elems, *qs, *ss;
	bool *nulls, *qnulls, *snulls;
	int n, nq, ns;

	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, &n);
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), TEXTOID, -1, false, TYPALIGN_INT, &qs, &qnulls,
					  &nq);
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(2), TEXTOID, -1, false, TYPALIGN_INT, &ss, &snulls,
					  &ns);
	if (nq != n || ns != n)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("the arrays of task ids, queues and states differ in length"),
				 errdetail("There are %d ids, %d queues and %d states.", n, nq, ns),
				 errhint("Pass one queue and one state per finished task, in the same order.")));
	if (!callback_registered)
	{
		RegisterXactCallback(wait_xact_callback, NULL);
		callback_registered = true;
	}
	if (nfinished + n > finished_cap)
	{
		int cap = Max(finished_cap * 2, Max(nfinished + n, 64));

		finished = finished == NULL ? MemoryContextAlloc(TopMemoryContext, sizeof(int64) * cap)
									: repalloc(finished, sizeof(int64) * cap);
		finished_cap = cap;
	}
	for (int i = 0; i < n; i++)
	{
		char *state;
		int kind;

		if (nulls[i] || qnulls[i] || snulls[i])
			continue;
		finished[nfinished++] = DatumGetInt64(elems[i]);
		state = TextDatumGetCString(ss[i]);
		kind = strcmp(state, "succeeded") == 0 ? TQ_ACT_SUCCEEDED
			   : strcmp(state, "dead") == 0    ? TQ_ACT_DEAD
											   : TQ_ACT_OTHER;
		tq_fair_note_activity(TextDatumGetCString(qs[i]), kind, 1);
	}
	PG_RETURN_VOID();
}

/* Claims a slot for (this database, task); errors when none is free. */
static WaitSlot *
claim_slot(int64 task_id)
{
	WaitSlot *got = NULL;

	if (!exit_registered)
	{
		before_shmem_exit(wait_exit, (Datum) 0);
		exit_registered = true;
	}
	SpinLockAcquire(&waits->mutex);
	for (int i = 0; i < waits->nslots; i++)
	{
		if (waits->slots[i].dboid == InvalidOid)
		{
			got = &waits->slots[i];
			got->dboid = MyDatabaseId;
			got->task_id = task_id;
			break;
		}
	}
	SpinLockRelease(&waits->mutex);
	if (got == NULL)
	{
		TimestampTz now = GetCurrentTimestamp();

		SpinLockAcquire(&waits->mutex);
		waits->refusals++;
		waits->last_refusal = now;
		SpinLockRelease(&waits->mutex);
	}
	if (got == NULL)
		ereport(ERROR, (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						errmsg("too many sessions are waiting for tasks"),
						errdetail("All %d wait slots are in use.", waits->nslots),
						errhint("Each backend waits for one task at a time; this should not "
								"happen unless backends leak slots.")));
	pg_atomic_fetch_add_u32(&waits->nwaiting, 1);
	my_slot = got;
	return got;
}

/* The slots' use, for tq_shared_usage (shmem.c). */
void
tq_wait_usage(TqUsage *u)
{
	memset(u, 0, sizeof(TqUsage));
	if (waits == NULL)
		return;
	SpinLockAcquire(&waits->mutex);
	u->capacity = waits->nslots;
	u->full_events = waits->refusals;
	u->last_full_at = waits->last_refusal;
	SpinLockRelease(&waits->mutex);
	u->used = pg_atomic_read_u32(&waits->nwaiting);
}

static void
release_slot(WaitSlot *s)
{
	SpinLockAcquire(&waits->mutex);
	s->dboid = InvalidOid;
	s->task_id = 0;
	SpinLockRelease(&waits->mutex);
	pg_atomic_fetch_sub_u32(&waits->nwaiting, 1);
	if (s == my_slot)
		my_slot = NULL;
}

/*
 * The task's state now: 1 finished, 0 live and committed, and errors for
 * a task that does not exist or that this transaction submitted.  The
 * queries are run as not read-only, so that each takes a fresh snapshot
 * (a read-only SPI query reuses the statement's, which never sees the
 * finish).
 */
static int
check_task(int64 task_id)
{
	Datum arg = Int64GetDatum(task_id);
	Oid argtype = INT8OID;
	int rc;

	rc = SPI_execute_with_args("SELECT 1 FROM tq.history WHERE id = $1 LIMIT 1", 1, &argtype, &arg,
							   NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "tq_wait: history lookup failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
		return 1;
	rc = SPI_execute_with_args("SELECT xmin::text FROM tq.task WHERE id = $1", 1, &argtype, &arg,
							   NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "tq_wait: task lookup failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
						errmsg("task " INT64_FORMAT " does not exist", task_id),
						errhint("It may never have existed, or its queue's retention has "
								"removed it.")));
	{
		char *xmin = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		TransactionId xid = (TransactionId) strtoul(xmin, NULL, 10);

		if (TransactionIdIsCurrentTransactionId(xid))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("task " INT64_FORMAT " was changed by this transaction", task_id),
					 errdetail("A task submitted (or otherwise changed) in a transaction "
							   "cannot finish before that transaction commits."),
					 errhint("Commit first, then call tq_wait in a new transaction.")));
	}
	return 0;
}

/*
 * tq.wait_done(id bigint, timeout_ms float8) returns boolean: true once the
 * task has finished, false when timeout_ms passed first.
 */
Datum
tq_wait_done(PG_FUNCTION_ARGS)
{
	int64 task_id = PG_GETARG_INT64(0);
	double timeout_ms = PG_GETARG_FLOAT8(1);
	TimestampTz deadline;
	WaitSlot *slot;
	volatile bool done = false;

	if (waits == NULL)
		elog(ERROR, "tq_wait: shared memory is not set up");
	if (IsolationUsesXactSnapshot())
		ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						errmsg("tq_wait cannot see other transactions finish a task under "
							   "REPEATABLE READ or SERIALIZABLE"),
						errdetail("The transaction's snapshot was taken before the wait."),
						errhint("Call tq_wait in a READ COMMITTED transaction (the default).")));
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), (int64) timeout_ms);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "tq_wait: SPI_connect failed");
	slot = claim_slot(task_id);
	PG_TRY();
	{
		ConditionVariablePrepareToSleep(&slot->cv);
		for (;;)
		{
			long ms;

			if (check_task(task_id) == 1)
			{
				done = true;
				break;
			}
			ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
			if (ms <= 0)
				break;
			/* The answer comes from the check; the signal only ends the sleep early. */
			(void) ConditionVariableTimedSleep(&slot->cv, Min(ms, 1000), PG_WAIT_EXTENSION);
		}
		ConditionVariableCancelSleep();
	}
	PG_FINALLY();
	{
		release_slot(slot);
	}
	PG_END_TRY();
	SPI_finish();
	PG_RETURN_BOOL(done);
}
