"""Resource faults (issue 6): a full or unwritable state directory, an
outbox that cannot be written, an unreadable log file, a missing exec
target or sendmail.

birdsentinel must keep running, keep the old state, log once per
condition, and recover by itself when the resource comes back.  Tests run
as root in CI, where chmod 000 stops nothing: the faults are injected
(a StateStore writer raising OSError(ENOSPC/EACCES), os.open/os.write
failing for one path) or real ones root cannot get around (a directory
where a log file should be, a program that does not exist).
"""
import errno
import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import birdsentinel as bs


# ---- helpers ---------------------------------------------------------------


def oserror(code):
    return OSError(code, os.strerror(code))


class SwitchableWriter:
    """StateStore writer: the real atomic_write, or an OSError when set."""

    def __init__(self):
        self.fail = None
        self.calls = 0

    def __call__(self, path, data):
        self.calls += 1
        if self.fail is not None:
            raise oserror(self.fail)
        bs.atomic_write(path, data)


def state_with(seq):
    st = bs.State(outbox_committed=seq)
    st.files["/var/log/app"] = {"dev": 1, "ino": 2, "fp": "0:00000000", "offset": seq * 10}
    return st


def read_json(path):
    with open(path, "rb") as fh:
        return json.loads(fh.read().decode("utf-8"))


# ---- state directory full / not writable -------------------------------------

def test_state_store_full_disk_keeps_old_state_logs_once_and_recovers(tmp_path, logs):
    path = str(tmp_path / "birdsentinel.state")
    w = SwitchableWriter()
    store = bs.StateStore(path, writer=w)
    assert store.save(state_with(1)) is True

    w.fail = errno.ENOSPC
    for seq in (2, 3, 4, 5):
        assert store.save(state_with(seq)) is False          # no exception: the caller keeps running
        assert read_json(path)["outbox_committed"] == 1            # the old state stays, whole
    full = logs.only(logging.ERROR, "cannot write state file", path)
    assert len(full) == 1, full
    assert os.strerror(errno.ENOSPC) in full[0]

    w.fail = errno.EACCES                                   # another condition: logged once more
    for seq in (6, 7):
        assert store.save(state_with(seq)) is False
    errs = logs.only(logging.ERROR, "cannot write state file", path)
    assert len(errs) == 2 and os.strerror(errno.EACCES) in errs[1], errs
    assert read_json(path)["outbox_committed"] == 1

    w.fail = None                                           # space is back
    assert store.save(state_with(8)) is True
    assert read_json(path)["outbox_committed"] == 8
    again = logs.messages(logging.WARNING, "writable again", path)
    assert len(again) == 1, again
    assert store.save(state_with(9)) is True
    assert len(logs.messages(logging.WARNING, "writable again")) == 1
    assert len(logs.only(logging.ERROR, "cannot write state file")) == 2
    assert bs.StateStore(path).load()[0].outbox_committed == 9

    w.fail = errno.ENOSPC                                   # the same condition, a second time
    assert store.save(state_with(10)) is False
    assert len(logs.only(logging.ERROR, "cannot write state file")) == 3
    assert read_json(path)["outbox_committed"] == 9


def test_state_directory_gone_is_a_real_error_not_a_crash(tmp_path, logs):
    """No injection: the state file's directory is replaced by a regular
    file (root cannot write into that either)."""
    d = tmp_path / "state"
    d.mkdir()
    path = str(d / "birdsentinel.state")
    store = bs.StateStore(path)
    assert store.save(state_with(1))
    os.unlink(path)
    os.rmdir(str(d))
    d.write_text("not a directory\n")
    assert store.save(state_with(2)) is False
    assert store.save(state_with(3)) is False
    errs = logs.only(logging.ERROR, "cannot write state file", path)
    assert len(errs) == 1, errs
    os.unlink(str(d))
    d.mkdir()
    assert store.save(state_with(4)) is True
    assert read_json(path)["outbox_committed"] == 4
    assert logs.messages(logging.WARNING, "writable again", path)


FAULTY_MAIN = r"""
import errno, os, sys
sys.path.insert(0, sys.argv[1])
import birdsentinel as bs
control = sys.argv[2]
real_store = bs.StateStore

def writer(path, data):
    if os.path.exists(control):            # "the disk is full" while this file exists
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    bs.atomic_write(path, data)

bs.StateStore = lambda path: real_store(path, writer=writer)
sys.exit(bs.main(sys.argv[3:]))
"""


@pytest.fixture
def procs():
    made = []
    yield made
    for p in made:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def wait_until(pred, timeout, what, proc=None, err_path=None):
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError("birdsentinel exited (%s) while waiting for %s:\n%s"
                                 % (proc.returncode, what, open(err_path).read() if err_path else ""))
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s%s" % (
                what, ":\n" + open(err_path).read() if err_path else ""))
        time.sleep(0.02)


