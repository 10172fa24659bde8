"""The TUI at three terminal sizes (issue 16): 80x24 (the smallest terminal an operator
has), 120x40 and 200x50. Snapshots of the main, help, flags and roll-back dialog screens at
each, and what must hold at each size whatever the looks: the header names both releases and
the state, the key bar shows ``q Quit``, host names never run into the next column, and the
flags screen keeps a space between its values."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
import tuikit
from test_flags_screen import STORE_SPEC, _snapshot_store, open_flags

SIZES = {"80x24": (80, 24), "120x40": (120, 40), "200x50": (200, 50)}
#: the releases of tuikit's canary scenario
CURRENT, TARGET = "1.0.0", "1.1.0"


async def _settled_then(pilot, *keys: str) -> None:
    """Let the main screen lay out (its side column may scroll at 120x40) before ``keys``,
    and the screen they open lay out after: the snapshot is then the same every run."""
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    for key in keys:
        await pilot.press(key)
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()


@pytest.mark.parametrize("size", SIZES)
def test_main_screen_at_size(snap_compare, fake, size):
    async def run_before(pilot) -> None:
        await _settled_then(pilot)

    assert snap_compare(fake("running"), terminal_size=SIZES[size], run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_help_screen_at_size(snap_compare, fake, size):
    async def run_before(pilot) -> None:
        await _settled_then(pilot, "question_mark")

    assert snap_compare(fake("running"), terminal_size=SIZES[size], run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_rollback_dialog_at_size(snap_compare, fake, size):
    async def run_before(pilot) -> None:
        await _settled_then(pilot, "r")

    assert snap_compare(fake("waiting"), terminal_size=SIZES[size], run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_flags_screen_at_size(snap_compare, tmp_path, monkeypatch, size):
    monkeypatch.chdir(tmp_path)
    store = _snapshot_store(tmp_path)

    async def run_before(pilot) -> None:
        await _settled_then(pilot)
        await open_flags(pilot.app, pilot)
        await _settled_then(pilot)

    try:
        assert snap_compare(tuikit.frozen_app(tuikit.scenario("running"), flags=store),
                            terminal_size=SIZES[size], run_before=run_before)
    finally:
        store.close()


def screen_at(size: tuple[int, int], *, flags: Any = None, keys: tuple[str, ...] = ()) -> str:
    """The plain text of the running canary's screen at ``size`` (after ``keys``)."""

    async def main() -> str:
        app = tuikit.frozen_app(tuikit.scenario("running"), flags=flags)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            for key in keys:
                await pilot.press(key)
            if flags is not None:
                await open_flags(app, pilot)
            await pilot.pause()
            return tuikit.screen_text(app)

    return asyncio.run(main())


@pytest.mark.parametrize("size", SIZES)
def test_header_and_key_bar_fit(size):
    text = screen_at(SIZES[size])
    lines = text.splitlines()
    header = "\n".join(lines[:2])
    assert CURRENT in header and TARGET in header, header
    assert "RUNNING" in header, header
    assert re.search(r"\bq\s+Quit\b", "\n".join(lines[-2:])), lines[-2:]


@pytest.mark.parametrize("size", SIZES)
def test_host_names_never_run_into_the_release(size):
    text = screen_at(SIZES[size])
    rows = [line for line in text.splitlines() if re.match(r"[│ ]*web-\d{4}", line)]   # table
    assert len(rows) >= 8, text
    for row in rows:
        assert re.search(r"web-\d{4}\s+\d", row), row      # a space after every host name


def test_help_fits_at_80x24():
    """The help box is whole on screen (it scrolls inside): title and bottom border."""
    lines = screen_at(SIZES["80x24"], keys=("question_mark",)).splitlines()
    box = [n for n, line in enumerate(lines) if "upgrader help" in line]
    assert box, lines
    bottom = [n for n, line in enumerate(lines) if line.strip().startswith("█▄▄▄")]
    assert bottom and bottom[-1] > box[0], lines


@pytest.mark.parametrize("size", SIZES)
def test_flags_screen_keeps_its_values_apart(size, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = _snapshot_store(tmp_path)
    try:
        text = screen_at(SIZES[size], flags=store)
    finally:
        store.close()
    assert STORE_SPEC in text or "flags" in text.lower()
    for together in ("on5%", "onsplit", "disablestaging", "new-checkoutin", "on45%"):
        assert together not in text, (together, text)


@pytest.mark.parametrize("start, to", [((200, 50), (170, 50)), ((170, 50), (120, 40)),
                                       ((120, 40), (200, 50))])
def test_the_traffic_chart_redraws_for_a_new_width_without_wrapping(start, to):
    """The chart is drawn for its width. When the width changes (the terminal resized, the side
    column's scrollbar came), it is drawn again for the new one: its rows never wrap, so its
    height stays one line per row (a wrapped chart doubled in height and pushed the analysis
    out of sight), and its value column stays whole."""

    async def main() -> list[tuple[int, int, list[str]]]:
        app = tuikit.frozen_app(tuikit.scenario("running"))
        seen = []
        async with app.run_test(size=start) as pilot:
            for size in (start, to):
                await pilot.resize_terminal(*size)
                await _settled_then(pilot)
                chart = app.screen.query_one("#traffic")
                text = tuikit.screen_text(app).splitlines()
                region = chart.content_region
                rows = [line[region.x:region.right] for line in text[region.y:region.bottom]]
                seen.append((chart.size.height, chart.content_size.width, rows))
        return seen

    for height, width, rows in asyncio.run(main()):
        assert height == len(rows) == 6, rows             # five series and the split line
        for row in rows[:5]:
            assert re.search(r"\d(%|ms)$", row.rstrip()), (width, row)   # the value is whole
