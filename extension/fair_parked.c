/*-------------------------------------------------------------------------
 *
 * fair_parked.c
 *	  Tenants with parked tasks: what the background worker (or tq_lease)
 *	  asks before moving them back to ready.
 *
 * A claim that a tenant's limits refuse parks the task (fair_trigger.c):
 * paused with its key kept, the tenant marked held.  tq.held_work lists
 * held tenants with room now, tq.held_done clears the mark when the
 * unparking transaction commits (unless more were parked meanwhile),
 * tq.held_next says when a bucket will have refilled, and tq.take_parked
 * tells tq_lease how many of its claims were parked.
 *
 * Locking.  fair_shared->lock, as fair_entry.c describes: shared, to list held tenants
 * and compute refill times; tq.held_done only marks this backend's slot.
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

PG_FUNCTION_INFO_V1(tq_take_parked);
PG_FUNCTION_INFO_V1(tq_held_work);
PG_FUNCTION_INFO_V1(tq_held_done);
PG_FUNCTION_INFO_V1(tq_held_next);

/*
 * The next held tenant of this database in a scan of the entries, or NULL
 * at the end.  Caller holds the lock, at least shared.
 */
static FairEntry *
parked_next_held(HASH_SEQ_STATUS *seq)
{
	FairEntry *e;

	while ((e = hash_seq_search(seq)) != NULL)
		if (e->held && e->key.dboid == MyDatabaseId)
			return e;
	return NULL;
}

/* tq.take_parked() returns bigint: tasks parked by this transaction's claims since the last call. */
Datum
tq_take_parked(PG_FUNCTION_ARGS)
{
	int64 n = fair_parked_in_xact;

	fair_parked_in_xact = 0;
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

	fair_ensure_ready();
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(fair_shared->lock, LW_SHARED);
	cap = fair_shared->nheld + 1;
	LWLockRelease(fair_shared->lock);
	items = palloc(sizeof(Item) * cap);
	LWLockAcquire(fair_shared->lock, LW_SHARED);
	if (fair_shared->nheld > 0)
	{
		hash_seq_init(&seq, fair_hash);
		while ((e = parked_next_held(&seq)) != NULL)
		{
			double room;

			/* Tasks already moved back and not yet claimed use up room. */
			room = fair_room_now(e, now) - (double) Min(e->unparked, e->count[ST_READY]);
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
	LWLockRelease(fair_shared->lock);
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
	fair_make_key(&k, text_to_cstring(PG_GETARG_TEXT_PP(0)),
				  PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)), false);
	a = fair_local_slot(&k);
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

	if (fair_shared == NULL)
		PG_RETURN_NULL();
	LWLockAcquire(fair_shared->lock, LW_SHARED);
	if (fair_shared->nheld > 0)
	{
		hash_seq_init(&seq, fair_hash);
		while ((e = parked_next_held(&seq)) != NULL)
		{
			double wait;

			if (e->concurrency >= 0 && e->count[ST_RUNNING] >= e->concurrency)
				continue;
			if (e->rate <= 0)
				wait = 0;
			else
			{
				double t = fair_tokens_now(e, now);

				wait = t >= 1 ? 0 : (1.0 - t) / e->rate;
			}
			/* Callers add it to a timestamp: an hour is soon enough to look again. */
			wait = Min(wait, 3600.0);
			best = Min(best, wait);
		}
	}
	LWLockRelease(fair_shared->lock);
	if (isinf(best))
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(best);
}
