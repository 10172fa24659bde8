"""One key convention for every dialog (issue 16): each choice is a button labelled with its key
letter in brackets and that letter chooses it; Enter chooses the default (the button focused
when the dialog opens, the safe one); Escape cancels. The test walks every modal screen of
``upgrader.tui.screens``: a new dialog without a case here fails."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from textual.app import App
from textual.screen import ModalScreen
from textual.widgets import Button

from upgrader.tui import screens
from upgrader.tui.screens.dialog import ChoiceDialog, choice_key

#: dialog class -> (a factory, what a cancel returns)
CASES: dict[str, tuple[Any, Any]] = {
    "RollbackDialog": (lambda: screens.RollbackDialog(lambda: "Roll back?"), False),
    "QuitDialog": (lambda: screens.QuitDialog(state="PAUSED", detachable=True, paused=True),
                   None),
    "FlagChangeDialog": (lambda: screens.FlagChangeDialog("Change", "Turn it on?"), False),
    "PercentDialog": (lambda: screens.PercentDialog("k", "prod", 5.0), None),
    "HelpScreen": (lambda: screens.HelpScreen(), None),
}
CASES["WindowOverrideDialog"] = (lambda: screens.WindowOverrideDialog("outside the window"),
                                 None)
#: dialogs that ask for text: letters type, Enter submits, Escape cancels
TEXT_DIALOGS = {"PercentDialog", "WindowOverrideDialog"}


def dialog_classes() -> list[type]:
    found = {cls for name in dir(screens) if inspect.isclass(cls := getattr(screens, name))
             and issubclass(cls, ModalScreen)}
    return sorted(found, key=lambda c: c.__name__)


def test_every_dialog_has_a_case():
    assert {c.__name__ for c in dialog_classes()} <= set(CASES), "add the new dialog to CASES"


async def _open(factory):
    results: list[Any] = []

    class Host(App[None]):
        def on_mount(self) -> None:
            self.push_screen(factory(), results.append)

    app = Host()
    return app, results


def _run(factory, keys: list[str]) -> tuple[list[Any], dict[str, Any]]:
    seen: dict[str, Any] = {}

    async def main() -> list[Any]:
        app, results = await _open(factory)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            dialog = app.screen
            buttons = list(dialog.query(Button))
            seen["labels"] = [str(b.label) for b in buttons]
            seen["focused"] = app.focused.id if app.focused is not None else None
            seen["ids"] = [b.id for b in buttons]
            for key in keys:
                await pilot.press(key)
            await pilot.pause()
        return results

    return asyncio.run(main()), seen


def test_every_choice_is_labelled_with_its_key_and_that_key_chooses_it():
    for cls in dialog_classes():
        factory, _cancel = CASES[cls.__name__]
        _, seen = _run(factory, [])
        if not issubclass(cls, ChoiceDialog):
            assert not seen["labels"], f"{cls.__name__} has buttons: make it a ChoiceDialog"
            continue
        keys = [choice_key(label) for label in seen["labels"]]
        assert all(keys), (cls.__name__, seen["labels"])
        assert len(set(keys)) == len(keys), (cls.__name__, seen["labels"])
        for key, button_id in zip(keys, seen["ids"], strict=True):
            by_key, _ = _run(factory, [key])
            assert len(by_key) == 1, (cls.__name__, key)
            # the key does what pressing that button does
            pressed = _press_button(factory, button_id)
            assert by_key == pressed, (cls.__name__, key, by_key, pressed)


def _press_button(factory, button_id: str) -> list[Any]:
    async def main() -> list[Any]:
        app, results = await _open(factory)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            app.screen.query_one(f"#{button_id}", Button).press()
            await pilot.pause()
        return results

    return asyncio.run(main())


def test_escape_cancels_every_dialog():
    for cls in dialog_classes():
        factory, cancel = CASES[cls.__name__]
        results, _ = _run(factory, ["escape"])
        assert results == [cancel], (cls.__name__, results)


def test_enter_chooses_the_focused_default_and_it_is_the_safe_one():
    for cls in dialog_classes():
        if not issubclass(cls, ChoiceDialog) or cls.__name__ in TEXT_DIALOGS:
            continue
        factory, cancel = CASES[cls.__name__]
        results, seen = _run(factory, ["enter"])
        assert seen["focused"] == "cancel", (cls.__name__, seen["focused"])
        assert results == [cancel], (cls.__name__, results)
