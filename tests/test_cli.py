"""The real command line, run as a subprocess: flags, exit codes, exec
injection, the classic swatch config and init line (daemon, SIGHUP, SIGTERM),
non-blocking actions, the state lock, --once across runs, restart gaps,
--read-pipe, hostile bytes, and the standard-library-only rule.

Every run passes --script-dir inside tmp_path and a HOME inside tmp_path, so
nothing touches the real home directory.  Every wait is bounded (<= 10 s per
condition) and every spawned process is killed by a fixture, even when the
test fails.
"""
import ast
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
import uuid
from typing import Callable, List, Optional

import pytest

import birdsentinel as bs

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 10.0                 # upper bound for anything that should take milliseconds
CONTROL_BYTES = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


# ---- helpers ---------------------------------------------------------------

def wait_for(pred: Callable[[], object], timeout: float = WAIT, interval: float = 0.02,
             what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def make_env(tmp_path) -> dict:
    env = dict(os.environ)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    env["XDG_STATE_HOME"] = str(home / ".local" / "state")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("BIRDSENTINEL_API_BASE", None)
    env.pop("CREDENTIALS_DIRECTORY", None)
    return env


def run(script, args, tmp_path, timeout=60, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("cwd", str(tmp_path))
    return subprocess.run([PY, script] + [str(a) for a in args], capture_output=True,
                          env=make_env(tmp_path), timeout=timeout, **kw)


def one_line_error(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace")
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, "expected one line on stderr, got:\n" + text
    return lines[0]


def append(path, data) -> None:
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(str(path), "ab") as fh:
        fh.write(data)


def recorder(path, out) -> str:
    """An executable that appends its arguments, as one JSON list, to out."""
    path = str(path)
    with open(path, "w") as fh:
        fh.write(textwrap.dedent("""\
            #!%s
            import json, sys
            with open(%r, "a") as fh:
                fh.write(json.dumps(sys.argv[1:]) + "\\n")
            """ % (PY, str(out))))
    os.chmod(path, 0o755)
    return path


def records(out) -> List[List[str]]:
    try:
        with open(str(out)) as fh:
            return [json.loads(line) for line in fh if line.endswith("\n")]
    except FileNotFoundError:
        return []


def recorded_lines(out) -> List[str]:
    return [r[-1] for r in records(out)]


def read_state(path) -> Optional[dict]:
    try:
        with open(str(path)) as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError):
        return None


def read_text(path) -> str:
    try:
        with open(str(path), "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def prime(log, state_path, timeout: float = WAIT) -> None:
    """Wait until a running watcher has read `log` to its end: append lines
    no rule matches until the saved offset covers them.  The state file may
    know the log by a relative name."""
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        append(log, "prime %d\n" % n)
        size = os.path.getsize(str(log))
        until = time.monotonic() + 0.6
        while time.monotonic() < until:
            st = read_state(state_path)
            files = (st or {}).get("files", {})
            if any(os.path.basename(k) == os.path.basename(str(log)) and (e or {}).get("offset") == size
                   for k, e in files.items()):
                return
            time.sleep(0.02)
        n += 1
        if time.monotonic() > deadline:
            raise AssertionError("the watcher never read %s (state %s)" % (log, read_state(state_path)))


def alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return fields[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class Procs:
    """Processes a test started; all killed at teardown."""

    def __init__(self) -> None:
        self.popens: List[subprocess.Popen] = []
        self.daemons: List[int] = []

    def popen(self, script, args, tmp_path, **kw) -> subprocess.Popen:
        kw.setdefault("cwd", str(tmp_path))
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen([PY, script] + [str(a) for a in args], env=make_env(tmp_path),
                             stdin=subprocess.DEVNULL, **kw)
        self.popens.append(p)
        return p

    def daemon(self, pid: int) -> None:
        self.daemons.append(pid)

    def cleanup(self) -> None:
        for p in self.popens:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.daemons:
            if alive(pid) and "birdsentinel" in cmdline(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def procs():
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


def stop_foreground(p: subprocess.Popen) -> int:
    p.send_signal(signal.SIGTERM)
    return p.wait(timeout=WAIT)


# ---- flags and exit codes ----------------------------------------------------

def test_version(script, tmp_path):
    r = run(script, ["--version"], tmp_path)
    assert r.returncode == 0
    assert r.stdout.decode() == "birdsentinel %s\n" % bs.__version__
    assert r.stderr == b""


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_the_man_page(script, tmp_path, flag):
    r = run(script, [flag], tmp_path)
    assert r.returncode == 0
    out = r.stdout.decode()
    for needle in ("--config-file", "--tail-file", "--examine", "--read-pipe", "--daemon",
                   "--pid-file", "--script-dir", "--once", "--state-file", "--dry-run",
                   "SIGHUP", "Exit status", "watchfor", "threshold"):
        assert needle in out, needle
    assert r.stderr == b""
    assert os.listdir(str(tmp_path)) == ["home"]


@pytest.mark.parametrize("args", [
    ["--no-such-flag"],
    ["-t", "a.log", "--examine", "b.log"],
    ["--daemon", "--once"],
    ["--online"],
    ["-c"],
    ["--awk-field-syntax"],
    ["--read-pipe", "printf 'unbalanced"],
    ["--send", "x", "--authorize"],
])
def test_usage_errors_exit_64_with_one_line(script, tmp_path, args):
    cfg = tmp_path / "c.conf"
    cfg.write_text("watchfor /x/\n  echo\n")
    extra = [] if args == ["-c"] else ["-c", cfg, "--script-dir", tmp_path / "sd"]
    r = run(script, extra + args, tmp_path)
    assert r.returncode == 64, r.stderr
    line = one_line_error(r.stderr)
    assert line.startswith("birdsentinel")
    assert r.stdout == b""


@pytest.mark.parametrize("text, lineno, words", [
    ("watchfor /bird_alert/\n  exec /bin/true \"$_\"\n  threshold type=Limit,count=1,seconds=30\n",
     3, "Limit"),
    ("# comment\n\nwatchfor /unclosed(/\n  echo\n", 3, "regex"),
    ("watchfor /x/\n  echo\nperlcode my $x = 1;\n", 3, "perlcode"),
    ("watchfor /x/\n  exec /bin/echo $_ | mail root\n", 2, "shell"),
    ("watchfor /x/\n  exec /bin/echo `id`\n", 2, "shell"),
    ("watchfor /x/\n  exec /bin/sh -c \"$(cat /etc/passwd)\"\n", 2, "shell"),
    ("watchfor /x/\n  frobnicate now\n", 2, "frobnicate"),
    ("echo\n", 1, "echo"),
    ("watchfor /a/\r\n  echo\r\n  throttle banana\r\n", 3, "throttle"),
])
def test_bad_config_exits_78_naming_file_and_line(script, tmp_path, text, lineno, words):
    cfg = tmp_path / "bad.conf"
    cfg.write_text(text)
    log = tmp_path / "in.log"
    log.write_text("x\n")
    for mode in (["--examine", log], ["-t", log, "--once"]):
        r = run(script, ["-c", cfg, "--script-dir", tmp_path / "sd"] + mode, tmp_path)
        assert r.returncode == 78, r.stderr
        line = one_line_error(r.stderr)
        assert '"%s", line %d:' % (cfg, lineno) in line, line
        assert words.lower() in line.lower(), line
        assert r.stdout == b""


def test_missing_config_exits_78(script, tmp_path):
    missing = tmp_path / "nope.conf"
    r = run(script, ["-c", missing, "--examine", "/dev/null", "--script-dir", tmp_path / "sd"], tmp_path)
    assert r.returncode == 78
    assert '"%s"' % missing in one_line_error(r.stderr)


def test_examine_missing_input_exits_66(script, tmp_path):
    """The man page: '66 input missing'."""
    cfg = tmp_path / "c.conf"
    cfg.write_text("watchfor /x/\n  echo\n")
    missing = tmp_path / "no-such.log"
    r = run(script, ["-c", cfg, "--examine", missing, "--script-dir", tmp_path / "sd"], tmp_path)
    assert r.returncode == 66, (r.returncode, r.stderr)
    assert str(missing) in one_line_error(r.stderr)


def test_examine_bundled_sample_dry_run(script, tmp_path):
    sd = tmp_path / "sd"
    r = run(script, ["-c", os.path.join(ROOT, "examples", "birdsentinel.conf"),
                     "--examine", os.path.join(ROOT, "examples", "sample.log"),
                     "--dry-run", "--script-dir", sd], tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "Traceback" not in r.stderr.decode()
    assert "bird_alert" in out
    assert "would dm @ops_oncall (id resolved at send time):" in out
    assert "would run: /bin/echo bounced:" in out
    assert "would post:" in out
    assert "CRON[" not in out, "the ignore rule did not drop the cron noise"
    # --dry-run writes nothing: no state, no outbox
    assert not sd.exists() or os.listdir(str(sd)) == []


# ---- exec: no shell, ever ----------------------------------------------------

def injection_payloads(x: str) -> List[str]:
    return [
        "bird_alert $(touch %s)" % x,
        "bird_alert `touch %s`" % x,
        'bird_alert "; touch %s; "' % x,
        "bird_alert '; touch %s; '" % x,
        "bird_alert && touch %s" % x,
        "bird_alert | touch %s" % x,
        "bird_alert > %s" % x,
        "bird_alert ; touch %s #" % x,
        "bird_alert $HOME ~ /etc/host* ${IFS} \\$(touch %s) \\" % x,
        "bird_alert user=x\"$(touch %s)\" from 203.0.113.7" % x,
    ]


def test_exec_line_is_one_argument_and_runs_nothing(script, tmp_path):
    out = tmp_path / "out.jsonl"
    rec = recorder(tmp_path / "rec.py", out)
    x = str(tmp_path / "X")
    cfg = tmp_path / "c.conf"
    cfg.write_text('watchfor /bird_alert/\n  exec %s "$_"\n' % rec)
    payloads = injection_payloads(x) + [p.replace(x, "X") for p in injection_payloads(x)]
    log = tmp_path / "inject.log"
    log.write_text("".join(p + "\n" for p in payloads) + "unrelated $(touch %s)\n" % x)
    r = run(script, ["-c", cfg, "--examine", log, "--script-dir", tmp_path / "sd"], tmp_path)
    assert r.returncode == 0, r.stderr
    recs = records(out)
    assert all(len(a) == 1 for a in recs), recs
    assert sorted(a[0] for a in recs) == sorted(payloads)
    assert not os.path.exists(x)
    assert not (tmp_path / "X").exists()
    assert not (tmp_path / "sd" / "X").exists()


def test_classic_config_loads_unchanged(script, tmp_path):
    cfg = tmp_path / "swatch-twitter.conf"
    cfg.write_text('watchfor /bird_alert/\n'
                   'exec /etc/sevagas/monitor/twitter/the_bird_sentinel.pl "$_"\n'
                   'threshold type=limit,count=1,seconds=30\n')
    sd = tmp_path / "sd"
    sd.mkdir()
    r = run(script, ["-c", cfg, "--check", "--script-dir", sd], tmp_path)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "1 rules" in r.stdout.decode()
    log = tmp_path / "messages"
    log.write_text("Nov 26 10:00:00 h monitor: bird_alert one $(id)\n"
                   "Nov 26 10:00:01 h monitor: bird_alert two\n")
    r = run(script, ["-c", cfg, "--examine", log, "--dry-run", "--script-dir", sd], tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().splitlines()
    # one alert per 30 s; the program is resolved when it runs, not at load
    assert out == ["would run: /etc/sevagas/monitor/twitter/the_bird_sentinel.pl "
                   "'Nov 26 10:00:00 h monitor: bird_alert one $(id)'"]


# ---- the classic init line: daemon, SIGHUP, SIGTERM --------------------------

CLASSIC = ('watchfor /bird_alert/\n'
           'exec {bird} "$_"\n'
           'threshold type=limit,count=1,seconds=30\n')


def prefix_layout(tmp_path):
    """A tmp copy of the /etc/sevagas/monitor layout."""
    mon = tmp_path / "etc" / "sevagas" / "monitor"
    (mon / "twitter").mkdir(parents=True)
    (mon / "tmp").mkdir()
    (tmp_path / "var" / "log").mkdir(parents=True)
    out = tmp_path / "alerts.jsonl"
    bird = recorder(mon / "twitter" / "the_bird_sentinel.pl", out)
    cfg = mon / "swatch-twitter.conf"
    cfg.write_text(CLASSIC.format(bird=bird))
    log = tmp_path / "var" / "log" / "messages"
    log.write_text("Nov 26 09:59:59 host kernel: booted\n")
    return mon, cfg, log, out, bird


def start_daemon(script, tmp_path, procs, mon, cfg, log, logfile):
    pid_file = mon / "tmp" / "swatch-twitter.pid"
    r = run(script, ["--daemon", "--pid-file", pid_file, "--script-dir=%s" % (mon / "tmp"),
                     "-c", cfg, "-t", log, "--log-file", logfile], tmp_path, timeout=30)
    pid = None
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().strip())
            procs.daemon(pid)
        except ValueError:
            pass
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert pid is not None, "no pid file after the launcher exited"
    return pid, pid_file


def test_classic_init_line_daemon_exec_hup_term(script, tmp_path, procs):
    mon, cfg, log, out, bird = prefix_layout(tmp_path)
    logfile = tmp_path / "birdsentinel.log"
    pid, pid_file = start_daemon(script, tmp_path, procs, mon, cfg, log, logfile)
    assert alive(pid)
    assert "birdsentinel" in cmdline(pid)
    state = mon / "tmp" / "birdsentinel.state"
    with open("/proc/%d/stat" % pid) as fh:
        assert int(fh.read().rsplit(")", 1)[1].split()[1]) != os.getpid(), "not detached"
    assert [n for n in os.listdir(str(mon / "tmp")) if "swatch" in n] == [pid_file.name]
    prime(log, state)

    # a matching line reaches the program as one literal argument
    x = str(tmp_path / "X")
    hostile = "Nov 26 10:00:00 host monitor: bird_alert $(touch %s) `touch %s` \"; touch %s; \"" % (x, x, x)
    append(log, hostile + "\n")
    wait_for(lambda: records(out), what="the exec'd program")
    assert records(out) == [[hostile]]
    assert not os.path.exists(x)

    # SIGHUP with a good new config: the new rule is active
    cfg.write_text(CLASSIC.format(bird=bird) + 'watchfor /new_rule/\n  exec %s "$_"\n' % bird)
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: "reloaded configuration" in read_text(logfile), what="'reloaded configuration'")
    append(log, "new_rule one\n")
    wait_for(lambda: "new_rule one" in recorded_lines(out), what="the new rule's exec")

    # SIGHUP with a bad config: the running one stays, the process lives
    cfg.write_text('watchfor /bird_alert/\nexec %s "$_"\nthreshold type=Limit,count=1,seconds=30\n' % bird)
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: "keeping the running configuration" in read_text(logfile),
             what="'keeping the running configuration'")
    why = [ln for ln in read_text(logfile).splitlines() if "keeping the running configuration" in ln]
    assert '"%s", line 3:' % cfg in why[0]
    assert alive(pid)
    append(log, "new_rule two\n")
    wait_for(lambda: "new_rule two" in recorded_lines(out), what="the old config's rule after a bad reload")
    assert alive(pid)

    # SIGTERM: exit, pid file removed, state saved
    prime(log, state)
    ino = os.stat(str(state)).st_ino
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), what="the daemon to exit")
    assert not pid_file.exists()
    assert os.stat(str(state)).st_ino != ino, "state not saved at exit"
    st = read_state(state)
    assert st is not None and st["version"] == bs.STATE_VERSION
    assert st["files"][str(log)]["offset"] == os.path.getsize(str(log))
    assert any(k.split(":", 1)[1].startswith("/bird_alert/") for k in st["thresholds"])
    assert "Traceback" not in read_text(logfile)
    assert recorded_lines(out) == [hostile, "new_rule one", "new_rule two"]


def test_daemon_lock_message_names_the_running_daemon(script, tmp_path, procs):
    mon, cfg, log, out, bird = prefix_layout(tmp_path)
    pid, _ = start_daemon(script, tmp_path, procs, mon, cfg, log, tmp_path / "d.log")
    state = mon / "tmp" / "birdsentinel.state"
    r = run(script, ["-c", cfg, "-t", log, "--script-dir", mon / "tmp", "--once"], tmp_path)
    assert r.returncode == 75
    line = one_line_error(r.stderr)
    assert str(state) in line
    assert "pid %d" % pid in line, "the message names pid %s, not the daemon's %d: %s" % (
        re.findall(r"pid (\S+)", line), pid, line)
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), what="the daemon to exit")


