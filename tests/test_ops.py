"""Operations shims, tested by running them: init/swatch-twitter, cron/clean-swatch
and init/birdsentinel.service (issue 4).

Every test that starts a daemon does so in its own temp prefix, through the init
script, with the real birdsentinel.py and the classic command line; the prefix's
/etc/default file (named by SWATCH_TWITTER_DEFAULTS) points every path there.
Every wait is bounded, and a fixture stops whatever a test left running, even
when the test fails.
"""
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
INIT = REPO / "init" / "swatch-twitter"
CLEAN = REPO / "cron" / "clean-swatch"
UNIT = REPO / "init" / "birdsentinel.service"
DEFAULTS_EXAMPLE = REPO / "init" / "swatch-twitter.default"
DAEMON = REPO / "birdsentinel.py"

TOUCH = shutil.which("touch") or "/usr/bin/touch"
DAY = 86400
WAIT = 15.0          # seconds: upper bound for anything that should take ms
CMD_TIMEOUT = 90     # seconds: upper bound for one init/cron script run

CONFIG_ONE_RULE = """\
# ops test config
watchfor /bird_alert/
    echo
    exec {touch} {out}/marker1
"""

CONFIG_TWO_RULES = CONFIG_ONE_RULE + """\

watchfor /second_rule/
    exec {touch} {out}/marker2
"""


# ---- helpers ---------------------------------------------------------------

def wait_for(pred: Callable[[], bool], timeout: float = WAIT, interval: float = 0.05) -> bool:
    """Poll pred until it is true or timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def cmdline(pid: int) -> List[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def is_birdsentinel(pid: int) -> bool:
    return any("birdsentinel" in a for a in cmdline(pid))


def alive(pid: int) -> bool:
    """True when pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def daemons_under(root: Path) -> List[int]:
    """Pids of birdsentinel processes whose command line mentions root."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        args = cmdline(int(entry))
        if not args or not alive(int(entry)):
            continue
        exe = os.path.basename(args[0])
        if exe in ("sh", "dash", "bash", "timeout", "runuser", "su", "sudo"):
            continue
        if any("birdsentinel" in a for a in args) and any(str(root) in a for a in args):
            found.append(int(entry))
    return found


def dead_pid() -> int:
    """A pid that no process has right now."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not alive(proc.pid)
    return proc.pid


