"""
Scenario: how isgd ends a connection, as a partner on a slow or busy link
sees it (protocol.md, Transport and Errors).

- A recipient that reads a large answer slowly is not cut while the answer
  flows: writing it out counts as activity. One that reads nothing is cut
  at limits.idle_timeout all the same, without close_notify.
- A clean close reaches the partner whole: every answer owed, then the
  gateway's close_notify, also when the socket has no room for it at
  first, and when the partner sent more than the gateway read and reads
  late.
- A fetch waiting for messages, and a subscription, are told why when the
  gateway cuts the connection: a reload that removes the partner
  (NOT_PERMITTED, partner.removed) or a shutdown (UNAVAILABLE).

The partner is raw TLS over memory BIOs (test_hardening.HalfCloser), so a
test sees whether the gateway's close_notify came.
"""

import os
import ssl
import subprocess
import time
import unittest

import isgtest
from isgtest import varint_encode
from test_hardening import NHS_A, HalfCloser, HardeningCase

BIG_SUMMARY = "x" * 2500000  # four such messages: a 10 MB fetch answer

# write(2) that says EAGAIN, once a descriptor, to the record of a TLS 1.3
# alert (24 bytes, an encrypted 2-byte alert: 17 03 03 00 13 ...), as a
# socket with no room left would: isgd's close_notify finds it full. The
# frames isgd sends are never 2 bytes, so they are never taken for one.
FULL_AT_ALERT_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>
static char refused[65536];
ssize_t write(int fd, const void *buf, size_t n)
{
	static const unsigned char alert[5] = {0x17, 0x03, 0x03, 0x00, 0x13};
	static ssize_t (*real)(int, const void *, size_t);
	if (!real)
		real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
	if (n == 24 && fd >= 0 && fd < 65536 && memcmp(buf, alert, 5) == 0 &&
	    !__atomic_exchange_n(&refused[fd], 1, __ATOMIC_SEQ_CST)) {
		errno = EAGAIN;
		return -1;
	}
	return real(fd, buf, n);
}
"""


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


    def test_subscriber_that_never_reads_is_cut(self):
        """A subscriber, exempt from idle_timeout while it waits for messages,
        is cut like any reader once its pushes stand still in a shut window:
        it cannot pin its connection and the pushes' memory."""
        pb = self.pb
        c = self.client("nhs", rcvbuf=4096)
        t0 = time.monotonic()
        c.send_frames([pb.Frame(request_id=9, subscribe=pb.Subscribe())])
        self.wait_log("event=conn.idle_timeout")
        if not isgtest.VALGRIND:
            self.assertGreater(time.monotonic() - t0, self.idle - 0.5, "cut before idle_timeout")
        frames, notify = c.read_to_end(pb)
        self.assertLess(len(frames), len(self.sent), "every push arrived whole")
        self.assertFalse(notify, "close_notify with pushes owed")
        # Handed out, never acknowledged: each is delivered again.
        self.assertServing(pending=self.sent)

    def test_waiting_subscriber_is_not_idle(self):
        """One that is owed nothing (nothing waits for the council) waits on
        past idle_timeout, and is served."""
        pb = self.pb
        c = self.client("council")
        c.send_frames([pb.Frame(request_id=4, subscribe=pb.Subscribe()),
                       pb.Frame(request_id=5, ping=pb.Ping(nonce=1))])
        self.assertEqual(self.expect(c.recv_frame(pb), "pong").nonce, 1)
        time.sleep(self.idle * 2.5)
        c.send_frames([pb.Frame(request_id=6, ping=pb.Ping(nonce=2))])
        self.assertEqual(self.expect(c.recv_frame(pb), "pong").nonce, 2)
        self.assertNotIn("event=conn.idle_timeout", self.gw.log)


