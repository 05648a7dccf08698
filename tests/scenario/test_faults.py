"""
Scenario: the faults of issue 7 against the real isgd.

  - disk full: the store on a small tmpfs filled to the last byte; sends are
    refused with UNAVAILABLE and a message naming the full disk, nothing that
    was accepted is lost, messages already handed out are handed out again,
    and once space returns sends and fetches succeed without a restart; a
    reload whose policy.loaded entry cannot be written is refused;
  - store file corrupted (SQLite header, a b-tree page, an audit entry
    changed or deleted): isgd refuses to start with a message naming the
    store and the problem, and the file stays byte for byte as it was;
  - store file missing (a lost disk, a data volume not mounted): isgd and
    --check-config refuse to start, saying what to do, and make no new
    store; --new-store makes one only where there is none (nor a WAL file
    left beside it);
  - key files missing, group-readable (0640) or world-readable (0604): isgd
    refuses to start naming the file (and the mode), and creates nothing;
  - isgd.yaml values a start cannot use (a listen address no socket takes,
    an empty path): --check-config refuses them too, at the key's line and
    column;
  - SIGKILL at a random moment under load, 20 rounds (8 under valgrind): no acknowledged send
    is lost, none is delivered again after its ack, sends without an answer
    are either stored once or not at all (a resend gives a consistent
    receipt), the audit log verifies after every restart, and no process
    of isgd's outlives it.

The disk-full case mounts a tmpfs and so needs root; without it the test
fails, unless ISG_ALLOW_SKIP=1 (then it is skipped with the reason).
ISG_FAULTS_SEED=N repeats the random timings of a crash run (the seed is
printed when a round fails). Under ISG_VALGRIND=1 there are fewer crash
rounds, and the load runs longer before the kill, as isgd is slower.

The domain key file with mode 0644 is covered by test_pseudonyms.py and the
lax modes refused by isgctl keys by test_keys_cli.py; they are not repeated.
"""

import collections
import errno
import hashlib
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
import threading
import time
import unittest

import isgtest
from isgtest import AGREEMENT_ID, DATASET, pb_record, pb_record_dict

NHS_A = "9434765919"
NHS_B = "6281948211"
# Distinctive values: a search of the log or an error message cannot hit them by chance.
NAME_A = "vorquellian"
SUMMARY = "Reported near Blenthorpe Wharf by Ixtavera"
ALLOW_SKIP = os.environ.get("ISG_ALLOW_SKIP", "") not in ("", "0")
DISK_FULL_MESSAGE = "the gateway's disk is full; nothing was stored, retry later"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_listing(root):
    """Every path under root with its mode and size (files) as a sorted list."""
    out = []
    for d, dirs, files in os.walk(root):
        for n in sorted(dirs + files):
            p = os.path.join(d, n)
            st = os.lstat(p)
            out.append((os.path.relpath(p, root), oct(st.st_mode), st.st_size if os.path.isfile(p) else 0))
    return sorted(out)


def read_store(path, sql, args=()):
    """Query a store that no one writes (immutable: creates no -wal or -shm)."""
    db = sqlite3.connect("file:%s?mode=ro&immutable=1" % path, uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def child_pids(pid):
    """The direct children of pid (a key process, say)."""
    p = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in p.stdout.split()]


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class FaultCase(isgtest.ScenarioCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pb = isgtest.isg_pb2()

    # -- talking to isgd

    def connect(self, gw, name, **kw):
        c = isgtest.FrameConn(gw, self.pki.certs[name], **kw)
        self.addCleanup(c.close)
        return c

    def expect(self, gw, reply, body):
        kind = reply.WhichOneof("body")
        if kind != body:
            self.fail("expected %s, got %s:\n%s\n%s" % (body, kind, reply, gw.diagnostics()))
        return getattr(reply, body)

    def send_request(self, message_id, records):
        req = self.pb.SendRequest(message_id=message_id, recipient="nhs-trust", agreement_id=AGREEMENT_ID,
                                  dataset=DATASET)
        req.records.extend(pb_record(self.pb, r) for r in records)
        return req

    def assertDiskFull(self, gw, reply, values=(NHS_A, NHS_B, NAME_A, SUMMARY)):
        """The answer to a request the full disk refused: UNAVAILABLE, no rule, no audit index, no value."""
        e = self.expect(gw, reply, "error")
        self.assertEqual(self.pb.ErrorCode.Name(e.code), "UNAVAILABLE", e)
        self.assertEqual(e.message, DISK_FULL_MESSAGE)
        self.assertEqual((e.rule, e.field, e.record_index, e.audit_index), ("", "", -1, 0), e)
        for v in values:
            self.assertNotIn(v, str(reply))

    def audit_verify(self, gw, when):
        r = isgtest.ctl("audit", "verify", "--config", gw.config_path)
        if r.rc != 0 or "audit log OK" not in r.out:
            self.fail("isgctl audit verify failed %s\n%s\n%s" % (when, r, gw.diagnostics()))
        return r

    def run_isgd_refused(self, gw, config_path=None):
        """
        isgd on gw's configuration (or config_path) must exit 1 at start-up; returns its stderr.
        Under ISG_VALGRIND only the first refusal of each class runs under
        valgrind (a start-up under valgrind takes seconds; the ASan build
        runs every one).
        """
        argv = [isgtest.ISGD, "--config", gw.config_path] + gw.new_store_args()
        if not getattr(type(self), "_refused_under_valgrind", False):
            argv = gw.argv()
            type(self)._refused_under_valgrind = True
        if config_path:
            argv[argv.index(gw.config_path)] = config_path
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=isgtest.START_TIMEOUT,
                               stdin=subprocess.DEVNULL, preexec_fn=isgtest._die_with_parent)
        except subprocess.TimeoutExpired:
            self.fail("isgd kept running: it should have refused to start")
        # 1 is isgd's own failure; valgrind's error exit code (99) or a signal is not.
        self.assertEqual(p.returncode, 1, "isgd exit status\n--- stdout\n%s--- stderr\n%s" % (p.stdout, p.stderr))
        self.assertNotIn("event=isgd.started", p.stderr)
        return p.stderr

    def check_config_refused(self):
        p = subprocess.run([isgtest.ISGD, "--check-config", "--config", self.gw.config_path]
                           + self.gw.new_store_args(), capture_output=True,
                           text=True, timeout=isgtest.START_TIMEOUT, stdin=subprocess.DEVNULL,
                           preexec_fn=isgtest._die_with_parent)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertNotIn("configuration OK", p.stdout)
        return p.stderr

    def assertChecksOut(self):
        """The control: with the files as isgctl keys init made them, the same configuration passes."""
        p = subprocess.run([isgtest.ISGD, "--check-config", "--config", self.gw.config_path]
                           + self.gw.new_store_args(), capture_output=True,
                           text=True, timeout=isgtest.START_TIMEOUT, stdin=subprocess.DEVNULL,
                           preexec_fn=isgtest._die_with_parent)
        self.assertEqual((p.returncode, p.stdout), (0, "configuration OK\n"), p.stderr)


# --------------------------------------------------------------------------
# Disk full.

