"""--omprog (issue 12): birdsentinel as the program of rsyslog's omprog action,
speaking the confirmMessages="on" protocol, against the loopback fake X
server (tests/fakex.py, which verifies every OAuth 1.0a signature).

* The protocol through pipes, without rsyslog: `OK` first, then one `OK` per
  message line once it is durable (an OK'd alert survives a SIGKILL), EOF
  ends it with exit 0, stdout carries nothing but the protocol (not even
  with echo, bell and exec actions), an outbox that is full answers an error
  line for a message that needs it, and the alert names the origin host of
  the syslog header.
* A real rsyslogd (imtcp on 127.0.0.1, an omprog action whose binary is a
  small wrapper that starts birdsentinel): 1,000 messages over TCP while
  birdsentinel is SIGKILLed 5 times (rsyslog restarts it): every matching
  message reaches X at least once, <= 1 duplicate per kill, none lost (the
  figures are printed and written to tests/.figures/omprog.json); an outbox
  that is full makes rsyslog keep the message and send it again once X is
  back; the alert names the forwarding host, for RFC 3164 and RFC 5424 input.
* The rig itself is checked first with a stand-in program that speaks the
  protocol, so a failure of the birdsentinel tests is not the rig's.

Every wait is bounded; every process started here (rsyslogd and each
program it started) is killed in teardown.
"""

import fcntl
import json
import os
import queue
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

import pytest

import birdsentinel as bs
from fakes import alive, print_figures, read_text, valid_state, wait_until
from fakex import FakeX, write_creds

CK, CS, AT, ATS = "ck-omprog", "cs-omprog-SECRET", "999-at-omprog", "ats-omprog-SECRET"
DM_PATH = "/2/dm_conversations"
ALICE_ID = "1001"
BUDGET = "budget dm_per_15m=100000,dm_per_day=1000000\n"      # no coalescing: every alert is its own DM
SEED = 20260112
MESSAGES = 1000                 # test 2: messages sent over TCP
EVERY = 10                      # one in EVERY matches the dm rule
KILLS = 5
FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".figures")
ALERT_NO = re.compile(r"ALERT (\d+)\b")
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"

# The documented template (docs: central log host): the traditional file format.
TEMPLATE = ('template(name="bs" type="string" string="%TIMESTAMP% %HOSTNAME% %syslogtag%'
            '%msg:::sp-if-no-1st-sp%%msg:::drop-last-lf%\\n")')

RSYSLOG_CONF = """\
global(workDirectory="{work}" processInternalMessages="on")
module(load="imtcp")
module(load="omprog")
{template}
ruleset(name="fwd") {{
  action(type="omprog" name="birdsentinel" binary="{binary}" template="bs"
         confirmMessages="on" queue.type="LinkedList" queue.size="50000" queue.saveOnShutdown="on"
         action.resumeRetryCount="-1" action.resumeInterval="1" reportFailures="on")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="fwd")
action(type="omfile" file="{internal}")
"""

# A program that speaks omprog's protocol: what the rig is checked with.
STANDIN = r'''
import os, sys
got = sys.argv[1]
sys.stdout.write("OK\n"); sys.stdout.flush()
for line in sys.stdin:
    if "REFUSE" in line and os.path.exists(got + ".refuse"):
        with open(got + ".refused", "a") as fh:
            fh.write(line)
        sys.stdout.write("standin: not now: send it again later\n"); sys.stdout.flush()
        continue
    with open(got, "a") as fh:
        fh.write(line); fh.flush(); os.fsync(fh.fileno())
    sys.stdout.write("OK\n"); sys.stdout.flush()
with open(got + ".eof", "a") as fh:
    fh.write("eof\n")
'''


# ---- fixtures ----------------------------------------------------------------

@pytest.fixture
def fx():
    f = FakeX(consumer_key=CK, consumer_secret=CS, access_token=AT, access_token_secret=ATS,
              users={"alice": ALICE_ID}, me=("999", "sentinel_bot")).start()
    f.rate_limits["dm"] = 10 ** 9           # the fake's own DM window is not under test
    yield f
    f.on_event = None
    f.stop()


@pytest.fixture
def tw(tmp_path):
    d = str(tmp_path / "twitter")
    write_creds(d, CK, CS, AT, ATS)
    return d


