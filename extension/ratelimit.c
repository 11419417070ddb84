/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *	  Token buckets in shared memory: tq_rate_consume(key, n, rate, burst).
 *
 * Any session -- a task's handler, a trigger, an application -- can ask
 * whether n more calls to some third party fit in that party's limit:
 * "at most rate per second, bursts of at most burst".  One bucket per key,
 * shared by every backend of the cluster, so that twenty workers on one
 * database respect one limit together, without a row lock or a table
 * write per call.
 *
 * A bucket holds up to burst tokens and gains rate tokens per second; a
 * call takes n tokens if it can (true) and nothing otherwise (false).  A
 * new bucket starts full.  The latest call's rate and burst apply to the
 * key (tokens above a lowered burst are dropped).
 *
 * Table.  A dynahash of tq.max_rate_keys entries, keyed by the key text
 * (at most TQ_RATE_KEY_MAX bytes).  When it is full, buckets that have
 * refilled to their burst are evicted first: a full bucket is exactly what
 * a new one would be, so evicting it changes no answer.  Only when every
 * bucket is in use does a call with a new key fail, with SQLSTATE 53400
 * and a hint to raise tq.max_rate_keys -- never a wrong answer.
 *
 * Locking.  One LWLock (tq_rate_lock) protects the whole table; every
 * critical section is a hash probe and a few floating-point operations
 * (the eviction scan, only when the table is full, is the exception).  No
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
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "tq.h"

PG_FUNCTION_INFO_V1(tq_rate_consume);

/* Longest key, in bytes (the hash key is a fixed-size, zero-padded field). */
#define TQ_RATE_KEY_MAX 128

typedef struct RateBucket
{
	char key[TQ_RATE_KEY_MAX + 1]; /* hash key, NUL-terminated */
	double tokens;                 /* tokens in the bucket at 'at' */
	TimestampTz at;                /* when tokens was last computed */
	double rate;                   /* tokens gained per second */
	double burst;                  /* capacity */
} RateBucket;

static HTAB *rate_buckets = NULL;
static LWLock *tq_rate_lock = NULL;

Size
tq_rate_shmem_size(void)
{
	return hash_estimate_size(tq_max_rate_keys, sizeof(RateBucket));
}

/* Called from the shmem startup hook, with AddinShmemInitLock held. */
void
tq_rate_shmem_init(void)
{
	HASHCTL info;

	memset(&info, 0, sizeof(info));
	info.keysize = TQ_RATE_KEY_MAX + 1;
	info.entrysize = sizeof(RateBucket);
	rate_buckets = ShmemInitHash("tq rate buckets", tq_max_rate_keys, tq_max_rate_keys, &info,
								 HASH_ELEM | HASH_STRINGS);
	tq_rate_lock = &(GetNamedLWLockTranche("tq rate"))->lock;
}

/* Tokens in b at 'now', capped at its burst. */
static double
refilled(const RateBucket *b, TimestampTz now)
{
	return tq_bucket_level(b->tokens, b->at, b->rate, b->burst, now);
}

/*
 * Evicts buckets that have refilled to their burst (indistinguishable from
 * new ones).  Caller holds tq_rate_lock exclusively.  Returns how many.
 */
static int
evict_full(TimestampTz now)
{
	HASH_SEQ_STATUS seq;
	RateBucket *b;
	int n = 0;

	hash_seq_init(&seq, rate_buckets);
	while ((b = hash_seq_search(&seq)) != NULL)
		if (refilled(b, now) >= b->burst)
		{
			hash_search(rate_buckets, b->key, HASH_REMOVE, NULL);
			n++;
		}
	return n;
}

/*
 * tq_rate_consume(key text, n integer DEFAULT 1, rate double precision,
 *                 burst double precision DEFAULT NULL) returns boolean
 *
 * Takes n tokens from the bucket of key if it holds them.  burst defaults
 * to max(rate, n): one second's worth.
 */
Datum
tq_rate_consume(PG_FUNCTION_ARGS)
{
	char keybuf[TQ_RATE_KEY_MAX + 1];
	text *key_t;
	int keylen;
	int32 n;
	double rate;
	double burst;
	TimestampTz now;
	RateBucket *b;
	bool found;
	bool granted;
	bool table_full = false;

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

	if (keylen == 0 || keylen > TQ_RATE_KEY_MAX)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("rate key must be 1 to %d bytes long", TQ_RATE_KEY_MAX),
						errdetail("The key given has %d bytes.", keylen),
						errhint("Use a shorter key, for example a hash of the long one.")));
	if (memchr(VARDATA_ANY(key_t), '\0', keylen) != NULL)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("rate key must not contain a NUL byte")));
	if (n < 1)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("n must be at least 1"),
						errdetail("The value given is %d.", n)));
	if (!(rate > 0) || rate > 1e9 || isinf(rate))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("rate is out of range"),
				 errdetail("The value given is %g; it must be above 0 and at most 1e9 per second.",
						   rate)));
	if (!(burst >= 1) || burst > 1e12 || isinf(burst))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("burst is out of range"),
						errdetail("The value given is %g; it must be at least 1 and at most 1e12.",
								  burst)));
	if ((double) n > burst)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("n exceeds burst: the request could never be granted"),
				 errdetail("n is %d and burst is %g.", n, burst),
				 errhint("Raise burst to at least n, or take the tokens in smaller parts.")));

	memset(keybuf, 0, sizeof(keybuf));
	memcpy(keybuf, VARDATA_ANY(key_t), keylen);
	now = GetCurrentTimestamp();

	LWLockAcquire(tq_rate_lock, LW_EXCLUSIVE);
	/*
	 * A shared dynahash grows past its nominal size while spare shared
	 * memory lasts, so the limit is enforced here, by count.
	 */
	b = hash_search(rate_buckets, keybuf, HASH_FIND, &found);
	if (b == NULL && hash_get_num_entries(rate_buckets) >= tq_max_rate_keys)
		evict_full(now);
	if (b == NULL && hash_get_num_entries(rate_buckets) < tq_max_rate_keys)
		b = hash_search(rate_buckets, keybuf, HASH_ENTER_NULL, &found);
	if (b == NULL)
	{
		table_full = true;
		granted = false;
	}
	else
	{
		if (!found)
		{
			b->tokens = burst;
			b->at = now;
		}
		else
		{
			b->tokens = refilled(b, now);
			b->at = now;
		}
		b->rate = rate;
		b->burst = burst;
		if (b->tokens > burst)
			b->tokens = burst;
		granted = b->tokens >= (double) n;
		if (granted)
			b->tokens -= (double) n;
	}
	LWLockRelease(tq_rate_lock);

	if (table_full)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("no room for rate key \"%s\": all %d rate buckets are in use", keybuf,
						tq_max_rate_keys),
				 errdetail("Buckets free themselves once they have refilled to their burst."),
				 errhint("Raise tq.max_rate_keys (needs a restart), or use fewer distinct keys.")));
	PG_RETURN_BOOL(granted);
}