def test_daemon_with_relative_paths(script, tmp_path, procs):
    """The init line with paths relative to the working directory: the
    daemon chdirs to /, so it must resolve them first."""
    mon, cfg, log, out, bird = prefix_layout(tmp_path)
    sub = "bsrel-%s" % uuid.uuid4().hex          # absent under /, so a wrong lookup fails, never writes
    os.mkdir(str(tmp_path / sub))
    shutil.copy(str(cfg), str(tmp_path / sub / "c.conf"))
    shutil.copy(str(log), str(tmp_path / sub / "messages"))
    rel = lambda name: os.path.join(sub, name)   # noqa: E731
    r = run(script, ["--daemon", "--pid-file", rel("p.pid"), "--script-dir=%s" % sub, "-c", rel("c.conf"),
                     "-t", rel("messages"), "--log-file", rel("d.log")], tmp_path, timeout=30)
    pid_file = tmp_path / sub / "p.pid"
    if pid_file.exists():
        procs.daemon(int(pid_file.read_text().strip()))
    assert r.returncode == 0, r.stderr
    pid = int(pid_file.read_text().strip())
    st_path = tmp_path / sub / "birdsentinel.state"
    prime(tmp_path / sub / "messages", st_path)
    append(tmp_path / sub / "messages", "bird_alert relative\n")
    wait_for(lambda: "bird_alert relative" in recorded_lines(out), what="the exec")
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: "reloaded configuration" in read_text(tmp_path / sub / "d.log"), what="reload")
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), what="the daemon to exit")
    assert not pid_file.exists()


