"""X's weighted length, URL detection and defanging, checked against an oracle.

The oracle is the PyPI package twitter-text-parser (module twitter_text), a
port of X's own twitter-text v3 (emoji parsing on, as X counts) that agrees
with the official conformance files in ../shared/corpus/twitter-text.  It is
test-only, like oauthlib for signatures: birdsentinel keeps its own small
counter, which must be an UPPER bound of the oracle's (a post X counts over
280 is refused), and its defang() must leave nothing the oracle would link
(a linked post costs $0.20 instead of $0.015).
"""

import itertools
import os
import random
import sys
import unicodedata

import pytest
import twitter_text
import yaml

import birdsentinel as bs
from fakes import print_figures

LIMIT = 280
FIGURES = {}


@pytest.fixture(scope="module", autouse=True)
def _print_figures(request):
    yield
    print_figures(request, FIGURES)


def x_len(text):
    return twitter_text.parse_tweet(text).weightedLength


def corpus_tests(corpus_dir, name):
    with open(os.path.join(corpus_dir, "twitter-text", name), encoding="utf-8") as fh:
        return yaml.safe_load(fh)["tests"]


def check_posts(parts, defanged, problems):
    """Every post must be valid for X, <= 280 by X, never under-counted by us,
    priced as a URL post when X links something, link-free when defanged."""
    slack = 0
    for p in parts:
        r, urls, ours = twitter_text.parse_tweet(p), twitter_text.extract_urls(p), bs.tweet_weight(p)
        if r.weightedLength > LIMIT:
            problems.setdefault("over_280", []).append((r.weightedLength, p))
        elif not r.valid:                                   # an invalid character (U+FEFF, U+FFFE, U+FFFF)
            problems.setdefault("invalid_chars_for_x", []).append(p)
        if ours < r.weightedLength:
            problems.setdefault("undercounted", []).append((ours, r.weightedLength, p))
        if urls and bs.message_price("tweet", p) != pytest.approx(0.20):
            problems.setdefault("url_post_underpriced", []).append((urls, p))
        if defanged and urls:
            problems.setdefault("linked_after_defang", []).append((urls, p))
        slack = max(slack, ours - r.weightedLength)
    return slack


def assert_no_problems(problems):
    found = ["%s: %d, e.g. %r" % (k, len(v), v[0]) for k, v in problems.items() if v]
    assert not found, "\n".join(found)


# -- 1. the official conformance cases -------------------------------------------

WEIGHTED = ("WeightedTweetsCounterTest", "WeightedTweetsWithDiscountedEmojiCounterTest",
            "UnicodeDirectionalMarkerCounterTest")


def test_weight_is_an_upper_bound_on_conformance_cases(corpus_dir):
    tests = corpus_tests(corpus_dir, "validate.yml")
    cases = [(g, c["description"], c["text"], c["expected"]["weightedLength"]) for g in WEIGHTED for c in tests[g]]
    # the oracle itself: X's expected values where emoji parsing is on (the first group's are for it off)
    assert [d for g, d, t, want in cases if g != WEIGHTED[0] and x_len(t) != want] == []
    texts = dict((t, d) for g, d, t, _ in cases)          # the emoji group repeats the first group's texts
    differ = [(d, bs.tweet_weight(t), x_len(t)) for t, d in texts.items() if bs.tweet_weight(t) != x_len(t)]
    FIGURES["conformance_weighted_cases"] = len(cases)
    FIGURES["conformance_ours_differs (description, ours, oracle)"] = differ
    assert [c for c in differ if c[1] < c[2]] == [], "tweet_weight below X's count"


def url_cases(corpus_dir):
    """(text, whether X links something) for every URL case of both files."""
    ext, val = corpus_tests(corpus_dir, "extract.yml"), corpus_tests(corpus_dir, "validate.yml")
    out = []
    for g in ("urls", "urls_with_indices", "urls_with_directional_markers", "tco_urls_with_params"):
        out += [(c["text"], bool(c["expected"])) for c in ext[g]]
    for g in ("urls", "urls_without_protocol"):          # expected: the text is one valid URL
        out += [(c["text"], bool(c["expected"])) for c in val[g]]
    out += [(c["text"], False) for g in WEIGHTED for c in val[g]]
    return [(t, linked or bool(twitter_text.extract_urls(t))) for t, linked in out]


