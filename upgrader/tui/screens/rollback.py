"""The roll-back confirmation: says what will happen and how long it should take."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Static

from .dialog import ChoiceDialog, choice


class RollbackDialog(ChoiceDialog[bool]):
    """Dismissed with True (roll back) or False (cancel). ``describe()`` says what a roll-back
    would do now; the text follows the rollout while the dialog is open."""

    WANTS_UPDATES = True

    def __init__(self, describe: Callable[[], str]) -> None:
        super().__init__()
        self.describe = describe

    def compose(self) -> ComposeResult:
        with Vertical(id="rollback-box", classes="dialog"):
            self._text = self.describe()
            yield Static(self._text, id="rollback-text")
            with Horizontal(classes="buttons"):
                yield choice("[R]oll back", variant="error", id="confirm")
                yield choice("[C]ancel", variant="primary", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#rollback-box").border_title = "Roll back?"
        self.query_one("#cancel", Button).focus()

    def on_rollout_updated(self) -> None:
        text = self.describe()
        if text != self._text:
            self._text = text
            self.query_one("#rollback-text", Static).update(text)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
