/*
 * aimd.c
 *	  The adaptive concurrency window of an HTTP endpoint (aimd.h has the
 *	  rules).
 *
 * Why these rules:
 *
 * - Throttled answers (429 Too Many Requests, 503 Service Unavailable) are
 *   the endpoint saying "fewer, please"; they are the only signal.  Slow
 *   answers and errors are not: a slow task is not an overloaded endpoint,
 *   and cutting on 5xx would let one failing task starve a healthy one.
 * - A cut needs both a count and a share of the answers in a recent
 *   window, so one stray 429 among hundreds of good answers changes
 *   nothing, while a small endpoint that throttles 3 of its 10 answers is
 *   heard at once.  The window is kept in AIMD_BUCKETS time slices: memory
 *   and work stay constant however many answers come.
 * - Answers to requests sent before the last cut are no evidence for the
 *   next one: they were sent under the old, too large window.  Without
 *   this rule the burst of 429s already on its way cuts the window again
 *   and again (TCP's "once per round trip").  A further cut needs throttled
 *   answers to requests sent after the cut within the new window: the
 *   endpoint is still overloaded at the smaller window.  (Tasks leased
 *   before the cut may still go out above it: tqd does not hold a leased
 *   task back; their answers do not count.)
 * - An increase needs the window to have been the limit: when less work
 *   came than the window allows, its answers say nothing about a larger
 *   window, and growing it anyway would let it float far above what the
 *   endpoint was ever shown to take (the next burst would then overload it
 *   at once).  Likewise an interval with a throttled answer does not grow.
 * - Slow start until the first cut: doubling per interval reaches an
 *   endpoint of capacity 100 from a window of 4 in 5 intervals instead of
 *   96.  After a cut the capacity is roughly known, and the window only
 *   probes one slot per interval above it.
 */
#include <math.h>
#include <string.h>

#include "aimd.h"

static double
clamp(const Aimd *a, double w)
{
	double lo = a->conf.floor >= 1 ? a->conf.floor : 1;
	double hi = a->conf.ceiling >= lo ? a->conf.ceiling : lo;

	return w < lo ? lo : w > hi ? hi : w;
}

static void
reset_buckets(Aimd *a, double now)
{
	memset(a->answers, 0, sizeof(a->answers));
	memset(a->throttled, 0, sizeof(a->throttled));
	a->cur = 0;
	a->bucket_at = now;
}

/* Moves the current slice of the throttle window up to now. */
static void
advance_buckets(Aimd *a, double now)
{
	double slice = a->conf.throttle_window / AIMD_BUCKETS;

	if (slice <= 0 || now - a->bucket_at >= a->conf.throttle_window + slice)
	{
		/* Idle for longer than the whole window (or no window): start over. */
		if (now - a->bucket_at >= slice)
			reset_buckets(a, now);
		return;
	}
	while (now >= a->bucket_at + slice)
	{
		a->cur = (a->cur + 1) % AIMD_BUCKETS;
		a->answers[a->cur] = 0;
		a->throttled[a->cur] = 0;
		a->bucket_at += slice;
	}
}

static void
start_interval(Aimd *a, double at)
{
	a->interval_at = at;
	a->iv_answers = 0;
	a->iv_throttled = 0;
	/* Requests still in flight that fill the window count for the new interval. */
	a->iv_limited = a->inflight >= aimd_limit(a);
}

void
aimd_init(Aimd *a, const AimdConf *conf, double now)
{
	memset(a, 0, sizeof(*a));
	a->conf = *conf;
	a->window = clamp(a, conf->initial);
	a->slow_start = conf->slow_start;
	a->last_cut = -INFINITY;
	a->hold_until = now;
	reset_buckets(a, now);
	start_interval(a, now);
}

void
aimd_reconfigure(Aimd *a, const AimdConf *conf)
{
	bool new_window = conf->throttle_window != a->conf.throttle_window;

	a->conf = *conf;
	a->window = clamp(a, a->window);
	if (!conf->slow_start)
		a->slow_start = false;
	if (new_window)
		reset_buckets(a, a->bucket_at);
}

int
aimd_limit(const Aimd *a)
{
	int n = (int) floor(a->window);
	int lo = a->conf.floor >= 1 ? (int) a->conf.floor : 1;

	return n < lo ? lo : n;
}

AimdEvent
aimd_tick(Aimd *a, double now)
{
	AimdEvent ev = AIMD_NONE;

	if (a->conf.interval <= 0)
		return ev;
	while (now >= a->interval_at + a->conf.interval)
	{
		bool healthy = a->iv_answers > 0 && a->iv_throttled == 0 && a->iv_limited &&
					   a->interval_at >= a->hold_until;

		if (healthy)
		{
			double w = clamp(a, a->slow_start ? a->window * 2 : a->window + 1);

			if (w > a->window)
			{
				a->window = w;
				a->increases++;
				ev = AIMD_INCREASE;
			}
		}
		if (now - a->interval_at >= 2 * a->conf.interval)
		{
			/* Nothing happened for a while: the next interval starts now. */
			start_interval(a, now);
			break;
		}
		start_interval(a, a->interval_at + a->conf.interval);
	}
	return ev;
}

double
aimd_sent(Aimd *a, double now)
{
	aimd_tick(a, now);
	a->inflight++;
	if (a->inflight >= aimd_limit(a) && now >= a->interval_at)
		a->iv_limited = true;
	return a->inflight <= aimd_limit(a) ? now : -INFINITY;
}

void
aimd_abandoned(Aimd *a)
{
	if (a->inflight > 0)
		a->inflight--;
}

AimdEvent
aimd_answer(Aimd *a, double now, double ticket, bool throttled)
{
	AimdEvent ev = aimd_tick(a, now);
	bool fresh = ticket >= a->last_cut;
	int answers = 0, thr = 0;

	if (a->inflight > 0)
		a->inflight--;
	a->total_answers++;
	if (throttled)
		a->total_throttled++;
	if (now >= a->interval_at)
	{
		a->iv_answers++;
		if (throttled)
			a->iv_throttled++;
	}
	advance_buckets(a, now);
	a->answers[a->cur]++;
	if (!throttled || !fresh)
		return ev;
	a->throttled[a->cur]++;
	for (int i = 0; i < AIMD_BUCKETS; i++)
	{
		answers += a->answers[i];
		thr += a->throttled[i];
	}
	if (thr < a->conf.throttle_count || thr < a->conf.throttle_rate * answers)
		return ev;

	/* Cut, then hold; the evidence starts over from here. */
	a->window = clamp(a, a->window * a->conf.decrease);
	a->slow_start = false;
	a->last_cut = now;
	a->hold_until = now + a->conf.cooldown;
	a->cuts++;
	reset_buckets(a, now);
	start_interval(a, a->hold_until);
	return AIMD_CUT;
}

void
aimd_recent(Aimd *a, double now, int *answers, int *throttled)
{
	*answers = 0;
	*throttled = 0;
	advance_buckets(a, now);
	for (int i = 0; i < AIMD_BUCKETS; i++)
	{
		*answers += a->answers[i];
		*throttled += a->throttled[i];
	}
}
