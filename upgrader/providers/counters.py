"""The balancer's counters as metric samples: the reader behind the built-in ``balancer``
metric source (registered in ``providers/balancer_metrics.py``), and the one the engine uses
when it was given no metric sources (a ``Providers`` built by hand, as tests do).

It satisfies ``MetricSource`` and knows a balancer only through the ``Balancer`` protocol (and
its optional ``PoolStatsReader`` summary), so it sits with the contracts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import BalancerError, ConfigError, MetricSourceError
from .base import (
    LATENCY_BUCKETS,
    BackendStats,
    Balancer,
    MetricSamples,
    MetricWindow,
    PoolStatsReader,
)

#: the figures the ``balancer`` source reads (``query``), and the kind each one is
FIGURES: dict[str, str] = {"error_rate": "proportion", "p95_latency": "value",
                           "latency": "value"}
#: at most this many latency observations per side and window (one per request, from the
#: histogram's bucket bounds); more are thinned evenly, keeping the distribution's shape
MAX_OBSERVATIONS = 5000


def _delta(previous: Mapping[str, BackendStats], current: Mapping[str, BackendStats],
           names: Iterable[str]) -> tuple[int, int, list[int]]:
    """Requests, errors and latency-bucket counts of ``names`` between two readings."""
    requests = errors = 0
    buckets = [0] * len(LATENCY_BUCKETS)
    for name in names:
        now = current.get(name)
        if now is None:
            continue
        before = previous.get(name)
        if before is None or before.requests > now.requests:   # new or reset backend
            before = BackendStats(0, 0, tuple(0 for _ in LATENCY_BUCKETS))
        requests += now.requests - before.requests
        errors += now.errors - before.errors
        buckets = [total + (a - b if a > b else 0) for total, a, b in
                   zip(buckets, now.latency_buckets, before.latency_buckets)]
    return requests, errors, buckets


def observations(buckets: list[int], limit: int = MAX_OBSERVATIONS) -> tuple[float, ...]:
    """One value per request: the upper bound of its latency bucket (thinned to ``limit``)."""
    total = sum(buckets)
    if total == 0:
        return ()
    step = max(1.0, total / limit)
    values: list[float] = []
    position = 0.0
    seen = 0
    for bound, count in zip(LATENCY_BUCKETS, buckets):
        seen += count
        while position < seen:
            values.append(float(bound))
            position += step
    return tuple(values)


class BalancerCounters:
    """``MetricSource`` over a balancer's cumulative counters: each ``collect`` reads them and
    returns what changed since the previous reading (the first reading only primes). Several
    metrics over the same window share one reading."""

    def __init__(self, balancer: Balancer | None) -> None:
        self.balancer = balancer
        self._pools = balancer if isinstance(balancer, PoolStatsReader) else None
        self._readings: dict[bool, Mapping[str, BackendStats]] = {}
        self._window: tuple[Any, ...] | None = None
        self._pair: tuple[Mapping[str, BackendStats] | None, Mapping[str, BackendStats]] | None \
            = None

    def check(self, metric: Any) -> None:
        query = metric.query
        if not isinstance(query, str) or query not in FIGURES:
            raise ConfigError(f"metric {metric.name!r}: the balancer source reads "
                              f"{', '.join(FIGURES)}, not {query!r}", key="query")
        if FIGURES[query] != metric.kind:
            raise ConfigError(f"metric {metric.name!r}: the balancer's {query} is a "
                              f"{FIGURES[query]} metric, not {metric.kind!r}", key="kind")
        if self.balancer is None:
            raise ConfigError(f"metric {metric.name!r}: the balancer source needs the "
                              f"fleet's balancer", key="source")

    async def _read(self, window: MetricWindow) -> tuple[
            Mapping[str, BackendStats] | None, Mapping[str, BackendStats], bool]:
        pools = self._pools is not None and window.canary_pool is not None
        key = (window.start, window.end, window.canary, window.baseline, window.canary_pool,
               window.baseline_pool)
        if key == self._window and self._pair is not None:
            return self._pair[0], self._pair[1], pools
        assert self.balancer is not None
        try:
            if pools:
                assert self._pools is not None
                current = dict(await self._pools.pool_stats())
            else:
                current = dict(await self.balancer.stats())
        except BalancerError as exc:
            raise MetricSourceError(f"balancer counters: {exc}") from exc
        previous = self._readings.get(pools)
        self._readings[pools] = current
        self._window, self._pair = key, (previous, current)
        return previous, current, pools

    async def collect(self, metric: Any, window: MetricWindow) -> MetricSamples:
        previous, current, pools = await self._read(window)
        if previous is None:
            return MetricSamples(detail="first reading of the balancer's counters")
        if pools:
            canary_names: tuple[str, ...] = (window.canary_pool,) if window.canary_pool else ()
            baseline_names: tuple[str, ...] = \
                (window.baseline_pool,) if window.baseline_pool else ()
        else:
            canary_names, baseline_names = window.canary, window.baseline
        n_req, n_err, n_buckets = _delta(previous, current, canary_names)
        o_req, o_err, o_buckets = _delta(previous, current, baseline_names)
        if metric.query == "error_rate":
            return MetricSamples(
                canary_counts=(n_err, n_req) if n_req else None,
                baseline_counts=(o_err, o_req) if o_req else None,
                detail=f"{n_err} errors in {n_req} requests; old release {o_err} in {o_req}")
        return MetricSamples(
            canary=observations(n_buckets), baseline=observations(o_buckets),
            canary_counts=(0, n_req) if n_req else None,
            baseline_counts=(0, o_req) if o_req else None,
            detail=f"latency of {n_req} requests; old release {o_req}")

    async def aclose(self) -> None:
        return None
