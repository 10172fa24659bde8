"""Feature roll-out: no host changes; a feature flag goes on for a growing share of users
(one-some-many), with verification between steps. Rolling back is turning the flag off:
the seed's "dynamic roll-back", cheaper than rolling back a release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..model import Fleet
from ..plan import Pause, Plan, SetFlag, Step, Verify
from . import _common as c
from .base import Where

NAME = "feature"
DESCRIPTION = "turn a feature flag on for a growing share of users; roll back = flag off"

KEYS = ("flag", "steps", *c.COMMON_KEYS)
STEP_KEYS = ("percent", "groups", "pause")
_FLAG_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True, slots=True)
class FeatureStep:
    percent: float | None
    pause: float | None = 0.0
    #: users of these groups get the feature (one-some-many by risk: internal, beta, ...)
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FeatureParams:
    flag: str = ""
    steps: tuple[FeatureStep, ...] = (FeatureStep(1.0), FeatureStep(10.0), FeatureStep(50.0),
                                      FeatureStep(100.0))
    verify_for: float | None = None
    pause: float | None = 0.0
    rollback_parallel: int | None = None


Params = FeatureParams


def default_params() -> FeatureParams:
    return FeatureParams()


def parse_params(table: dict[str, Any], where: Where) -> FeatureParams:
    c.check_table(table, KEYS, where)
    common = c.parse_common(table, where)
    flag = table.get("flag")
    if not isinstance(flag, str) or not flag or not set(flag) <= _FLAG_KEY_CHARS:
        where.error("flag", f"expected the key of the flag to roll out (letters, digits, "
                            f"'.', '_', '-'), got {flag!r}")
    steps = FeatureParams().steps
    if "steps" in table:
        raw = table["steps"]
        if not isinstance(raw, list) or not raw:
            where.error("steps", "expected a non-empty list like [{percent = 1}, {percent = 100}]")
        parsed = []
        last = 0.0
        for i, item in enumerate(raw):
            key = f"steps[{i}]"
            c.check_table(item, STEP_KEYS, where, prefix=f"{key}.")
            if "percent" not in item and "groups" not in item:
                where.error(key, "each step needs a percent or groups")
            pct = None
            if "percent" in item:
                pct = c.percent(where, f"{key}.percent", item["percent"], allow_zero=False)
                if pct <= last:
                    where.error(f"{key}.percent",
                                f"percentages must grow: {pct:g}% after {last:g}%")
                last = pct
            groups = c.string_list(where, f"{key}.groups", item["groups"]) \
                if "groups" in item else ()
            pause = c.pause_value(where, f"{key}.pause", item["pause"]) if "pause" in item \
                else common.pause
            parsed.append(FeatureStep(pct, pause, groups))
        if last != 100:
            where.error(f"steps[{len(raw) - 1}].percent", "the last step must reach 100%")
        steps = tuple(parsed)
    return FeatureParams(flag=flag, steps=steps, verify_for=common.verify_for,
                         pause=common.pause, rollback_parallel=common.rollback_parallel)


def compile(fleet: Fleet, params: FeatureParams, where: Where | None = None) -> Plan:
    if not params.flag:
        c.where_for(fleet, where).error("flag", "a feature roll-out names the flag to turn on")
    verify_for = c.verify_seconds(fleet, params.verify_for)
    steps: list[Step] = []
    for wave, step in enumerate(params.steps, start=1):
        steps.append(SetFlag(params.flag, on=True, percent=step.percent, groups=step.groups,
                             wave=wave))
        steps.append(Verify(for_=verify_for, wave=wave))
        if step.pause is None or step.pause > 0:
            steps.append(Pause(step.pause, wave=wave))
    return Plan(strategy=NAME, steps=tuple(steps), total_hosts=len(fleet.main_hosts),
                rollback_parallel=1, rollback_mode="flag",
                notes=(f"no host changes: flag {params.flag} goes on for "
                       + ", ".join(", ".join(s.groups) if s.percent is None else f"{s.percent:g}%"
                                   for s in params.steps)
                       + " of users; a failed verification turns it off",))
