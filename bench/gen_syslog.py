#!/usr/bin/env python3
"""gen_syslog.py: deterministic generator of RFC 3164 syslog lines for the benchmark.

Command line usage:
    python3 bench/gen_syslog.py [-o FILE] [--lines N | --bytes SIZE] [options]
    python3 bench/gen_syslog.py -o FILE --single-line SIZE [--single-line-match]
    python3 bench/gen_syslog.py --print-patterns {1,10}

Options:
    -o, --output FILE        where to write (default: stdout)
    --lines N                number of lines (default 1000000)
    --bytes SIZE             write whole lines up to SIZE bytes instead (K, M, G suffixes,
                             powers of 1024): e.g. --bytes 1G
    --alert-fraction F       fraction of lines that match one of the 10 alert rules
                             (default 0.027); the 1-rule set matches ALERT_KINDS[0] only,
                             which is 2% of the alert lines
    --seed N                 random seed (default 1); same seed, same arguments, same
                             Python version -> same bytes
    --host NAME              HOSTNAME field (default: mailgw-fra-edge2)
    --corpus DIR             mix in real RFC 3164 lines from DIR/*.log (their own
                             timestamp and host are replaced so time keeps increasing)
    --corpus-fraction F      fraction of lines taken from --corpus (default 0.05)
    --single-line SIZE       write ONE line of exactly SIZE bytes (newline included)
    --single-line-match      make that line start with an alert that the 10-rule set matches
    --print-patterns {1,10}  print the rule set's patterns, one per line, and exit
    --stats                  print one JSON line of counts to stderr at the end

Generated lines are 80-200 bytes (corpus lines keep their own length), from sshd, sudo,
kernel, CRON, postfix and systemd, about 128 bytes on average. Alert lines are spread
through the file at an exact overall fraction. Patterns (ALERT_KINDS) use the syntax common
to Perl (swatch), Python re (birdsentinel) and POSIX ERE (grep -E): no \\d, no \\s, no /.
Standard library only.
"""
import argparse
import json
import os
import random
import re
import sys
import time

# ==== Rule sets ====
# (pattern, weight among alert lines). Order = order of the 10-rule config.
# Non-alert templates below are written so that none of these patterns matches them.
ALERT_KINDS = (
    (r"kernel: .*Out of memory: Killed process", 2),
    (r"sshd\[[0-9]+\]: Failed password for", 30),
    (r"sshd\[[0-9]+\]: Invalid user ", 20),
    (r"POSSIBLE BREAK-IN ATTEMPT", 10),
    (r"sudo: .*incorrect password attempts", 5),
    (r"kernel: .*segfault at [0-9a-f]+ ip", 8),
    (r"EXT4-fs error \(device", 3),
    (r"smtpd\[[0-9]+\]: NOQUEUE: reject: RCPT from", 12),
    (r"status=bounced", 7),
    (r"systemd\[1\]: .*Failed with result", 3),
)
RULE_SETS = {1: (ALERT_KINDS[0][0],), 10: tuple(p for p, _ in ALERT_KINDS)}

MIN_LEN = 80
MAX_LEN = 200
CHUNK_LINES = 65536
NORMAL_POOL = 60000
ALERT_POOL = 6000
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
RFC3164_PREFIX = re.compile(rb"^[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} \S+ ")

USERS = ("alice", "bob", "carol", "deploy", "backup", "jenkins", "ops", "www-data", "git",
         "postgres", "mkowalski", "svc-monitor", "ansible", "root")
BAD_USERS = ("admin", "test", "oracle", "ubuntu", "guest", "pi", "user1", "ftpuser", "support",
             "nagios", "hadoop", "minecraft", "teamspeak", "default", "administrator")
COMMANDS = ("systemctl", "apt-get", "journalctl", "tail", "docker", "nginx", "cp", "chown",
            "tee", "ip")
ARGS = ("restart nginx", "update", "-u ssh --since today", "-f /var/log/syslog", "ps -a",
        "-t", "/etc/hosts /tmp/hosts", "-R www-data /srv/www", "-a /etc/motd", "addr show")
UNITS = ("nginx", "postfix", "cron", "rsyslog", "ssh", "docker", "containerd", "fail2ban",
         "unattended-upgrades", "logrotate", "apt-daily", "certbot", "node-exporter")
PROCS = ("php-fpm7.4", "java", "node", "python3", "mysqld", "chrome", "postgres", "ruby",
         "convert", "ffmpeg", "gunicorn", "redis-server")
