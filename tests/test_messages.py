"""Message text: sanitizing, X's weighted length, splitting, defanging, digests."""

import re
import time
import unicodedata

import pytest
from hypothesis import example, given, settings, strategies as st

import birdsentinel as bs
from birdsentinel import defang, digest_text, has_url, message_parts, sanitize, split_message, tweet_weight

MARK = re.compile(r" \((\d+)/(\d+)\)$")
BIDI = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def no_ws(s):
    return "".join(c for c in s if not c.isspace())


def bodies(parts):
    """The parts without their ' (i/n)' markers; checks the markers."""
    out = []
    for i, p in enumerate(parts, 1):
        m = MARK.search(p)
        assert m, p
        assert (int(m.group(1)), int(m.group(2))) == (i, len(parts)), p
        out.append(p[:m.start()])
    return out


# -- sanitize ---------------------------------------------------------------------

@pytest.mark.parametrize("raw,clean", [
    ("\x1b[31mred\x1b[0m text", "red text"),
    ("\x1b[1;38;5;196mbold\x1b[m", "bold"),
    ("\x1b[2J\x1b[Hcleared", "cleared"),
    ("\x1b[?25lhidden cursor", "hidden cursor"),
    ("a\x1b]0;pwned title\x07b", "ab"),
    ("a\x1b]2;pwned title\x1b\\b", "ab"),
    ("\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\", "click"),
    ("x\x1bPdevice control\x1b\\y", "xy"),
    ("nul\x00byte", "nulbyte"),
    ("bell\x07 and backspace\x08", "bell and backspace"),
    ("forged\nSecond: line\r\n", "forgedSecond: line"),
    ("c1\x85\x9b31m\x9d", "c131m"),
    ("del\x7f", "del"),
    ("tab\tseparated\tfields", "tab separated fields"),
    ("user=\u202etxt.exe", "user=txt.exe"),
    ("\u2066isolate\u2069 \u200fmark\u200e", "isolate mark"),
    ("plain ASCII, caf\u00e9, \u65e5\u672c, \U0001F600", "plain ASCII, caf\u00e9, \u65e5\u672c, \U0001F600"),
])
def test_sanitize(raw, clean):
    assert sanitize(raw) == clean


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(max_codepoint=0xA0), st.sampled_from(list(BIDI + "[];?")),
                                  st.characters()), max_size=80))
def test_sanitize_leaves_no_control_escape_or_bidi(text):
    out = sanitize(text)
    assert "\x1b" not in out
    assert not any(unicodedata.category(c) == "Cc" for c in out), repr(out)
    assert not any(c in BIDI for c in out)
    assert sanitize(out) == out


# -- tweet_weight ----------------------------------------------------------------------

@pytest.mark.parametrize("text,weight", [
    ("", 0),
    ("abc", 3),
    ("a" * 280, 280),
    ("Failed password for root", 24),
    ("\u65e5\u672c\u8a9e", 6),                    # CJK: 2 each
    ("\ud55c\uad6d\uc5b4", 6),                    # Hangul: 2 each
    ("\u3053\u3093\u306b\u3061\u306f", 10),       # Hiragana
    ("caf\u00e9", 4),
    ("e\u0301", 1),                               # NFC: e + combining acute is one character
    ("cafe\u0301", 4),
    ("\u2018quoted\u2019", 8),                    # typographic quotes are light
    # a possible link ('.' then a letter) adds 19: X counts it 23, and it is at least 'a.co'
    ("https://example.com/" + "a" * 200, 220 + 19),
    ("http://x.co", 11 + 19),
    ("see https://example.com/path?q=1 now", 36 + 19),
    ("two https://a.example/x and https://b.example/" + "y" * 300, 346 + 2 * 19),
    ("http://10.0.0.12:8080/x", 23),              # X links no IP address
    ("v1.2.3 at 12.5%", 15),
])
def test_tweet_weight(text, weight):
    assert tweet_weight(text) == weight


@pytest.mark.parametrize("emoji", ["\U0001F600", "\U0001F525", "\u2764\ufe0f", "\U0001F44D\U0001F3FD",
                                   "\U0001F468\u200d\U0001F469\u200d\U0001F467"])
