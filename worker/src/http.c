/*
 * http.c
 *	  HTTP requests on the libev loop through libcurl's multi interface
 *	  (http.h has the contract).
 *
 * The integration is curl's "multi_socket" API, the one meant for event
 * loops:
 *
 *	curl -> us   CURLMOPT_SOCKETFUNCTION: watch this socket for in/out, or
 *	             stop watching it (an ev_io per socket, SockWatch, its
 *	             pointer kept by curl with curl_multi_assign);
 *	             CURLMOPT_TIMERFUNCTION: call me back in N ms (one ev_timer)
 *	us -> curl   curl_multi_socket_action(fd, in/out) when a socket is
 *	             ready, (CURL_SOCKET_TIMEOUT) when the timer fires; then
 *	             curl_multi_info_read for the transfers that ended
 *
 * curl's callbacks only touch watchers: nothing calls back into curl from
 * inside curl.  A request's done callback runs from finish_done(), after
 * curl_multi_socket_action has returned, so it may start and free
 * requests (curl allows adding and removing easy handles between calls,
 * and removing a handle also drops its pending "done" message).  The ev_io
 * callback reads the descriptor before calling curl, since curl may free
 * the watcher (CURL_POLL_REMOVE) during the call.
 *
 * Connections are kept alive and reused by the multi handle's connection
 * cache across requests to the same host; an easy handle lives for one
 * request.
 *
 * Ownership: the client owns its requests (a list, so that
 * http_client_free can abort them) and its socket watchers (a list too:
 * curl does not always say CURL_POLL_REMOVE before it is cleaned up).
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "http.h"
#include "tqd.h"
#include "util.h"

/*
 * Easy handles are reused (curl_easy_reset keeps their caches): making and
 * freeing one per request was most of tqd's CPU per pushed task.
 */
#define HTTP_POOL 256

typedef struct SockWatch
{
	struct SockWatch *next, *prev; /* HttpClient.socks */
	struct HttpClient *c;
	ev_io io;
} SockWatch;

struct HttpClient
{
	struct ev_loop *loop;
	CURLM *multi;
	ev_timer timer; /* curl's timeout */
	HttpRequest *reqs;
	SockWatch *socks;
	CURL *pool[HTTP_POOL]; /* easy handles kept for reuse (reset) */
	int npool;
};

struct HttpRequest
{
	struct HttpRequest *next, *prev; /* HttpClient.reqs */
	HttpClient *c;
	CURL *easy;
	struct curl_slist *headers;
	HttpDoneFn done;
	void *arg;
	bool added;    /* in the multi handle */
	bool finished; /* done was called */
	double started;
	double timeout;
	/* the answer, as it comes */
	char *body;
	size_t body_len;
	size_t max_output;
	bool truncated;
	bool json;
	char reason[64];
	char retry_after[128]; /* "" = no Retry-After */
	char errbuf[CURL_ERROR_SIZE];
};

/* ------------------------------------------------------------------------
 * Pure parts
 * ------------------------------------------------------------------------
 */
bool
http_is_throttle(const HttpResult *r)
{
	return r->end == HTTP_ANSWERED && (r->status == 429 || r->status == 503);
}

Outcome
http_classify(const HttpResult *r)
{
	if (r->end != HTTP_ANSWERED)
		return OUTCOME_RETRY; /* timeouts, connections, TLS, DNS */
	if (r->status >= 200 && r->status < 300)
		return OUTCOME_SUCCESS;
	if (http_is_throttle(r))
		return OUTCOME_THROTTLED;
	/* 408 Request Timeout is a timeout, and timeouts are retried. */
	if (r->status == 408 || (r->status >= 500 && r->status < 600))
		return OUTCOME_RETRY;
	/* Other 4xx: the request itself is wrong.  1xx/3xx: not followed. */
	return OUTCOME_NEVER;
}

