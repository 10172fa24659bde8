"""Blue-green on one machine: every host has two slots (e.g. two directories served as two
virtual hosts). The target release is installed and started in each host's idle slot, system
tested there before any user reaches it, and then traffic is swapped to it. The old slot keeps
running, so roll-back is a swap back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..model import Fleet
from ..plan import Gate, Pause, Plan, PrepareSlots, Step, SwapSlots, Verify
from . import _common as c
from .base import Where

NAME = "bluegreen"
DESCRIPTION = "install in each host's idle slot, test it, then swap traffic to it"

KEYS = ("batch", "max_parallel", *c.COMMON_KEYS)


@dataclass(frozen=True, slots=True)
class BlueGreenParams:
    #: hosts swapped per batch (int: count, float: percent; the last size repeats)
    batch: tuple[int | float, ...] = (100.0,)
    #: idle slots prepared at once; None: all of them
    max_parallel: int | None = None
    verify_for: float | None = None
    pause: float | None = 0.0
    rollback_parallel: int | None = None
    #: not a fleet-file key: ``upgrader rollback`` inside the roll-back window sets it. The
    #: plan is then one ``PrepareSlots(reuse)`` (the old slots still run the previous release)
    #: and one swap of every host: no system test, no verification hold, no pause
    straight_back: bool = False


Params = BlueGreenParams


def default_params() -> BlueGreenParams:
    return BlueGreenParams()


def parse_params(table: dict[str, Any], where: Where) -> BlueGreenParams:
    c.check_table(table, KEYS, where)
    common = c.parse_common(table, where)
    batch = c.batch_sizes(where, "batch", table["batch"]) if "batch" in table else (100.0,)
    max_parallel = c.positive_int(where, "max_parallel", table["max_parallel"]) \
        if "max_parallel" in table else None
    return BlueGreenParams(batch=batch, max_parallel=max_parallel,
                           verify_for=common.verify_for, pause=common.pause,
                           rollback_parallel=common.rollback_parallel)


def compile(fleet: Fleet, params: BlueGreenParams, where: Where | None = None) -> Plan:
    where = c.where_for(fleet, where)
    for host in fleet.main_hosts:
        if len(host.slots) != 2:
            where.error(None, f"host {host.name!r} needs exactly two slots for blue-green "
                              f"(e.g. slots = {{blue = 8101, green = 8102}}), "
                              f"it has {len(host.slots)}")
    hosts = c.spread_by_zone(fleet.main_hosts)
    total = len(hosts)
    verify_for = c.verify_seconds(fleet, params.verify_for)
    steps: list[Step] = []
    if hosts:
        steps.append(PrepareSlots(hosts, max_parallel=params.max_parallel, wave=1))
        steps.append(Gate("system_test", hosts=hosts, slots=True, wave=1))
    if params.straight_back:
        return Plan(
            strategy=NAME,
            steps=(PrepareSlots(hosts, max_parallel=params.max_parallel, wave=1, reuse=True),
                   SwapSlots(hosts, wave=1)) if hosts else (),
            total_hosts=total,
            rollback_parallel=params.rollback_parallel or max(1, total),
            rollback_mode="swap",
            notes=("straight back inside the roll-back window: the idle slots that still run "
                   "the release are swapped to as they are",),
        )
    batches = c.split_batches(hosts, params.batch, total)
    swaps: list[Step] = []
    for number, batch in enumerate(batches, start=2):
        swap = SwapSlots(batch, wave=number)
        swaps.append(swap)
        steps.append(swap)
        steps.append(Verify(for_=verify_for, wave=number))
        if number < len(batches) + 1 and (params.pause is None or params.pause > 0):
            steps.append(Pause(params.pause, wave=number))
    return Plan(
        strategy=NAME,
        steps=tuple(steps),
        total_hosts=total,
        rollback_parallel=params.rollback_parallel or c.largest_batch(swaps, fleet.timing),
        rollback_mode="swap",
        notes=(
            "the idle slots are system tested before any user reaches them",
            "the old slot keeps running after the swap: roll-back swaps back, in seconds",
        ),
    )