def test_tweet_weight_emoji_counts_at_least_two(emoji):
    assert tweet_weight(emoji) >= 2
    assert tweet_weight("ok " + emoji) == 3 + tweet_weight(emoji)


def test_tweet_weight_nfc_and_nfd_agree():
    nfd = unicodedata.normalize("NFD", "R\u00e9sum\u00e9 \u00e0 Z\u00fcrich, \u00c5ngstr\u00f6m")
    assert nfd != unicodedata.normalize("NFC", nfd)
    assert tweet_weight(nfd) == tweet_weight(unicodedata.normalize("NFC", nfd)) == len(unicodedata.normalize("NFC", nfd))


def test_short_possible_link_counts_at_least_a_link():
    # X counts a link 23 whatever its length; 'a.co' alone must never count less
    assert tweet_weight("a.co") == 23
    assert tweet_weight("a.co,b.co") == 9 + 2 * 19 >= 23 + 1 + 23


# -- split_message ----------------------------------------------------------------------

def test_short_text_is_one_part_without_marker():
    assert split_message("hello world", 280, len) == ["hello world"]
    assert split_message("x" * 280, 280, len) == ["x" * 280]


def test_split_parts_fit_and_are_numbered():
    text = " ".join("word%d" % i for i in range(400))
    parts = split_message(text, 100, len)
    assert len(parts) > 1
    assert all(len(p) <= 100 for p in parts)
    assert no_ws("".join(bodies(parts))) == no_ws(text)
    assert " ".join(bodies(parts)).split() == text.split()              # cuts fall between words


def test_split_without_spaces_cuts_inside():
    text = "x" * 1000
    parts = split_message(text, 100, len)
    assert all(len(p) <= 100 for p in parts)
    assert "".join(bodies(parts)) == text


def test_split_many_parts_widens_the_marker():
    text = "y" * 5000
    parts = split_message(text, 40, len)
    assert len(parts) >= 100
    assert all(len(p) <= 40 for p in parts)
    assert "".join(bodies(parts)) == text


def test_split_weighted_cjk():
    text = "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8" * 60
    parts = split_message(text, 280, tweet_weight)
    assert len(parts) >= 2
    assert all(tweet_weight(p) <= 280 for p in parts)
    assert "".join(bodies(parts)) == text


def test_split_never_sends_an_empty_part():
    parts = split_message(" " * 300 + "disk full on /var", 280, len)
    assert all(b.strip() for b in (bodies(parts) if len(parts) > 1 else parts)), parts


TOKENS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["https://", "example", ".com", ".io", "/path?q=1", " ", "  ", "\n", "\t",
                     "\u65e5\u672c", "\U0001F600", "\U0001F44D\U0001F3FD", "e\u0301", "www.", "a" * 40, "x.co"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(TOKENS, max_size=80).map("".join), st.integers(20, 300), st.sampled_from(["len", "tweet"]))
def test_split_message_properties(text, limit, weigher):
    weigh = len if weigher == "len" else tweet_weight
    parts = split_message(text, limit, weigh)
    assert parts
    assert all(weigh(p) <= limit for p in parts), [(p, weigh(p)) for p in parts]
    if weigh(text) <= limit:
        assert parts == [text]
        return
    assert no_ws("".join(bodies(parts))) == no_ws(text)


# -- defang / has_url ----------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "GET https://evil.example.com/x?y=1 from 198.51.100.7",
    "HTTP://EVIL.EXAMPLE.COM/",
    "ftp://files.example.net/pub",
    "visit www.example.org today",
    "mx for example.io failed",
    "from user@mail.example.com",
    "a.b.example.co.uk/path and evil.ru",
    "https://example.com:8443/a.b.io",
    "(see evil.com)",
])
def test_defang_leaves_no_url(text):
    assert has_url(text)
    out = defang(text)
    assert not has_url(out), out
    assert tweet_weight(out) == len(unicodedata.normalize("NFC", out))


def test_defang_keeps_plain_text_and_marks_domains():
    assert defang("disk full on /var") == "disk full on /var"
    assert defang("10.0.0.1 port 22") == "10.0.0.1 port 22"
    out = defang("see https://evil.example.com/x")
    assert "evil[.]example[.]com" in out
    assert "https://" not in out