double
http_parse_retry_after(const char *value, time_t now)
{
	const char *s = value;
	size_t len;
	char buf[128];
	time_t when;

	while (*s == ' ' || *s == '\t')
		s++;
	len = strlen(s);
	while (len > 0 &&
		   (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r' || s[len - 1] == '\n'))
		len--;
	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	if (strspn(buf, "0123456789") == len)
	{
		/* delay-seconds; an absurd one is capped, not refused (tq caps it again). */
		double v = len > 10 ? 1e10 : strtod(buf, NULL);

		return v;
	}
	when = curl_getdate(buf, NULL);
	if (when == (time_t) -1)
		return -1;
	return when > now ? difftime(when, now) : 0;
}

/* Copies at most n bytes of s as one line: control characters become blanks. */
static void
one_line(char *dst, size_t dstlen, const char *s, size_t n)
{
	size_t o = 0;

	while (n > 0 && isspace((unsigned char) *s))
		s++, n--;
	while (n > 0 && isspace((unsigned char) s[n - 1]))
		n--;
	for (size_t i = 0; i < n && o + 1 < dstlen; i++)
		dst[o++] = (unsigned char) s[i] < 0x20 || s[i] == 0x7f ? ' ' : s[i];
	dst[o] = '\0';
}

void
http_describe(const HttpResult *r, double timeout, char *buf, size_t len)
{
	char head[600];
	int n;

	switch (r->end)
	{
		case HTTP_ANSWERED:
			n = snprintf(buf, len, "HTTP %ld%s%s", r->status, r->reason[0] ? " " : "", r->reason);
			if (n < 0 || (size_t) n >= len)
				return;
			if (r->status >= 300 && r->status < 400)
			{
				n += snprintf(buf + n, len - n, " (redirects are not followed)");
				if ((size_t) n >= len)
					return;
			}
			if (r->body_len > 0)
			{
				one_line(head, sizeof(head) > 513 ? 513 : sizeof(head), r->body, r->body_len);
				if (head[0])
					snprintf(buf + n, len - n, ": %s%s", head,
							 r->body_len > 512 || r->body_truncated ? "..." : "");
			}
			return;
		case HTTP_TIMEOUT:
			if (timeout > 0)
				snprintf(buf, len, "timed out after %g s", timeout);
			else
				snprintf(buf, len, "timed out: %s", r->error);
			return;
		case HTTP_FAILED:
			snprintf(buf, len, "request failed: %s", r->error);
			return;
	}
}

bool
http_traceparent_ok(const char *value)
{
	size_t n = 0;

	if (value == NULL)
		return false;
	for (; value[n] != '\0'; n++)
		if ((unsigned char) value[n] <= 0x20 || (unsigned char) value[n] >= 0x7f)
			return false;
	return n > 0 && n <= TRACEPARENT_MAX;
}

/* ------------------------------------------------------------------------
 * curl on the loop
 * ------------------------------------------------------------------------
 */
static void
finish_done(HttpClient *c)
{
	CURLMsg *m;
	int left;

	while ((m = curl_multi_info_read(c->multi, &left)) != NULL)
	{
		HttpRequest *r = NULL;
		HttpResult res;
		CURLcode code;

		if (m->msg != CURLMSG_DONE)
			continue;
		code = m->data.result;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &r);
		if (r == NULL || r->finished)
			continue;
		memset(&res, 0, sizeof(res));
		res.retry_after = -1;
		res.seconds = ev_time() - r->started;
		if (code == CURLE_OK)
		{
			res.end = HTTP_ANSWERED;
			curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &res.status);
			snprintf(res.reason, sizeof(res.reason), "%s", r->reason);
			if (r->retry_after[0])
				res.retry_after = http_parse_retry_after(r->retry_after, time(NULL));
		}
		else
		{
			res.end = code == CURLE_OPERATION_TIMEDOUT ? HTTP_TIMEOUT : HTTP_FAILED;
			snprintf(res.error, sizeof(res.error), "%s (curl error %d)",
					 r->errbuf[0] ? r->errbuf : curl_easy_strerror(code), (int) code);
		}
		res.body = r->body ? r->body : "";
		res.body_len = r->body_len;
		res.body_truncated = r->truncated;
		res.body_is_json = r->json;
		r->finished = true;
		r->done(r, &res, r->arg);
	}
}

static void
io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	SockWatch *s = container_of(w, SockWatch, io);
	HttpClient *c = s->c;
	int fd = w->fd; /* s may be freed inside the call */
	int action =
		((revents & EV_READ) ? CURL_CSELECT_IN : 0) | ((revents & EV_WRITE) ? CURL_CSELECT_OUT : 0);
	int running;

	curl_multi_socket_action(c->multi, fd, action, &running);
	finish_done(c);
}

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	HttpClient *c = container_of(w, HttpClient, timer);
	int running;

	curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	finish_done(c);
}

