"""Canary: upgrade a very small number of hosts, watch them, then progressively larger groups.

The seed's common schedule is the default: one host, verify and wait ten minutes, then one
host per minute until 1 % of the hosts run the target release, then one per second until all
do. Verification after each group runs against ALL upgraded hosts.

A step is one of:

- ``{hosts = N | "x%", pause = ..., max_parallel = ...}``: upgrade that many MORE hosts as one
  group (all at once unless ``max_parallel``), verify, then pause;
- ``{rate = "1/min", until = N | "x%", pause = ...}``: start one host every ``1/rate`` seconds
  until ``until`` hosts in total run the target release (default ``"100%"``), verify, pause;
- ``{pause = "10m" | "promote"}``: only wait (``"promote"``: until an operator promotes).

A step without ``pause`` uses the strategy's ``pause`` (default none). If hosts remain after
the last step, the last upgrading step repeats (same group size and pause, or the same rate)
until every host is upgraded, so a canary always reaches 100 %.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import units
from ..model import Fleet
from ..plan import Pause, Plan, Step, UpgradeHosts, Verify
from . import _common as c
from .base import Where

NAME = "canary"
DESCRIPTION = "one host, then progressively larger groups, verifying all upgraded hosts between"

KEYS = ("steps", *c.COMMON_KEYS)
STEP_KEYS = ("hosts", "rate", "until", "pause", "max_parallel")


@dataclass(frozen=True, slots=True)
class CanaryStep:
    #: upgrade this many more hosts as a group (int: count, float: percent of the hosts)
    hosts: int | float | None = None
    #: or: start hosts at this rate (hosts per second) ...
    rate: float | None = None
    #: ... until this many hosts in total run the target release (int: count, float: percent)
    until: int | float | None = None
    #: seconds to wait after the step; None: until promoted. Only used when ``pause_given``.
    pause: float | None = 0.0
    pause_given: bool = False
    #: hosts upgraded at once inside the step (int: count, float: percent); None: no limit
    max_parallel: int | float | None = None

    @property
    def upgrades(self) -> bool:
        return self.hosts is not None or self.rate is not None


@dataclass(frozen=True, slots=True)
class CanaryParams:
    steps: tuple[CanaryStep, ...] = (
        CanaryStep(hosts=1, pause=600.0, pause_given=True),
        CanaryStep(rate=1 / 60, until=1.0),
        CanaryStep(rate=1.0, until=100.0),
    )
    verify_for: float | None = None
    pause: float | None = 0.0
    rollback_parallel: int | None = None


Params = CanaryParams


def default_params() -> CanaryParams:
    return CanaryParams()


def _parse_step(raw: Any, key: str, where: Where) -> CanaryStep:
    if not isinstance(raw, dict) or not raw:
        where.error(key, "expected a table like {hosts = 1, pause = \"10m\"}, "
                         "{rate = \"1/min\", until = \"1%\"} or {pause = \"10m\"}")
    c.check_table(raw, STEP_KEYS, where, prefix=f"{key}.")
    if "hosts" in raw and "rate" in raw:
        where.error(key, "a step has either hosts (a group) or rate (one host at a time), "
                         "not both")
    if "until" in raw and "rate" not in raw:
        where.error(f"{key}.until", "until needs a rate, e.g. {rate = \"1/min\", until = \"1%\"}")
    if "max_parallel" in raw and "hosts" not in raw and "rate" not in raw:
        where.error(f"{key}.max_parallel", "max_parallel needs hosts or rate in the same step")
    hosts = c.count_or_percent(where, f"{key}.hosts", raw["hosts"]) if "hosts" in raw else None
    rate = c.rate(where, f"{key}.rate", raw["rate"]) if "rate" in raw else None
    until: int | float | None = None
    if rate is not None:
        until = c.count_or_percent(where, f"{key}.until", raw["until"]) \
            if "until" in raw else 100.0
    pause = c.pause_value(where, f"{key}.pause", raw["pause"]) if "pause" in raw else 0.0
    max_parallel = c.count_or_percent(where, f"{key}.max_parallel", raw["max_parallel"]) \
        if "max_parallel" in raw else None
    return CanaryStep(hosts=hosts, rate=rate, until=until, pause=pause,
                      pause_given="pause" in raw, max_parallel=max_parallel)


def parse_params(table: dict[str, Any], where: Where) -> CanaryParams:
    c.check_table(table, KEYS, where)
    common = c.parse_common(table, where)
    if "steps" not in table:
        steps = CanaryParams().steps
    else:
        raw_steps = table["steps"]
        if not isinstance(raw_steps, list) or not raw_steps:
            where.error("steps", "expected a non-empty list of step tables")
        steps = tuple(_parse_step(raw, f"steps[{i}]", where) for i, raw in enumerate(raw_steps))
        if not any(step.upgrades for step in steps):
            where.error("steps", "at least one step must upgrade hosts (hosts = ... or rate = ...)")
        _check_progress(steps, where)
    return CanaryParams(steps=steps, verify_for=common.verify_for, pause=common.pause,
                        rollback_parallel=common.rollback_parallel)


def _check_progress(steps: tuple[CanaryStep, ...], where: Where) -> None:
    """An ``until`` must lie beyond what the earlier steps already reached, wherever that can
    be told without knowing the fleet: lower bounds in hosts and in percent are kept apart."""
    count_floor = 0          # hosts surely upgraded (counts only)
    percent_floor = 0.0      # percent surely upgraded (percents only)
    for i, step in enumerate(steps):
        if step.hosts is not None:
            if isinstance(step.hosts, int):
                count_floor += step.hosts
            else:
                percent_floor = min(100.0, percent_floor + step.hosts)
        elif step.until is not None:
            if isinstance(step.until, int):
                if step.until <= count_floor:
                    where.error(f"steps[{i}].until",
                                f"until = {step.until} is not beyond the {count_floor} hosts "
                                "the earlier steps already upgrade")
                count_floor = step.until
            else:
                if step.until <= percent_floor:
                    where.error(f"steps[{i}].until",
                                f"until = \"{step.until:g}%\" is not beyond the "
                                f"{percent_floor:g}% the earlier steps already reach")
                percent_floor = step.until


def compile(fleet: Fleet, params: CanaryParams, where: Where | None = None) -> Plan:
    hosts = c.spread_by_zone(fleet.main_hosts)
    total = len(hosts)
    verify_for = c.verify_seconds(fleet, params.verify_for)
    steps: list[Step] = []
    done = 0
    wave = 0
    notes: list[str] = []

    def pause_after(step: CanaryStep) -> float | None:
        return step.pause if step.pause_given else params.pause

    def add_pause(duration: float | None) -> None:
        # waiting after the last host has nothing left to protect
        if done < total and (duration is None or duration > 0):
            steps.append(Pause(duration, wave=max(wave, 1)))

    def upgrade(step: CanaryStep, target: int) -> None:
        nonlocal done, wave
        group = hosts[done:target]
        if not group:
            return
        wave += 1
        parallel = None if step.max_parallel is None \
            else min(len(group), max(1, units.resolve_count(step.max_parallel, total)))
        interval = 1.0 / step.rate if step.rate is not None else 0.0
        steps.append(UpgradeHosts(group, max_parallel=parallel, start_interval=interval,
                                  wave=wave))
        steps.append(Verify(for_=verify_for, wave=wave))
        done = target
        add_pause(pause_after(step))

    def target_of(step: CanaryStep) -> int:
        if step.hosts is not None:
            return min(total, done + units.resolve_count(step.hosts, total))
        assert step.until is not None
        return max(done, units.resolve_count(step.until, total))

    last: CanaryStep | None = None
    for step in params.steps:
        if not step.upgrades:
            add_pause(step.pause)
            continue
        last = step
        upgrade(step, target_of(step))

    if done < total:
        if last is None:      # only reachable with hand-built params: one group for the rest
            last = CanaryStep(hosts=100.0)
        remaining = total - done
        if last.rate is not None:
            notes.append(f"the last step stops before 100 %: the remaining {remaining} hosts "
                         f"start at its rate ({last.rate:g} hosts/s)")
            upgrade(last, total)
        else:
            notes.append(f"the last step stops before 100 %: the remaining {remaining} hosts "
                         "are upgraded in groups of its size, with its pause")
            while done < total:
                upgrade(last, target_of(last))

    notes.append("canarying is not a substitute for system testing")
    return Plan(
        strategy=NAME,
        steps=tuple(steps),
        total_hosts=total,
        rollback_parallel=params.rollback_parallel or c.largest_batch(steps, fleet.timing),
        rollback_mode="reinstall",
        notes=tuple(notes),
    )
