"""The analysis panel with the statistical judge (issue 14): the round's score and band, and
per metric its result (pass, fail, inconclusive, no data), p-value, effect and the samples it
had against those it needs; the threshold judge's verdicts keep their display."""

from __future__ import annotations

import re

import tuikit

from upgrader.tui.view import RolloutView
from upgrader.tui.widgets.verdict import VerdictPanel


def _panel(verdicts: list[dict]) -> str:
    view = RolloutView(clock=lambda: 0.0)
    for data in verdicts:
        view.verdicts[str(data["metric"])] = dict(data)
    return VerdictPanel._render_verdicts(view).plain


def test_the_statistical_judge_shows_score_p_value_effect_and_samples():
    text = _panel(tuikit.judged_verdicts())
    lines = text.splitlines()
    assert lines[0] == "round score  100 PASS   statistical judge"
    assert "error_rate   PASS  0.111% (max 1%, old+100%)" in lines
    assert re.search(r"^  old 0\.1% · p 0\.\d+ · effect \+11% · 900/300 samples$", text,
                     re.M), text
    assert "p95_latency  INCONCLUSIVE  46ms (max 300ms, old+50%)" in lines
    assert re.search(r"^  old 44ms · p [\d.]+ · effect \+4\.5% · 40/150 samples$", text, re.M)
    assert "  within limits, but 40 samples < 150 needed to detect the limit" in lines
    assert "queue_depth  NO DATA  (max 50) dry run" in lines
    assert "  no canary samples (no_data = inconclusive)" in lines


def test_a_failing_metric_of_the_judge_and_a_fail_band():
    from upgrader.engine.judge import judge, round_score
    from upgrader.model import MetricSpec

    metric = MetricSpec("error_rate", "balancer", "error_rate", kind="proportion", max=1.0)
    j = judge(metric, canary_counts=(30, 100), baseline_counts=(0, 1000))
    score, band = round_score([j])
    text = _panel([{"metric": "error_rate", "result": j.result, "value": j.value,
                    "threshold": 1.0, "samples": j.samples, "baseline": j.baseline,
                    "detail": j.reason, "consecutive": 1, "limit": 3,
                    "judge": "statistical", "stats": j.to_json(), "score": score,
                    "band": band}])
    assert text.splitlines()[0] == "round score  0 FAIL   statistical judge"
    assert "error_rate   FAIL  30% (max 1%)" in text
    assert re.search(r"^  old 0% · p [\d.e-]+ · effect \+30 pts · 100/\d+ samples · 1/3 "
                     r"failing$", text, re.M), text
    # the reason with its p-value, without the counts the line above gives
    assert re.search(r"^  30% > max 1% \(p = [\d.e-]+ < 0\.001\)$", text, re.M), text


def test_the_threshold_judge_keeps_its_display():
    text = _panel([{"metric": "error_rate", "result": "fail", "value": 30.0, "threshold": 1.0,
                    "samples": 240, "baseline": 0.1, "consecutive": 1, "limit": 3,
                    "detail": "72 errors in 240 requests"}])
    assert "round score" not in text
    assert text.splitlines() == [
        "error_rate   FAIL  30.00% (limit 1.00%)",
        "  old release 0.10% · 240 samples · 1/3 in a row",
        "  72 errors in 240 requests"]