# ---- actions do not block matching -------------------------------------------

def test_slow_exec_does_not_block_matching(script, tmp_path, procs):
    order = tmp_path / "order.txt"
    slow = tmp_path / "slow.py"
    slow.write_text("import sys, time\n"
                    "open(%r, 'a').write('slow started\\n')\n"
                    "time.sleep(2)\n"
                    "open(%r, 'a').write('slow done\\n')\n" % (str(order), str(order)))
    fast = tmp_path / "fast.py"
    fast.write_text("import sys\nopen(%r, 'a').write('fast ' + sys.argv[1] + '\\n')\n" % str(order))
    cfg = tmp_path / "c.conf"
    cfg.write_text("watchfor /slow_job/\n  exec %s %s $_\n"
                   "watchfor /fast_job (\\d+)/\n  echo\n  exec %s %s $1\n" % (PY, slow, PY, fast))
    log = tmp_path / "jobs.log"
    log.write_text("")
    stdout = tmp_path / "stdout.txt"
    sd = tmp_path / "sd"
    with open(str(stdout), "wb") as so:
        p = procs.popen(script, ["-c", cfg, "-t", log, "--script-dir", sd], tmp_path, stdout=so)
    prime(log, sd / "birdsentinel.state")
    append(log, "slow_job 1\n")
    wait_for(lambda: "slow started" in read_text(order), what="the slow job to start")
    append(log, "fast_job 2\n")
    wait_for(lambda: "fast 2" in read_text(order), what="the fast job")
    assert "slow done" not in read_text(order), "the second line's action waited for the slow one"
    assert "fast_job 2" in read_text(stdout), "echo waited for the slow job"
    wait_for(lambda: "slow done" in read_text(order), what="the slow job to finish")
    assert read_text(order).splitlines() == ["slow started", "fast 2", "slow done"]
    assert stop_foreground(p) == 0


