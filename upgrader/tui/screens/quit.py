"""Quitting while a rollout runs: roll it back, leave it running (a detachable handle), or stay."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class QuitDialog(ModalScreen[str | None]):
    """Dismissed with "abort", "detach" or None (cancel)."""

    BINDINGS = [
        Binding("a", "choose('abort')", "Abort (roll back)"),
        Binding("d", "choose('detach')", "Leave it running", show=False),
        Binding("c,escape", "choose('')", "Cancel"),
    ]

    def __init__(self, *, state: str, detachable: bool) -> None:
        super().__init__()
        self.state = state
        self.detachable = detachable

    def compose(self) -> ComposeResult:
        if self.detachable:
            text = (f"The rollout is {self.state}. Quit how?\n\n"
                    "Abort rolls it back. Leave it running closes this screen; the rollout "
                    "goes on in its controller.")
        else:
            text = (f"The rollout is {self.state} and runs inside this program: quitting "
                    "aborts it and rolls it back.")
        with Vertical(id="quit-box", classes="dialog"):
            yield Static(text, id="quit-text")
            with Horizontal(classes="buttons"):
                yield Button("Abort (roll back) (a)", variant="error", id="abort")
                if self.detachable:
                    yield Button("Leave it running (d)", variant="success", id="detach")
                yield Button("Cancel (c)", variant="primary", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#quit-box").border_title = "Quit"
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_choose(event.button.id if event.button.id not in ("cancel", None) else "")

    def action_choose(self, choice: str) -> None:
        if choice == "detach" and not self.detachable:
            return
        self.dismiss(choice or None)
