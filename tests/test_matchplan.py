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