LIBS = ("libc-2.31.so", "libpthread-2.31.so", "libstdc++.so.6.0.28", "libz.so.1.2.11",
        "libssl.so.1.1", "libcrypto.so.1.1")
DOMAINS = ("example.com", "mail.example.org", "gmx.de", "outlook.com", "corp.example.net",
           "shop-mailer.io", "newsletter.example.com", "bounce.example.co.uk")
RDNS = ("unknown", "mail-wr1-f54.google.com", "smtp.example.net", "static.88-198-1-2.clients",
        "ns.marryaldkfaczcz.com", "host-41-2-12.example-isp.net", "scanner.shodan.io",
        "mx1.mailhost.example")
DEVICES = ("sda1", "sdb1", "nvme0n1p2", "dm-0", "vda1")
CRON_CMDS = ("cd / && run-parts --report /etc/cron.hourly",
             "command -v debian-sa1 > /dev/null && debian-sa1 1 1",
             "[ -x /usr/lib/php/sessionclean ] && /usr/lib/php/sessionclean",
             "/usr/local/bin/backup.sh --incremental >/dev/null 2>&1",
             "test -x /usr/sbin/anacron || ( cd / && run-parts --report /etc/cron.daily )")
SYSTEMD_START = ("apt-daily.service - Daily apt download activities",
                 "apt-daily-upgrade.service - Daily apt upgrade and clean activities",
                 "logrotate.service - Rotate log files",
                 "systemd-tmpfiles-clean.service - Cleanup of Temporary Directories",
                 "motd-news.service - Message of the Day",
                 "fwupd-refresh.service - Refresh fwupd metadata and update motd",
                 "fstrim.service - Discard unused blocks on filesystems once a week",
                 "man-db.service - Daily man-db regeneration")


# ==== Field generators ====
class Fields:
    """Random field values from one seeded random.Random."""

    def __init__(self, rng: random.Random) -> None:
        self.r = rng

    def pid(self) -> int:
        return self.r.randint(300, 65000)

    def ip(self) -> str:
        r = self.r
        return f"{r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def port(self) -> int:
        return self.r.randint(1024, 65535)

    def user(self) -> str:
        return self.r.choice(USERS)

    def qid(self) -> str:
        return "%0*X" % (self.r.randint(10, 12), self.r.getrandbits(48))

    def uptime(self) -> str:
        return "[%12.6f]" % (self.r.random() * 9_000_000)

    def hexs(self, bits: int) -> str:
        return "%x" % self.r.getrandbits(bits)

    def b64(self, n: int) -> str:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def delay(self) -> str:
        return "%.2g" % (self.r.random() * 3)


