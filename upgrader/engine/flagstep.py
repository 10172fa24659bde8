"""The first step of a release's roll-back: its flags off, then verify again.

A release ships with flags (``[release] flags``, and every flag whose ``schema`` is the
release's migration or the release itself). When verification fails, the cheapest roll-back is
to turn those flags off in the rollout's environment (each journaled as a ``flag`` event with
the state it had, and audited in the flag store) and judge the release again for a short hold
(``[release] flags_hold``). If that cures it, the rollout stops there: ``flags off, release
kept`` (outcome ``flags_off``), and the operator decides. If not, the roll-back goes on as
before (hosts, then the schema), with the flags left off.

Only a failed verification takes this step: an operator's abort, a host that failed to install
or a gate that failed rolls back as before. ``on_failure = "shutdown"`` takes it too (flags off
is cheaper than taking hosts out of service, and keeps the capacity).

A resumed roll-back (the controller died during it) goes by the journal, never by guesswork:
the step cured it (``flags_first`` end, cured) -> the rollout ends ``flags_off`` again, no host
moves; it did not cure it -> not repeated, the hosts go back; it began and never ended -> it
goes on: the flags of its begin event still on go off (with the old state the journal kept),
and the hold runs again (its verdict died with the controller); it never began -> it runs,
unless hosts already moved back (then the step was behind them: it found no flags on).
"""

from __future__ import annotations

from typing import Any

from ..errors import UpgraderError
from ..events import RolloutState
from ..model import Fleet
from ..plan import Gate, Plan
from .bus import EventBus
from .gates import Gates
from .machine import StateMachine
from .progress import ResumeState
from .verification import Verification


class FlagStep:
    def __init__(self, fleet: Fleet, plan: Plan, *, bus: EventBus, machine: StateMachine,
                 gates: Gates, verification: Verification) -> None:
        self.fleet = fleet
        self.plan = plan
        self.bus = bus
        self.machine = machine
        self.gates = gates
        self.verification = verification
        #: the journal of the rollout this engine resumes (None: a fresh rollout)
        self.resume: ResumeState | None = None

    def migration(self) -> str | None:
        starts = [s for s in self.plan.steps if isinstance(s, Gate) and s.gate == "schema_start"]
        return starts[0].detail if starts else None

    async def release_flags(self) -> list[str]:
        """The flags that ship with the target release and are on now: ``[release] flags``
        and the flags whose ``schema`` is the release's migration (or the release)."""
        switch = self.gates.flags
        if switch is None or self.plan.rollback_mode == "flag":
            return []
        keys = list(self.fleet.releases.flags)
        migration = self.migration()
        if migration is not None:
            keys += await switch.flags_needing((migration, self.fleet.releases.target))
        found = []
        for key in dict.fromkeys(keys):
            state = await switch.flag_state(key)
            if state.get("on") and not state.get("missing"):
                found.append(key)
        return found

    def applies(self) -> bool:
        """Only after a failed verification (an ``analysis_failed`` event), never after an
        operator's abort."""
        if self.machine.abort_rollback is not None or self.plan.rollback_mode == "flag":
            return False
        if self.resume is not None and self.resume.flags_first_applies:
            return True
        return any(e.kind == "analysis_failed" for e in self.bus.history)

    def _cured_text(self, reason: str, keys: list[str]) -> str:
        return (f"{reason}; flags off, release kept ({', '.join(keys)} off; the release "
                "verifies without them): the operator decides")

    async def run(self, reason: str) -> bool:
        """Turn the release's flags off and verify again; True: that cured it (the rollout
        stops with the release kept)."""
        if not self.applies():
            return False
        journaled = self.resume.flags_first if self.resume is not None else None
        begun: dict[str, Any] = self.resume.flags_first_begin if self.resume is not None else {}
        if journaled == "cured":            # the controller died after the cure
            keys = list(begun.get("flags") or ())
            self.machine.failure = self._cured_text(reason, keys)
            await self.bus.emit("log", level="info", message="resumed: the flag step had "
                                "cured the release (journaled); it stays flags off, release "
                                "kept")
            return True
        if journaled == "not cured":
            return False
        if journaled is None and self.resume is not None and self.resume.hosts_back_begun:
            return False
        try:
            keys = await self.release_flags()
        except UpgraderError as exc:
            await self.bus.emit("log", level="warning",
                                message=f"the release's flags could not be read: {exc}")
            return False
        switch = self.gates.flags
        was: dict[str, Any] = {}
        if journaled == "begun":
            # the flags of the step that began: those already off stay so (their old state
            # is the journal's), those still on go off now; the hold runs again
            keys = list(begun.get("flags") or ())
            was = dict(begun.get("was") or {})
        if not keys or switch is None:
            return False
        hold = self.fleet.releases.flags_hold
        for key in keys:
            if key not in was:
                was[key] = await switch.flag_state(key)
        await self.machine.set_state(RolloutState.ROLLING_BACK,
                                     f"flags off first: {', '.join(keys)}; verifying "
                                     f"for {hold:g}s")
        await self.bus.emit("flags_first", phase="begin", flags=keys, was=was, hold_s=hold,
                            reason=reason, resumed=journaled == "begun")
        try:
            for key in keys:
                if journaled == "begun" and not (await switch.flag_state(key)).get("on"):
                    continue        # turned off before the controller died
                await self.gates.set_flag(key, on=False, percent=None,
                                          why=f"release {self.fleet.releases.target} failed "
                                              "verification: its flags go off first",
                                          was=was[key])
        except UpgraderError as exc:
            await self.bus.emit("flags_first", phase="end", flags=keys, cured=False,
                                detail=f"a flag could not be turned off: {exc}")
            return False
        cured, failed = await self.verification.recheck(hold)
        detail = ("the release verifies with its flags off" if cured else
                  "; ".join(v.describe() for v in failed[:3]) or "no traffic to judge")
        await self.bus.emit("flags_first", phase="end", flags=keys, cured=cured, detail=detail)
        if cured:
            self.machine.failure = self._cured_text(reason, keys)
        return cured
