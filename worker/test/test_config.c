/*
 * test_config.c
 *	  Unit tests of config.c: the sample file against the table of keys,
 *	  defaults, every value type, every error (its exact text, line and
 *	  key), and split_argv.
 *
 * Each test file is written with mkstemp under /tmp and removed at once
 * after loading, so a failed run leaves nothing behind.  Error messages are
 * compared whole: they are part of tqd's interface (operators grep them).
 * Run from worker/ (make check) or worker/test/: the sample is looked up in
 * both.  Valgrind-clean: every Config and argv is freed.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "tap.h"

/* The path of the last temporary file: error messages start with it. */
static char tmp_path[64];

/* Writes text to a new temporary file (its name in tmp_path). */
static void
write_tmp(const char *text)
{
	int fd;
	FILE *f;

	strcpy(tmp_path, "/tmp/tqd-test-config-XXXXXX");
	fd = mkstemp(tmp_path);
	if (fd < 0 || (f = fdopen(fd, "w")) == NULL)
	{
		perror("mkstemp");
		exit(2);
	}
	fputs(text, f);
	fclose(f);
}

/* Loads text as a config file; err gets the message on failure. */
static Config *
load_text(const char *text, char *err, size_t errlen)
{
	Config *c;

	write_tmp(text);
	c = config_load(tmp_path, err, errlen);
	unlink(tmp_path);
	return c;
}

/*
 * Checks that text is refused with exactly "TMPFILE" + want (want starts
 * at the ':' after the file name).
 */
static void
fails_with(const char *text, const char *want, const char *what)
{
	char err[1024], full[1200];
	Config *c = load_text(text, err, sizeof(err));

	snprintf(full, sizeof(full), "%s%s", tmp_path, want);
	if (c != NULL)
	{
		ok(0, "%s: refused", what);
		config_free(c);
		return;
	}
	is_str(err, full, "%s", what);
}

/* Checks that text loads; returns the Config (NULL if it did not). */
static Config *
loads(const char *text, const char *what)
{
	char err[1024] = "";
	Config *c = load_text(text, err, sizeof(err));

	ok(c != NULL, "%s: loads", what);
	if (c == NULL)
		printf("#   error: %s\n", err);
	return c;
}

/* One [tqd] key = value and a minimal queue: the Config, or NULL. */
static Config *
with_global(const char *line, char *err, size_t errlen)
{
	char text[512];

	snprintf(text, sizeof(text), "[tqd]\n%s\n[queue:q]\nhandler = noop\n", line);
	return load_text(text, err, errlen);
}

/* Same, for a key of an exec queue. */
static Config *
with_exec_key(const char *line, char *err, size_t errlen)
{
	char text[512];

	snprintf(text, sizeof(text), "[queue:q]\nhandler = exec\ncommand = /bin/true\n%s\n", line);
	return load_text(text, err, errlen);
}

/* A global duration key: checks the seconds it becomes. */
static void
global_duration_is(const char *line, size_t offset, double want)
{
	char err[1024] = "";
	Config *c = with_global(line, err, sizeof(err));

	if (c == NULL)
	{
		ok(0, "\"%s\" loads: %s", line, err);
		return;
	}
	ok(*(double *) ((char *) c + offset) == want, "\"%s\" is %g s", line, want);
	config_free(c);
}

/* An exec queue's size key: checks the bytes it becomes. */
static void
queue_size_is(const char *line, size_t offset, size_t want)
{
	char err[1024] = "";
	Config *c = with_exec_key(line, err, sizeof(err));

	if (c == NULL)
	{
		ok(0, "\"%s\" loads: %s", line, err);
		return;
	}
	is_int(*(size_t *) ((char *) &c->queues[0] + offset), want, "\"%s\" is %zu bytes", line, want);
	config_free(c);
}

/*
 * A line refused in the file load() writes around it: the whole message
 * after the file name, at lineno (where load puts the line).
 */
static void
line_fails(Config *(*load)(const char *, char *, size_t), int lineno, const char *line,
		   const char *want)
{
	char err[1024], full[1200];
	Config *c = load(line, err, sizeof(err));

	snprintf(full, sizeof(full), "%s:%d: %s", tmp_path, lineno, want);
	if (c != NULL)
	{
		ok(0, "\"%s\" refused", line);
		config_free(c);
		return;
	}
	is_str(err, full, "\"%s\" refused", line);
}

/* A refused [tqd] line (line 2), and a refused exec queue line (line 4). */
#define global_fails(line, want) line_fails(with_global, 2, (line), (want))
#define exec_key_fails(line, want) line_fails(with_exec_key, 4, (line), (want))

/*
 * The defaults, as README and tqd.conf.sample state them (not read from config.c's
 * table, so that a changed default is a visible decision).
 */
static void
check_global_defaults(const Config *c, const char *what)
{
	is_str(c->conninfo, "", "%s: conninfo", what);
	is_str(c->worker_name, "", "%s: worker_name", what);
	is_int(c->slots, 16, "%s: slots", what);
	is_int(c->lease_batch, 200, "%s: lease_batch", what);
	ok(c->flush_interval == 0.005, "%s: flush_interval 5ms", what);
	is_int(c->lease_commit, COMMIT_ASYNC, "%s: lease_commit async", what);
	is_int(c->outcome_commit, COMMIT_SYNC, "%s: outcome_commit sync", what);
	ok(c->poll_interval == 5, "%s: poll_interval 5s", what);
	ok(c->heartbeat_interval == 0, "%s: heartbeat_interval 0", what);
	ok(c->drain_timeout == 30, "%s: drain_timeout 30s", what);
	ok(c->reconnect_min == 0.1, "%s: reconnect_min 100ms", what);
	ok(c->reconnect_max == 10, "%s: reconnect_max 10s", what);
	ok(c->connect_timeout == 10, "%s: connect_timeout 10s", what);
	ok(c->status_interval == 60, "%s: status_interval 1min", what);
	is_str(c->metrics_listen, "", "%s: metrics_listen off", what);
	is_int(c->dashboard, 0, "%s: dashboard off", what);
	is_str(c->http_allowed_hosts, "", "%s: http_allowed_hosts none", what);
	ok(c->allowed_hosts == NULL, "%s: no allowed host names besides the built-in", what);
	is_str(c->http_token_file, "", "%s: http_token_file none", what);
	ok(c->http_token == NULL, "%s: no token", what);
	is_int(c->http_max_connections, 256, "%s: http_max_connections 256", what);
	is_int(c->http_max_connections_per_ip, 16, "%s: http_max_connections_per_ip 16", what);
	ok(c->http_timeout == 5, "%s: http_timeout 5s", what);
	is_int(c->log_level, LOG_INFO, "%s: log_level info", what);
}

static void
check_queue_defaults(const QueueConf *q, const char *what)
{
	is_int(q->concurrency, 4, "%s: concurrency", what);
	is_int(q->lease_ahead, 128, "%s: lease_ahead", what);
	ok(q->timeout == 0, "%s: timeout 0", what);
	ok(q->kill_grace == 5, "%s: kill_grace 5s", what);
	is_int(q->max_output, 256 * 1024, "%s: max_output 256kB", what);
	is_int(q->max_log_bytes, 64 * 1024, "%s: max_log_bytes 64kB", what);
	is_int(q->max_log_lines, 1000, "%s: max_log_lines", what);
	is_int(q->memory_limit, 0, "%s: memory_limit 0", what);
	ok(q->cpu_limit == 0, "%s: cpu_limit 0", what);
	is_int(q->throttled_exit, 69, "%s: throttled_exit", what);
	is_str(q->pass_env, "PATH HOME LANG LC_* TZ TMPDIR USER LOGNAME SHELL", "%s: pass_env", what);
}

