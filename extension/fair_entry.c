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
 * Capacity.  tq.max_tenants entries in all, shared by every database.
 * No entry that holds a limit is ever given up while the limit counts
 * something: queue entries are never dropped, and a tenant with a policy
 * row (tq_set_tenant) always gets an entry.  Tenants without a policy
 * (no limits of their own, weight 1) fill the rest; when the table is
 * full, a new one is counted in its queue's overflow entry (kind
 * OVERFLOW): one pseudo-tenant per queue with a virtual finish time of its
 * own, so the tenants in it share one fair share, and every task is still
 * counted in its queue's entry, so the queue's limits hold exactly.
 * Making room, in this order:
 *
 *	 1. Entries with no live task (not held) are dropped: a new entry
 *		reproduces them.
 *	 2. Entries of unconfigured tenants with no ready or running task are
 *		folded into their queue's overflow entry (counts added, the entry
 *		dropped): their virtual finish time matters only while they have
 *		ready tasks, so nothing but their own line in tq_tenants is lost.
 *	 3. Only for an entry that must exist (a queue, a tenant with a
 *		policy, an overflow entry): an unconfigured tenant entry with work
 *		is folded, one whose queue already has an overflow entry if any.
 *
 * Steps 1 and 2 scan the table at most once a second (sooner when an
 * entry went idle), and always for an entry that must exist.  A tenant
 * whose entry was folded and that gets one again later has some of its
 * tasks counted in the overflow entry: decrements beyond what its own
 * entry counts are taken from the overflow entry (fair_xact.c), so the
 * sum stays exact.  If an entry that must exist finds no room -- every
 * entry is a queue, a configured tenant or an overflow entry -- the state
 * change fails with 53400 and a hint to raise tq.max_tenants: a limit is
 * refused, never skipped.  Each time the table is full is counted
 * (tq_shared_usage) and logged at most once a minute.
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

