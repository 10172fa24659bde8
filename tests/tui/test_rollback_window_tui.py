"""The roll-back window in the TUI (issue 15, point 3): once a rollout completes with
``[release] rollback_window``, a line under the header says the window is open, until when (a
window by time) or for how many releases (by count), where ``upgrader rollback`` goes and what
it would cost now: the figures ``status`` shows, from the engine's ``rollback_window`` event
and snapshot. It fits 80x24 and leaves the header and the key bar whole."""

from __future__ import annotations

import asyncio
import re

import pytest
from tuikit import T0, frozen_app, scenario, screen_text, wait_until

from upgrader.events import Event
from upgrader.tui.widgets import RollbackWindowLine

BY_TIME = {"previous": "1.0.0", "release": "1.1.0", "closes_at": T0 + 2000.0 + 7200.0,
           "releases": None, "rollback_s": 8.0}
BY_COUNT = {"previous": "1.0.0", "release": "1.1.0", "closes_at": None, "releases": 2,
            "rollback_s": 8.0}


def completed_with(window: dict | None, *, in_snapshot: bool = False):
    handle = scenario("completed")
    if window is not None:
        finished = handle.history.pop()         # the window comes just before the end
        handle.history.append(Event("rollback_window", finished.ts, finished.rollout,
                                    finished.seq, dict(window)))
        handle.history.append(Event(finished.kind, finished.ts, finished.rollout,
                                    finished.seq + 1, finished.data))
        if in_snapshot:
            handle._snapshot = dict(handle._snapshot, rollback_window=dict(window))
            handle.history = [e for e in handle.history if e.kind != "rollback_window"]
    return handle


def shown(handle, size=(80, 24)) -> tuple[str, str, bool]:
    async def main():
        app = frozen_app(handle)
        async with app.run_test(size=size) as pilot:
            line = app.screen.query_one(RollbackWindowLine)
            await wait_until(pilot, lambda: app.view.is_finished, "the end")
            await pilot.pause()
            return str(line.render()), screen_text(app), bool(line.display)

    return asyncio.run(main())


@pytest.mark.parametrize("in_snapshot", [False, True], ids=["event", "snapshot"])
def test_a_window_by_time_says_until_when_where_to_and_how_long(in_snapshot):
    line, screen, display = shown(completed_with(BY_TIME, in_snapshot=in_snapshot))
    assert display
    assert "roll-back window: open until Fri 01-15 10:33 UTC" in line, line
    assert "`upgrader rollback` goes straight back to 1.0.0, about 8s" in line, line
    assert "roll-back window" in screen


def test_a_window_by_count_says_for_how_many_releases():
    line, _, _ = shown(completed_with(BY_COUNT))
    assert "roll-back window: open for 2 releases" in line, line
    assert "straight back to 1.0.0, about 8s" in line


def test_no_window_no_line():
    _, screen, display = shown(completed_with(None))
    assert not display and "roll-back window" not in screen


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_line_keeps_the_header_and_key_bar_whole(size):
    _, screen, _ = shown(completed_with(BY_TIME), size)
    lines = screen.splitlines()
    assert len(lines) == size[1]
    assert "1.0.0" in "\n".join(lines[:2]) and "COMPLETED" in "\n".join(lines[:2])
    assert re.search(r"\bq\s+Quit\b", "\n".join(lines[-2:])), lines[-2:]
    rows = [line for line in lines if re.match(r"[│ ]*web-\d{4}", line)]
    assert len(rows) >= 6, screen


def test_completed_with_a_window_looks(snap_compare):
    async def run_before(pilot) -> None:
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()

    assert snap_compare(frozen_app(completed_with(BY_TIME)), terminal_size=(80, 24),
                        run_before=run_before)


@pytest.mark.parametrize(("window", "said"), [
    (BY_TIME, "inside its roll-back window `upgrader rollback FLEET` goes straight back to "
              "1.0.0, about 8s"),
    (None, "the rollout is COMPLETED: nothing to roll back"),
])
def test_r_after_completion_names_the_command_that_rolls_back(window, said):
    async def main():
        app = frozen_app(completed_with(window))
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: app.view.is_finished, "the end")
            await pilot.press("r")
            await wait_until(pilot, lambda: app._notifications, "a notification")
            return [str(n.message) for n in app._notifications]

    messages = asyncio.run(main())
    assert any(said in m for m in messages), messages
