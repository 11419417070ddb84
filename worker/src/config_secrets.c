/*
 * config_secrets.c
 *	  Secrets in a configuration file that others can read: the warning
 *	  tqd gives at startup, on reload and in --check-config (config.h,
 *	  config_exposed_secrets).
 *
 * tqd's file may hold a database password (conninfo) and an endpoint's
 * credentials (an Authorization header, an API key in a URL's query).
 * A file that its group or every user can read gives them away, and
 * nothing else would say so: the file loads and works.  What counts as
 * a secret is a guess from names (a header or query parameter whose name
 * contains auth, token, key, ...): a warning, never a refusal, so a
 * harmless name that matches costs a chmod at most.
 *
 * The mode is the one config_load saw on the descriptor it read from
 * (Config.file_mode), so the warning is about the file that was read.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <libpq-fe.h>

#include "config.h"
#include "log.h"
#include "util.h"

/* Whether a header or query parameter name looks like it carries a secret. */
static bool
secret_name(const char *name, size_t n)
{
	static const char *const words[] = {"auth",   "token", "secret",  "key",       "pass",
										"cookie", "sig",   "session", "credential"};
	char lower[128];

	if (n >= sizeof(lower))
		n = sizeof(lower) - 1;
	for (size_t i = 0; i < n; i++)
		lower[i] = (char) ((name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i]);
	lower[n] = '\0';
	for (size_t i = 0; i < lengthof(words); i++)
		if (strstr(lower, words[i]) != NULL)
			return true;
	return false;
}

/* Appends ", what" (or "what" first) to buf; "..." once it is full. */
static void
add_secret(char *buf, size_t len, const char *what)
{
	size_t used = strlen(buf);

	if (used + strlen(what) + 6 >= len)
	{
		if (used + 4 < len && (used < 3 || strcmp(buf + used - 3, "...") != 0))
			strcat(buf, "...");
		return;
	}
	snprintf(buf + used, len - used, "%s%s", used > 0 ? ", " : "", what);
}

/* conninfo's password and sslpassword, when given. */
static void
conninfo_secrets(const Config *c, char *buf, size_t len)
{
	PQconninfoOption *opts = PQconninfoParse(c->conninfo, NULL);

	for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++)
	{
		char what[64];

		if ((strcmp(o->keyword, "password") == 0 || strcmp(o->keyword, "sslpassword") == 0) &&
			o->val != NULL && o->val[0] != '\0')
		{
			snprintf(what, sizeof(what), "conninfo %s", o->keyword);
			add_secret(buf, len, what);
		}
	}
	PQconninfoFree(opts);
}

/* An http queue's secret-looking headers and query parameters. */
static void
queue_secrets(const QueueConf *q, char *buf, size_t len)
{
	char what[256];
	const char *query;

	for (char **h = q->header_list; h != NULL && *h != NULL; h++)
	{
		size_t n = strcspn(*h, ":");

		if (secret_name(*h, n))
		{
			snprintf(what, sizeof(what), "header \"%.*s\" of queue \"%s\"", (int) n, *h, q->name);
			add_secret(buf, len, what);
		}
	}
	query = q->url != NULL ? strchr(q->url, '?') : NULL;
	while (query != NULL && *query != '\0' && *query != '#')
	{
		const char *param = query + 1;
		size_t n = strcspn(param, "=&#");

		if (n > 0 && secret_name(param, n))
		{
			snprintf(what, sizeof(what), "URL parameter \"%.*s\" of queue \"%s\"", (int) n, param,
					 q->name);
			add_secret(buf, len, what);
		}
		query = param + strcspn(param, "&#");
	}
}

bool
config_exposed_secrets(const Config *c, char *buf, size_t len)
{
	if (len == 0)
		return false;
	buf[0] = '\0';
	if ((c->file_mode & (S_IRGRP | S_IROTH)) == 0)
		return false;
	conninfo_secrets(c, buf, len);
	for (int i = 0; i < c->nqueues; i++)
		if (c->queues[i].handler == HANDLER_HTTP)
			queue_secrets(&c->queues[i], buf, len);
	return buf[0] != '\0';
}

void
config_warn_exposed(const Config *c, FILE *out)
{
	char secrets[1024];

	if (!config_exposed_secrets(c, secrets, sizeof(secrets)))
		return;
	if (out != NULL)
		fprintf(out,
				"tqd: warning: %s can be read by %s (mode %04o) and holds secrets: %s\n"
				"tqd: hint: chmod 600 %s (owned by the user tqd runs as)\n",
				c->path, (c->file_mode & S_IROTH) ? "every user" : "its group", c->file_mode,
				secrets, c->path);
	else
	{
		char hint[1200];

		snprintf(hint, sizeof(hint), "chmod 600 %s (owned by the user tqd runs as)", c->path);
		tlog(LOG_WARNING, "configuration file holds secrets that others can read",
			 "file=%s mode=%04o readable_by=%s secrets=%s hint=%s", kvq(c->path), c->file_mode,
			 (c->file_mode & S_IROTH) ? "all" : "group", kvq(secrets), kvq(hint));
	}
}