/* The key of the overflow entry of k's queue (k: any key of the queue). */
void
fair_overflow_key(FairKey *ok, const FairKey *k)
{
	memset(ok, 0, sizeof(FairKey));
	ok->dboid = k->dboid;
	ok->kind = KIND_OVERFLOW;
	strlcpy(ok->queue, k->queue, NAMEDATALEN);
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

/*
 * Says in the server log that the table is full, at most once a minute.
 * Takes the lock; call without it.
 */
void
fair_log_full(void)
{
	TimestampTz now = GetCurrentTimestamp();
	bool say;
	int64 events, folds;

	LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
	say = TimestampDifferenceExceeds(fair_shared->last_full_log, now, 60 * 1000);
	if (say)
		fair_shared->last_full_log = now;
	events = fair_shared->full_events;
	folds = fair_shared->folds;
	LWLockRelease(fair_shared->lock);
	if (say)
		ereport(LOG, (errmsg("tq: all %d fair-dispatch entries are in use", tq_max_tenants),
					  errdetail("Tenants without a policy and without an entry of their own "
								"are counted in their queue's overflow entry and share one fair "
								"share there; every queue and tenant limit still holds. Full %lld "
								"times, %lld tenant entries folded since the server started.",
								(long long) events, (long long) folds),
					  errhint("Raise tq.max_tenants (needs a restart); tq_shared_usage shows "
							  "the table's use.")));
}

/* Counts one time the table was full.  Caller holds the lock exclusively. */
static void
entry_note_full(TimestampTz now)
{
	fair_shared->full_events++;
	fair_shared->last_full_at = now;
}

/* Whether e may be folded: an unconfigured tenant entry with no parked task. */
static bool
entry_foldable(const FairEntry *e)
{
	return (e->key.kind == KIND_TENANT || e->key.kind == KIND_NULL_TENANT) && !e->keep &&
		   !e->held && e->unparked == 0;
}

/* A new entry for k, with default policy (not loaded).  Caller holds the lock. */
static FairEntry *
entry_new(const FairKey *k, TimestampTz now)
{
	FairEntry *e;
	bool found;

	e = hash_search(fair_hash, k, HASH_ENTER_NULL, &found);
	if (e == NULL || found)
		return e;
	memset(((char *) e) + sizeof(FairKey), 0, sizeof(FairEntry) - sizeof(FairKey));
	e->weight = 1.0;
	e->concurrency = -1;
	e->backlog_limit = -1;
	e->aging = 1e6;
	e->tokens_at = now;
	e->floor_key = -INFINITY;
	e->floor_id = PG_INT64_MIN;
	e->low_acc = INFINITY;
	/* A tenant's policy is not known yet: kept until it is read. */
	e->keep = k->kind != KIND_NULL_TENANT;
	/* An overflow entry has no policy to read. */
	e->policy_loaded = k->kind == KIND_OVERFLOW;
	return e;
}

/* Adds a folded entry's counts and clock to an overflow entry. */
static void
entry_merge(FairEntry *o, const FairEntry *v)
{
	for (int s = 0; s < NSTATES; s++)
		o->count[s] += v->count[s];
	if (v->count[ST_READY] > 0)
		o->vclock = Max(o->vclock, v->vclock);
	o->leased += v->leased;
	fair_shared->folds++;
}

/*
 * Folds v into its queue's overflow entry, made from v's slot if missing
 * (then no room is gained).  Caller holds the lock exclusively and is not
 * scanning the table.  Returns the overflow entry.
 */
static FairEntry *
entry_fold(FairEntry *v, TimestampTz now)
{
	FairKey ok;
	FairEntry copy = *v;
	FairEntry *o;

	fair_overflow_key(&ok, &v->key);
	hash_search(fair_hash, &v->key, HASH_REMOVE, NULL);
	o = entry_new(&ok, now); /* the slot just freed, if it is new */
	if (o != NULL)
		entry_merge(o, &copy);
	return o;
}

#define SWEEP_CONVERT 8 /* queues whose overflow entry one sweep may make */

/*
 * Steps 1 and 2 of "Capacity" (file header): drops idle tenant entries and
 * folds unconfigured ones without ready or running tasks.  Those of a queue
 * without an overflow entry are noted during the scan (a scan must not
 * insert), and the first of each makes it afterwards, and the rest are
 * folded in a second scan.  Caller holds the lock exclusively.
 */
static void
entry_sweep(TimestampTz now)
{
	for (int round = 0; round < 2; round++)
	{
		HASH_SEQ_STATUS seq;
		FairEntry *e;
		FairKey convert[SWEEP_CONVERT];
		int nconvert = 0;

		hash_seq_init(&seq, fair_hash);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			FairKey ok;
			FairEntry *o;

			if (e->key.kind == KIND_QUEUE)
				continue;
			if (fair_entry_idle(e))
			{
				hash_search(fair_hash, &e->key, HASH_REMOVE, NULL); /* the current one: allowed */
				continue;
			}
			if (!entry_foldable(e) || e->count[ST_READY] > 0 || e->count[ST_RUNNING] > 0)
				continue;
			fair_overflow_key(&ok, &e->key);
			o = hash_search(fair_hash, &ok, HASH_FIND, NULL);
			if (o != NULL)
			{
				entry_merge(o, e);
				hash_search(fair_hash, &e->key, HASH_REMOVE, NULL);
			}
			else if (nconvert < SWEEP_CONVERT)
			{
				bool seen = false;

				for (int i = 0; i < nconvert && !seen; i++)
					seen = strcmp(convert[i].queue, e->key.queue) == 0 &&
						   convert[i].dboid == e->key.dboid;
				if (!seen)
					convert[nconvert++] = e->key;
			}
		}
		for (int i = 0; i < nconvert; i++)
		{
			FairEntry *v = hash_search(fair_hash, &convert[i], HASH_FIND, NULL);

			if (v != NULL)
				entry_fold(v, now);
		}
		if (nconvert == 0)
			break;
	}
	fair_shared->last_evict_scan = now;
	fair_shared->idle_since_scan = false;
}

