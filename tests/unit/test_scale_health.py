"""Health checks during analysis cost a bounded number of checks per round (issue 17): the
hosts that changed, the hosts that failed, and a sample of the least recently checked; never
every upgraded host each round. Virtual time; counts, never timings."""

from __future__ import annotations

import dataclasses

from upgrader import strategies
from upgrader.clock import LoopClock, run_virtual
from upgrader.engine.core import Engine, Providers
from upgrader.events import Outcome
from upgrader.model import StrategySpec, Timing, VerifySpec
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport

HOSTS = 121          # more than a "small fleet": no per-host shortcut anywhere
SERVING = 120        # upgraded and in service during the pause


class _Where:
    def error(self, key, message):
        raise AssertionError(f"{key}: {message}")


def canary_then_pause(fleet_factory, *, pause="10m", on_failure="rollback", **verify):
    fleet = fleet_factory(HOSTS)
    # all but one host, then the pause (a canary drops a pause after its last host)
    table = {"steps": [{"hosts": SERVING, "pause": pause}, {"hosts": "100%"}]}
    params = strategies.get("canary").parse_params(table, _Where())
    spec = VerifySpec(for_=30.0, interval=10.0, no_data="pass", consecutive_failures=2,
                      **verify)
    return dataclasses.replace(fleet, strategy=StrategySpec("canary", params, on_failure=on_failure), verify=spec,
                               timing=Timing(health_timeout=20.0, drain_timeout=10.0))


def run(fleet, during=None):
    """Run ``fleet`` on the no-op providers; returns the result, every event with the
    number of health checks made when it was emitted, and the health check."""
    health = NoopHealthCheck()
    seen = []

    async def main():
        balancer = NoopBalancer()
        for host in fleet.main_hosts:
            await balancer.set_backend(host.name, address=host.address, port=host.port,
                                       pool=fleet.releases.current)
        plan = strategies.get("canary").compile(fleet, fleet.strategy.params)
        engine = Engine(fleet, plan, Providers(NoopTransport(), balancer, health),
                        clock=LoopClock())
        engine.subscribe(lambda e: seen.append((e, len(health.checks), engine.state.value)))
        if during is not None:
            engine.subscribe(lambda e: during(engine, health, e))
        return await engine.run(), engine

    result, engine = run_virtual(main)
    return result, seen, health, engine


def health_rounds_while_waiting(seen):
    """(verdict data, checks made since the previous health verdict) during the pause."""
    rounds = []
    before = None
    for event, checks, state in seen:
        if event.kind == "verdict" and event.data["metric"] == "health":
            if before is not None and state == "WAITING":
                rounds.append((event.data, checks - before))
            before = checks
    return rounds


def test_a_round_checks_a_bounded_sample_not_every_upgraded_host(fleet_factory):
    # the defaults: [verify] health on, health_sample 10, no health_period
    fleet = canary_then_pause(fleet_factory)
    result, seen, health, _ = run(fleet)
    assert result.outcome is Outcome.COMPLETED
    rounds = health_rounds_while_waiting(seen)
    assert len(rounds) >= 50                       # 10 minutes of 10 s rounds
    for verdict, checks in rounds:
        assert checks == 10                         # the health check really ran 10 times
        assert verdict["samples"] == 10
        assert verdict["checked"] == 10
        assert verdict["serving"] == SERVING
        assert verdict["result"] == "pass"


def test_least_recently_checked_first_covers_every_host_in_turn(fleet_factory):
    fleet = canary_then_pause(fleet_factory, health_sample=12)
    _, seen, health, engine = run(fleet)
    during = [e for e, _, state in seen if state == "WAITING"]
    # 12 a round: all 120 hosts within 10 rounds, so the oldest check is at most ~100 s old
    ages = [e.data["oldest_seen_s"] for e in during
            if e.kind == "verdict" and e.data["metric"] == "health"]
    assert ages and max(ages[12:]) <= 100.0 + 1e-6
    snapshot = engine.snapshot()
    assert all(h["health_seen"] is not None for h in snapshot["hosts"].values())
    assert snapshot["verdicts"]["health"]["samples"] == 12


