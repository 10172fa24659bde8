"""Traffic split and error rate of the new release against the old one, over time: one
sparkline per series, the two releases of a figure drawn on the same scale."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.widgets import Static

from ..messages import describe_traffic
from ..view import RolloutView, fmt_ms, fmt_percent

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[float | None], width: int, top: float) -> str:
    """The last ``width`` values as bars scaled to ``top`` (a gap for a missing value)."""
    values = list(values)[-width:] if width > 0 else []
    out = []
    for value in values:
        if value is None:
            out.append(" ")
        elif top <= 0 or value <= 0:
            out.append(BARS[0])
        else:
            out.append(BARS[min(len(BARS) - 1, int(value / top * len(BARS)))])
    return "".join(out).rjust(width)


class TrafficChart(Static):
    DEFAULT_CSS = """
    TrafficChart {
        height: auto;
        /* a row never wraps: drawn for one width and shown at a narrower one (the side
           column's scrollbar came, the terminal shrank) until redrawn, it is cut, not doubled */
        text-wrap: nowrap;
        text-overflow: clip;
    }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._shown: tuple[object, ...] = ()
        self._lines = -1
        self._width = -1
        self._view: RolloutView | None = None

    def on_resize(self) -> None:
        # drawn for the width it had when the last figures came; a resized terminal, or the
        # side column's scrollbar coming or going, changes it: redraw for the new width, or
        # the rows wrap and the chart grows to twice its height
        if self._view is not None:
            self.show(self._view)

    def show(self, view: RolloutView) -> None:
        self._view = view
        width = self.content_region.width or 50
        points = view.points
        last = points[-1].ts if points else None
        split = describe_traffic(view.traffic)
        limits = tuple((view.verdicts.get(m) or {}).get("threshold")
                       for m in ("error_rate", "p95_latency"))
        key = (len(points), last, width, split, view.target, view.current, limits)
        if key == self._shown:
            return
        self._shown = key
        chart = self._render_chart(view, width, split)
        lines = chart.plain.count("\n")
        # a new height needs a new layout: more lines, or a new width (the last drawing may
        # have wrapped at a width the side column lost to its scrollbar since)
        self.update(chart, layout=(lines, width) != (self._lines, self._width))
        self._lines, self._width = lines, width

    def _render_chart(self, view: RolloutView, width: int, split: str) -> Text:
        new, old = view.target or "new", view.current or "old"
        label_w = min(20, max(len(new), len(old)) + 6)
        value_w = 8
        chart_w = max(8, width - label_w - value_w - 2)
        points = list(view.points)
        text = Text()
        if not points:
            text.append("no traffic figures yet\n", style="dim")
        else:
            errors = [v for p in points for v in (p.error_new, p.error_old) if v is not None]
            latencies = [v for p in points for v in (p.p95_new, p.p95_old) if v is not None]
            # errors against the analysis limit (a healthy release stays low on the chart);
            # latency with headroom, so that a steady p95 is not a wall of full bars
            error_limit = (view.verdicts.get("error_rate") or {}).get("threshold") or 1.0
            latency_limit = (view.verdicts.get("p95_latency") or {}).get("threshold") or 0.0
            top_error = max(max(errors, default=0.0), float(error_limit))
            top_latency = max(1.25 * max(latencies, default=0.0), float(latency_limit))
            rows = [
                (f"share {new}", [p.share_new for p in points], 100.0, "cyan",
                 fmt_percent(points[-1].share_new)),
                (f"5xx {new}", [p.error_new for p in points], top_error, "red",
                 fmt_percent(points[-1].error_new, 2)),
                (f"5xx {old}", [p.error_old for p in points], top_error, "green",
                 fmt_percent(points[-1].error_old, 2)),
                (f"p95 {new}", [p.p95_new for p in points], top_latency, "magenta",
                 fmt_ms(points[-1].p95_new)),
                (f"p95 {old}", [p.p95_old for p in points], top_latency, "blue",
                 fmt_ms(points[-1].p95_old)),
            ]
            for label, values, top, style, value in rows:
                text.append(f"{label[:label_w]:<{label_w}} ", style="bold")
                text.append(sparkline(values, chart_w, top), style=style)
                text.append(f" {value:>{value_w}}\n")
        text.append(split or "traffic: every in-service host serves everyone",
                    style="cyan" if split else "dim")
        return text
