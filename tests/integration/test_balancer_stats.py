"""The built-in balancer's summaries (issue 17): counters per pool, credited to the pool that
served each request, and the counters of a few named backends, through the admin API of a real
balancer process and its client; and the engine's monitor reading them instead of the whole
balancer each interval. Counts, never timings."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_balancer import TOKEN, BackendFarm, BalancerProcess, traffic
from tests.unit.conftest import make_fleet
from upgrader import strategies
from upgrader.clock import LoopClock
from upgrader.engine.core import Engine, Providers
from upgrader.errors import BalancerError
from upgrader.events import Outcome
from upgrader.model import StrategySpec, Timing, VerifySpec
from upgrader.providers.base import (
    BackendStats,
    BackendStatsReader,
    PoolStatsReader,
)
from upgrader.providers.builtin_balancer import MAX_QUERY_CHARS, BuiltinBalancer
from upgrader.providers.noop import NoopHealthCheck, NoopTransport

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def farm() -> Iterator[BackendFarm]:
    farm = BackendFarm()
    yield farm
    farm.close()


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    process = BalancerProcess(tmp_path_factory.mktemp("balancer-stats"))
    yield process
    process.kill()


@pytest.fixture
def balancer(lb: BalancerProcess) -> BalancerProcess:
    lb.reset()
    return lb


def served(results: list[tuple[int, str | None]]) -> Counter[str | None]:
    assert all(status == 200 for status, _ in results), Counter(s for s, _ in results)
    return Counter(name for _, name in results)


def test_the_client_has_both_summaries() -> None:
    client = BuiltinBalancer("http://127.0.0.1:1", TOKEN)
    assert isinstance(client, PoolStatsReader)
    assert isinstance(client, BackendStatsReader)


def test_pool_counters_are_credited_to_the_pool_that_served(
        balancer: BalancerProcess, farm: BackendFarm) -> None:
    a, b = farm.start("a"), farm.start("b")
    balancer.add("a", a, pool="old")
    balancer.add("b", b, pool="new", weight=0)          # in "new", serving nothing yet
    assert served(asyncio.run(traffic(balancer.url, 30))) == {"a": 30}
    assert [status for status, _ in
            asyncio.run(traffic(balancer.url, 4, path="/?status=503"))] == [503] * 4

    status, answer = balancer.admin("GET", "/admin/stats?by=pool")
    assert status == 200
    assert set(answer) == {"pools", "latency_bounds"}
    assert answer["pools"]["old"]["requests"] == 34
    assert answer["pools"]["old"]["errors"] == 4
    assert sum(answer["pools"]["old"]["latency_buckets"]) == 34
    assert answer["pools"]["new"] == {"requests": 0, "errors": 0,
                                      "latency_buckets": [0] * len(answer["latency_bounds"])}

    # "a" moves to "new": its history stays with "old", what it serves now goes to "new"
    assert balancer.admin("POST", "/admin/backends/a/state",
                          {"state": "ready", "pool": "new"})[0] == 200
    assert served(asyncio.run(traffic(balancer.url, 10))) == {"a": 10}
    pools = balancer.admin("GET", "/admin/stats?by=pool")[1]["pools"]
    assert pools["old"]["requests"] == 34 and pools["old"]["errors"] == 4
    assert pools["new"]["requests"] == 10 and pools["new"]["errors"] == 0
    # the backend's own counters go on across the move (the whole answer is unchanged)
    full = balancer.stats()
    assert full["backends"]["a"]["requests"] == 44
    assert set(full) == {"backends", "latency_bounds", "maintenance_responses", "no_backend",
                         "fallbacks", "retries"}

    # the client reads the same, as BackendStats
    async def read() -> Any:
        async with BuiltinBalancer(balancer.admin_url, TOKEN) as client:
            return await client.pool_stats()

    by_pool = asyncio.run(read())
    assert by_pool["old"].requests == 34 and by_pool["old"].errors == 4
    assert by_pool["new"] == BackendStats(10, 0, tuple(pools["new"]["latency_buckets"]))


def test_backend_stats_of_a_subset_leaves_unknown_names_out(
        balancer: BalancerProcess, farm: BackendFarm) -> None:
    backends = {name: farm.start(name) for name in ("s1", "s2", "s3")}
    for name, backend in backends.items():
        balancer.add(name, backend)
    served(asyncio.run(traffic(balancer.url, 60)))
    full = balancer.stats()["backends"]

    status, answer = balancer.admin("GET", "/admin/stats?backend=s1&backend=s3&backend=ghost")
    assert status == 200
    assert set(answer["backends"]) == {"s1", "s3"}
    assert answer["backends"]["s1"] == full["s1"] and answer["backends"]["s3"] == full["s3"]
    status, answer = balancer.admin("POST", "/admin/stats", {"backends": ["s2", "ghost"]})
    assert status == 200 and answer["backends"] == {"s2": full["s2"]}

    async def read(names: list[str]) -> Any:
        async with BuiltinBalancer(balancer.admin_url, TOKEN) as client:
            return await client.backend_stats(names)

    some = asyncio.run(read(["s2", "ghost", "s3"]))
    assert set(some) == {"s2", "s3"}
    assert some["s2"] == BackendStats(full["s2"]["requests"], full["s2"]["errors"],
                                      tuple(full["s2"]["latency_buckets"]))
    assert asyncio.run(read([])) == {}
    # more names than a query string holds go in a POST's body, with the same answer
    many = [f"missing-{i:05d}" for i in range(MAX_QUERY_CHARS // 10)] + ["s1"]
    assert set(asyncio.run(read(many))) == {"s1"}


@pytest.mark.parametrize("method, path, body, message", [
    ("GET", "/admin/stats?by=backend", None, "by must be 'pool'"),
    ("GET", "/admin/stats?by=pool&by=pool", None, "by must be 'pool' (once)"),
    ("GET", "/admin/stats?by=pool&backend=a", None, "cannot be combined"),
    ("GET", "/admin/stats?backend=", None, "non-empty backend names"),
    ("GET", "/admin/stats?pool=old", None, "unknown key(s) in the query: pool"),
    ("POST", "/admin/stats", {"backends": "s1"}, "backends must be a list"),
    ("POST", "/admin/stats", {"backends": ["s1", 3]}, "got 3 at position 1"),
    ("POST", "/admin/stats", {"names": []}, "unknown key(s) in body: names"),
])
def test_bad_stats_parameters_are_400(balancer: BalancerProcess, method: str, path: str,
                                      body: Any, message: str) -> None:
    status, answer = balancer.admin(method, path, body)
    assert status == 400, answer
    assert message in answer["error"]


def test_the_summaries_need_the_token(balancer: BalancerProcess) -> None:
    assert balancer.admin("GET", "/admin/stats?by=pool", token="wrong")[0] == 401
    assert balancer.admin("GET", "/admin/stats?backend=a", token=None)[0] == 401
    assert balancer.admin("POST", "/admin/stats", {"backends": ["a"]}, token="wrong")[0] == 401

    async def read() -> None:
        async with BuiltinBalancer(balancer.admin_url, "wrong") as client:
            await client.pool_stats()

    with pytest.raises(BalancerError, match="HTTP 401"):
        asyncio.run(read())


# --------------------------------------------------------------------------------------------
# The engine's monitor, driving the real balancer


class CountingClient(BuiltinBalancer):
    """The real client, counting its admin requests by method and path (and query)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()

    async def _call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        params = kwargs.get("params")
        keys = sorted({k for k, _ in (params.items() if isinstance(params, dict)
                                      else params or ())})
        self.calls[f"{method} {path}" + (f"?{'&'.join(keys)}" if keys else "")] += 1
        return await super()._call(method, path, body, **kwargs)