@pytest.fixture
def box(secret_scan):
    """Whatever a test starts (Proto, Rsyslog): stopped, killed and scanned in teardown."""
    made = []
    yield made
    for thing in reversed(made):
        thing.cleanup(secret_scan)


def alice_texts(fx):
    with fx._lock:
        return [d["text"] for d in fx.dms if d["to"] == ALICE_ID]


def outbox_records(sd):
    """(adds: list of add records, pending: id -> record) of the outbox journal, read only."""
    try:
        with open(os.path.join(str(sd), "birdsentinel.outbox"), "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return [], {}
    adds = []
    for line in raw.split(b"\n"):
        try:
            rec = json.loads(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict) and rec.get("op") == "add":
            adds.append(rec)
    return adds, dict(bs.parse_journal(raw)[0])


def write_conf(tmp_path, text):
    path = tmp_path / "rules.conf"
    path.write_text(text)
    sd = tmp_path / "sd"
    sd.mkdir(exist_ok=True)
    return str(path), str(sd)


def bs_argv(script, conf, sd, tw, fx):
    return [sys.executable, script, "--omprog", "-c", conf, "--script-dir", sd,
            "--twitter-dir", tw, "--api-base", fx.base_url]


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return fh.read().decode("utf-8", "replace").replace("\0", " ")
    except OSError:
        return ""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- the protocol through pipes --------------------------------------------------

class Proto:
    """birdsentinel --omprog with its stdin and stdout as pipes, the way omprog runs it."""

    def __init__(self, argv, env, err_path):
        self.err_path = err_path
        with open(err_path, "ab") as err:
            self.p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        self.raw = bytearray()              # everything it wrote on stdout
        self.q = queue.Queue()
        self.t = threading.Thread(target=self._read, name="omprog-stdout", daemon=True)
        self.t.start()

    def _read(self):
        for line in iter(self.p.stdout.readline, b""):
            self.raw += line
            self.q.put(line)
        self.q.put(None)

    def diag(self):
        return "stdout so far: %r\nrc: %r\nstderr:\n%s" % (bytes(self.raw)[-500:], self.p.poll(),
                                                          read_text(self.err_path)[-3000:])

    def line(self, timeout=15.0):
        """The next line it writes on stdout (bytes, with its newline)."""
        try:
            item = self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no line on stdout within %.0f s\n%s" % (timeout, self.diag())) from None
        if item is None:
            self.q.put(None)
            raise AssertionError("stdout closed\n" + self.diag())
        return item

    def no_line(self, seconds):
        """Nothing more on stdout for `seconds` (the protocol: one answer per line)."""
        try:
            item = self.q.get(timeout=seconds)
        except queue.Empty:
            return True
        self.q.put(item)
        return False

    def send(self, *lines):
        self.p.stdin.write(b"".join(line.encode("utf-8") + b"\n" for line in lines))
        self.p.stdin.flush()

    def eof(self, timeout=20.0):
        """Close stdin (rsyslog stopped); the exit status."""
        self.p.stdin.close()
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("still running %.0f s after EOF on stdin\n%s" % (timeout, self.diag())) from None
        self.t.join(timeout=10)
        return rc

    def cleanup(self, scan):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=10)
        for f in (self.p.stdin, self.p.stdout):
            try:
                f.close()
            except (OSError, ValueError):
                pass
        self.t.join(timeout=5)
        scan.text("omprog stdout", bytes(self.raw))
        scan.file("omprog stderr", self.err_path)


def start_proto(box, script, env, conf, sd, tw, fx, tmp_path, n=0):
    p = Proto(bs_argv(script, conf, sd, tw, fx), env, str(tmp_path / ("stderr.%d" % n)))
    box.append(p)
    return p


def line_of(host, text, tag="sshd[12]"):
    return "Dec  1 11:27:30 %s %s: %s" % (host, tag, text)


