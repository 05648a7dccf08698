"""
Scenario: isgctl store backup, the online backup of docs/operations.md
("Backups and restore").

A backup taken while a partner keeps sending holds every message accepted
before it began (most of which are still in isgd's WAL, where a copy of the
database file alone would miss them) and none sent after it ended; restored
as operations.md says into a gateway of its own with the same keys, it
starts, verifies, and delivers those messages. The output is a new file of
mode 0600 whatever the umask; nothing is left behind when the backup is
refused or fails; and it works with isgd stopped, creating nothing beside
the store.
"""

import datetime
import errno
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import unittest

import isgtest

NHS = "9434765919"
SUMMARY = re.compile(r"^store backup OK: (?P<path>.+), "
                     r"snapshot at (?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z), "
                     r"(?P<bytes>\d+) bytes, "
                     r"(?P<entries>\d+) audit entries, (?:latest checkpoint size (?P<size>\d+), "
                     r"root (?P<root>[A-Za-z0-9+/]{43}=)|no checkpoint yet)\n$")


# Preloaded into isgctl. The backup's temporary is a file in $ISG_TEST_DIR whose name starts
# with a dot. The first $ISG_TEST_HOLD_CALL (pwrite: SQLite writing the copy; fsync: isgctl
# syncing it) on it creates $ISG_TEST_HELD, then waits while $ISG_TEST_HOLD exists (a minute
# at most), so a test can send a signal at that point of the backup. A pwrite to it at offset
# $ISG_TEST_ZERO_AT writes zeros instead, a page of the copy gone bad; each one's offset and
# length are added to $ISG_TEST_WRITES. link() fails with errno
# $ISG_TEST_LINK_ERRNO, as on a filesystem without hard links, and renameat2() with
# $ISG_TEST_RENAME_ERRNO; with $ISG_TEST_RENAME_RACE, renameat2() first creates its target,
# as another program could.
SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static int is_temp(int fd)
{
	const char *dir = getenv("ISG_TEST_DIR");
	char link[64], path[4096];
	if (!dir)
		return 0;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, sizeof(path) - 1);
	if (n < 0)
		return 0;
	path[n] = 0;
	size_t len = strlen(dir);
	return strncmp(path, dir, len) == 0 && path[len] == '/' && path[len + 1] == '.';
}

