"""``upgrader analysis replay FLEET [ROLLOUT] --verify FILE.toml`` (issue 14): the raw samples
a real engine run of the statistical judge journaled, replayed through another verify policy;
a stricter policy turns the recorded passes into a failure, round by round; a bad policy file
is bad input (exit 2 naming file, key and line, the journal untouched); an unknown rollout is
named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_verify_metrics import BASE, _fleet_with_metric, _run

from upgrader import cli
from upgrader.events import Outcome
from upgrader.journal import Journal

#: the recorded policy's metric (3 errors in 100 requests a round, max 5 %), made stricter
STRICT = """\
[verify]
consecutive_failures = 2

[[verify.metrics]]
name = "failures"
source = "constant"
query = "x"
kind = "proportion"
max = 0.5
"""


def _journaled(tmp_path: Path, **verify: str) -> tuple[Path, Path, str]:
    """A fleet file, its state folder and the id of a rollout whose verdicts come from a real
    engine run (statistical judge, 3 % errors against max 5 %: it passes), journaled as the
    engine journals them."""
    fleet, plugins = _fleet_with_metric(3, **verify)
    result, events = _run(fleet, plugins)
    assert result.outcome is Outcome.COMPLETED, result.error
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


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "strict.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_stricter_policy_turns_the_recorded_passes_into_a_failure(tmp_path, capsys):
    file, state, rollout = _journaled(tmp_path)
    policy = _policy(tmp_path, STRICT)
    code = cli.main(["analysis", "replay", str(file), "--verify", str(policy),
                     "--state-dir", str(state)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"replay of rollout {rollout} of shop: 1.0.0 -> 1.1.0, completed; ")
    assert "statistical judge, window 20, 2 failing round(s) in a row fail" in out
    # round 1: decided pass, replayed fail (3 % > max 0.5 %, significant)
    round1 = out.split("round 2 ")[0]
    assert re.search(r"^round 1 at \+\d+\.\ds · decided score 100 \(pass\) · replayed score 0 "
                     r"\(fail\) · DIFFERS$", round1, re.M), out
    assert "failures: decided PASS (0/2) -> replayed FAIL (1/2)" in round1
    assert "3% > max 0.5%" in round1
    # the second failing round in a row stops the rollout; the recorded one never failed
    assert re.search(r"^round 2 .*\n.*\n  replayed: the rollout would fail here \(failures\)$",
                     out, re.M), out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("decided: never failed, every metric passed at round 1; replayed: "
                           "would fail at round 2, never every metric would pass; ")
    assert re.search(r"(\d+) of \1 round\(s\) differ", last), last
    # the same with the id named
    assert cli.main(["analysis", "replay", str(file), rollout, "--verify", str(policy),
                     "--state-dir", str(state)]) == 0
    assert capsys.readouterr().out == out


def test_the_recorded_policy_replayed_decides_as_recorded(tmp_path, capsys):
    """The policy the rollout ran with, replayed, gives the journaled results: no
    difference."""
    file, state, _ = _journaled(tmp_path)
    same = STRICT.replace("max = 0.5", "max = 5").replace("consecutive_failures = 2", "")
    policy = _policy(tmp_path, same)
    assert cli.main(["analysis", "replay", str(file), "--verify", str(policy), "--json",
                     "--state-dir", str(state)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rounds, summary = lines[:-1], lines[-1]["summary"]
    assert rounds and all(not r["differs"] for r in rounds)
    assert [r["replayed"][0]["result"] for r in rounds] == \
        [r["decided"][0]["result"] for r in rounds]
    assert summary["differences"] == [] and summary["would_fail"] is None
    assert summary["would_pass"] == summary["decided_pass"] == 1


def test_replay_json_gives_each_round_then_a_summary(tmp_path, capsys):
    file, state, rollout = _journaled(tmp_path)
    policy = _policy(tmp_path, STRICT)
    assert cli.main(["analysis", "replay", str(file), "--verify", str(policy), "--json",
                     "--state-dir", str(state)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rounds, summary = lines[:-1], lines[-1]["summary"]
    assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1))
    first = rounds[0]
    assert first["decided"][0]["result"] == "pass"
    assert first["replayed"][0]["result"] == "fail" and first["replayed"][0]["tests"]
    assert first["band"] == "fail" and first["decided_band"] == "pass"
    assert summary["rollout"] == rollout and summary["would_fail"] == 2
    assert summary["decided_fail"] is None and summary["decided_pass"] == 1
    assert summary["differences"] == [r["round"] for r in rounds]


BAD = [
    # (the policy file, the key the error names, the line, words in the message)
    (STRICT.replace("max = 0.5", 'max = "lots"'), "verify.metrics[0].max", 9, "a number"),
    (STRICT.replace("consecutive_failures = 2", "consecutive_failure = 2"),
     "verify.consecutive_failure", 2, "did you mean 'consecutive_failures'"),
    ('[verfy]\nwindow = 3\n', "verfy", 1, "did you mean 'verify'"),
    ('[fleet]\nname = "x"\n', "verify", 1, "missing required table [verify]"),
    (STRICT + "window = [\n", "", 0, "TOML"),
]


@pytest.mark.parametrize(("text", "key", "line", "words"), BAD,
                         ids=[b[3][:20] for b in BAD])
def test_a_bad_policy_file_is_bad_input_naming_file_key_line(tmp_path, capsys, text, key,
                                                            line, words):
    file, state, _ = _journaled(tmp_path)
    before = (state / "journal.sqlite").read_bytes()
    policy = _policy(tmp_path, text)
    code = cli.main(["analysis", "replay", str(file), "--verify", str(policy),
                     "--state-dir", str(state)])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err and not out
    assert str(policy) in err and words in err, err
    if key:
        assert f"{policy}:{line}: {key}" in err, err
    else:       # a syntax error: the file and the line where the parser stopped
        assert re.search(rf"{re.escape(str(policy))}:\d+: not valid TOML", err), err
    assert (state / "journal.sqlite").read_bytes() == before


def test_a_missing_policy_file_is_bad_input(tmp_path, capsys):
    file, state, _ = _journaled(tmp_path)
    code = cli.main(["analysis", "replay", str(file), "--verify", str(tmp_path / "no.toml"),
                     "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == 2 and "no.toml" in err and "no such verify policy file" in err


def test_an_unknown_rollout_is_named(tmp_path, capsys):
    file, state, _ = _journaled(tmp_path)
    policy = _policy(tmp_path, STRICT)
    code = cli.main(["analysis", "replay", str(file), "nope-123", "--verify", str(policy),
                     "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == 2
    assert "nope-123" in err and "shop" in err


def test_a_policy_without_any_recorded_metric_is_refused(tmp_path, capsys):
    file, state, _ = _journaled(tmp_path)
    policy = _policy(tmp_path, STRICT.replace('name = "failures"', 'name = "errors"'))
    code = cli.main(["analysis", "replay", str(file), "--verify", str(policy),
                     "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(policy) in err and "verify.metrics" in err
    assert "recorded: failures" in err and "errors" in err


def test_replay_needs_its_policy():
    with pytest.raises(SystemExit) as caught:
        cli.main(["analysis", "replay", "fleet.toml"])
    assert caught.value.code == 2


def test_a_threshold_policy_judges_each_round_alone(tmp_path, capsys):
    """``judge = "threshold"``: each recorded round's samples against the limits, no
    pooling, no p-values; two failing rounds in a row fail."""
    file, state, _ = _journaled(tmp_path)
    policy = _policy(tmp_path, STRICT.replace("[verify]\n", '[verify]\njudge = "threshold"\n'))
    assert cli.main(["analysis", "replay", str(file), "--verify", str(policy), "--json",
                     "--state-dir", str(state)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rounds, summary = lines[:-1], lines[-1]["summary"]
    assert summary["judge"] == "threshold" and summary["would_fail"] == 2
    assert all(r["replayed"][0]["samples"] == 100 and r["replayed"][0]["result"] == "fail"
               for r in rounds)
    assert rounds[0]["band"] is None and "tests" not in rounds[0]["replayed"][0]


def test_a_rollout_of_the_threshold_judge_cannot_be_replayed_and_says_why(tmp_path, capsys):
    file, state, rollout = _journaled(tmp_path, judge="threshold")
    policy = _policy(tmp_path, STRICT)
    code = cli.main(["analysis", "replay", str(file), "--verify", str(policy),
                     "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"rollout {rollout} of shop journaled no raw samples" in err
    assert "statistical judge" in err
