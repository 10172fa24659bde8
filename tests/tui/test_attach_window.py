"""`upgrader attach` on a rollout that waits for its deploy window (issue 16, point 5): the TUI
on a RemoteRollout through the control API shows the window line with its countdown, and `w`
with a reason overrides the window in the controller; the reason is journaled."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any, NoReturn

from textual.widgets import Input
from tuikit import SIZE, LiveRollout, canary_fleet, wait_until

from upgrader import strategies
from upgrader.clock import LoopClock
from upgrader.control.client import RemoteRollout
from upgrader.control.server import ControlServer
from upgrader.engine.core import Engine
from upgrader.errors import ConfigError
from upgrader.policy import parse_windows
from upgrader.tui import make_app
from upgrader.tui.screens import WindowOverrideDialog
from upgrader.tui.widgets import WindowLine

BERLIN = {"name": "berlin", "timezone": "Europe/Berlin", "hours": {"mon-fri": "09:00-17:00"}}


class _Where:
    def error(self, path: Any, message: str) -> NoReturn:
        raise ConfigError(message, key=".".join(str(p) for p in path))


def test_attached_tui_shows_the_wait_and_overrides_with_a_reason(tmp_path):
    fleet = canary_fleet(3, [{"hosts": "100%"}])
    fleet = dataclasses.replace(fleet, windows=parse_windows({"teams": [BERLIN]}, _Where()))
    socket_path = tmp_path / "ctl.sock"
    token = "t0ken-for-the-test"

    async def main() -> None:
        live = LiveRollout(fleet)
        plan = strategies.get("canary").compile(fleet, fleet.strategy.params)
        # a Saturday: no team on duty, the rollout waits for Monday's opening
        saturday = datetime(2026, 1, 10, 12, tzinfo=UTC).timestamp()
        live.engine = Engine(fleet, plan, live.providers, metrics_interval=0.2,
                             clock=LoopClock(wall_origin=saturday))
        await live.seed()
        async with ControlServer(live.engine, socket_path=str(socket_path), token=token):
            await live.start()
            remote = RemoteRollout(str(socket_path), token)
            await remote.connect()
            app = make_app(remote, on_quit=lambda choice: choice)
            async with app.run_test(size=SIZE) as pilot:
                def line() -> str:
                    lines = [w for s in app.screen_stack for w in s.query(WindowLine)]
                    return str(lines[0].render()) if lines else ""

                await wait_until(pilot, lambda: "WAITING for the window" in line(),
                                 "the window line to show the wait")
                assert "resumes in" in line() and "w override" in line()
                await pilot.press("w")
                await wait_until(pilot, lambda: isinstance(app.screen, WindowOverrideDialog),
                                 "the override dialog")
                app.screen.query_one("#window-reason", Input).value = "hotfix INC-4711"
                await pilot.press("enter")
                await wait_until(pilot, lambda: "OVERRIDDEN" in line(),
                                 "the window line to show the override", timeout=10)
                await asyncio.wait_for(asyncio.shield(live.task), 15)
            await remote.aclose()
        assert live.task.result().outcome.value == "completed"
        overrides = [e for e in live.engine.history if e.kind == "window_override"]
        assert overrides and overrides[0].data["reason"] == "hotfix INC-4711"

    asyncio.run(main())
