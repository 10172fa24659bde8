"""Deploy windows in the engine, in virtual time: a rollout starts, and each wave begins, only
while a team is on duty; a wave that cannot finish before the window closes waits; at the end
of a window the rollout pauses (it does not fail) and goes on at the next opening; teams hand
over; an override is journaled; the weeks of daylight-saving changes keep their hours."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any, NoReturn

from upgrader import strategies
from upgrader.clock import LoopClock, run_virtual
from upgrader.engine.core import Engine, Providers
from upgrader.errors import ConfigError
from upgrader.events import Outcome, RolloutState
from upgrader.journal import Journal
from upgrader.model import StrategySpec, Timing, VerifySpec
from upgrader.plan import Gate, Plan, UpgradeHosts, Verify
from upgrader.policy import calendar, parse_windows, with_window_gates
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport
from upgrader.rollout import compile_plan

UTC = UTC
COMMAND_S = 600.0            # virtual seconds per host command: stop, install, start = 30 min


BERLIN = {"name": "berlin", "timezone": "Europe/Berlin", "hours": {"mon-fri": "09:00-17:00"}}
NEW_YORK = {"name": "newyork", "timezone": "America/New_York",
            "hours": {"mon-fri": "11:00-19:00"}}


class PathWhere:
    def error(self, path: Any, message: str) -> NoReturn:
        raise ConfigError(message, key=".".join(str(p) for p in path))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def windows(*teams: dict, **extra: Any):
    return parse_windows({"teams": list(teams), **extra}, PathWhere())


def fleet_for(fleet_factory, n: int, *, host_estimate: float = 3 * COMMAND_S, win=None):
    fleet = fleet_factory(n, zones=None)
    return dataclasses.replace(
        fleet, windows=win,
        verify=VerifySpec(for_=600.0, interval=60.0, no_data="pass", min_requests=0),
        timing=Timing(host_upgrade=host_estimate, health_timeout=60.0, drain_timeout=10.0))


def plan_of(fleet, *waves_hosts: tuple[int, ...], parallel: int = 1) -> Plan:
    """Waves of hosts (by index), each: upgrade (one at a time), verify 10 minutes."""
    names = [h.name for h in fleet.main_hosts]
    steps: list[Any] = []
    for wave, indexes in enumerate(waves_hosts):
        steps.append(UpgradeHosts(tuple(names[i] for i in indexes), max_parallel=parallel,
                                  wave=wave))
        steps.append(Verify(600.0, wave=wave))
    return with_window_gates(Plan(strategy="rolling", steps=tuple(steps),
                                  total_hosts=len(names)))


def run(fleet, plan, start: datetime, *, during=None, journal=None, **engine_kw):
    providers = Providers(NoopTransport(delay=COMMAND_S), NoopBalancer(), NoopHealthCheck())

    async def main():
        for host in fleet.main_hosts:
            await providers.balancer.set_backend(host.name, address=host.address,
                                                 port=host.port, pool=fleet.releases.current)
        engine = Engine(fleet, plan, providers, clock=LoopClock(wall_origin=start.timestamp()),
                        journal=journal, **engine_kw)
        events: list = []
        engine.subscribe(events.append)
        helper = asyncio.ensure_future(during(engine)) if during else None
        result = await engine.run()
        if helper:
            helper.cancel()
        return engine, result, events

    return run_virtual(main)


def at(event) -> datetime:
    return datetime.fromtimestamp(event.ts, UTC)


def installs(events) -> list[tuple[str, datetime]]:
    """(host, when) of every install of the target release."""
    return [(e.data["host"], at(e)) for e in events
            if e.kind == "host_phase" and e.data["phase"] == "installing"
            and e.data["mode"] == "upgrade"]


def first_touch(events) -> datetime:
    """When the first host's procedure began (it drains and stops before installing)."""
    return min(at(e) for e in events if e.kind == "host_phase")


def of(events, kind: str) -> list:
    return [e for e in events if e.kind == kind]


# --------------------------------------------------------------------------------------------


def test_start_outside_the_window_touches_nothing_until_the_opening(fleet_factory):
    fleet = fleet_for(fleet_factory, 2, win=windows(BERLIN))
    saturday = utc(2026, 1, 10, 12)
    engine, result, events = run(fleet, plan_of(fleet, (0,), (1,)), saturday)
    assert result.outcome is Outcome.COMPLETED
    closed = of(events, "window_closed")[0]
    assert closed.data["until"] == "2026-01-12T08:00:00+00:00"
    assert "resumes at 2026-01-12 08:00 UTC (Mon 2026-01-12 09:00 CET Europe/Berlin" \
        in closed.data["reason"]
    paused = [e for e in events if e.kind == "state" and e.data["state"] == "PAUSED"]
    assert paused and "outside the deploy window" in paused[0].data["reason"]
    # nothing happened to a host before Monday 09:00 Berlin time
    assert first_touch(events) == utc(2026, 1, 12, 8)
    opened = of(events, "window_opened")[0]
    assert at(opened) == utc(2026, 1, 12, 8) and opened.data["teams"] == ["berlin"]


