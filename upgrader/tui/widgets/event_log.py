"""The event log panel: notable events, newest at the bottom."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.widgets import RichLog


class EventLog(RichLog):
    DEFAULT_CSS = """
    EventLog {
        height: 9;
    }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(max_lines=1000, wrap=True, markup=False, highlight=False,
                         **kwargs)  # type: ignore[arg-type]

    def add_lines(self, lines: Iterable[Text]) -> None:
        for line in lines:
            self.write(line)
