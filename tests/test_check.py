"""--check: the config summary and the layout problems, each with its fix."""

import io
import os

import birdsentinel as bs
from fakex import write_creds


def run_check(args, env=None):
    out = io.StringIO()
    code = bs.main(["--check"] + args, env=env or {}, out=out)
    return code, out.getvalue()


def layout(tmp_path, secret_mode=0o600):
    conf = tmp_path / "rules.conf"
    conf.write_text("watchfor /bird_alert/\n    dm @alice\n")
    os.chmod(str(conf), 0o644)
    log = tmp_path / "messages"
    log.write_text("")
    script_dir = tmp_path / "tmp"
    script_dir.mkdir(mode=0o750)
    tw = tmp_path / "twitter"
    write_creds(str(tw), "ck", "cs-SECRET", "1-at", "ats-SECRET", mode=secret_mode)
    os.chmod(str(tw), 0o750)
    return ["-c", str(conf), "-t", str(log), "--script-dir", str(script_dir), "--twitter-dir", str(tw)]


def test_good_layout_says_ok(tmp_path):
    code, text = run_check(layout(tmp_path))
    assert code == 0, text
    assert "1 rules (1 watchfor, 0 ignore) from 1 file(s)" in text
    assert text.rstrip().endswith("ok")
    assert "FIX" not in text


def test_each_problem_is_named_with_its_fix(tmp_path):
    args = layout(tmp_path, secret_mode=0o644)
    os.chmod(str(tmp_path / "rules.conf"), 0o666)
    os.chmod(str(tmp_path / "twitter"), 0o755)
    os.rmdir(str(tmp_path / "tmp"))
    code, text = run_check(args + ["-t", str(tmp_path / "absent.log")])
    assert code == bs.EX_CONFIG
    fixes = [l for l in text.splitlines() if l.startswith("FIX: ")]
    joined = "\n".join(fixes)
    assert "script dir %s does not exist: mkdir -m 0750" % (tmp_path / "tmp") in joined
    assert "config file %s is writable by everyone (mode 0666): chmod 0644" % (tmp_path / "rules.conf") in joined
    assert "log file %s does not exist" % (tmp_path / "absent.log") in joined
    assert "credential dir %s is open to every user (mode 0755): chmod 0750" % (tmp_path / "twitter") in joined
    assert "refusing credential file %s: mode 0644" % (tmp_path / "twitter" / "consumer-key") in joined
    assert "ok" not in text.splitlines()


def test_credentials_directory_from_systemd_is_used_without_mode_checks(tmp_path):
    args = layout(tmp_path)
    cred = tmp_path / "creds"
    write_creds(str(cred), "ck", "cs-SECRET", "1-at", "ats-SECRET", mode=0o644)
    code, text = run_check(args, env={"CREDENTIALS_DIRECTORY": str(cred)})
    assert code == 0, text


def test_bad_config_is_a_config_error_not_a_traceback(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("watchfor /x/\n    threshold type=Limit,count=1,seconds=30\n")
    code, text = run_check(["-c", str(conf), "--script-dir", str(tmp_path)])
    assert code == bs.EX_CONFIG
    assert text == ""           # the one-line error goes to the log (stderr)