def test_a_wave_that_cannot_finish_before_the_window_closes_waits_for_the_next_opening(
        fleet_factory):
    fleet = fleet_for(fleet_factory, 3, win=windows(BERLIN))
    # Monday 15:00 UTC (16:00 CET): an hour left; each wave needs 30 + 10 minutes
    engine, result, events = run(fleet, plan_of(fleet, (0,), (1,), (2,)), utc(2026, 1, 12, 15))
    assert result.outcome is Outcome.COMPLETED
    times = dict(installs(events))
    assert times["web-0001"] < utc(2026, 1, 12, 15, 30)       # wave 0 fits: runs at once
    waits = of(events, "window_wait")
    assert [w.data["wave"] for w in waits] == [1]
    # wave 1 was ready at 15:40 UTC with 20 minutes left: it waited for Tuesday 09:00 CET
    assert at(waits[0]) == utc(2026, 1, 12, 15, 40)
    assert waits[0].data["until"] == "2026-01-13T08:00:00+00:00"
    assert waits[0].data["need_s"] == 2400
    assert "window closes at 2026-01-12 16:00 UTC" in waits[0].data["reason"]
    assert utc(2026, 1, 13, 8) <= times["web-0002"] < utc(2026, 1, 13, 8, 30)
    waiting = [e for e in events if e.kind == "state" and e.data["state"] == "WAITING"
               and "wave 1" in e.data["reason"]]
    assert waiting


def test_the_rollout_pauses_at_the_end_of_the_window_and_resumes_at_the_next_opening(
        fleet_factory):
    # the estimate says 10 minutes a host, but a host takes 30: the wave overruns the window
    fleet = fleet_for(fleet_factory, 4, host_estimate=COMMAND_S, win=windows(BERLIN))
    plan = plan_of(fleet, (0, 1, 2, 3))
    states: list[tuple[datetime, str]] = []

    async def watch(engine):
        while True:
            states.append((datetime.fromtimestamp(engine.clock.wall(), UTC), engine.state.value))
            await asyncio.sleep(60)

    engine, result, events = run(fleet, plan, utc(2026, 1, 12, 15, 10), during=watch)
    assert result.outcome is Outcome.COMPLETED and result.error is None
    closed = of(events, "window_closed")
    assert len(closed) == 1
    # the host under way at 16:00 UTC finished; the next one waited for Tuesday's opening
    assert utc(2026, 1, 12, 16) <= at(closed[0]) <= utc(2026, 1, 12, 16, 10)
    assert closed[0].data["until"] == "2026-01-13T08:00:00+00:00"
    starts = [when for _, when in installs(events)]
    assert all(not utc(2026, 1, 12, 16) <= t < utc(2026, 1, 13, 8) for t in starts)
    assert sum(t < utc(2026, 1, 12, 16) for t in starts) == 2
    night = [s for t, s in states if utc(2026, 1, 12, 17) <= t < utc(2026, 1, 13, 7)]
    assert night and set(night) == {RolloutState.PAUSED.value}
    assert at(of(events, "window_opened")[0]) == utc(2026, 1, 13, 8)
    assert not of(events, "rollback_started")


def test_follow_the_sun_handover_does_not_pause(fleet_factory):
    fleet = fleet_for(fleet_factory, 6, win=windows(BERLIN, NEW_YORK))
    # Monday 15:00 UTC: Berlin hands over to New York at 16:00 UTC, which works until 00:00
    engine, result, events = run(fleet, plan_of(fleet, (0, 1, 2), (3, 4, 5)),
                                 utc(2026, 1, 12, 15))
    assert result.outcome is Outcome.COMPLETED
    assert not of(events, "window_closed") and not of(events, "window_wait")
    finished = at(of(events, "rollout_finished")[0])
    assert finished < utc(2026, 1, 12, 19)
    # Berlin alone would have waited for Tuesday
    alone = fleet_for(fleet_factory, 6, win=windows(BERLIN))
    _, _, events = run(alone, plan_of(alone, (0, 1, 2), (3, 4, 5)), utc(2026, 1, 12, 15))
    assert of(events, "window_wait")


def test_override_runs_outside_the_window_and_is_journaled(fleet_factory, tmp_path):
    fleet = fleet_for(fleet_factory, 2, win=windows(BERLIN))
    journal = Journal(tmp_path / "journal.sqlite")
    try:
        engine, result, events = run(fleet, plan_of(fleet, (0,), (1,)), utc(2026, 1, 10, 12),
                                     journal=journal, override_window="hotfix INC-4711")
        assert result.outcome is Outcome.COMPLETED
        assert installs(events)[0][1] < utc(2026, 1, 10, 13)       # Saturday: no wait
        override = of(events, "window_override")
        assert override and override[0].data == {"reason": "hotfix INC-4711", "open": False}
        entries = journal.entries(result.rollout)
        recorded = [e for e in entries if e.kind == "window_override"]
        assert recorded and recorded[0].data["reason"] == "hotfix INC-4711"
    finally:
        journal.close()


