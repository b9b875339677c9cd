"""Small test doubles shared by the tests: one fake clock (wall and
monotonic time, moved by hand), one scriptable fake HTTP opener (what
XClient(opener=...) calls instead of urllib's), a canned HTTP answer shaped
like what urllib's opener returns, and a few helpers."""

import email.message
import io
import json
import logging
import signal
import subprocess
import time
import urllib.error
import urllib.parse

T0 = 1_700_000_000.0                 # the default wall time of a FakeClock


def headers_of(d):
    """A header object like urllib's (case-insensitive, .items())."""
    m = email.message.Message()
    for k, v in (d or {}).items():
        m[k] = str(v)
    return m


def body_bytes(body):
    return body if isinstance(body, bytes) else json.dumps(body).encode()


class Resp:
    """A 2xx answer: status, headers, a body given as bytes or as JSON data."""

    def __init__(self, status, body=b"", headers=None):
        self.status = status
        self.headers = headers_of(headers)
        self._body = body_bytes(body)
        self.closed = False

    def read(self, n=-1):
        return self._body

    def close(self):
        self.closed = True


def answer(req, status, body=b"", headers=None):
    """What urllib's opener does with an answer: a response for 2xx,
    urllib.error.HTTPError (status, headers, body readable) for the rest."""
    if 200 <= status < 300:
        return Resp(status, body, headers)
    raise urllib.error.HTTPError(req.full_url, status, "err", headers_of(headers), io.BytesIO(body_bytes(body)))


class FakeClock:
    """A wall clock and a monotonic clock that the test moves by hand.

    clock() and now() give the wall time, monotonic() the monotonic one, so
    one instance serves as clock=, monotonic= (pass .monotonic) or both.
    advance(s) moves both clocks forward together; jump(s) moves only the
    wall clock (an NTP step, a hand-set date), either way.  `t` is the wall
    time; assigning it (clock.t += 60) moves both clocks, like advance().
    mono defaults to the wall time."""

    def __init__(self, wall=T0, mono=None):
        self.wall = float(wall)
        self.mono = self.wall if mono is None else float(mono)

    def __call__(self):
        return self.wall

    def now(self):
        return self.wall

    def monotonic(self):
        return self.mono

    def advance(self, s):
        assert s >= 0, "the monotonic clock never goes back"
        self.wall += s
        self.mono += s

    def jump(self, s):
        self.wall += s

    @property
    def t(self):
        return self.wall

    @t.setter
    def t(self, value):
        self.mono += float(value) - self.wall
        self.wall = float(value)


DM_SENT = (201, {"data": {"dm_event_id": "1"}}, {})


class FakeOpener:
    """A scriptable stand-in for urllib's opener: opener(req, timeout).

    `script` is a queue of answers, taken one per request: a tuple
    (status, body[, headers]), an exception instance (raised: URLError,
    socket.timeout, ...), or None for the default answer.  When the queue is
    empty, `default` answers: such a tuple, or a callable(rec) that returns
    one.  2xx comes back as a Resp, the rest as urllib.error.HTTPError.

    `calls` records every request as a dict: method, url, path, headers (as
    sent), body (bytes or None), json (the parsed body or None), text (the
    body's "text" or None), timeout, req (the Request itself), and with a
    FakeClock given, t (its wall time) and mono (its monotonic time)."""

    def __init__(self, default=DM_SENT, clock=None):
        self.default = default
        self.clock = clock
        self.script = []
        self.calls = []

    def record(self, req, timeout):
        body = req.data
        data = json.loads(body.decode()) if body else None
        rec = {"method": req.get_method(), "url": req.full_url, "path": urllib.parse.urlsplit(req.full_url).path,
               "headers": dict(req.header_items()), "body": body, "json": data,
               "text": data.get("text") if isinstance(data, dict) else None,
               "timeout": timeout, "req": req}
        if self.clock is not None:
            rec["t"], rec["mono"] = self.clock.now(), self.clock.monotonic()
        return rec

    def next_answer(self, rec):
        """The queued answer for this request, None for the default."""
        return self.script.pop(0) if self.script else None

    def __call__(self, req, timeout):
        rec = self.record(req, timeout)
        self.calls.append(rec)
        item = self.next_answer(rec)
        if item is None:
            item = self.default(rec) if callable(self.default) else self.default
        if isinstance(item, BaseException):
            raise item
        return answer(req, *item)

    # views
    def texts(self):
        """The "text" of every request that had one, in order."""
        return [c["text"] for c in self.calls if c["text"] is not None]


def wait_until(pred, timeout=15.0):
    """Poll pred every 20 ms until it is true or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def read_text(path):
    """A file's text, or "" while it does not exist (yet)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


class LogCapture(logging.Handler):
    """Keeps every record of the logger it is added to."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level, *words):
        """Messages at `level` or above that contain every one of `words`."""
        return [m for m in (r.getMessage() for r in self.records if r.levelno >= level)
                if all(w in m for w in words)]

    def only(self, level, *words):
        """Messages at exactly `level` that contain every one of `words`."""
        return [m for m in (r.getMessage() for r in self.records if r.levelno == level)
                if all(w in m for w in words)]


def print_figures(request, figures):
    """Show a module's measured figures in the test run's output, past capture."""
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if figures and tr is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            tr.write_line("figures (%s): %s" % (request.module.__name__, json.dumps(figures, sort_keys=True)))


def stop_processes(procs, timeout=10.0):
    """SIGTERM every process still running, wait for each, SIGKILL what is left."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def alive(pid):
    """The process runs (not gone, not a zombie)."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def state_json(state=None):
    """The state file's JSON object for a State, as StateStore.save writes it (for tests that plant one)."""
    import birdsentinel as bs
    return {"version": bs.STATE_VERSION, **bs.state_object(state if state is not None else bs.State())}


def valid_state(data):
    """Whether StateStore.load would take this JSON object (and not set it aside as corrupt)."""
    import birdsentinel as bs
    try:
        return isinstance(data, dict) and data.get("version") == bs.STATE_VERSION and bs.state_fields(bs.State, data)
    except ValueError:
        return False
