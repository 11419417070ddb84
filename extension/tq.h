/*-------------------------------------------------------------------------
 *
 * tq.h
 *	  Declarations shared by the C files of the tq extension.
 *
 * tq keeps its task store in ordinary tables (see sql/tq--*.sql); the C
 * code holds what SQL cannot express well or cheaply: module
 * initialisation and its settings (tq.c), and small hot-path helpers
 * called by the SQL functions (api.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef TQ_H
#define TQ_H

/* Settings (GUCs), defined in tq.c; all are named tq.<name>. */
extern bool tq_producer_notify;     /* NOTIFY tq_ready from submitting
									 * transactions */
extern int tq_max_payload_size;     /* largest accepted payload, bytes */
extern int tq_maintenance_interval; /* ms between opportunistic
										 * maintenance passes */

#endif /* TQ_H */
