/*
 * latency.c: wake-up latencies of tq, for test/bench/run.sh.
 *
 *   latency ready   DBNAME QUEUE N WARMUP SPACING_MS
 *   latency delayed DBNAME QUEUE N OFFSETS_MS
 *
 * Two connections to DBNAME (PGHOST, PGPORT and PGUSER come from the
 * environment): a listener that LISTENs on tq_ready, and a submitter in
 * autocommit.  The queue must exist; its tasks are left behind for the
 * caller to drop.
 *
 * ready: WARMUP + N times, one SELECT tq_submit(QUEUE, '{}') every
 * SPACING_MS (so that the system is idle when each one starts).  A sample
 * is the time from just before the submit is sent to the moment the
 * listener's socket becomes readable with the tq_ready whose payload is
 * QUEUE (CLOCK_MONOTONIC).  Both sockets are polled together, so a
 * notification that arrives before the submit's own reply is timed when it
 * arrives.  The WARMUP first samples are dropped.
 *
 * delayed: N times, one SELECT tq_submit(QUEUE, '{}', run_at =>
 * clock_timestamp() + OFFSET), OFFSET taken in turn from the comma-separated
 * OFFSETS_MS; then the task's run_at as the server stored it (tq_task), and
 * the wait for the tq_ready that the promotion of that task sends.  A sample
 * is the arrival time of that notification (CLOCK_REALTIME) minus run_at:
 * the server runs on this machine, so its clock_timestamp() and our
 * CLOCK_REALTIME are the same clock (the offset between them is measured at
 * start and printed as a check).  The task is leasable from the commit of
 * its promotion, which the worker makes before it sends the notification:
 * a sample is an upper bound of run_at-to-leasable.  The next task is
 * submitted only after the previous one's notification, so tasks come due
 * one at a time.
 *
 * Output, on stdout: "detail ..." lines, then one line
 *   result n=N lost=L p50=MS p99=MS max=MS mean=MS [early=E]
 * (p50 and p99 by nearest rank over the samples received; lost: no
 * notification within 2 s of when it was due; delayed only, early: tasks
 * notified before their run_at, which must be 0).  Exit status 0 when the run
 * completed (lost samples included), 1 on a database error, 2 on bad usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#define CHANNEL "tq_ready"
#define LOST_AFTER_US 2000000 /* a notification later than this is lost */
#define MAX_OFFSETS 32

