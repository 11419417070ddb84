/*
 * tqd.h
 *	  The daemon: one libev loop that leases tasks, runs them through
 *	  their queue's handler, reports outcomes in batches, heartbeats leases,
 *	  and obeys signals (tqd.c).
 */
#ifndef TQD_TQD_H
#define TQD_TQD_H

#include <ev.h>

#include "config.h"

#define TQD_VERSION "0.6.0"

typedef struct Daemon Daemon;

/*
 * Sets the daemon up on the default loop (exec's child watchers need it)
 * with the configuration read from config_path (owned by the daemon from
 * now on; SIGHUP reads config_path again).  Returns NULL with a message on
 * stderr when it cannot start.
 */
extern Daemon *daemon_new(struct ev_loop *loop, Config *config, const char *config_path);
/* Runs until the daemon stops; returns the process exit status. */
extern int daemon_run(Daemon *d);
extern void daemon_free(Daemon *d);

#endif
