"""Time, injected. The engine never calls ``time`` or ``asyncio.sleep`` directly.

- :class:`SystemClock`: real time.
- :func:`run_virtual`: runs a coroutine on an event loop whose time is virtual: whenever the
  loop would wait for a timer, time jumps to it at once. Every ``asyncio.sleep`` and
  ``asyncio.wait_for`` inside runs in virtual time, so a week-long canary plays in milliseconds.
  Use it with providers that do no real I/O (the no-op providers). Work handed to a thread
  (``asyncio.to_thread``, ``run_in_executor``: a SQLite journal, a schema switch) takes no
  virtual time: while any is pending the clock stands still and the loop waits for it for
  real, so a slow thread can never let timers fire early.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a monotonic scale (engine time)."""

    def wall(self) -> float:
        """Unix time (for journals, events and deploy windows)."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class LoopClock:
    """The clock of the running event loop (virtual under :func:`run_virtual`)."""

    def __init__(self, wall_origin: float = 1_800_000_000.0) -> None:
        self._wall_origin = wall_origin

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return self._wall_origin + asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, loop_ref: Callable[[], VirtualTimeLoop]) -> None:
        super().__init__()
        self._loop_ref = loop_ref

    def select(self, timeout: float | None = None) -> Any:
        loop = self._loop_ref()
        if loop._in_threads and timeout != 0:
            # a thread is working for the loop: wait for its wake-up for real, time stands
            return super().select(_THREAD_POLL_S)
        events = super().select(0)
        if not events and timeout is not None and timeout > 0:
            loop._virtual_now += timeout
        return events


#: real seconds a virtual loop waits at a time for work it handed to a thread
_THREAD_POLL_S = 0.05


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock advances instantly to the next timer when idle (and stands
    still while a thread works for it)."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        self._in_threads = 0
        super().__init__(selector=_VirtualSelector(lambda: self))

    def time(self) -> float:
        return self._virtual_now

    def run_in_executor(  # type: ignore[override]  # typeshed's TypeVarTuple signature; same call
            self, executor: Any, func: Callable[..., Any], *args: Any) -> Any:
        future = super().run_in_executor(executor, func, *args)
        self._in_threads += 1

        def done(_: Any) -> None:
            self._in_threads -= 1

        future.add_done_callback(done)
        return future


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` to completion in virtual time and return its result."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
