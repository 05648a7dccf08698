"""
Scenario: the IG officer's audit tools (isgctl audit, docs/audit.md) on a log
written by the real isgd.

setUpClass runs one gateway (checkpoints every 3 entries, so there are
several) through accepted sends, refused sends and a fetch with its
acknowledgement, saves a checkpoint with `isgctl audit checkpoint` while
isgd runs, and stops it (the final checkpoint is written at close). The tests
then check the log as it is, and tamper with COPIES of the store file using
Python's sqlite3 (an entry changed, deleted, inserted, two entries swapped,
the log truncated, a checkpoint forged): each must make `isgctl audit verify`
exit 1 with a message that names the problem. The export is checked with the
Python script printed in docs/audit.md.
"""

import base64
import contextlib
import csv
import datetime
import fcntl
import hashlib
import io
import json
import os
import pty
import pwd
import re
import resource
import select
import shutil
import signal
import sqlite3
import stat
import subprocess
import termios
import time
import unittest

import isgtest
from isgtest import AGREEMENT_ID, DATASET

ORIGIN = "audit.isg.test/log"
NHS_A = "9434765919"
NHS_B = "6281948211"
NHS_C = "1860913903"
NAME_A = "featherstonehaugh"
RECORD_A = {"nhs_number": NHS_A, "family_name": NAME_A, "age": 42}
RECORD_B = {"nhs_number": NHS_B, "family_name": "okonkwo", "age": 87}
RECORD_C = {"nhs_number": NHS_C, "age": 19}
IDENTIFIERS = [NHS_A, NHS_B, NHS_C, "943 476 5919", NAME_A]
T_NHS = 0x01
F_SETPIPE_SZ = 1031  # Linux: fcntl.F_SETPIPE_SZ from Python 3.10
PIPE_PAGE = 4096


def leaf_hash(entry):
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(index, size, leaf, proof, root):
    """RFC 9162 section 2.1.3.2, as docs/audit-format.md states it."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def note_body(note):
    """(origin, size, root bytes) of a checkpoint note's signed text."""
    text = note.split("\n\n", 1)[0]
    origin, size, root = text.split("\n")
    return origin, int(size), base64.b64decode(root)


def doc_script(name):
    """The ```python block of docs/audit.md whose first line is `# NAME`."""
    text = isgtest.read_text(os.path.join(isgtest.SOURCE, "docs", "audit.md"))
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        if block.startswith("# " + name):
            return block
    raise AssertionError("docs/audit.md has no python block starting '# %s'" % name)


