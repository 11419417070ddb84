/*
 * config_value.c
 *	  Values as the configuration file writes them: parsed into their
 *	  fields (set_value), and formatted back for messages and the sample
 *	  file (a range, a duration, a list of names).
 *
 * Durations are written with a unit (ms, s, min, h), sizes with one (B,
 * kB, MB, GB; 1024-based); a bare number is refused, except 0.  Numbers
 * are read as decimal digits and divided once, so that "10ms" is exactly
 * the double 0.01; every number is bounded by its key's min and max.
 *
 * set_value stores through the key's offset: a string replaces (and
 * frees) the one before.
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_keys.h"
#include "util.h"

/* A duration in its largest exact unit: 0.005 -> "5ms", 120 -> "2min". */
void
format_duration(double s, char *buf, size_t len)
{
	if (s == 0)
		snprintf(buf, len, "0");
	else if (isinf(s))
		snprintf(buf, len, "unlimited");
	else if (fmod(s, HOUR) == 0)
		snprintf(buf, len, "%.0fh", s / HOUR);
	else if (fmod(s, MIN) == 0)
		snprintf(buf, len, "%.0fmin", s / MIN);
	else if (fmod(s, 1) == 0)
		snprintf(buf, len, "%.0fs", s);
	else
		snprintf(buf, len, "%gms", s * 1000);
}

/* A size in its largest exact unit: 65536 -> "64kB". */
static void
format_size(double b, char *buf, size_t len)
{
	if (b == 0)
		snprintf(buf, len, "0");
	else if (isinf(b))
		snprintf(buf, len, "unlimited");
	else if (fmod(b, GB) == 0)
		snprintf(buf, len, "%.0fGB", b / GB);
	else if (fmod(b, MB) == 0)
		snprintf(buf, len, "%.0fMB", b / MB);
	else if (fmod(b, KB) == 0)
		snprintf(buf, len, "%.0fkB", b / KB);
	else
		snprintf(buf, len, "%.0fB", b);
}

static void
format_bound(const KeyDef *k, double v, char *buf, size_t len)
{
	switch (k->type)
	{
		case KT_DURATION:
			format_duration(v, buf, len);
			break;
		case KT_SIZE:
			format_size(v, buf, len);
			break;
		case KT_REAL:
			snprintf(buf, len, "%g", v);
			break;
		default:
			snprintf(buf, len, "%.0f", v);
			break;
	}
}

/* "1 to 10000", "10ms to 1h", "0, or at least 1MB", "0, or 1s to 168h". */
void
format_range(const KeyDef *k, char *buf, size_t len)
{
	char lo[32], hi[32];

	format_bound(k, k->min, lo, sizeof(lo));
	format_bound(k, k->max, hi, sizeof(hi));
	if ((k->flags & KF_ZERO_OK) && isinf(k->max))
		snprintf(buf, len, "0, or at least %s", lo);
	else if (k->flags & KF_ZERO_OK)
		snprintf(buf, len, "0, or %s to %s", lo, hi);
	else if (isinf(k->max))
		snprintf(buf, len, "at least %s", lo);
	else
		snprintf(buf, len, "%s to %s", lo, hi);
}

/* "noop, exec or sql". */
void
format_names(const char *const *names, const char *last_sep, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (int i = 0; names[i] != NULL && used < len; i++)
	{
		const char *sep = i == 0 ? "" : names[i + 1] == NULL ? last_sep : ", ";

		used += snprintf(buf + used, len - used, "%s%s", sep, names[i]);
	}
}

/*
 * Reads a decimal number "123" or "1.5" (no sign, no exponent: what a
 * person writes in a config) at *s as mantissa / 10^*scale, and moves *s
 * past it.  Keeping the digits as an integer lets the caller divide once,
 * so that "10ms" is exactly the double 0.01.  At most 15 digits, which a
 * double holds exactly.  Returns false when no number is there.
 */
static bool
scan_decimal(const char **s, bool allow_fraction, double *mantissa, int *scale)
{
	const char *q = *s;
	double m = 0;
	int digits = 0, sc = 0;

	while (isdigit((unsigned char) *q))
	{
		m = m * 10 + (*q++ - '0');
		digits++;
	}
	if (digits == 0)
		return false;
	if (allow_fraction && *q == '.')
	{
		q++;
		if (!isdigit((unsigned char) *q))
			return false;
		while (isdigit((unsigned char) *q))
		{
			m = m * 10 + (*q++ - '0');
			digits++;
			sc++;
		}
	}
	if (digits > 15)
		return false;
	*mantissa = m;
	*scale = sc;
	*s = q;
	return true;
}

static bool
is_zero(const char *s)
{
	return strcmp(s, "0") == 0;
}

/*
 * "250ms", "5s", "1.5s", "2min", "1h" -> seconds.  A bare number is refused
 * (is 5 seconds or milliseconds meant?), except 0, which is the same in
 * every unit and reads naturally as "none".
 */
