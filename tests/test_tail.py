"""FileTailer, LineSplitter, StateStore, acquire_lock and Outbox, driven
directly: real temp files, .poll() called by the test, an injected clock
for the retired-file grace, no sleeps.

Every rotation case of issue 2 ("Tailing that loses nothing") is here:
rename+create (with lines appended to the old file after the rename),
copytruncate, plain truncation, truncate-then-regrow, delete+re-create, a
file missing at start, and the restart-gap cases (lines written while
stopped, rotation while stopped, copytruncate while stopped).
"""
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
from typing import List

import pytest

import birdsentinel as bs
from birdsentinel import (LOG, MAX_LINE, RETIRED_GRACE, FileTailer, LineSplitter, LockedError,
                          Outbox, StateStore, acquire_lock)
from fakes import FakeClock


# ---- helpers ---------------------------------------------------------------

class Collector:
    """on_text: checks the block contract, keeps the lines."""

    def __init__(self) -> None:
        self.blocks: List[str] = []

    def __call__(self, text: str) -> None:
        assert isinstance(text, str)
        assert text, "on_text got an empty block"
        assert text.endswith("\n"), "on_text block does not end in a newline: %r" % text[-40:]
        self.blocks.append(text)

    @property
    def lines(self) -> List[str]:
        return "".join(self.blocks).split("\n")[:-1]

    def take(self) -> List[str]:
        """The lines seen since the last take()."""
        out = self.lines
        self.blocks = []
        return out


def append(path, data) -> None:
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(path, "ab") as fh:
        fh.write(data)


def write(path, data) -> None:
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(path, "wb") as fh:
        fh.write(data)


@pytest.fixture
def logs(caplog):
    """caplog wired straight to the birdsentinel logger, whatever an earlier
    in-process main() did to its propagation or level."""
    old = (LOG.level, LOG.propagate)
    LOG.setLevel(logging.DEBUG)
    LOG.propagate = False
    caplog.handler.setLevel(logging.DEBUG)
    LOG.addHandler(caplog.handler)
    caplog.clear()
    try:
        yield caplog
    finally:
        LOG.removeHandler(caplog.handler)
        LOG.setLevel(old[0])
        LOG.propagate = old[1]


def messages(caplog, level=logging.WARNING) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


def warned(caplog, *words, level=logging.WARNING) -> bool:
    return any(all(w in m for w in words) for m in messages(caplog, level))


@pytest.fixture
def log(tmp_path):
    return str(tmp_path / "messages")


@pytest.fixture
def tailers():
    made: List[FileTailer] = []
    yield made
    for t in made:
        t.close()


def tailer(made, path, saved=None, start_at_end=True, clock=None):
    c = Collector()
    clock = clock or FakeClock(1000.0)
    t = FileTailer(path, c, saved=saved, start_at_end=start_at_end, clock=clock.monotonic)
    made.append(t)
    return t, c


# ---- LineSplitter ----------------------------------------------------------

def test_splitter_complete_lines_in_one_block():
    s = LineSplitter("f")
    assert s.feed(b"one\ntwo\n") == "one\ntwo\n"
    assert s.held() == 0


def test_splitter_holds_partial_line_until_newline():
    s = LineSplitter("f")
    assert s.feed(b"first\npar") == "first\n"
    assert s.held() == 3
    assert s.feed(b"ti") == ""
    assert s.held() == 5
    assert s.feed(b"al\nnext") == "partial\n"
    assert s.held() == 4


def test_splitter_crlf_including_cr_and_lf_in_different_chunks():
    s = LineSplitter("f")
    assert s.feed(b"a\r\nb\r") == "a\n"
    assert s.feed(b"\nc\r\n") == "b\nc\n"
    # a lone \r inside a line is data, not a line end
    assert s.feed(b"x\ry\n") == "x\ry\n"


