/*-------------------------------------------------------------------------
 *
 * fair.c
 *	  Fair dispatch, rate limits, concurrency quotas, back-pressure and
 *	  live counters, in shared memory.
 *
 * Every policy is applied where a task changes state, by one BEFORE ROW
 * trigger on tq.task (tq.task_row, below), so that every path -- submit,
 * lease, promotion, release, reclaim, pause, retry -- goes through it and
 * no SQL function can forget a rule.
 *
 * Entries.  One dynahash, "tq fair", keyed by (database, queue, kind,
 * tenant): a queue entry (kind QUEUE) per queue and a tenant entry per
 * (queue, tenant) with live tasks (the NULL tenant is a tenant of its
 * own).  An entry holds the policy copied from tq.queue / tq.tenant
 * (weight, rate and burst, concurrency, backlog_limit, priority_aging),
 * live counts per state, a token bucket, and a virtual clock: the queue's
 * virtual time V, or the tenant's virtual finish time F.
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
 * ready, in key order, as the tenant's quota frees and its bucket refills.
 *
 * Counters and transactions.  A count goes up as soon as the row changes
 * (undone if the transaction or subtransaction aborts) and goes down only
 * when the transaction commits: the counters never undercount what may
 * become committed, so concurrency quotas and backlog limits hold exactly
 * across concurrent transactions, and a producer's transaction takes no
 * row lock per tenant.  Backend-local accounting of what to undo or apply
 * sits in a small hash per transaction (one slot per entry and
 * subtransaction, however many rows).  PREPARE TRANSACTION of a
 * transaction that changed tasks is refused: its accounting would be
 * orphaned.
 *
 * Rebuild.  Shared memory starts empty after a server start or crash
 * restart.  The first state change in a database (or the first read of
 * its counters) rebuilds that database's entries from tq.task in one
 * aggregate scan -- counts per state, V from the last claimed key, each
 * tenant's F from its highest key -- while other backends of the database
 * wait on a condition variable.  Nothing can change tq.task in between,
 * because every change passes through this trigger first.  Token buckets
 * start full.  CREATE and ALTER EXTENSION reset a database's entries.
 *
 * Scan floor.  A claim leaves the task's dispatch-index entry dead, and
 * PostgreSQL removes such entries only once the claiming transaction's
 * commit is known durable and older than every snapshot; with
 * synchronous_commit = off that takes until the next WAL flush, and every
 * lease meanwhile walked over all of them from the head of the index,
 * visiting a heap page for each (in fair order, a different page each:
 * this was most of the cost of fair dispatch).  So each queue entry keeps
 * a floor in (vkey, id) order before which no committed ready task lies,
 * and tq_lease starts its claim there (tq.lease_floor).  The floor is
 * lowered, when a transaction ends, to the key of every task it made ready
 * (commit) or took out of ready (abort, also of a subtransaction: a claim
 * or a parking undone): by then those tasks are visible to others; the
 * transaction itself starts its probes below tasks it made ready.  It is raised by a probe of the
 * first ready task visible to a fresh snapshot at or after the floor (a
 * task locked by an unfinished claim is visible, so the floor never
 * passes one).  A task made ready by a commit the probe did not see was
 * lowered into low_acc after the floor was read: the raise goes no
 * further than low_acc, and only if no other raise began a new epoch in
 * between (then the probe's result alone is not trusted).  Repeatable
 * read and serializable transactions, whose snapshot may predate the
 * floor, only read it.
 *
 * Capacity.  tq.max_tenants entries in all.  When full, entries of
 * tenants with no live task are evicted (their clocks are behind V or
 * nearly so, which a new entry reproduces).  If none can be evicted, a new
 * tenant is dispatched at V without its own entry: it is still served,
 * but without its own fair share and limits until room frees.  This is
 * logged (at most once a minute), never an error.
 *
 * Locking protocol.  fair_lock (an LWLock of tranche "tq fair") protects
 * the hash and every entry field; holders copy a few numbers, never
 * allocate, never raise an error, never run SQL.  Configuration is read
 * with SPI before the lock is taken, in queries that name every object
 * with its schema (the trigger may run under a caller's search_path).  Each database's rebuild state is an
 * atomic read on the hot path and changed under fair_lock.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_enum.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "tq.h"

PG_FUNCTION_INFO_V1(tq_task_row);
PG_FUNCTION_INFO_V1(tq_lease_room);
PG_FUNCTION_INFO_V1(tq_lease_floor);
PG_FUNCTION_INFO_V1(tq_take_parked);
PG_FUNCTION_INFO_V1(tq_held_work);
PG_FUNCTION_INFO_V1(tq_held_done);
PG_FUNCTION_INFO_V1(tq_held_next);
PG_FUNCTION_INFO_V1(tq_shared_counts);
PG_FUNCTION_INFO_V1(tq_policy_changed);
PG_FUNCTION_INFO_V1(tq_reset_shared);
PG_FUNCTION_INFO_V1(tq_activity);
PG_FUNCTION_INFO_V1(tq_forget_activity);

#define TQ_TENANT_MAX 200 /* tq.check_label's limit for tenants */
#define TQ_MAX_DBS 64     /* databases with tq state at once */

/* Live states counted; the order of tq.task_state's first four labels. */
#define ST_SCHEDULED 0
#define ST_READY 1
#define ST_PAUSED 2
#define ST_RUNNING 3
#define NSTATES 4
static const char *const state_names[NSTATES] = {"scheduled", "ready", "paused", "running"};

/* Activity counted per queue and minute (tq_queue_activity). */
#define ACT_MINUTES 15
#define ACT_KINDS 4
/* kinds: TQ_ACT_SUCCEEDED, _FAILED (an attempt failed, the task will be
 * tried again), _DEAD, _OTHER (cancelled or expired), in tq.h */

#define KIND_QUEUE 0
#define KIND_NULL_TENANT 1
#define KIND_TENANT 2

typedef struct FairKey
{
	Oid dboid;
	int32 kind;
	char queue[NAMEDATALEN];
	char tenant[TQ_TENANT_MAX + 1];
} FairKey;

typedef struct FairEntry
{
	FairKey key;
	/* policy, copied from tq.queue / tq.tenant */
	bool policy_loaded;
	double weight;       /* tenants: share of the queue */
	double rate;         /* tokens per second; 0 = no limit */
	double burst;        /* bucket size */
	int64 concurrency;   /* running tasks at most; -1 = no limit */
	int64 backlog_limit; /* queued tasks at most; -1 = no limit */
	double aging;        /* queues: priority_aging, in rounds */
	/* state */
	int64 count[NSTATES]; /* live tasks per state */
	double vclock;        /* queue: V; tenant: F */
	double tokens;        /* bucket content at tokens_at */
	TimestampTz tokens_at;
	int64 leased;      /* claims since the entry was made */
	double lease_rate; /* claims per second, smoothed */
	int64 rate_leased; /* value of leased at rate_at */
	TimestampTz rate_at;
	bool held;       /* has parked tasks waiting for room */
	int64 unparked;  /* tasks moved back to ready, not yet claimed (about) */
	uint32 held_gen; /* bumped whenever held is set */
	/* queues: the scan floor (see "Scan floor" in the file header) */
	double floor_key;   /* no committed ready task sorts before */
	int64 floor_id;     /* (floor_key, floor_id) in (vkey, id) order */
	double low_acc;     /* lowest key lowered since floor_epoch began */
	uint32 floor_epoch; /* bumped at every raise attempt that may succeed */
	/* queues: what happened per minute, the last ACT_MINUTES minutes */
	int32 act_minute[ACT_MINUTES];     /* the minute each slot counts */
	int32 act[ACT_MINUTES][ACT_KINDS]; /* ACT_* per minute */
} FairEntry;

#define DB_EMPTY 0
#define DB_BUILDING 1
#define DB_READY 2

typedef struct FairDb
{
	Oid dboid;
	pg_atomic_uint32 state;
} FairDb;

