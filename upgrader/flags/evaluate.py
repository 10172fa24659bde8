"""Flag evaluation: a flag set compiled once per version and environment into an
:class:`Evaluator`, then ``evaluate(key, context) -> Resolution``.

Compiling turns each flag into one closure over precomputed data (sets, thresholds, the
salt's bytes) and precomputed :class:`Resolution` objects, so evaluating is a few dictionary
look-ups and at most one hash per percentage rule, with nothing allocated. The evaluation
order and the reasons are documented in docs/FLAGS.md ("Evaluation").
"""

from __future__ import annotations

import enum
import hashlib
import json
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from ..errors import ConfigError
from ..hashing import bucketer, threshold
from .loader import to_data
from .model import Condition, Flag, FlagSet, Op, Rule
from .semver import parse_semver, semver_key

__all__ = ["ErrorCode", "Evaluator", "Reason", "Resolution", "compile_flags"]


class Reason(enum.StrEnum):
    """Why a flag resolved as it did (OpenFeature's resolution reasons)."""

    STATIC = "STATIC"                    # the flag has no targeting: the value cannot vary
    TARGETING_MATCH = "TARGETING_MATCH"  # an individual target, a tier or a rule matched
    SPLIT = "SPLIT"                      # a percentage roll-out picked the variant
    DISABLED = "DISABLED"                # off in this environment, or a prerequisite failed
    DEFAULT = "DEFAULT"                  # on, targeted, but nothing matched
    ERROR = "ERROR"                      # see error_code


class ErrorCode(enum.StrEnum):
    """OpenFeature's error codes (the OFREP server maps them to HTTP statuses)."""

    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    PARSE_ERROR = "PARSE_ERROR"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    INVALID_CONTEXT = "INVALID_CONTEXT"
    GENERAL = "GENERAL"


@dataclass(frozen=True, slots=True)
class Resolution:
    """The result of evaluating one flag. Shared between calls: do not mutate ``value``.

    ``rule`` names what matched: ``"targets"``, ``"tier:<name>"`` (the tier whose entry
    applied), the rule's ``name`` (or ``"rules[<i>]"``), ``"prerequisite:<key>"`` (the
    prerequisite that failed), or ``None`` (disabled, default, static, error).
    """

    key: str
    value: Any
    variant: str | None
    reason: Reason
    rule: str | None = None
    error_code: ErrorCode | None = None
    error_message: str | None = None


Step = Callable[[Mapping[str, Any]], "Resolution | None"]
FlagFunction = Callable[[Mapping[str, Any]], Resolution]

TARGETING_KEY = "targetingKey"


def compile_flags(flagset: FlagSet, environment: str) -> Evaluator:
    """The evaluator of ``flagset`` in ``environment``, compiled on first use and kept with
    the flag set: the same FlagSet object (a store hands out one per version) always gives the
    same Evaluator. Raises :class:`ConfigError` for an unknown environment."""
    evaluator = flagset._evaluators.get(environment)
    if evaluator is None:
        evaluator = Evaluator(flagset, environment)
        flagset._evaluators[environment] = evaluator
    return evaluator