static void
free_sock(HttpClient *c, SockWatch *s)
{
	ev_io_stop(c->loop, &s->io);
	if (s->prev)
		s->prev->next = s->next;
	else
		c->socks = s->next;
	if (s->next)
		s->next->prev = s->prev;
	free(s);
}

/* CURLMOPT_SOCKETFUNCTION: what to watch on socket fd. */
static int
curl_sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *sockp)
{
	HttpClient *c = userp;
	SockWatch *s = sockp;
	int events = 0;

	if (what == CURL_POLL_REMOVE)
	{
		if (s != NULL)
		{
			curl_multi_assign(c->multi, fd, NULL);
			free_sock(c, s);
		}
		return 0;
	}
	if (s == NULL)
	{
		s = calloc(1, sizeof(SockWatch));
		if (s == NULL)
			return -1; /* curl fails the transfer */
		s->c = c;
		ev_init(&s->io, io_cb);
		s->next = c->socks;
		if (c->socks)
			c->socks->prev = s;
		c->socks = s;
		curl_multi_assign(c->multi, fd, s);
	}
	if (what & CURL_POLL_IN)
		events |= EV_READ;
	if (what & CURL_POLL_OUT)
		events |= EV_WRITE;
	/* Re-armed with the descriptor every time (ev.pod: it may be a new one). */
	ev_io_stop(c->loop, &s->io);
	ev_io_set(&s->io, fd, events);
	ev_io_start(c->loop, &s->io);
	return 0;
}

/* CURLMOPT_TIMERFUNCTION: call curl back in ms milliseconds (-1: never). */
static int
curl_timer_cb(CURLM *multi, long ms, void *userp)
{
	HttpClient *c = userp;

	ev_timer_stop(c->loop, &c->timer);
	if (ms >= 0)
	{
		ev_timer_set(&c->timer, ms / 1000.0, 0.);
		ev_timer_start(c->loop, &c->timer);
	}
	return 0;
}

static size_t
write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	HttpRequest *r = userp;
	size_t n = size * nmemb;
	size_t keep = r->body_len < r->max_output ? r->max_output - r->body_len : 0;

	if (keep > n)
		keep = n;
	if (keep < n)
		r->truncated = true;
	if (keep > 0)
	{
		char *more = realloc(r->body, r->body_len + keep + 1);

		if (more == NULL)
			return 0; /* curl fails the transfer: CURLE_WRITE_ERROR */
		r->body = more;
		memcpy(r->body + r->body_len, data, keep);
		r->body_len += keep;
		r->body[r->body_len] = '\0';
	}
	/* The rest is read and dropped, like exec's output past max_output. */
	return n;
}

/* Is "name:" at the start of the header line h (n bytes)? */
static const char *
header_value(const char *h, size_t n, const char *name)
{
	size_t nl = strlen(name);

	if (n <= nl || strncasecmp(h, name, nl) != 0 || h[nl] != ':')
		return NULL;
	return h + nl + 1;
}

static size_t
header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	HttpRequest *r = userp;
	size_t n = size * nmemb;
	const char *v;

	if (n >= 5 && strncmp(data, "HTTP/", 5) == 0)
	{
		/* A new response (after 100 Continue, say): forget the last one's. */
		const char *sp = memchr(data, ' ', n);

		r->retry_after[0] = '\0';
		r->json = false;
		r->reason[0] = '\0';
		if (sp != NULL)
		{
			const char *sp2 = memchr(sp + 1, ' ', n - (size_t) (sp + 1 - data));

			if (sp2 != NULL)
				one_line(r->reason, sizeof(r->reason), sp2 + 1, n - (size_t) (sp2 + 1 - data));
		}
	}
	else if ((v = header_value(data, n, "Retry-After")) != NULL)
		one_line(r->retry_after, sizeof(r->retry_after), v, n - (size_t) (v - data));
	else if ((v = header_value(data, n, "Content-Type")) != NULL)
	{
		char ct[128];
		char *semi;
		size_t l;

		one_line(ct, sizeof(ct), v, n - (size_t) (v - data));
		if ((semi = strchr(ct, ';')) != NULL)
			*semi = '\0';
		l = strlen(ct);
		while (l > 0 && ct[l - 1] == ' ')
			ct[--l] = '\0';
		r->json = strcasecmp(ct, "application/json") == 0 ||
				  (l > 5 && strcasecmp(ct + l - 5, "+json") == 0);
	}
	return n;
}

