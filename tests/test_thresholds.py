"""swatch 3.2.4's threshold and throttle semantics (shared/docs/swatch-notes.md
section 5), as pure functions and end to end through Sentinel with a fake clock."""

import collections
import io
import json
import threading

import pytest

import birdsentinel as bs
from birdsentinel import (ActionRunner, Sentinel, Threshold, Throttle, Template, parse_config,
                          threshold_fires, throttle_fires, throttle_key)
from fakes import FakeClock

NO_KEY = Template.parse("")


def fired(th, times):
    """Indexes of the events (at the given processing times) that act."""
    bucket, out = None, []
    for i, t in enumerate(times):
        act, bucket = threshold_fires(bucket, t, th)
        if act:
            out.append(i)
    return out


# -- threshold_fires against the measured sequences -----------------------------

@pytest.mark.parametrize("typ,expected", [
    ("limit", [0, 1, 5, 6, 10, 11]),
    ("threshold", [1, 3, 6, 8, 11]),
    ("both", [1, 6, 11]),
])
def test_measured_sequences_count2_seconds5(typ, expected):
    th = Threshold(typ, 2, 5, NO_KEY)
    assert fired(th, [1_700_000_000 + i for i in range(12)]) == expected


def test_bucket_is_not_mutated_in_place():
    th = Threshold("limit", 2, 5, NO_KEY)
    bucket = [100, 1]
    act, new = threshold_fires(bucket, 101, th)
    assert act and new == [100, 2]
    assert bucket == [100, 1]


def test_classic_limit_count1_fires_once_per_30s():
    th = Threshold("limit", 1, 30, NO_KEY)
    assert fired(th, [5000 + i for i in range(90)]) == [0, 30, 60]


def test_classic_limit_burst_then_quiet():
    th = Threshold("limit", 1, 30, NO_KEY)
    times = [5000] * 50 + [5029, 5030, 5030, 5100]
    assert fired(th, times) == [0, 51, 53]


def test_window_is_fixed_not_sliding():
    th = Threshold("limit", 1, 10, NO_KEY)
    # a steady event every 3 s never extends the window: it still reopens every 10 s
    assert fired(th, [0, 3, 6, 9, 12, 15, 18, 21, 24]) == [0, 4, 8]


def test_threshold_partial_count_is_lost_at_window_end():
    th = Threshold("threshold", 3, 5, NO_KEY)
    # two events, then the window expires: counting restarts at 1
    assert fired(th, [0, 1, 10, 11, 12]) == [4]


def test_both_acts_once_per_window_on_the_nth_event():
    th = Threshold("both", 3, 60, NO_KEY)
    assert fired(th, list(range(0, 20))) == [2]
    assert fired(th, [0, 1, 2, 3, 4, 60, 61, 62]) == [2, 7]


@pytest.mark.parametrize("typ", ["limit", "threshold", "both"])
def test_clock_going_backwards_does_not_freeze_the_window(typ):
    th = Threshold(typ, 1, 30, NO_KEY)
    act, bucket = threshold_fires(None, 1_000_000, th)
    assert act
    # the clock is set back an hour: the old window must not suppress for an hour
    act, bucket = threshold_fires(bucket, 1_000_000 - 3600, th)
    assert act
    assert bucket[0] == 1_000_000 - 3600
    if typ == "limit":
        act, bucket = threshold_fires(bucket, 1_000_000 - 3599, th)
        assert not act                                     # a new window, anchored at the new time
        act, bucket = threshold_fires(bucket, 1_000_000 - 3600 + 30, th)
        assert act


def test_clock_backwards_limit_count2_sequence():
    th = Threshold("limit", 2, 5, NO_KEY)
    assert fired(th, [100, 101, 102, 50, 51, 52, 55]) == [0, 1, 3, 4, 6]


# -- throttle -------------------------------------------------------------------------

def throttled(th, times):
    rec, out = None, []
    for i, t in enumerate(times):
        act, suffix, rec = throttle_fires(rec, t, th)
        if act:
            out.append((i, suffix))
    return out


def test_throttle_delay5_measured():
    th = Throttle(5.0, None)
    assert throttled(th, [1000.0 + i for i in range(12)]) == [(0, ""), (6, " (seen 7 times)")]


def test_throttle_counts_from_the_last_report():
    th = Throttle(5.0, None)
    got = throttled(th, [1000.0 + i for i in range(13)])
    assert got == [(0, ""), (6, " (seen 7 times)"), (12, " (seen 6 times)")]


def test_throttle_nothing_on_expiry_summary_rides_on_next_event():
    th = Throttle(60.0, None)
    assert throttled(th, [0.0, 1.0, 2.0, 500.0]) == [(0, ""), (3, " (seen 4 times)")]


