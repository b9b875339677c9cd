"""Regression tests for the review of the journal and omprog sources (issue 12): each failed on the code
before its fix."""

import errno
import json
import logging
import os
import subprocess
import sys
import time

import birdsentinel as bs
from fakes import state_json, wait_until


def test_omprog_refuses_a_message_one_of_whose_alerts_the_outbox_could_not_keep(tmp_path, script, env):
    """Two recipients per alert and room for three entries: the second message's first alert fits, its second
    does not. It must be answered with an error (rsyslog sends it again), never OK."""
    conf = tmp_path / "rules.conf"
    conf.write_text("outbox max_entries=3\nwatchfor /ALERT/\n  dm @alice @bob\n")
    tw = tmp_path / "tw"
    tw.mkdir(mode=0o700)
    for name in bs.SECRET_NAMES:
        (tw / name).write_text("x\n")
        os.chmod(tw / name, 0o600)
    lines = "".join("Dec  1 11:27:30 web7 app: ALERT %d\n" % i for i in (1, 2))
    r = subprocess.run([sys.executable, script, "--omprog", "-c", str(conf), "--script-dir", str(tmp_path / "sd"),
                        "--twitter-dir", str(tw), "--api-base", "http://127.0.0.1:9"],
                       input=lines, capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    answers = r.stdout.splitlines()
    assert answers[:2] == ["OK", "OK"]                  # ready, then message 1 (two alerts kept)
    assert len(answers) == 3 and not answers[2].startswith("OK") and "outbox full" in answers[2]


def _source(directory, seen):
    """A JournalSource whose journalctl has not been started: take() alone is under test."""
    src = bs.JournalSource.__new__(bs.JournalSource)
    src.directory, src.matches, src.cursor, src.first, src.failures = directory, {}, None, None, 0
    src.path, src.on_entry, src.on_gap = "the journal", lambda line, fields, origin: seen.append(fields), None
    return src


def test_local_journal_entries_of_our_own_pid_are_not_matched(tmp_path):
    """Under systemd our stdout and stderr are journal entries with our _PID: reading them back would make
    an echo rule loop, and our own error lines alerts. A journal-remote store's pids are other hosts'."""
    def entries(pid):
        return "".join(json.dumps({"__CURSOR": "s=a;i=%x" % i, "__REALTIME_TIMESTAMP": "1", "_PID": pid,
                                   "MESSAGE": "Failed password %d" % i}) + "\n" for i in (1, 2))
    seen = []
    _source(None, seen).take(entries(str(os.getpid())))
    assert seen == []
    _source(None, seen).take(entries("1"))
    assert [f["MESSAGE"] for f in seen] == ["Failed password 1", "Failed password 2"]
    seen.clear()
    _source(str(tmp_path), seen).take(entries(str(os.getpid())))
    assert len(seen) == 2


def test_a_journalctl_that_cannot_be_started_again_does_not_end_the_watch(tmp_path, monkeypatch, logs):
    """The restart after journalctl exited hits EAGAIN (no fork possible): logged, tried again later; the
    source neither raises nor leaks its stderr file."""
    src = bs.JournalSource(str(tmp_path), [], lambda *a: None, lambda text: None, {}, follow=True)
    try:
        src.proc.kill()
        assert wait_until(lambda: (src.poll(), src.proc is None)[1], timeout=10)

        def no_fork(*args, **kwargs):
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        monkeypatch.setattr(bs.subprocess, "Popen", no_fork)
        src.restart_at = 0.0
        assert src.poll() == 0
        assert src.proc is None and src.errors.closed
        assert src.restart_at > time.monotonic() + 50
        assert logs.messages(logging.ERROR, "cannot start journalctl again", "trying again in 60 s")
    finally:
        if src.proc is not None:
            src.proc.kill()
            src.proc.wait()


def test_once_over_the_journal_fails_when_journalctl_fails(tmp_path, script, env):
    """A cron job's `--once --journal-dir` must not exit 0 when journalctl read nothing: here it refuses the
    saved cursor (made unreadable on purpose), and birdsentinel exits 66."""
    conf = tmp_path / "rules.conf"
    conf.write_text("watchfor /x/\n  echo\n")
    sd = tmp_path / "sd"
    sd.mkdir(mode=0o700)
    jdir = tmp_path / "journal"
    jdir.mkdir()
    state = bs.State(journal={"dir:%s" % jdir: {"cursor": "not-a-cursor"}})
    (sd / bs.STATE_NAME).write_text(json.dumps(state_json(state)))
    os.chmod(sd / bs.STATE_NAME, 0o600)
    r = subprocess.run([sys.executable, script, "-c", str(conf), "--once", "--journal-dir", str(jdir),
                        "--script-dir", str(sd)], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == bs.EX_NOINPUT, (r.returncode, r.stderr)
    assert "journalctl exited (status 1" in r.stderr
