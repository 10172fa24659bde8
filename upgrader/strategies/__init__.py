"""The strategies: pure compilers ``(fleet, params) -> Plan``, one module each, registered by
the ``kind`` a fleet file names them with (in the seed's order)."""

from __future__ import annotations

from types import ModuleType

from . import bluegreen, canary, feature, phased, rolling, shedding, takedown

STRATEGIES: dict[str, ModuleType] = {
    module.NAME: module
    for module in (takedown, rolling, canary, phased, shedding, bluegreen, feature)
}


#: the six that upgrade hosts, in the seed's order; ``feature`` switches a flag instead
HOST_STRATEGIES: tuple[str, ...] = ("takedown", "rolling", "canary", "phased", "shedding",
                                    "bluegreen")


def get(name: str) -> ModuleType:
    """The strategy module registered as ``name``; KeyError naming the known ones otherwise."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; expected one of: {', '.join(STRATEGIES)}") \
            from None


def names() -> tuple[str, ...]:
    return tuple(STRATEGIES)


__all__ = ["HOST_STRATEGIES", "STRATEGIES", "get", "names"]
