"""init/swatch-twitter recognises the daemon by its pid file and its state
lock, never by a process name anyone can choose (security audit finding).

A local user can start a look-alike whose argv[0] is "birdsentinel" (exec -a),
or a python3 script named birdsentinel.py, with "--daemon --pid-file PIDFILE"
on its command line, and get its pid into the pid file. None of status, stop,
restart or reload may then take it for the daemon: it is never signalled,
status never reports it as running. The daemon is the process that the lock
file (SCRIPTDIR/birdsentinel.state.lock) names and that has that very file
open, running as the daemon user.

Real processes throughout, with the Prefix fixture of tests/test_ops.py (the
real daemon, started through the init script in a temp prefix).
"""
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

from test_ops import CMD_TIMEOUT, DAEMON, INIT, Prefix, alive, prefix, wait_for  # noqa: F401

# The look-alike's body: optionally opens (and flocks, and writes its pid
# into) a file, then sleeps. Its command line is whatever the test chooses.
LOOKALIKE_CODE = """\
import fcntl, os, sys, time
path = os.environ.get("LOOKALIKE_OPEN")
if path:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if os.environ.get("LOOKALIKE_FLOCK"):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\\n" % os.getpid(), 0)
print("ready", flush=True)
time.sleep(600)
"""


def lock_path(p: Prefix) -> Path:
    return p.scriptdir / "birdsentinel.state.lock"


def write_lock(p: Prefix, pid: int) -> None:
    """Make the real lock file name pid (mode 0600, as birdsentinel wants it)."""
    fd = os.open(lock_path(p), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"%d\n" % pid)
    finally:
        os.close(fd)


def holds_lock(pid: int, lock: Path) -> bool:
    """pid is named by the lock file and has that very file open."""
    try:
        if lock.read_text() != f"{pid}\n":
            return False
        want = os.stat(lock)
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
                return True
    except OSError:
        pass
    return False


def untouched(proc: subprocess.Popen) -> bool:
    """The look-alike got no signal: not exited (poll reaps it if it did,
    so os.kill(pid, 0) cannot be fooled by a zombie), and still there."""
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, 0)
    return alive(proc.pid)


class Lookalikes:
    """Starts look-alike processes; kills whatever is left at the end."""

    def __init__(self, prefix: Prefix) -> None:
        self.prefix = prefix
        self.procs: List[subprocess.Popen] = []

    def argv(self, kind: str) -> List[str]:
        p = self.prefix
        tail = ["--daemon", "--pid-file", str(p.pidfile), f"--script-dir={p.scriptdir}",
                "-c", str(p.config), "-t", str(p.messages)]
        if kind == "script":
            # python3 /some/where/birdsentinel.py --daemon --pid-file PIDFILE ...
            script = p.root / "evil" / "birdsentinel.py"
            script.parent.mkdir(exist_ok=True)
            script.write_text(LOOKALIKE_CODE)
            return [sys.executable, str(script), *tail]
        # exec -a birdsentinel python3 -c CODE --daemon --pid-file PIDFILE ...
        return ["bash", "-c", 'exec -a birdsentinel "$@"', "bash",
                sys.executable, "-c", LOOKALIKE_CODE, *tail]

    def start(self, kind: str, open_file: Optional[Path] = None, flock: bool = False) -> subprocess.Popen:
        env: Dict[str, str] = dict(self.prefix.env)
        if open_file is not None:
            env["LOOKALIKE_OPEN"] = str(open_file)
        if flock:
            env["LOOKALIKE_FLOCK"] = "1"
        proc = subprocess.Popen(self.argv(kind), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                text=True, env=env)
        self.procs.append(proc)
        assert proc.stdout.readline() == "ready\n"
        # What the audit is about: by name, it passes for the daemon.
        args = open(f"/proc/{proc.pid}/cmdline", "rb").read().split(b"\0")
        assert any(b"birdsentinel" in a for a in args) and b"--daemon" in args
        assert str(self.prefix.pidfile).encode() in args
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            proc.stdout.close()


@pytest.fixture
def lookalikes(prefix: Prefix) -> Iterator[Lookalikes]:   # noqa: F811
    la = Lookalikes(prefix)
    try:
        yield la
    finally:
        la.close()


