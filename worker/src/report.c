/*
 * report.c
 *	  Outcomes: flushed every flush_interval in batches on the report
 *	  connection, one statement per kind (tq_complete, tq_fail,
 *	  tq_release), with the tasks' log lines appended in the same
 *	  statement.
 *
 * A batch that does not land goes again: one lost with the connection
 * after reconnecting (its tasks are back in DONE), one the server refused
 * after a doubling delay (0.1 s to 10 s).  A result over
 * tq.max_payload_size (54000) is replaced by a note with its head, so one
 * oversized result cannot block the others.  Each task's outcome names its
 * attempt: one that landed once is refused the second time, harmlessly.
 *
 * Ownership: a Batch and its array of task pointers belong to its query's
 * callback, which frees them and the tasks whose outcome committed.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "log.h"
#include "util.h"

/*
 * A batch on its way.  Its tasks stay in TASK_SENT, which nothing frees
 * but this batch's callback (a connection lost runs it with NULL before
 * anything else happens), so the pointers stay valid until then.
 */
typedef struct Batch
{
	Daemon *d;
	Report kind;
	int n;
	Task **tasks;
	double sent; /* ev_time() when sent */
} Batch;

/*
 * One statement per kind of report.  Arrays travel as JSON documents built
 * with jansson and unpacked in order by jsonb_array_elements ... WITH
 * ORDINALITY: no hand-quoted array literals but the ids and attempts.
 * The log lines go in the same statement (one transaction) as the
 * outcome, first, while the tasks still run in tq: a batch sent again
 * after a lost connection cannot log twice.  tq_fail's delays are seconds
 * or null per task (null: tq's own backoff).
 */
/*
 * Each statement comes without and with the tasks' lease tokens (tq 0.7.0
 * on: tq_lease returns them, and the calls fence on them exactly), and
 * without and with the log lines.  A batch quotes tokens when one of its
 * tasks has one; a task leased before the extension's update has none and
 * quotes NULL.
 */
#define LOG_CTE(leases)                                                                            \
	"WITH l AS MATERIALIZED (SELECT tq_append_log($1::bigint[], $2::integer[],"                    \
	" ARRAY(SELECT e FROM jsonb_array_elements($3::jsonb)"                                         \
	" WITH ORDINALITY a(e, o) ORDER BY o)" leases "))"
#define COMPLETE_SQL(leases, from)                                                                 \
	" SELECT tq_complete($1::bigint[], $2::integer[],"                                             \
	" ARRAY(SELECT e FROM jsonb_array_elements($4::jsonb)"                                         \
	" WITH ORDINALITY a(e, o) ORDER BY o)" leases ")" from
#define FAIL_SQL(leases, from)                                                                     \
	" SELECT tq_fail($1::bigint[], $2::integer[],"                                                 \
	" ARRAY(SELECT e FROM jsonb_array_elements_text($4::jsonb)"                                    \
	" WITH ORDINALITY a(e, o) ORDER BY o),"                                                        \
	" ARRAY(SELECT e FROM jsonb_array_elements_text($5::jsonb)"                                    \
	" WITH ORDINALITY a(e, o) ORDER BY o),"                                                        \
	" ARRAY(SELECT CASE WHEN jsonb_typeof(e) = 'number'"                                           \
	" THEN make_interval(secs => e::text::float8) END"                                             \
	" FROM jsonb_array_elements($6::jsonb)"                                                        \
	" WITH ORDINALITY a(e, o) ORDER BY o)" leases ")" from
#define RELEASE_SQL(leases, from) " SELECT tq_release($1::bigint[], $2::integer[]" leases ")" from
/* Without log lines, $3 is still sent (null) and the statement says what it is ($3::jsonb). */
#define NO_LOG_CTE "WITH l AS (SELECT $3::jsonb)"
#define TOK ", leases => $5::bigint[]"
#define TOK_FAIL ", leases => $7::bigint[]"
#define TOK_RELEASE ", leases => $4::bigint[]"

/*
 * [kind][tokens][logs]: the statement of a batch of kind, quoting lease
 * tokens or not, appending log lines or not (a batch without any, most of
 * them, skips tq_append_log: a fifth of a completion's cost).
 */
