"""Feature flags as plain data: a :class:`FlagSet` of :class:`Flag` s and membership
:class:`Tier` s, as the flags file (docs/FLAGS.md) describes them.

Objects are frozen; treat their dicts as read-only too (an evaluator compiled from a flag set
keeps pointing at them). Build changed copies with :func:`dataclasses.replace` or the helpers
in :mod:`upgrader.flags.edit`, then validate them (:func:`upgrader.flags.loader.validate`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BOOLEAN_VARIANTS", "DEFAULT_ENV", "DEFAULT_ENVIRONMENTS", "DEFAULT_STICKINESS",
           "Condition", "EnvConfig", "Flag", "FlagKind", "FlagSet", "Op", "Prerequisite", "Rule",
           "Split", "Tier", "value_type"]

#: a flag without ``variants`` is boolean
BOOLEAN_VARIANTS: Mapping[str, Any] = {"on": True, "off": False}
#: the context attribute a percentage roll-out hashes unless a rule says otherwise
DEFAULT_STICKINESS = "targetingKey"
#: a flags file without ``environments`` has just this one
DEFAULT_ENVIRONMENTS = ("production",)
#: the environment a flags command (and the OFREP server) works on unless told otherwise
DEFAULT_ENV = DEFAULT_ENVIRONMENTS[0]
#: where ``upgrader flags serve`` (OFREP) listens by default (here, not in ofrep.py: the
#: command line shows it without importing the server and aiohttp)
DEFAULT_LISTEN = "127.0.0.1:8500"


class FlagKind(enum.StrEnum):
    """What a flag is for (metadata: lists, reports and the TUI show it; evaluation ignores it)."""

    RELEASE = "release"            # hides unfinished work; removed once the feature is done
    KILL_SWITCH = "kill_switch"    # long-lived, normally on: turning it off disables a feature
    PERMISSION = "permission"      # who may use a feature (groups, tiers)
    EXPERIMENT = "experiment"      # variants compared by a percentage split


class Op(enum.StrEnum):
    """The operators of an attribute condition (docs/FLAGS.md, "Rules")."""

    IN = "in"
    NOT_IN = "not_in"
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    SEMVER_EQ = "semver_eq"
    SEMVER_LT = "semver_lt"
    SEMVER_LTE = "semver_lte"
    SEMVER_GT = "semver_gt"
    SEMVER_GTE = "semver_gte"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    ENDS_WITH = "ends_with"

    @property
    def takes_list(self) -> bool:
        """``in`` and ``not_in`` take ``values = [...]``; every other operator one ``value``."""
        return self in (Op.IN, Op.NOT_IN)


@dataclass(frozen=True, slots=True)
class Condition:
    """``context[attribute] <op> values``. ``values`` holds one item unless the op is
    ``in``/``not_in``. A context without the attribute never matches (``not_in`` neither)."""

    attribute: str
    op: Op
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Split:
    """One arm of a weighted roll-out: ``weight`` percent of the bucketed users get ``variant``."""

    variant: str
    weight: float


@dataclass(frozen=True, slots=True)
class Rule:
    """A targeting rule: every clause given must match (AND), then the rule serves.

    Clauses: ``groups`` (the context's ``groups`` shares one), ``tiers`` (the context's ``tier``
    is one of these or extends one), ``conditions`` (attribute conditions, all true).
    Serving: ``variant`` alone (everyone who matches); ``variant`` + ``percent`` (that share of
    the matching users by sticky bucket, the others fall through to the next rule); or
    ``rollout`` (weighted variants summing to 100, everyone who matches gets one).
    ``stickiness`` names the context attribute hashed for percentages; ``salt`` (``None``: the
    flag key) is hashed with it.
    """

    name: str | None = None
    groups: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    variant: str | None = None
    percent: float | None = None
    rollout: tuple[Split, ...] = ()
    stickiness: str = DEFAULT_STICKINESS
    salt: str | None = None

    @property
    def is_split(self) -> bool:
        """True for a percentage or weighted roll-out (reason SPLIT when it serves)."""
        return self.percent is not None or bool(self.rollout)


@dataclass(frozen=True, slots=True)
class EnvConfig:
    """A flag in one environment. ``None`` variants fall back to the flag's own
    (:attr:`Flag.default_variant`, :attr:`Flag.off_variant`)."""

    enabled: bool = False
    default_variant: str | None = None
    off_variant: str | None = None
    #: individual targets: variant -> user keys (matched against ``context["targetingKey"]``)
    targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class Prerequisite:
    """The flag ``flag`` must evaluate to ``variant`` (same context) for this one to go on."""

    flag: str
    variant: str


@dataclass(frozen=True, slots=True)
class Flag:
    key: str
    description: str = ""
    kind: FlagKind = FlagKind.RELEASE
    variants: Mapping[str, Any] = field(default_factory=lambda: dict(BOOLEAN_VARIANTS))
    #: served when the flag is on and nothing else matched, in environments that do not say
    default_variant: str = "off"
    #: served when the flag is off (or a prerequisite fails), in environments that do not say
    off_variant: str = "off"
    #: per environment; an environment not listed is off
    environments: Mapping[str, EnvConfig] = field(default_factory=dict)
    prerequisites: tuple[Prerequisite, ...] = ()
    tags: tuple[str, ...] = ()
    #: the schema version (upgrader.schema) the flag's code needs, if any
    schema: str | None = None

    def env(self, environment: str) -> EnvConfig:
        """The flag's configuration in ``environment`` (off when the flag does not list it)."""
        config = self.environments.get(environment)
        return config if config is not None else _OFF

    def default_in(self, environment: str) -> str:
        return self.env(environment).default_variant or self.default_variant

    def off_in(self, environment: str) -> str:
        return self.env(environment).off_variant or self.off_variant

    @property
    def value_type(self) -> str:
        """``boolean``, ``string``, ``integer``, ``float`` or ``object`` (OpenFeature's types)."""
        return value_type(self.variants.values())


