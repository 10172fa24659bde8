"""The host procedure: what the engine does to one host, and the one place it does it.

``stop -> install -> start -> check`` is written once (:meth:`HostProcedure._install_and_start`),
with the in-doubt rule: a procedure interrupted by a crash (or found so by reconcile) never
installs a release twice. Where the host ran the release before (a roll-back), the fleet's
``switch`` command (when it has one) replaces ``install``: it only makes the installed release
current again, and is in doubt (redone unless ``current`` shows it done) exactly as
``install`` is. Upgrade and roll-back (:meth:`HostProcedure.upgrade`) and blue-green slot
preparation (:meth:`HostProcedure.prepare_slot`) go through it; swaps and turn-downs are
balancer changes plus a stop. Each phase is announced (``host_phase``) before it runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from ..clock import Clock
from ..errors import HealthCheckFailed
from ..model import Fleet, Host, HostPhase
from ..providers.base import (
    CommandResult,
    HealthCheck,
    SnapshotProvider,
    Transport,
    describe_exit,
)
from .bus import EventBus
from .progress import RolloutProgress, backend_name, port_of
from .traffic import TrafficControl

#: the slot name a host without slots renders as ``{slot}``
DEFAULT_SLOT = "default"

Which = Literal["install", "start", "stop", "current", "switch"]


def render(fleet: Fleet, argv: Iterable[str], host: Host, release: str,
           slot: str | None) -> list[str]:
    """A command template with the host's values filled in (one argv element each)."""
    port = port_of(host, slot)
    values = {"release": release, "host": host.name, "address": host.address,
              "port": "" if port is None else str(port), "slot": slot or DEFAULT_SLOT,
              "previous": fleet.releases.current, **host.vars}
    return [arg.format_map(values) for arg in argv]


