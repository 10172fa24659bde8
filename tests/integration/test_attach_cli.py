"""``run --detach`` and ``attach`` as a script uses them, through the real CLI: the pid on
stdout, ``attach`` with nothing running returning at once with the recorded outcome, and a
hint that names a command which runs as printed."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]

FLEET = """\
[fleet]
name = "{name}"

[release]
current = "1.0.0"
target = "1.1.0"

[commands]
install = {install}
start = ["true"]
stop = ["true"]

[transport]
kind = "local"

[balancer]
kind = "noop"

[health]
kind = "noop"

[verify]
interval = "100ms"
for = "{verify_for}"
no_data = "pass"

[strategy]
kind = "rolling"
on_failure = "rollback"

[[hosts]]
name = "web-01"
address = "127.0.0.1"
port = {port}
"""

#: attach's own wait for a controller; the subprocess bound below is far shorter, so an
#: attach that returns within it did not wait for its timeout
ATTACH_TIMEOUT = "90"


#: installs 1.0.0 (the roll-back) and fails on 1.1.0
FAILS_ON_TARGET = '["test", "{release}", "=", "1.0.0"]'


def free_port() -> int:
    """A port no one else uses now: the local transport's host lock file is named by it, and
    other tests on this machine lock their own hosts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_fleet(tmp_path: Path, name: str, install: str = '["true"]',
                verify_for: str = "3s") -> Path:
    """A one-host fleet; ``verify_for`` keeps a detached controller serving long enough for
    ``run --detach`` to see it answer."""
    path = tmp_path / f"{name}.toml"
    path.write_text(FLEET.format(name=name, install=install, verify_for=verify_for,
                                 port=free_port()))
    return path