def test_daemon_with_full_state_disk_keeps_running_and_recovers(tmp_path, procs, secret_scan):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log = str(tmp_path / "app.log")
    conf = str(tmp_path / "rules.conf")
    sdir = str(tmp_path / "state")
    control = str(tmp_path / "DISK-FULL")
    state = os.path.join(sdir, bs.STATE_NAME)
    out_path, err_path = str(tmp_path / "stdout"), str(tmp_path / "stderr")
    with open(conf, "w") as fh:
        fh.write("watchfor /ALERT/\n  echo\n")
    open(log, "wb").close()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = subprocess.Popen([sys.executable, "-c", FAULTY_MAIN, root, control,
                              "-t", log, "-c", conf, "--script-dir", sdir],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             env=dict(os.environ, HOME=str(tmp_path)))
    procs.append(p)

    def offset():
        try:
            return read_json(state)["files"][log]["offset"]
        except (OSError, ValueError, KeyError):
            return None

    def append(text):
        with open(log, "ab") as fh:
            fh.write(text.encode())

    n = 0
    def booted():
        nonlocal n
        n += 1
        append("boot %d\n" % n)
        return offset() is not None
    wait_until(booted, 20, "the first saved offset", p, err_path)
    before = read_json(state)

    open(control, "w").close()                               # the disk fills up
    for i in range(1, 4):
        append("ALERT %d while the disk is full\n" % i)
        wait_until(lambda: ("ALERT %d while" % i) in open(out_path).read(), 10,
                   "the echo of ALERT %d" % i, p, err_path)
        wait_until(lambda: "cannot write state file" in open(err_path).read(), 10,
                   "the full-disk error", p, err_path)
    time.sleep(0.6)                                          # one more retry interval (0.5 s) while full
    assert p.poll() is None, "birdsentinel stopped on a full disk"
    assert read_json(state) == before, "the state file changed while the disk was full"
    errs = [l for l in open(err_path).read().splitlines() if "cannot write state file" in l]
    assert len(errs) == 1, errs
    assert state in errs[0] and os.strerror(errno.ENOSPC) in errs[0]

    os.unlink(control)                                       # space is back
    append("ALERT 4 after\n")
    size = os.path.getsize(log)
    wait_until(lambda: offset() == size, 10, "the offset saved after recovery", p, err_path)
    wait_until(lambda: "writable again" in open(err_path).read(), 5, "the recovery message", p, err_path)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0
    text = open(err_path).read()
    secret_scan.text("resource-faults daemon stderr", text)
    assert "Traceback" not in text, text
    assert [l for l in open(out_path).read().splitlines() if "ALERT" in l] == [
        "ALERT 1 while the disk is full", "ALERT 2 while the disk is full",
        "ALERT 3 while the disk is full", "ALERT 4 after"]


# ---- outbox cannot be written ------------------------------------------------

class OutboxFault:
    """ENOSPC for every write to one outbox path: appends (os.write on a
    descriptor opened for it) and rewrites (atomic_write of that path)."""

    def __init__(self, monkeypatch, path):
        self.path = path
        self.on = False
        self.fds = set()
        real_open, real_write, real_close = os.open, os.write, os.close
        real_atomic = bs.atomic_write

        def fopen(p, flags, *a, **kw):
            fd = real_open(p, flags, *a, **kw)
            if os.path.abspath(os.fsdecode(p)) == self.path:
                self.fds.add(fd)
            return fd

        def fwrite(fd, data):
            if self.on and fd in self.fds:
                raise oserror(errno.ENOSPC)
            return real_write(fd, data)

        def fclose(fd):
            self.fds.discard(fd)
            return real_close(fd)

        def fatomic(p, data, *a, **kw):
            if self.on and os.path.abspath(p) == self.path:
                raise oserror(errno.ENOSPC)
            return real_atomic(p, data, *a, **kw)

        monkeypatch.setattr(os, "open", fopen)
        monkeypatch.setattr(os, "write", fwrite)
        monkeypatch.setattr(os, "close", fclose)
        monkeypatch.setattr(bs, "atomic_write", fatomic)


