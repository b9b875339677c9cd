"""Small test doubles shared by the delivery, network-fault and clock tests:
a canned HTTP answer shaped like what urllib's opener returns."""

import email.message
import json
import logging
import time


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