typedef struct FairShared
{
	LWLock *lock;
	ConditionVariable cv; /* rebuilds finishing */
	FairDb dbs[TQ_MAX_DBS];
	TimestampTz last_full_log; /* last "table full" log line */
	TimestampTz last_evict_scan;
	bool idle_since_scan; /* a tenant entry went idle since the last scan */
	int nheld;            /* entries with held set */
} FairShared;

static FairShared *fair = NULL;
static HTAB *fair_hash = NULL;

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

	fair = ShmemInitStruct("tq fair state", sizeof(FairShared), &found);
	if (!found)
	{
		memset(fair, 0, sizeof(FairShared));
		fair->lock = &(GetNamedLWLockTranche("tq fair"))->lock;
		ConditionVariableInit(&fair->cv);
		for (int i = 0; i < TQ_MAX_DBS; i++)
			pg_atomic_init_u32(&fair->dbs[i].state, DB_EMPTY);
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
static void
make_key(FairKey *k, const char *queue, const char *tenant, bool queue_entry)
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

static bool
entry_idle(const FairEntry *e)
{
	for (int s = 0; s < NSTATES; s++)
		if (e->count[s] != 0)
			return false;
	return !e->held;
}

/* Bucket content now (no change to the entry).  Caller holds the lock. */
static double
tokens_now(const FairEntry *e, TimestampTz now)
{
	double t;

	if (e->rate <= 0)
		return INFINITY;
	t = e->tokens;
	if (now > e->tokens_at)
		t += (double) (now - e->tokens_at) / USECS_PER_SEC * e->rate;
	return Min(t, e->burst);
}

/* Claims the entry would allow now.  Caller holds the lock. */
static double
room_now(const FairEntry *e, TimestampTz now)
{
	double room = INFINITY;

	if (e->concurrency >= 0)
		room = (double) (e->concurrency - e->count[ST_RUNNING]);
	if (e->rate > 0)
		room = Min(room, floor(tokens_now(e, now)));
	return room;
}

static void
take_token(FairEntry *e, TimestampTz now)
{
	if (e->rate <= 0)
		return;
	e->tokens = tokens_now(e, now) - 1.0;
	e->tokens_at = now;
}

/* Smoothed claims per second, for retry-after estimates. */
static void
count_lease(FairEntry *e, TimestampTz now)
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
static double
drain_rate(const FairEntry *e, TimestampTz now)
{
	double idle;

	if (e->rate_at == 0 || e->lease_rate <= 0)
		return 0;
	idle = (double) (now - e->rate_at) / USECS_PER_SEC;
	return idle > 60 ? 0 : e->lease_rate;
}

static void
log_full(void)
{
	TimestampTz now = GetCurrentTimestamp();
	bool say;

	LWLockAcquire(fair->lock, LW_EXCLUSIVE);
	say = TimestampDifferenceExceeds(fair->last_full_log, now, 60 * 1000);
	if (say)
		fair->last_full_log = now;
	LWLockRelease(fair->lock);
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
evict_idle(TimestampTz now)
{
	HASH_SEQ_STATUS seq;
	FairEntry *e;

	if (!fair->idle_since_scan && !TimestampDifferenceExceeds(fair->last_evict_scan, now, 1000))
		return;
	fair->last_evict_scan = now;
	fair->idle_since_scan = false;
	hash_seq_init(&seq, fair_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->key.kind != KIND_QUEUE && entry_idle(e))
			hash_search(fair_hash, &e->key, HASH_REMOVE, NULL);
}

/*
 * Finds or makes an entry.  Caller holds the lock exclusively.  New
 * entries start with default policy, not loaded.  NULL when the table is
 * full (caller degrades).
 */
static FairEntry *
enter(const FairKey *k, TimestampTz now, bool *full)
{
	FairEntry *e;
	bool found;

	e = hash_search(fair_hash, k, HASH_FIND, NULL);
	if (e != NULL)
		return e;
	if (hash_get_num_entries(fair_hash) >= tq_max_tenants)
		evict_idle(now);
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

/*
 * The bounds of the SQL checks (tq.check_queue_options, tq.check_limits,
 * tq_set_tenant), within which the arithmetic on each setting (1/weight,
 * the priority shift, a bucket's refill time) stays finite.
 */
#define TQ_WEIGHT_MIN 0.001
#define TQ_WEIGHT_MAX 1e6
#define TQ_RATE_MIN 1e-6
#define TQ_RATE_MAX 1e9
#define TQ_BURST_MAX 1e12
#define TQ_AGING_MIN 0.001
#define TQ_AGING_MAX 1e12

/* v within [lo, hi]; dflt when it is not a number. */
static double
clamp_policy(double v, double lo, double hi, double dflt)
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
sanitize_policy(const FairKey *k, Policy *p)
{
	Policy in = *p;

	p->weight = clamp_policy(p->weight, TQ_WEIGHT_MIN, TQ_WEIGHT_MAX, 1.0);
	if (!(p->rate > 0))
		p->rate = 0;
	else
		p->rate = clamp_policy(p->rate, TQ_RATE_MIN, TQ_RATE_MAX, 0);
	if (p->rate > 0)
		p->burst = clamp_policy(p->burst, 1.0, TQ_BURST_MAX, Max(1.0, p->rate));
	p->aging = clamp_policy(p->aging, TQ_AGING_MIN, TQ_AGING_MAX, 1e6);
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
getf8(HeapTuple tup, TupleDesc td, int col, double dflt)
{
	bool isnull;
	Datum d = SPI_getbinval(tup, td, col, &isnull);

	return isnull ? dflt : DatumGetFloat8(d);
}

static int64
geti8(HeapTuple tup, TupleDesc td, int col, int64 dflt)
{
	bool isnull;
	Datum d = SPI_getbinval(tup, td, col, &isnull);

	return isnull ? dflt : DatumGetInt64(d);
}

/* Reads the policy of a queue (tenant_kind false) or of a tenant. */
static void
read_policy(const FairKey *k, Policy *p)
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
		p->weight = getf8(t, td, 1, 1.0);
		p->rate = getf8(t, td, 2, 0);
		p->burst = getf8(t, td, 3, 0);
		p->concurrency = geti8(t, td, 4, -1);
		p->backlog_limit = geti8(t, td, 5, -1);
		p->aging = getf8(t, td, 6, 1e6);
		if (p->rate > 0 && p->burst < 1)
			p->burst = Max(1.0, p->rate);
	}
	SPI_finish();
	sanitize_policy(k, p);
}

/* Copies a policy into an entry.  Caller holds the lock. */
static void
apply_policy(FairEntry *e, const Policy *p, TimestampTz now)
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
		e->tokens = Min(tokens_now(e, now), e->burst);
		e->tokens_at = now;
	}
	e->policy_loaded = true;
}

/* ------------------------------------------------------------------------
 * Backend-local accounting
 * ------------------------------------------------------------------------
 */
typedef struct LocalKey
{
	FairKey fk;
	SubTransactionId subid;
} LocalKey;

typedef struct LocalAcct
{
	LocalKey key;
	int64 applied[NSTATES];  /* increments made; undone on abort */
	int64 deferred[NSTATES]; /* decrements to make at commit */
	bool set_held;           /* tenant parked tasks: mark held at commit */
	bool clear_held;         /* none parked left (as of clear_gen): clear at commit */
	uint32 clear_gen;
	double lower;     /* queues: lowest key of tasks made ready; floor at commit */
	double taken_min; /* queues: lowest key taken out of ready; floor at abort */
} LocalAcct;

static HTAB *local_acct = NULL;
static bool local_callbacks = false;

/*
 * Policies this transaction changed: their entries re-read the tables at
 * once (so the transaction sees its change) and again when it ends, commit
 * or abort (so nobody keeps a policy read in between: the old one by a
 * concurrent session, or this transaction's rolled-back one).
 */
#define MAX_PENDING_INVAL 64
static FairKey pending_inval[MAX_PENDING_INVAL];
static int npending_inval = 0;
static bool pending_inval_all = false;
static int64 parked_in_xact = 0; /* for tq.take_parked */

static void fair_xact_callback(XactEvent event, void *arg);
static void fair_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
								  SubTransactionId parentSubid, void *arg);

