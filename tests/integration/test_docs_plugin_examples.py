"""The provider examples of docs/PLUGINS.md ("Writing a provider, category by category") are
real code: each one is executed as a plugin module, registered with ``register_temp_plugin``
and run against a real counterpart (a process, a TCP or HTTP server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import re
import socket
import types
from pathlib import Path

import pytest
from aiohttp import web

from upgrader.errors import (
    BalancerError,
    CommandTimeout,
    ConfigError,
    MetricSourceError,
    SnapshotError,
    TransportError,
)
from upgrader.events import Event
from upgrader.model import Host, MetricSpec, ProviderSpec
from upgrader.plugins import PROTOCOLS
from upgrader.providers.base import CommandResult, MetricWindow, ProviderContext
from upgrader.providers.noop import NoopTransport
from upgrader.testing import register_temp_plugin, upgrader_plugins  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "PLUGINS.md"

SECTIONS = {
    "transport": "Writing a transport",
    "balancer": "Writing a balancer",
    "health": "Writing a health check",
    "snapshot": "Writing a snapshot provider",
    "notifier": "Writing a notifier",
    "metrics": "Writing a metric source",
}


def example(heading: str) -> str:
    """The (single) python code block of a ``### heading`` section."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n### {heading}\n")
    end = text.find("\n## ", start + 1)
    nxt = text.find("\n### ", start + 1)
    end = min(e for e in (end, nxt, len(text)) if e != -1)
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.DOTALL)
    assert len(blocks) == 1, f"section {heading!r} should have one python example"
    return blocks[0]


@pytest.fixture
def load(upgrader_plugins, register_temp_plugin):
    """Execute a section's example as a module and register it as a plugin."""

    def load_example(category: str, kind: str, settings: dict, context=None):
        module = types.ModuleType(f"docs_example_{category}")
        exec(compile(example(SECTIONS[category]), f"PLUGINS.md: {SECTIONS[category]}",
                     "exec"), module.__dict__)
        register_temp_plugin(module, name=f"docs-{category}")
        factory = upgrader_plugins.lookup(category, kind)
        assert factory is not None and factory.description
        provider = upgrader_plugins.create(category, ProviderSpec(kind, settings),
                                           context or ProviderContext())
        assert isinstance(provider, PROTOCOLS[category])
        return provider

    return load_example


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


def test_every_category_has_an_example():
    assert set(SECTIONS) == set(PROTOCOLS)
    for heading in SECTIONS.values():
        assert "@hookimpl" in example(heading)


def test_transport_example(load, tmp_path):
    # a stand-in for the docker CLI: `FAKE exec CONTAINER ARGV...` runs ARGV here
    fake = tmp_path / "fake-docker"
    fake.write_text('#!/bin/sh\nshift 2\nexec "$@"\n')
    fake.chmod(0o755)
    transport = load("transport", "docker-exec", {"docker": str(fake), "max_parallel": 2})
    host = Host("web-01")

    async def scenario():
        result = await transport.run(host, ["echo", "hello"])
        assert result == CommandResult(0, "hello\n", "")
        assert (await transport.run(host, ["false"], check=False)).exit_status == 1
        with pytest.raises(TransportError) as info:
            await transport.run(host, ["sh", "-c", "echo oops >&2; exit 3"])
        assert (info.value.host, info.value.exit_status, info.value.stderr) == (
            "web-01", 3, "oops\n")
        with pytest.raises(CommandTimeout):
            await transport.run(host, ["sleep", "5"], timeout=0.2)
        outs = await asyncio.gather(*(transport.run(host, ["echo", str(i)]) for i in range(6)))
        assert [o.stdout for o in outs] == [f"{i}\n" for i in range(6)]
        await transport.aclose()

    asyncio.run(scenario())
    with pytest.raises(ConfigError):
        load("transport", "docker-exec", {"max_parallel": 0})


