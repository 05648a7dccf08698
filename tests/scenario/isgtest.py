"""
isgtest: the shared harness of the ISG scenario tests.

Scenario tests drive the real daemon the way partners do: they make a PKI
with the openssl command-line tool, write an isgd configuration and a policy
directory, start $ISG_BIN/isgd and talk to it with $ISG_BIN/isgctl or with
the Python protobuf runtime over TLS 1.3.

Standard library only, plus Debian's python3-protobuf for the wire codec.
Run the tests with /usr/bin/python3 (the python3 first on PATH may lack
protobuf).

Environment:
  ISG_BIN        directory holding isgd and isgctl (default <repo>/build/bin)
  ISG_SOURCE     repository root (default: two levels above this file)
  ISG_VALGRIND=1 run isgd under valgrind (memcheck, leaks are errors)
  TSAN_OPTIONS   for a ThreadSanitizer build (-DISG_TSAN=ON); the harness adds
                 suppressions=tests/tsan.supp unless it names its own
  ISG_KEEP_TMP=1 keep the temporary directories for inspection
  ISG_CTL_FLAGS  "after" (default) puts isgctl's connection flags after the
                 subcommand name, "before" puts them before it
"""

import atexit
import base64
import collections
import contextlib
import csv
import datetime
import hashlib
import hmac
import importlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.abspath(os.environ.get("ISG_SOURCE") or os.path.join(HERE, "..", ".."))
BIN = os.path.abspath(os.environ.get("ISG_BIN") or os.path.join(SOURCE, "build", "bin"))
ISGD = os.path.join(BIN, "isgd")
ISGCTL = os.path.join(BIN, "isgctl")
VALGRIND = os.environ.get("ISG_VALGRIND", "") not in ("", "0")
KEEP_TMP = os.environ.get("ISG_KEEP_TMP", "") not in ("", "0")
CTL_FLAGS = os.environ.get("ISG_CTL_FLAGS", "after")



def _built_with(path, symbol):
    try:
        with open(path, "rb") as f:
            return symbol in f.read()
    except OSError:
        return False


# A ThreadSanitizer build (cmake -DISG_TSAN=ON): its shadow memory counts in
# isgd's RSS, and it reads its suppressions (what lies outside our code) from
# tests/tsan.supp, for isgd and isgctl alike.
TSAN = _built_with(ISGD, b"__tsan_init")
if TSAN and "suppressions=" not in os.environ.get("TSAN_OPTIONS", ""):
    os.environ["TSAN_OPTIONS"] = (os.environ.get("TSAN_OPTIONS", "") + " suppressions="
                                  + os.path.join(SOURCE, "tests", "tsan.supp")).strip()

# What a sanitizer prints on isgd's stderr (its log) when it finds a bug:
# ThreadSanitizer's warnings, AddressSanitizer's and LeakSanitizer's errors,
# UndefinedBehaviorSanitizer's runtime errors.
SANITIZER_RE = re.compile(r"^(?:WARNING: ThreadSanitizer: |==\d+==ERROR: (?:Address|Leak)Sanitizer: "
                          r"|\S+:\d+:\d+: runtime error: )", re.M)

# isgd refuses a policy directory or file that group or others may write: with
# umask 002, every policy file a test writes would be refused. Files the
# tests write are made as an admin would make them, whatever the caller's umask.
os.umask(0o022)

# The policy trees of the checkout (policies/, tests/bench/policies,
# tests/data/policy) as the build copies them (CMakeLists.txt), with modes
# 0644 and 0755: git keeps no modes, so the checkout's own may be
# group-writable (umask 002), and isgd would refuse them.
POLICY_TREES = os.path.join(os.path.dirname(BIN), "policy-trees")


def policy_tree(rel):
    """The build's copy of the checkout's policy tree `rel` ("policies",
    "tests/bench/policies", "tests/data/policy/features", ...)."""
    path = os.path.join(POLICY_TREES, rel)
    if not os.path.isdir(path):
        raise AssertionError("%s: no such copy of %s (build first: cmake --build)"
                             % (path, os.path.join(SOURCE, rel)))
    return path