DEFANG_TOKENS = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["https://", "http://", "ftp://", "HTTP://", "example", ".com", ".io", ".uk", ".",
                     "/p", "?q=1", "#f", ":8080", " ", "www.", "a-b", "@", ":", "//", "1.2.3.4"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(DEFANG_TOKENS, max_size=30).map("".join))
@example("db.example.com:5432.io")
def test_defang_property_no_url_left(text):
    assert not has_url(defang(text))


# -- digest_text -------------------------------------------------------------------------

def stamp(t):
    return time.strftime("%H:%M:%S", time.localtime(t))


def test_digest_header_and_lines():
    since = 1_700_000_000
    held = ["[web1] disk full", "[web1] cpu hot", "[db1] oom"]
    text, used = digest_text("dm", held, since)
    assert text == "+3 alerts since %s:\n[web1] disk full\n[web1] cpu hot\n[db1] oom" % stamp(since)
    assert used == 3


def test_digest_tweet_fits_and_counts_all_held():
    held = ["[web1] alert number %d happened" % i for i in range(37)]
    text, used = digest_text("tweet", held, 1_700_000_125)
    head, *lines = text.split("\n")
    assert head == "+37 alerts since %s:" % stamp(1_700_000_125)
    assert tweet_weight(text) <= 280
    assert 1 <= used < 37
    assert lines == held[:used]


def test_digest_always_carries_a_line_even_a_long_one():
    held = ["[web1] " + "z" * 1000, "[web1] short"]
    text, used = digest_text("tweet", held, 1_700_000_000)
    assert used == 1
    assert tweet_weight(text) <= 280
    head, first = text.split("\n", 1)
    assert head == "+2 alerts since %s:" % stamp(1_700_000_000)
    assert first.startswith("[web1] zzz")


def test_digest_dm_long_line():
    text, used = digest_text("dm", ["q" * 50000], 0)
    assert used == 1
    assert len(text) <= bs.DM_MAX_CHARS
    assert text.split("\n", 1)[1].startswith("q" * 100)


LINE = st.lists(TOKENS, min_size=1, max_size=40).map("".join).filter(lambda s: s.strip())


@settings(max_examples=150, deadline=None)
@given(st.lists(LINE, min_size=1, max_size=30), st.sampled_from(["dm", "tweet"]),
       st.integers(0, 2_000_000_000), st.one_of(st.none(), st.integers(80, 400)))
def test_digest_properties(held, kind, since, limit):
    text, used = digest_text(kind, held, since, limit)
    weigh = len if kind == "dm" else tweet_weight
    assert weigh(text) <= (limit or (bs.DM_MAX_CHARS if kind == "dm" else bs.TWEET_MAX_WEIGHT))
    assert 1 <= used <= len(held)
    assert re.match(r"^\+%d alerts? since \d\d:\d\d:\d\d:\n" % len(held), text)


# -- message_parts -------------------------------------------------------------------------

def test_dm_parts_limit_is_10000_characters():
    assert message_parts("dm", "x" * 10000) == ["x" * 10000]
    parts = message_parts("dm", "x" * 10001)
    assert len(parts) == 2
    assert all(len(p) <= 10000 for p in parts)
    assert "".join(bodies(parts)) == "x" * 10001


def test_dm_parts_are_counted_in_characters_not_weight():
    text = "\u65e5" * 9000                            # weight 18000, but 9000 characters
    assert message_parts("dm", text) == [text]


def test_tweet_parts_weighted_280():
    assert message_parts("tweet", "a" * 280) == ["a" * 280]
    cjk = "\u65e5" * 141                              # 282 weighted, 141 characters
    parts = message_parts("tweet", cjk)
    assert len(parts) == 2
    assert all(tweet_weight(p) <= 280 for p in parts)
    assert "".join(bodies(parts)) == cjk


def test_tweet_parts_with_urls():
    text = " ".join("https://example.com/%s" % ("p" * 150) for _ in range(20))   # 3000+ characters
    parts = message_parts("tweet", text)
    assert len(parts) >= 2
    assert all(tweet_weight(p) <= 280 for p in parts)
    assert no_ws("".join(bodies(parts))) == no_ws(text)


def test_format_alert_sanitizes():
    assert bs.format_alert("web1", "\x1b[31mFailed\x1b[0m\tlogin\n") == "[web1] Failed login"
