/*
 * tqd.c
 *	  The worker daemon's core: leasing, running, reporting, heartbeats,
 *	  signals, on one libev loop.
 *
 * Connections.  "listen" LISTENs on tq_ready (a queue has new work) and
 * tq_cancel (an operator cancelled a running task); "work" carries leases
 * and heartbeats, "report" the outcome batches, both in pipeline mode: two
 * server backends, so that a lease never waits behind a large batch of
 * completions and the two run in parallel on the server.  Queues
 * with the sql handler get connections of their own, one per running task
 * (a task's function may run long and must not hold up the pipeline).
 *
 * A task's life in tqd (Task.state; transitions in set_task_state):
 *
 *	RUNNING   leased; its handler works (exec: a process group; sql: a
 *	          query on a connection of the queue's pool; noop: none)
 *	DONE      the outcome is known and waits for the next flush
 *	SENT      the outcome is in a batch whose result has not arrived
 *
 * A task leaves tqd when the batch carrying its outcome has committed (or
 * was refused: its lease was lost, which fencing makes harmless), or when a
 * heartbeat says its lease is lost.  A batch lost with the connection is
 * sent again after reconnecting: each task's outcome names its attempt, so
 * an outcome that did land once is refused the second time, harmlessly.
 *
 * Capacity.  A queue leases at most (its concurrency - its running tasks),
 * and all queues together at most (slots - running tasks), in calls of at
 * most lease_batch.  Outcomes waiting for the database (DONE, SENT) do not
 * take a slot, but while more than 4 x slots of them wait (the database
 * is unreachable), nothing more is leased.
 *
 * Leasing is driven by tq_ready for the queue, by a full lease (there is
 * probably more), by a freed slot when the queue still had work, and by
 * poll_interval as the safety net for a lost notification.
 *
 * Shutdown.  SIGTERM: lease nothing more; running tasks may finish within
 * drain_timeout; then the rest are stopped and handed back with
 * tq_release; once every outcome is flushed, exit 0.  A second SIGTERM, or
 * SIGINT: stop the children at once (SIGKILL), hand their tasks back,
 * flush, exit.  If the database stays unreachable, the final flush gives
 * up after drain_timeout (at least 5 s): the leases then expire and tq
 * reclaims the tasks.
 *
 * Ownership: the Daemon owns the Config, the queues, the tasks and the
 * connections.  Nothing is freed inside its own watcher's callback except
 * through pgc_free (which defers) and exec_free (allowed by exec.h).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "aimd.h"
#include "exec.h"
#include "http.h"
#include "dashboard.h"
#include "httpd.h"
#include "log.h"
#include "pgconn.h"
#include "tqd.h"
#include "util.h"

/*
 * A task's state in tqd.  Every change goes through task_set_state, which
 * refuses one that task_transitions does not list and keeps the counters
 * of tasks per state (Daemon.running, Queue.running, Daemon.waiting).
 */
typedef enum TaskState
{
	TASK_NEW,     /* just leased: made but counted nowhere yet (calloc's zero) */
	TASK_RUNNING, /* the handler works; counted in Daemon.running and Queue.running */
	TASK_DONE,    /* outcome known, waiting for the next flush; counted in Daemon.waiting */
	TASK_SENT,    /* outcome in a batch on its way; counted in Daemon.waiting */
	TASK_FREED,   /* left tqd: counted nowhere, freed at once */
	N_TASK_STATES
} TaskState;

/* How tq_fail retries a failed attempt; tq's words only in the outcome batch. */
typedef enum RetryMode
{
	RETRY_AUTO,      /* 'auto': tq's backoff, the attempt counts (calloc's zero) */
	RETRY_NEVER,     /* 'never': dead at once */
	RETRY_THROTTLED, /* 'throttled': backoff without using an attempt */
} RetryMode;

typedef enum Report
{
	REPORT_COMPLETE, /* tq_complete with result */
	REPORT_FAIL,     /* tq_fail with error, retry mode, delay */
	REPORT_RELEASE,  /* tq_release: hand back (drain, cancel) */
	REPORT_DROP,     /* nothing: the lease is lost */
} Report;

typedef struct Queue Queue;

/* What became of tasks, per queue, for /metrics (label outcome). */
typedef enum Outcomes
{
	OUT_SUCCEEDED, /* tq_complete */
	OUT_FAILED,    /* tq_fail, retried with backoff */
	OUT_THROTTLED, /* tq_fail, retried without using an attempt */
	OUT_FATAL,     /* tq_fail, never retried */
	OUT_RELEASED,  /* handed back (drain, cancel, could not start) */
	OUT_DROPPED,   /* lease lost: nothing reported */
	N_OUT
} Outcomes;
static const char *const outcome_label[N_OUT] = {"succeeded", "failed",   "throttled",
												 "fatal",     "released", "dropped"};

/* A latency histogram for /metrics (seconds). */
#define N_BUCKETS 13
static const double bucket_le[N_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
											0.1,    0.25,  0.5,    1,     2.5,  5};
typedef struct Histogram
{
	long long buckets[N_BUCKETS]; /* cumulative at render time, per bucket here */
	long long count;
	double sum;
} Histogram;

static void
observe(Histogram *h, double secs)
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

/*
 * An HTTP endpoint: the URL of one or more http queues (queues with the
 * same url share it) and its adaptive window.  Kept across reloads while
 * its URL stays configured, so a reload does not reset what was learnt.
 */
typedef struct Endpoint
{
	struct Endpoint *next;
	char *url;
	bool used;                                  /* a queue of the current config sends here */
	Aimd aimd;                                  /* the window, and the requests in flight */
	int asked;                                  /* tasks asked for by leases on their way */
	long long logged_answers, logged_throttled; /* totals at the last status line */
} Endpoint;

typedef struct SqlConn
{
	struct SqlConn *next;
	Queue *queue;
	PgConn *conn;
	struct Task *task; /* the task it runs, or NULL when idle */
} SqlConn;

typedef struct Task
{
	struct Task *next, *prev; /* Daemon.tasks */
	struct Daemon *d;
	Queue *queue;
	long long id;
	int attempt;
	char *tenant;
	char *payload;
	char *traceparent; /* W3C trace context handed to the handler, or NULL */
	double timeout;    /* s; 0 = none */
	double lease_len;  /* s, as leased */
	TaskState state;
	Report report;
	bool stopping; /* stop asked (cancel, lease lost, drain) */
	Report stop_report;
	/* handlers */
	ExecRun *run;
	SqlConn *sql;
	HttpRequest *http;
	Endpoint *ep;       /* http: the endpoint the request went to */
	double http_ticket; /* http: aimd_sent's ticket for the request */
	double retry_after; /* REPORT_FAIL: s, from Retry-After; < 0 = tq's backoff */
	ev_timer sql_timer; /* sql: the timeout */
	/* outcome */
	json_t *result;  /* REPORT_COMPLETE */
	char *error;     /* REPORT_FAIL */
	RetryMode retry; /* REPORT_FAIL */
	json_t *log;     /* stderr lines (array of strings) or NULL */
} Task;

struct Queue
{
	struct Queue *next;
	char *name;
	const QueueConf *conf; /* in Daemon.config; NULL once the queue left the config */
	int running;           /* tasks in TASK_RUNNING */
	bool leasing;          /* a tq_lease call is on its way */
	bool wanted;           /* there is probably work: lease when there is room */
	SqlConn *pool;         /* sql handler: its connections */
	Endpoint *ep;          /* http handler: its endpoint */
	/* for /metrics */
	long long started;         /* tasks leased and started */
	long long outcomes[N_OUT]; /* what became of them */
	bool backlog_known;        /* tq_queue_stats read at least once */
	long long backlog[4];      /* scheduled, ready, paused, running (all workers) */
};

typedef enum RunState
{
	RUN_ACTIVE,   /* leasing */
	RUN_DRAINING, /* SIGTERM: waiting for running tasks */
	RUN_STOPPING, /* handing back and flushing the last outcomes */
	RUN_DONE,     /* the loop ends */
} RunState;

struct Daemon
{
	struct ev_loop *loop;
	Config *config;
	char *config_path;
	char worker[256];
	RunState run_state;
	int exit_status;

	PgConn *work;   /* leases, heartbeats */
	PgConn *report; /* outcome batches */
	PgConn *listen;
	HttpClient *http;    /* the http handler's requests */
	Endpoint *endpoints; /* of http queues, current and past */
	Queue *queues;
	Task *tasks;
	int running;        /* tasks in TASK_RUNNING */
	int waiting;        /* tasks in TASK_DONE or TASK_SENT */
	int heartbeats;     /* heartbeat calls on their way */
	double flush_retry; /* s: delay before resending refused batches; 0 after a success */

