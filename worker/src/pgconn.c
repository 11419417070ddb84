/*
 * pgconn.c
 *	  An asynchronous libpq connection in pipeline mode on libev (see
 *	  pgconn.h for the contract).
 *
 * States (one transition function, set_state):
 *
 *	IDLE        not connected, nothing scheduled (before pgc_connect)
 *	CONNECTING  PQconnectStartParams done, PQconnectPoll driven by the socket
 *	READY       connected, in pipeline mode; queries flow
 *	BACKOFF     the last attempt failed or the connection broke; the retry
 *	            timer runs
 *
 * Invariants: io watches PQsocket() of the current PGconn whenever a
 * PGconn exists and something is awaited (always read when READY; write
 * too while PQflush has output left); the pending queue holds one entry per
 * query sent, in order; every entry's callback runs exactly once.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pgconn.h"
#include "util.h"

typedef enum PgcState
{
	PGC_IDLE,       /* not connected, nothing scheduled */
	PGC_CONNECTING, /* PQconnectPoll in progress */
	PGC_READY,      /* connected, pipeline mode */
	PGC_BACKOFF,    /* waiting to reconnect */
} PgcState;

typedef struct Pending
{
	struct Pending *next;
	PgResultFn fn;
	void *arg;
	PGresult *res; /* the query's last result, until its Sync arrives */
	bool got_null; /* PQgetResult said the query's results are done */
} Pending;

struct PgConn
{
	struct ev_loop *loop;
	char *name;
	char *conninfo;
	PgConnOpts opts;
	PgConnEventFn event_fn;
	void *arg;

	PgcState state;
	PGconn *conn;
	ev_io io;       /* on PQsocket(conn) */
	int io_fd;      /* the fd io was set to, -1 when stopped */
	int io_events;  /* EV_READ | EV_WRITE as set */
	ev_timer timer; /* connect timeout, or backoff */
	int failures;   /* consecutive failed attempts */
	Pending *head, *tail;
	int in_callback; /* depth of our callbacks running */
	bool free_requested;
	bool break_due; /* a send failed: broken() from the timer, not the caller */
	char break_msg[512];
};

static void io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void start_attempt(PgConn *c);
static void broken(PgConn *c, const char *why);

double
backoff_delay(int n, double min, double max, double r)
{
	double d = min;

	for (int i = 1; i < n && d < max; i++)
		d *= 2;
	if (d > max)
		d = max;
	return d * (1.0 - 0.25 * r);
}

/* Watches the connection's socket for the given events (0: stop). */
static void
watch(PgConn *c, int events)
{
	int fd = c->conn ? PQsocket(c->conn) : -1;

	if (fd < 0)
		events = 0;
	if (events == c->io_events && fd == c->io_fd)
		return;
	if (c->io_fd >= 0)
		ev_io_stop(c->loop, &c->io);
	c->io_fd = -1;
	c->io_events = 0;
	if (events == 0)
		return;
	ev_io_set(&c->io, fd, events);
	ev_io_start(c->loop, &c->io);
	c->io_fd = fd;
	c->io_events = events;
}

/* Calls the owner's event callback, keeping frees out of it. */
static void
emit(PgConn *c, PgConnEvent ev, const char *a, const char *b)
{
	c->in_callback++;
	c->event_fn(c, ev, a, b, c->arg);
	c->in_callback--;
}

/* Runs and drops the head entry's callback. */
static void
deliver_head(PgConn *c, const PGresult *res)
{
	Pending *p = c->head;

	c->head = p->next;
	if (c->head == NULL)
		c->tail = NULL;
	c->in_callback++;
	if (p->fn)
		p->fn(c, res, p->arg);
	c->in_callback--;
	if (p->res)
		PQclear(p->res);
	free(p);
}

/* Every pending callback gets NULL: the connection is gone. */
static void
fail_pending(PgConn *c)
{
	while (c->head)
	{
		if (c->head->res)
		{
			PQclear(c->head->res);
			c->head->res = NULL;
		}
		deliver_head(c, NULL);
	}
}

static void
close_conn(PgConn *c)
{
	watch(c, 0);
	if (c->conn)
	{
		PQfinish(c->conn);
		c->conn = NULL;
	}
	ev_timer_stop(c->loop, &c->timer);
}

static void
really_free(PgConn *c)
{
	close_conn(c);
	fail_pending(c);
	free(c->name);
	free(c->conninfo);
	free(c);
}

/* Ends a callback section: performs a free requested meanwhile. */
static bool
freed_after(PgConn *c)
{
	if (c->in_callback == 0 && c->free_requested)
	{
		really_free(c);
		return true;
	}
	return false;
}

PgConn *
pgc_new(struct ev_loop *loop, const char *name, const char *conninfo, const PgConnOpts *opts,
		PgConnEventFn event_fn, void *arg)
{
	PgConn *c = calloc(1, sizeof(PgConn));

	if (c == NULL)
		return NULL;
	c->loop = loop;
	c->name = xstrdup(name);
	c->conninfo = xstrdup(conninfo);
	c->opts = *opts;
	c->event_fn = event_fn;
	c->arg = arg;
	c->state = PGC_IDLE;
	c->io_fd = -1;
	ev_init(&c->io, io_cb);
	ev_init(&c->timer, timer_cb);
	return c;
}

