"""The fleet lock held on the fleet itself (upgrader.fleetlock): lease expiry on a virtual
clock, takeover of a dead holder, the built-in balancer's ``/admin/lock`` (in process, with its
client), the host lock files through the real local transport; and the state folder: a
per-user default keyed by the fleet, a folder upgrader did not create keeps its mode."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from upgrader.balancer.server import Admin, Table, _auth_middleware
from upgrader.errors import FleetLocked, PolicyRefused
from upgrader.fleetlock import (
    LEASE_SECONDS,
    BalancerKeeper,
    FleetLock,
    Holder,
    HostFileKeeper,
    stale_reason,
)
from upgrader.journal import CREATED_MARK, Journal, ensure_private_dir
from upgrader.model import Host, ProviderSpec
from upgrader.providers.base import FleetLockHolder
from upgrader.providers.builtin_balancer import BuiltinBalancer
from upgrader.providers.local import LocalTransport

HERE = socket.gethostname()


class VirtualClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def holder(machine: str = "elsewhere", heartbeat: float = 1_000_000.0, pid: int = 4242,
           **kw: Any) -> Holder:
    return Holder(id=kw.pop("id", "h1"), fleet="shop", user="ann", machine=machine, pid=pid,
                  since=heartbeat, heartbeat=heartbeat, **kw)


# ------------------------------------------------------------------------- lease and liveness


def test_a_holder_on_another_machine_is_dead_once_its_lease_ends() -> None:
    h = holder(heartbeat=1000.0)
    assert stale_reason(h, now=1000.0 + LEASE_SECONDS, machine=HERE) is None
    reason = stale_reason(h, now=1000.0 + LEASE_SECONDS + 1, machine=HERE)
    assert reason is not None and "no heartbeat for 31 s (lease 30 s)" in reason
    # the keeper's own measure of the age wins over our clock (clock skew between machines)
    assert stale_reason(dataclasses.replace(h, age=5.0), now=1e9, machine=HERE) is None
    assert stale_reason(dataclasses.replace(h, age=31.0), now=0.0, machine=HERE) is not None


def test_a_holder_on_this_machine_is_judged_by_its_pid_not_its_lease() -> None:
    h = holder(machine=HERE, heartbeat=0.0)
    assert stale_reason(h, now=1e9, alive=lambda pid: True) is None
    reason = stale_reason(h, now=0.0, alive=lambda pid: False)
    assert reason is not None and "pid 4242 is not alive" in reason


class MemoryKeeper:
    """An atomic in-memory keeper with the balancer's semantics (and its clock for ``age``)."""

    where = "in memory"

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.current: Holder | None = None
        self.renewed = 0.0

    async def take(self, h: Holder, replace: str | None = None) -> Holder | None:
        if self.current is not None and self.current.id not in (h.id, replace):
            return dataclasses.replace(self.current, age=self.clock() - self.renewed)
        self.current, self.renewed = h, self.clock()
        return None

    async def renew(self, h: Holder) -> bool:
        if self.current is None or self.current.id != h.id:
            return False
        self.current, self.renewed = h, self.clock()
        return True

    async def release(self, lock_id: str | None) -> list[Holder]:
        if self.current is None or lock_id not in (None, self.current.id):
            return []
        gone, self.current = self.current, None
        return [gone]

    async def read(self) -> Holder | None:
        return self.current


def test_lease_expiry_and_takeover_on_a_virtual_clock() -> None:
    async def scenario() -> None:
        clock = VirtualClock()
        keeper = MemoryKeeper(clock)
        first = FleetLock("shop", keeper, clock=clock, machine="host-a")
        await first.acquire("r-1")
        second = FleetLock("shop", keeper, clock=clock, machine="host-b")
        clock.now += LEASE_SECONDS - 1
        assert await first.renew()                   # a heartbeat: the lease starts again
        clock.now += LEASE_SECONDS - 1
        with pytest.raises(FleetLocked) as refused:
            await second.acquire()
        exc = refused.value
        assert isinstance(exc, PolicyRefused)
        assert (exc.machine, exc.pid, exc.rollout) == ("host-a", os.getpid(), "r-1")
        assert "locked by" in str(exc) and "rollout r-1" in str(exc)
        clock.now += 2                               # 31 s without a heartbeat: dead
        await second.acquire()
        assert second.takeover is not None
        assert "no heartbeat for 31 s" in second.takeover.reason
        assert second.takeover.previous.machine == "host-a"
        assert not await first.renew()               # the old holder finds out
        await first.release()                        # and does not remove the new lock
        assert keeper.current is not None and keeper.current.machine == "host-b"
        await second.release()
        assert keeper.current is None

    asyncio.run(scenario())


