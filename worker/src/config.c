/*
 * config.c
 *	  Reading tqd's configuration file: an INI file read with libinih,
 *	  each key checked against the table of keys (config_keys.c), then
 *	  the rules that need the whole file.
 *
 * Why a reader of our own: libinih does not report line numbers to the
 * handler in the build Debian ships (INI_HANDLER_LINENO is 0), truncates
 * section names to 49 bytes, does not call the handler for a section with
 * no keys, and silently splits a line longer than its buffer into two.  So
 * read_line() feeds libinih through fgets while counting lines and noting
 * section headers itself, mirroring libinih's rules for which line is a
 * header, a comment or a continuation; the handler only sees key = value.
 *
 * Reading happens in three steps: the defaults (the table's), the file
 * (each value parsed by set_value, config_value.c), then the checks that
 * need the whole file: a queue at least, the cross-key rules, the rules of
 * each queue's handler and each key's own check (config_check.c).
 *
 * Error handling: the first error wins.  It is written into the caller's
 * buffer as "FILE:LINE: key \"KEY\": ...", "FILE:LINE: section \"S\": ..."
 * or "FILE: ..."; reading stops at once (read_line returns NULL, the end
 * of the file for libinih), and config_load frees the half-built Config.
 *
 * Ownership: the Config owns every string and array in it (config.h).
 * The Parser only lives for one config_load call.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <ini.h>

#include "config_keys.h"
#include "util.h"

/*
 * Queue sections in one file.  Each queue is looked up by name (duplicate
 * sections here, config_queue at run time) with a linear search, and each
 * has its own lease and status bookkeeping in tqd: a bound keeps both
 * small, and a file of 40,000 sections (found by fuzzing: 6.75 s to load
 * with the quadratic duplicate check) is refused at its first extra
 * section.
 */
#define MAX_QUEUES 1000

/* Where each key of one section was given: its line, 0 = not given. */
typedef struct SectionState
{
	int header_line;
	int key_line[NKEYS];
} SectionState;

typedef enum CurSection
{
	SEC_NONE,   /* before any section header */
	SEC_GLOBAL, /* in [tqd] */
	SEC_QUEUE,  /* in [queue:NAME]; Parser.cur_queue says which */
} CurSection;

/* The state of one config_load call. */
typedef struct Parser
{
	Config *c;        /* being built */
	const char *path; /* for messages */
	FILE *f;
	int lineno;              /* of the line libinih is working on */
	bool indented;           /* that line starts with a blank */
	int first_bracket_error; /* first "[" line without "]": for the syntax message */
	CurSection sec;
	int cur_queue;        /* index into c->queues when sec == SEC_QUEUE */
	int last_key;         /* index into config_keys[] of the last key of this section, or -1 */
	int gap_line;         /* a blank or comment line since that key's last line, or 0 */
	SectionState global;  /* [tqd] */
	SectionState *qstate; /* parallel to c->queues */
	int qcap;             /* allocated length of c->queues and qstate */
	bool failed;          /* err holds the first error */
	int errline;          /* its line, 0 = not tied to a line */
	char *err;
	size_t errlen;
} Parser;

/*
 * Records the first error: "PATH:LINE: message", or "PATH: message" when
 * line is 0.  Later errors are ignored: they are often consequences.
 */
static void __attribute__((format(printf, 3, 4))) failf(Parser *p, int line, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	if (p->failed)
		return;
	p->failed = true;
	p->errline = line;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (p->err == NULL || p->errlen == 0)
		return;
	if (line > 0)
		snprintf(p->err, p->errlen, "%s:%d: %s", p->path, line, msg);
	else
		snprintf(p->err, p->errlen, "%s: %s", p->path, msg);
}

/* Same, for an error about one key: "PATH:LINE: key \"NAME\": message". */
static void __attribute__((format(printf, 4, 5)))
key_failf(Parser *p, int line, const char *key, const char *fmt, ...)
{
	char msg[900];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	failf(p, line, "key \"%s\": %s", key, msg);
}

/*
 * Fills base with the defaults of every key of scope.  Keys without a
 * default (KF_REQUIRED) stay zero / NULL.  A default that does not parse
 * is a bug in config_keys[]; test_config loads files that use every default.
 */
static bool
set_defaults(Parser *p, KeyScope scope, void *base)
{
	char msg[256];

	for (int i = 0; i < NKEYS; i++)
	{
		const KeyDef *k = &config_keys[i];

		if (k->scope != scope || k->def == NULL)
			continue;
		if (!set_value(k, base, k->def, msg, sizeof(msg)))
		{
			failf(p, 0, "internal error: default of key \"%s\": %s", k->name, msg);
			return false;
		}
	}
	return true;
}

