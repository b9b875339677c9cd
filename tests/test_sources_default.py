"""Which source birdsentinel reads when none is given, how it says so, and who may read the
journal (issue 12: on Debian 12 and later there is often no /var/log/messages or /var/log/syslog)."""

import grp  # noqa: F401  imported before the fork below: as nobody, this Python's modules under /root are unreadable
import os
import pwd  # noqa: F401
import signal
import subprocess
import sys
import time
import types

import pytest

import birdsentinel as bs
from fakes import wait_until

DEFAULTS = ("/var/log/messages", "/var/log/syslog")


def opts(*argv):
    return bs.parse_args(list(argv))


@pytest.mark.parametrize("present, expected", [
    ((), None),                                                   # Debian 12 without rsyslog: the journal
    (("/var/log/syslog",), "/var/log/syslog"),
    (("/var/log/messages", "/var/log/syslog"), "/var/log/messages"),
])
def test_default_source_is_messages_then_syslog_then_the_journal(monkeypatch, present, expected):
    real_exists = os.path.exists
    monkeypatch.setattr(bs.os.path, "exists", lambda p: p in present if p in DEFAULTS else real_exists(p))
    o = opts("-c", "x.conf")
    assert bs.default_files(o) == ([expected] if expected else [])
    assert bs.journal_wanted(o) is (expected is None)


def test_a_given_source_is_never_replaced_by_the_journal(monkeypatch):
    monkeypatch.setattr(bs.os.path, "exists", lambda p: False)
    for argv in (["-t", "/tmp/x.log"], ["--examine", "/tmp/x.log"], ["--read-pipe", "cat"], ["--omprog"]):
        assert not bs.journal_wanted(opts(*argv)), argv
    assert bs.journal_wanted(opts("--journal-dir", "/tmp"))


@pytest.mark.parametrize("argv, words", [
    (["-t", "/tmp/a", "--journal"], "give only one of"),
    (["--omprog", "--examine", "/tmp/a"], "give only one of"),
    (["--journal-dir", "/tmp", "-t", "/tmp/a"], "give only one of"),
    (["--journal-match", "_SYSTEMD_UNIT=ssh.service"], "goes with --journal"),
    (["--journal", "--journal-match", "ssh.service"], "FIELD=VALUE"),
    (["--omprog", "--daemon"], "--daemon"),
])
def test_source_flags_that_do_not_combine_are_usage_errors(argv, words):
    with pytest.raises(bs.Usage) as info:
        bs.parse_args(argv)
    assert words in str(info.value)


def test_check_names_the_source_it_will_read(tmp_path, script, env):
    conf = tmp_path / "rules.conf"
    conf.write_text("watchfor /x/\n  echo\n")
    run = lambda *a: subprocess.run([sys.executable, script, "-c", str(conf), "--check", "--script-dir",
                                     str(tmp_path / "sd")] + list(a), env=env, capture_output=True, text=True,
                                    timeout=30)
    r = run("--journal-dir", str(tmp_path))
    assert "source: the systemd journal in %s\n" % tmp_path in r.stdout
    log = tmp_path / "app.log"
    log.write_text("")
    assert "source: %s\n" % log in run("-t", str(log)).stdout
    r = run()
    present = [p for p in DEFAULTS if os.path.exists(p)]
    assert ("source: %s\n" % present[0] if present else "source: the systemd journal\n") in r.stdout


def test_without_a_source_the_start_up_log_says_the_journal_is_read(tmp_path, script, env):
    """Run for real with no -t: on a machine without either default file it reads the journal and says
    why; with one of them, it watches that file."""
    conf = tmp_path / "rules.conf"
    conf.write_text("watchfor /x/\n  echo\n")
    p = subprocess.Popen([sys.executable, script, "-c", str(conf), "--script-dir", str(tmp_path / "sd")],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    present = [f for f in DEFAULTS if os.path.exists(f)]
    if present:
        assert "watching %s with 1 rules" % present[0] in err
    else:
        assert "neither /var/log/messages nor /var/log/syslog exists: reading the systemd journal" in err
        assert "watching the journal with 1 rules" in err


def test_a_user_outside_the_journal_groups_gets_one_error_naming_the_group(tmp_path):
    """As `nobody` (no systemd-journal, adm or wheel group) the local journal is refused with the group
    to add; root may read it; an unreadable --journal-dir names the directory."""
    (tmp_path / "private").mkdir(mode=0o700)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the child becomes nobody, with no groups at all
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, ("%s\n%s\n" % (bs.journal_problem(None), bs.journal_problem(str(tmp_path / "private"))))
                     .encode())
        finally:
            os._exit(0)
    os.close(w)
    out = b"".join(iter(lambda: os.read(r, 4096), b"")).decode()
    os.waitpid(pid, 0)
    os.close(r)
    system, private = out.splitlines()
    assert system == ("user nobody may read only its own entries of the system journal: add it to the group "
                      "systemd-journal (usermod -a -G systemd-journal nobody), then start birdsentinel again")
    assert private.startswith("cannot read journal directory %s as nobody" % (tmp_path / "private"))
    assert bs.journal_problem(None) == ""                       # the tests run as root
    assert bs.journal_problem(str(tmp_path)) == ""
