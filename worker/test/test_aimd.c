/*
 * test_aimd.c
 *	  Unit tests of aimd.c, the adaptive window of an HTTP endpoint, on a
 *	  fake clock: each rule alone, then a simulated endpoint of capacity C
 *	  (it throttles whatever arrives while more than C requests are in
 *	  flight), which the window must find and keep.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aimd.h"
#include "tap.h"

static AimdConf
base_conf(void)
{
	AimdConf c = {
		.initial = 4,
		.floor = 1,
		.ceiling = 100,
		.interval = 1.0,
		.decrease = 0.5,
		.throttle_rate = 0.05,
		.throttle_count = 3,
		.throttle_window = 1.0,
		.cooldown = 2.0,
		.slow_start = true,
	};

	return c;
}

/* Fills the window at t and answers everything healthily at t + dt. */
static void
full_round(Aimd *a, double t, double dt)
{
	int n = aimd_limit(a) - a->inflight;

	for (int i = 0; i < n; i++)
		aimd_sent(a, t);
	for (int i = 0; i < n; i++)
		aimd_answer(a, t + dt, t, false);
}

static void
test_rules(void)
{
	AimdConf c = base_conf();
	Aimd a;
	double t = 0;

	aimd_init(&a, &c, t);
	is_int(aimd_limit(&a), 4, "starts at the initial window");

	/* Slow start: doubles per healthy interval while the window is the limit. */
	for (int i = 0; i < 3; i++)
	{
		full_round(&a, t + 0.1, 0.1);
		t += 1.0;
		aimd_tick(&a, t + 0.001);
	}
	is_int(aimd_limit(&a), 32, "slow start doubles: 4 -> 8 -> 16 -> 32 in three intervals");

	/* Not limited: answers came but the window was never full. */
	aimd_sent(&a, t + 0.1);
	aimd_answer(&a, t + 0.2, t + 0.1, false);
	t += 1.0;
	aimd_tick(&a, t + 0.001);
	is_int(aimd_limit(&a), 32, "no growth when less work came than the window allows");

	/* One stray 429 among many good answers: no cut. */
	for (int i = 0; i < 32; i++)
		aimd_sent(&a, t + 0.1);
	for (int i = 0; i < 31; i++)
		aimd_answer(&a, t + 0.2, t + 0.1, false);
	ok(aimd_answer(&a, t + 0.2, t + 0.1, true) == AIMD_NONE, "one stray 429: no cut");
	t += 1.0;
	aimd_tick(&a, t + 0.001);
	is_int(aimd_limit(&a), 32, "and no growth in an interval with a throttled answer");

	/* Three throttled of ten in the window: cut by the factor. */
	t += 5.0; /* the stray one has left the throttle window */
	for (int i = 0; i < 10; i++)
		aimd_sent(&a, t);
	for (int i = 0; i < 7; i++)
		aimd_answer(&a, t + 0.05, t, false);
	aimd_answer(&a, t + 0.06, t, true);
	aimd_answer(&a, t + 0.07, t, true);
	ok(aimd_answer(&a, t + 0.08, t, true) == AIMD_CUT, "3 throttled of 10: cut");
	is_int(aimd_limit(&a), 16, "cut by the factor: 32 -> 16");
	ok(!a.slow_start, "a cut ends slow start");

	/* The burst already on its way is no evidence for another cut. */
	for (int i = 0; i < 20; i++)
		aimd_sent(&a, t + 0.01); /* sent before the cut at t + 0.08 */
	for (int i = 0; i < 20; i++)
		aimd_answer(&a, t + 0.1, t + 0.01, true);
	is_int(aimd_limit(&a), 16, "throttled answers to requests sent before the cut: no second cut");

	/* Cool-down: no growth before it ends, even when healthy and full. */
	full_round(&a, t + 0.5, 0.1);
	full_round(&a, t + 1.5, 0.1);
	aimd_tick(&a, t + 1.9);
	is_int(aimd_limit(&a), 16, "no growth during the cool-down");

	/* After it: one slot per healthy interval. */
	t += 0.08 + 2.0; /* the hold ends */
	for (int i = 0; i < 3; i++)
	{
		full_round(&a, t + 0.1, 0.1);
		t += 1.0;
		aimd_tick(&a, t + 0.001);
	}
	is_int(aimd_limit(&a), 19, "after the cool-down: +1 per interval (16 -> 19)");

	/* Fresh throttling at the smaller window cuts again. */
	for (int i = 0; i < 10; i++)
		aimd_sent(&a, t);
	for (int i = 0; i < 10; i++)
		aimd_answer(&a, t + 0.01, t, i < 5);
	is_int(aimd_limit(&a), 9, "fresh throttling cuts again (19 -> 9.5)");
}

