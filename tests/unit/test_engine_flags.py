"""Feature roll-outs: a rollout step turns a flag on for a share of users, verification
watches the traffic, and a failed verification turns the flag off (dynamic roll-back)
instead of rolling back a release. With a real SQLite flag store, so every change is audited."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from upgrader import strategies
from upgrader.clock import LoopClock, run_virtual
from upgrader.engine.core import Engine, Providers
from upgrader.events import Outcome
from upgrader.flags import loader
from upgrader.flags.store import open_store
from upgrader.flags.switch import StoreFlagSwitch
from upgrader.model import FlagsSpec, StrategySpec, VerifySpec
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport

FLAGS = """
environments = ["production"]

[flags.new-checkout]
description = "the one-page checkout"

[flags.new-checkout.environments.production]
enabled = false
"""


class _Where:
    def error(self, key, message):
        raise AssertionError(f"{key}: {message}")


@pytest.fixture
def store_spec(tmp_path):
    spec = str(tmp_path / "flags.sqlite")
    with open_store(spec) as store:
        store.replace(loader.loads(FLAGS, source="flags.toml"), actor="test", reason="setup")
    return spec


def feature_fleet(fleet_factory, store_spec, steps):
    fleet = fleet_factory(4)
    params = strategies.get("feature").parse_params(
        {"flag": "new-checkout", "steps": steps}, _Where())
    return dataclasses.replace(
        fleet, releases=dataclasses.replace(fleet.releases, target=fleet.releases.current),
        strategy=StrategySpec("feature", params),
        flags=FlagsSpec(store=store_spec, environment="production"),
        verify=VerifySpec(for_=30.0, interval=10.0, min_requests=10, consecutive_failures=2,
                          no_data="fail"))


def run(fleet, store_spec, *, error_share_when_on: float):
    """Users on every host; when the flag is on, that share of the flag's users fails."""

    async def main():
        balancer = NoopBalancer()
        for host in fleet.main_hosts:
            await balancer.set_backend(host.name, address=host.address, port=host.port,
                                       pool=fleet.releases.current)
        switch = StoreFlagSwitch(store_spec, "production", actor="tester")
        providers = Providers(NoopTransport(), balancer, NoopHealthCheck(), flags=switch)
        plan = strategies.get("feature").compile(fleet, fleet.strategy.params)
        engine = Engine(fleet, plan, providers, clock=LoopClock())

        async def users():
            # what the services see: the flag as the rollout last set it (read from the
            # engine's events, not the store: a thread would let virtual time run ahead)
            while True:
                await asyncio.sleep(1.0)
                flag = [e.data for e in engine.history if e.kind == "flag"]
                on_share = 0.0
                if flag and flag[-1]["on"]:
                    on_share = (flag[-1]["percent"] or 100.0) / 100.0
                errors = round(100 * on_share * error_share_when_on)
                for name in (await balancer.state()).backends:
                    balancer.record(name, requests=100, errors=errors)

        helper = asyncio.ensure_future(users())
        result = await engine.run()
        helper.cancel()
        await switch.aclose()
        return result, engine

    return run_virtual(main)


def test_a_good_feature_reaches_everyone_step_by_step(fleet_factory, store_spec):
    fleet = feature_fleet(fleet_factory, store_spec,
                          [{"percent": 5}, {"percent": 50}, {"percent": 100}])
    result, engine = run(fleet, store_spec, error_share_when_on=0.0)
    assert result.outcome is Outcome.COMPLETED, result.error
    with open_store(store_spec) as store:
        env = store.load().flags["new-checkout"].env("production")
        history = store.history("new-checkout")
    assert env.enabled and [r.percent for r in env.rules if r.percent is not None] == [100]
    rollout_changes = [h for h in history if h.actor == "tester"]
    assert len(rollout_changes) >= 3              # every step audited, with who and why
    assert all(h.reason.startswith("rollout ") for h in rollout_changes)
    assert result.hosts == {h.name: fleet.releases.current for h in fleet.main_hosts}


