"""Clock faults: the wall clock jumps an hour backwards or forwards.

Durations that birdsentinel measures itself (back-off, X's reset, credential
retry) run on the monotonic clock, so a wall jump changes nothing there.
Windows that must survive a restart (thresholds, throttles, the budget) are
in wall time; a backward jump must end a window, never freeze it for the
length of the jump, and a forward jump just ends it.
"""

import io
import random
import threading
import urllib.error
import urllib.parse

import pytest

import birdsentinel as bs
from fakes import T0, FakeClock, FakeOpener

M0 = 7_000.0
HOUR = 3600.0
EPS = 1e-6


# -- thresholds ----------------------------------------------------------------

def th(type_, count, seconds):
    return bs.Threshold(type_, count, seconds, bs.Template.parse(""))


def run_threshold(t, times):
    bucket, out = None, []
    for now in times:
        fire, bucket = bs.threshold_fires(bucket, int(now), t)
        out.append(fire)
    return out, bucket


@pytest.mark.parametrize("type_,count,expect_after_jump", [
    ("limit", 2, [True, True, False, False]),         # a new window: 2 more act, then suppression again
    ("threshold", 2, [False, True, False, True]),     # counting restarts, still every 2nd
    ("both", 2, [False, True, False, False]),         # acts once at the 2nd of the new window
])
def test_threshold_backward_jump_ends_the_window_and_limits_still_work(type_, count, expect_after_jump):
    t = th(type_, count, 60)
    before = [T0, T0 + 1, T0 + 2, T0 + 3]
    fired, bucket = run_threshold(t, before)
    assert bucket[0] == int(T0)
    # the clock goes back an hour: the next events are judged in a new window
    # starting at the new time, not suppressed for an hour
    after = [T0 - HOUR + k for k in (4, 5, 6, 7)]
    b = bucket
    out = []
    for now in after:
        fire, b = bs.threshold_fires(b, int(now), t)
        out.append(fire)
    assert out == expect_after_jump
    assert b[0] == int(T0 - HOUR + 4)
    # and that window ends 60 s later by the (new) clock
    fire, b2 = bs.threshold_fires(b, int(T0 - HOUR + 4 + 60), t)
    assert b2[0] == int(T0 - HOUR + 4 + 60)


@pytest.mark.parametrize("type_", ["limit", "threshold", "both"])
def test_threshold_forward_jump_just_ends_the_window(type_):
    t = th(type_, 2, 60)
    fired, bucket = run_threshold(t, [T0, T0 + 1, T0 + 2])
    jumped = T0 + 2 + HOUR
    fire, b = bs.threshold_fires(bucket, int(jumped), t)
    assert b == [int(jumped), 1]                      # a fresh window with one event
    assert fire == (type_ == "limit")


def make_sentinel(conf_text, clock):
    cfg = bs.parse_config("clock.conf", conf_text)
    out = io.StringIO()
    runner = bs.ActionRunner(out, hostname="h", clock=clock)
    return bs.Sentinel(cfg, runner, bs.Counters(), clock=clock), out


def echoed(out):
    return out.getvalue().splitlines()


def test_sentinel_threshold_suppression_is_not_frozen_by_a_backward_jump():
    c = FakeClock(T0, M0)
    s, out = make_sentinel("watchfor /fail (\\S+)/\n  threshold track_by=$1,type=limit,count=2,seconds=600\n  echo\n",
                           c.now)
    for i in range(4):                                  # 2 act, 2 suppressed
        s.process_text("fail bob %d\n" % i)
        c.advance(1)
    assert echoed(out) == ["fail bob 0", "fail bob 1"]
    c.jump(-HOUR)
    for i in range(4, 8):                               # a new window by the new clock
        s.process_text("fail bob %d\n" % i)
        c.advance(1)
    assert echoed(out) == ["fail bob 0", "fail bob 1", "fail bob 4", "fail bob 5"]
    c.jump(2 * HOUR)                                    # forward: that window just ends
    s.process_text("fail bob 8\n")
    assert echoed(out)[-1] == "fail bob 8"


# -- throttles -----------------------------------------------------------------

def test_throttle_backward_jump_acts_then_throttles_again():
    t = bs.Throttle(600.0, None, 0)
    fire, suffix, rec = bs.throttle_fires(None, T0, t)
    assert fire and suffix == ""
    for k in (10, 20):
        fire, suffix, rec = bs.throttle_fires(rec, T0 + k, t)
        assert not fire
    now = T0 + 30 - HOUR                                 # back an hour
    fire, suffix, rec = bs.throttle_fires(rec, now, t)
    assert fire and suffix.startswith(" (seen ")       # not silenced for an hour and ten minutes
    fire, _, rec2 = bs.throttle_fires(rec, now + 10, t)  # and the throttle still works after it
    assert not fire