def test_heartbeat_renews_and_names_the_rollout() -> None:
    async def scenario() -> None:
        clock = VirtualClock()
        keeper = MemoryKeeper(clock)
        lock = FleetLock("shop", keeper, clock=clock, heartbeat=0.01)
        await lock.acquire()
        clock.now += 100
        lock.start_heartbeat(lambda: "r-9")
        lock.nudge()
        for _ in range(200):
            if keeper.current is not None and keeper.current.rollout == "r-9":
                break
            await asyncio.sleep(0.01)
        assert keeper.current is not None and keeper.current.rollout == "r-9"
        assert keeper.current.heartbeat == clock.now
        await lock.release()
        assert keeper.current is None

        lost: list[bool] = []                     # removed by hand: told once, not released
        lock = FleetLock("shop", keeper, clock=clock, heartbeat=0.01)
        await lock.acquire()
        lock.start_heartbeat(lambda: None, lambda: lost.append(True))
        await keeper.release(None)
        other = FleetLock("shop", keeper, clock=clock)
        await other.acquire()
        for _ in range(200):
            if lost:
                break
            await asyncio.sleep(0.01)
        assert lost == [True] and lock.lost
        await lock.release()
        assert keeper.current is not None and keeper.current.id == other.holder.id  # type: ignore[union-attr]

    asyncio.run(scenario())


# ------------------------------------------------------------- the built-in balancer's lock


def test_the_balancer_lock_endpoints_and_client() -> None:
    async def scenario() -> None:
        clock = VirtualClock(0.0)
        app = web.Application(middlewares=[_auth_middleware("tok")])
        app.add_routes(Admin(Table(), clock=clock).routes())
        server = TestServer(app)
        await server.start_server()
        try:
            url = str(server.make_url("")).rstrip("/")
            lb = BuiltinBalancer(url, "tok")
            assert isinstance(lb, FleetLockHolder)
            keeper = BalancerKeeper(lb)
            a = holder(id="a", rollout="r-1")
            assert await keeper.take(a) is None
            assert await keeper.take(a) is None      # taking it again is idempotent
            clock.now = 12.5
            held = await keeper.take(holder(id="b"))
            assert held is not None and held.id == "a" and held.age == 12.5
            assert not await keeper.renew(holder(id="b"))
            assert await keeper.renew(a)
            assert (await keeper.read()).age == 0.0  # type: ignore[union-attr]
            assert await keeper.take(holder(id="b"), replace="a") is None    # takeover
            assert await keeper.release("a") == []   # not a's any more
            gone = await keeper.release(None)        # by hand
            assert [h.id for h in gone] == ["b"] and await keeper.read() is None
            async with BuiltinBalancer(url, "wrong") as bad:
                with pytest.raises(Exception, match="401"):
                    await bad.read_fleet_lock()
                with pytest.raises(Exception, match="401"):
                    await bad.take_fleet_lock(a.to_json())
            async with lb.__class__(url, "tok") as raw:
                with pytest.raises(Exception, match=r"400.*holder\.id"):
                    await raw.take_fleet_lock({"user": "x"})
            await lb.aclose()
        finally:
            await server.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------------- host lock files


def test_host_lock_files_through_the_local_transport(tmp_path: Path) -> None:
    hosts = [Host(name=f"web-{i}", port=9000 + i,
                  vars={"upgrader_lock_file": str(tmp_path / f"lock-{i}")}) for i in (1, 2, 3)]

    async def scenario() -> None:
        transport = LocalTransport()
        keeper = HostFileKeeper(transport, hosts)
        clock = VirtualClock()
        mine = FleetLock("shop", keeper, clock=clock, machine=HERE)
        await mine.acquire("r-1")
        files = [json.loads((tmp_path / f"lock-{i}").read_text()) for i in (1, 2, 3)]
        assert {f["id"] for f in files} == {mine.holder.id}  # type: ignore[union-attr]
        assert all(f["anchor"] == "web-1" for f in files)
        other = FleetLock("shop", keeper, clock=clock, machine=HERE)
        with pytest.raises(FleetLocked, match=f"pid {os.getpid()}, rollout r-1"):
            await other.acquire()
        # a leftover of a dead holder on one host only (it lost its anchor): replaced
        await mine.release()
        assert not any((tmp_path / f"lock-{i}").exists() for i in (1, 2, 3))
        dead = holder(machine=HERE, pid=2 ** 22 + 7, id="dead", anchor="web-1")
        (tmp_path / "lock-3").write_text(dead.dumps() + "\n")
        await other.acquire()
        assert json.loads((tmp_path / "lock-3").read_text())["id"] == other.holder.id  # type: ignore[union-attr]
        await other.release()
        await transport.aclose()

    asyncio.run(scenario())


# ------------------------------------------------------------------------- the state folder


