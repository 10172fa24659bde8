"""The flags screen (``f``): a real SQLite flag store in tmp_path, loaded from
sample_fleets/flags.toml, under the app on a fake handle. Toggles and roll-outs go through a
confirmation and reach the store (with the TUI's actor in the audit trail), a cancel changes
nothing, an invalid change is shown and changes nothing, a change made by another store object
shows up within a second, and every store call runs off the UI thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import tuikit
from textual.widgets import DataTable, Input
from tuikit import SIZE, wait_until

from upgrader.errors import ConfigError
from upgrader.flags import edit
from upgrader.flags.loader import load
from upgrader.flags.store import default_actor, open_store
from upgrader.tui.screens import FlagChangeDialog, FlagsScreen, MainScreen, PercentDialog
from upgrader.tui.screens.flags import fmt_ts

SAMPLE = Path(__file__).resolve().parents[2] / "sample_fleets" / "flags.toml"
STORE_SPEC = "flags.sqlite"        # relative to tmp_path: the screen shows the spec
TUI_ACTOR = default_actor() + " (tui)"


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_store(STORE_SPEC)
    store.replace(load(SAMPLE), actor="alice@vm", reason="first-import")
    yield store
    store.close()


def run(store, scenario) -> Any:
    """``scenario(app, pilot)`` on the frozen app with the flag store; returns the app."""

    async def main() -> Any:
        app = tuikit.frozen_app(tuikit.scenario("running"), flags=store)
        async with app.run_test(size=SIZE) as pilot:
            await scenario(app, pilot)
        return app

    return asyncio.run(main())


async def open_flags(app, pilot) -> FlagsScreen:
    await pilot.press("f")
    await wait_until(pilot, lambda: isinstance(app.screen, FlagsScreen)
                     and app.screen.history_key is not None, "the flags screen to load")
    return app.screen


def cell(screen: FlagsScreen, key: str, env: str) -> str:
    return str(screen.query_one(DataTable).get_cell(key, f"env:{env}"))


def notified(app, text: str) -> bool:
    return any(text in str(n.message) for n in app._notifications)


def production(store, key: str):
    return store.load().flags[key].env("production")


def test_f_opens_the_flags_screen_with_every_flag_in_every_environment(store):
    async def scenario(app, pilot):
        screen = await open_flags(app, pilot)
        table = screen.query_one(DataTable)
        assert table.row_count == 7
        assert [str(c.label) for c in table.columns.values()] == [
            "KEY", "KIND", "development", "staging", "demo", "▶ production", "DESCRIPTION"]
        assert screen.environment == "production" and screen.version == 1
        assert cell(screen, "new-checkout", "production") == "● on 30%"
        assert cell(screen, "payments-v2", "production") == "● on 5%"
        assert cell(screen, "checkout-button", "production") == "● on split"
        assert cell(screen, "checkout-button", "development") == "○ off"
        assert cell(screen, "recommendations", "staging") == "● on"
        text = tuikit.screen_text(app)
        for key in ("new-checkout", "payments-v2", "recommendations", "priority-support",
                    "export-format", "checkout-button", "search-page-size"):
            assert key in text
        assert "kill_switch" in text and "the one-page checkout" in text
        assert "store flags.sqlite · version 1" in text
        # the selected flag's history, from the audit trail
        assert screen.history_key == "new-checkout"
        assert [(e.actor, e.action) for e in screen.history] == [("alice@vm", "import")]
        assert "History · new-checkout" in text and "first-import" in text
        await pilot.press("down")
        await wait_until(pilot, lambda: screen.history_key == "payments-v2",
                         "the history of the next flag")
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen")

    run(store, scenario)


def test_toggle_and_confirm_changes_the_store_and_audits_the_tui_actor(store):
    context = {"targetingKey": "bob", "groups": ["beta"], "country": "DE",
               "app_version": "2.5.0", "email": "bob@example.com"}
    assert store.evaluator("production").evaluate("new-checkout", context).variant == "on"

    async def scenario(app, pilot):
        screen = await open_flags(app, pilot)
        await pilot.press("space")
        await wait_until(pilot, lambda: isinstance(app.screen, FlagChangeDialog), "the dialog")
        assert app.screen.text.splitlines()[0] == ("turn new-checkout OFF in production: "
                                                   "users get variant 'off'")
        await pilot.press("a")
        await wait_until(pilot, lambda: store.version() == 2, "the change in the store")
        await wait_until(pilot, lambda: cell(screen, "new-checkout", "production")
                         .startswith("○ off"), "the table to show it off")
        await wait_until(pilot, lambda: len(screen.history) == 2, "the history to show it")
        assert screen.history[0].actor == TUI_ACTOR
        assert notified(app, "new-checkout: OFF in production (version 2)")
        # and back on with t
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, FlagChangeDialog), "the dialog")
        assert app.screen.text.startswith("turn new-checkout ON in production: its "
                                          "targeting applies (needs payments-v2=on; 1 target;")
        await pilot.click("#confirm")
        await wait_until(pilot, lambda: store.version() == 3, "the second change")

    run(store, scenario)
    entries = store.history("new-checkout")
    assert [(e.action, e.environment, e.old, e.new, e.actor, e.reason, e.version)
            for e in entries[:2]] == [
        ("enable", "production", False, True, TUI_ACTOR, "tui", 3),
        ("disable", "production", True, False, TUI_ACTOR, "tui", 2)]
    assert TUI_ACTOR.endswith(" (tui)") and "@" in TUI_ACTOR
    assert production(store, "new-checkout").enabled


def test_a_confirmed_toggle_is_what_the_evaluator_serves(store):
    async def scenario(app, pilot):
        await open_flags(app, pilot)
        await pilot.press("space", "a")
        await wait_until(pilot, lambda: store.version() == 2, "the change in the store")

    run(store, scenario)
    result = store.evaluator("production").evaluate(
        "new-checkout", {"targetingKey": "bob", "groups": ["beta"]})
    assert (result.variant, str(result.reason)) == ("off", "DISABLED")


def test_toggle_and_cancel_changes_nothing(store):
    async def scenario(app, pilot):
        screen = await open_flags(app, pilot)
        for key in ("c", "escape"):
            await pilot.press("space")
            await wait_until(pilot, lambda: isinstance(app.screen, FlagChangeDialog),
                             "the dialog")
            await pilot.press(key)
            await wait_until(pilot, lambda: app.screen is screen, "the dialog to close")
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, FlagChangeDialog), "the dialog")
        await pilot.click("#cancel")
        await wait_until(pilot, lambda: app.screen is screen, "the dialog to close")
        await pilot.pause(0.3)

    run(store, scenario)
    assert store.version() == 1
    assert [e.action for e in store.history("new-checkout")] == ["import"]
    assert production(store, "new-checkout").enabled


def test_plus_raises_and_minus_lowers_the_rollout_percentage(store):
    async def scenario(app, pilot):
        screen = await open_flags(app, pilot)
        await pilot.press("plus")
        await wait_until(pilot, lambda: isinstance(app.screen, FlagChangeDialog), "the dialog")
        assert app.screen.text.startswith(
            "set the roll-out of new-checkout in production to 35 % (now 30 %): rule "
            "gold-silver-30 serves variant 'on' to 35 % of the users it matches")
        await pilot.press("a")
        await wait_until(pilot, lambda: store.version() == 2, "the change in the store")
        await wait_until(pilot, lambda: cell(screen, "new-checkout", "production")
                         == "● on 35%", "the table to show 35%")
        await pilot.press("minus")
        await wait_until(pilot, lambda: isinstance(app.screen, FlagChangeDialog), "the dialog")
        assert "to 30 % (now 35 %)" in app.screen.text
        await pilot.press("a")
        await wait_until(pilot, lambda: store.version() == 3, "the second change")

    run(store, scenario)
    flag = store.load().flags["new-checkout"]
    assert edit.rollout_percent(flag, "production") == 30
    assert [(e.action, e.old, e.new, e.actor) for e in store.history("new-checkout", 2)] == [
        ("rollout", 35, 30, TUI_ACTOR), ("rollout", 30, 35, TUI_ACTOR)]


def test_percent_sets_an_exact_value_and_an_invalid_one_changes_nothing(store):
    async def scenario(app, pilot):
        await open_flags(app, pilot)
        await pilot.press("percent_sign")
        await wait_until(pilot, lambda: isinstance(app.screen, PercentDialog), "the input")
        app.screen.query_one(Input).value = "150"
        await pilot.press("enter")
        await wait_until(pilot, lambda: notified(app, "a percent must be between 0 and 100"),
                         "the error")
        assert isinstance(app.screen, FlagsScreen)      # no confirmation for an invalid one
        await pilot.press("percent_sign")
        await wait_until(pilot, lambda: isinstance(app.screen, PercentDialog), "the input")
        app.screen.query_one(Input).value = "lots"
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert isinstance(app.screen, PercentDialog)    # says why and waits for a number
        app.screen.query_one(Input).value = "12.5 %"
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, FlagChangeDialog), "the dialog")
        assert "to 12.5 % (now 30 %)" in app.screen.text
        await pilot.press("a")
        await wait_until(pilot, lambda: store.version() == 2, "the change in the store")
        # a weighted roll-out cannot be changed by percentage: said, nothing changes
        screen = app.screen
        screen.query_one(DataTable).move_cursor(row=5)
        await wait_until(pilot, lambda: screen.selected_key() == "checkout-button",
                         "checkout-button selected")
        await pilot.press("plus")
        await wait_until(pilot, lambda: notified(app, "is a weighted roll-out"), "the error")
        assert app.screen is screen

    run(store, scenario)
    assert store.version() == 2
    assert edit.rollout_percent(store.load().flags["new-checkout"], "production") == 12.5


def test_a_change_the_store_refuses_is_shown_and_changes_nothing(store, monkeypatch):
    def refuse(*args, **kwargs):
        raise ConfigError("refused for the test", key="flags.new-checkout")

    monkeypatch.setattr(store, "set_enabled", refuse)

    async def scenario(app, pilot):
        screen = await open_flags(app, pilot)
        await pilot.press("space", "a")
        await wait_until(pilot, lambda: notified(app, "new-checkout: not changed: "
                                                       "flags.new-checkout: refused for the "
                                                       "test"), "the error")
        assert app.screen is screen
        assert cell(screen, "new-checkout", "production") == "● on 30%"

    run(store, scenario)
    assert store.version() == 1


def test_a_change_from_outside_shows_up_within_a_second(store):
    other = open_store(STORE_SPEC)       # another store object (another connection)

    async def scenario(app, pilot):
        screen = await open_flags(app, pilot)
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(other.set_enabled, "recommendations", "production", False,
                                actor="ops@elsewhere", reason="ML-service-down")
        start = loop.time()
        await wait_until(pilot, lambda: cell(screen, "recommendations", "production")
                         == "○ off", "the outside change on screen", timeout=1.2)
        assert loop.time() - start < 1.2
        assert screen.version == 2
        # the selected flag's history follows too
        await asyncio.to_thread(other.set_rollout, "new-checkout", "production", 50,
                                actor="ops@elsewhere", reason="widen")
        await wait_until(pilot, lambda: screen.history
                         and screen.history[0].actor == "ops@elsewhere",
                         "the outside change in the history", timeout=1.2)
        assert "ops@elsewhere" in tuikit.screen_text(app)
        assert cell(screen, "new-checkout", "production") == "● on 50%"

    try:
        run(store, scenario)
    finally:
        other.close()


def test_e_cycles_the_environments_and_changes_apply_to_the_selected_one(store):
    async def scenario(app, pilot):
        screen = await open_flags(app, pilot)
        seen = [screen.environment]
        for _ in range(4):
            await pilot.press("e")
            seen.append(screen.environment)
        assert seen == ["production", "development", "staging", "demo", "production"]
        await pilot.press("e", "e")
        assert screen.environment == "staging"
        labels = [str(c.label) for c in screen.query_one(DataTable).columns.values()]
        assert "▶ staging" in labels and "production" in labels
        assert "environment  staging" in tuikit.screen_text(app)
        await pilot.press("space")
        await wait_until(pilot, lambda: isinstance(app.screen, FlagChangeDialog), "the dialog")
        assert app.screen.text.startswith("turn new-checkout OFF in staging: users get "
                                          "variant 'off'")
        await pilot.press("a")
        await wait_until(pilot, lambda: store.version() == 2, "the change in the store")

    run(store, scenario)
    flag = store.load().flags["new-checkout"]
    assert not flag.env("staging").enabled and flag.env("production").enabled


def test_store_calls_never_run_on_the_ui_thread(store):
    ui = threading.get_ident()
    calls: list[tuple[str, bool]] = []
    for name in ("version", "load", "history", "set_enabled", "set_rollout"):
        method = getattr(store, name)

        def spy(*args, _name=name, _method=method, **kwargs):
            calls.append((_name, threading.get_ident() == ui))
            return _method(*args, **kwargs)

        setattr(store, name, spy)

    async def scenario(app, pilot):
        await open_flags(app, pilot)
        await pilot.press("space", "a")
        await wait_until(pilot, lambda: ("set_enabled", False) in calls, "the change")
        await pilot.press("plus", "a")
        await wait_until(pilot, lambda: ("set_rollout", False) in calls, "the roll-out")
        await pilot.press("down")
        await pilot.pause(0.6)

    run(store, scenario)
    assert {name for name, _ in calls} == {"version", "load", "history", "set_enabled",
                                           "set_rollout"}
    assert [name for name, on_ui in calls if on_ui] == []


def test_history_times_are_shown_in_utc_as_stored():
    assert fmt_ts("2030-01-01T00:05:00.123Z") == "2030-01-01 00:05:00Z"
    assert fmt_ts("not a time") == "not a time"


# ---------------------------------------------------------------------------- looks


def _snapshot_store(tmp_path: Path):
    """The sample flags with a short history at fixed times (the audit's ts is the store's
    wall clock: the test data fixes it)."""
    store = open_store(STORE_SPEC)
    store.replace(load(SAMPLE), actor="alice@vm", reason="first-import")
    store.set_rollout("new-checkout", "production", 45, actor="alice@vm", reason="widen")
    store.set_enabled("new-checkout", "staging", False, actor="bob@laptop (tui)", reason="tui")
    store.set_enabled("recommendations", "production", False, actor="ops@pager",
                      reason="ML-service-down")
    with sqlite3.connect(tmp_path / STORE_SPEC) as db:
        db.execute("UPDATE upgrader_flag_audit SET ts = printf('2030-01-01T09:%02d:00.000Z', id)")
    return store


def test_flags_screen_looks(snap_compare, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = _snapshot_store(tmp_path)

    async def run_before(pilot) -> None:
        await open_flags(pilot.app, pilot)

    try:
        assert snap_compare(tuikit.frozen_app(tuikit.scenario("running"), flags=store),
                            terminal_size=SIZE, run_before=run_before)
    finally:
        store.close()
