"""X as it answers in 2026, against the loopback fake (tests/fakex.py):

* 402 Payment Required (and a 403 that speaks of credits) is an ACCOUNT
  condition like 401: every message stays in the outbox, one CRITICAL line,
  a retry every 15 minutes and at SIGHUP;
* --check --online says, per DM recipient, whether they can receive DMs from
  the sender (user.fields=receives_your_dm);
* --dry-run never connects; it says the id is resolved at send time;
* lookups that break the rules (an id that is no number, a 200 with only
  errors[], a 400 in the OpenAPI Error shape) are read defensively;
* a refused DM (403) tells how to fix it: the recipient DMs the sender first.

Deliverer tests step it by hand on fake clocks (wall and monotonic), talking
HTTP to the fake; the CLI runs in-process through main() or as a subprocess.
"""

import io
import json
import logging
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import birdsentinel as bs
from fakes import FakeClock, read_text, wait_until
from fakex import NO_CREDITS_BODY, TOO_LONG_DETAIL, FakeX, write_creds

CK, CS, AT, ATS = "ck-x26", "cs-x26-SECRET", "999-at-x26", "ats-x26-SECRET"   # conftest scans for *-SECRET
ME = "sentinel_bot"
DM_PATH = "/2/dm_conversations"
HINT = "send @%s a DM first" % ME
# --send and the daemon do not spend a lookup on the sender's own handle
UNNAMED_HINT = "must send the sending account a DM first"
NOT_FOUND = "Could not find user with username"
NOT_A_NUMBER = re.compile(r"(?i)\bnot (?:a |an )?(?:number|numeric|integer)")
CREDITS_403 = {"title": "Forbidden", "type": "about:blank", "status": 403,
               "detail": "Your enrolled account [123] has used all of its credits for this request."}
ERROR_SHAPE = {"code": 123, "message": "Something X said"}        # OpenAPI 'Error', no problem fields
HOST = socket.gethostname().split(".")[0]


@pytest.fixture
def fx():
    f = FakeX(consumer_key=CK, consumer_secret=CS, access_token=AT, access_token_secret=ATS,
              users={"alice": "1001", "bob": "1002"}, me=("999", ME)).start()
    yield f
    f.stop()


@pytest.fixture
def tw(tmp_path):
    d = str(tmp_path / "twitter")
    write_creds(d, CK, CS, AT, ATS)
    return d


def dm_requests(fx):
    return [r for r in fx.requests if r["path"].startswith(DM_PATH)]


# ---- the Deliverer on fake clocks, over HTTP to the fake ---------------------

class Rig:
    def __init__(self, tmp_path, fx):
        self.clock = FakeClock(time.time(), 1000.0)
        self.fx = fx
        self.dead_path = str(tmp_path / "birdsentinel.dead")
        self.outbox_path = str(tmp_path / "birdsentinel.outbox")
        self.outbox = bs.Outbox(self.outbox_path, self.dead_path, fsync=False)
        self.outbox.load()
        self.state = bs.DeliveryState()
        # OAuth timestamps use real time: the fake checks them against its own clock
        client = bs.XClient(bs.Credentials(CK, CS, AT, ATS), fx.base_url, clock=time.time)
        self.d = bs.Deliverer(self.outbox, client, self.state, dict(bs.DEFAULT_BUDGET),
                              clock=self.clock.now, monotonic=self.clock.monotonic, rng=random.Random(7))

    def advance(self, s):
        self.clock.advance(s)

    def add(self, text, to="1001"):
        self.outbox.add("dm", to, text, self.clock.wall, None)

    def run(self, until=None, max_steps=60, cap=3600.0):
        """Step, jumping the clocks over each wait (at most `cap` seconds at a time)."""
        until = until or (lambda: len(self.outbox) == 0)
        for _ in range(max_steps):
            if until():
                return True
            w = self.d.step()
            if w > 0:
                self.advance(min(w, cap))
        return until()

    def pending_on_disk(self):
        ob = bs.Outbox(self.outbox_path, self.dead_path, fsync=False)
        ob.load()
        return [e["text"] for e in ob.entries.values()]

    def dead(self):
        return [json.loads(line) for line in read_text(self.dead_path).splitlines() if line.strip()]


