"""One key convention for every dialog of the TUI.

Each choice is a button whose label starts with its key in brackets (``[R]oll back``,
``[C]ancel``): that letter chooses it. Enter chooses the default, the button that has the
focus when the dialog opens (always the safe one). Escape cancels. docs/TUI.md "Dialogs" says
the same; tests/tui/test_dialog_keys.py walks every dialog and checks it.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Button, Input

ResultType = TypeVar("ResultType")

#: a choice's label: its key letter in brackets, first
CHOICE_LABEL = re.compile(r"^\[([A-Z])\]")


def choice(label: str, *, id: str, variant: Any = "default") -> Button:
    """A choice's button: ``label`` starts with its key in brackets (shown as written, not
    read as markup)."""
    if choice_key(label) is None:
        raise ValueError(f"a dialog choice is labelled '[X]...': {label!r}")
    return Button(Text(label), variant=variant, id=id)


def choice_key(label: str) -> str | None:
    """``"[R]oll back"`` -> ``"r"`` (None: not a choice label)."""
    found = CHOICE_LABEL.match(label)
    return found.group(1).lower() if found else None


class ChoiceDialog(ModalScreen[ResultType]):
    """A dialog of choices (buttons labelled ``[X]...``). Subclasses handle
    ``Button.Pressed`` and implement :meth:`action_cancel`; the letters, Enter and Escape come
    from here."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def action_cancel(self) -> None:   # pragma: no cover - every dialog overrides it
        self.dismiss(None)

    def on_key(self, event: events.Key) -> None:
        if isinstance(self.focused, Input) or not event.character:
            return
        for button in self.query(Button):
            if choice_key(str(button.label)) == event.character.lower() and not button.disabled:
                event.stop()
                button.press()
                return

    def choices(self) -> dict[str | None, str | None]:
        """Key letter -> button id, for the convention's test and docs."""
        return {choice_key(str(b.label)): b.id for b in self.query(Button)}
