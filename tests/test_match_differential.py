"""Differential test of matching (issue 15): for random configs and random logs, the lines each rule
matches through birdsentinel's real path (parse_config from a file, Sentinel, process_text in blocks)
equal those of a plain reference matcher that tries every rule on every line in order, with swatch's
semantics: first match wins unless `continue`; an `ignore` rule drops the line for the rules below it;
`quit` stops everything after the matching rule's actions.  The reference's per-rule predicate is
`rule.pattern.match(line)`, so whatever the fast candidate search does, it must select the same lines.

Rules come from the real swatch configs of ../shared/corpus/swatch-configs/ (read in place; perlcode
`my $var = '...'` values written into the patterns, as birdsentinel's error message tells users to do)
and from generated ones: literals inside groups, alternations, &&/||/! terms, /.../i, (?i:...), ignore,
continue, quit.  Lines come from ../shared/corpus/logs (read in place) and from generated lines that
contain the rules' literals in varied case and position.  Seeded (derandomize): the same examples on
every run.
"""

import collections
import dataclasses
import glob
import io
import os
import re
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import birdsentinel as bs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.environ.get("BIRDSENTINEL_CORPUS", os.path.join(ROOT, "..", "shared", "corpus"))
MAX_EXAMPLES = 200
STATS: "collections.Counter[str]" = collections.Counter()   # what the random test covered (for reports)

try:                                              # test-side only: literals to plant in generated lines
    import re._parser as sre_parse                # type: ignore[import]
except ImportError:                               # Python 3.9, 3.10
    import sre_parse                              # type: ignore[import,no-redef]


# ---- the corpus, read in place ------------------------------------------------------------------

PERL_MY = re.compile(r"^\s*perlcode\s+my\s+\$(\w+)\s*=\s*'([^']*)'\s*;", re.M)
RULE_LINE = re.compile(r"^\s*(watchfor|waitfor|ignore)\s*(?:=\s*|\s+)(\S.*?)\s*$", re.I)


def corpus_or_skip() -> str:
    if not os.path.isdir(CORPUS):
        if os.environ.get("CI"):
            pytest.fail("the corpus %s is missing in CI" % CORPUS)
        pytest.skip("the real-world corpus ../shared/corpus is not beside this clone")
    return os.path.abspath(CORPUS)


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read().replace("\r\n", "\n")


def load_corpus_rules(corpus: str) -> "list[tuple[str, str]]":
    """(kind, pattern text) of every corpus rule birdsentinel accepts, perl variables written out, deduplicated."""
    out = {}
    for path in sorted(glob.glob(os.path.join(corpus, "swatch-configs", "*"))):
        text = _read(path)
        perl_vars = dict(PERL_MY.findall(text))
        for n, line in enumerate(text.split("\n"), 1):
            m = RULE_LINE.match(line)
            if not m or "@@" in line:
                continue
            value = re.sub(r"\$(\w+)", lambda v: perl_vars.get(v.group(1), v.group(0)), m.group(2))
            try:
                bs.parse_pattern(value, path, n)
            except bs.ConfigError:
                continue                            # a Perl-only construct, a broken line: not ours to test
            kind = "ignore" if m.group(1).lower() == "ignore" else "watchfor"
            out.setdefault((kind, value), None)
    return list(out)


def load_corpus_lines(corpus: str) -> "list[str]":
    lines = []
    for path in sorted(glob.glob(os.path.join(corpus, "logs", "*_2k.log"))):
        lines.extend(x for x in _read(path).split("\n") if x)
    sshd = os.path.join(corpus, "fail2ban", "tests-files-logs-sshd")
    if os.path.exists(sshd):
        lines.extend(x for x in _read(sshd).split("\n") if x and not x.startswith("#"))
    return lines