def other_lock(p: Prefix) -> Path:
    """A file named birdsentinel.state.lock, at the same relative place in a
    tree the look-alike's user controls."""
    path = p.root / "evil" / p.scriptdir.relative_to(p.root) / "birdsentinel.state.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# kind of look-alike -> how it is started
KINDS: Dict[str, Callable[[Lookalikes, Prefix], subprocess.Popen]] = {
    "exec-a": lambda la, p: la.start("exec-a"),
    "script": lambda la, p: la.start("script"),
    "other-lock-file": lambda la, p: la.start("exec-a", open_file=other_lock(p), flock=True),
}


def status_names_the_daemon_and_stop_spares_the_lookalike(prefix, pid, fake) -> None:
    """status reports the real daemon's pid; stop ends it and leaves the look-alike alone."""
    r = prefix.init("status")
    assert r.returncode == 0 and f"running (pid {pid})" in r.stdout, r.stdout + r.stderr
    r = prefix.init("stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert wait_for(lambda: not alive(pid), timeout=5)
    assert untouched(fake)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_lookalike_in_pid_file_without_daemon_is_never_signalled(
        prefix: Prefix, lookalikes: Lookalikes, kind: str) -> None:  # noqa: F811
    fake = KINDS[kind](lookalikes, prefix)
    prefix.pidfile.write_text(f"{fake.pid}\n")
    # Worst case: the real lock file names it too (left from an old run, say),
    # so only "it has that very lock file open" can tell.
    write_lock(prefix, fake.pid)

    r = prefix.init("status")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"(pid {fake.pid} is not birdsentinel)" in r.stdout
    assert "running (pid" not in r.stdout

    r = prefix.init("reload")
    assert r.returncode == 7, r.stdout + r.stderr
    assert untouched(fake), "reload sent SIGHUP to the look-alike"

    r = prefix.init("stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not signalling it" in r.stdout
    assert untouched(fake), "stop signalled the look-alike"
    assert not prefix.pidfile.exists()

    # start is not fooled into "already running"; restart neither.
    prefix.pidfile.write_text(f"{fake.pid}\n")
    r = prefix.init("restart")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already running" not in r.stdout
    pid = prefix.pid()
    assert pid is not None and pid != fake.pid
    assert holds_lock(pid, lock_path(prefix)), prefix.diag()
    assert untouched(fake)

    status_names_the_daemon_and_stop_spares_the_lookalike(prefix, pid, fake)
    assert prefix.init("status").returncode == 3


@pytest.mark.parametrize("kind", sorted(KINDS) + ["opens-real-lock-file"])
def test_lookalike_in_pid_file_while_daemon_runs(
        prefix: Prefix, lookalikes: Lookalikes, kind: str) -> None:  # noqa: F811
    real = prefix.start_ok()
    assert holds_lock(real, lock_path(prefix))
    if kind == "opens-real-lock-file":
        # It even has the real lock file open (no flock: the daemon has it),
        # but the lock file names the daemon, not it.
        fake = lookalikes.start("exec-a", open_file=lock_path(prefix))
    else:
        fake = KINDS[kind](lookalikes, prefix)
    prefix.pidfile.write_text(f"{fake.pid}\n")

    # status: the service runs (the real daemon, found through its lock);
    # the look-alike is not reported as running.
    r = prefix.init("status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"running (pid {real})" in r.stdout
    assert f"names pid {fake.pid}, which is not birdsentinel" in r.stdout
    assert f"running (pid {fake.pid}" not in r.stdout

    r = prefix.init("start")
    assert r.returncode == 0 and "already running (pid %d)" % real in r.stdout, r.stdout + r.stderr

    # restart: stops the real daemon, starts a new one that holds the lock.
    r = prefix.init("restart")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"stopping birdsentinel (pid {real})" in r.stdout
    assert "not signalling it" in r.stdout
    assert not alive(real)
    new = prefix.pid()
    assert new is not None and new not in (real, fake.pid)
    assert holds_lock(new, lock_path(prefix)), prefix.diag()
    assert untouched(fake), "restart signalled the look-alike"
    assert prefix.init("status").returncode == 0

    # stop, with the look-alike in the pid file again: only the daemon goes.
    prefix.pidfile.write_text(f"{fake.pid}\n")
    r = prefix.init("stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert wait_for(lambda: not alive(new), timeout=5)
    assert untouched(fake), "stop signalled the look-alike"
    assert not prefix.pidfile.exists()
    assert prefix.init("status").returncode == 3


def test_lookalike_without_pid_file_is_not_an_orphan(prefix: Prefix, lookalikes: Lookalikes) -> None:  # noqa: F811
    """No pid file: the look-alike's "--daemon --pid-file PIDFILE" does not
    make it the daemon whose pid file went missing."""
    fake = lookalikes.start("exec-a", open_file=other_lock(prefix), flock=True)
    write_lock(prefix, fake.pid)
    r = prefix.init("status")
    assert r.returncode == 3 and "not running" in r.stdout, r.stdout + r.stderr
    r = prefix.init("stop")
    assert r.returncode == 0 and "not running" in r.stdout, r.stdout + r.stderr
    assert untouched(fake)
    pid = prefix.start_ok()
    assert holds_lock(pid, lock_path(prefix))
    assert untouched(fake)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


@needs_root
def test_lock_holder_of_another_user_is_not_the_daemon(prefix: Prefix) -> None:  # noqa: F811
    """A process as nobody that has the real lock file open and is named by
    it is still not the daemon of SWATCH_USER (here: root)."""
    lock = lock_path(prefix)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        proc = subprocess.Popen(["birdsentinel", "600"], executable=shutil.which("sleep"),
                                pass_fds=[fd], user=pwd.getpwnam("nobody").pw_uid)
    finally:
        os.close(fd)
    try:
        assert wait_for(lambda: any(os.path.realpath(f"/proc/{proc.pid}/fd/{n}") == str(lock)
                                    for n in os.listdir(f"/proc/{proc.pid}/fd")))
        write_lock(prefix, proc.pid)
        prefix.pidfile.write_text(f"{proc.pid}\n")
        r = prefix.init("status")
        assert r.returncode == 1, r.stdout + r.stderr
        r = prefix.init("stop")
        assert r.returncode == 0 and "not signalling it" in r.stdout, r.stdout + r.stderr
        assert untouched(proc)
    finally:
        proc.kill()
        proc.wait(timeout=10)


@needs_root
def test_status_unknown_4_for_a_user_who_cannot_read_the_lock() -> None:
    """Someone who may read neither the lock file nor /proc/PID/fd cannot
    tell: status and stop say so (exit 4) and signal nothing."""
    root = Path(tempfile.mkdtemp(prefix="bs-ident-"))
    os.chmod(root, 0o755)
    try:
        p = Prefix(root, "root", sys.executable, DAEMON)
        try:
            os.chmod(p.defaults, 0o644)
            pid = p.start_ok()
            assert os.stat(lock_path(p)).st_mode & 0o077 == 0

            def as_nobody(action: str) -> subprocess.CompletedProcess:
                return subprocess.run(["runuser", "-u", "nobody", "--", "sh", str(INIT), action],
                                      env=p.env, text=True, capture_output=True,
                                      timeout=CMD_TIMEOUT, stdin=subprocess.DEVNULL, cwd="/")

            for action in ("status", "stop", "reload"):
                r = as_nobody(action)
                assert r.returncode == 4, (action, r.stdout + r.stderr)
                assert "cannot tell whether birdsentinel is running" in r.stderr
            assert alive(pid) and p.pid() == pid
            assert p.init("status").returncode == 0
        finally:
            p.kill_leftovers()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("form", ["--state-file=", "--state-file "])
def test_state_file_moved_by_extra_args(prefix: Prefix, lookalikes: Lookalikes, form: str) -> None:  # noqa: F811
    """EXTRA_ARGS --state-file moves the lock; the init script follows it."""
    state = prefix.root / "state" / "alt.state"
    prefix.write_defaults(EXTRA_ARGS=f"{form}{state}")
    pid = prefix.start_ok()
    lock = Path(f"{state}.lock")
    assert holds_lock(pid, lock) and not lock_path(prefix).exists()
    fake = lookalikes.start("exec-a")
    prefix.pidfile.write_text(f"{fake.pid}\n")
    status_names_the_daemon_and_stop_spares_the_lookalike(prefix, pid, fake)
