"""The compact summary for a narrow terminal (where the Steps, Traffic and Analysis panels do
not fit): traffic on the new release against the old one, and the verdict line, one line each.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..view import RolloutView, fmt_metric, fmt_ms, fmt_percent
from .verdict import ORDER, RESULT_STYLES


def traffic_line(view: RolloutView) -> Text:
    new, old = view.target or "new", view.current or "old"
    text = Text()
    text.append("traffic ", style="bold")
    share, source = view.traffic_share()
    text.append(f"{fmt_percent(share)} on {new}", style="cyan")
    if source and source != "measured":
        text.append(f" ({source})", style="dim")
    point = view.points[-1] if view.points else None
    if point is not None:
        text.append(f" · 5xx {fmt_percent(point.error_new, 2)} vs "
                    f"{fmt_percent(point.error_old, 2)} on {old}")
        text.append(f" · p95 {fmt_ms(point.p95_new)} vs {fmt_ms(point.p95_old)}")
    return text


def verdict_line(view: RolloutView) -> Text:
    text = Text()
    text.append("analysis ", style="bold")
    if not view.verdicts and not view.analysis_failure:
        text.append("no verdict yet", style="dim")
        return text
    metrics = sorted(view.verdicts, key=lambda m: (ORDER.index(m) if m in ORDER else 99, m))
    for n, metric in enumerate(metrics):
        data = view.verdicts[metric]
        result = str(data.get("result", "?"))
        if n:
            text.append(" · ")
        text.append(f"{metric} ")
        text.append(f" {result.upper()} ", style=RESULT_STYLES.get(result, "bold"))
        if metric in ("error_rate", "p95_latency") or result != "pass":
            kind = data.get("metric_kind")
            text.append(f" {fmt_metric(metric, data.get('value'), kind)}"
                        f" (limit {fmt_metric(metric, data.get('threshold'), kind)})",
                        style="bold red" if result == "fail" else "")
        if data.get("limit") and data.get("consecutive"):
            text.append(f" {data['consecutive']}/{data['limit']} in a row", style="bold red")
    if view.analysis_failure and view.analysis_failure_metric not in view.verdicts:
        text.append(f" · {view.analysis_failure}", style="bold red")
    return text


class SummaryPanel(Static):
    """Two lines: traffic, then the verdicts (red when analysis is failing)."""

    DEFAULT_CSS = """
    SummaryPanel {
        height: 2;
        padding: 0 1;
    }
    SummaryPanel.-failing {
        background: $error 20%;
    }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._shown = ""

    def show(self, view: RolloutView) -> None:
        text = Text("\n").join([traffic_line(view), verdict_line(view)])
        text.no_wrap = True
        text.overflow = "ellipsis"
        if text.plain == self._shown:
            return
        self._shown = text.plain
        self.set_class(view.failing(), "-failing")
        self.update(text, layout=False)
