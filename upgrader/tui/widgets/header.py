"""The header: fleet, strategy, both releases, the state word, progress, the next step and the
rollout's clock, in two lines at any width.

The header is a row of small fields (one method each: ``title``, ``releases``, ``state``,
``progress``, ``step``, ``times``, ``rollout``); ``compose_lines`` lays them out for the width
at hand. Narrow (under ``WIDE`` columns) it drops the words around the figures first, never a
release or the state: the fields that matter most come first on each line.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..messages import STATE_STYLES
from ..view import RolloutView, fmt_duration

#: columns from which the header spells everything out
WIDE = 100


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
        #: the two lines on screen now, as plain text (tests read them)
        self.text_shown = ""

    # ------------------------------------------------------------------ fields

    @staticmethod
    def title(view: RolloutView, wide: bool) -> Text:
        text = Text()
        if wide:
            text.append("upgrader ", style="bold")
        text.append(view.fleet or "?", style="bold cyan")
        text.append(f" · {view.strategy or '?'}")
        return text

    @staticmethod
    def releases(view: RolloutView) -> Text:
        text = Text()
        text.append(view.current or "?", style="bold")
        text.append(" -> ")
        text.append(view.target or "?", style="bold green")
        return text

    @staticmethod
    def state(view: RolloutView, wide: bool) -> Text:
        state = view.state
        text = Text()
        text.append(f" {state} ", style=STATE_STYLES.get(state, "bold") + " reverse")
        if view.pause_requested and state != "PAUSED":
            text.append(" pause requested: holds at the next step boundary" if wide
                        else " pause requested", style="yellow")
        return text

    @staticmethod
    def progress(view: RolloutView) -> Text:
        total = view.hosts_total or len(view.order)
        return Text(f"{min(view.on_target, total):,}/{total:,} on {view.target or '?'}",
                    style="bold")

    @staticmethod
    def step(view: RolloutView) -> Text:
        """The step under way (or next), with its countdown: ``step 4/8 upgrade 3 host(s)``."""
        plan = view.plan
        if not plan or view.is_finished:
            return Text("")
        index = view.step
        if index is None:
            index = next((i for i in range(len(plan)) if i not in view.done), None)
        if index is None or not 0 <= index < len(plan):
            return Text("")
        entry = plan[index]
        text = Text()
        text.append(f"step {index + 1}/{len(plan)} ", style="bold")
        text.append(str(entry.get("description", entry.get("step", "?"))))
        remaining = view.wait_remaining()
        if remaining is not None:
            text.append(f" ({fmt_duration(int(remaining + 0.999))} left)", style="bold cyan")
        return text

    @staticmethod
    def times(view: RolloutView, wide: bool) -> Text:
        state = view.state
        elapsed = fmt_duration(int(view.elapsed()))
        if view.is_finished:
            return Text(f"took {fmt_duration(view.elapsed())}", style="bold")
        if state == "ROLLING BACK":
            estimate = (view.rollback or {}).get("estimated_s", view.rollback_estimated_s)
            return Text(f"elapsed {elapsed} · roll-back ~{fmt_duration(estimate)}"
                        if wide else f"{elapsed} · back ~{fmt_duration(estimate)}",
                        style="bold")
        if state == "PENDING":
            return Text(f"estimated {fmt_duration(view.estimated_s)}", style="bold")
        remaining = view.remaining()
        left = fmt_duration(None if remaining is None else int(remaining))
        if wide:
            return Text(f"elapsed {elapsed} · remaining ~{left} of "
                        f"~{fmt_duration(view.estimated_s)}", style="bold")
        return Text(f"{elapsed} · ~{left} left", style="bold")

    @staticmethod
    def rollout(view: RolloutView) -> Text:
        return Text(f"rollout {view.rollout}" if view.rollout else "", style="dim")

    # ------------------------------------------------------------------ layout

    def compose_lines(self, view: RolloutView, width: int) -> list[tuple[Text, Text]]:
        """Two (left, right) lines for ``width`` columns."""
        wide = width >= WIDE
        sep = Text(" · ")
        top = Text.assemble(self.title(view, wide), sep, self.releases(view), " ",
                            self.state(view, wide))
        second = Text.assemble(self.progress(view))
        step = self.step(view)
        if step:
            second.append_text(sep)
            second.append_text(step)
        if view.reason and view.state not in ("WAITING", "VERIFYING"):
            second.append(f" ({view.reason})")
        return [(top, self.times(view, wide)),
                (second, self.rollout(view) if wide else Text(""))]

    def show(self, view: RolloutView) -> None:
        width = self.content_region.width or self.app.size.width
        lines = self.compose_lines(view, width)
        key = tuple(line.plain for pair in lines for line in pair) + (width,)
        self.state_shown = view.state
        if key == self._shown:
            return
        self._shown = key
        grid = Table.grid(expand=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        for left, right in lines:
            grid.add_row(left, right)
        self.text_shown = "\n".join(f"{left.plain} {right.plain}" for left, right in lines)
        self.update(grid, layout=False)     # always two lines

    def on_resize(self) -> None:
        self._shown = ()
        app = self.app
        view = getattr(app, "view", None)
        if view is not None:
            self.show(view)
