"""Signals (issue 12, point 5): SIGHUP is handled like SIGTERM (abort with roll-back), and the
demo stops every process of its lab also when its terminal goes away.

Without the fix SIGHUP's default action killed the process at once: the demo's apps, its
balancer and its traffic generator (each in a session of its own) ran on forever, and a
headless run died mid-rollout (exit -1, no roll-back). Real processes throughout: the demo in
a real terminal (tmux) and a real lab.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from upgrader.lab import hostctl
from upgrader.lab.manager import Lab, free_base_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

UPGRADER = str(Path(sys.executable).with_name("upgrader"))


def upgrader_argv() -> list[str]:
    return [UPGRADER] if Path(UPGRADER).exists() else [sys.executable, "-m", "upgrader.cli"]


def _tmux(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10)


def processes_mentioning(needle: str) -> dict[int, str]:
    """Every live process whose argv contains ``needle`` (pid -> argv)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in argv and state != "Z":
            found[int(entry.name)] = argv.strip()
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def poll(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def terminal(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed: apt-get install tmux")
    name = f"upgrader-hup-{uuid.uuid4().hex[:8]}"
    yield name
    _tmux("kill-session", "-t", name)
    # whatever a failed test left: every process that mentions the test's directory
    for pid in processes_mentioning(str(tmp_path)):
        hostctl.terminate(pid, 5.0)


def test_closing_the_demos_terminal_stops_every_process_of_its_lab(terminal, tmp_path):
    """`upgrader demo` (the TUI, the engine in the same process) in tmux; the session is
    killed while the canary runs on the new release: within 15 s no process of the demo's
    lab is left (found by the lab's pid files and by its directory in their argv), and the
    demo itself has exited."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "TERM": "xterm-256color"}
    env.pop("UPGRADER_STATE_DIR", None)
    _tmux_run = subprocess.run(
        ["tmux", "new-session", "-d", "-s", terminal, "-x", "140", "-y", "45",
         f"{UPGRADER} demo --hosts 4 --rps 100"], env=env, timeout=10)
    assert _tmux_run.returncode == 0

    def screen() -> str:
        return _tmux("capture-pane", "-p", "-J", "-t", terminal).stdout

    poll(lambda: "1 on 1.1.0" in screen(), 40, "the canary's first host on 1.1.0")
    lab_dir = poll(lambda: next(iter(tmp_path.glob("upgrader-demo-*")), None), 5, "the lab")
    lab = Lab.from_dir(lab_dir)
    pids = lab.running_pids()
    assert "balancer" in pids and "traffic" in pids and len(pids) >= 6, pids
    mentioning = processes_mentioning(str(lab_dir))
    demo = [pid for pid, argv in processes_mentioning(" demo --hosts 4").items()
            if "upgrader" in argv]
    assert demo, "the demo process"

    killed = time.monotonic()
    assert _tmux("kill-session", "-t", terminal).returncode == 0

    def lab_gone() -> bool:
        return not any(alive(p) for p in pids.values()) \
            and not processes_mentioning(str(lab_dir))

    poll(lab_gone, 15, f"the demo's lab to stop (pids {pids}, argv {mentioning})")
    took = time.monotonic() - killed
    print(f"\nlab stopped {took:.1f}s after the terminal closed")
    poll(lambda: not any(alive(p) for p in demo), 15, "the demo to exit")


# ------------------------------------------------------------------ run --headless and SIGHUP

FLEET = """
[fleet]
name = "hup-lab"
environment = "lab"

[release]
current = "1.0.0"
target = "1.1.0"

[lab]
hosts = 4
base_port = {base_port}
dir = "{lab_dir}"

[verify]
error_rate_max = "1%"
min_requests = 5
interval = "1s"
for = "3s"
no_data = "pass"

[timing]
host_upgrade = "2s"

[strategy]
kind = "rolling"
batch = 1
on_failure = "rollback"
"""


def test_headless_run_hung_up_mid_rollout_rolls_back_and_exits_1(tmp_path):
    lab_dir, state_dir = tmp_path / "lab", tmp_path / "state"
    base_port = free_base_port()
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(base_port=base_port, lab_dir=lab_dir), encoding="utf-8")
    env = dict(os.environ)
    env.pop("UPGRADER_STATE_DIR", None)
    up = subprocess.run([*upgrader_argv(), "lab", "up", "--hosts", "4", "--dir", str(lab_dir),
                         "--base-port", str(base_port), "--rps", "50"],
                        capture_output=True, text=True, timeout=60, env=env)
    assert up.returncode == 0, up.stderr
    lab = Lab.from_dir(lab_dir)
    proc = None
    try:
        poll(lambda: lab.traffic_stats().get("ok", 0) >= 20, 15, "the users' first requests")
        proc = subprocess.Popen([*upgrader_argv(), "run", str(fleet), "--headless", "--json",
                                 "--state-dir", str(state_dir)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, start_new_session=True)
        events: list[dict] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        for line in proc.stdout:          # the run's event lines, as it writes them
            try:
                event = json.loads(line)
            except ValueError:
                continue
            events.append(event)
            if event.get("kind") == "host_done" and event.get("mode") == "upgrade":
                break
            assert time.monotonic() < deadline, events[-5:]
        else:
            pytest.fail(f"the run ended before a host was upgraded: {proc.stderr.read()}")
        os.kill(proc.pid, signal.SIGHUP)
        out, err = proc.communicate(timeout=90)
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        events += [x for x in lines if "kind" in x]
        summary = next(x for x in lines if "kind" not in x)
        assert proc.returncode == 1, (proc.returncode, err[-2000:])
        assert any(e["kind"] == "rollback_started" for e in events)
        assert summary["outcome"] == "rolled_back", summary
        assert set(summary["hosts"].values()) == {"1.0.0"}, summary
        for host in lab.hosts:
            assert hostctl.current_release(lab.layout.host_root(host.name), "default") \
                == "1.0.0", host.name
        status = subprocess.run([*upgrader_argv(), "status", str(fleet), "--state-dir",
                                 str(state_dir), "--json"], capture_output=True, text=True,
                                timeout=30, env=env)
        assert json.loads(status.stdout)["status"] == "rolled_back"
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        import asyncio

        try:
            asyncio.run(asyncio.wait_for(lab.down(), 60))
        finally:
            for pid in lab.running_pids().values():
                hostctl.terminate(pid, 5.0)
