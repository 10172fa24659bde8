"""The threshold judge's hold never ends on a failing streak (issue 14): a metric failing
``k`` rounds in a row (``k < consecutive_failures = N``) when a ``Verify`` hold ends keeps the
hold judging for at most ``N - k`` more rounds; a passing round goes on, the ``N``-th failure
rolls back before the next wave starts; no streak, no extension. Virtual time, the engine with
the no-op providers and scripted traffic: the target release's errors in each analysis round
follow a script indexed by the ``error_rate`` verdicts emitted so far."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from typing import Any

from upgrader import strategies
from upgrader.clock import LoopClock, run_virtual
from upgrader.engine.core import Engine, Providers
from upgrader.events import Outcome
from upgrader.model import StrategySpec, Timing, VerifySpec
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport

DELAY = 5.0
N = 3           # consecutive_failures
INTERVAL = 10.0
HOLD = 30.0


def _fleet(fleet_factory: Any, **verify: Any) -> Any:
    fleet = fleet_factory(3)
    module = strategies.get("rolling")
    spec = VerifySpec(for_=HOLD, interval=INTERVAL, no_data="pass", min_requests=10,
                      consecutive_failures=N, health=False)
    return dataclasses.replace(
        fleet, strategy=StrategySpec("rolling", module.default_params()),
        verify=dataclasses.replace(spec, **verify),
        timing=Timing(host_upgrade=3 * DELAY, health_timeout=20.0, drain_timeout=10.0))


def _run(fleet: Any, bad_rounds: set[int],
         quiet_rounds: frozenset[int] = frozenset(),
         broken_round: int | None = None) -> tuple[Any, list[Any]]:
    """Run the rollout; the target release's requests fail (3 in 10) while the number of
    ``error_rate`` verdicts already emitted is in ``bad_rounds`` (0: the first judged
    round); in ``quiet_rounds`` nobody sends a request; the analysis of the round that
    would give the ``broken_round``-th verdict cannot run (its health check raises)."""
    events: list[Any] = []

    class Health(NoopHealthCheck):
        broke = False

        async def check(self, host: Any, *, port: int | None = None) -> Any:
            judged = len(_verdicts(events))
            verifying = [e for e in events if e.kind == "state"][-1].data["state"] == \
                "VERIFYING"
            if judged == broken_round and verifying and not self.broke:
                self.broke = True
                raise RuntimeError("health endpoint garbled")
            return await super().check(host, port=port)

    async def main() -> tuple[Any, list[Any]]:
        providers = Providers(NoopTransport(delay=DELAY), NoopBalancer(), Health())
        balancer = providers.balancer
        for host in fleet.main_hosts:
            await balancer.set_backend(host.name, address=host.address, port=host.port,
                                       pool=fleet.releases.current)
        plan = strategies.get("rolling").compile(fleet, fleet.strategy.params)
        clock = LoopClock()
        engine = Engine(fleet, plan, providers, clock=clock)
        engine.subscribe(events.append)

        async def traffic() -> None:
            target = fleet.releases.target
            while True:
                await asyncio.sleep(1.0)
                judged = sum(1 for e in events if e.kind == "verdict"
                             and e.data["metric"] == "error_rate")
                if judged in quiet_rounds:
                    continue
                for name, backend in (await balancer.state()).backends.items():
                    if backend.state == "ready":
                        bad = backend.pool == target and judged in bad_rounds
                        balancer.record(name, requests=10, errors=3 if bad else 0)

        helper = asyncio.ensure_future(traffic())
        result = await engine.run()
        helper.cancel()
        return result, events

    return run_virtual(main)


def _verdicts(events: list[Any]) -> list[Any]:
    return [e for e in events if e.kind == "verdict" and e.data["metric"] == "error_rate"]


def _first_hold_end(events: list[Any]) -> tuple[int, float]:
    """The number of error_rate verdicts before the first hold's timer ran out, and when."""
    start = next(e for e in events if e.kind == "state" and e.data["state"] == "VERIFYING")
    end = start.ts + HOLD
    return sum(1 for e in _verdicts(events) if e.ts <= end), end


