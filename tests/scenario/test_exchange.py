"""
Scenario: partners exchange records through the real isgd with isgctl.

Each test starts its own gateway in a temporary directory with a freshly
generated PKI (shared within the process), a small policy directory and a
fresh store and key set, and stops it at the end (exit code 0 expected on
SIGTERM). On failure the isgd log tail is printed.
"""

import json
import os
import re
import signal
import socket
import ssl
import sqlite3
import subprocess
import time
import unittest

import isgtest
from isgtest import AGREEMENT_ID, DATASET, POLICE_CN

# Identifier values: distinctive so a search of the store and the log cannot
# hit them by chance. The NHS numbers have valid check digits.
NHS_A = "9434765919"
NHS_B = "6281948211"
NHS_C = "1860913903"
# Names already in every plausible canonical form (lowercase ASCII letters),
# so these tests do not depend on how the name type is normalised;
# test_pass_delivers_values_as_sent covers that.
NAME_A = "featherstonehaugh"
NAME_B = "okonkwo"
NAME_C = "quixleyworth"
NOTES = "Disclosed at Qzvbx Lane by informant Wrexlington"
SECRET_UNKNOWN = "Zephyrine-Unlisted-7781"

RECORD_A = {"nhs_number": NHS_A, "family_name": NAME_A, "age": 42, "risk_score": 0.75, "urgent": True,
            "concern_date": "2026-03-14"}
RECORD_B = {"nhs_number": NHS_B, "family_name": NAME_B, "age": 87, "urgent": False}


def without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def _pki_cert(pki, name, make):
    """A certificate made once per process, on first use."""
    return pki.certs[name] if name in pki.certs else make()


class ExchangeCase(isgtest.ScenarioCase):
    def start(self, **overrides):
        gw = self.gateway(**overrides)
        return gw, self.partner(gw, "police"), self.partner(gw, "nhs")

    def assertNothingPending(self, partner):
        msgs = partner.fetch_messages()
        self.assertEqual(msgs, [], "expected no pending message for %s" % partner.cert.name)

    def assertReceipt(self, receipt, records, message_id=None, duplicate=False):
        for key in ["message_id", "gateway_id", "audit_index", "accepted_at", "duplicate", "records",
                    "policy_version"]:
            self.assertIn(key, receipt, "receipt lacks %r: %r" % (key, receipt))
        if message_id is not None:
            self.assertEqual(receipt["message_id"], message_id)
        self.assertTrue(receipt["message_id"], "empty message_id in receipt")
        self.assertIsInstance(receipt["gateway_id"], int)
        self.assertGreater(receipt["gateway_id"], 0)
        self.assertIsInstance(receipt["audit_index"], int)
        self.assertIs(receipt["duplicate"], duplicate)
        self.assertEqual(receipt["records"], records)
        self.assertTrue(receipt["policy_version"])

    def wait_for_log(self, gw, since, pattern, timeout=3.0):
        """The first log line after offset `since` matching regex `pattern`, or None."""
        rx = re.compile(pattern, re.I)
        deadline = time.monotonic() + timeout
        while True:
            for line in gw.log[since:].splitlines():
                if not line.startswith("#") and rx.search(line):
                    return line
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


