"""The help screen: the keys, and what each panel of the main screen shows."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEY_HELP = [
    ("space", "pause: PAUSING until the next step boundary, then PAUSED (a timed pause's "
              "countdown frozen); again: resume, or cancel a PAUSING"),
    ("p", "promote: end the current pause or verification hold now (while paused: resume)"),
    ("P", "promote all: skip every remaining pause and analysis"),
    ("r", "roll back (asks first, and says what will happen and how long it takes)"),
    ("l", "the full event log"),
    ("f", "feature flags in every environment: turn one on/off, change its roll-out "
          "(asks first), see its history"),
    ("w", "override the deploy window (asks for the reason, journaled); the window line "
          "under the header shows the window, the next opening and the countdown of a wait"),
    ("?", "this help"),
    ("q", "quit: asks whether to roll back or leave the rollout (running, or paused) if it "
          "is not over"),
    ("up/down, pgup/pgdn", "move through the fleet table"),
]
PANELS = [
    ("header", "fleet, strategy, releases, the state (and why), elapsed and remaining time"),
    ("Fleet", "every host: release (old>new while it moves), phase, health, its share of "
              "requests, requests/s, 5xx %, p95; coloured by phase"),
    ("Steps", "the plan: done steps ticked, the current one marked with its countdown; "
              "hosts and traffic on the new release"),
    ("Traffic", "share of requests on the new release, 5xx and p95 of new against old, "
                "over time; the balancer's split and routes"),
    ("Analysis", "the last verdict of each check (red when failing). Threshold judge: "
                 "value, limit, the old release's value, samples, failures in a row. "
                 "Statistical judge: the round's score (0-100) and band, then per metric "
                 "pass/fail/inconclusive/no data, its limits, p-value, effect and samples "
                 "had/needed"),
    ("Events", "notable events: state changes, steps, failures, operator controls"),
    ("narrow", "under 100 columns one summary replaces Steps, Traffic and Analysis: the "
               "share, 5xx and p95 of new against old, and every verdict; under 30 lines "
               "the Events panel goes (l shows the log)"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold cyan", no_wrap=True)
        keys.add_column()
        for key, what in KEY_HELP:
            keys.add_row(key, what)
        panels = Table.grid(padding=(0, 2))
        panels.add_column(style="bold", no_wrap=True)
        panels.add_column()
        for panel, what in PANELS:
            panels.add_row(panel, what)
        with VerticalScroll(id="help-box"):
            yield Static(Text("Keys", style="bold underline"))
            yield Static(keys)
            yield Static(Text("\nPanels", style="bold underline"))
            yield Static(panels)
            yield Static(Text("\nescape closes this help · up/down scroll it", style="dim"))

    def on_mount(self) -> None:
        self.query_one("#help-box").border_title = "upgrader help"

    def action_close(self) -> None:
        self.dismiss(None)
