"""Shared fixtures.  Test data is generated here; the real-world corpus in
../shared/corpus is read in place (and skipped, with the reason, where a
clone lives outside the project's tree)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CORPUS = os.environ.get("BIRDSENTINEL_CORPUS", os.path.join(ROOT, "..", "shared", "corpus"))
SCRIPT = os.path.join(ROOT, "birdsentinel.py")


@pytest.fixture
def corpus_dir():
    if not os.path.isdir(CORPUS):
        if os.environ.get("CI"):
            pytest.fail("the corpus %s is missing in CI" % CORPUS)
        pytest.skip("the real-world corpus ../shared/corpus is not beside this clone")
    return os.path.abspath(CORPUS)


@pytest.fixture
def script():
    return SCRIPT


@pytest.fixture
def logs():
    """Everything birdsentinel logs during the test, at every level (tests/fakes.py LogCapture)."""
    import logging
    import birdsentinel as bs
    from fakes import LogCapture
    cap = LogCapture()
    old = (bs.LOG.level, bs.LOG.propagate)
    bs.LOG.setLevel(logging.DEBUG)
    bs.LOG.addHandler(cap)
    try:
        yield cap
    finally:
        bs.LOG.removeHandler(cap)
        bs.LOG.setLevel(old[0])
        bs.LOG.propagate = old[1]


@pytest.fixture
def env(tmp_path):
    """The environment for a birdsentinel child: ours, without what would redirect it."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("BIRDSENTINEL_API_BASE", "CREDENTIALS_DIRECTORY", "XDG_STATE_HOME")}
    e["HOME"] = str(tmp_path)
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    return e


# ---- secrets scan: capture machinery (used by tests/test_secrets.py) -------
# Everything birdsentinel prints or logs during the whole session is scanned,
# as it is produced, for the test credentials and for OAuth signatures:
#   * every call to the "birdsentinel" logger, at ANY level (as with -v -v),
#     with its traceback when there is one;
#   * what ActionRunner.write_out prints and what main() writes to an
#     in-memory `out`;
#   * each test's captured stdout/stderr/log sections (this includes
#     subprocesses that inherit the test's file descriptors) and whatever a
#     test takes with capsys/capfd.readouterr();
#   * text and files a test hands to record_secret_scan_text() /
#     record_secret_scan_file() (subprocess output read through pipes, daemon
#     log files);
#   * at the end, birdsentinel's files left under pytest's basetemp: state,
#     outbox, dead-letter files, and any file in birdsentinel's log format.
# pytest_sessionfinish fails the run (exit status 1) if anything leaked.

import functools as _functools
import re as _re

SECRET_VALUES = ("ck-test", "cs-test-SECRET", "1-at-test", "ats-test-SECRET")   # fakex's defaults
_SECRET_RE = _re.compile("|".join([_re.escape(v) for v in SECRET_VALUES]
                                  + [r"[A-Za-z0-9_.~-]*-SECRET\b",          # other tests' *-SECRET values
                                     # a signature value (a redacted 'oauth_signature=<hidden>' is fine)
                                     r"(?i:oauth_signature\s*(?:=|%3D)\s*(?:\"|%22)?[A-Za-z0-9+/%]{8,})"]))
_BIRD_LOG_RE = _re.compile(rb"birdsentinel\[\d+\]: [A-Z]+: ")
_BIRD_FILES = ("birdsentinel.state", "birdsentinel.outbox", "birdsentinel.dead", "birdsentinel.log")


class SecretScan:
    """Scans text as it is recorded; keeps only the hits and the counts."""

    def __init__(self):
        self.texts = 0
        self.chars = 0
        self.files = 0
        self.leaks = []                 # (label, excerpt)
        self._seen = set()
        self.current = "session"        # node id of the running test

    def text(self, label, text):
        if text is None:
            return
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        text = str(text)
        self.texts += 1
        self.chars += len(text)
        for m in _SECRET_RE.finditer(text):
            key = (label, self.current, m.group(0))
            if key in self._seen:
                continue
            self._seen.add(key)
            excerpt = text[max(0, m.start() - 60):m.end() + 60].replace("\n", "\\n")
            self.leaks.append(("%s [%s]" % (label, self.current), excerpt))

    def file(self, label, path):
        try:
            with open(path, "rb") as fh:
                data = fh.read(32 * 1024 * 1024)
        except OSError:
            return
        self.files += 1
        self.text("%s (%s)" % (label, path), data)


SECRET_SCAN = SecretScan()


