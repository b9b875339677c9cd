"""One commit point, and dirty state on disk within a second.

* An outbox entry becomes sendable only once the log offset after its line
  is durable too: the state file's "outbox_committed" is the highest outbox
  id whose lines its offsets cover.  At start-up the entries above it are
  dropped (their lines are read again), and the count is logged.
* A split DM journals {"op":"part","id":N,"n":K} after each part: after a
  kill -9 the next run goes on with part K+1 instead of sending parts again.
* What the sender changes without any log line arriving (X's rate-limit
  block, budget use, the user-id cache) reaches the state file within about
  a second, so a kill -9 right after a 429 does not forget the block.

The daemon tests run the real CLI against tests/fakex.py; every wait is
bounded and every process started here is killed in teardown.
"""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import birdsentinel as bs
from fakes import read_text, stop_processes, wait_until
from fakex import FakeX

DM_PATH = "/2/dm_conversations"
LOOKUP_PATH = "/2/users/by/username/"
ALICE = "watchfor /ALERT/\n    dm @alice\n"
TOO_MANY = {"title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank", "status": 429}


# ---- helpers ---------------------------------------------------------------

def read_json(path):
    """The JSON in a file, or None while it is missing or (never expected) torn."""
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def journal_records(path):
    """Every whole record of the outbox journal, in order."""
    out = []
    for line in read_text(path).splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def journal_pending_ids(path):
    """The ids the journal still holds: added and not done."""
    pending = set()
    for r in journal_records(path):
        if r.get("op") == "add":
            pending.add(r.get("id"))
        elif r.get("op") == "done":
            pending.discard(r.get("id"))
    return sorted(pending)


# ---- (1) start-up drops what the offsets do not cover -------------------------

def start_up(log, conf, sdir):
    """What a new run does before it tails anything: state, then outbox."""
    opts = bs.parse_args(["-t", log, "-c", conf, "--script-dir", sdir])
    app = bs.App(opts, {}, None)
    app.open_state(True, True)
    os.close(app.lock_fd)
    return app


@pytest.mark.parametrize("committed", [5, None], ids=["committed-5", "state-without-key"])
def test_outbox_entries_above_committed_id_dropped_at_start_up(tmp_path, logs, committed):
    log, conf, sdir = str(tmp_path / "app.log"), str(tmp_path / "rules.conf"), str(tmp_path / "state")
    with open(conf, "w") as fh:
        fh.write(ALICE)
    open(log, "wb").close()
    os.makedirs(sdir, mode=0o700)
    state_path = os.path.join(sdir, bs.STATE_NAME)
    outbox_path = os.path.join(sdir, bs.OUTBOX_NAME)
    ob = bs.Outbox(outbox_path, os.path.join(sdir, bs.DEAD_NAME), fsync=False)
    for i in range(12):                                       # ids 1..12
        ob.add("dm", "@alice", "[h] ALERT %d" % (i + 1), 1000.0 + i)
    ob.done([1, 2])
    ids = [r["id"] for r in journal_records(outbox_path) if r.get("op") == "add"]
    assert ids == list(range(1, 13)), "the journal did not get the adds: %r" % ids
    state = bs.State()
    state.files[log] = {"dev": 1, "ino": 2, "fp": "0:x", "offset": 0}
    state.outbox_committed = committed
    assert bs.StateStore(state_path).save(state)

    app = start_up(log, conf, sdir)
    kept = list(app.outbox.entries)
    if committed is None:
        # a state file from before "outbox_committed": its offsets were saved after
        # the (then fsynced) outbox, so every entry is covered and kept
        assert kept == list(range(3, 13))
        return
    assert kept == [3, 4, 5], "entries above outbox_committed=5 must be dropped at start-up: %r" % kept
    told = [m for m in (m.replace(str(tmp_path), "DIR") for m in logs.messages(logging.INFO))
            if re.search(r"\b7\b", m)]
    assert told, "the count of dropped entries (7) is not logged: %r" % logs.messages(logging.INFO)
    # gone from the journal too: a later, higher commit must not bring them back
    assert journal_pending_ids(outbox_path) == [3, 4, 5]
    state = bs.StateStore(state_path).load()[0]
    state.outbox_committed = 100
    assert bs.StateStore(state_path).save(state)
    again = start_up(log, conf, sdir)
    assert list(again.outbox.entries) == [3, 4, 5]


# ---- the daemon against the fake X ------------------------------------------------