def test_protocol_ok_first_then_one_ok_per_line_eof_exit_0_stdout_only_protocol(
        script, env, fx, tw, tmp_path, box):
    marker = tmp_path / "exec-ran"
    conf, sd = write_conf(tmp_path, BUDGET +
                          "watchfor /ALERT/\n"
                          "    echo bold\n"
                          "    bell 2\n"
                          "    dm @alice\n"
                          "    exec /bin/sh -c 'echo child-stdout; echo child-stderr >&2; echo ran >> %s' sh\n"
                          "watchfor /NOISE/\n"
                          "    echo\n" % shlex.quote(str(marker)))
    p = start_proto(box, script, env, conf, sd, tw, fx, tmp_path)

    # 1. OK once ready, before any input; ready means the lock is taken
    assert p.line(20) == b"OK\n", p.diag()
    with open(os.path.join(sd, "birdsentinel.state.lock"), "rb") as lock:
        with pytest.raises(BlockingIOError):
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert p.no_line(0.3), "more than one line before any message: %r" % bytes(p.raw)

    # 2. one OK per line, written once the alert is in the outbox
    alerts = []
    sent = 0
    for host, text, tag in (("web7", "ALERT one: Failed password for root from 203.0.113.9", "sshd[12]"),
                            ("db3", "NOISE two", "cron[5]"),
                            ("web7", "nothing to see", "sshd[12]"),
                            ("mail-1", "ALERT three: relay denied", "postfix/smtpd[99]")):
        line = line_of(host, text, tag)
        p.send(line)
        sent += 1
        assert p.line() == b"OK\n", p.diag()
        if "ALERT" in text:
            want = "[%s] %s" % (host, line)
            alerts.append(want)
            adds, _pending = outbox_records(sd)
            assert any(a["text"] == want for a in adds) or want in alice_texts(fx), \
                "OK before the alert was in the outbox: %r\n%s" % (want, p.diag())

    # 3. a burst written at once: exactly one OK per line, in order
    burst = []
    for i in range(40):
        host = "app%d" % (i % 3)
        text = "ALERT burst %d" % i if i in (7, 31) else ("NOISE burst %d" % i if i % 2 else "quiet %d" % i)
        burst.append((host, line_of(host, text, "app[7]")))
    p.send(*[line for _h, line in burst])
    sent += len(burst)
    for _ in burst:
        assert p.line() == b"OK\n", p.diag()
    alerts += ["[%s] %s" % (h, line) for h, line in burst if "ALERT" in line]
    assert p.no_line(0.5), "an answer for no line: %r" % bytes(p.raw)[-200:]

    # the alerts reach X, naming the origin host of each line; the exec actions ran
    assert fx.wait_for(lambda: len(alice_texts(fx)) >= len(alerts), 20), p.diag()
    assert alice_texts(fx) == alerts
    assert wait_until(lambda: read_text(str(marker)).count("ran") >= len(alerts), 15), p.diag()

    # 4. EOF: exit 0; stdout held the protocol and nothing else
    assert p.eof() == 0, p.diag()
    assert bytes(p.raw) == b"OK\n" * (1 + sent), bytes(p.raw)
    err = read_text(p.err_path)
    assert "child-stderr" not in err and "child-stdout" not in err     # children's output goes to /dev/null
    with open(os.path.join(sd, "birdsentinel.state"), "rb") as fh:
        assert valid_state(json.loads(fh.read().decode("utf-8")))
    time.sleep(0.3)
    assert alice_texts(fx) == alerts                                     # nothing more, nothing twice


def test_protocol_ok_means_durable_an_acknowledged_alert_survives_sigkill(
        script, env, fx, tw, tmp_path, box):
    conf, sd = write_conf(tmp_path, BUDGET + "watchfor /ALERT/\n    dm @alice\n")
    fx.inject(status=503, count=10 ** 6, path_prefix=DM_PATH)          # X takes no DM for now
    p = start_proto(box, script, env, conf, sd, tw, fx, tmp_path, 0)
    assert p.line(20) == b"OK\n", p.diag()
    line = line_of("web7", "ALERT kept through a SIGKILL")
    p.send(line)
    assert p.line() == b"OK\n", p.diag()
    p.p.send_signal(signal.SIGKILL)                                     # at once after the OK
    p.p.wait(timeout=10)
    _adds, pending = outbox_records(sd)
    assert [e["text"] for e in pending.values()] == ["[web7] " + line]
    assert alice_texts(fx) == []
    fx.clear_faults()
    q = start_proto(box, script, env, conf, sd, tw, fx, tmp_path, 1)   # what rsyslog does next
    assert q.line(20) == b"OK\n", q.diag()
    assert fx.wait_for(lambda: len(alice_texts(fx)) >= 1, 20), q.diag()
    assert q.eof() == 0, q.diag()
    assert alice_texts(fx) == ["[web7] " + line]
    assert bytes(q.raw) == b"OK\n"