class TestDelivery(ExchangeCase):
    def test_whoami(self):
        gw, police, nhs = self.start()
        r = police.whoami()
        self.assertCtl(r, 0, gw)
        self.assertIn("met-police", r.out)
        r = nhs.whoami()
        self.assertCtl(r, 0, gw)
        self.assertIn("nhs-trust", r.out)

    def test_send_jsonl_and_csv_fetch_and_ack(self):
        """(a) JSONL and CSV sends arrive with their fields and types; acked messages are gone."""
        gw, police, nhs = self.start()
        r1 = police.send_ok([RECORD_A, RECORD_B], message_id="jsonl-0001", fmt="jsonl")
        self.assertReceipt(r1, 2, "jsonl-0001")
        csv_record = {"nhs_number": NHS_C, "family_name": NAME_C, "age": 19, "urgent": True,
                      "concern_date": "2026-04-01"}
        r2 = police.send_ok([csv_record], message_id="csv-0001", fmt="csv")
        self.assertReceipt(r2, 1, "csv-0001")
        self.assertNotEqual(r1["gateway_id"], r2["gateway_id"])

        msgs = nhs.fetch_messages()
        self.assertEqual(len(msgs), 2, msgs)
        by_id = {m.get("message_id"): m for m in msgs}
        self.assertEqual(set(by_id), {"jsonl-0001", "csv-0001"})
        for m, receipt in [(by_id["jsonl-0001"], r1), (by_id["csv-0001"], r2)]:
            self.assertEqual(m["gateway_id"], receipt["gateway_id"])
            self.assertEqual(m["sender"], "met-police")
            self.assertEqual(m["agreement_id"], AGREEMENT_ID)
            self.assertEqual(m["agreement_version"], 1)
            self.assertEqual(m["dataset"], DATASET)
            self.assertIn("adult-safeguarding", m["purpose"])
            self.assertIn(m.get("reply_to"), (None, 0))
            self.assertTrue(m["accepted_at"])

        # JSONL: every value with its JSON type (int stays int, bool stays bool)
        got = by_id["jsonl-0001"]["records"]
        self.assertEqual(got, [RECORD_A, RECORD_B])
        self.assertIs(type(got[0]["age"]), int)
        self.assertIs(type(got[0]["risk_score"]), float)
        self.assertIs(got[0]["urgent"], True)
        self.assertIs(got[1]["urgent"], False)
        self.assertIs(type(got[0]["nhs_number"]), str)
        # CSV: the agreement's types apply (digits of an NHS number stay text)
        got = by_id["csv-0001"]["records"]
        self.assertEqual(got, [csv_record])
        self.assertIs(type(got[0]["age"]), int)
        self.assertIs(type(got[0]["nhs_number"]), str)

        # acknowledged by the first fetch: nothing left
        self.assertNothingPending(nhs)
        # and nothing was ever meant for the sender
        self.assertNothingPending(police)

    def test_fetch_no_ack_redelivers(self):
        gw, police, nhs = self.start()
        receipt = police.send_ok([RECORD_B])
        first = nhs.fetch_messages(no_ack=True)
        self.assertEqual([m["gateway_id"] for m in first], [receipt["gateway_id"]])
        second = nhs.fetch_messages()
        self.assertEqual([m["gateway_id"] for m in second], [receipt["gateway_id"]])
        self.assertNothingPending(nhs)

    def test_pass_delivers_values_as_sent(self):
        """Action pass lets the value through as the sender wrote it (validated, not folded)."""
        gw, police, nhs = self.start()
        rec = {"nhs_number": NHS_C, "family_name": "O'Brien-Smythe", "age": 61}
        police.send_ok([rec])
        msgs = nhs.fetch_messages()
        self.assertEqual(len(msgs), 1, msgs)
        self.assertEqual(msgs[0]["records"], [rec])

    def test_dropped_field_does_not_arrive(self):
        """(b) a field with action drop is removed; the rest of the record arrives."""
        gw, police, nhs = self.start()
        police.send_ok([dict(RECORD_A, officer_notes=NOTES)])
        r = nhs.fetch()
        self.assertCtl(r, 0, gw)
        msgs = [json.loads(line) for line in r.out.splitlines() if line.strip()]
        self.assertEqual(len(msgs), 1, r)
        rec = msgs[0]["records"][0]
        self.assertNotIn("officer_notes", rec)
        self.assertEqual(rec, RECORD_A)
        self.assertNotIn(NOTES, r.out)

    def test_resend_same_message_id_is_idempotent(self):
        """(d) the same message_id twice: one receipt, one delivery."""
        gw, police, nhs = self.start()
        first = police.send_ok([RECORD_A], message_id="case-2026-0001")
        self.assertReceipt(first, 1, "case-2026-0001")
        again = police.send_ok([RECORD_A], message_id="case-2026-0001")
        self.assertReceipt(again, 1, "case-2026-0001", duplicate=True)
        self.assertEqual(again["gateway_id"], first["gateway_id"])
        msgs = nhs.fetch_messages()
        self.assertEqual(len(msgs), 1, msgs)
        self.assertEqual(msgs[0]["gateway_id"], first["gateway_id"])
        self.assertNothingPending(nhs)

    def test_message_id_reused_with_other_content_conflicts(self):
        gw, police, nhs = self.start()
        police.send_ok([RECORD_A], message_id="case-2026-0002")
        r = police.send([RECORD_B], message_id="case-2026-0002")
        self.assertCtl(r, 3, gw, "CONFLICT")
        self.assertEqual(len(nhs.fetch_messages()), 1)

    def test_durable_after_sigkill(self):
        """(e) an acknowledged send survives SIGKILL of isgd."""
        gw, police, nhs = self.start()
        receipt = police.send_ok([RECORD_A, RECORD_B], message_id="durable-1")
        gw.kill()
        gw.start()
        # idempotency survives the restart too
        again = police.send_ok([RECORD_A, RECORD_B], message_id="durable-1")
        self.assertIs(again["duplicate"], True)
        self.assertEqual(again["gateway_id"], receipt["gateway_id"])
        msgs = nhs.fetch_messages()
        self.assertEqual(len(msgs), 1, msgs)
        self.assertEqual(msgs[0]["gateway_id"], receipt["gateway_id"])
        self.assertEqual(msgs[0]["records"], [RECORD_A, RECORD_B])
        self.assertNothingPending(nhs)


class TestDeliveredMeansSent(ExchangeCase):
    def delivered_count(self, gw):
        db = sqlite3.connect("file:%s?mode=ro" % gw.store_path, uri=True)
        try:
            return db.execute(
                "SELECT count(*) FROM audit WHERE kind = 'message.delivered'").fetchone()[0]
        finally:
            db.close()

    def test_an_answer_over_the_frame_limit_audits_only_what_it_holds(self):
        """A fetch whose pending messages fill more than one answer gets as
        many as fit in limits.max_frame, and only those are audited as
        delivered: a partner that then goes away never received the rest.
        The store once counted sealed payloads against the limit, the answer
        payloads with their metadata and framing, and the store's extra
        messages were audited "message.delivered" and left out of the answer."""
        gw = self.gateway(limits={"max_frame": "64KiB", "connection_buffer": "64KiB"})
        pb = isgtest.isg_pb2()
        n_msgs = 16
        with isgtest.FrameConn(gw, self.pki.certs["police"]) as police:
            for i in range(n_msgs):
                police.send_ok("sized-%d" % i, [{"nhs_number": NHS_A,
                                                 "concern_summary": "y" * 5800}])
        with isgtest.FrameConn(gw, self.pki.certs["nhs"]) as nhs:
            f = nhs.request(fetch=pb.FetchRequest(max_messages=0, wait_ms=0))
            self.assertEqual(f.WhichOneof("body"), "fetch_result", f)
            got = len(f.fetch_result.deliveries)
            self.assertLessEqual(nhs.last_frame_len, 64 * 1024)
        self.assertGreater(got, 0)
        self.assertLess(got, n_msgs, "the frame limit did not bite: the test proves nothing")
        time.sleep(0.2)
        self.assertEqual(self.delivered_count(gw), got,
                         "audited as delivered, of %d handed out\n%s" % (got, gw.diagnostics()))


