/*
 * test_http.c
 *	  Unit tests of http.c's pure parts: what an answer means for its task,
 *	  Retry-After in both of its forms, and the last_error text.  (The
 *	  requests themselves are tested against a real server in TAP 012.)
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "http.h"
#include "tap.h"

static HttpResult
answer(long status, const char *body)
{
	HttpResult r;

	memset(&r, 0, sizeof(r));
	r.end = HTTP_ANSWERED;
	r.status = status;
	r.body = (char *) body;
	r.body_len = strlen(body);
	r.retry_after = -1;
	return r;
}

static void
test_classify(void)
{
	static const struct
	{
		long status;
		Outcome want;
	} cases[] = {
		{200, OUTCOME_SUCCESS}, {201, OUTCOME_SUCCESS},   {204, OUTCOME_SUCCESS},
		{299, OUTCOME_SUCCESS}, {429, OUTCOME_THROTTLED}, {503, OUTCOME_THROTTLED},
		{400, OUTCOME_NEVER},   {401, OUTCOME_NEVER},     {404, OUTCOME_NEVER},
		{422, OUTCOME_NEVER},   {408, OUTCOME_RETRY},     {500, OUTCOME_RETRY},
		{502, OUTCOME_RETRY},   {504, OUTCOME_RETRY},     {301, OUTCOME_NEVER},
		{101, OUTCOME_NEVER},
	};
	HttpResult r;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
	{
		r = answer(cases[i].status, "");
		is_str(outcome_name(http_classify(&r)), outcome_name(cases[i].want), "HTTP %ld -> %s",
			   cases[i].status, outcome_name(cases[i].want));
	}
	r = answer(429, "");
	ok(http_is_throttle(&r), "429 is a throttle signal");
	r = answer(500, "");
	ok(!http_is_throttle(&r), "500 is not");
	r.end = HTTP_TIMEOUT;
	is_str(outcome_name(http_classify(&r)), "retry", "a timeout is retried");
	r.end = HTTP_FAILED;
	is_str(outcome_name(http_classify(&r)), "retry", "a failed connection is retried");
	ok(!http_is_throttle(&r), "and is no throttle signal");
}

static void
test_retry_after(void)
{
	time_t now = 1700000000; /* Tue, 14 Nov 2023 22:13:20 GMT */

	ok(http_parse_retry_after("120", now) == 120, "delay-seconds");
	ok(http_parse_retry_after(" 7 \r\n", now) == 7, "blanks and CRLF around it");
	ok(http_parse_retry_after("0", now) == 0, "zero");
	ok(http_parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now) == 30,
	   "IMF-fixdate 30 s ahead");
	ok(http_parse_retry_after("Tuesday, 14-Nov-23 22:14:20 GMT", now) == 60,
	   "obsolete RFC 850 date");
	ok(http_parse_retry_after("Tue Nov 14 22:13:25 2023", now) == 5, "asctime date");
	ok(http_parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0, "a past date is 0");
	ok(http_parse_retry_after("soon", now) < 0, "garbage is ignored");
	ok(http_parse_retry_after("", now) < 0, "empty is ignored");
	ok(http_parse_retry_after("-5", now) < 0, "a negative number is ignored");
	ok(http_parse_retry_after("99999999999999999999", now) >= 1e9, "a huge number stays huge");
}

static void
test_describe(void)
{
	char buf[1024], big[2000];
	HttpResult r = answer(404, "no such\r\nthing  ");

	strcpy(r.reason, "Not Found");
	http_describe(&r, 0, buf, sizeof(buf));
	is_str(buf, "HTTP 404 Not Found: no such  thing", "status, reason, body on one line");
	r = answer(500, "");
	http_describe(&r, 0, buf, sizeof(buf));
	is_str(buf, "HTTP 500", "no reason (HTTP/2), no body");
	r = answer(302, "");
	http_describe(&r, 0, buf, sizeof(buf));
	is_str(buf, "HTTP 302 (redirects are not followed)", "a redirect says why it failed");
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	r = answer(400, big);
	http_describe(&r, 0, buf, sizeof(buf));
	ok(strlen(buf) < 540 && strcmp(buf + strlen(buf) - 3, "...") == 0,
	   "a long body is cut at 512 bytes, with ...");
	memset(&r, 0, sizeof(r));
	r.end = HTTP_TIMEOUT;
	http_describe(&r, 2, buf, sizeof(buf));
	is_str(buf, "timed out after 2 s", "timeout");
	r.end = HTTP_FAILED;
	strcpy(r.error, "SSL certificate problem: self-signed certificate (curl error 60)");
	http_describe(&r, 0, buf, sizeof(buf));
	is_str(buf, "request failed: SSL certificate problem: self-signed certificate (curl error 60)",
		   "a failed request with curl's words");
}