def test_override_control_wakes_a_held_rollout(fleet_factory):
    fleet = fleet_for(fleet_factory, 2, win=windows(BERLIN))

    async def override_soon(engine):
        await asyncio.sleep(3600)
        assert engine.state is RolloutState.PAUSED
        assert engine.window_info()["opens"] == "2026-01-12T08:00:00+00:00"
        engine.override_window("customer outage, approved by on-call")

    engine, result, events = run(fleet, plan_of(fleet, (0,), (1,)), utc(2026, 1, 10, 12),
                                 during=override_soon)
    assert result.outcome is Outcome.COMPLETED
    assert first_touch(events) == utc(2026, 1, 10, 13)
    assert of(events, "window_override")[0].data["reason"] == \
        "customer outage, approved by on-call"


def test_operator_pause_during_a_window_hold_is_kept_after_the_opening(fleet_factory):
    fleet = fleet_for(fleet_factory, 1, win=windows(BERLIN))
    marks: dict[str, Any] = {}

    async def operator(engine):
        await asyncio.sleep(3600)
        engine.pause()
        assert engine.state_reason == "paused by operator"
        await asyncio.sleep(2 * 86400)             # past Monday's opening
        marks["state"] = engine.state
        marks["installs"] = len(installs(events_ref))
        engine.resume()

    events_ref: list = []

    async def during(engine):
        engine.subscribe(events_ref.append)
        await operator(engine)

    engine, result, events = run(fleet, plan_of(fleet, (0,)), utc(2026, 1, 10, 12),
                                 during=during)
    assert result.outcome is Outcome.COMPLETED
    assert marks == {"state": RolloutState.PAUSED, "installs": 0}
    assert first_touch(events) == utc(2026, 1, 12, 13)          # when the operator resumed


def test_roll_back_does_not_wait_for_a_window(fleet_factory):
    fleet = fleet_for(fleet_factory, 2, host_estimate=COMMAND_S, win=windows(BERLIN))

    async def abort_at_night(engine):
        while not of(engine.history, "window_closed"):
            await asyncio.sleep(60)
        engine.abort(rollback=True)

    engine, result, events = run(fleet, plan_of(fleet, (0, 1)), utc(2026, 1, 12, 15, 30),
                                 during=abort_at_night)
    assert result.outcome is Outcome.ROLLED_BACK
    assert at(of(events, "rollout_finished")[0]) < utc(2026, 1, 12, 18)


def test_the_dst_week_matches_the_plan_calendar(fleet_factory):
    """Europe/Berlin springs forward on 2026-03-29: Friday opens at 08:00 UTC, Monday at
    07:00 UTC; each wave fills most of a day. The engine keeps the calendar's times."""
    fleet = fleet_for(fleet_factory, 14, win=windows(BERLIN))
    plan = plan_of(fleet, *[tuple(range(i, i + 7)) for i in (0, 7)])    # 3h40m per wave
    start = utc(2026, 3, 27, 12)                                         # Friday 13:00 CET
    engine, result, events = run(fleet, plan, start)
    assert result.outcome is Outcome.COMPLETED
    predicted = calendar(plan, fleet.timing, fleet.windows, start)
    wave_starts = {}
    for event in events:
        if event.kind == "step_started" and event.data["step"] == "upgrade_hosts":
            wave_starts.setdefault(plan.steps[event.data["index"]].wave, at(event))
    assert wave_starts == {0: utc(2026, 3, 27, 12), 1: utc(2026, 3, 30, 7)}
    assert [s.start for s in predicted] == [wave_starts[0], wave_starts[1]]
    finished = at(of(events, "rollout_finished")[0])
    assert abs((finished - predicted[-1].end).total_seconds()) < 120


def test_the_new_york_fall_back_week(fleet_factory):
    """America/New_York falls back on 2026-11-01: Friday opens at 15:00 UTC (EDT), Monday
    at 16:00 UTC (EST)."""
    fleet = fleet_for(fleet_factory, 14, win=windows(NEW_YORK))
    plan = plan_of(fleet, *[tuple(range(i, i + 7)) for i in (0, 7)])
    engine, result, events = run(fleet, plan, utc(2026, 10, 30, 20))   # Friday 16:00 EDT
    assert result.outcome is Outcome.COMPLETED
    wave_starts = [at(e) for e in events
                   if e.kind == "step_started" and e.data["step"] == "upgrade_hosts"]
    assert wave_starts == [utc(2026, 11, 2, 16), utc(2026, 11, 2, 19, 40)]


def test_compile_plan_gates_each_wave_of_a_fleet_with_windows(fleet_factory):
    fleet = fleet_for(fleet_factory, 4, win=windows(BERLIN))
    rolling = strategies.get("rolling")
    fleet = dataclasses.replace(fleet, strategy=StrategySpec("rolling", rolling.default_params()))
    plan = compile_plan(fleet)
    gates = [s for s in plan.steps if isinstance(s, Gate) and s.gate == "deploy_window"]
    assert gates and len(gates) == len({s.wave for s in plan.steps
                                        if isinstance(s, UpgradeHosts)})
    plain = compile_plan(dataclasses.replace(fleet, windows=None))
    assert not any(isinstance(s, Gate) for s in plain.steps)
