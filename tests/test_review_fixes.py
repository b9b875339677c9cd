"""Regression tests for the ten bugs of the code review: each test is the
reviewer's reproduction, made small, and fails on the code before the fixes."""

import contextlib
import io
import json
import logging
import os
import select
import struct
import subprocess
import sys
import threading
import time
import types

import pytest

import birdsentinel as bs
from conftest import record_secret_scan_text
from fakes import FakeClock, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ok():
    return bs.XResponse(201, {}, b"{}")


def deliverer(outbox, client, budget=None):
    return bs.Deliverer(outbox, client, bs.DeliveryState(), dict(budget or bs.DEFAULT_BUDGET))


def new_outbox(tmp_path, **kw):
    return bs.Outbox(str(tmp_path / "ob"), str(tmp_path / "dead"), **kw)


# ---- 1. outbox ids after a compacted journal -----------------

def test_outbox_ids_continue_past_committed_after_the_journal_was_compacted(tmp_path):
    P, D = str(tmp_path / "ob"), str(tmp_path / "dead")
    run1 = bs.Outbox(P, D)
    run1.load(None)
    ids = [run1.add("dm", "1", "alert %d" % i, time.time())["id"] for i in range(3)]
    run1.sync()
    committed = run1.next_id - 1
    run1.done(ids)
    assert committed == 3

    run2 = bs.Outbox(P, D)                      # nothing new: the journal is compacted to nothing
    run2.load(committed)
    committed = run2.next_id - 1
    assert committed == 3

    run3 = bs.Outbox(P, D)
    run3.load(committed)
    e = run3.add("dm", "1", "new alert, its line not yet saved as read", time.time())
    assert e["id"] > committed                  # not 1 again
    assert run3.ready("dm") == []               # not sent before the commit point

    run4 = bs.Outbox(P, D)                      # a crash before run 3's commit: the line is read again
    run4.load(committed)
    assert list(run4.entries) == []                 # so the entry is dropped, not kept as a second copy


# ---- 2. lost counts that come in while the count is being sent

def test_lost_counts_added_during_the_summary_send_are_kept(tmp_path):
    ob = new_outbox(tmp_path, max_entries=1)
    ob.add("dm", "123", "first", time.time())
    for _ in range(3):
        ob.add("dm", "123", "x", time.time(), label="L")       # 3 not kept

    class Client:
        sent = []

        def send_dm(self, to, text):
            for _ in range(5):                  # the main thread goes on matching meanwhile
                ob.add("dm", "123", "y", time.time(), label="L")
            self.sent.append(text)
            return ok()

    deliverer(ob, Client()).step()
    assert len(Client.sent) == 1 and "L: 3" in Client.sent[0], Client.sent
    assert ob.lost.get("dm 123") == {"L": 5}    # the 5 not yet told are not wiped


# ---- 3. a split message half sent is finished before any digest

def test_split_message_with_parts_sent_is_finished_before_a_digest(tmp_path):
    ob = new_outbox(tmp_path)
    long = "[h] " + " ".join("word%d" % i for i in range(120))
    e = ob.add("tweet", "", long, time.time(), {"seq": 1, "defang": True})
    ob.add("tweet", "", "[h] short second alert", time.time(), {"seq": 2, "defang": True})
    n = len(bs.entry_parts(e))
    assert n >= 3
    ob.part_sent(e, 1)                          # part 1/N went out, then the window closed

    class Client:
        sent = []

        def post_tweet(self, text):
            self.sent.append(text)
            return ok()

    deliverer(ob, Client(), dict(bs.DEFAULT_BUDGET, tweet_per_15m=1)).step()
    assert len(Client.sent) == 1, Client.sent
    assert "(2/%d)" % n in Client.sent[0], Client.sent       # the next part, not a digest
    assert "short second alert" not in Client.sent[0]
    assert [x["text"] for x in ob.entries.values()] == [long, "[h] short second alert"]


