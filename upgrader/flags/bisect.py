"""Flag bisection: which of many recently enabled flags breaks a test.

``find_culprits`` is the pure search (binary search for one culprit, delta debugging for a
combination that fails only together); ``upgrader flags bisect`` runs a real test command
against a scratch copy of the flag set with each subset of the candidates turned on.
"""

from __future__ import annotations

import enum
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

#: the environment variables a test command reads to find the flags it runs with
STORE_VARIABLE = "UPGRADER_FLAG_STORE"
ENV_VARIABLE = "UPGRADER_FLAG_ENV"


# --------------------------------------------------------------------------------------------
# The pure search


class Outcome(enum.Enum):
    CULPRIT = "culprit"                      # one flag on is enough to fail
    COMBINATION = "combination"              # these flags fail together, no fewer
    FAILS_WITHOUT_FLAGS = "fails-without-flags"  # the test fails with every candidate off
    PASSES_WITH_ALL = "passes-with-all"      # the test passes with every candidate on
    NO_CANDIDATES = "no-candidates"


@dataclass(frozen=True, slots=True)
class Step:
    """One run of the test: which candidates were on, and whether it passed."""

    number: int
    on: frozenset[str]
    passed: bool
    phase: str          # "bisect", "verify", "baseline" or "minimize"


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    culprits: tuple[str, ...]   # in candidate order; empty unless CULPRIT / COMBINATION
    runs: int
    steps: tuple[Step, ...]

    @property
    def found(self) -> bool:
        return self.outcome in (Outcome.CULPRIT, Outcome.COMBINATION)


class _Runner:
    """Runs the test at most once per distinct set of flags and records every run."""

    def __init__(self, test: Callable[[frozenset[str]], bool],
                 on_step: Callable[[Step], None] | None) -> None:
        self._test = test
        self._on_step = on_step
        self.seen: dict[frozenset[str], bool] = {}
        self.steps: list[Step] = []

    def passes(self, on: Iterable[str], phase: str) -> bool:
        key = frozenset(on)
        if key not in self.seen:
            passed = bool(self._test(key))
            self.seen[key] = passed
            step = Step(len(self.steps) + 1, key, passed, phase)
            self.steps.append(step)
            if self._on_step is not None:
                self._on_step(step)
        return self.seen[key]

    def fails(self, on: Iterable[str], phase: str) -> bool:
        return not self.passes(on, phase)

    @property
    def any_passed(self) -> bool:
        return any(self.seen.values())


def find_culprits(candidates: Iterable[str], test: Callable[[frozenset[str]], bool], *,
                  on_step: Callable[[Step], None] | None = None) -> Result:
    """Find the flag (or the smallest combination of flags) that makes ``test`` fail.

    ``test(on)`` runs the test with exactly the candidates in ``on`` turned on (the other
    candidates off) and returns True when it passes. Like delta debugging, the search assumes
    that turning more flags on never repairs a failure (monotonicity).

    1. Binary search for a single culprit: turn half of the suspects on; if that fails the
       culprit is in that half, else it is taken to be in the other half. The last suspect is
       proven by a run with only it on (at most ceil(log2 n) + 1 runs: 7 for 64 flags).
    2. If no single flag fails on its own, the flags fail only together: the test must fail
       with all of them on (else there is nothing to find), and delta debugging shrinks that
       set to a 1-minimal failing combination (turning off any one of its flags makes the test
       pass) by binary reduction: about k * log2(n) runs for k flags that fail together.
    3. The baseline with no candidate on is run only when no run has passed yet: a passing
       run with some flags on implies (by monotonicity) that none on passes too.

    ``on_step`` sees each run as it happens. No configuration is run twice.
    """
    order = list(dict.fromkeys(candidates))
    runner = _Runner(test, on_step)
    if not order:
        return Result(Outcome.NO_CANDIDATES, (), 0, ())

    def finish(outcome: Outcome, culprits: Sequence[str] = ()) -> Result:
        if outcome in (Outcome.CULPRIT, Outcome.COMBINATION) and not runner.any_passed \
                and runner.fails((), "baseline"):
            outcome, culprits = Outcome.FAILS_WITHOUT_FLAGS, ()
        rank = {key: i for i, key in enumerate(order)}
        return Result(outcome, tuple(sorted(culprits, key=rank.__getitem__)),
                      len(runner.steps), tuple(runner.steps))

    suspect = _bisect(order, runner)
    if suspect is not None:
        return finish(Outcome.CULPRIT, [suspect])
    if runner.passes(order, "baseline"):
        return finish(Outcome.PASSES_WITH_ALL)
    combination = _minimize(order, runner)
    if len(combination) == 1:
        return finish(Outcome.CULPRIT, combination)
    return finish(Outcome.COMBINATION, combination)