class TestDiskFull(FaultCase):
    def mount_tmpfs(self, path, size):
        os.makedirs(path, mode=0o700, exist_ok=True)
        why = None
        if os.geteuid() != 0:
            why = "not running as root (euid %d)" % os.geteuid()
        else:
            p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "isg-faults", path],
                               capture_output=True, text=True, timeout=30)
            if p.returncode != 0:
                why = "mount -t tmpfs failed (%d): %s" % (p.returncode, p.stderr.strip())
        if why:
            msg = "the disk-full test needs a tmpfs for the store: " + why
            if ALLOW_SKIP:
                print("test_faults: skipping the disk-full test: " + why)
                self.skipTest(msg)
            self.fail(msg + " (set ISG_ALLOW_SKIP=1 to skip it instead)")

    def tmpfs_store(self):
        """The store's directory on a 4 MB tmpfs, unmounted after the gateway's cleanup."""
        store_dir = os.path.join(self.tmp, "gw", "store")
        self.mount_tmpfs(store_dir, "4m")
        self.addCleanup(self.umount, store_dir)
        return store_dir

    def umount(self, path):
        p = subprocess.run(["umount", path], capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            # Something still holds a file open: detach it so the tmpfs goes when it closes.
            subprocess.run(["umount", "-l", path], capture_output=True, text=True, timeout=30)

    def fill(self, dir):
        """Fill the file system of dir to the last byte; returns the filler's path."""
        path = os.path.join(dir, "filler")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            chunk = b"\xa5" * 65536
            for size in (65536, 4096, 512, 1):
                while True:
                    try:
                        if os.write(fd, chunk[:size]) == 0:
                            break
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        st = os.statvfs(dir)
        self.assertEqual(st.f_bavail, 0, "the file system is not full")
        return path

    def test_failed_ack_keeps_the_subscription_window(self):
        """
        An Ack the store could not write leaves its ids unacknowledged, so
        they stay in the subscriber's window: no more than
        max_fetch_messages unacknowledged pushes, disk full or not. Acked
        again once there is room, they open it.
        """
        self.check_failed_ack_keeps_the_window(ack_elsewhere=False)

    def test_failed_ack_on_another_connection_keeps_the_subscription_window(self):
        """As above, with the partner acking on a connection of its own: the
        window opens for acks on any of its connections, written ones only."""
        self.check_failed_ack_keeps_the_window(ack_elsewhere=True)

    def check_failed_ack_keeps_the_window(self, ack_elsewhere):
        pb = self.pb
        store_dir = os.path.join(self.tmp, "gw", "store")
        self.mount_tmpfs(store_dir, "4m")
        gw = None
        try:
            gw = self.gateway(limits={"max_fetch_messages": 2})
            police = self.connect(gw, "police")
            rec = {"nhs_number": NHS_A}
            ids = [self.expect(gw, police.request(send=self.send_request("win-%d" % i, [rec])),
                               "send_result").receipt.gateway_id for i in range(4)]
            sub = self.connect(gw, "nhs")
            acker = self.connect(gw, "nhs") if ack_elsewhere else sub
            sub.send_frame(pb.Frame(request_id=50, subscribe=pb.Subscribe()))
            self.assertEqual(self.pushes(sub), ids[:2])
            filler = self.fill(store_dir)
            acker.send_frame(pb.Frame(request_id=51, ack=pb.Ack(gateway_ids=ids[:2])))
            self.assertDiskFull(gw, acker.recv_frame(timeout=10 * isgtest.SLOW))
            os.unlink(filler)
            self.expect(gw, police.request(send=self.send_request("win-wake", [rec])), "send_result")
            self.assertEqual(self.pushes(sub), [], "pushed past a window of 2 unacknowledged")
            acker.send_frame(pb.Frame(request_id=52, ack=pb.Ack(gateway_ids=ids[:2])))
            self.assertEqual(self.expect(gw, acker.recv_frame(timeout=10 * isgtest.SLOW),
                                         "ack_result").acknowledged, 2)
            self.assertEqual(self.pushes(sub), ids[2:4])
        finally:
            if gw is not None:
                gw.close()
            self.umount(store_dir)

    def pushes(self, conn, quiet=1.0):
        """The gateway_ids pushed to conn until none came for `quiet` seconds."""
        got = []
        while True:
            try:
                f = conn.recv_frame(timeout=quiet * isgtest.SLOW)
            except socket.timeout:
                return got
            self.assertEqual(f.WhichOneof("body"), "delivery", f)
            got.append(f.delivery.gateway_id)

    def test_reload_on_a_full_disk_keeps_the_running_policy(self):
        """
        A reload whose policy.loaded and keys.loaded entries the store cannot
        write is refused: the running policy set and keys stay in force, so
        no message is ever accepted under a policy set the audit log does
        not record. Once there is room the same reload loads, on record.
        """
        store_dir = os.path.join(self.tmp, "gw", "store")
        self.mount_tmpfs(store_dir, "4m")
        gw = None
        try:
            gw = self.gateway()
            police = self.connect(gw, "police")
            rec = {"nhs_number": NHS_A}
            old = self.expect(gw, police.request(send=self.send_request("pol-1", [rec])),
                              "send_result").receipt.policy_version
            isgtest.write_policy(gw.policy_dir, agreements=[isgtest.default_agreement(version=2)])
            filler = self.fill(store_dir)
            outcome, text = gw.reload()
            self.assertEqual(outcome, "refused", text)
            self.assertIn('level=error event=policy.refused reason="the audit log did not record '
                          'the new policy set and keys" error="disk full" action="kept the running '
                          'policy set and keys"', text)
            os.unlink(filler)
            kept = self.expect(gw, police.request(send=self.send_request("pol-2", [rec])),
                               "send_result").receipt.policy_version
            self.assertEqual(kept, old, "a refused reload changed the policy set in force")
            outcome, text = gw.reload()
            self.assertEqual(outcome, "loaded", text)
            new = self.expect(gw, police.request(send=self.send_request("pol-3", [rec])),
                              "send_result").receipt.policy_version
            self.assertNotEqual(new, old)
            gw.stop()
            self.audit_verify(gw, "after the stop")
            loaded = [json.loads(e)["entry"]["policy_version"] for (e,) in read_store(
                gw.store_path, "SELECT entry FROM audit WHERE kind = 'policy.loaded' ORDER BY seq")]
            self.assertEqual(loaded, [old, new])
            keys = read_store(gw.store_path, "SELECT count(*) FROM audit WHERE kind = 'keys.loaded'")
            self.assertEqual(keys, [(2,)])
        finally:
            if gw is not None:
                gw.close()
            self.umount(store_dir)

    def test_start_on_a_full_disk_says_so_and_starts_once_there_is_room(self):
        """SQLite reports a full disk while it maps its WAL index as an I/O error:
        the admin is told the disk is full, not that it failed."""
        store_dir = self.tmpfs_store()
        gw = self.gateway()
        police = self.connect(gw, "police")
        self.expect(gw, police.request(send=self.send_request("full-1", [{"nhs_number": NHS_A}])),
                    "send_result")
        gw.stop()
        filler = self.fill(store_dir)
        err = self.run_isgd_refused(gw)
        self.assertRegex(err, r"isgd: store '[^']*': [^\n]*: disk full \(no space left on "
                              r"the store's file system\)\n")
        self.assertNotIn("disk I/O error", err)
        os.unlink(filler)
        gw.start()
        got = self.partner(gw, "nhs").fetch_messages()
        self.assertEqual([m["message_id"] for m in got], ["full-1"])
        gw.stop()
        self.audit_verify(gw, "after the start that had room")

    def test_start_serves_only_once_its_policy_is_on_record(self):
        """
        Started with room to open the store but not to commit its
        policy.loaded and keys.loaded entries, isgd used to serve all the
        same, under a policy set the audit log did not record. It now
        refuses to start; with room, the entries are there before it serves.
        """
        store_dir = self.tmpfs_store()
        gw = self.gateway()
        gw.stop()
        filler = self.fill(store_dir)
        size = os.path.getsize(filler)
        def count():  # read as isgctl does, the WAL included, isgd running or not
            n = 0
            for kind in ("policy.loaded", "keys.loaded"):
                r = isgtest.ctl("audit", "list", "--config", gw.config_path, "--kind", kind,
                                "--format", "jsonl")
                self.assertEqual(r.rc, 0, r)
                n += len(r.out.splitlines())
            return n

        outcomes = set()
        # Room from too little to open the store to enough for everything.
        for kib in range(32, 132, 4):
            os.truncate(filler, size - kib * 1024)
            before = count()
            p = subprocess.Popen([isgtest.ISGD, "--config", gw.config_path] + gw.new_store_args(),
                                 stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=isgtest._die_with_parent)
            # an isgd that neither starts nor exits is killed, not waited for
            watchdog = threading.Timer(isgtest.START_TIMEOUT, p.kill)
            watchdog.start()
            started, said = False, []
            for line in p.stderr:
                said.append(line)
                if "event=isgd.started" in line:
                    started = True
                    break
            if started:
                after = count()
                p.terminate()
            rest = "".join(said) + p.communicate(timeout=isgtest.STOP_TIMEOUT)[1]
            watchdog.cancel()
            if started:
                self.assertEqual(after, before + 2, "%d KiB free: isgd served before its policy "
                                 "set and keys were on record" % kib)
                outcomes.add("started")
                break
            self.assertEqual(p.returncode, 1, rest)
            if "isgd: the audit log did not record the policy set and keys: disk full" in rest:
                outcomes.add("refused")
            os.truncate(filler, size)
        self.assertEqual(outcomes, {"refused", "started"})
        os.unlink(filler)
        self.audit_verify(gw, "after the starts")

    def test_disk_full_refuses_sends_and_recovers(self):
        pb = self.pb
        store_dir = os.path.join(self.tmp, "gw", "store")
        self.mount_tmpfs(store_dir, "4m")
        gw = None
        try:
            gw = self.gateway(audit={"checkpoint_interval": "1s"})
            police = self.connect(gw, "police")
            nhs = self.connect(gw, "nhs")
            nhs2 = self.connect(gw, "nhs")  # idle until the disk is full: its cursor is still 0
            rec = {"nhs_number": NHS_A, "family_name": NAME_A, "concern_summary": SUMMARY}
            receipts = {}
            for mid in ("full-1", "full-2"):
                receipts[mid] = self.expect(gw, police.request(send=self.send_request(mid, [rec])),
                                            "send_result").receipt
            got = self.expect(gw, nhs.request(fetch=pb.FetchRequest(max_messages=10)), "fetch_result")
            self.assertEqual([d.message_id for d in got.deliveries], ["full-1", "full-2"])
            receipts["full-3"] = self.expect(gw, police.request(send=self.send_request("full-3", [rec])),
                                             "send_result").receipt
            filler = self.fill(store_dir)

            # Sends are refused, small or large, through the protocol and through isgctl.
            self.assertDiskFull(gw, police.request(send=self.send_request("full-4", [rec])))
            big = [dict(rec, age=i, concern_summary=SUMMARY + " " + "x" * 2000) for i in range(50)]
            self.assertDiskFull(gw, police.request(send=self.send_request("full-5", big)))
            r = self.partner(gw, "police").send([{"nhs_number": NHS_B}], message_id="full-6")
            self.assertEqual(r.rc, 5, r)  # unavailable for now: send again later
            self.assertIn("isgctl: refused: UNAVAILABLE: " + DISK_FULL_MESSAGE, r.err)
            # A resend of an accepted message writes nothing: its receipt, unchanged.
            dup = self.expect(gw, police.request(send=self.send_request("full-1", [rec])), "send_result").receipt
            self.assertTrue(dup.duplicate)
            self.assertEqual((dup.gateway_id, dup.audit_index, dup.accepted_at_ms),
                             (receipts["full-1"].gateway_id, receipts["full-1"].audit_index,
                              receipts["full-1"].accepted_at_ms))
            # Messages handed out before are handed out again (that writes nothing) ...
            again = self.expect(gw, nhs2.request(fetch=pb.FetchRequest(max_messages=2)), "fetch_result")
            self.assertEqual([(d.message_id, d.gateway_id) for d in again.deliveries],
                             [("full-1", receipts["full-1"].gateway_id), ("full-2", receipts["full-2"].gateway_id)])
            self.assertEqual([pb_record_dict(r) for r in again.deliveries[0].records], [rec])
            # ... but one never handed out needs its "message.delivered" audit entry, and an ack its
            # "message.acknowledged" entry: neither can be written, so both are refused and change nothing.
            self.assertDiskFull(gw, nhs2.request(fetch=pb.FetchRequest(max_messages=10)))
            self.assertDiskFull(gw, nhs.request(ack=pb.Ack(gateway_ids=[receipts["full-1"].gateway_id])))
            # A subscriber's first batch holds full-3, never handed out: it fails too, and is
            # tried again until it goes through (below), with no new message to wake it.
            nhs3 = self.connect(gw, "nhs")
            nhs3.send_frame(pb.Frame(request_id=77, subscribe=pb.Subscribe()))
            self.assertAlive(gw, "while the disk is full")
            self.audit_verify(gw, "while the disk is full")
            time.sleep(1.2 * isgtest.SLOW)  # past checkpoint_interval: a checkpoint may fall due and fail
            self.assertAlive(gw, "while the disk is full")

            # Space comes back: everything works again, without a restart.
            os.unlink(filler)
            pushed = [nhs3.recv_frame(timeout=10 * isgtest.SLOW) for _ in range(3)]
            self.assertEqual([(f.request_id, f.delivery.message_id) for f in pushed],
                             [(77, "full-1"), (77, "full-2"), (77, "full-3")])
            r4 = self.expect(gw, police.request(send=self.send_request("full-4", [rec])), "send_result").receipt
            self.assertFalse(r4.duplicate)
            r5 = self.expect(gw, police.request(send=self.send_request("full-5", big)), "send_result").receipt
            self.assertFalse(r5.duplicate)
            self.assertEqual(r5.record_count, 50)
            self.partner(gw, "police").send_ok([{"nhs_number": NHS_B}], message_id="full-6")
            rest = self.expect(gw, nhs2.request(fetch=pb.FetchRequest(max_messages=10)), "fetch_result")
            self.assertEqual([d.message_id for d in rest.deliveries], ["full-3", "full-4", "full-5", "full-6"])
            self.assertEqual(len(rest.deliveries[2].records), 50)
            ids = [d.gateway_id for d in again.deliveries] + [d.gateway_id for d in rest.deliveries]
            ack = self.expect(gw, nhs2.request(ack=pb.Ack(gateway_ids=ids)), "ack_result")
            self.assertEqual((ack.acknowledged, list(ack.unknown_ids)), (6, []))
            self.assertEqual(list(self.expect(gw, self.connect(gw, "nhs").request(fetch=pb.FetchRequest()),
                                              "fetch_result").deliveries), [])
            self.audit_verify(gw, "after the disk had space again")
            gw.stop()
            self.audit_verify(gw, "after the stop")
            # Nothing of what the full disk refused reached the log; each step once.
            kinds = dict(read_store(gw.store_path, "SELECT kind, count(*) FROM audit GROUP BY kind"))
            self.assertEqual((kinds.get("message.accepted"), kinds.get("message.delivered"),
                              kinds.get("message.acknowledged")), (6, 6, 6), kinds)
            self.assertEqual(read_store(gw.store_path, "SELECT count(*), min(state), max(state) FROM messages"),
                             [(6, 2, 2)])
            log = gw.log
            self.assertRegex(log, r"event=store\.batch_failed jobs=\d+ error=\"disk full\"")
            for v in (NHS_A, NHS_B, NAME_A, SUMMARY):
                self.assertNotIn(v, log)
        finally:
            if gw is not None:
                gw.close()
            self.umount(store_dir)


# --------------------------------------------------------------------------
# A commit whose sync fails.

# fsync and fdatasync of a file whose name ends in -wal fail with EIO while
# the file named by ISG_TEST_FAIL_SYNC exists and, if that file holds some
# text, the WAL holds it too (a message_id: the sync of the commit that
# stores that message, not of one before it). SQLite has written the
# commit's frames, the last marking the commit, before the sync fails.
FAIL_WAL_SYNC_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int holds(int fd, const char *marker, size_t n)
{
	static char buf[1 << 20];
	off_t at = 0;
	ssize_t got;
	while ((got = pread(fd, buf, sizeof buf, at)) > (ssize_t)n) {
		if (memmem(buf, (size_t)got, marker, n))
			return 1;
		at += got - (off_t)n;
	}
	return 0;
}
static int failing(int fd)
{
	const char *f = getenv("ISG_TEST_FAIL_SYNC");
	char p[64], t[4096], marker[256];
	if (!f)
		return 0;
	int flag = open(f, O_RDONLY);
	if (flag < 0)
		return 0;
	ssize_t m = read(flag, marker, sizeof marker);
	close(flag);
	snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(p, t, sizeof t - 1);
	if (n <= 4 || memcmp(t + n - 4, "-wal", 4) != 0)
		return 0;
	return m <= 0 || holds(fd, marker, (size_t)m);
}
int fsync(int fd) { static int (*real)(int); if (!real) real = dlsym(RTLD_NEXT, "fsync"); if (failing(fd)) { errno = EIO; return -1; } return real(fd); }
int fdatasync(int fd) { static int (*real)(int); if (!real) real = dlsym(RTLD_NEXT, "fdatasync"); if (failing(fd)) { errno = EIO; return -1; } return real(fd); }
"""

# isgd's exit status when its store failed (docs/operations.md, "Exit status").
EXIT_STORE_FAILED = 3


class TestFailedSync(FaultCase):
    """
    A commit whose WAL sync fails may or may not be on disk: WAL recovery
    at the next start replays frames written before the failed sync. Each
    request of that commit is answered UNAVAILABLE with rule
    store.outcome_unknown (repeat it: sends are idempotent under their
    message_id), isgd stops with its own exit status, and after a restart
    the repeated request finds the store consistent.
    """

    def setUp(self):
        super().setUp()
        src = os.path.join(self.tmp, "failsync.c")
        lib = os.path.join(self.tmp, "failsync.so")
        self.flag = os.path.join(self.tmp, "fail-sync")
        with open(src, "w") as f:
            f.write(FAIL_WAL_SYNC_C)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", lib, src, "-ldl"], check=True)
        self.gw = self.gateway(start=False)
        plain = self.gw.argv
        asan = os.environ.get("ASAN_OPTIONS", "")
        asan += (":" if asan else "") + "verify_asan_link_order=0"
        self.gw.argv = lambda: (["env", "LD_PRELOAD=" + lib, "ASAN_OPTIONS=" + asan,
                                 "ISG_TEST_FAIL_SYNC=" + self.flag] + plain())
        self.gw.start()

    def fail_syncs(self, on, marker=""):
        if on:
            with open(self.flag, "w") as f:
                f.write(marker)
        elif os.path.exists(self.flag):
            os.unlink(self.flag)

    def assertStoppedForTheStore(self):
        """isgd stops on its own, with its exit status and log lines; then it starts again."""
        try:
            self.gw.proc.wait(timeout=isgtest.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail("isgd did not stop after the failed commit\n%s" % self.gw.diagnostics())
        self.gw.stop(expect_rc=EXIT_STORE_FAILED)
        log = self.gw.log
        self.assertRegex(log, r'event=store\.failed reason="disk I/O error" action="isgd stops; '
                              r'restart it: recovery makes the store consistent"')
        self.assertIn('event=shutdown.start reason="the store failed"', log)
        self.fail_syncs(False)
        self.gw.start()

    def assertOutcomeUnknown(self, reply, says):
        e = self.expect(self.gw, reply, "error")
        self.assertEqual(self.pb.ErrorCode.Name(e.code), "UNAVAILABLE", e)
        self.assertEqual(e.rule, "store.outcome_unknown", e)
        self.assertIn(says, e.message)
        self.assertEqual(e.audit_index, 0, e)

    def stored(self, message_id):
        db = sqlite3.connect("file:%s?mode=ro" % self.gw.store_path, uri=True)
        try:
            return db.execute("SELECT count(*) FROM messages WHERE message_id = ?",
                              (message_id,)).fetchone()[0]
        finally:
            db.close()

    def test_send_whose_commit_fails_is_resent_under_its_id(self):
        police = self.partner(self.gw, "police")
        police.send_ok([{"nhs_number": NHS_A}], message_id="sync-1")
        # isgctl's connection.accepted entry commits first: only the commit
        # that holds the message fails.
        self.fail_syncs(True, marker="sync-2")
        r = police.send([{"nhs_number": NHS_B}], message_id="sync-2")
        self.assertCtl(r, 5, self.gw, "refused: UNAVAILABLE [store.outcome_unknown]",
                       "same message_id", "use --message-id sync-2")
        self.assertNotIn(NHS_B, r.err)
        self.assertStoppedForTheStore()
        # Its frames reached the WAL before the sync failed, and isgd wrote
        # nothing after (not even at close): recovery replayed them. A
        # partner cannot know that, and resends under the same message_id.
        self.assertEqual(self.stored("sync-2"), 1)
        again = police.send_ok([{"nhs_number": NHS_B}], message_id="sync-2")
        self.assertTrue(again["duplicate"], again)
        self.assertEqual(self.stored("sync-2"), 1)
        got = self.partner(self.gw, "nhs").fetch_messages()
        self.assertEqual(sorted(m["message_id"] for m in got), ["sync-1", "sync-2"])
        self.assertEqual(self.partner(self.gw, "nhs").fetch_messages(), [])
        self.audit_verify(self.gw, "after the restart")

    def test_ack_and_fetch_whose_commit_fails(self):
        police = self.partner(self.gw, "police")
        police.send_ok([{"nhs_number": NHS_A}], message_id="sync-1")
        police.send_ok([{"nhs_number": NHS_B}], message_id="sync-2")
        trust = self.connect(self.gw, "nhs")
        got = self.expect(self.gw, trust.request(fetch=self.pb.FetchRequest(max_messages=1)), "fetch_result")
        first = got.deliveries[0].gateway_id
        self.fail_syncs(True)
        # The second message's message.delivered entry cannot be made durable.
        self.assertOutcomeUnknown(trust.request(fetch=self.pb.FetchRequest(max_messages=1)),
                                  "fetch again")
        self.assertStoppedForTheStore()
        trust = self.connect(self.gw, "nhs")
        got = self.expect(self.gw, trust.request(fetch=self.pb.FetchRequest()), "fetch_result")
        self.assertEqual([d.message_id for d in got.deliveries], ["sync-1", "sync-2"])
        ids = [d.gateway_id for d in got.deliveries]
        self.assertEqual(ids[0], first)
        self.fail_syncs(True)
        self.assertOutcomeUnknown(trust.request(ack=self.pb.Ack(gateway_ids=ids)), "acknowledge again")
        self.assertStoppedForTheStore()
        trust = self.connect(self.gw, "nhs")
        done = self.expect(self.gw, trust.request(ack=self.pb.Ack(gateway_ids=ids)), "ack_result")
        # Acknowledged now, or before the stop (then unknown): each once, never both.
        self.assertEqual(done.acknowledged + len(done.unknown_ids), 2, done)
        got = self.expect(self.gw, trust.request(fetch=self.pb.FetchRequest()), "fetch_result")
        self.assertEqual(list(got.deliveries), [])
        self.audit_verify(self.gw, "after the restarts")


# --------------------------------------------------------------------------
# A damaged store file.

class TestStoreRemoved(FaultCase):
    """
    The store's file deleted (or replaced) under a running isgd: whatever
    it wrote from then on would be lost when it stops, so it stops storing
    at once (store.unlinked), answers nothing it commits after that with a
    receipt, and exits with the status of a failed store.
    """

    def remove_store(self, gw):
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(gw.store_path + suffix)
            except FileNotFoundError:
                pass

    def assertStoppedForTheRemoval(self, gw):
        try:
            gw.proc.wait(timeout=5 * isgtest.SLOW)
        except subprocess.TimeoutExpired:
            self.fail("isgd did not stop after its store was removed\n%s" % gw.diagnostics())
        gw.stop(expect_rc=EXIT_STORE_FAILED)
        self.assertRegex(gw.log, r'event=store\.unlinked path="?%s"? '
                                 % re.escape(gw.store_path))
        self.assertIn('event=shutdown.start reason="the store failed"', gw.log)

    def test_removed_while_idle_stops_isgd(self):
        gw = self.gateway()
        police = self.connect(gw, "police")
        self.expect(gw, police.request(send=self.send_request("before", [{"nhs_number": NHS_A}])),
                    "send_result")
        self.remove_store(gw)
        self.assertStoppedForTheRemoval(gw)

    def test_no_receipt_for_a_send_after_the_removal(self):
        gw = self.gateway()
        police = self.connect(gw, "police")
        self.expect(gw, police.request(send=self.send_request("before", [{"nhs_number": NHS_A}])),
                    "send_result")
        self.remove_store(gw)
        # At once, well before isgd's once-a-second look: the commit finds it.
        try:
            reply = police.request(send=self.send_request("after", [{"nhs_number": NHS_B}]))
        except (EOFError, OSError):
            reply = None  # closed: no receipt either
        if reply is not None:
            e = self.expect(gw, reply, "error")
            self.assertEqual(self.pb.ErrorCode.Name(e.code), "UNAVAILABLE", e)
            self.assertEqual(e.audit_index, 0, e)
        self.assertStoppedForTheRemoval(gw)


class TestCorruptStore(FaultCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = isgtest.make_tmpdir("isg-faults-corrupt-")
        cls.addClassCleanup(isgtest.remove_tmpdir, cls.root)
        # One store with some history, stopped cleanly (its WAL checkpointed into the file).
        gw = isgtest.Gateway(os.path.join(cls.root, "gw"), cls.pki,
                             isgtest.write_policy(os.path.join(cls.root, "policies")))
        try:
            pb = cls.pb
            with isgtest.FrameConn(gw, cls.pki.certs["police"]) as police:
                for i in range(24):
                    req = pb.SendRequest(message_id="corrupt-%d" % i, recipient="nhs-trust",
                                         agreement_id=AGREEMENT_ID, dataset=DATASET)
                    req.records.append(pb_record(pb, {"nhs_number": NHS_A, "age": i,
                                                      "concern_summary": "%s %d %s" % (SUMMARY, i, "z" * 600)}))
                    if police.request(send=req).WhichOneof("body") != "send_result":
                        raise AssertionError("send corrupt-%d failed\n%s" % (i, gw.diagnostics()))
            with isgtest.FrameConn(gw, cls.pki.certs["nhs"]) as nhs:
                if len(nhs.request(fetch=pb.FetchRequest(max_messages=10)).fetch_result.deliveries) != 10:
                    raise AssertionError("fetch did not return 10 messages\n%s" % gw.diagnostics())
        except BaseException:
            gw.close()
            raise
        gw.stop()
        cls.good = os.path.join(cls.root, "good.db")
        shutil.copyfile(gw.store_path, cls.good)
        cls.config = gw.config

    def setUp(self):
        super().setUp()
        self.gw = self.gateway(start=False)
        self.gw.config = dict(self.config, listen=self.gw.address,
                              store=dict(self.config["store"], path=self.gw.store_path))
        self.gw.write_config()
        shutil.rmtree(self.gw.keys_dir)
        shutil.copytree(os.path.join(self.root, "gw", "keys"), self.gw.keys_dir)
        shutil.copyfile(self.good, self.gw.store_path)
        os.chmod(self.gw.store_path, 0o600)

    def assertRefusesStore(self, *expected):
        """isgd refuses the store with a message naming it; the directory is left exactly as it was."""
        store_dir = os.path.dirname(self.gw.store_path)
        before = sha256_file(self.gw.store_path)
        listing = tree_listing(store_dir)
        err = self.run_isgd_refused(self.gw)
        self.assertIn("isgd: store '%s'" % self.gw.store_path, err)
        for e in expected:
            self.assertRegex(err, e)
        self.assertEqual(sha256_file(self.gw.store_path), before, "isgd changed the store file")
        self.assertEqual(tree_listing(store_dir), listing, "isgd changed the store directory")
        return err

    def page_size(self):
        with open(self.gw.store_path, "rb") as f:
            hdr = f.read(100)
        size = int.from_bytes(hdr[16:18], "big")
        return 65536 if size == 1 else size

    def test_pristine_copy_starts(self):
        """The control: the unchanged copy of the store is accepted, with its messages."""
        self.gw.start()
        msgs = self.partner(self.gw, "nhs").fetch_messages(max=100)
        self.assertEqual([m["message_id"] for m in msgs], ["corrupt-%d" % i for i in range(24)])

    def test_second_isgd_on_the_store_refused(self):
        """A second isgd on a store in use, on a port of its own, exits naming the store, and
        the first goes on serving."""
        self.gw.start()
        other = os.path.join(os.path.dirname(self.gw.config_path), "second.yaml")
        isgtest.write_yaml(other, dict(self.gw.config, listen="127.0.0.1:%d" % isgtest.free_port()))
        err = self.run_isgd_refused(self.gw, other)
        self.assertIn("isgd: store '%s' is in use by another process" % self.gw.store_path, err)
        self.assertTrue(self.gw.running)
        msgs = self.partner(self.gw, "nhs").fetch_messages(max=100)
        self.assertEqual([m["message_id"] for m in msgs], ["corrupt-%d" % i for i in range(24)])
        self.audit_verify(self.gw, "after a second isgd was refused")

    def test_second_isgd_on_the_port_refused(self):
        """A second isgd on the port of a running one, even on a store of its own, exits before
        it listens (SO_REUSEPORT would have let it share the port and take some of the first's
        partners), and the first goes on serving."""
        self.gw.start()
        second = self.gateway(name="second", start=False, listen=self.gw.address)
        err = self.run_isgd_refused(second)
        self.assertIn("isgd: cannot listen on %s: another process is listening on it" % self.gw.address, err)
        self.assertFalse(os.path.exists(second.store_path), "the second isgd opened its store")
        self.assertTrue(self.gw.running)
        msgs = self.partner(self.gw, "nhs").fetch_messages(max=100)
        self.assertEqual([m["message_id"] for m in msgs], ["corrupt-%d" % i for i in range(24)])

    def test_sqlite_header_overwritten(self):
        with open(self.gw.store_path, "r+b") as f:
            f.write(b"\0" * 16)
        self.assertRefusesStore(r"is not an SQLite database; refusing to use it")

    def test_header_fields_overwritten(self):
        """The magic intact, the page size and the schema format after it garbage."""
        with open(self.gw.store_path, "r+b") as f:
            f.seek(16)
            f.write(b"\xa5" * 84)
        self.assertRefusesStore(r"cannot read: (file is not a database|database disk image is malformed)")

    def test_btree_page_overwritten(self):
        """A page of the audit table, in the middle of the file, overwritten with garbage."""
        pages = read_store(self.gw.store_path,
                           "SELECT pageno FROM dbstat WHERE name = 'audit' AND pagetype IN ('leaf', 'internal')")
        self.assertGreater(len(pages), 2, "the store is too small to have a page in the middle")
        size = self.page_size()
        total = os.path.getsize(self.gw.store_path) // size
        page = min((p for (p,) in pages), key=lambda p: abs(p - total // 2))
        with open(self.gw.store_path, "r+b") as f:
            f.seek((page - 1) * size)
            f.write(b"\xa5" * size)
        self.assertRefusesStore(r"fails SQLite's integrity check")

    def tamper(self, sql, args=()):
        db = sqlite3.connect(self.gw.store_path)
        try:
            db.execute(sql, args)
            db.commit()
        finally:
            db.close()
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.gw.store_path))), ["isg.db"])

    def test_payloads_that_do_not_open_are_passed_over(self):
        """The first five messages' sealed payloads changed: each is logged and
        left in the store, and a fetch of one message at a time gets the sixth,
        not an empty answer for as long as the five stay at the head."""
        for i in range(5):
            (payload,), = read_store(self.gw.store_path,
                                     "SELECT payload FROM messages WHERE message_id = 'corrupt-%d'" % i)
            changed = bytes(payload[:-1]) + bytes([payload[-1] ^ 0x01])
            self.tamper("UPDATE messages SET payload = ? WHERE message_id = ?", (changed, "corrupt-%d" % i))
        self.gw.start()
        pb = self.pb
        with isgtest.FrameConn(self.gw, self.pki.certs["nhs"]) as nhs:
            got = nhs.request(fetch=pb.FetchRequest(max_messages=1)).fetch_result.deliveries
            self.assertEqual([d.message_id for d in got], ["corrupt-5"])
            nhs.request(ack=pb.Ack(gateway_ids=[got[0].gateway_id]))
        self.assertEqual(self.gw.log.count("event=store.unseal_failed"), 5, self.gw.log)
        msgs = self.partner(self.gw, "nhs").fetch_messages(max=100)
        self.assertEqual([m["message_id"] for m in msgs], ["corrupt-%d" % i for i in range(6, 24)])

    def test_audit_entry_changed(self):
        """An old "message.accepted" entry says 2 records instead of 1: the checkpoint does not match."""
        (seq, entry), = read_store(self.gw.store_path, "SELECT seq, entry FROM audit WHERE kind = 'message.accepted'"
                                   " ORDER BY seq LIMIT 1 OFFSET 5")
        changed = entry.replace(b'"records":1,', b'"records":2,')
        self.assertNotEqual(changed, entry)
        self.tamper("UPDATE audit SET entry = ? WHERE seq = ?", (changed, seq))
        size = read_store(self.gw.store_path, "SELECT max(size) FROM checkpoints")[0][0]
        self.assertGreater(size, seq)
        self.assertRefusesStore(r"audit log does not match its checkpoint of size %d" % size)

    def test_audit_entry_deleted(self):
        self.tamper("DELETE FROM audit WHERE seq = 12")
        self.assertRefusesStore(r"audit entry 12 is missing \(the log jumps from 11 to 13\)")

    def test_not_an_isg_store(self):
        db = sqlite3.connect(self.gw.store_path + ".other")
        db.execute("CREATE TABLE t(x)")
        db.commit()
        db.close()
        os.replace(self.gw.store_path + ".other", self.gw.store_path)
        self.assertRefusesStore(r"is an SQLite database but not an ISG store")


# --------------------------------------------------------------------------
# A missing store: made only when asked for (--new-store), never silently.

NO_STORE = ("isgd: store '%s' does not exist; if its disk was lost or its volume is not mounted, "
            "mount it or restore the latest backup there first (docs/operations.md, Backups and "
            "restore); for a new gateway only, start isgd once with --new-store\n")
STORE_EXISTS = ("isgd: store '%s' already exists; --new-store creates a store only where there is "
                "none: start isgd without it\n")


class TestStoreMustExist(FaultCase):
    """
    A store lost with its disk, or on a data volume that did not mount (the
    empty mount point left), must stop isgd: a new empty store would give
    out gateway ids and audit indexes already given out, and start a second
    audit log under the same signing key. isgd makes a store only with
    --new-store, and refuses that where a store exists. Exit status 1, as
    for every refused store (operations.md, Exit status).
    """

    def setUp(self):
        super().setUp()
        self.gw = self.gateway(start=False)
        self.store_dir = os.path.dirname(self.gw.store_path)

    def isgd(self, *extra, check=False):
        """isgd (--check-config with check) on gw's configuration with extra options, run to its exit."""
        argv = [isgtest.ISGD] + (["--check-config"] if check else []) + list(extra)
        try:
            return subprocess.run(argv + ["--config", self.gw.config_path], capture_output=True,
                                  text=True, timeout=isgtest.START_TIMEOUT, stdin=subprocess.DEVNULL,
                                  preexec_fn=isgtest._die_with_parent)
        except subprocess.TimeoutExpired:
            self.fail("isgd %s kept running: it should have refused the store" % " ".join(extra))

    def assertRefused(self, p, message):
        self.assertEqual((p.returncode, p.stdout), (1, ""), p.stderr)
        self.assertIn(message, p.stderr)
        self.assertNotIn("event=isgd.started", p.stderr)
        self.assertNotIn("event=store.", p.stderr)

    def assertRefusedUnchanged(self, message, *extra):
        """isgd and isgd --check-config with extra refuse with message; the store's directory
        is left exactly as it was."""
        listing = tree_listing(self.store_dir)
        for check in (True, False):
            self.assertRefused(self.isgd(*extra, check=check), message)
            self.assertEqual(tree_listing(self.store_dir), listing, "isgd changed the store directory")

    def test_first_start_needs_new_store(self):
        """A new gateway: without --new-store, isgd and --check-config refuse and make nothing;
        with it, --check-config says OK and isgd makes the store and logs store.created."""
        self.assertRefusedUnchanged(NO_STORE % self.gw.store_path)
        self.assertEqual(os.listdir(self.store_dir), [])
        p = self.isgd("--new-store", check=True)
        self.assertEqual((p.returncode, p.stdout), (0, "configuration OK\n"), p.stderr)
        self.assertEqual(os.listdir(self.store_dir), [], "--check-config made the store")
        self.assertEqual(self.gw.new_store_args(), ["--new-store"])
        self.gw.start()
        self.assertIn("event=store.created path=%s" % self.gw.store_path, self.gw.log)
        self.assertEqual(oct(os.stat(self.gw.store_path).st_mode & 0o777), "0o600")

    def test_lost_store_refused_not_made_again(self):
        """The store file gone after a send (a lost disk, a volume not mounted): refused with
        what to do, nothing made; with the store put back, ids go on past the old ones."""
        self.gw.start()
        police = self.partner(self.gw, "police")
        first = police.send_ok([{"nhs_number": NHS_A, "concern_summary": SUMMARY}])["gateway_id"]
        self.gw.stop()
        away = os.path.join(self.gw.dir, "away.db")
        os.rename(self.gw.store_path, away)
        self.assertEqual(os.listdir(self.store_dir), [], "a clean stop leaves one file")
        self.assertRefusedUnchanged(NO_STORE % self.gw.store_path)
        self.assertEqual(os.listdir(self.store_dir), [])
        os.rename(away, self.gw.store_path)
        self.gw.start()
        self.assertEqual(self.gw.log.count("event=store.created"), 1, "made again")
        second = police.send_ok([{"nhs_number": NHS_B, "concern_summary": SUMMARY}])["gateway_id"]
        self.assertGreater(second, first)
        self.audit_verify(self.gw, "after the store was put back")

    def test_new_store_refused_where_one_exists(self):
        """--new-store on an existing store (left in a service unit, say): isgd and
        --check-config refuse it, and the store is left byte for byte as it was."""
        self.gw.start()
        self.partner(self.gw, "police").send_ok([{"nhs_number": NHS_A}])
        self.gw.stop()
        before = sha256_file(self.gw.store_path)
        self.assertRefusedUnchanged(STORE_EXISTS % self.gw.store_path, "--new-store")
        self.assertEqual(sha256_file(self.gw.store_path), before)
        self.gw.start()  # without the option, as before
        self.assertEqual(len(self.partner(self.gw, "nhs").fetch_messages()), 1)

    def test_empty_file_is_no_store(self):
        """A file of 0 bytes (made with touch, or truncated) is refused as a store, and
        --new-store does not replace it."""
        open(self.gw.store_path, "wb").close()
        os.chmod(self.gw.store_path, 0o600)
        self.assertRefused(self.isgd(), "isgd: store '%s' is an empty file, not a store; refusing "
                           "to use it: restore the latest backup there, or, for a new gateway, "
                           "remove the file and start isgd once with --new-store\n" % self.gw.store_path)
        self.assertRefusedUnchanged(STORE_EXISTS % self.gw.store_path, "--new-store")
        self.assertEqual(os.path.getsize(self.gw.store_path), 0)

    def test_no_new_store_beside_a_wal_file(self):
        """The store file gone but its -wal file left: SQLite would read the old WAL into a
        new store, so --new-store refuses, and without it the missing store is refused."""
        self.gw.start()
        self.partner(self.gw, "police").send_ok([{"nhs_number": NHS_A}])
        wal = self.gw.store_path + "-wal"
        self.assertTrue(os.path.exists(wal), "isgd keeps a WAL while it runs")
        kept = os.path.join(self.gw.dir, "kept-wal")
        shutil.copyfile(wal, kept)
        self.gw.stop()
        os.remove(self.gw.store_path)
        shutil.copyfile(kept, wal)
        self.assertRefusedUnchanged(
            "isgd: store '%s' does not exist, but its WAL file '%s' does: the store file was lost "
            "or moved; put it back, or restore the latest backup there and remove the '-wal' and "
            "'-shm' files (docs/operations.md, Backups and restore); no store is made beside a "
            "WAL file\n" % (self.gw.store_path, wal), "--new-store")
        self.assertRefusedUnchanged(NO_STORE % self.gw.store_path)


# --------------------------------------------------------------------------
# Key files.

class TestKeyFiles(FaultCase):
    FILES = ("storage.key", "audit-signing.key", os.path.join("domains", "audit.key"))

    def setUp(self):
        super().setUp()
        self.gw = self.gateway(start=False)

    def assertRefusedCreatingNothing(self, *expected):
        keys_before = tree_listing(self.gw.keys_dir)
        err = self.run_isgd_refused(self.gw)
        for e in expected:
            self.assertIn(e, err)
        self.assertEqual(os.listdir(os.path.dirname(self.gw.store_path)), [], "isgd created a store")
        self.assertEqual(tree_listing(self.gw.keys_dir), keys_before, "isgd changed the key directory")
        return err

    def test_missing_key_files(self):
        for name in self.FILES:
            with self.subTest(file=name):
                path = os.path.join(self.gw.keys_dir, name)
                os.rename(path, path + ".away")
                try:
                    if name == "storage.key" or name == "audit-signing.key":
                        self.assertRefusedCreatingNothing(
                            "key file '%s' does not exist; restore the keys directory from its "
                            "backup, or create one for a new gateway with 'isgctl keys init'" % path)
                    else:
                        self.assertRefusedCreatingNothing(
                            "linkage domain 'audit' has no key in '%s'" % os.path.join(self.gw.keys_dir, "domains"))
                finally:
                    os.rename(path + ".away", path)
        self.assertChecksOut()

    def test_key_files_readable_by_group_or_others(self):
        for name in self.FILES:
            path = os.path.join(self.gw.keys_dir, name)
            for mode in (0o640, 0o604):
                with self.subTest(file=name, mode=oct(mode)):
                    os.chmod(path, mode)
                    try:
                        self.assertRefusedCreatingNothing("key file '%s' has mode %04o" % (path, mode))
                    finally:
                        os.chmod(path, 0o600)
        self.assertChecksOut()

    def test_policy_checked_when_the_key_process_cannot_start(self):
        """
        --check-config prints every error, and a start every error that
        stops it: a broken policy too when a key file keeps the key process
        from starting (only the domain keys, which it would load, go
        unchecked), so the admin does not fix one only to meet the other.
        """
        path = os.path.join(self.gw.keys_dir, "storage.key")
        agreement = os.path.join(self.gw.policy_dir, "agreements", AGREEMENT_ID + ".yaml")
        isgtest.write_policy(self.gw.policy_dir,
                             agreements=[isgtest.default_agreement(recipents=["nhs-trust"])])
        os.rename(path, path + ".away")
        try:
            policy_error = re.escape(agreement) + r":\d+:\d+: error: unknown key 'recipents'"
            self.assertRegex(self.check_config_refused(), policy_error)
            err = self.assertRefusedCreatingNothing("key file '%s' does not exist" % path)
            self.assertRegex(err, policy_error)
        finally:
            os.rename(path + ".away", path)
        isgtest.write_policy(self.gw.policy_dir)
        self.assertChecksOut()

    def test_key_directory_writable_by_group_or_others(self):
        """Whoever can write the key directory can replace its keys: isgd and --check-config refuse it."""
        keys = self.gw.keys_dir
        for mode in (0o777, 0o770, 0o702):
            with self.subTest(mode=oct(mode)):
                os.chmod(keys, mode)
                try:
                    want = "key directory '%s' has mode %04o" % (keys, mode)
                    self.assertRefusedCreatingNothing(want)
                    self.assertIn(want, self.check_config_refused())
                finally:
                    os.chmod(keys, 0o700)
        self.assertChecksOut()

    def test_fifo_in_place_of_a_key(self):
        """A FIFO where a key file or the TLS key should be is refused at once, never read (which would hang)."""
        tls_key = self.gw.config["tls"]["key"]
        for path, what in ((os.path.join(self.gw.keys_dir, "storage.key"), "key file '%s'"),
                           (tls_key, "TLS key '%s' (tls.key)")):
            with self.subTest(path=path):
                os.rename(path, path + ".away")
                os.mkfifo(path, 0o600)
                try:
                    self.assertRefusedCreatingNothing("isgd: %s is not a regular file\n"
                                                      % (what % path))
                finally:
                    os.unlink(path)
                    os.rename(path + ".away", path)
        self.assertChecksOut()

    def tls_copies(self):
        """The gateway's certificate chain and partner CA bundle copied into its directory, for this test to break."""
        tls = self.gw.config["tls"]
        for key in ("certificate", "client_ca"):
            copy = os.path.join(self.gw.dir, key + ".pem")
            shutil.copyfile(tls[key], copy)
            tls[key] = copy
        self.gw.write_config()
        return tls

    def test_fifo_in_place_of_a_tls_file(self):
        """A FIFO where the certificate or the partner CA bundle should be is refused at once, never read (which would hang)."""
        tls = self.tls_copies()
        for key, what in (("certificate", "certificate"), ("client_ca", "partner CA bundle")):
            with self.subTest(file=key):
                path = tls[key]
                os.rename(path, path + ".away")
                os.mkfifo(path, 0o600)
                try:
                    want = "%s '%s' is not a regular file" % (what, path)
                    self.assertRefusedCreatingNothing(want)
                    self.assertIn(want, self.check_config_refused())
                finally:
                    os.unlink(path)
                    os.rename(path + ".away", path)
        self.assertChecksOut()

    def test_reload_with_a_fifo_in_place_of_a_tls_file(self):
        """
        A SIGHUP that finds a FIFO where the partner CA bundle should be
        keeps the running certificates, and isgd still serves and stops at
        SIGTERM: the reload runs in the signal loop, and a blocking open
        would wait there for a writer.
        """
        path = self.tls_copies()["client_ca"]
        self.gw.start()
        os.rename(path, path + ".away")
        os.mkfifo(path, 0o600)
        try:
            outcome, text = self.gw.reload()
            self.assertEqual(outcome, "loaded", text)
            self.assertRegex(text, r"event=tls\.reload_failed reason=\"partner CA bundle '%s' is not a regular "
                                   r"file\" action=\"kept the running certificates\"" % re.escape(path))
            c = self.connect(self.gw, "police")
            self.expect(self.gw, c.request(hello=self.pb.Hello(protocol_version=1, client_name="after")), "welcome")
            c.close()
            self.assertLess(self.gw.stop(), 5.0)
        finally:
            os.unlink(path)
            os.rename(path + ".away", path)

    def test_tls_files_missing(self):
        """A TLS file that is not there is named with the system's reason, not OpenSSL's."""
        tls = self.gw.config["tls"]
        for key in ("certificate", "client_ca"):
            with self.subTest(file=key):
                path = tls[key]
                os.rename(path, path + ".away")
                try:
                    self.assertIn("'%s': No such file or directory" % path, self.check_config_refused())
                finally:
                    os.rename(path + ".away", path)
        self.assertChecksOut()

class TestPolicyModes(FaultCase):
    """
    A policy directory, its agreements/ or a policy file that group or
    others may write is refused at start, at a reload (which keeps the
    running policy) and by isgctl policy check: whoever may write it could
    turn a pseudonymise into a pass.
    """

    def setUp(self):
        super().setUp()
        self.gw = self.gateway(start=False)
        self.agreement = os.path.join(self.gw.policy_dir, "agreements", AGREEMENT_ID + ".yaml")
        self.adir = os.path.dirname(self.agreement)

    def refusal(self, path, what, mode):
        return "%s: error: %s is writable by group or others (mode %04o), so anyone who can write it " \
               "can change the policy; chmod go-w it" % (path, what, mode)

    def test_start_and_check_refuse(self):
        for path, what, mode, good in ((self.agreement, "policy file", 0o666, 0o644),
                                       (self.adir, "agreements directory", 0o777, 0o755),
                                       (self.gw.policy_dir, "policy directory", 0o775, 0o755)):
            with self.subTest(path=path, mode=oct(mode)):
                os.chmod(path, mode)
                try:
                    want = self.refusal(path, what, mode)
                    self.assertIn(want, self.run_isgd_refused(self.gw))
                    self.assertIn(want, self.check_config_refused())
                    r = isgtest.ctl("policy", "check", self.gw.policy_dir)
                    self.assertEqual(r.rc, 1, r)
                    self.assertIn(want, r.err)
                finally:
                    os.chmod(path, good)
        self.assertChecksOut()

    def test_reload_keeps_the_running_policy(self):
        self.gw.start()
        version = re.search(r"event=isgd\.started .*policy_version=(\w+)", self.gw.log).group(1)
        os.chmod(self.adir, 0o777)
        os.chmod(self.agreement, 0o666)
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "refused", text)
        self.assertIn("file=%s" % self.agreement, text)
        self.assertIn("file=%s" % self.adir, text)
        self.assertIn("(mode 0666)", text)
        self.assertIn("(mode 0777)", text)
        # The running set still serves: the agreement's exchange still passes.
        c = self.connect(self.gw, "police")
        self.expect(self.gw, c.request(send=self.send_request("m-1", [{"nhs_number": NHS_A}])), "send_result")
        os.chmod(self.adir, 0o755)
        os.chmod(self.agreement, 0o644)
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "loaded", text)
        self.assertIn("version=%s" % version, text)


