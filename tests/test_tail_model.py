"""Model-based test of FileTailer (issue 6), with hypothesis' stateful
testing: random sequences of append / partial append / completing the
partial / rename+create / appending to the renamed file (the program has
not reopened its log yet) / copytruncate / truncate / delete+recreate /
restart (snapshot -> new FileTailer(saved=snapshot), as App does) / clock
tick past the retired-file grace / poll, against a simple model of which
lines must be seen.

The model, per line: it *must* be seen by the end of the next poll once it
is complete in a file the tailer can still reach - the current file, a file
renamed away (the running tailer holds it open; a restarted one finds it
beside the log by inode), a file deleted while the running tailer held it
open.  A line *may* go unseen only when a truncation (plain or
copytruncate) destroyed it before a poll read it, or when its file was
deleted while the tailer was stopped, or deleted and the tailer restarted
(a crash) before it polled again.  A partial line orphaned by a rotation (its
newline never comes) may be seen once, as it stands.  Nothing may be seen
twice, and nothing may be seen that was not written.

An older rotated file (app.log.0) lies beside the log from the start, as
on any server: its lines are history and must never be read.

Rotations happen only when the tailer has looked at the current file since
the previous rotation (the daemon polls at every inotify event); a restart
in between is allowed.
"""
import os
import shutil
import tempfile

from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import birdsentinel as bs
from fakes import FakeClock


SEED = 20240611


@seed(SEED)
class TailerModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="bs-tail-model-")
        self.path = os.path.join(self.dir, "app.log")
        open(self.path, "wb").close()
        # history from before birdsentinel ran: never to be read
        with open(self.path + ".0", "wb") as fh:
            fh.write(b"H1-rotated-last-week\nH2-rotated-last-week\n")
        self.clock = FakeClock(1000.0)
        self.blocks = []
        self.tailer = bs.FileTailer(self.path, self.blocks.append, saved=None, clock=self.clock.monotonic)
        self.tailer.poll()                   # first sight of the (empty) file
        self.saved = None
        self.next_id = 0
        self.rot_n = 0
        self.texts = {}           # complete line text -> id
        self.prefixes = {}        # partial text -> id
        self.orphans = set()      # ids of partials whose newline will never come
        self.cur = []             # ids complete in the current file's current contents
        self.partial = None       # id of the unfinished last line of the current file
        self.required = set()
        self.optional = set()
        self.running = True       # the tailer has polled since its (re)start
        self.deleted_held = []    # lines of a deleted file the running tailer holds open
        self.old_path = None      # the file last renamed away, while the program may still write to it
        self.old_polled = False   # the tailer polled since that rename: the file is a retired handle
        self.retired_lines = []   # lines appended to it since the last poll, held by a retired handle
        self.old_via_sibling = False
        self.fresh = True         # the tailer has looked at the current file since the last rotation
        self.trace = []

    def teardown(self):
        self.tailer.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -----------------------------------------------------------
    def _append(self, data):
        with open(self.path, "ab") as fh:
            fh.write(data)

    def _new_id(self):
        self.next_id += 1
        return self.next_id

    def _orphan_partial(self):
        if self.partial is not None:
            self.orphans.add(self.partial)
            self.partial = None

    def _rotated(self):
        self.old_path = None
        self.cur = []
        self.fresh = False
        self.rot_n += 1

    def _seen(self):
        text = "".join(self.blocks)
        assert text == "" or text.endswith("\n")
        return text.split("\n")[:-1]

    # -- writing -----------------------------------------------------------
    @precondition(lambda self: self.partial is None)
    @rule(pad=st.integers(0, 150))
    def append_line(self, pad):
        i = self._new_id()
        text = "L%d-%s" % (i, "y" * pad)
        self.texts[text] = i
        self._append(text.encode() + b"\n")
        self.cur.append(i)
        self.required.add(i)
        self.trace.append("append L%d (%d bytes)" % (i, len(text) + 1))

    @precondition(lambda self: self.partial is None)
    @rule(pad=st.integers(0, 150))
    def append_partial(self, pad):
        i = self._new_id()
        text = "P%d-a%s" % (i, "z" * pad)
        self.prefixes[text] = i
        self.partial = i
        self._append(text.encode())
        self.trace.append("partial P%d" % i)

    @precondition(lambda self: self.partial is not None)
    @rule()
    def complete_partial(self):
        i = self.partial
        prefix = next(t for t, k in self.prefixes.items() if k == i)
        self.texts[prefix + "-b"] = i
        self._append(b"-b\n")
        self.partial = None
        self.cur.append(i)
        self.required.add(i)
        self.trace.append("complete P%d" % i)

    # -- rotations ---------------------------------------------------------
    def _unseen_become_optional(self, ids):
        seen = set(self._seen_ids())
        for i in ids:
            if i not in seen:
                self.required.discard(i)
                self.optional.add(i)

    @precondition(lambda self: self.fresh)
    @rule()
    def rename_create(self):
        old = "%s.r%d" % (self.path, self.rot_n)
        os.rename(self.path, old)
        open(self.path, "wb").close()
        ends_in_partial = self.partial is not None
        self._orphan_partial()
        self._rotated()                      # its lines stay required
        if not ends_in_partial:              # (an append would finish the orphaned partial)
            self.old_path, self.old_polled = old, False
        self.old_via_sibling = not self.running
        self.trace.append("rename+create")

    @precondition(lambda self: self.old_path is not None)
    @rule(pad=st.integers(0, 150))
    def append_to_renamed(self, pad):
        """The program still writes to the file logrotate renamed."""
        i = self._new_id()
        text = "O%d-%s" % (i, "w" * pad)
        self.texts[text] = i
        with open(self.old_path, "ab") as fh:
            fh.write(text.encode() + b"\n")
        if self.old_polled:
            self.retired_lines.append(i)
        self.required.add(i)
        self.trace.append("append O%d to the renamed file" % i)

    @precondition(lambda self: self.fresh)
    @rule()
    def copytruncate(self):
        shutil.copyfile(self.path, "%s.c%d" % (self.path, self.rot_n))
        with open(self.path, "r+b") as fh:
            fh.truncate(0)
        self._unseen_become_optional(self.cur)
        self._orphan_partial()
        self._rotated()
        self.trace.append("copytruncate")

    @precondition(lambda self: self.fresh)
    @rule()
    def truncate(self):
        with open(self.path, "r+b") as fh:
            fh.truncate(0)
        self._unseen_become_optional(self.cur)
        self._orphan_partial()
        self._rotated()
        self.trace.append("truncate")

    @precondition(lambda self: self.fresh)
    @rule()
    def delete_recreate(self):
        os.unlink(self.path)
        open(self.path, "wb").close()
        if not self.running:                 # nobody holds the deleted file open
            self._unseen_become_optional(self.cur)
        else:                                # the tailer holds it open until it next polls
            self.deleted_held += self.cur
        self._orphan_partial()
        self._rotated()
        self.trace.append("delete+recreate")

    # -- the tailer --------------------------------------------------------
    @rule()
    def restart(self):
        snap = self.tailer.snapshot()
        if snap is not None:                 # App keeps the last snapshot it had
            self.saved = dict(snap)
        self.tailer.close()
        # a deleted file the old tailer still held open is gone with it
        self._unseen_become_optional(self.deleted_held)
        self.deleted_held = []
        # retired handles are closed with the old tailer
        self._unseen_become_optional(self.retired_lines)
        self.retired_lines = []
        if self.old_path is not None:
            if self.old_polled:              # it was only a retired handle
                self.old_path = None
            else:                            # still the saved file: finished at the next start
                self.old_via_sibling = True
        self.tailer = bs.FileTailer(self.path, self.blocks.append, saved=self.saved,
                                    clock=self.clock.monotonic)
        self.running = False
        self.trace.append("restart (saved offset %s, fp %s)" % (
            self.saved and self.saved["offset"], self.saved and self.saved["fp"][:8]))

    @rule()
    def tick_past_grace(self):
        self.clock.t += bs.RETIRED_GRACE + 1
        self.old_path = None                 # lines written later may come after the grace
        self.trace.append("tick")

    @rule()
    def poll(self):
        self.tailer.poll()
        self.deleted_held = []
        self.retired_lines = []
        self.old_polled = True
        if self.old_via_sibling:             # a restarted tailer reads the sibling once
            self.old_path = None
            self.old_via_sibling = False
        self.running = True
        self.fresh = True
        self.trace.append("poll")
        missing = sorted(self.required - set(self._seen_ids()))
        assert not missing, "lines %s written before this poll were not seen; steps:\n  %s" % (
            missing, "\n  ".join(self.trace))

    # -- invariants --------------------------------------------------------
    def _seen_ids(self):
        out = []
        for t in self._seen():
            if t in self.texts:
                out.append(self.texts[t])
            elif t in self.prefixes:
                out.append(self.prefixes[t])
            else:
                out.append(("?", t))
        return out

    @invariant()
    def nothing_unwritten_nothing_twice(self):
        seen = []
        for t in self._seen():
            if t in self.texts:
                seen.append(self.texts[t])
            elif t in self.prefixes and self.prefixes[t] in self.orphans:
                seen.append(self.prefixes[t])
            else:
                raise AssertionError("seen %r, which was never written as a line; steps:\n  %s"
                                     % (t[:60], "\n  ".join(self.trace)))
        dup = sorted({i for i in seen if seen.count(i) > 1})
        assert not dup, "lines %s seen more than once; steps:\n  %s" % (dup, "\n  ".join(self.trace))


TailerModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_tailer_model = TailerModel.TestCase


def test_restart_after_empty_log_rotated_while_stopped_reads_the_right_sibling(tmp_path):
    """Found by the model above, replayed by hand (logrotate with dateext).
    The daemon saw the fresh, still empty log (saved fingerprint: the one of
    zero bytes), a line was appended, the daemon was killed before it read
    it, and the log was rotated while it was down.  On restart the tailer
    must finish app.log-20240108 (the file it was reading, found by inode)
    from the saved offset, and leave app.log-20240101 (read long ago) alone."""
    path = str(tmp_path / "app.log")
    open(path, "w").close()
    blocks = []
    t = bs.FileTailer(path, blocks.append)
    t.poll()
    with open(path, "a") as fh:
        fh.write("L1\n")
    os.rename(path, path + "-20240101")
    open(path, "w").close()
    t.poll()                                   # reads L1, follows the new empty file
    with open(path, "a") as fh:
        fh.write("L2\n")                       # ... and is killed before it reads this
    saved = t.snapshot()
    t.close()
    os.rename(path, path + "-20240108")       # logrotate while it is down
    with open(path, "w") as fh:
        fh.write("L3\n")
    t = bs.FileTailer(path, blocks.append, saved=saved)
    try:
        t.poll()
    finally:
        t.close()
    assert "".join(blocks).split("\n")[:-1] == ["L1", "L2", "L3"]
