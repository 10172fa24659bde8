"""A fault mid-roll-back leaves a resumable rollout (issue 12, point 4), with real HAProxy.

The SSH lab (sshd and an app per host, HAProxy in front driven through its Runtime API, the
lab's users) runs a bad release; verification fails and the roll-back starts. While the first
host's roll-back installs, the Runtime API socket is renamed away: the run ends exit 1 with
"roll-back incomplete", `upgrader status` names what is left, `upgrader resume` with the
socket still gone fails again and stays resumable; the socket back, `upgrader resume`
completes the roll-back: every host on the old release, HAProxy sending users only to it,
the journal finished.

Without the fix the first run was journaled finished (`failed`), so the first `resume`
answered "no unfinished rollout" (exit 3) and the fleet stayed half-way: the test fails at
the status check (``status == "rollback_incomplete"``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from upgrader.lab import hostctl
from upgrader.lab.manager import free_base_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HOSTS = ["web-01", "web-02", "web-03"]
CURRENT, BAD = "1.0.0", "1.1.0-bad"
RUN_TIMEOUT = 120

FLEET = """
[fleet]
name = "rollback-resume"
environment = "lab"

[release]
current = "1.0.0"
target = "1.1.0-bad"

[lab]
ssh = true
hosts = 3
base_port = {base_port}
dir = "{dir}"
network = "{network}"
subnet = "{subnet}"

[verify]
error_rate_max = "2%"
min_requests = 5
consecutive_failures = 2
interval = "1s"
for = "4s"
no_data = "wait"

[timing]
host_upgrade = "2s"
drain_timeout = "10s"
health_timeout = "10s"
health_interval = "100ms"
command_timeout = "20s"

[strategy]
on_failure = "rollback"
kind = "canary"
steps = [{{hosts = 1, pause = "3s"}}, {{rate = "1/s", until = "100%"}}]
"""


def _requirements() -> None:
    from upgrader.lab.haproxy import haproxy_binary
    from upgrader.lab.sshd import sshd_path

    if sshd_path() is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server)")
    if haproxy_binary() is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    try:
        import upgrader_haproxy  # noqa: F401
        import upgrader_ssh  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"a plugin is missing: {exc}")


def _free_subnet() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                         text=True).stdout + subprocess.run(
        ["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    taken = set()
    for word in out.split():
        try:
            taken.add(ipaddress.IPv4Interface(word).network)
        except ValueError:
            continue
    rng = random.SystemRandom()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.232.{rng.randrange(1, 250)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    pytest.fail("no free 10.232.X.0/24 subnet")


def _network() -> str:
    from upgrader.lab.sshlab import netns_unavailable

    forced = os.environ.get("UPGRADER_SSH_LAB_NETWORK")
    if forced in ("netns", "loopback"):
        return forced
    return "netns" if netns_unavailable() is None else "loopback"


def upgrader_argv() -> list[str]:
    script = Path(sys.executable).with_name("upgrader")
    return [str(script)] if script.exists() else [sys.executable, "-m", "upgrader.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("UPGRADER_STATE_DIR", None)
    return env


def cli(*args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([*upgrader_argv(), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=_env())


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


class Run:
    """`upgrader run|resume FLEET --headless --json` in a session of its own; a thread reads
    its event lines so the test can act on one at once."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*upgrader_argv(), *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=_env(), start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.events: list[dict] = []
        self.summary: dict | None = None
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _take(self, line: str) -> dict | None:
        try:
            data = json.loads(line)
        except ValueError:
            return None
        if "kind" in data:
            self.events.append(data)
            return data
        self.summary = data
        return None

    def wait_for(self, predicate, timeout: float = RUN_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"the run ended before the event: {self.events[-5:]}; "
                            f"{self.proc.stderr.read()[-2000:] if self.proc.stderr else ''}")
            event = self._take(line)
            if event is not None and predicate(event):
                return event
        pytest.fail(f"no such event within {timeout}s: {self.events[-5:]}")

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the run went on past {timeout}s")
        while (line := self.lines.get(timeout=10)) is not None:
            self._take(line)
        self.stderr = self.proc.stderr.read() if self.proc.stderr else ""
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def ssh_lab(tmp_path):
    from upgrader.lab.sshlab import SshLab, SshLabLayout

    _requirements()
    layout = SshLabLayout(dir=tmp_path / "lab", base_port=free_base_port(), hosts=3,
                          network=_network(), subnet=_free_subnet())
    lab = SshLab(layout)
    runs: list[Run] = []
    try:
        asyncio.run(lab.up(traffic_rps=60, users=300))
        wait_until(lambda: lab.traffic_stats().get("ok", 0) >= 30, 15,
                   "the users' first requests through HAProxy")
        yield lab, runs
    finally:
        for run in runs:
            run.stop()
        socket = layout.haproxy_site().socket_path
        moved = socket.with_name("admin.sock.gone")
        if moved.exists() and not socket.exists():
            moved.rename(socket)
        try:
            asyncio.run(asyncio.wait_for(lab.down(), 60))
        finally:
            for pid in lab.running_pids().values():
                hostctl.terminate(pid, 5.0)
            lab._remove_network()