class TestConfigChecked(FaultCase):
    """
    What a start refuses in isgd.yaml, --check-config refuses too, at the
    key's line and column: an ExecStartPre check that passes must not be
    followed by a start that fails.
    """

    def setUp(self):
        super().setUp()
        self.gw = self.gateway(start=False)

    def assertBothRefuse(self, want):
        self.assertIn(want, self.check_config_refused())
        self.assertIn(want, self.run_isgd_refused(self.gw))

    def test_listen_that_start_cannot_bind(self):
        good = self.gw.config["listen"]
        port = self.gw.port
        for listen, why in (
                # read as a host name, whose last label is all digits: a mistyped address
                ("10.0.0.300:%d", "invalid listen address '10.0.0.300:%d' (invalid host name or IPv4 address)"),
                ("999.1.1.1:%d", "invalid listen address '999.1.1.1:%d' (invalid host name or IPv4 address)"),
                # a name: isgd looks none up
                ("nonexistent.invalid:%d",
                 "invalid address 'nonexistent.invalid' for listen: not an IP address "
                 "(isgd does not look host names up)"),
                ("localhost:%d", "invalid address 'localhost' for listen: not an IP address")):
            with self.subTest(listen=listen):
                self.gw.config["listen"] = listen % port
                self.gw.write_config()
                try:
                    self.assertBothRefuse("%s:1:9: error: %s" % (self.gw.config_path, why.replace("%d", str(port))))
                finally:
                    self.gw.config["listen"] = good
                    self.gw.write_config()
        self.assertChecksOut()

    def test_user_refused_at_its_line(self):
        """A user: that isgd cannot serve as is named at its line and column, as every other error in the file."""
        for user, why in (("root", "user 'root' is root; name an unprivileged user"),
                          ("no-such-user-isg", "user 'no-such-user-isg' does not exist")):
            with self.subTest(user=user):
                self.gw.config["user"] = user
                self.gw.write_config()
                try:
                    with open(self.gw.config_path) as f:
                        line = next(i for i, l in enumerate(f, 1) if l.startswith("user:"))
                    self.assertBothRefuse("%s:%d:7: error: %s\n" % (self.gw.config_path, line, why))
                finally:
                    del self.gw.config["user"]
                    self.gw.write_config()
        self.assertChecksOut()

    def test_empty_paths(self):
        """A quoted empty path would be the configuration's directory: refused where it is written."""
        for section, key in (("store", "path"), ("tls", "crl"), ("tls", "key"), (None, "keys_dir")):
            with self.subTest(key=key):
                before = json.loads(json.dumps(self.gw.config))
                (self.gw.config[section] if section else self.gw.config)[key] = ""
                self.gw.write_config()
                try:
                    want = re.escape(self.gw.config_path) + r":\d+:\d+: error: path for %s is empty" % (
                        "%s.%s" % (section, key) if section else key)
                    self.assertRegex(self.check_config_refused(), want)
                    self.assertRegex(self.run_isgd_refused(self.gw), want)
                finally:
                    self.gw.config = before
                    self.gw.write_config()
        self.assertChecksOut()


