/*
 * config.c
 *	  tqd's configuration file: an INI file read with libinih and checked
 *	  against one declarative table of keys (keys[] below).
 *
 * The table is the single source of truth: parsing, defaults, bounds, the
 * cross-handler rules, config_print_defaults (hence the sample file
 * worker/tqd.conf.sample) and the error messages are all driven by it.  A
 * key's name is the name of its field in Config or QueueConf (the KEY macro
 * takes the field and stringifies it), so the two cannot drift apart.
 *
 * Why a reader of our own: libinih does not report line numbers to the
 * handler in the build Debian ships (INI_HANDLER_LINENO is 0), truncates
 * section names to 49 bytes, does not call the handler for a section with
 * no keys, and silently splits a line longer than its buffer into two.  So
 * read_line() feeds libinih through fgets while counting lines and noting
 * section headers itself, mirroring libinih's rules for which line is a
 * header, a comment or a continuation; the handler only sees key = value.
 *
 * Error handling: the first error wins.  It is written into the caller's
 * buffer as "FILE:LINE: key \"KEY\": ...", "FILE:LINE: section \"S\": ..."
 * or "FILE: ..."; reading stops at once (read_line returns EOF), and
 * config_load frees the half-built Config.
 *
 * Ownership: the Config owns every string and array in it (config.h).
 * The Parser only lives for one config_load call.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <ini.h>
#include <libpq-fe.h>
#include <strings.h>
#include <unistd.h>

#include "config.h"
#include "httpd.h"
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

/* Limits of the tq names, as tq.check_name enforces them in SQL. */
#define NAME_MAX_BYTES 63

/* Enum fields (LogLevel, HandlerKind) are written through an int pointer. */
_Static_assert(sizeof(LogLevel) == sizeof(int), "LogLevel is stored as an int");
_Static_assert(sizeof(HandlerKind) == sizeof(int), "HandlerKind is stored as an int");

typedef enum KeyScope
{
	SCOPE_GLOBAL, /* [tqd], a field of Config */
	SCOPE_QUEUE,  /* [queue:NAME], a field of QueueConf */
} KeyScope;

typedef enum KeyType
{
	KT_STRING,   /* char *, as written (continuation lines joined by a blank) */
	KT_INT,      /* int, plain decimal */
	KT_DURATION, /* double seconds, written with ms, s, min or h */
	KT_SIZE,     /* size_t bytes, written with B, kB, MB or GB (1024-based) */
	KT_ENUM,     /* int, one of the key's names[] (its index) */
	KT_REAL,     /* double, plain decimal with an optional fraction (0.5) */
} KeyType;

/* Key flags. */
#define KF_REQUIRED 0x01 /* no default: must be given (where the key applies) */
#define KF_ZERO_OK 0x02  /* 0 is allowed besides [min, max] (0 = none, automatic) */
#define KF_LINES 0x04    /* KT_STRING: continuation lines are joined by a newline */

/* A handler mask: the handlers a queue key applies to; 0 = all of them. */
#define ONLY(h) (1u << (h))

/*
 * An extra check of a key's value, run once the whole file was read (so
 * that a value continued on the next lines is complete).  Returns false
 * with a message in msg when the value is not acceptable.  The check may
 * fill derived fields (command -> argv).
 */
typedef bool (*KeyCheck)(void *base, char *msg, size_t msglen);

typedef struct KeyDef
{
	KeyScope scope;
	const char *name; /* the key, and the name of its field */
	KeyType type;
	const char *def;          /* default, as it is written in the file; NULL = none */
	const char *example;      /* KF_REQUIRED keys: the value the sample shows */
	size_t offset;            /* of the field in Config or QueueConf */
	double min;               /* bounds, in the stored unit (int, s, bytes) */
	double max;               /* INFINITY = no upper bound */
	unsigned flags;           /* KF_* */
	unsigned handlers;        /* queue keys: ONLY(...) mask; 0 = every handler */
	const char *const *names; /* KT_ENUM: the values, in enum order, NULL-ended */
	KeyCheck check;           /* NULL, or run after the file was read */
	const char *desc;         /* one sentence for the sample file */
} KeyDef;

static const char *const handler_names[] = {"noop", "exec", "sql", "http", NULL};
static const char *const method_names[] = {"POST", "PUT", "PATCH", NULL};
static const char *const off_on_names[] = {"off", "on", NULL};
static const char *const log_level_names[] = {"debug", "info", "warning", "error", NULL};

static bool check_conninfo(void *base, char *msg, size_t msglen);
static bool check_command(void *base, char *msg, size_t msglen);
static bool check_function(void *base, char *msg, size_t msglen);
static bool check_throttled_exit(void *base, char *msg, size_t msglen);
static bool check_url(void *base, char *msg, size_t msglen);
static bool check_headers(void *base, char *msg, size_t msglen);
static bool check_ca_file(void *base, char *msg, size_t msglen);
static bool check_aimd_min(void *base, char *msg, size_t msglen);
static bool check_metrics_listen(void *base, char *msg, size_t msglen);
static bool check_dashboard(void *base, char *msg, size_t msglen);

