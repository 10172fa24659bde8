"""``[[verify.metrics]]``: parsed with errors naming file, key and line (exit 2, nothing
created), its sources opened through ``register_metric_sources`` and checked before the
rollout, and the engine judging the samples each round (issue 14)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from upgrader import cli, strategies
from upgrader.clock import LoopClock
from upgrader.config import loads_fleet
from upgrader.engine.core import Engine, Providers
from upgrader.errors import ConfigError
from upgrader.events import Outcome
from upgrader.hookspecs import hookimpl
from upgrader.model import MetricSpec, StrategySpec, Timing, verify_metrics
from upgrader.plugins import Plugins
from upgrader.providers.base import MetricSamples, MetricWindow, ProviderContext
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport
from upgrader.rollout import open_providers

BASE = """\
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
error_rate_max = "2%"

{metrics}
[[hosts]]
name = "a"
address = "127.0.0.1"

[strategy]
kind = "rolling"
"""

GOOD = """\
[[verify.metrics]]
name = "error_rate"
max = 1.5
max_increase = "50%"
critical = true

[[verify.metrics]]
name = "p95"
query = "p95_latency"
max = 0.3
direction = "either"
no_data = "fail"
dry_run = true
"""


def test_verify_metrics_parse() -> None:
    fleet = loads_fleet(BASE.format(metrics=GOOD), registry=Plugins())
    error_rate, p95 = fleet.verify.metrics
    assert error_rate == MetricSpec("error_rate", "balancer", "error_rate", kind="proportion",
                                    max=1.5, max_increase=50.0, critical=True)
    assert p95 == MetricSpec("p95", "balancer", "p95_latency", kind="value", max=0.3,
                             direction="either", no_data="fail", dry_run=True)


def test_without_verify_metrics_the_two_of_today_are_the_default() -> None:
    fleet = loads_fleet(BASE.format(metrics="").replace('error_rate_max = "2%"',
                                                       'error_rate_max = "2%"\n'
                                                       'p95_latency_max = "250ms"\n'
                                                       'no_data = "fail"'))
    assert fleet.verify.metrics == ()
    assert [(m.name, m.kind, m.max, m.no_data) for m in verify_metrics(fleet.verify)] == [
        ("error_rate", "proportion", 2.0, "fail"), ("p95_latency", "value", 0.25, "fail")]


CASES = [
    # (the metric table, the key the error names, the line's start, words in the message)
    ('[[verify.metrics]]\nname = "e"\nquery = "error_rate"\ndirction = "increase"\n',
     "verify.metrics[0].dirction", "dirction", "did you mean 'direction'"),
    ('[[verify.metrics]]\nname = "e"\nsource = "balancr"\n',
     "verify.metrics[0].source", "source", "did you mean 'balancer'"),
    ('[[verify.metrics]]\nname = "e"\nkind = "ratio"\n',
     "verify.metrics[0].kind", "kind", "proportion"),
    ('[[verify.metrics]]\nname = "e"\nmax = "lots"\n',
     "verify.metrics[0].max", "max", "a number"),
    ('[[verify.metrics]]\nname = "e"\nmax_increase = -5\n',
     "verify.metrics[0].max_increase", "max_increase", "increase in percent"),
    ('[[verify.metrics]]\nname = "e"\nno_data = "shrug"\n',
     "verify.metrics[0].no_data", "no_data", "inconclusive"),
    ('[[verify.metrics]]\nname = "e"\n[[verify.metrics]]\nname = "e"\n',
     "verify.metrics[1].name", 'name = "e"', "duplicate metric name"),
    ('[[verify.metrics]]\nquery = "error_rate"\n',
     "verify.metrics[0].name", "[[verify.metrics]]", "missing required key 'name'"),
]


def _line(text: str, start: str, nth: int = 1) -> int:
    """The ``nth`` line from the first metric table on that starts with ``start``."""
    first = text.splitlines().index("[[verify.metrics]]") + 1
    lines = [i for i, line in enumerate(text.splitlines(), 1)
             if i >= first and line.startswith(start)]
    return lines[min(nth, len(lines)) - 1]


@pytest.mark.parametrize(("table", "key", "start", "words"), CASES,
                         ids=[c[1] + ":" + c[3][:12] for c in CASES])
def test_bad_verify_metrics_exit_2_naming_file_key_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, key: str, start: str,
        words: str) -> None:
    text = BASE.format(metrics=table)
    file = tmp_path / "fleet.toml"
    file.write_text(text, encoding="utf-8")
    line = _line(text, start, 2 if "duplicate" in words else 1)
    state = tmp_path / "state"
    for argv in (["plan", str(file)], ["run", str(file), "--headless", "--state-dir",
                                       str(state)]):
        code = cli.main(argv)
        out, err = capsys.readouterr()
        assert code == 2, (argv, out, err)
        assert "Traceback" not in err
        assert f"{file}:{line}: {key}" in err, err
        assert words in err, err
    assert not state.exists(), "a refused run creates no state"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.toml"]


def test_a_query_the_source_cannot_read_is_refused_before_the_rollout(tmp_path: Path) -> None:
    """The source's ``check`` runs when the providers open: the balancer reads no
    ``error_ratio``; the error names the metric's query key and line."""
    text = BASE.format(metrics='[[verify.metrics]]\nname = "e"\nquery = "error_ratio"\n')
    file = tmp_path / "fleet.toml"
    file.write_text(text, encoding="utf-8")
    from upgrader.config import load_fleet

    fleet = load_fleet(file, registry=Plugins())
    with pytest.raises(ConfigError) as caught:
        asyncio.run(open_providers(fleet, Plugins()))
    assert caught.value.key == "verify.metrics[0].query"
    assert caught.value.line == _line(text, "query")
    assert "error_ratio" in str(caught.value) and str(file) in str(caught.value)


