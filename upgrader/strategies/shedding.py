"""Proportional shedding: build the target release on a new cluster beside the old one, then
shed a growing share of traffic to it until it carries everything; only then turn the old
cluster down. Roll-back moves the traffic back; it needs twice the capacity meanwhile.

The new cluster is the fleet's hosts with ``cluster = "new"``. The plan upgrades those hosts
(not the main ones), so its ``total_hosts`` is the new cluster's size, and its blast radius is
the traffic share the new cluster receives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import units
from ..model import Fleet
from ..plan import Pause, Plan, SetTraffic, Step, TurnDown, UpgradeHosts, Verify
from . import _common as c
from .base import Where

NAME = "shedding"
DESCRIPTION = "new cluster beside the old one; shed a growing share of traffic to it"

KEYS = ("weights", "new_capacity", "max_parallel", *c.COMMON_KEYS)


@dataclass(frozen=True, slots=True)
class SheddingParams:
    #: percent of traffic sent to the new cluster, step by step; strictly growing, ends at 100
    weights: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 100.0)
    #: the new cluster must have at least this many hosts (int), or this percent of the main
    #: cluster's host count (float): by default as many as the old one (twice the capacity)
    new_capacity: int | float = 100.0
    #: new hosts built at once; None: all (they carry no traffic yet)
    max_parallel: int | None = None
    verify_for: float | None = None
    pause: float | None = 0.0
    rollback_parallel: int | None = None


Params = SheddingParams


def default_params() -> SheddingParams:
    return SheddingParams()


def parse_params(table: dict[str, Any], where: Where) -> SheddingParams:
    c.check_table(table, KEYS, where)
    common = c.parse_common(table, where)
    weights = SheddingParams().weights
    if "weights" in table:
        raw = table["weights"]
        if not isinstance(raw, list) or not raw:
            where.error("weights", "expected a list of percentages like [1, 5, 25, 50, 100]")
        weights = tuple(c.percent(where, f"weights[{i}]", v, allow_zero=False)
                        for i, v in enumerate(raw))
        for i in range(1, len(weights)):
            if weights[i] <= weights[i - 1]:
                where.error(f"weights[{i}]", "weights must grow strictly from step to step")
        if weights[-1] != 100.0:
            where.error(f"weights[{len(weights) - 1}]",
                        "the last weight must be 100% (all traffic on the new cluster)")
    new_capacity = c.count_or_percent(where, "new_capacity", table["new_capacity"]) \
        if "new_capacity" in table else 100.0
    max_parallel = c.positive_int(where, "max_parallel", table["max_parallel"]) \
        if "max_parallel" in table else None
    return SheddingParams(weights=weights, new_capacity=new_capacity, max_parallel=max_parallel,
                          verify_for=common.verify_for, pause=common.pause,
                          rollback_parallel=common.rollback_parallel)


def compile(fleet: Fleet, params: SheddingParams, where: Where | None = None) -> Plan:
    where = c.where_for(fleet, where)
    old = c.spread_by_zone(fleet.main_hosts)
    new = c.spread_by_zone(fleet.new_hosts)
    if not new:
        where.error(None, "proportional shedding needs a new cluster beside the old one: "
                          "add hosts with cluster = \"new\" (as many as the main cluster, "
                          "twice the capacity during the transition)")
    if isinstance(params.new_capacity, int):
        needed = params.new_capacity
    else:
        needed = units.resolve_count(params.new_capacity, len(old))
    if len(new) < needed:
        where.error(None, f"the new cluster has {len(new)} hosts; it needs {needed} to carry "
                          f"all the traffic of the {len(old)} main hosts (new_capacity): "
                          "shedding needs twice the capacity during the transition")
    verify_for = c.verify_seconds(fleet, params.verify_for)
    steps: list[Step] = [
        SetTraffic((("current", 100.0), ("target", 0.0)), wave=1),
        UpgradeHosts(new, max_parallel=params.max_parallel, wave=1),
        # no traffic reaches the new cluster yet: a zero-length verify is its health check
        Verify(for_=0.0, wave=1),
    ]
    for number, weight in enumerate(params.weights, start=2):
        steps.append(SetTraffic((("current", 100.0 - weight), ("target", weight)), wave=number))
        steps.append(Verify(for_=verify_for, wave=number))
        if weight < 100.0 and (params.pause is None or params.pause > 0):
            steps.append(Pause(params.pause, wave=number))
    final = len(params.weights) + 2
    if old:
        steps.append(TurnDown(old, wave=final))
    steps.append(SetTraffic((("target", 100.0),), wave=final))
    return Plan(
        strategy=NAME,
        steps=tuple(steps),
        total_hosts=len(new),
        rollback_parallel=params.rollback_parallel or c.largest_batch(steps, fleet.timing),
        rollback_mode="traffic",
        notes=(
            f"the new cluster ({len(new)} hosts) runs beside the old one ({len(old)} hosts): "
            "twice the capacity during the transition",
            "blast radius is the share of traffic sent to the new cluster; roll-back sends it "
            "all back to the old cluster, which is turned down only at the very end",
            "total_hosts counts the new cluster, the hosts this plan upgrades",
        ),
    )
