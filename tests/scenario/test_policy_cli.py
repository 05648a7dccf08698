"""
Scenario: an admin and an IG officer use isgctl policy check (with --keys),
show and diff on real policy directories, with their exit statuses
(docs/isgctl.md, docs/policy.md); and docs/policy.schema.json is checked
against the loader's own key and name tables and against the example
policies, with a small JSON Schema validator written here (the standard
library has none).

Standard library and Debian's PyYAML only. Environment: ISG_BIN, the
directory holding isgctl (default <repo>/build/bin); ISG_SOURCE, the
repository (default: two directories up). The policy trees are loaded from
the build's copy (<build>/policy-trees, made with modes 0644 and 0755), not
from the checkout, whose modes are whatever the umask made (git keeps none).
"""

import datetime
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import unittest

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.abspath(os.environ.get("ISG_SOURCE") or os.path.join(HERE, "..", ".."))
BIN = os.path.abspath(os.environ.get("ISG_BIN") or os.path.join(SOURCE, "build", "bin"))
ISGCTL = os.path.join(BIN, "isgctl")
TREES = os.path.join(os.path.dirname(BIN), "policy-trees")
DATA = os.path.join(TREES, "tests", "data", "policy")
FEATURES = os.path.join(DATA, "features")
SHIPPED = os.path.join(TREES, "policies")
SCHEMA = os.path.join(SOURCE, "docs", "policy.schema.json")


def today():
    return datetime.datetime.now(datetime.timezone.utc).date()


def policy_version(d):
    """The documented policy version (docs/policy.md, "The policy version")."""
    adir = os.path.join(d, "agreements")
    rels = ["partners.yaml"] + ["agreements/" + n for n in os.listdir(adir)
                                if n.endswith(".yaml") and not n.startswith(".")
                                and os.path.isfile(os.path.join(adir, n))]
    h = hashlib.sha256()
    for rel in sorted(r.encode() for r in rels):
        with open(os.path.join(d.encode(), rel), "rb") as f:
            data = f.read()
        h.update(struct.pack(">Q", len(rel)) + rel + struct.pack(">Q", len(data)) + data)
    return h.hexdigest()


# ---- YAML as an editor's language server reads it (YAML 1.2 core schema) ----

class CoreLoader(yaml.SafeLoader):
    """Dates stay strings and only true/false are booleans, as in YAML 1.2."""


CoreLoader.yaml_implicit_resolvers = {}
for tag, regexp, first in [
        ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        ("tag:yaml.org,2002:int", r"^[-+]?[0-9]+$", "-+0123456789"),
        ("tag:yaml.org,2002:float",
         r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$", "-+.0123456789"),
        ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""])]:
    CoreLoader.add_implicit_resolver(tag, re.compile(regexp), list(first))


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=CoreLoader)


# ---- a small JSON Schema (2020-12) validator: the keywords the schema uses ----

KNOWN = {"$schema", "$id", "$defs", "$ref", "$comment", "title", "description", "type",
         "properties", "required", "additionalProperties", "minProperties", "items",
         "minItems", "maxItems", "uniqueItems", "enum", "const", "pattern", "minLength",
         "maxLength", "minimum", "maximum", "oneOf", "anyOf", "allOf", "not", "if", "then",
         "else"}

TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class Validator:
    def __init__(self, schema):
        self.root = schema

    def resolve(self, ref):
        assert ref.startswith("#/"), ref
        node = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def errors(self, value, schema=None, path="$"):
        """Every problem of value against schema, as 'path: message' strings."""
        schema = self.root if schema is None else schema
        out = []
        for key in schema:
            if key not in KNOWN:
                raise AssertionError("schema keyword %r is not supported here" % key)
        if "$ref" in schema:
            out += self.errors(value, self.resolve(schema["$ref"]), path)
        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(TYPES[t](value) for t in types):
                return out + ["%s: %r is not of type %s" % (path, value, "/".join(types))]
        if "enum" in schema and value not in schema["enum"]:
            out.append("%s: %r is not one of %s" % (path, value, schema["enum"]))
        if "const" in schema and value != schema["const"]:
            out.append("%s: %r is not %r" % (path, value, schema["const"]))
        if isinstance(value, str):
            if len(value) < schema.get("minLength", 0):
                out.append("%s: too short" % path)
            if len(value) > schema.get("maxLength", 1 << 62):
                out.append("%s: too long" % path)
            if "pattern" in schema and not re.search(schema["pattern"], value):
                out.append("%s: %r does not match %s" % (path, value, schema["pattern"]))
        if TYPES["number"](value):
            if value < schema.get("minimum", -float("inf")):
                out.append("%s: %r is below the minimum" % (path, value))
            if value > schema.get("maximum", float("inf")):
                out.append("%s: %r is above the maximum" % (path, value))
        if isinstance(value, list):
            if len(value) < schema.get("minItems", 0):
                out.append("%s: too few items" % path)
            if len(value) > schema.get("maxItems", 1 << 62):
                out.append("%s: too many items" % path)
            if schema.get("uniqueItems") and len(set(map(json.dumps, value))) != len(value):
                out.append("%s: items are not unique" % path)
            if "items" in schema:
                for i, item in enumerate(value):
                    out += self.errors(item, schema["items"], "%s[%d]" % (path, i))
        if isinstance(value, dict):
            for key in schema.get("required", []):
                if key not in value:
                    out.append("%s: missing %r" % (path, key))
            if len(value) < schema.get("minProperties", 0):
                out.append("%s: too few properties" % path)
            props = schema.get("properties", {})
            for key, item in value.items():
                if key in props:
                    out += self.errors(item, props[key], "%s.%s" % (path, key))
                elif schema.get("additionalProperties") is False:
                    out.append("%s: unknown key %r" % (path, key))
        for sub in schema.get("allOf", []):
            out += self.errors(value, sub, path)
        if "anyOf" in schema and all(self.errors(value, s, path) for s in schema["anyOf"]):
            out.append("%s: matches none of anyOf" % path)
        if "oneOf" in schema:
            results = [self.errors(value, s, path) for s in schema["oneOf"]]
            good = [r for r in results if not r]
            if len(good) != 1:
                best = min(results, key=len) if not good else []
                out.append("%s: matches %d of oneOf %s" % (path, len(good), best[:3]))
        if "not" in schema and not self.errors(value, schema["not"], path):
            out.append("%s: must not match %s" % (path, schema["not"]))
        if "if" in schema:
            branch = "then" if not self.errors(value, schema["if"], path) else "else"
            if branch in schema:
                out += self.errors(value, schema[branch], path)
        return out


def policy_files(d):
    yield os.path.join(d, "partners.yaml")
    adir = os.path.join(d, "agreements")
    for name in sorted(os.listdir(adir)):
        if name.endswith(".yaml") and not name.startswith("."):
            yield os.path.join(adir, name)


def c_string_list(text):
    return re.findall(r'"([^"]*)"', text)


