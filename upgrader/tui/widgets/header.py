"""The header: fleet, strategy, releases, the state word and the rollout's clock."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..messages import STATE_STYLES
from ..view import RolloutView, fmt_duration


class RolloutHeader(Static):
    DEFAULT_CSS = """
    RolloutHeader {
        height: 2;
        padding: 0 1;
        background: $panel;
    }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._shown: tuple[object, ...] = ()
        #: the state word on screen now
        self.state_shown = ""

    def show(self, view: RolloutView) -> None:
        state = view.state
        elapsed = fmt_duration(int(view.elapsed()))
        if view.is_finished:
            times = f"took {fmt_duration(view.elapsed())}"
        elif state == "ROLLING BACK":
            estimate = (view.rollback or {}).get("estimated_s", view.rollback_estimated_s)
            times = f"elapsed {elapsed} · roll-back expected {fmt_duration(estimate)}"
        elif state == "PENDING":
            times = f"estimated {fmt_duration(view.estimated_s)}"
        else:
            remaining = view.remaining()
            times = (f"elapsed {elapsed} · remaining "
                     f"~{fmt_duration(None if remaining is None else int(remaining))}"
                     f" of ~{fmt_duration(view.estimated_s)}")
        key = (view.fleet, view.strategy, view.current, view.target, view.rollout, state,
               view.reason, view.is_paused, times)
        if key == self._shown:
            return
        self._shown = key
        self.state_shown = state
        top = Text()
        top.append("upgrader ", style="bold")
        top.append(f"{view.fleet or '?'}", style="bold cyan")
        top.append(f" · {view.strategy or '?'} · ")
        top.append(view.current or "?", style="bold")
        top.append(" -> ")
        top.append(view.target or "?", style="bold green")
        second = Text()
        second.append(f" {state} ", style=STATE_STYLES.get(state, "bold") + " reverse")
        if view.reason:
            second.append(f" ({view.reason})")
        grid = Table.grid(expand=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        grid.add_row(top, Text(times, style="bold"))
        grid.add_row(second, Text(f"rollout {view.rollout}" if view.rollout else "",
                                  style="dim"))
        self.update(grid, layout=False)     # always two lines