const char *
pgc_name(const PgConn *c)
{
	return c->name;
}

void
pgc_set_conninfo(PgConn *c, const char *conninfo)
{
	free(c->conninfo);
	c->conninfo = xstrdup(conninfo);
}

bool
pgc_ready(const PgConn *c)
{
	return c->state == PGC_READY && !c->free_requested;
}

void
pgc_connect(PgConn *c)
{
	if (c->state == PGC_IDLE)
		start_attempt(c);
}

/*
 * What the server (or libpq itself) says outside a query's result: a
 * NOTICE or WARNING, or the FATAL that precedes a terminated connection.
 * libpq's default writes it raw to stderr, which would break the logfmt
 * stream; here it becomes a log line with the connection's name and the
 * server's own severity, SQLSTATE and words.
 */
static void
on_notice(void *arg, const PGresult *res)
{
	PgConn *c = arg;
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
	char whole[1024];
	LogLevel level = LOG_INFO;
	size_t n;

	if (sev == NULL)
		sev = PQresultErrorField(res, PG_DIAG_SEVERITY);
	if (sev == NULL)
		sev = "NOTICE";
	if (strcmp(sev, "WARNING") == 0)
		level = LOG_WARNING;
	else if (strcmp(sev, "ERROR") == 0 || strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0)
		level = LOG_ERROR;
	else if (strcmp(sev, "DEBUG") == 0 || strcmp(sev, "LOG") == 0)
		level = LOG_DEBUG;
	if (primary == NULL)
	{
		/* libpq's own notices carry only the whole text, with a newline. */
		snprintf(whole, sizeof(whole), "%s", PQresultErrorMessage(res));
		n = strlen(whole);
		while (n > 0 && (whole[n - 1] == '\n' || whole[n - 1] == ' '))
			whole[--n] = '\0';
		primary = whole;
	}
	tlog(level, "server notice", "conn=%s severity=%s sqlstate=%s message=%s%s%s", kvq(c->name),
		 kvq(sev), kvq(state), kvq(primary), detail ? " detail=" : "", detail ? kvq(detail) : "");
}

/* Starts one connection attempt. */
static void
start_attempt(PgConn *c)
{
	/* The connection string's own application_name wins over ours. */
	const char *keys[] = {"dbname", "fallback_application_name", NULL};
	const char *vals[] = {c->conninfo, "tqd", NULL};

	close_conn(c);
	/* expand_dbname: conninfo may be a connection string or a URI. */
	c->conn = PQconnectStartParams(keys, vals, 1);
	if (c->conn == NULL)
	{
		broken(c, "out of memory");
		return;
	}
	if (PQstatus(c->conn) == CONNECTION_BAD)
	{
		broken(c, PQerrorMessage(c->conn));
		return;
	}
	PQsetNoticeReceiver(c->conn, on_notice, c);
	c->state = PGC_CONNECTING;
	ev_timer_set(&c->timer, c->opts.connect_timeout, 0.);
	ev_timer_start(c->loop, &c->timer);
	/* PQconnectPoll starts as if it had returned PGRES_POLLING_WRITING. */
	watch(c, EV_WRITE);
}

/* The connection or the attempt failed: tell the owner, schedule a retry. */
static void
broken(PgConn *c, const char *why)
{
	char msg[1024];
	char delay_s[32];
	double delay;
	size_t n;

	/* libpq's messages end with a newline (and may hold several lines). */
	snprintf(msg, sizeof(msg), "%s", why ? why : "");
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
		msg[--n] = '\0';
	close_conn(c);
	c->failures++;
	delay = backoff_delay(c->failures, c->opts.reconnect_min, c->opts.reconnect_max,
						  (double) random() / ((double) RAND_MAX + 1.0));
	c->state = PGC_BACKOFF;
	ev_timer_set(&c->timer, delay, 0.);
	ev_timer_start(c->loop, &c->timer);
	snprintf(delay_s, sizeof(delay_s), "%.3f", delay);
	fail_pending(c);
	emit(c, PGC_DISCONNECTED, msg, delay_s);
}

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	PgConn *c = container_of(w, PgConn, timer);

	if (c->break_due)
	{
		c->break_due = false;
		broken(c, c->break_msg);
	}
	else if (c->state == PGC_BACKOFF)
		start_attempt(c);
	else if (c->state == PGC_CONNECTING)
	{
		char msg[128];

		snprintf(msg, sizeof(msg), "timeout expired after %.0f s (connect_timeout)",
				 c->opts.connect_timeout);
		broken(c, msg);
	}
	freed_after(c);
}

