/*
 * handler_sql.c
 *	  The sql handler: a task's payload given to a database function
 *	  (SELECT function($1::jsonb)), on a connection of its queue's pool,
 *	  one task per connection at a time.
 *
 * Each queue with handler sql keeps a pool (Queue.pool) of SqlConn, made
 * as the tasks need them and never shrunk.  A task waits on its SqlConn
 * until the connection is ready, then sends two queries in one round trip:
 * its statement_timeout and the call.  A timer (the timeout plus 5 s) ends
 * a query the server does not end; the only way to interrupt one from here
 * is to close its connection (sql_drop), and the pool makes a new one when
 * it needs it.
 *
 * Invariant: a running sql task and its SqlConn point at each other
 * (Task.sql, SqlConn.task) until the result arrives or the connection is
 * dropped; a callback that finds the link broken does nothing.
 *
 * Ownership: the Queue owns its SqlConns, each its PgConn; daemon_free
 * frees them.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "daemon.h"
#include "log.h"
#include "util.h"

static void sql_event(PgConn *c, PgConnEvent ev, const char *a, const char *b, void *arg);

/*
 * Closes the connection a running sql task's query is on, detached from
 * the task first (closing it runs its pending callbacks, which must not
 * find the task).  The pool makes a new connection when it needs one.
 */
void
sql_drop(Task *t)
{
	SqlConn *s = t->sql;
	PgConn *c = s->conn;

	s->conn = NULL;
	s->task = NULL;
	t->sql = NULL;
	pgc_free(c);
}

/* The answer to the statement_timeout set before each call: nothing to do. */
static void
sql_ignore(PgConn *c, const PGresult *res, void *arg)
{
}

/*
 * The function's answer becomes the task's outcome: its value (JSON as
 * JSON, anything else as text) or its error, with no retry for an error
 * no retry can fix.
 */
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
		task_fail(t, RETRY_AUTO, "the database connection was lost while the function ran");
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

		task_fail(t, retry, "%s (SQLSTATE %s)", pgc_error(res), st);
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

/* The server did not end the query at its statement_timeout: end it here. */
void
sql_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
	Task *t = container_of(w, Task, sql_timer);

	if (t->sql == NULL)
		return;
	task_fail(t, RETRY_AUTO, "timed out after %g s", t->timeout);
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

/*
 * A pool connection is ready: its waiting task's call goes.  It failed:
 * its task fails the attempt (tq's backoff), and the connection retries
 * for the next task.
 */
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
				task_fail(t, RETRY_AUTO, "could not reach the database: %s", a);
				task_done(t, REPORT_FAIL);
			}
		}
	}
}

/*
 * Runs the task on an idle, ready connection of its queue's pool, else on
 * an idle one still connecting, else on a new one; the call goes when the
 * connection is ready.
 */
void
sql_task_start(Task *t)
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