class Evaluator:
    """Evaluates the flags of one flag set in one environment. Build it with
    :func:`compile_flags`; it is immutable and safe to share between threads."""

    __slots__ = ("_functions", "_needs_key", "environment", "etag", "flagset", "version")

    def __init__(self, flagset: FlagSet, environment: str) -> None:
        if environment not in flagset.environments:
            raise ConfigError(f"unknown environment {environment!r}; the flag set has: "
                              f"{', '.join(flagset.environments)}", key="environments")
        self.flagset = flagset
        self.environment = environment
        #: the flag set's version (a store's change counter)
        self.version = flagset.version
        #: a strong ETag (with its quotes) for this environment's flag configuration: the
        #: same flags give the same tag in every process, any change gives another one
        self.etag = _etag(flagset, environment)
        compiler = _Compiler(flagset, environment)
        self._functions: dict[str, FlagFunction] = {
            key: compiler.flag(key) for key in flagset.flags}
        self._needs_key = frozenset(key for key in flagset.flags if compiler.needs_key(key))

    def evaluate(self, key: str, context: Mapping[str, Any]) -> Resolution:
        """Resolve flag ``key`` for ``context`` (a mapping: ``targetingKey``, ``groups``,
        ``tier``, any attribute). Never raises: an unknown flag is a Resolution with reason
        ERROR and error code FLAG_NOT_FOUND."""
        function = self._functions.get(key)
        if function is None:
            return Resolution(key, None, None, Reason.ERROR, None, ErrorCode.FLAG_NOT_FOUND,
                              f"flag {key!r} not found")
        try:
            return function(context)
        except Exception as exc:  # a context of the wrong shape; the closures guard the rest
            code = (ErrorCode.INVALID_CONTEXT if not isinstance(context, Mapping)
                    else ErrorCode.GENERAL)
            return Resolution(key, None, None, Reason.ERROR, None, code,
                              f"{type(exc).__name__}: {exc}")

    def evaluate_all(self, context: Mapping[str, Any]) -> list[Resolution]:
        """Every flag of the set, in the order of the flags file."""
        return [self.evaluate(key, context) for key in self._functions]

    def needs_targeting_key(self, key: str) -> bool:
        """True when the flag (or a prerequisite of it) is on in this environment and has a
        percentage roll-out sticky on ``targetingKey``: without one in the context that rule
        is skipped, which the OFREP layer reports as TARGETING_KEY_MISSING."""
        return key in self._needs_key

    def flag(self, key: str) -> Flag | None:
        return self.flagset.flags.get(key)

    def keys(self) -> tuple[str, ...]:
        return tuple(self._functions)

    def __contains__(self, key: object) -> bool:
        return key in self._functions

    def __iter__(self) -> Iterator[str]:
        return iter(self._functions)

    def __len__(self) -> int:
        return len(self._functions)

    def __repr__(self) -> str:
        return (f"<Evaluator {self.environment} version={self.version} "
                f"flags={len(self._functions)}>")


def _etag(flagset: FlagSet, environment: str) -> str:
    data = to_data(flagset)
    data.pop("version", None)
    text = json.dumps({"environment": environment, "flagset": data}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return '"' + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32] + '"'


# ---------------------------------------------------------------------------------------------
# The compiler


class _Compiler:
    def __init__(self, flagset: FlagSet, environment: str) -> None:
        self.flagset = flagset
        self.environment = environment
        self.functions: dict[str, FlagFunction] = {}
        #: flags whose result does not depend on the context (off, or untargeted)
        self.constants: dict[str, Resolution] = {}
        # tier name -> the tiers a `tiers = [...]` clause naming it matches (it and its
        # descendants: gold extends silver, so a rule for silver also matches gold)
        self.descendants: dict[str, set[str]] = {name: set() for name in flagset.tiers}
        for name in flagset.tiers:
            for ancestor in flagset.tier_chain(name):
                self.descendants[ancestor].add(name)

    def needs_key(self, key: str, seen: frozenset[str] = frozenset()) -> bool:
        flag = self.flagset.flags[key]
        config = flag.env(self.environment)
        if not config.enabled or key in seen or key in self.constants:
            return False
        if any(rule.is_split and rule.stickiness == TARGETING_KEY for rule in config.rules):
            return True
        return any(p.flag in self.flagset.flags and self.needs_key(p.flag, seen | {key})
                   for p in flag.prerequisites)

    def flag(self, key: str) -> FlagFunction:
        function = self.functions.get(key)
        if function is None:
            function = self.functions[key] = self._flag(key)
        return function

    def _flag(self, key: str) -> FlagFunction:
        flag = self.flagset.flags[key]
        config = flag.env(self.environment)
        variants = flag.variants
        made: dict[tuple[str, Reason, str | None], Resolution] = {}

        def resolution(variant: str, reason: Reason, rule: str | None = None) -> Resolution:
            found = made.get((variant, reason, rule))
            if found is None:
                found = made[variant, reason, rule] = Resolution(
                    key, variants[variant], variant, reason, rule)
            return found

        off = flag.off_in(self.environment)
        if not config.enabled:
            disabled = self.constants[key] = resolution(off, Reason.DISABLED)
            return lambda context: disabled

        steps: list[Step] = []
        for prerequisite in flag.prerequisites:
            failed = resolution(off, Reason.DISABLED, f"prerequisite:{prerequisite.flag}")
            function = self.flag(prerequisite.flag)
            constant = self.constants.get(prerequisite.flag)
            if constant is None:
                steps.append(_prerequisite_step(function, prerequisite.variant, failed))
            elif constant.variant != prerequisite.variant:   # fails for every context
                self.constants[key] = failed
                return lambda context: failed
            # else: met for every context, nothing to check
        if config.targets:
            by_user = {user: resolution(variant, Reason.TARGETING_MATCH, "targets")
                       for variant, users in config.targets.items() for user in users}
            steps.append(_lookup_step(TARGETING_KEY, by_user))
        by_tier: dict[str, Resolution] = {}
        for tier in self.flagset.tiers:
            for ancestor in self.flagset.tier_chain(tier):
                variant = self.flagset.tiers[ancestor].flags.get(key)
                if variant is not None:
                    by_tier[tier] = resolution(variant, Reason.TARGETING_MATCH, f"tier:{ancestor}")
                    break
        if by_tier:
            steps.append(_lookup_step("tier", by_tier))
        for index, rule in enumerate(config.rules):
            steps.append(self._rule(key, rule, rule.name or f"rules[{index}]", resolution))

        default = resolution(flag.default_in(self.environment),
                             Reason.DEFAULT if steps else Reason.STATIC)
        if not steps:
            self.constants[key] = default
        return _chain(tuple(steps), default)

    def _rule(self, key: str, rule: Rule, name: str,
              resolution: Callable[..., Resolution]) -> Step:
        tests: list[Callable[[Mapping[str, Any]], bool]] = []
        if rule.groups:
            tests.append(_groups_test(frozenset(rule.groups)))
        if rule.tiers:
            matching: set[str] = set()
            for tier in rule.tiers:
                matching |= self.descendants.get(tier, {tier})
            tests.append(_tier_test(frozenset(matching)))
        tests.extend(_condition_test(condition) for condition in rule.conditions)
        salt = key if rule.salt is None else rule.salt
        if rule.rollout:
            arms: list[tuple[int, Resolution]] = []
            bound = 0
            for split in rule.rollout:
                bound += threshold(split.weight)
                arms.append((bound, resolution(split.variant, Reason.SPLIT, name)))
            return _rollout_step(tuple(tests), rule.stickiness, bucketer(salt), tuple(arms))
        assert rule.variant is not None
        if rule.percent is not None:
            return _percent_step(tuple(tests), rule.stickiness, bucketer(salt),
                                 threshold(rule.percent),
                                 resolution(rule.variant, Reason.SPLIT, name))
        return _match_step(tuple(tests), resolution(rule.variant, Reason.TARGETING_MATCH, name))


