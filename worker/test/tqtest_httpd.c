/*
 * tqtest_httpd.c
 *	  A small HTTP(S) server for the integration tests and the benchmark of
 *	  tqd's http handler, which POSTs each task's JSON payload to a URL.  It
 *	  answers in ways chosen per request (through the path and the query),
 *	  so a test can make tqd meet successes, errors, Retry-After headers,
 *	  slow and hanging servers, and a server over its capacity; it counts
 *	  what it answered and can log every request.
 *
 * Usage:
 *	tqtest_httpd [--port N] [--capacity C] [--delay-ms D]
 *				 [--capacity-retry-after S] [--tls-cert FILE --tls-key FILE]
 *				 [--log FILE]
 *
 *	--port N		listen on 127.0.0.1:N (only; never on other addresses).
 *					0, the default, lets the kernel pick.  Once listening it
 *					prints one line "listening port=PORT" to stdout.
 *	--capacity C	answer 429 "over capacity" at once to a request arriving
 *					while C requests are already in flight (0, the default:
 *					no limit).  /stats paths are never counted nor refused.
 *	--capacity-retry-after S
 *					add "Retry-After: S" to those 429 answers.
 *	--delay-ms D	service time of /ok (and of /flaky once it succeeds);
 *					0 by default.  The query parameter delay_ms overrides it.
 *	--tls-cert FILE, --tls-key FILE
 *					serve HTTPS with this PEM certificate and key.
 *	--log FILE		append one logfmt line per answered request (but /stats
 *					paths): t (unix time when its headers arrived), method,
 *					path, task and attempt (X-TQ-Task-Id, X-TQ-Attempt, "-"
 *					when missing), status, inflight (in flight at its arrival,
 *					itself included).
 *
 * Paths:
 *	/ok				200, a JSON object echoing the X-TQ-* headers, the method,
 *					Content-Type, X-Test, traceparent and the body, after the
 *					delay.
 *	/status?code=N[&retry_after=S][&retry_after_date=S][&body=TEXT]
 *					status N (100 < N < 600) at once, body TEXT (default
 *					"status N"); retry_after adds "Retry-After: S" verbatim,
 *					retry_after_date "Retry-After: <HTTP-date of now + S s>".
 *					(A 1xx is sent as an interim answer: the client goes on
 *					waiting for a final one, as for /hang.)
 *	/flaky?code=N&times=K[&...as /status][&delay_ms=D]
 *					as /status while X-TQ-Attempt (missing: 1) is <= K (times
 *					missing: 1), as /ok after; code=hang hangs as /hang.
 *	/hang[?hang_ms=N]
 *					200 "late" after N ms (default 60000).
 *	/stats			JSON counters: requests answered, in flight now, most in
 *					flight at once (requests refused with 429 included: they
 *					count until answered), and answers per status, since the
 *					start or the last /stats/reset (which answers {}).
 *	anything else	404 "no such path".
 *	A bad query parameter gets 400 with a message.
 *
 * SIGTERM or SIGINT stops the server and exits 0; sleeping requests notice it
 * within 50 ms.  Exit status 2 on bad arguments or when it cannot listen.
 *
 * libmicrohttpd runs one thread per connection, so a request simply sleeps
 * for its service time in the thread of its connection; nothing global is
 * locked, the counters are atomics.  Keep-alive connections are reused.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#define MAX_STATUS 600              /* status codes counted: 0..599 */
#define SLEEP_STEP_MS 50            /* sleeps look at the stop flag this often */
#define DEFAULT_HANG_MS 60000       /* /hang without hang_ms */
#define MAX_BODY (64 * 1024 * 1024) /* a larger request body gets 413 */
#define CONNECTION_LIMIT 2000
#define CONNECTION_TIMEOUT 120 /* s an idle connection is kept */
#define LOG_LINE_MAX 2048      /* longer log lines are cut */