/*
 * Activity of this transaction per queue and subtransaction, added to the
 * queue entries' minute slots at commit.  An aborted subtransaction's is
 * dropped, a committed one's goes to its parent, and an aborted
 * transaction's is dropped whole.  A transaction that touches more than
 * MAX_PENDING_ACT (queue, subtransaction) pairs counts only the first
 * ones: these are rates for people, not quotas.
 */
#define MAX_PENDING_ACT 32
typedef struct PendingAct
{
	char queue[NAMEDATALEN];
	SubTransactionId subid;
	int32 n[ACT_KINDS];
	bool reset; /* the queue was dropped: its minutes start from zero */
} PendingAct;
static PendingAct pending_act[MAX_PENDING_ACT];
static int npending_act = 0;

static void
ensure_callbacks(void)
{
	if (!local_callbacks)
	{
		RegisterXactCallback(fair_xact_callback, NULL);
		RegisterSubXactCallback(fair_subxact_callback, NULL);
		local_callbacks = true;
	}
}

/* The pending activity of a queue in a subtransaction, or NULL. */
static PendingAct *
find_pending(const char *queue, SubTransactionId subid)
{
	for (int i = 0; i < npending_act; i++)
		if (pending_act[i].subid == subid && strcmp(pending_act[i].queue, queue) == 0)
			return &pending_act[i];
	return NULL;
}

/*
 * The current subtransaction's pending activity of a queue; NULL when the
 * list is full.
 */
static PendingAct *
pending_for(const char *queue)
{
	SubTransactionId subid = GetCurrentSubTransactionId();
	PendingAct *p;

	ensure_callbacks();
	p = find_pending(queue, subid);
	if (p != NULL || npending_act == MAX_PENDING_ACT)
		return p;
	p = &pending_act[npending_act++];
	memset(p, 0, sizeof(PendingAct));
	strlcpy(p->queue, queue, NAMEDATALEN);
	p->subid = subid;
	return p;
}

/*
 * At the end of subtransaction subid: its pending activity goes to its
 * parent (commit), or is dropped (abort).
 */
static void
pending_subxact_end(bool commit, SubTransactionId subid, SubTransactionId parent)
{
	int kept = 0;

	for (int i = 0; i < npending_act; i++)
	{
		PendingAct *c = &pending_act[i];

		if (c->subid == subid)
		{
			PendingAct *p;

			if (!commit)
				continue; /* dropped */
			p = find_pending(c->queue, parent);
			if (p == NULL)
				c->subid = parent; /* kept below, as the parent's */
			else
			{
				/* A drop in the child forgets what the parent noted before. */
				for (int j = 0; j < ACT_KINDS; j++)
					p->n[j] = (c->reset ? 0 : p->n[j]) + c->n[j];
				p->reset = p->reset || c->reset;
				continue;
			}
		}
		if (kept != i)
			pending_act[kept] = pending_act[i];
		kept++;
	}
	npending_act = kept;
}

void
tq_fair_note_activity(const char *queue, int kind, int n)
{
	PendingAct *p = pending_for(queue);

	if (p != NULL)
		p->n[kind] += n;
}

static int32
minute_now(void)
{
	return (int32) (GetCurrentTimestamp() / (USECS_PER_SEC * 60));
}

/* At commit: the transaction's activity into the queues' minute slots. */
static void
apply_activity(void)
{
	int32 minute = minute_now();
	int slot = minute % ACT_MINUTES;

	if (npending_act == 0 || fair == NULL)
		return;
	LWLockAcquire(fair->lock, LW_EXCLUSIVE);
	for (int i = 0; i < npending_act; i++)
	{
		FairKey k;
		FairEntry *e;

		memset(&k, 0, sizeof(k));
		k.dboid = MyDatabaseId;
		k.kind = KIND_QUEUE;
		strlcpy(k.queue, pending_act[i].queue, NAMEDATALEN);
		e = hash_search(fair_hash, &k, HASH_FIND, NULL);
		if (e == NULL)
			continue;
		if (pending_act[i].reset)
		{
			memset(e->act, 0, sizeof(e->act));
			memset(e->act_minute, 0, sizeof(e->act_minute));
		}
		if (e->act_minute[slot] != minute)
		{
			e->act_minute[slot] = minute;
			memset(e->act[slot], 0, sizeof(e->act[slot]));
		}
		for (int j = 0; j < ACT_KINDS; j++)
			e->act[slot][j] += pending_act[i].n[j];
	}
	LWLockRelease(fair->lock);
}

static void
acct_init(LocalAcct *a)
{
	memset(a->applied, 0, sizeof(a->applied));
	memset(a->deferred, 0, sizeof(a->deferred));
	a->set_held = false;
	a->clear_held = false;
	a->lower = INFINITY;
	a->taken_min = INFINITY;
}

