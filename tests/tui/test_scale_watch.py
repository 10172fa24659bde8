"""The TUI asks the engine for the traffic figures of the rows it shows (issue 17: the engine
reports per-host figures only for the hosts that changed lately and those a front end
watches) and shows them; a host's share is of all the traffic (the pools' total)."""

from __future__ import annotations

import asyncio

from tuikit import SIZE, big_handle, main_screen, screen_text, wait_until

from upgrader.events import Event
from upgrader.tui import make_app
from upgrader.tui.widgets import FleetTable


def test_the_visible_rows_are_watched_and_their_figures_shown():
    handle = big_handle(500)
    watched: list[tuple[str, ...]] = []
    handle.watch_hosts = lambda names: watched.append(tuple(names))   # as Engine.watch_hosts
    now = [1000.0]
    app = make_app(handle, clock=lambda: now[0])

    async def main():
        async with app.run_test(size=SIZE) as pilot:
            table = main_screen(app).query_one(FleetTable)
            await wait_until(pilot, lambda: bool(watched), "the visible rows to be watched")
            first = watched[-1]
            assert first[0] == "web-0001" and first == table.visible_hosts()
            assert 10 < len(first) < 60                     # a screenful, not the fleet
            # figures for the watched hosts only, as the engine sends them
            handle.emit(Event("metrics", 2000.0, "r-big", 2, {
                "interval_s": 1.0, "hosts_partial": True,
                "pools": {"1.0.0": {"requests": 990, "rps": 990.0, "error_rate": 0.0,
                                    "p95": 0.01},
                          "1.1.0": {"requests": 10, "rps": 10.0, "error_rate": 0.0,
                                    "p95": 0.01}},
                "hosts": {name: {"requests": 2, "rps": 2.0, "error_rate": 0.0, "p95": 0.01}
                          for name in first}}))
            view = app.view
            await wait_until(pilot, lambda: view.figures("web-0002").rps == 2.0,
                             "the watched host's figures")
            assert view.figures("web-0002").share == 0.2   # 2 of 1,000 requests a second
            now[0] += 1.0                                   # figures repaint twice a second
            await wait_until(pilot, lambda: any("web-0002" in line and "0.2%" in line
                                                for line in screen_text(app).splitlines()),
                             "the share shown on the host's row")
            await pilot.press("pagedown", "pagedown")
            await wait_until(pilot, lambda: watched[-1] != first, "the next rows watched")
            assert watched[-1] == table.visible_hosts() and "web-0001" not in watched[-1]

    asyncio.run(main())
