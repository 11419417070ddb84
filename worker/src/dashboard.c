/*
 * dashboard.c
 *	  The dashboard's page and its database answers (dashboard.h).
 *
 * The page is three static files built into tqd (assets.S includes
 * dashboard/index.html, .js and .css), so a tqd binary is all a host
 * needs.  The script fetches /api/queues every few seconds and
 * /api/task?id=N for a look-up, and writes every value with textContent,
 * never as HTML: task errors, logs and results are whatever handlers
 * wrote.
 *
 * Each /api request is one query on the dashboard's own connection, whose
 * result is a single JSON text built by the server (json_build_object over
 * the extension's views and functions, which the tq_worker role may
 * read); the request is suspended until the answer is back.  The views
 * read shared-memory counters and indexes, so the queries stay cheap on
 * large tables (make bench shows them); statement_timeout bounds them all
 * the same.  When the connection is down, requests get 503 at once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "dashboard.h"
#include "log.h"

/* The files built in by assets.S; each ends with a NUL not counted. */
extern const char tqd_asset_html[], tqd_asset_html_end[];
extern const char tqd_asset_js[], tqd_asset_js_end[];
extern const char tqd_asset_css[], tqd_asset_css_end[];

/* Longest a dashboard query may take. */
#define STATEMENT_TIMEOUT "5s"

struct Dashboard
{
	PgConn *conn;
	long long disconnects;
};

/*
 * Every queue: live counts (tq_queue_stats), what it did in the last 1, 5
 * and 15 minutes (tq_queue_activity), its dead tasks still in history
 * (counted up to 1 000 through the dead-task index: each is a heap visit,
 * about 1 us, and make bench has 100 000 dead in one queue), and the ten
 * latest dead tasks of all queues.
 */
static const char queues_sql[] =
	"WITH act AS MATERIALIZED (SELECT * FROM tq_queue_activity) "
	"SELECT 200, json_build_object("
	"  'database', current_database(),"
	"  'now', now(),"
	"  'queues', coalesce(("
	"    SELECT json_agg(json_build_object("
	"      'queue', s.queue, 'paused', s.queue_paused,"
	"      'scheduled', s.scheduled, 'ready', s.ready, 'held', s.paused, 'running', s.running,"
	"      'next_ready_wait', extract(epoch FROM s.next_ready_wait),"
	"      'lease_rate', s.lease_rate,"
	"      'dead', (SELECT count(*) FROM (SELECT 1 FROM tq_dead x"
	"                WHERE x.queue = s.queue LIMIT 1000) y),"
	"      'activity', (SELECT json_object_agg(a.window_minutes, json_build_object("
	"          'succeeded', a.succeeded, 'failed', a.failed, 'dead', a.dead,"
	"          'other', a.other, 'per_sec', a.finished_per_sec,"
	"          'failure_rate', a.failure_rate))"
	"        FROM act a WHERE a.queue = s.queue))"
	"      ORDER BY s.queue)"
	"    FROM tq_queue_stats s), '[]'),"
	"  'dead_recent', coalesce(("
	"    SELECT json_agg(json_build_object('id', x.id, 'queue', x.queue, 'tenant', x.tenant,"
	"        'attempts', x.attempts, 'finished_at', x.finished_at,"
	"        'last_error', left(x.last_error, 500)) ORDER BY x.finished_at DESC, x.id DESC)"
	"      FROM (SELECT * FROM tq_dead ORDER BY finished_at DESC LIMIT 10) x), '[]'))";

/*
 * One task: its row (tq_task), its attempts (tq_task_trace; the intervals
 * also in seconds, for the page), its log.
 */
static const char task_sql[] =
	"SELECT CASE WHEN t IS NULL THEN 404 ELSE 200 END, json_build_object("
	"  'id', $1::bigint,"
	"  'task', row_to_json(t),"
	"  'trace', coalesce((SELECT json_agg(x ORDER BY x.attempt) FROM ("
	"      SELECT a.*, extract(epoch FROM a.queue_wait) AS queue_wait_s,"
	"             extract(epoch FROM a.run_time) AS run_time_s"
	"        FROM tq_task_trace($1::bigint) a) x), '[]'),"
	"  'log', coalesce((SELECT json_agg(l ORDER BY l.n) FROM tq_task_log($1::bigint) l), '[]'))"
	"  FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT * FROM tq_task($1::bigint)) t ON true";

static void
json_error(Buf *b, const char *error)
{
	json_t *o = json_pack("{ss}", "error", error);
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;

	buf_printf(b, "%s\n", s ? s : "{}");
	free(s);
	json_decref(o);
}

