/*
 * heartbeat.c
 *	  Heartbeats: one tq_heartbeat call on the work connection extends
 *	  every lease this tqd holds (running tasks and outcomes not yet
 *	  reported), every heartbeat_interval or a third of the shortest lease.
 *	  An answer names the tasks whose lease is lost (stopped, outcome
 *	  dropped) or that were cancelled (stopped, handed back).
 *
 * One heartbeat at most is on its way (Daemon.heartbeats).  A tq_cancel
 * notification only brings the next one forward (heartbeat_soon): tqd
 * stops a task only when the database's answer says it was cancelled.
 *
 * Ownership: an HbCall belongs to its query's callback, which frees it.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "log.h"
#include "util.h"

/*
 * heartbeat_interval if set, else a third of the shortest lease held (at
 * least 1 s), else 10 s.
 */
double
heartbeat_every(Daemon *d)
{
	double shortest = 0;

	if (d->config->heartbeat_interval > 0)
		return d->config->heartbeat_interval;
	for (Task *t = d->tasks; t; t = t->next)
		if (t->lease_len > 0 && (shortest == 0 || t->lease_len < shortest))
			shortest = t->lease_len;
	if (shortest == 0)
		return 10.0;
	/* A third of the shortest lease, so two heartbeats may fail in a row. */
	return shortest / 3 < 1.0 ? 1.0 : shortest / 3;
}

/*
 * A heartbeat on its way: the (id, attempt) pairs it extends.  An answer
 * names only ids, and by the time it comes a task may have been reported,
 * retried and leased again by this tqd under the same id: only the attempt
 * sent may be stopped (a lost-lease answer about attempt 1 once stopped
 * attempt 2 of the same task, which then ran out its lease).
 */
typedef struct HbCall
{
	Daemon *d;
	int n;
	long long *ids;
	int *attempts;
	long long *tokens; /* and lease tokens: after a crash lost a lease, the
						* same attempt may be leased again with a new one */
} HbCall;

/* The rows name the tasks whose lease is lost, or that were cancelled. */
static void
heartbeat_result(PgConn *c, const PGresult *res, void *arg)
{
	HbCall *hc = arg;
	Daemon *d = hc->d;

	d->heartbeats--;
	if (res != NULL && PQresultStatus(res) != PGRES_TUPLES_OK)
		tlog(LOG_WARNING, "tq_heartbeat failed", "error=%s sqlstate=%s", kvq(pgc_error(res)),
			 pgc_sqlstate(res));
	else if (res != NULL)
	{
		for (int i = 0; i < PQntuples(res); i++)
		{
			long long id = atoll(PQgetvalue(res, i, 0));
			const char *reason = PQgetvalue(res, i, 1);
			int attempt = -1;
			long long token = 0;
			Task *t;

			for (int k = 0; k < hc->n; k++)
				if (hc->ids[k] == id)
				{
					attempt = hc->attempts[k];
					token = hc->tokens[k];
				}
			t = task_find(d, id);
			if (t == NULL || t->attempt != attempt || t->lease_token != token)
				continue; /* gone, or a later lease of the task */
			/*
			 * Its outcome is on its way: the heartbeat ran after the outcome
			 * committed on the other connection (not lost: finished), or
			 * the batch's answer says what became of it.
			 */
			if (t->state == TASK_SENT)
				continue;
			if (strcmp(reason, "cancelled") == 0)
			{
				tlog(LOG_INFO, "task cancelled: stopping it", "task=%lld queue=%s attempt=%d",
					 t->id, kvq(t->queue->name), t->attempt);
				task_stop(t, REPORT_RELEASE);
			}
			else
			{
				tlog(LOG_WARNING, "lease lost: stopping the task", "task=%lld queue=%s attempt=%d",
					 t->id, kvq(t->queue->name), t->attempt);
				task_stop(t, REPORT_DROP);
			}
		}
	}
	free(hc->ids);
	free(hc->attempts);
	free(hc->tokens);
	free(hc);
	if (d->hb_again)
	{
		d->hb_again = false;
		if (res != NULL) /* NULL: the connection is gone; reconnecting catches up */
			heartbeat_soon(d);
	}
}

