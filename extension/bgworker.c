/*-------------------------------------------------------------------------
 *
 * bgworker.c
 *	  tq's background worker: housekeeping on time, and wake-ups off the
 *	  producers' commits.
 *
 * One worker, registered at postmaster start when tq.database is set, and
 * connected to that database.  Each turn of its loop it may do two kinds
 * of work, each in its own transaction:
 *
 *   notify        send NOTIFY tq_ready for the queues that committed
 *                 transactions flagged in shared memory (shmem.c): at once
 *                 when the last notify pass is older than
 *                 tq.notify_interval, else when it is -- so an idle worker
 *                 daemon hears of new work within milliseconds, a busy
 *                 system gets one notification per queue per interval, and
 *                 only this process pays for the notify lock instead of
 *                 every producer.
 *
 *   housekeeping  SELECT tq.background_pass(): promote due scheduled tasks,
 *                 reclaim expired leases, expire overdue tasks, and run the
 *                 maintenance pass (partitions, retention, dedup keys) when
 *                 it is due.  It returns the seconds until the next of
 *                 those events is due; the worker sleeps until then, at
 *                 most tq.worker_naptime, and is woken early when a commit
 *                 changes tq.task (a nearer run_at, say) -- but runs
 *                 housekeeping at most once per tq.worker_min_interval, so
 *                 that a busy system does not keep it spinning.
 *
 * While the extension is not installed in the database the worker only
 * waits and looks again; at a version without tq.background_pass (0.1.0)
 * it still sends the notifications producers handed it, and leaves
 * housekeeping to tq_lease. *
 * Errors.  A failing pass is logged with its SQLSTATE, its transaction is
 * rolled back, and the worker carries on after tq.worker_naptime: a bug in
 * one pass must not stop promotion for good, nor make the postmaster
 * restart the worker in a tight loop.  SIGTERM (die) and postmaster death
 * end it; SIGHUP rereads the configuration.
 *
 * Memory.  Everything a turn allocates outside a transaction lives in a
 * loop context that is reset at the start of each turn.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "tq.h"

PGDLLEXPORT void tq_worker_main(Datum arg) pg_attribute_noreturn();

/* What one turn of the loop took from shared memory. */
typedef struct Wakeups
{
	bool all; /* notify every queue */
	int n;    /* queues in names[] */
	char names[TQ_READY_SLOTS][NAMEDATALEN];
	bool schedule_changed; /* a commit changed tq.task */
} Wakeups;

/*
 * tq_worker_register
 *		Register the worker with the postmaster; called from _PG_init.  An
 *		empty tq.database means no worker (tq_lease then does the
 *		housekeeping itself, as it always also does opportunistically).
 */
void
tq_worker_register(void)
{
	BackgroundWorker bgw;

	if (tq_database == NULL || tq_database[0] == '\0')
		return;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = 5;
	strlcpy(bgw.bgw_library_name, "tq", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "tq_worker_main", BGW_MAXLEN);
	strlcpy(bgw.bgw_name, "tq background worker", BGW_MAXLEN);
	strlcpy(bgw.bgw_type, "tq background worker", BGW_MAXLEN);
	bgw.bgw_main_arg = (Datum) 0;
	RegisterBackgroundWorker(&bgw);
}

/* Clears the worker's identity from shared memory when it exits. */
static void
worker_detach(int code, Datum arg)
{
	LWLockAcquire(tq_shared->lock, LW_EXCLUSIVE);
	if (tq_shared->worker_pid == MyProcPid)
	{
		tq_shared->worker_latch = NULL;
		tq_shared->worker_pid = 0;
		tq_shared->worker_dboid = InvalidOid;
	}
	LWLockRelease(tq_shared->lock);
}