/* ------------------------------------------------------------------------
 * Public functions
 * ------------------------------------------------------------------------
 */
HttpClient *
http_client_new(struct ev_loop *loop, char *err, size_t errlen)
{
	static bool global_done = false;
	HttpClient *c;

	if (!global_done)
	{
		CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);

		if (rc != CURLE_OK)
		{
			snprintf(err, errlen, "curl_global_init failed: %s", curl_easy_strerror(rc));
			return NULL;
		}
		global_done = true;
	}
	c = calloc(1, sizeof(HttpClient));
	if (c == NULL || (c->multi = curl_multi_init()) == NULL)
	{
		snprintf(err, errlen, "out of memory");
		free(c);
		return NULL;
	}
	c->loop = loop;
	ev_init(&c->timer, timer_cb);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, curl_sock_cb);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
	/*
	 * Keep every idle connection for reuse.  The default cache holds four
	 * per handle added at the moment, and handles come and go with each
	 * request: under load it closed one kept-alive connection in sixteen,
	 * each a new TCP handshake (a tenth of tqd's CPU per pushed task).
	 * Connections open at once are bounded by the requests in flight
	 * (slots), so the cache cannot outgrow them.
	 */
	curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, 10000L);
	return c;
}

void
http_client_free(HttpClient *c)
{
	if (c == NULL)
		return;
	while (c->reqs)
		http_free(c->reqs);
	curl_multi_cleanup(c->multi);
	while (c->npool > 0)
		curl_easy_cleanup(c->pool[--c->npool]);
	while (c->socks)
		free_sock(c, c->socks);
	ev_timer_stop(c->loop, &c->timer);
	free(c);
}

HttpRequest *
http_start(HttpClient *c, const HttpSpec *spec, HttpDoneFn done, void *arg, char *err,
		   size_t errlen)
{
	HttpRequest *r = calloc(1, sizeof(HttpRequest));
	CURLcode rc = CURLE_OK;
	CURLMcode mrc;
	CURL *e;

	if (r != NULL)
		r->easy = c->npool > 0 ? c->pool[--c->npool] : curl_easy_init();
	if (r == NULL || r->easy == NULL)
	{
		free(r);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	e = r->easy;
	r->c = c;
	r->done = done;
	r->arg = arg;
	r->max_output = spec->max_output;
	r->timeout = spec->timeout;
	r->started = ev_time();
	for (const char *const *h = spec->headers; h && *h; h++)
		r->headers = curl_slist_append(r->headers, *h);
	/* No "Expect: 100-continue" round trip before larger bodies. */
	r->headers = curl_slist_append(r->headers, "Expect:");
	if (r->headers == NULL)
	{
		snprintf(err, errlen, "out of memory");
		goto fail;
	}

#define SET(opt, val)                                                                              \
	do                                                                                             \
	{                                                                                              \
		if (rc == CURLE_OK)                                                                        \
			rc = curl_easy_setopt(e, opt, val);                                                    \
	} while (0)
	SET(CURLOPT_URL, spec->url);
	SET(CURLOPT_PRIVATE, r);
	SET(CURLOPT_ERRORBUFFER, r->errbuf);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_PROTOCOLS_STR, "http,https");
	SET(CURLOPT_FOLLOWLOCATION, 0L);
	SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) spec->body_len);
	SET(CURLOPT_POSTFIELDS, spec->body);
	if (strcmp(spec->method, "POST") != 0)
		SET(CURLOPT_CUSTOMREQUEST, spec->method);
	SET(CURLOPT_HTTPHEADER, r->headers);
	SET(CURLOPT_USERAGENT, "tqd/" TQD_VERSION);
	SET(CURLOPT_ACCEPT_ENCODING, "");
	SET(CURLOPT_WRITEFUNCTION, write_cb);
	SET(CURLOPT_WRITEDATA, r);
	SET(CURLOPT_HEADERFUNCTION, header_cb);
	SET(CURLOPT_HEADERDATA, r);
	SET(CURLOPT_SSL_VERIFYPEER, spec->tls_verify ? 1L : 0L);
	SET(CURLOPT_SSL_VERIFYHOST, spec->tls_verify ? 2L : 0L);
	if (spec->ca_file && spec->ca_file[0])
		SET(CURLOPT_CAINFO, spec->ca_file);
	if (spec->timeout > 0)
		SET(CURLOPT_TIMEOUT_MS, (long) ceil(spec->timeout * 1000));
