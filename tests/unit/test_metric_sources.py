"""The built-in ``prometheus`` and ``command`` metric sources: settings and queries checked
before a rollout, error shapes (an aiohttp server stands in for the answers Prometheus gives
when things go wrong; its real behaviour is tested against the binary in
tests/integration/test_prometheus_source.py), and commands run for real."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest
from aiohttp import web

from upgrader.errors import ConfigError, MetricSourceError
from upgrader.model import MetricSpec, ProviderSpec
from upgrader.plugins import Plugins
from upgrader.providers.base import MetricWindow
from upgrader.providers.command_metrics import CommandSource
from upgrader.providers.prometheus import PrometheusSource, promql_duration, promql_hosts

WINDOW = MetricWindow(start=1000.0, end=1030.0, canary=("app-3",), baseline=("app-1", "app-2"),
                      canary_release="v2", baseline_release="v1", canary_pool="green",
                      baseline_pool="blue")


def create(kind, settings):
    return Plugins().create("metrics", ProviderSpec(kind, settings))


def test_both_sources_are_registered_through_the_hook():
    plugins = Plugins()
    assert {"prometheus", "command"} <= set(plugins.names("metrics"))
    assert isinstance(create("prometheus", {"url": "http://127.0.0.1:9090"}), PrometheusSource)
    assert isinstance(create("command", {}), CommandSource)


def test_prometheus_settings_are_typed():
    assert create("prometheus", {}).url == "http://127.0.0.1:9090"
    with pytest.raises(ConfigError, match="timeout"):
        create("prometheus", {"timeout": "soon"})


@pytest.mark.parametrize(("settings", "metric", "message"), [
    ({"url": "localhost:9090"}, MetricSpec("errs", "prometheus", "up"),
     "metric errs: prometheus url must start with http"),
    ({"url": "http://p:9090", "timeout": 0.0}, MetricSpec("errs", "prometheus", "up"),
     "metric errs: prometheus timeout must be a positive"),
    ({"url": "http://p:9090", "step": -1.0}, MetricSpec("errs", "prometheus", "up"),
     "metric errs: prometheus step"),
    ({"url": "http://p:9090"}, MetricSpec("errs", "prometheus", ""),
     "metric errs: the prometheus source needs a PromQL query"),
    ({"url": "http://p:9090"}, MetricSpec("errs", "prometheus", ("a", "b")),
     "two queries .* are for kind = \"proportion\""),
    ({"url": "http://p:9090"}, MetricSpec("errs", "prometheus", ("a", "b", "c"),
                                          kind="proportion"), "not 3"),
    ({"url": "http://p:9090", "step": 5.0},
     MetricSpec("errs", "prometheus", ("a", "b"), kind="proportion"), "drop step"),
    ({"url": "http://p:9090"}, MetricSpec("errs", "prometheus", 'up{instance=~"{hosts}"}'),
     r"metric errs: unknown placeholder \{hosts\}"),
])
def test_prometheus_check_refuses_with_the_metric_named(settings, metric, message):
    source = create("prometheus", settings)
    with pytest.raises(ConfigError, match=message) as caught:
        source.check(metric)
    assert caught.value.key.startswith("verify.metrics.")


def test_prometheus_check_accepts_promql_label_matchers_and_placeholders():
    source = create("prometheus", {"url": "http://p:9090"})
    source.check(MetricSpec("errs", "prometheus",
                            ('sum(increase(req_total{host=~"{host}",status=~"5.."}[{interval}]))',
                             'sum(increase(req_total{host=~"{host}"}[{interval}]))'),
                            kind="proportion"))


def test_templates():
    assert promql_hosts(["app-1", "app.2"]) == "app\\\\-1|app\\\\.2"
    assert promql_hosts([]) == "^$"
    assert promql_duration(30.0) == "30s"
    assert promql_duration(9.2) == "10s"
    assert promql_duration(0.1) == "1s"


# ---------------------------------------------------------------------------------------------
# Prometheus's error shapes, served by a stand-in


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def serve(handler):
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def collect_from(handler, metric, **settings):
    seen = []

    async def recording(request):
        seen.append((request.path, dict(await request.post())))
        return await handler(request)

    runner, url = await serve(recording)
    source = PrometheusSource(url, **settings)
    try:
        return await source.collect(metric, WINDOW), seen
    finally:
        await source.aclose()
        await runner.cleanup()


def test_prometheus_query_error_quotes_prometheus_error_field():
    async def bad_data(request):
        return web.json_response({"status": "error", "errorType": "bad_data",
                                  "error": "1:5: parse error: unexpected end of input"},
                                 status=400)

    with pytest.raises(MetricSourceError, match="refused the query 'rate\\(x': bad_data: "
                                                "1:5: parse error"):
        asyncio.run(collect_from(bad_data, MetricSpec("m", "prometheus", "rate(x")))


def test_prometheus_http_error_names_status_and_body():
    async def gateway(request):
        return web.Response(status=502, text="<html>bad gateway</html>")

    with pytest.raises(MetricSourceError, match=r"HTTP 502 Bad Gateway .*bad gateway"):
        asyncio.run(collect_from(gateway, MetricSpec("m", "prometheus", "up")))


def test_prometheus_unreadable_answer():
    async def garbage(request):
        return web.json_response({"status": "success", "data": {"resultType": "string",
                                                                "result": [1, "x"]}})

    with pytest.raises(MetricSourceError, match="gives a string result"):
        asyncio.run(collect_from(garbage, MetricSpec("m", "prometheus", "up")))


def test_prometheus_unreachable_server():
    source = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout=2.0)

    async def go():
        try:
            await source.collect(MetricSpec("m", "prometheus", "up"), WINDOW)
        finally:
            await source.aclose()

    with pytest.raises(MetricSourceError, match="unreachable"):
        asyncio.run(go())


def test_prometheus_timeout():
    async def slow(request):
        await asyncio.sleep(5)
        return web.json_response({})

    with pytest.raises(MetricSourceError, match=r"no answer within 0\.2s"):
        asyncio.run(collect_from(slow, MetricSpec("m", "prometheus", "up"), timeout=0.2))


def test_prometheus_sends_each_side_its_own_rendered_query():
    async def answer(request):
        return web.json_response({"status": "success", "data": {
            "resultType": "vector", "result": [{"metric": {}, "value": [1030, "0.5"]},
                                               {"metric": {}, "value": [1030, "NaN"]}]}})

    metric = MetricSpec("m", "prometheus",
                        'x{host=~"{host}",release="{release}",pool="{pool}"}[{interval}]')
    samples, seen = asyncio.run(collect_from(answer, metric))
    assert samples.canary == (0.5,) and samples.baseline == (0.5,)   # NaN is no data
    queries = sorted(form["query"] for _, form in seen)
    assert queries == ['x{host=~"app\\\\-1|app\\\\-2",release="v1",pool="blue"}[30s]',
                       'x{host=~"app\\\\-3",release="v2",pool="green"}[30s]']
    assert {path for path, _ in seen} == {"/api/v1/query"}
    assert {form["time"] for _, form in seen} == {"1030.000"}


# ---------------------------------------------------------------------------------------------
# command

PY = sys.executable


def run_command(argv, metric_kind="value", **settings):
    source = CommandSource(**settings)
    metric = MetricSpec("m", "command", tuple(argv), kind=metric_kind)
    source.check(metric)
    return asyncio.run(source.collect(metric, WINDOW))


def test_command_per_side_number_and_templates():
    samples = run_command([PY, "-c", "import sys; print(len(sys.argv[1].split(',')) + "
                           "float(sys.argv[2]))", "{host}", "{interval}"])
    assert samples.canary == (31.0,) and samples.baseline == (32.0,)


def test_command_per_side_counts():
    samples = run_command([PY, "-c", "import sys, json; n = 1 if sys.argv[1] == 'v2' else 0; "
                           "print(json.dumps({'counts': [n, 10]}))", "{release}"], "proportion")
    assert samples.canary_counts == (1, 10) and samples.canary == (0.1,)
    assert samples.baseline_counts == (0, 10)


def test_command_once_for_both_sides():
    samples = run_command([PY, "-c", "print('{\"canary\": [1, 2], \"baseline\": "
                           "{\"samples\": [3], \"counts\": [1, 4]}}')"])
    assert samples.canary == (1.0, 2.0) and samples.canary_counts is None
    assert samples.baseline == (3.0,) and samples.baseline_counts == (1, 4)


def test_command_failure_quotes_stderr_tail():
    with pytest.raises(MetricSourceError, match=r"exit status 3; stderr: .*no such metric"):
        run_command([PY, "-c", "import sys; sys.stderr.write('x' * 2000 + 'no such metric');"
                     " sys.exit(3)", "{host}"])


def test_command_unreadable_output():
    with pytest.raises(MetricSourceError, match="neither a number nor JSON samples: 'hello'"):
        run_command([PY, "-c", "print('hello')", "{host}"])
    with pytest.raises(MetricSourceError, match=r"prints \{.canary.: \.\.\., .baseline."):
        run_command([PY, "-c", "print(1)"])
    with pytest.raises(MetricSourceError, match="counts must be"):
        run_command([PY, "-c", "print('{\"counts\": [5, 2]}')", "{host}"])


def test_command_timeout_kills_it():
    with pytest.raises(MetricSourceError, match=r"no answer within 0\.3s"):
        run_command([PY, "-c", "import time; time.sleep(30)", "{host}"], timeout=0.3)


def test_command_missing_program():
    with pytest.raises(MetricSourceError, match="cannot run"):
        run_command(["/nonexistent/probe", "{host}"])


def test_command_check():
    source = CommandSource()
    with pytest.raises(ConfigError, match="metric m: the command source's query is an argument"):
        source.check(MetricSpec("m", "command", "./probe {host}"))
    with pytest.raises(ConfigError, match="needs a command"):
        source.check(MetricSpec("m", "command", ()))
    with pytest.raises(ConfigError, match=r"unknown placeholder \{rel\}"):
        source.check(MetricSpec("m", "command", ("./probe", "{rel}")))
    with pytest.raises(ConfigError, match="timeout"):
        CommandSource(timeout=-1).check(MetricSpec("m", "command", ("./probe",)))


def test_balancer_counters_share_one_reading_between_concurrent_metrics():
    """The engine collects a round's metrics at once (asyncio.gather). Two readings raced:
    the later one counted "since the previous reading", which was the other metric's reading
    a moment before, so p95_latency saw 0 requests while error_rate saw them all, and a good
    canary rolled back on "no data" (the README tour's failure)."""
    from upgrader.providers.base import LATENCY_BUCKETS, BackendStats, BalancerCounters

    class Counting:                       # cumulative counters: ``served`` requests so far
        def __init__(self) -> None:
            self.reads = self.served = 0

        async def stats(self):
            await asyncio.sleep(0)        # a real balancer answers over a socket
            self.reads += 1
            n = self.served
            buckets = tuple(n if i == 0 else 0 for i in range(len(LATENCY_BUCKETS)))
            return {"app-1": BackendStats(n, 0, buckets), "app-3": BackendStats(n, n // 100,
                                                                                buckets)}

    window = MetricWindow(start=1000.0, end=1030.0, canary=("app-3",), baseline=("app-1",),
                          canary_release="v2", baseline_release="v1")
    later = MetricWindow(start=1030.0, end=1060.0, canary=("app-3",), baseline=("app-1",),
                         canary_release="v2", baseline_release="v1")
    errors = MetricSpec("error_rate", query="error_rate", kind="proportion")
    latency = MetricSpec("p95_latency", query="p95_latency", kind="value")
    balancer = Counting()
    source = BalancerCounters(balancer)  # type: ignore[arg-type]

    async def main():
        balancer.served = 100
        await source.collect(errors, window)                      # primes
        balancer.served = 200                                     # 100 requests this round
        return await asyncio.gather(source.collect(errors, later),
                                    source.collect(latency, later))

    got_errors, got_latency = asyncio.run(main())
    assert got_errors.canary_counts == (1, 100)
    assert got_latency.canary_counts == (0, 100)
    assert len(got_latency.canary) > 0
    assert balancer.reads == 2                                  # one reading per window
def test_balancer_metrics_of_one_window_share_one_reading_when_collected_together():
    """The judge gathers its metrics concurrently; a balancer answering over the network
    yields while it reads: both metrics must still see the window's requests (the second one
    saw none when each made its own reading)."""
    from upgrader.providers.base import BalancerCounters
    from upgrader.providers.noop import NoopBalancer

    class NetworkBalancer(NoopBalancer):
        async def stats(self):
            await asyncio.sleep(0.01)          # an HTTP round trip
            return await super().stats()

    async def main():
        balancer = NetworkBalancer()
        await balancer.set_backend("app-1", address="127.0.0.1", port=1, pool="v1")
        await balancer.set_backend("app-3", address="127.0.0.1", port=3, pool="v2")
        source = BalancerCounters(balancer)
        errors = MetricSpec("error_rate", "balancer", "error_rate", kind="proportion", max=1)
        latency = MetricSpec("p95_latency", "balancer", "p95_latency", kind="value")
        window = MetricWindow(0.0, 1.0, ("app-3",), ("app-1",), "v2", "v1")
        await asyncio.gather(source.collect(errors, window), source.collect(latency, window))
        balancer.record("app-3", errors=2, latencies=[0.3] * 20)
        balancer.record("app-1", latencies=[0.003] * 50)
        window = MetricWindow(1.0, 2.0, ("app-3",), ("app-1",), "v2", "v1")
        return await asyncio.gather(source.collect(errors, window),
                                    source.collect(latency, window))

    got_errors, got_latency = asyncio.run(main())
    assert got_errors.canary_counts == (2, 20) and got_errors.baseline_counts == (0, 50)
    assert len(got_latency.canary) == 20 and len(got_latency.baseline) == 50
