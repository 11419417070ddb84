/*
 * lease.c
 *	  Leasing: one tq_lease call per queue with room, all on the work
 *	  connection in one round trip, each sized to the free slots (see
 *	  daemon.c, Capacity) and, for an http queue, to its endpoint's window;
 *	  and the poll timer, which also reads the queues' backlog for
 *	  /metrics.
 *
 * A queue has at most one tq_lease on its way (Queue.leasing).  The room a
 * call asks for counts as taken until its answer comes, in the slots and
 * in the endpoint's window (Endpoint.asked).  A lease answered with NULL
 * (the connection was lost) leases nothing: the queue stays wanted.
 *
 * Ownership: a LeaseCall belongs to its query's callback, which frees it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "log.h"
#include "util.h"

/* A tq_lease call on its way. */
typedef struct LeaseCall
{
	Daemon *d;
	Queue *q;
	Endpoint *ep; /* http: the endpoint whose room was reserved */
	int asked;    /* the most tasks asked for: room held in the slots and the window */
	double sent;  /* ev_time() when sent */
} LeaseCall;

/*
 * Lease ahead: how many tasks of the queue to hold leased beyond its free
 * slots, so that a slot that frees finds its next task here instead of
 * waiting for a round trip.  The queue's start rate (smoothed over about
 * a quarter of a second) times two lease round trips: what the slots take
 * while the next lease is on its way, twice over.  A queue of long tasks
 * starts few per round trip and buffers none (the floor), so a task is
 * not held here while another worker could run it; a queue of quick ones
 * buffers up to lease_ahead.  Buffered tasks are leased like running ones:
 * their leases are renewed by the heartbeats, they count against the
 * tenants' quotas, and they were claimed in fair order.
 */
static void
queue_rate_update(Queue *q, double now)
{
	double dt = now - q->rate_t;

	if (dt >= 0.02)
	{
		double inst = (double) (q->started - q->rate_n) / dt;
		double w = q->rate_t > 0 ? 1 - exp(-dt / 0.25) : 1;

		q->rate += w * (inst - q->rate);
		q->rate_t = now;
		q->rate_n = q->started;
	}
}

/* The buffer's size for the rate and round trip seen so far (above). */
static int
lease_ahead_target(const Queue *q)
{
	double want;

	if (q->conf->lease_ahead <= 0)
		return 0;
	want = floor(q->rate * 2 * (q->rtt > 0 ? q->rtt : 0.001));
	return want > q->conf->lease_ahead ? q->conf->lease_ahead : (int) want;
}

/*
 * Starts buffered tasks, oldest first, while the slots, the queue's
 * concurrency and (http) its endpoint's window have room.
 */
void
buffer_run(Daemon *d)
{
	if (d->buffered == 0 || d->run_state != RUN_ACTIVE)
		return;
	for (Queue *q = d->queues; q; q = q->next)
	{
		while (q->bhead != NULL && d->running < d->config->slots && q->conf != NULL &&
			   q->running < q->conf->concurrency &&
			   (q->ep == NULL || aimd_limit(&q->ep->aimd) - q->ep->aimd.inflight > 0))
		{
			Task *t = q->bhead;

			buffer_unlink(t);
			(void) task_set_state(t, TASK_RUNNING);
			task_start(t);
		}
	}
}

/* Hands back the buffered tasks of q (every queue's when NULL). */
void
buffer_hand_back(Daemon *d, Queue *q)
{
	for (Queue *x = d->queues; x; x = x->next)
		if (q == NULL || x == q)
			while (x->bhead != NULL)
				task_unbuffer(x->bhead, REPORT_RELEASE);
}

/*
 * Each row of tq_lease becomes a Task in its queue's buffer, started at
 * once where a slot is free (buffer_run), or handed back at once when its
 * queue left the configuration or tqd is stopping; the
 * heartbeat timer is brought forward when a lease is shorter than it
 * allows.
 */
