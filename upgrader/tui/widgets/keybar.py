"""The key bar: the screen's keys and what they do, wrapped or abbreviated to fit, never cut.

Textual's ``Footer`` scrolls sideways when the keys do not fit, so at 80 columns the last keys
(``q Quit``) fall off the screen. This bar tries the full words, then the short ones
(``SHORT``), then wraps onto as many lines as it needs.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.events import Resize
from textual.widgets import Static

#: shorter words for a narrow terminal
SHORT = {"Pause/Resume": "Pause", "Promote all": "All", "Roll back": "Back"}


def key_labels(bindings: Sequence[BindingType]) -> list[tuple[str, str]]:
    """(key shown, description) of the bindings that show."""
    out = []
    for binding in bindings:
        if not isinstance(binding, Binding) or not binding.show:
            continue
        key = binding.key_display or binding.key.split(",")[0]
        out.append((key, binding.description))
    return out


def lay_out(keys: Sequence[tuple[str, str]], width: int) -> Text:
    """The keys in ``width`` columns: full words on one line if they fit, else short words on
    one line, else short words wrapped between keys (a key and its word stay together)."""
    def item(key: str, word: str) -> Text:
        text = Text()
        text.append(f" {key} ", style="bold reverse")
        text.append(f" {word}")
        return text

    for words in ([w for _, w in keys], [SHORT.get(w, w) for _, w in keys]):
        items = [item(k, w) for (k, _), w in zip(keys, words)]
        if sum(len(i) for i in items) + 1 * (len(items) - 1) <= width:
            return Text(" ").join(items)
    lines: list[Text] = []
    line = Text()
    for k, w in keys:
        piece = item(k, SHORT.get(w, w))
        if line and len(line) + 1 + len(piece) > width:
            lines.append(line)
            line = Text()
        if line:
            line.append(" ")
        line.append_text(piece)
    lines.append(line)
    return Text("\n").join(lines)


class KeyBar(Static):
    DEFAULT_CSS = """
    KeyBar {
        height: auto;
        background: $panel;
        color: $text;
    }
    """

    def __init__(self, bindings: Sequence[BindingType], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.keys = key_labels(bindings)
        self._width = -1

    def on_mount(self) -> None:
        self._draw(self.app.size.width)

    def on_resize(self, event: Resize) -> None:
        self._draw(event.size.width)

    def _draw(self, width: int) -> None:
        if width != self._width and width > 0:
            self._width = width
            self.update(lay_out(self.keys, width))