def read_state(sd):
    with open(os.path.join(sd, "birdsentinel.state"), "rb") as fh:
        return json.loads(fh.read().decode("utf-8"))


def test_protocol_a_message_committed_but_never_answered_is_taken_once_when_rsyslog_sends_it_again(
        script, env, fx, tw, tmp_path, box):
    """A kill between the commit and the OK: rsyslog sends the message again, and its alert is in the outbox
    already.  The commit saves the messages' fingerprints, the save after the OK empties the list; a restart skips
    (and answers OK to) messages that come first and match it, in order.  The 1,000-message SIGKILL test saw this
    window and a DM X had just taken hit by one kill: two duplicates for it."""
    conf, sd = write_conf(tmp_path, BUDGET + "watchfor /ALERT/\n    dm @alice\n")
    fx.inject(status=503, count=10 ** 6, path_prefix=DM_PATH)          # the alerts stay in the outbox
    first, other = line_of("web7", "ALERT committed, OK lost"), line_of("web7", "ALERT the next one")
    fp = "%08x" % zlib.crc32(first.encode("utf-8"))
    p = start_proto(box, script, env, conf, sd, tw, fx, tmp_path, 0)
    assert p.line(20) == b"OK\n", p.diag()
    p.send(first)
    assert p.line() == b"OK\n", p.diag()
    assert wait_until(lambda: read_state(sd)["omprog"] == [], 5), read_state(sd)     # answered: the list empties
    p.p.send_signal(signal.SIGKILL)
    p.p.wait(timeout=10)
    state = read_state(sd)
    state["omprog"] = [fp]                      # what the commit of `first` wrote, had the kill come before the OK
    with open(os.path.join(sd, "birdsentinel.state"), "w") as fh:
        json.dump(state, fh)

    q = start_proto(box, script, env, conf, sd, tw, fx, tmp_path, 1)   # rsyslog: a new instance, the message again
    assert q.line(20) == b"OK\n", q.diag()
    q.send(first, other, first)                 # the third is a new message that repeats the first: taken
    assert [q.line(), q.line(), q.line()] == [b"OK\n"] * 3, q.diag()
    fx.clear_faults()
    assert fx.wait_for(lambda: len(alice_texts(fx)) >= 3, 20), q.diag()
    assert q.eof() == 0, q.diag()
    time.sleep(0.3)
    assert alice_texts(fx) == ["[web7] " + first, "[web7] " + other, "[web7] " + first]
    assert read_state(sd)["omprog"] == []


def test_protocol_outbox_full_answers_an_error_line_and_keeps_nothing(
        script, env, fx, tw, tmp_path, box, request):
    conf, sd = write_conf(tmp_path, BUDGET + "outbox max_entries=2\nwatchfor /ALERT/\n    dm @alice\n")
    fx.inject(status=503, count=10 ** 6, path_prefix=DM_PATH)          # X refuses: the outbox fills
    p = start_proto(box, script, env, conf, sd, tw, fx, tmp_path)
    assert p.line(20) == b"OK\n", p.diag()
    lines = [line_of("web7", "ALERT full %d" % i) for i in (1, 2, 3)]
    p.send(lines[0])
    assert p.line() == b"OK\n", p.diag()
    p.send(lines[1])
    assert p.line() == b"OK\n", p.diag()
    p.send(lines[2])                                                    # would be the 3rd entry
    answer = p.line()
    print("outbox full answer: %r" % answer)
    assert answer.endswith(b"\n") and answer.count(b"\n") == 1
    assert not answer.startswith(b"OK"), "a message that needs a full outbox was acknowledged"
    assert answer.strip(), "an empty error line"
    assert p.no_line(0.5), "more than one answer for one line: %r" % bytes(p.raw)
    adds, pending = outbox_records(sd)
    assert [e["text"] for e in pending.values()] == ["[web7] " + lines[0], "[web7] " + lines[1]]
    assert len(adds) == 2, adds                                         # the refused one was not kept

    # X is back: the outbox drains; the message sent again (as rsyslog does) is taken once
    fx.clear_faults()
    assert fx.wait_for(lambda: len(alice_texts(fx)) >= 2, 30), p.diag()
    assert wait_until(lambda: not outbox_records(sd)[1], 10), p.diag()
    p.send(lines[2])
    assert p.line() == b"OK\n", p.diag()
    assert fx.wait_for(lambda: len(alice_texts(fx)) >= 3, 20), p.diag()
    assert p.eof() == 0, p.diag()
    time.sleep(0.3)
    # the refused message was not counted as lost either: no "alerts not kept" note, no extra DM
    assert alice_texts(fx) == ["[web7] " + line for line in lines]
    assert bytes(p.raw) == b"OK\n" * 3 + answer + b"OK\n"
    print_figures(request, {"outbox_full_answer": answer.decode("utf-8", "replace")})