def normal_body(f: Fields) -> str:
    """One non-alert message: 'TAG[PID]: text'."""
    r = f.r
    kind = r.randrange(28)
    if kind == 0:
        return (f"sshd[{f.pid()}]: Accepted publickey for {f.user()} from {f.ip()} port {f.port()} "
                f"ssh2: ED25519 SHA256:{f.b64(43)}")
    if kind == 1:
        return f"sshd[{f.pid()}]: Accepted password for {f.user()} from {f.ip()} port {f.port()} ssh2"
    if kind in (2, 3):
        return (f"sshd[{f.pid()}]: pam_unix(sshd:session): session opened for user "
                f"{f.user()}(uid={r.randint(1000, 1010)}) by (uid=0)")
    if kind == 4:
        return f"sshd[{f.pid()}]: pam_unix(sshd:session): session closed for user {f.user()}"
    if kind == 5:
        return (f"sshd[{f.pid()}]: Received disconnect from {f.ip()} port {f.port()}:11: "
                f"disconnected by user")
    if kind == 6:
        return (f"sshd[{f.pid()}]: Connection closed by authenticating user {f.user()} {f.ip()} "
                f"port {f.port()} [preauth]")
    if kind == 7:
        u = f.user()
        return (f"sudo:   {u} : TTY=pts/{r.randint(0, 9)} ; PWD=/home/{u} ; USER=root ; "
                f"COMMAND=/usr/bin/{r.choice(COMMANDS)} {r.choice(ARGS)}")
    if kind == 8:
        return (f"sudo: pam_unix(sudo:session): session opened for user root(uid=0) by "
                f"{f.user()}(uid={r.randint(1000, 1010)})")
    if kind == 9:
        return (f"kernel: {f.uptime()} [UFW BLOCK] IN=eth0 OUT= SRC={f.ip()} DST={f.ip()} "
                f"LEN={r.randint(40, 1500)} TTL={r.randint(30, 250)} PROTO=TCP SPT={f.port()} "
                f"DPT={r.choice((22, 23, 80, 443, 3389, 5900, 8080))}")
    if kind == 10:
        return (f"kernel: {f.uptime()} audit: type=1400 audit({1790000000 + r.randint(0, 9999999)}"
                f".{r.randint(100, 999)}:{r.randint(1, 9999)}): apparmor=\"ALLOWED\" "
                f"operation=\"open\" profile=\"/usr/sbin/{r.choice(UNITS)}\" pid={f.pid()}")
    if kind == 11:
        return (f"kernel: {f.uptime()} e1000e: eth{r.randint(0, 1)} NIC Link is Up 1000 Mbps Full "
                f"Duplex, Flow Control: Rx/Tx")
    if kind in (12, 13):
        return f"CRON[{f.pid()}]: (root) CMD ({r.choice(CRON_CMDS)})"
    if kind == 14:
        return (f"CRON[{f.pid()}]: pam_unix(cron:session): session opened for user root(uid=0) "
                f"by (uid=0)")
    if kind == 15:
        return f"CRON[{f.pid()}]: pam_unix(cron:session): session closed for user root"
    if kind in (16, 17):
        return f"postfix/smtpd[{f.pid()}]: connect from {r.choice(RDNS)}[{f.ip()}]"
    if kind == 18:
        return (f"postfix/smtpd[{f.pid()}]: disconnect from {r.choice(RDNS)}[{f.ip()}] ehlo=1 "
                f"mail=1 rcpt=1 data=1 quit=1 commands=5")
    if kind == 19:
        return f"postfix/smtpd[{f.pid()}]: {f.qid()}: client={r.choice(RDNS)}[{f.ip()}]"
    if kind == 20:
        return (f"postfix/cleanup[{f.pid()}]: {f.qid()}: message-id=<{f.hexs(64)}."
                f"{f.hexs(32)}@{r.choice(DOMAINS)}>")
    if kind == 21:
        return (f"postfix/qmgr[{f.pid()}]: {f.qid()}: from=<{f.user()}@{r.choice(DOMAINS)}>, "
                f"size={r.randint(800, 90000)}, nrcpt=1 (queue active)")
    if kind == 22:
        return (f"postfix/smtp[{f.pid()}]: {f.qid()}: to=<{f.user()}@{r.choice(DOMAINS)}>, "
                f"relay={r.choice(RDNS)}[{f.ip()}]:25, delay={f.delay()}, dsn=2.0.0, "
                f"status=sent (250 2.0.0 OK)")
    if kind == 23:
        return (f"systemd[1]: Started Session {r.randint(1, 99999)} of User {f.user()}. "
                f"Unit session-{r.randint(1, 99999)}.scope has finished starting up.")
    if kind == 24:
        return f"systemd[1]: Starting {r.choice(SYSTEMD_START)}..."
    if kind == 25:
        return (f"systemd[1]: {r.choice(UNITS)}.service: Deactivated successfully. Consumed "
                f"{r.randint(10, 999)}ms CPU time.")
    if kind == 26:
        return f"systemd[1]: Finished {r.choice(SYSTEMD_START)}."
    return (f"systemd-logind[{f.pid()}]: New session {r.randint(1, 99999)} of user "
            f"{f.user()}. Seat seat0, class user.")