	ev_idle lease_idle;    /* lease soon, once per loop turn */
	ev_timer poll_timer;   /* poll_interval */
	ev_timer flush_timer;  /* flush_interval */
	ev_timer hb_timer;     /* heartbeats */
	ev_timer stop_timer;   /* drain_timeout, then the final flush's deadline */
	ev_timer status_timer; /* status_interval: endpoint status lines */
	/* /metrics and /healthz */
	Httpd *httpd;             /* NULL when metrics_listen is empty */
	Dashboard *dash;          /* NULL until dashboard = on */
	Histogram lease_rtt;      /* tq_lease round trips */
	Histogram report_rtt;     /* outcome batch round trips */
	long long disconnects[4]; /* work, report, listen, sql handler connections */
	double started_at;        /* when tqd started (unix time) */
	ev_signal sigterm, sigint, sighup;
};

static void lease_soon(Daemon *d);
static void flush_soon(Daemon *d);
static bool task_set_state(Task *t, TaskState to);
static void task_done(Task *t, Report report);
static void stop_task(Task *t, Report report);
static void maybe_finish_stop(Daemon *d);
static void begin_stopping(Daemon *d, bool fast);
static void set_status_timer(Daemon *d);
static void sync_dashboard(Daemon *d);
static json_t *text_result(const char *text, size_t len, bool try_json, const char *what);

/* ------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------
 */
static char *
xstrdup(const char *s)
{
	char *r = strdup(s ? s : "");

	if (r == NULL)
	{
		tlog(LOG_ERROR, "out of memory", NULL);
		abort();
	}
	return r;
}

static void *
xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);

	if (p == NULL)
	{
		tlog(LOG_ERROR, "out of memory", NULL);
		abort();
	}
	return p;
}

static Queue *
find_queue(Daemon *d, const char *name)
{
	for (Queue *q = d->queues; q; q = q->next)
		if (strcmp(q->name, name) == 0)
			return q;
	return NULL;
}

static Task *
find_task(Daemon *d, long long id)
{
	for (Task *t = d->tasks; t; t = t->next)
		if (t->id == id)
			return t;
	return NULL;
}

/* Appends "v" to a PostgreSQL array literal of numbers being built. */
static void
num_array(char *buf, size_t len, size_t *o, long long v, bool first)
{
	int n = snprintf(buf + *o, len - *o, "%s%lld", first ? "" : ",", v);

	if (n > 0)
		*o += (size_t) n;
}

/* ------------------------------------------------------------------------
 * Queues: the runtime side of the config's [queue:NAME] sections
 * ------------------------------------------------------------------------
 */

static Endpoint *
find_endpoint(Daemon *d, const char *url)
{
	for (Endpoint *e = d->endpoints; e; e = e->next)
		if (strcmp(e->url, url) == 0)
			return e;
	return NULL;
}

/* The window's rules from a queue's keys; the ceiling is given. */
static void
aimd_conf_of(const QueueConf *qc, double ceiling, AimdConf *ac)
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
sync_endpoints(Daemon *d)
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
		e = find_endpoint(d, qc->url);
		if (e != NULL && e->used)
		{
			find_queue(d, qc->name)->ep = e;
			continue;
		}
		is_new = e == NULL;
		if (is_new)
		{
			e = xcalloc(1, sizeof(Endpoint));
			e->url = xstrdup(qc->url);
			e->next = d->endpoints;
			d->endpoints = e;
		}
		e->used = true;
		for (int j = 0; j < d->config->nqueues; j++)
			if (d->config->queues[j].handler == HANDLER_HTTP &&
				strcmp(d->config->queues[j].url, qc->url) == 0)
				ceiling += d->config->queues[j].concurrency;
		aimd_conf_of(qc, ceiling, &ac);
		if (is_new)
			aimd_init(&e->aimd, &ac, ev_now(d->loop));
		else
			aimd_reconfigure(&e->aimd, &ac);
		find_queue(d, qc->name)->ep = e;
	}
}

