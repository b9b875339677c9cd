"""Hostile input: the config parser and the line path under fuzzing, and exec
with hostile log lines.

* The config parser, fed random text, random bytes (through a file, the way
  the CLI reads it) and random mutations of the 25 real-world configs read
  in place from the corpus, raises ConfigError or nothing.
* The line path -- LineSplitter, then Sentinel.process_text with echo, dm,
  tweet and exec (dry-run) actions -- fed random bytes with NUL, invalid
  UTF-8, ANSI CSI/OSC/DCS escapes, C1 controls, bidi overrides, lines of only
  \\r, cut into random chunks, never crashes and never lets a control
  character into a terminal or a message.  One ~10 MB line goes through the
  same path.
* exec with hostile lines: the program gets the line as ONE literal
  argument, and no shell ever runs ($(...), backticks, ;, &&, |, >, ...).
"""

import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import birdsentinel as bs
from fakes import print_figures
from conftest import record_secret_scan_text

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
BIDI = set("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
FIGURES = {}                                  # inputs fuzzed per test, printed at the end of the module


def count(name):
    FIGURES[name] = FIGURES.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _print_figures(request):
    yield
    print_figures(request, FIGURES)


def bad_chars(text, allow_newline=True):
    """Control characters a terminal or a message reader would act on."""
    return sorted({c for c in text
                   if (unicodedata.category(c) == "Cc" and not (allow_newline and c == "\n")) or c in BIDI})


@pytest.fixture(scope="module")
def scratch():
    d = tempfile.mkdtemp(prefix="bs-fuzz-")
    yield d
    for n in os.listdir(d):
        os.unlink(os.path.join(d, n))
    os.rmdir(d)


def parse_file(path, data):
    with open(path, "wb") as fh:
        fh.write(data)
    try:
        return bs.parse_config(path)
    except bs.ConfigError:
        return None


# -- the config parser ---------------------------------------------------------

KEYWORDS = ["watchfor", "waitfor", "ignore", "echo", "bell", "exec", "pipe", "mail", "write", "dm",
            "tweet", "continue", "quit", "throttle", "threshold", "include", "budget", "perlcode",
            "WATCHFOR", "Echo", "when", "message"]
PIECES = ["/", "/i", "/x", "!/", "m{", "}", "&&", "||", "#", "\\", "\\/", "$_", "$0", "$1", "${x}", "${",
          "$(", "`", "'", '"', ",", "=", ":", ";", "|", ">", "<", "&", "(", ")", "(?<n>", "\\k<n>",
          "(?P<", "[", "]", "[:alpha:]", "[:^x:]", "*", "+", "?", "{9999999999}", "9" * 400, "0:0:5",
          "15:00", "1:2:3:4:5", "when=1-5:8-17", "when=9-1:*", "message=", "key=$1", "threshold=",
          "track_by=", "type=limit", "type=LIMIT", "count=", "seconds=", "keep_open", "addresses=",
          "subject=", "mailer=", "defang=no", "@alice", "@", "1001", "dm_per_15m=", "usd_per_day=",
          "inf", "nan", "-1", "1e999", "@@X@@", "\\Q", "(?{", "\u0663", "\u00e9", "\t", "\r", " ", "\n",
          "\\\n", "\x00", "\x1b[31m", "\ufeff", "\u202e"]


@st.composite
def config_text(draw):
    lines = []
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            lines.append(draw(st.text(max_size=40)))
        else:
            kw = draw(st.sampled_from(KEYWORDS))
            sep = draw(st.sampled_from([" ", "=", " = ", "\t", "", "  "]))
            val = "".join(draw(st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=8)))
            lines.append(kw + sep + val)
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines)