class TestCleanClose(ClosingCase):
    def setUp(self):
        super().setUp()
        self.gw = self.gateway()

    def test_close_notify_waits_for_room(self):
        """A close_notify that finds the socket full waits for room: the partner
        sees a clean close, not an EOF that says answers may be missing."""
        pb = self.pb
        src, lib = os.path.join(self.tmp, "full.c"), os.path.join(self.tmp, "full.so")
        with open(src, "w") as f:
            f.write(FULL_AT_ALERT_C)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", lib, src, "-ldl"], check=True)
        gw = self.gateway(name="gw-full", start=False)
        plain = gw.argv
        asan = os.environ.get("ASAN_OPTIONS", "")
        env = ["env", "LD_PRELOAD=" + lib,
               "ASAN_OPTIONS=" + asan + (":" if asan else "") + "verify_asan_link_order=0"]
        gw.argv = lambda: env + plain()
        gw.start()
        c = self.client("police", gw)
        c.send_frames([pb.Frame(request_id=1, ping=pb.Ping(nonce=4))])
        c.close_notify()
        frames, notify = c.read_to_end(pb)
        self.assertEqual([(f.request_id, f.pong.nonce) for f in frames], [(1, 4)])
        self.assertTrue(notify, "closed without close_notify\n%s" % gw.diagnostics())
        self.assertIn("reason=close_notify", gw.log)

    def test_subscription_ends_at_a_bad_frame(self):
        """A subscription whose first look at the store is under way when
        the partner sends a frame the stream cannot survive (a length over
        max_frame) ends there: nothing is pushed after the BAD_FRAME error,
        and the message stays pending."""
        pb = self.pb
        police = self.connect("police")
        self.accepted(police, "sub-bad-1", [{"nhs_number": NHS_A}])
        police.close()
        c = self.client("nhs")
        # One write: isgd takes the subscription and the bad prefix in one
        # pass, before the store answers the subscription's look.
        body = pb.Frame(request_id=5, subscribe=pb.Subscribe()).SerializeToString()
        c.tls.write(varint_encode(len(body)) + body + varint_encode(64 << 20))
        c._flush()
        frames, notify = c.read_to_end(pb)
        kinds = [(f.request_id, f.WhichOneof("body")) for f in frames]
        self.assertIn((0, "error"), kinds, self.gw.diagnostics())
        after = kinds[kinds.index((0, "error")) + 1:]
        self.assertEqual(after, [], "sent after the BAD_FRAME error\n%s" % self.gw.diagnostics())
        self.assertTrue(notify)
        self.assertServing(pending=["sub-bad-1"])

    def test_answers_reach_a_late_reader_that_sent_more(self):
        """
        A partner pipelines pings, then a length prefix over max_frame and
        the start of that frame, and reads only later through a small
        window: the gateway stops reading at the bad prefix, with the
        frame's bytes still unread, and answers BAD_FRAME. Every pong and
        the BAD_FRAME error reach the partner, then the close_notify: a
        close with input unread must not reset the connection and take
        the answers still on their way with it.
        """
        pb = self.pb
        c = self.client("police", rcvbuf=4096)
        pings = [pb.Frame(request_id=100 + i, ping=pb.Ping(nonce=i)) for i in range(2000)]
        c.send_frames(pings)
        c.tls.write(varint_encode(64 << 20) + b"\0" * 200000)  # a frame of 64 MiB, begun
        c._flush()
        self.wait_log('reason="frame over max_frame"')  # logfmt: quoted, as it holds spaces
        # The answers wait in the sockets once every one is written out and
        # the close begun: isgd logs conn.closed just before its close_notify
        # and the shutdown of its half, and we have read nothing yet.
        self.wait_log("event=conn.closed peer=127.0.0.1:%d reason=server"
                      % c.sock.getsockname()[1])
        frames, notify = c.read_to_end(pb)
        got = self.by_id(frames)
        self.assertEqual(sorted(got), [0] + [f.request_id for f in pings],
                         "answered request ids\n%s" % self.gw.diagnostics())
        for f in pings:
            self.assertEqual(self.expect(got[f.request_id], "pong").nonce, f.ping.nonce)
        self.expect_error(got[0], pb.BAD_FRAME)
        self.assertTrue(notify, "closed without close_notify\n%s" % self.gw.diagnostics())
        self.assertServing()