# ---- one instance per state file ---------------------------------------------

def test_second_instance_on_same_state_refuses(script, tmp_path, procs):
    cfg = tmp_path / "c.conf"
    cfg.write_text("watchfor /x/\n  echo\n")
    log = tmp_path / "a.log"
    log.write_text("")
    sd = tmp_path / "sd"
    first = procs.popen(script, ["-c", cfg, "-t", log, "--script-dir", sd], tmp_path)
    lock = sd / "birdsentinel.state.lock"
    wait_for(lambda: read_text(lock).strip() == str(first.pid), what="the first instance's lock")
    for args in (["-t", log], ["-t", log, "--once"]):
        r = run(script, ["-c", cfg, "--script-dir", sd] + args, tmp_path, timeout=30)
        assert r.returncode == 75
        line = one_line_error(r.stderr)
        assert str(sd / "birdsentinel.state") in line
        assert "pid %d" % first.pid in line
    assert first.poll() is None
    assert stop_foreground(first) == 0


# ---- --once across runs --------------------------------------------------------

def once_setup(tmp_path, extra=""):
    out = tmp_path / "out.jsonl"
    rec = recorder(tmp_path / "rec.py", out)
    cfg = tmp_path / "c.conf"
    cfg.write_text('watchfor /alert/\n  exec %s "$_"\n%s' % (rec, extra))
    log = tmp_path / "app.log"
    sd = tmp_path / "sd"
    return cfg, log, sd, out


