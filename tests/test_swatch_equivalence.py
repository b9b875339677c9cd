"""swatch 3.2.4 itself against `--convert-config`, on the real configs of ../shared/corpus/swatch-configs.

For each config swatch runs (the others are NOT_RUN, measured, and asserted to fail under swatch) a copy is made
in a temp dir where each program of each exec/pipe (a word at a command position, not a shell builtin or a Perl
variable) is bin/L<config line>-<name>: a copy of RECORDER, which writes its argv and stdin under rec/ (a path
taken from its own: birdsentinel gives children a fixed environment) and prints "ran <name>"; each mail gets
mailer=bin/L<line>-sendmail; each redirect target but /dev/null becomes out/L<line>-<path with / as ->, and the
working directory holds a msg.txt (for `< msg.txt`).  Lines are generated from each watchfor/ignore pattern
(literals, classes, groups, repeats, alternations: three variants), kept when they match it and, for a rule whose
command uses the line or a group, when they hold no shell metacharacter or quote.  Rules whose action kills
swatch's watcher (FATAL, asserted) get none.  swatch runs the copy once over all lines (--examine);
birdsentinel runs `--convert-config COPY -o NEW`, then `-c NEW --examine` over the same lines.
Compared: per config line, the multiset of (argv, stdin) its recorders got (birdsentinel's children run in
parallel); per config, the out/ files, and stdout as a multiset of lines (line 0) without the "ran" lines, bells
counted apart, colour codes dropped (swatch colours a non-tty and resets after an un-moded echo).  Not compared:
swatch's stderr (Perl warnings).  One normalisation: birdsentinel ends each pipe message with a newline, swatch
does not (counted).  Every difference must be in KNOWN, with the property of its kind; each KNOWN must be seen.
Then the injection check: $(touch X), backticks, '; touch X; ' inside lines that still hit each rule whose
exec/pipe uses the line (throttle/threshold blanked so every line acts): birdsentinel must create no X.
"""

import collections
import os
import re
import shutil
import subprocess
import sys

import pytest

try:
    import re._parser as sre                    # Python 3.11+
except ImportError:                             # pragma: no cover
    import sre_parse as sre                     # type: ignore

from conftest import CORPUS, SCRIPT

CONFIGS = os.path.join(CORPUS, "swatch-configs")
SWATCH = "/usr/bin/swatchdog"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# measured (see /work/notes/configs.md): swatch 3.2.4 does not run these as written
NOT_RUN = {"03": "", "04": "", "06": "", "08": "", "09": "",     # 03: \" in exec ends its Perl string; 04 06: @@...@@
           "12": "invalid keyword. Skipping."}                # are Perl arrays; 08 09: \@ in mail; 12: pre-3.0 format
NO_COMPILE = r"compilation errors|compilation aborted|has too many errors"   # what "" above stands for
# (config, watchfor line): what swatch's watcher dies of at the first line that hits the rule
FATAL = {("10", 29): "Invalid attribute name inverse",      # echo inverse
         ("18", 1): "Undefined subroutine &main::break",    # unknown action break
         ("22", 4): "Invalid attribute name"}                # echo followed by free text
# (config, line): the kind of difference measured there (line 0: stdout); each must be seen, with its property.
# A kind is checked on (what only swatch did, what only birdsentinel did), lists of (argv, stdin).
KNOWN = {("07", 291): "comma", ("07", 304): "not-converted", ("07", 522): "comma", ("07", 624): "comma",
         ("07", 277): "word-split", ("07", 380): "word-split", ("07", 578): "word-split", ("07", 591): "word-split",
         ("07", 620): "word-split", ("10", 16): "word-split",
         ("24", 0): "not-converted"}            # exec $script ...: perlcode sets $script from the environment
KINDS = {
    # swatch splits an action's value on commas: it runs what follows the last one (no such program here)
    "comma": lambda s, b: not s and b,
    # swatch's sh splits an unquoted $0/$N into words; birdsentinel passes the value as one argument
    "word-split": lambda s, b: s and sorted((" ".join(" ".join(a).split()), t) for a, t in s)
    == sorted((" ".join(" ".join(a).split()), t) for a, t in b),
    # Perl that --convert-config comments out (# CONVERT:): swatch ran it, birdsentinel does not
    "not-converted": lambda s, b: s and not b,
}
BUILTINS = {"echo", "printf", "true", "false", ":", "cd", "set", "test", "["}
META = set(";&()|^><$`'\\\"*?[]~{}#!")
RECORDER = r"""#!/bin/sh
d="${0%/bin/*}/rec"; n="${0##*/}"
f=$(mktemp "$d/$n.XXXXXXXX")
for a; do printf '%s\0' "$a"; done > "$f.argv"
cat > "$f.in"
printf 'ran %s\n' "$n"
"""
PAYLOADS = ("$(touch {x})", "`touch {x}`", "'; touch {x}; '", "$(touch${{IFS}}{x})", "`touch${{IFS}}{x}`",
            "';touch${{IFS}}{x};'")


