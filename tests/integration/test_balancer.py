"""The built-in balancer as a real process, real backends on 127.0.0.1, and its client."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from upgrader.errors import BalancerError, ConfigError
from upgrader.hashing import in_percent
from upgrader.providers import builtin_balancer
from upgrader.providers.base import (
    LATENCY_BUCKETS,
    BackendStats,
    Balancer,
    BalancerState,
    Cohort,
    ProviderContext,
    RouteTable,
)
from upgrader.providers.builtin_balancer import BuiltinBalancer, from_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TOKEN = "s3cret-test-token"
READY_TIMEOUT = 10.0


# --------------------------------------------------------------------------------------------
# Backends: small aiohttp servers on one event loop in a thread


class FakeBackend:
    """Answers its own name. ``/hold`` waits until :meth:`release`; ``?status=N`` answers N;
    ``?delay=S`` sleeps first; ``/echo`` answers what it received as JSON."""

    def __init__(self, farm: BackendFarm, name: str) -> None:
        self.farm = farm
        self.name = name
        self.port = 0
        self.hits = 0
        self.held = threading.Event()
        self._release: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None

    async def _start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if request.path == "/hold":
            self.held.set()
            assert self._release is not None
            await self._release.wait()
        if request.path == "/echo":
            body = await request.read()
            response = web.json_response({
                "backend": self.name, "method": request.method, "path_qs": request.path_qs,
                "body": body.decode(), "headers": dict(request.headers)})
            response.headers.add("Set-Cookie", "a=1")
            response.headers.add("Set-Cookie", "b=2")
            response.headers["Connection"] = "keep-alive"
            return response
        delay = float(request.query.get("delay", 0))
        if delay:
            await asyncio.sleep(delay)
        status = int(request.query.get("status", 200))
        return web.Response(status=status, text=self.name)

    def release(self) -> None:
        assert self._release is not None
        self.farm.loop.call_soon_threadsafe(self._release.set)

    def stop(self) -> None:
        assert self._runner is not None
        self.farm.call(self._runner.cleanup())


class Dropper:
    """A TCP server that reads the request and closes the connection without answering."""

    def __init__(self, farm: BackendFarm) -> None:
        self.farm = farm
        self.port = 0
        self.hits = 0
        self._server: asyncio.AbstractServer | None = None

    async def _start(self) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.hits += 1
            await reader.read(1)
            writer.close()

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


class BackendFarm:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.backends: list[FakeBackend] = []
        self.droppers: list[Dropper] = []

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self, name: str) -> FakeBackend:
        backend = FakeBackend(self, name)
        self.call(backend._start())
        self.backends.append(backend)
        return backend

    def dropper(self) -> Dropper:
        dropper = Dropper(self)
        self.call(dropper._start())
        self.droppers.append(dropper)
        return dropper

    def close(self) -> None:
        for backend in self.backends:
            backend.release()
            try:
                backend.stop()
            except Exception:
                pass
        for dropper in self.droppers:
            self.call(dropper._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def farm() -> Iterator[BackendFarm]:
    farm = BackendFarm()
    yield farm
    farm.close()


# --------------------------------------------------------------------------------------------
# The balancer process


class BalancerProcess:
    def __init__(self, directory: Path, token: str | None = TOKEN) -> None:
        self.token_file = directory / "token"
        if token is not None:
            self.token_file.write_text(token + "\n")
            self.token_file.chmod(0o600)        # a token file others may read is refused
        self.ready_file = directory / "ready.json"
        self.ready_file.unlink(missing_ok=True)
        self.log_file = directory / "balancer.log"
        self._log = self.log_file.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "upgrader.balancer", "--listen", "127.0.0.1:0",
             "--admin", "127.0.0.1:0", "--token-file", str(self.token_file),
             "--ready-file", str(self.ready_file), "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                self._log.close()
                raise RuntimeError("balancer exited: " + self.log_file.read_text())
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("balancer did not become ready in time")
            time.sleep(0.02)
        ready = json.loads(self.ready_file.read_text())
        assert ready["pid"] == self.process.pid
        self.url = f"http://127.0.0.1:{ready['listen_port']}"
        self.admin_url = f"http://127.0.0.1:{ready['admin_port']}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._log.close()

    def admin(self, method: str, path: str, body: Any = None,
              token: str | None = TOKEN) -> tuple[int, Any]:
        """A synchronous admin call (for set-up between tests): (status, JSON answer)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.admin_url + path, data=data, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def reset(self) -> None:
        status, state = self.admin("GET", "/admin/state")
        assert status == 200
        for name in state["backends"]:
            assert self.admin("DELETE", f"/admin/backends/{name}")[0] == 200
        assert self.admin("PUT", "/admin/split", {"weights": None})[0] == 200
        assert self.admin("PUT", "/admin/routes", {"routes": None})[0] == 200
        assert self.admin("PUT", "/admin/maintenance", {"on": False, "retry_after": 60})[0] == 200

    def add(self, name: str, backend: FakeBackend | Dropper, pool: str = "old",
            weight: int = 100, state: str = "ready") -> None:
        status, answer = self.admin("PUT", f"/admin/backends/{name}", {
            "address": "127.0.0.1", "port": backend.port, "pool": pool, "weight": weight,
            "state": state})
        assert status == 200, answer

    def stats(self) -> dict[str, Any]:
        status, answer = self.admin("GET", "/admin/stats")
        assert status == 200
        return answer


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    process = BalancerProcess(tmp_path_factory.mktemp("balancer"))
    yield process
    process.kill()


