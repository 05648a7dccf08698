"""
Scenario: the "complete example" of docs/client-library.md, as a partner
would copy it. The program is taken from the document (the first C block
under "## A complete example"), built against build/lib/libisgclient.so
with the document's compiler flags, and run against the real isgd on the
example policies that ship in policies/, so the document cannot drift from
the library or from the agreements it names. It is also linked statically,
with the document's static link line, next to a partner file that defines
names the library uses inside (str_copy, log_event, wire_frame_peek): the
static library must keep those to itself, as the shared one does.
"""

import os
import re
import shlex
import shutil
import subprocess
import unittest

import isgtest

DOC = os.path.join(isgtest.SOURCE, "docs", "client-library.md")
SHIPPED = isgtest.policy_tree("policies")  # the build's copy, admin modes
BUILD = os.path.dirname(isgtest.BIN)
LIB = os.path.join(BUILD, "lib")
# the linkage domains the shipped agreements pseudonymise under
SHIPPED_DOMAINS = ("mh-triage", "council-planning")
# a partner's own functions, named as the library's internal ones are: linking
# must neither fail (multiple definition) nor bind the library's calls to these
PARTNER_OWN_C = r"""
#include <stdio.h>
#include <stdlib.h>

static void not_yours(const char *name)
{
	fprintf(stderr, "the library called the partner's own %s\n", name);
	abort();
}
void str_copy(void);
void str_copy(void) { not_yours("str_copy"); }
void log_event(void);
void log_event(void) { not_yours("log_event"); }
void wire_frame_peek(void);
void wire_frame_peek(void) { not_yours("wire_frame_peek"); }
"""


def build_settings():
    """The build's C compiler, and the sanitizer flags a program linked to its library needs."""
    cache = {}
    path = os.path.join(BUILD, "CMakeCache.txt")
    if os.path.exists(path):
        for line in isgtest.read_text(path).splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.startswith(("#", "//")):
                cache[name.split(":")[0]] = value
    cc = cache.get("CMAKE_C_COMPILER") or shutil.which("cc")
    flags = []
    if cache.get("ISG_SANITIZE") == "ON":
        flags = ["-fsanitize=address,undefined"]
    elif cache.get("ISG_TSAN") == "ON":
        flags = ["-fsanitize=thread"]
    return cc, flags


def doc_block(path, heading, lang):
    """The first ```lang block after the line `heading` in a Markdown file."""
    text = "\n" + isgtest.read_text(path)  # a heading on the first line too
    start = text.find("\n" + heading + "\n")
    if start < 0:
        raise AssertionError("%s has no heading %r" % (path, heading))
    m = re.compile(r"^```%s\n(.*?)^```$" % re.escape(lang), re.S | re.M).search(text, start)
    if not m:
        raise AssertionError("%s has no ```%s block after %r" % (path, lang, heading))
    return m.group(1)