/* Takes (and clears) what committed transactions left for the worker. */
static void
take_wakeups(Wakeups *w)
{
	LWLockAcquire(tq_shared->lock, LW_EXCLUSIVE);
	w->all = tq_shared->ready_all;
	w->n = tq_shared->nready;
	memcpy(w->names, tq_shared->ready, sizeof(w->names[0]) * w->n);
	w->schedule_changed = tq_shared->schedule_changed;
	tq_shared->ready_all = false;
	tq_shared->nready = 0;
	tq_shared->schedule_changed = false;
	LWLockRelease(tq_shared->lock);
}

/*
 * run_pass
 *		One transaction: the notifications in w (if any), then housekeeping
 *		if asked.  Returns the seconds until the next housekeeping event is
 *		due, or -1 when tq is not installed here or no housekeeping ran.
 */
static double
run_pass(const Wakeups *w, bool housekeeping, int64 *notified)
{
	double next = NAN; /* NAN: no housekeeping result */
	int ret;
	bool has_tq;
	bool installed;
	bool isnull;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "tq background worker: SPI_connect failed");
	pgstat_report_activity(STATE_RUNNING, housekeeping ? "tq: housekeeping" : "tq: notify");

	/*
	 * Notifications need only the extension, at any version (producers of
	 * a database still at 0.1.0 under this library hand their wake-ups
	 * over too); housekeeping needs tq.background_pass, from 0.2.0 on.
	 */
	ret = SPI_execute("SELECT pg_catalog.to_regclass('tq.queue') IS NOT NULL, "
					  "pg_catalog.to_regprocedure('tq.background_pass()') IS NOT NULL",
					  true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "tq background worker: catalog lookup failed: %s", SPI_result_code_string(ret));
	has_tq = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	installed =
		DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));

	if (has_tq && w->all)
	{
		ret = SPI_execute("SELECT pg_catalog.pg_notify('tq_ready', q.name) FROM tq.queue q", false,
						  0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "tq background worker: notifying every queue failed: %s",
				 SPI_result_code_string(ret));
		*notified += SPI_processed;
	}
	else
	{
		for (int i = 0; i < w->n; i++)
			Async_Notify("tq_ready", w->names[i]);
		*notified += w->n;
	}

	if (installed && housekeeping)
	{
		ret = SPI_execute("SELECT tq.background_pass()", false, 1);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "tq background worker: tq.background_pass() failed: %s",
				 SPI_result_code_string(ret));
		next =
			DatumGetFloat8(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		if (isnull)
			next = (double) tq_worker_naptime / 1000.0;
	}

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return next;
}

/*
 * try_pass
 *		run_pass, with its errors logged and rolled back instead of ending
 *		the worker.  After a failure the result asks for the worker's nap
 *		before the next attempt.
 */
