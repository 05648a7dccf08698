#!/usr/bin/python3
"""
soak.py: run one isgd for a long while under realistic traffic, and check
afterwards what short tests miss.

    /usr/bin/python3 tests/soak/soak.py [--minutes 15] [--build build]
                                        [--rate 30] [--dir DIR] [--seed N]

Not part of the test suite (CI does not run it). It uses the scenario
harness (tests/scenario/isgtest.py): a PKI made with openssl, a policy
directory, and isgd from BUILD/bin (an ASan build works too:
`--build build-asan`). Traffic, all through the wire protocol:

- senders: two met-police connections (one pipelines four sends at a
  time), west-police and nhs-trust, at about --rate messages a second in
  all, under three agreements; about one send in twenty is meant to be
  refused (an undeclared field, a recipient or sender the agreement does
  not name, an unknown agreement, an NHS number with a bad check digit).
  A send that gets no answer (a restart) is sent again with the same
  message_id until it gets a receipt or a refusal;
- recipients: nhs-trust subscribes and acknowledges at once; nhs-south
  fetches or subscribes and acknowledges 2-20 s later (sometimes after the
  message expired), and sometimes drops the connection first;
  city-council fetches now and then and never acknowledges, so its
  messages expire (undelivered_ttl 30-40 s);
- the admin: a SIGHUP about every 20 s, in turn a policy change (an
  agreement's version, a field dropped or passed, a TTL), no change, a
  broken policy that must be refused while the running one serves, and
  west-police taken out of the registry and put back; once each a rotated
  TLS server certificate, a certificate without its key (refused), a
  linkage-domain key rotation and a daily limit brought in by a reload and
  lifted by the next; SIGTERM restarts and one SIGKILL in the first half;
- at the door: bare connects, an untrusted certificate, a certificate of
  no partner, frames cut short, one connection left idle until
  idle_timeout closes it;
- the IG officer: isgctl audit verify, audit checkpoint (kept for the
  final verify --against) and audit subject, beside the traffic.

Every few seconds it samples the gateway's and the key process's RSS, open
descriptors and threads, and the sizes of the store and its WAL, into
DIR/samples.csv. At the end it stops isgd and checks that every message the
gateway gave a receipt for reached its recipient (de-duplicated on
gateway_id) or is still stored or expired as its agreement's TTL says; that
nothing went to the wrong partner or came back after an acknowledgement;
that what arrived is what the agreement's version made of what was sent;
that the daily limits held; that `isgctl audit verify` passes and the audit
log has an entry for each receipt, each refusal and each refused
connection; that memory, descriptors and the WAL level off in the last
life of isgd; and that isgd's log has no unexpected error line and no
record value. It prints a summary (also DIR/summary.json) and exits 1 if a
check failed. docs/operations.md ("Soaking a build") says the same for
admins.
"""

import argparse
import collections
import csv
import datetime
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.abspath(os.path.join(HERE, "..", ".."))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--minutes", type=float, default=15.0, help="wall time in all, drain included")
    p.add_argument("--build", default="build", help="build directory holding bin/isgd")
    p.add_argument("--rate", type=float, default=30.0, help="messages a second, all senders together")
    p.add_argument("--dir", help="work directory (default: a new one under /tmp, kept)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--sample", type=float, default=3.0, help="seconds between samples")
    return p.parse_args()


ARGS = parse_args()
os.environ.setdefault("ISG_BIN", os.path.join(SOURCE, ARGS.build, "bin"))
# As scripts/test runs the sanitizer build; harmless for any other.
os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
sys.path.insert(0, os.path.join(SOURCE, "tests", "scenario"))
import isgtest  # noqa: E402  (needs ISG_BIN first)

PB = isgtest.isg_pb2()

# --------------------------------------------------------------------------
# Partners, policy and its versions.

PARTNERS = [
    # name (certificate), partner id, kind, CN
    ("police", "met-police", "police", isgtest.POLICE_CN),
    ("west", "west-police", "police", "west-police.partners.isg.example"),
    ("nhs", "nhs-trust", "nhs", isgtest.NHS_CN),
    ("south", "nhs-south", "nhs", "nhs-south.partners.isg.example"),
    ("council", "city-council", "council", isgtest.COUNCIL_CN),
]
CERT_OF = {pid: name for name, pid, _, _ in PARTNERS}

SAFE = "police-nhs-safeguarding"  # A1: to nhs-trust and nhs-south, long TTL
PLAN = "council-referral-planning"  # A2: to the council, which never acks; TTL 40 s / 30 s
TRIAGE = "police-nhs-mh-triage"  # A3: to nhs-south, the slow acker; TTL 15 s
DATASETS = {SAFE: "safeguarding-concern", PLAN: "referral-planning", TRIAGE: "triage-incident"}
TRIAGE_TTL_MS = 15000
SAFE_TTL_MS = 7 * 86400 * 1000
# Daily limits, set from the expected volume so that they are reached part way
# through: TRIAGE's messages_per_day (met-police alone sends under it), PLAN's
# records_per_day (each of its two senders has its own allowance).
LIMITS = {"triage_messages": 1000, "plan_records": 5000}
# Domain keys: name -> {version: key}, and when soak-planning was rotated
# (unix ms before the SIGHUP, after the reload).
KEYS = {}
ROTATION = {}


def safe_family_name_action(version):
    return "pass" if version % 2 == 1 else "drop"


def plan_ttl_ms(version):
    return 40000 if version % 2 == 1 else 30000


