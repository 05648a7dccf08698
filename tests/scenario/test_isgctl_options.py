"""
Scenario: isgctl's command lines, every command and every option that takes
a value (docs/isgctl.md, "Options").

An option that names one thing given twice is a usage error (exit 2) that
names the option, and nothing is done: no connection to the gateway, no
file written, no key rotated, nothing printed. So is an empty value, a
value left out at the end of the line or replaced by another option, and a
number that is not one. The table below lists every option that takes a
value; a test checks that every option in a command's --help that takes a
value is in it, so a new option cannot be left out.

The audit commands read a log written by a real isgd (started once, for the
class); the connecting commands are pointed at a listening socket that
never answers, which shows whether they connected.
"""

import datetime
import json
import os
import re
import select
import socket

import isgtest
from isgtest import AGREEMENT_ID, DATASET

NHS_A = "9434765919"
NHS_B = "6281948211"
RECORD = {"nhs_number": NHS_A, "age": 42}
GUIDE = os.path.join(isgtest.SOURCE, "docs", "isgctl.md")
CONNECTION = {"--gateway", "--cert", "--key", "--ca", "--server-name", "--timeout", "--config"}


def help_options(text):
    """The options a command's --help offers: those of its usage lines (up to the first
    empty line) and of the lines that describe an option ("  --name VALUE   what")."""
    usage, _, rest = text.partition("\n\n")
    found = set(re.findall(r"--[a-z][a-z-]*", usage))
    for spec in re.findall(r"(?m)^\s+(--[a-z].*?)(?:\s{2,}|$)", rest):
        found |= set(re.findall(r"--[a-z][a-z-]*", spec))
    return found


def guide_synopses():
    """{command words: options} from docs/isgctl.md: the lines of its code blocks that
    start with "isgctl COMMAND" (and the indented lines that go on with them), and its
    "### isgctl COMMAND ..." headings. "[connection]" stands for the connection options."""
    found, block, current = {}, False, None
    for line in isgtest.read_text(GUIDE).splitlines():
        if line.startswith("```"):
            block, current = not block, None
            continue
        heading = line.startswith("### isgctl ")
        if (block or heading) and (line.startswith("isgctl ") or heading):
            words = []
            for word in line.split("isgctl ", 1)[1].split():
                if not re.fullmatch(r"[a-z][a-z-]*", word):
                    break
                words.append(word)
            current = found.setdefault(" ".join(words), set()) if words else None
        elif not (block and current is not None and line.startswith(" ")):
            current = None
        if current is not None:
            current |= set(re.findall(r"--[a-z][a-z-]*", line))
            if "[connection]" in line:
                current |= CONNECTION
    return found


class Command:
    """One command: its words, the options a run needs (base), each option
    that takes a value with two valid values, its positional arguments, and
    what it does that a refused command line must not (a check)."""

    def __init__(self, words, base, values, positional=(), done=None, many=(), flags=()):
        self.words = list(words)
        self.base = dict(base)
        self.values = dict(values)
        self.positional = list(positional)
        self.done = done
        self.many = set(many)  # options that may be given more than once
        self.flags = {"--help"} | set(flags)  # options without a value

    def argv(self, first=(), last=(), without=None):
        """first, the base options but `without`, last, then the positional arguments."""
        args = list(first)
        for opt, value in self.base.items():
            if opt != without:
                args += [opt, value]
        return self.words + args + list(last) + self.positional

    def __str__(self):
        return " ".join(self.words)