/* A tq queue name: a letter, then letters, digits, _, - or .; 63 bytes at most. */
static bool
valid_queue_name(const char *s, char *msg, size_t msglen)
{
	size_t len = strlen(s);

	if (len == 0)
	{
		snprintf(msg, msglen, "empty queue name");
		return false;
	}
	if (len > NAME_MAX_BYTES)
	{
		snprintf(msg, msglen, "queue name longer than %d bytes", NAME_MAX_BYTES);
		return false;
	}
	for (size_t i = 0; i < len; i++)
	{
		unsigned char ch = (unsigned char) s[i];
		bool ok = ch < 0x80 && (isalpha(ch) || (i > 0 && (isdigit(ch) || strchr("_-.", ch))));

		if (!ok)
		{
			snprintf(msg, msglen,
					 "invalid queue name \"%s\": expected a letter, then letters, digits, _, - "
					 "or .",
					 s);
			return false;
		}
	}
	return true;
}

/* Appends a queue with its defaults; returns its index, or -1 (error set). */
static int
add_queue(Parser *p, const char *name, int line)
{
	Config *c = p->c;
	QueueConf *q;

	if (c->nqueues == p->qcap)
	{
		int cap = p->qcap ? p->qcap * 2 : 4;
		QueueConf *queues = realloc(c->queues, cap * sizeof(QueueConf));

		if (queues == NULL)
			goto oom;
		c->queues = queues;
		SectionState *qstate = realloc(p->qstate, cap * sizeof(SectionState));

		if (qstate == NULL)
			goto oom;
		p->qstate = qstate;
		p->qcap = cap;
	}
	q = &c->queues[c->nqueues];
	memset(q, 0, sizeof(*q));
	memset(&p->qstate[c->nqueues], 0, sizeof(SectionState));
	p->qstate[c->nqueues].header_line = line;
	/* Counted at once, so that config_free frees what follows. */
	c->nqueues++;
	q->line = line;
	q->name = strdup(name);
	if (q->name == NULL)
		goto oom;
	if (!set_defaults(p, SCOPE_QUEUE, q))
		return -1;
	return c->nqueues - 1;

oom:
	failf(p, line, "out of memory");
	return -1;
}

/* A section header "[text]" was read on the current line. */
static void
begin_section(Parser *p, const char *text, size_t len)
{
	char name[256];
	char msg[512];

	p->last_key = -1;
	snprintf(name, sizeof(name), "%.*s", (int) (len < 200 ? len : 200), text);
	if (strcmp(name, "tqd") == 0)
	{
		if (p->global.header_line != 0)
		{
			failf(p, p->lineno, "section \"tqd\": given twice (first on line %d)",
				  p->global.header_line);
			return;
		}
		p->global.header_line = p->lineno;
		p->sec = SEC_GLOBAL;
	}
	else if (strncmp(name, "queue:", 6) == 0)
	{
		const char *qname = name + 6;
		int i;

		if (!valid_queue_name(qname, msg, sizeof(msg)))
		{
			failf(p, p->lineno, "section \"%s\": %s", name, msg);
			return;
		}
		if (p->c->nqueues >= MAX_QUEUES)
		{
			failf(p, p->lineno,
				  "section \"%s\": too many queues (at most %d in one file); run another tqd "
				  "for the rest",
				  name, MAX_QUEUES);
			return;
		}
		/* Linear, but over at most MAX_QUEUES names. */
		for (i = 0; i < p->c->nqueues; i++)
		{
			if (strcmp(p->c->queues[i].name, qname) == 0)
			{
				failf(p, p->lineno, "section \"%s\": queue \"%s\" given twice (first on line %d)",
					  name, qname, p->c->queues[i].line);
				return;
			}
		}
		i = add_queue(p, qname, p->lineno);
		if (i < 0)
			return;
		p->sec = SEC_QUEUE;
		p->cur_queue = i;
	}
	else
		failf(p, p->lineno, "section \"%s\": unknown section (expected [tqd] or [queue:NAME])",
			  name);
}

/*
 * Looks at a line the way libinih will, before libinih gets it: counts it,
 * and handles a section header.  libinih's order of rules (ini.c): after
 * stripping, an empty line or one starting with ; or # is a comment; a
 * line starting with a blank continues the previous key's value, if this
 * section has one; "[" starts a section header, which needs its "]".
 */