def need_tools(corpus_dir):
    for ok, what in ((os.path.isdir(CONFIGS), "the corpus has no swatch-configs/"),
                     (os.access(SWATCH, os.X_OK), "swatch 3.2.4 (/usr/bin/swatchdog, Debian's swatch) is absent")):
        if not ok:
            (pytest.fail if os.environ.get("CI") else pytest.skip)(what)


def config_files():
    return {n[:2]: os.path.join(CONFIGS, n) for n in sorted(os.listdir(CONFIGS))} if os.path.isdir(CONFIGS) else {}


# ---- reading a swatch config (test side: only what is needed to make lines and copies) ----------------------
def logical_lines(text):
    """(line number, key, value) as swatch reads them: CR and blank/comment lines dropped, key=value or key value."""
    lines, i = text.split("\n"), 0
    while i < len(lines):
        n, s = i + 1, lines[i].strip()
        while s.endswith("\\") and i + 1 < len(lines):
            i += 1
            s = s[:-1] + lines[i].strip()
        i += 1
        if s and not s.startswith("#"):
            key = re.match(r"[^\s=]+", s).group()
            yield n, key, re.sub(r"^\s*=?\s*", "", s[len(key):])


def rules_of(text):
    """[(line, kind, [(negated, python regex)], [(line, action, value)])]; perlcode literals put in the pattern,
    other Perl variables empty (as they are in swatch without the environment they read)."""
    perl = {m.group(1): m.group(2).replace("\\'", "'").replace("\\\\", "\\") for m in
            re.finditer(r"^\s*perlcode\s+(?:0\s+)?my\s+\$(\w+)\s*=\s*'((?:\\.|[^'\\])*)'", text, re.M)}
    rules = []
    for n, key, value in logical_lines(text):
        if key.lower() in ("watchfor", "ignore"):
            src = re.sub(r"\$(\w+)", lambda m: perl.get(m.group(1), ""), value)
            terms = []
            for neg, body, flags in re.findall(r"(!?)/((?:\\.|[^/\\])*)/([imsx]*)", src):
                py = re.sub(r"\(\?<([A-Za-z_]\w*)>", r"(?P<\1>", body).replace("\\/", "/").replace("\\@", "@")
                try:
                    terms.append((bool(neg), re.compile(py, re.I if "i" in flags else 0)))
                except re.error:
                    terms = None
                    break
            rules.append((n, key.lower(), terms, []))
        elif rules and key.lower() in ("exec", "pipe", "mail"):
            rules[-1][3].append((n, key.lower(), value))
    return rules


# ---- lines from a regex -------------------------------------------------------------------------------------
CATEGORY = {sre.CATEGORY_DIGIT: (r"\d", "7"), sre.CATEGORY_NOT_DIGIT: (r"\D", "x"), sre.CATEGORY_WORD: (r"\w", "w"),
            sre.CATEGORY_NOT_WORD: (r"\W", " "), sre.CATEGORY_SPACE: (r"\s", " "), sre.CATEGORY_NOT_SPACE: (r"\S", "x")}


def in_class(items, ch):
    return any(op is sre.LITERAL and ch == chr(av) or op is sre.RANGE and av[0] <= ord(ch) <= av[1]
               or op is sre.CATEGORY and re.fullmatch(CATEGORY[av][0], ch) for op, av in items)


def generate(nodes, k, groups):
    out = []
    for op, av in nodes:
        if op is sre.LITERAL:
            out.append(chr(av))
        elif op in (sre.NOT_LITERAL, sre.ANY):
            out.append("y" if op is sre.NOT_LITERAL and av == ord("x") else "x")
        elif op is sre.IN:
            neg = any(o is sre.NEGATE for o, _ in av)
            out.append(next(c for c in "xaA0bB1 ." + "".join(map(chr, range(33, 127))) if in_class(av, c) != neg))
        elif op is sre.BRANCH:
            out.append(generate(av[1][-1] if k else av[1][0], k, groups))
        elif op is sre.SUBPATTERN:
            text = generate(av[-1], k, groups)
            groups[av[0]] = text
            out.append(text)
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", None)):
            lo, hi, sub = av
            out.append(generate(sub, k, groups) * max(lo, min(hi, 1 + k)))
        elif op is sre.GROUPREF:
            out.append(groups.get(av, ""))
        elif op is sre.CATEGORY:
            out.append(CATEGORY[av][1])
        elif op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            pass
        else:
            raise ValueError(op)
    return "".join(out)


