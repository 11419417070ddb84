/*
 * daemon.c
 *	  tqd's daemon: its life cycle (daemon_new, daemon_run, daemon_free)
 *	  and the events of its connections, on one libev loop.  Each other
 *	  duty has a file of its own; daemon.h lists them.
 *
 * Connections.  "listen" LISTENs on tq_ready (a queue has new work) and
 * tq_cancel (an operator cancelled a running task); "work" carries leases
 * and heartbeats, "report" the outcome batches, both in pipeline mode: two
 * server backends, so that a lease never waits behind a large batch of
 * completions and the two run in parallel on the server.  Queues
 * with the sql handler get connections of their own, one per running task
 * (a task's function may run long and must not hold up the pipeline:
 * handler_sql.c).
 *
 * A task's life in tqd (Task.state; every transition in task_set_state,
 * task.c, which refuses an illegal one):
 *
 *	NEW       made from a row of tq_lease, not counted yet
 *	RUNNING   leased; its handler works (exec: a process group; sql: a
 *	          query on a connection of the queue's pool; http: a request;
 *	          noop: none)
 *	DONE      the outcome is known and waits for the next flush
 *	SENT      the outcome is in a batch whose result has not arrived
 *	FREED     left tqd; freed at once
 *
 * A task leaves tqd when the batch carrying its outcome has committed (or
 * was refused: its lease was lost, which fencing makes harmless), or when a
 * heartbeat says its lease is lost.  A batch lost with the connection is
 * sent again after reconnecting: each task's outcome names its attempt, so
 * an outcome that did land once is refused the second time, harmlessly
 * (report.c).
 *
 * Capacity.  A queue leases at most (its concurrency - its running tasks),
 * and all queues together at most (slots - running tasks), in calls of at
 * most lease_batch.  Outcomes waiting for the database (DONE, SENT) do not
 * take a slot, but while more than 4 x slots of them wait (the database
 * is unreachable), nothing more is leased.
 *
 * Leasing is driven by tq_ready for the queue, by a full lease (there is
 * probably more), by a freed slot when the queue still had work, and by
 * poll_interval as the safety net for a lost notification (lease.c).
 *
 * Shutdown.  SIGTERM: lease nothing more; running tasks may finish within
 * drain_timeout; then the rest are stopped and handed back with
 * tq_release; once every outcome is flushed, exit 0.  A second SIGTERM, or
 * SIGINT: stop the children at once (SIGKILL), hand their tasks back,
 * flush, exit.  If the database stays unreachable, the final flush gives
 * up after drain_timeout (at least 5 s): the leases then expire and tq
 * reclaims the tasks (signals.c).
 *
 * Ownership: the Daemon owns the Config, the queues, the endpoints, the
 * tasks and the connections; daemon_free frees them, connections first.
 * Nothing is freed inside its own watcher's callback except through
 * pgc_free (which defers), exec_free (allowed by exec.h) and http_free
 * (allowed by http.h).
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"
#include "util.h"

/* Appends "v" to a PostgreSQL array literal of numbers being built. */
void
array_literal_append(char *buf, size_t len, size_t *o, long long v, bool first)
{
	int n = snprintf(buf + *o, len - *o, "%s%lld", first ? "" : ",", v);

	if (n > 0)
		*o += (size_t) n;
}

/* Appends a lease token to a bigint[] literal: NULL for none (0). */
void
token_literal_append(char *buf, size_t len, size_t *o, long long token, bool first)
{
	int n = token != 0 ? snprintf(buf + *o, len - *o, "%s%lld", first ? "" : ",", token)
					   : snprintf(buf + *o, len - *o, "%sNULL", first ? "" : ",");

	if (n > 0)
		*o += (size_t) n;
}

/* A failed LISTEN leaves leasing to poll_interval: said loudly. */
static void
listen_result(PgConn *c, const PGresult *res, void *arg)
{
	if (res != NULL && PQresultStatus(res) != PGRES_COMMAND_OK)
		tlog(LOG_ERROR, "LISTEN failed", "error=%s sqlstate=%s", kvq(pgc_error(res)),
			 pgc_sqlstate(res));
}

/*
 * tq_ready names a queue that has new work; tq_cancel, {"id": N,
 * "attempt": N}, a task an operator cancelled, stopped here only if it is
 * that attempt and still running.
 */