static const struct
{
	const char *call; /* the function, for logs */
	int nparams;      /* $1 .. $nparams, as in BatchParams; one more with tokens */
	const char *sql[2][2];
} batch_calls[] = {
	[REPORT_COMPLETE] =
		{"tq_complete",
		 4,
		 {{NO_LOG_CTE COMPLETE_SQL("", ""), LOG_CTE("") COMPLETE_SQL("", " FROM l")},
		  {NO_LOG_CTE COMPLETE_SQL(TOK, ""), LOG_CTE(TOK) COMPLETE_SQL(TOK, " FROM l")}}},
	[REPORT_FAIL] = {"tq_fail",
					 6,
					 {{NO_LOG_CTE FAIL_SQL("", ""), LOG_CTE("") FAIL_SQL("", " FROM l")},
					  {NO_LOG_CTE FAIL_SQL(TOK_FAIL, ""),
					   LOG_CTE(TOK_FAIL) FAIL_SQL(TOK_FAIL, " FROM l")}}},
	[REPORT_RELEASE] = {"tq_release",
						3,
						{{NO_LOG_CTE RELEASE_SQL("", ""), LOG_CTE("") RELEASE_SQL("", " FROM l")},
						 {NO_LOG_CTE RELEASE_SQL(TOK_RELEASE, ""),
						  LOG_CTE(TOK_RELEASE) RELEASE_SQL(TOK_RELEASE, " FROM l")}}},
	[REPORT_DROP] = {"", 0, {{NULL, NULL}, {NULL, NULL}}}, /* nothing is reported */
};

/*
 * The parameters of one batch's statement, named and in the order of its
 * $n; every array has one element per task, in the batch's order.  The
 * members a kind does not take stay NULL.
 */
typedef struct BatchParams
{
	char *ids;       /* $1, bigint[] literal: the tasks */
	char *attempts;  /* $2, integer[] literal: their attempts */
	char *leases;    /* the last $n, bigint[] literal: their lease tokens (NULL: none) */
	bool any_token;  /* some task has a lease token: the statement quotes them */
	bool any_log;    /* some task has log lines: the statement appends them */
	json_t *logs;    /* $3: each task's log lines (an array of strings), or null */
	json_t *results; /* $4 of tq_complete: each task's result */
	json_t *errors;  /* $4 of tq_fail: each task's error */
	json_t *retries; /* $5 of tq_fail: each task's retry mode (auto, never, throttled) */
	json_t *delays;  /* $6 of tq_fail: seconds from Retry-After, or null */
	size_t len;      /* allocated bytes of ids and of attempts */
	size_t ids_used, attempts_used, leases_used;
} BatchParams;

/*
 * A result over tq.max_payload_size fails the whole batch (54000): the
 * largest result of the batch is replaced by a note saying so, with its
 * head, and the batch goes again (as often as it takes).
 */
static void
batch_shrink_largest(Daemon *d, Batch *b)
{
	Task *big = NULL;
	size_t big_len = 0;

	for (int i = 0; i < b->n; i++)
	{
		Task *t = b->tasks[i];
		char *dump;
		size_t len;

		if (t == NULL || t->result == NULL)
			continue;
		dump = json_dumps(t->result, JSON_COMPACT | JSON_ENCODE_ANY);
		len = dump ? strlen(dump) : 0;
		free(dump);
		if (big == NULL || len > big_len)
		{
			big = t;
			big_len = len;
		}
	}
	if (big == NULL)
		return;
	{
		json_t *note = json_object();
		char *dump = json_dumps(big->result, JSON_COMPACT | JSON_ENCODE_ANY);
		size_t head = dump ? strlen(dump) : 0;

		if (head > 1000)
			head = 1000;
		json_object_set_new(note, "tqd_error",
							json_string("the result was larger than tq.max_payload_size allows"));
		json_object_set_new(note, "bytes", json_integer((json_int_t) big_len));
		json_object_set_new(note, "head", json_stringn(dump ? dump : "", head));
		free(dump);
		json_decref(big->result);
		big->result = note;
		tlog(LOG_WARNING, "result too large: replaced by a note",
			 "task=%lld queue=%s attempt=%d bytes=%zu", big->id, kvq(big->queue->name),
			 big->attempt, big_len);
	}
}