#define MS 0.001
#define MIN 60.0
#define HOUR 3600.0
#define KB 1024.0
#define MB (1024.0 * 1024.0)
#define GB (1024.0 * 1024.0 * 1024.0)

#define KEY(scope_, struct_, field_, type_, def_, min_, max_, ...)                                 \
	{                                                                                              \
		.scope = (scope_), .name = #field_, .type = (type_), .def = (def_),                        \
		.offset = offsetof(struct_, field_), .min = (min_), .max = (max_), __VA_ARGS__             \
	}
#define G(field_, ...) KEY(SCOPE_GLOBAL, Config, field_, __VA_ARGS__)
#define Q(field_, ...) KEY(SCOPE_QUEUE, QueueConf, field_, __VA_ARGS__)

/*
 * Every key tqd knows, in the order the sample file shows them.  Changing a
 * default here changes the sample's expectation: regenerate the part of
 * tqd.conf.sample below its header with tqd --print-defaults (test_config
 * checks that they agree).
 */
static const KeyDef keys[] = {
	/* [tqd] */
	G(conninfo, KT_STRING, "", 0, 0, .check = check_conninfo,
	  .desc = "libpq connection string (\"host=db dbname=app\" or a postgresql:// URI); "
			  "empty = libpq's defaults from the environment (PGHOST, PGDATABASE, ...)."),
	G(worker_name, KT_STRING, "", 0, 0,
	  .desc = "This worker's name in tq's views and logs; empty = host:pid."),
	G(slots, KT_INT, "16", 1, 10000, .desc = "Tasks running at once, over all queues."),
	G(lease_batch, KT_INT, "50", 1, 10000, .desc = "Most tasks leased in one call."),
	G(flush_interval, KT_DURATION, "5ms", 0, 10,
	  .desc = "Outcomes of finished tasks are sent to the database in groups, this often."),
	G(poll_interval, KT_DURATION, "5s", 10 * MS, HOUR,
	  .desc = "Lease this often even without a notification, as a safety net."),
	G(heartbeat_interval, KT_DURATION, "0", 0, HOUR,
	  .desc = "Leases of running tasks are renewed this often; "
			  "0 = automatic, a third of the shortest lease."),
	G(drain_timeout, KT_DURATION, "30s", 0, 24 * HOUR,
	  .desc = "On SIGTERM, running tasks get this long to finish; "
			  "the rest are handed back without penalty."),
	G(reconnect_min, KT_DURATION, "100ms", 1 * MS, MIN,
	  .desc = "First delay before reconnecting to the database; it doubles at each failure."),
	G(reconnect_max, KT_DURATION, "10s", 1 * MS, HOUR,
	  .desc = "Longest delay between reconnection attempts; at least reconnect_min."),
	G(connect_timeout, KT_DURATION, "10s", 1, 10 * MIN,
	  .desc = "One connection attempt gives up after this long."),
	G(status_interval, KT_DURATION, "1min", 10 * MS, 24 * HOUR, .flags = KF_ZERO_OK,
	  .desc = "A status line per http endpoint (window, in flight, answers, throttled) "
			  "this often; 0 = never."),
	G(metrics_listen, KT_STRING, "", 0, 0, .check = check_metrics_listen,
	  .desc = "Address of the HTTP endpoint for /metrics (Prometheus), /healthz and /readyz, "
			  "e.g. 127.0.0.1:9187 (port 0: any free port, logged); empty = off."),
	G(dashboard, KT_ENUM, "off", 0, 0, .names = off_on_names, .check = check_dashboard,
	  .desc = "Serve the read-only dashboard (queues, rates, dead tasks, a task's attempts, "
			  "log and result) at / on metrics_listen.  It shows task payloads, errors and "
			  "results: keep the address private, or put an authenticating proxy in front."),
	G(log_level, KT_ENUM, "info", 0, 0, .names = log_level_names,
	  .desc = "Least severe messages logged."),

	/* [queue:NAME] */
	Q(handler, KT_ENUM, NULL, 0, 0, .flags = KF_REQUIRED, .example = "exec", .names = handler_names,
	  .desc = "How tasks are run: noop completes them at once, exec runs a program, "
			  "sql calls a database function, http sends the payload to a URL."),
	Q(concurrency, KT_INT, "4", 1, 10000,
	  .desc = "Tasks of this queue running at once in this tqd (http: the most requests "
			  "in flight; the adaptive window stays at or below it)."),
	Q(timeout, KT_DURATION, "0", 0, 7 * 24 * HOUR,
	  .desc = "Longest run of a task; 0 = the task's own timeout only, "
			  "else the smaller of the two."),
	Q(kill_grace, KT_DURATION, "5s", 0, HOUR,
	  .desc = "Time between SIGTERM and SIGKILL when a task is stopped."),
	Q(command, KT_STRING, NULL, 0, 0, .flags = KF_REQUIRED, .example = "/bin/cat",
	  .handlers = ONLY(HANDLER_EXEC), .check = check_command,
	  .desc = "Program run for each task, split into words without a shell "
			  "(quotes and backslashes as in sh, nothing else); the payload comes on "
			  "stdin, stdout is the result, stderr the task's log."),
	Q(max_output, KT_SIZE, "256kB", 0, GB, .handlers = ONLY(HANDLER_EXEC) | ONLY(HANDLER_HTTP),
	  .desc = "Bytes of stdout (http: of the response body) kept as the result (tq refuses "
			  "results over tq.max_payload_size, 1MB by default)."),
	Q(max_log_bytes, KT_SIZE, "64kB", 0, 16 * MB, .handlers = ONLY(HANDLER_EXEC),
	  .desc = "Bytes of stderr kept as the task's log."),
	Q(max_log_lines, KT_INT, "1000", 0, 1000000, .handlers = ONLY(HANDLER_EXEC),
	  .desc = "Lines of stderr kept as the task's log."),
	Q(memory_limit, KT_SIZE, "0", MB, INFINITY, .flags = KF_ZERO_OK, .handlers = ONLY(HANDLER_EXEC),
	  .desc = "Address space of the program (RLIMIT_AS); 0 = no limit."),
	Q(cpu_limit, KT_DURATION, "0", 1, 7 * 24 * HOUR, .flags = KF_ZERO_OK,
	  .handlers = ONLY(HANDLER_EXEC),
	  .desc = "CPU time of the program (RLIMIT_CPU, whole seconds); 0 = no limit."),
	Q(throttled_exit, KT_INT, "69", 1, 255, .handlers = ONLY(HANDLER_EXEC),
	  .check = check_throttled_exit,
	  .desc = "Exit status meaning \"throttled\": the task is retried later without "
			  "counting an attempt.  Not 64, 65 or 75, which have their own meaning."),
	Q(function, KT_STRING, NULL, 0, 0, .flags = KF_REQUIRED, .example = "app.handle_task",
	  .handlers = ONLY(HANDLER_SQL), .check = check_function,
	  .desc = "Function called with each task's payload, as name or schema.name."),
	Q(url, KT_STRING, NULL, 0, 0, .flags = KF_REQUIRED, .example = "https://api.example.com/tasks",
	  .handlers = ONLY(HANDLER_HTTP), .check = check_url,
	  .desc = "Where each task is sent (http:// or https://); the payload is the body, "
			  "never part of the URL."),
	Q(method, KT_ENUM, "POST", 0, 0, .names = method_names, .handlers = ONLY(HANDLER_HTTP),
	  .desc = "HTTP method of the request."),
	Q(headers, KT_STRING, "", 0, 0, .flags = KF_LINES, .handlers = ONLY(HANDLER_HTTP),
	  .check = check_headers,
	  .desc = "Extra request headers, \"Name: value\", one per line (continue on indented "
			  "lines).  tqd sets Content-Type: application/json unless given here, and "
			  "X-TQ-Task-Id, X-TQ-Attempt, X-TQ-Queue, X-TQ-Tenant, X-TQ-Deadline and (for a "
			  "task that has one) traceparent, which cannot be set here."),
	Q(tls_verify, KT_ENUM, "on", 0, 0, .names = off_on_names, .handlers = ONLY(HANDLER_HTTP),
	  .desc = "Check the server's TLS certificate and host name (https)."),
	Q(ca_file, KT_STRING, "", 0, 0, .handlers = ONLY(HANDLER_HTTP), .check = check_ca_file,
	  .desc = "PEM file of the CA certificates trusted for https; empty = the system's."),
	Q(adaptive, KT_ENUM, "on", 0, 0, .names = off_on_names, .handlers = ONLY(HANDLER_HTTP),
	  .desc = "Adapt the requests in flight to what the endpoint takes (AIMD on its 429 "
			  "and 503 answers); off = always concurrency."),
	Q(aimd_initial, KT_INT, "4", 1, 10000, .handlers = ONLY(HANDLER_HTTP),
	  .desc = "Window (requests in flight) at start, at most concurrency."),
	Q(aimd_min, KT_INT, "1", 1, 10000, .handlers = ONLY(HANDLER_HTTP), .check = check_aimd_min,
	  .desc = "The window is never cut below this."),
	Q(aimd_interval, KT_DURATION, "1s", 10 * MS, HOUR, .handlers = ONLY(HANDLER_HTTP),
	  .desc = "The window grows by one slot per interval in which answers came, none was "
			  "throttled and the window was the limit (doubles instead until the first cut, "
			  "with aimd_slow_start)."),
	Q(aimd_decrease, KT_REAL, "0.5", 0.05, 0.95, .handlers = ONLY(HANDLER_HTTP),
	  .desc = "A cut multiplies the window by this."),
	Q(aimd_throttle_rate, KT_REAL, "0.05", 0, 1, .handlers = ONLY(HANDLER_HTTP),
	  .desc = "Share of the answers in aimd_throttle_window that must be throttled (429, "
			  "503) for a cut."),
	Q(aimd_throttle_count, KT_INT, "3", 1, 1000000, .handlers = ONLY(HANDLER_HTTP),
	  .desc = "Throttled answers in aimd_throttle_window needed for a cut, at least: one "
			  "stray 429 does not cut."),
	Q(aimd_throttle_window, KT_DURATION, "1s", 10 * MS, HOUR, .handlers = ONLY(HANDLER_HTTP),
	  .desc = "The recent answers counted for a cut."),
	Q(aimd_cooldown, KT_DURATION, "2s", 0, HOUR, .handlers = ONLY(HANDLER_HTTP),
	  .desc = "After a cut the window does not grow for this long."),
	Q(aimd_slow_start, KT_ENUM, "on", 0, 0, .names = off_on_names, .handlers = ONLY(HANDLER_HTTP),
	  .desc = "Double the window per healthy interval until the first cut, as TCP does."),
};

