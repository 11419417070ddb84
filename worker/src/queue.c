/*
 * queue.c
 *	  Queues and http endpoints: the runtime side of the configuration's
 *	  [queue:NAME] sections, and the endpoints' status lines.
 *
 * A Queue is made the first time its section appears and kept for the
 * Daemon's life: a reload that removes the section only retires it
 * (Queue.conf NULL), so its counters stay on /metrics and its running
 * tasks find it.  An Endpoint is one URL of http queues, shared by the
 * queues that send there, with its adaptive window (aimd.c); it too is
 * kept across reloads while its URL stays configured, so a reload does not
 * reset what was learnt.  Its URL is printed redacted (Endpoint.shown).
 *
 * Ownership: the Daemon's lists own both; daemon_free frees them.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "log.h"
#include "util.h"

/* A linear search, over at most config.c's MAX_QUEUES (1000) queues. */
Queue *
queue_find(Daemon *d, const char *name)
{
	for (Queue *q = d->queues; q; q = q->next)
		if (strcmp(q->name, name) == 0)
			return q;
	return NULL;
}

static Endpoint *
endpoint_find(Daemon *d, const char *url)
{
	for (Endpoint *e = d->endpoints; e; e = e->next)
		if (strcmp(e->url, url) == 0)
			return e;
	return NULL;
}

/*
 * The endpoint's name in logs and /metrics: its URL redacted, and, when
 * another endpoint has the same redacted form (/flaky?a=1 and /flaky?a=2),
 * " (2)", " (3)"... after it, so that each has a series of its own.
 */
static char *
endpoint_shown(Daemon *d, const char *url_shown)
{
	char buf[1100];
	bool taken;

	if (url_shown == NULL)
		url_shown = "";
	snprintf(buf, sizeof(buf), "%s", url_shown);
	for (int n = 2;; n++)
	{
		taken = false;
		for (Endpoint *e = d->endpoints; e && !taken; e = e->next)
			taken = strcmp(e->shown, buf) == 0;
		if (!taken)
			return xstrdup(buf);
		snprintf(buf, sizeof(buf), "%s (%d)", url_shown, n);
	}
}

/* The window's rules from a queue's keys; the ceiling is given. */
static void
endpoint_aimd_conf(const QueueConf *qc, double ceiling, AimdConf *ac)
{
	memset(ac, 0, sizeof(*ac));
	ac->ceiling = ceiling;
	if (!qc->adaptive)
	{
		/* Fixed at the ceiling: every bound is the ceiling. */
		ac->initial = ac->floor = ceiling;
		ac->decrease = 1;
		ac->throttle_count = 1;
		ac->throttle_window = 1;
		return;
	}
	ac->initial = qc->aimd_initial;
	ac->floor = qc->aimd_min;
	ac->interval = qc->aimd_interval;
	ac->decrease = qc->aimd_decrease;
	ac->throttle_rate = qc->aimd_throttle_rate;
	ac->throttle_count = qc->aimd_throttle_count;
	ac->throttle_window = qc->aimd_throttle_window;
	ac->cooldown = qc->aimd_cooldown;
	ac->slow_start = qc->aimd_slow_start != 0;
}

/*
 * Gives every http queue its endpoint (by URL).  An endpoint's rules come
 * from the first queue (in the file) that sends to it; its ceiling is the
 * sum of the concurrency of all of them, each queue still capped by its own.
 */