/* The command line. */
static int opt_port = 0;
static long opt_capacity = 0;
static long opt_delay_ms = 0;
static const char *opt_capacity_retry_after = NULL;
static const char *opt_tls_cert = NULL;
static const char *opt_tls_key = NULL;
static const char *opt_log = NULL;

static int log_fd = -1;

/* Set once SIGTERM or SIGINT arrived: sleeping requests return early. */
static atomic_bool stopping;

/* Requests whose headers arrived and whose answer is not queued yet. */
static atomic_long inflight;

/* Counters of answered requests, /stats paths excluded. */
static atomic_long max_inflight;
static atomic_ulong requests;
static atomic_ulong status_count[MAX_STATUS];

/* One request, from its headers to its completion (MHD's req_cls). */
typedef struct Request
{
	struct timespec arrival;  /* CLOCK_REALTIME when the headers arrived */
	bool is_stats;            /* a /stats path: not counted, not logged */
	bool in_flight;           /* counted in inflight, not answered yet */
	long inflight_at_arrival; /* inflight just after it was counted */
	bool over_capacity;       /* to be refused with 429 */
	bool too_large;           /* the body went over MAX_BODY */
	char *body;               /* the body so far, NUL-terminated */
	size_t body_len;          /* bytes in body, NUL excluded */
	size_t body_cap;          /* bytes allocated for body */
} Request;

/* A growable string, for the JSON answers. */
typedef struct Buf
{
	char *data;
	size_t len;
	size_t cap;
} Buf;

/* What to answer. */
typedef struct Answer
{
	unsigned int status;
	const char *content_type;
	char *body; /* malloc'ed; handed to MHD */
	size_t len;
	const char *retry_after; /* a Retry-After value given verbatim, or NULL */
	bool retry_date;         /* add a Retry-After HTTP-date ... */
	long retry_date_secs;    /* ... this many seconds from now */
} Answer;

static void
usage(FILE *out)
{
	fprintf(out, "usage: tqtest_httpd [--port N] [--capacity C] [--delay-ms D]\n"
				 "                    [--capacity-retry-after S]\n"
				 "                    [--tls-cert FILE --tls-key FILE] [--log FILE]\n");
}

static void
die_usage(const char *fmt, const char *arg)
{
	fprintf(stderr, "tqtest_httpd: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	usage(stderr);
	exit(2);
}

/* A test server has no better answer to running out of memory. */
static void *
xrealloc(void *p, size_t size)
{
	void *q = realloc(p, size);

	if (q == NULL)
	{
		fprintf(stderr, "tqtest_httpd: out of memory\n");
		abort();
	}
	return q;
}

static char *
xstrdup(const char *s)
{
	size_t len = strlen(s);
	char *d = xrealloc(NULL, len + 1);

	memcpy(d, s, len + 1);
	return d;
}

/* Parses a whole decimal number in [min, max]; false if s is anything else. */
static bool
parse_long(const char *s, long min, long max, long *out)
{
	char *end;
	long v;

	if (s == NULL || *s == '\0')
		return false;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return false;
	*out = v;
	return true;
}

/*
 * Sleeps ms milliseconds in steps, returning early once the server is
 * stopping, so that MHD_stop_daemon (which joins every connection's thread)
 * does not wait for a hanging request.
 */
static void
sleep_ms(long ms)
{
	while (ms > 0 && !atomic_load(&stopping))
	{
		long step = ms < SLEEP_STEP_MS ? ms : SLEEP_STEP_MS;
		struct timespec ts = {step / 1000, (step % 1000) * 1000000L};

		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		ms -= step;
	}
}

static void
buf_reserve(Buf *b, size_t more)
{
	if (b->len + more + 1 > b->cap)
	{
		size_t cap = b->cap ? b->cap : 256;

		while (b->len + more + 1 > cap)
			cap *= 2;
		b->data = xrealloc(b->data, cap);
		b->cap = cap;
	}
}

static void
buf_add(Buf *b, const char *s, size_t len)
{
	buf_reserve(b, len);
	memcpy(b->data + b->len, s, len);
	b->len += len;
	b->data[b->len] = '\0';
}

static void
buf_adds(Buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

/* Appends s (len bytes, may hold NULs) as a JSON string, quotes included. */
static void
buf_add_json(Buf *b, const char *s, size_t len)
{
	/* Worst case: every byte becomes \u00XX. */
	buf_reserve(b, len * 6 + 2);
	b->data[b->len++] = '"';
	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c == '"' || c == '\\')
		{
			b->data[b->len++] = '\\';
			b->data[b->len++] = (char) c;
		}
		else if (c < 0x20 || c == 0x7f)
		{
			snprintf(b->data + b->len, 7, "\\u%04x", c);
			b->len += 6;
		}
		else
			b->data[b->len++] = (char) c; /* bytes >= 0x80 as they are */
	}
	b->data[b->len++] = '"';
	b->data[b->len] = '\0';
}

