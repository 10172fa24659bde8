"""Overriding the deploy window: asks for the reason (journaled with the override)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Static

from .dialog import ChoiceDialog


class WindowOverrideDialog(ChoiceDialog[str | None]):
    """Dismissed with the reason, or None (cancel). An empty reason is refused here."""

    def __init__(self, situation: str) -> None:
        super().__init__()
        self.situation = situation

    def compose(self) -> ComposeResult:
        with Vertical(id="window-box", classes="dialog"):
            yield Static(f"{self.situation}\n\nOverride the deploy window? The rollout goes on "
                         "outside it for the rest of the rollout. Why (journaled with the "
                         "override):", id="window-text")
            yield Input(placeholder="reason, e.g. hotfix INC-4711, approved by on-call",
                        id="window-reason")
            yield Static("", id="window-error")
            yield Static("Enter: override  ·  Escape: cancel", classes="dim-hint")

    def on_mount(self) -> None:
        self.query_one("#window-box").border_title = "Override the deploy window"
        self.query_one("#window-reason", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        reason = event.value.strip()
        if not reason:
            self.query_one("#window-error", Static).update(
                Text("a reason is required: it is journaled with the override",
                     style="bold red"))
            return
        self.dismiss(reason)

    def action_cancel(self) -> None:
        self.dismiss(None)
