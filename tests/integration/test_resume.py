"""Crash and resume, with real processes: a lab started by `upgrader lab up`, a controller
(`upgrader run --headless --json`) SIGKILLed at a chosen event, and `upgrader resume`.

The journal is written before each action it announces, so the resumed rollout must neither
repeat nor skip a host: every host ends on the target, and each host's installs.log records
the target release exactly once. And one controller per fleet: a second `upgrader run` is
refused (exit 3) while the first runs, or while its unfinished rollout waits to be resumed.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from upgrader.journal import Journal
from upgrader.lab import hostctl
from upgrader.lab.manager import Lab, free_base_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

HOSTS = [f"web-{i:02d}" for i in range(1, 7)]
CLI_TIMEOUT = 60
RUN_TIMEOUT = 120


def upgrader_argv() -> list[str]:
    script = Path(sys.executable).with_name("upgrader")
    return [str(script)] if script.exists() else [sys.executable, "-m", "upgrader.cli"]


def cli(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("UPGRADER_STATE_DIR", None)
    try:
        return subprocess.run([*upgrader_argv(), *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"upgrader {' '.join(args)} ran past {timeout}s: {exc.stderr!r}")


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Controller:
    """`upgrader run|resume ... --json` in a session of its own; its event lines are read by a
    thread, so a test can wait for an event with a deadline and act on it at once."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env.pop("UPGRADER_STATE_DIR", None)
        self.proc = subprocess.Popen([*upgrader_argv(), *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, start_new_session=True)
        self.events: list[dict] = []
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put),
                         daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr.append),
                         daemon=True).start()

    @staticmethod
    def _read(stream, sink: Callable) -> None:
        for line in stream:
            sink(line)
        sink(None)

    def wait_for(self, predicate: Callable[[dict, list[dict]], bool],
                 timeout: float = RUN_TIMEOUT) -> dict:
        """Read events until ``predicate(event, events_so_far)``; return that event."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no such event within {timeout}s; last events: "
                            f"{self.events[-5:]}; stderr: {self.err()[-2000:]}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(10)
                pytest.fail(f"controller exited ({self.proc.returncode}) before the event; "
                            f"last events: {self.events[-5:]}; stderr: {self.err()[-2000:]}")
            try:
                event = json.loads(line)
            except ValueError:
                continue                      # the summary line has no "kind"
            if "kind" not in event:
                continue
            self.events.append(event)
            if predicate(event, self.events):
                return event

    def finish(self, timeout: float = RUN_TIMEOUT) -> tuple[int, dict | None]:
        """Wait for the controller to exit; read the rest of its events and its summary."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"controller ran past {timeout}s: {self.err()[-3000:]}")
        summary = None
        while (line := self.lines.get(timeout=10)) is not None:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if "kind" in data:
                self.events.append(data)
            else:
                summary = data
        return code, summary

    def sigkill(self) -> int:
        """SIGKILL the controller's process group; read what it wrote before it died."""
        kill_group(self.proc)
        code, _ = self.finish(10)
        return code

    def err(self) -> str:
        return "".join(s for s in list(self.stderr) if s)

    def stop(self) -> None:
        if self.proc.poll() is None:
            kill_group(self.proc)
            self.proc.wait(10)


FLEET = """
[fleet]
name = "{name}"
environment = "lab"

[release]
current = "1.0.0"
target = "1.1.0"

[lab]
hosts = 6
base_port = {base_port}
dir = "{lab_dir}"

[verify]
error_rate_max = "1%"
min_requests = 5
interval = "1s"
for = "2s"
no_data = "pass"

[timing]
host_upgrade = "2s"

[strategy]
kind = "rolling"
batch = 1
on_failure = "rollback"
{commands}
"""

#: an install that does its work and then, on the host named in FLAG, keeps running while
#: FLAG exists: the controller can be killed after that host's install happened but before
#: its end was journaled
SLOW_EXIT_INSTALL = """
import os, subprocess, sys, time
code = subprocess.call([sys.executable, "-m", "upgrader.lab.hostctl", "install", *sys.argv[1:]])
host = os.path.basename(sys.argv[sys.argv.index("--root") + 1].rstrip("/"))

def holding():
    try:
        with open({flag!r}) as f:
            return f.read().strip() == host
    except FileNotFoundError:
        return False

deadline = time.monotonic() + 20
while code == 0 and holding() and time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(code)
"""


