"""
Scenario: privilege separation (docs/security.md). isgd keeps the domain
keys, the storage key and the audit signing key in a key process with no
network: the process that talks to partners never holds them, and with
`user:` it serves as an unprivileged user after binding its port.

Memory is read the way an attacker who owns the process would see it:
/proc/PID/mem, region by region. The scans need root (they run as root in
CI); without root these tests fail unless ISG_ALLOW_SKIP is set.
"""

import base64
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import time
import unittest

import isgtest

NHS = "9434765919"


_MEM_PROBE = ("import sys\n"
              "try:\n"
              "    open('/proc/%s/mem' % sys.argv[1], 'rb').close()\n"
              "    print('opened')\n"
              "except OSError as e:\n"
              "    print('refused', e.errno)\n")


def open_mem_as(user, pid):
    """Whether `user` (a pwd entry) can open /proc/PID/mem: 'opened' or 'refused ERRNO'."""
    r = isgtest.subprocess.run(["/usr/bin/python3", "-c", _MEM_PROBE, str(pid)],
                               capture_output=True, text=True, user=user.pw_uid,
                               group=user.pw_gid, extra_groups=[], timeout=30)
    return r.stdout.strip()


def children(pid):
    out = []
    for task in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/children" % (pid, task)) as f:
            out += [int(p) for p in f.read().split()]
    return out


def status(pid):
    with open("/proc/%d/status" % pid) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def memory_contains(pid, needles):
    """Which of needles (bytes) occur in any readable mapping of pid."""
    found = set()
    with open("/proc/%d/maps" % pid) as maps, open("/proc/%d/mem" % pid, "rb", 0) as mem:
        for line in maps:
            addr = line.split()[0]
            start, end = (int(x, 16) for x in addr.split("-"))
            if end - start > 1 << 30:
                continue
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            for n in needles:
                if n in data:
                    found.add(n)
    return found


def key_bytes(keys_dir):
    """Every secret in the keys directory as raw bytes, by name."""
    out = {}
    for name in ("storage.key", "audit-signing.key"):
        with open(os.path.join(keys_dir, name)) as f:
            out[name] = base64.b64decode(f.read().split()[-1])
    for d in os.listdir(os.path.join(keys_dir, "domains")):
        for k in isgtest.domain_keys(keys_dir, d[:-len(".key")]):
            out["domains/%s v%d" % (k.name, k.version)] = k.key
    return out


def require_root(case):
    if os.geteuid() != 0:
        if os.environ.get("ISG_ALLOW_SKIP"):
            case.skipTest("needs root to read another process's memory")
        case.fail("these tests need root (set ISG_ALLOW_SKIP=1 to skip them)")


class PrivsepCase(isgtest.ScenarioCase):
    def exchange(self, gw):
        police = self.partner(gw, "police")
        nhs = self.partner(gw, "nhs")
        police.send_ok([{"nhs_number": NHS, "age": 42}])
        got = nhs.fetch_messages()
        self.assertEqual(len(got), 1)
        return got[0]

    def key_process(self, gw):
        kids = children(gw.proc.pid)
        self.assertEqual(len(kids), 1, "isgd should have exactly one child, the key process")
        return kids[0]


