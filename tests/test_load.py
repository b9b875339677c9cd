"""Load: a flood while X is down (bounded outbox, losses counted and sent
first), SIGTERM under a 200 MB burst (bounded reads), a keep_open reader that
stops reading, a script dir that fills up mid-flood.  The daemon runs as a
subprocess against tests/fakex.py; the disk-full test mounts a 2 MiB tmpfs
(root, as here and in CI).  Every wait is bounded; teardown kills what is left."""
import ctypes
import errno
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

import birdsentinel as bs
from fakes import print_figures, read_text, wait_until
from fakex import FakeX, write_creds

CK, CS, AT, ATS = "ck-load", "cs-load-SECRET", "999-at-load", "ats-load-SECRET"
DM_PATH = "/2/dm_conversations"
HOST = socket.gethostname().split(".")[0]
BUDGET = "budget dm_per_15m=1000000,dm_per_day=1000000\n"      # no digests: one DM per alert
FIGURES = {}


@pytest.fixture(scope="module", autouse=True)
def _figures(request):
    yield
    print_figures(request, FIGURES)


@pytest.fixture
def fx():
    f = FakeX(consumer_key=CK, consumer_secret=CS, access_token=AT, access_token_secret=ATS,
              users={"alice": "1001"}, me=("999", "sentinel_bot")).start()
    f.rate_limits["dm"] = 10 ** 6
    yield f
    f.stop()


class Daemon:
    """birdsentinel -t ... as a subprocess; one log file for all its runs."""

    def __init__(self, tmp_path, script, secret_scan):
        self.dir, self.script, self.scan = tmp_path, script, secret_scan
        self.logfile = str(tmp_path / "birdsentinel.log")
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("BIRDSENTINEL_API_BASE", "CREDENTIALS_DIRECTORY", "XDG_STATE_HOME")}
        self.env.update(HOME=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
        self.procs, self.scanned = [], []

    def start(self, conf, tails, sd, fx=None, stdout=None):
        argv = [sys.executable, self.script, "-c", conf, "--script-dir", sd, "--log-file", self.logfile]
        argv += [a for t in tails for a in ("-t", t)]
        if fx is not None:
            tw = str(self.dir / "twitter")
            if not os.path.isdir(tw):
                write_creds(tw, CK, CS, AT, ATS)
            argv += ["--twitter-dir", tw, "--api-base", fx.base_url]
        err_path = str(self.dir / ("stderr.%d" % len(self.procs)))
        with open(err_path, "w") as err:
            p = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                 stdout=stdout if stdout is not None else err, stderr=err)
        self.procs.append(p)
        self.scanned.append(err_path)
        return p

    def log(self):
        return read_text(self.logfile)

    def diag(self):
        errs = "".join(read_text(e) for e in self.scanned)[-2000:]
        return "log:\n%s\nstderr:\n%s" % (self.log()[-3000:], errs)

    def wait_log(self, p, *words, timeout=20):
        ok = wait_until(lambda: all(w in self.log() for w in words) or p.poll() is not None, timeout)
        assert ok and p.poll() is None, "waiting for %r: %s" % (words, self.diag())

    def term(self, p):
        """SIGTERM; (exit status, seconds until the process was gone)."""
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.returncode if wait_until(lambda: p.poll() is not None, 20) else "hung"   # stop_all kills it
        return rc, time.monotonic() - t0

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        for path in [self.logfile] + self.scanned:
            self.scan.file("load daemon output", path)


@pytest.fixture
def daemon(tmp_path, script, secret_scan):
    d = Daemon(tmp_path, script, secret_scan)
    yield d
    d.stop_all()


def vm_kb(pid, key="VmHWM"):
    m = re.search(r"^%s:\s+(\d+)" % key, read_text("/proc/%d/status" % pid), re.M)
    return int(m.group(1)) if m else None


def saved_offset(sd, path):
    try:
        return int(json.loads(read_text(os.path.join(sd, bs.STATE_NAME)))["files"][path]["offset"])
    except (ValueError, KeyError, TypeError):
        return None