def test_url_detection_and_defang_on_conformance_cases(corpus_dir):
    cases = url_cases(corpus_dir)
    missed = [t for t, linked in cases if linked and not bs.has_url(t)]
    underpriced = [t for t, linked in cases if linked and bs.message_price("tweet", t) != pytest.approx(0.20)]
    still_linked = [(t, bs.defang(t), twitter_text.extract_urls(bs.defang(t))) for t, _ in cases
                    if twitter_text.extract_urls(bs.defang(t))]
    FIGURES["conformance_url_cases"] = len(cases)
    FIGURES["conformance_url_cases_linked"] = sum(linked for _, linked in cases)
    assert missed == [], "has_url misses URLs X links"
    assert underpriced == [], "URL posts priced as plain posts"
    assert still_linked == [], "X still links these after defang (text, defanged, urls)"
    assert all(bs.message_price("dm", t) == pytest.approx(0.015) for t, _ in cases)


# -- 2. seeded fuzz of syslog-style alert lines ----------------------------------

HEADERS = ["Dec  1 03:00:01 host systemd[1]: ", "Dec 12 23:59:59 db-2 backup[2211]: ", "kernel: [ 12.345678] ",
           "<30>1 2023-12-01T03:00:01Z h app - - ", "Jan  9 07:07:07 web nginx[901]: "]
FRAGMENTS = {
    "words": ["error", "failed", "Dependency", "for", "user", "root", "from", "port", "22", "pid=4242", "uid=0",
              "-", ":", ";", "Traceback", "line", "12,", "in", "e.g.", "i.e.", "...", "v1.2.3", "a.b.c.d", "3.14"],
    "units": ["multi-user.target", "graphical.target", "ssh.service", "foo.socket", "network-online.target",
              "systemd-resolved.service", "dev-sda1.device", "tmp.mount"],
    "files": ["db.zip", "logs.zip", "backup.tar.gz", "install.run", "app.run(", "/var/log/app.log", "main.py",
              "index.html", "README.md", "core.dump"],
    "domains": ["example." + t for t in ("com", "io", "museum", "bar", "ninja", "zip", "run", "target", "co.uk")]
               + ["t.co", "EXAMPLE.COM", "sub-1.example.org", "a.b.c.example.net", "www.x.org."],
    "idn": ["münchen.de", "пример.рф", "例え.テスト", "xn--p1ai", "пример.xn--p1ai", "xn--mnchen-3ya.de", "ουτοπία.δπθ.gr"],
    "glued": ["中文example.com中文", "日本語evil.zip。", "ログwww.example.jp/パス", "한국어naver.com입니다", "«example.org»"],
    "urls": ["http://example.com/path?q=1&r=2", "https://sub.example.io/a/b#frag",
             "ftp://files.example.org/pub/x.tar.gz", "HTTPS://WWW.EXAMPLE.COM/INDEX.HTML",
             "http://10.0.0.12:8080/x?y=1", "http://[fe80::1]:80/",
             "http://localhost:9090/metrics", "https://t.co/AbCdEf1234", "http://user:pw@example.com:8080/login",
             "http://en.wikipedia.org/wiki/Foo_(bar)", "https://example.com/a,b,c.json", "hTtP://x.io"],
    "local": ["localhost", "localhost:8080", "127.0.0.1", "::1", "10.0.0.12:8080", "203.0.113.5", "[::1]:53"],
    "paths": ['"/srv/www/index.html"', "('/tmp/a.b', 'c.d')", "(see example.com/x)", "path=/a,b,c/d.e",
              "'quoted.name'", "[x.y]", "{k.v}", '"a.b","c.d"'],
    "emoji": ["🔥", "👍🏽", "👨‍👩‍👧‍👦", "🇩🇪", "🇯🇵", "1️⃣", "#️⃣", "🏳️‍🌈", "❤️", "©", "™", "👩🏾‍💻", "☃"],
    "marks": ["\u200e", "\u200f", "\u202e", "\u202a", "\u2066", "\u2069", "\u061c"],
    "invisible": ["\u200b", "\ufeff", "\u200d", "\u2060", "\u00ad", "\ufffe", "\uffff", "\u3164", "\U000e0041",
                  "\u115f", "\uffa0", "\x1b[31m", "\x1b]0;t\x07", "\x07", "\x85", "\t", "\r\n"],
    "cjk": ["中文日志错误", "ログイン失敗", "데이터베이스 오류", "ａｂｃ全角", "の", "。"],
}
SEPARATORS = [" "] * 6 + [", ", "", "/", ".", "=", "(", ")", '"', "'", "\t", "…"]
RUNS = ["A", "の", "🔥", ".", "a.", "x.zip ", "\u200b", "👨‍👩‍👧", " "]
SEEDS = (1, 2, 3, 4)
LINES_PER_SEED = 300                     # x 2 (defang on and off) = 2,400 posted alerts


