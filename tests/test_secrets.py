"""Secrets: nothing birdsentinel prints or logs may hold a credential or an
OAuth signature.

The session-wide scan lives in conftest.py (SecretScan, pytest_sessionfinish):
it reads every record of the "birdsentinel" logger at any level, what
ActionRunner prints, main()'s in-memory output, each test's captured
stdout/stderr/log, capsys/capfd reads, subprocess output and log files handed
to it, and birdsentinel's files left under pytest's basetemp; the run fails
if any of the fakex test credentials (consumer key and secret, access token
and secret), any other test's "*-SECRET" value or an "oauth_signature=" shows
up.  The tests here check that machinery, then look directly at the places a
secret could slip out: reprs, network errors, credential-file errors, and the
output of runs where X answers 401.
"""

import io
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

import pytest

import birdsentinel as bs
from conftest import SECRET_VALUES, record_secret_scan_file, record_secret_scan_text
from fakes import FakeOpener
from fakex import FakeX

CK, CS, AT, ATS = "ck-test", "cs-test-SECRET", "1-at-test", "ats-test-SECRET"     # fakex's defaults
SECRETS = (CK, CS, AT, ATS)
SIGNATURE_RE = re.compile(r'(?i)oauth_signature\s*(?:=|%3D)\s*(?:"|%22)?[A-Za-z0-9+/%]{8,}')


def leaks(text, extra=()):
    """Secret values, extra values (e.g. the signatures actually sent) and
    any oauth_signature with a value, found in text."""
    text = text if isinstance(text, str) else text.decode("utf-8", "replace")
    found = [s for s in SECRETS + tuple(extra) if s and s in text]
    return found + SIGNATURE_RE.findall(text)


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))      # with the traceback, if any

    def text(self):
        return "\n".join(self.lines)


_LOGS = []


@pytest.fixture
def logs():
    h = ListHandler()
    _LOGS.append(h)
    old = bs.LOG.level
    bs.LOG.addHandler(h)
    bs.LOG.setLevel(logging.DEBUG)
    yield h
    bs.LOG.removeHandler(h)
    bs.LOG.setLevel(old)


@pytest.fixture
def fx():
    f = FakeX(users={"alice": "1001"}).start()
    yield f
    f.stop()


def creds():
    return bs.Credentials(CK, CS, AT, ATS)


# -- the capture machinery itself ----------------------------------------------

def test_the_scanned_values_are_the_fakex_credentials():
    f = FakeX()
    assert (f.consumer_key, f.consumer_secret, f.access_token, f.access_token_secret) == SECRETS
    assert set(SECRETS) <= set(SECRET_VALUES)


def test_scan_detects_planted_leaks(secret_scan, tmp_path):
    fresh = type(secret_scan)()
    fresh.text("harmless", "X REJECTED THE CREDENTIALS (401: Unauthorized); nothing is lost")
    assert fresh.leaks == []
    fresh.text("redacted", 'Authorization: OAuth oauth_signature=<hidden>, oauth_signature="..."')
    assert fresh.leaks == []
    planted = ['OAuth oauth_consumer_key="k", oauth_signature="abcDEF12%3D"', "oauth_signature%3DabcDEF12%2B",
               "token: " + AT, "consumer " + CK, "secret=" + CS + "!", ATS, "ts-SECRET"]
    for i, p in enumerate(planted):
        fresh.text("planted %d" % i, "... " + p + " ...")
    assert len(fresh.leaks) == len(planted), fresh.leaks
    (tmp_path / "f.log").write_text("birdsentinel[1]: ERROR: " + CS + "\n")
    fresh.file("file", str(tmp_path / "f.log"))
    assert len(fresh.leaks) == len(planted) + 1
    fresh.text("bytes", CS.encode())
    assert len(fresh.leaks) == len(planted) + 2
    os.unlink(str(tmp_path / "f.log"))          # not left for the session-end sweep


def test_scan_is_installed_on_every_output_path(secret_scan):
    n = secret_scan.texts
    bs.LOG.debug("secret-scan canary %s", 1)             # any level, even below the logger's
    assert secret_scan.texts == n + 1
    bs.ActionRunner(io.StringIO(), hostname="h").write_out("canary\n")
    assert secret_scan.texts == n + 2
    out = io.StringIO()
    assert bs.main(["--version"], {}, out) == 0
    assert secret_scan.texts >= n + 3


# -- reprs ---------------------------------------------------------------------------

def test_credentials_never_show_their_values():
    c = creds()
    shown = [repr(c), str(c), "%s" % c, "%r" % c, "{}".format(c), "{!r}".format(c), repr([c]), repr({"c": c}),
             repr((c,))]
    for s in shown:
        assert leaks(s) == [], s
    assert not hasattr(c, "__dict__")                    # no vars() view of them either
    assert (c.consumer_key, c.consumer_secret, c.token, c.token_secret) == SECRETS    # (they are there for signing)