@pytest.fixture
def balancer(lb: BalancerProcess) -> BalancerProcess:
    lb.reset()
    return lb


async def traffic(url: str, n: int, *, path: str = "/", method: str = "GET",
                  headers: dict[str, str] | None = None, concurrency: int = 50,
                  ) -> list[tuple[int, str | None]]:
    """Send ``n`` requests; return (status, X-Upgrader-Backend) of each."""
    results: list[tuple[int, str | None]] = []
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        async def one() -> None:
            async with semaphore, session.request(method, url + path,
                                                  headers=headers) as response:
                await response.read()
                results.append((response.status, response.headers.get("X-Upgrader-Backend")))

        await asyncio.gather(*(one() for _ in range(n)))
    return results


def backends_of(results: list[tuple[int, str | None]]) -> Counter[str | None]:
    assert all(status == 200 for status, _ in results), Counter(s for s, _ in results)
    return Counter(name for _, name in results)


# --------------------------------------------------------------------------------------------
# Admin API: authentication and validation


def test_admin_needs_the_token(balancer: BalancerProcess) -> None:
    assert balancer.admin("GET", "/admin/state", token=None) == (
        401, {"error": "missing or wrong bearer token"})
    assert balancer.admin("GET", "/admin/state", token="wrong")[0] == 401
    assert balancer.admin("PUT", "/admin/maintenance", {"on": True}, token="wrong")[0] == 401
    assert balancer.admin("GET", "/admin/state")[0] == 200
    status, answer = balancer.admin("GET", "/admin/nothing-here")
    assert status == 404 and "error" in answer
    status, answer = balancer.admin("DELETE", "/admin/backends/ghost")
    assert status == 404 and "ghost" in answer["error"]


@pytest.mark.parametrize("method, path, body, message", [
    ("PUT", "/admin/backends/x", {"address": "127.0.0.1", "port": 1, "pool": "p", "weight": -1},
     "weight must be in 0..256"),
    ("PUT", "/admin/backends/x", {"address": "127.0.0.1", "port": 1, "pool": "p", "weight": 257},
     "weight must be in 0..256"),
    ("PUT", "/admin/backends/x", {"address": "127.0.0.1", "port": 1, "pool": "p",
                                  "state": "sleepy"}, "state must be one of"),
    ("PUT", "/admin/backends/x", {"address": "127.0.0.1", "port": "80", "pool": "p"},
     "port must be an integer"),
    ("PUT", "/admin/backends/x", {"address": "127.0.0.1", "port": 80}, "pool must be"),
    ("PUT", "/admin/backends/x", {"address": "127.0.0.1", "port": 80, "pool": "p", "wieght": 1},
     "unknown key(s) in body: wieght"),
    ("PUT", "/admin/backends/x", [1, 2], "body must be a JSON object"),
    ("PUT", "/admin/split", {"weights": {"old": 90, "new": 20}}, "sum to at most 100"),
    ("PUT", "/admin/split", {"weights": {"old": -5}}, "must be in 0..100"),
    ("PUT", "/admin/split", {"weights": {"old": "ninety"}}, "must be a number"),
    ("PUT", "/admin/split", {}, "weights is required"),
    ("PUT", "/admin/routes", {"routes": {"cohorts": [{"name": "c", "percent": 120,
                                                      "pool": "new"}]}}, "percent"),
    ("PUT", "/admin/routes", {"routes": {"groups": {"beta": 3}}}, "must name a pool"),
    ("PUT", "/admin/routes", {"routes": {"defualt": "old"}}, "unknown key(s) in routes"),
    ("PUT", "/admin/maintenance", {"on": "yes"}, "on must be true or false"),
    ("PUT", "/admin/maintenance", {"on": True, "retry_after": -1}, "retry_after must be"),
])
def test_bad_bodies_are_400_with_a_message(balancer: BalancerProcess, method: str, path: str,
                                           body: Any, message: str) -> None:
    status, answer = balancer.admin(method, path, body)
    assert status == 400
    assert message in answer["error"]


