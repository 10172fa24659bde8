"""Headless output for scripts and CI: piped, one event is one line whatever its length (grep
must find it); on a real terminal rich still wraps at the terminal's width."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: a target release long enough that the ``rollout ...`` line passes 80 columns by far
TARGET = "1.1.0-build-" + "x" * 100

FLEET = f"""\
[fleet]
name = "piped"

[release]
current = "1.0.0"
target = "{TARGET}"

[commands]
install = ["true"]
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
for = "0s"
no_data = "pass"

[strategy]
kind = "rolling"

[[hosts]]
name = "web-01"
address = "127.0.0.1"
port = PORT
"""


def test_piped_headless_output_keeps_long_lines_whole(tmp_path):
    fleet = tmp_path / "fleet.toml"
    with socket.socket() as sock:   # the local transport's host lock file is named by the
        sock.bind(("127.0.0.1", 0))  # port: one that no other test uses now
        fleet.write_text(FLEET.replace("PORT", str(sock.getsockname()[1])))
    env = {k: v for k, v in os.environ.items() if k not in ("UPGRADER_STATE_DIR", "COLUMNS")}
    result = subprocess.run([sys.executable, "-m", "upgrader.cli", "run", str(fleet),
                             "--headless", "--state-dir", str(tmp_path / "state")],
                            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    started = [line for line in result.stderr.splitlines() if line.startswith("rollout ")]
    assert len(started) == 1, result.stderr
    line = started[0]
    assert len(line) > 120
    assert f"1.0.0 -> {TARGET} on 1 hosts; estimated " in line, result.stderr
    assert "roll-back" in line, result.stderr


def test_a_pipe_never_wraps_and_a_terminal_keeps_its_width(tmp_path):
    from upgrader.headless import stderr_console

    with open(tmp_path / "out.log", "w") as piped:
        console = stderr_console(piped)
        console.print("word " * 60)
    text = (tmp_path / "out.log").read_text()
    assert text.count("\n") == 1 and text.split() == ["word"] * 60, text  # not cut at 80
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=True) as tty:
            console = stderr_console(tty)
            assert console.is_terminal and not console.soft_wrap
    finally:
        os.close(master)
