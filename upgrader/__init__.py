"""upgrader: upgrade live services without taking them down.

The public library API (see docs/LIBRARY.md)::

    import upgrader
    fleet = upgrader.load_fleet("fleet.toml")
    plan = upgrader.compile_plan(fleet)            # pure: touches no host
    print(upgrader.estimate(plan, fleet.timing).total_s)
    async with upgrader.Rollout(fleet, plan) as rollout:
        result = await rollout.run()               # controls: rollout.pause(), .abort(), ...
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "Clock",
    "ConfigError",
    "Engine",
    "Event",
    "Fleet",
    "LoopClock",
    "Outcome",
    "Plan",
    "PolicyRefused",
    "Providers",
    "Rollout",
    "RolloutFailed",
    "RolloutResult",
    "SystemClock",
    "UpgraderError",
    "Verdict",
    "__version__",
    "compile_plan",
    "estimate",
    "load_fleet",
    "loads_fleet",
    "run_virtual",
]

_LAZY = {
    "Clock": "upgrader.clock", "SystemClock": "upgrader.clock", "run_virtual": "upgrader.clock",
    "LoopClock": "upgrader.clock", "Providers": "upgrader.engine.core",
    "ConfigError": "upgrader.errors", "PolicyRefused": "upgrader.errors",
    "RolloutFailed": "upgrader.errors", "UpgraderError": "upgrader.errors",
    "Engine": "upgrader.engine.core", "RolloutResult": "upgrader.engine.core",
    "Event": "upgrader.events", "Outcome": "upgrader.events", "Verdict": "upgrader.events",
    "Fleet": "upgrader.model", "Plan": "upgrader.plan", "estimate": "upgrader.plan",
    "Rollout": "upgrader.rollout", "compile_plan": "upgrader.rollout",
    "load_fleet": "upgrader.config", "loads_fleet": "upgrader.config",
}


def __getattr__(name: str) -> Any:
    # imported lazily so `import upgrader` stays cheap for the lab's small processes
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'upgrader' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
