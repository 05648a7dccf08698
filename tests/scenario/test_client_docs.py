"""
What docs/protocol.md promises a partner's client, held against the gateway's
source: the "Refusal rules" tables list every rule isgd can answer with, with
its code, and no rule that isgd no longer has. A partner's code switches on
these names, so a rule missing from the page is one nobody handles.

No gateway is started: the rules are read from the C source.
"""

import glob
import os
import re
import unittest

import isgtest

DOC = os.path.join(isgtest.SOURCE, "docs", "protocol.md")
RULE = r'"([a-z_]+\.[a-z_]+)"'
# Where the gateway names a refusal's rule, with its code where the same
# statement gives it.
PATTERNS = [
    re.compile(r"\brefuse\(\s*why,\s*CODE\((\w+)\),\s*" + RULE),
    re.compile(r"\bsend_error\([^;]*?ISG__ERROR_CODE__(\w+),\s*" + RULE),
    re.compile(r"\b()rule = " + RULE + ";"),
    re.compile(r"\b()quota_refuse\(\s*why,\s*" + RULE),
]
# A refusal filled in field by field: its code is set just before the rule.
STR_COPY = re.compile(r"\bstr_copy\(\s*[\w.>-]*rule,\s*" + RULE)
CODE_SET = re.compile(r"code = ISG__ERROR_CODE__(\w+)")


def source_rules():
    """{rule: code, or '' when the statement does not say} from gateway/**/*.c."""
    found = {}

    def add(rule, code):
        if code or rule not in found:
            found[rule] = code

    for path in glob.glob(os.path.join(isgtest.SOURCE, "gateway", "**", "*.c"), recursive=True):
        text = isgtest.read_text(path)
        for pattern in PATTERNS:
            for code, rule in pattern.findall(text):
                add(rule, code)
        for m in STR_COPY.finditer(text):
            codes = CODE_SET.findall(text, max(0, m.start() - 400), m.start())
            add(m.group(1), codes[-1] if codes else "")
    return found


def doc_rules():
    """{rule: code} from the tables of the section "## Refusal rules"."""
    text = isgtest.read_text(DOC)
    start = text.index("\n## Refusal rules\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end > 0 else len(text)]
    rows = re.findall(r"(?m)^\| `([a-z_]+\.[a-z_]+)` \| `?([A-Z_]+)`? \|", section)
    return dict(rows)


class RefusalRulesDocTest(unittest.TestCase):
    def test_every_rule_of_the_gateway_is_in_protocol_md(self):
        source, doc = source_rules(), doc_rules()
        # the extraction itself works: a rule of each kind of statement
        for rule in ("agreement.sender", "request.records", "request.message_id", "partner.unknown",
                     "partner.removed", "agreement.records_per_day"):
            self.assertIn(rule, source)
        missing = sorted(set(source) - set(doc))
        self.assertEqual(missing, [], "rules isgd answers with that docs/protocol.md does not list")
        stale = sorted(set(doc) - set(source))
        self.assertEqual(stale, [], "rules docs/protocol.md lists that isgd no longer has")
        wrong = {r: (doc[r], c) for r, c in source.items() if c and doc[r] != c}
        self.assertEqual(wrong, {}, "rules whose code in docs/protocol.md is not isgd's "
                         "(rule: (documented, actual))")


if __name__ == "__main__":
    unittest.main()
