"""
Scenario: an agreement's daily limits (docs/policy.md "Limits") through the
real isgd: messages_per_day and records_per_day per sender and UTC day, what
the refusal says, that resends and refusals do not use the allowance, and
that a restart does not reset the counters.
"""

import os
import signal
import sqlite3
import subprocess
import time
import unittest

import isgtest
# fsync and fdatasync of the WAL failing with EIO while ISG_TEST_FAIL_SYNC says
from test_faults import FAIL_WAL_SYNC_C

NHS = ["9434765919", "6281948211", "9876543210", "4010232137", "9000000009"]


def record(i):
    return {"nhs_number": NHS[i % len(NHS)], "age": 40 + i}


class DailyLimitCase(isgtest.ScenarioCase):
    def start(self, **limits):
        agreement = isgtest.default_agreement(senders=["met-police", "city-council"],
                                               limits=limits)
        self.gw = self.gateway(self.policy(agreements=[agreement]))
        self.police = self.partner(self.gw, "police")
        self.council = self.partner(self.gw, "council")

    def assertRefused(self, r, rule, limit, what):
        self.assertEqual(r.rc, 3, r)
        self.assertIn("LIMIT_EXCEEDED [%s]" % rule, r.err)
        self.assertIn("limit of %d %s per day" % (limit, what), r.err)
        self.assertIn("resets at 00:00 UTC", r.err)

    def test_messages_per_day(self):
        self.start(messages_per_day=2)
        first = self.police.send_ok([record(0)], message_id="m-1")
        self.police.send_ok([record(1)], message_id="m-2")
        # A resend of an accepted message is not a new message.
        again = self.police.send_ok([record(0)], message_id="m-1")
        self.assertTrue(again["duplicate"])
        self.assertEqual(again["gateway_id"], first["gateway_id"])
        self.assertRefused(self.police.send([record(2)], message_id="m-3"),
                           "agreement.messages_per_day", 2, "messages")
        # Another sender under the same agreement has an allowance of its own.
        self.council.send_ok([record(3)], message_id="c-1")
        # The refusal is audited and the gateway says so in the log, as it
        # logs every refused send (who, which rule), without values.
        self.assertRegex(self.gw.log, r"event=message\.refused partner=\S+ "
                         r"rule=agreement\.messages_per_day record=-1 field=\"\" audit_index=\d+")
        self.assertNotIn(NHS[2], self.gw.log)
        # A restart rebuilds today's counters from the store.
        self.gw.restart()
        self.assertRefused(self.police.send([record(2)], message_id="m-3"),
                           "agreement.messages_per_day", 2, "messages")
        self.assertEqual(len(self.partner(self.gw, "nhs").fetch_messages()), 3)

    def test_resend_in_flight_takes_no_share(self):
        """Resends of unanswered sends pipelined with new ones after a
        reconnect, the documented pattern: a resend is answered with its
        receipt and never takes a share of the limit, not even while it is in
        flight beside a new message, so the new one is accepted at the limit;
        the next new one is refused, and only that refusal is audited."""
        self.start(messages_per_day=2)
        with isgtest.FrameConn(self.gw, self.pki.certs["police"]) as c:
            pb = c.pb

            def send(rid, mid, i):
                f = pb.Frame(request_id=rid, send=pb.SendRequest(
                    message_id=mid, recipient="nhs-trust", agreement_id=isgtest.AGREEMENT_ID,
                    dataset=isgtest.DATASET, records=[isgtest.pb_record(pb, record(i))]))
                b = f.SerializeToString()
                return isgtest.varint_encode(len(b)) + b

            def answers(n):
                got = {}
                for _ in range(n):
                    f = c.recv_frame()
                    got[f.request_id] = f
                return got

            c.send_raw(send(1, "m-1", 0))
            first = answers(1)[1].send_result.receipt
            # One write: the resend of m-1 and the new m-2, both in flight at once.
            c.send_raw(send(2, "m-1", 0) + send(3, "m-2", 1))
            got = answers(2)
            self.assertEqual(got[2].WhichOneof("body"), "send_result", got[2])
            self.assertTrue(got[2].send_result.receipt.duplicate)
            self.assertEqual(got[2].send_result.receipt.gateway_id, first.gateway_id)
            self.assertEqual(got[3].WhichOneof("body"), "send_result", got[3])
            self.assertFalse(got[3].send_result.receipt.duplicate)
            # The limit is reached: a resend pipelined with a third new message
            # still gets its receipt, and the new one is refused.
            c.send_raw(send(4, "m-2", 1) + send(5, "m-3", 2))
            got = answers(2)
            self.assertTrue(got[4].send_result.receipt.duplicate, got[4])
            self.assertEqual(got[5].WhichOneof("body"), "error", got[5])
            self.assertEqual(got[5].error.rule, "agreement.messages_per_day")
            refusal_index = got[5].error.audit_index
        db = sqlite3.connect("file:%s?mode=ro" % self.gw.store_path, uri=True)
        try:
            refused = db.execute("SELECT seq, entry FROM audit WHERE kind = 'message.refused'"
                                 ).fetchall()
            accepted = db.execute("SELECT count(*) FROM audit WHERE kind = 'message.accepted'"
                                  ).fetchone()[0]
        finally:
            db.close()
        self.assertEqual(accepted, 2)
        self.assertEqual(len(refused), 1, refused)
        self.assertEqual(refused[0][0], refusal_index)
        self.assertIn(b'"message_id":"m-3"', bytes(refused[0][1]))
        self.assertIn(b'"rule":"agreement.messages_per_day"', bytes(refused[0][1]))

    def test_records_per_day(self):
        self.start(records_per_day=5, max_records_per_message=5)
        self.police.send_ok([record(i) for i in range(3)], message_id="r-1")
        self.assertRefused(self.police.send([record(i) for i in range(3)], message_id="r-2"),
                           "agreement.records_per_day", 5, "records")
        # The refused message used none of the allowance: two more still fit.
        self.police.send_ok([record(i) for i in range(2)], message_id="r-3")
        self.assertRefused(self.police.send([record(0)], message_id="r-4"),
                           "agreement.records_per_day", 5, "records")

    def test_refused_records_do_not_count(self):
        self.start(records_per_day=2)
        bad = [{"nhs_number": "9434765918"}]  # check digit wrong: refused before the limit
        self.assertEqual(self.police.send(bad).rc, 3)
        self.police.send_ok([record(0), record(1)], message_id="ok")

    def test_limit_added_at_reload_counts_what_was_sent_today(self):
        """A limit a reload brings in counts the messages accepted earlier that
        day, as one a restart brings in does (found by tests/soak/soak.py)."""
        self.start()
        for i in range(3):
            self.police.send_ok([record(i)], message_id="before-%d" % i)
        isgtest.write_policy(self.gw.policy_dir, agreements=[isgtest.default_agreement(
            senders=["met-police", "city-council"], limits={"messages_per_day": 3})])
        self.assertEqual(self.gw.reload()[0], "loaded")
        self.assertRefused(self.police.send([record(3)], message_id="after-0"),
                           "agreement.messages_per_day", 3, "messages")
        # Sends between the start and the reload count too, not only those
        # the counters were seeded with at the start.
        isgtest.write_policy(self.gw.policy_dir, agreements=[isgtest.default_agreement(
            senders=["met-police", "city-council"])])
        self.assertEqual(self.gw.reload()[0], "loaded")
        self.council.send_ok([record(0)], message_id="c-0")
        self.gw.restart()
        self.council.send_ok([record(1)], message_id="c-1")
        isgtest.write_policy(self.gw.policy_dir, agreements=[isgtest.default_agreement(
            senders=["met-police", "city-council"], limits={"messages_per_day": 3})])
        self.assertEqual(self.gw.reload()[0], "loaded")
        self.council.send_ok([record(2)], message_id="c-2")
        self.assertRefused(self.council.send([record(3)], message_id="c-3"),
                           "agreement.messages_per_day", 3, "messages")