/* Points the queues at config's sections; adds new ones; retires gone ones. */
static void
sync_queues(Daemon *d)
{
	for (Queue *q = d->queues; q; q = q->next)
		q->conf = NULL;
	for (int i = 0; i < d->config->nqueues; i++)
	{
		const QueueConf *qc = &d->config->queues[i];
		Queue *q = find_queue(d, qc->name);

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
	sync_endpoints(d);
}

/* ------------------------------------------------------------------------
 * Tasks
 * ------------------------------------------------------------------------
 */
static const char *const task_state_name[N_TASK_STATES] = {"new", "running", "done", "sent",
														   "freed"};

/*
 * The legal changes of state, [from][to].  Any state but NEW may end in
 * FREED: a batch committed (SENT), a lost lease drops an outcome (DONE),
 * or the daemon is freed with tasks still running (RUNNING).  A task in
 * SENT goes back to DONE when its batch did not land.
 */
static const bool task_transitions[N_TASK_STATES][N_TASK_STATES] = {
	[TASK_NEW] = {[TASK_RUNNING] = true},
	[TASK_RUNNING] = {[TASK_DONE] = true, [TASK_FREED] = true},
	[TASK_DONE] = {[TASK_SENT] = true, [TASK_FREED] = true},
	[TASK_SENT] = {[TASK_DONE] = true, [TASK_FREED] = true},
};

/* Adds by (1 or -1) to the counters of the task's state. */
static void
task_count(Task *t, int by)
{
	switch (t->state)
	{
		case TASK_RUNNING:
			t->d->running += by;
			t->queue->running += by;
			break;
		case TASK_DONE:
		case TASK_SENT:
			t->d->waiting += by;
			break;
		default:
			break;
	}
}

/*
 * Every change of a task's state, and the only place that keeps the
 * counters of tasks per state.  An illegal change is a bug in tqd: it is
 * logged and refused (false), and the task keeps its state.
 */
static bool
task_set_state(Task *t, TaskState to)
{
	if (!task_transitions[t->state][to])
	{
		tlog(LOG_ERROR, "illegal task state change refused",
			 "task=%lld queue=%s attempt=%d from=%s to=%s", t->id, kvq(t->queue->name), t->attempt,
			 task_state_name[t->state], task_state_name[to]);
		return false;
	}
	task_count(t, -1);
	t->state = to;
	task_count(t, 1);
	return true;
}

/* The retry mode as tq_fail takes it. */
static const char *
retry_mode_sql(RetryMode m)
{
	switch (m)
	{
		case RETRY_NEVER:
			return "never";
		case RETRY_THROTTLED:
			return "throttled";
		case RETRY_AUTO:
			break;
	}
	return "auto";
}

/* The retry mode of a failed handler's outcome (exec, http). */
static RetryMode
retry_mode_of(Outcome o)
{
	switch (o)
	{
		case OUTCOME_NEVER:
			return RETRY_NEVER;
		case OUTCOME_THROTTLED:
			return RETRY_THROTTLED;
		default:
			return RETRY_AUTO;
	}
}

/* What became of an attempt, for /metrics, from its report and retry mode. */
static Outcomes
outcome_of(Report report, RetryMode retry)
{
	switch (report)
	{
		case REPORT_COMPLETE:
			return OUT_SUCCEEDED;
		case REPORT_RELEASE:
			return OUT_RELEASED;
		case REPORT_DROP:
			return OUT_DROPPED;
		case REPORT_FAIL:
			break;
	}
	switch (retry)
	{
		case RETRY_NEVER:
			return OUT_FATAL;
		case RETRY_THROTTLED:
			return OUT_THROTTLED;
		case RETRY_AUTO:
			break;
	}
	return OUT_FAILED;
}

static void
free_task(Task *t)
{
	Daemon *d = t->d;

	if (t->prev)
		t->prev->next = t->next;
	else
		d->tasks = t->next;
	if (t->next)
		t->next->prev = t->prev;
	(void) task_set_state(t, TASK_FREED);
	if (t->run)
		exec_free(t->run);
	if (t->http)
	{
		http_free(t->http);
		aimd_abandoned(&t->ep->aimd);
	}
	if (t->sql)
		t->sql->task = NULL;
	ev_timer_stop(d->loop, &t->sql_timer);
	if (t->result)
		json_decref(t->result);
	if (t->log)
		json_decref(t->log);
	free(t->error);
	free(t->tenant);
	free(t->payload);
	free(t->traceparent);
	free(t);
}

/*
 * The handler has finished (or was stopped): the task's outcome is known.
 * A stop asked for earlier decides over what the handler reported.
 */
static void
task_done(Task *t, Report report)
{
	Daemon *d = t->d;

	if (t->state != TASK_RUNNING)
		return;
	if (t->stopping)
		report = t->stop_report;
	t->report = report;
	(void) task_set_state(t, TASK_DONE);
	t->queue->outcomes[outcome_of(report, t->retry)]++;
	if (report == REPORT_DROP)
	{
		tlog(LOG_WARNING, "task dropped: its lease was lost", "task=%lld queue=%s attempt=%d",
			 t->id, kvq(t->queue->name), t->attempt);
		free_task(t);
	}
	else
		flush_soon(d);
	/* A slot is free: more of this queue's work may be waiting. */
	lease_soon(d);
	maybe_finish_stop(d);
}

static void set_fail(Task *t, RetryMode retry, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void
set_fail(Task *t, RetryMode retry, const char *fmt, ...)
{
	char buf[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	free(t->error);
	t->error = xstrdup(buf);
	t->retry = retry;
}

/* exec: the program ended. */
static void
exec_done(ExecRun *run, const ExecResult *r, void *arg)
{
	Task *t = arg;
	char how[512];
	Outcome o = exec_classify(r, t->queue->conf ? t->queue->conf->throttled_exit : 69);

	if (r->end == EXEC_TIMEOUT)
		snprintf(how, sizeof(how), "timed out after %g s", t->timeout);
	else
		exec_describe(r, how, sizeof(how));
	if (r->nlog_lines > 0)
	{
		t->log = json_array();
		for (int i = 0; i < r->nlog_lines; i++)
			json_array_append_new(t->log, json_string(r->log_lines[i]));
		if (r->log_truncated)
			json_array_append_new(t->log, json_string("[tqd: more output was dropped]"));
	}
	if (o == OUTCOME_SUCCESS)
	{
		t->result = text_result(r->output, r->output_len, !r->output_truncated, "output");
		tlog(LOG_INFO, "task succeeded", "task=%lld queue=%s attempt=%d seconds=%.3f", t->id,
			 kvq(t->queue->name), t->attempt, r->seconds);
		t->run = NULL;
		exec_free(run);
		task_done(t, REPORT_COMPLETE);
		return;
	}
	{
		const char *last = r->nlog_lines > 0 ? r->log_lines[r->nlog_lines - 1] : NULL;
		RetryMode retry = retry_mode_of(o);

		if (last && *last)
			set_fail(t, retry, "%s: %s", how, last);
		else
			set_fail(t, retry, "%s", how);
		tlog(LOG_INFO, "task failed",
			 "task=%lld queue=%s attempt=%d outcome=%s error=%s seconds=%.3f", t->id,
			 kvq(t->queue->name), t->attempt, outcome_name(o), kvq(t->error), r->seconds);
	}
	t->run = NULL;
	exec_free(run);
	task_done(t, REPORT_FAIL);
}

/*
 * When the task must be done by, in UTC ("2026-11-23T02:00:00Z"), as the
 * handlers pass it on (TQ_DEADLINE, X-TQ-Deadline); "" without a timeout.
 */
static void
deadline_text(const Task *t, char *buf, size_t len)
{
	time_t dl;
	struct tm tm;

	buf[0] = '\0';
	if (t->timeout <= 0)
		return;
	dl = time(NULL) + (time_t) ceil(t->timeout);
	gmtime_r(&dl, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/*
 * A result from a handler's text (exec's stdout, an http body): JSON if
 * it parses (and try_json), else the text as a JSON string; text that is
 * not valid UTF-8 becomes a note saying so.  Cut text is never parsed.
 */
static json_t *
text_result(const char *text, size_t len, bool try_json, const char *what)
{
	json_t *v = try_json ? json_loadb(text, len, JSON_DECODE_ANY, NULL) : NULL;

	if (v != NULL)
		return v;
	v = json_stringn_nocheck(text, len);
	if (v == NULL || json_string_length(v) != len)
	{
		char note[128];

		if (v)
			json_decref(v);
		snprintf(note, sizeof(note), "[tqd: the %s was not valid UTF-8]", what);
		v = json_string(note);
	}
	return v;
}

/*
 * The task's variables for its program (exec_start copies them before it
 * returns).  TRACEPARENT, the OpenTelemetry name for a trace context in
 * the environment, is the task's, or unset when it has none: a program
 * must not join tqd's own trace (tqd's environment may have one) as if it
 * were the task's; TRACESTATE, which belongs to a TRACEPARENT, likewise.
 */
static char **
task_env(Task *t)
{
	static char bufs[5][512];
	static char traceparent[sizeof("TRACEPARENT=") + TRACEPARENT_MAX];
	static char *env[8];
	char deadline[64];

	snprintf(bufs[0], sizeof(bufs[0]), "TQ_TASK_ID=%lld", t->id);
	snprintf(bufs[1], sizeof(bufs[1]), "TQ_ATTEMPT=%d", t->attempt);
	snprintf(bufs[2], sizeof(bufs[2]), "TQ_QUEUE=%s", t->queue->name);
	snprintf(bufs[3], sizeof(bufs[3]), "TQ_TENANT=%s", t->tenant ? t->tenant : "");
	deadline_text(t, deadline, sizeof(deadline));
	snprintf(bufs[4], sizeof(bufs[4]), "TQ_DEADLINE=%s", deadline);
	for (int i = 0; i < 5; i++)
		env[i] = bufs[i];
	/* A bare name unsets the variable (exec.h). */
	if (t->traceparent)
		snprintf(traceparent, sizeof(traceparent), "TRACEPARENT=%s", t->traceparent);
	else
		snprintf(traceparent, sizeof(traceparent), "TRACEPARENT");
	env[5] = traceparent;
	env[6] = "TRACESTATE";
	env[7] = NULL;
	return env;
}

static void start_sql(Task *t);
static void start_http(Task *t);

/*
 * Closes the connection a running sql task's query is on, detached from
 * the task first (closing it runs its pending callbacks, which must not
 * find the task).  The pool makes a new connection when it needs one.
 */
static void
sql_drop(Task *t)
{
	SqlConn *s = t->sql;
	PgConn *c = s->conn;

	s->conn = NULL;
	s->task = NULL;
	t->sql = NULL;
	pgc_free(c);
}
static double heartbeat_every(Daemon *d);

/* Starts the task's handler. */
static void
start_task(Task *t)
{
	const QueueConf *qc = t->queue->conf;

	tlog(LOG_DEBUG, "task started", "task=%lld queue=%s attempt=%d", t->id, kvq(t->queue->name),
		 t->attempt);
	t->queue->started++;
	switch (qc->handler)
	{
		case HANDLER_NOOP:
			t->result = json_null();
			task_done(t, REPORT_COMPLETE);
			return;
		case HANDLER_EXEC:
		{
			ExecSpec spec;
			char err[512];

			memset(&spec, 0, sizeof(spec));
			spec.argv = qc->argv;
			spec.env = task_env(t);
			spec.input = t->payload;
			spec.input_len = strlen(t->payload);
			spec.timeout = t->timeout;
			spec.kill_grace = qc->kill_grace;
			spec.max_output = qc->max_output;
			spec.max_log_bytes = qc->max_log_bytes;
			spec.max_log_lines = qc->max_log_lines;
			spec.memory_limit = qc->memory_limit;
			spec.cpu_limit = qc->cpu_limit;
			t->run = exec_start(t->d->loop, &spec, exec_done, t, err, sizeof(err));
			if (t->run == NULL)
			{
				/*
				 * fork or pipe failed.  A failed attempt, not a hand-back: a
				 * release would lease the task again at once, and a program
				 * that cannot start would spin (found by fuzzing: 226
				 * attempts in 2 s).  The queue's backoff and max_attempts
				 * decide, as for any failure.
				 */
				tlog(LOG_ERROR, "could not start the task's program", "task=%lld queue=%s error=%s",
					 t->id, kvq(t->queue->name), kvq(err));
				set_fail(t, RETRY_AUTO, "could not start the program: %s", err);
				task_done(t, REPORT_FAIL);
			}
			return;
		}
		case HANDLER_SQL:
			start_sql(t);
			return;
		case HANDLER_HTTP:
			start_http(t);
			return;
	}
}

/*
 * Asks a running task to stop; its outcome will be report.  exec: the
 * program gets SIGTERM (SIGKILL after kill_grace); sql: the query runs on
 * (its connection is closed); http: the request is aborted (its connection
 * closed); noop never runs long enough to be stopped.
 */
static void
stop_task(Task *t, Report report)
{
	if (t->state != TASK_RUNNING)
	{
		/* Finished but not reported yet: the lease is gone, so is the outcome. */
		if (report == REPORT_DROP && t->state == TASK_DONE)
		{
			tlog(LOG_WARNING, "outcome dropped: the task's lease was lost",
				 "task=%lld queue=%s attempt=%d", t->id, kvq(t->queue->name), t->attempt);
			Daemon *d = t->d;

			free_task(t);
			maybe_finish_stop(d);
		}
		return;
	}
	if (t->stopping && t->stop_report == REPORT_DROP)
		return;
	t->stopping = true;
	t->stop_report = report;
	if (t->run)
		exec_stop(t->run);
	else if (t->http)
	{
		/* Aborted at once; the endpoint may or may not have done the work. */
		http_free(t->http);
		t->http = NULL;
		aimd_abandoned(&t->ep->aimd);
		task_done(t, report);
	}
	else if (t->sql)
	{
		/* The query cannot be interrupted from here cheaply: drop its connection. */
		sql_drop(t);
		task_done(t, report);
	}
}

/* ------------------------------------------------------------------------
 * sql handler
 * ------------------------------------------------------------------------
 */
static void sql_event(PgConn *c, PgConnEvent ev, const char *a, const char *b, void *arg);

static void
sql_ignore(PgConn *c, const PGresult *res, void *arg)
{
}

static void
sql_result(PgConn *c, const PGresult *res, void *arg)
{
	SqlConn *s = arg;
	Task *t = s->task;

	if (t == NULL)
		return; /* stopped meanwhile */
	ev_timer_stop(t->d->loop, &t->sql_timer);
	s->task = NULL;
	t->sql = NULL;
	if (res == NULL)
	{
		set_fail(t, RETRY_AUTO, "the database connection was lost while the function ran");
		task_done(t, REPORT_FAIL);
		return;
	}
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
	{
		const char *st = pgc_sqlstate(res);
		/* Bad data, constraint violations, undefined objects: no retry helps. */
		RetryMode retry =
			(strncmp(st, "22", 2) == 0 || strncmp(st, "23", 2) == 0 || strncmp(st, "42", 2) == 0)
				? RETRY_NEVER
				: RETRY_AUTO;

		set_fail(t, retry, "%s (SQLSTATE %s)", pgc_error(res), st);
		tlog(LOG_INFO, "task failed", "task=%lld queue=%s attempt=%d error=%s sqlstate=%s", t->id,
			 kvq(t->queue->name), t->attempt, kvq(pgc_error(res)), st);
		task_done(t, REPORT_FAIL);
		return;
	}
	{
		const char *type = PQgetvalue(res, 0, 0);
		const char *text = PQgetvalue(res, 0, 1);
		json_t *v = NULL;

		if (PQgetisnull(res, 0, 1) || strcmp(type, "void") == 0)
			v = json_null();
		else if (strcmp(type, "json") == 0 || strcmp(type, "jsonb") == 0)
			v = json_loads(text, JSON_DECODE_ANY, NULL);
		if (v == NULL)
			v = json_string(text);
		t->result = v;
	}
	tlog(LOG_INFO, "task succeeded", "task=%lld queue=%s attempt=%d", t->id, kvq(t->queue->name),
		 t->attempt);
	task_done(t, REPORT_COMPLETE);
}

static void
sql_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
	Task *t = container_of(w, Task, sql_timer);

	if (t->sql == NULL)
		return;
	set_fail(t, RETRY_AUTO, "timed out after %g s", t->timeout);
	tlog(LOG_INFO, "task failed", "task=%lld queue=%s attempt=%d error=%s", t->id,
		 kvq(t->queue->name), t->attempt, kvq(t->error));
	/* Closing the connection ends the backend's query with it. */
	sql_drop(t);
	task_done(t, REPORT_FAIL);
}

/* Sends the task's call on s (ready). */
static void
sql_send(SqlConn *s, Task *t)
{
	char sql[512];
	char timeout[32];
	const char *tp[1];
	const char *cp[2] = {t->payload, t->traceparent};

	if (t->queue->conf == NULL || t->queue->conf->handler != HANDLER_SQL)
	{
		/* The queue left the config while this task waited for a connection. */
		s->task = NULL;
		t->sql = NULL;
		task_done(t, REPORT_RELEASE);
		return;
	}
	/*
	 * The function name was checked at load time: [schema.]identifier.  A
	 * task with a traceparent runs with tq.traceparent set for its
	 * transaction, so that the tasks the function submits join the trace:
	 * the function is called once per row of the subquery that sets it
	 * (which a volatile target list keeps from being flattened), so after
	 * it.  Without one, the setting is not named at all: the server may
	 * run an older tq that does not know it.
	 */
	if (t->traceparent)
		snprintf(sql, sizeof(sql),
				 "SELECT pg_catalog.pg_typeof(r)::text, r::text FROM (SELECT %s($1::jsonb) AS r"
				 " FROM (SELECT pg_catalog.set_config('tq.traceparent', $2, true)) c) s",
				 t->queue->conf->function);
	else
		snprintf(sql, sizeof(sql),
				 "SELECT pg_catalog.pg_typeof(r)::text, r::text FROM (SELECT %s($1::jsonb) AS r) s",
				 t->queue->conf->function);
	snprintf(timeout, sizeof(timeout), "%.0f", t->timeout > 0 ? ceil(t->timeout * 1000) : 0.0);
	tp[0] = timeout;
	s->task = t;
	t->sql = s;
	if (!pgc_send(s->conn, "SELECT pg_catalog.set_config('statement_timeout', $1, false)", 1, tp,
				  sql_ignore, NULL) ||
		!pgc_send(s->conn, sql, t->traceparent ? 2 : 1, cp, sql_result, s))
	{
		/* The connection broke: sql_event hands the task over again. */
		return;
	}
	if (t->timeout > 0)
	{
		/* statement_timeout ends the query; this ends it if the server does not. */
		ev_timer_set(&t->sql_timer, t->timeout + 5.0, 0.);
		ev_timer_start(t->d->loop, &t->sql_timer);
	}
}

static void
sql_event(PgConn *c, PgConnEvent ev, const char *a, const char *b, void *arg)
{
	SqlConn *s = arg;

	if (ev == PGC_CONNECTED)
	{
		if (s->task && s->task->sql == s)
			sql_send(s, s->task);
	}
	else if (ev == PGC_DISCONNECTED)
	{
		tlog(LOG_WARNING, "sql handler connection failed", "queue=%s error=%s retry_in=%s",
			 kvq(s->queue->name), kvq(a), b);
		if (s->task)
			s->task->d->disconnects[3]++;
		if (s->task)
		{
			Task *t = s->task;

			/* Results of a query in flight came back NULL (sql_result). */
			if (t->state == TASK_RUNNING && t->sql == s)
			{
				s->task = NULL;
				t->sql = NULL;
				ev_timer_stop(t->d->loop, &t->sql_timer);
				set_fail(t, RETRY_AUTO, "could not reach the database: %s", a);
				task_done(t, REPORT_FAIL);
			}
		}
	}
}

static void
start_sql(Task *t)
{
	Queue *q = t->queue;
	SqlConn *s;
	PgConnOpts o;

	for (s = q->pool; s; s = s->next)
		if (s->task == NULL && s->conn != NULL && pgc_ready(s->conn))
			break;
	if (s == NULL)
	{
		for (s = q->pool; s; s = s->next)
			if (s->task == NULL)
				break;
		if (s == NULL)
		{
			s = xcalloc(1, sizeof(SqlConn));
			s->queue = q;
			s->next = q->pool;
			q->pool = s;
		}
		if (s->conn == NULL)
		{
			char name[128];

			o.connect_timeout = t->d->config->connect_timeout;
			o.reconnect_min = t->d->config->reconnect_min;
			o.reconnect_max = t->d->config->reconnect_max;
			snprintf(name, sizeof(name), "sql:%s", q->name);
			s->conn = pgc_new(t->d->loop, name, t->d->config->conninfo, &o, sql_event, s);
			pgc_connect(s->conn);
		}
	}
	ev_init(&t->sql_timer, sql_timeout);
	s->task = t;
	t->sql = s;
	if (pgc_ready(s->conn))
		sql_send(s, t);
}

/* ------------------------------------------------------------------------
 * http handler
 * ------------------------------------------------------------------------
 */
static const char *const method_text[] = {"POST", "PUT", "PATCH"};

/* Logs what the window did, with what it is now. */
static void
log_window(Endpoint *e, AimdEvent ev, double now)
{
	int answers, throttled;

	if (ev == AIMD_NONE)
		return;
	aimd_recent(&e->aimd, now, &answers, &throttled);
	if (ev == AIMD_CUT)
		tlog(LOG_INFO, "endpoint throttled: window cut",
			 "url=%s window=%.2f limit=%d in_flight=%d cuts=%lld", kvq(e->url), e->aimd.window,
			 aimd_limit(&e->aimd), e->aimd.inflight, e->aimd.cuts);
	else
		tlog(LOG_DEBUG, "endpoint healthy: window grows",
			 "url=%s window=%.2f limit=%d in_flight=%d answers=%d", kvq(e->url), e->aimd.window,
			 aimd_limit(&e->aimd), e->aimd.inflight, answers);
}

/* The answer (or its absence) becomes the task's outcome. */
static void
http_done(HttpRequest *req, const HttpResult *r, void *arg)
{
	Task *t = arg;
	Endpoint *e = t->ep;
	double now = ev_time();
	Outcome o = http_classify(r);
	char how[1200];

	http_describe(r, t->timeout, how, sizeof(how));
	if (r->end == HTTP_ANSWERED)
		log_window(e, aimd_answer(&e->aimd, now, t->http_ticket, http_is_throttle(r)), now);
	else
		aimd_abandoned(&e->aimd);
	if (o == OUTCOME_SUCCESS)
	{
		t->result = r->body_len == 0
						? json_null()
						: text_result(r->body, r->body_len, r->body_is_json && !r->body_truncated,
									  "response body");
		tlog(LOG_INFO, "task succeeded", "task=%lld queue=%s attempt=%d status=%ld seconds=%.3f",
			 t->id, kvq(t->queue->name), t->attempt, r->status, r->seconds);
		t->http = NULL;
		http_free(req);
		task_done(t, REPORT_COMPLETE);
		return;
	}
	{
		RetryMode retry = retry_mode_of(o);
		char line[1400];

		set_fail(t, retry, "%s", how);
		if (r->retry_after >= 0 && o != OUTCOME_NEVER)
			t->retry_after = fmin(r->retry_after, 30 * 86400.0); /* tq_fail's limit */
		/* The task's log says what happened to each failed attempt. */
		snprintf(line, sizeof(line), "%s %s: %s (%.3f s)%s",
				 method_text[t->queue->conf ? t->queue->conf->method : 0], e->url, how, r->seconds,
				 r->retry_after >= 0 ? "; Retry-After honoured" : "");
		t->log = json_array();
		json_array_append_new(t->log, json_string(line));
		tlog(LOG_INFO, "task failed",
			 "task=%lld queue=%s attempt=%d outcome=%s error=%s retry_after=%.0f seconds=%.3f",
			 t->id, kvq(t->queue->name), t->attempt, outcome_name(o), kvq(t->error), t->retry_after,
			 r->seconds);
	}
	t->http = NULL;
	http_free(req);
	task_done(t, REPORT_FAIL);
}

/* Sends the task to its queue's URL. */
static void
start_http(Task *t)
{
	const QueueConf *qc = t->queue->conf;
	Daemon *d = t->d;
	char hid[48], hatt[32], hqueue[128], htenant[256], hdeadline[64];
	char htrace[sizeof("traceparent: ") + TRACEPARENT_MAX];
	const char *headers[8 + 64];
	int nh = 0;
	HttpSpec spec;
	char err[512];

	snprintf(hid, sizeof(hid), "X-TQ-Task-Id: %lld", t->id);
	snprintf(hatt, sizeof(hatt), "X-TQ-Attempt: %d", t->attempt);
	snprintf(hqueue, sizeof(hqueue), "X-TQ-Queue: %s", t->queue->name);
	snprintf(htenant, sizeof(htenant), "X-TQ-Tenant: %s", t->tenant ? t->tenant : "");
	{
		char deadline[40];

		deadline_text(t, deadline, sizeof(deadline));
		snprintf(hdeadline, sizeof(hdeadline), "X-TQ-Deadline: %s", deadline);
	}
	headers[nh++] = hid;
	headers[nh++] = hatt;
	headers[nh++] = hqueue;
	/* "Name:" with nothing after it would make curl drop the header: leave it out. */
	if (t->tenant)
		headers[nh++] = htenant;
	if (t->timeout > 0)
		headers[nh++] = hdeadline;
	/* W3C Trace Context's own header, as the task's submitter gave it. */
	if (t->traceparent)
	{
		snprintf(htrace, sizeof(htrace), "traceparent: %s", t->traceparent);
		headers[nh++] = htrace;
	}
	if (!qc->has_content_type)
		headers[nh++] = "Content-Type: application/json";
	for (char **h = qc->header_list; h && *h && nh < (int) lengthof(headers) - 1; h++)
		headers[nh++] = *h;
	headers[nh] = NULL;

	memset(&spec, 0, sizeof(spec));
	spec.url = qc->url;
	spec.method = method_text[qc->method];
	spec.headers = headers;
	spec.body = t->payload;
	spec.body_len = strlen(t->payload);
	spec.timeout = t->timeout;
	spec.tls_verify = qc->tls_verify != 0;
	spec.ca_file = qc->ca_file;
	spec.max_output = qc->max_output;
	t->ep = t->queue->ep;
	t->http = http_start(d->http, &spec, http_done, t, err, sizeof(err));
	if (t->http == NULL)
	{
		tlog(LOG_ERROR, "could not start the request", "task=%lld queue=%s url=%s error=%s", t->id,
			 kvq(t->queue->name), kvq(qc->url), kvq(err));
		/* A failed attempt with backoff, not a release: see start_task. */
		set_fail(t, RETRY_AUTO, "could not start the request: %s", err);
		task_done(t, REPORT_FAIL);
		return;
	}
	t->http_ticket = aimd_sent(&t->ep->aimd, ev_time());
}

/* One line per endpoint: what the window is and what came back since the last. */
static void
status_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	Daemon *d = container_of(w, Daemon, status_timer);
	double now = ev_now(loop);

	for (Endpoint *e = d->endpoints; e; e = e->next)
	{
		long long answers = e->aimd.total_answers - e->logged_answers;
		long long throttled = e->aimd.total_throttled - e->logged_throttled;

		if (!e->used && e->aimd.inflight == 0)
			continue;
		log_window(e, aimd_tick(&e->aimd, now), now);
		tlog(LOG_INFO, "endpoint status",
			 "url=%s window=%.2f limit=%d in_flight=%d answers=%lld throttled=%lld cuts=%lld",
			 kvq(e->url), e->aimd.window, aimd_limit(&e->aimd), e->aimd.inflight, answers,
			 throttled, e->aimd.cuts);
		e->logged_answers = e->aimd.total_answers;
		e->logged_throttled = e->aimd.total_throttled;
	}
}

/* ------------------------------------------------------------------------
 * Leasing
 * ------------------------------------------------------------------------
 */
typedef struct LeaseCall
{
	Daemon *d;
	Queue *q;
	Endpoint *ep; /* http: the endpoint whose room was reserved */
	int asked;
	double sent; /* ev_time() when sent */
} LeaseCall;

static void
lease_result(PgConn *c, const PGresult *res, void *arg)
{
	LeaseCall *lc = arg;
	Daemon *d = lc->d;
	Queue *q = lc->q;
	int n;
	int c_id, c_attempt, c_payload, c_tenant, c_timeout, c_lease, c_trace;

	q->leasing = false;
	if (lc->ep)
		lc->ep->asked -= lc->asked;
	if (res != NULL)
		observe(&d->lease_rtt, ev_time() - lc->sent);
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
		Task *t = xcalloc(1, sizeof(Task));
		double task_timeout =
			PQgetisnull(res, i, c_timeout) ? 0 : atof(PQgetvalue(res, i, c_timeout));
		double queue_timeout = q->conf ? q->conf->timeout : 0;

		t->d = d;
		t->queue = q;
		t->id = atoll(PQgetvalue(res, i, c_id));
		t->attempt = atoi(PQgetvalue(res, i, c_attempt));
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
		(void) task_set_state(t, TASK_RUNNING);
		ev_init(&t->sql_timer, sql_timeout);
		if (q->conf == NULL || d->run_state != RUN_ACTIVE)
			task_done(t, REPORT_RELEASE); /* left the config, or stopping */
		else
			start_task(t);
	}
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

static void
lease_idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	Daemon *d = container_of(w, Daemon, lease_idle);
	int free_slots;

	ev_idle_stop(loop, w);
	if (d->run_state != RUN_ACTIVE || !pgc_ready(d->work))
		return;
	if (d->waiting > 4 * d->config->slots)
		return; /* outcomes pile up: the database is not taking them */
	free_slots = d->config->slots - d->running;
	for (Queue *q = d->queues; q && free_slots > 0; q = q->next)
	{
		int room;
		LeaseCall *lc;
		char max[16];
		char queues[512];
		const char *params[3];

		if (q->conf == NULL || q->leasing || !q->wanted)
			continue;
		room = q->conf->concurrency - q->running;
		if (room > free_slots)
			room = free_slots;
		if (room > d->config->lease_batch)
			room = d->config->lease_batch;
		if (q->ep != NULL)
		{
			/* The endpoint's window: what it takes decides what we lease. */
			int window_room = aimd_limit(&q->ep->aimd) - q->ep->aimd.inflight - q->ep->asked;

			if (room > window_room)
				room = window_room;
		}
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
		/* Counted as taken until the answer comes. */
		free_slots -= room;
	}
}

static void
lease_soon(Daemon *d)
{
	if (d->run_state == RUN_ACTIVE && !ev_is_active(&d->lease_idle))
		ev_idle_start(d->loop, &d->lease_idle);
}

static void
backlog_result(PgConn *c, const PGresult *res, void *arg)
{
	Daemon *d = arg;

	if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK)
		return; /* the next poll tries again; /metrics shows the last values */
	for (int i = 0; i < PQntuples(res); i++)
	{
		Queue *q = find_queue(d, PQgetvalue(res, i, 0));

		if (q == NULL)
			continue;
		for (int k = 0; k < 4; k++)
			q->backlog[k] = atoll(PQgetvalue(res, i, 1 + k));
		q->backlog_known = true;
	}
}

static void
poll_cb(struct ev_loop *loop, ev_timer *w, int revents)
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
}

