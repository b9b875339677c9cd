"""End to end: the real CLI against the loopback fake X server (tests/fakex.py),
which verifies every request's OAuth 1.0a signature with oauthlib's server side.

Every wait is bounded; every process started here is killed in teardown.
"""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from fakes import read_text, stop_processes, wait_until
from fakex import FakeX, extract_urls, write_creds

CK, CS, AT, ATS = "ck-e2e", "cs-e2e-SECRET", "999-at-e2e", "ats-e2e-SECRET"   # conftest's scan looks for *-SECRET
DM_PATH = "/2/dm_conversations"
HOST = socket.gethostname().split(".")[0]


@pytest.fixture
def fx():
    f = FakeX(consumer_key=CK, consumer_secret=CS, access_token=AT, access_token_secret=ATS,
              users={"alice": "1001", "bob": "1002"}, me=("999", "sentinel_bot"), pin="1234567").start()
    yield f
    f.stop()


@pytest.fixture
def tw(tmp_path):
    d = str(tmp_path / "twitter")
    write_creds(d, CK, CS, AT, ATS)
    return d


_SCAN = []


@pytest.fixture(autouse=True)
def _scan_outputs(request):
    """Hand every CLI output of these tests to conftest's secrets scan (when it has one)."""
    try:
        scan = request.getfixturevalue("secret_scan")
    except pytest.FixtureLookupError:
        yield
        return
    _SCAN.append(scan)
    yield
    _SCAN.pop()


def cli(script, env, *args, input=None, timeout=15):
    r = subprocess.run([sys.executable, script] + list(args), input=input, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                       timeout=timeout)
    for scan in _SCAN:
        scan.text("birdsentinel %s stdout" % args[0], r.stdout)
        scan.text("birdsentinel %s stderr" % args[0], r.stderr)
    return r





# ---------------------------------------------------------------------------
# --authorize
# ---------------------------------------------------------------------------

def _consumer_only(tmp_path):
    d = tmp_path / "auth"
    d.mkdir(mode=0o700)
    for name, value in (("consumer-key", CK), ("consumer-secret", CS)):
        p = d / name
        p.write_text(value + "\n")
        os.chmod(str(p), 0o600)
    return str(d)


def test_authorize_pin_flow(script, env, fx, tmp_path):
    d = _consumer_only(tmp_path)
    r = cli(script, env, "--authorize", "--twitter-dir", d, "--api-base", fx.base_url, input="1234567\n")
    assert r.returncode == 0, r.stderr
    assert fx.base_url + "/oauth/authorize?oauth_token=" in r.stdout
    assert "@sentinel_bot" in r.stdout
    tok, sec = fx.issued_tokens[-1]
    for name, value in (("access-token", tok), ("access-token-secret", sec)):
        p = os.path.join(d, name)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
        assert read_text(p).strip() == value
    assert sec not in r.stdout + r.stderr and CS not in r.stdout + r.stderr
    # the new token works
    r = cli(script, env, "--send", "first", "--to", "@alice", "--twitter-dir", d, "--api-base", fx.base_url)
    assert r.returncode == 0, r.stderr
    assert fx.dms[-1]["to"] == "1001" and fx.dms[-1]["text"] == "first"


def test_authorize_wrong_pin(script, env, fx, tmp_path):
    d = _consumer_only(tmp_path)
    r = cli(script, env, "--authorize", "--twitter-dir", d, "--api-base", fx.base_url, input="7654321\n")
    assert r.returncode != 0
    assert not os.path.exists(os.path.join(d, "access-token"))
    assert not os.path.exists(os.path.join(d, "access-token-secret"))
    assert fx.issued_tokens == []


# ---------------------------------------------------------------------------
# --send, --check
# ---------------------------------------------------------------------------

def test_send_dm_to_handle(script, env, fx, tw):
    r = cli(script, env, "--send", "disk full on /var", "--to", "@alice", "--twitter-dir", tw, "--api-base", fx.base_url)
    assert r.returncode == 0, r.stderr
    assert [(d["to"], d["text"]) for d in fx.dms] == [("1001", "disk full on /var")]
    assert all(rec["signature_ok"] for rec in fx.requests)


