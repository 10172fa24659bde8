"""Looks: the main screen at moments of a canary, the help screen and the dialogs, rendered
from a fake handle with a fixed snapshot and history and a clock that never moves, so every
run draws the same screen. Update with ``pytest tests/tui --snapshot-update`` and look."""

from __future__ import annotations

import pytest
from tuikit import SIZE


@pytest.mark.parametrize("kind", ["running", "waiting", "paused", "rolling_back", "completed"])
def test_main_screen(snap_compare, fake, kind):
    assert snap_compare(fake(kind), terminal_size=SIZE)


def test_help_screen(snap_compare, fake):
    assert snap_compare(fake("running"), terminal_size=SIZE, press=["question_mark"])


def test_rollback_dialog(snap_compare, fake):
    assert snap_compare(fake("waiting"), terminal_size=SIZE, press=["r"])


def test_quit_dialog_of_a_detachable_rollout(snap_compare, fake):
    assert snap_compare(fake("running", on_quit=lambda choice: None), terminal_size=SIZE,
                        press=["q"])


def test_analysis_panel_of_the_statistical_judge(snap_compare, fake):
    """At 120x40, the side column scrolled to the analysis panel: the round's score and band,
    and per metric its result, p-value, effect and samples had/needed (issue 14)."""

    async def run_before(pilot) -> None:
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()
        pilot.app.screen.query_one("#verdict").scroll_visible(animate=False)
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()

    assert snap_compare(fake("judged"), terminal_size=(120, 40), run_before=run_before)
