/*-------------------------------------------------------------------------
 *
 * fair_xact.c
 *	  Per-transaction accounting of fair dispatch: what a transaction
 *	  changed, applied to the shared entries or undone when it ends.
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
 * orphaned.  A slot of a tenant entry folded since into its queue's
 * overflow entry is settled there, and a tenant entry that gives up more
 * than it counts takes the rest from the overflow entry (fair_entry.c,
 * "Capacity"), so that the sum over a queue's tenants stays its count.
 *
 * Also here: policy changes (tq.policy_changed: entries re-read at once
 * and again when the transaction ends; a tenant given a policy gets its
 * entry at once) and per-minute activity counts
 * (tq_fair_note_activity, tq.forget_activity), added at commit.
 *
 * Locking.  fair_shared->lock, as fair_entry.c describes: taken exclusively when a
 * (sub)transaction ends, to apply or undo its slots; the backend-local
 * tables need no lock.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "tq.h"
#include "fair.h"

PG_FUNCTION_INFO_V1(tq_policy_changed);
PG_FUNCTION_INFO_V1(tq_forget_activity);

HTAB *fair_local_acct = NULL;
static bool acct_callbacks_registered = false;

/*
 * Policies this transaction changed: their entries re-read the tables at
 * once (so the transaction sees its change) and again when it ends, commit
 * or abort (so nobody keeps a policy read in between: the old one by a
 * concurrent session, or this transaction's rolled-back one).
 */
#define MAX_PENDING_INVAL 64
static FairKey acct_pending_inval[MAX_PENDING_INVAL];
static int acct_npending_inval = 0;
static bool acct_pending_inval_all = false;
int64 fair_parked_in_xact = 0; /* for tq.take_parked */

static void acct_xact_callback(XactEvent event, void *arg);
static void acct_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
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
static PendingAct acct_pending_act[MAX_PENDING_ACT];
static int acct_npending_act = 0;

static void
acct_ensure_callbacks(void)
{
	if (!acct_callbacks_registered)
	{
		RegisterXactCallback(acct_xact_callback, NULL);
		RegisterSubXactCallback(acct_subxact_callback, NULL);
		acct_callbacks_registered = true;
	}
}

/* The pending activity of a queue in a subtransaction, or NULL. */
static PendingAct *
acct_find_pending(const char *queue, SubTransactionId subid)
{
	for (int i = 0; i < acct_npending_act; i++)
		if (acct_pending_act[i].subid == subid && strcmp(acct_pending_act[i].queue, queue) == 0)
			return &acct_pending_act[i];
	return NULL;
}

/*
 * The current subtransaction's pending activity of a queue; NULL when the
 * list is full.
 */
