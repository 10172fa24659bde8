"""The flags file (TOML) <-> :class:`~upgrader.flags.model.FlagSet`, every key checked.

Every problem is a :class:`~upgrader.errors.ConfigError` naming the file, the key path
(``flags.checkout.environments.production.rules[0].percent``) and the line. The same checks
run on the JSON document a store keeps (:func:`from_data`, no lines) and on a flag set built
in code (:func:`validate`), so nothing invalid reaches an evaluator. :func:`dump` writes a
flag set back as TOML (``loads(dump(x)) == x``). The format: docs/FLAGS.md.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, NoReturn

import tomli_w

from ..errors import ConfigError
from ..hashing import BUCKETS, threshold
from ..tomlsource import (
    Checker,
    KeyPath,
    check_boolean,
    describe_value,
    did_you_mean,
    format_key_path,
    parse_toml,
    read_text,
)
from .model import (
    BOOLEAN_VARIANTS,
    DEFAULT_ENVIRONMENTS,
    DEFAULT_STICKINESS,
    Condition,
    EnvConfig,
    Flag,
    FlagKind,
    FlagSet,
    Op,
    Prerequisite,
    Rule,
    Split,
    Tier,
    value_type,
)
from .semver import parse_semver

__all__ = ["dump", "dump_flag", "from_data", "load", "loads", "to_data", "validate"]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
FLAG_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SCHEMA_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_PATTERN_WORDS = {
    NAME_RE: "letters, digits, '.', '_' and '-', starting with a letter or digit, "
             "at most 63 characters",
    FLAG_KEY_RE: "letters, digits, '.', '_' and '-', starting with a letter or digit, "
                 "at most 128 characters",
    SCHEMA_RE: "letters, digits, '.', '_', '+' and '-', starting with a letter or digit",
}

TOP_KEYS = ("version", "environments", "tiers", "flags")
TIER_KEYS = ("description", "extends", "flags")
FLAG_KEYS = ("description", "kind", "variants", "default", "off", "tags", "schema",
             "prerequisites", "environments")
ENV_KEYS = ("enabled", "default", "off", "targets", "rules")
RULE_KEYS = ("name", "groups", "tiers", "conditions", "variant", "percent", "rollout",
             "stickiness", "salt")
CONDITION_KEYS = ("attribute", "op", "value", "values")
SPLIT_KEYS = ("variant", "weight")
PREREQUISITE_KEYS = ("flag", "variant")
MAX_TEXT = 1024
MAX_PREREQUISITE_DEPTH = 64

_NUMERIC_OPS = (Op.LT, Op.LTE, Op.GT, Op.GTE)
_SEMVER_OPS = (Op.SEMVER_EQ, Op.SEMVER_LT, Op.SEMVER_LTE, Op.SEMVER_GT, Op.SEMVER_GTE)
_STRING_OPS = (Op.STARTS_WITH, Op.ENDS_WITH)


# ---------------------------------------------------------------------------------------------
# Entry points


def load(path: str | Path) -> FlagSet:
    """Read and check the flags file at ``path``."""
    return loads(read_text(path, "flags file"), source=path)


def loads(text: str, *, source: str | Path = "<string>") -> FlagSet:
    """Check the flags file ``text`` and build its :class:`FlagSet`."""
    return _Checker(source, text).flagset(parse_toml(text, source))


def from_data(data: Any, *, source: str | Path | None = None) -> FlagSet:
    """Check a flag set given as plain data (the shape of :func:`to_data`: what a store keeps
    as JSON) and build it. Errors name ``source`` and the key path, without a line."""
    return _Checker(source, None).flagset(data)


def validate(flagset: FlagSet, *, source: str | Path | None = None) -> FlagSet:
    """Check a flag set built in code (an edited copy) with the flags file's rules; return it
    as the loader would build it. Raises :class:`ConfigError` for anything a file could not
    say (an unknown variant, a percentage out of range, a prerequisite cycle, ...)."""
    try:
        data = to_data(flagset)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"not a valid flag set: {exc}", file=source) from exc
    return from_data(data, source=source)


def dump(flagset: FlagSet) -> str:
    """The flag set as a flags file (TOML); :func:`loads` reads it back equal."""
    return _toml(to_data(flagset))


def dump_flag(flag: Flag) -> str:
    """One flag as the ``[flags.KEY]`` part of a flags file."""
    return _toml({"flags": {flag.key: _flag_data(flag)}})


def _toml(data: dict[str, Any]) -> str:
    """tomli-w's TOML with short arrays of one-line items on one line, as people write them
    (checked: the compact text must parse to the same data, else tomli-w's text is kept)."""
    text = tomli_w.dumps(data)
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.endswith(" = ["):
            j = i + 1
            items: list[str] = []
            while (j < len(lines) and lines[j].startswith("    ") and lines[j].endswith(",")
                   and lines[j][4:5] not in (" ", "[", "]")):
                items.append(lines[j][4:-1])
                j += 1
            joined = f"{line}{', '.join(items)}]"
            if items and j < len(lines) and lines[j] == "]" and len(joined) <= 100:
                out.append(joined)
                i = j + 1
                continue
        out.append(line)
        i += 1
    compact = "\n".join(out)
    try:
        if tomllib.loads(compact) == tomllib.loads(text):
            return compact
    except tomllib.TOMLDecodeError:
        pass
    return text


# ---------------------------------------------------------------------------------------------
# FlagSet -> plain data (TOML and JSON)


def to_data(flagset: FlagSet) -> dict[str, Any]:
    """The flag set as plain data: dicts, lists, strings, numbers, booleans. Keys at their
    defaults are left out, so exported files stay short."""
    data: dict[str, Any] = {"version": flagset.version,
                            "environments": list(flagset.environments)}
    if flagset.tiers:
        data["tiers"] = {name: _tier_data(tier) for name, tier in flagset.tiers.items()}
    if flagset.flags:
        data["flags"] = {key: _flag_data(flag) for key, flag in flagset.flags.items()}
    return data


def _tier_data(tier: Tier) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if tier.description:
        data["description"] = tier.description
    if tier.extends is not None:
        data["extends"] = tier.extends
    data["flags"] = dict(tier.flags)
    return data


def _is_boolean_default(variants: Mapping[str, Any]) -> bool:
    return (len(variants) == 2 and all(type(v) is bool for v in variants.values())
            and dict(variants) == BOOLEAN_VARIANTS)


def _flag_data(flag: Flag) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if flag.description:
        data["description"] = flag.description
    data["kind"] = str(flag.kind)
    if not _is_boolean_default(flag.variants):
        data["variants"] = dict(flag.variants)
    off = _fallback_off(flag.variants)
    if flag.off_variant != off:
        data["off"] = flag.off_variant
    if flag.default_variant != flag.off_variant:
        data["default"] = flag.default_variant
    if flag.tags:
        data["tags"] = list(flag.tags)
    if flag.schema is not None:
        data["schema"] = flag.schema
    if flag.prerequisites:
        data["prerequisites"] = [{"flag": p.flag, "variant": p.variant}
                                 for p in flag.prerequisites]
    if flag.environments:
        data["environments"] = {name: _env_data(env) for name, env in flag.environments.items()}
    return data


def _env_data(env: EnvConfig) -> dict[str, Any]:
    data: dict[str, Any] = {"enabled": env.enabled}
    if env.default_variant is not None:
        data["default"] = env.default_variant
    if env.off_variant is not None:
        data["off"] = env.off_variant
    if env.targets:
        data["targets"] = {variant: list(users) for variant, users in env.targets.items()}
    if env.rules:
        data["rules"] = [_rule_data(rule) for rule in env.rules]
    return data


def _rule_data(rule: Rule) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if rule.name is not None:
        data["name"] = rule.name
    if rule.groups:
        data["groups"] = list(rule.groups)
    if rule.tiers:
        data["tiers"] = list(rule.tiers)
    if rule.conditions:
        data["conditions"] = [_condition_data(c) for c in rule.conditions]
    if rule.variant is not None:
        data["variant"] = rule.variant
    if rule.percent is not None:
        data["percent"] = rule.percent
    if rule.rollout:
        data["rollout"] = [{"variant": s.variant, "weight": s.weight} for s in rule.rollout]
    if rule.stickiness != DEFAULT_STICKINESS:
        data["stickiness"] = rule.stickiness
    if rule.salt is not None:
        data["salt"] = rule.salt
    return data


def _condition_data(condition: Condition) -> dict[str, Any]:
    op = Op(condition.op)
    data: dict[str, Any] = {"attribute": condition.attribute, "op": str(op)}
    if op.takes_list:
        data["values"] = list(condition.values)
    else:
        data["value"] = condition.values[0]
    return data


def _fallback_off(variants: Mapping[str, Any]) -> str:
    """The off variant of a flag that does not name one: "off" if it has one, else the first."""
    if "off" in variants:
        return "off"
    return next(iter(variants), "off")


# ---------------------------------------------------------------------------------------------
# Plain data -> FlagSet, checked


class _Checker:
    """The flags file's checks, on the toolkit's :class:`Checker` (no lines for plain data)."""

    def __init__(self, source: str | Path | None, text: str | None) -> None:
        self.source = source
        self.text = text
        self.checker = Checker(source, text)

    # -- errors

    def error(self, path: KeyPath, message: str) -> NoReturn:
        self.checker.error(path, message)

    def unknown(self, path: KeyPath, what: str, name: str, known: Collection[str]) -> NoReturn:
        message = f"unknown {what} {name!r}{did_you_mean(name, known)}"
        message += f"; known: {', '.join(known) or '(none)'}"
        self.error(path, message)

    # -- shapes

    def table(self, value: Any, path: KeyPath, allowed: Collection[str] | None,
              where: str) -> dict[str, Any]:
        return self.checker.table(value, path, allowed, where)

    def required(self, table: Mapping[str, Any], path: KeyPath, key: str) -> Any:
        return self.checker.get(table, path, key, where="")

    def string(self, value: Any, path: KeyPath, *, pattern: re.Pattern[str] | None = None,
               what: str = "value", empty: bool = False) -> str:
        if not isinstance(value, str):
            self.error(path, f"expected a string, got {describe_value(value)}")
        if not value and not empty:
            self.error(path, f"expected a non-empty string ({what})")
        if len(value) > MAX_TEXT:
            self.error(path, f"a {what} may have at most {MAX_TEXT} characters")
        if pattern is not None and not pattern.fullmatch(value):
            self.error(path, f"{value!r} is not a valid {what} (allowed: "
                             f"{_PATTERN_WORDS.get(pattern, pattern.pattern)})")
        if "\n" in value or "\r" in value or "\x00" in value:
            self.error(path, f"a {what} may not contain a line break or NUL")
        return value

    def strings(self, value: Any, path: KeyPath, *, what: str, pattern: re.Pattern[str] | None
                = None, non_empty: bool = True) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.error(path, f"expected an array of strings ({what}s), "
                             f"got {describe_value(value)}")
        if non_empty and not value:
            self.error(path, f"expected at least one {what}")
        seen: set[str] = set()
        for i, item in enumerate(value):
            self.string(item, path + (i,), pattern=pattern, what=what)
            if item in seen:
                self.error(path + (i,), f"{what} {item!r} is listed twice")
            seen.add(item)
        return tuple(value)

    def boolean(self, value: Any, path: KeyPath) -> bool:
        return bool(self.checker.checked(path, check_boolean, value))

    def percentage(self, value: Any, path: KeyPath, what: str) -> int | float:
        """A number 0..100 in steps of 0.01 (one bucket of 10,000)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(path, f"expected a {what} between 0 and 100, got {describe_value(value)}")
        if not math.isfinite(value) or value < 0 or value > 100:
            self.error(path, f"a {what} must be between 0 and 100, got {value}")
        if abs(value * BUCKETS / 100 - threshold(value)) > 1e-6:
            self.error(path, f"a {what} has at most two decimals (one bucket is 0.01 %), "
                             f"got {value}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    def variant(self, value: Any, path: KeyPath, flag: str, variants: Mapping[str, Any]) -> str:
        name = self.string(value, path, what="variant name")
        if name not in variants:
            self.unknown(path, f"variant of flag {flag!r}:", name, list(variants))
        return name

    def json_value(self, value: Any, path: KeyPath, depth: int = 0) -> None:
        """A variant value: what JSON can carry (no dates, no NaN)."""
        if depth > 32:
            self.error(path, "a variant value is nested too deeply (at most 32 levels)")
        if isinstance(value, (bool, int, str)):
            return
        if isinstance(value, float):
            if not math.isfinite(value):
                self.error(path, f"a variant value must be a finite number, got {value}")
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                self.json_value(item, path + (i,), depth + 1)
            return
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    self.error(path, "object keys must be strings")
                self.json_value(item, path + (key,), depth + 1)
            return
        self.error(path, f"a variant value must be a boolean, string, number, table or array "
                         f"(JSON), got {describe_value(value)}")

    # -- the flag set

    def flagset(self, data: Any) -> FlagSet:
        self.table(data, (), TOP_KEYS, "the flags file")
        version = data.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            self.error(("version",), f"expected an integer >= 0, got {describe_value(version)}")
        environments: tuple[str, ...] = DEFAULT_ENVIRONMENTS
        if "environments" in data:
            environments = self.strings(data["environments"], ("environments",),
                                        what="environment", pattern=NAME_RE)
        tiers_data = self.table(data.get("tiers", {}), ("tiers",), None, "")
        for name in tiers_data:
            self.string(name, ("tiers", name), pattern=NAME_RE, what="tier name")
        flags_data = self.table(data.get("flags", {}), ("flags",), None, "")
        flags: dict[str, Flag] = {}
        for key, value in flags_data.items():
            flags[key] = self.flag(key, value, environments, tiers_data)
        tiers = {name: self.tier(name, value, tiers_data, flags)
                 for name, value in tiers_data.items()}
        self.check_prerequisites(flags)
        self.check_tier_cycles(tiers)
        return FlagSet(environments=environments, flags=flags, tiers=tiers, version=version)

    def tier(self, name: str, value: Any, tiers: Mapping[str, Any],
             flags: Mapping[str, Flag]) -> Tier:
        path: KeyPath = ("tiers", name)
        table = self.table(value, path, TIER_KEYS, f"[tiers.{name}]")
        description = self.string(table.get("description", ""), path + ("description",),
                                  what="description", empty=True)
        extends = None
        if "extends" in table:
            extends = self.string(table["extends"], path + ("extends",), what="tier name")
            if extends not in tiers:
                self.unknown(path + ("extends",), "tier", extends, list(tiers))
            if extends == name:
                self.error(path + ("extends",), f"tier {name!r} extends itself")
        entries = self.table(table.get("flags", {}), path + ("flags",), None, "")
        for key, variant in entries.items():
            if key not in flags:
                self.unknown(path + ("flags", key), "flag", key, list(flags))
            self.variant(variant, path + ("flags", key), key, flags[key].variants)
        return Tier(name=name, description=description, flags=dict(entries), extends=extends)

    def flag(self, key: str, value: Any, environments: tuple[str, ...],
             tiers: Mapping[str, Any]) -> Flag:
        path: KeyPath = ("flags", key)
        self.string(key, path, pattern=FLAG_KEY_RE, what="flag key")
        table = self.table(value, path, FLAG_KEYS, f"[flags.{key}]")
        description = self.string(table.get("description", ""), path + ("description",),
                                  what="description", empty=True)
        kind_value = table.get("kind", "release")
        kinds = [str(k) for k in FlagKind]
        if kind_value not in kinds:
            shown = repr(kind_value) if isinstance(kind_value, str) else describe_value(kind_value)
            self.error(path + ("kind",), f"expected one of {', '.join(kinds)}; got {shown}")
        variants = dict(BOOLEAN_VARIANTS)
        if "variants" in table:
            variants = self.table(table["variants"], path + ("variants",), None, "")
            if not variants:
                self.error(path + ("variants",), "a flag needs at least one variant")
            for name, item in variants.items():
                self.string(name, path + ("variants", name), pattern=NAME_RE,
                            what="variant name")
                self.json_value(item, path + ("variants", name))
            kind = value_type(variants.values())
            if kind == "mixed":
                self.error(path + ("variants",), "all variants of a flag must have the same "
                                                 "type (boolean, string, number or object)")
            variants = dict(variants)
        off = _fallback_off(variants)
        if "off" in table:
            off = self.variant(table["off"], path + ("off",), key, variants)
        default = off
        if "default" in table:
            default = self.variant(table["default"], path + ("default",), key, variants)
        tags: tuple[str, ...] = ()
        if "tags" in table:
            tags = self.strings(table["tags"], path + ("tags",), what="tag", pattern=NAME_RE,
                                non_empty=False)
        schema = None
        if "schema" in table:
            schema = self.string(table["schema"], path + ("schema",), pattern=SCHEMA_RE,
                                 what="schema version")
        prerequisites: list[Prerequisite] = []
        if "prerequisites" in table:
            items = table["prerequisites"]
            if not isinstance(items, list):
                self.error(path + ("prerequisites",), f"expected an array of tables "
                           f"({{flag = ..., variant = ...}}), got {describe_value(items)}")
            for i, item in enumerate(items):
                ipath = path + ("prerequisites", i)
                entry = self.table(item, ipath, PREREQUISITE_KEYS, "a prerequisite")
                other = self.string(self.required(entry, ipath, "flag"), ipath + ("flag",),
                                    what="flag key")
                wanted = self.string(self.required(entry, ipath, "variant"),
                                     ipath + ("variant",), what="variant name")
                prerequisites.append(Prerequisite(flag=other, variant=wanted))
        envs: dict[str, EnvConfig] = {}
        if "environments" in table:
            envs_table = self.table(table["environments"], path + ("environments",), None, "")
            for env_name, env_value in envs_table.items():
                epath = path + ("environments", env_name)
                if env_name not in environments:
                    self.unknown(epath, "environment", env_name, environments)
                envs[env_name] = self.env(key, env_value, epath, variants, tiers)
        return Flag(key=key, description=description, kind=FlagKind(kind_value),
                    variants=variants, default_variant=default, off_variant=off,
                    environments=envs, prerequisites=tuple(prerequisites), tags=tags,
                    schema=schema)

    def env(self, key: str, value: Any, path: KeyPath, variants: Mapping[str, Any],
            tiers: Mapping[str, Any]) -> EnvConfig:
        table = self.table(value, path, ENV_KEYS, f"[{format_key_path(path)}]")
        enabled = self.boolean(table.get("enabled", False), path + ("enabled",))
        default = off = None
        if "default" in table:
            default = self.variant(table["default"], path + ("default",), key, variants)
        if "off" in table:
            off = self.variant(table["off"], path + ("off",), key, variants)
        targets: dict[str, tuple[str, ...]] = {}
        if "targets" in table:
            tpath = path + ("targets",)
            owner: dict[str, str] = {}
            for variant, users in self.table(table["targets"], tpath, None, "").items():
                self.variant(variant, tpath + (variant,), key, variants)
                users = self.strings(users, tpath + (variant,), what="user key")
                for i, user in enumerate(users):
                    if user in owner:
                        self.error(tpath + (variant, i), f"user {user!r} is a target of two "
                                   f"variants ({owner[user]!r} and {variant!r})")
                    owner[user] = variant
                targets[variant] = users
        rules: list[Rule] = []
        if "rules" in table:
            items = table["rules"]
            if not isinstance(items, list):
                self.error(path + ("rules",), f"expected an array of tables ([[...rules]]), "
                                              f"got {describe_value(items)}")
            names: set[str] = set()
            for i, item in enumerate(items):
                rule = self.rule(key, item, path + ("rules", i), variants, tiers)
                if rule.name is not None:
                    if rule.name in names:
                        self.error(path + ("rules", i, "name"),
                                   f"two rules are named {rule.name!r}")
                    names.add(rule.name)
                rules.append(rule)
        return EnvConfig(enabled=enabled, default_variant=default, off_variant=off,
                         targets=targets, rules=tuple(rules))

    def rule(self, key: str, value: Any, path: KeyPath, variants: Mapping[str, Any],
             tiers: Mapping[str, Any]) -> Rule:
        table = self.table(value, path, RULE_KEYS, "a rule")
        name = None
        if "name" in table:
            name = self.string(table["name"], path + ("name",), pattern=NAME_RE,
                               what="rule name")
        groups: tuple[str, ...] = ()
        if "groups" in table:
            groups = self.strings(table["groups"], path + ("groups",), what="group")
        rule_tiers: tuple[str, ...] = ()
        if "tiers" in table:
            rule_tiers = self.strings(table["tiers"], path + ("tiers",), what="tier")
            for i, tier in enumerate(rule_tiers):
                if tier not in tiers:
                    self.unknown(path + ("tiers", i), "tier", tier, list(tiers))
        conditions: list[Condition] = []
        if "conditions" in table:
            items = table["conditions"]
            if not isinstance(items, list) or not items:
                self.error(path + ("conditions",), "expected a non-empty array of conditions "
                           "({attribute = ..., op = ..., value(s) = ...})")
            for i, item in enumerate(items):
                conditions.append(self.condition(item, path + ("conditions", i)))
        stickiness = DEFAULT_STICKINESS
        if "stickiness" in table:
            stickiness = self.string(table["stickiness"], path + ("stickiness",),
                                     what="attribute name")
        salt = None
        if "salt" in table:
            salt = self.string(table["salt"], path + ("salt",), what="salt", empty=True)
        variant = percent = None
        rollout: list[Split] = []
        if "variant" in table:
            variant = self.variant(table["variant"], path + ("variant",), key, variants)
        if "percent" in table:
            percent = self.percentage(table["percent"], path + ("percent",), "percent")
            if variant is None:
                variant = _true_variant(variants)
                if variant is None:
                    self.error(path + ("percent",), "`percent` serves the variant whose value "
                               "is true; this flag has none: say which (variant = ...)")
        if "rollout" in table:
            rpath = path + ("rollout",)
            if variant is not None or percent is not None:
                self.error(rpath, "a rule serves either `variant` (with an optional `percent`) "
                                  "or a weighted `rollout`, not both")
            items = table["rollout"]
            if not isinstance(items, list) or not items:
                self.error(rpath, "expected a non-empty array of {variant = ..., weight = ...}")
            total = 0
            seen: set[str] = set()
            for i, item in enumerate(items):
                spath = rpath + (i,)
                entry = self.table(item, spath, SPLIT_KEYS, "a roll-out arm")
                arm = self.variant(self.required(entry, spath, "variant"), spath + ("variant",),
                                   key, variants)
                if arm in seen:
                    self.error(spath + ("variant",), f"variant {arm!r} is listed twice")
                seen.add(arm)
                weight = self.percentage(self.required(entry, spath, "weight"),
                                         spath + ("weight",), "weight")
                total += threshold(weight)
                rollout.append(Split(variant=arm, weight=weight))
            if total != BUCKETS:
                self.error(rpath, f"the weights of a roll-out must add up to 100, "
                                  f"they add up to {total / 100:g}")
        if variant is None and not rollout:
            self.error(path, "a rule must serve something: `variant`, `percent` or `rollout`")
        return Rule(name=name, groups=groups, tiers=rule_tiers, conditions=tuple(conditions),
                    variant=variant, percent=percent, rollout=tuple(rollout),
                    stickiness=stickiness, salt=salt)

    def condition(self, value: Any, path: KeyPath) -> Condition:
        table = self.table(value, path, CONDITION_KEYS, "a condition")
        attribute = self.string(self.required(table, path, "attribute"), path + ("attribute",),
                                what="attribute name")
        op_value = self.required(table, path, "op")
        ops = [str(op) for op in Op]
        if op_value not in ops:
            shown = repr(op_value) if isinstance(op_value, str) else describe_value(op_value)
            self.error(path + ("op",), f"expected one of {', '.join(ops)}; got {shown}")
        op = Op(op_value)
        if op.takes_list:
            if "value" in table:
                self.error(path + ("value",), f"`{op}` takes `values = [...]`, not `value`")
            items = self.required(table, path, "values")
            if not isinstance(items, list) or not items:
                self.error(path + ("values",), f"expected a non-empty array, "
                                               f"got {describe_value(items)}")
            for i, item in enumerate(items):
                self.scalar(item, path + ("values", i))
            return Condition(attribute=attribute, op=op, values=tuple(items))
        if "values" in table:
            self.error(path + ("values",), f"`{op}` takes one `value`, not `values` "
                                           f"(only in and not_in take a list)")
        item = self.required(table, path, "value")
        vpath = path + ("value",)
        if op in _NUMERIC_OPS:
            if isinstance(item, bool) or not isinstance(item, (int, float)) \
                    or not math.isfinite(item):
                self.error(vpath, f"`{op}` compares numbers, got {describe_value(item)}")
        elif op in _SEMVER_OPS:
            if not isinstance(item, str) or parse_semver(item) is None:
                self.error(vpath, f"`{op}` compares semantic versions (like \"1.4.0\" or "
                                  f"\"2.0.0-rc.1\"), got {describe_value(item)}")
        elif op in _STRING_OPS:
            self.string(item, vpath, what="string")
        elif op is Op.CONTAINS:
            self.scalar(item, vpath)
        else:
            self.scalar(item, vpath)
        return Condition(attribute=attribute, op=op, values=(item,))

    def scalar(self, value: Any, path: KeyPath) -> None:
        if isinstance(value, str):
            self.string(value, path, what="value", empty=True)
            return
        if isinstance(value, (bool, int)):
            return
        if isinstance(value, float) and math.isfinite(value):
            return
        self.error(path, f"expected a string, number or boolean, got {describe_value(value)}")

    # -- cross checks

    def check_prerequisites(self, flags: Mapping[str, Flag]) -> None:
        for key, flag in flags.items():
            for i, prerequisite in enumerate(flag.prerequisites):
                ppath: KeyPath = ("flags", key, "prerequisites", i)
                if prerequisite.flag == key:
                    self.error(ppath + ("flag",), f"flag {key!r} is its own prerequisite")
                if prerequisite.flag not in flags:
                    self.unknown(ppath + ("flag",), "flag", prerequisite.flag, list(flags))
                self.variant(prerequisite.variant, ppath + ("variant",), prerequisite.flag,
                             flags[prerequisite.flag].variants)
        # cycles: depth-first search; the edge that closes one is reported
        state: dict[str, int] = {}          # 1: on the current path, 2: done

        def visit(key: str, trail: list[str]) -> None:      # trail ends with key
            if len(trail) > MAX_PREREQUISITE_DEPTH:
                self.error(("flags", key, "prerequisites"), f"prerequisites nested deeper than "
                           f"{MAX_PREREQUISITE_DEPTH} flags")
            state[key] = 1
            for i, prerequisite in enumerate(flags[key].prerequisites):
                other = prerequisite.flag
                if state.get(other) == 1:
                    cycle = trail[trail.index(other):] + [other]
                    self.error(("flags", key, "prerequisites", i, "flag"),
                               f"prerequisite cycle: {' -> '.join(cycle)}")
                if other not in state:
                    visit(other, trail + [other])
            state[key] = 2

        for key in flags:
            if key not in state:
                visit(key, [key])

    def check_tier_cycles(self, tiers: Mapping[str, Tier]) -> None:
        for name in tiers:
            chain = [name]
            current = tiers[name].extends
            while current is not None:
                if current in chain:
                    cycle = chain[chain.index(current):] + [current]
                    self.error(("tiers", chain[-1], "extends"),
                               f"tier cycle: {' extends '.join(cycle)}")
                chain.append(current)
                current = tiers[current].extends


def _true_variant(variants: Mapping[str, Any]) -> str | None:
    """The variant whose value is ``True`` (what ``percent`` serves by default), if one."""
    found = [name for name, value in variants.items() if value is True]
    return found[0] if len(found) == 1 else None
