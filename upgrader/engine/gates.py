"""Gates and switches: the steps that decide whether a rollout may go on, and the switches
beside the hosts that a release turns.

- the pre-release and system tests (``Gate("pre_release_test" | "system_test")``): a command
  on some hosts that must pass;
- the release's live schema change (``schema_start`` / ``schema_complete``, and its roll-back);
- feature flags (``SetFlag``), each read back, and turned off again by a flag roll-back;
- the deploy window's wave gate, handed to :class:`~upgrader.engine.windows.WindowGuard`.
"""

from __future__ import annotations

import asyncio

from ..errors import RolloutFailed, UpgraderError
from ..events import RolloutState
from ..model import Fleet
from ..plan import Gate, Plan
from ..providers.base import FlagSwitch, SchemaSwitch
from ..units import plural
from .bus import EventBus
from .describe import describe_error, describe_step
from .hosts import HostProcedure
from .machine import StateMachine
from .progress import RolloutProgress
from .windows import WindowGuard


class Gates:
    def __init__(self, fleet: Fleet, plan: Plan, *, flags: FlagSwitch | None,
                 schema: SchemaSwitch | None, bus: EventBus, machine: StateMachine,
                 progress: RolloutProgress, procedure: HostProcedure,
                 windows: WindowGuard) -> None:
        self.fleet = fleet
        self.plan = plan
        self.flags = flags
        self.schema = schema
        self.bus = bus
        self.machine = machine
        self.progress = progress
        self.procedure = procedure
        self.windows = windows
        #: the last answer of :meth:`schema_irreversible` (front ends, freeze choices)
        self.schema_irreversible_now: str | None = None

    async def run(self, index: int, step: Gate) -> None:
        """Pass the gate at plan step ``index``, or raise why not."""
        if step.gate == "deploy_window":
            return await self.windows.gate(index)
        if step.gate.startswith("schema_"):
            return await self._schema_gate(step)
        await self._test_gate(step)

    # -- pre-release and system tests

    async def _test_gate(self, step: Gate) -> None:
        await self.machine.set_state(RolloutState.VERIFYING, step.gate.replace("_", " "))
        template = (self.fleet.commands.system_test if step.gate == "system_test"
                    else self.fleet.commands.pre_release_test)
        if template is None:
            await self.bus.emit("log", level="warning",
                                message=f"no {step.gate} command configured: gate passes")
            return
        release = self.fleet.releases.target
        hosts = step.hosts or tuple(h.name for h in self.fleet.main_hosts[:1])
        progress = self.progress

        async def one(name: str) -> None:
            host = progress.hosts_by_name[name]
            slot = progress.idle_slot(host) if step.slots else progress.live_slot.get(name)
            await self.procedure.run(host, template, release, slot)

        results = await asyncio.gather(*(one(n) for n in hosts), return_exceptions=True)
        failures = [(n, r) for n, r in zip(hosts, results, strict=True)
                    if isinstance(r, BaseException)]
        for _, exc in failures:
            if not isinstance(exc, Exception):
                raise exc
        if failures:
            name, exc = failures[0]
            detail = describe_error(exc, name)
            await self.bus.emit("verdict", metric="system_test", result="fail",
                                value=float(len(failures)), threshold=0.0, samples=len(hosts),
                                baseline=None, detail=detail[-500:])
            raise RolloutFailed(f"{step.gate} failed on {len(failures)} of "
                                f"{plural(len(hosts), 'host')} "
                                f"(first: {detail[-500:]})")
        await self.bus.emit("verdict", metric="system_test", result="pass", value=0.0,
                            threshold=0.0, samples=len(hosts), baseline=None, detail="")

    # -- the schema change

    async def _schema_gate(self, step: Gate) -> None:
        switch = self.schema
        if switch is None:
            raise RolloutFailed(f"step {describe_step(step)} needs the release's database, but "
                                "the rollout has no schema switch ([schema] database)")
        target = self.fleet.releases.target
        if step.gate == "schema_start":
            await self.machine.set_state(RolloutState.RUNNING,
                                         f"schema change {step.detail}: start")
            await self.bus.emit("schema", migration=step.detail, action="start", result="begin")
            result = await switch.start()
        else:
            hosts, by_name = self.progress.hosts, self.progress.hosts_by_name
            old = sorted(n for n, s in hosts.items()
                         if by_name[n].cluster == "main" and s.release != target)
            if old:
                raise RolloutFailed(
                    f"schema change {step.detail} cannot complete: {len(old)} host(s) still "
                    f"run a release other than {target} "
                    f"(first: {old[0]} on {hosts[old[0]].release})")
            if self.fleet.rollback_window is not None:
                # the old release's views stay for the roll-back window: contracting now would
                # leave `upgrader rollback` nothing to go back to (`upgrader schema complete
                # --fleet` does it once the window has closed)
                await self.bus.emit("schema", migration=step.detail, action="complete",
                                    result="deferred until the roll-back window closes")
                return
            await self.machine.set_state(RolloutState.RUNNING,
                                         f"schema change {step.detail}: complete")
            await self.bus.emit("schema", migration=step.detail, action="complete",
                                result="begin")
            result = await switch.complete()
        await self.bus.emit("schema", migration=step.detail,
                            action=step.gate.removeprefix("schema_"), result=result)

    async def schema_irreversible(self) -> str | None:
        """Why the release's schema change cannot be reverted now (it is started and has an
        operation without a way back), or None. Kept in :attr:`schema_irreversible_now`."""
        switch = self.schema
        starts = [s for s in self.plan.steps if isinstance(s, Gate) and s.gate == "schema_start"]
        why = getattr(switch, "irreversible", None)
        self.schema_irreversible_now = None
        if switch is None or not starts or not why:
            return None
        try:
            state = await switch.state()
        except UpgraderError as exc:
            state = f"unreadable ({exc})"       # cannot tell: never revert blindly
        if state in (None, "rolled_back", "complete"):
            return None
        self.schema_irreversible_now = (f"schema change {starts[0].detail} cannot be "
                                        f"reverted: {why}")
        return self.schema_irreversible_now

    async def schema_rollback(self, errors: list[str]) -> None:
        """After the hosts are back on the old release: undo the schema change's start. The
        switch reads the database's own record, so this is right on a resumed roll-back too
        (and a no-op when the change never started or was completed)."""
        switch = self.schema
        starts = [s for s in self.plan.steps if isinstance(s, Gate) and s.gate == "schema_start"]
        if switch is None or not starts:
            return
        if errors:
            errors.append("schema change left started: hosts did not all roll back")
            return
        migration = starts[0].detail
        irreversible = await self.schema_irreversible()
        if irreversible is not None:
            # an operator chose to roll back anyway: the old release keeps its views
            await self.bus.emit("log", level="warning",
                                message=f"{irreversible}: left started")
            return
        if not await self._flags_off_for_schema(migration, errors):
            return
        await self.bus.emit("schema", migration=migration, action="rollback", result="begin")
        try:
            result = await switch.rollback()
        except UpgraderError as exc:
            errors.append(f"schema change {migration} roll-back failed: {exc}")
            return
        await self.bus.emit("schema", migration=migration, action="rollback", result=result)

    async def _flags_off_for_schema(self, migration: str, errors: list[str]) -> bool:
        """Before the schema change is rolled back: turn off (journaled) every flag whose code
        needs it (its ``schema`` names the migration or the release it creates). False, with
        the reason in ``errors``, when one could not be turned off: the schema stays."""
        if self.flags is None:
            return True
        try:
            keys = await self.flags.flags_needing((migration, self.fleet.releases.target))
            for key in keys:
                await self.set_flag(key, on=False, percent=None,
                                    why=f"schema {migration} rolls back")
        except UpgraderError as exc:
            errors.append(f"schema change {migration} left started: a flag that needs it "
                          f"could not be turned off: {exc}")
            return False
        return True

    # -- feature flags

    async def set_flag(self, key: str, *, on: bool, percent: float | None,
                       groups: tuple[str, ...] = (), why: str = "",
                       was: dict[str, object] | None = None) -> None:
        """Turn flag ``key`` on (for ``groups`` and/or ``percent`` of users) or off; read it
        back. ``why`` is kept in the flag store's audit trail and the journal; ``was``, the state
        it had (kept in the journal, so an operator can put it back)."""
        switch = self.flags
        if switch is None:
            raise RolloutFailed(f"step needs flag {key!r} but the fleet has no [flags] store")
        reason = f"rollout {self.bus.rollout_id}" + (f": {why}" if why else "")
        await switch.set_flag(key, on=on, percent=percent, groups=groups, reason=reason)
        seen = await switch.flag_state(key)
        if bool(seen.get("on")) != on or (on and percent is not None
                                         and seen.get("percent") not in (None, percent)) \
                or (on and groups and sorted(seen.get("groups") or ()) != sorted(groups)):
            raise RolloutFailed(f"flag {key} reads back {seen}, expected on={on} "
                                f"percent={percent}")
        if on:
            self.progress.flags_on.add(key)
        extra: dict[str, object] = {"why": why} if why else {}
        if was is not None:
            extra["was"] = was
        await self.bus.emit("flag", key=key, on=on, percent=percent, groups=list(groups),
                            **extra)

    async def flags_off(self) -> None:
        """A flag roll-back: every flag this rollout turned on goes off."""
        for key in sorted(self.progress.flags_on):
            await self.set_flag(key, on=False, percent=None)