/* ------------------------------------------------------------------------
 * Outcomes: flushed in batches, one call per kind
 * ------------------------------------------------------------------------
 */
/*
 * A batch on its way.  Its tasks stay in TASK_SENT, which nothing frees
 * but this batch's callback (a connection lost runs it with NULL before
 * anything else happens), so the pointers stay valid until then.
 */
typedef struct Batch
{
	Daemon *d;
	Report kind;
	int n;
	Task **tasks;
	double sent; /* ev_time() when sent */
} Batch;

/*
 * One statement per kind of report.  Arrays travel as JSON documents built
 * with jansson and unpacked in order by jsonb_array_elements ... WITH
 * ORDINALITY: no hand-quoted array literals but the ids and attempts.
 * The log lines go in the same statement (one transaction) as the
 * outcome, first, while the tasks still run in tq: a batch sent again
 * after a lost connection cannot log twice.  tq_fail's delays are seconds
 * or null per task (null: tq's own backoff).
 */
static const struct
{
	const char *call; /* the function, for logs */
	int nparams;      /* $1 .. $nparams, as in BatchParams */
	const char *sql;
} batch_calls[] = {
	[REPORT_COMPLETE] = {"tq_complete", 4,
						 "WITH l AS MATERIALIZED (SELECT tq_append_log($1::bigint[], $2::integer[],"
						 " ARRAY(SELECT e FROM jsonb_array_elements($3::jsonb)"
						 " WITH ORDINALITY a(e, o) ORDER BY o)))"
						 " SELECT tq_complete($1::bigint[], $2::integer[],"
						 " ARRAY(SELECT e FROM jsonb_array_elements($4::jsonb)"
						 " WITH ORDINALITY a(e, o) ORDER BY o))"
						 " FROM l"},
	[REPORT_FAIL] = {"tq_fail", 6,
					 "WITH l AS MATERIALIZED (SELECT tq_append_log($1::bigint[], $2::integer[],"
					 " ARRAY(SELECT e FROM jsonb_array_elements($3::jsonb)"
					 " WITH ORDINALITY a(e, o) ORDER BY o)))"
					 " SELECT tq_fail($1::bigint[], $2::integer[],"
					 " ARRAY(SELECT e FROM jsonb_array_elements_text($4::jsonb)"
					 " WITH ORDINALITY a(e, o) ORDER BY o),"
					 " ARRAY(SELECT e FROM jsonb_array_elements_text($5::jsonb)"
					 " WITH ORDINALITY a(e, o) ORDER BY o),"
					 " ARRAY(SELECT CASE WHEN jsonb_typeof(e) = 'number'"
					 " THEN make_interval(secs => e::text::float8) END"
					 " FROM jsonb_array_elements($6::jsonb)"
					 " WITH ORDINALITY a(e, o) ORDER BY o))"
					 " FROM l"},
	[REPORT_RELEASE] = {"tq_release", 3,
						"WITH l AS MATERIALIZED (SELECT tq_append_log($1::bigint[], $2::integer[],"
						" ARRAY(SELECT e FROM jsonb_array_elements($3::jsonb)"
						" WITH ORDINALITY a(e, o) ORDER BY o)))"
						" SELECT tq_release($1::bigint[], $2::integer[]) FROM l"},
	[REPORT_DROP] = {"", 0, NULL}, /* nothing is reported */
};

