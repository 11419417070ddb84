/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *	  Token buckets in shared memory: tq_rate_consume(key, n, rate, burst).
 *
 * Any session -- a task's handler, a trigger, an application -- can ask
 * whether n more calls to some third party fit in that party's limit:
 * "at most rate per second, bursts of at most burst".  One bucket per
 * (role, key), shared by every backend of the cluster, so that twenty
 * workers on one database respect one limit together, without a row lock
 * or a table write per call.
 *
 * A bucket holds up to burst tokens and gains rate tokens per second; a
 * call takes n tokens if it can (true) and nothing otherwise (false).  A
 * new bucket starts full.  The latest call's rate and burst apply to the
 * key (tokens above a lowered burst are dropped).
 *
 * Key spaces.  A bucket belongs to the role that calls (current_user):
 * the same key text named by two roles is two buckets, so that no role can
 * drain, refill or re-rate another role's bucket.  Roles that must share a
 * limit call as one role (a common group role, SET ROLE, or a SECURITY
 * DEFINER function).
 *
 * Table.  A dynahash of tq.max_rate_keys entries, keyed by (role, key
 * text of at most TQ_RATE_KEY_MAX bytes), and one role may hold at most
 * tq.max_rate_keys_per_role of them.  When a new bucket finds no room,
 * buckets that have refilled to their burst are evicted: a full bucket is
 * exactly what a new one would be, so evicting it changes no answer.  If
 * that frees nothing, the call fails with SQLSTATE 53400 and a hint naming
 * the setting -- never a wrong answer.  The rate is at least TQ_RATE_MIN
 * (one token per 11.6 days, as for queues): a bucket refills in at most
 * burst / rate seconds, but that can still be long, so the per-role cap,
 * not eviction, is what keeps one role from taking every bucket.
 *
 * Eviction costs a scan of the table, so it runs only once some bucket
 * may have refilled: next_full is a time before which none can have (each
 * call lowers it to its bucket's refill time; a scan recomputes it).  A
 * role at its cap asking again and again for new keys does not scan at
 * every call.
 *
 * Locking.  One LWLock (tq rate) protects the table, the per-role counts
 * and the RateShared fields; every critical section is a hash probe and a
 * few floating-point operations (the eviction scan is the exception).  No
 * ereport is raised while it is held.
 *
 * Restart.  Buckets live in memory only: after a server restart every key
 * starts with a full bucket, so one extra burst may pass.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "common/hashfn.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "tq.h"

PG_FUNCTION_INFO_V1(tq_rate_consume);

/* Longest key, in bytes (the hash key is a fixed-size, zero-padded field). */
#define TQ_RATE_KEY_MAX 128
/* The bounds of rate and burst: those of tq.check_limits for queues. */
#define TQ_RATE_MIN 1e-6
#define TQ_RATE_MAX 1e9
#define TQ_BURST_MAX 1e12

typedef struct RateKey
{
	Oid role;                      /* current_user of the calls */
	char key[TQ_RATE_KEY_MAX + 1]; /* the key text, NUL-padded */
} RateKey;

typedef struct RateBucket
{
	RateKey key;    /* hash key */
	double tokens;  /* tokens in the bucket at 'at' */
	TimestampTz at; /* when tokens was last computed */
	double rate;    /* tokens gained per second */
	double burst;   /* capacity */
} RateBucket;

typedef struct RateRole
{
	Oid role;     /* hash key */
	int nbuckets; /* buckets the role holds */
} RateRole;

typedef struct RateShared
{
	TimestampTz next_full;    /* no bucket has refilled before this */
	int64 refusals;           /* calls refused for want of room, since the start */
	TimestampTz last_refusal; /* the last of them; 0: never */
} RateShared;

static HTAB *rate_buckets = NULL;
static HTAB *rate_roles = NULL;
static RateShared *rate_shared = NULL;
static LWLock *tq_rate_lock = NULL;

Size
tq_rate_shmem_size(void)
{
	return add_size(add_size(MAXALIGN(sizeof(RateShared)),
							 hash_estimate_size(tq_max_rate_keys, sizeof(RateBucket))),
					hash_estimate_size(tq_max_rate_keys, sizeof(RateRole)));
}

/*
 * The hash of a RateKey: its role and the key text up to its NUL (hashing
 * the whole zero-padded field cost a tenth of a call).
 */
static uint32
rate_key_hash(const void *key, Size keysize)
{
	const RateKey *k = key;

	return hash_combine(murmurhash32(k->role),
						hash_bytes((const unsigned char *) k->key, strlen(k->key)));
}

static int
rate_key_match(const void *a, const void *b, Size keysize)
{
	const RateKey *x = a, *y = b;

	return x->role == y->role ? strcmp(x->key, y->key) : 1;
}

/* Called from the shmem startup hook, with AddinShmemInitLock held. */
void
tq_rate_shmem_init(void)
{
	HASHCTL info;
	bool found;

	rate_shared = ShmemInitStruct("tq rate state", sizeof(RateShared), &found);
	if (!found)
		memset(rate_shared, 0, sizeof(RateShared));
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(RateKey);
	info.entrysize = sizeof(RateBucket);
	info.hash = rate_key_hash;
	info.match = rate_key_match;
	rate_buckets = ShmemInitHash("tq rate buckets", tq_max_rate_keys, tq_max_rate_keys, &info,
								 HASH_ELEM | HASH_FUNCTION | HASH_COMPARE);
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(Oid);
	info.entrysize = sizeof(RateRole);
	rate_roles = ShmemInitHash("tq rate roles", tq_max_rate_keys, tq_max_rate_keys, &info,
							   HASH_ELEM | HASH_BLOBS);
	tq_rate_lock = &(GetNamedLWLockTranche("tq rate"))->lock;
}

/* Tokens in b at 'now', capped at its burst. */
static double
rate_refilled(const RateBucket *b, TimestampTz now)
{
	return tq_bucket_level(b->tokens, b->at, b->rate, b->burst, now);
}

/* When b will be full again if nobody takes from it (far future: never here). */
static TimestampTz
rate_full_at(const RateBucket *b)
{
	double secs = (b->burst - b->tokens) / b->rate;

	if (secs <= 0)
		return b->at;
	if (secs > 1e9) /* 31 years: no scan will be due for it */
		return DT_NOEND;
	return b->at + (TimestampTz) ceil(secs * USECS_PER_SEC);
}

/* Buckets a role holds.  Caller holds tq_rate_lock. */
static int
rate_role_count(Oid role)
{
	RateRole *r = hash_search(rate_roles, &role, HASH_FIND, NULL);

	return r ? r->nbuckets : 0;
}

/* Counts a bucket made (+1) or evicted (-1) for a role.  Caller holds tq_rate_lock exclusively. */
static void
rate_role_add(Oid role, int delta)
{
	bool found;
	RateRole *r = hash_search(rate_roles, &role, delta > 0 ? HASH_ENTER_NULL : HASH_FIND, &found);

	if (r == NULL)
		return; /* cannot happen: there are no more roles than buckets */
	if (delta > 0 && !found)
		r->nbuckets = 0;
	r->nbuckets += delta;
	if (r->nbuckets <= 0)
		hash_search(rate_roles, &role, HASH_REMOVE, NULL);
}

/*
 * Evicts the buckets that have refilled to their burst (indistinguishable
 * from new ones), once any can have: see the file header.  Caller holds
 * tq_rate_lock exclusively.
 */
static void
rate_evict_full(TimestampTz now)
{
	HASH_SEQ_STATUS seq;
	RateBucket *b;
	TimestampTz next = DT_NOEND;

	if (now < rate_shared->next_full)
		return;
	hash_seq_init(&seq, rate_buckets);
	while ((b = hash_seq_search(&seq)) != NULL)
	{
		if (rate_refilled(b, now) >= b->burst)
		{
			rate_role_add(b->key.role, -1);
			hash_search(rate_buckets, &b->key, HASH_REMOVE, NULL);
		}
		else
			next = Min(next, rate_full_at(b));
	}
	rate_shared->next_full = next;
}

/* Why a new bucket found no room. */
typedef enum RateRefusal
{
	RATE_ROOM,     /* there was room */
	RATE_ROLE_CAP, /* the role holds tq.max_rate_keys_per_role buckets */
	RATE_TABLE     /* the table holds tq.max_rate_keys buckets */
} RateRefusal;

/*
 * Makes a bucket for k (rate, burst), full, evicting refilled buckets if there is no
 * room.  Caller holds tq_rate_lock exclusively.  NULL, with *why, when
 * there is still no room.
 */
static RateBucket *
rate_new_bucket(const RateKey *k, double rate, double burst, TimestampTz now, RateRefusal *why)
{
	RateBucket *b = NULL;
	bool found;

	*why = RATE_ROOM;
	/*
	 * A shared dynahash grows past its nominal size while spare shared
	 * memory lasts, so the limits are enforced here, by count.
	 */
	if (rate_role_count(k->role) >= tq_max_rate_keys_per_role ||
		hash_get_num_entries(rate_buckets) >= tq_max_rate_keys)
		rate_evict_full(now);
	if (rate_role_count(k->role) >= tq_max_rate_keys_per_role)
		*why = RATE_ROLE_CAP;
	else if (hash_get_num_entries(rate_buckets) >= tq_max_rate_keys)
		*why = RATE_TABLE;
	else if ((b = hash_search(rate_buckets, k, HASH_ENTER_NULL, &found)) == NULL)
		*why = RATE_TABLE;
	if (*why != RATE_ROOM)
	{
		rate_shared->refusals++;
		rate_shared->last_refusal = now;
		return NULL;
	}
	rate_role_add(k->role, 1);
	b->tokens = burst;
	b->at = now;
	b->rate = rate;
	b->burst = burst;
	return b;
}

/* Raises the error for a new key that found no room.  Call without the lock. */
static void
rate_refuse(const char *key, Oid role, RateRefusal why)
{
	const char *rolname = GetUserNameFromId(role, true);

	if (why == RATE_ROLE_CAP)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("no room for rate key \"%s\": role \"%s\" holds %d rate buckets, its most",
						key, rolname ? rolname : "?", tq_max_rate_keys_per_role),
				 errdetail("Each role may hold at most tq.max_rate_keys_per_role buckets; a bucket "
						   "is freed once it has refilled to its burst."),
				 errhint("Use fewer distinct keys, or raise tq.max_rate_keys_per_role (a reload "
						 "applies it).")));
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("no room for rate key \"%s\": all %d rate buckets are in use", key,
					tq_max_rate_keys),
			 errdetail("Buckets free themselves once they have refilled to their burst."),
			 errhint("Raise tq.max_rate_keys (needs a restart), or use fewer distinct keys.")));
}