@pytest.mark.parametrize("status, body", [(402, NO_CREDITS_BODY), (403, CREDITS_403)], ids=["402", "403-credits"])
def test_no_credits_keeps_every_message_retries_every_15_min_and_at_nudge(tmp_path, fx, logs, status, body):
    rig = Rig(tmp_path, fx)
    texts = ["alert %d" % i for i in range(5)]
    fx.inject(status=status, body=body, count=1000, path_prefix=DM_PATH)
    for t in texts:
        rig.add(t)
    rig.d.step()
    assert [r["status"] for r in dm_requests(fx)] == [status]
    # nothing more for the next 14 minutes: no back-off retries, nothing dead-lettered
    start = rig.clock.mono
    while rig.clock.mono - start < 14 * 60:
        w = rig.d.step()
        assert w > 0
        rig.advance(min(w, 60))
    assert len(dm_requests(fx)) == 1
    assert fx.dms == [] and len(rig.outbox) == 5 and rig.pending_on_disk() == texts
    assert rig.dead() == []
    rig.clock.mono = start + 15 * 60                             # every 15 minutes...
    rig.d.step()
    assert len(dm_requests(fx)) == 2
    assert rig.d.step() > 0 and len(dm_requests(fx)) == 2
    rig.d.nudge()                                                # ...and at SIGHUP
    rig.d.step()
    assert len(dm_requests(fx)) == 3
    assert len(rig.outbox) == 5 and rig.dead() == []
    crit = logs.only(logging.CRITICAL)
    assert len(crit) == 1, crit                                  # once, not per try
    assert "credits" in crit[0]
    if status == 402:
        assert "402" in crit[0]
    # the account has credits again: the next 15-minute retry drains it all, once, in order
    fx.clear_faults()
    rig.advance(15 * 60)
    assert rig.run()
    assert [d["text"] for d in fx.dms] == texts
    assert rig.dead() == [] and rig.pending_on_disk() == []


def test_unknown_user_is_dead_lettered_with_xs_detail(tmp_path, fx):
    rig = Rig(tmp_path, fx)
    rig.add("to nobody", to="@nobody")
    rig.add("to alice", to="@alice")
    assert rig.run()
    dead = rig.dead()
    assert [d["text"] for d in dead] == ["to nobody"]
    assert NOT_FOUND in dead[0]["reason"], dead[0]["reason"]
    assert [(d["to"], d["text"]) for d in fx.dms] == [("1001", "to alice")]


def test_user_id_that_is_not_a_number_is_neither_used_nor_cached(tmp_path, fx, logs):
    fx.user_id_override = "string"
    rig = Rig(tmp_path, fx)
    rig.add("m0", to="@alice")
    rig.run(max_steps=8)
    assert any(r["path"].startswith("/2/users/") for r in fx.requests)      # it did ask
    assert not any("string" in r["path"] for r in fx.requests), [r["path"] for r in fx.requests]
    assert fx.dms == []
    assert "@alice" not in rig.state.users and "string" not in rig.state.users.values()
    assert any(NOT_A_NUMBER.search(m) for m in logs.messages(logging.WARNING)), logs.messages(logging.DEBUG)


def test_error_shape_400_logs_xs_message_not_raw_json(tmp_path, fx, logs):
    resp = bs.XResponse(400, {}, json.dumps(ERROR_SHAPE).encode())
    assert "Something X said" in resp.detail() and "{" not in resp.detail()
    rig = Rig(tmp_path, fx)
    fx.inject(status=400, body=ERROR_SHAPE, count=1, path_prefix=DM_PATH)
    rig.add("m0")
    rig.add("m1")
    assert rig.run()
    lines = logs.messages(logging.ERROR, "Something X said")
    assert lines, logs.messages(logging.DEBUG)
    assert all("{" not in m and '"code"' not in m for m in lines), lines
    dead = rig.dead()
    assert [d["text"] for d in dead] == ["m0"]
    assert "Something X said" in dead[0]["reason"] and "{" not in dead[0]["reason"]
    assert [d["text"] for d in fx.dms] == ["m1"]


# ---- the command line in-process: --send, --check ----------------------------

