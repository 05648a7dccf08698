"""
Scenario: a partner written in Python, with nothing from ISG but
proto/isg.proto. It compiles the proto with protoc at test time, connects
with the ssl module (TLS 1.3, client certificate, gateway verified against
its CA), and frames each isg.Frame with a varint length prefix.
"""

import socket
import ssl
import time
import unittest

import isgtest
from isgtest import AGREEMENT_ID, DATASET, pb_record, pb_record_dict

NHS_A = "9434765919"
NHS_B = "6281948211"


class PythonPartnerTest(isgtest.ScenarioCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pb = isgtest.isg_pb2()

    def setUp(self):
        super().setUp()
        self.gw = self.gateway()

    def connect(self, name, **kw):
        c = isgtest.FrameConn(self.gw, self.pki.certs[name], **kw)
        self.addCleanup(c.close)
        return c

    def expect(self, reply, body):
        kind = reply.WhichOneof("body")
        if kind != body:
            self.fail("expected %s, got %s:\n%s\n%s" % (body, kind, reply, self.gw.diagnostics()))
        return getattr(reply, body)

    def send_request(self, message_id, records, recipient="nhs-trust", agreement=AGREEMENT_ID, dataset=DATASET):
        req = self.pb.SendRequest(message_id=message_id, recipient=recipient, agreement_id=agreement,
                                  dataset=dataset)
        req.records.extend(pb_record(self.pb, r) for r in records)
        return req

    def test_hello_welcome(self):
        for name, pid, pname, host in [("police", "met-police", "Metropolitan Police Service", "localhost"),
                                       ("nhs", "nhs-trust", "Example NHS Foundation Trust", "127.0.0.1")]:
            c = self.connect(name, server_hostname=host)
            self.assertEqual(c.sock.version(), "TLSv1.3")
            w = self.expect(c.request(hello=self.pb.Hello(protocol_version=1, client_name="pytest/1")), "welcome")
            self.assertEqual(w.protocol_version, 1)
            self.assertEqual(w.partner_id, pid)
            self.assertEqual(w.partner_name, pname)
            self.assertTrue(w.policy_version)

    def test_unsupported_protocol_version(self):
        c = self.connect("police")
        e = self.expect(c.request(hello=self.pb.Hello(protocol_version=99)), "error")
        self.assertEqual(e.code, self.pb.UNSUPPORTED)

    def test_send_fetch_ack(self):
        pb = self.pb
        records = [
            {"nhs_number": NHS_A, "family_name": "featherstonehaugh", "age": 42, "risk_score": 0.75,
             "urgent": True, "concern_date": "2026-03-14", "officer_notes": "not for the NHS"},
            {"nhs_number": NHS_B, "age": -3, "risk_score": 2.5e-3, "urgent": False},
        ]
        police = self.connect("police")
        self.expect(police.request(hello=pb.Hello(protocol_version=1, client_name="pytest/1")), "welcome")
        before_ms = int(time.time() * 1000)
        receipt = self.expect(police.request(send=self.send_request("py-0001", records)), "send_result").receipt
        self.assertEqual(receipt.message_id, "py-0001")
        self.assertGreater(receipt.gateway_id, 0)
        self.assertFalse(receipt.duplicate)
        self.assertEqual(receipt.record_count, 2)
        self.assertTrue(receipt.policy_version)
        self.assertLess(abs(receipt.accepted_at_ms - before_ms), 60_000)

        # the recipient, on its own connection (no Hello: it is optional)
        nhs = self.connect("nhs", server_hostname="127.0.0.1")
        fetched = self.expect(nhs.request(fetch=pb.FetchRequest(max_messages=10)), "fetch_result")
        self.assertEqual(len(fetched.deliveries), 1, fetched)
        d = fetched.deliveries[0]
        self.assertEqual(d.gateway_id, receipt.gateway_id)
        self.assertEqual(d.message_id, "py-0001")
        self.assertEqual(d.sender, "met-police")
        self.assertEqual(d.agreement_id, AGREEMENT_ID)
        self.assertEqual(d.agreement_version, 1)
        self.assertEqual(d.dataset, DATASET)
        self.assertIn("adult-safeguarding", d.purpose)
        self.assertEqual(d.reply_to, 0)
        self.assertEqual(d.accepted_at_ms, receipt.accepted_at_ms)
        got = [pb_record_dict(r) for r in d.records]
        expected = [dict(records[0]), records[1]]
        del expected[0]["officer_notes"]
        self.assertEqual(got, expected)
        # each value keeps its kind in the oneof
        kinds = {f.name: f.value.WhichOneof("kind") for f in d.records[0].fields}
        self.assertEqual(kinds, {"nhs_number": "text", "family_name": "text", "age": "integer",
                                 "risk_score": "real", "urgent": "boolean", "concern_date": "text"})

        ack = self.expect(nhs.request(ack=pb.Ack(gateway_ids=[d.gateway_id])), "ack_result")
        self.assertEqual(ack.acknowledged, 1)
        self.assertEqual(list(ack.unknown_ids), [])
        again = self.expect(nhs.request(fetch=pb.FetchRequest()), "fetch_result")
        self.assertEqual(len(again.deliveries), 0)
        # acking again, or acking what never existed, names the unknown ids
        ack = self.expect(nhs.request(ack=pb.Ack(gateway_ids=[d.gateway_id, 999999])), "ack_result")
        self.assertEqual(ack.acknowledged, 0)
        self.assertEqual(sorted(ack.unknown_ids), sorted([d.gateway_id, 999999]))

    def test_an_id_given_twice_in_one_ack_counts_once(self):
        """Acknowledged once, never also unknown; an unknown id given twice is named once."""
        pb = self.pb
        police = self.connect("police")
        ids = [self.expect(police.request(send=self.send_request("py-twice-%d" % i, [{"nhs_number": NHS_A}])),
                           "send_result").receipt.gateway_id for i in range(2)]
        nhs = self.connect("nhs")
        fetched = self.expect(nhs.request(fetch=pb.FetchRequest()), "fetch_result")
        self.assertEqual([d.gateway_id for d in fetched.deliveries], ids)
        ack = self.expect(nhs.request(ack=pb.Ack(gateway_ids=[ids[0], ids[0]])), "ack_result")
        self.assertEqual((ack.acknowledged, list(ack.unknown_ids)), (1, []))
        ack = self.expect(nhs.request(ack=pb.Ack(gateway_ids=[ids[1], 999999, ids[1], 999999, ids[0]])),
                          "ack_result")
        self.assertEqual((ack.acknowledged, sorted(ack.unknown_ids)), (1, sorted([999999, ids[0]])))
        self.assertEqual(len(self.expect(nhs.request(fetch=pb.FetchRequest()), "fetch_result").deliveries), 0)

    def test_cannot_ack_someone_elses_message(self):
        pb = self.pb
        police = self.connect("police")
        receipt = self.expect(police.request(send=self.send_request("py-0002", [{"nhs_number": NHS_A}])),
                              "send_result").receipt
        ack = self.expect(police.request(ack=pb.Ack(gateway_ids=[receipt.gateway_id])), "ack_result")
        self.assertEqual(ack.acknowledged, 0)
        self.assertEqual(list(ack.unknown_ids), [receipt.gateway_id])
        nhs = self.connect("nhs")
        fetched = self.expect(nhs.request(fetch=pb.FetchRequest()), "fetch_result")
        self.assertEqual([x.gateway_id for x in fetched.deliveries], [receipt.gateway_id])

    def test_refused_send_error_frame(self):
        pb = self.pb
        police = self.connect("police")
        secret = "Zephyrine-Unlisted-7781"
        req = self.send_request("py-bad-1", [{"nhs_number": NHS_A}, {"nhs_number": NHS_B, "shoe_size": secret}])
        reply = police.request(send=req)
        e = self.expect(reply, "error")
        self.assertEqual(e.code, pb.UNKNOWN_FIELD)
        self.assertEqual(e.rule, "dataset.unknown_field")
        self.assertEqual(e.record_index, 1)
        self.assertEqual(e.field, "shoe_size")
        self.assertTrue(e.message)
        self.assertNotIn(secret, e.message)

        e = self.expect(police.request(send=self.send_request("py-bad-2", [{"age": 3}])), "error")
        self.assertEqual((e.code, e.rule, e.record_index, e.field),
                         (pb.MISSING_FIELD, "dataset.required_field", 0, "nhs_number"))

        e = self.expect(police.request(send=self.send_request("py-bad-3", [{"nhs_number": NHS_A, "age": "old"}])),
                        "error")
        self.assertEqual((e.code, e.rule, e.record_index, e.field), (pb.BAD_VALUE, "dataset.field_type", 0, "age"))

        e = self.expect(police.request(send=self.send_request("py-bad-4", [{"nhs_number": NHS_A}],
                                                              recipient="city-council")), "error")
        self.assertEqual((e.code, e.rule, e.record_index), (pb.NOT_PERMITTED, "agreement.recipient", -1))

        # the connection is still usable after refusals
        pong = self.expect(police.request(ping=pb.Ping(nonce=0xDEADBEEF)), "pong")
        self.assertEqual(pong.nonce, 0xDEADBEEF)
        nhs = self.connect("nhs")
        fetched = self.expect(nhs.request(fetch=pb.FetchRequest()), "fetch_result")
        self.assertEqual(len(fetched.deliveries), 0)

    def test_pipelined_requests(self):
        """protocol.md: requests may be pipelined, answers matched by
        request_id. Twenty sends (one refused) and a ping go out in one
        write before any answer is read; each gets its own answer."""
        pb = self.pb
        police = self.connect("police")
        frames = []
        for i in range(20):
            rec = {"nhs_number": NHS_A, "age": i}
            if i == 7:
                rec["shoe_size"] = "11"
            frames.append(pb.Frame(request_id=100 + i, send=self.send_request("py-pipe-%d" % i, [rec])))
        frames.append(pb.Frame(request_id=200, ping=pb.Ping(nonce=42)))
        police.send_raw(b"".join(isgtest.varint_encode(f.ByteSize()) + f.SerializeToString() for f in frames))
        answers = {}
        for _ in frames:
            f = police.recv_frame()
            self.assertNotIn(f.request_id, answers, "two answers for one request")
            answers[f.request_id] = f
        self.assertEqual(sorted(answers), sorted(f.request_id for f in frames))
        self.assertEqual(self.expect(answers[200], "pong").nonce, 42)
        e = self.expect(answers[107], "error")
        self.assertEqual((e.code, e.record_index, e.field), (pb.UNKNOWN_FIELD, 0, "shoe_size"))
        ids = {}
        for i in range(20):
            if i != 7:
                r = self.expect(answers[100 + i], "send_result").receipt
                self.assertEqual(r.message_id, "py-pipe-%d" % i)
                ids[r.gateway_id] = i
        self.assertEqual(len(ids), 19)
        nhs = self.connect("nhs")
        got = self.expect(nhs.request(fetch=pb.FetchRequest(max_messages=50)), "fetch_result")
        self.assertEqual(sorted(d.gateway_id for d in got.deliveries), sorted(ids))
        for d in got.deliveries:
            self.assertEqual(d.message_id, "py-pipe-%d" % ids[d.gateway_id])

    def test_sender_not_named(self):
        pb = self.pb
        nhs = self.connect("nhs")
        req = self.send_request("py-rev-1", [{"nhs_number": NHS_A}], recipient="met-police")
        e = self.expect(nhs.request(send=req), "error")
        self.assertEqual((e.code, e.rule), (pb.NOT_PERMITTED, "agreement.sender"))

    def test_oversized_frame_refused_before_allocation(self):
        pb = self.pb
        c = self.connect("police")
        # a length prefix of 1 TiB with no body: the gateway must refuse it at once
        c.send_raw(isgtest.varint_encode(1 << 40))
        try:
            reply = c.recv_frame(timeout=5 * isgtest.SLOW)
            self.assertEqual(self.expect(reply, "error").code, pb.BAD_FRAME)
        except (EOFError, ConnectionError, ssl.SSLError):
            pass  # closing the connection is an acceptable answer too
        except socket.timeout:
            self.fail("no answer to an oversized frame within 5s\n" + self.gw.diagnostics())
        self.assertAlive(self.gw)
        w = self.expect(self.connect("police").request(hello=pb.Hello(protocol_version=1)), "welcome")
        self.assertEqual(w.partner_id, "met-police")

    def test_garbage_frames(self):
        pb = self.pb
        for garbage in [isgtest.varint_encode(5) + b"\xff\xff\xff\xff\xff",  # not a Frame
                        b"\xff" * 11]:  # a length prefix longer than any varint
            c = self.connect("police")
            c.send_raw(garbage)
            try:
                self.assertEqual(self.expect(c.recv_frame(timeout=5 * isgtest.SLOW), "error").code, pb.BAD_FRAME)
            except (EOFError, ConnectionError, ssl.SSLError):
                pass
            except socket.timeout:
                self.fail("no answer to a garbage frame within 5s\n" + self.gw.diagnostics())
            self.assertAlive(self.gw)
        self.expect(self.connect("police").request(ping=pb.Ping(nonce=1)), "pong")


if __name__ == "__main__":
    unittest.main()
