"""
Scenario: isgd while its wall clock is stepped, as an NTP step, an admin or
a VM restored from a snapshot steps it (docs/operations.md "The clock").

A shim preloaded into isgd (built here, like test_limits.py's) moves
CLOCK_REALTIME by the whole seconds written in a file, which the test
rewrites while isgd runs; CLOCK_MONOTONIC is left alone, as a real step
leaves it. Each test starts the clock a few minutes after a midnight UTC and
sets it back an hour, to before that midnight: a day that has ended must not
come back (a retired key version, a spent daily limit), and the audit log
keeps the times the clock gave, which `isgctl audit verify` points out
without failing the log.
"""

import calendar
import datetime
import os
import subprocess
import time
import unittest

import isgtest

CLOCK_SHIFT_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
/* CLOCK_REALTIME moved by the whole seconds in the file $ISG_TEST_CLOCK_SHIFT. */
int clock_gettime(clockid_t id, struct timespec *ts)
{
	static int (*real)(clockid_t, struct timespec *);
	if (!real)
		real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
	int rc = real(id, ts);
	const char *path = getenv("ISG_TEST_CLOCK_SHIFT");
	if (rc != 0 || (id != CLOCK_REALTIME && id != CLOCK_REALTIME_COARSE) || !path)
		return rc;
	long long s = 0;
	FILE *f = fopen(path, "r");
	if (f) {
		if (fscanf(f, "%lld", &s) != 1)
			s = 0;
		fclose(f);
	}
	ts->tv_sec += s;
	return rc;
}
"""

DAY = 86400
# Started this long after midnight, so that even a slow run (valgrind) is
# still after it when the clock is set back; and set back an hour.
AFTER_MIDNIGHT = 600
STEP_BACK = 3600
NHS = "9434765919"
DOMAIN = "health-link"


class SteppedClockCase(isgtest.ScenarioCase):
    def setUp(self):
        super().setUp()
        src = os.path.join(self.tmp, "clockshift.c")
        self.shim = os.path.join(self.tmp, "clockshift.so")
        with open(src, "w") as f:
            f.write(CLOCK_SHIFT_C)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", self.shim, src, "-ldl"], check=True)
        self.shift_file = os.path.join(self.tmp, "clock-shift")
        self.shift = 0

    def set_clock(self, unix_s):
        """Move isgd's wall clock so that it reads unix_s now, and runs on from there."""
        self.shift = int(unix_s - time.time())
        tmp = self.shift_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % self.shift)
        os.replace(tmp, self.shift_file)  # never half-written when isgd reads it

    def step(self, seconds):
        tmp = self.shift_file + ".tmp"
        self.shift += seconds
        with open(tmp, "w") as f:
            f.write("%d\n" % self.shift)
        os.replace(tmp, self.shift_file)

    def start_shifted(self, gw):
        plain = gw.argv
        env = ["env", "LD_PRELOAD=" + self.shim, "ISG_TEST_CLOCK_SHIFT=" + self.shift_file]
        asan = os.environ.get("ASAN_OPTIONS", "")
        env.append("ASAN_OPTIONS=" + asan + (":" if asan else "") + "verify_asan_link_order=0")
        gw.argv = lambda: env + plain()
        gw.start()

    @staticmethod
    def midnight_after(day_text):
        """Unix seconds of 00:00 UTC on the day YYYY-MM-DD."""
        return calendar.timegm(time.strptime(day_text, "%Y-%m-%d"))


class RetiredKeyVersionCase(SteppedClockCase):
    """A version retired at midnight stays retired when the clock goes back
    past that midnight (docs/keys.md "Which version answers"), whichever
    process holds the keys."""

    def check(self, key_process):
        fields = [{"name": "nhs_number", "type": "nhs_number", "action": "pseudonymise",
                   "domain": DOMAIN, "required": True}]
        agreement = isgtest.default_agreement(datasets=[
            {"name": isgtest.DATASET, "unknown_fields": "reject", "fields": fields}])
        gw = self.gateway(self.policy(agreements=[agreement]), domains=(DOMAIN,), start=False,
                          key_process=key_process)
        isgtest.rotate_domain(gw.keys_dir, DOMAIN, overlap=1)
        old = isgtest.domain_keys(gw.keys_dir, DOMAIN)[0]
        self.assertNotEqual(old.retires, "-")
        self.set_clock(self.midnight_after(old.retires) + AFTER_MIDNIGHT)
        self.start_shifted(gw)
        police, nhs = self.partner(gw, "police"), self.partner(gw, "nhs")

        police.send_ok([{"nhs_number": NHS}], message_id="after-midnight")
        [m] = nhs.fetch_messages()
        self.assertEqual(list(m["records"][0]), ["nhs_number"], m)

        self.step(-STEP_BACK)  # the day before the version retired, by the clock
        police.send_ok([{"nhs_number": NHS}], message_id="clock-set-back")
        [m] = nhs.fetch_messages()
        self.assertEqual(list(m["records"][0]), ["nhs_number"],
                         "a retired version answered again: %s" % (m,))
        gw.stop()

    def test_in_the_key_process(self):
        self.check(True)

    def test_in_isgd_itself(self):
        self.check(False)


if __name__ == "__main__":
    unittest.main()