def once(script, tmp_path, cfg, log, sd):
    return run(script, ["-c", cfg, "-t", log, "--script-dir", sd, "--once"], tmp_path)


def test_once_across_three_runs(script, tmp_path):
    cfg, log, sd, out = once_setup(tmp_path)
    log.write_text("alert from before the first run\n")
    r1 = once(script, tmp_path, cfg, log, sd)
    assert r1.returncode == 0, r1.stderr
    assert records(out) == []                     # the first run records the end
    st = read_state(sd / "birdsentinel.state")
    assert st["files"][str(log)]["offset"] == os.path.getsize(str(log))

    append(log, "alert 1\nnoise\nalert 2\n")
    r2 = once(script, tmp_path, cfg, log, sd)
    assert r2.returncode == 0, r2.stderr
    assert sorted(recorded_lines(out)) == ["alert 1", "alert 2"]     # actions run in parallel

    append(log, "alert 3\nalert 4 partial")
    r3 = once(script, tmp_path, cfg, log, sd)
    assert r3.returncode == 0, r3.stderr
    assert sorted(recorded_lines(out)) == ["alert 1", "alert 2", "alert 3"]

    append(log, " done\n")
    r4 = once(script, tmp_path, cfg, log, sd)
    assert r4.returncode == 0
    r5 = once(script, tmp_path, cfg, log, sd)
    assert r5.returncode == 0
    assert sorted(recorded_lines(out)) == ["alert 1", "alert 2", "alert 3", "alert 4 partial done"]
    assert not any("swatch" in n for n in os.listdir(str(sd)))


