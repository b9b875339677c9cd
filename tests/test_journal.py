"""The systemd-journal source (issue 12; contract in notes/spec12.md), with the
real components: journals written by the real systemd-journal-remote and read
by the real journalctl through birdsentinel's --journal-dir, alerts delivered
to the loopback fake X server (tests/fakex.py, which verifies every OAuth
signature).  No journald runs; journalctl is never faked.

* pure helpers: field_text, entry_line, journal_gap;
* delivery across SIGTERM and SIGKILL restarts (none lost, none twice;
  <= 1 duplicate per SIGKILL), SIGTERM on a quiet journal within 1 s;
* a real vacuum while stopped (same seqnum id: the count), a replaced
  journal (new seqnum id: "gap of unknown size") -- how the vacuum is made
  with the real tools is told in tests/journalfix.py's docstring;
* a SIGKILLed journalctl child is restarted, nothing is lost;
* a multi-line MESSAGE is one line and one alert; a forged SYSLOG_IDENTIFIER
  does not pass a rule bound to the trusted _SYSTEMD_UNIT;
* --journal-match with combined fields and a saved cursor skips nothing
  (systemd#30336: journalctl 252 does skip here with --after-cursor);
* the origin host in the alert, ${FIELD} in message=;
* --check warns about a field term on a file source, not on a journal.

Every wait is bounded; every process started (and every journalctl child
of a daemon) is killed in teardown.
"""

import calendar
import io
import os
import random
import re
import signal
import socket
import threading
import time

import pytest

import birdsentinel as bs
from fakes import wait_until
from fakex import FakeX
from journalfix import JDaemon, Journal, alive, expected_line, parse_cursor

LOCAL = socket.gethostname().split(".")[0]
BUDGET = "budget dm_per_15m=100000,dm_per_day=1000000,tweet_per_15m=100000,tweet_per_day=1000000\n"
ALICE_CONF = BUDGET + "watchfor /ALERT/\n    dm @alice\n"
ALERT_RE = re.compile(r"\bALERT (\d+)\b")
VACUUM_NOTICE = "birdsentinel: %d journal entries were vacuumed while birdsentinel was stopped"


# ---- fixtures -----------------------------------------------------------------

@pytest.fixture
def fx():
    f = FakeX(users={"alice": "1001", "bob": "1002"}).start()
    f.rate_limits["dm"] = 10 ** 9            # the fake's own windows are not under test
    f.rate_limits["tweets"] = 10 ** 9
    yield f
    f.stop()


@pytest.fixture
def tw(tmp_path, fx):
    d = str(tmp_path / "twitter")
    fx.write_creds(d)
    return d


@pytest.fixture
def journal(tmp_path):
    return Journal(tmp_path / "remote")


@pytest.fixture
def daemon(script, env, fx, tw, tmp_path, journal, secret_scan):
    made = []

    def make(conf_text=ALICE_CONF):
        d = JDaemon(script, env, fx, tw, tmp_path, journal, conf_text)
        made.append(d)
        return d
    yield make
    for d in made:
        d.cleanup()
        secret_scan.file("journal daemon log", d.logfile)
        for i in range(len(d.procs)):
            secret_scan.file("journal daemon stderr", os.path.join(d.dir, "stderr.%d" % i))


def texts_to(fx, uid):
    with fx._lock:
        return [d["text"] for d in fx.dms if d["to"] == uid]


def alert_counts(texts):
    counts = {}
    for t in texts:
        m = ALERT_RE.search(t)
        if m:
            counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
    return counts


def wait_alerts(fx, numbers, timeout=20, uid="1001"):
    want = set(numbers)
    return fx.wait_for(lambda: want <= set(alert_counts([d["text"] for d in fx.dms if d["to"] == uid])), timeout)


