"""bench/analysis.py runs: a smoke run of one release with both judges on a real lab prints
the table with a row per judge (the figures themselves are in bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_of_the_thirty_percent_release_is_caught_by_both_judges(tmp_path):
    rows = tmp_path / "rows.jsonl"
    out = subprocess.run([sys.executable, str(ROOT / "bench/analysis.py"), "--quick",
                          "--releases", "+30% errors", "--json", str(rows)],
                         capture_output=True, text=True, timeout=220, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["judge"] for r in runs] == ["threshold", "statistical"]
    assert all(r["rolled_back"] and r["detect_s"] is not None for r in runs), runs
    table = [line for line in out.stdout.splitlines() if line.startswith("| +30% errors")]
    assert len(table) == 2 and all("1/1 detected" in line for line in table), out.stdout


def test_quick_run_on_a_baseline_with_background_errors(tmp_path):
    """--base-errors 1: the lab's base release fails 1 % (1.0.0-err1), the +30 points release
    is 1.1.0-r1-err31; both judges catch it, and each row counts the canary's own failed
    answers (the baseline's background failures are not the release's)."""
    rows = tmp_path / "rows.jsonl"
    out = subprocess.run([sys.executable, str(ROOT / "bench/analysis.py"), "--quick",
                          "--base-errors", "1", "--releases", "+30% errors",
                          "--json", str(rows)],
                         capture_output=True, text=True, timeout=220, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [(r["judge"], r["target"]) for r in runs] == [
        ("threshold", "1.1.0-r1-err31"), ("statistical", "1.1.0-r1-err31")]
    assert all(r["rolled_back"] and r["base_errors"] == 1 for r in runs), runs
    assert all(0 < r["canary_failed"] <= r["canary_answers"] for r in runs), runs
    table = [line for line in out.stdout.splitlines() if line.startswith("| +30 points (31 %)")]
    assert len(table) == 2 and all("1/1 detected" in line for line in table), out.stdout


def test_base_errors_refuses_the_slow_release_and_a_rate_out_of_range():
    for extra, message in ((["--releases", "slow"], "slow has no name with a base error"),
                           (["--base-errors", "90"], "--base-errors: 90 is not a percent")):
        args = ["--base-errors", "1", *extra] if extra[0] != "--base-errors" else extra
        out = subprocess.run([sys.executable, str(ROOT / "bench/analysis.py"), *args],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 2 and message in out.stderr, out.stderr
