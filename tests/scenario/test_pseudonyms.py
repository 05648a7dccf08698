"""
Scenario: agreements that pseudonymise and generalise, through the real isgd
(docs/pseudonyms.md, docs/keys.md, docs/policy.md "Actions").

Each test starts its own gateway with a fresh keys directory and the linkage
domains it needs (isgctl keys new-domain), the police, the NHS trust and the
council as partners, and three agreements:

  police-council-referrals  met-police  -> city-council  domain council-link
  nhs-council-referrals     nhs-trust   -> city-council  domain council-link
  police-nhs-triage         met-police  -> nhs-trust     domain health-link

The expected pseudonyms are computed here from the domain key files with
the construction of docs/pseudonyms.md (isgtest.pseudonym), so these tests
also prove that the documentation is true.
"""

import base64
import datetime
import json
import os
import re
import sqlite3
import stat
import subprocess
import time
import unittest

import isgtest

COUNCIL_DOMAIN = "council-link"
HEALTH_DOMAIN = "health-link"
POLICE_COUNCIL = "police-council-referrals"
NHS_COUNCIL = "nhs-council-referrals"
POLICE_NHS = "police-nhs-triage"
DATASET = "referral"

# Type bytes of docs/pseudonyms.md.
T_NHS = 0x01
T_POSTCODE = 0x03

NHS_A = "9434765919"  # valid (DESIGN.md section 6)
NHS_B = "6281948211"  # valid, another person
PSEUDONYM = re.compile(r"p([1-9][0-9]*)_[A-Za-z0-9_-]{43}")


def fields(domain):
    return [
        {"name": "nhs_number", "type": "nhs_number", "action": "pseudonymise", "domain": domain,
         "required": True},
        {"name": "postcode", "type": "postcode", "action": "pseudonymise", "domain": domain},
        {"name": "dob_band", "type": "date", "action": "generalise", "to": "age_band", "width": 5},
        {"name": "dob_year", "type": "date", "action": "generalise", "to": "year"},
        {"name": "pc_area", "type": "postcode", "action": "generalise", "to": "postcode_area"},
        {"name": "pc_district", "type": "postcode", "action": "generalise", "to": "postcode_district"},
        {"name": "pc_sector", "type": "postcode", "action": "generalise", "to": "postcode_sector"},
        {"name": "incident_month", "type": "date", "action": "generalise", "to": "month"},
        {"name": "income_band", "type": "integer", "action": "generalise", "to": "number_band",
         "width": 10000},
        {"name": "outcome", "type": "text", "action": "pass"},
        {"name": "notes", "type": "text", "action": "drop"},
    ]


def agreement(id, sender, recipient, domain):
    return isgtest.default_agreement(
        id=id, title="Referrals (%s)" % id, senders=[sender], recipients=[recipient],
        purpose={"code": "service-planning", "text": "Plan services from pseudonymised referrals"},
        datasets=[{"name": DATASET, "unknown_fields": "reject", "fields": fields(domain)}])


def agreements():
    return [agreement(POLICE_COUNCIL, "met-police", "city-council", COUNCIL_DOMAIN),
            agreement(NHS_COUNCIL, "nhs-trust", "city-council", COUNCIL_DOMAIN),
            agreement(POLICE_NHS, "met-police", "nhs-trust", HEALTH_DOMAIN)]


def utc_today():
    return datetime.datetime.now(datetime.timezone.utc).date()


def age_band(dob, today, width=5):
    """Completed years at `today`, banded (docs/policy.md "Generalising")."""
    age = today.year - dob.year - ((today.month, today.day) < (dob.month, dob.day))
    low = age // width * width
    return "%d-%d" % (low, low + width - 1)


def years_before(d, years):
    try:
        return d.replace(year=d.year - years)
    except ValueError:  # 29 February in a year that has none
        return d.replace(year=d.year - years, day=28)


class PseudonymCase(isgtest.ScenarioCase):
    def start(self, domains=(COUNCIL_DOMAIN, HEALTH_DOMAIN)):
        policy = self.policy(agreements=agreements())
        self.gw = self.gateway(policy, domains=domains)
        self.police = self.partner(self.gw, "police")
        self.nhs = self.partner(self.gw, "nhs")
        self.council = self.partner(self.gw, "council")
        return self.gw

    def key(self, domain, version):
        for k in isgtest.domain_keys(self.gw.keys_dir, domain):
            if k.version == version:
                return k.key
        self.fail("domain %s has no key version %d" % (domain, version))

    def expected(self, domain, version, type_byte, normalised):
        return isgtest.pseudonym(self.key(domain, version), version, type_byte, normalised)

    def send(self, sender, records, to="city-council", agreement=POLICE_COUNCIL):
        return sender.send_ok(records, to=to, agreement=agreement, dataset=DATASET)

    def fetch(self, recipient, count):
        """The messages waiting for `recipient` (exactly `count`), oldest first."""
        msgs = recipient.fetch_messages()
        self.assertEqual(len(msgs), count, "expected %d message(s), got %s" % (count, json.dumps(msgs)))
        return sorted(msgs, key=lambda m: m["gateway_id"])

    def fetch_records(self, recipient, count=1):
        out = []
        for m in self.fetch(recipient, count):
            out.extend(m["records"])
        return out

    def audit_bodies(self, kind):
        """Bodies of the audit entries of one kind, read from the store (docs/audit-format.md)."""
        db = sqlite3.connect("file:%s?mode=ro" % self.gw.store_path, uri=True)
        try:
            rows = db.execute("SELECT entry FROM audit WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
        finally:
            db.close()
        return [json.loads(r[0])["entry"] for r in rows]

    def assertPseudonym(self, value, version=1):
        self.assertIsInstance(value, str)
        m = PSEUDONYM.fullmatch(value)
        self.assertIsNotNone(m, "%r is not a pseudonym p%d_<43 base64url characters>" % (value, version))
        self.assertEqual(int(m.group(1)), version, value)

    def start_isgd_expecting_refusal(self, gw, *extra):
        """Run isgd on gw's configuration in the foreground; it must exit non-zero. Returns its stderr."""
        argv = [isgtest.ISGD] + list(extra) + ["--config", gw.config_path] + gw.new_store_args()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=isgtest.START_TIMEOUT,
                               stdin=subprocess.DEVNULL, preexec_fn=isgtest._die_with_parent)
        except subprocess.TimeoutExpired:
            self.fail("isgd %s kept running: it should have refused the configuration" % " ".join(extra))
        self.assertNotEqual(p.returncode, 0, "isgd %s exited 0\n%s%s" % (" ".join(extra), p.stdout, p.stderr))
        self.assertNotIn("configuration OK", p.stdout)
        return p.stderr

    def check_config(self, gw):
        return subprocess.run([isgtest.ISGD, "--check-config", "--config", gw.config_path]
                              + gw.new_store_args(),
                              capture_output=True, text=True, timeout=isgtest.START_TIMEOUT,
                              stdin=subprocess.DEVNULL)


