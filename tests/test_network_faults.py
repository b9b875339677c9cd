"""Network faults: an hour-long outage, a day of 429s, a server that never answers.

(a) and (b) drive Deliverer.step() with fake wall and monotonic clocks and a
fake opener, advancing the clocks by the waits step() asks for: no real
sleeps, every figure exact.  (c) uses the loopback fake X server
(tests/fakex.py) and the real CLI daemon; every wait there is bounded and the
daemon is stopped (SIGTERM, then SIGKILL by pid) in a finally block.
"""

import http.client
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse

import pytest

import birdsentinel as bs
from conftest import record_secret_scan_file, record_secret_scan_text
from fakex import FakeX
from fakes import T0, FakeClock, LogCapture, answer, print_figures, read_text, wait_until

M0 = 5_000.0                         # the monotonic clock has its own origin
EPS = 1e-6


FIGURES = {}                                  # printed once at the end of this module


@pytest.fixture(scope="module", autouse=True)
def _print_figures(request):
    yield
    print_figures(request, FIGURES)


# -- fakes (the clocks and answer() are tests/fakes.py's) ----------------------

def ok_answer(req):
    path = urllib.parse.urlsplit(req.full_url).path
    if path.startswith("/2/users/by/username/"):
        name = path.rsplit("/", 1)[1]
        return answer(req, 200, {"data": {"id": "1001", "username": name, "name": name}})
    if path == "/2/users/me":
        return answer(req, 200, {"data": {"id": "999", "username": "bot", "name": "bot"}})
    body = json.loads(req.data.decode("utf-8"))
    return answer(req, 201, {"data": {"dm_conversation_id": "1-2", "dm_event_id": "3"}, "echo": body},
                  {"x-rate-limit-limit": "1440", "x-rate-limit-remaining": "1000",
                   "x-rate-limit-reset": "9999999999"})


def dm_text(req):
    return json.loads(req.data.decode("utf-8"))["text"]



@pytest.fixture
def logs():
    """birdsentinel's own records, whatever main() elsewhere did to propagation."""
    h = LogCapture()
    old = bs.LOG.level
    bs.LOG.addHandler(h)
    bs.LOG.setLevel(logging.DEBUG)
    yield h
    bs.LOG.removeHandler(h)
    bs.LOG.setLevel(old)


def make_deliverer(tmp_path, opener, clocks, budget=None, seed=1):
    outbox = bs.Outbox(str(tmp_path / "birdsentinel.outbox"), str(tmp_path / "birdsentinel.dead"), fsync=False)
    outbox.load()
    state = bs.DeliveryState()
    client = bs.XClient(bs.Credentials("ck-test", "cs-test-SECRET", "1-at-test", "ats-test-SECRET"),
                        "https://api.x.com", opener=opener, clock=clocks.now)
    b = dict(bs.DEFAULT_BUDGET)
    b.update(budget or {})
    d = bs.Deliverer(outbox, client, state, b, clock=clocks.now,
                     rng=random.Random(seed), monotonic=clocks.monotonic)
    return d, outbox, state


def reload_pending(tmp_path):
    ob = bs.Outbox(str(tmp_path / "birdsentinel.outbox"), str(tmp_path / "birdsentinel.dead"), fsync=False)
    ob.load()
    return [e["text"] for e in ob.entries.values()]


# -- (a) an hour-long outage --------------------------------------------------

def network_error(rng):
    return rng.choice([
        urllib.error.URLError(socket.timeout("timed out")),
        socket.timeout("timed out"),
        urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
        urllib.error.URLError(OSError(101, "Network is unreachable")),
        ConnectionResetError(104, "Connection reset by peer"),
        http.client.RemoteDisconnected("Remote end closed connection without response"),
    ])