# ---- a real rsyslogd ------------------------------------------------------------------

class Rsyslog:
    """rsyslogd -n with imtcp on 127.0.0.1 and one omprog action whose binary is a
    wrapper script: it notes its pid (= the program's, it execs) and starts
    `argv` with a clean environment and its stderr appended to a file."""

    def __init__(self, base, argv, home):
        self.dir = base / "rsyslog"
        self.work = self.dir / "work"
        self.work.mkdir(parents=True)
        self.marker = str(base)                 # in every program's command line
        self.port = free_port()
        self.conf = self.dir / "rsyslog.conf"
        self.pidfile = self.dir / "rsyslogd.pid"
        self.pids = self.dir / "program.pids"
        self.err = self.dir / "program.stderr"
        self.out = self.dir / "rsyslogd.out"
        self.internal = self.dir / "internal.log"      # rsyslogd's own messages (the default ruleset)
        self.wrapper = self.dir / "omprog-wrapper.sh"
        self.wrapper.write_text(
            "#!/bin/sh\n"
            "echo $$ >> %s\n"
            "exec /usr/bin/env -i HOME=%s PATH=/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 %s 2>> %s\n"
            % (shlex.quote(str(self.pids)), shlex.quote(str(home)), " ".join(shlex.quote(a) for a in argv),
               shlex.quote(str(self.err))))
        os.chmod(str(self.wrapper), 0o755)
        self.conf.write_text(RSYSLOG_CONF.format(work=self.work, template=TEMPLATE, binary=self.wrapper,
                                                 port=self.port, internal=self.internal))
        self.proc = None
        self.sock = None

    def start(self):
        assert os.path.exists(RSYSLOGD), "rsyslogd is not installed (Debian package rsyslog; .ci/run installs it)"
        with open(str(self.out), "ab") as out:
            self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return self.proc.poll() is not None
        assert wait_until(listening, 15) and self.proc.poll() is None, "rsyslogd did not start\n" + self.diag()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self

    def send_raw(self, *msgs):
        """Syslog messages as a forwarding rsyslog sends them over TCP (LF framing)."""
        self.sock.sendall(b"".join(m.encode("utf-8") + b"\n" for m in msgs))

    def send(self, *lines):
        """RFC 3164 lines (`Mmm dd HH:MM:SS HOST TAG: MSG`), PRI user.notice."""
        self.send_raw(*["<13>" + line for line in lines])

    def program_pids(self):
        return [int(x) for x in read_text(str(self.pids)).split()]

    def current(self):
        """The pid of the program instance that is running now (None: none)."""
        pids = self.program_pids()
        if pids and alive(pids[-1]) and self.marker in proc_cmdline(pids[-1]):
            return pids[-1]
        return None

    def failures(self):
        """The error lines the program answered, as rsyslogd logged them (reportFailures="on")."""
        return re.findall(r"omprog: program '[^']*' returned: (.*?)(?: \[v8[^\]]*\])?$",
                          read_text(str(self.internal)), re.M)

    def restarts(self):
        """How many times rsyslogd saw the program end and said it will restart it."""
        return len(re.findall(r"omprog: program '[^']*' \(pid \d+\) terminated; will be restarted",
                              read_text(str(self.internal))))

    def diag(self):
        return "rsyslogd (rc %r):\n%s\nrsyslogd's log:\n%s\nprogram stderr:\n%s" % (
            self.proc.poll() if self.proc else None, read_text(str(self.out))[-2000:],
            read_text(str(self.internal))[-2500:], read_text(str(self.err))[-3000:])

    def stop(self, timeout=20.0):
        """SIGTERM rsyslogd (it closes the program's stdin); True if it ended in time."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is None or self.proc.poll() is not None:
            return True
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def cleanup(self, scan):
        self.stop(timeout=15)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in self.program_pids():                     # what rsyslogd left running
            if alive(pid) and self.marker in proc_cmdline(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        scan.file("program stderr", str(self.err))
        scan.file("rsyslogd output", str(self.out))
        scan.file("rsyslogd log", str(self.internal))


def start_rsyslog(box, tmp_path, argv):
    r = Rsyslog(tmp_path, argv, tmp_path)
    box.append(r)
    return r.start()


def test_rig_selfcheck_with_a_standin_program(tmp_path, box):
    """rsyslogd, imtcp and omprog do what the birdsentinel tests below rely on:
    the program gets each message as one template line; a SIGKILLed program is
    restarted and the message in flight sent again; an error line makes
    rsyslog keep the message and send it again later, to the same program;
    stopping rsyslogd is EOF on the program's stdin."""
    standin = tmp_path / "standin.py"
    standin.write_text(STANDIN)
    got = tmp_path / "got.txt"
    r = start_rsyslog(box, tmp_path, [sys.executable, str(standin), str(got)])
    lines = [line_of("web%d" % (i % 3), "message %d" % i) for i in range(30)]
    r.send(*lines[:10])
    assert wait_until(lambda: read_text(str(got)).count("\n") >= 10, 15), r.diag()
    assert read_text(str(got)).splitlines() == lines[:10]           # the template: the traditional format
    first = r.current()
    assert first is not None, r.diag()
    os.kill(first, signal.SIGKILL)
    r.send(*lines[10:])
    assert wait_until(lambda: r.current() not in (None, first), 15), r.diag()
    assert wait_until(lambda: set(lines) <= set(read_text(str(got)).splitlines()), 15), r.diag()
    seen = read_text(str(got)).splitlines()
    assert len(seen) - len(set(seen)) <= 1 and set(seen) == set(lines)
    assert r.restarts() == 1, r.diag()
    # an error line: kept, sent again later, by the same program
    second = r.current()
    (tmp_path / "got.txt.refuse").write_text("")
    refused = line_of("web7", "REFUSE me for now")
    r.send(refused, line_of("web7", "after the refused one"))
    assert wait_until(lambda: read_text(str(got) + ".refused").count("\n") >= 2, 15), r.diag()   # re-sent
    assert refused not in read_text(str(got))
    os.unlink(str(tmp_path / "got.txt.refuse"))
    assert wait_until(lambda: "after the refused one" in read_text(str(got)), 15), r.diag()
    tail = read_text(str(got)).splitlines()[-2:]
    assert tail == [refused, line_of("web7", "after the refused one")]     # once, in order
    assert r.current() == second
    assert len(r.failures()) >= 2 and set(r.failures()) == {"standin: not now: send it again later"}, r.diag()
    assert r.stop(), r.diag()
    assert wait_until(lambda: "eof" in read_text(str(got) + ".eof"), 10), r.diag()


