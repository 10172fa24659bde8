"""``upgrader rollback --detach`` on a real lab (issue 15): like ``run --detach``, the
roll-back runs in a controller process of its own that serves the control API; the command
prints the controller's pid (``--json``: one object), ``status`` shows who drives the
fleet, and ``upgrader attach`` follows the roll-back to its end (its exit code the
outcome's). Hosts back on the old release, 0 failed user requests."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from upgrader.lab.layout import LabLayout
from upgrader.lab.manager import Lab, free_base_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

HOSTS = 3
NAMES = [f"web-{i:02d}" for i in range(1, HOSTS + 1)]


def fleet_file(path: Path, layout: LabLayout) -> Path:
    # no roll-back window: `upgrader rollback` is an ordinary rollout with its pauses, long
    # enough to attach to while it runs
    path.write_text(f"""
[fleet]
name = "rbd"
[release]
current = "1.0.0"
target = "1.1.0"
[lab]
hosts = {HOSTS}
dir = "{layout.dir}"
base_port = {layout.base_port}
[verify]
error_rate_max = "5%"
min_requests = 5
interval = "1s"
for = "1s"
no_data = "pass"
[timing]
host_upgrade = "2s"
[strategy]
kind = "rolling"
batch = 1
pause = "2s"
""")
    return path


def upgrader(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UPGRADER_STATE_DIR": str(cwd / "state")}
    env.pop("UPGRADER_STATE", None)
    return subprocess.run([sys.executable, "-m", "upgrader.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=200,
                          stdin=subprocess.DEVNULL)


def lines(out: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_rollback_detached_is_driven_by_a_controller_and_attach_follows_it(tmp_path: Path):
    layout = LabLayout(dir=tmp_path / "lab", hosts=HOSTS, base_port=free_base_port(),
                       base_release="1.0.0")
    lab = Lab(layout)
    asyncio.run(lab.up(traffic_rps=40, users=20))
    try:
        fleet = fleet_file(tmp_path / "fleet.toml", layout)
        first = upgrader("run", str(fleet), "--headless", cwd=tmp_path)
        assert first.returncode == 0, first.stderr

        back = upgrader("rollback", str(fleet), "--detach", "--json", cwd=tmp_path)
        assert back.returncode == 0, back.stderr
        said, started = lines(back)
        assert said["rollback"] == {"from": "1.1.0", "to": "1.0.0", "in_window": False}
        pid = started["pid"]
        assert isinstance(pid, int) and started["attach"] == f"upgrader attach {fleet}"
        assert "outside the roll-back window" in back.stderr
        assert f"runs in controller pid {pid}" in back.stderr

        # the controller drives the fleet (the control API's lock holder), as for `run`
        deadline = time.monotonic() + 30
        while True:
            status = json.loads(upgrader("status", str(fleet), "--json", cwd=tmp_path).stdout)
            if status["target"] == "1.0.0":
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status["current"] == "1.1.0"
        if status["unfinished"]:
            assert status["driven_by"] and str(pid) in status["driven_by"], status

        follow = upgrader("attach", str(fleet), "--headless", "--json", cwd=tmp_path)
        assert follow.returncode == 0, follow.stderr
        seen = [e for e in lines(follow) if "kind" in e]
        assert seen and seen[-1]["kind"] == "rollout_finished", seen[-3:]
        assert seen[-1]["outcome"] == "completed"
        final = json.loads(upgrader("status", str(fleet), "--json", cwd=tmp_path).stdout)
        assert (final["current"], final["target"], final["status"]) == (
            "1.1.0", "1.0.0", "completed")
        assert {n: lab.installs(n)[-1]["release"] for n in NAMES} == dict.fromkeys(NAMES,
                                                                                  "1.0.0")
        assert int(json.loads(layout.traffic_stats_file.read_text())["failed"]) == 0
    finally:
        asyncio.run(lab.down())


def test_a_roll_back_whose_controller_died_is_finished_by_rollback(tmp_path: Path):
    """The controller of a detached roll-back is killed half-way (SIGKILL: no clean-up). The
    journal keeps it unfinished, 1.1.0 -> 1.0.0, the other way round from the fleet file:
    `upgrader rollback` finishes it from its journal, every host on 1.0.0, 0 failed user
    requests."""
    import signal

    layout = LabLayout(dir=tmp_path / "lab", hosts=HOSTS, base_port=free_base_port(),
                       base_release="1.0.0")
    lab = Lab(layout)
    asyncio.run(lab.up(traffic_rps=40, users=20))
    try:
        fleet = fleet_file(tmp_path / "fleet.toml", layout)
        assert upgrader("run", str(fleet), "--headless", cwd=tmp_path).returncode == 0
        back = upgrader("rollback", str(fleet), "--detach", "--json", cwd=tmp_path)
        assert back.returncode == 0, back.stderr
        pid = lines(back)[1]["pid"]
        # kill it once the first host is back on 1.0.0 (bounded poll)
        deadline = time.monotonic() + 60
        while not any(lab.installs(n)[-1]["release"] == "1.0.0" for n in NAMES):
            assert time.monotonic() < deadline, "the roll-back never moved a host"
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            status = json.loads(upgrader("status", str(fleet), "--json", cwd=tmp_path).stdout)
            if status["unfinished"] and not status["driven_by"]:
                break
            if status["status"] == "completed":
                pytest.skip("the roll-back ended before the controller was killed")
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert (status["current"], status["target"]) == ("1.1.0", "1.0.0")

        text = upgrader("status", str(fleet), cwd=tmp_path).stdout
        assert f"`upgrader rollback {fleet}` finishes it" in text, text
        # `resume` cannot take it (the fleet file says the other way round) and says who can
        refused = upgrader("resume", str(fleet), "--headless", cwd=tmp_path)
        assert refused.returncode == 3 and "that command finishes it" in refused.stderr
        done = upgrader("rollback", str(fleet), "--headless", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "finishing the unfinished roll-back" in done.stderr
        final = json.loads(upgrader("status", str(fleet), "--json", cwd=tmp_path).stdout)
        assert final["rollout"] == status["rollout"] and final["status"] == "completed"
        assert {n: lab.installs(n)[-1]["release"] for n in NAMES} == dict.fromkeys(NAMES,
                                                                                  "1.0.0")
        assert int(json.loads(layout.traffic_stats_file.read_text())["failed"]) == 0
    finally:
        asyncio.run(lab.down())
