"""Real journals for the journal-source tests (tests/test_journal.py).

Journal files are written by the real systemd-journal-remote (export format on
its stdin, one short run per append: an appending run continues the file's
seqnum, a new file gets a new seqnum id) and read back with the real
journalctl.  No journald is needed.

How a real same-seqnum-id gap is made (Journal.fill_field_table +
Journal.vacuum_archived): a journal file's field hash table has a fixed 333
buckets; journal-remote checks journal_file_rotate_suggested() before each
write and rotates once more than 3/4 of them are used.  One entry with 300
distinct field NAMES fills it, so journal-remote's NEXT write rotates: the
file is archived as x@SEQNUMID-HEAD-REALTIME.journal and a new x.journal is
opened with the old one as template, i.e. the SAME seqnum id and the seqnum
going on.  `journalctl --directory=DIR --vacuum-files=1` then deletes the
archived file (journalctl never vacuums an active file): the entries in it
are gone, and the first surviving entry's i= jumps past them -- exactly what
--vacuum-* does to a real /var/log/journal.
"""

import glob
import json
import os
import signal
import struct
import subprocess
import sys
import time
import uuid

from fakes import alive

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
JOURNALCTL = "journalctl"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
FILL_FIELDS = 300                   # distinct field names in one entry: > 3/4 of the 333 buckets


def _b(v):
    return v if isinstance(v, bytes) else str(v).encode("utf-8")


def export_entry(fields):
    """One entry in the journal export format (binary form for values with a newline or a
    byte outside printable ASCII, 'NAME=value' for the rest)."""
    out = []
    for name, value in fields.items():
        v = _b(value)
        if any(c < 0x20 or c >= 0x7f for c in v):
            out.append(_b(name) + b"\n" + struct.pack("<Q", len(v)) + v + b"\n")
        else:
            out.append(_b(name) + b"=" + v + b"\n")
    return b"".join(out) + b"\n"


def parse_cursor(cursor):
    """{'s': seqnum id, 'i': seqnum (int, from hex), ...} of a journal cursor."""
    d = dict(part.split("=", 1) for part in cursor.split(";") if "=" in part)
    d["i"] = int(d["i"], 16)
    return d