def test_splitter_invalid_utf8_replaced():
    s = LineSplitter("f")
    assert s.feed(b"ok \xff\xfe \xc3\x28 end\n") == "ok \ufffd\ufffd \ufffd( end\n"
    # a multibyte character split across two chunks is decoded whole
    assert s.feed("caf\u00e9".encode("utf-8")[:-1]) == ""
    assert s.feed("caf\u00e9".encode("utf-8")[-1:] + b"\n") == "caf\u00e9\n"


def test_splitter_nul_bytes_stay_inside_one_line():
    s = LineSplitter("f")
    out = s.feed(b"a\x00b\x00\x00c\n")
    assert out.count("\n") == 1
    assert out.replace("\x00", "") == "abc\n"


def test_splitter_huge_line_across_chunks_is_cut_and_memory_bounded(logs):
    s = LineSplitter("bigfile")
    out = [s.feed(b"before\n")]
    size = 5 * 1024 * 1024
    piece = b"x" * (256 * 1024)
    fed = 0
    for _ in range(size // len(piece)):
        out.append(s.feed(piece))
        fed += len(piece)
        assert len(s.pending) <= MAX_LINE
        assert s.held() == fed                   # every byte of the unfinished line is counted
    out.append(s.feed(b"\nafter\n"))
    text = "".join(out)
    assert text.split("\n") == ["before", "x" * MAX_LINE, "after", ""]
    assert s.held() == 0 and s.pending == b""
    assert warned(logs, "bigfile", "cut")


def test_splitter_huge_line_complete_in_one_chunk_is_cut(logs):
    """A 200 KB line whose newline arrives in the same read must be cut to
    MAX_LINE bytes too ("a huge line: keep the first 64 KiB, discard the
    rest, say so")."""
    s = LineSplitter("bigfile")
    text = s.feed(b"short\n" + b"y" * (200 * 1024) + b"\nend\n")
    assert text.split("\n") == ["short", "y" * MAX_LINE, "end", ""]
    assert warned(logs, "bigfile", "cut")


def test_splitter_huge_line_finished_after_short_pending_is_cut():
    s = LineSplitter("f")
    assert s.feed(b"z" * 60000) == ""
    text = s.feed(b"z" * 60000 + b"\n")
    assert text == "z" * MAX_LINE + "\n"


def test_splitter_reset_drops_partial():
    s = LineSplitter("f")
    s.feed(b"abc")
    s.reset()
    assert s.held() == 0
    assert s.feed(b"def\n") == "def\n"


# ---- FileTailer: basics ----------------------------------------------------

def test_first_sighting_starts_at_end(tailers, log):
    write(log, "old line 1\nold line 2\n")
    t, c = tailer(tailers, log)
    t.poll()
    assert c.lines == []
    append(log, "new line\n")
    t.poll()
    assert c.take() == ["new line"]


def test_start_at_end_false_reads_from_start(tailers, log):
    write(log, "old 1\nold 2\n")
    t, c = tailer(tailers, log, start_at_end=False)
    t.poll()
    assert c.take() == ["old 1", "old 2"]


def test_appended_lines_read_once_each(tailers, log):
    write(log, "")
    t, c = tailer(tailers, log)
    t.poll()
    for i in range(5):
        append(log, "line %d\nline %d b\n" % (i, i))
        t.poll()
        t.poll()                                # nothing new: nothing emitted
    assert c.lines == [x for i in range(5) for x in ("line %d" % i, "line %d b" % i)]


def test_partial_last_line_held_until_newline(tailers, log):
    write(log, "")
    t, c = tailer(tailers, log)
    t.poll()
    append(log, "done\nhal")
    t.poll()
    assert c.take() == ["done"]
    # the saved offset points at the start of the unfinished line
    assert t.snapshot()["offset"] == len("done\n")
    append(log, "f a line")
    t.poll()
    assert c.take() == []
    append(log, "\n")
    t.poll()
    assert c.take() == ["half a line"]
    assert t.snapshot()["offset"] == os.path.getsize(log)


def test_crlf_lines(tailers, log):
    write(log, "")
    t, c = tailer(tailers, log)
    t.poll()
    append(log, b"win 1\r\nwin 2\r")
    t.poll()
    append(log, b"\nunix 3\n")
    t.poll()
    assert c.lines == ["win 1", "win 2", "unix 3"]


def test_invalid_utf8_replaced(tailers, log):
    write(log, "")
    t, c = tailer(tailers, log)
    t.poll()
    append(log, b"bad \xff\xfe\xc0 bytes\ngood\n")
    t.poll()
    assert c.lines == ["bad \ufffd\ufffd\ufffd bytes", "good"]


def test_nul_bytes(tailers, log):
    write(log, "")
    t, c = tailer(tailers, log)
    t.poll()
    append(log, b"nul\x00inside\n\x00\x00\x00\nafter\n")
    t.poll()
    lines = c.lines
    assert len(lines) == 3
    assert lines[0].replace("\x00", "") == "nulinside"
    assert lines[1].replace("\x00", "") == ""
    assert lines[2] == "after"


def test_huge_line_keeps_first_64k_and_memory_stays_bounded(tailers, log, logs):
    write(log, "")
    t, c = tailer(tailers, log)
    t.poll()
    append(log, "before\n")
    size = 5 * 1024 * 1024
    block = b"x" * (512 * 1024)
    for _ in range(size // len(block)):       # the writer is slow: poll in between
        append(log, block)
        t.poll()
        assert len(t.cur.splitter.pending) <= MAX_LINE
    append(log, "\nafter\n")
    t.poll()
    assert c.lines == ["before", "x" * MAX_LINE, "after"]
    assert t.snapshot()["offset"] == os.path.getsize(log)
    assert warned(logs, log, "cut")


def test_long_line_written_at_once_is_cut_too(tailers, log, logs):
    """A 200 KB line that arrives in one read (with its newline) is cut to
    MAX_LINE like a 5 MB one."""
    write(log, "")
    t, c = tailer(tailers, log)
    t.poll()
    append(log, b"before\n" + b"w" * (200 * 1024) + b"\nafter\n")
    t.poll()
    assert c.lines == ["before", "w" * MAX_LINE, "after"]
    assert warned(logs, log, "cut")


def test_huge_line_in_one_poll_uses_bounded_memory(tailers, log):
    write(log, "")
    t, c = tailer(tailers, log)
    t.poll()
    append(log, b"before\n" + b"q" * (16 * 1024 * 1024) + b"\nafter\n")
    tracemalloc.start()
    polls = 0
    try:
        while t.poll():                 # each poll reads at most MAX_POLL_READ
            polls += 1
            assert t.more or polls > 16 * 1024 * 1024 // bs.MAX_POLL_READ
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert c.lines == ["before", "q" * MAX_LINE, "after"]
    assert polls == 16 * 1024 * 1024 // bs.MAX_POLL_READ + 1, "16 MiB and a few bytes: %d polls" % polls
    assert peak < 8 * 1024 * 1024, "reading a 16 MiB line peaked at %d bytes" % peak


# ---- FileTailer: rotation while running -------------------------------------

def test_rename_create_rotation_reads_lines_appended_to_old_file(tailers, log, logs):
    write(log, "")
    clock = FakeClock(1000.0)
    t, c = tailer(tailers, log, clock=clock)
    t.poll()
    append(log, "before 1\n")
    t.poll()
    os.rename(log, log + ".1")
    append(log + ".1", "old after rename 1\n")   # the writer has not reopened yet
    write(log, "new 1\n")
    clock.advance(1)
    t.poll()
    append(log + ".1", "old after rename 2\n")
    append(log, "new 2\n")
    clock.advance(1)
    t.poll()
    lines = c.lines
    assert sorted(lines) == sorted(["before 1", "old after rename 1", "old after rename 2",
                                    "new 1", "new 2"])
    assert lines.index("old after rename 1") < lines.index("old after rename 2")
    assert lines.index("new 1") < lines.index("new 2")
    assert any(log in m for m in messages(logs, logging.INFO)), "the rotation is not logged with the path"


def test_rotated_quiet_file_still_read_during_grace(tailers, log):
    """A log that was quiet for a while gets rotated; syslog keeps writing
    to the renamed file until its HUP.  Those lines must be read for
    RETIRED_GRACE seconds after the rotation was noticed, not after the
    old file last grew."""
    write(log, "")
    clock = FakeClock(1000.0)
    t, c = tailer(tailers, log, clock=clock)
    t.poll()
    append(log, "last line before a quiet hour\n")
    t.poll()
    clock.advance(3600)
    os.rename(log, log + ".1")
    write(log, "")
    t.poll()                                     # rotation noticed here
    clock.advance(1)
    t.poll()                                     # some other wake-up, nothing new
    append(log + ".1", "written to the old file before the HUP\n")
    clock.advance(1)
    t.poll()
    assert c.lines == ["last line before a quiet hour", "written to the old file before the HUP"]


def test_rotated_file_read_within_grace_then_closed(tailers, log):
    write(log, "")
    clock = FakeClock(1000.0)
    t, c = tailer(tailers, log, clock=clock)
    t.poll()
    os.rename(log, log + ".1")
    write(log, "")
    t.poll()
    clock.advance(RETIRED_GRACE / 2)
    t.poll()
    append(log + ".1", "late write to the old file\n")
    clock.advance(1)
    t.poll()
    assert c.take() == ["late write to the old file"]
    # the old file keeps a partial line, then goes quiet past the grace:
    append(log + ".1", "no newline ever")
    clock.advance(1)
    t.poll()
    assert c.take() == []
    clock.advance(RETIRED_GRACE + 1)
    t.poll()
    assert c.take() == ["no newline ever"]        # flushed when the old file is let go
    assert t.retired == []
    append(log + ".1", "too late\n")
    append(log, "new file line\n")
    t.poll()
    assert c.take() == ["new file line"]


# The other rotations a running tailer sees: each case appends `before`
# (read as usual), changes the file, polls once and expects `expected`, a
# warning naming the path (and `warn`'s words) unless `warn` is None, then
# reads `after` appended to the file left behind, if given.

def copytruncate_running(log, t):
    shutil.copyfile(log, log + ".1")
    os.truncate(log, 0)
    append(log, "after 1\n")


def truncate_running(log, t):
    with open(log, "w"):
        pass                                     # : > file


REGROWN = ["Nov 27 00:00:%02d host app: NEW %d" % (i, i) for i in range(10)]


def truncate_then_regrow_before_poll(log, t):
    old_size = os.path.getsize(log)
    new = "".join(line + "\n" for line in REGROWN)
    assert len(new) > old_size
    with open(log, "r+b") as fh:                 # same inode: truncate, then a burst
        fh.truncate(0)
        fh.write(new.encode())


def delete_create_running(log, t):
    os.unlink(log)
    write(log, "recreated 1\n")


def delete_poll_then_create(log, t):
    os.unlink(log)
    t.poll()                                     # the path is gone for a while
    t.poll()
    write(log, "reborn 1\n")


@pytest.mark.parametrize("before, change, expected, warn, after", [
    pytest.param("a long enough line number 1\na long enough line number 2\n", copytruncate_running,
                 ["after 1"], ("shrank",), "after 2\n", id="copytruncate"),
    pytest.param("evidence line 1\nevidence line 2\nevidence line 3\n", truncate_running,
                 [], ("shrank",), "fresh\n", id="truncate"),
    pytest.param("Nov 26 10:00:00 host app: old 1\nNov 26 10:00:01 host app: old 2\n",
                 truncate_then_regrow_before_poll, REGROWN, (), None, id="truncate-then-regrow-past-offset"),
    pytest.param("before delete\n", delete_create_running,
                 ["recreated 1"], None, "recreated 2\n", id="delete-create"),
    pytest.param("", delete_poll_then_create,
                 ["reborn 1"], None, None, id="delete-poll-then-create"),
])
def test_rotation_while_running(tailers, log, logs, before, change, expected, warn, after):
    write(log, "")
    t, c = tailer(tailers, log)
    t.poll()
    if before:
        append(log, before)
        t.poll()
        assert c.take() == before.splitlines()
    change(log, t)
    t.poll()
    assert c.take() == expected
    if warn is not None:
        assert warned(logs, log, *warn), "the change is not reported with the path"
    if after:
        append(log, after)
        t.poll()
        assert c.take() == after.splitlines()


def test_file_missing_at_start_is_waited_for_and_read_from_zero(tailers, log, logs):
    t, c = tailer(tailers, log)
    t.poll()
    t.poll()
    assert c.lines == []
    assert warned(logs, log, "does not exist")
    assert len([m for m in messages(logs) if "does not exist" in m]) == 1, "warned more than once"
    write(log, "first 1\nfirst 2\n")
    t.poll()
    assert c.take() == ["first 1", "first 2"]
    append(log, "first 3\n")
    t.poll()
    assert c.take() == ["first 3"]


# ---- FileTailer: restart gaps ----------------------------------------------

def stop(t: FileTailer):
    snap = t.snapshot()
    t.close()
    return json.loads(json.dumps(snap))           # as it comes back from the state file


def test_restart_gap_lines_written_while_stopped_are_read(tailers, log):
    write(log, "history\n")
    t1, c1 = tailer(tailers, log)
    t1.poll()
    append(log, "seen 1\npart")
    t1.poll()
    assert c1.lines == ["seen 1"]
    snap = stop(t1)
    append(log, "ial line\nwhile stopped 1\nwhile stopped 2\n")
    t2, c2 = tailer(tailers, log, saved=snap)
    t2.poll()
    assert c2.take() == ["partial line", "while stopped 1", "while stopped 2"]
    append(log, "after restart\n")
    t2.poll()
    assert c2.take() == ["after restart"]


def test_restart_without_new_lines_reads_nothing(tailers, log, logs):
    write(log, "x\n")
    t1, _ = tailer(tailers, log)
    t1.poll()
    snap = stop(t1)
    t2, c2 = tailer(tailers, log, saved=snap)
    t2.poll()
    assert c2.lines == []
    assert messages(logs) == []


# Rotations while birdsentinel is stopped: each case has `before` read and
# a snapshot taken, changes the file, starts a new tailer from the snapshot,
# polls once and expects `expected`, a warning naming the path (and `warn`'s
# words) unless `warn` is None, then reads `after` appended to the (new)
# file, if given.

def rename_create_stopped(log):
    append(log, "Nov 26 09:00:01 host app: written after the stop, before the rotation\n")
    os.rename(log, log + ".1")
    append(log + ".1", "Nov 26 09:00:02 host app: written to the old file after the rename\n")
    write(log, "Nov 26 09:00:03 host app: new file line 1\n")


def rename_no_new_file_yet_stopped(log):
    append(log, "tail of the old file\n")
    os.rename(log, log + ".1")


def copytruncate_stopped(log):
    append(log, "Nov 26 09:00:01 host app: written while stopped, then copied\n")
    shutil.copyfile(log, log + ".1")
    os.truncate(log, 0)
    append(log, "Nov 26 09:00:02 host app: after the truncate\n")


def truncate_stopped(log):
    write(log, "short\n")


HEAD = "Nov 26 09:00:00 host app: %s\n" % ("h" * 150)


def truncate_to_a_prefix_stopped(log):
    """Same inode, same first bytes, but shorter than the saved offset."""
    os.truncate(log, len(HEAD))
    append(log, "appended\n")


def delete_create_stopped(log):
    os.unlink(log)
    write(log, "recreated while stopped\n")


@pytest.mark.parametrize("before, change, expected, warn, after", [
    pytest.param("Nov 26 09:00:00 host app: seen before the stop\n", rename_create_stopped,
                 ["Nov 26 09:00:01 host app: written after the stop, before the rotation",
                  "Nov 26 09:00:02 host app: written to the old file after the rename",
                  "Nov 26 09:00:03 host app: new file line 1"],
                 ("rotated",), "Nov 26 09:00:04 host app: new file line 2\n", id="rename-create"),
    pytest.param("read\n", rename_no_new_file_yet_stopped,
                 ["tail of the old file"], None, "new file appears\n", id="rename-new-file-not-yet-created"),
    pytest.param("Nov 26 09:00:00 host app: a line read before the stop\n", copytruncate_stopped,
                 ["Nov 26 09:00:01 host app: written while stopped, then copied",
                  "Nov 26 09:00:02 host app: after the truncate"], (), None, id="copytruncate"),
    pytest.param("a rather long line that was read before the stop\n" * 3, truncate_stopped,
                 ["short"], (), None, id="truncate"),
    pytest.param(HEAD + "Nov 26 09:00:01 host app: second\nNov 26 09:00:02 host app: third\n",
                 truncate_to_a_prefix_stopped, [HEAD.rstrip("\n"), "appended"], ("shrank",), None,
                 id="truncate-to-a-prefix"),
    pytest.param("before\n", delete_create_stopped,
                 ["recreated while stopped"], None, None, id="delete-create"),
])
def test_rotation_while_stopped(tailers, log, logs, before, change, expected, warn, after):
    write(log, "")
    t1, _ = tailer(tailers, log)
    t1.poll()
    append(log, before)
    t1.poll()
    snap = stop(t1)
    change(log)
    t2, c2 = tailer(tailers, log, saved=snap)
    t2.poll()
    assert c2.take() == expected
    if warn is not None:
        assert warned(logs, log, *warn), "the change is not reported with the path"
    if after:
        append(log, after)
        t2.poll()
        assert c2.take() == after.splitlines()


def test_rotated_while_stopped_is_finished_whole_past_one_bounded_read(tailers, log):
    """A poll reads at most MAX_POLL_READ, but a rotated file found at start
    is not looked at again: all of it is read at once."""
    write(log, "")
    t1, _ = tailer(tailers, log)
    t1.poll()
    snap = stop(t1)
    n = bs.MAX_POLL_READ // 50 + 1000                    # more than one bounded read of 50-byte lines
    append(log, "".join("Nov 26 09:00:00 host app: line %020d\n" % i for i in range(n)))
    os.rename(log, log + ".1")
    write(log, "new file line\n")
    t2, c2 = tailer(tailers, log, saved=snap)
    while t2.poll():
        pass
    got = c2.take()
    assert len(got) == n + 1 and got[n - 1].endswith("%020d" % (n - 1)) and got[-1] == "new file line"


def test_restart_after_rotation_seen_while_running_does_not_reread_old_file(tailers, log):
    """Running: the file is renamed, the old file read to its end, no new
    file yet; then a stop.  The state kept for the path (the last snapshot
    that was not None, as App.save_state keeps it) must not send the old
    file's lines through the rules a second time after the restart."""
    write(log, "")
    t1, c1 = tailer(tailers, log)
    t1.poll()
    append(log, "alert a\n")
    t1.poll()
    kept = t1.snapshot()
    os.rename(log, log + ".1")
    append(log + ".1", "alert b\n")
    t1.poll()
    assert c1.lines == ["alert a", "alert b"]
    snap = t1.snapshot()
    kept = snap if snap is not None else kept
    t1.close()
    write(log, "alert c\n")
    t2, c2 = tailer(tailers, log, saved=json.loads(json.dumps(kept)))
    t2.poll()
    assert c2.take() == ["alert c"], "lines of the rotated file were read twice"


# ---- StateStore --------------------------------------------------------------

def test_state_round_trip_and_atomic_save(tmp_path):
    path = str(tmp_path / "birdsentinel.state")
    store = StateStore(path)
    state, found = store.load()
    assert found is False and state == bs.State()
    state.files["/var/log/x"] = {"dev": 1, "ino": 2, "fp": "3:abc", "offset": 42}
    state.counters.thresholds["/a/\0"] = [100, 2]
    assert store.save(state) is True
    ino1 = os.stat(path).st_ino
    state.files["/var/log/x"]["offset"] = 43
    assert store.save(state) is True
    assert os.stat(path).st_ino != ino1, "saved in place instead of by rename"
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    assert sorted(os.listdir(str(tmp_path))) == ["birdsentinel.state"], "temp files left behind"
    loaded, found = StateStore(path).load()
    assert found is True
    assert loaded.files["/var/log/x"]["offset"] == 43
    assert loaded.counters.thresholds["/a/\0"] == [100, 2]
    assert loaded == state


def test_state_file_of_the_untyped_format_still_loads(tmp_path):
    """A state file written before the typed state (it had tweet_seq and sent as two lists) keeps its positions,
    counters and delivery state; the key no part owns any more is dropped at the next save."""
    path = str(tmp_path / "birdsentinel.state")
    old = {"version": 1, "files": {"/var/log/x": {"dev": 1, "ino": 2, "fp": "3:abc", "offset": 42}}, "journal": {},
           "thresholds": {"0:/a/": {"k": [100, 2]}}, "throttles": {}, "users": {"@alice": "1001"},
           "sent": {"dm": [5.0], "tweet": []}, "spend": [[5.0, 0.015]], "blocked_until": {"dm": 9.0}, "tweet_seq": 7,
           "outbox_committed": 3}
    write(path, json.dumps(old))
    os.chmod(path, 0o600)
    state, found = StateStore(path).load()
    assert found is True
    assert state.files == old["files"] and state.outbox_committed == 3
    assert state.counters.thresholds == old["thresholds"]
    assert (state.delivery.users, state.delivery.sent, state.delivery.spend, state.delivery.blocked_until) == (
        old["users"], old["sent"], old["spend"], old["blocked_until"])
    assert StateStore(path).save(state)
    saved = json.loads(open(path).read())
    assert "tweet_seq" not in saved and dict(saved, tweet_seq=7) == dict(old, omprog=[])    # a newer key: its default


def test_state_save_crash_before_rename_keeps_old_file(tmp_path, monkeypatch, logs):
    path = str(tmp_path / "birdsentinel.state")
    store = StateStore(path)
    state = bs.State(outbox_committed=1)
    assert store.save(state)
    before = open(path, "rb").read()

    def boom(src, dst):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(bs.os, "replace", boom)
    state.outbox_committed = 2
    assert store.save(state) is False
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(str(tmp_path))) == ["birdsentinel.state"], "temp file left behind"
    assert warned(logs, path, level=logging.ERROR)


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'{"version": 999, "files": {}}',
                                     b"\xff\xfe garbage", b'{"version": 1, "spend": {}}',
                                     b'{"version": 1, "outbox_committed": "7"}', b'{"version": 1, "users": []}'])