def test_hour_long_outage_backs_off_to_the_cap_without_busy_loop_then_drains_in_order(tmp_path, logs):
    clocks = FakeClock(T0, M0)
    outage_end = T0 + 3600.0
    erng = random.Random(3)
    requests = []                                   # (wall, mono, ok, text)

    def opener(req, timeout):
        path = urllib.parse.urlsplit(req.full_url).path
        text = dm_text(req) if path.startswith("/2/dm_conversations") else None
        if clocks.wall < outage_end:
            requests.append((clocks.wall, clocks.mono, False, text))
            raise network_error(erng)
        requests.append((clocks.wall, clocks.mono, True, text))
        return ok_answer(req)

    d, outbox, state = make_deliverer(tmp_path, opener, clocks,
                                      budget={"dm_per_15m": 1000, "dm_per_day": 100000})
    added = []

    def add_alert(to="1001"):
        text = "[host] alert %03d" % len(added)
        outbox.add("dm", to, text, clocks.now())
        added.append(text)

    for _ in range(5):
        add_alert()
    add_alert("@alice")                             # a lookup that fails during the outage too
    # more alerts keep arriving during the outage, every 7 minutes; each one
    # wakes the sender (App's on_enqueue), which calls step() early
    arrivals = [T0 + 420.0 * k for k in range(1, 9)]

    failure_delays = []                             # step()'s answer right after each failed request
    early_steps = 0
    steps = 0
    while clocks.wall < outage_end:
        n_req = len(requests)
        wait = d.step()
        steps += 1
        assert steps < 200, "runaway loop"
        assert wait >= 1.0 - EPS, "step() asked to be called again after %r s during the outage" % wait
        if len(requests) > n_req:
            assert len(requests) == n_req + 1, "more than one request in one step"
            failure_delays.append(wait)
            assert d.retry_at == pytest.approx(clocks.mono + wait)
        else:
            early_steps += 1
            assert wait == pytest.approx(d.retry_at - clocks.mono)
        due = clocks.wall + wait
        if arrivals and arrivals[0] < due:
            clocks.advance(arrivals.pop(0) - clocks.wall)
            add_alert()
        else:
            clocks.advance(wait)
    outage_requests = [r for r in requests if not r[2]]

    # back-off: attempt k waits between d_k/2 and d_k, d_k = min(cap, base * 2**k)
    assert len(failure_delays) == len(outage_requests)
    for k, delay in enumerate(failure_delays):
        dk = min(bs.BACKOFF_CAP, bs.BACKOFF_BASE * 2 ** k)
        assert dk / 2 - EPS <= delay <= dk + EPS, (k, delay)
    capped = [w for k, w in enumerate(failure_delays) if bs.BACKOFF_BASE * 2 ** k >= bs.BACKOFF_CAP]
    assert len(capped) >= 2, failure_delays          # it reached the cap and stayed there
    assert max(failure_delays) <= bs.BACKOFF_CAP
    assert min(capped) >= bs.BACKOFF_CAP / 2
    # no request before the back-off ends (mono times of consecutive requests)
    for (w1, m1, _, _), (w2, m2, _, _), delay in zip(outage_requests, outage_requests[1:], failure_delays):
        assert m2 - m1 >= delay - EPS
    # no busy loop: an hour of outage costs a handful of requests
    assert len(outage_requests) < 30, len(outage_requests)
    assert steps < 60, steps
    # the log does not flood either: retries 1-3, then powers of two
    failed_logs = [m for m in logs.messages(logging.WARNING) if m.startswith("delivery failed")]
    assert len(failed_logs) <= 3 + len(outage_requests).bit_length()
    # nothing was lost during the outage: all alerts are still queued, durably
    assert reload_pending(tmp_path) == added
    assert outbox.count("dm") == len(added)

    # the network is back: the first retry is at most one capped back-off away
    recovery_start = clocks.wall
    while len(outbox):
        wait = d.step()
        steps += 1
        assert steps < 200
        clocks.advance(wait)
    assert clocks.wall - recovery_start <= bs.BACKOFF_CAP + EPS
    sent = [r[3] for r in requests if r[2] and r[3] is not None]
    assert sent == added                            # in order, each exactly once
    assert reload_pending(tmp_path) == []
    assert d.attempts == 0
    d.step()
    assert outbox.count("dm") == 0
    FIGURES["outage"] = {"alerts": len(added), "failed requests in 1 h": len(outage_requests), "steps": steps,
                         "back-offs s": [round(w) for w in failure_delays]}


# -- (b) a day of 429s --------------------------------------------------------