def _bisect(order: list[str], runner: _Runner) -> str | None:
    """A flag that fails on its own, found by halving; None when the halving leads nowhere
    (no single flag fails alone: a combination, or nothing fails at all)."""
    suspects = order
    while len(suspects) > 1:
        half = suspects[: len(suspects) // 2]
        suspects = half if runner.fails(half, "bisect") else suspects[len(half):]
    (last,) = suspects
    return last if runner.fails([last], "verify") else None


def _minimize(failing: list[str], runner: _Runner) -> list[str]:
    """A 1-minimal failing subset of ``failing`` (which fails), by binary reduction: binary
    search for the shortest failing prefix; its last flag is needed, so keep it and search
    the flags before it again, until the kept flags fail on their own. k flags cost about
    k * log2(n) runs (ddmin's splitting and complements took 2-3x more on 16-64 flags)."""
    needed: list[str] = []
    rest = list(failing)           # needed + rest fails
    while not runner.fails(needed, "minimize"):
        low, high = 1, len(rest)   # the shortest prefix of rest that fails with needed
        while low < high:
            middle = (low + high) // 2
            if runner.fails(needed + rest[:middle], "minimize"):
                high = middle
            else:
                low = middle + 1
        needed.append(rest[low - 1])
        rest = rest[:low - 1]
    return needed


# --------------------------------------------------------------------------------------------
# Running a real test command (``upgrader flags bisect``, in flags/cli.py, drives these)


class TestCommand:
    """The test as ``find_culprits`` sees it: set the flags, run the command, exit 0 = pass."""

    __test__ = False   # not a pytest test class

    def __init__(self, argv: list[str], sandbox: FlagSandbox, candidates: list[str], *,
                 timeout: float | None = None, verbose: bool = False) -> None:
        self.argv = argv
        self.sandbox = sandbox
        self.candidates = candidates
        self.timeout = timeout
        self.verbose = verbose
        self.last_detail = ""
        #: how each run failed ("exit 4", "timed out"), and the last line the test printed
        self.failures: dict[frozenset[str], tuple[str, str]] = {}

    def __call__(self, on: frozenset[str]) -> bool:
        self.sandbox.set_flags({key: key in on for key in self.candidates})
        env = dict(os.environ)
        env[STORE_VARIABLE] = self.sandbox.spec
        env[ENV_VARIABLE] = self.sandbox.environment
        started = time.monotonic()
        capture = None if self.verbose else subprocess.PIPE
        try:
            done = subprocess.run(self.argv, env=env, stdout=capture,
                                  stderr=None if self.verbose else subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=self.timeout, check=False)
        except OSError as exc:          # no such program, not executable
            from ..errors import ConfigError

            raise ConfigError(f"cannot run the test: {exc.strerror or exc}: {self.argv[0]}",
                              key="--test") from exc
        except subprocess.TimeoutExpired:
            self.last_detail = f"timed out after {self.timeout:g}s"
            self.failures[on] = ("timed out", "")
            return False
        took = time.monotonic() - started
        self.last_detail = f"exit {done.returncode}, {took:.1f}s"
        if done.returncode != 0:
            self.failures[on] = (f"exit {done.returncode}", _last_line(done.stdout))
        return done.returncode == 0

    def broken(self, result: Result) -> str | None:
        """Why the test command looks broken rather than failing because of a flag, or None.

        Broken: no run passed, and every run (the one with no candidate on and the one with
        all on among them) failed the same way, a way that is not a test's ordinary failure
        (exit 1): the command errored before it tested anything (pytest's 4 'usage error'
        for a missing path and 5 'no tests ran', a shell's 127 'command not found') or
        timed out every time. The caller makes sure both ends ran (:meth:`both_ends`)."""
        if any(step.passed for step in result.steps) or not self.failures:
            return None
        ways = {way for way, _ in self.failures.values()}
        if len(ways) != 1:
            return None
        (way,) = ways
        if way == "exit 1":
            return None
        last = next((line for _, line in reversed(self.failures.values()) if line), "")
        return f"{way} in every run{f': {last}' if last else ''}"

    def both_ends(self) -> list[frozenset[str]]:
        """The ends (no candidate on, all on) not run yet."""
        return [on for on in (frozenset(), frozenset(self.candidates))
                if on not in self.failures]


def _last_line(output: bytes | None) -> str:
    """The test's last non-empty output line (at most 200 characters), for messages."""
    if not output:
        return ""
    lines = [line.strip() for line in output.decode(errors="replace").splitlines()
             if line.strip()]
    return lines[-1][:200] if lines else ""


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``2026-11-29T08:00[:00][+01:00]``, ``2026-11-29`` or an age like ``90m``/``2h``/``3d``
    -> an aware datetime (naive times are UTC). ConfigError when it is neither."""
    from ..errors import ConfigError
    from ..units import parse_duration

    now = now or datetime.now(UTC)
    value = text.strip()
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            return now - timedelta(seconds=parse_duration(value))
        except ValueError:
            raise ConfigError(f"--changed-since: expected an ISO time (2026-11-29T08:00) or "
                              f"an age (2h, 3d), got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class FlagSandbox:
    """Where bisection flips flags: a scratch SQLite copy of the store's flag set (default),
    or the live store itself (``live``), whose candidates get their states back at the end."""

    def __init__(self, store_spec: str, environment: str, *, live: bool = False,
                 actor: str | None = None, reason: str = "") -> None:
        self.source_spec = store_spec
        self.actor = actor
        self.reason = reason
        self.environment = environment
        self.live = live
        self.spec = store_spec
        self._source: Any = None
        self._store: Any = None
        self._scratch_dir: tempfile.TemporaryDirectory[str] | None = None
        self._original: dict[str, bool] = {}
        self._touched: set[str] = set()
        self._step = 0

    def __enter__(self) -> FlagSandbox:
        from .edit import check_environment
        from .store import open_store, redact

        self._source = open_store(self.source_spec)
        try:
            flagset = self._source.load()
            check_environment(flagset, self.environment)
            self._original = {key: flag.env(self.environment).enabled
                              for key, flag in flagset.flags.items()}
            if self.live:
                self._store = self._source
            else:
                self._scratch_dir = tempfile.TemporaryDirectory(prefix="upgrader-bisect-")
                self.spec = str(Path(self._scratch_dir.name) / "flags.sqlite")
                self._store = open_store(self.spec)
                self._store.replace(flagset, actor=self.actor,
                                    reason=f"upgrader flags bisect: scratch copy of "
                                           f"{redact(self.source_spec)}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.live and self._touched and self._store is not None:
                restore = {key: self._original[key] for key in self._touched}
                self._write(restore, "upgrader flags bisect: restoring the flags as they were")
                self._touched.clear()
        finally:
            if self._store is not None and self._store is not self._source:
                self._store.close()
            if self._source is not None:
                self._source.close()
            self._store = self._source = None
            if self._scratch_dir is not None:
                self._scratch_dir.cleanup()
                self._scratch_dir = None

    def check_known(self, keys: Sequence[str]) -> None:
        from .edit import get_flag

        flagset = self._store.load()
        for key in keys:
            get_flag(flagset, key)

    def set_flags(self, states: dict[str, bool]) -> None:
        """Turn each flag of ``states`` on or off in the environment, in one change."""
        self._step += 1
        self._touched.update(states)
        self._write(states, f"upgrader flags bisect: step {self._step}")

    def _write(self, states: dict[str, bool], reason: str) -> None:
        from .edit import set_enabled

        def apply(flagset: Any) -> Any:
            for key, on in states.items():
                if flagset.flags[key].env(self.environment).enabled != on:
                    flagset = set_enabled(flagset, key, self.environment, on)
            return flagset

        if self.reason:
            reason = f"{reason}: {self.reason}"
        self._store.change(apply, action="bisect", actor=self.actor, reason=reason)

    def enabled_since(self, since: datetime) -> list[str]:
        """Flags enabled in the environment at or after ``since`` (from the audit trail) and
        still on now, in the flag set's order."""
        enabled: set[str] = set()
        for entry in self._source.history(limit=1_000_000):
            if _parse_ts(entry.ts) < since:
                break            # newest first: the rest is older
            if entry.action == "bisect":
                continue         # our own flips (a --live run), restored afterwards
            if entry.flag is not None and _turned_on(entry, self.environment):
                enabled.add(entry.flag)
        flagset = self._store.load()
        return [key for key, flag in flagset.flags.items()
                if key in enabled and flag.env(self.environment).enabled]


def _parse_ts(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _turned_on(entry: Any, environment: str) -> bool:
    """Did this audit entry turn its flag on in ``environment``?"""
    if entry.action in ("enable", "disable"):
        return entry.environment == environment and bool(entry.new) and not bool(entry.old)

    def enabled(definition: Any) -> bool:
        if not isinstance(definition, dict):
            return False
        env = (definition.get("environments") or {}).get(environment) or {}
        return bool(env.get("enabled"))

    return enabled(entry.new) and not enabled(entry.old)
