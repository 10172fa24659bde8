"""Plan arithmetic: step durations, estimates, roll-back estimates, waves and their blast
radius, and the JSON form of every step kind."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from upgrader import strategies
from upgrader.model import Timing
from upgrader.plan import (
    STEP_TYPES,
    Gate,
    Maintenance,
    Pause,
    Plan,
    PrepareSlots,
    Route,
    SetFlag,
    SetTraffic,
    SwapSlots,
    TurnDown,
    UpgradeHosts,
    Verify,
    dumps,
    estimate,
    step_duration,
    step_from_json,
    step_to_json,
    waves,
)

H = Timing(host_upgrade=10.0, drain_timeout=5.0)


def names(n: int) -> tuple[str, ...]:
    return tuple(f"h{i}" for i in range(n))


def test_upgrade_duration_in_batches():
    assert step_duration(UpgradeHosts(names(5), max_parallel=2), H) == 30.0
    assert step_duration(UpgradeHosts(names(5)), H) == 10.0
    assert step_duration(UpgradeHosts(()), H) == 0.0


def test_paced_upgrade_duration():
    # a start every second; without a parallel limit the last starts after 4 s
    assert step_duration(UpgradeHosts(names(5), start_interval=1.0), H) == 14.0
    # two in flight at most: starts 0, 1, 10, 11, 20 -> done at 30
    assert step_duration(UpgradeHosts(names(5), max_parallel=2, start_interval=1.0), H) == 30.0
    # slow pace: the limit never binds
    assert step_duration(UpgradeHosts(names(3), max_parallel=1, start_interval=60.0), H) == 130.0


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 200), parallel=st.integers(1, 50), interval=st.floats(0.01, 100))
def test_paced_duration_bounds(n, parallel, interval):
    got = step_duration(UpgradeHosts(names(n), max_parallel=parallel, start_interval=interval), H)
    p = min(n, parallel)
    assert got >= (n - 1) * interval + H.host_upgrade - 1e-6
    assert got >= -(-n // p) * H.host_upgrade - 1e-6
    assert got <= (n - 1) * interval + -(-n // p) * H.host_upgrade + 1e-6


def test_other_step_durations():
    assert step_duration(Verify(for_=42.0), H) == 42.0
    assert step_duration(Pause(7.0), H) == 7.0
    assert step_duration(Pause(None), H) == 0.0
    assert step_duration(Gate("system_test"), H) == 60.0
    assert step_duration(SwapSlots(names(3)), H) == 1.0
    assert step_duration(TurnDown(names(3)), H) == 5.0
    assert step_duration(TurnDown(()), H) == 0.0
    assert step_duration(SetTraffic((("target", 5.0),)), H) == 0.0


def test_estimate_starts_total_and_promotions():
    plan = Plan("x", (UpgradeHosts(names(2), max_parallel=1, wave=1), Verify(5.0, wave=1),
                      Pause(None, wave=1), UpgradeHosts(("h9",), wave=2)),
                total_hosts=3)
    est = estimate(plan, H)
    assert est.step_starts == (0.0, 20.0, 25.0, 25.0)
    assert est.total_s == 35.0
    assert est.waits_for_promotion == 1


@pytest.mark.parametrize("mode,parallel,expected", [
    ("reinstall", 1, 40.0), ("reinstall", 4, 10.0), ("reinstall", 3, 20.0),
    ("swap", 1, 1.0), ("traffic", 1, 6.0)])
def test_rollback_estimate(mode, parallel, expected):
    plan = Plan("x", (UpgradeHosts(names(4)),), total_hosts=4, rollback_parallel=parallel,
                rollback_mode=mode)
    assert estimate(plan, H).rollback_s == expected


def test_waves_sum_pauses_and_keep_until_promoted():
    plan = Plan("x", (UpgradeHosts(("a",), wave=1), Pause(10.0, wave=1), Pause(5.0, wave=1),
                      UpgradeHosts(("b",), wave=2), Pause(None, wave=2), Pause(3.0, wave=2)),
                total_hosts=2)
    first, second = waves(plan, H)
    assert first.pause == 15.0 and second.pause is None
    assert first.start_s == 0.0 and first.duration_s == 25.0
    assert second.start_s == 25.0
    assert (first.hosts_done, second.hosts_done) == (1, 2)
    assert (first.blast_radius, second.blast_radius) == (50.0, 100.0)


def test_waves_maintenance_hides_the_upgrade_from_users():
    plan = Plan("x", (Maintenance(True, wave=1), UpgradeHosts(names(4), wave=1),
                      Maintenance(False, wave=2)), total_hosts=4)
    first, second = waves(plan, H)
    assert first.blast_radius == 0.0 and first.hosts_done == 4
    assert second.blast_radius == 100.0


def test_waves_traffic_split_sets_the_blast_radius():
    plan = Plan("x", (SetTraffic((("current", 100.0), ("target", 0.0)), wave=1),
                      UpgradeHosts(names(4), wave=1),
                      SetTraffic((("current", 75.0), ("target", 25.0)), wave=2),
                      TurnDown(("o1", "o2"), wave=3), SetTraffic((("target", 100.0),), wave=3)),
                total_hosts=4)
    shown = waves(plan, H)
    assert [w.blast_radius for w in shown] == [0.0, 25.0, 100.0]
    assert [w.hosts for w in shown] == [4, 0, 2]


def test_waves_group_routing_uses_the_groups_share():
    plan = Plan("x", (Route((), "current", share=0.0, wave=1), UpgradeHosts(names(1), wave=1),
                      Route(("beta",), "current", share=2.0, wave=1),
                      UpgradeHosts(names(3)[1:], wave=2),
                      Route(("beta", "staff"), "current", share=None, wave=2),
                      Route((), None, wave=3), UpgradeHosts(("h3",), wave=3)),
                total_hosts=4)
    shown = waves(plan, H)
    assert [w.blast_radius for w in shown] == [2.0, 75.0, 100.0]
    assert "share of users unknown" in shown[1].label
    assert "at least 2% of users" in shown[0].label


def test_waves_blue_green_counts_swaps_not_preparation():
    plan = Plan("x", (PrepareSlots(names(4), wave=1), Gate("system_test", names(4), True, wave=1),
                      SwapSlots(names(2), wave=2), SwapSlots(names(4)[2:], wave=3)),
                total_hosts=4)
    shown = waves(plan, H)
    assert [(w.hosts, w.hosts_done, w.blast_radius) for w in shown] == [
        (4, 0, 0.0), (2, 2, 50.0), (2, 4, 100.0)]


EVERY_STEP = (
    UpgradeHosts(("a", "b"), max_parallel=1, start_interval=2.5, drain=False, wave=1),
    PrepareSlots(("a",), max_parallel=None, wave=2),
    SwapSlots(("a",), wave=3),
    SetTraffic((("current", 95.0), ("target", 5.0)), wave=4),
    Route(("beta", "staff"), default="current", share=1.5, wave=5),
    Route((), default=None, wave=5),
    Verify(for_=60.0, wave=6),
    Pause(None, wave=6),
    Pause(600.0, wave=6),
    Gate("system_test", hosts=("a",), slots=True, wave=7),
    Maintenance(on=True, retry_after=120, wave=8),
    TurnDown(("o",), wave=9),
    SetFlag("new-checkout", on=True, percent=5.0, wave=10),
)


def test_every_step_kind_is_covered():
    assert {type(s) for s in EVERY_STEP} == set(STEP_TYPES.values())


@pytest.mark.parametrize("step", EVERY_STEP, ids=lambda s: s.kind)
def test_step_json_round_trip(step):
    data = json.loads(json.dumps(step_to_json(step)))
    assert data["kind"] == step.kind
    assert step_from_json(data) == step


def test_plan_json_round_trip_and_stable_text():
    plan = Plan("x", EVERY_STEP, total_hosts=2, rollback_parallel=2, rollback_mode="swap",
                notes=("a note",))
    assert Plan.from_json(json.loads(dumps(plan))) == plan
    assert dumps(plan) == dumps(Plan.from_json(plan.to_json()))


@pytest.mark.parametrize("name", strategies.HOST_STRATEGIES)
def test_strategy_plans_round_trip(name, fleet_factory):
    module = strategies.get(name)
    fleet = fleet_factory(20, new=20 if name == "shedding" else 0, slots=name == "bluegreen",
                          groups=("beta", "staff"))
    plan = module.compile(fleet, module.default_params())
    assert Plan.from_json(json.loads(dumps(plan))) == plan