/* Every key README documents, in [tqd] then [queue:NAME]. */
static const char *const global_keys[] = {"conninfo",
										  "worker_name",
										  "slots",
										  "lease_batch",
										  "flush_interval",
										  "lease_commit",
										  "outcome_commit",
										  "poll_interval",
										  "heartbeat_interval",
										  "drain_timeout",
										  "reconnect_min",
										  "reconnect_max",
										  "connect_timeout",
										  "status_interval",
										  "metrics_listen",
										  "dashboard",
										  "http_allowed_hosts",
										  "http_token_file",
										  "http_max_connections",
										  "http_max_connections_per_ip",
										  "http_timeout",
										  "log_level"};
static const char *const queue_keys[] = {"handler",
										 "concurrency",
										 "lease_ahead",
										 "timeout",
										 "kill_grace",
										 "command",
										 "max_output",
										 "max_log_bytes",
										 "max_log_lines",
										 "memory_limit",
										 "cpu_limit",
										 "throttled_exit",
										 "pass_env",
										 "function",
										 "url",
										 "method",
										 "headers",
										 "tls_verify",
										 "ca_file",
										 "adaptive",
										 "aimd_initial",
										 "aimd_min",
										 "aimd_interval",
										 "aimd_decrease",
										 "aimd_throttle_rate",
										 "aimd_throttle_count",
										 "aimd_throttle_window",
										 "aimd_cooldown",
										 "aimd_slow_start"};
#define NGLOBAL ((int) (sizeof(global_keys) / sizeof(global_keys[0])))
#define NQUEUE ((int) (sizeof(queue_keys) / sizeof(queue_keys[0])))

static char *
read_whole(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	long len;

	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	rewind(f);
	buf = malloc(len + 1);
	if (fread(buf, 1, len, f) != (size_t) len)
		len = 0;
	buf[len] = '\0';
	fclose(f);
	return buf;
}

/*
 * How often key is set in the sample's text, as "key = ..." or commented
 * out as ";key = ..." (the sample's convention for a key of another
 * handler), within the section that starts with header.
 */
static int
count_key(const char *text, const char *header, const char *key)
{
	const char *sec = strstr(text, header);
	const char *end, *line;
	size_t klen = strlen(key);
	int n = 0;

	if (sec == NULL)
		return -1;
	end = strstr(sec + 1, "\n[");
	if (end == NULL)
		end = sec + strlen(sec);
	for (line = sec; line != NULL && line < end; line = strchr(line, '\n'))
	{
		if (*line == '\n')
			line++;
		if (*line == ';' && line[1] != ' ')
			line++;
		if (strncmp(line, key, klen) == 0 && strncmp(line + klen, " =", 2) == 0)
			n++;
	}
	return n;
}

/* Lines of the sample that set a key, active or ";key =" (no blank after ;). */
static int
count_key_lines(const char *text)
{
	int n = 0;

	for (const char *line = text; line != NULL; line = strchr(line, '\n'))
	{
		const char *eq;

		if (*line == '\n')
			line++;
		if (*line == ';' && line[1] != ' ' && line[1] != '\n' && line[1] != '\0')
			line++;
		eq = strstr(line, " =");
		if (*line != ';' && *line != '[' && *line != '\n' && *line != '\0' && eq != NULL &&
			eq < strchrnul(line, '\n'))
			n++;
	}
	return n;
}

static void
test_sample(void)
{
	const char *path =
		access("tqd.conf.sample", R_OK) == 0 ? "tqd.conf.sample" : "../tqd.conf.sample";
	char err[1024] = "";
	char *text = read_whole(path);
	char *generated = NULL;
	size_t genlen = 0;
	FILE *mem = open_memstream(&generated, &genlen);
	Config *c;

	ok(text != NULL, "the sample file %s is there", path);
	if (text == NULL)
		text = strdup("");

	config_print_defaults(mem);
	fclose(mem);
	ok(strlen(text) >= genlen && strcmp(text + strlen(text) - genlen, generated) == 0,
	   "the sample ends with exactly what config_print_defaults prints");
	ok(strncmp(text, "; ", 2) == 0 && strstr(text, "tqd --check-config -c FILE") != NULL,
	   "the sample starts with a header that says how to check a file");

	for (int i = 0; i < NGLOBAL; i++)
		is_int(count_key(text, "\n[tqd]\n", global_keys[i]), 1, "sample [tqd] has %s once",
			   global_keys[i]);
	for (int i = 0; i < NQUEUE; i++)
		is_int(count_key(text, "\n[queue:example]\n", queue_keys[i]), 1,
			   "sample [queue:example] has %s once", queue_keys[i]);
	is_int(count_key_lines(text), NGLOBAL + NQUEUE, "the sample sets no other key");
	ok(strstr(text, "\n;function = ") != NULL,
	   "sql-only function is commented out as \";function = \"");

	c = config_load(path, err, sizeof(err));
	ok(c != NULL, "the sample loads");
	if (c == NULL)
	{
		printf("#   error: %s\n", err);
		free(text);
		free(generated);
		return;
	}
	check_global_defaults(c, "sample");
	is_int(c->nqueues, 1, "sample: one queue");
	is_str(c->queues[0].name, "example", "sample: queue example");
	is_int(c->queues[0].handler, HANDLER_EXEC, "sample: handler exec");
	is_str(c->queues[0].command, "/bin/cat", "sample: command");
	check_queue_defaults(&c->queues[0], "sample");
	ok(c->queues[0].function == NULL, "sample: no function");
	config_free(c);
	free(text);
	free(generated);
}

static void
test_defaults(void)
{
	Config *c = loads("[queue:q]\nhandler = exec\ncommand = /bin/echo  hello 'big world'\n",
					  "a file with only a queue");

	if (c == NULL)
		return;
	check_global_defaults(c, "omitted");
	check_queue_defaults(&c->queues[0], "omitted");
	is_int(c->queues[0].line, 1, "QueueConf.line is its header's line");
	ok(c->queues[0].argv != NULL && c->queues[0].argv[0] != NULL &&
		   strcmp(c->queues[0].argv[0], "/bin/echo") == 0 &&
		   strcmp(c->queues[0].argv[2], "big world") == 0 && c->queues[0].argv[3] == NULL,
	   "command is split into argv");
	ok(strcmp(c->path, tmp_path) == 0, "Config.path is the file read");
	config_free(c);

	c = loads("; comment\n# comment\n[tqd]\nconninfo = host=db dbname=app ; a comment\n"
			  "worker_name = w1\nlog_level = debug\n\n"
			  "[queue:a.b-c_1]\nhandler = noop\n"
			  "[queue:s]\nfunction = app.handle_task\nhandler = sql\ntimeout = 1min\n",
			  "a file with several queues");
	if (c == NULL)
		return;
	is_str(c->conninfo, "host=db dbname=app", "conninfo, inline comment dropped");
	is_str(c->worker_name, "w1", "worker_name");
	is_int(c->log_level, LOG_DEBUG, "log_level debug");
	is_int(c->nqueues, 2, "two queues");
	ok(config_queue(c, "a.b-c_1") == &c->queues[0], "config_queue finds a.b-c_1");
	ok(config_queue(c, "s") != NULL && config_queue(c, "s")->handler == HANDLER_SQL &&
		   strcmp(config_queue(c, "s")->function, "app.handle_task") == 0 &&
		   config_queue(c, "s")->timeout == 60,
	   "config_queue finds s: sql, its function, timeout 1min");
	ok(config_queue(c, "nope") == NULL, "config_queue: NULL for an unknown queue");
	ok(c->queues[0].command == NULL && c->queues[0].argv == NULL,
	   "noop queue: no command, no argv");
	is_int(c->queues[1].line, 10, "second queue's header line");
	config_free(c);
}