def test_a_balancer_fault_mid_rollback_is_resumed_to_a_complete_rollback(ssh_lab, tmp_path):
    lab, runs = ssh_lab
    layout = lab.layout
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(base_port=layout.base_port, dir=layout.dir,
                                  network=layout.network, subnet=layout.subnet),
                     encoding="utf-8")
    state = tmp_path / "state"
    args = (str(fleet), "--headless", "--json", "--state-dir", str(state))
    socket = layout.haproxy_site().socket_path
    gone = socket.with_name("admin.sock.gone")

    # 1. the bad release fails verification; as the roll-back installs 1.0.0 on the canary,
    #    the Runtime API socket disappears
    run = Run("run", *args)
    runs.append(run)
    run.wait_for(lambda e: e["kind"] == "host_phase" and e.get("mode") == "rollback"
                 and e.get("phase") == "installing")
    socket.rename(gone)
    assert run.finish() == 1, run.stderr[-2000:]
    assert run.summary is not None and run.summary["outcome"] == "failed", run.summary
    assert "roll-back incomplete" in run.summary["error"], run.summary
    assert run.summary.get("rollback_incomplete") is True
    assert "upgrader resume" in run.stderr

    # 2. status says what is left and why
    status = cli("status", str(fleet), "--state-dir", str(state), "--json")
    info = json.loads(status.stdout)
    assert info["status"] == "rollback_incomplete" and info["unfinished"], info
    left = info["left"]
    assert "roll-back incomplete" in left["error"] or "admin.sock" in left["error"], left
    assert set(left["hosts"]) == set(HOSTS)
    assert left["backends"] is None and "admin.sock" in left["balancer_error"], left
    text = cli("status", str(fleet), "--state-dir", str(state)).stdout
    assert "roll-back incomplete" in text and "web-01" in text and "upgrader resume" in text
    assert "balancer: not readable" in text

    # 3. resume while the socket is still gone: fails again, stays resumable
    again = Run("resume", *args)
    runs.append(again)
    assert again.finish() == 1, again.stderr[-2000:]
    assert again.summary is not None and again.summary.get("rollback_incomplete") is True
    info = json.loads(cli("status", str(fleet), "--state-dir", str(state), "--json").stdout)
    assert info["status"] == "rollback_incomplete", info

    # 4. the socket back: resume completes the roll-back (and never upgrades)
    gone.rename(socket)
    back = time.monotonic()
    final = Run("resume", *args)
    runs.append(final)
    code = final.finish()
    took = time.monotonic() - back
    print(f"\nresume completed {took:.1f}s after the socket came back")
    assert code == 1, final.stderr[-2000:]            # rolled back: exit 1, as any roll-back
    assert final.summary is not None and final.summary["outcome"] == "rolled_back", \
        (final.summary, final.stderr[-2000:])
    assert not any(e["kind"] == "host_phase" and e.get("mode") == "upgrade"
                   for e in final.events), "a resumed roll-back must not upgrade"
    assert final.summary["hosts"] == dict.fromkeys(HOSTS, CURRENT)
    info = json.loads(cli("status", str(fleet), "--state-dir", str(state), "--json").stdout)
    assert info["status"] == "rolled_back" and not info["unfinished"], info
    assert "no unfinished rollout" in cli("resume", *args).stderr

    # every host on the old release, HAProxy sending users only to it
    for name in HOSTS:
        assert hostctl.current_release(layout.host_root(name), "default") == CURRENT, name
    balancer = asyncio.run(lab.balancer_state())
    assert {n: (b.pool, b.state) for n, b in balancer.backends.items()
            if b.weight > 0} == dict.fromkeys(HOSTS, (CURRENT, "ready")), balancer.backends
    assert not balancer.maintenance
    assert all(pool == CURRENT or share == 0
               for pool, share in dict(balancer.split or {}).items())