def test_xclient_repr_and_attributes_hide_secrets():
    client = bs.XClient(creds(), "https://api.x.com", opener=lambda r, t: None)
    for s in (repr(client), str(client), repr(vars(client)), repr([client])):
        assert leaks(s) == [], s


# -- network errors -----------------------------------------------------------------

def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class OneShotServer:
    """Accepts one connection, reads the request, answers `reply`, closes."""

    def __init__(self, reply):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.request = b""
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                while b"\r\n\r\n" not in self.request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    self.request += chunk
                conn.sendall(self.reply)
            except OSError:
                pass

    def close(self):
        self.sock.close()
        self.thread.join(5)


def check_error(exc, label):
    texts = [str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(type(exc), exc,
                                                                                      exc.__traceback__))]
    for t in texts:
        assert leaks(t) == [], (label, t)
        record_secret_scan_text("network error: %s" % label, t)
    # the request (or anything else) is not chained in
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def test_network_errors_hide_secrets(fx):
    cases = []
    client = bs.XClient(creds(), "http://127.0.0.1:%d" % _closed_port(), timeout=2)
    with pytest.raises(bs.XNetworkError) as ei:
        client.send_dm("1001", "x")
    cases.append(("connection refused", ei.value))

    client = bs.XClient(creds(), fx.base_url, timeout=0.3)
    fx.inject(hang=True, path_prefix="/2/dm")
    with pytest.raises(bs.XNetworkError) as ei:
        client.send_dm("1001", "x")
    cases.append(("timeout", ei.value))
    fx.inject(drop=True, path_prefix="/2/dm")
    with pytest.raises(bs.XNetworkError) as ei:
        client.send_dm("1001", "x")
    cases.append(("dropped", ei.value))

    for reply, label in ((b"", "closed without an answer"), (b"HTT", "status line cut short"),
                         (b"garbage, not HTTP\r\n\r\n", "garbled")):
        srv = OneShotServer(reply)
        try:
            client = bs.XClient(creds(), "http://127.0.0.1:%d" % srv.port, timeout=3)
            with pytest.raises(bs.XNetworkError) as ei:
                client.send_dm("1001", "x")
        finally:
            srv.close()
        assert b"oauth_signature" in srv.request                   # the request was signed ...
        cases.append((label, ei.value))

    for label, exc in cases:
        check_error(exc, label)                                     # ... and the error does not say so


def test_bird_errors_about_credential_files_hide_the_values(tmp_path):
    d = tmp_path / "tw"
    d.mkdir()

    def write(name, data, mode=0o600):
        p = d / name
        p.write_bytes(data)
        os.chmod(str(p), mode)
        return str(p)

    cases = [
        write("consumer-secret", (CS + "\n").encode(), 0o644),             # readable by others
        write("access-token-secret", (ATS + " trailing words\n").encode()),  # not one value
        write("access-token", AT.encode() + b"\xff\xfe\n"),                 # not UTF-8
        write("consumer-key", ("%s\n%s\n" % (CK, CS)).encode()),            # two lines
    ]
    for path in cases:
        with pytest.raises(bs.CredentialsError) as ei:
            bs.read_secret(path)
        check_error(ei.value, os.path.basename(path))
    with pytest.raises(bs.CredentialsError) as ei:
        bs.load_credentials(str(d), {})
    check_error(ei.value, "load_credentials")


# -- runs where X answers 401 ---------------------------------------------------------

def _env(tmp_path):
    e = {k: v for k, v in os.environ.items()
         if k not in ("BIRDSENTINEL_API_BASE", "CREDENTIALS_DIRECTORY", "XDG_STATE_HOME")}
    e["HOME"] = str(tmp_path)
    return e