static LocalAcct *
local_slot(const FairKey *fk)
{
	LocalKey lk;
	bool found;
	LocalAcct *a;

	ensure_callbacks();
	if (local_acct == NULL)
	{
		HASHCTL info;

		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(LocalKey);
		info.entrysize = sizeof(LocalAcct);
		info.hcxt = TopMemoryContext;
		local_acct =
			hash_create("tq local accounting", 16, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&lk, 0, sizeof(lk));
	lk.fk = *fk;
	lk.subid = GetCurrentSubTransactionId();
	a = hash_search(local_acct, &lk, HASH_ENTER, &found);
	if (!found)
		acct_init(a);
	return a;
}

/* Marks entries for a policy re-read.  Caller holds the lock exclusively. */
static void
invalidate(const FairKey *k)
{
	HASH_SEQ_STATUS seq;
	FairEntry *e;

	if (k->kind == KIND_QUEUE)
	{
		/* A queue created, altered or dropped: all its entries re-read. */
		hash_seq_init(&seq, fair_hash);
		while ((e = hash_seq_search(&seq)) != NULL)
			if (e->key.dboid == k->dboid && strcmp(e->key.queue, k->queue) == 0)
				e->policy_loaded = false;
	}
	else if ((e = hash_search(fair_hash, k, HASH_FIND, NULL)) != NULL)
		e->policy_loaded = false;
}

/* At transaction end: re-read the policies the transaction touched. */
static void
settle_invalidations(void)
{
	HASH_SEQ_STATUS seq;
	FairEntry *e;

	if (fair == NULL || (npending_inval == 0 && !pending_inval_all))
		return;
	LWLockAcquire(fair->lock, LW_EXCLUSIVE);
	if (pending_inval_all)
	{
		hash_seq_init(&seq, fair_hash);
		while ((e = hash_seq_search(&seq)) != NULL)
			if (e->key.dboid == MyDatabaseId)
				e->policy_loaded = false;
	}
	else
		for (int i = 0; i < npending_inval; i++)
			invalidate(&pending_inval[i]);
	LWLockRelease(fair->lock);
	npending_inval = 0;
	pending_inval_all = false;
}

/*
 * Empties the accounting for the next transaction.  The table is kept:
 * creating one per transaction was a measurable share of a one-row submit.
 */
static void
local_reset(void)
{
	HASH_SEQ_STATUS seq;
	LocalAcct *a;

	if (local_acct != NULL && hash_get_num_entries(local_acct) > 0)
	{
		if (hash_get_num_entries(local_acct) > 1024)
		{
			/* A huge transaction: give the memory back. */
			hash_destroy(local_acct);
			local_acct = NULL;
		}
		else
		{
			hash_seq_init(&seq, local_acct);
			while ((a = hash_seq_search(&seq)) != NULL)
				hash_search(local_acct, &a->key, HASH_REMOVE, NULL);
		}
	}
	parked_in_xact = 0;
}

/*
 * Lowers a queue's scan floor to key (+inf: nothing to do).  Called with
 * the lock held, after the tasks concerned became visible to others: see
 * "Scan floor" in the file header.
 */
static void
lower_floor(FairEntry *e, double key)
{
	if (e->key.kind != KIND_QUEUE || !(key < INFINITY))
		return;
	if (key <= e->floor_key)
	{
		e->floor_key = key;
		e->floor_id = PG_INT64_MIN;
	}
	e->low_acc = Min(e->low_acc, key);
}

/*
 * Applies (commit) or undoes (abort) the accounting in the local slots
 * selected by subid (InvalidSubTransactionId: all).  Must not fail.
 */
static void
settle(bool commit, SubTransactionId subid)
{
	HASH_SEQ_STATUS seq;
	LocalAcct *a;
	bool wake = false;
	TimestampTz now;

	if (local_acct == NULL || fair == NULL)
		return;
	now = GetCurrentTimestamp();
	LWLockAcquire(fair->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, local_acct);
	while ((a = hash_seq_search(&seq)) != NULL)
	{
		FairEntry *e;

		if (subid != InvalidSubTransactionId && a->key.subid != subid)
			continue;
		e = hash_search(fair_hash, &a->key.fk, HASH_FIND, NULL);
		if (e != NULL)
		{
			for (int s = 0; s < NSTATES; s++)
			{
				int64 d = commit ? -a->deferred[s] : -a->applied[s];

				e->count[s] = Max(e->count[s] + d, 0);
			}
			if (e->key.kind != KIND_QUEUE && entry_idle(e))
				fair->idle_since_scan = true;
			if (commit && a->clear_held && e->held && e->held_gen == a->clear_gen)
			{
				e->held = false;
				fair->nheld--;
			}
			if (commit && a->set_held)
			{
				if (!e->held)
					fair->nheld++;
				e->held = true;
				e->held_gen++;
				wake = true;
			}
			if (commit && e->held && a->deferred[ST_RUNNING] > 0 && room_now(e, now) >= 1)
				wake = true;
			/* Tasks made ready (commit), or claims undone (abort). */
			lower_floor(e, commit ? a->lower : a->taken_min);
		}
		if (subid != InvalidSubTransactionId)
			hash_search(local_acct, &a->key, HASH_REMOVE, NULL);
	}
	LWLockRelease(fair->lock);

	if (wake)
		tq_wake_worker_for_housekeeping();
}

static void
fair_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (local_acct != NULL && hash_get_num_entries(local_acct) > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that changed tq tasks"),
						 errdetail("tq keeps its counters and quotas in shared memory, settled "
								   "when the changing transaction commits."),
						 errhint("Submit and finish tasks outside two-phase transactions.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			settle(true, InvalidSubTransactionId);
			settle_invalidations();
			apply_activity();
			npending_act = 0;
			local_reset();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			settle(false, InvalidSubTransactionId);
			settle_invalidations();
			npending_act = 0;
			local_reset();
			break;
		default:
			break;
	}
}

static void
fair_subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid,
					  void *arg)
{
	HASH_SEQ_STATUS seq;
	LocalAcct *a;

	if (event == SUBXACT_EVENT_ABORT_SUB || event == SUBXACT_EVENT_COMMIT_SUB)
		pending_subxact_end(event == SUBXACT_EVENT_COMMIT_SUB, mySubid, parentSubid);
	if (local_acct == NULL)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
		settle(false, mySubid);
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		/* Hand the slots to the parent (merging). */
		List *moved = NIL;
		ListCell *lc;

		hash_seq_init(&seq, local_acct);
		while ((a = hash_seq_search(&seq)) != NULL)
			if (a->key.subid == mySubid)
			{
				LocalAcct *copy = MemoryContextAlloc(TopTransactionContext, sizeof(LocalAcct));

				memcpy(copy, a, sizeof(LocalAcct));
				moved = lappend(moved, copy);
			}
		foreach (lc, moved)
		{
			LocalAcct *c = lfirst(lc);
			LocalAcct *p;
			bool found;

			hash_search(local_acct, &c->key, HASH_REMOVE, NULL);
			c->key.subid = parentSubid;
			p = hash_search(local_acct, &c->key, HASH_ENTER, &found);
			if (!found)
				acct_init(p);
			p->lower = Min(p->lower, c->lower);
			p->taken_min = Min(p->taken_min, c->taken_min);
			for (int s = 0; s < NSTATES; s++)
			{
				p->applied[s] += c->applied[s];
				p->deferred[s] += c->deferred[s];
			}
			p->set_held |= c->set_held;
			if (c->clear_held)
			{
				p->clear_held = true;
				p->clear_gen = c->clear_gen;
			}
		}
	}
}

/* ------------------------------------------------------------------------
 * Rebuild from tq.task
 * ------------------------------------------------------------------------
 */
/*
 * Frees the slots (and entries) of databases that no longer exist.
 * Returns whether one was freed.  Reads the catalog, so it runs before
 * the lock is taken; a database dropped is never used again, so the check
 * cannot go stale.
 */
static bool
reclaim_dropped_dbs(void)
{
	Oid gone[TQ_MAX_DBS];
	int ngone = 0;
	HASH_SEQ_STATUS seq;
	FairEntry *e;

	for (int i = 0; i < TQ_MAX_DBS; i++)
	{
		Oid db = fair->dbs[i].dboid;

		if (OidIsValid(db) && !SearchSysCacheExists1(DATABASEOID, ObjectIdGetDatum(db)))
			gone[ngone++] = db;
	}
	if (ngone == 0)
		return false;
	LWLockAcquire(fair->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, fair_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		for (int j = 0; j < ngone; j++)
			if (e->key.dboid == gone[j])
			{
				if (e->held)
					fair->nheld--;
				hash_search(fair_hash, &e->key, HASH_REMOVE, NULL);
				break;
			}
	for (int i = 0; i < TQ_MAX_DBS; i++)
		for (int j = 0; j < ngone; j++)
			if (fair->dbs[i].dboid == gone[j])
			{
				pg_atomic_write_u32(&fair->dbs[i].state, DB_EMPTY);
				fair->dbs[i].dboid = InvalidOid;
			}
	LWLockRelease(fair->lock);
	return true;
}

static FairDb *
my_db(bool create)
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
		if (fair->dbs[i].dboid == MyDatabaseId)
			return mine = &fair->dbs[i];
		if (fair->dbs[i].dboid == InvalidOid && freeslot == NULL)
			freeslot = &fair->dbs[i];
	}
	if (!create)
		return NULL;
	if (freeslot == NULL && reclaim_dropped_dbs())
		return my_db(true);
	if (freeslot == NULL)
		return NULL;
	LWLockAcquire(fair->lock, LW_EXCLUSIVE);
	for (int i = 0; i < TQ_MAX_DBS; i++)
		if (fair->dbs[i].dboid == MyDatabaseId)
		{
			LWLockRelease(fair->lock);
			return &fair->dbs[i];
		}
	if (freeslot->dboid != InvalidOid)
	{
		LWLockRelease(fair->lock);
		return my_db(true);
	}
	freeslot->dboid = MyDatabaseId;
	pg_atomic_write_u32(&freeslot->state, DB_EMPTY);
	LWLockRelease(fair->lock);
	return mine = freeslot;
}

/* Removes every entry of this database.  Caller holds the lock. */
static void
drop_db_entries(void)
{
	HASH_SEQ_STATUS seq;
	FairEntry *e;

	hash_seq_init(&seq, fair_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->key.dboid == MyDatabaseId)
		{
			if (e->held)
				fair->nheld--;
			hash_search(fair_hash, &e->key, HASH_REMOVE, NULL);
		}
}