class AuditLog(isgtest.ScenarioCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = isgtest.make_tmpdir("isg-audit-log-")
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
        policy = isgtest.write_policy(os.path.join(cls.root, "policies"))
        gw = isgtest.Gateway(os.path.join(cls.root, "gw"), cls.pki, policy, start=False,
                             audit={"origin": ORIGIN, "checkpoint_every": 3})
        cls.gw = gw
        gw.start()
        try:
            police = isgtest.Partner(gw, cls.pki, "police")
            nhs = isgtest.Partner(gw, cls.pki, "nhs")
            council = isgtest.Partner(gw, cls.pki, "council")
            cls.receipts = [police.send_ok([RECORD_A, RECORD_B], message_id="audit-1"),
                            police.send_ok([RECORD_C], message_id="audit-2")]
            cls.refusals = [police.send([dict(RECORD_A, nhs_number=NHS_A[:-1] + "8")]),
                            council.send([RECORD_A], to="nhs-trust")]
            for r in cls.refusals:
                if r.rc != 3:
                    raise AssertionError("expected a refusal\n%s" % (r,))
            cls.fetched = nhs.fetch_messages()
            cls.receipts.append(police.send_ok([dict(RECORD_A, age=43)], message_id="audit-3"))
            # A checkpoint saved while isgd runs, as an IG officer's cron job would.
            r = isgtest.ctl("audit", "checkpoint", "--config", gw.config_path)
            if r.rc != 0:
                raise AssertionError("audit checkpoint while running failed (does isgd give the "
                                     "store its audit signer?)\n%s\n%s" % (r, gw.diagnostics()))
            cls.saved_running = os.path.join(cls.root, "saved-running.cp")
            with open(cls.saved_running, "w", encoding="utf-8") as f:
                f.write(r.out)
            cls.running_verify = isgtest.ctl("audit", "verify", "--config", gw.config_path)
        finally:
            gw.stop()
        r = isgtest.ctl("audit", "checkpoint", "--config", gw.config_path)
        if r.rc != 0:
            raise AssertionError("audit checkpoint failed\n%s" % (r,))
        cls.final_note = r.out
        cls.saved_final = os.path.join(cls.root, "saved-final.cp")
        with open(cls.saved_final, "w", encoding="utf-8") as f:
            f.write(r.out)
        cls.store_files_after_stop = sorted(os.listdir(os.path.dirname(gw.store_path)))
        # immutable: a read-only connection would leave -wal and -shm files behind
        db = sqlite3.connect("file:%s?mode=ro&immutable=1" % gw.store_path, uri=True)
        try:
            cls.entries = db.execute("SELECT seq, at, kind, entry FROM audit ORDER BY seq").fetchall()
            cls.checkpoints = db.execute("SELECT size, note FROM checkpoints ORDER BY size").fetchall()
        finally:
            db.close()

    # -- helpers

    def audit(self, *args, store=None, input=None):
        """isgctl audit ARGS with the gateway's config (or --store a copy, and --keys and
        --origin for the commands that take them)."""
        where = ["--config", self.gw.config_path]
        if store is not None:
            where = ["--store", store]
            if args[0] != "checkpoint":
                where += ["--keys", self.gw.keys_dir, "--origin", ORIGIN]
        return isgtest.ctl("audit", *(list(args) + where), input=input)

    def copy_store(self, name):
        path = os.path.join(self.tmp, name + ".db")
        shutil.copyfile(self.gw.store_path, path)
        return path

    def tamper(self, name, *statements):
        return isgtest.tampered_store(self.gw.store_path, os.path.join(self.tmp, name + ".db"),
                                      *statements)

    def assertVerifyFails(self, store, *messages, extra=()):
        r = self.audit("verify", *extra, store=store)
        self.assertEqual(r.rc, 1, "verify should fail\n%s" % (r,))
        for m in messages:
            self.assertRegex(r.out, m, "verify does not report %r\n%s" % (m, r))
        self.assertIn("audit log FAILED verification", r.out, r)
        return r

    def assertSavedUnreadable(self, store, path, message):
        """A --against file that is no checkpoint: the log's checks pass, and verify says it
        was not checked against that file, and exits 1."""
        r = self.audit("verify", "--against", path, store=store)
        self.assertEqual(r.rc, 1, r)
        self.assertRegex(r.out, message, r)
        self.assertNotIn("FAILED", r.out, r)
        self.assertTrue(r.out.endswith(
            "\naudit log checks passed, but 1 saved checkpoint could not be read, so the log "
            "was NOT checked against it\n"), r)
        return r

    def entry(self, seq):
        return dict((row[0], row) for row in self.entries)[seq]

    def assertTampered(self, r):
        """An answer from a copy that no longer verifies: printed all the same, but it
        ends saying the log FAILED and exits 1, since what it read may not be what was
        signed."""
        self.assertEqual(r.rc, 1, r)
        self.assertRegex(r.err, r"isgctl: audit log FAILED verification: \d+ problems?; run "
                         r"'isgctl audit verify' for the details: this (list|answer) may be "
                         r"incomplete or wrong\n$")
        self.assertNotIn("audit log OK", r.err)

    def a_covered_entry(self):
        """A message.accepted entry in the middle of the log: (seq, leaf bytes)."""
        seq = self.receipts[1]["audit_index"]
        return seq, bytes(self.entry(seq)[3])

    # -- the log as isgd wrote it

    def test_log_shape(self):
        n = len(self.entries)
        self.assertEqual([row[0] for row in self.entries], list(range(1, n + 1)))
        self.assertGreaterEqual(len(self.checkpoints), 3, self.checkpoints)
        self.assertEqual(self.checkpoints[-1][0], n, "the close must checkpoint every entry")
        kinds = [row[2] for row in self.entries]
        for k in ["message.accepted", "message.refused", "message.delivered",
                  "message.acknowledged"]:
            self.assertIn(k, kinds)
        for seq, at, kind, entry in self.entries:
            leaf = json.loads(bytes(entry))
            self.assertEqual(list(leaf), ["index", "at", "entry"])
            self.assertEqual((leaf["index"], leaf["entry"]["event"]), (seq, kind))
        # No identifier in clear anywhere in the log.
        blob = b"".join(bytes(row[3]) for row in self.entries).lower()
        for ident in IDENTIFIERS:
            self.assertNotIn(ident.lower().encode(), blob)

    def test_verify_ok(self):
        r = self.audit("verify")
        self.assertEqual(r.rc, 0, r)
        n, m = len(self.entries), len(self.checkpoints)
        root = base64.b64encode(note_body(self.final_note)[2]).decode()
        self.assertIn("audit log OK: %d entries, %d checkpoints, latest checkpoint size %d, root %s"
                      % (n, m, n, root), r.out)
        self.assertIn("%d of %d consistency proofs" % (m - 1, m - 1), r.out)
        # The counts, in words an IG officer reads (docs/audit.md explains each line).
        self.assertIn("\nwhich means:\n"
                      "  - %d of the log's %d checkpoints carry a valid signature by the "
                      "verifier key\n"
                      "  - %d of the %d signed checkpoints within the log's %d entries match "
                      "those entries as they are now\n"
                      "  - %d of %d signed checkpoints are shown to extend the checkpoint before "
                      "them without changing any entry it covers\n"
                      "  - no checkpoint saved outside the gateway was given (--against)\n"
                      "audit log OK" % (m, m, m, m, n, m - 1, m - 1), r.out)
        self.assertNotIn("not yet covered", r.out)
        self.assertNotIn("problem", r.out)
        # Against the checkpoints saved while running and at the end, with the published key.
        key = self.audit("pubkey").out.strip()
        r = self.audit("verify", "--pubkey", key, "--against", self.saved_running,
                       "--against", self.saved_final)
        self.assertEqual(r.rc, 0, r)
        self.assertIn("2 of 2 saved checkpoints", r.out)

    def test_verify_while_running(self):
        r = self.running_verify
        self.assertEqual(r.rc, 0, r)
        self.assertIn("audit log OK:", r.out)

    def test_pubkey(self):
        r = self.audit("pubkey")
        self.assertEqual(r.rc, 0, r)
        key = r.out.strip()
        self.assertEqual(r.out, key + "\n")
        name, key_hash, b64 = key.split("+", 2)
        self.assertEqual(name, ORIGIN)
        raw = base64.b64decode(b64, validate=True)
        self.assertEqual((len(raw), raw[0]), (33, 1))
        self.assertEqual(hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex(), key_hash)
        # The final checkpoint carries a signature line by exactly this key.
        sig = [line for line in self.final_note.splitlines() if line.startswith("\u2014 ")]
        self.assertEqual(len(sig), 1, self.final_note)
        _, sig_name, sig_b64 = sig[0].split(" ")
        self.assertEqual(sig_name, ORIGIN)
        self.assertEqual(base64.b64decode(sig_b64)[:4].hex(), key_hash)
        # Only through the keys directory (no store needed).
        r2 = isgtest.ctl("audit", "pubkey", "--keys", self.gw.keys_dir, "--origin", ORIGIN)
        self.assertEqual((r2.rc, r2.out), (0, r.out), r2)

    def test_keys_out_of_reach_say_what_to_do(self):
        """A user who cannot read KEYS_DIR is told to run as the keys' owner, or, where a
        verifier key will do, to give the recorded one with --pubkey-file; one who cannot
        read the store, to run as its owner."""
        if os.geteuid() != 0:
            if os.environ.get("ISG_ALLOW_SKIP"):
                self.skipTest("needs root to run isgctl as another user")
            self.fail("this test needs root (set ISG_ALLOW_SKIP=1 to skip it)")
        nobody = pwd.getpwnam("nobody")
        home = isgtest.make_tmpdir("isg-audit-nobody-")
        self.addCleanup(isgtest.remove_tmpdir, home)
        store = os.path.join(home, "isg.db")
        shutil.copyfile(self.gw.store_path, store)
        pubkey = os.path.join(home, "verifier.pub")
        with open(pubkey, "w", encoding="utf-8") as f:
            f.write(self.audit("pubkey").out)
        for path in (home, store, pubkey):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)

        def as_nobody():
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)

        def run(*args):
            argv = [isgtest.ISGCTL, "audit"] + list(args)
            return subprocess.run(argv, capture_output=True, text=True, preexec_fn=as_nobody,
                                  timeout=isgtest.CTL_TIMEOUT, stdin=subprocess.DEVNULL,
                                  cwd=home)

        keys = self.gw.keys_dir
        denied = "isgctl: key directory '%s': cannot open: Permission denied" % keys
        where = ["--store", store, "--keys", keys, "--origin", ORIGIN]
        seq = str(self.a_covered_entry()[0])
        # export goes on without the key in its header, and says so.
        for args, rc in ((["verify"], 1), (["prove", seq], 1), (["export"], 0)):
            with self.subTest(args=args):
                p = run(*(args + where))
                self.assertEqual(p.returncode, rc, p.stderr)
                self.assertIn("%s (run it as the keys' owner, or give the recorded verifier key "
                              "with --pubkey-file)\n" % denied, p.stderr)
        p = run("pubkey", "--keys", keys, "--origin", ORIGIN)
        self.assertEqual((p.returncode, p.stdout), (1, ""), p)
        self.assertEqual(p.stderr, "%s (run it as the keys' owner)\n" % denied)
        p = run("subject", "--nhs-number", NHS_A, "--store", store, "--keys", keys)
        self.assertEqual((p.returncode, p.stdout), (1, ""), p)
        self.assertEqual(p.stderr, "%s (run it as the keys' owner: a subject is looked up "
                         "through the audit linkage domain's key, domains/audit.key)\n" % denied)
        # The hint holds: the recorded verifier key needs no keys directory.
        p = run("verify", "--store", store, "--pubkey-file", pubkey)
        self.assertEqual(p.returncode, 0, p)
        # A store this user may not read is said as such, not as SQLite's
        # "unable to open database file".
        os.chown(store, 0, 0)
        os.chmod(store, 0o600)
        for args in (["verify", "--pubkey-file", pubkey], ["list"]):
            with self.subTest(args=args):
                p = run(*(args + ["--store", store]))
                self.assertEqual((p.returncode, p.stdout), (1, ""), p)
                self.assertEqual(p.stderr, "isgctl: cannot open store '%s': permission denied "
                                 "(run it as the store's owner)\n" % store)
        # As installed (operations.md): the store in a directory of mode 0700 that is
        # not this user's, which stops them before the file.
        private = os.path.join(home, "private")
        os.mkdir(private, 0o700)
        inside = os.path.join(private, "isg.db")
        shutil.copyfile(self.gw.store_path, inside)
        p = run("verify", "--pubkey-file", pubkey, "--store", inside)
        self.assertEqual((p.returncode, p.stdout), (1, ""), p)
        self.assertEqual(p.stderr, "isgctl: cannot open store '%s': cannot resolve its path: "
                         "permission denied (run it as the store's owner)\n" % inside)

    def test_checkpoint(self):
        self.assertEqual(self.final_note, self.checkpoints[-1][1])
        origin, size, _ = note_body(self.final_note)
        self.assertEqual((origin, size), (ORIGIN, len(self.entries)))

    def test_prove_receipt(self):
        receipt = self.receipts[0]
        seq = receipt["audit_index"]
        r = self.audit("prove", str(seq))
        self.assertEqual(r.rc, 0, r)
        p = json.loads(r.out)
        n = len(self.entries)
        self.assertEqual((p["index"], p["leaf_index"], p["tree_size"]), (seq, seq - 1, n))
        self.assertEqual(p["checkpoint"], self.final_note)
        leaf = base64.b64decode(p["leaf"], validate=True)
        self.assertEqual(leaf, bytes(self.entry(seq)[3]))
        self.assertEqual(json.loads(leaf)["entry"]["message_id"], "audit-1")
        self.assertEqual(base64.b64decode(p["leaf_hash"]), leaf_hash(leaf))
        origin, size, root = note_body(p["checkpoint"])
        self.assertEqual((size, base64.b64decode(p["root"])), (n, root))
        proof = [base64.b64decode(h) for h in p["proof"]]
        self.assertTrue(verify_inclusion(seq - 1, n, leaf_hash(leaf), proof, root))
        # A proof does not verify for another leaf or another position.
        self.assertFalse(verify_inclusion(seq - 1, n, leaf_hash(leaf + b" "), proof, root))
        if n > 1:
            other = seq % n
            self.assertFalse(verify_inclusion(other, n, leaf_hash(leaf), proof, root))
        # In an earlier checkpoint's tree too.
        size = next(s for s, _ in self.checkpoints if s >= seq)
        r = self.audit("prove", str(seq), "--size", str(size))
        self.assertEqual(r.rc, 0, r)
        p = json.loads(r.out)
        _, _, root = note_body(p["checkpoint"])
        self.assertTrue(verify_inclusion(seq - 1, size, leaf_hash(leaf),
                                         [base64.b64decode(h) for h in p["proof"]], root))
        r = self.audit("prove", str(n + 1))
        self.assertEqual(r.rc, 1, r)
        self.assertEqual(r.err, "isgctl: entry %d does not exist: the log has %d entries\n"
                         % (n + 1, n))
        # A size no checkpoint has: the sizes there are, to pick one.
        sizes = [s for s, _ in self.checkpoints]
        r = self.audit("prove", "1", "--size", str(sizes[-1] + 1000))
        self.assertEqual(r.rc, 1, r)
        self.assertIn("no stored checkpoint has size %d: the nearest has size %d"
                      % (sizes[-1] + 1000, sizes[-1]), r.err)
        if len(sizes) > 1 and sizes[1] - sizes[0] > 1:
            r = self.audit("prove", "1", "--size", str(sizes[0] + 1))
            self.assertIn("the nearest have sizes %d and %d" % (sizes[0], sizes[1]), r.err)

    # -- tampering, each on a copy of the store

    def test_changed_entry(self):
        seq, leaf = self.a_covered_entry()
        changed = leaf.replace(b'"records":1', b'"records":7')
        self.assertNotEqual(changed, leaf)
        db = self.tamper("changed", ("UPDATE audit SET entry = ? WHERE seq = ?", (changed, seq)))
        cp = next(s for s, _ in self.checkpoints if s >= seq)
        prev = max([s for s, _ in self.checkpoints if s < seq], default=0)
        self.assertVerifyFails(db, r"problem: checkpoint of size %d does not match the log: some of "
                                   r"entries %d\.\.%d were changed" % (cp, prev + 1, cp))
        # One byte, and the columns disagreeing with the leaf.
        flipped = bytearray(leaf)
        flipped[leaf.index(b"met-police")] ^= 0x01
        db = self.tamper("flipped", ("UPDATE audit SET entry = ? WHERE seq = ?",
                                     (bytes(flipped), seq)),
                         ("UPDATE audit SET kind = 'message.refused' WHERE seq = ?", (seq,)))
        self.assertVerifyFails(db, r"checkpoint of size %d does not match the log" % cp,
                               r"entry %d: its kind column says 'message.refused' but the entry "
                               r"is 'message.accepted'" % seq)

    def test_deleted_entry(self):
        """One row deleted from the middle: the entries after it sit one place early, under
        checkpoints signed before they were written. That is the deletion, said once, not a
        run of entries "dated after the checkpoint covering them" with an innocent reading."""
        seq, _ = self.a_covered_entry()
        n = len(self.entries)
        self.assertLess(seq, self.checkpoints[-2][0])
        db = self.tamper("deleted", ("DELETE FROM audit WHERE seq = ?", (seq,)))
        r = self.assertVerifyFails(db, r"problem: entry %d is missing \(deleted\)\n" % seq,
                                   r"problem: checkpoint of size %d covers more entries than the "
                                   r"log holds \(%d\): entries are missing \(deleted from the "
                                   r"middle or the end\)\n" % (n, n - 1))
        self.assertNotIn("dated after the checkpoint", r.out)
        self.assertNotIn("Innocently", r.out)
        self.assertNotIn("not yet covered", r.out)
        self.assertNotIn("earlier time", r.out)
        # The last entry deleted: the code knows it went from the end.
        db = self.tamper("deleted-last", ("DELETE FROM audit WHERE seq = ?", (n,)))
        self.assertVerifyFails(db, r"problem: checkpoint of size %d covers more entries than the "
                                   r"log holds \(%d\): entries were deleted from its end \(the "
                                   r"log was truncated\)\n" % (n, n - 1))

    def test_inserted_entry(self):
        seq, leaf = self.a_covered_entry()
        n = len(self.entries)
        fake = json.loads(leaf)
        fake["entry"]["message_id"] = "forged"
        fake_bytes = json.dumps(fake, separators=(",", ":")).encode()
        # Make room at seq (renumber the rest up by one) and insert there.
        db = self.tamper("inserted",
                         ("UPDATE audit SET seq = seq + 1000000 WHERE seq >= ?", (seq,)),
                         ("UPDATE audit SET seq = seq - 999999 WHERE seq >= 1000000", ()),
                         ("INSERT INTO audit(seq, at, kind, entry) VALUES (?, ?, ?, ?)",
                          (seq, self.entry(seq)[1], "message.accepted", fake_bytes)))
        self.assertVerifyFails(db, r"problem: entry %d holds index %d, as entry %d does \(one of "
                                   r"them was inserted\)" % (seq + 1, seq, seq),
                               r"problem: entries %d\.\.%d are out of place: they hold indexes "
                               r"%d\.\.%d \(entries were inserted before them\)"
                               % (seq + 2, n + 1, seq + 1, n),
                               r"does not match the log")
        # Appended at the end with an index that is not its seq.
        fake["index"] = n
        db = self.tamper("appended", ("INSERT INTO audit(seq, at, kind, entry) VALUES (?, ?, ?, ?)",
                                      (n + 1, self.entry(n)[1], "message.accepted",
                                       json.dumps(fake, separators=(",", ":")).encode())))
        self.assertVerifyFails(db, r"entry %d holds index %d, as entry %d does" % (n + 1, n, n))

    def test_reordered_entries(self):
        a, b = 2, self.receipts[1]["audit_index"]
        ea, eb = self.entry(a), self.entry(b)
        db = self.tamper("swapped",
                         ("UPDATE audit SET at = ?, kind = ?, entry = ? WHERE seq = ?", eb[1:] + (a,)),
                         ("UPDATE audit SET at = ?, kind = ?, entry = ? WHERE seq = ?", ea[1:] + (b,)))
        cp = next(s for s, _ in self.checkpoints if s >= a)
        self.assertVerifyFails(db, r"problem: entry %d is out of place: it holds index %d" % (a, b),
                               r"problem: entry %d is out of place: it holds index %d" % (b, a),
                               r"checkpoint of size %d does not match the log" % cp)

    def test_saved_checkpoint_through_mail(self):
        """A saved checkpoint with CRLF line ends, or without its final newline (mail, a
        ticket, a Windows editor), still vouches for the log: its signature decides."""
        note = isgtest.read_text(self.saved_final)
        self.assertTrue(note.endswith("\n") and "\r" not in note)
        for name, text in (("crlf", note.replace("\n", "\r\n")), ("no-newline", note[:-1]),
                           ("crlf-no-newline", note.replace("\n", "\r\n")[:-2])):
            with self.subTest(name):
                path = os.path.join(self.tmp, name + ".cp")
                with open(path, "wb") as f:
                    f.write(text.encode())
                r = self.audit("verify", "--against", path)
                self.assertEqual(r.rc, 0, r)
                self.assertIn("1 of 1 saved checkpoints", r.out)
                self.assertIn("audit log OK", r.out)
        # Still signed over the text: a line changed after the CRLF is no checkpoint.
        origin, size, root = note_body(note)
        changed = note.replace("\n%d\n" % size, "\n%d\n" % (size - 1), 1).replace("\n", "\r\n")
        path = os.path.join(self.tmp, "changed-crlf.cp")
        with open(path, "wb") as f:
            f.write(changed.encode())
        self.assertVerifyFails(self.copy_store("plain-crlf"),
                               r"problem: saved checkpoint '[^']*changed-crlf.cp': its signature "
                               r"does not verify", extra=["--against", path])
        # Not a checkpoint at all: said as such, apart from the log failing.
        path = os.path.join(self.tmp, "not-a-checkpoint.cp")
        with open(path, "wb") as f:
            f.write(b"see the attached file\r\n")
        r = self.assertSavedUnreadable(self.copy_store("plain-text"), path,
                                       r"problem: saved checkpoint '[^']*not-a-checkpoint.cp' "
                                       r"could not be read as a checkpoint: \S")
        self.assertNotIn("control character", r.out)
        # Saved empty (or blank): said so, not as a note's missing blank line.
        for name, text in (("empty", b""), ("blank", b"\r\n \n")):
            with self.subTest(name):
                path = os.path.join(self.tmp, "%s.cp" % name)
                with open(path, "wb") as f:
                    f.write(text)
                self.assertSavedUnreadable(self.copy_store(name), path,
                                           r"problem: saved checkpoint '[^']*%s.cp' could not be "
                                           r"read as a checkpoint: the file is empty \(save the "
                                           r"checkpoint's lines in it\)\n" % name)
        # A mail body around a good checkpoint: not read as one, not called forged.
        for name, text in (("above", "Hi, here is the checkpoint:\n" + note),
                           ("above-crlf", ("Hi, here is the checkpoint:\n" + note)
                            .replace("\n", "\r\n")),
                           ("around", "Hi,\n\n" + note + "\nRegards\n")):
            with self.subTest(name):
                path = os.path.join(self.tmp, "mail-%s.cp" % name)
                with open(path, "wb") as f:
                    f.write(text.encode())
                r = self.assertSavedUnreadable(self.copy_store("mail-" + name), path,
                                               r"problem: saved checkpoint '[^']*mail-%s.cp' "
                                               r"could not be read as a checkpoint: \S" % name)
                self.assertNotIn("forged", r.out)

    def test_truncated_log(self):
        keep = self.checkpoints[-2][0]
        db = self.tamper("truncated", ("DELETE FROM audit WHERE seq > ?", (keep,)),
                         ("DELETE FROM checkpoints WHERE size > ?", (keep,)))
        # The shorter log is consistent in itself...
        r = self.audit("verify", store=db)
        self.assertEqual(r.rc, 0, r)
        self.assertIn("latest checkpoint size %d" % keep, r.out)
        # ...but a checkpoint kept elsewhere shows it was rolled back.
        self.assertVerifyFails(db, r"problem: log was truncated or rolled back: saved checkpoint of "
                                   r"size %d \('[^']*saved-final.cp'\) covers more entries than the "
                                   r"log holds \(%d\)" % (len(self.entries), keep),
                               extra=["--against", self.saved_final])
        # Rolled back and then re-written beyond the saved size: the root differs.
        rows = [(s, self.entry(s)[1], self.entry(s)[2], bytes(self.entry(s)[3]))
                for s in range(keep + 1, len(self.entries) + 1)]
        rows[-1] = rows[-1][:3] + (rows[-1][3].replace(b'"event"', b'"event" '),)
        db = self.tamper("rewritten", ("DELETE FROM checkpoints WHERE size > ?", (keep,)),
                         *[("UPDATE audit SET entry = ? WHERE seq = ?", (e, s)) for s, _, _, e in rows])
        self.assertVerifyFails(db, r"log was truncated or rolled back: saved checkpoint of size %d "
                                   r"\([^)]*\) does not match the log's first %d entries"
                               % (len(self.entries), len(self.entries)),
                               extra=["--against", self.saved_final])

    def test_deleted_checkpoints(self):
        """Entries no checkpoint covers are a problem once older than the grace."""
        first = self.checkpoints[0][0]
        db = self.tamper("no-late-checkpoints", ("DELETE FROM checkpoints WHERE size > ?", (first,)))
        # Just written: isgd may not have signed them yet, so a note only.
        r = self.audit("verify", store=db)
        self.assertEqual(r.rc, 0, r)
        self.assertIn("note: entries %d..%d (%d) are not yet covered by a checkpoint"
                      % (first + 1, len(self.entries), len(self.entries) - first), r.out)
        # With no grace they are too old.
        r = self.assertVerifyFails(db, r"problem: %d entries, from entry %d to entry %d, are "
                                       r"covered by no signed checkpoint though written more "
                                       r"than 0 s ago"
                                   % (len(self.entries) - first, first + 1, len(self.entries)),
                                   extra=["--grace", "0"])
        self.assertIn("checkpoints were deleted", r.out)
        self.assertIn("start isgd", r.out)
        self.assertNotIn("not yet covered", r.out)
        r = self.audit("verify", "--grace", "-1", store=db)
        self.assertEqual(r.rc, 2, r)

    def test_entries_rewritten_with_later_times(self):
        """The latest checkpoint deleted and the entries after the one before it rewritten a
        year ahead: uncovered, they are dated in the future; signed by a restarted isgd,
        they are dated after the checkpoint covering them was written. Either way a
        problem, never "audit log OK"."""
        keep, n = self.checkpoints[-2][0], len(self.entries)
        year = 365 * 86400 * 1000
        statements = [("DELETE FROM checkpoints WHERE size > ?", (keep,))]
        for seq, at, _, entry in self.entries[keep:]:
            later = datetime.datetime.fromtimestamp((at + year) / 1000, datetime.timezone.utc)
            text = later.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % ((at + year) % 1000)
            leaf = re.sub(rb'"at":"[^"]*"', b'"at":"' + text.encode() + b'"', bytes(entry), 1)
            self.assertNotEqual(leaf, bytes(entry))
            statements.append(("UPDATE audit SET entry = ?, at = ? WHERE seq = ?",
                               (leaf, at + year, seq)))
        db = self.tamper("later-times", *statements)
        span = (r"entry %d is" % n if n == keep + 1
                else r"%d entries, from entry %d to entry %d, are" % (n - keep, keep + 1, n))
        r = self.assertVerifyFails(db, r"problem: %s dated in the future \(the first at \S+, more "
                                       r"than 0 s ahead of this computer's clock\) and no "
                                       r"checkpoint covers them" % span,
                                   extra=["--grace", "0"])
        self.assertNotIn("audit log OK", r.out)
        self.assertVerifyFails(db, r"problem: %s dated in the future" % span)  # default grace

        # A restarted isgd signs them as they are, and writes entry n + 1 at today's time.
        policy = os.path.join(self.root, "policies")
        gw_dir = os.path.join(self.tmp, "restarted")
        shutil.copytree(self.gw.keys_dir, os.path.join(gw_dir, "keys"))
        gw = isgtest.Gateway(gw_dir, self.pki, policy, start=False,
                             audit={"origin": ORIGIN, "checkpoint_every": 3})
        shutil.copyfile(db, gw.store_path)
        gw.start()
        try:
            isgtest.Partner(gw, self.pki, "police").send_ok([RECORD_C], message_id="after")
        finally:
            gw.stop()
        r = self.audit("verify", store=gw.store_path)
        self.assertEqual(r.rc, 1, r)
        late = (r"entry %d is dated after the checkpoint covering it" % n if n == keep + 1
                else r"%d entries, from entry %d to entry %d, are dated after the checkpoint "
                r"covering them" % (n - keep, keep + 1, n))
        self.assertRegex(r.out, r"problem: %s was written \(the first at \S+, covered by the "
                                r"checkpoint of size \d+ written at \S+\)" % late, r)
        self.assertRegex(r.out, r"problem: entry %d has an earlier time \(\S+\) than entry %d "
                                r"\(\S+\), and entry %d is dated after the checkpoint covering it "
                                r"was written" % (n + 1, n, n), r)
        self.assertNotIn("not a sign of tampering", r.out)
        self.assertNotIn("note: entry", r.out)
        self.assertIn("audit log FAILED verification: 2 problems", r.out)

    def test_grace_usage_error_names_the_range(self):
        """verify's and report's --grace refusal is true of every refused value, too large ones too."""
        want = ("isgctl: --grace must be a whole number of seconds from 0 to 3153600000 "
                "(about 100 years), not '%s'\nusage: isgctl audit %s ")
        empty = "isgctl: option '--grace' has an empty value\nusage: isgctl audit %s "
        report = ["--from", "2025-01-01", "--to", "2025-01-01", "--markdown", "-"]
        for cmd, args in (("verify", []), ("report", report)):
            for bad in ("-1", "abc", "", "1.5", "3153600001", "99999999999999999999"):
                with self.subTest(cmd=cmd, grace=bad):
                    r = self.audit(cmd, *args, "--grace", bad)
                    self.assertEqual((r.rc, r.out), (2, ""), r)
                    self.assertTrue(r.err.startswith(want % (bad, cmd) if bad else empty % cmd),
                                    r)

    def test_deleted_checkpoints_of_an_old_log(self):
        """Every checkpoint deleted and the entries rewritten: only their age shows it."""
        at_ms = 1735689600000  # 2025-01-01T00:00:00Z
        statements = [("DELETE FROM checkpoints", ())]
        for seq, _, _, entry in self.entries:
            leaf = re.sub(rb'"at":"[^"]*"', b'"at":"2025-01-01T00:00:00.000Z"', bytes(entry), 1)
            statements.append(("UPDATE audit SET entry = ?, at = ? WHERE seq = ?",
                               (leaf, at_ms, seq)))
        db = self.tamper("old-no-checkpoints", *statements)
        r = self.assertVerifyFails(db, r"problem: %d entries, from entry 1 to entry %d, are "
                                       r"covered by no signed checkpoint though written more "
                                       r"than 600 s ago \(the first at 2025-01-01T00:00:00.000Z\)"
                                   % (len(self.entries), len(self.entries)))
        self.assertNotIn("audit log OK", r.out)
        # The report's integrity section says so too.
        r = self.audit("report", "--from", "2025-01-01", "--to", "2025-01-01",
                       "--markdown", "-", store=db)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("**FAILED**", r.out)
        self.assertIn("covered by no signed checkpoint", r.out)
        # A grace longer than their age: a note again.
        r = self.audit("verify", "--grace", str(100 * 365 * 86400), store=db)
        self.assertEqual(r.rc, 0, r)

    def test_output_that_cannot_be_written_fails(self):
        """A full disk under standard output is an error, not a silent success, said once:
        by the command when it reports its own output failure, else by isgctl."""
        seq, _ = self.a_covered_entry()
        for args in (["prove", seq], ["verify"], ["pubkey"], ["checkpoint"], ["list"],
                     ["list", "--format", "csv"], ["list", "--format", "jsonl"], ["export"],
                     ["report", "--from", "2001-01-01", "--to", "2001-01-02", "--csv", "-"]):
            r = isgtest.ctl("audit", *(args + ["--config", self.gw.config_path]),
                            stdout_path="/dev/full")
            self.assertEqual(r.rc, 1, r)
            self.assertEqual(r.err.count("cannot write"), 1, r)
            self.assertIn("no space left on device", r.err, r)

    def test_output_closed_by_its_reader(self):
        """A reader that stopped ("| head", a pager quit) is said as such, not as a failed
        write: the output is incomplete, so the exit status is still 1."""
        seq, _ = self.a_covered_entry()
        for args, said in ((["verify"], "isgctl: output closed before the end (a pipe's "
                                        "reader stopped)\n"),
                           (["prove", seq], "isgctl: cannot write the proof: output closed "
                                            "before the end (a pipe's reader stopped)\n"),
                           (["checkpoint"], "isgctl: cannot write the checkpoint: output "
                                            "closed before the end (a pipe's reader stopped)\n"),
                           (["export"], "isgctl: cannot write the export: output closed "
                                        "before the end (a pipe's reader stopped)\n")):
            with self.subTest(args[0]):
                read_end, write_end = os.pipe()
                os.close(read_end)  # the reader is gone before isgctl writes
                try:
                    p = subprocess.run([isgtest.ISGCTL, "audit"] + [str(a) for a in args] +
                                       ["--config", self.gw.config_path], stdout=write_end,
                                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                       text=True, timeout=60)
                finally:
                    os.close(write_end)
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertEqual(p.stderr, said)
        # list and subject: the same words, then the log's integrity line as ever.
        for args, feed in ((["list", "--format", "jsonl"], None),
                           (["subject", "--format", "jsonl", "--nhs-number", "-"], NHS_A)):
            with self.subTest(args[0]):
                read_end, write_end = os.pipe()
                os.close(read_end)
                try:
                    p = subprocess.run([isgtest.ISGCTL, "audit"] + args +
                                       ["--config", self.gw.config_path], stdout=write_end,
                                       stderr=subprocess.PIPE, input=feed, text=True,
                                       timeout=60)
                finally:
                    os.close(write_end)
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertIn("isgctl: cannot write the list: output closed before the end "
                              "(a pipe's reader stopped)\n", p.stderr)
                self.assertNotIn("broken pipe", p.stderr)

    def test_forged_checkpoint(self):
        size, note = self.checkpoints[1]
        text, sig = note.split("\n\n")
        prefix, b64 = sig.rstrip("\n").rsplit(" ", 1)
        raw = bytearray(base64.b64decode(b64))
        raw[10] ^= 0x40
        forged_sig = "%s\n\n%s %s\n" % (text, prefix, base64.b64encode(bytes(raw)).decode())
        db = self.tamper("forged-sig", ("UPDATE checkpoints SET note = ? WHERE size = ?",
                                        (forged_sig, size)))
        self.assertVerifyFails(db, r"problem: checkpoint of size %d: its signature does not verify: "
                                   r"the checkpoint was forged or altered" % size)
        origin, _, _ = note_body(note)
        other_root = base64.b64encode(hashlib.sha256(b"forged").digest()).decode()
        forged_root = "%s\n%d\n%s\n\n%s" % (origin, size, other_root, sig)
        db = self.tamper("forged-root", ("UPDATE checkpoints SET note = ? WHERE size = ?",
                                         (forged_root, size)))
        self.assertVerifyFails(db, r"problem: checkpoint of size %d: its signature does not verify"
                               % size)
        # A saved checkpoint that was tampered with is no evidence either.
        path = os.path.join(self.tmp, "forged.cp")
        with open(path, "w", encoding="utf-8") as f:
            f.write(forged_sig)
        self.assertVerifyFails(self.copy_store("plain"),
                               r"saved checkpoint '[^']*forged.cp': its signature does not verify",
                               extra=["--against", path])
        # The wrong verifier key: a valid one, of another gateway's signing key.
        other = os.path.join(self.tmp, "other-keys")
        self.assertEqual(isgtest.ctl("keys", "init", other).rc, 0)
        key = isgtest.ctl("audit", "pubkey", "--keys", other, "--origin", ORIGIN).out.strip()
        self.assertNotEqual(key, self.audit("pubkey").out.strip())
        r = self.audit("verify", "--pubkey", key)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("it carries no signature by this verifier key", r.out)

    # -- list and subject

    def list_jsonl(self, *args):
        r = self.audit("list", "--format", "jsonl", *args)
        self.assertEqual(r.rc, 0, r)
        return [json.loads(line) for line in r.out.splitlines()]

    def test_list(self):
        every = self.list_jsonl()
        self.assertEqual([e["index"] for e in every], [row[0] for row in self.entries])
        r = self.audit("list", "--format", "jsonl")  # the exact entries, one per line
        self.assertEqual(r.out.encode().splitlines(), [bytes(row[3]) for row in self.entries])
        refused = self.list_jsonl("--kind", "message.refused")
        self.assertEqual(len(refused), len(self.refusals))
        self.assertEqual(self.list_jsonl("--outcome", "refused", "--kind", "message"), refused)
        council = self.list_jsonl("--partner", "city-council")
        self.assertTrue(council)
        for e in council:
            body = e["entry"]
            self.assertIn("city-council", (body.get("sender"), body.get("recipient"),
                                           body.get("partner")))
        self.assertIn(refused[-1], council)
        family = self.list_jsonl("--kind", "message", "--agreement", AGREEMENT_ID)
        self.assertEqual({e["entry"]["event"] for e in family},
                         {"message.accepted", "message.refused", "message.delivered",
                          "message.acknowledged"})
        accepted = self.list_jsonl("--outcome", "accepted", "--kind", "message")
        self.assertEqual([e["index"] for e in accepted], [r["audit_index"] for r in self.receipts])
        self.assertEqual(self.list_jsonl("--from", "2099-01-01"), [])
        self.assertEqual(len(self.list_jsonl("--from", "2000-01-01", "--to", "2099-12-31")),
                         len(self.entries))
        r = self.audit("list", "--kind", "message.accepted", "--format", "csv")
        self.assertEqual(r.rc, 0, r)
        lines = r.out.splitlines()
        self.assertTrue(lines[0].startswith("seq,at,kind,sender,recipient,"), lines[0])
        self.assertEqual(len(lines), 1 + len(self.receipts))
        # the lawful basis, which a subject access response pack needs, joined in one cell
        rows = list(csv.DictReader(io.StringIO(r.out)))
        self.assertEqual([x["lawful_basis"] for x in rows],
                         ["; ".join(e["entry"]["lawful_basis"]) for e in accepted])
        self.assertTrue(all(x["lawful_basis"] for x in rows), rows)
        # who connected (or was refused): the address, as in --format jsonl
        conns = self.list_jsonl("--kind", "connection")
        self.assertTrue(conns)
        rows = list(csv.DictReader(io.StringIO(self.audit(
            "list", "--kind", "connection", "--format", "csv").out)))
        self.assertEqual([(x["peer"], x["subject"]) for x in rows],
                         [(e["entry"]["peer"], e["entry"].get("subject", "")) for e in conns])
        r = self.audit("list", "--partner", "met-police")
        self.assertEqual(r.rc, 0, r)
        self.assertRegex(r.out.splitlines()[0], r"SEQ +TIME +KIND +PARTNERS")
        self.assertIn("met-police -> nhs-trust", r.out)
        self.assertIn(DATASET, r.out)
        self.assertEqual(self.audit("list", "--outcome", "maybe").rc, 2)

    def test_list_refuses_a_period_that_ends_before_it_starts(self):
        """As report does, with the same words and exit status: not an empty list."""
        report = self.audit("report", "--from", "2026-12-05", "--to", "2026-12-04",
                            "--markdown", "-")
        self.assertEqual(report.rc, 2, report)
        said = "isgctl: --to '2026-12-04' is before --from '2026-12-05'\n"
        self.assertTrue(report.err.startswith(said), report)
        for args in (["list"], ["subject", "--nhs-number", NHS_A]):
            r = self.audit(*args, "--from", "2026-12-05", "--to", "2026-12-04")
            self.assertEqual((r.rc, r.out), (2, ""), r)
            self.assertTrue(r.err.startswith(said), r)
            self.assertIn("usage: isgctl audit " + args[0], r.err)
            self.assertNotIn("no entry matches", r.err)
            self.assertNotIn(NHS_A, r.err)
        r = self.audit("list", "--from", "2026-12-04T10:00:01Z", "--to", "2026-12-04T10:00:00Z")
        self.assertEqual(r.rc, 2, r)
        self.assertIn("--to '2026-12-04T10:00:00Z' is before --from '2026-12-04T10:00:01Z'", r.err)
        # One instant, or a --to second that covers a --from within it, is a period.
        for to in ("2026-12-04T10:00:00.500Z", "2026-12-04T10:00:00Z"):
            r = self.audit("list", "--from", "2026-12-04T10:00:00.500Z", "--to", to)
            self.assertEqual(r.rc, 0, r)

    def test_list_refuses_an_unknown_kind(self):
        """--kind takes the events docs/audit.md lists, or their families."""
        for kind in ("bogus", "message.bogus", "mess", "message.", ".accepted",
                     "message.accepted.x", "MESSAGE", ""):
            r = self.audit("list", "--kind", kind)
            self.assertEqual((r.rc, r.out), (2, ""), (kind, r))
            if not kind:  # as for every option (docs/isgctl.md, "Options")
                self.assertIn("option '--kind' has an empty value", r.err)
                continue
            self.assertIn("--kind must be a family (connection, message, policy, keys) or one "
                          "of its events", r.err)
            self.assertIn("not '%s'" % kind, r.err)
        kinds = {row[2] for row in self.entries}
        for kind in sorted(kinds | {k.split(".")[0] for k in kinds} | {"message.expired"}):
            r = self.audit("list", "--kind", kind)
            self.assertEqual(r.rc, 0, (kind, r))

    def redate(self, name, seq, at, ms=None):
        """A copy whose entry seq says it was written at `at` (YYYY-MM-DDTHH:MM:SS.mmmZ),
        in its signed bytes and its at column (ms, by default the same time) alike,
        so it no longer verifies."""
        leaf = json.loads(bytes(self.entry(seq)[3]))
        leaf["at"] = at
        if ms is None:
            ms = int(datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=datetime.timezone.utc).timestamp() * 1000)
        return self.tamper(name, ("UPDATE audit SET at = ?, entry = ? WHERE seq = ?",
                                  (ms, json.dumps(leaf, separators=(",", ":")).encode(), seq)))

    def test_list_times_to_the_second_cover_the_second(self):
        """--to given to the second includes that whole second, as a date its day."""
        db = self.redate("half-second", 1, "2025-11-23T12:13:20.500Z")

        def listed(*args):
            r = self.audit("list", "--format", "jsonl", *args, store=db)
            self.assertTampered(r)  # the redated entry's signed bytes changed
            return [json.loads(line)["index"] for line in r.out.splitlines()]

        self.assertEqual(listed("--to", "2025-11-23T12:13:20Z"), [1])
        self.assertEqual(listed("--from", "2025-11-23T12:13:20Z",
                                "--to", "2025-11-23T12:13:20Z"), [1])
        self.assertEqual(listed("--to", "2025-11-23T12:13:19Z"), [])
        self.assertEqual(listed("--to", "2025-11-23T12:13:20.499Z"), [])
        self.assertEqual(listed("--to", "2025-11-23T12:13:20.500Z"), [1])
        self.assertEqual(listed("--from", "2025-11-23T12:13:20.501Z",
                                "--to", "2025-11-23"), [])
        r = self.audit("subject", "--nhs-number", NHS_B, "--to", "2025-11-23T12:13:20Z",
                       store=db)
        self.assertTampered(r)

    def test_list_with_unreadable_entries_fails(self):
        """A list that left entries out must not look complete to a script."""
        bad = self.receipts[1]["audit_index"]
        db = self.tamper("unreadable-list", ("UPDATE audit SET entry = ? WHERE seq = ?",
                                             (b"not an entry", bad)))
        for fmt in ("jsonl", "table"):
            r = self.audit("list", "--format", fmt, store=db)
            self.assertEqual(r.rc, 1, r)
            self.assertIn("entry %d is not a valid audit entry and is left out" % bad, r.err)
            self.assertNotIn("not an entry", r.out + r.err)
        # What it could read is still printed, in full.
        found = [json.loads(line)["index"] for line in
                 self.audit("list", "--format", "jsonl", store=db).out.splitlines()]
        self.assertEqual(found, [row[0] for row in self.entries if row[0] != bad])
        # Filtered out or not, an unreadable entry makes the list incomplete.
        r = self.audit("list", "--kind", "connection", store=db)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("the list is INCOMPLETE: 1 entry (%d) could not be read" % bad, r.err)
        # Its time cannot be read either: whatever its row says, it may be in any period.
        db = self.tamper("unreadable-redated", ("UPDATE audit SET at = 0 WHERE seq = ?", (bad,)),
                         ("UPDATE audit SET entry = ? WHERE seq = ?", (b"not an entry", bad)))
        r = self.audit("list", "--from", "2099-01-01", store=db)
        self.assertEqual((r.rc, r.out), (1, ""), r)
        self.assertIn("the list is INCOMPLETE: 1 entry (%d) could not be read" % bad, r.err)
        self.assertNotIn("no entry matches", r.err)
        # So is an entry whose signed time is no time at all.
        db = self.redate("no-such-day", bad, "2026-02-31T10:00:00.000Z",
                         ms=1772359200000)  # its column says 2026-03-01T10:00:00Z
        r = self.audit("list", "--from", "2026-01-01", "--to", "2026-03-31", store=db)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("the list is INCOMPLETE: 1 entry (%d) could not be read" % bad, r.err)

    def test_list_jsonl_never_splits_an_entry_over_two_lines(self):
        """A leaf edited to hold a line break between its JSON tokens still parses as JSON,
        but isgd never wrote it: it is a damaged entry, left out and named, and verify
        reports it, so every line of --format jsonl is one whole entry."""
        bad = self.receipts[1]["audit_index"]
        leaf = bytes(self.entry(bad)[3]).replace(b',"entry":', b',\n"entry":', 1)
        self.assertIn(b"\n", leaf)
        json.loads(leaf)
        db = self.tamper("line-break", ("UPDATE audit SET entry = ? WHERE seq = ?", (leaf, bad)))
        r = self.audit("list", "--format", "jsonl", store=db)
        self.assertEqual(r.rc, 1, r)
        lines = r.out.splitlines()
        self.assertEqual([json.loads(line)["index"] for line in lines],
                         [row[0] for row in self.entries if row[0] != bad])
        self.assertIn("entry %d is not a valid audit entry and is left out" % bad, r.err)
        self.assertIn("the list is INCOMPLETE: 1 entry (%d) could not be read" % bad, r.err)
        self.assertVerifyFails(db, r"problem: entry %d is damaged: not in the format isgd writes "
                                   r"\(it holds a line break\)" % bad)

    def test_an_entry_with_no_event_isgd_writes_is_damaged_and_never_shown(self):
        """An entry edited to an event isgd never writes (here shaped like a kind, holding a
        name and an NHS number) is not an entry isgd wrote: verify reports it as damaged
        without quoting it, and list, subject and report leave it out as INCOMPLETE rather
        than print or count its event."""
        bad = self.receipts[1]["audit_index"]
        leaf = json.loads(bytes(self.entry(bad)[3]))
        leaf["entry"] = {"event": "okafor.9434765919"}
        leaf = json.dumps(leaf, separators=(",", ":")).encode()
        db = self.tamper("unknown-event", ("UPDATE audit SET entry = ?, kind = ? WHERE seq = ?",
                                           (leaf, "okafor.9434765919", bad)))
        r = self.assertVerifyFails(db, r"problem: entry %d is damaged: not in the format isgd "
                                       r"writes \(its event is not one isgd writes\)" % bad)
        for args in (("list",), ("list", "--format", "csv"), ("list", "--format", "jsonl")):
            r2 = self.audit(*args, store=db)
            self.assertEqual(r2.rc, 1, r2)
            self.assertIn("the list is INCOMPLETE: 1 entry (%d) could not be read" % bad, r2.err)
            for out in (r.out, r2.out, r2.err):
                self.assertNotIn("9434765919", out)
                self.assertNotIn("okafor", out)

    def test_list_judges_entries_by_their_signed_bytes(self):
        """The table's at, kind and seq columns are not signed: editing them hides no entry
        from its period or kind, and changes nothing that list prints."""
        exchange = self.exchange_of(self.receipts[0])
        accepted = exchange[0]
        leaf = json.loads(bytes(self.entry(accepted)[3]))
        long_ago = 946684800000  # 2000-01-01T00:00:00Z
        db = self.tamper("relabelled-redated",
                         ("UPDATE audit SET at = ? WHERE seq IN (%s)" % ",".join("?" * len(exchange)),
                          [long_ago] + exchange),
                         ("UPDATE audit SET kind = 'connection.accepted' WHERE seq = ?", (accepted,)))

        def listed(*args, fmt="jsonl"):
            r = self.audit("list", "--format", fmt, *args, store=db)
            self.assertTampered(r)
            return r

        def indexes(r):
            return [json.loads(line)["index"] for line in r.out.splitlines()]

        # In its signed period, to the millisecond, whatever its at column says...
        self.assertEqual(indexes(listed("--from", leaf["at"], "--to", leaf["at"],
                                        "--kind", "message.accepted")), [accepted])
        every = indexes(listed("--from", leaf["at"][:10], "--to", leaf["at"][:10]))
        for seq in exchange:
            self.assertIn(seq, every)
        # ...and not in the period its at column claims.
        r = listed("--to", "2000-12-31")
        self.assertEqual(r.out, "", r)
        self.assertIn("no entry matches", r.err)
        # Its kind is the signed one, for --kind, --outcome and in every format.
        self.assertIn(accepted, indexes(listed("--kind", "message.accepted")))
        self.assertIn(accepted, indexes(listed("--outcome", "accepted", "--kind", "message")))
        self.assertNotIn(accepted, indexes(listed("--kind", "connection")))
        rows = list(csv.DictReader(io.StringIO(listed("--partner", "met-police",
                                                      fmt="csv").out)))
        row = next(x for x in rows if x["seq"] == str(accepted))
        self.assertEqual((row["at"], row["kind"]), (leaf["at"], "message.accepted"))
        table = listed("--kind", "message.accepted", fmt="table").out
        self.assertRegex(table, r"(?m)^ *%d  %s  message\.accepted " % (accepted,
                                                                         re.escape(leaf["at"])))
        self.assertNotIn("2000-01-01", table)
        # A renumbered row is shown under its signed index.
        db = self.tamper("renumbered-row", ("UPDATE audit SET seq = 1000 WHERE seq = ?",
                                            (accepted,)))
        rows = list(csv.DictReader(io.StringIO(self.audit("list", "--format", "csv",
                                                          store=db).out)))
        self.assertEqual([x["seq"] for x in rows], [str(row[0]) for row in self.entries
                                                    if row[0] != accepted] + [str(accepted)])

    def test_edited_columns_are_warned_about(self):
        """A row whose unsigned columns disagree with its signed entry was edited: list,
        subject and report say so, naming the entry by index (and for the kind, the two
        kind names, no other value), and still answer in full from the signed entry."""
        exchange = self.exchange_of(self.receipts[0])
        accepted, delivered, acked = exchange
        long_ago = 946684800000  # 2000-01-01T00:00:00Z
        db = self.tamper("edited-columns",
                         ("UPDATE audit SET kind = 'connection.accepted', at = ? WHERE seq = ?",
                          (long_ago, accepted)),
                         ("UPDATE audit SET at = ? WHERE seq = ?", (long_ago, delivered)))
        first = ("isgctl: entry %d: its kind column says 'connection.accepted' but the signed "
                 "entry is 'message.accepted': the table was edited, and the signed entry is "
                 "what counts (run 'isgctl audit verify')\n" % accepted)
        in_all = ("isgctl: 2 entries in all (%d, %d) disagree with their rows' at, kind or seq "
                  "column; for each, the signed entry is what counts\n" % (accepted, delivered))
        for args in (["list"], ["list", "--kind", "keys"], ["list", "--from", "2099-01-01"],
                     ["subject", "--nhs-number", NHS_A]):
            r = self.audit(*args, "--format", "jsonl", store=db)
            self.assertTampered(r)  # nothing was left out, but the log does not verify
            self.assertIn(first, r.err)
            self.assertIn(in_all, r.err)
            self.assertNotIn("2000-01-01", r.err)
            self.assertNotIn(str(long_ago), r.err)
        r = self.audit("subject", "--nhs-number", NHS_A, "--format", "jsonl", store=db)
        self.assertIn("2 exchanges named this identifier", r.err)
        self.assertEqual([json.loads(line)["index"] for line in r.out.splitlines()][:3], exchange)
        # Only the time, or only the place, edited: the column is named, not its value.
        db = self.tamper("edited-at", ("UPDATE audit SET at = ? WHERE seq = ?", (long_ago, acked)))
        r = self.audit("list", store=db)
        self.assertTampered(r)
        self.assertIn("isgctl: entry %d: its at column disagrees with the signed entry: the "
                      "table was edited" % acked, r.err)
        self.assertNotIn("in all", r.err)
        db = self.tamper("edited-seq", ("UPDATE audit SET seq = 1000 WHERE seq = ?", (acked,)))
        r = self.audit("list", store=db)
        self.assertTampered(r)
        self.assertIn("isgctl: entry %d: its seq column disagrees with the signed entry" % acked,
                      r.err)
        self.assertNotIn("1000", r.err)
        # Both: both named. A kind column holding what no kind looks like: named, not shown.
        db = self.tamper("edited-two", ("UPDATE audit SET seq = 1000, at = ? WHERE seq = ?",
                                        (long_ago, acked)))
        r = self.audit("list", store=db)
        self.assertIn("isgctl: entry %d: its seq, at columns disagree with the signed entry"
                      % acked, r.err)
        # Nor one shaped like a kind but no event isgd writes: it may be data too.
        for name, kind in (("edited-data", "Mrs " + NAME_A),
                           ("edited-kind-shaped", "okafor.%s.ne3.4rt" % NHS_A)):
            db = self.tamper(name, ("UPDATE audit SET kind = ? WHERE seq = ?", (kind, acked)))
            for args in (["list"], ["subject", "--nhs-number", "-"]):
                r = self.audit(*args, store=db, input=NHS_A + "\n")
                self.assertTampered(r)
                self.assertIn("isgctl: entry %d: its kind column disagrees with the signed "
                              "entry" % acked, r.err)
                self.assertNotIn(kind, r.err)
                self.assertNotIn(NHS_A, r.err)
            r = self.audit("verify", store=db)
            self.assertEqual(r.rc, 1, r)
            self.assertIn("problem: entry %d: its kind column disagrees with the entry\n"
                          % acked, r.out)
            self.assertNotIn(kind, r.out + r.err)
        # A log as isgd wrote it draws no such warning.
        for args in (["list"], ["subject", "--nhs-number", NHS_A]):
            r = self.audit(*args)
            self.assertEqual(r.rc, 0, r)
            self.assertNotIn("column", r.err)

    def test_subject_with_unreadable_entries_fails(self):
        """An answer that left entries out must not look complete."""
        late = self.receipts[2]["audit_index"]
        db = self.tamper("unreadable", ("UPDATE audit SET entry = ? WHERE seq = ?",
                                        (b"not an entry", late)))
        r = self.subject("--nhs-number", NHS_A, store=db)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("the answer is INCOMPLETE: 1 entry (%d) could not be read" % late, r.err)
        found = [json.loads(line)["index"] for line in r.out.splitlines()]
        self.assertIn(self.receipts[0]["audit_index"], found)  # what it could read, printed
        self.assertNotIn("not an entry", r.out + r.err)

    def exchange_of(self, receipt):
        """The signed indexes of a message's accepted, delivered and acknowledged entries."""
        index = receipt["audit_index"]
        return [index] + [row[0] for row in self.entries
                          if json.loads(bytes(row[3]))["entry"].get("accepted_index") == index]

    def test_subject_judges_entries_by_their_signed_bytes(self):
        """The table's kind column is not signed: relabelling a row hides nothing."""
        exchange = self.exchange_of(self.receipts[0])
        self.assertEqual(len(exchange), 3, exchange)  # accepted, delivered, acknowledged
        accepted, delivered, _ = exchange
        db = self.tamper("relabelled",
                         ("UPDATE audit SET kind = 'connection.accepted' WHERE seq = ?",
                          (accepted,)),
                         ("UPDATE audit SET kind = 'policy.loaded' WHERE seq = ?", (delivered,)))
        r = self.subject("--nhs-number", NHS_A, store=db)
        self.assertTampered(r)
        found = [json.loads(line)["index"] for line in r.out.splitlines()]
        for seq in exchange:
            self.assertIn(seq, found, r)
        self.assertIn("2 exchanges named this identifier", r.err)
        # Junk under a kind that subject has no use for is still an entry it could not read.
        other = next(row[0] for row in self.entries if row[2] == "connection.accepted")
        db = self.tamper("junk-connection", ("UPDATE audit SET entry = ? WHERE seq = ?",
                                             (b"not an entry", other)))
        r = self.subject("--nhs-number", NHS_A, store=db)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("the answer is INCOMPLETE: 1 entry (%d) could not be read" % other, r.err)

    def test_subject_judges_times_by_the_signed_entry(self):
        """--from and --to hold against the signed time: redating a row hides nothing."""
        exchange = self.exchange_of(self.receipts[0])
        long_ago = 946684800000  # 2000-01-01T00:00:00Z
        db = self.tamper("redated", ("UPDATE audit SET at = ? WHERE seq IN (%s)"
                                     % ",".join("?" * len(exchange)), [long_ago] + exchange))
        r = self.subject("--nhs-number", NHS_A, "--from", "2001-01-01", store=db)
        self.assertTampered(r)
        found = [json.loads(line)["index"] for line in r.out.splitlines()]
        for seq in exchange:
            self.assertIn(seq, found, r)
        r = self.subject("--nhs-number", NHS_A, "--to", "2000-12-31", store=db)
        self.assertEqual(r.out, "", r)
        self.assertTampered(r)
        # An entry that cannot be read cannot be placed in time either.
        db = self.tamper("redated-junk", ("UPDATE audit SET at = ?, entry = ? WHERE seq = ?",
                                          (long_ago, b"not an entry", exchange[0])))
        r = self.subject("--nhs-number", NHS_A, "--from", "2001-01-01", store=db)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("the answer is INCOMPLETE: 1 entry (%d)" % exchange[0], r.err)
        # Nor can one whose signed time is no day of the calendar.
        db = self.redate("redated-no-such-day", exchange[0], "2026-02-31T10:00:00.000Z",
                         ms=1772359200000)
        r = self.subject("--nhs-number", NHS_A, store=db)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("the answer is INCOMPLETE: 1 entry (%d)" % exchange[0], r.err)

    def test_subject_follows_signed_indexes(self):
        """A delivery names its message by the signed index, whatever the seq column says."""
        exchange = self.exchange_of(self.receipts[0])
        # An entry before the message deleted and the rest renumbered down.
        gone = exchange[0] - 1
        db = self.tamper("renumbered", ("DELETE FROM audit WHERE seq = ?", (gone,)),
                         ("UPDATE audit SET seq = seq - 1 WHERE seq > ?", (gone,)))
        r = self.subject("--nhs-number", NHS_A, store=db)
        self.assertTampered(r)
        found = [json.loads(line)["index"] for line in r.out.splitlines()]
        for seq in exchange:
            self.assertIn(seq, found, r)

    def test_subject_whatever_the_row_order(self):
        """Rows read after the deliveries that name them hide nothing: a message's
        message.accepted entry moved past its delivery or acknowledgement (seq values
        swapped, or its row renumbered to the end) gives the same answer, in the same
        order, with the same count."""
        accepted, delivered, acked = self.exchange_of(self.receipts[0])

        def swapped(a, b):
            return [("UPDATE audit SET seq = -1 WHERE seq = ?", (a,)),
                    ("UPDATE audit SET seq = ? WHERE seq = ?", (a, b)),
                    ("UPDATE audit SET seq = ? WHERE seq = ?", (b, -1))]

        stores = {"swapped-delivery": swapped(accepted, delivered),
                  "swapped-ack": swapped(accepted, acked),
                  "moved-to-the-end": [("UPDATE audit SET seq = 1000 WHERE seq = ?",
                                        (accepted,))]}
        want = {fmt: self.audit("subject", "--nhs-number", NHS_A, "--format", fmt)
                for fmt in ("jsonl", "table")}
        listed = [json.loads(line)["index"] for line in want["jsonl"].out.splitlines()]
        self.assertEqual(listed, [accepted, delivered, acked, self.receipts[2]["audit_index"]])
        for name, statements in stores.items():
            db = self.tamper(name, *statements)
            for fmt in ("jsonl", "table"):
                r = self.audit("subject", "--nhs-number", "-", "--format", fmt, store=db,
                               input=NHS_A + "\n")
                self.assertTampered(r)
                self.assertEqual(r.out, want[fmt].out, "%s: %s" % (name, r))
                self.assertIn("2 exchanges named this identifier (4 entries listed)", r.err)
                self.assertIn("column", r.err)  # the edit is still named, once
                self.assertEqual(len(r.err.splitlines()), len(set(r.err.splitlines())), r)
                self.assertNotIn(NHS_A, r.out + r.err)
            # A period: the delivery and acknowledgement alone, still linked.
            at = json.loads(bytes(self.entry(delivered)[3]))["at"]
            r = self.subject("--nhs-number", NHS_A, "--from", at, store=db)
            self.assertTampered(r)
            self.assertEqual([json.loads(line)["index"] for line in r.out.splitlines()][:2],
                             [delivered, acked], "%s: %s" % (name, r))

    def test_subject_lists_deliveries_in_the_period_of_messages_accepted_before_it(self):
        """A disclosure since X is found though the message was accepted before X: the
        person is matched over the whole log, and --from and --to say what is listed."""
        accepted, delivered, acked = self.exchange_of(self.receipts[0])
        # The message accepted on 2025-11-23 (its signed time), delivered and
        # acknowledged when isgd wrote those entries.
        db = self.redate("accepted-before", accepted, "2025-11-23T12:00:00.000Z")
        delivered_at = json.loads(bytes(self.entry(delivered)[3]))["at"]
        later = self.receipts[2]["audit_index"]  # RECORD_A again, never delivered

        def found(*args):
            r = self.subject("--nhs-number", "-", *args, input=NHS_A + "\n", store=db)
            self.assertTampered(r)  # the redated entry's signed bytes changed
            return [json.loads(line)["index"] for line in r.out.splitlines()], r.err

        listed, err = found("--from", "2025-11-24")
        self.assertEqual(listed, [delivered, acked, later])
        # The exchange with its delivery in the period counts, as docs/audit.md says.
        self.assertIn("2 exchanges named this identifier (3 entries listed)", err)
        listed, err = found("--from", delivered_at)
        self.assertEqual(listed, [delivered, acked, later])
        # Only NHS_C's message: its delivery in the period, its acceptance before it.
        r = self.subject("--nhs-number", NHS_C, "--from", delivered_at, store=db)
        self.assertTampered(r)
        self.assertEqual([json.loads(line)["entry"]["event"] for line in r.out.splitlines()],
                         ["message.delivered", "message.acknowledged"])
        self.assertIn("1 exchange named this identifier (2 entries listed)", r.err)
        # --to still ends what is listed: the acceptance alone, before the deliveries.
        listed, err = found("--to", "2025-11-23")
        self.assertEqual(listed, [accepted])
        self.assertIn("1 exchange named this identifier (1 entry listed)", err)
        listed, err = found("--from", "2025-11-24", "--to", "2025-12-31")
        self.assertEqual((listed, err.count("0 exchanges named")), ([], 1))

    def subject(self, *args, **kw):
        r = self.audit("subject", "--format", "jsonl", *args, **kw)
        for ident in IDENTIFIERS:
            self.assertNotIn(ident, r.out + r.err)
        return r

    def test_subject_reads_one_line_of_standard_input(self):
        """'-' takes the first line of standard input, with or without its line end (LF
        or CRLF), and nothing after it; an empty input or a line too long is refused."""
        want = self.subject("--nhs-number", NHS_A)
        self.assertEqual(want.rc, 0, want)
        for feed in (NHS_A, NHS_A + "\n", NHS_A + "\r\n", NHS_A + "\nsomeone else\n"):
            with self.subTest(feed=len(feed)):
                r = self.subject("--nhs-number", "-", input=feed)
                self.assertEqual((r.rc, r.out), (0, want.out), r)
        r = self.subject("--nhs-number", "-", input="")
        self.assertEqual(r.rc, 1, r)
        self.assertIn("isgctl: --nhs-number -: nothing on standard input", r.err)
        r = self.subject("--nhs-number", "-", input="9" * 1100)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("isgctl: --nhs-number -: the line on standard input is too long", r.err)

    def test_subject(self):
        r = self.subject("--nhs-number", "943 476 5919")
        self.assertEqual(r.rc, 0, r)
        found = [json.loads(line) for line in r.out.splitlines()]
        accepted = [e["index"] for e in found if e["entry"]["event"] == "message.accepted"]
        # RECORD_A went in messages 1 and 3, not in 2.
        self.assertEqual(accepted, [self.receipts[0]["audit_index"], self.receipts[2]["audit_index"]])
        others = {e["entry"]["event"] for e in found} - {"message.accepted"}
        self.assertEqual(others, {"message.delivered", "message.acknowledged"})
        for e in found:
            if e["entry"]["event"] != "message.accepted":
                self.assertEqual(e["entry"]["accepted_index"], self.receipts[0]["audit_index"])
        self.assertIn("isgctl: 2 exchanges named this identifier (4 entries listed)\n", r.err)
        # Message 3 was never fetched: still waiting at the gateway, and said so.
        self.assertIn("isgctl: 1 of them not yet delivered: no message.delivered entry in the "
                      "log, so the recipient has not collected it\n", r.err)
        # The pseudonym is the documented construction under the audit domain.
        key = isgtest.domain_keys(self.gw.keys_dir, "audit")[-1]
        p = isgtest.pseudonym(key.key, key.version, T_NHS, NHS_A)
        self.assertIn(p, found[0]["entry"]["subjects"])
        # Message 2 only (delivered and acknowledged too); read from standard input.
        r = self.subject("--nhs-number", "-", input=NHS_C + "\n")
        self.assertEqual(r.rc, 0, r)
        found = [json.loads(line)["entry"] for line in r.out.splitlines()]
        self.assertEqual([e["event"] for e in found],
                         ["message.accepted", "message.delivered", "message.acknowledged"])
        self.assertEqual(found[0]["message_id"], "audit-2")
        self.assertEqual({e.get("accepted_index") for e in found[1:]},
                         {self.receipts[1]["audit_index"]})
        self.assertNotIn("not yet delivered", r.err)
        r = self.subject("--name", NAME_A.upper())
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(len(r.out.splitlines()), 4)  # two sends, one delivery, one ack
        r = self.subject("--postcode", "SW1A 1AA")
        self.assertEqual((r.rc, r.out), (0, ""), r)
        self.assertIn("0 exchanges", r.err)

    def integrity_ok(self):
        """The line list and subject end with on the log as isgd wrote it: verify's."""
        verify = self.audit("verify")
        self.assertEqual(verify.rc, 0, verify)
        size, root = re.search(r"latest checkpoint size (\d+), root (\S+)\n", verify.out).groups()
        return ("isgctl: audit log OK against %d signed checkpoints: %d entries, latest "
                "checkpoint size %s, root %s\n" % (len(self.checkpoints), len(self.entries),
                                                   size, root))

    def test_subject_checks_the_log_it_answers_from(self):
        """An entry whose signed bytes were edited reads as a valid entry about someone
        else: one character taken out of the person's pseudonym hid an exchange, and
        subject said nothing. Now it runs verify's checks and says FAILED, exit 1."""
        accepted = self.receipts[0]["audit_index"]
        key = isgtest.domain_keys(self.gw.keys_dir, "audit")[-1]
        p = isgtest.pseudonym(key.key, key.version, T_NHS, NHS_A)
        leaf = bytes(self.entry(accepted)[3])
        self.assertIn(p.encode(), leaf)
        db = self.tamper("pseudonym-shortened", ("UPDATE audit SET entry = ? WHERE seq = ?",
                                                 (leaf.replace(p.encode(), p[:-1].encode()),
                                                  accepted)))
        r = self.subject("--nhs-number", NHS_A, store=db)
        self.assertIn("isgctl: 1 exchange named this identifier", r.err)  # one is hidden...
        self.assertTampered(r)  # ...but the answer is not passed as whole
        self.assertIn(" the details: this answer may be incomplete or wrong\n", r.err)
        for fmt in ("table", "csv"):
            self.assertTampered(self.audit("subject", "--nhs-number", NHS_A, "--format", fmt,
                                           store=db))
        self.assertTampered(self.audit("list", "--kind", "message.accepted", store=db))
        # The log as isgd wrote it: OK, against how many signed checkpoints, size and root.
        ok = self.integrity_ok()
        for args in (["subject", "--nhs-number", NHS_A], ["list"]):
            r = self.audit(*args)
            self.assertEqual(r.rc, 0, r)
            self.assertTrue(r.err.endswith(ok), r)
            r = self.audit(*args, store=self.copy_store("copy-" + args[0]))
            self.assertEqual(r.rc, 0, r)
            self.assertTrue(r.err.endswith(ok), r)
        # A checkpoint saved elsewhere catches what the shorter log alone cannot.
        last = len(self.entries)
        db = self.tamper("truncated-answer", ("DELETE FROM audit WHERE seq = ?", (last,)),
                         ("DELETE FROM checkpoints WHERE size = ?", (last,)))
        for args in (["subject", "--nhs-number", NHS_A], ["list"]):
            r = self.audit(*args, store=db)
            self.assertEqual(r.rc, 0, r)
            self.assertIn("isgctl: audit log OK against", r.err)
            self.assertTampered(self.audit(*args, "--against", self.saved_final, store=db))
        # A file that is no checkpoint says nothing of the log, as verify says it; one that
        # cannot be opened is said before the answer, not after it.
        junk = os.path.join(self.tmp, "not-a-checkpoint.txt")
        with open(junk, "w", encoding="utf-8") as f:
            f.write("minutes of the IG board\n")
        missing = os.path.join(self.tmp, "no-such-checkpoint")
        for args in (["subject", "--nhs-number", NHS_A], ["list"]):
            r = self.audit(*args, "--against", junk)
            self.assertEqual(r.rc, 1, r)
            self.assertIn("isgctl: audit log checks passed, but 1 saved checkpoint could not be "
                          "read, so the log was NOT checked against it", r.err)
            self.assertNotIn("FAILED", r.err)
            r = self.audit(*args, "--against", missing)
            self.assertEqual((r.rc, r.out), (1, ""), r)
            self.assertEqual(r.err, "isgctl: --against '%s': no such file or directory\n"
                             % missing)

    def test_list_and_subject_without_a_verifier_key(self):
        """No key to check the log with: the answer is printed, said to be unchecked, with
        how to give the recorded key, and it is not a success."""
        pubkey = self.audit("pubkey")
        self.assertEqual(pubkey.rc, 0, pubkey)
        key_file = os.path.join(self.tmp, "audit.pub")
        with open(key_file, "w", encoding="utf-8") as f:
            f.write(pubkey.out)
        r = isgtest.ctl("audit", "list", "--store", self.gw.store_path)
        self.assertEqual(r.rc, 1, r)
        self.assertEqual(len(r.out.splitlines()), len(self.entries) + 1)  # listed all the same
        self.assertIn("isgctl: audit log NOT VERIFIED: isgctl had no verifier key it could use "
                      "(no keys directory: give --keys KEYS_DIR or --config ISGD_YAML, or the "
                      "recorded verifier key with --pubkey KEY or --pubkey-file FILE); this "
                      "list was not checked against the signed checkpoints\n", r.err)
        self.assertEqual(r.err.count("no keys directory"), 1, r.err)  # said once, at the end
        ok = self.integrity_ok()
        for args in (["list"], ["subject", "--nhs-number", NHS_A, "--keys", self.gw.keys_dir]):
            for given in (["--pubkey-file", key_file], ["--pubkey", pubkey.out.strip()]):
                r = isgtest.ctl("audit", *args, "--store", self.gw.store_path, *given)
                self.assertEqual(r.rc, 0, r)
                self.assertTrue(r.err.endswith(ok), r)
                self.assertNotIn(NHS_A, r.out + r.err)
        # The wrong origin: the checkpoints are not this key's, which verify explains.
        r = isgtest.ctl("audit", "subject", "--nhs-number", NHS_A, "--store", self.gw.store_path,
                        "--keys", self.gw.keys_dir)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("audit log FAILED verification", r.err)

    def test_report_against_a_saved_checkpoint(self):
        """A copy with its last entry and last checkpoint deleted is consistent on its own:
        report said OK. With --against the checkpoint saved before, its integrity section
        FAILS, as verify does."""
        last = len(self.entries)
        db = self.tamper("truncated-report", ("DELETE FROM audit WHERE seq = ?", (last,)),
                         ("DELETE FROM checkpoints WHERE size = ?", (last,)))
        day = json.loads(bytes(self.entries[0][3]))["at"][:10]
        md = os.path.join(self.tmp, "report.md")
        r = self.audit("report", "--from", day, "--to", day, "--markdown", md, store=db)
        self.assertEqual(r.rc, 0, r)
        self.assertIn("**OK**", isgtest.read_text(md))
        r = self.audit("report", "--from", day, "--to", day, "--markdown", md,
                       "--against", self.saved_final, store=db)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("report written, but the log FAILED verification", r.err)
        text = isgtest.read_text(md)
        self.assertIn("**FAILED**", text)
        self.assertIn("0 of 1 checkpoints saved elsewhere (--against) held", text)
        self.assertIn("problem: log was truncated or rolled back: saved checkpoint of size %d"
                      % last, text)
        # The log as isgd wrote it holds both.
        r = self.audit("report", "--from", day, "--to", day, "--markdown", md,
                       "--against", self.saved_running, "--against", self.saved_final)
        self.assertEqual(r.rc, 0, r)
        self.assertIn("2 of 2 checkpoints saved elsewhere (--against) held",
                      isgtest.read_text(md))

    def subject_at_a_terminal(self):
        """isgctl audit subject --nhs-number - with its standard input a terminal (a pty):
        (process, the pty's master side, the terminal's slave side, stderr's pipe)."""
        master, slave = pty.openpty()
        p = subprocess.Popen([isgtest.ISGCTL, "audit", "subject", "--nhs-number", "-",
                              "--format", "jsonl", "--config", self.gw.config_path],
                             stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        self.addCleanup(p.stdout.close)
        self.addCleanup(p.stderr.close)
        prompt = b""
        deadline = time.monotonic() + 10
        while not prompt.endswith(b"NHS number (not shown): ") and time.monotonic() < deadline:
            if select.select([p.stderr], [], [], 0.5)[0]:
                chunk = os.read(p.stderr.fileno(), 4096)
                if not chunk:
                    break
                prompt += chunk
        self.assertEqual(prompt, b"NHS number (not shown): ")
        return p, master, slave

    def test_subject_does_not_echo_an_identifier_typed_at_a_terminal(self):
        """Typed at the prompt, the NHS number does not appear on the terminal (the
        screen, its scrollback, a screen share), and the terminal echoes again after."""
        p, master, slave = self.subject_at_a_terminal()
        time.sleep(0.2)  # echo is turned off once the prompt is out
        os.write(master, NHS_A.encode() + b"\n")
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(len(out.splitlines()), 4, out)  # found as with --nhs-number NHS_A
        shown = b""
        while select.select([master], [], [], 0.2)[0]:
            chunk = os.read(master, 4096)
            if not chunk:
                break
            shown += chunk
        self.assertNotIn(NHS_A.encode(), shown)
        self.assertNotIn(NHS_A.encode(), out + err)
        self.assertTrue(termios.tcgetattr(slave)[3] & termios.ECHO, "echo left off")

    def test_subject_at_a_terminal_restores_echo_when_interrupted(self):
        """^C at the prompt ends the command as ^C does, with the terminal echoing again."""
        p, master, slave = self.subject_at_a_terminal()
        time.sleep(0.2)
        os.write(master, NHS_A[:4].encode())  # half typed
        time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=30)
        self.assertEqual(p.returncode, -signal.SIGINT)
        self.assertTrue(termios.tcgetattr(slave)[3] & termios.ECHO, "echo left off")

    def test_subject_whatever_the_field_order(self):
        """A record's fields in another order than the dataset's give the same subjects."""
        gw = self.gateway(audit={"origin": ORIGIN})
        police = self.partner(gw, "police")
        reordered = dict(reversed(list(RECORD_A.items())))
        index = police.send_ok([reordered], message_id="order-1")["audit_index"]
        gw.stop()
        key = isgtest.domain_keys(gw.keys_dir, "audit")[-1]
        uri = "file:%s?mode=ro&immutable=1" % gw.store_path
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            leaf = json.loads(db.execute("SELECT entry FROM audit WHERE seq = ?",
                                         (index,)).fetchone()[0])
        self.assertIn(isgtest.pseudonym(key.key, key.version, T_NHS, NHS_A),
                      leaf["entry"]["subjects"])

    def test_subject_across_audit_key_rotations(self):
        """Entries keep the pseudonym of the audit key version current when written."""
        gw = self.gateway(audit={"origin": ORIGIN})
        police = self.partner(gw, "police")
        indexes = [police.send_ok([RECORD_A], message_id="rot-1")["audit_index"]]
        for n in (2, 3):
            isgtest.rotate_domain(gw.keys_dir, "audit", overlap=30)
            self.assertEqual(gw.reload()[0], "loaded")
            indexes.append(police.send_ok([RECORD_A], message_id="rot-%d" % n)["audit_index"])
        gw.stop()
        keys = isgtest.domain_keys(gw.keys_dir, "audit")
        uri = "file:%s?mode=ro&immutable=1" % gw.store_path
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            for index, key in zip(indexes, keys):
                leaf = json.loads(db.execute("SELECT entry FROM audit WHERE seq = ?",
                                             (index,)).fetchone()[0])
                self.assertIn(isgtest.pseudonym(key.key, key.version, T_NHS, NHS_A),
                              leaf["entry"]["subjects"])
        r = isgtest.ctl("audit", "subject", "--nhs-number", NHS_A, "--format", "jsonl",
                        "--config", gw.config_path)
        self.assertEqual(r.rc, 0, r)
        found = [json.loads(line)["index"] for line in r.out.splitlines()]
        # Every version of the audit key is searched, retired ones included.
        self.assertEqual(found, indexes)
        self.assertNotIn(NHS_A, r.out + r.err)

    def test_subject_without_keys_directory(self):
        """A mistyped or unmounted --keys is told as such, not as a missing audit domain."""
        nowhere = os.path.join(self.tmp, "nowhere")
        args = ["audit", "subject", "--nhs-number", NHS_A, "--store", self.gw.store_path,
                "--keys", nowhere]
        r = isgtest.ctl(*args)
        self.assertEqual((r.rc, r.out), (1, ""), r)
        self.assertEqual(r.err, "isgctl: key directory '%s' does not exist; restore it from "
                         "its backup, or create one for a new gateway with "
                         "'isgctl keys init'\n" % nowhere)
        self.assertFalse(os.path.exists(nowhere))
        # A keys directory without the audit domain's key is another matter: make the key.
        os.mkdir(nowhere, 0o700)
        r = isgtest.ctl(*args)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("no key for the audit linkage domain", r.err)
        self.assertIn("isgctl keys new-domain %s audit" % nowhere, r.err)
        self.assertNotIn(NHS_A, r.out + r.err)

    def test_subject_refuses_bad_identifiers(self):
        bad = NHS_A[:-1] + "8"
        r = self.audit("subject", "--nhs-number", bad)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("--nhs-number:", r.err)
        self.assertNotIn(bad, r.out + r.err)
        r = self.audit("subject")
        self.assertEqual(r.rc, 2, r)
        r = self.audit("subject", "--nhs-number", NHS_A, "--pnc-id", "2008/0056560Z")
        self.assertEqual(r.rc, 2, r)
        self.assertNotIn(NHS_A, r.out + r.err)

    # -- export and the documented verifier

    def test_export_and_doc_script(self):
        out = os.path.join(self.tmp, "export.jsonl")
        r = self.audit("export", "--output", out)
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(os.stat(out).st_mode & 0o777, 0o600)
        lines = [json.loads(line) for line in isgtest.read_text(out).splitlines()]
        header = lines[0]
        self.assertEqual(header["type"], "header")
        self.assertEqual(header["format"], "isg-audit-export-v1")
        self.assertEqual(header["origin"], ORIGIN)
        self.assertEqual(header["verifier_key"], self.audit("pubkey").out.strip())
        entries = [x for x in lines if x["type"] == "entry"]
        self.assertEqual([(e["seq"], base64.b64decode(e["leaf"])) for e in entries],
                         [(row[0], bytes(row[3])) for row in self.entries])
        self.assertEqual([x["note"] for x in lines if x["type"] == "checkpoint"],
                         [row[1] for row in self.checkpoints])
        script = os.path.join(self.tmp, "verify_export.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(doc_script("verify_export.py"))
        self.assertLessEqual(len(doc_script("verify_export.py").splitlines()), 60)
        p = subprocess.run(["/usr/bin/python3", script, out], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("export OK: %d entries" % len(self.entries), p.stdout)
        self.assertNotIn("note:", p.stdout)
        # The last entry after the last checkpoint (as while isgd runs): said before "OK".
        n = len(self.entries)
        tail = [x for x in lines if not (x["type"] == "checkpoint" and
                                         note_body(x["note"])[1] == n)]
        self.assertEqual(tail[-1], {"type": "entry", "seq": n, "leaf": tail[-1]["leaf"]})
        last = max(note_body(x["note"])[1] for x in tail if x["type"] == "checkpoint")
        uncovered = os.path.join(self.tmp, "uncovered.jsonl")
        with open(uncovered, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(x) + "\n" for x in tail))
        p = subprocess.run(["/usr/bin/python3", script, uncovered], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(p.stdout.splitlines()[0], "note: entries %d..%d are covered by no "
                         "checkpoint: nothing proves them" % (last + 1, n))
        self.assertIn("export OK: %d entries, last checkpoint size %d" % (n, last), p.stdout)
        # The script catches a changed entry.
        i = next(k for k, x in enumerate(lines) if x["type"] == "entry" and x["seq"] == 2)
        leaf = base64.b64decode(lines[i]["leaf"]).replace(b'"index":2', b'"index":2 ')
        lines[i]["leaf"] = base64.b64encode(leaf).decode()
        bad = os.path.join(self.tmp, "bad.jsonl")
        with open(bad, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(x) + "\n" for x in lines))
        p = subprocess.run(["/usr/bin/python3", script, bad], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("does not match", p.stdout + p.stderr)
        # Standard output works too, and the same bytes come out.
        r2 = self.audit("export")
        self.assertEqual(r2.rc, 0, r2)
        self.assertEqual(r2.out, isgtest.read_text(out))

    def test_doc_script_reports_damage_without_crashing(self):
        """The documented verifier prints each problem and exits 1; it never raises."""
        out = os.path.join(self.tmp, "export.jsonl")
        self.assertEqual(self.audit("export", "--output", out).rc, 0)
        with open(out, "rb") as f:
            lines = f.read().split(b"\n")
        script = os.path.join(self.tmp, "verify_export.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(doc_script("verify_export.py"))

        def run(name, damaged):
            path = os.path.join(self.tmp, name + ".jsonl")
            with open(path, "wb") as f:
                f.write(b"\n".join(damaged))
            p = subprocess.run(["/usr/bin/python3", script, path], capture_output=True,
                               text=True, timeout=60)
            self.assertNotIn("Traceback", p.stderr, name)
            self.assertEqual(p.returncode, 1, (name, p.stdout, p.stderr))
            return p

        first = next(i for i, line in enumerate(lines) if b'"type":"entry"' in line)
        cp = next(i for i, line in enumerate(lines) if b'"type":"checkpoint"' in line)

        def entry(leaf, seq=1):
            return json.dumps({"type": "entry", "seq": seq,
                               "leaf": base64.b64encode(leaf).decode()}).encode()

        cases = {
            "leaf-not-json": (first, entry(b"not json")),  # the IG audit's case
            "leaf-not-object": (first, entry(b"[1,2]")),
            "leaf-not-utf8": (first, entry(b"\xff\xfe")),
            "leaf-not-base64": (first, b'{"type":"entry","seq":1,"leaf":"***"}'),
            "line-not-json": (first, b"{not json"),
            "line-not-object": (first, b"[]"),
            "line-not-utf8": (first, b"\xff\xfe junk"),
            "seq-not-number": (first, b'{"type":"entry","seq":"1","leaf":"e30="}'),
            "note-one-line": (cp, b'{"type":"checkpoint","note":"one line"}'),
            "note-bad-size": (cp, b'{"type":"checkpoint","note":"o\\nNaN\\nAAAA\\n\\nsig"}'),
            # nested past Python's recursion limit: RecursionError, not ValueError
            "leaf-deep": (first, entry(b"[" * 100000 + b"]" * 100000)),
            "line-deep": (first, b"[" * 100000 + b"]" * 100000),
        }
        for name, (i, line) in cases.items():
            damaged = list(lines)
            damaged[i] = line
            p = run(name, damaged)
            self.assertIn("problem: ", p.stdout, name)
            self.assertNotIn("export OK", p.stdout, name)
        p = run("leaf-not-json", lines[:first] + [entry(b"not json")] + lines[first + 1:])
        self.assertIn("problem: line %d is not a valid entry or checkpoint" % (first + 1), p.stdout)
        for name, head in (("empty", b""), ("header-list", b"[1]"), ("header-text", b'"x"'),
                           ("header-format", b'{"type":"header","format":"other"}'),
                           ("header-deep", b"[" * 100000 + b"]" * 100000)):
            p = run(name, [head] + lines[1:])
            self.assertIn("not an isgctl audit export", p.stderr, name)

    def test_export_over_an_existing_file(self):
        """--output replaces a file with a new one of mode 0600, and only when written whole."""
        path = os.path.join(self.tmp, "export.jsonl")

        def old_file():
            with open(path, "w", encoding="utf-8") as f:
                f.write("old\n")
            os.chmod(path, 0o644)

        old_file()
        r = self.audit("export", "--output", path)
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(json.loads(f.readline())["type"], "header")
        self.assertEqual(os.listdir(self.tmp).count("export.jsonl"), 1)
        self.assertEqual([n for n in os.listdir(self.tmp) if n.startswith(".export")], [])
        # A write that fails (the file size limit, EFBIG) leaves the old file as it was.
        old_file()

        def small_files():
            resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

        argv = [isgtest.ISGCTL, "audit", "export", "--config", self.gw.config_path,
                "--output", path]
        p = subprocess.run(argv, capture_output=True, text=True, preexec_fn=small_files,
                           timeout=isgtest.CTL_TIMEOUT, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 1, p)
        self.assertIn("cannot write '%s'" % path, p.stderr)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), "old\n")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o644)
        self.assertEqual([n for n in os.listdir(self.tmp) if n.startswith(".export")], [])

    def test_export_through_a_link_or_a_fifo(self):
        """--output writes through what is not a plain file instead of replacing it."""
        target = os.path.join(self.tmp, "real.jsonl")
        with open(target, "w", encoding="utf-8") as f:
            f.write("old\n")
        os.chmod(target, 0o644)
        # A link to a wider file, cut to 0600; a link to nothing yet, its target made 0600.
        new = os.path.join(self.tmp, "new.jsonl")
        for to, name in ((target, "link.jsonl"), (new, "dangling.jsonl")):
            link = os.path.join(self.tmp, name)
            os.symlink(to, link)
            r = self.audit("export", "--output", link)
            self.assertEqual(r.rc, 0, r)
            self.assertTrue(os.path.islink(link))
            self.assertEqual(os.stat(to).st_mode & 0o777, 0o600, name)
            with open(to, encoding="utf-8") as f:
                self.assertEqual(json.loads(f.readline())["type"], "header")
        # A FIFO, as a consumer reading a pipe would give: it stays a FIFO.
        fifo = os.path.join(self.tmp, "pipe")
        os.mkfifo(fifo)
        got = []

        def read_all():
            with open(fifo, "rb") as f:
                got.append(f.read())

        reader = isgtest.Thread(target=read_all)
        reader.start()
        r = self.audit("export", "--output", fifo)
        reader.join(timeout=30)
        self.assertEqual(r.rc, 0, r)
        self.assertTrue(stat.S_ISFIFO(os.lstat(fifo).st_mode))
        self.assertEqual(json.loads(got[0].split(b"\n")[0])["type"], "header")
        self.assertEqual([n for n in os.listdir(self.tmp) if n.startswith(".")], [])

    def test_read_only(self):
        """The audit commands never write the store: its bytes and its directory stay the same."""
        d = os.path.dirname(self.gw.store_path)

        def digests():
            out = {}
            for n in os.listdir(d):
                with open(os.path.join(d, n), "rb") as f:
                    out[n] = hashlib.sha256(f.read()).hexdigest()
            return out

        before = digests()
        self.assertEqual(sorted(before), self.store_files_after_stop)
        for args in (["verify"], ["checkpoint"], ["list"], ["export"], ["prove", "1"],
                     ["subject", "--nhs-number", NHS_A]):
            self.assertEqual(self.audit(*args).rc, 0, args)
        self.assertEqual(digests(), before)

    def test_usage(self):
        r = isgtest.ctl("audit", "verify")
        self.assertEqual(r.rc, 2, r)
        self.assertIn("--config", r.err)
        # A --pubkey that is no key is a bad command line, refused before the store is read
        # (here it does not exist); a --pubkey-file that holds none, a bad input file.
        garbage = os.path.join(self.tmp, "garbage.pub")
        with open(garbage, "w", encoding="utf-8") as f:
            f.write("x\n")
        out = os.path.join(self.tmp, "never.jsonl")
        for sub in (["verify"], ["prove", "1"], ["export", "--output", out]):
            for opt, value, rc in (("--pubkey", "x", 2), ("--pubkey-file", garbage, 1)):
                r = isgtest.ctl("audit", *sub, "--store", os.path.join(self.tmp, "none.db"),
                                opt, value)
                self.assertEqual((r.rc, r.out), (rc, ""), (sub, opt, r))
                self.assertIn("is not a valid verifier key: ", r.err)
                self.assertNotIn("none.db", r.err)
        self.assertFalse(os.path.exists(out))
        r = isgtest.ctl("audit", "frobnicate")
        self.assertEqual(r.rc, 2, r)
        for sub in ["verify", "checkpoint", "pubkey", "prove", "list", "subject", "export"]:
            r = isgtest.ctl("audit", sub, "--help")
            self.assertEqual(r.rc, 0, r)
            self.assertIn("usage: isgctl audit " + sub, r.out)



