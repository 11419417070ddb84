/*
 * config.h
 *	  tqd's configuration: an INI file parsed with libinih through one
 *	  declarative table of keys (config_keys.c), into a Config that the daemon
 *	  swaps whole on reload.
 *
 * File layout:
 *
 *	[tqd]                  global keys (conninfo, slots, intervals, ...)
 *	[queue:NAME]           one section per queue tqd serves
 *
 * Every key, its type, default and bounds are in config_keys.c's table; the
 * sample file worker/tqd.conf.sample lists every key at its default (a
 * unit test checks that it does).  Durations are written with a unit
 * (ms, s, min, h), sizes with one (B, kB, MB, GB; 1024-based).
 *
 * Ownership: config_load returns a Config that owns every string and
 * array in it; config_free frees all of it.  Nothing else points into a
 * Config once it is freed: the daemon copies what a running task needs.
 */
#ifndef TQD_CONFIG_H
#define TQD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "argv.h" /* split_argv, which makes QueueConf.argv */

typedef enum LogLevel
{
	LOG_DEBUG,
	LOG_INFO,
	LOG_WARNING,
	LOG_ERROR,
} LogLevel;

typedef enum HandlerKind
{
	HANDLER_NOOP, /* completes at once, result null */
	HANDLER_EXEC, /* runs a program (exec.c) */
	HANDLER_SQL,  /* calls a database function */
	HANDLER_HTTP, /* posts the payload to a URL (http.c), adaptive concurrency (aimd.c) */
} HandlerKind;

typedef enum HttpMethod
{
	METHOD_POST,
	METHOD_PUT,
	METHOD_PATCH,
} HttpMethod;

typedef struct QueueConf
{
	char *name;          /* the queue, from [queue:NAME] */
	int line;            /* line of the section header, for messages */
	HandlerKind handler; /* handler = noop | exec | sql */
	int concurrency;     /* tasks of this queue at once in this tqd */
	int lease_ahead;     /* most tasks leased ahead of a free slot; 0 = none */
	double timeout;      /* s; 0 = the task's own timeout only; else the smaller */
	double kill_grace;   /* s between SIGTERM and SIGKILL of a task's group */
	/* exec */
	char *command;        /* as written */
	char **argv;          /* command split into words, NULL-terminated */
	size_t max_output;    /* bytes of stdout kept as the result */
	size_t max_log_bytes; /* bytes of stderr kept as log lines */
	int max_log_lines;    /* stderr lines kept */
	size_t memory_limit;  /* bytes, RLIMIT_AS; 0 = none */
	double cpu_limit;     /* s, RLIMIT_CPU; 0 = none */
	int throttled_exit;   /* exit status meaning "throttled" */
	char *pass_env;       /* tqd's variables the program gets: names, NAME* globs, blanks between */
	/* sql */
	char *function; /* function called with the payload, e.g. app.handle */
	/* http */
	char *url;             /* where each task is sent */
	char *url_shown;       /* url as tqd prints it: query and fragment redacted (check_url) */
	int method;            /* HttpMethod */
	char *headers;         /* as written: "Name: value" lines */
	char **header_list;    /* headers split into lines, NULL-terminated (or NULL) */
	bool has_content_type; /* headers set Content-Type: tqd does not */
	int tls_verify;        /* 0 = off, 1 = on */
	char *ca_file;         /* "" = the system's CAs */
	int adaptive;          /* 0 = window fixed at concurrency, 1 = AIMD */
	int aimd_initial;      /* window at start */
	int aimd_min;          /* least window */
	double aimd_interval;  /* s: one increase step per interval */
	double aimd_decrease;  /* factor of a cut */
	double aimd_throttle_rate;
	int aimd_throttle_count;
	double aimd_throttle_window; /* s */
	double aimd_cooldown;        /* s */
	int aimd_slow_start;         /* 0 = off, 1 = on */
} QueueConf;

/* How a connection's transactions commit (lease_commit, outcome_commit). */
typedef enum CommitMode
{
	COMMIT_SYNC,  /* the server's synchronous_commit */
	COMMIT_ASYNC, /* synchronous_commit = off */
} CommitMode;

typedef struct Config
{
	char *path;                /* the file read */
	unsigned file_mode;        /* its permission bits when it was read (config_secrets.c) */
	char *conninfo;            /* libpq connection string */
	char *worker_name;         /* "" = host:pid */
	int slots;                 /* tasks at once over all queues */
	int lease_batch;           /* most tasks per tq_lease call */
	double flush_interval;     /* s: outcomes are sent in groups this often */
	int lease_commit;          /* CommitMode of leases and heartbeats */
	int outcome_commit;        /* CommitMode of outcome batches */
	double poll_interval;      /* s: lease without a notification this often */
	double heartbeat_interval; /* s; 0 = a third of the shortest lease */
	double drain_timeout;      /* s: SIGTERM waits this long for running tasks */
	double reconnect_min;      /* s: first reconnect delay */
	double reconnect_max;      /* s: cap of the doubling delay */
	double connect_timeout;    /* s: one connection attempt at most */
	double status_interval;    /* s: status line per http endpoint; 0 = never */
	char *metrics_listen;      /* address of /metrics; "" = off */
	int dashboard;             /* serve the dashboard on metrics_listen (0/1) */

	/* metrics_listen's access (httpd_access.c) and limits (httpd.c) */
	char *http_allowed_hosts;        /* as written: more names for Host */
	char **allowed_hosts;            /* those split, lowercase, NULL-terminated (or NULL) */
	char *http_token_file;           /* the file of the bearer token; "" = no token */
	char *http_token;                /* the token read from it; NULL = none */
	int http_max_connections;        /* connections open at once */
	int http_max_connections_per_ip; /* ... from one client address */
	double http_timeout;             /* s: a silent connection is closed */

	LogLevel log_level;
	QueueConf *queues;
	int nqueues;
} Config;

/*
 * Reads and checks the file.  Returns NULL on any error, with a message in
 * err of the form "FILE:LINE: key \"KEY\": what is wrong" (or "FILE: ..."
 * for errors not tied to a line, such as a missing file or no queue).
 */
extern Config *config_load(const char *path, char *err, size_t errlen)
	__attribute__((warn_unused_result));
extern void config_free(Config *c);
extern const QueueConf *config_queue(const Config *c, const char *name);

/*
 * The secrets in c that others may read (config_secrets.c): when the file
 * was readable by its group or by others and holds a password (conninfo),
 * a header whose name looks secret (Authorization, *Token*, *Key*, ...) or
 * a URL query parameter whose name does, what they are, e.g.
 * "conninfo password, header \"Authorization\" of queue \"hooks\"", in buf,
 * and true.  False when the file was private or holds none.
 */
extern bool config_exposed_secrets(const Config *c, char *buf, size_t len);
/*
 * Warns when config_exposed_secrets finds any, with the fix (chmod 600):
 * two lines on out (--check-config), or a log line when out is NULL
 * (startup and reload).
 */
extern void config_warn_exposed(const Config *c, FILE *out);

/* Prints every key at its default, as the sample file does. */
extern void config_print_defaults(FILE *out);

extern const char *log_level_name(LogLevel l);
/* The handler's name as written in the file ("exec"); "unknown" out of range. */
extern const char *handler_name(HandlerKind h);

#endif
