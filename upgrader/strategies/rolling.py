"""Rolling upgrade: take a batch of hosts out of the balancer, upgrade them, put them back,
verify, and roll on to the next batch until every host runs the target release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import units
from ..model import Fleet
from ..plan import Pause, Plan, Step, UpgradeHosts, Verify
from . import _common as c
from .base import Where

NAME = "rolling"
DESCRIPTION = "batches of hosts leave the balancer, upgrade and come back, one batch at a time"

KEYS = ("batch", "max_unavailable", "verify", *c.COMMON_KEYS)


@dataclass(frozen=True, slots=True)
class RollingParams:
    #: batch sizes: host counts (int) or percents (float); the last one repeats
    batch: tuple[int | float, ...] = (1,)
    #: hosts out of service at once inside a batch; None: the whole batch
    max_unavailable: int | float | None = None
    #: verify after every batch
    verify: bool = True
    verify_for: float | None = None
    pause: float | None = 0.0
    rollback_parallel: int | None = None
    #: not a fleet-file key: ``upgrader rollback`` inside the roll-back window sets it. The
    #: hosts go back to a release they still have installed, so each batch's hosts switch
    #: to it (the fleet's ``switch`` command) instead of installing it
    straight_back: bool = False


Params = RollingParams


def default_params() -> RollingParams:
    return RollingParams()


def parse_params(table: dict[str, Any], where: Where) -> RollingParams:
    c.check_table(table, KEYS, where)
    common = c.parse_common(table, where)
    batch = c.batch_sizes(where, "batch", table["batch"]) if "batch" in table else (1,)
    max_unavailable = c.count_or_percent(where, "max_unavailable", table["max_unavailable"]) \
        if "max_unavailable" in table else None
    verify = c.boolean(where, "verify", table["verify"]) if "verify" in table else True
    return RollingParams(batch=batch, max_unavailable=max_unavailable, verify=verify,
                         verify_for=common.verify_for, pause=common.pause,
                         rollback_parallel=common.rollback_parallel)


def compile(fleet: Fleet, params: RollingParams, where: Where | None = None) -> Plan:
    hosts = c.spread_by_zone(fleet.main_hosts)
    total = len(hosts)
    batches = c.split_batches(hosts, params.batch, total)
    limit = None if params.max_unavailable is None \
        else max(1, units.resolve_count(params.max_unavailable, total))
    verify_for = c.verify_seconds(fleet, params.verify_for)
    steps: list[Step] = []
    for number, batch in enumerate(batches, start=1):
        last = number == len(batches)
        parallel = len(batch) if limit is None else min(len(batch), limit)
        steps.append(UpgradeHosts(batch, max_parallel=parallel, wave=number,
                                  switch=params.straight_back))
        if params.verify:
            steps.append(Verify(for_=verify_for, wave=number))
        if not last and (params.pause is None or params.pause > 0):
            steps.append(Pause(params.pause, wave=number))
    notes = [f"{len(batches)} batches; the balancer hides each batch's hosts while they are "
             "upgraded, so users see continuous service"]
    if not params.verify:
        notes.append("verification between batches is off (verify = false)")
    if params.straight_back:
        notes.append("straight back inside the roll-back window: the hosts go back to a "
                     "release still installed (a [commands] switch makes it current again)")
    return Plan(
        strategy=NAME,
        steps=tuple(steps),
        total_hosts=total,
        rollback_parallel=params.rollback_parallel or c.largest_batch(steps, fleet.timing),
        rollback_mode="reinstall",
        notes=tuple(notes),
    )
