"""
Scenario: libisgclient inside a partner's process. A partner's integration
service runs for months and connects many times a day; what the library
leaves in that process's memory is the partner's business, and its private
key must not be among it.

A small program built against build/lib/libisgclient.so connects with a
partner's key while a free() hook, preloaded into it, looks in every block
the process frees for the text of that key. No gateway is needed: the key
is read before the TCP connection is tried.

Another program runs out of memory just as deliveries reach it, against
the real isgd: the deliveries must come back on its next connection, not
stay handed out to a connection it keeps open without them.
"""

import os
import subprocess
import unittest

import isgtest
from test_client_example import BUILD, LIB, build_settings

HOOK = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void (*real_free)(void *);
static char needle[64];

/* Every block freed is searched for the needle before it goes back. */
void free(void *p)
{
	if (!real_free)
		real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
	if (p && needle[0] && memmem(p, malloc_usable_size(p), needle, strlen(needle))) {
		static const char said[] = "freed unwiped: the private key's text\n";
		(void)!write(2, said, sizeof(said) - 1);
	}
	real_free(p);
}

__attribute__((constructor)) static void init(void)
{
	const char *s = getenv("NEEDLE");
	if (s)
		strncpy(needle, s, sizeof(needle) - 1);
}
"""

PROGRAM = r"""
#include <stdio.h>
#include "isgclient.h"

int main(int argc, char **argv)
{
	struct isg_client_options opt;
	isg_client_options_init(&opt);
	opt.gateway = argv[1];
	opt.cert_file = argv[2];
	opt.key_file = argv[3];
	opt.ca_file = argv[4];
	struct isg_client *c = NULL;
	struct isg_error err;
	for (int i = 0; i < 3; i++) { /* a service reconnecting */
		if (isg_client_connect(&opt, &c, &err) == 0)
			isg_client_close(c);
		else
			printf("%s\n", err.code_name);
	}
	return 0;
}
"""

# A partner's program that runs out of memory just as deliveries arrive: its
# own calloc, which libisgclient.so's calls come to, fails while `starved`
# is set. For each way of receiving (fetch; subscribe and next_delivery),
# one line: what the starved call said, then what the next call on the
# handle said, then the gateway ids a new connection fetches.
STARVED = r"""
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "isgclient.h"

extern void *__libc_calloc(size_t, size_t);
static int starved;

void *calloc(size_t n, size_t size)
{
	return starved ? NULL : __libc_calloc(n, size);
}

static struct isg_client_options opt;

static struct isg_client *connect_or_die(void)
{
	struct isg_client *c = NULL;
	struct isg_error err;
	if (isg_client_connect(&opt, &c, &err) < 0) {
		printf("connect %s\n", err.code_name);
		exit(1);
	}
	return c;
}

