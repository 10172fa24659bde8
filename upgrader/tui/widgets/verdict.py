"""The analysis panel: the last verdict of each metric, explained (value, threshold, sample
count, the old release's value); a failing one turns the panel red. A verdict of the
statistical judge (``judge = "statistical"``) shows its result (pass, fail, inconclusive, no
data), the p-value of its tests and its effect, the samples it had against those it needs,
and the round's score (0-100) and band above the metrics."""

from __future__ import annotations

import re

from rich.text import Text
from textual.widgets import Static

from ..view import RolloutView, fmt_metric

ORDER = ("error_rate", "p95_latency", "health", "system_test")
RESULT_STYLES = {"pass": "bold green", "fail": "bold white on red", "no_data": "bold yellow",
                 "inconclusive": "bold yellow"}
#: the counts the judge appends to its reason (the line above says them)
COUNTED = re.compile(r" \((\d+ events in \d+; baseline \d+ in \d+"
                     r"|\d+ samples; baseline \d+)\)$")
BAND_STYLES = {"pass": "bold green", "marginal": "bold yellow", "fail": "bold red",
               "inconclusive": "bold yellow"}


class VerdictPanel(Static):
    DEFAULT_CSS = """
    VerdictPanel {
        height: auto;
    }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._shown: object = None
        self._lines = -1
        self._judged: Text | None = None

    def show(self, view: RolloutView) -> None:
        key = (tuple((m, tuple(sorted((k, str(v)) for k, v in d.items())))
                     for m, d in view.verdicts.items()), view.analysis_failure)
        if key == self._shown:
            return
        self._shown = key
        failing = view.failing()
        self.set_class(failing, "-failing")
        self.border_title = "Analysis: FAILING" if failing else "Analysis"
        text = self._render_verdicts(view)
        lines = text.plain.count("\n")
        judged = any(v.get("judge") == "statistical" for v in view.verdicts.values())
        if not judged and self._judged:
            self.styles.min_height = None
        self._judged = text if judged else None
        self.update(text, layout=lines != self._lines)
        self._lines = lines
        self._fit()

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        """The statistical judge's lines whole (the side column scrolls when they do not
        fit), not the few rows left under the traffic chart on a 40-line terminal: the
        panel is at least as tall as its text wrapped at its width."""
        width = self.content_region.width
        if self._judged is None or width <= 0:
            return
        rows = len(self._judged.wrap(self.app.console, width)) + 2
        if self.styles.min_height is None or self.styles.min_height.value != rows:
            self.styles.min_height = rows

    @staticmethod
    def _render_verdicts(view: RolloutView) -> Text:
        text = Text()
        if not view.verdicts and not view.analysis_failure:
            return Text("no verdict yet: analysis starts once hosts run the new release",
                        style="dim")
        metrics = sorted(view.verdicts, key=lambda m: (ORDER.index(m) if m in ORDER else 99, m))
        judged = [view.verdicts[m] for m in metrics
                  if view.verdicts[m].get("judge") == "statistical"]
        if judged:
            _score_line(text, judged)
        for metric in metrics:
            data = view.verdicts[metric]
            if data.get("judge") == "statistical" and isinstance(data.get("stats"), dict):
                _statistical(text, metric, data)
                continue
            result = str(data.get("result", "?"))
            text.append(f"{metric:<12}", style="bold")
            text.append(f" {result.upper()} ", style=RESULT_STYLES.get(result, "bold"))
            kind = data.get("metric_kind")
            text.append(f" {fmt_metric(metric, data.get('value'), kind)}",
                        style="bold red" if result == "fail" else "bold")
            text.append(f" (limit {fmt_metric(metric, data.get('threshold'), kind)})\n")
            facts = []
            if data.get("baseline") is not None or metric in ("error_rate", "p95_latency"):
                facts.append(f"old release {fmt_metric(metric, data.get('baseline'), kind)}")
            facts.append(f"{data.get('samples', 0)} samples")
            text.append("  " + " · ".join(facts), style="dim" if result == "pass" else "")
            if data.get("limit"):
                text.append(f" · {data.get('consecutive', 0)}/{data['limit']} in a row",
                            style="bold red" if data.get("consecutive") else "dim")
            text.append("\n")
            if data.get("detail") and result != "pass":
                text.append(f"  {data['detail']}\n", style="yellow")
        if view.analysis_failure:
            failed_metric = view.analysis_failure_metric
            if failed_metric in view.verdicts:
                # the verdict above says it all; only name the consequence
                text.append(f"analysis failed on {failed_metric}: the rollout stops",
                            style="bold red")
            else:
                text.append(view.analysis_failure, style="bold red")
        text.rstrip()
        return text


def _score_line(text: Text, judged: list[dict[str, object]]) -> None:
    """The round's score and band (the latest round of the statistical judge)."""
    latest = max(judged, key=lambda d: str(d.get("score")) if d.get("band") else "")
    band = str(latest.get("band") or "inconclusive")
    score = latest.get("score")
    text.append("round score ", style="bold")
    shown = f"{score:g}" if isinstance(score, (int, float)) else "n/a"
    text.append(f" {shown} {band.upper()} ", style=BAND_STYLES.get(band, "bold"))
    text.append("  statistical judge\n", style="dim")


