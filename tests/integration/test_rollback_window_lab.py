"""``upgrader rollback`` on a real lab (app processes, the built-in balancer, live traffic),
through the command as an operator runs it (issue 15, point 3).

Inside the roll-back window the command goes straight back: one batch, no pause, no
verification hold, several hosts at once, each host switched back to the release directory
it kept (the lab's ``[commands] switch``, not an install), 0 failed user requests. Once the window has closed
(a window by time, ``rollback_window = "1s"``, polled through ``upgrader status``), the same
command is an ordinary rollout of the fleet's strategy, with its verification, and says so.
Without the command both runs fail (argparse: exit 2).

A blue-green fleet goes back by swapping every host to its old slot, which still runs the
previous release: nothing is installed (the hosts' install records do not change)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from upgrader.lab import hostctl
from upgrader.lab.layout import LabLayout
from upgrader.lab.manager import Lab, free_base_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

PY = sys.executable
HOSTS = 4
NAMES = [f"web-{i:02d}" for i in range(1, HOSTS + 1)]


def fleet_file(path: Path, layout: LabLayout, window: str) -> Path:
    path.write_text(f"""
[fleet]
name = "rbw"
[release]
current = "1.0.0"
target = "1.1.0"
rollback_window = {window}
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
pause = "1s"
""")
    return path


def upgrader(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UPGRADER_STATE_DIR": str(cwd / "state")}
    env.pop("UPGRADER_STATE", None)
    return subprocess.run([PY, "-m", "upgrader.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=200)


def events(out: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def live_releases(lab: Lab) -> dict[str, str]:
    return {n: lab.installs(n)[-1]["release"] for n in NAMES}


def traffic_failed(layout: LabLayout) -> int:
    return int(json.loads(layout.traffic_stats_file.read_text())["failed"])


def test_rollback_inside_and_outside_the_window(tmp_path):
    layout = LabLayout(dir=tmp_path / "lab", hosts=HOSTS, base_port=free_base_port(),
                       base_release="1.0.0")
    lab = Lab(layout)
    asyncio.run(lab.up(traffic_rps=40, users=20))
    try:
        inside = fleet_file(tmp_path / "inside.toml", layout, '"1h"')
        closing = fleet_file(tmp_path / "closing.toml", layout, '"1s"')

        # nothing completed yet: refused, exit 3, nothing changed
        out = upgrader("rollback", str(inside), "--headless", cwd=tmp_path)
        assert out.returncode == 3, out.stderr
        assert "nothing to roll back" in out.stderr

        first = upgrader("run", str(inside), "--headless", "--json", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert live_releases(lab) == dict.fromkeys(NAMES, "1.1.0")
        kinds = [e.get("kind") for e in events(first)]
        assert "rollback_window" in kinds            # journaled at completion
        status = json.loads(upgrader("status", str(inside), "--json", cwd=tmp_path).stdout)
        window = status["rollback_window"]
        assert window["open"] and window["previous"] == "1.0.0" and window["live"] == "1.1.0"
        assert window["rollback"]["in_window"] and window["closes_at"] > time.time()
        # the engine's event (which the TUI shows) carries the figure status shows
        [opened] = [e for e in events(first) if e.get("kind") == "rollback_window"]
        assert opened["rollback_s"] == window["rollback"]["estimate_s"]
        text = upgrader("status", str(inside), cwd=tmp_path).stdout
        assert "roll-back window open" in text and "goes straight back to 1.0.0" in text

        # bad input: exit 2, nothing changed
        out = upgrader("rollback", str(inside), "--to", "1.1.0", cwd=tmp_path)
        assert out.returncode == 2 and "live release already" in out.stderr
        assert live_releases(lab) == dict.fromkeys(NAMES, "1.1.0")

        # inside the window: straight back
        back = upgrader("rollback", str(inside), "--headless", "--json", cwd=tmp_path)
        assert back.returncode == 0, back.stderr
        assert "inside the roll-back window" in back.stderr
        lines = events(back)
        kinds = [e.get("kind") for e in lines]
        # (the background analyzer still watches, as in any rollout: a safety net, not a hold)
        assert "pause_started" not in kinds
        starts = [e for e in lines if e.get("kind") == "step_started"]
        assert len(starts) == 1, starts                # one batch of every host, no Verify step
        assert live_releases(lab) == dict.fromkeys(NAMES, "1.0.0")
        # each host switched back to the release directory it kept (the lab's [commands]
        # switch): nothing installed
        assert all(lab.installs(n)[-1].get("switch") for n in NAMES), [
            lab.installs(n)[-1] for n in NAMES]
        assert lines[-1]["outcome"] == "completed"
        # up to the capacity rule (min_capacity 50 %: 2 of 4 hosts out at once): two hosts
        # were draining at the same time at some point
        out_of_service, most = set(), 0
        for e in lines:
            if e.get("kind") == "host_phase" and e["phase"] == "draining":
                out_of_service.add(e["host"])
            elif e.get("kind") == "host_done":
                out_of_service.discard(e["host"])
            most = max(most, len(out_of_service))
        assert most == 2, most

        # forward again, then let the 1 s window of `closing` close (polled, bounded)
        again = upgrader("run", str(inside), "--headless", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        deadline = time.monotonic() + 30
        while True:
            status = json.loads(upgrader("status", str(closing), "--json",
                                         cwd=tmp_path).stdout)
            if not status["rollback_window"]["open"]:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert "roll-back window closed" in upgrader("status", str(closing), cwd=tmp_path).stdout

        # outside the window: an ordinary rollout, verification included, and it says so
        slow = upgrader("rollback", str(closing), "--headless", "--json", cwd=tmp_path)
        assert slow.returncode == 0, slow.stderr
        assert "outside the roll-back window" in slow.stderr
        assert "the window closed at" in slow.stderr
        kinds = [e.get("kind") for e in events(slow)]
        assert "pause_started" in kinds
        assert kinds.count("step_started") > HOSTS       # batches of 1, verify holds, pauses
        assert live_releases(lab) == dict.fromkeys(NAMES, "1.0.0")
        # an ordinary rollout does not know the release is still there: it installs
        assert not any(lab.installs(n)[-1].get("switch") for n in NAMES)
        assert traffic_failed(layout) == 0
    finally:
        asyncio.run(lab.down())


def test_bluegreen_rollback_inside_the_window_swaps_back_without_installing(tmp_path):
    layout = LabLayout(dir=tmp_path / "lab", hosts=HOSTS, base_port=free_base_port(),
                       base_release="1.0.0", slots=True)
    lab = Lab(layout)
    asyncio.run(lab.up(traffic_rps=40, users=20))
    try:
        fleet = fleet_file(tmp_path / "bg.toml", layout, '"1h"')
        fleet.write_text(fleet.read_text().replace(
            'kind = "rolling"\nbatch = 1\npause = "1s"', 'kind = "bluegreen"\nbatch = 2')
            .replace(f"hosts = {HOSTS}\n", f"hosts = {HOSTS}\nslots = true\n"))
        first = upgrader("run", str(fleet), "--headless", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        installs = {n: lab.installs(n) for n in NAMES}
        assert {n: r[-1]["release"] for n, r in installs.items()} == dict.fromkeys(
            NAMES, "1.1.0")


        async def backends() -> dict[str, tuple[str | None, str, float]]:
            balancer = lab.balancer()
            try:
                state = await balancer.state()
            finally:
                await balancer.aclose()
            return {n: (b.pool, b.state, b.weight) for n, b in state.backends.items()}

        # web-04's old slot has stopped since (its process gone): that one slot is
        # installed and started again; the others are swapped to as they are
        old_slot = next(n.partition("@")[2] for n, (pool, _, _) in asyncio.run(backends()).items()
                        if n.startswith("web-04@") and pool == "1.0.0")
        assert hostctl.stop(layout.host_root("web-04"), old_slot)

        back = upgrader("rollback", str(fleet), "--headless", "--json", cwd=tmp_path)
        assert back.returncode == 0, back.stderr
        assert "every host swaps back to its old slot" in back.stderr
        lines = events(back)
        assert lines[-1]["outcome"] == "completed"
        prepared = {e["host"]: e["reused"] for e in lines if e.get("kind") == "host_done"
                    and e.get("mode") == "prepare"}
        assert prepared == {**dict.fromkeys(NAMES, True), "web-04": False}, prepared
        assert {e["host"] for e in lines if e.get("kind") == "host_phase"
                and e.get("phase") == "installing"} == {"web-04"}
        now = {n: lab.installs(n) for n in NAMES}
        assert {n: now[n] for n in NAMES[:3]} == {n: installs[n] for n in NAMES[:3]}
        assert now["web-04"][-1]["release"] == "1.0.0"
        assert [e.get("step") for e in lines if e.get("kind") == "step_started"] == \
            ["prepare_slots", "swap_slots"]                 # no system test, no hold
        assert {pool for pool, state, weight in asyncio.run(backends()).values()
                if state == "ready" and weight > 0} == {"1.0.0"}
        assert traffic_failed(layout) == 0
    finally:
        asyncio.run(lab.down())
