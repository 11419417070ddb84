/*
 * tqd.h
 *	  The daemon: one libev loop that leases tasks, runs them through
 *	  their queue's handler, reports outcomes in batches, heartbeats leases,
 *	  and obeys signals.  This is its public side, for main.c; daemon.c
 *	  and the files daemon.h lists are its inside.
 */
#ifndef TQD_TQD_H
#define TQD_TQD_H

#include <ev.h>

#include "config.h"

/*
 * tqd's version is tq's: worker/Makefile reads default_version from
 * extension/tq.control, the one version source, and passes it as
 * -DTQD_VERSION.
 */
#ifndef TQD_VERSION
#error "TQD_VERSION is not defined: build tqd with worker/Makefile"
#endif

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
