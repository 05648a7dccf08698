"""
Scenario: certificate revocation lists (tls.crl) as an admin uses them
(operations.md, Certificates and Reloading).

- Revoking a certificate ends the access it gives at the reload that brings
  the new CRL in: a connection it already had open (an `isgctl fetch
  --follow` subscription) is told why (NOT_PERMITTED, certificate.rejected)
  and closed, its cut audited, and the next message is not pushed to it;
  other partners' connections stay up.
- A CRL that would lock partners out is refused where it is loaded: one
  past its nextUpdate, or one not signed by a partner CA, fails
  --check-config and a start naming the CA and the fix, and a reload
  keeps the running TLS material (a partner still gets in). One near its
  nextUpdate is warned of.

Every certificate and CRL is made here with openssl; the revoked
certificates are this file's own, so the shared PKI's partners are untouched.
"""

import datetime
import json
import os
import re
import select
import shutil
import subprocess
import time
import unittest

import isgtest
from isgtest import NHS_CN
from test_hardening import NHS_A, HardeningCase

CA_SUBJECT = "CN=ISG Test Partner CA"


def openssl_time(dt):
    return dt.strftime("%Y%m%d%H%M%SZ")


class CrlCase(HardeningCase):
    def own_cert(self, stem, cn=NHS_CN):
        """A certificate of the shared partner CA for this test alone."""
        name = "%s-%s" % (stem, self._testMethodName)
        return self.pki.certs.get(name) or self.pki.client(name, cn)

    def make_crl(self, path, *args):
        """The partner CA's CRL with `openssl ca -gencrl` and args, written to path."""
        isgtest.openssl("ca", "-batch", "-config", self.pki._ca_cnf, "-gencrl", "-out", path, *args)
        return path

    def install_crl(self, src, dst):
        """As operations.md says: copied over the tls.crl path, mode 0644."""
        tmp = dst + ".new"
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.rename(tmp, dst)

    def wait_log(self, pattern, since=0, timeout=10.0):
        deadline = time.monotonic() + timeout * isgtest.SLOW
        while True:
            m = re.search(pattern, self.gw.log[since:], re.M)
            if m:
                return m
            if time.monotonic() > deadline:
                self.fail("no line matching %r in isgd's log\n%s" % (pattern, self.gw.diagnostics()))
            time.sleep(0.05)

    def check_config(self, gw=None):
        gw = gw or self.gw
        return subprocess.run([isgtest.ISGD, "--check-config", "--config", gw.config_path],
                              capture_output=True, text=True, timeout=60)

    def assertServes(self, name="police"):
        """A new connection of `name` gets in and is answered."""
        c = self.connect(name)
        self.assertEqual(self.expect(c.request(ping=self.pb.Ping(nonce=5)), "pong").nonce, 5)
        c.close()


