/*
 * task.c
 *	  A task in tqd: its state machine, starting and stopping its handler,
 *	  its outcome, and what the handlers share.
 *
 * Every change of Task.state goes through task_set_state, which refuses
 * a change task_transitions does not list (a bug: logged) and is the only
 * place that keeps the counters of tasks per state: Daemon.running and
 * Queue.running (RUNNING), Daemon.waiting (DONE and SENT).
 *
 *	NEW -> BUFFERED           lease.c made it from a row of tq_lease
 *	BUFFERED -> RUNNING       a slot was free: started (buffer_run), or
 *	                          handed back unstarted (task_unbuffer)
 *	RUNNING -> DONE           task_done: the handler ended or was stopped
 *	DONE -> SENT              report.c put its outcome in a batch
 *	SENT -> DONE              the batch did not land: again at the next flush
 *	BUFFERED, RUNNING, DONE, SENT -> FREED
 *	                          task_free: its batch was answered, its lease
 *	                          was lost, or the daemon is freed
 *
 * The outcome of an attempt is a report kind (Report) and, for a failure,
 * a retry mode (RetryMode); both become tq's words only in the outcome
 * batch (report.c) and its label only on /metrics (Outcomes).
 *
 * Ownership: a Task owns its strings and JSON values and the handler
 * object it runs (ExecRun, HttpRequest; a sql task only borrows its
 * pool's connection).  task_free frees all of that.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon.h"
#include "log.h"
#include "util.h"

static const char *const task_state_name[N_TASK_STATES] = {"new",  "buffered", "running",
														   "done", "sent",     "freed"};

/*
 * The legal changes of state, [from][to].  Any state but NEW may end in
 * FREED: a batch committed (SENT), a lost lease drops an outcome (DONE),
 * or the daemon is freed with tasks still running (RUNNING).  A task in
 * SENT goes back to DONE when its batch did not land.
 */
static const bool task_transitions[N_TASK_STATES][N_TASK_STATES] = {
	[TASK_NEW] = {[TASK_BUFFERED] = true},
	[TASK_BUFFERED] = {[TASK_RUNNING] = true, [TASK_FREED] = true},
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
		case TASK_BUFFERED:
			t->d->buffered += by;
			t->queue->buffered += by;
			break;
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
bool
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
const char *
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
RetryMode
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

/* The task with this id, of whichever attempt: the caller checks that. */
Task *
task_find(Daemon *d, long long id)
{
	for (Task *t = d->tasks; t; t = t->next)
		if (t->id == id)
			return t;
	return NULL;
}

/*
 * Unlinks and frees the task, and the handler it still runs (an exec run
 * is killed, a request aborted, a sql connection left to its pool).
 */
void
task_free(Task *t)
{
	Daemon *d = t->d;

	if (t->prev)
		t->prev->next = t->next;
	else
		d->tasks = t->next;
	if (t->next)
		t->next->prev = t->prev;
	if (t->state == TASK_BUFFERED)
		buffer_unlink(t);
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
void
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
		task_free(t);
	}
	else
		report_flush_soon(d);
	/* A slot is free: more of this queue's work may be waiting. */
	lease_soon(d);
	stop_maybe_finish(d);
}

/* A failed attempt: its error text (printf-style) and how tq_fail retries it. */
void
task_fail(Task *t, RetryMode retry, const char *fmt, ...)
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

/*
 * When the task must be done by, in UTC ("2026-11-23T02:00:00Z"), as the
 * handlers pass it on (TQ_DEADLINE, X-TQ-Deadline); "" without a timeout.
 */
void
task_deadline_text(const Task *t, char *buf, size_t len)
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
json_t *
result_from_text(const char *text, size_t len, bool try_json, const char *what)
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

/* Starts the task's handler. */
void
task_start(Task *t)
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
			exec_task_start(t);
			return;
		case HANDLER_SQL:
			sql_task_start(t);
			return;
		case HANDLER_HTTP:
			http_task_start(t);
			return;
	}
}

/*
 * A buffered task leaves its queue's buffer (task_free, task_unbuffer, and
 * buffer_run when it starts one).  The buffer is short (lease_ahead): a
 * walk from its head is cheap.
 */
void
buffer_unlink(Task *t)
{
	Queue *q = t->queue;
	Task *prev = NULL;

	for (Task *b = q->bhead; b; prev = b, b = b->bnext)
	{
		if (b != t)
			continue;
		if (prev)
			prev->bnext = t->bnext;
		else
			q->bhead = t->bnext;
		if (q->btail == t)
			q->btail = prev;
		t->bnext = NULL;
		return;
	}
}

/*
 * A buffered task that will not start here: dropped with its lease
 * (REPORT_DROP: the lease is lost), or handed back unrun (tq_release) with
 * the next batch, as a running task stopped for the same reason would be.
 */
void
task_unbuffer(Task *t, Report report)
{
	Daemon *d = t->d;

	if (t->state != TASK_BUFFERED)
		return;
	if (report == REPORT_DROP)
	{
		tlog(LOG_WARNING, "buffered task dropped: its lease was lost",
			 "task=%lld queue=%s attempt=%d", t->id, kvq(t->queue->name), t->attempt);
		task_free(t);
		stop_maybe_finish(d);
		return;
	}
	buffer_unlink(t);
	(void) task_set_state(t, TASK_RUNNING);
	task_done(t, REPORT_RELEASE);
}

/*
 * Asks a running task to stop; its outcome will be report.  exec: the
 * program gets SIGTERM (SIGKILL after kill_grace); sql: the query runs on
 * (its connection is closed); http: the request is aborted (its connection
 * closed); noop never runs long enough to be stopped.
 */
void
task_stop(Task *t, Report report)
{
	if (t->state == TASK_BUFFERED)
	{
		task_unbuffer(t, report);
		return;
	}
	if (t->state != TASK_RUNNING)
	{
		/* Finished but not reported yet: the lease is gone, so is the outcome. */
		if (report == REPORT_DROP && t->state == TASK_DONE)
		{
			tlog(LOG_WARNING, "outcome dropped: the task's lease was lost",
				 "task=%lld queue=%s attempt=%d", t->id, kvq(t->queue->name), t->attempt);
			Daemon *d = t->d;

			task_free(t);
			stop_maybe_finish(d);
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