static void
lease_result(PgConn *c, const PGresult *res, void *arg)
{
	LeaseCall *lc = arg;
	Daemon *d = lc->d;
	Queue *q = lc->q;
	int n;
	int c_id, c_attempt, c_payload, c_tenant, c_timeout, c_lease, c_trace, c_token;

	q->leasing = false;
	if (lc->ep)
		lc->ep->asked -= lc->asked;
	if (res != NULL)
	{
		double rtt = ev_time() - lc->sent;

		histogram_observe(&d->lease_rtt, rtt);
		q->rtt = q->rtt > 0 ? 0.8 * q->rtt + 0.2 * rtt : rtt;
	}
	if (res == NULL)
	{
		free(lc);
		return; /* reconnecting; the queue stays wanted */
	}
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		tlog(LOG_WARNING, "tq_lease failed", "queue=%s error=%s sqlstate=%s", kvq(q->name),
			 kvq(pgc_error(res)), pgc_sqlstate(res));
		free(lc);
		return; /* the poll timer tries again */
	}
	n = PQntuples(res);
	/*
	 * Columns by name: tq_lease gained traceparent in 0.6.0, and tqd works
	 * with older versions of the extension too (then the column is absent).
	 */
	c_id = PQfnumber(res, "id");
	c_attempt = PQfnumber(res, "attempt");
	c_payload = PQfnumber(res, "payload");
	c_tenant = PQfnumber(res, "tenant");
	c_timeout = PQfnumber(res, "timeout_s");
	c_lease = PQfnumber(res, "lease_s");
	c_trace = PQfnumber(res, "traceparent");
	c_token = PQfnumber(res, "lease_token"); /* 0.7.0 on */
	if (n > 0 && (c_id < 0 || c_attempt < 0 || c_payload < 0 || c_tenant < 0 || c_timeout < 0 ||
				  c_lease < 0))
	{
		/* Not tq_lease as we know it: leased tasks come back when their leases expire. */
		tlog(LOG_ERROR, "tq_lease returned unexpected columns", "queue=%s tasks=%d", kvq(q->name),
			 n);
		free(lc);
		return;
	}
	for (int i = 0; i < n; i++)
	{
		Task *t;
		Task *old = task_find(d, atoll(PQgetvalue(res, i, c_id)));

		/*
		 * Leased again while tqd still holds it: the old lease was lost
		 * (a server crash lost its commit, or it ran out), so its run and
		 * outcome are stale; a batch must not name the task twice.  An
		 * outcome already on its way is fenced by its token.
		 */
		if (old != NULL && old->state != TASK_SENT)
		{
			tlog(LOG_WARNING, "task leased again: its old lease was lost",
				 "task=%lld queue=%s attempt=%d", old->id, kvq(old->queue->name), old->attempt);
			task_stop(old, REPORT_DROP);
		}
		t = xcalloc(1, sizeof(Task));
		double task_timeout =
			PQgetisnull(res, i, c_timeout) ? 0 : atof(PQgetvalue(res, i, c_timeout));
		double queue_timeout = q->conf ? q->conf->timeout : 0;

		t->d = d;
		t->queue = q;
		t->id = atoll(PQgetvalue(res, i, c_id));
		t->attempt = atoi(PQgetvalue(res, i, c_attempt));
		if (c_token >= 0 && !PQgetisnull(res, i, c_token))
			t->lease_token = atoll(PQgetvalue(res, i, c_token));
		t->payload = xstrdup(PQgetvalue(res, i, c_payload));
		t->tenant = PQgetisnull(res, i, c_tenant) ? NULL : xstrdup(PQgetvalue(res, i, c_tenant));
		if (c_trace >= 0 && !PQgetisnull(res, i, c_trace))
		{
			const char *tp = PQgetvalue(res, i, c_trace);

			/* Checked by tq at submit; handed on only if it cannot break a header. */
			if (http_traceparent_ok(tp))
				t->traceparent = xstrdup(tp);
			else
				tlog(LOG_WARNING, "traceparent not handed on: not printable ASCII or too long",
					 "task=%lld queue=%s attempt=%d", t->id, kvq(q->name), t->attempt);
		}
		/* The smaller of the task's own timeout and the queue's. */
		t->timeout = task_timeout;
		if (queue_timeout > 0 && (t->timeout <= 0 || queue_timeout < t->timeout))
			t->timeout = queue_timeout;
		t->lease_len = atof(PQgetvalue(res, i, c_lease));
		t->retry_after = -1;
		t->next = d->tasks;
		if (d->tasks)
			d->tasks->prev = t;
		d->tasks = t;
		(void) task_set_state(t, TASK_BUFFERED);
		ev_init(&t->sql_timer, sql_timeout);
		if (q->btail)
			q->btail->bnext = t;
		else
			q->bhead = t;
		q->btail = t;
		if (q->conf == NULL || d->run_state != RUN_ACTIVE)
			task_unbuffer(t, REPORT_RELEASE); /* left the config, or stopping */
	}
	buffer_run(d);
	/* A full batch: there is probably more. */
	q->wanted = n >= lc->asked;
	free(lc);
	if (n > 0)
	{
		/* Heartbeats must come before the shortest lease runs out. */
		double every = heartbeat_every(d);

		if (!ev_is_active(&d->hb_timer) || every < d->hb_timer.repeat)
		{
			d->hb_timer.repeat = every;
			ev_timer_again(d->loop, &d->hb_timer);
		}
	}
	lease_soon(d);
}

