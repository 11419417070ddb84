/*
 * tap.h
 *	  A minimal Test Anything Protocol emitter for tqd's C unit tests, so
 *	  that prove(1) runs them like the rest of the suite.
 *
 *	  plan(n); ok(cond, "what"); is_int(got, want, "what");
 *	  is_str(got, want, "what"); return done_testing();
 */
#ifndef TQD_TAP_H
#define TQD_TAP_H

#include <stdio.h>
#include <string.h>

static int tap_n = 0;
static int tap_failed = 0;

#define plan(n) printf("1..%d\n", (n))

#define ok(cond, ...)                                                                              \
	do                                                                                             \
	{                                                                                              \
		int ok_ = (cond) ? 1 : 0;                                                                  \
		printf("%s %d - ", ok_ ? "ok" : "not ok", ++tap_n);                                        \
		printf(__VA_ARGS__);                                                                       \
		printf("\n");                                                                              \
		if (!ok_)                                                                                  \
		{                                                                                          \
			tap_failed++;                                                                          \
			printf("#   at %s line %d\n", __FILE__, __LINE__);                                     \
		}                                                                                          \
	} while (0)

#define is_int(got, want, ...)                                                                     \
	do                                                                                             \
	{                                                                                              \
		long long g_ = (long long) (got), w_ = (long long) (want);                                 \
		ok(g_ == w_, __VA_ARGS__);                                                                 \
		if (g_ != w_)                                                                              \
			printf("#          got: %lld\n#     expected: %lld\n", g_, w_);                        \
	} while (0)

#define is_str(got, want, ...)                                                                     \
	do                                                                                             \
	{                                                                                              \
		const char *g_ = (got), *w_ = (want);                                                      \
		int same_ = (g_ == NULL && w_ == NULL) || (g_ && w_ && strcmp(g_, w_) == 0);               \
		ok(same_, __VA_ARGS__);                                                                    \
		if (!same_)                                                                                \
			printf("#          got: '%s'\n#     expected: '%s'\n", g_ ? g_ : "(null)",             \
				   w_ ? w_ : "(null)");                                                            \
	} while (0)

#define done_testing() (tap_failed ? 1 : 0)

#endif