def literal_runs(src: str, flags: int = 0) -> "list[str]":
    """Runs of >= 3 plain characters anywhere in the regex's parse tree (inside groups too)."""
    try:
        tree = sre_parse.parse(src, flags)
    except Exception:
        return []
    runs: "list[str]" = []

    def walk(seq):
        run = ""
        for op, av in seq:
            if op is sre_parse.LITERAL:
                run += chr(av)
                continue
            if len(run) >= 3:
                runs.append(run)
            run = ""
            if op is sre_parse.SUBPATTERN:
                walk(av[-1])
            elif op is sre_parse.BRANCH:
                for b in av[1]:
                    walk(b)
            elif op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT):
                walk(av[2])
        if len(run) >= 3:
            runs.append(run)
    walk(tree)
    return runs


CORPUS_RULE_SET: "set[tuple[str, str]]" = set()


class Corpus:
    loaded = False
    rules: "list[tuple[str, str]]" = []
    lines: "list[str]" = []
    literals: "list[str]" = []


def corpus() -> Corpus:
    if not Corpus.loaded:
        path = corpus_or_skip()
        Corpus.rules = load_corpus_rules(path)
        Corpus.lines = load_corpus_lines(path)
        lits = []
        for _, value in Corpus.rules:
            for term in bs.parse_pattern(value, "corpus", 0).terms:
                lits.extend(literal_runs(term.regex.pattern))
        Corpus.literals = sorted(set(lits))
        CORPUS_RULE_SET.update(Corpus.rules)
        Corpus.loaded = True
    return Corpus


# ---- the two matchers ---------------------------------------------------------------------------

class RecordingRunner(bs.ActionRunner):
    """An ActionRunner that records (action line number, line) instead of acting."""

    def __init__(self) -> None:
        super().__init__(io.StringIO(), dry_run=True, hostname="test")
        self.events: "list[tuple[int, str]]" = []

    def run(self, action, line, match, message, origin=""):     # noqa: D401 - same signature as ActionRunner.run
        self.events.append((action.lineno, line))


def write_config(dirname: str, specs) -> "tuple[str, dict]":
    """specs: (kind, pattern text, cont, quit).  Each watchfor gets one `echo` (and maybe `quit`);
    returns the file and {echo line number: rule index}."""
    lines, echo_at = [], {}
    for i, (kind, value, cont, quit_) in enumerate(specs):
        lines.append("%s %s" % (kind, value))
        if kind == "watchfor":
            lines.append("    echo")
            echo_at[len(lines)] = i
            if quit_:
                lines.append("    quit")
            if cont:
                lines.append("    continue")
    path = os.path.join(dirname, "rules.conf")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path, echo_at


def birdsentinel_events(config, echo_at: dict, lines: "list[str]", cuts: "list[int]", strstr: bool = True):
    """(rule index, line) in order, through Sentinel.process_text, the log split into blocks at `cuts`; without
    libc's strstr (bytes.find, as where there is no libc) if not `strstr`."""
    runner = RecordingRunner()
    sentinel = bs.Sentinel(config, runner, bs.Counters(), clock=lambda: 0.0)
    bounds = [0] + sorted(set(c for c in cuts if 0 < c < len(lines))) + [len(lines)]
    if not strstr:                              # the plan process_text would choose on its first block, minus strstr
        first = "".join(x + "\n" for x in lines[:bounds[1]])
        sentinel.plan = dataclasses.replace(bs.build_plan(config.rules, first), strstr=None, sampled=1 << 30)
    for a, b in zip(bounds, bounds[1:]):
        if sentinel.quit:
            break
        sentinel.process_text("".join(x + "\n" for x in lines[a:b]))
    return [(echo_at[lineno], line) for lineno, line in runner.events]


def reference_events(config, lines: "list[str]"):
    """Every rule on every line, in order: swatch's semantics, nothing skipped."""
    events = []
    for line in lines:
        for i, rule in enumerate(config.rules):
            if rule.pattern.match(line) is None:
                continue
            if rule.kind == "ignore":
                break
            events.append((i, line))
            if any(a.kind == "quit" for a in rule.actions):
                return events
            if not rule.cont:
                break
    return events


