"""Quitting while a rollout runs: roll it back, leave it (running, or paused if it is: a
detachable handle), or stay."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Static

from .dialog import ChoiceDialog, choice


class QuitDialog(ChoiceDialog[str | None]):
    """Dismissed with "abort", "detach" or None (cancel)."""

    def __init__(self, *, state: str, detachable: bool, paused: bool = False) -> None:
        super().__init__()
        self.state = state
        self.detachable = detachable
        self.paused = paused

    def compose(self) -> ComposeResult:
        if self.detachable and self.paused:
            text = (f"The rollout is {self.state}. Quit how?\n\n"
                    "Abort rolls it back. Leave it paused closes this screen; the rollout "
                    "stays paused in its controller until someone resumes it "
                    "(`upgrader attach`, then space).")
        elif self.detachable:
            text = (f"The rollout is {self.state}. Quit how?\n\n"
                    "Abort rolls it back. Leave it running closes this screen; the rollout "
                    "goes on in its controller (`upgrader attach` to come back).")
        else:
            text = (f"The rollout is {self.state} and runs inside this program: quitting "
                    "aborts it and rolls it back.")
        with Vertical(id="quit-box", classes="dialog"):
            yield Static(text, id="quit-text")
            with Horizontal(classes="buttons"):
                yield choice("[A]bort (roll back)", variant="error", id="abort")
                if self.detachable:
                    yield choice("[L]eave it paused" if self.paused else "[L]eave it running",
                                 variant="success", id="detach")
                yield choice("[C]ancel", variant="primary", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#quit-box").border_title = "Quit"
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_choose(event.button.id if event.button.id not in ("cancel", None) else "")

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_choose(self, choice: str) -> None:
        if choice == "detach" and not self.detachable:
            return
        self.dismiss(choice or None)