def test_throttle_clock_backwards_does_not_freeze():
    th = Throttle(300.0, None)
    got = throttled(th, [10_000.0, 10_001.0, 6_400.0, 6_401.0])
    assert [i for i, _ in got] == [0, 2]


def test_throttle_threshold_every_nth_event():
    th = Throttle(0.0, None, 3)
    got = throttled(th, [100.0 + i for i in range(12)])
    assert got == [(i, " (threshold 3 exceeded)") for i in (2, 5, 8, 11)]


def test_throttle_threshold_at_most_once_per_delay():
    th = Throttle(5.0, None, 2)
    got = throttled(th, [100.0 + i for i in range(12)])
    indexes = [i for i, _ in got]
    assert indexes[0] == 1
    assert all(s == " (threshold 2 exceeded)" for _, s in got)
    assert all(b - a > 5 for a, b in zip(indexes, indexes[1:]))
    assert len(indexes) >= 2


def test_throttle_key_default_strips_syslog_stamp():
    th = Throttle(5.0, None)
    a = throttle_key(th, "Nov 26 15:47:01 web1 sshd[812]: Failed password for root", None)
    b = throttle_key(th, "Dec  3 01:02:03 web1 sshd[812]: Failed password for root", None)
    c = throttle_key(th, "Nov 26 15:47:01 web1 sshd[813]: Failed password for root", None)
    assert a == b == "web1 sshd[812]: Failed password for root"
    assert c != a


def test_throttle_key_default_keeps_lines_without_stamp():
    th = Throttle(5.0, None)
    assert throttle_key(th, "2024-01-01T00:00:00 x", None) == "2024-01-01T00:00:00 x"


def test_throttle_key_template_and_literal(tmp_path):
    cfg = parse_config(str(tmp_path / "t.conf"),
                       "watchfor /from (\\S+)/\n  echo\n  throttle 1:00,key=$1\n"
                       "watchfor /other/\n  echo\n  throttle 1:00,key=fixed\n")
    th = cfg.rules[0].throttle
    line = "Nov 26 15:47:01 h sshd: fail from 10.0.0.9 port 1"
    assert throttle_key(th, line, cfg.rules[0].pattern.match(line)) == "10.0.0.9"
    th2 = cfg.rules[1].throttle
    assert throttle_key(th2, "other a", cfg.rules[1].pattern.match("other a")) == "fixed"
    assert throttle_key(th2, "other b", cfg.rules[1].pattern.match("other b")) == "fixed"


# -- sweep, expiry, bounded keys -----------------------------------------------------

def test_sweep_drops_expired_and_rotates_live_entries():
    table = collections.OrderedDict([("old", [0, 1]), ("live", [1000, 1]), ("old2", [1, 1])])
    bs.sweep(table, lambda rec: rec[0] < 500, steps=2)
    assert list(table) == ["old2", "live"]               # old dropped, live moved to the end
    bs.sweep(table, lambda rec: rec[0] < 500, steps=2)
    assert list(table) == ["live"]


def test_sweep_never_drops_a_live_entry():
    table = collections.OrderedDict(("k%d" % i, [1000 + i, 1]) for i in range(100))
    for _ in range(500):
        bs.sweep(table, lambda rec: False)
    assert len(table) == 100


def test_expiry_rules():
    th = Threshold("threshold", 5, 60, Template.parse("$1"))
    assert bs.threshold_expired([0, 3], 60, th) and not bs.threshold_expired([0, 3], 59, th)
    assert bs.threshold_expired([100, 3], 50, th)                   # the clock went back
    plain = Throttle(60.0, None, 0)
    assert not bs.throttle_expired([0, 1], 60 + 86400, plain) and bs.throttle_expired([0, 1], 61 + 86400, plain)
    counting = Throttle(60.0, None, 3)
    assert not bs.throttle_expired([0, 2], 10 ** 6, counting)       # its count still decides
    assert bs.throttle_expired([0, 0], 61, counting)


def test_bounded_key():
    assert bs.bounded_key("x" * bs.MAX_KEY) == "x" * bs.MAX_KEY
    long_a, long_b = bs.bounded_key("y" * 70000 + "a"), bs.bounded_key("y" * 70000 + "b")
    assert len(long_a) == len(long_b) == bs.MAX_KEY and long_a != long_b


# -- end to end through Sentinel ------------------------------------------------------

class Rig:
    def __init__(self, tmp_path, text, state=None, clock=None):
        path = tmp_path / "swatch.conf"
        path.write_text(text)
        self.config = parse_config(str(path))
        self.out = io.StringIO()
        self.clock = clock or FakeClock()
        self.state = state if state is not None else bs.Counters()
        self.runner = ActionRunner(self.out, dry_run=False)
        self.sentinel = Sentinel(self.config, self.runner, self.state, clock=self.clock)

    def feed(self, *lines, step=0.0):
        for line in lines:
            self.sentinel.process_entry(line)
            self.clock.t += step

    def lines(self):
        return self.out.getvalue().splitlines()


