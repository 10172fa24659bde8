"""`upgrader demo` in a real terminal (tmux): the fleet and the canary move on screen within
15 seconds; space pauses (PAUSED shows) and resumes; the operator can promote all and quit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

UPGRADER = str(Path(sys.executable).with_name("upgrader"))


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10).stdout


@pytest.fixture
def terminal(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed: apt-get install tmux")
    name = f"upgrader-test-{uuid.uuid4().hex[:8]}"
    yield name
    _tmux("kill-session", "-t", name)


def _screen(name: str) -> str:
    return _tmux("capture-pane", "-p", "-J", "-t", name)


def _until(name: str, predicate, timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _screen(name)
        if predicate(screen):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{what} not on screen within {timeout:g}s; screen:\n{screen}")


def test_demo_in_a_real_terminal_moves_pauses_and_resumes(terminal, tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "TERM": "xterm-256color"}
    started = time.monotonic()
    subprocess.run(["tmux", "new-session", "-d", "-s", terminal, "-x", "140", "-y", "45",
                    f"{UPGRADER} demo --hosts 4; echo DEMO-EXIT=$?; sleep 120"],
                   check=True, env=env, timeout=10)
    # the fleet table and the canary's first host on the new release, within 15 s
    _until(terminal, lambda s: "Fleet · 4 hosts" in s and "1 on 1.1.0" in s, 15,
           "the fleet with its first canary on 1.1.0")
    assert time.monotonic() - started <= 15.5

    def header(screen: str) -> str:     # the header's two lines (the state is on the first)
        return "\n".join(screen.splitlines()[:2])

    _tmux("send-keys", "-t", terminal, "Space")
    _until(terminal, lambda s: "PAUSED" in header(s), 5, "PAUSED in the header")
    _tmux("send-keys", "-t", terminal, "Space")
    _until(terminal, lambda s: "PAUSED" not in header(s)
           and any(w in header(s) for w in ("WAITING", "RUNNING", "VERIFYING")), 5,
           "the rollout going on")

    _tmux("send-keys", "-t", terminal, "P")            # promote all: skip the pauses
    _until(terminal, lambda s: "COMPLETED" in s, 60, "COMPLETED")
    _tmux("send-keys", "-t", terminal, "q")
    screen = _until(terminal, lambda s: "DEMO-EXIT=" in s, 30, "the demo's exit")
    assert "DEMO-EXIT=0" in screen
    assert '"outcome": "completed"' in screen and '"failed_requests": 0' in screen
