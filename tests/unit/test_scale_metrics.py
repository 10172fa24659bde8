"""Metrics at a bounded cost (issue 17): per-pool figures always, per-host figures only for
the hosts that changed lately or that a front end watches; the event history keeps per-host
figures for a bounded window; the monitor reads the balancer's summaries, not a copy of the
whole balancer each interval. Virtual time; counts, never timings."""

from __future__ import annotations

import asyncio
import dataclasses

from upgrader import strategies
from upgrader.clock import LoopClock, run_virtual
from upgrader.engine.bus import EventBus
from upgrader.engine.core import Engine, Providers
from upgrader.events import Outcome
from upgrader.model import StrategySpec, Timing, VerifySpec
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport

HOSTS = 121          # more than a "small fleet" (whose every host has figures)
PAUSE_S = 1800.0     # what a real-time canary reaches after half an hour


class _Where:
    def error(self, key, message):
        raise AssertionError(f"{key}: {message}")


class CountingBalancer(NoopBalancer):
    """Counts the reads of the whole balancer (``state()``, ``stats()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.full_reads = 0

    async def state(self):
        self.full_reads += 1
        return await super().state()

    async def stats(self):
        self.full_reads += 1
        return await super().stats()


def paused_canary(fleet_factory):
    fleet = fleet_factory(HOSTS)
    table = {"steps": [{"hosts": 1, "pause": f"{PAUSE_S:g}s"}, {"hosts": "100%"}]}
    params = strategies.get("canary").parse_params(table, _Where())
    return dataclasses.replace(
        fleet, strategy=StrategySpec("canary", params, on_failure="freeze"),
        verify=VerifySpec(for_=30.0, interval=10.0, no_data="pass"),
        timing=Timing(health_timeout=20.0, drain_timeout=10.0))


def run_paused(fleet, watch=()):
    """Run the canary with ``metrics`` every second and users on both releases; returns
    the engine at the end of the pause, the metrics events seen during it, and how many
    times the balancer was read whole during it."""
    seen = {}

    async def main():
        balancer = CountingBalancer()
        for host in fleet.main_hosts:
            await balancer.set_backend(host.name, address=host.address, port=host.port,
                                       pool=fleet.releases.current)
        plan = strategies.get("canary").compile(fleet, fleet.strategy.params)
        engine = Engine(fleet, plan, Providers(NoopTransport(), balancer, NoopHealthCheck()),
                        clock=LoopClock(), metrics_interval=1.0)
        metrics = []
        engine.subscribe(lambda e: metrics.append(e) if e.kind == "metrics" and
                         engine.state.value == "WAITING" else None)
        first, other = fleet.main_hosts[0].name, fleet.main_hosts[-1].name

        async def users():
            while True:
                await asyncio.sleep(1.0)
                balancer.record(first, requests=5, latencies=[0.004] * 5)
                balancer.record(other, requests=20, latencies=[0.004] * 20)

        async def watcher():
            while engine.state.value != "WAITING":
                await asyncio.sleep(1.0)
            if watch and hasattr(engine, "watch_hosts"):     # (bd21cc4 has none)
                engine.watch_hosts(watch)
            start = balancer.full_reads
            await asyncio.sleep(PAUSE_S - 60.0)
            seen["full_reads"] = balancer.full_reads - start
            seen["history"] = list(engine.history)
            seen["metrics"] = list(metrics)
            engine.abort(rollback=False)

        feed = asyncio.ensure_future(users())
        watching = asyncio.ensure_future(watcher())
        try:
            result = await engine.run()
        finally:
            feed.cancel()
            watching.cancel()
        return result

    result = run_virtual(main)
    assert result.outcome is Outcome.FROZEN
    return seen


def test_per_host_figures_only_for_watched_hosts_and_pools_always(fleet_factory):
    fleet = paused_canary(fleet_factory)
    watched = [fleet.main_hosts[i].name for i in (0, 5, 70)]
    seen = run_paused(fleet, watch=watched)
    metrics = seen["metrics"]
    assert len(metrics) > 1500                          # one a second
    late = metrics[100:]                                # the canary host's change is over
    assert all(set(m.data["pools"]) == {"1.0.0", "1.1.0"} for m in late)
    assert all(set(m.data["hosts"]) == set(watched) for m in late)
    assert all(m.data["hosts_partial"] for m in late)
    last = late[-1].data
    assert last["hosts"][watched[0]]["rps"] == 5.0      # a watched host's own figures
    assert last["pools"]["1.0.0"]["rps"] == 20.0


def test_history_keeps_per_host_figures_for_a_bounded_window(fleet_factory):
    """Half an hour of a pause, a reading a second: the 2,000-event history is mostly
    readings; per-host figures stay in the latest 60 of them, whatever the fleet's size."""
    fleet = paused_canary(fleet_factory)
    watched = [h.name for h in fleet.main_hosts[:40]]
    seen = run_paused(fleet, watch=watched)
    history = seen["history"]
    readings = [e for e in history if e.kind == "metrics"]
    assert len(history) == 2000 and len(readings) > 1600     # and the verdicts
    with_hosts = [e for e in readings if e.data["hosts"]]
    assert len(with_hosts) == 60
    assert with_hosts == readings[-60:]
    figures = sum(len(e.data["hosts"]) for e in history if e.kind == "metrics")
    assert figures <= 60 * len(watched)
    # older readings keep their pools and say what went
    assert readings[0].data["pools"] and readings[0].data["hosts_dropped"] == len(watched)
    # the readings in the history still follow each other by number
    seqs = [e.seq for e in history]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_readings_use_the_balancers_summaries_not_a_full_copy(fleet_factory):
    """A balancer with pool_stats() and backend_stats() is never read whole while nothing
    changes, however many readings and analysis rounds."""
    fleet = paused_canary(fleet_factory)
    seen = run_paused(fleet, watch=[fleet.main_hosts[3].name])
    assert len(seen["metrics"]) > 1500
    assert seen["full_reads"] == 0


