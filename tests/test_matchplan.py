"""The fast path (literal/regex candidate search over a block of lines)
must select exactly the lines the rules match one by one."""

import dataclasses
import glob
import io
import os
import random
import re
import threading

from hypothesis import given, settings, strategies as st

import birdsentinel as bs


def matched_lines(config, text, use_plan=True):
    out = io.StringIO()
    runner = bs.ActionRunner(out)
    sentinel = bs.Sentinel(config, runner, bs.Counters(), clock=lambda: 0.0)
    if not use_plan:                        # every line through every rule's own literal check
        sentinel.plan = dataclasses.replace(bs.build_plan(config.rules), passes=(), traps=(), every=True,
                                            always=(1 << len(config.rules)) - 1, sampled=1 << 30)
    hits = []
    original = sentinel.match_line

    def spy(line, fields, steps, origin=""):
        before = sentinel.matches
        original(line, fields, steps, origin)
        if sentinel.matches != before:
            hits.append(line)
    sentinel.match_line = spy
    sentinel.process_text(text)
    return hits


def config_of(text):
    return bs.parse_config("t.conf", text)


def required_literals(src, min_len=3):
    """The literal set whose shortest member is longest (the per-line check's), or [] if none is min_len long."""
    best = max(bs.literal_sets(src), key=bs._shortest, default=())
    return [x for x, _ in best] if best and bs._shortest(best)[0] >= min_len else []


def test_required_literal_examples():
    assert required_literals(r"sshd\[\d+\]: Failed password for (\S+)") == ["]: Failed password for "]
    assert required_literals("INVALID|REPEATED|INCOMPLETE") == ["INVALID", "REPEATED", "INCOMPLETE"]
    assert required_literals("ab|c") == []              # 'c' is too short to help
    assert required_literals(r"(ab|cd)efg") == ["efg"]
    assert required_literals(r"abcd?e") == ["abc"]       # d is optional
    assert required_literals(r"x{0,3}yzw") == ["yzw"]
    assert bs.literal_sets(r"(Failed|Accepted) password") == [(("Failed", False), ("Accepted", False)),
                                                             ((" password", False),)]
    assert bs.literal_sets(r"Foo(?i:bar)", True) == [(("foo", True),)]          # lowered; (?i:) has none
    assert bs.literal_sets("Stra\u00dfe|x", True) == []                          # not ASCII: no set
    assert bs.literal_sets("(unbalanced") == []


ATOMS = ["a", "b", "c", "ab", "abc", r"\.", "x", "[ab]", "(a|b)", "(?:bc)?", r"\d", r"\s", "a*",
         "b+", "c?", "(abc)+", "x{2}", "y{0,2}", ".", "^", "$", "|", r"\b", "(?=ab)", "(?!c)",
         "]", "}", "a{1,3}", "abc+?", "[^a]", r"\]", "(?i:ab)"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=7),
       st.lists(st.text(alphabet="abcxyABC.1 ]}", max_size=14), min_size=1, max_size=12))
def test_required_literals_are_in_every_match(atoms, samples):
    """Every set (not only the one the per-line check takes): the block search may choose any."""
    src = "".join(atoms)
    try:
        rx = re.compile(src)
    except re.error:
        return
    sets = bs.literal_sets(src)
    for s in samples:
        if rx.search(s):
            for lits in sets:
                assert any(lit in s for lit, _ in lits), (src, lits, s)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=5),
       st.booleans(),
       st.lists(st.text(alphabet="abcxyABC.1 ]}\r\u0130\u017f\u212a\u00df", max_size=14), min_size=1, max_size=20))
def test_plan_selects_exactly_the_matching_lines(atoms, ci, lines):
    src = "".join(atoms).replace("/", "")
    try:
        re.compile(src)
    except re.error:
        return
    text_conf = "ignore /zzz/\nwatchfor /%s/%s\n    echo\nwatchfor /ABC|abc/\n    echo\n" % (src, "i" if ci else "")
    try:
        config = config_of(text_conf)
    except bs.ConfigError:
        return
    text = "".join(line.replace("\n", "") + "\n" for line in lines)
    assert matched_lines(config, text) == matched_lines(config, text, use_plan=False)


def test_plan_agrees_with_per_line_on_the_corpus(corpus_dir):
    logs = [open(p, encoding="utf-8", errors="replace").read().replace("\r\n", "\n")
            for p in sorted(glob.glob(os.path.join(corpus_dir, "logs", "*_2k.log")))]
    text = "".join(log if log.endswith("\n") else log + "\n" for log in logs)
    checked = 0
    for path in sorted(glob.glob(os.path.join(corpus_dir, "swatch-configs", "*"))):
        try:
            config = bs.parse_config(path)
        except bs.ConfigError:
            continue
        fast = matched_lines(config, text)
        slow = matched_lines(config, text, use_plan=False)
        assert fast == slow, path
        checked += 1
    assert checked >= 8


