"""
Scenario: the failures of docs/client-library.md's tables, as a partner's
program built against build/lib/libisgclient.so meets them from the real
isgd: which error each call reports, and whether the handle is still
usable afterwards (the next call, a ping, says so).
"""

import os
import re
import signal
import subprocess
import time
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

# main's start in the programs below: the connection options from its arguments.
MAIN_OPTIONS = r"""
int main(int argc, char **argv)
{
	if (argc != 5)
		return 2;
	struct isg_client_options opt;
	isg_client_options_init(&opt);
	opt.gateway = argv[1];
	opt.cert_file = argv[2];
	opt.key_file = argv[3];
	opt.ca_file = argv[4];
"""

# The start of a program that connects, subscribes and says "subscribed"
# once the gateway has taken the subscription in (the ping's answer comes
# after it); what follows it ends main.
SUBSCRIBED = r"""
#include <stdio.h>
#include "isgclient.h"
""" + MAIN_OPTIONS + r"""	struct isg_client *c = NULL;
	struct isg_error err;
	if (isg_client_connect(&opt, &c, &err) < 0 || isg_client_subscribe(c, &err) < 0 ||
	    isg_client_ping(c, NULL, &err) < 0) {
		printf("connect %s: %s\n", err.code_name, err.message);
		return 1;
	}
	printf("subscribed\n");
	fflush(stdout);
"""

# Subscribed, waiting, as isgd stops: what the wait says, then the next call.
SUBSCRIBER = SUBSCRIBED + r"""
	struct isg_delivery *d = NULL;
	int rc = isg_client_next_delivery(c, 60000, &d, &err);
	printf("ended %s%s", rc < 0 ? err.code_name : d ? "delivery" : "nothing",
	       rc < 0 && err.from_gateway ? " gateway" : "");
	isg_delivery_free(d);
	rc = isg_client_next_delivery(c, 60000, &d, &err);
	printf(" next %s\n", rc < 0 ? err.code_name : d ? "delivery" : "nothing");
	isg_delivery_free(d);
	isg_client_close(c);
	return 0;
}
"""

# Subscribed as isgd stops, then a request: the gateway ended the
# subscription and closed without reading it; the request says why.
LATE_REQUEST = SUBSCRIBED + r"""
	char go[8];
	if (!fgets(go, sizeof(go), stdin))
		return 1;
	int rc = isg_client_ping(c, NULL, &err);
	printf("ping %s%s\n", rc < 0 ? err.code_name : "ok", rc < 0 && err.from_gateway ? " gateway" : "");
	isg_client_close(c);
	return 0;
}
"""

