"""What taking the fleet lock costs at the start of a rollout (docs/STATE.md): the median of
five acquire + release rounds of each lock kind, for the fleet file given (a running lab:
`upgrader lab up --hosts 8`, and a fleet file with its `[lab]` table).

    .venv/bin/python bench/fleet_lock.py FLEET.toml [postgresql://...]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from upgrader.config import load_fleet
from upgrader.fleetlock import BalancerKeeper, FleetLock, HostFileKeeper
from upgrader.journal import FleetLock as LocalFlock
from upgrader.plugins import Plugins
from upgrader.providers.base import FleetLockHolder
from upgrader.rollout import open_providers

ROUNDS = 5


async def median_ms(acquire: Callable[[], Awaitable[Any]],
                    release: Callable[[], Awaitable[Any]]) -> float:
    took = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        await acquire()
        took.append(time.perf_counter() - start)
        await release()
    return 1000 * statistics.median(took)


async def fleet_lock_ms(name: str, make: Callable[[], FleetLock]) -> None:
    locks: list[FleetLock] = []

    async def acquire() -> None:
        locks.append(make())
        await locks[-1].acquire()

    async def release() -> None:
        await locks.pop().release()

    print(f"{name}: {await median_ms(acquire, release):.1f} ms")


async def main(path: str, postgres: str | None) -> None:
    plugins = Plugins()
    fleet = load_fleet(path, registry=plugins)
    providers = await open_providers(fleet, plugins, None)
    try:
        if isinstance(providers.balancer, FleetLockHolder):
            await fleet_lock_ms("balancer /admin/lock", lambda: FleetLock(
                fleet.name, BalancerKeeper(providers.balancer)))  # type: ignore[arg-type]
        await fleet_lock_ms(f"host lock files, {len(fleet.hosts)} hosts", lambda: FleetLock(
            fleet.name, HostFileKeeper(providers.transport, fleet.hosts)))
    finally:
        await providers.aclose()
    flock = LocalFlock(tempfile.mkdtemp(), fleet.name)

    async def take_flock() -> None:
        flock.acquire()

    async def drop_flock() -> None:
        flock.release()

    print(f"local flock: {await median_ms(take_flock, drop_flock):.2f} ms")
    if postgres:
        from upgrader.journal_postgres import PostgresFleetLock

        pg = PostgresFleetLock(postgres, fleet.name)
        print(f"PostgreSQL advisory lock + row: "
              f"{await median_ms(lambda: asyncio.to_thread(pg.acquire), lambda: asyncio.to_thread(pg.release)):.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
