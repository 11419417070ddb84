/*
 * httpd_access.c
 *	  The Host allowlist and the bearer token of metrics_listen
 *	  (httpd_access.h).
 *
 * Host.  A page on another site cannot read tqd's answers (no CORS
 * headers), unless DNS rebinding makes the browser believe tqd is that
 * site: the page's name then resolves to tqd's address, and the requests
 * carry Host: that name.  So a request is answered only when its Host
 * names tqd: an IP address literal (a browser sends one only when the
 * page's own origin is that address and port, i.e. tqd itself; this also
 * covers the address tqd listens on, and a pod IP that kubelet or
 * Prometheus scrape by), localhost, or a name of http_allowed_hosts.  The
 * port is not compared: a proxy may forward its own.  HTTP/1.0 may omit
 * Host (browsers always send it); HTTP/1.1 must send exactly one.
 *
 * Token.  With http_token_file, every answer but the probes and the
 * dashboard's page (static files, the same for everyone, holding no data)
 * needs "Authorization: Bearer TOKEN".  The token is compared in constant
 * time, and no answer repeats what the request sent.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "httpd_access.h"
#include "util.h"

/* "" or ":" followed by at most 5 digits (RFC 3986 allows an empty port). */
static bool
access_port_ok(const char *s)
{
	size_t n;

	if (*s == '\0')
		return true;
	if (*s != ':')
		return false;
	n = strspn(s + 1, "0123456789");
	return s[1 + n] == '\0' && n <= 5;
}

bool
access_host_allowed(const char *host, char *const *names)
{
	char name[256];
	size_t len;
	const char *end;
	struct in6_addr a6;
	struct in_addr a4;

	if (host == NULL || host[0] == '\0')
		return false;
	if (host[0] == '[')
	{
		end = strchr(host, ']');
		if (end == NULL || (size_t) (end - host - 1) >= sizeof(name) || !access_port_ok(end + 1))
			return false;
		memcpy(name, host + 1, (size_t) (end - host - 1));
		name[end - host - 1] = '\0';
		return inet_pton(AF_INET6, name, &a6) == 1;
	}
	end = strchr(host, ':');
	len = end ? (size_t) (end - host) : strlen(host);
	if (len == 0 || len >= sizeof(name) || (end != NULL && !access_port_ok(end)))
		return false;
	for (size_t i = 0; i < len; i++)
		name[i] = (char) tolower((unsigned char) host[i]);
	name[len] = '\0';
	if (inet_pton(AF_INET, name, &a4) == 1 || strcmp(name, "localhost") == 0)
		return true;
	for (int i = 0; names != NULL && names[i] != NULL; i++)
		if (strcmp(name, names[i]) == 0)
			return true;
	return false;
}

/*
 * given (glen bytes) equals token: every byte of the token is looked at
 * whatever the answer, so the time says nothing about where they differ.
 */
static bool
access_equal(const char *given, size_t glen, const char *token)
{
	size_t tlen = strlen(token);
	volatile unsigned char diff = glen != tlen;

	for (size_t i = 0; i < tlen; i++)
		diff |= (unsigned char) token[i] ^ (unsigned char) (i < glen ? given[i] : 0);
	return diff == 0;
}

bool
access_bearer_ok(const char *authorization, const char *token)
{
	const char *s;
	size_t len;

	if (authorization == NULL || token == NULL || strncasecmp(authorization, "Bearer", 6) != 0 ||
		(authorization[6] != ' ' && authorization[6] != '\t'))
		return false;
	s = skip_blanks(authorization + 6);
	len = strlen(s);
	while (len > 0 && is_blank(s[len - 1]))
		len--;
	return access_equal(s, len, token);
}

int
access_check(const Config *c, HttpdReq *req, bool needs_token, Buf *body)
{
	bool no_host = httpd_header(req, "Host") == NULL;

	if (!(no_host && httpd_http10(req)) && !access_host_allowed(httpd_host(req), c->allowed_hosts))
	{
		buf_printf(body, "misdirected request: this tqd answers to localhost, IP addresses and "
						 "the names in http_allowed_hosts\n");
		return 421;
	}
	if (needs_token && c->http_token != NULL &&
		!access_bearer_ok(httpd_header(req, "Authorization"), c->http_token))
	{
		buf_printf(body, "unauthorized: send \"Authorization: Bearer TOKEN\", the token of "
						 "http_token_file\n");
		return 401;
	}
	return 0;
}