def test_rsyslog_1000_messages_5_sigkills_none_lost_at_most_one_duplicate_per_kill(
        script, fx, tw, tmp_path, box, request):
    rng = random.Random(SEED)
    conf, sd = write_conf(tmp_path, BUDGET + "watchfor /ALERT (\\d+)/\n    dm @alice\n")
    r = start_rsyslog(box, tmp_path, bs_argv(script, conf, sd, tw, fx))
    msgs, expected = [], {}
    for i in range(1, MESSAGES + 1):
        host = "web%d" % (i % 7)
        body = ("ALERT %d disk on fire" % i) if i % EVERY == 0 else ("seq %d all quiet" % i)
        line = line_of(host, body, "app[%d]" % (1000 + i))
        msgs.append(line)
        if i % EVERY == 0:
            expected[i] = "[%s] %s" % (host, line)

    sent = [0]
    sent_at = {}                        # message number -> wall time just before it went to rsyslogd
    kill_wall = []                      # wall time just after each SIGKILL
    ticks = [0]
    done_sending = threading.Event()
    send_lock = threading.Lock()

    def sender():                       # 1,000 messages in about 8 s, 10 at a time
        t = time.monotonic()
        for k in range(0, MESSAGES, 10):
            with send_lock:
                now = time.time()
                for i in range(k + 1, k + 11):
                    sent_at[i] = now
                r.send(*msgs[k:k + 10])
                sent[0] += len(msgs[k:k + 10])
            t += 0.08
            time.sleep(max(0.0, t - time.monotonic()))
        done_sending.set()

    def nudge():                        # after the 1,000: a line that matches nothing, so rsyslog writes again
        with send_lock:
            ticks[0] += 1
            r.send(line_of("web0", "tick %d" % ticks[0], "app[1]"))

    armed = [None]
    arm_lock = threading.Lock()

    def on_event(ev):                   # in the fake server, before its answer: the DM is accepted
        with arm_lock:
            pid, armed[0] = armed[0], None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
                kill_wall.append(time.time())
            except ProcessLookupError:
                pass

    fx.on_event = on_event
    t0, wall0 = time.monotonic(), time.time()
    th = threading.Thread(target=sender, name="syslog-sender", daemon=True)
    th.start()
    kills = []
    try:
        assert wait_until(lambda: r.current() is not None, 20), r.diag()
        for k in range(KILLS):
            pid = r.current()
            assert pid is not None, r.diag()
            way = "at-dm-accepted" if k in (1, 3) else "timed"
            if way != "timed":
                with arm_lock:
                    armed[0] = pid
                if not wait_until(lambda: armed[0] is None, 3.0):
                    with arm_lock:
                        fell_back, armed[0] = armed[0] is not None, None
                    if fell_back:
                        way = "at-dm-fallback-timed"
            if way != "at-dm-accepted":
                time.sleep(rng.uniform(0.15, 0.9))
                assert alive(pid) and r.marker in proc_cmdline(pid), "instance %d ended by itself\n%s" % (
                    pid, r.diag())
                os.kill(pid, signal.SIGKILL)
                kill_wall.append(time.time())
            kills.append({"way": way, "t": round(time.monotonic() - t0, 2)})
            # rsyslog starts a new instance (it notices at its next write; after the 1,000, a nudge)
            deadline = time.monotonic() + 20
            while r.current() in (None, pid):
                assert time.monotonic() < deadline, "rsyslog did not restart the program\n" + r.diag()
                if done_sending.is_set():
                    nudge()
                time.sleep(0.1)
            kills[-1]["restart_s"] = round(time.monotonic() - t0 - kills[-1]["t"], 2)
    finally:
        fx.on_event = None
        th.join(timeout=30)
    assert done_sending.is_set() and sent[0] == MESSAGES

    def delivered():
        return {int(m.group(1)) for m in map(ALERT_NO.search, alice_texts(fx)) if m}
    assert wait_until(lambda: set(expected) <= delivered(), 60), \
        "never delivered: %s\n%s" % (sorted(set(expected) - delivered())[:20], r.diag())
    # settled: the outbox is empty and X gets nothing more
    assert wait_until(lambda: not outbox_records(sd)[1], 20), r.diag()
    n = len(fx.dms)
    time.sleep(1.0)
    assert len(fx.dms) == n
    elapsed = time.monotonic() - t0

    texts = alice_texts(fx)
    counts = {}
    for t in texts:
        counts[t] = counts.get(t, 0) + 1
    unknown = [t for t in texts if t not in expected.values()]
    lost = [i for i, t in expected.items() if t not in counts]
    duplicates = len(texts) - len(counts)
    with fx._lock:
        copy_t = {t: [d["t"] for d in fx.dms if d["text"] == t] for t, c in counts.items() if c > 1}
    copies = {int(ALERT_NO.search(t).group(1)): [round(x - wall0, 2) for x in v] for t, v in copy_t.items()}
    # <= 1 duplicate per kill: each extra copy of an alert is owed to a kill of its own that
    # came after its message went to rsyslogd and before its last copy reached X
    windows = sorted(((sent_at[int(ALERT_NO.search(t).group(1))], max(v), int(ALERT_NO.search(t).group(1)))
                      for t, v in copy_t.items() for _extra in v[1:]), key=lambda w: w[1])
    free, unexplained = sorted(kill_wall), []
    for start, end, alert in windows:
        k = next((k for k in free if start <= k <= end), None)
        if k is None:
            unexplained.append(alert)
        else:
            free.remove(k)
    figures = {"messages": MESSAGES, "matching": len(expected), "ticks": ticks[0], "kills": len(kills),
               "kill_ways": [k["way"] for k in kills], "restart_s": [k["restart_s"] for k in kills],
               "instances": len(r.program_pids()), "dms": len(texts), "lost": len(lost),
               "duplicates": duplicates, "kill_at_s": [k["t"] for k in kills],
               "duplicated_alert_copies_at_s": {str(a): v for a, v in sorted(copies.items())},
               "duplicated_alert_sent_at_s": {str(a): round(sent_at[a] - wall0, 2) for a in sorted(copies)},
               "duplicates_without_a_kill_of_their_own": unexplained,
               "rsyslog_restarts": r.restarts(), "error_answers": len(r.failures()),
               "seconds": round(elapsed, 1)}
    print("omprog SIGKILL figures: %s" % json.dumps(figures, sort_keys=True))
    os.makedirs(FIGURES, exist_ok=True)
    with open(os.path.join(FIGURES, "omprog.json"), "w") as fh:
        json.dump(figures, fh, indent=2, sort_keys=True)
    print_figures(request, figures)

    assert unknown == [], unknown[:5]                   # every DM is an alert, named by its origin host
    assert lost == []
    assert len(kills) == KILLS and len(r.program_pids()) >= KILLS + 1
    assert duplicates <= len(kills), figures
    assert unexplained == [], figures
    assert r.restarts() == len(kills), r.diag()         # rsyslog saw each kill and restarted the program
    assert r.failures() == [], r.failures()[:5]         # never an answer but OK: stdout is the protocol
    assert r.stop(), r.diag()