class TestRevokedConnectionsCut(CrlCase):
    def follow(self, cert_name, first_message, police):
        """`isgctl fetch --follow` with cert_name, subscribed: it printed first_message."""
        partner = self.partner(self.gw, cert_name)
        argv = [isgtest.ISGCTL, "fetch", "--follow"] + partner.conn_flags()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(self.reap, p)
        self.accepted(police, first_message, [{"nhs_number": NHS_A}])
        ready, _, _ = select.select([p.stdout], [], [], 30 * isgtest.SLOW)
        self.assertTrue(ready, "fetch --follow printed nothing\n" + self.gw.diagnostics())
        self.assertEqual(json.loads(p.stdout.readline())["message_id"], first_message)
        return p

    @staticmethod
    def reap(p):
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()

    def test_revoked_subscription_closed_at_the_reload_that_brings_the_crl(self):
        pb = self.pb
        revoked = self.own_cert("nhs-revoked")
        crl = os.path.join(self.tmp, "partners.crl")
        self.install_crl(self.make_crl(os.path.join(self.tmp, "before.crl")), crl)
        self.gw = self.gateway(crl=crl)
        police = self.connect("police")
        follower = self.follow(revoked.name, "before-revocation", police)
        council = self.connect("council")
        self.expect(council.request(ping=pb.Ping(nonce=1)), "pong")

        # The recipe: revoke, make the CRL again, install it at tls.crl, SIGHUP.
        self.pki.revoke(revoked.name)
        self.install_crl(self.make_crl(os.path.join(self.tmp, "after.crl")), crl)
        since = len(self.gw.log)
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "loaded", text)
        self.assertIn("event=tls.reloaded", text)

        # The subscription is told why, and isgctl exits as for any refusal.
        try:
            follower.wait(timeout=10 * isgtest.SLOW)
        except subprocess.TimeoutExpired:
            self.fail("the revoked certificate's subscription is still open after the reload\n"
                      + self.gw.diagnostics())
        self.wait_log(r"event=tls\.rechecked connections_closed=1$", since)
        err = follower.stderr.read()
        self.assertEqual(follower.returncode, 3, err)
        self.assertRegex(err, r"refused: NOT_PERMITTED \[certificate\.rejected\]: [^\n]*"
                              r"certificate revoked")
        self.wait_log(r"event=certificate\.rejected peer=127\.0\.0\.1:\d+ partner=nhs-trust "
                      r"reason=\"certificate revoked\"$", since)
        closed = self.wait_audit("connection.closed")
        body = closed[0]["entry"]
        self.assertEqual((body["partner"], body["rule"]), ("nhs-trust", "certificate.rejected"))
        self.assertIn("certificate revoked", body["reason"])
        self.assertIn(NHS_CN, body["subject"])

        # Other partners' connections stay up; the next message is not the
        # revoked subscriber's: it waits for the partner's good certificate.
        self.expect(council.request(ping=pb.Ping(nonce=2)), "pong")
        self.accepted(police, "after-revocation", [{"nhs_number": NHS_A}])
        self.assertEqual(follower.stdout.read(), "")
        nhs = self.connect("nhs")
        fetched = self.expect(nhs.request(fetch=pb.FetchRequest(max_messages=10)), "fetch_result")
        self.assertEqual([d.message_id for d in fetched.deliveries], ["after-revocation"])
        # A new connection with the revoked certificate is refused by TLS.
        r = self.partner(self.gw, revoked.name).whoami()
        self.assertCtl(r, 4, self.gw)
        # Logged once isgd has sent its alert: after isgctl may have exited (valgrind).
        self.wait_log(r"event=conn\.refused .*reason=\"certificate verify failed: certificate "
                      r"revoked\"", since)
        r = isgtest.ctl("audit", "verify", "--config", self.gw.config_path)
        self.assertEqual(r.rc, 0, r)

    def wait_audit(self, kind, timeout=5.0):
        deadline = time.monotonic() + timeout * isgtest.SLOW
        while True:
            got = self.audit_jsonl("--kind", kind)
            if got:
                return got
            if time.monotonic() > deadline:
                self.fail("no %s audit entry\n%s" % (kind, self.gw.diagnostics()))
            time.sleep(0.05)

    def test_reload_without_revocation_cuts_nothing(self):
        """A reload whose CRL revokes nothing open leaves every connection as it was."""
        crl = self.make_crl(os.path.join(self.tmp, "partners.crl"))
        self.gw = self.gateway(crl=crl)
        conns = [self.connect(n) for n in ("police", "nhs", "council")]
        self.install_crl(self.make_crl(os.path.join(self.tmp, "again.crl")), crl)
        since = len(self.gw.log)
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "loaded", text)
        self.wait_log(r"event=tls\.rechecked connections_closed=0$", since)
        for i, c in enumerate(conns):
            self.expect(c.request(ping=self.pb.Ping(nonce=i)), "pong")
        self.assertNotIn("event=certificate.rejected", self.gw.log)


class OtherCa:
    """A second partner CA with its own `openssl ca` database, named cn."""

    def __init__(self, dir, cn):
        os.makedirs(os.path.join(dir, "newcerts"))
        for name, text in (("index.txt", ""), ("serial", "1000\n"), ("crlnumber", "01\n")):
            with open(os.path.join(dir, name), "w") as f:
                f.write(text)
        self.cnf = os.path.join(dir, "ca.cnf")
        with open(self.cnf, "w") as f:
            f.write(isgtest._CA_CNF.format(dir=dir))
        req = os.path.join(dir, "req.cnf")
        with open(req, "w") as f:
            f.write(isgtest._REQ_CNF)
        key = os.path.join(dir, "ca.key")
        isgtest.openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-out", key)
        isgtest.openssl("req", "-x509", "-new", "-config", req, "-extensions", "v3_ca", "-key", key,
                        "-subj", "/CN=" + cn, "-days", "30", "-out", os.path.join(dir, "ca.crt"))

    def crl(self, path):
        isgtest.openssl("ca", "-batch", "-config", self.cnf, "-gencrl", "-out", path)
        return path