def test_once_exits_1_when_an_exec_fails(script, tmp_path):
    false = shutil.which("false") or "/bin/false"
    cfg, log, sd, out = once_setup(tmp_path, "watchfor /fail/\n  exec %s $_\n" % false)
    log.write_text("")
    assert once(script, tmp_path, cfg, log, sd).returncode == 0
    append(log, "alert fine\nfail now\n")
    r = once(script, tmp_path, cfg, log, sd)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr.decode()
    assert recorded_lines(out) == ["alert fine"]
    # the failed line is not retried: the next run has nothing to do
    r = once(script, tmp_path, cfg, log, sd)
    assert r.returncode == 0
    missing = tmp_path / "no-such-program"
    cfg.write_text("watchfor /alert/\n  exec %s $_\n" % missing)
    append(log, "alert to a missing program\n")
    r = once(script, tmp_path, cfg, log, sd)
    assert r.returncode == 1
    assert str(missing) in r.stderr.decode()


def test_once_threshold_state_survives_restart(script, tmp_path):
    cfg, log, sd, out = once_setup(tmp_path, "  threshold type=limit,count=1,seconds=3600\n")
    log.write_text("")
    assert once(script, tmp_path, cfg, log, sd).returncode == 0
    append(log, "alert a\nalert b\n")
    assert once(script, tmp_path, cfg, log, sd).returncode == 0
    append(log, "alert c\n")
    assert once(script, tmp_path, cfg, log, sd).returncode == 0
    assert recorded_lines(out) == ["alert a"]      # a restart does not re-alert


def test_once_rotation_without_new_file_not_reprocessed(script, tmp_path):
    """Rotated between runs and the new file not created yet: the old
    file's new lines are processed once, not again on every later run."""
    cfg, log, sd, out = once_setup(tmp_path)
    log.write_text("start\n")
    assert once(script, tmp_path, cfg, log, sd).returncode == 0
    append(log, "alert A\n")
    os.rename(str(log), str(log) + ".1")
    assert once(script, tmp_path, cfg, log, sd).returncode == 0
    assert recorded_lines(out) == ["alert A"]
    assert once(script, tmp_path, cfg, log, sd).returncode == 0
    log.write_text("alert B\n")
    assert once(script, tmp_path, cfg, log, sd).returncode == 0
    assert recorded_lines(out) == ["alert A", "alert B"]


def test_once_several_tail_files(script, tmp_path):
    cfg, log, sd, out = once_setup(tmp_path)
    log2 = tmp_path / "second.log"
    log.write_text("")
    log2.write_text("")
    args = ["-c", cfg, "-t", log, "-t", log2, "--script-dir", sd, "--once"]
    assert run(script, args, tmp_path).returncode == 0
    append(log, "alert in one\n")
    append(log2, "alert in two\n")
    assert run(script, args, tmp_path).returncode == 0
    assert sorted(recorded_lines(out)) == ["alert in one", "alert in two"]
    st = read_state(sd / "birdsentinel.state")
    assert set(st["files"]) == {str(log), str(log2)}


# ---- restart gap in tail mode -------------------------------------------------