class OptionsTest(isgtest.ScenarioCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = isgtest.make_tmpdir("isg-ctl-options-")
        try:
            cls._prepare()
        except BaseException:
            if getattr(cls, "listener", None):
                cls.listener.close()
            isgtest.remove_tmpdir(cls.root)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.listener.close()
        isgtest.remove_tmpdir(cls.root)
        super().tearDownClass()

    @classmethod
    def _prepare(cls):
        root = cls.root
        cls.policy_dir = isgtest.write_policy(os.path.join(root, "policies"))
        gw = isgtest.Gateway(os.path.join(root, "gw"), cls.pki, cls.policy_dir, start=False)
        gw.start()
        try:
            isgtest.Partner(gw, cls.pki, "police").send_ok([RECORD], message_id="options-1")
        finally:
            gw.stop()
        cls.gw = gw
        r = isgtest.ctl("audit", "pubkey", "--keys", gw.keys_dir)
        if r.rc != 0:
            raise AssertionError("audit pubkey failed\n%s" % (r,))
        cls.vkey = r.out.strip()
        cls.vkey_file = cls.write("vkey.txt", r.out)
        r = isgtest.ctl("audit", "checkpoint", "--store", gw.store_path)
        if r.rc != 0:
            raise AssertionError("audit checkpoint failed\n%s" % (r,))
        cls.saved = cls.write("saved.cp", r.out)
        cls.tree_size = r.out.split("\n")[1]
        # A keys directory of its own for keys rotate, which must not change.
        cls.keys = os.path.join(root, "keys")
        for argv in (["keys", "init", cls.keys], ["keys", "new-domain", cls.keys, "test"]):
            r = isgtest.ctl(*argv)
            if r.rc != 0:
                raise AssertionError("%s\n%s" % (argv, r))
        cls.domain_key = os.path.join(cls.keys, "domains", "test.key")
        # A "gateway" that accepts TCP connections and never answers.
        cls.listener = socket.socket()
        cls.listener.bind(("127.0.0.1", 0))
        cls.listener.listen(64)
        cls.address = "127.0.0.1:%d" % cls.listener.getsockname()[1]
        police, nhs = cls.pki.certs["police"], cls.pki.certs["nhs"]
        cls.client_conf = cls.write("client.yaml", "gateway: %s\ncertificate: %s\nkey: %s\n" % (
            cls.address, police.cert, police.key))
        cls.records = cls.write("records.jsonl", json.dumps(RECORD) + "\n")
        cls.out_dir = os.path.join(root, "out")
        os.makedirs(cls.out_dir)
        cls.day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        cls.commands = cls._table(police, nhs)
        # Commands that take no option but --help, with the positional arguments a run
        # needs (and one that does not exist yet for keys init).
        printed = cls.printed
        cls.plain = [Command(["keys", "init"], {}, {}, [os.path.join(root, "new-keys")], printed),
                     Command(["keys", "new-domain"], {}, {}, [cls.keys, "other"], printed),
                     Command(["keys", "list"], {}, {}, [cls.keys], printed),
                     Command(["policy", "show"], {}, {}, [cls.policy_dir, AGREEMENT_ID], printed),
                     Command(["policy", "diff"], {}, {}, [cls.policy_dir, cls.policy_dir],
                             printed)]

    @classmethod
    def write(cls, name, text):
        path = os.path.join(cls.root, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    @classmethod
    def _table(cls, police, nhs):
        ca = cls.pki.server_ca.cert
        conn_base = {"--gateway": cls.address, "--cert": police.cert, "--key": police.key,
                     "--ca": ca, "--timeout": "1s"}
        conn = {"--gateway": (cls.address, "[::1]:%s" % cls.address.rsplit(":", 1)[1]),
                "--cert": (police.cert, nhs.cert), "--key": (police.key, nhs.key),
                "--ca": (ca, ca), "--server-name": ("localhost", "isg.example.nhs.uk"),
                "--timeout": ("1s", "2000"), "--config": (cls.client_conf, cls.client_conf)}
        store, keys = cls.gw.store_path, cls.gw.keys_dir
        where = {"--config": (cls.gw.config_path, cls.gw.config_path), "--store": (store, store),
                 "--keys": (keys, keys), "--origin": ("isg-gateway", "isg-gateway")}
        key = {"--pubkey": (cls.vkey, cls.vkey), "--pubkey-file": (cls.vkey_file, cls.vkey_file)}
        period = {"--from": (cls.day, "2001-01-01"), "--to": (cls.day, "2099-12-31")}
        out = lambda name: os.path.join(cls.out_dir, name)
        idents = {"--nhs-number": (NHS_A, NHS_B), "--pnc-id": ("2008/0056560Z", "79/163001B"),
                  "--postcode": ("NE3 4RT", "SW1A 1AA"), "--email": ("a@b.example", "c@d.example"),
                  "--name": ("featherstonehaugh", "okonkwo"), "--identifier": ("x-1", "x-2")}
        connected, printed, wrote = cls.connected, cls.printed, cls.wrote
        return [
            Command(["send"], dict(conn_base, **{"--to": "nhs-trust", "--agreement": AGREEMENT_ID,
                                                 "--dataset": DATASET}),
                    dict(conn, **{"--to": ("nhs-trust", "city-council"),
                                  "--agreement": (AGREEMENT_ID, "other"),
                                  "--dataset": (DATASET, "other"),
                                  "--message-id": ("m-1", "m-2"), "--reply-to": ("1", "2"),
                                  "--format": ("jsonl", "csv")}),
                    [cls.records], connected),
            Command(["fetch"], conn_base,
                    dict(conn, **{"--max": ("1", "5"), "--wait": ("0", "1s"),
                                  "--format": ("jsonl", "csv"),
                                  "--exec": ("true", "cat")}), done=connected,
                    flags=("--no-ack", "--follow")),
            Command(["ping"], conn_base, conn, done=connected),
            Command(["whoami"], conn_base, conn, done=connected),
            Command(["keys", "rotate"], {}, {"--overlap": ("1", "2")}, [cls.keys, "test"],
                    cls.rotated),
            Command(["policy", "check"], {}, {"--keys": (keys, cls.keys)}, [cls.policy_dir],
                    printed),
            Command(["store", "backup"], {"--store": store},
                    {k: where[k] for k in ("--config", "--store")}, [out("b.db")], wrote),
            Command(["audit", "verify"], {"--store": store, "--keys": keys},
                    dict(where, **key, **{"--grace": ("600", "60"),
                                          "--against": (cls.saved, cls.saved)}),
                    done=printed, many={"--against"}),
            Command(["audit", "checkpoint"], {"--store": store},
                    {k: where[k] for k in ("--config", "--store")}, done=printed),
            Command(["audit", "pubkey"], {"--keys": keys},
                    {k: where[k] for k in ("--config", "--keys", "--origin")}, done=printed),
            Command(["audit", "prove"], {"--store": store, "--keys": keys},
                    dict(where, **key, **{"--size": (cls.tree_size, cls.tree_size)}), ["1"],
                    printed),
            Command(["audit", "list"], {"--store": store, "--keys": keys},
                    dict(period, **where, **key,
                         **{"--against": (cls.saved, cls.saved),
                            "--partner": ("met-police", "nhs-trust"),
                                             "--agreement": (AGREEMENT_ID, "other"),
                                             "--kind": ("message", "connection"),
                                             "--outcome": ("accepted", "refused"),
                                             "--format": ("table", "jsonl")}), done=printed,
                    many={"--against"}),
            Command(["audit", "subject"], {"--store": store, "--keys": keys, "--nhs-number": NHS_A},
                    dict(period, **idents, **where, **key,
                         **{"--format": ("table", "jsonl"), "--against": (cls.saved, cls.saved)}),
                    done=printed, many={"--against"}),
            Command(["audit", "export"], {"--store": store, "--keys": keys, "--output": out("e")},
                    dict(where, **key, **{"--output": (out("e"), out("e2"))}), done=wrote),
            Command(["audit", "report"], {"--store": store, "--keys": keys, "--from": cls.day,
                                          "--to": cls.day, "--html": out("r.html")},
                    dict(where, **key, **period, **{
                        "--html": (out("r.html"), out("r2.html")),
                        "--markdown": (out("r.md"), out("r2.md")),
                        "--csv": (out("r.csv"), out("r2.csv")),
                        "--policy": (cls.policy_dir, cls.policy_dir),
                        "--grace": ("600", "60"),
                        "--against": (cls.saved, cls.saved)}), done=wrote, many={"--against"}),
        ]

    # What a command does: after forget(), each is false unless it was done.

    @classmethod
    def forget(cls):
        """No connection waiting, no file written, the domain key as it is now."""
        while select.select([cls.listener], [], [], 0)[0]:
            cls.listener.accept()[0].close()
        for name in os.listdir(cls.out_dir):
            os.unlink(os.path.join(cls.out_dir, name))
        with open(cls.domain_key, "rb") as f:
            cls.domain_key_text = f.read()

    @classmethod
    def connected(cls, r):
        """Whether a connection reached the listener (or is on its queue)."""
        return bool(select.select([cls.listener], [], [], 0)[0])

    @classmethod
    def printed(cls, r):
        return r.out != ""

    @classmethod
    def wrote(cls, r):
        return r.out != "" or bool(os.listdir(cls.out_dir))

    @classmethod
    def rotated(cls, r):
        with open(cls.domain_key, "rb") as f:
            return f.read() != cls.domain_key_text or r.out != ""

    def run_ctl(self, argv):
        self.forget()
        return isgtest.ctl(*argv)

    def refused(self, cmd, argv, *said):
        """isgctl exits 2 saying `said`, having done nothing."""
        r = self.run_ctl(argv)
        self.assertEqual(r.rc, 2, r)
        for s in said:
            self.assertIn(s, r.err, r)
        self.assertFalse(cmd.done(r), "%s did something\n%s" % (cmd, r))
        return r

    def options(self):
        """(command, option, value, another value) for every option that takes a value."""
        return [(cmd, opt, v1, v2) for cmd in self.commands
                for opt, (v1, v2) in sorted(cmd.values.items())]

    def test_the_table_runs(self):
        """Each command's base command line does what the checks look for, so a refused
        one that did nothing was refused, not idle."""
        for cmd in self.commands:
            with self.subTest(command=str(cmd)):
                r = self.run_ctl(cmd.argv())
                self.assertNotEqual(r.rc, 2, r)
                self.assertTrue(cmd.done(r), "%s did nothing\n%s" % (cmd, r))

    def test_an_option_given_twice_is_refused(self):
        for cmd, opt, v1, v2 in self.options():
            if opt in cmd.many:
                continue
            with self.subTest(command=str(cmd), option=opt):
                r = self.refused(cmd, cmd.argv([opt, v1, opt, v2], without=opt),
                                 "isgctl: %s given twice\n" % opt)
                # never a value: subject's identifiers are personal data
                self.assertNotIn(v2, r.err.split("\nusage:")[0], r)

    def test_a_connection_option_before_and_after_the_command_is_refused(self):
        for cmd in self.commands[:4]:
            for opt in ("--gateway", "--cert", "--key", "--ca", "--server-name", "--timeout",
                        "--config"):
                v1, v2 = cmd.values[opt]
                with self.subTest(command=str(cmd), option=opt):
                    argv = cmd.argv([opt, v2], without=opt)
                    self.refused(cmd, [opt, v1] + argv,
                                 "isgctl: %s given twice (before and after the command)" % opt)
        # before the command, twice
        cmd = self.commands[2]
        self.refused(cmd, ["--timeout", "1s", "--timeout", "2s"] + cmd.argv(without="--timeout"),
                     "isgctl: --timeout given twice")

    def test_a_connection_option_before_a_command_that_does_not_connect_is_refused(self):
        """It would be ignored: --config before audit is not isgd's configuration."""
        conn = self.commands[2].values
        for cmd in self.commands[4:]:
            for opt in ("--gateway", "--cert", "--key", "--ca", "--server-name", "--timeout",
                        "--config"):
                with self.subTest(command=str(cmd), option=opt):
                    self.refused(cmd, [opt, conn[opt][0]] + cmd.argv(),
                                 "isgctl: %s is a connection option: it goes with send, fetch, "
                                 "ping or whoami, not with %s\n" % (opt, cmd.words[0]))

    def test_fetch_follow_takes_no_max_or_wait(self):
        """--follow takes every message as it comes: a --max or --wait would be ignored."""
        fetch = self.commands[1]
        for opt, value in (("--max", "5"), ("--wait", "1s")):
            for given in (["--follow", opt, value], [opt, value, "--follow"]):
                with self.subTest(given=given):
                    self.refused(fetch, fetch.argv(given), "isgctl: give --follow or %s, not "
                                 "both: --follow prints every message as it arrives\n" % opt)

    def test_an_unknown_option_is_named_without_its_value(self):
        """A mistyped --nhs-number=N must not print N."""
        for cmd in self.commands:
            with self.subTest(command=str(cmd)):
                r = self.refused(cmd, cmd.argv(["--nhsnumber=%s" % NHS_A]),
                                 "isgctl: unknown option '--nhsnumber'\n")
                self.assertNotIn(NHS_A, r.err, r)

    def test_report_outputs_name_different_files(self):
        """Two outputs to one file would leave the one written last; standard output takes both."""
        report = self.commands[-1]
        same = os.path.join(self.out_dir, "r")
        for first, second in (("--html", "--csv"), ("--html", "--markdown"),
                              ("--markdown", "--csv")):
            with self.subTest(outputs=(first, second)):
                self.refused(report, report.argv([first, same, second, same], without="--html"),
                             "isgctl: %s and %s name the same file\n" % (first, second))
        r = self.run_ctl(report.argv(["--markdown", "-", "--csv", "-"], without="--html"))
        self.assertEqual(r.rc, 0, r)
        self.assertIn("day,agreement,partner", r.out)

    def test_report_outputs_are_compared_by_the_file_they_name(self):
        """Not as strings: "r" and "./r" are one file, and the second written would replace
        the first."""
        report = self.commands[-1]
        same = os.path.join(self.out_dir, "r")
        linked_dir = os.path.join(self.root, "out-link")
        kept = os.path.join(self.root, "kept")
        if not os.path.exists(linked_dir):
            os.symlink(self.out_dir, linked_dir)
            os.makedirs(kept)
            with open(os.path.join(kept, "r.md"), "w") as f:
                f.write("an earlier report\n")
            os.symlink("r.md", os.path.join(kept, "link.md"))
        for other in (os.path.join(self.out_dir, ".", "r"),  # neither exists yet
                      os.path.join(self.out_dir, "..", "out", "r"),
                      os.path.relpath(same),
                      os.path.join(linked_dir, "r")):
            with self.subTest(other=other):
                self.refused(report, report.argv(["--html", same, "--csv", other], without="--html"),
                             "isgctl: --html and --csv name the same file\n")
        # an existing file and a link to it
        self.refused(report, report.argv(["--markdown", os.path.join(kept, "r.md"), "--csv",
                                          os.path.join(kept, "link.md")]),
                     "isgctl: --markdown and --csv name the same file\n")
        with open(os.path.join(kept, "r.md")) as f:
            self.assertEqual(f.read(), "an earlier report\n")
        # files of their own, spelt alike
        r = self.run_ctl(report.argv(["--csv", os.path.join(self.out_dir, ".", "r.csv")]))
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(sorted(os.listdir(self.out_dir)), ["r.csv", "r.html"])

    def test_an_abbreviated_option_is_unknown(self):
        """getopt_long would take "--agr" for --agreement: a script that abbreviates would
        change meaning the day a command gains an option with the same prefix."""
        for cmd in self.commands:
            for opt in sorted(cmd.flags | set(cmd.values)):
                short = opt[:-1]
                with self.subTest(command=str(cmd), option=opt):
                    if opt in cmd.flags:
                        self.refused(cmd, cmd.argv([short]), "isgctl: unknown option '%s'" % short)
                        continue
                    v1 = cmd.values[opt][0]
                    for argv in (cmd.argv([short, v1], without=opt),
                                 cmd.argv(["%s=%s" % (short, v1)], without=opt),
                                 cmd.argv(without=opt) + [short]):  # its value missing
                        r = self.refused(cmd, argv, "isgctl: unknown option '%s'" % short)
                        self.assertNotIn(v1, r.err.split("\nusage:")[0], r)
        # before the command name too
        ping = self.commands[2]
        self.refused(ping, ["--time", "1s"] + ping.argv(without="--timeout"),
                     "isgctl: unknown option '--time' (options are not abbreviated: did you "
                     "mean '--timeout'?)\n")
        r = isgtest.ctl("--vers")
        self.assertEqual((r.rc, r.out), (2, ""), r)

    def test_a_value_that_looks_like_an_option_is_refused(self):
        """"--html --cs": a forgotten value followed by a mistyped option. A value that
        begins with '--' is given after '='."""
        cwd = os.getcwd()
        os.chdir(self.out_dir)  # a file named "--xhtml", if written, is seen there
        try:
            for cmd, opt, v1, v2 in self.options():
                with self.subTest(command=str(cmd), option=opt):
                    self.refused(cmd, cmd.argv([opt, "--x" + opt[2:]], without=opt),
                                 "isgctl: option '%s' needs a value, not an option; a value "
                                 "that begins with '--' is given as %s=VALUE\n" % (opt, opt))
        finally:
            os.chdir(cwd)
        send = self.commands[0]
        r = self.run_ctl(send.argv(["--message-id=--7"]))
        self.assertEqual(r.rc, 4, r)  # taken: the listener never answers
        self.assertTrue(self.connected(r), r)

    def test_each_command_takes_the_options_its_help_and_the_guide_list(self):
        """No more, no fewer: an option a command would ignore (audit pubkey --store, audit
        checkpoint --keys) is unknown there, not silently dropped."""
        helps = {}
        for cmd in self.commands + self.plain:
            r = isgtest.ctl(*(cmd.words + ["--help"]))
            self.assertEqual(r.rc, 0, r)
            helps[str(cmd)] = help_options(r.out)
        guide = guide_synopses()
        universe = set().union(*helps.values(), *guide.values())
        for cmd in self.commands + self.plain:
            with self.subTest(command=str(cmd)):
                takes = set()
                for opt in sorted(universe):
                    r = isgtest.ctl(*(cmd.words + cmd.positional + [opt]))
                    if not re.search(r"isgctl: unknown option '%s'[\n ]" % opt, r.err):
                        takes.add(opt)
                self.assertEqual(helps[str(cmd)] | {"--help"}, takes)
                self.assertEqual(cmd.flags | set(cmd.values), takes)
                if str(cmd) not in ("ping", "whoami"):  # the guide shows no synopsis
                    self.assertEqual(guide[str(cmd)], takes - {"--help"})

    def test_an_empty_argument_is_refused(self):
        """As an empty value is: "policy check ''" read /partners.yaml and /agreements."""
        by_name = {str(c): c for c in self.commands + self.plain}
        for words, names in [("keys init", ["DIR"]), ("keys new-domain", ["DIR", "NAME"]),
                             ("keys rotate", ["DIR", "NAME"]), ("keys list", ["DIR"]),
                             ("policy check", ["DIR"]), ("policy show", ["DIR", "AGREEMENT_ID"]),
                             ("policy diff", ["OLD_DIR", "NEW_DIR"]), ("send", ["FILE"]),
                             ("store backup", ["OUTPUT"])]:
            cmd = by_name[words]
            self.assertEqual(len(cmd.positional), len(names))
            for i, name in enumerate(names):
                with self.subTest(command=words, argument=name):
                    argv = cmd.argv()
                    argv[len(argv) - len(names) + i] = ""
                    self.refused(cmd, argv, "isgctl: the %s argument is empty\n" % name)

    def test_an_argument_too_many_is_refused_without_its_value(self):
        """An NHS number given where no argument belongs, a value whose option
        was forgotten, is refused and not printed back."""
        for cmd in self.commands:
            with self.subTest(command=str(cmd)):
                r = self.refused(cmd, cmd.argv() + [NHS_A], "isgctl: %s takes " % cmd)
                self.assertNotIn(NHS_A, r.err, r)

    def test_help_takes_one_command(self):
        """"help keys rotate" showed the help of keys, the extra word ignored."""
        for argv in (["help", "keys", "rotate"], ["help", "send", "x"], ["help", "help", "x"]):
            with self.subTest(argv=argv):
                r = isgtest.ctl(*argv)
                self.assertEqual((r.rc, r.out), (2, ""), r)
                self.assertTrue(r.err.startswith(
                    "isgctl: help takes one command; a subcommand's help is 'isgctl COMMAND "
                    "SUBCOMMAND --help'\nusage: isgctl help [COMMAND]\n"), r)
        r = isgtest.ctl("help", "keys")
        self.assertEqual(r.rc, 0, r)
        self.assertIn("usage: isgctl keys COMMAND", r.out)

    def test_an_option_that_may_repeat(self):
        """verify's --against takes each saved checkpoint; a flag may be said twice."""
        r = isgtest.ctl("audit", "verify", "--store", self.gw.store_path, "--keys",
                        self.gw.keys_dir, "--against", self.saved, "--against", self.saved)
        self.assertEqual(r.rc, 0, r)
        self.assertIn("audit log OK", r.out)
        fetch = self.commands[1]
        r = self.run_ctl(fetch.argv(["--no-ack", "--no-ack"]))
        self.assertEqual(r.rc, 4, r)  # the listener never answers
        self.assertTrue(self.connected(r), r)
        r = isgtest.ctl("audit", "list", "--help", "--help")
        self.assertEqual(r.rc, 0, r)

    def test_an_empty_value_is_refused(self):
        for cmd, opt, v1, v2 in self.options():
            with self.subTest(command=str(cmd), option=opt):
                for given in ([opt, ""], ["%s=" % opt]):
                    self.refused(cmd, cmd.argv(given, without=opt),
                                 "isgctl: option '%s' has an empty value\n" % opt)

    def test_a_value_given_to_an_option_without_one_is_refused(self):
        """--no-ack=1 is refused by name, without its value."""
        for cmd in self.commands:
            for opt in sorted(cmd.flags):
                with self.subTest(command=str(cmd), option=opt):
                    r = self.refused(cmd, cmd.argv(["%s=%s" % (opt, NHS_A)]),
                                     "isgctl: option '%s' takes no value\n" % opt)
                    self.assertNotIn(NHS_A, r.err, r)
        r = isgtest.ctl("--help=%s" % NHS_A)
        self.assertEqual((r.rc, r.err.splitlines()[0]), (2, "isgctl: option '--help' takes no value"))

    def test_a_verifier_key_given_is_not_mixed_with_keys_or_another_origin(self):
        """--pubkey names the key trusted and its origin: --keys beside it would not be
        read, and an --origin that differs is a mix-up; neither is ignored."""
        for cmd in self.commands:
            # subject reads --keys for the audit linkage domain's key, whatever key is trusted
            if "--pubkey" not in cmd.values or str(cmd) == "audit subject":
                continue
            for opt, value in (("--pubkey", self.vkey), ("--pubkey-file", self.vkey_file)):
                with self.subTest(command=str(cmd), option=opt):
                    self.refused(cmd, cmd.argv([opt, value]),
                                 "isgctl: give --keys or %s, not both: " % opt)
                    r = self.run_ctl(cmd.argv([opt, value, "--origin", "other-gateway"],
                                              without="--keys"))
                    self.assertEqual(r.rc, 1, r)
                    self.assertIn("is the key of origin 'isg-gateway', not of --origin "
                                  "'other-gateway'", r.err)
                    if str(cmd) == "audit report":  # written, saying it could not verify
                        self.assertIn("report written, but the log could not be verified",
                                      r.err)
                    elif str(cmd) == "audit list":  # listed, saying it could not verify
                        self.assertIn("isgctl: audit log NOT VERIFIED: ", r.err)
                    else:
                        self.assertFalse(cmd.done(r), r)
                    r = self.run_ctl(cmd.argv([opt, value, "--origin", "isg-gateway"],
                                              without="--keys"))
                    self.assertEqual(r.rc, 0, r)
                    self.assertTrue(cmd.done(r), r)

    def test_a_missing_value_is_refused(self):
        for cmd, opt, v1, v2 in self.options():
            with self.subTest(command=str(cmd), option=opt):
                self.refused(cmd, cmd.argv(without=opt) + [opt],
                             "isgctl: option '%s' needs a value\n" % opt)

    def test_a_value_that_is_an_option_is_refused(self):
        """The value forgotten: the next option would be taken for it."""
        for cmd, opt, v1, v2 in self.options():
            other = next((o for o in sorted(cmd.values) if o != opt), None)
            if other is None:
                continue
            with self.subTest(command=str(cmd), option=opt):
                self.refused(cmd, cmd.argv([opt, other], without=opt),
                             "isgctl: option '%s' needs a value, not the option '%s'\n"
                             % (opt, other))

    def test_a_number_that_is_not_one_is_refused(self):
        by_name = {str(c): c for c in self.commands}
        junk = ["10x", "-1", "99999999999999999999", " 5", "5 ", "0x10", "1e3", "+", "-"]
        for words, opt, extra in [("fetch", "--max", ["0"]), ("fetch", "--wait", []),
                                  ("fetch", "--timeout", ["0"]), ("ping", "--timeout", ["0"]),
                                  ("send", "--reply-to", ["0"]),
                                  ("keys rotate", "--overlap", ["3661"]),
                                  ("audit prove", "--size", ["0"]),
                                  ("audit verify", "--grace", ["3153600001"]),
                                  ("audit report", "--grace", [])]:
            cmd = by_name[words]
            for value in junk + extra:
                with self.subTest(command=words, option=opt, value=value):
                    r = self.refused(cmd, cmd.argv([opt, value], without=opt), opt)
                    self.assertRegex(r.err, r"^isgctl: [^\n]*%s" % re.escape(opt))

    def test_every_option_with_a_value_is_in_the_table(self):
        """What --help names and isgctl takes with a value is in the table above."""
        for cmd in self.commands:
            r = isgtest.ctl(*(cmd.words + ["--help"]))
            self.assertEqual(r.rc, 0, r)
            for opt in sorted(set(re.findall(r"--[a-z][a-z-]*", r.out))):
                if opt in cmd.values or opt == "--help":
                    continue
                with self.subTest(command=str(cmd), option=opt):
                    r = isgtest.ctl(*(cmd.words + cmd.positional + [opt]))
                    self.assertNotIn("needs a value", r.err, r)


if __name__ == "__main__":
    import unittest
    unittest.main()
