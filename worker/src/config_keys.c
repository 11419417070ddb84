/*
 * config_keys.c
 *	  Every key of tqd's configuration, in one declarative table, and the
 *	  defaults printer made from it.
 *
 * The table is the single source of truth: parsing, defaults, bounds, the
 * cross-handler rules, config_print_defaults (hence the sample file
 * worker/tqd.conf.sample) and the error messages are all driven by it.  A
 * key's name is the name of its field in Config or QueueConf (the KEY macro
 * takes the field and stringifies it), so the two cannot drift apart.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "config_keys.h"
#include "util.h"

/* The values of the KT_ENUM keys, in their enums' order, NULL-ended. */
const char *const handler_names[] = {"noop", "exec", "sql", "http", NULL};
static const char *const method_names[] = {"POST", "PUT", "PATCH", NULL};
static const char *const off_on_names[] = {"off", "on", NULL};
static const char *const commit_names[] = {"sync", "async", NULL};
static const char *const log_level_names[] = {"debug", "info", "warning", "error", NULL};

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
const KeyDef config_keys[NKEYS] = {
	/* [tqd] */
	G(conninfo, KT_STRING, "", 0, 0, .check = check_conninfo,
	  .desc = "libpq connection string (\"host=db dbname=app\" or a postgresql:// URI); "
			  "empty = libpq's defaults from the environment (PGHOST, PGDATABASE, ...)."),
	G(worker_name, KT_STRING, "", 0, 0,
	  .desc = "This worker's name in tq's views and logs; empty = host:pid."),
	G(slots, KT_INT, "16", 1, 10000, .desc = "Tasks running at once, over all queues."),
	G(lease_batch, KT_INT, "200", 1, 10000, .desc = "Most tasks leased in one call."),
	G(flush_interval, KT_DURATION, "5ms", 0, 10,
	  .desc = "Outcomes of finished tasks are sent to the database in groups, this often."),
	G(lease_commit, KT_ENUM, "async", 0, 0, .names = commit_names,
	  .desc = "How leases and heartbeats commit: async (synchronous_commit = off on their "
			  "connection: no wait for the disk; a lease a server crash loses only means the "
			  "task runs again, and its lease token fences the old run's outcome) or sync "
			  "(the server's setting).  Read at connect."),
	G(outcome_commit, KT_ENUM, "sync", 0, 0, .names = commit_names,
	  .desc = "How outcome batches (tq_complete, tq_fail, tq_release) commit: sync (the "
			  "server's setting: an outcome others can see survives a server crash) or async "
			  "(a crash may lose the last outcomes; those tasks run again, and tq_wait may have "
			  "shown a result that is then replaced).  Read at connect."),
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
			  "results: keep the address private, set http_token_file, or put an "
			  "authenticating proxy in front."),
	G(http_allowed_hosts, KT_STRING, "", 0, 0, .check = check_http_allowed_hosts,
	  .desc = "Host names, besides localhost and IP addresses, that a request to "
			  "metrics_listen may name in its Host header (any port), separated by blanks "
			  "or commas: the name a proxy or a Prometheus target uses, a Kubernetes "
			  "service.  Another name gets 421, against DNS rebinding; /healthz and /readyz "
			  "answer whatever the name."),
	G(http_token_file, KT_STRING, "", 0, 0, .check = check_http_token_file,
	  .desc = "File holding a bearer token: one line of at least 16 printable characters "
			  "(openssl rand -hex 32).  With one, /metrics and the dashboard's data (/api/*) "
			  "need \"Authorization: Bearer TOKEN\" (401 without); /healthz, /readyz and the "
			  "dashboard's page do not, and the page asks for the token.  Read again at "
			  "reload; empty = no token."),
	G(http_max_connections, KT_INT, "256", 1, 10000,
	  .desc = "Connections metrics_listen holds open at once; more wait to be accepted.  "
			  "Read at start."),
	G(http_max_connections_per_ip, KT_INT, "16", 1, 10000,
	  .desc = "Connections one client address may hold open on metrics_listen; more are "
			  "closed at once, so that one client cannot keep out the probes of others.  "
			  "Behind a reverse proxy every request comes from its address.  Read at start."),
	G(http_timeout, KT_DURATION, "5s", 1, HOUR,
	  .desc = "A connection of metrics_listen that sends nothing for this long is closed "
			  "(whole seconds, rounded up).  Read at start."),
	G(log_level, KT_ENUM, "info", 0, 0, .names = log_level_names,
	  .desc = "Least severe messages logged."),

	/* [queue:NAME] */
	Q(handler, KT_ENUM, NULL, 0, 0, .flags = KF_REQUIRED, .example = "exec", .names = handler_names,
	  .desc = "How tasks are run: noop completes them at once, exec runs a program, "
			  "sql calls a database function, http sends the payload to a URL."),
	Q(concurrency, KT_INT, "4", 1, 10000,
	  .desc = "Tasks of this queue running at once in this tqd (http: the most requests "
			  "in flight; the adaptive window stays at or below it)."),
	Q(lease_ahead, KT_INT, "128", 0, 10000,
	  .desc = "Most tasks of this queue leased ahead of a free slot, so that a slot that "
			  "frees starts its next task without waiting for the database; sized from the "
			  "queue's start rate and the lease round trip (none for a queue of long tasks), "
			  "up to this.  Buffered tasks are leased: their leases are renewed, and they "
			  "count against quotas.  0 = lease only for free slots."),
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
	Q(pass_env, KT_STRING, "PATH HOME LANG LC_* TZ TMPDIR USER LOGNAME SHELL", 0, 0,
	  .handlers = ONLY(HANDLER_EXEC), .check = check_pass_env,
	  .desc = "Variables of tqd's environment the program gets, separated by blanks: names, "
			  "or a prefix and * (LC_*); * alone passes them all, empty none.  The task's own "
			  "(TQ_TASK_ID, ...) are set whatever this says.  Secrets in tqd's environment "
			  "(PGPASSWORD, AWS_SECRET_ACCESS_KEY) reach the program only if listed here."),
	Q(function, KT_STRING, NULL, 0, 0, .flags = KF_REQUIRED, .example = "app.handle_task",
	  .handlers = ONLY(HANDLER_SQL), .check = check_function,
	  .desc = "Function called with each task's payload, as name or schema.name."),
	Q(url, KT_STRING, NULL, 0, 0, .flags = KF_REQUIRED, .example = "https://api.example.com/tasks",
	  .handlers = ONLY(HANDLER_HTTP), .check = check_url,
	  .desc = "Where each task is sent (http:// or https://); the payload is the body, "
			  "never part of the URL.  No user name or password in it (put them in headers): "
			  "tqd prints the URL in logs, task logs and /metrics, with the query and fragment "
			  "shown as ?<redacted> and #<redacted>."),
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

_Static_assert(lengthof(config_keys) == NKEYS, "NKEYS must be the number of keys in config_keys[]");

/* "exec", or "exec and sql" for a key that applies to several handlers. */
void
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
	const char *bounded = NULL; /* a number's word before its range */
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
		case KT_REAL:
			bounded = "Range";
			break;
		case KT_DURATION:
			bounded = "Duration";
			break;
		case KT_SIZE:
			bounded = "Size";
			break;
	}
	if (bounded != NULL)
	{
		format_range(k, range, sizeof(range));
		snprintf(buf, len, "%s: %s.", bounded, range);
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
		if (config_keys[i].names == handler_names && config_keys[i].example != NULL)
			for (int h = 0; handler_names[h] != NULL; h++)
				if (strcmp(handler_names[h], config_keys[i].example) == 0)
					example_handler = h;

	for (int scope = SCOPE_GLOBAL; scope <= SCOPE_QUEUE; scope++)
	{
		fprintf(out, "%s\n", scope == SCOPE_GLOBAL ? "[tqd]" : "\n[queue:example]");
		for (int i = 0; i < NKEYS; i++)
		{
			const KeyDef *k = &config_keys[i];
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