class HostProcedure:
    """Runs the fleet's commands on hosts, and each host's procedure."""

    def __init__(self, fleet: Fleet, transport: Transport, health: HealthCheck,
                 snapshot: SnapshotProvider | None, *, clock: Clock, bus: EventBus,
                 progress: RolloutProgress, traffic: TrafficControl) -> None:
        self.fleet = fleet
        self.transport = transport
        self.health = health
        self.snapshot = snapshot
        self.clock = clock
        self.bus = bus
        self.progress = progress
        self.traffic = traffic
        # optional transport capability (the ssh transport): a command waiting for its host's
        # lock, held by a command of a previous controller, is told as a log event
        watch = getattr(transport, "watch_lock_waits", None)
        if callable(watch):
            watch(self._lock_wait)

    async def _lock_wait(self, host: str, message: str) -> None:
        await self.bus.emit("log", level="warning", message=f"{host}: {message}")

    # -- commands

    async def run(self, host: Host, template: Iterable[str], release: str, slot: str | None,
                  *, check: bool = True) -> CommandResult:
        """Run a command template on ``host`` (the fleet's command timeout)."""
        return await self.transport.run(host, render(self.fleet, template, host, release, slot),
                                        timeout=self.fleet.timing.command_timeout, check=check)

    async def command(self, host: Host, which: Which, release: str, slot: str | None,
                      *, check: bool = True) -> str:
        """Run one of the fleet's commands; its stdout ("" when the fleet has none)."""
        commands = self.fleet.commands
        template = {"install": commands.install, "start": commands.start,
                    "stop": commands.stop, "current": commands.current,
                    "switch": commands.switch}[which]
        if template is None:
            return ""
        return (await self.run(host, template, release, slot, check=check)).stdout

    async def installed_release(self, host: Host, slot: str | None) -> str | None:
        """What ``host``'s ``slot`` runs, by the ``current`` command (None: unknown)."""
        if self.fleet.commands.current is None:
            return None
        out = await self.command(host, "current", self.fleet.releases.current, slot,
                                 check=False)
        return out.strip() or None

    async def wait_healthy(self, host: Host, slot: str | None) -> None:
        timing = self.fleet.timing
        deadline = self.clock.monotonic() + timing.health_timeout
        detail = ""
        while True:
            result = await self.health.check(host, port=port_of(host, slot))
            if result.ok:
                self.progress.hosts[host.name].healthy = True
                self.progress.checked(backend_name(host.name, slot), True)
                return
            detail = result.detail
            if self.clock.monotonic() >= deadline:
                self.progress.hosts[host.name].healthy = False
                raise HealthCheckFailed(
                    f"not healthy after {timing.health_timeout:g}s: {detail}", host=host.name)
            await self.clock.sleep(timing.health_interval)

    # -- the procedure

    async def _phase(self, host: str, phase: HostPhase, release: str | None,
                     slot: str | None, mode: str) -> None:
        self.progress.hosts[host].phase = phase
        await self.bus.emit("host_phase", host=host, phase=phase.value, release=release,
                            slot=slot, mode=mode)

    async def _already_installed(self, host: Host, release: str, slot: str | None,
                                 in_doubt: str | None) -> bool:
        """The in-doubt rule: an interrupted procedure that was installing finds out whether
        it did (by the ``current`` command); one that got further never installs again."""
        if in_doubt == HostPhase.INSTALLING.value:
            return await self.installed_release(host, slot) == release
        return self.progress.installed_after(in_doubt)

    async def _install_and_start(self, host: Host, release: str, slot: str | None, mode: str,
                                 in_doubt: str | None, *, revert: str | None = None,
                                 where: str = "", switch: bool = False) -> None:
        """stop -> install (or revert to snapshot ``revert``, or ``switch`` back to a release
        the host still has installed) -> start -> health check."""
        name = host.name
        await self._phase(name, HostPhase.STOPPING, release, slot, mode)
        await self.command(host, "stop", release, slot)
        skip_install = await self._already_installed(host, release, slot, in_doubt)
        await self._phase(name, HostPhase.INSTALLING, release, slot, mode)
        if skip_install:
            await self.bus.emit("log", level="info",
                                message=f"{name}: {release} already installed{where} (resumed)")
        elif revert is not None and self.snapshot is not None:
            await self.snapshot.revert(host, revert)
        elif switch and self.fleet.commands.switch is not None:
            await self._switch(host, release, slot)
        else:
            await self.command(host, "install", release, slot)
        await self._phase(name, HostPhase.STARTING, release, slot, mode)
        await self.command(host, "start", release, slot)
        await self._phase(name, HostPhase.CHECKING, release, slot, mode)
        await self.wait_healthy(host, slot)

    async def _switch(self, host: Host, release: str, slot: str | None) -> None:
        """The fleet's ``switch``; one that fails (the release is not installed after all)
        falls back to ``install``, and says so. Like ``install`` it runs between ``stop``
        and ``start``, in the ``installing`` phase: one in flight when the controller died
        is in doubt and, unless ``current`` shows it done, redone (it is idempotent)."""
        result = await self.run(host, self.fleet.commands.switch or (), release, slot,
                                check=False)
        if result.exit_status == 0:
            return
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        await self.bus.emit("log", level="warning", message=(
            f"{host.name}: switch to {release} {describe_exit(result.exit_status)}"
            f"{' (' + detail[0][-200:] + ')' if detail[0] else ''}: installing it instead"))
        await self.command(host, "install", release, slot)

    async def upgrade(self, name: str, release: str, *, mode: str, drain: bool,
                      slot: str | None = None, switch: bool = False) -> None:
        """snapshot -> drain -> stop -> install -> start -> health -> enable. ``mode``:
        ``upgrade`` or ``rollback`` (which restores the host's snapshot when it has one).
        ``switch``: the host ran ``release`` before and still has it installed, so the
        fleet's ``switch`` command (when it has one) replaces ``install``."""
        host = self.progress.hosts_by_name[name]
        status = self.progress.hosts[name]
        status.error = None
        in_doubt = self.progress.take_in_doubt(name, release)
        snapshots = self.progress.snapshots
        if mode == "upgrade" and self.snapshot is not None and name not in snapshots:
            await self._phase(name, HostPhase.SNAPSHOT, release, slot, mode)
            snapshot_id = await self.snapshot.create(host, f"pre-{release}")
            snapshots[name] = snapshot_id
            await self.bus.emit("snapshot_taken", host=name, snapshot=snapshot_id)
        if drain:
            await self._phase(name, HostPhase.DRAINING, release, slot, mode)
            await self.traffic.drain(name, backend_name(name, slot))
        revert = snapshots.get(name) if mode == "rollback" else None
        await self._install_and_start(host, release, slot, mode, in_doubt, revert=revert,
                                      switch=switch)
        await self._phase(name, HostPhase.ENABLING, release, slot, mode)
        await self.traffic.enable(host, slot, release)
        status.release = release
        status.phase = HostPhase.IN_SERVICE
        await self.bus.emit("host_done", host=name, release=release, slot=slot, mode=mode)

    # -- blue-green

    async def discover_slots(self) -> None:
        """Which slot of each host serves users now (the first, when none does)."""
        progress = self.progress
        state = await self.traffic.balancer.state()
        for host in self.fleet.main_hosts:
            if host.name in progress.live_slot or not host.slots:
                continue
            names = list(host.slots)
            live = next((s for s in names
                         if (b := state.backends.get(backend_name(host.name, s)))
                         and b.state == "ready"), names[0])
            progress.live_slot[host.name] = live
            progress.original_slot.setdefault(host.name, live)
            progress.hosts[host.name].slot = live
        await self.bus.emit("log", level="info", message="live slots: " + ", ".join(
            f"{h}={s}" for h, s in sorted(progress.live_slot.items())))
        await self.bus.emit("slots", live=dict(progress.live_slot),
                            original=dict(progress.original_slot))

    async def prepare_slot(self, name: str, *, reuse: bool = False) -> None:
        """Install the target release in ``name``'s idle slot and register it with the
        balancer in maintenance: no user reaches it until the swap. ``reuse``: an idle slot
        that runs the target release already (its ``current`` says so and it answers its
        health check) is left as it is: nothing stopped, nothing installed."""
        host = self.progress.hosts_by_name[name]
        slot = self.progress.idle_slot(host)
        release = self.fleet.releases.target
        # resumed half-way (or found so by reconcile): never install the idle slot twice
        in_doubt = self.progress.take_in_doubt(name, release)
        reused = reuse and await self._runs_already(host, release, slot)
        if reused:
            await self.bus.emit("log", level="info",
                                message=f"{name}: {release} runs in {slot} already: reused")
            if await self.traffic.backend(backend_name(name, slot)) is None:
                await self.traffic.enable(host, slot, release, state="maint")
        else:
            await self._install_and_start(host, release, slot, "upgrade", in_doubt,
                                          where=f" in {slot}")
            await self.traffic.enable(host, slot, release, state="maint")
        status = self.progress.hosts[name]
        status.phase = HostPhase.IN_SERVICE
        await self.bus.emit("host_done", host=name, release=status.release,
                            slot=self.progress.live_slot[name], mode="prepare", prepared=slot,
                            reused=reused)

    async def _runs_already(self, host: Host, release: str, slot: str) -> bool:
        """``slot`` of ``host`` has ``release`` installed and answers its health check now."""
        if await self.installed_release(host, slot) != release:
            return False
        result = await self.health.check(host, port=port_of(host, slot))
        if result.ok:
            self.progress.checked(backend_name(host.name, slot), True)
        return result.ok

    async def reinstall_idle_slot(self, host: Host, release: str, slot: str) -> None:
        """stop -> install -> start in a slot that serves nobody (no phases: nothing of the
        rollout's progress depends on it)."""
        await self.command(host, "stop", release, slot)
        await self.command(host, "install", release, slot)
        await self.command(host, "start", release, slot)

    async def swap_slot(self, name: str, *, back: bool = False) -> None:
        """Users go to the idle slot (``back``: to the original one); the old one drains."""
        progress, traffic = self.progress, self.traffic
        host = progress.hosts_by_name[name]
        old = progress.live_slot[name]
        new = progress.original_slot[name] if back else progress.idle_slot(host)
        if old == new:
            return
        release = self.fleet.releases.current if back else self.fleet.releases.target
        mode = "rollback" if back else "upgrade"
        await self._phase(name, HostPhase.ENABLING, release, new, mode)
        new_backend = backend_name(name, new)
        if await traffic.backend(new_backend) is None:
            await traffic.enable(host, new, release, state="ready")
        else:
            await traffic.set_backend_state(new_backend, "ready")
        old_backend = backend_name(name, old)
        if await traffic.backend(old_backend) is not None:
            # the old slot drains (swap back: the bad slot's requests finish, then maint)
            await traffic.set_backend_state(old_backend, "drain")
        progress.live_slot[name] = new
        status = progress.hosts[name]
        status.slot = new
        status.release = release
        status.phase = HostPhase.IN_SERVICE
        await self.bus.emit("host_done", host=name, release=release, slot=new,
                            mode="rollback" if back else "swap")

    # -- turn-down (a new cluster replaces an old one)

    async def turn_down(self, name: str) -> None:
        host = self.progress.hosts_by_name[name]
        status = self.progress.hosts[name]
        release = status.release or self.fleet.releases.current
        await self._phase(name, HostPhase.DRAINING, release, None, "turn_down")
        await self.traffic.drain(name, name)
        await self._phase(name, HostPhase.STOPPING, release, None, "turn_down")
        await self.command(host, "stop", release, None)
        if await self.traffic.backend(name) is not None:
            await self.traffic.remove_backend(name)
        self.progress.turned_down.add(name)
        status.phase = HostPhase.OUT_OF_SERVICE
        status.release = None
        await self.bus.emit("host_done", host=name, release=None, slot=None, mode="turn_down")
