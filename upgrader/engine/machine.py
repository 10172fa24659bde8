"""The rollout's state machine and the operator's controls, as the engine's parts see them.

:class:`StateMachine` holds the rollout's :class:`~upgrader.events.RolloutState` (announced as a
``state`` event on each change), the controls a front end sets from any task (paused, skip the
current wait, promote all, abort) and the first failure. Parts stop cooperatively: they wait
with :meth:`StateMachine.wait` and raise :class:`Interrupted` when :attr:`interrupted`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..clock import Clock
from ..events import RolloutState
from .bus import EventBus

#: the states an operator's pause holds (and returns to on resume)
ACTIVE = (RolloutState.RUNNING, RolloutState.WAITING, RolloutState.VERIFYING)
#: an operator's pause: the reason while it is asked for, and once it holds
PAUSING_REASON = "pause requested: holds at the next step boundary"
PAUSED_REASON = "paused by operator"


class Interrupted(Exception):
    """The forward run stopped cooperatively (failure or abort)."""


class StateMachine:
    def __init__(self, bus: EventBus, clock: Clock) -> None:
        self.bus = bus
        self.clock = clock
        self.state = RolloutState.PENDING
        self.reason = ""
        #: set while the rollout may go on (cleared by a pause)
        self.running = asyncio.Event()
        self.running.set()
        #: set when the forward run must stop (a failure or an abort)
        self.interrupt = asyncio.Event()
        #: set to end the current pause or verification hold early
        self.skip = asyncio.Event()
        #: skip every remaining pause and analysis
        self.promote_all = False
        #: None until aborted; then whether to roll back
        self.abort_rollback: bool | None = None
        #: the first failure's reason, and the host it names
        self.failure: str | None = None
        self.failed_host: str | None = None
        #: the state a pause interrupted (restored on resume)
        self.before_pause: tuple[RolloutState, str] | None = None
        #: when the current skippable wait ends (for front ends)
        self.wait_deadline: float | None = None
        #: set from an operator's pause until resumed: a timed pause or hold stops counting
        self.pause_requested = asyncio.Event()
        #: seconds left of a timed pause or hold that an operator's pause froze (None: none)
        self.wait_frozen: float | None = None

    @property
    def interrupted(self) -> bool:
        return self.interrupt.is_set()

    def raise_if_interrupted(self) -> None:
        if self.interrupt.is_set():
            raise Interrupted

    async def set_state(self, state: RolloutState, reason: str = "") -> None:
        """Enter ``state`` (announced once per change); an operator's pause holds instead."""
        if (self.before_pause is not None and not self.running.is_set()
                and state in ACTIVE):
            # paused by the operator: stay PAUSED, and return to this state on resume
            self.before_pause = (state, reason)
            return
        if state != self.state or reason != self.reason:
            self.state, self.reason = state, reason
            await self.bus.emit("state", state=state.value, reason=reason)

    def set_state_now(self, state: RolloutState, reason: str) -> None:
        """Change the state at once (controls run outside the engine's task); announce it."""
        self.state, self.reason = state, reason
        self.bus.spawn(self.bus.emit("state", state=state.value, reason=reason))

    def fail(self, reason: str, host: str | None = None) -> None:
        """Record the first failure and stop the forward run."""
        if self.failure is None:
            self.failure = reason
            self.failed_host = host
        self.interrupt.set()
        # an operator's pause must not hold back the failure policy
        self.before_pause = None
        self.pause_requested.clear()
        self.running.set()

    def accept_failure(self) -> None:
        """The operator resumed after a failure: forget it and go on."""
        self.failure = None
        self.failed_host = None
        self.interrupt.clear()

    async def pause_step(self, index: int, planned: float | None,
                         duration: float | None) -> None:
        """Plan step ``index``: wait ``duration`` seconds (None: until promoted) of a pause
        planned as ``planned``."""
        if self.promote_all:
            return
        self.skip.clear()
        reason = "until promoted" if duration is None else f"pause {duration:g}s"
        await self.set_state(RolloutState.WAITING, reason)
        await self.bus.emit("pause_started", index=index, duration=planned)
        await self.wait(duration, skippable=True)
        self.raise_if_interrupted()
        await self.set_state(RolloutState.RUNNING)

    async def hold_paused(self) -> None:
        """At a step boundary: if an operator asked for a pause, hold (PAUSED) until resumed."""
        if self.running.is_set():
            return
        if self.state is RolloutState.PAUSING:
            await self.set_state(RolloutState.PAUSED, PAUSED_REASON)
        await self.running.wait()

    async def wait(self, seconds: float | None, *, skippable: bool) -> bool:
        """Wait up to ``seconds`` (None: forever). True if skipped or interrupted early.

        A skippable wait (a timed pause, a verification hold) is a step boundary: an
        operator's pause holds it at once (PAUSED) and freezes what is left of it until
        resumed."""
        left = seconds
        while True:
            # futures of different result types, only ever awaited for completion
            waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.interrupt.wait())]
            paused: asyncio.Future[Any] | None = None
            if skippable:
                waiters.append(asyncio.ensure_future(self.skip.wait()))
                paused = asyncio.ensure_future(self.pause_requested.wait())
                waiters.append(paused)
            sleeper = asyncio.ensure_future(self.clock.sleep(left)) if left is not None else None
            if sleeper is not None:
                waiters.append(sleeper)
            started = self.clock.monotonic()
            if skippable and left is not None:
                self.wait_deadline = started + left
            try:
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if skippable:
                    self.wait_deadline = None
                for waiter in waiters:
                    waiter.cancel()
            if sleeper is not None and sleeper in done:
                return False
            if paused is None or paused not in done or self.interrupted or self.skip.is_set():
                return True
            # an operator's pause: freeze the countdown until resumed
            if left is not None:
                left = max(0.0, left - (self.clock.monotonic() - started))
            self.wait_frozen = left
            try:
                await self.hold_paused()
            finally:
                self.wait_frozen = None
