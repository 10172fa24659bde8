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