/* Appends ,"name":"value" (no comma if first) with value "" when NULL. */
static void
buf_add_field(Buf *b, const char *name, const char *value, bool first)
{
	if (!first)
		buf_adds(b, ",");
	buf_add_json(b, name, strlen(name));
	buf_adds(b, ":");
	if (value == NULL)
		value = "";
	buf_add_json(b, value, strlen(value));
}

/*
 * Copies a logfmt value into dst (size > 3): "-" if missing or empty, quoted
 * with \" and \\ escapes if it has a blank, '=', '"' or control character.
 * Cut at size.
 */
static void
logfmt_value(const char *v, char *dst, size_t size)
{
	bool quote = false;
	size_t o = 0;

	if (v == NULL || *v == '\0')
	{
		snprintf(dst, size, "-");
		return;
	}
	for (const char *p = v; *p; p++)
		if ((unsigned char) *p <= ' ' || *p == '=' || *p == '"' || *p == 0x7f)
			quote = true;
	if (!quote)
	{
		snprintf(dst, size, "%s", v);
		return;
	}
	dst[o++] = '"';
	for (const char *p = v; *p && o + 3 < size; p++)
	{
		if (*p == '"' || *p == '\\')
			dst[o++] = '\\';
		dst[o++] = ((unsigned char) *p < ' ' || *p == 0x7f) ? '?' : *p;
	}
	dst[o++] = '"';
	dst[o] = '\0';
}

