"""What the in-process front ends (``upgrader run --headless``, ``upgrader attach``,
``upgrader demo``) share: opening the flag store the TUI's flags screen shows, and turning the
first Ctrl-C / SIGTERM into an abort with roll-back.

A front end itself: it may import anything below it, and ``cli.py`` and ``demo.py`` both import
it (neither imports the other's private helpers, so the two commands form no import cycle).
Imports what it needs lazily, so ``upgrader --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .flags.store import FlagStore
    from .model import Fleet

__all__ = ["forward_signals", "open_flag_store"]


def open_flag_store(spec: str | None, fleet: Fleet | None = None) -> FlagStore | None:
    """The flag store the TUI's flags screen shows, or None when there is none to show:
    ``spec``, else the fleet's ``[flags] store``, else the default store when it exists."""
    from .flags.store import default_store_spec, open_store

    if spec is None and fleet is not None and fleet.flags is not None:
        spec = fleet.flags.store
    if spec is None:
        default = default_store_spec()
        if "://" not in default and not Path(default).exists():
            return None
        spec = default
    return open_store(spec)


def forward_signals(rollout: Any) -> None:
    """First Ctrl-C / SIGTERM: abort with roll-back. The journal keeps the rest safe.

    ``rollout`` is anything with ``abort(rollback: bool)`` (a ``Rollout``, an ``Engine``);
    call from inside the running event loop."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, rollout.abort, True)
        except (NotImplementedError, RuntimeError):
            pass