static void hold(const char *call, int fd)
{
	static int held;
	const char *want = getenv("ISG_TEST_HOLD_CALL");
	if (held || !want || strcmp(want, call) != 0 || !is_temp(fd))
		return;
	held = 1;
	int e = errno;
	close(open(getenv("ISG_TEST_HELD"), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
	struct timespec tick = {0, 10000000};
	for (int i = 0; i < 6000 && access(getenv("ISG_TEST_HOLD"), F_OK) == 0; i++)
		nanosleep(&tick, NULL);
	errno = e;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
	hold("pwrite", fd);
	ssize_t (*real)(int, const void *, size_t, off_t) = dlsym(RTLD_NEXT, "pwrite64");
	const char *log = getenv("ISG_TEST_WRITES");
	if (log && is_temp(fd)) {
		FILE *f = fopen(log, "ae");
		if (f) {
			fprintf(f, "%lld %zu\n", (long long)off, n);
			fclose(f);
		}
	}
	const char *zero_at = getenv("ISG_TEST_ZERO_AT");
	if (zero_at && off == atoll(zero_at) && is_temp(fd)) {
		void *zeros = calloc(1, n);
		ssize_t w = zeros ? real(fd, zeros, n, off) : -1;
		free(zeros);
		return w;
	}
	return real(fd, buf, n, off);
}

int fsync(int fd)
{
	hold("fsync", fd);
	int (*real)(int) = dlsym(RTLD_NEXT, "fsync");
	return real(fd);
}

int link(const char *from, const char *to)
{
	const char *e = getenv("ISG_TEST_LINK_ERRNO");
	if (e) {
		errno = atoi(e);
		return -1;
	}
	int (*real)(const char *, const char *) = dlsym(RTLD_NEXT, "link");
	return real(from, to);
}

int renameat2(int fromdir, const char *from, int todir, const char *to, unsigned flags)
{
	const char *e = getenv("ISG_TEST_RENAME_ERRNO");
	if (e) {
		errno = atoi(e);
		return -1;
	}
	if (getenv("ISG_TEST_RENAME_RACE")) {
		int fd = openat(todir, to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd >= 0) {
			write(fd, "raced\n", 6);
			close(fd);
		}
	}
	int (*real)(int, const char *, int, const char *, unsigned) =
	    dlsym(RTLD_NEXT, "renameat2");
	return real(fromdir, from, todir, to, flags);
}
"""
_shim = []


def shim_env(**variables):
    """The environment that preloads SHIM_C (built once) into isgctl, with variables."""
    if not _shim:
        d = tempfile.mkdtemp(prefix="isg-backup-shim-")
        src, lib = os.path.join(d, "shim.c"), os.path.join(d, "shim.so")
        with open(src, "w") as f:
            f.write(SHIM_C)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", lib, src, "-ldl"], check=True)
        _shim.append(lib)
    env = dict(os.environ, LD_PRELOAD=_shim[0], **{k: str(v) for k, v in variables.items()})
    asan = env.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = asan + (":" if asan else "") + "verify_asan_link_order=0"
    return env


def unix_time(at):
    """The summary's snapshot time in Unix seconds."""
    return datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def open_copy(path):
    """A store file opened read-only and immutable: nothing is created beside it."""
    return sqlite3.connect("file:%s?mode=ro&immutable=1" % path, uri=True)


def message_ids(path):
    with open_copy(path) as db:
        return {row[0] for row in db.execute("SELECT id FROM messages")}


def audit_last(path):
    with open_copy(path) as db:
        return db.execute("SELECT count(*), coalesce(max(seq), 0) FROM audit").fetchone()


class BackupCase(isgtest.ScenarioCase):
    def start(self, **overrides):
        self.pol = self.policy()
        overrides.setdefault("audit", {"checkpoint_interval": "1s"})
        gw = self.gateway(self.pol, **overrides)
        return gw, self.partner(gw, "police")

    def backup(self, *args, preexec_fn=None, cwd=None, env=None):
        argv = [isgtest.ISGCTL, "store", "backup"] + [str(a) for a in args]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=isgtest.CTL_TIMEOUT,
                           stdin=subprocess.DEVNULL, preexec_fn=preexec_fn, cwd=cwd, env=env)
        return isgtest.CtlResult(p.returncode, p.stdout, p.stderr, argv)

    def backup_held(self, call, sig, out, *args, preexec_fn=None, **variables):
        """store backup ARGS OUTPUT held at its first CALL on its temporary (SHIM_C), sent
        SIG there, then let go."""
        flag, held = os.path.join(self.tmp, "hold"), os.path.join(self.tmp, "held")
        open(flag, "w").close()
        env = shim_env(ISG_TEST_DIR=os.path.realpath(os.path.dirname(out)),
                       ISG_TEST_HOLD_CALL=call, ISG_TEST_HOLD=flag, ISG_TEST_HELD=held,
                       **variables)
        argv = [isgtest.ISGCTL, "store", "backup"] + [str(a) for a in args] + [out]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL, env=env, preexec_fn=preexec_fn)
        try:
            deadline = time.monotonic() + isgtest.CTL_TIMEOUT
            while not os.path.exists(held):
                self.assertIsNone(p.poll(), "isgctl ended before its %s was held" % call)
                self.assertLess(time.monotonic(), deadline, "isgctl's %s never held" % call)
                time.sleep(0.01)
            p.send_signal(sig)
        finally:
            os.unlink(flag)
            stdout, stderr = p.communicate(timeout=isgtest.CTL_TIMEOUT)
        os.unlink(held)
        return isgtest.CtlResult(p.returncode, stdout, stderr, argv)

    def assertBackedUp(self, r, path, gw=None):
        """Exit 0 and the summary line; returns its match."""
        self.assertCtl(r, 0, gw)
        m = SUMMARY.match(r.out)
        self.assertIsNotNone(m, r)
        self.assertEqual(m.group("path"), str(path))
        self.assertEqual(int(m.group("bytes")), os.path.getsize(path))
        self.assertEqual(int(m.group("entries")), audit_last(path)[0])
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        return m

    def assertOnly(self, directory, names):
        """directory holds exactly names: no temporary copy left beside them."""
        self.assertEqual(sorted(os.listdir(directory)), sorted(names))