/* Appends one line to the log with a single write(2): lines never mix. */
static void
log_request(const Request *req, struct MHD_Connection *conn, const char *url, const char *method,
			unsigned int status)
{
	char line[LOG_LINE_MAX];
	char path[512];
	char task[256];
	char attempt[64];
	char meth[64];
	int n;

	if (log_fd < 0 || req->is_stats)
		return;
	logfmt_value(method, meth, sizeof(meth));
	logfmt_value(url, path, sizeof(path));
	logfmt_value(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-TQ-Task-Id"), task,
				 sizeof(task));
	logfmt_value(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-TQ-Attempt"), attempt,
				 sizeof(attempt));
	n = snprintf(line, sizeof(line),
				 "t=%lld.%06ld method=%s path=%s task=%s attempt=%s status=%u inflight=%ld\n",
				 (long long) req->arrival.tv_sec, req->arrival.tv_nsec / 1000, meth, path, task,
				 attempt, status, req->inflight_at_arrival);
	if (n < 0)
		return;
	if ((size_t) n >= sizeof(line))
	{
		n = sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	if (write(log_fd, line, n) != n)
		fprintf(stderr, "tqtest_httpd: could not write to %s: %s\n", opt_log, strerror(errno));
}

/* Ends the request's time in flight (once). */
static void
leave_flight(Request *req)
{
	if (req->in_flight)
	{
		req->in_flight = false;
		atomic_fetch_sub(&inflight, 1);
	}
}

/* "Wed, 21 Oct 2015 07:28:00 GMT" for now + secs (IMF-fixdate, RFC 9110). */
static void
http_date(long secs, char *dst, size_t size)
{
	/* Fixed names rather than strftime's %a/%b, which follow the locale. */
	static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
										 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	time_t t = time(NULL) + secs;
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL)
	{
		snprintf(dst, size, "Thu, 01 Jan 1970 00:00:00 GMT");
		return;
	}
	snprintf(dst, size, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
			 months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/*
 * Queues the answer, then counts and logs it.  The body is handed to MHD
 * (freed by it), even on failure.
 */
static enum MHD_Result
send_answer(struct MHD_Connection *conn, Request *req, const char *url, const char *method,
			Answer *a)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(a->len, a->body, MHD_RESPMEM_MUST_FREE);
	if (resp == NULL)
	{
		free(a->body);
		fprintf(stderr, "tqtest_httpd: MHD_create_response_from_buffer failed\n");
		leave_flight(req);
		return MHD_NO;
	}
	if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, a->content_type) != MHD_YES)
		fprintf(stderr, "tqtest_httpd: could not add Content-Type\n");
	/* MHD refuses values with CR or LF: then the header is left out. */
	if (a->retry_after != NULL &&
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, a->retry_after) != MHD_YES)
		fprintf(stderr, "tqtest_httpd: could not add Retry-After: %s\n", a->retry_after);
	if (a->retry_date)
	{
		char date[64];

		http_date(a->retry_date_secs, date, sizeof(date));
		if (MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, date) != MHD_YES)
			fprintf(stderr, "tqtest_httpd: could not add Retry-After: %s\n", date);
	}
	ret = MHD_queue_response(conn, a->status, resp);
	MHD_destroy_response(resp);
	leave_flight(req);
	if (ret != MHD_YES)
	{
		fprintf(stderr, "tqtest_httpd: could not queue a %u answer to %s %s\n", a->status, method,
				url);
		return ret;
	}
	if (!req->is_stats)
	{
		atomic_fetch_add(&requests, 1);
		if (a->status < MAX_STATUS)
			atomic_fetch_add(&status_count[a->status], 1);
		log_request(req, conn, url, method, a->status);
	}
	return ret;
}

/* A text/plain answer with a copy of text. */
static enum MHD_Result
send_text(struct MHD_Connection *conn, Request *req, const char *url, const char *method,
		  unsigned int status, const char *text)
{
	Answer a = {.status = status, .content_type = "text/plain"};

	a.body = xstrdup(text);
	a.len = strlen(text);
	return send_answer(conn, req, url, method, &a);
}

static const char *
query(struct MHD_Connection *conn, const char *key)
{
	return MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, key);
}

static const char *
header(struct MHD_Connection *conn, const char *key)
{
	return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, key);
}

/* /ok: echoes the request as JSON after the delay. */
static enum MHD_Result
answer_ok(struct MHD_Connection *conn, Request *req, const char *url, const char *method)
{
	const char *delay_arg = query(conn, "delay_ms");
	long delay = opt_delay_ms;
	Buf b = {0};
	Answer a = {.status = MHD_HTTP_OK, .content_type = "application/json"};

	if (delay_arg != NULL && !parse_long(delay_arg, 0, LONG_MAX / 1000, &delay))
		return send_text(conn, req, url, method, MHD_HTTP_BAD_REQUEST, "bad delay_ms");
	sleep_ms(delay);

	buf_adds(&b, "{");
	buf_add_field(&b, "task", header(conn, "X-TQ-Task-Id"), true);
	buf_add_field(&b, "attempt", header(conn, "X-TQ-Attempt"), false);
	buf_add_field(&b, "queue", header(conn, "X-TQ-Queue"), false);
	buf_add_field(&b, "tenant", header(conn, "X-TQ-Tenant"), false);
	buf_add_field(&b, "deadline", header(conn, "X-TQ-Deadline"), false);
	buf_add_field(&b, "method", method, false);
	buf_add_field(&b, "content_type", header(conn, MHD_HTTP_HEADER_CONTENT_TYPE), false);
	buf_add_field(&b, "x_test", header(conn, "X-Test"), false);
	buf_add_field(&b, "traceparent", header(conn, "traceparent"), false);
	buf_adds(&b, ",\"body\":");
	buf_add_json(&b, req->body ? req->body : "", req->body_len);
	buf_adds(&b, "}");

	a.body = b.data;
	a.len = b.len;
	return send_answer(conn, req, url, method, &a);
}