class KeysOutOfReach(PrivsepCase):
    def test_network_side_never_holds_a_key(self):
        require_root(self)
        gw = self.gateway(domains=["health-linkage"])
        self.exchange(gw)  # keys have been used: pseudonyms, data keys made and unwrapped
        gw.reload()        # and loaded again
        secrets = key_bytes(gw.keys_dir)
        self.assertGreaterEqual(len(secrets), 4)
        kp = self.key_process(gw)
        in_network_side = memory_contains(gw.proc.pid, secrets.values())
        self.assertEqual([n for n, k in secrets.items() if k in in_network_side], [],
                         "keys found in the memory of the process that talks to partners")
        # The scan finds keys where they are: the key process holds every one.
        in_key_process = memory_contains(kp, secrets.values())
        self.assertEqual([n for n, k in secrets.items() if k not in in_key_process], [])

    def test_without_key_process_the_scan_finds_them(self):
        """The control: key_process: false puts the keys in isgd itself."""
        require_root(self)
        gw = self.gateway(key_process=False)
        self.exchange(gw)
        self.assertEqual(children(gw.proc.pid), [])
        secrets = key_bytes(gw.keys_dir)
        found = memory_contains(gw.proc.pid, secrets.values())
        self.assertIn(secrets["storage.key"], found)
        self.assertIn(secrets["domains/audit v1"], found)

    def test_key_process_is_confined(self):
        gw = self.gateway()
        kp = self.key_process(gw)
        st = status(kp)
        self.assertEqual(st["Seccomp"], "2", "a seccomp filter is installed")
        self.assertEqual(st["NoNewPrivs"], "1")
        self.assertEqual(int(st["CapEff"], 16), 0, "no effective capabilities")
        self.assertEqual(int(st["CapPrm"], 16), 0, "no permitted capabilities")
        fds = os.listdir("/proc/%d/fd" % kp)
        targets = [os.readlink("/proc/%d/fd/%s" % (kp, fd)) for fd in fds if int(fd) > 2]
        if isgtest.VALGRIND:  # valgrind keeps its own files open, the program among them
            targets = [t for t in targets if not t.startswith(("/", "pipe:"))]
        self.assertTrue(targets)
        self.assertTrue(all(t.startswith("socket:") for t in targets), targets)
        # Its sockets are all the socketpairs with isgd: none is a network socket.
        inodes = {t[len("socket:["):-1] for t in targets}
        with open("/proc/net/tcp") as f4, open("/proc/net/tcp6") as f6:
            net_inodes = {line.split()[9] for line in (f4.read() + f6.read()).splitlines()[1:]
                          if len(line.split()) > 9}
        self.assertFalse(inodes & net_inodes)


    def test_isgd_cannot_gain_privileges(self):
        """Without a user to become as well: no exec can make isgd more than it is."""
        if status(os.getpid())["NoNewPrivs"] != "0":
            self.skipTest("the tests already run with no_new_privs, so isgd inherits it")
        gw = self.gateway()
        self.assertNotIn("user", gw.config)
        self.assertEqual(status(gw.proc.pid)["NoNewPrivs"], "1")


class KeyProcessLifetime(PrivsepCase):
    def test_isgd_stops_when_the_key_process_dies(self):
        gw = self.gateway()
        self.exchange(gw)
        kp = self.key_process(gw)
        os.kill(kp, signal.SIGKILL)
        deadline = time.monotonic() + 10 * isgtest.SLOW
        while gw.running and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(gw.running, "isgd kept running without its key process")
        rc = gw.proc.wait()
        gw.proc = None
        self.assertEqual(rc, 1)
        # Once, however many times isgd looks at it on the way out, saying which
        # process ended and how: a kill, not a crash or a failure.
        exited = [l for l in gw.log.splitlines() if "event=keyproc.exited" in l]
        self.assertEqual(len(exited), 1, "\n".join(exited))
        self.assertRegex(exited[0], r"level=error event=keyproc\.exited pid=%d signal=KILL$" % kp)
        self.assertIn("the key process died", gw.log)
        # What was accepted is still there after a restart.
        gw.start()
        self.assertEqual(self.partner(gw, "nhs").fetch_messages(), [])
        isgtest.Partner(gw, self.pki, "police").send_ok([{"nhs_number": NHS, "age": 1}])
        self.assertEqual(len(self.partner(gw, "nhs").fetch_messages()), 1)

    def test_signals_to_both_processes_stop_isgd_cleanly(self):
        # As a service manager's default stop, Ctrl-C or pkill deliver them:
        # to the key process as well. It ignores them; isgd reloads or drains.
        gw = self.gateway()
        kp = self.key_process(gw)
        os.kill(kp, signal.SIGHUP)
        gw.reload()
        self.exchange(gw)
        os.kill(kp, signal.SIGTERM)
        os.kill(kp, signal.SIGINT)
        time.sleep(0.2)
        self.assertTrue(gw.running, "isgd stopped when its key process was signalled")
        self.exchange(gw)
        gw.stop()  # SIGTERM to isgd: exit status 0, checked by stop()
        self.assertIn("event=isgd.stopped", gw.log)
        self.assertNotIn("event=keyproc.exited", gw.log)
        self.assertFalse(os.path.exists("/proc/%d" % kp) and not status(kp)["State"].startswith("Z"),
                         "the key process outlived isgd")

    def test_key_process_exits_with_isgd(self):
        gw = self.gateway()
        kp = self.key_process(gw)
        gw.kill()  # SIGKILL: no clean shutdown
        deadline = time.monotonic() + 10 * isgtest.SLOW
        while os.path.exists("/proc/%d" % kp) and time.monotonic() < deadline:
            try:
                if status(kp)["State"].startswith("Z"):
                    break
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.05)
        alive = os.path.exists("/proc/%d" % kp) and not status(kp)["State"].startswith("Z")
        self.assertFalse(alive, "the key process outlived isgd")

    def test_bad_storage_key_is_reported_by_the_key_process(self):
        gw = self.gateway(start=False)
        os.chmod(os.path.join(gw.keys_dir, "storage.key"), 0o640)
        r = isgtest.subprocess.run(gw.argv(), capture_output=True, text=True,
                                   timeout=isgtest.START_TIMEOUT)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"key file '[^']*storage\.key' has mode 0640")