def test_a_bad_feature_is_turned_off_not_the_release_rolled_back(fleet_factory, store_spec):
    fleet = feature_fleet(fleet_factory, store_spec,
                          [{"percent": 5}, {"percent": 50}, {"percent": 100}])
    # 5 % of users on the feature, half of them failing: 2.5 % errors > 1 % allowed
    result, engine = run(fleet, store_spec, error_share_when_on=0.5)
    assert result.outcome is Outcome.ROLLED_BACK
    assert "error_rate" in result.error
    with open_store(store_spec) as store:
        env = store.load().flags["new-checkout"].env("production")
    assert env.enabled is False                      # the flag is off again
    kinds = [(e.kind, e.data.get("on")) for e in engine.history if e.kind == "flag"]
    assert kinds == [("flag", True), ("flag", False)]   # never went past the first step
    started = next(e for e in engine.history if e.kind == "rollback_started")
    assert started.data["mode"] == "flag" and started.data["hosts"] == []


@pytest.mark.parametrize("table,key", [
    ({"steps": [{"percent": 100}]}, "flag"),
    ({"flag": "a;b"}, "flag"),
    ({"flag": "f", "steps": [{"percent": 10}, {"percent": 5}, {"percent": 100}]},
     "steps[1].percent"),
    ({"flag": "f", "steps": [{"percent": 10}, {"percent": 50}]}, "steps[1].percent"),
    ({"flag": "f", "steps": [{"percent": 150}]}, "steps[0].percent"),
    ({"flag": "f", "steps": [{"pct": 10}]}, "steps[0].pct"),
])
def test_feature_params_name_the_bad_key(where, table, key):
    from upgrader.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        strategies.get("feature").parse_params(table, where)
    assert caught.value.key == key


def test_feature_plan_shows_the_share_of_users_per_wave(fleet_factory, store_spec):
    from upgrader.plan import estimate, waves

    fleet = feature_fleet(fleet_factory, store_spec, [{"percent": 1, "pause": "10m"},
                                                     {"percent": 100}])
    plan = strategies.get("feature").compile(fleet, fleet.strategy.params)
    assert [w.blast_radius for w in waves(plan, fleet.timing)] == [1.0, 100.0]
    assert estimate(plan, fleet.timing).rollback_s <= 1.0       # a flag flip


def test_group_steps_give_the_feature_to_groups_first(fleet_factory, store_spec):
    """One-some-many by group: internal users, then beta users, then a share of everyone."""
    from upgrader.flags.evaluate import compile_flags

    fleet = feature_fleet(fleet_factory, store_spec,
                          [{"groups": ["internal"]}, {"groups": ["internal", "beta"]},
                           {"percent": 10}, {"percent": 100}])
    plan = strategies.get("feature").compile(fleet, fleet.strategy.params)
    first = plan.steps[0]
    assert (first.groups, first.percent) == (("internal",), None)

    fleet_two = feature_fleet(fleet_factory, store_spec,
                              [{"groups": ["internal"]}, {"groups": ["internal", "beta"]},
                               {"percent": 100}])
    fleet_two = dataclasses.replace(fleet_two, strategy=dataclasses.replace(
        fleet_two.strategy, params=dataclasses.replace(
            fleet_two.strategy.params, steps=fleet_two.strategy.params.steps[:2])))
    result, engine = run(fleet_two, store_spec, error_share_when_on=0.0)
    assert result.outcome is Outcome.COMPLETED, result.error
    with open_store(store_spec) as store:
        evaluator = compile_flags(store.load(), "production")
    beta = evaluator.evaluate("new-checkout", {"targetingKey": "u1", "groups": ["beta"]})
    other = evaluator.evaluate("new-checkout", {"targetingKey": "u2", "groups": ["free"]})
    assert beta.value is True and beta.rule == "rollout-groups"
    assert other.value is False
