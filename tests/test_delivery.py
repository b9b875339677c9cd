"""Delivery logic with a fake opener and a fake clock: no network, no sleeps.

The fake opener behaves like urllib's: it returns a response object for 2xx
and raises urllib.error.HTTPError for the rest, or raises URLError /
socket.timeout / http.client errors for network trouble.
"""

import http.client
import io
import json
import logging
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse

import pytest

import birdsentinel as bs
from fakex import weighted_length
from fakes import T0, FakeClock, FakeOpener


def problem(status, detail):
    return {"title": "x", "detail": detail, "type": "about:blank", "status": status}


class FakeX(FakeOpener):
    """A scriptable stand-in for X behind the opener callable: POSTs take
    their answers from `script`, GETs from `lookup_script`; the default
    answers like X does, by path."""

    def __init__(self, clock, users=None):
        super().__init__(default=self._default, clock=clock)
        self.users = {"alice": "1001", "bob": "1002"} if users is None else users
        self.lookup_script = []     # same as script, for GETs

    def record(self, req, timeout):
        rec = super().record(req, timeout)
        rec["auth"] = req.get_header("Authorization")
        return rec

    def next_answer(self, rec):
        script = self.lookup_script if rec["method"] == "GET" else self.script
        return script.pop(0) if script else None

    def _default(self, rec):
        p = rec["path"]
        if p == "/2/users/me":
            return 200, {"data": {"id": "999", "username": "bot", "name": "bot"}}, {}
        m = re.match(r"^/2/users/by/username/(.+)$", p)
        if m:
            uid = self.users.get(m.group(1).lower())
            if uid:
                return 200, {"data": {"id": uid, "username": m.group(1), "name": m.group(1)}}, {}
            return 200, {"errors": [{"detail": "Could not find user with username: [%s]." % m.group(1),
                                     "title": "Not Found Error"}]}, {}
        if p.startswith("/2/dm_conversations/with/"):
            return 201, {"data": {"dm_conversation_id": "1-2", "dm_event_id": "3"}}, {}
        if p == "/2/tweets":
            return 201, {"data": {"id": "5", "text": rec["json"]["text"]}}, {}
        return 404, problem(404, "Not Found"), {}

    # views
    def sends(self):
        return [c for c in self.calls if c["method"] == "POST"]

    def dm_texts(self):
        return [c["json"]["text"] for c in self.calls if c["path"].startswith("/2/dm_conversations")]

    def lookups(self):
        return [c for c in self.calls if c["path"].startswith("/2/users/")]


def oauth_params(header):
    assert header.startswith("OAuth ")
    out = {}
    for item in header[6:].split(", "):
        k, _, v = item.partition("=")
        out[urllib.parse.unquote(k)] = urllib.parse.unquote(v.strip('"'))
    return out


CREDS = ("ck", "cs-SECRET", "1-tok", "ts-SECRET")