def test_corrupt_state_reported_by_path_and_kept_aside(tmp_path, logs, content):
    path = str(tmp_path / "birdsentinel.state")
    write(path, content)
    os.chmod(path, 0o600)                   # a state file others can read is refused (test_security)
    state, found = StateStore(path).load()
    assert found is False
    assert state == bs.State()
    errors = messages(logs, logging.ERROR)
    assert any(path in m and "corrupt" in m for m in errors), errors
    assert open(path + ".corrupt", "rb").read() == content
    assert not os.path.exists(path)


def test_failing_writer_keeps_old_file_and_logs_once(tmp_path, logs):
    path = str(tmp_path / "birdsentinel.state")
    write(path, json.dumps({"version": bs.STATE_VERSION}))
    before = open(path, "rb").read()
    broken = {"on": True}

    def writer(p, data):
        if broken["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        bs.atomic_write(p, data)
    store = StateStore(path, writer=writer)
    state = bs.State(outbox_committed=7)
    for _ in range(5):
        assert store.save(state) is False
    assert open(path, "rb").read() == before
    errors = [m for m in messages(logs, logging.ERROR) if path in m]
    assert len(errors) == 1, errors
    assert "No space left" in errors[0]
    broken["on"] = False
    assert store.save(state) is True
    assert json.loads(open(path).read())["outbox_committed"] == 7
    assert warned(logs, path, "writable again")


# ---- acquire_lock ----------------------------------------------------------

def test_second_lock_on_same_state_fails_naming_pid(tmp_path):
    state = str(tmp_path / "birdsentinel.state")
    fd = acquire_lock(state)
    try:
        assert open(state + ".lock").read().strip() == str(os.getpid())
        with pytest.raises(LockedError) as ei:
            acquire_lock(state)
        msg = str(ei.value)
        assert str(os.getpid()) in msg and state in msg
        assert ei.value.exit_code == 75
    finally:
        os.close(fd)
    fd2 = acquire_lock(state)                     # released: free again
    os.close(fd2)


def test_lock_held_by_another_process(tmp_path):
    state = str(tmp_path / "birdsentinel.state")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            sys.path.insert(0, %r)
            import birdsentinel
            birdsentinel.acquire_lock(%r)
            print("locked", flush=True)
            sys.stdin.read()
        """ % (os.path.dirname(bs.__file__), state))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(LockedError) as ei:
            acquire_lock(state)
        assert "pid %d" % holder.pid in str(ei.value)
        assert state in str(ei.value)
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
    os.close(acquire_lock(state))                  # the holder exited: the lock is free


# ---- Outbox ----------------------------------------------------------------

def outbox(tmp_path):
    return Outbox(str(tmp_path / "birdsentinel.outbox"), str(tmp_path / "birdsentinel.dead"), fsync=False)


def test_outbox_add_done_load_round_trip(tmp_path):
    ob = outbox(tmp_path)
    ob.load()
    e1 = ob.add("dm", "@ops", "[h] first", 1.0)
    e2 = ob.add("tweet", "", "[h] second", 2.0, {"seq": 1, "defang": True})
    e3 = ob.add("dm", "", "[h] third", 3.0)
    ob.done([e1["id"], e3["id"]])
    assert [e["id"] for e in ob.entries.values()] == [e2["id"]]
    ob2 = outbox(tmp_path)
    ob2.load()
    assert len(ob2) == 1
    (p,) = ob2.entries.values()
    assert (p["kind"], p["to"], p["text"], p["seq"]) == ("tweet", "", "[h] second", 1)
    e4 = ob2.add("dm", "", "[h] fourth", 4.0)
    assert e4["id"] > e3["id"], "ids reused after a reload"


def test_outbox_torn_last_line_is_skipped(tmp_path, logs):
    ob = outbox(tmp_path)
    ob.load()
    ob.add("dm", "", "[h] kept 1", 1.0)
    ob.add("dm", "", "[h] kept 2", 2.0)
    append(ob.path, b'{"op":"add","id":3,"kind":"dm","to":"","te')   # kill -9 mid-write
    ob2 = outbox(tmp_path)
    ob2.load()
    assert [e["text"] for e in ob2.entries.values()] == ["[h] kept 1", "[h] kept 2"]
    assert warned(logs, ob.path)
    e = ob2.add("dm", "", "[h] after crash", 3.0)
    ob3 = outbox(tmp_path)
    ob3.load()
    assert [x["text"] for x in ob3.entries.values()] == ["[h] kept 1", "[h] kept 2", "[h] after crash"]
    assert e["id"] >= 3


def test_outbox_dead_letter(tmp_path):
    ob = outbox(tmp_path)
    ob.load()
    e1 = ob.add("dm", "@nobody", "[h] undeliverable", 5.0)
    e2 = ob.add("dm", "", "[h] fine", 6.0)
    ob.dead(e1, "403: You cannot send messages to this user.", 7.0)
    assert [e["id"] for e in ob.entries.values()] == [e2["id"]]
    with open(ob.dead_path) as fh:
        recs = [json.loads(line) for line in fh]
    assert len(recs) == 1
    assert recs[0]["text"] == "[h] undeliverable"
    assert recs[0]["to"] == "@nobody"
    assert "403" in recs[0]["reason"]
    ob2 = outbox(tmp_path)
    ob2.load()
    assert [e["id"] for e in ob2.entries.values()] == [e2["id"]]