#define NKEYS ((int) lengthof(keys))

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
	int last_key;         /* index into keys[] of the last key of this section, or -1 */
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

static bool
is_blank(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

static const char *
skip_blanks(const char *s)
{
	while (*s && is_blank(*s))
		s++;
	return s;
}

/* ---------------------------------------------------------------------
 * Formatting values and ranges, for messages and the sample file
 * --------------------------------------------------------------------- */

/* A duration in its largest exact unit: 0.005 -> "5ms", 120 -> "2min". */
static void
format_duration(double s, char *buf, size_t len)
{
	if (s == 0)
		snprintf(buf, len, "0");
	else if (isinf(s))
		snprintf(buf, len, "unlimited");
	else if (fmod(s, HOUR) == 0)
		snprintf(buf, len, "%.0fh", s / HOUR);
	else if (fmod(s, MIN) == 0)
		snprintf(buf, len, "%.0fmin", s / MIN);
	else if (fmod(s, 1) == 0)
		snprintf(buf, len, "%.0fs", s);
	else
		snprintf(buf, len, "%gms", s * 1000);
}

/* A size in its largest exact unit: 65536 -> "64kB". */
static void
format_size(double b, char *buf, size_t len)
{
	if (b == 0)
		snprintf(buf, len, "0");
	else if (isinf(b))
		snprintf(buf, len, "unlimited");
	else if (fmod(b, GB) == 0)
		snprintf(buf, len, "%.0fGB", b / GB);
	else if (fmod(b, MB) == 0)
		snprintf(buf, len, "%.0fMB", b / MB);
	else if (fmod(b, KB) == 0)
		snprintf(buf, len, "%.0fkB", b / KB);
	else
		snprintf(buf, len, "%.0fB", b);
}

static void
format_bound(const KeyDef *k, double v, char *buf, size_t len)
{
	switch (k->type)
	{
		case KT_DURATION:
			format_duration(v, buf, len);
			break;
		case KT_SIZE:
			format_size(v, buf, len);
			break;
		case KT_REAL:
			snprintf(buf, len, "%g", v);
			break;
		default:
			snprintf(buf, len, "%.0f", v);
			break;
	}
}

/* "1 to 10000", "10ms to 1h", "0, or at least 1MB", "0, or 1s to 168h". */
static void
format_range(const KeyDef *k, char *buf, size_t len)
{
	char lo[32], hi[32];

	format_bound(k, k->min, lo, sizeof(lo));
	format_bound(k, k->max, hi, sizeof(hi));
	if ((k->flags & KF_ZERO_OK) && isinf(k->max))
		snprintf(buf, len, "0, or at least %s", lo);
	else if (k->flags & KF_ZERO_OK)
		snprintf(buf, len, "0, or %s to %s", lo, hi);
	else if (isinf(k->max))
		snprintf(buf, len, "at least %s", lo);
	else
		snprintf(buf, len, "%s to %s", lo, hi);
}

/* "noop, exec or sql". */
static void
format_names(const char *const *names, const char *last_sep, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (int i = 0; names[i] != NULL && used < len; i++)
	{
		const char *sep = i == 0 ? "" : names[i + 1] == NULL ? last_sep : ", ";

		used += snprintf(buf + used, len - used, "%s%s", sep, names[i]);
	}
}

/* "exec", or "exec and sql" for a key that applies to several handlers. */
static void
format_handlers(unsigned mask, char *buf, size_t len)
{
	const char *which[lengthof(handler_names)];
	int n = 0;

	for (int h = 0; handler_names[h] != NULL; h++)
		if (mask & ONLY(h))
			which[n++] = handler_names[h];
	which[n] = NULL;
	format_names(which, " and ", buf, len);
}

/* ---------------------------------------------------------------------
 * Parsing values
 * --------------------------------------------------------------------- */

/*
 * Reads a decimal number "123" or "1.5" (no sign, no exponent: what a
 * person writes in a config) at *s as mantissa / 10^*scale, and moves *s
 * past it.  Keeping the digits as an integer lets the caller divide once,
 * so that "10ms" is exactly the double 0.01.  At most 15 digits, which a
 * double holds exactly.  Returns false when no number is there.
 */
static bool
scan_decimal(const char **s, bool allow_fraction, double *mantissa, int *scale)
{
	const char *q = *s;
	double m = 0;
	int digits = 0, sc = 0;

	while (isdigit((unsigned char) *q))
	{
		m = m * 10 + (*q++ - '0');
		digits++;
	}
	if (digits == 0)
		return false;
	if (allow_fraction && *q == '.')
	{
		q++;
		if (!isdigit((unsigned char) *q))
			return false;
		while (isdigit((unsigned char) *q))
		{
			m = m * 10 + (*q++ - '0');
			digits++;
			sc++;
		}
	}
	if (digits > 15)
		return false;
	*mantissa = m;
	*scale = sc;
	*s = q;
	return true;
}

static bool
is_zero(const char *s)
{
	return strcmp(s, "0") == 0;
}

/*
 * "250ms", "5s", "1.5s", "2min", "1h" -> seconds.  A bare number is refused
 * (is 5 seconds or milliseconds meant?), except 0, which is the same in
 * every unit and reads naturally as "none".
 */
static bool
parse_duration(const char *value, double *out, char *msg, size_t msglen)
{
	static const struct
	{
		const char *unit;
		double mul, div;
	} units[] = {{"ms", 1, 1000}, {"s", 1, 1}, {"min", MIN, 1}, {"h", HOUR, 1}};
	const char *s = value;
	double m;
	int scale;

	if (is_zero(value))
	{
		*out = 0;
		return true;
	}
	if (!scan_decimal(&s, true, &m, &scale))
	{
		snprintf(msg, msglen,
				 "invalid duration \"%s\": expected a number and a unit (ms, s, min or h), "
				 "e.g. 250ms, 1.5s or 2min",
				 value);
		return false;
	}
	s = skip_blanks(s);
	if (*s == '\0')
	{
		snprintf(msg, msglen, "\"%s\" has no unit: add one of ms, s, min or h (e.g. %ss)", value,
				 value);
		return false;
	}
	for (size_t i = 0; i < lengthof(units); i++)
	{
		if (strcmp(s, units[i].unit) == 0)
		{
			*out = m * units[i].mul / (pow(10, scale) * units[i].div);
			return true;
		}
	}
	snprintf(msg, msglen, "invalid duration \"%s\": unknown unit \"%s\" (use ms, s, min or h)",
			 value, s);
	return false;
}

/* "64kB", "1MB" -> bytes (1024-based).  Whole numbers only; bare 0 allowed. */
static bool
parse_size(const char *value, double *out, char *msg, size_t msglen)
{
	static const struct
	{
		const char *unit;
		double mul;
	} units[] = {{"B", 1}, {"kB", KB}, {"MB", MB}, {"GB", GB}};
	const char *s = value;
	double m;
	int scale;

	if (is_zero(value))
	{
		*out = 0;
		return true;
	}
	/* A fraction is scanned only to be refused with the right message. */
	if (!scan_decimal(&s, true, &m, &scale) || scale > 0)
	{
		snprintf(msg, msglen,
				 "invalid size \"%s\": expected a whole number and a unit (B, kB, MB or GB), "
				 "e.g. 64kB or 1MB",
				 value);
		return false;
	}
	s = skip_blanks(s);
	if (*s == '\0')
	{
		snprintf(msg, msglen, "\"%s\" has no unit: add one of B, kB, MB or GB (e.g. %skB)", value,
				 value);
		return false;
	}
	for (size_t i = 0; i < lengthof(units); i++)
	{
		if (strcmp(s, units[i].unit) == 0)
		{
			*out = m * units[i].mul;
			return true;
		}
	}
	snprintf(msg, msglen,
			 "invalid size \"%s\": unknown unit \"%s\" (use B, kB, MB or GB; 1kB = 1024B)", value,
			 s);
	return false;
}

/*
 * "16", "-3" -> a whole number (the bounds check comes after).  Read as a
 * double, like the other numbers, so that one bounds check serves every
 * type and a huge value is "out of range" rather than a silent overflow.
 */
static bool
parse_int(const char *value, double *out)
{
	const char *s = value;
	bool neg = false;
	double m;
	int scale;

	if (*s == '-' || *s == '+')
		neg = *s++ == '-';
	if (!scan_decimal(&s, false, &m, &scale) || *s != '\0')
		return false;
	*out = neg ? -m : m;
	return true;
}

/*
 * Parses value for key k and stores it into base (a Config or a
 * QueueConf).  Returns false with a message (without the location) in msg.
 */
static bool
set_value(const KeyDef *k, void *base, const char *value, char *msg, size_t msglen)
{
	char *field = (char *) base + k->offset;
	char range[128];
	double v = 0;

	switch (k->type)
	{
		case KT_STRING:
		{
			/* Replaces the default (or an earlier value): free the old one. */
			char *copy = strdup(value);

			if (copy == NULL)
			{
				snprintf(msg, msglen, "out of memory");
				return false;
			}
			free(*(char **) field);
			*(char **) field = copy;
			return true;
		}
		case KT_ENUM:
			/* Case-sensitive, like the keys: one spelling per value. */
			for (int i = 0; k->names[i] != NULL; i++)
			{
				if (strcmp(value, k->names[i]) == 0)
				{
					*(int *) field = i;
					return true;
				}
			}
			format_names(k->names, " or ", range, sizeof(range));
			snprintf(msg, msglen, "invalid value \"%s\": expected %s", value, range);
			return false;
		case KT_INT:
			format_range(k, range, sizeof(range));
			if (!parse_int(value, &v))
			{
				snprintf(msg, msglen, "invalid value \"%s\": expected a whole number, %s", value,
						 range);
				return false;
			}
			break;
		case KT_DURATION:
			if (!parse_duration(value, &v, msg, msglen))
				return false;
			break;
		case KT_SIZE:
			if (!parse_size(value, &v, msg, msglen))
				return false;
			break;
		case KT_REAL:
		{
			const char *s = value;
			double m;
			int scale;

			format_range(k, range, sizeof(range));
			if (!scan_decimal(&s, true, &m, &scale) || *s != '\0')
			{
				snprintf(msg, msglen, "invalid value \"%s\": expected a number such as 0.5, %s",
						 value, range);
				return false;
			}
			v = m / pow(10, scale);
			break;
		}
	}

	/* Numbers: the bounds (and what a size_t holds), then the store. */
	if ((!(v == 0 && (k->flags & KF_ZERO_OK)) && (v < k->min || v > k->max)) ||
		(k->type == KT_SIZE && v >= 0x1p64))
	{
		format_range(k, range, sizeof(range));
		snprintf(msg, msglen, "%s is out of range (%s)", value, range);
		return false;
	}
	switch (k->type)
	{
		case KT_INT:
			*(int *) field = (int) v;
			break;
		case KT_DURATION:
		case KT_REAL:
			*(double *) field = v;
			break;
		case KT_SIZE:
			*(size_t *) field = (size_t) v;
			break;
		default:
			break;
	}
	return true;
}

/*
 * Fills base with the defaults of every key of scope.  Keys without a
 * default (KF_REQUIRED) stay zero / NULL.  A default that does not parse
 * is a bug in keys[]; test_config loads files that use every default.
 */
static bool
set_defaults(Parser *p, KeyScope scope, void *base)
{
	char msg[256];

	for (int i = 0; i < NKEYS; i++)
	{
		const KeyDef *k = &keys[i];

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

/* ---------------------------------------------------------------------
 * Per-key checks (KeyDef.check)
 * --------------------------------------------------------------------- */

static bool
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
static bool
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
static bool
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

static bool
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
 * The URL is parsed with libcurl's own parser, the one that will use it:
 * what it accepts here is what the requests go to.  Only http and https.
 */
static bool
check_url(void *base, char *msg, size_t msglen)
{
	QueueConf *q = base;
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL;
	CURLUcode rc;
	bool good = false;

	if (u == NULL)
	{
		snprintf(msg, msglen, "out of memory");
		return false;
	}
	rc = curl_url_set(u, CURLUPART_URL, q->url, 0);
	if (rc != CURLUE_OK)
		snprintf(msg, msglen, "invalid URL \"%s\": %s", q->url, curl_url_strerror(rc));
	else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
			 (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
		snprintf(msg, msglen, "invalid URL \"%s\": the scheme must be http or https", q->url);
	else if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || host[0] == '\0')
		snprintf(msg, msglen, "invalid URL \"%s\": no host", q->url);
	else
		good = true;
	curl_free(scheme);
	curl_free(host);
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
static bool
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

static bool
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
static bool
check_metrics_listen(void *base, char *msg, size_t msglen)
{
	Config *c = base;
	struct sockaddr_storage ss;
	socklen_t len;

	return c->metrics_listen[0] == '\0' ||
		   httpd_parse_addr(c->metrics_listen, &ss, &len, msg, msglen) == 0;
}

static bool
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

static bool
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

/* ---------------------------------------------------------------------
 * Sections
 * --------------------------------------------------------------------- */

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
			key_failf(p, p->lineno, keys[p->last_key].name,
					  "this indented line follows a blank or comment line (line %d), so it "
					  "would continue the value of \"%s\" (remove the indentation, or the "
					  "line between)",
					  p->gap_line, keys[p->last_key].name);
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
	const KeyDef *k = &keys[p->last_key];
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
		const KeyDef *k = &keys[i];

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
		if (keys[i].scope != scope && strcmp(keys[i].name, name) == 0)
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

/* ---------------------------------------------------------------------
 * Checks once the whole file was read
 * --------------------------------------------------------------------- */

static bool
check_global(Parser *p)
{
	Config *c = p->c;
	char msg[512];

	for (int i = 0; i < NKEYS; i++)
	{
		const KeyDef *k = &keys[i];

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
			if (keys[i].scope == SCOPE_GLOBAL && strcmp(keys[i].name, "reconnect_min") == 0)
				imin = i;
			if (keys[i].scope == SCOPE_GLOBAL && strcmp(keys[i].name, "reconnect_max") == 0)
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
		const KeyDef *k = &keys[i];

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
		const KeyDef *k = &keys[i];
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

/* ---------------------------------------------------------------------
 * Public functions
 * --------------------------------------------------------------------- */

/*
 * Reading happens in three steps: the defaults, the file (libinih calling
 * on_value, read_line noting sections), then the checks that need the
 * whole file (queues present, cross-key rules, per-handler rules).
 */
Config *
config_load(const char *path, char *err, size_t errlen)
{
	Parser p = {.path = path, .err = err, .errlen = errlen, .sec = SEC_NONE, .last_key = -1};
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
		free(q->url);
		free(q->headers);
		free_argv(q->header_list);
		free(q->ca_file);
	}
	free(c->queues);
	free(c->path);
	free(c->conninfo);
	free(c->worker_name);
	free(c->metrics_listen);
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

/* snprintf into the caller's err, which may be NULL. */
static void __attribute__((format(printf, 3, 4)))
set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/*
 * Adds a copy of word (len bytes) to the growing argv, keeping it
 * NULL-terminated; word NULL only terminates.  False when out of memory.
 */
static bool
push_word(char ***argv, int *n, int *cap, const char *word, size_t len)
{
	if (*n + 1 >= *cap)
	{
		int newcap = *cap ? *cap * 2 : 8;
		char **grown = realloc(*argv, newcap * sizeof(char *));

		if (grown == NULL)
			return false;
		*argv = grown;
		*cap = newcap;
	}
	if (word != NULL)
	{
		if (((*argv)[*n] = strndup(word, len)) == NULL)
			return false;
		(*n)++;
	}
	(*argv)[*n] = NULL;
	return true;
}

/*
 * The rules are sh's for quotes and backslashes, and only those: what the
 * user would type at a prompt for a plain command, with nothing expanded.
 * A word is built in a buffer as long as the input, which no word exceeds.
 */
int
split_argv(const char *s, char ***argvp, char *err, size_t errlen)
{
	char **argv = NULL;
	int n = 0, cap = 0;
	char *word = malloc(strlen(s) + 1);
	const char *q = s;

	*argvp = NULL;
	if (word == NULL || !push_word(&argv, &n, &cap, NULL, 0))
		goto oom;
	for (;;)
	{
		size_t len = 0;

		q = skip_blanks(q);
		if (*q == '\0')
			break;
		while (*q != '\0' && !is_blank(*q))
		{
			if (*q == '\'')
			{
				/* '...': everything literal up to the next quote, even \. */
				const char *end = strchr(q + 1, '\'');

				if (end == NULL)
				{
					set_err(err, errlen, "unterminated single quote at character %d",
							(int) (q - s) + 1);
					goto fail;
				}
				memcpy(word + len, q + 1, end - q - 1);
				len += end - q - 1;
				q = end + 1;
			}
			else if (*q == '"')
			{
				/* "...": blanks kept; \" and \\ escaped, any other \ kept (sh). */
				const char *open = q++;

				while (*q != '"')
				{
					if (*q == '\0')
					{
						set_err(err, errlen, "unterminated double quote at character %d",
								(int) (open - s) + 1);
						goto fail;
					}
					if (*q == '\\' && (q[1] == '"' || q[1] == '\\'))
						q++;
					word[len++] = *q++;
				}
				q++;
			}
			else if (*q == '\\')
			{
				/* Outside quotes \x is x; a final \ would escape nothing. */
				if (q[1] == '\0')
				{
					set_err(err, errlen, "backslash at the end, with nothing to escape");
					goto fail;
				}
				word[len++] = q[1];
				q += 2;
			}
			else
				word[len++] = *q++;
		}
		/* A word ends at a blank or the end, even if empty ('' or ""). */
		if (!push_word(&argv, &n, &cap, word, len))
			goto oom;
	}
	free(word);
	*argvp = argv;
	return n;

oom:
	set_err(err, errlen, "out of memory");
fail:
	free(word);
	free_argv(argv);
	return -1;
}

void
free_argv(char **argv)
{
	if (argv == NULL)
		return;
	for (char **a = argv; *a != NULL; a++)
		free(*a);
	free(argv);
}

/* The name as written in the file and in logs; "unknown" out of range. */
const char *
log_level_name(LogLevel l)
{
	if ((int) l < 0 || (int) l >= (int) lengthof(log_level_names) - 1)
		return "unknown";
	return log_level_names[l];
}

const char *
handler_name(HandlerKind h)
{
	if ((int) h < 0 || (int) h >= (int) lengthof(handler_names) - 1)
		return "unknown";
	return handler_names[h];
}

/* Prints text as "; " comment lines of at most 78 columns. */
static void
print_comment(FILE *out, const char *text)
{
	const char *s = text;

	while (*s != '\0')
	{
		const char *end = s, *brk = NULL;

		while (*end != '\0' && end - s < 76)
		{
			if (*end == ' ')
				brk = end;
			end++;
		}
		if (*end == '\0' || brk == NULL)
			brk = end;
		end = brk;
		while (end > s && end[-1] == ' ')
			end--; /* two blanks after a full stop: no trailing blank */
		fprintf(out, "; %.*s\n", (int) (end - s), s);
		s = brk;
		while (*s == ' ')
			s++;
	}
}

/*
 * What the sample says about a key besides its description: its range or
 * values, and which handlers it is for.  Generated from the table, so the
 * sample cannot claim a range the parser does not enforce.
 */
static void
describe_value(const KeyDef *k, char *buf, size_t len)
{
	char range[128], which[64];
	size_t used;

	switch (k->type)
	{
		case KT_STRING:
			buf[0] = '\0';
			break;
		case KT_ENUM:
			format_names(k->names, ", ", range, sizeof(range));
			snprintf(buf, len, "One of: %s.", range);
			break;
		case KT_INT:
			format_range(k, range, sizeof(range));
			snprintf(buf, len, "Range: %s.", range);
			break;
		case KT_DURATION:
			format_range(k, range, sizeof(range));
			snprintf(buf, len, "Duration: %s.", range);
			break;
		case KT_SIZE:
			format_range(k, range, sizeof(range));
			snprintf(buf, len, "Size: %s.", range);
			break;
		case KT_REAL:
			format_range(k, range, sizeof(range));
			snprintf(buf, len, "Range: %s.", range);
			break;
	}
	used = strlen(buf);
	format_handlers(k->handlers, which, sizeof(which));
	if (k->handlers != 0 && (k->flags & KF_REQUIRED))
		snprintf(buf + used, len - used, "%sRequired for handler %s, refused for others.",
				 used ? "  " : "", which);
	else if (k->handlers != 0)
		snprintf(buf + used, len - used, "%sOnly for handler %s.", used ? "  " : "", which);
	else if (k->flags & KF_REQUIRED)
		snprintf(buf + used, len - used, "%sRequired.", used ? "  " : "");
}

/*
 * The sample configuration: [tqd] with every global key at its default,
 * then [queue:example] with every queue key.  A key without a default shows
 * its example value; a key that does not apply to the example's handler is
 * written ";key = value" (no blank after the ';'), commented out.
 */
void
config_print_defaults(FILE *out)
{
	int example_handler = HANDLER_EXEC;

	for (int i = 0; i < NKEYS; i++)
		if (keys[i].names == handler_names && keys[i].example != NULL)
			for (int h = 0; handler_names[h] != NULL; h++)
				if (strcmp(handler_names[h], keys[i].example) == 0)
					example_handler = h;

	for (int scope = SCOPE_GLOBAL; scope <= SCOPE_QUEUE; scope++)
	{
		fprintf(out, "%s\n", scope == SCOPE_GLOBAL ? "[tqd]" : "\n[queue:example]");
		for (int i = 0; i < NKEYS; i++)
		{
			const KeyDef *k = &keys[i];
			const char *value = k->def != NULL ? k->def : k->example;
			bool applies = k->handlers == 0 || (k->handlers & ONLY(example_handler));
			char text[512], extra[256];

			if ((int) k->scope != scope)
				continue;
			describe_value(k, extra, sizeof(extra));
			snprintf(text, sizeof(text), "%s%s%s", k->desc, extra[0] ? "  " : "", extra);
			fprintf(out, "\n");
			print_comment(out, text);
			fprintf(out, "%s%s =%s%s\n", applies ? "" : ";", k->name, value[0] ? " " : "", value);
		}
	}
}
