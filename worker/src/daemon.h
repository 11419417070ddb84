/*
 * daemon.h
 *	  What the files of tqd's daemon share, private to them (main.c sees
 *	  only tqd.h): the Daemon, its queues, endpoints and tasks, and the
 *	  functions one duty calls in another.
 *
 *	  daemon.c        life cycle (daemon_new, daemon_run, daemon_free) and
 *	                  connection events (LISTEN, NOTIFY, reconnects)
 *	  queue.c         queues and http endpoints, from the configuration;
 *	                  the endpoints' status lines
 *	  task.c          a task's state machine; starting, stopping and
 *	                  finishing it; what its handlers share
 *	  handler_exec.c  the exec handler: a program per task (exec.c)
 *	  handler_sql.c   the sql handler: a database function per task, on a
 *	                  pool of connections per queue
 *	  handler_http.c  the http handler: a request per task (http.c, aimd.c)
 *	  lease.c         tq_lease, sized to the free slots; the poll timer
 *	  report.c        outcomes, flushed in batches (tq_complete, tq_fail,
 *	                  tq_release)
 *	  heartbeat.c     tq_heartbeat for every lease held
 *	  signals.c       stopping (drain, fast), signals, reload
 *	  metrics.c       /metrics, /healthz, /readyz and /api/tqd
 *
 * Everything runs on the one loop, so nothing here is locked.  Watchers
 * are embedded in their owner (Daemon, Task) and recovered with
 * container_of.
 *
 * Ownership: the Daemon owns the Config, its queues, endpoints, tasks and
 * connections, and frees them in daemon_free.  A Task is in the Daemon's
 * list from its lease until task_free, the only function that frees one;
 * a Queue or an Endpoint lives as long as the Daemon (one that left the
 * configuration is kept, retired).
 */
#ifndef TQD_DAEMON_H
#define TQD_DAEMON_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>
#include <jansson.h>

#include "aimd.h"
#include "config.h"
#include "dashboard.h"
#include "exec.h"
#include "http.h"
#include "httpd.h"
#include "pgconn.h"
#include "tqd.h"

/*
 * A task's state in tqd.  Every change goes through task_set_state, which
 * refuses one that task_transitions does not list and keeps the counters
 * of tasks per state (Daemon.running, Queue.running, Daemon.waiting).
 */
typedef enum TaskState
{
	TASK_NEW,      /* just leased: made but counted nowhere yet (calloc's zero) */
	TASK_BUFFERED, /* leased ahead, waiting for a slot; counted in Daemon.buffered and
					* Queue.buffered, in its queue's buffer (Queue.bhead) */
	TASK_RUNNING,  /* the handler works; counted in Daemon.running and Queue.running */
	TASK_DONE,     /* outcome known, waiting for the next flush; counted in Daemon.waiting */
	TASK_SENT,     /* outcome in a batch on its way; counted in Daemon.waiting */
	TASK_FREED,    /* left tqd: counted nowhere, freed at once */
	N_TASK_STATES
} TaskState;

/* How tq_fail retries a failed attempt; tq's words only in the outcome batch. */
typedef enum RetryMode
{
	RETRY_AUTO,      /* 'auto': tq's backoff, the attempt counts (calloc's zero) */
	RETRY_NEVER,     /* 'never': dead at once */
	RETRY_THROTTLED, /* 'throttled': backoff without using an attempt */
} RetryMode;

/* What a finished attempt reports to tq (Task.report; report.c sends it). */
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

/* A latency histogram for /metrics (seconds). */
#define N_BUCKETS 13
typedef struct Histogram
{
	long long buckets[N_BUCKETS]; /* cumulative at render time, per bucket here */
	long long count;
	double sum;
} Histogram;

/*
 * An HTTP endpoint: the URL of one or more http queues (queues with the
 * same url share it) and its adaptive window.  Kept across reloads while
 * its URL stays configured, so a reload does not reset what was learnt.
 * tqd prints only shown, never url: the query may hold an API key.
 */
typedef struct Endpoint
{
	struct Endpoint *next;
	char *url;   /* as configured: what requests go to, and the endpoint's key */
	char *shown; /* url redacted (http_url_redact), " (2)" after it if another has that form */
	bool used;   /* a queue of the current config sends here */
	Aimd aimd;   /* the window, and the requests in flight */
	int asked;   /* tasks asked for by leases on their way */
	long long logged_answers, logged_throttled; /* totals at the last status line */
} Endpoint;