def test_restart_gap_in_tail_mode(script, tmp_path, procs):
    cfg, log, sd, out = once_setup(tmp_path)
    log.write_text("alert before the first start\n")
    state = sd / "birdsentinel.state"
    args = ["-c", cfg, "-t", log, "--script-dir", sd]
    p1 = procs.popen(script, args, tmp_path)
    prime(log, state)
    append(log, "alert while running\n")
    wait_for(lambda: "alert while running" in recorded_lines(out), what="the first exec")
    assert stop_foreground(p1) == 0
    append(log, "alert gap 1\nalert gap 2\n")
    p2 = procs.popen(script, args, tmp_path)
    wait_for(lambda: len(records(out)) >= 3, what="the lines written while stopped")
    append(log, "alert after restart\n")
    wait_for(lambda: len(records(out)) >= 4, what="a line after the restart")
    assert stop_foreground(p2) == 0
    lines = recorded_lines(out)
    assert lines[0] == "alert while running"
    assert sorted(lines[1:3]) == ["alert gap 1", "alert gap 2"]
    assert lines[3:] == ["alert after restart"]


def test_corrupt_state_file_reported_and_run_continues(script, tmp_path):
    cfg, log, sd, out = once_setup(tmp_path)
    sd.mkdir()
    state = sd / "birdsentinel.state"
    state.write_bytes(b'{"version": 1, "files": {"/x": tru')
    state.chmod(0o600)
    log.write_text("alert old line\n")
    r = once(script, tmp_path, cfg, log, sd)
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "Traceback" not in err
    assert any(str(state) in ln and "corrupt" in ln for ln in err.splitlines()), err
    assert (sd / "birdsentinel.state.corrupt").read_bytes() == b'{"version": 1, "files": {"/x": tru'
    assert records(out) == []                     # the file restarts from its end
    st = read_state(state)
    assert st is not None and st["files"][str(log)]["offset"] == os.path.getsize(str(log))
    append(log, "alert new line\n")
    assert once(script, tmp_path, cfg, log, sd).returncode == 0
    assert recorded_lines(out) == ["alert new line"]


# ---- --read-pipe ------------------------------------------------------------------

def test_read_pipe_runs_argv_without_shell(script, tmp_path):
    cfg = tmp_path / "c.conf"
    cfg.write_text("watchfor /./\n  echo\n")
    x = tmp_path / "X"
    cmd = "printf '%%s\\n' 'bird one' 'bird $(touch %s)' `id` ;touch %s && touch %s | cat" % (x, x, x)
    r = run(script, ["-c", cfg, "--read-pipe", cmd, "--script-dir", tmp_path / "sd"], tmp_path)
    assert r.returncode == 0, r.stderr
    # one argv, no shell: printf printed every word, ran nothing
    assert r.stdout.decode().splitlines() == [
        "bird one", "bird $(touch %s)" % x, "`id`", ";touch", str(x), "&&", "touch", str(x), "|", "cat"]
    assert not x.exists()


