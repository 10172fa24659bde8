"""Phased roll-out: admit user groups to the target release one at a time, in order of their
tolerance for risk (one-some-many), then everyone.

The balancer routes requests of the admitted groups to the hosts that run the target release
and everyone else to the hosts that still run the current one. Before group *i* is admitted,
enough hosts are upgraded to carry it (``capacity[i]``). Groups are names from the fleet's
``[[groups]]``: named groups (a header or cookie value) and sticky cohorts (``percent``) mix
freely, so "one user, some users, many users" is three cohort groups of growing size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import units
from ..model import Fleet, UserGroup
from ..plan import Pause, Plan, Route, Step, UpgradeHosts, Verify
from . import _common as c
from .base import Where

NAME = "phased"
DESCRIPTION = "admit user groups to the new release one at a time, least risk-averse first"

KEYS = ("groups", "capacity", "final_batch", "max_parallel", *c.COMMON_KEYS)


@dataclass(frozen=True, slots=True)
class PhasedParams:
    #: group names in risk order; empty: the fleet's groups in file order
    groups: tuple[str, ...] = ()
    #: hosts on the target release before each group is admitted (int: count, float: percent);
    #: empty: 1 host for the first group, then evenly growing to 50 %
    capacity: tuple[int | float, ...] = ()
    #: batch sizes for the hosts left once everyone is admitted (the last size repeats)
    final_batch: tuple[int | float, ...] = (25.0,)
    #: hosts upgraded at once (int: count, float: percent); None: a whole step at once
    max_parallel: int | float | None = None
    verify_for: float | None = None
    pause: float | None = 0.0
    rollback_parallel: int | None = None


Params = PhasedParams


def default_params() -> PhasedParams:
    return PhasedParams()


def default_capacity(groups: int) -> tuple[int | float, ...]:
    """1 host for the first group, then evenly growing to 50 % of the hosts for the last."""
    if groups <= 0:
        return ()
    return (1, *(50.0 * i / (groups - 1) for i in range(1, groups)))


def parse_params(table: dict[str, Any], where: Where) -> PhasedParams:
    c.check_table(table, KEYS, where)
    common = c.parse_common(table, where)
    groups: tuple[str, ...] = ()
    if "groups" in table:
        groups = c.string_list(where, "groups", table["groups"])
        if not groups:
            where.error("groups", "expected at least one user group")
        seen: set[str] = set()
        for i, name in enumerate(groups):
            if name in seen:
                where.error(f"groups[{i}]", f"group {name!r} is listed twice")
            seen.add(name)
    capacity: tuple[int | float, ...] = ()
    if "capacity" in table:
        raw = table["capacity"]
        if not isinstance(raw, list) or not raw:
            where.error("capacity", "expected a list of host counts or percentages, one per group")
        capacity = tuple(c.count_or_percent(where, f"capacity[{i}]", v) for i, v in enumerate(raw))
        if groups and len(capacity) != len(groups):
            where.error("capacity", f"expected {len(groups)} entries (one per group), "
                                    f"got {len(capacity)}")
        for i in range(1, len(capacity)):
            before, now = capacity[i - 1], capacity[i]
            if type(before) is type(now) and now < before:
                where.error(f"capacity[{i}]", "capacity must not shrink from one group to the next")
    final_batch = c.batch_sizes(where, "final_batch", table["final_batch"]) \
        if "final_batch" in table else (25.0,)
    max_parallel = c.count_or_percent(where, "max_parallel", table["max_parallel"]) \
        if "max_parallel" in table else None
    return PhasedParams(groups=groups, capacity=capacity, final_batch=final_batch,
                        max_parallel=max_parallel, verify_for=common.verify_for,
                        pause=common.pause, rollback_parallel=common.rollback_parallel)


def users_share(groups: tuple[str, ...], known: dict[str, UserGroup]) -> float | None:
    """Percent of users the groups cover at least: their largest cohort (cohorts are nested,
    the first N % of buckets); None when none of them is a cohort (a named group's size is not
    known here). Exact when every group is a cohort."""
    if not groups:
        return 0.0
    percents = [p for p in (known[g].percent for g in groups) if p is not None]
    return max(percents) if percents else None


def compile(fleet: Fleet, params: PhasedParams, where: Where | None = None) -> Plan:
    where = c.where_for(fleet, where)
    known = {g.name: g for g in fleet.groups}
    groups = params.groups or tuple(known)
    if not groups:
        where.error("groups", "a phased roll-out needs user groups: define [[groups]] in the "
                              "fleet file and list them here in risk order")
    for i, name in enumerate(groups):
        if name not in known:
            where.error(f"groups[{i}]", f"unknown user group {name!r}; the fleet defines: "
                                        f"{', '.join(known) or 'none'}")
    capacity = params.capacity or default_capacity(len(groups))
    if len(capacity) != len(groups):
        where.error("capacity", f"expected {len(groups)} entries (one per group), "
                                f"got {len(capacity)}")

    hosts = c.spread_by_zone(fleet.main_hosts)
    total = len(hosts)
    limit = None if params.max_parallel is None \
        else max(1, units.resolve_count(params.max_parallel, total))
    verify_for = c.verify_seconds(fleet, params.verify_for)
    steps: list[Step] = [Route(groups=(), default="current", share=0.0, wave=1)]
    done = 0

    def upgrade(group: tuple[str, ...], wave: int) -> None:
        if group:
            parallel = None if limit is None else min(len(group), limit)
            steps.append(UpgradeHosts(group, max_parallel=parallel, wave=wave))

    for i in range(len(groups)):
        wave = i + 1
        target = max(done, units.resolve_count(capacity[i], total))
        upgrade(hosts[done:target], wave)
        done = target
        admitted = groups[:i + 1]
        steps.append(Route(groups=admitted, default="current",
                           share=users_share(admitted, known), wave=wave))
        steps.append(Verify(for_=verify_for, wave=wave))
        if params.pause is None or params.pause > 0:
            steps.append(Pause(params.pause, wave=wave))

    # everyone is admitted: routing off, every host serves everyone; the rest in batches
    wave = len(groups) + 1
    steps.append(Route(groups=(), default=None, wave=wave))
    rest = c.split_batches(hosts[done:], params.final_batch, total)
    for number, batch in enumerate(rest):
        upgrade(batch, wave + number)
        steps.append(Verify(for_=verify_for, wave=wave + number))
        if number < len(rest) - 1 and (params.pause is None or params.pause > 0):
            steps.append(Pause(params.pause, wave=wave + number))
    if not rest:
        steps.append(Verify(for_=verify_for, wave=wave))
    return Plan(
        strategy=NAME,
        steps=tuple(steps),
        total_hosts=total,
        rollback_parallel=params.rollback_parallel or c.largest_batch(steps, fleet.timing),
        rollback_mode="reinstall",
        notes=(
            f"groups in risk order: {', '.join(groups)}; the target release serves only "
            "admitted groups until everyone is admitted",
            "the hosts upgraded for a group leave the current pool: keep enough capacity for "
            "everyone else (capacity, max_parallel)",
        ),
    )
