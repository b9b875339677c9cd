"""Security: counters a flood of keys cannot game, a script dir whose files are
ours, our own syslog lines known by their header only, no HTTP redirects or
proxies, credential files nobody else controls, scrubbed child environments,
and exec's leading-dash and escape-sequence guards.  Runs as root (here and in
CI): a foreign owner is uid 65534; every subprocess has a timeout (a FIFO that
blocks start-up fails a test, it does not hang the run)."""

import http.server
import io
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import unicodedata

import pytest

import birdsentinel as bs
from conftest import record_secret_scan_text
from fakes import T0, FakeClock, print_figures, state_json
from fakex import FakeX, write_creds

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = 65534


def rig(tmp_path, text):
    """A Sentinel on a fake clock whose echo actions print into a StringIO."""
    config = bs.parse_config(str(tmp_path / "swatch.conf"), text)
    out, clock = io.StringIO(), FakeClock(T0)
    sentinel = bs.Sentinel(config, bs.ActionRunner(out), bs.Counters(), clock=clock)
    return sentinel, out, clock


def feed(sentinel, lines):
    sentinel.process_text("".join(line + "\n" for line in lines))


def env_for(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("BIRDSENTINEL_API_BASE", "CREDENTIALS_DIRECTORY", "XDG_STATE_HOME")
           and not k.lower().endswith("_proxy")}
    env.update(HOME=str(tmp_path), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def run_cli(script, args, tmp_path, env=None, timeout=10):
    try:
        r = subprocess.run([PY, script] + [str(a) for a in args], capture_output=True, cwd=str(tmp_path),
                           env=env or env_for(tmp_path), timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("birdsentinel %s did not finish within %d s (blocked on a FIFO?)" % (args, timeout))
    record_secret_scan_text("birdsentinel stdout", r.stdout)
    record_secret_scan_text("birdsentinel stderr", r.stderr)
    return r


# ---- 1. counters that cannot be gamed -------------------------------------------

SSH = "watchfor /Failed password for \\S+ from (\\S+)/\n  echo\n"
ATTACKER = "203.0.113.9"


def attempt(ip):
    return "Failed password for root from %s port 22 ssh2" % ip


def decoy(i):
    return attempt("10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255))


def brute_force_among_decoys(sentinel, clock, decoys=10_001, after=200):
    """Five attempts from ATTACKER with `decoys` one-off sources between
    them (the table fills up half way), then `after` more decoys."""
    bounds = [0, 2500, 5000, 7500, decoys]
    feed(sentinel, [attempt(ATTACKER)])
    for lo, hi in zip(bounds, bounds[1:]):
        clock.t += 1
        feed(sentinel, [decoy(i) for i in range(lo, hi)])
        feed(sentinel, [attempt(ATTACKER)])
    feed(sentinel, [decoy(i) for i in range(decoys, decoys + after)])


def notices(out):
    return [ln for ln in out.getvalue().splitlines() if "tracking suspended" in ln]


def table_of(sentinel, kind):
    """The first rule's own counters: state[kind] is {rule.ident: {key: [t, n]}}."""
    tables, ident = getattr(sentinel.counters, kind), sentinel.rules[0].ident
    assert isinstance(tables.get(ident), dict), "no table of its own for %s in state[%r]" % (ident, kind)
    return tables[ident]


def test_decoy_keys_cannot_evict_a_threshold_counter(tmp_path):
    sentinel, out, clock = rig(tmp_path, SSH + "  threshold track_by=$1,type=threshold,count=5,seconds=3600\n")
    brute_force_among_decoys(sentinel, clock)
    alerts = [ln for ln in out.getvalue().splitlines() if ATTACKER in ln and "tracking" not in ln]
    assert alerts == [attempt(ATTACKER)], "the 5th attempt from %s did not alert" % ATTACKER
    (notice,) = notices(out)                                     # once, not once per new key
    assert "too many distinct keys" in notice and "tracking suspended for new keys" in notice
    table = table_of(sentinel, "thresholds")
    assert ATTACKER in table and len(table) <= bs.MAX_TABLE


def test_decoy_keys_cannot_evict_a_throttle_counter(tmp_path):
    sentinel, out, clock = rig(tmp_path, SSH + "  throttle 15:00\n")
    brute_force_among_decoys(sentinel, clock)
    printed = out.getvalue().splitlines()
    assert printed.count(attempt(ATTACKER)) == 1, "repeats inside the 15 minutes were not suppressed"
    assert len(notices(out)) == 1
    table = table_of(sentinel, "throttles")
    assert attempt(ATTACKER) in table and len(table) <= bs.MAX_TABLE
    clock.t += 901                                    # the next one reports what was suppressed
    feed(sentinel, [attempt(ATTACKER)])
    assert out.getvalue().splitlines()[-1] == attempt(ATTACKER) + " (seen 6 times)"


def lines_per_second(tmp_path, blocks, budget):
    """Rate through process_text, block by block; stops once `budget` seconds are spent."""
    sentinel, _out, _clock = rig(tmp_path, SSH + "  threshold track_by=$1,type=threshold,count=1000000,seconds=3600\n")
    done, start = 0, time.perf_counter()
    for text, n in blocks:
        sentinel.process_text(text)
        done += n
        if time.perf_counter() - start > budget:
            break
    return done / (time.perf_counter() - start)


def test_distinct_keys_cost_no_more_than_one_key(tmp_path, request):
    n, block = 280_000, 1000
    fmt = "Failed password for root from 198.51.%07d port 22 ssh2\n"

    def blocks(key):
        return [("".join(fmt % key(i) for i in range(lo, lo + block)), block) for lo in range(0, n, block)]
    same, distinct = blocks(lambda i: 0), blocks(lambda i: i)
    same_rate = max(lines_per_second(tmp_path, same, 60) for _ in range(2))
    budget = 3 * n / same_rate + 2                   # enough for a rate 3x slower: then stop
    distinct_rate = max(lines_per_second(tmp_path, distinct, budget) for _ in range(2))
    print_figures(request, {"same_key_lines_per_s": round(same_rate),
                            "distinct_keys_lines_per_s": round(distinct_rate)})
    assert distinct_rate * 2 >= same_rate, "distinct keys: %.0f lines/s, one key: %.0f lines/s" % (
        distinct_rate, same_rate)


def test_expired_keys_are_removed_and_new_keys_tracked_again(tmp_path):
    sentinel, out, clock = rig(tmp_path, SSH + "  threshold track_by=$1,type=limit,count=1,seconds=60\n")
    feed(sentinel, [decoy(i) for i in range(bs.MAX_TABLE + 1)])
    assert len(table_of(sentinel, "thresholds")) == bs.MAX_TABLE and len(notices(out)) == 1
    clock.t += 61                                    # every window has ended
    fresh = attempt("198.51.100.7")
    # removal may be spread over the following lines (O(1) work per line)
    feed(sentinel, [fresh] * 10_000)
    table = table_of(sentinel, "thresholds")
    assert "198.51.100.7" in table, "a new key is not tracked after the others expired"
    assert out.getvalue().splitlines().count(fresh) == 1       # count=1 per 60 s: it is counted
    assert len(table) < 100, "%d expired keys are still in the table" % len(table)


# ---- 2. a script dir that is ours -------------------------------------------------

@pytest.fixture
def fx():
    with FakeX(users={"alice": "1001", "bob": "1002"}) as f:
        f.dm_refusers = {"1002"}                     # a DM to @bob is refused: 403, dead-lettered
        yield f


class Watcher:
    """birdsentinel -t LOG --once with a dm rule, so state, lock and outbox are used."""

    def __init__(self, script, tmp_path, fx):
        self.script, self.tmp_path, self.fx = script, tmp_path, fx
        self.sd = tmp_path / "sd"
        self.sd.mkdir(mode=0o700)
        os.chmod(str(self.sd), 0o700)
        self.tw = tmp_path / "twitter"
        fx.write_creds(str(self.tw))
        self.cfg = tmp_path / "c.conf"
        self.cfg.write_text("watchfor /alert/\n  dm @bob\n")
        self.log = tmp_path / "app.log"
        self.log.write_text("started\n")

    def alert(self):
        with open(str(self.log), "a") as fh:
            fh.write("alert for bob\n")

    def run(self, *extra):
        return run_cli(self.script, ["-c", self.cfg, "-t", self.log, "--once", "--script-dir", self.sd,
                                     "--twitter-dir", self.tw, "--api-base", self.fx.base_url] + list(extra),
                       self.tmp_path)


def plant(path, kind, target):
    if kind == "symlink":
        os.symlink(str(target), str(path))
    elif kind == "fifo":
        os.mkfifo(str(path), 0o600)
    else:
        path.write_bytes(json.dumps(state_json()).encode() if path.name == bs.STATE_NAME else b"")
        os.chmod(str(path), 0o600)
        if kind == "foreign":
            os.chown(str(path), NOBODY, NOBODY)
        else:
            os.chmod(str(path), 0o666)


def fingerprint(path):
    return os.lstat(str(path)).st_mtime_ns, path.read_bytes() if os.path.isfile(str(path)) else None


def outside_target(tmp_path):
    (tmp_path / "outside").mkdir()
    target = tmp_path / "outside" / "precious"
    target.write_bytes(b"precious data\n")
    return target


def refusal(r, path):
    """The stderr lines that name path (and no traceback)."""
    err = r.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if str(path) in ln]


@pytest.mark.parametrize("kind", ["symlink", "fifo", "foreign", "mode0666"])
@pytest.mark.parametrize("name", [bs.STATE_NAME, bs.OUTBOX_NAME, bs.DEAD_NAME, bs.STATE_NAME + ".lock",
                                  ".birdsentinel-x.tmp", "bs.pid"])
def test_planted_file_in_script_dir_is_refused(script, tmp_path, fx, name, kind):
    w = Watcher(script, tmp_path, fx)
    extra = ["--pid-file", w.sd / "bs.pid"] if name == "bs.pid" else []
    target = outside_target(tmp_path)
    if name == bs.DEAD_NAME:                         # opened when a message is dead-lettered
        assert w.run(*extra).returncode == 0         # this run records the log's end
        w.alert()
    planted = w.sd / name
    if os.path.lexists(str(planted)):
        os.unlink(str(planted))
    plant(planted, kind, target)
    before_target, before_planted = fingerprint(target), fingerprint(planted)
    r = w.run(*extra)
    named = refusal(r, planted)
    assert fingerprint(target) == before_target, "the file behind the symlink was changed"
    if name == bs.DEAD_NAME:
        if kind in ("foreign", "mode0666"):
            assert fingerprint(planted) == before_planted, "wrote into a dead-letter file not ours"
        assert r.returncode == 78 or named, r.stderr
    else:
        assert r.returncode == 78, (r.returncode, r.stderr)
        assert len(named) == 1, "not one error line naming %s: %r" % (planted, r.stderr)


def test_world_writable_script_dir_without_sticky_bit_is_refused(script, tmp_path, fx):
    w = Watcher(script, tmp_path, fx)
    os.chmod(str(w.sd), 0o777)
    r = w.run()
    assert r.returncode == 78, r.stderr
    assert refusal(r, w.sd), r.stderr


def test_shared_sticky_group_script_dir_works(script, tmp_path, fx):
    w = Watcher(script, tmp_path, fx)
    os.chmod(str(w.sd), 0o3770)
    for i in range(3):          # 1: records the log's end; 2: an alert goes to the outbox, then dead
        r = w.run()             # (@bob refuses DMs); 3: finds all those files, ours
        assert r.returncode == 0, (i, r.stderr)
        w.alert()
    assert {bs.STATE_NAME, bs.STATE_NAME + ".lock", bs.OUTBOX_NAME, bs.DEAD_NAME} <= set(os.listdir(str(w.sd)))
    assert len(fx.requests) > 0 and fx.dms == []


def test_state_file_option_pointing_at_a_symlink_is_refused(script, tmp_path, fx):
    w = Watcher(script, tmp_path, fx)
    target = outside_target(tmp_path)
    (tmp_path / "st").mkdir(mode=0o700)
    link = tmp_path / "st" / "my.state"
    os.symlink(str(target), str(link))
    before = fingerprint(target)
    r = w.run("--state-file", link)
    assert fingerprint(target) == before
    assert r.returncode == 78, r.stderr
    assert refusal(r, link), r.stderr


# ---- 3. our own lines: recognized by the syslog header only -------------------------

OWN_PID = 1234


@pytest.mark.parametrize("line, own", [
    ("Dec  1 03:00:01 web1 birdsentinel[1234]: Failed password for root from 203.0.113.9", True),
    ("2026-12-01T03:00:01.123456+00:00 web1 birdsentinel[1234]: Failed password for root", True),
    ("Dec  1 03:00:01 web1 sshd[22]: Failed password for invalid user birdsentinel[1234]: from 203.0.113.9",
     False),
    ("Dec  1 03:00:01 web1 sshd[22]: birdsentinel[1234]: Failed password for root", False),
    ("Dec  1 03:00:01 web1 birdsentinel[999]: Failed password for root", False),
    ("Dec  1 03:00:01 web1 birdsentinel[12345]: Failed password for root", False),
    ("Dec  1 03:00:01 web1 xbirdsentinel[1234]: Failed password for root", False),
], ids=["bsd", "rfc3339", "in-message", "second-tag", "other-pid", "longer-pid", "other-program"])
def test_own_lines_are_recognized_by_header_only(tmp_path, line, own):
    sentinel, out, _clock = rig(tmp_path, "watchfor /Failed password/\n  echo\n")
    sentinel.self_tag = "birdsentinel[%d]:" % OWN_PID     # what App.run sets when logging to syslog
    sentinel.process_entry(line)
    assert out.getvalue() == ("" if own else line + "\n")


# ---- 4. HTTP: no redirects, no proxies -------------------------------------------------

class CountingHandler(http.server.BaseHTTPRequestHandler):
    """Records every request (server.seen) and answers 201, as X does to a sent DM."""

    def do_GET(self):
        self.server.seen.append((self.command, self.path))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_CONNECT = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def counter():
    """A second loopback server: where a redirect or a proxy would send the request."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    server.seen, server.url = [], "http://127.0.0.1:%d" % server.server_address[1]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def client_for(fx):
    creds = bs.Credentials(fx.consumer_key, fx.consumer_secret, fx.access_token, fx.access_token_secret)
    return bs.XClient(creds, fx.base_url)


def redirect(fx, counter):
    fx.inject(status=302, headers={"Location": counter.url + "/elsewhere"}, body=b"",
              path_prefix="/2/dm_conversations")


def test_redirect_is_not_followed(fx, counter):
    redirect(fx, counter)
    resp = client_for(fx).send_dm("1001", "alert")
    assert counter.seen == [], "the redirect was followed"
    assert resp.status == 302
    assert bs.classify(resp) != "ok"
    assert "127.0.0.1" in resp.detail(), resp.detail()


def test_redirected_dm_stays_in_the_outbox(tmp_path, fx, counter):
    outbox = bs.Outbox(str(tmp_path / bs.OUTBOX_NAME), str(tmp_path / bs.DEAD_NAME), fsync=False)
    outbox.load()
    outbox.add("dm", "1001", "[web1] alert", time.time())
    d = bs.Deliverer(outbox, client_for(fx), bs.DeliveryState(), dict(bs.DEFAULT_BUDGET),
                     rng=random.Random(1), monotonic=FakeClock(T0).monotonic)
    redirect(fx, counter)
    d.step()
    assert counter.seen == [] and fx.dms == []
    assert [e["text"] for e in outbox.entries.values()] == ["[web1] alert"], "a redirect counted as delivered"
    assert not (tmp_path / bs.DEAD_NAME).exists()


def test_proxy_from_the_environment_is_not_used(monkeypatch, fx, counter):
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", counter.url)
    monkeypatch.setenv("HTTP_PROXY", counter.url)
    resp = client_for(fx).send_dm("1001", "direct")
    assert counter.seen == [], "the request went through the proxy"
    assert resp.status == 201 and [m["text"] for m in fx.dms] == ["direct"]


# ---- 5. credentials ----------------------------------------------------------------------

@pytest.fixture
def tw(tmp_path, monkeypatch):
    # load_credentials makes its process non-dumpable: here that would be the test runner
    monkeypatch.setattr(bs, "protect_process", lambda: None, raising=False)
    d = tmp_path / "twitter"
    write_creds(str(d), "ck-sec", "cs-sec", "1-at-sec", "ats-sec")
    return d


def refused_credentials(tw):
    with pytest.raises(bs.CredentialsError) as info:
        bs.load_credentials(str(tw), {})
    return str(info.value)


@pytest.mark.parametrize("change", ["symlink-outside", "owner", "mode0620"])
def test_secret_file_others_control_is_refused(tmp_path, tw, change):
    path = tw / "consumer-secret"
    if change == "symlink-outside":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        os.rename(str(path), str(tmp_path / "elsewhere" / "consumer-secret"))
        os.symlink(str(tmp_path / "elsewhere" / "consumer-secret"), str(path))
    elif change == "owner":
        os.chown(str(path), NOBODY, NOBODY)
    else:
        os.chmod(str(path), 0o620)
    assert str(path) in refused_credentials(tw)


@pytest.mark.parametrize("mode", [0o777, 0o770], ids=["0777", "0770"])
def test_credential_dir_others_can_change_is_refused(tw, mode):
    os.chmod(str(tw), mode)
    assert str(tw) in refused_credentials(tw)


def test_secret_symlinked_inside_the_dir_is_accepted(tw):
    os.rename(str(tw / "consumer-secret"), str(tw / "consumer-secret.v2"))
    os.symlink("consumer-secret.v2", str(tw / "consumer-secret"))
    creds = bs.load_credentials(str(tw), {})
    assert creds.consumer_secret == "cs-sec" and creds.token_secret == "ats-sec"


# ---- 6. children -----------------------------------------------------------------------------

SYSTEM_PATH = {"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}


def test_exec_child_gets_a_scrubbed_environment(script, tmp_path):
    dump, seen = tmp_path / "dump_env.py", tmp_path / "env.json"
    dump.write_text("import json, os, sys\njson.dump(dict(os.environ), open(sys.argv[1], 'w'))\n")
    cfg, log = tmp_path / "c.conf", tmp_path / "in.log"
    cfg.write_text("watchfor /alert/\n  exec %s %s %s\n" % (PY, dump, seen))
    log.write_text("alert now\n")
    env = env_for(tmp_path, CREDENTIALS_DIRECTORY="/x", https_proxy="http://p:1", HTTP_PROXY="http://p:1",
                  FOO_SECRET="hunter2", PATH="/tmp/evil:/usr/bin")
    r = run_cli(script, ["-c", cfg, "--examine", log, "--script-dir", tmp_path / "sd"], tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    child = json.loads(seen.read_text())
    leaked = sorted(k for k in child if k in ("CREDENTIALS_DIRECTORY", "FOO_SECRET") or k.lower().endswith("_proxy"))
    assert leaked == []
    path = child.get("PATH", "").split(":")
    assert "/tmp/evil" not in path and path != [""] and set(path) <= SYSTEM_PATH, child.get("PATH")


PROTECT = """
import ctypes, json, resource, sys
sys.path.insert(0, %r)
import birdsentinel as bs
libc = ctypes.CDLL(None, use_errno=True)
now = lambda: [libc.prctl(3, 0, 0, 0, 0), list(resource.getrlimit(resource.RLIMIT_CORE))]  # PR_GET_DUMPABLE
try:                        # core dumps on first, where the limit the runner passed on allows it
    resource.setrlimit(resource.RLIMIT_CORE, (1 << 20, 1 << 20))
except ValueError:
    pass
libc.prctl(4, 1, 0, 0, 0)   # PR_SET_DUMPABLE
before = now()
bs.protect_process()
print(json.dumps([before, now()]))
""" % ROOT


def test_protect_process_makes_the_process_non_dumpable(tmp_path):
    r = subprocess.run([PY, "-c", PROTECT], capture_output=True, timeout=30, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    before, after = json.loads(r.stdout)
    assert before[0] == 1                            # the check starts from a dumpable process
    assert after == [0, [0, 0]]


# ---- 7. arguments and text ------------------------------------------------------------------

HOSTILE_ARG = "--output=/etc/passwd"


def exec_argv(tmp_path, arg):
    config = bs.parse_config(str(tmp_path / "c.conf"), "watchfor /user (\\S+) logged in/\n  exec /bin/echo %s\n" % arg)
    rule = config.rules[0]
    line = "user %s logged in" % HOSTILE_ARG
    return bs.build_argv(rule.actions[0].argv, line, rule.pattern.match(line))


@pytest.mark.parametrize("arg", ["$1", "''$1", '""$1', '"""$1"', "$1''", "''\"$1\"", '"$1"', "'-'$1"])
def test_value_from_the_log_never_starts_an_argument_with_a_dash(tmp_path, arg):
    argv = exec_argv(tmp_path, arg)
    if arg == "'-'$1":                               # the config author's own dash stays
        assert argv == ["/bin/echo", "-" + HOSTILE_ARG]
    else:
        assert len(argv) == 2 and not argv[1].startswith("-") and HOSTILE_ARG in argv[1], argv


