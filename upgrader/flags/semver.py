"""Semantic versions (semver.org 2.0) as sort keys, for the ``semver_*`` rule operators.

``1`` and ``1.2`` are read as ``1.0.0`` and ``1.2.0`` (as LaunchDarkly does); build metadata
(``+...``) is checked and then ignored, as semver precedence says. No regular expressions:
context values are parsed on the evaluation path (with a cache).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

__all__ = ["parse_semver", "semver_key"]

_IDENT_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-")


def _numeric(part: str) -> bool:
    return part.isascii() and part.isdigit() and (len(part) == 1 or part[0] != "0")


def _identifier(part: str) -> bool:
    return bool(part) and all(char in _IDENT_CHARS for char in part)


def parse_semver(text: str) -> tuple[Any, ...] | None:
    """A sort key for ``text`` (compare keys with ``<``), or ``None`` if it is no version."""
    if not isinstance(text, str) or not text or len(text) > 256:
        return None
    core, plus, build = text.partition("+")
    if plus and not all(_identifier(part) for part in build.split(".")):
        return None
    core, dash, pre = core.partition("-")
    parts = core.split(".")
    if len(parts) > 3 or not all(_numeric(part) for part in parts):
        return None
    numbers = [int(part) for part in parts] + [0] * (3 - len(parts))
    if not dash:
        return (*numbers, 1, ())          # a release sorts after its pre-releases
    identifiers: list[tuple[int, int, str]] = []
    for part in pre.split("."):
        if not _identifier(part):
            return None
        if part.isdigit():
            if len(part) > 1 and part[0] == "0":
                return None
            identifiers.append((0, int(part), ""))   # numeric identifiers sort first
        else:
            identifiers.append((1, 0, part))
    return (*numbers, 0, tuple(identifiers))


#: the same, cached: for context values on the evaluation path
semver_key = lru_cache(maxsize=4096)(parse_semver)
