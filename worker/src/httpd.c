/*
 * httpd.c
 *	  libmicrohttpd on the libev loop (httpd.h).
 *
 * libmicrohttpd is started without a thread of its own, in epoll mode: it
 * then has one descriptor that becomes readable whenever it has work (a new
 * connection, a request, room to write an answer).  tqd watches that
 * descriptor with an ev_io and libmicrohttpd's own timeout (idle
 * connections) with an ev_timer; both call MHD_run, which does what is
 * ready without blocking, then re-arm the timer.  We make the listening
 * socket ourselves, so that errors name the address and port 0 works.
 *
 * Limits (HttpdLimits), so that clients that connect and send nothing, or
 * half a request, cannot keep the probes out: one client address holds at
 * most max_per_ip connections (MHD accepts and closes the next at once),
 * all together at most max_connections (then MHD stops accepting and new
 * connections wait in the kernel's queue), and a connection silent for
 * timeout seconds is closed.  With 64 connections and no per-address
 * limit, 70 silent connections of one client held /healthz for 10 s.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "httpd.h"
#include "log.h"
#include "util.h"

struct Httpd
{
	struct ev_loop *loop;
	struct MHD_Daemon *mhd;
	int fd;   /* the listening socket (MHD closes it at stop) */
	int port; /* bound */
	HttpdHandler fn;
	void *arg;
	ev_io io;          /* MHD's epoll descriptor */
	ev_timer timer;    /* MHD's timeout */
	HttpdReq *waiting; /* requests whose handler answers later */
};

/*
 * A request from MHD's first call of answer() until both MHD is done with
 * it (request_completed) and, for a later answer, the handler has given it
 * (httpd_reply): whichever comes last frees it.
 */
typedef enum ReqState
{
	REQ_NEW,     /* headers seen */
	REQ_WAITING, /* suspended until httpd_reply */
	REQ_READY,   /* resumed with the answer kept here */
} ReqState;

struct HttpdReq
{
	HttpdReq *next, *prev; /* Httpd.waiting */
	Httpd *h;
	struct MHD_Connection *conn;
	const char *version; /* "HTTP/1.1", MHD's, while MHD has the request */
	ReqState state;
	bool in_mhd;  /* MHD still has the connection */
	bool in_user; /* the handler still owes an httpd_reply */
	int status;
	const char *type;
	Buf body;
};

void
buf_printf(Buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;)
	{
		size_t room = b->cap - b->len;

		va_start(ap, fmt);
		n = vsnprintf(b->data ? b->data + b->len : NULL, b->data ? room : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if (b->data && (size_t) n < room)
		{
			b->len += (size_t) n;
			return;
		}
		{
			size_t cap = b->cap ? b->cap * 2 : 4096;
			char *more;

			while (cap < b->len + (size_t) n + 1)
				cap *= 2;
			more = realloc(b->data, cap);
			if (more == NULL)
				return; /* the answer is cut: better than tqd stopping */
			b->data = more;
			b->cap = cap;
		}
	}
}

/* Runs MHD, then sets the timer to its next timeout. */
static void
run(Httpd *h)
{
	MHD_UNSIGNED_LONG_LONG ms;

	MHD_run(h->mhd);
	ev_timer_stop(h->loop, &h->timer);
	if (MHD_get_timeout(h->mhd, &ms) == MHD_YES)
	{
		ev_timer_set(&h->timer, ms / 1000.0, 0.);
		ev_timer_start(h->loop, &h->timer);
	}
}

static void
io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	run(container_of(w, Httpd, io));
}

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	run(container_of(w, Httpd, timer));
}

static void
unlink_waiting(HttpdReq *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		r->h->waiting = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->next = r->prev = NULL;
}

static void
free_req(HttpdReq *r)
{
	free(r->body.data);
	free(r);
}