# ---------------------------------------------------------------------------------------------
# Closures: the evaluation path. Each step returns a Resolution or None (no match: go on).


def _chain(steps: tuple[Step, ...], default: Resolution) -> FlagFunction:
    if not steps:
        return lambda context: default
    if len(steps) == 1:
        (only,) = steps

        def one(context: Mapping[str, Any]) -> Resolution:
            found = only(context)
            return default if found is None else found

        return one

    def chain(context: Mapping[str, Any]) -> Resolution:
        for step in steps:
            found = step(context)
            if found is not None:
                return found
        return default

    return chain


def _prerequisite_step(function: FlagFunction, wanted: str, failed: Resolution) -> Step:
    def prerequisite(context: Mapping[str, Any]) -> Resolution | None:
        return None if function(context).variant == wanted else failed

    return prerequisite


def _lookup_step(attribute: str, table: Mapping[str, Resolution]) -> Step:
    get = table.get

    def lookup(context: Mapping[str, Any]) -> Resolution | None:
        value = context.get(attribute)
        return get(value) if type(value) is str else None

    return lookup


def _match_step(tests: tuple[Callable[[Mapping[str, Any]], bool], ...],
                matched: Resolution) -> Step:
    if not tests:
        return lambda context: matched

    def match(context: Mapping[str, Any]) -> Resolution | None:
        for test in tests:
            if not test(context):
                return None
        return matched

    return match


def _sticky(context: Mapping[str, Any], attribute: str) -> str | None:
    value = context.get(attribute)
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    return None


def _percent_step(tests: tuple[Callable[[Mapping[str, Any]], bool], ...], stickiness: str,
                  bucket_of: Callable[[str], int], limit: int, matched: Resolution) -> Step:
    if len(tests) == 1:
        (test,) = tests

        def percent_one(context: Mapping[str, Any]) -> Resolution | None:
            if not test(context):
                return None
            value = context.get(stickiness)
            if type(value) is not str:
                if type(value) is not int:
                    return None
                value = str(value)
            try:
                return matched if bucket_of(value) < limit else None
            except UnicodeEncodeError:       # a lone surrogate from JSON: not a user key
                return None

        return percent_one

    def percent(context: Mapping[str, Any]) -> Resolution | None:
        for test in tests:
            if not test(context):
                return None
        value = _sticky(context, stickiness)
        if value is None:
            return None
        try:
            return matched if bucket_of(value) < limit else None
        except UnicodeEncodeError:
            return None

    return percent