def run_main(args, tmp_path, capsys):
    """main() with stdout in a StringIO and its log (stderr) taken by capsys; the
    logger's handlers are put back afterwards."""
    out = io.StringIO()
    saved = (list(bs.LOG.handlers), bs.LOG.level, bs.LOG.propagate)
    capsys.readouterr()
    try:
        code = bs.main([str(a) for a in args], env={"HOME": str(tmp_path)}, out=out)
    finally:
        for h in list(bs.LOG.handlers):
            bs.LOG.removeHandler(h)
        for h in saved[0]:
            bs.LOG.addHandler(h)
        bs.LOG.setLevel(saved[1])
        bs.LOG.propagate = saved[2]
    return code, out.getvalue(), capsys.readouterr().err


def send(fx, tw, tmp_path, capsys, *extra):
    return run_main(["--send", "hi"] + list(extra) + ["--twitter-dir", tw, "--api-base", fx.base_url],
                    tmp_path, capsys)


def test_send_to_unknown_user_exits_1_with_xs_detail(fx, tw, tmp_path, capsys):
    code, _out, err = send(fx, tw, tmp_path, capsys, "--to", "@nobody")
    assert code == 1, err
    assert NOT_FOUND in err, err
    assert dm_requests(fx) == []


def test_send_with_an_id_that_is_not_a_number_fails(fx, tw, tmp_path, capsys):
    fx.user_id_override = "string"
    code, _out, err = send(fx, tw, tmp_path, capsys, "--to", "@alice")
    assert code != 0
    assert not any("string" in r["path"] for r in fx.requests) and fx.dms == []
    assert NOT_A_NUMBER.search(err), err


def test_send_refused_dm_says_how_to_fix_it(fx, tw, tmp_path, capsys):
    fx.dm_refusers = {"1002"}
    code, _out, err = send(fx, tw, tmp_path, capsys, "--to", "@bob")
    assert code == 1, err
    assert [r["status"] for r in dm_requests(fx)] == [403]
    assert UNNAMED_HINT in err, err


@pytest.mark.parametrize("extra, want", [
    (["--to", "@alice"], "would dm @alice (id resolved at send time): hello"),
    (["--tweet"], "would post: hello"),
], ids=["dm", "post"])
def test_send_dry_run_makes_no_connection(fx, tw, tmp_path, capsys, extra, want):
    code, out, err = run_main(["--send", "hello", "--dry-run"] + extra + ["--twitter-dir", tw,
                                                                         "--api-base", fx.base_url],
                              tmp_path, capsys)
    assert fx.connections == 0 and fx.requests == [] and fx.dms == [] and fx.tweets == []
    assert code == 0, err
    lines = out.splitlines()
    assert any(ln.startswith(want) for ln in lines) if extra == ["--tweet"] else want in lines, out


def asked_receives_your_dm(rec, name, uid):
    q = rec["query"]
    if "receives_your_dm" not in q.get("user.fields", "").split(","):
        return False
    p = rec["path"].lower()
    return (p in ("/2/users/by/username/" + name, "/2/users/" + uid)
            or (p == "/2/users/by" and name in q.get("usernames", "").lower().split(",")))


def test_check_online_says_who_can_receive_dms(fx, tw, tmp_path, capsys):
    conf = tmp_path / "conf"
    conf.write_text("watchfor /x/\n    dm @alice @bob\n")
    sd = tmp_path / "sd"
    sd.mkdir()
    args = ["--check", "--online", "-c", conf, "--twitter-dir", tw, "--api-base", fx.base_url, "--script-dir", sd]
    code, out, err = run_main(args, tmp_path, capsys)            # both can: a clean check
    assert code == 0, out + err
    assert not [ln for ln in out.splitlines() if "cannot receive" in ln], out

    fx.dm_refusers = {"1002"}
    n = len(fx.requests)
    code, out, err = run_main(args, tmp_path, capsys)
    assert code == bs.EX_CONFIG, out + err
    lines = out.splitlines()
    alice = [ln for ln in lines if "@alice" in ln]
    assert alice and any("receive" in ln for ln in alice) and not any("cannot" in ln for ln in alice), out
    assert any("@bob cannot receive DMs from @%s" % ME in ln and HINT in ln for ln in lines), out
    assert "ok" not in lines
    for name, uid in (("alice", "1001"), ("bob", "1002")):
        assert any(asked_receives_your_dm(r, name, uid) for r in fx.requests[n:]), \
            [(r["path"], r["query"]) for r in fx.requests[n:]]
    assert dm_requests(fx) == []                                 # a check sends nothing