class TestOnlineBackup(BackupCase):
    def test_backup_while_sending_restores_whole(self):
        gw, police = self.start()
        sent, lock, stop = [], threading.Lock(), threading.Event()

        def sender():
            i = 0
            while not stop.is_set():
                t0 = time.monotonic()
                receipt = police.send_ok([{"nhs_number": NHS, "age": i % 100}])
                with lock:
                    sent.append((t0, time.monotonic(), receipt, time.time()))
                i += 1

        def sent_count():
            with lock:
                return len(sent)

        def wait_for(n):
            deadline = time.monotonic() + 30 * isgtest.SLOW
            while sent_count() < n:
                self.assertLess(time.monotonic(), deadline, "the sender stalled")
                t.raise_exception()
                time.sleep(0.02)

        t = isgtest.Thread(target=sender, name="sender")
        t.start()
        try:
            wait_for(10)
            self.wait_checkpoint(gw)  # so that the summary has a checkpoint to name
            began = time.monotonic()
            with lock:
                before = [rec for _, done, rec, _ in sent if done < began]
            # The premise: most of what was committed is still in the WAL, so a
            # copy of the database file alone misses it. The backup must not.
            raw = os.path.join(self.tmp, "raw.db")
            shutil.copyfile(gw.store_path, raw)
            try:
                raw_ids = message_ids(raw)
            except sqlite3.Error:
                raw_ids = set()
            out = os.path.join(self.tmp, "backups", "store-1.db")
            os.makedirs(os.path.dirname(out))
            wall_began = time.time()
            r = self.backup("--config", gw.config_path, out)
            wall_ended = time.time()
            ended = time.monotonic()
            wait_for(sent_count() + 5)  # the sender went on, unblocked
        finally:
            stop.set()
            t.join(60)
        self.assertFalse(t.is_alive())
        m = self.assertBackedUp(r, out, gw)
        self.assertOnly(os.path.dirname(out), ["store-1.db"])
        before_ids = {rec["gateway_id"] for rec in before}
        after_ids = {rec["gateway_id"] for t0, _, rec, _ in sent if t0 > ended}
        self.assertTrue(after_ids)
        self.assertFalse(before_ids <= raw_ids,
                         "premise: the database file alone already held every message, so "
                         "this test cannot tell a snapshot from a copy of the file")

        # One snapshot: everything committed before the backup began, nothing sent after it ended.
        in_backup = message_ids(out)
        self.assertLessEqual(before_ids, in_backup)
        self.assertTrue(after_ids.isdisjoint(in_backup))
        entries, last = audit_last(out)
        self.assertEqual(entries, last)
        self.assertGreaterEqual(last, max(rec["audit_index"] for rec in before))
        self.assertLess(last, min(rec["audit_index"] for t0, _, rec, _ in sent if t0 > ended))
        # The snapshot's time, taken during the backup: every send answered before it is in.
        at = unix_time(m.group("at"))
        self.assertLessEqual(wall_began - 0.001, at)
        self.assertLessEqual(at, wall_ended)
        answered = {rec["gateway_id"] for _, _, rec, done in sent if done < at}
        self.assertLessEqual(answered, in_backup)

        # Restored as operations.md says: the same keys and origin, mode 0600, no -wal.
        restored = self.restore(out)
        time.sleep(1.5 * isgtest.SLOW)  # one audit.checkpoint_interval: the copy's tail signed
        r = isgtest.ctl("audit", "verify", "--config", restored.config_path)
        self.assertCtl(r, 0, restored)
        self.assertIn("audit log OK", r.out)
        self.assertEqual(self.fetch_all(restored), in_backup)
        self.assertIsNotNone(m.group("size"), r)
        self.assertLessEqual(int(m.group("size")), entries)

    def wait_checkpoint(self, gw):
        deadline = time.monotonic() + 10 * isgtest.SLOW
        while isgtest.ctl("audit", "checkpoint", "--config", gw.config_path).rc != 0:
            self.assertLess(time.monotonic(), deadline, "no checkpoint signed")
            time.sleep(0.1)

    def restore(self, backup):
        os.makedirs(os.path.join(self.tmp, "restored"))
        shutil.copytree(self.gateway_keys(), os.path.join(self.tmp, "restored", "keys"))
        gw = self.gateway(self.pol, name="restored", start=False,
                          audit={"checkpoint_interval": "1s"})
        shutil.copyfile(backup, gw.store_path)
        os.chmod(gw.store_path, 0o600)
        gw.start()
        return gw

    def gateway_keys(self):
        return self._gateways[0].keys_dir

    def fetch_all(self, gw):
        nhs = self.partner(gw, "nhs")
        ids = set()
        while True:
            got = {msg["gateway_id"] for msg in nhs.fetch_messages()}
            if not got:
                return ids
            ids |= got

    def test_output_is_0600_whatever_the_umask(self):
        gw, police = self.start()
        police.send_ok([{"nhs_number": NHS}])
        out_dir = os.path.join(self.tmp, "out")
        os.makedirs(out_dir)
        # a relative name that SQLite would take for a URI if given as it is
        r = self.backup("--store", gw.store_path, "file:b.db", cwd=out_dir,
                        preexec_fn=lambda: os.umask(0))
        self.assertCtl(r, 0, gw)
        self.assertTrue(r.out.startswith("store backup OK: file:b.db, "), r)
        self.assertEqual(os.stat(os.path.join(out_dir, "file:b.db")).st_mode & 0o777, 0o600)
        self.assertOnly(out_dir, ["file:b.db"])


    def test_output_name_of_255_bytes(self):
        """The longest name a file may have: the temporary's is cut short to fit."""
        gw, police = self.start()
        out_dir = os.path.join(self.tmp, "out")
        os.makedirs(out_dir)
        for name in ["b" * 252 + ".db", "\u00e9" * 126 + ".db", "x" + "\u00e9" * 126 + ".d"]:
            self.assertEqual(len(os.fsencode(name)), 255)
            out = os.path.join(out_dir, name)
            self.assertBackedUp(self.backup("--store", gw.store_path, out), out, gw)
            self.assertOnly(out_dir, [name])
            os.unlink(out)