static void
test_values(void)
{
	char err[1024];
	Config *c;

	/* Durations: each unit, fractions, 0. */
	global_duration_is("poll_interval = 250ms", offsetof(Config, poll_interval), 0.25);
	global_duration_is("poll_interval = 10ms", offsetof(Config, poll_interval), 0.01);
	global_duration_is("poll_interval = 7s", offsetof(Config, poll_interval), 7);
	global_duration_is("poll_interval = 1.5s", offsetof(Config, poll_interval), 1.5);
	global_duration_is("poll_interval = 2min", offsetof(Config, poll_interval), 120);
	global_duration_is("poll_interval = 1h", offsetof(Config, poll_interval), 3600);
	global_duration_is("poll_interval = 30 s", offsetof(Config, poll_interval), 30);
	global_duration_is("drain_timeout = 0", offsetof(Config, drain_timeout), 0);
	global_duration_is("drain_timeout = 0s", offsetof(Config, drain_timeout), 0);
	global_duration_is("drain_timeout = 24h", offsetof(Config, drain_timeout), 86400);
	global_duration_is("reconnect_min = 1ms", offsetof(Config, reconnect_min), 0.001);

	global_fails("poll_interval = 5", "key \"poll_interval\": \"5\" has no unit: add one of ms, "
									  "s, min or h (e.g. 5s)");
	global_fails("drain_timeout = 1.5",
				 "key \"drain_timeout\": \"1.5\" has no unit: add one of ms, s, min or h (e.g. "
				 "1.5s)");
	global_fails("poll_interval = 5m", "key \"poll_interval\": invalid duration \"5m\": unknown "
									   "unit \"m\" (use ms, s, min or h)");
	global_fails("poll_interval = fast",
				 "key \"poll_interval\": invalid duration \"fast\": expected a number and a unit "
				 "(ms, s, min or h), e.g. 250ms, 1.5s or 2min");
	global_fails("poll_interval = -1s",
				 "key \"poll_interval\": invalid duration \"-1s\": expected a number and a unit "
				 "(ms, s, min or h), e.g. 250ms, 1.5s or 2min");
	global_fails("poll_interval = 2h", "key \"poll_interval\": 2h is out of range (10ms to 1h)");
	global_fails("poll_interval = 9ms", "key \"poll_interval\": 9ms is out of range (10ms to 1h)");
	global_fails("flush_interval = 11s", "key \"flush_interval\": 11s is out of range (0 to 10s)");
	global_fails("poll_interval =",
				 "key \"poll_interval\": invalid duration \"\": expected a number and a unit "
				 "(ms, s, min or h), e.g. 250ms, 1.5s or 2min");

	/* Sizes. */
	queue_size_is("max_output = 512B", offsetof(QueueConf, max_output), 512);
	queue_size_is("max_output = 64kB", offsetof(QueueConf, max_output), 65536);
	queue_size_is("max_output = 2MB", offsetof(QueueConf, max_output), 2 * 1024 * 1024);
	queue_size_is("max_output = 1GB", offsetof(QueueConf, max_output), 1024 * 1024 * 1024);
	queue_size_is("max_output = 0", offsetof(QueueConf, max_output), 0);
	queue_size_is("memory_limit = 1MB", offsetof(QueueConf, memory_limit), 1024 * 1024);
	queue_size_is("memory_limit = 8GB", offsetof(QueueConf, memory_limit),
				  (size_t) 8 * 1024 * 1024 * 1024);
	exec_key_fails("max_output = 1024", "key \"max_output\": \"1024\" has no unit: add one of B, "
										"kB, MB or GB (e.g. 1024kB)");
	exec_key_fails("max_output = 1mb",
				   "key \"max_output\": invalid size \"1mb\": unknown unit \"mb\" (use B, kB, MB "
				   "or GB; 1kB = 1024B)");
	exec_key_fails("max_output = 1.5MB",
				   "key \"max_output\": invalid size \"1.5MB\": expected a whole number and a "
				   "unit (B, kB, MB or GB), e.g. 64kB or 1MB");
	exec_key_fails("max_output = 2GB", "key \"max_output\": 2GB is out of range (0 to 1GB)");
	exec_key_fails("memory_limit = 512kB",
				   "key \"memory_limit\": 512kB is out of range (0, or at least 1MB)");
	exec_key_fails("memory_limit = 999999999999999GB",
				   "key \"memory_limit\": 999999999999999GB is out of range (0, or at least 1MB)");
	exec_key_fails("cpu_limit = 500ms",
				   "key \"cpu_limit\": 500ms is out of range (0, or 1s to 168h)");

	/* Ints. */
	c = with_global("slots = 10000", err, sizeof(err));
	ok(c != NULL && c->slots == 10000, "slots = 10000 (the maximum)");
	config_free(c);
	c = with_global("slots = 1", err, sizeof(err));
	ok(c != NULL && c->slots == 1, "slots = 1 (the minimum)");
	config_free(c);
	global_fails("slots = 0", "key \"slots\": 0 is out of range (1 to 10000)");
	global_fails("slots = 10001", "key \"slots\": 10001 is out of range (1 to 10000)");
	global_fails("slots = -1", "key \"slots\": -1 is out of range (1 to 10000)");
	global_fails("slots = many",
				 "key \"slots\": invalid value \"many\": expected a whole number, 1 to 10000");
	global_fails("slots = 1.5",
				 "key \"slots\": invalid value \"1.5\": expected a whole number, 1 to 10000");
	global_fails("slots = 99999999999999999999",
				 "key \"slots\": invalid value \"99999999999999999999\": expected a whole "
				 "number, 1 to 10000");
	exec_key_fails("max_log_lines = 1000001",
				   "key \"max_log_lines\": 1000001 is out of range (0 to 1000000)");

	exec_key_fails("lease_ahead = -1", "key \"lease_ahead\": -1 is out of range (0 to 10000)");
	exec_key_fails("lease_ahead = 10001",
				   "key \"lease_ahead\": 10001 is out of range (0 to 10000)");

	/* Enums. */
	global_fails("lease_commit = off", "key \"lease_commit\": invalid value \"off\": expected "
									   "sync or async");
	global_fails("outcome_commit = ASYNC", "key \"outcome_commit\": invalid value \"ASYNC\": "
										   "expected sync or async");
	global_fails("log_level = verbose", "key \"log_level\": invalid value \"verbose\": expected "
										"debug, info, warning or error");
	global_fails("log_level = INFO", "key \"log_level\": invalid value \"INFO\": expected debug, "
									 "info, warning or error");
	for (int l = LOG_DEBUG; l <= LOG_ERROR; l++)
	{
		char line[64];

		snprintf(line, sizeof(line), "log_level = %s", log_level_name(l));
		c = with_global(line, err, sizeof(err));
		ok(c != NULL && (int) c->log_level == l, "log_level_name(%d) = %s reads back", l,
		   log_level_name(l));
		config_free(c);
	}
	fails_with("[queue:q]\nhandler = shell\n",
			   ":2: key \"handler\": invalid value \"shell\": expected noop, exec, sql or http",
			   "unknown handler");

	/* Exec-specific checks. */
	exec_key_fails("throttled_exit = 75", "key \"throttled_exit\": 75 already has a meaning "
										  "(EX_TEMPFAIL: failed, retried); choose another exit "
										  "status");
	exec_key_fails("throttled_exit = 64", "key \"throttled_exit\": 64 already has a meaning "
										  "(EX_USAGE: failed, not retried); choose another exit "
										  "status");
	exec_key_fails("throttled_exit = 0", "key \"throttled_exit\": 0 is out of range (1 to 255)");
	c = with_exec_key("throttled_exit = 70", err, sizeof(err));
	ok(c != NULL && c->queues[0].throttled_exit == 70, "throttled_exit = 70");
	config_free(c);
}

