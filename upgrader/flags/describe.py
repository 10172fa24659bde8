"""One-line descriptions of a flag's targeting, shared by the CLI and the TUI."""

from __future__ import annotations

from .model import Flag


def true_variant(flag: Flag) -> str | None:
    """The variant whose value is ``true``, when exactly one is."""
    trues = [name for name, value in flag.variants.items() if value is True]
    return trues[0] if len(trues) == 1 else None


def targeting(flag: Flag, environment: str) -> str:
    """What decides who gets what when the flag is on: prerequisites, targets, rules
    ("" when nothing does: everyone gets the default)."""
    config = flag.env(environment)
    parts = []
    if flag.prerequisites:
        parts.append("needs " + ", ".join(f"{p.flag}={p.variant}" for p in flag.prerequisites))
    targets = sum(len(users) for users in config.targets.values())
    if targets:
        parts.append(f"{targets} target{'s' if targets != 1 else ''}")
    for index, rule in enumerate(config.rules):
        name = rule.name or f"rules[{index}]"
        if rule.percent is not None:
            parts.append(f"{name}: {rule.percent:g} % {rule.variant or true_variant(flag)}")
        elif rule.rollout:
            parts.append(f"{name}: " + "/".join(f"{s.weight:g} {s.variant}"
                                                for s in rule.rollout))
        else:
            parts.append(f"{name}: {rule.variant}")
    return "; ".join(parts)