typedef struct RebuildRow
{
	FairKey key;
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
	double sane = clamp_policy(aging, TQ_AGING_MIN, TQ_AGING_MAX, 1e6);

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

static void
rebuild(void)
{
	int ret;
	List *rows = NIL;
	ListCell *lc;
	TimestampTz now = GetCurrentTimestamp();
	bool full = false;
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
	ret = SPI_execute("SELECT t.queue, t.tenant, pg_catalog.text(t.state), t.priority,"
					  " pg_catalog.count(*), pg_catalog.max(t.vkey), pg_catalog.min(t.vkey),"
					  " q.priority_aging::pg_catalog.float8"
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
		make_key(&k, queue, tenant, false);
		for (int s = 0; s < NSTATES; s++)
			if (strcmp(state, state_names[s]) == 0)
				st = s;
		if (r == NULL || r->state != st || memcmp(&r->key, &k, sizeof(FairKey)) != 0)
		{
			r = MemoryContextAllocZero(oldcxt, sizeof(RebuildRow));
			r->key = k;
			r->state = st;
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

	LWLockAcquire(fair->lock, LW_EXCLUSIVE);
	drop_db_entries();
	foreach (lc, rows)
	{
		RebuildRow *r = lfirst(lc);
		FairKey qk;
		FairEntry *qe;
		FairEntry *te;

		if (r->state < 0)
			continue;
		make_key(&qk, r->key.queue, NULL, true);
		qe = enter(&qk, now, &full);
		te = enter(&r->key, now, &full);
		if (qe != NULL)
		{
			qe->count[r->state] += r->n;
			/* V: the highest key claimed (running), else the lowest ready. */
			if (r->state == ST_RUNNING && r->has_max)
				qe->vclock = Max(qe->vclock, r->maxkey);
		}
		if (te != NULL)
		{
			te->count[r->state] += r->n;
			if (r->has_max)
				te->vclock = Max(te->vclock, r->maxkey + 1.0);
			if (r->state == ST_PAUSED && !te->held)
			{
				te->held = true;
				te->held_gen++;
				fair->nheld++;
			}
		}
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
		make_key(&qk, r->key.queue, NULL, true);
		qe = hash_search(fair_hash, &qk, HASH_FIND, NULL);
		if (qe != NULL)
			qe->vclock = Max(qe->vclock, lowest);
	}
	LWLockRelease(fair->lock);
	if (full)
		log_full();
}

/*
 * Makes sure this database's entries reflect tq.task.  The fast path is
 * one atomic read.
 */
static void
ensure_ready(void)
{
	FairDb *db;

	if (fair == NULL)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("tq's shared memory is not initialised"),
						errhint("Load tq through shared_preload_libraries.")));
	db = my_db(true);
	if (db == NULL)
		ereport(ERROR, (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						errmsg("tq serves at most %d databases per server", TQ_MAX_DBS)));
	if (pg_atomic_read_u32(&db->state) == DB_READY)
		return;

	for (;;)
	{
		bool mine = false;

		LWLockAcquire(fair->lock, LW_EXCLUSIVE);
		if (pg_atomic_read_u32(&db->state) == DB_READY)
		{
			LWLockRelease(fair->lock);
			break;
		}
		if (pg_atomic_read_u32(&db->state) == DB_EMPTY)
		{
			pg_atomic_write_u32(&db->state, DB_BUILDING);
			mine = true;
		}
		LWLockRelease(fair->lock);

		if (mine)
		{
			PG_TRY();
			{
				rebuild();
			}
			PG_CATCH();
			{
				pg_atomic_write_u32(&db->state, DB_EMPTY);
				ConditionVariableBroadcast(&fair->cv);
				PG_RE_THROW();
			}
			PG_END_TRY();
			pg_atomic_write_u32(&db->state, DB_READY);
			ConditionVariableBroadcast(&fair->cv);
			break;
		}
		ConditionVariablePrepareToSleep(&fair->cv);
		while (pg_atomic_read_u32(&db->state) == DB_BUILDING)
			ConditionVariableTimedSleep(&fair->cv, 100, PG_WAIT_EXTENSION);
		ConditionVariableCancelSleep();
	}
}

/*
 * Finds the queue and tenant entries for a row, loading their policies
 * with SPI where needed.  On return the lock is held exclusively; either
 * entry may be NULL (table full).
 */
static void
lock_entries(const char *queue, const char *tenant, bool want_tenant, FairEntry **qe,
			 FairEntry **te, TimestampTz now)
{
	FairKey qk, tk;
	bool full = false;
	Policy qp, tp;
	bool need_q, need_t;

	make_key(&qk, queue, NULL, true);
	make_key(&tk, queue, tenant, false);
	LWLockAcquire(fair->lock, LW_EXCLUSIVE);
	*qe = enter(&qk, now, &full);
	*te = want_tenant ? enter(&tk, now, &full) : NULL;
	need_q = *qe != NULL && !(*qe)->policy_loaded;
	need_t = *te != NULL && !(*te)->policy_loaded;
	if (!need_q && !need_t)
	{
		if (full)
		{
			bool reclaimed;

			LWLockRelease(fair->lock);
			/* Entries of dropped databases are not idle, but are garbage. */
			reclaimed = reclaim_dropped_dbs();
			if (!reclaimed)
				log_full();
			LWLockAcquire(fair->lock, LW_EXCLUSIVE);
			full = false;
			*qe = reclaimed ? enter(&qk, now, &full) : hash_search(fair_hash, &qk, HASH_FIND, NULL);
			if (want_tenant)
				*te = reclaimed ? enter(&tk, now, &full)
								: hash_search(fair_hash, &tk, HASH_FIND, NULL);
			else
				*te = NULL;
		}
		return;
	}
	LWLockRelease(fair->lock);
	if (need_q)
		read_policy(&qk, &qp);
	if (need_t)
		read_policy(&tk, &tp);
	LWLockAcquire(fair->lock, LW_EXCLUSIVE);
	*qe = enter(&qk, now, &full);
	*te = want_tenant ? enter(&tk, now, &full) : NULL;
	if (need_q && *qe != NULL && !(*qe)->policy_loaded)
		apply_policy(*qe, &qp, now);
	if (need_t && *te != NULL && !(*te)->policy_loaded)
		apply_policy(*te, &tp, now);
}

/* ------------------------------------------------------------------------
 * The trigger
 * ------------------------------------------------------------------------
 */
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

static TaskCols cols;

static char *row_text(HeapTuple tup, TupleDesc td, int att);
static void check_row_owner(Relation rel, HeapTuple oldt, HeapTuple newt, TupleDesc desc,
							const char *queue, const char *tenant);

static void
init_cols(Relation rel)
{
	TupleDesc td = RelationGetDescr(rel);
	Oid enumtype;

	if (cols.relid == RelationGetRelid(rel) && cols.natts == td->natts)
		return;
	cols.att_state = SPI_fnumber(td, "state");
	cols.att_queue = SPI_fnumber(td, "queue");
	cols.att_tenant = SPI_fnumber(td, "tenant");
	cols.att_priority = SPI_fnumber(td, "priority");
	cols.att_vkey = SPI_fnumber(td, "vkey");
	if (cols.att_state <= 0 || cols.att_queue <= 0 || cols.att_tenant <= 0 ||
		cols.att_priority <= 0 || cols.att_vkey <= 0)
		elog(ERROR, "tq.task_row: table \"%s\" lacks a column of tq.task",
			 RelationGetRelationName(rel));
	cols.att_trace = SPI_fnumber(td, "trace");
	cols.att_attempt = SPI_fnumber(td, "attempt");
	cols.att_worker = SPI_fnumber(td, "worker");
	cols.att_run_at = SPI_fnumber(td, "run_at");
	cols.att_submitted_at = SPI_fnumber(td, "submitted_at");
	cols.att_started_at = SPI_fnumber(td, "started_at");
	cols.att_last_error = SPI_fnumber(td, "last_error");
	cols.att_throttles = SPI_fnumber(td, "throttles");
	if (cols.att_attempt <= 0 || cols.att_worker <= 0 || cols.att_run_at <= 0 ||
		cols.att_submitted_at <= 0 || cols.att_started_at <= 0 || cols.att_last_error <= 0 ||
		cols.att_throttles <= 0)
		cols.att_trace = 0; /* not the shape the trace needs: no trace */
	enumtype = TupleDescAttr(td, cols.att_state - 1)->atttypid;
	for (int s = 0; s < NSTATES; s++)
	{
		cols.state_oid[s] =
			GetSysCacheOid2(ENUMTYPOIDNAME, Anum_pg_enum_oid, ObjectIdGetDatum(enumtype),
							CStringGetDatum(state_names[s]));
		if (!OidIsValid(cols.state_oid[s]))
			elog(ERROR, "tq.task_row: state type lacks label \"%s\"", state_names[s]);
	}
	cols.relid = RelationGetRelid(rel);
	cols.natts = td->natts;
}

/*
 * The trace of a task leaving running for ready (handed back) or
 * scheduled (to be tried again: throttled if it used a free attempt): the
 * attempt that ended, from the old row (trace.c).
 */
static Datum
trace_leave(HeapTuple oldt, HeapTuple newt, TupleDesc desc, bool to_ready, bool *isnull)
{
	bool tnull, n;
	Datum trace = heap_getattr(newt, cols.att_trace, desc, &tnull);
	int32 attempt = DatumGetInt32(heap_getattr(oldt, cols.att_attempt, desc, &n));
	TimestampTz run_at = DatumGetTimestampTz(heap_getattr(oldt, cols.att_run_at, desc, &n));
	TimestampTz submitted =
		DatumGetTimestampTz(heap_getattr(oldt, cols.att_submitted_at, desc, &n));
	Datum started = heap_getattr(oldt, cols.att_started_at, desc, &n);
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	const char *outcome;

	if (to_ready)
		outcome = "released";
	else if (DatumGetInt32(heap_getattr(newt, cols.att_throttles, desc, &n)) >
			 DatumGetInt32(heap_getattr(oldt, cols.att_throttles, desc, &n)))
		outcome = "throttled";
	else
		outcome = "failed";
	*isnull = false;
	return tq_trace_append(trace, tnull, attempt, Max(run_at, submitted),
						   n ? now : DatumGetTimestampTz(started),
						   row_text(oldt, desc, cols.att_worker), now, outcome,
						   to_ready ? NULL : row_text(newt, desc, cols.att_last_error));
}

static int
row_state(HeapTuple tup, TupleDesc td)
{
	bool isnull;
	Oid v = DatumGetObjectId(heap_getattr(tup, cols.att_state, td, &isnull));

	if (isnull)
		return -1;
	for (int s = 0; s < NSTATES; s++)
		if (cols.state_oid[s] == v)
			return s;
	return -1;
}

static char *
row_text(HeapTuple tup, TupleDesc td, int att)
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
check_row_owner(Relation rel, HeapTuple oldt, HeapTuple newt, TupleDesc desc, const char *queue,
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
	old_queue = row_text(oldt, desc, cols.att_queue);
	old_tenant = row_text(oldt, desc, cols.att_tenant);
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
check_backlog(FairEntry *qe, FairEntry *te, const char *queue, const char *tenant, TimestampTz now)
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
			rate = drain_rate(e, now);
		}
	}
	if (over == NULL)
		return;
	LWLockRelease(fair->lock);
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
dispatch_key(FairEntry *qe, FairEntry *te, int priority)
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
account(const FairEntry *e, int s, int delta)
{
	LocalAcct *a;

	if (e == NULL || s < 0)
		return;
	a = local_slot(&e->key);
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
	init_cols(td->tg_relation);
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
		olds = row_state(oldt, desc);
	if (newt)
		news = row_state(newt, desc);
	/* New scheduled rows (rows becoming scheduled: trigger task_scheduled). */
	if (!oldt && news == ST_SCHEDULED)
		tq_note_scheduled();
	if (olds == news)
		return PointerGetDatum(newt ? newt : oldt);

	queue = row_text(newt ? newt : oldt, desc, cols.att_queue);
	tenant = row_text(newt ? newt : oldt, desc, cols.att_tenant);
	check_row_owner(td->tg_relation, oldt, newt, desc, queue, tenant);
	ensure_ready();
	if (newt)
	{
		vkey_d = heap_getattr(newt, cols.att_vkey, desc, &vkey_null);
		priority = DatumGetInt16(heap_getattr(newt, cols.att_priority, desc, &isnull));
		if (isnull)
			priority = 0;
	}
	now = GetCurrentTimestamp();
	lock_entries(queue, tenant, true, &qe, &te, now);

	if (olds == ST_READY)
	{
		Datum d = heap_getattr(oldt, cols.att_vkey, desc, &isnull);

		if (!isnull)
			old_key = DatumGetFloat8(d);
	}
	if (olds == ST_READY && news == ST_RUNNING)
	{
		/* The claim gate. */
		if ((qe && room_now(qe, now) < 1))
			action = SKIP;
		else if (te && room_now(te, now) < 1)
			action = PARK;
		else
		{
			if (qe)
			{
				take_token(qe, now);
				count_lease(qe, now);
			}
			if (te)
			{
				take_token(te, now);
				count_lease(te, now);
			}
			vkey_d = heap_getattr(oldt, cols.att_vkey, desc, &isnull);
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
		key = dispatch_key(qe, te, priority);
	}
	else if ((news == ST_SCHEDULED || news == ST_PAUSED) && !vkey_null)
		action = CLEAR_KEY;

	if (!oldt && news >= 0 && news != ST_RUNNING)
		check_backlog(qe, te, queue, tenant, now); /* releases the lock if it raises */

	if (action == SKIP)
	{
		LWLockRelease(fair->lock);
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
	LWLockRelease(fair->lock);

	/* Local accounting (allocates; outside the lock). */
	if (olds == ST_RUNNING && news == ST_SCHEDULED)
		tq_fair_note_activity(queue, TQ_ACT_FAILED, 1);
	account(qe, news, 1);
	account(te, news, 1);
	account(qe, olds, -1);
	account(te, olds, -1);
	if (qe && news == ST_READY)
	{
		/* The scan floor drops to this key at commit. */
		double k = action == SET_KEY ? key : vkey_null ? NAN : DatumGetFloat8(vkey_d);

		if (!isnan(k))
		{
			LocalAcct *a = local_slot(&qe->key);

			a->lower = Min(a->lower, k);
		}
	}
	else if (qe && !isnan(old_key))
	{
		/* ... and to this one if the transaction aborts. */
		LocalAcct *a = local_slot(&qe->key);

		a->taken_min = Min(a->taken_min, old_key);
	}

	if (action == PARK)
	{
		Datum v = ObjectIdGetDatum(cols.state_oid[ST_PAUSED]);
		bool n = false;
		int c = cols.att_state;

		if (te)
			local_slot(&te->key)->set_held = true;
		parked_in_xact++;
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
			c[nc] = cols.att_vkey;
			v[nc] = Float8GetDatum(key);
			n[nc++] = action == CLEAR_KEY;
		}
		if (cols.att_trace > 0 && oldt && newt)
		{
			if (olds == ST_RUNNING && (news == ST_READY || news == ST_SCHEDULED))
			{
				c[nc] = cols.att_trace;
				v[nc] = trace_leave(oldt, newt, desc, news == ST_READY, &n[nc]);
				nc++;
			}
		}
		if (nc > 0)
			return PointerGetDatum(heap_modify_tuple_by_cols(newt, desc, nc, c, v, n));
	}
	return PointerGetDatum(newt ? newt : oldt);
}

/* ------------------------------------------------------------------------
 * SQL-callable helpers
 * ------------------------------------------------------------------------
 */

/*
 * tq.lease_room(queue text, want integer) returns integer
 *
 * How many tasks the queue's own limits (concurrency, bucket) let a lease
 * claim now, at most want.  0 means tq_lease need not scan the queue.
 */
Datum
tq_lease_room(PG_FUNCTION_ARGS)
{
	char *queue = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int32 want = PG_GETARG_INT32(1);
	FairEntry *qe, *te;
	double room;
	TimestampTz now = GetCurrentTimestamp();

	ensure_ready();
	lock_entries(queue, NULL, false, &qe, &te, now);
	room = qe ? room_now(qe, now) : INFINITY;
	LWLockRelease(fair->lock);
	if (room < 0)
		room = 0;
	PG_RETURN_INT32(room < want ? (int32) room : want);
}

/*
 * tq.lease_floor(queue text, OUT vkey float8, OUT id bigint)
 *
 * Where tq_lease's claim scan of the queue starts, in (vkey, id) order:
 * past the claimed tasks whose index entries are dead but not yet
 * removable.  Probes the first ready task visible now at or after the
 * queue's scan floor, raises the floor to it when that is safe, and
 * returns it (or the floor, if the probe found none).  See "Scan floor"
 * in the file header.
 */
static SPIPlanPtr floor_plan = NULL;

Datum
tq_lease_floor(PG_FUNCTION_ARGS)
{
	char *queue = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TupleDesc rdesc;
	FairKey qk;
	FairEntry *qe;
	double fkey = -INFINITY, first_key = INFINITY;
	int64 fid = PG_INT64_MIN, first_id = PG_INT64_MAX;
	uint32 epoch = 0;
	bool known;
	Datum args[3];
	Datum result[2];
	bool rnulls[2] = {false, false};

	if (get_call_result_type(fcinfo, NULL, &rdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "tq.lease_floor: return type must be a row type");
	rdesc = BlessTupleDesc(rdesc);

	ensure_ready();
	make_key(&qk, queue, NULL, true);
	LWLockAcquire(fair->lock, LW_SHARED);
	qe = hash_search(fair_hash, &qk, HASH_FIND, NULL);
	known = qe != NULL;
	if (known)
	{
		fkey = qe->floor_key;
		fid = qe->floor_id;
		epoch = qe->floor_epoch;
	}
	LWLockRelease(fair->lock);

	/*
	 * Tasks this transaction made ready lower the floor only at commit, but
	 * this transaction sees them now.
	 */
	if (local_acct != NULL)
	{
		HASH_SEQ_STATUS seq;
		LocalAcct *a;

		hash_seq_init(&seq, local_acct);
		while ((a = hash_seq_search(&seq)) != NULL)
			if (a->lower <= fkey && memcmp(&a->key.fk, &qk, sizeof(FairKey)) == 0)
			{
				fkey = a->lower;
				fid = PG_INT64_MIN;
			}
	}

	/* The probe must see everything committed before the floor was read. */
	if (known && !IsolationUsesXactSnapshot())
	{
		int ret;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "tq: SPI_connect failed");
		if (floor_plan == NULL)
		{
			Oid types[3] = {TEXTOID, FLOAT8OID, INT8OID};
			SPIPlanPtr p =
				SPI_prepare("SELECT t.vkey, t.id FROM tq.task t"
							" WHERE t.queue OPERATOR(pg_catalog.=) $1"
							"   AND t.state OPERATOR(pg_catalog.=) 'ready'::tq.task_state"
							"   AND (t.vkey, t.id) OPERATOR(pg_catalog.>=) ($2, $3)"
							" ORDER BY t.vkey, t.id LIMIT 1",
							3, types);

			if (p == NULL)
				elog(ERROR, "tq: preparing the floor probe failed: %s",
					 SPI_result_code_string(SPI_result));
			SPI_keepplan(p);
			floor_plan = p;
		}
		args[0] = PG_GETARG_DATUM(0);
		args[1] = Float8GetDatum(fkey);
		args[2] = Int64GetDatum(fid);
		/* Not read-only: a snapshot of its own, taken now. */
		ret = SPI_execute_plan(floor_plan, args, NULL, false, 1);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "tq: the floor probe failed: %s", SPI_result_code_string(ret));
		if (SPI_processed == 1)
		{
			bool n1, n2;
			HeapTuple t = SPI_tuptable->vals[0];
			Datum k = SPI_getbinval(t, SPI_tuptable->tupdesc, 1, &n1);
			Datum i = SPI_getbinval(t, SPI_tuptable->tupdesc, 2, &n2);

			if (!n1 && !n2)
			{
				first_key = DatumGetFloat8(k);
				first_id = DatumGetInt64(i);
			}
		}
		SPI_finish();

		LWLockAcquire(fair->lock, LW_EXCLUSIVE);
		qe = hash_search(fair_hash, &qk, HASH_FIND, NULL);
		if (qe != NULL && qe->floor_epoch == epoch)
		{
			/*
			 * Tasks made ready since the epoch began (a superset of those
			 * committed too late for the probe) may sort before the first
			 * task found; any id of a key in low_acc may.  Either way a new
			 * epoch begins: what low_acc held is in the floor already.
			 */
			double rkey = first_key;
			int64 rid = first_id;

			if (qe->low_acc <= rkey)
			{
				rkey = qe->low_acc;
				rid = PG_INT64_MIN;
			}
			if (rkey < INFINITY &&
				(rkey > qe->floor_key || (rkey == qe->floor_key && rid > qe->floor_id)))
			{
				qe->floor_key = rkey;
				qe->floor_id = rid;
			}
			qe->low_acc = INFINITY;
			qe->floor_epoch++;
		}
		LWLockRelease(fair->lock);
		if (first_key < INFINITY)
		{
			fkey = first_key;
			fid = first_id;
		}
	}
	result[0] = Float8GetDatum(fkey);
	result[1] = Int64GetDatum(fid);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(rdesc, result, rnulls)));
}