/*
 * Step 3 of "Capacity": an unconfigured tenant entry with work to fold so
 * that want can be made.  Best one whose queue has an overflow entry (a
 * slot is gained), then one of want's own queue when want is that queue's
 * overflow entry (it becomes want), then any.  Caller holds the lock.
 */
static FairEntry *
entry_pick_victim(const FairKey *want)
{
	HASH_SEQ_STATUS seq;
	FairEntry *e;
	FairEntry *same = NULL, *any = NULL;

	hash_seq_init(&seq, fair_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		FairKey ok;

		if (!entry_foldable(e))
			continue;
		fair_overflow_key(&ok, &e->key);
		if (hash_search(fair_hash, &ok, HASH_FIND, NULL) != NULL)
		{
			hash_seq_term(&seq);
			return e;
		}
		if (same == NULL && want->kind == KIND_OVERFLOW && memcmp(&ok, want, sizeof(FairKey)) == 0)
			same = e;
		if (any == NULL)
			any = e;
	}
	return same ? same : any;
}

/*
 * Finds or makes the entry of k.  Caller holds the lock exclusively.  New
 * entries start with default policy, not loaded.  When the table is full,
 * makes room as "Capacity" (file header) says: an entry that must exist
 * (must) may fold others; NULL when none could be made (for must: the
 * table holds only entries that are never folded).
 */
FairEntry *
fair_enter(const FairKey *k, bool must, TimestampTz now)
{
	FairEntry *e;

	e = hash_search(fair_hash, k, HASH_FIND, NULL);
	if (e != NULL)
		return e;
	if (hash_get_num_entries(fair_hash) >= tq_max_tenants)
	{
		entry_note_full(now);
		if (must || fair_shared->idle_since_scan ||
			TimestampDifferenceExceeds(fair_shared->last_evict_scan, now, 1000))
			entry_sweep(now);
		for (int i = 0; i < 2 && must && hash_get_num_entries(fair_hash) >= tq_max_tenants; i++)
		{
			FairEntry *v = entry_pick_victim(k);

			if (v == NULL)
				break;
			entry_fold(v, now);
			e = hash_search(fair_hash, k, HASH_FIND, NULL);
			if (e != NULL)
				return e; /* k was the overflow entry v became */
		}
		if (hash_get_num_entries(fair_hash) >= tq_max_tenants)
			return NULL;
	}
	return entry_new(k, now);
}

/*
 * Raises the error for an entry that must exist and found no room (see
 * "Capacity" in the file header).  Call without the lock.
 */
void
fair_refuse_no_room(const FairKey *k)
{
	const char *what = k->kind == KIND_QUEUE    ? "queue"
					   : k->kind == KIND_TENANT ? "tenant"
												: "tenants without an entry of queue";

	ereport(
		ERROR,
		(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
		 k->kind == KIND_TENANT
			 ? errmsg("no room in shared memory for the limits of tenant \"%s\" of queue \"%s\"",
					  k->tenant, k->queue)
			 : errmsg("no room in shared memory for the limits of %s \"%s\"", what, k->queue),
		 errdetail("All %d fair-dispatch entries hold queues, tenants with a policy and the "
				   "overflow entries of queues, which are kept while they count live tasks.",
				   tq_max_tenants),
		 errhint("Raise tq.max_tenants (needs a restart); tq_shared_usage shows the table's "
				 "use.")));
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
	if (k->kind == KIND_NULL_TENANT || k->kind == KIND_OVERFLOW)
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

/*
 * Live tasks of a tenant per state, from tq.task (committed, and this
 * transaction's): what a new entry of a tenant with a policy takes over
 * from its queue's overflow entry (see "Capacity" in the file header).
 */
static void
policy_count_tasks(const FairKey *k, int64 n[NSTATES])
{
	Oid types[2] = {TEXTOID, TEXTOID};
	Datum vals[2];
	int ret;

	memset(n, 0, sizeof(int64) * NSTATES);
	vals[0] = CStringGetTextDatum(k->queue);
	vals[1] = CStringGetTextDatum(k->tenant);
	SPI_connect();
	ret =
		SPI_execute_with_args("SELECT pg_catalog.text(t.state), pg_catalog.count(*) FROM tq.task t"
							  " WHERE t.queue OPERATOR(pg_catalog.=) $1"
							  " AND t.tenant OPERATOR(pg_catalog.=) $2 GROUP BY 1",
							  2, types, vals, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "tq: counting a tenant's tasks failed: %s", SPI_result_code_string(ret));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple t = SPI_tuptable->vals[i];
		char *state = SPI_getvalue(t, SPI_tuptable->tupdesc, 1);
		bool isnull;

		for (int s = 0; s < NSTATES; s++)
			if (strcmp(state, fair_state_names[s]) == 0)
				n[s] = DatumGetInt64(SPI_getbinval(t, SPI_tuptable->tupdesc, 2, &isnull));
	}
	SPI_finish();
}

