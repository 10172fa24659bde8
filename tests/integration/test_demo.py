"""`upgrader demo --headless`: a real lab (app processes, the built-in balancer, a traffic
generator), one upgrade under live traffic, and the one JSON summary line it prints.

Each strategy must upgrade every host with not one failed user request; a bad release must be
caught and rolled back after only a few failed requests; take-down is the one strategy that
costs downtime, and says so. Every demo runs as a subprocess in a session of its own, with its
TMPDIR inside the test's tmp_path, so a lab left behind by a killed demo is found and stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from upgrader.lab import hostctl
from upgrader.lab.manager import Lab

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DEMO_TIMEOUT = 120          # seconds; a demo that takes longer is killed and the test fails
MAIN_HOSTS = [f"web-{i:02d}" for i in range(1, 7)]
NEW_HOSTS = [f"web-{i:02d}" for i in range(7, 13)]

#: strategy -> (--speed, --rps), tuned on a 2-core machine so that a good run stays under
#: ~40 s while the users send at least 2,000 requests
TUNING = {
    "canary": (3, 300),
    "rolling": (3, 300),
    "phased": (4, 300),
    "shedding": (2, 300),
    "bluegreen": (2, 450),
    "takedown": (2, 450),
}


def upgrader_argv() -> list[str]:
    script = Path(sys.executable).with_name("upgrader")
    return [str(script)] if script.exists() else [sys.executable, "-m", "upgrader.cli"]


class Demo:
    """Runs demos in ``tmp_path`` and stops whatever a demo left running."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.procs: list[subprocess.Popen] = []

    def run(self, *args: str, timeout: float = DEMO_TIMEOUT) -> tuple[int, str, str, float]:
        env = dict(os.environ, TMPDIR=str(self.tmp))
        env.pop("UPGRADER_STATE_DIR", None)
        proc = subprocess.Popen([*upgrader_argv(), "demo", "--headless", *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        self.procs.append(proc)
        started = time.monotonic()
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            pytest.fail(f"demo {args} ran past {timeout}s; stderr tail:\n{err[-3000:]}")
        return proc.returncode, out, err, time.monotonic() - started

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                kill_group(proc)
                proc.wait(10)
        for state in self.tmp.glob("upgrader-demo-*/lab.json"):
            try:
                lab = Lab.from_dir(state.parent)
            except Exception:
                continue
            try:
                asyncio.run(asyncio.wait_for(lab.down(), 60))
            except Exception:
                pass
            for pid in lab.running_pids().values():       # pids checked against cmdlines
                hostctl.terminate(pid, 5.0)
        shutil.rmtree(self.tmp, ignore_errors=True)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def demo(tmp_path):
    runner = Demo(tmp_path)
    leftovers: list[Path] = []
    try:
        yield runner
        leftovers = list(runner.tmp.glob("upgrader-demo-*"))
    finally:
        runner.cleanup()
    assert not leftovers, f"a demo left its lab folder behind: {leftovers}"


def one_json_line(out: str, err: str) -> dict:
    lines = out.splitlines()
    assert len(lines) == 1, f"stdout must be exactly one JSON line, got {len(lines)}:\n{out}" \
                            f"\nstderr tail:\n{err[-3000:]}"
    return json.loads(lines[0])


def record(request, summary: dict, elapsed: float) -> None:
    """Keep the measured numbers in the test report (`pytest -rA` / junit properties)."""
    request.node.user_properties.append(("summary", json.dumps(
        {k: summary.get(k) for k in ("outcome", "requests", "failed_requests", "duration_s",
                                     "maintenance_responses", "downtime_s")}
        | {"elapsed_s": round(elapsed, 1)})))
    print(f"\n{request.node.name}: requests={summary.get('requests')} "
          f"failed={summary.get('failed_requests')} rollout={summary.get('duration_s')}s "
          f"wall={elapsed:.1f}s error={summary.get('error', '')[:120]!r}")


# --------------------------------------------------------------------------------------------
# good releases: no user notices


@pytest.mark.parametrize("strategy", ["canary", "rolling", "phased", "shedding", "bluegreen"])
def test_demo_upgrades_every_host_without_a_failed_request(demo, request, strategy):
    speed, rps = TUNING[strategy]
    code, out, err, elapsed = demo.run("--strategy", strategy, "--hosts", "6",
                                       "--speed", str(speed), "--rps", str(rps))
    summary = one_json_line(out, err)
    record(request, summary, elapsed)
    assert code == 0, err[-3000:]
    assert summary["outcome"] == "completed"
    assert summary["strategy"] == strategy
    assert summary["failed_requests"] == 0, summary
    assert summary["requests"] >= 2000, summary
    assert "error" not in summary
    if strategy == "shedding":
        assert summary["hosts"] == {**dict.fromkeys(MAIN_HOSTS),
                                    **dict.fromkeys(NEW_HOSTS, "1.1.0")}
    else:
        assert summary["hosts"] == dict.fromkeys(MAIN_HOSTS, "1.1.0")
    assert "maintenance_responses" not in summary      # nobody saw a maintenance page


def test_demo_takedown_costs_downtime_but_fails_nobody(demo, request):
    speed, rps = TUNING["takedown"]
    code, out, err, elapsed = demo.run("--strategy", "takedown", "--hosts", "6",
                                       "--speed", str(speed), "--rps", str(rps))
    summary = one_json_line(out, err)
    record(request, summary, elapsed)
    assert code == 0, err[-3000:]
    assert summary["outcome"] == "completed"
    assert summary["hosts"] == dict.fromkeys(MAIN_HOSTS, "1.1.0")
    assert summary["failed_requests"] == 0, summary
    assert summary["requests"] >= 2000, summary
    # users were told to come back (503 + Retry-After), which is downtime, not failure
    assert summary["maintenance_responses"] > 0, summary
    assert summary["downtime_s"] > 0, summary


# --------------------------------------------------------------------------------------------
# a bad release: caught, rolled back, few users hurt

VERDICT = re.compile(r"error_rate FAIL: (?P<value>[\d.]+)% \(limit (?P<limit>[\d.]+)%")


@pytest.mark.parametrize("strategy", ["canary", "rolling", "phased", "shedding", "bluegreen"])
def test_demo_bad_release_is_rolled_back(demo, request, strategy):
    speed, rps = TUNING[strategy]
    code, out, err, elapsed = demo.run("--strategy", strategy, "--hosts", "6", "--bad-release",
                                       "--speed", str(speed), "--rps", str(rps))
    summary = one_json_line(out, err)
    record(request, summary, elapsed)
    assert code == 1, err[-3000:]
    assert summary["outcome"] == "rolled_back"
    for host in MAIN_HOSTS:
        assert summary["hosts"][host] == "1.0.0", summary["hosts"]
    if strategy == "shedding":
        assert all(summary["hosts"][h] is None for h in NEW_HOSTS), summary["hosts"]
    assert summary["requests"] > 0
    assert summary["failed_requests"] < 100, summary
    error = summary["error"]
    match = VERDICT.search(error)
    if match:      # the analysis explains itself: the measured value and the limit
        assert float(match["value"]) > float(match["limit"]) == 2.0, error
    else:          # or the release never met a user: its system test failed
        assert "system_test failed" in error, error
    if strategy == "bluegreen":
        # green is system tested before any user reaches it: nobody sees the bad release
        assert "system_test failed" in error, error
        assert summary["failed_requests"] == 0, summary


# --------------------------------------------------------------------------------------------
# bad input


def test_demo_refuses_zero_hosts(demo):
    code, out, err, _ = demo.run("--hosts", "0", timeout=30)
    assert code == 2
    assert "--hosts" in err and "Traceback" not in err
    assert out == ""
    assert not list(demo.tmp.glob("upgrader-demo-*"))     # no lab was started


# --------------------------------------------------------------------------------------------
# a feature roll-out: no host changes, a flag goes on for everyone (issue 16: it crashed)


def test_demo_feature_turns_its_flag_on_for_everyone(demo, request):
    code, out, err, elapsed = demo.run("--strategy", "feature", "--hosts", "4",
                                       "--speed", "3", "--rps", "200")
    summary = one_json_line(out, err)
    record(request, summary, elapsed)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    assert summary["outcome"] == "completed"
    assert summary["strategy"] == "feature"
    # no host changed release
    assert summary["hosts"] == dict.fromkeys(MAIN_HOSTS[:4], "1.0.0")
    assert summary["failed_requests"] == 0, summary
    assert "feature flag demo-feature on for a growing share of users" in err