static int receive(struct isg_client *c, int push, struct isg_error *err)
{
	if (push) {
		struct isg_delivery *d = NULL;
		int rc = isg_client_next_delivery(c, 10000, &d, err);
		if (rc == 0 && !d)
			printf("(nothing pushed) ");
		isg_delivery_free(d);
		return rc;
	}
	struct isg_delivery_list *list = NULL;
	int rc = isg_client_fetch(c, 0, 0, &list, err);
	isg_delivery_list_free(list);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc != 5)
		return 2;
	isg_client_options_init(&opt);
	opt.gateway = argv[1];
	opt.cert_file = argv[2];
	opt.key_file = argv[3];
	opt.ca_file = argv[4];
	for (int push = 0; push < 2; push++) {
		struct isg_client *c = connect_or_die();
		struct isg_error err;
		if (push && isg_client_subscribe(c, &err) < 0) {
			printf("subscribe %s\n", err.code_name);
			return 1;
		}
		starved = 1;
		int rc = receive(c, push, &err);
		starved = 0;
		printf("%s %s %s;", push ? "push" : "fetch", rc < 0 ? err.code_name : "ok",
		       rc < 0 && strstr(err.message, "again on the next connection") ? "again" : "-");
		rc = receive(c, push, &err);
		printf(" then %s;", rc < 0 ? err.code_name : "ok");
		isg_client_close(c);
		c = connect_or_die();
		struct isg_delivery_list *list = NULL;
		if (isg_client_fetch(c, 0, 0, &list, &err) < 0) {
			printf(" fetch %s\n", err.code_name);
			return 1;
		}
		printf(" fetched");
		for (size_t i = 0; i < list->n; i++)
			printf(" %" PRIu64, list->items[i].gateway_id);
		printf("\n");
		isg_delivery_list_free(list);
		isg_client_close(c);
	}
	return 0;
}
"""


@unittest.skipIf(build_settings()[1], "a sanitizer's runtime must come first; no preloaded hook")
@unittest.skipUnless(build_settings()[0], "no C compiler")
class ClientProcessTest(isgtest.ScenarioCase):
    def build(self):
        cc = build_settings()[0]
        hook_src = os.path.join(self.tmp, "hook.c")
        prog_src = os.path.join(self.tmp, "connect.c")
        with open(hook_src, "w") as f:
            f.write(HOOK)
        with open(prog_src, "w") as f:
            f.write(PROGRAM)
        hook = os.path.join(self.tmp, "hook.so")
        prog = os.path.join(self.tmp, "connect")
        for argv in ([cc, "-shared", "-fPIC", "-o", hook, hook_src, "-ldl"],
                     [cc, "-I", os.path.join(isgtest.SOURCE, "gateway", "client"), prog_src, "-L",
                      LIB, "-lisgclient", "-o", prog]):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
        return hook, prog

    def test_private_key_text_not_left_in_freed_memory(self):
        hook, prog = self.build()
        cert = self.pki.certs["police"]
        lines = isgtest.read_text(cert.key).splitlines()
        self.assertTrue(lines[0].startswith("-----BEGIN") and len(lines) > 3, cert.key)
        # the third line encodes the private scalar (the second starts with the
        # PKCS#8 header that every P-256 key shares)
        needle = lines[2][:32]
        env = dict(os.environ, LD_LIBRARY_PATH=LIB, LD_PRELOAD=hook, NEEDLE=needle)
        r = subprocess.run([prog, "127.0.0.1:%d" % isgtest.free_port(), cert.cert, cert.key,
                            self.pki.server_ca.cert], env=env, capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        # the key was loaded: the failure is the TCP connection's, three times
        self.assertEqual(r.stdout.split(), ["CONNECT"] * 3, r.stdout + r.stderr)
        self.assertNotIn("freed unwiped", r.stderr)


@unittest.skipIf(build_settings()[1], "a sanitizer's runtime owns calloc")
@unittest.skipUnless(build_settings()[0], "no C compiler")
class ClientOutOfMemoryTest(isgtest.ScenarioCase):
    def test_deliveries_lost_to_memory_come_back_on_a_new_connection(self):
        """The gateway hands deliveries out once per connection: if the library
        cannot build them, the handle must end, not stay open with them stuck
        unseen and unacknowledged for as long as the service keeps it."""
        src = os.path.join(self.tmp, "starved.c")
        with open(src, "w") as f:
            f.write(STARVED)
        prog = os.path.join(self.tmp, "starved")
        r = subprocess.run([build_settings()[0], "-Wall", "-Wextra", "-Werror", "-I",
                            os.path.join(isgtest.SOURCE, "gateway", "client"), src, "-L", LIB,
                            "-lisgclient", "-o", prog], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        gw = self.gateway()
        receipt = self.partner(gw, "police").send_ok([{"nhs_number": "9434765919"}],
                                                     message_id="starved-1")
        nhs = self.pki.certs["nhs"]
        r = subprocess.run([prog, gw.address, nhs.cert, nhs.key, self.pki.server_ca.cert],
                           env=dict(os.environ, LD_LIBRARY_PATH=LIB), capture_output=True,
                           text=True, timeout=isgtest.CTL_TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        gid = receipt["gateway_id"]
        self.assertEqual(r.stdout.splitlines(), [
            "fetch NOMEM again; then CLOSED; fetched %d" % gid,
            "push NOMEM again; then CLOSED; fetched %d" % gid,
        ], r.stderr)


if __name__ == "__main__":
    unittest.main()