def test_track_by_keys_buckets_separately(tmp_path):
    rig = Rig(tmp_path, "watchfor /Failed password for (\\S+)/\n  echo\n"
                        "  threshold track_by=$1,type=limit,count=1,seconds=60\n")
    rig.feed("Failed password for root", "Failed password for bob",
             "Failed password for root", "Failed password for alice", "Failed password for bob", step=1)
    assert rig.lines() == ["Failed password for root", "Failed password for bob",
                           "Failed password for alice"]
    rig.clock.t += 60
    rig.feed("Failed password for bob")
    assert rig.lines()[-1] == "Failed password for bob"
    assert len(rig.lines()) == 4


def test_classic_config_one_bucket_for_all_lines(tmp_path):
    rig = Rig(tmp_path, "watchfor /bird_alert/\n  echo\n  threshold type=limit,count=1,seconds=30\n")
    rig.feed("bird_alert disk", "bird_alert cpu", "bird_alert net", step=5)
    assert rig.lines() == ["bird_alert disk"]
    rig.clock.t += 30
    rig.feed("bird_alert cpu")
    assert rig.lines() == ["bird_alert disk", "bird_alert cpu"]


@pytest.mark.parametrize("typ,expected", [
    ("limit", [0, 1, 5, 6, 10, 11]),
    ("threshold", [1, 3, 6, 8, 11]),
    ("both", [1, 6, 11]),
])
def test_measured_sequences_end_to_end(tmp_path, typ, expected):
    rig = Rig(tmp_path, "watchfor /ev (\\d+)/\n  echo\n  threshold type=%s,count=2,seconds=5\n" % typ,
              clock=FakeClock(1_700_000_000.25))
    rig.feed(*["ev %d" % i for i in range(12)], step=1.0)
    assert rig.lines() == ["ev %d" % i for i in expected]


def test_throttle_end_to_end_message_suffix(tmp_path):
    rig = Rig(tmp_path, "watchfor /disk full/\n  echo\n  throttle 0:0:5\n")
    rig.feed(*["Nov 26 15:47:%02d db1 kernel: disk full" % i for i in range(12)], step=1.0)
    assert rig.lines() == ["Nov 26 15:47:00 db1 kernel: disk full",
                           "Nov 26 15:47:06 db1 kernel: disk full (seen 7 times)"]


def test_first_match_wins(tmp_path):
    rig = Rig(tmp_path, "watchfor /error/\n  echo message=first $_\n"
                        "watchfor /error disk/\n  echo message=second $_\n")
    rig.feed("error disk", "error net")
    assert rig.lines() == ["first error disk", "first error net"]


def test_continue_lets_later_blocks_match(tmp_path):
    rig = Rig(tmp_path, "watchfor /error/\n  echo message=A $_\n  continue\n"
                        "watchfor /disk/\n  echo message=B $_\n"
                        "watchfor /error/\n  echo message=C $_\n")
    rig.feed("error disk", "error net", "disk ok")
    assert rig.lines() == ["A error disk", "B error disk",
                           "A error net", "C error net",
                           "B disk ok"]


def test_ignore_drops_the_line_for_later_blocks_only(tmp_path):
    rig = Rig(tmp_path, "watchfor /sshd/\n  echo message=early $_\n"
                        "ignore /CRON/\n"
                        "watchfor /session/\n  echo message=late $_\n")
    rig.feed("sshd CRON session opened", "CRON session opened", "su session opened")
    assert rig.lines() == ["early sshd CRON session opened", "late su session opened"]


def test_ignored_lines_do_not_count_for_thresholds(tmp_path):
    rig = Rig(tmp_path, "ignore /test/\nwatchfor /alert/\n  echo\n  threshold type=both,count=2,seconds=60\n")
    rig.feed("alert test", "alert test", "alert one", "alert two", step=1)
    assert rig.lines() == ["alert two"]


def test_each_block_has_its_own_buckets(tmp_path):
    """swatch keys a bucket by (block, track_by): two blocks with the same
    pattern and track_by (a common 'continue' layout) count separately."""
    rig = Rig(tmp_path, "watchfor /fail from (\\S+)/\n  echo message=A $1\n"
                        "  threshold track_by=$1,type=limit,count=1,seconds=60\n  continue\n"
                        "watchfor /fail from (\\S+)/\n  echo message=B $1\n"
                        "  threshold track_by=$1,type=limit,count=1,seconds=60\n")
    rig.feed("fail from 192.0.2.1", "fail from 192.0.2.1", step=1)
    assert rig.lines() == ["A 192.0.2.1", "B 192.0.2.1"]