class TestBackupRefused(BackupCase):
    def test_existing_output_is_never_replaced(self):
        gw, police = self.start()
        out = os.path.join(self.tmp, "out")
        os.makedirs(out)
        old = os.path.join(out, "store.db")
        with open(old, "w") as f:
            f.write("an earlier backup\n")
        r = self.backup("--config", gw.config_path, old)
        self.assertCtl(r, 1, gw, "isgctl: '%s' exists: a backup never replaces a file; give a "
                                 "new name" % old)
        self.assertEqual(r.out, "")
        with open(old) as f:
            self.assertEqual(f.read(), "an earlier backup\n")
        # nor a link, even one to nothing
        dangling = os.path.join(out, "link.db")
        os.symlink(os.path.join(out, "nothing"), dangling)
        r = self.backup("--config", gw.config_path, dangling)
        self.assertCtl(r, 1, gw, "'%s' exists" % dangling)
        self.assertOnly(out, ["store.db", "link.db"])

    def test_missing_or_unwritable_directory(self):
        gw, police = self.start()
        missing = os.path.join(self.tmp, "none", "store.db")
        r = self.backup("--config", gw.config_path, missing)
        self.assertCtl(r, 1, gw, "isgctl: cannot write '%s': no such file or directory" % missing)
        self.assertFalse(os.path.exists(os.path.dirname(missing)))
        # A directory this user may not write: isgctl run as nobody when the tests run as
        # root (who may write anywhere), reading a copy of the store it may read.
        base = tempfile.mkdtemp(prefix="isg-backup-")
        self.addCleanup(shutil.rmtree, base)
        os.chmod(base, 0o755)
        store = os.path.join(base, "isg.db")
        gw.stop()
        shutil.copyfile(gw.store_path, store)
        os.chmod(store, 0o644)
        locked = os.path.join(base, "locked")
        os.makedirs(locked)
        os.chmod(locked, 0o555)
        as_user = None
        if os.geteuid() == 0:
            def as_user():
                os.setgid(65534)
                os.setuid(65534)
        out = os.path.join(locked, "store.db")
        r = self.backup("--store", store, out, preexec_fn=as_user)
        self.assertCtl(r, 1, None, "isgctl: cannot write '%s': permission denied" % out)
        self.assertOnly(locked, [])

    def test_a_failed_copy_leaves_nothing(self):
        """A write that fails after the copy began (the file size limit, EFBIG)."""
        gw, police = self.start()
        for i in range(5):
            police.send_ok([{"nhs_number": NHS, "concern_summary": "x" * 2000}])
        out_dir = os.path.join(self.tmp, "out")
        os.makedirs(out_dir)

        def small_files():
            resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

        out = os.path.join(out_dir, "store.db")
        r = self.backup("--config", gw.config_path, out, preexec_fn=small_files)
        self.assertCtl(r, 1, gw, "isgctl: cannot copy store '%s' to '%s': " % (gw.store_path, out),
                       "(file too large)")
        self.assertOnly(out_dir, [])

    def test_a_copy_that_fails_its_check_is_named_by_output(self):
        """The check's failure names OUTPUT, not the temporary already removed."""
        gw, police = self.start()
        police.send_ok([{"nhs_number": NHS}])
        out_dir = os.path.join(self.tmp, "out")
        os.makedirs(out_dir)
        out = os.path.join(out_dir, "store.db")
        with open_copy(gw.store_path) as db:
            page = db.execute("PRAGMA page_size").fetchone()[0]
        r = self.backup("--config", gw.config_path, out,
                        env=shim_env(ISG_TEST_DIR=os.path.realpath(out_dir),
                                     ISG_TEST_ZERO_AT=page))
        self.assertCtl(r, 1, gw, "isgctl: the copy for '%s' fails SQLite's quick_check\n"
                                 "isgctl: nothing written to '%s': the copy was removed\n"
                                 % (out, out))
        self.assertNotIn("/.store.db.", r.err)
        self.assertEqual(r.out, "")
        self.assertOnly(out_dir, [])

    def test_not_a_store(self):
        gw, police = self.start()
        other = os.path.join(self.tmp, "other.db")
        with sqlite3.connect(other) as db:
            db.execute("CREATE TABLE t(x)")
        db.close()
        out_dir = os.path.join(self.tmp, "out")
        os.makedirs(out_dir)
        r = self.backup("--store", other, os.path.join(out_dir, "b.db"))
        self.assertCtl(r, 1, gw, "isgctl: store '%s' is an SQLite database but not an ISG store"
                       % other)
        r = self.backup("--store", os.path.join(self.tmp, "nothing.db"), os.path.join(out_dir, "b.db"))
        self.assertCtl(r, 1, gw, "isgctl: cannot open store '%s': no such file or directory"
                       % os.path.join(self.tmp, "nothing.db"))
        bad = os.path.join(self.tmp, "none.yaml")
        r = self.backup("--config", bad, os.path.join(out_dir, "b.db"))
        self.assertCtl(r, 1, gw, "isgctl: cannot use the gateway configuration '%s'" % bad)
        self.assertOnly(out_dir, [])

    def test_usage(self):
        gw, police = self.start()
        out = os.path.join(self.tmp, "b.db")
        for args, msg in [
                ((), "store backup takes one OUTPUT file"),
                (("--config", gw.config_path), "store backup takes one OUTPUT file"),
                (("--config", gw.config_path, out, out), "store backup takes one OUTPUT file"),
                ((out,), "say where the store is: --config ISGD_YAML or --store DB"),
                (("--store", gw.store_path, "--store", gw.store_path, out), "--store given twice"),
                (("--store", gw.store_path, ""), "the OUTPUT argument is empty"),
                (("--keys", gw.keys_dir, out), "unknown option '--keys'"),
        ]:
            r = self.backup(*args)
            self.assertCtl(r, 2, gw, "isgctl: " + msg, "usage: isgctl store backup")
        self.assertFalse(os.path.exists(out))