# --------------------------------------------------------------------------
# SIGKILL under load.

# Rounds differ only in when the kill lands. Under valgrind each takes
# about 8 s, and what valgrind adds, memory errors on a restart's way
# through recovery, every round exercises: 8 rounds there, 20 at speed.
ROUNDS = 8 if isgtest.VALGRIND else 20
SENDERS = 3


def crash_records(mid):
    """The records of message mid: 1 to 4, content derived from the id so a delivery can be checked."""
    n = 1 + int(hashlib.sha256(mid.encode()).hexdigest()[:2], 16) % 4
    return [{"nhs_number": NHS_A, "age": i, "concern_summary": "crash %s %d" % (mid, i)} for i in range(n)]


class CrashModel:
    """What the partners know, from the answers they got; shared by the load threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {}  # message_id -> Receipt, for sends that got one
        self.unanswered = set()  # message_ids sent without an answer (isgd died)
        self.acked = set()  # gateway_ids whose ack was answered
        self.ack_unanswered = set()  # gateway_ids in an ack without an answer
        self.seen = {}  # gateway_id -> message_id, every delivery the recipient got
        self.violations = []
        self.stats = collections.Counter()


class TestCrashUnderLoad(FaultCase):
    def test_sigkill_under_load(self):
        seed = int(os.environ.get("ISG_FAULTS_SEED") or time.time_ns() % 1000000)
        self.rng = random.Random(seed)
        self.seed = seed
        # Checkpoints often, so that kills also land while one is written.
        gw = self.gateway(audit={"checkpoint_every": 7, "checkpoint_interval": "1s"})
        model = CrashModel()
        self.t0 = time.monotonic()
        for rnd in range(ROUNDS):
            self.round = rnd
            self.load_and_kill(gw, model, rnd)
            gw.start()
            self.audit_verify(gw, self.where("after the restart"))
            self.check_recovered(gw, model)
        # At the end: the recipient takes and acknowledges everything; nothing is left.
        drained = self.drain(gw, ack=True)
        for gid, d in drained.items():
            self.assertNotIn(gid, model.acked, self.where("gateway_id %d delivered again after its ack" % gid))
            model.acked.add(gid)
        self.assertEqual(self.drain(gw), {})
        self.assertEqual({r.gateway_id for r in model.sent.values()}, model.acked,
                         "every accepted message was acknowledged once")
        gw.stop()
        self.audit_verify(gw, "after the final stop")
        # Each message once in the store, with one entry for each step, however often isgd died.
        rows = read_store(gw.store_path, "SELECT message_id, id, state FROM messages")
        self.assertEqual({mid: gid for mid, gid, _ in rows}, {mid: r.gateway_id for mid, r in model.sent.items()})
        self.assertEqual({state for _, _, state in rows}, {2})
        kinds = dict(read_store(gw.store_path, "SELECT kind, count(*) FROM audit GROUP BY kind"))
        n = len(model.sent)
        self.assertEqual((kinds.get("message.accepted"), kinds.get("message.delivered"),
                          kinds.get("message.acknowledged")), (n, n, n), kinds)
        sys.stdout.write("test_faults: %d rounds, seed %d, %.1fs: %d messages; %s\n" % (
            ROUNDS, seed, time.monotonic() - self.t0, n, ", ".join("%s %d" % kv for kv in sorted(model.stats.items()))))

    def where(self, what):
        return "round %d (ISG_FAULTS_SEED=%d): %s" % (self.round, self.seed, what)

    # -- one round

    def load_and_kill(self, gw, model, rnd):
        stop = threading.Event()
        # A load thread ends quietly only when isgd goes away (OSError, EOF,
        # TLS error); anything else it raises (a reply to another request_id,
        # a frame that does not decode, a bug here) join() raises below.
        threads = [isgtest.Thread(self.sender, args=(gw, model, rnd, k, stop), name="sender %d" % k)
                   for k in range(SENDERS)]
        threads.append(isgtest.Thread(self.recipient, args=(gw, model, stop), name="recipient"))
        for t in threads:
            t.start()
        # isgd is an order of magnitude slower under valgrind: let it get going before the kill.
        lo, hi = (0.3, 1.2) if isgtest.VALGRIND else (0.05, 0.6)
        time.sleep(self.rng.uniform(lo, hi))
        pid = gw.proc.pid
        children = child_pids(pid)
        gw.kill()
        self.assertEqual(gw.last_rc, -9, self.where("isgd was not killed by SIGKILL"))
        stop.set()
        for t in threads:
            try:
                t.join(30 * isgtest.SLOW)
            except Exception as e:
                raise AssertionError(self.where("the %s thread raised %r" % (t.name, e))) from e
            self.assertFalse(t.is_alive(), self.where("a load thread hangs after the kill"))
        self.assertChildrenGone(children)
        self.assertValgrindClean(gw)
        with model.lock:
            self.assertEqual(model.violations, [], self.where("during the load"))

    def assertChildrenGone(self, children):
        deadline = time.monotonic() + 5 * isgtest.SLOW
        left = [p for p in children if pid_alive(p)]
        while left and time.monotonic() < deadline:
            time.sleep(0.02)
            left = [p for p in children if pid_alive(p)]
        for p in left:  # ours: started by the isgd this test started
            try:
                os.kill(p, 9)
            except ProcessLookupError:
                pass
        self.assertEqual(left, [], self.where("processes of isgd outlived its SIGKILL"))

    def assertValgrindClean(self, gw):
        """A killed isgd never reports its errors through valgrind's exit status: read them in its log."""
        if not isgtest.VALGRIND or not os.path.exists(gw.valgrind_log):
            return
        text = isgtest.read_text(gw.valgrind_log)
        if re.search(r"^==\d+== +(at|by) 0x|ERROR SUMMARY: [1-9]", text, re.M):
            self.fail(self.where("valgrind found errors in the killed isgd (or its children):\n" + text))

    def sender(self, gw, model, rnd, k, stop):
        try:
            conn = isgtest.FrameConn(gw, self.pki.certs["police"], timeout=10 * isgtest.SLOW)
        except (OSError, ssl.SSLError):
            return  # isgd died before this thread connected
        try:
            for i in range(100000):
                if stop.is_set():
                    return
                mid = "crash-%02d-%d-%05d" % (rnd, k, i)
                try:
                    reply = conn.request(send=self.send_request(mid, crash_records(mid)))
                except (OSError, EOFError, ssl.SSLError):
                    with model.lock:
                        model.unanswered.add(mid)
                    return
                with model.lock:
                    if reply.WhichOneof("body") != "send_result":
                        model.violations.append("send %s: %s" % (mid, reply))
                        return
                    r = reply.send_result.receipt
                    if r.message_id != mid or r.duplicate or r.record_count != len(crash_records(mid)):
                        model.violations.append("send %s: receipt %s" % (mid, r))
                    if model.seen.get(r.gateway_id, mid) != mid:
                        model.violations.append("send %s: receipt for gateway_id %d, delivered as %s"
                                                % (mid, r.gateway_id, model.seen[r.gateway_id]))
                    model.sent[mid] = r
        finally:
            conn.close()

    def recipient(self, gw, model, stop):
        pb = self.pb
        try:
            conn = isgtest.FrameConn(gw, self.pki.certs["nhs"], timeout=10 * isgtest.SLOW)
        except (OSError, ssl.SSLError):
            return
        try:
            while not stop.is_set():
                try:
                    reply = conn.request(fetch=pb.FetchRequest(max_messages=20, wait_ms=int(100 * isgtest.SLOW)))
                except (OSError, EOFError, ssl.SSLError):
                    return
                if reply.WhichOneof("body") != "fetch_result":
                    with model.lock:
                        model.violations.append("fetch: %s" % reply)
                    return
                ids = []
                with model.lock:
                    for d in reply.fetch_result.deliveries:
                        self.note_delivery(model, d)
                        ids.append(d.gateway_id)
                    model.ack_unanswered.update(ids)
                if not ids:
                    continue
                try:
                    reply = conn.request(ack=pb.Ack(gateway_ids=ids))
                except (OSError, EOFError, ssl.SSLError):
                    return
                with model.lock:
                    model.ack_unanswered.difference_update(ids)
                    if reply.WhichOneof("body") != "ack_result":
                        model.violations.append("ack: %s" % reply)
                        return
                    if reply.ack_result.acknowledged != len(ids) or reply.ack_result.unknown_ids:
                        model.violations.append("ack of %s: %s" % (ids, reply.ack_result))
                    model.acked.update(ids)
        finally:
            conn.close()

    def note_delivery(self, model, d):
        """Check one delivery against what the partners know; model.lock held."""
        gid, mid = d.gateway_id, d.message_id
        if gid in model.acked:
            model.violations.append("gateway_id %d (%s) delivered again after its ack" % (gid, mid))
        if mid in model.sent and model.sent[mid].gateway_id != gid:
            model.violations.append("%s delivered as gateway_id %d, its receipt said %d"
                                    % (mid, gid, model.sent[mid].gateway_id))
        elif mid not in model.sent and mid not in model.unanswered:
            # A send whose answer is still on its way, or one nobody sent.
            if not mid.startswith("crash-"):
                model.violations.append("a delivery nobody sent: %s" % mid)
        if d.sender != "met-police" or [pb_record_dict(r) for r in d.records] != crash_records(mid):
            model.violations.append("%s (gateway_id %d) delivered with other content" % (mid, gid))
        if model.seen.setdefault(gid, mid) != mid:
            model.violations.append("gateway_id %d was %s, now %s" % (gid, model.seen[gid], mid))

    # -- after the restart

    def drain(self, gw, ack=False):
        """Everything pending for the recipient, by gateway_id; no id twice in one pass."""
        pb = self.pb
        got = {}
        with isgtest.FrameConn(gw, self.pki.certs["nhs"]) as conn:
            while True:
                res = self.expect(gw, conn.request(fetch=pb.FetchRequest(max_messages=100)), "fetch_result")
                if not res.deliveries:
                    return got
                for d in res.deliveries:
                    self.assertNotIn(d.gateway_id, got, self.where("gateway_id %d twice in one drain" % d.gateway_id))
                    got[d.gateway_id] = d
                if ack:
                    a = self.expect(gw, conn.request(ack=pb.Ack(gateway_ids=[d.gateway_id for d in res.deliveries])),
                                    "ack_result")
                    self.assertEqual((a.acknowledged, list(a.unknown_ids)), (len(res.deliveries), []))

    def check_recovered(self, gw, model):
        pending = self.drain(gw)
        with model.lock:
            model.stats["pending after a restart"] += len(pending)
            for d in pending.values():
                self.note_delivery(model, d)
            self.assertEqual(model.violations, [], self.where("after the restart"))
            # No acknowledged send is lost ...
            for mid, r in model.sent.items():
                gid = r.gateway_id
                if gid not in model.acked and gid not in model.ack_unanswered:
                    self.assertIn(gid, pending, self.where("%s (gateway_id %d) was accepted and is lost"
                                                           % (mid, gid)))
            # ... none that was acked comes back, and nothing comes that nobody sent.
            for gid, d in pending.items():
                self.assertNotIn(gid, model.acked, self.where("gateway_id %d delivered after its ack" % gid))
                self.assertTrue(d.message_id in model.sent or d.message_id in model.unanswered,
                                self.where("%s was never sent" % d.message_id))
            # An ack without an answer either happened (the message is gone) or not (it is pending).
            for gid in model.ack_unanswered:
                model.stats["acks without answer, " + ("not done" if gid in pending else "done")] += 1
                if gid not in pending:
                    model.acked.add(gid)
            model.ack_unanswered.clear()
            unanswered = sorted(model.unanswered)
            model.unanswered.clear()
        pending_by_mid = {d.message_id: gid for gid, d in pending.items()}
        # A send without an answer is stored once or not at all: the resend's receipt says which.
        # A resend of one that was answered gets the same receipt again.
        again = self.rng.sample(sorted(model.sent), min(3, len(model.sent)))
        with isgtest.FrameConn(gw, self.pki.certs["police"]) as conn:
            for mid in unanswered:
                r = self.expect(gw, conn.request(send=self.send_request(mid, crash_records(mid))),
                                "send_result").receipt
                model.stats["sends without answer, " + ("new" if not r.duplicate else "stored")] += 1
                if mid in pending_by_mid:
                    self.assertTrue(r.duplicate, self.where("%s is stored, its resend not a duplicate" % mid))
                    self.assertEqual(r.gateway_id, pending_by_mid[mid])
                elif r.duplicate:
                    # stored, delivered and acknowledged before the kill
                    self.assertIn(r.gateway_id, model.acked, self.where("%s: duplicate of what?" % mid))
                    self.assertEqual(model.seen.get(r.gateway_id), mid)
                else:
                    self.assertNotIn(r.gateway_id, model.seen, self.where("%s: new gateway_id reused" % mid))
                model.sent[mid] = r
            for mid in again:
                r = self.expect(gw, conn.request(send=self.send_request(mid, crash_records(mid))),
                                "send_result").receipt
                first = model.sent[mid]
                self.assertTrue(r.duplicate, self.where("the resend of %s is not a duplicate" % mid))
                self.assertEqual((r.gateway_id, r.audit_index, r.accepted_at_ms, r.record_count),
                                 (first.gateway_id, first.audit_index, first.accepted_at_ms, first.record_count),
                                 self.where("the resend of %s got another receipt" % mid))


if __name__ == "__main__":
    unittest.main()