/*
 * A result over tq.max_payload_size fails the whole batch (54000): the
 * largest result of the batch is replaced by a note saying so, with its
 * head, and the batch goes again (as often as it takes).
 */
static void
shrink_largest_result(Daemon *d, Batch *b)
{
	Task *big = NULL;
	size_t big_len = 0;

	for (int i = 0; i < b->n; i++)
	{
		Task *t = b->tasks[i];
		char *dump;
		size_t len;

		if (t == NULL || t->result == NULL)
			continue;
		dump = json_dumps(t->result, JSON_COMPACT | JSON_ENCODE_ANY);
		len = dump ? strlen(dump) : 0;
		free(dump);
		if (big == NULL || len > big_len)
		{
			big = t;
			big_len = len;
		}
	}
	if (big == NULL)
		return;
	{
		json_t *note = json_object();
		char *dump = json_dumps(big->result, JSON_COMPACT | JSON_ENCODE_ANY);
		size_t head = dump ? strlen(dump) : 0;

		if (head > 1000)
			head = 1000;
		json_object_set_new(note, "tqd_error",
							json_string("the result was larger than tq.max_payload_size allows"));
		json_object_set_new(note, "bytes", json_integer((json_int_t) big_len));
		json_object_set_new(note, "head", json_stringn(dump ? dump : "", head));
		free(dump);
		json_decref(big->result);
		big->result = note;
		tlog(LOG_WARNING, "result too large: replaced by a note",
			 "task=%lld queue=%s attempt=%d bytes=%zu", big->id, kvq(big->queue->name),
			 big->attempt, big_len);
	}
}

