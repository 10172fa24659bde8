"""``upgrader plan``'s sample-size lines (issue 14): for each verify step of a fleet judged by
the statistical judge, the canary samples each metric needs before it may pass (the figure the
judge itself uses) and what the fleet's traffic (``--traffic RPS``) gives in the hold, or the
rate the hold needs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from upgrader import cli
from upgrader.config import loads_fleet
from upgrader.engine.judge import judge, samples_needed

FLEET = """\
[fleet]
name = "shop"

[release]
current = "1.0.0"
target = "1.1.0"

[commands]
install = ["true"]
start = ["true"]
stop = ["true"]

[transport]
kind = "noop"

[balancer]
kind = "noop"

[verify]
interval = "10s"
{verify}
{metrics}
[strategy]
kind = "canary"
""" + "".join(f'[[hosts]]\nname = "h{i}"\naddress = "127.0.0.1"\nport = {9000 + i}\n'
              for i in range(4))

METRICS = """\
[[verify.metrics]]
name = "error_rate"
max = 1
max_increase = "100%"

[[verify.metrics]]
name = "p95_latency"
max = 0.3
"""


def _file(tmp_path: Path, verify: str = "", metrics: str = METRICS) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET.format(verify=verify, metrics=metrics), encoding="utf-8")
    return path


def _plan(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(["plan", *argv]) == 0
    return capsys.readouterr().out


def test_the_needed_samples_are_the_judges_own(tmp_path):
    """The plan's figure is what the judge asks of a canary before it passes (a baseline
    without events: the floor rate) beside a baseline as big as itself; beside a bigger one
    (seven hosts to one) the judge knows the baseline better and asks fewer."""
    fleet = loads_fleet(FLEET.format(verify="", metrics=METRICS))
    error_rate, p95 = fleet.verify.metrics
    assert samples_needed(error_rate) == 737 and samples_needed(p95) == 150
    assert judge(error_rate, canary_counts=(0, 100), baseline_counts=(0, 100)).needed == 737
    bigger = judge(error_rate, canary_counts=(0, 100), baseline_counts=(0, 700)).needed
    assert bigger is not None and 100 < bigger < 737
    assert judge(p95, canary=[0.1] * 10, baseline=[0.1] * 10).needed == 150


def test_with_the_traffic_rate_each_hold_says_what_it_sees(tmp_path, capsys):
    # a pool of 6 rounds (1m): the extension adds no samples
    out = _plan(capsys, str(_file(tmp_path, verify="window = 6")), "--traffic", "20")
    assert "sample sizes (statistical judge: a metric passes once its canary has them):" in out
    assert "  error_rate: 737 canary requests to detect max 1% or +100% over the baseline" in out
    assert "  p95_latency: 150 canary requests to detect max 0.3" in out
    # the canary (1 host of 4: 25 % of requests) for 1m at 20 requests/s: 300 requests
    wave1 = next(line for line in out.splitlines() if line.startswith("  wave 1 verify"))
    assert "25% of requests on the target, hold 1m" in wave1
    assert "at 20 requests/s about 300: too few for error_rate (then inconclusive = pause)" \
        in wave1 and "enough for p95_latency" in wave1
    wave2 = next(line for line in out.splitlines() if line.startswith("  wave 2 verify"))
    assert "about 1200: enough for error_rate; enough for p95_latency" in wave2
    assert "the judge pools the last 1m of samples" in out
    # more traffic is enough for the canary too
    out = _plan(capsys, str(_file(tmp_path, verify="window = 6")), "--traffic", "60")
    wave1 = next(line for line in out.splitlines() if line.startswith("  wave 1 verify"))
    assert "about 900: enough for error_rate" in wave1


@pytest.mark.parametrize("verify", ["window = 30", ""], ids=["window-30", "default-window"])
def test_a_longer_pool_lets_the_extended_hold_count(tmp_path, capsys, verify):
    """The default pool (20 rounds) covers a hold and its extension."""
    out = _plan(capsys, str(_file(tmp_path, verify=verify)), "--traffic", "20")
    wave1 = next(line for line in out.splitlines() if line.startswith("  wave 1 verify"))
    assert "about 300 (900 extended): error_rate needs the extension" in wave1
    assert "pools the last" not in out


def test_without_the_traffic_rate_it_says_the_rate_needed(tmp_path, capsys):
    out = _plan(capsys, str(_file(tmp_path)))
    wave1 = next(line for line in out.splitlines() if line.startswith("  wave 1 verify"))
    # 737 requests at 25 % in 60 s: 49.1 requests/s; in the 180 s the pool covers: 16.4
    assert re.search(r"needs 49\.1 requests/s across the fleet \(16\.4 with the extension\); "
                     r"--traffic RPS says what yours gives$", wave1), wave1


def test_json_has_the_figures(tmp_path, capsys):
    data = json.loads(_plan(capsys, str(_file(tmp_path)), "--json", "--traffic", "20"))
    samples = data["verify_samples"]
    assert samples["rps"] == 20
    assert [(m["metric"], m["needed"]) for m in samples["metrics"]] == [
        ("error_rate", 737), ("p95_latency", 150)]
    assert [(s["wave"], s["share_pct"], s["requests"]) for s in samples["steps"]] == [
        (1, 25.0, 300), (2, 100.0, 1200)]


def test_no_line_for_the_threshold_judge(tmp_path, capsys):
    for path in (_file(tmp_path, metrics=""),
                 _file(tmp_path, verify='judge = "threshold"')):
        out = _plan(capsys, str(path), "--traffic", "20")
        assert "sample sizes" not in out
        data = json.loads(_plan(capsys, str(path), "--json"))
        assert "verify_samples" not in data


@pytest.mark.parametrize("value", ["0", "-3", "lots", "inf"])
def test_a_bad_traffic_rate_is_a_usage_error(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as caught:
        cli.main(["plan", str(_file(tmp_path)), "--traffic", value])
    assert caught.value.code == 2
    assert "--traffic: expected requests per second" in capsys.readouterr().err