def upgrader(*args: str, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("UPGRADER_STATE_DIR",
                                                            "UPGRADER_STATE")}
    return subprocess.run([sys.executable, "-m", "upgrader.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env,
                          cwd=ROOT)


@pytest.fixture
def controllers():
    """pids of detached controllers (each leads a session of its own): killed at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_gone(pid: int, timeout: float = 60) -> None:
    """The detached controller (not our child: its parent exited) has ended."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"controller {pid} still runs"
        time.sleep(0.05)


def test_run_detach_prints_the_pid_on_stdout_then_attach_reports_the_end(tmp_path, controllers):
    fleet = write_fleet(tmp_path, "detach-pid")
    state = tmp_path / "state"
    started = upgrader("run", str(fleet), "--detach", "--state-dir", str(state))
    controllers.extend(int(n) for n in re.findall(r"controller pid (\d+)", started.stderr))
    assert started.returncode == 0, started.stderr
    assert re.fullmatch(r"\d+\n", started.stdout), started.stdout    # `pid=$(upgrader ...)`
    pid = int(started.stdout)
    assert f"controller pid {pid}" in started.stderr      # the human hint stays on stderr
    wait_gone(pid)
    attached = upgrader("attach", str(fleet), "--headless", "--state-dir", str(state),
                        "--timeout", ATTACH_TIMEOUT)
    assert attached.returncode == 0, attached.stderr
    assert "ended completed" in attached.stderr
    assert f"upgrader status {fleet}" in attached.stderr


def test_run_detach_json_is_one_object_on_stdout(tmp_path, controllers):
    fleet = write_fleet(tmp_path, "detach-json")
    state = tmp_path / "state"
    started = upgrader("run", str(fleet), "--detach", "--json", "--state-dir", str(state))
    controllers.extend(int(n) for n in re.findall(r"controller pid (\d+)", started.stderr))
    assert started.returncode == 0, started.stderr
    lines = started.stdout.splitlines()
    assert len(lines) == 1, started.stdout
    info = json.loads(lines[0])
    assert info["fleet"] == "detach-json" and isinstance(info["pid"], int)
    assert info["attach"] == f"upgrader attach {fleet}"
    wait_gone(info["pid"])
    attached = upgrader("attach", str(fleet), "--headless", "--json", "--state-dir",
                        str(state), "--timeout", ATTACH_TIMEOUT)
    assert attached.returncode == 0, attached.stderr
    assert json.loads(attached.stdout)["outcome"] == "completed"


def test_attach_after_a_rolled_back_rollout_exits_1_at_once(tmp_path):
    fleet = write_fleet(tmp_path, "attach-rolled", install=FAILS_ON_TARGET, verify_for="0s")
    state = tmp_path / "state"
    ran = upgrader("run", str(fleet), "--headless", "--state-dir", str(state))
    assert ran.returncode == 1, ran.stderr
    outcome = json.loads(ran.stdout.splitlines()[-1])["outcome"]
    attached = upgrader("attach", str(fleet), "--headless", "--state-dir", str(state),
                        "--timeout", ATTACH_TIMEOUT)
    assert attached.returncode == 1, attached.stderr
    assert f"ended {outcome}" in attached.stderr


def test_attach_with_nothing_recorded_hints_a_status_command_that_works(tmp_path):
    fleet = write_fleet(tmp_path, "attach-none", verify_for="0s")
    state = tmp_path / "state"
    attached = upgrader("attach", str(fleet), "--headless", "--state-dir", str(state),
                        "--timeout", "0.5")
    assert attached.returncode != 0
    hint = re.search(r"`(upgrader status [^`]+)`", attached.stderr)
    assert hint is not None, attached.stderr
    argv = shlex.split(hint.group(1))
    status = upgrader(*argv[1:], "--state-dir", str(state))
    assert status.returncode == 0, status.stderr
    assert "no rollout of attach-none recorded" in status.stdout


@pytest.mark.parametrize("install, code, outcome", [
    ('["true"]', 0, "completed"),
    (FAILS_ON_TARGET, 1, "rolled_back"),
    ('["false"]', 1, "rollback_incomplete"),
], ids=["completes", "rolls-back", "roll-back-incomplete"])
def test_run_detach_of_a_rollout_quicker_than_the_cli_still_succeeds(tmp_path, controllers,
                                                                      install, code, outcome):
    """The controller may run a one-host rollout to its end (completed, or failed and rolled
    back, or its roll-back failed too and left the rollout for ``upgrader resume``: exit
    status 1) before ``run --detach`` reaches its control API: the controller
    did start and the journal records its outcome, so that is a success (exit 0, the pid on
    stdout), not "exited before it served" (CI saw exit 1); ``attach`` then reports the
    recorded outcome with its exit code."""
    fleet = write_fleet(tmp_path, f"detach-quick-{code}", install=install, verify_for="0s")
    state = tmp_path / "state"
    started = upgrader("run", str(fleet), "--detach", "--state-dir", str(state))
    controllers.extend(int(n) for n in re.findall(r"pid (\d+)", started.stderr))
    assert started.returncode == 0, started.stderr
    assert re.fullmatch(r"\d+\n", started.stdout), started.stdout
    wait_gone(int(started.stdout))
    attached = upgrader("attach", str(fleet), "--headless", "--state-dir", str(state),
                        "--timeout", ATTACH_TIMEOUT)
    assert attached.returncode == code, attached.stderr
    assert f"ended {outcome}" in attached.stderr


def test_attach_returns_once_the_controller_let_go_of_the_fleet(tmp_path, controllers):
    """A script's ``attach`` then ``status`` (the README tour): the controller reports the
    end, lingers for its clients, and only then releases the fleet lock. ``attach`` returned
    at the report, so ``status`` still showed the lock held by a controller that was done."""
    fleet = write_fleet(tmp_path, "attach-letgo", verify_for="2s")
    state = tmp_path / "state"
    started = upgrader("run", str(fleet), "--detach", "--state-dir", str(state))
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout)
    controllers.append(pid)
    attached = upgrader("attach", str(fleet), "--headless", "--state-dir", str(state),
                        "--timeout", ATTACH_TIMEOUT)
    assert attached.returncode == 0, attached.stderr
    assert "COMPLETED" in attached.stderr + attached.stdout
    status = upgrader("status", str(fleet), "--json", "--state-dir", str(state))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["fleet_lock"] is None, status.stdout
    from upgrader.fleetlock import pid_alive

    assert not pid_alive(pid), "attach returned before the controller exited"


def test_attach_to_an_incomplete_roll_back_names_the_command_that_finishes_it(tmp_path):
    """``resume`` finishes an incomplete roll-back of a rollout; one that ``upgrader
    rollback`` started runs the other way round from the fleet file, ``resume`` refuses it,
    and ``upgrader rollback`` finishes it: attach names the command that works."""
    fleet = write_fleet(tmp_path, "attach-incomplete", install='["false"]', verify_for="0s")
    state = tmp_path / "state"
    ran = upgrader("run", str(fleet), "--headless", "--state-dir", str(state))
    assert ran.returncode == 1, ran.stderr
    attached = upgrader("attach", str(fleet), "--headless", "--state-dir", str(state),
                        "--timeout", ATTACH_TIMEOUT)
    assert f"`upgrader resume {fleet}` completes the roll-back" in attached.stderr
    # the same journal seen from a fleet file that says 1.1.0 -> 1.0.0: the unfinished
    # rollout went from the file's target to its current, as `upgrader rollback` goes
    swapped = tmp_path / "swapped.toml"
    swapped.write_text(fleet.read_text().replace('current = "1.0.0"', 'current = "X"')
                       .replace('target = "1.1.0"', 'target = "1.0.0"')
                       .replace('current = "X"', 'current = "1.1.0"'))
    attached = upgrader("attach", str(swapped), "--headless", "--state-dir", str(state),
                        "--timeout", ATTACH_TIMEOUT)
    assert attached.returncode == 1, attached.stderr
    assert f"`upgrader rollback {swapped}` completes the roll-back" in attached.stderr