def _pct(value: object) -> str:
    return f"{value:.3g}%" if isinstance(value, (int, float)) else "n/a"


def _statistical(text: Text, metric: str, data: dict[str, object]) -> None:
    """One metric judged by the statistical judge: result, value against its limits, then
    the p-value, the effect, samples had/needed and the failing count; the reason unless it
    passed."""
    stats = data["stats"]
    assert isinstance(stats, dict)
    result = str(data.get("result", "?"))
    effect = stats.get("effect") if isinstance(stats.get("effect"), dict) else {}
    assert isinstance(effect, dict)
    proportion = "difference_pct" in effect

    def fmt(value: object) -> str:
        if proportion:
            return _pct(value)
        return fmt_metric(metric, value if isinstance(value, (int, float)) else None)

    text.append(f"{metric:<12}", style="bold")
    label = "NO DATA" if result == "no_data" else result.upper()
    text.append(f" {label} ", style=RESULT_STYLES.get(result, "bold"))
    if data.get("value") is not None:
        text.append(f" {fmt(data.get('value'))}", style="bold red" if result == "fail"
                    else "bold")
    thresholds = stats.get("thresholds") if isinstance(stats.get("thresholds"), dict) else {}
    assert isinstance(thresholds, dict)
    limits = []
    if thresholds.get("max") is not None:
        limits.append(f"max {fmt(thresholds['max'])}")
    if isinstance(thresholds.get("max_increase"), (int, float)):
        limits.append(f"old+{thresholds['max_increase']:g}%")
    if limits:
        text.append(f" ({', '.join(limits)})")
    if stats.get("dry_run"):
        text.append(" dry run", style="dim italic")
    text.append("\n")
    facts = []
    if data.get("baseline") is not None:
        facts.append(f"old {fmt(data.get('baseline'))}")
    tests = [t for t in stats.get("tests") or () if isinstance(t, dict)
             and isinstance(t.get("p_value"), (int, float))]
    if tests:
        facts.append(f"p {min(t['p_value'] for t in tests):.2g}")
    change = effect.get("relative_pct")
    if isinstance(change, (int, float)):
        facts.append(f"effect {change:+.2g}%")
    elif isinstance(effect.get("difference_pct"), (int, float)):
        facts.append(f"effect {effect['difference_pct']:+.2g} pts")
    elif isinstance(effect.get("cliffs_delta"), (int, float)):
        facts.append(f"delta {effect['cliffs_delta']:+.2f}")
    needed = stats.get("needed")
    had = stats.get("samples", data.get("samples", 0))
    facts.append(f"{had}/{needed} samples" if needed is not None else f"{had} samples")
    text.append("  " + " · ".join(facts), style="dim" if result == "pass" else "")
    if data.get("limit") and data.get("consecutive") and not stats.get("dry_run"):
        text.append(f" · {data['consecutive']}/{data['limit']} failing", style="bold red")
    text.append("\n")
    reason = str(stats.get("reason") or data.get("detail") or "")
    if reason and result != "pass":
        text.append(f"  {COUNTED.sub('', reason)}\n", style="yellow")
