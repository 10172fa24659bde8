"""``upgrader analysis show FLEET [ROLLOUT]`` (issue 14, explainable): the verdicts a real
engine run of the statistical judge produced, journaled, printed round by round with their
tests, p-values, effect sizes and samples needed; ``--json`` gives the events themselves; an
unknown rollout is bad input (exit 2) naming it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_verify_metrics import BASE, _fleet_with_metric, _run

from upgrader import cli
from upgrader.journal import Journal


def _journaled(tmp_path: Path) -> tuple[Path, Path, str]:
    """A fleet file, its state folder, and the id of a rollout whose verdicts come from a
    real engine run (statistical judge, a failing canary) journaled as the engine would."""
    fleet, plugins = _fleet_with_metric(50)
    result, events = _run(fleet, plugins)
    file = tmp_path / "fleet.toml"
    file.write_text(BASE.format(metrics=""), encoding="utf-8")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    journal = Journal(state / "journal.sqlite")
    try:
        rollout = journal.begin(fleet="shop", fleet_path=str(file), strategy="rolling",
                                current="1.0.0", target="1.1.0", plan={}, now=events[0].ts)
        for seq, event in enumerate(events):
            journal.append(rollout, seq, event.ts, event.kind, dict(event.data))
        journal.finish(rollout, result.outcome.value, now=events[-1].ts)
    finally:
        journal.close()
    return file, state, rollout


def test_show_prints_every_round_with_its_statistics(tmp_path, capsys):
    file, state, rollout = _journaled(tmp_path)
    code = cli.main(["analysis", "show", str(file), "--state-dir", str(state)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"rollout {rollout} of shop: 1.0.0 -> 1.1.0, rolled_back" in out
    assert re.search(r"^round 1 at \+\d+\.\ds · score 0 \(fail\)$", out, re.M), out
    assert "failures FAIL" in out and "p " in out and "samples needed" in out
    assert "score 0 (fail)" in out
    # the same with the id named
    assert cli.main(["analysis", "show", str(file), rollout, "--state-dir", str(state)]) == 0
    assert capsys.readouterr().out == out


def test_show_json_is_the_journaled_verdicts(tmp_path, capsys):
    file, state, _ = _journaled(tmp_path)
    assert cli.main(["analysis", "show", str(file), "--json", "--state-dir", str(state)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines and all(line["metric"] == "failures" for line in lines)
    assert lines[-1]["result"] == "fail" and lines[-1]["stats"]["tests"]


def test_an_unknown_rollout_is_bad_input_and_changes_nothing(tmp_path, capsys):
    file, state, _ = _journaled(tmp_path)
    before = (state / "journal.sqlite").read_bytes()
    code = cli.main(["analysis", "show", str(file), "nope-123", "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == 2
    assert "nope-123" in err and "shop" in err
    assert (state / "journal.sqlite").read_bytes() == before


@pytest.mark.parametrize("argv", [["analysis"], ["analysis", "show"]])
def test_show_without_its_arguments_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2


def test_a_proportion_named_freely_is_shown_in_percent():
    """A ``[[verify.metrics]]`` proportion need not be called ``*_rate``: its journaled
    ``metric_kind`` says it is one (it printed ``value 100 · limit 5``)."""
    from upgrader.analysis_cli import describe

    line = describe({"metric": "slow_requests", "result": "fail", "value": 100.0,
                     "threshold": 5.0, "baseline": 0.5, "samples": 40,
                     "metric_kind": "proportion"})
    assert "value 100.00%" in line and "limit 5.00%" in line and "old release 0.50%" in line
    plain = describe({"metric": "queue_depth", "result": "pass", "value": 3.0, "samples": 4,
                      "metric_kind": "value"})
    assert "value 3 " in plain + " "
