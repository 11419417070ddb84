/*
 * handler_exec.c
 *	  The exec handler: a task's program, run by exec.c with the payload
 *	  on stdin; stdout becomes the result, stderr lines the task's log,
 *	  the exit status the outcome (exec_classify).
 *
 * Ownership: the ExecRun is the task's (Task.run) until its done callback,
 * which frees it; task_stop asks it to stop, task_free frees one still
 * running (SIGKILL to its group).
 */
#include <stdio.h>
#include <string.h>

#include "daemon.h"
#include "log.h"

/* exec: the program ended. */
static void
exec_task_done(ExecRun *run, const ExecResult *r, void *arg)
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
		t->result = result_from_text(r->output, r->output_len, !r->output_truncated, "output");
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
			task_fail(t, retry, "%s: %s", how, last);
		else
			task_fail(t, retry, "%s", how);
		tlog(LOG_INFO, "task failed",
			 "task=%lld queue=%s attempt=%d outcome=%s error=%s seconds=%.3f", t->id,
			 kvq(t->queue->name), t->attempt, outcome_name(o), kvq(t->error), r->seconds);
	}
	t->run = NULL;
	exec_free(run);
	task_done(t, REPORT_FAIL);
}

/*
 * The task's variables for its program (exec_start copies them before it
 * returns).  TRACEPARENT, the OpenTelemetry name for a trace context in
 * the environment, is the task's, or unset when it has none: a program
 * must not join tqd's own trace (tqd's environment may have one) as if it
 * were the task's; TRACESTATE, which belongs to a TRACEPARENT, likewise.
 */
static char **
exec_task_env(Task *t)
{
	static char bufs[5][512];
	static char traceparent[sizeof("TRACEPARENT=") + TRACEPARENT_MAX];
	static char *env[8];
	char deadline[64];

	snprintf(bufs[0], sizeof(bufs[0]), "TQ_TASK_ID=%lld", t->id);
	snprintf(bufs[1], sizeof(bufs[1]), "TQ_ATTEMPT=%d", t->attempt);
	snprintf(bufs[2], sizeof(bufs[2]), "TQ_QUEUE=%s", t->queue->name);
	snprintf(bufs[3], sizeof(bufs[3]), "TQ_TENANT=%s", t->tenant ? t->tenant : "");
	task_deadline_text(t, deadline, sizeof(deadline));
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

/* Starts the task's program. */
void
exec_task_start(Task *t)
{
	const QueueConf *qc = t->queue->conf;
	ExecSpec spec;
	char err[512];

	memset(&spec, 0, sizeof(spec));
	spec.argv = qc->argv;
	spec.env = exec_task_env(t);
	spec.pass_env = qc->pass_env;
	spec.input = t->payload;
	spec.input_len = strlen(t->payload);
	spec.timeout = t->timeout;
	spec.kill_grace = qc->kill_grace;
	spec.max_output = qc->max_output;
	spec.max_log_bytes = qc->max_log_bytes;
	spec.max_log_lines = qc->max_log_lines;
	spec.memory_limit = qc->memory_limit;
	spec.cpu_limit = qc->cpu_limit;
	t->run = exec_start(t->d->loop, &spec, exec_task_done, t, err, sizeof(err));
	if (t->run == NULL)
	{
		/*
		 * fork or pipe failed.  A failed attempt, not a hand-back: a
		 * release would lease the task again at once, and a program
		 * that cannot start would spin (found by fuzzing: 226
		 * attempts in 2 s).  The queue's backoff and max_attempts
		 * decide, as for any failure.
		 */
		tlog(LOG_ERROR, "could not start the task's program", "task=%lld queue=%s error=%s", t->id,
			 kvq(t->queue->name), kvq(err));
		task_fail(t, RETRY_AUTO, "could not start the program: %s", err);
		task_done(t, REPORT_FAIL);
	}
}
