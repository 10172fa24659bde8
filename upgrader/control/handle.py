"""What a front end holds: a handle on a rollout, in this process or in a controller process.

The TUI and the headless display only use this Protocol, so they work the same on an engine
running in-process (``upgrader.engine.core.Engine`` satisfies it directly) and on a detached
controller reached through the control API (``upgrader.control.client.RemoteRollout``).

Optional, outside the Protocol (front ends look it up with ``getattr``): ``watch_hosts(names)``,
the hosts whose traffic figures a front end shows (``Engine.watch_hosts``; the remote handle
posts it to ``/v1/watch``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ..events import Event


@runtime_checkable
class RolloutHandle(Protocol):
    @property
    def history(self) -> Sequence[Event]:
        """The most recent events (bounded), oldest first."""

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able picture of the rollout now (see ``Engine.snapshot``)."""

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` for every new event (on the event loop); returns unsubscribe."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def promote(self) -> None: ...

    def promote_all(self) -> None: ...

    def abort(self, rollback: bool = True) -> None: ...