class Prefix:
    """A temp root holding the classic layout, and the commands to drive it."""

    def __init__(self, root: Path, user: str, python: str, daemon: Path) -> None:
        self.root = root
        self.etc = root / "etc" / "sevagas" / "monitor"
        self.scriptdir = self.etc / "tmp"
        self.pidfile = self.scriptdir / "swatch-twitter.pid"
        self.config = self.etc / "swatch-twitter.conf"
        self.messages = root / "var" / "log" / "messages"
        self.out = root / "out"
        self.daemon_log = self.scriptdir / "birdsentinel.log"
        self.defaults = root / "etc" / "default" / "swatch-twitter"
        for d in (self.scriptdir, self.messages.parent, self.out, self.defaults.parent):
            d.mkdir(parents=True, exist_ok=True)
        self.messages.write_text("boot line\n")
        self.write_config(CONFIG_ONE_RULE)
        self.settings = {
            "SWATCH_USER": user,
            "PYTHON": python,
            "DAEMON": str(daemon),
            "CONFIG": str(self.config),
            "SCRIPTDIR": str(self.scriptdir),
            "PIDFILE": str(self.pidfile),
            "LOGFILE": str(self.messages),
            "DAEMON_LOG": str(self.daemon_log),
            "START_TIMEOUT": "30",
            "STOP_TIMEOUT": "10",
        }
        self.write_defaults()
        self.env = dict(os.environ, SWATCH_TWITTER_DEFAULTS=str(self.defaults))
        # Never let a test reach a real API.
        self.env["BIRDSENTINEL_API_BASE"] = "http://127.0.0.1:9"

    def write_defaults(self, **overrides: str) -> None:
        self.settings.update(overrides)
        self.defaults.write_text("".join(
            f"{k}={shlex.quote(v)}\n" for k, v in self.settings.items()))

    def write_config(self, template: str) -> None:
        self.config.write_text(template.format(touch=TOUCH, out=self.out))

    def init(self, action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(INIT), action], env=self.env, text=True,
                              capture_output=True, timeout=CMD_TIMEOUT,
                              stdin=subprocess.DEVNULL)

    def clean(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(CLEAN), *args], env=self.env, text=True,
                              capture_output=True, timeout=CMD_TIMEOUT,
                              stdin=subprocess.DEVNULL)

    def pid(self) -> Optional[int]:
        try:
            text = self.pidfile.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def append(self, line: str) -> None:
        with open(self.messages, "a") as f:
            f.write(line + "\n")

    def alert_until(self, line: str, marker: Path, timeout: float = WAIT) -> bool:
        """Append line (again every second) until marker exists.

        Repeating covers a daemon that records its starting offset only after
        reporting that it started (first sighting of a file starts at its end).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.append(line)
            if wait_for(marker.exists, timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                return True
        return marker.exists()

    def log_text(self) -> str:
        try:
            return self.daemon_log.read_text(errors="replace")
        except OSError:
            return ""

    def start_ok(self) -> int:
        r = self.init("start")
        assert r.returncode == 0, f"start failed: rc={r.returncode}\n{r.stdout}{r.stderr}\nlog:\n{self.log_text()}"
        pid = self.pid()
        assert pid is not None, f"no pid in {self.pidfile} after start: {r.stdout}{r.stderr}"
        assert is_birdsentinel(pid), f"pid {pid} from the pid file is not birdsentinel: {cmdline(pid)}"
        return pid

    def diag(self) -> str:
        return f"log:\n{self.log_text()}\nscript dir: {sorted(os.listdir(self.scriptdir))}"

    def kill_leftovers(self) -> None:
        try:
            self.init("stop")
        except subprocess.TimeoutExpired:
            pass
        pids = daemons_under(self.root)
        for p in pids:
            try:
                os.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if not wait_for(lambda: not any(alive(p) for p in pids), timeout=5):
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_for(lambda: not any(alive(p) for p in pids), timeout=5)


def current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def prefix(tmp_path: Path) -> Iterator[Prefix]:
    assert DAEMON.exists(), f"{DAEMON} is missing"
    p = Prefix(tmp_path, current_user(), sys.executable, DAEMON)
    try:
        yield p
    finally:
        p.kill_leftovers()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """An unrelated live process (not birdsentinel) to name in a pid file."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


# ---- static checks ---------------------------------------------------------

@pytest.mark.parametrize("script", [INIT, CLEAN], ids=["init", "cron"])
def test_shellcheck_clean(script: Path) -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck is not installed (.ci/run installs it with apt-get): "
                    "this check must run, not be skipped")
    r = subprocess.run([exe, "--shell=sh", str(script)], capture_output=True,
                       text=True, timeout=CMD_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", [INIT, CLEAN], ids=["init", "cron"])
def test_scripts_are_posix_sh_and_executable(script: Path) -> None:
    assert script.read_text().startswith("#!/bin/sh\n")
    assert os.stat(script).st_mode & stat.S_IXUSR, f"{script} is not executable"
    r = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, timeout=CMD_TIMEOUT)
    assert r.returncode == 0, r.stderr


def test_init_has_lsb_header() -> None:
    text = INIT.read_text()
    header = text.split("### BEGIN INIT INFO\n", 1)[1].split("### END INIT INFO", 1)[0]
    for key in ("Provides", "Required-Start", "Required-Stop", "Default-Start",
                "Default-Stop", "Short-Description"):
        assert re.search(rf"^# {key}:\s+\S", header, re.M), key