def alert_body(f: Fields, kind: int) -> str:
    """One message matched by ALERT_KINDS[kind] (and by no earlier pattern)."""
    r = f.r
    if kind == 0:
        return (f"kernel: {f.uptime()} Out of memory: Killed process {f.pid()} ({r.choice(PROCS)}) "
                f"total-vm:{r.randint(10**5, 10**7)}kB, anon-rss:{r.randint(10**4, 10**6)}kB, "
                f"file-rss:0kB")
    if kind == 1:
        inv = r.choice(("", "invalid user "))
        name = r.choice(BAD_USERS) if inv else f.user()
        return (f"sshd[{f.pid()}]: Failed password for {inv}{name} from {f.ip()} port {f.port()} "
                f"ssh2")
    if kind == 2:
        return f"sshd[{f.pid()}]: Invalid user {r.choice(BAD_USERS)} from {f.ip()} port {f.port()}"
    if kind == 3:
        return (f"sshd[{f.pid()}]: reverse mapping checking getaddrinfo for {r.choice(RDNS)} "
                f"[{f.ip()}] failed - POSSIBLE BREAK-IN ATTEMPT!")
    if kind == 4:
        u = f.user()
        return (f"sudo:   {u} : 3 incorrect password attempts ; TTY=pts/{r.randint(0, 9)} ; "
                f"PWD=/home/{u} ; USER=root ; COMMAND=/usr/bin/{r.choice(COMMANDS)}")
    if kind == 5:
        return (f"kernel: {f.uptime()} {r.choice(PROCS)}[{f.pid()}]: segfault at {f.hexs(24)} "
                f"ip {'%016x' % r.getrandbits(48)} sp {'%016x' % r.getrandbits(48)} error 4 in "
                f"{r.choice(LIBS)}")
    if kind == 6:
        return (f"kernel: {f.uptime()} EXT4-fs error (device {r.choice(DEVICES)}): "
                f"ext4_find_entry:1455: inode #{r.randint(2, 9999999)}: comm {r.choice(PROCS)}: "
                f"reading directory lblock 0")
    if kind == 7:
        return (f"postfix/smtpd[{f.pid()}]: NOQUEUE: reject: RCPT from {r.choice(RDNS)}"
                f"[{f.ip()}]: 554 5.7.1 <{r.choice(BAD_USERS)}@{r.choice(DOMAINS)}>: Relay access "
                f"denied; proto=ESMTP")
    if kind == 8:
        return (f"postfix/smtp[{f.pid()}]: {f.qid()}: to=<{r.choice(BAD_USERS)}@"
                f"{r.choice(DOMAINS)}>, relay=none, delay={f.delay()}, dsn=5.4.4, status=bounced "
                f"(Host or domain name not found)")
    return f"systemd[1]: {r.choice(UNITS)}.service: Failed with result 'exit-code'."


# ==== Pools ====
def _fits(body: str, prefix_len: int) -> bool:
    return MIN_LEN <= prefix_len + len(body) + 1 <= MAX_LEN


def build_pools(rng: random.Random, prefix_len: int) -> "tuple[list, list]":
    """Bodies (bytes, no prefix, no newline) whose full line is MIN_LEN..MAX_LEN bytes."""
    f = Fields(rng)
    normal = []
    while len(normal) < NORMAL_POOL:
        b = normal_body(f)
        if _fits(b, prefix_len):
            normal.append(b.encode())
    total_w = sum(w for _, w in ALERT_KINDS)
    alerts = []
    for kind, (_, w) in enumerate(ALERT_KINDS):
        want = max(1, ALERT_POOL * w // total_w)
        got = 0
        while got < want:
            b = alert_body(f, kind)
            if _fits(b, prefix_len):
                alerts.append(b.encode())
                got += 1
    return normal, alerts


def load_corpus(directory: str) -> list:
    """Message parts (after 'Mmm dd hh:mm:ss host ') of RFC 3164 lines in DIR/*.log."""
    bodies = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".log"):
            continue
        with open(os.path.join(directory, name), "rb") as fh:
            for line in fh:
                line = line.rstrip(b"\r\n")
                m = RFC3164_PREFIX.match(line)
                if m and len(line) > m.end():
                    bodies.append(line[m.end():])
    return bodies