def preload_env(lib):
    """env(1) arguments preloading lib; under ASan, which wants its runtime
    first among the libraries, that check is turned off."""
    asan = os.environ.get("ASAN_OPTIONS", "")
    asan += (":" if asan else "") + "verify_asan_link_order=0"
    return ["env", "LD_PRELOAD=" + lib, "ASAN_OPTIONS=" + asan]


# fsync and fdatasync that take 300 ms, so store jobs are still queued at SIGTERM.
SLOW_SYNC_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <time.h>
static void nap(void) { struct timespec t = {0, 300 * 1000000L}; nanosleep(&t, 0); }
int fsync(int fd) { static int (*real)(int); if (!real) real = dlsym(RTLD_NEXT, "fsync"); nap(); return real(fd); }
int fdatasync(int fd) { static int (*real)(int); if (!real) real = dlsym(RTLD_NEXT, "fdatasync"); nap(); return real(fd); }
"""


def slow_sync_lib(tmp):
    src = os.path.join(tmp, "slowsync.c")
    lib = os.path.join(tmp, "slowsync.so")
    with open(src, "w") as f:
        f.write(SLOW_SYNC_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", lib, src, "-ldl"], check=True)
    return lib


class RefusedReloadOnRecordCase(isgtest.ScenarioCase):
    def test_a_refused_reload_is_on_record_when_it_is_logged(self):
        """Whoever reads policy.refused in isgd's log finds its audit entry: it
        is committed first, even when the disk takes 300 ms to sync."""
        lib = slow_sync_lib(self.tmp)
        gw = self.gateway(start=False)
        plain = gw.argv
        gw.argv = lambda: preload_env(lib) + plain()
        gw.start()

        def refused():
            db = sqlite3.connect("file:%s?mode=ro" % gw.store_path, uri=True)
            try:
                return db.execute("SELECT count(*) FROM audit WHERE kind = 'policy.refused'").fetchone()[0]
            finally:
                db.close()

        with open(os.path.join(gw.policy_dir, "agreements", "broken.yaml"), "w") as f:
            f.write("agreement: [unclosed\n")
        for n in (1, 2):
            outcome, text = gw.reload()
            self.assertEqual(outcome, "refused", text)
            self.assertEqual(refused(), n, text)


class ShutdownRefusalCase(isgtest.ScenarioCase):
    """Over-limit sends whose connections closed, still in the store at SIGTERM:
    each refusal is audited before the store closes (it was once submitted
    after, to the freed store), and isgd exits cleanly."""

    def slow_sync_lib(self):
        return slow_sync_lib(self.tmp)

    def test_refusals_queued_at_shutdown_are_audited(self):
        lib = self.slow_sync_lib()
        agreement = isgtest.default_agreement(limits={"messages_per_day": 1})
        gw = self.gateway(self.policy(agreements=[agreement]), start=False)
        plain = gw.argv
        gw.argv = lambda: preload_env(lib) + plain()
        gw.start()
        pb = isgtest.isg_pb2()
        police = self.pki.certs["police"]
        rec = isgtest.pb_record(pb, record(0))

        def send(i, mid):
            f = pb.Frame(request_id=i, send=pb.SendRequest(
                message_id=mid, recipient="nhs-trust", agreement_id=isgtest.AGREEMENT_ID,
                dataset=isgtest.DATASET, records=[rec]))
            b = f.SerializeToString()
            return isgtest.varint_encode(len(b)) + b

        with isgtest.FrameConn(gw, police) as c:
            c.send_raw(send(1, "first"))
            self.assertEqual(c.recv_frame().WhichOneof("body"), "send_result")
        conns = [isgtest.FrameConn(gw, police, timeout=60) for _ in range(4)]
        for k, c in enumerate(conns):
            c.send_raw(b"".join(send(i + 1, "x-%d-%d" % (k, i)) for i in range(60)))
        for c in conns:
            c.close()
        time.sleep(0.2)  # the store is in its first slow commit
        gw.stop(timeout=120)
        logged = gw.log.count("event=message.refused")
        db = sqlite3.connect("file:%s?mode=ro" % gw.store_path, uri=True)
        try:
            audited = db.execute("SELECT count(*) FROM audit WHERE kind = 'message.refused'"
                                 ).fetchone()[0]
        finally:
            db.close()
        self.assertGreater(logged, 0, gw.diagnostics())
        self.assertEqual(audited, logged, gw.diagnostics())
        self.assertNotIn("audit.failed", gw.log)


class RefusalNotStoredCase(isgtest.ScenarioCase):
    def test_over_limit_send_the_store_fails_is_logged(self):
        """A refusal that cannot be put on record is an error in the log, never silent."""
        src = os.path.join(self.tmp, "failsync.c")
        lib = os.path.join(self.tmp, "failsync.so")
        flag = os.path.join(self.tmp, "fail-sync")
        with open(src, "w") as f:
            f.write(FAIL_WAL_SYNC_C)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", lib, src, "-ldl"], check=True)
        agreement = isgtest.default_agreement(limits={"messages_per_day": 1})
        gw = self.gateway(self.policy(agreements=[agreement]), start=False)
        plain = gw.argv
        gw.argv = lambda: preload_env(lib) + ["ISG_TEST_FAIL_SYNC=" + flag] + plain()
        gw.start()
        self.addCleanup(gw.close)  # after a failed commit its exit code is not the point
        police = self.partner(gw, "police")
        police.send_ok([record(0)], message_id="m-1")
        with open(flag, "w") as f:
            f.write("m-2")  # the commit of m-2's refusal, not of the connection's entry
        r = police.send([record(1)], message_id="m-2")
        os.unlink(flag)
        # Its commit may or may not be on disk: send again, same message_id.
        self.assertEqual(r.rc, 5, r)
        self.assertIn("UNAVAILABLE [store.outcome_unknown]", r.err)
        self.assertRegex(gw.log, r"event=audit\.failed kind=message\.refused "
                                 r"rule=agreement\.messages_per_day")


if __name__ == "__main__":
    unittest.main()
