/*
 * config_check.c
 *	  The checks of single keys (KeyDef.check), run once the whole file
 *	  was read, so that a value continued on the next lines is complete,
 *	  and only for keys the file gives.
 *
 * Each checks a value with the parser that will use it where there is one
 * (libpq's for conninfo, libcurl's for url, httpd's for metrics_listen,
 * split_argv for command), so that what passes --check-config is what tqd
 * can run.  A check may fill derived fields (command -> argv, headers ->
 * header_list), freeing what an earlier load of the same field left.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libpq-fe.h>

#include "config_keys.h"
#include "http.h"
#include "httpd.h"
#include "util.h"

bool
check_command(void *base, char *msg, size_t msglen)
{
	QueueConf *q = base;
	int n;

	free_argv(q->argv);
	q->argv = NULL;
	n = split_argv(q->command, &q->argv, msg, msglen);
	if (n < 0)
		return false;
	if (n == 0 || q->argv[0][0] == '\0')
	{
		snprintf(msg, msglen, "no program given");
		return false;
	}
	return true;
}

/*
 * libpq's own parser: a connection string it cannot read would otherwise
 * pass the load and then fail every connection attempt, forever.
 */
bool
check_conninfo(void *base, char *msg, size_t msglen)
{
	Config *c = base;
	char *why = NULL;
	PQconninfoOption *opts = PQconninfoParse(c->conninfo, &why);
	size_t n;

	if (opts != NULL)
	{
		PQconninfoFree(opts);
		return true;
	}
	snprintf(msg, msglen, "libpq cannot parse it: %s", why ? why : "out of memory");
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
		msg[--n] = '\0';
	PQfreemem(why);
	return false;
}

/* One SQL identifier as we accept it unquoted: [A-Za-z_][A-Za-z0-9_$]*. */
static size_t
identifier_length(const char *s)
{
	size_t n = 0;

	if (!(isalpha((unsigned char) s[0]) || s[0] == '_') || (unsigned char) s[0] >= 0x80)
		return 0;
	while (s[n] != '\0' && (unsigned char) s[n] < 0x80 &&
		   (isalnum((unsigned char) s[n]) || s[n] == '_' || s[n] == '$'))
		n++;
	return n;
}

/*
 * The function is spliced into SQL by the daemon, so only plain
 * identifiers are allowed: name or schema.name, each at most 63 bytes
 * (PostgreSQL would silently truncate a longer one).  No quotes, no
 * blanks, no parentheses: nothing that could change the statement.
 */
bool
check_function(void *base, char *msg, size_t msglen)
{
	QueueConf *q = base;
	const char *s = q->function;

	for (int part = 0; part < 2; part++)
	{
		size_t n = identifier_length(s);

		if (n == 0 || n > NAME_MAX_BYTES)
			break;
		s += n;
		if (*s == '\0')
			return true;
		if (*s != '.' || part == 1)
			break;
		s++;
	}
	snprintf(msg, msglen,
			 "invalid function name \"%s\": expected name or schema.name, each a letter or _ "
			 "then letters, digits, _ or $ (at most %d bytes), without quotes",
			 q->function, NAME_MAX_BYTES);
	return false;
}

bool
check_throttled_exit(void *base, char *msg, size_t msglen)
{
	static const struct
	{
		int status;
		const char *meaning;
	} taken[] = {
		{64, "EX_USAGE: failed, not retried"},
		{65, "EX_DATAERR: failed, not retried"},
		{75, "EX_TEMPFAIL: failed, retried"},
	};
	QueueConf *q = base;

	for (size_t i = 0; i < lengthof(taken); i++)
	{
		if (q->throttled_exit == taken[i].status)
		{
			snprintf(msg, msglen, "%d already has a meaning (%s); choose another exit status",
					 taken[i].status, taken[i].meaning);
			return false;
		}
	}
	return true;
}

/*
 * The names in pass_env: NAME or PREFIX* (PREFIX may be empty: "*" passes
 * everything), NAME and PREFIX made of letters, digits and _, not starting
 * with a digit (what a shell can set).  exec_child.c's build_env matches
 * them.
 */