/* Checks the arguments of tq_rate_consume; raises 22023 for one out of range. */
static void
rate_check_args(int keylen, const char *key, int32 n, double rate, double burst)
{
	if (keylen == 0 || keylen > TQ_RATE_KEY_MAX)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("rate key must be 1 to %d bytes long", TQ_RATE_KEY_MAX),
						errdetail("The key given has %d bytes.", keylen),
						errhint("Use a shorter key, for example a hash of the long one.")));
	if (memchr(key, '\0', keylen) != NULL)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("rate key must not contain a NUL byte")));
	if (n < 1)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("n must be at least 1"),
						errdetail("The value given is %d.", n)));
	if (!(rate >= TQ_RATE_MIN && rate <= TQ_RATE_MAX))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("rate is out of range"),
				 errdetail("The value given is %g; it must be between 0.000001 and 1e9 per second.",
						   rate),
				 errhint("0.000001 per second is one token per 11.6 days, as for queues; a bucket "
						 "that refills slower would hold its shared-memory slot for good.")));
	if (!(burst >= 1 && burst <= TQ_BURST_MAX))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("burst is out of range"),
						errdetail("The value given is %g; it must be at least 1 and at most 1e12.",
								  burst)));
	if ((double) n > burst)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("n exceeds burst: the request could never be granted"),
				 errdetail("n is %d and burst is %g.", n, burst),
				 errhint("Raise burst to at least n, or take the tokens in smaller parts.")));
}