def test_bad_state_and_drained_parameters(balancer: BalancerProcess, farm: BackendFarm) -> None:
    balancer.add("a", farm.start("a"))
    status, answer = balancer.admin("POST", "/admin/backends/a/state", {"state": "off"})
    assert status == 400 and "state must be one of" in answer["error"]
    status, answer = balancer.admin("GET", "/admin/backends/a/drained?timeout=soon")
    assert status == 400 and "timeout" in answer["error"]
    assert balancer.admin("POST", "/admin/backends/zz/state", {"state": "ready"})[0] == 404
    request = urllib.request.Request(balancer.admin_url + "/admin/split", data=b"{not json",
                                     method="PUT",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert "not valid JSON" in json.loads(caught.value.read())["error"]


def test_refuses_a_missing_token_file(tmp_path: Path) -> None:
    # refused before binding: a typo in --token-file is not "no token"
    result = subprocess.run(
        [sys.executable, "-m", "upgrader.balancer", "--listen", "127.0.0.1:0",
         "--admin", "0.0.0.0:0", "--token-file", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"{tmp_path / 'missing'}: --token-file: token file does not exist" in result.stderr


# --------------------------------------------------------------------------------------------
# Proxying and selection


def test_forwards_method_path_query_body_and_headers(balancer: BalancerProcess,
                                                     farm: BackendFarm) -> None:
    balancer.add("echo", farm.start("echo"))

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.post(balancer.url + "/echo?x=1&y=%20two", data=b"payload",
                                    headers={"X-Custom": "yes",
                                             "X-Forwarded-For": "10.0.0.9"}) as response:
                assert response.status == 200
                assert response.headers["X-Upgrader-Backend"] == "echo"
                assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
                seen = await response.json()
            async with session.head(balancer.url + "/plain") as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == str(len("echo"))
        assert seen["method"] == "POST"
        assert seen["path_qs"] == "/echo?x=1&y=%20two"
        assert seen["body"] == "payload"
        assert seen["headers"]["X-Custom"] == "yes"
        assert seen["headers"]["X-Forwarded-For"] == "10.0.0.9, 127.0.0.1"
        assert seen["headers"]["Host"].startswith("127.0.0.1:")

    asyncio.run(run())


def test_split_100_0_and_weight_0_get_nothing(balancer: BalancerProcess,
                                              farm: BackendFarm) -> None:
    balancer.add("a", farm.start("a"), pool="old")
    balancer.add("b", farm.start("b"), pool="old", weight=0)
    balancer.add("c", farm.start("c"), pool="new")
    assert balancer.admin("PUT", "/admin/split", {"weights": {"old": 100, "new": 0}})[0] == 200
    assert backends_of(asyncio.run(traffic(balancer.url, 300))) == {"a": 300}
    assert balancer.admin("PUT", "/admin/split", {"weights": {"old": 0, "new": 100}})[0] == 200
    assert backends_of(asyncio.run(traffic(balancer.url, 100))) == {"c": 100}


def test_weights_1_to_3_share_traffic_1_to_3(balancer: BalancerProcess,
                                             farm: BackendFarm) -> None:
    balancer.add("light", farm.start("light"), weight=1)
    balancer.add("heavy", farm.start("heavy"), weight=3)
    counts = backends_of(asyncio.run(traffic(balancer.url, 2000)))
    # expected 500 / 1500, standard deviation ~19: 100 is five of them
    assert abs(counts["light"] - 500) < 100, counts
    assert counts["light"] + counts["heavy"] == 2000
    stats = balancer.stats()["backends"]
    assert stats["light"]["requests"] == counts["light"]
    assert stats["heavy"]["requests"] == counts["heavy"]


def test_pool_split_by_percent(balancer: BalancerProcess, farm: BackendFarm) -> None:
    balancer.add("o", farm.start("o"), pool="old")
    balancer.add("n", farm.start("n"), pool="new")
    assert balancer.admin("PUT", "/admin/split", {"weights": {"old": 80, "new": 20}})[0] == 200
    counts = backends_of(asyncio.run(traffic(balancer.url, 2000)))
    assert abs(counts["n"] - 400) < 100, counts


def test_routes_by_header_cookie_and_cohort(balancer: BalancerProcess,
                                            farm: BackendFarm) -> None:
    balancer.add("o", farm.start("o"), pool="old")
    balancer.add("n", farm.start("n"), pool="new")
    routes = {"groups": {"beta": "new", "staff": "old"},
              "cohorts": [{"name": "canary", "percent": 25, "pool": "new"}],
              "default": "old"}
    assert balancer.admin("PUT", "/admin/routes", {"routes": routes})[0] == 200

    async def run() -> None:
        assert backends_of(await traffic(balancer.url, 50, headers={"X-User-Group": "beta"})) \
            == {"n": 50}
        assert backends_of(await traffic(balancer.url, 50, headers={"Cookie": "group=beta"})) \
            == {"n": 50}
        assert backends_of(await traffic(balancer.url, 50, headers={"X-User-Group": "staff"})) \
            == {"o": 50}
        # no group, no user: default pool
        assert backends_of(await traffic(balancer.url, 50)) == {"o": 50}
        users = [f"user-{i}" for i in range(120)]
        expected = {user: "n" if in_percent(user, 25) else "o" for user in users}
        assert set(expected.values()) == {"n", "o"}     # both kinds of user are tested
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            for index, user in enumerate(users):
                headers = {"X-User": user} if index % 2 else {"Cookie": f"user={user}"}
                async with session.get(balancer.url + "/", headers=headers) as response:
                    assert response.headers["X-Upgrader-Backend"] == expected[user], user

    asyncio.run(run())

    # custom header names; a group with no route falls through to cohorts
    routes = {"groups": {"beta": "new"}, "cohorts": [{"name": "all", "percent": 100,
                                                      "pool": "new"}],
              "default": "old", "group_header": "X-Ring", "user_header": "X-Account"}
    assert balancer.admin("PUT", "/admin/routes", {"routes": routes})[0] == 200
    assert backends_of(asyncio.run(traffic(balancer.url, 20, headers={"X-Ring": "beta"}))) \
        == {"n": 20}
    assert backends_of(asyncio.run(traffic(balancer.url, 20, headers={"X-Account": "u1"}))) \
        == {"n": 20}
    assert backends_of(asyncio.run(traffic(balancer.url, 20, headers={"X-User": "u1"}))) \
        == {"o": 20}


def test_empty_pool_falls_back_and_no_backend_is_503(balancer: BalancerProcess,
                                                     farm: BackendFarm) -> None:
    balancer.add("o", farm.start("o"), pool="old")
    balancer.add("n", farm.start("n"), pool="new", state="maint")
    assert balancer.admin("PUT", "/admin/split", {"weights": {"new": 100}})[0] == 200
    before = balancer.stats()
    assert backends_of(asyncio.run(traffic(balancer.url, 30))) == {"o": 30}
    after = balancer.stats()
    assert after["fallbacks"] - before["fallbacks"] == 30

    assert balancer.admin("POST", "/admin/backends/o/state", {"state": "drain"})[0] == 200
    results = asyncio.run(traffic(balancer.url, 10))
    assert results == [(503, None)] * 10
    final = balancer.stats()
    assert final["no_backend"] - after["no_backend"] == 10
    assert final["backends"]["o"]["requests"] == 30
    assert final["backends"]["n"]["requests"] == 0


def test_maintenance_answers_503_with_retry_after(balancer: BalancerProcess,
                                                  farm: BackendFarm) -> None:
    backend = farm.start("m")
    balancer.add("m", backend)
    assert balancer.admin("PUT", "/admin/maintenance", {"on": True, "retry_after": 120}) == (
        200, {"maintenance": True, "retry_after": 120})
    before = balancer.stats()

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.get(balancer.url + "/anything") as response:
                    assert response.status == 503
                    assert response.headers["Retry-After"] == "120"
                    assert "maintenance" in await response.text()

    asyncio.run(run())
    after = balancer.stats()
    assert after["maintenance_responses"] - before["maintenance_responses"] == 5
    assert after["backends"]["m"] == before["backends"]["m"]     # untouched, no errors
    assert backend.hits == 0
    assert balancer.admin("PUT", "/admin/maintenance", {"on": False})[0] == 200
    assert backends_of(asyncio.run(traffic(balancer.url, 5))) == {"m": 5}


# --------------------------------------------------------------------------------------------
# Drain, retries, stats


def test_drain_waits_for_requests_in_flight(balancer: BalancerProcess,
                                            farm: BackendFarm) -> None:
    slow = farm.start("slow")
    balancer.add("slow", slow)

    async def run() -> None:
        async with BuiltinBalancer(balancer.admin_url, TOKEN) as client, \
                aiohttp.ClientSession() as session:
            held = asyncio.create_task(session.get(balancer.url + "/hold"))
            assert await asyncio.to_thread(slow.held.wait, 10)
            assert (await client.state()).backends["slow"].inflight == 1

            other = farm.start("other")
            await client.set_backend("other", address="127.0.0.1", port=other.port, pool="old")
            await client.set_backend_state("slow", "drain")
            assert await client.wait_drained("slow", 0.1) == 1      # still held
            counts = backends_of(await traffic(balancer.url, 50))
            assert counts == {"other": 50}                          # drained: nothing new
            assert slow.hits == 1

            waiter = asyncio.create_task(client.wait_drained("slow", 30))
            await asyncio.sleep(0)
            assert not waiter.done()
            slow.release()
            started = time.monotonic()
            assert await waiter == 0
            assert time.monotonic() - started < 5
            response = await held
            assert response.status == 200 and await response.text() == "slow"
            response.release()
            assert (await client.state()).backends["slow"].inflight == 0

    asyncio.run(run())


def test_a_dead_backend_fails_no_get(balancer: BalancerProcess, farm: BackendFarm) -> None:
    backends = {name: farm.start(name) for name in ("r1", "r2", "r3")}
    for name, backend in backends.items():
        balancer.add(name, backend)
    # warm keep-alive connections to every backend, then kill one
    backends_of(asyncio.run(traffic(balancer.url, 60)))
    backends["r2"].stop()
    before = balancer.stats()
    counts = backends_of(asyncio.run(traffic(balancer.url, 300)))
    assert "r2" not in counts and sum(counts.values()) == 300
    after = balancer.stats()
    assert after["retries"] > before["retries"]
    assert after["backends"]["r2"]["connect_failures"] > 0
    assert after["backends"]["r2"]["errors"] == 0      # no failure reached a user
    # a refused connection never reached the backend: retried whatever the method
    results = asyncio.run(traffic(balancer.url, 60, method="POST"))
    assert all(status == 200 and name != "r2" for status, name in results)
    status, state = balancer.admin("GET", "/admin/state")
    assert state["backends"]["r2"]["state"] == "ready"   # passive health never removes


def test_reset_before_answer_retries_get_but_not_post(balancer: BalancerProcess,
                                                      farm: BackendFarm) -> None:
    dropper = farm.dropper()
    balancer.add("drop", dropper, pool="broken")
    balancer.add("good", farm.start("good"), pool="old")
    assert balancer.admin("PUT", "/admin/routes",
                          {"routes": {"groups": {"unlucky": "broken"}}})[0] == 200
    headers = {"X-User-Group": "unlucky"}
    before = balancer.stats()
    assert backends_of(asyncio.run(traffic(balancer.url, 20, headers=headers))) == {"good": 20}
    after = balancer.stats()
    assert after["retries"] - before["retries"] == 20
    results = asyncio.run(traffic(balancer.url, 5, method="POST", headers=headers))
    assert results == [(502, "drop")] * 5
    assert balancer.stats()["backends"]["drop"]["errors"] == 5


def test_stats_count_requests_errors_and_latency(balancer: BalancerProcess,
                                                 farm: BackendFarm) -> None:
    balancer.add("s", farm.start("s"))

    async def run() -> None:
        await traffic(balancer.url, 20)
        assert {s for s, _ in await traffic(balancer.url, 7, path="/?status=500")} == {500}
        assert {s for s, _ in await traffic(balancer.url, 3, path="/?status=503")} == {503}
        assert {s for s, _ in await traffic(balancer.url, 4, path="/?status=404")} == {404}
        await traffic(balancer.url, 5, path="/?delay=0.06")

    asyncio.run(run())
    stats = balancer.stats()["backends"]["s"]
    assert stats["requests"] == 39
    assert stats["errors"] == 10
    buckets = stats["latency_buckets"]
    assert len(buckets) == len(LATENCY_BUCKETS) and sum(buckets) == 39
    slow = sum(count for bound, count in zip(LATENCY_BUCKETS, buckets) if bound > 0.05)
    assert slow >= 5

    # same address and port: stats kept; another port: reset
    status, state = balancer.admin("GET", "/admin/state")
    port = state["backends"]["s"]["port"]
    assert balancer.admin("PUT", "/admin/backends/s", {"address": "127.0.0.1", "port": port,
                                                       "pool": "old", "weight": 7})[0] == 200
    assert balancer.stats()["backends"]["s"]["requests"] == 39
    assert balancer.admin("PUT", "/admin/backends/s", {"address": "127.0.0.1", "port": 1,
                                                       "pool": "old"})[0] == 200
    assert balancer.stats()["backends"]["s"]["requests"] == 0


# --------------------------------------------------------------------------------------------
# The client provider


def test_client_round_trips_every_method(balancer: BalancerProcess, farm: BackendFarm) -> None:
    backend = farm.start("rt")

    async def run() -> None:
        client = BuiltinBalancer(balancer.admin_url, TOKEN, timeout=5)
        assert isinstance(client, Balancer)
        async with client:
            await client.set_backend("web-01", address="127.0.0.1", port=backend.port,
                                     pool="old", weight=42, state="ready")
            await client.set_backend("web-02", address="127.0.0.1", port=backend.port,
                                     pool="old")
            await client.set_backend_state("web-02", "maint", pool="new")
            await client.set_split({"old": 95.0, "new": 5.0})
            routes = RouteTable(groups={"beta": "new"},
                                cohorts=((Cohort("early", 2.5), "new"),), default="old",
                                group_header="X-Ring", user_header="X-Account")
            await client.set_routes(routes)
            await client.set_maintenance(False, retry_after=30)
            state = await client.state()
            assert isinstance(state, BalancerState)
            web01, web02 = state.backends["web-01"], state.backends["web-02"]
            assert (web01.address, web01.port, web01.pool, web01.weight, web01.state) == (
                "127.0.0.1", backend.port, "old", 42, "ready")
            assert (web02.pool, web02.weight, web02.state) == ("new", 100, "maint")
            assert state.split == {"old": 95.0, "new": 5.0}
            assert state.routes == routes
            assert state.maintenance is False and state.retry_after == 30

            assert backends_of(await traffic(balancer.url, 10)) == {"web-01": 10}
            stats = await client.stats()
            assert stats["web-01"] == BackendStats(
                requests=10, errors=0, latency_buckets=stats["web-01"].latency_buckets)
            assert sum(stats["web-01"].latency_buckets) == 10
            assert stats["web-02"].requests == 0
            assert await client.wait_drained("web-01", 1) == 0

            await client.set_maintenance(True, retry_after=9)
            state = await client.state()
            assert state.maintenance and state.retry_after == 9
            await client.set_split(None)
            await client.set_routes(None)
            await client.remove_backend("web-02")
            state = await client.state()
            assert state.split is None and state.routes is None
            assert set(state.backends) == {"web-01"}

            with pytest.raises(BalancerError) as caught:
                await client.remove_backend("web-02")
            assert "/admin/backends/web-02" in str(caught.value)
            assert "unknown backend" in str(caught.value)
            with pytest.raises(BalancerError, match=r"weight must be in 0\.\.256"):
                await client.set_backend("bad", address="127.0.0.1", port=1, pool="p",
                                         weight=1000)
        assert client._session is None

    asyncio.run(run())


def test_client_errors_never_show_the_token(balancer: BalancerProcess) -> None:
    async def run() -> None:
        async with BuiltinBalancer(balancer.admin_url, "not-the-token") as client:
            with pytest.raises(BalancerError) as caught:
                await client.state()
            assert "401" in str(caught.value) and "/admin/state" in str(caught.value)
            assert "not-the-token" not in str(caught.value) + repr(client)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            free_port = sock.getsockname()[1]
        async with BuiltinBalancer(f"http://127.0.0.1:{free_port}", TOKEN, timeout=2) as client:
            with pytest.raises(BalancerError) as caught:
                await client.stats()
            assert "/admin/stats" in str(caught.value)
            assert isinstance(caught.value.__cause__, aiohttp.ClientError)
            assert TOKEN not in str(caught.value)

    asyncio.run(run())


def test_from_settings_needs_exactly_one_token_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # no generated token
    context = ProviderContext()
    url = "http://127.0.0.1:18001"
    token_file = tmp_path / "token"
    token_file.write_text(" from-file \n")
    token_file.chmod(0o600)
    assert from_settings({"admin_url": url, "token_file": str(token_file)},
                         context)._token == "from-file"
    monkeypatch.setenv("UPGRADER_TEST_TOKEN", "from-env")
    assert from_settings({"admin_url": url, "token_env": "UPGRADER_TEST_TOKEN"},
                         context)._token == "from-env"
    assert from_settings({"admin_url": url, "token": "inline"}, context)._token == "inline"

    cases = [
        ({"admin_url": url}, "token_file"),
        ({"admin_url": url, "token": "a", "token_env": "UPGRADER_TEST_TOKEN"}, "token_env"),
        ({"admin_url": url, "token_file": str(tmp_path / "missing")}, "token_file"),
        ({"admin_url": url, "token_env": "UPGRADER_NO_SUCH_VARIABLE"}, "token_env"),
        ({"token": "a"}, "admin_url"),
        ({"admin_url": "ftp://x", "token": "a"}, "admin_url"),
        ({"admin_url": url, "token": "a", "tokn": "b"}, "tokn"),
    ]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    cases.append(({"admin_url": url, "token_file": str(empty)}, "token_file"))
    for settings, key in cases:
        with pytest.raises(ConfigError) as caught:
            from_settings(settings, context)
        assert caught.value.key == key, settings
        assert "from-env" not in str(caught.value)


def test_registers_as_builtin() -> None:
    registered: list[tuple[Any, ...]] = []

    def register(name: str, factory: Any, settings: Any = (), description: str = "") -> None:
        registered.append((name, factory, settings, description))

    builtin_balancer.register_balancers(register)
    [(name, factory, settings, description)] = registered
    assert name == "builtin" and factory is from_settings and description
    assert {s.name for s in settings} >= {"admin_url", "token", "token_file", "token_env"}
    assert [s.name for s in settings if s.required] == ["admin_url"]


# --------------------------------------------------------------------------------------------
# Shutdown


def test_sigterm_finishes_requests_in_flight(tmp_path: Path, farm: BackendFarm) -> None:
    process = BalancerProcess(tmp_path)
    try:
        slow = farm.start("slow-exit")
        process.add("slow", slow)
        port = int(process.url.rsplit(":", 1)[1])

        async def run() -> None:
            async with aiohttp.ClientSession() as session:
                held = asyncio.create_task(session.get(process.url + "/hold"))
                assert await asyncio.to_thread(slow.held.wait, 10)
                process.process.send_signal(signal.SIGTERM)
                # it stops accepting: new connections are refused (bounded wait)
                deadline = time.monotonic() + 5
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    except ConnectionRefusedError:
                        break
                    assert time.monotonic() < deadline, "still accepting after SIGTERM"
                    await asyncio.sleep(0.02)
                assert process.process.poll() is None
                slow.release()
                response = await held
                assert response.status == 200 and await response.text() == "slow-exit"
                response.release()

        asyncio.run(run())
        assert process.process.wait(10) == 0
    finally:
        process.kill()
