"""The Textual front end: watch and steer a live upgrade through a ``RolloutHandle``.

    from upgrader.tui import make_app
    choice = await make_app(engine).run_async()     # "abort" | "detach" | "quit" | None

Importing this package imports textual; nothing outside ``upgrader.tui`` does.
"""

from __future__ import annotations

from .app import UpgraderApp, make_app

__all__ = ["UpgraderApp", "make_app"]
