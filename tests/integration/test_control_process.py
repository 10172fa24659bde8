"""A real controller process serving its control API: attach from another process, promote,
detach (the client dies) and re-attach while the rollout goes on, abort with roll-back; and a
detached ``upgrader run`` that outlives the process that started it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from upgrader.control.controller import connect, control_paths, start_detached
from upgrader.errors import UpgraderError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
FLEET_NAME = "ctl-it"

FLEET = """\
[fleet]
name = "{name}"

[release]
current = "1.0.0"
target = "1.1.0"

[commands]
install = ["true", "{{release}}"]
start = ["true"]
stop = ["true"]

[transport]
kind = "noop"
delay = "20ms"

[balancer]
kind = "noop"

[health]
kind = "noop"

[verify]
for = "200ms"
interval = "100ms"
no_data = "pass"
min_requests = 0

[timing]
host_upgrade = "1s"
drain_timeout = "1s"
health_timeout = "5s"

[strategy]
kind = "canary"
on_failure = "rollback"
steps = {steps}
{hosts}"""

CONTROLLER = textwrap.dedent("""\
    import asyncio, sys
    from upgrader.config import load_fleet
    from upgrader.control.controller import serve_rollout
    from upgrader.plugins import Plugins
    from upgrader.rollout import Rollout

    async def main(path, state_dir):
        plugins = Plugins()
        fleet = load_fleet(path, registry=plugins)
        async with Rollout(fleet, plugins=plugins, state_dir=state_dir) as rollout:
            result = await serve_rollout(rollout)
        print("OUTCOME", result.outcome.value, flush=True)
        return result.exit_code

    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
    """)

# a client in a process of its own: attach, wait for the first pause, promote, then hang
# (the test kills it: a terminal that went away)
CLIENT = textwrap.dedent("""\
    import asyncio, sys
    from upgrader.control.controller import connect

    async def main(state_dir, fleet):
        remote = await connect(state_dir, fleet, timeout=20)
        while remote.snapshot()["state"] != "WAITING":
            await asyncio.sleep(0.02)
        print("WAITING", remote.last_seq, flush=True)
        await remote.control("promote")
        print("PROMOTED", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """)


def write_fleet(tmp_path: Path, steps: str, hosts: int = 4, name: str = FLEET_NAME) -> Path:
    host_tables = "".join(f'\n[[hosts]]\nname = "web-{i}"\naddress = "127.0.0.1"\n'
                          f"port = {9100 + i}\n" for i in range(1, hosts + 1))
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET.format(name=name, steps=steps, hosts=host_tables))
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("UPGRADER_STATE_DIR", None)
    return env


class Processes:
    """Children started by a test, each in a session of its own; all killed at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, argv: list[str], **kw: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                                env=_env(), cwd=str(ROOT), **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def procs():
    p = Processes()
    yield p
    p.kill_all()


def start_controller(procs: Processes, tmp_path: Path, fleet: Path, state: Path):
    script = tmp_path / "controller.py"
    script.write_text(CONTROLLER)
    return procs.start([sys.executable, str(script), str(fleet), str(state)])


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(predicate, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_attach_promote_and_complete(procs, tmp_path):
    fleet = write_fleet(tmp_path, '[{hosts = 1, pause = "promote"}, {hosts = "100%"}]')
    state = tmp_path / "state"
    controller = start_controller(procs, tmp_path, fleet, state)
    socket_path, token_path = control_paths(state, FLEET_NAME)

    async def main():
        remote = await connect(state, FLEET_NAME, timeout=30)
        try:
            await wait_until(lambda: remote.snapshot()["state"] == "WAITING", what="WAITING")
            assert remote.snapshot()["reason"] == "until promoted"
            assert remote.snapshot()["hosts_on_target"] == 1
            remote.promote()
            outcome = await asyncio.wait_for(remote.wait_finished(), 30)
            assert outcome["outcome"] == "completed"
            await wait_until(lambda: remote.snapshot()["state"] == "COMPLETED", what="status")
            seqs = [e.seq for e in remote.history]
            assert seqs == list(range(1, len(seqs) + 1))
            assert remote.history[-1].kind == "rollout_finished"
        finally:
            await remote.aclose()

    run(main())
    code, out = finish(controller)
    assert code == 0, out
    assert "OUTCOME completed" in out
    assert not socket_path.exists() and not token_path.exists()
    with pytest.raises(UpgraderError, match=f"no controller for fleet {FLEET_NAME}"):
        run(connect(state, FLEET_NAME, timeout=0.5))


def test_detach_reattach_then_abort_rolls_back(procs, tmp_path):
    fleet = write_fleet(tmp_path, '[{hosts = 1, pause = "promote"}, '
                                  '{hosts = 1, pause = "promote"}, {hosts = "100%"}]')
    state = tmp_path / "state"
    controller = start_controller(procs, tmp_path, fleet, state)
    client_script = tmp_path / "client.py"
    client_script.write_text(CLIENT)
    client = procs.start([sys.executable, str(client_script), str(state), FLEET_NAME])
    assert client.stdout is not None
    lines = []
    deadline = time.monotonic() + 40
    while "PROMOTED" not in "".join(lines):
        line = client.stdout.readline()
        assert line or client.poll() is None, "".join(lines)
        lines.append(line)
        assert time.monotonic() < deadline, "".join(lines)
    os.killpg(client.pid, signal.SIGKILL)          # the terminal goes away
    client.wait(timeout=10)

    async def main():
        # the rollout went on without anyone attached: it reaches the second pause
        remote = await connect(state, FLEET_NAME, timeout=20)
        try:
            await wait_until(lambda: remote.snapshot()["state"] == "WAITING"
                             and remote.snapshot()["hosts_on_target"] == 2, what="2nd pause")
            kinds = [e.kind for e in remote.history]
            assert kinds[0] == "rollout_started"
            assert [e.data["action"] for e in remote.history if e.kind == "control"] == [
                "promote"]
            seqs = [e.seq for e in remote.history]
            assert seqs == list(range(1, len(seqs) + 1))
            remote.abort(rollback=True)
            outcome = await asyncio.wait_for(remote.wait_finished(), 30)
            assert outcome["outcome"] == "rolled_back"
            assert set(outcome["hosts"].values()) == {"1.0.0"}
            await wait_until(lambda: remote.snapshot()["state"] == "ROLLED BACK", what="state")
        finally:
            await remote.aclose()

    run(main())
    code, out = finish(controller)
    assert code == 1, out
    assert "OUTCOME rolled_back" in out


def test_connect_fails_fast_when_the_detached_controller_exits(tmp_path):
    fleet = tmp_path / "broken.toml"
    fleet.write_text("[fleet]\nname = 'x'\n")          # refused: no release, no hosts
    pid = start_detached(["run", str(fleet), "--headless", "--state-dir", str(tmp_path)],
                         log_path=tmp_path / "c.log", env=_env())
    started = time.monotonic()
    with pytest.raises(UpgraderError, match=f"pid {pid}.*exited with status 2"):
        run(connect(tmp_path, "x", timeout=60, pid=pid))
    assert time.monotonic() - started < 30
    assert "error" in (tmp_path / "c.log").read_text()


def test_start_detached_outlives_its_parent(tmp_path):
    fleet = write_fleet(tmp_path, '[{hosts = "100%"}]', hosts=2, name="ctl-detached")
    state = tmp_path / "state"
    log_path = tmp_path / "logs" / "controller.log"
    env = _env()
    pid = start_detached(["run", str(fleet), "--headless", "--state-dir", str(state)],
                         log_path=log_path, env=env)
    try:
        assert os.getsid(pid) == pid                # a session of its own: no terminal
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        assert os.waitstatus_to_exitcode(status) == 0, log_path.read_text()
        assert "COMPLETED" in log_path.read_text()
        assert oct(log_path.stat().st_mode & 0o777) == oct(0o600)
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
