/*-------------------------------------------------------------------------
 *
 * tq.h
 *	  Declarations shared by the C files of the tq extension.
 *
 * tq keeps its task store in ordinary tables (see sql/tq--*.sql); the C
 * code holds what SQL cannot express well or cheaply:
 *
 *	 tq.c		module initialisation and settings
 *	 checks.c	hot-path validators (tq.check_*) and the retry backoff
 *	 shmem.c	shared-memory state and the commit hook that feeds it
 *	 bgworker.c	the background worker
 *	 ratelimit.c	token buckets for tq_rate_consume
 *	 fair_*.c	fair dispatch, limits, quotas and counters (the tq.task
 *				trigger): seven files, listed in fair.h
 *	 wait.c		tq_wait: sleeping until a task finishes
 *	 trace.c	per-attempt traces (tq.task.trace)
 *	 traceparent.c	W3C traceparent of a task: the check, tq.traceparent
 *
 *-------------------------------------------------------------------------
 */
#ifndef TQ_H
#define TQ_H

#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

/* Settings (GUCs), defined in tq.c; all are named tq.<name>. */
extern bool tq_producer_notify;       /* wake idle workers when tasks get ready */
extern int tq_max_payload_size;       /* largest accepted payload, bytes */
extern int tq_maintenance_interval;   /* ms between maintenance passes */
extern char *tq_database;             /* database the background worker serves */
extern int tq_worker_naptime;         /* ms the worker sleeps at most */
extern int tq_worker_min_interval;    /* ms between two housekeeping passes */
extern int tq_max_rate_keys;          /* token buckets in shared memory */
extern int tq_max_rate_keys_per_role; /* of which one role may hold */
extern int tq_notify_interval;        /* ms between two notify passes */
extern int tq_max_tenants;            /* fair-dispatch entries in shared memory */
extern char *tq_traceparent;          /* traceparent of tasks submitted without one */

/* Queues flagged ready between two worker passes, before ready_all. */
#define TQ_READY_SLOTS 64

/*
 * Shared state; see shmem.c for the locking protocol.  Every field is
 * protected by lock.
 */
typedef struct TqShared
{
	LWLock *lock;
	/* The background worker, while it runs (worker_latch NULL otherwise). */
	pid_t worker_pid;
	Latch *worker_latch;
	Oid worker_dboid;               /* database it serves */
	TimestampTz worker_started;     /* when it attached */
	TimestampTz worker_last_pass;   /* end of its last housekeeping pass */
	TimestampTz worker_next_wakeup; /* when it plans to look again */
	int64 worker_passes;            /* housekeeping passes since start */
	int64 worker_notifies;          /* tq_ready notifications sent */
	/* Filled by committing backends, emptied by the worker. */
	bool schedule_changed;                   /* a commit changed tq.task */
	bool ready_all;                          /* ready[] overflowed: wake every queue */
	int nready;                              /* used entries of ready[] */
	char ready[TQ_READY_SLOTS][NAMEDATALEN]; /* queues with new ready work */
} TqShared;

extern TqShared *tq_shared;
extern bool tq_is_background_worker; /* this process is tq's worker */

extern void tq_shmem_init(void);
extern void tq_note_scheduled(void);
extern void tq_wake_worker_for_housekeeping(void);
extern void tq_worker_register(void);
extern Size tq_rate_shmem_size(void);
extern void tq_rate_shmem_init(void);
extern Size tq_fair_shmem_size(void);
extern void tq_fair_shmem_init(void);
extern Datum tq_trace_append(Datum trace, bool trace_null, int32 attempt, TimestampTz ready_at,
							 TimestampTz leased_at, const char *worker, TimestampTz ended_at,
							 const char *outcome, const char *error);
extern void tq_fair_note_activity(const char *queue, int kind, int n);
#define TQ_ACT_SUCCEEDED 0
#define TQ_ACT_FAILED 1
#define TQ_ACT_DEAD 2
#define TQ_ACT_OTHER 3
/* W3C traceparent (traceparent.c): version 00 is 55 bytes; any is at most 512. */
#define TQ_TRACEPARENT_LEN 55
#define TQ_TRACEPARENT_MAX 512
extern const char *tq_traceparent_problem(const char *s, int len);
extern bool tq_traceparent_check_hook(char **newval, void **extra, GucSource source);
extern Size tq_wait_shmem_size(void);
extern void tq_wait_shmem_init(void);
/* Labels (checks.c): offset of the first forbidden character, or -1. */
extern int tq_label_bad_char(const unsigned char *p, int len, int *width);
/* Tenant binding (access.c). */
extern bool tq_caller_is_bound(void);
extern bool tq_tenant_ok(const char *queue, const char *tenant);
extern void tq_require_tenant(const char *queue, const char *tenant);

/* A table in shared memory that callers fill, as tq_shared_usage shows it (shmem.c). */
typedef struct TqUsage
{
	int64 used;               /* entries in use now */
	int64 capacity;           /* entries at most */
	int64 full_events;        /* times a caller found it full, since the server started */
	TimestampTz last_full_at; /* the last of them; 0: never */
	int64 overflow;           /* tenants: live tasks counted in overflow entries */
} TqUsage;
extern void tq_fair_usage(TqUsage *u);
extern void tq_rate_usage(TqUsage *u);
extern void tq_wait_usage(TqUsage *u);

/*
 * A token bucket's content at now: tokens at 'at', refilled at rate per
 * second, capped at burst.  The one refill rule of tq_rate_consume's
 * buckets (ratelimit.c) and of the queues' and tenants' buckets
 * (fair_entry.c).
 */
static inline double
tq_bucket_level(double tokens, TimestampTz at, double rate, double burst, TimestampTz now)
{
	if (now > at)
		tokens += (double) (now - at) / USECS_PER_SEC * rate;
	return Min(tokens, burst);
}

#endif /* TQ_H */
