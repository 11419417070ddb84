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
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "httpd.h"

#define CONTAINER(ptr, type, field) ((type *) ((char *) (ptr) -offsetof(type, field)))

struct Httpd
{
	struct ev_loop *loop;
	struct MHD_Daemon *mhd;
	int fd;   /* the listening socket (MHD closes it at stop) */
	int port; /* bound */
	HttpdHandler fn;
	void *arg;
	ev_io io;       /* MHD's epoll descriptor */
	ev_timer timer; /* MHD's timeout */
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
	run(CONTAINER(w, Httpd, io));
}

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	run(CONTAINER(w, Httpd, timer));
}

static enum MHD_Result
answer(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
	   const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	Httpd *h = cls;
	Buf body = {0};
	const char *type = "text/plain; charset=utf-8";
	struct MHD_Response *resp;
	enum MHD_Result ret;
	int status;

	if (*con_cls == NULL)
	{
		/* First call: headers only.  Answer on the second. */
		*con_cls = h;
		return MHD_YES;
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
	{
		buf_printf(&body, "only GET\n");
		status = MHD_HTTP_METHOD_NOT_ALLOWED;
	}
	else
		status = h->fn(url, &body, &type, h->arg);
	resp =
		MHD_create_response_from_buffer(body.len, body.data ? body.data : (void *) "",
										body.data ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
	if (resp == NULL)
	{
		free(body.data);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	ret = MHD_queue_response(conn, (unsigned) status, resp);
	MHD_destroy_response(resp);
	return ret;
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

Httpd *
httpd_start(struct ev_loop *loop, const char *addr, HttpdHandler fn, void *arg, char *err,
			size_t errlen)
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
	h->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL, answer, h,
							  MHD_OPTION_LISTEN_SOCKET, h->fd, MHD_OPTION_CONNECTION_LIMIT,
							  (unsigned int) 64, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) 10,
							  MHD_OPTION_END);
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
	ev_io_stop(h->loop, &h->io);
	ev_timer_stop(h->loop, &h->timer);
	MHD_stop_daemon(h->mhd); /* closes the listening socket too */
	free(h);
}