/* /hang: 200 "late" after hang_ms (or until the server stops). */
static enum MHD_Result
answer_hang(struct MHD_Connection *conn, Request *req, const char *url, const char *method)
{
	const char *arg = query(conn, "hang_ms");
	long ms = DEFAULT_HANG_MS;

	if (arg != NULL && !parse_long(arg, 0, LONG_MAX / 1000, &ms))
		return send_text(conn, req, url, method, MHD_HTTP_BAD_REQUEST, "bad hang_ms");
	sleep_ms(ms);
	return send_text(conn, req, url, method, MHD_HTTP_OK, "late");
}

/* /status, and /flaky while failing: the status in code, at once. */
static enum MHD_Result
answer_status(struct MHD_Connection *conn, Request *req, const char *url, const char *method)
{
	const char *body = query(conn, "body");
	const char *date_arg = query(conn, "retry_after_date");
	long code;
	Answer a = {.content_type = "text/plain"};

	if (!parse_long(query(conn, "code"), 101, 599, &code))
		return send_text(conn, req, url, method, MHD_HTTP_BAD_REQUEST, "bad code");
	a.status = (unsigned int) code;
	a.retry_after = query(conn, "retry_after");
	if (date_arg != NULL)
	{
		/* Ten years either way is plenty and keeps time_t arithmetic sane. */
		if (!parse_long(date_arg, -315360000L, 315360000L, &a.retry_date_secs))
			return send_text(conn, req, url, method, MHD_HTTP_BAD_REQUEST, "bad retry_after_date");
		a.retry_date = true;
	}
	if (body != NULL)
	{
		a.body = xstrdup(body);
		a.len = strlen(body);
	}
	else
	{
		char text[32];

		snprintf(text, sizeof(text), "status %ld", code);
		a.body = xstrdup(text);
		a.len = strlen(text);
	}
	return send_answer(conn, req, url, method, &a);
}

/* /flaky: fails (as /status or /hang) up to attempt `times`, then as /ok. */
static enum MHD_Result
answer_flaky(struct MHD_Connection *conn, Request *req, const char *url, const char *method)
{
	const char *times_arg = query(conn, "times");
	const char *attempt_arg = header(conn, "X-TQ-Attempt");
	const char *code = query(conn, "code");
	long times = 1;
	long attempt = 1;

	if (times_arg != NULL && !parse_long(times_arg, 0, LONG_MAX, &times))
		return send_text(conn, req, url, method, MHD_HTTP_BAD_REQUEST, "bad times");
	/* A missing or unreadable attempt counts as the first. */
	if (attempt_arg != NULL && !parse_long(attempt_arg, LONG_MIN, LONG_MAX, &attempt))
		attempt = 1;
	if (attempt > times)
		return answer_ok(conn, req, url, method);
	if (code != NULL && strcmp(code, "hang") == 0)
		return answer_hang(conn, req, url, method);
	return answer_status(conn, req, url, method);
}

/* /stats: the counters as JSON. */
static enum MHD_Result
answer_stats(struct MHD_Connection *conn, Request *req, const char *url, const char *method)
{
	Buf b = {0};
	char num[160];
	bool first = true;
	Answer a = {.status = MHD_HTTP_OK, .content_type = "application/json"};

	snprintf(num, sizeof(num), "{\"requests\":%lu,\"inflight\":%ld,\"max_inflight\":%ld,",
			 atomic_load(&requests), atomic_load(&inflight), atomic_load(&max_inflight));
	buf_adds(&b, num);
	buf_adds(&b, "\"status\":{");
	for (int i = 0; i < MAX_STATUS; i++)
	{
		unsigned long n = atomic_load(&status_count[i]);

		if (n == 0)
			continue;
		snprintf(num, sizeof(num), "%s\"%d\":%lu", first ? "" : ",", i, n);
		buf_adds(&b, num);
		first = false;
	}
	buf_adds(&b, "}}");
	a.body = b.data;
	a.len = b.len;
	return send_answer(conn, req, url, method, &a);
}