static void
test_errors(void)
{
	char err[1024];
	Config *c;

	fails_with("; a comment\n\n[tqd]\nslots = 8\n# another\n\nlease_batch = 0\n"
			   "[queue:q]\nhandler = noop\n",
			   ":7: key \"lease_batch\": 0 is out of range (1 to 10000)",
			   "the error names the right line after comments and blank lines");
	fails_with("[tqd]\nslot = 8\n[queue:q]\nhandler = noop\n", ":2: key \"slot\": unknown key",
			   "unknown key");
	fails_with("[tqd]\nhandler = exec\n[queue:q]\nhandler = noop\n",
			   ":2: key \"handler\": unknown key in [tqd] (it belongs in a [queue:NAME] section)",
			   "a queue key in [tqd]");
	fails_with("[queue:q]\nhandler = noop\nslots = 3\n",
			   ":3: key \"slots\": unknown key in a [queue:NAME] section (it belongs in [tqd])",
			   "a global key in a queue");
	fails_with("slots = 3\n[queue:q]\nhandler = noop\n",
			   ":1: key \"slots\": outside any section (put it under [tqd] or [queue:NAME])",
			   "a key before any section");
	fails_with("[tqd]\n[worker]\nslots = 3\n",
			   ":2: section \"worker\": unknown section (expected [tqd] or [queue:NAME])",
			   "unknown section");
	fails_with("[tqd]\nslots = 3\nlease_batch = 5\nslots = 4\n[queue:q]\nhandler = noop\n",
			   ":4: key \"slots\": given twice in this section (first on line 2)", "duplicate key");
	fails_with("[queue:q]\nhandler = noop\n[queue:r]\nhandler = noop\n[queue:q]\n"
			   "handler = noop\n",
			   ":5: section \"queue:q\": queue \"q\" given twice (first on line 1)",
			   "duplicate queue");
	fails_with("[tqd]\n[queue:q]\nhandler = noop\n[tqd]\n",
			   ":4: section \"tqd\": given twice (first on line 1)", "duplicate [tqd]");
	fails_with("[queue:1q]\nhandler = noop\n",
			   ":1: section \"queue:1q\": invalid queue name \"1q\": expected a letter, then "
			   "letters, digits, _, - or .",
			   "queue name starting with a digit");
	fails_with("[queue:]\nhandler = noop\n", ":1: section \"queue:\": empty queue name",
			   "empty queue name");
	fails_with("[queue:"
			   "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq]\n"
			   "handler = noop\n",
			   ":1: section \"queue:"
			   "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq\": queue name "
			   "longer than 63 bytes",
			   "a 64-byte queue name");
	c = loads("[queue:qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq]\n"
			  "handler = noop\n",
			  "a 63-byte queue name");
	ok(c != NULL && strlen(c->queues[0].name) == 63, "a 63-byte queue name is kept whole");
	config_free(c);

	fails_with("[tqd]\nslots = 3\n[queue:q]\nconcurrency = 2\n",
			   ":3: section \"queue:q\": key \"handler\" is required (noop, exec, sql or http)",
			   "missing handler");
	fails_with("[queue:q]\n[queue:r]\nhandler = noop\n",
			   ":1: section \"queue:q\": key \"handler\" is required (noop, exec, sql or http)",
			   "an empty queue section");
	fails_with("[queue:q]\nhandler = exec\n",
			   ":1: section \"queue:q\": key \"command\" is required for handler exec",
			   "exec without command");
	fails_with("[queue:q]\nhandler = sql\n",
			   ":1: section \"queue:q\": key \"function\" is required for handler sql",
			   "sql without function");
	fails_with("[queue:q]\ncommand = /bin/true\nhandler = noop\n",
			   ":2: key \"command\": only for handler exec (this queue's is noop)",
			   "command given for noop (before the handler)");
	fails_with("[queue:q]\nhandler = sql\nfunction = f\nmax_output = 1MB\n",
			   ":4: key \"max_output\": only for handler exec and http (this queue's is sql)",
			   "an exec key for sql");
	fails_with("[queue:q]\nhandler = exec\ncommand = x\nfunction = app.f\n",
			   ":4: key \"function\": only for handler sql (this queue's is exec)",
			   "function given for exec");
	fails_with("[queue:q]\nhandler = exec\ncommand =\n", ":3: key \"command\": no program given",
			   "an empty command");
	fails_with("[queue:q]\nhandler = exec\ncommand = /bin/sh -c 'echo hi\n",
			   ":3: key \"command\": unterminated single quote at character 12",
			   "a command with an unterminated quote");
	/* Found by fuzzing: '' passed, then tqd leased and released in a loop. */
	fails_with("[queue:q]\nhandler = exec\ncommand = ''\n", ":3: key \"command\": no program given",
			   "an empty quoted program");
	fails_with("[queue:q]\nhandler = exec\ncommand = \"\" -x\n",
			   ":3: key \"command\": no program given", "an empty program with arguments");

	/* Found by fuzzing: every connection attempt failed forever. */
	fails_with("[tqd]\nconninfo = host='unterminated\n[queue:q]\nhandler = noop\n",
			   ":2: key \"conninfo\": libpq cannot parse it: unterminated quoted string in "
			   "connection info string",
			   "a conninfo libpq cannot parse");
	fails_with("[tqd]\nconninfo = hots=db\n[queue:q]\nhandler = noop\n",
			   ":2: key \"conninfo\": libpq cannot parse it: invalid connection option \"hots\"",
			   "a conninfo with an unknown option");
	fails_with("[tqd]\nconninfo = postgresql://db/app?bogus=1\n[queue:q]\nhandler = noop\n",
			   ":2: key \"conninfo\": libpq cannot parse it: invalid URI query parameter: "
			   "\"bogus\"",
			   "a URI with an unknown parameter");
	c = loads("[tqd]\nconninfo = postgresql://tqd@db:5433/app?application_name=w\n"
			  "[queue:q]\nhandler = noop\n",
			  "a conninfo URI");
	config_free(c);

	/* Found by fuzzing: 40,000 sections took 6.75 s (a quadratic check). */
	{
		size_t cap = 1001 * 40 + 1, len = 0;
		char *big = malloc(cap);

		for (int i = 0; i < 1001; i++)
			len += snprintf(big + len, cap - len, "[queue:q%d]\nhandler = noop\n", i);
		c = load_text(big, err, sizeof(err));
		ok(c == NULL && strstr(err, ":2001: section \"queue:q1000\": too many queues (at most "
									"1000 in one file); run another tqd for the rest") != NULL,
		   "the 1001st queue section is refused");
		config_free(c);
		big[len - strlen("[queue:q1000]\nhandler = noop\n")] = '\0';
		c = loads(big, "1000 queue sections");
		ok(c != NULL && c->nqueues == 1000, "1000 queue sections are read");
		config_free(c);
		free(big);
	}

	fails_with("[queue:q]\nhandler = sql\nfunction = app.f'x\n",
			   ":3: key \"function\": invalid function name \"app.f'x\": expected name or "
			   "schema.name, each a letter or _ then letters, digits, _ or $ (at most 63 bytes), "
			   "without quotes",
			   "sql function with a quote");
	fails_with("[queue:q]\nhandler = sql\nfunction = f;drop table t\n",
			   ":3: key \"function\": invalid function name \"f;drop table t\": expected name or "
			   "schema.name, each a letter or _ then letters, digits, _ or $ (at most 63 bytes), "
			   "without quotes",
			   "sql function with a semicolon");
	{
		static const char *const bad[] = {"\"app\".f", "a.b.c", "f()",   "1f",
										  "app.",      ".f",    "app .f"};
		static const char *const good[] = {"f", "app.handle_task", "_x.y$1", "App.Handle"};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		{
			char text[256];

			snprintf(text, sizeof(text), "[queue:q]\nhandler = sql\nfunction = %s\n", bad[i]);
			c = load_text(text, err, sizeof(err));
			ok(c == NULL && strstr(err, ":3: key \"function\": invalid function name") != NULL,
			   "function %s refused", bad[i]);
			config_free(c);
		}
		for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		{
			char text[256];

			snprintf(text, sizeof(text), "[queue:q]\nhandler = sql\nfunction = %s\n", good[i]);
			c = load_text(text, err, sizeof(err));
			ok(c != NULL && strcmp(c->queues[0].function, good[i]) == 0, "function %s accepted",
			   good[i]);
			config_free(c);
		}
	}

	fails_with("[tqd]\nreconnect_max = 50ms\n[queue:q]\nhandler = noop\n",
			   ":2: key \"reconnect_max\": 50ms is less than reconnect_min (100ms)",
			   "reconnect_max < reconnect_min");
	fails_with("[tqd]\nreconnect_min = 1min\n[queue:q]\nhandler = noop\n",
			   ":2: key \"reconnect_min\": 1min is more than reconnect_max (10s)",
			   "reconnect_min above the default reconnect_max");
	c = loads("[tqd]\nreconnect_min = 2s\nreconnect_max = 2s\n[queue:q]\nhandler = noop\n",
			  "reconnect_max = reconnect_min");
	config_free(c);

	fails_with("[tqd]\nslots = 3\n",
			   ": no queue: add a [queue:NAME] section for each queue tqd "
			   "serves",
			   "no queue");
	fails_with("", ": no queue: add a [queue:NAME] section for each queue tqd serves",
			   "an empty file");
	fails_with("[tqd]\nslots\n[queue:q]\nhandler = noop\n",
			   ":2: syntax error: expected \"key = value\", \"[section]\" or a comment (; or #)",
			   "a line without =");
	fails_with("[tqd]\n[queue:q\nhandler = noop\n",
			   ":2: syntax error: section header without a closing \"]\"", "a header without ]");
	fails_with("[tqd]\nslots 3\nlease_batch = 0\n[queue:q]\nhandler = noop\n",
			   ":2: syntax error: expected \"key = value\", \"[section]\" or a comment (; or #)",
			   "a syntax error before a bad value is reported first");

	c = config_load("/nonexistent/tqd.conf", err, sizeof(err));
	ok(c == NULL, "a missing file is refused");
	is_str(err, "/nonexistent/tqd.conf: cannot open: No such file or directory",
		   "missing file message");
}

