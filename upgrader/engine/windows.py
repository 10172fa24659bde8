"""Deploy windows in the engine: the part that holds a rollout outside the deploy window.

The engine asks a :class:`upgrader.policy.WindowPolicy` (pure calendar logic) and its injected
clock; it never reads the fleet file. Three places use it:

- every checkpoint (before each step and each host's procedure): outside the window the
  rollout pauses (state PAUSED, event ``window_closed`` saying why and until when) and goes on
  by itself at the next opening (``window_opened``); actions under way finish first;
- each wave's ``Gate("deploy_window")``: the wave waits (state WAITING, ``window_wait``) until
  a window opens that its estimate fits in, ``min_remaining`` included;
- an override (``override_window=REASON``, or the ``override_window(reason)`` control) lifts
  both for the rest of the rollout, and is journaled as a ``window_override`` event.

Roll-back never waits for a window: getting back is always allowed.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..clock import Clock
from ..events import RolloutState
from ..model import Timing
from ..plan import Gate, Plan
from ..policy import HORIZON, WINDOW_GATE, wave_work
from ..units import format_duration
from .bus import EventBus
from .machine import StateMachine

if TYPE_CHECKING:
    from ..policy import DeployWindows, WindowPolicy

    #: what the engine is given: a policy, or the fleet's own calendar (a frozen dataclass,
    #: whose read-only ``min_remaining`` the Protocol's plain attribute does not admit)
    Windows = WindowPolicy | DeployWindows


class WindowGuard:
    """Deploy-window holds for the engine: owns the policy, the override and the hold."""

    def __init__(self, windows: Windows | None, override: str | None, *, clock: Clock,
                 bus: EventBus, machine: StateMachine, plan: Plan, timing: Timing) -> None:
        self.windows = windows
        self.override_reason = override.strip() if override else None
        self.clock = clock
        self.bus = bus
        self.machine = machine
        self.plan = plan
        self.timing = timing
        #: the rollout is held outside the window now (an operator may pause it then too)
        self.held = False
        #: while held: when the hold ends (None: no opening within the horizon), and why
        self.hold_until: datetime | None = None
        self.hold_reason = ""
        self._wake = asyncio.Event()

    # -- control

    def override(self, reason: str) -> None:
        """Go on outside the deploy window from now on (recorded with ``reason``)."""
        reason = reason.strip()
        if not reason:
            raise ValueError("an override of the deploy window needs a reason")
        if self.override_reason is not None:
            return
        self.override_reason = reason
        self.bus.spawn(self.bus.emit("window_override", reason=reason, open=self._open_now()))
        self._wake.set()

    # -- queries

    def _active(self) -> bool:
        return self.windows is not None and self.override_reason is None

    def _now_utc(self) -> datetime:
        return datetime.fromtimestamp(self.clock.wall(), UTC)

    def _open_now(self) -> bool | None:
        return None if self.windows is None else self.windows.is_open(self._now_utc())

    def info(self) -> dict[str, Any] | None:
        """For front ends: whether the window is open, until when (``closes``, and
        ``closes_in_s`` from now), the next opening (``opens``, ``opens_in_s``), who is on
        duty, the override's reason, and whether the rollout waits for a window now
        (``held``, with ``resumes``/``resumes_in_s`` and ``why``). Times are ISO (UTC); the
        ``*_in_s`` figures are seconds from this call, for a countdown."""
        if self.windows is None:
            return None
        now = self._now_utc()
        is_open = self.windows.is_open(now)
        end = self.windows.window_end(now) if is_open else None
        opening = None if is_open else self.windows.next_opening(now)
        held = self.held and self._active()
        until = self.hold_until if held else None

        def seconds(when: datetime | None) -> float | None:
            return None if when is None else max(0.0, (when - now).total_seconds())

        return {"open": is_open, "overridden": self.override_reason,
                "teams": [t.name for t in self.windows.on_duty(now)],
                "closes": end.isoformat() if end else None, "closes_in_s": seconds(end),
                "opens": opening.isoformat() if opening else None,
                "opens_in_s": seconds(opening),
                "held": held, "why": self.hold_reason if held else None,
                "resumes": until.isoformat() if until else None,
                "resumes_in_s": seconds(until)}

    # -- engine hooks

    async def announce_override(self) -> None:
        """At the start: an override given up front goes to the journal."""
        if self.override_reason is not None:
            await self.bus.emit("window_override", reason=self.override_reason,
                                open=self._open_now())

    async def checkpoint(self) -> bool:
        """Outside the window: pause until the next opening. True if it held."""
        if self.windows is None or not self._active():
            return False
        now = self._now_utc()
        if self.windows.is_open(now):
            return False
        opening = self.windows.next_opening(now)
        await self._hold(self.windows, RolloutState.PAUSED, opening,
                         "outside the deploy window (no team on duty)", "window_closed")
        return True

    async def gate(self, index: int) -> None:
        """Before a wave: wait until a team is on duty and the wave fits before the window
        closes."""
        step = self.plan.steps[index]
        assert isinstance(step, Gate) and step.gate == WINDOW_GATE
        need = wave_work(self.plan.steps, index, self.timing)
        while self.windows is not None and self._active():
            now = self._now_utc()
            start = self.windows.earliest_start(now, need)
            if start is not None and start <= now:
                return
            margin = self.windows.min_remaining
            why = f"wave {step.wave} needs about {format_duration(need)}"
            if margin:
                why += f" plus {format_duration(margin)} of margin"
            if self.windows.is_open(now):
                end = self.windows.window_end(now)
                why += (f", more than is left before the window closes at "
                        f"{self.windows.describe_time(end)}" if end else "")
            else:
                why += ", and no team is on duty"
            await self._hold(self.windows, RolloutState.WAITING, start, why, "window_wait",
                             wave=step.wave, need_s=need)

    async def _hold(self, windows: Windows, state: RolloutState, until: datetime | None,
                    why: str, event: str, **data: object) -> None:
        machine = self.machine
        before = (machine.state, machine.reason)
        if until is None:
            reason = f"{why}; no opening within {HORIZON.days} days"
        else:
            reason = f"{why}; resumes at {windows.describe_time(until)}"
        self.held = True
        self.hold_until, self.hold_reason = until, reason
        self._wake.clear()
        await self.bus.emit(event, reason=reason, until=until.isoformat() if until else None,
                            teams=[t.name for t in windows.on_duty(until)] if until else [],
                            **data)
        await machine.set_state(state, reason)
        try:
            while self._active() and not machine.interrupted:
                remaining = None
                if until is not None:
                    remaining = until.timestamp() - self.clock.wall()
                    if remaining <= 0:
                        break
                await self._sleep_or_wake(remaining)
        finally:
            self.held = False
            self.hold_until, self.hold_reason = None, ""
        machine.raise_if_interrupted()
        now = self._now_utc()
        await self.bus.emit("window_opened", teams=[t.name for t in windows.on_duty(now)],
                            overridden=self.override_reason is not None)
        await machine.set_state(*before)

    async def _sleep_or_wake(self, seconds: float | None) -> None:
        # futures of different result types, only ever awaited for completion
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self.machine.interrupt.wait()),
            asyncio.ensure_future(self._wake.wait())]
        if seconds is not None:
            waiters.append(asyncio.ensure_future(self.clock.sleep(seconds)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
