"""Every key of the TUI against a live in-process engine (no-op providers, real time, short
delays), the engine and the app in one event loop."""

from __future__ import annotations

from textual.widgets import Button, RichLog, Static
from tuikit import ShownStates, canary_fleet, main_screen, run_live, screen_text, wait_until

from upgrader.providers.base import CommandResult
from upgrader.tui.screens import HelpScreen, LogScreen, MainScreen, QuitDialog, RollbackDialog
from upgrader.tui.widgets import FleetTable, StepsPanel, VerdictPanel

HOLD = [{"hosts": 1, "pause": "promote"}, {"hosts": "100%"}]


def state(live) -> str:
    return live.engine.state.value


def text_of(widget: Static) -> str:
    return str(widget.render())


def test_space_pauses_then_resumes():
    fleet = canary_fleet(16, [{"hosts": 1, "pause": "promote"},
                              {"hosts": "100%", "max_parallel": 1}])

    async def scenario(live, app, pilot):
        shown = ShownStates(app)
        await shown.wait_for(pilot, "WAITING")
        await pilot.press("p")
        await wait_until(pilot, lambda: live.engine.current_step == 3, "the one-by-one step")
        await pilot.press("space")
        await wait_until(pilot, lambda: state(live) == "PAUSED", "the engine to pause")
        await shown.wait_for(pilot, "PAUSED")
        upgraded = sum(1 for h in live.engine.hosts.values() if h.release == "1.1.0")
        await pilot.press("space")
        await wait_until(pilot, lambda: state(live) in ("RUNNING", "WAITING", "VERIFYING"),
                         "the engine to resume")
        await wait_until(pilot, lambda: shown()[-1] != "PAUSED", "the header to leave PAUSED")
        await wait_until(pilot, lambda: sum(1 for h in live.engine.hosts.values()
                                            if h.release == "1.1.0") > upgraded,
                         "more hosts after the resume")
        assert live.controls()[:3] == ["promote", "pause", "resume"]

    run_live(fleet, scenario)


def test_p_promotes_past_the_indefinite_pause():
    fleet = canary_fleet(4, HOLD)

    async def scenario(live, app, pilot):
        shown = ShownStates(app)
        await shown.wait_for(pilot, "WAITING")
        steps = main_screen(app).query_one("#steps-list", Static)
        await wait_until(pilot, lambda: "p promotes" in text_of(steps),
                         "the steps panel to say the pause waits for a promote")
        assert live.engine.state_reason == "until promoted"
        await pilot.press("p")
        await shown.wait_for(pilot, "COMPLETED")
        assert live.controls() == ["promote"]
        assert all(h.release == "1.1.0" for h in live.engine.hosts.values())

    run_live(fleet, scenario)


def test_capital_p_promotes_all():
    fleet = canary_fleet(6, [{"hosts": 1, "pause": "1h"}, {"hosts": 2, "pause": "promote"},
                             {"hosts": "100%"}])

    async def scenario(live, app, pilot):
        shown = ShownStates(app)
        await shown.wait_for(pilot, "WAITING")
        steps = main_screen(app).query_one("#steps-list", Static)
        await wait_until(pilot, lambda: "1h left" in text_of(steps) or "59m" in text_of(steps),
                         "the countdown of the hour's pause")
        await pilot.press("P")
        await shown.wait_for(pilot, "COMPLETED")
        assert live.controls() == ["promote_all"]

    run_live(fleet, scenario)


def test_r_and_confirm_rolls_back():
    fleet = canary_fleet(8, [{"hosts": 3, "pause": "promote"}, {"hosts": "100%"}])

    async def scenario(live, app, pilot):
        shown = ShownStates(app)
        await shown.wait_for(pilot, "WAITING")
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, RollbackDialog), "the dialog")
        text = text_of(app.screen.query_one("#rollback-text", Static))
        assert "3 host(s) run 1.1.0" in text and "return to 1.0.0" in text
        assert "Expected to take about" in text
        await pilot.press("r")
        await shown.wait_for(pilot, "ROLLED BACK")
        assert shown.seen[-2:] == ["ROLLING BACK", "ROLLED BACK"]
        assert isinstance(app.screen, MainScreen)
        assert state(live) == "ROLLED BACK"
        assert "abort" in live.controls()
        assert all(h.release == "1.0.0" for h in live.engine.hosts.values())

    run_live(fleet, scenario)


def test_r_and_cancel_does_nothing():
    fleet = canary_fleet(4, HOLD)

    async def scenario(live, app, pilot):
        shown = ShownStates(app)
        await shown.wait_for(pilot, "WAITING")
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, RollbackDialog), "the dialog")
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), "the dialog to close")
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, RollbackDialog), "the dialog")
        await pilot.click("#cancel")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), "the dialog to close")
        await pilot.pause(0.3)
        assert state(live) == "WAITING"
        assert live.controls() == []
        assert shown()[-1] == "WAITING" and "ROLLING BACK" not in shown.seen

    run_live(fleet, scenario)


def test_l_opens_the_log_and_escape_closes_it():
    fleet = canary_fleet(4, HOLD)

    async def scenario(live, app, pilot):
        await ShownStates(app).wait_for(pilot, "WAITING")
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, LogScreen), "the log screen")
        log = app.screen.query_one("#log", RichLog)
        await wait_until(pilot, lambda: len(log.lines) > 5, "lines in the log")
        text = "\n".join(line.text for line in log.lines)
        assert "rollout_started" in text and "host_done" in text and "WAITING" in text
        await pilot.press("p")      # keys of the main screen do nothing here
        await pilot.pause(0.2)
        assert live.controls() == []
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen")

    run_live(fleet, scenario)