class _Constant:
    """A metric source of a plugin: the canary's and the baseline's counts are fixed."""

    created: ClassVar[list[_Constant]] = []

    def __init__(self, settings: dict[str, Any], context: ProviderContext) -> None:
        self.errors = int(settings["errors"])
        self.trials = int(settings.get("trials", 100))
        self.after = int(settings.get("after", 0))     # rounds without errors first
        self.checked: list[str] = []
        self.windows: list[MetricWindow] = []
        _Constant.created.append(self)

    def check(self, metric: MetricSpec) -> None:
        self.checked.append(metric.name)

    async def collect(self, metric: MetricSpec, window: MetricWindow) -> MetricSamples:
        self.windows.append(window)
        errors = self.errors if len(self.windows) > self.after else 0
        return MetricSamples(canary_counts=(errors, self.trials),
                             baseline_counts=(0, 100),
                             detail="constant")

    async def aclose(self) -> None:
        return None


class _ConstantPlugin:
    @hookimpl
    def register_metric_sources(self, register: Any) -> None:
        from upgrader.providers.base import Setting

        register("constant", _Constant,
                 settings=(Setting("errors", int), Setting("trials", int, 100),
                           Setting("after", int, 0)),
                 description="fixed counts")


def _fleet_with_metric(errors: int, extra: str = "", **verify: Any) -> Any:
    plugins = Plugins(entrypoints=False)
    plugins.register(_ConstantPlugin(), "constant")
    text = BASE.format(metrics=f'[[verify.metrics]]\nname = "failures"\nsource = "constant"\n'
                               f'query = "x"\nkind = "proportion"\nmax = 5\nerrors = {errors}\n'
                               f'{extra}')
    text = text.replace('[[hosts]]\nname = "a"\naddress = "127.0.0.1"\n',
                        "".join(f'[[hosts]]\nname = "h{i}"\naddress = "127.0.0.1"\n'
                                f'port = {9000 + i}\n' for i in range(3)))
    fleet = loads_fleet(text, registry=plugins)
    verify = dataclasses.replace(fleet.verify, **{
        "for_": 30.0, "interval": 10.0, "min_requests": 10, "consecutive_failures": 2,
        "health": False, **verify})
    module = strategies.get("rolling")
    fleet = dataclasses.replace(fleet, verify=verify,
                                strategy=StrategySpec("rolling", module.default_params()),
                                timing=Timing(host_upgrade=15.0, health_timeout=20.0,
                                              drain_timeout=10.0))
    return fleet, plugins


def _run(fleet: Any, plugins: Plugins, engines: list[Engine] | None = None
         ) -> tuple[Any, list[Any]]:
    """Run ``fleet`` to its end in virtual time; ``engines`` gets the engine."""
    _Constant.created.clear()

    async def main() -> Any:
        opened = await open_providers(fleet, plugins)
        providers = Providers(NoopTransport(delay=5.0), NoopBalancer(), NoopHealthCheck(),
                              metrics=opened.metrics)
        for host in fleet.hosts:
            await providers.balancer.set_backend(host.name, address=host.address,
                                                 port=host.port, pool="1.0.0")
        plan = strategies.get("rolling").compile(fleet, fleet.strategy.params)
        engine = Engine(fleet, plan, providers, clock=LoopClock())
        if engines is not None:
            engines.append(engine)
        events: list[Any] = []
        engine.subscribe(events.append)
        result = await engine.run()
        await opened.aclose()
        return result, events

    from upgrader.clock import run_virtual

    result, events = run_virtual(main)
    return result, events