static enum MHD_Result
answer_stats_reset(struct MHD_Connection *conn, Request *req, const char *url, const char *method)
{
	atomic_store(&requests, 0);
	atomic_store(&max_inflight, 0);
	for (int i = 0; i < MAX_STATUS; i++)
		atomic_store(&status_count[i], 0);
	return send_text(conn, req, url, method, MHD_HTTP_OK, "{}");
}

static bool
is_stats_path(const char *url)
{
	return strncmp(url, "/stats", 6) == 0 && (url[6] == '\0' || url[6] == '/');
}

/* The request's headers arrived: count it in flight, decide on capacity. */
static Request *
request_start(const char *url)
{
	Request *req = xrealloc(NULL, sizeof(Request));

	memset(req, 0, sizeof(*req));
	clock_gettime(CLOCK_REALTIME, &req->arrival);
	req->is_stats = is_stats_path(url);
	if (!req->is_stats)
	{
		long n = atomic_fetch_add(&inflight, 1) + 1;
		long max = atomic_load(&max_inflight);

		req->in_flight = true;
		req->inflight_at_arrival = n;
		while (n > max && !atomic_compare_exchange_weak(&max_inflight, &max, n))
			;
		req->over_capacity = opt_capacity > 0 && n > opt_capacity;
	}
	return req;
}

/* Keeps a chunk of the body, unless the request is refused anyway. */
static void
request_add_body(Request *req, const char *data, size_t len)
{
	if (req->over_capacity || req->too_large)
		return;
	if (req->body_len + len > MAX_BODY)
	{
		req->too_large = true;
		return;
	}
	if (req->body_len + len + 1 > req->body_cap)
	{
		size_t cap = req->body_cap ? req->body_cap : 1024;

		while (req->body_len + len + 1 > cap)
			cap *= 2;
		req->body = xrealloc(req->body, cap);
		req->body_cap = cap;
	}
	memcpy(req->body + req->body_len, data, len);
	req->body_len += len;
	req->body[req->body_len] = '\0';
}

/*
 * MHD's access handler: called once when the headers arrived, once per
 * chunk of the body, and once more with *upload_data_size == 0 at its end,
 * when the request is answered.  The body is always read in full before
 * answering (even a 429), so the connection stays usable for keep-alive.
 */
static enum MHD_Result
handle_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
			   const char *version, const char *upload_data, size_t *upload_data_size,
			   void **req_cls)
{
	Request *req = *req_cls;

	if (req == NULL)
	{
		*req_cls = request_start(url);
		return MHD_YES;
	}
	if (*upload_data_size > 0)
	{
		request_add_body(req, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}

	if (req->over_capacity)
	{
		Answer a = {.status = MHD_HTTP_TOO_MANY_REQUESTS, .content_type = "text/plain"};

		a.body = xstrdup("over capacity");
		a.len = strlen(a.body);
		a.retry_after = opt_capacity_retry_after;
		return send_answer(conn, req, url, method, &a);
	}
	if (req->too_large)
		return send_text(conn, req, url, method, 413, "body too large");
	if (strcmp(url, "/ok") == 0)
		return answer_ok(conn, req, url, method);
	if (strcmp(url, "/status") == 0)
		return answer_status(conn, req, url, method);
	if (strcmp(url, "/flaky") == 0)
		return answer_flaky(conn, req, url, method);
	if (strcmp(url, "/hang") == 0)
		return answer_hang(conn, req, url, method);
	if (strcmp(url, "/stats") == 0)
		return answer_stats(conn, req, url, method);
	if (strcmp(url, "/stats/reset") == 0)
		return answer_stats_reset(conn, req, url, method);
	return send_text(conn, req, url, method, MHD_HTTP_NOT_FOUND, "no such path");
}

/* MHD_OPTION_NOTIFY_COMPLETED: the request is over, answered or not. */
static void
request_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
				  enum MHD_RequestTerminationCode toe)
{
	Request *req = *req_cls;

