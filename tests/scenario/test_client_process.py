"""
Scenario: libisgclient inside a partner's process. A partner's integration
service runs for months and connects many times a day; what the library
leaves in that process's memory is the partner's business, and its private
key must not be among it.

A small program built against build/lib/libisgclient.so connects with a
partner's key while a free() hook, preloaded into it, looks in every block
the process frees for the text of that key. No gateway is needed: the key
is read before the TCP connection is tried.
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


if __name__ == "__main__":
    unittest.main()