/* tq.take_parked() returns bigint: tasks parked by this transaction's claims since the last call. */
Datum
tq_take_parked(PG_FUNCTION_ARGS)
{
	int64 n = parked_in_xact;

	parked_in_xact = 0;
	PG_RETURN_INT64(n);
}

/*
 * tq.held_work() returns setof (queue text, tenant text, room integer, gen bigint)
 *
 * Tenants of this database with parked tasks and room to run some now.
 */
Datum
tq_held_work(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS seq;
	FairEntry *e;
	TimestampTz now = GetCurrentTimestamp();
	typedef struct
	{
		FairKey k;
		double room;
		uint32 gen;
	} Item;
	Item *items;
	int n = 0, cap;

	ensure_ready();
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(fair->lock, LW_SHARED);
	cap = fair->nheld + 1;
	LWLockRelease(fair->lock);
	items = palloc(sizeof(Item) * cap);
	LWLockAcquire(fair->lock, LW_SHARED);
	if (fair->nheld > 0)
	{
		hash_seq_init(&seq, fair_hash);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			double room;

			if (!e->held || e->key.dboid != MyDatabaseId)
				continue;
			/* Tasks already moved back and not yet claimed use up room. */
			room = room_now(e, now) - (double) Min(e->unparked, e->count[ST_READY]);
			if (room < 1)
				continue;
			if (n == cap)
			{
				hash_seq_term(&seq);
				break; /* the rest on the next pass */
			}
			items[n].k = e->key;
			items[n].room = Min(room, 10000);
			items[n].gen = e->held_gen;
			n++;
		}
	}
	LWLockRelease(fair->lock);
	for (int i = 0; i < n; i++)
	{
		Datum v[4];
		bool nulls[4] = {0};

		v[0] = CStringGetTextDatum(items[i].k.queue);
		v[1] = CStringGetTextDatum(items[i].k.tenant);
		nulls[1] = items[i].k.kind != KIND_TENANT;
		v[2] = Int32GetDatum((int32) items[i].room);
		v[3] = Int64GetDatum(items[i].gen);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
	}
	return (Datum) 0;
}

