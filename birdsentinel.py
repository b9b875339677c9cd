#!/usr/bin/env python3
"""birdsentinel -- real-time log alerts over Twitter/X direct messages.

A swatch-compatible log watcher in one file (Python 3.9+, standard library only):
it follows log files, the systemd journal or rsyslog, matches swatch-style rules,
throttles, runs actions without a shell, and delivers alerts as X direct messages
or posts (X API v2, OAuth 1.0a).

Command line usage:
    birdsentinel.py [-c CONFIG] [-t FILE... | --journal | --omprog] [options]
    birdsentinel.py -c CONFIG --examine FILE [--dry-run]
    birdsentinel.py --authorize [--twitter-dir DIR]
    birdsentinel.py --send "MESSAGE" [--to @user|ID] [--tweet]
    birdsentinel.py --check [--online]
    birdsentinel.py --convert-config SWATCHRC [-o NEW]

Input (swatch's flags):
  -c, --config-file FILE   rules (default ~/.swatchdogrc)
  -t, --tail-file FILE     follow FILE (repeatable).  With no source given:
                           /var/log/messages, else /var/log/syslog, else the journal
  -f, --examine FILE       read FILE once from the start, then exit
  -p, --read-pipe "CMD"    read the output of CMD (run as argv, no shell)
  --journal                follow the systemd journal, resuming at its cursor
  --journal-dir DIR        read the journal files in DIR (journal-remote)
  --journal-match F=V      only entries whose field F is V (repeatable)
  --omprog                 read rsyslog omprog's stdin, answer OK when durable
  --daemon                 detach; log to syslog (or --log-file)
  --pid-file FILE          write the daemon's pid to FILE
  --script-dir DIR         state, outbox, dead letters (~/.local/state/birdsentinel)
Our own:
  --once                   read what is new since the last run, act, save, exit
  --state-file FILE        state file (default SCRIPTDIR/birdsentinel.state)
  --dry-run                show what each action would do, and do nothing
  --check [--online]       check config, layout, credentials; --online: ask X
                           about the token and each dm recipient
  --convert-config FILE    write the swatch config FILE in this syntax (to -o
                           NEW, or stdout), same meaning; stderr says what changed
  --log-file FILE          log here instead of stderr/syslog
  -v, --verbose            more log detail (repeat for debug)
  --version, -h/--help
X (Twitter):
  --twitter-dir DIR        files consumer-key, consumer-secret, access-token,
                           access-token-secret (default /etc/sevagas/monitor/
                           twitter; else systemd's $CREDENTIALS_DIRECTORY)
  --api-base URL           X API base (default https://api.x.com, or
                           $BIRDSENTINEL_API_BASE); http only for loopback
  --ca-file FILE           CA bundle trusted in addition to the system's
  --authorize              PIN flow: get and store an access token
  --send MESSAGE           send one message and exit 0 only on success
  --to @USER|ID            recipient for --send (default: the account itself)
  --tweet                  with --send: post instead of a direct message

Config grammar (swatch 3):
  watchfor /REGEX/[i]      (or waitfor) start a rule; /a/ && /b/, !/c/ (and, or, not)
                           combine; FIELD=~/RE/ tests a journal field (_SYSTEMD_UNIT)
  ignore /REGEX/           drop matching lines for the rules below it
  echo [MODES]             print the line (MODES: normal, bold, red, ...)
  bell [N]                 ring the terminal bell N times
  exec CMD ARGS            run a program: the command is split once like a shell
                           would, then $_ $0 (the line), $1..$9, ${name} (groups;
                           journal fields: ${_HOSTNAME}) go INSIDE single arguments.
                           No shell ever runs; for one: exec sh -c 'logger "$1"' sh $_
                           The line's control characters and escapes are removed
                           (tab kept); ",raw=1" keeps them.
  pipe CMD[,keep_open=1]   write the line to CMD's standard input (a kept
                           one that reads nothing for 5 s is restarted)
  mail [addresses=A:B][,subject=S]   send through sendmail -oi -t
  write USER[:USER]        write(1) the line to users' terminals
  dm [@USER|ID ...]        direct message (default: the account itself)
  tweet [defang=no]        post (to a protected account, preferably)
  continue                 go on with the next rules after this one
  quit                     exit after this line
  throttle [H:]M:S[,key=K][,threshold=N]
  threshold track_by=K,type=limit|threshold|both,count=N,seconds=S
  ACTION ...,when=D-D:H-H  act only on those weekdays (0=Sunday) and hours
  ACTION ...,message=TEXT  send TEXT (with $_ $1 ...) instead of the line
  include FILE             read FILE's rules here
  budget dm_per_15m=15,dm_per_day=1440,tweet_per_15m=100,
         tweet_per_day=10000[,usd_per_day=5]
  outbox max_bytes=20M,max_entries=10000   past it, alerts are counted
  Lines starting with # are comments; a trailing backslash continues a line.
  Perl code (perlcode, Perl variables, custom actions) is refused at load.

Files (in the script dir; none has "swatch" in its name):
  birdsentinel.state       positions, counters, user ids, budget use (JSON)
  birdsentinel.state.lock  held while running: one instance per state file
  birdsentinel.outbox      messages not yet accepted by X (JSON lines)
  birdsentinel.dead        messages X refused for good, with X's reason

Signals:
  SIGTERM, SIGINT          finish the current line, save state, exit 0
  SIGHUP                   reload the config (a bad one is refused), retry X

Exit status:
  0 success; 1 an action failed (--once, --send); 64 usage error; 66 input missing
  or unreadable; 70 internal error; 73 cannot create a file; 75 temporary failure
  (another instance running, X unreachable); 78 configuration or credential error.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
import ctypes
import errno
import fcntl
import itertools
import json
import logging
import os
import queue
import random
import re
import select
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import types
import unicodedata
import urllib.parse
import zlib
# hashlib, hmac, http.client, ipaddress, logging.handlers, ssl, urllib.error and urllib.request are imported in the
# functions that use them: OpenSSL, the HTTP stack and the syslog handler cost about 9 MB of memory that a watcher
# without X actions, and every --examine run, never needs.
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Type

__version__ = "0.1.0"

LOG = logging.getLogger("birdsentinel")

# The sections below, in data-flow order: Constants, Errors, OAuth 1.0a, Config, Sources, Matching, State and outbox,
# Messages, Delivery, X API client, Actions, Runtime, Command line.

# ==== Constants ==============================================================
# Read-only: tables are MappingProxyType, sequences tuples; the only global that changes is the logging registry of LOG.

DEFAULT_TWITTER_DIR = "/etc/sevagas/monitor/twitter"
DEFAULT_API_BASE = "https://api.x.com"
SECRET_NAMES = ("consumer-key", "consumer-secret", "access-token", "access-token-secret")
STATE_NAME = "birdsentinel.state"
OUTBOX_NAME = "birdsentinel.outbox"
DEAD_NAME = "birdsentinel.dead"
LOG_NAME = "birdsentinel.log"
STATE_VERSION = 1

READ_BLOCK = 1 << 18          # bytes read at a time
MAX_LINE = 64 * 1024          # longer lines keep their first MAX_LINE bytes
MATCH_SAMPLE = 1 << 15        # bytes of log on which each rule's rarest literals are chosen
FINGERPRINT_LEN = 128         # bytes at a file's start that identify it
MIN_FINGERPRINT = 16          # fewer first bytes than this identify nothing
RETIRED_GRACE = 60.0          # seconds a rotated file is still read
MAX_TABLE = 10000             # throttle/threshold keys per rule; past it new keys are not tracked
MAX_KEY = 256                 # longer counter keys are cut and hashed
SUSPENDED_NOTICE = 3600.0     # seconds between two "tracking suspended" notices of a rule
MAX_CHILDREN = 16             # exec/pipe/mail children at once
MAX_QUEUED_ACTIONS = 10000    # actions waiting for a free child slot
MAX_QUEUED_BYTES = 8 << 20    # and their standard input, in bytes
OUTBOX_ENTRIES = 10000        # a week of X's 1,440 DMs a day; past it alerts are counted, not kept
OUTBOX_BYTES = 20 << 20
MAX_POLL_READ = 4 << 20       # bytes read from a source per poll: then save, check signals, go on
CHILD_TIMEOUT = 60.0          # seconds before a child is killed
PIPE_STALL = 5.0              # seconds a write to a keep_open pipe may wait before its reader is killed
PIPE_QUEUE = 1 << 20          # bytes a keep_open pipe's writer may hold; past it lines are dropped (counted)
CHILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHILD_ENV_KEEP = frozenset(("HOME", "LANG", "LANGUAGE", "LOGNAME", "SHELL", "TERM", "TZ", "USER"))

DM_MAX_CHARS = 10000          # X's DM text limit (v1.1 documented; v2 silent)
TWEET_MAX_WEIGHT = 280        # twitter-text v3: weighted length
TWEET_URL_WEIGHT = 23
TWEET_MAX_TEXT = 1000         # longer alert text is cut before it is posted (4 posts at most)
TWEET_WEIGHT1_RANGES = ((0, 4351), (8192, 8205), (8208, 8223), (8242, 8247))
PRICE_USD = types.MappingProxyType({"dm": 0.015, "tweet": 0.015, "tweet_url": 0.20})
DEFAULT_BUDGET = (("dm_per_15m", 15), ("dm_per_day", 1440), ("tweet_per_15m", 100), ("tweet_per_day", 10000),
                  ("usd_per_day", None))
WINDOW_15M = 900.0
WINDOW_DAY = 86400.0
BACKOFF_BASE = 2.0
BACKOFF_CAP = 900.0
AUTH_RETRY = 900.0            # after a 401: retry this often (and at SIGHUP)
HTTP_TIMEOUT = 15.0
USER_ID_RE = re.compile(r"^[0-9]{1,19}$")          # X's ids, before any use in a URL or cache
HANDLE_RE = re.compile(r"^@?[A-Za-z0-9_]{1,15}$")
# 403 about the account, not a message: balance, tier, project (x-api-facts.md 'Out of credits', 'Do they still work?')
ACCOUNT_403_RE = re.compile(r"(?i)credit|payment|billing|spend|access to a subset|attached to a project"
                            r"|client-not-enrolled")

EX_FAIL = 1                   # the rest are sysexits(3): 0, 64, 66, 70, 73, 75, 78
EX_OK, EX_USAGE, EX_NOINPUT, EX_SOFTWARE = os.EX_OK, os.EX_USAGE, os.EX_NOINPUT, os.EX_SOFTWARE
EX_CANTCREAT, EX_TEMPFAIL, EX_CONFIG = os.EX_CANTCREAT, os.EX_TEMPFAIL, os.EX_CONFIG

ECHO_MODES = types.MappingProxyType({
    "normal": "0", "bold": "1", "underline": "4", "underscore": "4", "blink": "5", "inverse": "7", "reverse": "7",
    "concealed": "8", "black": "30", "red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35",
    "cyan": "36", "white": "37", "on_black": "40", "on_red": "41", "on_green": "42", "on_yellow": "43",
    "on_blue": "44", "on_magenta": "45", "on_cyan": "46", "on_white": "47"})


# ==== Errors =================================================================


class BirdError(Exception):
    """Base of every error birdsentinel reports as one line."""
    exit_code = EX_FAIL


class ConfigError(BirdError):
    """A config file problem: '"FILE", line N: what -- hint'."""
    exit_code = EX_CONFIG

    def __init__(self, path: str, lineno: int, what: str, hint: str = "") -> None:
        self.path, self.lineno, self.what, self.hint = path, lineno, what, hint
        super().__init__('"%s", line %d: %s' % (path, lineno, what) + (" \u2014 " + hint if hint else ""))


def bird_error(name: str, exit_code: int, doc: str) -> Type[BirdError]:
    """A BirdError that differs from the others only in its name and exit status."""
    return type(name, (BirdError,), {"exit_code": exit_code, "__doc__": doc})


CredentialsError = bird_error("CredentialsError", EX_CONFIG, "X credentials missing, unreadable or unsafe.")
StateError = bird_error("StateError", EX_CANTCREAT, "A state, outbox, lock, log or token file we cannot read or make.")
LockedError = bird_error("LockedError", EX_TEMPFAIL, "Another instance holds the state file's lock.")
UnsafeFileError = bird_error("UnsafeFileError", EX_CONFIG, "A file or dir we did not make, or others can change.")
NoInputError = bird_error("NoInputError", EX_NOINPUT, "An input (file, command, journal) that cannot be read or run.")
XNetworkError = bird_error("XNetworkError", EX_TEMPFAIL, "A request that got no HTTP answer (refused, reset, timeout).")
XRefusedError = bird_error("XRefusedError", EX_TEMPFAIL, "X refused for now (rate limit, trouble, no credits).")


# ==== OAuth 1.0a (RFC 5849) ==================================================
# One small pure function per RFC concept.  Nonce and timestamp are parameters, so every step has known-answer tests.


def percent_encode(value: str) -> str:
    """RFC 5849 section 3.6: UTF-8, then every octet but ALPHA DIGIT - . _ ~ as upper-case %XX."""
    return urllib.parse.quote(value.encode("utf-8"), safe="-._~")


def base_string_uri(url: str) -> str:
    """RFC 5849 section 3.4.1.2: lower-case scheme and host, no default port, query or fragment."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:                          # IPv6 literal keeps its brackets
        host = "[%s]" % host
    if parts.port is not None and (scheme, parts.port) not in (("http", 80), ("https", 443)):
        host = "%s:%d" % (host, parts.port)
    return "%s://%s%s" % (scheme, host, parts.path or "/")


def request_parameters(url: str, oauth_params: Sequence[Tuple[str, str]],
                       form_body: Optional[str] = None) -> List[Tuple[str, str]]:
    """RFC 5849 section 3.4.1.3.1: the query, the oauth_* protocol parameters (without oauth_signature and realm) and
    a form-encoded body.  A JSON body is NOT a parameter source: pass form_body only for x-www-form-urlencoded ones."""
    params = urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True)
    params += [(k, v) for k, v in oauth_params if k not in ("oauth_signature", "realm")]
    if form_body:
        params += urllib.parse.parse_qsl(form_body, keep_blank_values=True)
    return params


def normalize_parameters(params: Iterable[Tuple[str, str]]) -> str:
    """RFC 5849 section 3.4.1.3.2."""
    encoded = sorted((percent_encode(k), percent_encode(v)) for k, v in params)
    return "&".join("%s=%s" % kv for kv in encoded)


def signature_base_string(method: str, uri: str, normalized_params: str) -> str:
    """RFC 5849 section 3.4.1.1: METHOD&enc(base string URI)&enc(params)."""
    return "&".join((method.upper(), percent_encode(uri), percent_encode(normalized_params)))


def hmac_sha1_signature(base_string: str, client_secret: str, token_secret: str = "") -> str:
    """RFC 5849 section 3.4.2: key is enc(client secret)&enc(token secret)."""
    import hashlib
    import hmac
    key = "%s&%s" % (percent_encode(client_secret), percent_encode(token_secret))
    digest = hmac.new(key.encode("utf-8"), base_string.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def sign_request(method: str, url: str, consumer_key: str, consumer_secret: str, token: str = "",
                 token_secret: str = "", *, nonce: str, timestamp: str, form_body: Optional[str] = None,
                 extra_oauth: Sequence[Tuple[str, str]] = (), version: Optional[str] = "1.0") -> str:
    """The Authorization header (sec. 3.5.1: 'OAuth ' + name="value" pairs, encoded) of one request, HMAC-SHA1 signed;
    extra_oauth: oauth_callback or oauth_verifier (sec. 2)."""
    oauth = [("oauth_consumer_key", consumer_key), ("oauth_nonce", nonce),
             ("oauth_signature_method", "HMAC-SHA1"), ("oauth_timestamp", timestamp)]
    oauth += [(k, v) for k, v in (("oauth_token", token), ("oauth_version", version)) if v] + list(extra_oauth)
    params = request_parameters(url, oauth, form_body)
    base = signature_base_string(method, base_string_uri(url), normalize_parameters(params))
    oauth.append(("oauth_signature", hmac_sha1_signature(base, consumer_secret, token_secret)))
    return "OAuth " + ", ".join('%s="%s"' % (percent_encode(k), percent_encode(v)) for k, v in sorted(oauth))


def new_nonce() -> str:
    """32 hex characters: ASCII only, as X requires of oauth_nonce."""
    return os.urandom(16).hex()


# ==== Config (swatch syntax) =================================================
# A pure parser: text in, Config out.  Every refusal names the file and line.

PERL_VAR_RE = re.compile(r"(?<!\\)[$@](?:\{?[A-Za-z_][A-Za-z0-9_]*\}?)")
TEMPLATE_VAR_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*|[0-9])\}|([0-9_*])|([A-Za-z_][A-Za-z0-9_]*))")
POSIX_CLASSES = types.MappingProxyType({
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z", "space": r"\s",
    "xdigit": "0-9A-Fa-f", "word": r"\w", "punct": r"!-/:-@\[-`{-~", "blank": r" \t", "cntrl": r"\x00-\x1f\x7f",
    "print": r"\x20-\x7e", "graph": r"\x21-\x7e"})
ACTION_OPTION_KEYS = ("when", "message", "keep_open", "mailer", "subject", "addresses", "defang", "raw")
THRESHOLD_TYPES = ("limit", "threshold", "both")
OFF = ("0", "", "no", "off", "false")           # an option's value that turns it off (keep_open=off was on)
ACTION_KINDS = ("echo", "bell", "exec", "pipe", "mail", "write", "dm", "tweet", "continue", "quit")
SYSLOG_STAMP_RE = re.compile(r"^\w{3}\s+\d{1,2}\s+\d{2}:\d{2}:\d{2}\s+")
# the tag of a syslog line as rsyslog writes it: after the time and the host
SYSLOG_TAG_RE = re.compile(r"(?:<\d{1,3}>)?(?:\w{3} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\S+) (\S+) (\S+)")
# journal fields a template may name (${_HOSTNAME}): not ${HOME}, which would silently be empty
FIELD_NAME_RE = re.compile(r"^(?:_[A-Z0-9_]+|(?:CODE|SYSLOG|CONTAINER|COREDUMP|OBJECT)_[A-Z0-9_]+|MESSAGE(?:_ID)?"
                           r"|PRIORITY|ERRNO|T?ID|(?:USER_)?(?:UNIT|INVOCATION_ID))$")
FIELD_TERM_RE = re.compile(r"([A-Z_][A-Z0-9_]*)=~\s*")
KEYWORD_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=\s*|(?=,)|\s+|$)(.*)$")     # key value, key=value


@dataclass(frozen=True)
class Template:
    """Text with $_ $0 $* (the line), $1..$9, ${name} (groups), parsed once: inserted values are never parsed again."""
    parts: Tuple[Tuple[bool, str], ...]   # (is_variable, literal or name)

    @staticmethod
    def parse(text: str) -> "Template":
        return Template.from_segments(((text, False),))

    @staticmethod
    def from_segments(segments: Sequence[Tuple[str, bool]]) -> "Template":
        """A word from split_words: single-quoted segments stay literal."""
        parts: List[Tuple[bool, str]] = []
        for text, literal in segments:
            if literal:
                parts.append((False, text))
                continue
            pos = 0
            for m in TEMPLATE_VAR_RE.finditer(text):
                if (m.start() > 0 and text[m.start() - 1] == "\\") or m.group(3) is not None:   # \$x or $word: not ours
                    continue
                if m.start() > pos:
                    parts.append((False, text[pos:m.start()]))
                parts.append((True, m.group(1) or m.group(2)))
                pos = m.end()
            if pos < len(text):
                parts.append((False, text[pos:]))
        return Template(tuple(parts))

    def variables(self) -> List[str]:
        return [name for is_var, name in self.parts if is_var]

    def head(self) -> str:
        """The literal text before the first variable."""
        return "".join(part for _, part in itertools.takewhile(lambda p: not p[0], self.parts))

    def expand(self, line: str, match: Optional[re.Match], clean: Callable[[str], str] = str) -> str:
        """The text with each variable's value, passed through clean."""
        out = []
        for is_var, name in self.parts:
            if not is_var:
                out.append(name)
            elif name in ("_", "0", "*"):
                out.append(clean(line))
            elif match is not None:
                try:
                    out.append(clean(match.group(int(name) if name.isdigit() else name) or ""))
                except IndexError:                  # no such group in this pattern
                    pass
        return "".join(out)


@dataclass(frozen=True)
class Term:
    negated: bool
    regex: re.Pattern
    source: str
    field: str = ""                         # FIELD=~/re/: a journal field, not the line

    def search(self, line: str, fields: Optional[Dict[str, str]]) -> Optional[re.Match]:
        if not self.field:
            return self.regex.search(line)
        value = fields.get(self.field) if fields else None      # no such field: never a match
        return None if value is None else self.regex.search(value)


@dataclass(frozen=True)
class Pattern:
    """A watchfor/ignore expression: terms joined by && (all) or || (any)."""
    terms: Tuple[Term, ...]
    any_of: bool
    source: str

    def match(self, line: str, fields: Optional[Dict[str, str]] = None) -> Optional[re.Match]:
        """The first positive term's match when the whole expression is true (its groups feed $1..$9), else None."""
        first: Optional[re.Match] = None
        if self.any_of:
            for t in self.terms:
                m = t.search(line, fields)
                if (m is not None) != t.negated:
                    return m or NEGATED_MATCH.search("")
            return None
        for t in self.terms:
            m = t.search(line, fields)
            if (m is None) != t.negated:
                return None
            first = first or m
        return first or NEGATED_MATCH.search("")


NEGATED_MATCH = re.compile("")


class EntryMatch:
    """A match on a journal entry: the pattern's groups, then the entry's fields for ${FIELD} (a missing one: empty)."""

    def __init__(self, m: re.Match, fields: Dict[str, str]) -> None:
        self.m, self.fields = m, fields

    def group(self, name: Any) -> str:
        try:
            return self.m.group(name)
        except IndexError:
            return self.fields.get(name, "")


@dataclass(frozen=True)
class When:
    days: Tuple[int, int]
    hours: Tuple[int, int]

    def allows(self, t: float) -> bool:
        lt = time.localtime(t)
        wday = (lt.tm_wday + 1) % 7            # Perl localtime: 0 = Sunday
        return self.days[0] <= wday <= self.days[1] and self.hours[0] <= lt.tm_hour <= self.hours[1]


@dataclass(frozen=True)
class Action:
    kind: str                               # one of ACTION_KINDS
    lineno: int
    argv: Tuple[Template, ...] = ()         # exec, pipe, mailer
    modes: Tuple[str, ...] = ()             # echo
    count: int = 1                          # bell
    recipients: Tuple[str, ...] = ()        # mail, write, dm
    subject: Optional[Template] = None      # mail
    message: Optional[Template] = None      # message=
    keep_open: bool = False                 # pipe
    raw: bool = False                       # exec, pipe: the line's control bytes kept
    defang: bool = True                     # tweet
    when: Optional[When] = None
    path: str = ""                          # the config file it is in


@dataclass(frozen=True)
class Threshold:
    type: str
    count: int
    seconds: int
    track_by: Template


@dataclass(frozen=True)
class Throttle:
    delay: float
    key: Optional[Template]                 # None: the line without its syslog stamp
    threshold: int = 0


@dataclass
class Rule:
    kind: str                               # "watchfor" or "ignore"
    pattern: Pattern
    path: str
    lineno: int
    actions: List[Action] = field(default_factory=list)
    threshold: Optional[Threshold] = None
    throttle: Optional[Throttle] = None
    cont: bool = False
    index: int = 0                          # position in the whole config

    @property
    def ident(self) -> str:
        """Names this rule's counters in the state file: stable across restarts and reloads while the rule
        keeps its place and pattern (two rules with one pattern keep separate counters, as in swatch)."""
        return "%d:%s" % (self.index, self.pattern.source)


@dataclass
class Config:
    path: str
    rules: List[Rule]
    budget: Dict[str, Optional[float]]
    files: Tuple[str, ...]
    outbox: Dict[str, int] = field(default_factory=lambda: {"max_entries": OUTBOX_ENTRIES, "max_bytes": OUTBOX_BYTES})


def read_logical_lines(text: str) -> Iterator[Tuple[int, int, str]]:
    """Config lines, CRLF, comments, blank lines and backslash continuations handled: (first, last lineno, text)."""
    pending: List[str] = []
    start, lines = 0, text.split("\n")             # not splitlines(): \f or U+2028 end no line
    for n, raw in enumerate(lines, 1):
        line = raw.rstrip("\r").rstrip()
        if not pending:
            start = n
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        more = line.endswith("\\") and not line.endswith("\\\\")
        pending.append(line[:-1] if more else line)
        if not more or n == len(lines):
            yield start, n, " ".join(p.strip() for p in pending).strip()
            pending = []