class TestResendAfterChange(ExchangeCase):
    """
    A resend of an accepted message (same message_id, same content) gets its
    receipt even when what was agreed has changed since and would refuse it
    now: the message is stored and will be delivered, and the partner resends
    because it lost the receipt. Anything else is refused as before.
    """

    def refused_ids(self, gw):
        """The message_id of every message.refused entry in the audit log."""
        r = isgtest.ctl("audit", "list", "--config", gw.config_path, "--kind", "message.refused",
                        "--format", "jsonl")
        self.assertEqual(r.rc, 0, r)
        return [json.loads(line)["entry"]["message_id"] for line in r.out.splitlines()]

    def assertSameReceipt(self, again, first, records):
        self.assertReceipt(again, records, first["message_id"], duplicate=True)
        self.assertEqual(again["gateway_id"], first["gateway_id"])
        self.assertEqual(again["audit_index"], first["audit_index"])

    def check_after_change(self, gw, police, nhs, first, rule, code="NOT_PERMITTED"):
        """The resend of `first` ([RECORD_A]) is answered; a new id and the id
        with other content are refused by `rule`; only those two are audited."""
        refused_before = self.refused_ids(gw)
        again = police.send_ok([RECORD_A], message_id=first["message_id"])
        self.assertSameReceipt(again, first, 1)
        self.assertEqual(self.refused_ids(gw), refused_before)
        new_id = first["message_id"] + "-new"
        self.assertRefused(police.send([RECORD_A], message_id=new_id), gw, code, rule)
        self.assertRefused(police.send([RECORD_B], message_id=first["message_id"]), gw, code, rule)
        self.assertEqual(self.refused_ids(gw), refused_before + [new_id, first["message_id"]])
        msgs = nhs.fetch_messages()
        self.assertEqual([(m["gateway_id"], m["records"]) for m in msgs],
                         [(first["gateway_id"], [RECORD_A])])

    def test_after_the_agreement_ended(self):
        gw, police, nhs = self.start()
        first = police.send_ok([RECORD_A], message_id="ended-1")
        isgtest.write_policy(gw.policy_dir, agreements=[isgtest.default_agreement(
            version=2, valid_from="2020-01-01", valid_until="2021-12-31")])
        self.assertEqual(gw.reload()[0], "loaded")
        self.check_after_change(gw, police, nhs, first, "agreement.validity")

    def test_after_the_sender_was_removed(self):
        gw, police, nhs = self.start()
        first = police.send_ok([RECORD_A], message_id="sender-1")
        isgtest.write_policy(gw.policy_dir, agreements=[isgtest.default_agreement(
            version=2, senders=["city-council"])])
        self.assertEqual(gw.reload()[0], "loaded")
        self.check_after_change(gw, police, nhs, first, "agreement.sender")

    def test_after_the_dataset_was_removed(self):
        gw, police, nhs = self.start()
        first = police.send_ok([RECORD_A], message_id="dataset-1")
        agreement = isgtest.default_agreement(version=2)
        agreement["datasets"][0]["name"] = "another-dataset"
        isgtest.write_policy(gw.policy_dir, agreements=[agreement])
        self.assertEqual(gw.reload()[0], "loaded")
        self.check_after_change(gw, police, nhs, first, "agreement.dataset")

    def test_after_the_gateway_limits_were_lowered(self):
        """limits.max_frame lowered below the message's delivery (though not
        below its request), and limits.max_records_per_message below its count."""
        gw, police, nhs = self.start()
        big = dict(RECORD_A, concern_summary="s" * 750)
        two = [RECORD_A, RECORD_B]
        first_big = police.send_ok([big], message_id="big-1")
        first_two = police.send_ok(two, message_id="two-1")
        gw.stop()
        gw.config["limits"].update(max_frame="1KiB", max_records_per_message=1)
        gw.write_config()
        gw.start()
        refused_before = self.refused_ids(gw)
        self.assertSameReceipt(police.send_ok([big], message_id="big-1"), first_big, 1)
        self.assertSameReceipt(police.send_ok(two, message_id="two-1"), first_two, 2)
        self.assertEqual(self.refused_ids(gw), refused_before)
        # New messages like them are refused, for the delivery's size (the
        # request itself fits in a frame) and for the number of records.
        self.assertRefused(police.send([big], message_id="big-2"), gw, "LIMIT_EXCEEDED",
                           "gateway.max_frame")
        self.assertRefused(police.send(two, message_id="two-2"), gw, "LIMIT_EXCEEDED",
                           "gateway.max_records_per_message")
        self.assertEqual(self.refused_ids(gw), refused_before + ["big-2", "two-2"])