/* Gives every task of the batch back to the next flush, or finishes it. */
static void
batch_result(PgConn *c, const PGresult *res, void *arg)
{
	Batch *b = arg;
	Daemon *d = b->d;
	const char *ok = NULL;
	size_t ok_len = 0;

	if (res != NULL)
		histogram_observe(&d->report_rtt, ev_time() - b->sent);

	if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
	{
		ok = PQgetvalue(res, 0, 0); /* {t,f,...}: one per task */
		ok_len = strlen(ok);
	}
	else if (res != NULL)
	{
		tlog(LOG_WARNING, "reporting outcomes failed; they are sent again",
			 "call=%s tasks=%d error=%s sqlstate=%s", batch_calls[b->kind].call, b->n,
			 kvq(pgc_error(res)), pgc_sqlstate(res));
		if (b->kind == REPORT_COMPLETE && strcmp(pgc_sqlstate(res), "54000") == 0)
			batch_shrink_largest(d, b);
	}
	for (int i = 0; i < b->n; i++)
	{
		Task *t = b->tasks[i];

		if (ok == NULL)
		{
			/* Again at the next flush. */
			(void) task_set_state(t, TASK_DONE);
			continue;
		}
		/* ok is "{t,f,t}": element i sits at 1 + 2 * i. */
		if (ok_len > (size_t) (1 + 2 * i) && ok[1 + 2 * i] == 'f')
			tlog(LOG_WARNING,
				 "outcome refused: the task's lease was lost (the task runs elsewhere or finished)",
				 "task=%lld queue=%s attempt=%d call=%s", t->id, kvq(t->queue->name), t->attempt,
				 batch_calls[b->kind].call);
		task_free(t);
	}
	free(b->tasks);
	free(b);
	if (ok != NULL)
		d->flush_retry = 0;
	else if (res != NULL)
	{
		/* The server refused the batch: not at once again, and less and less often. */
		d->flush_retry = d->flush_retry == 0 ? 0.1 : fmin(d->flush_retry * 2, 10.0);
		ev_timer_stop(d->loop, &d->flush_timer);
		ev_timer_set(&d->flush_timer, d->flush_retry, 0.);
		ev_timer_start(d->loop, &d->flush_timer);
	}
	else if (d->waiting > 0)
		report_flush_soon(d);
	lease_soon(d);
	stop_maybe_finish(d);
}

/* Empty arrays for n tasks of kind. */
static void
batch_params_init(BatchParams *bp, Report kind, int n)
{
	memset(bp, 0, sizeof(*bp));
	bp->len = (size_t) n * 22 + 3;
	bp->ids = xcalloc(1, bp->len);
	bp->attempts = xcalloc(1, bp->len);
	bp->leases = xcalloc(1, bp->len);
	bp->ids[bp->ids_used++] = '{';
	bp->attempts[bp->attempts_used++] = '{';
	bp->leases[bp->leases_used++] = '{';
	bp->logs = json_array(); /* any kind */
	if (kind == REPORT_COMPLETE)
		bp->results = json_array();
	else if (kind == REPORT_FAIL)
	{
		bp->errors = json_array();
		bp->retries = json_array();
		bp->delays = json_array();
	}
}

/* Appends the task's element to every array of its kind. */
static void
batch_params_add(BatchParams *bp, const Task *t, bool first)
{
	array_literal_append(bp->ids, bp->len, &bp->ids_used, t->id, first);
	array_literal_append(bp->attempts, bp->len, &bp->attempts_used, t->attempt, first);
	token_literal_append(bp->leases, bp->len, &bp->leases_used, t->lease_token, first);
	if (t->lease_token != 0)
		bp->any_token = true;
	if (bp->results)
		json_array_append(bp->results, t->result ? t->result : json_null());
	if (bp->errors)
	{
		json_array_append_new(bp->errors, json_string(t->error ? t->error : "failed"));
		json_array_append_new(bp->retries, json_string(retry_mode_sql(t->retry)));
		json_array_append_new(bp->delays,
							  t->retry_after >= 0 ? json_real(t->retry_after) : json_null());
	}
	json_array_append(bp->logs, t->log ? t->log : json_null());
	if (t->log != NULL)
		bp->any_log = true;
}

