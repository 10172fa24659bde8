"""The built-in balancer under load: 1,000 user requests a second for 60 s while a rolling
upgrade drains, restarts and re-enables every host behind it. Not one request may fail,
and the balancer's memory must stay flat (no per-request leak).

Throughput and added latency against direct requests are measured by bench/balancer.py
(results in bench/RESULTS.md); this test asserts behaviour only.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from upgrader.lab.layout import LabLayout
from upgrader.lab.manager import Lab, free_base_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RPS = 1000
WINDOW_S = 60.0


def upgrader_argv() -> list[str]:
    script = Path(sys.executable).with_name("upgrader")
    return [str(script)] if script.exists() else [sys.executable, "-m", "upgrader.cli"]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


FLEET = """
[fleet]
name = "load"
environment = "lab"

[release]
current = "1.0.0"
target = "1.1.0"

[lab]
hosts = 4
dir = "{dir}"
base_port = {port}

[verify]
error_rate_max = "0.5%"
min_requests = 100
interval = "3s"
for = "12s"

[timing]
host_upgrade = "5s"
drain_timeout = "10s"

[strategy]
kind = "rolling"
on_failure = "rollback"
batch = [1]
max_unavailable = "25%"
"""


def test_one_thousand_requests_a_second_through_a_rolling_upgrade(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    base = free_base_port()
    layout = LabLayout(dir=lab_dir, hosts=4, base_port=base)
    lab = Lab(layout)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(dir=lab_dir, port=base), encoding="utf-8")
    state = asyncio.run(lab.up(traffic_rps=RPS, users=500))
    balancer_pid = state["pids"]["balancer"]
    proc = None
    try:
        time.sleep(3.0)          # let the generator reach its rate before the window opens
        before = lab.traffic_stats()
        started = time.monotonic()
        proc = subprocess.Popen([*upgrader_argv(), "run", "--headless", str(fleet),
                                 "--state-dir", str(tmp_path / "state")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        samples: list[tuple[float, int]] = []
        while time.monotonic() - started < WINDOW_S or proc.poll() is None:
            samples.append((time.monotonic() - started, rss_kb(balancer_pid)))
            if time.monotonic() - started > 240:
                break
            time.sleep(2.0)
        out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - started
        after = lab.traffic_stats()
        assert proc.returncode == 0, err[-3000:]
        assert "COMPLETED" in err

        status = asyncio.run(lab.status())
        assert {h["version"] for h in status["hosts"]} == {"1.1.0"}

        requests = after["requests"] - before["requests"]
        failed = after["failed"] - before["failed"]
        assert failed == 0, (f"{failed} of {requests} requests failed: "
                             f"{json.dumps(after.get('errors', {}))}")
        # the generator really sent about 1,000 a second over the whole window
        assert requests >= 0.9 * RPS * elapsed, f"{requests} requests in {elapsed:.0f} s"
        # memory flat: after warm-up the balancer's RSS grows by less than 8 MB over the run
        warm = [kb for t, kb in samples if t >= 10.0]
        assert len(warm) >= 10, samples
        growth_mb = (max(warm[-3:]) - min(warm[:3])) / 1024
        assert growth_mb < 8.0, f"balancer RSS grew {growth_mb:.1f} MB: {samples}"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        asyncio.run(lab.down())
