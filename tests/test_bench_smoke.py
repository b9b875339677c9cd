"""Smoke test for the benchmark (issue 5): bench/run --quick still runs and fills its table.

No timed assertions: the figures are only checked to be numbers. swatch is not required
(--no-swatch); the DM row is checked only when tests/fakex.py exists.
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

    rows = table_rows(md, "## Throughput")
    assert len(rows) == 6
    for rules, program, seconds, lps, mbps, rss, out_lines, _ratio in rows:
        if program == "swatchdog":
            assert lps == "skipped"
            continue
        for value in (seconds, lps, mbps, rss, out_lines):
            assert NUMBER.match(value), (program, rules, value)

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
    assert all(t[2] in ("met", "**not met**", "n/a") for t in targets)

    tp = results["throughput"]
    for rules in ("1", "10"):
        for program in ("birdsentinel", "grep"):
            assert tp[rules][program]["lines_per_s"] > 0
    # the generated file's alert lines are what grep and birdsentinel both see
    assert tp["10"]["grep"]["output_lines"] == results["data"]["alert_lines"]