class TestNoHardLinks(BackupCase):
    """OUTPUT on a filesystem without hard links (vfat, exfat, CIFS, sshfs), link() failing
    as it does there (SHIM_C)."""

    def test_renamed_without_replacing(self):
        gw, police = self.start()
        police.send_ok([{"nhs_number": NHS}])
        out_dir = os.path.join(self.tmp, "out")
        os.makedirs(out_dir)
        out = os.path.join(out_dir, "store.db")
        for e in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
            r = self.backup("--config", gw.config_path, out, env=shim_env(ISG_TEST_LINK_ERRNO=e))
            self.assertBackedUp(r, out, gw)
            self.assertOnly(out_dir, ["store.db"])
            os.unlink(out)
        # a file that appears at OUTPUT meanwhile is not replaced either
        r = self.backup("--config", gw.config_path, out,
                        env=shim_env(ISG_TEST_LINK_ERRNO=errno.EPERM, ISG_TEST_RENAME_RACE=1))
        self.assertCtl(r, 1, gw, "isgctl: '%s' exists: a backup never replaces a file" % out)
        with open(out) as f:
            self.assertEqual(f.read(), "raced\n")
        self.assertOnly(out_dir, ["store.db"])

    def test_nor_a_rename_that_never_replaces(self):
        gw, police = self.start()
        out_dir = os.path.join(self.tmp, "out")
        os.makedirs(out_dir)
        out = os.path.join(out_dir, "store.db")
        r = self.backup("--config", gw.config_path, out,
                        env=shim_env(ISG_TEST_LINK_ERRNO=errno.EPERM,
                                     ISG_TEST_RENAME_ERRNO=errno.EINVAL))
        self.assertCtl(r, 1, gw, "isgctl: cannot write '%s': its filesystem has neither hard "
                                 "links nor a rename that never replaces a file; write the "
                                 "backup to a local filesystem, then copy it\n" % out)
        self.assertEqual(r.out, "")
        self.assertOnly(out_dir, [])


