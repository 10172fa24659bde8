"""Shared helpers for the pure unit tests: fleets built directly from the model dataclasses,
and a ``where`` that raises ConfigError at a key (as the config loader's does)."""

from __future__ import annotations

from typing import NoReturn

import pytest

from upgrader.errors import ConfigError
from upgrader.model import (
    Commands,
    Fleet,
    Host,
    ProviderSpec,
    Releases,
    StrategySpec,
    Timing,
    UserGroup,
    VerifySpec,
)

ZONES = ("a", "b", "c")


def make_fleet(n: int, new: int = 0, slots: bool = False,
               groups: tuple[UserGroup, ...] | tuple[str, ...] = (),
               zones: tuple[str, ...] | None = ZONES, verify_for: float = 60.0,
               timing: Timing | None = None) -> Fleet:
    """``n`` main hosts web-0001.. (zones round-robin over ``zones``; None: no zone labels),
    ``new`` hosts of the parallel cluster, two slots per main host when ``slots``; ``groups``
    as UserGroups or names (named groups with a header value of the same name)."""
    hosts = []
    for i in range(1, n + 1):
        labels = {"zone": zones[i % len(zones)]} if zones else {}
        hosts.append(Host(name=f"web-{i:04d}", port=9000 + i, labels=labels,
                          slots={"blue": 9000 + i, "green": 19000 + i} if slots else {}))
    for i in range(1, new + 1):
        hosts.append(Host(name=f"new-{i:04d}", port=29000 + i, cluster="new"))
    user_groups = tuple(g if isinstance(g, UserGroup) else UserGroup(name=g, header_values=(g,))
                        for g in groups)
    return Fleet(
        name="test",
        hosts=tuple(hosts),
        releases=Releases(current="1.0.0", target="1.1.0"),
        commands=Commands(install=("deploy", "{release}"), start=("start",), stop=("stop",),
                          system_test=("smoke", "{address}:{port}")),
        transport=ProviderSpec("local"),
        balancer=ProviderSpec("builtin"),
        health=ProviderSpec("http"),
        strategy=StrategySpec(kind="rolling", params=None),
        verify=VerifySpec(for_=verify_for),
        timing=timing or Timing(),
        groups=user_groups,
    )


class RaisingWhere:
    """A ``where`` that raises ConfigError located at the key, like the loader's."""

    def error(self, key: str | None, message: str) -> NoReturn:
        raise ConfigError(message, key=key)


@pytest.fixture(scope="session")
def fleet_factory():
    return make_fleet


@pytest.fixture(scope="session")
def where() -> RaisingWhere:
    return RaisingWhere()