def gen_line(rng):
    length = rng.choice([rng.randint(1, 60), rng.randint(60, 260), rng.randint(250, 300), rng.randint(300, 1500)])
    kinds = ["words"] + rng.sample(sorted(FRAGMENTS), rng.randint(1, 4))
    out = [rng.choice(HEADERS)] if rng.random() < 0.6 else []
    while sum(map(len, out)) < length:
        if rng.random() < 0.03:
            out.append(rng.choice(RUNS) * rng.randint(2, 400))
        else:
            out.append(rng.choice(FRAGMENTS[rng.choice(kinds)]))
        out.append(rng.choice(SEPARATORS))
    return "".join(out)[:length]


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzzed_alerts_post_within_280_by_x(seed):
    rng, seqs = random.Random(seed), itertools.count(1)
    problems, slack, nparts = {}, 0, 0
    for _ in range(LINES_PER_SEED):
        text = bs.format_alert("host1", gen_line(rng))
        for defanged in (True, False):
            seq = next(seqs) + 10 ** rng.randint(0, 9)
            parts = bs.entry_parts({"kind": "tweet", "text": text, "seq": seq, "defang": defanged})
            assert parts and all(p.endswith(" [#%d]" % seq) for p in parts), (text, parts)
            nparts += len(parts)
            slack = max(slack, check_posts(parts, defanged, problems))
    for k in ("over_280", "invalid_chars_for_x", "undercounted", "url_post_underpriced", "linked_after_defang"):
        FIGURES["fuzz_seed%d_%s" % (seed, k)] = len(problems.get(k, []))
    FIGURES["fuzz_seed%d_lines" % seed] = LINES_PER_SEED
    FIGURES["fuzz_seed%d_parts" % seed] = nparts
    FIGURES["fuzz_seed%d_worst_slack" % seed] = slack
    assert_no_problems(problems)


# -- 3. the four real lines from the issue ---------------------------------------

def near_270(head, items, sep=" "):
    """head + as many of items (cycled) as keep the line at most 272 chars."""
    words = []
    for item in itertools.cycle(items):
        if len(head + sep.join(words + [item])) > 272:
            return head + sep.join(words)
        words.append(item)


ISSUE_LINES = {
    "systemd": near_270("Dec  1 03:00:01 host systemd[1]: Dependency failed for ",
                        ["multi-user.target", "graphical.target", "network-online.target", "remote-fs.target",
                         "sshd.service", "cron.service", "rsyslog.service", "docker.service", "nginx.service",
                         "postfix.service", "nfs-client.target", "timers.target", "ssh.service"], ", "),
    "traceback": near_270('Dec  1 03:00:02 host app[812]: Traceback (most recent call last): File "/srv/app/main.py", '
                          'line 12, in <module> app.run(host="0.0.0.0", port=8080) File '
                          '"/usr/lib/python3/dist-packages/flask/app.py", line 990, in run OSError: [Errno 98] '
                          'Address already in use: ', ["app.run(", "srv.run()", "wsgi.py"]),
    "backup": near_270("Dec  1 03:00:03 host backup[2211]: uploaded ",
                       ["db.zip", "logs.zip", "media.zip", "home.zip", "etc.zip", "www.zip", "mail.zip",
                        "conf.zip", "keys.zip", "wiki.zip", "git.zip", "jenkins.zip"]),
    "nginx": near_270('Dec  1 03:00:04 host nginx[901]: [error] 901#901: *1 connect() failed (111: Connection '
                      'refused) while connecting to upstream, client: 203.0.113.5, server: example.com, request: '
                      '"GET /x HTTP/1.1", upstream: "http://10.0.0.12:8080/x?y=1", host: "www.example.com" ',
                      ["retry", "1"]),
}