def _upgrade_starts(events: list[Any]) -> list[tuple[str, float]]:
    seen: dict[str, float] = {}
    for e in events:
        if e.kind == "host_phase" and e.data.get("mode") == "upgrade":
            seen.setdefault(e.data["host"], e.ts)
    return sorted(seen.items(), key=lambda item: item[1])


def _extended(events: list[Any]) -> list[str]:
    return [e.data["message"] for e in events if e.kind == "log"
            and e.data.get("hold_extended") is not None]


def test_no_streak_no_extension(fleet_factory: Any) -> None:
    """A good release: no failing round, no extension, the same timing as before."""
    fleet = _fleet(fleet_factory)
    result, events = _run(fleet, set())
    assert result.outcome is Outcome.COMPLETED, result.error
    assert _extended(events) == []
    assert not any(e.data["result"] == "fail" for e in _verdicts(events))
    # a blip in the middle of the hold (then passes before it ends) changes nothing either
    rounds, _ = _first_hold_end(events)
    blip, blip_events = _run(fleet, {rounds - 2})
    assert blip.outcome is Outcome.COMPLETED, blip.error
    assert [v.data["result"] for v in _verdicts(blip_events)][rounds - 2] == "fail"
    assert _extended(blip_events) == []
    assert blip.duration_s == result.duration_s
    assert [h for h, _ in _upgrade_starts(blip_events)] == [h for h, _ in _upgrade_starts(events)]
    assert [t for _, t in _upgrade_starts(blip_events)] == [t for _, t in _upgrade_starts(events)]


def test_a_streak_at_the_hold_end_that_passes_proceeds_one_round_later(
        fleet_factory: Any) -> None:
    fleet = _fleet(fleet_factory)
    good, good_events = _run(fleet, set())
    rounds, end = _first_hold_end(good_events)
    # the last round of the first hold fails (1 of 3 in a row); the next passes
    result, events = _run(fleet, {rounds - 1})
    assert result.outcome is Outcome.COMPLETED, result.error
    verdicts = _verdicts(events)
    assert [v.data["result"] for v in verdicts[:rounds + 1]] == \
        ["pass"] * (rounds - 1) + ["fail", "pass"]
    assert verdicts[rounds - 1].data["consecutive"] == 1
    said = _extended(events)
    assert said[0] == ("hold extended: error_rate failing 1 of 3 in a row; judging up to 2 "
                       "more round(s): a pass goes on, 3 in a row fails"), said
    assert said[1].startswith("hold extension ended: error_rate passing again after 1 more "
                              "round(s)"), said
    # the second host starts only after the passing round, one round later than without it
    starts, good_starts = _upgrade_starts(events), _upgrade_starts(good_events)
    second = starts[1][1]
    passed = verdicts[rounds].ts
    assert passed <= second
    assert good_starts[1][1] < second <= good_starts[1][1] + INTERVAL
    assert result.duration_s > good.duration_s


def test_a_streak_that_completes_fails_before_the_next_wave(fleet_factory: Any) -> None:
    fleet = _fleet(fleet_factory)
    _, good_events = _run(fleet, set())
    rounds, _ = _first_hold_end(good_events)
    # failing from the last round of the hold on: 1 of 3 at its end, 3 of 3 two rounds later
    result, events = _run(fleet, set(range(rounds - 1, rounds + 10)))
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    assert "3 in a row" in (result.error or "")
    fails = [v.data["consecutive"] for v in _verdicts(events) if v.data["result"] == "fail"]
    assert fails == [1, 2, 3]
    assert [h for h, _ in _upgrade_starts(events)] == [fleet.main_hosts[0].name]
    assert _extended(events)[0].startswith("hold extended: error_rate failing 1 of 3")
    assert len(_extended(events)) == 1       # no "extension ended": it failed


def test_a_streak_of_two_gets_one_more_round(fleet_factory: Any) -> None:
    """k = 2 of N = 3: one more round; it fails, the rollout rolls back at 3 in a row."""
    fleet = _fleet(fleet_factory)
    _, good_events = _run(fleet, set())
    rounds, _ = _first_hold_end(good_events)
    result, events = _run(fleet, {rounds - 2, rounds - 1, rounds})
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    assert _extended(events)[0].startswith("hold extended: error_rate failing 2 of 3 in a "
                                           "row; judging up to 1 more round(s)")
    assert [h for h, _ in _upgrade_starts(events)] == [fleet.main_hosts[0].name]