static int64_t
now_us(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
die(const char *fmt, ...)
{
	va_list ap;

	fputs("latency: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static PGconn *
connect_db(const char *dbname)
{
	const char *keys[] = {"dbname", "application_name", NULL};
	const char *vals[] = {dbname, "tq bench latency", NULL};
	PGconn *conn = PQconnectdbParams(keys, vals, 0);

	if (PQstatus(conn) != CONNECTION_OK)
		die("could not connect to %s: %s", dbname, PQerrorMessage(conn));
	return conn;
}

/* Runs SQL, which must return tuples or nothing; returns the result. */
static PGresult *
run(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
	PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);

	if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
		die("%s failed: %s", sql, PQerrorMessage(conn));
	return res;
}

/*
 * Takes whatever the listener has received; returns how many tq_ready
 * notifications for queue it held (others are counted in *other).
 */
static int
take_notifies(PGconn *listener, const char *queue, int *other)
{
	PGnotify *n;
	int mine = 0;

	if (!PQconsumeInput(listener))
		die("listener: %s", PQerrorMessage(listener));
	while ((n = PQnotifies(listener)) != NULL)
	{
		if (strcmp(n->relname, CHANNEL) == 0 && strcmp(n->extra, queue) == 0)
			mine++;
		else
			(*other)++;
		PQfreemem(n);
	}
	return mine;
}

/*
 * Waits until the listener holds a tq_ready for queue or the clock clk
 * passes deadline; returns the time (on clk) at which its socket turned
 * readable with it, or -1.
 */
static int64_t
wait_notify(PGconn *listener, const char *queue, clockid_t clk, int64_t deadline, int *other)
{
	for (;;)
	{
		struct pollfd pfd = {.fd = PQsocket(listener), .events = POLLIN};
		int64_t t = now_us(clk);
		int rc;

		if (t >= deadline)
			return -1;
		rc = poll(&pfd, 1, (int) ((deadline - t + 999) / 1000));
		t = now_us(clk);
		if (rc < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		if (rc > 0 && take_notifies(listener, queue, other) > 0)
			return t;
	}
}

static int
cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile of n sorted values, in ms. */
static double
pct(const int64_t *v, int n, double p)
{
	int k = (int) ceil(p / 100.0 * n);

	if (k < 1)
		k = 1;
	return v[k - 1] / 1000.0;
}

static void
summary(const char *prefix, int64_t *v, int n, int lost, const char *suffix)
{
	double sum = 0;

	if (n == 0)
	{
		printf("%s n=0 lost=%d p50=nan p99=nan max=nan mean=nan%s\n", prefix, lost, suffix);
		return;
	}
	qsort(v, n, sizeof(v[0]), cmp_i64);
	for (int i = 0; i < n; i++)
		sum += v[i];
	printf("%s n=%d lost=%d p50=%.3f p99=%.3f max=%.3f mean=%.3f%s\n", prefix, n, lost,
		   pct(v, n, 50), pct(v, n, 99), v[n - 1] / 1000.0, sum / n / 1000.0, suffix);
}

static void
sleep_until_mono(int64_t t_us)
{
	struct timespec ts = {.tv_sec = t_us / 1000000, .tv_nsec = (t_us % 1000000) * 1000};

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/*
 * The submit, sent without waiting, and both sockets polled until its
 * reply is in and the notification has come (or is lost).  Returns the
 * latency in microseconds, or -1 when lost.
 */
static int64_t
ready_sample(PGconn *listener, PGconn *submitter, const char *queue, int *other)
{
	const char *params[] = {queue};
	bool got_notify = false, got_result = false;
	int64_t t0, t1 = -1, deadline;

	(void) take_notifies(listener, queue, other); /* strays: none expected */
	t0 = now_us(CLOCK_MONOTONIC);
	if (!PQsendQueryParams(submitter, "SELECT tq_submit($1, '{}')", 1, NULL, params, NULL, NULL, 0))
		die("submit: %s", PQerrorMessage(submitter));
	deadline = t0 + LOST_AFTER_US;
	while (!got_result || !got_notify)
	{
		struct pollfd pfd[2];
		int np = 0, il = -1, is = -1, rc;
		int64_t t = now_us(CLOCK_MONOTONIC);

		if (!got_notify)
		{
			if (t >= deadline)
				got_notify = true; /* lost */
			else
			{
				pfd[np] = (struct pollfd){.fd = PQsocket(listener), .events = POLLIN};
				il = np++;
			}
		}
		if (!got_result)
		{
			pfd[np] = (struct pollfd){.fd = PQsocket(submitter), .events = POLLIN};
			is = np++;
		}
		if (np == 0)
			break;
		rc = poll(pfd, np, got_notify ? -1 : (int) ((deadline - t + 999) / 1000));
		t = now_us(CLOCK_MONOTONIC);
		if (rc < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		if (rc <= 0)
			continue;
		if (il >= 0 && (pfd[il].revents & (POLLIN | POLLERR | POLLHUP)) &&
			take_notifies(listener, queue, other) > 0)
		{
			got_notify = true;
			t1 = t;
		}
		if (is >= 0 && (pfd[is].revents & (POLLIN | POLLERR | POLLHUP)))
		{
			if (!PQconsumeInput(submitter))
				die("submit: %s", PQerrorMessage(submitter));
			while (!PQisBusy(submitter))
			{
				PGresult *res = PQgetResult(submitter);

				if (res == NULL)
				{
					got_result = true;
					break;
				}
				if (PQresultStatus(res) != PGRES_TUPLES_OK)
					die("submit failed: %s", PQerrorMessage(submitter));
				PQclear(res);
			}
		}
	}
	return t1 < 0 ? -1 : t1 - t0;
}

static int
run_ready(PGconn *listener, PGconn *submitter, const char *queue, int n, int warmup, int spacing_ms)
{
	int64_t *v = calloc(n, sizeof(int64_t));
	int got = 0, lost = 0, other = 0;
	int64_t next = now_us(CLOCK_MONOTONIC);

	if (v == NULL)
		die("out of memory");
	for (int i = 0; i < warmup + n; i++)
	{
		int64_t lat;

		sleep_until_mono(next);
		next = now_us(CLOCK_MONOTONIC) + (int64_t) spacing_ms * 1000;
		lat = ready_sample(listener, submitter, queue, &other);
		if (i < warmup)
			continue;
		if (lat < 0)
			lost++;
		else
			v[got++] = lat;
	}
	printf("detail submits=%d (after %d warm-up) spaced %d ms; other notifications seen: %d\n", n,
		   warmup, spacing_ms, other);
	summary("result", v, got, lost, "");
	free(v);
	return 0;
}

/*
 * Offset of the server's clock_timestamp() from our CLOCK_REALTIME, from
 * the fastest of a few round trips: server minus the midpoint.
 */
static void
clock_check(PGconn *conn)
{
	int64_t best_rtt = INT64_MAX, best_off = 0;

	for (int i = 0; i < 20; i++)
	{
		int64_t a = now_us(CLOCK_REALTIME), b, s;
		PGresult *res =
			run(conn, "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint", 0, NULL);

		b = now_us(CLOCK_REALTIME);
		s = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		PQclear(res);
		if (b - a < best_rtt)
		{
			best_rtt = b - a;
			best_off = s - (a + b) / 2;
		}
	}
	printf("detail clock check: server clock_timestamp() - client CLOCK_REALTIME = %.3f ms "
		   "(+/- %.3f ms, half the fastest round trip)\n",
		   best_off / 1000.0, best_rtt / 2000.0);
}

static int
run_delayed(PGconn *listener, PGconn *submitter, const char *queue, int n, const char *offsets_ms)
{
	int noffs = 0;                    /* offsets in the list */
	int uniq[MAX_OFFSETS], nuniq = 0; /* the distinct ones */
	int which[MAX_OFFSETS];           /* the list's k-th is uniq[which[k]] */
	int64_t *v = calloc(n, sizeof(int64_t));
	int64_t *per[MAX_OFFSETS];
	int perg[MAX_OFFSETS] = {0}, perl[MAX_OFFSETS] = {0};
	int got = 0, lost = 0, other = 0, early = 0;
	char *list = strdup(offsets_ms), *tok, *save = NULL;
	char suffix[32];

	if (v == NULL || list == NULL)
		die("out of memory");
	for (tok = strtok_r(list, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save))
	{
		char *end;
		long o = strtol(tok, &end, 10);

		if (*end != '\0' || o < 1 || o > 60000 || noffs == MAX_OFFSETS)
		{
			fprintf(stderr, "latency: bad offset list \"%s\"\n", offsets_ms);
			return 2;
		}
		for (which[noffs] = 0; which[noffs] < nuniq; which[noffs]++)
			if (uniq[which[noffs]] == o)
				break;
		if (which[noffs] == nuniq)
		{
			uniq[nuniq] = (int) o;
			per[nuniq] = calloc(n, sizeof(int64_t));
			if (per[nuniq] == NULL)
				die("out of memory");
			nuniq++;
		}
		noffs++;
	}
	free(list);
	if (noffs == 0)
	{
		fprintf(stderr, "latency: no offsets\n");
		return 2;
	}
	clock_check(submitter);

	for (int i = 0; i < n; i++)
	{
		int k = which[i % noffs];
		char off[32];
		const char *p1[] = {queue, off};
		const char *p2[1];
		PGresult *res;
		int64_t run_at, t;

		snprintf(off, sizeof(off), "%d", uniq[k]);
		(void) take_notifies(listener, queue, &other);
		res = run(submitter,
				  "SELECT tq_submit($1, '{}', run_at => clock_timestamp() + $2 * interval '1 ms')",
				  2, p1);
		p2[0] = PQgetvalue(res, 0, 0);
		{
			PGresult *r2 = run(submitter,
							   "SELECT (extract(epoch FROM run_at) * 1000000)::bigint "
							   "FROM tq_task($1)",
							   1, p2);

			if (PQntuples(r2) != 1)
				die("task %s not found after its submit", p2[0]);
			run_at = strtoll(PQgetvalue(r2, 0, 0), NULL, 10);
			PQclear(r2);
		}
		PQclear(res);
		t = wait_notify(listener, queue, CLOCK_REALTIME, run_at + LOST_AFTER_US, &other);
		if (t < 0)
		{
			lost++;
			perl[k]++;
			continue;
		}
		if (t < run_at)
			early++;
		v[got++] = t - run_at;
		per[k][perg[k]++] = t - run_at;
	}
	printf("detail tasks=%d, run_at offsets %s ms in turn; notified before run_at: %d; other "
		   "notifications seen: %d\n",
		   n, offsets_ms, early, other);
	for (int k = 0; k < nuniq; k++)
	{
		char prefix[64];

		snprintf(prefix, sizeof(prefix), "detail offset %d ms:", uniq[k]);
		summary(prefix, per[k], perg[k], perl[k], "");
		free(per[k]);
	}
	snprintf(suffix, sizeof(suffix), " early=%d", early);
	summary("result", v, got, lost, suffix);
	free(v);
	return 0;
}

int
main(int argc, char **argv)
{
	PGconn *listener, *submitter;
	PGresult *res;
	int rc;

	if (argc < 5 || (strcmp(argv[1], "ready") == 0 && argc != 7) ||
		(strcmp(argv[1], "delayed") == 0 && argc != 6) ||
		(strcmp(argv[1], "ready") != 0 && strcmp(argv[1], "delayed") != 0))
	{
		fprintf(stderr, "usage: latency ready DBNAME QUEUE N WARMUP SPACING_MS\n"
						"       latency delayed DBNAME QUEUE N OFFSETS_MS\n");
		return 2;
	}
	if (atoi(argv[4]) < 1)
	{
		fprintf(stderr, "latency: N must be positive\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);

	listener = connect_db(argv[2]);
	submitter = connect_db(argv[2]);
	res = run(listener, "LISTEN " CHANNEL, 0, NULL);
	PQclear(res);

	if (strcmp(argv[1], "ready") == 0)
		rc = run_ready(listener, submitter, argv[3], atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
	else
		rc = run_delayed(listener, submitter, argv[3], atoi(argv[4]), argv[5]);

	PQfinish(listener);
	PQfinish(submitter);
	return rc;
}
