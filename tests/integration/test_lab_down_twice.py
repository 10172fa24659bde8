"""`upgrader lab up`, `lab down`, `lab down` with the real command line: the first down
reports the lab's traffic; the second says there is no lab up and does not print the old
lab's traffic again (issue 16)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from upgrader.lab.manager import free_base_port
from upgrader.lab.sshlab import open_lab

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def upgrader(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("UPGRADER_LAB_DIR", None)
    return subprocess.run([sys.executable, "-m", "upgrader.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def test_a_second_lab_down_says_there_is_no_lab_up(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    started = False
    try:
        up = upgrader("lab", "up", "--hosts", "2", "--rps", "20", "--dir", str(lab_dir),
                      "--base-port", str(free_base_port()))
        assert up.returncode == 0, up.stderr
        started = True
        assert "2 hosts on 1.0.0" in up.stdout
        lab = open_lab(lab_dir)
        deadline = time.monotonic() + 20
        while lab.traffic_stats().get("requests", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)

        first = upgrader("lab", "down", "--dir", str(lab_dir))
        assert first.returncode == 0, first.stderr
        assert re.match(r"lab down; traffic: [\d,]+ requests?, ", first.stdout), first.stdout
        started = False

        second = upgrader("lab", "down", "--dir", str(lab_dir))
        assert second.returncode == 0, second.stderr
        assert "no lab up" in second.stdout, second.stdout
        assert "traffic" not in second.stdout, second.stdout
        assert "requests" not in second.stdout, second.stdout
    finally:
        if started:
            upgrader("lab", "down", "--dir", str(lab_dir))
