"""
Scenario: an admin manages the gateway's keys with isgctl keys init,
new-domain, rotate and list (docs/keys.md, docs/isgctl.md): file modes,
the exact file format, what each command prints, refusals and their exit
statuses, and that no command ever prints key material.

Standard library only. Environment: ISG_BIN, the directory holding isgctl
(default <repo>/build/bin).
"""

import datetime
import os
import re
import shutil
import stat
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(os.environ.get("ISG_BIN") or os.path.join(HERE, "..", "..", "build", "bin"))
ISGCTL = os.path.join(BIN, "isgctl")

LINE = re.compile(r"^isg-domain-key-v1 ([a-z0-9][a-z0-9-]*) ([1-9][0-9]*) (\d{4}-\d\d-\d\d) "
                  r"(-|\d{4}-\d\d-\d\d) ([A-Za-z0-9+/]{43}=)$")


def today():
    return datetime.datetime.now(datetime.timezone.utc).date()


# Preloaded into isgctl: SIGKILL at the Nth write(2) the program makes itself (stdio's writes
# are glibc's own), as a crash or kill -9 between creating a key file and filling it would.
KILL_AT_WRITE_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

ssize_t write(int fd, const void *buf, size_t n)
{
	static int count;
	const char *at = getenv("ISG_TEST_KILL_AT_WRITE");
	if (at && ++count == atoi(at))
		raise(SIGKILL);
	ssize_t (*real)(int, const void *, size_t) = dlsym(RTLD_NEXT, "write");
	return real(fd, buf, n);
}
"""


class KeysCli(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="isg-keys-cli-")
        self.keys = os.path.join(self.tmp, "keys")
        self.domains = os.path.join(self.keys, "domains")
        self.outputs = []

    def tearDown(self):
        # Whatever ran, no key of any file may have been printed.
        keys = set()
        for root, _, files in os.walk(self.tmp):
            for name in files:
                path = os.path.join(root, name)
                try:
                    with open(path, encoding="ascii", errors="replace") as f:
                        for line in f:
                            keys.add(line.split()[-1] if line.split() else "")
                except OSError:
                    pass
        keys.discard("")
        for text in self.outputs:
            for key in keys:
                if len(key) >= 40:
                    self.assertNotIn(key[:16], text)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def ctl(self, *args, rc=0):
        p = subprocess.run([ISGCTL] + list(args), capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        self.outputs += [p.stdout, p.stderr]
        self.assertEqual(p.returncode, rc, "isgctl %s\n--- stdout\n%s--- stderr\n%s" %
                         (" ".join(args), p.stdout, p.stderr))
        return p

    def mode(self, path):
        return stat.S_IMODE(os.stat(path).st_mode)

    def lines(self, name):
        with open(os.path.join(self.domains, name + ".key"), encoding="ascii") as f:
            text = f.read()
        self.assertTrue(text.endswith("\n"))
        out = []
        for line in text[:-1].split("\n"):
            m = LINE.match(line)
            self.assertIsNotNone(m, line[:40])
            out.append(m.groups())
        return out

    def test_init_makes_private_files_and_the_audit_domain(self):
        p = self.ctl("keys", "init", self.keys)
        self.assertEqual(p.stdout.splitlines(), [
            "created %s/storage.key" % self.keys,
            "created %s/audit-signing.key" % self.keys,
            "created %s/domains/audit.key" % self.keys,
        ])
        self.assertEqual(self.mode(self.keys), 0o700)
        self.assertEqual(self.mode(self.domains), 0o700)
        for f in ("storage.key", "audit-signing.key", "domains/audit.key"):
            self.assertEqual(self.mode(os.path.join(self.keys, f)), 0o600, f)
        [(name, version, created, retires, _)] = self.lines("audit")
        self.assertEqual((name, version, retires), ("audit", "1", "-"))
        self.assertIn(created, (str(today()), str(today() - datetime.timedelta(days=1))))

        with open(os.path.join(self.domains, "audit.key")) as f:
            before = f.read()
        p = self.ctl("keys", "init", self.keys, rc=1)
        self.assertIn("refusing to overwrite", p.stderr)
        with open(os.path.join(self.domains, "audit.key")) as f:
            self.assertEqual(f.read(), before)

    def test_init_through_a_linked_directory(self):
        # A keys directory reached through a link (/etc/isg/keys -> /srv/keys) is used.
        real = os.path.join(self.tmp, "real")
        os.mkdir(real, 0o700)
        os.symlink(real, self.keys)
        self.ctl("keys", "init", self.keys)
        self.assertEqual(sorted(os.listdir(real)), ["audit-signing.key", "domains", "storage.key"])

    def test_new_domain(self):
        self.ctl("keys", "init", self.keys)
        p = self.ctl("keys", "new-domain", self.keys, "police-nhs")
        self.assertEqual(p.stdout, "created %s/domains/police-nhs.key: domain 'police-nhs', "
                         "version 1\n" % self.keys)
        self.assertEqual(self.mode(os.path.join(self.domains, "police-nhs.key")), 0o600)
        [(name, version, _, retires, key)] = self.lines("police-nhs")
        self.assertEqual((name, version, retires), ("police-nhs", "1", "-"))
        [(_, _, _, _, audit_key)] = self.lines("audit")
        self.assertNotEqual(key, audit_key)

        p = self.ctl("keys", "new-domain", self.keys, "police-nhs", rc=1)
        self.assertIn("domain 'police-nhs' exists", p.stderr)
        self.assertEqual(self.lines("police-nhs")[0][4], key)
        for bad in ("Police", "-x", "a_b", "a" * 64, "../x"):
            p = self.ctl("keys", "new-domain", self.keys, bad, rc=1 if bad[0] != "-" else 2)
        p = self.ctl("keys", "new-domain", self.keys, "a_b", rc=1)
        self.assertIn("'a_b' is not a valid domain name", p.stderr)
        self.ctl("keys", "new-domain", self.keys, rc=2)
        self.ctl("keys", "new-domain", self.keys, "a", "b", rc=2)
        nowhere = os.path.join(self.tmp, "nowhere")
        p = self.ctl("keys", "new-domain", nowhere, "police-nhs", rc=1)
        self.assertEqual(p.stderr, "isgctl: key directory '%s' does not exist; restore it from "
                         "its backup, or create one for a new gateway with "
                         "'isgctl keys init'\n" % nowhere)
        self.assertFalse(os.path.exists(nowhere))

    def test_rotate_and_list(self):
        self.ctl("keys", "init", self.keys)
        self.ctl("keys", "new-domain", self.keys, "police-nhs")
        [(_, _, _, _, key1)] = self.lines("police-nhs")
        day = today()
        p = self.ctl("keys", "rotate", self.keys, "police-nhs")
        if today() != day:  # the test ran over midnight (UTC): dates moved on
            self.skipTest("ran over midnight")
        retires = str(day + datetime.timedelta(days=30))
        self.assertEqual(p.stdout.splitlines(), [
            "rotated domain 'police-nhs': version 2 is current from %s" % day,
            "version 1 answers as previous until it retires on %s: recipients also get its "
            "pseudonyms in '<field>.previous'" % retires,
            "reload isgd (SIGHUP) or restart it to use version 2",
        ])
        v = self.lines("police-nhs")
        self.assertEqual(len(v), 2)
        self.assertEqual(v[0], ("police-nhs", "1", v[0][2], retires, key1))
        self.assertEqual(v[1][1:4], ("2", str(day), "-"))
        self.assertNotEqual(v[1][4], key1)
        self.assertEqual(self.mode(os.path.join(self.domains, "police-nhs.key")), 0o600)
        self.assertEqual(sorted(os.listdir(self.domains)), ["audit.key", "police-nhs.key"])

        # --overlap, before or after the arguments; 0 retires at once.
        self.ctl("keys", "new-domain", self.keys, "council")
        p = self.ctl("keys", "rotate", "--overlap", "0", self.keys, "council")
        self.assertIn("version 1 retired at once\n", p.stdout)
        self.assertIn("no version answers as previous", p.stdout)
        self.assertEqual(self.lines("council")[0][3], str(day))
        p = self.ctl("keys", "rotate", self.keys, "council", "--overlap=7")
        self.assertIn("version 2 answers as previous until it retires on %s" %
                      (day + datetime.timedelta(days=7)), p.stdout)

        p = self.ctl("keys", "list", self.keys)
        rows = [line.split() for line in p.stdout.splitlines()]
        self.assertEqual(rows, [
            ["DOMAIN", "VERSION", "CREATED", "RETIRES", "STATE"],
            ["audit", "1", str(day), "-", "current"],
            ["council", "1", str(day), str(day), "retired"],
            ["council", "2", str(day), str(day + datetime.timedelta(days=7)), "previous"],
            ["council", "3", str(day), "-", "current"],
            ["police-nhs", "1", str(day), retires, "previous"],
            ["police-nhs", "2", str(day), "-", "current"],
        ])

    def test_list_empty_and_missing(self):
        os.mkdir(self.keys, 0o700)
        p = self.ctl("keys", "list", self.keys)
        self.assertIn("no linkage domains in %s/domains" % self.keys, p.stdout)
        nowhere = os.path.join(self.tmp, "nowhere")
        p = self.ctl("keys", "list", nowhere, rc=1)
        self.assertEqual(p.stderr, "isgctl: key directory '%s' does not exist; restore it from "
                         "its backup, or create one for a new gateway with "
                         "'isgctl keys init'\n" % nowhere)
        self.assertFalse(os.path.exists(nowhere))
        # A path that is there but is no directory is told apart.
        afile = os.path.join(self.tmp, "afile")
        with open(afile, "w"):
            pass
        p = self.ctl("keys", "list", afile, rc=1)
        self.assertEqual(p.stderr, "isgctl: key directory '%s' is not a directory\n" % afile)
        self.ctl("keys", "list", rc=2)

    def test_refusals(self):
        self.ctl("keys", "init", self.keys)
        path = os.path.join(self.domains, "audit.key")

        # Lax modes: the file, then the directory.
        os.chmod(path, 0o644)
        for argv in (["list", self.keys], ["rotate", self.keys, "audit"]):
            p = self.ctl("keys", *argv, rc=1)
            self.assertIn("key file '%s' has mode 0644" % path, p.stderr)
        os.chmod(path, 0o600)
        os.chmod(self.domains, 0o770)
        for argv in (["list", self.keys], ["rotate", self.keys, "audit"],
                     ["new-domain", self.keys, "other"]):
            p = self.ctl("keys", *argv, rc=1)
            self.assertIn("key directory '%s' has mode 0770" % self.domains, p.stderr)
        os.chmod(self.domains, 0o700)

        # A malformed line, named by file and line; the file is not rewritten.
        with open(path) as f:
            good = f.read()
        with open(path, "a") as f:
            f.write(good.replace(" 1 ", " 2 ").replace(" - ", " 2026-01-32 ", 1))
        with open(path) as f:
            bad = f.read()
        for argv in (["list", self.keys], ["rotate", self.keys, "audit"]):
            p = self.ctl("keys", *argv, rc=1)
            self.assertRegex(p.stderr, r"%s:1:\d+: only the last line" % re.escape(path))
        with open(path) as f:
            self.assertEqual(f.read(), bad)
        with open(path, "w") as f:
            f.write(good)

        # Options and arguments.
        for overlap in ("-1", "abc", "3661", ""):
            p = self.ctl("keys", "rotate", self.keys, "audit", "--overlap", overlap, rc=2)
            self.assertIn("--overlap must be a whole number of days" if overlap
                          else "option '--overlap' has an empty value", p.stderr)
        self.ctl("keys", "rotate", self.keys, "audit", "--overlap", rc=2)
        self.ctl("keys", "rotate", self.keys, "audit", "--bogus", rc=2)
        self.ctl("keys", "rotate", self.keys, rc=2)
        self.ctl("keys", "bogus", rc=2)
        p = self.ctl("keys", "rotate", self.keys, "nope", rc=1)
        self.assertIn("domain 'nope' has no key file", p.stderr)
        nowhere = os.path.join(self.tmp, "nowhere")
        p = self.ctl("keys", "rotate", nowhere, "audit", rc=1)
        self.assertEqual(p.stderr, "isgctl: key directory '%s' does not exist; restore it from "
                         "its backup, or create one for a new gateway with "
                         "'isgctl keys init'\n" % nowhere)
        self.assertFalse(os.path.exists(nowhere))
        # A keys directory without domains/ is another matter: make a domain.
        os.mkdir(nowhere, 0o700)
        p = self.ctl("keys", "rotate", nowhere, "audit", rc=1)
        self.assertIn("no domain keys in '%s/domains'" % nowhere, p.stderr)
        self.assertIn("isgctl keys new-domain", p.stderr)

        # An interrupted (or concurrent) rotation's temporary file blocks the next one.
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write("x")
        p = self.ctl("keys", "rotate", self.keys, "audit", rc=1)
        self.assertIn("another rotation is running or one was interrupted", p.stderr)
        self.assertTrue(os.path.exists(tmp))
        os.unlink(tmp)
        self.ctl("keys", "rotate", self.keys, "audit")
        self.assertEqual(len(self.lines("audit")), 2)

    def killed_at_write(self, n, *args):
        """isgctl ARGS, killed (SIGKILL) at its nth write(2) of its own."""
        shim_dir = tempfile.mkdtemp(prefix="isg-keys-shim-")
        self.addCleanup(shutil.rmtree, shim_dir, True)
        src, lib = os.path.join(shim_dir, "kill.c"), os.path.join(shim_dir, "kill.so")
        with open(src, "w") as f:
            f.write(KILL_AT_WRITE_C)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", lib, src, "-ldl"], check=True)
        env = dict(os.environ, LD_PRELOAD=lib, ISG_TEST_KILL_AT_WRITE=str(n))
        asan = env.get("ASAN_OPTIONS", "")
        env["ASAN_OPTIONS"] = asan + (":" if asan else "") + "verify_asan_link_order=0"
        p = subprocess.run([ISGCTL] + list(args), capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL, env=env)
        self.outputs += [p.stdout, p.stderr]
        self.assertEqual(p.returncode, -9, p.stderr)

    def test_killed_new_domain_leaves_no_key_file(self):
        # Killed after creating the file, before writing it: the domain's file must not
        # exist empty (every later command, and isgd, would refuse it), only NAME.key.tmp.
        self.ctl("keys", "init", self.keys)
        path = os.path.join(self.domains, "police-nhs.key")
        self.killed_at_write(1, "keys", "new-domain", self.keys, "police-nhs")
        self.assertFalse(os.path.lexists(path))
        self.assertEqual(sorted(os.listdir(self.domains)), ["audit.key", "police-nhs.key.tmp"])
        # The keys still load (list; isgd's loader is the same), and the leftover is named.
        p = self.ctl("keys", "list", self.keys)
        self.assertNotIn("police-nhs", p.stdout)
        p = self.ctl("keys", "new-domain", self.keys, "police-nhs", rc=1)
        self.assertEqual(p.stderr, "isgctl: '%s.tmp' exists: another isgctl keys command is "
                         "writing '%s' or one was interrupted; once none is running, remove "
                         "it and retry\n" % (path, path))
        p = self.ctl("keys", "rotate", self.keys, "police-nhs", rc=1)
        self.assertIn("one was interrupted; once none is running, remove it and retry", p.stderr)
        os.unlink(path + ".tmp")
        self.ctl("keys", "new-domain", self.keys, "police-nhs")
        self.assertEqual(len(self.lines("police-nhs")), 1)

    def test_killed_init_says_what_to_remove(self):
        files = ["storage.key", "audit-signing.key", "domains/audit.key"]
        for n in (1, 2, 3):
            keys = os.path.join(self.tmp, "keys%d" % n)
            self.killed_at_write(n, "keys", "init", keys)
            # The files before the nth are whole; the nth is only NAME.tmp.
            for f in files[:n - 1]:
                with open(os.path.join(keys, f)) as fh:
                    self.assertTrue(fh.read().endswith("=\n"), f)
            for f in files[n - 1:]:
                self.assertFalse(os.path.lexists(os.path.join(keys, f)), f)
            left = files[n - 1] + ".tmp"
            self.assertTrue(os.path.exists(os.path.join(keys, left)))
            p = self.ctl("keys", "init", keys, rc=1)
            q = lambda names: ", ".join("'%s'" % f for f in names)
            if n == 1:
                self.assertEqual(p.stderr, "isgctl: '%s' has 'storage.key.tmp': an 'isgctl keys "
                                 "init' is running or one was interrupted; once none is "
                                 "running, remove it from '%s' and retry\n" % (keys, keys))
            else:
                self.assertEqual(p.stderr, "isgctl: '%s' has %s but not %s; keys init refuses "
                                 "to overwrite a key: if an 'isgctl keys init' was interrupted "
                                 "(isgd never ran with these keys), remove %s from '%s' and "
                                 "run it again; if key files were lost, restore them from the "
                                 "backup\n" % (keys, q(files[:n - 1]), q(files[n - 1:]),
                                                q(files[:n - 1] + [left]), keys))
            # Doing as told makes a whole keys directory.
            for f in files[:n - 1] + [left]:
                os.unlink(os.path.join(keys, f))
            self.ctl("keys", "init", keys)
            self.ctl("keys", "list", keys)
            for f in files:
                self.assertEqual(self.mode(os.path.join(keys, f)), 0o600)

    def test_help(self):
        p = self.ctl("keys", "--help")
        for sub in ("init", "new-domain", "rotate", "list"):
            self.assertIn(sub, p.stdout)
        p = self.ctl("keys", "rotate", "--help")
        self.assertIn("--overlap DAYS", p.stdout)
        self.assertIn(".previous", p.stdout)
        self.ctl("keys", rc=2)


if __name__ == "__main__":
    unittest.main()