_OFF = EnvConfig()


@dataclass(frozen=True, slots=True)
class Tier:
    """A membership level: a named set of flag -> variant, inheriting from ``extends``.

    A context whose ``tier`` is this tier gets these variants (its own entries win over the
    inherited ones) for flags that are on in the environment.
    """

    name: str
    description: str = ""
    flags: Mapping[str, str] = field(default_factory=dict)
    extends: str | None = None


@dataclass(frozen=True, slots=True)
class FlagSet:
    """Everything a flags file or a store holds. ``version`` counts the store's changes."""

    environments: tuple[str, ...] = DEFAULT_ENVIRONMENTS
    flags: Mapping[str, Flag] = field(default_factory=dict)
    tiers: Mapping[str, Tier] = field(default_factory=dict)
    version: int = 0
    #: compiled evaluators by environment (see upgrader.flags.evaluate.compile_flags)
    _evaluators: dict[str, Any] = field(default_factory=dict, init=False, repr=False,
                                        compare=False)

    def tier_chain(self, name: str) -> tuple[str, ...]:
        """``name`` and the tiers it extends, nearest first (gold, silver, bronze)."""
        chain: list[str] = []
        current: str | None = name
        while current is not None and current in self.tiers and current not in chain:
            chain.append(current)
            current = self.tiers[current].extends
        return tuple(chain)


def value_type(values: Any) -> str:
    """The OpenFeature type of a flag's variant values (``mixed`` when they disagree)."""
    kinds = set()
    for value in values:
        if isinstance(value, bool):
            kinds.add("boolean")
        elif isinstance(value, int):
            kinds.add("integer")
        elif isinstance(value, float):
            kinds.add("float")
        elif isinstance(value, str):
            kinds.add("string")
        else:
            kinds.add("object")
    if kinds == {"integer", "float"}:
        return "float"
    if len(kinds) == 1:
        return kinds.pop()
    return "mixed" if kinds else "boolean"
