"""
Scenario: isgd while its wall clock is stepped, as an NTP step, an admin or
a VM restored from a snapshot steps it (docs/operations.md "The clock").

A shim preloaded into isgd (built here, like test_limits.py's) moves
CLOCK_REALTIME by the whole seconds written in a file, which the test
rewrites while isgd runs; CLOCK_MONOTONIC is left alone, as a real step
leaves it. Set back an hour past a midnight UTC, the clock must not bring
back a day that has ended (a retired key version, a spent daily limit), and
the audit log keeps the times the clock gave, which `isgctl audit verify`
points out without failing the log. Stepped a day forward, it must not make
`verify` fail a genuine log either, and expires what the new time says.
"""

import calendar
import os
import re
import socket
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

    def _write_shift(self):
        tmp = self.shift_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % self.shift)
        os.replace(tmp, self.shift_file)  # never half-written when isgd reads it

    def set_clock(self, unix_s):
        """Move the shifted wall clock so that it reads unix_s now, and runs on from there."""
        self.shift = int(unix_s - time.time())
        self._write_shift()

    def step(self, seconds):
        """Step the shifted wall clock by seconds (negative: back)."""
        self.shift += seconds
        self._write_shift()

    def shifted_env(self):
        """The environment that moves a program's wall clock with the file;
        under ASan, which wants its runtime first among the libraries, that
        check is turned off."""
        asan = os.environ.get("ASAN_OPTIONS", "")
        return {"LD_PRELOAD": self.shim, "ISG_TEST_CLOCK_SHIFT": self.shift_file,
                "ASAN_OPTIONS": asan + (":" if asan else "") + "verify_asan_link_order=0"}

    def start_shifted(self, gw):
        plain = gw.argv
        env = ["env"] + ["%s=%s" % kv for kv in self.shifted_env().items()]
        gw.argv = lambda: env + plain()
        gw.start()

    def wait_for_log(self, gw, pattern, count=1, timeout=10.0 * isgtest.SLOW):
        """Until isgd's log holds `count` lines matching pattern (it looks at its clock every second)."""
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, gw.log, re.M)) < count:
            if time.monotonic() > deadline:
                self.fail("no %d lines matching %r in isgd's log\n%s"
                          % (count, pattern, gw.diagnostics()))
            time.sleep(0.05)

    @staticmethod
    def midnight_of(day_text):
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
        # Retiring the day after tomorrow: set back, the clock is still after
        # the certificates were made (isgd would refuse them otherwise).
        isgtest.rotate_domain(gw.keys_dir, DOMAIN, overlap=2)
        old = isgtest.domain_keys(gw.keys_dir, DOMAIN)[0]
        self.assertNotEqual(old.retires, "-")
        self.set_clock(self.midnight_of(old.retires) + AFTER_MIDNIGHT)
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