class Rig:
    def __init__(self, tmp_path, budget=None, users=None, state=None):
        self.clock = FakeClock()
        self.x = FakeX(self.clock, users)
        self.outbox_path = str(tmp_path / "birdsentinel.outbox")
        self.dead_path = str(tmp_path / "birdsentinel.dead")
        self.outbox = bs.Outbox(self.outbox_path, self.dead_path, fsync=False)
        self.outbox.load()
        self.state = state if state is not None else bs.DeliveryState()
        self.client = bs.XClient(bs.Credentials(*CREDS), "https://api.x.com", opener=self.x, clock=self.clock)
        b = dict(bs.DEFAULT_BUDGET)
        b.update(budget or {})
        self.d = bs.Deliverer(self.outbox, self.client, self.state, b,
                              clock=self.clock, rng=random.Random(7), monotonic=self.clock.monotonic)

    def add(self, text, to="1001", kind="dm", **extra):
        return self.outbox.add(kind, to, text, self.clock(), extra or None)

    def run(self, until=None, max_steps=500, horizon=None):
        """Step the deliverer, jumping the clock over every wait it asks for."""
        until = until or (lambda: len(self.outbox) == 0)
        for _ in range(max_steps):
            if until():
                return True
            if horizon is not None and self.clock() >= horizon:
                return False
            w = self.d.step()
            if w > 0:
                if horizon is not None:
                    w = min(w, max(horizon - self.clock(), 0.001))
                self.clock.advance(w)
        return until()

    def reloaded_pending(self):
        ob = bs.Outbox(self.outbox_path, self.dead_path, fsync=False)
        ob.load()
        return [e["text"] for e in ob.entries.values()]

    def dead_records(self):
        try:
            with open(self.dead_path) as fh:
                return [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            return []


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


@pytest.fixture
def logs(caplog):
    """Capture birdsentinel's logger even if main() elsewhere turned propagation off."""
    caplog.set_level(logging.DEBUG, logger="birdsentinel")
    bs.LOG.addHandler(caplog.handler)
    old, old_prop = bs.LOG.level, bs.LOG.propagate
    bs.LOG.setLevel(logging.DEBUG)
    bs.LOG.propagate = False                    # each record once
    yield caplog
    bs.LOG.removeHandler(caplog.handler)
    bs.LOG.setLevel(old)
    bs.LOG.propagate = old_prop


# ---------------------------------------------------------------------------
# XClient
# ---------------------------------------------------------------------------

def test_xclient_signs_each_request_fresh(rig):
    rig.client.nonce = bs.new_nonce
    rig.client.send_dm("1001", "a")
    rig.clock.advance(5)
    rig.client.send_dm("1001", "a")
    p1, p2 = (oauth_params(c["auth"]) for c in rig.x.calls)
    assert p1["oauth_nonce"] != p2["oauth_nonce"]
    assert re.match(r"^[0-9a-f]{32}$", p1["oauth_nonce"])
    assert p1["oauth_timestamp"] == str(int(T0)) and p2["oauth_timestamp"] == str(int(T0 + 5))
    for c, p in zip(rig.x.calls, (p1, p2)):
        want = bs.sign_request("POST", c["url"], *CREDS, nonce=p["oauth_nonce"], timestamp=p["oauth_timestamp"])
        assert c["auth"] == want
    assert rig.x.calls[0]["json"] == {"text": "a"}
    assert rig.x.calls[0]["path"] == "/2/dm_conversations/with/1001/messages"


def test_xclient_error_answers_become_responses(rig):
    rig.x.script = [(403, problem(403, "You cannot send messages to this user."), {"x-rate-limit-remaining": "4"}),
                    (429, {"errors": [{"code": 88, "message": "Rate limit exceeded"}]}, {}),
                    (503, b"<html>\x1b[31mdown</html>", {})]
    r = rig.client.send_dm("1001", "x")
    assert (r.status, r.detail(), r.headers["x-rate-limit-remaining"]) == (
        403, "You cannot send messages to this user.", "4")
    assert rig.client.send_dm("1001", "x").detail() == "Rate limit exceeded"
    r = rig.client.send_dm("1001", "x")
    assert r.status == 503 and "\x1b" not in r.detail()


@pytest.mark.parametrize("exc", [
    socket.timeout("timed out"),
    urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
    urllib.error.URLError(socket.timeout("timed out")),
    http.client.RemoteDisconnected("Remote end closed connection without response"),
    ConnectionResetError(104, "Connection reset by peer"),
])
def test_xclient_network_errors_raise_xnetworkerror(rig, exc):
    rig.x.script = [exc]
    with pytest.raises(bs.XNetworkError) as ei:
        rig.client.send_dm("1001", "x")
    assert "cs-SECRET" not in str(ei.value) and "ts-SECRET" not in str(ei.value)


def test_xclient_garbled_answer_is_a_network_error(rig):
    """urllib lets http.client.BadStatusLine (a garbled or non-HTTP answer, e.g. from a
    middlebox) escape unwrapped; it is a connection failure like a reset, and must
    become XNetworkError so the deliverer backs off (and --send does not crash)."""
    rig.x.script = [http.client.BadStatusLine("garbage here")]
    with pytest.raises(bs.XNetworkError):
        rig.client.send_dm("1001", "x")


def test_credentials_repr_hides_secrets(rig):
    assert "SECRET" not in repr(rig.client.creds) and "SECRET" not in repr(rig.client)


# ---------------------------------------------------------------------------
# classify, rate_limit_until, backoff_delay, budget_allowance
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("status, cls, detail", [
    (200, "ok", ""), (201, "ok", ""), (429, "rate", ""), (401, "auth", ""),
    (402, "credit", "Your enrolled account does not have any credits to fulfill this request."),
    (403, "credit", "Your account has no credits left"),
    (403, "credit", "You currently have access to a subset of X API V2 endpoints"),
    (400, "permanent", ""), (403, "permanent", "You cannot send messages to this user."),
    (404, "permanent", ""), (413, "permanent", ""),
    (408, "retry", ""), (409, "retry", ""), (425, "retry", ""),
    (500, "retry", ""), (502, "retry", ""), (503, "retry", ""), (504, "retry", ""),
])
def test_classify(status, cls, detail):
    body = json.dumps({"title": "t", "detail": detail}).encode() if detail else b""
    assert bs.classify(bs.XResponse(status, {}, body)) == cls


NOW = T0


@pytest.mark.parametrize("headers, limited, expected", [
    ({}, False, None),
    ({}, True, NOW + 60),                                                   # 429 without headers
    ({"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(NOW + 120))}, False, NOW + 120),
    ({"x-rate-limit-remaining": "3", "x-rate-limit-reset": str(int(NOW + 120))}, False, None),
    ({"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(NOW + 500))}, True, NOW + 500),
    ({"x-rate-limit-remaining": "2", "x-rate-limit-reset": str(int(NOW + 500))}, True, NOW + 500),
    ({"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(NOW - 5))}, True, NOW + 60),  # stale reset
    ({"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(NOW - 5))}, False, None),
    ({"x-rate-limit-remaining": "zero", "x-rate-limit-reset": "soon"}, True, NOW + 60),
    # the 24-hour headers win when used up
    ({"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(NOW + 100)),
      "x-user-limit-24hour-remaining": "0", "x-user-limit-24hour-reset": str(int(NOW + 50000))}, True, NOW + 50000),
    ({"x-rate-limit-remaining": "7", "x-rate-limit-reset": str(int(NOW + 100)),
      "x-user-limit-24hour-remaining": "0", "x-user-limit-24hour-reset": str(int(NOW + 40000))}, True, NOW + 40000),
    ({"x-rate-limit-remaining": "7", "x-rate-limit-reset": str(int(NOW + 100)),
      "x-user-limit-24hour-remaining": "0", "x-user-limit-24hour-reset": str(int(NOW + 40000))}, False, NOW + 40000),
    ({"x-app-limit-24hour-remaining": "0", "x-app-limit-24hour-reset": str(int(NOW + 30000))}, False, NOW + 30000),
    ({"x-user-limit-24hour-remaining": "12", "x-user-limit-24hour-reset": str(int(NOW + 40000)),
      "x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(NOW + 100))}, True, NOW + 100),
])
def test_rate_limit_until(headers, limited, expected):
    assert bs.rate_limit_until(headers, NOW, limited) == expected


def test_backoff_delay_grows_to_cap_with_jitter():
    rng = random.Random(1)
    prev_hi = 0
    for attempt in range(12):
        nominal = min(bs.BACKOFF_CAP, bs.BACKOFF_BASE * 2 ** attempt)
        vals = [bs.backoff_delay(attempt, rng) for _ in range(50)]
        assert all(nominal / 2 <= v <= nominal for v in vals)
        assert len(set(vals)) > 40                          # jitter
        assert nominal >= prev_hi
        prev_hi = nominal
    assert bs.backoff_delay(0, rng) <= 2.0
    assert max(bs.backoff_delay(9, rng) for _ in range(100)) <= bs.BACKOFF_CAP
    assert bs.backoff_delay(10 ** 6, rng) <= bs.BACKOFF_CAP   # no overflow
    assert bs.backoff_delay(10 ** 6, random.Random(2)) != bs.backoff_delay(10 ** 6, random.Random(3))


def test_budget_allowance_15_minute_window():
    b = {"dm_per_15m": 3, "dm_per_day": 1440}
    assert bs.budget_allowance(b, "dm", [], [], NOW, 0.015) == (3, NOW)
    assert bs.budget_allowance(b, "dm", [NOW - 100, NOW - 50], [], NOW, 0.015)[0] == 1
    allowed, free_at = bs.budget_allowance(b, "dm", [NOW - 300, NOW - 200, NOW - 100], [], NOW, 0.015)
    assert allowed == 0 and free_at == NOW - 300 + 900
    # sends older than the window do not count
    assert bs.budget_allowance(b, "dm", [NOW - 901, NOW - 950, NOW - 100], [], NOW, 0.015)[0] == 2
    # over the limit (limit lowered): frees when enough leave the window
    allowed, free_at = bs.budget_allowance({"dm_per_15m": 2}, "dm", [NOW - 300, NOW - 200, NOW - 100], [],
                                           NOW, 0.015)
    assert allowed == 0 and free_at == NOW - 200 + 900
    # tweets are counted separately
    assert bs.budget_allowance({"tweet_per_15m": 1}, "tweet", [], [], NOW, 0.015)[0] == 1


def test_budget_allowance_day_window():
    b = {"dm_per_15m": 15, "dm_per_day": 5}
    sent = [NOW - 80000, NOW - 60000, NOW - 40000, NOW - 20000, NOW - 2000]
    allowed, free_at = bs.budget_allowance(b, "dm", sent, [], NOW, 0.015)
    assert allowed == 0 and free_at == NOW - 80000 + 86400
    assert bs.budget_allowance(b, "dm", sent[1:], [], NOW, 0.015)[0] == 1
    assert bs.budget_allowance(b, "dm", [NOW - 86401] + sent[1:], [], NOW, 0.015)[0] == 1


def test_budget_allowance_usd_per_day():
    assert bs.PRICE_USD == {"dm": 0.015, "tweet": 0.015, "tweet_url": 0.20}
    b = {"usd_per_day": 0.05}
    assert bs.budget_allowance(b, "dm", [], [], NOW, 0.015)[0] == 3
    assert bs.budget_allowance(b, "dm", [], [[NOW - 10, 0.015], [NOW - 5, 0.015]], NOW, 0.015)[0] == 1
    allowed, free_at = bs.budget_allowance(b, "dm", [], [[NOW - 10, 0.03], [NOW - 5, 0.015]], NOW, 0.015)
    assert allowed == 0 and free_at > NOW
    assert bs.budget_allowance(b, "dm", [], [[NOW - 86401, 0.05]], NOW, 0.015)[0] == 3   # yesterday's spend
    # float edges: 0.045 / 0.015 and 0.3 / 0.015 are 3 and 20, not 2 and 19
    assert bs.budget_allowance({"usd_per_day": 0.045}, "dm", [], [], NOW, 0.015)[0] == 3
    assert bs.budget_allowance({"usd_per_day": 0.3}, "tweet", [], [], NOW, 0.015)[0] == 20
    # a post with a URL costs $0.20
    assert bs.message_price("tweet", "see https://example.com/x") == 0.20
    assert bs.message_price("tweet", "disk full") == 0.015
    assert bs.message_price("dm", "see https://example.com/x") == 0.015
    assert bs.budget_allowance({"usd_per_day": 0.5}, "tweet", [], [], NOW, 0.20)[0] == 2
    # the money cap is off by default
    assert dict(bs.DEFAULT_BUDGET)["usd_per_day"] is None
    assert bs.budget_allowance(dict(bs.DEFAULT_BUDGET), "dm", [], [], NOW, 0.015)[0] == 15


# ---------------------------------------------------------------------------
# Deliverer over a real Outbox
# ---------------------------------------------------------------------------

def test_drains_in_order(rig):
    for i in range(6):
        rig.add("alert %d" % i)
    assert rig.run()
    assert rig.x.dm_texts() == ["alert %d" % i for i in range(6)]
    assert all(c["path"] == "/2/dm_conversations/with/1001/messages" for c in rig.x.sends())
    assert rig.reloaded_pending() == []
    assert rig.d.step() == 3600.0 and rig.outbox.count("dm") == 0


def test_429_no_request_before_reset(rig, logs):
    reset = int(T0) + 300
    rig.x.script = [(429, problem(429, "Too Many Requests"),
                     {"x-rate-limit-limit": "15", "x-rate-limit-remaining": "0", "x-rate-limit-reset": str(reset)})]
    for i in range(3):
        rig.add("m%d" % i)
    assert rig.run()
    sends = rig.x.sends()
    assert len(sends) == 4
    assert sends[0]["t"] < reset
    assert all(c["t"] >= reset for c in sends[1:]), [c["t"] - T0 for c in sends]
    assert rig.x.dm_texts()[1:] == ["m0", "m1", "m2"]
    assert any("429" in r.getMessage() for r in logs.records)


def test_429_without_headers_waits_a_minute(rig):
    rig.x.script = [(429, problem(429, "Too Many Requests"), {})]
    rig.add("m0")
    assert rig.run()
    s = rig.x.sends()
    assert len(s) == 2 and s[1]["t"] - s[0]["t"] >= 60


def test_success_with_exhausted_window_waits_for_reset(rig):
    """remaining=0 on a 201 (and the 24-hour user limit) is honoured before X has to say 429."""
    reset15 = int(T0) + 200
    reset24 = int(T0) + 40000
    rig.x.script = [(201, {"data": {}}, {"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(reset15)}),
                    (201, {"data": {}}, {"x-rate-limit-remaining": "9", "x-rate-limit-reset": str(reset15 + 900),
                                         "x-user-limit-24hour-remaining": "0",
                                         "x-user-limit-24hour-reset": str(reset24)})]
    for i in range(3):
        rig.add("m%d" % i)
    assert rig.run()
    t = [c["t"] for c in rig.x.sends()]
    assert len(t) == 3 and t[1] >= reset15 and t[2] >= reset24
    assert rig.x.dm_texts() == ["m0", "m1", "m2"]


@pytest.mark.parametrize("failure", [
    lambda: (503, problem(503, "Service Unavailable"), {}),
    lambda: (500, b"oops", {}),
    lambda: socket.timeout("timed out"),
    lambda: urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
    lambda: http.client.RemoteDisconnected("Remote end closed connection without response"),
], ids=["503", "500", "timeout", "refused", "dropped"])
def test_transient_failures_back_off_then_drain_in_order(rig, failure):
    rig.x.script = [failure() for _ in range(4)]
    for i in range(3):
        rig.add("m%d" % i)
    # while failing: outbox intact, on disk too
    for _ in range(3):
        w = rig.d.step()
        assert len(rig.outbox) == 3
        if w > 0:
            rig.clock.advance(w)
    assert rig.reloaded_pending() == ["m0", "m1", "m2"]
    assert rig.run()
    sends = rig.x.sends()
    assert len(sends) == 7
    gaps = [b["t"] - a["t"] for a, b in zip(sends, sends[1:5])]
    for n, g in enumerate(gaps):                                  # exponential with jitter
        nominal = bs.BACKOFF_BASE * 2 ** n
        assert nominal / 2 <= g <= nominal + 1e-6, gaps
    nonces = [oauth_params(c["auth"])["oauth_nonce"] for c in sends]
    assert len(set(nonces)) == len(nonces)                        # re-signed each try
    assert [int(oauth_params(c["auth"])["oauth_timestamp"]) for c in sends] == [int(c["t"]) for c in sends]
    assert rig.x.dm_texts()[4:] == ["m0", "m1", "m2"]
    # after the recovery the back-off starts from scratch
    assert rig.d.attempts == 0


def test_no_request_while_backing_off(rig):
    rig.x.script = [(503, problem(503, "down"), {})]
    rig.add("m0")
    rig.d.step()
    n = len(rig.x.calls)
    w = rig.d.step()
    assert w > 0 and len(rig.x.calls) == n
    rig.clock.advance(w / 2)
    rig.d.step()
    assert len(rig.x.calls) == n
    rig.clock.advance(w)
    rig.d.step()
    assert len(rig.x.calls) == n + 1 and len(rig.outbox) == 0


@pytest.mark.parametrize("status, detail", [
    (403, "You cannot send messages to this user."),
    (400, "One or more parameters to your request was invalid."),
])
def test_permanent_errors_dead_letter_and_keep_flowing(rig, logs, status, detail):
    rig.x.script = [None, (status, problem(status, detail), {})]
    for i in range(4):
        rig.add("m%d" % i)
    assert rig.run()
    assert rig.x.dm_texts() == ["m0", "m1", "m2", "m3"]
    dead = rig.dead_records()
    assert len(dead) == 1
    assert dead[0]["text"] == "m1" and dead[0]["kind"] == "dm" and dead[0]["to"] == "1001"
    assert detail in dead[0]["reason"] and str(status) in dead[0]["reason"]
    assert len(dead) == 1
    assert rig.reloaded_pending() == []
    assert any(detail in r.getMessage() for r in logs.records if r.levelno >= logging.ERROR)


def test_401_keeps_everything_logs_once_retries_slowly_and_at_nudge(rig, logs):
    body = {"errors": [{"code": 89, "message": "Invalid or expired token."}]}
    rig.x.script = [(401, body, {})] * 3
    for i in range(3):
        rig.add("m%d" % i)
    rig.d.step()
    assert len(rig.x.calls) == 1
    # nothing more until AUTH_RETRY has passed
    for _ in range(5):
        w = rig.d.step()
        assert w > 0
        rig.clock.advance(min(w, 100))
    assert len(rig.x.calls) == 1
    assert rig.clock() - T0 < bs.AUTH_RETRY
    rig.clock.t = T0 + bs.AUTH_RETRY
    rig.d.step()
    assert len(rig.x.calls) == 2
    assert rig.x.calls[1]["t"] >= T0 + bs.AUTH_RETRY
    # SIGHUP's nudge retries at once
    w = rig.d.step()
    assert w > 0 and len(rig.x.calls) == 2
    rig.d.nudge()
    rig.d.step()
    assert len(rig.x.calls) == 3
    assert len(rig.outbox) == 3 and rig.reloaded_pending() == ["m0", "m1", "m2"]
    assert rig.dead_records() == []
    crit = [r for r in logs.records if r.levelno >= logging.WARNING and "401" in r.getMessage().split("/")[0]]
    assert len(crit) == 1 and crit[0].levelno >= logging.ERROR, [r.getMessage() for r in crit]
    assert "SECRET" not in logs.text
    # credentials fixed: everything goes, in order
    rig.d.nudge()
    assert rig.run()
    assert rig.x.dm_texts()[3:] == ["m0", "m1", "m2"]


def _budget_rig(tmp_path, **budget):
    return Rig(tmp_path, budget=budget)


def test_budget_three_per_window_last_is_digest(tmp_path, logs):
    r = _budget_rig(tmp_path, dm_per_15m=3)
    texts = ["[h] alert number %d" % i for i in range(10)]
    for i, t in enumerate(texts):
        r.add(t)
        r.clock.advance(1)
    start = r.clock()
    r.run(horizon=start + 899)
    sent = r.x.dm_texts()
    assert len(sent) == 3, sent
    assert sent[:2] == texts[:2]
    head = "+8 alerts since %s:" % time.strftime("%H:%M:%S", time.localtime(T0 + 2))
    assert sent[2].startswith(head), sent[2]
    assert len(sent[2]) <= bs.DM_MAX_CHARS
    # nothing lost: each alert is in a sent message or still queued
    pending = [e["text"] for e in r.outbox.entries.values()]
    for t in texts:
        assert any(t in s for s in sent) or t in pending, t
    assert any("budget" in rec.getMessage() for rec in logs.records)


def test_budget_held_alerts_go_next_window_nothing_lost(tmp_path):
    r = _budget_rig(tmp_path, dm_per_15m=3)
    texts = [("[h] big alert %d " % i) + "x" * 3000 for i in range(10)]
    for t in texts:
        r.add(t)
    start = r.clock()
    r.run(horizon=start + 899)
    first = r.x.dm_texts()
    assert len(first) == 3 and first[2].startswith("+8 alerts since")
    held = len(r.outbox)
    assert held > 0                                           # too long to carry them all
    r.d.step()
    assert r.outbox.count("dm") == held                       # still queued
    assert r.run(max_steps=2000)                              # later windows
    sent = r.x.dm_texts()
    for t in texts:
        assert any(t in s for s in sent), t[:20]
    times = [c["t"] for c in r.x.sends()]
    for i in range(len(times)):                               # never more than 3 per 15 minutes
        assert sum(1 for u in times if times[i] <= u < times[i] + 900) <= 3


def test_budget_next_window_first_message_summarizes_held(tmp_path):
    """Issue 3: 'whatever stays held is summarized in the first message of the next window'."""
    r = _budget_rig(tmp_path, dm_per_15m=3)
    texts = [("[h] big alert %d " % i) + "x" * 3000 for i in range(10)]
    for t in texts:
        r.add(t)
    start = r.clock()
    r.run(horizon=start + 899)
    assert len(r.x.dm_texts()) == 3 and len(r.outbox) > 0
    r.run(until=lambda: len(r.x.dm_texts()) >= 4, horizon=start + 3600)
    nxt = r.x.dm_texts()[3]
    assert re.match(r"^\+\d+ alerts? since \d\d:\d\d:\d\d:", nxt), nxt[:60]


def test_budget_money_cap(tmp_path):
    r = _budget_rig(tmp_path, usd_per_day=0.05)
    for i in range(5):
        r.add("a%d" % i)
    r.run(horizon=T0 + 86000)
    sent = r.x.dm_texts()
    assert len(sent) <= 3
    assert sum(s[1] for s in r.state.spend) <= 0.05 + 1e-9
    assert sent[-1].startswith("+")
    for i in range(5):
        assert any("a%d" % i in s for s in sent) or "a%d" % i in [e["text"] for e in r.outbox.entries.values()]


def test_handle_resolved_once_and_cached(tmp_path):
    r = Rig(tmp_path)
    for i in range(3):
        r.add("m%d" % i, to="@Alice")
    assert r.run()
    assert len(r.x.lookups()) == 1
    assert r.x.lookups()[0]["path"] == "/2/users/by/username/Alice"
    assert all(c["path"] == "/2/dm_conversations/with/1001/messages" for c in r.x.sends())
    assert r.state.users == {"@alice": "1001"}
    # a restart with the saved state asks no more
    again = tmp_path / "again"
    again.mkdir()
    r2 = Rig(again, state=r.state)
    r2.add("m3", to="@alice")
    assert r2.run()
    assert r2.x.lookups() == [] and r2.x.dm_texts() == ["m3"]


def test_default_recipient_is_the_account(rig):
    rig.add("to me", to="")
    rig.add("to me too", to="")
    assert rig.run()
    assert [c["path"] for c in rig.x.lookups()] == ["/2/users/me"]
    assert all(c["path"] == "/2/dm_conversations/with/999/messages" for c in rig.x.sends())


def test_unknown_user_dead_letter(rig):
    rig.add("a", to="@nobody")
    rig.add("b", to="@alice")
    assert rig.run()
    dead = rig.dead_records()
    assert [d["text"] for d in dead] == ["a"] and "nobody" in dead[0]["reason"]
    assert rig.x.dm_texts() == ["b"]


def test_lookup_transient_failure_retries_not_dead(rig):
    rig.x.lookup_script = [(503, problem(503, "down"), {})]
    rig.add("a", to="@alice")
    assert rig.run()
    assert rig.dead_records() == [] and rig.x.dm_texts() == ["a"]


def _runner(rig, hostname="h"):
    return bs.ActionRunner(io.StringIO(), hostname=hostname, outbox=rig.outbox, clock=rig.clock)


def test_tweets_unique_and_defanged(rig):
    runner = _runner(rig)
    act = bs.parse_action("tweet", "", "conf", 1)
    raw = bs.parse_action("tweet", "defang=no", "conf", 2)
    line = "disk full, see http://evil.example.com/x?a=1 and www.example.org"
    runner.enqueue("tweet", "", line, act)
    runner.enqueue("tweet", "", line, act)
    runner.enqueue("tweet", "", "plain http://example.com/ok", raw)
    assert rig.run()
    posts = [c["json"]["text"] for c in rig.x.sends()]
    assert all(c["path"] == "/2/tweets" for c in rig.x.sends())
    assert len(posts) == 3 and len(set(posts)) == 3
    assert posts[0].endswith("[#1]") and posts[1].endswith("[#2]") and posts[2].endswith("[#3]")
    for p in posts[:2]:
        assert "http://" not in p and "evil.example.com" not in p and "www.example.org" not in p
        assert not bs.has_url(p)
        assert "hxxp[:]//evil[.]example[.]com" in p
    assert "http://example.com/ok" in posts[2]
    # a defanged post costs the plain price
    assert [s[1] for s in rig.state.spend] == [0.015, 0.015, 0.20]


def test_defanged_post_is_budgeted_at_plain_price(tmp_path):
    """A defanged post costs $0.015; the money cap must not price it as a URL post ($0.20)."""
    r = _budget_rig(tmp_path, usd_per_day=0.1)
    runner = _runner(r)
    act = bs.parse_action("tweet", "", "conf", 1)
    runner.enqueue("tweet", "", "see http://evil.example.com/x", act)
    runner.enqueue("tweet", "", "plain alert behind it", act)
    r.run(horizon=T0 + 2 * 86400)
    assert len(r.x.sends()) == 2, "held for 2 days: the budget priced the defanged post as a $0.20 URL post"
    assert sum(u for _, u in r.state.spend) <= 0.1


def test_repeated_long_tweets_stay_unique(rig):
    """Every part X sees must be unique, or X's duplicate-content 403 dead-letters it."""
    runner = _runner(rig)
    act = bs.parse_action("tweet", "", "conf", 1)
    line = "kernel: " + " ".join("word%d" % i for i in range(80))
    runner.enqueue("tweet", "", line, act)
    runner.enqueue("tweet", "", line, act)
    assert rig.run()
    posts = [c["json"]["text"] for c in rig.x.sends()]
    assert len(posts) >= 4
    assert all(weighted_length(p) <= 280 for p in posts)      # fakex's independent twitter-text count
    assert len(set(posts)) == len(posts), posts


def test_long_dm_split_in_parts(rig):
    words = ["w%05d" % i for i in range(3500)]            # 24,500 characters
    text = " ".join(words)
    rig.add(text)
    rig.add("after")
    assert rig.run()
    sent = rig.x.dm_texts()
    parts = sent[:-1]
    assert sent[-1] == "after"
    n = len(parts)
    assert n == 3
    for i, p in enumerate(parts, 1):
        assert len(p) <= bs.DM_MAX_CHARS
        assert p.endswith(" (%d/%d)" % (i, n))
    rebuilt = " ".join(p[: -len(" (%d/%d)" % (i, n))] for i, p in enumerate(parts, 1))
    assert rebuilt.split() == words


def test_long_dm_resumes_after_failure_without_resending_parts(rig):
    text = " ".join("w%05d" % i for i in range(3500))
    rig.x.script = [None, (503, problem(503, "down"), {})]
    rig.add(text)
    assert rig.run()
    sent = rig.x.dm_texts()
    assert [s[-5:] for s in sent] == ["(1/3)", "(2/3)", "(2/3)", "(3/3)"]