static void
test_bounds(void)
{
	AimdConf c = base_conf();
	Aimd a;
	double t = 0;

	c.initial = 500;
	aimd_init(&a, &c, t);
	is_int(aimd_limit(&a), 100, "the initial window is capped at the ceiling");
	for (int i = 0; i < 4; i++)
	{
		full_round(&a, t + 0.1, 0.1);
		t += 1.0;
		aimd_tick(&a, t + 0.001);
	}
	is_int(aimd_limit(&a), 100, "never grows above the ceiling");

	c.floor = 3;
	c.cooldown = 0;
	aimd_reconfigure(&a, &c);
	for (int k = 0; k < 12; k++)
	{
		t += 0.5;
		for (int i = 0; i < 10; i++)
			aimd_sent(&a, t);
		for (int i = 0; i < 10; i++)
			aimd_answer(&a, t + 0.01, t, true);
	}
	is_int(aimd_limit(&a), 3, "never cut below the floor");

	c.ceiling = 2;
	c.floor = 1;
	aimd_reconfigure(&a, &c);
	is_int(aimd_limit(&a), 2, "a reload with a smaller ceiling brings the window down");
	ok(a.inflight == 0, "in flight back to 0 once everything was answered");
	aimd_sent(&a, t);
	aimd_abandoned(&a);
	ok(a.inflight == 0, "an abandoned request leaves the in-flight count");

	/* Fixed window (adaptive = off is a floor at the ceiling). */
	c.floor = c.ceiling = c.initial = 10;
	aimd_init(&a, &c, t);
	for (int i = 0; i < 10; i++)
		aimd_sent(&a, t);
	for (int i = 0; i < 10; i++)
		aimd_answer(&a, t + 0.01, t, true);
	is_int(aimd_limit(&a), 10, "floor = ceiling: the window never moves");

	/* Sent after a cut but above the new window (leased before it): no evidence. */
	c = base_conf();
	c.initial = 32;
	aimd_init(&a, &c, 0);
	for (int i = 0; i < 32; i++)
		aimd_sent(&a, 0);
	for (int i = 0; i < 10; i++)
		aimd_answer(&a, 0.1, 0, i < 3);
	is_int(aimd_limit(&a), 16, "cut to 16 with 22 still in flight");
	{
		double tickets[5];
		bool all_void = true;

		for (int i = 0; i < 5; i++)
		{
			tickets[i] = aimd_sent(&a, 0.2);
			all_void = all_void && isinf(tickets[i]);
		}
		ok(all_void, "requests sent above the window get a void ticket");
		for (int i = 0; i < 5; i++)
			aimd_answer(&a, 0.3, tickets[i], true);
	}
	is_int(aimd_limit(&a), 16, "their throttled answers do not cut again");
}

/*
 * A simulated endpoint of capacity cap: a request that arrives while
 * more than cap are in flight is answered 429 after rtt; others after
 * service.  The client refills the window as soon as a slot frees (after
 * a refill delay, tqd's lease round trip).  Returns the window's min and
 * max after warmup, and the share of throttled answers after warmup.
 */
typedef struct Sim
{
	double min_w, max_w, throttled_share;
	long long answers;
} Sim;

#define MAXREQ 4096

static Sim
simulate(double decrease, int cap, double service, double duration, double warmup)
{
	AimdConf c = base_conf();
	Aimd a;
	double done_at[MAXREQ], sent_at[MAXREQ];
	bool thr[MAXREQ];
	int n = 0;      /* requests in flight in the simulation */
	int served = 0; /* of them taking service (not throttled) */
	double t = 0, step = 0.001, refill_at = 0;
	long long ans = 0, thr_ans = 0;
	Sim s = {.min_w = 1e9, .max_w = 0};

	c.decrease = decrease;
	c.ceiling = 1000;
	c.interval = 0.25;
	c.cooldown = 1.0;
	aimd_init(&a, &c, t);
	for (t = 0; t < duration; t += step)
	{
		/* Answers due. */
		for (int i = 0; i < n;)
		{
			if (done_at[i] <= t)
			{
				aimd_answer(&a, t, sent_at[i], thr[i]);
				if (!thr[i])
					served--;
				if (t >= warmup)
				{
					ans++;
					thr_ans += thr[i];
				}
				done_at[i] = done_at[n - 1];
				sent_at[i] = sent_at[n - 1];
				thr[i] = thr[n - 1];
				n--;
				refill_at = t + 0.002;
			}
			else
				i++;
		}
		aimd_tick(&a, t);
		/* Refill up to the window, a lease round trip after a slot freed. */
		if (t >= refill_at)
			while (a.inflight < aimd_limit(&a) && n < MAXREQ)
			{
				bool over = served + 1 > cap;

				sent_at[n] = aimd_sent(&a, t); /* the ticket */
				thr[n] = over;
				done_at[n] = t + (over ? 0.0005 : service);
				if (!over)
					served++;
				n++;
			}
		if (t >= warmup)
		{
			s.min_w = fmin(s.min_w, a.window);
			s.max_w = fmax(s.max_w, a.window);
		}
	}
	s.throttled_share = ans ? (double) thr_ans / ans : 0;
	s.answers = ans;
	return s;
}

static void
test_convergence(void)
{
	Sim s = simulate(0.75, 20, 0.05, 60, 10);

	ok(s.min_w >= 14 && s.max_w <= 26,
	   "capacity 20, decrease 0.75: the window stays in [14, 26] after 10 s (saw %.2f to %.2f)",
	   s.min_w, s.max_w);
	ok(s.throttled_share < 0.10, "and under 10%% of the answers are throttled (%.2f%% of %lld)",
	   s.throttled_share * 100, s.answers);
	s = simulate(0.5, 20, 0.05, 60, 10);
	ok(s.min_w >= 10 && s.max_w <= 22,
	   "capacity 20, decrease 0.5: the window saws between C/2 and C+1 (saw %.2f to %.2f)", s.min_w,
	   s.max_w);
	ok(s.throttled_share < 0.10, "decrease 0.5: under 10%% throttled (%.2f%%)",
	   s.throttled_share * 100);
	s = simulate(0.75, 200, 0.05, 90, 30);
	ok(s.min_w >= 140 && s.max_w <= 260,
	   "capacity 200: found by slow start and kept (saw %.2f to %.2f)", s.min_w, s.max_w);
}

int
main(void)
{
	plan(27);
	test_rules();
	test_bounds();
	test_convergence();
	return done_testing();
}