@unittest.skipUnless(build_settings()[0], "no C compiler")
class CompleteExampleTest(isgtest.ScenarioCase):
    def build_example(self):
        src = os.path.join(self.tmp, "partner.c")
        with open(src, "w", encoding="utf-8") as f:
            f.write(doc_block(DOC, "## A complete example", "c"))
        exe = os.path.join(self.tmp, "partner")
        cc, flags = build_settings()
        # the page's command line, warnings as errors
        r = subprocess.run([cc] + flags + ["-Wall", "-Wextra", "-Werror", "-I",
                                           os.path.join(isgtest.SOURCE, "gateway", "client"), src,
                                           "-L", LIB, "-lisgclient", "-o", exe],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, "the example does not build:\n" + r.stderr)
        return exe

    def build_example_statically(self):
        """The example built with the page's own commands for a static link, with
        the partner's own str_copy, log_event and wire_frame_peek (own.o) beside it."""
        lines = doc_block(DOC, "# libisgclient: the C client library", "sh").replace("\\\n", " ")
        commands = [shlex.split(line) for line in lines.splitlines() if line.startswith("cc ")]
        static = [c for c in commands if any(a.endswith("libisgclient.a") for a in c)]
        self.assertEqual(len(static), 1, "the page has no static link command:\n" + lines)
        compile_ = [c for c in commands if "-c" in c]
        self.assertEqual(len(compile_), 1, "the page has no compile command:\n" + lines)
        work = os.path.join(self.tmp, "static")
        os.makedirs(work)
        with open(os.path.join(work, "partner.c"), "w", encoding="utf-8") as f:
            f.write(doc_block(DOC, "## A complete example", "c"))
        with open(os.path.join(work, "own.c"), "w", encoding="utf-8") as f:
            f.write(PARTNER_OWN_C)
        link = list(static[0])
        link.insert(link.index("partner.o") + 1, "own.o")
        cc, flags = build_settings()
        for argv in (compile_[0], ["cc", "-Wall", "-Wextra", "-Werror", "-c", "own.c"], link):
            argv = [a.replace("/path/to/isg/build", BUILD).replace("/path/to/isg", isgtest.SOURCE)
                    for a in argv[1:]]
            r = subprocess.run([cc] + flags + argv, cwd=work, capture_output=True, text=True,
                               timeout=120)
            self.assertEqual(r.returncode, 0, "the page's command does not build the example:\n$ "
                             + " ".join(argv) + "\n" + r.stderr)
        return os.path.join(work, "partner")

    def run_example(self, exe, gw):
        cert = self.pki.certs["police"]
        env = dict(os.environ, LD_LIBRARY_PATH=LIB)
        return subprocess.run([exe, gw.address, cert.cert, cert.key, self.pki.server_ca.cert],
                              env=env, capture_output=True, text=True, timeout=isgtest.CTL_TIMEOUT)

    def test_complete_example_runs_against_the_shipped_policies(self):
        exe = self.build_example()
        static_exe = self.build_example_statically()
        gw = self.gateway(policy_dir=SHIPPED, domains=SHIPPED_DOMAINS)
        police, nhs = self.partner(gw, "police"), self.partner(gw, "nhs")
        # something waiting for the police, so the example's fetch and ack have work
        answer = nhs.send_ok([{"nhs_number": "9434765919", "known_to_services": True}],
                             to="met-police", agreement="nhs-police-mh-crisis-reply",
                             dataset="mh-crisis-answer", message_id="answer-1")

        r = self.run_example(exe, gw)
        self.assertEqual(r.returncode, 0, "%s\n%s\n%s" % (r.stdout, r.stderr, gw.diagnostics()))
        self.assertIn("connected as met-police (Metropolitan Police Service)", r.stdout)
        self.assertRegex(r.stdout, r"\nsent case-2026-00042: gateway id \d+, audit entry \d+\n")
        self.assertIn("message %d from nhs-trust under nhs-police-mh-crisis-reply v1"
                      % answer["gateway_id"], r.stdout)
        self.assertIn("known_to_services=true", r.stdout)
        # the page says the client_name it sets shows in the gateway's log
        self.assertRegex(gw.log, r"event=partner\.hello peer=\S+ partner=met-police "
                         r"client=partner-example/1\.0\n")

        # the trust got what the example sent; the police's inbox was acknowledged
        msgs = nhs.fetch_messages()
        self.assertEqual([m["message_id"] for m in msgs], ["case-2026-00042"])
        self.assertEqual(len(msgs[0]["records"]), 2)
        self.assertEqual(police.fetch_messages(), [])

        # the example's message id makes running it again safe; linked statically this time
        r = self.run_example(static_exe, gw)
        self.assertEqual(r.returncode, 0, "%s\n%s" % (r.stdout, r.stderr))
        self.assertIn("(sent before)", r.stdout)
        self.assertEqual(nhs.fetch_messages(), [])

    @unittest.skipUnless(shutil.which("nm"), "no nm")
    def test_static_library_defines_only_what_the_shared_one_exports(self):
        def defined(*argv):
            out = subprocess.run(["nm", "--defined-only"] + list(argv), capture_output=True,
                                 text=True, check=True).stdout
            return {f[2].split("@")[0] for f in map(str.split, out.splitlines())
                    if len(f) == 3 and f[1] != "A"}  # not the version node
        exported = defined("-D", os.path.join(LIB, "libisgclient.so"))
        self.assertIn("isg_client_connect", exported)
        self.assertEqual(defined("-g", os.path.join(LIB, "libisgclient.a")), exported)


if __name__ == "__main__":
    unittest.main()
