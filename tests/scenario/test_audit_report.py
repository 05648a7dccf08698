"""
Scenario: `isgctl audit report` (docs/audit.md, "The privacy-impact report")
on a log written by the real isgd.

setUpClass runs one gateway through accepted sends from two partners,
refusals for three different rules (one of them under an agreement id full
of HTML that a hostile partner chose), and a fetch with its
acknowledgement, then cuts city-council's open connection with a reload
whose registry no longer recognises its certificate, makes a few bare TCP
connections (a health check) and stops it. The tests count the same
figures from the store with sqlite3 and check that the HTML report (read
with html.parser), the Markdown and the CSV carry them; that no
partner-chosen string reaches the page unescaped; and that headless
Chromium renders the page with its totals in the DOM. The screenshot is
kept in <build>/test-artefacts/.
"""

import collections
import csv
import datetime
import html.parser
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import time
import unittest

import isgtest
from isgtest import AGREEMENT_ID

CHROMIUM = "/usr/bin/chromium"
HOSTILE_AGREEMENT = '<script>alert("x")</script><img src=x onerror=alert(1)>&amp;'
NHS = ["9434765919", "6281948211", "1860913903"]
LIMITS = {"messages_per_day": 50, "records_per_day": 200}


def record(i, **extra):
    return dict({"nhs_number": NHS[i % len(NHS)], "age": 30 + i}, **extra)


