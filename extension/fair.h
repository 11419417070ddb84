/*-------------------------------------------------------------------------
 *
 * fair.h
 *	  What the files of fair dispatch share (private to them).
 *
 * Fair dispatch, rate limits, concurrency quotas, back-pressure and live
 * counters, in shared memory, in one subsystem of several files:
 *
 *	 fair_entry.c	the shared entries: set-up, keys, buckets, policies,
 *					capacity; the locking protocol
 *	 fair_xact.c	per-transaction accounting, applied or undone when a
 *					(sub)transaction ends; policy and activity changes
 *	 fair_rebuild.c	per-database state and the rebuild from tq.task
 *	 fair_trigger.c	tq.task_row, the trigger every state change goes through
 *	 fair_floor.c	the lease scan floor and tq.lease_room
 *	 fair_parked.c	tenants with parked tasks (tq.held_*, tq.take_parked)
 *	 fair_stats.c	tq.shared_counts and tq.activity
 *
 * Functions shared between these files are named fair_*; each file's own
 * statics carry a prefix of that file's (entry_, policy_, acct_,
 * rebuild_, trig_, floor_).
 *
 *-------------------------------------------------------------------------
 */
#ifndef TQ_FAIR_H
#define TQ_FAIR_H

#include "access/xact.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#define TQ_TENANT_MAX 200 /* tq.check_label's limit for tenants */
#define TQ_MAX_DBS 64     /* databases with tq state at once */

/* Live states counted; the order of tq.task_state's first four labels. */
#define ST_SCHEDULED 0
#define ST_READY 1
#define ST_PAUSED 2
#define ST_RUNNING 3
#define NSTATES 4

/* Activity counted per queue and minute (tq_queue_activity). */
#define ACT_MINUTES 15
#define ACT_KINDS 4
/* kinds: TQ_ACT_SUCCEEDED, _FAILED (an attempt failed, the task will be
 * tried again), _DEAD, _OTHER (cancelled or expired), in tq.h */

#define KIND_QUEUE 0
#define KIND_NULL_TENANT 1
#define KIND_TENANT 2
#define KIND_OVERFLOW 3 /* a queue's tenants without an entry of their own, together */

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
	bool keep;           /* tenants: has a policy row, or not read yet: never folded */
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
	/* the table being full, for tq_shared_usage (see "Capacity" in fair_entry.c) */
	int64 full_events;        /* times an entry was wanted and the table was full */
	TimestampTz last_full_at; /* the last of them */
	int64 folds;              /* tenant entries folded into an overflow entry */
} FairShared;

extern FairShared *fair_shared;
extern HTAB *fair_hash;
extern const char *const fair_state_names[NSTATES];

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

/* fair_entry.c: entries; the lock is held where a comment says so. */
extern void fair_make_key(FairKey *k, const char *queue, const char *tenant, bool queue_entry);
extern void fair_overflow_key(FairKey *ok, const FairKey *k);
extern bool fair_entry_idle(const FairEntry *e);
extern double fair_tokens_now(const FairEntry *e, TimestampTz now);
extern double fair_room_now(const FairEntry *e, TimestampTz now);
extern void fair_take_token(FairEntry *e, TimestampTz now);
extern void fair_count_lease(FairEntry *e, TimestampTz now);
extern double fair_drain_rate(const FairEntry *e, TimestampTz now);
extern void fair_log_full(void);
extern FairEntry *fair_enter(const FairKey *k, bool must, TimestampTz now);
extern void fair_refuse_no_room(const FairKey *k);
extern double fair_clamp(double v, double lo, double hi, double dflt);
extern void fair_lock_entries(const char *queue, const char *tenant, bool want_tenant,
							  FairEntry **qe, FairEntry **te, TimestampTz now);

/* fair_xact.c: this backend's accounting until its transaction ends. */
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

extern HTAB *fair_local_acct;
extern int64 fair_parked_in_xact;
extern LocalAcct *fair_local_slot(const FairKey *fk);
extern int32 fair_minute_now(void);

/* fair_rebuild.c */
extern void fair_ensure_ready(void);
extern bool fair_reclaim_dropped_dbs(void);

/* fair_trigger.c */
extern void fair_forget_columns(void);

/* fair_floor.c */
extern void fair_lower_floor(FairEntry *e, double key);

#endif /* TQ_FAIR_H */
