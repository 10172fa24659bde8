"""Labs and sample fleets that fit (issue 12, point 6), with real labs started through the
command line: a sample fleet reaches a lab on a non-default base port, a lab too small for
a fleet is named with the command that fits, ``lab up``'s ``next:`` command runs, and
``upgrader lab reset`` puts every host back on the base release without a failed request.

Each test fails without the change it covers: before it, a fleet's ``[lab]`` table took
base port 18000 whatever ran (the balancer spec pointed at a port nothing listened on),
an 8-host fleet against a 4-host lab loaded without a word, ``lab up`` always printed
``upgrader run sample_fleets/canary.toml`` (which then could not reach a lab outside the
default dir or port) and there was no ``lab reset`` (argparse exits 2 on it).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from upgrader.lab import hostctl
from upgrader.lab.manager import free_base_port
from upgrader.lab.sshlab import open_lab

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "upgrader.cli"]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def upgrader(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
             check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                            cwd=ROOT, env={**os.environ, **(env or {})},
                            stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, (args, result.returncode, result.stdout, result.stderr)
    return result


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def next_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.strip().startswith("next:")]
    assert len(lines) == 1, stdout
    return lines[0].split("next:", 1)[1].strip()


def split_command(command: str) -> tuple[dict[str, str], list[str]]:
    """``VAR=value upgrader a b`` -> ({VAR: value}, [a, b])."""
    words = shlex.split(command)
    env = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[0] == "upgrader", command
    return env, words[1:]


class CliLab:
    """A lab started with ``upgrader lab up --dir`` in tmp_path; always stopped after."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "lab"
        self.started = False

    def up(self, *args: str) -> str:
        result = upgrader("lab", "up", "--dir", str(self.dir), *args, check=True)
        self.started = True
        lab = open_lab(self.dir)
        wait_until(lambda: lab.traffic_stats().get("ok", 0) >= 20, 20,
                   "the users' first requests")
        return result.stdout

    def stats(self) -> dict[str, Any]:
        return open_lab(self.dir).traffic_stats()

    def stats_after(self, moment: float) -> dict[str, Any]:
        """Traffic stats written after ``moment`` (time.time())."""
        def fresh() -> dict[str, Any] | None:
            try:
                if (self.dir / "traffic.json").stat().st_mtime > moment + 0.6:
                    return self.stats()
            except OSError:
                pass
            return None
        return wait_until(fresh, 10, "traffic stats written after the reset")

    def current(self, host: str, slot: str = "default") -> str:
        root = self.dir / "hosts" / host
        result = subprocess.run([sys.executable, "-m", "upgrader.lab.hostctl", "current",
                                 "--root", str(root), "--slot", slot, "--port", "1"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def down(self) -> None:
        if self.started:
            upgrader("lab", "down", "--dir", str(self.dir), timeout=120)


@pytest.fixture
def cli_lab(tmp_path):
    lab = CliLab(tmp_path)
    try:
        yield lab
    finally:
        lab.down()
        left = open_lab(lab.dir).running_pids() if (lab.dir / "lab.json").exists() else {}
        for pid in left.values():
            hostctl.terminate(pid, 5.0)
        assert not left, f"still running after lab down: {left}"


def served_version(port: int) -> str | None:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return resp.headers.get("X-Version")
    except OSError:
        return None


# --------------------------------------------------------------------------------------------


def test_a_sample_fleet_reaches_a_lab_on_another_base_port(cli_lab, tmp_path):
    """Before: canary.toml's [lab] took base port 18000 whatever ran, so its balancer spec
    pointed at a port nothing listened on. Now the unpinned port comes from the lab's
    lab.json; a pinned port the lab does not use is refused (exit 3) naming both."""
    base = free_base_port()
    cli_lab.up("--base-port", str(base), "--rps", "50")
    env = {"UPGRADER_LAB_DIR": str(cli_lab.dir)}

    from upgrader.config import load_fleet
    from upgrader.plugins import Plugins

    old = os.environ.get("UPGRADER_LAB_DIR")
    os.environ["UPGRADER_LAB_DIR"] = str(cli_lab.dir)
    try:
        fleet = load_fleet(ROOT / "sample_fleets" / "canary.toml")
    finally:
        if old is None:
            del os.environ["UPGRADER_LAB_DIR"]
        else:
            os.environ["UPGRADER_LAB_DIR"] = old
    assert [h.port for h in fleet.hosts] == [base + 100 + i for i in range(1, 9)]
    assert fleet.balancer.settings["admin_url"] == f"http://127.0.0.1:{base + 1}"

    async def backends() -> set[str]:
        balancer = Plugins().create("balancer", fleet.balancer)
        try:
            return set((await balancer.state()).backends)
        finally:
            await balancer.aclose()

    assert asyncio.run(backends()) == {f"web-{i:02d}" for i in range(1, 9)}
    assert upgrader("plan", "sample_fleets/canary.toml", env=env).returncode == 0

    pinned = tmp_path / "pinned.toml"
    text = (ROOT / "sample_fleets" / "canary.toml").read_text()
    pinned.write_text(text.replace("[lab]\nhosts = 8\n",
                                   f"[lab]\nhosts = 8\nbase_port = {base + 1000}\n"))
    result = upgrader("plan", str(pinned), env=env)
    assert result.returncode == 3, result.stderr
    assert f"pins base_port = {base + 1000}" in result.stderr
    assert f"uses {base}" in result.stderr
    assert "drop base_port" in result.stderr


def test_a_4_host_lab_refuses_the_8_host_fleet_naming_both_and_what_fits(cli_lab, tmp_path):
    """Before: the 8-host canary ran against a 4-host lab (84 failed requests, roll-back of
    hosts that never existed). Now loading it is refused, exit 3 (the file is valid; the
    running lab does not fit it; nothing is touched), naming both sizes, the running lab's
    ports and the commands that fit; `lab up` said no sample fits and what each needs."""
    base = free_base_port()
    out = cli_lab.up("--hosts", "4", "--base-port", str(base), "--rps", "50")
    assert "no sample fleet fits this 4-host local lab" in out
    assert "canary.toml: 8 hosts" in out
    env = {"UPGRADER_LAB_DIR": str(cli_lab.dir)}
    state = tmp_path / "state"
    for args in (("plan", "sample_fleets/canary.toml"),
                 ("run", "sample_fleets/canary.toml", "--headless", "--state-dir", str(state))):
        result = upgrader(*args, env=env)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        err = result.stderr
        assert "Traceback" not in err
        assert "the fleet needs 8 hosts; the running lab has 4" in err
        assert f"base port {base}" in err and f"hosts {base + 101}-{base + 104}" in err
        assert f"upgrader lab down && upgrader lab up --base-port {base}" in err
    lab = open_lab(cli_lab.dir)
    assert all(len(lab.installs(f"web-{i:02d}")) == 1 for i in range(1, 5))   # untouched
    assert not state.exists() or not any(state.iterdir())   # no journal, no lock


def test_next_command_runs_then_reset_puts_every_host_back_without_a_failed_request(
        cli_lab, tmp_path):
    """`lab up --dir D --base-port B`: its next: command (with UPGRADER_LAB_DIR=D) really
    runs the canary against that lab; the controller is killed once web-01 serves 1.1.0
    (so the lab is left half-upgraded, a split set); `upgrader lab reset` then puts every
    host on 1.0.0 in service, with no failed user request (before: no `lab reset`)."""
    base = free_base_port()
    out = cli_lab.up("--base-port", str(base), "--rps", "100")
    env, args = split_command(next_line(out))
    assert env == {"UPGRADER_LAB_DIR": str(cli_lab.dir)}
    assert args == ["run", "sample_fleets/canary.toml", "--headless"]
    controller = subprocess.Popen(
        [*CLI, *args, "--state-dir", str(tmp_path / "state")], cwd=ROOT,
        env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: served_version(base + 101) == "1.1.0", 60,
                   "web-01 serving 1.1.0 (the canary reached the lab)")
    finally:
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait(10)
    assert cli_lab.current("web-01") == "1.1.0"

    before = cli_lab.stats()
    result = upgrader("lab", "reset", "--dir", str(cli_lab.dir), check=True)
    assert "every host on 1.0.0" in result.stdout and "web-01" in result.stdout
    done = time.time()
    for i in range(1, 9):
        assert cli_lab.current(f"web-{i:02d}") == "1.0.0"
        assert served_version(base + 100 + i) == "1.0.0"
    lab = open_lab(cli_lab.dir)

    async def table() -> Any:
        balancer = lab.balancer()
        try:
            return await balancer.state()
        finally:
            await balancer.aclose()

    state = asyncio.run(table())
    assert state.split is None and state.routes is None
    assert {(b.name, b.pool, b.weight, b.state) for b in state.backends.values()} == {
        (f"web-{i:02d}", "1.0.0", 100, "ready") for i in range(1, 9)}
    after = cli_lab.stats_after(done)
    assert after["requests"] > before["requests"]
    assert after["failed"] == 0, after

    again = upgrader("lab", "reset", "--dir", str(cli_lab.dir), check=True)
    assert "nothing to reset" in again.stdout


@pytest.mark.slow
def test_the_ssh_lab_runs_its_next_command_and_resets_over_ssh(tmp_path):
    """The SSH lab (sshd per host, HAProxy): `lab up --ssh`'s next: command runs the whole
    ssh-lab.toml canary against it (on its own port and subnet, which the sample does not
    pin), then `lab reset` puts every host back on 1.0.0 over SSH with no failed request."""
    from tests.integration.test_ssh_lab import _free_subnet, _requirements, network_mode

    _requirements()
    lab_dir = tmp_path / "lab"
    base = free_base_port()
    result = upgrader("lab", "up", "--ssh", "--hosts", "4", "--dir", str(lab_dir),
                      "--base-port", str(base), "--subnet", _free_subnet(),
                      "--network", network_mode(), "--rps", "50", timeout=120)
    try:
        assert result.returncode == 0, result.stderr
        env, args = split_command(next_line(result.stdout))
        assert args == ["run", "sample_fleets/ssh-lab.toml", "--headless"]
        run = upgrader(*args, "--state-dir", str(tmp_path / "state"), env=env, timeout=180)
        assert run.returncode == 0, run.stderr[-2000:]
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        assert set(summary["hosts"].values()) == {"1.1.0"}
        lab = open_lab(lab_dir)
        before = lab.traffic_stats()
        reset = upgrader("lab", "reset", "--dir", str(lab_dir), check=True)
        assert "4 reset" in reset.stdout
        done = time.time()
        for i in range(1, 5):
            root = lab_dir / "hosts" / f"web-{i:02d}"
            assert hostctl.current_release(root, "default") == "1.0.0"
        status = asyncio.run(lab.status())
        assert [h["version"] for h in status["hosts"]] == ["1.0.0"] * 4
        after = wait_until(
            lambda: (lab_dir / "traffic.json").stat().st_mtime > done + 0.6
            and lab.traffic_stats(), 10, "traffic stats after the reset")
        assert after["requests"] > before["requests"] and after["failed"] == 0, after
    finally:
        upgrader("lab", "down", "--dir", str(lab_dir), timeout=120)


def test_a_stopped_host_leaves_no_request_in_flight_so_reset_does_not_wait(cli_lab):
    """A request the balancer retried on another backend (the first refused the connection)
    was counted off the retry's backend, not the refusing one: the stopped host's in-flight
    count stayed above 0 for ever (and the other's went below), so every later drain of it
    (a rollout's or `lab reset`'s) waited its whole timeout. Now both read 0 once the
    requests are answered, and the reset finds web-01 drained at once."""
    base = free_base_port()
    cli_lab.up("--hosts", "4", "--base-port", str(base), "--rps", "50")
    root = cli_lab.dir / "hosts" / "web-01"
    subprocess.run([sys.executable, "-m", "upgrader.lab.hostctl", "stop", "--root", str(root),
                    "--slot", "default", "--port", str(base + 101)], check=True, timeout=30)
    lab = open_lab(cli_lab.dir)
    seen = lab.traffic_stats().get("requests", 0)
    wait_until(lambda: lab.traffic_stats().get("requests", 0) > seen + 100, 20,
               "100 more user requests with web-01 stopped")

    async def inflight() -> dict[str, int]:
        balancer = lab.balancer()
        try:
            return {b.name: b.inflight for b in (await balancer.state()).backends.values()}
        finally:
            await balancer.aclose()

    assert asyncio.run(inflight())["web-01"] == 0
    assert min(asyncio.run(inflight()).values()) >= 0
    result = upgrader("lab", "reset", "--dir", str(cli_lab.dir), check=True)
    assert "1 reset (web-01)" in result.stdout, result.stdout
    assert cli_lab.current("web-01") == "1.0.0" and served_version(base + 101) == "1.0.0"
    assert cli_lab.stats_after(time.time())["failed"] == 0


def test_a_promql_sample_on_a_lab_without_prometheus_is_refused_naming_the_fix(cli_lab,
                                                                               tmp_path):
    """sample_fleets/prometheus.toml names no url: its metrics read the running lab's
    Prometheus. On a lab started without --prometheus it is refused before anything starts
    (exit 3), naming the metrics and the command that makes a lab with Prometheus; `lab up`
    does not offer it as next: (tests/integration/test_prometheus_canary.py runs it on a lab
    with Prometheus)."""
    base = free_base_port()
    out = cli_lab.up("--hosts", "3", "--base-port", str(base), "--rps", "20")
    assert "no sample fleet fits this 3-host local lab" in out     # not offered as next:
    assert "prometheus.toml: 3 hosts, Prometheus (lab up --prometheus)" in out
    env = {"UPGRADER_LAB_DIR": str(cli_lab.dir)}
    state = tmp_path / "state"
    for args in (("plan", "sample_fleets/prometheus.toml"),
                 ("run", "sample_fleets/prometheus.toml", "--headless", "--state-dir",
                  str(state))):
        result = upgrader(*args, env=env)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert "error_rate, slow_requests read the lab's Prometheus" in result.stderr
        assert "--prometheus`, or give the metrics a url" in result.stderr
    lab = open_lab(cli_lab.dir)
    assert all(len(lab.installs(f"web-{i:02d}")) == 1 for i in range(1, 4))   # untouched
    assert not state.exists() or not any(state.iterdir())