def test_throttle_forward_jump_ends_the_delay():
    t = bs.Throttle(600.0, None, 0)
    _, _, rec = bs.throttle_fires(None, T0, t)
    _, _, rec = bs.throttle_fires(rec, T0 + 5, t)
    fire, suffix, rec = bs.throttle_fires(rec, T0 + 5 + HOUR, t)
    assert fire and suffix.startswith(" (seen ")


def test_throttle_with_threshold_backward_jump():
    t = bs.Throttle(600.0, None, 3)
    rec = None
    fires = []
    for k in range(6):
        fire, _, rec = bs.throttle_fires(rec, T0 + k, t)
        fires.append(fire)
    assert fires == [False, False, True, False, False, False]   # at most once per delay
    now = T0 + 6 - HOUR
    fires = []
    for k in range(3):
        fire, _, rec = bs.throttle_fires(rec, now + k, t)
        fires.append(fire)
    assert True in fires                                         # acts again within the new delay


def test_sentinel_throttle_with_wall_jumps():
    c = FakeClock(T0, M0)
    s, out = make_sentinel("watchfor /disk full/\n  throttle 10:00\n  echo\n", c.now)
    s.process_text("disk full\n")
    c.advance(60)
    s.process_text("disk full\n")
    assert echoed(out) == ["disk full"]
    c.jump(-HOUR)
    s.process_text("disk full\n")
    assert len(echoed(out)) == 2 and echoed(out)[1].startswith("disk full (seen ")
    c.advance(60)
    s.process_text("disk full\n")                        # throttled again by the new clock
    assert len(echoed(out)) == 2
    c.jump(HOUR)
    s.process_text("disk full\n")
    assert len(echoed(out)) == 3 and echoed(out)[-1].startswith("disk full (seen ")


# -- delivery: a fake X behind the opener ---------------------------------------

def rig(tmp_path, budget=None, seed=5):
    c = FakeClock(T0, M0)
    op = FakeOpener(clock=c)                  # 201 when its script is empty
    outbox = bs.Outbox(str(tmp_path / "ob"), str(tmp_path / "dead"), fsync=False)
    outbox.load()
    state = bs.DeliveryState()
    client = bs.XClient(bs.Credentials("ck", "cs", "tok", "ts"), "https://api.x.com", opener=op, clock=c.now)
    b = dict(bs.DEFAULT_BUDGET)
    b.update(budget or {})
    d = bs.Deliverer(outbox, client, state, b, clock=c.now,
                     rng=random.Random(seed), monotonic=c.monotonic)
    return c, op, outbox, state, d


def backoff_run(tmp_path, jumps):
    """Six network failures then success; `jumps[i]` moves the wall clock
    after the i-th failure and an extra step() is made right after it."""
    c, op, outbox, state, d = rig(tmp_path)
    op.script = [urllib.error.URLError("down")] * 6
    outbox.add("dm", "1001", "m0", c.now())
    delays = []
    for i in range(6):
        n = len(op.calls)
        w = d.step()
        assert len(op.calls) == n + 1
        delays.append(w)
        if jumps:
            c.jump(jumps[i])
            again = d.step()                     # e.g. woken by a new alert right after the jump
            assert len(op.calls) == n + 1, "a wall jump let a request through the back-off"
            assert again == pytest.approx(w)
            due = c.mono - 0.0 + w                      # the back-off ends here (monotonic)
            c.advance(w / 2)
            assert d.step() == pytest.approx(w / 2)
            assert len(op.calls) == n + 1
            c.advance(due - c.mono)
        else:
            c.advance(w)
    assert d.step() == 0.0 and len(outbox) == 0
    return delays, [x["mono"] - M0 for x in op.calls]


def test_backoff_ignores_wall_clock_jumps(tmp_path):
    plain, plain_mono = backoff_run(tmp_path / "a", None)
    (tmp_path / "b").mkdir()
    jumped, jumped_mono = backoff_run(tmp_path / "b", [-HOUR, HOUR, -2 * HOUR, 3 * HOUR, -HOUR, -HOUR])
    assert jumped == pytest.approx(plain)               # same seed, same back-off, whatever the wall did
    assert jumped_mono == pytest.approx(plain_mono)      # and the requests at the same monotonic times