def record_secret_scan_text(label, text):
    """Hand birdsentinel's output (e.g. a subprocess's piped stdout/stderr) to the scan."""
    SECRET_SCAN.text(label, text)


def record_secret_scan_file(label, path):
    """Hand a file birdsentinel wrote (e.g. a --log-file) to the scan."""
    SECRET_SCAN.file(label, path)


@pytest.fixture
def secret_scan():
    """The session's SecretScan (record_secret_scan_text/file as methods .text/.file)."""
    return SECRET_SCAN


def _install_secret_capture():
    import traceback

    import birdsentinel

    log = birdsentinel.LOG
    if getattr(log, "_secret_scan_installed", False):
        return

    def wrap_level(name):
        orig = getattr(log, name)

        @_functools.wraps(orig)
        def method(*args, **kwargs):
            try:
                a = args[1:] if name == "log" else args
                msg = str(a[0]) % tuple(a[1:]) if len(a) > 1 else str(a[0]) if a else ""
                exc = kwargs.get("exc_info") or name == "exception"
                if exc:
                    info = sys.exc_info() if exc is True or name == "exception" else exc
                    if isinstance(info, BaseException):
                        info = (type(info), info, info.__traceback__)
                    if isinstance(info, tuple) and info[0] is not None:
                        msg += "\n" + "".join(traceback.format_exception(*info))
                SECRET_SCAN.text("birdsentinel log", msg)
            except Exception:               # never change what the logger does
                pass
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1     # records keep the caller's line
            return orig(*args, **kwargs)
        setattr(log, name, method)

    for name in ("debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "log"):
        if hasattr(log, name):
            wrap_level(name)
    log._secret_scan_installed = True

    orig_write_out = birdsentinel.ActionRunner.write_out

    @_functools.wraps(orig_write_out)
    def write_out(self, text):
        SECRET_SCAN.text("ActionRunner.write_out", text)
        return orig_write_out(self, text)
    birdsentinel.ActionRunner.write_out = write_out

    orig_main = birdsentinel.main

    @_functools.wraps(orig_main)
    def main(argv=None, env=None, out=None, inp=None):
        try:
            return orig_main(argv, env, out, inp)
        finally:
            if out is not None and hasattr(out, "getvalue"):
                SECRET_SCAN.text("main() out", out.getvalue())
    birdsentinel.main = main

    try:
        from _pytest.capture import CaptureFixture
    except ImportError:                      # pragma: no cover
        return
    orig_readouterr = CaptureFixture.readouterr

    @_functools.wraps(orig_readouterr)
    def readouterr(self):
        res = orig_readouterr(self)
        SECRET_SCAN.text("readouterr() out", res.out)
        SECRET_SCAN.text("readouterr() err", res.err)
        return res
    CaptureFixture.readouterr = readouterr


def pytest_configure(config):
    _install_secret_capture()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    SECRET_SCAN.current = item.nodeid
    yield
    SECRET_SCAN.current = "session"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    for name, content in rep.sections:
        SECRET_SCAN.text("captured %s" % name, content)


def _sweep_basetemp(config):
    factory = getattr(config, "_tmp_path_factory", None)
    base = getattr(factory, "_basetemp", None) if factory is not None else None
    if base is None or not os.path.isdir(str(base)):
        return
    for dirpath, _dirs, names in os.walk(str(base)):
        for n in names:
            path = os.path.join(dirpath, n)
            try:
                if not os.path.isfile(path) or os.path.getsize(path) > 32 * 1024 * 1024:
                    continue
                if n in _BIRD_FILES or n.startswith("birdsentinel.state"):
                    SECRET_SCAN.file("left in basetemp", path)
                    continue
                with open(path, "rb") as fh:
                    head = fh.read(1 << 16)
                if _BIRD_LOG_RE.search(head):
                    SECRET_SCAN.file("birdsentinel log left in basetemp", path)
            except OSError:
                continue


def pytest_sessionfinish(session, exitstatus):
    SECRET_SCAN.current = "session end"
    _sweep_basetemp(session.config)
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    write = (lambda s: tr.write_line(s)) if tr is not None else (lambda s: sys.stderr.write(s + "\n"))
    write("secrets scan: %d texts (%d chars) and %d files scanned, %d leak(s)"
          % (SECRET_SCAN.texts, SECRET_SCAN.chars, SECRET_SCAN.files, len(SECRET_SCAN.leaks)))
    if SECRET_SCAN.leaks:
        for label, excerpt in SECRET_SCAN.leaks[:50]:
            write("SECRET LEAK in %s: ...%s..." % (label, excerpt))
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