def expected_line(fields, local_host):
    """What rules should see for an entry (spec12: 'Mmm dd HH:MM:SS HOST IDENT[PID]: MESSAGE'),
    computed here independently of birdsentinel.  Text fields only."""
    tm = time.localtime(int(fields["__REALTIME_TIMESTAMP"]) / 1e6)
    stamp = "%s %2d %02d:%02d:%02d" % (MONTHS[tm.tm_mon - 1], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
    host = fields.get("_HOSTNAME") or local_host
    ident = fields.get("SYSLOG_IDENTIFIER") or fields.get("_COMM") or "-"
    pid = fields.get("SYSLOG_PID") or fields.get("_PID")
    msg = fields.get("MESSAGE", "")
    while msg.endswith("\n"):
        msg = msg[:-1]
    msg = msg.replace("\r\n", "\n").replace("\n", " \u23ce ")
    return "%s %s %s%s: %s" % (stamp, host, ident, "[%s]" % pid if pid else "", msg)


class Journal:
    """A journal-remote store in `directory` (one file, x.journal, until it rotates)."""

    def __init__(self, directory, name="x.journal", host="web7"):
        self.dir = os.path.abspath(str(directory))
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, name)
        self.host = host
        self.boot_id = uuid.uuid4().hex
        self.appended = []                  # every entry given to journal-remote, in order
        self.filler = 0

    def entry(self, message, ident="app", pid="42", host=None, unit=None, ts=None, **fields):
        """An entry's fields (a dict: trusted and untrusted fields alike, as a remote host sends
        them).  pid=None leaves SYSLOG_PID out; host=None gives this store's default host."""
        e = {"__REALTIME_TIMESTAMP": str(int(ts * 1e6) if ts is not None else int(time.time() * 1e6)),
             "__MONOTONIC_TIMESTAMP": str(int(time.monotonic() * 1e6)),
             "_BOOT_ID": self.boot_id,
             "_HOSTNAME": host or self.host,
             "MESSAGE": message}
        if ident is not None:
            e["SYSLOG_IDENTIFIER"] = ident
        if pid is not None:
            e["SYSLOG_PID"] = str(pid)
        if unit is not None:
            e["_SYSTEMD_UNIT"] = unit
        for k, v in fields.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        return e

    def append(self, *entries):
        """Write the entries with one run of the real systemd-journal-remote."""
        entries = [self.entry(e) if isinstance(e, str) else e for e in entries]
        data = b"".join(export_entry(e) for e in entries)
        r = subprocess.run([JOURNAL_REMOTE, "--output=" + self.path, "--split-mode=none", "-"],
                           input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        if r.returncode != 0:
            raise RuntimeError("systemd-journal-remote exited %d: %s" % (r.returncode, r.stderr.decode()[-2000:]))
        self.appended.extend(entries)
        return r.stderr.decode("utf-8", "replace")

    def say(self, *messages, **kw):
        """Append one entry per message (same keyword fields for all), in one run."""
        return self.append(*[self.entry(m, **kw) for m in messages])

    def entries(self, *args):
        """Every entry as journalctl -o json returns it (extra journalctl args allowed)."""
        r = subprocess.run([JOURNALCTL, "--directory=" + self.dir, "-o", "json", "--all", "--no-pager", "-q"]
                           + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        if r.returncode != 0:
            raise RuntimeError("journalctl exited %d: %s" % (r.returncode, r.stderr.decode()[-2000:]))
        return [json.loads(line) for line in r.stdout.decode("utf-8").splitlines() if line.strip()]

    def cursors(self):
        return [e["__CURSOR"] for e in self.entries()]

    def files(self):
        return sorted(os.path.basename(p) for p in glob.glob(os.path.join(self.dir, "*.journal")))

    def fill_field_table(self, message="filler entry with many fields"):
        """Append one entry with FILL_FIELDS distinct field names: journal-remote's next
        write rotates the file (same seqnum id; see the module docstring)."""
        self.filler += 1
        extra = {"FILL%d_%04d" % (self.filler, j): "x" for j in range(FILL_FIELDS)}
        return self.append(self.entry(message, ident="filler", **extra))

    def vacuum_archived(self):
        """`journalctl --directory=DIR --vacuum-files=1`: delete every archived file.
        Returns the names of the files it deleted."""
        before = set(self.files())
        r = subprocess.run([JOURNALCTL, "--directory=" + self.dir, "--vacuum-files=1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        if r.returncode != 0:
            raise RuntimeError("journalctl --vacuum-files exited %d: %s" % (r.returncode, r.stderr.decode()))
        return sorted(before - set(self.files()))

    def remove_all_files(self):
        """Delete every journal file of the store (a journal replaced by a new one: the next
        append creates a new file, with a new seqnum id)."""
        for p in glob.glob(os.path.join(self.dir, "*.journal")):
            os.unlink(p)


# ---- the daemon -------------------------------------------------------------

def children(pid):
    """Child pids of process pid (all its threads), from /proc."""
    out = []
    for f in glob.glob("/proc/%d/task/*/children" % pid):
        try:
            with open(f) as fh:
                out.extend(int(x) for x in fh.read().split())
        except OSError:
            pass
    return out


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


class JDaemon:
    """The real CLI reading a --journal-dir store and delivering to the fake X server.
    Every run logs to one --log-file; stderr of run n goes to stderr.n."""

    def __init__(self, script, env, fx, tw, tmp_path, journal, conf_text):
        self.script, self.env, self.fx, self.tw = script, env, fx, tw
        self.dir = str(tmp_path)
        self.journal = journal
        self.sd = os.path.join(self.dir, "sd")
        os.makedirs(self.sd, exist_ok=True)
        self.conf = os.path.join(self.dir, "rules.conf")
        with open(self.conf, "w") as fh:
            fh.write(conf_text)
        self.logfile = os.path.join(self.dir, "birdsentinel.log")
        self.state_path = os.path.join(self.sd, "birdsentinel.state")
        self.procs = []
        self.proc = None
        self.seen_children = set()          # journalctl pids seen, killed in cleanup if left
        self.boots = 0

    def argv(self, extra=()):
        return [sys.executable, self.script, "-c", self.conf, "--journal-dir", self.journal.dir,
                "--script-dir", self.sd, "--twitter-dir", self.tw, "--api-base", self.fx.base_url,
                "--log-file", self.logfile] + list(extra)

    def start(self, *extra):
        n = len(self.procs)
        with open(os.path.join(self.dir, "stderr.%d" % n), "w") as err:
            p = subprocess.Popen(self.argv(extra), env=self.env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        self.procs.append(p)
        self.proc = p
        return p

    def journalctls(self, proc=None):
        """pids of the journalctl children of the current (or given) run."""
        p = proc or self.proc
        if p is None or p.poll() is not None:
            return []
        pids = [c for c in children(p.pid) if os.path.basename((cmdline(c) or [""])[0]) == "journalctl"]
        self.seen_children.update(pids)
        return pids

    def wait_journalctl(self, timeout=10, other_than=()):
        pids = []

        def found():
            pids[:] = [c for c in self.journalctls() if c not in other_than and alive(c)]
            return bool(pids) or self.proc.poll() is not None
        ok = wait_for(found, timeout)
        return pids if ok and pids else []

    def state(self):
        try:
            with open(self.state_path, "rb") as fh:
                return json.loads(fh.read().decode("utf-8"))
        except (OSError, ValueError):
            return None

    def journal_state(self):
        st = self.state() or {}
        j = st.get("journal") if isinstance(st, dict) else None
        if not isinstance(j, dict):
            return None
        for key in ("dir:" + self.journal.dir, "dir:" + os.path.realpath(self.journal.dir)):
            if isinstance(j.get(key), dict):
                return j[key]
        return None

    def saved_cursor(self):
        js = self.journal_state() or {}
        c = js.get("cursor")
        return c if isinstance(c, str) else None

    def wait_ready(self, timeout=20, **boot_fields):
        """Feed non-matching 'boot' entries until the run has saved a cursor: from then
        on every entry appended is this daemon's to read (a first start begins at the end)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.saved_cursor() is not None and self.journalctls():
                return self.saved_cursor()
            if self.proc.poll() is not None:
                raise AssertionError("the daemon exited (%s) while starting:\n%s" % (self.proc.returncode, self.diag()))
            if time.monotonic() > deadline:
                raise AssertionError("the daemon never saved a journal cursor:\n%s" % self.diag())
            self.boots += 1
            self.journal.say("boot noise %d" % self.boots, **(boot_fields or {"ident": "bootnoise"}))
            time.sleep(0.1)

    def wait_cursor(self, cursor, timeout=10):
        """Until the saved cursor is `cursor` (the daemon has read and committed that entry)."""
        return wait_for(lambda: self.saved_cursor() == cursor, timeout)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Signal the current run and wait; returns (returncode, seconds it took)."""
        p = self.proc
        self.journalctls(p)
        t0 = time.monotonic()
        p.send_signal(sig)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
            rc = "timeout"
        return rc, time.monotonic() - t0

    def log_text(self):
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def log_lines(self, level, *words):
        return [l for l in self.log_text().splitlines() if (": %s: " % level) in l and all(w in l for w in words)]

    def diag(self):
        errs = ""
        for i in range(len(self.procs)):
            try:
                with open(os.path.join(self.dir, "stderr.%d" % i), encoding="utf-8", errors="replace") as fh:
                    errs += fh.read()
            except OSError:
                pass
        return "log:\n%s\nstderr:\n%s\nDMs: %r" % (self.log_text()[-4000:], errs[-3000:],
                                                  [d["text"][:160] for d in self.fx.dms][-40:])

    def cleanup(self):
        for p in self.procs:
            self.journalctls(p)
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        # journalctl children left behind by a SIGKILLed run (they are ours too)
        for pid in sorted(self.seen_children):
            argv = cmdline(pid)
            if alive(pid) and argv and os.path.basename(argv[0]) == "journalctl" \
                    and any(self.journal.dir in a for a in argv):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())