bool
check_pass_env(void *base, char *msg, size_t msglen)
{
	QueueConf *q = base;
	const char *s = skip_blanks(q->pass_env);

	while (*s != '\0')
	{
		size_t n = 0;
		bool good;

		while (s[n] != '\0' && !is_blank(s[n]))
			n++;
		good = !isdigit((unsigned char) s[0]);
		for (size_t i = 0; i < n && good; i++)
		{
			unsigned char c = (unsigned char) s[i];

			good = (c < 0x80 && (isalnum(c) || c == '_')) || (c == '*' && i == n - 1);
		}
		if (!good)
		{
			snprintf(msg, msglen,
					 "invalid name \"%.*s\": expected variable names (letters, digits and _, not "
					 "starting with a digit), each optionally ending in * (LC_*), separated by "
					 "blanks",
					 (int) n, s);
			return false;
		}
		s = skip_blanks(s + n);
	}
	return true;
}

/* An '@' between "://" and the path: user info, even an empty one ("http://@host"). */
static bool
has_userinfo(const char *url)
{
	const char *auth = strstr(url, "://");

	auth = auth != NULL ? auth + 3 : url;
	return memchr(auth, '@', strcspn(auth, "/?#")) != NULL;
}

/*
 * The URL is parsed with libcurl's own parser, the one that will use it:
 * what it accepts here is what the requests go to.  Only http and https,
 * and no user name or password: tqd prints the URL (logs, task logs that
 * producers read, /metrics), so credentials go in headers, which it never
 * prints.  Messages show the URL redacted (http_url_redact), since they
 * reach tqd's log too (a reload that fails); url_shown is that form.
 */
bool
check_url(void *base, char *msg, size_t msglen)
{
	QueueConf *q = base;
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL, *user = NULL, *password = NULL;
	char shown[1024];
	CURLUcode rc;
	bool good = false;

	http_url_redact(q->url, shown, sizeof(shown));
	free(q->url_shown);
	q->url_shown = strdup(shown);
	if (u == NULL || q->url_shown == NULL)
	{
		snprintf(msg, msglen, "out of memory");
		curl_url_cleanup(u);
		return false;
	}
	rc = curl_url_set(u, CURLUPART_URL, q->url, 0);
	if (rc != CURLUE_OK)
		snprintf(msg, msglen, "invalid URL \"%s\": %s", shown, curl_url_strerror(rc));
	else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
			 (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
		snprintf(msg, msglen, "invalid URL \"%s\": the scheme must be http or https", shown);
	else if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || host[0] == '\0')
		snprintf(msg, msglen, "invalid URL \"%s\": no host", shown);
	else if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
			 curl_url_get(u, CURLUPART_PASSWORD, &password, 0) == CURLUE_OK || has_userinfo(q->url))
		snprintf(msg, msglen,
				 "URL \"%s\" has a user name or password in it: tqd prints URLs (logs, task "
				 "logs, /metrics), so give credentials with the headers key instead, which it "
				 "never prints (e.g. headers = Authorization: Basic <base64 of user:password>)",
				 shown);
	else
		good = true;
	curl_free(scheme);
	curl_free(host);
	curl_free(user);
	curl_free(password);
	curl_url_cleanup(u);
	return good;
}