@FUZZ
@given(text=st.one_of(st.text(max_size=400), config_text()))
@example(text="watchfor /a/\nthrottle " + "9" * 400 + ":0")    # a delay too big for a float
@example(text="include a\x00b")                                   # a NUL in an include name
def test_config_parser_text_raises_only_config_error(scratch, text):
    count("config text")
    try:
        bs.parse_config(os.path.join(scratch, "text.conf"), text)
    except bs.ConfigError:
        pass


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), config_text().map(lambda t: t.encode("utf-8", "surrogatepass"))))
@example(data=b"watchfor /a/\nthrottle " + b"9" * 400 + b":0")
@example(data=b"watchfor /a/\n  echo\n\xff\xfe\x00")
def test_config_parser_file_bytes_raise_only_config_error(scratch, data):
    count("config bytes via file")
    parse_file(os.path.join(scratch, "bytes.conf"), data)


_CORPUS_CACHE = {}


def corpus_files(corpus_dir):
    if corpus_dir not in _CORPUS_CACHE:
        d = os.path.join(corpus_dir, "swatch-configs")
        names = sorted(os.listdir(d))
        files = []
        for n in names:
            with open(os.path.join(d, n), "rb") as fh:       # read in place, never copied
                files.append((n, fh.read()))
        _CORPUS_CACHE[corpus_dir] = files
    return _CORPUS_CACHE[corpus_dir]


def test_corpus_configs_parse_or_refuse_cleanly(corpus_dir):
    files = corpus_files(corpus_dir)
    assert len(files) == 25
    for name, _data in files:
        try:
            bs.parse_config(os.path.join(corpus_dir, "swatch-configs", name))
        except bs.ConfigError as exc:
            assert exc.path.endswith(name) and exc.lineno >= 0


MUTATION = st.tuples(st.sampled_from(["insert", "delete", "replace", "dupline", "dropline", "swaplines",
                                      "truncate", "flipbyte"]),
                     st.floats(0, 1), st.floats(0, 1),
                     st.one_of(st.sampled_from(PIECES).map(lambda s: s.encode("utf-8")),
                               st.binary(max_size=8)))


def mutate(data, mutations):
    for op, a, b, payload in mutations:
        n = len(data)
        i = min(int(a * n), n)
        if op == "insert":
            data = data[:i] + payload + data[i:]
        elif op == "delete":
            data = data[:i] + data[i + 1 + int(b * 20):]
        elif op == "replace":
            data = data[:i] + payload + data[i + len(payload):]
        elif op == "truncate":
            data = data[:i]
        elif op == "flipbyte" and n:
            j = min(i, n - 1)
            data = data[:j] + bytes([data[j] ^ (1 << int(b * 7.99))]) + data[j + 1:]
        else:
            lines = data.split(b"\n")
            k, m = min(int(a * len(lines)), len(lines) - 1), min(int(b * len(lines)), len(lines) - 1)
            if op == "dupline":
                lines.insert(k, lines[k])
            elif op == "dropline":
                del lines[k]
            else:
                lines[k], lines[m] = lines[m], lines[k]
            data = b"\n".join(lines)
    return data


@FUZZ
@given(which=st.integers(0, 24), mutations=st.lists(MUTATION, min_size=1, max_size=6))
def test_config_parser_corpus_mutations_raise_only_config_error(corpus_dir, scratch, which, mutations):
    count("corpus mutations")
    name, original = corpus_files(corpus_dir)[which]
    data = mutate(original, mutations)
    path = os.path.join(scratch, "mutated.conf")
    # parse, then drop the refused line and parse again, so that one early
    # error does not hide the rest of the file from the fuzzer
    for _ in range(60):
        try:
            with open(path, "wb") as fh:
                fh.write(data)
            bs.parse_config(path)
            return
        except bs.ConfigError as exc:
            lines = data.split(b"\n")
            if not 1 <= exc.lineno <= len(lines):
                return
            del lines[exc.lineno - 1]
            data = b"\n".join(lines)


@FUZZ
@given(value=st.one_of(st.sampled_from(["inf", "1e999", "Infinity", "1e308", "0", "1e-300", "15"]),
                       st.floats(allow_nan=False).map(repr), st.integers(0, 10 ** 30).map(str)),
       key=st.sampled_from(["dm_per_15m", "dm_per_day", "tweet_per_15m", "tweet_per_day", "usd_per_day"]))