def test_balancer_example(load):
    backends: dict[str, dict] = {}

    async def put(request):
        name = request.match_info["name"]
        backends[name] = {"name": name, **await request.json()}
        return web.Response(status=204)

    async def patch(request):
        backends[request.match_info["name"]].update(await request.json())
        return web.Response(status=204)

    async def delete(request):
        backends.pop(request.match_info["name"])
        return web.Response(status=204)

    async def listing(request):
        return web.json_response(list(backends.values()))

    async def drained(request):
        return web.json_response({"inflight": 0})

    async def stats(request):
        return web.json_response({n: {"requests": 10, "errors": 1} for n in backends})

    app = web.Application()
    app.router.add_get("/backends", listing)
    app.router.add_put("/backends/{name}", put)
    app.router.add_patch("/backends/{name}", patch)
    app.router.add_delete("/backends/{name}", delete)
    app.router.add_post("/backends/{name}/wait-drained", drained)
    app.router.add_get("/stats", stats)

    async def scenario():
        runner, url = await serve(app)
        try:
            balancer = load("balancer", "acme", {"url": url})
            await balancer.set_backend("web-01", address="127.0.0.1", port=9001, pool="1.0")
            await balancer.set_backend_state("web-01", "drain")
            assert await balancer.wait_drained("web-01", 5.0) == 0
            state = await balancer.state()
            assert state.backends["web-01"].state == "drain"
            assert state.backends["web-01"].pool == "1.0"
            stats = await balancer.stats()
            assert (stats["web-01"].requests, stats["web-01"].errors) == (10, 1)
            with pytest.raises(BalancerError, match="pools"):
                await balancer.set_split({"1.0": 50, "1.1": 50})
            await balancer.remove_backend("web-01")
            assert (await balancer.state()).backends == {}
            with pytest.raises(BalancerError, match="HTTP 404"):
                await balancer._call("GET", "/nope")
            await balancer.aclose()
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_health_check_example(load):
    async def scenario():
        async def banner(reader, writer):
            writer.write(b"OK ready\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(banner, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            check = load("health", "banner", {"timeout": 1.0})
            assert (await check.check(Host("a", port=port))).ok
            result = await check.check(Host("a", port=1), port=free_port())
            assert not result.ok and "cannot connect" in result.detail
            assert not (await check.check(Host("a"))).ok        # no port at all
            await check.aclose()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_snapshot_example(load):
    datasets: dict[str, list[str]] = {}

    def zfs(host, argv):
        """The zfs commands the example sends, answered as zfs would (through the transport)."""
        if argv[0] != "zfs":
            return None
        verb, target = argv[1], argv[-1]
        dataset, _, snap = target.partition("@")
        if verb == "list":
            return CommandResult(0, "".join(f"{target}@{s}\n" for s in datasets.get(target, [])))
        if verb == "snapshot":
            datasets.setdefault(dataset, []).append(snap)
        elif verb == "destroy":
            if snap not in datasets.get(dataset, []):
                return CommandResult(1, "", f"could not find snapshot '{target}'")
            datasets[dataset].remove(snap)
        return CommandResult(0)

    transport = NoopTransport(responder=zfs)
    snapshot = load("snapshot", "zfs", {"dataset": "tank/{host}", "keep": 2},
                    ProviderContext(transport=transport))
    host = Host("web-01")

    async def scenario():
        ids = [await snapshot.create(host, "pre-1.5.0") for _ in range(3)]
        assert ids == ["pre-1.5.0-1", "pre-1.5.0-2", "pre-1.5.0-3"]
        assert datasets["tank/web-01"] == ["pre-1.5.0-2", "pre-1.5.0-3"]     # keep = 2
        await snapshot.revert(host, "pre-1.5.0-3")
        assert ["zfs", "rollback", "-r", "tank/web-01@pre-1.5.0-3"] in [
            list(c.argv) for c in transport.calls]
        with pytest.raises(SnapshotError) as info:
            await snapshot.revert(host, "pre-1.5.0-1")
        assert info.value.host == "web-01"
        with pytest.raises(SnapshotError, match="could not find"):
            await snapshot.delete(host, "pre-1.5.0-1")
        await snapshot.aclose()

    asyncio.run(scenario())
    with pytest.raises(ConfigError):
        load("snapshot", "zfs", {"dataset": "tank/{host}"})     # no transport in the context


def test_notifier_example(load):
    received: list[dict] = []

    async def hook(request):
        received.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)

    async def scenario():
        runner, url = await serve(app)
        try:
            notifier = load("notifier", "chat", {"webhook_url": url + "/hook"})
            for i, kind in enumerate(["host_phase", "host_failed", "rollout_finished"]):
                await notifier.notify(Event(kind, 0.0, "r-1", i, {"host": "web-01"}))
            await notifier.aclose()
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
    assert [r["text"].split(":")[0] for r in received] == ["host_failed", "rollout_finished"]


def test_metric_source_example(load, upgrader_plugins):
    values = {("errors", "web-01"): 0.5, ("errors", "web-02"): 4.0, ("errors", "web-03"): 0.25}

    async def value(request):
        key = (request.query["query"], request.query["host"])
        if key not in values:
            return web.json_response({"error": "unknown"}, status=404)
        return web.json_response({"value": values[key]})

    app = web.Application()
    app.router.add_get("/value", value)
    window = MetricWindow(0.0, 10.0, ("web-02",), ("web-01", "web-03"), "1.1.0", "1.0.0")

    async def scenario():
        runner, url = await serve(app)
        try:
            source = load("metrics", "jsonquery", {"url": url})
            samples = await source.collect(MetricSpec("errors", "jsonquery", "errors"), window)
            assert (samples.canary, samples.baseline) == ((4.0,), (0.5, 0.25))
            with pytest.raises(MetricSourceError) as info:       # the server answers 404
                await source.collect(MetricSpec("latency", "jsonquery", "latency"), window)
            assert info.value.host == "web-02"
            with pytest.raises(ConfigError, match="needs a query"):
                source.check(MetricSpec("empty", "jsonquery"))
            await source.aclose()
        finally:
            await runner.cleanup()
        closed = upgrader_plugins.create("metrics", ProviderSpec(
            "jsonquery", {"url": f"http://127.0.0.1:{free_port()}", "timeout": 2.0}))
        with pytest.raises(MetricSourceError, match="ClientConnectorError"):
            await closed.collect(MetricSpec("errors", "jsonquery", "errors"), window)
        await closed.aclose()

    asyncio.run(scenario())
    with pytest.raises(ConfigError, match="http"):
        upgrader_plugins.create("metrics", ProviderSpec("jsonquery", {"url": "ftp://example"}))