def perl_regex_to_python(src: str, flags: str, path: str, lineno: int) -> re.Pattern:
    """Translate the Perl regex dialect swatch users write into Python's."""
    for m in PERL_VAR_RE.finditer(src):
        if src[m.start()] == "$":           # '$' before a name is never an anchor
            raise ConfigError(path, lineno, "Perl variable %s inside a pattern" % m.group(0),
                              "patterns cannot use perlcode variables; write the regex out in full")
    if "\\Q" in src or "(?{" in src or "(??{" in src:
        raise ConfigError(path, lineno, "Perl-only regex construct in /%s/" % src,
                          "rewrite it without \\Q..\\E or embedded code")
    py = re.sub(r"\(\?<([A-Za-z_][A-Za-z0-9_]*)>", r"(?P<\1>", src)
    py = re.sub(r"\\k[<{]([A-Za-z_][A-Za-z0-9_]*)[>}]", r"(?P=\1)", py)
    py = py.replace("\\z", "\\Z").replace("\\h", "[ \\t]").replace("\\H", "[^ \\t]")
    py = py.replace("\\e", "\\x1b").replace("\\@", "@").replace("\\/", "/")
    py = re.sub(r"\[:(\^?)([a-z]+):\]",
                lambda m: POSIX_CLASSES.get(m.group(2), m.group(0)) if not m.group(1) else m.group(0), py)
    reflags = sum({"i": re.I, "x": re.X, "s": re.S, "m": re.M}.get(f, 0) for f in set(flags))
    try:
        return re.compile(py, reflags)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise ConfigError(path, lineno, "bad regex /%s/: %s" % (src, exc), "fix the pattern (Python re syntax, close "
                          "to Perl's)" if isinstance(exc, re.error) else "simplify the pattern") from None


def parse_pattern(value: str, path: str, lineno: int) -> Pattern:
    """'/re/flags', '!/re/', 'FIELD=~/re/', joined by && or || (Perl's not, and, or too); a trailing # comment."""
    terms: List[Term] = []
    seen = set()                            # the operators as written
    pos, n = 0, len(value)
    while True:
        pos = n - len(value[pos:].lstrip())
        neg = re.match(r"!|not\b", value[pos:])      # swatch hands the expression to Perl: and, or, not work
        if neg:
            seen.add(neg.group())
            pos = n - len(value[pos + neg.end():].lstrip())
        field = FIELD_TERM_RE.match(value, pos)
        if field:
            pos = field.end()
        if pos < n and value[pos] == "m" and pos + 1 < n and not value[pos + 1].isalnum():
            pos += 1
        if pos >= n or value[pos] not in "/{!|#":
            raise ConfigError(path, lineno, "cannot read pattern %r" % value,
                              "write it as /regex/ (optionally /regex/i, /a/ && /b/)")
        close = "}" if value[pos] == "{" else value[pos]
        i = pos + 1
        while i < n and value[i] != close:
            i += 2 if value[i] == "\\" else 1
        if i >= n:
            raise ConfigError(path, lineno, "pattern %r has no closing %s" % (value, close),
                              "end the regex with %s" % close)
        src = value[pos + 1:i]
        flags = "".join(itertools.takewhile(str.isalpha, value[i + 1:]))
        j = i + 1 + len(flags)
        if set(flags) - set("imsxgo"):
            raise ConfigError(path, lineno, "unknown regex flags %r" % flags, "use i, m, s or x")
        terms.append(Term(neg is not None, perl_regex_to_python(src, flags, path, lineno), value[pos:j],
                          field.group(1) if field else ""))
        pos = n - len(value[j:].lstrip())
        if pos >= n or value[pos] == "#":
            break
        op = re.match(r"&&|\|\||(and|or)\b", value[pos:])
        if op is None:
            raise ConfigError(path, lineno, "unexpected %r after pattern" % value[pos:],
                              "join patterns with && (and) or || (or); a comment starts with #")
        seen.add(op.group())
        pos += op.end()
    ops = {{"and": "&&", "or": "||"}.get(o, o) for o in seen - {"!", "not"}}
    if len(ops) > 1:
        raise ConfigError(path, lineno, "pattern mixes && and ||", "split it into two rules")
    if "not" in seen and seen & {"&&", "||"}:
        raise ConfigError(path, lineno, "pattern mixes not with && or ||",
                          "write ! for not: Perl reads not /a/ && /b/ as not (/a/ && /b/)")
    if all(t.negated for t in terms):
        raise ConfigError(path, lineno, "pattern has only negated terms",
                          "add a positive /regex/ so it matches something specific")
    return Pattern(tuple(terms), ops == {"||"}, value[:pos].strip())


def split_options(value: str, keys: Sequence[str]) -> Tuple[str, Dict[str, str]]:
    """Peel trailing ',key=value' options of known keys off an action value,
    so commas and '=' inside a command stay part of it (swatch loses them)."""
    opts: Dict[str, str] = {}
    rest = value
    while True:                                     # the last one first: ,message=$_,keep_open=1 is two
        found = [m for m in re.finditer(r",\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=|$)", rest) if m.group(1).lower() in keys]
        if not found:
            break
        opts[found[-1].group(1).lower()] = rest[found[-1].end():].strip() or "1"
        rest = rest[:found[-1].start()]
    m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", rest)
    if m and m.group(1).lower() in keys and "," not in rest:
        opts[m.group(1).lower()] = m.group(2)
        rest = ""
    return rest.strip(), opts


def split_commas(value: str, what: str = "", keys: Sequence[str] = (), path: str = "", lineno: int = 0,
                 hint: str = "") -> Tuple[List[str], Dict[str, str]]:
    """'a,b,key=value' -> (['a', 'b'], {'key': 'value'}), quotes stripped.  With `what`: a key not in `keys` (or, with
    no `hint` for them, a bare word) is refused, naming the keys, or with the hint."""
    bare: List[str] = []
    opts: Dict[str, str] = {}
    for piece in value.split(","):
        piece = piece.strip()
        if not piece:
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", piece)
        if m:
            opts[m.group(1).lower()] = unquote_value(m.group(2))
        else:
            bare.append(unquote_value(piece))
    unknown = sorted(set(opts) - set(keys)) + ([] if hint else bare)
    if what and unknown:
        raise ConfigError(path, lineno, "unknown %s option %r" % (what, unknown[0]),
                          hint or "%s takes %s" % (what, ", ".join(k + "=" for k in keys)))
    return bare, opts


def unquote_value(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        v = v[1:-1]
    return re.sub(r"\\([@ ,\"'])", r"\1", v)


def shell_chars(text: str) -> Iterator[Tuple[Optional[str], str]]:
    """How a POSIX shell reads each character: (None, c) for quoting (a quote that opens or closes one, a backslash that
    escapes), else (where, c): '' bare, "'" or '"' inside such quotes, '\\' escaped.  ValueError: a quote left open."""
    where, i = "", 0
    while i < len(text):
        c = text[i]
        if where == "'" and c != "'":
            yield "'", c
        elif c == "\\" and i + 1 < len(text) and (where == "" or text[i + 1] in '$`"\\\n'):
            yield None, c
            i += 1
            yield "\\", text[i]
        elif c == '"' or c == "'" and where != '"':
            yield None, c
            where = "" if where == c else c
        else:
            yield where, c
        i += 1
    if where:
        raise ValueError("no closing quotation")


def find_shell_syntax(command: str) -> Optional[str]:
    """The first shell syntax a shell would act on, or None.  Single quotes hide all; double quotes all but ` and $(."""
    chars: List[Tuple[Optional[str], str]] = []
    with contextlib.suppress(ValueError):               # a quote left open (split_words says so): what came before
        chars.extend(shell_chars(command))
    for (where, c), (_, after) in zip(chars, chars[1:] + [("", "")]):
        if where in ("", '"') and (c == "`" or c == "$" and after == "("):
            return c + after
        if where == "" and c in "|;&<>":
            return (c + after).strip() or c
    return None


def split_words(value: str) -> List[List[Tuple[str, bool]]]:
    """Split a command like a POSIX shell splits words, keeping which parts were single-quoted or escaped:
    (text, literal) segments per word.  Raises ValueError on an unbalanced quote."""
    words: List[List[Tuple[str, bool]]] = []
    word: Optional[List[Tuple[str, bool]]] = None
    for where, c in shell_chars(value):
        if where == "" and c.isspace():
            words += [word] if word is not None else []
            word = None
            continue
        word = [] if word is None else word
        literal = where in ("'", "\\")
        if where is None:                           # a quote: the word exists ('' is one), its next part is apart
            word.append(("", False))
        elif word and word[-1][1] == literal:
            word[-1] = (word[-1][0] + c, literal)
        else:
            word.append((c, literal))
    return words + ([word] if word is not None else [])


def parse_command(value: str, path: str, lineno: int, what: str) -> Tuple[Template, ...]:
    """Split an exec/pipe command once, like a shell would, into templates."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"' and value.count('"') == 2:
        value = value[1:-1].replace("\\/", "/")     # swatch configs often quote the whole command
    if not value:
        raise ConfigError(path, lineno, "%s needs a command" % what, "e.g. %s /usr/local/bin/alert $_" % what)
    bad = find_shell_syntax(value)
    if bad:
        raise ConfigError(path, lineno, "%s command uses shell syntax %r: %s" % (what, bad, value),
                          "no shell runs here; to use one, pass the line as an argument: "
                          "%s sh -c 'your | shell >> code \"$1\"' sh $_" % what)
    try:
        words = split_words(value.replace("\\@", "@"))
    except ValueError as exc:
        raise ConfigError(path, lineno, "cannot split %s command: %s" % (what, exc), "balance the quotes") from None
    head = ["".join(t for t, _ in w) for w in words[:2]]
    found = [(literal, m) for w in words for text, literal in w for m in TEMPLATE_VAR_RE.finditer(text)]
    quoted = [m.group(0) for literal, m in found if literal and (m.group(2) or m.group(1) or "x") in "_*0123456789"]
    if quoted and not (os.path.basename(head[0]) in ("sh", "bash", "dash") and head[1:] == ["-c"]):
        LOG.warning('"%s", line %d: %s inside single quotes is passed as the text %s, where swatch put the line or '
                    "group; take it out of the quotes ('text '%s) or run --convert-config", path, lineno, quoted[0],
                    quoted[0], quoted[0])
    unknown = [m.group(3) for literal, m in found if m.group(3) is not None and not literal]
    if unknown:
        raise ConfigError(path, lineno, "unknown variable $%s in %s command" % (unknown[0], what),
                          "only $_, $0, $1..$9 and ${name} are substituted; no shell expands "
                          "the rest (inside '...' nothing is substituted)")
    templates = tuple(Template.from_segments(w) for w in words)
    if templates[0].variables():
        raise ConfigError(path, lineno, "the program of %s comes from the log line: %s"
                          % (what, "".join(t for t, _ in words[0])),
                          "name a fixed program and pass the line as an argument")
    return templates


def parse_when(value: str, path: str, lineno: int) -> When:
    m = re.match(r"^\s*(\*|\d+(?:-\d+)?)\s*:\s*(\*|\d+(?:-\d+)?)\s*$", value)
    if not m:
        raise ConfigError(path, lineno, "bad when=%s" % value,
                          "write when=DAYS:HOURS, each '*', N or N-M (days 0-6 from Sunday, hours 0-23)")

    def rng(s: str, hi: int) -> Tuple[int, int]:
        if s == "*":
            return 0, hi
        a, _, b = s.partition("-")
        lo, up = int(a), int(b or a)
        if not (0 <= lo <= up <= hi):
            raise ConfigError(path, lineno, "when=%s out of range" % value, "days are 0-6, hours 0-23, low-high")
        return lo, up
    return When(rng(m.group(1), 6), rng(m.group(2), 23))


def parse_int(text: str, what: str, path: str, lineno: int, minimum: int = 0) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ConfigError(path, lineno, "%s=%s is not a whole number" % (what, text),
                          "give a number, e.g. %s=%d" % (what, max(minimum, 1))) from None
    if v < minimum:
        raise ConfigError(path, lineno, "%s=%d is below %d" % (what, v, minimum),
                          "give %s=%d or more" % (what, minimum))
    return v


def parse_action(key: str, value: str, path: str, lineno: int) -> Action:
    if key in ("continue", "quit"):
        if value:
            raise ConfigError(path, lineno, "%s takes no value (got %r)" % (key, value),
                              "write %s alone on its line" % key)
        return Action(key, lineno)
    if key == "mail":
        bare, opts = split_commas(value, "mail", ("addresses", "subject", "mailer", "when", "message"), path, lineno,
                                  "mail takes ADDRESS:ADDRESS or addresses=, subject=, mailer=, when=, message=")
    else:
        rest, opts = split_options(value, ACTION_OPTION_KEYS)
    when = parse_when(opts["when"], path, lineno) if "when" in opts else None
    message = Template.parse(unquote_value(opts["message"]).replace("\\n", "\n")) if "message" in opts else None
    if key in ("exec", "pipe"):
        return Action(key, lineno, argv=parse_command(rest, path, lineno, key), when=when, message=message,
                      keep_open=opts.get("keep_open", "0").lower() not in OFF,
                      raw=opts.get("raw", "0").lower() not in OFF)
    if key == "echo":
        modes = tuple(m.lower() for m in re.split(r"[\s,]+", rest) if m)
        bad = [m for m in modes if m not in ECHO_MODES]
        if bad:
            raise ConfigError(path, lineno, "unknown echo mode %r" % bad[0],
                              "echo takes modes like normal, bold, red; to print other text use echo,message=TEXT")
        return Action("echo", lineno, modes=modes, when=when, message=message)
    if key == "bell":
        return Action("bell", lineno, count=parse_int(rest or "1", "bell", path, lineno, 1), when=when)
    if key == "mail":
        recipients = tuple(a.strip() for a in (opts.get("addresses") or ":".join(bare)).split(":") if a.strip())
        mailer = parse_command(opts["mailer"], path, lineno, "mailer") if "mailer" in opts else ()
        return Action("mail", lineno, recipients=recipients, argv=mailer, when=when, message=message,
                      subject=Template.parse(opts.get("subject", "birdsentinel alert")))
    if key == "write":
        users = tuple(u for u in re.split(r"[:\s,]+", rest) if u)
        if not users:
            raise ConfigError(path, lineno, "write needs a user", "e.g. write root:admin")
        return Action("write", lineno, recipients=users, when=when, message=message)
    if key == "dm":
        recips = tuple(r for r in re.split(r"[\s,]+", rest) if r)
        for r in recips:
            if not (USER_ID_RE.match(r) or (r.startswith("@") and HANDLE_RE.match(r))):
                raise ConfigError(path, lineno, "bad DM recipient %r" % r,
                                  "use @handle (1-15 letters, digits, _) or a numeric user id")
        return Action("dm", lineno, recipients=recips, when=when, message=message)
    if key == "tweet":
        if rest:
            raise ConfigError(path, lineno, "unexpected %r after tweet" % rest,
                              "tweet takes options only, e.g. tweet,defang=no")
        return Action("tweet", lineno, when=when, message=message,
                      defang=opts.get("defang", "yes").lower() not in OFF)
    raise AssertionError(key)


def parse_threshold(value: str, path: str, lineno: int) -> Threshold:
    _bare, opts = split_commas(value, "threshold", ("track_by", "type", "count", "seconds"), path, lineno)
    t = opts.get("type", "")
    if t not in THRESHOLD_TYPES:
        raise ConfigError(path, lineno, "unknown threshold type %r" % t, "write type=%s: swatch ignores %r silently "
                          "and never alerts" % (t.lower(), t) if t.lower() in THRESHOLD_TYPES
                          else "types are limit, threshold and both (lower case)")
    for k in ("count", "seconds"):
        if k not in opts:
            raise ConfigError(path, lineno, "threshold needs %s=" % k, "e.g. threshold type=limit,count=1,seconds=60")
    return Threshold(t, parse_int(opts["count"], "count", path, lineno, 1),
                     parse_int(opts["seconds"], "seconds", path, lineno, 1), Template.parse(opts.get("track_by", "")))


def parse_throttle(value: str, path: str, lineno: int) -> Throttle:
    bare, opts = split_commas(value, "throttle", ("key", "threshold", "delay", "use"), path, lineno,
                              "throttle takes [H:]M:S, key=, threshold=")
    if "use" in opts:
        raise ConfigError(path, lineno, "throttle use=%s is not supported" % opts["use"],
                          "swatch ignores use= silently; write key=$1 with groups from the pattern instead")
    delay_text = opts.get("delay") or (bare[0] if bare else "")
    if not delay_text:
        raise ConfigError(path, lineno, "throttle needs a delay", "e.g. throttle 15:00")
    if not re.match(r"^\d{1,9}(:\d{1,9}){0,3}$", delay_text.strip()):     # [D:][H:]M:S, right-aligned like swatch
        raise ConfigError(path, lineno, "bad throttle delay %r" % delay_text, "write [H:]M:S, e.g. 15:00 or 0:0:5")
    nums = [int(x) for x in delay_text.strip().split(":")]
    days, hours, minutes, seconds = [0] * (4 - len(nums)) + nums
    return Throttle(float(((days * 24 + hours) * 60 + minutes) * 60 + seconds),
                    None if opts.get("key") in (None, "log") else Template.parse(opts["key"]),
                    parse_int(opts.get("threshold", "0"), "threshold", path, lineno, 0))


def parse_budget(value: str, path: str, lineno: int) -> Dict[str, Optional[float]]:
    _bare, opts = split_commas(value, "budget", dict(DEFAULT_BUDGET), path, lineno)
    out: Dict[str, Optional[float]] = {}
    for k, v in opts.items():
        try:
            out[k] = float(v)
            if not 0 < out[k] <= 1e9:               # also refuses nan and inf
                raise ValueError
        except ValueError:
            raise ConfigError(path, lineno, "budget %s=%s is not a number above 0" % (k, v),
                              "e.g. %s=15; to send nothing of a kind, remove its dm/tweet actions" % k) from None
        if k != "usd_per_day" and out[k] < 1:
            raise ConfigError(path, lineno, "budget %s=%s allows no message at all" % (k, v), "give at least 1")
    return out


def parse_outbox(value: str, path: str, lineno: int) -> Dict[str, int]:
    """outbox max_bytes=SIZE,max_entries=N (SIZE in bytes, or with K, M or G)."""
    bare, opts = split_commas(value)
    out: Dict[str, int] = {}
    for k, v in [("", b) for b in bare] + list(opts.items()):
        m = re.match(r"^(\d{1,12})([KMG]?)$", v.strip(), re.I)
        if k not in ("max_bytes", "max_entries") or not m or int(m.group(1)) < 1:
            raise ConfigError(path, lineno, "bad outbox item %r" % ("%s=%s" % (k, v) if k else v),
                              "outbox takes max_bytes=SIZE (e.g. 20M) and max_entries=N (e.g. 10000)")
        out[k] = int(m.group(1)) << (10 * " KMG".index(m.group(2).upper() or " "))
    return out


def parse_config(path: str, text: Optional[str] = None, _stack: Tuple[str, ...] = ()) -> Config:
    if text is None:
        text = read_config_text(path, _stack[-1] if _stack else "", 0)
    config = Config(path, [], dict(DEFAULT_BUDGET), (path,))
    current: Optional[Rule] = None
    for lineno, _last, line in read_logical_lines(text):
        m = KEYWORD_RE.match(line)
        if not m:
            raise ConfigError(path, lineno, "cannot read %r" % line[:60], "this is the pre-3.0 tab format; write "
                              "'watchfor /regex/' then one action per line" if line.startswith("/")
                              else "rules start with watchfor /regex/")
        key, value = m.group(1).lower(), m.group(2).strip()
        if "@@" in value:
            raise ConfigError(path, lineno, "unfilled template placeholder in %r" % value,
                              "replace the @@...@@ placeholders with real values")
        if key in ("perlcode", "perlocde"):
            raise ConfigError(path, lineno, "perlcode is Perl, which birdsentinel does not run",
                              "remove it and write its values into the patterns and actions")
        if key in ("watchfor", "waitfor", "ignore"):
            if not value:
                raise ConfigError(path, lineno, "%s needs a pattern" % key, "e.g. %s /regex/" % key)
            current = Rule("ignore" if key == "ignore" else "watchfor",
                           parse_pattern(value, path, lineno), path, lineno)
            config.rules.append(current)
        elif key == "include":
            inc = os.path.join(os.path.dirname(path), unquote_value(value))
            if os.path.abspath(inc) in [os.path.abspath(p) for p in _stack + (path,)]:
                raise ConfigError(path, lineno, "include loop through %s" % inc, "remove the circular include")
            sub = parse_config(inc, read_config_text(inc, path, lineno), _stack + (path,))
            config.rules += sub.rules
            config.files += sub.files
            config.budget.update({k: v for k, v in sub.budget.items() if v is not None or k == "usd_per_day"})
            current = None
        elif key == "budget":
            config.budget.update(parse_budget(value, path, lineno))
        elif key == "outbox":
            config.outbox.update(parse_outbox(value, path, lineno))
        elif key in ACTION_KINDS + ("throttle", "threshold"):
            if current is None:
                raise ConfigError(path, lineno, "%s outside a watchfor block" % key,
                                  "put it under a 'watchfor /regex/' line")
            if current.kind == "ignore":
                raise ConfigError(path, lineno, "%s under an ignore rule" % key,
                                  "ignore drops the line; put actions under watchfor")
            if key == "threshold":
                if re.match(r"^(on|off|\d+)$", value.strip()):
                    raise ConfigError(path, lineno, "per-action 'threshold %s' is not supported" % value,
                                      "use a block threshold: threshold track_by=...,type=limit,count=N,seconds=S")
                current.threshold = parse_threshold(value, path, lineno)
            elif key == "throttle":
                current.throttle = parse_throttle(value, path, lineno)
            elif key == "continue":
                parse_action(key, value, path, lineno)      # refuses a value
                current.cont = True
            else:
                current.actions.append(dataclasses.replace(parse_action(key, value, path, lineno), path=path))
        else:
            raise ConfigError(path, lineno, "unknown keyword or action %r" % key,
                              "actions are %s; custom Perl actions are not supported" % ", ".join(ACTION_KINDS))
    if not _stack:
        for i, r in enumerate(config.rules):
            r.index = i
            check_variables(r)
    return config


def check_variables(rule: Rule) -> None:
    """$N and ${name} must name a group of the rule's pattern: swatch silently puts an empty string there."""
    positives = [t.regex for t in rule.pattern.terms if not t.negated]
    groups = max((rx.groups for rx in positives), default=0)
    names = set().union(*(rx.groupindex for rx in positives)) if positives else set()
    templates = [(a.lineno, t) for a in rule.actions for t in (*a.argv, a.message, a.subject) if t is not None]
    templates += [(rule.lineno, t) for t in (rule.threshold and rule.threshold.track_by,
                                             rule.throttle and rule.throttle.key) if t is not None]
    for lineno, t in templates:
        for name in t.variables():
            if name.isdigit() and name != "0" and int(name) > groups:
                raise ConfigError(rule.path, lineno, "$%s, but the pattern on line %d has %d group(s)"
                                  % (name, rule.lineno, groups), "add (...) around what $%s should hold" % name)
            if not (name.isdigit() or name in ("_", "*")) and name not in names and not FIELD_NAME_RE.match(name):
                raise ConfigError(rule.path, lineno, "${%s} is not a named group of the pattern on line %d"
                                  % (name, rule.lineno), "name it in the pattern: (?<%s>...)" % name)


def read_config_text(path: str, parent: str, parent_line: int) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(4 * 1024 * 1024 + 1)
    except ValueError:                              # a NUL byte in the name
        raise ConfigError(parent or path, parent_line, "bad file name %r" % path, "remove the NUL byte") from None
    except OSError as exc:
        if parent:
            raise ConfigError(parent, parent_line, "cannot read include %s: %s" % (path, exc.strerror),
                              "include paths are relative to the including file") from None
        raise ConfigError(path, 0, "cannot read config: %s" % exc.strerror, "check the path given with -c") from None
    if len(data) > 4 * 1024 * 1024:
        raise ConfigError(path, 0, "config larger than 4 MiB", "is this the right file?")
    if b"\0" in data:
        raise ConfigError(path, 1 + data[:data.index(b"\0")].count(b"\n"), "NUL byte in config",
                          "a config is text; is this the right file?")
    return data.decode("utf-8", "replace")


# -- converting a swatch config ---------------------------------------------
# --convert-config keeps each rule's meaning under swatch, line by line, comments and order kept.  A command that needs
# a shell becomes sh -c 'SCRIPT' sh $_ $N..: the line and its groups reach the script as positional parameters, each
# one argument (swatch pasted them into the shell code: a log line could run commands, and was split and globbed).

PERLCODE_RE = re.compile(r"^(?:\d\s+)?(?:(?:my|our)\s+)?\$(\w+)\s*=\s*"        # my $v = 'literal';
                         r"(?:'((?:[^'\\]|\\[^'\\])*)'|\"([^\"\\$@]*)\")\s*;?\s*$")
PERL_STRING_RE = re.compile(r"\\(.)|\$(?:\{(\w+)\}|(\d+|[_*]|[A-Za-z_]\w*))|[^\\$]+|\$", re.S)
RULE_KEYS = ("watchfor", "waitfor", "ignore")
# programs that run what they are given: a shell or interpreter only with a script file first, the rest never
SCRIPT_RUNNERS = re.compile(r"(?:ba|da|a|k|mk|z|c|tc|fi)?sh|(?:perl|python|ruby|php|node|nodejs|lua|tclsh)[0-9.]*")
RUNNERS = re.compile(r"busybox|[gmn]?awk|sed|ed|ex|vim?|sqlite3|expect|env|sudo|doas|su|runuser|timeout|nice|nohup|"
                     r"setsid|stdbuf|ionice|time|flock|chroot|setpriv|unshare|nsenter|systemd-run|script|watch|xargs|"
                     r"find|ssh|scp|rsync|git|tar|eval|exec|command|builtin|source|\.|trap|declare|typeset|local|"
                     r"readonly|export|read|test|\[\[?|let|at|batch|crontab|parallel|strace|gdb|make|m4|dc|bc")


def convert_command(value: str, groups: int, perl: Dict[str, str], note: Callable[[str], None],
                    stdin: bool = False) -> Optional[str]:
    """An exec/pipe command as swatch 3.2.4 runs it (outer quotes stripped, white space squeezed, then a Perl string:
    escapes and variables, then /bin/sh if it has shell syntax) in birdsentinel's syntax; None if it cannot be."""
    m = re.match(r"^['\"]\s*(.*)\s*['\"]$", value)
    chars, occ = [], []                             # occ: the variables met, (template, as written)
    for tok in PERL_STRING_RE.finditer(" ".join((m.group(1) if m else value).split())):
        esc, name = tok.group(1), tok.group(2) or tok.group(3)
        if esc is not None or name is None or name in perl:
            chars.append({"n": "\n", "t": "\t"}.get(esc, esc) if esc is not None else perl.get(name, tok.group()))
        elif name.isdigit() and name != "0" and int(name) > groups:
            note("$%s, but the pattern has %d group(s): empty, as in swatch" % (name, groups))
        elif name.isdigit() and len(name) > 1:
            return note("$%s: birdsentinel has groups $1 to $9 only" % name)
        elif name.isdigit() or name in "_*":
            chars.append(chr(0xE000 + len(occ)))
            occ.append(("$_" if name in "_*0" else "$" + name, tok.group()))
        else:
            return note("Perl variable $%s, which no perlcode sets to a literal" % name)
    if "\n" in "".join(chars):
        return note("a \\n in the command: it cannot be written on one config line")
    try:                                            # out: (the shell's quoting there, character or variable)
        out = [(w, occ[ord(c) - 0xE000] if c >= "\ue000" else c) for w, c in shell_chars("".join(chars))]
    except ValueError:
        return note("a quote is left open")
    bare = {c for w, c in out if w == "" and isinstance(c, str)}
    shell, glob = bool(bare & set("|&;<>()$`*?[~")) or any(w == '"' and c in ("$", "`") for w, c in out), \
        bool(bare & set("*?["))
    risk = code_risk(out, stdin) if occ or stdin else ""
    if risk:
        return note(risk + ": rewrite it by hand")
    said = ((ctx, x) for ctx, x in out if isinstance(x, tuple) and ctx != '"')
    for where, x in dict.fromkeys(said):
        note("%s inside '...' moved out of the quotes: the line or group goes there, as in swatch" % x[1] if where
             else "%s is one argument (swatch split it into words)" % x[1])
    drop = {j for i, (ctx, x) in enumerate(out) if isinstance(x, tuple) and ctx == "'" for j in (i - 1, i + 1)
            if 0 <= j < len(out) and out[j] == (None, "'")}     # '$_' -> $_, not ''$_''

    def put(i: int, ctx: Optional[str], ref: str) -> str:      # a variable moved out of '...' if it was in one
        return ("" if i - 1 in drop else "'") + ref + ("" if i + 1 in drop else "'") if ctx == "'" else ref
    if not shell:                                   # one argv, which birdsentinel splits as a shell would
        return "".join(x if isinstance(x, str) else put(i, ctx, x[1]) for i, (ctx, x) in enumerate(out)
                       if i not in drop)
    pos = {t: "${%d}" % n for n, t in enumerate(dict.fromkeys(x[0] for _, x in out if isinstance(x, tuple)), 1)}
    script = "".join(x if isinstance(x, str) else put(i, ctx, pos[x[0]] if ctx == '"' else '"%s"' % pos[x[0]])
                     for i, (ctx, x) in enumerate(out) if i not in drop)
    note("shell syntax: sh -c runs it, given the line and groups as arguments, quoted: never split or globbed")
    script = ("" if glob else "set -f; ") + script      # the command's own * globs
    return " ".join(["sh -c '%s' sh" % script.replace("'", "'\\''")] + list(pos))


def code_risk(out: List[Tuple[Optional[str], Any]], stdin: bool = False) -> str:
    """Why a value from the log line (a variable, here a tuple; with stdin, the standard input too) could become code,
    an option or a file name, or pick what runs, in this command as shell_chars reads it; '' if it cannot.  A value
    may only be a whole argument of programs none of which runs what it is given (a review bypassed two deny-lists)."""
    words, cur, start = [], [], True                # (text with \0 for a variable, first word of a command)
    for ctx, x in out + [("", " ")]:
        if ctx == "" and isinstance(x, str) and (x.isspace() or x in "|;&()`"):
            assign = bool(start and cur and re.match(r"[A-Za-z_]\w*=", "".join(cur)))     # X=1 cmd: cmd is first
            words += [("".join(cur), start)] if cur else []
            start, cur = x in "|;&()`" or start and not cur or assign, []
        elif ctx is not None or isinstance(x, tuple):
            cur.append("\0" if isinstance(x, tuple) else x)
    text = "".join("\0" if isinstance(x, tuple) else x for _, x in out)
    if re.search(r"\$\(|`|[<>]&\s*\0|\[\[|\blet\b", text):
        return "the line would be inside a command substitution, arithmetic or a redirect to a descriptor"
    if re.search(r"\$(?:\{?[0-9@*#])", text.replace("\0", "")):
        return "the shell's own $1 or $@ would be the line and its groups here"
    for i, (w, first) in enumerate(words):
        name, after = os.path.basename(w), words[i + 1] if i + 1 < len(words) else ("", True)
        if first and "\0" in w:
            return "the program would come from the log line"
        if "\0" in w and (w != "\0" or i and words[i - 1][0][-1:] in "<>"):
            return "the line would be part of a larger word (an option, a program's code) or a file name"
        if first and (RUNNERS.fullmatch(name) or SCRIPT_RUNNERS.fullmatch(name) and (
                after[1] or "\0" in after[0] or re.match(r"[-+]|/dev/|/proc/", after[0]))):
            return "%s runs what it is given, and the line would reach it" % name
    return ""


def convert_config(path: str, text: str) -> Tuple[str, List[str], bool]:
    """A swatch config's text -> (birdsentinel's, one note per change or part left out, whether all converted)."""
    raw, items, last = text.split("\n"), [], 0     # items: [first line number, its lines, key, value]
    for start, end, logical in read_logical_lines(text):
        items += [[n, [raw[n - 1]], "", ""] for n in range(last + 1, start)]   # comments and blank lines as they are
        if end > start:                             # swatch joins a continued line without a space
            logical = "".join(x.rstrip("\r").rstrip()[:-1] if x.rstrip().endswith("\\") else x.rstrip("\r")
                              for x in raw[start - 1:end]).strip()
        m = KEYWORD_RE.match(logical)
        items.append([start, raw[start - 1:end] if end == start else [logical], m.group(1).lower() if m else "",
                      m.group(2) if m else ""])
        last = end
    items += [[n, [raw[n - 1]], "", ""] for n in range(last + 1, len(raw) + 1)]
    perlcode = [(it, PERLCODE_RE.match(it[3])) for it in items if it[2] in ("perlcode", "perlocde")]
    perl = {p.group(1): p.group(3) if p.group(2) is None else p.group(2) for _, p in perlcode if p}
    uses = collections.Counter(v for it in items if it[2] not in ("perlcode", "perlocde")
                               for v in re.findall(r"[$@%]\{?(\w+)", it[3]))
    notes, groups = [], 9
    for it in items:
        def note(what: str, it: List[Any] = it) -> None:
            notes.append('"%s", line %d: %s' % (path, it[0], what))

        def no_group(s: str) -> str:
            for n in sorted(set(re.findall(r"(?<!\\)\$\{?([1-9])\}?", s))):
                if int(n) > groups:
                    note("$%s, but the pattern has %d group(s): empty, as in swatch" % (n, groups))
                    s = re.sub(r"(?<!\\)\$\{?%s\}?" % n, "", s)
            return s
        key, value = it[2], it[3]
        new = re.sub(r"\$\{?(%s)\b\}?" % "|".join(map(re.escape, perl)), lambda v: perl[v.group(1)], value) \
            if perl and key not in ("exec", "pipe") else value
        if key in ("perlcode", "perlocde"):
            p = PERLCODE_RE.match(value)
            names = re.findall(r"(?:my|our)\s*\(?\s*[$@%](\w+)", value)
            if p or names and not any(uses[n] for n in names) and "sub " not in value:
                note("perlcode $%s: its value written where it is used" % p.group(1) if p and uses[p.group(1)]
                     else "perlcode whose variables are never used: removed")
                it[1] = []
            continue
        rest = split_options(new, ACTION_OPTION_KEYS)[0]
        if key in RULE_KEYS:
            groups = 9
            with contextlib.suppress(ConfigError):
                pattern = parse_pattern(new, path, it[0])
                groups = max((t.regex.groups for t in pattern.terms if not t.negated), default=0)
                if re.search(r"\b(?:and|or|not)\b", re.sub("|".join(re.escape(t.source) for t in pattern.terms),
                                                            " ", pattern.source)):
                    new = (" || " if pattern.any_of else " && ").join(
                        ("!" if t.negated else "") + (t.field + "=~" if t.field else "") + t.source
                        for t in pattern.terms) + new[len(pattern.source):]
                    note("Perl's and, or, not written as &&, ||, !")
        elif key in ("exec", "pipe"):
            cmd = convert_command(rest, groups, perl, note, key == "pipe") if rest else rest
            if cmd is None:
                it[1] = ["# CONVERT: " + x for x in it[1]]
                continue
            new = cmd + no_group(new[new.index(rest) + len(rest):])
            if "," in rest:
                note("the command keeps its commas (swatch ran only what follows the last one)")
            if re.search(r"(?i)bird_?sentinel\.pl|twitter|tweet", rest):
                it[1].insert(0, "# birdsentinel sends X direct messages itself: 'dm' may replace this exec")
        elif key == "include":
            note("%s is not converted: run --convert-config on it too" % value)
        elif key == "echo" and re.match(r"modes\s*=", new):
            new = re.sub(r"^modes\s*=\s*", "", new)
            note("echo modes=X written as echo X (swatch 3.2.4 dies on it at the first match)")
        elif key == "echo" and set(re.split(r"[\s,]+", rest.lower())) - {""} - set(ECHO_MODES):
            new = "normal,message=" + unquote_value(rest)
            note("echo TEXT written as echo,message=TEXT (swatch 3.2.4 dies on it at the first match)")
        elif key:
            new = no_group(new) + (",subject=Message from Swatchdog" if key == "mail" and "subject" not in
                                   split_commas(new)[1] else "")
            var = re.search(r"(?<!\\)\$\{?(?!_\b)([A-Za-z_]\w*)", new)
            if var:
                note("Perl variable $%s, which no perlcode sets to a literal: commented out" % var.group(1))
                it[1] = ["# CONVERT: " + x for x in it[1]]
                continue
        if new != value:
            code = next(x for x in it[1] if not x.startswith("#"))         # its indent and CRLF kept
            it[1] = [x for x in it[1] if x.startswith("#")] + ["%s%s %s%s" % (code[:len(code) - len(code.lstrip())],
                                                                              it[2], new, "\r"[:code.endswith("\r")])]
    for _ in range(len(items) + 1):                 # what still does not load is commented out, line by line
        out = [x for it in items for x in it[1]]
        where = [n for n, it in enumerate(items) for _ in it[1]]     # the item of each line of out
        try:                                        # an include is still swatch's: checked once converted
            parse_config(path, "\n".join("" if items[where[n]][2] == "include" else x for n, x in enumerate(out)))
            break
        except ConfigError as exc:
            if not 0 < exc.lineno <= len(where) or exc.path != path or items[where[exc.lineno - 1]][1][0].startswith(
                    "# CONVERT: "):
                return "\n".join(out), notes + [str(exc)], False
            k = where[exc.lineno - 1]
            notes.append('"%s", line %d: %s%s: commented out' % (path, items[k][0], exc.what,
                                                                 " \u2014 " + exc.hint if exc.hint else ""))
            for it in [items[k]] + list(itertools.takewhile(lambda it: it[2] not in RULE_KEYS + ("include",),
                                                            items[k + 1:]) if items[k][2] in RULE_KEYS else []):
                it[1] = ["# CONVERT: " + x if x and not x.startswith("#") else x for x in it[1]]
    return "\n".join(out), notes, not any(x.startswith("# CONVERT: ") for x in out) and all(
        it[2] != "include" for it in items)


# ==== Sources ================================================================
# Where lines come from; each source has poll() (a bounded read) and close().  Byte offsets; a file is (st_dev, st_ino)
# plus a hash of its first bytes.  Rotation is noticed three ways, as fail2ban does: the path names another inode
# (rename+create, delete+create), the file is shorter than our offset (truncate, copytruncate), or its first bytes
# changed while it kept its inode and grew past our offset before we looked (copytruncate race).

ROTATED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".Z", ".zip")