def journal(sd):
    """Live alerts of the outbox journal in order, and the numbers of its torn
    lines that whole records follow (a record written after a torn one is lost)."""
    path = os.path.join(sd, bs.OUTBOX_NAME)
    raw = open(path, "rb").read() if os.path.exists(path) else b""
    entries, _last, bad = bs.parse_journal(raw)
    rest = raw.split(b"\n")
    return ([e for e in entries.values() if e.get("op", "add") == "add"],
            [n for n in bad if any(line.strip() for line in rest[n + 1:])])


def write(path, data):
    """Append bytes, or write a text file."""
    with open(path, "ab" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)


def fixed_line(word, n, length):
    head = b"%s %07d " % (word, n)
    return head + b"x" * (length - 1 - len(head)) + b"\n"


def alice(fx, summaries=True):
    return [d["text"] for d in fx.dms if d["to"] == "1001" and (summaries or "not kept" not in d["text"])]


class Sampler(threading.Thread):
    """Peak VmHWM of a process, and the most live alerts ever seen in the outbox."""

    def __init__(self, pid, sd=None):
        super().__init__(daemon=True)
        self.pid, self.sd, self.hwm, self.most, self.done = pid, sd, 0, 0, threading.Event()
        self.start()

    def run(self):
        n = 0
        while not self.done.wait(0.02):
            self.hwm, n = max(self.hwm, vm_kb(self.pid) or 0), n + 1
            if self.sd and n % 10 == 0:
                self.most = max(self.most, len(journal(self.sd)[0]))

    def stop(self):
        self.done.set()
        self.join(5)