	if (req == NULL)
		return;
	/* A client gone before its answer leaves the flight here. */
	leave_flight(req);
	free(req->body);
	free(req);
	*req_cls = NULL;
}

/* Reads a whole (PEM) file into a NUL-terminated string; exits 2 on error. */
static char *
read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *data = NULL;
	size_t len = 0;
	size_t cap = 0;
	size_t n;

	if (f == NULL)
	{
		fprintf(stderr, "tqtest_httpd: could not open %s: %s\n", path, strerror(errno));
		exit(2);
	}
	do
	{
		if (len + 4096 + 1 > cap)
		{
			cap = cap ? cap * 2 : 8192;
			data = xrealloc(data, cap);
		}
		n = fread(data + len, 1, cap - len - 1, f);
		len += n;
	} while (n > 0);
	if (ferror(f))
	{
		fprintf(stderr, "tqtest_httpd: could not read %s: %s\n", path, strerror(errno));
		exit(2);
	}
	fclose(f);
	data[len] = '\0';
	return data;
}

static void
parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
	{
		const char *opt = argv[i];
		const char *val;
		long v;

		if (strcmp(opt, "-h") == 0 || strcmp(opt, "--help") == 0)
		{
			usage(stdout);
			exit(0);
		}
		if (i + 1 >= argc)
			die_usage("%s: missing value or unknown option", opt);
		val = argv[++i];

		if (strcmp(opt, "--port") == 0)
		{
			if (!parse_long(val, 0, 65535, &v))
				die_usage("bad --port: %s", val);
			opt_port = (int) v;
		}
		else if (strcmp(opt, "--capacity") == 0)
		{
			if (!parse_long(val, 0, LONG_MAX, &opt_capacity))
				die_usage("bad --capacity: %s", val);
		}
		else if (strcmp(opt, "--delay-ms") == 0)
		{
			if (!parse_long(val, 0, LONG_MAX / 1000, &opt_delay_ms))
				die_usage("bad --delay-ms: %s", val);
		}
		else if (strcmp(opt, "--capacity-retry-after") == 0)
		{
			if (*val == '\0' || strpbrk(val, "\r\n") != NULL)
				die_usage("bad --capacity-retry-after: %s", val);
			opt_capacity_retry_after = val;
		}
		else if (strcmp(opt, "--tls-cert") == 0)
			opt_tls_cert = val;
		else if (strcmp(opt, "--tls-key") == 0)
			opt_tls_key = val;
		else if (strcmp(opt, "--log") == 0)
			opt_log = val;
		else
			die_usage("unknown option %s", opt);
	}
	if ((opt_tls_cert == NULL) != (opt_tls_key == NULL))
		die_usage("%s", "--tls-cert and --tls-key go together");
}

/*
 * Binds and listens on 127.0.0.1:port ourselves rather than through MHD, for
 * a clear error message and to learn the port the kernel picked.  Exits 2
 * on failure.
 */