/*
 * A heartbeat within HB_SOON seconds, unless one is due sooner: a
 * tq_cancel notification is confirmed by the heartbeat's answer, since
 * anyone can send one.  A flood of notifications cannot postpone the
 * regular heartbeat (the timer is only ever brought forward) and makes at
 * most one call per HB_SOON while one is on its way.
 */
#define HB_SOON 0.05

void
heartbeat_soon(Daemon *d)
{
	if (d->heartbeats > 0)
	{
		d->hb_again = true; /* right after the answer of the one on its way */
		return;
	}
	if (ev_is_active(&d->hb_timer) && ev_timer_remaining(d->loop, &d->hb_timer) <= HB_SOON)
		return;
	ev_timer_stop(d->loop, &d->hb_timer);
	ev_timer_set(&d->hb_timer, HB_SOON, heartbeat_every(d));
	ev_timer_start(d->loop, &d->hb_timer);
}

/*
 * The heartbeat timer: one tq_heartbeat for every task held, unless one is
 * still on its way; the timer stops when no task is held (lease_result
 * starts it again).
 */
void
heartbeat_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	Daemon *d = container_of(w, Daemon, hb_timer);
	int n = 0;
	size_t len, io = 0, ao = 0, to = 0;
	char *ids, *atts, *toks;
	const char *params[4];
	bool any_token = false;
	HbCall *hc;

	for (Task *t = d->tasks; t; t = t->next)
		n++;
	w->repeat = heartbeat_every(d);
	if (n == 0)
	{
		ev_timer_stop(loop, w);
		return;
	}
	ev_timer_again(loop, w);
	if (!pgc_ready(d->work) || d->heartbeats > 0)
		return;
	len = (size_t) n * 22 + 3;
	ids = xcalloc(1, len);
	atts = xcalloc(1, len);
	toks = xcalloc(1, len);
	hc = xcalloc(1, sizeof(HbCall));
	hc->d = d;
	hc->ids = xcalloc((size_t) n, sizeof(long long));
	hc->attempts = xcalloc((size_t) n, sizeof(int));
	hc->tokens = xcalloc((size_t) n, sizeof(long long));
	ids[io++] = '{';
	atts[ao++] = '{';
	toks[to++] = '{';
	for (Task *t = d->tasks; t; t = t->next)
	{
		array_literal_append(ids, len, &io, t->id, hc->n == 0);
		array_literal_append(atts, len, &ao, t->attempt, hc->n == 0);
		token_literal_append(toks, len, &to, t->lease_token, hc->n == 0);
		if (t->lease_token != 0)
			any_token = true;
		hc->ids[hc->n] = t->id;
		hc->attempts[hc->n] = t->attempt;
		hc->tokens[hc->n] = t->lease_token;
		hc->n++;
	}
	ids[io] = '}';
	atts[ao] = '}';
	toks[to] = '}';
	params[0] = d->worker;
	params[1] = ids;
	params[2] = atts;
	params[3] = toks;
	/* The lease tokens when there are any (tq 0.7.0 on; see report.c). */
	if (pgc_send(d->work,
				 any_token ? "SELECT id, reason FROM tq_heartbeat($1, $2::bigint[], $3::integer[],"
							 " leases => $4::bigint[])"
						   : "SELECT id, reason FROM tq_heartbeat($1, $2::bigint[], $3::integer[])",
				 any_token ? 4 : 3, params, heartbeat_result, hc))
		d->heartbeats++;
	else
	{
		free(hc->ids);
		free(hc->attempts);
		free(hc->tokens);
		free(hc);
	}
	free(ids);
	free(atts);
	free(toks);
}
