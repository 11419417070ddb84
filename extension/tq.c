/*-------------------------------------------------------------------------
 *
 * tq.c
 *	  Module initialisation of the tq extension: load checks and settings.
 *
 * tq must be loaded through shared_preload_libraries.  The task store
 * itself works from any backend, but the shared-memory state (rate
 * limits, fair-dispatch clocks, counters) and the background worker that
 * later parts of tq rely on can only be set up while the postmaster
 * starts, so refusing a late load now keeps every installation on the
 * supported path from the first day.
 *
 * Settings are all named tq.<name>; MarkGUCPrefixReserved turns a typo
 * such as "tq.max_payload_sise" in postgresql.conf into a warning instead
 * of a silently ignored placeholder.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "tq.h"

PG_MODULE_MAGIC;

bool tq_producer_notify = true;
int tq_max_payload_size = 1024 * 1024;
int tq_maintenance_interval = 60 * 1000;
char *tq_database = NULL;
int tq_worker_naptime = 1000;
int tq_worker_min_interval = 10;
int tq_notify_interval = 2;
int tq_max_rate_keys = 1024;
int tq_max_rate_keys_per_role = 256;
int tq_max_tenants = 20000;
char *tq_traceparent = NULL;

void _PG_init(void);

/*
 * _PG_init
 *		Refuse to load outside shared_preload_libraries, then define the
 *		settings.
 */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("tq must be loaded via shared_preload_libraries"),
						errdetail("The library \"tq\" was loaded into a running server."),
						errhint("Add tq to shared_preload_libraries in postgresql.conf "
								"(for example: shared_preload_libraries = 'tq') "
								"and restart the server.")));

	DefineCustomBoolVariable("tq.producer_notify",
							 "Sends NOTIFY tq_ready from transactions that submit ready tasks.",
							 "At most one notification per queue and transaction. "
							 "Workers also poll, so turning this off delays wake-ups "
							 "but loses no task.",
							 &tq_producer_notify, true, PGC_USERSET, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("tq.max_payload_size", "Largest task payload tq_submit accepts.",
							"Measured as the stored jsonb size.", &tq_max_payload_size, 1024 * 1024,
							64, MaxAllocSize / 2, PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);

	DefineCustomIntVariable("tq.maintenance_interval",
							"Time between opportunistic maintenance passes run by tq_lease.",
							"A pass creates history partitions ahead of need, applies "
							"retention and forgets expired deduplication keys.",
							&tq_maintenance_interval, 60 * 1000, 100, 24 * 3600 * 1000, PGC_SIGHUP,
							GUC_UNIT_MS, NULL, NULL, NULL);

	DefineCustomStringVariable("tq.database", "Database that tq's background worker serves.",
							   "Empty: no background worker; tq_lease then does the "
							   "housekeeping alone.",
							   &tq_database, "postgres", PGC_POSTMASTER, 0, NULL, NULL, NULL);

	DefineCustomIntVariable(
		"tq.worker_naptime",
		"Longest time the background worker sleeps between two housekeeping passes.",
		"It wakes earlier when a scheduled task, a lease expiry or a deadline "
		"is due, and when a commit changes the task table.",
		&tq_worker_naptime, 1000, 10, 60 * 1000, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	DefineCustomIntVariable(
		"tq.worker_min_interval",
		"Shortest time between two housekeeping passes of the background worker.",
		"Bounds the worker's load on a busy system; also bounds how late a "
		"delayed task can become leasable.",
		&tq_worker_min_interval, 10, 1, 10 * 1000, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	DefineCustomIntVariable("tq.notify_interval",
							"Shortest time between two rounds of tq_ready notifications sent by "
							"the background worker.",
							"The first notification after a quiet spell goes out at once; under "
							"load each queue gets at most one per interval.",
							&tq_notify_interval, 2, 0, 1000, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL,
							NULL);

	DefineCustomIntVariable(
		"tq.max_rate_keys", "Number of token buckets tq_rate_consume can keep in shared memory.",
		"Buckets that have refilled are reused; a new key finds no room only "
		"when every bucket is in use.",
		&tq_max_rate_keys, 1024, 16, 1000000, PGC_POSTMASTER, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("tq.max_rate_keys_per_role",
							"Number of token buckets of tq_rate_consume one role may hold.",
							"Each role has keys of its own; this keeps one role from taking "
							"every bucket with buckets that refill slowly.",
							&tq_max_rate_keys_per_role, 256, 1, 1000000, PGC_SIGHUP, 0, NULL, NULL,
							NULL);

	DefineCustomIntVariable("tq.max_tenants",
							"Number of queues and (queue, tenant) pairs whose fair-dispatch state, "
							"limits and counters shared memory holds.",
							"Entries of tenants without live tasks are reused; beyond this, "
							"tenants without a policy share one overflow entry per queue, whose "
							"limits still hold, and the server log says so.",
							&tq_max_tenants, 20000, 64, 10000000, PGC_POSTMASTER, 0, NULL, NULL,
							NULL);

	/*
	 * Per request, not per server: an application sets it with SET LOCAL
	 * (or set_config(..., true)) in the transaction that handles a traced
	 * request, and every task that transaction submits -- directly, through
	 * tq_submit_trigger or from a function -- carries the trace on.  The
	 * check hook refuses a malformed value when it is set (traceparent.c).
	 */
	DefineCustomStringVariable(
		"tq.traceparent", "W3C traceparent given to tasks submitted without one.",
		"An empty string means none. A traceparent argument of "
		"tq_submit or tq_submit_many overrides it.",
		&tq_traceparent, "", PGC_USERSET, 0, tq_traceparent_check_hook, NULL, NULL);

	MarkGUCPrefixReserved("tq");

	tq_shmem_init();
	tq_worker_register();
}