class DropRoot(PrivsepCase):
    def user_gateway(self, crl=False):
        """A stopped gateway with user: nobody, whose files that user can read."""
        user = pwd.getpwnam("nobody")
        # The user needs its store, its TLS files and read access on the way there.
        os.chmod(self.tmp, 0o755)
        gw = self.gateway(start=False, user="nobody")
        os.chmod(gw.dir, 0o755)
        store_dir = os.path.dirname(gw.store_path)
        os.chown(store_dir, user.pw_uid, user.pw_gid)
        files = [("certificate", self.pki.gateway_chain), ("key", self.pki.gateway.key),
                 ("client_ca", self.pki.partner_ca.cert)]
        if crl:
            files.append(("crl", self.pki.crl("privsep-%s.crl" % self._testMethodName)))
        for what, src in files:
            dst = os.path.join(self.tmp, "tls-" + what + ".pem")
            shutil.copy(src, dst)
            os.chown(dst, user.pw_uid, user.pw_gid)
            gw.config["tls"][what] = dst
        os.chmod(gw.config["tls"]["key"], 0o600)
        gw.write_config()
        return gw

    def start_as_the_user(self, gw):
        """Start gw as its user itself, with the keys and files that user's."""
        user = pwd.getpwnam(gw.config.pop("user"))
        gw.write_config()
        os.chown(gw.dir, user.pw_uid, user.pw_gid)  # valgrind's log, when it runs
        for root, dirs, files in os.walk(gw.keys_dir):
            for name in [root] + [os.path.join(root, n) for n in dirs + files]:
                os.chown(name, user.pw_uid, user.pw_gid)
        with open(gw.log_path, "a") as log:
            gw.proc = isgtest.subprocess.Popen(
                gw.argv(), stdin=isgtest.subprocess.DEVNULL, stdout=log, stderr=log,
                user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                preexec_fn=isgtest._die_with_parent)
        gw.wait_ready()
        return user

    def refused(self, gw, *messages):
        """Both --check-config and a start refuse, each saying every one of messages."""
        for extra in (["--check-config"], []):
            r = isgtest.subprocess.run(gw.argv() + extra, capture_output=True, text=True,
                                       timeout=isgtest.START_TIMEOUT)
            self.assertEqual(r.returncode, 1, "%s\n%s" % (extra, r.stderr))
            self.assertNotIn("configuration OK", r.stdout)
            self.assertNotIn("event=isgd.started", r.stderr)
            for m in messages:
                self.assertIn(m, r.stderr, extra)

    def test_serves_as_the_configured_user(self):
        require_root(self)
        user = pwd.getpwnam("nobody")
        gw = self.user_gateway(crl=True)
        gw.start()
        self.assertIn("event=isgd.privileges_dropped user=nobody", gw.log)
        st = status(gw.proc.pid)
        self.assertEqual(st["Uid"].split(), [str(user.pw_uid)] * 4)
        self.assertEqual(st["Gid"].split(), [str(user.pw_gid)] * 4)
        self.assertEqual(int(st["CapEff"], 16), 0)
        self.assertEqual(self.key_process(gw) > 0, True)
        # The store was created by the user; the keys stay root's and out of its reach.
        self.exchange(gw)
        self.assertEqual(os.stat(gw.store_path).st_uid, user.pw_uid)
        self.assertEqual(os.stat(os.path.join(gw.keys_dir, "storage.key")).st_uid, 0)
        # Reloads still work: the key process reads the domain keys, isgd the TLS key.
        outcome, text = gw.reload()
        self.assertEqual(outcome, "loaded", text)
        self.assertIn("event=tls.reloaded", text)

    def test_policy_only_root_can_read_is_refused(self):
        """Read as root at start, as the user at every SIGHUP: refused at start."""
        require_root(self)
        gw = self.user_gateway()
        os.chmod(gw.policy_dir, 0o700)
        self.refused(gw, "cannot read policy directory '%s' as user 'nobody'" % gw.policy_dir)
        os.chmod(gw.policy_dir, 0o755)
        agreements = os.path.join(gw.policy_dir, "agreements")
        os.chmod(agreements, 0o700)
        self.refused(gw, "cannot read policy directory '%s' as user 'nobody'" % agreements)
        os.chmod(agreements, 0o755)
        partners = os.path.join(gw.policy_dir, "partners.yaml")
        agreement = os.path.join(agreements, sorted(os.listdir(agreements))[0])
        os.chmod(partners, 0o600)
        os.chmod(agreement, 0o600)
        self.refused(gw, "cannot read policy file '%s' as user 'nobody'" % partners,
                     "cannot read policy file '%s' as user 'nobody'" % agreement)
        # What the loader does not read is not asked for: an editor's swap file.
        os.chmod(partners, 0o644)
        os.chmod(agreement, 0o644)
        swap = os.path.join(agreements, ".x.yaml.swp")
        with open(swap, "w"):
            pass
        os.chmod(swap, 0o600)
        gw.start()
        outcome, text = gw.reload()
        self.assertEqual(outcome, "loaded", text)

    def started_version(self, gw):
        return re.findall(r"event=isgd\.started .*policy_version=([0-9a-f]{64})", gw.log)[-1]

    def test_what_the_loader_skips_is_not_asked_for(self):
        """A directory or a FIFO named like an agreement is no agreement: the
        loader skips it, so the start's check as the user does not ask to read
        it, even when only root could; start and reload load the same set."""
        require_root(self)
        gw = self.user_gateway()
        agreements = os.path.join(gw.policy_dir, "agreements")
        os.mkdir(os.path.join(agreements, "x.yaml"), 0o700)
        os.mkfifo(os.path.join(agreements, "f.yaml"), 0o600)
        check = isgtest.subprocess.run(gw.argv() + ["--check-config"], capture_output=True,
                                       text=True, timeout=isgtest.START_TIMEOUT)
        # Told as ignored (an admin may have meant them), never opened.
        self.assertEqual((check.returncode, check.stdout), (0, "configuration OK\n"), check.stderr)
        self.assertEqual(sorted(check.stderr.splitlines()),
                         ["%s: warning: ignored: not a regular *.yaml file"
                          % os.path.join(agreements, n) for n in ("f.yaml", "x.yaml")])
        gw.start()
        outcome, text = gw.reload()
        self.assertEqual(outcome, "loaded", text)
        self.assertRegex(text, r"event=policy\.loaded version=%s partners=3 agreements=1\n"
                         % self.started_version(gw))

    def test_a_link_the_user_cannot_follow_is_refused_not_skipped(self):
        """An agreement that is a link into a directory only root may enter:
        refused at start, as the user would not read it at a reload; and if
        the directory is closed while isgd runs, the reload is refused with
        the file named, rather than loading the set without that agreement."""
        require_root(self)
        gw = self.user_gateway()
        private = os.path.join(self.tmp, "private")
        os.mkdir(private, 0o700)
        target = os.path.join(private, "extra.yaml")
        isgtest.write_yaml(target, {"agreement": isgtest.default_agreement(id="extra")})
        os.chmod(target, 0o644)
        link = os.path.join(gw.policy_dir, "agreements", "extra.yaml")
        os.symlink(target, link)
        self.refused(gw, "cannot read policy file '%s' as user 'nobody'" % link)
        os.chmod(private, 0o755)
        gw.start()
        os.chmod(private, 0o700)
        outcome, text = gw.reload()
        self.assertEqual(outcome, "refused", text)
        self.assertRegex(text, r"level=error event=policy\.diagnostic file=%s line=0 col=0 "
                               r"message=\"cannot open: Permission denied\"" % re.escape(link))
        self.assertNotIn("event=policy.loaded", text)

    def test_key_process_off_is_refused_when_root_becomes_the_user(self):
        """key_process: false loads the domain keys in isgd: as root at start
        and as the user at every reload. A key file must belong to whoever
        loads it, so none would pass both, and every reload would fail on
        them: refused at start, not at the first SIGHUP."""
        require_root(self)
        gw = self.user_gateway()
        gw.config["key_process"] = False
        gw.write_config()
        self.refused(gw, "cannot load the linkage-domain keys in '%s/domains' as user 'nobody', "
                         "as every reload does with key_process: false" % gw.keys_dir,
                     "start isgd as user 'nobody'")
        self.assertEqual(os.listdir(os.path.dirname(gw.store_path)), [])

    def test_key_process_off_started_as_the_user_reloads(self):
        """The way the refusal points to: isgd started as the user itself, its
        keys the user's, loads them as the same user at start and at reload."""
        require_root(self)
        gw = self.user_gateway()
        gw.config["key_process"] = False
        self.start_as_the_user(gw)
        self.assertEqual(children(gw.proc.pid), [])
        outcome, text = gw.reload()
        self.assertEqual(outcome, "loaded", text)
        self.assertNotIn("keys.error", text)

    def test_started_as_the_user_its_memory_is_out_of_that_users_reach(self):
        """Started as a non-root user without user:, isgd shares its uid with
        the key process, which has no capabilities: were isgd dumpable, a key
        process taken over could write into isgd through /proc/PID/mem and
        have its network. Any process of that uid is tried here."""
        require_root(self)
        gw = self.user_gateway()
        user = self.start_as_the_user(gw)
        self.assertEqual(len(children(gw.proc.pid)), 1)
        # The control: another process of that user is within its reach.
        other = isgtest.subprocess.Popen(["sleep", "30"], user=user.pw_uid, group=user.pw_gid,
                                         extra_groups=[])
        try:
            self.assertEqual(open_mem_as(user, other.pid), "opened")
        finally:
            other.kill()
            other.wait()
        self.assertEqual(open_mem_as(user, gw.proc.pid), "refused 13")

    def test_becoming_the_user_leaves_it_undumpable(self):
        """The kernel resets the dumpable flag to fs.suid_dumpable when a
        process changes its uids or gids, as isgd does to become its user
        and to check files as that user. Where that setting is 1 (debugging)
        or 2 (systemd-coredump's), isgd would be dumpable again, its memory
        open to the user it became: so it sets the flag again after each."""
        require_root(self)
        setting = "/proc/sys/fs/suid_dumpable"
        try:
            with open(setting) as f:
                was = f.read().strip()
            with open(setting, "w") as f:
                f.write("1")
        except OSError as e:
            if os.environ.get("ISG_ALLOW_SKIP"):
                self.skipTest("cannot set %s: %s" % (setting, e))
            self.fail("cannot set %s: %s (ISG_ALLOW_SKIP=1 skips)" % (setting, e))

        def restore():
            with open(setting, "w") as f:
                f.write(was)
        self.addCleanup(restore)
        user = pwd.getpwnam("nobody")
        gw = self.user_gateway()
        gw.start()
        self.assertIn("event=isgd.privileges_dropped user=nobody", gw.log)
        self.assertEqual(open_mem_as(user, gw.proc.pid), "refused 13")

    def test_tls_files_only_root_can_read_are_refused(self):
        require_root(self)
        gw = self.user_gateway(crl=True)
        tls = gw.config["tls"]
        for what in ("certificate", "client_ca", "crl"):
            os.chown(tls[what], 0, 0)
            os.chmod(tls[what], 0o600)
        # The key is the user's, 0600, but in a directory the user cannot enter.
        private = os.path.join(self.tmp, "private")
        os.mkdir(private, 0o700)
        key = os.path.join(private, "tls-key.pem")
        shutil.move(tls["key"], key)
        tls["key"] = key
        gw.write_config()
        self.refused(gw, *["cannot read %s '%s' as user 'nobody'" % (name, tls[what])
                           for what, name in (("certificate", "TLS certificate"),
                                              ("key", "TLS key"),
                                              ("client_ca", "partner CA bundle"),
                                              ("crl", "CRL"))])

    def test_store_the_user_cannot_open_is_refused(self):
        """The store as user: nobody opens it, once isgd has become that user: --check-config
        and a start say which file or directory that user cannot use and the command that
        fixes it, rather than "cannot open: Permission denied" (or OK) as root."""
        require_root(self)
        user = pwd.getpwnam("nobody")
        gw = self.user_gateway()
        gw.start()
        gw.stop()
        path, store_dir = gw.store_path, os.path.dirname(gw.store_path)
        os.chown(path, 0, 0)
        self.refused(gw, "isgd: cannot read and write store file '%s' as user 'nobody', who opens "
                     "the store: Permission denied; fix: chown nobody '%s' && chmod 600 '%s'\n"
                     % (path, path, path))
        os.chown(path, user.pw_uid, user.pw_gid)
        os.chown(store_dir, 0, 0)
        os.chmod(store_dir, 0o755)
        self.refused(gw, "isgd: cannot write in the store's directory '%s' as user 'nobody', who "
                     "opens the store and makes its '-wal' and '-shm' files there: Permission "
                     "denied; fix: chown nobody '%s' && chmod 700 '%s'\n"
                     % (store_dir, store_dir, store_dir))
        os.chmod(store_dir, 0o700)
        self.refused(gw, "isgd: cannot reach store '%s' as user 'nobody', who opens it: Permission "
                     "denied; a directory on its path does not let that user search it (namei -l "
                     "'%s' shows which); fix: chown nobody the store's own directory, or chmod "
                     "o+x one above it\n" % (path, path))
        # A new gateway whose store directory was never made (or a restore that forgot it).
        os.remove(path)
        os.rmdir(store_dir)
        self.refused(gw, "isgd: the store's directory '%s' does not exist; make it, owned by user "
                     "'nobody', who opens the store: install -d -o nobody -m 700 '%s'\n"
                     % (store_dir, store_dir))
        os.mkdir(store_dir, 0o700)
        os.chown(store_dir, user.pw_uid, user.pw_gid)
        gw.start()  # --new-store, as the directory is empty
        self.assertEqual(os.stat(path).st_uid, user.pw_uid)

    def test_without_user_files_only_root_can_read_are_fine(self):
        """Without user: start and reload read as the same user: nothing to refuse."""
        require_root(self)
        gw = self.gateway(start=False)
        os.chmod(gw.policy_dir, 0o700)
        os.chmod(gw.config["tls"]["client_ca"], 0o600)
        gw.start()
        outcome, text = gw.reload()
        self.assertEqual(outcome, "loaded", text)
        self.assertIn("event=tls.reloaded", text)

    def test_tls_key_must_belong_to_the_user(self):
        require_root(self)
        gw = self.gateway(start=False, user="nobody")
        r = isgtest.subprocess.run(gw.argv(), capture_output=True, text=True,
                                   timeout=isgtest.START_TIMEOUT)
        self.assertEqual(r.returncode, 1)
        key = gw.config["tls"]["key"]
        self.assertIn("isgd: TLS key '%s' (tls.key) is owned by uid 0 (root); with user: nobody "
                      "it must be owned by uid %d (nobody), who reads it again at every reload: "
                      "chown nobody '%s'\n" % (key, pwd.getpwnam("nobody").pw_uid, key),
                      r.stderr)

    def test_tls_key_readable_by_others_says_chmod(self):
        require_root(self)
        gw = self.gateway(start=False)
        key = gw.config["tls"]["key"]
        os.chmod(key, 0o644)
        try:
            r = isgtest.subprocess.run(gw.argv(), capture_output=True, text=True,
                                       timeout=isgtest.START_TIMEOUT)
        finally:
            os.chmod(key, 0o600)
        self.assertEqual(r.returncode, 1)
        self.assertIn("isgd: TLS key '%s' (tls.key) has mode 0644: it must have no group or "
                      "other permissions (0600 or 0400): chmod 600 '%s'\n" % (key, key), r.stderr)

    def test_unknown_user_is_refused(self):
        gw = self.gateway(start=False, user="no-such-user-isg")
        r = isgtest.subprocess.run(gw.argv(), capture_output=True, text=True,
                                   timeout=isgtest.START_TIMEOUT)
        self.assertEqual(r.returncode, 1)
        self.assertIn("user 'no-such-user-isg' does not exist", r.stderr)


if __name__ == "__main__":
    unittest.main()