static void
conn_event(PgConn *c, PgConnEvent ev, const char *a, const char *b, void *arg)
{
	Dashboard *db = arg;

	switch (ev)
	{
		case PGC_CONNECTED:
			tlog(LOG_INFO, "connected", "conn=%s", pgc_name(c));
			if (!pgc_send(c, "SET statement_timeout = '" STATEMENT_TIMEOUT "'", 0, NULL, NULL,
						  NULL))
				return;
			break;
		case PGC_DISCONNECTED:
			tlog(LOG_WARNING, "connection failed", "conn=%s error=%s retry_in=%s", pgc_name(c),
				 kvq(a), b);
			db->disconnects++;
			break;
		case PGC_NOTIFY:
			break;
	}
}

/* A query's answer: (status, json) from the server, or an error. */
static void
api_result(PgConn *c, const PGresult *res, void *arg)
{
	HttpdReq *req = arg;
	Buf body = {0};
	int status;

	if (res == NULL)
	{
		json_error(&body, "the database connection was lost");
		status = 503;
	}
	else if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
	{
		status = atoi(PQgetvalue(res, 0, 0));
		buf_printf(&body, "%s\n", PQgetvalue(res, 0, 1));
	}
	else
	{
		char msg[600];

		snprintf(msg, sizeof(msg), "query failed: %s", pgc_error(res));
		tlog(LOG_WARNING, "dashboard query failed", "sqlstate=%s error=%s", pgc_sqlstate(res),
			 kvq(pgc_error(res)));
		json_error(&body, msg);
		/* statement_timeout: the server is busy, not broken. */
		status = strcmp(pgc_sqlstate(res), "57014") == 0 ? 503 : 500;
	}
	httpd_reply(req, status, "application/json", &body);
}

/* Sends sql for req; answers 503 at once when that cannot be done. */
static int
api_query(Dashboard *db, HttpdReq *req, const char *sql, int nparams, const char *const *params,
		  Buf *body, const char **type)
{
	*type = "application/json";
	if (!pgc_ready(db->conn))
	{
		json_error(body, "the database is unreachable (tqd is reconnecting)");
		return 503;
	}
	if (!pgc_send(db->conn, sql, nparams, params, api_result, req))
	{
		json_error(body, "the database connection failed");
		return 503;
	}
	return HTTPD_LATER;
}

/* A task id: 1 to 19 digits, no sign, within bigint. */
static bool
valid_id(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > 19)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return n < 19 || strcmp(s, "9223372036854775807") <= 0;
}

static int
asset(Buf *body, const char **type, const char *ctype, const char *start, const char *end)
{
	size_t len = (size_t) (end - start) - 1; /* the NUL assets.S adds */

	body->data = malloc(len + 1);
	if (body->data == NULL)
		return 500;
	memcpy(body->data, start, len);
	body->len = len;
	body->cap = len + 1;
	*type = ctype;
	return 200;
}

bool
dashboard_is_page(const char *path)
{
	return strcmp(path, "/") == 0 || strcmp(path, "/index.html") == 0 ||
		   strcmp(path, "/dashboard.js") == 0 || strcmp(path, "/dashboard.css") == 0;
}

int
dashboard_serve(Dashboard *db, HttpdReq *req, const char *path, Buf *body,
				const char **content_type)
{
	if (strcmp(path, "/") == 0 || strcmp(path, "/index.html") == 0)
		return asset(body, content_type, "text/html; charset=utf-8", tqd_asset_html,
					 tqd_asset_html_end);
	if (strcmp(path, "/dashboard.js") == 0)
		return asset(body, content_type, "text/javascript; charset=utf-8", tqd_asset_js,
					 tqd_asset_js_end);
	if (strcmp(path, "/dashboard.css") == 0)
		return asset(body, content_type, "text/css; charset=utf-8", tqd_asset_css,
					 tqd_asset_css_end);
	if (strcmp(path, "/api/queues") == 0)
		return api_query(db, req, queues_sql, 0, NULL, body, content_type);
	if (strcmp(path, "/api/task") == 0)
	{
		const char *id = httpd_query(req, "id");

		if (!valid_id(id))
		{
			*content_type = "application/json";
			json_error(body, "id must be a task id: a positive whole number");
			return 400;
		}
		return api_query(db, req, task_sql, 1, &id, body, content_type);
	}
	return DASHBOARD_NOT_MINE;
}

Dashboard *
dashboard_new(struct ev_loop *loop, const char *conninfo, const PgConnOpts *opts)
{
	Dashboard *db = calloc(1, sizeof(Dashboard));

	if (db == NULL)
		return NULL;
	db->conn = pgc_new(loop, "dashboard", conninfo, opts, conn_event, db);
	pgc_connect(db->conn);
	return db;
}

void
dashboard_set_conninfo(Dashboard *db, const char *conninfo)
{
	pgc_set_conninfo(db->conn, conninfo);
}

long long
dashboard_disconnects(const Dashboard *db)
{
	return db->disconnects;
}

bool
dashboard_connected(const Dashboard *db)
{
	return pgc_ready(db->conn);
}

void
dashboard_free(Dashboard *db)
{
	if (db == NULL)
		return;
	pgc_free(db->conn); /* waiting requests' callbacks get NULL: 503 */
	free(db);
}
