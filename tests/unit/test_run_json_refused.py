"""`upgrader run FLEET --headless --json` refused before it starts (exit 3): stdout carries
one JSON object, the summary line's shape with the outcome ``refused``, the reason and the
fix, so a CI job that parses stdout gets the end as it does for a finished rollout. Before,
stdout was empty and only stderr said why. (A fleet unlike its file on a real lab:
tests/integration/test_inventory_lab.py; outside a deploy window: test_cli_windows.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from upgrader.journal import Journal

ROOT = Path(__file__).resolve().parents[2]


def upgrader(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UPGRADER_STATE_DIR": str(cwd / "state")}
    env.pop("UPGRADER_STATE", None)
    return subprocess.run([sys.executable, "-m", "upgrader.cli", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, env=env, cwd=cwd)


def lab_fleet(tmp_path: Path) -> Path:
    """A lab fleet whose lab folder holds no lab: the inventory refuses it (no lab up)."""
    path = tmp_path / "fleet.toml"
    path.write_text(f"""
[fleet]
name = "nolab"
[release]
current = "1.0.0"
target = "1.1.0"
[lab]
hosts = 2
dir = "{tmp_path / 'nolab'}"
[verify]
interval = "1s"
for = "1s"
no_data = "pass"
[strategy]
kind = "rolling"
""", encoding="utf-8")
    return path


def test_run_json_refused_with_no_lab_prints_one_object_and_exits_3(tmp_path):
    fleet = lab_fleet(tmp_path)
    out = upgrader("run", str(fleet), "--headless", "--json", cwd=tmp_path)
    assert out.returncode == 3, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("upgrader: refused: fleet nolab: no lab is up")  # as before
    lines = out.stdout.splitlines()
    assert len(lines) == 1, out.stdout
    end = json.loads(lines[0])
    assert end["outcome"] == "refused"
    assert end["fleet"] == "nolab" and end["strategy"] == "rolling"
    assert end["rollout"] is None                       # nothing was journaled
    assert end["reason"] == "fleet nolab: no lab is up where it looks; nothing was touched"
    assert "`upgrader lab up`" in end["fix"]
    (problem,) = end["problems"]
    assert problem["host"] is None and problem["fix"] == end["fix"]
    assert end["error"].startswith(end["reason"]) and problem["text"] in end["error"]
    journal = tmp_path / "state" / "journal.sqlite"
    if journal.exists():
        opened = Journal(journal)
        try:
            assert opened.latest("nolab") is None
        finally:
            opened.close()


def test_detach_json_refused_prints_the_same_object(tmp_path):
    """``--detach --json`` prints one object on stdout when it starts; refused, the same."""
    out = upgrader("run", str(lab_fleet(tmp_path)), "--detach", "--json", cwd=tmp_path)
    assert out.returncode == 3, out.stderr
    end = json.loads(out.stdout)
    assert end["outcome"] == "refused" and "`upgrader lab up`" in end["fix"]


def test_without_json_stdout_stays_empty(tmp_path):
    out = upgrader("run", str(lab_fleet(tmp_path)), "--headless", cwd=tmp_path)
    assert out.returncode == 3 and out.stdout == ""
    assert "refused" in out.stderr


def test_rollback_json_refused_prints_one_object(tmp_path):
    """``upgrader rollback --json`` with nothing to roll back (no completed rollout in the
    journal) is refused, exit 3, with the same object on stdout as ``run --json``."""
    out = upgrader("rollback", str(lab_fleet(tmp_path)), "--json", cwd=tmp_path)
    assert out.returncode == 3, out.stderr
    assert "nothing to roll back" in out.stderr
    (line,) = out.stdout.splitlines()
    end = json.loads(line)
    assert end["outcome"] == "refused" and end["fleet"] == "nolab" and end["rollout"] is None
    assert end["reason"] == "no completed rollout of nolab in the journal: nothing to roll back"