/* A connection of a sql queue's pool (handler_sql.c). */
typedef struct SqlConn
{
	struct SqlConn *next;
	Queue *queue;
	PgConn *conn;
	struct Task *task; /* the task it runs, or NULL when idle */
} SqlConn;

/* One leased attempt of a task, from its row of tq_lease to task_free. */
typedef struct Task
{
	struct Task *next, *prev; /* Daemon.tasks */
	struct Task *bnext;       /* TASK_BUFFERED: the next in its queue's buffer */
	struct Daemon *d;
	Queue *queue;
	long long id;
	int attempt;
	long long lease_token; /* tq_lease's lease_token; 0: none (tq before 0.7.0) */
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

/* A row of tq_shared_usage: a table in tq's shared memory that callers fill. */
#define N_SHARED 8
typedef struct SharedUsage
{
	char name[32];         /* tenants, rate_buckets, wait_slots */
	long long used;        /* entries in use */
	long long capacity;    /* entries at most */
	long long full_events; /* times a caller found the table full (server start) */
	long long overflow;    /* tenants: live tasks in overflow entries; -1: none */
} SharedUsage;

/* A queue this tqd serves, or served before a reload (queue.c). */
struct Queue
{
	struct Queue *next;
	char *name;
	const QueueConf *conf;      /* in Daemon.config; NULL once the queue left the config */
	int running;                /* tasks in TASK_RUNNING (kept by task_set_state) */
	int buffered;               /* tasks in TASK_BUFFERED (likewise) */
	struct Task *bhead, *btail; /* the buffer: leased ahead, started in this order */
	double rate;                /* tasks started per second, smoothed (lease ahead's sizing) */
	double rate_t;              /* ev_now() of the rate's last update */
	long long rate_n;           /* started at that time */
	double rtt;                 /* s: tq_lease's round trip, smoothed; 0: none yet */
	bool leasing;               /* a tq_lease call is on its way */
	bool wanted;                /* there is probably work: lease when there is room */
	SqlConn *pool;              /* sql handler: its connections */
	Endpoint *ep;               /* http handler: its endpoint */
	/* for /metrics */
	long long started;         /* tasks leased and started */
	long long outcomes[N_OUT]; /* what became of them */
	bool backlog_known;        /* tq_queue_stats read at least once */
	long long backlog[4];      /* scheduled, ready, paused, running (all workers) */
};

/* Where the daemon is in its life (signals.c has the transitions). */
typedef enum RunState
{
	RUN_ACTIVE,   /* leasing */
	RUN_DRAINING, /* SIGTERM: waiting for running tasks */
	RUN_STOPPING, /* handing back and flushing the last outcomes */
	RUN_DONE,     /* the loop ends */
} RunState;

/* The daemon: one per process (daemon.c). */
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
	int running;        /* tasks in TASK_RUNNING (kept by task_set_state) */
	int buffered;       /* tasks in TASK_BUFFERED (likewise) */
	int waiting;        /* tasks in TASK_DONE or TASK_SENT (likewise) */
	int heartbeats;     /* heartbeat calls on their way */
	bool hb_again;      /* heartbeat_soon while one was on its way */
	double flush_retry; /* s: delay before resending refused batches; 0 after a success */

	ev_idle lease_idle;    /* lease soon, once per loop turn */
	ev_timer poll_timer;   /* poll_interval */
	ev_timer flush_timer;  /* flush_interval */
	ev_timer hb_timer;     /* heartbeats */
	ev_timer stop_timer;   /* drain_timeout, then the final flush's deadline */
	ev_timer status_timer; /* status_interval: endpoint status lines */
	/* /metrics and /healthz */
	Httpd *httpd;                 /* NULL when metrics_listen is empty */
	Dashboard *dash;              /* NULL until dashboard = on */
	Histogram lease_rtt;          /* tq_lease round trips */
	Histogram report_rtt;         /* outcome batch round trips */
	long long disconnects[4];     /* work, report, listen, sql handler connections */
	double started_at;            /* when tqd started (unix time) */
	SharedUsage shared[N_SHARED]; /* tq_shared_usage, read every poll_interval (lease.c) */
	int nshared;                  /* rows of it read (0: none yet) */
	bool shared_absent;           /* no tq_shared_usage (extension before 0.7.0): not asked
								   * again until the work connection reconnects */
	ev_signal sigterm, sigint, sighup;
};

