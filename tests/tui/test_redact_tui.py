"""The TUI channel of issue 13: a secret host var (rendered into the install command, echoed by
the failing install) never shows on the TUI's screens or in its event log."""

from __future__ import annotations

import dataclasses

from textual.widgets import RichLog
from tuikit import ShownStates, canary_fleet, main_screen, run_live, screen_text

from upgrader import redact
from upgrader.model import Commands
from upgrader.providers.base import CommandResult
from upgrader.rollout import _register_secrets

TOKEN = "tui-Tk84mQz2Lp"
NOTE = "tui-Nt51xRw7Hd"


def test_a_secret_var_in_a_failing_install_never_shows_in_the_tui():
    base = canary_fleet(4, [{"hosts": 2, "pause": "promote"}, {"hosts": "100%"}])
    hosts = tuple(dataclasses.replace(h, vars={"api_token": TOKEN, "note": NOTE},
                                      secret_vars=frozenset({"api_token", "note"}))
                  for h in base.hosts)
    fleet = dataclasses.replace(base, hosts=hosts, commands=Commands(
        install=("deploy", "{release}", "--token={api_token}", "--note", "{note}"),
        start=("start",), stop=("stop",)))
    _register_secrets(fleet, None)          # what Rollout does when it opens

    def responder(host, argv):
        if argv[0] == "deploy" and argv[1] == "1.1.0" and host.name == "web-0002":
            return CommandResult(1, f"deploying {argv[2]}", f"auth failed: {argv[2]} {argv[4]}")
        return None

    seen: list[str] = []

    async def scenario(live, app, pilot):
        shown = ShownStates(app)
        await shown.wait_for(pilot, "ROLLED BACK")
        screen = main_screen(app)
        events = "\n".join(line.text for line in screen.query_one("#events", RichLog).lines)
        seen.extend([events, screen_text(app)])
        await pilot.press("l")              # the full log screen
        await pilot.pause()
        seen.append(screen_text(app))

    try:
        run_live(fleet, scenario, responder=responder)
    finally:
        redact.forget_secrets()
    text = "\n".join(seen)
    hits = text.count(TOKEN) + text.count(NOTE)
    assert hits == 0, f"{hits} hits in the TUI: {text}"
    assert "auth failed: --token=*** ***" in text      # the failure did reach the TUI
