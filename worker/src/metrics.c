/*
 * metrics.c
 *	  tqd's own HTTP answers on metrics_listen (httpd.c): /metrics in
 *	  Prometheus text format 0.0.4, /healthz, /readyz, and with
 *	  dashboard = on /api/tqd (this tqd, as JSON) and the dashboard's
 *	  paths (dashboard.c).
 *
 * Everything is read from memory on the loop, without locks: the counters
 * live in the Daemon (histograms, disconnects, tq_shared_usage's rows),
 * the Queues (started, outcomes, backlog) and the Endpoints (aimd.c's
 * totals).
 *
 * The probes answer every request that reaches them; everything else
 * first passes httpd_access.c (the Host allowlist, the token when
 * http_token_file is set).
 */
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "httpd_access.h"
#include "log.h"

/* Outcomes as the label outcome of tqd_tasks_finished_total says them. */
static const char *const outcome_label[N_OUT] = {"succeeded", "failed",   "throttled",
												 "fatal",     "released", "dropped"};
/* The histograms' upper bounds, in seconds: 0.5 ms to 5 s. */
static const double bucket_le[N_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
											0.1,    0.25,  0.5,    1,     2.5,  5};

/* Counts one round trip of secs. */
void
histogram_observe(Histogram *h, double secs)
{
	for (int i = 0; i < N_BUCKETS; i++)
		if (secs <= bucket_le[i])
		{
			h->buckets[i]++;
			break;
		}
	h->count++;
	h->sum += secs;
}

/* A label value as the exposition format wants it: \\, \" and \n escaped. */
static const char *
label(const char *v)
{
	static char bufs[4][512];
	static int next = 0;
	char *b = bufs[next++ % 4];
	size_t o = 0;

	for (; v && *v && o + 3 < sizeof(bufs[0]); v++)
	{
		if (*v == '\\' || *v == '"')
			b[o++] = '\\', b[o++] = *v;
		else if (*v == '\n')
			b[o++] = '\\', b[o++] = 'n';
		else
			b[o++] = *v;
	}
	b[o] = '\0';
	return b;
}

