"""The six strategies as pure compilers: every host exactly once, determinism, the seed's
schedules and arithmetic, and parameter errors that name their key."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from upgrader import strategies
from upgrader.errors import ConfigError
from upgrader.model import Timing, UserGroup
from upgrader.plan import (
    Gate,
    Maintenance,
    Pause,
    Plan,
    PrepareSlots,
    Route,
    SetTraffic,
    SwapSlots,
    TurnDown,
    UpgradeHosts,
    Verify,
    estimate,
    waves,
)
from upgrader.units import format_duration

GROUPS = (UserGroup("staff", header_values=("staff",)), UserGroup("one", percent=0.1),
          UserGroup("some", percent=5.0), UserGroup("many", percent=50.0))


def fleet_for(make_fleet, name: str, n: int, **kw):
    """A fleet every strategy can compile: new cluster for shedding, slots for blue-green,
    user groups for phased."""
    if name == "shedding":
        kw.setdefault("new", n)
    if name == "bluegreen":
        kw.setdefault("slots", True)
    kw.setdefault("groups", GROUPS)
    return make_fleet(n, **kw)


def check_plan(plan: Plan, fleet, name: str) -> None:
    """The invariants every plan keeps."""
    main = [h.name for h in fleet.main_hosts]
    new = [h.name for h in fleet.new_hosts]
    assert plan.strategy == name
    upgraded = Counter(plan.upgraded_hosts())
    if name == "shedding":
        assert upgraded == Counter(new)
        turned_down = Counter(h for s in plan.steps if isinstance(s, TurnDown) for h in s.hosts)
        assert turned_down == Counter(main)
        assert plan.total_hosts == len(new)
    else:
        assert upgraded == Counter(main), "every main host upgraded exactly once"
        assert plan.total_hosts == len(main)
    if name == "bluegreen":
        swapped = Counter(h for s in plan.steps if isinstance(s, SwapSlots) for h in s.hosts)
        assert swapped == Counter(main)
    # waves: numbered from 1, in order, one more per group
    numbers = [s.wave for s in plan.steps]
    assert numbers == sorted(numbers)
    assert sorted(set(numbers)) == list(range(1, max(numbers) + 1))
    assert plan.rollback_parallel >= 1
    shown = waves(plan, Timing())
    assert shown[-1].blast_radius == 100.0
    assert shown[-1].hosts_done == plan.total_hosts
    radii = [w.blast_radius for w in shown if w.blast_radius > 0]
    assert radii == sorted(radii), "exposure only grows once users see the target release"
    est = estimate(plan, Timing())
    assert math.isfinite(est.total_s) and est.total_s > 0
    assert len(est.step_starts) == len(plan.steps)
    # JSON round trip, through real JSON text
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_has_the_six_strategies_in_the_seeds_order():
    assert strategies.HOST_STRATEGIES == ("takedown", "rolling", "canary", "phased", "shedding",
                                  "bluegreen")
    for name in strategies.HOST_STRATEGIES:
        module = strategies.get(name)
        assert name == module.NAME
        assert module.DESCRIPTION
        assert strategies.STRATEGIES[name] is module


def test_registry_unknown_name_is_a_key_error_naming_the_known_ones():
    with pytest.raises(KeyError, match="rolling"):
        strategies.get("yolo")


@pytest.mark.parametrize("name", strategies.HOST_STRATEGIES)
def test_empty_table_gives_the_default_params(name, where):
    module = strategies.get(name)
    assert module.parse_params({}, where) == module.default_params()


PURE_IMPORTS = {"__future__", "collections.abc", "dataclasses", "typing", "math", "types",
                "upgrader.units",
                "upgrader.model", "upgrader.plan", "upgrader.errors",
                "upgrader.strategies", "upgrader.strategies._common",
                "upgrader.strategies.base",
                # the checked-TOML toolkit's value checks (pure functions of a value)
                "upgrader.tomlsource"}


@pytest.mark.parametrize("name", [*strategies.names(), "_common"])
def test_strategy_modules_import_only_pure_modules(name):
    """No I/O, no clock, no randomness: no engine, providers, CLI, time, random or os."""
    import ast
    import importlib

    module = importlib.import_module(f"upgrader.strategies.{name}")
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "upgrader.strategies" if node.level == 1 else \
                "upgrader" if node.level == 2 else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            if node.module is None:     # from .. import units
                imported.update(f"{target}.{alias.name}" for alias in node.names)
            else:
                imported.add(target)
    assert imported <= PURE_IMPORTS, imported - PURE_IMPORTS


# ---------------------------------------------------------------------------------------------
# Every host exactly once, deterministically


@pytest.mark.parametrize("n", [1, 7, 100, 1000])
@pytest.mark.parametrize("name", strategies.HOST_STRATEGIES)
def test_default_plan_upgrades_every_host_exactly_once(name, n, fleet_factory):
    fleet = fleet_for(fleet_factory, name, n)
    module = strategies.get(name)
    plan = module.compile(fleet, module.default_params())
    check_plan(plan, fleet, name)
    assert module.compile(fleet, module.default_params()) == plan


def count_or_percent():
    return st.one_of(st.integers(1, 60), st.integers(1, 100).map(lambda p: f"{p}%"))


@st.composite
def params_tables(draw, name: str):
    """Random but valid ``[strategy]`` tables for ``name``."""
    table: dict = {}
    if draw(st.booleans()):
        table["pause"] = draw(st.sampled_from(["0s", "30s", "5m", "promote"]))
    if draw(st.booleans()):
        table["verify_for"] = draw(st.sampled_from([0, "10s", "2m"]))
    if draw(st.booleans()):
        table["rollback_parallel"] = draw(st.integers(1, 20))
    if name == "takedown":
        if draw(st.booleans()):
            table["max_parallel"] = draw(st.integers(1, 50))
        if draw(st.booleans()):
            table["retry_after"] = draw(st.sampled_from(["30s", "2m", 90]))
    elif name in ("rolling", "bluegreen"):
        table["batch"] = draw(st.one_of(count_or_percent(),
                                        st.lists(count_or_percent(), min_size=1, max_size=4)))
        if name == "rolling":
            if draw(st.booleans()):
                table["max_unavailable"] = draw(count_or_percent())
            if draw(st.booleans()):
                table["verify"] = draw(st.booleans())
        elif draw(st.booleans()):
            table["max_parallel"] = draw(st.integers(1, 50))
    elif name == "canary":
        untils = sorted(set(draw(st.lists(st.integers(1, 100), min_size=1, max_size=3))))
        steps = []
        if draw(st.booleans()):
            steps.append({"hosts": draw(st.integers(1, 60)), "pause": "10m"})
        for until in untils:
            step = {"rate": draw(st.sampled_from(["1/min", "1/s", "10/s", "3/30s"])),
                    "until": f"{until}%"}
            if draw(st.booleans()):
                step["pause"] = draw(st.sampled_from(["1m", "promote"]))
            steps.append(step)
            if draw(st.booleans()):
                steps.append({"pause": "2m"})
        if draw(st.booleans()):
            steps.append({"hosts": draw(count_or_percent()),
                          "max_parallel": draw(count_or_percent())})
        table["steps"] = steps
    elif name == "phased":
        groups = draw(st.lists(st.sampled_from([g.name for g in GROUPS]), min_size=1,
                               max_size=4, unique=True))
        table["groups"] = groups
        if draw(st.booleans()):
            table["capacity"] = sorted(draw(st.lists(st.integers(1, 300), min_size=len(groups),
                                                     max_size=len(groups))))
        if draw(st.booleans()):
            table["final_batch"] = draw(count_or_percent())
        if draw(st.booleans()):
            table["max_parallel"] = draw(count_or_percent())
    elif name == "shedding":
        weights = sorted(set(draw(st.lists(st.integers(1, 99), max_size=5))))
        table["weights"] = [*weights, 100]
        if draw(st.booleans()):
            table["max_parallel"] = draw(st.integers(1, 50))
    return table


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 300))
@pytest.mark.parametrize("name", strategies.HOST_STRATEGIES)
def test_random_params_upgrade_every_host_exactly_once(name, data, n, fleet_factory, where):
    module = strategies.get(name)
    table = data.draw(params_tables(name))
    params = module.parse_params(table, where)
    fleet = fleet_for(fleet_factory, name, n, zones=data.draw(st.sampled_from(
        [None, ("a",), ("a", "b"), ("a", "b", "c", "d")])))
    plan = module.compile(fleet, params)
    check_plan(plan, fleet, name)
    assert module.compile(fleet, module.parse_params(table, where)) == plan


def test_hosts_are_spread_across_zones(fleet_factory):
    fleet = fleet_factory(9, zones=("a", "b", "c"))
    plan = strategies.get("rolling").compile(fleet, strategies.get("rolling").default_params())
    first = [s.hosts[0] for s in plan.steps if isinstance(s, UpgradeHosts)][:3]
    assert {fleet.host(h).labels["zone"] for h in first} == {"a", "b", "c"}
    # without zones: the fleet's order
    plain = fleet_factory(9, zones=None)
    plan = strategies.get("rolling").compile(plain, strategies.get("rolling").default_params())
    assert list(plan.upgraded_hosts()) == [h.name for h in plain.hosts]


# ---------------------------------------------------------------------------------------------
# The seed's arithmetic


def test_rolling_one_at_a_time_over_1000_hosts_takes_about_a_week(fleet_factory, where):
    """'If each server takes 10 minutes, upgrading 1000 servers will take about a week.'"""
    rolling = strategies.get("rolling")
    fleet = fleet_factory(1000)
    plan = rolling.compile(fleet, rolling.parse_params({"batch": 1, "verify": False}, where))
    total = estimate(plan, Timing(host_upgrade=600)).total_s
    assert total == 1000 * 600
    assert total / 86400 == pytest.approx(6.94, abs=0.01)
    assert format_duration(total) == "6d 22h 40m"
    assert len(waves(plan, Timing(host_upgrade=600))) == 1000


def test_seed_canary_schedule_over_1000_hosts(fleet_factory):
    """One host, verify and 10 minutes' pause; hosts 2..10 one per minute; then one per second
    until all 1,000 are upgraded."""
    canary = strategies.get("canary")
    fleet = fleet_factory(1000, verify_for=60.0)
    plan = canary.compile(fleet, canary.default_params())
    kinds = [type(s).__name__ for s in plan.steps]
    assert kinds == ["UpgradeHosts", "Verify", "Pause", "UpgradeHosts", "Verify",
                     "UpgradeHosts", "Verify"]
    first, second, third = [s for s in plan.steps if isinstance(s, UpgradeHosts)]
    assert len(first.hosts) == 1 and first.start_interval == 0
    assert len(second.hosts) == 9 and second.start_interval == pytest.approx(60.0)
    assert len(third.hosts) == 990 and third.start_interval == pytest.approx(1.0)
    assert second.max_parallel is None and third.max_parallel is None
    assert plan.steps[2] == Pause(600.0, wave=1)

    host = 30.0
    timing = Timing(host_upgrade=host)
    est = estimate(plan, timing)
    t_second = host + 60 + 600                       # canary, its verify, ten minutes
    t_third = t_second + 8 * 60 + host + 60          # 9 hosts a minute apart, verify
    end = t_third + 989 * 1 + host + 60              # 990 hosts a second apart, verify
    assert est.step_starts == pytest.approx(
        (0, host, host + 60, t_second, t_second + 8 * 60 + host, t_third, end - 60))
    assert est.total_s == pytest.approx(end)

    shown = waves(plan, timing)
    assert [(w.hosts, w.hosts_done, w.blast_radius, w.pause) for w in shown] == [
        (1, 1, 0.1, 600.0), (9, 10, 1.0, 0.0), (990, 1000, 100.0, 0.0)]
    assert [w.start_s for w in shown] == pytest.approx([0, t_second, t_third])


# ---------------------------------------------------------------------------------------------
# Plan shapes


def test_takedown_plan(fleet_factory, where):
    takedown = strategies.get("takedown")
    fleet = fleet_factory(5)
    params = takedown.parse_params({"max_parallel": 2, "retry_after": "2m"}, where)
    plan = takedown.compile(fleet, params)
    hosts = tuple(plan.upgraded_hosts())
    assert plan.steps == (
        Maintenance(on=True, retry_after=120, wave=1),
        UpgradeHosts(hosts, max_parallel=2, drain=False, wave=1),
        Gate("system_test", hosts=hosts, wave=1),
        Maintenance(on=False, retry_after=120, wave=2),
        Verify(for_=60.0, wave=2),
    )
    assert plan.rollback_mode == "reinstall"
    assert any("maintenance page" in note for note in plan.notes)
    first, second = waves(plan, Timing())
    assert first.blast_radius == 0.0 and second.blast_radius == 100.0


def test_rolling_batch_list_last_size_repeats(fleet_factory, where):
    rolling = strategies.get("rolling")
    fleet = fleet_factory(100)
    params = rolling.parse_params({"batch": [1, 5, "20%"], "max_unavailable": 4,
                                   "pause": "1m", "verify_for": "30s"}, where)
    plan = rolling.compile(fleet, params)
    ups = [s for s in plan.steps if isinstance(s, UpgradeHosts)]
    assert [len(s.hosts) for s in ups] == [1, 5, 20, 20, 20, 20, 14]
    assert [s.max_parallel for s in ups] == [1, 4, 4, 4, 4, 4, 4]
    assert plan.rollback_parallel == 4
    assert sum(isinstance(s, Pause) for s in plan.steps) == 6      # between batches only
    assert sum(isinstance(s, Verify) for s in plan.steps) == 7     # after each, incl. the last
    assert all(s.for_ == 30.0 for s in plan.steps if isinstance(s, Verify))
    assert isinstance(plan.steps[-1], Verify)


def test_rolling_verify_false_has_no_verify(fleet_factory, where):
    rolling = strategies.get("rolling")
    plan = rolling.compile(fleet_factory(10), rolling.parse_params({"verify": False}, where))
    assert not any(isinstance(s, Verify) for s in plan.steps)


def test_canary_hosts_steps_and_remainder_repeat_the_last_step(fleet_factory, where):
    canary = strategies.get("canary")
    params = canary.parse_params({"steps": [{"hosts": 1, "pause": "promote"},
                                            {"hosts": "10%", "pause": "5m"}]}, where)
    plan = canary.compile(fleet_factory(100), params)
    ups = [s for s in plan.steps if isinstance(s, UpgradeHosts)]
    assert [len(s.hosts) for s in ups] == [1] + [10] * 9 + [9]
    assert plan.steps[2] == Pause(None, wave=1)
    pauses = [s.duration for s in plan.steps if isinstance(s, Pause)]
    assert pauses == [None] + [300.0] * 9          # no pause after the last host
    assert any("remaining 89 hosts" in note for note in plan.notes)
    assert estimate(plan, Timing()).waits_for_promotion == 1


def test_canary_rate_remainder_uses_the_last_rate(fleet_factory, where):
    canary = strategies.get("canary")
    params = canary.parse_params({"steps": [{"hosts": 1}, {"rate": "2/min", "until": 10}]},
                                 where)
    plan = canary.compile(fleet_factory(50), params)
    ups = [s for s in plan.steps if isinstance(s, UpgradeHosts)]
    assert [len(s.hosts) for s in ups] == [1, 9, 40]
    assert ups[2].start_interval == pytest.approx(30.0)


def test_canary_step_without_pause_uses_the_strategy_pause(fleet_factory, where):
    canary = strategies.get("canary")
    params = canary.parse_params({"pause": "1m", "steps": [{"hosts": 1}, {"hosts": 1},
                                                           {"pause": "promote"}]}, where)
    plan = canary.compile(fleet_factory(3), params)
    assert [s.duration for s in plan.steps if isinstance(s, Pause)] == [60.0, 60.0, None]


def test_phased_plan_admits_groups_in_order(fleet_factory, where):
    phased = strategies.get("phased")
    fleet = fleet_factory(100, groups=GROUPS)
    params = phased.parse_params({"groups": ["staff", "one", "some", "many"],
                                  "capacity": [1, 2, "10%", "50%"], "pause": "5m"}, where)
    plan = phased.compile(fleet, params)
    assert plan.steps[0] == Route(groups=(), default="current", share=0.0, wave=1)
    routes = [s for s in plan.steps if isinstance(s, Route)]
    assert [r.groups for r in routes] == [(), ("staff",), ("staff", "one"),
                                          ("staff", "one", "some"),
                                          ("staff", "one", "some", "many"), ()]
    assert routes[-1].default is None
    ups = [s for s in plan.steps if isinstance(s, UpgradeHosts)]
    assert [len(s.hosts) for s in ups] == [1, 1, 8, 40, 25, 25]
    # a Route to group i comes after the hosts it needs
    first_route = plan.steps.index(routes[1])
    assert isinstance(plan.steps[first_route - 1], UpgradeHosts)
    assert plan.rollback_mode == "reinstall"
    shown = waves(plan, Timing())
    assert [w.blast_radius for w in shown] == [1.0, 1.0, 5.0, 50.0, 75.0, 100.0]
    assert "share of users unknown" in shown[0].label


def test_phased_defaults_use_the_fleets_groups_and_growing_capacity(fleet_factory):
    phased = strategies.get("phased")
    fleet = fleet_factory(100, groups=("alpha", "beta", "gamma"))
    plan = phased.compile(fleet, phased.default_params())
    routes = [s.groups for s in plan.steps if isinstance(s, Route)]
    assert routes[-2] == ("alpha", "beta", "gamma")
    ups = [len(s.hosts) for s in plan.steps if isinstance(s, UpgradeHosts)]
    assert ups == [1, 24, 25, 25, 25]      # 1 host, 25 %, 50 %; then 25 % batches


def test_shedding_plan(fleet_factory, where):
    shedding = strategies.get("shedding")
    fleet = fleet_factory(4, new=4)
    plan = shedding.compile(fleet, shedding.parse_params({"weights": [10, 50, "100%"],
                                                          "pause": "1m"}, where))
    traffic = [s.weights for s in plan.steps if isinstance(s, SetTraffic)]
    assert traffic == [(("current", 100.0), ("target", 0.0)), (("current", 90.0), ("target", 10.0)),
                       (("current", 50.0), ("target", 50.0)), (("current", 0.0), ("target", 100.0)),
                       (("target", 100.0),)]
    assert isinstance(plan.steps[1], UpgradeHosts) and plan.steps[1].hosts == tuple(
        h.name for h in fleet.new_hosts)
    assert sum(isinstance(s, Pause) for s in plan.steps) == 2
    assert plan.rollback_mode == "traffic"
    assert [w.blast_radius for w in waves(plan, Timing())] == [0.0, 10.0, 50.0, 100.0, 100.0]
    # the old cluster goes only at the very end
    turn_down = next(i for i, s in enumerate(plan.steps) if isinstance(s, TurnDown))
    assert turn_down == len(plan.steps) - 2


def test_bluegreen_plan(fleet_factory, where):
    bluegreen = strategies.get("bluegreen")
    fleet = fleet_factory(10, slots=True)
    plan = bluegreen.compile(fleet, bluegreen.parse_params({"batch": "50%", "max_parallel": 3},
                                                           where))
    hosts = tuple(plan.upgraded_hosts())
    assert plan.steps[:2] == (PrepareSlots(hosts, max_parallel=3, wave=1),
                              Gate("system_test", hosts=hosts, slots=True, wave=1))
    swaps = [s for s in plan.steps if isinstance(s, SwapSlots)]
    assert [len(s.hosts) for s in swaps] == [5, 5]
    assert isinstance(plan.steps[-1], Verify)
    assert plan.rollback_mode == "swap" and plan.rollback_parallel == 5
    assert [w.blast_radius for w in waves(plan, Timing())] == [0.0, 50.0, 100.0]
    assert any("old slot keeps running" in note for note in plan.notes)


# ---------------------------------------------------------------------------------------------
# Bad params name their key


BAD_PARAMS = [
    ("rolling", {"bach": 2}, "bach", "unknown key"),
    ("rolling", {"batch": "lots"}, "batch", "percentage"),
    ("rolling", {"batch": [1, "120%"]}, "batch[1]", "between 0% and 100%"),
    ("rolling", {"batch": []}, "batch", "non-empty"),
    ("rolling", {"batch": True}, "batch", "host count"),
    ("rolling", {"verify": "yes"}, "verify", "true or false"),
    ("rolling", {"pause": "soon"}, "pause", "duration"),
    ("rolling", {"rollback_parallel": 0}, "rollback_parallel", "at least 1"),
    ("takedown", {"max_parallel": "2"}, "max_parallel", "whole number"),
    ("takedown", {"retry_after": "a minute"}, "retry_after", "duration"),
    ("canary", {"steps": "fast"}, "steps", "list"),
    ("canary", {"steps": [{"hosts": 1}, 5]}, "steps[1]", "table"),
    ("canary", {"steps": [{"hosts": 1, "paws": "1m"}]}, "steps[0].paws", "unknown key"),
    ("canary", {"steps": [{"rate": "fast", "until": "1%"}]}, "steps[0].rate", "rate"),
    ("canary", {"steps": [{"rate": "0/s"}]}, "steps[0].rate", "positive"),
    ("canary", {"steps": [{"rate": "1/min", "until": "150%"}]}, "steps[0].until", "100%"),
    ("canary", {"steps": [{"rate": "1/min", "until": "10%"}, {"rate": "1/s", "until": "5%"}]},
     "steps[1].until", "not beyond"),
    ("canary", {"steps": [{"hosts": 5}, {"rate": "1/s", "until": 3}]}, "steps[1].until",
     "not beyond"),
    ("canary", {"steps": [{"until": "5%"}]}, "steps[0].until", "needs a rate"),
    ("canary", {"steps": [{"hosts": 1, "rate": "1/s"}]}, "steps[0]", "not both"),
    ("canary", {"steps": [{"pause": "1m"}]}, "steps", "at least one step"),
    ("canary", {"steps": [{"hosts": 1, "pause": "forever"}]}, "steps[0].pause", "promote"),
    ("phased", {"groups": "beta"}, "groups", "list"),
    ("phased", {"groups": ["a", "a"]}, "groups[1]", "twice"),
    ("phased", {"groups": ["a", "b"], "capacity": [1]}, "capacity", "2 entries"),
    ("phased", {"capacity": ["50%", "10%"]}, "capacity[1]", "shrink"),
    ("phased", {"final_batch": 0}, "final_batch", "at least 1"),
    ("shedding", {"weights": [5, 1, 100]}, "weights[1]", "grow"),
    ("shedding", {"weights": [5, 50]}, "weights[1]", "100%"),
    ("shedding", {"weights": [5, "101%"]}, "weights[1]", "100%"),
    ("shedding", {"weights": [0, 100]}, "weights[0]", "above 0%"),
    ("bluegreen", {"batch": "half"}, "batch", "percentage"),
    ("bluegreen", {"swap": 1}, "swap", "expected one of"),
]


@pytest.mark.parametrize("name,table,key,message", BAD_PARAMS)
def test_bad_params_name_the_key(name, table, key, message, where):
    with pytest.raises(ConfigError) as info:
        strategies.get(name).parse_params(table, where)
    assert info.value.key == key
    assert message in info.value.message


def test_unknown_key_lists_the_expected_ones(where):
    with pytest.raises(ConfigError, match="expected one of: batch, max_unavailable, verify"):
        strategies.get("rolling").parse_params({"bach": 2}, where)


def test_phased_unknown_group_is_named(fleet_factory, where):
    phased = strategies.get("phased")
    params = phased.parse_params({"groups": ["staff", "vip"]}, where)
    with pytest.raises(ConfigError) as info:
        phased.compile(fleet_factory(10, groups=GROUPS), params, where)
    assert info.value.key == "groups[1]" and "'vip'" in info.value.message
    assert "staff" in info.value.message       # lists the fleet's groups


def test_phased_without_groups(fleet_factory, where):
    phased = strategies.get("phased")
    with pytest.raises(ConfigError) as info:
        phased.compile(fleet_factory(10), phased.default_params(), where)
    assert info.value.key == "groups"


def test_shedding_without_new_cluster(fleet_factory, where):
    shedding = strategies.get("shedding")
    with pytest.raises(ConfigError) as info:
        shedding.compile(fleet_factory(10), shedding.default_params(), where)
    assert info.value.key is None and 'cluster = "new"' in info.value.message


def test_shedding_needs_twice_the_capacity(fleet_factory, where):
    shedding = strategies.get("shedding")
    with pytest.raises(ConfigError, match="twice the capacity"):
        shedding.compile(fleet_factory(10, new=9), shedding.default_params(), where)
    smaller = shedding.parse_params({"new_capacity": "50%"}, where)
    check_plan(shedding.compile(fleet_factory(10, new=5), smaller), fleet_factory(10, new=5),
               "shedding")


def test_bluegreen_host_without_two_slots_is_named(fleet_factory, where):
    bluegreen = strategies.get("bluegreen")
    fleet = fleet_factory(3, slots=False)
    with pytest.raises(ConfigError) as info:
        bluegreen.compile(fleet, bluegreen.default_params(), where)
    assert "web-0001" in info.value.message and "two slots" in info.value.message


def test_compile_without_where_locates_errors_in_the_strategy_table(fleet_factory):
    phased = strategies.get("phased")
    params = phased.default_params().__class__(groups=("nobody",))
    with pytest.raises(ConfigError) as info:
        phased.compile(fleet_factory(3, groups=GROUPS), params)
    assert info.value.key == "strategy.groups[0]"


@settings(max_examples=200, deadline=None)
@given(table=st.dictionaries(
    st.sampled_from(["batch", "steps", "weights", "groups", "capacity", "pause", "verify_for",
                     "rollback_parallel", "max_parallel", "max_unavailable", "until", "rate",
                     "final_batch", "retry_after", "verify", "new_capacity", "zzz"]),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 500),
                           st.floats(allow_nan=True), st.text(max_size=8),
                           st.sampled_from(["1%", "150%", "1/min", "x/s", "10m", "promote"])),
                 lambda inner: st.one_of(st.lists(inner, max_size=4),
                                         st.dictionaries(st.sampled_from(
                                             ["hosts", "rate", "until", "pause", "x"]), inner,
                                             max_size=3)),
                 max_leaves=8),
    max_size=4))
def test_garbage_params_raise_only_config_error(table, where):
    for name in strategies.HOST_STRATEGIES:
        try:
            strategies.get(name).parse_params(table, where)
        except ConfigError:
            pass
