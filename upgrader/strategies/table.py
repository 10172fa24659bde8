"""The ``[strategy]`` table of a fleet file: ``kind``, ``on_failure`` and ``min_capacity``,
then the chosen strategy's own parameters (its ``parse_params``), located in the fleet file.

:func:`parse_strategy` is what :mod:`upgrader.config` calls for the table; :func:`where_in_file`
locates the errors a strategy finds only at compile time (an unknown group, too few new hosts)
at ``strategy.<key>`` and its line in the fleet file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from ..errors import ConfigError
from ..model import Fleet, StrategySpec
from ..tomlsource import (
    REQUIRED,
    Checker,
    KeyPath,
    did_you_mean,
    format_key_path,
    line_in_file,
    parse_key_path,
)
from . import get, names
from .base import Where

__all__ = ["COMMON_KEYS", "ON_FAILURE", "parse_strategy", "where_in_file"]

#: what the rollout does when a step fails
ON_FAILURE = ("rollback", "shutdown", "freeze", "pause")
#: the keys of ``[strategy]`` every kind has; the rest are the strategy's own
COMMON_KEYS = ("kind", "on_failure", "min_capacity")


class _TableWhere:
    """The ``where`` a strategy's ``parse_params`` reports through: ``strategy.<key>``."""

    __slots__ = ("_checker",)

    def __init__(self, checker: Checker) -> None:
        self._checker = checker

    def error(self, key: str | None, message: str) -> NoReturn:
        self._checker.error(parse_key_path(key) if key else (), message)


class _FileWhere:
    """A ``where`` for errors found at compile time, located in the fleet file (read again,
    only when raising)."""

    __slots__ = ("_source",)

    def __init__(self, source: Path | None) -> None:
        self._source = source

    def error(self, key: str | None, message: str) -> NoReturn:
        path: KeyPath = ("strategy",) + (parse_key_path(key) if key else ())
        raise ConfigError(message, file=self._source, key=format_key_path(path),
                          line=line_in_file(self._source, path))


def where_in_file(fleet: Fleet) -> Where:
    """The ``where`` to pass to ``strategy.compile(fleet, params, where)``: errors name
    ``strategy.<key>`` and its line in ``fleet.source``."""
    return _FileWhere(fleet.source)


def parse_strategy(value: object, checker: Checker, override: str | None) -> StrategySpec:
    """Check the ``[strategy]`` table ``value`` (None when the file has none) with ``checker``
    scoped to it; ``override`` (``--strategy``) replaces the file's kind with its defaults."""
    if value is None and override is None:
        checker.error((), "missing required table [strategy] (kind = \"rolling\", "
                          "\"canary\", ...), or give one with --strategy")
    table = checker.table({} if value is None else value, (), None, "[strategy]")
    kind = checker.string(table, (), "kind", REQUIRED if override is None else None)
    on_failure = checker.choice(table, (), "on_failure", ON_FAILURE, "rollback")
    min_capacity = checker.percentage(table, (), "min_capacity", 50.0)
    rest = {k: v for k, v in table.items() if k not in COMMON_KEYS}

    params: Any = None
    if kind is not None:
        module = _module(kind, checker)
        params = _parse_params(module, rest, checker)
    elif rest:
        checker.error((next(iter(rest)),),
                      "strategy parameters without a strategy: add kind = \"...\"")
    if override is not None and override != kind:
        module = _module(override, None, checker.source)
        kind = override
        params = module.default_params()
    assert kind is not None
    return StrategySpec(kind=kind, params=params, on_failure=on_failure,
                        min_capacity=min_capacity)


def _module(kind: str, checker: Checker | None, source: str | Path | None = None) -> Any:
    try:
        return get(kind)
    except KeyError:
        known = ", ".join(names())
        hint = did_you_mean(kind, names())
        if checker is None:
            raise ConfigError(f"unknown strategy {kind!r} (given with --strategy){hint}; "
                              f"known: {known}", file=source, key="--strategy") from None
        checker.error(("kind",), f"unknown strategy {kind!r}{hint}; known: {known}")


def _parse_params(module: Any, table: dict[str, Any], checker: Checker) -> Any:
    try:
        return module.parse_params(table, _TableWhere(checker))
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        # A strategy should report through ``where``; never let a parser slip past as
        # anything but a ConfigError.
        checker.error((), str(exc))