/* daemon.c */

/* Appends v to a PostgreSQL array literal of numbers ("{1,2") being built. */
extern void array_literal_append(char *buf, size_t len, size_t *o, long long v, bool first);
extern void token_literal_append(char *buf, size_t len, size_t *o, long long token, bool first);

/* queue.c */

extern Queue *queue_find(Daemon *d, const char *name);
/* Points the queues at the current config's sections, and their endpoints. */
extern void queues_sync(Daemon *d);
/* Logs what an endpoint's window did (AIMD_CUT, AIMD_GREW). */
extern void endpoint_log_window(Endpoint *e, AimdEvent ev, double now);
extern void endpoint_status_cb(struct ev_loop *loop, ev_timer *w, int revents);
/* (Re)starts the status lines' timer from the current config. */
extern void endpoint_status_timer_set(Daemon *d);

/* task.c */

/* The only change of Task.state; false (logged) for an illegal one. */
extern bool task_set_state(Task *t, TaskState to);
extern const char *retry_mode_sql(RetryMode m);
extern RetryMode retry_mode_of(Outcome o);
extern Task *task_find(Daemon *d, long long id);
extern void task_start(Task *t);
extern void task_stop(Task *t, Report report);
/* Takes a buffered task out of its queue's buffer (its state is the caller's). */
extern void buffer_unlink(Task *t);
/* A buffered task, never started, handed back (tq_release) or dropped. */
extern void task_unbuffer(Task *t, Report report);
/* The handler ended (or was stopped): RUNNING -> DONE, or freed for REPORT_DROP. */
extern void task_done(Task *t, Report report);
/* Sets a failed attempt's error text and retry mode. */
extern void task_fail(Task *t, RetryMode retry, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
extern void task_free(Task *t);
extern void task_deadline_text(const Task *t, char *buf, size_t len);
extern json_t *result_from_text(const char *text, size_t len, bool try_json, const char *what);

/* handler_exec.c, handler_sql.c, handler_http.c: task_start calls one */

extern void exec_task_start(Task *t);
extern void sql_task_start(Task *t);
/* Closes the connection of a running sql task's query (task_stop). */
extern void sql_drop(Task *t);
/* A sql task's timer (Task.sql_timer). */
extern void sql_timeout(struct ev_loop *loop, ev_timer *w, int revents);
extern void http_task_start(Task *t);

/* lease.c */

/* Leases once this loop turn, if tqd is active. */
extern void lease_soon(Daemon *d);
/* Starts buffered tasks while slots (and http windows) have room. */
extern void buffer_run(Daemon *d);
/* Hands back every buffered task (of q, or of all queues when q is NULL). */
extern void buffer_hand_back(Daemon *d, Queue *q);
extern void lease_idle_cb(struct ev_loop *loop, ev_idle *w, int revents);
extern void lease_poll_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* report.c */

/* Flushes after flush_interval, unless a flush is already due. */
extern void report_flush_soon(Daemon *d);
extern void report_flush_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* heartbeat.c */

/* The heartbeats' interval: heartbeat_interval, or a third of the shortest lease. */
extern double heartbeat_every(Daemon *d);
extern void heartbeat_cb(struct ev_loop *loop, ev_timer *w, int revents);
/* Brings the next heartbeat forward, to confirm a tq_cancel notification. */
extern void heartbeat_soon(Daemon *d);

/* signals.c */

/* Moves a drain or a stop on once nothing runs or waits; ends the loop. */
extern void stop_maybe_finish(Daemon *d);
extern void stop_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
extern void signal_term_cb(struct ev_loop *loop, ev_signal *w, int revents);
extern void signal_int_cb(struct ev_loop *loop, ev_signal *w, int revents);
extern void signal_hup_cb(struct ev_loop *loop, ev_signal *w, int revents);

/* metrics.c */

extern void histogram_observe(Histogram *h, double secs);
/* The HttpdHandler of metrics_listen. */
extern int metrics_serve(HttpdReq *req, const char *path, Buf *body, const char **type, void *arg);
/* Starts the dashboard's connection when dashboard = on and metrics_listen runs. */
extern void metrics_dashboard_sync(Daemon *d);

#endif