/*
 * tq_rate_consume(key text, n integer DEFAULT 1, rate double precision,
 *                 burst double precision DEFAULT NULL) returns boolean
 *
 * Takes n tokens from the calling role's bucket of key if it holds them.
 * burst defaults to max(rate, n): one second's worth.
 */
Datum
tq_rate_consume(PG_FUNCTION_ARGS)
{
	RateKey k;
	text *key_t;
	int keylen;
	int32 n;
	double rate;
	double burst;
	TimestampTz now;
	RateBucket *b;
	bool granted = false;
	RateRefusal why = RATE_ROOM;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("rate key must not be null"),
				 errhint("Name the limit, for example 'smtp:example.com'.")));
	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("n and rate must not be null"),
				 errhint("For example: tq_rate_consume('api', 1, rate => 10).")));
	key_t = PG_GETARG_TEXT_PP(0);
	keylen = VARSIZE_ANY_EXHDR(key_t);
	n = PG_GETARG_INT32(1);
	rate = PG_GETARG_FLOAT8(2);
	burst = PG_ARGISNULL(3) ? Max(rate, (double) n) : PG_GETARG_FLOAT8(3);
	rate_check_args(keylen, VARDATA_ANY(key_t), n, rate, burst);

	memset(&k, 0, sizeof(k));
	k.role = GetUserId();
	memcpy(k.key, VARDATA_ANY(key_t), keylen);
	now = GetCurrentTimestamp();

	LWLockAcquire(tq_rate_lock, LW_EXCLUSIVE);
	b = hash_search(rate_buckets, &k, HASH_FIND, NULL);
	if (b == NULL)
		b = rate_new_bucket(&k, rate, burst, now, &why);
	if (b != NULL)
	{
		b->tokens = rate_refilled(b, now);
		b->at = now;
		b->rate = rate;
		b->burst = burst;
		if (b->tokens > burst)
			b->tokens = burst;
		granted = b->tokens >= (double) n;
		if (granted)
			b->tokens -= (double) n;
		/* A scan already due recomputes it anyway (the common case: cheap). */
		if (rate_shared->next_full > now)
			rate_shared->next_full = Min(rate_shared->next_full, rate_full_at(b));
	}
	LWLockRelease(tq_rate_lock);

	if (b == NULL)
		rate_refuse(k.key, k.role, why);
	PG_RETURN_BOOL(granted);
}

/* The buckets' use, for tq_shared_usage (shmem.c). */
void
tq_rate_usage(TqUsage *u)
{
	memset(u, 0, sizeof(TqUsage));
	u->capacity = tq_max_rate_keys;
	if (rate_shared == NULL)
		return;
	LWLockAcquire(tq_rate_lock, LW_SHARED);
	u->used = hash_get_num_entries(rate_buckets);
	u->full_events = rate_shared->refusals;
	u->last_full_at = rate_shared->last_refusal;
	LWLockRelease(tq_rate_lock);
}