def lines_for(terms, k):
    """A line that makes every term true, or None; k=2 puts it inside syslog-like text (where that still matches)."""
    try:
        line = " ".join(generate(list(sre.parse(rx.pattern, rx.flags)), min(k, 1), {}) for neg, rx in terms if not neg)
    except (ValueError, StopIteration):
        return None
    if k == 2:
        line = "Dec  1 10:00:00 host prog: %s  tail words" % line
    return line if all(bool(rx.search(line)) != neg for neg, rx in terms) else None


def uses_line(actions):
    return any(re.search(r"\$(?:[0-9_*]|\{\d)", v) for _, a, v in actions if a in ("exec", "pipe"))


# ---- the copy with recorders --------------------------------------------------------------------------------
def rewrite(text, root):
    out = []
    for n, raw in enumerate(text.split("\n"), 1):
        m = re.match(r"^(\s*)(exec|pipe|mail)(\s*=\s*|\s+|$)(.*?)(\r?)$", raw, re.I)
        if m and m.group(2).lower() == "mail":
            raw = "%s%s %s%smailer=%s/bin/L%d-sendmail%s" % (m.group(1), m.group(2), m.group(4),
                                                           "," if m.group(4) else "", root, n, m.group(5))
        elif m:
            def program(p, n=n):
                word = p.group(2).replace("\\/", "/")
                if word in BUILTINS or word.startswith("$"):
                    return p.group()
                return p.group(1) + "%s/bin/L%d-%s" % (root, n, os.path.basename(word))

            def target(p, n=n):
                word = p.group(2).replace("\\/", "/")
                if word == "/dev/null":
                    return p.group()
                return p.group(1) + "%s/out/L%d-%s" % (root, n, word.strip("/").replace("/", "-"))
            cmd = re.sub(r"(^\s*\"?\s*|(?<!>)[|;&]\s*)([^\s|;&<>\"',]+)", program, m.group(4))
            cmd = re.sub(r"((?<![0-9&])>>?\s*)([^\s|;&<>\"',]+)", target, cmd)
            raw = m.group(1) + m.group(2) + m.group(3) + cmd + m.group(5)
        out.append(raw)
    return "\n".join(out)


def write(path, text):
    with open(path, "w") as fh:
        fh.write(text)
    return path


