"""The log screen: every event of the rollout (the engine's bounded history and what came
since), newest at the bottom."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, RichLog, Static

from ..messages import RolloutUpdated, log_line

if TYPE_CHECKING:
    from ..app import UpgraderApp

#: lines written when the screen opens (the most recent events)
INITIAL_LINES = 2000


class LogScreen(Screen[None]):
    WANTS_UPDATES = True
    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("l", "close", "Back", show=False),
        Binding("q", "close", "Back", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Static(id="log-title")
        yield RichLog(id="log", max_lines=10000, wrap=False, markup=False, highlight=False)
        yield Footer()

    def on_mount(self) -> None:
        app = cast("UpgraderApp", self.app)
        view = app.view
        self.query_one("#log-title", Static).update(
            f" Event log · {view.fleet} · {view.current} -> {view.target}"
            f" · {len(view.log):,} events kept (escape: back)")
        log = self.query_one("#log", RichLog)
        for event in list(view.log)[-INITIAL_LINES:]:
            log.write(log_line(event, view, app.describer))
        log.focus()

    def on_rollout_updated(self, message: RolloutUpdated) -> None:
        app = cast("UpgraderApp", self.app)
        log = self.query_one("#log", RichLog)
        for event in message.events:
            log.write(log_line(event, message.view, app.describer))

    def action_close(self) -> None:
        self.dismiss(None)