/* A task's traceparent goes into a request header as it is, or not at all. */
static void
test_traceparent(void)
{
	char big[TRACEPARENT_MAX + 2];

	ok(http_traceparent_ok("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
	   "traceparent: version 00 is handed on");
	ok(http_traceparent_ok("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-later_fields"),
	   "traceparent: a later version's extra fields too");
	ok(!http_traceparent_ok(NULL), "traceparent: none is not a value");
	ok(!http_traceparent_ok(""), "traceparent: nor is the empty string");
	ok(!http_traceparent_ok("00-abc\r\nX-Evil: 1"), "traceparent: CR LF would split the header");
	ok(!http_traceparent_ok("00-abc def"), "traceparent: a blank is refused");
	ok(!http_traceparent_ok("00-abc\x7f"), "traceparent: DEL is refused");
	ok(!http_traceparent_ok("00-\xc3\xa9"), "traceparent: non-ASCII is refused");
	memset(big, 'a', TRACEPARENT_MAX);
	big[TRACEPARENT_MAX] = '\0';
	ok(http_traceparent_ok(big), "traceparent: TRACEPARENT_MAX characters pass");
	big[TRACEPARENT_MAX] = 'a';
	big[TRACEPARENT_MAX + 1] = '\0';
	ok(!http_traceparent_ok(big), "traceparent: one more does not");
}

/* A task's tenant goes into X-TQ-Tenant only if it cannot break the header. */
static void
test_header_value(void)
{
	static const struct
	{
		const char *value;
		const char *why;
	} bad[] = {
		{"acme\r\nX-Injected: yes", "control character 0x0d at byte 5"},
		{"a\nb", "control character 0x0a at byte 2"},
		{"tab\there", "control character 0x09 at byte 4"},
		{"\x01", "control character 0x01 at byte 1"},
		{"del\x7f", "control character 0x7f at byte 4"},
		{"nel\xc2\x85x", "U+0085 at byte 4"},
		{"ls\xe2\x80\xa8x", "U+2028 at byte 3"},
		{"ps\xe2\x80\xa9", "U+2029 at byte 3"},
	};
	char why[128];

	ok(http_header_value_ok("acme", why, sizeof(why)), "header value: a plain tenant passes");
	ok(http_header_value_ok("caf\xc3\xa9 \xe2\x80\xa6 \xc2\xa0", why, sizeof(why)),
	   "header value: other UTF-8 (é, …, no-break space) passes");
	ok(http_header_value_ok("", why, sizeof(why)), "header value: empty passes");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
	{
		why[0] = '\0';
		ok(!http_header_value_ok(bad[i].value, why, sizeof(why)), "header value: %s is refused",
		   bad[i].why);
		is_str(why, bad[i].why, "header value: ... and named");
	}
}

/* What tqd prints of a URL: never the query, the fragment or user info. */
static void
test_url_redact(void)
{
	static const struct
	{
		const char *url;
		const char *shown;
	} cases[] = {
		{"https://api.example.com/path", "https://api.example.com/path"},
		{"https://api.example.com/path?api_key=s3cr3t", "https://api.example.com/path?<redacted>"},
		{"https://api.example.com/p?a=1#frag", "https://api.example.com/p?<redacted>#<redacted>"},
		{"https://api.example.com/p#frag?x=1", "https://api.example.com/p#<redacted>"},
		{"http://127.0.0.1:8080?k=v", "http://127.0.0.1:8080?<redacted>"},
		{"https://user:pw@host:1/p?q", "https://<redacted>@host:1/p?<redacted>"},
		{"https://a@b@host/", "https://<redacted>@host/"},
		{"https://host/users/a@b.com", "https://host/users/a@b.com"},
		{"https://host/p?", "https://host/p"},
		{"host/p?token=1", "host/p?<redacted>"},
	};
	char buf[256], small[16];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
	{
		http_url_redact(cases[i].url, buf, sizeof(buf));
		is_str(buf, cases[i].shown, "redact %s", cases[i].url);
	}
	http_url_redact("https://api.example.com/p?key=1", small, sizeof(small));
	is_str(small, "https://api.exa", "redact: cut to fit the buffer");
}

int
main(void)
{
	plan(48 + 19 + 11);
	test_classify();
	test_retry_after();
	test_describe();
	test_traceparent();
	test_header_value();
	test_url_redact();
	return done_testing();
}
