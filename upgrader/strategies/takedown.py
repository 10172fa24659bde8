"""Take-down: put the service in maintenance, upgrade every host, run the system test against
the upgraded hosts before any user reaches them, and bring the service back.

Simple, and it tests the release before real users see it, at the price of downtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..model import Fleet
from ..plan import Gate, Maintenance, Plan, Step, UpgradeHosts, Verify
from . import _common as c
from .base import Where

NAME = "takedown"
DESCRIPTION = "maintenance page, upgrade every host, system test, back in service (downtime)"

KEYS = ("max_parallel", "retry_after", *c.COMMON_KEYS)


@dataclass(frozen=True, slots=True)
class TakedownParams:
    #: hosts upgraded at once; None: all of them
    max_parallel: int | None = None
    #: seconds users are told to wait (the maintenance page's Retry-After)
    retry_after: int = 60
    verify_for: float | None = None
    #: accepted for uniformity; a take-down has no pause between waves
    pause: float | None = 0.0
    rollback_parallel: int | None = None


Params = TakedownParams


def default_params() -> TakedownParams:
    return TakedownParams()


def parse_params(table: dict[str, Any], where: Where) -> TakedownParams:
    c.check_table(table, KEYS, where)
    common = c.parse_common(table, where)
    max_parallel = c.positive_int(where, "max_parallel", table["max_parallel"]) \
        if "max_parallel" in table else None
    retry_after = 60
    if "retry_after" in table:
        retry_after = math.ceil(c.duration(where, "retry_after", table["retry_after"]))
    return TakedownParams(max_parallel=max_parallel, retry_after=retry_after,
                          verify_for=common.verify_for, pause=common.pause,
                          rollback_parallel=common.rollback_parallel)


def compile(fleet: Fleet, params: TakedownParams, where: Where | None = None) -> Plan:
    hosts = c.spread_by_zone(fleet.main_hosts)
    steps: list[Step] = [
        Maintenance(on=True, retry_after=params.retry_after, wave=1),
        UpgradeHosts(hosts, max_parallel=params.max_parallel, drain=False, wave=1),
        Gate("system_test", hosts=hosts, wave=1),
        Maintenance(on=False, retry_after=params.retry_after, wave=2),
        Verify(for_=c.verify_seconds(fleet, params.verify_for), wave=2),
    ]
    if not hosts:
        steps = [s for s in steps if not isinstance(s, (UpgradeHosts, Gate))]
    return Plan(
        strategy=NAME,
        steps=tuple(steps),
        total_hosts=len(hosts),
        rollback_parallel=params.rollback_parallel or c.largest_batch(steps, fleet.timing),
        rollback_mode="reinstall",
        notes=(
            "users see a maintenance page (503, Retry-After) for the whole upgrade and its "
            "system test: this strategy has downtime",
            "the system test runs against the upgraded hosts before any user reaches them",
        ),
    )
