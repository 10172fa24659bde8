"""The rollout steps (the current one marked, done ones ticked, a countdown for a timed wait)
and two progress bars: hosts on the new release, and traffic on it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, ProgressBar, Static

from ..view import FINAL_STATES, RolloutView, fmt_duration

#: steps shown around the current one; the rest are summarised
WINDOW = 9


class StepsPanel(Vertical):
    DEFAULT_CSS = """
    StepsPanel {
        height: auto;
    }
    StepsPanel > #steps-list {
        height: auto;
    }
    StepsPanel > Label {
        width: 100%;
        margin-top: 1;
    }
    StepsPanel > ProgressBar {
        height: 1;
    }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._shown: tuple[object, ...] = ()
        self._lines = -1

    def compose(self) -> ComposeResult:
        yield Static(id="steps-list")
        yield Label(id="hosts-label")
        yield ProgressBar(id="hosts-bar", total=1, show_eta=False)
        yield Label(id="traffic-label")
        yield ProgressBar(id="traffic-bar", total=100, show_eta=False)

    def show(self, view: RolloutView) -> None:
        remaining = view.wait_remaining()
        share, source = view.traffic_share()
        key = (len(view.plan), view.step, len(view.done), view.state,
               None if remaining is None else int(remaining + 0.999), view.on_target,
               view.hosts_total, None if share is None else round(share, 1), source,
               view.target)
        if key == self._shown:
            return
        self._shown = key
        steps = self._steps(view, remaining)
        lines = steps.plain.count("\n")
        # only a change of height needs a layout; a repaint is far cheaper
        self.query_one("#steps-list", Static).update(steps, layout=lines != self._lines)
        self._lines = lines
        total = max(1, view.hosts_total)
        self.query_one("#hosts-label", Label).update(
            f"hosts on {view.target or 'new release'}: {min(view.on_target, total):,}"
            f" / {view.hosts_total:,}", layout=False)
        self.query_one("#hosts-bar", ProgressBar).update(total=total,
                                                         progress=min(view.on_target, total))
        shown = "-" if share is None else f"{share:.1f}%"
        self.query_one("#traffic-label", Label).update(
            f"traffic on {view.target or 'new release'}: {shown}"
            + (f" ({source})" if source else ""), layout=False)
        self.query_one("#traffic-bar", ProgressBar).update(total=100, progress=share or 0.0)

    def _steps(self, view: RolloutView, remaining: float | None) -> Text:
        plan = view.plan
        text = Text()
        if not plan:
            return Text("no plan yet", style="dim")
        done = view.done
        finished = view.state in FINAL_STATES
        current = view.step
        if current is None:
            current = next((i for i in range(len(plan)) if i not in done), len(plan) - 1)
        start = max(0, min(current - 2, len(plan) - WINDOW))
        end = min(len(plan), start + WINDOW)
        if start:
            earlier = sum(1 for i in range(start) if i in done)
            text.append(f"  ✓ steps 1-{start}: {earlier} done\n", style="dim green")
        for index in range(start, end):
            step = plan[index]
            description = str(step.get("description", step.get("step", "?")))
            if index in done:
                text.append(" ✓ ", style="green")
                text.append(f"{index + 1:>2} {description}", style="dim")
            elif index == view.step and not finished:
                text.append(" ▶ ", style="bold yellow")
                text.append(f"{index + 1:>2} {description}", style="bold")
                text.append(self._countdown(view, step, remaining))
            elif index == view.step and view.state != "COMPLETED":
                text.append(" ✗ ", style="bold red")
                text.append(f"{index + 1:>2} {description}", style="red")
            else:
                text.append("   ", style="dim")
                text.append(f"{index + 1:>2} {description}", style="dim")
            text.append("\n")
        if end < len(plan):
            text.append(f"    ... {len(plan) - end} more step(s)\n", style="dim")
        text.rstrip()
        return text

    @staticmethod
    def _countdown(view: RolloutView, step: Mapping[str, Any], remaining: float | None) -> Text:
        if remaining is not None:
            return Text(f"  {fmt_duration(int(remaining + 0.999))} left", style="bold cyan")
        if step.get("step") == "pause" and view.state == "WAITING":
            return Text("  p promotes", style="bold cyan")
        return Text("")
