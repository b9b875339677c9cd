"""Smoke test for the benchmark (issue 5): bench/run --quick still runs and fills its table.

No timed assertions: the figures are only checked to be numbers. swatch is not required
(--no-swatch); the DM row is checked only when tests/fakex.py exists. birdsentinel is measured
two ways wherever start-up counts (throughput, peak RSS, their targets): as a script and
"installed" (a byte-compiled copy imported as pip's console script does); both must have figures.
"""
import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(REPO, "bench", "run")
GEN = os.path.join(REPO, "bench", "gen_syslog.py")
NUMBER = re.compile(r"^[0-9][0-9,]*(\.[0-9]+)?$")


def run_quick(tmp_path) -> "tuple[subprocess.CompletedProcess, dict, str]":
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, RUN, "--quick", "--no-swatch", "--lines", "5000", "--idle-seconds", "1",
         "--tail-lines", "5", "--dm-lines", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    results = {}
    if (out / "results.json").exists():
        results = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text() if (out / "results.md").exists() else ""
    return proc, results, md


def table_rows(md: str, heading: str) -> "list[list[str]]":
    """Body rows of the first Markdown table after the heading line starting with `heading`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows[1:]  # drop the header row


def test_gen_syslog_is_deterministic_and_exact(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    for path in (a, b):
        subprocess.run([sys.executable, GEN, "-o", str(path), "--lines", "3000", "--seed", "7",
                        "--alert-fraction", "0.1"], check=True)
    assert a.read_bytes() == b.read_bytes()
    lines = a.read_bytes().splitlines()
    assert len(lines) == 3000
    assert all(79 <= len(line) <= 199 for line in lines)  # 80-200 bytes with the newline
    patterns = subprocess.run([sys.executable, GEN, "--print-patterns", "10"], check=True,
                              capture_output=True, text=True).stdout.split("\n")
    rx = re.compile("|".join(p for p in patterns if p).encode())
    assert sum(1 for line in lines if rx.search(line)) == 300


def test_gen_syslog_single_line(tmp_path):
    path = tmp_path / "one.log"
    subprocess.run([sys.executable, GEN, "-o", str(path), "--single-line", "100K",
                    "--single-line-match"], check=True)
    data = path.read_bytes()
    assert len(data) == 100 * 1024 and data.count(b"\n") == 1 and data.endswith(b"\n")


def test_bench_run_quick_produces_numeric_table(tmp_path):
    proc, results, md = run_quick(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout == md
    assert "nproc" in md and "kernel" in md and "Python" in md

    assert "birdsentinel variants" in md and ".pyc used: yes" in md, md[:2000]
    inst = results["installed"]
    assert inst["pyc_used"] and inst["loaded_from"].endswith(".pyc"), inst
    assert inst["import_ms_pyc"] > 0 and inst["import_ms_source"] > 0, inst

    rows = table_rows(md, "## Throughput")
    assert len(rows) == 8
    assert [(r[0], r[1]) for r in rows if r[1].startswith("birdsentinel")] == [
        (rules, f"birdsentinel ({v})") for rules in ("1", "10") for v in ("script", "installed")]
    for rules, program, seconds, lps, mbps, rss, out_lines, by_script, by_inst in rows:
        if program == "swatchdog":
            assert lps == "skipped"
            continue
        for value in (seconds, lps, mbps, rss, out_lines):
            assert NUMBER.match(value), (program, rules, value)
        if program.startswith("`LC_ALL=C grep"):
            for value in (by_script, by_inst):  # both variants compared with grep
                assert re.match(r"^[0-9]+\.[0-9]+×$", value), (program, rules, value)

    rss_rows = {r[0]: r[1:] for r in table_rows(md, "## birdsentinel peak RSS")}
    floor = [figures for label, figures in rss_rows.items()
             if "import birdsentinel" in label or "--version" in label]
    assert len(floor) == 2
    for figures in floor:  # script seconds, script MB, installed seconds, installed MB
        assert len(figures) == 4 and all(NUMBER.match(v) for v in figures), figures

    rows = {(r[0], r[1]): r for r in table_rows(md, "## Tail-mode latency")}
    for action in ("echo", "exec"):
        median_ms, p95_ms = rows[("birdsentinel", action)][2:4]
        assert NUMBER.match(median_ms) and NUMBER.match(p95_ms), rows[("birdsentinel", action)]
    dm = [r for key, r in rows.items() if key[1].startswith("dm")][0]
    if os.path.exists(os.path.join(REPO, "tests", "fakex.py")):
        assert NUMBER.match(dm[2]) and NUMBER.match(dm[3]), dm

    idle = {r[0]: r for r in table_rows(md, "## Idle")}
    assert NUMBER.match(idle["birdsentinel"][2]), idle["birdsentinel"]

    targets = table_rows(md, "## Targets")
    assert len(targets) == 8
    verdicts = ("met", "**not met**", "n/a")
    assert all(t[2] in verdicts for t in targets)
    # throughput (3 rows) and peak RSS are judged per variant; tail, DM, idle: script only
    judged_both = [t for t in targets if t[0].startswith(("1 rule", "10 rules", "peak RSS"))]
    assert len(judged_both) == 4
    assert all(t[4] in verdicts for t in judged_both), judged_both
    grep_target = [t for t in targets if "grep" in t[0]][0]
    assert grep_target[2] != "n/a" and grep_target[4] != "n/a", grep_target
    assert all(t[4] == "—" for t in targets if t not in judged_both)

    tp = results["throughput"]
    for rules in ("1", "10"):
        for program in ("birdsentinel", "birdsentinel_installed", "grep"):
            assert tp[rules][program]["lines_per_s"] > 0
    # the generated file's alert lines are what grep and birdsentinel both see
    assert tp["10"]["grep"]["output_lines"] == results["data"]["alert_lines"]
    assert tp["10"]["birdsentinel_installed"]["output_lines"] == results["data"]["alert_lines"]
    for variant in ("script", "installed"):
        for key in ("import", "version"):
            assert results["big"][variant][key]["rss_mb"] > 0, (variant, key)
