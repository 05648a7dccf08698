"""
Scenario: isgd out of file descriptors. It raises its soft RLIMIT_NOFILE to
the hard limit at start; when accept still fails for want of descriptors it
rests the listener briefly instead of spinning on it, logs the failure at
most about once a second, and serves again once connections close.
"""

import socket
import time
import unittest

import isgtest


def soft_nofile(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open files limit for pid %d" % pid)


class DescriptorCase(isgtest.ScenarioCase):
    def limited_gateway(self, soft, hard, **overrides):
        gw = self.gateway(start=False, **overrides)
        plain = gw.argv
        gw.argv = lambda: ["prlimit", "--nofile=%d:%d" % (soft, hard)] + plain()
        gw.start()
        return gw

    @unittest.skipIf(isgtest.VALGRIND, "valgrind keeps descriptors of its own and shows isgd "
                     "a hard limit equal to the soft one")
    def test_soft_limit_raised_to_hard(self):
        gw = self.limited_gateway(256, 2048)
        self.assertEqual(soft_nofile(gw.proc.pid), 2048)
        self.assertIn("event=net.nofile_limit soft=2048 was=256", gw.log)

    @unittest.skipIf(isgtest.VALGRIND, "valgrind's own accept drops the connections that "
                     "do not fit, so the listener never runs out")
    def test_out_of_descriptors_does_not_spin(self):
        gw = self.limited_gateway(96, 96, limits={"idle_timeout": "300s",
                                                  "handshake_timeout": "60s"})
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for _ in range(120):  # more than fit; none of them does a handshake
            socks.append(socket.create_connection(("127.0.0.1", gw.port)))
        time.sleep(3.0 * isgtest.SLOW)
        failed = [l for l in gw.log.splitlines() if "event=net.accept_failed" in l]
        self.assertTrue(failed, gw.diagnostics())
        # About one line a second for each of the 2 workers, not one per epoll wake-up.
        self.assertLess(len(failed), 20, gw.diagnostics())
        self.assertIn("errno=24", failed[0])
        for s in socks:
            s.close()
        socks.clear()
        deadline = time.monotonic() + 10 * isgtest.SLOW
        while True:
            try:
                with isgtest.FrameConn(gw, self.pki.certs["police"], timeout=2) as c:
                    pb = c.pb
                    r = c.request(ping=pb.Ping(nonce=7))
                    self.assertEqual(r.WhichOneof("body"), "pong", r)
                    break
            except (OSError, EOFError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.assertAlive(gw)


if __name__ == "__main__":
    unittest.main()