def test_a_day_of_429s_no_request_before_reset_nothing_lost_budget_and_digest_hold_the_rest(tmp_path, logs):
    clocks = FakeClock(T0, M0)
    day_end = T0 + 86400.0
    log = []                                        # (wall, path, status, text)
    not_before = [T0]                               # the reset X announced last
    violations = []
    variant = [0]

    def opener(req, timeout):
        t = clocks.wall
        path = urllib.parse.urlsplit(req.full_url).path
        text = dm_text(req) if path.startswith("/2/dm_conversations") else None
        if t < not_before[0] - 1e-3:
            violations.append((t, not_before[0], path))
        if t >= day_end:
            log.append((t, path, 201, text))
            return ok_answer(req)
        log.append((t, path, 429, text))
        v = variant[0] % 4
        variant[0] += 1
        window_end = T0 + (int((t - T0) // 900) + 1) * 900
        if v == 0:       # the 15-minute window is used up
            headers = {"x-rate-limit-limit": "15", "x-rate-limit-remaining": "0",
                       "x-rate-limit-reset": "%d" % window_end}
            not_before[0] = float(int(window_end))
        elif v == 1:     # the 24-hour user cap is used up: reset in three hours
            reset = int(t) + 3 * 3600
            headers = {"x-rate-limit-limit": "15", "x-rate-limit-remaining": "3",
                       "x-rate-limit-reset": "%d" % window_end,
                       "x-user-limit-24hour-limit": "1440", "x-user-limit-24hour-remaining": "0",
                       "x-user-limit-24hour-reset": "%d" % reset}
            not_before[0] = float(reset)
        elif v == 2:     # a bare 429: wait a minute
            headers = {}
            not_before[0] = t + 60.0
        else:            # a reset already in the past (clock skew): wait a minute
            headers = {"x-rate-limit-limit": "15", "x-rate-limit-remaining": "0",
                       "x-rate-limit-reset": "%d" % (int(t) - 100)}
            not_before[0] = t + 60.0
        return answer(req, 429, {"title": "Too Many Requests", "detail": "Too Many Requests", "status": 429},
                      headers)

    d, outbox, state = make_deliverer(tmp_path, opener, clocks)     # the default budget: 15 per 15 min
    added = []

    def add_alert():
        text = "[host] alert %04d" % len(added)
        outbox.add("dm", "@alice", text, clocks.now())
        added.append(text)

    arrivals = [T0 + 600.0 * k for k in range(0, 144)]              # one alert every 10 min, all day
    steps = zero_waits = 0

    def check_nothing_lost():
        delivered = [x[3] for x in log if x[2] == 201 and x[3] is not None]
        queued = [e["text"] for e in outbox.entries.values()]
        for text in added:
            assert text in queued or any(text in m.split("\n") or m.startswith(text) for m in delivered), text

    while clocks.wall < day_end:
        if arrivals and arrivals[0] <= clocks.wall + EPS:
            arrivals.pop(0)
            add_alert()
        n_req = len(log)
        wait = d.step()                     # also called at each arrival: the enqueue wakes the sender
        steps += 1
        assert steps < 2000, "runaway loop"
        if wait < 1.0:                      # only right after an answer; the next step then waits
            assert wait == 0.0 and len(log) == n_req + 1, wait
            zero_waits += 1
        check_nothing_lost()
        assert outbox.count("dm") == len(outbox) == len(added)
        due = clocks.wall + wait
        nxt = min(due, arrivals[0]) if arrivals else due
        clocks.advance(max(nxt - clocks.wall, 0.0))
    day_requests = [x for x in log if x[2] == 429]
    assert violations == [], violations[:5]
    assert all(b[0] - a[0] >= 60.0 - 1e-3 for a, b in zip(day_requests, day_requests[1:]))
    assert len(day_requests) < 200, len(day_requests)
    assert zero_waits <= len(day_requests)
    assert state.sent.get("dm", []) == [] and state.spend == []       # a 429 costs no budget
    assert reload_pending(tmp_path) == added
    assert not os.path.exists(str(tmp_path / "birdsentinel.dead"))

    # the day is over: X accepts again; the budget (15 per 15 min) and the
    # digest carry the 144 held alerts
    start = clocks.wall
    while len(outbox) and clocks.wall < start + 86400:
        wait = d.step()
        steps += 1
        assert steps < 4000
        check_nothing_lost()
        clocks.advance(wait)
    assert len(outbox) == 0 and reload_pending(tmp_path) == []
    d.step()
    assert outbox.count("dm") == 0
    sends = [x for x in log if x[2] == 201 and x[3] is not None]
    times = [x[0] for x in sends]
    for i, t in enumerate(times):                                   # never more than 15 in any 15 minutes
        assert sum(1 for u in times[i:] if u < t + 900) <= 15
    assert len(sends) <= 15                                         # all of it fits in the first window
    texts = [x[3] for x in sends]
    digest = [m for m in texts if m.startswith("+")]
    assert len(digest) == 1 and digest[0].startswith("+%d alerts since " % (len(added) - (len(sends) - 1)))
    carried = []                                                    # every alert delivered once, in order
    for m in texts:
        carried.extend(line for line in m.split("\n") if line.startswith("[host] alert "))
    assert carried == added
    FIGURES["429 day"] = {"alerts held": len(added), "requests in 24 h (all 429)": len(day_requests),
                          "steps": steps, "messages after": len(sends),
                          "alerts in the digest": len(digest[0].split("\n")) - 1}


# -- (c) a server that accepts the connection and never answers ---------------

@pytest.fixture
def fx():
    f = FakeX(users={"alice": "1001"}).start()
    yield f
    f.stop()


def test_hanging_server_times_out_as_xnetworkerror_then_next_request_works(fx):
    creds = bs.Credentials(fx.consumer_key, fx.consumer_secret, fx.access_token, fx.access_token_secret)
    client = bs.XClient(creds, fx.base_url, timeout=0.5)
    fx.inject(hang=True, path_prefix="/2/dm_conversations")
    t = time.monotonic()
    with pytest.raises(bs.XNetworkError) as ei:
        client.send_dm("1001", "hello")
    elapsed = time.monotonic() - t
    assert 0.4 <= elapsed < 5.0, elapsed
    assert "timed out" in str(ei.value)
    assert ei.value.exit_code == bs.EX_TEMPFAIL
    assert fx.dms == []
    resp = client.send_dm("1001", "hello again")     # the fault was for one request
    assert resp.status == 201
    assert [m["text"] for m in fx.dms] == ["hello again"]
    record_secret_scan_text("XNetworkError after a hang", str(ei.value))


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False





def test_daemon_keeps_matching_while_x_hangs_and_delivers_after_the_hang_is_lifted(fx, tmp_path, script):
    conf = tmp_path / "conf"
    conf.write_text("watchfor /ALERT/\n  dm @alice\n")
    logfile = tmp_path / "app.log"
    logfile.write_text("")
    tw = str(tmp_path / "twitter")
    fx.write_creds(tw)
    sd = tmp_path / "sd"
    pidfile = tmp_path / "d.pid"
    dlog = tmp_path / "daemon.log"
    outbox = sd / bs.OUTBOX_NAME
    env = {k: v for k, v in os.environ.items() if k not in ("BIRDSENTINEL_API_BASE", "CREDENTIALS_DIRECTORY")}
    env["HOME"] = str(tmp_path)
    fx.inject(hang=True, count=1, path_prefix="/2/dm_conversations")
    r = subprocess.run([sys.executable, script, "--daemon", "-c", str(conf), "-t", str(logfile),
                        "--script-dir", str(sd), "--pid-file", str(pidfile), "--log-file", str(dlog),
                        "--twitter-dir", tw, "--api-base", fx.base_url],
                       env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=30)
    record_secret_scan_text("daemon start stdout", r.stdout)
    record_secret_scan_text("daemon start stderr", r.stderr)
    assert r.returncode == 0, r.stderr
    pid = int(pidfile.read_text().strip())
    try:
        assert wait_until(lambda: "watching" in read_text(dlog), 10), read_text(dlog)
        with open(str(logfile), "a") as fh:
            fh.write("ALERT one\n")

        def hung():
            return any(q.get("fault") and q["fault"].get("hang") for q in fx.requests)
        assert fx.wait_for(hung, 15), read_text(dlog)
        # X hangs: matching and the durable outbox go on all the same
        with open(str(logfile), "a") as fh:
            fh.write("ALERT two\nALERT three\n")
        assert wait_until(lambda: "ALERT three" in read_text(outbox), 10), read_text(dlog)
        assert fx.dms == []
        assert _alive(pid)
        # lift the hang: the server lets go of the connection it held
        fx._stopping.set()
        assert fx.wait_for(lambda: len(fx.dms) >= 3, 20), read_text(dlog)
        texts = [m["text"] for m in fx.dms]
        assert [t.split("] ", 1)[1] for t in texts] == ["ALERT one", "ALERT two", "ALERT three"]
        assert "delivery failed" in read_text(dlog)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            if not wait_until(lambda: not _alive(pid), 20):
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda: not _alive(pid), 5)
        record_secret_scan_file("daemon log (hang test)", str(dlog))
    assert not _alive(pid)
    assert wait_until(lambda: not pidfile.exists(), 5)
    log_text = read_text(dlog)
    assert "Traceback" not in log_text and "delivery step failed" not in log_text, log_text
    assert len(fx.dms) == 3                          # nothing sent twice
