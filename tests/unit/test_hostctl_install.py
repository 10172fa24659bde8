"""The lab's install switches the release and records it as one act: a controller that dies
between the two (the local transport's death signal, a KILL) no longer leaves a host on the
new release that installs.log says never installed it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from upgrader.lab import hostctl

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="PR_SET_PDEATHSIG is Linux's")

#: the command: marks that it is inside, waits until its controller is dead, then marks done
CHILD = textwrap.dedent("""\
    import contextlib, os, sys, time
    from upgrader.lab.hostctl import _not_interrupted
    where, guarded = sys.argv[1], sys.argv[2] == "1"
    parent = os.getppid()
    with (_not_interrupted() if guarded else contextlib.nullcontext()):
        open(os.path.join(where, "inside"), "w").close()
        deadline = time.monotonic() + 20
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.005)
        open(os.path.join(where, "done"), "w").close()
    open(os.path.join(where, "after"), "w").close()
    """)

#: the controller: starts the command as the local transport does, then dies once it is inside
CONTROLLER = textwrap.dedent("""\
    import functools, os, subprocess, sys, time
    from upgrader.providers.local import _die_with_controller
    where, guarded = sys.argv[1], sys.argv[2]
    child = subprocess.Popen([sys.executable, "-c", sys.argv[3], where, guarded],
                             preexec_fn=functools.partial(_die_with_controller, os.getpid()))
    open(os.path.join(where, "pid"), "w").write(str(child.pid))
    deadline = time.monotonic() + 20
    while not os.path.exists(os.path.join(where, "inside")) and time.monotonic() < deadline:
        time.sleep(0.005)
    os._exit(0)
    """)


def _gone(pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    return False


def _run(tmp_path: Path, guarded: bool) -> Path:
    where = tmp_path / ("guarded" if guarded else "bare")
    where.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(hostctl.__file__).parents[2])}
    subprocess.run([sys.executable, "-c", CONTROLLER, str(where), "1" if guarded else "0",
                    CHILD], env=env, check=True, timeout=30)
    pid = int((where / "pid").read_text())
    assert _gone(pid, time.monotonic() + 20), "the command outlived its controller"
    assert (where / "inside").exists()
    return where


def test_a_controller_death_inside_the_switch_waits_for_its_end(tmp_path: Path) -> None:
    where = _run(tmp_path, guarded=True)
    assert (where / "done").exists()            # the act was finished ...
    assert not (where / "after").exists()       # ... and then the command died


def test_without_the_guard_the_death_splits_the_act(tmp_path: Path) -> None:
    """The control: the same command unguarded is killed half-way (so the test above can
    fail)."""
    where = _run(tmp_path, guarded=False)
    assert not (where / "done").exists()


def test_term_inside_the_switch_is_delivered_after_it(tmp_path: Path) -> None:
    script = textwrap.dedent("""\
        import os, signal, sys
        from upgrader.lab.hostctl import _not_interrupted
        with _not_interrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            open(sys.argv[1], "w").close()
        open(sys.argv[1] + ".after", "w").close()
        """)
    marker = tmp_path / "done"
    proc = subprocess.run([sys.executable, "-c", script, str(marker)], timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert marker.exists() and not Path(f"{marker}.after").exists()


def test_install_records_what_it_switched_to(tmp_path: Path) -> None:
    hostctl.install(tmp_path, "default", "1.1.0")
    assert hostctl.current_release(tmp_path, "default") == "1.1.0"
    assert [r["release"] for r in hostctl.read_installs(tmp_path)] == ["1.1.0"]
