"""A canary judged by PromQL only, end to end (issue 14, point 2): a real lab started with
``prometheus=True`` (Debian's ``prometheus`` server scraping the apps each second), live user
traffic, and ``upgrader run`` whose only verification metrics are ``[[verify.metrics]]`` with
``source = "prometheus"`` (no balancer counters, no health rounds). It catches the ``-bad``
release (30 % errors) and the ``-slow`` release (0.3 s per request) and rolls them back, and
lets the good release through. The fleet is ``sample_fleets/prometheus.toml`` (its metrics name
no url: they read the running lab's Prometheus). One lab serves the three rollouts; each
starts from ``lab.reset()``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from upgrader.lab.layout import LabLayout
from upgrader.lab.manager import Lab, free_base_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="the prometheus server binary is not installed (apt-get install prometheus)")

PY = sys.executable
HOSTS = 3
NAMES = [f"web-{i:02d}" for i in range(1, HOSTS + 1)]
METRICS = {"error_rate", "slow_requests"}

#: the sample fleet a user runs on `lab up --prometheus` (docs/LAB.md): the test runs it as is,
#: with only its target changed, so the sample cannot go stale
SAMPLE = Path(__file__).resolve().parents[2] / "sample_fleets" / "prometheus.toml"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, str]]:
    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus server binary is not installed (apt-get install "
                    "prometheus)")
    root = tmp_path_factory.mktemp("promlab")
    layout = LabLayout(dir=root / "lab", hosts=HOSTS, base_port=free_base_port(),
                       base_release="1.0.0")
    lab = Lab(layout)
    try:
        state = asyncio.run(lab.up(traffic_rps=60, users=40, prometheus=True))
        yield lab, state["urls"]["prometheus"]
    finally:
        asyncio.run(lab.down())


def upgrader(*args: str, cwd: Path, lab_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UPGRADER_STATE_DIR": str(cwd / "state"),
           "UPGRADER_LAB_DIR": str(lab_dir)}
    env.pop("UPGRADER_STATE", None)
    return subprocess.run([PY, "-m", "upgrader.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def run(fleet: Path, cwd: Path, lab_dir: Path) -> subprocess.CompletedProcess[str]:
    return upgrader("run", str(fleet), "--headless", "--json", cwd=cwd, lab_dir=lab_dir)


def events(out: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@needs_prometheus
@pytest.mark.parametrize("target, caught", [
    ("1.1.0-bad", "error_rate"),
    ("1.1.0-slow", "slow_requests"),
    ("1.1.0", None),
])
def test_a_canary_judged_by_promql_alone(lab: tuple[Lab, str], tmp_path: Path, target: str,
                                         caught: str | None) -> None:
    the_lab, url = lab
    asyncio.run(the_lab.reset())
    text = SAMPLE.read_text(encoding="utf-8")
    assert 'target = "1.1.0"\n' in text and f"hosts = {HOSTS}\n" in text
    fleet = tmp_path / "prometheus.toml"
    fleet.write_text(text.replace('target = "1.1.0"\n', f'target = "{target}"\n'))
    # no url in the file: the metrics read the running lab's Prometheus
    out = run(fleet, tmp_path, the_lab.dir)
    lines = events(out)
    verdicts = [e for e in lines if e.get("kind") == "verdict"]
    # every verdict is one of the PromQL metrics, read from the lab's Prometheus
    assert verdicts, out.stderr
    assert {v["metric"] for v in verdicts} <= METRICS, verdicts
    assert all(v["judge"] == "statistical" for v in verdicts)
    read = [v for v in verdicts if isinstance(v["raw"], dict) and "detail" in v["raw"]]
    assert read and all(url in str(v["raw"]["detail"]) for v in read)
    finished = [e for e in lines if e.get("kind") == "rollout_finished"]
    installed = {n: the_lab.installs(n)[-1]["release"] for n in NAMES}
    if caught is None:
        assert out.returncode == 0, out.stderr
        assert finished[-1]["outcome"] == "completed"
        assert installed == dict.fromkeys(NAMES, target)
        passes = {v["metric"] for v in verdicts if v["result"] == "pass"}
        assert passes == METRICS, verdicts
        assert not [v for v in verdicts if v["result"] == "fail"]
    else:
        assert out.returncode == 1, out.stderr
        assert finished[-1]["outcome"] == "rolled_back", finished
        assert installed == dict.fromkeys(NAMES, "1.0.0")
        # only the canary met the bad release, and the right metric caught it
        assert [n for n in NAMES if target in
                {i["release"] for i in the_lab.installs(n)}] == ["web-01"]
        failed = [e for e in lines if e.get("kind") == "analysis_failed"]
        assert failed and failed[0]["metric"] == caught, failed
        fails = [v for v in verdicts if v["result"] == "fail"]
        assert {v["metric"] for v in fails} == {caught}, fails
        assert fails[0]["stats"]["tests"] and fails[0]["raw"]["canary_counts"]
        # the baseline (web-02, web-03 on 1.0.0) was read from Prometheus too, over the same
        # interval: its own counts, far below the canary's. A scrape Prometheus missed on a
        # busy machine leaves one round's side without data (judged on the absolute limit
        # then), so the baseline is asserted where it was read, and must be read at least once
        assert all(f["window"]["baseline"] == HOSTS - 1 for f in fails), fails
        compared = [f for f in fails if f["raw"]["baseline_counts"]]
        assert compared, fails
        for f in compared:
            assert f["raw"]["baseline_counts"][1] > 0
            assert f["baseline"] is not None and f["baseline"] < f["value"] / 4, f
        # explainable afterwards: the journal's verdicts, with the PromQL they were read with
        shown = upgrader("analysis", "show", str(fleet), cwd=tmp_path, lab_dir=the_lab.dir)
        assert shown.returncode == 0, shown.stderr
        assert f"{caught} FAIL" in shown.stdout and "rolled_back" in shown.stdout
        assert "read: sum(increase(" in shown.stdout and f"from {url}" in shown.stdout