class Daemon:
    """The real CLI on one log, one state dir, one fake X; logs to a file."""

    def __init__(self, script, tmp_path, fx, conf_text):
        self.script, self.dir, self.fx = script, tmp_path, fx
        self.log = str(tmp_path / "app.log")
        self.conf = str(tmp_path / "rules.conf")
        self.sdir = str(tmp_path / "state")
        self.creds = str(tmp_path / "creds")
        self.logfile = str(tmp_path / "birdsentinel.log")
        self.state_path = os.path.join(self.sdir, bs.STATE_NAME)
        self.outbox_path = os.path.join(self.sdir, bs.OUTBOX_NAME)
        fx.write_creds(self.creds)
        with open(self.conf, "w") as fh:
            fh.write(conf_text)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("CREDENTIALS_DIRECTORY", "BIRDSENTINEL_API_BASE", "XDG_STATE_HOME")}
        self.env["HOME"] = str(tmp_path)
        self.env["PYTHONDONTWRITEBYTECODE"] = "1"
        self.procs = []

    @property
    def proc(self):
        return self.procs[-1]

    def start(self):
        err = open(str(self.dir / ("stderr.%d" % len(self.procs))), "w")
        p = subprocess.Popen([sys.executable, self.script, "-t", self.log, "-c", self.conf,
                              "--script-dir", self.sdir, "--twitter-dir", self.creds,
                              "--api-base", self.fx.base_url, "--log-file", self.logfile],
                             env=self.env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        err.close()
        self.procs.append(p)
        return p

    def start_waiting_for_log(self):
        """First run with the log absent: everything written to it later is new."""
        assert not os.path.exists(self.log)
        p = self.start()
        assert wait_until(lambda: "waiting for it" in read_text(self.logfile) or p.poll() is not None, 15), \
            self.diag()
        assert p.poll() is None, self.diag()
        return p

    def kill9(self):
        p = self.proc
        p.send_signal(signal.SIGKILL)
        assert p.wait(timeout=10) == -signal.SIGKILL

    def write(self, *lines):
        with open(self.log, "a") as fh:
            fh.write("".join(line + "\n" for line in lines))

    def state(self):
        return read_json(self.state_path)

    def diag(self):
        errs = "".join(read_text(str(self.dir / ("stderr.%d" % i))) for i in range(len(self.procs)))
        reqs = [(r["method"], r["path"], r["status"], round(r["t"] % 1000, 2)) for r in list(self.fx.requests)]
        return "requests: %s\nlog:\n%s\nstderr:\n%s" % (reqs[-20:], read_text(self.logfile)[-3000:], errs[-2000:])

    def stop_all(self, scan=None):
        stop_processes(self.procs, timeout=10)
        if scan is not None:
            scan.file("commit-test daemon log", self.logfile)
            for i in range(len(self.procs)):
                scan.file("commit-test daemon stderr", str(self.dir / ("stderr.%d" % i)))


@pytest.fixture
def fx():
    f = FakeX(users={"alice": "1001"}).start()
    yield f
    f.stop()


@pytest.fixture
def daemon(script, tmp_path, fx, secret_scan):
    d = Daemon(script, tmp_path, fx, ALICE)
    yield d
    d.stop_all(secret_scan)


def dm_requests(fx):
    return [r for r in list(fx.requests) if r["path"].startswith(DM_PATH)]


def host_text(line):
    return "[%s] %s" % (socket.gethostname().split(".")[0], line)


# ---- (2) kill -9 two seconds after a 429 ----------------------------------------

def test_kill_9_after_429_keeps_the_block(daemon, fx):
    daemon.start_waiting_for_log()
    reset = int(time.time()) + 10
    fx.inject(status=429, count=1, path_prefix=DM_PATH, body=TOO_MANY,
              headers={"x-rate-limit-limit": "15", "x-rate-limit-remaining": "0", "x-rate-limit-reset": str(reset)})
    daemon.write("ALERT limited")
    assert fx.wait_for(lambda: any(r["status"] == 429 for r in dm_requests(fx)), 15), daemon.diag()
    t429 = [r for r in dm_requests(fx) if r["status"] == 429][0]["t"]
    time.sleep(max(0.0, t429 + 2.0 - time.time()))           # no log line since the one that matched
    daemon.kill9()
    assert time.time() < reset - 4, "too slow to test anything: the block is almost over"
    state = daemon.state()
    assert state is not None, "no state file after the kill"
    until = state.get("blocked_until", {}).get("dm")
    assert until is not None, ("2 s after a 429 with no log traffic the state file does not hold the block: "
                               "blocked_until=%r" % state.get("blocked_until"))
    assert reset - 1 <= float(until) <= reset + 5, (until, reset)

    restarted = time.time()
    daemon.start()
    assert fx.wait_for(lambda: len(fx.dms) >= 1, reset - time.time() + 20), daemon.diag()
    reqs = dm_requests(fx)
    early = [(round(r["t"] - reset, 2), r["status"]) for r in reqs[1:] if r["t"] < reset]
    assert not early, ("DM request(s) before X's reset (seconds vs reset, status), restarted %.1f s before it: %r"
                       % (reset - restarted, early))
    time.sleep(0.5)
    assert [d["text"] for d in fx.dms] == [host_text("ALERT limited")]


# ---- (3) the user-id cache and budget use, with no line after the alert ------------

def test_user_id_cache_on_disk_within_a_second(daemon, fx):
    daemon.start_waiting_for_log()
    daemon.write("ALERT one")
    assert fx.wait_for(lambda: len(fx.dms) >= 1, 15), daemon.diag()
    lookups = [r for r in list(fx.requests) if r["path"].startswith(LOOKUP_PATH)]
    assert len(lookups) == 1, daemon.diag()
    t_lookup = lookups[0]["t"]

    def cached():
        users = (daemon.state() or {}).get("users", {})
        return any("alice" in str(k).lower() and str(v) == "1001" for k, v in users.items())

    wait_until(cached, max(0.0, t_lookup + 1.5 - time.time()))
    assert cached(), ("1.5 s after @alice was resolved, with no line since, the state file's users are %r"
                      % (daemon.state() or {}).get("users"))
    # and it is what the next run uses: no second lookup after a kill -9
    daemon.kill9()
    daemon.start()
    daemon.write("ALERT two")
    assert fx.wait_for(lambda: len(fx.dms) >= 2, 15), daemon.diag()
    assert len([r for r in list(fx.requests) if r["path"].startswith(LOOKUP_PATH)]) == 1
    assert [d["text"] for d in fx.dms] == [host_text("ALERT one"), host_text("ALERT two")]


def test_budget_use_on_disk_within_a_second(daemon, fx):
    daemon.start_waiting_for_log()
    daemon.write("ALERT spent")
    assert fx.wait_for(lambda: len(fx.dms) >= 1, 15), daemon.diag()
    t_dm = fx.dms[0]["t"]

    def recorded():
        st = daemon.state() or {}
        sent = st.get("sent", {}).get("dm", [])
        return any(abs(float(t) - t_dm) < 5 for t in sent) and bool(st.get("spend"))

    wait_until(recorded, max(0.0, t_dm + 1.5 - time.time()))
    st = daemon.state() or {}
    assert recorded(), ("1.5 s after X accepted a DM, with no line since, the state file's budget use is "
                        "sent=%r spend=%r" % (st.get("sent"), st.get("spend")))


# ---- a split DM resumes at the next part after kill -9 -----------------------------

def test_split_dm_resumes_after_kill_9(daemon, fx):
    daemon.start_waiting_for_log()
    words = ["w%05d" % i for i in range(3500)]                 # a DM of 3 parts
    line = "ALERT " + " ".join(words)
    assert len(bs.message_parts("dm", host_text(line))) == 3

    def on_event(ev):                                          # part 3 hangs: the daemon waits for it
        if ev.get("event") == "dm" and ev["text"].endswith(" (2/3)"):
            fx.inject(hang=True, count=1, path_prefix=DM_PATH)
    fx.on_event = on_event
    daemon.write(line)
    assert fx.wait_for(lambda: any(r["fault"] for r in dm_requests(fx)), 15), daemon.diag()
    fx.on_event = None
    assert [d["text"][-6:] for d in fx.dms] == [" (1/3)", " (2/3)"]
    recs = journal_records(daemon.outbox_path)
    parts = [r for r in recs if r.get("op") == "part"]
    assert parts and parts[-1].get("n") == 2, "no {\"op\":\"part\",...,\"n\":2} record in the journal: %r" % [
        {k: v for k, v in r.items() if k != "text"} for r in recs]
    daemon.kill9()
    fx.clear_faults()
    daemon.start()
    assert fx.wait_for(lambda: len(fx.dms) >= 3, 15), daemon.diag()
    time.sleep(0.5)
    got = [d["text"][-6:] for d in fx.dms]
    assert got == [" (1/3)", " (2/3)", " (3/3)"], "parts X received, in order: %r" % got