class Schema(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(SCHEMA, encoding="utf-8") as f:
            cls.schema = json.load(f)
        cls.v = Validator(cls.schema)
        with open(os.path.join(SOURCE, "gateway", "policy", "parse.c"), encoding="utf-8") as f:
            cls.parse_c = f.read()
        with open(os.path.join(SOURCE, "gateway", "policy", "policy.c"), encoding="utf-8") as f:
            cls.policy_c = f.read()
        with open(os.path.join(SOURCE, "gateway", "policy", "internal.h"), encoding="utf-8") as f:
            cls.internal_h = f.read()

    def defs(self, name):
        return self.schema["$defs"][name]

    def test_is_a_2020_12_schema(self):
        self.assertEqual(self.schema["$schema"], "https://json-schema.org/draft/2020-12/schema")
        # Every $ref resolves and every keyword is one the validator knows.
        def walk(node):
            if isinstance(node, dict):
                for k, v in node.items():
                    if k == "$ref":
                        self.v.resolve(v)
                    if k in ("properties", "$defs"):
                        for sub in v.values():
                            walk(sub)
                    elif k != "enum" and k != "const":
                        walk(v)
            elif isinstance(node, list):
                for item in node:
                    walk(item)
        walk(self.schema)
        self.v.errors({})  # raises on an unknown keyword at the top

    def loader_keys(self):
        """Each key table of parse.c, by the function (or table) that holds it."""
        tables = {}
        for m in re.finditer(r"static (?:void|bool) (\w+)\([^)]*\)\s*\{(.*?)\n\}", self.parse_c,
                             re.S):
            k = re.search(r"static const char \*const keys\[\] = \{(.*?)\};", m.group(2), re.S)
            if k:
                tables[m.group(1)] = set(c_string_list(k.group(1)))
        m = re.search(r"matcher_keys\[\] = \{(.*?)\};", self.parse_c, re.S)
        tables["matchers"] = set(c_string_list(m.group(1)))
        return tables

    def test_covers_every_key_the_loader_accepts(self):
        tables = self.loader_keys()
        want = {
            "parse_partner": "partner", "matchers": "certificate", "parse_field": "field",
            "parse_dataset": "dataset", "parse_purpose": "purpose", "parse_limits": "limits",
            "parse_agreement_body": "agreement",
        }
        self.assertEqual(set(tables), set(want), "a key table was added or renamed")
        for table, d in want.items():
            self.assertEqual(set(self.defs(d)["properties"]), tables[table], d)
        self.assertEqual(set(self.defs("partnersFile")["properties"]), {"partners"})
        self.assertEqual(set(self.defs("agreementFile")["properties"]), {"agreement"})

    def test_names_match_the_loader(self):
        def names(table):
            m = re.search(r"const struct policy_name %s\[\] = \{(.*?)\};" % table,
                          self.policy_c, re.S)
            return [n for n in c_string_list(m.group(1))]
        props = self.defs("field")["properties"]
        self.assertEqual(props["type"]["enum"], names("policy_field_types"))
        self.assertEqual(props["action"]["enum"], names("policy_field_actions"))
        self.assertEqual(props["to"]["enum"], names("policy_generalise_tos"))
        m = re.search(r"kinds\[\] = \{(.*?)\};", self.parse_c, re.S)
        self.assertEqual(self.defs("partner")["properties"]["kind"]["enum"],
                         c_string_list(m.group(1)))
        m = re.search(r"unknown\[\] = \{(.*?)\};", self.parse_c, re.S)
        self.assertEqual(self.defs("dataset")["properties"]["unknown_fields"]["enum"],
                         c_string_list(m.group(1)))

    def test_bounds_match_the_loader(self):
        def define(name):
            return int(re.search(r"#define %s (\d+)" % name, self.internal_h).group(1))
        limits = self.defs("limits")["properties"]
        self.assertEqual(limits["max_records_per_message"]["maximum"],
                         define("POLICY_MAX_RECORDS_LIMIT"))
        self.assertEqual(limits["records_per_day"]["maximum"],
                         define("POLICY_MAX_RECORDS_PER_DAY"))
        self.assertEqual(limits["messages_per_day"]["maximum"],
                         define("POLICY_MAX_MESSAGES_PER_DAY"))
        self.assertEqual(self.defs("partnersFile")["properties"]["partners"]["maxItems"],
                         define("POLICY_MAX_PARTNERS"))
        self.assertEqual(self.defs("agreement")["properties"]["datasets"]["maxItems"],
                         define("POLICY_MAX_DATASETS"))
        self.assertEqual(self.defs("dataset")["properties"]["fields"]["maxItems"],
                         define("POLICY_MAX_FIELDS"))
        self.assertEqual(self.defs("partnerIds")["maxItems"], define("POLICY_MAX_LIST"))
        self.assertEqual(self.defs("field")["properties"]["width"]["maximum"],
                         define("POLICY_NUMBER_BAND_MAX"))

    def test_shipped_and_test_policies_are_valid(self):
        dirs = [SHIPPED, FEATURES, os.path.join(DATA, "valid")]
        n = 0
        for d in dirs:
            for path in policy_files(d):
                self.assertEqual(self.v.errors(load_yaml(path)), [], path)
                n += 1
        extra = os.path.join(DATA, "transform", "linkage-research.yaml")
        self.assertEqual(self.v.errors(load_yaml(extra)), [], extra)
        self.assertGreaterEqual(n, 12)

    def test_broken_files_are_refused(self):
        # Fixtures whose fault a schema can see; calendar dates, references between files
        # and shared matchers are the loader's alone.
        cases = {
            "agreement-unknown-action.yaml": "is not one of",
            "agreement-unknown-type.yaml": "is not one of",
            "agreement-unknown-key.yaml": "unknown key 'recipents'",
            "agreement-version-zero.yaml": "below the minimum",
            "agreement-bad-bool.yaml": "is not of type boolean",
            "agreement-bad-id.yaml": "does not match",
            "agreement-empty-senders.yaml": "too few items",
            "agreement-wrong-kind.yaml": "is not of type array",
            "agreement-missing-purpose.yaml": "missing 'purpose'",
            "agreement-pseudonymise.yaml": "missing 'domain'",
            "agreement-audit-domain.yaml": "must not match",
            "agreement-domain-on-pass.yaml": "must not match",
            "agreement-generalise-no-to.yaml": "missing 'to'",
            "agreement-generalise-wrong-to.yaml": "is not 'date'",
            "agreement-number-band-no-width.yaml": "missing 'width'",
            "agreement-width-on-year.yaml": "must not match",
            "agreement-age-band-width.yaml": "above the maximum",
            "agreement-to-on-drop.yaml": "must not match",
            "agreement-bad-review-date.yaml": "does not match",
            "agreement-records-per-day-zero.yaml": "below the minimum",
            "agreement-messages-per-day-big.yaml": "above the maximum",
            "agreement-limits-unknown-key.yaml": "unknown key 'records_per_days'",
            "agreement-limits-not-map.yaml": "is not of type object",
            "partners-bad-values.yaml": "does not match",
            "partners-bad-issuer.yaml": "oneOf",
        }
        for name, want in cases.items():
            doc = load_yaml(os.path.join(DATA, "broken", name))
            self.assertTrue(self.v.errors(doc), name)
            kind = "agreementFile" if name.startswith("agreement") else "partnersFile"
            errs = self.v.errors(doc, {"$ref": "#/$defs/" + kind})
            self.assertTrue(any(want in e for e in errs), "%s: %s" % (name, errs))


# ---- isgctl policy ----

class PolicyCli(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="isg-policy-cli-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def ctl(self, *args, rc=0):
        p = subprocess.run([ISGCTL] + list(args), capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, rc, "isgctl %s\n--- stdout\n%s--- stderr\n%s" %
                         (" ".join(args), p.stdout, p.stderr))
        return p

    def copy(self, src, name):
        d = os.path.join(self.tmp, name)
        shutil.copytree(src, d)
        return d

    def edit(self, path, old, new):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.assertEqual(text.count(old), 1, old)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new))

    def review_warning(self, d):
        return ("%s/agreements/nhs-police-reply.yaml:12:16: warning: agreement "
                "'nhs-police-reply' was due for review on 2026-06-30 (review_date); today "
                "(UTC) is %s\n" % (d, today().isoformat()))

    # check

    def test_check_ok_with_warnings(self):
        p = self.ctl("policy", "check", FEATURES)
        # Without --keys, the keys isgd would also need are named as not checked.
        self.assertEqual(p.stdout, "policy OK: 4 partners, 3 agreements, version %s\n"
                         "keys not checked: isgd also needs a key for every linkage domain "
                         "the agreements name (2), and audit; check them with --keys "
                         "KEYS_DIR\n" % policy_version(FEATURES))
        # city-council claims its CA's every certificate; charity takes its own from any CA
        issuer_alone = ("%s/partners.yaml:28:7: warning: partner 'city-council' is recognised by "
                        "issuer_cn alone and partner 'charity' has no issuer_cn: a certificate of "
                        "'charity' from that CA would be claimed by both, and refused (give "
                        "'charity' an issuer_cn)\n" % FEATURES)
        if today() > datetime.date(2026, 6, 30):
            self.assertEqual(p.stderr, issuer_alone + self.review_warning(FEATURES))
        else:
            self.assertEqual(p.stderr, issuer_alone)

    def test_check_reports_every_error(self):
        d = self.copy(FEATURES, "broken")
        for name in ["agreement-bad-review-date.yaml", "agreement-records-per-day-zero.yaml",
                     "agreement-unknown-partner.yaml"]:
            shutil.copy(os.path.join(DATA, "broken", name), os.path.join(d, "agreements"))
        p = self.ctl("policy", "check", d, rc=1)
        self.assertEqual(p.stdout, "")
        errors = [line for line in p.stderr.splitlines() if ": error: " in line]
        self.assertEqual(errors, [
            "%s/agreements/agreement-bad-review-date.yaml:10:16: error: invalid date "
            "'2026-13-01' for review_date (no such day in the calendar)" % d,
            "%s/agreements/agreement-records-per-day-zero.yaml:11:22: error: invalid "
            "records_per_day '0' (use a whole number from 1 to 100000000)" % d,
            "%s/agreements/agreement-unknown-partner.yaml:5:25: error: unknown partner "
            "'met-polise' in senders (not in partners.yaml)" % d,
        ])

    def test_check_agrees_with_schema_on_value_types(self):
        # Numbers and booleans are read as YAML 1.2's core schema reads them, by the loader
        # and the schema alike: unquoted, in any of the core spellings. Text fields take the
        # characters as written, where the schema wants them quoted (docs/policy.md).
        with open(SCHEMA, encoding="utf-8") as f:
            v = Validator(json.load(f))
        d = self.copy(FEATURES, "types")
        path = os.path.join(d, "agreements", "nhs-police-reply.yaml")
        with open(path, encoding="utf-8") as f:
            original = f.read()
        cases = [
            ("version: 1", "version: +1", True, True),
            ("version: 1", 'version: "1"', False, False),
            ("allow_reply: true", "allow_reply: True", True, True),
            ("allow_reply: true", "allow_reply: FALSE", True, True),
            ("allow_reply: true", "allow_reply: 'true'", False, False),
            ("allow_reply: true", "allow_reply: yes", False, False),
            ("required: true}", "required: False}", True, True),
            ("records_per_day: 1000", "records_per_day: '1000'", False, False),
            ("title: Mental health", "title: 12345 Mental health", True, True),
            ("title: Mental health crisis answers from health to police", "title: 12345",
             True, False),
        ]
        for old, new, loader_ok, schema_ok in cases:
            self.assertEqual(original.count(old), 1, old)
            with open(path, "w", encoding="utf-8") as f:
                f.write(original.replace(old, new))
            self.ctl("policy", "check", d, rc=0 if loader_ok else 1)
            self.assertEqual(not v.errors(load_yaml(path)), schema_ok, new)

    def test_check_fifo_refused(self):
        # A FIFO as partners.yaml is refused at once, not waited on (ctl's timeout: fail).
        d = self.copy(FEATURES, "fifo")
        os.unlink(os.path.join(d, "partners.yaml"))
        os.mkfifo(os.path.join(d, "partners.yaml"), 0o600)
        p = self.ctl("policy", "check", d, rc=1)
        self.assertIn("%s/partners.yaml: error: not a regular file" % d, p.stderr)

    def test_check_keys(self):
        keys = os.path.join(self.tmp, "keys")
        self.ctl("keys", "init", keys)
        self.ctl("keys", "new-domain", keys, "planning")
        p = self.ctl("policy", "check", FEATURES, "--keys", keys, rc=1)
        self.assertEqual(p.stdout, "")
        self.assertIn(
            "%s/agreements/council-planning.yaml:19:70: error: linkage domain "
            "'planning-police' of field 'pnc_id' has no key: no file "
            "'%s/domains/planning-police.key' (create it with: isgctl keys new-domain %s "
            "planning-police)\n" % (FEATURES, keys, keys), p.stderr)
        self.assertEqual(p.stderr.count(": error: "), 1)

        # Every missing domain, each place it is named, at once.
        os.unlink(os.path.join(keys, "domains", "planning.key"))
        p = self.ctl("policy", "check", "--keys", keys, FEATURES, rc=1)
        where = re.findall(r"council-planning\.yaml:(\d+:\d+): error: linkage domain '([a-z-]+)'",
                           p.stderr)
        self.assertEqual(where, [("18:78", "planning"), ("19:70", "planning-police"),
                                 ("20:73", "planning")])

        self.ctl("keys", "new-domain", keys, "planning")
        self.ctl("keys", "new-domain", keys, "planning-police")
        p = self.ctl("policy", "check", FEATURES, "--keys", keys)
        self.assertEqual(p.stdout.splitlines()[1], "keys OK: every linkage domain the agreements "
                         "name (2), and audit, has a key in %s/domains that isgd can load" % keys)
        self.assertNotIn("error", p.stderr)

        p = self.ctl("policy", "check", FEATURES, "--keys", os.path.join(self.tmp, "none"), rc=1)
        self.assertIn("%s/none: error: key directory does not exist; restore it from its "
                      "backup, or create one for a new gateway with 'isgctl keys init'"
                      % self.tmp, p.stderr)
        with open(os.path.join(self.tmp, "plain"), "w"):
            pass
        p = self.ctl("policy", "check", FEATURES, "--keys", os.path.join(self.tmp, "plain"), rc=1)
        self.assertIn("%s/plain: error: cannot open keys directory: Not a directory"
                      % self.tmp, p.stderr)
        # A broken policy: its errors, and a note that the keys were not checked.
        d = self.copy(FEATURES, "broken")
        shutil.copy(os.path.join(DATA, "broken", "agreement-unknown-type.yaml"),
                    os.path.join(d, "agreements"))
        p = self.ctl("policy", "check", d, "--keys", keys, rc=1)
        self.assertIn("unknown field type 'string'", p.stderr)
        self.assertIn("isgctl: linkage domain keys not checked: the policy has errors", p.stderr)

    def test_check_audit_domain_reserved(self):
        # An agreement that pseudonymises into the audit log's domain would hand its
        # recipient the pseudonyms the log names subjects by: refused, even though
        # audit.key exists, and so the keys are not checked.
        keys = os.path.join(self.tmp, "keys")
        self.ctl("keys", "init", keys)
        self.ctl("keys", "new-domain", keys, "planning")
        d = self.copy(FEATURES, "audit-domain")
        agreement = os.path.join(d, "agreements", "council-planning.yaml")
        self.edit(agreement, "domain: planning-police}", "domain: audit}")
        p = self.ctl("policy", "check", d, "--keys", keys, rc=1)
        self.assertEqual(p.stdout, "")
        self.assertIn("%s:19:70: error: linkage domain 'audit' of field 'pnc_id' is reserved for "
                      "the audit log's own pseudonyms, which no partner may receive (choose "
                      "another name)\n" % agreement, p.stderr)
        self.assertEqual(p.stderr.count(": error: "), 1)
        self.assertIn("isgctl: linkage domain keys not checked: the policy has errors", p.stderr)

    def test_check_keys_as_isgd_loads_them(self):
        # Key files isgd's key process would refuse, so refusing to start or reload, are
        # refused here too, with the loader's reason; and audit, which isgd needs, counts.
        keys = os.path.join(self.tmp, "keys")
        self.ctl("keys", "init", keys)
        self.ctl("keys", "new-domain", keys, "planning")
        self.ctl("keys", "new-domain", keys, "planning-police")
        self.ctl("policy", "check", FEATURES, "--keys", keys)
        domains = os.path.join(keys, "domains")
        planning = os.path.join(domains, "planning.key")
        refused = "%s: error: isgd would refuse the linkage domain keys, and so refuse to start " \
                  "or reload: " % keys

        def refuses(why):
            p = self.ctl("policy", "check", FEATURES, "--keys", keys, rc=1)
            self.assertIn(refused + why, p.stderr)
            self.assertNotIn("keys OK", p.stdout)

        os.chmod(planning, 0o644)
        refuses("key file '%s' has mode 0644" % planning)
        os.chmod(planning, 0o600)
        os.chmod(domains, 0o770)
        refuses("key directory '%s'" % domains)
        os.chmod(domains, 0o700)
        # A linked key file, its target itself 0600.
        elsewhere = os.path.join(self.tmp, "planning.key")
        os.rename(planning, elsewhere)
        os.symlink(elsewhere, planning)
        refuses("key file '%s' is a symbolic link" % planning)
        os.unlink(planning)
        with open(elsewhere) as f:
            text = f.read()
        with open(os.open(planning, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(text.replace(" 1 ", " x ", 1))
        refuses("%s:1:" % planning)
        os.unlink(planning)
        os.rename(elsewhere, planning)
        self.ctl("policy", "check", FEATURES, "--keys", keys)

        os.unlink(os.path.join(domains, "audit.key"))
        p = self.ctl("policy", "check", FEATURES, "--keys", keys, rc=1)
        self.assertIn("%s: error: the audit log's linkage domain 'audit' has no key file "
                      "'%s/domains/audit.key', without which isgd refuses to start or reload "
                      "('isgctl keys init' makes it; or: isgctl keys new-domain %s audit)\n"
                      % (keys, keys, keys), p.stderr)
        self.assertEqual(p.stderr.count(": error: "), 1)

    def test_check_usage(self):
        self.ctl("policy", "check", rc=2)
        self.ctl("policy", "check", FEATURES, FEATURES, rc=2)
        self.ctl("policy", "check", FEATURES, "--keys", rc=2)
        p = self.ctl("policy", "check", "--help")
        self.assertIn("--keys KEYS_DIR", p.stdout)

    # show

    def test_show_golden(self):
        for d, ident in [(FEATURES, "police-nhs-safeguarding"), (FEATURES, "council-planning")]:
            p = self.ctl("policy", "show", d, ident)
            with open(os.path.join(DATA, "show", ident + ".txt"), encoding="utf-8") as f:
                golden = f.read()
            self.assertEqual(p.stdout, golden + "\nPolicy version %s.\n" % policy_version(d))

    def test_show_shipped(self):
        p = self.ctl("policy", "show", SHIPPED, "police-nhs-adult-safeguarding")
        lines = p.stdout.splitlines()
        self.assertEqual(lines[0], "Agreement police-nhs-adult-safeguarding, version 1: Adult "
                         "safeguarding concerns from police to health")
        self.assertEqual(lines[1], "Metropolitan Police Service (met-police) sends to North "
                         "Thames NHS Foundation")
        self.assertIn("  never leave the sender (dropped): officer_notes\n", p.stdout)
        # The clear-and-pseudonymised warning reaches the reader too.
        self.assertIn("warning: partner 'nhs-trust' receives nhs_number in clear", p.stderr)
        p = self.ctl("policy", "show", SHIPPED, "council-service-planning")
        self.assertIn("  arrive pseudonymised (linkage domain council-planning): nhs_number\n",
                      p.stdout)

    def test_show_lists_without_an_id(self):
        p = self.ctl("policy", "show", FEATURES)
        self.assertEqual(p.stdout,
                         "council-planning, version 1: Referrals for service planning\n"
                         "  met-police, nhs-trust -> city-council\n"
                         "nhs-police-reply, version 1: Mental health crisis answers from health "
                         "to police\n"
                         "  nhs-trust -> met-police\n"
                         "police-nhs-safeguarding, version 2: Adult safeguarding concerns from "
                         "police to health\n"
                         "  met-police -> nhs-trust\n")

    def test_show_refusals(self):
        p = self.ctl("policy", "show", FEATURES, "nope", rc=1)
        self.assertEqual(p.stdout, "")
        self.assertIn("isgctl: no agreement 'nope' in '%s' (its agreements: council-planning, "
                      "nhs-police-reply, police-nhs-safeguarding)\n" % FEATURES, p.stderr)
        d = self.copy(FEATURES, "broken")
        shutil.copy(os.path.join(DATA, "broken", "agreement-dates.yaml"),
                    os.path.join(d, "agreements"))
        p = self.ctl("policy", "show", d, "council-planning", rc=1)
        self.assertEqual(p.stdout, "")
        self.assertIn("agreement-dates.yaml:9:15: error: valid_from 2026-01-01 is after "
                      "valid_until 2025-12-31", p.stderr)
        self.assertIn("isgctl: the policy in '%s' has errors: nothing shown" % d, p.stderr)
        self.ctl("policy", "show", os.path.join(self.tmp, "missing"), "x", rc=1)
        self.ctl("policy", "show", rc=2)
        self.ctl("policy", "show", FEATURES, "a", "b", rc=2)

    # diff

    def test_diff_same(self):
        p = self.ctl("policy", "diff", FEATURES, FEATURES)
        v = policy_version(FEATURES)[:12]
        self.assertEqual(p.stdout, "Policy %s (version %s) -> %s (version %s)\n"
                         "No difference in partners or agreements.\n" % (FEATURES, v, FEATURES, v))
        d = self.copy(FEATURES, "comments")
        self.edit(os.path.join(d, "agreements", "council-planning.yaml"), "# Two senders",
                  "# Reviewed. Two senders")
        p = self.ctl("policy", "diff", FEATURES, d)
        self.assertIn("No difference in partners or agreements (the files differ only in "
                      "comments, layout or order).\n", p.stdout)

    def test_diff_changes(self):
        new = self.copy(FEATURES, "new")
        agreements = os.path.join(new, "agreements")
        self.edit(os.path.join(agreements, "police-nhs-safeguarding.yaml"),
                  "recipients: [nhs-trust]", "recipients: [nhs-trust, charity]")
        self.edit(os.path.join(agreements, "police-nhs-safeguarding.yaml"),
                  "to: postcode_district", "to: postcode_area")
        self.edit(os.path.join(agreements, "council-planning.yaml"),
                  "action: pseudonymise, domain: planning, required: true",
                  "action: pass, required: true")
        os.unlink(os.path.join(agreements, "nhs-police-reply.yaml"))
        p = self.ctl("policy", "diff", FEATURES, new, rc=1)
        self.assertEqual(p.stdout.splitlines(), [
            "Policy %s (version %s) -> %s (version %s)" % (
                FEATURES, policy_version(FEATURES)[:12], new, policy_version(new)[:12]),
            "",
            "Flow met-police -> city-council, agreement council-planning, dataset referrals:",
            "! WEAKENED      field 'nhs_number': pseudonymised in linkage domain planning -> "
            "in clear",
            "",
            "Flow nhs-trust -> city-council, agreement council-planning, dataset referrals:",
            "! WEAKENED      field 'nhs_number': pseudonymised in linkage domain planning -> "
            "in clear",
            "",
            "Agreement nhs-police-reply:",
            "  strengthened  agreement removed (was version 1): Mental health crisis answers "
            "from health to police",
            "",
            "Flow nhs-trust -> met-police, agreement nhs-police-reply, dataset answer:",
            "  strengthened  flow removed: nothing is shared on it any more",
            "",
            "Agreement police-nhs-safeguarding:",
            "! WEAKENED      recipient 'charity' added",
            "",
            "Flow met-police -> nhs-trust, agreement police-nhs-safeguarding, dataset "
            "safeguarding-concern:",
            "  strengthened  field 'postcode': generalised as its postcode district -> "
            "generalised as its postcode area (coarser)",
            "",
            "Flow met-police -> charity, agreement police-nhs-safeguarding, dataset "
            "safeguarding-concern:",
            "! WEAKENED      new flow: in clear: nhs_number, family_name, concern_category; "
            "generalised: date_of_birth as a 5-year age band, postcode as its postcode area; "
            "dropped: officer_notes",
            "",
            "Versions:",
            "! VERSION       agreement 'council-planning': its terms changed but its version "
            "is still 1: raise it (recipients see the version on each delivery, and the audit "
            "log records it)",
            "! VERSION       agreement 'police-nhs-safeguarding': its terms changed but its "
            "version is still 2: raise it (recipients see the version on each delivery, and "
            "the audit log records it)",
            "",
            "7 changes: 4 weakened, 3 strengthened, 0 other.",
        ])
        # The other way round, the same flows strengthen.
        p = self.ctl("policy", "diff", new, FEATURES, rc=1)
        self.assertEqual(p.stdout.splitlines()[-1],
                         "7 changes: 3 weakened, 4 strengthened, 0 other.")

    def test_diff_version_not_raised(self):
        # officer_notes from drop to pass under the same version: recipients would
        # take the new terms for the old ones, so the diff says so.
        new = self.copy(FEATURES, "new")
        safe = os.path.join(new, "agreements", "police-nhs-safeguarding.yaml")
        self.edit(safe, "name: officer_notes, type: text, action: drop",
                  "name: officer_notes, type: text, action: pass")
        p = self.ctl("policy", "diff", FEATURES, new, rc=1)
        self.assertIn("! WEAKENED      field 'officer_notes': dropped -> in clear\n", p.stdout)
        self.assertIn("\nVersions:\n! VERSION       agreement 'police-nhs-safeguarding': its "
                      "terms changed but its version is still 2: raise it (recipients see the "
                      "version on each delivery, and the audit log records it)\n\n1 change: 1 "
                      "weakened, 0 strengthened, 0 other.\n", p.stdout)
        # Raised: no warning.
        self.edit(safe, "version: 2", "version: 3")
        p = self.ctl("policy", "diff", FEATURES, new, rc=1)
        self.assertNotIn("VERSION", p.stdout)
        self.assertIn("  changed       version 2 -> 3\n", p.stdout)
        # Lowered, even with the same terms: a warning of its own.
        low = self.copy(FEATURES, "low")
        self.edit(os.path.join(low, "agreements", "police-nhs-safeguarding.yaml"),
                  "version: 2", "version: 1")
        p = self.ctl("policy", "diff", FEATURES, low, rc=1)
        self.assertIn("\nVersions:\n! VERSION DOWN  agreement 'police-nhs-safeguarding': "
                      "version 2 -> 1: a version may only go up (recipients and the audit log "
                      "would take 1 for other terms)\n", p.stdout)
        # A title alone is no change of terms.
        title = self.copy(FEATURES, "title")
        self.edit(os.path.join(title, "agreements", "police-nhs-safeguarding.yaml"),
                  "title: Adult", "title: Adults'")
        p = self.ctl("policy", "diff", FEATURES, title, rc=1)
        self.assertNotIn("VERSION", p.stdout)

    def test_diff_ttl_to_default_weakened(self):
        # A fixed undelivered_ttl removed lets the gateway's store.undelivered_ttl (up to
        # 365d) apply: data may wait longer, so grep '^!' must find it.
        new = self.copy(FEATURES, "new")
        planning = os.path.join(new, "agreements", "council-planning.yaml")
        self.edit(planning, "  undelivered_ttl: 36h\n", "")
        p = self.ctl("policy", "diff", FEATURES, new, rc=1)
        self.assertIn("\nAgreement council-planning:\n! WEAKENED      undelivered_ttl 36h -> the "
                      "gateway's default (its store.undelivered_ttl, which may be up to 365d: "
                      "undelivered data may wait longer)\n", p.stdout)
        self.assertEqual(p.stdout.splitlines()[-1], "1 change: 1 weakened, 0 strengthened, 0 other.")
        # Setting one where the gateway's applied may shorten or lengthen: changed.
        p = self.ctl("policy", "diff", new, FEATURES, rc=1)
        self.assertIn("  changed       undelivered_ttl the gateway's default -> 36h\n", p.stdout)
        self.assertEqual(p.stdout.splitlines()[-1], "1 change: 0 weakened, 0 strengthened, 1 other.")
        # The longest a policy allows removed: the gateway's can be no longer.
        year = self.copy(FEATURES, "year")
        self.edit(os.path.join(year, "agreements", "council-planning.yaml"),
                  "undelivered_ttl: 36h", "undelivered_ttl: 365d")
        p = self.ctl("policy", "diff", year, new, rc=1)
        self.assertIn("  changed       undelivered_ttl 365d -> the gateway's default\n", p.stdout)

    def test_diff_trouble(self):
        d = self.copy(FEATURES, "broken")
        shutil.copy(os.path.join(DATA, "broken", "agreement-syntax.yaml"),
                    os.path.join(d, "agreements"))
        p = self.ctl("policy", "diff", FEATURES, d, rc=2)
        self.assertEqual(p.stdout, "")
        self.assertIn("agreement-syntax.yaml:4:16: error:", p.stderr)
        self.ctl("policy", "diff", d, FEATURES, rc=2)
        self.ctl("policy", "diff", FEATURES, rc=2)
        self.ctl("policy", "diff", FEATURES, FEATURES, FEATURES, rc=2)
        self.ctl("policy", "diff", os.path.join(self.tmp, "none"), FEATURES, rc=2)

    def test_help(self):
        p = self.ctl("policy", "--help")
        for line in ["  check    check a policy directory and print every problem",
                     "  show     summarise an agreement in plain language",
                     "  diff     show the privacy effect of a policy change"]:
            self.assertIn(line + "\n", p.stdout)
        p = self.ctl("policy", "diff", "--help")
        self.assertIn("Exits 0 when nothing changed, 1 when something did, 2 on trouble", p.stdout)
        self.ctl("policy", rc=2)
        self.ctl("policy", "frobnicate", rc=2)


if __name__ == "__main__":
    unittest.main()