/* Frees what batch_params_init made; pgc_send has copied the texts. */
static void
batch_params_free(BatchParams *bp)
{
	free(bp->ids);
	free(bp->attempts);
	free(bp->leases);
	json_decref(bp->logs);
	json_decref(bp->results);
	json_decref(bp->errors);
	json_decref(bp->retries);
	json_decref(bp->delays);
}

/* A JSON parameter as text; NULL for an absent one. */
static char *
batch_json(const json_t *a)
{
	return a ? json_dumps(a, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
}

/* Sends one batch of the tasks in TASK_DONE with report kind. */
static void
batch_send(Daemon *d, Report kind)
{
	int n = 0, i = 0;
	Batch *b;
	BatchParams bp;
	char *logs, *results, *errors, *retries, *delays;
	const char *values[7];
	bool sent;
	int nparams;
	const char *sql;

	for (Task *t = d->tasks; t; t = t->next)
		if (t->state == TASK_DONE && t->report == kind)
			n++;
	if (n == 0)
		return;
	b = xcalloc(1, sizeof(Batch));
	b->d = d;
	b->kind = kind;
	b->tasks = xcalloc((size_t) n, sizeof(Task *));
	batch_params_init(&bp, kind, n);
	for (Task *t = d->tasks; t; t = t->next)
	{
		if (t->state != TASK_DONE || t->report != kind)
			continue;
		b->tasks[i] = t;
		batch_params_add(&bp, t, i == 0);
		(void) task_set_state(t, TASK_SENT);
		i++;
	}
	bp.ids[bp.ids_used++] = '}';
	bp.attempts[bp.attempts_used++] = '}';
	bp.leases[bp.leases_used++] = '}';
	b->n = n;
	b->sent = ev_time();
	logs = batch_json(bp.logs);
	results = batch_json(bp.results);
	errors = batch_json(bp.errors);
	retries = batch_json(bp.retries);
	delays = batch_json(bp.delays);
	values[0] = bp.ids;
	values[1] = bp.attempts;
	values[2] = logs;
	values[3] = kind == REPORT_COMPLETE ? results : errors;
	values[4] = retries;
	values[5] = delays;
	nparams = batch_calls[kind].nparams;
	if (bp.any_token)
		values[nparams++] = bp.leases;
	sql = batch_calls[kind].sql[bp.any_token][bp.any_log];
	sent = sql != NULL && pgc_send(d->report, sql, nparams, values, batch_result, b);
	if (!sent)
	{
		/*
		 * Not ready: this batch's tasks wait for the next flush.  Only
		 * this batch's: an earlier batch of the same kind may still be on
		 * its way, and its tasks must stay in TASK_SENT, which nothing
		 * frees before its callback runs.
		 */
		for (int j = 0; j < b->n; j++)
			(void) task_set_state(b->tasks[j], TASK_DONE);
		free(b->tasks);
		free(b);
	}
	free(logs);
	free(results);
	free(errors);
	free(retries);
	free(delays);
	batch_params_free(&bp);
}

/* flush_interval (or a refused batch's delay): one batch per kind that has outcomes. */
void
report_flush_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	Daemon *d = container_of(w, Daemon, flush_timer);

	if (!pgc_ready(d->report))
		return; /* CONNECTED flushes */
	batch_send(d, REPORT_COMPLETE);
	batch_send(d, REPORT_FAIL);
	batch_send(d, REPORT_RELEASE);
}

void
report_flush_soon(Daemon *d)
{
	if (!ev_is_active(&d->flush_timer))
	{
		ev_timer_set(&d->flush_timer, d->config->flush_interval, 0.);
		ev_timer_start(d->loop, &d->flush_timer);
	}
}
