"""The ``command`` metric source: a command run on the controller (an argv list, no shell)
whose stdout gives the samples.

Its arguments are templates of ``{host}`` (the side's host names, comma-separated),
``{release}``, ``{pool}`` and ``{interval}`` (the window's length in seconds). With any of the
first three it runs once per side and prints a number, a JSON list of numbers or
``{"samples": [...], "counts": [events, trials]}``; without them it runs once and prints
``{"canary": ..., "baseline": ...}``, each side in one of those forms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, MetricSourceError
from ..hookspecs import Register, hookimpl
from .base import MetricSamples, MetricSource, MetricWindow, ProviderContext, Setting
from .metrics_templates import SIDES, check_placeholders, render, uses_side

SETTINGS: tuple[Setting, ...] = (
    Setting("timeout", float, 10.0, "seconds the command may run; then it is killed"),
    Setting("env", dict, {}, "extra environment variables for the command"),
)

#: how much of the command's stderr (or of an unreadable stdout) an error quotes
TAIL = 400

Side = tuple[tuple[float, ...], tuple[int, int] | None]


def _argv(metric: Any) -> tuple[str, ...]:
    query = metric.query
    return (query,) if isinstance(query, str) else tuple(query)


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= TAIL else "..." + text[-TAIL:]


class CommandSource:
    """Runs one ``[[verify.metrics]]`` table's command for each analysis window."""

    def __init__(self, *, timeout: float = 10.0, env: Mapping[str, str] | None = None) -> None:
        self.timeout = timeout
        self.env = {str(k): str(v) for k, v in (env or {}).items()}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: ProviderContext) -> CommandSource:
        return cls(timeout=float(settings["timeout"]), env=settings["env"])

    def check(self, metric: Any) -> None:
        name = metric.name
        if isinstance(metric.query, str):
            raise ConfigError(f"metric {name}: the command source's query is an argument list "
                              f"(e.g. [\"./errors.sh\", \"{{host}}\"]), not a string",
                              key="verify.metrics.query")
        argv = _argv(metric)
        if not argv or not all(isinstance(a, str) for a in argv) or not argv[0]:
            raise ConfigError(f"metric {name}: the command source needs a command "
                              f"(query = [\"program\", \"arg\", ...])", key="verify.metrics.query")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ConfigError(f"metric {name}: command timeout must be a positive number of "
                              f"seconds, not {self.timeout}", key="verify.metrics.timeout")
        for arg in argv:
            check_placeholders(name, arg, "command")

    async def collect(self, metric: Any, window: MetricWindow) -> MetricSamples:
        argv = _argv(metric)
        interval = f"{window.end - window.start:g}"
        detail = f"command {argv[0]}"
        if any(uses_side(arg) for arg in argv):
            sides: list[Side] = []
            for side in SIDES:
                hosts = window.canary if side == "canary" else window.baseline
                if not hosts:
                    sides.append(((), None))
                    continue
                command = [render(a, window, side, hosts=",".join, interval=interval)
                           for a in argv]
                sides.append(_parse_side(await self._run(command), command))
            (canary, canary_counts), (baseline, baseline_counts) = sides
        else:
            command = [render(a, window, "canary", hosts=",".join, interval=interval)
                       for a in argv]
            stdout = await self._run(command)
            answer = _load(stdout, command)
            if not isinstance(answer, dict) or not {"canary", "baseline"} <= answer.keys():
                raise MetricSourceError(
                    f"{argv[0]}: a command without {{host}}, {{release}} or {{pool}} prints "
                    f"{{\"canary\": ..., \"baseline\": ...}}; it printed {_tail(stdout)!r}")
            canary, canary_counts = _side(answer["canary"], command, stdout)
            baseline, baseline_counts = _side(answer["baseline"], command, stdout)
        return MetricSamples(canary=canary, baseline=baseline, canary_counts=canary_counts,
                             baseline_counts=baseline_counts, detail=detail)

    async def _run(self, argv: list[str]) -> str:
        env = {**os.environ, **self.env} if self.env else None
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
        except OSError as exc:
            raise MetricSourceError(f"{argv[0]}: cannot run: {exc.strerror or exc}") from exc
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), self.timeout)
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            with contextlib.suppress(Exception):
                await process.wait()
            raise MetricSourceError(
                f"{argv[0]}: no answer within {self.timeout:g}s (killed)") from exc
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            raise
        out, err = stdout.decode(errors="replace"), stderr.decode(errors="replace")
        if process.returncode != 0:
            raise MetricSourceError(f"{argv[0]}: exit status {process.returncode}"
                                    + (f"; stderr: {_tail(err)}" if err.strip() else ""))
        return out

    async def aclose(self) -> None:
        return None


def _load(stdout: str, argv: list[str]) -> Any:
    try:
        return json.loads(stdout)
    except ValueError as exc:
        raise MetricSourceError(f"{argv[0]}: printed neither a number nor JSON samples: "
                                f"{_tail(stdout)!r}") from exc


def _parse_side(stdout: str, argv: list[str]) -> Side:
    return _side(_load(stdout, argv), argv, stdout)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _side(answer: Any, argv: list[str], stdout: str) -> Side:
    """One side's samples from a number, a list of numbers or ``{"samples", "counts"}``."""
    try:
        if isinstance(answer, dict):
            unknown = set(answer) - {"samples", "counts"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}; known: samples, counts")
            samples = tuple(_number(v) for v in answer.get("samples", ()))
            counts = answer.get("counts")
            if counts is None:
                return samples, None
            if (not isinstance(counts, list) or len(counts) != 2
                    or not all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
                    or not 0 <= counts[0] <= counts[1]):
                raise ValueError(f"counts must be [events, trials], 0 <= events <= trials, "
                                 f"not {counts!r}")
            events, trials = counts
            if not samples and trials:
                samples = (events / trials,)
            return samples, (events, trials)
        if isinstance(answer, list):
            return tuple(_number(v) for v in answer), None
        return (_number(answer),), None
    except ValueError as exc:
        raise MetricSourceError(f"{argv[0]}: unreadable samples ({exc}) in "
                                f"{_tail(stdout)!r}") from exc


@hookimpl
def register_metric_sources(register: Register[MetricSource]) -> None:
    register("command", CommandSource.from_settings, settings=SETTINGS,
             description="a command on the controller whose stdout is a number or JSON samples")