# ==== Writers ====
def parse_size(text: str) -> int:
    """'128M' -> 134217728; plain numbers are bytes."""
    t = text.strip().upper().rstrip("B")
    mult = 1
    for suffix, m in (("K", 1024), ("M", 1024 ** 2), ("G", 1024 ** 3)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    return int(float(t) * mult)


def stamp(t: int) -> bytes:
    """RFC 3164 TIMESTAMP, day space-padded: 'Nov  6 09:05:01'."""
    tm = time.gmtime(t)
    return b"%s %2d %02d:%02d:%02d" % (MONTHS[tm.tm_mon - 1].encode(), tm.tm_mday, tm.tm_hour,
                                        tm.tm_min, tm.tm_sec)


def generate(out, rng: random.Random, host: str, lines: "int | None", max_bytes: "int | None",
             alert_fraction: float, corpus: list, corpus_fraction: float) -> dict:
    """Write lines in big chunks; return counts."""
    hostb = host.encode()
    prefix_len = len(b"Nov 26 15:42:07 ") + len(hostb) + 1
    normal, alerts = build_pools(rng, prefix_len)
    t = 1_793_491_200 + rng.randrange(86400 * 30)  # some day of Nov 2026, UTC
    done = n_alert = n_corpus = written = 0
    while True:
        n = CHUNK_LINES if lines is None else min(CHUNK_LINES, lines - done)
        if n <= 0:
            break
        bodies = rng.choices(normal, k=n)
        # exact overall fractions: place floor(total*frac) - already placed lines in this chunk
        k_alert = int((done + n) * alert_fraction) - n_alert
        k_corpus = int((done + n) * corpus_fraction) - n_corpus if corpus else 0
        k_corpus = max(0, min(k_corpus, n - k_alert))
        positions = rng.sample(range(n), k_alert + k_corpus)
        for pos, body in zip(positions[:k_alert], rng.choices(alerts, k=k_alert)):
            bodies[pos] = body
        for pos, body in zip(positions[k_alert:], rng.choices(corpus, k=k_corpus) if k_corpus else ()):
            bodies[pos] = body
        parts = []
        i = 0
        while i < n:
            m = rng.randint(1, 80)  # lines logged in this second
            prefix = stamp(t) + b" " + hostb + b" "
            parts.append(prefix + (b"\n" + prefix).join(bodies[i:i + m]) + b"\n")
            i += m
            t += rng.randint(1, 3)
        data = b"".join(parts)
        if max_bytes is not None and written + len(data) >= max_bytes:
            cut = data.rfind(b"\n", 0, max_bytes - written) + 1
            data = data[:cut]
            n = data.count(b"\n")
            # alerts/corpus placed beyond the cut are not counted exactly; recount them
            n_alert += sum(1 for p in positions[:k_alert] if p < n)
            n_corpus += sum(1 for p in positions[k_alert:] if p < n)
            out.write(data)
            written += len(data)
            done += n
            break
        out.write(data)
        written += len(data)
        done += n
        n_alert += k_alert
        n_corpus += k_corpus
    return {"lines": done, "bytes": written, "alert_lines": n_alert, "corpus_lines": n_corpus}


def single_line(out, rng: random.Random, host: str, size: int, match: bool) -> dict:
    """One line of exactly SIZE bytes (newline included)."""
    f = Fields(rng)
    head = (stamp(1_793_491_200) + b" " + host.encode() + b" "
            + (alert_body(f, 5) if match else normal_body(f)).encode() + b" ")
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz0123456789", k=rng.randint(2, 11)))
             for _ in range(4096)]
    block = b" ".join(rng.choices(words, k=200000))[:1 << 20]
    if size < len(head) + 1:
        raise SystemExit(f"--single-line {size}: must be at least {len(head) + 1} bytes")
    out.write(head)
    left = size - len(head) - 1
    while left > 0:
        piece = block[:left]
        out.write(piece)
        left -= len(piece)
    out.write(b"\n")
    return {"lines": 1, "bytes": size, "alert_lines": int(match), "corpus_lines": 0}


# ==== Command line ====
def main(argv: "list | None" = None) -> int:
    p = argparse.ArgumentParser(description="Deterministic RFC 3164 syslog generator "
                                "(see the module docstring).")
    p.add_argument("-o", "--output", default="-")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--lines", type=int)
    size.add_argument("--bytes", type=parse_size)
    size.add_argument("--single-line", type=parse_size, metavar="SIZE")
    p.add_argument("--single-line-match", action="store_true")
    p.add_argument("--alert-fraction", type=float, default=0.027)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--host", default="mailgw-fra-edge2")
    p.add_argument("--corpus")
    p.add_argument("--corpus-fraction", type=float, default=0.05)
    p.add_argument("--print-patterns", type=int, choices=sorted(RULE_SETS))
    p.add_argument("--stats", action="store_true")
    a = p.parse_args(argv)
    if a.print_patterns:
        print("\n".join(RULE_SETS[a.print_patterns]))
        return 0
    if not 0 <= a.alert_fraction <= 1 or not 0 <= a.corpus_fraction <= 1:
        p.error("fractions must be between 0 and 1")
    rng = random.Random(a.seed)
    corpus = load_corpus(a.corpus) if a.corpus else []
    if a.corpus and not corpus:
        p.error(f"--corpus {a.corpus}: no RFC 3164 lines found in *.log there")
    if a.alert_fraction + (a.corpus_fraction if corpus else 0) > 1:
        p.error("--alert-fraction + --corpus-fraction must not exceed 1")
    out = sys.stdout.buffer if a.output == "-" else open(a.output, "wb")
    try:
        if a.single_line is not None:
            stats = single_line(out, rng, a.host, a.single_line, a.single_line_match)
        else:
            lines = a.lines if a.lines is not None else (None if a.bytes else 1_000_000)
            stats = generate(out, rng, a.host, lines, a.bytes, a.alert_fraction, corpus,
                             a.corpus_fraction)
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        else:
            out.flush()
    if a.stats:
        print(json.dumps(stats), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