def _run(script, env, args, label, input=None):
    r = subprocess.run([sys.executable, script] + args, env=env, input=input, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    record_secret_scan_text(label + " stdout", r.stdout)
    record_secret_scan_text(label + " stderr", r.stderr)
    return r


def _sent_signatures(fx):
    sigs = []
    for q in fx.requests:
        auth = q["headers"].get("authorization", "")
        for item in auth.split(","):
            k, _, v = item.strip().partition("=")
            if k.endswith("oauth_signature") and v:
                sigs.append(v.strip('"'))
    return sigs


def test_401_command_runs_leak_nothing(fx, tmp_path, script):
    tw = str(tmp_path / "tw")
    fx.write_creds(tw)
    fx.revoke(fx.access_token)
    env = _env(tmp_path)
    common = ["--twitter-dir", tw, "--api-base", fx.base_url, "-v", "-v"]
    r1 = _run(script, env, ["--send", "hello", "--to", "1001"] + common, "--send 401")
    assert r1.returncode == bs.EX_CONFIG and "401" in r1.stderr, r1.stderr
    conf = tmp_path / "c.conf"
    conf.write_text("watchfor /x/\n  dm\n")
    r2 = _run(script, env, ["--check", "--online", "-c", str(conf), "--script-dir", str(tmp_path)] + common,
              "--check --online 401")
    assert r2.returncode == bs.EX_CONFIG and "401" in r2.stderr, r2.stdout + r2.stderr
    bad = str(tmp_path / "bad")
    FakeX(consumer_secret="wrong-" + CS).write_creds(bad)       # the server will not accept this secret
    r3 = _run(script, env, ["--authorize", "--twitter-dir", bad, "--api-base", fx.base_url, "-v", "-v"],
              "--authorize 401", input="1234567\n")
    assert r3.returncode == bs.EX_CONFIG, r3.stdout + r3.stderr
    sigs = _sent_signatures(fx)
    assert len(sigs) >= 3 and all(q["status"] == 401 for q in fx.requests)
    for r in (r1, r2, r3):
        for out in (r.stdout, r.stderr):
            assert leaks(out, sigs + ["wrong-" + CS]) == [], out


def test_401_daemon_log_and_files_leak_nothing(fx, tmp_path, script):
    tw = str(tmp_path / "tw")
    fx.write_creds(tw)
    fx.revoke(fx.access_token)
    conf = tmp_path / "c.conf"
    conf.write_text("watchfor /ALERT/\n  dm @alice\n  echo\n")
    log = tmp_path / "app.log"
    log.write_text("")
    sd = tmp_path / "sd"
    dlog = tmp_path / "d.log"
    p = subprocess.Popen([sys.executable, script, "-c", str(conf), "-t", str(log), "--script-dir", str(sd),
                          "--log-file", str(dlog), "--twitter-dir", tw, "--api-base", fx.base_url, "-v", "-v"],
                         env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True)
    try:
        deadline = time.monotonic() + 15
        while "watching" not in (dlog.read_text() if dlog.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(str(log), "a") as fh:
            fh.write("ALERT one\n")
        while "REJECTED" not in (dlog.read_text() if dlog.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "REJECTED" in dlog.read_text(), dlog.read_text()
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate(timeout=5)
    record_secret_scan_text("401 daemon stdout", out)
    record_secret_scan_text("401 daemon stderr", err)
    files = [str(dlog)] + [str(sd / n) for n in os.listdir(str(sd))]
    for f in files:
        record_secret_scan_file("401 daemon", f)
    sigs = _sent_signatures(fx)
    assert sigs
    for text in [out, err] + [open(f, "rb").read().decode("utf-8", "replace") for f in files if os.path.isfile(f)]:
        assert leaks(text, sigs) == [], text[:500]
    assert "ALERT one" in open(str(sd / bs.OUTBOX_NAME)).read()       # kept for later, not lost


# -- what X (or a proxy on the way) says back -------------------------------------------

def test_an_error_answer_echoing_the_request_is_not_logged_verbatim(tmp_path, logs):
    """A middlebox or a debugging proxy may answer with the request it got,
    Authorization header included.  X's words go into the log and the
    dead-letter file, so the request's credentials and signature must not."""
    found = {}
    for status in (400, 401, 403, 429, 503):
        logs.lines.clear()
        d = tmp_path / str(status)
        d.mkdir()
        texts = echo_run(str(d), status)
        bad = [leaks(t) for t in texts]
        if any(bad):
            found[status] = bad
    assert found == {}, found


def echo_run(d, status):
    def echo(rec):
        auth = rec["req"].get_header("Authorization")
        return status, {"detail": "rejected request: Authorization: %s" % auth}, {"content-type": "application/json"}

    opener = FakeOpener(default=echo)

    outbox = bs.Outbox(os.path.join(d, "ob"), os.path.join(d, "dead"), fsync=False)
    outbox.load()
    outbox.add("dm", "1001", "x", 1.0)
    client = bs.XClient(creds(), "https://api.x.com", opener=opener)
    deliverer = bs.Deliverer(outbox, client, bs.DeliveryState(), dict(bs.DEFAULT_BUDGET),
                             rng=random.Random(1))
    deliverer.step()
    assert opener.calls and "oauth_signature=" in opener.calls[0]["req"].get_header("Authorization")
    texts = ["\n".join(_LOGS[-1].lines)]
    if os.path.exists(os.path.join(d, "dead")):
        texts.append(open(os.path.join(d, "dead")).read())
    return texts