#: an install that, on the host named in FLAG, first waits (recording its pid) while FLAG
#: exists, and only then installs: a command still running when its controller dies
HELD_INSTALL = """
import os, subprocess, sys, time
host = os.path.basename(sys.argv[sys.argv.index("--root") + 1].rstrip("/"))
flag = {flag!r}
try:
    held = open(flag).read().strip() == host
except FileNotFoundError:
    held = False
if held:
    with open(flag + ".pid", "w") as f:
        f.write(str(os.getpid()))
deadline = time.monotonic() + 60
while held and os.path.exists(flag) and time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(subprocess.call([sys.executable, "-m", "upgrader.lab.hostctl", "install", *sys.argv[1:]]))
"""


class LabFleet:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.lab_dir = tmp_path / "lab"
        self.state_dir = tmp_path / "state"
        self.fleet = tmp_path / "fleet.toml"
        self.base_port = free_base_port()
        self.slow_exit_flag = tmp_path / "slow-exit"
        self.write_fleet()
        self.controllers: list[Controller] = []

    def write_fleet(self, slow_exit_install: bool = False, script: str | None = None) -> None:
        commands = ""
        if slow_exit_install or script:
            wrapper = self.tmp / "slow_exit_install.py"
            wrapper.write_text((script or SLOW_EXIT_INSTALL).format(flag=str(self.slow_exit_flag)))
            ctl = [sys.executable, "-m", "upgrader.lab.hostctl"]
            common = ["--root", "{root}", "--slot", "{slot}", "--port", "{port}"]
            commands = "\n".join([
                "[commands]",
                f"install = {json.dumps([sys.executable, str(wrapper), '--release', '{release}', *common])}",
                f"start = {json.dumps([*ctl, 'start', *common])}",
                f"stop = {json.dumps([*ctl, 'stop', *common])}",
                f"current = {json.dumps([*ctl, 'current', *common])}",
            ])
        self.fleet.write_text(FLEET.format(name="resume-lab", base_port=self.base_port,
                                           lab_dir=self.lab_dir, commands=commands),
                              encoding="utf-8")

    def up(self) -> None:
        result = cli("lab", "up", "--hosts", "6", "--dir", str(self.lab_dir), "--base-port",
                     str(self.base_port), "--rps", "100")
        assert result.returncode == 0, result.stderr
        lab = Lab.from_dir(self.lab_dir)
        deadline = time.monotonic() + 15          # the users are being served
        while lab.traffic_stats().get("ok", 0) < 50:
            assert time.monotonic() < deadline, f"no traffic: {lab.traffic_stats()}"
            time.sleep(0.1)

    def controller(self, command: str, *extra: str) -> Controller:
        ctl = Controller(command, str(self.fleet), "--headless", "--json", "--state-dir",
                         str(self.state_dir), *extra)
        self.controllers.append(ctl)
        return ctl

    def status(self) -> dict:
        result = cli("status", str(self.fleet), "--state-dir", str(self.state_dir), "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def down(self) -> dict:
        return asyncio.run(asyncio.wait_for(Lab.from_dir(self.lab_dir).down(), 60))

    def cleanup(self) -> None:
        self.slow_exit_flag.unlink(missing_ok=True)
        for ctl in self.controllers:
            ctl.stop()
        if (self.lab_dir / "lab.json").exists():
            try:
                self.down()
            except Exception:
                pass
            for pid in Lab.from_dir(self.lab_dir).running_pids().values():
                hostctl.terminate(pid, 5.0)


@pytest.fixture
def lab_fleet(tmp_path):
    fleet = LabFleet(tmp_path)
    try:
        yield fleet
    finally:
        fleet.cleanup()


def nth_upgrade_done(n: int):
    def predicate(event: dict, events: list[dict]) -> bool:
        return (event["kind"] == "host_done" and event.get("mode") == "upgrade"
                and sum(e["kind"] == "host_done" and e.get("mode") == "upgrade"
                        for e in events) == n)
    return predicate


def installing_nth_host(n: int):
    def predicate(event: dict, events: list[dict]) -> bool:
        if event["kind"] != "host_phase" or event.get("phase") != "installing":
            return False
        hosts: list[str] = []
        for e in events:
            if e["kind"] == "host_phase" and e["host"] not in hosts:
                hosts.append(e["host"])
        return len(hosts) == n and event["host"] == hosts[-1]
    return predicate


@pytest.mark.parametrize("kill_at", ["after_third_host_done", "third_host_installing",
                                     "third_host_installed_unrecorded"])
def test_sigkilled_controller_resumes_without_repeating_or_skipping_a_host(lab_fleet, kill_at):
    """Killed (1) between hosts, during verification; (2) right after the journal says the
    third host is installing (the install has not run yet, or runs on: in doubt); (3) after
    the third host's install happened on the host, before its end reached the journal."""
    if kill_at == "third_host_installed_unrecorded":
        lab_fleet.write_fleet(slow_exit_install=True)
        lab_fleet.slow_exit_flag.write_text("web-03")
    lab_fleet.up()

    # 1. run, and kill the whole controller process group at the chosen event
    first = lab_fleet.controller("run")
    if kill_at == "after_third_host_done":
        event = first.wait_for(nth_upgrade_done(3))
    else:
        event = first.wait_for(installing_nth_host(3))
    assert event["host"] == "web-03"
    if kill_at == "third_host_installed_unrecorded":
        lab = Lab.from_dir(lab_fleet.lab_dir)
        deadline = time.monotonic() + 15
        while "1.1.0" not in [r["release"] for r in lab.installs("web-03")]:
            assert time.monotonic() < deadline, "web-03's install did not happen"
            time.sleep(0.02)
    assert first.sigkill() == -signal.SIGKILL
    lab_fleet.slow_exit_flag.unlink(missing_ok=True)
    journal = Journal(lab_fleet.state_dir / "journal.sqlite")
    try:
        entries = journal.entries(event["rollout"])
    finally:
        journal.close()
    assert entries and not any(e.kind == "rollout_finished" for e in entries)
    if kill_at != "after_third_host_done":     # the journal's last word on web-03: installing
        last = [e for e in entries if e.data.get("host") == "web-03"][-1]
        assert (last.kind, last.data.get("phase")) == ("host_phase", "installing"), last
    done_before = [e["host"] for e in first.events
                   if e["kind"] == "host_done" and e.get("mode") == "upgrade"]
    assert done_before == (["web-01", "web-02", "web-03"] if kill_at == "after_third_host_done"
                           else ["web-01", "web-02"])
    assert not any(e["kind"] == "rollout_finished" for e in first.events)

    # 2. a new rollout of the fleet is refused: the unfinished one must be resumed
    again = cli("run", str(lab_fleet.fleet), "--headless", "--state-dir",
                str(lab_fleet.state_dir))
    assert again.returncode == 3, again.stderr
    assert "unfinished" in again.stderr and "resume" in again.stderr
    assert "Traceback" not in again.stderr

    # 3. status shows the rollout as running and unfinished
    text = cli("status", str(lab_fleet.fleet), "--state-dir", str(lab_fleet.state_dir))
    assert text.returncode == 0
    assert "running" in text.stdout and "unfinished" in text.stdout
    assert "no controller drives it" in text.stdout and "upgrader resume" in text.stdout
    status = lab_fleet.status()
    assert status["status"] == "running" and status["finished"] is None
    assert status["driven_by"] is None
    assert status["rollout"] == event["rollout"]

    # 4. resume finishes it
    resumed = lab_fleet.controller("resume")
    code, summary = resumed.finish()
    assert code == 0, resumed.err()[-3000:]
    assert summary is not None and summary["outcome"] == "completed"
    assert summary["hosts"] == dict.fromkeys(HOSTS, "1.1.0")
    started = next(e for e in resumed.events if e["kind"] == "rollout_started")
    assert started["resumed"] is True and started["rollout"] == event["rollout"]
    # neither repeated nor skipped: each host upgraded once over both controllers
    done_after = [e["host"] for e in resumed.events
                  if e["kind"] == "host_done" and e.get("mode") == "upgrade"]
    assert sorted(done_before + done_after) == HOSTS, (done_before, done_after)
    if kill_at != "after_third_host_done":     # the host in doubt is finished first
        assert done_after[0] == "web-03", done_after
    skipped = [e["message"] for e in resumed.events
               if e["kind"] == "log" and "already installed" in e.get("message", "")]
    print(f"\n{kill_at}: resumed upgrades {done_after}; {skipped or 'no install skipped'}")
    if kill_at == "third_host_installed_unrecorded":   # found installed, not installed again
        assert skipped == ["web-03: 1.1.0 already installed (resumed)"], skipped
    assert lab_fleet.status()["status"] == "completed"

    # 5. the hosts: all serve 1.1.0, each installed it exactly once
    result = cli("lab", "status", "--dir", str(lab_fleet.lab_dir), "--json")
    assert result.returncode == 0, result.stderr
    lab_status = json.loads(result.stdout)
    assert {h["name"]: (h["running"], h["version"]) for h in lab_status["hosts"]} == dict.fromkeys(HOSTS, (True, "1.1.0"))
    lab = Lab.from_dir(lab_fleet.lab_dir)
    for host in HOSTS:
        releases = [r["release"] for r in lab.installs(host)]
        assert releases.count("1.1.0") == 1, (host, releases)
        assert releases == ["1.0.0", "1.1.0"], (host, releases)

    # 6. the users: nothing failed, even with a controller killed mid-rollout
    stats = lab_fleet.down()
    print(f"\n{kill_at}: traffic {stats.get('requests')} requests, {stats.get('failed')} failed,"
          f" errors {stats.get('errors')}")
    assert stats.get("requests", 0) > 0
    assert stats.get("failed") == 0, stats.get("errors")


# --------------------------------------------------------------------------------------------
# one rollout per fleet

HELD_FLEET = """
[fleet]
name = "held"

[release]
current = "1.0.0"
target = "1.1.0"

[commands]
install = ["true"]
start = ["true"]
stop = ["true"]

[transport]
kind = "noop"

[balancer]
kind = "noop"

[health]
kind = "noop"

[verify]
interval = "100ms"
for = "0s"
no_data = "pass"

[strategy]
kind = "rolling"
batch = 1
pause = "promote"          # waits for an operator: the controller stays up

[[hosts]]
name = "web-01"

[[hosts]]
name = "web-02"
"""


def test_second_controller_of_a_fleet_is_refused_and_told_who_holds_it(tmp_path):
    fleet = tmp_path / "held.toml"
    fleet.write_text(HELD_FLEET, encoding="utf-8")
    state = tmp_path / "state"
    first = Controller("run", str(fleet), "--headless", "--json", "--state-dir", str(state))
    try:
        first.wait_for(lambda e, _: e["kind"] == "pause_started", timeout=30)
        assert first.proc.poll() is None

        second = cli("run", str(fleet), "--headless", "--state-dir", str(state))
        assert second.returncode == 3, second.stderr
        assert f"pid {first.proc.pid}" in second.stderr          # who holds the fleet
        assert "one rollout per fleet" in second.stderr
        assert "Traceback" not in second.stderr
        # the refused controller touched nothing: the first one still waits
        assert first.proc.poll() is None
        held = json.loads(cli("status", str(fleet), "--state-dir", str(state), "--json").stdout)
        assert held["status"] == "running" and f"pid {first.proc.pid}" in held["driven_by"]

        # Ctrl-C (SIGTERM) on the first: abort with roll-back, exit 1, lock released
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(30) == 1, first.err()[-2000:]
        status = json.loads(cli("status", str(fleet), "--state-dir", str(state),
                                "--json").stdout)
        assert status["status"] == "rolled_back"
    finally:
        first.stop()


def test_a_command_running_when_the_controller_dies_dies_with_it(lab_fleet):
    """Otherwise it would finish after `resume` asked the host what it runs, and install the
    host a second time (or switch it behind a roll-back's back)."""
    lab_fleet.write_fleet(script=HELD_INSTALL)
    lab_fleet.slow_exit_flag.write_text("web-03")
    pid_file = Path(str(lab_fleet.slow_exit_flag) + ".pid")
    lab_fleet.up()
    first = lab_fleet.controller("run")
    first.wait_for(installing_nth_host(3))
    deadline = time.monotonic() + 15
    while not pid_file.exists():
        assert time.monotonic() < deadline, "the held install never started"
        time.sleep(0.05)
    held_pid = int(pid_file.read_text())
    first.sigkill()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{held_pid}").exists() and \
            Path(f"/proc/{held_pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the install outlived its controller"
        time.sleep(0.05)
    lab_fleet.slow_exit_flag.unlink()
    code, summary = lab_fleet.controller("resume").finish()
    assert code == 0, summary
    lab = Lab.from_dir(lab_fleet.lab_dir)
    for host in lab.hosts:
        assert [r["release"] for r in lab.installs(host.name)] == ["1.0.0", "1.1.0"], host.name