/*
 * A new entry of a tenant with a policy takes its tasks over from its
 * queue's overflow entry: n counted from the table.  Tasks of
 * transactions still open are not in n; they stay counted where they went
 * and are taken from the overflow entry when they leave their state
 * (fair_xact.c, acct_take_counts).  Caller holds the lock exclusively.
 */
static void
entry_adopt(FairEntry *te, const int64 n[NSTATES])
{
	FairKey ok;
	FairEntry *o;

	fair_overflow_key(&ok, &te->key);
	o = hash_search(fair_hash, &ok, HASH_FIND, NULL);
	for (int s = 0; s < NSTATES; s++)
	{
		if (o != NULL)
			o->count[s] -= Min(n[s], o->count[s]);
		te->count[s] = n[s];
	}
	if (o != NULL && fair_entry_idle(o))
		fair_shared->idle_since_scan = true;
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
	if (e->key.kind == KIND_TENANT)
		e->keep = p->exists;
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

/* What lock_find needs before it can finish (see fair_lock_entries). */
typedef enum LockNeed
{
	LOCK_DONE,   /* entries found, lock held */
	LOCK_POLICY, /* a policy must be read (SPI, without the lock) */
	LOCK_LOG,    /* the table was full and the log line is due */
	LOCK_NO_ROOM /* an entry that must exist found no room */
} LockNeed;

typedef struct LockWant
{
	FairKey qk, tk;
	bool want_tenant;
	Policy qp, tp;
	bool have_qp, have_tp; /* read already */
	bool read_q, read_t;   /* to read before the next attempt */
	bool count_t;          /* and the tenant's tasks, if it has a policy */
	bool have_count;       /* tasks counted into n */
	int64 n[NSTATES];      /* the tenant's live tasks, from tq.task */
	bool logged;           /* the log line was considered */
	int64 events;          /* full_events at the first attempt; -1 before it */
	FairKey refused;       /* for LOCK_NO_ROOM */
} LockWant;

/*
 * One attempt of fair_lock_entries, with the lock held exclusively: finds
 * or makes the entries with the policies read so far.
 */
static LockNeed
lock_find(LockWant *w, FairEntry **qe, FairEntry **te, TimestampTz now)
{
	if (w->events < 0)
		w->events = fair_shared->full_events;
	w->read_q = w->read_t = w->count_t = false;
	*te = NULL;
	*qe = fair_enter(&w->qk, true, now);
	if (*qe == NULL)
	{
		w->refused = w->qk;
		return LOCK_NO_ROOM;
	}
	if (!(*qe)->policy_loaded)
	{
		if (w->have_qp)
			policy_apply(*qe, &w->qp, now);
		else
			w->read_q = true;
	}
	if (w->want_tenant && (*te = hash_search(fair_hash, &w->tk, HASH_FIND, NULL)) == NULL)
	{
		FairKey ok;
		FairEntry *o;

		/*
		 * A new entry.  While the queue's overflow entry counts tasks, a
		 * tenant with a policy takes its own over from it: read the policy,
		 * and count its tasks if it has one.
		 */
		fair_overflow_key(&ok, &w->tk);
		o = hash_search(fair_hash, &ok, HASH_FIND, NULL);
		if (o != NULL && !fair_entry_idle(o) && w->tk.kind == KIND_TENANT &&
			(!w->have_tp || (w->tp.exists && !w->have_count)))
		{
			w->read_t = !w->have_tp;
			w->count_t = true;
			return LOCK_POLICY;
		}
		*te = fair_enter(&w->tk, false, now);
		if (*te == NULL)
		{
			/* No room: a tenant with a policy must have an entry; others fold. */
			if (!w->have_tp)
			{
				w->read_t = true;
				return LOCK_POLICY;
			}
			w->refused = w->tp.exists ? w->tk : ok;
			*te = fair_enter(&w->refused, true, now);
			if (*te == NULL)
				return LOCK_NO_ROOM;
		}
		if (w->have_count && (*te)->key.kind == KIND_TENANT)
			entry_adopt(*te, w->n);
	}
	if (w->want_tenant)
	{
		if (!(*te)->policy_loaded && (*te)->key.kind != KIND_OVERFLOW)
		{
			if (w->have_tp)
				policy_apply(*te, &w->tp, now);
			else
				w->read_t = true;
		}
	}
	if (w->read_q || w->read_t)
		return LOCK_POLICY;
	if (fair_shared->full_events != w->events && !w->logged &&
		TimestampDifferenceExceeds(fair_shared->last_full_log, now, 60 * 1000))
		return LOCK_LOG;
	return LOCK_DONE;
}

/*
 * Finds the queue and tenant entries for a row, making them where needed
 * (see "Capacity" in the file header) and loading their policies with SPI
 * before the lock is taken.  On return the lock is held exclusively and
 * the queue entry is not NULL, nor the tenant entry if wanted: that is
 * the tenant's own or, when the table is full and the tenant has no
 * policy, its queue's overflow entry.  Raises 53400 (without the lock)
 * when an entry that must exist finds no room.
 */
void
fair_lock_entries(const char *queue, const char *tenant, bool want_tenant, FairEntry **qe,
				  FairEntry **te, TimestampTz now)
{
	LockWant w;
	bool reclaimed = false;

	/* Only the flags: the rest is written before it is read (hot path). */
	w.want_tenant = want_tenant;
	w.have_qp = w.have_tp = w.have_count = w.logged = false;
	w.events = -1;
	fair_make_key(&w.qk, queue, NULL, true);
	fair_make_key(&w.tk, queue, tenant, false);
	for (;;)
	{
		LockNeed need;

		LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
		need = lock_find(&w, qe, te, now);
		if (need == LOCK_DONE)
			return;
		LWLockRelease(fair_shared->lock);
		switch (need)
		{
			case LOCK_POLICY:
				/* Read once each; applied even if invalidated meanwhile, as before. */
				if (w.read_q)
					policy_read(&w.qk, &w.qp);
				if (w.read_t)
					policy_read(&w.tk, &w.tp);
				w.have_qp = w.have_qp || w.read_q;
				w.have_tp = w.have_tp || w.read_t;
				if (w.count_t && w.tp.exists && !w.have_count)
				{
					policy_count_tasks(&w.tk, w.n);
					w.have_count = true;
				}
				break;
			case LOCK_LOG:
				/* Entries of dropped databases are not idle, but are garbage. */
				w.logged = true;
				if (!reclaimed)
					reclaimed = fair_reclaim_dropped_dbs();
				fair_log_full();
				break;
			case LOCK_NO_ROOM:
				if (reclaimed || !(reclaimed = fair_reclaim_dropped_dbs()))
				{
					fair_log_full();
					fair_refuse_no_room(&w.refused);
				}
				break;
			case LOCK_DONE:
				break;
		}
	}
}
