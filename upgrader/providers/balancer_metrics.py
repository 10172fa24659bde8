"""The built-in ``balancer`` metric source: the fleet's balancer counters (error rate, latency)
of the canary and the baseline, registered through ``register_metric_sources`` as a plugin's
source would be."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..hookspecs import Register, hookimpl
from .base import BalancerCounters, MetricSource, ProviderContext


def from_settings(settings: Mapping[str, Any], context: ProviderContext) -> BalancerCounters:
    return BalancerCounters(context.balancer)


@hookimpl
def register_metric_sources(register: Register[MetricSource]) -> None:
    register("balancer", from_settings,
             description="the fleet balancer's counters: error_rate (errors out of requests) "
                         "and p95_latency (one latency per request)")