def agreements(v_safe, v_plan, suspended=False, safe_cap=None):
    common = {
        "lawful_basis": ["UK GDPR Art. 6(1)(e)", "UK GDPR Art. 9(2)(b)"],
        "valid_from": "2025-01-01",
        "valid_until": "2030-12-31",
    }
    safe = dict(common, **{
        "id": SAFE, "version": v_safe, "title": "Adult safeguarding concerns",
        "senders": ["met-police"] + ([] if suspended else ["west-police"]),
        "recipients": ["nhs-trust", "nhs-south"],
        "purpose": {"code": "adult-safeguarding", "text": "Share adult safeguarding concerns"},
        "undelivered_ttl": "7d",
        "limits": {"messages_per_day": safe_cap} if safe_cap else {},
        "datasets": [{"name": DATASETS[SAFE], "unknown_fields": "reject", "fields": [
            {"name": "nhs_number", "type": "nhs_number", "action": "pass", "required": True},
            {"name": "family_name", "type": "name", "action": safe_family_name_action(v_safe)},
            {"name": "date_of_birth", "type": "date", "action": "generalise", "to": "age_band",
             "width": 10},
            {"name": "postcode", "type": "postcode", "action": "generalise", "to": "postcode_district"},
            {"name": "concern_date", "type": "date", "action": "pass"},
            {"name": "concern_summary", "type": "text", "action": "pass"},
            {"name": "urgent", "type": "boolean", "action": "pass"},
            {"name": "risk_score", "type": "number", "action": "pass"},
            {"name": "officer_notes", "type": "text", "action": "drop"},
        ]}],
    })
    plan = dict(common, **{
        "id": PLAN, "version": v_plan, "title": "Referrals for service planning",
        "senders": ["met-police", "nhs-trust"], "recipients": ["city-council"],
        "purpose": {"code": "service-planning", "text": "Plan adult social care services"},
        "undelivered_ttl": "%ds" % (plan_ttl_ms(v_plan) // 1000),
        "limits": {"records_per_day": LIMITS["plan_records"]},
        "datasets": [{"name": DATASETS[PLAN], "unknown_fields": "reject", "fields": [
            {"name": "nhs_number", "type": "nhs_number", "action": "pseudonymise",
             "domain": "soak-planning", "required": True},
            {"name": "date_of_birth", "type": "date", "action": "generalise", "to": "age_band",
             "width": 5},
            {"name": "postcode", "type": "postcode", "action": "generalise", "to": "postcode_district"},
            {"name": "referral_date", "type": "date", "action": "generalise", "to": "month",
             "required": True},
            {"name": "category", "type": "text", "action": "pass", "required": True},
            {"name": "notes", "type": "text", "action": "drop"},
        ]}],
    })
    triage = dict(common, **{
        "id": TRIAGE, "version": 1, "title": "Street triage incidents",
        "senders": ["met-police"], "recipients": ["nhs-south"],
        "purpose": {"code": "mh-triage-evaluation", "text": "Evaluate street triage"},
        "undelivered_ttl": "%ds" % (TRIAGE_TTL_MS // 1000),
        "limits": {"messages_per_day": LIMITS["triage_messages"]},
        "datasets": [{"name": DATASETS[TRIAGE], "unknown_fields": "reject", "fields": [
            {"name": "nhs_number", "type": "nhs_number", "action": "pseudonymise",
             "domain": "soak-triage", "required": True},
            {"name": "incident_date", "type": "date", "action": "generalise", "to": "month",
             "required": True},
            {"name": "outcome", "type": "text", "action": "pass", "required": True},
            {"name": "officer_notes", "type": "text", "action": "drop"},
        ]}],
    })
    return [safe, plan, triage]


def partners_yaml(suspended=False):
    return [{"id": pid, "name": pid.replace("-", " ").title(), "kind": kind,
             "certificate": {"subject_cn": cn}} for _, pid, kind, cn in PARTNERS
            if not (suspended and pid == "west-police")]


def write_file_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_policy(dir, v_safe, v_plan, suspended=False, safe_cap=None):
    """suspended: west-police taken out of the registry and its agreement;
    safe_cap: a messages_per_day limit on SAFE."""
    os.makedirs(os.path.join(dir, "agreements"), exist_ok=True)
    write_file_atomic(os.path.join(dir, "partners.yaml"),
                      isgtest.yaml_dump({"partners": partners_yaml(suspended)}))
    for a in agreements(v_safe, v_plan, suspended, safe_cap):
        write_file_atomic(os.path.join(dir, "agreements", a["id"] + ".yaml"),
                          isgtest.yaml_dump({"agreement": a}))
    broken = os.path.join(dir, "agreements", "broken.yaml")
    if os.path.exists(broken):
        os.unlink(broken)


BROKEN_POLICIES = [
    # (what, file text): each must be refused at SIGHUP
    ("yaml syntax", "agreement:\n  id: broken\n  version: [1\n"),
    ("unknown key", None),  # filled in below from a valid agreement
    ("unknown partner", None),
    ("missing linkage domain", None),
]


def broken_policy_text(kind):
    a = dict(agreements(1, 1)[0])
    a["id"] = "broken"
    if kind == "unknown key":
        a["retention_days"] = 7
    elif kind == "unknown partner":
        a["recipients"] = ["nhs-nowhere"]
    elif kind == "missing linkage domain":
        a["datasets"] = agreements(1, 1)[1]["datasets"]
        a["datasets"][0]["fields"][0] = dict(a["datasets"][0]["fields"][0], domain="soak-no-key")
    else:
        return dict(BROKEN_POLICIES)[kind]
    return isgtest.yaml_dump({"agreement": a})


# --------------------------------------------------------------------------
# Record values. Distinctive, so that the log can be searched for them.

FAMILY_NAMES = ["Quixleyward", "Zabrowskian", "Okonkwo-Reyes", "Featherstonehaugh", "Nakamurova",
                "MacLeodson", "Vanterpool", "Brightwater"]
POSTCODES = ["NE3 4RT", "SW1A 1AA", "M1 1AE", "B33 8TH", "CR2 6XH", "DN55 1PT", "EC1A 1BB", "W1A 0AX"]
CATEGORIES = ["self-neglect", "financial-abuse", "domestic-abuse", "neglect"]


def nhs_number(rng):
    """A valid NHS number (modulus 11), starting 94."""
    while True:
        body = "94" + "".join(str(rng.randrange(10)) for _ in range(7))
        s = sum(int(d) * w for d, w in zip(body, range(10, 1, -1)))
        check = 11 - s % 11
        if check == 11:
            check = 0
        if check != 10:
            return body + str(check)


def bad_nhs_number(good):
    last = (int(good[-1]) + 1) % 10
    return good[:-1] + str(last)


def rand_date(rng, y0, y1):
    d = datetime.date(y0, 1, 1) + datetime.timedelta(days=rng.randrange((y1 - y0) * 365))
    return d.isoformat()


class Secrets:
    """Every record value sent, to look for in the log."""

    def __init__(self):
        self.lock = threading.Lock()
        self.nhs = set()
        self.notes = set()

    def add(self, nhs=None, note=None):
        with self.lock:
            if nhs:
                self.nhs.add(nhs)
            if note:
                self.notes.add(note)


SECRETS = Secrets()


def records_for(agreement, rng, n, serial, large=False):
    """n records; large: long free text, so the sealed payload is kept apart (store.md)."""
    recs = []
    for i in range(n):
        nhs = nhs_number(rng)
        note = "soaknote-%s-%d-%06x" % (serial, i, rng.randrange(1 << 24))
        SECRETS.add(nhs, note)
        if agreement == SAFE:
            r = {"nhs_number": nhs, "family_name": rng.choice(FAMILY_NAMES),
                 "date_of_birth": rand_date(rng, 1940, 2005), "postcode": rng.choice(POSTCODES),
                 "concern_date": rand_date(rng, 2025, 2026),
                 "concern_summary": "soaksummary %d%s" % (rng.randrange(1 << 30),
                                                          " lorem ipsum" * (40 if large else 0)),
                 "urgent": rng.random() < 0.2, "risk_score": round(rng.random() * 10, 2),
                 "officer_notes": note}
        elif agreement == PLAN:
            r = {"nhs_number": nhs, "date_of_birth": rand_date(rng, 1940, 2005),
                 "postcode": rng.choice(POSTCODES), "referral_date": rand_date(rng, 2025, 2026),
                 "category": rng.choice(CATEGORIES), "notes": note}
        else:
            r = {"nhs_number": nhs, "incident_date": rand_date(rng, 2025, 2026),
                 "outcome": rng.choice(["conveyed", "advice", "section-136"]), "officer_notes": note}
        recs.append(r)
    return recs


# --------------------------------------------------------------------------
# What happened, as the partners saw it.

class Ledger:
    def __init__(self):
        self.lock = threading.Lock()
        self.sends = {}  # (sender, message_id) -> dict
        self.by_gid = {}  # gateway_id -> (sender, message_id)
        self.deliveries = collections.defaultdict(dict)  # recipient -> gid -> [delivery dicts]
        self.acked = {}  # gid -> (recipient, time)
        self.ack_sent = set()  # gids in an Ack whose answer may not have come
        self.ack_unknown = collections.defaultdict(list)  # recipient -> [(gid, time)]
        self.problems = []
        self.notes = []
        self.counts = collections.Counter()
        self.events = []  # (time, text)
        self.probes = collections.Counter()  # (isgd start, kind) -> connections
        self.idle_closes = []

    def probe(self, start, kind):
        with self.lock:
            self.probes[(start, kind)] += 1

    def problem(self, text):
        with self.lock:
            self.problems.append("%s %s" % (stamp(), text))
        log("PROBLEM: " + text)

    def note(self, text):
        with self.lock:
            self.notes.append("%s %s" % (stamp(), text))

    def event(self, text):
        with self.lock:
            self.events.append((time.time(), text))
        log(text)

    def count(self, key, n=1):
        with self.lock:
            self.counts[key] += n


LEDGER = Ledger()
T0 = time.time()


def stamp():
    return "%7.1fs" % (time.time() - T0)


def log(text):
    sys.stdout.write("%s %s\n" % (stamp(), text))
    sys.stdout.flush()


RETRYABLE = (OSError, EOFError, ssl.SSLError, socket.timeout, ValueError)


class FrameConn(isgtest.FrameConn):
    """isgtest's FrameConn with a given SSL context and TLS session to resume."""

    def __init__(self, gateway, ctx, session=None, timeout=20.0):
        self.pb = PB
        raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        except BaseException:
            raw.close()
            raise
        self.buf = b""
        self.next_id = 1


class Conn:
    """One partner connection; reconnects on demand, resuming its TLS session
    when it has one (as libisgclient does)."""

    def __init__(self, soak, partner, cert=None):
        self.soak = soak
        self.partner = partner
        self.cert = cert or soak.pki.certs[CERT_OF[partner]]
        self.ctx = isgtest.tls_context(self.cert, soak.pki.server_ca.cert)
        self.session = None
        self.session_gen = None
        self.c = None
        self.connects = 0

    def get(self):
        if self.c is None:
            gen = self.soak.tls_generation
            self.c = FrameConn(self.soak.gw, self.ctx, self.session)
            self.connects += 1
            LEDGER.count("connects." + self.partner)
            if self.c.sock.session_reused:
                LEDGER.count("resumed")
                # Generations go up by one as a reload or restart begins and one as it ends.
                if gen - self.session_gen >= (2 if self.session_gen % 2 == 0 else 3):
                    LEDGER.problem("%s resumed a TLS session from before a reload or restart"
                                   % self.partner)
            self.c_gen = gen
        return self.c

    def drop(self):
        if self.c is not None:
            try:
                if self.c.sock.session is not None:
                    self.session, self.session_gen = self.c.sock.session, self.c_gen
            except (OSError, ValueError):
                pass
            self.c.close()
            self.c = None


# --------------------------------------------------------------------------
# Senders.

REFUSALS = [
    # (kind, expected rule, expected code)
    ("unknown_field", "dataset.unknown_field", "UNKNOWN_FIELD"),
    ("wrong_recipient", "agreement.recipient", "NOT_PERMITTED"),
    ("wrong_sender", "agreement.sender", "NOT_PERMITTED"),
    ("unknown_agreement", "agreement.unknown", "NOT_PERMITTED"),
    ("bad_nhs_number", "dataset.field_value", "BAD_VALUE"),
]


class Sender(threading.Thread):
    def __init__(self, soak, partner, tag, plan, rate, window=1):
        super().__init__(name="send-" + tag, daemon=True)
        self.soak, self.partner, self.tag, self.plan = soak, partner, tag, plan
        self.rate, self.window = rate, window
        self.rng = random.Random(soak.rng.randrange(1 << 30))
        self.conn = Conn(soak, partner)
        self.serial = 0
        self.next_req = 1

    def make(self):
        """(message dict, SendRequest frame body)."""
        self.serial += 1
        rng = self.rng
        agreement, recipient = rng.choice(self.plan)
        refusal = None
        if rng.random() < 0.05:
            refusal = rng.choice([r for r in REFUSALS if self.refusal_applies(r[0])])
        mid = "%s-%06d" % (self.tag, self.serial)
        large = rng.random() < 0.05
        n = rng.randint(20, 40) if large else rng.choice([1, 1, 1, 2, 3, 5])
        recs = records_for(agreement, rng, n, mid, large)
        dataset = DATASETS[agreement]
        expect = None
        if refusal:
            kind, rule, code = refusal
            expect = (rule, code)
            if kind == "unknown_field":
                recs[-1]["shoe_size"] = 9
            elif kind == "wrong_recipient":
                recipient = "city-council" if agreement != PLAN else "nhs-trust"
            elif kind == "wrong_sender":
                agreement, dataset = TRIAGE, DATASETS[TRIAGE]
                recipient = "nhs-south"
                recs = records_for(TRIAGE, rng, 1, mid)
            elif kind == "unknown_agreement":
                agreement = "police-nhs-no-such-agreement"
            elif kind == "bad_nhs_number":
                recs[0]["nhs_number"] = bad_nhs_number(recs[0]["nhs_number"])
                SECRETS.add(recs[0]["nhs_number"])
        req = PB.SendRequest(message_id=mid, recipient=recipient, agreement_id=agreement,
                             dataset=dataset, records=[isgtest.pb_record(PB, r) for r in recs])
        msg = {"sender": self.partner, "message_id": mid, "recipient": recipient,
               "agreement": agreement, "records": recs, "expect": expect, "attempts": 0,
               "outcome": None, "sent_at": time.time()}
        with LEDGER.lock:
            LEDGER.sends[(self.partner, mid)] = msg
        return msg, req

    def refusal_applies(self, kind):
        if kind == "wrong_sender":
            return self.partner != "met-police"  # only met-police sends under TRIAGE
        return True

    def run(self):
        pending = []  # [(msg, req)]
        while not self.soak.stop_senders.is_set() or pending:
            while len(pending) < self.window and not self.soak.stop_senders.is_set():
                pending.append(self.make())
            if not pending:
                break
            pending = self.attempt(pending)
            if pending:  # no answer: the gateway went away; back off and resend
                time.sleep(0.2 + self.rng.random() * 0.5)
                if self.soak.stop_hard.is_set():
                    for msg, _ in pending:
                        msg["outcome"] = "abandoned"
                    break
                continue
            if self.rng.random() < 0.02:
                self.conn.drop()  # a partner system that reconnects now and then
                LEDGER.count("voluntary_reconnects")
            time.sleep(self.rng.expovariate(self.rate / self.window))
        self.conn.drop()

    def attempt(self, pending):
        """Send every pending message (pipelined) and read the answers; returns those unanswered."""
        try:
            c = self.conn.get()
            ids = {}
            for msg, req in pending:
                rid = self.next_req
                self.next_req += 1
                ids[rid] = (msg, req)
                msg["attempts"] += 1
                if msg["attempts"] > 1:
                    LEDGER.count("resends")
                c.send_frame(PB.Frame(request_id=rid, send=req))
            while ids:
                f = c.recv_frame(timeout=30.0)
                if f.request_id == 0 and f.WhichOneof("body") == "error":
                    self.cut(f.error)
                    return [(m, r) for m, r in pending if m["outcome"] is None]
                if f.request_id not in ids:
                    LEDGER.problem("%s: answer to request %d that is not outstanding: %s"
                                   % (self.tag, f.request_id, f.WhichOneof("body")))
                    continue
                msg, req = ids[f.request_id]
                if self.answer(msg, f):
                    del ids[f.request_id]
                else:  # UNAVAILABLE: resend on a new connection after a pause
                    self.conn.drop()
                    break
            left = [v for v in ids.values()]
            if left:
                return [(m, r) for m, r in pending if any(m is x for x, _ in left)]
            return []
        except RETRYABLE as e:
            self.conn.drop()
            LEDGER.count("send_conn_errors")
            if isinstance(e, socket.timeout) and self.soak.gw_up.is_set():
                LEDGER.note("%s: no answer in 30 s while the gateway was up" % self.tag)
            return [(m, r) for m, r in pending if m["outcome"] is None]

    def cut(self, e):
        """The gateway closed the connection with an Error: only while this partner is suspended."""
        self.conn.drop()
        LEDGER.count("cut.%s.%s" % (self.partner, e.rule))
        if self.partner != "west-police" or e.rule not in ("partner.removed", "partner.unknown") \
                        or not self.soak.suspension_seen():
            LEDGER.problem("%s: connection closed with %s [%s] %s"
                           % (self.tag, PB.ErrorCode.Name(e.code), e.rule, e.message))
        time.sleep(1.0)

    def answer(self, msg, f):
        body = f.WhichOneof("body")
        key = (msg["sender"], msg["message_id"])
        if body == "send_result":
            r = f.send_result.receipt
            receipt = {"gateway_id": r.gateway_id, "audit_index": r.audit_index,
                       "accepted_at_ms": r.accepted_at_ms, "record_count": r.record_count,
                       "policy_version": r.policy_version}
            with LEDGER.lock:
                old = msg.get("receipt")
                other = LEDGER.by_gid.get(r.gateway_id)
                LEDGER.by_gid.setdefault(r.gateway_id, key)
            if r.message_id != msg["message_id"]:
                LEDGER.problem("receipt for %s names message %s" % (key, r.message_id))
            if other is not None and other != key:
                LEDGER.problem("gateway_id %d given to %s and %s" % (r.gateway_id, other, key))
            if old is not None and old != receipt:
                LEDGER.problem("second receipt for %s differs: %s vs %s" % (key, old, receipt))
            if r.duplicate:
                LEDGER.count("duplicate_receipts")
                if msg["attempts"] < 2:
                    LEDGER.problem("duplicate receipt on the first attempt of %s" % (key,))
            if msg["expect"]:
                LEDGER.problem("%s accepted, expected refusal %s" % (key, msg["expect"]))
            msg["receipt"] = receipt
            msg["outcome"] = "accepted"
            msg["accepted_local"] = time.time()
            LEDGER.count("accepted")
            return True
        if body == "error":
            e = f.error
            code = PB.ErrorCode.Name(e.code)
            if code == "UNAVAILABLE":
                LEDGER.count("unavailable")
                return False
            msg["error"] = {"code": code, "rule": e.rule, "audit_index": e.audit_index,
                            "message": e.message}
            msg["outcome"] = "refused"
            LEDGER.count("refused")
            LEDGER.count("refused." + (e.rule or code))
            limit = {TRIAGE: "agreement.messages_per_day", PLAN: "agreement.records_per_day",
                     SAFE: "agreement.messages_per_day"}
            if not msg["expect"] and e.rule == limit.get(msg["agreement"]):
                msg["expect"] = (e.rule, code)  # checked against the counts at the end
                msg["limit"] = True
            if not msg["expect"]:
                LEDGER.problem("%s refused unexpectedly: %s [%s] %s" % (key, code, e.rule, e.message))
            elif msg["expect"] != (e.rule, code):
                LEDGER.problem("%s refused as %s [%s], expected %s" % (key, code, e.rule, msg["expect"]))
            if e.audit_index == 0:
                LEDGER.problem("refusal of %s has no audit index" % (key,))
            return True
        LEDGER.problem("%s: unexpected answer %s" % (key, body))
        return True


# --------------------------------------------------------------------------
# Recipients.

class Recipient(threading.Thread):
    def __init__(self, soak, partner):
        super().__init__(name="recv-" + partner, daemon=True)
        self.soak = soak
        self.partner = partner
        self.rng = random.Random(soak.rng.randrange(1 << 30))
        self.conn = Conn(soak, partner)
        self.next_req = 1

    def req_id(self):
        self.next_req += 1
        return self.next_req

    def told_to_go(self, f):
        """A waiting fetch or a subscription answered UNAVAILABLE as isgd stops
        (protocol.md): the session is over, and the next connection goes on."""
        if f.WhichOneof("body") != "error" or PB.ErrorCode.Name(f.error.code) != "UNAVAILABLE":
            return False
        LEDGER.count("told_to_go." + self.partner)
        return True

    def got(self, d):
        """Record one Delivery; returns its gateway_id."""
        now = time.time()
        gid = d.gateway_id
        info = {"message_id": d.message_id, "sender": d.sender, "agreement": d.agreement_id,
                "version": d.agreement_version, "records": [isgtest.pb_record_dict(r) for r in d.records],
                "accepted_at_ms": d.accepted_at_ms, "at": now, "conn": self.conn.connects}
        with LEDGER.lock:
            seen = LEDGER.deliveries[self.partner].setdefault(gid, [])
            seen.append(info)
            acked = LEDGER.acked.get(gid)
            key = LEDGER.by_gid.get(gid)
            sent = LEDGER.sends.get((d.sender, d.message_id))
        LEDGER.count("deliveries." + self.partner)
        if len(seen) > 1:
            LEDGER.count("redeliveries." + self.partner)
            if any(s["conn"] == info["conn"] for s in seen[:-1]):
                LEDGER.problem("%s: gateway_id %d delivered twice on one connection" % (self.partner, gid))
        if acked is not None:
            LEDGER.problem("%s: gateway_id %d delivered again after its ack was confirmed"
                           % (self.partner, gid))
        if sent is None:
            LEDGER.problem("%s: delivery of %s/%s, which no sender sent" % (self.partner, d.sender,
                                                                             d.message_id))
        else:
            if sent["recipient"] != self.partner:
                LEDGER.problem("%s: got %s/%s, sent to %s" % (self.partner, d.sender, d.message_id,
                                                              sent["recipient"]))
            if key is not None and key != (d.sender, d.message_id):
                LEDGER.problem("%s: gateway_id %d is %s, the receipt said %s"
                               % (self.partner, gid, (d.sender, d.message_id), key))
            check_content(self.partner, gid, sent, info)
        ttl = ttl_ms(d.agreement_id, d.agreement_version)
        if ttl is not None and now * 1000 > d.accepted_at_ms + ttl + 1500:
            LEDGER.problem("%s: gateway_id %d delivered %.1f s after it expired"
                           % (self.partner, gid, (now * 1000 - d.accepted_at_ms - ttl) / 1000))
        return gid

    def ack(self, c, gids):
        """Ack on connection c and wait for the AckResult; frames in between go to self.got."""
        rid = self.req_id()
        with LEDGER.lock:
            LEDGER.ack_sent.update(gids)
        c.send_frame(PB.Frame(request_id=rid, ack=PB.Ack(gateway_ids=gids)))
        while True:
            f = c.recv_frame(timeout=20.0)
            body = f.WhichOneof("body")
            if body == "delivery":
                self.on_push(self.got(f.delivery))
                continue
            if f.request_id != rid or body != "ack_result":
                LEDGER.problem("%s: expected AckResult for %d, got %s for %d"
                               % (self.partner, rid, body, f.request_id))
                return
            self.acked(gids, f.ack_result)
            return

    def acked(self, gids, res):
        unknown = set(res.unknown_ids)
        now = time.time()
        with LEDGER.lock:
            for g in gids:
                if g in unknown:
                    LEDGER.ack_unknown[self.partner].append((g, now))
                else:
                    LEDGER.acked[g] = (self.partner, now)
        LEDGER.count("acked." + self.partner, len(gids) - len(unknown))
        if res.acknowledged != len(gids) - len(unknown):
            LEDGER.problem("%s: acknowledged=%d for %d ids with %d unknown"
                           % (self.partner, res.acknowledged, len(gids), len(unknown)))
        for g in unknown:
            self.unknown_ack(g, now)

    def unknown_ack(self, gid, now):
        """An id we were handed that the gateway says is not pending: only if it expired."""
        with LEDGER.lock:
            infos = LEDGER.deliveries[self.partner].get(gid) or []
        if not infos:
            LEDGER.problem("%s: acked %d, never delivered" % (self.partner, gid))
            return
        i = infos[-1]
        ttl = ttl_ms(i["agreement"], i["version"])
        if ttl is None or now * 1000 < i["accepted_at_ms"] + ttl - 1500:
            LEDGER.problem("%s: ack of %d came back unknown %.1f s after acceptance (TTL %s)"
                           % (self.partner, gid, now - i["accepted_at_ms"] / 1000, ttl))
        LEDGER.count("ack_unknown_expired." + self.partner)

    def run(self):
        self.pushed = []
        while not self.soak.stop_recipients.is_set():
            try:
                self.session()
            except RETRYABLE:
                LEDGER.count("recv_conn_errors." + self.partner)
                self.conn.drop()
                time.sleep(0.3 + self.rng.random() * 0.5)
            except Exception as e:  # a bug here or in the gateway: note it and carry on
                LEDGER.problem("%s: %r" % (self.partner, e))
                self.conn.drop()
                time.sleep(1)
        self.conn.drop()


class Subscriber(Recipient):
    """nhs-trust: subscribes, acks at once, reconnects every minute or so."""

    def on_push(self, gid):
        self.pushed.append(gid)

    def session(self):
        c = self.conn.get()
        c.send_frame(PB.Frame(request_id=self.req_id(), subscribe=PB.Subscribe()))
        until = time.time() + self.rng.uniform(30, 90)
        self.pushed = []
        last_ack = time.time()
        while not self.soak.stop_recipients.is_set() and time.time() < until:
            try:
                f = c.recv_frame(timeout=0.25)
                body = f.WhichOneof("body")
                if body == "delivery":
                    self.on_push(self.got(f.delivery))
                elif self.told_to_go(f):
                    break
                else:
                    LEDGER.problem("%s: unexpected %s on a subscription" % (self.partner, body))
            except socket.timeout:
                pass
            if self.pushed and (len(self.pushed) >= 32 or time.time() - last_ack > 0.3):
                gids, self.pushed = self.pushed, []
                self.ack(c, gids)
                last_ack = time.time()
        if self.pushed:
            gids, self.pushed = self.pushed, []
            self.ack(c, gids)
        self.conn.drop()


class SlowAcker(Recipient):
    """nhs-south: a recipient whose system is slow. Half its connections fetch,
    half subscribe; it acks each message 2-8 s after it got it, one in ten
    10-20 s later (past the 15 s TTL of TRIAGE: the ack then comes back
    unknown). One connection in four is dropped with acks due, and now and
    then it acks on a new connection what it got on the old one."""

    def on_push(self, gid):
        self.held.append((self.ack_due(), gid))

    def window_room(self, now):
        """Room in the gateway's window for this subscription: a push that
        expired has left it (handler.c window_expire), acked or not."""
        live = sum(1 for _, g in self.held if self.expiry.get(g, float("inf")) > now * 1000)
        return WINDOW - live

    def ack_due(self):
        late = self.rng.random() < 0.1
        return time.time() + (self.rng.uniform(10, 20) if late else self.rng.uniform(2, 8))

    def session(self):
        c = self.conn.get()
        self.held = []  # (due time, gid)
        self.seen = set()  # gids got on this connection
        self.expiry = {}  # gid: expires_at_ms, of those got on this connection
        subscribe = self.rng.random() < 0.5
        until = time.time() + self.rng.uniform(60, 120) if subscribe else time.time() + self.rng.uniform(20, 60)
        drop_at = time.time() + self.rng.uniform(5, 40) if self.rng.random() < 0.25 else None
        if subscribe:
            c.send_frame(PB.Frame(request_id=self.req_id(), subscribe=PB.Subscribe()))
            LEDGER.count("subscriptions." + self.partner)
        self.last_got = self.checked = time.time()
        self.room_since = None  # since when the window has had room without a pause
        while not self.soak.stop_recipients.is_set() and time.time() < until:
            if subscribe:
                try:
                    f = c.recv_frame(timeout=0.25)
                    if self.told_to_go(f):
                        break
                    if f.WhichOneof("body") != "delivery":
                        LEDGER.problem("%s: unexpected %s on a subscription" % (self.partner, f))
                    else:
                        self.on_push(self.note_got(f.delivery))
                except socket.timeout:
                    pass
                self.check_stall()
            else:
                f = c.request(fetch=PB.FetchRequest(max_messages=20, wait_ms=1000))
                body = f.WhichOneof("body")
                if self.told_to_go(f):
                    break
                if body != "fetch_result":
                    LEDGER.problem("%s: fetch answered %s: %s" % (self.partner, body, f))
                    time.sleep(1)
                    continue
                for d in f.fetch_result.deliveries:
                    self.on_push(self.note_got(d))
            due = [g for t, g in self.held if t <= time.time()]
            if due:
                if drop_at is not None and time.time() > drop_at:
                    LEDGER.count("dropped_before_ack." + self.partner)
                    self.conn.drop()
                    return
                self.held = [(t, g) for t, g in self.held if t > time.time()]
                self.ack(c, due)
        if subscribe and self.soak.stop_recipients.is_set():
            self.drain_over()
        if self.held and self.rng.random() < 0.5:  # ack on the next connection
            self.conn.drop()
            c = self.conn.get()
            self.ack(c, [g for _, g in self.held])
        self.conn.drop()

    def note_got(self, d):
        self.last_got = time.time()
        gid = self.got(d)
        self.seen.add(gid)
        ttl = ttl_ms(d.agreement_id, d.agreement_version)
        self.expiry[gid] = d.accepted_at_ms + ttl if ttl is not None else float("inf")
        return gid

    def waiting(self, now, older_than):
        """Messages for this partner accepted more than older_than s ago, not
        yet pushed on this connection nor acked, and not about to expire."""
        with LEDGER.lock:
            return [m for m in LEDGER.sends.values()
                    if m["recipient"] == self.partner and m["outcome"] == "accepted"
                    and now - m["accepted_local"] > older_than
                    and m["receipt"]["gateway_id"] not in self.seen
                    and m["receipt"]["gateway_id"] not in LEDGER.ack_sent
                    and m["receipt"]["accepted_at_ms"] + ttl_ms(m["agreement"], 1) > now * 1000 + 3000]

    def check_stall(self):
        """A subscription whose window has had room for 3 s while a message
        for it waited: stalled. The gateway pushes as soon as an ack (or an
        expiry) opens the window, so room lasts only while nothing waits;
        a window kept full by slow acks is a backlog, not a stall."""
        now = time.time()
        if self.window_room(now) <= 0:
            self.room_since = None
            return
        if self.room_since is None:
            self.room_since = now
        if now - self.room_since < 3 or now - self.checked < 1:
            return
        self.checked = now
        waiting = self.waiting(now, 3)
        if waiting:
            LEDGER.problem("%s: subscription stalled: room for %d in the window for %.0f s, nothing "
                           "pushed for %.0f s, %d messages waiting, %d unacked on this connection"
                           % (self.partner, self.window_room(now), now - self.room_since,
                              now - self.last_got, len(waiting), len(self.held)))
            self.room_since = None  # once per stall, not every second

    def drain_over(self):
        """Say why messages are still pending as the soak ends: behind a full
        window they wait on this recipient's acks (check_stall finds the rest)."""
        now = time.time()
        waiting = self.waiting(now, 0)
        if waiting:
            LEDGER.note("%s: drain over with %d messages not yet pushed, window room %d of %d "
                        "(%d held), the oldest waiting %.0f s" % (
                            self.partner, len(waiting), self.window_room(now), WINDOW, len(self.held),
                            now - min(m["accepted_local"] for m in waiting)))


class NeverAcker(Recipient):
    """city-council: fetches a few now and then, never acks; its messages expire."""

    def session(self):
        c = self.conn.get()
        f = c.request(fetch=PB.FetchRequest(max_messages=5, wait_ms=0))
        if f.WhichOneof("body") != "fetch_result":
            LEDGER.problem("%s: fetch answered %s" % (self.partner, f.WhichOneof("body")))
        else:
            for d in f.fetch_result.deliveries:
                self.got(d)
        self.conn.drop()
        self.soak.stop_recipients.wait(self.rng.uniform(5, 12))


def ttl_ms(agreement, version):
    if agreement == SAFE:
        return SAFE_TTL_MS
    if agreement == PLAN:
        return plan_ttl_ms(version)
    if agreement == TRIAGE:
        return TRIAGE_TTL_MS
    return None


def check_content(partner, gid, sent, info):
    """What the recipient got is what the agreement's version at acceptance makes of what was sent."""
    where = "%s: gateway_id %d (%s)" % (partner, gid, sent["message_id"])
    if len(info["records"]) != len(sent["records"]):
        LEDGER.problem("%s: %d records, %d sent" % (where, len(info["records"]), len(sent["records"])))
        return
    for got, want in zip(info["records"], sent["records"]):
        for dropped in ("officer_notes", "notes"):
            if dropped in got:
                LEDGER.problem("%s: dropped field %s delivered" % (where, dropped))
        if sent["agreement"] == SAFE:
            if got.get("nhs_number") != want["nhs_number"]:
                LEDGER.problem("%s: nhs_number is not the one sent" % where)
            fam = safe_family_name_action(info["version"])
            if (fam == "pass") != ("family_name" in got):
                LEDGER.problem("%s: family_name %s under version %d (action %s)"
                               % (where, "present" if "family_name" in got else "absent",
                                  info["version"], fam))
            if got.get("postcode") != want["postcode"].split()[0]:
                LEDGER.problem("%s: postcode not generalised to its district" % where)
        else:
            check_pseudonyms(where, sent, info, got, want)


class Prober(threading.Thread):
    """What must be refused at the door (a port scanner's bare connect, a
    certificate from an untrusted CA, a valid certificate of no partner), and
    one connection that says nothing until idle_timeout closes it."""

    def __init__(self, soak):
        super().__init__(name="prober", daemon=True)
        self.soak = soak
        self.rng = random.Random(soak.rng.randrange(1 << 30))
        pki = soak.pki
        self.rogue = tls_ctx(pki.certs["rogue"], pki.server_ca.cert)
        self.stranger = tls_ctx(pki.certs["stranger"], pki.server_ca.cert)
        self.idle_ctx = tls_ctx(pki.certs["council"], pki.server_ca.cert)
        self.idle = None

    def probe(self, kind):
        start = self.soak.gw.starts
        raw = socket.create_connection(("127.0.0.1", self.soak.gw.port), timeout=10)
        try:
            if kind == "bare":
                LEDGER.probe(start, kind)
                return
            if kind == "partial":  # a frame cut short, then a close without close_notify
                tls = self.idle_ctx.wrap_socket(raw, server_hostname="localhost")
                raw = tls
                body = PB.Frame(request_id=1, ping=PB.Ping(nonce=7)).SerializeToString()
                tls.sendall(isgtest.varint_encode(len(body) + 40) + body)
                time.sleep(0.05)
                return
            ctx = self.rogue if kind == "rogue" else self.stranger
            LEDGER.probe(start, kind)
            try:
                tls = ctx.wrap_socket(raw, server_hostname="localhost")
            except (ssl.SSLError, OSError):
                return
            raw = tls
            c = FrameConn.__new__(FrameConn)
            c.pb, c.sock, c.buf = PB, tls, b""
            try:
                f = c.recv_frame(timeout=10)
            except (ssl.SSLError, OSError, EOFError):
                if kind == "stranger":
                    LEDGER.problem("prober: a certificate of no partner got no Error frame")
                return
            if kind == "rogue" or f.WhichOneof("body") != "error" or f.error.rule != "partner.unknown":
                LEDGER.problem("prober: %s connection answered %s" % (kind, f))
        finally:
            raw.close()

    def check_idle(self):
        now = time.time()
        if self.idle is None:
            raw = socket.create_connection(("127.0.0.1", self.soak.gw.port), timeout=10)
            sock = self.idle_ctx.wrap_socket(raw, server_hostname="localhost")
            sock.setblocking(False)
            self.idle = (sock, now, self.soak.gw.starts, self.soak.reload_count)
            return
        sock, since, start, reloads = self.idle
        try:
            data = sock.recv(1)
        except (ssl.SSLWantReadError, BlockingIOError):
            if now - since > ISGD_IDLE_TIMEOUT + 15:
                LEDGER.problem("an idle connection still open after %.0f s" % (now - since))
                sock.close()
                self.idle = None
            return
        except (ssl.SSLError, OSError):
            data = b""
        sock.close()
        self.idle = None
        took = now - since
        if start == self.soak.gw.starts:
            LEDGER.count("idle_closed")
            with LEDGER.lock:
                LEDGER.idle_closes.append(round(took, 1))
            if data or took < ISGD_IDLE_TIMEOUT - 5:
                LEDGER.problem("an idle connection was closed after %.1f s (idle_timeout %d s, %d reloads)"
                               % (took, ISGD_IDLE_TIMEOUT, self.soak.reload_count - reloads))

    def run(self):
        while not self.soak.stop_recipients.is_set():
            if self.soak.gw_up.is_set():
                try:
                    self.probe(self.rng.choice(["bare", "rogue", "stranger", "partial"]))
                    self.check_idle()
                except (OSError, ssl.SSLError):
                    self.idle = None
                    LEDGER.count("probe_conn_errors")
            self.soak.stop_recipients.wait(self.rng.uniform(2, 5))


class Officer(threading.Thread):
    """The IG officer, beside the traffic (audit.md): now and then `isgctl audit
    verify`, a checkpoint saved elsewhere, and a subject access request for
    someone a message was about."""

    def __init__(self, soak):
        super().__init__(name="officer", daemon=True)
        self.soak = soak
        self.rng = random.Random(soak.rng.randrange(1 << 30))
        self.saved = []  # checkpoint files

    def ctl(self, *args, input=None):
        return isgtest.ctl(*(args + ("--config", self.soak.gw.config_path)), input=input, timeout=300)

    def round(self):
        r = self.ctl("audit", "verify")
        LEDGER.count("officer.verify")
        if r.rc != 0:
            LEDGER.problem("isgctl audit verify failed while isgd ran\n%s" % tail_of(r))
        r = self.ctl("audit", "checkpoint")
        if r.rc == 0 and r.out.strip():
            path = os.path.join(self.soak.dir, "checkpoint-%02d.txt" % len(self.saved))
            with open(path, "w") as f:
                f.write(r.out)
            self.saved.append(path)
        else:
            LEDGER.problem("isgctl audit checkpoint failed\n%s" % tail_of(r))
        self.subject_request()

    def subject_request(self):
        now = time.time()
        with LEDGER.lock:
            done = [m for m in LEDGER.sends.values() if m["outcome"] == "accepted"
                    and now - m.get("accepted_local", now) > 15]
        if not done:
            return
        m = self.rng.choice(done)
        r = self.ctl("audit", "subject", "--nhs-number", "-", "--format", "jsonl",
                     input=m["records"][0]["nhs_number"] + "\n")
        LEDGER.count("officer.subject")
        if r.rc != 0:
            LEDGER.problem("isgctl audit subject failed\n%s" % tail_of(r))
            return
        found = [json.loads(line)["entry"] for line in r.out.splitlines() if line.strip()]
        if not any(e.get("event") == "message.accepted" and e.get("message_id") == m["message_id"]
                   and e.get("sender") == m["sender"] for e in found):
            LEDGER.problem("isgctl audit subject does not find %s/%s (%d entries)"
                           % (m["sender"], m["message_id"], len(found)))

    def run(self):
        while not self.soak.stop_recipients.wait(self.rng.uniform(45, 90)):
            if self.soak.gw_up.is_set():
                try:
                    self.round()
                except (OSError, subprocess.SubprocessError, ValueError) as e:
                    LEDGER.problem("officer: %r" % e)


def tail_of(r, lines=8):
    return "\n".join(str(r).splitlines()[-lines:])


def tls_ctx(cert, ca):
    return isgtest.tls_context(cert, ca)


ISGD_IDLE_TIMEOUT = 120
WINDOW = 20  # limits.max_fetch_messages: a subscriber's unacked pushes at a time


def check_pseudonyms(where, sent, info, got, want):
    """nhs_number is the pseudonym of the number sent under the domain's current
    key, and after soak-planning's rotation nhs_number.previous under the old one."""
    domain = "soak-planning" if sent["agreement"] == PLAN else "soak-triage"
    keys = KEYS.get(domain, {})
    p = got.get("nhs_number", "")
    m = re.fullmatch(r"p(\d+)_[A-Za-z0-9_-]{43}", p)
    if not m:
        LEDGER.problem("%s: nhs_number is not a pseudonym" % where)
        return
    v = int(m.group(1))
    if v not in keys or p != isgtest.pseudonym(keys[v], v, 0x01, want["nhs_number"]):
        LEDGER.problem("%s: nhs_number is not the pseudonym of the number sent (p%d)" % (where, v))
    rot = ROTATION.get(domain)
    acc = info["accepted_at_ms"]
    if rot and acc > rot[1] + 1000:
        prev = got.get("nhs_number.previous", "")
        if v != 2 or prev != isgtest.pseudonym(keys[1], 1, 0x01, want["nhs_number"]):
            LEDGER.problem("%s: accepted after the rotation: p%d, previous %r" % (where, v, prev[:4]))
    elif (not rot or acc < rot[0]) and (v != 1 or "nhs_number.previous" in got):
        LEDGER.problem("%s: accepted before any rotation, pseudonym p%d" % (where, v))


# --------------------------------------------------------------------------
# Sampling.

def proc_status(pid):
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    out[k] = int(v.split()[0])
        out["fds"] = len(os.listdir("/proc/%d/fd" % pid))
    except (OSError, ValueError):
        return None
    return out


def process_alive(pid):
    """Running, not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return not f.read().rsplit(") ", 1)[1].startswith("Z")
    except OSError:
        return False


def file_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


class Sampler(threading.Thread):
    FIELDS = ["t", "start", "gw_pid", "gw_rss_kb", "gw_fds", "gw_threads", "kp_pid", "kp_rss_kb",
              "kp_fds", "kp_threads", "db_bytes", "wal_bytes", "shm_bytes", "accepted", "acked"]

    def __init__(self, soak):
        super().__init__(name="sampler", daemon=True)
        self.soak = soak
        self.rows = []
        self.path = os.path.join(soak.dir, "samples.csv")

    def sample(self):
        s = self.soak
        gw, kp = s.gw_pid, s.kp_pid
        g = proc_status(gw) if gw else None
        k = proc_status(kp) if kp else None
        store = s.gw.store_path
        with LEDGER.lock:
            accepted, acked = LEDGER.counts["accepted"], len(LEDGER.acked)
        row = {"t": round(time.time() - T0, 1), "start": s.gw.starts, "gw_pid": gw or 0,
               "gw_rss_kb": g["VmRSS"] if g else "", "gw_fds": g["fds"] if g else "",
               "gw_threads": g["Threads"] if g else "", "kp_pid": kp or 0,
               "kp_rss_kb": k["VmRSS"] if k else "", "kp_fds": k["fds"] if k else "",
               "kp_threads": k["Threads"] if k else "", "db_bytes": file_size(store),
               "wal_bytes": file_size(store + "-wal"), "shm_bytes": file_size(store + "-shm"),
               "accepted": accepted, "acked": acked}
        self.rows.append(row)
        return row

    def run(self):
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            while not self.soak.stop_sampler.is_set():
                w.writerow(self.sample())
                f.flush()
                self.soak.stop_sampler.wait(ARGS.sample)


# --------------------------------------------------------------------------
# The soak.

class Soak:
    def __init__(self):
        self.rng = random.Random(ARGS.seed)
        self.dir = os.path.abspath(ARGS.dir or tempfile.mkdtemp(prefix="isg-soak-"))
        os.makedirs(self.dir, exist_ok=True)
        log("work directory %s, isgd %s" % (self.dir, isgtest.ISGD))
        self.pki = isgtest.Pki(os.path.join(self.dir, "pki"))
        for name, pid, kind, cn in PARTNERS:
            self.pki.client(name, cn)
        self.pki.client("stranger", "stranger.partners.isg.example")
        self.pki.untrusted_client("rogue", isgtest.POLICE_CN)
        traffic = self.traffic_seconds()
        LIMITS["triage_messages"] = max(20, int(ARGS.rate * 0.175 * traffic * 0.5))
        LIMITS["plan_records"] = max(50, int(ARGS.rate * 0.15 * 3.5 * traffic * 0.8))
        self.policy_dir = os.path.join(self.dir, "policies")
        self.v_safe, self.v_plan = 1, 1
        self.west_suspended = False
        self.safe_cap = self.safe_cap_was = None
        self.cap_window = None  # (ms before the SIGHUP that set it, ms before the one that lifted it)
        self.write_policy()
        self.gw = isgtest.Gateway(os.path.join(self.dir, "gw"), self.pki, self.policy_dir, start=False,
                                  store={"sweep_interval": "5s"},
                                  limits={"idle_timeout": "%ds" % ISGD_IDLE_TIMEOUT,
                                          "max_fetch_messages": WINDOW})
        self.gw.check_sanitizers = False  # check_log lists their reports with the rest
        for d in ("soak-planning", "soak-triage"):
            isgtest.new_domain(self.gw.keys_dir, d)
            self.load_keys(d)
        self.stop_senders = threading.Event()
        self.stop_hard = threading.Event()
        self.stop_recipients = threading.Event()
        self.stop_sampler = threading.Event()
        self.gw_up = threading.Event()
        self.gw_pid = self.kp_pid = None
        self.policy_version = None
        self.versions = {}  # policy_version -> (v_safe, v_plan)
        self.reloads = collections.Counter()
        self.restarts = collections.Counter()
        self.wal_after_stop = []
        self.tls_generation = 0
        self.reload_count = 0
        self.unsuspended_at = 0.0
        self.killed_lives = set()

    def suspension_seen(self):
        return self.west_suspended or time.time() < self.unsuspended_at + 3.0

    def traffic_seconds(self):
        return max(60.0, ARGS.minutes * 60.0 - self.DRAIN - 20.0)

    DRAIN = 60.0  # longest expiring TTL (40 s) + sweep (5 s) + margin

    def load_keys(self, domain):
        KEYS[domain] = {k.version: k.key for k in isgtest.domain_keys(self.gw.keys_dir, domain)}

    def rotate_key(self):
        """isgctl keys rotate soak-planning (default overlap), then SIGHUP (keys.md)."""
        isgtest.rotate_domain(self.gw.keys_dir, "soak-planning")
        self.load_keys("soak-planning")
        t0 = int(time.time() * 1000)
        _, text = self.gw.reload(timeout=30)
        ROTATION["soak-planning"] = (t0, int(time.time() * 1000))
        self.reload_count += 1
        self.reloads["key rotation"] += 1
        if not re.search(r"event=keys\.changed (?:created=\S+ )?rotated=(?:\S+,)?soak-planning[ ,]",
                         text):
            LEDGER.problem("no keys.changed line naming soak-planning as rotated after rotating it")
        LEDGER.event("SIGHUP after rotating soak-planning")

    # -- the daemon

    def start(self):
        since = len(self.gw.log)
        self.tls_generation += 1
        self.gw.start()
        self.tls_generation += 1
        m = re.findall(r"event=isgd\.started .*?policy_version=(\w+) pid=(\d+) key_process=(\d+)",
                       self.gw.log[since:])
        if not m:
            raise SystemExit("no isgd.started line with the pids\n" + self.gw.diagnostics())
        self.policy_version, gw_pid, kp_pid = m[-1]
        self.gw_pid, self.kp_pid = int(gw_pid), int(kp_pid)
        self.versions[self.policy_version] = (self.v_safe, self.v_plan)
        self.gw_up.set()

    def stop(self, how):
        self.gw_up.clear()
        kp = self.kp_pid
        if how == "TERM":
            took = self.gw.stop(timeout=30, expect_rc=None)
            if self.gw.last_rc != 0:
                LEDGER.problem("isgd exited %s after SIGTERM\n%s" % (self.gw.last_rc, self.gw.diagnostics()))
            wal = self.gw.store_path + "-wal"
            self.wal_after_stop.append(os.path.exists(wal))
            if os.path.exists(wal):
                LEDGER.problem("the WAL is still there after a clean stop (%d bytes)" % file_size(wal))
            LEDGER.event("isgd stopped by SIGTERM in %.2f s" % took)
        else:
            self.killed_lives.add(self.gw.starts)
            self.gw.kill()
            LEDGER.event("isgd killed (SIGKILL)")
        deadline = time.time() + 10
        while process_alive(kp):
            if time.time() > deadline:
                LEDGER.problem("key process %d still running 10 s after the gateway stopped (%s)"
                               % (kp, how))
                break
            time.sleep(0.1)
        self.gw_pid = self.kp_pid = None

    def restart(self, how):
        self.restarts[how] += 1
        self.stop(how)
        time.sleep(self.rng.uniform(0.5, 2.0))  # partners retry meanwhile
        self.start()
        LEDGER.event("isgd started again (start %d, pid %d)" % (self.gw.starts, self.gw_pid))

    def whoami(self):
        with isgtest.FrameConn(self.gw, self.pki.certs["police"]) as c:
            f = c.request(hello=PB.Hello(protocol_version=1, client_name="soak"))
            return f.welcome.policy_version, c.sock.getpeercert(binary_form=True)

    # -- the admin's reloads

    def reload(self, what):
        before = self.policy_version
        self.tls_generation += 1
        outcome, text = self.gw.reload(timeout=30)
        self.tls_generation += 1
        self.reload_count += 1
        m = re.search(r"event=policy\.loaded version=(\w+)", text)
        version, cert = self.whoami()
        self.reloads[what + ":" + outcome] += 1
        if what.startswith("broken"):
            if outcome != "refused":
                LEDGER.problem("reload with a %s was not refused" % what)
            if version != before:
                LEDGER.problem("after a refused reload the gateway runs %s, not %s" % (version, before))
        else:
            if outcome != "loaded":
                LEDGER.problem("reload (%s) refused:\n%s" % (what, text))
            if m and version != m.group(1):
                LEDGER.problem("policy.loaded %s but whoami says %s" % (m.group(1), version))
            self.policy_version = version
            self.versions[version] = (self.v_safe, self.v_plan)
        tls = re.search(r"event=tls\.(reloaded|reload_failed)", text).group(1)
        LEDGER.event("SIGHUP (%s): policy %s, tls %s, version %s" % (what, outcome, tls, version[:12]))
        return outcome, tls, cert

    def policy_change(self):
        if self.rng.random() < 0.5:
            self.v_safe += 1
        else:
            self.v_plan += 1
        self.write_policy()
        self.reload("change safe=%d plan=%d" % (self.v_safe, self.v_plan))

    def write_policy(self):
        write_policy(self.policy_dir, self.v_safe, self.v_plan, self.west_suspended, self.safe_cap)

    def cap_safe(self):
        """A messages_per_day limit brought in by a reload, a little above what the
        busiest sender already sent under SAFE today: it must count that too."""
        with LEDGER.lock:
            used = collections.Counter(m["sender"] for m in LEDGER.sends.values()
                                       if m["agreement"] == SAFE and m["outcome"] == "accepted")
        self.safe_cap = self.safe_cap_was = max(used.values() or [0]) + max(10, int(ARGS.rate * 2))
        self.v_safe += 1
        self.write_policy()
        t0 = int(time.time() * 1000)
        self.reload("cap SAFE at %d messages a day" % self.safe_cap)
        self.cap_window = (t0, None)

    def uncap_safe(self):
        if self.safe_cap is not None:
            self.safe_cap = None
            self.v_safe += 1
            self.write_policy()
            t0 = int(time.time() * 1000)
            self.reload("lift the cap on SAFE")
            self.cap_window = (self.cap_window[0], t0)

    def suspend_west(self):
        """west-police out of the registry for one step: its connections are cut, then refused."""
        self.west_suspended = True
        self.write_policy()
        self.reload("suspend west-police")

    def unsuspend_west(self):
        if self.west_suspended:
            self.west_suspended = False
            self.write_policy()
            self.reload("restore west-police")
            self.unsuspended_at = time.time()

    def broken_policy(self, kind):
        write_file_atomic(os.path.join(self.policy_dir, "agreements", "broken.yaml"),
                          broken_policy_text(kind))
        self.reload("broken (%s)" % kind)

    def fix_policy(self):
        path = os.path.join(self.policy_dir, "agreements", "broken.yaml")
        if os.path.exists(path):
            os.unlink(path)
            return True
        return False

    def rotate_tls(self):
        """A new server key and certificate at the configured paths, then SIGHUP (operations.md)."""
        pki = self.pki
        key = pki._genkey("gateway-2.key")
        csr = pki._csr(key, isgtest.GATEWAY_CN, "gateway-2.csr")
        crt = os.path.join(pki.dir, "gateway-2.crt")
        pki._sign_x509(csr, pki.server_ca, os.path.join(pki.dir, "server.ext"), "server_ext", crt)
        new_der = ssl.PEM_cert_to_DER_cert(isgtest.read_text(crt))
        # The key first, then the certificate: between the two a reload would fail, not mix.
        shutil.copyfile(key, pki.gateway.key + ".new")
        os.chmod(pki.gateway.key + ".new", 0o600)
        os.replace(pki.gateway.key + ".new", pki.gateway.key)
        write_file_atomic(pki.gateway_chain, isgtest.read_text(crt) + isgtest.read_text(pki.server_ca.cert))
        _, tls, cert = self.reload("tls rotation")
        if tls != "reloaded" or cert != new_der:
            LEDGER.problem("after the certificate rotation the gateway shows the %s certificate (tls %s)"
                           % ("new" if cert == new_der else "old", tls))
        return new_der

    def broken_tls(self, current_der):
        """A certificate installed without its key: refused, the running one kept."""
        pki = self.pki
        key = pki._genkey("gateway-3.key")
        csr = pki._csr(key, isgtest.GATEWAY_CN, "gateway-3.csr")
        crt = os.path.join(pki.dir, "gateway-3.crt")
        pki._sign_x509(csr, pki.server_ca, os.path.join(pki.dir, "server.ext"), "server_ext", crt)
        saved = isgtest.read_text(pki.gateway_chain)
        write_file_atomic(pki.gateway_chain, isgtest.read_text(crt) + isgtest.read_text(pki.server_ca.cert))
        _, tls, cert = self.reload("tls without its key")
        if tls != "reload_failed" or cert != current_der:
            LEDGER.problem("a certificate without its key: tls %s, %s certificate served"
                           % (tls, "same" if cert == current_der else "another"))
        write_file_atomic(pki.gateway_chain, saved)
        self.reload("tls restored")

    # -- the run

    def run(self):
        drain = self.DRAIN
        traffic = self.traffic_seconds()
        self.start()
        self.sampler = Sampler(self)
        self.sampler.start()
        rate = ARGS.rate
        self.senders = [
            Sender(self, "met-police", "met1", [(SAFE, "nhs-trust"), (SAFE, "nhs-south"), (PLAN, "city-council"),
                                                (TRIAGE, "nhs-south")], rate * 0.3),
            Sender(self, "met-police", "met2", [(SAFE, "nhs-trust"), (SAFE, "nhs-trust"), (TRIAGE, "nhs-south")],
                   rate * 0.3, window=4),
            Sender(self, "west-police", "west", [(SAFE, "nhs-trust"), (SAFE, "nhs-south")], rate * 0.25),
            Sender(self, "nhs-trust", "nhs", [(PLAN, "city-council")], rate * 0.15),
        ]
        self.recipients = [Subscriber(self, "nhs-trust"), SlowAcker(self, "nhs-south"),
                           NeverAcker(self, "city-council"), Prober(self)]
        self.officer = Officer(self)
        self.recipients.append(self.officer)
        for t in self.senders + self.recipients:
            t.start()
        # The admin's timeline: an action about every 20 s.
        plan = self.timeline(traffic)
        t_start = time.time()
        for at, action in plan:
            while time.time() - t_start < at:
                time.sleep(0.2)
                self.check_alive()
            self.check_alive()
            action()
        while time.time() - t_start < traffic:
            time.sleep(0.5)
            self.check_alive()
        if self.fix_policy():
            self.reload("fix at the end")
        self.unsuspend_west()
        self.uncap_safe()
        LEDGER.event("senders stopping")
        self.stop_senders.set()
        for t in self.senders:
            t.join(60)
            if t.is_alive():
                self.stop_hard.set()
                t.join(30)
        LEDGER.event("senders stopped; draining %.0f s" % drain)
        t_drain = time.time()
        while time.time() - t_drain < drain:
            time.sleep(0.5)
            self.check_alive()
        self.stop_recipients.set()
        for t in self.recipients:
            t.join(30)
        time.sleep(ARGS.sample)
        self.stop_sampler.set()
        self.sampler.join(10)
        self.stop("TERM")
        return self.check()

    def check_alive(self):
        if not self.gw.running:
            LEDGER.problem("isgd exited on its own (rc %s)\n%s" % (self.gw.proc and self.gw.proc.returncode,
                                                                    self.gw.diagnostics()))
            self.gw.proc = None
            self.start()

    def timeline(self, traffic):
        """(seconds from the start, action), every ~20 s until the end of traffic."""
        steps = []
        t = 20.0
        while t < traffic - 10:
            steps.append(t)
            t += self.rng.uniform(17, 23)
        n = len(steps)
        # Restarts in the first half, so the second half is one long life to watch for growth.
        special = {max(1, n * 15 // 100): lambda: self.restart("TERM"),
                   max(2, n * 28 // 100): self.rotate_tls_step,
                   max(3, n * 38 // 100): lambda: self.restart("KILL"),
                   max(4, n * 48 // 100): lambda: self.restart("TERM"),
                   max(5, n * 65 // 100): self.rotate_key,
                   max(6, n * 75 // 100): self.cap_safe}
        broken = list(dict(BROKEN_POLICIES))
        cycle = ["change", "same", "broken", "change", "suspend", "fix-same"]
        actions = []
        k = 0
        for i, at in enumerate(steps):
            if i in special:
                actions.append((at, self.before_restart(special[i])))
                continue
            kind = cycle[k % len(cycle)]
            k += 1
            if kind == "change":
                actions.append((at, self.fixed(self.policy_change)))
            elif kind == "suspend":
                actions.append((at, self.fixed(self.suspend_west)))
            elif kind == "broken":
                b = broken[(k // len(cycle)) % len(broken)]
                actions.append((at, lambda b=b: self.broken_policy(b)))
            else:
                actions.append((at, self.fixed(lambda: self.reload("same"))))
        return actions

    def fixed(self, fn):
        def step():
            self.fix_policy()
            self.unsuspend_west()
            self.uncap_safe()
            fn()
        return step

    def before_restart(self, fn):
        def step():
            if self.fix_policy():
                self.reload("fix before restart")
            self.unsuspend_west()
            self.uncap_safe()
            fn()
        return step

    def rotate_tls_step(self):
        der = self.rotate_tls()
        self.broken_tls(der)

    # -- the checks at the end

    def check(self):
        report = {"dir": self.dir, "isgd": isgtest.ISGD, "minutes": ARGS.minutes, "rate": ARGS.rate}
        with LEDGER.lock:
            sends = list(LEDGER.sends.values())
        accepted = [m for m in sends if m["outcome"] == "accepted"]
        refused = [m for m in sends if m["outcome"] == "refused"]
        unresolved = [m for m in sends if m["outcome"] not in ("accepted", "refused")]
        if unresolved:
            LEDGER.problem("%d sends never got a receipt or a refusal: %s"
                           % (len(unresolved), [m["message_id"] for m in unresolved[:10]]))
        against = [a for path in self.officer.saved for a in ("--against", path)]
        verify = isgtest.ctl("audit", "verify", "--config", self.gw.config_path, *against, timeout=600)
        if verify.rc != 0:
            LEDGER.problem("isgctl audit verify failed\n%s" % verify)
        copy = os.path.join(self.dir, "store-copy.db")
        shutil.copyfile(self.gw.store_path, copy)
        db = sqlite3.connect(copy)
        audit = self.check_audit(db, accepted, refused)
        states = self.check_messages(db, accepted)
        db.close()
        logcheck = self.check_log()
        trend = self.check_trend()
        report.update({
            "sent": len(sends), "accepted": len(accepted), "refused": len(refused),
            "unresolved": len(unresolved), "states": states, "audit": audit, "log": logcheck,
            "trend": trend, "counts": dict(LEDGER.counts), "limits": self.limits, "reloads": dict(self.reloads),
            "restarts": dict(self.restarts), "problems": LEDGER.problems, "notes": LEDGER.notes,
            "idle_closed_after_s": LEDGER.idle_closes,
            "audit_verify": verify.out.strip().splitlines()[-3:], "checkpoints_saved": len(self.officer.saved),
        })
        with open(os.path.join(self.dir, "summary.json"), "w") as f:
            json.dump(report, f, indent=2, default=str)
        return report

    def check_audit(self, db, accepted, refused):
        entries = {}
        kinds = collections.Counter()
        per_gid = collections.defaultdict(collections.Counter)
        refused_conns = collections.Counter()
        for seq, kind, entry in db.execute("SELECT seq, kind, entry FROM audit ORDER BY seq"):
            body = json.loads(entry)["entry"]
            kinds[kind] += 1
            if kind == "connection.refused":
                refused_conns[body.get("reason", "?")] += body.get("repeated", 1)
            if kind.startswith("message."):
                entries[seq] = body
                if "gateway_id" in body:
                    per_gid[body["gateway_id"]][kind] += 1
        for m in accepted:
            r = m["receipt"]
            e = entries.get(r["audit_index"])
            if not e or e["event"] != "message.accepted" or e["message_id"] != m["message_id"] \
                    or e["sender"] != m["sender"] or e["recipient"] != m["recipient"]:
                LEDGER.problem("receipt %s/%s: audit entry %d is %s" % (m["sender"], m["message_id"],
                                                                         r["audit_index"], e))
        for m in refused:
            e = entries.get(m["error"]["audit_index"])
            if not e or e["event"] != "message.refused" or e["message_id"] != m["message_id"] \
                    or e["rule"] != m["error"]["rule"]:
                LEDGER.problem("refusal of %s/%s: audit entry %d is %s"
                               % (m["sender"], m["message_id"], m["error"]["audit_index"], e))
        if kinds["message.accepted"] != len(accepted):
            LEDGER.problem("%d message.accepted entries for %d receipts"
                           % (kinds["message.accepted"], len(accepted)))
        broken = sum(v for k, v in self.reloads.items() if k.startswith("broken"))
        if kinds["policy.refused"] != broken:
            LEDGER.problem("%d policy.refused entries for %d broken reloads" % (kinds["policy.refused"], broken))
        if kinds["message.refused"] != len(refused):
            LEDGER.problem("%d message.refused entries for %d refusals" % (kinds["message.refused"], len(refused)))
        for gid, c in per_gid.items():
            for k in ("message.delivered", "message.acknowledged", "message.expired"):
                if c[k] > 1:
                    LEDGER.problem("gateway_id %d has %d %s entries" % (gid, c[k], k))
            if c["message.acknowledged"] and c["message.expired"]:
                LEDGER.problem("gateway_id %d both acknowledged and expired" % gid)
            if c["message.acknowledged"] and not c["message.delivered"]:
                LEDGER.problem("gateway_id %d acknowledged, never audited as delivered" % gid)
        with LEDGER.lock:
            delivered = {g for p in LEDGER.deliveries.values() for g in p}
            probes = dict(LEDGER.probes)
            cuts = LEDGER.counts["cut.west-police.partner.unknown"]
        attempts = sum(probes.values()) + cuts
        surviving = sum(n for (life, _), n in probes.items() if life not in self.killed_lives) + cuts
        audited = sum(refused_conns.values())
        if audited > attempts or audited < surviving:
            LEDGER.problem("%d refused connections audited, for %d made (%d in lives that ended cleanly)"
                           % (audited, attempts, surviving))
        for gid in delivered:
            if not per_gid[gid]["message.delivered"]:
                LEDGER.problem("gateway_id %d was delivered, no message.delivered entry" % gid)
        return {"kinds": dict(kinds), "refused_connections": dict(refused_conns),
                "refused_connections_made": attempts, "made_in_clean_lives": surviving}

    def check_messages(self, db, accepted):
        rows = {r[0]: r for r in db.execute(
            "SELECT id, sender, message_id, recipient, agreement_id, agreement_version, state, "
            "accepted_at, expires_at FROM messages")}
        with LEDGER.lock:
            deliveries = {p: dict(d) for p, d in LEDGER.deliveries.items()}
            acked = dict(LEDGER.acked)
            ack_sent = set(LEDGER.ack_sent)
        states = collections.Counter()
        fates = collections.Counter()
        for m in accepted:
            gid = m["receipt"]["gateway_id"]
            row = rows.get(gid)
            if row is None:
                LEDGER.problem("gateway_id %d (%s/%s) is not in the store" % (gid, m["sender"], m["message_id"]))
                continue
            _, sender, mid, recipient, agreement, version, state, acc, exp = row
            if (sender, mid, recipient) != (m["sender"], m["message_id"], m["recipient"]):
                LEDGER.problem("gateway_id %d is %s in the store" % (gid, (sender, mid, recipient)))
            ttl = ttl_ms(agreement, version)
            if exp - acc != ttl:
                LEDGER.problem("gateway_id %d (%s v%d) expires %d ms after acceptance, TTL %s"
                               % (gid, agreement, version, exp - acc, ttl))
            got = gid in deliveries.get(recipient, {})
            name = ["pending", "delivered", "acknowledged", "expired"][state]
            states[name] += 1
            if state == 2:
                fates["delivered and acknowledged"] += 1
                if gid not in acked and gid not in ack_sent:
                    LEDGER.problem("gateway_id %d acknowledged in the store, %s never acked it"
                                   % (gid, recipient))
                elif gid not in acked:
                    fates["acknowledged, answer lost to a restart"] += 1
                if not got:
                    LEDGER.problem("gateway_id %d acknowledged, %s never got it" % (gid, recipient))
            elif state == 3:
                fates["expired (%s)" % ("delivered, never acked" if got else "never delivered")] += 1
                if gid in acked:
                    LEDGER.problem("gateway_id %d expired after its ack was confirmed" % gid)
                if exp > int(time.time() * 1000):
                    LEDGER.problem("gateway_id %d expired before its time" % gid)
            else:
                fates["still stored (%s)" % name] += 1
                if exp < int(time.time() * 1000) - 10000:
                    LEDGER.problem("gateway_id %d (%s) is past its expiry and still %s" % (gid, agreement, name))
                if gid in acked:
                    LEDGER.problem("gateway_id %d still %s after its ack was confirmed" % (gid, name))
                if agreement == SAFE:
                    LEDGER.note("gateway_id %d to the subscriber still %s at the end" % (gid, name))
        extra = set(rows) - {m["receipt"]["gateway_id"] for m in accepted}
        if extra:
            LEDGER.problem("%d messages in the store with no receipt: %s" % (len(extra), sorted(extra)[:10]))
        self.check_limits(accepted)
        return {"store_states": dict(states), "fates": dict(fates),
                "distinct_delivered": {p: len(d) for p, d in deliveries.items()},
                "deliveries_with_repeats": {p: sum(len(v) for v in d.values()) for p, d in deliveries.items()},
                "acks_confirmed": len(acked)}

    def check_limits(self, accepted):
        with LEDGER.lock:
            limited = [m for m in LEDGER.sends.values() if m.get("limit")]
        triage = [m for m in accepted if m["agreement"] == TRIAGE and m["sender"] == "met-police"]
        lim = LIMITS["triage_messages"]
        hit = any(m["agreement"] == TRIAGE for m in limited)
        if len(triage) > lim or (hit and len(triage) != lim):
            LEDGER.problem("%d triage messages accepted from met-police, messages_per_day %d%s"
                           % (len(triage), lim, " (and refusals for the limit)" if hit else ""))
        lim = LIMITS["plan_records"]
        for sender in ("met-police", "nhs-trust"):
            used = sum(len(m["records"]) for m in accepted if m["agreement"] == PLAN and m["sender"] == sender)
            if used > lim:
                LEDGER.problem("%s sent %d records under %s, records_per_day %d" % (sender, used, PLAN, lim))
            for m in limited:
                if m["agreement"] == PLAN and m["sender"] == sender and used + len(m["records"]) <= lim:
                    LEDGER.problem("%s/%s (%d records) refused for records_per_day %d with %d used"
                                   % (sender, m["message_id"], len(m["records"]), lim, used))
        if self.cap_window:
            t0, t1 = self.cap_window
            for sender in ("met-police", "west-police"):
                n = sum(1 for m in accepted if m["agreement"] == SAFE and m["sender"] == sender
                        and m["receipt"]["accepted_at_ms"] < t1)
                if n > self.safe_cap_was:
                    LEDGER.problem("%s had %d messages accepted under %s by the time its cap of %d "
                                   "a day was lifted" % (sender, n, SAFE, self.safe_cap_was))
            for m in limited:
                if m["agreement"] == SAFE and not t0 - 5000 <= m["sent_at"] * 1000 <= t1 + 5000:
                    LEDGER.problem("%s/%s refused for a cap not in force" % (m["sender"], m["message_id"]))
        self.limits = {"limits": dict(LIMITS), "triage_accepted": len(triage), "safe_cap": self.safe_cap_was,
                       "refused_for_limits": collections.Counter(m["agreement"] for m in limited)}

    EXPECTED_ERRORS = {"policy.refused", "policy.error", "policy.diagnostic", "keys.missing_domain",
                       "tls.reload_failed"}

    def check_log(self):
        text = self.gw.log
        levels = collections.Counter()
        errors = collections.Counter()
        warns = collections.Counter()
        for line in text.splitlines():
            m = re.match(r"ts=\S+ level=(\w+) event=(\S+)", line)
            if not m:
                if line.startswith("# isgtest:"):
                    continue
                if re.match(r"\S+:\d+:\d+: warning: ", line):  # policy warnings at start
                    warns["start-up policy warning"] += 1
                    continue
                if re.search(r"AddressSanitizer|LeakSanitizer|ThreadSanitizer|runtime error|SUMMARY:", line):
                    LEDGER.problem("sanitizer: " + line)
                else:
                    LEDGER.note("log line not in logfmt: " + line[:200])
                continue
            level, event = m.groups()
            levels[level] += 1
            if level == "error":
                errors[event] += 1
                if event not in self.EXPECTED_ERRORS:
                    LEDGER.problem("unexpected error line: " + line[:300])
            elif level == "warn":
                warns[event] += 1
        with SECRETS.lock:
            nhs, notes = set(SECRETS.nhs), set(SECRETS.notes)
        leaked = [n for n in re.findall(r"(?<!\d)\d{10}(?!\d)", text) if n in nhs]
        leaked += [n for n in notes if n in text]
        for name in FAMILY_NAMES:
            if name in text:
                leaked.append(name)
        if re.search(r"soaksummary|soaknote", text):
            leaked.append("soaksummary/soaknote")
        if leaked:
            LEDGER.problem("record values in isgd's log: %s" % sorted(set(leaked))[:10])
        return {"levels": dict(levels), "errors": dict(errors), "warns": dict(warns),
                "values_leaked": len(set(leaked))}

    def check_trend(self):
        rows = [r for r in self.sampler.rows if r["gw_rss_kb"] != ""]
        if not rows:
            return {}
        last_start = rows[-1]["start"]
        life = [r for r in rows if r["start"] == last_start]
        out = {"samples": len(rows), "first": rows[0], "last": life[-1],
               "wal_max_bytes": max(r["wal_bytes"] for r in rows),
               "db_final_bytes": rows[-1]["db_bytes"]}
        if len(life) >= 20:
            n = len(life)
            warm = life[n // 4:n // 2]
            late = life[3 * n // 4:]

            def peak(rs, k):
                return max(r[k] for r in rs)
            out["last_life_seconds"] = life[-1]["t"] - life[0]["t"]
            for k in ("gw_rss_kb", "kp_rss_kb", "gw_fds", "kp_fds", "gw_threads", "wal_bytes"):
                out[k] = {"start": life[0][k], "warm_peak": peak(warm, k), "late_peak": peak(late, k),
                          "end": life[-1][k]}
            rss = out["gw_rss_kb"]
            if sanitized():
                pass  # ASan's quarantine and shadow memory grow for their own reasons
            elif rss["late_peak"] > rss["warm_peak"] * 1.25 + 4096:
                LEDGER.problem("gateway RSS still growing: %d KiB at warm-up, %d KiB late"
                               % (rss["warm_peak"], rss["late_peak"]))
            kp = out["kp_rss_kb"]
            if not sanitized() and kp["late_peak"] > kp["warm_peak"] * 1.25 + 2048:
                LEDGER.problem("key process RSS still growing: %d KiB at warm-up, %d KiB late"
                               % (kp["warm_peak"], kp["late_peak"]))
            for k in ("gw_fds", "kp_fds"):
                if out[k]["late_peak"] > out[k]["warm_peak"] + 8:
                    LEDGER.problem("%s still growing: %d at warm-up, %d late" % (k, out[k]["warm_peak"],
                                                                                 out[k]["late_peak"]))
        if out["wal_max_bytes"] > 80 * 1024 * 1024:
            LEDGER.problem("the WAL reached %d bytes (bound about 66 MB)" % out["wal_max_bytes"])
        return out


def sanitized():
    """isgd was built with ASan (-DISG_SANITIZE=ON)."""
    with open(isgtest.ISGD, "rb") as f:
        return b"__asan_init" in f.read()


def main():
    soak = Soak()
    try:
        report = soak.run()
    except BaseException:
        log("soak aborted\n" + soak.gw.diagnostics(60))
        soak.stop_senders.set()
        soak.stop_hard.set()
        soak.stop_recipients.set()
        soak.stop_sampler.set()
        soak.gw.close()
        raise
    print(json.dumps({k: report[k] for k in ("sent", "accepted", "refused", "unresolved", "states", "limits",
                                             "audit", "log", "reloads", "restarts", "counts")},
                     indent=1, default=str))
    t = report["trend"]
    print("trend (last isgd life, %.0f s):" % t.get("last_life_seconds", 0))
    for k in ("gw_rss_kb", "kp_rss_kb", "gw_fds", "kp_fds", "gw_threads", "wal_bytes"):
        if k in t:
            print("  %-10s %s" % (k, t[k]))
    print("  wal max %d bytes, store %d bytes at the end" % (t.get("wal_max_bytes", 0),
                                                            t.get("db_final_bytes", 0)))
    for n in report["notes"][:30]:
        print("note: " + n)
    if report["problems"]:
        print("%d PROBLEMS:" % len(report["problems"]))
        for p in report["problems"][:50]:
            print("  " + p)
        print("summary: %s/summary.json" % soak.dir)
        return 1
    print("soak passed; summary: %s/summary.json" % soak.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
