/*
 * httpd_access.h
 *	  Who may read what tqd serves on metrics_listen: the Host allowlist
 *	  (against DNS rebinding) and the optional bearer token.  metrics.c asks
 *	  before it answers anything but the probes; the pure parts are
 *	  unit-tested (worker/test/test_httpd_access.c).
 */
#ifndef TQD_HTTPD_ACCESS_H
#define TQD_HTTPD_ACCESS_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "httpd.h"

/*
 * A Host header ("name", "name:port", "[v6]:port") names this tqd: an IP
 * address, localhost, or one of names (lowercase, NULL-terminated; NULL =
 * none); any port.  NULL or "" is refused.
 */
extern bool access_host_allowed(const char *host, char *const *names);

/*
 * An Authorization header ("Bearer TOKEN") carries token; the comparison
 * takes the same time wherever the first difference is.
 */
extern bool access_bearer_ok(const char *authorization, const char *token);

/*
 * 0 when the request may be answered; else the status (421 for a Host not
 * allowed, 401 for a token missing or wrong when needs_token and a token
 * is configured) with a short text body, which never repeats the request.
 */
extern int access_check(const Config *c, HttpdReq *req, bool needs_token, Buf *body);

#endif