static void
endpoints_sync(Daemon *d)
{
	for (Endpoint *e = d->endpoints; e; e = e->next)
		e->used = false;
	for (Queue *q = d->queues; q; q = q->next)
		if (q->conf == NULL || q->conf->handler != HANDLER_HTTP)
			q->ep = NULL;
	for (int i = 0; i < d->config->nqueues; i++)
	{
		const QueueConf *qc = &d->config->queues[i];
		Endpoint *e;
		double ceiling = 0;
		AimdConf ac;
		bool is_new;

		if (qc->handler != HANDLER_HTTP)
			continue;
		e = endpoint_find(d, qc->url);
		if (e != NULL && e->used)
		{
			queue_find(d, qc->name)->ep = e;
			continue;
		}
		is_new = e == NULL;
		if (is_new)
		{
			e = xcalloc(1, sizeof(Endpoint));
			e->url = xstrdup(qc->url);
			e->shown = endpoint_shown(d, qc->url_shown);
			e->next = d->endpoints;
			d->endpoints = e;
		}
		e->used = true;
		for (int j = 0; j < d->config->nqueues; j++)
			if (d->config->queues[j].handler == HANDLER_HTTP &&
				strcmp(d->config->queues[j].url, qc->url) == 0)
				ceiling += d->config->queues[j].concurrency;
		endpoint_aimd_conf(qc, ceiling, &ac);
		if (is_new)
			aimd_init(&e->aimd, &ac, ev_now(d->loop));
		else
			aimd_reconfigure(&e->aimd, &ac);
		queue_find(d, qc->name)->ep = e;
	}
}

/* Points the queues at config's sections; adds new ones; retires gone ones. */
void
queues_sync(Daemon *d)
{
	for (Queue *q = d->queues; q; q = q->next)
	{
		/* A queue that leaves the configuration hands its buffer back (lease.c). */
		if (config_queue(d->config, q->name) == NULL)
			buffer_hand_back(d, q);
		q->conf = NULL;
	}
	for (int i = 0; i < d->config->nqueues; i++)
	{
		const QueueConf *qc = &d->config->queues[i];
		Queue *q = queue_find(d, qc->name);

		if (q == NULL)
		{
			q = xcalloc(1, sizeof(Queue));
			q->name = xstrdup(qc->name);
			q->next = d->queues;
			d->queues = q;
		}
		q->conf = qc;
		q->wanted = true;
	}
	endpoints_sync(d);
}

/* Logs what the window did, with what it is now. */
void
endpoint_log_window(Endpoint *e, AimdEvent ev, double now)
{
	int answers, throttled;

	if (ev == AIMD_NONE)
		return;
	aimd_recent(&e->aimd, now, &answers, &throttled);
	if (ev == AIMD_CUT)
		tlog(LOG_INFO, "endpoint throttled: window cut",
			 "url=%s window=%.2f limit=%d in_flight=%d cuts=%lld", kvq(e->shown), e->aimd.window,
			 aimd_limit(&e->aimd), e->aimd.inflight, e->aimd.cuts);
	else
		tlog(LOG_DEBUG, "endpoint healthy: window grows",
			 "url=%s window=%.2f limit=%d in_flight=%d answers=%d", kvq(e->shown), e->aimd.window,
			 aimd_limit(&e->aimd), e->aimd.inflight, answers);
}

/* One line per endpoint: what the window is and what came back since the last. */
void
endpoint_status_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	Daemon *d = container_of(w, Daemon, status_timer);
	double now = ev_now(loop);

	for (Endpoint *e = d->endpoints; e; e = e->next)
	{
		long long answers = e->aimd.total_answers - e->logged_answers;
		long long throttled = e->aimd.total_throttled - e->logged_throttled;

		if (!e->used && e->aimd.inflight == 0)
			continue;
		endpoint_log_window(e, aimd_tick(&e->aimd, now), now);
		tlog(LOG_INFO, "endpoint status",
			 "url=%s window=%.2f limit=%d in_flight=%d answers=%lld throttled=%lld cuts=%lld",
			 kvq(e->shown), e->aimd.window, aimd_limit(&e->aimd), e->aimd.inflight, answers,
			 throttled, e->aimd.cuts);
		e->logged_answers = e->aimd.total_answers;
		e->logged_throttled = e->aimd.total_throttled;
	}
}

/* Endpoint status lines every status_interval, when there is an http queue. */
void
endpoint_status_timer_set(Daemon *d)
{
	ev_timer_stop(d->loop, &d->status_timer);
	if (d->config->status_interval > 0 && d->endpoints != NULL)
	{
		ev_timer_set(&d->status_timer, d->config->status_interval, d->config->status_interval);
		ev_timer_start(d->loop, &d->status_timer);
	}
}
