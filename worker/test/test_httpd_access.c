/*
 * test_httpd_access.c
 *	  Unit tests of httpd_access.c's pure parts: which Host headers name
 *	  this tqd (DNS rebinding, issue 15 item 12), and the bearer token's
 *	  header.  TAP 020 sends the same through a real tqd.
 */
#include <string.h>

#include "httpd_access.h"
#include "tap.h"

static void
host_is(const char *host, bool want, const char *what)
{
	static char *const names[] = {"tqd.internal", "metrics-1", NULL};

	ok(access_host_allowed(host, names) == want, "Host %s%s%s: %s (%s)", host ? "\"" : "",
	   host ? host : "(none)", host ? "\"" : "", want ? "answered" : "refused", what);
}

int
main(void)
{
	const char *token = "0123456789abcdef0123456789abcdef";

	plan(35);

	host_is("localhost", true, "loopback name");
	host_is("localhost:9187", true, "loopback name with a port");
	host_is("LocalHost:9187", true, "names are case-insensitive");
	host_is("127.0.0.1", true, "IPv4 loopback");
	host_is("127.0.0.1:9187", true, "IPv4 loopback with a port");
	host_is("10.1.2.3:9187", true, "any IPv4 address: a pod IP that kubelet or Prometheus use");
	host_is("[::1]", true, "IPv6 loopback");
	host_is("[::1]:9187", true, "IPv6 loopback with a port");
	host_is("[fd00::5]:80", true, "any IPv6 address");
	host_is("tqd.internal:9187", true, "a name of http_allowed_hosts");
	host_is("TQD.Internal", true, "... in any case");
	host_is("metrics-1:", true, "... with an empty port (RFC 3986)");
	host_is("rebind.attacker.example", false, "a foreign name: DNS rebinding");
	host_is("rebind.attacker.example:9187", false, "... with tqd's port");
	host_is("localhost.attacker.example", false, "a name that starts like localhost");
	host_is("127.0.0.1.nip.io", false, "a name that starts like an address");
	host_is("tqd.internal.attacker.example", false, "a name that starts like an allowed one");
	host_is("sub.tqd.internal", false, "a subdomain of an allowed name");
	host_is("localhost.", false, "a trailing dot is another name");
	host_is("", false, "empty");
	host_is(NULL, false, "none");
	host_is("localhost:http", false, "a port that is not a number");
	host_is("localhost:123456", false, "a port of six digits");
	host_is("localhost:80:80", false, "two ports");
	host_is("[::1", false, "an unclosed bracket");
	host_is("[::1]x", false, "junk after the bracket");
	host_is("[localhost]", false, "a name in brackets");
	host_is("::1", false, "IPv6 without brackets");
	host_is("evil@localhost", false, "userinfo");

	ok(access_bearer_ok("Bearer 0123456789abcdef0123456789abcdef", token), "Bearer TOKEN: ok");
	ok(access_bearer_ok("bearer  0123456789abcdef0123456789abcdef ", token),
	   "scheme in any case, blanks around the token: ok");
	ok(!access_bearer_ok("Bearer 0123456789abcdef0123456789abcdeX", token),
	   "a token wrong in its last character: refused");
	ok(!access_bearer_ok("Bearer 0123456789abcdef0123456789abcdef0", token),
	   "the token with one more character: refused");
	ok(!access_bearer_ok("Bearer 0123456789abcdef", token), "a prefix of the token: refused");
	ok(!access_bearer_ok("Basic 0123456789abcdef0123456789abcdef", token) &&
		   !access_bearer_ok("Bearer0123456789abcdef0123456789abcdef", token) &&
		   !access_bearer_ok("Bearer ", token) && !access_bearer_ok(NULL, token),
	   "another scheme, no blank after Bearer, no token, no header: refused");
	return done_testing();
}
