"""
Scenario: isgctl as a partner integrator uses it, against the real isgd.

What test_exchange.py does not already cover: the client config file and
option precedence, CSV output and what send makes of it, --follow until a
signal, long-poll fetch, input errors that send nothing, where a refused
record is in the file, connection failures and their exit status, and the
admin commands keys init and policy check.
"""

import csv
import fcntl
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import termios
import time
import unittest

import isgtest
from isgtest import AGREEMENT_ID, DATASET

NHS_A = "9434765919"
NHS_B = "6281948211"
RECORD_A = {"nhs_number": NHS_A, "family_name": "O'Brien, Seán", "age": 42, "risk_score": 0.75,
            "urgent": True}
RECORD_B = {"nhs_number": NHS_B, "concern_summary": "Line\nBreak \"quoted\"", "urgent": False}


class IsgctlCase(isgtest.ScenarioCase):
    def start(self):
        gw = self.gateway()
        return gw, self.partner(gw, "police"), self.partner(gw, "nhs")

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        return path

    def send_file(self, partner, path, *extra):
        return partner.run("send", "--to", "nhs-trust", "--agreement", AGREEMENT_ID, "--dataset",
                           DATASET, *(list(extra) + [path]))

    def test_config_file_relative_paths_and_precedence(self):
        gw, police, nhs = self.start()
        cert = self.pki.certs["nhs"]
        conf_dir = os.path.join(self.tmp, "conf")
        os.makedirs(os.path.join(conf_dir, "certs"))
        for src, dst in [(cert.cert, "nhs.crt"), (cert.key, "nhs.key"),
                         (self.pki.server_ca.cert, "ca.crt")]:
            with open(src, "rb") as f, open(os.path.join(conf_dir, "certs", dst), "wb") as g:
                g.write(f.read())
        os.chmod(os.path.join(conf_dir, "certs", "nhs.key"), 0o600)
        conf = self.write("conf/client.yaml",
                          "gateway: 127.0.0.1:1\ncertificate: certs/nhs.crt\nkey: certs/nhs.key\n"
                          "ca: certs/ca.crt\nserver_name: localhost\ntimeout: 5s\n")
        # the flag wins over the file's unreachable gateway; flags may come first
        for argv in (["whoami", "--config", conf, "--gateway", gw.address],
                     ["--gateway", gw.address, "--config", conf, "whoami"]):
            r = isgtest.ctl(*argv)
            self.assertCtl(r, 0, gw)
            self.assertIn("partner_id: nhs-trust", r.out)
        # the file alone: its gateway is unreachable, exit 4
        r = isgtest.ctl("ping", "--config", conf)
        self.assertCtl(r, 4, gw, "connection refused")
        # ISGCTL_CONFIG is the default config
        env = dict(os.environ, ISGCTL_CONFIG=conf)
        p = subprocess.run([isgtest.ISGCTL, "whoami", "--gateway", gw.address], env=env,
                           capture_output=True, text=True, timeout=isgtest.CTL_TIMEOUT)
        self.assertEqual(p.returncode, 0, p.stderr)
        # a broken config names file, line and column, exit 1
        bad = self.write("bad.yaml", "gateway: x:1\ncertficate: c.pem\n")
        r = isgtest.ctl("ping", "--config", bad)
        self.assertCtl(r, 1, gw, "bad.yaml:2:1", "unknown key 'certficate'")
        noport = self.write("noport.yaml", "certificate: c.pem\ngateway: 127.0.0.1\n")
        r = isgtest.ctl("ping", "--config", noport)
        self.assertCtl(r, 1, gw, "noport.yaml:2:10: error: 'gateway' must be HOST:PORT")
        badname = self.write("badname.yaml", "certificate: c.pem\nserver_name: isg .nhs.uk\n")
        r = isgtest.ctl("ping", "--config", badname)
        self.assertCtl(r, 1, gw, "badname.yaml:2:14: error: 'server_name' must be a DNS name")

    def test_csv_fetch_output(self):
        gw, police, nhs = self.start()
        police.send_ok([RECORD_A, RECORD_B], message_id="m-1")
        r = nhs.fetch(fmt="csv")
        self.assertCtl(r, 0, gw)
        blocks = r.out.split("\n\n")
        self.assertEqual(len(blocks), 2, r.out)  # the records have different columns
        self.assertTrue(blocks[0].startswith(
            "gateway_id,message_id,sender,agreement_id,dataset,nhs_number,family_name,"
            "age:integer,risk_score:real,urgent:boolean\n"), r.out)
        self.assertIn('"Line\nBreak ""quoted"""', blocks[1])
        # any CSV reader gets the values back; the header says the types
        convert = {"integer": int, "real": float, "boolean": lambda v: v == "true"}
        got = []
        for block in blocks:
            for row in csv.DictReader(io.StringIO(block)):
                self.assertEqual(row.pop("message_id"), "m-1")
                for meta in ("gateway_id", "sender", "agreement_id", "dataset"):
                    row.pop(meta)
                rec = {}
                for key, value in row.items():
                    name, _, kind = key.partition(":")
                    rec[name] = convert.get(kind, str)(value)
                got.append(rec)
        self.assertEqual(got, [RECORD_A, RECORD_B])
        self.assertEqual(nhs.fetch().out, "")  # acknowledged

    def test_follow_prints_and_acks_until_sigint(self):
        gw, police, nhs = self.start()
        police.send_ok([RECORD_A], message_id="before")
        argv = [isgtest.ISGCTL, "fetch", "--follow"] + nhs.conn_flags()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []
        reader = isgtest.Thread(lambda: lines.extend(iter(p.stdout.readline, "")), name="reader")
        reader.start()
        police.send_ok([RECORD_B], message_id="during")
        deadline = time.time() + 10
        while len(lines) < 2 and time.time() < deadline:
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=10)
        reader.join(timeout=10)
        err = p.stderr.read()
        p.stdout.close()
        p.stderr.close()
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual([json.loads(line)["message_id"] for line in lines], ["before", "during"])
        self.assertEqual(json.loads(lines[1])["records"], [RECORD_B])
        # both were acknowledged after printing
        self.assertEqual(nhs.fetch().out, "")

    def following(self, gw, police, nhs, message_id):
        """nhs's `isgctl fetch --follow`, subscribed: it has printed a message
        police sent now. The caller ends the process."""
        argv = [isgtest.ISGCTL, "fetch", "--follow"] + nhs.conn_flags()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            police.send_ok([RECORD_A], message_id=message_id)
            ready, _, _ = select.select([p.stdout], [], [], 30 * isgtest.SLOW)
            self.assertTrue(ready, "fetch --follow printed nothing\n" + gw.diagnostics())
            self.assertEqual(json.loads(p.stdout.readline())["message_id"], message_id)
        except BaseException:
            p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()
            raise
        return p

    def test_silent_subscription_is_kept_alive_at_both_ends(self):
        """A subscriber waits in silence; TCP keepalive probes it within a minute at both
        ends (the kernel's default is two hours), so a vanished peer or a firewall that
        forgot the flow is found out, and the firewall sees the flow in use."""
        gw, police, nhs = self.start()
        p = self.following(gw, police, nhs, "keepalive")
        try:
            # Then the connection is silent.
            timers = {}
            deadline = time.time() + 10 * isgtest.SLOW
            while time.time() < deadline and len(timers) < 2:
                time.sleep(0.2)
                out = subprocess.run(["ss", "-tnopH", "state", "established"], capture_output=True,
                                     text=True, check=True).stdout
                timers = {}
                for line in out.splitlines():
                    fields = line.split()
                    if len(fields) < 4 or "127.0.0.1:%d" % gw.port not in fields[2:4]:
                        continue
                    end = "isgd" if fields[2].endswith(":%d" % gw.port) else "isgctl"
                    m = re.search(r"timer:\(keepalive,(?:(\d+)min)?(?:(\d+)sec)?", line)
                    if m and (end == "isgd" or "pid=%d," % p.pid in line):
                        timers[end] = int(m.group(1) or 0) * 60 + int(m.group(2) or 0)
            self.assertEqual(sorted(timers), ["isgctl", "isgd"], "no keepalive timer at: %s\n%s"
                             % (sorted({"isgd", "isgctl"} - set(timers)), out))
            for end, left in timers.items():
                self.assertLessEqual(left, 60, "%s's first probe in %d s" % (end, left))
        finally:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()
        self.assertEqual(p.returncode, 0)

    def test_a_gateway_shutting_down_exits_5(self):
        """UNAVAILABLE is the refusal that says "not now": exit 5, which a script retries,
        not 3, which says the same request will be refused again."""
        gw, police, nhs = self.start()
        p = self.following(gw, police, nhs, "before-shutdown")
        try:
            gw.stop()
            p.wait(timeout=30 * isgtest.SLOW)
            err = p.stderr.read()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()
        self.assertEqual(p.returncode, 5, err)
        self.assertRegex(err, r"^isgctl: refused: UNAVAILABLE: [^\n]*shutting down")

    def test_long_poll_returns_when_a_message_arrives(self):
        gw, police, nhs = self.start()
        result = {}
        # isgtest.Thread: a fetch that raises (a timeout) says so at the join, not as a KeyError.
        t = isgtest.Thread(lambda: result.update(r=nhs.fetch(wait=20000)), name="fetch")
        start = time.time()
        t.start()
        time.sleep(0.5)
        police.send_ok([RECORD_A], message_id="late")
        t.join(timeout=30)
        self.assertLess(time.time() - start, 15)
        self.assertCtl(result["r"], 0, gw)
        self.assertEqual(json.loads(result["r"].out)["message_id"], "late")

    def test_input_errors_send_nothing(self):
        gw, police, nhs = self.start()
        cases = [
            ("ragged.csv", "nhs_number,age\n%s,1\n%s\n" % (NHS_A, NHS_B),
             "ragged.csv:3: record has 1 fields, the header has 2"),
            ("typed.csv", "nhs_number,age:integer\n%s,forty\n" % NHS_A,
             "typed.csv:2:12: column 'age': not an integer"),
            ("typo.csv", "nhs_number,age:integr\n%s,42\n" % NHS_A,
             "typo.csv:1:12: column 'age': unknown type 'integr'"),
            ("nested.jsonl", '{"nhs_number":"%s"}\n{"nhs_number":"%s","addr":{"town":"Leeds"}}\n'
             % (NHS_A, NHS_B), "nested.jsonl:2:35: key 'addr': nested objects and arrays"),
            ("bad.jsonl", '{"nhs_number":"%s",}\n' % NHS_A, "bad.jsonl:1:28:"),
        ]
        for name, text, message in cases:
            r = self.send_file(police, self.write(name, text))
            self.assertCtl(r, 1, gw, message)
            self.assertNotIn("forty", r.err)
            self.assertNotIn("Leeds", r.err)
        r = self.send_file(police, self.write("data.txt", "x"))
        self.assertCtl(r, 2, gw, "--format")
        r = self.send_file(police, os.path.join(self.tmp, "missing.csv"))
        self.assertCtl(r, 1, gw, "cannot open")
        self.assertEqual(nhs.fetch().out, "")

    def test_message_id_is_up_to_128_bytes_of_utf8(self):
        gw, police, nhs = self.start()
        longest = "é" * 64  # 64 characters, 128 bytes
        self.assertEqual(police.send_ok([RECORD_A], message_id=longest)["message_id"], longest)
        for bad in ("é" * 65, "x" * 129, "", "bad-\udcff"):  # the last is the byte 0xff
            r = police.send([RECORD_A], message_id=bad)
            self.assertCtl(r, 2, gw, "--message-id must be 1 to 128 bytes of UTF-8" if bad
                           else "option '--message-id' has an empty value")
        self.assertEqual([m["message_id"] for m in nhs.fetch_messages()], [longest])

    def test_refusal_names_the_line_of_the_record(self):
        gw, police, nhs = self.start()
        path = self.write("in.csv", "nhs_number,family_name,shoe_size\n%s,A,\n\n%s,B,44\n"
                          % (NHS_A, NHS_B))
        r = self.send_file(police, path)
        self.assertRefused(r, gw, "UNKNOWN_FIELD", "dataset.unknown_field")
        self.assertIn('(record 1, field "shoe_size")', r.err)
        self.assertIn("record 1 is at %s:4" % path, r.err)
        self.assertNotIn("44", r.err.replace(path, ""))
        # from standard input too
        r = isgtest.ctl("send", *police.conn_flags(), "--to", "nhs-trust", "--agreement",
                        AGREEMENT_ID, "--dataset", DATASET, "--format", "csv", "-",
                        input="nhs_number\n%s\n" % NHS_A)
        self.assertCtl(r, 0, gw)
        self.assertEqual(json.loads(r.out)["records"], 1)

    def test_connection_failures_exit_4(self):
        gw, police, nhs = self.start()
        cert = self.pki.certs["nhs"]
        base = ["--cert", cert.cert, "--key", cert.key]
        r = isgtest.ctl("ping", "--gateway", gw.address, "--ca", self.pki.server_ca.cert,
                        "--server-name", "wrong.example", *base)
        self.assertCtl(r, 4, gw, "certificate verify failed", "wrong.example")
        r = isgtest.ctl("ping", "--gateway", gw.address, "--ca", self.pki.partner_ca.cert, *base)
        self.assertCtl(r, 4, gw, "certificate verify failed")
        r = isgtest.ctl("ping", "--gateway", "127.0.0.1:%d" % isgtest.free_port(), "--ca",
                        self.pki.server_ca.cert, *base)
        self.assertCtl(r, 4, gw, "connection refused")
        r = isgtest.ctl("ping", "--gateway", gw.address, "--ca", self.pki.server_ca.cert,
                        "--cert", cert.cert, "--key", self.pki.certs["police"].key)
        self.assertCtl(r, 1, gw, "does not belong to certificate")
        r = isgtest.ctl("ping", "--gateway", gw.address, "--timeout", "soon", *base)
        self.assertCtl(r, 2, gw, "--timeout")
        # a gateway address without a port, or none, is a bad command line
        for flags in (["--gateway", "127.0.0.1"], ["--gateway", ""], []):
            for sub in ("ping", "fetch"):
                r = isgtest.ctl(sub, *(flags + base))
                self.assertCtl(r, 2, gw, "--gateway")
        r = isgtest.ctl("--gateway", "127.0.0.1", "whoami", *base)
        self.assertCtl(r, 2, gw, "--gateway '127.0.0.1': give HOST:PORT, or [IPv6]:PORT")
        # a server name no certificate could carry is a bad command line too
        for name in ("", "isg .example", "*.example", "10.0.0.300"):
            r = isgtest.ctl("ping", "--gateway", gw.address, "--server-name", name, *base)
            self.assertCtl(r, 2, gw, "--server-name '%s': give a DNS name or an IP address"
                           % name if name else "option '--server-name' has an empty value")
        r = police.run("ping")
        self.assertCtl(r, 0, gw)
        self.assertIn("pong from %s in" % gw.address, r.out)

    def test_keys_init_and_policy_check(self):
        keys = os.path.join(self.tmp, "keys")
        r = isgtest.ctl("keys", "init", keys)
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(sorted(r.out.splitlines()),
                         ["created %s/audit-signing.key" % keys, "created %s/domains/audit.key" % keys,
                          "created %s/storage.key" % keys])
        self.assertEqual(os.stat(os.path.join(keys, "storage.key")).st_mode & 0o777, 0o600)
        r = isgtest.ctl("keys", "init", keys)
        self.assertEqual(r.rc, 1, r)
        self.assertIn("refusing to overwrite", r.err)

        good = self.policy("good")
        r = isgtest.ctl("policy", "check", good)
        self.assertEqual(r.rc, 0, r)
        self.assertRegex(r.out, r"^policy OK: 3 partners, 1 agreements, version [0-9a-f]{64}\n"
                                r"keys not checked: isgd also needs a key for every linkage "
                                r"domain the agreements name \(0\), and audit; check them with "
                                r"--keys KEYS_DIR\n$")
        bad = self.policy("bad", agreements=[isgtest.default_agreement(senders=["nobody"])])
        r = isgtest.ctl("policy", "check", bad)
        self.assertEqual(r.rc, 1, r)
        self.assertRegex(r.err, r"agreements/%s\.yaml:\d+:\d+: error: .*nobody" % AGREEMENT_ID)
        self.assertEqual(r.out, "")

    def test_output_that_cannot_be_written_fails(self):
        """Every command checks that its output reached standard output."""
        gw, police, nhs = self.start()
        keys = os.path.join(self.tmp, "keys")
        policy = self.policy("good")
        full = "/dev/full"
        for argv, rc in [(["keys", "init", keys], 1), (["keys", "list", keys], 1),
                         (["keys", "rotate", keys, "audit"], 1), (["policy", "show", policy], 1),
                         (["policy", "show", policy, AGREEMENT_ID], 1),
                         (["policy", "check", policy], 1),
                         (["policy", "diff", policy, policy], 2), (["help"], 1),
                         (police.conn_flags() + ["whoami"], 1)]:
            r = isgtest.ctl(*argv, stdout_path=full)
            self.assertEqual(r.rc, rc, r)
            self.assertIn("isgctl: cannot write output: no space left on device", r.err, r)
            self.assertEqual(r.err.count("cannot write"), 1, r)
        # send and fetch say what was lost; isgctl does not say it again.
        path = police.write_records([RECORD_A])
        for argv, said in [(police.conn_flags() + ["send", "--to", "nhs-trust", "--agreement",
                                                   AGREEMENT_ID, "--dataset", DATASET, path],
                            "cannot write the receipt: no space left on device"),
                           (nhs.conn_flags() + ["fetch"],
                            "cannot write message 1: no space left on device; it stays "
                            "unacknowledged")]:
            r = isgtest.ctl(*argv, stdout_path=full)
            self.assertEqual(r.rc, 1, r)
            self.assertIn(said, r.err, r)
            self.assertEqual(r.err.count("cannot write"), 1, r)
        self.assertEqual(len(nhs.fetch_messages()), 1)

    def run_into_closed_pipe(self, argv):
        """isgctl with standard output a pipe whose reader has gone."""
        r, w = os.pipe()
        os.close(r)
        try:
            p = subprocess.run([isgtest.ISGCTL] + argv, stdout=w, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True, timeout=isgtest.CTL_TIMEOUT)
        finally:
            os.close(w)
        return isgtest.CtlResult(p.returncode, "", p.stderr, argv)

    def test_a_closed_pipe_is_a_write_failure(self):
        """A reader that went away is said, exit 1, not a silent death by SIGPIPE (141)."""
        gw, police, nhs = self.start()
        police.send_ok([RECORD_A], message_id="piped")
        r = self.run_into_closed_pipe(nhs.conn_flags() + ["fetch"])
        self.assertEqual(r.rc, 1, r)
        self.assertRegex(r.err, r"^isgctl: cannot write message \d+: broken pipe; it stays "
                                r"unacknowledged\n$")
        self.assertEqual([m["message_id"] for m in nhs.fetch_messages()], ["piped"])

    def test_a_receipt_that_cannot_be_written_names_the_message_accepted(self):
        """So that a script does not send it again under a new random id."""
        gw, police, nhs = self.start()
        path = police.write_records([RECORD_A])
        r = isgtest.ctl(*(police.conn_flags() + ["send", "--to", "nhs-trust", "--agreement",
                                                 AGREEMENT_ID, "--dataset", DATASET, path]),
                        stdout_path="/dev/full")
        self.assertEqual(r.rc, 1, r)
        m = re.fullmatch(r"isgctl: cannot write the receipt: no space left on device; the gateway "
                         r"accepted message '([0-9a-f]{32})' \(gateway_id (\d+), audit entry "
                         r"(\d+)\): do not send it again\n", r.err)
        self.assertTrue(m, r)
        # the ids said are the message's: sent again under its id, it is a duplicate
        again = police.send_ok([RECORD_A], message_id=m.group(1))
        self.assertTrue(again["duplicate"], again)
        self.assertEqual((again["gateway_id"], again["audit_index"]),
                         (int(m.group(2)), int(m.group(3))))
        self.assertEqual([x["message_id"] for x in nhs.fetch_messages()], [m.group(1)])

    def test_output_to_a_file_is_synced_before_the_ack(self):
        """A power cut cannot be staged, so fsync is made to fail (strace
        injects EIO): what was printed is acknowledged only once fsync
        succeeded, so the messages are still waiting."""
        if not shutil.which("strace"):
            # As test_faults does: a missing tool fails the suite unless asked not to.
            if os.environ.get("ISG_ALLOW_SKIP", "") not in ("", "0"):
                self.skipTest("needs strace (scripts/deps test installs it)")
            self.fail("needs strace: scripts/deps test installs it (ISG_ALLOW_SKIP=1 skips)")
        gw, police, nhs = self.start()
        for mid in ("sync-1", "sync-2"):
            police.send_ok([RECORD_A], message_id=mid)
        inbox = os.path.join(self.tmp, "inbox.jsonl")
        strace = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync,fdatasync",
                  "-e", "inject=fsync,fdatasync:error=EIO"]
        for follow in (False, True):
            argv = strace + [isgtest.ISGCTL, "fetch"] + (["--follow"] if follow else []) + \
                nhs.conn_flags()
            # LeakSanitizer cannot run under ptrace (in a sanitizer build)
            env = dict(os.environ, ASAN_OPTIONS=(os.environ.get("ASAN_OPTIONS", "") +
                                                 ":detect_leaks=0").lstrip(":"))
            with open(inbox, "w") as out:
                p = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, text=True, env=env,
                                   stdin=subprocess.DEVNULL, timeout=isgtest.CTL_TIMEOUT)
            self.assertEqual(p.returncode, 1, p.stderr)
            printed = [json.loads(line) for line in isgtest.read_text(inbox).splitlines()]
            ids = [m["gateway_id"] for m in printed]
            said = ("isgctl: cannot write message %d: input/output error; it stays "
                    "unacknowledged\n" % ids[0] if follow else
                    "isgctl: cannot write the 2 messages from %d to %d: input/output error; they "
                    "stay unacknowledged\n" % tuple(ids))
            self.assertEqual(p.stderr, said)
            self.assertEqual(len(printed), 1 if follow else 2)
        self.assertEqual([m["message_id"] for m in nhs.fetch_messages(no_ack=True)],
                         ["sync-1", "sync-2"])
        # without the fault, the file gets them and they are acknowledged
        r = isgtest.ctl(*(nhs.conn_flags() + ["fetch"]), stdout_path=inbox)
        self.assertCtl(r, 0, gw)
        self.assertEqual(len(isgtest.read_text(inbox).splitlines()), 2)
        self.assertEqual(nhs.fetch_messages(), [])

    def follow_into_pipe(self, nhs):
        """fetch --follow writing into a pipe that nobody reads yet; (process, read end)."""
        r, w = os.pipe()
        p = subprocess.Popen([isgtest.ISGCTL, "fetch", "--follow"] + nhs.conn_flags(), stdout=w,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        os.close(w)
        return p, r

    def wait_for_full_pipe(self, p, r):
        """Until the pipe stops filling: fetch is blocked writing."""
        last, since = -1, time.time()
        deadline = time.time() + 30 * isgtest.SLOW
        while time.time() < deadline:
            queued = int.from_bytes(fcntl.ioctl(r, termios.FIONREAD, b"\0\0\0\0"), "little")
            if queued != last:
                last, since = queued, time.time()
            elif queued > 0 and time.time() - since > 0.5:
                return queued
            if p.poll() is not None:
                self.fail("fetch --follow ended: " + p.stderr.read())
            time.sleep(0.05)
        self.fail("the pipe did not fill")

    def read_all(self, r):
        chunks = []
        while True:
            b = os.read(r, 65536)
            if not b:
                return b"".join(chunks).decode("utf-8")
            chunks.append(b)

    def test_sigterm_while_blocked_on_a_reader_stops_between_messages(self):
        """A consumer that does not read: SIGTERM ends fetch --follow with status 0,
        every line printed whole, and what was not printed still waiting."""
        gw, police, nhs = self.start()
        # 3.5 kB lines: a pipe of 16 pages holds 16 of them, then the 17th waits
        for i in range(20):
            police.send_ok([dict(RECORD_A, concern_summary="s" * 3500)], message_id="big-%d" % i)
        p, r = self.follow_into_pipe(nhs)
        try:
            self.wait_for_full_pipe(p, r)
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10 * isgtest.SLOW)
            err = p.stderr.read()
            self.assertEqual((p.returncode, err), (0, ""))
            out = self.read_all(r)
        finally:
            self.reap(p)
            os.close(r)
        self.assertTrue(out.endswith("\n"), out[-100:])
        printed = [json.loads(line)["message_id"] for line in out.splitlines()]
        self.assertEqual(printed, ["big-%d" % i for i in range(len(printed))])
        self.assertLess(len(printed), 20)
        # what was printed was acknowledged; the rest waits
        self.assertEqual([m["message_id"] for m in nhs.fetch_messages()],
                         ["big-%d" % i for i in range(len(printed), 20)])

    def wait_signal_taken(self, p, sig):
        """Until p has taken sig (it is no longer pending): another of it is a signal of its
        own, not merged with this one."""
        bit = 1 << (sig - 1)
        deadline = time.time() + 30 * isgtest.SLOW
        while time.time() < deadline:
            with open("/proc/%d/status" % p.pid, encoding="ascii") as f:
                pending = [int(line.split()[1], 16) for line in f
                           if line.startswith(("SigPnd:", "ShdPnd:"))]
            if not any(m & bit for m in pending):
                return
            time.sleep(0.01)
        self.fail("signal %d was not taken" % sig)

    def test_a_message_begun_is_finished_unless_signalled_twice(self):
        gw, police, nhs = self.start()
        for i in range(2):
            police.send_ok([dict(RECORD_A, concern_summary="s" * 100000)],
                           message_id="huge-%d" % i)
        # one SIGTERM: the line begun is finished once the reader reads, and acknowledged
        p, r = self.follow_into_pipe(nhs)
        try:
            self.wait_for_full_pipe(p, r)
            p.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            self.assertIsNone(p.poll(), "fetch left a line half written")
            out = self.read_all(r)
            p.wait(timeout=10 * isgtest.SLOW)
            self.assertEqual((p.returncode, p.stderr.read()), (0, ""))
        finally:
            self.reap(p)
            os.close(r)
        self.assertEqual([json.loads(line)["message_id"] for line in out.splitlines()],
                         ["huge-0"])
        # two: it gives up the line, which stays unacknowledged
        p, r = self.follow_into_pipe(nhs)
        try:
            self.wait_for_full_pipe(p, r)
            err = self.sigterm_twice(p)
        finally:
            self.reap(p)
            os.close(r)
        self.assertEqual(p.returncode, 1, err)
        self.assertRegex(err, r"^isgctl: cannot write message \d+: interrupted system call; it "
                              r"stays unacknowledged\n$")
        self.assertEqual([m["message_id"] for m in nhs.fetch_messages()], ["huge-1"])

    def sigterm_twice(self, p):
        """SIGTERM to p, again once it has taken the first; its stderr when it exits."""
        p.send_signal(signal.SIGTERM)
        self.wait_signal_taken(p, signal.SIGTERM)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10 * isgtest.SLOW)
        return p.stderr.read()

    @staticmethod
    def reap(p):
        """p ended (killed if it has not) and its stderr closed."""
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stderr.close()

    def fetch_exec(self, nhs, cmd, *extra, follow=False):
        argv = [isgtest.ISGCTL, "fetch"] + (["--follow"] if follow else []) + \
            ["--exec", cmd] + list(extra) + nhs.conn_flags()
        return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=isgtest.CTL_TIMEOUT)

    def test_exec_acknowledges_only_what_the_command_took(self):
        gw, police, nhs = self.start()
        for mid in ("ex-1", "ex-2"):
            police.send_ok([RECORD_A, RECORD_B], message_id=mid)
        expected = nhs.fetch(no_ack=True).out
        got = os.path.join(self.tmp, "got.jsonl")
        # a command that fails, or is killed: nothing is acknowledged, no value is said
        for cmd, how in [("cat > %s; exit 3" % got, "exited with status 3"),
                         ("cat > %s; kill -9 $$" % got, "was killed by signal 9 (SIGKILL)")]:
            p = self.fetch_exec(nhs, cmd)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertEqual(p.stderr, "isgctl: the --exec command %s: the 2 messages given to "
                                       "it stay unacknowledged\n" % how)
            self.assertEqual(p.stdout, "")
            self.assertEqual(nhs.fetch(no_ack=True).out, expected)
        self.assertEqual(isgtest.read_text(got), expected)
        # one that succeeds gets exactly what fetch prints, in one run, and they are acknowledged
        runs = os.path.join(self.tmp, "runs")
        p = self.fetch_exec(nhs, "cat >> %s; echo run >> %s" % (got + ".ok", runs))
        self.assertEqual((p.returncode, p.stderr, p.stdout), (0, "", ""))
        self.assertEqual(isgtest.read_text(got + ".ok"), expected)
        self.assertEqual(isgtest.read_text(runs), "run\n")
        self.assertEqual(nhs.fetch().out, "")
        # none waiting: the command is not run
        p = self.fetch_exec(nhs, "echo run >> %s" % runs)
        self.assertEqual((p.returncode, isgtest.read_text(runs)), (0, "run\n"))

    def test_exec_acknowledges_nothing_a_command_left_unread(self):
        """A command that exits 0 before reading all of its input has not taken the batch,
        whether the batch fits in the pipe or not, and fetch does not wait for it forever."""
        gw, police, nhs = self.start()
        said = ("isgctl: the --exec command exited 0 without reading all of them: the %s given "
                "to it stay%s unacknowledged\n")
        cases = [(["small-1"], 0, "exit 0"), (["small-2"], 0, "sleep 0.5; exit 0"),
                 (["small-3", "small-4"], 0, "head -c 5 > /dev/null"),
                 (["large-1"], 200000, "exit 0"),
                 (["large-2", "large-3"], 100000, "head -c 70000 > /dev/null")]
        for ids, size, cmd in cases:
            with self.subTest(cmd=cmd, size=size):
                for mid in ids:
                    police.send_ok([dict(RECORD_A, concern_summary="s" * size)], message_id=mid)
                p = self.fetch_exec(nhs, cmd)
                self.assertEqual(p.returncode, 1, p.stderr)
                n = "%d messages" % len(ids) if len(ids) > 1 else "1 message"
                self.assertEqual(p.stderr, said % (n, "" if len(ids) > 1 else "s"))
                self.assertEqual([m["message_id"] for m in nhs.fetch_messages()], ids)
        # the same, all read: acknowledged
        police.send_ok([RECORD_A], message_id="read")
        p = self.fetch_exec(nhs, "head -c 5 > /dev/null; cat > /dev/null")
        self.assertEqual((p.returncode, p.stderr), (0, ""))
        self.assertEqual(nhs.fetch_messages(), [])

    def test_follow_exec_runs_the_command_for_each_message(self):
        gw, police, nhs = self.start()
        police.send_ok([RECORD_A], message_id="fx-1")
        police.send_ok([RECORD_B], message_id="fx-2")
        got = os.path.join(self.tmp, "got.jsonl")
        # each message to a run of its own; the second run fails: fetch stops, exit 1
        cmd = ("n=$(cat %s.n 2>/dev/null || echo 0); echo $((n+1)) > %s.n; "
               "cat >> %s; [ $n = 0 ]") % (got, got, got)
        p = self.fetch_exec(nhs, cmd, follow=True)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertEqual(p.stderr, "isgctl: the --exec command exited with status 1: the 1 "
                                   "message given to it stays unacknowledged\n")
        lines = isgtest.read_text(got).splitlines()
        self.assertEqual([json.loads(line)["message_id"] for line in lines], ["fx-1", "fx-2"])
        self.assertEqual([m["message_id"] for m in nhs.fetch_messages(no_ack=True)], ["fx-2"])

    def follow_exec(self, nhs, cmd):
        return subprocess.Popen([isgtest.ISGCTL, "fetch", "--follow", "--exec", cmd] +
                                nhs.conn_flags(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)

    def wait_for_file(self, p, path):
        deadline = time.time() + 30 * isgtest.SLOW
        while not os.path.exists(path):
            if p.poll() is not None:
                self.fail("fetch --follow ended: " + p.stderr.read())
            if time.time() > deadline:
                self.fail("%s did not appear" % path)
            time.sleep(0.02)

    def test_follow_exec_a_signal_lets_the_command_finish_and_two_stop_it(self):
        gw, police, nhs = self.start()
        police.send_ok([RECORD_A], message_id="sig-1")
        started, go, got = (os.path.join(self.tmp, n) for n in ("started", "go", "got"))
        # one signal: the command, its batch begun, finishes it; acknowledged, exit 0
        p = self.follow_exec(nhs, "dd bs=1 count=1 of=%s 2>/dev/null; touch %s; "
                                  "while [ ! -e %s ]; do sleep 0.02; done; cat >> %s"
                             % (got, started, go, got))
        try:
            self.wait_for_file(p, started)
            p.send_signal(signal.SIGTERM)
            self.wait_signal_taken(p, signal.SIGTERM)
            self.assertIsNone(p.poll(), "fetch stopped before its command finished")
            open(go, "w").close()
            p.wait(timeout=10 * isgtest.SLOW)
            self.assertEqual((p.returncode, p.stderr.read()), (0, ""))
        finally:
            self.reap(p)
        self.assertEqual(json.loads(isgtest.read_text(got))["message_id"], "sig-1")
        self.assertEqual(nhs.fetch_messages(), [])
        # two: the command is sent SIGTERM, nothing of its batch is acknowledged, exit 1
        police.send_ok([RECORD_A], message_id="sig-2")
        os.unlink(started)
        sleeper = os.path.join(self.tmp, "sleeper")
        p = self.follow_exec(nhs, "dd bs=1 count=1 of=/dev/null 2>/dev/null; "
                                  "sleep 600 >/dev/null 2>&1 </dev/null & echo $! > %s; "
                                  "touch %s; wait; cat > /dev/null" % (sleeper, started))
        try:
            self.wait_for_file(p, started)
            err = self.sigterm_twice(p)
        finally:
            self.reap(p)
            if os.path.exists(sleeper):
                os.kill(int(isgtest.read_text(sleeper)), signal.SIGKILL)
        self.assertEqual(p.returncode, 1, err)
        self.assertEqual(err, "isgctl: the --exec command was sent SIGTERM at a second signal: "
                              "the 1 message given to it stays unacknowledged\n")
        self.assertEqual([m["message_id"] for m in nhs.fetch_messages()], ["sig-2"])

    def test_a_key_file_others_may_read_is_refused(self):
        gw, police, nhs = self.start()
        key = os.path.join(self.tmp, "nhs.key")
        with open(self.pki.certs["nhs"].key, "rb") as f, open(key, "wb") as g:
            g.write(f.read())
        flags = ["--gateway", gw.address, "--cert", self.pki.certs["nhs"].cert, "--key", key,
                 "--ca", self.pki.server_ca.cert]
        for mode in (0o644, 0o640, 0o604, 0o601):
            os.chmod(key, mode)
            r = isgtest.ctl("whoami", *flags)
            self.assertEqual(r.rc, 1, r)
            self.assertEqual(r.err, "isgctl: private key '%s' has mode %04o; it must be "
                                    "readable by its owner only, the user this program runs "
                                    "as (chown that user, then chmod 600 '%s')\n"
                             % (key, mode, key), r)
        for mode in (0o600, 0o400):
            os.chmod(key, mode)
            self.assertCtl(isgtest.ctl("whoami", *flags), 0, gw)

    def test_usage(self):
        for argv, rc in [([], 2), (["help"], 0), (["--version"], 0), (["bogus"], 2),
                         (["send", "--bogus"], 2), (["fetch", "--max", "0"], 2),
                         (["help", "fetch"], 0), (["keys"], 2), (["policy", "check"], 2)]:
            r = isgtest.ctl(*argv)
            self.assertEqual(r.rc, rc, r)
        r = isgtest.ctl("help")
        for word in ["send", "fetch", "ping", "whoami", "keys", "policy", "exit status"]:
            self.assertIn(word, r.out)
        # an unknown command is named as typed, a subcommand with its command
        for argv, named in [(["bogus"], "'bogus'"), (["help", "bogus"], "'bogus'"),
                            (["audit", "bogus"], "'audit bogus'")]:
            r = isgtest.ctl(*argv)
            self.assertEqual(r.rc, 2, r)
            self.assertTrue(r.err.startswith("isgctl: unknown command %s; commands: " % named), r)


DOC = os.path.join(isgtest.SOURCE, "docs", "isgctl.md")
SHIPPED = os.path.join(isgtest.SOURCE, "policies")
SHIPPED_DOMAINS = ("mh-triage", "council-planning")


def doc_blocks(path, heading, lang):
    """The ```lang blocks of the section `heading` (a whole heading line) of a Markdown file."""
    blocks, section, fence, block = [], False, None, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if fence is None and line.startswith("```"):
                fence = line[3:].strip()
                block = [] if section and fence == lang else None
            elif fence is not None and line.startswith("```"):
                if block is not None:
                    blocks.append("".join(block))
                fence = block = None
            elif fence is not None:
                if block is not None:
                    block.append(line)
            elif line.startswith("#"):
                if section:
                    break
                section = line.rstrip("\n") == heading
    if not blocks:
        raise AssertionError("%s: no ```%s block under %r" % (path, lang, heading))
    return blocks


class DocExamplesTest(isgtest.ScenarioCase):
    """The examples of docs/isgctl.md, run as written against the example
    policies in policies/: what `send` reads is accepted, and what `fetch`
    prints is what the gateway delivers for it."""

    def setUp(self):
        super().setUp()
        self.gw = self.gateway(policy_dir=SHIPPED, domains=SHIPPED_DOMAINS)
        self.police = self.partner(self.gw, "police")

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        return path

    def send(self, path, to, agreement, dataset, *extra):
        r = self.police.run("send", "--to", to, "--agreement", agreement, "--dataset", dataset,
                            *(list(extra) + [path]))
        self.assertCtl(r, 0, self.gw)
        return json.loads(r.out)

    def send_concerns(self, path, *extra):
        return self.send(path, "nhs-trust", "police-nhs-adult-safeguarding", "safeguarding-concern",
                         *extra)

    def send_planning(self, path, *extra):
        return self.send(path, "city-council", "council-service-planning", "service-planning",
                         *extra)

    def test_csv_input_examples_are_accepted(self):
        blocks = doc_blocks(DOC, "### CSV input", "csv")
        self.assertEqual(len(blocks), 2, blocks)
        self.assertEqual(self.send_concerns(self.write("concerns.csv", blocks[0]))["records"], 2)
        self.assertEqual(self.send_planning(self.write("planning.csv", blocks[1]))["records"], 2)

    def test_jsonl_example_and_what_fetch_prints_for_it(self):
        [sent] = doc_blocks(DOC, "### JSON Lines input", "json")
        receipt = self.send_concerns(self.write("concerns.jsonl", sent), "--message-id",
                                     "case-2026-00042")
        [shown] = doc_blocks(DOC, "### JSON Lines output (the default)", "json")
        shown = json.loads(shown)
        r = self.partner(self.gw, "nhs").fetch()
        self.assertCtl(r, 0, self.gw)
        got = json.loads(r.out)
        self.assertEqual(got["gateway_id"], receipt["gateway_id"])
        shown.update(gateway_id=got["gateway_id"], accepted_at=got["accepted_at"])
        self.assertEqual(got, shown)

    def test_csv_output_example_and_reading_it_back(self):
        typed = doc_blocks(DOC, "### CSV input", "csv")[1]
        receipt = self.send_planning(self.write("planning.csv", typed), "--message-id",
                                     "planning-2026-11")
        council = self.partner(self.gw, "council")
        r = council.fetch(fmt="csv")
        self.assertCtl(r, 0, self.gw)
        [shown] = doc_blocks(DOC, "### CSV output", "csv")
        self.assertEqual(r.out, re.sub(r"(?m)^\d+,planning-2026-11,",
                                       "%d,planning-2026-11," % receipt["gateway_id"], shown))
        # each block reads back with send once the five columns about the
        # message are dropped; with them, they are fields the dataset lacks
        blocks = r.out.split("\n\n")
        self.assertEqual(len(blocks), 2, r.out)
        whole = self.police.run("send", "--to", "city-council", "--agreement",
                                "council-service-planning", "--dataset", "service-planning",
                                self.write("whole.csv", blocks[0]))
        self.assertRefused(whole, self.gw, "UNKNOWN_FIELD", "dataset.unknown_field")
        self.assertIn('field "gateway_id"', whole.err)
        for i, block in enumerate(blocks):
            rows = list(csv.reader(io.StringIO(block)))
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows(row[5:] for row in rows)
            self.send_planning(self.write("block-%d.csv" % i, out.getvalue()))
        again = council.fetch(fmt="csv")
        self.assertCtl(again, 0, self.gw)

        def ids_out(text):
            return re.sub(r"(?m)^\d+,[^,]+,", "ID,MESSAGE_ID,", text)

        self.assertEqual(ids_out(again.out), ids_out(r.out))


if __name__ == "__main__":
    unittest.main()
