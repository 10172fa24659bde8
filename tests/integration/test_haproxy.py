"""The ``haproxy`` balancer plugin against a real haproxy (started per test by
``upgrader.lab.haproxy``) and real HTTP backends (aiohttp servers on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from upgrader.errors import BalancerError
from upgrader.hashing import in_percent
from upgrader.lab.haproxy import (
    HAProxyProcess,
    HAProxySite,
    StaticServer,
    haproxy_binary,
    runtime_command,
)
from upgrader.model import ProviderSpec
from upgrader.plugins import Plugins
from upgrader.providers.base import (
    LATENCY_BUCKETS,
    BackendStats,
    Balancer,
    Cohort,
    ProviderContext,
    RouteTable,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

OLD, NEW = "1.4.0", "1.5.0"


# --------------------------------------------------------------------------------------------
# Backends: aiohttp servers on an event loop of their own, in a thread


class Backend:
    """Answers its name. ``/fail`` answers 500; ``/slow?ms=N`` waits N ms; ``/hold`` waits
    until :meth:`release`."""

    def __init__(self, farm: Farm, name: str) -> None:
        self.farm, self.name, self.port = farm, name, 0
        self.held = threading.Event()
        self._release: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path == "/hold":
            self.held.set()
            assert self._release is not None
            await self._release.wait()
        elif request.path == "/fail":
            return web.Response(status=500, text=self.name)
        elif request.path == "/slow":
            await asyncio.sleep(int(request.query.get("ms", "300")) / 1000)
        return web.Response(text=self.name)

    def release(self) -> None:
        assert self._release is not None
        self.farm.loop.call_soon_threadsafe(self._release.set)


class Farm:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.backends: list[Backend] = []

    def start(self, name: str) -> Backend:
        backend = Backend(self, name)
        asyncio.run_coroutine_threadsafe(backend.start(), self.loop).result(10)
        self.backends.append(backend)
        return backend

    def close(self) -> None:
        for backend in self.backends:
            backend.release()
            if backend._runner is not None:
                asyncio.run_coroutine_threadsafe(backend._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def farm() -> Iterator[Farm]:
    farm = Farm()
    yield farm
    farm.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[HAProxySite]:
    if haproxy_binary() is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    site = HAProxySite(tmp_path / "haproxy", port=_free_port(), backend="shop", slots=3)
    process = HAProxyProcess(site)
    process.start()
    try:
        yield site
    finally:
        process.stop()


def balancer_for(site: HAProxySite, **overrides: Any) -> Balancer:
    """Through the plugin registry and the entry point, as a fleet file would."""
    settings = {**site.balancer_settings(), "delete_timeout": 5.0, **overrides}
    return Plugins().create("balancer", ProviderSpec("haproxy", settings), ProviderContext())


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())


async def get(session: aiohttp.ClientSession, site: HAProxySite, path: str = "/",
              headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{site.port}{path}", headers=headers) as resp:
        return resp.status, await resp.text()


async def served_by(session: aiohttp.ClientSession, site: HAProxySite, n: int,
                    path: str = "/", headers: dict[str, str] | None = None,
                    concurrency: int = 20) -> Counter[str]:
    """Who answered ``n`` requests; every one must succeed."""
    counts: Counter[str] = Counter()
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            status, text = await get(session, site, path, headers)
            assert status == 200, (status, text)
            counts[text] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def share_tolerance(p: float, n: int) -> float:
    """Five standard deviations of a binomial share (flaky once in millions of runs)."""
    return 5 * math.sqrt(max(p * (1 - p), 0.0025) / n)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------------------------


def test_the_plugin_is_a_balancer(haproxy: HAProxySite) -> None:
    balancer = balancer_for(haproxy)
    assert isinstance(balancer, Balancer)
    assert type(balancer).__module__ == "upgrader_haproxy.balancer"

    async def scenario() -> None:
        async with balancer:
            state = await balancer.state()
            assert state.backends == {} and state.split is None and state.routes is None
            assert not state.maintenance

    run(scenario)


def test_states_and_weights(haproxy: HAProxySite, farm: Farm) -> None:
    a, b = farm.start("a"), farm.start("b")

    async def scenario() -> None:
        async with balancer_for(haproxy) as lb, aiohttp.ClientSession() as http:
            await lb.set_backend("a", address="127.0.0.1", port=a.port, pool=OLD)
            await lb.set_backend("b", address="127.0.0.1", port=b.port, pool=OLD, weight=50,
                                 state="drain")
            state = await lb.state()
            assert {n: (s.pool, s.weight, s.state, s.port) for n, s in state.backends.items()} \
                == {"a": (OLD, 100, "ready", a.port), "b": (OLD, 50, "drain", b.port)}
            assert await served_by(http, haproxy, 40) == Counter(a=40)

            await lb.set_backend_state("b", "ready")
            await lb.set_backend("a", address="127.0.0.1", port=a.port, pool=OLD, weight=25)
            counts = await served_by(http, haproxy, 600)
            # roundrobin by weight: exactly 25:50 over whole rounds
            assert abs(counts["b"] / 600 - 2 / 3) < 0.02, counts

            await lb.set_backend_state("b", "maint")
            assert (await lb.backend_state("b")).state == "maint"   # type: ignore[union-attr]
            assert await served_by(http, haproxy, 30) == Counter(a=30)
            await lb.set_backend("a", address="127.0.0.1", port=a.port, pool=OLD, weight=0)
            assert (await lb.backend_state("a")).weight == 0        # type: ignore[union-attr]
            with pytest.raises(BalancerError, match=r"0\.\.256"):
                await lb.set_backend("a", address="127.0.0.1", port=a.port, pool=OLD,
                                     weight=300)
            with pytest.raises(BalancerError, match="unknown backend state"):
                await lb.set_backend_state("a", "sleepy")

    run(scenario)


def test_drain_waits_for_requests_in_flight(haproxy: HAProxySite, farm: Farm) -> None:
    a, b = farm.start("a"), farm.start("b")

    async def scenario() -> None:
        async with balancer_for(haproxy) as lb, aiohttp.ClientSession() as http:
            await lb.set_backend("a", address="127.0.0.1", port=a.port, pool=OLD)
            await lb.set_backend("b", address="127.0.0.1", port=b.port, pool=OLD)
            # a slow request in flight on a (roundrobin: keep asking until a holds one)
            held: list[asyncio.Task[tuple[int, str]]] = []
            while not a.held.is_set():
                held.append(asyncio.create_task(get(http, haproxy, "/hold")))
                await eventually(lambda: _any_held(a, b, len(held)))
            b.release()          # b's held requests (if any) end at once
            stop = asyncio.Event()
            failures: list[Any] = []
            answered: Counter[str] = Counter()

            async def traffic() -> None:
                while not stop.is_set():
                    status, text = await get(http, haproxy)
                    if status != 200:
                        failures.append((status, text))
                    answered[text] += 1

            users = [asyncio.create_task(traffic()) for _ in range(4)]
            await lb.set_backend_state("a", "drain")

            async def only_the_held_request_left() -> bool:
                # the users' quick requests that reached a before the drain finish at once
                # (on a busy machine several can be on their way); the held one stays
                return (await lb.backend_state("a")).inflight == 1  # type: ignore[union-attr]

            await eventually(only_the_held_request_left)
            assert await lb.wait_drained("a", 0.2) == 1             # gives up: still in flight
            waiting = asyncio.create_task(lb.wait_drained("a", 20))
            await asyncio.sleep(0.3)
            assert not waiting.done()                                # the request still runs
            before = Counter(answered)
            a.release()
            assert await waiting == 0
            stop.set()
            await asyncio.gather(*users)
            results = await asyncio.gather(*held)
            assert all(status == 200 for status, _ in results), results
            assert "a" in [text for _, text in results]
            assert failures == []
            assert answered["a"] == before["a"]      # a drained node gets no new request
            assert answered["b"] > 0

    run(scenario)


async def _any_held(a: Backend, b: Backend, sent: int) -> bool:
    return a.held.is_set() or b.held.is_set()


def test_split_between_pools_measured(haproxy: HAProxySite, farm: Farm) -> None:
    old = [farm.start("old-1"), farm.start("old-2")]
    new = farm.start("new-1")

    async def scenario() -> None:
        async with balancer_for(haproxy) as lb, aiohttp.ClientSession() as http:
            for backend in old:
                await lb.set_backend(backend.name, address="127.0.0.1", port=backend.port,
                                     pool=OLD)
            # no split: one weighted draw over every ready server (2 old : 1 new)
            await lb.set_backend("new-1", address="127.0.0.1", port=new.port, pool=NEW)
            n = 1500
            counts = await served_by(http, haproxy, n)
            assert abs(counts["new-1"] / n - 1 / 3) < share_tolerance(1 / 3, n), counts

            for percent in (0.0, 5.0, 25.0, 100.0):
                await lb.set_split({OLD: 100.0 - percent, NEW: percent})
                state = await lb.state()
                assert state.split == {OLD: 100.0 - percent, NEW: percent}
                n = 2000
                counts = await served_by(http, haproxy, n)
                share = counts["new-1"] / n
                if percent in (0.0, 100.0):
                    assert share == percent / 100, counts        # exact: nothing leaks
                else:
                    p = percent / 100
                    assert abs(share - p) < share_tolerance(p, n), (percent, counts)
            # a drained pool is skipped even though the split names it
            await lb.set_split({OLD: 50.0, NEW: 50.0})
            await lb.set_backend_state("new-1", "drain")
            assert (await served_by(http, haproxy, 100))["new-1"] == 0
            await lb.set_split(None)
            assert (await lb.state()).split is None
            with pytest.raises(BalancerError, match="at most 100"):
                await lb.set_split({OLD: 80.0, NEW: 30.0})

    run(scenario)


def test_add_and_delete_servers_of_a_new_cluster(haproxy: HAProxySite, farm: Farm) -> None:
    old, new = farm.start("web-01"), farm.start("web-01@green")

    async def scenario() -> None:
        async with balancer_for(haproxy) as lb, aiohttp.ClientSession() as http:
            await lb.set_backend("web-01", address="127.0.0.1", port=old.port, pool=OLD)
            await lb.set_backend("web-01@green", address="localhost", port=new.port, pool=NEW,
                                 state="maint")
            rows = runtime_command(haproxy.socket_path, "show servers state")
            assert "web-01:40green" in rows                      # '@' spelled for HAProxy
            state = await lb.state()
            assert state.backends["web-01@green"].address == "127.0.0.1"
            assert state.backends["web-01@green"].state == "maint"
            assert await served_by(http, haproxy, 20) == Counter({"web-01": 20})
            await lb.set_backend_state("web-01@green", "ready")
            await lb.set_backend_state("web-01", "drain")
            assert await lb.wait_drained("web-01", 5) == 0
            assert await served_by(http, haproxy, 20) == Counter({"web-01@green": 20})
            before = (await lb.stats())["web-01"].requests
            # an in-place upgrade: the drained server moves to the new pool, keeps counting
            await lb.set_backend("web-01", address="127.0.0.1", port=old.port, pool=NEW)
            state = await lb.state()
            assert state.backends["web-01"].pool == NEW
            assert (await lb.stats())["web-01"].requests == before
            counts = await served_by(http, haproxy, 40)
            assert counts["web-01"] > 0 and counts["web-01@green"] > 0
            assert (await lb.stats())["web-01"].requests == before + counts["web-01"]
            # delete: maint first, then gone; the old pool's HAProxy backend is free again
            await lb.remove_backend("web-01@green")
            assert "web-01@green" not in (await lb.state()).backends
            assert "web-01:40green" not in runtime_command(haproxy.socket_path,
                                                           "show servers state")
            with pytest.raises(BalancerError, match="no backend named"):
                await lb.remove_backend("web-01@green")
            assert set(await lb.pool_stats()) == {NEW}

    run(scenario)


def test_show_stat_counts_requests_errors_and_latency(haproxy: HAProxySite, farm: Farm) -> None:
    fast, slow = farm.start("fast"), farm.start("slow")

    async def scenario() -> None:
        async with balancer_for(haproxy) as lb, aiohttp.ClientSession() as http:
            await lb.set_backend("fast", address="127.0.0.1", port=fast.port, pool=OLD)
            await lb.set_backend("slow", address="127.0.0.1", port=slow.port, pool=NEW)
            await lb.set_split({OLD: 100.0})
            first = await lb.stats()
            pools_first = await lb.pool_stats()
            assert first["fast"] == BackendStats(0, 0, tuple(0 for _ in LATENCY_BUCKETS))
            await served_by(http, haproxy, 30)
            statuses = [ (await get(http, haproxy, "/fail"))[0] for _ in range(7)]
            assert statuses == [500] * 7
            await lb.set_split({NEW: 100.0})
            await served_by(http, haproxy, 10, "/slow?ms=250", concurrency=5)
            stats = await lb.stats()
            assert (stats["fast"].requests, stats["fast"].errors) == (37, 7)
            assert (stats["slow"].requests, stats["slow"].errors) == (10, 0)
            assert sum(stats["slow"].latency_buckets) == 10
            slow_bucket = LATENCY_BUCKETS[stats["slow"].latency_buckets.index(10)]
            assert 0.25 <= slow_bucket <= 0.5, stats["slow"]
            assert sum(stats["fast"].latency_buckets) == 37
            pools = await lb.pool_stats()
            assert (pools[OLD].requests - pools_first[OLD].requests,
                    pools[OLD].errors - pools_first[OLD].errors) == (37, 7)
            assert pools[NEW].requests - pools_first[NEW].requests == 10

    run(scenario)


def test_group_routing_and_cohorts_through_the_maps(haproxy: HAProxySite, farm: Farm) -> None:
    old, new = farm.start("old"), farm.start("new")

    async def scenario() -> None:
        async with balancer_for(haproxy) as lb, aiohttp.ClientSession() as http:
            await lb.set_backend("old", address="127.0.0.1", port=old.port, pool=OLD)
            await lb.set_backend("new", address="127.0.0.1", port=new.port, pool=NEW)
            routes = RouteTable(groups={"beta": NEW, "employees": NEW},
                                cohorts=((Cohort("early", 10.0), NEW),), default=OLD)
            await lb.set_routes(routes)
            assert (await lb.state()).routes == routes
            assert await served_by(http, haproxy, 20, headers={"X-User-Group": "beta"}) \
                == Counter(new=20)
            assert await served_by(http, haproxy, 20, headers={"X-User-Group": "staff"}) \
                == Counter(old=20)
            assert await served_by(http, haproxy, 10, headers={"Cookie": "group=employees"}) \
                == Counter(new=10)
            assert await served_by(http, haproxy, 20) == Counter(old=20)
            # cohorts: the same buckets as upgrader.hashing (sha256 of the user key)
            for user in (f"user-{i}" for i in range(60)):
                want = "new" if in_percent(user, 10.0) else "old"
                assert (await get(http, haproxy, "/", {"X-User": user}))[1] == want, user
            await lb.set_routes(None)
            assert (await lb.state()).routes is None
            counts = await served_by(http, haproxy, 60, headers={"X-User-Group": "beta"})
            assert counts["old"] > 0 and counts["new"] > 0
            with pytest.raises(BalancerError, match="X-User-Group"):
                await lb.set_routes(RouteTable(groups={"beta": NEW}, group_header="X-Team"))

    run(scenario)


def test_maintenance_answers_503_with_retry_after(haproxy: HAProxySite, farm: Farm) -> None:
    a = farm.start("a")

    async def scenario() -> None:
        async with balancer_for(haproxy) as lb, aiohttp.ClientSession() as http:
            await lb.set_backend("a", address="127.0.0.1", port=a.port, pool=OLD)
            await lb.set_maintenance(True, 120)
            state = await lb.state()
            assert (state.maintenance, state.retry_after) == (True, 120)
            for _ in range(5):
                async with http.get(f"http://127.0.0.1:{haproxy.port}/x") as resp:
                    assert resp.status == 503
                    assert resp.headers["Retry-After"] == "120"
            assert (await lb.stats())["a"].requests == 0        # no backend touched
            await lb.set_maintenance(False)
            assert not (await lb.state()).maintenance
            assert await served_by(http, haproxy, 5) == Counter(a=5)

    run(scenario)


def test_read_back_mismatch_raises(haproxy: HAProxySite, farm: Farm) -> None:
    a = farm.start("a")

    async def scenario() -> None:
        async with balancer_for(haproxy) as lb:
            await lb.set_backend("a", address="127.0.0.1", port=a.port, pool=OLD)
            with pytest.raises(BalancerError, match="no backend named 'ghost'"):
                await lb.set_backend_state("ghost", "drain")
            with pytest.raises(BalancerError, match="ghost"):
                await lb.wait_drained("ghost", 1)
            # somebody edits a map behind upgrader's back: the next read-back says so
            await lb.set_routes(RouteTable(groups={"beta": OLD}))
            groups = f"{haproxy.map_dir}/groups.map"
            assert runtime_command(haproxy.socket_path, f"set map {groups} beta shop_3").strip() == ""
            with pytest.raises(BalancerError, match=r"groups\.map"):
                await lb.state()
            # and a server HAProxy refuses to change
            runtime_command(haproxy.socket_path, "set server shop_1/a state maint")
            runtime_command(haproxy.socket_path, "del server shop_1/a")
            with pytest.raises(BalancerError, match="no backend named 'a'"):
                await lb.set_backend_state("a", "ready")

        bad = balancer_for(haproxy, maps="/nowhere")
        with pytest.raises(BalancerError, match=r"no map /nowhere/state\.map"):
            await bad.state()
        unreachable = balancer_for(haproxy, socket=str(haproxy.directory / "missing.sock"))
        with pytest.raises(BalancerError, match="Runtime API"):
            await unreachable.state()

    run(scenario)


def test_static_servers_of_haproxy_cfg(tmp_path: Path, farm: Farm) -> None:
    """A fleet HAProxy already serves: servers written in haproxy.cfg, slot bound in the map."""
    if haproxy_binary() is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    a = farm.start("static-a")
    site = HAProxySite(tmp_path / "h", port=_free_port(), backend="shop", slots=2,
                       servers={1: [StaticServer("web-01", "127.0.0.1", a.port)]},
                       pools={1: OLD})
    with HAProxyProcess(site):
        async def scenario() -> None:
            async with balancer_for(site) as lb, aiohttp.ClientSession() as http:
                state = await lb.state()
                assert state.backends["web-01"].pool == OLD
                assert state.backends["web-01"].state == "ready"
                assert await served_by(http, site, 5) == Counter({"static-a": 5})
                await lb.set_backend_state("web-01", "drain")
                assert (await lb.state()).backends["web-01"].state == "drain"

        run(scenario)