class TestPseudonyms(PseudonymCase):
    def test_equivalent_inputs_give_one_pseudonym(self):
        """(1) however the sender writes an NHS number or a postcode, one pseudonym."""
        self.start()
        self.send(self.police, [
            {"nhs_number": "943 476 5919", "postcode": "sw1a1aa"},
            {"nhs_number": "943-476-5919", "postcode": "SW1A 1AA"},
            {"nhs_number": "9434765919", "postcode": " Sw1A  1aA "},
            {"nhs_number": NHS_B, "postcode": "NE3 4RT"},
        ])
        recs = self.fetch_records(self.council)
        self.assertEqual(len(recs), 4)
        for r in recs:
            self.assertEqual(list(r), ["nhs_number", "postcode"], r)
            self.assertPseudonym(r["nhs_number"])
            self.assertPseudonym(r["postcode"])
        self.assertEqual(len({r["nhs_number"] for r in recs[:3]}), 1, recs)
        self.assertEqual(len({r["postcode"] for r in recs[:3]}), 1, recs)
        # another person and another postcode: other pseudonyms
        self.assertNotEqual(recs[3]["nhs_number"], recs[0]["nhs_number"])
        self.assertNotEqual(recs[3]["postcode"], recs[0]["postcode"])
        self.assertNotEqual(recs[0]["nhs_number"], recs[0]["postcode"])
        for clear in [NHS_A, NHS_B, "SW1A", "NE3 4RT"]:
            self.assertNotIn(clear, json.dumps(recs))
            self.assertNotIn(clear, self.gw.log)

    def test_one_domain_links_across_messages_senders_and_restart(self):
        """(2) council-link: the same pseudonym in every message, from police and NHS, after a restart."""
        self.start()
        self.send(self.police, [{"nhs_number": "943 476 5919"}])
        self.send(self.police, [{"nhs_number": NHS_B}, {"nhs_number": "943-476-5919"}])
        self.send(self.nhs, [{"nhs_number": "9434765919"}], agreement=NHS_COUNCIL)
        msgs = self.fetch(self.council, 3)
        self.assertEqual([m["sender"] for m in msgs], ["met-police", "met-police", "nhs-trust"])
        first = msgs[0]["records"][0]["nhs_number"]
        self.assertPseudonym(first)
        self.assertEqual(msgs[1]["records"][1]["nhs_number"], first)
        self.assertEqual(msgs[2]["records"][0]["nhs_number"], first)
        self.assertNotEqual(msgs[1]["records"][0]["nhs_number"], first)

        self.gw.stop()
        self.gw.start()  # same keys directory, same store
        self.send(self.nhs, [{"nhs_number": NHS_A}], agreement=NHS_COUNCIL)
        self.send(self.police, [{"nhs_number": NHS_A}])
        after = self.fetch_records(self.council, 2)
        self.assertEqual([r["nhs_number"] for r in after], [first, first])

    def test_two_domains_give_unrelated_pseudonyms(self):
        """(3) the same NHS number under council-link and health-link: unrelated pseudonyms."""
        self.start()
        self.send(self.police, [{"nhs_number": NHS_A}])
        self.send(self.police, [{"nhs_number": NHS_A}], to="nhs-trust", agreement=POLICE_NHS)
        council = self.fetch_records(self.council)[0]["nhs_number"]
        health = self.fetch_records(self.nhs)[0]["nhs_number"]
        self.assertPseudonym(council)
        self.assertPseudonym(health)
        self.assertNotEqual(council, health)
        self.assertNotEqual(self.key(COUNCIL_DOMAIN, 1), self.key(HEALTH_DOMAIN, 1))
        # each is its own domain's keyed hash, and not the other's
        self.assertEqual(council, self.expected(COUNCIL_DOMAIN, 1, T_NHS, NHS_A))
        self.assertEqual(health, self.expected(HEALTH_DOMAIN, 1, T_NHS, NHS_A))

    def test_pseudonym_reproducible_from_the_domain_key(self):
        """(4) a key holder recomputes the delivered pseudonyms with docs/pseudonyms.md's construction."""
        self.start()
        path = os.path.join(self.gw.keys_dir, "domains", COUNCIL_DOMAIN + ".key")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        keys = isgtest.domain_keys(self.gw.keys_dir, COUNCIL_DOMAIN)
        self.assertEqual([(k.name, k.version, k.retires) for k in keys], [(COUNCIL_DOMAIN, 1, "-")])
        self.assertEqual(len(keys[0].key), 32)

        self.send(self.police, [{"nhs_number": "943 476 5919", "postcode": "sw1a1aa"},
                                {"nhs_number": NHS_B, "postcode": "NE35 7XY"}])
        recs = self.fetch_records(self.council)
        self.assertEqual(recs[0]["nhs_number"], self.expected(COUNCIL_DOMAIN, 1, T_NHS, NHS_A))
        self.assertEqual(recs[0]["postcode"], self.expected(COUNCIL_DOMAIN, 1, T_POSTCODE, "SW1A 1AA"))
        self.assertEqual(recs[1]["nhs_number"], self.expected(COUNCIL_DOMAIN, 1, T_NHS, NHS_B))
        self.assertEqual(recs[1]["postcode"], self.expected(COUNCIL_DOMAIN, 1, T_POSTCODE, "NE35 7XY"))

    def test_generalisation_in_deliveries(self):
        """(5) age band at today's date, year, postcode area/district/sector, month, number band."""
        self.start()
        before = utc_today()
        birthday_today = years_before(before, 65)
        birthday_tomorrow = years_before(before + datetime.timedelta(days=1), 65)
        other = datetime.date(1987, 7, 15)
        common = {"nhs_number": NHS_A, "outcome": "referred", "notes": "Quillfeather Mews informant"}
        sent = [
            dict(common, dob_band=birthday_today.isoformat(), dob_year="14/03/1958",
                 pc_area="ne3 4rt", pc_district="ne3 4rt", pc_sector="ne3 4rt",
                 incident_month="20/11/2026", income_band=37250),
            dict(common, dob_band=birthday_tomorrow.strftime("%d/%m/%Y"), dob_year="2000-02-29",
                 pc_area="NE357XY", pc_district="NE357XY", pc_sector="NE357XY",
                 incident_month="20260228", income_band=-1),
            dict(common, dob_band=other.strftime("%Y%m%d"), dob_year="1/2/1958",
                 pc_area="M1 1AE", pc_district="W1A 0AX", pc_sector="gir0aa",
                 incident_month="2023-12-31", income_band=0),
        ]
        self.send(self.police, sent)
        recs = self.fetch_records(self.council)
        after = utc_today()

        order = ["nhs_number", "dob_band", "dob_year", "pc_area", "pc_district", "pc_sector",
                 "incident_month", "income_band", "outcome"]
        for r in recs:
            self.assertEqual(list(r), order, "declared order, notes dropped: %r" % r)
            self.assertPseudonym(r["nhs_number"])
            self.assertEqual(r["outcome"], "referred")
        self.assertNotIn("Quillfeather", json.dumps(recs))

        def bands(dob):
            return {age_band(dob, before), age_band(dob, after)}

        got = [(r["dob_band"], r["dob_year"], r["pc_area"], r["pc_district"], r["pc_sector"],
                r["incident_month"], r["income_band"]) for r in recs]
        self.assertIn(got[0][0], bands(birthday_today))
        self.assertIn(got[1][0], bands(birthday_tomorrow))
        self.assertIn(got[2][0], bands(other))
        if before == after:
            # the birthday boundary: 65 today, still 64 until tomorrow
            self.assertEqual((got[0][0], got[1][0]), ("65-69", "60-64"))
        self.assertEqual(got[0][1:], ("1958", "NE", "NE3", "NE3 4", "2026-11", "30000-39999"))
        self.assertEqual(got[1][1:], ("2000", "NE", "NE35", "NE35 7", "2026-02", "-10000--1"))
        self.assertEqual(got[2][1:], ("1958", "M", "W1A", "GIR 0", "2023-12", "0-9999"))
        for r in recs:
            self.assertIsInstance(r["income_band"], str)