class TestPipelining(ExchangeCase):
    def test_pipelined_sends_through_the_c_library(self):
        """libisgclient's isg_client_send_start and _finish against the real
        isgd, through the benchmark's load generator: two police connections
        keep 8 sends each in flight while the two recipients take every
        message by subscription and acknowledge it. isg-bench-load fails on
        any refused send, missing receipt or missing delivery; the audit log
        then holds each message accepted, delivered and acknowledged once."""
        bench = isgtest.policy_tree("tests/bench/policies")
        gw = self.gateway(policy_dir=bench, domains=("bench",))
        certs = self.pki.certs

        def recipient(partner, name):
            return "%s:%s:%s" % (partner, certs[name].cert, certs[name].key)

        senders, messages = 2, 40
        r = subprocess.run(
            [os.path.join(isgtest.BIN, "isg-bench-load"), "--gateway", gw.address,
             "--ca", self.pki.server_ca.cert, "--cert", certs["police"].cert,
             "--key", certs["police"].key, "--recipient", recipient("nhs-trust", "nhs"),
             "--recipient", recipient("city-council", "council"),
             "--agreement", "bench-referral", "--dataset", "referral",
             "--senders", str(senders), "--window", "8", "--messages", str(messages),
             "--records", "5", "--runs", "1", "--label", "pipelined"],
            capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"RESULT pipelined records=5 senders=2 window=8 recipients=2 ")
        for kind in ("message.accepted", "message.delivered", "message.acknowledged"):
            out = isgtest.ctl("audit", "list", "--kind", kind, "--format", "jsonl",
                              "--config", gw.config_path)
            self.assertEqual(out.rc, 0, str(out))
            ids = [json.loads(line)["entry"]["message_id"] for line in out.out.splitlines()]
            self.assertEqual(len(ids), senders * messages, kind)
            self.assertEqual(len(set(ids)), senders * messages, kind)