/* Gives every task of the batch back to the next flush, or finishes it. */
static void
batch_result(PgConn *c, const PGresult *res, void *arg)
{
	Batch *b = arg;
	Daemon *d = b->d;
	const char *ok = NULL;
	size_t ok_len = 0;

	if (res != NULL)
		observe(&d->report_rtt, ev_time() - b->sent);

	if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
	{
		ok = PQgetvalue(res, 0, 0); /* {t,f,...}: one per task */
		ok_len = strlen(ok);
	}
	else if (res != NULL)
	{
		tlog(LOG_WARNING, "reporting outcomes failed; they are sent again",
			 "call=%s tasks=%d error=%s sqlstate=%s", batch_calls[b->kind].call, b->n,
			 kvq(pgc_error(res)), pgc_sqlstate(res));
		if (b->kind == REPORT_COMPLETE && strcmp(pgc_sqlstate(res), "54000") == 0)
			shrink_largest_result(d, b);
	}
	for (int i = 0; i < b->n; i++)
	{
		Task *t = b->tasks[i];

		if (ok == NULL)
		{
			/* Again at the next flush (unless send_batch already put it back). */
			if (t->state == TASK_SENT)
				(void) task_set_state(t, TASK_DONE);
			continue;
		}
		/* ok is "{t,f,t}": element i sits at 1 + 2 * i. */
		if (ok_len > (size_t) (1 + 2 * i) && ok[1 + 2 * i] == 'f')
			tlog(LOG_WARNING,
				 "outcome refused: the task's lease was lost (the task runs elsewhere or finished)",
				 "task=%lld queue=%s attempt=%d call=%s", t->id, kvq(t->queue->name), t->attempt,
				 batch_calls[b->kind].call);
		free_task(t);
	}
	free(b->tasks);
	free(b);
	if (ok != NULL)
		d->flush_retry = 0;
	else if (res != NULL)
	{
		/* The server refused the batch: not at once again, and less and less often. */
		d->flush_retry = d->flush_retry == 0 ? 0.1 : fmin(d->flush_retry * 2, 10.0);
		ev_timer_stop(d->loop, &d->flush_timer);
		ev_timer_set(&d->flush_timer, d->flush_retry, 0.);
		ev_timer_start(d->loop, &d->flush_timer);
	}
	else if (d->waiting > 0)
		flush_soon(d);
	lease_soon(d);
	maybe_finish_stop(d);
}

/*
 * The parameters of one batch's statement, named and in the order of its
 * $n; every array has one element per task, in the batch's order.  The
 * members a kind does not take stay NULL.
 */
typedef struct BatchParams
{
	char *ids;       /* $1, bigint[] literal: the tasks */
	char *attempts;  /* $2, integer[] literal: their attempts */
	json_t *logs;    /* $3: each task's log lines (an array of strings), or null */
	json_t *results; /* $4 of tq_complete: each task's result */
	json_t *errors;  /* $4 of tq_fail: each task's error */
	json_t *retries; /* $5 of tq_fail: each task's retry mode (auto, never, throttled) */
	json_t *delays;  /* $6 of tq_fail: seconds from Retry-After, or null */
	size_t len;      /* allocated bytes of ids and of attempts */
	size_t ids_used, attempts_used;
} BatchParams;

/* Empty arrays for n tasks of kind. */
static void
batch_params_init(BatchParams *bp, Report kind, int n)
{
	memset(bp, 0, sizeof(*bp));
	bp->len = (size_t) n * 22 + 3;
	bp->ids = xcalloc(1, bp->len);
	bp->attempts = xcalloc(1, bp->len);
	bp->ids[bp->ids_used++] = '{';
	bp->attempts[bp->attempts_used++] = '{';
	bp->logs = json_array(); /* any kind */
	if (kind == REPORT_COMPLETE)
		bp->results = json_array();
	else if (kind == REPORT_FAIL)
	{
		bp->errors = json_array();
		bp->retries = json_array();
		bp->delays = json_array();
	}
}

/* Appends the task's element to every array of its kind. */
static void
batch_params_add(BatchParams *bp, const Task *t, bool first)
{
	num_array(bp->ids, bp->len, &bp->ids_used, t->id, first);
	num_array(bp->attempts, bp->len, &bp->attempts_used, t->attempt, first);
	if (bp->results)
		json_array_append(bp->results, t->result ? t->result : json_null());
	if (bp->errors)
	{
		json_array_append_new(bp->errors, json_string(t->error ? t->error : "failed"));
		json_array_append_new(bp->retries, json_string(retry_mode_sql(t->retry)));
		json_array_append_new(bp->delays,
							  t->retry_after >= 0 ? json_real(t->retry_after) : json_null());
	}
	json_array_append(bp->logs, t->log ? t->log : json_null());
}

