/*
 * dashboard.h
 *	  tqd's read-only dashboard: a page (HTML, script and style built into
 *	  tqd) and the JSON it reads, on the metrics_listen endpoint when
 *	  `dashboard = on`.
 *
 *	  /                   the page
 *	  /dashboard.js, /dashboard.css
 *	  /api/queues         every queue of the database: live counts, rates
 *	                      and failure rates over 1/5/15 minutes, dead
 *	                      tasks, and the latest dead tasks
 *	  /api/task?id=N      one task: its row, per-attempt trace and log
 *
 *	  The /api answers come from the database on a connection of the
 *	  dashboard's own, so a slow or failing query never delays leases or
 *	  outcomes; each query is bounded by a statement timeout, and the
 *	  server builds the JSON.  tqd's own state (/api/tqd) is answered by
 *	  metrics.c from memory.
 */
#ifndef TQD_DASHBOARD_H
#define TQD_DASHBOARD_H

#include <ev.h>

#include "httpd.h"
#include "pgconn.h"

typedef struct Dashboard Dashboard;

/* A path the dashboard does not serve. */
#define DASHBOARD_NOT_MINE (-1)

/* Makes the dashboard's connection and starts connecting. */
extern Dashboard *dashboard_new(struct ev_loop *loop, const char *conninfo, const PgConnOpts *opts);
/* From the next connection on (a reload changed conninfo). */
extern void dashboard_set_conninfo(Dashboard *db, const char *conninfo);
/*
 * Answers path as an HttpdHandler does (a status, or HTTPD_LATER), or
 * returns DASHBOARD_NOT_MINE.
 */
extern int dashboard_serve(Dashboard *db, HttpdReq *req, const char *path, Buf *body,
						   const char **content_type);
/*
 * path is one of the page's own files (/, /index.html, /dashboard.js,
 * /dashboard.css): the same for everyone, without data.
 */
extern bool dashboard_is_page(const char *path);
/* Times the connection was lost (for /metrics). */
extern long long dashboard_disconnects(const Dashboard *db);
extern bool dashboard_connected(const Dashboard *db);
/* Closes the connection: requests still waiting get 503. */
extern void dashboard_free(Dashboard *db);

#endif