def _rollout_step(tests: tuple[Callable[[Mapping[str, Any]], bool], ...], stickiness: str,
                  bucket_of: Callable[[str], int],
                  arms: tuple[tuple[int, Resolution], ...]) -> Step:
    def rollout(context: Mapping[str, Any]) -> Resolution | None:
        for test in tests:
            if not test(context):
                return None
        value = _sticky(context, stickiness)
        if value is None:
            return None
        try:
            bucket = bucket_of(value)
        except UnicodeEncodeError:
            return None
        for bound, arm in arms:
            if bucket < bound:
                return arm
        return None  # weights add up to 100: not reached

    return rollout


def _groups_test(groups: frozenset[str]) -> Callable[[Mapping[str, Any]], bool]:
    def in_groups(context: Mapping[str, Any]) -> bool:
        value = context.get("groups")
        if type(value) is str:
            return value in groups
        if type(value) in (list, tuple, set, frozenset):
            try:
                return not groups.isdisjoint(cast("Iterable[object]", value))
            except TypeError:       # an unhashable item: not a group name
                return False
        return False

    return in_groups


def _tier_test(tiers: frozenset[str]) -> Callable[[Mapping[str, Any]], bool]:
    def in_tiers(context: Mapping[str, Any]) -> bool:
        value = context.get("tier")
        return type(value) is str and value in tiers

    return in_tiers


_NUMBER = (int, float)


def _scalar_test(op: Op, operand: Any, values: tuple[Any, ...]) -> Callable[[Any], bool]:
    """The test of one context value (not a list) against the condition's operand."""
    if op in (Op.IN, Op.NOT_IN):
        # booleans apart: `true` must not match 1 (Python says True == 1)
        flags = frozenset(v for v in values if type(v) is bool)
        others = frozenset(v for v in values if type(v) is not bool)

        def is_in(value: Any) -> bool:
            if type(value) is bool:
                return value in flags
            try:
                return value in others
            except TypeError:       # unhashable (a table): not one of the values
                return False

        return is_in
    if op in (Op.EQUALS, Op.NOT_EQUALS):
        operand_is_bool = type(operand) is bool

        def equals(value: Any) -> bool:
            return (type(value) is bool) == operand_is_bool and value == operand

        return equals
    if op in (Op.LT, Op.LTE, Op.GT, Op.GTE):
        compare = {Op.LT: operator.lt, Op.LTE: operator.le, Op.GT: operator.gt,
                   Op.GTE: operator.ge}[op]
        return lambda value: type(value) in _NUMBER and compare(value, operand)
    if op in (Op.SEMVER_EQ, Op.SEMVER_LT, Op.SEMVER_LTE, Op.SEMVER_GT, Op.SEMVER_GTE):
        target = parse_semver(operand)
        check: Callable[[Any], bool] = {
            Op.SEMVER_EQ: lambda k: k == target, Op.SEMVER_LT: lambda k: k < target,
            Op.SEMVER_LTE: lambda k: k <= target, Op.SEMVER_GT: lambda k: k > target,
            Op.SEMVER_GTE: lambda k: k >= target}[op]

        def semver(value: Any) -> bool:
            if type(value) is not str:
                return False
            key = semver_key(value)
            return key is not None and check(key)

        return semver
    if op is Op.CONTAINS:
        if type(operand) is str:
            return lambda value: type(value) is str and operand in value
        return lambda value: False
    if op is Op.STARTS_WITH:
        return lambda value: type(value) is str and value.startswith(operand)
    if op is Op.ENDS_WITH:
        return lambda value: type(value) is str and value.endswith(operand)
    raise ValueError(f"unknown operator {op!r}")  # the loader lets none through


def _condition_test(condition: Condition) -> Callable[[Mapping[str, Any]], bool]:
    """A missing (or null) attribute never matches. A list attribute matches when any of its
    items does (``contains``: when it holds the value); ``not_in`` / ``not_equals`` match when
    the positive test fails for the value (for every item of a list)."""
    op = Op(condition.op)
    attribute = condition.attribute
    values = condition.values
    negate = op in (Op.NOT_IN, Op.NOT_EQUALS)
    test = _scalar_test(op, values[0], values)
    operand = values[0]
    is_contains = op is Op.CONTAINS

    def condition_test(context: Mapping[str, Any]) -> bool:
        value = context.get(attribute)
        if value is None:
            return False
        if type(value) in (list, tuple):
            if is_contains:
                found = any(item == operand and type(item) is type(operand) for item in value)
            else:
                found = any(test(item) for item in value)
        else:
            found = test(value)
        return not found if negate else found

    return condition_test
