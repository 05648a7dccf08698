"""
Scenario: the failures of docs/client-library.md's tables, as a partner's
program built against build/lib/libisgclient.so meets them from the real
isgd: which error each call reports, and whether the handle is still
usable afterwards (the next call, a ping, says so).
"""

import os
import subprocess
import unittest

import isgtest
from test_client_example import LIB, build_settings

# One line per case: "<case> <code>[ gateway] next <code of the ping after it, or ok>".
PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "isgclient.h"

static struct isg_client_options opt;

static void report(struct isg_client *c, const char *what, int rc, const struct isg_error *err)
{
	printf("%s %s%s next ", what, rc < 0 ? err->code_name : "ok",
	       rc < 0 && err->from_gateway ? " gateway" : "");
	struct isg_error e;
	printf("%s\n", isg_client_ping(c, NULL, &e) < 0 ? e.code_name : "ok");
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
	struct isg_client *c = NULL;
	struct isg_error err;
	if (isg_client_connect(&opt, &c, &err) < 0) {
		printf("connect %s: %s\n", err.code_name, err.message);
		return 1;
	}
	/* a text field of 5 MiB: over the gateway's limits.max_frame of 4 MiB */
	size_t big = 5u << 20;
	char *text = malloc(big + 1);
	if (!text)
		return 1;
	memset(text, 'x', big);
	text[big] = '\0';
	const struct isg_field fields[] = {
	    {"nhs_number", {.kind = ISG_VALUE_TEXT, .text = "9434765919"}},
	    {"concern_summary", {.kind = ISG_VALUE_TEXT, .text = text}},
	};
	const struct isg_record record = {2, fields};
	struct isg_message msg = {.message_id = "errors-1",
	                          .recipient = "nhs-trust",
	                          .agreement_id = "police-nhs-adult-safeguarding",
	                          .dataset = "safeguarding-concern",
	                          .n_records = 1,
	                          .records = &record};
	struct isg_receipt receipt;
	/* refused by the library, then by the gateway: the handle carries on */
	msg.recipient = "nhs-\xff";
	report(c, "not-utf8", isg_client_send(c, &msg, &receipt, &err), &err);
	msg.recipient = "nobody";
	text[1] = '\0';
	report(c, "refused", isg_client_send(c, &msg, &receipt, &err), &err);
	printf("refused-rule %s\n", err.rule);
	/* over the gateway's frame limit: refused, and the connection ends */
	msg.recipient = "nhs-trust";
	text[1] = 'x';
	report(c, "too-big", isg_client_send(c, &msg, &receipt, &err), &err);
	isg_client_close(c);
	free(text);
	return 0;
}
"""


@unittest.skipUnless(build_settings()[0], "no C compiler")
class ClientErrorsTest(isgtest.ScenarioCase):
    def test_refusals_and_the_handle_afterwards(self):
        src = os.path.join(self.tmp, "errors.c")
        with open(src, "w") as f:
            f.write(PROGRAM)
        prog = os.path.join(self.tmp, "errors")
        cc, flags = build_settings()
        r = subprocess.run([cc] + flags + ["-Wall", "-Wextra", "-Werror", "-I",
                                           os.path.join(isgtest.SOURCE, "gateway", "client"), src,
                                           "-L", LIB, "-lisgclient", "-o", prog],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        gw = self.gateway()
        police = self.pki.certs["police"]
        r = subprocess.run([prog, gw.address, police.cert, police.key, self.pki.server_ca.cert],
                           env=dict(os.environ, LD_LIBRARY_PATH=LIB), capture_output=True,
                           text=True, timeout=isgtest.CTL_TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout.splitlines(), [
            "not-utf8 USAGE next ok",
            "refused NOT_PERMITTED gateway next ok",
            "refused-rule agreement.recipient",
            "too-big BAD_FRAME gateway next CLOSED",
        ], r.stderr)
        self.assertAlive(gw)
        self.assertEqual(self.partner(gw, "nhs").fetch_messages(), [])


if __name__ == "__main__":
    unittest.main()
