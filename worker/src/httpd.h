/*
 * httpd.h
 *	  tqd's own small HTTP server (/metrics, /healthz, the dashboard):
 *	  libmicrohttpd run from the libev loop, not in a thread of its own.
 *	  libmicrohttpd in epoll mode exposes one descriptor; an ev_io on it and
 *	  an ev_timer on MHD_get_timeout call MHD_run, which answers whatever is
 *	  ready without blocking.  Handlers run on the loop, so they may read
 *	  tqd's state without locks.
 *
 *	  A handler that needs the database answers later: it returns
 *	  HTTPD_LATER, keeps the request, and calls httpd_reply when its query
 *	  is back (the connection is suspended meanwhile, so the loop goes on).
 *	  httpd_reply must be called exactly once for such a request, also after
 *	  httpd_stop (the request is then only freed).
 */
#ifndef TQD_HTTPD_H
#define TQD_HTTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include <ev.h>

typedef struct Httpd Httpd;

/* A growing text buffer for answers. */
typedef struct Buf
{
	char *data;
	size_t len, cap;
} Buf;

extern void buf_printf(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One request being answered. */
typedef struct HttpdReq HttpdReq;

/* A handler's return value: the answer comes later, by httpd_reply. */
#define HTTPD_LATER 0

/*
 * Answers one GET: fills body (and content_type, a static string) and
 * returns the HTTP status; the body is sent and freed by httpd.  Or
 * returns HTTPD_LATER, leaving body empty, and answers with httpd_reply.
 */
typedef int (*HttpdHandler)(HttpdReq *req, const char *path, Buf *body, const char **content_type,
							void *arg);

/*
 * A parameter of the request's query string (?id=12), or NULL; only while
 * the handler runs.
 */
extern const char *httpd_query(HttpdReq *req, const char *key);
/*
 * A header of the request (name case-insensitive; the first if it is
 * there twice), or NULL; only while the handler runs.
 */
extern const char *httpd_header(HttpdReq *req, const char *name);
/* The Host header; NULL when there is none, or more than one. */
extern const char *httpd_host(HttpdReq *req);
/* The request is HTTP/1.0 (which need not send Host); only while the handler runs. */
extern bool httpd_http10(HttpdReq *req);
/*
 * The answer to a request whose handler returned HTTPD_LATER: takes body
 * (its data is freed by httpd); content_type is a static string.
 */
extern void httpd_reply(HttpdReq *req, int status, const char *content_type, Buf *body);

/* How much of tqd clients may hold (httpd.c says why). */
typedef struct HttpdLimits
{
	unsigned int max_connections; /* open at once, all clients */
	unsigned int max_per_ip;      /* open at once, one client address */
	unsigned int timeout;         /* s: a connection silent this long is closed */
} HttpdLimits;

/*
 * Listens on addr ("127.0.0.1:9187", "[::1]:9187", "0.0.0.0:9187"; port 0
 * = any free one).  Returns NULL with a message in err when it cannot.
 * A 401 answer gets "WWW-Authenticate: Bearer".
 */
extern Httpd *httpd_start(struct ev_loop *loop, const char *addr, const HttpdLimits *limits,
						  HttpdHandler fn, void *arg, char *err, size_t errlen)
	__attribute__((warn_unused_result));
/*
 * "IPv4:port" or "[IPv6]:port" (port 0 = any) into a socket address; -1
 * with a message in err when it is neither (config_check.c checks
 * metrics_listen with it).
 */
extern int httpd_parse_addr(const char *addr, struct sockaddr_storage *ss, socklen_t *len,
							char *err, size_t errlen) __attribute__((warn_unused_result));

/* The port it listens on (useful with port 0). */
extern int httpd_port(const Httpd *h);
extern void httpd_stop(Httpd *h);

#endif