class TestDocumentedVectors(PseudonymCase):
    # docs/pseudonyms.md "Test vectors": (type, input as sent, pseudonym under the test key).
    VECTORS = [
        ("nhs_number", "943 476 5919", "p1_3OclCLKM5wMlaCmiStTYz8SUpPKTbA4OyifUBQE5d_w"),
        ("pnc_id", "79/163001b", "p1_Ozh5VLAXW3PoH1KoKPkqmbyl8dtVX694rMjzBZJjw54"),
        ("pnc_id", "51/1234567W", "p1_t_wTvO1RWHcAkmxeAwKF9OT7DGZGwpvs06F3mjPTAVY"),
        ("pnc_id", " 50/1234567f ", "p1_Wpf47vXEtEeeQ0HMa8cMrDJ-B4hHQ5UB6nwg6svI2X4"),
        ("postcode", "sw1a1aa", "p1_u_RuvuxcubBc4VtSZaf3ys8aNMxFcT0F6ZFGEv-Nkbw"),
        ("postcode", "gir0aa", "p1_FN5akdTvjs5pbUPbGlPEAe1ghmgu1IvyF2AvZYB-1zI"),
        ("date", "01/02/1958", "p1_lctHRyLoqWaSIKKy2FWPIOiqDssAtLpIHd9Yl6yZx54"),
        ("date", "29/2/2000", "p1_7gVjKQxq73_d3tysv56MPFLWmIOWoYpvXfsvqUK2iRs"),
        ("name", "Siobh\u00e1n O\u2019Brien-Murphy", "p1_A8MR2OdR7RElh03kd492c6pGdnsgPMOx5wab2gC27AI"),
        ("name", "\u039f\u0394\u03a5\u03a3\u03a3\u0395\u0391\u03a3",
         "p1_KXzCdiRyydcGwKXQyIcC_F2-0vazUDaLLbWNlNWVvSM"),
        ("name", "Sio\u0301bhan", "p1_1nZAKXaGsTodbsAZmRWe3R1qVsC4vNXRPKONmTmGQpU"),
        ("name", "Ga\u0140lard", "p1_NztXFFSQX5knh8kltQCg_c9JjmcLQNfr8CaT1wia0tE"),
        ("email", " Jane.Doe@Example.NHS.uk ", "p1_ppVaShpPiW1SGwqvigLn7twOotwMp-kAKXD8O9tSYMo"),
        ("email", "\u00dcn\u00efcode@Ex\u00e4mple.COM", "p1_DzT8aYT31d08tUQWW5JzrZNIG_pkRfVb9iWn_5zJ1Ho"),
        ("identifier", "  AB  12 cd ", "p1__YrUhLbMkX2hcRl0hQM8u70rlLW7qb1-yva9uCwHcjk"),
        ("identifier", "AB\u00a012", "p1_-GCD9onNhv7hWaFEPk17kfLD2kU4L3FI88Fhyaho_yA"),
        ("identifier", "X" * 256, "p1_F56s2BB-u0XH5geM-BLCR-ztl22rc92plfhZPkdU8bY"),
    ]

    def test_delivered_pseudonyms_are_the_documented_vectors(self):
        """(4) with the documented test key as a domain's key, isgd delivers the page's vectors."""
        types = sorted({t for t, _, _ in self.VECTORS})
        fields = [{"name": t, "type": t, "action": "pseudonymise", "domain": "doc-test"}
                  for t in types]
        a = isgtest.default_agreement(datasets=[{"name": DATASET, "unknown_fields": "reject",
                                                 "fields": fields}])
        gw = self.gateway(self.policy(agreements=[a]), domains=["doc-test"], start=False)
        path = os.path.join(gw.keys_dir, "domains", "doc-test.key")
        with open(path, "w", encoding="ascii") as f:
            f.write("isg-domain-key-v1 doc-test 1 %s - %s\n"
                    % (utc_today(), base64.b64encode(bytes(range(32))).decode("ascii")))
        gw.start()
        police, nhs = self.partner(gw, "police"), self.partner(gw, "nhs")
        police.send_ok([{t: value} for t, value, _ in self.VECTORS], to="nhs-trust",
                       agreement=isgtest.AGREEMENT_ID, dataset=DATASET)
        got = [r for m in nhs.fetch_messages() for r in m["records"]]
        self.assertEqual(got, [{t: want} for t, _, want in self.VECTORS])


