"""Crash consistency (issue 6): kill -9 at random moments loses no alert
and sends at most one message twice per kill, and an interrupted state or
outbox write never leaves a torn file.

* test_sigkill_daemon_delivers_every_alert: the real CLI tails a log that a
  writer thread keeps appending numbered alert lines to (one in ten so long
  that its DM goes in 2 or 3 parts); the daemon is SIGKILLed >= 24 times
  (seeded) and restarted each time, four ways in turn: at a random moment;
  at the instant the fake X server accepts a DM (between the send and its
  "done" record); at the instant it accepts one part of a split DM (between
  the part and its "part" record); and during the restarted daemon's first
  poll of the backlog (at its first new outbox record, before that run's
  first commit, or within 50 ms of its opening the log).  After the
  last restart every part of every alert reached the fake X server, nothing
  else was sent, and every part X received twice was the last message X
  accepted from a run that was then SIGKILLed: <= 1 duplicate per kill, 0
  lost.  The state file parsed after every kill; the figures are printed
  and written to tests/.figures/crash.json.
* kills during state writes: StateStore(path, writer=...) with a writer that
  runs the real atomic_write but "dies" (no clean-up runs) part-way through
  the temp file, before the fsync, before the rename or after it; and a real
  process SIGKILLed while it saves in a loop.  The file is always the old or
  the new state.
* kills during outbox appends: a journal cut at every byte of its last record
  loads every earlier record; a write cut part-way by a "kill" is skipped.
"""
import bisect
import errno
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import birdsentinel as bs
from fakes import print_figures, valid_state
from fakex import FakeX

SEED = 20240611
KILLS = 28                      # 7 of each way below
KILL_WAYS = ("timed", "at-dm", "at-part", "first-poll")
FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".figures")
ALERT_RE = re.compile(r"ALERT (\d+)\b")
TOKEN_RE = re.compile(r"\bx(\d+)-\d{4}\b")          # the filler of a long alert line names its alert
PART_RE = re.compile(r" \((\d+)/(\d+)\)$")           # ' (i/n)' ends each part of a split DM
LONG_CHARS = {2: 13000, 3: 24000}                    # line lengths whose DM goes in 2 and 3 parts
HOST = socket.gethostname().split(".")[0]             # what ActionRunner puts in front of each alert


# ---- helpers ---------------------------------------------------------------

def journal_pending(path):
    """The outbox journal's pending add records (id -> record) and the
    number of unreadable complete records, read without writing anything
    (Outbox.load compacts, which a test must not do under a live daemon)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return {}, 0
    pending, _last, unreadable = bs.parse_journal(raw)
    last_line = len(raw.split(b"\n")) - 1
    # only an unterminated last record may be torn
    return dict(pending), sum(1 for n in unreadable if n != last_line)


def alert_line(i, parts=1):
    """Alert number i; parts > 1 makes a line whose DM X gets in that many parts,
    each part naming the alert (ALERT i in the first, x<i>-NNNN words in all)."""
    head = "Jun 11 12:00:00 host app[42]: ALERT %d" % i
    if parts == 1:
        return head + " disk on fire"
    words, size, j = [head], len(head), 0
    while size < LONG_CHARS[parts]:
        w = " x%d-%04d" % (i, j)
        words.append(w)
        size += len(w)
        j += 1
    return "".join(words)


def dm_key(text):
    """(alert number, part, parts) of a DM text, or None for a DM that is no alert part."""
    m = PART_RE.search(text)
    part, parts = (int(m.group(1)), int(m.group(2))) if m else (1, 1)
    a = ALERT_RE.search(text) or TOKEN_RE.search(text)
    return (int(a.group(1)), part, parts) if a else None


def has_open(pid, path):
    """Whether process pid holds `path` open (it has started reading the log)."""
    fd_dir = "/proc/%d/fd" % pid
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(os.path.join(fd_dir, fd)) == path:
                return True
        except OSError:
            pass
    return False


def journal_last_id(path):
    """The highest outbox id the journal names."""
    try:
        with open(path, "rb") as fh:
            return bs.parse_journal(fh.read())[1]
    except FileNotFoundError:
        return 0


def newest_add_id(path):
    """The id of the newest add record in the journal's tail (0: none), read cheaply."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - (1 << 17)))
            tail = fh.read()
    except OSError:
        return 0
    for line in reversed(tail.split(b"\n")):
        if b'"add"' in line:
            try:
                rec = json.loads(line.decode("utf-8"))
                if rec.get("op") == "add":
                    return int(rec["id"])
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
                continue                    # torn, or cut by the tail's start
    return 0