# Sends 0..3 pipelined, then one over the gateway's frame limit: the gateway
# reads 0..3, refuses 4 (BAD_FRAME, request 0) and closes once it has
# answered 0..3. Their receipts come after its BAD_FRAME and must reach
# their finishes; the handle then says why it is closed. Three rounds, each
# on its own connection, so that a library that lost them now and then fails.
PIPELINE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "isgclient.h"
""" + MAIN_OPTIONS + r"""	/* 16 MiB: more than the socket buffers hold, so the write of it waits
	 * until the gateway has refused it and closed */
	size_t big = 16u << 20;
	char *text = malloc(big + 1);
	if (!text)
		return 1;
	memset(text, 'x', big);
	text[big] = '\0';
	const struct isg_field small[] = {
	    {"nhs_number", {.kind = ISG_VALUE_TEXT, .text = "9434765919"}},
	    {"concern_summary", {.kind = ISG_VALUE_TEXT, .text = "short"}},
	};
	const struct isg_field huge[] = {
	    {"nhs_number", {.kind = ISG_VALUE_TEXT, .text = "9434765919"}},
	    {"concern_summary", {.kind = ISG_VALUE_TEXT, .text = text}},
	};
	const struct isg_record records[] = {{2, small}, {2, huge}};
	for (int round = 0; round < 3; round++) {
		struct isg_client *c = NULL;
		struct isg_error err;
		if (isg_client_connect(&opt, &c, &err) < 0) {
			printf("connect %s: %s\n", err.code_name, err.message);
			return 1;
		}
		uint64_t tickets[5];
		char ids[5][32];
		for (int i = 0; i < 5; i++) {
			snprintf(ids[i], sizeof(ids[i]), "pipe-%d-%d", round, i);
			struct isg_message msg = {.message_id = ids[i],
			                          .recipient = "nhs-trust",
			                          .agreement_id = "police-nhs-adult-safeguarding",
			                          .dataset = "safeguarding-concern",
			                          .n_records = 1,
			                          .records = &records[i == 4]};
			if (isg_client_send_start(c, &msg, &tickets[i], &err) < 0)
				printf("start %d %s%s\n", i, err.code_name,
				       err.from_gateway ? " gateway" : "");
		}
		for (int i = 0; i < 4; i++) {
			struct isg_receipt r;
			if (isg_client_send_finish(c, tickets[i], &r, &err) < 0)
				printf("finish %d %s: %s\n", i, err.code_name, err.message);
			else
				printf("finish %d ok duplicate=%d\n", i, (int)r.duplicate);
		}
		int rc = isg_client_ping(c, NULL, &err);
		printf("next %s: %s\n", rc < 0 ? err.code_name : "ok", rc < 0 ? err.message : "");
		isg_client_close(c);
	}
	free(text);
	return 0;
}
"""


def build(case, name, text):
    src = os.path.join(case.tmp, name + ".c")
    with open(src, "w") as f:
        f.write(text)
    prog = os.path.join(case.tmp, name)
    cc, flags = build_settings()
    r = subprocess.run([cc] + flags + ["-Wall", "-Wextra", "-Werror", "-I",
                                       os.path.join(isgtest.SOURCE, "gateway", "client"), src,
                                       "-L", LIB, "-lisgclient", "-o", prog],
                       capture_output=True, text=True, timeout=120)
    case.assertEqual(r.returncode, 0, r.stderr)
    return prog


@unittest.skipUnless(build_settings()[0], "no C compiler")
class ClientErrorsTest(isgtest.ScenarioCase):
    def test_refusals_and_the_handle_afterwards(self):
        prog = build(self, "errors", PROGRAM)
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

    def test_subscription_ended_by_isgd_stopping(self):
        """The gateway ends a subscription only as it closes: the wait gets its
        UNAVAILABLE, and the next call CLOSED (connect again), not USAGE."""
        prog = build(self, "subscriber", SUBSCRIBER)
        gw = self.gateway()
        nhs = self.pki.certs["nhs"]
        p = subprocess.Popen([prog, gw.address, nhs.cert, nhs.key, self.pki.server_ca.cert],
                             env=dict(os.environ, LD_LIBRARY_PATH=LIB), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.addCleanup(p.kill)
        self.assertEqual(p.stdout.readline(), "subscribed\n")
        gw.stop()
        out, err = p.communicate(timeout=isgtest.CTL_TIMEOUT)
        self.assertEqual(p.returncode, 0, out + err)
        self.assertEqual(out, "ended UNAVAILABLE gateway next CLOSED\n", err)

    def test_a_request_the_stopping_gateway_never_read_is_unavailable(self):
        """A request sent as isgd stops is never read: the gateway ended the
        subscription saying it is shutting down, then closed. The request
        fails with that UNAVAILABLE (retry later), not a bare close (isgctl
        fetch --follow acknowledging at that moment exited 4, not 5)."""
        prog = build(self, "late", LATE_REQUEST)
        gw = self.gateway()
        nhs = self.pki.certs["nhs"]
        p = subprocess.Popen([prog, gw.address, nhs.cert, nhs.key, self.pki.server_ca.cert],
                             env=dict(os.environ, LD_LIBRARY_PATH=LIB), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(p.kill)
        self.assertEqual(p.stdout.readline(), "subscribed\n")
        since = len(gw.log)
        gw.proc.send_signal(signal.SIGTERM)
        # The ping goes only once the gateway has closed the subscriber's
        # connection (its only one): sent earlier, it could be read and
        # answered, and the test would not be about a request never read.
        deadline = time.monotonic() + isgtest.STOP_TIMEOUT
        while "event=conn.closed" not in gw.log[since:]:
            if time.monotonic() > deadline:
                self.fail("no event=conn.closed within %.0fs of SIGTERM\n%s"
                          % (isgtest.STOP_TIMEOUT, gw.diagnostics()))
            time.sleep(0.01)
        opened = re.findall(r"event=conn\.established peer=(\S+)", gw.log)
        closed = re.findall(r"event=conn\.closed peer=(\S+) reason=(\S+)", gw.log[since:])
        self.assertEqual(len(opened), 1, gw.diagnostics())
        self.assertEqual(closed, [(opened[0], "shutdown")], gw.diagnostics())
        out, err = p.communicate("go\n", timeout=isgtest.CTL_TIMEOUT)
        self.assertEqual(p.returncode, 0, out + err)
        self.assertEqual(out, "ping UNAVAILABLE gateway\n", err)
        gw.stop()

    def test_receipts_of_sends_before_a_frame_over_the_limit(self):
        """Sends pipelined before one over limits.max_frame were read, stored
        and answered: their receipts come after the gateway's BAD_FRAME and
        before its close, and each finish returns its receipt (not CLOSED,
        which told the partner to resend what was stored). The handle says
        the gateway's reason, not the broken pipe the write met."""
        self.maxDiff = None
        prog = build(self, "pipeline", PIPELINE)
        gw = self.gateway()
        police = self.pki.certs["police"]
        r = subprocess.run([prog, gw.address, police.cert, police.key, self.pki.server_ca.cert],
                           env=dict(os.environ, LD_LIBRARY_PATH=LIB), capture_output=True,
                           text=True, timeout=isgtest.CTL_TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        closed = ("next CLOSED: the connection is unusable after an earlier failure (the "
                  "gateway ended the connection: frame longer than the gateway's limit of "
                  "4194304 bytes)")
        round_ = ["start 4 BAD_FRAME gateway"] + [
            "finish %d ok duplicate=0" % i for i in range(4)] + [closed]
        self.assertEqual(r.stdout.splitlines(), round_ * 3, r.stderr + gw.diagnostics())
        self.assertAlive(gw)
        got = self.partner(gw, "nhs").fetch_messages()
        self.assertEqual(sorted(m["message_id"] for m in got),
                         sorted("pipe-%d-%d" % (n, i) for n in range(3) for i in range(4)))


if __name__ == "__main__":
    unittest.main()
