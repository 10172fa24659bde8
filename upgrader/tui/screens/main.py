"""The main screen: header, fleet table, steps and progress, traffic chart, verdicts, events.

How it fits the terminal is app.tcss's business (the app's breakpoints put -narrow / -medium /
-wide and -short / -tall on the screen): narrow, a compact summary stands in for the side
column; short, the events panel goes (``l`` shows the log); wide, the fleet table is as wide
as its columns and the side column takes the rest."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen

from ..messages import RolloutUpdated
from ..widgets import (
    EventLog,
    FleetTable,
    KeyBar,
    RollbackWindowLine,
    RolloutHeader,
    StepsPanel,
    SummaryPanel,
    TrafficChart,
    VerdictPanel,
    WindowLine,
)

if TYPE_CHECKING:
    from ..app import UpgraderApp

#: the keys of the main screen; the help screen lists them from here
KEYS: list[BindingType] = [
    Binding("space", "app.toggle_pause", "Pause/Resume"),
    Binding("p", "app.promote", "Promote"),
    Binding("P,shift+p", "app.promote_all", "Promote all", key_display="P"),
    Binding("r", "app.rollback", "Roll back"),
    Binding("l", "app.log", "Log"),
    Binding("f", "app.flags", "Flags"),
    Binding("w", "app.override_window", "Override window", show=False),
    Binding("question_mark", "app.help", "Help", key_display="?"),
    Binding("q", "app.request_quit", "Quit"),
]


class MainScreen(Screen[None]):
    WANTS_UPDATES = True
    BINDINGS = KEYS

    def compose(self) -> ComposeResult:
        yield RolloutHeader(id="header")
        yield WindowLine(id="window")
        yield RollbackWindowLine(id="rollback-window")
        with Horizontal(id="body"):
            yield FleetTable(id="fleet")
            with Vertical(id="side"):
                yield StepsPanel(id="steps")
                yield TrafficChart(id="traffic")
                yield VerdictPanel(id="verdict")
        # shown instead of the side column on a narrow terminal (app.tcss, -narrow)
        yield SummaryPanel(id="summary")
        yield EventLog(id="events")
        yield KeyBar(KEYS, id="keys")

    def on_mount(self) -> None:
        app = cast("UpgraderApp", self.app)
        self.query_one("#steps", StepsPanel).border_title = "Steps"
        self.query_one("#traffic", TrafficChart).border_title = "Traffic"
        self.query_one("#events", EventLog).border_title = "Events"
        self.query_one("#events", EventLog).add_lines(app.recent_lines)
        self._show(RolloutUpdated(app.view, synced=True))
        self.query_one(FleetTable).focus()

    def on_rollout_updated(self, message: RolloutUpdated) -> None:
        self._show(message)

    def _show(self, message: RolloutUpdated) -> None:
        view = message.view
        self.query_one(RolloutHeader).show(view)
        self.query_one(WindowLine).show(view)
        self.query_one(RollbackWindowLine).show(view)
        self.query_one(FleetTable).show(view, message.changed, message.synced)
        self.query_one(StepsPanel).show(view)
        self.query_one(TrafficChart).show(view)
        self.query_one(VerdictPanel).show(view)
        self.query_one(SummaryPanel).show(view)
        if message.lines:
            self.query_one(EventLog).add_lines(message.lines)