class Rig:
    """App's pieces as run_tail wires them, without threads or signals."""

    def __init__(self, tmp_path, conf_text):
        self.log = str(tmp_path / "app.log")
        self.conf = str(tmp_path / "rules.conf")
        self.sdir = str(tmp_path / "state")
        with open(self.conf, "w") as fh:
            fh.write(conf_text)
        if not os.path.exists(self.log):
            open(self.log, "wb").close()
        self.out = io.StringIO()
        self.open()

    def open(self):
        opts = bs.parse_args(["-t", self.log, "-c", self.conf, "--script-dir", self.sdir])
        self.app = bs.App(opts, {}, self.out)
        config = bs.parse_config(self.app.config_path)
        self.app.open_state(True, self.app.wants_x(config))
        self.runner = bs.ActionRunner(self.out, outbox=self.app.outbox, hostname="h")
        self.sentinel = bs.Sentinel(config, self.runner, self.app.state.counters)

        def on_text(text):
            self.sentinel.process_text(text)
            self.app.dirty = True
        self.tailer = bs.FileTailer(self.log, on_text, self.app.state.files.get(self.log))

    def append(self, text):
        with open(self.log, "ab") as fh:
            fh.write(text.encode())

    def step(self):
        self.tailer.poll()
        self.app.save_state([self.tailer], force=True)

    def saved_offset(self):
        return read_json(self.app.state_path)["files"][self.log]["offset"]

    def close(self):
        self.tailer.close()
        if self.app.lock_fd is not None:
            os.close(self.app.lock_fd)
            self.app.lock_fd = None


def test_outbox_full_keeps_alerts_in_memory_and_holds_offsets(tmp_path, monkeypatch, logs):
    rig = Rig(tmp_path, "watchfor /ALERT (\\d+)/\n  dm @alice\n")
    outbox_path = os.path.abspath(os.path.join(rig.sdir, bs.OUTBOX_NAME))
    fault = OutboxFault(monkeypatch, outbox_path)
    try:
        rig.step()                                    # first sight: start at the (empty) end
        rig.append("boot\n")
        rig.step()
        safe = rig.saved_offset()
        assert safe == os.path.getsize(rig.log)

        fault.on = True
        rig.append("ALERT 1\nALERT 2\n")
        rig.step()
        rig.append("ALERT 3\n")
        rig.step()
        ob = rig.app.outbox
        assert ob.durable is False
        assert [e["text"] for e in ob.entries.values()] == ["[h] ALERT 1", "[h] ALERT 2", "[h] ALERT 3"]
        assert rig.saved_offset() == safe, "offsets were saved while the alerts were only in memory"
        errs = logs.only(logging.ERROR, "cannot write outbox", outbox_path)
        assert len(errs) == 1, errs
        assert os.strerror(errno.ENOSPC) in errs[0]
        journal = open(outbox_path, "rb").read() if os.path.exists(outbox_path) else b""
        assert b"ALERT" not in journal                  # which is why they are not durable

        # a restart now (kill -9) would re-read ALERT 1..3 from the saved offset:
        # nothing is lost.  Space comes back:
        fault.on = False
        rig.append("ALERT 4\n")
        rig.step()
        assert ob.durable is True
        assert rig.saved_offset() == os.path.getsize(rig.log)
        assert len(logs.messages(logging.WARNING, "writable again", outbox_path)) == 1
        assert len(logs.only(logging.ERROR, "cannot write outbox")) == 1
    finally:
        rig.close()
    again = bs.Outbox(outbox_path, os.path.join(rig.sdir, bs.DEAD_NAME))
    again.load()
    assert [e["text"] for e in again.entries.values()] == ["[h] ALERT %d" % i for i in (1, 2, 3, 4)]


def test_outbox_full_then_crash_loses_nothing(tmp_path, monkeypatch, logs):
    """While the outbox cannot be written, a kill -9 (the rig is dropped
    without saving) and a restart re-read the alerts from the saved offset."""
    rig = Rig(tmp_path, "watchfor /ALERT (\\d+)/\n  dm @alice\n")
    outbox_path = os.path.abspath(os.path.join(rig.sdir, bs.OUTBOX_NAME))
    fault = OutboxFault(monkeypatch, outbox_path)
    rig.step()
    rig.append("boot\n")
    rig.step()
    fault.on = True
    rig.append("ALERT 1\nALERT 2\n")
    rig.step()
    assert len(rig.app.outbox) == 2 and not rig.app.outbox.durable
    rig.close()                                           # the crash
    fault.on = False
    rig.open()                                            # the restart
    try:
        rig.step()
        texts = [e["text"] for e in rig.app.outbox.entries.values()]
        assert texts == ["[h] ALERT 1", "[h] ALERT 2"], texts
        assert rig.app.outbox.durable
    finally:
        rig.close()


# ---- a log file that cannot be read ------------------------------------------

