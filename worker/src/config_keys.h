/*
 * config_keys.h
 *	  Inside tqd's configuration: the table of keys and what the files
 *	  that read, check and print it share.  Private to config*.c.
 *
 *	  config_keys.c   the table of keys; the defaults printer (the sample
 *	                  file)
 *	  config_value.c  values as written: parsing them into their fields,
 *	                  formatting ranges and values for messages
 *	  config_check.c  the per-key checks (KeyDef.check)
 *	  config.c        reading the file: libinih, sections, errors
 *	  config_secrets.c  secrets in a file others can read (the warning)
 *	  argv.c          splitting a command into words (config.h)
 *
 * A KeyDef says where its value goes (an offset into Config or
 * QueueConf), how it is written and bounded, and whom it applies to; the
 * value is stored through that offset, so a key's name is its field's
 * name.
 */
#ifndef TQD_CONFIG_KEYS_H
#define TQD_CONFIG_KEYS_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* Enum fields (LogLevel, HandlerKind) are written through an int pointer. */
_Static_assert(sizeof(LogLevel) == sizeof(int), "LogLevel is stored as an int");
_Static_assert(sizeof(HandlerKind) == sizeof(int), "HandlerKind is stored as an int");

typedef enum KeyScope
{
	SCOPE_GLOBAL, /* [tqd], a field of Config */
	SCOPE_QUEUE,  /* [queue:NAME], a field of QueueConf */
} KeyScope;

typedef enum KeyType
{
	KT_STRING,   /* char *, as written (continuation lines joined by a blank) */
	KT_INT,      /* int, plain decimal */
	KT_DURATION, /* double seconds, written with ms, s, min or h */
	KT_SIZE,     /* size_t bytes, written with B, kB, MB or GB (1024-based) */
	KT_ENUM,     /* int, one of the key's names[] (its index) */
	KT_REAL,     /* double, plain decimal with an optional fraction (0.5) */
} KeyType;

/* Key flags. */
#define KF_REQUIRED 0x01 /* no default: must be given (where the key applies) */
#define KF_ZERO_OK 0x02  /* 0 is allowed besides [min, max] (0 = none, automatic) */
#define KF_LINES 0x04    /* KT_STRING: continuation lines are joined by a newline */

/* A handler mask: the handlers a queue key applies to; 0 = all of them. */
#define ONLY(h) (1u << (h))

/*
 * An extra check of a key's value, run once the whole file was read (so
 * that a value continued on the next lines is complete).  Returns false
 * with a message in msg when the value is not acceptable.  The check may
 * fill derived fields (command -> argv).
 */
typedef bool (*KeyCheck)(void *base, char *msg, size_t msglen);

typedef struct KeyDef
{
	KeyScope scope;
	const char *name; /* the key, and the name of its field */
	KeyType type;
	const char *def;          /* default, as it is written in the file; NULL = none */
	const char *example;      /* KF_REQUIRED keys: the value the sample shows */
	size_t offset;            /* of the field in Config or QueueConf */
	double min;               /* bounds, in the stored unit (int, s, bytes) */
	double max;               /* INFINITY = no upper bound */
	unsigned flags;           /* KF_* */
	unsigned handlers;        /* queue keys: ONLY(...) mask; 0 = every handler */
	const char *const *names; /* KT_ENUM: the values, in enum order, NULL-ended */
	KeyCheck check;           /* NULL, or run after the file was read */
	const char *desc;         /* one sentence for the sample file */
} KeyDef;

#define MS 0.001
#define MIN 60.0
#define HOUR 3600.0
#define KB 1024.0
#define MB (1024.0 * 1024.0)
#define GB (1024.0 * 1024.0 * 1024.0)

/* Limits of the tq names, as tq.check_name enforces them in SQL. */
#define NAME_MAX_BYTES 63

/* Keys in config_keys[] (config_keys.c checks the count when it compiles). */
#define NKEYS 51

/* config_keys.c */

extern const KeyDef config_keys[NKEYS];
/* The handlers' names, in HandlerKind order, NULL-ended. */
extern const char *const handler_names[];
/* "exec", or "exec and sql" for a key that applies to several handlers. */
extern void format_handlers(unsigned mask, char *buf, size_t len);

/* config_value.c */

/*
 * Parses value for key k and stores it into base (a Config or a
 * QueueConf).  Returns false with a message (without the location) in msg.
 */
extern bool set_value(const KeyDef *k, void *base, const char *value, char *msg, size_t msglen);
/* A duration in its largest exact unit: 0.005 -> "5ms", 120 -> "2min". */
extern void format_duration(double s, char *buf, size_t len);
/* A key's bounds: "1 to 10000", "10ms to 1h", "0, or at least 1MB". */
extern void format_range(const KeyDef *k, char *buf, size_t len);
/* "noop, exec or sql", with last_sep before the last name. */
extern void format_names(const char *const *names, const char *last_sep, char *buf, size_t len);

/* config_check.c: the checks of config_keys[] (KeyCheck) */

extern bool check_conninfo(void *base, char *msg, size_t msglen);
extern bool check_command(void *base, char *msg, size_t msglen);
extern bool check_function(void *base, char *msg, size_t msglen);
extern bool check_throttled_exit(void *base, char *msg, size_t msglen);
extern bool check_pass_env(void *base, char *msg, size_t msglen);
extern bool check_url(void *base, char *msg, size_t msglen);
extern bool check_headers(void *base, char *msg, size_t msglen);
extern bool check_ca_file(void *base, char *msg, size_t msglen);
extern bool check_aimd_min(void *base, char *msg, size_t msglen);
extern bool check_metrics_listen(void *base, char *msg, size_t msglen);
extern bool check_dashboard(void *base, char *msg, size_t msglen);
extern bool check_http_allowed_hosts(void *base, char *msg, size_t msglen);
extern bool check_http_token_file(void *base, char *msg, size_t msglen);

#endif