/*
 * Once per loop turn when leasing is due: one tq_lease per wanted queue
 * with room, until the free slots are spoken for.
 */
void
lease_idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	Daemon *d = container_of(w, Daemon, lease_idle);
	int free_slots;

	ev_idle_stop(loop, w);
	buffer_run(d);
	if (d->run_state != RUN_ACTIVE || !pgc_ready(d->work))
		return;
	/*
	 * Outcomes pile up: the database is not taking them.  A few flushes'
	 * worth of the slots and of what one lease brings (lease ahead: a
	 * quick queue's tasks end as fast as they are leased).
	 */
	if (d->waiting > 4 * d->config->slots + 4 * d->config->lease_batch)
		return;
	free_slots = d->config->slots - d->running;
	for (Queue *q = d->queues; q && free_slots > 0; q = q->next)
	{
		int room;
		LeaseCall *lc;
		char max[16];
		char queues[512];
		const char *params[3];

		int run_room, ahead;

		if (q->conf == NULL || q->leasing || !q->wanted)
			continue;
		/* What can start at once, then what may wait in the buffer. */
		run_room = q->conf->concurrency - q->running;
		if (run_room > free_slots)
			run_room = free_slots;
		if (q->ep != NULL)
		{
			/* The endpoint's window: what it takes decides what we lease. */
			int window_room = aimd_limit(&q->ep->aimd) - q->ep->aimd.inflight - q->ep->asked;

			if (run_room > window_room)
				run_room = window_room;
		}
		if (run_room < 0)
			run_room = 0;
		queue_rate_update(q, ev_now(loop));
		ahead = lease_ahead_target(q);
		room = run_room + ahead - q->buffered;
		if (room > d->config->lease_batch)
			room = d->config->lease_batch;
		if (room <= 0)
			continue;
		snprintf(max, sizeof(max), "%d", room);
		/* Queue names have no quotes or backslashes (tq's name rule). */
		snprintf(queues, sizeof(queues), "{\"%s\"}", q->name);
		params[0] = d->worker;
		params[1] = queues;
		params[2] = max;
		lc = xcalloc(1, sizeof(LeaseCall));
		lc->d = d;
		lc->q = q;
		lc->ep = q->ep;
		lc->asked = room;
		lc->sent = ev_time();
		/* l.*: whatever this version of tq_lease returns (lease_result reads by name). */
		if (!pgc_send(d->work,
					  "SELECT l.*, extract(epoch FROM l.timeout) AS timeout_s,"
					  " extract(epoch FROM l.lease_until - now()) AS lease_s"
					  " FROM tq_lease($1, $2::text[], $3::integer) l",
					  3, params, lease_result, lc))
		{
			free(lc);
			return;
		}
		q->leasing = true;
		if (q->ep)
			q->ep->asked += room;
		/* Counted as taken until the answer comes (the buffer takes none). */
		free_slots -= room < run_room ? room : run_room;
	}
}

