/*
 * http.h
 *	  Sending one task to an HTTP endpoint: libcurl's multi interface
 *	  driven by the libev loop (curl tells us which sockets to watch and
 *	  when its timeout is due; libev tells curl when they are ready), so
 *	  any number of requests run at once on tqd's one thread.  No thread
 *	  per request, no HTTP code of our own.
 *
 * Life of an HttpRequest:
 *
 *	http_start      builds the request (body, headers, TLS, timeout) and
 *	                hands it to the client's multi handle
 *	running         curl connects (reusing a kept-alive connection when it
 *	                has one), sends, reads the answer; the body is kept up to
 *	                max_output bytes, the rest read and dropped
 *	done            the done callback runs once, from the loop (never from
 *	                inside http_start), with the status, body, Retry-After
 *	                and curl's error text
 *
 * The done callback may call http_free on the request.  http_free on a
 * request still running aborts it (its callback never runs): used for
 * cancel, drain and shutdown.
 */
#ifndef TQD_HTTP_H
#define TQD_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <ev.h>

#include "exec.h" /* Outcome */

typedef struct HttpClient HttpClient;
typedef struct HttpRequest HttpRequest;

typedef struct HttpSpec
{
	const char *url;
	const char *method;         /* "POST", "PUT" or "PATCH" */
	const char *const *headers; /* "Name: value", NULL-terminated; NULL = none */
	const char *body;           /* sent as is; must live until the request ends */
	size_t body_len;
	double timeout;      /* s, the whole request; 0 = none */
	bool tls_verify;     /* check the certificate and the host name */
	const char *ca_file; /* NULL or "" = the system's CAs */
	size_t max_output;   /* response body bytes kept */
} HttpSpec;

typedef enum HttpEnd
{
	HTTP_ANSWERED, /* a status came back: status, body, retry_after */
	HTTP_TIMEOUT,  /* no (complete) answer within the timeout */
	HTTP_FAILED,   /* no answer: connection, TLS, DNS...; error says what */
} HttpEnd;

typedef struct HttpResult
{
	HttpEnd end;
	long status;     /* HTTP_ANSWERED */
	char reason[64]; /* the status line's reason phrase, if any ("Not Found") */
	char *body;      /* NUL-terminated, at most max_output bytes */
	size_t body_len;
	bool body_truncated;
	bool body_is_json;  /* Content-Type is application/json or ...+json */
	double retry_after; /* s from now, from Retry-After; < 0 = none or unreadable */
	char error[320];    /* HTTP_TIMEOUT, HTTP_FAILED: curl's words */
	double seconds;     /* from start to the end */
} HttpResult;

typedef void (*HttpDoneFn)(HttpRequest *req, const HttpResult *result, void *arg);

/* One client per loop: one multi handle, one connection cache. */
extern HttpClient *http_client_new(struct ev_loop *loop, char *err, size_t errlen)
	__attribute__((warn_unused_result));
/* Aborts the requests still running (no callbacks) and frees the client. */
extern void http_client_free(HttpClient *c);

/* Starts the request; NULL with a message in err when curl refuses it. */
extern HttpRequest *http_start(HttpClient *c, const HttpSpec *spec, HttpDoneFn done, void *arg,
							   char *err, size_t errlen) __attribute__((warn_unused_result));
/* Frees the request; aborts it first if it is still running. */
extern void http_free(HttpRequest *req);

/*
 * What an answer means for its task (pure, unit-tested): 2xx success; 429
 * and 503 throttled; 408 and other 5xx, timeouts and failed connections
 * retried; any other status (other 4xx, and 1xx/3xx: redirects are not
 * followed) never retried.
 */
extern Outcome http_classify(const HttpResult *r);

/* True for the answers that say "fewer, please": 429 and 503. */
extern bool http_is_throttle(const HttpResult *r);

/*
 * Retry-After (RFC 9110 10.2.3) as seconds from now: delay-seconds, or an
 * HTTP-date (read by curl_getdate) minus now, 0 when already past.  -1
 * when the value is neither.  now is the time the answer came.
 */
extern double http_parse_retry_after(const char *value, time_t now);

/*
 * A one-line description for last_error: "HTTP 404 Not Found: <head of the
 * body>", "timed out after 2 s", "could not connect: <curl's words>".
 */
extern void http_describe(const HttpResult *r, double timeout, char *buf, size_t len);

/* Longest traceparent tqd hands on: tq's own limit. */
#define TRACEPARENT_MAX 512

/*
 * Whether a task's W3C traceparent can be handed on as it is (pure,
 * unit-tested): 1 to TRACEPARENT_MAX printable ASCII characters without
 * blanks.  tq checked it at submit; this keeps a value written around
 * tq's check (an UPDATE of tq.task) from splitting a request header or
 * an environment entry.  tqd forwards it unchanged; it creates no spans.
 */
extern bool http_traceparent_ok(const char *value);

/*
 * Whether a value taken from a task (its tenant) can go into a request
 * header (pure, unit-tested): no byte below 0x20, no DEL, and none of the
 * UTF-8 sequences of U+0085, U+2028 and U+2029, which some parsers and
 * log readers take for a line break.  tq refuses control characters at
 * submit; this is the second check, for values written around it.  False
 * with what was found ("control character 0x0d at byte 5", "U+2028 at
 * byte 3") in why.
 */
extern bool http_header_value_ok(const char *value, char *why, size_t whylen);

/*
 * A URL as tqd prints it (logs, task logs, /metrics, the dashboard; pure,
 * unit-tested): the query and the fragment, where API keys and signatures
 * are put, become "?<redacted>" and "#<redacted>", and a user name and
 * password before the host "<redacted>@" (config_check.c refuses them,
 * but the refusal prints the URL too).  Scheme, host, port and path stay:
 * they say which endpoint it is.  Cut to fit buf.
 */
extern void http_url_redact(const char *url, char *buf, size_t len);
#define HTTP_REDACTED "<redacted>"

#endif
