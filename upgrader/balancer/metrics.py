"""The built-in balancer's ``/metrics`` in the Prometheus text format, built from the table's
own counters when scraped: the data path pays for nothing but those counters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..providers.base import LATENCY_BUCKETS

if TYPE_CHECKING:
    from .server import Table

#: bucket bounds as Prometheus writes them (``le`` labels)
_BOUNDS = tuple("+Inf" if b == float("inf") else repr(float(b)) for b in LATENCY_BUCKETS)


class TableCollector:
    """A prometheus-client collector over a balancer ``Table``."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def describe(self) -> list[Any]:
        return []      # unchecked collector: the families are built when scraped

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        table = self.table
        requests = CounterMetricFamily(
            "upgrader_balancer_requests", "Requests answered by a backend, by HTTP status "
            "(502/504: the backend failed or timed out)", labels=["backend", "pool", "status"])
        latency = HistogramMetricFamily(
            "upgrader_balancer_request_duration_seconds",
            "Seconds from a request's arrival to its backend's whole answer",
            labels=["backend", "pool"])
        pool_requests = CounterMetricFamily(
            "upgrader_balancer_pool_requests", "Requests each pool served (credited to the "
            "pool that served them)", labels=["pool"])
        pool_errors = CounterMetricFamily(
            "upgrader_balancer_pool_errors", "Answers of status 500 or above, per pool",
            labels=["pool"])
        for backend in list(table.backends.values()):
            for status, count in sorted(backend.statuses.items()):
                requests.add_metric([backend.name, backend.pool, str(status)], count)
            latency.add_metric([backend.name, backend.pool], _cumulative(backend.latency),
                               backend.latency_sum)
        for pool, tally in sorted(table.pool_tallies.items()):
            pool_requests.add_metric([pool], tally.requests)
            pool_errors.add_metric([pool], tally.errors)
        counters = table.counters
        other = CounterMetricFamily(
            "upgrader_balancer_answers", "Answers the balancer gave itself, by reason",
            labels=["reason"])
        other.add_metric(["maintenance"], counters.maintenance_responses)
        other.add_metric(["no_backend"], counters.no_backend)
        retries = CounterMetricFamily("upgrader_balancer_retries",
                                      "Requests retried on another backend")
        retries.add_metric([], counters.retries)
        yield from (requests, latency, pool_requests, pool_errors, other, retries)


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    total = 0
    buckets = []
    for bound, count in zip(_BOUNDS, counts, strict=True):
        total += count
        buckets.append((bound, float(total)))
    return buckets


class TableMetrics:
    """One registry holding the table's collector; ``render()`` gives the scrape's body."""

    def __init__(self, table: Table) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(TableCollector(table))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