static enum MHD_Result
send_answer(struct MHD_Connection *conn, int status, const char *type, Buf *body)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(body->len, body->data ? body->data : (void *) "",
										   body->data ? MHD_RESPMEM_MUST_FREE
													  : MHD_RESPMEM_PERSISTENT);
	if (resp == NULL)
	{
		free(body->data);
		*body = (Buf){0};
		return MHD_NO;
	}
	*body = (Buf){0}; /* the response owns it now */
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	/* Read-only pages of our own: nothing from elsewhere, no framing. */
	MHD_add_response_header(resp, "Content-Security-Policy",
							"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
							"form-action 'self'");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
	/* Every 401 must say how to authenticate (RFC 9110); tqd has one way. */
	if (status == MHD_HTTP_UNAUTHORIZED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"tqd\"");
	ret = MHD_queue_response(conn, (unsigned) status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result
answer(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
	   const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	Httpd *h = cls;
	HttpdReq *r = *con_cls;
	Buf body = {0};
	const char *type = "text/plain; charset=utf-8";
	int status;

	if (r == NULL)
	{
		/* First call: headers only.  Answer on the second. */
		r = calloc(1, sizeof(HttpdReq));
		if (r == NULL)
			return MHD_NO;
		r->h = h;
		r->conn = conn;
		r->in_mhd = true;
		*con_cls = r;
		return MHD_YES;
	}
	r->version = version;
	if (r->state == REQ_READY)
		return send_answer(conn, r->status, r->type, &r->body);
	if (r->state == REQ_WAITING)
		return MHD_YES; /* not resumed yet: cannot happen, but harmless */
	if (*upload_data_size > 0)
	{
		*upload_data_size = 0; /* a body we do not want: read and drop it */
		return MHD_YES;
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
	{
		buf_printf(&body, "only GET\n");
		status = MHD_HTTP_METHOD_NOT_ALLOWED;
	}
	else
		status = h->fn(r, url, &body, &type, h->arg);
	if (status == HTTPD_LATER)
	{
		free(body.data);
		r->state = REQ_WAITING;
		r->in_user = true;
		r->next = h->waiting;
		if (h->waiting)
			h->waiting->prev = r;
		h->waiting = r;
		MHD_suspend_connection(conn);
		return MHD_YES;
	}
	return send_answer(conn, status, type, &body);
}

/* MHD is done with a connection's request (answered, failed, or shut down). */
static void
request_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
				  enum MHD_RequestTerminationCode toe)
{
	HttpdReq *r = *con_cls;

	if (r == NULL)
		return;
	*con_cls = NULL;
	r->in_mhd = false;
	if (!r->in_user)
		free_req(r);
}

const char *
httpd_query(HttpdReq *req, const char *key)
{
	return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, key);
}

const char *
httpd_header(HttpdReq *req, const char *name)
{
	return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

/* Counts the Host headers of a request (MHD_get_connection_values' iterator). */
static enum MHD_Result
count_host(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	if (strcasecmp(key, MHD_HTTP_HEADER_HOST) == 0)
		(*(int *) cls)++;
	return MHD_YES;
}

const char *
httpd_host(HttpdReq *req)
{
	int n = 0;

	MHD_get_connection_values(req->conn, MHD_HEADER_KIND, count_host, &n);
	return n == 1 ? httpd_header(req, MHD_HTTP_HEADER_HOST) : NULL;
}

bool
httpd_http10(HttpdReq *req)
{
	return req->version != NULL && strcmp(req->version, MHD_HTTP_VERSION_1_0) == 0;
}

void
httpd_reply(HttpdReq *r, int status, const char *content_type, Buf *body)
{
	r->in_user = false;
	if (!r->in_mhd || r->state != REQ_WAITING)
	{
		/* The server stopped (and answered) meanwhile. */
		free(body->data);
		*body = (Buf){0};
		if (!r->in_mhd)
			free_req(r);
		return;
	}
	unlink_waiting(r);
	r->status = status;
	r->type = content_type;
	r->body = *body;
	*body = (Buf){0};
	r->state = REQ_READY;
	MHD_resume_connection(r->conn);
	/* MHD must run to notice; do it on this loop turn's way out. */
	ev_feed_event(r->h->loop, &r->h->io, EV_READ);
}

int
httpd_parse_addr(const char *addr, struct sockaddr_storage *ss, socklen_t *len, char *err,
				 size_t errlen)
{
	char host[128];
	const char *colon;
	long port;
	char *end;

	if (addr[0] == '[')
	{
		const char *close = strchr(addr, ']');

		if (close == NULL || close[1] != ':' || (size_t) (close - addr - 1) >= sizeof(host))
			goto bad;
		memcpy(host, addr + 1, (size_t) (close - addr - 1));
		host[close - addr - 1] = '\0';
		colon = close + 1;
	}
	else
	{
		colon = strrchr(addr, ':');
		if (colon == NULL || (size_t) (colon - addr) >= sizeof(host))
			goto bad;
		memcpy(host, addr, (size_t) (colon - addr));
		host[colon - addr] = '\0';
	}
	port = strtol(colon + 1, &end, 10);
	if (*end != '\0' || colon[1] == '\0' || port < 0 || port > 65535)
		goto bad;
	memset(ss, 0, sizeof(*ss));
	{
		struct sockaddr_in *a4 = (struct sockaddr_in *) ss;
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *) ss;

		if (inet_pton(AF_INET, host, &a4->sin_addr) == 1)
		{
			a4->sin_family = AF_INET;
			a4->sin_port = htons((uint16_t) port);
			*len = sizeof(*a4);
			return 0;
		}
		if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1)
		{
			a6->sin6_family = AF_INET6;
			a6->sin6_port = htons((uint16_t) port);
			*len = sizeof(*a6);
			return 0;
		}
	}