/* Continuation lines, long lines. */
static void
test_lines(void)
{
	char text[1024], line[400];
	Config *c;

	c = loads("[tqd]\nconninfo = host=db\n  dbname=app ; the database\n\tuser=tqd\n"
			  "slots = 2\n[queue:q]\nhandler = exec\ncommand = /bin/echo\n  a\n  'b c'\n",
			  "values continued on indented lines");
	if (c != NULL)
	{
		is_str(c->conninfo, "host=db dbname=app user=tqd", "conninfo joined with blanks");
		is_int(c->slots, 2, "the key after a continuation");
		ok(c->queues[0].argv[2] != NULL && strcmp(c->queues[0].argv[2], "b c") == 0 &&
			   c->queues[0].argv[3] == NULL,
		   "command continued is split whole");
	}
	config_free(c);
	fails_with("[tqd]\nslots = 2\n  lease_batch = 3\n[queue:q]\nhandler = noop\n",
			   ":3: key \"slots\": this line starts with a blank, so it continues the value of "
			   "\"slots\", which takes one line (remove the indentation)",
			   "an indented key under a number");
	/* Found by fuzzing: the worker got named "w1 slots = 3". */
	fails_with("[tqd]\nworker_name = w1\n\n  slots = 3\n[queue:q]\nhandler = noop\n",
			   ":4: key \"worker_name\": this indented line follows a blank or comment line (line "
			   "3), so it would continue the value of \"worker_name\" (remove the indentation, or "
			   "the line between)",
			   "an indented key after a blank line");
	fails_with("[queue:q]\nhandler = exec\ncommand = /bin/echo hello\n; more\n  concurrency = 8\n",
			   ":5: key \"command\": this indented line follows a blank or comment line (line 4), "
			   "so it would continue the value of \"command\" (remove the indentation, or the line "
			   "between)",
			   "an indented key after a comment line");
	c = loads("[tqd]\nworker_name = w1\n\nslots = 3\n  ; an indented comment\n[queue:q]\n"
			  "handler = noop\n",
			  "a key after a blank line, then an indented comment");
	ok(c != NULL && strcmp(c->worker_name, "w1") == 0 && c->slots == 3,
	   "keys around a blank line are read apart");
	config_free(c);
	c = loads("[tqd]\n  slots = 2\n[queue:q]\nhandler = noop\n",
			  "an indented first key of a section");
	ok(c != NULL && c->slots == 2, "an indented first key is a key");
	config_free(c);

	memset(line, 'x', 300);
	line[300] = '\0';
	snprintf(text, sizeof(text), "[tqd]\nconninfo = %s\n[queue:q]\nhandler = noop\n", line);
	fails_with(text,
			   ":2: line too long (at most 198 characters); continue a long value on the next "
			   "line, indented",
			   "a line too long");
	snprintf(text, sizeof(text), "; %s\n[tqd]\nslots = 5\n[queue:q]\nhandler = noop\n", line);
	c = loads(text, "a long comment line");
	ok(c != NULL && c->slots == 5, "a long comment line is skipped whole");
	config_free(c);
	c = loads("[queue:q]\nhandler = noop", "a last line without a newline");
	config_free(c);
	c = loads("\xEF\xBB\xBF[queue:q]\r\nhandler = noop\r\n", "a BOM and CRLF line ends");
	ok(c != NULL && c->queues[0].handler == HANDLER_NOOP && c->queues[0].line == 1,
	   "BOM and CRLF: queue read");
	config_free(c);
}