/* RFC 9110 token characters, which a header name is made of. */
static bool
is_tchar(char ch)
{
	unsigned char c = (unsigned char) ch;

	if (c == 0 || c >= 0x80)
		return false;
	return isalnum(c) || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/*
 * One "Name: value" per line.  The names tqd sets itself for every task
 * (X-TQ-*, and traceparent for tasks that carry one), and those that
 * describe the body curl sends (Content-Length, Transfer-Encoding), cannot
 * be set: a fixed value there would be wrong.
 */
bool
check_headers(void *base, char *msg, size_t msglen)
{
	QueueConf *q = base;
	char **list = NULL;
	int n = 0, cap = 0;
	const char *s = q->headers;

	free_argv(q->header_list);
	q->header_list = NULL;
	q->has_content_type = false;
	while (*s != '\0')
	{
		const char *end = strchr(s, '\n');
		size_t len = end ? (size_t) (end - s) : strlen(s);
		const char *colon;
		size_t nlen;
		const char *value;

		while (len > 0 && is_blank(*s))
			s++, len--;
		while (len > 0 && is_blank(s[len - 1]))
			len--;
		if (len == 0)
			goto next;
		colon = memchr(s, ':', len);
		nlen = colon ? (size_t) (colon - s) : 0;
		for (size_t i = 0; i < nlen; i++)
			if (!is_tchar(s[i]))
				nlen = 0;
		if (nlen == 0)
		{
			snprintf(msg, msglen, "invalid header \"%.*s\": expected \"Name: value\"", (int) len,
					 s);
			goto fail;
		}
		if ((nlen == 14 && strncasecmp(s, "Content-Length", nlen) == 0) ||
			(nlen == 17 && strncasecmp(s, "Transfer-Encoding", nlen) == 0) ||
			(nlen >= 5 && strncasecmp(s, "X-TQ-", 5) == 0))
		{
			snprintf(msg, msglen, "header \"%.*s\" cannot be set: tqd sets it for each request",
					 (int) nlen, s);
			goto fail;
		}
		/* A fixed trace context would hide each task's own (W3C Trace Context). */
		if (nlen == 11 && strncasecmp(s, "traceparent", nlen) == 0)
		{
			snprintf(msg, msglen,
					 "header \"%.*s\" cannot be set: tqd sets it from each task's traceparent",
					 (int) nlen, s);
			goto fail;
		}
		if (nlen == 12 && strncasecmp(s, "Content-Type", nlen) == 0)
			q->has_content_type = true;
		value = skip_blanks(colon + 1);
		if (n + 2 > cap)
		{
			char **more;

			cap = cap ? cap * 2 : 8;
			more = realloc(list, (size_t) cap * sizeof(char *));
			if (more == NULL)
				goto oom;
			list = more;
			list[n] = NULL;
		}
		/* Normalised to "Name: value". */
		{
			size_t vlen = len - (size_t) (value - s);
			char *h = malloc(nlen + 2 + vlen + 1);

			if (h == NULL)
				goto oom;
			snprintf(h, nlen + 2 + vlen + 1, "%.*s: %.*s", (int) nlen, s, (int) vlen, value);
			list[n++] = h;
			list[n] = NULL;
		}
	next:
		if (end == NULL)
			break;
		s = end + 1;
	}
	q->header_list = list;
	return true;
oom:
	snprintf(msg, msglen, "out of memory");
fail:
	if (list)
		free_argv(list);
	return false;
}

bool
check_ca_file(void *base, char *msg, size_t msglen)
{
	QueueConf *q = base;

	if (q->ca_file[0] != '\0' && access(q->ca_file, R_OK) != 0)
	{
		snprintf(msg, msglen, "cannot read \"%s\": %m", q->ca_file);
		return false;
	}
	return true;
}

/* The address is parsed as httpd_start will: a bad one fails --check-config. */
bool
check_metrics_listen(void *base, char *msg, size_t msglen)
{
	Config *c = base;
	struct sockaddr_storage ss;
	socklen_t len;

	return c->metrics_listen[0] == '\0' ||
		   httpd_parse_addr(c->metrics_listen, &ss, &len, msg, msglen) == 0;
}

bool
check_dashboard(void *base, char *msg, size_t msglen)
{
	Config *c = base;

	if (c->dashboard && c->metrics_listen[0] == '\0')
	{
		snprintf(msg, msglen, "on needs metrics_listen: the dashboard is served there");
		return false;
	}
	return true;
}

bool
check_aimd_min(void *base, char *msg, size_t msglen)
{
	QueueConf *q = base;

	if (q->aimd_min > q->concurrency)
	{
		snprintf(msg, msglen, "%d is above concurrency (%d): the window never goes above that",
				 q->aimd_min, q->concurrency);
		return false;
	}
	return true;
}

/*
 * Names for the Host header besides localhost and IP addresses
 * (httpd_access.c), split at blanks and commas into allowed_hosts, in
 * lowercase.  A name is DNS letters, digits, '-', '.' and '_', without a
 * port: any port is accepted with it.
 */
bool
check_http_allowed_hosts(void *base, char *msg, size_t msglen)
{
	Config *c = base;
	const char *s = c->http_allowed_hosts;
	char **list = NULL;
	int n = 0;

	free_argv(c->allowed_hosts);
	c->allowed_hosts = NULL;
	for (;;)
	{
		size_t len;
		char *name, **more;

		while (*s == ',' || is_blank(*s))
			s++;
		if (*s == '\0')
			break;
		len = strcspn(s, ", \t\n\r\v\f");
		for (size_t i = 0; i < len; i++)
			if (!isalnum((unsigned char) s[i]) || (unsigned char) s[i] >= 0x80)
				if (s[i] != '-' && s[i] != '.' && s[i] != '_')
				{
					snprintf(msg, msglen,
							 "invalid host name \"%.*s\": letters, digits, '-', '.' and '_' "
							 "only, without a port (any port is accepted)",
							 (int) (len > 255 ? 255 : len), s);
					goto fail;
				}
		if (len > 253)
		{
			snprintf(msg, msglen, "invalid host name \"%.40s...\": longer than 253 bytes", s);
			goto fail;
		}
		more = realloc(list, (size_t) (n + 2) * sizeof(char *));
		name = strndup(s, len);
		if (more == NULL || name == NULL)
		{
			free(name);
			if (more != NULL)
				list = more;
			snprintf(msg, msglen, "out of memory");
			goto fail;
		}
		list = more;
		for (size_t i = 0; i < len; i++)
			name[i] = (char) tolower((unsigned char) name[i]);
		list[n++] = name;
		list[n] = NULL;
		s += len;
	}
	c->allowed_hosts = list;
	return true;
fail:
	if (list != NULL)
	{
		list[n] = NULL;
		free_argv(list);
	}
	return false;
}

/* The least length of a bearer token: 16 characters guessed online is hopeless. */
#define TOKEN_MIN_LENGTH 16
/* The most a token file may hold. */
#define TOKEN_MAX_LENGTH 4096

/*
 * The token is read here, at load and at every reload (so a new token is a
 * SIGHUP away), into http_token: one line of printable ASCII without blanks
 * (it travels in a header), at least TOKEN_MIN_LENGTH long.  Messages never
 * show the file's content.
 */
bool
check_http_token_file(void *base, char *msg, size_t msglen)
{
	Config *c = base;
	char buf[TOKEN_MAX_LENGTH + 2];
	size_t len;
	FILE *f;

	free_secret(c->http_token);
	c->http_token = NULL;
	if (c->http_token_file[0] == '\0')
		return true;
	f = fopen(c->http_token_file, "re");
	if (f == NULL)
	{
		snprintf(msg, msglen, "cannot read \"%s\": %m", c->http_token_file);
		return false;
	}
	len = fread(buf, 1, sizeof(buf) - 1, f);
	if (ferror(f))
	{
		snprintf(msg, msglen, "cannot read \"%s\": %m", c->http_token_file);
		fclose(f);
		explicit_bzero(buf, sizeof(buf));
		return false;
	}
	fclose(f);
	buf[len] = '\0';
	if (len > 0 && buf[len - 1] == '\n')
		buf[--len] = '\0';
	if (len > 0 && buf[len - 1] == '\r')
		buf[--len] = '\0';
	if (len > TOKEN_MAX_LENGTH)
		snprintf(msg, msglen, "\"%s\" is longer than %d bytes: a token is one line",
				 c->http_token_file, TOKEN_MAX_LENGTH);
	else if (len < TOKEN_MIN_LENGTH)
		snprintf(msg, msglen,
				 "the token in \"%s\" is %zu characters long: at least %d are needed "
				 "(e.g. openssl rand -hex 32)",
				 c->http_token_file, len, TOKEN_MIN_LENGTH);
	else
	{
		for (size_t i = 0; i < len; i++)
			if (buf[i] < 0x21 || buf[i] > 0x7e)
			{
				snprintf(msg, msglen,
						 "the token in \"%s\" must be one line of printable ASCII without "
						 "blanks",
						 c->http_token_file);
				explicit_bzero(buf, sizeof(buf));
				return false;
			}
		c->http_token = strdup(buf);
		explicit_bzero(buf, sizeof(buf));
		if (c->http_token == NULL)
		{
			snprintf(msg, msglen, "out of memory");
			return false;
		}
		return true;
	}
	explicit_bzero(buf, sizeof(buf));
	return false;
}