def compare(specs, lines, cuts=(), strstr=True):
    with tempfile.TemporaryDirectory(prefix="bs-diff-") as d:
        path, echo_at = write_config(d, specs)
        config = bs.parse_config(path)
    assert len(config.rules) == len(specs)
    got = birdsentinel_events(config, echo_at, lines, list(cuts), strstr)
    want = reference_events(config, lines)
    for i, spec in enumerate(specs):           # per rule first: the message names the rule
        g = [line for r, line in got if r == i]
        w = [line for r, line in want if r == i]
        assert g == w, "rule %d %r: birdsentinel matched %d lines, the reference %d; missing %r, extra %r" % (
            i, spec, len(g), len(w), [x for x in w if x not in g][:3], [x for x in g if x not in w][:3])
    assert got == want                          # and the order of the actions
    return want


# ---- generated rules and lines ------------------------------------------------------------------

WORDS = ["sshd[", "Failed password", "kernel:", "error", "EXT4-fs", "I/O", "sudo", "COMMAND=", "session",
         "authentication failure", "Invalid user", "panic", "halt", "Accepted", "root", "[preauth]", "POSSIBLE",
         "isk", "kelvin", "Straße", "İstanbul", "ſtop", "\u212aey"]   # the last four: case-folding traps
CASES = [lambda s: s, str.upper, str.lower, str.swapcase, str.title,
         # letters re.IGNORECASE takes for an ASCII one: dotless i, dotted capital I, long s, Kelvin sign
         lambda s: s.replace("i", "\u0131"), lambda s: s.replace("i", "\u0130"), lambda s: s.replace("s", "\u017f"),
         lambda s: s.upper().replace("K", "\u212a")]
NOISE = ["", " ", "x", "--", "\r", "\t", "İ", "ı", "ſ", "\u212a", "ß", "é", "1234", "[", "]", "(", ")", ":",
         "\x00", "\ufffd", "%", "\u20ac"]     # NUL stops strstr; U+FFFD is what an invalid byte decodes to


def rx(lit: str) -> str:
    """A literal as regex source inside /.../ (the delimiter escaped)."""
    return re.escape(lit).replace("/", "\\/")


@st.composite
def literal(draw) -> str:
    c = corpus()
    if c.literals and draw(st.booleans()):
        lit = draw(st.sampled_from(c.literals))
        if len(lit) > 12 and draw(st.booleans()):    # a piece of it, still a real corpus string
            start = draw(st.integers(0, len(lit) - 4))
            lit = lit[start:start + draw(st.integers(3, 12))]
        return lit
    return draw(st.sampled_from(WORDS))


@st.composite
def generated_term(draw) -> str:
    """One /regex/flags term: the literal at top level, inside a group, an alternation, a repeat..."""
    a, b = draw(literal()), draw(literal())
    shape = draw(st.sampled_from([
        "{a}", "({a})", "(?:{a})", "({a}|{b})", "(?:{a}|{b}) \\S+", "\\d+ ({a})", "({a})+", "x?({a}|{b})y*",
        "^{a}", "{a}$", "(?P<n>{a}).*{b}", "({a}).*({b})", "(?i:{a})", "[Xx]{a}", "(({a}|{b})|zz)", "{a}|{b}",
        "(?:ab|{a})", "{a}\\s+{b}", "{a}(?={b})", "({a}|)", "(?:{a})?{b}", "(?:{a}){{2}}", ".{{0,3}}{a}"]))
    src = shape.format(a=rx(a), b=rx(b))
    flags = draw(st.sampled_from(["", "", "", "i"]))
    return "/%s/%s" % (src, flags)


@st.composite
def generated_pattern(draw) -> str:
    first = draw(generated_term())
    how = draw(st.sampled_from(["one", "one", "and", "or", "and_not", "or_not", "and3"]))
    if how == "one":
        return first
    second = draw(generated_term())
    if how == "and":
        return "%s && %s" % (first, second)
    if how == "or":
        return "%s || %s" % (first, second)
    if how == "and_not":
        return "%s && !%s" % (first, second)
    if how == "or_not":
        return "%s || !%s" % (first, second)
    return "%s && %s && %s" % (first, second, draw(generated_term()))