static int
listen_socket(int port)
{
	struct sockaddr_in addr;
	socklen_t addrlen = sizeof(addr);
	int one = 1;
	int fd;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
	{
		fprintf(stderr, "tqtest_httpd: socket: %s\n", strerror(errno));
		exit(2);
	}
	/* Lets a test restart the server on the port it just used. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		fprintf(stderr, "tqtest_httpd: SO_REUSEADDR: %s\n", strerror(errno));
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons((uint16_t) port);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *) &addr, sizeof(addr)) < 0)
	{
		fprintf(stderr, "tqtest_httpd: could not bind 127.0.0.1:%d: %s\n", port, strerror(errno));
		exit(2);
	}
	if (listen(fd, SOMAXCONN) < 0)
	{
		fprintf(stderr, "tqtest_httpd: listen: %s\n", strerror(errno));
		exit(2);
	}
	if (getsockname(fd, (struct sockaddr *) &addr, &addrlen) < 0)
	{
		fprintf(stderr, "tqtest_httpd: getsockname: %s\n", strerror(errno));
		exit(2);
	}
	opt_port = ntohs(addr.sin_port);
	return fd;
}

/* Up to CONNECTION_LIMIT connections need that many descriptors and more. */
static void
raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max)
	{
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			fprintf(stderr, "tqtest_httpd: could not raise RLIMIT_NOFILE: %s\n", strerror(errno));
	}
}

int
main(int argc, char **argv)
{
	struct MHD_Daemon *daemon;
	unsigned int flags;
	struct MHD_OptionItem tls_opts[3] = {{MHD_OPTION_END}, {MHD_OPTION_END}, {MHD_OPTION_END}};
	char *cert = NULL;
	char *key = NULL;
	sigset_t sigs;
	int sig;
	int fd;

	parse_args(argc, argv);
	raise_fd_limit();

	if (opt_tls_cert != NULL)
	{
		cert = read_file(opt_tls_cert);
		key = read_file(opt_tls_key);
	}
	if (opt_log != NULL)
	{
		log_fd = open(opt_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (log_fd < 0)
		{
			fprintf(stderr, "tqtest_httpd: could not open %s: %s\n", opt_log, strerror(errno));
			exit(2);
		}
	}

	/*
	 * SIGTERM and SIGINT are blocked before MHD starts its threads, which
	 * inherit the mask, and taken by sigwait below: no handler, no async
	 * signal safety to care about.  A peer gone mid-answer must not kill us.
	 */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	if (pthread_sigmask(SIG_BLOCK, &sigs, NULL) != 0)
	{
		fprintf(stderr, "tqtest_httpd: pthread_sigmask failed\n");
		exit(2);
	}
	signal(SIGPIPE, SIG_IGN);

	fd = listen_socket(opt_port);

	/*
	 * One thread per connection, so handlers may sleep.  poll() rather than
	 * the default select(), which cannot watch a descriptor >= FD_SETSIZE
	 * (1024) and so would refuse connections well below the limit.
	 */
	flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
			MHD_USE_ERROR_LOG;
	if (cert != NULL)
	{
		flags |= MHD_USE_TLS;
		tls_opts[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, cert};
		tls_opts[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, key};
	}
	daemon = MHD_start_daemon(flags, 0, NULL, NULL, handle_request, NULL, MHD_OPTION_LISTEN_SOCKET,
							  (MHD_socket) fd, MHD_OPTION_CONNECTION_LIMIT,
							  (unsigned int) CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
							  (unsigned int) CONNECTION_TIMEOUT, MHD_OPTION_NOTIFY_COMPLETED,
							  request_completed, NULL, MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_END);
	if (daemon == NULL)
	{
		fprintf(stderr, "tqtest_httpd: could not start the HTTP%s server on 127.0.0.1:%d\n",
				cert != NULL ? "S" : "", opt_port);
		exit(2);
	}

	printf("listening port=%d\n", opt_port);
	fflush(stdout);

	do
	{
		if (sigwait(&sigs, &sig) != 0)
		{
			fprintf(stderr, "tqtest_httpd: sigwait failed\n");
			sig = SIGTERM;
		}
	} while (sig != SIGTERM && sig != SIGINT);

	/* Sleeping requests return within SLEEP_STEP_MS; MHD joins them. */
	atomic_store(&stopping, true);
	MHD_stop_daemon(daemon);
	if (log_fd >= 0)
		close(log_fd);
	free(cert);
	free(key);
	return 0;
}
