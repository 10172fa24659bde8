"""The ``prometheus`` metric source against a real Prometheus server, started by
``Lab.up(prometheus=True)`` (Debian's ``prometheus`` package) scraping the lab's apps and its
built-in balancer each second: instant and range queries templated per side, counts for a
proportion, Prometheus's own error for a bad query, and ``lab down`` stopping the server."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from upgrader.errors import MetricSourceError
from upgrader.lab import hostctl
from upgrader.lab.layout import LabLayout
from upgrader.lab.manager import Lab, free_base_port
from upgrader.model import MetricSpec
from upgrader.providers.base import MetricWindow
from upgrader.providers.prometheus import PrometheusSource

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="the prometheus server binary is not installed (apt-get install prometheus)")

REQUESTS = ('sum(increase(upgrader_app_requests_total{host=~"{host}",release="{release}"}'
            '[{interval}]))')


def window(hosts: tuple[str, ...], other: tuple[str, ...], seconds: float = 10.0) -> MetricWindow:
    now = time.time()
    return MetricWindow(start=now - seconds, end=now, canary=hosts, baseline=other,
                        canary_release="1.0.0", baseline_release="1.0.0")


@needs_prometheus
def test_prometheus_source_against_the_lab(tmp_path: Path) -> None:
    layout = LabLayout(dir=tmp_path / "lab", hosts=3, base_port=free_base_port(),
                       base_release="1.0.0")
    lab = Lab(layout)

    async def scenario() -> None:
        state = await lab.up(traffic_rps=60, users=30, prometheus=True)
        url = state["urls"]["prometheus"]
        pid = state["pids"]["prometheus"]
        assert url.startswith("http://127.0.0.1:")
        assert "prometheus" in lab.running_pids()
        source = PrometheusSource(url, timeout=5.0)
        try:
            # up returns once each serving app was scraped twice: a rollout started at once
            # reads both sides of its first window (a 3 s increase() needs two samples)
            scrapes = await source.query(
                'count_over_time(upgrader_app_requests_total{status="200"}[10s])',
                window((), ()))
            assert len(scrapes) == 3 and min(scrapes) >= 2, scrapes
            metric = MetricSpec("errors", "prometheus", (
                REQUESTS.replace('release="{release}"', 'release="{release}",status=~"5.."'),
                REQUESTS), kind="proportion")
            source.check(metric)
            # the apps and the balancer are scraped each second: poll (bounded) for counts
            deadline = time.monotonic() + 60
            while True:
                samples = await source.collect(metric, window(("web-01",), ("web-02", "web-03")))
                if (samples.canary_counts and samples.baseline_counts
                        and samples.canary_counts[1] >= 10 and samples.baseline_counts[1] >= 10):
                    break
                assert time.monotonic() < deadline, f"no counts from prometheus: {samples}"
                await asyncio.sleep(0.5)
            assert samples.canary_counts[0] == 0 and samples.baseline_counts[0] == 0

            # the balancer's /metrics is scraped through its admin token
            up = await source.query('up{job="balancer"}', window((), ()))
            assert up == [1.0]
            served = await source.query(
                'sum(upgrader_balancer_requests_total{backend=~"web\\\\-01"})', window((), ()))
            assert served and served[0] > 0

            # a range query: every point of every series is a sample
            ranged = PrometheusSource(url, step=1.0)
            try:
                per_host = MetricSpec("rate", "prometheus",
                                      'sum by (host) (rate(upgrader_app_requests_total'
                                      '{host=~"{host}"}[5s]))')
                ranged.check(per_host)
                deadline = time.monotonic() + 30
                while True:      # a point each second once the 5 s rate has two scrapes
                    got = await ranged.collect(per_host, window(
                        ("web-01",), ("web-02", "web-03"), seconds=5))
                    if len(got.canary) >= 4:
                        break
                    assert time.monotonic() < deadline, f"too few points: {got}"
                    await asyncio.sleep(0.5)
                assert len(got.canary) <= 6                  # one series, step 1 s over 5 s
                assert len(got.baseline) >= 2 * len(got.canary) - 2   # two series
            finally:
                await ranged.aclose()

            # Prometheus's own error for a query it cannot parse
            with pytest.raises(MetricSourceError, match=r"refused the query .*bad_data"):
                await source.collect(MetricSpec("bad", "prometheus", "sum(rate(x[{interval}])"),
                                     window(("web-01",), ()))
        finally:
            await source.aclose()
            await lab.down()
        assert not hostctl.pid_alive(pid), "lab down leaves prometheus running"
        assert (layout.dir / "prometheus" / "data").is_dir()   # its data in the lab dir

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(lab.down())