def test_health_period_checks_every_host_that_often(fleet_factory):
    fleet = canary_then_pause(fleet_factory, health_sample=1, health_period=60.0)
    _, seen, _, _ = run(fleet)
    rounds = health_rounds_while_waiting(seen)
    # ceil(120 hosts * 10 s / 60 s) = 20 a round, whatever the sample
    assert rounds and all(checks == 20 for _, checks in rounds)
    assert all(v["oldest_seen_s"] <= 60.0 + 1e-6 for v, _ in rounds[6:])


def test_a_failing_host_is_rechecked_every_round_until_the_rollout_stops(fleet_factory):
    fleet = canary_then_pause(fleet_factory, health_sample=5, on_failure="freeze")
    bad = fleet.main_hosts[40].name
    state = {}

    def during(engine, health, event):
        if (event.kind == "verdict" and event.data["metric"] == "health"
                and engine.state.value == "WAITING" and "broken" not in state):
            state["broken"] = len(health.checks)
            health.set_healthy(bad, False)

    result, seen, health, _ = run(fleet, during)
    assert result.outcome is Outcome.FROZEN
    after = [n for n, _ in health.checks[state["broken"]:]]
    # the host is found by the sample in time, then checked again at once, every round
    failing = [e.data for e, _, _ in seen if e.kind == "verdict"
               and e.data["metric"] == "health" and e.data["result"] == "fail"]
    assert len(failing) == 2                         # consecutive_failures = 2
    assert bad in failing[0]["detail"] and bad in failing[1]["detail"]
    assert after.count(bad) >= 2


def test_sampler_picks_changes_failures_then_the_stalest():
    from upgrader.engine.sampling import HealthSampler

    sampler = HealthSampler(sample=2, period=None, interval=10.0)
    serving = {"a", "b", "c", "d"}
    for name in sorted(serving):
        sampler.changed(name, 0.0)
    assert sorted(sampler.pick(serving)) == ["a", "b", "c", "d"]   # new: all checked once
    for t, name in enumerate("abcd"):
        sampler.record(name, True, 1.0 + t, 1.0 + t)
    assert sampler.pick(serving) == ["a", "b"]                        # the two stalest
    sampler.record("a", True, 20.0, 20.0)
    sampler.record("b", False, 20.0, 20.0)
    # b failed: rechecked at once; then the two stalest (c, d)
    assert sampler.pick(serving) == ["b", "c", "d"]
    # a backend the procedure checked just before it changed is not checked again
    sampler.record("e", True, 30.0, 30.0)
    sampler.changed("e", 30.5)
    assert "e" not in sampler.pick(serving | {"e"})
    # quota with a period: every serving backend at least every period
    assert HealthSampler(sample=2, period=60.0, interval=10.0).quota(120) == 20
    assert HealthSampler(sample=30, period=60.0, interval=10.0).quota(120) == 30


def test_backends_found_serving_at_a_start_are_sampled_in_turn_not_all_at_once():
    from upgrader.engine.sampling import HealthSampler

    sampler = HealthSampler(sample=3, period=None, interval=10.0)
    serving = {f"h{i}" for i in range(100)}
    for name in sorted(serving):
        sampler.found(name, 0.0)
    picked = sampler.pick(serving)
    assert len(picked) == 3
    for name in picked:
        sampler.record(name, True, 10.0, 10.0)
    assert not set(sampler.pick(serving)) & set(picked)


def test_bad_health_sample_and_period_name_the_key_and_line(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_config import BASE, assert_at, load_error, replaced

    good = replaced('for = "1m"\n', 'for = "1m"\nhealth_sample = 3\nhealth_period = "5m"\n')
    from upgrader.config import load_fleet

    path = tmp_path / "good.toml"
    path.write_text(good, encoding="utf-8")
    verify = load_fleet(path).verify
    assert (verify.health_sample, verify.health_period) == (3, 300.0)
    assert (VerifySpec().health_sample, VerifySpec().health_period) == (10, None)
    line = BASE[:BASE.index('for = "1m"')].count("\n") + 2
    error = load_error(tmp_path, replaced('for = "1m"\n', 'for = "1m"\nhealth_sample = 0\n'))
    assert_at(error, "verify.health_sample", line, "at least 1")
    error = load_error(tmp_path, replaced('for = "1m"\n', 'for = "1m"\nhealth_period = "0s"\n'))
    assert_at(error, "verify.health_period", line)
    error = load_error(tmp_path, replaced('for = "1m"\n', 'for = "1m"\nhealth_sampel = 5\n'))
    assert_at(error, "verify.health_sampel", line, "health_sample")
