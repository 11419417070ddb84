/*
 * handler_http.c
 *	  The http handler: a task's payload sent as the body of a request to
 *	  its queue's URL (http.c), within the endpoint's adaptive window
 *	  (aimd.c); the answer's status decides the outcome, its body becomes
 *	  the result.
 *
 * Every request is counted in its endpoint's window from aimd_sent to
 * aimd_answer (an answer) or aimd_abandoned (no answer, or aborted).
 *
 * Ownership: the HttpRequest is the task's (Task.http) until its done
 * callback, which frees it; task_stop and task_free abort one still
 * running.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "daemon.h"
#include "log.h"
#include "util.h"

/* HttpMethod as curl and the task's log write it. */
static const char *const method_text[] = {"POST", "PUT", "PATCH"};

/* The answer (or its absence) becomes the task's outcome. */
static void
http_task_done(HttpRequest *req, const HttpResult *r, void *arg)
{
	Task *t = arg;
	Endpoint *e = t->ep;
	double now = ev_time();
	Outcome o = http_classify(r);
	char how[1200];

	http_describe(r, t->timeout, how, sizeof(how));
	if (r->end == HTTP_ANSWERED)
		endpoint_log_window(e, aimd_answer(&e->aimd, now, t->http_ticket, http_is_throttle(r)),
							now);
	else
		aimd_abandoned(&e->aimd);
	if (o == OUTCOME_SUCCESS)
	{
		t->result = r->body_len == 0
						? json_null()
						: result_from_text(r->body, r->body_len,
										   r->body_is_json && !r->body_truncated, "response body");
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

		task_fail(t, retry, "%s", how);
		if (r->retry_after >= 0 && o != OUTCOME_NEVER)
			t->retry_after = fmin(r->retry_after, 30 * 86400.0); /* tq_fail's limit */
		/* The task's log says what happened to each failed attempt. */
		snprintf(line, sizeof(line), "%s %s: %s (%.3f s)%s",
				 method_text[t->queue->conf ? t->queue->conf->method : 0], e->shown, how,
				 r->seconds, r->retry_after >= 0 ? "; Retry-After honoured" : "");
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

/*
 * Whether the task's tenant can go into X-TQ-Tenant (fits in len bytes
 * with the name, and http_header_value_ok).  When it cannot, the attempt
 * fails for good: trying again cannot change the tenant, and sending the
 * task without the header would let the endpoint take it for a task
 * without one.  tq refuses control characters at submit, so such a tenant
 * was written around its checks, or holds a line separator (U+2028...).
 * Logged, with the tenant quoted (kvq escapes what it holds).
 */
static bool
http_tenant_ok(Task *t, size_t len)
{
	char why[128];

	if (t->tenant == NULL)
		return true;
	if (strlen("X-TQ-Tenant: ") + strlen(t->tenant) >= len)
		snprintf(why, sizeof(why), "longer than %zu bytes", len - strlen("X-TQ-Tenant: ") - 1);
	else if (http_header_value_ok(t->tenant, why, sizeof(why)))
		return true;
	tlog(LOG_ERROR, "tenant not sent: it cannot be a header value",
		 "task=%lld queue=%s attempt=%d tenant=%s why=%s", t->id, kvq(t->queue->name), t->attempt,
		 kvq(t->tenant), kvq(why));
	task_fail(t, RETRY_NEVER, "the task's tenant cannot be sent in the X-TQ-Tenant header: %s",
			  why);
	task_done(t, REPORT_FAIL);
	return false;
}

/* Sends the task to its queue's URL. */
void
http_task_start(Task *t)
{
	const QueueConf *qc = t->queue->conf;
	Daemon *d = t->d;
	char hid[48], hatt[32], hqueue[128], htenant[1024], hdeadline[64];
	char htrace[sizeof("traceparent: ") + TRACEPARENT_MAX];
	const char *headers[8 + 64];
	int nh = 0;
	HttpSpec spec;
	char err[512];

	if (!http_tenant_ok(t, sizeof(htenant)))
		return;
	snprintf(hid, sizeof(hid), "X-TQ-Task-Id: %lld", t->id);
	snprintf(hatt, sizeof(hatt), "X-TQ-Attempt: %d", t->attempt);
	snprintf(hqueue, sizeof(hqueue), "X-TQ-Queue: %s", t->queue->name);
	snprintf(htenant, sizeof(htenant), "X-TQ-Tenant: %s", t->tenant ? t->tenant : "");
	{
		char deadline[40];

		task_deadline_text(t, deadline, sizeof(deadline));
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
	t->http = http_start(d->http, &spec, http_task_done, t, err, sizeof(err));
	if (t->http == NULL)
	{
		tlog(LOG_ERROR, "could not start the request", "task=%lld queue=%s url=%s error=%s", t->id,
			 kvq(t->queue->name), kvq(t->ep->shown), kvq(err));
		/* A failed attempt with backoff, not a release: see exec_task_start. */
		task_fail(t, RETRY_AUTO, "could not start the request: %s", err);
		task_done(t, REPORT_FAIL);
		return;
	}
	t->http_ticket = aimd_sent(&t->ep->aimd, ev_time());
}