static double
try_pass(const Wakeups *w, bool housekeeping, int64 *notified, MemoryContext loop_cxt)
{
	volatile double next = NAN;

	PG_TRY();
	{
		next = run_pass(w, housekeeping, notified);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(loop_cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		pgstat_report_activity(STATE_IDLE, NULL);
		next = (double) tq_worker_naptime / 1000.0;
	}
	PG_END_TRY();
	return next;
}

/*
 * tq_worker_main
 *		Entry point of the background worker.
 */
void
tq_worker_main(Datum arg)
{
	MemoryContext loop_cxt;
	TimestampTz next_housekeeping = 0; /* now: a first pass at once */
	TimestampTz last_housekeeping = 0;
	TimestampTz next_notify_allowed = 0;
	int64 passes = 0;
	int64 notified = 0;

	tq_is_background_worker = true;
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(tq_database, NULL, 0);
	pgstat_report_appname("tq background worker");

	LWLockAcquire(tq_shared->lock, LW_EXCLUSIVE);
	tq_shared->worker_pid = MyProcPid;
	tq_shared->worker_latch = MyLatch;
	tq_shared->worker_dboid = MyDatabaseId;
	tq_shared->worker_started = GetCurrentTimestamp();
	tq_shared->worker_passes = 0;
	tq_shared->worker_notifies = 0;
	LWLockRelease(tq_shared->lock);
	before_shmem_exit(worker_detach, (Datum) 0);

	ereport(LOG, (errmsg("tq background worker started for database \"%s\"", tq_database)));

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "tq worker loop", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		Wakeups *w;
		TimestampTz now;
		bool housekeeping;
		long sleep_ms;
		bool notify_pending;
		MemoryContext oldcxt;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/*
		 * Pacing of notifications: within tq.notify_interval of the last
		 * notify pass, let commits accumulate, and do not let their latch
		 * sets wake us (the latch stays set for afterwards).
		 */
		now = GetCurrentTimestamp();
		if (now < next_notify_allowed)
		{
			(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 (long) ((next_notify_allowed - now) / 1000) + 1, PG_WAIT_EXTENSION);
			continue;
		}

		MemoryContextReset(loop_cxt);
		oldcxt = MemoryContextSwitchTo(loop_cxt);
		w = palloc(sizeof(Wakeups));
		take_wakeups(w);

		/* A commit changed tq.task: look again soon, but not in a spin. */
		if (w->schedule_changed)
			next_housekeeping =
				Min(next_housekeeping,
					TimestampTzPlusMilliseconds(last_housekeeping, tq_worker_min_interval));
		now = GetCurrentTimestamp();
		housekeeping = now >= next_housekeeping;

		/*
		 * Notifications first, in a transaction of their own: a slow or
		 * failing housekeeping pass must neither delay nor roll them back.
		 */
		if (w->all || w->n > 0)
		{
			(void) try_pass(w, false, &notified, loop_cxt);
			next_notify_allowed =
				TimestampTzPlusMilliseconds(GetCurrentTimestamp(), tq_notify_interval);
		}

		if (housekeeping)
		{
			Wakeups *none = palloc0(sizeof(Wakeups));
			double next = try_pass(none, true, &notified, loop_cxt);
			long delay_ms;

			passes++;
			last_housekeeping = GetCurrentTimestamp();
			/* Rounded up: waking just before run_at would find nothing due. */
			/* Overdue (negative): again after the minimum interval. */
			delay_ms = isnan(next) ? tq_worker_naptime : (long) ceil(Max(next, 0) * 1000.0);
			delay_ms = Max(delay_ms, tq_worker_min_interval);
			delay_ms = Min(delay_ms, tq_worker_naptime);
			next_housekeeping = TimestampTzPlusMilliseconds(last_housekeeping, delay_ms);
		}

		LWLockAcquire(tq_shared->lock, LW_EXCLUSIVE);
		tq_shared->worker_passes = passes;
		tq_shared->worker_notifies = notified;
		tq_shared->worker_last_pass = last_housekeeping;
		tq_shared->worker_next_wakeup = next_housekeeping;
		LWLockRelease(tq_shared->lock);

		MemoryContextSwitchTo(oldcxt);

		/*
		 * Look again before sleeping.  A commit that flagged a queue while
		 * this turn's transactions ran may have set our latch only for the
		 * set to be lost: waiting for a heavyweight lock -- the notify
		 * lock at commit, which tqd's completions (tq_done) take too --
		 * sleeps on the latch and resets it.  Later commits for the same
		 * queue see it flagged and do not set the latch again, so without
		 * this the worker slept up to tq.worker_naptime with wake-ups
		 * pending (issue 16: a listener got 87 tq_ready in 6 s with tqd
		 * completing, 1 783 in 5 s without).
		 */
		LWLockAcquire(tq_shared->lock, LW_SHARED);
		notify_pending = tq_shared->ready_all || tq_shared->nready > 0;
		if (tq_shared->schedule_changed)
			next_housekeeping =
				Min(next_housekeeping,
					TimestampTzPlusMilliseconds(last_housekeeping, tq_worker_min_interval));
		LWLockRelease(tq_shared->lock);
		if (notify_pending)
			continue; /* paced at the top of the loop */

		now = GetCurrentTimestamp();
		sleep_ms = now >= next_housekeeping ? 0 : (long) ((next_housekeeping - now) / 1000) + 1;
		if (sleep_ms > 0)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, sleep_ms,
							 PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}