static void
batch_params_free(BatchParams *bp)
{
	free(bp->ids);
	free(bp->attempts);
	json_decref(bp->logs);
	json_decref(bp->results);
	json_decref(bp->errors);
	json_decref(bp->retries);
	json_decref(bp->delays);
}

/* A JSON parameter as text; NULL for an absent one. */
static char *
batch_json(const json_t *a)
{
	return a ? json_dumps(a, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
}

/* Sends one batch of the tasks in TASK_DONE with report kind. */
static void
send_batch(Daemon *d, Report kind)
{
	int n = 0, i = 0;
	Batch *b;
	BatchParams bp;
	char *logs, *results, *errors, *retries, *delays;
	const char *values[6];
	bool sent;

	for (Task *t = d->tasks; t; t = t->next)
		if (t->state == TASK_DONE && t->report == kind)
			n++;
	if (n == 0)
		return;
	b = xcalloc(1, sizeof(Batch));
	b->d = d;
	b->kind = kind;
	b->tasks = xcalloc((size_t) n, sizeof(Task *));
	batch_params_init(&bp, kind, n);
	for (Task *t = d->tasks; t; t = t->next)
	{
		if (t->state != TASK_DONE || t->report != kind)
			continue;
		b->tasks[i] = t;
		batch_params_add(&bp, t, i == 0);
		(void) task_set_state(t, TASK_SENT);
		i++;
	}
	bp.ids[bp.ids_used++] = '}';
	bp.attempts[bp.attempts_used++] = '}';
	b->n = n;
	b->sent = ev_time();
	logs = batch_json(bp.logs);
	results = batch_json(bp.results);
	errors = batch_json(bp.errors);
	retries = batch_json(bp.retries);
	delays = batch_json(bp.delays);
	values[0] = bp.ids;
	values[1] = bp.attempts;
	values[2] = logs;
	values[3] = kind == REPORT_COMPLETE ? results : errors;
	values[4] = retries;
	values[5] = delays;
	sent = batch_calls[kind].sql != NULL &&
		   pgc_send(d->report, batch_calls[kind].sql, batch_calls[kind].nparams, values,
					batch_result, b);
	if (!sent)
	{
		/* Not ready: everything waits for the next flush. */
		for (Task *t = d->tasks; t; t = t->next)
			if (t->state == TASK_SENT && t->report == kind)
				(void) task_set_state(t, TASK_DONE);
		free(b->tasks);
		free(b);
	}
	free(logs);
	free(results);
	free(errors);
	free(retries);
	free(delays);
	batch_params_free(&bp);
}

static void
flush_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	Daemon *d = container_of(w, Daemon, flush_timer);

	if (!pgc_ready(d->report))
		return; /* CONNECTED flushes */
	send_batch(d, REPORT_COMPLETE);
	send_batch(d, REPORT_FAIL);
	send_batch(d, REPORT_RELEASE);
}

static void
flush_soon(Daemon *d)
{
	if (!ev_is_active(&d->flush_timer))
	{
		ev_timer_set(&d->flush_timer, d->config->flush_interval, 0.);
		ev_timer_start(d->loop, &d->flush_timer);
	}
}

/* ------------------------------------------------------------------------
 * Heartbeats
 * ------------------------------------------------------------------------
 */
static double
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
} HbCall;

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
			Task *t;

			for (int k = 0; k < hc->n; k++)
				if (hc->ids[k] == id)
					attempt = hc->attempts[k];
			t = find_task(d, id);
			if (t == NULL || t->attempt != attempt)
				continue; /* gone, or a later attempt of the task */
			if (strcmp(reason, "cancelled") == 0)
			{
				tlog(LOG_INFO, "task cancelled: stopping it", "task=%lld queue=%s attempt=%d",
					 t->id, kvq(t->queue->name), t->attempt);
				stop_task(t, REPORT_RELEASE);
			}
			else
			{
				tlog(LOG_WARNING, "lease lost: stopping the task", "task=%lld queue=%s attempt=%d",
					 t->id, kvq(t->queue->name), t->attempt);
				stop_task(t, REPORT_DROP);
			}
		}
	}
	free(hc->ids);
	free(hc->attempts);
	free(hc);
}

static void
hb_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	Daemon *d = container_of(w, Daemon, hb_timer);
	int n = 0;
	size_t len, io = 0, ao = 0;
	char *ids, *atts;
	const char *params[3];
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
	hc = xcalloc(1, sizeof(HbCall));
	hc->d = d;
	hc->ids = xcalloc((size_t) n, sizeof(long long));
	hc->attempts = xcalloc((size_t) n, sizeof(int));
	ids[io++] = '{';
	atts[ao++] = '{';
	for (Task *t = d->tasks; t; t = t->next)
	{
		num_array(ids, len, &io, t->id, hc->n == 0);
		num_array(atts, len, &ao, t->attempt, hc->n == 0);
		hc->ids[hc->n] = t->id;
		hc->attempts[hc->n] = t->attempt;
		hc->n++;
	}
	ids[io] = '}';
	atts[ao] = '}';
	params[0] = d->worker;
	params[1] = ids;
	params[2] = atts;
	if (pgc_send(d->work, "SELECT id, reason FROM tq_heartbeat($1, $2::bigint[], $3::integer[])", 3,
				 params, heartbeat_result, hc))
		d->heartbeats++;
	else
	{
		free(hc->ids);
		free(hc->attempts);
		free(hc);
	}
	free(ids);
	free(atts);
}

/* ------------------------------------------------------------------------
 * Connections
 * ------------------------------------------------------------------------
 */
static void
listen_result(PgConn *c, const PGresult *res, void *arg)
{
	if (res != NULL && PQresultStatus(res) != PGRES_COMMAND_OK)
		tlog(LOG_ERROR, "LISTEN failed", "error=%s sqlstate=%s", kvq(pgc_error(res)),
			 pgc_sqlstate(res));
}

static void
on_notify(Daemon *d, const char *channel, const char *payload)
{
	if (strcmp(channel, "tq_ready") == 0)
	{
		Queue *q = find_queue(d, payload);

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
			Task *t = find_task(d, (long long) json_integer_value(id));

			if (t != NULL && t->attempt == (int) json_integer_value(att) &&
				t->state == TASK_RUNNING)
			{
				tlog(LOG_INFO, "task cancelled: stopping it", "task=%lld queue=%s attempt=%d",
					 t->id, kvq(t->queue->name), t->attempt);
				stop_task(t, REPORT_RELEASE);
			}
		}
		if (v)
			json_decref(v);
	}
}

static void
conn_event(PgConn *c, PgConnEvent ev, const char *a, const char *b, void *arg)
{
	Daemon *d = arg;

	switch (ev)
	{
		case PGC_CONNECTED:
			tlog(LOG_INFO, "connected", "conn=%s", pgc_name(c));
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
					flush_soon(d);
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
	}
}

/* ------------------------------------------------------------------------
 * Stopping, signals, reload
 * ------------------------------------------------------------------------
 */

/* Ends the loop once nothing is left to report. */
static void
maybe_finish_stop(Daemon *d)
{
	if (d->run_state == RUN_DRAINING && d->running == 0)
		begin_stopping(d, false);
	if (d->run_state == RUN_STOPPING && d->running == 0 && d->waiting == 0)
	{
		tlog(LOG_INFO, "stopped", "worker=%s", kvq(d->worker));
		d->run_state = RUN_DONE;
		ev_break(d->loop, EVBREAK_ALL);
	}
}

/*
 * Stops whatever still runs and hands it back.  fast: SIGKILL at once;
 * else exec's normal stop (SIGTERM, then SIGKILL after kill_grace).
 */
static void
begin_stopping(Daemon *d, bool fast)
{
	double deadline = d->config->drain_timeout > 5 ? d->config->drain_timeout : 5;

	if (d->run_state != RUN_STOPPING)
	{
		d->run_state = RUN_STOPPING;
		ev_idle_stop(d->loop, &d->lease_idle);
		ev_timer_stop(d->loop, &d->poll_timer);
		/* The last flush gets this long; then tq reclaims what is left. */
		ev_timer_stop(d->loop, &d->stop_timer);
		ev_timer_set(&d->stop_timer, deadline, 0.);
		ev_timer_start(d->loop, &d->stop_timer);
	}
	for (Task *t = d->tasks, *next; t; t = next)
	{
		next = t->next;
		if (t->state != TASK_RUNNING)
			continue;
		if (fast && t->run)
		{
			/* exec_free kills the group with SIGKILL. */
			ExecRun *r = t->run;

			t->run = NULL;
			exec_free(r);
			t->stopping = true;
			t->stop_report = REPORT_RELEASE;
			task_done(t, REPORT_RELEASE);
		}
		else
			stop_task(t, REPORT_RELEASE);
	}
	flush_soon(d);
	maybe_finish_stop(d);
}