@example(value="inf", key="dm_per_15m")
@example(value="inf", key="usd_per_day")
@example(value="0", key="dm_per_15m")                 # 'no DMs': then one earlier send
def test_any_budget_the_parser_accepts_can_be_applied(value, key):
    """A budget line that loads must not crash the sender later."""
    count("budget values")
    try:
        cfg = bs.parse_config("b.conf", "budget %s=%s\n" % (key, value))
    except bs.ConfigError:
        return
    kind = key.split("_")[0] if key != "usd_per_day" else "dm"
    for sent in ([], [1000.0] * 20):
        bs.budget_allowance(cfg.budget, kind, sent, [[t, 0.015] for t in sent], 1000.0, 0.015)
        bs.budget_allowance(cfg.budget, "tweet", sent, [[t, 0.2] for t in sent], 1000.0, 0.2)


# -- the line path ---------------------------------------------------------------

HOSTILE = [b"\x00", b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf",
           b"\x1b[31m", b"\x1b[2J\x1b[H", b"\x1b[?1049h", b"\x1b]0;pwned\x07", b"\x1b]8;;http://evil.example/\x1b\\",
           b"\x1b]52;c;ZWNobyBoaQ==\x07", b"\x1bP+q544e\x1b\\", b"\x1b_apc\x1b\\", b"\x1b", b"\x1b[", b"\x1b]",
           b"\x9b31m", "\u009b31m".encode(), "\u0085".encode(), b"\r", b"\r\r\r", b"\r\n", b"\n", b"\x7f", b"\x08",
           b"\x07", b"\t", b"\x0b\x0c", b"\x1c\x1d\x1e", "\u202e".encode(), "\u2066".encode(), "\u200f".encode(),
           "\u2028".encode(), b"IGNOREME ", b"alert ", b"user ", b"http://x.com/a?b=c ", b"example.com ",
           b"$(touch /tmp/x) ", b"`id` ", "\u00e9\u4e2d\U0001F600".encode(), b"%s%n ", b"@alice "]

LINE_CONF = r"""
ignore /IGNOREME/
watchfor /(\S+)\s+(.*)/
  echo
  dm @alice
  dm 1001,message=from $1: $2
  tweet
  exec /bin/echo $1 -- $_
  pipe /bin/cat,message=[$2]
  throttle 0:0:1,key=$1
  continue
watchfor /[\s\S]/
  echo red,message=<$_>
  threshold track_by=$_,type=limit,count=3,seconds=60
  tweet defang=no
"""

LINE_CONF_X = r"""
ignore /IGNOREME/
watchfor /(\S+)\s+(.*)/
  echo bold
  dm @alice
  dm 1001,message=from $1: $2
  tweet
  continue
watchfor /[\s\S]/
  dm 1001
  tweet defang=no
"""


class TTY(io.StringIO):
    def isatty(self):
        return True


class StubOutbox:
    def __init__(self):
        self.entries = []

    def add(self, kind, to, text, now, extra=None, label=""):
        self.entries.append((kind, to, text, dict(extra or {})))
        return {}


class LinePath:
    """LineSplitter -> Sentinel, as App.run_stream wires them."""

    def __init__(self, conf, out, dry_run, outbox=None):
        self.t = 1_700_000_000.0
        self.runner = bs.ActionRunner(out, dry_run=dry_run, hostname="h", outbox=outbox, clock=self.clock)
        self.sentinel = bs.Sentinel(bs.parse_config("line.conf", conf), self.runner, bs.Counters(), clock=self.clock)
        self.splitter = bs.LineSplitter("fuzz")
        self.texts = []
        self.lines = 0

    def clock(self):
        self.t += 0.25
        return self.t

    def feed(self, chunk):
        text = self.splitter.feed(chunk)
        if text:
            assert text.endswith("\n")
            self.texts.append(len(text))
            self.lines += text.count("\n")
            self.sentinel.process_text(text)

    def finish(self):
        if self.splitter.pending:
            self.lines += 1
            self.sentinel.process_text(self.splitter.pending.decode("utf-8", "replace").rstrip("\r") + "\n")