class TestBackupInterrupted(BackupCase):
    def test_a_stop_signal_removes_the_copy(self):
        """SIGINT, SIGTERM or SIGHUP while the copy is written or synced: no copy left."""
        gw, police = self.start()
        police.send_ok([{"nhs_number": NHS}])
        out_dir = os.path.join(self.tmp, "out")
        os.makedirs(out_dir)
        out = os.path.join(out_dir, "store.db")
        for call, sig in [("pwrite", signal.SIGTERM), ("fsync", signal.SIGINT),
                          ("fsync", signal.SIGHUP)]:
            r = self.backup_held(call, sig, out, "--config", gw.config_path)
            self.assertCtl(r, 1, gw, "isgctl: interrupted by %s: nothing written to '%s'\n"
                           % (sig.name, out))
            self.assertEqual(r.out, "")
            self.assertOnly(out_dir, [])

    def test_a_stop_signal_ends_the_copy_part_way(self):
        """A signal during a long copy stops it at the next step, not at its end."""
        gw, police = self.start()
        police.send_ok([{"nhs_number": NHS}])
        gw.stop()
        store = os.path.join(self.tmp, "big.db")
        shutil.copyfile(gw.store_path, store)
        with sqlite3.connect(store) as db:  # 16 MB more: 64 steps of the copy
            db.execute("CREATE TABLE pad(b)")
            db.execute("INSERT INTO pad VALUES (randomblob(16 * 1024 * 1024))")
        db.close()
        size = os.path.getsize(store)
        out_dir = os.path.join(self.tmp, "out")
        os.makedirs(out_dir)
        out = os.path.join(out_dir, "store.db")
        writes = os.path.join(self.tmp, "writes")
        r = self.backup_held("pwrite", signal.SIGTERM, out, "--store", store,
                             ISG_TEST_WRITES=writes)
        self.assertCtl(r, 1, None, "isgctl: interrupted by SIGTERM: nothing written to '%s'\n"
                       % out)
        self.assertOnly(out_dir, [])
        with open(writes) as f:
            written = sum(int(line.split()[1]) for line in f)
        self.assertLess(written, size / 2, "the copy went on after the signal")

    def test_an_ignored_sighup_does_not_stop_it(self):
        """Run under nohup, a backup goes on through a SIGHUP."""
        gw, police = self.start()
        police.send_ok([{"nhs_number": NHS}])
        out_dir = os.path.join(self.tmp, "out")
        os.makedirs(out_dir)
        out = os.path.join(out_dir, "store.db")
        r = self.backup_held("pwrite", signal.SIGHUP, out, "--config", gw.config_path,
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
        self.assertBackedUp(r, out, gw)
        self.assertOnly(out_dir, ["store.db"])


class TestBackupStopped(BackupCase):
    def test_backup_with_isgd_stopped(self):
        gw, police = self.start()
        ids = {police.send_ok([{"nhs_number": NHS, "age": i}])["gateway_id"] for i in range(3)}
        gw.stop()
        store_files = gw.store_files()
        out = os.path.join(self.tmp, "stopped.db")
        r = self.backup("--config", gw.config_path, out)
        m = self.assertBackedUp(r, out, gw)
        self.assertEqual(message_ids(out), ids)
        # the last checkpoint isgd signed as it stopped covers the whole log
        self.assertEqual(int(m.group("size")), int(m.group("entries")))
        # opened immutable: no -wal or -shm made beside the store, which isgd still opens
        self.assertEqual(gw.store_files(), store_files)
        gw.start()
        r = isgtest.ctl("audit", "verify", "--store", out, "--keys", gw.keys_dir)
        self.assertCtl(r, 0, gw)
        self.assertIn("latest checkpoint size %s, root %s" % (m.group("size"), m.group("root")),
                      r.out)



class TestBackupChecked(BackupCase):
    def test_documented_check_of_a_backup_with_an_origin(self):
        """The check operations.md and isgctl.md give for a copy, run exactly as written, on a
        good copy of a gateway whose configuration sets audit.origin: it passes, reading the
        keys and origin from the configuration and the log from the copy. --store with --keys
        alone, as the pages gave it before, assumes the default origin and cannot verify."""
        gw, police = self.start(audit={"checkpoint_interval": "1s", "origin": "isg.example/gw-1"})
        police.send_ok([{"nhs_number": NHS}])
        gw.stop()  # its last checkpoint covers the whole log
        out = os.path.join(self.tmp, "store-2026-11-23.db")
        m = self.assertBackedUp(self.backup("--config", gw.config_path, out), out, gw)
        documented = "isgctl audit verify --config ISGD_YAML --store OUTPUT"
        for doc in ("operations.md", "isgctl.md"):
            self.assertIn("`%s`" % documented,
                          isgtest.read_text(os.path.join(isgtest.SOURCE, "docs", doc)), doc)
        words = documented.split()[1:]
        words[words.index("ISGD_YAML")] = gw.config_path
        words[words.index("OUTPUT")] = out
        r = isgtest.ctl(*words)
        self.assertCtl(r, 0, gw)
        self.assertIn("latest checkpoint size %s, root %s" % (m.group("size"), m.group("root")),
                      r.out)
        r = isgtest.ctl("audit", "verify", "--store", out, "--keys", gw.keys_dir)
        self.assertCtl(r, 1, gw)
        self.assertIn("carries no signature by this verifier key", r.out)
        # the copy was read, not the store: a copy with an entry deleted is refused
        changed = isgtest.tampered_store(out, os.path.join(self.tmp, "changed.db"),
                                         ("DELETE FROM audit WHERE seq = 2", ()))
        r = isgtest.ctl("audit", "verify", "--config", gw.config_path, "--store", changed)
        self.assertCtl(r, 1, gw)
        self.assertIn("problem: entry 2 is missing (deleted)", r.out)


class TestRestoreAfterStoreRemoved(BackupCase):
    def test_the_removed_stores_wal_is_set_aside_not_replayed(self):
        """The store file deleted under isgd and its -wal left beside it: isgd
        stops (store.unlinked) and renames that WAL aside, so the backup put
        back at the path opens as it was, not overlaid with the lost store's
        last commits."""
        gw, police = self.start()
        kept = police.send_ok([{"nhs_number": NHS, "age": 1}])
        out = os.path.join(self.tmp, "backup.db")
        self.assertBackedUp(self.backup("--config", gw.config_path, out), out, gw)
        police.send_ok([{"nhs_number": NHS, "age": 2}])  # in the WAL, lost with the file
        os.unlink(gw.store_path)
        try:
            gw.proc.wait(timeout=5 * isgtest.SLOW)
        except subprocess.TimeoutExpired:
            self.fail("isgd did not stop after its store was removed\n%s" % gw.diagnostics())
        gw.stop(expect_rc=3)
        aside = [n for n in os.listdir(os.path.dirname(gw.store_path))
                 if n.startswith(os.path.basename(gw.store_path) + "-wal.unlinked-")]
        self.assertEqual(len(aside), 1, gw.diagnostics())
        self.assertFalse(os.path.exists(gw.store_path + "-wal"))
        self.assertIn("event=store.wal_set_aside", gw.log)

        shutil.copyfile(out, gw.store_path)
        os.chmod(gw.store_path, 0o600)
        gw.start()
        got = self.partner(gw, "nhs").fetch_messages()
        self.assertEqual([m["gateway_id"] for m in got], [kept["gateway_id"]])
        r = isgtest.ctl("audit", "verify", "--config", gw.config_path)
        self.assertCtl(r, 0, gw)


if __name__ == "__main__":
    unittest.main()
