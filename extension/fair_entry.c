/*-------------------------------------------------------------------------
 *
 * fair_entry.c
 *	  The shared entries of fair dispatch: set-up, keys, token buckets,
 *	  policies and capacity.
 *
 * Entries.  One dynahash, "tq fair", keyed by (database, queue, kind,
 * tenant): a queue entry (kind QUEUE) per queue and a tenant entry per
 * (queue, tenant) with live tasks (the NULL tenant is a tenant of its
 * own).  An entry holds the policy copied from tq.queue / tq.tenant
 * (weight, rate and burst, concurrency, backlog_limit, priority_aging),
 * live counts per state, a token bucket, and a virtual clock: the queue's
 * virtual time V, or the tenant's virtual finish time F.  The files of
 * this subsystem are listed in fair.h.
 *
 * Policies.  Read with SPI outside the lock, copied into the entry under
 * it, clamped to the bounds of the SQL checks (a value written behind them
 * is said with a WARNING naming the queue and tenant).
 *
 * Capacity.  tq.max_tenants entries in all.  When full, entries of
 * tenants with no live task are evicted (their clocks are behind V or
 * nearly so, which a new entry reproduces).  If none can be evicted, a new
 * tenant is dispatched at V without its own entry: it is still served,
 * but without its own fair share and limits until room frees.  This is
 * logged (at most once a minute), never an error.
 *
 * Locking protocol.  fair_shared->lock (an LWLock of tranche "tq fair")
 * protects the hash and every entry field, in every file of fair
 * dispatch; holders copy a few numbers, never allocate, never raise an
 * error, never run SQL.  Configuration is read with SPI before the lock is
 * taken, in queries that name every object with its schema (the trigger
 * may run under a caller's search_path).  Each database's rebuild state is
 * an atomic read on the hot path and changed under the lock.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/shmem.h"
#include "utils/builtins.h"

#include "tq.h"
#include "fair.h"

FairShared *fair_shared = NULL;
HTAB *fair_hash = NULL;

/* Live states counted; the order of tq.task_state's first four labels. */
const char *const fair_state_names[NSTATES] = {"scheduled", "ready", "paused", "running"};

/* ------------------------------------------------------------------------
 * Shared memory set-up
 * ------------------------------------------------------------------------
 */
Size
tq_fair_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(FairShared)),
					hash_estimate_size(tq_max_tenants, sizeof(FairEntry)));
}