static void
on_notify(Daemon *d, const char *channel, const char *payload)
{
	if (strcmp(channel, "tq_ready") == 0)
	{
		Queue *q = queue_find(d, payload);

		if (q != NULL && q->conf != NULL)
		{
			q->wanted = true;
			lease_soon(d);
		}
	}
	else if (strcmp(channel, "tq_cancel") == 0)
	{
		json_t *v = json_loads(payload, 0, NULL);
		json_t *id = v ? json_object_get(v, "id") : NULL;
		json_t *att = v ? json_object_get(v, "attempt") : NULL;

		if (json_is_integer(id) && json_is_integer(att))
		{
			Task *t = task_find(d, (long long) json_integer_value(id));

			/*
			 * Only a hint: any role may NOTIFY tq_cancel.  The heartbeat's
			 * answer says whether tq_cancel really asked, and stops it.
			 */
			if (t != NULL && t->attempt == (int) json_integer_value(att) &&
				t->state == TASK_RUNNING)
				heartbeat_soon(d);
		}
		if (v)
			json_decref(v);
	}
}

/* The answer to SET synchronous_commit: only a failure is worth a line. */
static void
set_result(PgConn *c, const PGresult *res, void *arg)
{
	if (res != NULL && PQresultStatus(res) != PGRES_COMMAND_OK)
		tlog(LOG_WARNING, "could not set synchronous_commit = off: commits wait for the disk",
			 "conn=%s error=%s", pgc_name(c), kvq(pgc_error(res)));
}

/*
 * The events of the listen, work and report connections.  On connecting,
 * what may have been missed is caught up: every queue is wanted again
 * (listen), outcomes of batches lost with the connection go again
 * (report).  Losing the work connection loses its leases and heartbeats
 * on their way: their callbacks got NULL, so new ones may be sent.
 */
static void
conn_event(PgConn *c, PgConnEvent ev, const char *a, const char *b, void *arg)
{
	Daemon *d = arg;

	switch (ev)
	{
		case PGC_CONNECTED:
			tlog(LOG_INFO, "connected", "conn=%s", pgc_name(c));
			if (c == d->work)
				d->shared_absent = false; /* the extension may have been updated */
			/*
			 * Asynchronous commit where the configuration asks for it,
			 * before anything else on the connection (a pipeline keeps
			 * the order).  Safe for leases: every call on a lease quotes
			 * its random token, so a lease a crash lost cannot be taken
			 * for the one made again (README, Guarantees).
			 */
			if (((c == d->work && d->config->lease_commit == COMMIT_ASYNC) ||
				 (c == d->report && d->config->outcome_commit == COMMIT_ASYNC)) &&
				!pgc_send(c, "SET synchronous_commit = off", 0, NULL, set_result, d))
				return; /* the connection is being reset: CONNECTED comes again */
			if (c == d->listen)
			{
				if (!pgc_send(c, "LISTEN tq_ready", 0, NULL, listen_result, d) ||
					!pgc_send(c, "LISTEN tq_cancel", 0, NULL, listen_result, d))
					return;
				/* Whatever was announced while we were away. */
				for (Queue *q = d->queues; q; q = q->next)
					q->wanted = true;
			}
			else if (c == d->report)
			{
				/* Outcomes kept while disconnected go now. */
				for (Task *t = d->tasks; t; t = t->next)
					if (t->state == TASK_SENT)
						(void) task_set_state(t, TASK_DONE);
				if (d->waiting > 0)
					report_flush_soon(d);
			}
			lease_soon(d);
			break;
		case PGC_DISCONNECTED:
			tlog(LOG_WARNING, "connection failed", "conn=%s error=%s retry_in=%s", pgc_name(c),
				 kvq(a), b);
			d->disconnects[c == d->work ? 0 : c == d->report ? 1 : 2]++;
			if (c == d->work)
			{
				for (Queue *q = d->queues; q; q = q->next)
					q->leasing = false;
				d->heartbeats = 0;
			}

			break;
		case PGC_NOTIFY:
			on_notify(d, a, b);
			break;
		default:
			tlog(LOG_ERROR, "unknown connection event ignored", "conn=%s event=%d", pgc_name(c),
				 (int) ev);
			break;
	}
}

/*
 * Makes the connections and the watchers (tqd.h has the contract);
 * nothing starts before daemon_run.
 */
