/*
 * pgconn.h
 *	  One asynchronous PostgreSQL connection on the libev loop: libpq's
 *	  non-blocking API in pipeline mode, reconnecting with backoff.
 *
 * API: pgc_new, pgc_connect, pgc_send (queue a query; its result goes to
 * a callback), pgc_ready, pgc_free.  The owner gets a few events through
 * one callback: CONNECTED (queries may be sent), DISCONNECTED (the
 * connection or an attempt failed: libpq's message; a reconnect is
 * scheduled), NOTIFY (channel and payload).
 *
 * Every query is followed by a Sync, so each is its own transaction and
 * its callback runs when the Sync's result arrives, that is once the
 * transaction has committed (or failed).  Queries sent together share a
 * round trip.  A callback gets NULL when the connection was lost before
 * the query's result arrived: the query may or may not have run.
 *
 * libpq's protocol, exactly: after sending, PQflush until it returns 0,
 * waiting for write (and read, calling PQconsumeInput) while it returns 1;
 * on read, PQconsumeInput, then PQgetResult while !PQisBusy; PQclear every
 * result; the watcher is re-armed with PQsocket() at every wait, since the
 * descriptor changes across reconnects (and during a multi-host connect).
 *
 * Ownership: the PgConn owns its PGconn and the queue of pending
 * callbacks.  pgc_free may be called from anywhere, this connection's own
 * callbacks included: while one of them runs, the free waits until it
 * returns.
 */
#ifndef TQD_PGCONN_H
#define TQD_PGCONN_H

#include <stdbool.h>

#include <ev.h>
#include <libpq-fe.h>

typedef struct PgConn PgConn;

typedef enum PgConnEvent
{
	PGC_CONNECTED,    /* ready: queries may be sent */
	PGC_DISCONNECTED, /* lost or failed to connect; a reconnect is due after the delay */
	PGC_NOTIFY,       /* a notification arrived */
} PgConnEvent;

/*
 * Event callback.  CONNECTED: a and b NULL.  DISCONNECTED: a = libpq's
 * error message, b = the delay before the next attempt in seconds, as text.
 * NOTIFY: a = channel, b = payload.
 */
typedef void (*PgConnEventFn)(PgConn *c, PgConnEvent ev, const char *a, const char *b, void *arg);

/*
 * Result callback: res is the query's last result (PGRES_TUPLES_OK,
 * PGRES_COMMAND_OK or PGRES_FATAL_ERROR...), owned by the PgConn and
 * cleared after the callback; NULL if the connection was lost first.
 */
typedef void (*PgResultFn)(PgConn *c, const PGresult *res, void *arg);

typedef struct PgConnOpts
{
	double connect_timeout; /* s, per attempt */
	double reconnect_min;   /* s */
	double reconnect_max;   /* s */
} PgConnOpts;

extern PgConn *pgc_new(struct ev_loop *loop, const char *name, const char *conninfo,
					   const PgConnOpts *opts, PgConnEventFn event_fn, void *arg);
/* Starts connecting (at once, or after the backoff delay if one runs). */
extern void pgc_connect(PgConn *c);
/* Changes the connection string used by the next connection attempt. */
extern void pgc_set_conninfo(PgConn *c, const char *conninfo);
extern bool pgc_ready(const PgConn *c);
/*
 * Sends a query with text parameters (NULL values allowed); fn may be
 * NULL when nobody needs the result.  Returns false
 * (and calls nothing) when the connection is not ready or libpq refused
 * the query; the connection is then being reset.
 */
extern bool pgc_send(PgConn *c, const char *sql, int nparams, const char *const *values,
					 PgResultFn fn, void *arg) __attribute__((warn_unused_result));
/* The server's error fields of a failed result, for logs. */
extern const char *pgc_sqlstate(const PGresult *res);
extern const char *pgc_error(const PGresult *res);
extern const char *pgc_name(const PgConn *c);
/* Closes the connection and frees it; pending callbacks get NULL first. */
extern void pgc_free(PgConn *c);

/*
 * Reconnect delay for the n-th consecutive failure (n >= 1): min * 2^(n-1)
 * capped at max, then jittered down by up to a quarter with r in [0, 1).
 */
extern double backoff_delay(int n, double min, double max, double r);

#endif