/* Called from the shmem startup hook, with AddinShmemInitLock held. */
void
tq_fair_shmem_init(void)
{
	HASHCTL info;
	bool found;

	fair_shared = ShmemInitStruct("tq fair state", sizeof(FairShared), &found);
	if (!found)
	{
		memset(fair_shared, 0, sizeof(FairShared));
		fair_shared->lock = &(GetNamedLWLockTranche("tq fair"))->lock;
		ConditionVariableInit(&fair_shared->cv);
		for (int i = 0; i < TQ_MAX_DBS; i++)
			pg_atomic_init_u32(&fair_shared->dbs[i].state, DB_EMPTY);
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(FairKey);
	info.entrysize = sizeof(FairEntry);
	fair_hash = ShmemInitHash("tq fair entries", tq_max_tenants, tq_max_tenants, &info,
							  HASH_ELEM | HASH_BLOBS);
}

/* ------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------
 */
/* ------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------
 */
void
fair_make_key(FairKey *k, const char *queue, const char *tenant, bool queue_entry)
{
	memset(k, 0, sizeof(FairKey));
	k->dboid = MyDatabaseId;
	strlcpy(k->queue, queue, NAMEDATALEN);
	if (queue_entry)
		k->kind = KIND_QUEUE;
	else if (tenant == NULL)
		k->kind = KIND_NULL_TENANT;
	else
	{
		k->kind = KIND_TENANT;
		strlcpy(k->tenant, tenant, sizeof(k->tenant));
	}
}

bool
fair_entry_idle(const FairEntry *e)
{
	for (int s = 0; s < NSTATES; s++)
		if (e->count[s] != 0)
			return false;
	return !e->held;
}

/* Bucket content now (no change to the entry).  Caller holds the lock. */
double
fair_tokens_now(const FairEntry *e, TimestampTz now)
{
	if (e->rate <= 0)
		return INFINITY;
	return tq_bucket_level(e->tokens, e->tokens_at, e->rate, e->burst, now);
}

/* Claims the entry would allow now.  Caller holds the lock. */
double
fair_room_now(const FairEntry *e, TimestampTz now)
{
	double room = INFINITY;

	if (e->concurrency >= 0)
		room = (double) (e->concurrency - e->count[ST_RUNNING]);
	if (e->rate > 0)
		room = Min(room, floor(fair_tokens_now(e, now)));
	return room;
}

void
fair_take_token(FairEntry *e, TimestampTz now)
{
	if (e->rate <= 0)
		return;
	e->tokens = fair_tokens_now(e, now) - 1.0;
	e->tokens_at = now;
}

/* Smoothed claims per second, for retry-after estimates. */
void
fair_count_lease(FairEntry *e, TimestampTz now)
{
	double secs;

	e->leased++;
	if (e->rate_at == 0)
	{
		e->rate_at = now;
		e->rate_leased = e->leased;
		return;
	}
	secs = (double) (now - e->rate_at) / USECS_PER_SEC;
	if (secs >= 1.0)
	{
		double r = (double) (e->leased - e->rate_leased) / secs;

		e->lease_rate = e->lease_rate > 0 ? 0.5 * e->lease_rate + 0.5 * r : r;
		e->rate_at = now;
		e->rate_leased = e->leased;
	}
}

/* Claims per second, decayed for the time since the last claim. */
double
fair_drain_rate(const FairEntry *e, TimestampTz now)
{
	double idle;

	if (e->rate_at == 0 || e->lease_rate <= 0)
		return 0;
	idle = (double) (now - e->rate_at) / USECS_PER_SEC;
	return idle > 60 ? 0 : e->lease_rate;
}

void
fair_log_full(void)
{
	TimestampTz now = GetCurrentTimestamp();
	bool say;

	LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
	say = TimestampDifferenceExceeds(fair_shared->last_full_log, now, 60 * 1000);
	if (say)
		fair_shared->last_full_log = now;
	LWLockRelease(fair_shared->lock);
	if (say)
		ereport(LOG, (errmsg("tq: all %d fair-dispatch entries are in use", tq_max_tenants),
					  errdetail("Tenants without an entry are served at the queue's virtual "
								"time, without their own share, quotas or rate limits."),
					  errhint("Raise tq.max_tenants (needs a restart).")));
}

/*
 * Evicts idle tenant entries to make room.  Caller holds the lock
 * exclusively.  Scans at most once a second while nothing is evictable.
 */
static void
entry_evict_idle(TimestampTz now)
{
	HASH_SEQ_STATUS seq;
	FairEntry *e;

	if (!fair_shared->idle_since_scan &&
		!TimestampDifferenceExceeds(fair_shared->last_evict_scan, now, 1000))
		return;
	fair_shared->last_evict_scan = now;
	fair_shared->idle_since_scan = false;
	hash_seq_init(&seq, fair_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->key.kind != KIND_QUEUE && fair_entry_idle(e))
			hash_search(fair_hash, &e->key, HASH_REMOVE, NULL);
}

/*
 * Finds or makes an entry.  Caller holds the lock exclusively.  New
 * entries start with default policy, not loaded.  NULL when the table is
 * full (caller degrades).
 */
FairEntry *
fair_enter(const FairKey *k, TimestampTz now, bool *full)
{
	FairEntry *e;
	bool found;

	e = hash_search(fair_hash, k, HASH_FIND, NULL);
	if (e != NULL)
		return e;
	if (hash_get_num_entries(fair_hash) >= tq_max_tenants)
		entry_evict_idle(now);
	if (hash_get_num_entries(fair_hash) >= tq_max_tenants)
	{
		*full = true;
		return NULL;
	}
	e = hash_search(fair_hash, k, HASH_ENTER_NULL, &found);
	if (e == NULL)
	{
		*full = true;
		return NULL;
	}
	if (!found)
	{
		memset(((char *) e) + sizeof(FairKey), 0, sizeof(FairEntry) - sizeof(FairKey));
		e->weight = 1.0;
		e->concurrency = -1;
		e->backlog_limit = -1;
		e->aging = 1e6;
		e->tokens_at = now;
		e->floor_key = -INFINITY;
		e->floor_id = PG_INT64_MIN;
		e->low_acc = INFINITY;
	}
	return e;
}

/* ------------------------------------------------------------------------
 * Policy: read with SPI, outside the lock
 * ------------------------------------------------------------------------
 */
typedef struct Policy
{
	bool exists;
	double weight, rate, burst, aging;
	int64 concurrency, backlog_limit;
} Policy;

/* v within [lo, hi]; dflt when it is not a number. */
double
fair_clamp(double v, double lo, double hi, double dflt)
{
	if (isnan(v))
		return dflt;
	return v < lo ? lo : v > hi ? hi : v;
}

/*
 * Brings a policy read from tq.queue or tq.tenant within the bounds of the
 * SQL checks.  A value out of them was written to the table behind those
 * checks; it is clamped and said with a warning naming the queue and
 * tenant, rather than left to fail arithmetic in every later transaction.
 */
static void
policy_sanitize(const FairKey *k, Policy *p)
{
	Policy in = *p;

	p->weight = fair_clamp(p->weight, TQ_WEIGHT_MIN, TQ_WEIGHT_MAX, 1.0);
	if (!(p->rate > 0))
		p->rate = 0;
	else
		p->rate = fair_clamp(p->rate, TQ_RATE_MIN, TQ_RATE_MAX, 0);
	if (p->rate > 0)
		p->burst = fair_clamp(p->burst, 1.0, TQ_BURST_MAX, Max(1.0, p->rate));
	p->aging = fair_clamp(p->aging, TQ_AGING_MIN, TQ_AGING_MAX, 1e6);
	if (p->concurrency < -1)
		p->concurrency = -1;
	if (p->backlog_limit < -1)
		p->backlog_limit = -1;
	if (in.weight != p->weight || in.rate != p->rate || in.burst != p->burst ||
		in.aging != p->aging || in.concurrency != p->concurrency ||
		in.backlog_limit != p->backlog_limit)
		ereport(
			WARNING,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("tq: the policy of queue \"%s\"%s%s%s is out of range; clamped values are "
					"used",
					k->queue, k->kind == KIND_TENANT ? ", tenant \"" : "",
					k->kind == KIND_TENANT ? k->tenant : "", k->kind == KIND_TENANT ? "\"" : ""),
			 errdetail("Read: weight %g, rate_per_sec %g, burst %g, priority_aging %g; used: "
					   "weight %g, rate_per_sec %g, burst %g, priority_aging %g.",
					   in.weight, in.rate, in.burst, in.aging, p->weight, p->rate, p->burst,
					   p->aging),
			 errhint("Set the values again with tq_alter_queue or tq_set_tenant.")));
}