/* Splits s; checks the count and the words joined with '|'. */
static void
split_is(const char *s, int want_n, const char *want_words, const char *what)
{
	char err[256] = "";
	char **argv = NULL;
	char joined[512] = "";
	int n = split_argv(s, &argv, err, sizeof(err));

	if (n < 0)
	{
		ok(0, "%s: split (%s)", what, err);
		return;
	}
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			strcat(joined, "|");
		strcat(joined, argv[i]);
	}
	ok(n == want_n && argv[n] == NULL && strcmp(joined, want_words) == 0, "%s: %d words [%s]", what,
	   want_n, want_words);
	if (n != want_n || strcmp(joined, want_words) != 0)
		printf("#   got %d words [%s]\n", n, joined);
	free_argv(argv);
}

static void
split_fails(const char *s, const char *want, const char *what)
{
	char err[256] = "";
	char **argv = (char **) 1;
	int n = split_argv(s, &argv, err, sizeof(err));

	ok(n == -1 && argv == NULL, "%s: -1, argv NULL", what);
	is_str(err, want, "%s: message", what);
	if (n >= 0)
		free_argv(argv);
}

static void
test_split_argv(void)
{
	split_is("/bin/echo a b", 3, "/bin/echo|a|b", "plain words");
	split_is("  a \t  b\t", 2, "a|b", "several blanks, leading and trailing");
	split_is("sh -c 'echo $HOME; ls *'", 3, "sh|-c|echo $HOME; ls *",
			 "single quotes keep everything");
	split_is("'a\\b' 'x\"y'", 2, "a\\b|x\"y", "backslash and \" are literal in single quotes");
	split_is("say \"he said \\\"hi\\\" \\\\ \\n\"", 2, "say|he said \"hi\" \\ \\n",
			 "double quotes: \\\" and \\\\ escaped, other backslashes kept");
	split_is("a\\ b c", 2, "a b|c", "backslash-blank outside quotes");
	split_is("\\'x\\\"", 1, "'x\"", "backslash-quote outside quotes");
	split_is("ab'c d'\"e\"f", 1, "abc def", "quotes glued to a word");
	split_is("'' \"\" x", 3, "||x", "empty quotes make empty words");
	split_is("", 0, "", "empty string: no words");
	split_is(" \t ", 0, "", "only blanks: no words");
	split_fails("echo 'oops", "unterminated single quote at character 6",
				"unterminated single quote");
	split_fails("echo \"a \\\" b", "unterminated double quote at character 6",
				"unterminated double quote (its \\\" escaped)");
	split_fails("echo a\\", "backslash at the end, with nothing to escape", "trailing backslash");
}

static void
test_misc(void)
{
	is_str(log_level_name(LOG_DEBUG), "debug", "log_level_name debug");
	is_str(log_level_name(LOG_WARNING), "warning", "log_level_name warning");
	is_str(log_level_name((LogLevel) 42), "unknown", "log_level_name out of range");
	config_free(NULL);
	free_argv(NULL);
	ok(1, "config_free(NULL) and free_argv(NULL) are no-ops");
}

/* Lines added to an http queue (at line 4) and the error each must give. */
static const struct
{
	const char *lines;
	const char *want;
	const char *what;
} refused[] = {
	{"headers = X-TQ-Task-Id: 5",
	 ":4: key \"headers\": header \"X-TQ-Task-Id\" cannot be set: tqd sets it for each request",
	 "X-TQ- headers are tqd's"},
	{"headers = X-A: 1\n  TraceParent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
	 ":4: key \"headers\": header \"TraceParent\" cannot be set: tqd sets it from each task's "
	 "traceparent",
	 "traceparent is the task's (any case)"},
	{"headers = X-A: 1\n  Content-Length: 5",
	 ":4: key \"headers\": header \"Content-Length\" cannot be set: tqd sets it for each request",
	 "Content-Length is curl's"},
	{"headers = no colon here",
	 ":4: key \"headers\": invalid header \"no colon here\": expected \"Name: value\"",
	 "a header without a colon"},
	{"ca_file = /nonexistent/ca.pem",
	 ":4: key \"ca_file\": cannot read \"/nonexistent/ca.pem\": No such file or directory",
	 "an unreadable CA file"},
	{"method = GET", ":4: key \"method\": invalid value \"GET\": expected POST, PUT or PATCH",
	 "GET is refused (the payload is never in the URL)"},
	{"aimd_decrease = 1.5", ":4: key \"aimd_decrease\": 1.5 is out of range (0.05 to 0.95)",
	 "decrease out of range"},
	{"aimd_throttle_rate = half",
	 ":4: key \"aimd_throttle_rate\": invalid value \"half\": expected a number such as 0.5, 0 "
	 "to 1",
	 "rate not a number"},
	{"aimd_min = 10",
	 ":4: key \"aimd_min\": 10 is above concurrency (4): the window never goes above that",
	 "aimd_min above concurrency"},
};

