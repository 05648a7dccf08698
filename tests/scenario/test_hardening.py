"""
Scenario: the bad-input catalogue of issue 7 (DESIGN.md sections 9 and 10)
against the real isgd, speaking raw frames with the Python protobuf runtime.

Each case asserts the exact error the peer sees (code and rule where there
is one), that isgd keeps serving another partner afterwards (a normal send
and fetch still work), that nothing it had accepted is lost, and that the
isgd log holds none of the record values sent.

Covered elsewhere and not repeated here: certificates (expired, not yet
valid, revoked, untrusted CA, unknown partner: test_exchange.py), oversized
length prefix and a frame that does not decode (test_python_client.py),
acking another partner's message (test_python_client.py), invalid
identifiers (test_exchange.py, test_pseudonyms.py), daily limits
(test_limits.py).
"""

import collections
import datetime
import itertools
import json
import os
import re
import select
import signal
import socket
import ssl
import threading
import time
import unittest

import isgtest
from isgtest import AGREEMENT_ID, DATASET, pb_record, pb_record_dict, varint_encode

NHS_A = "9434765919"
NHS_B = "6281948211"
# Distinctive values: a search of the log cannot hit them by chance.
NAME_A = "quorvandelique"
NAME_B = "zimbratholowe"
SUMMARY = "Seen at Vextrobble Mews by Ulphrenna"
_SERIAL = itertools.count(1)


def tag(num, wire_type):
    return varint_encode((num << 3) | wire_type)