def test_send_wrong_consumer_secret_fails_at_once_without_leaking(script, env, fx, tmp_path):
    d = str(tmp_path / "bad")
    wrong = "WRONG-consumer-SECRET"
    write_creds(d, CK, wrong, AT, ATS)
    t0 = time.monotonic()
    r = cli(script, env, "--send", "hello", "--to", "@alice", "--twitter-dir", d, "--api-base", fx.base_url)
    assert time.monotonic() - t0 < 10
    assert r.returncode != 0
    assert fx.requests and all(rec["status"] == 401 for rec in fx.requests)
    assert len(fx.requests) == 1                                    # no retry loop
    assert fx.dms == []
    out = r.stdout + r.stderr
    assert "401" in out
    for secret in (wrong, ATS):
        assert secret not in out


def test_check_online_reports_account(script, env, fx, tw, tmp_path):
    conf = tmp_path / "conf"
    conf.write_text("watchfor /ALERT/\n    dm @alice\n")
    sd = tmp_path / "sd"
    sd.mkdir()
    r = cli(script, env, "--check", "--online", "-c", str(conf), "--script-dir", str(sd),
            "--twitter-dir", tw, "--api-base", fx.base_url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "@sentinel_bot" in r.stdout and "999" in r.stdout
    assert "WARNING" not in r.stdout
    assert any(rec["path"] == "/2/users/me" and rec["status"] == 200 for rec in fx.requests)

    fx.access_level = "read-write"
    r = cli(script, env, "--check", "--online", "-c", str(conf), "--script-dir", str(sd),
            "--twitter-dir", tw, "--api-base", fx.base_url)
    assert "@sentinel_bot" in r.stdout
    assert "WARNING" in r.stdout and "direct messages" in r.stdout.lower()
    assert "read-write" in r.stdout


def test_world_readable_credentials_refused(script, env, fx, tmp_path):
    d = str(tmp_path / "open")
    write_creds(d, CK, CS, AT, ATS, mode=0o644)
    r = cli(script, env, "--send", "hello", "--twitter-dir", d, "--api-base", fx.base_url)
    assert r.returncode != 0
    assert os.path.join(d, "consumer-key") in r.stderr
    assert "chmod 600" in r.stderr
    assert fx.requests == []
    assert CS not in r.stdout + r.stderr


# ---------------------------------------------------------------------------
# the watcher (-t LOG -c CONF) delivering through the outbox
# ---------------------------------------------------------------------------

class Watcher:
    def __init__(self, script, env, fx, tw, tmp_path):
        self.script, self.env, self.fx, self.tw = script, env, fx, tw
        self.dir = tmp_path
        self.sd = tmp_path / "sd"
        self.sd.mkdir(exist_ok=True)
        self.log = tmp_path / "app.log"
        self.conf = tmp_path / "conf"
        self.logfile = tmp_path / "birdsentinel.log"
        self.procs = []

    def start(self, conf_text=None):
        if conf_text is not None:
            self.conf.write_text(conf_text)
        n = len(self.procs)
        err = open(str(self.dir / ("stderr.%d" % n)), "w")
        p = subprocess.Popen([sys.executable, self.script, "-c", str(self.conf), "-t", str(self.log),
                              "--script-dir", str(self.sd), "--twitter-dir", self.tw,
                              "--api-base", self.fx.base_url, "--log-file", str(self.logfile)],
                             env=self.env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        err.close()
        self.procs.append(p)
        return p

    def start_waiting_for_log(self, conf_text):
        """Start with the log file absent, so everything written to it later is new."""
        assert not self.log.exists()
        p = self.start(conf_text)
        assert wait_until(lambda: "waiting for it" in read_text(str(self.logfile)) or p.poll() is not None, 15), \
            self.diag()
        assert p.poll() is None, self.diag()
        return p

    def write(self, *lines):
        with open(str(self.log), "a") as fh:
            fh.write("".join(line + "\n" for line in lines))

    def outbox_adds(self):
        return sum(1 for line in read_text(str(self.sd / "birdsentinel.outbox")).splitlines() if '"op":"add"' in line)

    def dead(self):
        return [json.loads(line) for line in read_text(str(self.sd / "birdsentinel.dead")).splitlines() if line.strip()]

    def diag(self):
        errs = "".join(read_text(str(self.dir / ("stderr.%d" % i))) for i in range(len(self.procs)))
        return "log:\n%s\nstderr:\n%s" % (read_text(str(self.logfile))[-3000:], errs[-2000:])

    def stop_all(self):
        stop_processes(self.procs, timeout=5)
        for scan in _SCAN:
            scan.file("watcher log", str(self.logfile))
            for i in range(len(self.procs)):
                scan.file("watcher stderr", str(self.dir / ("stderr.%d" % i)))


@pytest.fixture
def watcher(script, env, fx, tw, tmp_path):
    w = Watcher(script, env, fx, tw, tmp_path)
    yield w
    w.stop_all()


ALICE = "watchfor /ALERT/\n    dm @alice\n"


def alice_texts(fx):
    return [d["text"] for d in fx.dms if d["to"] == "1001"]


def test_tail_delivers_in_order(watcher, fx):
    watcher.start_waiting_for_log(ALICE)
    lines = ["ALERT %d sshd: failed password" % i for i in range(5)]
    watcher.write(*lines[:2])
    watcher.write("noise that matches nothing")
    watcher.write(*lines[2:])
    assert fx.wait_for(lambda: len(fx.dms) >= 5, 15), watcher.diag()
    assert alice_texts(fx) == ["[%s] %s" % (HOST, line) for line in lines]
    time.sleep(0.3)
    assert len(fx.dms) == 5
    lookups = [r for r in fx.requests if r["path"].startswith("/2/users/by/username/")]
    assert len(lookups) == 1                                   # @alice resolved once


def test_outage_then_recovery(watcher, fx):
    watcher.start_waiting_for_log(ALICE)
    fx.inject(drop=True, count=1, path_prefix=DM_PATH)
    fx.inject(status=503, count=1, path_prefix=DM_PATH)
    lines = ["ALERT outage %d" % i for i in range(3)]
    watcher.write(*lines)
    assert fx.wait_for(lambda: len(fx.dms) >= 3, 15), watcher.diag()
    assert alice_texts(fx) == ["[%s] %s" % (HOST, line) for line in lines]
    faults = [r for r in fx.requests if r["fault"]]
    assert len(faults) == 2
    dm_reqs = [r for r in fx.requests if r["path"].startswith(DM_PATH)]
    assert dm_reqs[1]["t"] - dm_reqs[0]["t"] >= 0.9              # backed off, did not hammer
    assert watcher.dead() == []


def test_429_no_request_before_reset(watcher, fx):
    watcher.start_waiting_for_log(ALICE)
    reset = int(time.time()) + 3
    fx.inject(status=429, count=1, path_prefix=DM_PATH,
              headers={"x-rate-limit-limit": "15", "x-rate-limit-remaining": "0", "x-rate-limit-reset": str(reset)},
              body={"title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank", "status": 429})
    lines = ["ALERT limited %d" % i for i in range(2)]
    watcher.write(*lines)
    assert fx.wait_for(lambda: len(fx.dms) >= 2, 15), watcher.diag()
    dm_reqs = [r for r in fx.requests if r["path"].startswith(DM_PATH)]
    assert dm_reqs[0]["status"] == 429
    assert all(r["t"] >= reset for r in dm_reqs[1:]), [(r["t"] - reset, r["status"]) for r in dm_reqs]
    assert alice_texts(fx) == ["[%s] %s" % (HOST, line) for line in lines]


def test_kill_9_with_queued_alerts_then_restart(watcher, fx):
    p = watcher.start_waiting_for_log(ALICE)
    fx.inject(hang=True, count=1, path_prefix=DM_PATH)
    lines = ["ALERT crash %d" % i for i in range(4)]
    watcher.write(*lines)
    assert wait_until(lambda: watcher.outbox_adds() >= 4 and
                      any(r["path"].startswith(DM_PATH) and r["fault"] for r in fx.requests), 15), watcher.diag()
    assert fx.dms == []
    p.kill()                                                   # SIGKILL with a non-empty outbox
    p.wait(timeout=5)
    watcher.start()
    assert fx.wait_for(lambda: len(fx.dms) >= 4, 15), watcher.diag()
    got = alice_texts(fx)
    for line in lines:
        assert "[%s] %s" % (HOST, line) in got                 # at least once
    firsts = [got.index("[%s] %s" % (HOST, line)) for line in lines]
    assert firsts == sorted(firsts)                            # still in order


def test_permanent_403_dead_letter_others_delivered(watcher, fx):
    fx.dm_refusers = {"1002"}
    watcher.start_waiting_for_log("watchfor /BOB/\n    dm @bob\nwatchfor /ALERT/\n    dm @alice\n")
    watcher.write("ALERT one", "BOB two", "ALERT three")
    assert fx.wait_for(lambda: len(fx.dms) >= 2, 15), watcher.diag()
    assert wait_until(lambda: len(watcher.dead()) >= 1, 5), watcher.diag()
    assert alice_texts(fx) == ["[%s] ALERT one" % HOST, "[%s] ALERT three" % HOST]
    dead = watcher.dead()
    assert len(dead) == 1
    assert dead[0]["text"] == "[%s] BOB two" % HOST and dead[0]["to"] == "@bob"
    assert "You cannot send messages to this user." in dead[0]["reason"]
    assert all(d["to"] != "1002" for d in fx.dms)


def test_long_line_split_into_parts(watcher, fx):
    watcher.start_waiting_for_log(ALICE)
    words = ["w%05d" % i for i in range(3500)]
    watcher.write("ALERT " + " ".join(words))
    assert fx.wait_for(lambda: len(fx.dms) >= 3, 15), watcher.diag()
    time.sleep(0.3)
    parts = alice_texts(fx)
    assert len(parts) == 3
    for i, part in enumerate(parts, 1):
        assert len(part) <= 10000 and part.endswith(" (%d/3)" % i)
    rebuilt = " ".join(part[: -len(" (1/3)")] for part in parts).split()
    assert rebuilt == ["[%s]" % HOST, "ALERT"] + words


def _coalescing(watcher, fx, budget_line):
    watcher.start_waiting_for_log(budget_line + "\n" + ALICE)
    fx.inject(delay=1.0, count=1)          # a slow first answer: all six lines are queued before the 2nd send
    lines = ["ALERT flood %d" % i for i in range(6)]
    watcher.write(*lines)
    assert fx.wait_for(lambda: len(fx.dms) >= 2, 15), watcher.diag()
    time.sleep(1.5)
    got = alice_texts(fx)
    assert len(got) == 2, got
    assert got[0] == "[%s] %s" % (HOST, lines[0])
    assert got[1].startswith("+5 alerts since "), got[1]
    for line in lines:
        assert any(line in g for g in got)
    assert "budget" in read_text(str(watcher.logfile))


def test_budget_coalescing(watcher, fx):
    """The documented config line (README, issue 3)."""
    _coalescing(watcher, fx, "budget dm_per_15m=2,dm_per_day=1440")


def test_budget_coalescing_money_cap(watcher, fx):
    """The same flood held by the money cap: $0.03 a day buys two $0.015 DMs."""
    _coalescing(watcher, fx, "budget usd_per_day=0.03")


def test_posts_unique_and_defanged(watcher, fx):
    watcher.start_waiting_for_log("watchfor /ALERT/\n    tweet\n")
    line = "ALERT login from http://evil.example.com/x?id=1 see www.example.org"
    watcher.write(line, line)
    assert fx.wait_for(lambda: len(fx.tweets) >= 2, 15), watcher.diag()
    posts = [t["text"] for t in fx.tweets]
    assert len(set(posts)) == 2                                # X's duplicate check passed
    for p in posts:
        assert extract_urls(p) == []                           # twitter-text sees no URL: $0.015, not $0.20
        assert "evil[.]example[.]com" in p
    assert watcher.dead() == []


def test_401_keeps_alerts_logs_once_and_sighup_after_reauthorize_delivers(watcher, fx, script, env, tw):
    p = watcher.start_waiting_for_log(ALICE)
    watcher.write("ALERT before")
    assert fx.wait_for(lambda: len(fx.dms) >= 1, 15), watcher.diag()
    fx.revoke(AT)
    watcher.write("ALERT during")
    assert fx.wait_for(lambda: any(r["path"].startswith(DM_PATH) and r["status"] == 401 for r in fx.requests), 15), \
        watcher.diag()
    time.sleep(0.5)
    assert len(fx.dms) == 1
    assert watcher.outbox_adds() >= 2 and watcher.dead() == []
    assert read_text(str(watcher.logfile)).count("(401") == 1, watcher.diag()
    # the admin does what the log says: --authorize, then SIGHUP
    r = cli(script, env, "--authorize", "--twitter-dir", tw, "--api-base", fx.base_url, input="1234567\n")
    assert r.returncode == 0, r.stderr
    n = len(fx.requests)
    p.send_signal(signal.SIGHUP)
    assert fx.wait_for(lambda: len(fx.dms) >= 2, 8), "after SIGHUP: %s\n%s" % (
        [(r["path"], r["status"], r["auth_error"]) for r in fx.requests[n:]], watcher.diag())
    assert alice_texts(fx) == ["[%s] ALERT before" % HOST, "[%s] ALERT during" % HOST]