def test_flood_while_x_is_down(daemon, fx, tmp_path):
    N, LEN, CAP, K = 200000, 100, 2000, 100
    log, sd, conf = str(tmp_path / "app.log"), str(tmp_path / "sd"), str(tmp_path / "rules.conf")
    text = BUDGET + "outbox max_entries=%d\nwatchfor /FLOOD/\n    dm @alice\n" % CAP
    write(conf, text)
    dm_line = text.splitlines().index("    dm @alice") + 1
    fx.inject(status=503, count=10 ** 9, path_prefix=DM_PATH)           # X is down for DMs
    p = daemon.start(conf, [log], sd, fx)
    daemon.wait_log(p, "waiting for it")
    lines = [fixed_line(b"FLOOD", i, LEN) for i in range(N)]
    data = b"".join(lines)
    s1 = Sampler(p.pid, sd)
    write(log, data)                                             # 20 MB at once
    # SIGTERM mid-flood: past the cap, a quarter of the flood read
    assert wait_until(lambda: p.poll() is not None or ("outbox full" in daemon.log() and
                                                      (saved_offset(sd, log) or 0) >= len(data) // 4), 40), \
        "never full or never a quarter read (offset %s): %s" % (saved_offset(sd, log), daemon.diag())
    assert p.poll() is None, daemon.diag()
    hwm1 = vm_kb(p.pid) or 0
    rc, secs = daemon.term(p)
    s1.stop()
    read1 = saved_offset(sd, log)
    FIGURES.update(flood_sigterm_s=round(secs, 3), flood_read_at_sigterm=read1 and read1 // LEN,
                   flood_vmhwm_kb_run1=max(hwm1, s1.hwm))
    assert rc == 0, daemon.diag()
    assert secs < 1.0, "SIGTERM during the flood took %.2f s" % secs
    assert read1 is not None and read1 % LEN == 0 and 0 < read1 <= len(data), read1
    full = [l for l in daemon.log().splitlines() if "ERROR" in l and "outbox full" in l]
    assert len(full) == 1, full                                  # once per episode
    kept, torn = journal(sd)
    FIGURES.update(flood_kept=len(kept), flood_most_seen=s1.most)
    assert s1.most <= CAP and len(kept) <= CAP, (s1.most, len(kept))
    assert len(kept) >= CAP - 5, "the outbox did not fill up to its cap: %d" % len(kept)
    assert torn == []
    assert [e["text"] for e in kept] == ["[%s] %s" % (HOST, l.decode()[:-1]) for l in lines[:len(kept)]]   # oldest kept, in order

    fx.clear_faults()                                            # X is back
    p2 = daemon.start(conf, [log], sd, fx)
    s2 = Sampler(p2.pid)
    assert fx.wait_for(lambda: len(alice(fx, False)) >= K, 40), "%d DMs: %s" % (len(alice(fx)), daemon.diag())
    got = alice(fx)
    assert "not kept" in got[0], got[:2]
    m = re.search(r"dm at %s line %d: (\d+)" % (re.escape(conf), dm_line), got[0])
    assert m, got[0]
    lost = int(m.group(1))
    FIGURES["flood_summary_count"] = lost
    assert read1 // LEN - len(kept) <= lost <= N - len(kept), (lost, read1 // LEN, len(kept))
    alerts = [t for t in got if "not kept" not in t]            # later summaries: the flood goes on
    FIGURES["flood_summaries_in_first_dms"] = len(got) - len(alerts)
    assert alerts[:K] == [e["text"] for e in kept[:K]]
    assert wait_until(lambda: saved_offset(sd, log) == len(data), 30), \
        "the rest of the flood was not read: offset %s of %d" % (saved_offset(sd, log), len(data))
    hwm2 = vm_kb(p2.pid) or 0
    rc2, _secs2 = daemon.term(p2)
    s2.stop()
    peak = max(hwm1, s1.hwm, hwm2, s2.hwm)
    FIGURES["flood_vmhwm_kb"] = peak
    assert rc2 == 0, daemon.diag()
    assert peak < 60 * 1024, "peak RSS %d KiB" % peak


def test_sigterm_within_a_second_under_a_burst(daemon, tmp_path):
    LEN, TOTAL = 50, 200 << 20
    BLOCK = 10 * LEN                                             # one "hit" line, then nine that miss
    log, sd, conf = str(tmp_path / "burst.log"), str(tmp_path / "sd"), str(tmp_path / "rules.conf")
    out_path = str(tmp_path / "echo.out")
    write(conf, "watchfor /^MATCH \\d+ hit/\n    echo\n")          # misses share the literal: no cheap skip
    # stdout to a file, not /dev/null: the echoed lines say what the daemon processed
    with open(out_path, "wb") as out:
        p = daemon.start(conf, [log], sd, stdout=out)
    daemon.wait_log(p, "waiting for it")

    def line(n, word):
        head = b"MATCH %07d %s " % (n, word)
        return head + b"x" * (LEN - 1 - len(head)) + b"\n"

    miss = line(0, b"miss") * 9
    t0 = time.monotonic()
    with open(log, "ab") as fh:
        for k0 in range(0, TOTAL // BLOCK, 8192):                # 4 MB at a time, as fast as we can
            fh.write(b"".join(line(k, b"hit") + miss for k in range(k0, k0 + 8192)))
    FIGURES["burst_write_s"] = round(time.monotonic() - t0, 2)
    assert wait_until(lambda: os.path.getsize(out_path) > 0 or p.poll() is not None, 30), daemon.diag()
    assert p.poll() is None, daemon.diag()
    rc, secs = daemon.term(p)
    size = os.path.getsize(log)
    off = saved_offset(sd, log)
    echoed = [int(l.split()[1]) for l in read_text(out_path).splitlines() if l.startswith("MATCH")]
    FIGURES.update(burst_sigterm_s=round(secs, 3), burst_backlog_mb_at_exit=(size - (off or 0)) >> 20,
                   burst_echoed=len(echoed))
    assert rc == 0, daemon.diag()
    assert secs < 1.0, "SIGTERM under a burst took %.2f s" % secs
    assert off is not None and 0 < off <= size, (off, size)
    assert echoed == list(range(len(echoed))), "echoed out of order or with gaps"
    processed = echoed[-1] * BLOCK + LEN                         # at least up to the last echoed line
    assert off >= processed - bs.MAX_POLL_READ - (1 << 16), "offset %d lags %d processed" % (off, processed)
    assert off <= len(echoed) * BLOCK, "the saved offset covers a hit line never echoed"
    os.unlink(log)          # its dirty pages would slow every fsync of the tests after this one


WRITE_ARG1 = """import json, os, sys
with open(sys.argv[1] + ".tmp", "w") as fh:
    json.dump([os.getpid()] + sys.argv[2:], fh)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
"""
STALL = WRITE_ARG1 + """open(sys.argv[1] + ".all", "a").write("%d\\n" % os.getpid())
import time; time.sleep(600)        # never reads its standard input
"""


def running(pid, marker):
    """The process is alive (not a zombie) and is the one we mean."""
    stat = read_text("/proc/%d/stat" % pid).rsplit(")", 1)
    return len(stat) == 2 and stat[1].split()[0] != "Z" and marker in read_text("/proc/%d/cmdline" % pid)


def test_stalled_keep_open_reader_does_not_stop_the_watcher(daemon, tmp_path):
    a, b, sd, conf = (str(tmp_path / n) for n in ("a.log", "b.log", "sd", "rules.conf"))
    stall, rec = str(tmp_path / "stall.py"), str(tmp_path / "record.py")
    pid_file, rec_out = str(tmp_path / "stall.pid"), str(tmp_path / "record.out")
    write(stall, STALL)
    write(rec, WRITE_ARG1)
    write(conf, "watchfor /FILL/\n    pipe %s %s %s,keep_open=1\nwatchfor /PING/\n    exec %s %s %s $_\n"
          % (sys.executable, stall, pid_file, sys.executable, rec, rec_out))
    p = daemon.start(conf, [a, b], sd)
    try:
        daemon.wait_log(p, a + " does not exist", b + " does not exist")
        write(a, b"".join(fixed_line(b"FILL", i, 100) for i in range(3000)))   # 300 KB >> a 64 KiB pipe
        assert wait_until(lambda: os.path.exists(pid_file), 30), daemon.diag()
        pid = json.loads(read_text(pid_file))[0]
        time.sleep(0.5)                                          # the pipe is full by now
        t0 = time.monotonic()
        write(b, b"PING from b\n")
        assert wait_until(lambda: os.path.exists(rec_out), 10), "B was not watched: " + daemon.diag()
        FIGURES["stall_other_file_s"] = round(time.monotonic() - t0, 2)
        assert json.loads(read_text(rec_out))[1:] == ["PING from b"]
        assert wait_until(lambda: "stopped reading" in daemon.log(), 15), daemon.diag()
        FIGURES["stall_reported_s"] = round(time.monotonic() - t0, 2)
        assert wait_until(lambda: not running(pid, "stall.py"), 5), "the stalled reader was not killed"
        assert p.poll() is None, daemon.diag()
        rc, secs = daemon.term(p)
        FIGURES["stall_sigterm_s"] = round(secs, 3)
        assert rc == 0, daemon.diag()
        assert secs < 2.0, "SIGTERM took %.2f s" % secs
    finally:                                                     # the daemon first: it may start another
        daemon.stop_all()
        for q in map(int, read_text(pid_file + ".all").split()):
            if running(q, "stall.py"):
                os.kill(q, signal.SIGKILL)


IN_MOVED_TO, IN_CREATE = 0x80, 0x100


class DirEvents(threading.Thread):
    """inotify(7) on a directory: (time, mask, name) of each file created or
    renamed into it; and the outbox's inode, sampled every 10 ms."""

    def __init__(self, directory):
        super().__init__(daemon=True)
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0 and libc.inotify_add_watch(self.fd, os.fsencode(directory),
                                                       IN_CREATE | IN_MOVED_TO) >= 0
        self.outbox = os.path.join(directory, bs.OUTBOX_NAME)
        self.events, self.inodes, self.done = [], [], threading.Event()   # inodes: (time, st_ino) at each change
        self.start()

    def run(self):
        while not self.done.is_set():
            try:
                ino = os.stat(self.outbox).st_ino
            except OSError:
                ino = None
            if ino is not None and (not self.inodes or self.inodes[-1][1] != ino):
                self.inodes.append((time.monotonic(), ino))
            if select.select([self.fd], [], [], 0.01)[0]:
                data, off, now = os.read(self.fd, 1 << 16), 0, time.monotonic()
                while off + 16 <= len(data):
                    _wd, mask, _cookie, n = struct.unpack_from("iIII", data, off)
                    self.events.append((now, mask, data[off + 16:off + 16 + n].rstrip(b"\0").decode()))
                    off += 16 + n

    def count(self, mask, pred, t0=0, t1=1e18):
        return sum(1 for t, m, name in self.events if t0 <= t <= t1 and m & mask and pred(name))

    def stop(self):
        self.done.set()
        self.join(5)
        os.close(self.fd)


def test_disk_full_during_flood_loses_nothing_and_resumes(daemon, fx, tmp_path, secret_scan):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    sd, log, conf = str(tmp_path / "sd"), str(tmp_path / "app.log"), str(tmp_path / "rules.conf")
    os.mkdir(sd, 0o700)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", sd],
                       capture_output=True, text=True)
    if r.returncode != 0:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("cannot mount a tmpfs: " + r.stderr)
    events = None
    try:
        write(conf, BUDGET + "watchfor /FLOOD/\n    dm @alice\n")
        fx.inject(status=503, count=10 ** 9, path_prefix=DM_PATH)
        events = DirEvents(sd)
        p = daemon.start(conf, [log], sd, fx)
        daemon.wait_log(p, "waiting for it")
        n = [0]

        def flood(count):
            write(log, b"".join(fixed_line(b"FLOOD", n[0] + i, 120) for i in range(count)))
            n[0] += count

        flood(200)
        assert wait_until(lambda: len(journal(sd)[0]) >= 200, 15), daemon.diag()
        before = [(e["id"], e["text"]) for e in journal(sd)[0]]
        st = os.statvfs(sd)
        filler = os.path.join(sd, "filler")
        write(filler, b"\0" * max(0, st.f_bavail * st.f_frsize - (64 << 10)))   # 64 KiB left: the flood fills it
        deadline = time.monotonic() + 20
        while not (os.statvfs(sd).f_bavail == 0 or os.strerror(errno.ENOSPC) in daemon.log()):
            assert time.monotonic() < deadline and p.poll() is None, "never full: " + daemon.diag()
            flood(200)
            time.sleep(0.1)
        t_full, at_full = time.monotonic(), n[0]
        for _ in range(10):                                    # and a bit more
            flood(200)
            time.sleep(0.1)
        time.sleep(1.0)
        t_end, while_full = time.monotonic(), n[0] - at_full
        assert p.poll() is None, daemon.diag()
        kept, torn = journal(sd)
        by_id = {e["id"]: e["text"] for e in kept}
        missing = [i for i, t in before if by_id.get(i) != t]
        replaces = events.count(IN_MOVED_TO, lambda s: s == bs.OUTBOX_NAME, t_full, t_end)
        inode_changes = sum(1 for t, _i in events.inodes[1:] if t_full <= t <= t_end)
        attempts = events.count(IN_CREATE, lambda s: s.startswith(".birdsentinel-"), t_full, t_end)
        FIGURES.update(disk_full_lines_before=at_full, disk_full_lines_while_full=while_full,
                       disk_full_outbox_replaces=replaces, disk_full_inode_changes=inode_changes,
                       disk_full_temp_files=attempts)
        assert missing == [], "%d of %d alerts left the outbox when the disk filled" % (len(missing), len(before))
        assert torn == [], "whole records follow torn lines %s of the journal" % torn
        assert replaces <= 3 and inode_changes <= 3, (replaces, inode_changes)
        assert attempts <= max(20, while_full // 10), \
            "%d rewrite attempts for %d alerts while the disk was full" % (attempts, while_full)

        os.unlink(filler)                                      # space is back
        fx.clear_faults()                                      # and X too (its back-off: seconds)
        assert fx.wait_for(lambda: len(alice(fx, False)) >= len(before), 30), daemon.diag()
        assert alice(fx, False)[:len(before)] == [t for _i, t in before]
        assert wait_until(lambda: saved_offset(sd, log) == os.path.getsize(log), 20), \
            "offsets not saved after space returned: %s of %d" % (saved_offset(sd, log), os.path.getsize(log))
        FIGURES["disk_full_outbox_replaces_total"] = events.count(IN_MOVED_TO, lambda s: s == bs.OUTBOX_NAME)
        rc, _secs = daemon.term(p)
        assert rc == 0, daemon.diag()
    finally:
        for name in (bs.STATE_NAME, bs.OUTBOX_NAME, bs.DEAD_NAME):
            secret_scan.file("tmpfs script dir", os.path.join(sd, name))
        daemon.stop_all()
        if events is not None:
            events.stop()
        if subprocess.run(["umount", sd], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", sd], capture_output=True)
