"""The contract every strategy module fulfils. Strategies are PURE compilers:
``compile(fleet, params) -> Plan``; no I/O, no clock, no randomness.

A strategy module exposes:

- ``NAME``: its ``kind`` in a fleet file,
- ``DESCRIPTION``: one line,
- ``parse_params(table: dict, where: Where) -> Params``: validate the ``[strategy]`` table
  (minus ``kind``, ``on_failure`` and ``min_capacity``, which the loader handles); unknown keys
  and wrong types raise through ``where.error(key, message)``,
- ``default_params() -> Params``: the params used when only ``kind`` is given (``--strategy``),
- ``compile(fleet, params) -> Plan``.
"""

from __future__ import annotations

from typing import Any, NoReturn, Protocol

from ..model import Fleet
from ..plan import Plan


class Where(Protocol):
    """Raises a ConfigError located at a key of the strategy table."""

    def error(self, key: str | None, message: str) -> NoReturn: ...


class StrategyModule(Protocol):
    NAME: str
    DESCRIPTION: str

    def parse_params(self, table: dict[str, Any], where: Where) -> Any: ...

    def default_params(self) -> Any: ...

    def compile(self, fleet: Fleet, params: Any) -> Plan: ...