/*
 * tq.held_done(queue, tenant, gen): no parked task is left, unless more
 * were parked since gen.  Takes effect when the calling transaction
 * commits: an unpark that rolls back leaves the tenant held.
 */
Datum
tq_held_done(PG_FUNCTION_ARGS)
{
	FairKey k;
	LocalAcct *a;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("queue and gen must not be null"),
				 errhint("Pass a row of tq.held_work(); only its tenant may be null.")));
	make_key(&k, text_to_cstring(PG_GETARG_TEXT_PP(0)),
			 PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)), false);
	a = local_slot(&k);
	a->clear_held = true;
	a->clear_gen = (uint32) PG_GETARG_INT64(2);
	PG_RETURN_VOID();
}

/*
 * tq.held_next() returns double precision
 *
 * Seconds until a held tenant of this database has room again because its
 * bucket refills (0 if one has room now; NULL if none is waiting on a
 * bucket).  Quota room is signalled by commits instead.
 */
Datum
tq_held_next(PG_FUNCTION_ARGS)
{
	HASH_SEQ_STATUS seq;
	FairEntry *e;
	TimestampTz now = GetCurrentTimestamp();
	double best = INFINITY;

	if (fair == NULL)
		PG_RETURN_NULL();
	LWLockAcquire(fair->lock, LW_SHARED);
	if (fair->nheld > 0)
	{
		hash_seq_init(&seq, fair_hash);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			double wait;

			if (!e->held || e->key.dboid != MyDatabaseId)
				continue;
			if (e->concurrency >= 0 && e->count[ST_RUNNING] >= e->concurrency)
				continue;
			if (e->rate <= 0)
				wait = 0;
			else
			{
				double t = tokens_now(e, now);

				wait = t >= 1 ? 0 : (1.0 - t) / e->rate;
			}
			/* Callers add it to a timestamp: an hour is soon enough to look again. */
			wait = Min(wait, 3600.0);
			best = Min(best, wait);
		}
	}
	LWLockRelease(fair->lock);
	if (isinf(best))
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(best);
}