class TestInvalidIdentifiers(PseudonymCase):
    # (field, value): each value is invalid for its field's type and
    # distinctive enough that a search of the log cannot hit it by chance.
    BAD = [
        ("nhs_number", "9434765918"),   # check digit should be 9
        ("nhs_number", "401 023 2170"),  # first nine digits give check 10: no such number
        ("postcode", "SWA 7QZ"),        # outward code of no valid shape
        ("postcode", "KT19 9CX"),       # C in the inward code
        ("pc_district", "NE35-7XY"),    # a dash
        ("dob_band", "1987-02-30"),     # impossible date
        ("dob_year", "31/04/1973"),     # impossible date, UK order
        ("incident_month", "2023-13-05"),  # no month 13
    ]

    def test_invalid_values_refuse_the_message(self):
        """(6) exit 3, BAD_VALUE [dataset.field_value], record and field named, value never echoed."""
        self.start()
        good = {"nhs_number": NHS_B, "postcode": "NE3 4RT", "dob_band": "1961-06-02"}
        for field, value in self.BAD:
            with self.subTest(field=field, value=value):
                since = len(self.gw.log)
                bad = dict(good, nhs_number=NHS_A)
                bad[field] = value
                r = self.police.send([good, bad], to="city-council", agreement=POLICE_COUNCIL,
                                     dataset=DATASET)
                self.assertRefused(r, self.gw, "BAD_VALUE", "dataset.field_value")
                self.assertIn("record 1", r.err)
                self.assertIn('"%s"' % field, r.err)
                self.assertNotIn(value, r.err)
                self.assertNotIn(value, r.out)
                line = [ln for ln in self.gw.log[since:].splitlines() if "event=message.refused" in ln]
                self.assertEqual(len(line), 1, self.gw.diagnostics())
                self.assertIn("rule=dataset.field_value", line[0])
                self.assertIn("record=1", line[0])
                self.assertIn("field=%s" % field, line[0])
        log = self.gw.log
        for field, value in self.BAD:
            self.assertNotIn(value, log)
            self.assertNotIn(value.replace(" ", ""), log)
        # a refused message is never stored: nothing for the council
        self.assertEqual(self.council.fetch_messages(), [])
        # and the gateway still serves
        self.send(self.police, [good])
        self.assertEqual(len(self.fetch_records(self.council)), 1)