def test_each_block_has_its_own_throttle(tmp_path):
    rig = Rig(tmp_path, "watchfor /disk full/\n  echo message=A $_\n  throttle 1:00\n  continue\n"
                        "watchfor /disk full/\n  echo message=B $_\n  throttle 1:00\n")
    rig.feed("disk full", "disk full", step=1)
    assert rig.lines() == ["A disk full", "B disk full"]


def test_thresholds_survive_a_restart(tmp_path):
    text = ("watchfor /Failed password for (\\S+)/\n  echo\n"
            "  threshold track_by=$1,type=limit,count=1,seconds=300\n")
    clock = FakeClock()
    first = Rig(tmp_path, text, clock=clock)
    first.feed("Failed password for root", "Failed password for bob", step=1)
    assert len(first.lines()) == 2
    saved = bs.state_fields(bs.Counters, json.loads(json.dumps(bs.state_object(first.state))))     # as the file keeps it
    clock.t += 100                                              # restart, still inside the window
    second = Rig(tmp_path, text, state=saved, clock=clock)
    second.feed("Failed password for root", "Failed password for bob", "Failed password for eve")
    assert second.lines() == ["Failed password for eve"]
    clock.t += 300
    second.feed("Failed password for root")
    assert second.lines() == ["Failed password for eve", "Failed password for root"]


def test_throttle_survives_a_restart(tmp_path):
    text = "watchfor /disk full/\n  echo\n  throttle 10:00\n"
    clock = FakeClock()
    first = Rig(tmp_path, text, clock=clock)
    first.feed("disk full", "disk full", step=1)
    saved = bs.state_fields(bs.Counters, json.loads(json.dumps(bs.state_object(first.state))))
    clock.t += 60
    second = Rig(tmp_path, text, state=saved, clock=clock)
    second.feed("disk full")
    assert second.lines() == []
    clock.t += 600
    second.feed("disk full")
    assert second.lines() == ["disk full (seen 4 times)"]


def test_pruning_keeps_open_windows_of_other_rules(tmp_path):
    """A long-window rule's open bucket must survive when a short-window
    rule floods the shared table with keys that have all expired."""
    text = ("watchfor /breach/\n  echo\n  threshold type=limit,count=1,seconds=3600\n"
            "watchfor /scan from (\\d+)/\n  threshold track_by=$1,type=limit,count=1,seconds=5\n")
    rig = Rig(tmp_path, text)
    rig.feed("breach detected")
    assert rig.lines() == ["breach detected"]
    rig.clock.t += 10
    rig.feed(*["scan from %d" % i for i in range(bs.MAX_TABLE - 1)])
    rig.clock.t += 60                                           # every scan bucket has expired
    rig.feed("scan from %d" % bs.MAX_TABLE)
    assert sum(len(t) for t in rig.state.thresholds.values()) <= bs.MAX_TABLE + 1
    rig.clock.t += 60
    rig.feed("breach detected")                                 # 130 s into a 3600 s window
    assert rig.lines() == ["breach detected"]


def test_threshold_table_stays_bounded(tmp_path):
    rig = Rig(tmp_path, "watchfor /scan from (\\d+)/\n  threshold track_by=$1,type=limit,count=1,seconds=5\n")
    rig.feed(*["scan from %d" % i for i in range(bs.MAX_TABLE + 200)], step=0.01)
    (table,) = rig.state.thresholds.values()
    assert len(table) < bs.MAX_TABLE // 10          # expired keys are swept as new ones come


def test_quit_stops_processing(tmp_path):
    rig = Rig(tmp_path, "watchfor /stop/\n  echo\n  quit\nwatchfor /./\n  echo\n")
    rig.feed("before")
    rig.feed("stop now")
    assert rig.sentinel.quit is True
    assert rig.lines() == ["before", "stop now"]


def test_process_text_agrees_with_process_line(tmp_path):
    text = ("ignore /noise/\n"
            "watchfor /Failed password for (\\S+)/\n  echo\n  continue\n"
            "watchfor /root/i\n  echo message=ROOT $_\n"
            "watchfor /disk/ && !/ok/\n  echo\n")
    lines = ["Failed password for root", "noise Failed password for root", "disk full", "disk ok",
             "nothing", "ROOT login", "Failed password for bob", "x"]
    one = Rig(tmp_path, text)
    one.feed(*lines)
    two = Rig(tmp_path, text)
    two.sentinel.process_text("".join(l + "\n" for l in lines))
    assert two.lines() == one.lines()
    assert one.lines() == ["Failed password for root", "ROOT Failed password for root", "disk full",
                           "ROOT ROOT login", "Failed password for bob"]