@pytest.mark.parametrize("defanged", [True, False], ids=["defang", "no-defang"])
@pytest.mark.parametrize("name", sorted(ISSUE_LINES))
def test_issue_lines_post_within_280_by_x(name, defanged):
    line = ISSUE_LINES[name]
    assert 255 <= len(line) <= 272, len(line)
    parts = bs.entry_parts({"kind": "tweet", "text": bs.format_alert("host", line), "seq": 7, "defang": defanged})
    FIGURES["issue_%s_%s (line chars, X weight of line, parts' X weights)" % (name, defanged)] = \
        [len(line), x_len(line), [x_len(p) for p in parts]]
    problems = {}
    check_posts(parts, defanged, problems)
    assert_no_problems(problems)


# -- 4. digests ------------------------------------------------------------------

HELD = ["sshd[123]: Failed password for root from 203.0.113.5 port 22 ssh2",
        "systemd[1]: Dependency failed for multi-user.target, graphical.target.",
        "backup[9]: uploaded db.zip logs.zip backup.tar.gz to https://files.example.com/b/",
        'nginx[901]: upstream: "http://10.0.0.12:8080/x?y=1", host: "www.example.com"',
        "app[4]: 中文example.com中文 错误 пример.рф münchen.de 例え.テスト",
        "app[4]: 👨‍👩‍👧‍👦🇩🇪1️⃣ install.run app.run( foo.museum evil.zip"] * 6


def digest_post(held, seq=12345):
    text, used = bs.digest_text("tweet", [bs.defang(line) for line in held], 0.0, LIMIT - 16)
    assert 1 <= used <= len(held)
    return "%s [#%d]" % (text, seq)


def test_digest_post_within_280_and_unlinked():
    rng = random.Random(5)
    helds = [[bs.format_alert("host1", h) for h in HELD], [bs.format_alert("host1", "x" * 1500 + " example.com")]]
    helds += [[bs.format_alert("host1", gen_line(rng)) for _ in range(rng.randint(1, 40))] for _ in range(60)]
    problems = {}
    for held in helds:
        check_posts([digest_post(held)], True, problems)
    FIGURES["digests_checked"] = len(helds)
    assert_no_problems(problems)


# -- 5. sanitize -----------------------------------------------------------------

FILLERS = "\u3164\u115f\u1160\uffa0"


def removable(c):
    cp = ord(c)
    return (unicodedata.category(c) in ("Cf", "Cc") or 0xE0000 <= cp <= 0xE007F
            or c in FILLERS or c in "\ufffe\uffff")


@pytest.mark.parametrize("ch", ["\u200b", "\u200d", "\u2060", "\ufeff", "\u061c", "\u00ad", "\u3164", "\u115f",
                                "\u1160", "\U000e0041", "\u202e", "\u2066"],
                         ids=lambda ch: "U+%04X" % ord(ch))
def test_sanitize_removes_invisible_char(ch):
    assert bs.sanitize("a" + ch + "b") == "ab"


def test_sanitize_fuzz_leaves_no_format_chars():
    fmt = [chr(cp) for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) == "Cf"]
    controls = [chr(cp) for cp in itertools.chain(range(0x20), range(0x7f, 0xa0)) if chr(cp) not in "\t\x1b"]
    keep = list("ab.z09 -:/") + ["é", "中", "の", "🔥", "\ufe0f", "\U0001f3fd", "\u0301", "한"]
    pool = fmt + controls + list(FILLERS) + ["\ufffe", "\uffff"] + keep * 20
    rng, bad = random.Random(6), []
    for _ in range(500):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(1, 60)))
        out = bs.sanitize(s)
        if out != "".join(c for c in s if not removable(c)) or any(removable(c) for c in out):
            bad.append((s, out))
    FIGURES["sanitize_format_chars_in_pool"] = len(fmt)
    assert bad[:5] == []
