"""The local transport: a command of a SIGKILLed controller never runs beside a resumed
controller's command on the same host.

PR_SET_PDEATHSIG kills the command itself with its controller, but not a child it left in
its process group (a shell's subprocess). Without the records (``<lock_dir>/upgrader-<host>.d``)
the next controller's command would run at once, beside that child: the log would read
``started second done``. With them it waits, says so, and the log reads
``started done second``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from upgrader.errors import TransportError
from upgrader.model import Host
from upgrader.providers.local import LocalTransport, group_alive

pytestmark = pytest.mark.integration

HOST = Host("web-01", "127.0.0.1")

CONTROLLER = """
import asyncio, sys
from upgrader.model import Host
from upgrader.providers.local import LocalTransport
async def main():
    transport = LocalTransport(lock_dir=sys.argv[1])
    await transport.run(Host("web-01", "127.0.0.1"), ["sh", "-c", sys.argv[2]])
asyncio.run(main())
"""


def wait_for(condition, within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} not reached within {within}s")


def start_and_kill_controller(tmp_path: Path, script: str, log: Path) -> None:
    controller = subprocess.Popen([sys.executable, "-c", CONTROLLER, str(tmp_path / "locks"),
                                   script])
    records = tmp_path / "locks" / "upgrader-web-01.d"
    try:
        wait_for(lambda: log.exists() and "started" in log.read_text(), what="the command")
        # the controller writes its record just after the spawn returns; the command may
        # log "started" before that (CI saw an empty folder): kill it once the record is there
        wait_for(lambda: records.is_dir() and any(records.iterdir()), what="the record")
    finally:
        controller.send_signal(signal.SIGKILL)
        controller.wait()


def test_a_resumed_controller_waits_for_what_a_killed_ones_command_left(tmp_path):
    log = tmp_path / "log"
    # the shell dies with its controller; its subshell (same group) goes on for a while
    script = f"(sleep 1.5; echo done >> {log}) & echo started >> {log}; wait"
    start_and_kill_controller(tmp_path, script, log)
    told: list[tuple[str, str]] = []

    async def resumed() -> None:
        transport = LocalTransport(lock_dir=str(tmp_path / "locks"))

        async def listener(host: str, message: str) -> None:
            told.append((host, message))

        transport.watch_lock_waits(listener)
        await transport.run(HOST, ["sh", "-c", f"echo second >> {log}"])

    asyncio.run(resumed())
    assert log.read_text().split() == ["started", "done", "second"]
    assert len(told) == 1 and told[0][0] == "web-01"
    assert "waiting for a command of a previous controller" in told[0][1]
    assert list((tmp_path / "locks" / "upgrader-web-01.d").iterdir()) == []


def test_past_lock_wait_the_command_fails_naming_the_group(tmp_path):
    log = tmp_path / "log"
    script = f"(sleep 30; echo done >> {log}) & echo started >> {log}; wait"
    start_and_kill_controller(tmp_path, script, log)
    records = tmp_path / "locks" / "upgrader-web-01.d"
    (record,) = list(records.iterdir())
    pgid = int(record.name)
    try:
        with pytest.raises(TransportError) as info:
            asyncio.run(LocalTransport(lock_dir=str(tmp_path / "locks"), lock_wait=0.3).run(
                HOST, ["sh", "-c", f"echo second >> {log}"]))
        assert f"process group {pgid}" in str(info.value) and str(record) in str(info.value)
        assert "lock_wait" in str(info.value) and info.value.host == "web-01"
        assert log.read_text().split() == ["started"]
    finally:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not group_alive(pgid), what="the orphan group ended")


def test_own_commands_run_side_by_side_and_leave_no_record(tmp_path):
    async def main() -> float:
        transport = LocalTransport(lock_dir=str(tmp_path / "locks"))
        started = time.monotonic()
        await asyncio.gather(*(transport.run(HOST, ["sleep", "0.5"]) for _ in range(4)))
        return time.monotonic() - started

    assert asyncio.run(main()) < 1.9
    assert list((tmp_path / "locks" / "upgrader-web-01.d").iterdir()) == []


def test_two_local_fleets_of_one_name_on_other_ports_do_not_wait_for_each_other(tmp_path):
    """Two demos (or labs) at once on one machine: the same fleet and host names, other
    ports. A command the other one runs is no dead controller's (seen in the README tour:
    `demo` waited for another demo's command on its web-04); on the same port it still is."""
    locks = str(tmp_path / "locks")

    async def main() -> None:
        first = LocalTransport(lock_dir=locks, fleet="demo-canary")
        other = LocalTransport(lock_dir=locks, fleet="demo-canary", lock_wait=0.5)
        running = asyncio.create_task(first.run(Host("web-04", "127.0.0.1", 18104),
                                                ["sleep", "5"]))
        records = first.records_dir(Host("web-04", "127.0.0.1", 18104))
        deadline = time.monotonic() + 10
        while not (records.is_dir() and any(records.iterdir())):
            assert time.monotonic() < deadline, "the first command's record"
            await asyncio.sleep(0.01)
        try:
            done = await other.run(Host("web-04", "127.0.0.1", 19104), ["true"])
            assert done.exit_status == 0
            with pytest.raises(TransportError, match="of an earlier controller still runs"):
                await other.run(Host("web-04", "127.0.0.1", 18104), ["true"])
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, TransportError):
                await running

    asyncio.run(main())
