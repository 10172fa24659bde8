"""Helpers shared by the strategy compilers: parameter parsing through ``where``, host order,
batching, and the defaults every plan derives from its steps. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from .. import units
from ..errors import ConfigError
from ..model import Fleet, Host, Timing
from ..plan import PrepareSlots, Step, SwapSlots, UpgradeHosts
from ..tomlsource import check_boolean, check_duration, check_percentage, did_you_mean
from .base import Where

#: keys every strategy accepts besides its own (``kind``, ``on_failure`` and ``min_capacity``
#: are the loader's and never reach a strategy)
COMMON_KEYS = ("verify_for", "pause", "rollback_parallel")

#: the value of ``pause`` that means "wait until an operator promotes"
PROMOTE = "promote"

CountOrPercent = int | float     # int: a host count; float: a percent of the hosts

_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# Parameter parsing, with the checked-TOML toolkit's value checks (upgrader.tomlsource). Every
# helper reports through ``where.error(key, message)``, which raises.


def check_table(table: Any, allowed: Sequence[str], where: Where,
                prefix: str = "") -> dict[str, Any]:
    """``table`` must be a mapping whose keys are all in ``allowed`` (an unknown key names
    the closest allowed one)."""
    if not isinstance(table, dict):
        where.error(prefix.rstrip(".") or None, f"expected a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            where.error(f"{prefix}{key}", f"unknown key {key!r}{did_you_mean(key, allowed)}; "
                                          f"expected one of: {', '.join(allowed)}")
    return table


def _convert(where: Where, key: str, value: Any, parser: Callable[[Any], _T]) -> _T:
    try:
        return parser(value)
    except ValueError as exc:
        where.error(key, str(exc))


def duration(where: Where, key: str, value: Any) -> float:
    return _convert(where, key, value, check_duration)


def pause_value(where: Where, key: str, value: Any) -> float | None:
    """A duration, or ``"promote"`` (None: wait until promoted)."""
    if isinstance(value, str) and value.strip().lower() == PROMOTE:
        return None
    try:
        return units.parse_duration(value)
    except ValueError:
        where.error(key, f"expected a duration like '10m' or {PROMOTE!r} (wait until promoted), "
                         f"got {value!r}")


#: the most hosts a count may name: far above any fleet, far below what would be silently
#: clamped as nonsense (``batch = 10**18``)
MAX_HOSTS = 1_000_000


def count_or_percent(where: Where, key: str, value: Any) -> CountOrPercent:
    result: CountOrPercent = _convert(where, key, value, units.parse_count_or_percent)
    if isinstance(result, int) and result > MAX_HOSTS:
        where.error(key, f"a host count must be between 1 and {MAX_HOSTS}, got {result}")
    return result


def percent(where: Where, key: str, value: Any, *, allow_zero: bool = True) -> float:
    return _convert(where, key, value, lambda v: check_percentage(v, allow_zero=allow_zero))


def rate(where: Where, key: str, value: Any) -> float:
    return _convert(where, key, value, units.parse_rate)


def positive_int(where: Where, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        where.error(key, f"expected a whole number of hosts (at least 1), got {value!r}")
    if value < 1:
        where.error(key, f"expected a whole number of hosts (at least 1), got {value!r}")
    if value > MAX_HOSTS:
        where.error(key, f"a host count must be between 1 and {MAX_HOSTS}, got {value}")
    return value


def boolean(where: Where, key: str, value: Any) -> bool:
    return _convert(where, key, value, check_boolean)


def batch_sizes(where: Where, key: str, value: Any) -> tuple[CountOrPercent, ...]:
    """``5``, ``"20%"`` or a non-empty list of them (the last size repeats)."""
    if isinstance(value, list):
        if not value:
            where.error(key, "expected a host count, a percentage or a non-empty list of them")
        return tuple(count_or_percent(where, f"{key}[{i}]", v) for i, v in enumerate(value))
    return (count_or_percent(where, key, value),)


def string_list(where: Where, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        where.error(key, f"expected a list of names, got {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            where.error(f"{key}[{i}]", f"expected a non-empty name, got {item!r}")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Common:
    verify_for: float | None = None
    pause: float | None = 0.0
    rollback_parallel: int | None = None


def parse_common(table: dict[str, Any], where: Where) -> Common:
    """The keys every strategy accepts: ``verify_for``, ``pause``, ``rollback_parallel``."""
    verify_for = duration(where, "verify_for", table["verify_for"]) \
        if "verify_for" in table else None
    pause = pause_value(where, "pause", table["pause"]) if "pause" in table else 0.0
    rollback_parallel = positive_int(where, "rollback_parallel", table["rollback_parallel"]) \
        if "rollback_parallel" in table else None
    return Common(verify_for=verify_for, pause=pause, rollback_parallel=rollback_parallel)


# ---------------------------------------------------------------------------------------------
# Errors found only once the fleet is known (compile time).


@dataclass(frozen=True, slots=True)
class FleetWhere:
    """The ``where`` compile uses when its caller gives none: a ConfigError at ``strategy.KEY``
    of the fleet file."""

    fleet: Fleet

    def error(self, key: str | None, message: str) -> NoReturn:
        raise ConfigError(message, file=self.fleet.source,
                          key="strategy" + (f".{key}" if key else ""))


def where_for(fleet: Fleet, where: Where | None) -> Where:
    return where if where is not None else FleetWhere(fleet)


# ---------------------------------------------------------------------------------------------
# Host order and batches.


def spread_by_zone(hosts: Iterable[Host]) -> tuple[str, ...]:
    """Host names in fleet order, round-robin over ``labels["zone"]`` (zones in order of first
    appearance; hosts without a zone form one more zone), so early waves touch every zone."""
    zones: dict[str | None, list[str]] = {}
    for host in hosts:
        zones.setdefault(host.labels.get("zone"), []).append(host.name)
    if len(zones) <= 1:
        return tuple(name for names in zones.values() for name in names)
    queues = list(zones.values())
    result: list[str] = []
    for i in range(max(len(q) for q in queues)):
        result.extend(q[i] for q in queues if i < len(q))
    return tuple(result)


def split_batches(hosts: Sequence[str], sizes: Sequence[CountOrPercent],
                  total: int | None = None) -> list[tuple[str, ...]]:
    """Cut ``hosts`` into consecutive batches of ``sizes`` (counts, or percents of ``total``,
    default ``len(hosts)``); the last size repeats until every host is in a batch."""
    total = len(hosts) if total is None else total
    resolved = [max(1, units.resolve_count(size, total)) for size in sizes] or [1]
    batches: list[tuple[str, ...]] = []
    pos = 0
    i = 0
    while pos < len(hosts):
        size = resolved[min(i, len(resolved) - 1)]
        batches.append(tuple(hosts[pos:pos + size]))
        pos += size
        i += 1
    return batches


def verify_seconds(fleet: Fleet, verify_for: float | None) -> float:
    return fleet.verify.for_ if verify_for is None else verify_for


def concurrency(step: Step, timing: Timing) -> int:
    """Hosts a step may have out of service at once."""
    if isinstance(step, (UpgradeHosts, PrepareSlots)):
        n = len(step.hosts)
        parallel = min(n, step.max_parallel or n)
        interval = getattr(step, "start_interval", 0.0)
        if interval > 0:
            parallel = min(parallel, max(1, math.ceil(timing.host_upgrade / interval)))
        return parallel
    if isinstance(step, SwapSlots):
        return len(step.hosts)
    return 0


def largest_batch(steps: Iterable[Step], timing: Timing) -> int:
    """The default ``rollback_parallel``: the most hosts the rollout itself had out of service
    at once (a rate-limited step counts the hosts in flight at a time), at least 1."""
    return max([1, *(concurrency(step, timing) for step in steps)])
