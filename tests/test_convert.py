"""--convert-config and the swatch syntax it rewrites: Perl's and/or/not in patterns (also read natively), commands
that need a shell (sh -c with the line as a positional parameter), '$_' inside single quotes (moved out; a warning when
a hand-written config keeps it), echo modes=X, $N beyond the groups, perlcode literals.  The end-to-end tests run the
converted config on lines that carry shell payloads and look at what the programs received."""

import json
import os
import subprocess
import sys

import pytest

import birdsentinel as bs


def convert(text, path="swatchrc"):
    return bs.convert_config(path, text)


def code_lines(text):
    return [x for x in text.split("\n") if x.strip() and not x.lstrip().startswith("#")]


# ---- patterns: Perl's word operators ------------------------------------------------------------

@pytest.mark.parametrize("words,symbols", [
    ("/a/ and /b/", "/a/ && /b/"),
    ("/a/ or /b/i", "/a/ || /b/i"),
    ("not /a/ and /b/", "!/a/ && /b/"),
    ("/a/ and not /b/", "/a/ && !/b/"),
    ("/x/ or not /y/", "/x/ || !/y/"),
])
def test_word_operators_match_like_their_symbols(words, symbols):
    w, s = bs.parse_pattern(words, "f", 1), bs.parse_pattern(symbols, "f", 1)
    assert (w.any_of, [(t.negated, t.source) for t in w.terms]) == (s.any_of, [(t.negated, t.source) for t in s.terms])
    for line in ("a b", "a", "b", "x", "y", "x y", "", "A B"):
        assert (w.match(line) is None) == (s.match(line) is None), line


def test_a_regex_named_and_is_still_a_regex():
    p = bs.parse_pattern("/and/ && /or/", "f", 1)
    assert [t.source for t in p.terms] == ["/and/", "/or/"]
    assert p.match("this or and that") and not p.match("and")


@pytest.mark.parametrize("value,what", [
    ("not /a/ && /b/", "mixes not with && or ||"),      # Perl: not (/a/ && /b/)
    ("/a/ and /b/ or /c/", "mixes && and ||"),
    ("/a/ nand /b/", "unexpected"),
])
def test_word_operators_that_would_change_meaning_are_refused(value, what):
    with pytest.raises(bs.ConfigError) as e:
        bs.parse_pattern(value, "f", 1)
    assert what in str(e.value)


# ---- the warning for '$_' in single quotes ------------------------------------------------------

