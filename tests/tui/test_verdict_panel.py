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


def test_a_threshold_proportion_not_named_error_rate_is_shown_in_percent():
    # the unit comes from the verdict's metric_kind, not from the metric's name
    text = _panel([{"metric": "failures", "result": "fail", "value": 50.0, "threshold": 5.0,
                    "samples": 40, "baseline": 0.5, "metric_kind": "proportion"},
                   {"metric": "queue", "result": "pass", "value": 3.0, "threshold": 50.0,
                    "samples": 4, "metric_kind": "value"}])
    lines = text.splitlines()
    assert "failures     FAIL  50.00% (limit 5.00%)" in lines, text
    assert "  old release 0.50% · 40 samples" in lines, text
    assert "queue        PASS  3 (limit 50)" in lines, text


def test_a_tui_that_connects_late_shows_the_statistics_from_the_snapshot():
    """A TUI that attaches after the verdicts (their events not in the history it gets)
    shows the statistical judge's lines from the engine's snapshot alone: the round's score
    and band, the p-value and samples had/needed (before: the snapshot kept the bare
    verdict, so the panel showed the threshold display until the next round's event)."""
    import asyncio

    from upgrader.model import VerifySpec
    from upgrader.tui.widgets import VerdictPanel as Panel

    fleet = tuikit.canary_fleet(4, [{"hosts": 1, "pause": "10m"}, {"hosts": "100%"}],
                                verify=VerifySpec(for_=0.6, interval=0.1, no_data="pass",
                                                  min_requests=10, judge="statistical",
                                                  inconclusive="pass"))

    async def snapshot_after_a_verdict() -> dict:
        live = tuikit.LiveRollout(fleet)
        await live.seed()
        await live.start()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10.0
            while not any(e.kind == "verdict" and e.data.get("judge") == "statistical"
                          for e in live.engine.history):
                assert loop.time() < deadline, "no verdict of the statistical judge in 10 s"
                await asyncio.sleep(0.02)
            return live.engine.snapshot()
        finally:
            await live.stop()

    snap = asyncio.run(snapshot_after_a_verdict())
    shown = snap["verdicts"]["error_rate"]
    assert shown["judge"] == "statistical" and "raw" not in shown

    async def late_tui() -> str:
        app = tuikit.frozen_app(tuikit.FakeHandle(snap, []))      # no verdict event at all
        async with app.run_test(size=tuikit.SIZE) as pilot:
            panel = tuikit.main_screen(app).query_one(Panel)
            await tuikit.wait_until(pilot, lambda: "round score" in str(panel.render()),
                                    "the panel to show the round score")
            return str(panel.render())

    text = asyncio.run(late_tui())
    band = str(shown["band"] or "inconclusive").upper()
    score = "n/a" if shown["score"] is None else f"{shown['score']:g}"
    assert f"round score  {score} {band}" in text, text
    stats = shown["stats"]
    assert re.search(rf"^error_rate   {shown['result'].upper().replace('_', ' ')} ", text,
                     re.M), text
    assert f"{stats['samples']}/{stats['needed']} samples" in text, text
    if any(isinstance(t.get("p_value"), float) for t in stats["tests"]):
        assert re.search(r" · p [\d.e-]+ · ", text), text


def test_the_help_describes_the_analysis_panel_of_both_judges(fake):
    """The help's Analysis line says what the panel shows now: the threshold judge's
    figures and the statistical judge's score, band, p-value, effect and samples had/needed
    (before: the threshold display only)."""
    import asyncio

    from upgrader.tui.screens.help import HelpScreen

    async def help_text() -> str:
        app = fake("judged")
        async with app.run_test(size=(200, 50)) as pilot:
            await pilot.press("question_mark")
            await tuikit.wait_until(pilot, lambda: isinstance(app.screen, HelpScreen),
                                    "the help")
            await pilot.pause()
            return tuikit.screen_text(app)

    text = " ".join(asyncio.run(help_text()).split())
    line = text[text.index("Analysis"):text.index("Events")]
    for words in ("Threshold judge", "limit", "failures in a row", "Statistical judge",
                  "score", "band", "inconclusive", "p-value", "effect", "had/needed"):
        assert words in line, (words, line)


def test_the_summary_line_shows_a_threshold_proportion_in_percent_by_its_kind():
    from upgrader.tui.widgets.summary import verdict_line

    view = RolloutView(clock=lambda: 0.0)
    view.verdicts["failures"] = {"metric": "failures", "result": "fail", "value": 50.0,
                                 "threshold": 5.0, "metric_kind": "proportion"}
    assert "failures  FAIL  50.00% (limit 5.00%)" in verdict_line(view).plain