def test_a_streak_still_standing_when_the_rounds_are_spent_fails(fleet_factory: Any) -> None:
    """``no_data = "wait"``: rounds without traffic neither fail nor pass; the streak still
    stands after its ``N - k`` rounds, and the rollout fails rather than widen on it."""
    fleet = _fleet(fleet_factory, no_data="wait")
    good, good_events = _run(fleet, set())
    assert good.outcome is Outcome.COMPLETED, good.error
    rounds, _ = _first_hold_end(good_events)
    result, events = _run(fleet, {rounds - 1}, frozenset(range(rounds, rounds + 10)))
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    assert result.error == ("verification: error_rate (1 of 3 in a row) still failing after 2 "
                            "more round(s) of an extended hold"), result.error
    assert [v.data["result"] for v in _verdicts(events)][rounds - 1:rounds + 2] == \
        ["fail", "no_data", "no_data"]
    assert [h for h, _ in _upgrade_starts(events)] == [fleet.main_hosts[0].name]


def test_a_stale_counter_is_no_streak(fleet_factory: Any) -> None:
    """One round whose analysis could not run (``no_data = "fail"``: the ``analysis``
    counter stands at 1 and nothing judges ``analysis`` again) early in the first hold:
    the later rounds pass, the hold ends without extension and the rollout completes on
    the same timing as without the broken round."""
    fleet = _fleet(fleet_factory, no_data="fail", health=True)
    good, good_events = _run(fleet, set())
    assert good.outcome is Outcome.COMPLETED, good.error
    result, events = _run(fleet, set(), broken_round=0)
    assert result.outcome is Outcome.COMPLETED, result.error
    broken = [e.data for e in events if e.kind == "verdict" and e.data["metric"] == "analysis"]
    assert len(broken) == 1 and broken[0]["consecutive"] == 1, broken
    assert _extended(events) == []
    assert result.duration_s == good.duration_s


def test_headless_prints_the_extension(fleet_factory: Any) -> None:
    from upgrader.headless import HeadlessDisplay, stderr_console

    fleet = _fleet(fleet_factory)
    _, good_events = _run(fleet, set())
    rounds, _ = _first_hold_end(good_events)
    _, events = _run(fleet, {rounds - 1})
    out = io.StringIO()
    display = HeadlessDisplay(total_hosts=3, target="1.1.0", console=stderr_console(out),
                              quiet=False)
    for event in events:
        display(event)
    text = out.getvalue()
    assert "hold extended: error_rate failing 1 of 3 in a row" in text, text
    assert "hold extension ended: error_rate passing again" in text, text


def test_analysis_show_prints_the_extension_between_its_rounds(fleet_factory: Any,
                                                                tmp_path: Any,
                                                                capsys: Any) -> None:
    """The journal keeps the extension (a ``log`` event with ``hold_extended``);
    ``analysis show`` prints it where it happened, ``--json`` stays the verdicts alone."""
    import json

    from test_verify_metrics import BASE

    from upgrader import cli
    from upgrader.journal import Journal

    fleet = _fleet(fleet_factory)
    _, good_events = _run(fleet, set())
    rounds, _ = _first_hold_end(good_events)
    result, events = _run(fleet, {rounds - 1})
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
    assert cli.main(["analysis", "show", str(file), "--state-dir", str(state)]) == 0
    lines = capsys.readouterr().out.splitlines()
    extended = next(i for i, line in enumerate(lines) if "hold extended:" in line)
    ended = next(i for i, line in enumerate(lines) if "hold extension ended:" in line)
    assert "error_rate FAIL" in lines[extended - 1], lines
    assert lines[extended + 1].startswith("round "), lines
    assert "error_rate PASS" in lines[extended + 2] and extended + 2 < ended, lines
    assert cli.main(["analysis", "show", str(file), "--json", "--state-dir", str(state)]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert shown and all(line["metric"] == "error_rate" for line in shown)