static void
stop_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	Daemon *d = container_of(w, Daemon, stop_timer);

	if (d->run_state == RUN_DRAINING)
	{
		tlog(LOG_INFO, "drain timeout: handing back the tasks still running", "running=%d",
			 d->running);
		begin_stopping(d, false);
	}
	else if (d->run_state == RUN_STOPPING)
	{
		tlog(LOG_WARNING,
			 "could not report every outcome before stopping; tq will reclaim those tasks when "
			 "their leases expire",
			 "running=%d unreported=%d", d->running, d->waiting);
		d->run_state = RUN_DONE;
		ev_break(loop, EVBREAK_ALL);
	}
}

static void
sigterm_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	Daemon *d = container_of(w, Daemon, sigterm);

	if (d->run_state == RUN_ACTIVE)
	{
		tlog(LOG_INFO, "SIGTERM: draining", "running=%d drain_timeout=%g", d->running,
			 d->config->drain_timeout);
		d->run_state = RUN_DRAINING;
		ev_idle_stop(loop, &d->lease_idle);
		ev_timer_stop(loop, &d->poll_timer);
		ev_timer_set(&d->stop_timer, d->config->drain_timeout, 0.);
		ev_timer_start(loop, &d->stop_timer);
		maybe_finish_stop(d);
	}
	else
	{
		tlog(LOG_INFO, "SIGTERM again: stopping now", "running=%d", d->running);
		begin_stopping(d, true);
	}
}

static void
sigint_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	Daemon *d = container_of(w, Daemon, sigint);

	tlog(LOG_INFO, "SIGINT: stopping now", "running=%d", d->running);
	begin_stopping(d, true);
}

static void
sighup_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	Daemon *d = container_of(w, Daemon, sighup);
	char err[1024];
	Config *c = config_load(d->config_path, err, sizeof(err));
	Config *old;

	if (c == NULL)
	{
		tlog(LOG_ERROR, "reload failed: keeping the old configuration", "error=%s", kvq(err));
		return;
	}
	old = d->config;
	d->config = c;
	log_min_level = c->log_level;
	sync_queues(d);
	if (strcmp(old->conninfo, c->conninfo) != 0)
	{
		/* Applies from the next connection on. */
		pgc_set_conninfo(d->work, c->conninfo);
		pgc_set_conninfo(d->report, c->conninfo);
		pgc_set_conninfo(d->listen, c->conninfo);
		if (d->dash != NULL)
			dashboard_set_conninfo(d->dash, c->conninfo);
	}
	config_free(old);
	sync_dashboard(d);
	ev_timer_set(&d->poll_timer, c->poll_interval, c->poll_interval);
	if (d->run_state == RUN_ACTIVE)
		ev_timer_again(loop, &d->poll_timer);
	set_status_timer(d);
	tlog(LOG_INFO, "configuration reloaded", "file=%s queues=%d", kvq(d->config_path), c->nqueues);
	lease_soon(d);
}

/* ------------------------------------------------------------------------
 * /metrics (Prometheus text format 0.0.4), /healthz, /readyz
 * ------------------------------------------------------------------------
 */

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

static void
help(Buf *b, const char *name, const char *type, const char *text)
{
	buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

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

static void
render_metrics(Daemon *d, Buf *b)
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
			buf_printf(b, "tqd_http_window{url=\"%s\"} %.2f\n", label(e->url), e->aimd.window);
		help(b, "tqd_http_in_flight", "gauge", "Requests in flight to an http endpoint.");
		for (Endpoint *e = d->endpoints; e; e = e->next)
			buf_printf(b, "tqd_http_in_flight{url=\"%s\"} %d\n", label(e->url), e->aimd.inflight);
		help(b, "tqd_http_answers_total", "counter", "Answers from an http endpoint.");
		for (Endpoint *e = d->endpoints; e; e = e->next)
			buf_printf(b, "tqd_http_answers_total{url=\"%s\"} %lld\n", label(e->url),
					   e->aimd.total_answers);
		help(b, "tqd_http_throttled_total", "counter", "Throttled answers (429, 503).");
		for (Endpoint *e = d->endpoints; e; e = e->next)
			buf_printf(b, "tqd_http_throttled_total{url=\"%s\"} %lld\n", label(e->url),
					   e->aimd.total_throttled);
		help(b, "tqd_http_window_cuts_total", "counter", "Times the window was cut.");
		for (Endpoint *e = d->endpoints; e; e = e->next)
			buf_printf(b, "tqd_http_window_cuts_total{url=\"%s\"} %lld\n", label(e->url),
					   e->aimd.cuts);
	}
}

/* The dashboard's view of this tqd (/api/tqd), from memory. */
static void
render_tqd_json(Daemon *d, Buf *b)
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
		json_array_append_new(queues,
							  json_pack("{sssssisisIso}", "queue", q->name, "handler",
										handler_name(q->conf->handler), "running", q->running,
										"concurrency", q->conf->concurrency, "started",
										(json_int_t) q->started, "outcomes", outcomes));
	}
	json_object_set_new(o, "queues", queues);
	for (Endpoint *e = d->endpoints; e; e = e->next)
		if (e->used)
			json_array_append_new(
				endpoints,
				json_pack("{sssfsisisIsIsI}", "url", e->url, "window", e->aimd.window, "limit",
						  aimd_limit(&e->aimd), "in_flight", e->aimd.inflight, "answers",
						  (json_int_t) e->aimd.total_answers, "throttled",
						  (json_int_t) e->aimd.total_throttled, "cuts", (json_int_t) e->aimd.cuts));
	json_object_set_new(o, "endpoints", endpoints);
	text = json_dumps(o, JSON_COMPACT);
	buf_printf(b, "%s\n", text ? text : "{}");
	free(text);
	json_decref(o);
}

static int
serve(HttpdReq *req, const char *path, Buf *body, const char **type, void *arg)
{
	Daemon *d = arg;

	if (strcmp(path, "/metrics") == 0)
	{
		*type = "text/plain; version=0.0.4; charset=utf-8";
		render_metrics(d, body);
		return 200;
	}
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
	if (d->dash != NULL && d->config->dashboard)
	{
		int status;

		if (strcmp(path, "/api/tqd") == 0)
		{
			*type = "application/json";
			render_tqd_json(d, body);
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
static void
sync_dashboard(Daemon *d)
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

/* ------------------------------------------------------------------------
 * Set-up
 * ------------------------------------------------------------------------
 */
/* Endpoint status lines every status_interval, when there is an http queue. */
static void
set_status_timer(Daemon *d)
{
	ev_timer_stop(d->loop, &d->status_timer);
	if (d->config->status_interval > 0 && d->endpoints != NULL)
	{
		ev_timer_set(&d->status_timer, d->config->status_interval, d->config->status_interval);
		ev_timer_start(d->loop, &d->status_timer);
	}
}
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
	sync_queues(d);

	o.connect_timeout = config->connect_timeout;
	o.reconnect_min = config->reconnect_min;
	o.reconnect_max = config->reconnect_max;
	d->work = pgc_new(loop, "work", config->conninfo, &o, conn_event, d);
	d->report = pgc_new(loop, "report", config->conninfo, &o, conn_event, d);
	d->listen = pgc_new(loop, "listen", config->conninfo, &o, conn_event, d);

	ev_idle_init(&d->lease_idle, lease_idle_cb);
	ev_timer_init(&d->poll_timer, poll_cb, config->poll_interval, config->poll_interval);
	ev_init(&d->flush_timer, flush_cb);
	ev_init(&d->hb_timer, hb_cb);
	d->hb_timer.repeat = 10.0;
	ev_init(&d->stop_timer, stop_timer_cb);
	ev_init(&d->status_timer, status_cb);
	ev_signal_init(&d->sigterm, sigterm_cb, SIGTERM);
	ev_signal_init(&d->sigint, sigint_cb, SIGINT);
	ev_signal_init(&d->sighup, sighup_cb, SIGHUP);
	return d;
}

int
daemon_run(Daemon *d)
{
	signal(SIGPIPE, SIG_IGN);
	ev_signal_start(d->loop, &d->sigterm);
	ev_signal_start(d->loop, &d->sigint);
	ev_signal_start(d->loop, &d->sighup);
	ev_timer_start(d->loop, &d->poll_timer);
	set_status_timer(d);
	d->started_at = ev_time();
	if (d->config->metrics_listen[0] != '\0')
	{
		char err[512];

		d->httpd = httpd_start(d->loop, d->config->metrics_listen, serve, d, err, sizeof(err));
		if (d->httpd == NULL)
		{
			tlog(LOG_ERROR, "cannot serve /metrics", "error=%s", kvq(err));
			return 1;
		}
		tlog(LOG_INFO, "serving /metrics, /healthz and /readyz", "listen=%s port=%d",
			 kvq(d->config->metrics_listen), httpd_port(d->httpd));
		sync_dashboard(d);
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
		free_task(d->tasks);
	http_client_free(d->http);
	while (d->endpoints)
	{
		Endpoint *e = d->endpoints;

		d->endpoints = e->next;
		free(e->url);
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