@pytest.mark.parametrize(("errors", "outcome"), [(0, Outcome.COMPLETED),
                                                 (50, Outcome.ROLLED_BACK)])
def test_the_engine_judges_a_plugin_source_opened_through_the_hook(errors: int,
                                                                   outcome: Outcome) -> None:
    fleet, plugins = _fleet_with_metric(errors)
    assert fleet.verify.judge == "statistical"
    result, events = _run(fleet, plugins)
    assert result.outcome is outcome, result.error
    (source,) = _Constant.created
    assert source.checked == ["failures"]
    assert source.windows and all(w.canary_release == "1.1.0" and w.baseline_release == "1.0.0"
                                  for w in source.windows)
    verdicts = [e.data for e in events if e.kind == "verdict"]
    assert verdicts and all(v["metric"] == "failures" for v in verdicts)
    if errors:
        assert verdicts[-1]["result"] == "fail" and verdicts[-1]["value"] == 50.0
        assert "failures FAIL" in (result.error or "")
    if errors:
        # explainable: the statistics and this round's raw samples are in the event
        last = verdicts[-1]
        assert last["judge"] == "statistical" and last["stats"]["tests"]
        assert last["raw"]["canary_counts"] == [50, 100] or \
            last["raw"]["canary_counts"] == (50, 100)
        assert last["band"] == "fail" and last["score"] == 0.0


def test_a_critical_metric_fails_at_its_first_failing_round() -> None:
    fleet, plugins = _fleet_with_metric(50, "critical = true\n", consecutive_failures=5)
    result, events = _run(fleet, plugins)
    assert result.outcome is Outcome.ROLLED_BACK
    fails = [e.data for e in events if e.kind == "verdict" and e.data["result"] == "fail"]
    assert len(fails) == 1 and "critical" in (result.error or "")


def test_a_dry_run_metric_is_judged_and_shown_but_never_decides() -> None:
    fleet, plugins = _fleet_with_metric(50, "dry_run = true\n", inconclusive="pass")
    result, events = _run(fleet, plugins)
    assert result.outcome is Outcome.COMPLETED, result.error
    verdicts = [e.data for e in events if e.kind == "verdict"]
    assert verdicts and all(v["result"] == "fail" and v["stats"]["dry_run"] for v in verdicts)


@pytest.mark.parametrize(("policy", "outcome"), [("fail", Outcome.ROLLED_BACK),
                                                 ("pass", Outcome.COMPLETED)])
def test_too_few_samples_extend_the_hold_then_the_policy_decides(policy: str,
                                                                 outcome: Outcome) -> None:
    """1 request a round: never enough to pass, no failure by noise; the hold is extended
    by ``inconclusive_for``, then ``inconclusive`` decides, in words."""
    fleet, plugins = _fleet_with_metric(0, "trials = 1\n", inconclusive=policy,
                                        inconclusive_for=40.0)
    result, events = _run(fleet, plugins)
    assert result.outcome is outcome, result.error
    verdicts = [e.data for e in events if e.kind == "verdict"]
    assert verdicts and {v["result"] for v in verdicts} == {"inconclusive"}
    said = [e.data["message"] for e in events if e.kind == "log"] + [result.error or ""]
    assert any("inconclusive after 70s" in m and f"inconclusive = {policy}" in m
               for m in said), said


def test_a_failing_metric_holds_the_rollout_until_it_recovers_or_fails() -> None:
    """A metric failing at the end of a hold, but fewer times in a row than
    ``consecutive_failures``, keeps the hold going: the next wave never starts on a failing
    verdict (found on the lab: a -bad canary judged by PromQL failed once in its 6 s hold and
    the rollout widened to every host before the second failure rolled it back)."""
    fleet, plugins = _fleet_with_metric(50, consecutive_failures=5, inconclusive="pass",
                                        inconclusive_for=200.0)
    result, events = _run(fleet, plugins)
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    upgraded = [e.data["host"] for e in events
                if e.kind == "host_done" and e.data["mode"] == "upgrade"]
    assert upgraded == ["h0"], upgraded
    fails = [e.data for e in events if e.kind == "verdict" and e.data["result"] == "fail"]
    assert [v["consecutive"] for v in fails] == [1, 2, 3, 4, 5]
    assert "5 in a row" in (result.error or "")