def test_defaults_example_is_sourceable_and_matches_builtins(tmp_path: Path) -> None:
    """Every setting the example documents is one the scripts read."""
    names = set(re.findall(r"^#?([A-Z_]+)=", DEFAULTS_EXAMPLE.read_text(), re.M))
    script_text = INIT.read_text() + CLEAN.read_text()
    for name in names:
        assert f"${name}" in script_text or f"${{{name}" in script_text, name
    r = subprocess.run(["sh", "-n", str(DEFAULTS_EXAMPLE)], capture_output=True, text=True,
                       timeout=CMD_TIMEOUT)
    assert r.returncode == 0, r.stderr


# ---- init script: status, start, reload, stop ------------------------------

def test_usage_exit_2(prefix: Prefix) -> None:
    r = prefix.init("bogus")
    assert r.returncode == 2
    assert "Usage:" in r.stderr


def test_status_not_running_is_3(prefix: Prefix) -> None:
    r = prefix.init("status")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "not running" in r.stdout


def test_start_status_second_start_refused_stop(prefix: Prefix) -> None:
    pid = prefix.start_ok()
    # The daemon's own pid, with the classic flags on its command line.
    args = cmdline(pid)
    assert "--daemon" in args
    assert str(prefix.pidfile) in args
    assert f"--script-dir={prefix.scriptdir}" in args
    assert ["-c", str(prefix.config)] == args[args.index("-c"):args.index("-c") + 2]
    assert ["-t", str(prefix.messages)] == args[args.index("-t"):args.index("-t") + 2]

    r = prefix.init("status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"running (pid {pid})" in r.stdout

    # It works: a matching line reaches the exec action.
    assert prefix.alert_until("host kernel: bird_alert one", prefix.out / "marker1"), prefix.diag()

    # A second start launches nothing: same pid file, one daemon.
    r = prefix.init("start")
    assert r.returncode == 0, r.stdout + r.stderr      # LSB: start of a running service succeeds
    assert "already running" in r.stdout
    assert prefix.pid() == pid
    assert daemons_under(prefix.root) == [pid]

    r = prefix.init("stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert wait_for(lambda: not alive(pid), timeout=2), "stop returned before the daemon exited"
    assert not prefix.pidfile.exists()
    assert daemons_under(prefix.root) == []
    assert prefix.init("status").returncode == 3
    # stop when already stopped is a success too
    assert prefix.init("stop").returncode == 0


def test_reload_activates_changed_config(prefix: Prefix) -> None:
    pid = prefix.start_ok()
    marker1, marker2 = prefix.out / "marker1", prefix.out / "marker2"
    assert prefix.alert_until("bird_alert warm-up", marker1), prefix.diag()

    # Before the reload, second_rule matches nothing (a later line proves the
    # earlier one was read).
    marker1.unlink()
    prefix.append("second_rule early")
    prefix.append("bird_alert sync")
    assert wait_for(marker1.exists), prefix.diag()
    assert not marker2.exists()

    prefix.write_config(CONFIG_TWO_RULES)
    r = prefix.init("reload")
    assert r.returncode == 0, r.stdout + r.stderr
    expected = f"reloaded configuration from {prefix.config} (2 rules)"
    assert wait_for(lambda: expected in prefix.log_text()), prefix.diag()
    assert prefix.alert_until("second_rule now", marker2), prefix.diag()

    # SIGHUP reloaded the same process (swatch died on it) and status agrees.
    assert prefix.pid() == pid and alive(pid)
    assert prefix.init("status").returncode == 0

    r = prefix.init("force-reload")
    assert r.returncode == 0, r.stdout + r.stderr
    assert wait_for(lambda: prefix.log_text().count(expected) >= 2), prefix.diag()
    assert prefix.pid() == pid


def test_reload_with_bad_config_keeps_running(prefix: Prefix) -> None:
    pid = prefix.start_ok()
    marker1 = prefix.out / "marker1"
    assert prefix.alert_until("bird_alert before", marker1), prefix.diag()

    prefix.config.write_text("watchfor /bird_alert(/\n    echo\n")   # unbalanced regex
    r = prefix.init("reload")
    assert r.returncode == 0, r.stdout + r.stderr
    assert wait_for(lambda: "keeping the running configuration: " in prefix.log_text()), prefix.diag()

    assert alive(pid) and prefix.init("status").returncode == 0
    marker1.unlink()
    assert prefix.alert_until("bird_alert after", marker1), "old rules stopped working: " + prefix.diag()


def test_reload_when_stopped_is_7(prefix: Prefix) -> None:
    r = prefix.init("reload")
    assert r.returncode == 7, r.stdout + r.stderr


def test_restart_replaces_the_daemon(prefix: Prefix) -> None:
    old = prefix.start_ok()
    r = prefix.init("restart")
    assert r.returncode == 0, r.stdout + r.stderr
    new = prefix.pid()
    assert new is not None and new != old and is_birdsentinel(new)
    assert not alive(old)
    assert daemons_under(prefix.root) == [new]


def test_stale_pid_file_status_1_then_stop_and_start(prefix: Prefix) -> None:
    prefix.pidfile.write_text(f"{dead_pid()}\n")
    r = prefix.init("status")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "pid file" in r.stdout

    r = prefix.init("stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stale pid file" in r.stdout
    assert not prefix.pidfile.exists()
    assert prefix.init("status").returncode == 3

    # start over a stale pid file works and replaces it
    prefix.pidfile.write_text(f"{dead_pid()}\n")
    pid = prefix.start_ok()
    assert prefix.init("status").returncode == 0
    assert prefix.init("stop").returncode == 0
    assert not alive(pid)


def test_garbage_pid_file_is_stale(prefix: Prefix) -> None:
    prefix.pidfile.write_text("not a pid\n")
    assert prefix.init("status").returncode == 1
    assert prefix.init("stop").returncode == 0
    assert not prefix.pidfile.exists()


def test_pid_file_naming_unrelated_process_is_not_killed(prefix: Prefix, sleeper: subprocess.Popen) -> None:
    prefix.pidfile.write_text(f"{sleeper.pid}\n")
    r = prefix.init("status")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "is not birdsentinel" in r.stdout

    r = prefix.init("reload")
    assert r.returncode == 7
    r = prefix.init("stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not signalling it" in r.stdout
    time.sleep(0.2)
    assert sleeper.poll() is None, "stop killed a process that is not birdsentinel"
    assert not prefix.pidfile.exists()

    # start then replaces the stale file; stop kills the daemon only.
    prefix.pidfile.write_text(f"{sleeper.pid}\n")
    pid = prefix.start_ok()
    assert pid != sleeper.pid
    assert prefix.init("stop").returncode == 0
    assert not alive(pid)
    assert sleeper.poll() is None


def test_stop_escalates_to_sigkill_after_timeout(prefix: Prefix) -> None:
    """A birdsentinel that ignores SIGTERM is killed after STOP_TIMEOUT, not waited on forever.

    The stub holds the state lock as birdsentinel does (the init script
    recognises the daemon by that lock, not by its name)."""
    stub = prefix.root / "birdsentinel-stub.py"
    stub.write_text("import fcntl, os, signal, sys, time\n"
                    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
                    "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
                    "os.ftruncate(fd, 0)\n"
                    "os.pwrite(fd, b'%d\\n' % os.getpid(), 0)\n"
                    "print('ready', flush=True)\n"
                    "time.sleep(120)\n")
    lock = prefix.scriptdir / "birdsentinel.state.lock"
    proc = subprocess.Popen([sys.executable, str(stub), str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        prefix.pidfile.write_text(f"{proc.pid}\n")
        prefix.write_defaults(STOP_TIMEOUT="1")
        assert prefix.init("status").returncode == 0
        started = time.monotonic()
        r = prefix.init("stop")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "sending SIGKILL" in r.stderr
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert time.monotonic() - started < 10
        assert not prefix.pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_daemon_found_when_pid_file_was_deleted(prefix: Prefix) -> None:
    """The classic cleaner's damage: the pid file is gone, the daemon is not."""
    pid = prefix.start_ok()
    prefix.pidfile.unlink()
    r = prefix.init("status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"running (pid {pid}" in r.stdout and "missing" in r.stdout

    r = prefix.init("start")
    assert r.returncode == 0 and "already running" in r.stdout
    assert daemons_under(prefix.root) == [pid]

    r = prefix.init("stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not alive(pid)
    assert prefix.init("status").returncode == 3


@pytest.mark.parametrize("daemon_log", [False, True], ids=["syslog-or-default", "with-log-file"])
def test_start_with_bad_config_fails_cleanly(prefix: Prefix, daemon_log: bool) -> None:
    """start fails with birdsentinel's one-line reason on stderr, whether or not
    the daemon is told to log to a file (DAEMON_LOG -> --log-file)."""
    if not daemon_log:
        prefix.write_defaults(DAEMON_LOG="")
    prefix.config.write_text("watchfor /bird_alert(/\n    echo\n")
    r = prefix.init("start")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f'"{prefix.config}", line 1:' in r.stderr, r.stderr
    assert not prefix.pidfile.exists()
    assert daemons_under(prefix.root) == []
    assert prefix.init("status").returncode == 3


def test_start_refused_when_another_instance_holds_the_state(prefix: Prefix) -> None:
    """A birdsentinel the init script does not know (foreground, no pid file)
    on the same script dir: the state lock refuses the second one, with a reason."""
    prefix.write_defaults(DAEMON_LOG="")
    err = open(prefix.root / "foreground.err", "w")
    fg = subprocess.Popen([sys.executable, str(DAEMON), f"--script-dir={prefix.scriptdir}",
                           "-c", str(prefix.config), "-t", str(prefix.messages)],
                          stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT, env=prefix.env)
    try:
        assert prefix.alert_until("bird_alert fg", prefix.out / "marker1"), \
            (prefix.root / "foreground.err").read_text()
        r = prefix.init("start")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "another birdsentinel" in r.stderr, r.stderr
        assert not prefix.pidfile.exists()
        assert fg.poll() is None
        assert prefix.init("status").returncode == 3
    finally:
        fg.terminate()
        try:
            fg.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            fg.kill()
            fg.wait(timeout=10)
        err.close()


def test_start_not_installed_or_not_configured(prefix: Prefix) -> None:
    prefix.write_defaults(DAEMON=str(prefix.root / "nowhere" / "birdsentinel.py"))
    assert prefix.init("start").returncode == 5
    prefix.write_defaults(DAEMON=str(DAEMON), CONFIG=str(prefix.root / "missing.conf"))
    r = prefix.init("start")
    assert r.returncode == 6 and "missing.conf" in r.stderr


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root (CI runs as root)")


@needs_root
def test_runs_as_unprivileged_user() -> None:
    """As root, the daemon runs as SWATCH_USER (here: nobody) via runuser/su/sudo."""
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip(f"{python} absent: the test's own interpreter may be unreadable to nobody")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    root = Path(tempfile.mkdtemp(prefix="bs-ops-"))
    os.chmod(root, 0o755)          # pytest's tmp_path is 0700: unreadable to nobody
    try:
        bindir = root / "bin"
        bindir.mkdir()
        shutil.copy(DAEMON, bindir / "birdsentinel.py")
        p = Prefix(root, "nobody", python, bindir / "birdsentinel.py")
        try:
            for d in (p.scriptdir, p.out):
                os.chown(d, nobody.pw_uid, nobody.pw_gid)
                os.chmod(d, 0o750)
            for dirpath, dirnames, filenames in os.walk(root):
                for name in dirnames:
                    path = os.path.join(dirpath, name)
                    if os.stat(path).st_uid == 0:
                        os.chmod(path, 0o755)
                for name in filenames:
                    os.chmod(os.path.join(dirpath, name), 0o644)
            pid = p.start_ok()
            with open(f"/proc/{pid}/status") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
            assert all(int(u) == nobody.pw_uid for u in uids), uids
            assert p.alert_until("bird_alert as nobody", p.out / "marker1"), p.diag()
            assert os.stat(p.out / "marker1").st_uid == nobody.pw_uid
            assert p.init("status").returncode == 0
            r = p.init("stop")
            assert r.returncode == 0, r.stdout + r.stderr
            assert not alive(pid) and not p.pidfile.exists()
        finally:
            p.kill_leftovers()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---- cron/clean-swatch -----------------------------------------------------

def set_age(path: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(path, (t, t), follow_symlinks=False)


def test_clean_swatch_removes_only_stale_temp_files_while_daemon_runs(
        prefix: Prefix, sleeper: subprocess.Popen) -> None:
    pid = prefix.start_ok()
    assert prefix.alert_until("bird_alert first", prefix.out / "marker1"), prefix.diag()
    sd = prefix.scriptdir

    def make(name: str, days: float, content: str = "") -> Path:
        path = sd / name
        if not path.exists():
            path.write_text(content)
        set_age(path, days)
        return path

    doomed = [
        make(".swatchdog_script.4242", 10),               # swatch --daemon leftover
        make(".swatch_script.777", 10),                   # older swatch's name
        make("swatch-old.pid", 10, f"{dead_pid()}\n"),    # pid file of a dead process
        make("swatch-twitter.conf.swatch-bak", 10),       # any other *swatch* file
        make("leftover.tmp", 10),                         # stale temp file
        make(".birdsentinel-crashed.tmp", 10),            # our own temp, from a crash
    ]
    kept = [
        make("swatch-twitter.pid", 10),                   # the live pid file: mtime 10 days
        make("birdsentinel.state", 10, "{}"),
        make("birdsentinel.state.lock", 10),
        make("birdsentinel.outbox", 10),
        make("birdsentinel.dead", 10),
        make("birdsentinel.log", 10),
        make("swatch-other.pid", 10, f"{sleeper.pid}\n"),  # its process is alive
        make(".swatchdog_script.9999", 0),                # fresh
        make("fresh.tmp", 1),                             # younger than 3 days
        make(".birdsentinel-live.tmp", 0),
        make("notes.txt", 10),                            # not ours to judge
    ]
    subdir = sd / "swatch.d"
    subdir.mkdir()
    set_age(subdir, 10)
    link = sd / "swatch-link.tmp"
    link.symlink_to("/etc/hostname")
    set_age(link, 10)
    kept += [subdir, link]
    assert prefix.pid() == pid

    before = set(os.listdir(sd))
    r = prefix.clean("-n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(os.listdir(sd)) == before, "dry run removed files"
    assert sorted(r.stdout.split("\n")[:-1]) == sorted(f"would remove {p}" for p in doomed)

    r = prefix.clean("-v")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""
    assert sorted(r.stdout.split("\n")[:-1]) == sorted(f"removed {p}" for p in doomed)
    for path in doomed:
        assert not os.path.lexists(path), f"{path.name} was kept"
    for path in kept:
        assert os.path.lexists(path), f"{path.name} was removed"

    # The daemon is unaffected and still under the init script's control.
    assert prefix.init("status").returncode == 0
    (prefix.out / "marker1").unlink()
    assert prefix.alert_until("bird_alert after clean", prefix.out / "marker1"), prefix.diag()
    assert prefix.init("stop").returncode == 0
    assert not alive(pid)


def test_clean_swatch_quiet_by_default_and_argument_overrides_dir(prefix: Prefix, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    stale = other / ".swatchdog_script.1"
    stale.write_text("")
    set_age(stale, 10)
    r = prefix.clean(str(other))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert not stale.exists()


def test_clean_swatch_stale_configured_pid_file_goes(prefix: Prefix) -> None:
    prefix.pidfile.write_text(f"{dead_pid()}\n")
    set_age(prefix.pidfile, 10)
    assert prefix.clean().returncode == 0
    assert not prefix.pidfile.exists()


def test_clean_swatch_missing_dir(prefix: Prefix) -> None:
    r = prefix.clean(str(prefix.root / "absent"))
    assert r.returncode == 1
    assert "does not exist" in r.stderr


# ---- systemd unit ----------------------------------------------------------

def unit_settings() -> dict:
    """section -> list of (key, value), repeated keys kept in order."""
    sections: dict = {}
    current = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def service_values(key: str) -> List[str]:
    return [v for k, v in unit_settings()["Service"] if k == key]


def test_unit_is_sandboxed_foreground_with_credentials() -> None:
    one = {k: service_values(k)[-1] for k in (
        "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "SupplementaryGroups",
        "ExecReload", "Restart", "User", "ReadWritePaths", "ExecStart")}
    assert one["NoNewPrivileges"] == "yes"
    assert one["ProtectSystem"] == "strict"
    assert one["ProtectHome"] == "yes"
    assert one["PrivateTmp"] == "yes"
    assert one["SupplementaryGroups"] == "adm"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Restart"] == "on-failure"
    assert one["User"] == "thyl_u_swatch"
    assert one["ReadWritePaths"].split() == ["/etc/sevagas/monitor/tmp"]
    argv = shlex.split(one["ExecStart"])
    assert "--daemon" not in argv and "--pid-file" not in argv
    assert any(a.endswith("birdsentinel.py") for a in argv)
    assert "--script-dir=/etc/sevagas/monitor/tmp" in argv
    creds = sorted(service_values("LoadCredential"))
    assert creds == sorted(f"{n}:/etc/sevagas/monitor/twitter/{n}" for n in (
        "consumer-key", "consumer-secret", "access-token", "access-token-secret"))


def test_unit_execstart_runs_in_foreground_and_reloads(prefix: Prefix) -> None:
    """The unit's own ExecStart line, paths moved to the prefix, run as systemd would."""
    exec_start = service_values("ExecStart")[-1]
    argv = shlex.split(exec_start.replace("/etc/sevagas/monitor", str(prefix.etc))
                       .replace("/var/log/messages", str(prefix.messages)))
    assert argv[0].endswith("python3") and argv[1].endswith("birdsentinel.py")
    argv[:2] = [sys.executable, str(DAEMON)]
    log = open(prefix.root / "foreground.err", "w+")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=prefix.env, cwd="/")
    try:
        def output() -> str:
            log.flush()
            return (prefix.root / "foreground.err").read_text(errors="replace")
        assert prefix.alert_until("bird_alert fg", prefix.out / "marker1"), output()
        assert proc.poll() is None
        assert not prefix.pidfile.exists()
        prefix.write_config(CONFIG_TWO_RULES)
        proc.send_signal(signal.SIGHUP)                 # what ExecReload does
        assert wait_for(lambda: "reloaded configuration from" in output()), output()
        assert prefix.alert_until("second_rule fg", prefix.out / "marker2"), output()
        proc.send_signal(signal.SIGTERM)                # systemctl stop
        assert proc.wait(timeout=WAIT) == 0, output()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (package systemd); the unit's "
                    "settings are still checked by test_unit_is_sandboxed_foreground_with_credentials")
    unit = tmp_path / "birdsentinel.service"
    shutil.copy(UNIT, unit)
    r = subprocess.run([exe, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=CMD_TIMEOUT, cwd=tmp_path)
    # verify prints warnings (unknown keys, bad values) without failing: none allowed.
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if "birdsentinel.service" in line or "Unknown" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