static double
policy_getf8(HeapTuple tup, TupleDesc td, int col, double dflt)
{
	bool isnull;
	Datum d = SPI_getbinval(tup, td, col, &isnull);

	return isnull ? dflt : DatumGetFloat8(d);
}

static int64
policy_geti8(HeapTuple tup, TupleDesc td, int col, int64 dflt)
{
	bool isnull;
	Datum d = SPI_getbinval(tup, td, col, &isnull);

	return isnull ? dflt : DatumGetInt64(d);
}

/* Reads the policy of a queue (tenant_kind false) or of a tenant. */
static void
policy_read(const FairKey *k, Policy *p)
{
	Oid types[2] = {TEXTOID, TEXTOID};
	Datum vals[2];
	int ret;

	memset(p, 0, sizeof(Policy));
	p->weight = 1.0;
	p->concurrency = -1;
	p->backlog_limit = -1;
	p->aging = 1e6;
	if (k->kind == KIND_NULL_TENANT)
		return;
	vals[0] = CStringGetTextDatum(k->queue);
	vals[1] = CStringGetTextDatum(k->tenant);
	SPI_connect();
	if (k->kind == KIND_QUEUE)
		ret = SPI_execute_with_args(
			"SELECT 1.0::pg_catalog.float8, rate_per_sec::pg_catalog.float8,"
			" burst::pg_catalog.float8, concurrency::pg_catalog.int8,"
			" backlog_limit::pg_catalog.int8, priority_aging::pg_catalog.float8"
			" FROM tq.queue WHERE name OPERATOR(pg_catalog.=) $1",
			1, types, vals, NULL, true, 1);
	else
		ret = SPI_execute_with_args(
			"SELECT weight::pg_catalog.float8, rate_per_sec::pg_catalog.float8,"
			" burst::pg_catalog.float8, concurrency::pg_catalog.int8,"
			" backlog_limit::pg_catalog.int8, NULL::pg_catalog.float8 FROM tq.tenant"
			" WHERE queue OPERATOR(pg_catalog.=) $1 AND tenant OPERATOR(pg_catalog.=) $2",
			2, types, vals, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "tq: reading policy failed: %s", SPI_result_code_string(ret));
	if (SPI_processed == 1)
	{
		HeapTuple t = SPI_tuptable->vals[0];
		TupleDesc td = SPI_tuptable->tupdesc;

		p->exists = true;
		p->weight = policy_getf8(t, td, 1, 1.0);
		p->rate = policy_getf8(t, td, 2, 0);
		p->burst = policy_getf8(t, td, 3, 0);
		p->concurrency = policy_geti8(t, td, 4, -1);
		p->backlog_limit = policy_geti8(t, td, 5, -1);
		p->aging = policy_getf8(t, td, 6, 1e6);
		if (p->rate > 0 && p->burst < 1)
			p->burst = Max(1.0, p->rate);
	}
	SPI_finish();
	policy_sanitize(k, p);
}