def ld(num, data):
    """A length-delimited protobuf field."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return tag(num, 2) + varint_encode(len(data)) + data


def vi(num, value):
    """A varint protobuf field."""
    return tag(num, 0) + varint_encode(value)


def delimited(body):
    return varint_encode(len(body)) + body


class HardeningCase(isgtest.ScenarioCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pb = isgtest.isg_pb2()

    def setUp(self):
        super().setUp()
        self.gw = None
        # after the gateway has stopped (cleanups run last in, first out)
        self.addCleanup(self._final_log_check)

    def _final_log_check(self):
        for gw in self._gateways:
            self.assertLogClean(gw)

    # -- helpers

    def connect(self, name, gw=None, **kw):
        c = isgtest.FrameConn(gw or self.gw, self.pki.certs[name], **kw)
        self.addCleanup(c.close)
        return c

    def expect(self, reply, body):
        kind = reply.WhichOneof("body")
        if kind != body:
            self.fail("expected %s, got %s:\n%s\n%s" % (body, kind, reply, self.gw.diagnostics()))
        return getattr(reply, body)

    def expect_error(self, reply, code, rule=None):
        e = self.expect(reply, "error")
        self.assertEqual(self.pb.ErrorCode.Name(e.code), self.pb.ErrorCode.Name(code), e)
        if rule is not None:
            self.assertEqual(e.rule, rule, e)
        self.assertTrue(e.message, e)
        return e

    def audit_jsonl(self, *args):
        r = isgtest.ctl("audit", "list", "--config", self.gw.config_path, "--format", "jsonl",
                        *args)
        self.assertEqual(r.rc, 0, r)
        return [json.loads(line) for line in r.out.splitlines()]

    def send_request(self, message_id, records, recipient="nhs-trust"):
        req = self.pb.SendRequest(message_id=message_id, recipient=recipient, agreement_id=AGREEMENT_ID,
                                  dataset=DATASET)
        req.records.extend(pb_record(self.pb, r) for r in records)
        return req

    def accepted(self, conn, message_id, records):
        reply = conn.request(send=self.send_request(message_id, records))
        return self.expect(reply, "send_result").receipt

    def wait_peers_logged(self, ports, event, gw=None, timeout=10.0):
        """isgd logged event for the connection from each of ports on 127.0.0.1."""
        gw = gw or self.gw
        deadline = time.monotonic() + timeout * isgtest.SLOW
        while True:
            log = gw.log
            missing = [p for p in ports if "event=%s peer=127.0.0.1:%d " % (event, p) not in log]
            if not missing:
                return
            if time.monotonic() > deadline:
                self.fail("no %s for the connections from ports %s within %.0fs\n%s"
                          % (event, missing, timeout * isgtest.SLOW, gw.diagnostics()))
            time.sleep(0.05)

    def assertClosed(self, conn, timeout=5.0, what="connection"):
        """The gateway closes conn: EOF (or a reset / TLS error) within timeout; no frame first."""
        conn.sock.settimeout(timeout * isgtest.SLOW)
        t0 = time.monotonic()
        try:
            while True:
                data = conn.sock.recv(65536)
                if not data:
                    break
                conn.buf += data
                if isgtest.varint_decode(conn.buf) is not None:
                    n, pos = isgtest.varint_decode(conn.buf)
                    if len(conn.buf) - pos >= n:
                        f = self.pb.Frame()
                        f.ParseFromString(conn.buf[pos:pos + n])
                        self.fail("%s: unexpected frame before the close:\n%s" % (what, f))
        except (ConnectionError, ssl.SSLError):
            pass
        except socket.timeout:
            self.fail("%s: not closed within %.1fs\n%s" % (what, timeout, self.gw.diagnostics()))
        return time.monotonic() - t0

    def assertServing(self, gw=None, pending=()):
        """
        isgd is alive and serves: police sends a fresh message that nhs
        fetches together with the message ids in `pending` (accepted earlier
        and not lost), then acks them all.
        """
        gw = gw or self.gw
        self.assertAlive(gw)
        mid = "serving-%d" % next(_SERIAL)
        police = self.connect("police", gw)
        self.accepted(police, mid, [{"nhs_number": NHS_B, "family_name": NAME_B}])
        nhs = self.connect("nhs", gw)
        fetched = self.expect(nhs.request(fetch=self.pb.FetchRequest(max_messages=100)), "fetch_result")
        got = [d.message_id for d in fetched.deliveries]
        self.assertEqual(sorted(got), sorted(list(pending) + [mid]), "deliveries after the bad input")
        for d in fetched.deliveries:
            if d.message_id == mid:
                self.assertEqual([pb_record_dict(r) for r in d.records],
                                 [{"nhs_number": NHS_B, "family_name": NAME_B}])
        ack = self.expect(nhs.request(ack=self.pb.Ack(gateway_ids=[d.gateway_id for d in fetched.deliveries])),
                          "ack_result")
        self.assertEqual(ack.acknowledged, len(fetched.deliveries))
        police.close()
        nhs.close()

    def assertLogClean(self, gw=None, values=(NHS_A, NHS_B, NAME_A, NAME_B, SUMMARY)):
        gw = gw or self.gw
        log = gw.log
        for v in values:
            for line in log.splitlines():
                if v in line:
                    self.fail("the isgd log holds a record value %r:\n%s" % (v, line))


class TestBadFrames(HardeningCase):
    def setUp(self):
        super().setUp()
        self.gw = self.gateway()

    def assertStringsRefused(self, conn, cases, first_id, client_name):
        """Each SendRequest body of cases (None: a Hello with client_name) gets
        BAD_FRAME with its own request_id, and the connection carries on."""
        for n, (what, send) in enumerate(cases.items()):
            with self.subTest(string=what):
                if send is None:
                    raw = vi(1, first_id + n) + ld(10, vi(1, 1) + ld(2, client_name))
                else:
                    raw = vi(1, first_id + n) + ld(12, send)
                conn.send_raw(delimited(raw))
                reply = conn.recv_frame(timeout=5 * isgtest.SLOW)
                self.assertEqual(reply.request_id, first_id + n)
                self.expect_error(reply, self.pb.BAD_FRAME)

    def test_truncated_frame_then_close(self):
        police = self.connect("police")
        kept = self.accepted(police, "trunc-kept", [{"nhs_number": NHS_A, "family_name": NAME_A}])
        police.close()
        # half a SendRequest frame (length says more), then the client goes away
        body = self.pb.Frame(request_id=7, send=self.send_request(
            "trunc-lost", [{"nhs_number": NHS_A, "concern_summary": SUMMARY}])).SerializeToString()
        ports = []
        c = self.connect("police")
        c.send_raw(varint_encode(len(body)) + body[:len(body) // 2])
        ports.append(c.sock.getsockname()[1])
        c.close()
        # a varint cut in the middle, then close
        c = self.connect("police")
        c.send_raw(b"\x80")
        ports.append(c.sock.getsockname()[1])
        c.close()
        # a truncated frame then a TCP reset without TLS close_notify
        c = self.connect("police")
        c.send_raw(varint_encode(len(body)) + body[:5])
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        ports.append(c.sock.getsockname()[1])
        c.sock.close()
        # None of them sent a close_notify. isgd is done with each once it
        # has logged its dirty close: what it logs about them is all there
        # for assertLogClean, however late a slow isgd gets to them.
        self.wait_peers_logged(ports, "conn.dirty_close")
        self.assertServing(pending=["trunc-kept"])
        self.assertGreater(kept.gateway_id, 0)
        self.assertLogClean()

    def test_half_closed_connection(self):
        """TCP FIN from the client without a TLS close_notify: the gateway closes at once, not after idle_timeout."""
        pb = self.pb
        police = self.connect("police")
        self.accepted(police, "halfopen-kept", [{"nhs_number": NHS_A}])
        c = self.connect("police")
        self.assertEqual(self.expect(c.request(ping=pb.Ping(nonce=1)), "pong").nonce, 1)
        raw = socket.socket(fileno=c.sock.fileno())
        self.addCleanup(raw.detach)
        raw.shutdown(socket.SHUT_WR)
        raw.settimeout(3 * isgtest.SLOW)
        try:
            while raw.recv(4096):
                pass  # the gateway's close_notify
        except ConnectionError:
            pass
        except socket.timeout:
            self.fail("a half-closed connection is still open after 3s\n" + self.gw.diagnostics())
        self.assertServing(pending=["halfopen-kept"])

    def test_varint_prefix_of_11_bytes(self):
        police = self.connect("police")
        self.accepted(police, "varint-kept", [{"nhs_number": NHS_A}])
        for prefix in [b"\xff" * 11, b"\x80" * 10 + b"\x01"]:
            c = self.connect("police")
            c.send_raw(prefix)
            reply = c.recv_frame(timeout=5 * isgtest.SLOW)
            e = self.expect_error(reply, self.pb.BAD_FRAME)
            self.assertEqual(reply.request_id, 0)
            self.assertEqual(e.record_index if e.record_index else -1, -1)
            self.assertClosed(c, what="after an 11-byte varint")
        self.assertServing(pending=["varint-kept"])
        self.assertLogClean()

    def test_unknown_request_types(self):
        pb = self.pb
        c = self.connect("police")
        # body field numbers the protocol does not define (length-delimited and varint)
        for n, raw in enumerate([vi(1, 11) + ld(99, b""), vi(1, 12) + ld(23, vi(1, 5)), vi(1, 13) + vi(30, 1)]):
            c.send_raw(delimited(raw))
            reply = c.recv_frame(timeout=5 * isgtest.SLOW)
            self.assertEqual(reply.request_id, 11 + n, reply)
            e = self.expect_error(reply, pb.UNSUPPORTED)
            # says why, not "'none' is not a request": a newer client's request looks like no body
            self.assertIn("no request this gateway knows", e.message)
        # the connection carries on
        self.assertEqual(self.expect(c.request(ping=pb.Ping(nonce=5)), "pong").nonce, 5)
        self.assertServing()

    def test_no_body(self):
        c = self.connect("police")
        reply = c.request()  # a Frame with a request_id and no body
        self.assertEqual(reply.request_id, 1)
        e = self.expect_error(reply, self.pb.UNSUPPORTED)
        self.assertIn("no request this gateway knows", e.message)
        c.send_raw(b"\x00")  # a frame of length 0: no request_id, no body
        reply = c.recv_frame(timeout=5 * isgtest.SLOW)
        self.assertEqual(reply.request_id, 0)
        self.expect_error(reply, self.pb.UNSUPPORTED)
        self.assertEqual(self.expect(c.request(ping=self.pb.Ping(nonce=6)), "pong").nonce, 6)

    def test_response_types_sent_as_requests(self):
        pb = self.pb
        c = self.connect("police")
        bodies = {
            "welcome": pb.Welcome(protocol_version=1, partner_id="nhs-trust"),
            "send_result": pb.SendResult(receipt=pb.Receipt(message_id="x", gateway_id=1)),
            "fetch_result": pb.FetchResult(),
            "delivery": pb.Delivery(gateway_id=1, message_id="x", sender="nhs-trust"),
            "ack_result": pb.AckResult(acknowledged=1),
            "pong": pb.Pong(nonce=1),
            "error": pb.Error(code=pb.INTERNAL, message="x"),
        }
        for name, body in bodies.items():
            with self.subTest(body=name):
                reply = c.request(**{name: body})
                self.expect_error(reply, pb.UNSUPPORTED)
        self.assertEqual(self.expect(c.request(ping=pb.Ping(nonce=7)), "pong").nonce, 7)
        self.assertServing()

    def test_invalid_utf8(self):
        pb = self.pb
        police = self.connect("police")
        self.accepted(police, "utf8-kept", [{"nhs_number": NHS_A}])
        bad = b"\xc3\x28 \xff\xfe"
        records = ld(5, ld(1, ld(1, "nhs_number") + ld(2, ld(1, NHS_A))))
        cases = {
            "message_id": ld(1, bad) + ld(2, "nhs-trust") + ld(3, AGREEMENT_ID) + ld(4, DATASET) + records,
            "field name": ld(1, "utf8-2") + ld(2, "nhs-trust") + ld(3, AGREEMENT_ID) + ld(4, DATASET)
            + ld(5, ld(1, ld(1, b"nhs_\xffnumber") + ld(2, ld(1, NHS_A)))),
            "text value": ld(1, "utf8-3") + ld(2, "nhs-trust") + ld(3, AGREEMENT_ID) + ld(4, DATASET)
            + ld(5, ld(1, ld(1, "family_name") + ld(2, ld(1, b"ab\xed\xa0\x80cd")))  # a UTF-16 surrogate
                   + ld(1, ld(1, "nhs_number") + ld(2, ld(1, NHS_A)))),
            "hello client_name": None,
        }
        self.assertStringsRefused(police, cases, 40, b"py\x80")
        # the connection carries on and nothing was stored
        self.assertEqual(self.expect(police.request(ping=pb.Ping(nonce=8)), "pong").nonce, 8)
        self.assertServing(pending=["utf8-kept"])
        self.assertLogClean()

    def test_nul_in_strings(self):
        """
        A NUL character (valid UTF-8) would cut a string short once decoded:
        an NHS number with more after a NUL would pass as valid, a field
        name with more after it as a field the dataset declares, and the
        rest of a text be lost after a receipt. Refused as BAD_FRAME
        instead, in the decoder by hand and in protobuf-c's path alike.
        """
        pb = self.pb
        police = self.connect("police")
        self.accepted(police, "nul-kept", [{"nhs_number": NHS_A}])
        head = ld(2, "nhs-trust") + ld(3, AGREEMENT_ID) + ld(4, DATASET)
        nhs = ld(1, ld(1, "nhs_number") + ld(2, ld(1, NHS_A)))
        cases = {
            "identifier": ld(1, "nul-1") + head + ld(5, ld(1, ld(1, "nhs_number")
                                                          + ld(2, ld(1, NHS_A + "\x00" + NAME_A)))),
            "field name": ld(1, "nul-2") + head + ld(5, nhs + ld(1, ld(1, "concern_summary\x00x")
                                                                 + ld(2, ld(1, "y")))),
            "text value": ld(1, "nul-3") + head + ld(5, nhs + ld(1, ld(1, "concern_summary")
                                                                 + ld(2, ld(1, "seen\x00" + SUMMARY)))),
            "message_id": ld(1, "nul-4\x00b") + head + ld(5, nhs),
            # a field protobuf-c's packing does not write: the frame goes to protobuf-c
            "after an unknown field": ld(1, "nul-5") + head + ld(5, nhs) + ld(99, b"z")
            + ld(5, ld(1, ld(1, "nhs_number") + ld(2, ld(1, NHS_B + "\x00"))))
            + ld(5, ld(1, ld(1, "family_name\x00") + ld(2, ld(1, NAME_B)))),
            "hello client_name": None,
        }
        self.assertStringsRefused(police, cases, 70, b"py\x00")
        # the connection carries on and nothing was stored
        self.assertEqual(self.expect(police.request(ping=pb.Ping(nonce=8)), "pong").nonce, 8)
        self.assertServing(pending=["nul-kept"])
        self.assertLogClean()

    def test_a_send_given_twice_is_refused(self):
        """Protobuf merges a message field given twice: a Send in two pieces
        (its ids in one, its records in the other) is one Send to a partner's
        runtime. protobuf-c kept only the second piece, so isgd would have
        judged other values than the partner sent; the frame is refused."""
        pb = self.pb
        c = self.connect("police")
        first = pb.Frame(request_id=41, send=self.send_request("twice-1", []))
        second = pb.Frame(send=pb.SendRequest(records=[pb_record(pb, {"nhs_number": NHS_A})]))
        body = first.SerializeToString() + second.SerializeToString()
        merged = pb.Frame()
        merged.ParseFromString(body)  # what the partner's runtime reads: one whole Send
        self.assertEqual((merged.send.message_id, len(merged.send.records)), ("twice-1", 1))
        c.send_raw(delimited(body))
        self.expect_error(c.recv_frame(timeout=5 * isgtest.SLOW), pb.BAD_FRAME)
        self.assertEqual(self.expect(c.request(ping=pb.Ping(nonce=4)), "pong").nonce, 4)
        self.assertServing()

    def test_bad_frames_logged_once_per_connection(self):
        """
        Every bad frame is answered, but a partner sending thousands of them
        (3 bytes each) gets one conn.bad_frame line, and one conn.bad_frames
        line with the count when the connection ends: not a line each.
        """
        pb = self.pb
        c = self.connect("police")
        n = 500
        c.send_raw(delimited(vi(1, 9) + b"\xff") * n)  # a field of wire type 7: undecodable
        for _ in range(n):
            self.expect_error(c.recv_frame(timeout=5 * isgtest.SLOW), pb.BAD_FRAME)
        self.assertEqual(self.expect(c.request(ping=pb.Ping(nonce=3)), "pong").nonce, 3)
        self.assertEqual(self.gw.log.count("event=conn.bad_frame "), 1, self.gw.log)
        self.assertRegex(self.gw.log, r'event=conn\.bad_frame peer=\S+ reason="undecodable frame"\n')
        c.close()
        deadline = time.monotonic() + 10 * isgtest.SLOW
        while "event=conn.bad_frames " not in self.gw.log and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = [l for l in self.gw.log.splitlines() if "event=conn.bad_frames " in l]
        self.assertEqual(len(lines), 1, self.gw.diagnostics())
        self.assertIn(" count=%d" % n, lines[0])
        self.assertEqual(self.gw.log.count("event=conn.bad_frame "), 1)
        self.assertServing()

    def test_wrong_wire_types(self):
        """A field encoded with another wire type than the schema's: the frame does not decode."""
        pb = self.pb
        c = self.connect("police")
        cases = [
            ld(1, b"\x05") + ld(20, vi(1, 1)),  # request_id as bytes
            vi(1, 50) + vi(20, 1),  # ping (a message) as a varint
            vi(1, 51) + ld(12, vi(1, 3)),  # message_id (a string) as a varint
            vi(1, 52) + ld(12, ld(1, "ww-1") + vi(5, 1)),  # records as a varint
            vi(1, 53) + ld(20, tag(1, 5) + b"\x01\x02\x03\x04"),  # nonce as fixed32
            vi(1, 54) + ld(20, tag(1, 3)),  # a group start (deprecated wire type)
        ]
        for i, raw in enumerate(cases):
            with self.subTest(case=i):
                c.send_raw(delimited(raw))
                reply = c.recv_frame(timeout=5 * isgtest.SLOW)
                self.expect_error(reply, pb.BAD_FRAME)
        self.assertEqual(self.expect(c.request(ping=pb.Ping(nonce=9)), "pong").nonce, 9)
        self.assertServing()

    def test_unknown_protobuf_fields_are_ignored(self):
        """proto3: unknown field numbers inside a known message are skipped."""
        c = self.connect("police")
        c.send_raw(delimited(vi(1, 60) + ld(20, vi(1, 77) + ld(9, b"extra") + vi(10, 1))))
        reply = c.recv_frame(timeout=5 * isgtest.SLOW)
        self.assertEqual(reply.request_id, 60)
        self.assertEqual(self.expect(reply, "pong").nonce, 77)
        self.assertServing()

    def test_wrong_value_types(self):
        pb = self.pb
        police = self.connect("police")
        self.accepted(police, "types-kept", [{"nhs_number": NHS_A}])
        cases = [
            ("age", True), ("age", 1.5), ("age", "forty"), ("risk_score", "high"), ("risk_score", False),
            ("urgent", 1.5), ("urgent", "perhaps"), ("concern_date", 20260314), ("concern_date", True),
        ]
        for i, (field, value) in enumerate(cases):
            with self.subTest(field=field, value=value):
                req = self.send_request("types-%d" % i, [{"nhs_number": NHS_A}, {"nhs_number": NHS_B, field: value}])
                e = self.expect_error(police.request(send=req), pb.BAD_VALUE)
                self.assertEqual((e.rule, e.record_index, e.field), ("dataset.field_type", 1, field))
                self.assertNotIn(str(value), e.message)
        # a value with no kind set counts as absent: a required field without one is missing
        req = self.send_request("types-empty", [])
        rec = req.records.add()
        rec.fields.add(name="nhs_number")
        e = self.expect_error(police.request(send=req), pb.MISSING_FIELD, "dataset.required_field")
        self.assertEqual((e.record_index, e.field), (0, "nhs_number"))
        # the same field twice
        req = self.send_request("types-dup", [{"nhs_number": NHS_A, "age": 3}])
        f = req.records[0].fields.add(name="age")
        f.value.integer = 4
        e = self.expect_error(police.request(send=req), pb.BAD_VALUE, "dataset.duplicate_field")
        self.assertEqual((e.record_index, e.field), (0, "age"))
        self.assertServing(pending=["types-kept"])
        self.assertLogClean(values=(NHS_A, NHS_B, "forty", "perhaps", "20260314"))

    def test_bad_message_ids(self):
        pb = self.pb
        police = self.connect("police")
        for mid in ["", "x" * 129, "\u00e9" * 65]:
            with self.subTest(length=len(mid)):
                e = self.expect_error(police.request(send=self.send_request(mid, [{"nhs_number": NHS_A}])),
                                      pb.BAD_REQUEST, "request.message_id")
                self.assertEqual(e.record_index, -1)
                self.assertIn("1 to 128 bytes of UTF-8", e.message)  # what is counted
        self.accepted(police, "x" * 128, [{"nhs_number": NHS_A}])
        self.accepted(police, "\u00e9" * 64, [{"nhs_number": NHS_A}])
        self.assertServing(pending=["x" * 128, "\u00e9" * 64])

    def test_huge_repeated_field(self):
        pb = self.pb
        police = self.connect("police")
        self.accepted(police, "huge-kept", [{"nhs_number": NHS_A}])
        one = ld(5, pb_record(pb, {"nhs_number": NHS_A}).SerializeToString())
        head = ld(1, "huge-1") + ld(2, "nhs-trust") + ld(3, AGREEMENT_ID) + ld(4, DATASET)
        for what, rec, count in [("tiny records", one, 100_000), ("empty records", ld(5, b""), 200_000)]:
            with self.subTest(what=what):
                body = vi(1, 70) + ld(12, head + rec * count)
                self.assertLess(len(body), 4 << 20)
                police.send_raw(delimited(body))
                reply = police.recv_frame(timeout=10 * isgtest.SLOW)
                self.assertEqual(reply.request_id, 70)
                self.expect_error(reply, pb.LIMIT_EXCEEDED, "gateway.max_records_per_message")
        # many fields in one record, within max_frame
        rec = ld(5, ld(1, ld(1, "nhs_number") + ld(2, ld(1, NHS_A))) * 100_000)
        police.send_raw(delimited(vi(1, 71) + ld(12, ld(1, "huge-2") + ld(2, "nhs-trust") + ld(3, AGREEMENT_ID)
                                                  + ld(4, DATASET) + rec)))
        reply = police.recv_frame(timeout=10 * isgtest.SLOW)
        self.assertEqual(reply.request_id, 71)
        e = self.expect_error(reply, pb.BAD_VALUE, "dataset.duplicate_field")
        self.assertEqual(e.record_index, 0)
        # many ack ids in one frame: over 10000 is a bad request, up to it all unknown, nothing changes
        e = self.expect_error(police.request(ack=pb.Ack(gateway_ids=range(10_000_000, 10_100_000))),
                              pb.BAD_REQUEST)
        self.assertEqual(e.record_index, -1)
        ids = list(range(10_000_000, 10_010_000))
        ack = self.expect(police.request(ack=pb.Ack(gateway_ids=ids)), "ack_result")
        self.assertEqual(ack.acknowledged, 0)
        self.assertEqual(sorted(ack.unknown_ids), ids)
        self.assertServing(pending=["huge-kept"])
        self.assertLogClean()

    def test_agreement_max_records(self):
        agreement = isgtest.default_agreement(limits={"max_records_per_message": 3})
        self.gw.close()
        self.gw = self.gateway(self.policy("p2", agreements=[agreement]), name="gw2")
        pb = self.pb
        police = self.connect("police")
        req = self.send_request("amr-1", [{"nhs_number": NHS_A}] * 4)
        e = self.expect_error(police.request(send=req), pb.LIMIT_EXCEEDED, "agreement.max_records")
        self.assertIn("3", e.message)
        self.accepted(police, "amr-2", [{"nhs_number": NHS_A}] * 3)
        self.assertServing(pending=["amr-2"])
        self.assertLogClean()

    def test_replayed_message_id_with_other_content(self):
        pb = self.pb
        police = self.connect("police")
        first = self.accepted(police, "replay-1", [{"nhs_number": NHS_A, "family_name": NAME_A}])
        for records in ([{"nhs_number": NHS_A, "family_name": NAME_B}], [{"nhs_number": NHS_A}],
                        [{"nhs_number": NHS_A, "family_name": NAME_A}] * 2):
            e = self.expect_error(police.request(send=self.send_request("replay-1", records)), pb.CONFLICT,
                                  "message.id")
            self.assertEqual(e.record_index, -1)
        # another recipient under the same id is different content too
        req = self.send_request("replay-1", [{"nhs_number": NHS_A, "family_name": NAME_A}], recipient="city-council")
        # (the policy check comes first: city-council is no recipient of the agreement)
        self.expect_error(police.request(send=req), pb.NOT_PERMITTED, "agreement.recipient")
        # the same content is a duplicate with the first receipt
        again = self.accepted(police, "replay-1", [{"nhs_number": NHS_A, "family_name": NAME_A}])
        self.assertTrue(again.duplicate)
        self.assertEqual(again.gateway_id, first.gateway_id)
        # the other partner's same message_id is its own
        nhs = self.connect("nhs")
        fetched = self.expect(nhs.request(fetch=pb.FetchRequest()), "fetch_result")
        self.assertEqual([d.message_id for d in fetched.deliveries], ["replay-1"])
        self.assertEqual([pb_record_dict(r) for r in fetched.deliveries[0].records],
                         [{"nhs_number": NHS_A, "family_name": NAME_A}])
        nhs.close()
        self.assertServing(pending=["replay-1"])
        self.assertLogClean()

    def test_other_partners_mailbox_and_acks(self):
        """No request names a mailbox: a partner only ever sees and acks its own."""
        pb = self.pb
        police = self.connect("police")
        r = self.accepted(police, "mbox-1", [{"nhs_number": NHS_A}])
        council = self.connect("council")
        fetched = self.expect(council.request(fetch=pb.FetchRequest(max_messages=100)), "fetch_result")
        self.assertEqual(len(fetched.deliveries), 0)
        ack = self.expect(council.request(ack=pb.Ack(gateway_ids=[r.gateway_id, 0, (1 << 64) - 1])), "ack_result")
        self.assertEqual(ack.acknowledged, 0)
        self.assertEqual(sorted(ack.unknown_ids), sorted([r.gateway_id, 0, (1 << 64) - 1]))
        self.assertServing(pending=["mbox-1"])