def test_auth_retry_ignores_wall_clock_jumps(tmp_path):
    c, op, outbox, state, d = rig(tmp_path)
    op.script = [(401, {"title": "Unauthorized", "detail": "Unauthorized", "status": 401}, {})]
    outbox.add("dm", "1001", "m0", c.now())
    d.step()
    assert len(op.calls) == 1
    for j in (-HOUR, 2 * HOUR):
        c.jump(j)
        assert d.step() == pytest.approx(bs.AUTH_RETRY)
        assert len(op.calls) == 1
    c.advance(bs.AUTH_RETRY)
    d.step()
    assert len(op.calls) == 2 and len(outbox) == 0


# -- X's rate-limit reset is kept on the monotonic clock -----------------------

@pytest.mark.parametrize("jump", [-HOUR, HOUR, -24 * HOUR, 24 * HOUR])
def test_rate_limit_wait_is_unchanged_by_a_wall_jump(tmp_path, jump):
    c, op, outbox, state, d = rig(tmp_path)
    reset = int(c.wall) + 900
    op.script = [(429, {"title": "Too Many Requests", "status": 429},
                  {"x-rate-limit-limit": "15", "x-rate-limit-remaining": "0", "x-rate-limit-reset": str(reset)})]
    outbox.add("dm", "1001", "m0", c.now())
    outbox.add("dm", "1001", "m1", c.now())
    d.step()
    assert len(op.calls) == 1
    wait0 = reset - c.wall
    c.jump(jump)
    c.advance(10)
    w = d.step()
    assert len(op.calls) == 1                          # a forward jump does not cut the wait short
    assert w == pytest.approx(wait0 - 10)              # a backward one does not stretch it
    c.advance(w - 1)
    d.step()
    assert len(op.calls) == 1
    c.advance(1)
    assert d.step() == 0.0
    assert len(op.calls) == 2 and op.calls[1]["text"] == "m0"


def test_24_hour_reset_is_kept_on_the_monotonic_clock(tmp_path):
    c, op, outbox, state, d = rig(tmp_path)
    reset = int(c.wall) + 5 * 3600
    op.script = [(429, {"status": 429}, {"x-user-limit-24hour-limit": "1440",
                                         "x-user-limit-24hour-remaining": "0",
                                         "x-user-limit-24hour-reset": str(reset)})]
    outbox.add("dm", "1001", "m0", c.now())
    d.step()
    c.jump(6 * 3600)                                   # the wall is now past the reset; X's is not
    w = d.step()
    assert len(op.calls) == 1 and w == pytest.approx(reset - T0)
    c.advance(w)
    d.step()
    assert len(op.calls) == 2 and len(outbox) == 0


# -- the local budget ------------------------------------------------------------

BUDGET3 = {"dm_per_15m": 3, "dm_per_day": 1000, "usd_per_day": None}


def test_budget_allowance_counts_future_stamped_sends_as_now():
    sent = [T0, T0 + 1, T0 + 2]
    now = T0 + 2 - HOUR                                 # the clock went back an hour
    allowed, free_at = bs.budget_allowance(BUDGET3, "dm", sent, [], now, 0.015)
    assert allowed == 0
    assert free_at - now <= 900 + EPS                   # at most one window, not 75 minutes


def test_budget_allowance_forward_jump_ends_the_window():
    sent = [T0, T0 + 1, T0 + 2]
    allowed, free_at = bs.budget_allowance(BUDGET3, "dm", sent, [], T0 + 2 + HOUR, 0.015)
    assert allowed == 3


def test_usd_budget_future_stamped_spend_does_not_stall_for_the_jump():
    budget = {"dm_per_15m": None, "dm_per_day": None, "usd_per_day": 0.03}
    spend = [[T0, 0.015], [T0 + 1, 0.015]]
    now = T0 + 1 - HOUR
    allowed, free_at = bs.budget_allowance(budget, "dm", [T0, T0 + 1], spend, now, 0.015)
    assert allowed == 0
    assert free_at - now <= 86400 + EPS


def test_deliverer_backward_jump_after_a_full_window_does_not_stall_for_an_hour(tmp_path):
    c, op, outbox, state, d = rig(tmp_path, budget=BUDGET3)
    for i in range(3):
        outbox.add("dm", "1001", "m%d" % i, c.now())
    for _ in range(3):
        assert d.step() == 0.0
        c.advance(1)
    assert len(op.calls) == 3
    c.jump(-HOUR)                                       # ntp steps the clock back an hour
    jumped_at = c.wall
    outbox.add("dm", "1001", "late", c.now())
    for _ in range(50):
        if len(outbox) == 0:
            break
        w = d.step()
        c.advance(max(w, 0.0))
    assert len(outbox) == 0 and op.calls[-1]["text"] == "late"
    waited = op.calls[-1]["t"] - jumped_at
    assert waited <= 900 + 5, "the budget held a message %.0f s after a backward clock jump" % waited