/* A metric's HELP and TYPE lines. */
static void
help(Buf *b, const char *name, const char *type, const char *text)
{
	buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

/* A histogram as the exposition format wants it: cumulative buckets, sum, count. */
static void
histogram(Buf *b, const char *name, const char *text, const Histogram *h)
{
	long long cum = 0;

	help(b, name, "histogram", text);
	for (int i = 0; i < N_BUCKETS; i++)
	{
		cum += h->buckets[i];
		buf_printf(b, "%s_bucket{le=\"%g\"} %lld\n", name, bucket_le[i], cum);
	}
	buf_printf(b, "%s_bucket{le=\"+Inf\"} %lld\n%s_sum %.6f\n%s_count %lld\n", name, h->count, name,
			   h->sum, name, h->count);
}

/* /metrics: every counter and gauge of this tqd. */
static void
metrics_render(Daemon *d, Buf *b)
{
	static const char *const conn_label[4] = {"work", "report", "listen", "sql"};
	static const char *const state_label[4] = {"scheduled", "ready", "paused", "running"};

	help(b, "tqd_info", "gauge", "This tqd: version and worker name.");
	buf_printf(b, "tqd_info{version=\"%s\",worker=\"%s\"} 1\n", TQD_VERSION, label(d->worker));
	help(b, "tqd_start_time_seconds", "gauge", "When this tqd started (unix time).");
	buf_printf(b, "tqd_start_time_seconds %.3f\n", d->started_at);
	help(b, "tqd_tasks_started_total", "counter", "Tasks this tqd leased and started, by queue.");
	for (Queue *q = d->queues; q; q = q->next)
		buf_printf(b, "tqd_tasks_started_total{queue=\"%s\"} %lld\n", label(q->name), q->started);
	help(b, "tqd_tasks_finished_total", "counter",
		 "Attempts this tqd ended, by queue and outcome (succeeded, failed: retried, throttled: "
		 "retried without using an attempt, fatal: never retried, released: handed back, "
		 "dropped: lease lost).");
	for (Queue *q = d->queues; q; q = q->next)
		for (int k = 0; k < N_OUT; k++)
			buf_printf(b, "tqd_tasks_finished_total{queue=\"%s\",outcome=\"%s\"} %lld\n",
					   label(q->name), outcome_label[k], q->outcomes[k]);
	help(b, "tqd_tasks_running", "gauge", "Tasks running in this tqd now, by queue.");
	for (Queue *q = d->queues; q; q = q->next)
		buf_printf(b, "tqd_tasks_running{queue=\"%s\"} %d\n", label(q->name), q->running);
	help(b, "tqd_tasks_buffered", "gauge",
		 "Tasks leased ahead and waiting here for a free slot, by queue (lease_ahead).");
	for (Queue *q = d->queues; q; q = q->next)
		buf_printf(b, "tqd_tasks_buffered{queue=\"%s\"} %d\n", label(q->name), q->buffered);
	help(b, "tqd_slots", "gauge", "Tasks this tqd may run at once (slots).");
	buf_printf(b, "tqd_slots %d\n", d->config->slots);
	help(b, "tqd_outcomes_waiting", "gauge", "Finished tasks whose outcome is not yet reported.");
	buf_printf(b, "tqd_outcomes_waiting %d\n", d->waiting);
	help(b, "tq_queue_tasks", "gauge",
		 "Live tasks of each queue served here, all workers, by state (tq_queue_stats, read every "
		 "poll_interval).");
	for (Queue *q = d->queues; q; q = q->next)
		if (q->backlog_known)
			for (int k = 0; k < 4; k++)
				buf_printf(b, "tq_queue_tasks{queue=\"%s\",state=\"%s\"} %lld\n", label(q->name),
						   state_label[k], q->backlog[k]);
	if (d->nshared > 0)
	{
		help(b, "tq_shared_used", "gauge",
			 "Entries in use of a table in tq's shared memory that callers fill, server-wide "
			 "(tq_shared_usage, read every poll_interval).");
		for (int i = 0; i < d->nshared; i++)
			buf_printf(b, "tq_shared_used{table=\"%s\"} %lld\n", label(d->shared[i].name),
					   d->shared[i].used);
		help(b, "tq_shared_capacity", "gauge", "Entries at most of that table.");
		for (int i = 0; i < d->nshared; i++)
			buf_printf(b, "tq_shared_capacity{table=\"%s\"} %lld\n", label(d->shared[i].name),
					   d->shared[i].capacity);
		help(b, "tq_shared_full_events_total", "counter",
			 "Times a caller wanted a new entry of that table and it was full, since the server "
			 "started.");
		for (int i = 0; i < d->nshared; i++)
			buf_printf(b, "tq_shared_full_events_total{table=\"%s\"} %lld\n",
					   label(d->shared[i].name), d->shared[i].full_events);
		help(b, "tq_shared_overflow_tasks", "gauge",
			 "Live tasks counted in overflow entries (tenants table full): their tenants share one "
			 "fair share per queue; every limit still holds.");
		for (int i = 0; i < d->nshared; i++)
			if (d->shared[i].overflow >= 0)
				buf_printf(b, "tq_shared_overflow_tasks{table=\"%s\"} %lld\n",
						   label(d->shared[i].name), d->shared[i].overflow);
	}
	histogram(b, "tqd_lease_seconds", "Round trip of a tq_lease call.", &d->lease_rtt);
	histogram(b, "tqd_report_seconds",
			  "Round trip of an outcome batch (tq_complete, tq_fail, "
			  "tq_release).",
			  &d->report_rtt);
	help(b, "tqd_db_disconnects_total", "counter",
		 "Database connections lost (each is then re-established with backoff), by connection.");
	for (int k = 0; k < 4; k++)
		buf_printf(b, "tqd_db_disconnects_total{conn=\"%s\"} %lld\n", conn_label[k],
				   d->disconnects[k]);
	if (d->dash != NULL)
		buf_printf(b, "tqd_db_disconnects_total{conn=\"dashboard\"} %lld\n",
				   dashboard_disconnects(d->dash));
	help(b, "tqd_db_connected", "gauge", "1 while the connection is up.");
	buf_printf(b,
			   "tqd_db_connected{conn=\"work\"} %d\ntqd_db_connected{conn=\"report\"} %d\n"
			   "tqd_db_connected{conn=\"listen\"} %d\n",
			   pgc_ready(d->work), pgc_ready(d->report), pgc_ready(d->listen));
	if (d->dash != NULL)
		buf_printf(b, "tqd_db_connected{conn=\"dashboard\"} %d\n", dashboard_connected(d->dash));
	if (d->endpoints != NULL)
	{
		help(b, "tqd_http_window", "gauge", "Adaptive window of an http endpoint (requests).");
		for (Endpoint *e = d->endpoints; e; e = e->next)
			buf_printf(b, "tqd_http_window{url=\"%s\"} %.2f\n", label(e->shown), e->aimd.window);
		help(b, "tqd_http_in_flight", "gauge", "Requests in flight to an http endpoint.");
		for (Endpoint *e = d->endpoints; e; e = e->next)
			buf_printf(b, "tqd_http_in_flight{url=\"%s\"} %d\n", label(e->shown), e->aimd.inflight);
		help(b, "tqd_http_answers_total", "counter", "Answers from an http endpoint.");
		for (Endpoint *e = d->endpoints; e; e = e->next)
			buf_printf(b, "tqd_http_answers_total{url=\"%s\"} %lld\n", label(e->shown),
					   e->aimd.total_answers);
		help(b, "tqd_http_throttled_total", "counter", "Throttled answers (429, 503).");
		for (Endpoint *e = d->endpoints; e; e = e->next)
			buf_printf(b, "tqd_http_throttled_total{url=\"%s\"} %lld\n", label(e->shown),
					   e->aimd.total_throttled);
		help(b, "tqd_http_window_cuts_total", "counter", "Times the window was cut.");
		for (Endpoint *e = d->endpoints; e; e = e->next)
			buf_printf(b, "tqd_http_window_cuts_total{url=\"%s\"} %lld\n", label(e->shown),
					   e->aimd.cuts);
	}
}

/* The dashboard's view of this tqd (/api/tqd), from memory. */
static void
metrics_render_tqd(Daemon *d, Buf *b)
{
	json_t *o = json_object();
	json_t *queues = json_array();
	json_t *endpoints = json_array();
	char *text;

	json_object_set_new(o, "worker", json_string(d->worker));
	json_object_set_new(o, "version", json_string(TQD_VERSION));
	json_object_set_new(o, "started_at", json_real(d->started_at));
	json_object_set_new(o, "slots", json_integer(d->config->slots));
	json_object_set_new(o, "running", json_integer(d->running));
	json_object_set_new(o, "buffered", json_integer(d->buffered));
	json_object_set_new(o, "outcomes_waiting", json_integer(d->waiting));
	json_object_set_new(o, "connected",
						json_pack("{sbsbsbsb}", "work", pgc_ready(d->work), "report",
								  pgc_ready(d->report), "listen", pgc_ready(d->listen), "dashboard",
								  d->dash != NULL && dashboard_connected(d->dash)));
	for (Queue *q = d->queues; q; q = q->next)
	{
		json_t *outcomes;

		if (q->conf == NULL)
			continue; /* left the configuration */
		outcomes = json_object();
		for (int k = 0; k < N_OUT; k++)
			json_object_set_new(outcomes, outcome_label[k], json_integer(q->outcomes[k]));
		json_array_append_new(queues, json_pack("{sssssisisisIso}", "queue", q->name, "handler",
												handler_name(q->conf->handler), "running",
												q->running, "buffered", q->buffered, "concurrency",
												q->conf->concurrency, "started",
												(json_int_t) q->started, "outcomes", outcomes));
	}
	json_object_set_new(o, "queues", queues);
	for (Endpoint *e = d->endpoints; e; e = e->next)
		if (e->used)
			json_array_append_new(
				endpoints,
				json_pack("{sssfsisisIsIsI}", "url", e->shown, "window", e->aimd.window, "limit",
						  aimd_limit(&e->aimd), "in_flight", e->aimd.inflight, "answers",
						  (json_int_t) e->aimd.total_answers, "throttled",
						  (json_int_t) e->aimd.total_throttled, "cuts", (json_int_t) e->aimd.cuts));
	json_object_set_new(o, "endpoints", endpoints);
	text = json_dumps(o, JSON_COMPACT);
	buf_printf(b, "%s\n", text ? text : "{}");
	free(text);
	json_decref(o);
}

/*
 * The HttpdHandler of metrics_listen: /metrics, /healthz, /readyz; with
 * dashboard = on also /api/tqd and the dashboard's paths.
 *
 * The probes come first, before the Host and token checks: they say only
 * "ok" or "ready", and orchestrators probe by whatever name or address
 * they know (kubelet sends the pod's IP, a compose healthcheck a service
 * name), often without a way to send a token.
 */
int
metrics_serve(HttpdReq *req, const char *path, Buf *body, const char **type, void *arg)
{
	Daemon *d = arg;
	bool dash = d->dash != NULL && d->config->dashboard;
	int status;

	if (strcmp(path, "/healthz") == 0)
	{
		/* Liveness: the loop answers.  Not the database: a restart would not fix it. */
		buf_printf(body, "ok\n");
		return 200;
	}
	if (strcmp(path, "/readyz") == 0)
	{
		bool up = pgc_ready(d->work) && pgc_ready(d->report);

		buf_printf(body, up ? "ready\n" : "not ready: the database is unreachable\n");
		return up ? 200 : 503;
	}
	status = access_check(d->config, req, !(dash && dashboard_is_page(path)), body);
	if (status != 0)
		return status;
	if (strcmp(path, "/metrics") == 0)
	{
		*type = "text/plain; version=0.0.4; charset=utf-8";
		metrics_render(d, body);
		return 200;
	}
	if (dash)
	{
		if (strcmp(path, "/api/tqd") == 0)
		{
			*type = "application/json";
			metrics_render_tqd(d, body);
			return 200;
		}
		status = dashboard_serve(d->dash, req, path, body, type);
		if (status != DASHBOARD_NOT_MINE)
			return status;
		buf_printf(body, "not found: tqd serves the dashboard at /, /metrics, /healthz and "
						 "/readyz\n");
		return 404;
	}
	buf_printf(body, "not found: tqd serves /metrics, /healthz and /readyz (the dashboard at / "
					 "when dashboard = on)\n");
	return 404;
}

/* Starts the dashboard's connection when dashboard = on and the endpoint runs. */
void
metrics_dashboard_sync(Daemon *d)
{
	PgConnOpts o;

	if (d->dash != NULL || !d->config->dashboard || d->httpd == NULL)
		return;
	o.connect_timeout = d->config->connect_timeout;
	o.reconnect_min = d->config->reconnect_min;
	o.reconnect_max = d->config->reconnect_max;
	d->dash = dashboard_new(d->loop, d->config->conninfo, &o);
	if (d->dash == NULL)
	{
		tlog(LOG_ERROR, "out of memory", NULL);
		abort();
	}
	tlog(LOG_INFO, "serving the dashboard at /", "port=%d", httpd_port(d->httpd));
}