def test_the_monitor_reads_the_summaries_not_the_whole_balancer(
        balancer: BalancerProcess, tmp_path: Path) -> None:
    """A paused canary with a metrics reading every 50 ms: while it waits, the monitor and
    the analysis read pool counters and the named backends' counters, never the table."""
    fleet = make_fleet(4)
    params = strategies.get("canary").parse_params(
        {"steps": [{"hosts": 1, "pause": "60s"}, {"hosts": "100%"}]}, _Where())
    fleet = dataclasses.replace(
        fleet, strategy=StrategySpec("canary", params, on_failure="freeze"),
        verify=VerifySpec(for_=0.5, interval=0.2, no_data="pass"),
        timing=Timing(health_timeout=5.0, drain_timeout=1.0))
    seen: dict[str, Any] = {}

    async def main() -> Any:
        client = CountingClient(balancer.admin_url, TOKEN)
        for host in fleet.main_hosts:
            assert host.port is not None
            await client.set_backend(host.name, address=host.address, port=host.port,
                                     pool=fleet.releases.current)
        plan = strategies.get("canary").compile(fleet, fleet.strategy.params)
        engine = Engine(fleet, plan, Providers(NoopTransport(), client, NoopHealthCheck()),
                        clock=LoopClock(), metrics_interval=0.05)
        readings: list[Any] = []
        engine.subscribe(lambda e: readings.append(e) if e.kind == "metrics" else None)

        async def watcher() -> None:
            try:
                deadline = time.monotonic() + 30
                while engine.state.value != "WAITING":
                    assert time.monotonic() < deadline, \
                        f"the canary never paused ({engine.state.value}, {client.calls})"
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.2)     # the step's own reads, if any, are over
                start, first = Counter(client.calls), len(readings)
                while len(readings) - first < 20:
                    assert time.monotonic() < deadline, f"no metrics readings ({client.calls})"
                    await asyncio.sleep(0.02)
                seen["calls"] = client.calls - start
                seen["readings"] = readings[first:]
            except AssertionError as exc:
                seen["error"] = exc
            finally:
                engine.abort(rollback=False)

        watching = asyncio.ensure_future(watcher())
        try:
            result = await engine.run()
        finally:
            watching.cancel()
            await client.aclose()
        await asyncio.gather(watching, return_exceptions=True)
        return result

    result = asyncio.run(main())
    if "error" in seen:
        raise seen["error"]
    assert result.outcome is Outcome.FROZEN
    calls, readings = seen["calls"], seen["readings"]
    assert calls["GET /admin/state"] == 0, calls
    assert calls["GET /admin/stats"] == 0, calls          # the whole table, never
    assert calls["GET /admin/stats?by"] >= 20, calls       # pool counters each reading
    assert calls["GET /admin/stats?backend"] >= 20, calls  # the named backends' counters
    # (the balancer keeps the pools of earlier tests: a pool's counters outlive its backends)
    with_pools = [r for r in readings if r.data["pools"]]
    assert with_pools and all({"1.0.0", "1.1.0"} <= set(r.data["pools"]) for r in with_pools)


class _Where:
    def error(self, key: str | None, message: str) -> None:
        raise AssertionError(f"{key}: {message}")