static bool
parse_duration(const char *value, double *out, char *msg, size_t msglen)
{
	static const struct
	{
		const char *unit;
		double mul, div;
	} units[] = {{"ms", 1, 1000}, {"s", 1, 1}, {"min", MIN, 1}, {"h", HOUR, 1}};
	const char *s = value;
	double m;
	int scale;

	if (is_zero(value))
	{
		*out = 0;
		return true;
	}
	if (!scan_decimal(&s, true, &m, &scale))
	{
		snprintf(msg, msglen,
				 "invalid duration \"%s\": expected a number and a unit (ms, s, min or h), "
				 "e.g. 250ms, 1.5s or 2min",
				 value);
		return false;
	}
	s = skip_blanks(s);
	if (*s == '\0')
	{
		snprintf(msg, msglen, "\"%s\" has no unit: add one of ms, s, min or h (e.g. %ss)", value,
				 value);
		return false;
	}
	for (size_t i = 0; i < lengthof(units); i++)
	{
		if (strcmp(s, units[i].unit) == 0)
		{
			*out = m * units[i].mul / (pow(10, scale) * units[i].div);
			return true;
		}
	}
	snprintf(msg, msglen, "invalid duration \"%s\": unknown unit \"%s\" (use ms, s, min or h)",
			 value, s);
	return false;
}

/* "64kB", "1MB" -> bytes (1024-based).  Whole numbers only; bare 0 allowed. */
static bool
parse_size(const char *value, double *out, char *msg, size_t msglen)
{
	static const struct
	{
		const char *unit;
		double mul;
	} units[] = {{"B", 1}, {"kB", KB}, {"MB", MB}, {"GB", GB}};
	const char *s = value;
	double m;
	int scale;

	if (is_zero(value))
	{
		*out = 0;
		return true;
	}
	/* A fraction is scanned only to be refused with the right message. */
	if (!scan_decimal(&s, true, &m, &scale) || scale > 0)
	{
		snprintf(msg, msglen,
				 "invalid size \"%s\": expected a whole number and a unit (B, kB, MB or GB), "
				 "e.g. 64kB or 1MB",
				 value);
		return false;
	}
	s = skip_blanks(s);
	if (*s == '\0')
	{
		snprintf(msg, msglen, "\"%s\" has no unit: add one of B, kB, MB or GB (e.g. %skB)", value,
				 value);
		return false;
	}
	for (size_t i = 0; i < lengthof(units); i++)
	{
		if (strcmp(s, units[i].unit) == 0)
		{
			*out = m * units[i].mul;
			return true;
		}
	}
	snprintf(msg, msglen,
			 "invalid size \"%s\": unknown unit \"%s\" (use B, kB, MB or GB; 1kB = 1024B)", value,
			 s);
	return false;
}

/*
 * "16", "-3" -> a whole number (the bounds check comes after).  Read as a
 * double, like the other numbers, so that one bounds check serves every
 * type and a huge value is "out of range" rather than a silent overflow.
 */
static bool
parse_int(const char *value, double *out)
{
	const char *s = value;
	bool neg = false;
	double m;
	int scale;

	if (*s == '-' || *s == '+')
		neg = *s++ == '-';
	if (!scan_decimal(&s, false, &m, &scale) || *s != '\0')
		return false;
	*out = neg ? -m : m;
	return true;
}

/*
 * Parses value for key k and stores it into base (a Config or a
 * QueueConf).  Returns false with a message (without the location) in msg.
 */
bool
set_value(const KeyDef *k, void *base, const char *value, char *msg, size_t msglen)
{
	char *field = (char *) base + k->offset;
	char range[128];
	double v = 0;

	switch (k->type)
	{
		case KT_STRING:
		{
			/* Replaces the default (or an earlier value): free the old one. */
			char *copy = strdup(value);

			if (copy == NULL)
			{
				snprintf(msg, msglen, "out of memory");
				return false;
			}
			free(*(char **) field);
			*(char **) field = copy;
			return true;
		}
		case KT_ENUM:
			/* Case-sensitive, like the keys: one spelling per value. */
			for (int i = 0; k->names[i] != NULL; i++)
			{
				if (strcmp(value, k->names[i]) == 0)
				{
					*(int *) field = i;
					return true;
				}
			}
			format_names(k->names, " or ", range, sizeof(range));
			snprintf(msg, msglen, "invalid value \"%s\": expected %s", value, range);
			return false;
		case KT_INT:
			format_range(k, range, sizeof(range));
			if (!parse_int(value, &v))
			{
				snprintf(msg, msglen, "invalid value \"%s\": expected a whole number, %s", value,
						 range);
				return false;
			}
			break;
		case KT_DURATION:
			if (!parse_duration(value, &v, msg, msglen))
				return false;
			break;
		case KT_SIZE:
			if (!parse_size(value, &v, msg, msglen))
				return false;
			break;
		case KT_REAL:
		{
			const char *s = value;
			double m;
			int scale;

			format_range(k, range, sizeof(range));
			if (!scan_decimal(&s, true, &m, &scale) || *s != '\0')
			{
				snprintf(msg, msglen, "invalid value \"%s\": expected a number such as 0.5, %s",
						 value, range);
				return false;
			}
			v = m / pow(10, scale);
			break;
		}
	}

	/* Numbers: the bounds (and what a size_t holds), then the store. */
	if ((!(v == 0 && (k->flags & KF_ZERO_OK)) && (v < k->min || v > k->max)) ||
		(k->type == KT_SIZE && v >= 0x1p64))
	{
		format_range(k, range, sizeof(range));
		snprintf(msg, msglen, "%s is out of range (%s)", value, range);
		return false;
	}
	switch (k->type)
	{
		case KT_INT:
			*(int *) field = (int) v;
			break;
		case KT_DURATION:
		case KT_REAL:
			*(double *) field = v;
			break;
		case KT_SIZE:
			*(size_t *) field = (size_t) v;
			break;
		default:
			break;
	}
	return true;
}