def _ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@unittest.skipUnless(_ipv6_loopback(), "no IPv6 loopback")
class TestIPv6(ExchangeCase):
    def test_exchange_over_ipv6(self):
        """listen: "[::1]:PORT" serves partners; the log writes v6 addresses in brackets."""
        gw = self.gateway(start=False)
        gw.config["listen"] = "[::1]:%d" % gw.port
        gw.write_config()
        gw.start()
        self.assertIn("listen=[::1]:%d " % gw.port, gw.log)
        police, nhs = self.partner(gw, "police"), self.partner(gw, "nhs")
        police.send_ok([RECORD_A])
        msgs = nhs.fetch_messages()
        self.assertEqual([m["records"] for m in msgs], [[without(RECORD_A, "officer_notes")]])
        self.assertRegex(gw.log, r"peer=\[::1\]:\d+ ")
        self.assertNotRegex(gw.log, r"=::1:")
        # A refused certificate is audited by its address (the /64 once counted).
        _pki_cert(self.pki, "rogue", lambda: self.pki.untrusted_client("rogue", POLICE_CN))
        rogue = self.partner(gw, "rogue")
        for _ in range(2):
            self.assertCtl(rogue.whoami(), 4, gw)
        gw.stop()
        out = isgtest.ctl("audit", "list", "--kind", "connection.refused", "--format", "jsonl",
                          "--config", gw.config_path)
        self.assertEqual(out.rc, 0, str(out))
        peers = [json.loads(line)["entry"]["peer"] for line in out.out.splitlines()]
        self.assertEqual(len(peers), 2, peers)
        self.assertRegex(peers[0], r"^\[::1\]:\d+$")
        self.assertEqual(peers[1], "::/64")
        # Another process on the port: named as listen: takes it.
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            taken.bind(("::1", gw.port))
            taken.listen(1)
            p = subprocess.run([isgtest.ISGD, "--config", gw.config_path] + gw.new_store_args(),
                               capture_output=True,
                               text=True, timeout=isgtest.START_TIMEOUT, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("isgd: cannot listen on [::1]:%d: another process is listening on it"
                      % gw.port, p.stderr)


class TestRefusals(ExchangeCase):
    """(c) refusals: a clear error to the partner, and the gateway keeps serving."""

    def assertStillServes(self, gw):
        self.assertAlive(gw)
        police = self.partner(gw, "police")
        self.assertCtl(police.whoami(), 0, gw)
        police.send_ok([RECORD_B])

    def check_tls_refusal(self, cert_name, **gw_overrides):
        gw = self.gateway(**gw_overrides)
        since = len(gw.log)
        bad = self.partner(gw, cert_name)
        # Several attempts: the partner must learn why every time, not only
        # when the TLS alert happens to beat a TCP reset.
        results = [bad.whoami(), bad.whoami(), bad.whoami(), bad.send([RECORD_A])]
        for r in results:
            self.assertCtl(r, 4, gw)
        line = self.wait_for_log(gw, since, r"event=\S+.*(certificate|verif)")
        self.assertIsNotNone(line, "no log event about the refused connection\n" + gw.diagnostics())
        self.assertStillServes(gw)
        # nothing from the refused partner reached anyone
        msgs = self.partner(gw, "nhs").fetch_messages()
        self.assertEqual([m["records"] for m in msgs], [[RECORD_B]])
        told = re.compile(r"certificate|unknown ca|alert", re.I)
        untold = [r for r in results if not told.search(r.err)]
        if untold:
            self.fail("%d of %d attempts were not told that the gateway refused the certificate:\n%s"
                      % (len(untold), len(results), "\n".join(map(str, untold))))
        return gw

    def test_more_identifiers_than_one_audit_entry_holds(self):
        """A message whose audit entry, one subject pseudonym for each
        identifier, would pass the 1 MiB the store takes is refused as a
        limit, audited, and not to be retried; one just under it is stored."""
        gw = self.gateway(limits={"max_records_per_message": 20000})
        police = self.partner(gw, "police")
        # Two identifiers a record (NHS number and family name), 49 bytes each
        # in the entry: 11,000 records make about 1.08 MB of subjects.
        record = {"nhs_number": NHS_A, "family_name": NAME_A}
        r = police.send([record] * 11000, message_id="too-many-subjects")
        self.assertRefused(r, gw, "LIMIT_EXCEEDED", "gateway.audit_entry")
        self.assertIn("holds 22000 identifiers", r.err)
        self.assertIn("send fewer records in each message", r.err)
        self.assertNotIn("retry", r.err)
        self.assertNotIn(NHS_A, r.err + gw.log)
        listed = isgtest.ctl("audit", "list", "--config", gw.config_path, "--kind",
                             "message.refused", "--format", "jsonl")
        self.assertEqual(listed.rc, 0, listed)
        entries = [json.loads(line)["entry"] for line in listed.out.splitlines()]
        self.assertEqual([(e["message_id"], e["rule"]) for e in entries],
                         [("too-many-subjects", "gateway.audit_entry")])
        # Half as many fit, and arrive.
        police.send_ok([record] * 5500, message_id="many-subjects")
        got = self.partner(gw, "nhs").fetch_messages()
        self.assertEqual([(m["message_id"], len(m["records"])) for m in got],
                         [("many-subjects", 5500)])

    def test_untrusted_ca(self):
        _pki_cert(self.pki, "rogue", lambda: self.pki.untrusted_client("rogue", POLICE_CN))
        self.check_tls_refusal("rogue")

    def test_expired_certificate(self):
        _pki_cert(self.pki, "expired", lambda: self.pki.expired_client("expired", POLICE_CN))
        self.check_tls_refusal("expired")

    def test_not_yet_valid_certificate(self):
        _pki_cert(self.pki, "future", lambda: self.pki.not_yet_valid_client("future", POLICE_CN))
        self.check_tls_refusal("future")

    def test_revoked_certificate(self):
        _pki_cert(self.pki, "revoked", lambda: self.pki.client("revoked", POLICE_CN))
        self.pki.revoke("revoked")
        crl = self.pki.crl(os.path.join(self.tmp, "partners.crl"))
        self.check_tls_refusal("revoked", crl=crl)

    def test_certificate_not_for_client_authentication(self):
        """A partner CA's certificate whose extended key usage is serverAuth only: refused by
        TLS, and the partner is told the likely causes, this one among them."""
        _pki_cert(self.pki, "server-only",
                  lambda: self.pki.client("server-only", POLICE_CN, eku="serverAuth"))
        gw = self.check_tls_refusal("server-only")
        r = self.partner(gw, "server-only").whoami()
        self.assertCtl(r, 4, gw)
        self.assertIn("sslv3 alert unsupported certificate (the gateway did not accept the "
                      "client certificate: not issued by the "
                      "partner CA it trusts, expired, revoked, or its extended key usage does not "
                      "allow client authentication)", r.err)
        self.assertRegex(gw.log, r"event=conn\.refused .*reason=\"certificate verify failed: "
                         r"unsuitable certificate purpose\"")

    def test_unknown_partner(self):
        _pki_cert(self.pki, "stranger", lambda: self.pki.client("stranger", "stranger.partners.isg.example"))
        gw = self.gateway()
        r = self.partner(gw, "stranger").send([RECORD_A])
        self.assertRefused(r, gw, "NOT_PERMITTED", "partner.unknown")
        self.assertNothingPending(self.partner(gw, "nhs"))
        self.assertStillServes(gw)

    def test_sender_not_in_agreement(self):
        gw, police, nhs = self.start()
        r = nhs.send([RECORD_A], to="met-police")
        self.assertRefused(r, gw, "NOT_PERMITTED", "agreement.sender")
        r = self.partner(gw, "council").send([RECORD_A], to="nhs-trust")
        self.assertRefused(r, gw, "NOT_PERMITTED", "agreement.sender")
        self.assertNothingPending(police)
        self.assertNothingPending(nhs)
        self.assertStillServes(gw)

    def test_other_agreement_rules(self):
        gw, police, nhs = self.start()
        r = police.send([RECORD_A], to="city-council")
        self.assertRefused(r, gw, "NOT_PERMITTED", "agreement.recipient")
        r = police.send([RECORD_A], agreement="no-such-agreement")
        self.assertCtl(r, 3, gw, "[agreement.unknown]")
        r = police.send([RECORD_A], dataset="no-such-dataset")
        self.assertCtl(r, 3, gw, "[agreement.dataset]")
        self.assertNothingPending(nhs)

    def test_expired_agreement(self):
        policy = self.policy(agreements=[isgtest.default_agreement(valid_from="2020-01-01",
                                                                   valid_until="2021-12-31")])
        gw = self.gateway(policy)
        r = self.partner(gw, "police").send([RECORD_A])
        self.assertCtl(r, 3, gw, "[agreement.validity]")
        self.assertNothingPending(self.partner(gw, "nhs"))

    def test_unknown_field(self):
        gw, police, nhs = self.start()
        r = police.send([RECORD_A, dict(RECORD_B, shoe_size=SECRET_UNKNOWN)])
        self.assertRefused(r, gw, "UNKNOWN_FIELD", "dataset.unknown_field")
        self.assertIn("record 1", r.err)
        self.assertIn('"shoe_size"', r.err)
        self.assertNotIn(SECRET_UNKNOWN, r.err)
        self.assertNotIn(SECRET_UNKNOWN, r.out)
        # a refused message is never stored, not even its valid first record
        self.assertNothingPending(nhs)
        self.assertStillServes(gw)
        self.assertNotIn(SECRET_UNKNOWN, gw.log)

    def test_missing_and_mistyped_fields(self):
        gw, police, nhs = self.start()
        r = police.send([RECORD_A, without(RECORD_B, "nhs_number")])
        self.assertRefused(r, gw, "MISSING_FIELD", "dataset.required_field")
        self.assertIn("record 1", r.err)
        self.assertIn('"nhs_number"', r.err)
        r = police.send([dict(RECORD_A, age="Forty-Two-Wibblesworth")])
        self.assertRefused(r, gw, "BAD_VALUE", "dataset.field_type")
        self.assertIn("record 0", r.err)
        self.assertIn('"age"', r.err)
        self.assertNotIn("Wibblesworth", r.err)
        self.assertNotIn("Wibblesworth", gw.log)
        self.assertNothingPending(nhs)

    def test_invalid_identifier(self):
        """An nhs_number with a wrong check digit is refused even when the action is pass."""
        gw, police, nhs = self.start()
        bad_check_digit = NHS_A[:-1] + "8"
        r = police.send([RECORD_B, dict(RECORD_A, nhs_number=bad_check_digit)])
        self.assertCtl(r, 3, gw, "refused", "BAD_VALUE")
        self.assertRegex(r.err, r"\[dataset\.field_(type|value)\]")
        self.assertIn("record 1", r.err)
        self.assertIn('"nhs_number"', r.err)
        self.assertNotIn(bad_check_digit, r.err)
        self.assertNotIn(bad_check_digit, gw.log)
        self.assertNothingPending(nhs)


class TestNoPersonalDataInClear(ExchangeCase):
    SECRETS = [NHS_A, NHS_B, NAME_A, NAME_B, NOTES, SECRET_UNKNOWN, "Qzvbx", "Wrexlington"]

    def scan(self, gw, when):
        files = gw.store_files()
        self.assertTrue(any(f.endswith("isg.db") for f in files), "no store file in %r" % files)
        self.assertGreater(sum(os.path.getsize(f) for f in files), 0)
        blobs = []
        for f in files:
            with open(f, "rb") as fh:
                blobs.append((f, fh.read().lower()))
        blobs.append((gw.log_path, gw.log.encode().lower()))
        found = ["%r in %s" % (s, path) for path, data in blobs for s in self.SECRETS
                 if s.lower().encode() in data]
        self.assertEqual(found, [], "personal data in clear %s" % when)

    def test_store_and_log_hold_no_identifier_in_clear(self):
        """(f) identifiers never reach the store files (db, -wal) or the log in clear."""
        gw, police, nhs = self.start()
        police.send_ok([dict(RECORD_A, officer_notes=NOTES), RECORD_B], message_id="clear-1")
        police.send_ok([RECORD_B], message_id="clear-2", fmt="csv")
        self.assertEqual(police.send([dict(RECORD_A, shoe_size=SECRET_UNKNOWN)]).rc, 3)
        # records whose names are data, as from a CSV read without its header
        # row: refused, and the names are in no log and no audit entry
        for names_are_data in ({NHS_A: NAME_A}, {NAME_B: NHS_B}):
            r = police.send([names_are_data], fmt="csv")
            self.assertRefused(r, gw, "UNKNOWN_FIELD", "dataset.unknown_field")
            self.assertIn("record 0: its field at position 0", r.err)
        self.assertNotIn(NHS_A, r.err + police.send([{NHS_A: "1"}]).err)
        self.assertEqual(nhs.send([RECORD_A], to="met-police").rc, 3)
        # killed before any checkpoint: the -wal file holds the undelivered messages
        gw.kill()
        self.assertTrue(any(f.endswith("-wal") for f in gw.store_files()), gw.store_files())
        self.scan(gw, "with undelivered messages, after SIGKILL")
        gw.start()
        msgs = nhs.fetch_messages()
        self.assertEqual(len(msgs), 2)
        self.assertIn(NAME_A, json.dumps(msgs))  # the scan would see it if stored in clear
        gw.stop()
        self.scan(gw, "after delivery and SIGTERM")


def wait_idle(pid, quiet=0.5, timeout=60.0):
    """Wait until pid has used no CPU for `quiet` seconds."""
    def cpu():
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    last, deadline = -1, time.monotonic() + timeout * isgtest.SLOW
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu()
        if now == last:
            return
        last = now
    raise AssertionError("pid %d still busy after %.0f s" % (pid, timeout))


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS for pid %d" % pid)


class TestSubscriberBackpressure(ExchangeCase):
    def measured_gateway(self, limits):
        """A started gateway whose RSS counts what it holds."""
        gw = self.gateway(start=False, limits=limits)
        # Under ASan freed memory sits in quarantine and would count as held.
        asan = os.environ.get("ASAN_OPTIONS", "")
        asan += (":" if asan else "") + "quarantine_size_mb=0:thread_local_quarantine_size_kb=0"
        plain = gw.argv
        gw.argv = lambda: ["env", "ASAN_OPTIONS=" + asan] + plain()
        gw.start()
        return gw

    def test_pushes_stop_at_the_connection_buffer(self):
        """Subscribers that do not read hold isgd to its connection buffer each
        (pushes once queued without bound); once one reads it gets every message."""
        n_msgs, n_subs = 12, 4
        gw = self.measured_gateway({"idle_timeout": "300s", "max_frame": "1MiB",
                                    "connection_buffer": "1MiB"})
        pb = isgtest.isg_pb2()
        big = "x" * (900 * 1024)
        sent = []
        with isgtest.FrameConn(gw, self.pki.certs["police"]) as c:
            for i in range(n_msgs):
                rec = isgtest.pb_record(pb, {"nhs_number": NHS_A, "concern_summary": big})
                r = c.request(send=pb.SendRequest(message_id="big-%d" % i, recipient="nhs-trust",
                                                  agreement_id=AGREEMENT_ID, dataset=DATASET,
                                                  records=[rec]))
                self.assertEqual(r.WhichOneof("body"), "send_result", r)
                sent.append("big-%d" % i)
        time.sleep(0.5)
        before = rss_mib(gw.proc.pid)
        subs = []
        for k in range(n_subs):
            s = isgtest.FrameConn(gw, self.pki.certs["nhs"], timeout=30 * isgtest.SLOW)
            self.addCleanup(s.close)
            if k > 0:  # the first reads later, at full speed
                s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.send_frame(pb.Frame(request_id=1, subscribe=pb.Subscribe()))
            subs.append(s)
        time.sleep(2.0 * isgtest.SLOW)
        grown = rss_mib(gw.proc.pid) - before
        # Unbounded, each subscriber would hold all 12 (about 10.5 MiB) queued.
        # ThreadSanitizer keeps four bytes of shadow for each byte isgd
        # touches: unbounded, over 200 MiB under it.
        limit = 16.0 * (5 if isgtest.TSAN else 1)
        if not isgtest.VALGRIND:  # valgrind's RSS is its own
            self.assertLess(grown, limit, "isgd grew %.1f MiB with %d idle subscribers\n%s"
                            % (grown, n_subs, gw.diagnostics()))
        # "delivered" is not audited for messages left waiting behind full
        # connections: the store takes only what a connection has room for,
        # and each one it takes is queued on the connection (docs/audit.md).
        # How many that is cannot be seen from here, and the bound stays
        # loose: each subscriber takes what its 1 MiB holds, one more, and
        # what the kernel's socket buffers take (6 of the 12 here, all 12
        # once).
        db = sqlite3.connect("file:%s?mode=ro" % gw.store_path, uri=True)
        try:
            delivered = db.execute(
                "SELECT count(*) FROM audit WHERE kind = 'message.delivered'").fetchone()[0]
        finally:
            db.close()
        self.assertLessEqual(delivered, 8, "%d of %d audited as delivered to unread subscribers"
                             % (delivered, n_msgs))
        # A subscriber that reads gets every message, in order, none skipped.
        got = []
        while len(got) < n_msgs:
            f = subs[0].recv_frame(timeout=30 * isgtest.SLOW)
            self.assertEqual(f.WhichOneof("body"), "delivery", f)
            self.assertEqual(len(f.delivery.records), 1)
            got.append(f.delivery.message_id)
        self.assertEqual(got, sent)
        self.assertAlive(gw)

    def test_answers_stop_at_the_connection_buffer(self):
        """Partners that pipeline tiny requests and never read hold isgd to its
        connection buffer each. One read holds up to 16 KiB of requests: a
        zero-length frame is one byte, answered by an Error of about 70, so
        answering every frame of the read before checking the bound held
        about 280 KiB a connection here where the bound allows about 110."""
        if isgtest.VALGRIND:
            self.skipTest("valgrind's RSS is its own")
        n_conns, bound_kib = 100, 64
        gw = self.measured_gateway({"idle_timeout": "300s", "max_frame": "%dKiB" % bound_kib,
                                    "connection_buffer": "%dKiB" % bound_kib})
        conns = [isgtest.FrameConn(gw, self.pki.certs["council"]) for _ in range(n_conns)]
        for c in conns:
            self.addCleanup(c.close)
            self.assertEqual(c.request(ping=isgtest.isg_pb2().Ping(nonce=1)).WhichOneof("body"), "pong")
        before = rss_mib(gw.proc.pid)
        burst = b"\x00" * (256 << 10)  # zero-length frames: "no request", an Error each
        for c in conns:
            c.sock.settimeout(0.5 * isgtest.SLOW)
            try:
                c.sock.sendall(burst)
            except (socket.timeout, ssl.SSLError, OSError):
                pass  # isgd stopped reading: what it holds is what counts
        wait_idle(gw.proc.pid)
        grown = rss_mib(gw.proc.pid) - before
        # Each: its output up to the bound (a buffer of twice that at most)
        # and its input, a read's worth. TSan keeps four bytes of shadow a
        # byte; ASan's redzones and allocator add about a third.
        asan = isgtest._built_with(isgtest.ISGD, b"__asan_init")
        limit = n_conns * (2 * bound_kib + 32) / 1024.0 * (5 if isgtest.TSAN else 1.5 if asan else 1)
        self.assertLess(grown, limit, "isgd grew %.1f MiB with %d connections not reading\n%s"
                        % (grown, n_conns, gw.diagnostics()))
        self.assertAlive(gw)


class TestSubscriberWindow(ExchangeCase):
    def subscribed(self, gw):
        """A send(message_id) for the police, and an NHS connection that has subscribed."""
        police = isgtest.FrameConn(gw, self.pki.certs["police"])
        self.addCleanup(police.close)
        sub = isgtest.FrameConn(gw, self.pki.certs["nhs"])
        self.addCleanup(sub.close)
        sub.send_frame(sub.pb.Frame(request_id=1, subscribe=sub.pb.Subscribe()))
        return (lambda mid: police.send_ok(mid, [{"nhs_number": NHS_A}])), sub

    def test_window_reopens_when_pushes_expire_before_their_ack(self):
        """A subscriber that acknowledges pushes only after they expired (its ack
        comes back with them in unknown_ids) gets further pushes: an expired
        push is no longer outstanding. Found by tests/soak/soak.py's reading of
        the subscription window; before, each such push held one slot of it for
        the life of the connection, and max_fetch_messages of them stopped the
        subscription for good."""
        agreement = isgtest.default_agreement(undelivered_ttl="1s")
        gw = self.gateway(self.policy(agreements=[agreement]),
                          store={"sweep_interval": "100ms"}, limits={"max_fetch_messages": 2})
        pb = isgtest.isg_pb2()
        send, sub = self.subscribed(gw)
        late = [send("late-%d" % i) for i in range(2)]
        pushed = [sub.recv_frame(timeout=5 * isgtest.SLOW).delivery.gateway_id for _ in late]
        self.assertEqual(pushed, late)
        time.sleep(1.5)  # both expire, and the sweep marks them so
        sub.send_frame(pb.Frame(request_id=2, ack=pb.Ack(gateway_ids=late)))
        f = sub.recv_frame(timeout=5 * isgtest.SLOW)
        self.assertEqual(f.WhichOneof("body"), "ack_result", f)
        self.assertEqual(sorted(f.ack_result.unknown_ids), sorted(late), f)
        fresh = send("fresh")
        try:
            f = sub.recv_frame(timeout=3 * isgtest.SLOW)
        except socket.timeout:
            self.fail("no push of a new message after the window's pushes expired\n%s"
                      % gw.diagnostics())
        self.assertEqual(f.delivery.gateway_id, fresh, f)

    def test_window_reopens_when_pushes_expire_unacknowledged(self):
        """Pushes that expire with no ack at all (the partner's system
        dropped them) leave the window: an expired message is no longer
        pending, whether or not the sweep has run. A message that waits
        behind a full window is pushed once the window's first push expires.
        Before, each such push held its slot for the life of the connection,
        and max_fetch_messages of them stopped the subscription for good."""
        agreement = isgtest.default_agreement(undelivered_ttl="3s")
        gw = self.gateway(self.policy(agreements=[agreement]), limits={"max_fetch_messages": 2})
        send, sub = self.subscribed(gw)
        first_expiry = time.monotonic() + 3.0  # no earlier: accepted after this
        dropped = [send("dropped-%d" % i) for i in range(2)]
        pushed = [sub.recv_frame(timeout=5 * isgtest.SLOW).delivery.gateway_id for _ in dropped]
        self.assertEqual(pushed, dropped)
        time.sleep(1.5)
        waiting = send("waiting")  # behind a full window: expires 1.5 s after the first push
        quiet = first_expiry - 0.5 - time.monotonic()
        if quiet > 0.2:
            with self.assertRaises(socket.timeout, msg="pushed past a full window"):
                sub.recv_frame(timeout=quiet)
        try:
            f = sub.recv_frame(timeout=5 * isgtest.SLOW)
        except socket.timeout:
            self.fail("no push of a waiting message after the window's pushes expired "
                      "unacknowledged\n%s" % gw.diagnostics())
        self.assertEqual(f.delivery.gateway_id, waiting, f)


class TestShutdown(ExchangeCase):
    def test_sigterm_with_connected_clients(self):
        """(g) SIGTERM: isgd exits 0 promptly with an idle client and a long-polling one,
        which is told: `isgctl fetch --wait` exits 5, UNAVAILABLE (docs/isgctl.md, fetch)."""
        gw, police, nhs = self.start()
        ctx = isgtest.tls_context(self.pki.certs["police"], self.pki.server_ca.cert)
        raw = socket.create_connection(("127.0.0.1", gw.port), timeout=5 * isgtest.SLOW)
        idle = ctx.wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(idle.close)
        idle.settimeout(0.3)
        with self.assertRaises(socket.timeout, msg="the gateway closed an idle, valid connection"):
            idle.recv(1)
        poll = subprocess.Popen(
            [isgtest.ISGCTL, "fetch"] + nhs.conn_flags() + ["--wait", "60000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def reap():
            if poll.poll() is None:
                poll.kill()
            poll.wait()
            poll.stdout.close()
            poll.stderr.close()
        self.addCleanup(reap)
        time.sleep(0.5 * isgtest.SLOW)
        if poll.poll() is not None:
            self.fail("long-poll fetch ended early: %r" % (poll.communicate(),))

        took = gw.stop(timeout=5 * isgtest.SLOW)
        if not isgtest.VALGRIND:
            self.assertLess(took, 3.0, "isgd took %.1fs to exit on SIGTERM" % took)
        try:
            out, err = poll.communicate(timeout=5 * isgtest.SLOW)
        except subprocess.TimeoutExpired:
            self.fail("isgctl fetch --wait still running 5s after isgd exited")
        # Nothing was waiting, so nothing printed; the gateway said it stops, so 5, not 4.
        self.assertEqual((poll.returncode, out), (5, ""), err)
        self.assertRegex(err, r"^isgctl: refused: UNAVAILABLE: the gateway is shutting down;")
        idle.settimeout(2 * isgtest.SLOW)
        try:
            self.assertEqual(idle.recv(1), b"", "data on the idle connection at shutdown")
        except (ssl.SSLError, ConnectionError):
            pass  # closed without close_notify; acceptable for the test, isgd exited

    def test_sighup_keeps_serving(self):
        gw, police, nhs = self.start()
        # a burst, as from a config-management run: a SIGHUP that arrives
        # while the previous reload is still running must not kill isgd
        for _ in range(50):
            gw.proc.send_signal(signal.SIGHUP)
            time.sleep(0.001)
        time.sleep(0.3 * isgtest.SLOW)
        self.assertAlive(gw, "after 50 SIGHUPs")
        police.send_ok([RECORD_B])
        self.assertEqual(len(nhs.fetch_messages()), 1)


if __name__ == "__main__":
    unittest.main()
