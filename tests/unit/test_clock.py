"""Virtual time: timers jump, threads do not let them."""

from __future__ import annotations

import asyncio
import time

from upgrader.clock import LoopClock, run_virtual


def test_a_week_of_sleeps_takes_no_real_time() -> None:
    async def main() -> float:
        clock = LoopClock()
        start = clock.monotonic()
        for _ in range(7):
            await clock.sleep(86400)
        return clock.monotonic() - start

    began = time.monotonic()
    assert run_virtual(main) == 7 * 86400
    assert time.monotonic() - began < 5


def test_virtual_time_stands_still_while_a_thread_works() -> None:
    """A journal write or a schema change runs in a thread; while it does, a timer due in
    virtual time must not fire (it used to: the idle loop jumped to it)."""

    async def main() -> tuple[list[str], float, list[str]]:
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        loop.call_later(10, fired.append, "timer")
        start = loop.time()
        await asyncio.to_thread(time.sleep, 0.2)
        seen = list(fired)
        elapsed = loop.time() - start
        await asyncio.sleep(11)
        return seen, elapsed, fired

    seen, elapsed, fired = run_virtual(main)
    assert seen == [] and elapsed == 0.0
    assert fired == ["timer"]