/*
 * tq.shared_counts() returns setof record
 *
 * Every entry of this database: (queue, tenant, is_queue, scheduled,
 * ready, paused, running, leased, lease_rate, held, weight, rate, burst,
 * concurrency, backlog_limit, vclock, tokens).
 */
Datum
tq_shared_counts(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS seq;
	FairEntry *e;
	FairEntry *copy;
	int n = 0, cap;
	TimestampTz now = GetCurrentTimestamp();

	ensure_ready();
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(fair->lock, LW_SHARED);
	cap = hash_get_num_entries(fair_hash) + 1;
	LWLockRelease(fair->lock);
	copy = palloc(sizeof(FairEntry) * cap);
	LWLockAcquire(fair->lock, LW_SHARED);
	hash_seq_init(&seq, fair_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->key.dboid != MyDatabaseId)
			continue;
		if (n == cap)
		{
			hash_seq_term(&seq);
			break;
		}
		copy[n++] = *e;
	}
	LWLockRelease(fair->lock);
	for (int i = 0; i < n; i++)
	{
		Datum v[17];
		bool nulls[17] = {0};
		FairEntry *c = &copy[i];

		v[0] = CStringGetTextDatum(c->key.queue);
		v[1] = CStringGetTextDatum(c->key.tenant);
		nulls[1] = c->key.kind != KIND_TENANT;
		v[2] = BoolGetDatum(c->key.kind == KIND_QUEUE);
		for (int s = 0; s < NSTATES; s++)
			v[3 + s] = Int64GetDatum(c->count[s]);
		v[7] = Int64GetDatum(c->leased);
		v[8] = Float8GetDatum(drain_rate(c, now));
		v[9] = BoolGetDatum(c->held);
		v[10] = Float8GetDatum(c->weight);
		v[11] = Float8GetDatum(c->rate);
		nulls[11] = c->rate <= 0;
		v[12] = Float8GetDatum(c->burst);
		nulls[12] = c->rate <= 0;
		v[13] = Int64GetDatum(c->concurrency);
		nulls[13] = c->concurrency < 0;
		v[14] = Int64GetDatum(c->backlog_limit);
		nulls[14] = c->backlog_limit < 0;
		v[15] = Float8GetDatum(c->vclock);
		v[16] = Float8GetDatum(c->rate > 0 ? tokens_now(c, now) : 0);
		nulls[16] = c->rate <= 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
	}
	return (Datum) 0;
}

/*
 * tq.policy_changed(queue text, tenant text, is_queue boolean) returns void
 *
 * The queue's or tenant's policy row changed: the entry re-reads it on
 * next use.  Marked at once; a rolled-back change is re-read as it was.
 */
Datum
tq_policy_changed(PG_FUNCTION_ARGS)
{
	FairKey k;

	if (fair == NULL || PG_ARGISNULL(0))
		PG_RETURN_VOID();
	make_key(&k, text_to_cstring(PG_GETARG_TEXT_PP(0)),
			 PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)), PG_GETARG_BOOL(2));
	LWLockAcquire(fair->lock, LW_EXCLUSIVE);
	invalidate(&k);
	LWLockRelease(fair->lock);
	if (!local_callbacks)
	{
		RegisterXactCallback(fair_xact_callback, NULL);
		RegisterSubXactCallback(fair_subxact_callback, NULL);
		local_callbacks = true;
	}
	if (npending_inval < MAX_PENDING_INVAL)
		pending_inval[npending_inval++] = k;
	else
		pending_inval_all = true;
	PG_RETURN_VOID();
}

/* tq.reset_shared() returns void: this database's entries are rebuilt on next use. */
Datum
tq_reset_shared(PG_FUNCTION_ARGS)
{
	FairDb *db;

	if (fair == NULL)
		PG_RETURN_VOID();
	db = my_db(true);
	if (db == NULL)
		PG_RETURN_VOID();
	LWLockAcquire(fair->lock, LW_EXCLUSIVE);
	drop_db_entries();
	if (pg_atomic_read_u32(&db->state) == DB_READY)
		pg_atomic_write_u32(&db->state, DB_EMPTY);
	LWLockRelease(fair->lock);
	cols.relid = InvalidOid;
	PG_RETURN_VOID();
}

/*
 * tq.forget_activity(queue text) returns void
 *
 * tq_drop_queue: once this transaction commits, the queue's minutes start
 * from zero, so that a queue made again under the same name does not show
 * the dropped one's activity.  Activity this transaction noted for it
 * before is dropped with it.
 */
Datum
tq_forget_activity(PG_FUNCTION_ARGS)
{
	char *queue = text_to_cstring(PG_GETARG_TEXT_PP(0));
	PendingAct *p = pending_for(queue);

	if (p == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many queues changed in one transaction to forget \"%s\"'s activity",
						queue),
				 errhint("Drop fewer queues per transaction.")));
	memset(p->n, 0, sizeof(p->n));
	p->reset = true;
	PG_RETURN_VOID();
}

/*
 * tq.activity(minutes integer) returns setof (queue text, succeeded
 * bigint, failed bigint, dead bigint, other bigint)
 *
 * Per queue of this database, what happened in the last `minutes` minutes
 * (the current minute included; at most ACT_MINUTES), from shared memory:
 * tasks finished succeeded, dead, cancelled or expired, and attempts that
 * failed and will be retried.  Counted since the server started.
 */
Datum
tq_activity(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int minutes = PG_GETARG_INT32(0);
	int32 now_minute = minute_now();
	HASH_SEQ_STATUS seq;
	FairEntry *e;
	typedef struct
	{
		char queue[NAMEDATALEN];
		int64 n[ACT_KINDS];
	} Row;
	Row *rows;
	int nrows = 0, cap;

	if (minutes < 1 || minutes > ACT_MINUTES)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("minutes must be between 1 and %d", ACT_MINUTES),
						errhint("Shared memory keeps the last %d minutes.", ACT_MINUTES)));
	ensure_ready();
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(fair->lock, LW_SHARED);
	cap = hash_get_num_entries(fair_hash) + 1;
	rows = palloc0(sizeof(Row) * cap);
	hash_seq_init(&seq, fair_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->key.dboid != MyDatabaseId || e->key.kind != KIND_QUEUE)
			continue;
		if (nrows == cap)
		{
			hash_seq_term(&seq);
			break;
		}
		strlcpy(rows[nrows].queue, e->key.queue, NAMEDATALEN);
		for (int m = 0; m < ACT_MINUTES; m++)
			if (e->act_minute[m] > now_minute - minutes && e->act_minute[m] <= now_minute)
				for (int j = 0; j < ACT_KINDS; j++)
					rows[nrows].n[j] += e->act[m][j];
		nrows++;
	}
	LWLockRelease(fair->lock);
	for (int i = 0; i < nrows; i++)
	{
		Datum v[1 + ACT_KINDS];
		bool nulls[1 + ACT_KINDS] = {0};

		v[0] = CStringGetTextDatum(rows[i].queue);
		for (int j = 0; j < ACT_KINDS; j++)
			v[1 + j] = Int64GetDatum(rows[i].n[j]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
	}
	return (Datum) 0;
}