static void
note_line(Parser *p, const char *line)
{
	const char *s = line;
	const char *start;

	if (p->lineno == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
		s += 3; /* libinih skips a UTF-8 byte order mark */
	start = skip_blanks(s);
	p->indented = start > s;
	if (*start == '\0' || *start == ';' || *start == '#')
	{
		if (p->last_key >= 0 && p->gap_line == 0)
			p->gap_line = p->lineno;
		return;
	}
	if (p->indented && p->last_key >= 0)
	{
		/*
		 * libinih joins an indented line to the last key's value even after
		 * a blank or comment line: most likely an indented key that was
		 * meant to stand alone ("slots = 3" would become part of a name).
		 */
		if (p->gap_line != 0)
			key_failf(p, p->lineno, config_keys[p->last_key].name,
					  "this indented line follows a blank or comment line (line %d), so it "
					  "would continue the value of \"%s\" (remove the indentation, or the "
					  "line between)",
					  p->gap_line, config_keys[p->last_key].name);
		return; /* a continuation line: the handler sees it */
	}
	p->gap_line = 0;
	if (*start == '[')
	{
		const char *end = strchr(start + 1, ']');

		if (end != NULL)
			begin_section(p, start + 1, end - start - 1);
		else if (p->first_bracket_error == 0)
			p->first_bracket_error = p->lineno;
	}
}

/*
 * The ini_reader: fgets, counting lines.  A line that does not fit in
 * libinih's buffer (num bytes, fixed when libinih was built) is an error
 * here: libinih would silently read its tail as a line of its own.
 * Returns NULL at the end of the file, and once an error was recorded, so
 * that the first error ends the parse.
 */
static char *
read_line(char *str, int num, void *stream)
{
	Parser *p = stream;
	size_t len;

	if (p->failed || fgets(str, num, p->f) == NULL)
		return NULL;
	p->lineno++;
	len = strlen(str);
	if (len == 0 || str[len - 1] != '\n')
	{
		int ch = getc(p->f);

		const char *start = skip_blanks(str);

		if (ch != EOF && (*start == ';' || *start == '#' || *start == '\0'))
		{
			/* A long comment (or blank line) is harmless: drop its tail. */
			while (ch != EOF && ch != '\n')
				ch = getc(p->f);
		}
		else if (ch != EOF)
		{
			failf(p, p->lineno,
				  "line too long (at most %d characters); continue a long value on the next "
				  "line, indented",
				  num - 2);
			return NULL;
		}
	}
	note_line(p, str);
	return str;
}

/*
 * An indented line continues the value of the last key (libinih calls the
 * handler again with the same name).  String values are joined with one
 * blank, so that a long conninfo or command can span lines (KF_LINES keys,
 * the http headers, with a newline: one header per line).  Any other key
 * takes one line: an indented line under it is most likely an indented key
 * that libinih took for a continuation, and saying so is the kind thing.
 */
static int
continue_value(Parser *p, const char *value)
{
	const KeyDef *k = &config_keys[p->last_key];
	void *base = p->sec == SEC_GLOBAL ? (void *) p->c : (void *) &p->c->queues[p->cur_queue];
	char **field = (char **) ((char *) base + k->offset);
	size_t vlen = strlen(value), old;
	char *joined;

	if (k->type != KT_STRING)
	{
		key_failf(p, p->lineno, k->name,
				  "this line starts with a blank, so it continues the value of \"%s\", which "
				  "takes one line (remove the indentation)",
				  k->name);
		return 0;
	}
	/*
	 * libinih does not strip an inline comment from a continuation line
	 * (unlike a key's first line): do it here, so both read the same.
	 */
	for (size_t i = 1; i < vlen; i++)
	{
		if (value[i] == ';' && is_blank(value[i - 1]))
		{
			vlen = i;
			break;
		}
	}
	while (vlen > 0 && is_blank(value[vlen - 1]))
		vlen--;
	old = strlen(*field);
	joined = realloc(*field, old + 1 + vlen + 1);
	if (joined == NULL)
	{
		failf(p, p->lineno, "out of memory");
		return 0;
	}
	if (old > 0)
		joined[old++] = (k->flags & KF_LINES) ? '\n' : ' ';
	memcpy(joined + old, value, vlen);
	joined[old + vlen] = '\0';
	*field = joined;
	return 1;
}

/* The ini_handler: one key = value of the current section. */
static int
on_value(void *user, const char *section, const char *name, const char *value)
{
	Parser *p = user;
	KeyScope scope;
	SectionState *st;
	void *base;
	char msg[512];

	if (p->failed)
		return 0;
	if (p->indented && p->last_key >= 0)
		return continue_value(p, value);
	switch (p->sec)
	{
		case SEC_GLOBAL:
			scope = SCOPE_GLOBAL;
			st = &p->global;
			base = p->c;
			break;
		case SEC_QUEUE:
			scope = SCOPE_QUEUE;
			st = &p->qstate[p->cur_queue];
			base = &p->c->queues[p->cur_queue];
			break;
		default:
			key_failf(p, p->lineno, name,
					  "outside any section (put it under [tqd] or [queue:NAME])");
			return 0;
	}
	for (int i = 0; i < NKEYS; i++)
	{
		const KeyDef *k = &config_keys[i];

		if (k->scope != scope || strcmp(k->name, name) != 0)
			continue;
		if (st->key_line[i] != 0)
		{
			key_failf(p, p->lineno, name, "given twice in this section (first on line %d)",
					  st->key_line[i]);
			return 0;
		}
		if (!set_value(k, base, value, msg, sizeof(msg)))
		{
			key_failf(p, p->lineno, name, "%s", msg);
			return 0;
		}
		st->key_line[i] = p->lineno;
		p->last_key = i;
		return 1;
	}
	/* Unknown here; a hint when it is a key of the other kind of section. */
	for (int i = 0; i < NKEYS; i++)
	{
		if (config_keys[i].scope != scope && strcmp(config_keys[i].name, name) == 0)
		{
			key_failf(p, p->lineno, name, "unknown key in %s (it belongs in %s)",
					  scope == SCOPE_GLOBAL ? "[tqd]" : "a [queue:NAME] section",
					  scope == SCOPE_GLOBAL ? "a [queue:NAME] section" : "[tqd]");
			return 0;
		}
	}
	key_failf(p, p->lineno, name, "unknown key");
	return 0;
}

static bool
check_global(Parser *p)
{
	Config *c = p->c;
	char msg[512];

	for (int i = 0; i < NKEYS; i++)
	{
		const KeyDef *k = &config_keys[i];

		if (k->scope == SCOPE_GLOBAL && k->check != NULL && p->global.key_line[i] != 0 &&
			!k->check(c, msg, sizeof(msg)))
		{
			key_failf(p, p->global.key_line[i], k->name, "%s", msg);
			return false;
		}
	}

	if (c->reconnect_max < c->reconnect_min)
	{
		int imin = -1, imax = -1;
		char lo[32], hi[32];

		for (int i = 0; i < NKEYS; i++)
		{
			if (config_keys[i].scope == SCOPE_GLOBAL &&
				strcmp(config_keys[i].name, "reconnect_min") == 0)
				imin = i;
			if (config_keys[i].scope == SCOPE_GLOBAL &&
				strcmp(config_keys[i].name, "reconnect_max") == 0)
				imax = i;
		}
		format_duration(c->reconnect_max, hi, sizeof(hi));
		format_duration(c->reconnect_min, lo, sizeof(lo));
		/* Blame the key that was written (the defaults agree with each other). */
		if (p->global.key_line[imax] != 0)
			key_failf(p, p->global.key_line[imax], "reconnect_max",
					  "%s is less than reconnect_min (%s)", hi, lo);
		else
			key_failf(p, p->global.key_line[imin], "reconnect_min",
					  "%s is more than reconnect_max (%s)", lo, hi);
		return false;
	}
	return true;
}

/*
 * The rules that depend on the handler, which may be given after the keys
 * it governs: a handler is required; a key of another handler is refused;
 * a key required by this handler must be there; then the keys' checks.
 */
static bool
check_queue(Parser *p, int qi)
{
	QueueConf *q = &p->c->queues[qi];
	SectionState *st = &p->qstate[qi];
	char msg[512], which[64];

	/* First the handler itself: every other rule depends on it. */
	for (int i = 0; i < NKEYS; i++)
	{
		const KeyDef *k = &config_keys[i];

		if (k->scope == SCOPE_QUEUE && k->names == handler_names && st->key_line[i] == 0)
		{
			format_names(handler_names, " or ", which, sizeof(which));
			failf(p, q->line, "section \"queue:%s\": key \"%s\" is required (%s)", q->name, k->name,
				  which);
			return false;
		}
	}
	for (int i = 0; i < NKEYS; i++)
	{
		const KeyDef *k = &config_keys[i];
		bool applies = k->handlers == 0 || (k->handlers & ONLY(q->handler));

		if (k->scope != SCOPE_QUEUE)
			continue;
		/*
		 * A key of another handler is refused rather than ignored: it
		 * means the file does not say what its author thinks it says
		 * (a command under handler sql, say).
		 */
		format_handlers(k->handlers, which, sizeof(which));
		if (!applies && st->key_line[i] != 0)
		{
			key_failf(p, st->key_line[i], k->name, "only for handler %s (this queue's is %s)",
					  which, handler_names[q->handler]);
			return false;
		}
		if (applies && (k->flags & KF_REQUIRED) && st->key_line[i] == 0)
		{
			failf(p, q->line, "section \"queue:%s\": key \"%s\" is required for handler %s",
				  q->name, k->name, handler_names[q->handler]);
			return false;
		}
		if (applies && k->check != NULL && st->key_line[i] != 0 && !k->check(q, msg, sizeof(msg)))
		{
			key_failf(p, st->key_line[i], k->name, "%s", msg);
			return false;
		}
	}
	return true;
}

/*
 * Reading happens in three steps: the defaults, the file (libinih calling
 * on_value, read_line noting sections), then the checks that need the
 * whole file (queues present, cross-key rules, per-handler rules).
 */
Config *
config_load(const char *path, char *err, size_t errlen)
{
	Parser p = {.path = path, .err = err, .errlen = errlen, .sec = SEC_NONE, .last_key = -1};
	struct stat st;
	int ret;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	p.c = calloc(1, sizeof(Config));
	if (p.c == NULL || (p.c->path = strdup(path)) == NULL)
	{
		failf(&p, 0, "out of memory");
		goto fail;
	}
	if (!set_defaults(&p, SCOPE_GLOBAL, p.c))
		goto fail;
	p.f = fopen(path, "r");
	if (p.f == NULL)
	{
		failf(&p, 0, "cannot open: %m");
		goto fail;
	}
	/* The mode of the file read, not of whatever is at path later. */
	if (fstat(fileno(p.f), &st) == 0)
		p.c->file_mode = st.st_mode & 07777;

	ret = ini_parse_stream(read_line, &p, on_value, &p);
	/*
	 * libinih returns the first line it found wrong: a line of ours (the
	 * handler said no), or a syntax error it found itself, which we only
	 * learn here.  The earlier one is the one to report.
	 */
	if (ret > 0 && (!p.failed || ret < p.errline))
	{
		p.failed = false;
		if (ret == p.first_bracket_error)
			failf(&p, ret, "syntax error: section header without a closing \"]\"");
		else
			failf(&p, ret,
				  "syntax error: expected \"key = value\", \"[section]\" or a comment (; or #)");
	}
	else if (ret < 0 && !p.failed)
		failf(&p, 0, "out of memory");
	if (!p.failed && ferror(p.f))
		failf(&p, 0, "cannot read: %m");
	if (p.failed)
		goto fail;

	if (p.c->nqueues == 0)
	{
		failf(&p, 0, "no queue: add a [queue:NAME] section for each queue tqd serves");
		goto fail;
	}
	if (!check_global(&p))
		goto fail;
	for (int i = 0; i < p.c->nqueues; i++)
		if (!check_queue(&p, i))
			goto fail;

	fclose(p.f);
	free(p.qstate);
	return p.c;

fail:
	if (p.f != NULL)
		fclose(p.f);
	free(p.qstate);
	config_free(p.c);
	return NULL;
}

/* Frees c and everything it owns; NULL is allowed. */
void
config_free(Config *c)
{
	if (c == NULL)
		return;
	for (int i = 0; i < c->nqueues; i++)
	{
		QueueConf *q = &c->queues[i];

		free(q->name);
		free(q->command);
		free_argv(q->argv);
		free(q->function);
		free(q->pass_env);
		free(q->url);
		free(q->url_shown);
		free(q->headers);
		free_argv(q->header_list);
		free(q->ca_file);
	}
	free(c->queues);
	free(c->path);
	free(c->conninfo);
	free(c->worker_name);
	free(c->metrics_listen);
	free(c->http_allowed_hosts);
	free_argv(c->allowed_hosts);
	free(c->http_token_file);
	free_secret(c->http_token);
	free(c);
}

/* A linear search: a tqd serves a handful of queues, not thousands. */
const QueueConf *
config_queue(const Config *c, const char *name)
{
	for (int i = 0; i < c->nqueues; i++)
		if (strcmp(c->queues[i].name, name) == 0)
			return &c->queues[i];
	return NULL;
}