class Daemon:
    """Starts, SIGKILLs and restarts the real CLI; every run logs to one file."""

    def __init__(self, script, argv, env, log_path):
        self.script, self.argv, self.env, self.log_path = script, argv, env, log_path
        self.proc = None
        self.runs = []          # (how it ended, returncode), one per run
        self.started = []       # time.time() just before each run's Popen

    def start(self):
        with open(self.log_path, "ab") as log:
            self.started.append(time.time())
            self.proc = subprocess.Popen([sys.executable, self.script] + self.argv, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return self.proc

    def kill(self, how):
        p = self.proc
        if p is None:
            return
        try:
            p.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        rc = p.wait(timeout=10)
        self.runs.append((how, rc))
        self.proc = None

    def stop(self):
        p = self.proc
        if p is None:
            return None
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait(timeout=10)
            self.runs.append(("sigterm-timeout", rc))
            self.proc = None
            return "timeout"
        self.runs.append(("sigterm", rc))
        self.proc = None
        return rc

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def log_text(self):
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")


@pytest.fixture
def fakex():
    fx = FakeX(users={"alice": "1001"}).start()
    fx.rate_limits["dm"] = 10 ** 9          # the fake's own 15-minute DM window is not under test
    yield fx
    fx.stop()


@pytest.fixture
def daemon_box():
    made = []
    yield made
    for d in made:
        d.cleanup()


# ---- the daemon under SIGKILL ------------------------------------------------

def test_long_alert_lines_make_two_and_three_parts():
    """The crash test's long lines are what it means them to be."""
    for i in (1, 7, 99, 12345):
        assert len(bs.message_parts("dm", bs.format_alert(HOST, alert_line(i)))) == 1
        for parts in (2, 3):
            line = alert_line(i, parts)
            assert len(line.encode()) < bs.MAX_LINE
            got = bs.message_parts("dm", bs.format_alert(HOST, line))
            assert len(got) == parts
            assert [dm_key(t) for t in got] == [(i, k, parts) for k in range(1, parts + 1)]
    assert dm_key(bs.format_alert(HOST, alert_line(42))) == (42, 1, 1)


@pytest.mark.slow
def test_sigkill_daemon_delivers_every_alert(tmp_path, script, fakex, daemon_box, secret_scan, request):
    rng = random.Random(SEED)
    log = str(tmp_path / "app.log")
    conf = str(tmp_path / "rules.conf")
    sdir = str(tmp_path / "state")
    creds = str(tmp_path / "creds")
    state_path = os.path.join(sdir, bs.STATE_NAME)
    outbox_path = os.path.join(sdir, bs.OUTBOX_NAME)
    fakex.write_creds(creds)
    with open(conf, "w") as fh:
        fh.write("budget dm_per_15m=100000,dm_per_day=1000000\n"
                 "watchfor /ALERT (\\d+)/\n"
                 "  dm @alice\n")
    open(log, "wb").close()
    env = {k: v for k, v in os.environ.items()
           if k not in ("CREDENTIALS_DIRECTORY", "BIRDSENTINEL_API_BASE")}
    env["HOME"] = str(tmp_path)
    d = Daemon(script, ["-t", log, "-c", conf, "--script-dir", sdir, "--twitter-dir", creds,
                        "--api-base", fakex.base_url], env, str(tmp_path / "daemon.log"))
    daemon_box.append(d)

    state_seen = [False]
    violations = []

    def read_state():
        try:
            with open(state_path, "rb") as fh:
                return json.loads(fh.read().decode("utf-8"))
        except (OSError, ValueError):
            return None

    def check_files(when):
        if os.path.exists(state_path + ".corrupt"):
            violations.append("%s: a state file was found corrupt and set aside" % when)
        try:
            with open(state_path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            if state_seen[0]:
                violations.append("%s: the state file disappeared" % when)
        else:
            state_seen[0] = True
            try:
                data = json.loads(raw.decode("utf-8"))
            except ValueError as exc:
                violations.append("%s: state file does not parse: %s (%d bytes)" % (when, exc, len(raw)))
            else:
                if not valid_state(data):
                    violations.append("%s: state file parses but is not a valid state" % when)
        _pending, bad = journal_pending(outbox_path)
        if bad:
            violations.append("%s: %d torn record(s) before the end of the outbox journal" % (when, bad))

    # First run: no state yet, so the tailer starts at the end of the log.
    # Feed non-matching lines until the offset is saved: from then on
    # every line is the daemon's to read.
    d.start()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    deadline = time.monotonic() + 30
    n = 0
    while True:
        os.write(fd, b"boot line %d\n" % n)
        n += 1
        try:
            with open(state_path) as fh:
                if log in json.load(fh).get("files", {}):
                    break
        except (OSError, ValueError):
            pass
        assert d.proc.poll() is None, "daemon exited while starting:\n" + d.log_text()
        assert time.monotonic() < deadline, "the daemon never saved its first offset:\n" + d.log_text()
        time.sleep(0.05)

    written = []                        # (alert number, parts of its DM)
    writing = threading.Event()
    writing.set()
    wrng = random.Random(SEED + 1)

    def writer():
        i = 0
        while writing.is_set():
            i += 1
            r = wrng.random()
            parts = 3 if r < 0.05 else 2 if r < 0.10 else 1
            os.write(fd, alert_line(i, parts).encode() + b"\n")
            written.append((i, parts))
            if wrng.random() < 0.9:
                time.sleep(wrng.uniform(0.002, 0.03))
            else:
                os.write(fd, b"Jun 11 12:00:00 host app[42]: all quiet %d\n" % i)

    wt = threading.Thread(target=writer, name="alert-writer", daemon=True)
    wt.start()

    armed = [None]                      # (process, way, which part) to kill at the next accepted DM
    arm_lock = threading.Lock()
    fired = {}                          # run index -> (way, key of the DM whose acceptance killed it)

    def on_event(ev):
        # Runs in the fake server before its answer goes out: the DM (or the
        # part) is accepted, the daemon has not yet journalled "done"/"part".
        if ev.get("event") != "dm":
            return
        key = dm_key(ev["text"])
        with arm_lock:
            if armed[0] is None:
                return
            p, way, which, run = armed[0]
            if way == "at-part":
                if key is None or key[2] < 2:
                    return
                if (which == "first") != (key[1] == 1):
                    return
            armed[0] = None
            try:
                p.send_signal(signal.SIGKILL)
                fired[run] = (way, key)
            except ProcessLookupError:
                pass

    fakex.on_event = on_event
    offsets = []                        # first-poll runs: (offset saved before the run, after its kill, trigger)
    first_poll_triggers = ("new-outbox-record", "log-opened")
    pre_max = 0                         # the highest outbox id before a first-poll run

    def saved_offset():
        entry = (read_state() or {}).get("files", {}).get(log)
        return entry.get("offset") if isinstance(entry, dict) else None
    undrained = 0
    at_part_n = 0
    try:
        for k in range(KILLS):
            way = KILL_WAYS[k % len(KILL_WAYS)]
            run = len(d.started) - 1
            how = way
            if way in ("at-dm", "at-part"):
                # kill when X accepts the next DM, or the next part of a split one:
                # alternately its first part and a later one (falls back to a timed kill)
                which = "first" if at_part_n % 2 else "later"
                if way == "at-part":
                    at_part_n += 1
                with arm_lock:
                    armed[0] = (d.proc, way, which, run)
                limit = time.monotonic() + 3.0
                while armed[0] is not None and time.monotonic() < limit:
                    time.sleep(0.005)
                with arm_lock:
                    if armed[0] is not None:
                        armed[0] = None
                        how = way + "-fallback"
            elif way == "first-poll":
                # The run was just started: kill it while it reads the backlog, either
                # at its first new outbox record (read, not yet committed), or within
                # 50 ms of its opening the log.
                p = d.proc
                trigger = first_poll_triggers[len(offsets) % 2]
                limit = time.monotonic() + 15
                while p.poll() is None and time.monotonic() < limit:
                    if (newest_add_id(outbox_path) > pre_max if trigger == "new-outbox-record"
                            else has_open(p.pid, log)):
                        break
                    time.sleep(0.0002)
                else:
                    assert p.poll() is None, "run %d exited by itself:\n%s" % (run, d.log_text()[-3000:])
                    how = "first-poll-fallback"
                time.sleep(rng.uniform(0.0, 0.003) if trigger == "new-outbox-record" else rng.uniform(0.0, 0.05))
            else:
                time.sleep(rng.uniform(0.03, 0.7))
            if run not in fired and d.proc.poll() is not None:
                pytest.fail("daemon run %d exited by itself with %s:\n%s"
                            % (run, d.proc.returncode, d.log_text()[-3000:]))
            d.kill(how)
            check_files("after kill %d (%s)" % (k + 1, how))
            if way == "first-poll":
                offsets[-1] = (offsets[-1][0], saved_offset(), offsets[-1][2])
            if KILL_WAYS[(k + 1) % len(KILL_WAYS)] == "first-poll":
                time.sleep(rng.uniform(0.1, 0.4))          # a backlog for the next run's first poll
                offsets.append((saved_offset(), None, first_poll_triggers[len(offsets) % 2]))
                pre_max = journal_last_id(outbox_path)
            # what the dead run sent is answered before the next run starts, so
            # every DM X accepts belongs to the last run started before it
            if not fakex.wait_for(lambda: not fakex._conns, 5.0):
                undrained += 1
            d.start()
    finally:
        writing.clear()
        wt.join(timeout=10)
        fakex.on_event = None
        os.close(fd)
    total = len(written)
    expected = {(i, part) for i, parts in written for part in range(1, parts + 1)}
    assert total > 100, "the writer wrote only %d alert lines" % total

    def keys():
        return [dm_key(dm["text"]) for dm in list(fakex.dms)]

    # Bounded wait until every part was delivered and the outbox is empty.
    # Give up early when deliveries stall for 10 s (a lost alert never comes).
    deadline = time.monotonic() + 60
    last_count, last_change = -1, time.monotonic()
    drained = False
    while time.monotonic() < deadline:
        got_now = keys()
        if expected <= {k[:2] for k in got_now if k}:
            drained = True
            break
        if len(got_now) != last_count:
            last_count, last_change = len(got_now), time.monotonic()
        elif time.monotonic() - last_change > 10:
            break
        time.sleep(0.05)
    if drained:
        limit = time.monotonic() + 30
        while journal_pending(outbox_path)[0] and time.monotonic() < limit:
            time.sleep(0.05)
    rc = d.stop()
    check_files("after the final SIGTERM")

    # ---- what X received, run by run ----------------------------------------
    dms = list(fakex.dms)
    dkeys = [dm_key(dm["text"]) for dm in dms]
    strays = [dm["text"][:80] for dm, key in zip(dms, dkeys) if key is None]
    last_copy = {}                      # (alert, part) -> index of the last copy X received
    for j, key in enumerate(dkeys):
        if key is not None:
            last_copy[key[:2]] = j
    run_of = [bisect.bisect_right(d.started, dm["t"]) - 1 for dm in dms]
    by_run = {}
    for j, r in enumerate(run_of):
        by_run.setdefault(r, []).append(j)
    ended = [how for how, _rc in d.runs]
    killed = [r for r in d.runs if not r[0].startswith("sigterm")]
    dup_violations = []
    dups_of_run = {}
    for r, js in sorted(by_run.items()):
        again = [j for j in js if dkeys[j] is not None and last_copy[dkeys[j][:2]] != j]
        dups_of_run[r] = len(again)
        how = ended[r] if r < len(ended) else "still running"
        for j in again:
            if j != js[-1] or how.startswith("sigterm"):
                dup_violations.append(
                    "alert %d part %d/%d: X received it again later, but this copy was message %d of "
                    "%d X accepted from run %d (ended: %s); only the last message of a killed run may "
                    "be sent again" % (dkeys[j][0], dkeys[j][1], dkeys[j][2], js.index(j) + 1, len(js), r, how))
    wrong_parts = sorted({(key[0], key[2]) for key in dkeys if key is not None
                          and key[0] <= total and key[2] != written[key[0] - 1][1]})
    missing = sorted(expected - set(last_copy))
    missing_alerts = sorted({i for i, _part in missing})
    duplicates = sum(dups_of_run.values())
    multipart_kills = 0
    for r, (how, _rc) in enumerate(d.runs):
        js = by_run.get(r)
        if how.startswith("sigterm") or not js:
            continue
        last = dkeys[js[-1]]
        if last is not None and last[2] > 1 and (last[1] < last[2] or r in fired or dups_of_run[r]):
            multipart_kills += 1
    first_poll = [how for how in ended if how.startswith("first-poll")]
    before_first_save = sum(1 for before, after, _t in offsets if after == before)
    left = len(journal_pending(outbox_path)[0])
    tmp_left = [n for n in os.listdir(sdir) if n.endswith(".tmp")]
    dead_path = os.path.join(sdir, bs.DEAD_NAME)
    dead = open(dead_path).read().splitlines() if os.path.exists(dead_path) else []
    figures = {
        "seed": SEED, "kills": len(killed), "kills_at_dm_accept": sum(1 for w, _k in fired.values() if w == "at-dm"),
        "kills_during_multipart": multipart_kills,
        "kills_at_part_accept": sum(1 for w, _k in fired.values() if w == "at-part"),
        "kills_in_first_poll": len(first_poll), "first_poll_kills_before_first_save": before_first_save,
        "first_poll_kills_at_new_outbox_record": sum(1 for _b, _a, t in offsets if t == "new-outbox-record"),
        "kill_fallbacks_to_timed": sum(1 for how in ended if how.endswith("-fallback")),
        "alerts": total, "alert_lines_written": total,
        "split_alerts": sum(1 for _i, parts in written if parts > 1),
        "parts_expected": len(expected), "alert_dms_received": len(dms),
        "delivered": total - len(missing_alerts), "distinct_alerts": len({key[0] for key in dkeys if key}),
        "missing": len(missing_alerts), "missing_parts": len(missing), "duplicates": duplicates,
        "duplicates_per_kill": round(duplicates / max(len(killed), 1), 3),
        "max_duplicates_in_one_kill": max(dups_of_run.values() or [0]),
        "left_in_outbox": left, "temp_files_left_by_kills": len(tmp_left), "dead_lettered": len(dead),
        "final_exit_status": rc, "runs_not_drained_before_restart": undrained,
    }
    os.makedirs(FIGURES, exist_ok=True)
    with open(os.path.join(FIGURES, "crash.json"), "w") as fh:
        json.dump(figures, fh, indent=2, sort_keys=True)
        fh.write("\n")
    print_figures(request, figures)

    text = d.log_text()
    secret_scan.file("crash-test daemon log", d.log_path)
    assert not violations, violations
    assert all(rc == -signal.SIGKILL for _how, rc in killed), d.runs
    assert len(killed) >= 24
    assert not missing, "%d part(s) of %d alert(s) never delivered, first %s; daemon log tail:\n%s" % (
        len(missing), len(missing_alerts), missing[:10], text[-3000:])
    assert not strays, "DMs that are no alert part: %r" % strays[:3]
    assert all(key[0] <= total for key in dkeys if key), "an alert for a line that was never written"
    assert not wrong_parts, "alerts split into another number of parts than expected: %r" % wrong_parts[:5]
    assert all(dm["to"] == "1001" for dm in dms)
    assert not dup_violations, "%d duplicate(s) over %d kills:\n%s" % (
        duplicates, len(killed), "\n".join(dup_violations[:10]))
    assert duplicates <= len(killed)
    assert multipart_kills >= 5, "only %d kill(s) landed in a split DM" % multipart_kills
    assert len(first_poll) >= KILLS // len(KILL_WAYS)
    assert before_first_save >= 1, "no first-poll kill landed before that run's first commit: %r" % offsets
    assert left == 0, "%d message(s) still wait in the outbox" % left
    assert not dead, dead[:3]
    assert rc == 0, "the last run did not stop cleanly on SIGTERM: %r" % rc
    assert "Traceback" not in text, text[text.index("Traceback") - 200:][:3000]
    assert "is corrupt" not in text


# ---- kills during state writes ---------------------------------------------

class Killed(BaseException):
    """A simulated SIGKILL: not an OSError, so nothing in birdsentinel may
    catch it; while it unwinds, clean-up file operations are disabled."""


class DyingAtomicWriter:
    """A StateStore writer that runs the real atomic_write and dies at a
    chosen point: part-way through the temp file's data, at the file's
    fsync, at the rename, or after the rename (before the directory fsync)."""

    POINTS = ("partial-data", "fsync", "chmod", "replace", "after-replace")

    def __init__(self, monkeypatch, rng):
        self.mp, self.rng = monkeypatch, rng
        self.point = None
        self.dead = False

    def __call__(self, path, data):
        point = self.point
        real_fdopen, real_fsync, real_replace = os.fdopen, os.fsync, os.replace
        real_chmod, real_unlink = os.chmod, os.unlink
        me = self

        class Cut:
            def __init__(self, fh):
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()
                return False

            def write(self, b):
                k = me.rng.randrange(0, len(b))
                self.fh.write(b[:k])
                self.fh.flush()
                me.die()

            def __getattr__(self, name):
                return getattr(self.fh, name)

        def fdopen(fd, *a, **kw):
            fh = real_fdopen(fd, *a, **kw)
            return Cut(fh) if point == "partial-data" else fh

        def fsync(fd):
            if point == "fsync":
                me.die()
            return real_fsync(fd)

        def chmod(p, mode, *a, **kw):
            if point == "chmod":
                me.die()
            return real_chmod(p, mode, *a, **kw)

        def replace(src, dst, *a, **kw):
            if point == "replace":
                me.die()
            real_replace(src, dst, *a, **kw)
            if point == "after-replace":
                me.die()

        def unlink(p, *a, **kw):
            if me.dead:                      # a killed process cleans nothing up
                raise OSError(errno.EIO, "process is dead")
            return real_unlink(p, *a, **kw)

        with self.mp.context() as m:
            m.setattr(os, "fdopen", fdopen)
            m.setattr(os, "fsync", fsync)
            m.setattr(os, "chmod", chmod)
            m.setattr(os, "replace", replace)
            m.setattr(os, "unlink", unlink)
            bs.atomic_write(path, data)

    def die(self):
        self.dead = True
        raise Killed()


def test_state_write_killed_at_random_points_leaves_old_or_new(tmp_path, monkeypatch):
    rng = random.Random(SEED)
    path = str(tmp_path / "birdsentinel.state")
    writer = DyingAtomicWriter(monkeypatch, rng)
    store = bs.StateStore(path, writer=writer)
    current = None                           # what is on disk: None = no file yet
    outcomes = {"old": 0, "new": 0}
    for i in range(200):
        state = bs.State(outbox_committed=i)
        state.files["/var/log/x"] = {"dev": 1, "ino": 2, "fp": "0:x", "offset": i}
        state.delivery.users = {"@u%d" % j: str(j) for j in range(rng.randrange(0, 60))}   # sizes vary
        writer.point = rng.choice(DyingAtomicWriter.POINTS + (None,))
        writer.dead = False
        try:
            ok = store.save(state)
        except Killed:
            ok = None
        if writer.point is None:
            assert ok is True
        else:
            assert ok is None, "the simulated kill at %s was swallowed" % writer.point
        loaded, found = bs.StateStore(path).load()      # the next run
        assert not os.path.exists(path + ".corrupt"), "kill at %s left a torn state file" % writer.point
        if current is None and not found:
            outcome = "old"
        else:
            assert found
            outcome = "new" if loaded.outbox_committed == i else "old"
            if outcome == "old":
                assert loaded == current
            else:
                assert loaded == state
        if writer.point in (None, "after-replace"):
            assert outcome == "new", "kill %s: the new state should be committed" % writer.point
        else:
            assert outcome == "old", "kill %s: the old state should remain" % writer.point
        outcomes[outcome] += 1
        if outcome == "new":
            current = loaded
    assert outcomes["old"] > 20 and outcomes["new"] > 20
    print("state-write kills:", outcomes)


def test_state_writer_dying_with_partial_temp_file(tmp_path):
    """The brief's literal case: a writer that leaves a partial temp file
    beside the state file and raises.  StateStore never writes the state
    path itself, and load ignores the leftovers."""
    rng = random.Random(SEED + 7)
    path = str(tmp_path / "birdsentinel.state")
    good = bs.State(outbox_committed=41)
    assert bs.StateStore(path).save(good)

    def dying(p, data):
        fd, tmp = tempfile.mkstemp(prefix=".birdsentinel-", suffix=".tmp", dir=os.path.dirname(p))
        os.write(fd, data[:rng.randrange(0, len(data))])
        os.close(fd)
        raise Killed()

    store = bs.StateStore(path, writer=dying)
    for i in range(20):
        new = bs.State(outbox_committed=100 + i)
        with pytest.raises(Killed):
            store.save(new)
        loaded, found = bs.StateStore(path).load()
        assert found and loaded.outbox_committed == 41
        assert not os.path.exists(path + ".corrupt")
    # the leftovers do not get in the way of the next run's saves
    store = bs.StateStore(path)
    new = bs.State(outbox_committed=42)
    assert store.save(new)
    assert bs.StateStore(path).load()[0].outbox_committed == 42


SAVER = r"""
import os, sys
sys.path.insert(0, sys.argv[2])
import birdsentinel as bs
store = bs.StateStore(sys.argv[1])
i = int(sys.argv[3])
pad = "x" * 20000                     # a write big enough to be caught mid-way
while True:
    st = bs.State(outbox_committed=i)
    st.delivery.users = {"pad": pad, "seq": str(i)}
    if not store.save(st):
        sys.exit(3)
    os.write(1, b"%d\n" % i)
    i += 1
"""


@pytest.mark.slow
def test_state_saver_process_sigkilled_mid_write(tmp_path):
    """A real process saving in a tight loop, SIGKILLed 30 times: each time
    the file holds the last acknowledged save or the one after it."""
    rng = random.Random(SEED + 3)
    path = str(tmp_path / "birdsentinel.state")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    next_seq = 1
    for k in range(30):
        p = subprocess.Popen([sys.executable, "-c", SAVER, path, root, str(next_seq)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # wait for the first acknowledged save, then kill at a random moment
            first = p.stdout.readline()
            assert first, "saver died: %s" % p.stderr.read().decode()
            time.sleep(rng.uniform(0.0, 0.05))
            p.send_signal(signal.SIGKILL)
            out = first + p.stdout.read()
            p.wait(timeout=10)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()
        acked = [int(x) for x in out.split()]
        last = acked[-1]
        with open(path, "rb") as fh:
            data = json.loads(fh.read().decode("utf-8"))          # never torn
        assert valid_state(data)
        assert data["outbox_committed"] in (last, last + 1), (k, last, data["outbox_committed"])
        assert data["users"]["seq"] == str(data["outbox_committed"])
        next_seq = data["outbox_committed"] + 1


# ---- kills during outbox appends ---------------------------------------------

def _outbox_ops(ob, rng, n):
    """Random adds and dones; returns the expected pending ids."""
    for _ in range(n):
        if ob.entries and rng.random() < 0.4:
            ob.done([rng.choice(list(ob.entries))])
        else:
            ob.add("dm", "@alice", "[h] ALERT %d" % ob.next_id, 1000.0 + ob.next_id)
    return list(ob.entries)


def test_outbox_torn_last_record_at_every_byte(tmp_path):
    rng = random.Random(SEED)
    base = str(tmp_path / "birdsentinel.outbox")
    dead = str(tmp_path / "birdsentinel.dead")
    ob = bs.Outbox(base, dead, fsync=False)
    before = _outbox_ops(ob, rng, 40)
    with open(base, "rb") as fh:
        journal = fh.read()
    # the next record, as _append would write it
    for last in ({"op": "add", "id": ob.next_id, "kind": "dm", "to": "@alice", "text": "[h] ALERT tail \u00e9",
                  "t": 5.0},
                 {"op": "done", "id": before[0]}):
        rec = json.dumps(last, separators=(",", ":")).encode("utf-8") + b"\n"
        for cut in range(len(rec) + 1):
            path = str(tmp_path / "cut.outbox")
            with open(path, "wb") as fh:
                fh.write(journal + rec[:cut])
            os.chmod(path, 0o600)                # birdsentinel refuses an outbox others can read
            loaded = bs.Outbox(path, dead, fsync=False)
            loaded.load()
            if cut >= len(rec) - 1:          # the record is whole (its newline is optional)
                expect = before + [last["id"]] if last["op"] == "add" else before[1:]
            else:
                expect = before
            assert list(loaded.entries) == expect, "cut at byte %d of %r" % (cut, rec)
            for i in expect:
                if i in ob.entries:
                    assert loaded.entries[i]["text"] == ob.entries[i]["text"]
            # after the load, new records are not glued to the torn one
            new = loaded.add("dm", "@alice", "after", 6.0)
            again = bs.Outbox(path, dead, fsync=False)
            again.load()
            assert list(again.entries) == expect + [new["id"]]
            assert new["id"] > max(before)


def test_outbox_append_killed_part_way(tmp_path, monkeypatch):
    """os.write cut short by a kill: the partial record is skipped on load,
    nothing earlier is lost, and ids are not reused."""
    rng = random.Random(SEED + 5)
    path = str(tmp_path / "birdsentinel.outbox")
    dead = str(tmp_path / "birdsentinel.dead")
    for trial in range(30):
        if os.path.exists(path):
            os.unlink(path)
        ob = bs.Outbox(path, dead, fsync=False)
        kept = _outbox_ops(ob, rng, rng.randrange(1, 15))
        real_write = os.write
        whole = []

        def cut_write(fd, data):
            k = rng.randrange(0, len(data))
            real_write(fd, bytes(data)[:k])
            whole.append(k == len(data) - 1)    # all but the newline: the record is complete
            raise Killed()

        monkeypatch.setattr(os, "write", cut_write)
        try:
            with pytest.raises(Killed):
                if kept and rng.random() < 0.5:
                    committed = kept[1:]
                    ob.done([kept[0]])
                else:
                    committed = kept + [ob.next_id]
                    ob.add("dm", "@alice", "[h] ALERT killed", 9.0)
        finally:
            monkeypatch.setattr(os, "write", real_write)
        loaded = bs.Outbox(path, dead, fsync=False)
        loaded.load()
        assert list(loaded.entries) == (committed if whole[0] else kept), trial
        assert loaded.next_id >= max(kept + [0]) + 1