def test_question_mark_opens_the_help():
    fleet = canary_fleet(4, HOLD)

    async def scenario(live, app, pilot):
        await ShownStates(app).wait_for(pilot, "WAITING")
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
        text = screen_text(app)
        assert "promote all" in text and "Panels" in text
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen")

    run_live(fleet, scenario)


def test_q_on_a_running_rollout_asks_and_abort_rolls_back():
    fleet = canary_fleet(4, HOLD)

    async def scenario(live, app, pilot):
        await ShownStates(app).wait_for(pilot, "WAITING")
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(app.screen, QuitDialog), "the quit dialog")
        ids = {b.id for b in app.screen.query(Button)}
        assert ids == {"abort", "cancel"}      # in-process: nothing can be left running
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen")
        assert state(live) == "WAITING"
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(app.screen, QuitDialog), "the quit dialog")
        await pilot.press("a")
        await wait_until(pilot, lambda: app.return_value == "abort", "the app to exit")
        result = await live.stop()
        assert result.outcome.value == "rolled_back"

    app = run_live(fleet, scenario)
    assert app.return_value == "abort"


def test_q_with_a_detachable_handle_can_leave_the_rollout_running():
    fleet = canary_fleet(4, HOLD)
    choices = []

    async def scenario(live, app, pilot):
        await ShownStates(app).wait_for(pilot, "WAITING")
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(app.screen, QuitDialog), "the quit dialog")
        assert {b.id for b in app.screen.query(Button)} == {"abort", "detach", "cancel"}
        await pilot.click("#detach")
        await wait_until(pilot, lambda: app.return_value == "detach", "the app to exit")
        assert state(live) == "WAITING" and live.controls() == []

    app = run_live(fleet, scenario, on_quit=choices.append)
    assert app.return_value == "detach" and choices == ["detach"]


def test_q_on_a_finished_rollout_quits():
    fleet = canary_fleet(3, [{"hosts": "100%"}])
    choices = []

    async def scenario(live, app, pilot):
        await ShownStates(app).wait_for(pilot, "COMPLETED")
        await pilot.press("q")
        await wait_until(pilot, lambda: app.return_value == "quit", "the app to exit")

    app = run_live(fleet, scenario, on_quit=choices.append)
    assert app.return_value == "quit" and choices == ["quit"]


def test_f_without_a_flag_store_says_how_to_give_one():
    fleet = canary_fleet(4, HOLD)

    async def scenario(live, app, pilot):
        await ShownStates(app).wait_for(pilot, "WAITING")
        await pilot.press("f")
        await wait_until(pilot, lambda: any("no flag store: pass --flags-store"
                                            in str(n.message) for n in app._notifications),
                         "the notification")
        assert isinstance(app.screen, MainScreen)

    run_live(fleet, scenario)


def test_a_bad_canary_is_shown_rolling_back_with_its_verdict():
    fleet = canary_fleet(6, [{"hosts": 3, "pause": "promote"}, {"hosts": "100%"}])

    async def scenario(live, app, pilot):
        shown = ShownStates(app)
        await shown.wait_for(pilot, "ROLLED BACK")
        assert shown.seen[-2:] == ["ROLLING BACK", "ROLLED BACK"]
        panel = main_screen(app).query_one(VerdictPanel)
        assert panel.has_class("-failing")
        text = text_of(panel)
        assert "error_rate" in text and "FAIL" in text and "30.00%" in text
        assert "limit 1.00%" in text and "old release 0.00%" in text and "samples" in text
        assert "2/2 in a row" in text
        assert panel.border_title == "Analysis: FAILING"

    run_live(fleet, scenario, error_rate_new=0.3)


def test_a_failed_install_shows_the_host_and_rolls_back():
    fleet = canary_fleet(6, [{"hosts": 2, "pause": "promote"}, {"hosts": "100%"}])

    def responder(host, argv):
        if argv[0] == "deploy" and argv[1] == "1.1.0" and host.name == "web-0002":
            return CommandResult(1, "", "disk full")
        return None

    async def scenario(live, app, pilot):
        shown = ShownStates(app)
        await shown.wait_for(pilot, "ROLLED BACK")
        assert "ROLLING BACK" in shown.seen
        screen = main_screen(app)
        events = "\n".join(line.text for line in screen.query_one("#events", RichLog).lines)
        assert "web-0002" in events and "disk full" in events
        table = screen.query_one(FleetTable)
        assert all(app.view.hosts[name].release == "1.0.0" for name in app.view.order)
        assert table.border_title.startswith("Fleet · 6 hosts · 0 on 1.1.0")
        assert "✗" in text_of(screen.query_one("#steps-list", Static))   # the failed step

    run_live(fleet, scenario, responder=responder)


def test_the_steps_panel_ticks_done_steps_and_shows_host_progress():
    fleet = canary_fleet(4, HOLD)

    async def scenario(live, app, pilot):
        await ShownStates(app).wait_for(pilot, "WAITING")
        panel = main_screen(app).query_one(StepsPanel)
        await wait_until(pilot, lambda: "1 / 4" in text_of(panel.query_one("#hosts-label")),
                         "one host of four on the new release")
        steps = text_of(panel.query_one("#steps-list", Static))
        assert "✓" in steps and "▶" in steps

    run_live(fleet, scenario)