def stage(root, text, lines, no_limits=False):
    """The temp dir, the copy (throttle/threshold lines blanked with no_limits), its recorders, the lines file."""
    for d in ("bin", "rec", "out", "home", "sd", "bsd", "cwd", "inj"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    write(os.path.join(root, "cwd", "msg.txt"), "the msg.txt of the test\n")
    text = rewrite(text, root)
    for name in set(re.findall(re.escape(root) + r"/bin/(L\d+-[^\s|;&<>\"',]+)", text)):
        os.chmod(write(os.path.join(root, "bin", name), RECORDER), 0o755)
    if no_limits:
        text = "\n".join("" if re.match(r"\s*(throttle|threshold)\b", x, re.I) else x for x in text.split("\n"))
    return write(os.path.join(root, "swatch.conf"), text), write(os.path.join(root, "lines.log"),
                                                                  "".join(x + "\n" for x in lines))


def read(path):
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def collect(root):
    """{config line: Counter((argv, stdin))}, {out file: content}; both emptied for the next run."""
    rec, files = collections.defaultdict(collections.Counter), {}
    rd = os.path.join(root, "rec")
    for name in sorted(os.listdir(rd)):
        if name.endswith(".argv"):
            base = os.path.join(rd, name[:-5])
            with open(base + ".argv", "rb") as fh:
                argv = tuple(fh.read().decode("utf-8", "replace").split("\0")[:-1])
            with open(base + ".in", "rb") as fh:
                data = fh.read().decode("utf-8", "replace")
            prog = name[:-5].rsplit(".", 1)[0]
            rec[int(prog[1:prog.index("-")])][(prog.split("-", 1)[1],) + argv, data] += 1
    for name in os.listdir(os.path.join(root, "out")):
        with open(os.path.join(root, "out", name), "rb") as fh:
            files[name] = fh.read()
    for d in ("rec", "out", "sd", "bsd"):
        shutil.rmtree(os.path.join(root, d))
        os.mkdir(os.path.join(root, d))
    return rec, files


def run(argv, root):
    env = {"PATH": PATH, "HOME": os.path.join(root, "home"), "LANG": "C.UTF-8", "TZ": "UTC"}
    return subprocess.run(argv, cwd=os.path.join(root, "cwd"), env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=120)


def swatch(conf, lines_file, root):
    return run([SWATCH, "-c", conf, "--script-dir=" + os.path.join(root, "sd"), "--examine=" + lines_file], root)


def birdsentinel(conf, lines_file, root):
    new = conf + ".bs"
    conv = run([sys.executable, SCRIPT, "--convert-config", conf, "-o", new], root)
    return conv, run([sys.executable, SCRIPT, "-c", new, "--examine", lines_file, "--script-dir",
                      os.path.join(root, "bsd")], root) if os.path.exists(new) else None


def stdout_lines(data, is_swatch):
    text = data.decode("utf-8", "replace")
    if is_swatch:
        text = re.sub(r"^\n\*\*\* swatchdog version .* started at .*\n\n", "", text)
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    bells = text.count("\a")
    lines = [x for x in text.replace("\a", "").split("\n") if x and not x.startswith("ran L")]
    return bells, collections.Counter(lines)


# ---- the runs ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    if not os.path.isdir(CONFIGS) or not os.access(SWATCH, os.X_OK):
        return None
    results = {}
    for num, path in config_files().items():
        if num in NOT_RUN:
            continue
        root, text = str(tmp_path_factory.mktemp("eq%s" % num)), read(path)
        lines, counts = [], collections.Counter()
        for n, kind, terms, actions in rules_of(text):
            got = {lines_for(terms, k) for k in (0, 1, 2)} - {None} if terms and (num, n) not in FATAL else set()
            got = sorted(x for x in got if not (uses_line(actions) and META & set(x)))
            counts["with" if got else "fatal" if (num, n) in FATAL else "without"] += 1
            lines += got
        copy, lines_file = stage(root, text, lines)
        sw = swatch(copy, lines_file, root)
        s_rec, s_files = collect(root)
        conv, bs = birdsentinel(copy, lines_file, root)
        b_rec, b_files = collect(root)
        results[num] = dict(text=text, counts=counts, lines=lines, sw=sw, conv=conv, bs=bs, s_rec=s_rec, b_rec=b_rec,
                            s_files=s_files, b_files=b_files)
    return results


def test_swatch_does_not_run_the_excluded_configs(corpus_dir, tmp_path):
    need_tools(corpus_dir)
    for num, what in NOT_RUN.items():
        copy, lines_file = stage(str(tmp_path / num), read(config_files()[num]), ["a line"])
        err = swatch(copy, lines_file, str(tmp_path / num)).stderr.decode("utf-8", "replace")
        assert re.search(re.escape(what) if what else NO_COMPILE, err), (num, err[-300:])


def test_fatal_rules_kill_swatch(corpus_dir, tmp_path):
    need_tools(corpus_dir)
    for (num, line), what in FATAL.items():
        text = read(config_files()[num])
        rule = [r for r in rules_of(text) if r[0] == line][0]
        copy, lines_file = stage(str(tmp_path / num), text, [lines_for(rule[2], 0)])
        assert what in swatch(copy, lines_file, str(tmp_path / num)).stderr.decode("utf-8", "replace"), (num, line)


def compared(r):
    """{config line: (swatch's Counter, birdsentinel's)}: the recorders' (argv, stdin), stdout as line 0.  A pipe
    message swatch wrote without a final newline is compared with one (birdsentinel ends every message with one)."""
    pipes = {n for rule in rules_of(r["text"]) for n, a, _ in rule[3] if a == "pipe"}
    out = {}
    for line in set(r["s_rec"]) | set(r["b_rec"]):
        s = collections.Counter()
        for (argv, data), c in r["s_rec"].get(line, {}).items():
            bare = line in pipes and not data.endswith("\n")
            s[argv, data + "\n" if bare else data] += c
            r["newline"] = r.get("newline", 0) + bare * c
        out[line] = (s, r["b_rec"].get(line, collections.Counter()))
    so, bo = stdout_lines(r["sw"].stdout, True), stdout_lines(r["bs"].stdout, False)
    out[0] = tuple(collections.Counter({(("stdout", "bells %d" % x[0]), k): v for k, v in x[1].items()})
                   for x in (so, bo))
    return out


def test_swatch_and_converted_config_agree(corpus_dir, measured):
    need_tools(corpus_dir)
    agree, found, problems, loads = 0, {}, [], 0
    for num, r in sorted(measured.items()):
        err = r["sw"].stderr.decode("utf-8", "replace")
        assert not re.search(NO_COMPILE + "|syntax error|invalid keyword", err), (num, err[-800:])
        assert r["conv"].returncode in (0, 78), (num, r["conv"].stderr[-800:])
        loads += r["conv"].returncode == 0
        assert r["bs"] is not None and r["bs"].returncode == 0, (num, r["bs"] and r["bs"].stderr[-800:])
        assert r["s_files"] == r["b_files"], (num, r["s_files"], r["b_files"])
        for line, (s, b) in sorted(compared(r).items()):
            if s == b:
                agree += line > 0
                continue
            found[num, line] = (sorted((s - b).elements()), sorted((b - s).elements()))
    for key, (s, b) in sorted(found.items()):
        kind = KNOWN.get(key)
        if kind is None or not KINDS[kind](s, b):
            problems.append("%s line %d (%s): only swatch %r\n    only birdsentinel %r" % (key + (kind, s[:3], b[:3])))
    problems += ["known difference not seen: %s line %d %s" % (k + (KNOWN[k],)) for k in sorted(set(KNOWN) - set(found))
                 ]
    rules = sum((r["counts"] for r in measured.values()), collections.Counter())
    print("\nswatch equivalence: %d configs run by swatch and converted (%d load as they are); rules: %s; %d lines; "
          "%d commands agree, %d differ, known: %s; %d pipe messages without a final newline in swatch"
          % (len(measured), loads, dict(rules), sum(len(r["lines"]) for r in measured.values()), agree,
             len([k for k in found if k[1]]), dict(collections.Counter(KNOWN.values())),
             sum(r.get("newline", 0) for r in measured.values())))
    assert not problems, "\n".join(problems)
    assert agree > 0


def test_no_log_line_becomes_shell_code(corpus_dir, tmp_path_factory):
    """Lines with $(touch X), `touch X`, '; touch X; ' that hit each rule whose exec/pipe uses the line or a group
    (throttle/threshold lines blanked so every line acts): no X under birdsentinel; swatch, for the record."""
    need_tools(corpus_dir)
    configs = delivered = by_swatch = 0
    created, failed = [], []
    for num, path in config_files().items():
        if num in NOT_RUN:
            continue
        root, text = str(tmp_path_factory.mktemp("inj%s" % num)), read(path)
        inj = os.path.join(root, "inj")
        lines = []
        for n, kind, terms, actions in rules_of(text):
            base = terms and uses_line(actions) and (num, n) not in FATAL and (lines_for(terms, 2)
                                                                               or lines_for(terms, 0))
            for i, payload in enumerate(PAYLOADS if base else ()):
                p = payload.format(x=os.path.join(inj, "%s-%d-%d" % (num, n, i)))
                at = [0] + [m.start() for m in re.finditer(" ", base)] + [len(base)]
                hits = [c for c in (base[:j] + p + base[j:] for j in at) if all(bool(rx.search(c)) != neg
                                                                                 for neg, rx in terms)]
                lines += hits[:1] + hits[-1:] if len(hits) > 1 else hits
        if not lines:
            continue
        configs += 1
        copy, lines_file = stage(root, text, lines, no_limits=True)
        swatch(copy, lines_file, root)
        by_swatch += len(os.listdir(inj))
        shutil.rmtree(inj)
        os.mkdir(inj)
        collect(root)
        conv, bs = birdsentinel(copy, lines_file, root)
        created += ["%s: %s" % (num, f) for f in os.listdir(inj)]
        failed += [] if bs is not None and bs.returncode == 0 else [(num, conv.stderr[-500:], bs and bs.stderr[-500:])]
        rec, _ = collect(root)
        delivered += sum(c for recs in rec.values() for (argv, data), c in recs.items() if "touch" in " ".join(argv))
    print("\ninjection: %d configs; birdsentinel passed a payload as an argument %d times and created %d file(s); "
          "swatch created %d" % (configs, delivered, len(created), by_swatch))
    assert not created, created
    assert not failed, failed
    assert configs >= 8 and delivered > 0 and by_swatch > 0       # the payloads reached commands; swatch ran them