def built_policy_dir(path):
    """A policy directory inside one of the checkout's policy trees becomes
    its copy in the build; any other is returned as it is."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path, SOURCE)
    for tree in ("policies", os.path.join("tests", "bench", "policies"),
                 os.path.join("tests", "data", "policy")):
        if rel == tree or rel.startswith(tree + os.sep):
            return policy_tree(rel)
    return path

# Timeouts in seconds; valgrind slows the daemon down by an order of magnitude.
SLOW = 6.0 if VALGRIND else 1.0
START_TIMEOUT = 60.0 if VALGRIND else 10.0
STOP_TIMEOUT = 60.0 if VALGRIND else 10.0
CTL_TIMEOUT = 120.0 if VALGRIND else 30.0

POLICE_CN = "met-police.partners.isg.example"
NHS_CN = "nhs-trust.partners.isg.example"
COUNCIL_CN = "city-council.partners.isg.example"
GATEWAY_CN = "gateway.isg.test"


def make_tmpdir(prefix="isg-"):
    """A fresh temporary directory (mode 0700), removed at exit unless ISG_KEEP_TMP."""
    d = tempfile.mkdtemp(prefix=prefix)
    if KEEP_TMP:
        sys.stderr.write("isgtest: keeping %s\n" % d)
    return d


def remove_tmpdir(d):
    if not KEEP_TMP:
        shutil.rmtree(d, ignore_errors=True)


def read_text(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def tail(text, lines=40):
    parts = text.splitlines()[-lines:]
    return "\n".join(parts)


# --------------------------------------------------------------------------
# YAML: a small emitter for the config and policy files (block style).

_PLAIN_RE = re.compile(r"[A-Za-z0-9_./@~-][A-Za-z0-9_./@:+~ ()-]*")
_NUMBER_RE = re.compile(r"[-+]?(\d[\d_]*)?(\.\d*)?([eE][-+]?\d+)?|0[xXoObB][0-9a-fA-F_]+")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", ""}


def yaml_scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    s = str(v)
    plain = (
        _PLAIN_RE.fullmatch(s)
        and s.lower() not in _RESERVED
        and not _NUMBER_RE.fullmatch(s)
        and not s.endswith(" ")
        and not s.endswith(":")
        and ": " not in s
    )
    return s if plain else json.dumps(s)


def yaml_dump(obj, indent=0):
    """Block-style YAML for nested dicts and lists of scalars or dicts."""
    pad = " " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(_yaml_entry(pad + str(k) + ":", v, indent))
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict) and item:
                sub = yaml_dump(item, indent + 2).splitlines()
                sub[0] = pad + "- " + sub[0][indent + 2:]
                out.extend(sub)
            else:
                out.extend(_yaml_entry(pad + "-", item, indent))
    else:
        out.append(pad + yaml_scalar(obj))
    return "\n".join(out) + "\n"


def _yaml_entry(head, v, indent):
    if isinstance(v, dict):
        if not v:
            return [head + " {}"]
        return [head] + yaml_dump(v, indent + 2).splitlines()
    if isinstance(v, list):
        if not v:
            return [head + " []"]
        if all(not isinstance(x, (dict, list)) for x in v):
            return [head + " [" + ", ".join(yaml_scalar(x) for x in v) + "]"]
        return [head] + yaml_dump(v, indent + 2).splitlines()
    return [head + " " + yaml_scalar(v)]


def write_yaml(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        f.write(yaml_dump(obj))


# --------------------------------------------------------------------------
# PKI, made with the openssl command-line tool at test time.

Cert = collections.namedtuple("Cert", "name cert key cn")

_REQ_CNF = """\
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ v3_ca ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_CA_CNF = """\
[ ca ]
default_ca = partner_ca
[ partner_ca ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
certificate = $dir/ca.crt
private_key = $dir/ca.key
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 365
default_crl_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
preserve = yes
[ policy_any ]
commonName = supplied
"""