class TestCrlThatLocksPartnersOut(CrlCase):
    def expired_crl(self):
        now = datetime.datetime.now(datetime.timezone.utc)
        return self.make_crl(os.path.join(self.tmp, "expired.crl"),
                             "-crl_lastupdate", openssl_time(now - datetime.timedelta(days=40)),
                             "-crl_nextupdate", openssl_time(now - datetime.timedelta(days=10)))

    def wrong_ca_crl(self, cn):
        return OtherCa(os.path.join(self.tmp, "other-ca-" + cn.replace(" ", "-")), cn).crl(
            os.path.join(self.tmp, "other.crl"))

    def check_refused(self, bad, problem):
        """bad at tls.crl: --check-config and a start fail naming the CA, the problem and
        the fix; a reload keeps the running material, and says so."""
        crl = os.path.join(self.tmp, "partners.crl")
        self.install_crl(self.make_crl(os.path.join(self.tmp, "good.crl")), crl)
        self.gw = self.gateway(crl=crl)
        police = self.connect("police")
        self.install_crl(bad, crl)
        p = self.check_config()
        self.assertEqual(p.returncode, 1, p)
        self.assertNotIn("configuration OK", p.stdout)
        for what in ("partner CA \"%s\"" % CA_SUBJECT, problem, "install it at '%s'" % crl):
            self.assertIn(what, p.stderr)

        since = len(self.gw.log)
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "loaded", text)
        m = self.wait_log(r"event=tls\.reload_failed reason=(\"(?:[^\"\\]|\\.)*\") "
                          r"action=\"kept the running certificates\"$", since)
        self.assertIn(CA_SUBJECT, m.group(1))
        self.assertIn(problem, m.group(1))
        self.assertNotIn("event=tls.reloaded", self.gw.log[since:])
        # The running CRL still serves: old connections and new ones.
        self.expect(police.request(ping=self.pb.Ping(nonce=3)), "pong")
        self.assertServes("nhs")

        self.gw.stop()
        with self.assertRaises(AssertionError):
            self.gw.start()
        self.assertIn(problem, self.gw.log[since:])

    def test_expired_crl(self):
        self.check_refused(self.expired_crl(), "expired at ")

    def test_crl_of_another_ca(self):
        self.check_refused(self.wrong_ca_crl("Some Other Partner CA"), "holds no CRL of")

    def test_crl_signed_by_another_key(self):
        """A CRL that names the partner CA but another key signed (a CA made again with
        the same name)."""
        self.check_refused(self.wrong_ca_crl("ISG Test Partner CA"), "not signed by that CA's key")

    def test_crl_near_its_next_update_is_warned_of(self):
        crl = self.make_crl(os.path.join(self.tmp, "partners.crl"), "-crlhours", "48")
        self.gw = self.gateway(crl=crl)
        self.wait_log(r"event=tls\.crl_expiring ca=\"%s\" next_update=\S+ hours_left=4[678] "
                      % CA_SUBJECT)
        self.assertServes()
        p = self.check_config()
        self.assertEqual(p.returncode, 0, p)
        self.assertIn("configuration OK", p.stdout)
        self.assertRegex(p.stderr, r"warning: CRL '%s' \(tls\.crl\): the CRL of partner CA "
                                   r"\"%s\" expires at \S+ \(its nextUpdate\), within 7 days"
                         % (re.escape(crl), CA_SUBJECT))
        # A CRL made again is quiet.
        since = len(self.gw.log)
        self.install_crl(self.make_crl(os.path.join(self.tmp, "renewed.crl")), crl)
        outcome, text = self.gw.reload()
        self.assertEqual(outcome, "loaded", text)
        self.assertIn("event=tls.reloaded", text)
        self.assertNotIn("crl_expiring", self.gw.log[since:])
        p = self.check_config()
        self.assertEqual((p.returncode, p.stderr), (0, ""), p)


if __name__ == "__main__":
    unittest.main()
