/*-------------------------------------------------------------------------
 *
 * fair_floor.c
 *	  Where tq_lease starts its claim scan: the scan floor, and the room
 *	  a queue's own limits leave.
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
 * transaction itself starts its probes below tasks it made ready.  It is
 * raised by a probe of the first ready task visible to a fresh snapshot at or after the floor (a
 * task locked by an unfinished claim is visible, so the floor never
 * passes one).  A task made ready by a commit the probe did not see was
 * lowered into low_acc after the floor was read: the raise goes no
 * further than low_acc, and only if no other raise began a new epoch in
 * between (then the probe's result alone is not trusted).  Repeatable
 * read and serializable transactions, whose snapshot may predate the
 * floor, only read it.
 *
 * Locking.  fair_shared->lock, as fair_entry.c describes: the probe runs with no
 * lock held, between two short holds that read the floor and its epoch
 * and then raise it if the epoch is unchanged.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"

#include "tq.h"
#include "fair.h"

PG_FUNCTION_INFO_V1(tq_lease_room);
PG_FUNCTION_INFO_V1(tq_lease_floor);

/*
 * Lowers a queue's scan floor to key (+inf: nothing to do).  Called with
 * the lock held, after the tasks concerned became visible to others: see
 * "Scan floor" in the file header.
 */
void
fair_lower_floor(FairEntry *e, double key)
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

	fair_ensure_ready();
	fair_lock_entries(queue, NULL, false, &qe, &te, now);
	room = qe ? fair_room_now(qe, now) : INFINITY;
	LWLockRelease(fair_shared->lock);
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

	fair_ensure_ready();
	fair_make_key(&qk, queue, NULL, true);
	LWLockAcquire(fair_shared->lock, LW_SHARED);
	qe = hash_search(fair_hash, &qk, HASH_FIND, NULL);
	known = qe != NULL;
	if (known)
	{
		fkey = qe->floor_key;
		fid = qe->floor_id;
		epoch = qe->floor_epoch;
	}
	LWLockRelease(fair_shared->lock);

	/*
	 * Tasks this transaction made ready lower the floor only at commit, but
	 * this transaction sees them now.
	 */
	if (fair_local_acct != NULL)
	{
		HASH_SEQ_STATUS seq;
		LocalAcct *a;

		hash_seq_init(&seq, fair_local_acct);
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

		LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
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
		LWLockRelease(fair_shared->lock);
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