Daemon *
daemon_new(struct ev_loop *loop, Config *config, const char *config_path)
{
	Daemon *d = xcalloc(1, sizeof(Daemon));
	PgConnOpts o;

	d->loop = loop;
	d->config = config;
	d->config_path = xstrdup(config_path);
	if (config->worker_name[0] != '\0')
		snprintf(d->worker, sizeof(d->worker), "%s", config->worker_name);
	else
	{
		char host[200];

		if (gethostname(host, sizeof(host)) != 0)
			snprintf(host, sizeof(host), "localhost");
		host[sizeof(host) - 1] = '\0';
		snprintf(d->worker, sizeof(d->worker), "%s:%d", host, (int) getpid());
	}
	srandom((unsigned) getpid() ^ (unsigned) time(NULL));
	{
		char err[256];

		d->http = http_client_new(loop, err, sizeof(err));
		if (d->http == NULL)
		{
			fprintf(stderr, "tqd: cannot set up HTTP: %s\n", err);
			free(d->config_path);
			free(d);
			return NULL;
		}
	}
	queues_sync(d);

	o.connect_timeout = config->connect_timeout;
	o.reconnect_min = config->reconnect_min;
	o.reconnect_max = config->reconnect_max;
	d->work = pgc_new(loop, "work", config->conninfo, &o, conn_event, d);
	d->report = pgc_new(loop, "report", config->conninfo, &o, conn_event, d);
	d->listen = pgc_new(loop, "listen", config->conninfo, &o, conn_event, d);

	ev_idle_init(&d->lease_idle, lease_idle_cb);
	ev_timer_init(&d->poll_timer, lease_poll_cb, config->poll_interval, config->poll_interval);
	ev_init(&d->flush_timer, report_flush_cb);
	ev_init(&d->hb_timer, heartbeat_cb);
	d->hb_timer.repeat = 10.0;
	ev_init(&d->stop_timer, stop_timer_cb);
	ev_init(&d->status_timer, endpoint_status_cb);
	ev_signal_init(&d->sigterm, signal_term_cb, SIGTERM);
	ev_signal_init(&d->sigint, signal_int_cb, SIGINT);
	ev_signal_init(&d->sighup, signal_hup_cb, SIGHUP);
	return d;
}

/* Starts the watchers, /metrics and the connections, then runs the loop. */
int
daemon_run(Daemon *d)
{
	signal(SIGPIPE, SIG_IGN);
	ev_signal_start(d->loop, &d->sigterm);
	ev_signal_start(d->loop, &d->sigint);
	ev_signal_start(d->loop, &d->sighup);
	ev_timer_start(d->loop, &d->poll_timer);
	endpoint_status_timer_set(d);
	d->started_at = ev_time();
	if (d->config->metrics_listen[0] != '\0')
	{
		char err[512];
		HttpdLimits limits = {
			.max_connections = (unsigned int) d->config->http_max_connections,
			.max_per_ip = (unsigned int) d->config->http_max_connections_per_ip,
			.timeout = (unsigned int) ceil(d->config->http_timeout),
		};

		d->httpd = httpd_start(d->loop, d->config->metrics_listen, &limits, metrics_serve, d, err,
							   sizeof(err));
		if (d->httpd == NULL)
		{
			tlog(LOG_ERROR, "cannot serve /metrics", "error=%s", kvq(err));
			return 1;
		}
		tlog(LOG_INFO, "serving /metrics, /healthz and /readyz",
			 "listen=%s port=%d token=%s allowed_hosts=%s", kvq(d->config->metrics_listen),
			 httpd_port(d->httpd), d->config->http_token ? "required" : "none",
			 kvq(d->config->http_allowed_hosts));
		metrics_dashboard_sync(d);
	}
	tlog(LOG_INFO, "starting", "version=%s worker=%s queues=%d slots=%d", TQD_VERSION,
		 kvq(d->worker), d->config->nqueues, d->config->slots);
	pgc_connect(d->listen);
	pgc_connect(d->work);
	pgc_connect(d->report);
	ev_run(d->loop, 0);
	return d->exit_status;
}

void
daemon_free(Daemon *d)
{
	struct ev_loop *loop = d->loop;

	/*
	 * Connections first: closing one calls its pending callbacks with NULL
	 * (a lease or a batch still on its way at exit), and those touch the
	 * queues and tasks, which must still exist then.
	 */
	httpd_stop(d->httpd); /* before the dashboard: its waiting requests get 503 */
	dashboard_free(d->dash);
	pgc_free(d->work);
	pgc_free(d->report);
	pgc_free(d->listen);
	d->work = d->report = d->listen = NULL;
	for (Queue *q = d->queues; q; q = q->next)
		for (SqlConn *s = q->pool; s; s = s->next)
		{
			pgc_free(s->conn);
			s->conn = NULL;
		}
	while (d->tasks)
		task_free(d->tasks);
	http_client_free(d->http);
	while (d->endpoints)
	{
		Endpoint *e = d->endpoints;

		d->endpoints = e->next;
		free(e->url);
		free(e->shown);
		free(e);
	}
	while (d->queues)
	{
		Queue *q = d->queues;

		d->queues = q->next;
		while (q->pool)
		{
			SqlConn *s = q->pool;

			q->pool = s->next;
			free(s);
		}
		free(q->name);
		free(q);
	}
	ev_idle_stop(loop, &d->lease_idle);
	ev_timer_stop(loop, &d->poll_timer);
	ev_timer_stop(loop, &d->flush_timer);
	ev_timer_stop(loop, &d->hb_timer);
	ev_timer_stop(loop, &d->stop_timer);
	ev_timer_stop(loop, &d->status_timer);
	ev_signal_stop(loop, &d->sigterm);
	ev_signal_stop(loop, &d->sigint);
	ev_signal_stop(loop, &d->sighup);
	config_free(d->config);
	free(d->config_path);
	free(d);
}
