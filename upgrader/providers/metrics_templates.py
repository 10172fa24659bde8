"""Placeholders of metric queries (``{host}``, ``{release}``, ``{pool}``, ``{interval}``),
shared by the ``prometheus`` and ``command`` metric sources."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from ..errors import ConfigError
from .base import MetricWindow

PLACEHOLDERS = ("host", "release", "pool", "interval")
#: a ``{word}`` that is not PromQL: label matchers always hold an operator (``{job="x"}``)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
SIDES = ("canary", "baseline")


def check_placeholders(metric_name: str, text: str, source: str) -> None:
    """``ConfigError`` naming the metric when ``text`` holds a ``{word}`` that is no
    placeholder (a typo such as ``{hosts}`` would otherwise reach the server as is)."""
    for match in _PLACEHOLDER.finditer(text):
        if match.group(1) not in PLACEHOLDERS:
            raise ConfigError(
                f"metric {metric_name}: unknown placeholder {{{match.group(1)}}} in the "
                f"{source} query {text!r}; known: "
                + ", ".join("{" + p + "}" for p in PLACEHOLDERS),
                key="verify.metrics.query")


def uses_side(text: str) -> bool:
    """Whether ``text`` depends on the side (canary or baseline) it is rendered for."""
    return any(m.group(1) in ("host", "release", "pool") for m in _PLACEHOLDER.finditer(text))


def side_values(window: MetricWindow, side: str) -> tuple[tuple[str, ...], str, str | None]:
    """(hosts, release, pool) of one side of ``window``."""
    if side == "canary":
        return window.canary, window.canary_release, window.canary_pool
    return window.baseline, window.baseline_release, window.baseline_pool


def render(text: str, window: MetricWindow, side: str, *,
           hosts: Callable[[Iterable[str]], str], interval: str) -> str:
    """``text`` with its placeholders replaced for ``side`` of ``window``; ``hosts`` joins the
    side's host names (a regex alternation for PromQL, commas for a command)."""
    names, release, pool = side_values(window, side)
    values = {"host": hosts(names), "release": release, "pool": pool or "",
              "interval": interval}
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
