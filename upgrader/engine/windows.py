"""Deploy windows in the engine: a mixin of :class:`upgrader.engine.core.Engine`.

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
from typing import Any

from ..events import RolloutState
from ..policy import HORIZON, WINDOW_GATE, WindowPolicy, wave_work
from ..units import format_duration


class WindowGates:
    """Deploy-window holds for the engine. Uses the engine's clock, state and events."""

    windows: WindowPolicy | None
    override_window_reason: str | None

    def _init_windows(self, windows: WindowPolicy | None, override: str | None) -> None:
        self.windows = windows
        self.override_window_reason = override.strip() if override else None
        self._window_held = False
        self._window_wake = asyncio.Event()

    # -- control

    def override_window(self, reason: str) -> None:
        """Go on outside the deploy window from now on (recorded with ``reason``)."""
        reason = reason.strip()
        if not reason:
            raise ValueError("an override of the deploy window needs a reason")
        if self.override_window_reason is not None:
            return
        self.override_window_reason = reason
        self._spawn(self._emit("window_override", reason=reason,   # type: ignore[attr-defined]
                               open=self._window_open_now()))
        self._window_wake.set()

    # -- queries

    def _windows_active(self) -> bool:
        return self.windows is not None and self.override_window_reason is None

    def _now_utc(self) -> datetime:
        return datetime.fromtimestamp(self.clock.wall(), UTC)  # type: ignore[attr-defined]

    def _window_open_now(self) -> bool | None:
        return None if self.windows is None else self.windows.is_open(self._now_utc())

    def window_info(self) -> dict[str, Any] | None:
        """For front ends: whether the window is open, until when, who is on duty."""
        if self.windows is None:
            return None
        now = self._now_utc()
        is_open = self.windows.is_open(now)
        end = self.windows.window_end(now) if is_open else None
        opening = None if is_open else self.windows.next_opening(now)
        return {"open": is_open, "overridden": self.override_window_reason,
                "teams": [t.name for t in self.windows.on_duty(now)],
                "closes": end.isoformat() if end else None,
                "opens": opening.isoformat() if opening else None}

    # -- engine hooks

    async def _announce_window_override(self) -> None:
        """At the start: an override given up front goes to the journal."""
        if self.override_window_reason is not None:
            await self._emit("window_override",   # type: ignore[attr-defined]
                             reason=self.override_window_reason, open=self._window_open_now())

    async def _window_checkpoint(self) -> bool:
        """Outside the window: pause until the next opening. True if it held."""
        if not self._windows_active():
            return False
        assert self.windows is not None
        now = self._now_utc()
        if self.windows.is_open(now):
            return False
        opening = self.windows.next_opening(now)
        await self._window_hold(RolloutState.PAUSED, opening,
                                "outside the deploy window (no team on duty)", "window_closed")
        return True

    async def _window_gate(self, index: int) -> None:
        """Before a wave: wait until a team is on duty and the wave fits before the window
        closes."""
        step = self.plan.steps[index]   # type: ignore[attr-defined]
        assert step.gate == WINDOW_GATE
        need = wave_work(self.plan.steps, index, self.fleet.timing)  # type: ignore[attr-defined]
        while self._windows_active():
            assert self.windows is not None
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
            await self._window_hold(RolloutState.WAITING, start, why, "window_wait",
                                    wave=step.wave, need_s=need)

    async def _window_hold(self, state: RolloutState, until: datetime | None, why: str,
                           event: str, **data: Any) -> None:
        from .core import _Interrupted

        assert self.windows is not None
        before = (self.state, self.state_reason)   # type: ignore[attr-defined]
        if until is None:
            reason = f"{why}; no opening within {HORIZON.days} days"
        else:
            reason = f"{why}; resumes at {self.windows.describe_time(until)}"
        self._window_held = True
        self._window_wake.clear()
        await self._emit(event, reason=reason,   # type: ignore[attr-defined]
                         until=until.isoformat() if until else None,
                         teams=[t.name for t in self.windows.on_duty(until)] if until else [],
                         **data)
        await self._set_state(state, reason)   # type: ignore[attr-defined]
        interrupt: asyncio.Event = self._interrupt   # type: ignore[attr-defined]
        try:
            while self._windows_active() and not interrupt.is_set():
                remaining = None
                if until is not None:
                    remaining = until.timestamp() - self.clock.wall()  # type: ignore[attr-defined]
                    if remaining <= 0:
                        break
                await self._sleep_or_wake(remaining, interrupt)
        finally:
            self._window_held = False
        if interrupt.is_set():
            raise _Interrupted
        now = self._now_utc()
        await self._emit("window_opened",   # type: ignore[attr-defined]
                         teams=[t.name for t in self.windows.on_duty(now)],
                         overridden=self.override_window_reason is not None)
        await self._set_state(*before)   # type: ignore[attr-defined]

    async def _sleep_or_wake(self, seconds: float | None, interrupt: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(interrupt.wait()),
                   asyncio.ensure_future(self._window_wake.wait())]
        if seconds is not None:
            waiters.append(asyncio.ensure_future(
                self.clock.sleep(seconds)))   # type: ignore[attr-defined]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