class TestNoSendToSelf(PseudonymCase):
    def test_a_partner_never_gets_its_own_records_pseudonymised(self):
        """A two-way agreement names the police both as sender and recipient,
        but the police cannot send to themselves: they would fetch back the
        pseudonyms of any NHS numbers they chose (docs/policy.md, agreement.recipient)."""
        both = ["met-police", "city-council"]
        two_way = isgtest.default_agreement(
            id="two-way", senders=both, recipients=both,
            datasets=[{"name": DATASET, "fields": fields(COUNCIL_DOMAIN)}])
        self.gw = self.gateway(self.policy(agreements=[two_way]), domains=(COUNCIL_DOMAIN,))
        police = self.partner(self.gw, "police")
        council = self.partner(self.gw, "council")
        since = len(self.gw.log)
        r = police.send([{"nhs_number": NHS_A}], to="met-police", agreement="two-way",
                        dataset=DATASET)
        self.assertRefused(r, self.gw, "NOT_PERMITTED", "agreement.recipient")
        self.assertIn("cannot send to itself", r.err)
        self.assertIn("rule=agreement.recipient", self.gw.log[since:])
        self.assertEqual(police.fetch_messages(), [])
        # each way between the two partners passes
        police.send_ok([{"nhs_number": NHS_A}], to="city-council", agreement="two-way",
                       dataset=DATASET)
        council.send_ok([{"nhs_number": NHS_B}], to="met-police", agreement="two-way",
                        dataset=DATASET)
        self.assertEqual(len(council.fetch_messages()), 1)
        self.assertEqual(len(police.fetch_messages()), 1)


class TestRotation(PseudonymCase):
    def test_rotation_with_and_without_overlap(self):
        """(7) --overlap 30: p2 with <field>.previous = the old p1; --overlap 0: p2 alone."""
        self.start()
        self.send(self.police, [{"nhs_number": NHS_A, "postcode": "SW1A 1AA", "pc_district": "NE3 4RT"}])
        self.send(self.police, [{"nhs_number": NHS_A, "postcode": "SW1A 1AA"}], to="nhs-trust",
                  agreement=POLICE_NHS)
        old_council = self.fetch_records(self.council)[0]
        old_health = self.fetch_records(self.nhs)[0]
        self.assertPseudonym(old_council["nhs_number"], 1)
        self.assertPseudonym(old_health["nhs_number"], 1)

        isgtest.rotate_domain(self.gw.keys_dir, COUNCIL_DOMAIN, overlap=30)
        isgtest.rotate_domain(self.gw.keys_dir, HEALTH_DOMAIN, overlap=0)
        today = utc_today()
        keys = isgtest.domain_keys(self.gw.keys_dir, COUNCIL_DOMAIN)
        self.assertEqual([k.version for k in keys], [1, 2])
        self.assertEqual(keys[0].retires, (today + datetime.timedelta(days=30)).isoformat())
        self.assertEqual(keys[1].retires, "-")

        # isgd uses a new version only from its next reload
        self.send(self.police, [{"nhs_number": NHS_A}])
        self.assertEqual(self.fetch_records(self.council), [{"nhs_number": old_council["nhs_number"]}])

        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "loaded", text)

        self.send(self.police, [{"nhs_number": "943 476 5919", "postcode": "sw1a1aa", "pc_district": "NE3 4RT"}])
        self.send(self.police, [{"nhs_number": NHS_A, "postcode": "SW1A 1AA"}], to="nhs-trust",
                  agreement=POLICE_NHS)
        council = self.fetch_records(self.council)[0]
        health = self.fetch_records(self.nhs)[0]

        # overlap: the previous pseudonym right after each pseudonymised field
        self.assertEqual(list(council), ["nhs_number", "nhs_number.previous", "postcode",
                                         "postcode.previous", "pc_district"], council)
        self.assertPseudonym(council["nhs_number"], 2)
        self.assertPseudonym(council["postcode"], 2)
        self.assertEqual(council["nhs_number.previous"], old_council["nhs_number"])
        self.assertEqual(council["postcode.previous"], old_council["postcode"])
        self.assertNotEqual(council["nhs_number"], old_council["nhs_number"])
        self.assertEqual(council["nhs_number"], self.expected(COUNCIL_DOMAIN, 2, T_NHS, NHS_A))
        self.assertEqual(council["postcode"], self.expected(COUNCIL_DOMAIN, 2, T_POSTCODE, "SW1A 1AA"))
        self.assertEqual(council["pc_district"], "NE3")

        # no overlap: p2 only, unrelated to p1
        self.assertEqual(list(health), ["nhs_number", "postcode"], health)
        self.assertPseudonym(health["nhs_number"], 2)
        self.assertNotEqual(health["nhs_number"], old_health["nhs_number"])
        self.assertEqual(health["nhs_number"], self.expected(HEALTH_DOMAIN, 2, T_NHS, NHS_A))
        self.assertEqual(health["postcode"], self.expected(HEALTH_DOMAIN, 2, T_POSTCODE, "SW1A 1AA"))

        # the audit log records the versions in use, at start and at the reload that rotated;
        # the first start of a new store finds no keys in use before it: every domain is new
        loaded = self.audit_bodies("keys.loaded")
        self.assertEqual(len(loaded), 2, loaded)
        self.assertEqual(loaded[0], {"event": "keys.loaded",
                                     "domains": {"audit": 1, COUNCIL_DOMAIN: 1, HEALTH_DOMAIN: 1},
                                     "created": ["audit", COUNCIL_DOMAIN, HEALTH_DOMAIN],
                                     "rotated": [], "removed": []})
        self.assertEqual(loaded[1], {"event": "keys.loaded",
                                     "domains": {"audit": 1, COUNCIL_DOMAIN: 2, HEALTH_DOMAIN: 2},
                                     "created": [], "rotated": [COUNCIL_DOMAIN, HEALTH_DOMAIN],
                                     "removed": []})
        self.assertIn("level=info event=keys.changed rotated=%s,%s audit=keys.loaded\n"
                      % (COUNCIL_DOMAIN, HEALTH_DOMAIN), text)