@st.composite
def rule_spec(draw):
    c = corpus()
    if c.rules and draw(st.integers(0, 2)) == 0:
        kind, value = draw(st.sampled_from(c.rules))
        if draw(st.integers(0, 4)) == 0:              # a corpus watchfor as ignore and back
            kind = "ignore" if kind == "watchfor" else "watchfor"
    else:
        value = draw(generated_pattern())
        kind = "ignore" if draw(st.integers(0, 5)) == 0 else "watchfor"
    cont = kind == "watchfor" and draw(st.integers(0, 3)) == 0
    quit_ = kind == "watchfor" and draw(st.integers(0, 60)) == 0
    return kind, value, cont, quit_


@st.composite
def log_for(draw, specs):
    """Corpus lines and generated lines holding the rules' literals (varied case, position, neighbours)."""
    c = corpus()
    lits = []
    for _, value, _, _ in specs:
        for term in bs.parse_pattern(value, "t", 0).terms:
            lits.extend(literal_runs(term.regex.pattern))
    lits = lits or WORDS
    n = draw(st.integers(1, 120))
    lines = []
    for _ in range(n):
        kind = draw(st.integers(0, 9))
        if kind <= 2 and c.lines:
            lines.append(draw(st.sampled_from(c.lines)))
            continue
        base = draw(st.sampled_from(c.lines)) if c.lines and kind <= 6 else ""
        for _ in range(draw(st.integers(1, 3))):
            lit = draw(st.sampled_from(CASES))(draw(st.sampled_from(lits)))
            pos = draw(st.integers(0, len(base)))
            base = base[:pos] + draw(st.sampled_from(NOISE)) + lit + draw(st.sampled_from(NOISE)) + base[pos:]
        lines.append(base.replace("\n", " "))
    return lines


# ---- the tests ----------------------------------------------------------------------------------