def test_rsyslog_outbox_full_message_kept_by_rsyslog_and_delivered_once_x_is_back(
        script, fx, tw, tmp_path, box):
    conf, sd = write_conf(tmp_path, BUDGET + "outbox max_entries=2\nwatchfor /ALERT/\n    dm @alice\n")
    fx.inject(status=503, count=10 ** 6, path_prefix=DM_PATH)          # X down for DMs
    r = start_rsyslog(box, tmp_path, bs_argv(script, conf, sd, tw, fx))
    lines = [line_of("web7", "ALERT queued %d" % i) for i in range(1, 6)]
    r.send(lines[0], line_of("web7", "nothing"), *lines[1:])
    assert wait_until(lambda: len(outbox_records(sd)[1]) == 2, 20), r.diag()
    # while X is down, rsyslog holds the other three (birdsentinel keeps only two)
    time.sleep(3.0)
    adds, pending = outbox_records(sd)
    assert [e["text"] for e in pending.values()] == ["[web7] " + line for line in lines[:2]]
    assert len(adds) == 2, [a["text"] for a in adds]
    assert alice_texts(fx) == []
    assert r.current() is not None, r.diag()
    refusals = r.failures()                             # birdsentinel's answers, as rsyslogd logged them
    print("answers rsyslogd logged while the outbox was full: %r" % refusals[:3])
    assert len(refusals) >= 2, r.diag()                 # refused, kept by rsyslog and sent again (and again)
    assert not any(a.startswith("OK") for a in refusals)
    assert r.restarts() == 0, r.diag()                  # an error line, not a crash
    fx.clear_faults()                                                   # X is back
    assert fx.wait_for(lambda: len(alice_texts(fx)) >= 5, 45), \
        "delivered: %s\n%s" % (alice_texts(fx), r.diag())
    assert wait_until(lambda: not outbox_records(sd)[1], 10), r.diag()
    time.sleep(1.0)
    assert alice_texts(fx) == ["[web7] " + line for line in lines]     # each once, in order, nothing "lost"
    assert r.stop(), r.diag()


def test_rsyslog_alert_names_the_origin_host(script, fx, tw, tmp_path, box):
    conf, sd = write_conf(tmp_path, BUDGET + "watchfor /ALERT/\n    dm @alice\n")
    r = start_rsyslog(box, tmp_path, bs_argv(script, conf, sd, tw, fx))
    rfc3164 = line_of("web7", "ALERT from web7: Failed password for root")
    r.send(rfc3164)
    r.send_raw("<38>1 2025-12-01T11:27:30.000000+00:00 db3 sshd 4242 - - ALERT from db3: Accepted password")
    assert fx.wait_for(lambda: len(alice_texts(fx)) >= 2, 20), r.diag()
    got = alice_texts(fx)
    assert got[0] == "[web7] " + rfc3164
    # (for RFC 5424 input rsyslog's %syslogtag% is "sshd[4242]", without the colon)
    assert got[1].startswith("[db3] ") and "db3 sshd[4242]" in got[1] and \
        got[1].endswith("ALERT from db3: Accepted password"), got[1]
    assert r.stop(), r.diag()