def test_unreadable_log_is_named_once_and_other_files_keep_working(tmp_path, monkeypatch, logs):
    bad = str(tmp_path / "secure.log")
    good = str(tmp_path / "app.log")
    with open(bad, "w") as fh:
        fh.write("written before we could read it\n")
    open(good, "w").close()
    real_open = os.open

    def deny(p, flags, *a, **kw):
        if os.fsdecode(p) == bad:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), bad)
        return real_open(p, flags, *a, **kw)

    monkeypatch.setattr(os, "open", deny)
    seen_bad, seen_good = [], []
    tb = bs.FileTailer(bad, seen_bad.append)
    tg = bs.FileTailer(good, seen_good.append)
    try:
        for i in range(5):
            tb.poll()
            tg.poll()
            with open(good, "a") as fh:
                fh.write("good %d\n" % i)
        tb.poll()
        tg.poll()
        assert "".join(seen_good).split("\n")[:-1] == ["good %d" % i for i in range(5)]
        assert seen_bad == []
        errs = logs.only(logging.ERROR, bad)
        assert len(errs) == 1, errs                           # once, not at every poll
        assert os.strerror(errno.EACCES) in errs[0]
        assert not logs.only(logging.ERROR, good)

        monkeypatch.setattr(os, "open", real_open)           # permissions fixed
        with open(bad, "a") as fh:
            fh.write("after the fix\n")
        tb.poll()
        assert logs.messages(logging.WARNING, bad, "readable again")
        assert "".join(seen_bad).split("\n")[:-1] == ["written before we could read it", "after the fix"]
    finally:
        tb.close()
        tg.close()


def test_cli_directory_given_as_log_file_other_file_still_watched(tmp_path, procs, secret_scan):
    """A real condition root cannot read past: -t names a directory."""
    bad = str(tmp_path / "not-a-file")
    os.mkdir(bad)
    good = str(tmp_path / "app.log")
    open(good, "w").close()
    conf = str(tmp_path / "rules.conf")
    with open(conf, "w") as fh:
        fh.write("watchfor /ALERT/\n  echo\n")
    out_path, err_path = str(tmp_path / "stdout"), str(tmp_path / "stderr")
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "birdsentinel.py")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = subprocess.Popen([sys.executable, script, "-t", bad, "-t", good, "-c", conf,
                              "--script-dir", str(tmp_path / "state")],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             env=dict(os.environ, HOME=str(tmp_path)))
    procs.append(p)
    wait_until(lambda: "watching" in open(err_path).read(), 20, "the start", p, err_path)
    deadline = time.monotonic() + 20
    n = 0
    while "ALERT" not in open(out_path).read():
        n += 1
        with open(good, "a") as fh:                  # the first poll starts at the end: repeat
            fh.write("ALERT %d\n" % n)
        assert p.poll() is None, open(err_path).read()
        assert time.monotonic() < deadline, open(err_path).read()
        time.sleep(0.1)
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0
    err_text = open(err_path).read()
    secret_scan.text("cli unreadable-log stderr", err_text)
    named = [l for l in err_text.splitlines() if bad in l and "ERROR" in l]
    assert len(named) == 1, err_text
    assert "not a regular file" in named[0]
    assert "Traceback" not in err_text


# ---- exec target and sendmail missing ----------------------------------------

CONF_MISSING = textwrap.dedent("""\
    watchfor /boom (\\d+)/
      exec /nonexistent/prog $_
      mail addresses=root,mailer=/nonexistent/sendmail -oi -t
      echo
    """)


def test_missing_exec_and_sendmail_are_logged_counted_and_other_actions_run(tmp_path, logs):
    conf = str(tmp_path / "rules.conf")
    with open(conf, "w") as fh:
        fh.write(CONF_MISSING)
    config = bs.parse_config(conf)
    out = io.StringIO()
    runner = bs.ActionRunner(out, hostname="h")
    sentinel = bs.Sentinel(config, runner)
    sentinel.process_text("boom 1\nquiet\nboom 2\n")
    runner.wait_all(timeout=10)
    assert out.getvalue().splitlines() == ["boom 1", "boom 2"]
    assert runner.failures == 4                          # 2 lines x (exec + mail)
    execs = logs.only(logging.ERROR, "/nonexistent/prog")
    mails = logs.only(logging.ERROR, "/nonexistent/sendmail")
    assert len(execs) == 2 and len(mails) == 2, (execs, mails)
    assert all(os.strerror(errno.ENOENT) in m for m in execs + mails)
    assert not runner.busy()


def test_cli_examine_missing_programs_exit_status_and_messages(tmp_path, script, secret_scan):
    conf = str(tmp_path / "rules.conf")
    with open(conf, "w") as fh:
        fh.write(CONF_MISSING)
    data = str(tmp_path / "input.log")
    with open(data, "w") as fh:
        fh.write("boom 7\nnothing\n")
    r = subprocess.run([sys.executable, script, "-c", conf, "--examine", data],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                       env=dict(os.environ, HOME=str(tmp_path)))
    err = r.stderr.decode("utf-8", "replace")
    secret_scan.text("cli examine stderr", err)
    secret_scan.text("cli examine stdout", r.stdout)
    assert r.returncode == 1, (r.returncode, err)
    assert r.stdout.decode().splitlines() == ["boom 7"]
    assert "/nonexistent/prog" in err and "/nonexistent/sendmail" in err, err
    assert "Traceback" not in err