def test_an_existing_folder_keeps_its_mode(tmp_path: Path, caplog) -> None:
    """Before, ensure_private_dir chmodded any folder of this user to 0700."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    with caplog.at_level(logging.WARNING, "upgrader.state"):
        Journal(shared / "journal.sqlite").close()
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o755
    assert "open to group or others (mode 755)" in caplog.text
    ours = tmp_path / "ours" / "state"
    ensure_private_dir(ours)
    assert stat.S_IMODE(os.stat(ours).st_mode) == 0o700 and (ours / CREATED_MARK).exists()
    os.chmod(ours, 0o755)
    ensure_private_dir(ours)                          # one upgrader created goes back to 0700
    assert stat.S_IMODE(os.stat(ours).st_mode) == 0o700


def test_the_default_state_folder_is_per_user_and_keyed_by_the_fleet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fleet_factory) -> None:
    from upgrader.rollout import default_state_dir

    monkeypatch.delenv("UPGRADER_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    fleet = fleet_factory(3)
    monkeypatch.chdir(tmp_path)
    here = default_state_dir(fleet)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert default_state_dir(fleet) == here           # wherever it starts
    assert here.parent == tmp_path / "xdg" / "upgrader" and here.name.startswith("test-")
    moved = dataclasses.replace(fleet, hosts=tuple(
        dataclasses.replace(h, port=(h.port or 0) + 1) for h in fleet.hosts))
    assert default_state_dir(moved) != here           # another fleet of the same name
    secret = dataclasses.replace(fleet, balancer=ProviderSpec("builtin", {"token": "s3cret"}))
    assert default_state_dir(secret) == default_state_dir(
        dataclasses.replace(fleet, balancer=ProviderSpec("builtin", {"token": "other"})))
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir(fleet).parent == tmp_path / "home" / ".local/state/upgrader"
    monkeypatch.setenv("UPGRADER_STATE_DIR", str(tmp_path / "env"))
    assert default_state_dir(fleet) == tmp_path / "env"


NOOP_FLEET = """
[fleet]
name = "old-shop"

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

[strategy]
kind = "rolling"
batch = 1

[[hosts]]
name = "web-01"
port = 9101
"""


def test_a_journal_under_the_old_default_is_still_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A rollout journaled in ./.upgrader/state (the default before) is found by status and
    by resume, said once; the new default is not in the working directory."""
    from upgrader.cli import main

    monkeypatch.delenv("UPGRADER_STATE_DIR", raising=False)
    monkeypatch.delenv("UPGRADER_STATE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleet.toml").write_text(NOOP_FLEET)
    journal = Journal(tmp_path / ".upgrader/state/journal.sqlite")
    try:
        rollout = journal.begin(fleet="old-shop", fleet_path=None, strategy="rolling",
                                current="1.0.0", target="1.1.0", plan={})
    finally:
        journal.close()
    assert main(["status", "fleet.toml"]) == 0
    out, err = capsys.readouterr()
    assert f"rollout {rollout}" in out and "running" in out
    assert err.count("(the old default") == 1, err
    assert str(tmp_path / ".upgrader" / "state") in err
    # a fleet with nothing there: the new default, in the per-user folder
    (tmp_path / "other.toml").write_text(NOOP_FLEET.replace("old-shop", "new-shop"))
    assert main(["status", "other.toml"]) == 0
    out, err = capsys.readouterr()
    assert "old default" not in err and str(tmp_path / "xdg" / "upgrader") in out


def test_hosts_that_share_one_lock_file_take_it_once(tmp_path: Path) -> None:
    """Two service instances configured onto one lock file (``upgrader_lock_file``): the
    controller that holds it on the first is not refused by itself on the second."""
    shared = tmp_path / "shared.lock"
    path = str(shared)
    hosts = [Host(name=f"web-{i}", port=9000 + i, vars={"upgrader_lock_file": path})
             for i in (1, 2)]

    async def scenario() -> None:
        transport = LocalTransport()
        lock = FleetLock("shop", HostFileKeeper(transport, hosts))
        await lock.acquire()
        assert shared.exists()
        await lock.release()
        assert not shared.exists()
        await transport.aclose()

    asyncio.run(scenario())


def test_a_zombie_holder_is_dead():
    """A controller killed with SIGKILL that nothing reaps (a container whose init does not)
    stays a zombie: ``os.kill(pid, 0)`` still succeeds, yet its lock must be taken over
    (the README tour saw ``status`` call such a holder alive)."""
    import subprocess
    import time
    from pathlib import Path

    from upgrader.fleetlock import pid_alive

    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        stat = Path(f"/proc/{child.pid}/stat")
        while stat.read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        assert not pid_alive(child.pid)
    finally:
        child.wait()
    assert not pid_alive(child.pid)
    assert pid_alive(os.getpid())