#undef SET
	if (rc != CURLE_OK)
	{
		snprintf(err, errlen, "%s", curl_easy_strerror(rc));
		goto fail;
	}
	mrc = curl_multi_add_handle(c->multi, e);
	if (mrc != CURLM_OK)
	{
		snprintf(err, errlen, "%s", curl_multi_strerror(mrc));
		goto fail;
	}
	r->added = true;
	r->next = c->reqs;
	if (c->reqs)
		c->reqs->prev = r;
	c->reqs = r;
	return r;

fail:
	curl_easy_cleanup(e);
	curl_slist_free_all(r->headers);
	free(r);
	return NULL;
}

void
http_free(HttpRequest *r)
{
	HttpClient *c;

	if (r == NULL)
		return;
	c = r->c;
	if (r->added)
		curl_multi_remove_handle(c->multi, r->easy);
	if (c->npool < HTTP_POOL)
	{
		curl_easy_reset(r->easy);
		c->pool[c->npool++] = r->easy;
	}
	else
		curl_easy_cleanup(r->easy);
	curl_slist_free_all(r->headers);
	if (r->prev)
		r->prev->next = r->next;
	else
		c->reqs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	free(r->body);
	free(r);
}

bool
http_header_value_ok(const char *value, char *why, size_t whylen)
{
	static const struct
	{
		const char *bytes; /* UTF-8 */
		const char *name;
	} breaks[] = {{"\xc2\x85", "U+0085"}, {"\xe2\x80\xa8", "U+2028"}, {"\xe2\x80\xa9", "U+2029"}};

	for (size_t i = 0; value[i] != '\0'; i++)
	{
		unsigned char c = (unsigned char) value[i];

		if (c < 0x20 || c == 0x7f)
		{
			snprintf(why, whylen, "control character 0x%02x at byte %zu", c, i + 1);
			return false;
		}
		for (size_t b = 0; b < lengthof(breaks); b++)
		{
			if (strncmp(value + i, breaks[b].bytes, strlen(breaks[b].bytes)) == 0)
			{
				snprintf(why, whylen, "%s at byte %zu", breaks[b].name, i + 1);
				return false;
			}
		}
	}
	return true;
}

/*
 * Appends src[0..n) to buf at *used, as much as fits (buf stays
 * NUL-terminated).
 */
static void
append_part(char *buf, size_t len, size_t *used, const char *src, size_t n)
{
	if (*used + 1 >= len)
		return;
	if (n > len - 1 - *used)
		n = len - 1 - *used;
	memcpy(buf + *used, src, n);
	*used += n;
	buf[*used] = '\0';
}

void
http_url_redact(const char *url, char *buf, size_t len)
{
	const char *scheme_end = strstr(url, "://");
	const char *auth = scheme_end != NULL ? scheme_end + 3 : url;
	size_t auth_len = strcspn(auth, "/?#");
	const char *at = NULL;
	const char *rest, *query, *frag;
	size_t used = 0;

	if (len == 0)
		return;
	buf[0] = '\0';
	/* The last '@' of the authority ends the user info (RFC 3986 3.2.1). */
	for (size_t i = 0; i < auth_len; i++)
		if (auth[i] == '@')
			at = auth + i;
	append_part(buf, len, &used, url, (size_t) (auth - url));
	if (at != NULL)
	{
		append_part(buf, len, &used, HTTP_REDACTED "@", strlen(HTTP_REDACTED "@"));
		append_part(buf, len, &used, at + 1, (size_t) (auth + auth_len - at - 1));
	}
	else
		append_part(buf, len, &used, auth, auth_len);
	rest = auth + auth_len;
	query = strchr(rest, '?');
	frag = strchr(rest, '#');
	if (query != NULL && frag != NULL && frag < query)
		query = NULL; /* a '?' inside the fragment */
	/* The path, up to the query or the fragment. */
	append_part(buf, len, &used, rest,
				query != NULL  ? (size_t) (query - rest)
				: frag != NULL ? (size_t) (frag - rest)
							   : strlen(rest));
	if (query != NULL && query[1] != '\0' && query + 1 != frag)
		append_part(buf, len, &used, "?" HTTP_REDACTED, strlen("?" HTTP_REDACTED));
	if (frag != NULL && frag[1] != '\0')
		append_part(buf, len, &used, "#" HTTP_REDACTED, strlen("#" HTTP_REDACTED));
}