# ---- subprocesses: --examine --dry-run, the daemon ----------------------------

def test_examine_dry_run_makes_no_connection(script, env, fx, tw, tmp_path, secret_scan):
    conf = tmp_path / "conf"
    conf.write_text("watchfor /ALERT/\n    dm @alice\n    tweet\n")
    log = tmp_path / "app.log"
    log.write_text("ALERT disk full\nnoise\n")
    r = subprocess.run([sys.executable, script, "-c", str(conf), "--examine", str(log), "--dry-run",
                        "--script-dir", str(tmp_path / "sd"), "--twitter-dir", tw, "--api-base", fx.base_url],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    secret_scan.text("--examine --dry-run stdout", r.stdout)
    secret_scan.text("--examine --dry-run stderr", r.stderr)
    assert r.returncode == 0, r.stderr
    assert fx.connections == 0 and fx.requests == []
    lines = r.stdout.splitlines()
    assert any("@alice (id resolved at send time)" in ln and "ALERT disk full" in ln for ln in lines), r.stdout
    assert any(ln.startswith("would post: ") and "ALERT disk full" in ln for ln in lines), r.stdout


class Daemon:
    """The watcher in the foreground (-t LOG), logging to a file; SIGTERM at the end."""

    def __init__(self, script, env, fx, tw, tmp_path, scan):
        self.script, self.env, self.fx, self.tw, self.scan = script, env, fx, tw, scan
        self.sd = tmp_path / "sd"
        self.log = tmp_path / "app.log"
        self.conf = tmp_path / "conf"
        self.logfile = tmp_path / "birdsentinel.log"
        self.errfile = tmp_path / "stderr.txt"
        self.proc = None

    def start(self, conf_text):
        self.conf.write_text(conf_text)
        with open(str(self.errfile), "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, self.script, "-c", str(self.conf), "-t", str(self.log), "--script-dir", str(self.sd),
                 "--twitter-dir", self.tw, "--api-base", self.fx.base_url, "--log-file", str(self.logfile)],
                env=self.env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        # the log does not exist yet, so everything written to it later is new
        assert wait_until(lambda: "waiting for it" in read_text(str(self.logfile)) or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.diag()

    def write(self, *lines):
        with open(str(self.log), "a") as fh:
            fh.write("".join(line + "\n" for line in lines))

    def dead(self):
        return [json.loads(ln) for ln in read_text(str(self.sd / "birdsentinel.dead")).splitlines() if ln.strip()]

    def diag(self):
        return "log:\n%s\nstderr:\n%s" % (read_text(str(self.logfile))[-3000:], read_text(str(self.errfile))[-2000:])

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.scan.file("daemon log", str(self.logfile))
        self.scan.file("daemon stderr", str(self.errfile))


@pytest.fixture
def daemon(script, env, fx, tw, tmp_path, secret_scan):
    d = Daemon(script, env, fx, tw, tmp_path, secret_scan)
    yield d
    d.stop()


def test_daemon_402_keeps_alerts_then_sighup_delivers(daemon, fx):
    daemon.start("watchfor /ALERT/\n    dm @alice\n")
    fx.inject(status=402, body=NO_CREDITS_BODY, count=1, path_prefix=DM_PATH)
    daemon.write("ALERT one", "ALERT two")
    assert fx.wait_for(lambda: any(r["status"] == 402 for r in fx.requests), 15), daemon.diag()
    time.sleep(2.5)                     # a back-off (1-2 s at first) would have tried again by now
    assert [r["status"] for r in dm_requests(fx)] == [402], daemon.diag()
    assert fx.dms == [] and daemon.dead() == []
    crit = [ln for ln in read_text(str(daemon.logfile)).splitlines() if ": CRITICAL: " in ln]
    assert len(crit) == 1 and "402" in crit[0] and "credits" in crit[0], daemon.diag()
    daemon.proc.send_signal(signal.SIGHUP)                       # the admin bought credits
    assert fx.wait_for(lambda: len(fx.dms) >= 2, 10), daemon.diag()
    assert [d["text"] for d in fx.dms] == ["[%s] ALERT one" % HOST, "[%s] ALERT two" % HOST]
    assert daemon.dead() == []


def test_daemon_refused_and_unknown_recipients(daemon, fx):
    fx.dm_refusers = {"1002"}
    daemon.start("watchfor /NOBODY/\n    dm @nobody\nwatchfor /BOB/\n    dm @bob\n"
                 "watchfor /ALERT/\n    dm @alice\n")
    daemon.write("NOBODY one", "BOB two", "ALERT three")
    assert fx.wait_for(lambda: len(fx.dms) >= 1, 15), daemon.diag()
    assert wait_until(lambda: len(daemon.dead()) >= 2, 10), daemon.diag()
    dead = {d["to"]: d for d in daemon.dead()}
    assert set(dead) == {"@nobody", "@bob"}
    assert NOT_FOUND in dead["@nobody"]["reason"], dead["@nobody"]
    assert "You cannot send messages to this user." in dead["@bob"]["reason"]
    assert wait_until(lambda: UNNAMED_HINT in read_text(str(daemon.logfile)), 5), daemon.diag()
    assert [(d["to"], d["text"]) for d in fx.dms] == [("1001", "[%s] ALERT three" % HOST)]


# ---- the fake itself: what these tests rely on -------------------------------

def test_fake_user_lookups_report_receives_your_dm_and_ids(fx):
    fx.dm_refusers = {"1002"}
    c = bs.XClient(bs.Credentials(CK, CS, AT, ATS), fx.base_url)
    rd = {"user.fields": "receives_your_dm"}

    def data(path, query=None):
        r = c.call("GET", path, query=query)
        assert r.status == 200, (path, r.body)
        return r.json()

    assert data("/2/users/by/username/bob", rd)["data"]["receives_your_dm"] is False
    assert data("/2/users/by/username/alice", rd)["data"]["receives_your_dm"] is True
    assert "receives_your_dm" not in data("/2/users/by/username/bob")["data"]
    assert data("/2/users/1002", rd)["data"] == {"id": "1002", "name": "bob", "username": "bob",
                                                 "receives_your_dm": False}
    both = data("/2/users/by", {"usernames": "alice,bob", "user.fields": "receives_your_dm"})["data"]
    assert [(u["id"], u["receives_your_dm"]) for u in both] == [("1001", True), ("1002", False)]
    assert data("/2/users/me", rd)["data"]["id"] == "999"
    assert "errors" in data("/2/users/4242") and "data" not in data("/2/users/4242")
    assert c.call("GET", "/2/users/abc").status == 400
    assert fx.requests[0]["query"] == rd
    fx.user_id_override = "string"
    assert data("/2/users/by/username/alice")["data"]["id"] == "string"
    assert data("/2/users/1001")["data"]["id"] == "string"
    assert fx.connections == len(fx.requests)                   # urllib: one connection per request


def test_fake_402_and_post_length_oracle(fx):
    c = bs.XClient(bs.Credentials(CK, CS, AT, ATS), fx.base_url)
    fx.inject(status=402, body=NO_CREDITS_BODY, count=5, path_prefix="/2/tweets")
    r = c.post_tweet("first")
    assert r.status == 402 and r.json() == NO_CREDITS_BODY
    fx.clear_faults()
    assert c.post_tweet("first").status == 201
    assert c.post_tweet("\u5b57" * 140).status == 201           # 280
    assert fx.requests[-1]["weights"] == {"twitter_text": 280, "fakex": 280}
    r = c.post_tweet("\u5b57" * 141)                              # 282
    assert r.status == 400 and r.json()["detail"] == TOO_LONG_DETAIL
    assert c.post_tweet("bad \ufffe char").status == 400         # short, but not valid for twitter-text
    assert [t["text"] for t in fx.tweets] == ["first", "\u5b57" * 140]