HOSTILE_LINE = ("bird_alert osc52 \x1b]52;c;ZWNobyBoaQ==\x07 osc0 \x1b]0;pwned\x07 sgr8 \x1b[8mhidden\x1b[0m "
                "bel \x07 c1 \x9b tab\there end")


@pytest.mark.parametrize("raw", [False, True], ids=["default", "raw=1"])
def test_exec_gets_the_line_without_escapes_unless_raw(script, tmp_path, raw):
    got = tmp_path / "arg.bin"
    cfg, log = tmp_path / "c.conf", tmp_path / "in.log"
    cfg.write_text("watchfor /bird_alert/\n  exec /bin/sh -c 'printf %%s \"$1\" > %s' sh $_%s\n"
                   % (got, ",raw=1" if raw else ""))
    log.write_bytes(HOSTILE_LINE.encode("utf-8") + b"\n")
    r = run_cli(script, ["-c", cfg, "--examine", log, "--script-dir", tmp_path / "sd"], tmp_path)
    assert r.returncode == 0, r.stderr
    data = got.read_bytes()
    if raw:
        assert data == HOSTILE_LINE.encode("utf-8")
        return
    assert b"\x1b" not in data and b"\x07" not in data, data
    assert re.search(rb"\xc2[\x80-\x9f]", data) is None, data
    assert b"ZWNob" not in data and b"pwned" not in data, data      # the whole sequence went
    assert data.startswith(b"bird_alert osc52") and b"hidden" in data and b"tab\there end" in data, data


