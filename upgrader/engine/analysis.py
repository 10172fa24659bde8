"""Traffic analysis: error rate and p95 latency of the upgraded hosts against the hosts still
on the old release, from two readings of the balancer's cumulative counters. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from ..events import Verdict
from ..model import MetricSpec
from ..providers.base import LATENCY_BUCKETS, BackendStats, MetricSamples, counter_delta


def percentile(buckets: list[int], q: float) -> float | None:
    """Upper bound of the bucket holding the q-quantile (None without samples)."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for bound, count in zip(LATENCY_BUCKETS, buckets):
        seen += count
        if seen >= rank:
            return bound
    return LATENCY_BUCKETS[-1]


def quantile(values: Iterable[float], q: float) -> float | None:
    """The q-quantile of ``values`` by rank (the value at ``ceil(q * n)``; as ``percentile``
    on a histogram), None without values."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def sample_value(metric: MetricSpec, samples: MetricSamples, side: str) -> float | None:
    """The figure of one side (``canary``/``baseline``): an error percent from counts, a
    p95 from latency observations (``p95_*`` metrics, the balancer's ``latency``), else the
    mean of the observations."""
    counts = samples.canary_counts if side == "canary" else samples.baseline_counts
    values = samples.canary if side == "canary" else samples.baseline
    if metric.kind == "proportion":
        if counts is not None and counts[1]:
            return 100.0 * counts[0] / counts[1]
        return sum(values) / len(values) if values else None
    if not values:
        return None
    if metric.query in ("p95_latency", "latency") or metric.name.startswith("p95"):
        return quantile(values, 0.95)
    return sum(values) / len(values)


def sample_count(samples: MetricSamples, side: str = "canary") -> int:
    """How many samples a side has: its trials when it has counts, else its observations."""
    counts = samples.canary_counts if side == "canary" else samples.baseline_counts
    values = samples.canary if side == "canary" else samples.baseline
    return counts[1] if counts is not None else len(values)


def threshold_verdict(metric: MetricSpec, samples: MetricSamples,
                      min_requests: int) -> Verdict:
    """The fixed-threshold judge of one metric over one interval: the canary's value against
    ``metric.max`` (and ``max_increase`` over the baseline's), no data below ``min_requests``
    samples."""
    n = sample_count(samples)
    value = sample_value(metric, samples, "canary")
    baseline = sample_value(metric, samples, "baseline")
    if n < min_requests or n == 0 or value is None:
        detail = f"too little traffic: {n} requests < min_requests {min_requests}"
        if samples.detail and n == 0 and metric.source != "balancer":
            detail += f" ({samples.detail})"
        return Verdict(metric.name, "no_data", value, metric.max, n, baseline, detail,
                       metric.kind)
    failed = metric.max is not None and value > metric.max
    if metric.max_increase is not None and baseline is not None and baseline > 0:
        failed = failed or value > baseline * (1 + metric.max_increase / 100)
    detail = ""
    if metric.kind == "proportion" and samples.canary_counts is not None:
        detail = f"{samples.canary_counts[0]} errors in {samples.canary_counts[1]} requests"
    return Verdict(metric.name, "fail" if failed else "pass", value, metric.max, n, baseline,
                   detail, metric.kind)


def health_verdict(results: Mapping[str, bool], *, serving: int | None = None,
                   oldest: tuple[str, float] | None = None) -> Verdict:
    """The health round's verdict: ``results`` of the hosts checked this round (a sample of
    the ``serving`` ones); ``oldest``: the serving host least recently checked, and how many
    seconds ago."""
    bad = sorted(name for name, ok in results.items() if not ok)
    parts = ["unhealthy: " + ", ".join(bad[:10])] if bad else []
    if serving is not None:
        parts.append(f"checked {len(results)} of {serving} serving")
    if oldest is not None:
        parts.append(f"least recently checked {oldest[0]}, {oldest[1]:g}s ago")
    return Verdict("health", "fail" if bad else ("pass" if results else "no_data"),
                   float(len(bad)), 0.0, len(results), None, "; ".join(parts))


def counter_figures(before: BackendStats | None, now: BackendStats,
                    seconds: float) -> dict[str, float | int | None]:
    """``traffic_figures`` of one counter set (a pool, a backend) between two readings."""
    if before is None or before.requests > now.requests:     # new or reset
        requests, errors = now.requests, now.errors
        buckets = list(now.latency_buckets)
    else:
        requests, errors = now.requests - before.requests, now.errors - before.errors
        buckets = [a - b if a > b else 0
                   for a, b in zip(now.latency_buckets, before.latency_buckets)]
    return {"requests": requests,
            "rps": round(requests / seconds, 2) if seconds > 0 else None,
            "error_rate": round(100.0 * errors / requests, 3) if requests else None,
            "p95": percentile(buckets, 0.95) if requests else None}


def idle_figures(seconds: float) -> dict[str, float | int | None]:
    """``traffic_figures`` of an interval without a request (counters unchanged)."""
    return {"requests": 0, "rps": 0.0 if seconds > 0 else None, "error_rate": None,
            "p95": None}


def traffic_figures(prev: Mapping[str, BackendStats], cur: Mapping[str, BackendStats],
                    names: Iterable[str], seconds: float) -> dict[str, float | int | None]:
    """Requests per second, error percent and p95 of ``names`` over one interval."""
    requests, errors, buckets = counter_delta(prev, cur, names)
    return {"requests": requests,
            "rps": round(requests / seconds, 2) if seconds > 0 else None,
            "error_rate": round(100.0 * errors / requests, 3) if requests else None,
            "p95": percentile(buckets, 0.95)}
