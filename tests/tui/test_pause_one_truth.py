"""Pausing, one truth (issue 16): the header says PAUSING until the step boundary, then PAUSED;
a timed pause's countdown and the remaining time stand still while PAUSED; space or p while
paused resumes and says so; space while PAUSING cancels; quitting a paused rollout says it
stays paused and how to resume it."""

from __future__ import annotations

import asyncio

from textual.widgets import Button, Static
from tuikit import ShownStates, canary_fleet, main_screen, run_live, scenario, wait_until

from upgrader.tui.app import make_app
from upgrader.tui.screens import QuitDialog
from upgrader.tui.widgets import StepsPanel


def notified(app, text: str) -> bool:
    return any(text in str(n.message) for n in app._notifications)


def test_space_in_a_timed_pause_shows_paused_with_the_countdown_frozen_then_p_resumes():
    fleet = canary_fleet(4, [{"hosts": 1, "pause": "1h"}, {"hosts": "100%"}])

    async def scenario_(live, app, pilot):
        shown = ShownStates(app)
        await shown.wait_for(pilot, "WAITING")
        steps = main_screen(app).query_one(StepsPanel)
        await pilot.press("space")
        await shown.wait_for(pilot, "PAUSED")
        assert "PAUSING" not in shown.seen      # a timed pause is a boundary: held at once
        view = app.view
        await wait_until(pilot, lambda: view.wait_remaining() is not None, "the countdown")
        frozen, remaining = view.wait_remaining(), view.remaining()
        text = str(steps.query_one("#steps-list", Static).render())
        await pilot.pause(1.5)                  # real time passes; the countdown does not
        assert view.wait_remaining() == frozen and view.remaining() == remaining
        assert str(steps.query_one("#steps-list", Static).render()) == text
        assert live.engine.snapshot()["wait_frozen"] is True
        await pilot.press("p")                  # while paused, p resumes, and says so
        await wait_until(pilot, lambda: live.engine.state.value == "WAITING", "the resume")
        assert notified(app, "resumed")
        assert live.controls() == ["pause", "resume"]

    run_live(fleet, scenario_)


def test_space_during_a_host_step_shows_pausing_then_paused():
    fleet = canary_fleet(16, [{"hosts": 1, "pause": "promote"},
                              {"hosts": "100%", "max_parallel": 1}])

    async def scenario_(live, app, pilot):
        shown = ShownStates(app)
        await shown.wait_for(pilot, "WAITING")
        await pilot.press("p")
        await wait_until(pilot, lambda: live.engine.current_step == 3, "the one-by-one step")
        await pilot.press("space")
        assert notified(app, "PAUSING until the next step boundary, then PAUSED")
        await wait_until(pilot, lambda: live.engine.state.value == "PAUSED", "the boundary")
        await shown.wait_for(pilot, "PAUSED")
        assert live.engine.history and any(
            e.kind == "state" and e.data["state"] == "PAUSING" for e in live.engine.history)
        await pilot.press("space")
        await wait_until(pilot, lambda: live.engine.state.value != "PAUSED", "the resume")
        assert notified(app, "resumed")

    run_live(fleet, scenario_)


def test_space_while_pausing_cancels_the_request():
    handle = scenario("running")
    handle._snapshot = dict(handle._snapshot, state="PAUSING",
                            reason="pause requested: holds at the next step boundary")

    async def main():
        app = make_app(handle, clock=lambda: 1000.0)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: app.view.state == "PAUSING", "the PAUSING state")
            await pilot.press("space")
            await wait_until(pilot, lambda: handle.calls, "a control")
            assert handle.calls == [("resume", None)]
            assert notified(app, "pause cancelled")

    asyncio.run(main())


def test_quitting_a_paused_rollout_offers_to_leave_it_paused_and_says_how_to_resume():
    handle = scenario("paused")

    def on_quit(choice: str) -> None:
        pass

    async def main():
        app = make_app(handle, clock=lambda: 1000.0, on_quit=on_quit)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: app.view.state == "PAUSED", "the PAUSED state")
            await pilot.press("q")
            await wait_until(pilot, lambda: isinstance(app.screen, QuitDialog), "the dialog")
            text = str(app.screen.query_one("#quit-text", Static).render())
            assert "stays paused" in text and "upgrader attach" in text
            assert "goes on" not in text
            labels = [str(b.label) for b in app.screen.query(Button)]
            assert "[L]eave it paused" in labels

    asyncio.run(main())