void
lease_soon(Daemon *d)
{
	if (d->run_state == RUN_ACTIVE && !ev_is_active(&d->lease_idle))
		ev_idle_start(d->loop, &d->lease_idle);
}

/* tq_queue_stats' counts per queue, kept for /metrics. */
static void
backlog_result(PgConn *c, const PGresult *res, void *arg)
{
	Daemon *d = arg;

	if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK)
		return; /* the next poll tries again; /metrics shows the last values */
	for (int i = 0; i < PQntuples(res); i++)
	{
		Queue *q = queue_find(d, PQgetvalue(res, i, 0));

		if (q == NULL)
			continue;
		for (int k = 0; k < 4; k++)
			q->backlog[k] = atoll(PQgetvalue(res, i, 1 + k));
		q->backlog_known = true;
	}
}

/* tq_shared_usage's rows, kept for /metrics. */
static void
shared_usage_result(PgConn *c, const PGresult *res, void *arg)
{
	Daemon *d = arg;
	const char *state;

	if (res == NULL)
		return;
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		if (state != NULL && strcmp(state, "42P01") == 0)
		{
			/* An extension before 0.7.0: asked again after a reconnect (an update restarts). */
			d->shared_absent = true;
			tlog(LOG_INFO,
				 "no tq_shared_usage: /metrics shows no tq_shared_* (extension before 0.7.0)",
				 NULL);
		}
		return; /* the next poll tries again; /metrics shows the last values */
	}
	d->nshared = 0;
	for (int i = 0; i < PQntuples(res) && d->nshared < N_SHARED; i++)
	{
		SharedUsage *u = &d->shared[d->nshared++];

		snprintf(u->name, sizeof(u->name), "%s", PQgetvalue(res, i, 0));
		u->used = atoll(PQgetvalue(res, i, 1));
		u->capacity = atoll(PQgetvalue(res, i, 2));
		u->full_events = atoll(PQgetvalue(res, i, 3));
		u->overflow = PQgetisnull(res, i, 4) ? -1 : atoll(PQgetvalue(res, i, 4));
	}
}

/* poll_interval: every queue is wanted again, in case a tq_ready was lost. */
void
lease_poll_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	Daemon *d = container_of(w, Daemon, poll_timer);

	for (Queue *q = d->queues; q; q = q->next)
		q->wanted = true;
	lease_soon(d);
	/* The queues' backlog in the whole system, for /metrics (shared counters: cheap). */
	if (d->httpd != NULL && pgc_ready(d->work) &&
		!pgc_send(d->work, "SELECT queue, scheduled, ready, paused, running FROM tq_queue_stats", 0,
				  NULL, backlog_result, d))
		tlog(LOG_DEBUG, "backlog query not sent: the connection is being reset", NULL);
	/* How full tq's shared tables are (one round trip in the same pipeline). */
	if (d->httpd != NULL && !d->shared_absent && pgc_ready(d->work) &&
		!pgc_send(d->work,
				  "SELECT name, used, capacity, full_events, overflow FROM tq_shared_usage", 0,
				  NULL, shared_usage_result, d))
		tlog(LOG_DEBUG, "shared usage query not sent: the connection is being reset", NULL);
}
