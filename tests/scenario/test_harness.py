"""
Self-tests of the scenario harness (isgtest.py) that need no ISG binary:
the generated PKI really has the properties the scenarios rely on, the
YAML writer emits what the config and policy loaders expect, and the
Python wire codec frames and parses as the protobuf "delimited" convention
says. A local Python TLS server stands in for isgd. Only GatewayPortTest
starts isgd (and is skipped without it).
"""

import os
import socket
import ssl
import subprocess
import threading
import unittest

import isgtest


def verify(pki, cert, crl=None):
    args = ["openssl", "verify", "-CAfile", pki.partner_ca.cert]
    if crl:
        args += ["-crl_check", "-CRLfile", crl]
    p = subprocess.run(args + [cert.cert], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


class PkiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = isgtest.make_tmpdir("isg-harness-")
        cls.pki = isgtest.Pki(os.path.join(cls.dir, "pki"))
        cls.pki.client("police", isgtest.POLICE_CN, san_uri="urn:isg:partner:met-police", san_dns="mps.example")

    @classmethod
    def tearDownClass(cls):
        isgtest.remove_tmpdir(cls.dir)

    def text(self, path):
        return subprocess.run(["openssl", "x509", "-in", path, "-noout", "-text"], capture_output=True,
                              text=True, check=True).stdout

    def test_keys_are_private_and_p256(self):
        for c in [self.pki.partner_ca, self.pki.server_ca, self.pki.gateway, self.pki.certs["police"]]:
            self.assertEqual(os.stat(c.key).st_mode & 0o777, 0o600, c.key)
            self.assertIn("prime256v1", self.text(c.cert), c.cert)

    def test_gateway_cert(self):
        t = self.text(self.pki.gateway.cert)
        self.assertIn("Subject: CN = gateway.isg.test", t)
        self.assertIn("DNS:localhost", t)
        self.assertIn("IP Address:127.0.0.1", t)
        self.assertIn("TLS Web Server Authentication", t)
        p = subprocess.run(["openssl", "verify", "-CAfile", self.pki.server_ca.cert, self.pki.gateway.cert],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        # the chain file holds the leaf, then the CA
        chain = isgtest.read_text(self.pki.gateway_chain)
        self.assertEqual(chain.count("BEGIN CERTIFICATE"), 2)
        self.assertTrue(chain.startswith(isgtest.read_text(self.pki.gateway.cert)))

    def test_client_cert_and_sans(self):
        c = self.pki.certs["police"]
        t = self.text(c.cert)
        self.assertIn("Subject: CN = " + isgtest.POLICE_CN, t)
        self.assertIn("URI:urn:isg:partner:met-police", t)
        self.assertIn("DNS:mps.example", t)
        self.assertIn("TLS Web Client Authentication", t)
        self.assertEqual(verify(self.pki, c)[0], 0)

    def test_bad_certificates(self):
        pki = self.pki
        rc, out = verify(pki, pki.expired_client("old", isgtest.POLICE_CN))
        self.assertNotEqual(rc, 0)
        self.assertIn("expired", out)
        rc, out = verify(pki, pki.not_yet_valid_client("future", isgtest.POLICE_CN))
        self.assertNotEqual(rc, 0)
        self.assertIn("not yet valid", out)
        rc, out = verify(pki, pki.untrusted_client("rogue", isgtest.POLICE_CN))
        self.assertNotEqual(rc, 0)
        self.assertIn("unable to get local issuer", out)

    def test_crl(self):
        pki = self.pki
        c = pki.client("revokee", "revokee.partners.isg.example")
        ok = pki.certs["police"]
        crl = pki.crl("before.crl")
        self.assertEqual(verify(pki, c, crl)[0], 0)
        pki.revoke("revokee")
        crl = pki.crl("after.crl")
        rc, out = verify(pki, c, crl)
        self.assertNotEqual(rc, 0)
        self.assertIn("revoked", out)
        self.assertEqual(verify(pki, ok, crl)[0], 0)


class YamlTest(unittest.TestCase):
    def test_scalars(self):
        s = isgtest.yaml_scalar
        self.assertEqual(s("met-police"), "met-police")
        self.assertEqual(s("2025-01-01"), "2025-01-01")
        self.assertEqual(s("127.0.0.1:7443"), "127.0.0.1:7443")
        self.assertEqual(s("/tmp/x y/isg.db"), "/tmp/x y/isg.db")
        self.assertEqual(s("30d"), "30d")
        self.assertEqual(s(1), "1")
        self.assertEqual(s(True), "true")
        for quoted in ["yes", "1", "1.5", "a: b", "# x", "", "x #y", "UK GDPR Art. 6(1)(e), x", "*a", "on"]:
            self.assertTrue(s(quoted).startswith('"'), quoted)

    def test_policy_document(self):
        doc = isgtest.yaml_dump({"partners": [
            {"id": "met-police", "name": "Metropolitan Police Service", "kind": "police",
             "certificate": {"subject_cn": "met-police.partners.isg.example"}}],
            "lawful_basis": ["UK GDPR Art. 6(1)(e)", "x"], "empty": [], "version": 1})
        self.assertEqual(doc, (
            "partners:\n"
            "  - id: met-police\n"
            "    name: Metropolitan Police Service\n"
            "    kind: police\n"
            "    certificate:\n"
            "      subject_cn: met-police.partners.isg.example\n"
            "lawful_basis: [UK GDPR Art. 6(1)(e), x]\n"
            "empty: []\n"
            "version: 1\n"))

    def test_nested_list_of_dicts(self):
        doc = isgtest.yaml_dump({"a": {"datasets": [{"name": "d", "fields": [{"name": "x", "required": True}]}]}})
        self.assertEqual(doc, (
            "a:\n"
            "  datasets:\n"
            "    - name: d\n"
            "      fields:\n"
            "        - name: x\n"
            "          required: true\n"))


class CodecTest(unittest.TestCase):
    def test_varint_matches_protobuf(self):
        from google.protobuf.internal import decoder, encoder
        for n in [0, 1, 127, 128, 300, 16383, 16384, 2**32 - 1, 2**63]:
            b = isgtest.varint_encode(n)
            self.assertEqual(b, encoder._VarintBytes(n))
            self.assertEqual(isgtest.varint_decode(b), (n, len(b)))
            if n < 2**32:
                self.assertEqual(decoder._DecodeVarint32(b, 0), (n, len(b)))
        self.assertIsNone(isgtest.varint_decode(b"\x80\x80"))
        with self.assertRaises(ValueError):
            isgtest.varint_decode(b"\xff" * 11)

    def test_record_roundtrip(self):
        pb = isgtest.isg_pb2()
        rec = isgtest.pb_record(pb, {"t": "Smith", "i": -42, "r": 0.5, "b": True})
        back = pb.Record()
        back.ParseFromString(rec.SerializeToString())
        d = isgtest.pb_record_dict(back)
        self.assertEqual(d, {"t": "Smith", "i": -42, "r": 0.5, "b": True})
        self.assertIs(type(d["i"]), int)
        self.assertIs(type(d["b"]), bool)


class FakeGateway:
    """Stands in for isgd: TLS 1.3, client certificate required; answers Hello with Welcome."""

    def __init__(self, pki):
        self.pki = pki
        self.port = 0
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(pki.gateway_chain, pki.gateway.key)
        ctx.load_verify_locations(pki.partner_ca.cert)
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx = ctx
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.errors = []
        # isgtest.Thread: what ends serve() other than close() (a frame that
        # does not decode, a bug here) close() raises, not a later test's timeout.
        self.thread = isgtest.Thread(self.serve, name="fake gateway")
        self.thread.start()

    def serve(self):
        pb = isgtest.isg_pb2()
        while True:
            try:
                raw, _ = self.lsock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as s:
                    cn = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
                    buf = b""
                    while isgtest.varint_decode(buf) is None or len(buf) < sum(isgtest.varint_decode(buf)):
                        buf += s.recv(4096)
                    n, pos = isgtest.varint_decode(buf)
                    req = pb.Frame()
                    req.ParseFromString(buf[pos:pos + n])
                    reply = pb.Frame(request_id=req.request_id)
                    reply.welcome.partner_id = cn
                    data = reply.SerializeToString()
                    # split the frame across writes, as TLS records may be
                    s.sendall(isgtest.varint_encode(len(data)))
                    s.sendall(data)
            except (OSError, ssl.SSLError) as e:
                self.errors.append(e)

    def close(self):
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        except OSError:
            pass
        self.lsock.close()
        self.thread.join(10)


class FrameConnTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = isgtest.shared_pki()
        cls.fake = FakeGateway(cls.pki)

    @classmethod
    def tearDownClass(cls):
        cls.fake.close()

    def test_hello_welcome(self):
        pb = isgtest.isg_pb2()
        for host in ["localhost", "127.0.0.1"]:
            with isgtest.FrameConn(self.fake, self.pki.certs["police"], server_hostname=host) as c:
                self.assertEqual(c.sock.version(), "TLSv1.3")
                reply = c.request(hello=pb.Hello(protocol_version=1, client_name="harness"))
                self.assertEqual(reply.WhichOneof("body"), "welcome")
                self.assertEqual(reply.welcome.partner_id, isgtest.POLICE_CN)

    def test_untrusted_client_refused(self):
        pki = self.pki
        if "rogue-h" not in pki.certs:
            pki.untrusted_client("rogue-h", isgtest.POLICE_CN)
        pb = isgtest.isg_pb2()
        with self.assertRaises((ssl.SSLError, EOFError, ConnectionError)):
            with isgtest.FrameConn(self.fake, pki.certs["rogue-h"]) as c:
                c.request(hello=pb.Hello(protocol_version=1))

    def test_wrong_server_name_refused(self):
        with self.assertRaises(ssl.SSLCertVerificationError):
            isgtest.FrameConn(self.fake, self.pki.certs["police"], server_hostname="other.example")


# Reports as ThreadSanitizer, AddressSanitizer and UBSan print them, between log lines.
TSAN_REPORT = """==================
WARNING: ThreadSanitizer: data race (pid=4242)
  Write of size 4 at 0x7b0400000010 by thread T1:
    #0 worker_main gateway/net/server.c:10 (isgd+0x1234)

SUMMARY: ThreadSanitizer: data race gateway/net/server.c:10 in worker_main
=================="""
ASAN_REPORT = """=================================================================
==4243==ERROR: AddressSanitizer: heap-use-after-free on address 0x602000000010
    #0 0x4005 in conn_event gateway/net/server.c:1056
SUMMARY: AddressSanitizer: heap-use-after-free gateway/net/server.c:1056 in conn_event"""
UBSAN_REPORT = "gateway/store/store.c:12:5: runtime error: signed integer overflow"
LOG_LINE = 'ts=2026-01-01T00:00:00.000Z level=info event=x reason="a: runtime error: b"'


class SanitizerReportTest(unittest.TestCase):
    def test_reports_found_up_to_their_summary(self):
        text = "\n".join([LOG_LINE, TSAN_REPORT, LOG_LINE, ASAN_REPORT, UBSAN_REPORT, LOG_LINE])
        reports = isgtest.sanitizer_reports(text)
        self.assertEqual(len(reports), 3, reports)
        self.assertTrue(reports[0].startswith("WARNING: ThreadSanitizer: data race"))
        self.assertTrue(reports[0].endswith("in worker_main"), reports[0])
        self.assertTrue(reports[1].startswith("==4243==ERROR: AddressSanitizer"))
        self.assertTrue(reports[1].endswith("in conn_event"), reports[1])
        self.assertTrue(reports[2].startswith(UBSAN_REPORT))

    def test_log_lines_are_no_report(self):
        self.assertEqual(isgtest.sanitizer_reports("\n".join([LOG_LINE] * 3)), [])

    def test_gateway_fails_once_on_a_report_in_its_log(self):
        d = isgtest.make_tmpdir("isg-harness-")
        self.addCleanup(isgtest.remove_tmpdir, d)
        gw = isgtest.Gateway.__new__(isgtest.Gateway)  # no isgd: only its log
        gw.log_path, gw.proc, gw._final_log, gw._sanitizer_seen = os.path.join(d, "log"), None, None, 0
        gw.check_sanitizers, gw.valgrind_log = True, os.path.join(d, "valgrind.log")
        with open(gw.log_path, "w") as f:
            f.write(LOG_LINE + "\n")
        gw.assert_no_sanitizer_report()
        with open(gw.log_path, "a") as f:
            f.write(TSAN_REPORT + "\n" + LOG_LINE + "\n")
        with self.assertRaises(isgtest.SanitizerReport) as cm:
            gw.assert_no_sanitizer_report()
        self.assertIn("WARNING: ThreadSanitizer: data race", str(cm.exception))
        self.assertIn("--- sanitizer report", gw.diagnostics())
        gw.assert_no_sanitizer_report()  # said once: a later stop need not say it again
        gw.close(strict=True)  # nothing running, nothing new


class ThreadTest(unittest.TestCase):
    """isgtest.Thread: what a test's worker raises is never lost."""

    def test_join_raises_what_the_target_raised(self):
        def boom():
            raise ValueError("from the thread")
        since = isgtest._thread_count()
        t = isgtest.Thread(boom)
        t.start()
        with self.assertRaisesRegex(ValueError, "from the thread"):
            t.join(10)
        t.join(10)  # raised once: a second join is quiet
        # Only this test's threads: another's unreported exception is its own to report.
        self.assertEqual(isgtest.unreported_thread_exceptions(since), [])

    def test_join_returns_what_ended_well(self):
        got = []
        t = isgtest.Thread(got.append, args=(1,))
        t.start()
        t.join(10)
        self.assertEqual(got, [1])

    def test_a_scenario_fails_on_a_thread_nobody_joined(self):
        since = isgtest._thread_count()
        case = isgtest.ScenarioCase()  # its check alone: no isgd
        case._check_threads(since)
        t = isgtest.Thread(lambda: 1 / 0, name="worker")
        t.start()
        threading.Thread.join(t, 10)  # the plain join: isgtest.Thread's would raise it
        with self.assertRaisesRegex(AssertionError, "(?s)1 test thread.*--- worker.*ZeroDivisionError"):
            case._check_threads(since)
        case._check_threads(since)  # said once


class GatewayPortTest(isgtest.ScenarioCase):
    """Gateway.start and a port taken since free_port chose it (needs isgd: skipped without)."""

    def take(self, port):
        s = socket.create_server(("127.0.0.1", port))
        self.addCleanup(s.close)
        return s

    def test_start_moves_from_a_taken_port(self):
        gw = self.gateway(start=False)
        first = gw.port
        self.take(first)
        gw.start()
        self.assertNotEqual(gw.port, first)
        self.assertEqual(gw.address, "127.0.0.1:%d" % gw.port)
        self.assertIn("# isgtest: port %d was taken: listen moved to %s" % (first, gw.address), gw.log)
        self.assertIn("event=isgd.started listen=%s " % gw.address, gw.log)
        # and between a stop and a start
        gw.stop()
        second = gw.port
        self.take(second)
        gw.start()
        self.assertNotIn(gw.port, (first, second))
        with isgtest.FrameConn(gw, self.pki.certs["police"]) as c:
            pb = isgtest.isg_pb2()
            self.assertEqual(c.request(ping=pb.Ping(nonce=5)).pong.nonce, 5)

    def test_a_listen_the_test_chose_is_kept(self):
        port = isgtest.free_port()
        self.take(port)
        gw = self.gateway(start=False, listen="127.0.0.1:%d" % port)
        with self.assertRaisesRegex(AssertionError, "exited with 1 during start-up"):
            gw.start()
        self.assertEqual(gw.address, "127.0.0.1:%d" % port)
        self.assertEqual(gw.starts, 1)


if __name__ == "__main__":
    unittest.main()
