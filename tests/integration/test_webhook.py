"""The ``webhook`` notifier against a real local aiohttp server: events arrive in order as JSON
with the configured headers; a down, hanging or failing endpoint never blocks the rollout and
never puts a secret in the logs."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from aiohttp import web

from upgrader import strategies
from upgrader.engine.core import Engine
from upgrader.errors import ConfigError
from upgrader.events import Event, Outcome
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
from upgrader.plugins import Plugins
from upgrader.providers.base import Notifier, ProviderContext
from upgrader.rollout import open_providers

pytestmark = pytest.mark.integration

TOKEN = "Bearer s3cr3t-t0ken-xyz"
PATH_SECRET = "T0PSECRET-PATH-9f8e7d"


class Endpoint:
    """A real HTTP server on 127.0.0.1 that records what it is sent; ``statuses`` are answered
    in turn (then 200)."""

    def __init__(self, statuses=()):
        self.requests: list[dict] = []
        self.statuses = list(statuses)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.path, "headers": dict(request.headers),
                              "body": await request.json()})
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)

    async def __aenter__(self) -> Endpoint:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hooks/{PATH_SECRET}"
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def bodies(self) -> list:
        return [r["body"] for r in self.requests]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/{PATH_SECRET}"


def webhook(url: str, **settings) -> Notifier:
    return Plugins().create("notifier", ProviderSpec("webhook", {"url": url, **settings}),
                            ProviderContext())


def events(n: int, kind: str = "host_done") -> list[Event]:
    return [Event(kind, 1700000000.0 + i, "r-1", i + 1, {"host": f"web-{i:02d}"})
            for i in range(n)]


def run(coro):
    return asyncio.run(coro)


# -------------------------------------------------------------------------------------------


def test_events_arrive_in_order_as_json_with_the_headers():
    async def scenario():
        async with Endpoint() as endpoint:
            notifier = webhook(endpoint.url, headers={"Authorization": TOKEN})
            assert isinstance(notifier, Notifier)
            sent = events(20)
            for event in sent:
                await notifier.notify(event)
            await notifier.aclose()          # flushes
            return endpoint, sent, notifier

    endpoint, sent, notifier = run(scenario())
    assert endpoint.bodies == [e.to_json() for e in sent]
    assert endpoint.bodies[0] == {"kind": "host_done", "ts": 1700000000.0, "rollout": "r-1",
                                  "seq": 1, "host": "web-00"}
    first = endpoint.requests[0]
    assert first["headers"]["Authorization"] == TOKEN
    assert first["headers"]["Content-Type"] == "application/json"
    assert first["headers"]["User-Agent"].startswith("upgrader-webhook/")
    assert first["path"] == f"/hooks/{PATH_SECRET}"
    assert (notifier.sent, notifier.dropped) == (20, 0)


def test_headers_from_the_environment(monkeypatch):
    monkeypatch.setenv("WEBHOOK_TOKEN_FOR_TEST", TOKEN)

    async def scenario():
        async with Endpoint() as endpoint:
            async with webhook(endpoint.url,
                               headers_env={"Authorization": "WEBHOOK_TOKEN_FOR_TEST"}) as n:
                await n.notify(events(1)[0])
            return endpoint

    assert run(scenario()).requests[0]["headers"]["Authorization"] == TOKEN


def test_batches_keep_the_order_and_never_exceed_the_batch_size():
    async def scenario():
        async with Endpoint() as endpoint:
            notifier = webhook(endpoint.url, batch=7)
            sent = events(50)
            for event in sent:            # queued faster than sent: batches form
                await notifier.notify(event)
            await notifier.aclose()
            return endpoint, sent

    endpoint, sent = run(scenario())
    assert all(isinstance(body, list) and 1 <= len(body) <= 7 for body in endpoint.bodies)
    assert [e for body in endpoint.bodies for e in body] == [e.to_json() for e in sent]
    assert len(endpoint.bodies) < 50


def test_events_filter_sends_only_the_chosen_kinds():
    async def scenario():
        async with Endpoint() as endpoint:
            async with webhook(endpoint.url, events=["rollout_finished", "host_failed"]) as n:
                for event in [*events(3, "host_phase"), *events(1, "host_failed"),
                              *events(2, "metrics"), *events(1, "rollout_finished")]:
                    await n.notify(event)
            return endpoint

    assert [b["kind"] for b in run(scenario()).bodies] == ["host_failed", "rollout_finished"]


def test_failed_posts_are_retried_with_backoff_then_delivered():
    async def scenario():
        async with Endpoint(statuses=[503, 500]) as endpoint:
            async with webhook(endpoint.url, retries=3, backoff=0.01) as notifier:
                await notifier.notify(events(1)[0])
            return endpoint, notifier

    endpoint, notifier = run(scenario())
    assert len(endpoint.requests) == 3               # 503, 500, then 200
    assert endpoint.bodies[0] == endpoint.bodies[2]
    assert (notifier.sent, notifier.dropped) == (1, 0)


def test_a_refused_event_is_dropped_without_retrying(caplog):
    async def scenario():
        async with Endpoint(statuses=[400]) as endpoint:
            async with webhook(endpoint.url, retries=5, backoff=0.01) as notifier:
                await notifier.notify(events(1)[0])
                await notifier.notify(events(2)[1])
            return endpoint, notifier

    with caplog.at_level(logging.WARNING, logger="upgrader_webhook"):
        endpoint, notifier = run(scenario())
    assert len(endpoint.requests) == 2                # no retry of the 400
    assert (notifier.sent, notifier.dropped) == (1, 1)
    assert "HTTP 400" in caplog.text


def test_a_down_endpoint_never_blocks_and_drops_with_a_warning(caplog):
    url = closed_port_url()

    async def scenario():
        notifier = webhook(url, headers={"Authorization": TOKEN}, retries=2, backoff=0.01)
        # 200 notifications return at once although nothing can be delivered
        await asyncio.wait_for(asyncio.gather(*(notifier.notify(e) for e in events(200))), 2.0)
        await asyncio.wait_for(notifier.aclose(), 5.0)
        return notifier

    with caplog.at_level(logging.DEBUG):
        notifier = run(scenario())
    assert notifier.sent == 0 and notifier.dropped == 200
    assert "dropped" in caplog.text and "3 attempt(s) failed" in caplog.text
    assert "127.0.0.1" in caplog.text                 # says which endpoint, redacted
    assert TOKEN not in caplog.text and "s3cr3t" not in caplog.text
    assert PATH_SECRET not in caplog.text


def test_a_hanging_endpoint_is_bounded_by_the_timeouts(caplog):
    async def scenario():
        hung: list[asyncio.StreamWriter] = []

        async def accept_and_say_nothing(reader, writer):
            hung.append(writer)                       # reads nothing, answers nothing

        server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/hooks/{PATH_SECRET}"
        notifier = webhook(url, headers={"Authorization": TOKEN}, timeout=0.2, retries=1,
                           backoff=0.01, flush_timeout=0.5)
        await asyncio.wait_for(asyncio.gather(*(notifier.notify(e) for e in events(50))), 2.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await notifier.aclose()
        took = loop.time() - started
        for writer in hung:
            writer.close()
        server.close()
        await server.wait_closed()
        return notifier, took

    with caplog.at_level(logging.DEBUG):
        notifier, took = run(scenario())
    assert took < 3.0                                  # flush_timeout (0.5 s) bounds aclose
    assert notifier.sent == 0 and notifier.dropped == 50
    assert "flush_timeout" in caplog.text
    assert TOKEN not in caplog.text and PATH_SECRET not in caplog.text


def test_a_full_queue_drops_new_events_with_a_warning(caplog):
    async def scenario():
        notifier = webhook(closed_port_url(), queue_size=5, retries=0, flush_timeout=1.0)
        for event in events(30):
            await notifier.notify(event)
        await notifier.aclose()
        return notifier

    with caplog.at_level(logging.WARNING, logger="upgrader_webhook"):
        notifier = run(scenario())
    assert notifier.dropped == 30
    assert "events are already waiting" in caplog.text


def test_a_rollout_with_a_dead_webhook_completes():
    hosts = tuple(Host(f"web-{i}", port=9000 + i) for i in range(1, 4))
    fleet = Fleet(
        name="webhook-test", hosts=hosts, releases=Releases("1.0.0", "1.1.0"),
        commands=Commands(install=("deploy", "{release}"), start=("start",), stop=("stop",)),
        transport=ProviderSpec("noop"), balancer=ProviderSpec("noop"),
        health=ProviderSpec("noop"), strategy=StrategySpec("rolling", None),
        verify=VerifySpec(for_=0.0, interval=0.05, no_data="pass", health=False),
        timing=Timing(host_upgrade=0.1, drain_timeout=1.0, health_timeout=1.0),
        notifiers=(ProviderSpec("webhook", {"url": closed_port_url(), "retries": 2,
                                            "backoff": 0.05, "flush_timeout": 0.5}),))

    async def scenario():
        providers = await open_providers(fleet, Plugins())   # as `upgrader run` builds them
        (notifier,) = providers.notifiers
        for host in hosts:
            await providers.balancer.set_backend(host.name, address=host.address,
                                                 port=host.port, pool="1.0.0")
        module = strategies.get("rolling")
        plan = module.compile(fleet, module.default_params())
        result = await asyncio.wait_for(Engine(fleet, plan, providers).run(), 30.0)
        await asyncio.wait_for(providers.aclose(), 5.0)
        return result, notifier

    result, notifier = run(scenario())
    assert result.outcome is Outcome.COMPLETED
    assert notifier.sent == 0 and notifier.dropped > 0


@pytest.mark.parametrize(("settings", "key"), [
    ({"url": "ftp://example.org/x"}, "notifier.url"),
    ({"url": "http:///nohost"}, "notifier.url"),
    ({"url": "http://127.0.0.1/", "events": ["host_dnoe"]}, "notifier.events"),
    ({"url": "http://127.0.0.1/", "batch": 0}, "notifier.batch"),
    ({"url": "http://127.0.0.1/", "timeout": 0}, "notifier.timeout"),
    ({"url": "http://127.0.0.1/", "headers": {"X-Token": 5}}, "notifier.headers"),
    ({"url": "http://127.0.0.1/", "headers_env": {"X": "UPGRADER_NO_SUCH_VAR_42"}},
     "notifier.headers_env"),
])
def test_bad_settings_are_config_errors(settings, key):
    with pytest.raises(ConfigError) as info:
        Plugins().create("notifier", ProviderSpec("webhook", settings), ProviderContext())
    assert info.value.key == key


def test_a_bad_url_is_never_echoed():
    with pytest.raises(ConfigError) as info:
        webhook(f"ftp://user:{PATH_SECRET}@example.org/")
    assert PATH_SECRET not in str(info.value)
    assert PATH_SECRET not in repr(webhook(f"http://127.0.0.1/{PATH_SECRET}"))