class SetBackPastMidnightCase(SteppedClockCase):
    """The clock set back an hour past midnight while a sender is at its
    daily limit: no second allowance, and the audit log, whose entries keep
    the clock's times, verifies with a note saying where the times go back
    (docs/audit.md "Checking the log")."""

    def test_limit_holds_and_verify_points_out_the_times(self):
        agreement = isgtest.default_agreement(limits={"messages_per_day": 2})
        gw = self.gateway(self.policy(agreements=[agreement]), start=False)
        # A midnight far enough ahead that, set back, the clock is still after
        # the certificates were made (isgd would refuse them otherwise).
        midnight = ((int(time.time()) + 2 * STEP_BACK) // DAY + 1) * DAY
        self.set_clock(midnight + AFTER_MIDNIGHT)
        self.start_shifted(gw)
        police = self.partner(gw, "police")
        police.send_ok([{"nhs_number": NHS}], message_id="m-1")
        police.send_ok([{"nhs_number": NHS}], message_id="m-2")
        self.assertRefused(police.send([{"nhs_number": NHS}], message_id="m-3"), gw,
                           "LIMIT_EXCEEDED", "agreement.messages_per_day")

        self.step(-STEP_BACK)  # the day before, by the clock: not a new allowance
        self.assertRefused(police.send([{"nhs_number": NHS}], message_id="m-4"), gw,
                           "LIMIT_EXCEEDED", "agreement.messages_per_day")
        # isgd's log says when the clock moved, and by how much
        self.wait_for_log(gw, r"^ts=%sT23:\S+ level=warn event=clock\.stepped by_ms=-3[56]\d{5}$"
                          % time.strftime("%Y-%m-%d", time.gmtime(midnight - DAY)))
        self.step(STEP_BACK)
        self.wait_for_log(gw, r"event=clock\.stepped by_ms=3[56]\d{5}$")
        self.assertRefused(police.send([{"nhs_number": NHS}], message_id="m-5"), gw,
                           "LIMIT_EXCEEDED", "agreement.messages_per_day")
        self.step(-STEP_BACK // 2)
        self.assertRefused(police.send([{"nhs_number": NHS}], message_id="m-6"), gw,
                           "LIMIT_EXCEEDED", "agreement.messages_per_day")
        self.wait_for_log(gw, r"event=clock\.stepped by_ms=-", count=2)
        gw.stop()  # signs the last checkpoint

        day = time.strftime("%Y-%m-%d", time.gmtime(midnight))
        before = time.strftime("%Y-%m-%d", time.gmtime(midnight - DAY))
        v = isgtest.ctl("audit", "verify", "--config", gw.config_path)
        self.assertEqual(v.rc, 0, v)
        self.assertNotIn("problem:", v.out)
        m = re.search(r"^note: entry (\d+) has an earlier time \(%sT23:\S+\) than entry (\d+) "
                      r"\(%sT00:\S+\), and the times go back 2 times in all, by up to "
                      r"3[56]\d\d\.\d{3} s: this is what isgd's clock set back looks like .* "
                      r"and also what entries rewritten with later times and then signed by a "
                      r"restarted isgd look like"
                      % (before, day), v.out, re.M)
        self.assertIsNotNone(m, v.out)
        self.assertEqual(int(m.group(1)), int(m.group(2)) + 1)
        self.assertIn("audit log OK", v.out)

        r = isgtest.ctl("audit", "report", "--config", gw.config_path, "--from", before,
                        "--to", day, "--markdown", "-")
        self.assertEqual(r.rc, 0, r)
        self.assertIn("**OK**", r.out)
        self.assertRegex(r.out, r"Entry %s has an earlier time than the entry before it \(2 "
                         r"entries in all, by up to 3[56]\d\d\.\d{3} s\)" % m.group(1))


class ForwardStepCase(SteppedClockCase):
    """The clock stepped a day forward (or a VM resumed after a day): the
    entries written before the step are covered at once, so `audit verify`
    on the same clock does not take them for entries left uncovered past its
    grace; and undelivered messages whose wait the new time has passed are
    expired (docs/operations.md "The clock")."""

    def ctl_shifted(self, *args):
        env = dict(os.environ, **self.shifted_env())
        return subprocess.run([isgtest.ISGCTL] + list(args), capture_output=True, text=True,
                              env=env, timeout=isgtest.CTL_TIMEOUT)

    def test_a_day_forward(self):
        agreement = isgtest.default_agreement(undelivered_ttl="2h")
        gw = self.gateway(self.policy(agreements=[agreement]), start=False,
                          audit={"checkpoint_interval": "1h"}, store={"sweep_interval": "1s"})
        self.set_clock(time.time())
        self.start_shifted(gw)
        self.partner(gw, "police").send_ok([{"nhs_number": NHS}], message_id="waits-2h")
        v = self.ctl_shifted("audit", "verify", "--config", gw.config_path)
        self.assertEqual(v.returncode, 0, v)
        self.assertIn("not yet covered by a checkpoint", v.stdout)  # signed within the hour

        self.step(DAY)
        self.wait_for_log(gw, r"event=clock\.stepped by_ms=86(39|40)\d{4}$")
        # Covered at once, not an hour later: a day old by the clock, within
        # no grace, they would fail verify though nothing is wrong.
        deadline = time.monotonic() + 10 * isgtest.SLOW
        while True:
            v = self.ctl_shifted("audit", "verify", "--config", gw.config_path)
            if v.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(v.returncode, 0, "%s\n%s" % (v, gw.diagnostics()))

        # The message's two hours are over by the new clock: expired, on record.
        self.wait_for_log(gw, r"event=store\.expired count=1$")
        self.assertEqual(self.partner(gw, "nhs").fetch_messages(), [])
        gw.stop()

    def test_a_full_window_judged_again(self):
        """A subscriber's full window waits for its first push to expire (2 h
        away by the clock then); stepped a day forward, those pushes have
        expired and the message waiting behind them, under an agreement that
        keeps it longer, is pushed now, not two hours later."""
        short = isgtest.default_agreement(undelivered_ttl="2h")
        long = isgtest.default_agreement(id="long-wait", undelivered_ttl="14d")
        gw = self.gateway(self.policy(agreements=[short, long]), start=False,
                          limits={"max_fetch_messages": 2})
        self.set_clock(time.time())
        self.start_shifted(gw)
        pb = isgtest.isg_pb2()
        police = isgtest.FrameConn(gw, self.pki.certs["police"])
        self.addCleanup(police.close)

        def send(mid, agreement):
            return police.send_ok(mid, [{"nhs_number": NHS}], agreement_id=agreement["id"])

        sub = isgtest.FrameConn(gw, self.pki.certs["nhs"])
        self.addCleanup(sub.close)
        sub.send_frame(pb.Frame(request_id=1, subscribe=pb.Subscribe()))
        unacked = [send("unacked-%d" % i, short) for i in range(2)]
        pushed = [sub.recv_frame(timeout=5 * isgtest.SLOW).delivery.gateway_id for _ in unacked]
        self.assertEqual(pushed, unacked)
        waiting = send("waiting", long)
        with self.assertRaises(socket.timeout, msg="pushed past a full window"):
            sub.recv_frame(timeout=0.5)

        self.step(DAY)
        self.wait_for_log(gw, r"event=clock\.stepped by_ms=86(39|40)\d{4}$")
        try:
            f = sub.recv_frame(timeout=5 * isgtest.SLOW)
        except socket.timeout:
            self.fail("the window stayed shut after its pushes expired by a step of the "
                      "clock\n%s" % gw.diagnostics())
        self.assertEqual(f.delivery.gateway_id, waiting, f)
        gw.stop()


class CrashWithClockAheadCase(SteppedClockCase):
    """isgd killed with entries no checkpoint covers while its clock was half an hour
    ahead, then started with the clock corrected: the checkpoint it signs is dated
    before them, which `audit verify` cannot tell from a rewrite, so isgd says so at
    that start and verify names it as the innocent explanation (docs/audit.md "Times
    that go back")."""

    AHEAD = 1800

    def test_a_crash_then_the_clock_corrected(self):
        gw = self.gateway(start=False, audit={"checkpoint_interval": "1h"})
        self.set_clock(time.time() + self.AHEAD)
        self.start_shifted(gw)
        self.partner(gw, "police").send_ok([{"nhs_number": NHS}], message_id="ahead")
        gw.kill()  # no checkpoint covers the entries
        self.assertNotIn("entries_ahead", gw.log)

        self.set_clock(time.time())
        gw.start()
        m = re.search(r"^ts=(\S+) level=warn event=audit\.entries_ahead entries=(\d+) first=1 "
                      r"last=(\d+) latest_at=(\S+) now=(\S+)$", gw.log, re.M)
        self.assertIsNotNone(m, gw.diagnostics())
        self.assertEqual(int(m.group(2)), int(m.group(3)))
        self.assertGreater(m.group(4), m.group(5))  # ISO times, ahead of the clock
        ahead = int(m.group(3))
        self.partner(gw, "police").send_ok([{"nhs_number": NHS}], message_id="corrected")
        gw.stop()  # signs a checkpoint, dated before the entries written ahead

        v = isgtest.ctl("audit", "verify", "--config", gw.config_path)
        self.assertEqual(v.rc, 1, v)
        innocent = (r"Innocently, isgd stopped without a checkpoint \(a crash, a power cut\) "
                    r"while its clock was ahead and was restarted with the clock corrected: "
                    r"isgd's log then has an audit\.entries_ahead line at that start")
        self.assertRegex(v.out, r"problem: %d entries, from entry 1 to entry %d, are dated "
                                r"after the checkpoint covering them was written .*\. %s\. "
                                r"Otherwise" % (ahead, ahead, innocent))
        self.assertRegex(v.out, r"problem: entry %d has an earlier time \(\S+\) than entry %d "
                                r"\(\S+\), and entry %d is dated after the checkpoint covering "
                                r"it was written: .*\. %s\. Otherwise"
                         % (ahead + 1, ahead, ahead, innocent))
        # a clean restart on the right clock has nothing to say
        gw.start()
        gw.stop()
        self.assertEqual(len(re.findall(r"event=audit\.entries_ahead", gw.log)), 1)


if __name__ == "__main__":
    unittest.main()
