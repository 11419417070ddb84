/*
 * aimd.h
 *	  Adaptive concurrency for an HTTP endpoint: how many requests tqd keeps
 *	  in flight to it, adapted the way TCP adapts its congestion window
 *	  (additive increase, multiplicative decrease).  Pure: the caller passes
 *	  the time, so the unit tests drive it with a fake clock.
 *
 * The rules (aimd.c has the why):
 *
 *	slow start    until the first cut the window doubles at each healthy
 *	              interval (as TCP does before its first loss), so a fresh
 *	              tqd reaches a large endpoint's capacity in a few
 *	              intervals rather than one slot per interval
 *	increase      after that, one slot per healthy interval: an interval in
 *	              which answers came, none was throttled, the window was
 *	              the limit (in flight reached it), and no cool-down holds
 *	decrease      when the throttled answers (429, 503) of the last
 *	              throttle_window reach both throttle_count and
 *	              throttle_rate of all answers in it, the window is
 *	              multiplied by decrease, and then held for cooldown (no
 *	              increase); answers to requests sent before a cut, or
 *	              sent while more were in flight than the window allows,
 *	              are not evidence for another one: one burst, one cut
 *	bounds        never below floor, never above ceiling
 *
 * The limit the caller applies is floor(window) (at least floor).
 */
#ifndef TQD_AIMD_H
#define TQD_AIMD_H

#include <stdbool.h>

#define AIMD_BUCKETS 10 /* the throttle window is kept in this many slices */

typedef struct AimdConf
{
	double initial;         /* window at start */
	double floor;           /* least window (>= 1) */
	double ceiling;         /* largest window: the queue's concurrency */
	double interval;        /* s: one increase step per interval at most */
	double decrease;        /* factor of a cut, in (0, 1) */
	double throttle_rate;   /* share of throttled answers that cuts, in [0, 1] */
	int throttle_count;     /* throttled answers that cut, at least */
	double throttle_window; /* s: the answers counted for a cut */
	double cooldown;        /* s: no increase after a cut */
	bool slow_start;        /* double the window until the first cut */
} AimdConf;

typedef enum AimdEvent
{
	AIMD_NONE,     /* window unchanged */
	AIMD_INCREASE, /* window grew */
	AIMD_CUT,      /* window was cut */
} AimdEvent;

typedef struct Aimd
{
	AimdConf conf;
	double window;      /* current window (a real: the limit is its floor) */
	bool slow_start;    /* still doubling (no cut yet) */
	int inflight;       /* requests sent and not answered */
	double last_cut;    /* time of the last cut; answers to older requests are stale */
	double hold_until;  /* no increase before this time */
	double interval_at; /* start of the current increase interval */
	int iv_answers;     /* answers in the current interval */
	int iv_throttled;   /* of them throttled */
	bool iv_limited;    /* in flight reached the limit during the interval */
	double bucket_at;   /* start of the current slice of the throttle window */
	int cur;            /* index of the current slice */
	int answers[AIMD_BUCKETS];
	int throttled[AIMD_BUCKETS]; /* fresh throttled answers per slice */
	/* totals, for logs and metrics */
	long long total_answers;
	long long total_throttled;
	long long cuts;
	long long increases;
} Aimd;

/* Starts at conf->initial (within the bounds), at time now (s). */
extern void aimd_init(Aimd *a, const AimdConf *conf, double now);

/* A new configuration (reload): keeps the window, within the new bounds. */
extern void aimd_reconfigure(Aimd *a, const AimdConf *conf);

/* Requests that may be in flight now: floor(window), at least conf.floor. */
extern int aimd_limit(const Aimd *a);

/*
 * A request was sent at now.  Returns its ticket, to pass to aimd_answer:
 * now, or -INFINITY when the request went out above the window (leased
 * before a cut made the window smaller), whose answer is no evidence.
 */
extern double aimd_sent(Aimd *a, double now);

/*
 * The answer to the request with this ticket came at now; throttled = 429
 * or 503.  Returns what happened to the window.
 */
extern AimdEvent aimd_answer(Aimd *a, double now, double ticket, bool throttled);

/*
 * A request ended without an answer (timeout, connection error, stopped):
 * it leaves the in-flight count but is no evidence either way.
 */
extern void aimd_abandoned(Aimd *a);

/* Ends any interval that is over by now (aimd_answer does it too). */
extern AimdEvent aimd_tick(Aimd *a, double now);

/* Fresh throttled answers and all answers in the throttle window now. */
extern void aimd_recent(Aimd *a, double now, int *answers, int *throttled);

#endif