_CLIENT_EXT = """\
[ client_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_SERVER_EXT = """\
[ server_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
"""


def openssl(*args, cwd=None):
    p = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("openssl %s failed (%d):\n%s%s" % (" ".join(args), p.returncode, p.stdout, p.stderr))
    return p.stdout


def _asn1_time(dt):
    return dt.strftime("%y%m%d%H%M%SZ")


class Pki:
    """
    A test PKI in `dir`:
      partner CA (ECDSA P-256, an `openssl ca` database so it can revoke),
      gateway server CA and the gateway certificate (CN gateway.isg.test,
      SAN DNS:localhost, IP:127.0.0.1 and IP:::1), and client certificates on demand.
    Client certificates are kept in self.certs by name.
    """

    def __init__(self, dir):
        self.dir = os.path.abspath(dir)
        os.makedirs(self.dir, exist_ok=True)
        self._req_cnf = self._write("req.cnf", _REQ_CNF)
        self.certs = {}
        self._serial = 0x1000
        # Partner CA with an `openssl ca` database.
        self.ca_dir = os.path.join(self.dir, "partner-ca")
        os.makedirs(os.path.join(self.ca_dir, "newcerts"))
        self._write("partner-ca/index.txt", "")
        self._write("partner-ca/serial", "1000\n")
        self._write("partner-ca/crlnumber", "01\n")
        self._ca_cnf = self._write("partner-ca/ca.cnf", _CA_CNF.format(dir=self.ca_dir))
        self.partner_ca = self._self_signed("partner-ca/ca", "ISG Test Partner CA")
        # Gateway server CA and the gateway certificate.
        self.server_ca = self._self_signed("server-ca", "ISG Test Gateway CA")
        key = self._genkey("gateway.key")
        csr = self._csr(key, GATEWAY_CN, "gateway.csr")
        ext = self._write("server.ext", _SERVER_EXT)
        crt = os.path.join(self.dir, "gateway.crt")
        self._sign_x509(csr, self.server_ca, ext, "server_ext", crt)
        self.gateway = Cert("gateway", crt, key, GATEWAY_CN)
        self.gateway_chain = os.path.join(self.dir, "gateway-chain.crt")
        with open(self.gateway_chain, "w") as f:
            f.write(read_text(crt) + read_text(self.server_ca.cert))
        self._rogue_ca = None

    # -- files and primitives

    def _write(self, rel, text):
        path = os.path.join(self.dir, rel)
        with open(path, "w") as f:
            f.write(text)
        return path

    def _genkey(self, rel):
        """An ECDSA P-256 private key, created with mode 0600 from the start."""
        path = os.path.join(self.dir, rel)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        os.chmod(path, 0o600)
        return path

    def _csr(self, key, cn, rel):
        path = os.path.join(self.dir, rel)
        openssl("req", "-new", "-config", self._req_cnf, "-key", key, "-subj", "/CN=" + cn, "-out", path)
        return path

    def _self_signed(self, stem, cn):
        key = self._genkey(stem + ".key")
        crt = os.path.join(self.dir, stem + ".crt")
        openssl("req", "-x509", "-new", "-config", self._req_cnf, "-extensions", "v3_ca", "-key", key,
                "-subj", "/CN=" + cn, "-days", "3650", "-sha256", "-out", crt)
        return Cert(os.path.basename(stem), crt, key, cn)

    def _sign_x509(self, csr, ca, ext, section, out, days=365):
        self._serial += 1
        openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial",
                str(self._serial), "-days", str(days), "-sha256", "-extfile", ext, "-extensions",
                section, "-out", out)

    def _client_ext(self, name, san_uri=None, san_dns=None, eku=None):
        text = _CLIENT_EXT
        if eku is not None:
            text = text.replace("extendedKeyUsage = clientAuth", "extendedKeyUsage = " + eku)
        sans = []
        if san_uri:
            sans.append("URI:" + san_uri)
        if san_dns:
            sans.append("DNS:" + san_dns)
        if sans:
            text += "subjectAltName = " + ",".join(sans) + "\n"
        return self._write(name + ".ext", text)

    # -- client certificates

    def client(self, name, cn=None, san_uri=None, san_dns=None, not_before=None, not_after=None,
               eku=None):
        """
        A partner client certificate issued by the partner CA (openssl ca).
        not_before/not_after: datetime (UTC) for explicit validity.
        eku: its extendedKeyUsage instead of clientAuth (e.g. "serverAuth").
        """
        if name in self.certs:
            raise ValueError("certificate %r exists" % name)
        cn = cn or name
        key = self._genkey(name + ".key")
        csr = self._csr(key, cn, name + ".csr")
        ext = self._client_ext(name, san_uri, san_dns, eku)
        crt = os.path.join(self.dir, name + ".crt")
        args = ["ca", "-batch", "-config", self._ca_cnf, "-notext", "-in", csr, "-out", crt,
                "-extfile", ext, "-extensions", "client_ext"]
        now = datetime.datetime.now(datetime.timezone.utc)
        if not_before or not_after:
            args += ["-startdate", _asn1_time(not_before or now - datetime.timedelta(days=1)),
                     "-enddate", _asn1_time(not_after or now + datetime.timedelta(days=365))]
        else:
            args += ["-days", "365"]
        openssl(*args)
        c = Cert(name, crt, key, cn)
        self.certs[name] = c
        return c

    def expired_client(self, name, cn):
        now = datetime.datetime.now(datetime.timezone.utc)
        return self.client(name, cn, not_before=now - datetime.timedelta(days=400),
                           not_after=now - datetime.timedelta(days=30))

    def not_yet_valid_client(self, name, cn):
        now = datetime.datetime.now(datetime.timezone.utc)
        return self.client(name, cn, not_before=now + datetime.timedelta(days=30),
                           not_after=now + datetime.timedelta(days=400))

    def untrusted_client(self, name, cn):
        """A client certificate from a different CA that the gateway does not trust."""
        if name in self.certs:
            raise ValueError("certificate %r exists" % name)
        if self._rogue_ca is None:
            self._rogue_ca = self._self_signed("rogue-ca", "Rogue Partner CA")
        key = self._genkey(name + ".key")
        csr = self._csr(key, cn, name + ".csr")
        ext = self._client_ext(name)
        crt = os.path.join(self.dir, name + ".crt")
        self._sign_x509(csr, self._rogue_ca, ext, "client_ext", crt)
        c = Cert(name, crt, key, cn)
        self.certs[name] = c
        return c

    def revoke(self, name):
        openssl("ca", "-batch", "-config", self._ca_cnf, "-revoke", self.certs[name].cert,
                "-crl_reason", "keyCompromise")

    def crl(self, rel="partners.crl"):
        """Write the partner CA's current CRL (PEM) and return its path."""
        path = os.path.join(self.dir, rel)
        openssl("ca", "-batch", "-config", self._ca_cnf, "-gencrl", "-out", path)
        return path


_shared_pki = None


def shared_pki():
    """One PKI per test process (generating keys is the slow part) with the default partners."""
    global _shared_pki
    if _shared_pki is None:
        d = make_tmpdir("isg-pki-")
        atexit.register(remove_tmpdir, d)
        pki = Pki(d)
        pki.client("police", POLICE_CN)
        pki.client("nhs", NHS_CN)
        pki.client("council", COUNCIL_CN)
        _shared_pki = pki
    return _shared_pki


# --------------------------------------------------------------------------
# Policy fixtures.

def default_partners():
    return [
        {"id": "met-police", "name": "Metropolitan Police Service", "kind": "police",
         "certificate": {"subject_cn": POLICE_CN}},
        {"id": "nhs-trust", "name": "Example NHS Foundation Trust", "kind": "nhs",
         "certificate": {"subject_cn": NHS_CN}},
        {"id": "city-council", "name": "Example City Council", "kind": "council",
         "certificate": {"subject_cn": COUNCIL_CN}},
    ]


def default_fields():
    return [
        {"name": "nhs_number", "type": "nhs_number", "action": "pass", "required": True},
        {"name": "family_name", "type": "name", "action": "pass"},
        {"name": "age", "type": "integer", "action": "pass"},
        {"name": "risk_score", "type": "number", "action": "pass"},
        {"name": "urgent", "type": "boolean", "action": "pass"},
        {"name": "concern_date", "type": "date", "action": "pass"},
        {"name": "concern_summary", "type": "text", "action": "pass"},
        {"name": "officer_notes", "type": "text", "action": "drop"},
    ]


AGREEMENT_ID = "police-nhs-adult-safeguarding"
DATASET = "safeguarding-concern"


def default_agreement(**changes):
    a = {
        "id": AGREEMENT_ID,
        "version": 1,
        "title": "Adult safeguarding concerns",
        "senders": ["met-police"],
        "recipients": ["nhs-trust"],
        "purpose": {"code": "adult-safeguarding", "text": "Share adult safeguarding concerns"},
        "lawful_basis": ["UK GDPR Art. 6(1)(e)", "UK GDPR Art. 9(2)(b)"],
        "valid_from": "2025-01-01",
        "valid_until": "2030-12-31",
        "datasets": [{"name": DATASET, "unknown_fields": "reject", "fields": default_fields()}],
    }
    a.update(changes)
    return a


def write_policy(dir, partners=None, agreements=None):
    """
    Write partners.yaml and agreements/<id>.yaml into dir; returns dir.
    The modes are set, whatever the umask: isgd refuses a policy directory
    or file that group or others may write.
    """
    adir = os.path.join(dir, "agreements")
    os.makedirs(adir, exist_ok=True)
    for d in (dir, adir):
        os.chmod(d, 0o755)
    files = [(os.path.join(dir, "partners.yaml"),
              {"partners": default_partners() if partners is None else partners})]
    for a in [default_agreement()] if agreements is None else agreements:
        files.append((os.path.join(adir, a["id"] + ".yaml"), {"agreement": a}))
    for path, obj in files:
        write_yaml(path, obj)
        os.chmod(path, 0o644)
    return dir


# --------------------------------------------------------------------------
# Linkage-domain keys (docs/keys.md), through isgctl keys.

DomainKey = collections.namedtuple("DomainKey", "name version created retires key")

_DOMAIN_LINE = re.compile(r"isg-domain-key-v1 ([a-z0-9][a-z0-9-]{0,62}) ([1-9][0-9]*) "
                          r"(\d{4}-\d\d-\d\d) (-|\d{4}-\d\d-\d\d) ([A-Za-z0-9+/]{43}=)")


def new_domain(keys_dir, name):
    """isgctl keys new-domain KEYS_DIR NAME; AssertionError when it fails."""
    r = ctl("keys", "new-domain", keys_dir, name)
    if r.rc != 0:
        raise AssertionError("isgctl keys new-domain failed\n%s" % (r,))
    return r


def rotate_domain(keys_dir, name, overlap=None):
    """isgctl keys rotate KEYS_DIR NAME [--overlap DAYS]; AssertionError when it fails."""
    args = ["keys", "rotate", keys_dir, name]
    if overlap is not None:
        args += ["--overlap", str(overlap)]
    r = ctl(*args)
    if r.rc != 0:
        raise AssertionError("isgctl keys rotate failed\n%s" % (r,))
    return r


def domain_keys(keys_dir, name):
    """Every version in keys_dir/domains/NAME.key as DomainKey tuples (key: 32 bytes), oldest first."""
    path = os.path.join(keys_dir, "domains", name + ".key")
    with open(path, encoding="ascii") as f:
        text = f.read()
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        m = _DOMAIN_LINE.fullmatch(line)
        if not m:
            raise AssertionError("%s:%d: not a domain key line" % (path, i))
        key = base64.b64decode(m.group(5), validate=True)
        out.append(DomainKey(m.group(1), int(m.group(2)), m.group(3), m.group(4), key))
    return out


def tampered_store(src, path, *statements):
    """A copy of the store file src at path, changed by sqlite3 statements (sql, args),
    as someone who can write the file would change it. Returns path."""
    shutil.copyfile(src, path)
    db = sqlite3.connect(path)
    try:
        for sql, args in statements:
            db.execute(sql, args)
        db.commit()
    finally:
        db.close()
    return path


def pseudonym(key, key_version, type_byte, normalised):
    """The construction of docs/pseudonyms.md, standard library only."""
    value = normalised.encode("utf-8")
    data = b"ISG-PSEUDONYM\x00\x01" + bytes([type_byte]) + struct.pack(">I", len(value)) + value
    mac = hmac.new(key, data, hashlib.sha256).digest()
    return "p%d_%s" % (key_version, base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii"))


# --------------------------------------------------------------------------
# The daemon.

def free_port():
    """A port free now: nothing keeps it free until isgd binds it (see Gateway.start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# How often Gateway.start moves isgd to another port when its own was taken.
PORT_RETRIES = 3


def _merge(base, over):
    for k, v in over.items():
        if v is None:
            base.pop(k, None)
        elif isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def _die_with_parent():
    """In the child before exec: SIGKILL when the test process dies, so no isgd outlives it."""
    try:
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def ctl(*args, timeout=CTL_TIMEOUT, input=None, stdout_path=None):
    """Run isgctl; returns a CtlResult. stdout_path: write standard output
    to that file (for example /dev/full) instead of capturing it."""
    argv = [ISGCTL] + [str(a) for a in args]
    with contextlib.ExitStack() as stack:
        out = (stack.enter_context(open(stdout_path, "w")) if stdout_path
               else subprocess.PIPE)
        p = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, text=True, timeout=timeout,
                           input=input, stdin=None if input is not None else subprocess.DEVNULL)
    return CtlResult(p.returncode, p.stdout or "", p.stderr, argv)


class CtlResult(collections.namedtuple("CtlResult", "rc out err argv")):
    def __str__(self):
        return "$ %s\nexit %d\n--- stdout\n%s--- stderr\n%s" % (
            " ".join(self.argv), self.rc, self.out, self.err)


class SanitizerReport(AssertionError):
    """A sanitizer's report in isgd's log."""


def sanitizer_reports(text, max_lines=80):
    """Each sanitizer report in text, up to its SUMMARY line (or max_lines)."""
    out = []
    for m in SANITIZER_RE.finditer(text):
        lines = text[m.start():].splitlines()[:max_lines]
        end = next((i for i, l in enumerate(lines) if l.startswith("SUMMARY: ")), len(lines) - 1)
        out.append("\n".join(lines[:end + 1]))
    return out


class Gateway:
    """
    One isgd in tmpdir: keys in tmpdir/keys (isgctl keys init), store in
    tmpdir/store/isg.db, config tmpdir/isgd.yaml, log tmpdir/isgd.log.
    Overrides merge into the config: top-level keys, nested dicts
    (tls={...}, limits={...}), a None value removes a key; `crl=PATH` is a
    shortcut for tls.crl.
    """

    def __init__(self, tmpdir, pki, policy_dir, start=True, **overrides):
        self.dir = os.path.abspath(tmpdir)
        os.makedirs(self.dir, exist_ok=True)
        self.pki = pki
        # Never the checkout's own tree: its modes are whatever the umask made.
        self.policy_dir = built_policy_dir(policy_dir)
        self.port = free_port()
        self.config_path = os.path.join(self.dir, "isgd.yaml")
        self.log_path = os.path.join(self.dir, "isgd.log")
        self.valgrind_log = os.path.join(self.dir, "valgrind.log")
        self.keys_dir = os.path.join(self.dir, "keys")
        store_dir = os.path.join(self.dir, "store")
        os.makedirs(store_dir, mode=0o700, exist_ok=True)
        self.store_path = os.path.join(store_dir, "isg.db")
        self.proc = None
        self.last_rc = None
        self.starts = 0
        self._final_log = None
        self._sanitizer_seen = 0
        self.check_sanitizers = True
        if "crl" in overrides:
            overrides.setdefault("tls", {})["crl"] = overrides.pop("crl")
        self.config = _merge({
            "listen": "127.0.0.1:%d" % self.port,
            "threads": 2,
            "tls": {
                "certificate": pki.gateway_chain,
                "key": pki.gateway.key,
                "client_ca": pki.partner_ca.cert,
            },
            "store": {"path": self.store_path, "undelivered_ttl": "30d"},
            "policy_dir": self.policy_dir,
            "keys_dir": self.keys_dir,
            "limits": {"idle_timeout": "300s"},
            "log_level": "info",
        }, overrides)
        self.write_config()
        if not os.path.exists(self.keys_dir):
            r = ctl("keys", "init", self.keys_dir)
            if r.rc != 0:
                raise AssertionError("isgctl keys init failed\n%s" % (r,))
        if start:
            self.start()

    def write_config(self):
        write_yaml(self.config_path, self.config)

    @property
    def address(self):
        return self.config["listen"]

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def configured_store_path(self):
        """store.path as isgd reads it: a relative one is under the configuration's directory."""
        path = (self.config.get("store") or {}).get("path") or self.store_path
        return os.path.join(os.path.dirname(self.config_path), path)

    def new_store_args(self):
        """
        ["--new-store"] while the configured store file does not exist yet,
        else []: isgd makes a store only when asked to, and refuses
        --new-store where one exists, as an admin's first start and later
        starts do.
        """
        return [] if os.path.lexists(self.configured_store_path()) else ["--new-store"]

    def argv(self):
        cmd = [ISGD, "--config", self.config_path] + self.new_store_args()
        if VALGRIND:
            cmd = ["valgrind", "--error-exitcode=99", "--leak-check=full",
                   "--errors-for-leak-kinds=definite", "--log-file=" + self.valgrind_log] + cmd
        return cmd

    def start(self):
        """
        Start isgd and wait until it serves. The port free_port() chose when
        this Gateway was made is only free until someone binds it: another
        test process (ctest -j) may have taken it by now, before a first
        start or between a stop and a start, or a client's connection may
        hold it as its local port. When isgd exits saying so and listen is
        still the harness's own 127.0.0.1:port, start moves it to a new port
        (config rewritten, the move noted in the log) and tries again, up to
        PORT_RETRIES times. A listen the test set itself is left alone: a
        test that chose the address (another host, a port taken on purpose)
        gets the failure.
        """
        assert not self.running, "isgd already running"
        for attempt in range(PORT_RETRIES + 1):
            since = self._log_size()
            with open(self.log_path, "a") as log:
                log.write("# isgtest: start %d: %s\n" % (self.starts + 1, " ".join(self.argv())))
                log.flush()
                self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             preexec_fn=_die_with_parent)
            self.starts += 1
            self._final_log = None
            try:
                self.wait_ready(since=since)
                return
            except SanitizerReport:
                raise
            except AssertionError:
                if attempt == PORT_RETRIES or self.proc is not None or not self._port_taken(since):
                    raise
            self._move_port()

    def _port_taken(self, since):
        """isgd exited because its port, the harness's choice, was taken."""
        own = "127.0.0.1:%d" % self.port
        return (self.config.get("listen") == own
                and re.search(r"^isgd: cannot listen on %s: (another process is listening on it"
                              r"|Address already in use)" % re.escape(own), self.log[since:], re.M))

    def _move_port(self):
        old, self.port = self.port, free_port()
        self.config["listen"] = "127.0.0.1:%d" % self.port
        self.write_config()
        with open(self.log_path, "a") as log:
            log.write("# isgtest: port %d was taken: listen moved to %s\n" % (old, self.config["listen"]))

    def wait_ready(self, timeout=START_TIMEOUT, since=0):
        """
        Until isgd logs event=isgd.started, which it does once it serves:
        its port is bound earlier (before it drops privileges and opens the
        store), so a TCP probe would say ready too soon.
        """
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                self.last_rc = rc
                raise AssertionError("isgd exited with %d during start-up\n%s" % (rc, self.diagnostics()))
            if "event=isgd.started" in self.log[since:]:
                return
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError("isgd did not log event=isgd.started within %.0fs\n%s"
                                     % (timeout, self.diagnostics()))
            time.sleep(0.02)

    def _log_size(self):
        try:
            return len(self.log)
        except OSError:
            return 0

    def stop(self, timeout=STOP_TIMEOUT, expect_rc=0):
        """SIGTERM, wait, check the exit code; returns the seconds it took to exit."""
        if self.proc is None:
            return 0.0
        t0 = time.monotonic()
        already = self.proc.poll() is not None
        if not already:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("isgd did not exit within %.0fs of SIGTERM\n%s" % (timeout, self.diagnostics()))
        took = time.monotonic() - t0
        self.proc = None
        self.last_rc = rc
        self.assert_no_sanitizer_report()
        if expect_rc is not None and rc != expect_rc:
            raise AssertionError("isgd exited with %d %s, expected %d\n%s"
                                 % (rc, "before SIGTERM" if already else "after SIGTERM", expect_rc,
                                    self.diagnostics()))
        return took

    def kill(self):
        """SIGKILL (no clean shutdown)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.last_rc = self.proc.wait()
            self.proc = None
            self.assert_no_sanitizer_report()

    def restart(self):
        self.stop()
        self.start()

    def reload(self, timeout=START_TIMEOUT):
        """
        SIGHUP and wait until the reload is over: the policy line
        (event=policy.loaded or event=policy.refused) and the TLS line that
        isgd logs after it has swapped the new policy and keys in. Returns
        (outcome, log text of the reload), outcome "loaded" or "refused".
        """
        since = len(self.log)
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log[since:]
            m = re.search(r"event=policy\.(loaded|refused)\b", text)
            if m and re.search(r"event=tls\.(reloaded|reload_failed)\b", text[m.end():]):
                return m.group(1), text
            if not self.running:
                raise AssertionError("isgd exited during a reload\n%s" % self.diagnostics())
            if time.monotonic() > deadline:
                raise AssertionError("no end of reload in the log within %.0fs of SIGHUP\n%s"
                                     % (timeout, self.diagnostics()))
            time.sleep(0.02)

    def close(self, strict=False):
        """
        For cleanups: stop isgd and keep a copy of the log. strict: SIGTERM
        must make it exit 0 (valgrind's errors and leaks show up here). A
        sanitizer's report in the log fails either way.
        """
        try:
            if strict:
                self.stop()
            elif self.running:
                try:
                    self.stop(expect_rc=None)
                except SanitizerReport:
                    raise
                except AssertionError:
                    pass
        finally:
            self.kill()
            self._final_log = self.log + self._valgrind_text()

    @property
    def log(self):
        try:
            return read_text(self.log_path)
        except FileNotFoundError:
            return self._final_log or ""

    def _valgrind_text(self):
        if not VALGRIND or not os.path.exists(self.valgrind_log):
            return ""
        return "\n--- valgrind\n" + read_text(self.valgrind_log)

    def diagnostics(self, lines=40):
        text = self._final_log if self._final_log is not None else self.log + self._valgrind_text()
        reports = sanitizer_reports(text)
        return "--- isgd log tail (%s)\n%s%s" % (
            self.log_path, tail(text, lines),
            "".join("\n--- sanitizer report\n" + r for r in reports))

    def assert_no_sanitizer_report(self):
        """
        Fail on a report a sanitizer build wrote in isgd's log (its stderr,
        the key process's too) since the last look: a race ThreadSanitizer
        saw, or an error AddressSanitizer or UBSan saw without stopping
        isgd, fails the test even when isgd went on to exit 0 or was killed.
        Nothing when check_sanitizers is false (a caller that reads the log
        itself, as tests/soak does).
        """
        if not self.check_sanitizers:
            return
        text = self.log
        reports = sanitizer_reports(text[self._sanitizer_seen:])
        self._sanitizer_seen = len(text)
        if reports:
            raise SanitizerReport("%d sanitizer report(s) in isgd's log (%s):\n%s"
                                  % (len(reports), self.log_path, "\n".join(reports)))

    def store_files(self):
        d = os.path.dirname(self.store_path)
        return sorted(os.path.join(d, n) for n in os.listdir(d))

    def __enter__(self):
        if not self.running:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.close()
        else:
            self.stop()
        return False


# --------------------------------------------------------------------------
# Partners driving isgctl.

class Partner:
    """A partner system that uses isgctl with the certificate pki.certs[name]."""

    def __init__(self, gateway, pki, name, ca=None):
        self.gateway = gateway
        self.cert = pki.certs[name]
        self.ca = ca or pki.server_ca.cert
        self._files = 0

    def conn_flags(self):
        return ["--gateway", self.gateway.address, "--cert", self.cert.cert, "--key", self.cert.key,
                "--ca", self.ca]

    def run(self, sub, *args, timeout=CTL_TIMEOUT):
        if CTL_FLAGS == "before":
            return ctl(*(self.conn_flags() + [sub] + list(args)), timeout=timeout)
        return ctl(*([sub] + self.conn_flags() + list(args)), timeout=timeout)

    def whoami(self):
        return self.run("whoami")

    def write_records(self, records, fmt="jsonl"):
        self._files += 1
        d = os.path.join(self.gateway.dir, "sendfiles")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "%s-%d.%s" % (self.cert.name, self._files, fmt))
        with open(path, "w", newline="", encoding="utf-8") as f:
            if fmt == "jsonl":
                for r in records:
                    f.write(json.dumps(r) + "\n")
            elif fmt == "csv":
                names = []
                for r in records:
                    names.extend(k for k in r if k not in names)
                w = csv.writer(f)
                w.writerow(names)
                for r in records:
                    w.writerow([_csv_cell(r.get(k)) for k in names])
            else:
                raise ValueError(fmt)
        return path

    def send(self, records, to="nhs-trust", agreement=AGREEMENT_ID, dataset=DATASET, message_id=None,
             fmt="jsonl", reply_to=None, extra=(), pass_format=True):
        path = self.write_records(records, fmt)
        args = ["--to", to, "--agreement", agreement, "--dataset", dataset]
        if message_id is not None:
            args += ["--message-id", message_id]
        if reply_to is not None:
            args += ["--reply-to", str(reply_to)]
        if pass_format:
            args += ["--format", fmt]
        return self.run("send", *(args + list(extra) + [path]))

    def send_ok(self, records, **kw):
        """Send and return the receipt (a dict); AssertionError with diagnostics otherwise."""
        r = self.send(records, **kw)
        if r.rc != 0:
            raise AssertionError("send failed\n%s\n%s" % (r, self.gateway.diagnostics()))
        lines = r.out.strip().splitlines()
        if len(lines) != 1:
            raise AssertionError("send printed %d lines, expected one JSON line\n%s" % (len(lines), r))
        return json.loads(lines[0])

    def fetch(self, max=None, wait=None, no_ack=False, fmt=None, timeout=CTL_TIMEOUT):
        args = []
        if max is not None:
            args += ["--max", str(max)]
        if wait is not None:
            args += ["--wait", str(wait)]
        if no_ack:
            args.append("--no-ack")
        if fmt:
            args += ["--format", fmt]
        return self.run("fetch", *args, timeout=timeout)

    def fetch_messages(self, **kw):
        """Fetch and return the messages (list of dicts); AssertionError otherwise."""
        r = self.fetch(**kw)
        if r.rc != 0:
            raise AssertionError("fetch failed\n%s\n%s" % (r, self.gateway.diagnostics()))
        try:
            return [json.loads(line) for line in r.out.splitlines() if line.strip()]
        except ValueError as e:
            raise AssertionError("fetch printed something that is not JSON Lines (%s)\n%s" % (e, r))


def _csv_cell(v):
    if v is None:
        return ""
    if v is True:
        return "true"
    if v is False:
        return "false"
    return str(v)


# --------------------------------------------------------------------------
# The wire protocol from Python: protobuf runtime + ssl module.

_pb = None


def isg_pb2():
    """Compile proto/isg.proto with protoc into a temporary directory and import it."""
    global _pb
    if _pb is None:
        d = make_tmpdir("isg-proto-")
        atexit.register(remove_tmpdir, d)
        proto_dir = os.path.join(SOURCE, "proto")
        p = subprocess.run(["protoc", "--proto_path=" + proto_dir, "--python_out=" + d,
                            os.path.join(proto_dir, "isg.proto")], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError("protoc failed:\n" + p.stderr)
        sys.path.insert(0, d)
        try:
            _pb = importlib.import_module("isg_pb2")
        finally:
            sys.path.remove(d)
    return _pb


def varint_encode(n):
    if n < 0:
        raise ValueError("negative varint")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint_decode(buf, pos=0):
    """(value, new_pos) or None when buf ends inside the varint; ValueError when over 10 bytes."""
    result = shift = 0
    for i in range(pos, min(len(buf), pos + 10)):
        b = buf[i]
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i + 1
        shift += 7
    if len(buf) - pos >= 10:
        raise ValueError("varint longer than 10 bytes")
    return None


def tls_context(cert, ca, minimum=ssl.TLSVersion.TLSv1_3):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = minimum
    ctx.load_verify_locations(ca)
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


class FrameConn:
    """A TLS connection to isgd speaking length-delimited isg.Frame messages."""

    def __init__(self, gateway, cert, ca=None, server_hostname="localhost", timeout=10.0 * SLOW):
        self.pb = isg_pb2()
        ctx = tls_context(cert, ca or gateway.pki.server_ca.cert)
        raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        self.buf = b""
        self.next_id = 1

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def send_frame(self, frame):
        data = frame.SerializeToString()
        self.sock.sendall(varint_encode(len(data)) + data)

    def send_raw(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("gateway closed the connection")
        self.buf += chunk

    def recv_frame(self, timeout=None):
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            head = varint_decode(self.buf)
            if head is not None:
                n, pos = head
                if len(self.buf) - pos >= n:
                    frame = self.pb.Frame()
                    frame.ParseFromString(self.buf[pos:pos + n])
                    self.buf = self.buf[pos + n:]
                    self.last_frame_len = n  # as the length prefix said
                    return frame
            self._fill()

    def request(self, **body):
        """Send a Frame with one body (e.g. hello=Hello(...)) and a fresh request_id; return the reply."""
        frame = self.pb.Frame(request_id=self.next_id, **body)
        self.next_id += 1
        self.send_frame(frame)
        reply = self.recv_frame()
        if reply.request_id != frame.request_id:
            raise AssertionError("reply has request_id %d, request had %d:\n%s"
                                 % (reply.request_id, frame.request_id, reply))
        return reply

    def send_ok(self, message_id, records, agreement_id=AGREEMENT_ID, dataset=DATASET,
                recipient="nhs-trust"):
        """Send records (dicts) in one SendRequest; the receipt's gateway_id,
        or an AssertionError when the answer is no SendResult."""
        reply = self.request(send=self.pb.SendRequest(
            message_id=message_id, recipient=recipient, agreement_id=agreement_id,
            dataset=dataset, records=[pb_record(self.pb, r) for r in records]))
        if reply.WhichOneof("body") != "send_result":
            raise AssertionError("send %r answered with\n%s" % (message_id, reply))
        return reply.send_result.receipt.gateway_id


def pb_record(pb, fields):
    """An isg.Record from a dict; Python types choose the Value kind."""
    rec = pb.Record()
    for name, v in fields.items():
        f = rec.fields.add(name=name)
        if isinstance(v, bool):
            f.value.boolean = v
        elif isinstance(v, int):
            f.value.integer = v
        elif isinstance(v, float):
            f.value.real = v
        else:
            f.value.text = v
    return rec


def pb_record_dict(rec):
    """A dict from an isg.Record; each value keeps its Value kind's Python type."""
    out = {}
    for f in rec.fields:
        kind = f.value.WhichOneof("kind")
        out[f.name] = getattr(f.value, kind) if kind else None
    return out


# --------------------------------------------------------------------------
# Threads whose exceptions are not lost.

_threads = []  # every Thread made, for ScenarioCase's check at the end of a test
_threads_lock = threading.Lock()


class Thread(threading.Thread):
    """
    A threading.Thread (a daemon unless told) whose target may raise: the
    exception is kept and join() raises it in the joining thread, so a
    protocol violation or a failed assertion in a test's worker fails the
    test instead of printing a traceback and ending the thread quietly.
    A ScenarioCase also fails when a thread it started raised and nothing
    joined it since (a join that timed out, or an assertion that failed first).
    """

    def __init__(self, target, args=(), kwargs=None, name=None, daemon=True):
        super().__init__(target=target, args=args, kwargs=kwargs, name=name, daemon=daemon)
        self.exception = None
        self._reported = False
        with _threads_lock:
            _threads.append(self)

    def run(self):
        try:
            super().run()
        except BaseException as e:  # kept for join(), never dropped
            self.exception = e

    def join(self, timeout=None):
        super().join(timeout)
        self.raise_exception()

    def raise_exception(self):
        """Raise what the target raised, once; nothing while it runs or when it returned."""
        if self.exception is not None and not self._reported:
            self._reported = True
            raise self.exception


def unreported_thread_exceptions(since=0):
    """Exceptions of the Threads made since index `since` that no join() raised yet (marked raised now)."""
    with _threads_lock:
        threads = _threads[since:]
    out = []
    for t in threads:
        try:
            t.raise_exception()
        except BaseException as e:
            out.append((t, e))
    return out


def _thread_count():
    with _threads_lock:
        return len(_threads)


# --------------------------------------------------------------------------
# Test case base.

def binaries_present():
    return os.access(ISGD, os.X_OK) and os.access(ISGCTL, os.X_OK)


def require_binaries():
    """Skip when the binaries are absent and ISG_BIN was not given; fail when it was."""
    if binaries_present():
        return
    msg = "isgd/isgctl not found in %s" % BIN
    if os.environ.get("ISG_BIN"):
        raise AssertionError(msg)
    raise unittest.SkipTest(msg)


class ScenarioCase(unittest.TestCase):
    """Each test gets a temporary directory; gateways started through
    self.gateway() are stopped at the end and their log tails printed when
    the test fails."""

    @classmethod
    def setUpClass(cls):
        require_binaries()
        cls.pki = shared_pki()

    def setUp(self):
        self.tmp = make_tmpdir("isg-%s-" % self._testMethodName)
        self.addCleanup(remove_tmpdir, self.tmp)
        self._gateways = []
        # Cleanups run last first: this one after the gateways' (added
        # later) are stopped, when the test's threads have ended.
        self.addCleanup(self._check_threads, _thread_count())

    def _check_threads(self, since):
        lost = unreported_thread_exceptions(since)
        if lost:
            raise AssertionError("%d test thread(s) raised and nothing joined them:\n%s" % (
                len(lost), "\n".join("--- %s\n%s" % (t.name, "".join(
                    traceback.format_exception(type(e), e, e.__traceback__))) for t, e in lost)))

    def run(self, result=None):
        if result is None:
            return super().run(result)
        before = len(result.failures) + len(result.errors)
        out = super().run(result)
        if len(result.failures) + len(result.errors) > before:
            for gw in getattr(self, "_gateways", []):
                sys.stderr.write("\n=== %s: %s\n" % (self.id(), gw.diagnostics(60)))
        return out

    def policy(self, name="policies", partners=None, agreements=None):
        return write_policy(os.path.join(self.tmp, name), partners, agreements)

    def gateway(self, policy_dir=None, name="gw", domains=(), start=True, **overrides):
        """A Gateway in self.tmp/name; `domains`: linkage domains to create
        (isgctl keys new-domain) before it starts; start=False leaves it stopped."""
        policy_dir = policy_dir or self.policy()
        gw = Gateway(os.path.join(self.tmp, name), self.pki, policy_dir, start=False, **overrides)
        for d in domains:
            new_domain(gw.keys_dir, d)
        self._gateways.append(gw)
        self.addCleanup(gw.close, strict=True)
        if start:
            gw.start()
        return gw

    def partner(self, gw, name):
        return Partner(gw, self.pki, name)

    # assertions with diagnostics

    def assertAlive(self, gw, after=""):
        if not gw.running:
            rc = gw.proc.returncode if gw.proc is not None else gw.last_rc
            how = "killed by signal %d" % -rc if rc is not None and rc < 0 else "exit code %s" % rc
            self.fail("isgd is not running%s (%s)\n%s" % (" " + after if after else "", how, gw.diagnostics()))

    def assertCtl(self, r, rc, gw=None, *contains):
        if r.rc != rc or any(c not in r.err for c in contains):
            self.fail("expected exit %d%s\n%s\n%s" % (
                rc, " with stderr containing %r" % (contains,) if contains else "", r,
                gw.diagnostics() if gw else ""))

    def assertRefused(self, r, gw, code, rule):
        """isgctl exit 3 and `isgctl: refused: CODE [rule]: ...` on stderr."""
        self.assertCtl(r, 3, gw, "refused", code, "[%s]" % rule)