class TestServerClose(ClosingCase):
    """
    A fetch that waits for messages and a subscription are answered with the
    reason when the gateway ends the connection, not left to find an EOF.
    """

    def waiting(self, name, rid, **body):
        """A connection whose fetch or subscription rid is known to wait: an
        ack sent behind it goes through the store after its look, and the
        ack's answer comes back after that look's, so once it is here the
        look found nothing and the request waits."""
        pb = self.pb
        c = self.client(name)
        c.send_frames([pb.Frame(request_id=rid, **body),
                       pb.Frame(request_id=rid + 100, ack=pb.Ack(gateway_ids=[2**62]))])
        acked = c.recv_frame(pb)
        self.assertEqual(acked.request_id, rid + 100, acked)
        self.assertEqual(self.expect(acked, "ack_result").acknowledged, 0)
        return c

    def test_waiting_fetch_and_subscription_told_their_partner_was_removed(self):
        pb = self.pb
        policy = self.policy()
        self.gw = self.gateway(policy)
        fetch = self.waiting("council", 7, fetch=pb.FetchRequest(max_messages=10, wait_ms=40000))
        sub = self.waiting("council", 8, subscribe=pb.Subscribe())
        nhs = self.waiting("nhs", 9, fetch=pb.FetchRequest(max_messages=10, wait_ms=40000))
        partners = [p for p in isgtest.default_partners() if p["id"] != "city-council"]
        isgtest.write_yaml(os.path.join(policy, "partners.yaml"), {"partners": partners})
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "loaded", text)
        for c, rid in ((fetch, 7), (sub, 8)):
            frames, notify = c.read_to_end(pb)
            got = self.by_id(frames)
            self.assertEqual(sorted(got), [0, rid], frames)
            self.expect_error(got[0], pb.NOT_PERMITTED, "partner.removed")
            e = self.expect_error(got[rid], pb.NOT_PERMITTED, "partner.removed")
            self.assertEqual(e.audit_index, 0)
            self.assertTrue(notify, self.gw.diagnostics())
        # another partner's long-poll goes on waiting, and is answered as ever
        police = self.connect("police")
        kept = self.accepted(police, "after-cut", [{"nhs_number": NHS_A}])
        nhs.close_notify()
        frames, notify = nhs.read_to_end(pb)
        self.assertEqual([(f.request_id, [d.gateway_id for d in f.fetch_result.deliveries])
                          for f in frames], [(9, [kept.gateway_id])])
        self.assertServing(pending=["after-cut"])

    def test_waiting_fetch_and_subscription_told_the_gateway_stops(self):
        pb = self.pb
        self.gw = self.gateway()
        fetch = self.waiting("nhs", 7, fetch=pb.FetchRequest(max_messages=10, wait_ms=40000))
        sub = self.waiting("nhs", 8, subscribe=pb.Subscribe())
        idle = self.client("police")  # nothing waits on it: closed as ever
        idle.send_frames([pb.Frame(request_id=9, ping=pb.Ping(nonce=3))])
        self.assertEqual(self.expect(idle.recv_frame(pb), "pong").nonce, 3)
        stopped = []
        # isgtest.Thread: a stop that fails (exit code, sanitizer report) fails here, as itself.
        t = isgtest.Thread(lambda: stopped.append(self.gw.stop()), name="stop")
        t.start()
        try:
            for c, rid in ((fetch, 7), (sub, 8)):
                frames, notify = c.read_to_end(pb)
                self.assertEqual([f.request_id for f in frames], [rid], frames)
                e = self.expect_error(frames[0], pb.UNAVAILABLE)
                self.assertEqual(e.rule, "")
                self.assertIn("shutting down", e.message)
                self.assertTrue(notify, self.gw.diagnostics())
            frames, notify = idle.read_to_end(pb)
            self.assertEqual(frames, [])
            self.assertTrue(notify)
        finally:
            t.join(isgtest.STOP_TIMEOUT + 5)
        self.assertEqual(len(stopped), 1, "isgd did not stop\n%s" % self.gw.diagnostics())
        self.assertEqual(self.gw.log.count("reason=shutdown"), 3, self.gw.diagnostics())


if __name__ == "__main__":
    unittest.main()
