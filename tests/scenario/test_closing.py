"""
Scenario: how isgd ends a connection, as a partner on a slow or busy link
sees it (protocol.md, Transport and Errors).

- A recipient that reads a large answer slowly is not cut while the answer
  flows: writing it out counts as activity. One that reads nothing is cut
  at limits.idle_timeout all the same, without close_notify.

The partner is raw TLS over memory BIOs (test_hardening.HalfCloser), so a
test sees whether the gateway's close_notify came.
"""

import ssl
import time
import unittest

import isgtest
from test_hardening import NHS_A, HalfCloser, HardeningCase

BIG_SUMMARY = "x" * 2500000  # four such messages: a 10 MB fetch answer


class ClosingCase(HardeningCase):
    def client(self, name, gw=None, rcvbuf=None):
        """A raw TLS partner; rcvbuf set before connecting keeps its window small."""
        c = HalfCloser(gw or self.gw, self.pki.certs[name], timeout=30 * isgtest.SLOW,
                       rcvbuf=rcvbuf)
        self.addCleanup(c.close)
        return c

    def wait_log(self, event, timeout=30.0, gw=None):
        gw = gw or self.gw
        deadline = time.monotonic() + timeout * isgtest.SLOW
        while event not in gw.log:
            if time.monotonic() > deadline:
                self.fail("no %s in the log within %.0fs\n%s" % (event, timeout, gw.diagnostics()))
            time.sleep(0.05)

    def by_id(self, frames):
        got = {}
        for f in frames:
            self.assertNotIn(f.request_id, got, "two answers to request %d" % f.request_id)
            got[f.request_id] = f
        return got


class TestSlowReader(ClosingCase):
    """
    limits.idle_timeout cuts a connection on which nothing moves, not one
    whose answer is still flowing to a slow reader.
    """

    def setUp(self):
        super().setUp()
        self.idle = int(2 * isgtest.SLOW)
        self.gw = self.gateway(limits={"idle_timeout": "%ds" % self.idle, "max_frame": "16MiB",
                                       "connection_buffer": "32MiB"})
        police = self.connect("police")
        self.sent = ["big-%d" % i for i in range(4)]
        for mid in self.sent:
            self.accepted(police, mid, [{"nhs_number": NHS_A, "concern_summary": BIG_SUMMARY}])
        police.close()

    def test_slow_reader_gets_the_whole_answer(self):
        """A 10 MB fetch answer, read in small pieces over 2.5 idle_timeouts, comes whole
        and the connection serves on."""
        pb = self.pb
        c = self.client("nhs", rcvbuf=65536)
        c.send_frames([pb.Frame(request_id=9, fetch=pb.FetchRequest(max_messages=10))])
        chunk, total = 65536, 4 * len(BIG_SUMMARY)
        pause = 2.5 * self.idle / (total / chunk)
        t0 = time.monotonic()
        buf = b""
        while True:
            head = isgtest.varint_decode(buf)
            if head is not None and len(buf) - head[1] >= head[0]:
                break
            data = c.sock.recv(chunk)
            if not data:
                self.fail("the gateway closed after %d bytes of the answer in %.1fs\n%s"
                          % (len(buf), time.monotonic() - t0, self.gw.diagnostics()))
            c.incoming.write(data)
            try:
                while True:
                    got = c.tls.read(1 << 20)
                    if not got:
                        self.fail("the gateway's close_notify after %d bytes of the answer in "
                                  "%.1fs\n%s" % (len(buf), time.monotonic() - t0,
                                                  self.gw.diagnostics()))
                    buf += got
            except ssl.SSLWantReadError:
                pass
            time.sleep(pause)
        took = time.monotonic() - t0
        self.assertGreater(took, self.idle * 1.5, "the answer was not read slowly enough to test")
        n, pos = isgtest.varint_decode(buf)
        f = pb.Frame.FromString(buf[pos:pos + n])
        self.assertEqual(f.request_id, 9)
        got = [d.message_id for d in self.expect(f, "fetch_result").deliveries]
        self.assertEqual(got, self.sent)
        # still open and serving
        c.send_frames([pb.Frame(request_id=10, ping=pb.Ping(nonce=5))])
        c.close_notify()
        frames, notify = c.read_to_end(pb)
        self.assertEqual([(f.request_id, f.pong.nonce) for f in frames], [(10, 5)])
        self.assertTrue(notify)
        self.assertNotIn("event=conn.idle_timeout", self.gw.log)

    def test_reader_that_never_reads_is_cut(self):
        """A recipient that asks for 10 MB and reads none of it is cut at idle_timeout
        once its window is shut, without close_notify: an answer is owed."""
        pb = self.pb
        c = self.client("nhs", rcvbuf=4096)
        t0 = time.monotonic()
        c.send_frames([pb.Frame(request_id=9, fetch=pb.FetchRequest(max_messages=10))])
        self.wait_log("event=conn.idle_timeout")
        if not isgtest.VALGRIND:
            self.assertGreater(time.monotonic() - t0, self.idle - 0.5, "cut before idle_timeout")
        frames, notify = c.read_to_end(pb)
        self.assertEqual(frames, [], "the 10 MB answer came whole")
        self.assertFalse(notify, "close_notify with an answer owed")
        self.assertServing(pending=self.sent)


if __name__ == "__main__":
    unittest.main()
