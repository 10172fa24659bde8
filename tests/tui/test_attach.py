"""Attach and detach: the TUI on a rollout served through the control API (a Unix socket and a
token), quit with "[L]eave it running", the rollout goes on without a screen, a second TUI
attaches, sees where it got to, and steers it to the end."""

from __future__ import annotations

import asyncio

from tuikit import SIZE, LiveRollout, ShownStates, canary_fleet, wait_until

from upgrader.control.client import RemoteRollout
from upgrader.control.server import ControlServer
from upgrader.tui import make_app
from upgrader.tui.screens import QuitDialog

STEPS = [{"hosts": 1, "pause": "promote"}, {"hosts": 1, "pause": "promote"}, {"hosts": "100%"}]


def test_attach_detach_and_attach_again(tmp_path):
    fleet = canary_fleet(6, STEPS)
    socket_path = tmp_path / "ctl.sock"
    token = "t0ken-for-the-test"

    async def main() -> None:
        live = LiveRollout(fleet)
        await live.seed()
        async with ControlServer(live.engine, socket_path=str(socket_path), token=token):
            await live.start()
            # first operator: attach, promote past the first pause, leave it running
            first = RemoteRollout(str(socket_path), token)
            await first.connect()
            app = make_app(first, on_quit=lambda choice: choice)
            async with app.run_test(size=SIZE) as pilot:
                shown = ShownStates(app)
                await shown.wait_for(pilot, "WAITING")
                await pilot.press("p")
                await wait_until(pilot, lambda: live.engine.current_step is not None
                                 and live.engine.current_step > 2, "the second group")
                await pilot.press("q")
                await wait_until(pilot, lambda: isinstance(app.screen, QuitDialog),
                                 "the quit dialog")
                await pilot.press("l")           # "[L]eave it running"
                await wait_until(pilot, lambda: app.return_value is not None, "the app to exit")
            assert app.return_value == "detach"
            await first.aclose()
            # no screen attached: the rollout goes on to its second pause by itself
            for _ in range(400):
                if live.engine.state.value == "WAITING" and live.engine.current_step > 2:
                    break
                await asyncio.sleep(0.02)
            assert live.engine.state.value == "WAITING"
            assert not live.task.done()
            # second operator: attach again, see the history, promote to the end
            second = RemoteRollout(str(socket_path), token)
            await second.connect()
            got = [e.seq for e in second.history]     # everything so far, in order, no gap
            assert got == [e.seq for e in live.engine.history][:len(got)]
            assert [e.data["action"] for e in second.history if e.kind == "control"] == \
                ["promote"]
            app2 = make_app(second, on_quit=lambda choice: choice)
            async with app2.run_test(size=SIZE) as pilot:
                shown = ShownStates(app2)
                await shown.wait_for(pilot, "WAITING")
                await pilot.press("p")
                await shown.wait_for(pilot, "COMPLETED", timeout=15)
            result = await asyncio.wait_for(live.task, 15)
            await second.aclose()
            await live.stop()
        assert result.outcome.value == "completed"
        controls = [e.data["action"] for e in live.engine.history if e.kind == "control"]
        assert controls == ["promote", "promote"]

    asyncio.run(main())