/* The http handler's keys: defaults, header lines, and what is refused. */
static void
test_http(void)
{
	global_fails(
		"metrics_listen = localhost:9187",
		"key \"metrics_listen\": invalid address \"localhost:9187\": expected IPv4:port or "
		"[IPv6]:port, e.g. 127.0.0.1:9187");
	{
		char err[1024] = "";
		Config *mc = with_global("metrics_listen = [::1]:0", err, sizeof(err));

		ok(mc != NULL && strcmp(mc->metrics_listen, "[::1]:0") == 0,
		   "metrics_listen [::1]:0 loads: %s", err);
		config_free(mc);
		mc = with_global("metrics_listen = 127.0.0.1:0\ndashboard = on", err, sizeof(err));
		ok(mc != NULL && mc->dashboard == 1, "dashboard = on with metrics_listen loads: %s", err);
		config_free(mc);
	}
	global_fails("dashboard = on",
				 "key \"dashboard\": on needs metrics_listen: the dashboard is served there");
	global_fails("dashboard = yes", "key \"dashboard\": invalid value \"yes\": expected off or on");

	const char *q = "[queue:h]\nhandler = http\nurl = http://127.0.0.1:8080/task\n";
	char text[1024];
	Config *c = loads(q, "http queue");
	const QueueConf *h;

	if (c != NULL)
	{
		h = &c->queues[0];
		is_int(h->handler, HANDLER_HTTP, "http: handler");
		is_str(h->url, "http://127.0.0.1:8080/task", "http: url");
		is_int(h->method, METHOD_POST, "http: method POST by default");
		is_int(h->tls_verify, 1, "http: TLS verified by default");
		is_str(h->ca_file, "", "http: system CAs by default");
		ok(h->header_list == NULL && !h->has_content_type, "http: no extra headers");
		is_int(h->adaptive, 1, "http: adaptive by default");
		is_int(h->aimd_initial, 4, "http: aimd_initial 4");
		is_int(h->aimd_min, 1, "http: aimd_min 1");
		ok(h->aimd_interval == 1 && h->aimd_throttle_window == 1 && h->aimd_cooldown == 2,
		   "http: aimd intervals 1s, 1s, 2s");
		ok(h->aimd_decrease == 0.5 && h->aimd_throttle_rate == 0.05,
		   "http: decrease 0.5, rate 0.05");
		is_int(h->aimd_throttle_count, 3, "http: throttle_count 3");
		is_int(h->max_output, 256 * 1024, "http: max_output 256kB");
		config_free(c);
	}

	snprintf(text, sizeof(text),
			 "%sheaders = Authorization: Bearer abc def\n  X-Env:prod\n"
			 "  content-type: application/cloudevents+json\nmethod = PUT\naimd_decrease = 0.75\n",
			 q);
	c = loads(text, "http headers on continuation lines");
	if (c != NULL)
	{
		h = &c->queues[0];
		ok(h->header_list != NULL && h->header_list[0] && h->header_list[1] && h->header_list[2] &&
			   h->header_list[3] == NULL,
		   "three headers");
		if (h->header_list && h->header_list[0] && h->header_list[1] && h->header_list[2])
		{
			is_str(h->header_list[0], "Authorization: Bearer abc def", "header 1 as written");
			is_str(h->header_list[1], "X-Env: prod", "header 2 normalised to \"Name: value\"");
		}
		ok(h->has_content_type, "a Content-Type of one's own is noticed");
		is_int(h->method, METHOD_PUT, "method PUT");
		ok(h->aimd_decrease == 0.75, "aimd_decrease 0.75");
		config_free(c);
	}

	fails_with("[queue:h]\nhandler = http\n",
			   ":1: section \"queue:h\": key \"url\" is required for handler http", "url required");
	snprintf(text, sizeof(text), "[queue:h]\nhandler = http\nurl = ftp://example.com/x\n");
	fails_with(text,
			   ":3: key \"url\": invalid URL \"ftp://example.com/x\": the scheme must be "
			   "http or https",
			   "ftp refused");
	snprintf(text, sizeof(text), "[queue:h]\nhandler = http\nurl = http://exa mple.com/\n");
	c = load_text(text, NULL, 0);
	ok(c == NULL, "a URL with a blank is refused");
	config_free(c);
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
	{
		snprintf(text, sizeof(text), "%s%s\n", q, refused[i].lines);
		fails_with(text, refused[i].want, refused[i].what);
	}
	fails_with("[queue:e]\nhandler = exec\ncommand = /bin/true\nurl = http://x/\n",
			   ":4: key \"url\": only for handler http (this queue's is exec)",
			   "url under exec is refused");
	fails_with("[queue:h]\nhandler = http\nurl = http://x/\nmax_log_lines = 5\n",
			   ":4: key \"max_log_lines\": only for handler exec (this queue's is http)",
			   "an exec key under http is refused");
}

/* Writes text to a new file under /tmp for http_token_file; its path in path. */
static void
write_token(char *path, size_t len, const char *text)
{
	int fd;

	snprintf(path, len, "/tmp/tqd-test-token-XXXXXX");
	fd = mkstemp(path);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t) strlen(text))
	{
		perror("token file");
		exit(2);
	}
	close(fd);
}

/* http_token_file = a file holding text: refused with want (after "key ..."). */
static void
token_fails(const char *text, const char *want, const char *what)
{
	char path[64], line[128], msg[512], full[700], err[1024] = "";
	Config *c;

	write_token(path, sizeof(path), text);
	snprintf(line, sizeof(line), "http_token_file = %s", path);
	snprintf(msg, sizeof(msg), want, path);
	c = with_global(line, err, sizeof(err));
	snprintf(full, sizeof(full), "%s:2: %s", tmp_path, msg);
	if (c != NULL)
		ok(0, "%s: refused", what);
	else
		is_str(err, full, "%s: refused", what);
	config_free(c);
	unlink(path);
}

/* The keys of metrics_listen's access and limits (issue 15, items 12 and 13). */
static void
test_http_access(void)
{
	char err[1024] = "", path[64], line[128];
	Config *c;

	c = with_global("http_allowed_hosts = tqd.internal, Proxy.Example.COM\n  metrics-1 ,,w_2", err,
					sizeof(err));
	ok(c != NULL, "http_allowed_hosts with commas, blanks and a continuation line loads: %s", err);
	if (c != NULL)
	{
		ok(c->allowed_hosts && c->allowed_hosts[0] && c->allowed_hosts[1] && c->allowed_hosts[2] &&
			   c->allowed_hosts[3] && c->allowed_hosts[4] == NULL,
		   "four names");
		if (c->allowed_hosts && c->allowed_hosts[3])
		{
			is_str(c->allowed_hosts[0], "tqd.internal", "name 1");
			is_str(c->allowed_hosts[1], "proxy.example.com", "name 2, in lowercase");
			is_str(c->allowed_hosts[2], "metrics-1", "name 3, from the continuation line");
			is_str(c->allowed_hosts[3], "w_2", "name 4, after an empty item");
		}
		config_free(c);
	}
	global_fails("http_allowed_hosts = tqd.internal:9187",
				 "key \"http_allowed_hosts\": invalid host name \"tqd.internal:9187\": letters, "
				 "digits, '-', '.' and '_' only, without a port (any port is accepted)");
	global_fails("http_allowed_hosts = *",
				 "key \"http_allowed_hosts\": invalid host name \"*\": letters, digits, '-', '.' "
				 "and '_' only, without a port (any port is accepted)");

	write_token(path, sizeof(path), "0123456789abcdef0123456789abcdef\n");
	snprintf(line, sizeof(line), "http_token_file = %s", path);
	c = with_global(line, err, sizeof(err));
	ok(c != NULL && c->http_token != NULL, "a token file loads: %s", err);
	if (c != NULL)
		is_str(c->http_token, "0123456789abcdef0123456789abcdef",
			   "the token is the file's line, without its newline");
	config_free(c);
	unlink(path);
	token_fails("short\n",
				"key \"http_token_file\": the token in \"%s\" is 5 characters long: at least 16 "
				"are needed (e.g. openssl rand -hex 32)",
				"a short token");
	token_fails("0123456789abcdef 0123456789abcdef\n",
				"key \"http_token_file\": the token in \"%s\" must be one line of printable ASCII "
				"without blanks",
				"a token with a blank");
	token_fails("0123456789abcdef\n0123456789abcdef\n",
				"key \"http_token_file\": the token in \"%s\" must be one line of printable ASCII "
				"without blanks",
				"a token of two lines");
	global_fails("http_token_file = /nonexistent/token",
				 "key \"http_token_file\": cannot read \"/nonexistent/token\": No such file or "
				 "directory");

	c = with_global("http_max_connections = 1000\nhttp_max_connections_per_ip = 4\n"
					"http_timeout = 1500ms",
					err, sizeof(err));
	ok(c != NULL && c->http_max_connections == 1000 && c->http_max_connections_per_ip == 4 &&
		   c->http_timeout == 1.5,
	   "connection limits and timeout load: %s", err);
	config_free(c);
	global_fails("http_max_connections_per_ip = 0",
				 "key \"http_max_connections_per_ip\": 0 is out of range (1 to 10000)");
	global_fails("http_timeout = 0", "key \"http_timeout\": 0 is out of range (1s to 1h)");
}