bad:
	snprintf(err, errlen,
			 "invalid address \"%s\": expected IPv4:port or [IPv6]:port, e.g. 127.0.0.1:9187",
			 addr);
	return -1;
}

/*
 * MHD's own messages are about single connections (a client that went
 * away, one refused over a limit): at debug level, or a flood of
 * connections would be a flood of log lines.  Our own errors are logged
 * by whoever called httpd_start.
 */
static void
mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];
	size_t n;

	if (log_min_level > LOG_DEBUG)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
		msg[--n] = '\0';
	tlog(LOG_DEBUG, "libmicrohttpd", "said=%s", kvq(msg));
}

Httpd *
httpd_start(struct ev_loop *loop, const char *addr, const HttpdLimits *limits, HttpdHandler fn,
			void *arg, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t len;
	Httpd *h;
	int one = 1;
	const union MHD_DaemonInfo *info;

	if (httpd_parse_addr(addr, &ss, &len, err, errlen) != 0)
		return NULL;
	h = calloc(1, sizeof(Httpd));
	if (h == NULL)
	{
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	h->loop = loop;
	h->fn = fn;
	h->arg = arg;
	h->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (h->fd < 0)
	{
		snprintf(err, errlen, "socket: %m");
		goto fail;
	}
	setsockopt(h->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(h->fd, (struct sockaddr *) &ss, len) != 0)
	{
		snprintf(err, errlen, "cannot listen on %s: %m", addr);
		goto fail;
	}
	if (listen(h->fd, 64) != 0)
	{
		snprintf(err, errlen, "cannot listen on %s: %m", addr);
		goto fail;
	}
	len = sizeof(ss);
	getsockname(h->fd, (struct sockaddr *) &ss, &len);
	h->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *) &ss)->sin_port
											: ((struct sockaddr_in6 *) &ss)->sin6_port);
	h->mhd = MHD_start_daemon(
		MHD_USE_EPOLL | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME, 0, NULL, NULL, answer, h,
		/* First, or MHD says so on stderr. */
		MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h, MHD_OPTION_LISTEN_SOCKET, h->fd,
		MHD_OPTION_NOTIFY_COMPLETED, request_completed, h, MHD_OPTION_CONNECTION_LIMIT,
		limits->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT, limits->max_per_ip,
		MHD_OPTION_CONNECTION_TIMEOUT, limits->timeout, MHD_OPTION_END);
	if (h->mhd == NULL)
	{
		snprintf(err, errlen, "libmicrohttpd could not start on %s", addr);
		goto fail;
	}
	info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
	if (info == NULL)
	{
		snprintf(err, errlen, "libmicrohttpd has no epoll descriptor");
		MHD_stop_daemon(h->mhd);
		h->fd = -1; /* closed by MHD_stop_daemon */
		goto fail;
	}
	ev_io_init(&h->io, io_cb, info->epoll_fd, EV_READ);
	ev_io_start(loop, &h->io);
	ev_init(&h->timer, timer_cb);
	run(h);
	return h;

fail:
	if (h->fd >= 0)
		close(h->fd);
	free(h);
	return NULL;
}

int
httpd_port(const Httpd *h)
{
	return h->port;
}

void
httpd_stop(Httpd *h)
{
	if (h == NULL)
		return;
	/*
	 * MHD must not stop with suspended connections: answer those still
	 * waiting (their handlers' later httpd_reply only frees them), let MHD
	 * take the answers, then stop, which ends every connection.
	 */
	while (h->waiting)
	{
		HttpdReq *r = h->waiting;

		unlink_waiting(r);
		r->status = MHD_HTTP_SERVICE_UNAVAILABLE;
		r->type = "text/plain; charset=utf-8";
		buf_printf(&r->body, "tqd is stopping\n");
		r->state = REQ_READY;
		MHD_resume_connection(r->conn);
	}
	MHD_run(h->mhd);
	ev_io_stop(h->loop, &h->io);
	ev_timer_stop(h->loop, &h->timer);
	MHD_stop_daemon(h->mhd); /* closes the listening socket too */
	free(h);
}
