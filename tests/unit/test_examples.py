"""The examples in examples/ run and say what they do (they run in virtual time: seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY_CANARY = ROOT / "examples" / "library_canary.py"


def run_example(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(path), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_library_canary_completes_after_the_operator_promotes():
    proc = run_example(LIBRARY_CANARY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "outcome: completed" in lines
    assert "hosts on 1.1.0: 40 of 40; install commands: 40" in lines
    assert "controls: promote, pause, resume" in lines
    # the promote came while the rollout waited for it, and the rest followed it
    promote = next(i for i, line in enumerate(lines) if line.endswith("control: promote"))
    waiting = next(i for i, line in enumerate(lines) if line.endswith("pause until promoted"))
    assert waiting < promote
    assert any("upgrade 36 host(s), one every 1s" in line for line in lines[promote:])
    assert any(line.endswith("finished: completed") for line in lines)


def test_library_canary_rolls_a_bad_release_back():
    proc = run_example(LIBRARY_CANARY, "--bad")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "outcome: rolled_back" in lines
    assert "hosts on 1.1.0: 0 of 40; install commands: 2" in lines
    assert "controls: none" in lines
    assert any("rolling back 1 host(s): analysis: error_rate FAIL" in line for line in lines)