def test_single_quoted_line_variable_warns_once_with_the_fix(logs):
    bs.parse_config("conf", "watchfor /x/\n  exec \"./notify '$_'\"\n")
    warned = [r.getMessage() for r in logs.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and '"conf", line 2' in warned[0] and "$_ inside single quotes" in warned[0]
    assert "--convert-config" in warned[0]


@pytest.mark.parametrize("command", ["sh -c 'logger \"$1\"' sh $_", "/x \"$_\"", "/x $_", "/x '${HOME}'"])
def test_no_warning_where_the_quotes_are_right(logs, command):
    bs.parse_config("conf", "watchfor /x/\n  exec %s\n" % command)
    assert not [r for r in logs.records if r.levelname == "WARNING"]


# ---- commands ----------------------------------------------------------------------------------

def cmd(value, groups=0, perl=None):
    notes = []
    return bs.convert_command(value, groups, perl or {}, notes.append), notes


@pytest.mark.parametrize("value,groups,want", [
    ("echo $0 | mail -s alert root", 0, "sh -c 'set -f; echo \"${1}\" | mail -s alert root' sh $_"),
    ("\"\\/x\\/y Y '$_' > /dev/null 2>&1\"", 0, "sh -c 'set -f; /x/y Y \"${1}\" > /dev/null 2>&1' sh $_"),
    ("./notify '$_'", 0, "./notify $_"),
    ("/usr/bin/logger -t swatch $0", 0, "/usr/bin/logger -t swatch $0"),
    ("/x $4 end", 1, "/x  end"),
    ("cat /var/log/*.log \"$0\"", 0, "sh -c 'cat /var/log/*.log \"${1}\"' sh $_"),
])
def test_commands(value, groups, want):
    got, notes = cmd(value, groups)
    assert got == want
    bs.parse_command(got, "f", 1, "exec")              # it loads


def test_a_literal_perl_variable_is_written_in():
    got, _ = cmd("/usr/local/bin/send $who alert $1", 1, {"who": "root\\@example.org"})
    assert got == "/usr/local/bin/send root\\@example.org alert $1"
    assert [t.expand("l", None) for t in bs.parse_command(got, "f", 1, "exec")][:2] == ["/usr/local/bin/send",
                                                                                      "root@example.org"]


@pytest.mark.parametrize("value,why", [("$script $1", "Perl variable $script"),
                                       ("$1 --flag", "program would come from the log line"),
                                       ("eval echo $0", ""), ("ssh backup logger $1", ""),
                                       ("echo x | sh -c \"logger $0\"", ""),
                                       ("/bin/sh -c 'logger -t x $0'", ""), ("sh -ec \"echo $0\"", ""),
                                       ("echo $0 | /bin/bash", ""), ("sudo bash -c 'echo $1'", ""),
                                       ("perl -e 'print \"$0\"'", ""), ("awk '/x/' $1", ""),
                                       ("echo hi; $1", "program would come"), ("echo $0 | $1", "program would come"),
                                       ("echo \\$(( $1 + 1 ))", "arithmetic"), ("ls * \"$(echo $0)\"", "substitution"),
                                       ("echo `echo $1`", "substitution"), ("echo $0 >&$1", "descriptor"),
                                       ("echo $0 \\$1 | cat", "shell's own"), ("printf '%s\\n' $0", "one config line"),
                                       ("/x $10", "$1 to $9 only"), ("echo \"$2\" >> /tmp/$1.x", "file name"),
                                       ("mail -s\\\"disk: $1\\\" root", "larger word"), ("/x 'a $1 b'", "larger word"),
                                       ("timeout 5 sh -c \"echo $1\"", ""), ("env -i sh -c 'x $0'", ""),
                                       ("echo $0 | sh /dev/stdin", "runs what"), ("echo $0 | perl5.36", "runs what"),
                                       ("find / -exec $1 {} +", ""), ("tar -xf x --to-command=$1", ""),
                                       ("echo $0 > $1", "file name")])
def test_commands_that_cannot_be_converted(value, why):
    got, notes = cmd(value, 10)
    assert got is None and why in " ".join(notes)


def test_notes_say_what_changed():
    _, notes = cmd("echo $0 | mail root")
    assert any("one argument" in n for n in notes) and any("sh -c" in n for n in notes)
    _, notes = cmd("./notify '$_'")
    assert notes == ["$_ inside '...' moved out of the quotes: the line or group goes there, as in swatch"]


# ---- whole configs -----------------------------------------------------------------------------

def test_config_rewrites_keep_comments_and_order():
    text = ("# header\n"
            "perlcode my $host_re = '\\w+ sshd';\n"
            "perlcode 0 my $unused = 5;\n"
            "\n"
            "watchfor /$host_re: Failed/ and not /invalid/\n"
            "  # a comment inside\n"
            "  echo modes=red\n"
            "  threshold track_by=$4,type=limit,count=1,seconds=60\n"
            "watchfor /(\\w+) logged in/\n"
            "  exec /usr/local/bin/the_bird_sentinel.pl \"$_\"\n")
    out, notes, ok = convert(text)
    assert ok, notes
    assert code_lines(out) == ["watchfor /\\w+ sshd: Failed/ && !/invalid/", "  echo red",
                               "  threshold track_by=,type=limit,count=1,seconds=60", "watchfor /(\\w+) logged in/",
                               "  exec /usr/local/bin/the_bird_sentinel.pl \"$_\""]
    assert out.startswith("# header\n") and "  # a comment inside" in out
    assert "'dm' may replace this exec" in out
    joined = "\n".join(notes)
    for said in ('"swatchrc", line 2: perlcode $host_re', '"swatchrc", line 3: perlcode whose variables are never',
                 "line 5: Perl's and, or, not", "line 7: echo modes=X", "line 8: $4, but the pattern has 0 group"):
        assert said in joined
    config = bs.parse_config("c", out)
    assert config.rules[0].pattern.match("host sshd: Failed password") and \
        not config.rules[0].pattern.match("host sshd: Failed invalid user")


def test_real_perl_is_commented_out_with_the_rules_that_need_it():
    text = ("perlcode 0 my $count = 0;\n"
            "perlcode 2 $count++;\n"
            "watchfor /error/\n"
            "  mail root,message=seen $count times\n"
            "watchfor /$pat/\n"
            "  echo\n"
            "watchfor /fine/\n"
            "  echo\n")
    out, notes, ok = convert(text)
    assert not ok
    lines = out.split("\n")
    assert lines[1] == "# CONVERT: perlcode 2 $count++;"
    assert lines[3] == "# CONVERT:   mail root,message=seen $count times"
    assert lines[4:6] == ["# CONVERT: watchfor /$pat/", "# CONVERT:   echo"]
    assert lines[6:8] == ["watchfor /fine/", "  echo"]
    assert len(bs.parse_config("c", out).rules) == 2
    assert any("line 5: Perl variable $pat inside a pattern" in n for n in notes)


# ---- the command line ----------------------------------------------------------------------------

def test_cli_exit_status_output_file_and_notes(tmp_path, script):
    good, bad, new = tmp_path / "good", tmp_path / "bad", tmp_path / "new"
    good.write_text("watchfor /a/ and /b/\n  exec echo $0 | logger\n")
    bad.write_text("watchfor /a/\n  break\n")
    r = subprocess.run([sys.executable, script, "--convert-config", str(good), "-o", str(new)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == ""
    assert "line 1: Perl's and, or, not" in r.stderr and "the result loads" in r.stderr
    assert "exec sh -c 'set -f; echo \"${1}\" | logger' sh $_" in new.read_text()
    r = subprocess.run([sys.executable, script, "--convert-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 78 and "# CONVERT:   break" in r.stdout and "unknown keyword or action 'break'" in r.stderr
    r = subprocess.run([sys.executable, script, "-o", str(new)], capture_output=True, text=True)
    assert r.returncode == 64 and "--output goes with --convert-config" in r.stderr


# ---- end to end: a log line never becomes shell code ---------------------------------------------

RECORDER = """#!/usr/bin/env python3
import json, sys
with open(%r, "a") as fh:
    fh.write(json.dumps({"argv": sys.argv[1:], "stdin": sys.stdin.read() if not sys.stdin.isatty() else ""}) + "\\n")
"""


def test_converted_commands_get_the_line_and_run_none_of_it(tmp_path, script, env):
    rec, log = tmp_path / "rec", tmp_path / "records"
    rec.write_text(RECORDER % str(log))
    rec.chmod(0o755)
    proof = tmp_path / "proof"
    swatch = ("watchfor /hit (\\S+)/\n"
              "  exec \"%(r)s Y '$_' > /dev/null 2>&1\"\n"
              "  exec echo $0 | %(r)s piped\n"
              "  exec %(r)s quoted \"$_\" ; true\n"
              "  exec %(r)s group $1 >> %(t)s/out\n" % {"r": rec, "t": tmp_path})
    (tmp_path / "swatchrc").write_text(swatch)
    r = subprocess.run([sys.executable, script, "--convert-config", str(tmp_path / "swatchrc"), "-o",
                        str(tmp_path / "conf")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    payloads = ["hit $(touch %s)" % proof, "hit `touch %s`" % proof, "hit '; touch %s; '" % proof,
                "hit \"; touch %s; \" *" % proof]
    (tmp_path / "log").write_text("".join(p + "\n" for p in payloads))
    r = subprocess.run([sys.executable, script, "-c", str(tmp_path / "conf"), "--examine", str(tmp_path / "log")],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert not proof.exists()
    records = [json.loads(x) for x in log.read_text().splitlines()]
    got = sorted((x["argv"][0], tuple(x["argv"][1:]), x["stdin"]) for x in records)
    want = sorted([("Y", (p,), "") for p in payloads] + [("piped", (), p + "\n") for p in payloads]
                  + [("quoted", (p,), "") for p in payloads] + [("group", (p.split()[1],), "") for p in payloads])
    assert got == want


def test_echo_with_free_text_prints_the_text():
    out, notes, ok = convert('watchfor /x/\n  echo "RCE alert, see logs"\n  echo red bold\n')
    assert ok and code_lines(out)[1:] == ["  echo normal,message=RCE alert, see logs", "  echo red bold"]
    assert any("line 2: echo TEXT written as echo,message=TEXT" in n for n in notes) and len(notes) == 1
    action = bs.parse_config("c", out).rules[0].actions[0]
    assert action.message.expand("the line", None) == "RCE alert, see logs"


def test_two_options_on_one_action_line_are_both_read():
    action = bs.parse_config("c", "watchfor /x/\n  pipe /bin/cat -u,MESSAGE=$_\\n,KEEP_OPEN=1\n").rules[0].actions[0]
    assert action.keep_open and [t.expand("l", None) for t in action.argv] == ["/bin/cat", "-u"]
    assert action.message.expand("the line", None) == "the line\n"


SWATCH = "/usr/bin/swatchdog"


@pytest.mark.skipif(not os.access(SWATCH, os.X_OK) and not os.environ.get("CI"), reason="swatch 3.2.4 is absent")
@pytest.mark.parametrize("pattern", ["/alpha/ and /beta/", "/alpha/ or /gamma/i", "/alpha/ and not /beta/",
                                     "not /beta/ and /gamma/", "/beta/ or not /alpha/"])
def test_word_operators_match_what_swatch_matches(tmp_path, script, env, pattern):
    lines = ["alpha beta", "alpha", "beta", "GAMMA", "gamma beta", "alpha gamma", "nothing", "beta alpha gamma"]
    (tmp_path / "log").write_text("".join(x + "\n" for x in lines))
    (tmp_path / "conf").write_text("watchfor %s\n  echo normal\n" % pattern)
    (tmp_path / "home").mkdir()
    run = dict(capture_output=True, text=True, cwd=str(tmp_path), env=dict(env, HOME=str(tmp_path / "home")))
    sw = subprocess.run([SWATCH, "-c", str(tmp_path / "conf"), "--script-dir=" + str(tmp_path),
                         "--examine=" + str(tmp_path / "log")], **run)
    bs_ = subprocess.run([sys.executable, script, "-c", str(tmp_path / "conf"), "--examine", str(tmp_path / "log")],
                         **run)
    assert bs_.returncode == 0, bs_.stderr
    swatch_printed = [x for x in sw.stdout.split("\n") if x in lines]
    assert swatch_printed, sw.stdout + sw.stderr          # swatch ran the rule
    assert bs_.stdout.split("\n")[:-1] == swatch_printed


@pytest.mark.parametrize("value,on", [("1", True), ("yes", True), ("on", True), ("0", False), ("no", False),
                                      ("off", False), ("OFF", False), ("false", False)])
def test_boolean_options_read_the_same_way(value, on):
    rules = bs.parse_config("c", "watchfor /x/\n  pipe /bin/cat,keep_open=%s\n  exec /bin/true,raw=%s\n"
                                 "  tweet,defang=%s\n" % (value, value, value)).rules
    assert [rules[0].actions[0].keep_open, rules[0].actions[1].raw, rules[0].actions[2].defang] == [on] * 3


def test_continued_lines_join_as_in_swatch_and_includes_are_named():
    out, notes, ok = convert("watchfor /^(foo|\\\nbar)/\n  echo\ninclude more.rc\nwatchfor /x/\n  exec echo '$0'\n")
    assert code_lines(out)[0] == "watchfor /^(foo|bar)/" and not ok       # not loadable until more.rc is converted
    assert bs.parse_config("c", out.replace("include more.rc", "")).rules[0].pattern.match("bar")
    assert any('line 4: more.rc is not converted' in n for n in notes)
    assert "exec echo $0" in out                    # converted, and checked, although the include is not there


def test_literal_empty_quotes_inside_double_quotes_stay():
    got, _ = cmd('echo "it\'\'s" "$0"', 0)
    assert got == 'echo "it\'\'s" "$0"'


def test_a_rewritten_line_keeps_its_indent_and_crlf():
    out, _, ok = convert("watchfor /a/ and /b/\r\n    exec echo $0 | logger\r\n")
    assert ok and out.split("\n")[:2] == ["watchfor /a/ && /b/\r",
                                            "    exec sh -c 'set -f; echo \"${1}\" | logger' sh $_\r"]