class AuditStoreOpened(isgtest.ScenarioCase):
    """How the audit commands open the store: through links, and while isgd runs."""

    def where(self, gw, store):
        return ["--store", store, "--keys", gw.keys_dir, "--origin", ORIGIN]

    def test_store_through_a_link_while_isgd_runs(self):
        """
        A link to the store of a running isgd reads what the store itself reads:
        isgd's -wal file sits beside the file the link names, not beside the
        link, and a read that looked for it beside the link opened the file
        without its WAL, missing every entry not yet copied back, and said so
        nowhere.
        """
        gw = self.gateway(audit={"origin": ORIGIN})
        police = self.partner(gw, "police")
        receipts = [police.send_ok([RECORD_A], message_id="link-%d" % i) for i in range(3)]
        self.assertTrue(os.path.exists(gw.store_path + "-wal"), "isgd keeps a WAL while it runs")
        link = os.path.join(self.tmp, "link.db")
        os.symlink(gw.store_path, link)
        relative = os.path.join(self.tmp, "relative.db")
        os.symlink(os.path.relpath(link, self.tmp), relative)  # a link to a link, relative
        config = os.path.join(self.tmp, "linked.yaml")
        isgtest.write_yaml(config, dict(gw.config, store=dict(gw.config["store"], path=relative)))

        def run(*args):
            r = isgtest.ctl("audit", *args)
            self.assertEqual(r.rc, 0, r)
            return r

        real = run("list", "--format", "jsonl", *self.where(gw, gw.store_path)).out
        indexes = [json.loads(line)["index"] for line in real.splitlines()]
        self.assertLessEqual(receipts[-1]["audit_index"], len(indexes))
        self.assertEqual(indexes, list(range(1, len(indexes) + 1)))
        verified = run("verify", *self.where(gw, gw.store_path)).out
        self.assertIn("audit log OK: %d entries" % len(indexes), verified)
        for store in (link, relative):
            self.assertEqual(run("list", "--format", "jsonl", *self.where(gw, store)).out, real,
                             store)
            self.assertEqual(run("verify", *self.where(gw, store)).out, verified, store)
        self.assertEqual(run("list", "--format", "jsonl", "--config", config).out, real)
        self.assertEqual(run("verify", "--config", config).out, verified)
        # A link to nothing names the path that could not be resolved.
        dangling = os.path.join(self.tmp, "dangling.db")
        os.symlink(os.path.join(self.tmp, "gone.db"), dangling)
        r = isgtest.ctl("audit", "list", "--store", dangling)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("cannot open store '%s': no such file or directory" % dangling, r.err)
        # A directory on the way that is a file: the error, no resolving jargon.
        r = isgtest.ctl("audit", "list", "--store", os.path.join(gw.store_path, "x.db"))
        self.assertEqual(r.rc, 1, r)
        self.assertIn("cannot open store '%s': not a directory" % os.path.join(gw.store_path, "x.db"),
                      r.err)

    def read_blocked(self, args, meanwhile):
        """
        Run isgctl audit ARGS with its standard output a pipe of one page that
        nobody reads until it holds something: by then the store is open and
        being read, and the command cannot end (its output is larger than the
        pipe and stdio's buffer). Then meanwhile(), then read the rest.
        Returns a CtlResult.
        """
        r, w = os.pipe()
        with open(r, "rb") as out:
            fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_PAGE)
            argv = [isgtest.ISGCTL] + list(args)
            p = subprocess.Popen(argv, stdout=w, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL)
            os.close(w)
            try:
                ready, _, _ = select.select([out], [], [], isgtest.CTL_TIMEOUT)
                self.assertTrue(ready, "isgctl wrote nothing")
                self.assertIsNone(p.poll(), "isgctl ended before it was blocked")
                meanwhile()
                got = out.read()
                err = p.stderr.read().decode()
                p.wait(timeout=isgtest.CTL_TIMEOUT)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                p.stderr.close()
        return isgtest.CtlResult(p.returncode, got.decode(), err, argv)

    def test_a_store_that_changes_while_it_is_read(self):
        """
        With isgd stopped the store is read immutable: no lock, and SQLite
        trusts that no one writes the file. An isgd started during a long
        read (an 'audit list | less' left open) writes under it, so the
        command must not end as if its answer were the log's.
        """
        gw = self.gateway(audit={"origin": ORIGIN})
        police = self.partner(gw, "police")
        for i in range(40):
            police.send_ok([RECORD_A, RECORD_B], message_id="long-%d" % i)
        gw.stop()
        list_args = ["audit", "list", "--format", "jsonl"] + self.where(gw, gw.store_path)
        before = isgtest.ctl(*list_args)
        self.assertEqual(before.rc, 0, before)
        # The pipe is a page, stdio's buffer at most two: the list cannot fit in them.
        self.assertGreater(len(before.out), 4 * PIPE_PAGE + 16384)
        changed = "the store '%s' changed while it was read (isgd started?)" % gw.store_path
        # Nothing changes: the same list, exit 0 (the pipe alone is no change).
        r = self.read_blocked(list_args, lambda: None)
        self.assertEqual((r.rc, r.out, r.err), (0, before.out, before.err), r)
        self.assertRegex(r.err, r"^isgctl: audit log OK against \d+ signed checkpoints?: ")

        def isgd_runs_a_while():
            gw.start()
            police.send_ok([RECORD_C], message_id="during")
            gw.stop()

        r = self.read_blocked(list_args, isgd_runs_a_while)
        self.assertEqual(r.rc, 1, r)
        self.assertIn(changed, r.err)
        self.assertIn("nothing here can be trusted; run the command again", r.err)
        for ident in IDENTIFIERS:
            self.assertNotIn(ident, r.err)
        # isgd still running when the read ends (its WAL is there), through a link: named so.
        link = os.path.join(self.tmp, "link.db")
        os.symlink(gw.store_path, link)
        export_args = ["audit", "export"] + self.where(gw, link)
        before = isgtest.ctl(*export_args)
        self.assertEqual(before.rc, 0, before)
        self.assertGreater(len(before.out), 4 * PIPE_PAGE + 16384)
        r = self.read_blocked(export_args, gw.start)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("the store '%s' changed while it was read (isgd started?)" % link, r.err)
        # Run again, it reads the log as it now is.
        r = isgtest.ctl(*export_args)
        self.assertEqual((r.rc, r.err), (0, ""), r)
        self.assertGreater(len(r.out), len(before.out))

if __name__ == "__main__":
    unittest.main()