class TestRotationAcrossRestarts(PseudonymCase):
    """
    A start compares the keys it loads with the newest keys.loaded entry in
    the log, as a reload compares with the keys in use (docs/keys.md): a
    rotation taken in by a restart is recorded as one.
    """

    def keys_loaded(self, count):
        """The bodies of the keys.loaded entries, once there are `count` of them."""
        deadline = time.monotonic() + isgtest.START_TIMEOUT
        while True:
            loaded = self.audit_bodies("keys.loaded")
            if len(loaded) >= count or time.monotonic() > deadline:
                self.assertEqual(len(loaded), count, loaded)
                return loaded
            time.sleep(0.02)

    def this_start(self):
        """isgd's log since its latest start."""
        return self.gw.log.split("# isgtest: start %d:" % self.gw.starts, 1)[1]

    def test_restart_records_rotated_created_and_removed_domains(self):
        """isgctl keys rotate, new-domain and a removed domain file while stopped: the start's
        keys.loaded entry lists each as a reload would, and isgd logs keys.changed naming them."""
        self.start(domains=(COUNCIL_DOMAIN, HEALTH_DOMAIN, "spare-link"))
        self.send(self.police, [{"nhs_number": NHS_A}])
        old = self.fetch_records(self.council)[0]["nhs_number"]
        self.keys_loaded(1)
        self.gw.stop()
        r = isgtest.rotate_domain(self.gw.keys_dir, COUNCIL_DOMAIN, overlap=30)
        self.assertIn("reload isgd (SIGHUP) or restart it to use version 2", r.out)
        isgtest.new_domain(self.gw.keys_dir, "extra-link")
        os.remove(os.path.join(self.gw.keys_dir, "domains", "spare-link.key"))
        self.gw.start()

        loaded = self.keys_loaded(2)
        self.assertEqual(loaded[1], {"event": "keys.loaded",
                                     "domains": {"audit": 1, COUNCIL_DOMAIN: 2, "extra-link": 1,
                                                 HEALTH_DOMAIN: 1},
                                     "created": ["extra-link"], "rotated": [COUNCIL_DOMAIN],
                                     "removed": ["spare-link"]})
        self.assertIn("level=info event=keys.changed created=extra-link rotated=%s "
                      "removed=spare-link audit=keys.loaded\n" % COUNCIL_DOMAIN, self.this_start())
        self.assertNotIn("keys.compare_failed", self.gw.log)
        # and the new version is the one in use, with the old pseudonym beside it
        self.send(self.police, [{"nhs_number": NHS_A}])
        self.assertEqual(self.fetch_records(self.council),
                         [{"nhs_number": self.expected(COUNCIL_DOMAIN, 2, T_NHS, NHS_A),
                           "nhs_number.previous": old}])

        # a restart with no change lists nothing, and logs no change
        self.gw.restart()
        loaded = self.keys_loaded(3)
        self.assertEqual(loaded[2], dict(loaded[1], created=[], rotated=[], removed=[]))
        self.assertNotIn("keys.changed", self.this_start())

    def test_start_after_the_previous_entry_was_corrupted(self):
        """A keys.loaded entry damaged in the store (with sqlite3) does not stop isgd: it warns,
        claims nothing (null), and the next start compares with its own entry again."""
        self.start()
        self.send(self.police, [{"nhs_number": NHS_A}])
        self.fetch_records(self.council)
        self.keys_loaded(1)
        self.gw.stop()
        damages = [
            # the entry's own bytes, and the checkpoints that would refuse the store for it
            ("leaf", lambda keys_seq, newest: (keys_seq, [
                ("UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT), '\"domains\":{\"audit\":1',"
                 " '\"domains\":{\"Audit\":1') AS BLOB) WHERE seq = ?", (keys_seq,)),
                ("DELETE FROM checkpoints WHERE size >= ?", (keys_seq,))]),
             "a domain name that is not valid"),
            # the kind column, which nothing signs: a later entry labelled keys.loaded
            ("kind", lambda keys_seq, newest: (newest, [
                ("UPDATE audit SET kind = 'keys.loaded' WHERE seq = ?", (newest,))]),
             "an entry whose leaf cannot be read or disagrees with its kind column"),
            # the newest keys.loaded relabelled: an older one must not pass for it
            ("relabelled", lambda keys_seq, newest: (keys_seq, [
                ("UPDATE audit SET kind = 'policy.loaded' WHERE seq = ?", (keys_seq,))]),
             "an entry whose leaf cannot be read or disagrees with its kind column"),
            # no keys.loaded entry left, leaves and columns alike (and the checkpoints
            # that would refuse the store for it): the log is not new, so nothing is known
            ("none", lambda keys_seq, newest: (None, [
                # the earlier subtests' labels put back first: every kind column its leaf's event
                ("UPDATE audit SET kind = substr(CAST(entry AS TEXT), instr(CAST(entry AS TEXT),"
                 " '\"entry\":{\"event\":\"') + 18, instr(substr(CAST(entry AS TEXT),"
                 " instr(CAST(entry AS TEXT), '\"entry\":{\"event\":\"') + 18), '\"') - 1)", ()),
                ("UPDATE audit SET kind = 'keys.unloaded', entry = CAST(replace(CAST(entry AS TEXT),"
                 " '\"event\":\"keys.loaded\"', '\"event\":\"keys.unloaded\"') AS BLOB)"
                 " WHERE instr(CAST(entry AS TEXT), '\"event\":\"keys.loaded\"') > 0", ()),
                ("DELETE FROM checkpoints", ())]),
             "the audit log has entries but no keys.loaded entry"),
        ]
        for what, damage, reason in damages:
            with self.subTest(damaged=what):
                db = sqlite3.connect(self.gw.store_path)  # read-write: leaves no -wal behind
                try:
                    keys_seq, newest = db.execute(
                        "SELECT (SELECT max(seq) FROM audit WHERE kind = 'keys.loaded'),"
                        " max(seq) FROM audit").fetchone()
                finally:
                    db.close()
                self.assertGreater(newest, keys_seq)
                seq, statements = damage(keys_seq, newest)
                copy = isgtest.tampered_store(self.gw.store_path, self.gw.store_path + ".tmp",
                                              *statements)
                os.replace(copy, self.gw.store_path)
                for suffix in ("-wal", "-shm"):
                    self.assertFalse(os.path.exists(self.gw.store_path + suffix))
                before = len(self.audit_bodies("keys.loaded"))
                self.gw.start()
                self.assertAlive(self.gw)
                log = self.this_start()
                self.assertIn('level=warn event=keys.compare_failed previous=%s reason="%s"'
                              % (seq or "none", reason), log)
                self.assertNotIn("keys.changed", log)
                loaded = self.keys_loaded(before + 1)
                self.assertEqual(loaded[-1], {"event": "keys.loaded",
                                              "domains": {"audit": 1, COUNCIL_DOMAIN: 1,
                                                          HEALTH_DOMAIN: 1},
                                              "created": None, "rotated": None, "removed": None})
                # it still serves, with the same keys
                self.send(self.police, [{"nhs_number": NHS_A}])
                self.assertEqual(self.fetch_records(self.council),
                                 [{"nhs_number": self.expected(COUNCIL_DOMAIN, 1, T_NHS, NHS_A)}])
                # the next start compares with the entry this one wrote
                self.gw.restart()
                loaded = self.keys_loaded(before + 2)
                self.assertEqual(loaded[-1], dict(loaded[-2], created=[], rotated=[], removed=[]))
                self.assertNotIn("keys.compare_failed", self.this_start())
                self.send(self.police, [{"nhs_number": NHS_A}])  # entries after it
                self.fetch_records(self.council)
                self.gw.stop()