def chunks_of(data, sizes):
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)] if sizes else len(data)
        yield data[pos:pos + n]
        pos += n
        i += 1


def tweet_parts(text, seq, defang):
    return bs.entry_parts({"kind": "tweet", "text": text, "seq": seq, "defang": defang})


SGR_WRAP = re.compile(r"^\x1b\[[0-9;]*m(.*)\x1b\[0m$")


def check_terminal_output(out_text, tty):
    assert out_text == "" or out_text.endswith("\n")
    for line in out_text.split("\n"):
        if tty:
            m = SGR_WRAP.match(line)
            if m:                                # birdsentinel's own colour around the text
                line = m.group(1)
        assert bad_chars(line) == [], (line[:200], bad_chars(line))


def check_messages(entries):
    for kind, to, text, extra in entries:
        assert bad_chars(text, allow_newline=False) == [], (text[:200], bad_chars(text))
        if kind == "tweet":
            parts = tweet_parts(text, extra.get("seq", 1), extra.get("defang", True))
        else:
            parts = bs.message_parts(kind, text)
        for part in parts:
            assert bad_chars(part, allow_newline=False) == []
        fmt = bs.format_alert("h", text)
        assert bad_chars(fmt, allow_newline=False) == []


@FUZZ
@given(pieces=st.lists(st.one_of(st.sampled_from(HOSTILE), st.binary(max_size=24)), max_size=60),
       sizes=st.lists(st.integers(1, 64), max_size=8), tty=st.booleans())
@example(pieces=[b"\r\r\r\n", b"\r\n", b"\r", b"\n"], sizes=[], tty=False)
@example(pieces=[b"alert ", b"\x1b]0;t\x07", b"\x00\xff\x9b31m", "\u202e".encode(), b"\n"], sizes=[1], tty=True)
def test_line_path_never_crashes_and_never_outputs_control_characters(pieces, sizes, tty):
    count("line path")
    data = b"".join(pieces)
    out = TTY() if tty else io.StringIO()
    dry = LinePath(LINE_CONF, out, dry_run=True)
    stub = StubOutbox()
    xout = io.StringIO()
    real = LinePath(LINE_CONF_X, xout, dry_run=False, outbox=stub)
    for chunk in chunks_of(data, sizes):
        dry.feed(chunk)
        real.feed(chunk)
    dry.finish()
    real.finish()
    check_terminal_output(out.getvalue(), tty)     # echo, "would dm", "would post", "would run"
    check_terminal_output(xout.getvalue(), False)
    check_messages(stub.entries)                   # what would go to the outbox, and on to X
    assert dry.runner.failures == 0 and real.runner.failures == 0


@FUZZ
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200))
def test_sanitize_and_format_alert_leave_no_control_characters(text):
    count("sanitize/format_alert")
    assert bad_chars(bs.sanitize(text), allow_newline=False) == []
    assert bad_chars(bs.format_alert("host", text), allow_newline=False) == []
    assert bs.sanitize(bs.sanitize(text)) == bs.sanitize(text)