/* Copies a policy into an entry.  Caller holds the lock. */
static void
policy_apply(FairEntry *e, const Policy *p, TimestampTz now)
{
	bool bucket_new = e->rate <= 0 && p->rate > 0;

	e->weight = p->weight > 0 ? p->weight : 1.0;
	e->rate = p->rate;
	e->burst = p->burst;
	e->concurrency = p->concurrency;
	e->backlog_limit = p->backlog_limit;
	e->aging = p->aging;
	if (bucket_new)
	{
		e->tokens = p->burst;
		e->tokens_at = now;
	}
	else if (e->rate > 0)
	{
		e->tokens = Min(fair_tokens_now(e, now), e->burst);
		e->tokens_at = now;
	}
	e->policy_loaded = true;
}

/*
 * Finds the queue and tenant entries for a row, loading their policies
 * with SPI where needed.  On return the lock is held exclusively; either
 * entry may be NULL (table full).
 */
void
fair_lock_entries(const char *queue, const char *tenant, bool want_tenant, FairEntry **qe,
				  FairEntry **te, TimestampTz now)
{
	FairKey qk, tk;
	bool full = false;
	Policy qp, tp;
	bool need_q, need_t;

	fair_make_key(&qk, queue, NULL, true);
	fair_make_key(&tk, queue, tenant, false);
	LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
	*qe = fair_enter(&qk, now, &full);
	*te = want_tenant ? fair_enter(&tk, now, &full) : NULL;
	need_q = *qe != NULL && !(*qe)->policy_loaded;
	need_t = *te != NULL && !(*te)->policy_loaded;
	if (!need_q && !need_t)
	{
		if (full)
		{
			bool reclaimed;

			LWLockRelease(fair_shared->lock);
			/* Entries of dropped databases are not idle, but are garbage. */
			reclaimed = fair_reclaim_dropped_dbs();
			if (!reclaimed)
				fair_log_full();
			LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
			full = false;
			*qe = reclaimed ? fair_enter(&qk, now, &full)
							: hash_search(fair_hash, &qk, HASH_FIND, NULL);
			if (want_tenant)
				*te = reclaimed ? fair_enter(&tk, now, &full)
								: hash_search(fair_hash, &tk, HASH_FIND, NULL);
			else
				*te = NULL;
		}
		return;
	}
	LWLockRelease(fair_shared->lock);
	if (need_q)
		policy_read(&qk, &qp);
	if (need_t)
		policy_read(&tk, &tp);
	LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
	*qe = fair_enter(&qk, now, &full);
	*te = want_tenant ? fair_enter(&tk, now, &full) : NULL;
	if (need_q && *qe != NULL && !(*qe)->policy_loaded)
		policy_apply(*qe, &qp, now);
	if (need_t && *te != NULL && !(*te)->policy_loaded)
		policy_apply(*te, &tp, now);
}