class Page(html.parser.HTMLParser):
    """Text by element id, table rows with their data-* attributes and cells by class,
    and every tag and attribute seen (to check nothing is fetched or run)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.rows, self.tags, self.attrs = {}, [], [], []
        self._open = []  # (id, [text]) of elements with an id
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag == "tr":
            self._row = {"attrs": {k: v for k, v in attrs if k.startswith("data-")},
                         "cells": {}, "table": self._table}
        if tag == "table":
            self._table = a.get("id")
        if tag == "td" and self._row is not None:
            self._cell = (a.get("class", ""), a.get("data-value"), [])
        if "id" in a:
            self._open.append((a["id"], tag, []))

    _table = None

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._cell is not None:
            cls, value, text = self._cell
            for c in cls.split():
                if c != "n":
                    self._row["cells"][c] = int(value) if value is not None else "".join(text)
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        if self._open and self._open[-1][1] == tag:
            ident, _, text = self._open.pop()
            self.ids[ident] = "".join(text).strip()

    def handle_data(self, data):
        for _, _, text in self._open:
            text.append(data)
        if self._cell is not None:
            self._cell[2].append(data)

    def table(self, ident):
        return [r for r in self.rows if r["table"] == ident and r["attrs"]]


def md_unescape(cell):
    """A Markdown cell as isgctl escapes it (backslashes, <, > and &), read back."""
    cell = re.sub(r"\\(.)", r"\1", cell)
    return cell.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def md_sections(text):
    """{heading: [row cells]} of every table, header and rule rows left out."""
    sections, current = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:], [])
        elif line.startswith("|") and current is not None:
            current.append([md_unescape(c.strip()) for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return {k: v[2:] for k, v in sections.items()}


class AuditReport(isgtest.ScenarioCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = isgtest.make_tmpdir("isg-audit-report-")
        try:
            cls._write_log()
        except BaseException:
            isgtest.remove_tmpdir(cls.root)
            raise

    @classmethod
    def tearDownClass(cls):
        isgtest.remove_tmpdir(cls.root)
        super().tearDownClass()

    @classmethod
    def _write_log(cls):
        agreement = isgtest.default_agreement(senders=["met-police", "city-council"],
                                              limits=LIMITS)
        cls.policy_dir = isgtest.write_policy(os.path.join(cls.root, "policies"),
                                              agreements=[agreement])
        gw = isgtest.Gateway(os.path.join(cls.root, "gw"), cls.pki, cls.policy_dir,
                             start=False, audit={"checkpoint_every": 4})
        cls.gw = gw
        gw.start()
        try:
            police = isgtest.Partner(gw, cls.pki, "police")
            council = isgtest.Partner(gw, cls.pki, "council")
            nhs = isgtest.Partner(gw, cls.pki, "nhs")
            police.send_ok([record(0), record(1)], message_id="r-1")
            police.send_ok([record(2, officer_notes="dropped")], message_id="r-2")
            council.send_ok([record(1), record(2), record(0)], message_id="c-1")
            refusals = [
                police.send([record(0, nhs_number="9434765918")]),  # a bad check digit
                police.send([record(0)], to="city-council"),  # not a recipient
                council.send([record(0)], agreement=HOSTILE_AGREEMENT),  # no such agreement
            ]
            for r in refusals:
                if r.rc != 3:
                    raise AssertionError("expected a refusal\n%s" % (r,))
            if len(nhs.fetch_messages()) != 3:
                raise AssertionError("nhs-trust should fetch 3 messages")
            cls._cut_council(gw)
            cls._bare_connections(gw)
        finally:
            gw.stop()
        db = sqlite3.connect("file:%s?mode=ro&immutable=1" % gw.store_path, uri=True)
        try:
            cls.entries = [(seq, at, kind, json.loads(bytes(e))["entry"]) for seq, at, kind, e in
                           db.execute("SELECT seq, at, kind, entry FROM audit ORDER BY seq")]
            cls.last_cp = db.execute("SELECT size FROM checkpoints ORDER BY size DESC").fetchone()[0]
        finally:
            db.close()
        def day(ms):
            return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(
                "%Y-%m-%d")
        cls.first_day, cls.last_day = day(cls.entries[0][1]), day(cls.entries[-1][1])
        cls.out = os.path.join(cls.root, "out")
        os.makedirs(cls.out)
        cls.html_path = os.path.join(cls.out, "report.html")
        cls.md_path = os.path.join(cls.out, "report.md")
        cls.csv_path = os.path.join(cls.out, "report.csv")
        cls.report = isgtest.ctl("audit", "report", "--config", gw.config_path,
                                 "--from", cls.first_day, "--to", cls.last_day,
                                 "--policy", cls.policy_dir, "--html", cls.html_path,
                                 "--markdown", cls.md_path, "--csv", cls.csv_path)
        cls.page = Page()
        if cls.report.rc == 0:
            cls.page.feed(isgtest.read_text(cls.html_path))

    @classmethod
    def _cut_council(cls, gw):
        """A key compromise: council's certificate is taken out of the registry
        while it is connected, and the reload cuts the connection."""
        pb = isgtest.isg_pb2()
        with isgtest.FrameConn(gw, cls.pki.certs["council"]) as c:
            if c.request(ping=pb.Ping(nonce=1)).WhichOneof("body") != "pong":
                raise AssertionError("council's connection should answer a ping")
            partners = isgtest.default_partners()
            for p in partners:
                if p["id"] == "city-council":
                    p["certificate"] = {"subject_cn": "replacement-council.partners.isg.example"}
            isgtest.write_yaml(os.path.join(cls.policy_dir, "partners.yaml"),
                               {"partners": partners})
            outcome, text = gw.reload()
            if outcome != "loaded":
                raise AssertionError("the reload should load\n%s" % text)
            e = c.recv_frame(timeout=5 * isgtest.SLOW).error
            if e.rule != "partner.unrecognised":
                raise AssertionError("council's connection should be cut: %s" % (e,))

    BARE = 5

    @classmethod
    def _bare_connections(cls, gw):
        """A health check's connect-and-close, BARE times from one address:
        the first is written at once, the rest counted into one entry
        written when isgd stops ("repeated")."""
        for _ in range(cls.BARE):
            socket.create_connection(("127.0.0.1", gw.port), timeout=5 * isgtest.SLOW).close()
        deadline = time.monotonic() + 10 * isgtest.SLOW
        while gw.log.count("event=conn.refused") < cls.BARE:
            if time.monotonic() > deadline:
                raise AssertionError("%d refusals expected\n%s" % (cls.BARE, gw.diagnostics()))
            time.sleep(0.05)

    # -- figures counted from the store

    def of_kind(self, kind):
        return [e for _, _, k, e in self.entries if k == kind]

    def expected(self):
        acc = self.of_kind("message.accepted")
        return {
            "total-entries": len(self.entries),
            "total-accepted": len(acc),
            "total-records": sum(e["records"] for e in acc),
            "total-refused": len(self.of_kind("message.refused")),
            "total-delivered": len(self.of_kind("message.delivered")),
            "total-acknowledged": len(self.of_kind("message.acknowledged")),
            "total-expired": len(self.of_kind("message.expired")),
            # an entry with "repeated" stands for that many refusals
            "total-connections-refused": sum(e.get("repeated", 1)
                                             for e in self.of_kind("connection.refused")),
            "total-connections-closed": len(self.of_kind("connection.closed")),
        }

    def setUp(self):
        super().setUp()
        self.assertEqual(self.report.rc, 0, "audit report failed\n%s" % (self.report,))

    # -- the HTML page

    def test_log_has_what_the_report_needs(self):
        e = self.expected()
        self.assertEqual(e["total-accepted"], 3)
        self.assertEqual(e["total-records"], 6)
        self.assertEqual(e["total-refused"], 3)
        self.assertEqual(e["total-acknowledged"], 3)
        rules = {x["rule"] for x in self.of_kind("message.refused")}
        self.assertEqual(len(rules), 3, rules)
        self.assertEqual(e["total-connections-closed"], 1)
        # the bare connections: one entry at once, one with the count of the rest
        self.assertEqual(e["total-connections-refused"], self.BARE)
        self.assertEqual([x.get("repeated") for x in self.of_kind("connection.refused")],
                         [None, self.BARE - 1])
        # in the guide's words, not OpenSSL's "unexpected eof while reading"
        self.assertEqual({x.get("reason") for x in self.of_kind("connection.refused")},
                         {"connection closed during handshake"})

    def test_totals_match_the_log(self):
        for ident, want in self.expected().items():
            self.assertEqual(self.page.ids.get(ident), str(want), ident)

    def test_refusals_by_rule(self):
        want = collections.Counter(e["rule"] for e in self.of_kind("message.refused"))
        got = {r["attrs"]["data-rule"]: r["cells"]["count"]
               for r in self.page.table("refusal-rules")}
        self.assertEqual(got, dict(want))
        self.assertIn("chart-refusals", self.page.ids)

    def test_volumes_by_agreement_and_partner(self):
        acc = self.of_kind("message.accepted")
        refused = self.of_kind("message.refused")
        by_agreement = {r["attrs"]["data-agreement"]: r["cells"]
                        for r in self.page.table("agreements")}
        self.assertEqual(by_agreement[AGREEMENT_ID]["messages"], len(acc))
        self.assertEqual(by_agreement[AGREEMENT_ID]["records"], sum(e["records"] for e in acc))
        self.assertEqual(by_agreement[AGREEMENT_ID]["acknowledged"],
                         len(self.of_kind("message.acknowledged")))
        # the hostile agreement id is a row of its own, read back exactly
        self.assertEqual(by_agreement[HOSTILE_AGREEMENT]["refused"], 1)
        partners = {r["attrs"]["data-partner"]: r["cells"] for r in self.page.table("partners")}
        for p in ["met-police", "city-council"]:
            mine = [e for e in acc if e["sender"] == p]
            self.assertEqual(partners[p]["sent"], len(mine), p)
            self.assertEqual(partners[p]["records-sent"], sum(e["records"] for e in mine), p)
            self.assertEqual(partners[p]["refused"],
                             len([e for e in refused if e["sender"] == p]), p)
        self.assertEqual(partners["nhs-trust"]["received"], len(acc))
        # What each recipient collected, so one receiving far more than it acknowledges shows
        # (docs/audit.md): counted by the recipient of each delivered, acknowledged and
        # expired entry.
        for p, cells in partners.items():
            for cls, kind in (("delivered", "message.delivered"),
                              ("acknowledged", "message.acknowledged"),
                              ("expired", "message.expired")):
                self.assertEqual(cells[cls], len([e for e in self.of_kind(kind)
                                                  if e["recipient"] == p]), (p, cls))
        self.assertEqual([partners["nhs-trust"][c] for c in ("delivered", "acknowledged")],
                         [len(acc), len(acc)])
        self.assertEqual(partners["met-police"]["delivered"], 0)
        for chart in ["chart-records-by-agreement", "chart-messages-by-partner"]:
            self.assertIn(chart, self.page.ids)

    def test_fields_by_action(self):
        want = collections.Counter()
        for e in self.of_kind("message.accepted"):
            for action, names in e["fields"].items():
                for f in names:
                    want[(f, action)] += e["records"]
        got = collections.Counter()
        for r in self.page.table("fields-table"):
            for action in ["pass", "drop", "generalise", "pseudonymise"]:
                if r["cells"][action]:
                    got[(r["attrs"]["data-field"], action)] += r["cells"][action]
        self.assertEqual(got, want)
        self.assertEqual(got[("officer_notes", "drop")], 6)

    def test_limits_used(self):
        rows = {(r["attrs"]["data-agreement"], r["attrs"]["data-partner"]): r["cells"]
                for r in self.page.table("limits-table")}
        acc = self.of_kind("message.accepted")
        police = [e for e in acc if e["sender"] == "met-police"]
        if self.first_day == self.last_day:  # one day: the peak is the day's total
            cells = rows[(AGREEMENT_ID, "met-police")]
            self.assertEqual(cells["peak-messages"], len(police))
            self.assertEqual(cells["peak-records"], sum(e["records"] for e in police))
        self.assertEqual(rows[(AGREEMENT_ID, "met-police")]["limit-messages"],
                         LIMITS["messages_per_day"])
        self.assertEqual(rows[(AGREEMENT_ID, "city-council")]["limit-records"],
                         LIMITS["records_per_day"])

    def test_integrity(self):
        self.assertEqual(self.page.ids["integrity-status"][:2], "OK")
        self.assertEqual(self.page.ids["integrity-latest-size"], str(self.last_cp))
        self.assertEqual(self.page.ids["integrity-entries"], str(len(self.entries)))
        verify = isgtest.ctl("audit", "verify", "--config", self.gw.config_path)
        self.assertEqual(verify.rc, 0, verify)
        self.assertIn("root %s" % self.page.ids["integrity-latest-root"], verify.out)

    def test_integrity_failure_is_reported(self):
        store = os.path.join(self.tmp, "tampered.db")
        shutil.copyfile(self.gw.store_path, store)
        db = sqlite3.connect(store)
        seq = [s for s, _, k, _ in self.entries if k == "message.accepted"][0]
        row = db.execute("SELECT entry FROM audit WHERE seq = ?", (seq,)).fetchone()[0]
        db.execute("UPDATE audit SET entry = ? WHERE seq = ?",
                   (bytes(row).replace(b'"records":', b'"records":1'), seq))
        db.commit()
        db.close()
        out = os.path.join(self.tmp, "tampered.html")
        r = isgtest.ctl("audit", "report", "--store", store, "--keys", self.gw.keys_dir,
                        "--from", self.first_day, "--to", self.last_day, "--html", out)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("FAILED verification", r.err)
        page = Page()
        page.feed(isgtest.read_text(out))
        self.assertTrue(page.ids["integrity-status"].startswith("FAILED"), page.ids)
        self.assertNotEqual(page.ids["integrity-problems"], "0")
        self.assertIn("integrity-problem-list", page.ids)

    def test_nothing_escapes_or_is_fetched(self):
        text = isgtest.read_text(self.html_path)
        self.assertNotIn("<script", text.lower())
        self.assertNotIn("<img", text.lower())
        self.assertNotIn("script", self.page.tags)
        for tag in ["link", "iframe", "object", "embed", "img"]:
            self.assertNotIn(tag, self.page.tags)
        for name, value in self.page.attrs:
            self.assertFalse(name.startswith("on"), name)
            if name in ("src", "href"):
                self.fail("the page refers to %s=%r" % (name, value))
        self.assertNotIn("url(", text)
        self.assertNotIn("@import", text)
        # no identifier or partner-chosen message id appears
        for secret in NHS + ["r-1", "c-1", "9434765918"]:
            self.assertNotIn(secret, text)

    # -- Markdown and CSV

    def test_markdown_carries_the_figures(self):
        md = isgtest.read_text(self.md_path)
        e = self.expected()
        self.assertIn("| messages accepted | %d |" % e["total-accepted"], md)
        self.assertIn("| records accepted | %d |" % e["total-records"], md)
        self.assertIn("| messages refused | %d |" % e["total-refused"], md)
        self.assertIn("| connections closed by a reload | %d |" % e["total-connections-closed"],
                      md)
        self.assertIn("| connections refused | %d |" % e["total-connections-refused"], md)
        self.assertIn("**OK**", md)
        self.assertNotIn("<script", md)

    def test_markdown_has_every_table_of_the_page(self):
        """docs/audit.md: the Markdown carries the same figures as the page."""
        md = md_sections(isgtest.read_text(self.md_path))

        def name(row, attr):
            return row["attrs"][attr] or "(none)"

        want = [[name(r, "data-partner")] + [str(r["cells"][c]) for c in
                ("sent", "records-sent", "refused", "received", "records-received",
                 "delivered", "acknowledged", "expired")]
                for r in self.page.table("partners")]
        self.assertEqual(md.get("Volumes by partner"), want)
        # a partner that only received, and collected and acknowledged all of it
        self.assertIn(["nhs-trust", "0", "0", "0", "3", "6", "3", "3", "0"], want)
        want = [[r["attrs"]["data-event"], str(r["cells"]["count"])]
                for r in self.page.table("events-table")]
        self.assertEqual(md.get("Entries by event"), want)
        self.assertEqual(sum(int(n) for _, n in want), len(self.entries))
        want = [[name(r, "data-agreement")] + [str(r["cells"][c]) for c in
                ("messages", "records", "refused", "delivered", "acknowledged", "expired")]
                for r in self.page.table("agreements")]
        self.assertEqual(md.get("Volumes by agreement"), want)

        def limit(peak, value):
            return "%d (%d%%)" % (value, peak * 100 // value)

        rows = self.page.table("limits-table")
        self.assertTrue(rows)
        got = md.get("Limits used (busiest day)")
        self.assertEqual(len(got), len(rows))
        for r, m in zip(rows, got):
            c = r["cells"]
            self.assertEqual(m, [name(r, "data-agreement"), name(r, "data-partner"),
                                 str(c["peak-messages"]), m[3],
                                 limit(c["peak-messages"], c["limit-messages"]),
                                 str(c["peak-records"]), c["day"],
                                 limit(c["peak-records"], c["limit-records"])])
            self.assertTrue(self.first_day <= m[3] <= self.last_day, m)
        text = isgtest.read_text(self.md_path)
        self.assertIn("Verifier key %s (from " % md_unescape(
            isgtest.ctl("audit", "pubkey", "--config", self.gw.config_path).out.strip()), text)

    def test_markdown_marks_limits_nearly_reached(self):
        """A peak at 90% of its limit or more is bold, as the page highlights its row."""
        tight = isgtest.default_agreement(senders=["met-police", "city-council"],
                                          limits={"messages_per_day": 2, "records_per_day": 200})
        policy = isgtest.write_policy(os.path.join(self.tmp, "tight"), agreements=[tight])
        out = os.path.join(self.tmp, "tight-report")
        r = isgtest.ctl("audit", "report", "--config", self.gw.config_path, "--from",
                        self.first_day, "--to", self.last_day, "--policy", policy,
                        "--markdown", out + ".md", "--html", out + ".html")
        self.assertEqual(r.rc, 0, r)
        rows = {(m[0], m[1]): m for m in
                md_sections(isgtest.read_text(out + ".md"))["Limits used (busiest day)"]}
        if self.first_day == self.last_day:  # met-police sent its 2 messages on that day
            self.assertEqual(rows[(AGREEMENT_ID, "met-police")][4], "**2 (100%)**")
        self.assertEqual(rows[(AGREEMENT_ID, "city-council")][4], "2 (50%)")
        self.assertIn('class="over"', isgtest.read_text(out + ".html"))

    def tampered(self, name, *statements):
        return isgtest.tampered_store(self.gw.store_path, os.path.join(self.tmp, name + ".db"),
                                      *statements)

    def report_of(self, store, *args):
        return isgtest.ctl("audit", "report", "--store", store, "--keys", self.gw.keys_dir,
                           *args)

    def test_markdown_says_what_was_left_out(self):
        """An entry that cannot be read cannot be placed in time: wherever its row says it
        is, the figures of any period are INCOMPLETE, in every format and the exit status."""
        for at in (None, 946684800000):  # as written, and redated to 2000-01-01 in the table
            store = self.tampered("junk-%s" % at, ("UPDATE audit SET entry = ?, at = coalesce(?, at)"
                                                   " WHERE seq = 2", (b"not an entry", at)))
            html_out = os.path.join(self.tmp, "junk-%s.html" % at)
            r = self.report_of(store, "--from", self.first_day, "--to", self.last_day,
                               "--markdown", "-", "--html", html_out)
            self.assertEqual(r.rc, 1, r)
            said = ("These figures are INCOMPLETE: 1 entry of the log could not be read (2): it "
                    "cannot be placed in time, so wherever the store's table puts it, it may "
                    "belong to this period, and it is counted nowhere. Run isgctl audit verify.")
            self.assertIn("**%s**" % said, r.out)
            self.assertLess(r.out.index(said), r.out.index("## Summary"))  # said first
            self.assertIn("**FAILED**", r.out)
            self.assertIn("isgctl: the report is INCOMPLETE: 1 entry (2) could not be read",
                          r.err)
            page = Page()
            page.feed(isgtest.read_text(html_out))
            self.assertEqual(page.ids.get("incomplete"), said)
            self.assertEqual(page.ids["total-entries"], str(len(self.entries) - 1))
        # It may belong to any period, one of other days too.
        r = self.report_of(store, "--from", "2001-01-01", "--to", "2001-01-31", "--csv", "-")
        self.assertEqual(r.rc, 1, r)
        self.assertIn("the report is INCOMPLETE", r.err)

    def test_edited_columns_are_warned_about(self):
        """report, as list and subject, says which entry's row was edited (the integrity
        section lists every such problem too) and counts it by its signed entry."""
        seq = [s for s, _, k, _ in self.entries if k == "message.accepted"][0]
        store = self.tampered("relabelled-one", ("UPDATE audit SET kind = 'policy.loaded' "
                                                 "WHERE seq = ?", (seq,)))
        r = self.report_of(store, "--from", self.first_day, "--to", self.last_day,
                           "--markdown", "-")
        self.assertEqual(r.rc, 1, r)  # verify reports the edited column
        self.assertIn("isgctl: entry %d: its kind column says 'policy.loaded' but the signed "
                      "entry is 'message.accepted': the table was edited, and the signed entry "
                      "is what counts (run 'isgctl audit verify')\n" % seq, r.err)
        self.assertIn("| messages accepted | %d |" % self.expected()["total-accepted"], r.out)
        self.assertIn("problem: entry %d: its kind column says 'policy.loaded'" % seq, r.out)
        self.assertNotIn("column", isgtest.ctl("audit", "report", "--config", self.gw.config_path,
                                               "--from", self.first_day, "--to", self.last_day,
                                               "--csv", "-").err)

    def test_report_judges_entries_by_their_signed_bytes(self):
        """The table's at and kind columns are not signed: redating or relabelling rows moves
        nothing out of its signed period and changes no figure."""
        long_ago = 979516800000  # 2001-01-15T00:00:00Z
        relabel = {"message.accepted": "connection.accepted", "message.refused": "policy.loaded",
                   "message.acknowledged": "keys.loaded", "connection.accepted": "message.accepted",
                   "connection.refused": "message.refused"}
        store = self.tampered(
            "redated-relabelled",
            *[("UPDATE audit SET kind = ?, at = ? WHERE seq = ?",
               (relabel.get(kind, kind), long_ago if kind.startswith("message.") else at, seq))
              for seq, at, kind, _ in self.entries])
        out = os.path.join(self.tmp, "relabelled.html")
        r = self.report_of(store, "--from", self.first_day, "--to", self.last_day,
                           "--html", out, "--csv", "-")
        self.assertEqual(r.rc, 1, r)  # verify reports the edited columns
        self.assertIn("FAILED verification", r.err)
        self.assertNotIn("INCOMPLETE", r.err)
        page = Page()
        page.feed(isgtest.read_text(out))
        for ident, want in self.expected().items():
            self.assertEqual(page.ids.get(ident), str(want), ident)
        events = {row["attrs"]["data-event"]: row["cells"]["count"]
                  for row in page.table("events-table")}
        self.assertEqual(events, dict(collections.Counter(kind for _, _, kind, _ in self.entries)))
        got = {row["attrs"]["data-rule"]: row["cells"]["count"]
               for row in page.table("refusal-rules")}
        self.assertEqual(got, dict(collections.Counter(e["rule"] for e in
                                                       self.of_kind("message.refused"))))
        self.assertEqual(r.out, isgtest.read_text(self.csv_path))  # the same days and figures
        # The period the at column claims holds none of them.
        r = self.report_of(store, "--from", "2001-01-01", "--to", "2001-01-31", "--html", out)
        self.assertEqual(r.rc, 1, r)
        page = Page()
        page.feed(isgtest.read_text(out))
        self.assertEqual((page.ids["total-entries"], page.ids["total-accepted"]), ("0", "0"))

    def test_csv_rows(self):
        with open(self.csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(sum(int(r["messages"]) for r in rows), self.expected()["total-accepted"])
        self.assertEqual(sum(int(r["records"]) for r in rows), self.expected()["total-records"])
        self.assertEqual(sum(int(r["refusals"]) for r in rows), self.expected()["total-refused"])
        keys = [(r["day"], r["agreement"], r["partner"]) for r in rows]
        self.assertEqual(len(keys), len(set(keys)))
        self.assertIn(HOSTILE_AGREEMENT, [r["agreement"] for r in rows])

    def test_report_files_are_private(self):
        """Report files are written anew with mode 0600, whatever the umask or an old file's mode."""
        d = os.path.join(self.tmp, "private")
        os.mkdir(d)
        paths = [os.path.join(d, name) for name in ("r.html", "r.md", "r.csv")]
        with open(paths[0], "w", encoding="utf-8") as f:
            f.write("old\n")
        os.chmod(paths[0], 0o644)
        umask = os.umask(0o022)  # isgctl inherits it: a plain fopen would make 0644 files
        try:
            r = isgtest.ctl("audit", "report", "--config", self.gw.config_path,
                            "--from", self.first_day, "--to", self.last_day,
                            "--html", paths[0], "--markdown", paths[1], "--csv", paths[2])
        finally:
            os.umask(umask)
        self.assertEqual(r.rc, 0, r)
        for path in paths:
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600, path)
        self.assertIn("integrity-status", isgtest.read_text(paths[0]))
        self.assertEqual(isgtest.read_text(paths[2]), isgtest.read_text(self.csv_path))
        self.assertEqual(sorted(os.listdir(d)), ["r.csv", "r.html", "r.md"])  # no temporary left
        # '-' is still standard output.
        r = isgtest.ctl("audit", "report", "--config", self.gw.config_path,
                        "--from", self.first_day, "--to", self.last_day, "--csv", "-")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(r.out, isgtest.read_text(self.csv_path))

    def test_a_bad_verifier_key_writes_no_report(self):
        """A mistyped --pubkey is a bad command line and a --pubkey-file that holds no key a
        bad input file: refused with the reason before anything is written, never a report
        whose integrity section blames a missing key."""
        d = os.path.join(self.tmp, "badkey")
        os.mkdir(d)
        garbage = os.path.join(self.tmp, "garbage.pub")
        with open(garbage, "w", encoding="utf-8") as f:
            f.write("garbage\n")
        for opt, value, rc in (("--pubkey", "garbage", 2), ("--pubkey-file", garbage, 1)):
            r = isgtest.ctl("audit", "report", "--config", self.gw.config_path,
                            "--from", self.first_day, "--to", self.last_day, opt, value,
                            "--html", os.path.join(d, "r.html"),
                            "--markdown", os.path.join(d, "r.md"), "--csv", "-")
            self.assertEqual((r.rc, r.out), (rc, ""), r)
            self.assertIn("%s%s is not a valid verifier key: " % (
                opt, "" if rc == 2 else " '%s'" % garbage), r.err)
            self.assertEqual("usage: isgctl audit report" in r.err, rc == 2, r)
            self.assertNotIn("report written", r.err)
            self.assertEqual(os.listdir(d), [])
        # A good key of another origin is documented to write the report (exit 1): the
        # page says why it could not verify, not that there was no key.
        key = isgtest.ctl("audit", "pubkey", "--config", self.gw.config_path).out.strip()
        html, md = os.path.join(d, "r.html"), os.path.join(d, "r.md")
        r = isgtest.ctl("audit", "report", "--config", self.gw.config_path,
                        "--from", self.first_day, "--to", self.last_day, "--pubkey", key,
                        "--origin", "other-gateway", "--html", html, "--markdown", md)
        self.assertEqual(r.rc, 1, r)
        why = "--pubkey is the key of origin 'isg-gateway', not of --origin 'other-gateway'"
        self.assertIn(why, r.err)
        page = Page()
        page.feed(isgtest.read_text(html))
        self.assertIn(why, page.ids["integrity-status"])
        self.assertTrue(page.ids["integrity-status"].startswith("NOT VERIFIED"), page.ids)
        self.assertIn("**NOT VERIFIED**: no verifier key it could use (%s)" % why,
                      isgtest.read_text(md))

    def test_empty_period_and_usage(self):
        out = os.path.join(self.tmp, "empty.html")
        r = isgtest.ctl("audit", "report", "--config", self.gw.config_path,
                        "--from", "2001-01-01", "--to", "2001-01-31", "--html", out)
        self.assertEqual(r.rc, 0, r)
        page = Page()
        page.feed(isgtest.read_text(out))
        self.assertEqual(page.ids["total-accepted"], "0")
        self.assertTrue(page.ids["integrity-status"].startswith("OK"))
        for args in (["--from", "2026-02-01", "--to", "2026-01-01", "--html", out],
                     ["--from", "2026-01-01", "--to", "2026-01-02"],
                     ["--from", "2026-1-1", "--to", "2026-01-02", "--csv", out],
                     ["--from", "2020-01-01", "--to", "2026-01-02", "--csv", out]):
            r = isgtest.ctl("audit", "report", "--config", self.gw.config_path, *args)
            self.assertEqual(r.rc, 2, r)

    # -- rendered by a browser

    def test_renders_in_chromium(self):
        if not os.path.exists(CHROMIUM):
            msg = "%s is missing: install Debian's chromium package (scripts/deps)" % CHROMIUM
            if os.environ.get("CI"):
                self.fail(msg)
            self.skipTest(msg)
        profile = os.path.join(self.tmp, "chromium-profile")
        flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--user-data-dir=" + profile]
        url = "file://" + self.html_path
        dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True,
                             timeout=120)
        self.assertEqual(dom.returncode, 0, dom.stderr[-2000:])
        page = Page()
        page.feed(dom.stdout)
        for ident, want in self.expected().items():
            self.assertEqual(page.ids.get(ident), str(want), ident)
        self.assertIn("chart-records-by-agreement", page.ids)
        artefacts = os.path.join(os.path.dirname(isgtest.BIN), "test-artefacts")
        os.makedirs(artefacts, exist_ok=True)
        png = os.path.join(artefacts, "audit-report.png")
        if os.path.exists(png):
            os.unlink(png)
        shot = subprocess.run(flags + ["--hide-scrollbars", "--screenshot=" + png,
                                       "--window-size=1280,2000", url],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(shot.returncode, 0, shot.stderr[-2000:])
        with open(png, "rb") as f:
            head = f.read(24)
        self.assertEqual(head[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(int.from_bytes(head[16:20], "big"), 1280)


if __name__ == "__main__":
    unittest.main()
