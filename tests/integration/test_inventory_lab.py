"""The inventory before every rollout, on a real lab (app processes, the built-in balancer,
live traffic), through the ``upgrader`` command as an operator runs it.

Without the inventory: the second run of a canary re-installs every host (76 s of work for
nothing); a fleet naming hosts the lab lacks, or a lab on another release, is upgraded and
"rolled back" with failed user requests; with no lab up, a traceback and a failed rollout in
the journal. Each assertion below fails on that behaviour."""

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

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

PY = sys.executable


def fleet_file(path: Path, layout: LabLayout, *, hosts: int, current: str = "1.0.0",
               target: str = "1.1.0", name: str = "inv") -> Path:
    path.write_text(f"""
[fleet]
name = "{name}"
[release]
current = "{current}"
target = "{target}"
[lab]
hosts = {hosts}
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
kind = "canary"
steps = [{{hosts = 1, pause = "1s"}}, {{hosts = "100%"}}]
""")
    return path


def upgrader(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UPGRADER_STATE_DIR": str(cwd / "state")}
    env.pop("UPGRADER_STATE", None)
    return subprocess.run([PY, "-m", "upgrader.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def installs(lab: Lab, names: list[str]) -> dict[str, int]:
    return {n: len(lab.installs(n)) for n in names}


def traffic_failed(layout: LabLayout) -> int:
    stats = json.loads(layout.traffic_stats_file.read_text())
    return int(stats["failed"])


def status_json(fleet: Path, cwd: Path) -> dict[str, object]:
    out = upgrader("status", str(fleet), "--json", cwd=cwd)
    return json.loads(out.stdout) if out.stdout.startswith("{") else {}


def test_inventory_on_a_real_lab(tmp_path):
    layout = LabLayout(dir=tmp_path / "lab", hosts=4, base_port=free_base_port(),
                       base_release="1.0.0")
    lab = Lab(layout)
    asyncio.run(lab.up(traffic_rps=40, users=20))
    names = [f"web-{i:02d}" for i in range(1, 5)]
    try:
        good = fleet_file(tmp_path / "good.toml", layout, hosts=4)

        # (d) check on a good fleet: every host read, ready, exit 0
        out = upgrader("check", str(good), cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("release 1.0.0") == 4 and "ready: 0 host(s)" in out.stdout
        out = upgrader("check", str(good), "--json", cwd=tmp_path)
        data = json.loads(out.stdout)
        assert data["ready"] and data["problems"] == [] and not data["nothing_to_do"]
        assert {h["host"]: (h["release"], h["state"], h["reachable"]) for h in data["hosts"]} \
            == dict.fromkeys(names, ("1.0.0", "ready", True))

        # (a) the first run upgrades; the second reinstalls nothing, in a few seconds
        first = upgrader("run", str(good), "--headless", "--json", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert installs(lab, names) == dict.fromkeys(names, 2)     # base + 1.1.0
        rollouts = status_json(good, tmp_path)["rollout"]
        started = time.monotonic()
        second = upgrader("run", str(good), "--headless", "--json", cwd=tmp_path)
        took = time.monotonic() - started
        assert second.returncode == 0, second.stderr
        assert installs(lab, names) == dict.fromkeys(names, 2)     # nothing reinstalled
        assert "nothing to do" in second.stderr
        assert all(f"{n}: ok, already on 1.1.0" in second.stderr for n in names)
        lines = [json.loads(line) for line in second.stdout.splitlines()]
        assert sorted(e["host"] for e in lines
                      if e.get("kind") == "host_done" and e["mode"] == "ok") == names
        summary = lines[-1]
        assert summary["outcome"] == "completed" and summary["hosts"] == dict.fromkeys(
            names, "1.1.0")
        # the engine's own time: no step, no pause, no hold (the first run took its plan's
        # pauses, holds and four installs); the whole command, Python start-up included,
        # stays within a few seconds even on a loaded machine
        assert summary["duration_s"] < 2, summary
        assert took < 30, took
        out = upgrader("check", str(good), "--json", cwd=tmp_path)
        assert json.loads(out.stdout)["nothing_to_do"] and out.returncode == 0

        # (b) hosts the lab does not have, and a lab on another release: refused, exit 3
        failed_before = traffic_failed(layout)
        last = status_json(good, tmp_path)["rollout"]
        assert last != rollouts
        bigger = fleet_file(tmp_path / "bigger.toml", layout, hosts=6)
        other = fleet_file(tmp_path / "other.toml", layout, hosts=4, current="1.0.0",
                           target="1.2.0")
        # a fleet bigger than the running lab is refused when it is loaded (LabMisfit, exit 3,
        # naming both labs), before any provider or inventory
        for command in ("run", "check"):
            out = upgrader(command, str(bigger), "--headless", "--json", cwd=tmp_path) \
                if command == "run" else upgrader(command, str(bigger), cwd=tmp_path)
            assert out.returncode == 3, out.stderr
            assert "Traceback" not in out.stderr
            assert "does not fit the lab running" in out.stderr, out.stderr
            if command == "run":    # --json: one object on stdout, as for every end
                end = json.loads(out.stdout)
                assert end["outcome"] == "refused" and end["fleet"] is None  # not loaded
                assert "does not fit the lab running" in end["reason"] + end["error"]
            else:
                assert out.stdout == ""
        assert status_json(good, tmp_path)["rollout"] == last     # nothing journaled
        for fleet, expected in ((other, set(names)),):
            out = upgrader("run", str(fleet), "--headless", "--json", cwd=tmp_path)
            assert out.returncode == 3, out.stderr
            assert "Traceback" not in out.stderr
            (line,) = out.stdout.splitlines()       # a CI job parsing stdout gets the end
            end = json.loads(line)
            assert end["outcome"] == "refused" and end["fleet"] == "inv"
            assert {p["host"] for p in end["problems"]} == expected and end["fix"]
            assert end["reason"].startswith("fleet inv is not what its fleet file says")
            problem_lines = [line.strip() for line in out.stderr.splitlines()
                             if ": expected " in line]
            assert {line.split(":")[0] for line in problem_lines} == expected
            assert all("; fix: " in line for line in problem_lines)
            check = upgrader("check", str(fleet), "--json", cwd=tmp_path)
            assert check.returncode == 3
            assert {p["host"] for p in json.loads(check.stdout)["problems"]} == expected
            assert status_json(good, tmp_path)["rollout"] == last     # nothing journaled
        assert "found release 1.1.0" in upgrader("check", str(other), cwd=tmp_path).stdout
        assert installs(lab, names) == dict.fromkeys(names, 2)          # no host touched
        assert traffic_failed(layout) == failed_before                  # no user saw it

        # (c) no lab up: exit 3, no traceback, the fix names `upgrader lab up`
        asyncio.run(lab.down())
        for fleet in (good, fleet_file(tmp_path / "elsewhere.toml",
                                       LabLayout(dir=tmp_path / "nolab", hosts=4,
                                                 base_port=free_base_port()), hosts=4)):
            out = upgrader("run", str(fleet), "--headless", cwd=tmp_path)
            assert out.returncode == 3, out.stderr
            assert "Traceback" not in out.stderr
            assert "`upgrader lab up`" in out.stderr and "refused" in out.stderr
            assert len(out.stderr.splitlines()) < 15
            assert status_json(good, tmp_path)["rollout"] == last
    finally:
        if lab.is_running():
            asyncio.run(lab.down())