@pytest.fixture
def utc():
    """TZ=UTC for in-process time.localtime (entry_line), restored after."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def us(y, mo, d, h, mi, s):
    return str(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 1000000 + 123456)


# ---- 1. pure helpers ----------------------------------------------------------------

def test_field_text():
    assert bs.field_text("Accepted password") == "Accepted password"
    assert bs.field_text([104, 105]) == "hi"                               # bytes as a JSON list of numbers
    assert bs.field_text([0x62, 0x61, 0x64, 0x20, 0xff, 0x21]) == "bad \ufffd!"   # decoded with replacement
    assert bs.field_text(list("é\n".encode("utf-8"))) == "é\n"
    assert bs.field_text([]) == ""
    multi = bs.field_text(["first value", "second value"])           # a field given more than once
    assert isinstance(multi, str) and "first value" in multi
    multi_bytes = bs.field_text([[0x61, 0xff], "b"])
    assert isinstance(multi_bytes, str) and "a\ufffd" in multi_bytes


def test_entry_line_format_and_space_padded_day(utc):
    f = {"__REALTIME_TIMESTAMP": us(2026, 12, 1, 9, 5, 7), "_HOSTNAME": "web7", "SYSLOG_IDENTIFIER": "sshd",
         "SYSLOG_PID": "812", "_PID": "999", "_COMM": "sshd-session",
         "MESSAGE": "Accepted password for alice from 10.0.0.5 port 5555 ssh2"}
    assert bs.entry_line(f) == "Dec  1 09:05:07 web7 sshd[812]: Accepted password for alice from 10.0.0.5 port 5555 ssh2"
    f["__REALTIME_TIMESTAMP"] = us(2027, 3, 11, 23, 59, 58)
    assert bs.entry_line(f).startswith("Mar 11 23:59:58 web7 sshd[812]: ")


def test_entry_line_ident_pid_and_host_fallbacks(utc):
    base = {"__REALTIME_TIMESTAMP": us(2026, 1, 2, 3, 4, 5), "_HOSTNAME": "db3", "MESSAGE": "m"}
    assert bs.entry_line(dict(base, SYSLOG_IDENTIFIER="cron", _COMM="crond", _PID="77")) == "Jan  2 03:04:05 db3 cron[77]: m"
    assert bs.entry_line(dict(base, _COMM="crond", _PID="77")) == "Jan  2 03:04:05 db3 crond[77]: m"
    assert bs.entry_line(dict(base, _PID="77")) == "Jan  2 03:04:05 db3 -[77]: m"
    assert bs.entry_line(dict(base, SYSLOG_IDENTIFIER="kernel")) == "Jan  2 03:04:05 db3 kernel: m"   # no pid: no [PID]
    assert bs.entry_line(dict(base)) == "Jan  2 03:04:05 db3 -: m"
    nohost = dict(base, SYSLOG_IDENTIFIER="app", SYSLOG_PID="1")
    del nohost["_HOSTNAME"]
    host = bs.entry_line(nohost).split(" ")[4]
    assert host in (socket.gethostname(), LOCAL), bs.entry_line(nohost)


def test_entry_line_multiline_and_byte_message(utc):
    base = {"__REALTIME_TIMESTAMP": us(2026, 12, 1, 9, 5, 7), "_HOSTNAME": "web7", "SYSLOG_IDENTIFIER": "app",
            "SYSLOG_PID": "5"}
    got = bs.entry_line(dict(base, MESSAGE="Traceback:\n  File x\r\nValueError: boom\n\n"))
    assert got == "Dec  1 09:05:07 web7 app[5]: Traceback: \u23ce   File x \u23ce ValueError: boom"
    assert "\n" not in got and "\r" not in got
    # a byte-array MESSAGE (what journalctl's JSON gives for invalid UTF-8), through field_text
    raw = [ord(c) for c in "ALERT "] + [0xff] + [ord(c) for c in " two\nlines"]
    assert bs.entry_line(dict(base, MESSAGE=bs.field_text(raw))) == \
        "Dec  1 09:05:07 web7 app[5]: ALERT \ufffd two \u23ce lines"


def test_journal_gap_hex_seqnums():
    s = "s=7e4ab06d830d48da8d33a0c261a02697"
    tail = ";b=0123456789abcdef0123456789abcdef;m=1f;t=66190dd982bf4;x=354b29b199f1bee6"
    saved = s + ";i=ff" + tail
    assert bs.journal_gap(saved, s + ";i=10f" + tail) == VACUUM_NOTICE % 15      # 0x10f - 0xff - 1
    assert bs.journal_gap(s + ";i=1f" + tail, s + ";i=23" + tail) == VACUUM_NOTICE % 3
    assert bs.journal_gap(saved, s + ";i=100" + tail) == ""                     # the next entry: no gap
    assert bs.journal_gap(saved, saved) == ""                                   # the saved entry itself
    other = bs.journal_gap(saved, "s=3ca5f233d81042edbc26021039a5d8eb;i=1" + tail)
    assert "gap of unknown size" in other
    assert not re.search(r"\d+ journal entries were vacuumed", other), other


def test_fixture_makes_a_real_same_seqnum_gap(tmp_path):
    """The vacuum tests' premise, with the real binaries only: journal-remote rotates to a
    file with the same seqnum id, journalctl --vacuum-files removes the archived one."""
    j = Journal(tmp_path / "j")
    j.say("one", "two")
    j.fill_field_table()
    j.say("three")
    assert len(j.files()) == 2 and any("@" in f for f in j.files())
    before = [parse_cursor(c) for c in j.cursors()]
    assert [c["i"] for c in before] == [1, 2, 3, 4] and len({c["s"] for c in before}) == 1
    assert j.vacuum_archived() and j.files() == ["x.journal"]
    after = [parse_cursor(c) for c in j.cursors()]
    assert [(c["s"], c["i"]) for c in after] == [(before[0]["s"], 4)]


# ---- 2. delivery across restarts --------------------------------------------------

def test_sigterm_restart_delivers_every_alert_once(daemon, journal, fx):
    journal.say("ALERT 900 written before the very first start")       # a first start begins at the end
    d = daemon()
    d.start()
    d.wait_ready()
    for i in range(1, 4):
        journal.say("ALERT %d disk on fire" % i)
    journal.say("ALERT 4 disk on fire", "nothing to see", "ALERT 5 disk on fire")
    assert wait_alerts(fx, range(1, 6)), d.diag()
    rc, took = d.stop(signal.SIGTERM)
    assert rc == 0, d.diag()
    for i in range(6, 11):                                                # written while stopped
        journal.say("ALERT %d disk on fire" % i)
    d.start()
    journal.say("ALERT 11 disk on fire")
    journal.say("ALERT 12 disk on fire", "ALERT 13 disk on fire")
    assert wait_alerts(fx, range(1, 14)), d.diag()
    rc, _ = d.stop(signal.SIGTERM)
    assert rc == 0, d.diag()
    d.start()                                                             # a restart with nothing new
    assert d.wait_journalctl(), d.diag()
    journal.say("ALERT 14 disk on fire")
    assert wait_alerts(fx, range(1, 15)), d.diag()
    time.sleep(0.5)
    counts = alert_counts(texts_to(fx, "1001"))
    assert counts == {i: 1 for i in range(1, 15)}, counts
    assert d.proc.poll() is None, d.diag()


def test_sigkill_restarts_lose_nothing_at_most_one_duplicate_per_kill(daemon, journal, fx):
    """SIGKILL 6 times while a writer keeps appending alerts: at random moments, and at the
    instant the fake X accepts a DM (before the daemon can record it as sent: that DM is
    sent again, the one duplicate a kill may cost)."""
    rng = random.Random(1212)
    d = daemon()
    d.start()
    d.wait_ready()
    written = []
    writing = threading.Event()
    writing.set()
    errors = []

    def writer():
        wrng = random.Random(1213)
        try:
            while writing.is_set():
                n = len(written) + 1
                if wrng.random() < 0.2:
                    journal.say("ALERT %d part one" % n, "noise %d" % n, "ALERT %d part two" % (n + 1))
                    written.extend([n, n + 1])
                else:
                    journal.say("ALERT %d disk on fire" % n)
                    written.append(n)
                time.sleep(wrng.uniform(0.003, 0.03))
        except Exception as exc:                     # pragma: no cover - reported below
            errors.append(exc)

    armed = []                                       # the run to kill when X accepts the next DM
    fired = []

    def on_event(ev):
        if ev.get("event") == "dm" and armed:
            p = armed.pop()
            try:
                p.send_signal(signal.SIGKILL)
                fired.append(ev["text"])
            except ProcessLookupError:
                pass

    fx.on_event = on_event
    wt = threading.Thread(target=writer, name="journal-writer", daemon=True)
    wt.start()
    ways = ["timed", "at-dm"] * 3
    try:
        for way in ways:
            if way == "at-dm":
                armed.append(d.proc)
                wait_until(lambda: not armed, 3)
                del armed[:]
            else:
                time.sleep(rng.uniform(0.3, 0.8))
            assert d.proc.poll() is None or way == "at-dm", "the daemon exited by itself:\n" + d.diag()
            rc, _ = d.stop(signal.SIGKILL)
            assert rc == -signal.SIGKILL, (rc, d.diag())
            time.sleep(rng.uniform(0.0, 0.3))        # alerts written while it is down
            fx.wait_for(lambda: not fx._conns, 5)
            d.start()
        time.sleep(0.5)
    finally:
        writing.clear()
        wt.join(timeout=20)
        fx.on_event = None
    assert not errors, errors
    assert len(written) > 20 and len(fired) >= 2, (len(written), fired)
    assert wait_alerts(fx, written, timeout=30), "missing: %s\n%s" % (
        sorted(set(written) - set(alert_counts(texts_to(fx, "1001")))), d.diag())
    time.sleep(0.5)
    counts = alert_counts(texts_to(fx, "1001"))
    assert set(counts) == set(written)                                     # nothing else, nothing lost
    dups = sum(c - 1 for c in counts.values())
    assert dups <= len(ways), {k: c for k, c in counts.items() if c > 1}
    assert d.proc.poll() is None, d.diag()


def test_sigterm_on_quiet_journal_exits_0_within_1s(daemon, journal, fx):
    d = daemon()
    d.start()
    d.wait_ready()
    kids = d.wait_journalctl()
    assert kids, d.diag()
    time.sleep(1.5)                                                       # quiet: journalctl blocks
    rc, took = d.stop(signal.SIGTERM)
    assert rc == 0, d.diag()
    assert took <= 1.0, "SIGTERM took %.2f s on a quiet journal" % took
    assert wait_until(lambda: not any(alive(k) for k in kids), 2), "journalctl %s outlived the daemon" % kids


# ---- 3. gaps ------------------------------------------------------------------------

def test_vacuum_while_stopped_yields_notice_with_the_count(daemon, journal, fx):
    d = daemon(BUDGET + "watchfor /ALERT/\n    dm @alice\nwatchfor /TWEETME/\n    tweet\n")
    d.start()
    d.wait_ready()
    journal.say("ALERT 1 before the vacuum")
    assert wait_alerts(fx, [1]), d.diag()
    last = journal.cursors()[-1]
    assert d.wait_cursor(last), "saved %s, want %s\n%s" % (d.saved_cursor(), last, d.diag())
    rc, _ = d.stop(signal.SIGTERM)
    assert rc == 0, d.diag()
    saved = parse_cursor(d.saved_cursor())
    # while stopped: three entries (two alerts, one filler that fills the field table) go into
    # a file that journal-remote then archives; the fourth starts the new file (same seqnum id)
    journal.say("ALERT 2 vacuumed", "ALERT 3 vacuumed")
    journal.fill_field_table()
    journal.say("ALERT 4 after the vacuum")
    assert len(journal.files()) == 2, journal.files()
    removed = journal.vacuum_archived()
    assert len(removed) == 1 and "@" in removed[0], removed
    first = parse_cursor(journal.cursors()[0])
    assert first["s"] == saved["s"] and first["i"] == saved["i"] + 4, (saved, first)
    d.start()
    assert fx.wait_for(lambda: any("were vacuumed" in t for t in texts_to(fx, "1001")), 20), d.diag()
    assert wait_alerts(fx, [4]), d.diag()
    notice = [t for t in texts_to(fx, "1001") if "were vacuumed" in t]
    assert len(notice) == 1 and VACUUM_NOTICE % 3 in notice[0], notice
    assert fx.wait_for(lambda: any(VACUUM_NOTICE % 3 in t["text"] for t in fx.tweets), 10), \
        "the notice goes to every destination, the tweet too: %r\n%s" % ([t["text"] for t in fx.tweets], d.diag())
    assert d.log_lines("WARNING", VACUUM_NOTICE % 3), d.diag()
    counts = alert_counts(texts_to(fx, "1001"))
    assert counts == {1: 1, 4: 1}, counts
    # no second notice on a restart that lost nothing
    rc, _ = d.stop(signal.SIGTERM)
    assert rc == 0
    d.start()
    assert d.wait_journalctl(), d.diag()
    journal.say("ALERT 5 later")
    assert wait_alerts(fx, [5]), d.diag()
    time.sleep(0.3)
    assert len([t for t in texts_to(fx, "1001") if "vacuumed" in t or "gap of" in t]) == 1
    assert alert_counts(texts_to(fx, "1001")) == {1: 1, 4: 1, 5: 1}


def test_replaced_journal_is_a_gap_of_unknown_size(daemon, journal, fx):
    d = daemon()
    d.start()
    d.wait_ready()
    journal.say("ALERT 1 in the old journal")
    assert wait_alerts(fx, [1]), d.diag()
    assert d.wait_cursor(journal.cursors()[-1]), d.diag()
    rc, _ = d.stop(signal.SIGTERM)
    assert rc == 0, d.diag()
    saved = parse_cursor(d.saved_cursor())
    # The journal is replaced (whole files removed, a new one written): a new seqnum id.
    journal.remove_all_files()
    journal.say("ALERT 2 in the new journal", "ALERT 3 in the new journal")
    assert {parse_cursor(c)["s"] for c in journal.cursors()} != {saved["s"]}
    d.start()
    assert fx.wait_for(lambda: any("gap of unknown size" in t for t in texts_to(fx, "1001")), 20), d.diag()
    assert wait_alerts(fx, [2, 3]), d.diag()
    time.sleep(0.3)
    assert d.log_lines("WARNING", "gap of unknown size"), d.diag()
    assert alert_counts(texts_to(fx, "1001")) == {1: 1, 2: 1, 3: 1}
    assert len([t for t in texts_to(fx, "1001") if "gap of unknown size" in t]) == 1


# ---- 4. journalctl dies -------------------------------------------------------------

def test_journalctl_sigkill_is_survived(daemon, journal, fx):
    d = daemon()
    d.start()
    d.wait_ready()
    journal.say("ALERT 1 before the kill")
    assert wait_alerts(fx, [1]), d.diag()
    kids = d.wait_journalctl()
    assert len(kids) == 1, kids
    os.kill(kids[0], signal.SIGKILL)
    journal.say("ALERT 2 while journalctl is dead")
    assert wait_until(lambda: d.log_lines("ERROR", "journalctl"), 10), d.diag()
    new = d.wait_journalctl(timeout=10, other_than=kids)
    assert new, "no journalctl started again:\n" + d.diag()
    journal.say("ALERT 3 after the restart")
    assert wait_alerts(fx, [1, 2, 3]), d.diag()
    time.sleep(0.5)
    assert alert_counts(texts_to(fx, "1001")) == {1: 1, 2: 1, 3: 1}
    assert d.proc.poll() is None, d.diag()
    assert len(d.log_lines("ERROR", "journalctl")) == 1, d.log_lines("ERROR")     # said once


# ---- 5. one entry, one line ---------------------------------------------------------

def test_multiline_message_is_one_alert(daemon, journal, fx):
    d = daemon(BUDGET + "watchfor /ALERT/\n    dm @alice\nwatchfor /^second line/\n    dm @bob\n")
    d.start()
    d.wait_ready()
    e1 = journal.entry("ALERT multi\nsecond line\nthird line\n", ident="app", pid="7")
    e2 = journal.entry("ALERT crlf\r\nsecond line", ident="app", pid="8")     # \r: journalctl gives bytes
    journal.append(e1, e2)
    assert fx.wait_for(lambda: len(texts_to(fx, "1001")) >= 2, 20), d.diag()
    time.sleep(0.5)
    want = ["[web7] " + expected_line(e, LOCAL) for e in (e1, e2)]
    assert texts_to(fx, "1001") == want
    assert " \u23ce second line \u23ce third line" in want[0] and want[0].endswith("third line")
    assert texts_to(fx, "1002") == []                 # "second line" never was a line of its own


# ---- 6. trusted fields --------------------------------------------------------------

def test_forged_sshd_ident_does_not_match_unit_rule(daemon, journal, fx):
    d = daemon(BUDGET
               + "watchfor /Accepted password/ && _SYSTEMD_UNIT=~/^ssh\\.service$/\n    dm @alice\n"
               + "watchfor /Accepted password/ && !_SYSTEMD_UNIT=~/^ssh\\.service$/\n    dm @bob\n")
    d.start()
    d.wait_ready()
    # any user can log with SYSLOG_IDENTIFIER=sshd; _SYSTEMD_UNIT is set by journald
    forged = journal.entry("Accepted password for root from 203.0.113.9 port 4242 ssh2", ident="sshd", pid="4242",
                           unit="evil.service", _COMM="python3", _UID="1000")
    real = journal.entry("Accepted password for alice from 10.0.0.5 port 5555 ssh2", ident="sshd", pid="812",
                         unit="ssh.service", _COMM="sshd", _UID="0")
    journal.append(forged, real)
    assert fx.wait_for(lambda: texts_to(fx, "1001") and texts_to(fx, "1002"), 20), d.diag()
    time.sleep(0.5)
    assert texts_to(fx, "1001") == ["[web7] " + expected_line(real, LOCAL)]
    assert texts_to(fx, "1002") == ["[web7] " + expected_line(forged, LOCAL)]
    assert "sshd[4242]: Accepted password for root" in texts_to(fx, "1002")[0]     # the line alone looks real


# ---- 7. --journal-match and the saved cursor (systemd#30336) ------------------------

def test_combined_journal_matches_with_saved_cursor_skip_nothing(daemon, journal, fx):
    matches = ["_SYSTEMD_UNIT=ssh.service", "_SYSTEMD_UNIT=sshd.service", "SYSLOG_IDENTIFIER=sshd"]
    args = [a for m in matches for a in ("--journal-match", m)]
    d = daemon(BUDGET + "watchfor /Accepted/\n    dm @alice\n")
    d.start(*args)
    ssh = {"ident": "sshd", "unit": "ssh.service"}
    d.wait_ready(**ssh)             # boot noise that passes the matches (and no rule)
    e1 = journal.entry("Accepted publickey for a1", **ssh)
    journal.append(e1)
    assert fx.wait_for(lambda: len(texts_to(fx, "1001")) >= 1, 20), d.diag()
    filtered = [journal.entry("Accepted password for cron", ident="CRON", unit="cron.service"),
                journal.entry("Accepted password for evil", ident="sshd", unit="evil.service"),   # one field only
                journal.entry("Accepted password for notsshd", ident="notsshd", unit="ssh.service")]
    journal.append(*filtered)
    last = journal.cursors()[-1]
    assert d.wait_cursor(last), ("the cursor must move past filtered entries (each entry's __CURSOR is the "
                                 "position); saved %s, last %s\n%s" % (d.saved_cursor(), last, d.diag()))
    rc, _ = d.stop(signal.SIGTERM)
    assert rc == 0, d.diag()
    e3 = journal.entry("Accepted password for a3", **ssh)
    e4 = journal.entry("Accepted password for a4", ident="sshd", unit="sshd.service")   # same field: any value
    journal.append(e3, e4)
    # journalctl 252 itself skips e3 here: --after-cursor=<filtered entry> plus these matches
    jc = [e["MESSAGE"] for e in journal.entries("--after-cursor=" + last, *matches)]
    d.start(*args)
    assert fx.wait_for(lambda: len(texts_to(fx, "1001")) >= 3, 20), "%s\njournalctl --after-cursor gives %r" % (
        d.diag(), jc)
    time.sleep(0.5)
    assert texts_to(fx, "1001") == ["[web7] " + expected_line(e, LOCAL) for e in (e1, e3, e4)], jc


# ---- 8. origin host, ${FIELD} -------------------------------------------------------

def test_origin_host_and_field_templates(daemon, journal, fx):
    d = daemon(BUDGET
               + "watchfor /Accepted password/\n"
               + "    dm @alice,message=login on ${_HOSTNAME} via ${_SYSTEMD_UNIT}: $_\n"
               + "watchfor /ALERT/\n    dm @bob\n")
    d.start()
    d.wait_ready()
    a = journal.entry("Accepted password for alice from 10.0.0.5", ident="sshd", pid="812", unit="ssh.service")
    b = journal.entry("Accepted password for bob from 10.0.0.6", ident="sshd", pid="813", host="db3")   # no unit
    c = journal.entry("ALERT disk full on /srv", ident="df", host="db3")
    journal.append(a, b, c)
    assert fx.wait_for(lambda: len(texts_to(fx, "1001")) >= 2 and texts_to(fx, "1002"), 20), d.diag()
    time.sleep(0.3)
    assert texts_to(fx, "1001") == ["[web7] login on web7 via ssh.service: " + expected_line(a, LOCAL),
                                    "[db3] login on db3 via : " + expected_line(b, LOCAL)]
    assert texts_to(fx, "1002") == ["[db3] " + expected_line(c, LOCAL)]
    if LOCAL not in ("web7", "db3"):
        assert all("[%s]" % LOCAL not in t for t in texts_to(fx, "1001") + texts_to(fx, "1002"))


# ---- 9. --check ---------------------------------------------------------------------

def test_check_warns_about_field_term_on_a_file_source(tmp_path, journal):
    conf = tmp_path / "rules.conf"
    conf.write_text("watchfor /bird_alert/\n    dm @alice\n"
                    "watchfor /Accepted password/ && _SYSTEMD_UNIT=~/^ssh\\.service$/\n    dm @alice\n")
    os.chmod(str(conf), 0o644)
    log = tmp_path / "messages"
    log.write_text("")
    sd = tmp_path / "sd"
    sd.mkdir(mode=0o750)
    tw = tmp_path / "twitter"
    FakeX().write_creds(str(tw))
    os.chmod(str(tw), 0o750)
    journal.say("a journal entry")
    common = ["--check", "-c", str(conf), "--script-dir", str(sd), "--twitter-dir", str(tw)]

    out = io.StringIO()
    code = bs.main(common + ["-t", str(log)], env={}, out=out)
    text = out.getvalue()
    warnings = [l for l in text.splitlines() if l.startswith("WARNING:")]
    assert warnings, text
    # it names the rule: its file and line (or its field term)
    assert any(re.search(r"rules\.conf(:| line )3\b", w) or "_SYSTEMD_UNIT" in w for w in warnings), warnings
    assert not any(re.search(r"rules\.conf(:| line )1\b", w) for w in warnings), warnings

    out = io.StringIO()
    code = bs.main(common + ["--journal-dir", journal.dir], env={}, out=out)
    text = out.getvalue()
    assert code == 0, text
    assert [l for l in text.splitlines() if "WARNING" in l] == [], text