@settings(derandomize=True, database=None, max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_configs_match_like_the_reference(data):
    specs = data.draw(st.lists(rule_spec(), min_size=1, max_size=30), label="rules")
    lines = data.draw(log_for(specs), label="log")
    cuts = data.draw(st.lists(st.integers(0, len(lines)), max_size=3), label="block cuts")
    matched = compare(specs, lines, cuts)
    STATS.update(examples=1, rules=len(specs), lines=len(lines), matches=len(matched),
                 corpus_rules=sum(1 for s in specs if (s[0], s[1]) in CORPUS_RULE_SET or
                                  ({"ignore": "watchfor", "watchfor": "ignore"}[s[0]], s[1]) in CORPUS_RULE_SET),
                 ignore_rules=sum(1 for s in specs if s[0] == "ignore"), continue_rules=sum(s[2] for s in specs),
                 quit_rules=sum(s[3] for s in specs), ci_rules=sum(1 for s in specs if re.search(r"/i\b|/i$", s[1])),
                 multi_term_rules=sum(1 for s in specs if "&&" in s[1] or "||" in s[1]))


TRAPS = CASES[5:]


@settings(derandomize=True, database=None, max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_case_insensitive_rules_with_folding_traps(data):
    """Case-insensitive rules only, over lines whose literals use the non-ASCII letters re.IGNORECASE
    takes for i, s and k (the random test above meets them too, but rarely)."""
    lits = [w for w in corpus().literals + WORDS if re.search("[iskISK]", w) and w.isascii()]
    specs = []
    for _ in range(data.draw(st.integers(1, 6), label="rules")):
        lit = data.draw(st.sampled_from(lits))
        shape = data.draw(st.sampled_from(["/{a}/i", "/({a})/i", "/(?:{a}|zzzq)/i", "/(?i:{a})/", "/{a}/i && /./"]))
        specs.append(("watchfor", shape.format(a=rx(lit)), data.draw(st.booleans()), False))
    words = [lit for _, v, _, _ in specs for term in bs.parse_pattern(v, "t", 0).terms
             for lit in literal_runs(term.regex.pattern)]
    lines = []
    for _ in range(data.draw(st.integers(1, 30), label="lines")):
        word = data.draw(st.sampled_from(words))
        lines.append(data.draw(st.sampled_from(NOISE)) + data.draw(st.sampled_from(TRAPS + CASES[:5]))(word)
                     + data.draw(st.sampled_from(NOISE)))
    compare(specs, lines)


def full_sample_log(data, specs) -> "list[str]":
    """Corpus lines for more than a full sample (bs.MATCH_SAMPLE bytes) first, then the generated ones among more
    corpus lines: the plan is chosen on lines that lack the generated ones' rare bytes and literals."""
    c = corpus()
    start = data.draw(st.integers(0, max(len(c.lines) - 2000, 0)), label="corpus offset")
    filler, size = [], 0
    for line in c.lines[start:] + c.lines[:start]:
        filler.append(line)
        size += len(line.encode()) + 1
        if size > 3 * bs.MATCH_SAMPLE:             # the first block: 1.5 samples
            break
    head = len(filler) // 2
    tail = filler[head:] + data.draw(log_for(specs), label="log")
    data.draw(st.randoms(use_true_random=False), label="shuffle").shuffle(tail)
    return filler[:head] + tail


@settings(derandomize=True, database=None, max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_configs_match_like_the_reference_on_a_full_sample(data):
    """As the first test, with the first block a full sample of the log: only then does the plan take a literal of one
    or two characters the sample shows rare, one pass for the literals holding a byte the sample lacks, strstr from a
    rare pair of bytes on; and half the runs go without strstr (bytes.find, as without glibc)."""
    specs = data.draw(st.lists(rule_spec(), min_size=1, max_size=30), label="rules")
    lines = full_sample_log(data, specs)
    cuts = [len(lines) // 2] + data.draw(st.lists(st.integers(len(lines) // 2, len(lines)), max_size=2), label="cuts")
    compare(specs, lines, cuts, strstr=data.draw(st.booleans(), label="strstr"))


def test_every_corpus_watchfor_on_the_whole_corpus():
    """All the corpus rules that birdsentinel accepts (ignore rules first, as most configs place them),
    each echoing, over every corpus line."""
    c = corpus()
    assert len(c.rules) >= 300, len(c.rules)
    specs = [(k, v, False, False) for k, v in c.rules if k == "ignore"][:40]
    specs += [(k, v, False, False) for k, v in c.rules if k == "watchfor"]
    matched = compare(specs, c.lines, cuts=[len(c.lines) // 3, 2 * len(c.lines) // 3])
    assert len(matched) > 100


def test_every_corpus_watchfor_with_continue():
    """Every corpus watchfor with `continue`, so no rule hides another: each rule's own lines, over every
    third corpus line (every line would take 3 times as long and find the same rules)."""
    c = corpus()
    specs = [("watchfor", v, True, False) for k, v in c.rules if k == "watchfor"]
    matched = compare(specs, c.lines[::3])
    assert len({r for r, _ in matched}) >= 20


def test_the_reference_itself():
    """The reference matcher's semantics on a hand-checked case, so it cannot drift."""
    specs = [("ignore", "/noise/", False, False),
             ("watchfor", "/(Failed|Accepted) password/", True, False),
             ("watchfor", "/password/i", False, False),
             ("watchfor", "/PASSWORD/", False, False)]
    lines = ["Failed password for root", "noise: Failed password", "PASSWORD reset", "nothing"]
    assert compare(specs, lines) == [(1, "Failed password for root"), (2, "Failed password for root"),
                                     (2, "PASSWORD reset")]


def test_dotted_capital_i_in_a_case_insensitive_literal():
    """Found by the random test: U+0130 casefolds to two characters ('i' + combining dot), so a per-line
    literal check on the casefolded line skipped 'Faİled password', which /Failed password/i matches."""
    specs = [("watchfor", "/Failed password/i && /sshd\\[/", False, False),
             ("watchfor", "/Failed password/i", False, False)]
    compare(specs, ["sshd[1]: Fa\u0130led password for root", "x Fa\u0130led password"])
