"""TUI under load: a fake handle floods the app (run headless with the Pilot) with events of a
10,000-host fleet, and we measure how long an event takes to reach the screen.

- background load: ``host_phase`` / ``host_done`` events for random hosts at a fixed rate, and
  a ``metrics`` event ten times a second carrying figures for EVERY host (worse than the
  engine, which sends per-host figures only up to 2,000 backends);
- probes: twenty times a second, a ``host_phase`` for a host on screen, stamped when emitted;
  latency = until the fleet table paints that host's line showing the new phase. Each second,
  a ``state`` event; latency = until the header shows it;
- keys: ``down``/``up`` every half second; latency = until the press is handled and the
  cursor's line repainted;
- peak RSS of the process (a fresh one per rate) and CPU share.

    .venv/bin/python bench/tui.py [--hosts 10000] [--rates 0 2000 10000 50000] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

SIZE = (140, 45)
#: the first hosts of the table (on screen) carry the probes; the flood spares them
PROBED = 25
PHASES = ("draining", "stopping", "installing", "starting", "checking", "enabling")


class FakeHandle:
    """A RolloutHandle whose events the bench makes up."""

    def __init__(self, snapshot: dict[str, Any], history: list[Any]) -> None:
        self._snapshot = snapshot
        self.history = history
        self.subscribers: list[Callable[[Any], None]] = []
        self.seq = len(history)

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot

    def subscribe(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def emit(self, kind: str, **data: Any) -> None:
        from upgrader.events import Event

        self.seq += 1
        event = Event(kind, time.time(), "r-bench", self.seq, data)
        # the snapshot follows the events, as the engine's does (a new dict per change)
        hosts = self._snapshot["hosts"]
        if kind == "host_phase":
            hosts[data["host"]] = {**hosts[data["host"]], "phase": data["phase"]}
        elif kind == "host_done":
            hosts[data["host"]] = {**hosts[data["host"]], "phase": "in_service",
                                   "release": data["release"]}
        elif kind == "state":
            self._snapshot["state"], self._snapshot["reason"] = data["state"], data["reason"]
        for callback in self.subscribers:
            callback(event)

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def promote(self) -> None: ...
    def promote_all(self) -> None: ...
    def abort(self, rollback: bool = True) -> None: ...


def make_handle(hosts: int) -> FakeHandle:
    from upgrader import strategies
    from upgrader.engine.core import Engine, Providers
    from upgrader.events import Event
    from upgrader.model import (
        Commands,
        Fleet,
        Host,
        ProviderSpec,
        Releases,
        StrategySpec,
        Timing,
        VerifySpec,
    )
    from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport

    fleet = Fleet(
        name="bench",
        hosts=tuple(Host(name=f"web-{i:05d}", port=8000) for i in range(1, hosts + 1)),
        releases=Releases("1.0.0", "1.1.0"),
        commands=Commands(install=("install", "{release}"), start=("start",), stop=("stop",)),
        transport=ProviderSpec("noop"), balancer=ProviderSpec("noop"),
        health=ProviderSpec("noop"),
        strategy=StrategySpec("canary", strategies.get("canary").default_params()),
        verify=VerifySpec(), timing=Timing())
    plan = strategies.get("canary").compile(fleet, fleet.strategy.params)
    snap = Engine(fleet, plan, Providers(NoopTransport(), NoopBalancer(),
                                         NoopHealthCheck())).snapshot()
    snap.update(rollout="r-bench", state="RUNNING", step=0)
    started = Event("rollout_started", time.time(), "r-bench", 1, {
        "fleet": "bench", "strategy": "canary", "current": "1.0.0", "target": "1.1.0",
        "hosts": hosts, "estimated_s": snap["estimated_s"],
        "rollback_estimated_s": snap["rollback_estimated_s"], "resumed": False})
    return FakeHandle(snap, [started])


def one_run(hosts: int, rate: int, seconds: float) -> dict[str, Any]:
    """In a child process: the app on a fake handle, flooded at ``rate`` host events/s."""
    from upgrader.tui import make_app
    from upgrader.tui.widgets import FleetTable, RolloutHeader

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    handle = make_handle(hosts)
    app = make_app(handle)
    names = [f"web-{i:05d}" for i in range(1, hosts + 1)]
    row_waits: dict[str, tuple[str, float]] = {}     # host -> (phase, emitted at)
    row_latency: list[float] = []
    state_waits: dict[str, float] = {}
    state_latency: list[float] = []
    key_latency: list[float] = []
    key_wait: list[Any] = []                         # [cursor row wanted, pressed at]

    render_line = FleetTable.render_line

    def timed_render_line(self: FleetTable, y: int) -> Any:
        strip = render_line(self, y)
        if (row_waits or key_wait) and y > 0 and self._view is not None:
            index = int(self.scroll_offset.y) + y - 1
            if key_wait and index == self.cursor_row == key_wait[0]:
                key_latency.append(time.perf_counter() - key_wait[1])
                key_wait.clear()
            if index < len(self._view.order):
                name = self._view.order[index]
                wait = row_waits.get(name)
                if wait is not None and self._view.hosts[name].phase == wait[0]:
                    row_latency.append(time.perf_counter() - wait[1])
                    del row_waits[name]
        return strip

    FleetTable.render_line = timed_render_line  # type: ignore[method-assign]
    show = RolloutHeader.show

    def timed_show(self: RolloutHeader, view: Any) -> None:
        show(self, view)
        at = state_waits.pop(self.state_shown, None)
        if at is not None:
            state_latency.append(time.perf_counter() - at)

    RolloutHeader.show = timed_show  # type: ignore[method-assign]

    # metrics with figures for every host: a few prepared variants, reused
    variants = []
    for v in range(4):
        figures = {n: {"requests": 100 + v, "rps": 10.0 + v, "error_rate": 0.1 * v,
                       "p95": 0.02} for n in names}
        variants.append({"interval_s": 0.1, "hosts": figures, "pools": {
            "1.0.0": {"requests": 1000, "rps": 9000.0 - v, "error_rate": 0.1, "p95": 0.02},
            "1.1.0": {"requests": 100, "rps": 1000.0 + v, "error_rate": 0.2, "p95": 0.025}}})

    emitted = 0

    async def flood() -> None:
        nonlocal emitted
        rng = random.Random(1)
        tick = 0.01
        per_tick = rate * tick
        owed = 0.0
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        n = 0
        while True:
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            owed += per_tick
            while owed >= 1:
                owed -= 1
                # never a probed host: a flood event would overwrite the probe's phase
                name = names[rng.randrange(PROBED, hosts)]
                if rng.random() < 0.15:
                    handle.emit("host_done", host=name, release="1.1.0", slot=None,
                                mode="upgrade")
                else:
                    handle.emit("host_phase", host=name, phase=rng.choice(PHASES),
                                release="1.1.0", slot=None, mode="upgrade")
                emitted += 1
            n += 1
            if n % 10 == 0:
                handle.emit("metrics", **variants[(n // 10) % 4])
                emitted += 1

    async def probe_rows() -> None:
        i = 0
        while True:
            await asyncio.sleep(0.05)
            i += 1
            name = names[i % PROBED]              # always on screen
            if name in row_waits:
                continue
            phase = PHASES[i % len(PHASES)]
            row_waits[name] = (phase, time.perf_counter())
            handle.emit("host_phase", host=name, phase=phase, release="1.1.0", slot=None,
                        mode="upgrade")

    async def probe_states() -> None:
        states = ("VERIFYING", "WAITING", "RUNNING")
        i = 0
        while True:
            await asyncio.sleep(1.0)
            state = states[i % 3]
            i += 1
            state_waits[state] = time.perf_counter()
            handle.emit("state", state=state, reason=f"probe {i}")

    async def main() -> dict[str, Any]:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.5)
            table = app.screen.query_one(FleetTable)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            tasks = [asyncio.create_task(c()) for c in (flood, probe_rows, probe_states)]
            presses = 0
            while time.perf_counter() - wall0 < seconds:
                await asyncio.sleep(0.5)
                key = "down" if presses % 8 < 4 else "up"
                key_wait[:] = [table.cursor_row + (1 if key == "down" else -1),
                               time.perf_counter()]
                await pilot.press(key)
                presses += 1
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            for task in tasks:
                task.cancel()
            return {"wall": wall, "cpu": cpu}

    timing = asyncio.run(main())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def stats(values: list[float]) -> dict[str, float | int | None]:
        if not values:
            return {"n": 0, "median_ms": None, "p95_ms": None, "max_ms": None}
        ordered = sorted(values)
        return {"n": len(values), "median_ms": 1000 * statistics.median(ordered),
                "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
                "max_ms": 1000 * ordered[-1]}

    return {"hosts": hosts, "rate": rate, "events_per_s": emitted / timing["wall"],
            "cpu_share": timing["cpu"] / timing["wall"], "row": stats(row_latency),
            "state": stats(state_latency), "key": stats(key_latency),
            "rss_before_mb": rss_before, "peak_mb": peak,
            "received": app.feed.received}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--rates", type=int, nargs="+", default=[0, 2_000, 10_000, 50_000])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--child", nargs=3, type=float, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    args = parser.parse_args()
    if args.child:
        hosts, rate, seconds = args.child
        print(json.dumps(one_run(int(hosts), int(rate), seconds)))
        return
    rows = []
    for rate in args.rates:
        done = subprocess.run([sys.executable, __file__, "--child", str(args.hosts), str(rate),
                               str(args.seconds)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if args.json:
            print(json.dumps(rows[-1]))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {args.hosts:,} hosts, {SIZE[0]}x{SIZE[1]}, "
          f"{args.seconds:g} s per rate")

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print(f"{'load ev/s':>10} {'sent ev/s':>10} {'cpu %':>6} | {'row med':>8} {'row p95':>8} "
          f"{'row max':>8} {'n':>4} | {'state med':>9} {'state p95':>9} | {'key med':>8} "
          f"{'key p95':>8} | {'RSS MB':>7} {'peak MB':>8}")
    for row in rows:
        print(f"{row['rate']:>10,} {row['events_per_s']:>10,.0f} {100 * row['cpu_share']:>6.0f} | "
              f"{ms(row['row']['median_ms']):>8} {ms(row['row']['p95_ms']):>8} "
              f"{ms(row['row']['max_ms']):>8} {row['row']['n']:>4} | "
              f"{ms(row['state']['median_ms']):>9} {ms(row['state']['p95_ms']):>9} | "
              f"{ms(row['key']['median_ms']):>8} {ms(row['key']['p95_ms']):>8} | "
              f"{row['rss_before_mb']:>7.0f} {row['peak_mb']:>8.0f}")
    print("latencies in ms: row = host event -> its line painted in the fleet table; state = "
          "state event -> header; key = key press -> cursor line repainted. RSS MB: before the "
          "app; peak MB: whole process. Metrics carry per-host figures for every host, 10/s.")


if __name__ == "__main__":
    main()