class TestSlowClients(HardeningCase):
    def setUp(self):
        super().setUp()
        # handshake_timeout is longer than isgd's quiet sweep (once a second):
        # a cut a second early is then seen early, not at the same tick.
        self.gw = self.gateway(limits={"handshake_timeout": "2s", "idle_timeout": "2s"})

    def raw_socket(self):
        s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=5 * isgtest.SLOW)
        self.addCleanup(s.close)
        return s

    def assertRawClosed(self, s, t0, timeout, lo, hi, what):
        """isgd closes s between lo and hi seconds after t0, taken before s connected."""
        s.settimeout(max(0.1, timeout - (time.monotonic() - t0)))
        try:
            while s.recv(4096):
                pass
        except ConnectionError:
            pass
        except socket.timeout:
            self.fail("%s: not closed within %.1fs\n%s" % (what, timeout, self.gw.diagnostics()))
        took = time.monotonic() - t0
        self.assertGreater(took, lo, "%s: closed too early" % what)
        if not isgtest.VALGRIND:
            self.assertLess(took, hi, "%s: closed too late" % what)

    def test_tcp_without_tls_closed_after_handshake_timeout(self):
        police = self.connect("police")
        self.accepted(police, "slow-kept", [{"nhs_number": NHS_A}])
        # Timed from before either connects: isgd's handshake_timeout starts
        # when it accepts them, later however slow this process is, and its
        # clock (CLOCK_MONOTONIC, in ms) is time.monotonic's.
        t0 = time.monotonic()
        silent = self.raw_socket()
        partial = self.raw_socket()
        partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
        # handshake_timeout 2s; the slack is for isgd's millisecond clock
        self.assertRawClosed(silent, t0, 6 * isgtest.SLOW, 2.0 - 0.01, 4.0,
                             "a TCP connection that never starts TLS")
        self.assertRawClosed(partial, t0, 6 * isgtest.SLOW, 2.0 - 0.01, 4.0, "half a ClientHello")
        self.assertEqual(self.gw.log.count("event=conn.handshake_timeout"), 2, self.gw.diagnostics())
        self.assertServing(pending=["slow-kept"])

    def test_half_frame_closed_after_idle_timeout(self):
        pb = self.pb
        c = self.connect("police")
        self.assertEqual(self.expect(c.request(ping=pb.Ping(nonce=1)), "pong").nonce, 1)
        body = pb.Frame(request_id=2, send=self.send_request(
            "half-1", [{"nhs_number": NHS_A, "concern_summary": SUMMARY}])).SerializeToString()
        # Timed from before the half frame is sent: isgd's idle_timeout (2s)
        # starts when it reads it, later however slow this process is, and
        # its clock (CLOCK_MONOTONIC, in ms) is time.monotonic's.
        t0 = time.monotonic()
        c.send_raw(varint_encode(len(body)) + body[:len(body) // 2])
        self.assertClosed(c, timeout=6, what="half a frame then silence")
        took = time.monotonic() - t0
        self.assertGreater(took, 2.0 - 0.01, "cut before idle_timeout")
        if not isgtest.VALGRIND:
            self.assertLess(took, 4.5, "cut late")
        self.assertServing()  # half-1 was not stored
        self.assertIn("event=conn.idle_timeout", self.gw.log)
        self.assertLogClean()

    def test_idle_connection_closed_busy_one_kept(self):
        pb = self.pb
        idle = self.connect("police")
        busy = self.connect("nhs")
        t0 = time.monotonic()  # before isgd last hears from idle
        self.assertEqual(self.expect(idle.request(ping=pb.Ping(nonce=1)), "pong").nonce, 1)
        # The busy connection pings every 0.5s for 3s, more than idle_timeout
        # overall, and on until the idle one is seen closed: isgd looks for
        # idle connections once a second, and a slow machine may be later
        # still, so the close is waited for, not expected by a fixed time.
        closed = None
        while time.monotonic() - t0 < 3.0 or closed is None:
            if time.monotonic() - t0 > 10 * isgtest.SLOW:
                self.fail("the idle connection is open after %.0fs with idle_timeout 2s\n%s"
                          % (10 * isgtest.SLOW, self.gw.diagnostics()))
            self.assertEqual(self.expect(busy.request(ping=pb.Ping(nonce=2)), "pong").nonce, 2)
            if closed is not None or not select.select([idle.sock], [], [], 0.5)[0]:
                time.sleep(0.5 if closed is not None else 0)
                continue
            closed = time.monotonic() - t0
            try:
                data = idle.sock.recv(1)
            except (ConnectionError, ssl.SSLError):
                data = b""
            self.assertEqual(data, b"", "data on the idle connection")
        self.assertGreater(closed, 2.0 - 0.01, "the idle connection closed before idle_timeout")
        if not isgtest.VALGRIND:
            self.assertLess(closed, 3.5, "the idle connection closed late")
        self.assertEqual(self.expect(busy.request(ping=pb.Ping(nonce=3)), "pong").nonce, 3)
        self.assertEqual(self.gw.log.count("event=conn.idle_timeout"), 1, self.gw.diagnostics())
        self.assertServing()

    def test_long_poll_fetch_is_not_idle(self):
        """A fetch waiting past idle_timeout (within max_wait) is traffic in flight, not idleness."""
        pb = self.pb
        nhs = self.connect("nhs")
        t0 = time.monotonic()
        res = self.expect(nhs.request(fetch=pb.FetchRequest(wait_ms=2500)), "fetch_result")
        self.assertEqual(len(res.deliveries), 0)
        self.assertGreater(time.monotonic() - t0, 2.0)
        self.assertEqual(self.expect(nhs.request(ping=pb.Ping(nonce=4)), "pong").nonce, 4)


class TestMaxFrame(HardeningCase):
    def test_frame_over_max_frame(self):
        """limits.max_frame 1KiB: 1024 bytes pass, 1025 get BAD_FRAME and the connection is closed."""
        pb = self.pb
        self.gw = self.gateway(limits={"max_frame": "1KiB"})
        police = self.connect("police")
        self.accepted(police, "maxframe-kept", [{"nhs_number": NHS_A}])
        # a frame of exactly 1024 bytes: a Ping padded with an unknown field
        head = vi(1, 3) + ld(20, vi(1, 9))
        pad = 1024 - len(head) - 3
        body = head + ld(100, b"p" * (pad - 1))
        self.assertEqual(len(body), 1024)
        police.send_raw(delimited(body))
        self.assertEqual(self.expect(police.recv_frame(timeout=5 * isgtest.SLOW), "pong").nonce, 9)
        for size, send_body in [(1025, True), (1 << 40, False), (1 << 63, False)]:
            with self.subTest(size=size):
                c = self.connect("police")
                c.send_raw(varint_encode(size) + (b"\x00" * size if send_body else b""))
                reply = c.recv_frame(timeout=5 * isgtest.SLOW)
                self.assertEqual(reply.request_id, 0)
                e = self.expect_error(reply, pb.BAD_FRAME)
                self.assertIn("1024", e.message)
                self.assertClosed(c, what="after a frame over max_frame")
        self.assertServing(pending=["maxframe-kept"])


class TestRefusedByTheStore(HardeningCase):
    def test_conflict_and_reply_to_nothing_are_audited(self):
        """A message_id reused for other content and a reply to no message are
        refused only when the store looks: they are on record like every other
        refusal, and the answer gives the entry's index."""
        pb = self.pb
        reply = isgtest.default_agreement(id="nhs-police-reply", senders=["nhs-trust"],
                                          recipients=["met-police"], allow_reply=True)
        self.gw = self.gateway(self.policy(agreements=[isgtest.default_agreement(), reply]))
        police, nhs = self.connect("police"), self.connect("nhs")
        first = self.accepted(police, "used-1", [{"nhs_number": NHS_A}])
        conflict = self.expect_error(
            police.request(send=self.send_request("used-1", [{"nhs_number": NHS_B}] * 2)),
            pb.CONFLICT, "message.id")

        def reply_to(message_id, gateway_id):
            req = pb.SendRequest(message_id=message_id, recipient="met-police",
                                 agreement_id="nhs-police-reply", dataset=DATASET,
                                 reply_to=gateway_id)
            req.records.extend([pb_record(pb, {"nhs_number": NHS_A})])
            return nhs.request(send=req)

        nothing = self.expect_error(reply_to("re-1", first.gateway_id + 1000), pb.NOT_FOUND,
                                    "message.reply_to")
        self.expect(reply_to("re-2", first.gateway_id), "send_result")
        entries = {e["index"]: e for e in self.audit_jsonl("--kind", "message.refused")}
        for e, code, sender, message_id, records in (
                (conflict, "CONFLICT", "met-police", "used-1", 2),
                (nothing, "NOT_FOUND", "nhs-trust", "re-1", 1)):
            self.assertGreater(e.audit_index, first.audit_index)
            entry = entries[e.audit_index]["entry"]
            self.assertEqual((entry["code"], entry["rule"], entry["sender"], entry["message_id"],
                              entry["records"], entry["record_index"]),
                             (code, e.rule, sender, message_id, records, -1), entry)
            self.assertEqual(entry["reason"], e.message)
            self.assertRegex(self.gw.log, r"event=message\.refused partner=%s rule=%s"
                             % (sender, re.escape(e.rule)))
        # a sender gone before its answer: the refusal is on record all the same
        gone = self.connect("police")
        gone.send_frame(pb.Frame(request_id=1, send=self.send_request("used-1", [{"nhs_number": NHS_B}])))
        gone.close()
        deadline = time.monotonic() + 5 * isgtest.SLOW
        while len([e for e in self.audit_jsonl("--kind", "message.refused")
                   if e["entry"]["rule"] == "message.id"]) < 2:
            self.assertLess(time.monotonic(), deadline, "the gone sender's refusal is not on record")
            time.sleep(0.05)
        self.assertServing(pending=["used-1"])


class TestDeliveryWithinMaxFrame(HardeningCase):
    def test_a_message_its_recipient_could_not_fetch_is_refused(self):
        """limits.max_frame bounds the gateway's frames too: a message that, as
        the agreement makes it (the sender, the purpose, the gateway's numbers
        added), would reach its recipient in a larger frame is refused and
        audited, and every message accepted is fetched in a frame within it."""
        pb = self.pb
        limit = 16 * 1024
        self.gw = self.gateway(limits={"max_frame": "16KiB"})
        police, nhs = self.connect("police"), self.connect("nhs")
        accepted, refused = [], []
        for pad in range(limit - 800, limit, 16):
            req = self.send_request("mf-%d" % pad, [{"nhs_number": NHS_A,
                                                      "concern_summary": "x" * pad}])
            if len(pb.Frame(request_id=police.next_id, send=req).SerializeToString()) > limit:
                break  # what comes in is bounded by the limit as it always was
            reply = police.request(send=req)
            if reply.WhichOneof("body") == "send_result":
                accepted.append(req.message_id)
                continue
            e = self.expect_error(reply, pb.LIMIT_EXCEEDED, "gateway.max_frame")
            self.assertIn("16384", e.message)
            self.assertGreater(e.audit_index, 0)
            refused.append((e.audit_index, e.message))
        self.assertTrue(accepted and refused, (accepted, refused))
        for message_id in accepted:
            r = self.expect(nhs.request(fetch=pb.FetchRequest(max_messages=1)), "fetch_result")
            self.assertEqual([d.message_id for d in r.deliveries], [message_id])
            self.assertLessEqual(nhs.last_frame_len, limit)
            self.expect(nhs.request(ack=pb.Ack(gateway_ids=[r.deliveries[0].gateway_id])), "ack_result")
        entries = {e["index"]: e["entry"] for e in self.audit_jsonl("--kind", "message.refused")}
        for index, message in refused:
            self.assertEqual(entries[index]["rule"], "gateway.max_frame")
            self.assertGreater(len(message), 128)
            self.assertEqual(entries[index]["reason"], message)  # in full, as the sender had it
        self.assertServing()


    def test_a_fetch_reads_what_one_answer_holds(self):
        """A fetch takes from the store what one answer can hold, not 64 MiB
        of which it would send max_frame: the messages past it are not
        recorded as delivered before they are (at most the one that did
        not fit), and come in the next answers."""
        pb = self.pb
        self.gw = self.gateway(limits={"max_frame": "256KiB"})
        police, nhs = self.connect("police"), self.connect("nhs")
        sent = ["big-%d" % i for i in range(12)]
        for message_id in sent:
            self.accepted(police, message_id, [{"nhs_number": NHS_A, "concern_summary": "x" * 60000}])
        r = self.expect(nhs.request(fetch=pb.FetchRequest(max_messages=100)), "fetch_result")
        first = [d.message_id for d in r.deliveries]
        self.assertTrue(0 < len(first) < len(sent), first)
        delivered = self.audit_jsonl("--kind", "message.delivered")
        self.assertLessEqual(len(delivered), len(first) + 1, [e["entry"]["message_id"] for e in delivered])
        got = list(first)
        while len(got) < len(sent):
            r = self.expect(nhs.request(fetch=pb.FetchRequest(max_messages=100)), "fetch_result")
            self.assertTrue(r.deliveries)
            got += [d.message_id for d in r.deliveries]
        self.assertEqual(got, sent)
        self.assertEqual(len(self.audit_jsonl("--kind", "message.delivered")), len(sent))


class TestConnectionLimit(HardeningCase):
    def test_over_max_connections(self):
        pb = self.pb
        self.gw = self.gateway(limits={"max_connections": 3})
        conns = [self.connect(n) for n in ("police", "nhs", "council")]
        for i, c in enumerate(conns):
            self.assertEqual(self.expect(c.request(ping=pb.Ping(nonce=i)), "pong").nonce, i)
        kept = self.accepted(conns[0], "limit-kept", [{"nhs_number": NHS_A}])
        # the 4th is refused: the handshake fails or the connection is closed at once
        try:
            fourth = isgtest.FrameConn(self.gw, self.pki.certs["police"], timeout=5 * isgtest.SLOW)
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        else:
            self.addCleanup(fourth.close)
            try:
                fourth.send_frame(pb.Frame(request_id=1, ping=pb.Ping(nonce=99)))
            except (ConnectionError, ssl.SSLError, OSError):
                pass
            self.assertClosed(fourth, timeout=5, what="the 4th connection")
        self.assertIn("event=conn.refused", self.gw.log)
        self.assertRegex(self.gw.log, r"event=conn\.refused .*reason=max_connections limit=3")
        # the three are still usable
        for i, c in enumerate(conns):
            self.assertEqual(self.expect(c.request(ping=pb.Ping(nonce=10 + i)), "pong").nonce, 10 + i)
        for c in conns:
            c.close()
        # once they are closed, new connections work
        deadline = time.monotonic() + 3 * isgtest.SLOW
        while True:
            try:
                c = self.connect("council")
                self.assertEqual(self.expect(c.request(ping=pb.Ping(nonce=5)), "pong").nonce, 5)
                c.close()
                break
            except (ConnectionError, ssl.SSLError, OSError, EOFError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.assertServing(pending=["limit-kept"])
        self.assertGreater(kept.gateway_id, 0)


class TestRefusalFlood(HardeningCase):
    """
    A port scanner's or a load balancer's bare connect-and-close, over and
    over: every refusal stays on record, but a flood of them from one
    address writes the first at once and then, when its window is over or
    isgd stops, one entry with the count (docs/audit.md), instead of one
    entry and one commit each.
    """

    FLOOD = 50

    def refused(self, gw):
        r = isgtest.ctl("audit", "list", "--config", gw.config_path, "--format", "jsonl",
                        "--kind", "connection.refused")
        self.assertEqual(r.rc, 0, r)
        return [json.loads(line)["entry"] for line in r.out.splitlines()]

    def wait_refused(self, gw, count, what, timeout=10):
        deadline = time.monotonic() + timeout * isgtest.SLOW
        while True:
            entries = self.refused(gw)
            if len(entries) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(len(entries), count, "%s: %s\n%s" % (what, entries, gw.diagnostics()))
        return entries

    def wait_log_refusals(self, gw, count):
        """(lines, counted): once isgd's log has written or counted count refusals."""
        deadline = time.monotonic() + 10 * isgtest.SLOW
        while True:
            lines = len(re.findall(r"event=conn\.refused peer=", gw.log))
            counted = sum(int(n) for n in
                          re.findall(r"event=conn\.refused_unlogged count=(\d+)", gw.log))
            if lines + counted >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(lines + counted, count, gw.diagnostics())
        return lines, counted

    def burst(self, gw, n):
        """
        n bare connect-and-closes that reach isgd as one flood, whatever
        the machine's speed: made while isgd is stopped (SIGSTOP), they wait
        in the kernel's queue, and its worker (threads=1) takes them in one
        accept and refuses them in one pass of its loop (64 at most each).
        """
        self.assertLessEqual(n, 64)
        gw.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(n):
                socket.create_connection(("127.0.0.1", gw.port), timeout=5 * isgtest.SLOW).close()
        finally:
            gw.proc.send_signal(signal.SIGCONT)

    def refusal_lines(self, text):
        """The ms timestamps of the conn.refused lines in text, and the counts
        of its conn.refused_unlogged lines."""
        def ms(ts):
            d = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
            return (d - datetime.datetime(1970, 1, 1)).total_seconds() * 1000.0
        lines = [ms(t) for t in re.findall(r"^ts=(\S+) \S+ event=conn\.refused peer=", text, re.M)]
        counts = [int(n) for n in re.findall(r"event=conn\.refused_unlogged count=(\d+)", text)]
        return lines, counts

    def wait_log(self, gw, event, count):
        deadline = time.monotonic() + 10 * isgtest.SLOW
        while gw.log.count("event=" + event) < count:
            if time.monotonic() > deadline:
                self.fail("%d %s lines expected\n%s" % (count, event, gw.diagnostics()))
            time.sleep(0.05)

    def test_a_chain_from_an_unknown_ca_is_named_by_its_partner_certificate(self):
        """A partner that sends its certificate with its (untrusted) CA's fails on
        the CA's: the refusal names the partner's certificate, not the CA."""
        name = "rogue-chain"
        if name not in self.pki.certs:
            self.pki.untrusted_client(name, name + ".partners.isg.example")
        leaf = self.pki.certs[name]
        chain = os.path.join(self.tmp, name + "-with-ca.crt")
        with open(chain, "w") as out:
            for part in (leaf.cert, os.path.join(self.pki.dir, "rogue-ca.crt")):
                with open(part) as f:
                    out.write(f.read())
        self.gw = gw = self.gateway()
        self.pki.certs[name + "-with-ca"] = isgtest.Cert(name, chain, leaf.key, leaf.cn)
        try:
            self.connect(name + "-with-ca").request(ping=self.pb.Ping(nonce=1))
        except (OSError, ssl.SSLError, AssertionError):
            pass
        self.wait_log(gw, "conn.refused", 1)
        line = [l for l in gw.log.splitlines() if "event=conn.refused" in l][0]
        self.assertIn("CN=%s.partners.isg.example" % name, line)
        self.assertNotIn("Rogue Partner CA", line)
        entry = self.wait_refused(gw, 1, "the refusal, at once")[0]
        self.assertIn("CN=%s.partners.isg.example" % name, entry["subject"])

    def test_bare_connections_coalesced(self):
        # The audit window outlasts the test, however slow the machine:
        # every refusal after the first is counted until the stop.
        self.gw = gw = self.gateway(threads=1, audit={"refusal_window": "1h"})
        self.burst(gw, self.FLOOD)
        # Each one is refused; the operational log writes 10 a second per
        # worker and counts the others, so a flood cannot fill the disk.
        # Measured on isgd's clock (its lines' timestamps), not this one's:
        # windows of 1 s that hold the lines, 10 lines each at most.
        lines, counted = self.wait_log_refusals(gw, self.FLOOD)
        stamps, _ = self.refusal_lines(gw.log)
        self.assertEqual(len(stamps), lines)
        span = stamps[-1] - stamps[0]
        bound = 10 * (int(span // 1000) + 2)
        self.assertLess(bound, self.FLOOD, "the flood reached isgd over %.0f ms, too slowly "
                        "for the limit to show\n%s" % (span, gw.diagnostics()))
        self.assertLessEqual(lines, bound, "%d lines in %.0f ms\n%s" % (lines, span, gw.diagnostics()))
        self.assertGreaterEqual(counted, self.FLOOD - bound)
        # the first is on record at once, in full, as before
        first = self.wait_refused(gw, 1, "the first refusal, at once")[0]
        self.assertRegex(first["peer"], r"^127\.0\.0\.1:\d+$")
        self.assertEqual(first["subject"], "")
        self.assertTrue(first["reason"], first)
        self.assertNotIn("repeated", first)
        self.assertServing()
        # a graceful stop writes what was only counted
        gw.stop()
        entries = [e for e in self.refused(gw)
                   if e["peer"].rsplit(":", 1)[0] == "127.0.0.1" and e["subject"] == ""]
        self.assertEqual({e["reason"] for e in entries}, {first["reason"]}, entries)
        self.assertEqual(len(entries), 2, entries)
        count = entries[-1]
        self.assertEqual(count["repeated"], self.FLOOD - 1, count)
        self.assertEqual(count["peer"], "127.0.0.1")
        self.assertLessEqual(count["first_at"], count["last_at"])
        r = isgtest.ctl("audit", "verify", "--config", gw.config_path)
        self.assertEqual(r.rc, 0, r)
        self.assertIn("audit log OK", r.out)
        # the table names the count
        r = isgtest.ctl("audit", "list", "--config", gw.config_path, "--kind", "connection.refused")
        self.assertEqual(r.rc, 0, r)
        self.assertIn("(%d refusals)" % (self.FLOOD - 1), r.out)

    def test_a_count_not_yet_written_is_written_at_stop(self):
        """Refusals counted and not logged when isgd stops are written as it stops.

        The count is due a second after the first refusal (a window fixed
        in isgd); the stop comes a few milliseconds after the tenth line.
        Should a loaded machine hold this test back for that second, the
        log shows the count written before the stop: the try proves
        nothing, and the next one, on a new isgd, is made."""
        self.gw = gw = self.gateway(threads=1, start=False)
        for attempt in range(3):
            since = gw._log_size()
            gw.start()
            self.burst(gw, 30)
            # All 30 are refused in the pass that writes the tenth line, before
            # the worker looks for a stop: none is left in the queue, or in its
            # handshake, for the stop to drop.
            deadline = time.monotonic() + 10 * isgtest.SLOW
            while gw.log[since:].count("event=conn.refused peer=") < 10:
                if time.monotonic() > deadline:
                    self.fail("10 conn.refused lines expected\n%s" % gw.diagnostics())
                time.sleep(0.005)
            gw.stop()
            text = gw.log[since:]
            running, stopping = text.split("event=shutdown.start", 1)
            lines, counts = self.refusal_lines(running)
            self.assertEqual(len(lines), 10, gw.diagnostics())
            self.assertEqual(self.refusal_lines(stopping)[0], [], gw.diagnostics())
            # A slow build (TSan, valgrind) may not have refused all 30 in that
            # pass; the stop drops the rest unrefused. Counted ones are never lost.
            if counts:  # written while running: too late a stop to prove anything
                self.assertEqual(len(counts), 1, gw.diagnostics())
                self.assertTrue(1 <= counts[0] <= 20, gw.diagnostics())
                continue
            at_stop = self.refusal_lines(stopping)[1]
            self.assertEqual(len(at_stop), 1, gw.diagnostics())
            self.assertTrue(1 <= at_stop[0] <= 20, gw.diagnostics())
            return
        self.fail("in 3 tries, the stop never came within a second of the first refusal\n%s"
                  % gw.diagnostics())

    def test_count_written_while_running(self):
        """When the window is over, the count is written by isgd as it runs,
        not only at shutdown (audit.refusal_window, at its shortest here)."""
        self.gw = gw = self.gateway(audit={"refusal_window": "10s"})
        start = time.monotonic()
        for _ in range(5):
            socket.create_connection(("127.0.0.1", gw.port), timeout=5 * isgtest.SLOW).close()
        self.wait_log(gw, "conn.refused", 5)
        entries = self.wait_refused(gw, 2, "the first at once, then the count", timeout=30)
        # when the configured window is over: not before, and not after the default minute
        self.assertGreater(time.monotonic() - start, 9.5)
        self.assertLess(time.monotonic() - start, 45)
        self.assertNotIn("repeated", entries[0])
        count = entries[1]
        self.assertEqual((count["peer"], count["repeated"]), ("127.0.0.1", 4), count)
        # the key is forgotten: the next refusal is written at once again
        socket.create_connection(("127.0.0.1", gw.port), timeout=5 * isgtest.SLOW).close()
        again = self.wait_refused(gw, 3, "the next one at once")[2]
        self.assertNotIn("repeated", again)
        self.assertServing()

    def test_subject_is_a_key_only_when_the_certificate_verifies(self):
        """A certificate that verifies but matches no partner is a key of its
        own, so its refusal shows at once and in full whatever else is refused
        from its address. The subject of one that does not verify is whatever
        its maker wrote: those are counted per address and reason, or one
        address could fill the table with made-up subjects."""
        for name, make in (("stray-a", self.pki.client), ("stray-b", self.pki.client),
                           ("rogue-a", self.pki.untrusted_client),
                           ("rogue-b", self.pki.untrusted_client)):
            if name not in self.pki.certs:
                make(name, name + ".partners.isg.example")
        self.gw = gw = self.gateway()
        p = {n: isgtest.Partner(gw, self.pki, n) for n in ("stray-a", "stray-b", "rogue-a", "rogue-b")}
        socket.create_connection(("127.0.0.1", gw.port), timeout=5 * isgtest.SLOW).close()
        for name in ("stray-a", "stray-b", "stray-a", "rogue-a", "rogue-b", "rogue-a"):
            self.assertCtl(p[name].whoami(), 3 if name.startswith("stray") else 4, gw)
        self.wait_log(gw, "conn.refused", 7)
        entries = self.wait_refused(gw, 4, "at once: the bare connection, each stray, the first rogue")
        subjects = sorted(e["subject"] for e in entries)
        self.assertEqual(subjects[0], "")
        for i, name in ((1, "rogue-a"), (2, "stray-a"), (3, "stray-b")):
            self.assertIn("CN=%s.partners.isg.example" % name, subjects[i])
        for e in entries:
            self.assertNotIn("repeated", e)
        gw.stop()
        counts = self.refused(gw)[4:]
        self.assertEqual(len(counts), 2, counts)
        by_subject = {("stray-a" if "stray-a." in e["subject"] else e["subject"]): e for e in counts}
        self.assertEqual(sorted(by_subject), ["*", "stray-a"], counts)
        self.assertEqual(by_subject["stray-a"]["repeated"], 1)
        self.assertEqual(by_subject["stray-a"]["reason"], "certificate matches no partner")
        self.assertEqual((by_subject["*"]["peer"], by_subject["*"]["repeated"]), ("127.0.0.1", 2))
        r = isgtest.ctl("audit", "verify", "--config", gw.config_path)
        self.assertEqual(r.rc, 0, r)
        # the table says how many each stands for, in words that fit the number
        r = isgtest.ctl("audit", "list", "--config", gw.config_path, "--kind", "connection.refused")
        self.assertEqual(r.rc, 0, r)
        self.assertIn("(2 refusals)", r.out)
        self.assertIn("(1 refusal)", r.out)


class TestWorkers(HardeningCase):
    def test_connections_spread_evenly_over_workers(self):
        """Each connection goes to the worker with the fewest: the kernel's
        SO_REUSEPORT hash alone splits 16 connections 8/8 only one time in
        five, and the busier worker then sets the pace of everyone on it."""
        pb = self.pb
        self.gw = self.gateway(log_level="debug", threads=2)
        names = ("police", "nhs", "council")
        conns = [self.connect(names[i % 3]) for i in range(16)]
        for i, c in enumerate(conns):
            self.assertEqual(self.expect(c.request(ping=pb.Ping(nonce=i)), "pong").nonce, i)
        workers = re.findall(r"event=conn\.accepted .*worker=(\d+)", self.gw.log)
        self.assertEqual(len(workers), 16, self.gw.log)
        self.assertEqual(sorted(collections.Counter(workers).values()), [8, 8])
        # Half the connections were handed to the other worker (ties stay
        # with the worker that accepted): on each of the police's six, a
        # message is accepted and later delivered as any other.
        sent = []
        for i in range(0, 16, 3):
            sent.append("spread-%d" % i)
            kept = self.accepted(conns[i], sent[-1], [{"nhs_number": NHS_A}])
            self.assertGreater(kept.gateway_id, 0)
        for c in conns:
            c.close()
        self.assertServing(pending=sent)

    def test_threads_are_named(self):
        """top -H, perf and /proc tell isgd's threads apart, the key process's too."""
        self.gw = self.gateway(threads=2)
        pid = self.gw.proc.pid

        def names(p):
            task = "/proc/%d/task" % p
            return {open(os.path.join(task, t, "comm")).read().strip() for t in os.listdir(task)}

        def parent(d):
            try:
                with open("/proc/%s/stat" % d) as f:
                    return int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:  # gone since the listing
                return None

        def seen():
            children = [int(d) for d in os.listdir("/proc") if d.isdigit() and parent(d) == pid]
            return names(pid), set().union(*(names(c) for c in children))

        # A thread names itself once it runs, which may be just after isgd listens.
        deadline = time.monotonic() + 5 * isgtest.SLOW
        mine, keyproc = seen()
        while not ({"isg-worker-0", "isg-worker-1", "isg-writer", "isg-wal"} <= mine
                   and "isg-keyproc" in keyproc) and time.monotonic() < deadline:
            time.sleep(0.05)
            mine, keyproc = seen()
        self.assertLessEqual({"isg-worker-0", "isg-worker-1", "isg-writer", "isg-wal"}, mine)
        self.assertIn("isg-keyproc", keyproc)


class TestPartnerRemoved(HardeningCase):
    def assertCutAudited(self, partner, cn, rule, timeout=5.0):
        """
        The reload's cut is in the audit log, where an IG officer looks for
        when a partner lost its access: one connection.closed entry naming
        the partner, its certificate and the rule, after the policy.loaded
        entry of the reload that cut it and carrying that policy's version.
        The entry is committed just after the close, hence the wait. The log
        still verifies.
        """
        deadline = time.monotonic() + timeout * isgtest.SLOW
        closed = self.audit_jsonl("--kind", "connection.closed")
        while not closed:
            if time.monotonic() > deadline:
                self.fail("no connection.closed audit entry within %.0fs of the cut\n%s"
                          % (timeout, self.gw.diagnostics()))
            time.sleep(0.05)
            closed = self.audit_jsonl("--kind", "connection.closed")
        self.assertEqual(len(closed), 1, closed)
        body = closed[0]["entry"]
        self.assertEqual((body["event"], body["partner"], body["rule"]),
                         ("connection.closed", partner, rule), body)
        self.assertIn(cn, body["subject"])
        self.assertTrue(body["peer"].startswith("127.0.0.1"), body)
        self.assertTrue(body["reason"], body)
        loaded = self.audit_jsonl("--kind", "policy.loaded")[-1]
        self.assertGreater(closed[0]["index"], loaded["index"])
        self.assertEqual(body["policy_version"], loaded["entry"]["policy_version"])
        self.assertEqual(self.audit_jsonl("--partner", partner, "--kind", "connection")[-1],
                         closed[0])
        r = isgtest.ctl("audit", "list", "--config", self.gw.config_path, "--kind",
                        "connection.closed")
        self.assertEqual(r.rc, 0, r)
        self.assertRegex(r.out, r"connection\.closed +%s .* %s\n" % (re.escape(partner),
                                                                    re.escape(rule)))
        r = isgtest.ctl("audit", "verify", "--config", self.gw.config_path)
        self.assertEqual(r.rc, 0, r)
        self.assertIn("audit log OK", r.out)

    def test_removed_partner_connection_closed_on_sighup(self):
        pb = self.pb
        policy = self.policy()
        self.gw = self.gateway(policy)
        council = self.connect("council")
        nhs = self.connect("nhs")
        police = self.connect("police")
        for c in (council, nhs, police):
            self.expect(c.request(ping=pb.Ping(nonce=1)), "pong")
        kept = self.accepted(police, "removed-kept", [{"nhs_number": NHS_A}])
        partners = [p for p in isgtest.default_partners() if p["id"] != "city-council"]
        isgtest.write_yaml(os.path.join(policy, "partners.yaml"), {"partners": partners})
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "loaded", text)
        reply = council.recv_frame(timeout=5 * isgtest.SLOW)
        self.assertEqual(reply.request_id, 0)
        self.expect_error(reply, pb.NOT_PERMITTED, "partner.removed")
        self.assertClosed(council, what="the removed partner's connection")
        self.assertCutAudited("city-council", isgtest.COUNCIL_CN, "partner.removed")
        # the other partners' connections stay usable
        self.assertEqual(self.expect(nhs.request(ping=pb.Ping(nonce=2)), "pong").nonce, 2)
        self.assertEqual(self.expect(police.request(ping=pb.Ping(nonce=3)), "pong").nonce, 3)
        fetched = self.expect(nhs.request(fetch=pb.FetchRequest()), "fetch_result")
        self.assertEqual([d.gateway_id for d in fetched.deliveries], [kept.gateway_id])
        self.expect(nhs.request(ack=pb.Ack(gateway_ids=[kept.gateway_id])), "ack_result")
        # a new connection with the removed partner's certificate is unknown
        c = self.connect("council")
        reply = c.recv_frame(timeout=5 * isgtest.SLOW)
        self.expect_error(reply, pb.NOT_PERMITTED, "partner.unknown")
        self.assertClosed(c, what="the removed partner's new connection")
        self.assertServing()
        self.assertLogClean()

    def test_busy_connections_cut_while_their_requests_arrive(self):
        """
        A reload that removes a partner cuts its connections while they are
        sending, and while another partner keeps the workers busy: each is
        cut and the cut audited, and isgd goes on serving. The cuts run on
        each worker as posted work, between the events of its epoll batch,
        which may still hold events for the connections cut: a sanitizer
        build (ASan, TSan) fails here if a worker then touches a connection
        it freed.
        """
        pb = self.pb
        policy = self.policy()
        self.gw = self.gateway(policy, threads=2)
        partners = isgtest.default_partners()
        without = [p for p in partners if p["id"] != "city-council"]
        # Rounds enough that a sanitizer build nearly always sees such a use
        # (7 runs in 8 without the fix, ASan and TSan alike); valgrind, which
        # runs one thread at a time, is slow at TLS handshakes.
        n_conns, rounds = 24, 4 if isgtest.VALGRIND else 16

        def frame(**body):
            data = pb.Frame(request_id=7, **body).SerializeToString()
            return isgtest.varint_encode(len(data)) + data

        pings = frame(ping=pb.Ping(nonce=7)) * 8
        # The busy partner's sends: accepted once here, resent as duplicates.
        records = [{"nhs_number": NHS_B, "age": n % 90} for n in range(200)]
        busy_ids = ["busy-%d" % n for n in range(8)]
        police = self.connect("police")
        for mid in busy_ids:
            self.accepted(police, mid, records)
        police.close()
        sends = [frame(send=self.send_request(mid, records)) for mid in busy_ids]

        def stream(c, data, ended, flowing, stop=None):
            # Requests as fast as they go, the answers read so that
            # backpressure never stops them, until the gateway closes (or
            # stop is set: an SSLSocket is not for two threads to close).
            # Once answers come back (flowing), requests are arriving.
            c.sock.settimeout(10 * isgtest.SLOW)
            try:
                for n in itertools.count():
                    if stop and stop.is_set():
                        break
                    c.sock.sendall(data[n % len(data)] if isinstance(data, list) else data)
                    if not c.sock.recv(65536):
                        break
                    if n == 1:
                        flowing.release()
            except (OSError, ssl.SSLError):
                pass
            ended.append(c)

        for r in range(rounds):
            busy = [self.connect("police") for _ in range(3)]
            conns = [self.connect("council") for _ in range(n_conns)]
            for c in busy + conns:
                self.expect(c.request(ping=pb.Ping(nonce=1)), "pong")
            ended, busy_ended, stop = [], [], threading.Event()
            flowing = threading.Semaphore(0)
            # isgtest.Thread: what a stream raises besides a cut (OSError,
            # TLS error) join() raises, instead of a connection not "ended".
            threads = [isgtest.Thread(stream, args=(c, pings, ended, flowing)) for c in conns]
            threads += [isgtest.Thread(stream, args=(c, sends, busy_ended, flowing, stop)) for c in busy]
            for t in threads:
                t.start()
            # Cut only once every connection's requests flow: a cut before
            # a thread got going would be one between requests.
            deadline = time.monotonic() + 15 * isgtest.SLOW
            for t in threads:
                self.assertTrue(flowing.acquire(timeout=max(0.0, deadline - time.monotonic())),
                                "round %d: requests not flowing\n%s" % (r, self.gw.diagnostics()))
            isgtest.write_yaml(os.path.join(policy, "partners.yaml"), {"partners": without})
            outcome, text = self.gw.reload()
            self.assertEqual(outcome, "loaded", text)
            for t in threads[:n_conns]:
                t.join(15 * isgtest.SLOW)
            self.assertEqual(len(ended), n_conns, "round %d: connections not cut\n%s"
                             % (r, self.gw.diagnostics()))
            stop.set()
            for t in threads[n_conns:]:
                t.join(15 * isgtest.SLOW)
            self.assertEqual(len(busy_ended), len(busy))
            for c in busy:
                c.close()
            deadline = time.monotonic() + 10 * isgtest.SLOW
            while len(self.audit_jsonl("--kind", "connection.closed")) < n_conns * (r + 1):
                self.assertLess(time.monotonic(), deadline, "round %d: cuts not audited" % r)
                time.sleep(0.1)
            self.assertAlive(self.gw, "after cutting busy connections")
            isgtest.write_yaml(os.path.join(policy, "partners.yaml"), {"partners": partners})
            self.assertEqual(self.gw.reload()[0], "loaded")
        self.assertEqual(len(self.audit_jsonl("--kind", "connection.closed")), n_conns * rounds)
        self.assertServing(pending=busy_ids)

    def test_partner_claiming_a_ca_whole_is_warned_of_and_named(self):
        """A partner added by issuer_cn alone, for the CA that issued the others'
        certificates, locks them out: the reload warns of it, and a refused
        partner is told, as the log and the audit log say, which partners its
        certificate matched rather than that it matched none."""
        pb = self.pb
        self.gw = self.gateway()
        partners = isgtest.default_partners() + [
            {"id": "ca-wide", "name": "Everyone", "kind": "other",
             "certificate": {"issuer_cn": "ISG Test Partner CA"}}]
        isgtest.write_policy(self.gw.policy_dir, partners=partners)
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "loaded", text)
        self.assertRegex(text, r"level=warn event=policy\.diagnostic .*partner 'ca-wide' is "
                               r"recognised by issuer_cn alone and partner 'met-police' has no "
                               r"issuer_cn")
        c = self.connect("police")
        e = self.expect_error(c.recv_frame(timeout=5 * isgtest.SLOW), pb.NOT_PERMITTED,
                              "partner.unknown")
        self.assertIn("matches more than one partner in the gateway's registry ('met-police' and "
                      "'ca-wide'), so it is recognised as neither", e.message)
        self.assertIn("reason=partner.unknown claimed_by=met-police,ca-wide", self.gw.log)
        deadline = time.monotonic() + 5 * isgtest.SLOW
        while not (refused := self.audit_jsonl("--kind", "connection.refused")):
            self.assertLess(time.monotonic(), deadline, "no connection.refused entry")
            time.sleep(0.05)
        self.assertEqual(refused[-1]["entry"]["reason"],
                         "certificate matches more than one partner ('met-police' and 'ca-wide')")

    def test_unrecognised_certificate_connection_closed_on_sighup(self):
        """A partner kept in the registry but no longer matching the certificate
        its connection was opened with (a key replaced after a compromise) is
        cut at the reload, not only refused on its next connection."""
        pb = self.pb
        policy = self.policy()
        self.gw = self.gateway(policy)
        council = self.connect("council")
        police = self.connect("police")
        for c in (council, police):
            self.expect(c.request(ping=pb.Ping(nonce=1)), "pong")
        partners = isgtest.default_partners()
        for p in partners:
            if p["id"] == "city-council":
                p["certificate"] = {"subject_cn": "replacement-council.partners.isg.example"}
        isgtest.write_yaml(os.path.join(policy, "partners.yaml"), {"partners": partners})
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "loaded", text)
        reply = council.recv_frame(timeout=5 * isgtest.SLOW)
        self.assertEqual(reply.request_id, 0)
        self.expect_error(reply, pb.NOT_PERMITTED, "partner.unrecognised")
        self.assertClosed(council, what="the connection with the unrecognised certificate")
        self.assertIn("event=partner.unrecognised", self.gw.log)
        self.assertCutAudited("city-council", isgtest.COUNCIL_CN, "partner.unrecognised")
        # a partner whose certificate still matches keeps its connection
        self.assertEqual(self.expect(police.request(ping=pb.Ping(nonce=2)), "pong").nonce, 2)
        self.assertServing()
        self.assertLogClean()


def logfmt(line):
    """The key=value pairs of one logfmt line, quoted values unquoted."""
    pairs = re.findall(r'([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|[^ "]*)(?: |$)', line)
    rebuilt = " ".join(k + "=" + v for k, v in pairs)
    if rebuilt != line:
        raise AssertionError("not one logfmt line: %r" % line)
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


class TestPolicyWarnings(HardeningCase):
    def test_warnings_are_events_in_the_log_and_text_for_check_config(self):
        """A policy that loads with a warning: --check-config prints it for the
        admin at the terminal, as isgctl policy check does; a start and a
        reload write it into isgd's log as the same policy.diagnostic event,
        level=warn, with its file, line and column, like every other line
        there. The policy directory's name has a space, which must not break
        the file= field."""
        agreement = isgtest.default_agreement(review_date="2025-06-30")
        policy = self.policy(name="policy dir", agreements=[agreement])
        gw = self.gateway(policy, start=False)
        check = isgtest.subprocess.run([isgtest.ISGD, "--check-config", "--config",
                                        gw.config_path] + gw.new_store_args(), capture_output=True, text=True,
                                       timeout=isgtest.START_TIMEOUT)
        self.assertEqual((check.returncode, check.stdout), (0, "configuration OK\n"),
                         check.stderr)
        path = os.path.join(policy, "agreements", AGREEMENT_ID + ".yaml")
        m = re.fullmatch(r"(.*):(\d+):(\d+): warning: (.*)\n", check.stderr)
        self.assertIsNotNone(m, check.stderr)
        self.assertEqual(m.group(1), path)
        self.assertRegex(m.group(4), r"^agreement '%s' was due for review on 2025-06-30 "
                                     r"\(review_date\); today \(UTC\) is \d{4}-\d\d-\d\d$"
                         % AGREEMENT_ID)
        want = {"level": "warn", "event": "policy.diagnostic", "file": path,
                "line": m.group(2), "col": m.group(3), "message": m.group(4)}

        self.gw = gw
        gw.start()
        lines = [l for l in gw.log.splitlines() if not l.startswith("# isgtest:")]
        events = [logfmt(l) for l in lines]  # every line isgd wrote is an event
        at_start = [e for e in events if e["event"] == "policy.diagnostic"]
        self.assertEqual([{k: e[k] for k in want} for e in at_start], [want])
        self.assertNotIn("warning:", gw.log)

        outcome, text = gw.reload()
        self.assertEqual(outcome, "loaded", text)
        at_reload = [logfmt(l) for l in text.splitlines() if "event=policy.diagnostic" in l]
        self.assertEqual([{k: e[k] for k in want} for e in at_reload], [want])


    def test_terms_changed_without_a_new_version(self):
        """A reload whose agreement changed its terms but kept its version
        (recipients know the terms by id and version) loads, with a
        policy.version_unchanged warning; a raised version gives none, a
        lowered one policy.version_lowered. A new title alone is no change
        of terms."""
        policy = self.policy()
        self.gw = gw = self.gateway(policy)

        def rewrite(**changes):
            isgtest.write_policy(policy, agreements=[isgtest.default_agreement(**changes)])
            outcome, text = gw.reload()
            self.assertEqual(outcome, "loaded", text)
            return [logfmt(l) for l in text.splitlines() if "event=policy.version_" in l]

        self.assertEqual(rewrite(title="Another title"), [])
        events = rewrite(valid_until="2031-12-31")
        self.assertEqual([{k: e[k] for k in ("level", "event", "agreement", "version")}
                          for e in events],
                         [{"level": "warn", "event": "policy.version_unchanged",
                           "agreement": AGREEMENT_ID, "version": "1"}])
        self.assertEqual(rewrite(valid_until="2032-12-31", version=2), [])
        events = rewrite(valid_until="2032-12-31", version=1)
        self.assertEqual([{k: e[k] for k in ("level", "event", "agreement", "version",
                                              "previous")} for e in events],
                         [{"level": "warn", "event": "policy.version_lowered",
                           "agreement": AGREEMENT_ID, "version": "1", "previous": "2"}])

class TestLogLines(HardeningCase):
    def test_paths_with_spaces_stay_one_value(self):
        """Every line isgd writes at a start, a reload and a stop is one
        logfmt line, and a path with a space in it (the policy directory's,
        the TLS certificate's) is one value, not a value and a stray word."""
        policy = self.policy(name="policy dir")
        cert = os.path.join(self.tmp, "tls files", "gateway chain.crt")
        os.makedirs(os.path.dirname(cert))
        with open(self.pki.gateway_chain, "rb") as src, open(cert, "wb") as dst:
            dst.write(src.read())
        self.gw = self.gateway(policy, tls={"certificate": cert})
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "loaded", text)
        self.gw.stop()
        events = [logfmt(l) for l in self.gw.log.splitlines() if not l.startswith("# isgtest:")]
        self.assertEqual([e["policy_dir"] for e in events if e["event"] == "reload.start"], [policy])
        self.assertEqual([e["certificate"] for e in events if e["event"] == "tls.reloaded"], [cert])


    def test_a_repeated_hello_writes_one_line(self):
        """partner.hello names the partner's software once a connection: a
        Hello is a few bytes, and repeating it must not buy a log line each."""
        self.gw = self.gateway()
        c = self.connect("police")
        for i in range(200):
            self.expect(c.request(hello=self.pb.Hello(protocol_version=1, client_name="loop/%d" % i)),
                        "welcome")
        self.assertServing()
        self.gw.stop()
        hellos = [l for l in self.gw.log.splitlines() if "event=partner.hello " in l]
        self.assertEqual(len([l for l in hellos if "partner=met-police" in l and "client=loop/" in l]),
                         1, hellos)


class TestSubscriptionWindow(HardeningCase):
    """
    A subscriber gets at most limits.max_fetch_messages unacknowledged
    pushes at a time (protocol.md), and the partner's acks open the window
    again, on whichever of its connections they come: every id the partner
    acks that was pushed to it, also one the gateway no longer holds as
    pending (acknowledged before, or expired), and never more pushes than
    the window.
    """

    def setUp(self):
        super().setUp()
        self.gw = self.gateway(limits={"max_fetch_messages": 3})

    def pushes(self, conn, want=None, quiet=1.0):
        """The gateway_ids pushed to conn until `want` arrived, or none came for `quiet` s."""
        got = []
        while want is None or len(got) < want:
            try:
                f = conn.recv_frame(timeout=(quiet if want is None else 10.0) * isgtest.SLOW)
            except socket.timeout:
                break
            got.append(self.expect(f, "delivery").gateway_id)
        return got

    def subscribe(self):
        c = self.connect("nhs")
        c.send_frame(self.pb.Frame(request_id=50, subscribe=self.pb.Subscribe()))
        return c

    def test_window_never_exceeded(self):
        police = self.connect("police")
        ids = [self.accepted(police, "win-%d" % i, [{"nhs_number": NHS_A}]).gateway_id
               for i in range(7)]
        sub = self.subscribe()
        self.assertEqual(self.pushes(sub, want=3), ids[:3])
        self.assertEqual(self.pushes(sub), [], "pushes past the window of 3")
        sub.send_frame(self.pb.Frame(request_id=51, ack=self.pb.Ack(gateway_ids=ids[:1])))
        self.assertEqual(self.expect(sub.recv_frame(timeout=10 * isgtest.SLOW),
                                     "ack_result").acknowledged, 1)
        # one acked: one more pushed, not another window's worth
        self.assertEqual(self.pushes(sub), ids[3:4], "with 2 of 3 unacknowledged")
        self.assertAlive(self.gw)

    def test_ids_acked_elsewhere_open_the_window(self):
        police = self.connect("police")
        ids = [self.accepted(police, "ha-%d" % i, [{"nhs_number": NHS_A}]).gateway_id
               for i in range(3)]
        # A partner runs two subscribers (for redundancy): both get every push.
        first, second = self.subscribe(), self.subscribe()
        self.assertEqual(self.pushes(first, want=3), ids)
        self.assertEqual(self.pushes(second, want=3), ids)
        for c, acknowledged, unknown in ((first, 3, []), (second, 0, ids)):
            c.send_frame(self.pb.Frame(request_id=52, ack=self.pb.Ack(gateway_ids=ids)))
            res = self.expect(c.recv_frame(timeout=10 * isgtest.SLOW), "ack_result")
            self.assertEqual((res.acknowledged, list(res.unknown_ids)), (acknowledged, unknown))
        # The second's acks came back unknown (the first had acked them), yet
        # none of its pushes is left unacknowledged: new messages reach both.
        more = [self.accepted(police, "ha-more-%d" % i, [{"nhs_number": NHS_B}]).gateway_id
                for i in range(2)]
        self.assertEqual(self.pushes(first, want=2), more)
        self.assertEqual(self.pushes(second, want=2), more,
                         "the subscriber whose acks came back unknown got nothing more")
        self.assertAlive(self.gw)

    def test_acks_on_another_connection_open_the_window(self):
        """A partner that subscribes on one connection and acks on another (a
        pool of connections, or isgctl from another process) gets every
        message, once each, in order. Before, only acks on the subscription's
        own connection opened its window: after 3 pushes it got nothing more,
        for good, and the rest waited in the store until they expired."""
        police = self.connect("police")
        sub, acker = self.subscribe(), self.connect("nhs")
        # Ten wait before the first push, ten arrive while the subscriber works.
        sent = [self.accepted(police, "pool-%d" % i, [{"nhs_number": NHS_A}]).gateway_id
                for i in range(10)]
        got = []
        while len(got) < 20:
            if len(sent) < 20:
                sent.append(self.accepted(police, "pool-%d" % len(sent),
                                          [{"nhs_number": NHS_B}]).gateway_id)
            try:
                f = sub.recv_frame(timeout=5 * isgtest.SLOW)
            except socket.timeout:
                self.fail("the subscription stalled after %d of 20 pushes, each acked on "
                          "another connection\n%s" % (len(got), self.gw.diagnostics()))
            got.append(self.expect(f, "delivery").gateway_id)
            res = self.expect(acker.request(ack=self.pb.Ack(gateway_ids=got[-1:])), "ack_result")
            self.assertEqual((res.acknowledged, list(res.unknown_ids)), (1, []), res)
        self.assertEqual(got, sent, "each message pushed once, in order")
        self.assertEqual(self.pushes(sub), [], "pushes after every message was acked")
        left = self.expect(acker.request(fetch=self.pb.FetchRequest(max_messages=100)),
                           "fetch_result")
        self.assertEqual(list(left.deliveries), [], "still pending after its ack")
        self.assertAlive(self.gw)

    def test_late_batched_acks_drain_the_backlog(self):
        """A slow subscriber (the soak's nhs-south) holds its pushes and acks
        them late, in batches, some on its own connection and some on
        another, while a sender keeps sending. Once the sender stops, what
        is left comes within seconds: each ack refills the window at once,
        and nothing waits in the store while the window has room."""
        police = self.connect("police")
        sub, other = self.subscribe(), self.connect("nhs")
        sent, got, held, batches = [], [], [], 0

        def take(f):
            d = self.expect(f, "delivery")
            got.append(d.gateway_id)
            held.append(d.gateway_id)

        def ack_held(k):
            nonlocal batches
            ids, held[:] = held[:k], held[k:]
            batches += 1
            if batches % 2:  # on the subscription: pushes may come before the AckResult
                sub.send_frame(self.pb.Frame(request_id=100 + batches,
                                             ack=self.pb.Ack(gateway_ids=ids)))
                while True:
                    f = sub.recv_frame(timeout=10 * isgtest.SLOW)
                    if f.WhichOneof("body") != "delivery":
                        break
                    take(f)
            else:
                f = other.request(ack=self.pb.Ack(gateway_ids=ids))
            res = self.expect(f, "ack_result")
            self.assertEqual((res.acknowledged, list(res.unknown_ids)), (len(ids), []), res)

        while len(sent) < 30:
            sent.append(self.accepted(police, "slow-%d" % len(sent),
                                      [{"nhs_number": NHS_A}]).gateway_id)
            try:
                take(sub.recv_frame(timeout=0.05 * isgtest.SLOW))
            except socket.timeout:
                pass
            if len(held) == 3 and len(sent) % 4 == 0:
                ack_held(2)  # late, and not all: one stays held
        # The sender stopped with a backlog; the subscriber goes on acking
        # what it holds (all but the newest push) whenever its window is full.
        deadline = time.monotonic() + 10 * isgtest.SLOW
        while len(got) < len(sent):
            if time.monotonic() > deadline:
                self.fail("%d of %d pushed within 10 s of the last send, %d held\n%s"
                          % (len(got), len(sent), len(held), self.gw.diagnostics()))
            try:
                take(sub.recv_frame(timeout=1.0 * isgtest.SLOW))
            except socket.timeout:
                if len(held) < 3:
                    self.fail("the subscription stalled with %d of 3 held, %d of %d pushed\n%s"
                              % (len(held), len(got), len(sent), self.gw.diagnostics()))
            if len(held) == 3:
                ack_held(2)
        ack_held(len(held))
        self.assertEqual(got, sent, "each message pushed once, in order")
        self.assertEqual(self.pushes(sub), [], "pushes after every message was acked")
        left = self.expect(other.request(fetch=self.pb.FetchRequest(max_messages=100)),
                           "fetch_result")
        self.assertEqual(list(left.deliveries), [], "still pending after its ack")
        self.assertAlive(self.gw)

    def test_acks_of_another_partner_leave_the_window_shut(self):
        """Only the subscriber's own partner's acks count: another partner
        naming the ids pushed to it (they come back unknown) must not let a
        subscriber past its window of unacknowledged pushes."""
        police = self.connect("police")
        ids = [self.accepted(police, "other-%d" % i, [{"nhs_number": NHS_A}]).gateway_id
               for i in range(5)]
        sub = self.subscribe()
        self.assertEqual(self.pushes(sub, want=3), ids[:3])
        res = self.expect(police.request(ack=self.pb.Ack(gateway_ids=ids[:3])), "ack_result")
        self.assertEqual((res.acknowledged, sorted(res.unknown_ids)), (0, ids[:3]), res)
        self.assertEqual(self.pushes(sub), [], "pushed past the window after another "
                         "partner's ack of its ids")
        self.assertAlive(self.gw)


class HalfCloser:
    """
    A partner that half-closes as Go's tls.Conn.CloseWrite or Java's
    SSLSocket.shutdownOutput does: it sends its close_notify and goes on
    reading. Python's SSLSocket cannot (its unwrap waits for the peer's
    close_notify), so TLS runs over memory BIOs on a plain socket.
    """

    def __init__(self, gw, cert, timeout, rcvbuf=None):
        ctx = isgtest.tls_context(cert, gw.pki.server_ca.cert)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:  # before connect, so the window it offers stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", gw.port))
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
        self._flush()
        self.buf = b""  # read, not yet a whole frame

    def close(self):
        self.sock.close()

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the gateway closed the TCP connection")
        self.incoming.write(data)

    def send_frames(self, frames):
        self.tls.write(b"".join(delimited(f.SerializeToString()) for f in frames))
        self._flush()

    def recv_frame(self, pb):
        """The next frame, before any close_notify of ours."""
        while True:
            head = isgtest.varint_decode(self.buf)
            if head is not None and len(self.buf) - head[1] >= head[0]:
                n, pos = head
                self.buf, frame = self.buf[pos + n:], self.buf[pos:pos + n]
                return pb.Frame.FromString(frame)
            try:
                self.buf += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._receive()

    def close_notify(self, tcp_eof=False):
        """Send close_notify (and with tcp_eof a TCP FIN after it), and read on."""
        # unwrap() sends close_notify, then looks for the gateway's, which
        # must not be there yet: nothing has been fed to the BIO since the handshake.
        assert self.incoming.pending == 0
        try:
            self.tls.unwrap()
            raise AssertionError("the gateway's close_notify came before ours")
        except ssl.SSLWantReadError:
            pass
        self._flush()
        if tcp_eof:
            self.sock.shutdown(socket.SHUT_WR)

    def read_to_end(self, pb):
        """Every frame the gateway sends until it closes, and whether it closed with close_notify."""
        buf, self.buf = self.buf, b""
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                data = None
            except ssl.SSLZeroReturnError:
                data = b""
            if data == b"":  # the gateway's close_notify (read returns b"" before ours is sent)
                notify = True
                break
            if data:
                buf += data
                continue
            try:
                self._receive()
            except (EOFError, ConnectionError):
                notify = False
                break
        frames = []
        while isgtest.varint_decode(buf) is not None:
            n, pos = isgtest.varint_decode(buf)
            if len(buf) - pos < n:
                break  # cut short: it was never sent whole
            frames.append(pb.Frame.FromString(buf[pos:pos + n]))
            buf = buf[pos + n:]
        return frames, notify


class TestHalfClose(HardeningCase):
    """
    A partner that pipelines its requests and half-closes (close_notify,
    then reading until the gateway closes) gets an answer to every request
    it sent before its close_notify, then the gateway's close_notify
    (protocol.md, Transport).
    """

    def setUp(self):
        super().setUp()
        self.gw = self.gateway()

    def half_closer(self, name):
        c = HalfCloser(self.gw, self.pki.certs[name], timeout=30 * isgtest.SLOW)
        self.addCleanup(c.close)
        return c

    def answers(self, conn, started, within):
        frames, notify = conn.read_to_end(self.pb)
        took = time.monotonic() - started
        self.assertTrue(notify, "the gateway closed without close_notify after %d frames\n%s"
                        % (len(frames), self.gw.diagnostics()))
        self.assertLess(took, within * isgtest.SLOW, "the answers took %.1fs" % took)
        return {f.request_id: f for f in frames}

    def test_pipelined_sends_answered_after_close_notify(self):
        pb = self.pb
        sent = []
        for tcp_eof in (False, True):  # close_notify alone, then followed by a TCP FIN
            with self.subTest(tcp_eof=tcp_eof):
                c = self.half_closer("police")
                ids = ["half-%d-%d" % (tcp_eof, i) for i in range(20)]
                sent += ids  # stored, answered or not
                frames = [pb.Frame(request_id=100 + i, send=self.send_request(
                    mid, [{"nhs_number": NHS_A, "family_name": NAME_A}])) for i, mid in enumerate(ids)]
                frames.insert(5, pb.Frame(request_id=1, ping=pb.Ping(nonce=7)))
                # one the agreement refuses, on record through the store as well
                frames.insert(12, pb.Frame(request_id=2, send=self.send_request(
                    "half-refused-%d" % tcp_eof, [{"nhs_number": NHS_A}], recipient="city-council")))
                t0 = time.monotonic()
                c.send_frames(frames)
                c.close_notify(tcp_eof=tcp_eof)
                got = self.answers(c, t0, within=10)
                self.assertEqual(sorted(got), sorted(f.request_id for f in frames),
                                 "answered request ids")
                self.assertEqual(self.expect(got[1], "pong").nonce, 7)
                self.expect_error(got[2], pb.NOT_PERMITTED, "agreement.recipient")
                for i in range(20):
                    receipt = self.expect(got[100 + i], "send_result").receipt
                    self.assertEqual(receipt.message_id, ids[i])
                    self.assertGreater(receipt.gateway_id, 0)
                    self.assertFalse(receipt.duplicate)
        self.assertEqual(self.gw.log.count("reason=close_notify"), 2, self.gw.diagnostics())
        self.assertServing(pending=sent)

    def test_waiting_fetch_answered_at_once(self):
        """A long-poll fetch is answered when the partner half-closes, not at its deadline."""
        pb = self.pb
        nhs = self.half_closer("nhs")
        # The ack goes through the store behind the fetch's look, and its
        # answer comes back after that look's: once it is here the fetch
        # found nothing and waits.
        nhs.send_frames([pb.Frame(request_id=3, fetch=pb.FetchRequest(max_messages=10, wait_ms=40000)),
                         pb.Frame(request_id=8, ack=pb.Ack(gateway_ids=[2**62]))])
        acked = self.expect(nhs.recv_frame(pb), "ack_result")
        self.assertEqual(acked.acknowledged, 0)
        t0 = time.monotonic()
        nhs.close_notify()
        got = self.answers(nhs, t0, within=5)
        self.assertEqual(list(got), [3])
        self.assertEqual(len(self.expect(got[3], "fetch_result").deliveries), 0)

        # what is pending goes in the answer
        police = self.connect("police")
        kept = self.accepted(police, "half-fetched", [{"nhs_number": NHS_A, "family_name": NAME_A}])
        nhs = self.half_closer("nhs")
        t0 = time.monotonic()
        nhs.send_frames([pb.Frame(request_id=4, fetch=pb.FetchRequest(max_messages=10, wait_ms=40000))])
        nhs.close_notify()
        got = self.answers(nhs, t0, within=5)
        self.assertEqual(list(got), [4])
        fetched = self.expect(got[4], "fetch_result")
        self.assertEqual([d.gateway_id for d in fetched.deliveries], [kept.gateway_id])
        self.assertServing(pending=["half-fetched"])  # fetched, never acked: still pending

    def test_subscription_ends(self):
        """A subscription on a half-closed connection pushes no more; the gateway closes
        at once, and what was pushed and not acked stays pending."""
        pb = self.pb
        police = self.connect("police")
        first = self.accepted(police, "half-sub-1", [{"nhs_number": NHS_A}])
        nhs = self.half_closer("nhs")
        nhs.send_frames([pb.Frame(request_id=5, subscribe=pb.Subscribe()),
                         pb.Frame(request_id=6, ping=pb.Ping(nonce=9))])
        # The push of half-sub-1 read before the close_notify, however long it takes.
        frames = [nhs.recv_frame(pb), nhs.recv_frame(pb)]
        self.assertEqual([(f.request_id, f.WhichOneof("body")) for f in frames],
                         [(6, "pong"), (5, "delivery")])
        self.assertEqual(frames[1].delivery.gateway_id, first.gateway_id)
        t0 = time.monotonic()
        nhs.close_notify()
        frames, notify = nhs.read_to_end(pb)
        self.assertTrue(notify, self.gw.diagnostics())
        self.assertLess(time.monotonic() - t0, 5 * isgtest.SLOW)
        self.assertEqual(frames, [], "pushed after the close_notify")
        self.assertServing(pending=["half-sub-1"])

    def test_half_closed_with_answers_unread(self):
        """A partner that half-closes and does not read what it is owed is cut
        idle_timeout after its close_notify, without the gateway's close_notify."""
        pb = self.pb
        idle = int(2 * isgtest.SLOW)  # valgrind: room for a 10 MB fetch answer within it
        gw = self.gateway(name="gw-big", limits={
            "idle_timeout": "%ds" % idle, "max_frame": "16MiB", "connection_buffer": "32MiB"})
        police = self.connect("police", gw)
        for i in range(4):  # a fetch answer of 10 MB: more than the sockets between hold
            self.accepted(police, "unread-%d" % i, [{"nhs_number": NHS_A, "concern_summary": "x" * 2500000}])
        c = HalfCloser(gw, self.pki.certs["nhs"], timeout=30 * isgtest.SLOW, rcvbuf=4096)
        self.addCleanup(c.close)
        c.send_frames([pb.Frame(request_id=9, fetch=pb.FetchRequest(max_messages=10))])
        # Timed from before the close_notify is sent: isgd's bound starts
        # when it reads it, later however slow this process is, and its
        # clock (CLOCK_MONOTONIC, in ms) is time.monotonic's.
        t0 = time.monotonic()
        c.close_notify()
        while "event=conn.half_close_timeout" not in gw.log:
            if time.monotonic() - t0 > 30 * isgtest.SLOW:
                self.fail("no conn.half_close_timeout\n" + gw.diagnostics())
            time.sleep(0.2)
        self.assertGreater(time.monotonic() - t0, idle - 0.01, "cut before idle_timeout")
        frames, notify = c.read_to_end(pb)
        self.assertEqual(frames, [], "the 10 MB answer came whole")
        self.assertFalse(notify, "close_notify with an answer owed")
        self.assertServing(gw, pending=["unread-%d" % i for i in range(4)])


if __name__ == "__main__":
    unittest.main()
