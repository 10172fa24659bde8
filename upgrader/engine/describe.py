"""One-line descriptions for people: of a plan step, and of a failure on a host."""

from __future__ import annotations

from ..plan import (
    Gate,
    Maintenance,
    Pause,
    PrepareSlots,
    Route,
    SetTraffic,
    Step,
    SwapSlots,
    TurnDown,
    UpgradeHosts,
    Verify,
)


def describe_error(exc: BaseException, host: str | None = None) -> str:
    """One line naming the host, what failed and the tail of its stderr."""
    text = str(exc)
    if host and not text.startswith(host):
        text = f"{host}: {text}"
    stderr = getattr(exc, "stderr", "") or ""
    tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
    if tail and tail[0] not in text:
        text += f": {tail[0][-300:]}"
    return text


def describe_step(step: Step) -> str:
    if isinstance(step, UpgradeHosts):
        extra = f", one every {step.start_interval:g}s" if step.start_interval else ""
        par = f", {step.max_parallel} at a time" if step.max_parallel else ""
        drain = "" if step.drain else " (no drain)"
        switch = " (back to a release still installed)" if step.switch else ""
        return f"upgrade {len(step.hosts)} host(s){par}{extra}{drain}{switch}"
    if isinstance(step, PrepareSlots):
        reuse = " (reused where it runs the release already)" if step.reuse else ""
        return f"prepare idle slot on {len(step.hosts)} host(s){reuse}"
    if isinstance(step, SwapSlots):
        return f"swap slots on {len(step.hosts)} host(s)"
    if isinstance(step, SetTraffic):
        return "traffic " + ", ".join(f"{p} {w:g}%" for p, w in step.weights)
    if isinstance(step, Route):
        return ("route " + ", ".join(step.groups) + " to target" if step.groups
                else "route everyone " + ("to current" if step.default else "everywhere"))
    if isinstance(step, Verify):
        return f"verify all upgraded hosts for {step.for_:g}s"
    if isinstance(step, Pause):
        return "pause until promoted" if step.duration is None else f"pause {step.duration:g}s"
    if isinstance(step, Gate):
        if step.gate == "schema_start":
            return f"start schema change {step.detail}"
        if step.gate == "schema_complete":
            return f"complete schema change {step.detail}"
        return step.gate.replace("_", " ") + (" on idle slots" if step.slots else "")
    if isinstance(step, Maintenance):
        return "maintenance page on" if step.on else "maintenance page off"
    if isinstance(step, TurnDown):
        return f"turn down {len(step.hosts)} old host(s)"
    return step.kind