# ---- 4. rotation while more than MAX_POLL_READ of the old file is unread

def test_rotation_with_a_backlog_reads_the_rest_of_the_old_file(tmp_path, monkeypatch):
    monkeypatch.setattr(bs, "MAX_POLL_READ", 4 * bs.READ_BLOCK)
    p = str(tmp_path / "log")
    open(p, "w").close()
    seen = []

    def on_text(text):
        seen.extend(ln for ln in text.splitlines() if "ALERT" in ln)

    t = bs.FileTailer(p, on_text)
    t.poll()                                    # following, at the end
    with open(p, "a") as fh:                    # a burst of 3 polls' worth, then logrotate (create)
        fh.write(("filler %s\n" % ("x" * 60)) * (3 * bs.MAX_POLL_READ // 68))
        fh.write("ALERT in the old file\n")
    os.rename(p, p + ".1")
    open(p, "w").close()
    t.poll()                                    # sees the rotation
    saved = t.snapshot()                        # SIGTERM now: save_state, exit
    t.close()
    t2 = bs.FileTailer(p, on_text, saved)
    for _ in range(3):
        t2.poll()
    t2.close()
    assert seen == ["ALERT in the old file"]


# ---- 5. --once with more than MAX_POLL_READ appended reads it all ----------

SMALL_READ_MAIN = r"""
import sys
sys.path.insert(0, sys.argv[1])
import birdsentinel as bs
bs.MAX_POLL_READ = 2 * bs.READ_BLOCK        # a few bounded reads, not megabytes of test data
sys.exit(bs.main(sys.argv[2:]))
"""


def test_once_reads_everything_appended_beyond_one_bounded_read(tmp_path):
    small_read = 2 * bs.READ_BLOCK
    cfg = tmp_path / "c.conf"
    cfg.write_text("watchfor /ALERT/\n  echo\n")
    log = tmp_path / "app.log"
    log.write_text("")
    sd = tmp_path / "sd"
    env = dict(os.environ, HOME=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    for k in ("BIRDSENTINEL_API_BASE", "CREDENTIALS_DIRECTORY"):
        env.pop(k, None)

    def run_once():
        r = subprocess.run([sys.executable, "-c", SMALL_READ_MAIN, ROOT, "-c", str(cfg), "-t", str(log),
                            "--script-dir", str(sd), "--once"],
                           capture_output=True, env=env, cwd=str(tmp_path), timeout=60)
        record_secret_scan_text("--once stdout", r.stdout)
        record_secret_scan_text("--once stderr", r.stderr)
        return r

    r = run_once()                              # the first run records the end
    assert r.returncode == 0, r.stderr
    with open(str(log), "a") as fh:
        fh.write(("filler %s\n" % ("x" * 60)) * (3 * small_read // 68))
        fh.write("ALERT at the end\n")
    r = run_once()
    assert r.returncode == 0, r.stderr
    with open(str(sd / "birdsentinel.state")) as fh:
        st = json.load(fh)
    assert st["files"][str(log)]["offset"] == os.path.getsize(str(log))
    assert b"ALERT at the end" in r.stdout, r.stdout[-500:]


# ---- 6. a keep_open pipe whose child exits leaks nothing per restart

def open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_keep_open_pipe_restarts_leak_no_fd_or_thread(tmp_path):
    c = bs.parse_config(str(tmp_path / "x.conf"), "watchfor /boom/\npipe head -n1,keep_open=1\n")
    r = bs.ActionRunner(io.StringIO(), daemon=True)
    s = bs.Sentinel(c, r, bs.Counters())
    restarts = 12
    try:
        s.process_text("boom warm-up\n")        # one writer is running, as after any restart
        assert wait_until(lambda: all(p.proc.poll() is not None for p in r.pipes.values()), 5)
        fds0, th0 = open_fds(), threading.active_count()
        for i in range(restarts):
            s.process_text("boom %d\n" % i)     # a new head each time: the last one exited
            assert wait_until(lambda: all(p.proc.poll() is not None for p in r.pipes.values()), 5)
            r.reap()
        # the writers of exited children end (their thread and pipe fd go)
        wait_until(lambda: open_fds() <= fds0 + 2 and threading.active_count() <= th0 + 1, 3)
        assert open_fds() <= fds0 + 2, "fds %d -> %d after %d restarts" % (fds0, open_fds(), restarts)
        assert threading.active_count() <= th0 + 1, \
            "threads %d -> %d after %d restarts" % (th0, threading.active_count(), restarts)
    finally:
        r.close()


# ---- 7. a keep_open reader that catches up after a burst is not killed

def test_keep_open_reader_that_caught_up_is_not_killed_as_stalled(tmp_path):
    clock = FakeClock()
    go = tmp_path / "go"                        # the reader starts reading once this exists
    c = bs.parse_config(str(tmp_path / "x.conf"),
                        "watchfor /boom/\npipe sh -c 'until test -e %s; do sleep 0.02; done; "
                        "exec cat >/dev/null',keep_open=1\n" % go)
    r = bs.ActionRunner(io.StringIO(), daemon=True, monotonic=clock.monotonic)
    s = bs.Sentinel(c, r, bs.Counters())
    try:
        s.process_text("".join("boom %d %s\n" % (i, "x" * 1000) for i in range(1000)))    # a burst
        p = next(iter(r.pipes.values()))
        assert wait_until(lambda: p.blocked_since is not None, 5)      # a write waited while the reader was late
        go.write_text("")
        assert wait_until(lambda: p.lines.empty() and p.blocked_since is None, 10)      # then it caught up
        clock.advance(bs.PIPE_STALL + 1)
        r.reap()
        assert r.failures == 0
        assert list(r.pipes.values()) == [p] and p.proc.poll() is None
    finally:
        r.close()


def blocked_for_good(p, seconds=10):
    """The writer waits in a write and has written nothing for 0.3 s: the reader has stopped, the pipe is full
    (blocked_since is set before every write, so alone it does not tell a stall from a write in progress)."""
    def settled():
        before = p.written
        time.sleep(0.3)
        return p.blocked_since is not None and p.written == before
    return wait_until(settled, seconds)


def test_keep_open_reader_that_exits_is_no_stall(tmp_path):
    """A reader that exits: the next write fails (EPIPE).  That is no stall (nothing is killed or reported) and
    keeps nothing busy; a review found blocked_since left set, a false report after PIPE_STALL and --once waiting."""
    clock = FakeClock()
    c = bs.parse_config(str(tmp_path / "x.conf"), "watchfor /boom/\npipe head -c 10,keep_open=1\n")
    r = bs.ActionRunner(io.StringIO(), daemon=True, monotonic=clock.monotonic)
    s = bs.Sentinel(c, r, bs.Counters())
    try:
        s.process_text("".join("boom %d %s\n" % (i, "x" * 1000) for i in range(100)))
        p = next(iter(r.pipes.values()))
        def ended():                            # the reader gone, the writer out of its last (failed) write
            was = p.blocked_since
            time.sleep(0.3)
            return p.proc.poll() is not None and was is None and p.blocked_since is None
        assert wait_until(ended, 10), "blocked_since stays set after the reader exited"
        clock.advance(bs.PIPE_STALL + 1)
        r.reap()
        assert r.failures == 0 and not r.busy()
    finally:
        r.close()


def test_keep_open_reader_that_stops_after_a_burst_smaller_than_the_queue_is_killed(tmp_path):
    """The queue never fills (200 KB, room for PIPE_QUEUE) and no line follows: the waiting write is the stall.
    With a full queue as the sign, this reader was never killed (CI: test_stalled_keep_open_reader_...)."""
    clock = FakeClock()
    c = bs.parse_config(str(tmp_path / "x.conf"),
                        "watchfor /boom/\npipe sh -c 'head -c 20000 >/dev/null; exec sleep 600',keep_open=1\n")
    r = bs.ActionRunner(io.StringIO(), daemon=True, monotonic=clock.monotonic)
    s = bs.Sentinel(c, r, bs.Counters())
    try:
        s.process_text("".join("boom %d %s\n" % (i, "x" * 1000) for i in range(200)))     # 200 KB > 20 KB + a pipe
        p = next(iter(r.pipes.values()))
        assert blocked_for_good(p) and p.dropped == 0
        r.reap()
        assert r.failures == 0                  # blocked, but not yet for PIPE_STALL
        clock.advance(bs.PIPE_STALL + 1)
        r.reap()
        assert r.failures == 1 and not r.pipes
        assert wait_until(lambda: p.proc.poll() is not None, 5), "the stalled reader was not killed"
    finally:
        r.close()


def test_keep_open_reader_that_never_reads_holds_at_most_pipe_queue_bytes(tmp_path, logs):
    clock = FakeClock()
    c = bs.parse_config(str(tmp_path / "x.conf"), "watchfor /boom/\npipe sleep 600,keep_open=1\n")
    r = bs.ActionRunner(io.StringIO(), daemon=True, monotonic=clock.monotonic)
    s = bs.Sentinel(c, r, bs.Counters())
    try:
        n = 3 * bs.PIPE_QUEUE // 10000
        s.process_text("".join("boom %05d %s\n" % (i, "x" * 9988) for i in range(n)))     # 3 x PIPE_QUEUE
        p = next(iter(r.pipes.values()))
        assert blocked_for_good(p)
        assert p.queued - p.written <= bs.PIPE_QUEUE and p.dropped >= n // 2
        r.reap()
        r.reap()
        behind = [m for m in logs.messages(logging.ERROR) if "behind" in m]
        assert behind == ["pipe sleep is behind, its queue full: lines are dropped until it reads"]   # once
        clock.advance(bs.PIPE_STALL + 1)
        r.reap()
        told = [m for m in logs.messages(logging.ERROR) if "stopped reading" in m]
        assert len(told) == 1 and "(%d line(s) not written)" % (n - p.written // 10000) in told[0], told
    finally:
        r.close()


def test_keep_open_queue_of_one_byte_lines_is_bounded_in_lines_too():
    """1 MiB of one-byte lines would be a million queued objects (some 50 MB): the queue holds PIPE_QUEUE / 64."""
    p = bs.PipeWriter(subprocess.Popen(["sleep", "600"], stdin=subprocess.PIPE), FakeClock().monotonic)
    try:
        for _ in range(300000):                 # more than the pipe (64 KiB of them) and the queue hold
            p.put(b"\n")
        assert p.lines.qsize() <= bs.PIPE_QUEUE >> 6 and p.dropped > 0
    finally:
        p.proc.kill()


def test_inotify_watch_is_new_once_per_path_and_mask(tmp_path):
    """watch() is True once for each (path, mask, file): the runtime reads again after a True, so a path both tailed
    and the directory of another (its two masks taking turns) spun the loop (a review: 3.3 s of CPU in 4 s)."""
    ino = bs.Inotify()
    try:
        d, f = str(tmp_path), str(tmp_path / "a.log")
        open(f, "w").close()
        assert [ino.watch(d, bs.Inotify.DIR_MASK), ino.watch(d, bs.Inotify.FILE_MASK)] == [True, True]
        assert [ino.watch(d, bs.Inotify.DIR_MASK), ino.watch(d, bs.Inotify.FILE_MASK)] == [False, False]
        assert ino.watch(f, bs.Inotify.FILE_MASK, (1, 2)) and not ino.watch(f, bs.Inotify.FILE_MASK, (1, 2))
        assert ino.watch(f, bs.Inotify.FILE_MASK, (1, 3))              # rotated: a new file under the name
        assert not ino.watch(str(tmp_path / "missing.log"), bs.Inotify.FILE_MASK)   # no watch: nothing to read again
        with contextlib.suppress(BlockingIOError):
            while os.read(ino.fd, 65536):
                pass
        os.mkdir(str(tmp_path / "new"))             # IN_CREATE: the directory's mask is kept beside the file's
        assert select.select([ino.fd], [], [], 2)[0], "no event: the file mask replaced the directory's"
        _wd, mask = struct.unpack_from("iI", os.read(ino.fd, 65536))
        assert mask & 0x100, hex(mask)
    finally:
        os.close(ino.fd)


# ---- 8. an unwritable dead-letter file does not loop on the refused message

def test_unwritable_dead_letter_file_logs_the_refused_message_and_moves_on(tmp_path, logs):
    ob = bs.Outbox(str(tmp_path / "ob"), str(tmp_path / "no-such-dir" / "dead"))
    ob.add("dm", "123", "refused for good", time.time())
    ob.add("dm", "123", "next alert", time.time())
    sent = []

    class Client:
        def send_dm(self, to, text):
            sent.append(text)
            return bs.XResponse(400, {}, b'{"detail":"bad request"}')

    dl = deliverer(ob, Client())
    for _ in range(4):
        if not len(ob):
            break
        dl.step()
    assert sent == ["refused for good", "next alert"]       # each asked once
    assert list(ob.entries) == []
    assert logs.messages(logging.ERROR, "dead-letter", "refused for good")


# ---- 9. the candidate prefilter agrees with the regex --------

class Recorder:
    def __init__(self):
        self.hits = []

    def run(self, action, line, m, msg, origin=""):
        self.hits.append(line)

    def flush(self):
        pass


def matched(tmp_path, cfg, lines):
    c = bs.parse_config(str(tmp_path / "x.conf"), cfg)
    r = Recorder()
    bs.Sentinel(c, r, bs.Counters()).process_text("".join(ln + "\n" for ln in lines))
    return r.hits


def test_prefilter_ignorecase_rule_matches_dotless_i(tmp_path):
    lines = ["x", "Fa\u0131led password for root"]
    assert bs.parse_config(str(tmp_path / "x.conf"), "watchfor /failed password/i\necho\n") \
        .rules[0].pattern.match(lines[1])
    assert matched(tmp_path, "watchfor /failed password/i\necho\n", lines) == [lines[1]]


def test_prefilter_lookahead_rule_matches_at_end_of_line(tmp_path):
    assert matched(tmp_path, "watchfor /\\d\\d(?!\\s)/\necho\n", ["foo", "a 42"]) == ["a 42"]


# ---- 10. finish_delivery does not race a sender still in a slow send

def test_finish_delivery_does_not_resend_while_the_sender_is_in_a_slow_send(tmp_path, monkeypatch):
    monkeypatch.setattr(bs, "HTTP_TIMEOUT", -4.8)          # join(timeout=0.2 s)
    ob = new_outbox(tmp_path)
    ob.add("dm", "123", "disk failing on sda", time.time())
    sent = []
    in_send, release = threading.Event(), threading.Event()

    class Client:
        def send_dm(self, to, text):
            if not in_send.is_set():            # the sender thread's request: X answers slowly
                in_send.set()
                release.wait(10)
            sent.append(text)
            return ok()

    dl = deliverer(ob, Client())
    app = types.SimpleNamespace(deliverer=dl, stop=threading.Event(), wake=threading.Event())
    app.stop_sender = lambda timeout: bs.App.stop_sender(app, timeout)
    sender = app.sender = threading.Thread(target=dl.run, args=(app.stop, app.wake), daemon=True)
    sender.start()
    try:
        assert in_send.wait(5)
        bs.App.finish_delivery(app, time.monotonic() + 60)
    finally:
        release.set()
        sender.join(5)
    assert not sender.is_alive()
    assert sent == ["disk failing on sda"]
    assert len(ob) == 0