def fingerprint(fd: int, length: int) -> str:
    """'N:CRC' of the first `length` bytes: enough to tell two files apart (rotation), not meant to resist forgery."""
    data = os.pread(fd, length, 0)
    return "%d:%08x" % (len(data), zlib.crc32(data))


def fp_length(fp: str) -> int:
    head = fp.partition(":")[0]
    return int(head) if head.isdecimal() else 0         # a saved one may be anything


class LineSplitter:
    """Bytes in, complete lines out (as one decoded text block ending in a newline).  Holds a partial last line until
    its newline arrives; keeps only the first MAX_LINE bytes of a longer line."""

    def __init__(self, name: str, max_line: int = MAX_LINE) -> None:
        self.name, self.max_line = name, max_line
        self.reset()

    def feed(self, chunk: bytes) -> str:
        if self.discarded:                          # the rest of a line too long to keep
            nl = chunk.find(b"\n")
            if nl < 0:
                self.discarded += len(chunk)
                return ""
            LOG.warning("%s: a line of %d bytes was cut to its first %d bytes",
                        self.name, self.max_line + self.discarded + nl, self.max_line)
            chunk = self.pending + chunk[nl:]       # its first max_line bytes, ended by its newline
            self.reset()
        data = self.pending + chunk if self.pending else chunk
        last = data.rfind(b"\n")
        rest = data[last + 1:]
        self.pending = bytes(rest[:self.max_line])          # memory stays bounded
        self.discarded = max(len(rest) - self.max_line, 0)
        block = self._cut_long_lines(data[:last + 1])
        if b"\r" in block:                         # a search is cheaper than the copy replace() makes
            block = block.replace(b"\r\n", b"\n")
        return block.decode("utf-8", "replace")

    def _cut_long_lines(self, block: bytes) -> bytes:
        """Cut complete lines longer than max_line.  A line that long holds a whole aligned stretch of max_line/2 bytes
        without a newline, so a few short searches rule it out for ordinary blocks."""
        step = max(self.max_line // 2, 1)
        if len(block) <= self.max_line or all(
                block.find(b"\n", p, p + step) >= 0 for p in range(0, len(block) - step, step)):
            return block
        return re.sub(b"(?m)^([^\n]{%d})[^\n]+" % self.max_line, self._cut, block)

    def _cut(self, m: re.Match) -> bytes:
        LOG.warning("%s: a line of %d bytes was cut to its first %d bytes", self.name, len(m.group()), self.max_line)
        return m.group(1)

    def held(self) -> int:
        """Bytes read that belong to the unfinished last line."""
        return len(self.pending) + self.discarded

    def reset(self) -> None:
        self.pending, self.discarded = b"", 0


@dataclass
class Handle:
    """An open log file being read."""
    fd: int
    ident: Tuple[int, int]
    pos: int                                 # next byte to read
    offset: int                              # start of the first unfinished line
    fp: str
    splitter: LineSplitter
    last_growth: float = 0.0                 # when it grew; when it was rotated away (the grace counts from there)


class FileTailer:
    """Follows one path across rotations without losing lines."""

    def __init__(self, path: str, on_text: Callable[[str], None], saved: Optional[Dict[str, Any]] = None,
                 start_at_end: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.on_text, self.clock, self.saved, self.start_at_end = path, on_text, clock, saved, start_at_end
        self.cur: Optional[Handle] = None
        self.retired: List[Handle] = []
        self.started = self.missing_logged = False
        self.done = False                       # a followed file never ends
        self.more = False                       # the last poll stopped before the end
        self.error_logged: Optional[str] = None

    # -- opening ---------------------------------------------------------
    def _open(self) -> Optional[Handle]:
        """The file now at the path, to be read from its start; None (said once) while it is missing or unreadable."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) and not stat.S_ISFIFO(st.st_mode) and not stat.S_ISCHR(st.st_mode):
                os.close(fd)
                raise OSError(errno.EINVAL, "not a regular file")
        except FileNotFoundError:
            if not self.missing_logged:
                LOG.warning("%s does not exist (yet): waiting for it", self.path)
                self.missing_logged = True
            return None
        except OSError as exc:
            if exc.strerror != self.error_logged:
                LOG.error("cannot read %s: %s; the other files are still watched", self.path, exc.strerror)
                self.error_logged = exc.strerror
            return None
        if self.error_logged:
            LOG.warning("%s is readable again", self.path)
        self.missing_logged, self.error_logged = False, None
        return Handle(fd, (st.st_dev, st.st_ino), 0, 0, fingerprint(fd, FINGERPRINT_LEN), LineSplitter(self.path))

    def _start(self) -> None:
        """First look: resume from the saved offset, or begin at the end (a file that appears later is all new)."""
        self.started, saved, self.saved = True, self.saved, None
        h = self._open()
        if h is None:
            if saved and saved.get("ino") is not None:
                self._finish_rotated_sibling(saved)
            return
        size = os.fstat(h.fd).st_size
        pos = size if saved is None and self.start_at_end else 0
        if saved is not None and saved.get("ino") is None:      # it was gone when we stopped: all new
            LOG.info("%s appeared while we were stopped: reading it from the start", self.path)
        elif saved is not None:
            same_inode, fp_saved = (saved.get("dev"), saved.get("ino")) == h.ident, str(saved.get("fp", ""))
            if same_inode and (not fp_saved or fingerprint(h.fd, fp_length(fp_saved)) == fp_saved):
                pos = int(saved.get("offset", 0))
                if size < pos:
                    LOG.warning("%s shrank to %d bytes while we were stopped (offset was %d): "
                                "truncated or tampered with; reading from the start", self.path, size, pos)
                    pos = 0
            else:
                LOG.warning("%s was %s while we were stopped; finishing the old file, then reading the new one from "
                            "the start", self.path, "copied and truncated" if same_inode else "rotated")
                self._finish_rotated_sibling(saved)
        h.pos = h.offset = pos
        self.cur = h

    def _finish_rotated_sibling(self, saved: Dict[str, Any]) -> None:
        """logtail2's rule: after a rotation while stopped, finish the old file (path.1, path-DATE, ...) from the saved
        offset.  It is found by its inode; failing that (copytruncate made a copy), by its first bytes, the newest such
        copy, and only when those bytes were enough to tell files apart."""
        (directory, base), names = os.path.split(self.path), []       # (none if the directory cannot be listed)
        with contextlib.suppress(OSError):
            names = [n for n in os.listdir(directory or ".") if n.startswith(base) and n != base
                     and not n.endswith(ROTATED_SUFFIXES)]
        fp_saved, ident, cands = str(saved.get("fp", "")), (saved.get("dev"), saved.get("ino")), []
        for name in names:
            cand = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                st = os.stat(cand)
                same = (st.st_dev, st.st_ino) == ident
                if same or fp_length(fp_saved) >= MIN_FINGERPRINT and stat.S_ISREG(st.st_mode):
                    cands.append((same, st.st_mtime, cand))     # tried in turn: the inode's, then the newest first
        for by_inode, _mtime, chosen in sorted(cands, reverse=True):
            try:
                fd = os.open(chosen, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            if by_inode or fingerprint(fd, fp_length(fp_saved)) == fp_saved:
                break
            os.close(fd)
        else:
            return
        st = os.fstat(fd)
        offset = int(saved.get("offset", 0))
        if st.st_size < offset:
            offset = 0
        LOG.info("finishing %s from byte %d (the rotated %s)", chosen, offset, self.path)
        self._finish(Handle(fd, (st.st_dev, st.st_ino), offset, offset, fp_saved, LineSplitter(chosen)))

    # -- reading ---------------------------------------------------------
    def _drain(self, h: Handle, most: int = MAX_POLL_READ) -> int:
        """Read h's file past h.pos, at most `most` (then self.more): the loop saves, checks signals, goes on."""
        total = 0
        while total < most:
            try:
                chunk = os.pread(h.fd, READ_BLOCK, h.pos)
            except OSError as exc:
                LOG.error("cannot read %s: %s", self.path, exc.strerror)
                return total
            h.pos += len(chunk)
            total += len(chunk)
            text = h.splitter.feed(chunk)
            h.offset = h.pos - h.splitter.held()
            if text:
                self.on_text(text)
            if len(chunk) < READ_BLOCK:                 # the end for now (an empty one changed nothing)
                break
        else:
            self.more = True
        if total:
            h.last_growth = self.clock()
            if fp_length(h.fp) < FINGERPRINT_LEN:
                h.fp = fingerprint(h.fd, FINGERPRINT_LEN)
        return total

    def _finish(self, h: Handle) -> None:
        """A file not looked at again: read all of it, emit its last line (which gets no newline), close it."""
        self._drain(h, 1 << 62)
        if h.splitter.pending:
            self.on_text(h.splitter.feed(b"\n"))
        os.close(h.fd)

    def poll(self) -> int:
        """Read what is new, a bounded amount; handle rotation.  Returns bytes read."""
        total, self.more, now, h = 0, False, self.clock(), self.cur
        for old in list(self.retired):          # writers may still append after a rename
            total += self._drain(old)
            if now - old.last_growth > RETIRED_GRACE:     # idle that long: _finish has nothing more to read
                self._finish(old)
                self.retired.remove(old)
        if h is None and not self.started:
            self._start()
        elif h is None:
            self.cur = self._open()
            if self.cur is not None:
                LOG.info("%s appeared: reading it from the start", self.path)
        else:
            size = os.fstat(h.fd).st_size
            if size < h.pos or fp_length(h.fp) and fingerprint(h.fd, fp_length(h.fp)) != h.fp:
                LOG.warning("%s %s: reading from the start", self.path, "shrank from %d to %d bytes (copytruncate, "
                            "or tampering)" % (h.pos, size) if size < h.pos else "was truncated and rewritten (its "
                            "first bytes changed)")
                h.pos = h.offset = 0
                h.splitter.reset()
                h.fp = fingerprint(h.fd, FINGERPRINT_LEN)
            total += self._drain(h)              # the inode we hold, to its end
            try:
                st: Optional[os.stat_result] = os.stat(self.path)
            except FileNotFoundError:
                st = None
            except OSError as exc:
                LOG.error("cannot stat %s: %s", self.path, exc.strerror)
                return total
            if st is not None and (st.st_dev, st.st_ino) == h.ident:
                return total
            # rename+create (logrotate create) or delete+create: read all of the old inode (the saved offset will be
            # the new file's) and keep reading it for a while (the grace starts now); follow the new file from its start
            self._drain(h, 1 << 62)
            h.last_growth = self.clock()
            self.retired.append(h)
            while len(self.retired) > 4:
                self._finish(self.retired.pop(0))   # a bounded poll may have left some of it
            LOG.info("%s was renamed or deleted: waiting for a new file" if st is None else
                     "%s was rotated: following the new file from its start", self.path)
            self.cur = None if st is None else self._open()
        return total + (self._drain(self.cur) if self.cur is not None else 0)

    def snapshot(self) -> Dict[str, Any]:
        """What the state file keeps for this path.  Without a current file (rotated away, or not there yet) the entry
        says so: whatever file appears there later is read from its start."""
        h = self.cur
        if h is not None:
            return {"dev": h.ident[0], "ino": h.ident[1], "fp": h.fp, "offset": h.offset}
        if not self.started and self.saved is not None:
            return self.saved                     # not looked at yet
        return {"dev": None, "ino": None, "fp": "", "offset": 0}

    def close(self) -> None:
        for h in self.retired + ([self.cur] if self.cur else []):
            with contextlib.suppress(OSError):
                os.close(h.fd)
        self.retired, self.cur = [], None


class StreamSource:
    """--examine FILE or --read-pipe CMD, read once to its end: a file MAX_POLL_READ a poll, a pipe what it has."""

    def __init__(self, name: str, fd: int, on_text: Callable[[str], None],
                 proc: Optional[subprocess.Popen] = None, max_line: int = MAX_LINE) -> None:
        self.path, self.fd, self.on_text, self.proc = name, fd, on_text, proc
        self.splitter = LineSplitter(name, max_line)
        self.done = self.more = False
        self.live = proc is not None                # read what is there, select() for the rest

    def poll(self) -> int:
        got, self.more = 0, False
        while not self.done and (not self.live or select.select([self.fd], [], [], 0)[0]):
            chunk = os.read(self.fd, READ_BLOCK)
            got += len(chunk)
            self.done = not chunk
            text = self.splitter.feed(chunk or b"\n" if self.splitter.pending else chunk)  # a last line without newline
            if text:
                self.on_text(text)
            if got >= MAX_POLL_READ:
                self.more = not self.done
                break
        return got

    def close(self) -> None:
        if self.proc is None:
            os.close(self.fd)
            return
        self.proc.stdout.close()                    # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def field_text(value: Any) -> str:
    """A journal field as journalctl's JSON gives it: a string, bytes as a
    list of numbers (decoded like file bytes), or a list of values."""
    if isinstance(value, list):
        if all(isinstance(b, int) and 0 <= b < 256 for b in value):
            return bytes(value).decode("utf-8", "replace")
        return field_text(value[0])
    return "" if value is None else str(value)


def entry_line(fields: Dict[str, str]) -> str:
    """A journal entry as rules written for /var/log/messages expect it: 'Mmm dd HH:MM:SS HOST IDENT[PID]: MESSAGE', on
    one line (a newline of MESSAGE becomes a visible mark: it never starts a line of its own)."""
    t = time.localtime(int(fields.get("__REALTIME_TIMESTAMP") or 0) / 1e6)
    pid = fields.get("SYSLOG_PID") or fields.get("_PID")
    message = re.sub(r"\r?\n", " \u23ce ", fields.get("MESSAGE", "").rstrip("\r\n"))
    return "%s %2d %s %s %s%s: %s" % (time.strftime("%b", t), t.tm_mday, time.strftime("%H:%M:%S", t),
                                      fields.get("_HOSTNAME") or socket.gethostname().split(".")[0],
                                      fields.get("SYSLOG_IDENTIFIER") or fields.get("_COMM") or "-",
                                      "[%s]" % pid if pid else "", message[:MAX_LINE])


def journal_gap(saved: str, first: str) -> str:
    """What was lost between the saved cursor and the first entry read
    after a restart, when the saved entry is gone (vacuumed): '' if none."""
    a, b = (dict(kv.split("=", 1) for kv in c.split(";") if "=" in kv) for c in (saved, first))
    if a.get("s") != b.get("s"):
        return ("birdsentinel: the journal was replaced or vacuumed while birdsentinel was stopped (its "
                "sequence changed): a gap of unknown size before the entries read now")
    try:
        lost = int(b.get("i", "0"), 16) - int(a.get("i", "0"), 16) - 1
    except ValueError:
        return ""
    return "birdsentinel: %d journal entries were vacuumed while birdsentinel was stopped" % lost if lost > 0 else ""


def default_files(opts: Any) -> List[str]:
    """The files to follow: -t's, else /var/log/messages or /var/log/syslog."""
    return opts.tail_file or [p for p in ("/var/log/messages", "/var/log/syslog") if os.path.exists(p)][:1]


def journal_wanted(opts: Any) -> bool:
    """--journal, or no source given and neither default file exists (Debian 12 and later)."""
    return bool(opts.journal or not (opts.examine or opts.read_pipe or opts.omprog or default_files(opts)))


def journal_problem(directory: Optional[str]) -> str:
    """Why this user cannot read the journal (DIR, or the system's), or ''."""
    import grp
    user = current_user()
    if directory:
        ok = os.access(directory, os.R_OK | os.X_OK) and os.path.isdir(directory)
        return "" if ok else ("cannot read journal directory %s as %s: give the user read access (its group, e.g. "
                              "systemd-journal-remote)" % (directory, user))
    gids = set(os.getgroups()) | {os.getegid()}
    names = {g.gr_name for g in grp.getgrall() if g.gr_gid in gids}
    ok = os.geteuid() == 0 or bool(names & {"systemd-journal", "adm", "wheel"})
    return "" if ok else ("user %s may read only its own entries of the system journal: add it to the group "
                          "systemd-journal (usermod -a -G systemd-journal %s), then start birdsentinel again"
                          % (user, user))


class JournalSource(StreamSource):
    """The systemd journal, through journalctl's JSON (run as argv): one entry is one line of text plus its fields.  Its
    position is the cursor of the last entry read, committed like a file offset; a journalctl that exits is started
    again from it, with back-off. --journal-match is applied here, not by journalctl: systemd 252 can skip the first
    match after a cursor (systemd#30336)."""

    def __init__(self, directory: Optional[str], matches: Sequence[str],
                 on_entry: Callable[[str, Dict[str, str], Optional[str]], None],
                 on_gap: Callable[[str], None], positions: Dict[str, Any], follow: bool = True) -> None:
        self.key = "dir:" + directory if directory else "system"       # its name in the state file
        self.directory, self.on_entry, self.on_gap, self.follow = directory, on_entry, on_gap, follow
        self.matches: Dict[str, set] = collections.defaultdict(set)
        for name, _, value in (m.partition("=") for m in matches):
            self.matches[name].add(value)
        saved = positions.get(self.key) if isinstance(positions.get(self.key), dict) else {}  # cursor, start time
        self.cursor: Optional[str] = saved.get("cursor") if isinstance(saved.get("cursor"), str) else None
        self.since = saved.get("since") if self.cursor is None else None
        self.first = self.cursor                    # a restart compares it with the first entry read
        self.restart_at, self.failures, self.why = 0.0, 0, ""
        super().__init__("the journal" + (" in " + directory if directory else ""), -1, self.take, None, MAX_POLL_READ)
        self.start()

    def argv(self) -> List[str]:
        argv = ["journalctl", "-o", "json", "--all", "--no-pager", "-q"] + (["--follow"] if self.follow else [])
        argv += ["--directory=" + self.directory] if self.directory else []
        if self.cursor:
            return argv + ["--cursor=" + self.cursor]   # from the saved entry: it tells whether it is gone
        if self.since is not None:
            return argv + ["--since=@%.6f" % float(self.since)]
        self.since = time.time()                    # a restart before the first entry starts here
        return argv + ["--lines=0"]

    def start(self) -> None:
        self.errors = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=self.errors,
                                         stdin=subprocess.DEVNULL, env=child_env(os.environ))
        except OSError as exc:
            self.errors.close()
            if self.fd >= 0:                        # a restart (no fork now: EAGAIN, ENOMEM) never ends the watch
                LOG.error("cannot start journalctl again: %s; trying again in 60 s", exc.strerror)
                self.restart_at = time.monotonic() + 60.0
                return
            raise NoInputError("cannot run journalctl: %s" % exc.strerror) from None
        self.fd, self.live, self.done = self.proc.stdout.fileno(), self.follow, False     # type: ignore[union-attr]
        self.splitter.reset()

    def take(self, text: str) -> None:
        for line in text.split("\n")[:-1]:
            try:
                entry = json.loads(line)
                cursor = entry["__CURSOR"]
            except (ValueError, KeyError, TypeError):
                LOG.error("%s: skipped an entry of %d bytes or more, too big to read whole (a binary field such as a "
                          "core dump)", self.path, len(line))
                continue
            if self.first is not None:              # the first entry after a restart: is the saved one gone?
                gap, self.first = journal_gap(self.first, cursor), None
                if gap:
                    LOG.warning("%s", gap)
                    self.on_gap(gap)
            if cursor == self.cursor:
                continue                            # --cursor starts with the entry already read
            self.cursor, self.failures = cursor, 0
            fields = {k: field_text(v) for k, v in entry.items() if k != "__CURSOR"}
            if all(fields.get(name) in values for name, values in self.matches.items()) and (
                    self.directory or fields.get("_PID") != str(os.getpid())):     # our stdout under systemd: no loop
                self.on_entry(entry_line(fields), fields, fields.get("_HOSTNAME"))

    def poll(self) -> int:
        if self.proc is None:
            if time.monotonic() >= self.restart_at:
                self.start()
            return 0
        got = super().poll()
        if self.done:
            StreamSource.close(self)                # its stdout, then its exit status
            rc, self.proc, self.live = self.proc.returncode, None, False
            self.errors.seek(0)
            said = sanitize(self.errors.read()[-300:].decode("utf-8", "replace")).strip()
            self.errors.close()
            why = "status %d%s" % (rc, ": " + said if said else "")
            if not self.follow and rc == 0:
                return got                          # --once: read to the end
            if not self.follow:                     # --once: a cron job must see that nothing was read
                raise NoInputError("journalctl exited (%s)" % why)
            delay = min(2.0 ** self.failures, 60.0)
            self.done, self.restart_at, self.failures = False, time.monotonic() + delay, self.failures + 1
            if why != self.why:
                LOG.error("journalctl exited (%s): starting it again in %.0f s from the last entry read", why, delay)
                self.why = why
        return got

    def snapshot(self) -> Dict[str, Any]:
        return {"cursor": self.cursor} if self.cursor else {"since": self.since}

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            super().close()
            self.errors.close()


class OmprogSource(StreamSource):
    """--omprog: rsyslog's omprog writes one message a line on our stdin and, with confirmMessages="on", waits for a
    line on our stdout: "OK" once the message is handled and durable (after the commit), anything else to keep it and
    send it again later (the outbox is full, or the state cannot be written).  EOF: rsyslog stopped."""

    def __init__(self, on_entry: Callable[[str, Optional[Dict[str, str]], Optional[str]], None],
                 outbox: Optional["Outbox"], resent: Sequence[str] = ()) -> None:
        super().__init__("standard input (omprog)", 0, self.take)
        self.live, self.on_entry, self.outbox = True, on_entry, outbox
        self.answers: List[bool] = []               # per message read since the last commit: accepted
        self.taken: List[str] = []                  # the accepted ones' fingerprints: the commit saves them
        self.resent = list(resent)                  # the last commit's, maybe never answered: rsyslog sends them again
        os.write(1, b"OK\n")                        # ready: state, lock and sender are set up

    def take(self, text: str) -> None:
        ob = self.outbox                            # a message is refused, not counted, when it may not fit
        for line in text.split("\n")[:-1]:
            fp = "%08x" % zlib.crc32(line.encode("utf-8", "surrogateescape"))
            again, self.resent = (True, self.resent[1:]) if self.resent[:1] == [fp] else (False, [])
            ok = ob is None or not ob.full and len(ob) < ob.max_entries and ob.text_bytes + MAX_LINE <= ob.max_bytes
            if ok and not again:                    # again: a kill came between its commit and our OK (and could
                m = SYSLOG_TAG_RE.match(line)       # also come after X took a DM): it is taken once, not twice
                self.on_entry(line, None, m.group(1) if m else None)
            self.answers.append(again or ok and not (ob is not None and ob.full))      # an alert not kept: again
            self.taken += [fp] if self.answers[-1] else []

    def answer(self, committed: bool) -> None:
        """After the commit: one answer per message, in order."""
        out = b"".join(b"OK\n" if ok and committed else b"birdsentinel: outbox full: send it again later\n"
                       if committed else b"birdsentinel: cannot save state or outbox: send it again later\n"
                       for ok in self.answers)
        self.answers, self.taken = [], []
        with contextlib.suppress(OSError):
            os.write(1, out)


class Inotify:
    """inotify(7) through libc: a new line wakes us at once; an idle watcher costs no CPU.  OSError if unavailable."""
    FILE_MASK = 0x2 | 0x4 | 0x8 | 0x400 | 0x800     # IN_MODIFY IN_ATTRIB IN_CLOSE_WRITE IN_DELETE_SELF IN_MOVE_SELF
    DIR_MASK = 0x100 | 0x80 | 0x40 | 0x200          # IN_CREATE IN_MOVED_TO IN_MOVED_FROM IN_DELETE

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            raise OSError(errno.ENOSYS, "no inotify in this libc")
        self.libc, self.fd = libc, libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.watched: Dict[Tuple[str, int], Any] = {}

    def watch(self, path: str, mask: int, ident: Any = None) -> bool:
        """True for a new watch: what was written before it began has no event, so the caller reads once more."""
        if self.watched.get((path, mask)) == (ident,) or self.libc.inotify_add_watch(     # masks add (IN_MASK_ADD):
                self.fd, os.fsencode(path), mask | 0x20000000) < 0:     # a path tailed and a directory took turns
            return False                                                # and spun the loop (a review)
        self.watched[(path, mask)] = (ident,)
        return True


# ==== Matching ===============================================================
# Candidate lines, swatch's thresholds and throttles, and the Sentinel.
# -- finding candidate lines fast -------------------------------------------
# Most lines match no rule.  Each rule has sets of literals, every line it matches holding a member of each (from the
# regex's parse tree, groups included; an alternation gives a set), and takes the set rarest in a sample of the log.  A
# block is encoded to UTF-8 once and searched once per literal with libc's strstr (SIMD in glibc), from its rarest pair
# of bytes on; literals holding a byte or pair the sample lacks share a pass for it.  A line found goes only to the
# rules whose literal it holds and to those none stands for (ignore rules; a watchfor without one: all lines), in order.

def literal_sets(src: str, ci: bool = False) -> List[Tuple[Tuple[str, bool], ...]]:
    """Sets of (literal, ci), every match of the regex `src` holding a member of each: each run of plain characters,
    those of each group and repeat (at least once), one per alternation; lowered if ci, then ASCII only ([]: unread)."""
    p = getattr(re, "_parser", None) or re.sre_parse    # type: ignore[attr-defined]   # Python 3.9, 3.10: sre_parse

    def walk(seq: Any) -> List[Tuple[Tuple[str, bool], ...]]:
        sets, run = [], ""                          # type: List[Tuple[Tuple[str, bool], ...]], str
        for op, av in list(seq) + [(None, None)]:   # the last one ends the last run
            if op is p.LITERAL:
                run += chr(av)
                continue
            if run and (run.isascii() or not ci):
                sets.append(((run.lower() if ci else run, ci),))
            run = ""
            if op is p.BRANCH:
                alts = [max(walk(b), key=_shortest, default=()) for b in av[1]]
                sets += [tuple(dict.fromkeys(x for a in alts for x in a))] if all(alts) else []
            elif op is p.SUBPATTERN and not av[1] & re.IGNORECASE:       # (?i:...) is not case-sensitive
                sets += walk(av[-1])
            elif op in (p.MAX_REPEAT, p.MIN_REPEAT) and av[0] >= 1:       # classes, anchors, lookarounds and
                sets += walk(av[2])                                       # optional parts have none
        return sets
    try:
        return walk(p.parse(src))
    except Exception:                               # e.g. a parser of another version
        return []


def _shortest(s: Tuple[Tuple[Any, bool], ...]) -> Tuple[int, int]:
    return min(len(x) for x, _ in s), -len(s)


def rule_sets(r: Rule) -> List[Tuple[Tuple[str, bool], ...]]:
    """Sets of (literal, case-insensitive) of which every line the rule matches holds a member each, a journal entry's
    too: && takes each positive term's sets, || one (a member of each term's best); [] when there is none."""
    terms = [t for t in r.pattern.terms if not t.negated]
    sets = [[] if t.field or t.regex.flags & re.VERBOSE else literal_sets(t.regex.pattern, bool(t.regex.flags & re.I))
            for t in terms]                         # a field is not the line
    if not r.pattern.any_of:
        return [s for ss in sets for s in ss]
    sure = len(terms) == len(r.pattern.terms) and all(sets)    # no negated term, none without a set
    return [tuple(dict.fromkeys(x for ss in sets for x in max(ss, key=_shortest)))] if sure else []


@dataclass(frozen=True)
class MatchPlan:
    """How to find the candidate lines of a block, and the rules each goes to (see above)."""
    steps: Tuple[Tuple[Rule, Optional[str], Optional[Tuple[Tuple[str, ...], Tuple[str, ...]]]], ...]   # per rule:
    # (rule, its one case-sensitive literal, or its literals (case-sensitive, lowered)): match_line's checks
    sets: Tuple[List[Tuple[Tuple[str, bool], ...]], ...]       # per rule: rule_sets
    sampled: int                                # bytes of the sample the passes were chosen on
    passes: Tuple[Tuple[bytes, bool, bool, Tuple[Tuple[Optional[bytes], int], ...]], ...]   # (needle, in the lowered
    traps: Tuple[Any, ...]                      # block, bytes.find, ((literal the line must hold or None, rules), ..))
    always: int                                 # rules tried on every candidate line, with their check
    every: bool                                 # every line is a candidate
    strstr: Any                                 # libc's (standard C: always there; short blocks use bytes.find)
    dispatch: Tuple[Any, ...]                   # per rule: its step for a line its literal found (no check left)
    memo: Dict[int, Tuple[Any, ...]] = field(default_factory=dict, compare=False)     # rules mask -> their steps


def build_plan(rules: Sequence[Rule], text: str = "", old: Optional[MatchPlan] = None) -> MatchPlan:
    """The plan whose passes cost least on `text`, a sample of the log (a pass costs about what 3 lines it finds do);
    literals shorter than 3 need a full sample.  `old`: a plan of the same rules, whose sets it takes."""
    strstr = ctypes.CDLL(None).strstr               # standard C; glibc's is SIMD: 3 to 5 times as fast as bytes.find
    strstr.restype, strstr.argtypes = ctypes.c_void_p, (ctypes.c_void_p, ctypes.c_char_p)
    sample = text[:MATCH_SAMPLE].encode("utf-8", "surrogatepass")
    hays, full, lines, counts = (sample, sample.lower()), len(sample) >= MATCH_SAMPLE, sample.count(b"\n"), {}
    finds = [_finder(strstr, hay) for hay in hays]

    def count(x: bytes, ci: bool) -> int:           # to a tenth of the lines: strstr beats bytes.count but on a byte
        if (x, ci) not in counts:
            n, pos = (hays[ci].count(x), -1) if len(x) == 1 else (0, finds[ci](x, 0))
            while 0 <= pos and n <= lines // 10:
                n, pos = n + 1, finds[ci](x, pos + 1)
            counts[x, ci] = n
        return counts[x, ci]
    steps, chosen, always, folded, every = [], {}, 0, 0, False   # type: Any
    all_sets = old.sets if old else tuple(rule_sets(r) for r in rules)     # parsing is the slow part
    for i, (r, sets) in enumerate(zip(rules, all_sets)):
        best = max((s for s in sets if _shortest(s)[0] >= 3), key=_shortest, default=())
        check = (tuple(x for x, ci in best if not ci), tuple(x for x, ci in best if ci)) if best else None
        steps.append((r, check[0][0] if check and len(best) == 1 and check[0] else None, check))
        costs = [(sum(3 + count(*x) for x in s), -_shortest(s)[0], s) for s in (tuple(
            (x.encode("utf-8", "surrogatepass"), ci) for x, ci in s) for s in sets) if full or _shortest(s)[0] >= 3]
        if r.kind == "watchfor" and costs:          # its literals: the set that costs least
            for lit in min(costs)[2]:
                chosen[lit], folded = chosen.get(lit, 0) | 1 << i, folded | lit[1] << i
        else:
            always, every = always | 1 << i, every or r.kind == "watchfor"
    grams = {x: {x[0][j:j + n] for n in (1, 2) for j in range(len(x[0]) - n + 1)} for x in chosen if full}
    cover = collections.Counter((u, x[1]) for x, us in grams.items() for u in us)     # literals holding each
    passes: Dict[Tuple[bytes, bool], List[Tuple[Optional[bytes], int]]] = {}
    for (lit, ci), bits in chosen.items():          # a byte or pair the sample lacks: one pass for the literals with
        u = min((u for u in grams.get((lit, ci), ()) if len(u) == 1 or cover[u, ci] > 1),  # it; else strstr, fastest
                key=lambda u: (-cover[u, ci], u) if not count(u, ci) else (1, u), default=lit)  # from a rare pair on
        if full and (u == lit or count(u, ci)):
            j = min(range(len(lit) - 1 or 1), key=lambda j: (count(lit[j:j + 1], ci) * count(lit[j + 1:j + 2], ci), j))
            u = lit[j:] if count(lit[j:], ci) <= min(count(lit, ci) + 1, lines // 20) else lit
        passes.setdefault((u, ci), []).append((None if u == lit else lit, bits))
    return MatchPlan(   # bytes.find: less to call for a byte or many lines, and not stopped by a NUL
        tuple(steps), all_sets, len(sample), tuple((u, ci, count(u, ci) * 20 > lines or len(u) == 1 or b"\0" in u,
                                                    tuple(e)) for (u, ci), e in passes.items()),
        tuple((c.encode(), False, True, ((None, folded),)) for c in "\u0130\u0131\u017f\u212a" if folded),  # traps:
        always, every, strstr,                      # re.IGNORECASE takes these for an ASCII letter, bytes.lower() not
        tuple(s if always >> i & 1 else (s[0], None, None) for i, s in enumerate(steps)))


def _finder(strstr: Any, hay: bytes) -> Callable[[bytes, int], int]:
    """hay.find(needle, pos), through strstr: a bytes object ends in a NUL byte, and one inside would stop it."""
    if strstr is None or b"\0" in hay:
        return hay.find
    base = ctypes.cast(hay, ctypes.c_void_p).value or 0             # valid while hay lives: the lambda holds it
    return lambda needle, pos, _hay=hay: -1 if (at := strstr(base + pos, needle)) is None else at - base


def candidate_lines(plan: MatchPlan, text: str) -> Iterator[Tuple[str, Tuple[Any, ...]]]:
    """The whole lines of `text` that some watchfor may match, in order, each with the steps of the rules to try."""
    mid = text.find("\n", len(text) // 2) + 1       # many short lines: in halves, so that `found` stays small
    if len(text) > 1 << 16 and 0 < mid < len(text) and text.count("\n", 0, 4096) > 256:
        yield from itertools.chain(candidate_lines(plan, text[:mid]), candidate_lines(plan, text[mid:]))
        return
    data = text.encode("utf-8", "surrogatepass")   # a line's bytes hold a literal's iff the line holds the literal
    hays, whole = (data, data.lower() if plan.traps else data), data.rfind(b"\n") + 1     # whole lines end there
    finds = [_finder(plan.strstr if whole > 4096 else None, hay) for hay in hays]     # a call costs more in a short one
    found: Dict[int, int] = {}                      # line start -> the rules whose literal it holds
    for needle, ci, by_find, entries in plan.passes + (() if text.isascii() else plan.traps):
        hay, find = hays[ci], hays[ci].find if by_find else finds[ci]
        pos = find(needle, 0)
        while 0 <= pos < whole:
            start, end = hay.rfind(b"\n", 0, pos) + 1, hay.find(b"\n", pos)
            for lit, bits in entries:
                if lit is None or hay.find(lit, start, end) >= 0:
                    found[start] = found[start] | bits if start in found else bits     # shared, not a copy
            pos = find(needle, end + 1)
    starts = itertools.chain((0,) if whole else (), (m.end() for m in re.compile(b"\n").finditer(data, 0, whole - 1)))
    for start in starts if plan.every else sorted(found):
        end, mask = data.find(b"\n", start), found.get(start, 0) | plan.always
        steps = plan.memo.get(mask) or (plan.memo if len(plan.memo) < 1024 else {}).setdefault(   # bounded: 8 bytes
            mask, tuple(d for i, d in enumerate(plan.dispatch) if mask >> i & 1))                  # a rule an entry
        yield text[start:end] if text.isascii() else data[start:end].decode("utf-8", "surrogatepass"), steps

# -- thresholds ------------------------------------------------------------
# swatch 3.2.4's exact semantics, as pure functions of (bucket, now).  A bucket is [first, events] in integer seconds of
# processing time.  A clock that went backwards (now < first) ends the window instead of freezing it for the jump.


def threshold_fires(bucket: Optional[List[int]], now: int, th: Threshold) -> Tuple[bool, List[int]]:
    """Return (act?, new bucket).  With count=2 seconds=5 and one event a
    second: limit acts on 0,1,5,6,10,11; threshold on 1,3,6,8,11; both on 1,6,11."""
    first, events = (now, 1) if bucket is None or threshold_expired(bucket, now, th) else (bucket[0], bucket[1] + 1)
    if th.type == "limit":
        return events <= th.count, [first, events]
    if th.type == "threshold":
        return (True, [first, 0]) if events >= th.count else (False, [first, events])
    return events == th.count, [first, events]          # both


def throttle_fires(rec: Optional[List[float]], now: float, th: Throttle) -> Tuple[bool, str, List[float]]:
    """swatch's throttle: the first event acts; later ones are counted and suppressed until one arrives after
    LAST + delay, which acts with ' (seen N times)'.  With threshold=N: act on every N-th event (at most once per
    delay) with ' (threshold N exceeded)'.  rec is [last, count]."""
    if rec is None and not th.threshold:
        return True, "", [now, 1]
    last, count = rec if rec is not None else [-1e18, 0]
    count += 1
    due = now > last + th.delay or now < last
    if due and th.threshold and count >= th.threshold:
        return True, " (threshold %d exceeded)" % th.threshold, [now, 0]
    if due and not th.threshold:
        return True, " (seen %d times)" % count, [now, 0]
    return False, "", [last, count]


def throttle_key(th: Throttle, line: str, match: Optional[re.Match]) -> str:
    return SYSLOG_STAMP_RE.sub("", line) if th.key is None else th.key.expand(line, match)


def threshold_expired(bucket: List[int], now: float, th: Threshold) -> bool:
    """Dropping the bucket changes nothing: the next event starts anew."""
    return bucket[0] + th.seconds <= now or now < bucket[0]


def throttle_expired(rec: List[float], now: float, th: Throttle) -> bool:
    """The next event acts anyway.  A plain throttle's record is kept a day longer for its '(seen N times)'; a threshold
    throttle with events counted is never dropped (its count decides)."""
    last, count = rec
    if th.threshold:
        return count == 0 and (now > last + th.delay or now < last)
    return now > last + th.delay + WINDOW_DAY


def bounded_key(key: str) -> str:
    return key if len(key) <= MAX_KEY else key[:MAX_KEY - 9] + "#%08x" % zlib.crc32(key.encode("utf-8", "replace"))


def sweep(table: "collections.OrderedDict[str, Any]", expired: Callable[[Any], bool], steps: int = 2) -> None:
    """Look at the table's `steps` oldest entries: drop the expired ones, put the others at the end.  O(1) per event,
    and every entry comes up in turn; a live counter is never dropped to make room (issue 10: decoy keys evicted a
    brute-force counter)."""
    for _ in range(min(steps, len(table))):
        key, rec = table.popitem(last=False)
        if not expired(rec):
            table[key] = rec


# -- the Sentinel ----------------------------------------------------------
# match -> act (outbox append) -> commit (outbox sync, then offsets) -> deliver.


class Sentinel:
    """Applies the rules to lines: first match wins unless 'continue'."""

    def __init__(self, config: Config, runner: ActionRunner, counters: Optional[Counters] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.runner, self.counters, self.clock = runner, counters or Counters(), clock
        self.self_tag: Optional[str] = None
        self.bytes = self.matches = 0     # characters of complete lines seen, lines matched
        self.quit = False
        self.set_config(config)

    def set_config(self, config: Config) -> None:
        self.rules = config.rules
        self.plan = build_plan(config.rules)
        self.suspended: Dict[str, float] = {}       # rule ident -> last "tracking suspended" notice
        idents = {r.ident for r in config.rules}
        for tables in (self.counters.thresholds, self.counters.throttles):     # counters of rules that are gone go too
            for ident in [i for i, t in tables.items() if not isinstance(t, dict) or i not in idents]:
                del tables[ident]

    def count(self, kind: str, rule: Rule, key: str) -> Tuple[bool, str]:
        """One event of `key` in the rule's counters of `kind` (swept first): (act?, suffix).  When `key` is new and the
        table is full, new keys go untracked (no act), and the rule's actions say so once an hour (an attacker can
        make us louder, not quieter)."""
        tables, key, now = getattr(self.counters, kind), bounded_key(key), self.clock()
        table = tables.get(rule.ident)
        if not isinstance(table, collections.OrderedDict):      # as loaded from JSON
            table = tables[rule.ident] = collections.OrderedDict(
                (k, v) for k, v in (table or {}).items() if isinstance(v, list) and len(v) == 2)
        thresholds = kind == "thresholds"
        limit: Any = rule.threshold if thresholds else rule.throttle
        sweep(table, lambda rec: (threshold_expired if thresholds else throttle_expired)(rec, now, limit))
        if key not in table and len(table) >= MAX_TABLE:
            if now - self.suspended.get(rule.ident, -1e18) >= SUSPENDED_NOTICE or now < self.suspended[rule.ident]:
                self.suspended[rule.ident] = now
                notice = ("birdsentinel: too many distinct keys for the rule at %s line %d (%d tracked): "
                          "tracking suspended for new keys" % (rule.path, rule.lineno, len(table)))
                LOG.warning("%s", notice)
                for action in (a for a in rule.actions if a.kind != "quit"):
                    self.runner.run(action, notice, None, notice)
            return False, ""
        if thresholds:
            fire, table[key] = threshold_fires(table.get(key), int(now), limit)
            return fire, ""
        fire, suffix, table[key] = throttle_fires(table.get(key), now, limit)
        return fire, suffix

    def process_text(self, text: str) -> None:
        """A block of complete lines, each ending in a newline (after a quit: nothing)."""
        self.bytes += len(text)
        if self.quit:
            return
        if self.plan.sampled < min(MATCH_SAMPLE, len(text) // 2):     # the first block, or one much larger
            self.plan = build_plan(self.rules, text, self.plan)
        for line, steps in candidate_lines(self.plan, text):
            self.match_line(line, None, steps)
            if self.quit:
                break
        self.runner.flush()

    def process_entry(self, line: str, fields: Optional[Dict[str, str]] = None, origin: Optional[str] = None) -> None:
        """A line of a source that knows more than its text: journal fields, the host it came from (journal, omprog)."""
        self.bytes += len(line) + 1
        if not self.quit:
            self.match_line(line, fields, self.plan.steps, sanitize(origin)[:64] if origin else "")
            self.runner.flush()

    def notify(self, text: str) -> None:
        """Our own alert (journal entries lost while stopped): once to each X destination of the rules."""
        to_x = {(a.kind, a.recipients): a for r in self.rules for a in r.actions if a.kind in ("dm", "tweet")}
        for a in to_x.values():
            self.runner.run(dataclasses.replace(a, when=None, message=None), text, None, text)

    def match_line(self, line: str, fields: Optional[Dict[str, str]], steps: Sequence[Any], origin: str = "") -> None:
        """Try the rules of `steps`, (rule, literal check) as in MatchPlan.steps, in order."""
        if self.self_tag is not None and self.self_tag in line:     # our own syslog line, by its header's tag: a user
            m = SYSLOG_TAG_RE.match(line)                            # name can hold 'birdsentinel[PID]:' (issue 10)
            if m is not None and m.group(2) == self.self_tag:
                return
        folded: Optional[str] = None
        for rule, single, check in steps:
            if single is not None:                  # the common case, kept cheap
                if single not in line:
                    continue
            elif check is not None:
                if check[1] and folded is None:
                    folded = line.casefold().replace("\u0131", "i").replace("i\u0307", "i")     # dotless and dotted I
                if not (any(x in line for x in check[0]) or any(x in folded for x in check[1])):  # type: ignore
                    continue                        # cannot match: skip the regex
            m = rule.pattern.match(line, fields)
            if m is None:
                continue
            if fields is not None:
                m = EntryMatch(m, fields)           # type: ignore[assignment]
            if rule.kind == "ignore":
                return
            self.matches += 1
            ok, suffix = self.limits(rule, line, m)
            for action in rule.actions if ok else ():
                if action.kind == "quit":
                    self.quit = True
                    continue
                self.runner.run(action, line, m, line + suffix, origin)
            if not rule.cont or self.quit:
                return

    def limits(self, rule: Rule, line: str, m: Optional[re.Match]) -> Tuple[bool, str]:
        """Apply the rule's threshold, then its throttle."""
        ok = rule.threshold is None or self.count("thresholds", rule, rule.threshold.track_by.expand(line, m))[0]
        if not ok or rule.throttle is None:
            return ok, ""
        return self.count("throttles", rule, throttle_key(rule.throttle, line, m))


# ==== State and outbox =======================================================
# Every write is atomic (temp file in the same directory, fsync, rename, fsync of the dir): a crash leaves old or new.


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace path with data so that a crash leaves either file whole."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".birdsentinel-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):              # the rename itself reaches the disk
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_ours(st: os.stat_result, path: str, private: bool = True) -> None:
    """Refuse a file birdsentinel did not make: the classic script dir is group-writable (sticky), so a group member can
    plant a state file, an outbox to read or a symlink to another file before we create ours."""
    why = ("it is a symbolic link" if stat.S_ISLNK(st.st_mode) else "it is a FIFO" if stat.S_ISFIFO(st.st_mode)
           else "it is not a regular file" if not stat.S_ISREG(st.st_mode)
           else "it belongs to uid %d, not to uid %d who runs birdsentinel" % (st.st_uid, os.geteuid())
           if st.st_uid != os.geteuid() else "")
    if why:
        raise UnsafeFileError("refusing %s: %s; birdsentinel did not make it. Look at who did, remove it "
                              "(rm -- %s) and start again" % (path, why, shlex.quote(path)))
    if st.st_mode & (0o027 if private else 0o022):
        raise UnsafeFileError("refusing %s: its mode %04o lets other users %s it; chmod %s %s" % (
            path, stat.S_IMODE(st.st_mode), "read or change" if private else "change",
            "600" if private else "644", shlex.quote(path)))


def open_ours(path: str, flags: int, private: bool = True) -> int:
    """os.open of a script dir file: never through a symlink, never blocking on a FIFO, only a file of ours."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EWOULDBLOCK):
            check_ours(os.lstat(path), path, private)
        raise
    try:
        check_ours(os.fstat(fd), path, private)
    except BirdError:
        os.close(fd)
        raise
    return fd


def check_dir_ours(directory: str) -> None:
    """The script dir: ours or root's, and writable by others only if sticky."""
    st = os.stat(directory)
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafeFileError("refusing script dir %s: it belongs to uid %d; chown %d %s"
                              % (directory, st.st_uid, os.geteuid(), shlex.quote(directory)))
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UnsafeFileError("refusing script dir %s: mode %04o lets other users replace its files; "
                              "chmod 0750 %s (or 3770 for a shared group, as the install guide says)"
                              % (directory, stat.S_IMODE(st.st_mode), shlex.quote(directory)))


def remove_stale_temp_files(directory: str) -> None:
    """Remove our atomic writes' temp files that a crash left; the state lock is held: no write of ours is running."""
    import glob                                     # (it skips a directory it cannot list)
    for path in glob.glob(os.path.join(glob.escape(directory), ".birdsentinel-*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            check_ours(os.lstat(path), path)
            os.unlink(path)


@dataclass
class Counters:
    """Rule counters, owned by the Sentinel (main thread): rule ident -> key -> threshold bucket or throttle record."""
    thresholds: Dict[str, Any] = field(default_factory=dict)
    throttles: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DeliveryState:
    """What the sender keeps across restarts, owned by the Deliverer, whose thread changes it under `lock` while the
    loop saves it: the wall time each kind's X block ends, send times and spend in the budget windows, user ids."""
    blocked_until: Dict[str, float] = field(default_factory=dict)
    sent: Dict[str, List[float]] = field(default_factory=dict)
    spend: List[List[float]] = field(default_factory=list)
    users: Dict[str, str] = field(default_factory=dict)
    lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)     # not saved


@dataclass
class State:
    """The state file.  Positions (and the highest outbox id they cover) are written by the runtime's commit point
    only, counters by the Sentinel, delivery by the Deliverer; StateStore only loads, checks and writes them."""
    files: Dict[str, Dict[str, Any]] = field(default_factory=dict)      # path -> dev, ino, fp, offset
    journal: Dict[str, Dict[str, Any]] = field(default_factory=dict)    # "system" or "dir:PATH" -> cursor or since
    outbox_committed: Optional[int] = None
    omprog: List[str] = field(default_factory=list)     # fingerprints of the last commit's messages, until answered
    counters: Counters = field(default_factory=Counters)
    delivery: DeliveryState = field(default_factory=DeliveryState)


def state_fields(cls: Any, data: Dict[str, Any]) -> Any:
    """cls (State or a part of it) from the state file's flat object: each field the value of its name, of its
    default's type (else ValueError), or the default when missing."""
    values = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default   # type: ignore
        value = state_fields(type(default), data) if dataclasses.is_dataclass(default) else data.get(f.name, default)
        if not isinstance(value, type(default)) and not (default is None and isinstance(value, int)):   # Optional[int]
            raise ValueError("its %s has the wrong type" % f.name)
        values[f.name] = value
    return cls(**values)


def state_object(part: Any) -> Dict[str, Any]:
    """The flat JSON object of State or a part of it (the inverse of state_fields)."""
    out: Dict[str, Any] = {}
    for f in filter(lambda f: f.compare, dataclasses.fields(part)):     # not a lock
        value = getattr(part, f.name)
        out.update(state_object(value) if dataclasses.is_dataclass(value) else {f.name: value})
    return out


class StateStore:
    """The versioned JSON state file: a failed save keeps the old file, is logged once per cause, and is retried."""

    def __init__(self, path: str, writer: Callable[[str, bytes], None] = atomic_write) -> None:
        self.path, self.writer = path, writer
        self.failing: Optional[str] = None

    def load(self) -> Tuple[State, bool]:
        """(state, found): a new state when the file is missing or corrupt (logged, and kept aside as FILE.corrupt)."""
        try:
            with os.fdopen(open_ours(self.path, os.O_RDONLY), "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return State(), False
        except OSError as exc:
            raise StateError("cannot read state file %s: %s" % (self.path, exc.strerror)) from None
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError("not a version %d state" % STATE_VERSION)
            return state_fields(State, data), True
        except (ValueError, UnicodeDecodeError) as exc:
            LOG.error("state file %s is corrupt (%s): each file restarts from its end; "
                      "the bad copy is kept as %s.corrupt", self.path, str(exc)[:80], self.path)
            with contextlib.suppress(OSError):
                os.replace(self.path, self.path + ".corrupt")
            return State(), False

    def save(self, state: State) -> bool:
        with state.delivery.lock:                   # the sender may be changing it
            data = json.dumps({"version": STATE_VERSION, **state_object(state)}, separators=(",", ":"), sort_keys=True)
        cause = None
        try:
            self.writer(self.path, data.encode("utf-8"))
        except OSError as exc:
            cause = exc.strerror or str(exc)
        if cause and cause != self.failing:
            LOG.error("cannot write state file %s: %s; keeping the previous one and retrying", self.path, cause)
        elif cause is None and self.failing:
            LOG.warning("state file %s is writable again", self.path)
        self.failing = cause
        return cause is None


def acquire_lock(state_path: str) -> int:
    """An exclusive lock beside the state file: one instance per state."""
    lock_path = state_path + ".lock"
    try:
        fd = open_ours(lock_path, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        raise StateError("cannot create lock file %s: %s" % (lock_path, exc.strerror)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        other = ""
        with contextlib.suppress(OSError):
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise LockedError("another birdsentinel (pid %s) is already using state file %s"
                          % (other or "?", state_path)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    return fd


def parse_journal(lines: Iterable[bytes]) -> Tuple["collections.OrderedDict[int, Dict[str, Any]]", int, List[int]]:
    """The journal's pending messages in order (with "parts" sent of a split one), the highest id, the numbers (from 0)
    of broken lines (writes a crash cut short), and under id 0 the last "lost" record: what was not kept."""
    entries: "collections.OrderedDict[int, Dict[str, Any]]" = collections.OrderedDict()
    last_id, unreadable = 0, []
    for n, line in enumerate(lines.split(b"\n") if isinstance(lines, bytes) else lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            op, ident = rec["op"], int(rec["id"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            unreadable.append(n)
            continue
        if op == "add" or op == "lost":
            entries[ident] = rec
        elif op == "done":
            entries.pop(ident, None)
        elif op == "part" and ident in entries:
            entries[ident]["parts"] = int(rec.get("n", 0))
        last_id = max(last_id, ident)
    return entries, last_id, unreadable


class Outbox:
    """Messages waiting for X, as an append-only journal of JSON lines: {"op":"add",...} when matched,
    {"op":"part","id":N,"n":K} after part K of a split message, {"op":"done","id":N} when X accepted it (or it went to
    the dead-letter file).  Bounded: past max_entries or max_bytes of text a new alert is not kept but counted per
    recipient and action (lost), and the count is sent first when room returns.  Appends reach the disk at sync(), once
    a poll, before the offsets that cover them are saved; the sender takes only ids up to `committed` (None: all)."""

    def __init__(self, path: str, dead_path: str, fsync: bool = True,
                 max_entries: int = OUTBOX_ENTRIES, max_bytes: int = OUTBOX_BYTES) -> None:
        self.path, self.dead_path, self.do_fsync = path, dead_path, fsync
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.entries: "collections.OrderedDict[int, Dict[str, Any]]" = collections.OrderedDict()
        self.queues: Dict[str, "collections.OrderedDict[int, Dict[str, Any]]"] = {}     # per kind, made by _keep
        self.lost: Dict[str, Dict[str, int]] = {}      # "kind to" -> {action label: alerts not kept}
        self.text_bytes, self.journal_bytes, self.next_id = 0, 0, 1
        self.committed: Optional[int] = None
        self.lock = threading.RLock()
        self.durable, self.unsynced, self.full, self.lost_changed = True, False, False, False
        self.born_committed = False                     # set for a one-off pass: nothing is read again
        self.failing: Optional[str] = None
        self.retry_at = 0.0                             # monotonic: next rewrite after a failed write

    def load(self, committed: Optional[int] = None) -> None:
        """Stream the journal in, drop what came after `committed` (its lines are read again), and rewrite it."""
        with self.lock:
            try:
                with os.fdopen(open_ours(self.path, os.O_RDONLY), "rb") as fh:
                    entries, last_id, unreadable = parse_journal(fh)
            except FileNotFoundError:
                entries, last_id, unreadable = collections.OrderedDict(), 0, []
            except OSError as exc:
                raise StateError("cannot read outbox %s: %s" % (self.path, exc.strerror)) from None
            lost = entries.pop(0, {}).get("counts", {})
            self.lost = {k: dict(v) for k, v in lost.items() if isinstance(v, dict)}
            late = {i for i, e in entries.items() if committed is not None and i > committed and not e.get("c")}
            for e in entries.values():
                if e["id"] not in late:
                    self._keep(e)
            self.next_id = max(self.next_id, last_id + 1, (committed or 0) + 1)     # a compacted journal holds no ids
            self.committed, self.lost_changed = committed, False
            if unreadable:
                LOG.warning("outbox %s: skipped %d unreadable record(s) left by a crash", self.path, len(unreadable))
            if late:
                LOG.info("outbox %s: %d alert(s) whose log lines were not saved as read are left out: "
                         "those lines are read again", self.path, len(late))
            self.compact()
            if self.entries:
                LOG.info("outbox %s holds %d message(s) from an earlier run", self.path, len(self.entries))

    def _keep(self, entry: Dict[str, Any]) -> None:
        of_kind = self.queues.setdefault(entry["kind"], collections.OrderedDict())
        self.entries[entry["id"]] = of_kind[entry["id"]] = entry
        self.text_bytes += len(entry["text"])

    def _write(self, records: Sequence[Dict[str, Any]], sync: bool = False, whole: bool = False) -> None:
        """Append records (sync: and fsync them), or rewrite the journal as them (whole).  After a failed write appends
        stay in memory until sync() rewrites all.  Says once when writing starts failing, once when it works again."""
        data = b"".join(json.dumps(r, separators=(",", ":")).encode("utf-8") + b"\n" for r in records)
        cause = None
        try:
            if whole:
                atomic_write(self.path, data)
                self.durable, self.journal_bytes = True, 0
            elif not self.durable:
                return
            else:
                fd = open_ours(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                try:
                    os.write(fd, data)
                    if sync and self.do_fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            self.journal_bytes += len(data)
            self.unsynced = not (sync or whole)
        except OSError as exc:
            cause = exc.strerror or str(exc)
            self.durable, self.retry_at = False, time.monotonic() + 5.0     # no rewrite storm on a full disk
        if cause and cause != self.failing:
            LOG.error("cannot write outbox %s: %s; messages are kept in memory and log offsets "
                      "are not saved until it works again", self.path, cause)
        elif cause is None and self.failing:
            LOG.warning("outbox %s is writable again", self.path)
        self.failing = cause

    def sync(self) -> bool:
        """Make the appends durable (once a poll, and for each done record): are they?  After a failed write, rewrite
        the journal when the disk has room for it, else every 5 s: never once per alert (issue 9: a full disk made every
        alert rewrite the whole journal)."""
        with self.lock:
            if self.unsynced or self.lost_changed:          # what the full outbox did not keep, too
                lost, self.lost_changed = self.lost_changed, False
                self._write([{"op": "lost", "id": 0, "counts": self.lost}] if lost else [], sync=True)
            if self.durable:
                return True
            room = False
            with contextlib.suppress(OSError):
                st = os.statvfs(os.path.dirname(self.path) or ".")
                room = st.f_bavail * st.f_frsize > 2 * (self.text_bytes + 200 * len(self.entries)) + (1 << 20)
            if room or time.monotonic() >= self.retry_at:
                self.compact()
            return self.durable

    def compact(self) -> None:
        with self.lock:
            recs = [dict(e, op="add") for e in self.entries.values()]
            recs += [{"op": "part", "id": e["id"], "n": e["parts"]} for e in self.entries.values() if e.get("parts")]
            self._write(recs + ([{"op": "lost", "id": 0, "counts": self.lost}] if self.lost else []), whole=True)

    def add(self, kind: str, to: str, text: str, now: float, extra: Optional[Dict[str, Any]] = None,
            label: str = "") -> Optional[Dict[str, Any]]:
        """Queue one message; None when the outbox is full (it is counted)."""
        with self.lock:
            if len(self.entries) >= self.max_entries or self.text_bytes + len(text) > self.max_bytes:
                if not self.full:
                    LOG.error("outbox full (%d messages, %d KiB of text): new alerts are counted, not kept, "
                              "until X takes some; the count is sent first then", len(self.entries),
                              self.text_bytes // 1024)
                self.full = self.lost_changed = True
                counts = self.lost.setdefault("%s %s" % (kind, to), {})
                counts[label or kind] = counts.get(label or kind, 0) + 1
                return None
            entry = {"op": "add", "id": self.next_id, "kind": kind, "to": to, "text": text, "t": now}
            entry.update(extra or {}, **({"c": 1} if self.born_committed else {}))
            self.next_id += 1
            self._keep(entry)
            self._write([entry])
            return entry

    def ready(self, kind: str, most: Optional[int] = None) -> List[Dict[str, Any]]:
        """The oldest `most` (None: all) messages of `kind` the sender may take: those the commit point covers."""
        with self.lock:
            return list(itertools.islice((e for e in self.queues.get(kind, {}).values() if self.committed is None
                                          or e["id"] <= self.committed or "c" in e), most))

    def count(self, kind: str) -> int:
        return len(self.queues.get(kind, ()))

    def part_sent(self, entry: Dict[str, Any], n: int) -> None:
        with self.lock:
            entry["parts"] = n
            self._write([{"op": "part", "id": entry["id"], "n": n}], sync=True)

    def done(self, ids: Sequence[int]) -> None:
        with self.lock:
            ids = [i for i in ids if i in self.entries]
            for i in ids:
                e = self.entries.pop(i)
                del self.queues[e["kind"]][i]
                self.text_bytes -= len(e["text"])
            self._write([{"op": "done", "id": i} for i in ids], sync=True)
            self.full = self.full and len(self.entries) >= self.max_entries
            if self.journal_bytes > 2 * self.text_bytes + 200 * len(self.entries) + (1 << 20):
                self.compact()              # most of the journal is done records

    def take_lost(self, kind: str, to: str, sent: Dict[str, int]) -> None:
        """These counts of alerts not kept for this recipient were sent."""
        with self.lock:
            counts = self.lost.get("%s %s" % (kind, to), {})
            for label, n in sent.items():
                left = counts.pop(label, 0) - n
                if left > 0:
                    counts[label] = left
            self.lost_changed = True

    def dead(self, entry: Dict[str, Any], reason: str, now: float) -> None:
        """X refused it for good: to the dead-letter file, with X's reason."""
        LOG.error("X refused %s to %s for good: %s; moved to %s", entry["kind"], entry["to"] or "self", reason,
                  self.dead_path)
        rec = {"t": now, "kind": entry["kind"], "to": entry["to"], "text": entry["text"], "reason": reason}
        try:
            fd = open_ours(self.dead_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, json.dumps(rec).encode("utf-8") + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        except (OSError, BirdError) as exc:         # else X would be asked again and again
            LOG.error("cannot write dead-letter file %s: %s; the refused message is here instead: %s",
                      self.dead_path, getattr(exc, "strerror", None) or exc, json.dumps(rec))
        self.done([entry["id"]])

    def __len__(self) -> int:
        return len(self.entries)


# ==== Messages ===============================================================
ANSI_RE = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"      # OSC ... BEL/ST
                     r"|\x1b\[[0-?]*[ -/]*[@-~]?"              # CSI
                     r"|\x1b[P^_X][^\x1b]*(?:\x1b\\)?"         # DCS, PM, APC, SOS
                     r"|\x1b.?")
CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u115f\u1160\u3164\uffa0\ufffe\uffff]")
# X links a domain only where a '.' is followed by a letter (every TLD starts with one, IDN and punycode ones too).
# Rather than carry X's list of 1,500 TLDs, every such dot counts as a possible link: defanging breaks them all, and
# counting adds the most a link can add (23 for at least 'a.co', 4).  So the count is never below X's (issue 11:
# twitter-text's conformance files and a fuzz against its port are the tests).
LINKABLE_DOT_RE = re.compile(r"\.(?=[^\W\d_])")
URL_SCHEME_RE = re.compile(r"(?i)\b(https?|ftp)://")
TWEET_LINK_MARGIN = TWEET_URL_WEIGHT - 4


def strip_controls(text: str) -> str:
    """What programs get of a log line: no escape sequence or control but tab (OSC 52 writes a terminal's clipboard)."""
    return CONTROL_RE.sub("", ANSI_RE.sub("", text))


def sanitize(text: str) -> str:
    """Remove ANSI/OSC escapes, control characters (tab becomes a space) and invisible ones (Cf: bidi, zero-width, TAG
    characters; Hangul fillers), so a log line cannot drive a terminal, forge a layout or hide text."""
    if text.isprintable() and text.isascii():       # the common case: nothing to remove
        return text
    text = strip_controls(text).replace("\t", " ")
    return text if text.isascii() else "".join(c for c in text if unicodedata.category(c) != "Cf")


def char_weight(ch: str) -> int:
    """2, or 1 in X's light ranges but for emoji-like symbols ((c), (R): 2 for X's emoji parser; never under-count)."""
    light = any(lo <= ord(ch) <= hi for lo, hi in TWEET_WEIGHT1_RANGES)
    return 1 if light and unicodedata.category(ch) != "So" else 2


def tweet_weight(text: str) -> int:
    """X's weighted length (twitter-text v3: NFC, code points weigh 1 or 2, a link 23), or more: an emoji sequence
    counts per code point, and each possible link adds its margin."""
    text = unicodedata.normalize("NFC", text)
    weight = len(text) if text.isascii() else sum(char_weight(c) for c in text)
    return weight + len(LINKABLE_DOT_RE.findall(text)) * TWEET_LINK_MARGIN


def has_url(text: str) -> bool:
    """Whether X might see a link (a post with one costs 13 times more)."""
    return LINKABLE_DOT_RE.search(text) is not None


def defang(text: str) -> str:
    """Make every possible link inert: hxxps[:]//example[.]com.  A post
    with a link costs $0.20 instead of $0.015 and looks like spam."""
    text = URL_SCHEME_RE.sub(lambda m: m.group(1).lower().replace("t", "x") + "[:]//", text)
    return LINKABLE_DOT_RE.sub("[.]", text)


def split_message(text: str, limit: int, weigh: Callable[[str], int]) -> List[str]:
    """Parts of at most `limit` (as weighed), cut at spaces if possible, each ending in ' (i/n)' if there are more."""
    if weigh(text) <= limit:
        return [text]
    for digits in range(1, 6):                  # greedy, the room left for ' (i/n)' of that many digits
        room, rest, parts = limit - weigh(" (%s/%s)" % ("9" * digits, "9" * digits)), text.strip(), []
        while rest and weigh(rest) > room:
            lo, hi = 1, len(rest)               # longest prefix that fits
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if weigh(rest[:mid]) <= room else (lo, mid - 1)
            space = rest.rfind(" ", 0, lo + 1)
            cut = space if space > lo // 2 else lo
            parts.append(rest[:cut].strip())
            rest = rest[cut:].strip()
        parts += [rest] if rest else []
        if len(str(len(parts))) <= digits:
            return ["%s (%d/%d)" % (p, i, len(parts)) for i, p in enumerate(parts, 1)]
    raise ValueError("message too long to split")


def message_parts(kind: str, text: str) -> List[str]:
    return split_message(text, *((DM_MAX_CHARS, len) if kind == "dm" else (TWEET_MAX_WEIGHT, tweet_weight)))


def format_alert(hostname: str, text: str) -> str:
    return "[%s] %s" % (hostname, sanitize(text))


def digest_text(kind: str, held: Sequence[str], since: float, limit: Optional[int] = None) -> Tuple[str, int]:
    """(text, n): '+N alerts since HH:MM:SS:' and the first n held lines that fit (at least one, cut if need be)."""
    head = "+%d alert%s since %s:" % (len(held), "" if len(held) == 1 else "s",
                                     time.strftime("%H:%M:%S", time.localtime(since)))
    weigh: Callable[[str], int] = len if kind == "dm" else tweet_weight
    limit = limit or (DM_MAX_CHARS if kind == "dm" else TWEET_MAX_WEIGHT)
    text, used = head, 0
    while used < len(held) and weigh(text + "\n" + held[used]) <= limit:
        text, used = text + "\n" + held[used], used + 1
    if used == 0 and held:                      # always carry at least one line
        text, used = head + "\n" + split_message(held[0], limit - weigh(head) - 1, weigh)[0], 1
    return text, used


# ==== Delivery ===============================================================
# X's answers, its limits, the local budget, digests, and the sender.


def classify(resp: XResponse) -> str:
    """ok, rate (wait for the reset), auth (credentials) and credit (the account's balance or access: both hold every
    message, never one's fault), permanent (this message will never go), retry (back off)."""
    status = resp.status
    if status in (200, 201, 401, 429):
        return {401: "auth", 429: "rate"}.get(status, "ok")
    if status == 402 or (status == 403 and ACCOUNT_403_RE.search(resp.detail())):
        return "credit"
    if 400 <= status < 500 and status not in (408, 409, 425):
        return "permanent"
    return "retry"


def rate_limit_until(headers: Dict[str, str], now: float, limited: bool) -> Optional[float]:
    """When X says a window is used up, the epoch time it reopens.  The 24-hour headers win when their remaining count
    is 0.  After a 429 without usable headers, wait a minute."""
    def num(name: str) -> Optional[float]:
        try:
            return float(headers[name])
        except (KeyError, ValueError):
            return None
    until: Optional[float] = None
    for prefix, longest in (("x-user-limit-24hour-", WINDOW_DAY), ("x-app-limit-24hour-", WINDOW_DAY),
                            ("x-rate-limit-", WINDOW_15M)):
        rem, reset = num(prefix + "remaining"), num(prefix + "reset")
        if rem is not None and rem <= 0 and reset is not None:
            # a reset further away than the window means our clock is off
            until = max(until or 0.0, min(reset, now + longest + 60.0))
    if limited and (until is None or until <= now):
        reset = num("x-rate-limit-reset")
        until = min(reset, now + WINDOW_15M + 60.0) if reset is not None and reset > now else now + 60.0
    return None if until is not None and until <= now else until


def backoff_delay(attempt: int, rng: random.Random, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Exponential back-off with jitter: about base*2^attempt, at most cap."""
    d = min(cap, base * (2 ** min(attempt, 30)))
    return d / 2 + rng.random() * d / 2


def budget_allowance(budget: Dict[str, Optional[float]], kind: str, sent: Sequence[float],
                     spend: Sequence[Sequence[float]], now: float, price: float) -> Tuple[int, float]:
    """How many more messages of `kind` the local budget allows now, and when the next one frees up if none.  Sends
    stamped in the future (the clock went back) count as sent now."""
    allowed, free_at = 1 << 30, now
    for window, key in ((WINDOW_15M, kind + "_per_15m"), (WINDOW_DAY, kind + "_per_day")):
        limit = budget.get(key)
        if limit is None:
            continue
        recent = sorted(min(t, now) for t in sent if t > now - window)
        left = int(limit) - len(recent)
        if left <= 0:
            free_at = max(free_at, (recent[len(recent) - int(limit)] if recent else now) + window)
        allowed = min(allowed, left)
    cap = budget.get("usd_per_day")
    if cap is not None:
        recent_spend = sorted((min(t, now), u) for t, u in spend if t > now - WINDOW_DAY)
        left = int((cap - sum(u for _, u in recent_spend) + 1e-9) // price) if price > 0 else allowed
        if left <= 0:
            free_at = max(free_at, (recent_spend[0][0] if recent_spend else now) + WINDOW_DAY)
        allowed = min(allowed, left)
    return max(allowed, 0), free_at


def message_price(kind: str, text: str) -> float:
    return PRICE_USD["tweet_url" if kind == "tweet" and has_url(text) else kind]


def entry_parts(entry: Dict[str, Any]) -> List[str]:
    """What one outbox entry sends, part by part.  Posts are defanged, split at 280, and every part unique (X refuses
    a post that repeats an earlier one): ' [#seq]'."""
    if entry["kind"] != "tweet":
        return message_parts("dm", entry["text"])
    text = defang(entry["text"]) if entry.get("defang", True) else entry["text"]
    if len(text) > TWEET_MAX_TEXT:                  # a flood of posts helps nobody
        text = text[:TWEET_MAX_TEXT] + "\u2026[cut]"
    tag = post_tag(entry)
    return [p + tag for p in split_message(text, TWEET_MAX_WEIGHT - tweet_weight(tag), tweet_weight)]


def post_tag(entry: Dict[str, Any]) -> str:
    """' [#N]' that makes a post unique: the outbox id (never reused: ids only grow, across restarts too)."""
    return " [#%d]" % int(entry.get("seq") or entry.get("id", 0))


def dm_hint(to: str, sender: str) -> str:
    return ("%s cannot receive DMs from %s yet: %s must send %s a DM first (X lets automated accounts DM only "
            "people who wrote to them), and allow DMs in their settings" % (to, sender, to, sender))


def would_send(entry: Dict[str, Any], users: Dict[str, Any]) -> str:
    """What a dry run prints for one outbox entry, part by part, naming a DM's recipient without asking X."""
    to, uid = entry["to"], users.get(entry["to"].lower())
    who = ("the account itself" if not to else "user id %s" % to if USER_ID_RE.match(to)
           else "%s (id %s)" % (to, uid) if uid else "%s (id resolved at send time)" % to)
    label = "would post" if entry["kind"] == "tweet" else "would dm " + who
    return "".join("%s: %s\n" % (label, p) for p in entry_parts(entry))


class Deliverer:
    """Drains the outbox in order, within X's limits and the local budget.  step() does at most one send and says how
    long to wait before the next call, so tests drive it with a fake clock."""

    def __init__(self, outbox: Outbox, client: Optional[XClient], state: DeliveryState,
                 budget: Dict[str, Optional[float]], clock: Callable[[], float] = time.time,
                 rng: Optional[random.Random] = None, monotonic: Callable[[], float] = time.monotonic,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.outbox, self.client, self.state, self.lock, self.budget = outbox, client, state, state.lock, budget
        self.on_change = on_change      # the state changed: it reaches the disk within a second
        self.clock = clock              # wall time: X's reset stamps, budget windows (persisted)
        self.monotonic = monotonic      # durations: back-off, credential retry
        self.rng = rng or random.Random()
        self.retry_at = -1e18           # monotonic: the next try after a back-off or refused credentials
        self.attempts = 0
        self.account_problem = ""      # "auth" or "credit" while X refuses the account
        self.held_logged: Dict[str, float] = {}
        self.block_mono: Dict[str, float] = {}  # kind -> monotonic end of X's block
        self.summarize_next: set = set()        # kinds whose next send follows a hold

    def nudge(self) -> None:
        """SIGHUP: retry now what waits for credentials or a back-off."""
        self.retry_at = -1e18

    def forget_users(self, config: Config) -> None:
        """Cached user ids only for the handles the config names now."""
        wanted = {to.lower() if to else "@me" for to in dm_recipients(config)}
        with self.lock:
            for key in [k for k in self.state.users if k not in wanted]:
                del self.state.users[key]

    def _blocked_for(self, kind: str, now: float) -> float:
        """Seconds `kind` must still wait for X's reset.  The deadline is kept on the monotonic clock, so a wall clock
        that jumps does not stretch or cut it; the state file keeps the wall time for restarts."""
        mono = self.monotonic()
        if kind not in self.block_mono:
            until = float(self.state.blocked_until.get(kind, 0.0))
            self.block_mono[kind] = mono + max(0.0, min(until - now, WINDOW_DAY + 60.0))
        return max(0.0, self.block_mono[kind] - mono)

    def _resolve(self, entry: Dict[str, Any]) -> Optional[str]:
        """Recipient id for a DM, from the cache or one lookup.  None: dead-lettered or retry later."""
        to = entry["to"]
        if USER_ID_RE.match(to):
            return to
        key = to.lower() if to else "@me"
        with self.lock:
            cached = self.state.users.get(key)
        if cached and USER_ID_RE.match(str(cached)):
            return str(cached)
        assert self.client is not None
        resp = self.client.user(to)
        user, why = read_user(resp, to or "(the account)")
        if self.handle_failure(resp, entry, "looking up %s" % (to or "the account"), why) or user is None:
            return None
        uid = str(user["id"])
        with self.lock:
            self.state.users[key] = uid
        self.on_change()
        LOG.info("resolved %s to user id %s (cached in the state file)", to or "the account", uid)
        return uid

    def handle_failure(self, resp: XResponse, entry: Dict[str, Any], doing: str, problem: str = "") -> bool:
        """React to a non-success answer, or to a success with a problem (a lookup's 200 without a user); True when it
        was either.  The one place for what a failed answer does."""
        cls = classify(resp)
        now = self.clock()
        until = rate_limit_until(resp.headers, now, cls == "rate")
        if until is not None:
            with self.lock:
                self.state.blocked_until[entry["kind"]] = until
            self.block_mono[entry["kind"]] = self.monotonic() + (until - now)
            self.on_change()
        if cls == "ok" and not problem:
            return False
        if cls == "rate":
            LOG.warning("X rate limit (429) while %s: holding %s messages until %s",
                        doing, entry["kind"], time.strftime("%H:%M:%S", time.localtime(until or now + 60)))
        elif cls in ("auth", "credit"):
            if self.account_problem != cls:
                what = ("X REJECTED THE CREDENTIALS (%d: %s) while %s: the tokens are wrong or revoked; "
                        "fix with --authorize." if cls == "auth" else
                        "X REFUSED FOR LACK OF CREDITS OR ACCESS (%d: %s) while %s: add credits (or raise "
                        "the spend limit) in the X developer console.")
                LOG.critical(what + " Nothing is lost: %d message(s) wait in %s; retrying every %d min "
                             "and at SIGHUP.", resp.status, resp.detail(), doing,
                             len(self.outbox), self.outbox.path, AUTH_RETRY // 60)
                self.account_problem = cls
            self.retry_at = self.monotonic() + AUTH_RETRY
        elif cls == "permanent" or cls == "ok" and "no such" in problem:
            if resp.status == 403 and entry["kind"] == "dm":
                LOG.error("%s", dm_hint(entry["to"] or "the account", "the sending account"))
            self.outbox.dead(entry, problem if cls == "ok" else "HTTP %d: %s" % (resp.status, resp.detail()), now)
        else:                                       # a garbled 200 too: ask again later
            self._retry_later(problem if cls == "ok" else "HTTP %d (%s) while %s" % (resp.status, resp.detail(), doing))
        return True

    def _retry_later(self, why: str) -> float:
        delay = backoff_delay(self.attempts, self.rng)
        self.attempts += 1
        self.retry_at = self.monotonic() + delay
        if self.attempts <= 3 or self.attempts & (self.attempts - 1) == 0:
            LOG.warning("delivery failed: %s; retry %d in %.0f s (%d waiting)",
                        why, self.attempts, delay, len(self.outbox))
        return delay

    def step(self) -> float:
        """Send at most one message (or digest).  Returns seconds to wait."""
        now = self.clock()
        if self.client is None or not len(self.outbox):
            return 3600.0
        mono = self.monotonic()
        if mono < self.retry_at:                    # credentials, or a back-off
            return self.retry_at - mono
        waits = []
        for kind in ("dm", "tweet"):
            entry = next(iter(self.outbox.ready(kind, 1)), None)
            if entry is None:
                continue
            blocked = self._blocked_for(kind, now)
            if blocked > 0:
                waits.append(blocked)
                continue
            price = message_price(kind, entry_parts(entry)[0])      # what is posted, defanged
            with self.lock:
                # stamps in the future (the wall clock went back) become now, once, so they age out within their window
                sent = self.state.sent[kind] = [min(t, now) for t in self.state.sent.get(kind, [])]
                self.state.spend = [[min(t, now), u] for t, u in self.state.spend]
                allowed, free_at = budget_allowance(self.budget, kind, sent, self.state.spend, now, price)
            if allowed <= 0:
                if self.held_logged.get(kind) != free_at:
                    LOG.warning("budget: holding %d %s alert(s) until %s; the first message then summarizes them",
                                self.outbox.count(kind), kind, time.strftime("%H:%M:%S", time.localtime(free_at)))
                    self.held_logged[kind] = free_at
                self.summarize_next.add(kind)
                waits.append(max(free_at - now, 1.0))
                continue
            try:
                self._send(kind, entry, allowed)
            except XNetworkError as exc:
                return self._retry_later(str(exc))
            return 0.0
        return min(waits) if waits else 3600.0

    def _send(self, kind: str, entry: Dict[str, Any], allowed: int) -> None:
        to_id = self._resolve(entry) if kind == "dm" else ""
        if kind == "dm" and to_id is None:
            return
        with self.outbox.lock:                      # counts that come in during the send stay
            lost = dict(self.outbox.lost.get("%s %s" % (kind, entry["to"])) or {})
        # the last message a window allows, or the first after holding, is a digest when more wait than it allows
        digest = (allowed == 1 or kind in self.summarize_next) and not entry.get("parts")
        self.summarize_next.discard(kind)
        same = [e for e in self.outbox.ready(kind) if e["to"] == entry["to"]] if digest and not lost else []
        if lost:                                    # first say what the full outbox did not keep
            note = "birdsentinel: %d alert(s) were not kept while the outbox was full: %s" % (
                sum(lost.values()), ", ".join("%s: %d" % kv for kv in sorted(lost.items())))
            batch, parts = [], entry_parts(dict(entry, text=note))[:allowed]
        elif self.outbox.count(kind) > allowed and len(same) > 1:
            defang_urls = kind == "tweet" and entry.get("defang", True)
            lines = [defang(e["text"]) if defang_urls else e["text"] for e in same]
            text, used = digest_text(kind, lines, same[0]["t"], TWEET_MAX_WEIGHT - 16 if kind == "tweet" else None)
            if kind == "tweet":
                text += post_tag(entry)
            batch, parts = same[:used], [text]
            LOG.warning("budget: sending a digest of %d held %s alert(s) (%d carried in full)",
                        len(same), kind, len(batch))
        else:
            batch, parts = [entry], entry_parts(entry)
        start = int(entry.get("parts", 0)) if len(batch) == 1 else 0
        for i in range(start, len(parts)):
            if i - start >= allowed:
                return                                      # the rest after the window
            assert self.client is not None
            resp = self.client.send_dm(to_id or "", parts[i]) if kind == "dm" else self.client.post_tweet(parts[i])
            if self.handle_failure(resp, entry, "sending a %s" % kind):
                return
            self._record(kind, parts[i], self.clock())
            if i + 1 < len(parts) and batch:                # a restart goes on with the next part
                self.outbox.part_sent(entry, i + 1)
        if lost:
            self.outbox.take_lost(kind, entry["to"], lost)
            LOG.warning("sent the count of %d alert(s) the full outbox did not keep", sum(lost.values()))
        self.outbox.done([e["id"] for e in batch])
        self.attempts = 0
        if self.account_problem:
            LOG.warning("X accepts %s again", "the credentials" if self.account_problem == "auth" else "the account")
            self.account_problem = ""
        self.held_logged.pop(kind, None)

    def _record(self, kind: str, text: str, now: float) -> None:
        with self.lock:
            sent = self.state.sent.setdefault(kind, [])
            sent.append(now)
            del sent[:-int(max(self.budget.get(kind + "_per_day") or 0, 100) + 1)]
            self.state.spend.append([now, message_price(kind, text)])
            self.state.spend = [s for s in self.state.spend if s[0] > now - WINDOW_DAY]
        self.on_change()

    def run(self, stop: threading.Event, wake: threading.Event) -> None:
        """The sender thread: step, then sleep until due or woken."""
        while not stop.is_set():
            try:
                delay = self.step()
            except Exception:                               # keep the thread alive
                LOG.exception("delivery step failed")
                delay = 30.0
            if delay > 0:
                wake.wait(min(delay, 3600.0))
                wake.clear()


# ==== X API client ===========================================================
# OAuth 1.0a user context over urllib; opener, clock and nonce are parameters: tests need no network or real time.


class Credentials:
    """The four secrets.  repr() and str() never show them."""
    __slots__ = ("consumer_key", "consumer_secret", "token", "token_secret")

    def __init__(self, consumer_key: str, consumer_secret: str, token: str = "", token_secret: str = "") -> None:
        self.consumer_key, self.consumer_secret = consumer_key, consumer_secret
        self.token, self.token_secret = token, token_secret

    def __repr__(self) -> str:
        return "Credentials(<4 values hidden>)"


def read_secret(path: str, check_mode: bool = True) -> str:
    """One secret, checked (outside systemd's credentials): a regular file in its directory (a symlink may point only
    inside it), owned by root or us, nobody else may read or change; checked once opened (fstat): no swap in between."""
    real, fd = os.path.realpath(path), -1
    try:
        if check_mode and os.path.dirname(real) != os.path.realpath(os.path.dirname(path)):
            raise CredentialsError("refusing credential file %s: it is a symbolic link to %s, outside its "
                                   "directory; put the file itself there" % (path, real))
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        st = os.fstat(fd)
        why = ("not a regular file" if not stat.S_ISREG(st.st_mode) else "" if not check_mode
               else "it belongs to uid %d, who could replace it; run: chown root:monitor %s" % (st.st_uid, path)
               if st.st_uid not in (0, os.geteuid()) else
               "mode %04o lets other users read or change it; run: chmod 600 %s (or chmod 640 with group monitor)"
               % (stat.S_IMODE(st.st_mode), path) if st.st_mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP) else "")
        if why:
            raise CredentialsError("refusing credential file %s: %s" % (path, why))
        value = os.read(fd, 4096).decode("utf-8").strip()
    except FileNotFoundError:
        raise CredentialsError("missing credential file %s" % path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError("cannot read credential file %s: %s"
                               % (path, getattr(exc, "strerror", None) or "not UTF-8 text")) from None
    finally:
        if fd >= 0:
            os.close(fd)
    if not value or any(c.isspace() for c in value):
        raise CredentialsError("credential file %s must hold one value on one line" % path)
    return value


def credential_dir(twitter_dir: str, env: Dict[str, str]) -> Tuple[str, bool]:
    """systemd's $CREDENTIALS_DIRECTORY wins when it holds the files. Returns (directory, whether modes are checked)."""
    cred = env.get("CREDENTIALS_DIRECTORY")
    if cred and os.path.exists(os.path.join(cred, "consumer-key")):
        return cred, False                       # systemd made them private to us
    return twitter_dir, True


def load_credentials(twitter_dir: str, env: Dict[str, str], need_token: bool = True) -> Credentials:
    directory, check = credential_dir(twitter_dir, env)
    with contextlib.suppress(OSError):             # a missing dir: read_secret says which file is missing
        mode = os.stat(directory).st_mode
        if check and mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise CredentialsError("refusing credential dir %s: mode %04o lets other users replace the secrets; "
                                   "run: chmod 0750 %s" % (directory, stat.S_IMODE(mode), directory))
    names = SECRET_NAMES if need_token else SECRET_NAMES[:2]
    values = [read_secret(os.path.join(directory, n), check) for n in names]
    protect_process()
    return Credentials(*values)


def protect_process() -> None:
    """With the secrets in memory: no core dump, no same-user ptrace (PR_SET_DUMPABLE 0 also closes /proc/PID/mem)."""
    import resource
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)     # PR_SET_DUMPABLE
    except (OSError, ValueError, AttributeError) as exc:
        LOG.debug("cannot make the process non-dumpable: %s", exc)


def check_api_base(url: str) -> Tuple[str, bool]:
    """(The base without a trailing /, is it loopback): https anywhere; plain http only to loopback (tests)."""
    import ipaddress
    parts = urllib.parse.urlsplit(url)
    try:
        loopback = parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        loopback = False
    if parts.scheme == "http" and parts.hostname and not loopback:
        raise BirdError("refusing plain http API base %s: credentials would cross the network "
                        "unencrypted; use https (http is allowed only for loopback)" % url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BirdError("bad API base %r: give https://host" % url)
    return url.rstrip("/"), loopback


def client_from(opts: Any, env: Dict[str, str], need_token: bool = True,
                opener: Optional[Callable[..., Any]] = None) -> "XClient":
    """The one place a client is made from the command line's options."""
    base = opts.api_base or env.get("BIRDSENTINEL_API_BASE") or DEFAULT_API_BASE     # checked by XClient
    return XClient(load_credentials(opts.twitter_dir, env, need_token), base, opener=opener, ca_file=opts.ca_file)


@dataclass
class XResponse:
    status: int
    headers: Dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None

    def form(self) -> Dict[str, str]:
        """Token replies are form-encoded, whatever their Content-Type says."""
        return dict(urllib.parse.parse_qsl(self.body.decode("utf-8", "replace")))

    def detail(self) -> str:
        """X's own words for an error: problem 'detail', or errors[0]."""
        data = self.json()
        text = ""
        if isinstance(data, dict):          # Problem {title, detail} or Error {code, message}
            text = str(data.get("detail") or data.get("message") or data.get("title") or "")
            errs = data.get("errors")
            if not text and isinstance(errs, list) and errs and isinstance(errs[0], dict):
                text = str(errs[0].get("detail") or errs[0].get("message") or "")
        if 300 <= self.status < 400:
            where = urllib.parse.urlsplit(self.headers.get("location", "")).hostname or "nowhere"
            text = "a redirect to %s, not followed (is a proxy or portal in the way?)" % where
        text = text or self.body[:200].decode("utf-8", "replace")
        # an answer that quotes the request must not put it in the log
        text = re.sub(r"(oauth_[a-z_]+)\s*=\s*\"?[^\",&\s]*\"?", r"\1=<hidden>", text)
        return sanitize(text)[:300] or "HTTP %d" % self.status


def read_user(resp: XResponse, who: str) -> Tuple[Optional[Dict[str, Any]], str]:
    """A lookup's user object, its id checked, or (None, why): a 200 can carry only errors[] (no such user)."""
    data = resp.json()
    user = data.get("data") if isinstance(data, dict) else None
    if not isinstance(user, dict):
        return None, "no such X user %s: %s" % (who, resp.detail())
    uid = str(user.get("id", ""))
    if not USER_ID_RE.match(uid):
        return None, "X answered a user id that is not a number (%r) for %s" % (sanitize(uid)[:40], who)
    return user, ""


def default_opener(ca_file: Optional[str] = None, loopback: bool = False) -> Callable[[Any, float], Any]:
    """urllib, always verifying (--ca-file adds to the system's CAs), no redirects (a 3xx would take the signed request
    elsewhere and its 200 count as delivered), no proxy for a loopback base (it would see the Authorization header)."""
    import ssl
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None                             # the 3xx comes back as an HTTPError
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    handlers = [urllib.request.HTTPSHandler(context=ctx), NoRedirect()]
    if loopback:
        handlers.append(urllib.request.ProxyHandler({}))
    opener = urllib.request.build_opener(*handlers)
    return lambda req, timeout: opener.open(req, timeout=timeout)


class XClient:
    """Signs and sends one request at a time; never retries by itself."""

    def __init__(self, creds: Credentials, api_base: str = DEFAULT_API_BASE,
                 opener: Optional[Callable[[Any, float], Any]] = None, clock: Callable[[], float] = time.time,
                 nonce: Callable[[], str] = new_nonce, timeout: float = HTTP_TIMEOUT,
                 ca_file: Optional[str] = None) -> None:
        self.creds = creds
        self.api_base, loopback = check_api_base(api_base)
        self.opener = opener or default_opener(ca_file, loopback)
        self.clock, self.nonce, self.timeout = clock, nonce, timeout

    def __repr__(self) -> str:
        return "XClient(%s)" % self.api_base

    def call(self, method: str, path: str, json_body: Any = None, query: Optional[Dict[str, str]] = None,
             token: Optional[Tuple[str, str]] = None, extra_oauth: Sequence[Tuple[str, str]] = ()) -> XResponse:
        import http.client
        import urllib.error
        import urllib.request
        url = self.api_base + path
        if query:
            url += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
        tok, tok_secret = token if token is not None else (self.creds.token, self.creds.token_secret)
        auth = sign_request(method, url, self.creds.consumer_key, self.creds.consumer_secret, tok, tok_secret,
                            nonce=self.nonce(), timestamp=str(int(self.clock())), extra_oauth=extra_oauth)
        data = b"" if method == "POST" else None
        headers = {"Authorization": auth, "User-Agent": "birdsentinel/" + __version__}
        if json_body is not None:
            data = json.dumps(json_body, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"    # not signed: RFC 5849 3.4.1.3.1
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        host = urllib.parse.urlsplit(url).netloc
        try:
            resp = self.opener(req, self.timeout)
            status = getattr(resp, "status", None) or resp.getcode()
        except urllib.error.HTTPError as err:
            resp, status = err, err.code
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise XNetworkError("cannot reach X at %s: %s" % (host, sanitize(str(reason))[:200])) from None
        try:
            body = resp.read(1 << 20)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise XNetworkError("connection to %s broke while reading the answer: %s"
                                % (host, sanitize(str(exc))[:200])) from None
        finally:
            with contextlib.suppress(Exception):
                resp.close()
        return XResponse(int(status), {k.lower(): v for k, v in (resp.headers.items() if resp.headers else [])}, body)

    def send_dm(self, recipient_id: str, text: str) -> XResponse:
        return self.call("POST", "/2/dm_conversations/with/%s/messages" % urllib.parse.quote(recipient_id),
                         json_body={"text": text})

    def post_tweet(self, text: str) -> XResponse:
        return self.call("POST", "/2/tweets", json_body={"text": text})

    def user(self, to: str, fields: str = "") -> XResponse:
        """Look up @handle, a numeric id, or (to == "") the account itself."""
        path = ("/2/users/me" if not to else "/2/users/" + to if USER_ID_RE.match(to)
                else "/2/users/by/username/" + urllib.parse.quote(to.lstrip("@")))
        return self.call("GET", path, query={"user.fields": fields} if fields else None)


# ==== Actions ================================================================
# Programs run as argv lists: never through a shell.  Children run while matching goes on; at most max_children at once,
# the rest wait in a bounded queue; each is reaped, and killed after its timeout.


def build_argv(templates: Sequence[Template], line: str, match: Optional[re.Match], raw: bool = False) -> List[str]:
    """Each argument expanded alone: a log line stays one argument, without controls or escapes unless raw (tab stays);
    one whose '-' is not the config's ('$1', "''$1", '""$1': issue 10) gets a leading space: never an option."""
    argv = []
    for i, t in enumerate(templates):
        value = t.expand(line, match, str if raw else strip_controls).replace("\0", "")
        if i > 0 and value.startswith("-") and not t.head().startswith("-"):
            value = " " + value
        argv.append(value)
    return argv


class ActionRunner:
    """Runs a rule's actions for one matched line."""

    def __init__(self, out: Any, *, dry_run: bool = False, daemon: bool = False, hostname: str = "",
                 outbox: Optional[Outbox] = None, on_enqueue: Callable[[], None] = lambda: None,
                 users: Optional[Dict[str, str]] = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.out, self.dry_run, self.daemon = out, dry_run, daemon
        self.hostname = hostname or socket.gethostname().split(".")[0]
        self.outbox, self.on_enqueue = outbox, on_enqueue
        self.users = users or {}                    # user ids a dry run can name (no sender runs then)
        self.clock, self.monotonic = clock, monotonic
        self.children: List[Tuple[subprocess.Popen, str, float]] = []     # (child, what it runs, monotonic start)
        self.waiting: "collections.deque[Tuple[List[str], Optional[bytes], str]]" = collections.deque()
        self.pipes: Dict[Tuple[int, Tuple[Template, ...]], PipeWriter] = {}
        self.waiting_bytes = self.failures = self.enqueued = 0
        self.color = bool(getattr(out, "isatty", lambda: False)()) and not daemon
        self.child_env = child_env(os.environ)

    def run(self, action: Action, line: str, match: Optional[re.Match], message: str, origin: str = "") -> None:
        if action.when is not None and not action.when.allows(self.clock()):
            return
        if action.message is not None:
            message = action.message.expand(line, match)
        kind = action.kind
        if kind == "echo":
            self.echo(message, action.modes)
        elif kind == "bell":
            self.write_out("\a" * action.count)
        elif kind == "exec":
            self.spawn(build_argv(action.argv, line, match, action.raw), None, "exec")
        elif kind == "pipe":
            self.pipe(action, line, match, message)
        elif kind == "mail":
            self.mail(action, line, match, message)
        elif kind == "write":
            for user in action.recipients:
                self.spawn(["write", user], (sanitize(message) + "\n").encode("utf-8"), "write")
        elif kind in ("dm", "tweet"):
            for to in (action.recipients or ("",)) if kind == "dm" else ("",):
                self.enqueue(kind, to, message, action, origin)

    def write_out(self, text: str) -> None:
        try:                                        # not contextlib.suppress: this runs for every line
            if not self.daemon:
                self.out.write(text)
        except (OSError, ValueError):
            pass

    def flush(self) -> None:
        """After each block of lines: output appears at once, not flushed line by line."""
        if not self.daemon:
            with contextlib.suppress(OSError, ValueError):
                self.out.flush()

    def echo(self, message: str, modes: Sequence[str]) -> None:
        text = sanitize(message)
        if self.daemon:
            LOG.info("echo: %s", text)
            return
        codes = [ECHO_MODES[m] for m in modes if m != "normal"]
        if codes and self.color:
            text = "\x1b[%sm%s\x1b[0m" % (";".join(codes), text)
        self.write_out(text + "\n")

    def pipe(self, action: Action, line: str, match: Optional[re.Match], message: str) -> None:
        argv = build_argv(action.argv, line, match)
        data = ((message if action.raw else sanitize(message)) + "\n").encode("utf-8", "surrogateescape")
        if not action.keep_open or self.dry_run:
            self.spawn(argv, data, "pipe")
            return
        key = (action.lineno, action.argv)
        pipe = self.pipes.get(key)
        if pipe is None or pipe.proc.poll() is not None:
            with contextlib.suppress(AttributeError):
                pipe.lines.put_nowait(None)         # the old writer's thread ends
            try:
                pipe = self.pipes[key] = PipeWriter(self._popen(argv, subprocess.PIPE), self.monotonic)
            except OSError as exc:
                self.failed("cannot run pipe %s: %s" % (argv[0], exc.strerror))
                return
        pipe.put(data)

    def mail(self, action: Action, line: str, match: Optional[re.Match], message: str) -> None:
        recipients = list(action.recipients) or [current_user()]
        subject = sanitize(action.subject.expand(line, match) if action.subject else "birdsentinel alert")
        body = "To: %s\nSubject: %s\n\n%s\n" % (", ".join(recipients), subject, sanitize(message))
        sendmail = next((p for p in ("/usr/sbin/sendmail", "/usr/lib/sendmail") if os.path.exists(p)),
                        "/usr/sbin/sendmail")
        argv = build_argv(action.argv, line, match) if action.argv else [sendmail, "-oi", "-t"]
        self.spawn(argv, body.encode("utf-8"), "mail")

    def enqueue(self, kind: str, to: str, message: str, action: Action, origin: str = "") -> None:
        text = format_alert(origin or self.hostname, message)
        extra = {"defang": action.defang} if kind == "tweet" else {}
        self.enqueued += 1
        if self.dry_run or self.outbox is None:
            self.write_out(would_send({"kind": kind, "to": to, "text": text, "id": self.enqueued, **extra}, self.users))
            return
        self.outbox.add(kind, to, text, self.clock(), extra,
                        label="%s at %s line %d" % (kind, action.path, action.lineno))
        self.on_enqueue()

    def _popen(self, argv: List[str], stdin: int) -> subprocess.Popen:
        out = subprocess.DEVNULL if self.daemon else None
        return subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=out, close_fds=True, env=self.child_env)

    def spawn(self, argv: List[str], stdin: Optional[bytes], what: str) -> None:
        if self.dry_run:
            self.write_out("would run: %s\n" % sanitize(shlex.join(argv)))
            return
        size = len(stdin or b"") + sum(map(len, argv))
        if len(self.children) >= MAX_CHILDREN and (
                len(self.waiting) >= MAX_QUEUED_ACTIONS or self.waiting_bytes + size > MAX_QUEUED_BYTES):
            self.failed("%d actions already wait for a free slot: dropped %s %s" % (len(self.waiting), what, argv[0]))
            return
        self.waiting.append((argv, stdin, what))
        self.waiting_bytes += size
        self._start_waiting()

    def _start_waiting(self) -> None:
        """Start what waits, oldest first, while fewer than MAX_CHILDREN run."""
        while self.waiting and len(self.children) < MAX_CHILDREN:
            argv, stdin, what = self.waiting.popleft()
            self.waiting_bytes -= len(stdin or b"") + sum(map(len, argv))
            try:
                proc = self._popen(argv, subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
            except OSError as exc:
                self.failed("cannot run %s %s: %s" % (what, argv[0] if argv else "?", exc.strerror or exc))
                continue
            if stdin is not None:                   # writes, closes and reaps; a child gone early is no error
                threading.Thread(target=feed, args=(proc, stdin), daemon=True).start()
            self.children.append((proc, "%s %s" % (what, argv[0]), self.monotonic()))

    def failed(self, why: str) -> None:
        self.failures += 1
        LOG.error("%s", why)

    def reap(self) -> None:
        now = self.monotonic()
        for proc, what, started in list(self.children):
            rc = proc.poll()
            if rc is None and now - started > CHILD_TIMEOUT:
                proc.kill()
                rc = proc.wait()
                self.failed("%s ran longer than %.0f s: killed" % (what, CHILD_TIMEOUT))
            elif rc:
                self.failed("%s exited with status %d" % (what, rc))
            if rc is not None:
                self.children.remove((proc, what, started))
        for key, pipe in list(self.pipes.items()):
            if pipe.dropped and not pipe.told:      # once per child: the kill, if it comes, gives the count
                pipe.told = pipe.dropped
                self.failed("pipe %s is behind, its queue full: lines are dropped until it reads" % pipe.proc.args[0])
            if pipe.blocked_since is not None and now - pipe.blocked_since > PIPE_STALL:
                pipe.proc.kill()
                self.failed("pipe %s stopped reading for %.0f s: killed (%d line(s) not written); it is started again "
                            "at the next line" % (pipe.proc.args[0], PIPE_STALL, pipe.dropped + pipe.lines.qsize() + 1))
                del self.pipes[key]
        self._start_waiting()

    def busy(self) -> bool:
        return bool(self.children or self.waiting or any(p.blocked_since is not None for p in self.pipes.values()))

    def wait_all(self, timeout: Optional[float] = None) -> None:
        limit = self.monotonic() + (timeout if timeout is not None else CHILD_TIMEOUT + 5)
        self.reap()
        while self.busy() and self.monotonic() < limit:
            time.sleep(0.01)
            self.reap()

    def close(self) -> None:
        for pipe in self.pipes.values():
            try:
                pipe.lines.put_nowait(None)         # the writer closes the child's stdin: it ends
                pipe.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pipe.proc.kill()                    # a stalled reader, or one that does not end
        self.pipes.clear()


class PipeWriter:
    """A keep_open child fed by its own thread through PIPE_QUEUE bytes of queue: a stalled reader never blocks us
    (issue 9).  A stall is one write waiting PIPE_STALL: a full queue of 256 lines missed one (test_stalled_keep...)."""

    def __init__(self, proc: subprocess.Popen, clock: Callable[[], float]) -> None:
        self.proc, self.lines, self.clock = proc, queue.Queue(), clock     # type: queue.Queue[Optional[bytes]]
        self.blocked_since: Optional[float] = None      # the writer thread's alone, like `written`
        self.queued = self.written = self.dropped = self.told = 0   # bytes put, written; lines dropped, logged
        threading.Thread(target=self._write, daemon=True).start()

    def _write(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError, ValueError):
            for data in iter(self.lines.get, None):
                self.blocked_since = self.clock()
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
                self.blocked_since, self.written = None, self.written + len(data)
        self.blocked_since = None                   # a reader that exited (EPIPE) is no stall (a review)
        self.proc.communicate()                     # closes stdin, reaps: no fd, thread or zombie left per restart

    def put(self, data: bytes) -> None:
        """Queue a line; past PIPE_QUEUE bytes (or PIPE_QUEUE / 64 short lines) waiting it is dropped (counted)."""
        if self.queued - self.written + len(data) > PIPE_QUEUE or self.lines.qsize() >= PIPE_QUEUE >> 6:
            self.dropped += 1
            return
        self.queued += len(data)
        self.lines.put_nowait(data)


def feed(proc: subprocess.Popen, data: bytes) -> None:
    """A child's standard input, written and closed, then the child reaped; a write error only means it went early."""
    with contextlib.suppress(OSError, ValueError):
        proc.communicate(data)


def child_env(env: Any) -> Dict[str, str]:
    """What a child sees: locale, time zone, user, a fixed PATH; not $CREDENTIALS_DIRECTORY, proxies or more of ours."""
    return dict({k: v for k, v in env.items() if k in CHILD_ENV_KEEP or k.startswith("LC_")}, PATH=CHILD_PATH)


def current_user() -> str:
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "root"


# ==== Runtime ================================================================
# One run of the watcher: the loop over the sources, the commit point, signals.


def daemonize() -> int:
    """Detach (double fork, setsid).  The launcher waits until the daemon reports 'ok' (pid file written) or an error,
    and exits with it.  Returns the write end of that report pipe, in the daemon."""
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        report = b"".join(iter(lambda: os.read(r, 4096), b""))
        if report == b"ok":
            os._exit(EX_OK)
        sys.stderr.write(report.decode("utf-8", "replace") or "birdsentinel: the daemon died while starting\n")
        os._exit(EX_TEMPFAIL)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    return w


class App:
    """One run of the watcher: config, state, outbox, sender, input."""

    def __init__(self, opts: argparse.Namespace, env: Dict[str, str], out: Any = None) -> None:
        # absolute paths: a daemon changes to / before it opens anything
        for name in ("config_file", "examine", "pid_file", "script_dir", "state_file", "log_file",
                     "twitter_dir", "ca_file", "journal_dir"):
            if getattr(opts, name, None):
                setattr(opts, name, os.path.abspath(getattr(opts, name)))
        opts.tail_file = [os.path.abspath(p) for p in opts.tail_file]
        self.opts, self.env, self.out = opts, env, out or sys.stdout
        self.script_dir = opts.script_dir or default_script_dir(env)
        self.state_path = opts.state_file or os.path.join(self.script_dir, STATE_NAME)
        self.config_path = opts.config_file or default_config_path(os.path.expanduser("~"))
        self.stop, self.wake = threading.Event(), threading.Event()
        self.hup = self.dirty = False
        self.lock_fd: Optional[int] = None
        self.sender: Optional[threading.Thread] = None
        self.deliverer: Optional[Deliverer] = None
        self.outbox: Optional[Outbox] = None
        self.store: Optional[StateStore] = None
        self.state = State()
        self.last_save = 0.0
        self.oneoff = bool(opts.examine or opts.read_pipe)      # read once: no position, counters of its own

    # -- setting up ------------------------------------------------------
    def wants_x(self, config: Config) -> bool:
        return any(a.kind in ("dm", "tweet") for r in config.rules for a in r.actions)

    def open_state(self, persistent: bool, need_outbox: bool, config: Optional[Config] = None) -> None:
        if not (persistent or need_outbox):
            return
        dirs = {os.path.dirname(self.state_path) or ".", self.script_dir}
        for directory in dirs:
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise StateError("cannot create directory %s: %s" % (directory, exc.strerror)) from None
            check_dir_ours(directory)
        box = [os.path.join(self.script_dir, n) for n in (OUTBOX_NAME, DEAD_NAME)] if need_outbox else []
        for path in [self.state_path, self.state_path + ".lock"] + box:     # all refusals before anything is written
            if os.path.lexists(path):
                check_ours(os.lstat(path), path, private=not path.endswith(".lock"))
        self.lock_fd = acquire_lock(self.state_path)
        for directory in dirs:
            remove_stale_temp_files(directory)      # left by a kill during a write
        self.store = StateStore(self.state_path)
        self.state, _found = self.store.load()
        if box:
            self.outbox = Outbox(*box, **(config.outbox if config else {}))
            self.outbox.load(self.state.outbox_committed)
            self.outbox.born_committed = not persistent     # a one-off pass reads nothing again

    def make_client(self) -> Optional[XClient]:
        try:
            return client_from(self.opts, self.env)
        except BirdError as exc:
            LOG.error("%s; alerts for X wait in the outbox until this is fixed (then SIGHUP)", exc)
            return None

    def state_changed(self) -> None:
        """The sender changed the state: wake the loop, which saves it."""
        self.dirty = True
        with contextlib.suppress(OSError, AttributeError):
            os.write(self.wake_w, b"s")

    def save_state(self, sources: Sequence[Any], force: bool = False,
                   answer: Optional[Callable[[bool], None]] = None) -> bool:
        """The commit point: the outbox's new entries reach the disk, then the positions after their lines (offsets,
        journal cursor) with the highest id they cover, in one atomic write; only then may the sender take them (issue
        9: a kill in between re-read and re-sent them). False when what was read is not durable yet.  omprog's answer
        goes before the sender takes them: a kill in between sent an alert that rsyslog, told no OK, sent again."""
        now, ob = time.monotonic(), self.outbox
        ok = self.store is None or not force and (not self.dirty or now - self.last_save < 0.5)     # nothing to do
        saved = False                               # only a save that happened lets the sender take more
        if not ok and (ob is None or ob.sync()):    # positions wait until the alerts are safe
            self.state.outbox_committed = ob.next_id - 1 if ob is not None else self.state.outbox_committed
            for s in sources:
                if isinstance(s, JournalSource):
                    self.state.journal[s.key] = s.snapshot()
                elif isinstance(s, FileTailer):
                    self.state.files[s.path] = s.snapshot()
                elif isinstance(s, OmprogSource):
                    self.state.omprog = list(s.taken)
            ok = saved = self.store.save(self.state)        # type: ignore[union-attr]
            self.dirty, self.last_save = (False, now) if ok else (self.dirty, self.last_save)
        if answer is not None:
            answer(ok)
            self.dirty = self.dirty or saved and bool(self.state.omprog)      # a save soon tells they were answered
        if saved and ob is not None and ob.committed != self.state.outbox_committed:
            ob.committed = self.state.outbox_committed
            self.wake.set()
        return ok

    # -- signals ---------------------------------------------------------
    def install_signals(self) -> int:
        r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)

        def on_stop(signum: int, frame: Any) -> None:
            self.stop.set()
            self.wake.set()

        def on_hup(signum: int, frame: Any) -> None:
            self.hup = True

        for signum, handler in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (signal.SIGHUP, on_hup),
                                (signal.SIGPIPE, signal.SIG_IGN)):
            signal.signal(signum, handler)
        return r

    def reload(self, sentinel: Sentinel, runner: ActionRunner) -> None:
        self.hup = False
        try:
            config = parse_config(self.config_path)
        except BirdError as exc:
            LOG.error("keeping the running configuration: %s", exc)
            return
        if self.wants_x(config) and self.outbox is None:
            LOG.error("keeping the running configuration: the new one sends to X, which needs a restart")
            return
        runner.close()
        sentinel.set_config(config)
        if self.deliverer is not None:
            self.deliverer.budget = config.budget
            self.deliverer.forget_users(config)
            self.deliverer.client = self.make_client() or self.deliverer.client      # new tokens after --authorize
            self.deliverer.nudge()
            self.wake.set()
        LOG.warning("reloaded configuration from %s (%d rules)", self.config_path, len(config.rules))

    # -- running ---------------------------------------------------------
    def run(self) -> int:
        opts = self.opts
        config = parse_config(self.config_path)     # errors reach the terminal first
        x_needed = self.wants_x(config) and not opts.dry_run
        persistent = not (opts.examine or opts.read_pipe or opts.dry_run)
        self.open_state(persistent, x_needed, config)       # a daemon is persistent: its script dir is made
        report_fd = daemonize() if opts.daemon else None
        if report_fd is not None and self.lock_fd is not None:     # the lock names the daemon, not the launcher
            os.ftruncate(self.lock_fd, 0)
            os.pwrite(self.lock_fd, b"%d\n" % os.getpid(), 0)
        try:
            syslog = setup_logging(opts, self.script_dir, opts.daemon, started=True)
            if opts.pid_file:
                try:
                    if os.path.lexists(opts.pid_file):
                        check_ours(os.lstat(opts.pid_file), opts.pid_file, private=False)
                    atomic_write(opts.pid_file, b"%d\n" % os.getpid(), 0o644)
                except OSError as exc:
                    raise StateError("cannot write pid file %s: %s" % (opts.pid_file, exc.strerror)) from None
            wake_r = self.install_signals()
            if report_fd is not None:
                os.write(report_fd, b"ok")
                os.close(report_fd)
                report_fd = None
            if x_needed and self.outbox is not None:
                self.deliverer = Deliverer(self.outbox, self.make_client(), self.state.delivery, config.budget,
                                           on_change=self.state_changed)
                self.deliverer.forget_users(config)
                self.sender = threading.Thread(target=self.deliverer.run, args=(self.stop, self.wake), daemon=True)
                self.sender.start()
            runner = ActionRunner(self.out, dry_run=opts.dry_run, daemon=opts.daemon or opts.omprog,  # stdout: protocol
                                  outbox=self.outbox, on_enqueue=lambda: None if persistent else self.wake.set(),
                                  users=self.state.delivery.users)
            sentinel = Sentinel(config, runner, Counters() if self.oneoff else self.state.counters)  # one-off: its own
            if syslog:                          # our own syslog lines must not trigger rules
                sentinel.self_tag = "birdsentinel[%d]:" % os.getpid()
            return self.run_sources(sentinel, runner, wake_r)
        except BirdError as exc:
            if report_fd is not None:
                os.write(report_fd, ("birdsentinel: %s\n" % exc).encode("utf-8"))
                os.close(report_fd)
            raise
        finally:
            self.stop_sender(1.0)               # a send in flight is the one duplicate a kill may cost
            if opts.pid_file and not opts.once:
                with contextlib.suppress(OSError), open(opts.pid_file) as fh:
                    if fh.read().strip() == str(os.getpid()):
                        os.unlink(opts.pid_file)

    def stop_sender(self, timeout: float) -> bool:
        """Stop the sender thread, waiting at most `timeout` for a send in flight; False if it is still in one."""
        self.stop.set()
        self.wake.set()
        sender, self.sender = self.sender, None
        if sender is not None:
            sender.join(timeout=timeout)
        return sender is None or not sender.is_alive()

    def finish_delivery(self, deadline: float) -> None:
        """--once, --examine: send what can go now, without waiting."""
        if self.deliverer is None:
            return
        if not self.stop_sender(HTTP_TIMEOUT + 5):     # still in a slow send: two senders would send twice
            deadline = 0.0
        while time.monotonic() < deadline and len(self.deliverer.outbox):
            if self.deliverer.step() > 0:
                break
        if len(self.deliverer.outbox):
            LOG.warning("%d message(s) wait in the outbox for the next run", len(self.deliverer.outbox))

    def open_sources(self, sentinel: Sentinel) -> List[Any]:
        """--examine FILE, --read-pipe CMD (run as argv), --omprog, the journal, or the files to follow."""
        opts, on_text, on_entry = self.opts, sentinel.process_text, sentinel.process_entry
        if opts.omprog:
            return [OmprogSource(on_entry, self.outbox, self.state.omprog)]
        if journal_wanted(opts):
            problem = journal_problem(opts.journal_dir)
            if problem:
                raise NoInputError(problem)
            if not opts.journal:
                LOG.info("neither /var/log/messages nor /var/log/syslog exists: reading the systemd journal")
            return [JournalSource(opts.journal_dir, opts.journal_match, on_entry, sentinel.notify, self.state.journal,
                                  not opts.once)]
        if opts.examine:
            try:
                return [StreamSource(opts.examine, os.open(opts.examine, os.O_RDONLY | os.O_CLOEXEC), on_text)]
            except OSError as exc:
                raise NoInputError("cannot read %s: %s" % (opts.examine, exc.strerror)) from None
        if opts.read_pipe:
            try:
                argv = shlex.split(opts.read_pipe)
            except ValueError as exc:
                raise Usage("cannot split --read-pipe command: %s" % exc) from None
            if not argv:
                raise Usage("--read-pipe needs a command")
            try:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            except OSError as exc:
                raise NoInputError("cannot run %s: %s" % (argv[0], exc.strerror)) from None
            return [StreamSource(argv[0], proc.stdout.fileno(), on_text, proc)]     # type: ignore[union-attr]
        return [FileTailer(p, on_text, self.state.files.get(p)) for p in default_files(opts)]

    def run_sources(self, sentinel: Sentinel, runner: ActionRunner, wake_r: int) -> int:
        """The one loop: poll every source (a bounded read each), commit, then wait for inotify, a signal or a pipe.
        --once, --examine and --read-pipe are the same loop with an end."""
        opts = self.opts
        sources = self.open_sources(sentinel)
        files = [s for s in sources if isinstance(s, FileTailer)]
        omprog = sources[0] if isinstance(sources[0], OmprogSource) else None
        finite = opts.once or self.oneoff
        ino: Optional[Inotify] = None
        if files:
            try:
                ino = Inotify()
            except OSError as exc:
                LOG.info("inotify unavailable (%s): polling every second", exc)
        if not self.oneoff:
            LOG.info("watching %s with %d rules", ", ".join(s.path for s in sources), len(sentinel.rules))
        enqueued, matches = runner.enqueued, sentinel.matches
        try:
            while True:
                for src in sources:
                    self.dirty = src.poll() > 0 or self.dirty       # positions to save
                runner.reap()
                if not self.oneoff:         # the commit point, right after alerts reach the outbox
                    # new alerts; for omprog (which answers for each message) new counters too
                    force = runner.enqueued != enqueued or omprog is not None and sentinel.matches != matches
                    self.save_state(sources, force, omprog.answer if omprog is not None else None)
                enqueued, matches = runner.enqueued, sentinel.matches
                more = any(s.more for s in sources)         # a bounded read left more to read
                if opts.once and not more or sentinel.quit or self.stop.is_set() or all(s.done for s in sources):
                    break
                if self.hup:
                    self.reload(sentinel, runner)
                fds = [wake_r] + [s.fd for s in sources if isinstance(s, StreamSource) and s.live]
                if ino is not None:         # a new watch: what was written between our read and it has no
                    for t in files:         # event, so read once more (found chasing a CI failure; no test forces it)
                        more = ino.watch(os.path.dirname(os.path.abspath(t.path)), Inotify.DIR_MASK) | more
                        more = ino.watch(t.path, Inotify.FILE_MASK, t.cur.ident if t.cur else None) | more
                    fds.append(ino.fd)
                idle = 1.0 if ino is None else 10.0
                timeout = min(idle, 0.0 if more else 0.05 if runner.busy()
                              else RETIRED_GRACE / 4 if any(t.retired for t in files) else 0.5 if self.dirty else idle)
                ready, _, _ = select.select(fds, [], [], timeout)     # a signal: its wake-up fd is ready (PEP 475)
                for fd in {wake_r, ino.fd if ino is not None else -1}.intersection(ready):
                    with contextlib.suppress(BlockingIOError, InterruptedError):     # inotify events, wake-ups: the
                        while os.read(fd, 65536):                                   # work is the next poll's
                            pass
        finally:
            runner.wait_all(timeout=None if finite else 10)
            runner.close()
            self.save_state(sources, force=True)        # the commit: then a finite run delivers
            if finite:
                self.finish_delivery(time.monotonic() + 60)
                self.save_state(sources, force=True)    # tweet numbers, user ids, budget use
            for src in sources:
                src.close()
            if ino is not None:
                os.close(ino.fd)
            (LOG.debug if self.oneoff else LOG.info)("stopped after %d characters of new lines, %d matches",
                                               sentinel.bytes, sentinel.matches)
        return EX_FAIL if (finite and runner.failures) else EX_OK


# ==== Command line ===========================================================
UNSUPPORTED_FLAGS = types.MappingProxyType({
    "--awk-field-syntax": "use regex groups ($1..$9) in the watchfor pattern instead",
    **dict.fromkeys(("--extra-include-dir", "-I", "--extra-module", "-M"),
                    "custom Perl action modules are not supported"),
    **dict.fromkeys(("--old-style-config", "-O"), "rewrite the config in swatch 3 syntax (watchfor /re/ + actions)"),
    "--dump-script": "there is no generated script; --check shows what the config does",
    "--input-record-separator": "lines end at newlines"})
IGNORED_FLAGS = ("--use-cpan-file-tail", "--tail-program-name", "--tail-args", "--restart-time",
                 "-r", "--debug", "--noawk-field-syntax")
Usage = bird_error("Usage", EX_USAGE, "A command line that cannot be run as given.")


class ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:          # no exit from inside a library call
        raise Usage(message)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    for flag in (a.split("=", 1)[0] for a in argv):
        if flag in UNSUPPORTED_FLAGS:
            raise Usage("%s is not supported: %s" % (flag, UNSUPPORTED_FLAGS[flag]))
    p = ArgParser(prog="birdsentinel", add_help=False, allow_abbrev=False)
    for flags in (("-h", "--help"), ("-V", "--version"), ("--daemon",), ("--once",), ("--dry-run",),
                  ("--check",), ("--online",), ("--authorize",), ("--tweet",), ("--journal",), ("--omprog",)):
        p.add_argument(*flags, action="store_true")
    for flags in (("-c", "--config-file"), ("-f", "--examine"), ("-p", "--read-pipe"), ("--pid-file",),
                  ("--script-dir",), ("--state-file",), ("--log-file",), ("--api-base",), ("--ca-file",),
                  ("--send",), ("--to",), ("--journal-dir",), ("--convert-config",), ("-o", "--output")):
        p.add_argument(*flags)
    p.add_argument("-t", "--tail-file", action="append", default=[])
    p.add_argument("--journal-match", action="append", default=[])
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--twitter-dir", default=DEFAULT_TWITTER_DIR)
    for flag in IGNORED_FLAGS:
        p.add_argument(flag, nargs="?", const=True, dest=flag)     # its own name: main warns that it does nothing
    opts = p.parse_args(list(argv))
    opts.journal = opts.journal or bool(opts.journal_dir)
    if len([m for m in (opts.examine, opts.read_pipe, opts.tail_file, opts.journal, opts.omprog) if m]) > 1:
        raise Usage("give only one of -t, --examine, --read-pipe, --journal (or --journal-dir) and --omprog")
    for m in opts.journal_match:
        if not opts.journal or not re.match(r"^[A-Z0-9_]+=", m):
            raise Usage("--journal-match takes FIELD=VALUE (e.g. _SYSTEMD_UNIT=ssh.service) and goes with --journal")
    commands = [c for c in ("authorize", "send", "check", "convert_config") if getattr(opts, c)]
    if len(commands) > 1:
        raise Usage("give only one of --authorize, --send, --check and --convert-config")
    for flag, command in (("output", "convert_config"), ("online", "check"), ("to", "send"), ("tweet", "send")):
        if getattr(opts, flag) and not getattr(opts, command):
            raise Usage("--%s goes with --%s" % (flag, command.replace("_", "-")))
    if opts.daemon and (opts.once or opts.examine or opts.dry_run or opts.omprog or commands):
        raise Usage("--daemon runs the watcher; it does not combine with --once, --examine, "
                    "--dry-run, --omprog, --check, --send or --authorize")
    return opts


def default_config_path(home: str) -> str:
    paths = [os.path.join(home, name) for name in (".swatchdogrc", ".swatchrc")]
    return next((p for p in paths if os.path.exists(p)), paths[0])


def default_script_dir(env: Dict[str, str]) -> str:
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "birdsentinel")


def setup_logging(opts: argparse.Namespace, script_dir: str = "", daemon: bool = False, started: bool = False) -> bool:
    """Before the watcher starts, all goes to stderr (for the terminal or init script); then --log-file, or for a daemon
    syslog (else SCRIPTDIR/birdsentinel.log).  True for syslog, whose lines may come back in a watched file."""
    LOG.setLevel(logging.DEBUG if opts.verbose else logging.WARNING if opts.check else logging.INFO)
    LOG.propagate = False
    for h in list(LOG.handlers):
        LOG.removeHandler(h)
        h.close()
    handler: logging.Handler
    fmt = "birdsentinel[%(process)d]: %(levelname)s: %(message)s"
    syslog = started and daemon and not opts.log_file and os.path.exists("/dev/log")
    log_file = opts.log_file or (os.path.join(script_dir, LOG_NAME) if daemon else None)
    if started and (opts.log_file or daemon):
        import logging.handlers as loghandlers      # local name: 'logging' stays the module
    try:
        if syslog:
            handler = loghandlers.SysLogHandler(address="/dev/log", facility=loghandlers.SysLogHandler.LOG_DAEMON)
        elif started and log_file:                  # --log-file, or the daemon's SCRIPTDIR/birdsentinel.log
            if not opts.log_file:
                os.close(open_ours(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT))
            handler, fmt = loghandlers.WatchedFileHandler(log_file), "%(asctime)s " + fmt
        else:
            handler, fmt = logging.StreamHandler(sys.stderr), "birdsentinel: %(levelname)s: %(message)s"
    except OSError as exc:
        LOG.addHandler(logging.StreamHandler(sys.stderr))
        raise StateError("cannot open log %s: %s" % (log_file or "/dev/log", exc.strerror)) from None
    handler.setFormatter(logging.Formatter(fmt))
    LOG.addHandler(handler)
    return syslog


def cmd_send(opts: argparse.Namespace, env: Dict[str, str], out: Any) -> int:
    """Drop-in for the classic one-argument sender: exit 0 only on 201; --dry-run shows the parts, connects nowhere."""
    text = sanitize(opts.send)
    if not text.strip():
        raise Usage("--send needs a non-empty message")
    kind = "tweet" if opts.tweet else "dm"
    to = opts.to or ""
    if kind == "dm" and to and not (USER_ID_RE.match(to) or HANDLE_RE.match(to)):
        raise Usage("--to takes @handle or a numeric user id, not %r" % to)
    to = "@" + to if to and not USER_ID_RE.match(to) and not to.startswith("@") else to
    entry = {"kind": kind, "to": to, "text": text, "seq": int(time.time()) % 100000}
    if opts.dry_run:
        out.write(would_send(entry, {}))
        return EX_OK
    client = client_from(opts, env)
    to_id = to
    if kind == "dm" and not USER_ID_RE.match(to):
        to_id = str(look_up(client, to, "looking up %s" % (to or "the account"))[0]["id"])
    for part in entry_parts(entry):
        resp = client.send_dm(to_id, part) if kind == "dm" else client.post_tweet(part)
        if kind == "dm" and resp.status == 403:
            LOG.error("%s", dm_hint(to or "the account", "the sending account"))
        check_answer(resp, "sending the %s" % ("post" if kind == "tweet" else "DM"))
    out.write("sent\n")
    return EX_OK


def check_answer(resp: XResponse, doing: str) -> None:
    """Raise the error (exit status) of --send and --check when X did not accept what we were doing."""
    cls = classify(resp)
    if cls == "auth":
        raise CredentialsError("X rejected the credentials (401: %s) while %s; run --authorize"
                               % (resp.detail(), doing))
    if cls == "credit":
        raise XRefusedError("X refused for lack of credits or access (%d: %s) while %s: add credits (or raise the "
                            "spend limit) in the X developer console" % (resp.status, resp.detail(), doing))
    if cls != "ok":
        error = XRefusedError if cls in ("rate", "retry") else BirdError
        raise error("X answered %d while %s: %s" % (resp.status, doing, resp.detail()))


def look_up(client: XClient, to: str, doing: str) -> Tuple[Dict[str, Any], XResponse]:
    """X's user object of @handle or id `to` ('': the account itself), and the answer; else raise, as check_answer."""
    resp = client.user(to)
    check_answer(resp, doing)
    user, why = read_user(resp, to or "(the account)")
    if user is None:
        raise BirdError(why)
    return user, resp


def cmd_authorize(opts: argparse.Namespace, env: Dict[str, str], out: Any, inp: Any) -> int:
    """PIN ("oob") flow: request token, user approves, access token."""
    client = client_from(opts, env, False)
    resp = client.call("POST", "/oauth/request_token", token=("", ""), extra_oauth=(("oauth_callback", "oob"),))
    form = resp.form()
    if resp.status != 200 or form.get("oauth_callback_confirmed") != "true" or "oauth_token" not in form:
        error = CredentialsError if resp.status == 401 else BirdError
        raise error("X refused the request token (HTTP %d: %s); check the consumer key and secret, "
                    "and that the app has a callback URL set" % (resp.status, resp.detail()))
    url = "%s/oauth/authorize?oauth_token=%s" % (client.api_base, percent_encode(form["oauth_token"]))
    out.write("Open this address, log in as the account that will SEND the alerts, and approve:\n"
              "  %s\nThen type the PIN X shows: " % url)
    out.flush()
    pin = (inp.readline() or "").strip()
    if not re.match(r"^[0-9A-Za-z]{1,32}$", pin):
        raise Usage("no PIN given")
    resp = client.call("POST", "/oauth/access_token", token=(form["oauth_token"], form.get("oauth_token_secret", "")),
                       extra_oauth=(("oauth_verifier", pin),))
    tok = resp.form()
    if resp.status != 200 or "oauth_token" not in tok or "oauth_token_secret" not in tok:
        raise BirdError("X refused the PIN (HTTP %d: %s); PINs work once: run --authorize again"
                        % (resp.status, resp.detail()))
    ref = os.stat(os.path.join(opts.twitter_dir, "consumer-key"))
    mode = 0o640 if stat.S_IMODE(ref.st_mode) == 0o640 else 0o600
    for name, value in (("access-token", tok["oauth_token"]), ("access-token-secret", tok["oauth_token_secret"])):
        path = os.path.join(opts.twitter_dir, name)
        try:
            atomic_write(path, (value + "\n").encode("utf-8"), mode)
            if mode == 0o640 and os.geteuid() == 0:
                os.chown(path, ref.st_uid, ref.st_gid)
        except OSError as exc:
            raise StateError("cannot write %s: %s" % (path, exc.strerror)) from None
    out.write("\nAuthorized as @%s (user id %s). Tokens written to %s (mode %04o).\n"
              % (sanitize(tok.get("screen_name", "?")), sanitize(tok.get("user_id", "?")), opts.twitter_dir, mode))
    return EX_OK


def cmd_check(opts: argparse.Namespace, env: Dict[str, str], out: Any) -> int:
    """The config, then what an admin must fix before the daemon can work, one line each: the classic layout's
    directories, owners and modes, the logs, the credentials; --online: the account and each DM recipient."""
    config_path = opts.config_file or default_config_path(os.path.expanduser("~"))
    config = parse_config(config_path)
    watch = sum(1 for r in config.rules if r.kind == "watchfor")
    out.write("config %s: %d rules (%d watchfor, %d ignore) from %d file(s)\n"
              % (config_path, len(config.rules), watch, len(config.rules) - watch, len(config.files)))
    problems: List[str] = []
    script_dir = opts.script_dir or default_script_dir(env)
    if not os.path.isdir(script_dir):
        problems.append("script dir %s does not exist: mkdir -m 0750 %s and chown it to the daemon user"
                        % (script_dir, script_dir))
    elif not os.access(script_dir, os.W_OK | os.X_OK):
        problems.append("script dir %s is not writable by %s: chown %s %s"
                        % (script_dir, current_user(), current_user(), script_dir))
    else:
        try:
            check_dir_ours(script_dir)              # what the daemon will refuse
        except UnsafeFileError as exc:
            problems.append(str(exc))
    if opts.pid_file and not os.access(os.path.dirname(os.path.abspath(opts.pid_file)), os.W_OK):
        problems.append("pid file %s cannot be written by %s: use a directory the daemon user owns"
                        % (opts.pid_file, current_user()))
    for path in config.files:
        mode = os.stat(path).st_mode                # whoever can edit the rules can make exec run anything
        if mode & (stat.S_IWOTH | stat.S_IWGRP):
            problems.append("config file %s is writable by %s (mode %04o): chmod 0644 %s (exec rules run "
                            "programs)" % (path, "everyone" if mode & stat.S_IWOTH else "its group",
                                           stat.S_IMODE(mode), path))
    journal = journal_wanted(opts)
    if journal:
        out.write("source: the systemd journal%s\n" % (" in " + opts.journal_dir if opts.journal_dir else ""))
        problems += [p for p in [journal_problem(opts.journal_dir)] if p]
    elif not (opts.examine or opts.read_pipe or opts.omprog):
        out.write("source: %s\n" % ", ".join(default_files(opts)))
        for path in default_files(opts):            # -t's files, else the default one
            if not os.path.exists(path):
                problems.append("log file %s does not exist (it will be waited for)" % path)
            elif not os.access(path, os.R_OK):
                problems.append("log file %s is not readable by %s: add the user to the group that owns it "
                                "(usually adm)" % (path, current_user()))
    if opts.online or any(a.kind in ("dm", "tweet") for r in config.rules for a in r.actions):
        directory, checked = credential_dir(opts.twitter_dir, env)
        if not os.path.isdir(directory):
            problems.append("credential dir %s does not exist: mkdir -m 0750 %s; chgrp monitor %s"
                            % (directory, directory, directory))
        else:
            st = os.stat(directory)
            if checked and st.st_mode & (stat.S_IWOTH | stat.S_IROTH | stat.S_IXOTH):
                problems.append("credential dir %s is open to every user (mode %04o): chmod 0750 %s"
                                % (directory, stat.S_IMODE(st.st_mode), directory))
            for name in SECRET_NAMES:
                try:
                    read_secret(os.path.join(directory, name), checked)
                except CredentialsError as exc:
                    problems.append(str(exc))
    for r in [r for r in config.rules if not journal and any(t.field for t in r.pattern.terms)]:
        out.write("WARNING: the rule at %s line %d tests journal fields, which only --journal entries have: "
                  "it never matches here\n" % (r.path, r.lineno))
    out.write("".join("FIX: %s\n" % p for p in problems))
    if opts.online:
        client = client_from(opts, env)
        me, resp = look_up(client, "", "asking X who the token belongs to")
        sender = "@" + sanitize(str(me.get("username")))
        level = resp.headers.get("x-access-level", "")
        out.write("X account %s (id %s), access level %s\n" % (sender, me["id"], sanitize(level) or "not reported"))
        if level and "directmessages" not in level:
            out.write("WARNING: this token cannot send direct messages (access level %s): set the app's "
                      "permissions to 'Read, write, and Direct Messages', then run --authorize again\n"
                      % sanitize(level))
        for to in dm_recipients(config):            # can X deliver our DMs to each of them?
            resp = client.user(to, fields="receives_your_dm")
            user, problem = read_user(resp, to or sender)
            if classify(resp) != "ok":
                problem = "cannot look up %s: X answered %d: %s" % (to or sender, resp.status, resp.detail())
            elif user is not None and to and user.get("receives_your_dm") is False:
                problem = dm_hint(to, sender)
            if problem:
                problems.append(problem)
                out.write("FIX: %s\n" % problem)
            else:
                out.write("recipient %s: can receive DMs from %s\n" % (to or sender + " (itself)", sender))
    if not problems:
        out.write("ok\n")
    return EX_CONFIG if problems else EX_OK


def cmd_convert(opts: argparse.Namespace, out: Any, err: Any) -> int:
    """--convert-config: the swatch config in this syntax, to -o's file or stdout; on stderr what changed and what
    could not be converted (commented out, marked # CONVERT:).  0 when the result loads as it is."""
    result, notes, ok = convert_config(opts.convert_config, read_config_text(opts.convert_config, "", 0))
    data = "# converted by birdsentinel --convert-config from %s\n%s" % (opts.convert_config, result)
    err.write("".join(n + "\n" for n in notes) + "birdsentinel: %d note(s); %s\n" % (len(notes), "the result loads"
              if ok else "it needs a hand where the notes say (# CONVERT: marks what is commented out)"))
    if not opts.output:
        out.write(data)
    else:
        try:
            atomic_write(opts.output, data.encode("utf-8"), 0o644)
        except OSError as exc:
            raise StateError("cannot write %s: %s" % (opts.output, exc.strerror)) from None
    return EX_OK if ok else EX_CONFIG


def dm_recipients(config: Config) -> List[str]:
    """Every `dm` recipient of the config ('' is the account itself)."""
    return sorted({r for rule in config.rules for a in rule.actions if a.kind == "dm" for r in (a.recipients or ("",))})


def main(argv: Optional[Sequence[str]] = None, env: Optional[Dict[str, str]] = None,
         out: Any = None, inp: Any = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = dict(os.environ) if env is None else env
    out, inp = out or sys.stdout, inp or sys.stdin
    try:
        opts = parse_args(argv)
        if opts.help or opts.version:
            out.write(__doc__ if opts.help else "birdsentinel %s\n" % __version__)
            return EX_OK
        setup_logging(opts)
        for flag in [f for f in IGNORED_FLAGS if getattr(opts, f) is not None]:
            LOG.warning("%s is accepted for swatch compatibility and has no effect", flag)
        if opts.authorize:
            return cmd_authorize(opts, env, out, inp)
        if opts.send is not None:
            return cmd_send(opts, env, out)
        if opts.check:
            return cmd_check(opts, env, out)
        if opts.convert_config:
            return cmd_convert(opts, out, sys.stderr)
        return App(opts, env, out).run()
    except BirdError as exc:
        LOG.error("%s", exc) if LOG.handlers else sys.stderr.write("birdsentinel: %s\n" % exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return EX_OK
    except Exception:                       # a bug: say so where the admin looks
        LOG.critical("internal error, please report it (state and outbox are kept)", exc_info=True)
        return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