static PendingAct *
acct_pending_for(const char *queue)
{
	SubTransactionId subid = GetCurrentSubTransactionId();
	PendingAct *p;

	acct_ensure_callbacks();
	p = acct_find_pending(queue, subid);
	if (p != NULL || acct_npending_act == MAX_PENDING_ACT)
		return p;
	p = &acct_pending_act[acct_npending_act++];
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
acct_pending_subxact_end(bool commit, SubTransactionId subid, SubTransactionId parent)
{
	int kept = 0;

	for (int i = 0; i < acct_npending_act; i++)
	{
		PendingAct *c = &acct_pending_act[i];

		if (c->subid == subid)
		{
			PendingAct *p;

			if (!commit)
				continue; /* dropped */
			p = acct_find_pending(c->queue, parent);
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
			acct_pending_act[kept] = acct_pending_act[i];
		kept++;
	}
	acct_npending_act = kept;
}

void
tq_fair_note_activity(const char *queue, int kind, int n)
{
	PendingAct *p = acct_pending_for(queue);

	if (p != NULL)
		p->n[kind] += n;
}

int32
fair_minute_now(void)
{
	return (int32) (GetCurrentTimestamp() / (USECS_PER_SEC * 60));
}

/* At commit: the transaction's activity into the queues' minute slots. */
static void
acct_apply_activity(void)
{
	int32 minute = fair_minute_now();
	int slot = minute % ACT_MINUTES;

	if (acct_npending_act == 0 || fair_shared == NULL)
		return;
	LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < acct_npending_act; i++)
	{
		FairKey k;
		FairEntry *e;

		memset(&k, 0, sizeof(k));
		k.dboid = MyDatabaseId;
		k.kind = KIND_QUEUE;
		strlcpy(k.queue, acct_pending_act[i].queue, NAMEDATALEN);
		e = hash_search(fair_hash, &k, HASH_FIND, NULL);
		if (e == NULL)
			continue;
		if (acct_pending_act[i].reset)
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
			e->act[slot][j] += acct_pending_act[i].n[j];
	}
	LWLockRelease(fair_shared->lock);
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

LocalAcct *
fair_local_slot(const FairKey *fk)
{
	LocalKey lk;
	bool found;
	LocalAcct *a;

	acct_ensure_callbacks();
	if (fair_local_acct == NULL)
	{
		HASHCTL info;

		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(LocalKey);
		info.entrysize = sizeof(LocalAcct);
		info.hcxt = TopMemoryContext;
		fair_local_acct =
			hash_create("tq local accounting", 16, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&lk, 0, sizeof(lk));
	lk.fk = *fk;
	lk.subid = GetCurrentSubTransactionId();
	a = hash_search(fair_local_acct, &lk, HASH_ENTER, &found);
	if (!found)
		acct_init(a);
	return a;
}

/* Marks entries for a policy re-read.  Caller holds the lock exclusively. */
static void
acct_invalidate(const FairKey *k)
{
	HASH_SEQ_STATUS seq;
	FairEntry *e;

	if (k->kind == KIND_QUEUE)
	{
		/* A queue created, altered or dropped: all its entries re-read. */
		hash_seq_init(&seq, fair_hash);
		while ((e = hash_seq_search(&seq)) != NULL)
			if (e->key.dboid == k->dboid && strcmp(e->key.queue, k->queue) == 0 &&
				e->key.kind != KIND_OVERFLOW)
				e->policy_loaded = false;
	}
	else if ((e = hash_search(fair_hash, k, HASH_FIND, NULL)) != NULL)
	{
		e->policy_loaded = false;
		e->keep = true; /* it may have a policy now: not folded until it is read */
	}
}

/* At transaction end: re-read the policies the transaction touched. */
static void
acct_settle_invalidations(void)
{
	HASH_SEQ_STATUS seq;
	FairEntry *e;

	if (fair_shared == NULL || (acct_npending_inval == 0 && !acct_pending_inval_all))
		return;
	LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
	if (acct_pending_inval_all)
	{
		hash_seq_init(&seq, fair_hash);
		while ((e = hash_seq_search(&seq)) != NULL)
			if (e->key.dboid == MyDatabaseId && e->key.kind != KIND_OVERFLOW)
			{
				e->policy_loaded = false;
				if (e->key.kind == KIND_TENANT)
					e->keep = true; /* as acct_invalidate */
			}
	}
	else
		for (int i = 0; i < acct_npending_inval; i++)
			acct_invalidate(&acct_pending_inval[i]);
	LWLockRelease(fair_shared->lock);
	acct_npending_inval = 0;
	acct_pending_inval_all = false;
}

/*
 * Empties the accounting for the next transaction.  The table is kept:
 * creating one per transaction was a measurable share of a one-row submit.
 */
static void
acct_reset(void)
{
	HASH_SEQ_STATUS seq;
	LocalAcct *a;

	if (fair_local_acct != NULL && hash_get_num_entries(fair_local_acct) > 0)
	{
		if (hash_get_num_entries(fair_local_acct) > 1024)
		{
			/* A huge transaction: give the memory back. */
			hash_destroy(fair_local_acct);
			fair_local_acct = NULL;
		}
		else
		{
			hash_seq_init(&seq, fair_local_acct);
			while ((a = hash_seq_search(&seq)) != NULL)
				hash_search(fair_local_acct, &a->key, HASH_REMOVE, NULL);
		}
	}
	fair_parked_in_xact = 0;
}

/* The overflow entry of k's queue, or NULL.  Caller holds the lock. */
static FairEntry *
acct_overflow_of(const FairKey *k)
{
	FairKey ok;

	if (k->kind == KIND_OVERFLOW)
		return NULL;
	fair_overflow_key(&ok, k);
	return hash_search(fair_hash, &ok, HASH_FIND, NULL);
}

/*
 * Takes a slot's decrements from e: those made at commit, or the
 * increments undone at abort.  A tenant entry that counts fewer tasks in a
 * state than it gives up had some of them counted in its queue's overflow
 * entry (it was folded, then made again: fair_entry.c, "Capacity"): the
 * rest is taken from there, so that the sum over the queue's tenants
 * stays exact.  Caller holds the lock exclusively.
 */
static void
acct_take_counts(FairEntry *e, const LocalAcct *a, bool commit)
{
	FairEntry *o = NULL;
	bool looked = false;

	for (int s = 0; s < NSTATES; s++)
	{
		int64 d = commit ? a->deferred[s] : a->applied[s]; /* to take away */

		if (d > e->count[s] && e->key.kind != KIND_QUEUE && !looked)
		{
			o = acct_overflow_of(&e->key);
			looked = true;
		}
		if (d > e->count[s] && o != NULL)
			o->count[s] = Max(o->count[s] - (d - e->count[s]), 0);
		e->count[s] = Max(e->count[s] - d, 0);
	}
	if (e->key.kind != KIND_QUEUE && fair_entry_idle(e))
		fair_shared->idle_since_scan = true;
	if (o != NULL && fair_entry_idle(o))
		fair_shared->idle_since_scan = true;
}

/*
 * Applies (commit) or undoes (abort) the accounting in the local slots
 * selected by subid (InvalidSubTransactionId: all).  Must not fail.
 */
static void
acct_settle(bool commit, SubTransactionId subid)
{
	HASH_SEQ_STATUS seq;
	LocalAcct *a;
	bool wake = false;
	TimestampTz now;

	if (fair_local_acct == NULL || fair_shared == NULL)
		return;
	now = GetCurrentTimestamp();
	LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, fair_local_acct);
	while ((a = hash_seq_search(&seq)) != NULL)
	{
		FairEntry *e;

		if (subid != InvalidSubTransactionId && a->key.subid != subid)
			continue;
		e = hash_search(fair_hash, &a->key.fk, HASH_FIND, NULL);
		if (e == NULL && a->key.fk.kind != KIND_QUEUE)
		{
			/* Folded since (fair_entry.c, "Capacity"): its counts are there. */
			FairEntry *o = acct_overflow_of(&a->key.fk);

			if (o != NULL)
				acct_take_counts(o, a, commit);
		}
		else if (e != NULL)
		{
			acct_take_counts(e, a, commit);
			if (commit && a->clear_held && e->held && e->held_gen == a->clear_gen)
			{
				e->held = false;
				fair_shared->nheld--;
			}
			if (commit && a->set_held)
			{
				if (!e->held)
					fair_shared->nheld++;
				e->held = true;
				e->held_gen++;
				wake = true;
			}
			if (commit && e->held && a->deferred[ST_RUNNING] > 0 && fair_room_now(e, now) >= 1)
				wake = true;
			/* Tasks made ready (commit), or claims undone (abort). */
			fair_lower_floor(e, commit ? a->lower : a->taken_min);
		}
		if (subid != InvalidSubTransactionId)
			hash_search(fair_local_acct, &a->key, HASH_REMOVE, NULL);
	}
	LWLockRelease(fair_shared->lock);

	if (wake)
		tq_wake_worker_for_housekeeping();
}

static void
acct_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (fair_local_acct != NULL && hash_get_num_entries(fair_local_acct) > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that changed tq tasks"),
						 errdetail("tq keeps its counters and quotas in shared memory, settled "
								   "when the changing transaction commits."),
						 errhint("Submit and finish tasks outside two-phase transactions.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			acct_settle(true, InvalidSubTransactionId);
			acct_settle_invalidations();
			acct_apply_activity();
			acct_npending_act = 0;
			acct_reset();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			acct_settle(false, InvalidSubTransactionId);
			acct_settle_invalidations();
			acct_npending_act = 0;
			acct_reset();
			break;
		default:
			break;
	}
}

static void
acct_subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid,
					  void *arg)
{
	HASH_SEQ_STATUS seq;
	LocalAcct *a;

	if (event == SUBXACT_EVENT_ABORT_SUB || event == SUBXACT_EVENT_COMMIT_SUB)
		acct_pending_subxact_end(event == SUBXACT_EVENT_COMMIT_SUB, mySubid, parentSubid);
	if (fair_local_acct == NULL)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
		acct_settle(false, mySubid);
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		/* Hand the slots to the parent (merging). */
		List *moved = NIL;
		ListCell *lc;

		hash_seq_init(&seq, fair_local_acct);
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

			hash_search(fair_local_acct, &c->key, HASH_REMOVE, NULL);
			c->key.subid = parentSubid;
			p = hash_search(fair_local_acct, &c->key, HASH_ENTER, &found);
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

	if (fair_shared == NULL || PG_ARGISNULL(0))
		PG_RETURN_VOID();
	fair_make_key(&k, text_to_cstring(PG_GETARG_TEXT_PP(0)),
				  PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)),
				  PG_GETARG_BOOL(2));
	LWLockAcquire(fair_shared->lock, LW_EXCLUSIVE);
	acct_invalidate(&k);
	LWLockRelease(fair_shared->lock);
	acct_ensure_callbacks();
	if (acct_npending_inval < MAX_PENDING_INVAL)
		acct_pending_inval[acct_npending_inval++] = k;
	else
		acct_pending_inval_all = true;
	if (k.kind == KIND_TENANT)
	{
		FairEntry *qe, *te;

		/*
		 * The tenant's entry now, not at its next task: one counted in its
		 * queue's overflow entry gets its tasks counted against its new
		 * limits (fair_entry.c, "Capacity").
		 */
		fair_ensure_ready();
		fair_lock_entries(k.queue, k.tenant, true, &qe, &te, GetCurrentTimestamp());
		LWLockRelease(fair_shared->lock);
	}
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
	PendingAct *p = acct_pending_for(queue);

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
