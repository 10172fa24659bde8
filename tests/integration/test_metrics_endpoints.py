"""``/metrics`` in the Prometheus text format (issue 14): the built-in balancer's (a real
balancer process, behind its admin token) and the lab app's (its aiohttp app served for real),
parsed with prometheus-client's own parser. Counts, never timings."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_balancer import TOKEN, BackendFarm, BalancerProcess, traffic
from upgrader.lab.app import make_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, keyed by (name, set of labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def key(name: str, *labels: tuple[str, str]) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels)


@pytest.fixture(scope="module")
def farm() -> Iterator[BackendFarm]:
    farm = BackendFarm()
    yield farm
    farm.close()


def scrape(url: str, token: str | None = TOKEN) -> tuple[int, str, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, "", ""


def test_balancer_metrics_by_backend_pool_and_status(tmp_path: Path, farm: BackendFarm) -> None:
    balancer = BalancerProcess(tmp_path)
    try:
        balancer.add("a", farm.start("a"), pool="old")
        balancer.add("b", farm.start("b"), pool="new", weight=0)    # serving nothing
        asyncio.run(traffic(balancer.url, 20))
        asyncio.run(traffic(balancer.url, 3, path="/?status=503"))
        status, _, _ = scrape(balancer.admin_url + "/metrics", token=None)
        assert status == 401          # the admin API's token guards the metrics too
        status, content_type, text = scrape(balancer.admin_url + "/metrics")
    finally:
        balancer.kill()
    assert status == 200 and content_type.startswith("text/plain")
    got = samples(text)
    a_labels = (("backend", "a"), ("pool", "old"))
    assert got[key("upgrader_balancer_requests_total", *a_labels, ("status", "200"))] == 20
    assert got[key("upgrader_balancer_requests_total", *a_labels, ("status", "503"))] == 3
    assert got[key("upgrader_balancer_request_duration_seconds_count", *a_labels)] == 23
    assert got[key("upgrader_balancer_request_duration_seconds_bucket", *a_labels,
                   ("le", "+Inf"))] == 23
    assert got[key("upgrader_balancer_request_duration_seconds_sum", *a_labels)] > 0
    assert got[key("upgrader_balancer_pool_requests_total", ("pool", "old"))] == 23
    assert got[key("upgrader_balancer_pool_errors_total", ("pool", "old"))] == 3
    assert key("upgrader_balancer_requests_total",
               ("backend", "b"), ("pool", "new"), ("status", "200")) not in got


def test_lab_app_metrics_by_status_and_release() -> None:
    async def go() -> str:
        app = make_app(host="web-1", slot="default", version="1.1.0-bad", variant="errors")
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]   # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(20):
                    async with session.get(f"http://127.0.0.1:{port}/page") as response:
                        await response.read()
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    await response.read()
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 200
                    return await response.text()
        finally:
            await runner.cleanup()

    got = samples(asyncio.run(go()))
    labels = (("host", "web-1"), ("release", "1.1.0-bad"))
    # the -errors variant fails 3 requests in 10; health checks and scrapes are not counted
    assert got[key("upgrader_app_requests_total", *labels, ("status", "500"))] == 6
    assert got[key("upgrader_app_requests_total", *labels, ("status", "200"))] == 14
    assert got[key("upgrader_app_request_duration_seconds_count", *labels)] == 20
