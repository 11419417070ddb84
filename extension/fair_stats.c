/*-------------------------------------------------------------------------
 *
 * fair_stats.c
 *	  Reading the shared entries: counts, limits and activity per queue
 *	  and tenant (tq_queue_stats, tq_tenants, tq_queue_activity).
 *
 * Each function copies what it needs under the lock, shared, and builds
 * its rows after releasing it.
 *
 * Locking.  fair_shared->lock, as fair_entry.c describes: shared, to copy entries.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "tq.h"
#include "fair.h"

PG_FUNCTION_INFO_V1(tq_shared_counts);
PG_FUNCTION_INFO_V1(tq_activity);

/*
 * tq.shared_counts() returns setof record
 *
 * Every entry of this database but the overflow entries: (queue,
 * tenant, is_queue, scheduled, ready, paused, running, leased,
 * lease_rate, held, weight, rate, burst, concurrency, backlog_limit,
 * vclock, tokens).
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

	fair_ensure_ready();
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(fair_shared->lock, LW_SHARED);
	cap = hash_get_num_entries(fair_hash) + 1;
	LWLockRelease(fair_shared->lock);
	copy = palloc(sizeof(FairEntry) * cap);
	LWLockAcquire(fair_shared->lock, LW_SHARED);
	hash_seq_init(&seq, fair_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		/* Overflow entries are no tenant's: tq_shared_usage counts them. */
		if (e->key.dboid != MyDatabaseId || e->key.kind == KIND_OVERFLOW)
			continue;
		if (n == cap)
		{
			hash_seq_term(&seq);
			break;
		}
		copy[n++] = *e;
	}
	LWLockRelease(fair_shared->lock);
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
		v[8] = Float8GetDatum(fair_drain_rate(c, now));
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
		v[16] = Float8GetDatum(c->rate > 0 ? fair_tokens_now(c, now) : 0);
		nulls[16] = c->rate <= 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
	}
	return (Datum) 0;
}

/*
 * The entries' use, for tq_shared_usage (shmem.c): all databases, since
 * the server started.  overflow is the live tasks counted in overflow
 * entries.
 */
void
tq_fair_usage(TqUsage *u)
{
	HASH_SEQ_STATUS seq;
	FairEntry *e;

	memset(u, 0, sizeof(TqUsage));
	u->capacity = tq_max_tenants;
	if (fair_shared == NULL)
		return;
	LWLockAcquire(fair_shared->lock, LW_SHARED);
	u->used = hash_get_num_entries(fair_hash);
	u->full_events = fair_shared->full_events;
	u->last_full_at = fair_shared->last_full_at;
	hash_seq_init(&seq, fair_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->key.kind == KIND_OVERFLOW)
			for (int s = 0; s < NSTATES; s++)
				u->overflow += e->count[s];
	LWLockRelease(fair_shared->lock);
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
	int32 now_minute = fair_minute_now();
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
	fair_ensure_ready();
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(fair_shared->lock, LW_SHARED);
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
	LWLockRelease(fair_shared->lock);
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