/* Drives PQconnectPoll. */
static void
poll_connect(PgConn *c)
{
	switch (PQconnectPoll(c->conn))
	{
		case PGRES_POLLING_READING:
			watch(c, EV_READ);
			return;
		case PGRES_POLLING_WRITING:
			watch(c, EV_WRITE);
			return;
		case PGRES_POLLING_OK:
			break;
		case PGRES_POLLING_FAILED:
		default:
			broken(c, PQerrorMessage(c->conn));
			return;
	}
	ev_timer_stop(c->loop, &c->timer);
	if (PQsetnonblocking(c->conn, 1) != 0 || PQenterPipelineMode(c->conn) != 1)
	{
		broken(c, PQerrorMessage(c->conn));
		return;
	}
	c->state = PGC_READY;
	c->failures = 0;
	c->break_due = false;
	watch(c, EV_READ);
	emit(c, PGC_CONNECTED, NULL, NULL);
}

/*
 * Declares the connection broken from a zero timer, so that a caller of
 * pgc_send never sees callbacks run inside it.
 */
static void
break_soon(PgConn *c, const char *why)
{
	if (c->break_due)
		return;
	snprintf(c->break_msg, sizeof(c->break_msg), "%s", why);
	c->break_due = true;
	watch(c, 0);
	ev_timer_stop(c->loop, &c->timer);
	ev_timer_set(&c->timer, 0., 0.);
	ev_timer_start(c->loop, &c->timer);
}

/* Sends what libpq buffered; watches for write while some is left. */
static bool
flush_out(PgConn *c)
{
	int r = PQflush(c->conn);

	if (r < 0)
	{
		break_soon(c, PQerrorMessage(c->conn));
		return false;
	}
	watch(c, r == 1 ? (EV_READ | EV_WRITE) : EV_READ);
	return true;
}

/* Reads what arrived: results (in order) and notifications. */
static void
read_input(PgConn *c)
{
	PGnotify *n;

	if (!PQconsumeInput(c->conn))
	{
		broken(c, PQerrorMessage(c->conn));
		return;
	}
	while (c->state == PGC_READY && !c->free_requested && !PQisBusy(c->conn))
	{
		PGresult *res = PQgetResult(c->conn);

		if (res == NULL)
		{
			/* The head query's results are over (its Sync comes next). */
			if (c->head == NULL || c->head->got_null)
				break;
			c->head->got_null = true;
			continue;
		}
		switch (PQresultStatus(res))
		{
			case PGRES_PIPELINE_SYNC:
				PQclear(res);
				if (c->head != NULL)
				{
					PGresult *r = c->head->res;

					c->head->res = NULL;
					deliver_head(c, r);
					if (r)
						PQclear(r);
				}
				break;
			default:
				/* The query's result (or an error, or PGRES_PIPELINE_ABORTED). */
				if (c->head == NULL)
				{
					PQclear(res);
					break;
				}
				if (c->head->res)
					PQclear(c->head->res);
				c->head->res = res;
				c->head->got_null = false;
				break;
		}
	}
	if (c->state != PGC_READY)
		return;
	while ((n = PQnotifies(c->conn)) != NULL)
	{
		emit(c, PGC_NOTIFY, n->relname, n->extra);
		PQfreemem(n);
		if (c->state != PGC_READY || c->free_requested)
			return;
	}
	if (PQstatus(c->conn) == CONNECTION_BAD)
		broken(c, PQerrorMessage(c->conn));
}

static void
io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	PgConn *c = container_of(w, PgConn, io);

	c->in_callback++;
	if (c->state == PGC_CONNECTING)
		poll_connect(c);
	else if (c->state == PGC_READY)
	{
		if ((revents & EV_READ))
			read_input(c);
		if (c->state == PGC_READY && !c->free_requested && (revents & EV_WRITE))
			flush_out(c);
	}
	c->in_callback--;
	freed_after(c);
}

bool
pgc_send(PgConn *c, const char *sql, int nparams, const char *const *values, PgResultFn fn,
		 void *arg)
{
	Pending *p;

	if (!pgc_ready(c) || c->break_due)
		return false;
	p = calloc(1, sizeof(Pending));
	if (p == NULL)
		return false;
	if (!PQsendQueryParams(c->conn, sql, nparams, NULL, values, NULL, NULL, 0) ||
		!PQpipelineSync(c->conn))
	{
		free(p);
		break_soon(c, PQerrorMessage(c->conn));
		return false;
	}
	p->fn = fn;
	p->arg = arg;
	if (c->tail)
		c->tail->next = p;
	else
		c->head = p;
	c->tail = p;
	/* A failed flush breaks the connection from the timer: p gets NULL then. */
	(void) flush_out(c);
	return true;
}

const char *
pgc_sqlstate(const PGresult *res)
{
	const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	return s ? s : "";
}

const char *
pgc_error(const PGresult *res)
{
	const char *s = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

	if (s == NULL && res)
		s = PQresultErrorMessage(res);
	return s ? s : "connection lost";
}

void
pgc_free(PgConn *c)
{
	if (c == NULL)
		return;
	c->free_requested = true;
	if (c->in_callback == 0)
		really_free(c);
}
