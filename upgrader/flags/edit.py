"""Pure changes to a flag set: each returns a changed copy (same version) or raises
:class:`ConfigError` naming what is wrong; nothing is ever changed in place.

The store applies these inside its transactions; bisection and tests can use them on a
scratch copy. Each result is checked with the flags file's rules
(:func:`upgrader.flags.loader.validate`).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from ..errors import ConfigError
from ..tomlsource import format_key_path
from .loader import validate
from .model import Flag, FlagSet, Rule

__all__ = [
    "check_environment",
    "get_flag",
    "rollout_percent",
    "set_default",
    "set_enabled",
    "set_rollout",
]

ROLLOUT_RULE = "rollout"


def get_flag(flagset: FlagSet, key: str) -> Flag:
    """The flag ``key``; an unknown key is a ConfigError naming it (and a close match)."""
    flag = flagset.flags.get(key)
    if flag is None:
        message = f"unknown flag {key!r}"
        hint = difflib.get_close_matches(key, list(flagset.flags), n=1)
        if hint:
            message += f" (did you mean {hint[0]!r}?)"
        raise ConfigError(message, key=format_key_path(("flags", key)))
    return flag


def check_environment(flagset: FlagSet, environment: str) -> None:
    if environment not in flagset.environments:
        raise ConfigError(f"unknown environment {environment!r}; the flag set has: "
                          f"{', '.join(flagset.environments)}", key="environments")


def _with_env(flagset: FlagSet, key: str, environment: str, **changes: Any) -> FlagSet:
    flag = get_flag(flagset, key)
    check_environment(flagset, environment)
    env = dataclasses.replace(flag.env(environment), **changes)
    envs = dict(flag.environments)
    envs[environment] = env
    flags = dict(flagset.flags)
    flags[key] = dataclasses.replace(flag, environments=envs)
    return validate(dataclasses.replace(flagset, flags=flags))


def set_enabled(flagset: FlagSet, key: str, environment: str, on: bool) -> FlagSet:
    """Turn flag ``key`` on or off in ``environment``."""
    return _with_env(flagset, key, environment, enabled=bool(on))


def set_default(flagset: FlagSet, key: str, environment: str, variant: str) -> FlagSet:
    """Serve ``variant`` by default (when the flag is on and nothing matched)."""
    flag = get_flag(flagset, key)
    _check_variant(flag, variant, environment)
    return _with_env(flagset, key, environment, default_variant=variant)


def _percent_rules(rules: tuple[Rule, ...], name: str | None) -> list[int]:
    """The rule named ``name``, else the percentage rules (else the weighted ones)."""
    if name is not None:
        return [i for i, rule in enumerate(rules) if rule.name == name]
    found = [i for i, rule in enumerate(rules) if rule.percent is not None]
    return found or [i for i, rule in enumerate(rules) if rule.rollout]


def rollout_percent(flag: Flag, environment: str, rule: str | None = None) -> float | None:
    """The percentage of the flag's percentage rule in ``environment`` (None if none or more
    than one and ``rule`` does not say which)."""
    found = _percent_rules(flag.env(environment).rules, rule)
    if len(found) != 1:
        return None
    return flag.env(environment).rules[found[0]].percent


def set_rollout(flagset: FlagSet, key: str, environment: str, percent: float, *,
                rule: str | None = None, variant: str | None = None) -> FlagSet:
    """Set the percentage of the flag's percentage rule in ``environment``.

    The rule is the one named ``rule``, else the only rule with a ``percent``; with none, a
    rule named ``rollout`` serving ``variant`` (default: the variant whose value is true) to
    ``percent`` of everyone is added after the other rules. ``variant`` also changes what an
    existing rule serves. Several percentage rules and no ``rule``: ConfigError.
    """
    flag = get_flag(flagset, key)
    check_environment(flagset, environment)
    if variant is not None:
        _check_variant(flag, variant, environment)
    rules = flag.env(environment).rules
    found = _percent_rules(rules, rule)
    where = format_key_path(("flags", key, "environments", environment, "rules"))
    if len(found) > 1:
        names = ", ".join(rules[i].name or f"rules[{i}]" for i in found)
        raise ConfigError(f"flag {key!r} has several percentage rules in {environment} "
                          f"({names}): name one (--rule NAME)", key=where)
    if found:
        index = found[0]
        current = rules[index]
        if current.rollout:
            raise ConfigError(f"rule {current.name or f'rules[{index}]'} is a weighted "
                              f"roll-out (rollout = [...]); change its weights in the flags "
                              f"file", key=f"{where}[{index}]")
        changed = dataclasses.replace(current, percent=percent,
                                      variant=variant or current.variant)
        new_rules = rules[:index] + (changed,) + rules[index + 1:]
    else:
        if rule is not None and rule != ROLLOUT_RULE:
            raise ConfigError(f"flag {key!r} has no rule named {rule!r} in {environment}",
                              key=where)
        if variant is None:
            trues = [name for name, value in flag.variants.items() if value is True]
            if len(trues) != 1:
                raise ConfigError(f"flag {key!r} is not a boolean flag: say which variant "
                                  f"the roll-out serves (--variant)", key=where)
            variant = trues[0]
        rule_names = {r.name for r in rules}
        name = ROLLOUT_RULE if ROLLOUT_RULE not in rule_names else None
        new_rules = rules + (Rule(name=name, variant=variant, percent=percent),)
    return _with_env(flagset, key, environment, rules=new_rules)


GROUPS_RULE = "rollout-groups"


def set_group_rule(flagset: FlagSet, key: str, environment: str, groups: tuple[str, ...], *,
                   variant: str | None = None) -> FlagSet:
    """Serve ``variant`` (default: the true one) to users of ``groups``, through a rule named
    ``rollout-groups`` placed before every other rule (a phased feature roll-out by group).
    Empty ``groups`` removes the rule."""
    flag = get_flag(flagset, key)
    check_environment(flagset, environment)
    rules = tuple(r for r in flag.env(environment).rules if r.name != GROUPS_RULE)
    if not groups:
        return _with_env(flagset, key, environment, rules=rules)
    if variant is None:
        trues = [name for name, value in flag.variants.items() if value is True]
        if len(trues) != 1:
            raise ConfigError(f"flag {key!r} is not a boolean flag: say which variant the "
                              "groups get", key=format_key_path(("flags", key, "variants")))
        variant = trues[0]
    _check_variant(flag, variant, environment)
    rule = Rule(name=GROUPS_RULE, groups=tuple(groups), variant=variant)
    return _with_env(flagset, key, environment, rules=(rule,) + rules)


def _check_variant(flag: Flag, variant: str, environment: str) -> None:
    if variant not in flag.variants:
        message = f"unknown variant {variant!r} of flag {flag.key!r}"
        hint = difflib.get_close_matches(variant, list(flag.variants), n=1)
        if hint:
            message += f" (did you mean {hint[0]!r}?)"
        message += f"; known: {', '.join(flag.variants)}"
        raise ConfigError(message, key=format_key_path(("flags", flag.key, "variants")))