def test_bus_strips_host_figures_from_older_readings_only():
    async def main():
        bus = EventBus(LoopClock(), None, (), history=500)
        for i in range(100):
            await bus.emit("metrics", interval_s=1.0, pools={"p": {"rps": i}},
                           hosts={"a": {"rps": i}, "b": {"rps": 0}})
            await bus.emit("log", level="info", message=f"line {i}")
        return bus

    bus = run_virtual(main)
    readings = [e for e in bus.history if e.kind == "metrics"]
    assert len(readings) == 100
    assert [bool(e.data["hosts"]) for e in readings] == [False] * 40 + [True] * 60
    assert all(e.data["hosts_dropped"] == 2 for e in readings[:40])
    assert [e.data["pools"]["p"]["rps"] for e in readings] == list(range(100))


def test_one_counter_figures_are_the_general_figures():
    import random

    from upgrader.engine.analysis import counter_figures, traffic_figures
    from upgrader.providers.base import LATENCY_BUCKETS, BackendStats

    rng = random.Random(17)
    for _ in range(200):
        before = BackendStats(rng.randint(0, 50), 0,
                              tuple(rng.randint(0, 5) for _ in LATENCY_BUCKETS))
        grown = tuple(b + rng.randint(0, 5) for b in before.latency_buckets)
        now = BackendStats(before.requests + sum(grown) - sum(before.latency_buckets),
                           rng.randint(0, 3), grown)
        if rng.random() < 0.2:                          # a reset backend
            now = BackendStats(rng.randint(0, 5), 0, tuple(0 for _ in LATENCY_BUCKETS))
        seconds = rng.choice([0.0, 1.0, 2.5])
        assert counter_figures(before, now, seconds) == \
            traffic_figures({"x": before}, {"x": now}, ["x"], seconds)
        assert counter_figures(None, now, seconds) == traffic_figures({}, {"x": now}, ["x"],
                                                                      seconds)


def test_figure_scope_changed_lately_watched_and_bounded():
    from upgrader.engine.sampling import FigureScope

    scope = FigureScope(limit=4, recent=3.0)
    scope.changed("a", 10.0)
    scope.changed("b", 11.0)
    assert set(scope.backends(12.0)) == {"a", "b"}
    assert scope.backends(13.5) == ["b"]            # a changed 3.5 s ago: dropped
    assert scope.backends(20.0) == []
    scope.watch(["w1", "w2", "w3"])
    for name in "cdefgh":
        scope.changed(name, 30.0)
    wanted = scope.backends(30.0)
    assert len(wanted) == 4 and wanted[:3] == ["w1", "w2", "w3"]   # watched first, bounded
