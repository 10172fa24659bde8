"""Deploy windows in the TUI (issue 16, point 5): the window line shows the window, the next
opening and, while the rollout waits for one, a countdown; `w` opens a dialog that asks for the
reason of the override (an empty one is refused) and sends it to the handle."""

from __future__ import annotations

import asyncio

from textual.widgets import Input, Static
from tuikit import scenario, wait_until

from upgrader.tui.app import make_app
from upgrader.tui.screens import MainScreen, WindowOverrideDialog
from upgrader.tui.widgets import WindowLine

HELD = {"open": False, "overridden": None, "teams": [], "closes": None, "closes_in_s": None,
        "opens": "2026-01-12T08:00:00+00:00", "opens_in_s": 7200.0, "held": True,
        "why": "outside the deploy window (no team on duty); resumes at 2026-01-12 08:00 UTC",
        "resumes": "2026-01-12T08:00:00+00:00", "resumes_in_s": 7200.0}


def held_handle():
    handle = scenario("running")
    handle._snapshot = dict(handle._snapshot, state="PAUSED", window=dict(HELD),
                            reason=HELD["why"])
    handle.overrides = []
    handle.override_window = lambda reason: handle.overrides.append(reason)
    return handle


def line_text(app) -> str:
    return str(app.screen.query_one(WindowLine).render())


def test_window_line_counts_down_to_the_opening():
    handle = held_handle()
    now = [1000.0]

    async def main():
        app = make_app(handle, clock=lambda: now[0])
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: "WAITING for the window" in line_text(app),
                             "the window line")
            assert "resumes in 2h" in line_text(app)
            assert "Mon 01-12 08:00 UTC" in line_text(app) and "w override" in line_text(app)
            synced = app.view.synced_at
            now[0] = synced + 1.0               # between snapshots the line counts down itself
            assert app.view.window_countdown("resumes_in_s") == 7199.0
            # half an hour later the engine's snapshot says so too, and the line follows
            handle._snapshot["window"] = dict(HELD, resumes_in_s=5400.0)
            now[0] = synced + 1800
            await wait_until(pilot, lambda: "resumes in 1h 30m" in line_text(app),
                             f"the countdown to move (shows {line_text(app)!r})")

    asyncio.run(main())


def test_no_window_line_without_windows():
    handle = scenario("running")

    async def main():
        app = make_app(handle, clock=lambda: 1000.0)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            assert app.screen.query_one(WindowLine).display is False
            await pilot.press("w")
            await pilot.pause()
            assert isinstance(app.screen, MainScreen)
            assert any("no deploy window" in str(n.message) for n in app._notifications)

    asyncio.run(main())


def test_w_asks_for_a_reason_refuses_an_empty_one_and_sends_it():
    handle = held_handle()

    async def main():
        app = make_app(handle, clock=lambda: 1000.0)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: app.view.window is not None, "the window")
            await pilot.press("w")
            await wait_until(pilot, lambda: isinstance(app.screen, WindowOverrideDialog),
                             "the dialog")
            assert "waits for the deploy window" in str(
                app.screen.query_one("#window-text", Static).render())
            await pilot.press("enter")          # no reason: refused, the dialog stays
            await pilot.pause()
            assert isinstance(app.screen, WindowOverrideDialog)
            assert "reason is required" in str(
                app.screen.query_one("#window-error", Static).render())
            assert handle.overrides == []
            app.screen.query_one("#window-reason", Input).value = "hotfix INC-4711"
            await pilot.press("enter")
            await wait_until(pilot, lambda: handle.overrides, "the override")
            assert handle.overrides == ["hotfix INC-4711"]
            assert isinstance(app.screen, MainScreen)
            await pilot.press("w", "escape")    # escape cancels: nothing more is sent
            await pilot.pause()
            assert handle.overrides == ["hotfix INC-4711"]

    asyncio.run(main())
