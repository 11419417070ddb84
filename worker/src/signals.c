/*
 * signals.c
 *	  Stopping, signals and reload, with PostgreSQL's meanings: SIGTERM
 *	  drains, a second SIGTERM or SIGINT stops at once, SIGHUP reloads the
 *	  configuration and keeps the old one if the new one is bad (SIGPIPE
 *	  is ignored: daemon_run).
 *
 * Daemon.run_state:
 *
 *	RUN_ACTIVE    leasing
 *	RUN_DRAINING  SIGTERM: nothing more is leased; running tasks get
 *	              drain_timeout to finish
 *	RUN_STOPPING  what still runs is stopped and handed back; the last
 *	              outcomes are flushed, for drain_timeout (at least 5 s)
 *	RUN_DONE      the loop ends
 *
 * Every change goes through run_state_set, forward only.
 * stop_maybe_finish moves on once nothing runs (DRAINING) and nothing is
 * left to report (STOPPING); the other files call it whenever a task ends
 * or a batch comes back.
 *
 * Reload parses the file into a fresh Config and swaps it in only when it
 * is good; queues and endpoints are synced to it.  A new conninfo applies
 * to the work, report, listen and dashboard connections from their next
 * attempt, and to the sql handler's connections made from then on.
 */
#include <string.h>

#include "daemon.h"
#include "log.h"
#include "util.h"

static void stop_begin(Daemon *d, bool fast);

/*
 * Every change of Daemon.run_state: only forward (ACTIVE, DRAINING,
 * STOPPING, DONE; a fast stop skips DRAINING).  A change backward is a
 * bug: logged and refused.
 */
static bool
run_state_set(Daemon *d, RunState to)
{
	static const char *const names[] = {"active", "draining", "stopping", "done"};

	if (to <= d->run_state)
	{
		tlog(LOG_ERROR, "illegal run state change refused", "from=%s to=%s", names[d->run_state],
			 names[to]);
		return false;
	}
	d->run_state = to;
	return true;
}

/*
 * Moves on once nothing runs (a drain becomes a stop) and ends the loop
 * once nothing is left to report either.
 */
void
stop_maybe_finish(Daemon *d)
{
	if (d->run_state == RUN_DRAINING && d->running == 0)
		stop_begin(d, false);
	if (d->run_state == RUN_STOPPING && d->running == 0 && d->waiting == 0)
	{
		tlog(LOG_INFO, "stopped", "worker=%s", kvq(d->worker));
		(void) run_state_set(d, RUN_DONE);
		ev_break(d->loop, EVBREAK_ALL);
	}
}

/*
 * Stops whatever still runs and hands it back.  fast: SIGKILL at once;
 * else exec's normal stop (SIGTERM, then SIGKILL after kill_grace).
 */
static void
stop_begin(Daemon *d, bool fast)
{
	double deadline = d->config->drain_timeout > 5 ? d->config->drain_timeout : 5;

	if (d->run_state != RUN_STOPPING)
	{
		(void) run_state_set(d, RUN_STOPPING);
		ev_idle_stop(d->loop, &d->lease_idle);
		buffer_hand_back(d, NULL);
		ev_timer_stop(d->loop, &d->poll_timer);
		/* The last flush gets this long; then tq reclaims what is left. */
		ev_timer_stop(d->loop, &d->stop_timer);
		ev_timer_set(&d->stop_timer, deadline, 0.);
		ev_timer_start(d->loop, &d->stop_timer);
	}
	for (Task *t = d->tasks, *next; t; t = next)
	{
		next = t->next;
		if (t->state != TASK_RUNNING)
			continue;
		if (fast && t->run)
		{
			/* exec_free kills the group with SIGKILL. */
			ExecRun *r = t->run;

			t->run = NULL;
			exec_free(r);
			t->stopping = true;
			t->stop_report = REPORT_RELEASE;
			task_done(t, REPORT_RELEASE);
		}
		else
			task_stop(t, REPORT_RELEASE);
	}
	report_flush_soon(d);
	stop_maybe_finish(d);
}

/* The drain's time is up, or the last flush's: stop, or give up. */
void
stop_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	Daemon *d = container_of(w, Daemon, stop_timer);

	if (d->run_state == RUN_DRAINING)
	{
		tlog(LOG_INFO, "drain timeout: handing back the tasks still running", "running=%d",
			 d->running);
		stop_begin(d, false);
	}
	else if (d->run_state == RUN_STOPPING)
	{
		tlog(LOG_WARNING,
			 "could not report every outcome before stopping; tq will reclaim those tasks when "
			 "their leases expire",
			 "running=%d unreported=%d", d->running, d->waiting);
		(void) run_state_set(d, RUN_DONE);
		ev_break(loop, EVBREAK_ALL);
	}
}

/* SIGTERM: drain; a second one: stop now. */
void
signal_term_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	Daemon *d = container_of(w, Daemon, sigterm);

	if (d->run_state == RUN_ACTIVE)
	{
		tlog(LOG_INFO, "SIGTERM: draining", "running=%d drain_timeout=%g", d->running,
			 d->config->drain_timeout);
		(void) run_state_set(d, RUN_DRAINING);
		ev_idle_stop(loop, &d->lease_idle);
		buffer_hand_back(d, NULL); /* never started: back at once */
		ev_timer_stop(loop, &d->poll_timer);
		ev_timer_set(&d->stop_timer, d->config->drain_timeout, 0.);
		ev_timer_start(loop, &d->stop_timer);
		stop_maybe_finish(d);
	}
	else
	{
		tlog(LOG_INFO, "SIGTERM again: stopping now", "running=%d", d->running);
		stop_begin(d, true);
	}
}

void
signal_int_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	Daemon *d = container_of(w, Daemon, sigint);

	tlog(LOG_INFO, "SIGINT: stopping now", "running=%d", d->running);
	stop_begin(d, true);
}

/* SIGHUP: reload, keeping the old configuration if the new one is bad. */
void
signal_hup_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	Daemon *d = container_of(w, Daemon, sighup);
	char err[1024];
	Config *c = config_load(d->config_path, err, sizeof(err));
	Config *old;

	if (c == NULL)
	{
		tlog(LOG_ERROR, "reload failed: keeping the old configuration", "error=%s", kvq(err));
		return;
	}
	old = d->config;
	d->config = c;
	log_min_level = c->log_level;
	config_warn_exposed(c, NULL);
	queues_sync(d);
	if (strcmp(old->conninfo, c->conninfo) != 0)
	{
		/* Applies from the next connection on. */
		pgc_set_conninfo(d->work, c->conninfo);
		pgc_set_conninfo(d->report, c->conninfo);
		pgc_set_conninfo(d->listen, c->conninfo);
		if (d->dash != NULL)
			dashboard_set_conninfo(d->dash, c->conninfo);
	}
	config_free(old);
	metrics_dashboard_sync(d);
	ev_timer_set(&d->poll_timer, c->poll_interval, c->poll_interval);
	if (d->run_state == RUN_ACTIVE)
		ev_timer_again(loop, &d->poll_timer);
	endpoint_status_timer_set(d);
	tlog(LOG_INFO, "configuration reloaded", "file=%s queues=%d", kvq(d->config_path), c->nqueues);
	lease_soon(d);
}