class TestRefusalsAtStartAndReload(PseudonymCase):
    def test_agreement_naming_a_domain_without_key(self):
        """(8) isgd and isgd --check-config refuse a policy naming a domain with no key."""
        gw = self.gateway(self.policy(agreements=agreements()), domains=[COUNCIL_DOMAIN], start=False)
        for extra in [(), ("--check-config",)]:
            with self.subTest(argv=extra):
                err = self.start_isgd_expecting_refusal(gw, *extra)
                self.assertIn("'%s'" % HEALTH_DOMAIN, err)
                self.assertIn("isgctl keys new-domain", err)
                self.assertIn(HEALTH_DOMAIN, err.split("isgctl keys new-domain", 1)[1])
                self.assertNotIn("'%s'" % COUNCIL_DOMAIN, err)
                # where the policy names it, printed as the policy loader's errors are
                keys = gw.keys_dir
                # in the words of isgctl policy check --keys, once per domain
                self.assertRegex(err, r"(?m)^%s:\d+:\d+: error: linkage domain '%s' of field "
                                 r"'nhs_number' has no key: no file '%s' \(create it with: "
                                 r"isgctl keys new-domain %s %s\)$"
                                 % (re.escape(os.path.join(gw.policy_dir, "agreements",
                                                           POLICE_NHS + ".yaml")),
                                    HEALTH_DOMAIN,
                                    re.escape(os.path.join(keys, "domains", HEALTH_DOMAIN + ".key")),
                                    re.escape(keys), HEALTH_DOMAIN))
                self.assertEqual(err.count("linkage domain '%s'" % HEALTH_DOMAIN), 1, err)
                self.assertNotIn("isgd: ", err)
        # with the key it is fine
        isgtest.new_domain(gw.keys_dir, HEALTH_DOMAIN)
        p = self.check_config(gw)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("configuration OK", p.stdout)
        gw.start()
        self.assertAlive(gw)

    def test_domain_key_file_readable_by_others(self):
        """(8) a domain key file with mode 0644: isgd refuses to start, naming the file and the mode."""
        gw = self.gateway(self.policy(agreements=agreements()), domains=[COUNCIL_DOMAIN, HEALTH_DOMAIN],
                          start=False)
        path = os.path.join(gw.keys_dir, "domains", HEALTH_DOMAIN + ".key")
        os.chmod(path, 0o644)
        for extra in [(), ("--check-config",)]:
            with self.subTest(argv=extra):
                err = self.start_isgd_expecting_refusal(gw, *extra)
                self.assertIn("isgd: key file '%s' has mode 0644: key files must have no group "
                              "or other permissions (0600 or 0400): chmod 600 '%s'\n"
                              % (path, path), err)
        os.chmod(path, 0o600)
        gw.start()
        self.assertAlive(gw)

    def test_reload_naming_a_missing_domain_keeps_the_running_policy_and_keys(self):
        """(8) SIGHUP with a policy naming a domain without key: refused, old policy and keys kept."""
        self.start()
        self.send(self.police, [{"nhs_number": NHS_A}])
        before = self.fetch_records(self.council)[0]["nhs_number"]
        self.assertPseudonym(before, 1)

        # a rotated key and a policy naming a domain that has no key
        isgtest.rotate_domain(self.gw.keys_dir, COUNCIL_DOMAIN, overlap=30)
        extra = agreement("police-council-extra", "met-police", "city-council", "ghost-link")
        other = agreement("police-council-other", "met-police", "city-council", "ghost-two")
        isgtest.write_policy(self.gw.policy_dir, agreements=agreements() + [extra, other])
        refused = len(self.audit_bodies("policy.refused"))
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "refused", text)
        self.assertEqual(len(self.audit_bodies("policy.refused")), refused + 1)
        self.assertRegex(text, r"event=keys\.missing_domain .*'ghost-link'.*isgctl keys new-domain")
        # the place in fields of its own, as policy.diagnostic has it; the words of
        # isgctl policy check --keys
        keys = self.gw.keys_dir
        self.assertRegex(text, r"(?m)event=keys\.missing_domain file=%s line=\d+ col=\d+ "
                         r"message=\"linkage domain 'ghost-link' of field 'nhs_number' has no "
                         r"key: no file '%s' \(create it with: isgctl keys new-domain %s "
                         r"ghost-link\)\"$"
                         % (re.escape(os.path.join(self.gw.policy_dir, "agreements",
                                                   "police-council-extra.yaml")),
                            re.escape(os.path.join(keys, "domains", "ghost-link.key")),
                            re.escape(keys)))
        self.assertAlive(self.gw, "after a refused reload")
        # the audit entry counts what was wrong: two domains without a key
        self.assertEqual(self.audit_bodies("policy.refused")[-1]["errors"], 2)
        os.remove(os.path.join(self.gw.policy_dir, "agreements", "police-council-other.yaml"))

        # the running policy: the new agreement is unknown, the old one works with the old key
        r = self.police.send([{"nhs_number": NHS_A}], to="city-council", agreement="police-council-extra",
                             dataset=DATASET)
        self.assertRefused(r, self.gw, "NOT_PERMITTED", "agreement.unknown")
        self.send(self.police, [{"nhs_number": NHS_A}])
        self.assertEqual(self.fetch_records(self.council), [{"nhs_number": before}])

        # once the domain exists the same policy loads, with the rotated key
        isgtest.new_domain(self.gw.keys_dir, "ghost-link")
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "loaded", text)
        self.send(self.police, [{"nhs_number": NHS_A}], agreement="police-council-extra")
        self.send(self.police, [{"nhs_number": NHS_A}])
        recs = self.fetch_records(self.council, 2)
        ghost = recs[0]["nhs_number"]
        self.assertEqual(ghost, self.expected("ghost-link", 1, T_NHS, NHS_A))
        self.assertEqual(recs[1], {"nhs_number": self.expected(COUNCIL_DOMAIN, 2, T_NHS, NHS_A),
                                   "nhs_number.previous": before})
        loaded = self.audit_bodies("keys.loaded")
        self.assertEqual(loaded[-1]["created"], ["ghost-link"])
        self.assertEqual(loaded[-1]["rotated"], [COUNCIL_DOMAIN])

        # a domain key file that became readable by others: refused too, keys kept
        path = os.path.join(self.gw.keys_dir, "domains", "ghost-link.key")
        os.chmod(path, 0o644)
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "refused", text)
        self.assertRegex(text, r"event=keys\.error .*domains/ghost-link\.key.*mode 0644")
        self.send(self.police, [{"nhs_number": NHS_A}], agreement="police-council-extra")
        self.assertEqual(self.fetch_records(self.council), [{"nhs_number": ghost}])

    def test_domain_key_owned_by_another_user(self):
        """(8) a domain key file or domains/ owned by another user: refused naming its owner,
        at start and at a reload, though the key process (no CAP_DAC_OVERRIDE) cannot open it."""
        if os.geteuid() != 0:
            if os.environ.get("ISG_ALLOW_SKIP"):
                self.skipTest("needs root to give a key file to another user")
            self.fail("this test needs root (set ISG_ALLOW_SKIP=1 to skip it)")
        self.start()
        self.send(self.police, [{"nhs_number": NHS_A}])
        before = self.fetch_records(self.council)[0]["nhs_number"]
        domains = os.path.join(self.gw.keys_dir, "domains")
        path = os.path.join(domains, COUNCIL_DOMAIN + ".key")
        cases = [(path, "key file '%s' is owned by uid 4242, not by uid 0 (root), who reads it: "
                  "key files are read by their owner, the user isgd starts as: run isgctl as "
                  "that user, or, if uid 0 (root) is that user, chown root '%s'" % (path, path)),
                 (domains, "key directory '%s' has mode 0700 and owner uid 4242; it must not be "
                  "writable by group or others (0700) and must be owned by uid 0 or root" % domains)]
        for what, message in cases:
            with self.subTest(what=what):
                os.chown(what, 4242, 4242)
                try:
                    outcome, text = self.gw.reload()
                    err = self.check_config(self.gw).stderr
                finally:
                    os.chown(what, 0, 0)
                self.assertEqual(outcome, "refused", text)
                self.assertIn('event=keys.error message="%s"' % message, text)
                self.assertIn("isgd: %s\n" % message, err)
                self.send(self.police, [{"nhs_number": NHS_A}])
                self.assertEqual(self.fetch_records(self.council), [{"nhs_number": before}])

    def test_reload_without_the_keys_directory_keeps_the_running_keys(self):
        """(8) SIGHUP while the keys directory is gone (moved, unmounted): told as such, keys kept."""
        self.start()
        self.send(self.police, [{"nhs_number": NHS_A}])
        before = self.fetch_records(self.council)[0]["nhs_number"]
        away = self.gw.keys_dir + ".away"
        os.rename(self.gw.keys_dir, away)
        try:
            outcome, text = self.gw.reload()
        finally:
            os.rename(away, self.gw.keys_dir)
        self.assertEqual(outcome, "refused", text)
        self.assertIn("event=keys.error message=\"key directory '%s' does not exist; restore it from "
                      "its backup, or create one for a new gateway with "
                      "'isgctl keys init'\"" % self.gw.keys_dir, text)
        self.assertNotIn("keys.missing_domain", text)
        self.assertAlive(self.gw, "after a refused reload")
        self.send(self.police, [{"nhs_number": NHS_A}])
        self.assertEqual(self.fetch_records(self.council), [{"nhs_number": before}])


if __name__ == "__main__":
    unittest.main()
