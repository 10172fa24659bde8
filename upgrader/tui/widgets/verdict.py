"""The analysis panel: the last verdict of each metric, explained (value, threshold, sample
count, the old release's value); a failing one turns the panel red."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..view import RolloutView, fmt_metric

ORDER = ("error_rate", "p95_latency", "health", "system_test")
RESULT_STYLES = {"pass": "bold green", "fail": "bold white on red", "no_data": "bold yellow"}


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
        self.update(text, layout=lines != self._lines)
        self._lines = lines

    @staticmethod
    def _render_verdicts(view: RolloutView) -> Text:
        text = Text()
        if not view.verdicts and not view.analysis_failure:
            return Text("no verdict yet: analysis starts once hosts run the new release",
                        style="dim")
        metrics = sorted(view.verdicts, key=lambda m: (ORDER.index(m) if m in ORDER else 99, m))
        for metric in metrics:
            data = view.verdicts[metric]
            result = str(data.get("result", "?"))
            text.append(f"{metric:<12}", style="bold")
            text.append(f" {result.upper()} ", style=RESULT_STYLES.get(result, "bold"))
            text.append(f" {fmt_metric(metric, data.get('value'))}",
                        style="bold red" if result == "fail" else "bold")
            text.append(f" (limit {fmt_metric(metric, data.get('threshold'))})\n")
            facts = []
            if data.get("baseline") is not None or metric in ("error_rate", "p95_latency"):
                facts.append(f"old release {fmt_metric(metric, data.get('baseline'))}")
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
