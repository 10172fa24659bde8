"""The deploy-window line under the header: the current window, the next opening, and while
the rollout waits for one a countdown and the override key. Hidden for a fleet without
windows. Under it, once a rollout completes with a roll-back window, the roll-back window
line: the release ``upgrader rollback`` goes straight back to, until when, and how long."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widgets import Static

from ...units import plural
from ..view import RolloutView, fmt_duration


def fmt_when(iso: str | None) -> str:
    """``2026-01-12T08:00:00+00:00`` -> ``Mon 01-12 08:00 UTC``."""
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).strftime("%a %m-%d %H:%M UTC")
    except ValueError:
        return iso


class _OptionalLine(Static):
    """A line shown only while ``describe`` has something to say, redrawn only when its
    text changes."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._shown: str | None = None

    def show(self, view: RolloutView) -> None:
        text = self.describe(view)
        self.display = text is not None
        plain = text.plain if text is not None else ""
        if plain != self._shown:
            self._shown = plain
            self.update(text or "")

    @staticmethod
    def describe(view: RolloutView) -> Text | None:
        raise NotImplementedError


class WindowLine(_OptionalLine):
    DEFAULT_CSS = """
    WindowLine {
        height: auto;
        padding: 0 1;
    }
    """

    @staticmethod
    def describe(view: RolloutView) -> Text | None:
        window = view.window
        if window is None:
            return None
        line = Text("window: ", style="bold")
        teams = ", ".join(window.get("teams") or ()) or "no team"
        if window.get("overridden"):
            line.append("OVERRIDDEN", style="bold magenta")
            line.append(f" ({window['overridden']}): the rollout goes on outside it")
        elif window.get("held"):
            left = view.window_countdown("resumes_in_s")
            line.append("WAITING for the window", style="bold cyan")
            if left is None:
                line.append(": no opening within the calendar's horizon")
            else:
                line.append(f": resumes in {fmt_duration(int(left))} "
                            f"({fmt_when(window.get('resumes'))})")
            if window.get("why"):
                line.append(f"  ·  {str(window['why']).split(';')[0]}", style="dim")
            line.append("  ·  w override", style="bold")
        elif window.get("open"):
            left = view.window_countdown("closes_in_s")
            line.append("open", style="bold green")
            line.append(f" until {fmt_when(window.get('closes'))}"
                        + (f" (in {fmt_duration(int(left))})" if left is not None else "")
                        + f"  ·  on duty: {teams}")
        else:
            left = view.window_countdown("opens_in_s")
            line.append("closed", style="bold yellow")
            line.append(f", opens {fmt_when(window.get('opens'))}"
                        + (f" (in {fmt_duration(int(left))})" if left is not None else ""))
        return line


def fmt_wall(ts: float) -> str:
    """Wall-clock seconds -> ``Mon 01-12 08:00 UTC``."""
    from datetime import UTC

    return datetime.fromtimestamp(ts, UTC).strftime("%a %m-%d %H:%M UTC")


class RollbackWindowLine(_OptionalLine):
    """The roll-back window a completed rollout opened (the same figures as ``status``:
    the release to go back to, until when or for how many releases, the estimate)."""

    DEFAULT_CSS = """
    RollbackWindowLine {
        height: auto;
        padding: 0 1;
        display: none;
    }
    """

    @staticmethod
    def describe(view: RolloutView) -> Text | None:
        window = view.rollback_window
        if window is None:
            return None
        line = Text("roll-back window: ", style="bold")
        line.append("open", style="bold green")
        if window.get("closes_at") is not None:
            line.append(f" until {fmt_wall(float(window['closes_at']))}")
        elif window.get("releases") is not None:
            line.append(f" for {plural(int(window['releases']), 'release')}")
        line.append(f"  ·  `upgrader rollback` goes straight back to {window.get('previous')}")
        if window.get("rollback_s") is not None:
            line.append(f", about {fmt_duration(float(window['rollback_s']))}")
        return line