def test_failed_password_count_on_openssh_sample(corpus_dir):
    # The corpus README: in OpenSSH_2k, E9 and E10 are exactly the 520
    # "Failed password" lines.
    with open(os.path.join(corpus_dir, "logs", "OpenSSH_2k.log"), encoding="utf-8") as fh:
        text = fh.read().replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    config = config_of("watchfor /Failed password/\n    echo\n")
    assert len(matched_lines(config, text)) == 520


def test_random_syslog_like_block_with_many_rules():
    rng = random.Random(7)
    words = ["sshd", "Failed", "password", "kernel", "error", "EXT4-fs", "I/O", "sudo", "COMMAND=", "x"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(3000)]
    config = config_of("""watchfor /sshd.*Failed password/
    echo
watchfor /EXT4-fs error/i
    echo
watchfor /sudo: .*COMMAND=/
    echo
watchfor /(kernel|sshd) x/
    echo
watchfor /I\\/O error/
    echo
""")
    text = "\n".join(lines) + "\n"
    assert matched_lines(config, text) == matched_lines(config, text, use_plan=False)


def filler(size=2 * bs.MATCH_SAMPLE):
    """Syslog-like lines for a full sample, without %, Q, Z, J or a NUL byte."""
    lines, n = [], 0
    while sum(map(len, lines)) < size:
        n += 1
        lines.append("Nov  3 07:%02d:%02d mailgw sshd[%d]: Accepted publickey for root from 10.0.%d.%d port 22 - ok\n"
                     % (n // 60 % 60, n % 60, 4000 + n, n % 250, n % 7))
    return "".join(lines)


SHORT = config_of("""ignore /%NOISE/
watchfor /%\\w+-\\d/
    echo
watchfor /%SYS-5-RESTART/
    echo
watchfor /Q\\d/
    echo
watchfor /sshd\\[\\d+\\]: Failed/
    echo
watchfor /(zz|ZJ)-\\d/i
    echo
""")
PLANTED = ["x %SYS-5-RESTART y", "Q7 here", "sshd[1]: Failed password", "ZJ-1", "%NOISE-1", "nothing", "QQ", "zz-x"]


def test_short_literals_a_byte_the_sample_lacks_and_dispatch():
    """On a full sample without %, Q and Z: a rule whose only literals are short takes them, the literals holding a
    byte the sample lacks share one pass for it (in the lowered block for /i), and each line found goes only to the
    rules whose literal it holds, and to the ignore rule (with its own check)."""
    plan = bs.build_plan(SHORT.rules, filler())
    needles = {(needle, ci): sorted(lit or needle for lit, _ in entries) for needle, ci, _, entries in plan.passes}
    assert needles[b"%", False] == [b"%", b"%SYS-5-RESTART"]
    assert needles[b"Q", False] == [b"Q"]
    assert needles[b"z", True] == [b"zj", b"zz"]
    assert plan.always == 1 and not plan.every and plan.traps
    got = [(line, [r.index for r, _, _ in steps]) for line, steps in
           bs.candidate_lines(plan, "".join(x + "\n" for x in PLANTED))]
    assert got == [("x %SYS-5-RESTART y", [0, 1, 2]), ("Q7 here", [0, 3]), ("sshd[1]: Failed password", [0, 4]),
                   ("ZJ-1", [0, 5]), ("%NOISE-1", [0, 1]), ("QQ", [0, 3]), ("zz-x", [0, 5])]
    assert [steps for _, steps in bs.candidate_lines(plan, "Q\n")] == [
        (plan.steps[0], (plan.steps[3][0], None, None))]            # the ignore rule keeps its check, not the found
    text = filler() + "".join(x + "\n" for x in PLANTED * 3)
    assert matched_lines(SHORT, text) == matched_lines(SHORT, text, use_plan=False) != []


def test_no_short_literal_without_a_full_sample():
    """A small first block cannot show a character rare: the rule without a 3-character literal makes every line a
    candidate, until a block large enough to choose on comes."""
    plan = bs.build_plan(SHORT.rules, "Nov  3 07:14:06 mailgw sshd[1]: Accepted\n")
    assert plan.every and all(len(needle) >= 3 for needle, _, _, _ in plan.passes)


def test_bytes_and_text_find_the_same_lines():
    """The search runs on the block's UTF-8 bytes: around a literal, multi-byte characters, invalid bytes (U+FFFD once
    decoded, as LineSplitter does), a NUL (strstr stops at one: bytes.find then), and for /i the letters
    re.IGNORECASE takes for an ASCII one (dotted and dotless I, long s, Kelvin sign), with and without strstr."""
    config = config_of("""watchfor /Failed password/
    echo
watchfor /%SYS-5-RESTART:/
    echo
watchfor /kernel: \\S+ error/i
    echo
watchfor /caf\u00e9 \u20ac/
    echo
watchfor /sess/i
    echo
""")
    raw = [b"\xffFailed password", b"caf\xc3\xa9 \xe2\x82\xac x", b"\xe2\x82 Failed password\xc3", b"a\x00b %SYS-5-RESTART:",
           "\u212aERNEL: disk ERROR".encode(), "kernel: x error\ufffd".encode(), "Fa\u0130led password".encode(),
           "\u017fe\u017f\u017f".encode(), "se\u017fs".encode(), "\u0130SS".encode(), b"nothing \xc0\xaf"]
    text = bs.LineSplitter("t").feed(filler().encode() + b"".join(x + b"\n" for x in raw * 2))
    fast, slow = matched_lines(config, text), matched_lines(config, text, use_plan=False)
    assert fast == slow and len(fast) == 16
    plan = bs.build_plan(config.rules, text)
    assert list(bs.candidate_lines(plan, text)) == list(bs.candidate_lines(dataclasses.replace(plan, strstr=None), text))


def test_many_short_lines_are_searched_in_halves():
    """A block of many short lines goes in halves (the lines found at a time stay few, and so does memory), cut at a
    newline, even with one long line across the middle: the same lines as one by one."""
    lines = ["ab", "Q1", "%X-1", "zz-1", "x", "sshd[2]: Failed"] * 9000
    for middle in ([], ["Q" * 100000 + "7"]):
        text = "".join(x + "\n" for x in lines[:27000] + middle + lines[27000:])
        fast = matched_lines(SHORT, text)
        assert fast == matched_lines(SHORT, text, use_plan=False) and len(fast) == 36000 + len(middle)


def test_only_whole_lines():
    """A block that does not end in a newline (process_text's callers never give one): its last, partial line is left
    out, as one by one, and the search ends."""
    plan = bs.build_plan(SHORT.rules, filler())
    assert [line for line, _ in bs.candidate_lines(plan, "Q1\nx Q2\nQ3 no newline")] == ["Q1", "x Q2"]
    assert list(bs.candidate_lines(plan, "Q3 no newline")) == [] == list(bs.candidate_lines(plan, ""))


def test_only_whole_lines_when_every_line_is_a_candidate():
    """The same with a watchfor without a literal, which makes every line a candidate."""
    config = config_of("watchfor /^\\w+\\d$/\n    echo\nwatchfor /Q\\d/\n    echo\n")
    plan = bs.build_plan(config.rules, filler())
    assert plan.every
    assert [line for line, _ in bs.candidate_lines(plan, "a1\nx Q2\nb3 no newline")] == ["a1", "x Q2"]
    assert list(bs.candidate_lines(plan, "b 3 no newline")) == [] == list(bs.candidate_lines(plan, ""))


def test_rule_mask_cache_stays_small_whatever_mixes_of_literals_lines_hold():
    """Lines that each hold a different half of 300 rules' literals (any local user can write such lines) must not
    grow the per-plan cache of rule lists without bound: it keeps at most 1024 masks, each a tuple of the plan's own
    per-rule steps (no copies), and every rule still sees the lines that hold its literal."""
    n = 300
    config = config_of("".join("watchfor /lit%03dx/\n  echo\n" % i for i in range(n)))
    out = io.StringIO()
    sentinel = bs.Sentinel(config, bs.ActionRunner(out), bs.Counters(), clock=lambda: 0.0)
    sentinel.process_text("".join("filler line %d\n" % i for i in range(3000)))    # the sample the plan is built on
    rng = random.Random(1)
    for _ in range(12):
        lines = [" ".join("lit%03dx" % j for j in rng.sample(range(n), n // 2)) for _ in range(300)]
        sentinel.process_text("".join(line + "\n" for line in lines))
    memo = sentinel.plan.memo
    assert 0 < len(memo) <= 1024
    own = {id(d) for d in sentinel.plan.dispatch}
    assert all(id(step) in own for steps in memo.values() for step in steps)
    assert len(out.getvalue().splitlines()) == 12 * 300        # each line echoed once, by its first rule