def test_read_pipe_last_line_without_newline(script, tmp_path):
    cfg = tmp_path / "c.conf"
    cfg.write_text("watchfor /bird/\n  echo\n")
    r = run(script, ["-c", cfg, "--read-pipe", "printf 'bird a\\nbird b'", "--script-dir", tmp_path / "sd"],
            tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["bird a", "bird b"]


# ---- hostile bytes ----------------------------------------------------------------

def test_examine_hostile_bytes(script, tmp_path):
    cfg = tmp_path / "c.conf"
    cfg.write_text("watchfor /./\n  echo red\n")
    big = 10 * 1024 * 1024
    data = b"".join([
        b"osc title \x1b]0;pwned\x07 end\n",
        b"osc link \x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\ end\n",
        b"csi \x1b[31mred\x1b[0m \x1b[2J\x1b[H clear end\n",
        b"dcs \x1bP1$r0m\x1b\\ end\n",
        b"c1 \xc2\x9b31m csi \xc2\x9d0;t\xc2\x9c end\n",
        b"nul \x00 byte\x00 end\n",
        b"invalid \xff\xfe\xc0\xaf utf8 end\n",
        b"\r\r\r\n",
        b"\r\n",
        b"\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\r\n",
        b"bs \x08\x08\x08\x7f del \x07 bell \x0b\x0c end\n",
        "bidi \u202egnp.exe\u202c end\n".encode("utf-8"),
        b"tab\there end\n",
        b"huge " + b"A" * big + b"\n",
        b"after huge end\n",
        b"last line without newline \x1b[5m",
    ])
    log = tmp_path / "hostile.log"
    log.write_bytes(data)
    r = run(script, ["-c", cfg, "--examine", log, "--script-dir", tmp_path / "sd"], tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr.decode("utf-8", "replace")
    out = r.stdout
    bad = CONTROL_BYTES.search(out)
    assert bad is None, "control byte %r in output near %r" % (bad.group(0), out[max(0, bad.start() - 30):bad.end() + 30])
    assert b"\x1b" not in out
    text = out.decode("utf-8")                       # valid UTF-8
    lines = text.split("\n")
    for needle in ("osc title", "csi", "clear end", "nul", "invalid", "bs", "bidi", "after huge end",
                   "last line without newline", "tab here end"):
        assert any(needle in ln for ln in lines), needle
    assert "\u202e" not in text
    assert max(len(ln.encode("utf-8")) for ln in lines) <= bs.MAX_LINE
    assert len(out) < 1024 * 1024, "the 10 MB line was not cut"
    assert "cut" in r.stderr.decode("utf-8", "replace")


# ---- standard library only ------------------------------------------------------

def imported_top_level_modules(path: str) -> set:
    with open(path, "rb") as fh:
        tree = ast.parse(fh.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            names.add("<dynamic import_module>")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            names.add("<dynamic __import__>")
    return names


def is_stdlib(name: str) -> bool:
    if hasattr(sys, "stdlib_module_names"):          # Python >= 3.10
        return name in sys.stdlib_module_names
    # Python 3.9: where the module lives decides
    if name in sys.builtin_module_names:
        return True
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        return False
    if spec.origin in ("built-in", "frozen"):
        return True
    paths = sysconfig.get_paths()
    origin = os.path.realpath(spec.origin)
    return (any(origin.startswith(os.path.realpath(paths[k]) + os.sep) for k in ("stdlib", "platstdlib"))
            and "site-packages" not in origin and "dist-packages" not in origin)


def test_stdlib_only(script):
    names = imported_top_level_modules(script)
    assert "os" in names and "json" in names          # the walk found the imports
    outside = sorted(n for n in names if not is_stdlib(n))
    assert outside == [], "birdsentinel.py imports outside the standard library: %s" % outside


def test_import_has_no_side_effects(tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    report = tmp_path / "report.json"
    code = textwrap.dedent("""
        import json, logging, os, signal, sys, threading
        sys.path.insert(0, %r)
        sigs = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGCHLD]
        before = {
            "threads": threading.active_count(),
            "signals": [signal.getsignal(s) for s in sigs],
            "fds": sorted(os.listdir("/proc/self/fd")),
            "root_handlers": list(logging.getLogger().handlers),
            "umask": os.umask(0o022),
        }
        os.umask(before["umask"])
        import birdsentinel
        import time
        time.sleep(0.2)                          # a thread started at import would show now
        after = {
            "threads": [t.name for t in threading.enumerate()],
            "signals_same": [signal.getsignal(s) for s in sigs] == before["signals"],
            "fds_same": sorted(os.listdir("/proc/self/fd")) == before["fds"],
            "root_handlers_same": logging.getLogger().handlers == before["root_handlers"],
            "bs_handlers": len(birdsentinel.LOG.handlers),
            "wakeup_fd": signal.set_wakeup_fd(-1),
            "stdout_same": sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__,
            "umask_same": os.umask(0o022) == before["umask"],
            "cwd": os.getcwd(),
        }
        with open(%r, "w") as fh:
            json.dump(after, fh)
    """ % (ROOT, str(report)))

    def tree():
        found = set()
        for base in (str(work), str(tmp_path / "home")):
            for d, dirs, files in os.walk(base):
                found.update(os.path.join(d, n) for n in dirs + files)
        return found
    env = make_env(tmp_path)
    before = tree()
    r = subprocess.run([PY, "-c", code], cwd=str(work), env=env, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"" and r.stderr == b"", (r.stdout, r.stderr)
    after = json.loads(report.read_text())
    assert after["threads"] == ["MainThread"]
    assert after["signals_same"] and after["fds_same"] and after["root_handlers_same"]
    assert after["bs_handlers"] == 0
    assert after["wakeup_fd"] == -1
    assert after["stdout_same"] and after["umask_same"]
    assert after["cwd"] == str(work)
    assert tree() == before, "importing birdsentinel created %s" % sorted(tree() - before)