def test_a_proportion_metrics_verdict_says_its_kind_and_headless_prints_percent() -> None:
    """A proportion of any name (``failures`` here, ``slow_requests`` on the lab) prints its
    figures as percentages, as ``error_rate`` always did (before: ``value=50 limit=5``)."""
    import io

    from upgrader.headless import HeadlessDisplay, stderr_console

    fleet, plugins = _fleet_with_metric(50, "critical = true\n")
    _, events = _run(fleet, plugins)
    verdicts = [e for e in events if e.kind == "verdict"]
    assert verdicts and all(e.data["metric_kind"] == "proportion" for e in verdicts)
    out = io.StringIO()
    display = HeadlessDisplay(total_hosts=3, target="1.1.0", console=stderr_console(out),
                              quiet=False)
    display(verdicts[-1])
    assert "analysis failures: fail value=50.00% limit=5.00% " in out.getvalue()
@pytest.mark.parametrize("judge", ["statistical", "threshold"])
def test_the_rollouts_error_prints_a_proportion_metric_in_percent(judge: str) -> None:
    """``Verdict.describe()`` (the rollout's error when analysis fails) formats a proportion
    of any name by its kind, as ``analysis show`` and headless do (before: ``failures FAIL:
    50 (limit 5, ...)``, only ``error_rate`` had its ``%``)."""
    fleet, plugins = _fleet_with_metric(50, "critical = true\n", judge=judge)
    result, events = _run(fleet, plugins)
    assert result.outcome is Outcome.ROLLED_BACK
    assert "failures FAIL: 50.00% (limit 5.00%, 100 samples, old release 0.00%)" in (
        result.error or ""), result.error
    failed = [e.data["detail"] for e in events if e.kind == "analysis_failed"]
    assert failed and "50.00%" in failed[0]
    verdicts = [e.data for e in events if e.kind == "verdict"]
    assert verdicts and all(v["metric_kind"] == "proportion" for v in verdicts)


@pytest.mark.parametrize("judge", ["statistical", "threshold"])
def test_the_snapshot_keeps_each_verdict_as_its_event_said_it(judge: str) -> None:
    """What ``status``, ``attach`` and a late TUI read: the statistics (p-value, effect,
    samples had/needed), the round's score and band and the failing count, not the bare
    verdict (before: ``Verdict.to_json()`` only); the raw samples stay in the events."""
    fleet, plugins = _fleet_with_metric(50, "critical = true\n", judge=judge)
    engines: list[Engine] = []
    _, events = _run(fleet, plugins, engines)
    last = next(e.data for e in reversed(events)
                if e.kind == "verdict" and e.data["metric"] == "failures")
    shown = engines[0].snapshot()["verdicts"]["failures"]
    assert shown == {k: v for k, v in last.items() if k != "raw"}
    # the failing count that ended it: 1 of 1 (critical, statistical), 2 of 2 (threshold)
    assert shown["consecutive"] == shown["limit"] >= 1 and "raw" not in shown
    if judge == "statistical":
        assert shown["judge"] == "statistical" and shown["band"] == "fail"
        assert shown["score"] == 0.0 and shown["stats"]["tests"]
        assert shown["stats"]["needed"] is not None and shown["window"]["canary"] >= 1
    json.dumps(shown)       # the control API sends it as it is


def test_verdict_describe_uses_the_metric_kind() -> None:
    from upgrader.events import Verdict

    slow = Verdict("slow_requests", "fail", 31.0, 5.0, 200, 1.5, "", "proportion")
    assert slow.describe() == ("slow_requests FAIL: 31.00% (limit 5.00%, 200 samples, "
                               "old release 1.50%)")
    value = Verdict("queue_depth", "fail", 31.0, 5.0, 200, 1.5, "", "value")
    assert value.describe().startswith("queue_depth FAIL: 31 (limit 5, ")
    assert Verdict("error_rate", "fail", 2.0, 1.0, 50).describe().startswith(
        "error_rate FAIL: 2.00% (limit 1.00%")
    assert slow.to_json()["metric_kind"] == "proportion"


def test_a_hold_never_ends_on_a_failing_verdict() -> None:
    """A failure not yet ``consecutive_failures`` in a row at the end of a hold keeps the hold
    until the next round: the rollout rolls back instead of completing with a failing last
    verdict (bench/analysis.py saw a +5 % canary complete so, p = 0.00099)."""
    completed_on_a_fail = []
    failed_at_all = 0
    for after in range(1, 16):
        fleet, plugins = _fleet_with_metric(50, f"after = {after}\n")
        result, events = _run(fleet, plugins)
        verdicts = [e.data for e in events if e.kind == "verdict"]
        if any(v["result"] == "fail" for v in verdicts):
            failed_at_all += 1
            if result.outcome is not Outcome.ROLLED_BACK:
                completed_on_a_fail.append((after, result.outcome, verdicts[-1]["result"]))
    assert failed_at_all >= 3
    assert completed_on_a_fail == []