def test_ten_megabyte_hostile_line_goes_through_the_line_path():
    unit = b"".join(HOSTILE[:34]) + b" word "
    big = b"alert " + (unit * (10 * 1024 * 1024 // len(unit) + 1))[:10 * 1024 * 1024].replace(b"\n", b" ")
    data = b"alert before\n" + big + b"\nalert after \x1b[2J\x1b]0;x\x07\r\n" + b"\r\r\r\n"
    out = io.StringIO()
    dry = LinePath(LINE_CONF.replace("  tweet\n", "").replace("  tweet defang=no\n", ""), out, dry_run=True)
    stub = StubOutbox()
    real = LinePath(LINE_CONF_X.replace("  tweet\n", "").replace("  tweet defang=no\n", ""), io.StringIO(),
                    dry_run=False, outbox=stub)
    t = time.monotonic()
    for chunk in chunks_of(data, [bs.READ_BLOCK]):          # as the tailer reads
        dry.feed(chunk)
        real.feed(chunk)
    dry.finish()
    real.finish()
    elapsed = time.monotonic() - t
    check_terminal_output(out.getvalue(), False)
    check_messages(stub.entries)
    assert dry.lines == 4 and real.lines == 4
    assert max(dry.texts) <= bs.MAX_LINE + 100          # the big line was cut while reading
    texts = [e[2] for e in stub.entries]
    assert any(x.endswith("alert after ") for x in texts)
    assert all(len(x) <= bs.MAX_LINE + 100 for x in texts)
    assert elapsed < 20, elapsed
    FIGURES["10 MB line seconds"] = round(elapsed, 2)


# -- exec: one literal argument, no shell ----------------------------------------

RECORDER = r"""
import json, os, sys, uuid
here = os.path.dirname(os.path.abspath(__file__))      # children get a scrubbed environment
out = os.path.join(here, "rec")
with open(os.path.join(out, uuid.uuid4().hex + ".json"), "w") as fh:
    stdin = sys.stdin.read() if os.path.exists(os.path.join(here, "REC_STDIN")) else None
    json.dump({"argv": sys.argv[1:], "stdin": stdin}, fh)
"""


def payloads(canary):
    c = canary
    return [
        "$(touch %s)" % c, "`touch %s`" % c, "x; touch %s" % c, "x && touch %s" % c, "x || touch %s" % c,
        "x | touch %s" % c, "x > %s" % c, "x >> %s 2>&1 < /dev/null" % c, "x & touch %s &" % c,
        "-rf --no-preserve-root /", "--output=%s" % c, "-", "'; touch %s; echo '" % c,
        '"; touch %s; echo "' % c, "${IFS}touch${IFS}%s" % c, "\\$(touch %s)" % c, "* ? [a-z] ~ $HOME $$ $0 $1",
        "$_ ${_} $1 ${name}", "a\x00b $(touch %s)" % c, "a\rb; touch %s" % c, "\x1b]0;t\x07$(touch %s)" % c,
        "%s%n%x", "touch X", "$(touch X)", "`touch X`", "; touch X", "| tee X", "> X",
    ]


def expected_arg(line):
    v = bs.strip_controls(line)                        # no control byte or escape reaches a child
    return " " + v if v.startswith("-") else v


@pytest.fixture
def recorder(tmp_path):
    path = tmp_path / "rec.py"
    path.write_text(RECORDER)
    out = tmp_path / "rec"
    out.mkdir()
    return str(path), str(out)


def recorded(out_dir):
    recs = []
    for n in sorted(os.listdir(out_dir)):
        with open(os.path.join(out_dir, n)) as fh:
            recs.append(json.load(fh))
    return recs


def test_exec_gets_each_hostile_line_as_one_literal_argument(tmp_path, recorder, script):
    rec, out_dir = recorder
    canary = str(tmp_path / "CANARY")
    lines = payloads(canary)
    raw = b"".join(ln.encode("utf-8") + b"\n" for ln in lines)
    raw += b"\xff\xfe invalid `touch " + canary.encode() + b"`\n"              # invalid UTF-8
    raw += b"line one $(touch " + canary.encode() + b")\nline two `touch X`\n"  # a newline ends the line
    expected = [expected_arg(ln) for ln in lines]
    expected += ["\ufffd\ufffd invalid `touch %s`" % canary, "line one $(touch %s)" % canary, "line two `touch X`"]
    log = tmp_path / "hostile.log"
    log.write_bytes(raw)
    conf = tmp_path / "exec.conf"
    conf.write_text("watchfor /[\\s\\S]/\n  exec %s %s $_\n" % (shlex.quote(sys.executable), shlex.quote(rec)))
    env = dict(os.environ)
    work = tmp_path / "cwd"
    work.mkdir()
    r = subprocess.run([sys.executable, script, "-c", str(conf), "--examine", str(log)], cwd=str(work), env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    record_secret_scan_text("exec fuzz stdout", r.stdout)
    record_secret_scan_text("exec fuzz stderr", r.stderr)
    assert r.returncode == 0, r.stderr
    got = [x["argv"] for x in recorded(out_dir)]
    assert all(len(a) == 1 for a in got), [a for a in got if len(a) != 1]     # ONE argument each
    assert sorted(a[0] for a in got) == sorted(expected)                        # the whole line, literally
    assert not os.path.exists(canary)
    assert os.listdir(str(work)) == []                                          # no X, no redirect target
    assert sorted(os.listdir(str(tmp_path))) == sorted(["rec.py", "rec", "hostile.log", "exec.conf", "cwd"])
    FIGURES["exec hostile lines"] = len(expected)


def test_exec_argument_templates_and_pipe_message_with_newline(tmp_path, recorder, script):
    """Groups inside a fixed argument, a group at the start of one (leading
    '-' gets a space), and a pipe whose message= holds a newline: still one
    line on the pipe, one argument per template word, nothing run."""
    rec, out_dir = recorder
    canary = str(tmp_path / "CANARY")
    conf = tmp_path / "exec.conf"
    py, rq = shlex.quote(sys.executable), shlex.quote(rec)
    conf.write_text("watchfor /^user=(\\S*) msg=(.*)$/\n"
                    "  exec %s %s --user=$1 $2 x$1y\n"
                    "  pipe %s %s,message=$2\\nINJECTED $(touch %s)\n"
                    "  continue\n" % (py, rq, py, rq, canary))
    lines = ["user=-x msg=-rf $(touch %s)" % canary,
             "user=a;b msg=`touch %s` | tee X" % canary,
             "user= msg=a\rb"]
    log = tmp_path / "h.log"
    log.write_bytes(b"".join(x.encode() + b"\n" for x in lines))
    env = dict(os.environ)
    open(os.path.join(os.path.dirname(rec), "REC_STDIN"), "w").close()
    r = subprocess.run([sys.executable, script, "-c", str(conf), "--examine", str(log)], cwd=str(tmp_path),
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    record_secret_scan_text("exec template stdout", r.stdout)
    record_secret_scan_text("exec template stderr", r.stderr)
    assert r.returncode == 0, r.stderr
    recs = recorded(out_dir)
    execs = sorted(x["argv"] for x in recs if x["stdin"] == "")
    pipes = sorted(x["stdin"] for x in recs if x["stdin"])
    assert execs == sorted([["--user=-x", " -rf $(touch %s)" % canary, "x-xy"],
                            ["--user=a;b", "`touch %s` | tee X" % canary, "xa;by"],
                            ["--user=", "ab", "xy"]])
    assert len(pipes) == 3
    for p in pipes:                          # one line each: a config newline or a CR cannot add lines
        assert p.endswith("\n") and p.count("\n") == 1 and "\r" not in p, repr(p)
        assert bad_chars(p) == []
    assert not os.path.exists(canary) and not os.path.exists(str(tmp_path / "X"))


@pytest.mark.parametrize("cmd", ["$_", "$1", "${name}", "$0 arg", '"$1" x', '"$_"', "$_x", "/bin/$1"])
def test_exec_program_never_comes_from_the_log_line(cmd):
    with pytest.raises(bs.ConfigError):
        bs.parse_config("p.conf", "watchfor /(?<name>x)/\n  exec %s\n" % cmd)


@FUZZ
@given(line=st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\n"), max_size=80))
@example(line="\x1b\x00[31m")
def test_build_argv_keeps_any_line_as_one_argument(line):
    count("build_argv")
    templates = bs.parse_command("/usr/bin/prog --flag $_ pre$_post", "p.conf", 1, "exec")
    argv = bs.build_argv(templates, line, None)
    clean = bs.strip_controls(line)                # escapes go first: "\x1b\x00[31m" leaves "[31m"
    assert argv == ["/usr/bin/prog", "--flag", " " + clean if clean.startswith("-") else clean,
                    "pre" + clean + "post"]