def format_chars():
    """Every character of Unicode category Cf (bidi controls, zero-width ones, TAG characters...)."""
    return "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf")


def format_chars_in(text):
    return ["U+%04X" % ord(c) for c in text if unicodedata.category(c) == "Cf"]


def test_no_format_character_survives_sanitize_or_reaches_the_outbox(tmp_path):
    cf = format_chars()
    assert len(cf) > 150
    text = "bird_alert " + "x".join(cf) + " \x1b[31m\u202egnp.exe\u202c end"
    assert format_chars_in(bs.sanitize(text)) == [] and format_chars_in(bs.format_alert("web1", text)) == []
    assert [c for c in cf if format_chars_in(bs.sanitize("a%sb" % c))] == []
    outbox = bs.Outbox(str(tmp_path / bs.OUTBOX_NAME), str(tmp_path / bs.DEAD_NAME), fsync=False)
    outbox.load()
    config = bs.parse_config(str(tmp_path / "c.conf"), "watchfor /bird_alert/\n  dm @alice\n")
    runner = bs.ActionRunner(io.StringIO(), outbox=outbox, hostname="web1")
    sentinel = bs.Sentinel(config, runner, bs.Counters())
    sentinel.process_entry("bird_alert \u202egnp.exe\u202c \u200bzero\u2066width\u2069 " + cf + " end")
    (entry,) = outbox.entries.values()
    assert entry["text"].startswith("[web1] bird_alert") and entry["text"].endswith(" end")
    assert format_chars_in(entry["text"]) == []