/* pass_env: the names of tqd's variables an exec queue's programs get. */
static void
test_pass_env(void)
{
	char err[1024] = "";
	Config *c = with_exec_key("pass_env = PATH  LC_*\n  MY_APP_* _X1", err, sizeof(err));

	ok(c != NULL, "pass_env with names, globs and a continuation line loads: %s", err);
	if (c != NULL)
		is_str(c->queues[0].pass_env, "PATH  LC_* MY_APP_* _X1", "pass_env as written");
	config_free(c);
	c = with_exec_key("pass_env =", err, sizeof(err));
	ok(c != NULL && strcmp(c->queues[0].pass_env, "") == 0, "pass_env empty (none) loads: %s", err);
	config_free(c);
	c = with_exec_key("pass_env = *", err, sizeof(err));
	ok(c != NULL && strcmp(c->queues[0].pass_env, "*") == 0, "pass_env = * (all) loads: %s", err);
	config_free(c);
	exec_key_fails("pass_env = PATH AWS-KEY",
				   "key \"pass_env\": invalid name \"AWS-KEY\": expected variable names (letters, "
				   "digits and _, not starting with a digit), each optionally ending in * (LC_*), "
				   "separated by blanks");
	exec_key_fails("pass_env = 1PATH",
				   "key \"pass_env\": invalid name \"1PATH\": expected variable names (letters, "
				   "digits and _, not starting with a digit), each optionally ending in * (LC_*), "
				   "separated by blanks");
	exec_key_fails("pass_env = A*B",
				   "key \"pass_env\": invalid name \"A*B\": expected variable names (letters, "
				   "digits and _, not starting with a digit), each optionally ending in * (LC_*), "
				   "separated by blanks");
	exec_key_fails("pass_env = PATH=/bin",
				   "key \"pass_env\": invalid name \"PATH=/bin\": expected variable names "
				   "(letters, digits and _, not starting with a digit), each optionally ending in "
				   "* (LC_*), separated by blanks");
	fails_with("[queue:h]\nhandler = http\nurl = http://x/\npass_env = PATH\n",
			   ":4: key \"pass_env\": only for handler exec (this queue's is http)",
			   "pass_env under http is refused");
}

/* A URL with credentials is refused; the others are printed redacted. */
static void
test_url_secrets(void)
{
	static const char *const with_userinfo[] = {
		"https://bob:hunter2@api.example.com/tasks",
		"https://bob@api.example.com/tasks",
		"https://:hunter2@api.example.com/tasks",
		"https://@api.example.com/tasks",
	};
	const char *want =
		":3: key \"url\": URL \"https://<redacted>@api.example.com/tasks\" has a "
		"user name or password in it: tqd prints URLs (logs, task logs, /metrics), so "
		"give credentials with the headers key instead, which it never prints (e.g. "
		"headers = Authorization: Basic <base64 of user:password>)";
	char text[512];
	Config *c;

	for (size_t i = 0; i < sizeof(with_userinfo) / sizeof(with_userinfo[0]); i++)
	{
		snprintf(text, sizeof(text), "[queue:h]\nhandler = http\nurl = %s\n", with_userinfo[i]);
		fails_with(text, want, with_userinfo[i]);
	}
	fails_with("[queue:h]\nhandler = http\nurl = ftp://u:pw@example.com/x?key=k\n",
			   ":3: key \"url\": invalid URL \"ftp://<redacted>@example.com/x?<redacted>\": the "
			   "scheme must be http or https",
			   "other refusals print the URL redacted too");
	c = loads("[queue:h]\nhandler = http\nurl = https://api.example.com/u/a@b.com?api_key=k#f\n",
			  "an @ in the path, a key in the query");
	if (c != NULL)
	{
		is_str(c->queues[0].url, "https://api.example.com/u/a@b.com?api_key=k#f",
			   "url as written: the requests go there");
		is_str(c->queues[0].url_shown, "https://api.example.com/u/a@b.com?<redacted>#<redacted>",
			   "url_shown: query and fragment redacted");
	}
	config_free(c);
}

/* Loads text from a file of the given mode; *secrets from config_exposed_secrets. */
static bool
exposed(const char *text, mode_t mode, char *secrets, size_t len)
{
	char err[1024] = "";
	Config *c;
	bool found;

	write_tmp(text);
	chmod(tmp_path, mode);
	c = config_load(tmp_path, err, sizeof(err));
	unlink(tmp_path);
	if (c == NULL)
	{
		printf("#   error: %s\n", err);
		snprintf(secrets, len, "(not loaded)");
		return false;
	}
	found = config_exposed_secrets(c, secrets, len);
	config_free(c);
	return found;
}

/* A file that others can read and that holds secrets is warned about. */
static void
test_exposed_secrets(void)
{
	const char *secret_file =
		"[tqd]\nconninfo = host=db password=hunter2\n"
		"[queue:hooks]\nhandler = http\n"
		"url = https://api.example.com/in?v=2&api_key=k&Signature=s\n"
		"headers = X-Env: prod\n  Authorization: Bearer abc\n  X-Api-Key: k\n";
	const char *plain_file = "[tqd]\nconninfo = host=db user=tqd\n"
							 "[queue:hooks]\nhandler = http\nurl = https://api.example.com/in?v=2\n"
							 "headers = X-Env: prod\n";
	char secrets[1024];

	ok(exposed(secret_file, 0644, secrets, sizeof(secrets)),
	   "mode 0644 with a password and secret headers: warned");
	is_str(secrets,
		   "conninfo password, header \"Authorization\" of queue \"hooks\", header \"X-Api-Key\" "
		   "of queue \"hooks\", URL parameter \"api_key\" of queue \"hooks\", URL parameter "
		   "\"Signature\" of queue \"hooks\"",
		   "... naming each secret, never its value");
	ok(exposed(secret_file, 0640, secrets, sizeof(secrets)), "mode 0640 (the group reads): warned");
	ok(exposed("[tqd]\nconninfo = postgresql://tqd:hunter2@db/app\n[queue:q]\nhandler = noop\n",
			   0604, secrets, sizeof(secrets)) &&
		   strcmp(secrets, "conninfo password") == 0,
	   "a password in a conninfo URI counts too: %s", secrets);
	ok(!exposed(secret_file, 0600, secrets, sizeof(secrets)) && secrets[0] == '\0',
	   "mode 0600: no warning");
	ok(!exposed(secret_file, 0400, secrets, sizeof(secrets)), "mode 0400: no warning");
	ok(!exposed(plain_file, 0644, secrets, sizeof(secrets)),
	   "mode 0644 without secrets: no warning (%s)", secrets);
}

int
main(void)
{
	plan(378);
	test_sample();
	test_defaults();
	test_values();
	test_errors();
	test_lines();
	test_split_argv();
	test_misc();
	test_http();
	test_http_access();
	test_pass_env();
	test_url_secrets();
	test_exposed_secrets();
	return done_testing();
}
