"""The engine in virtual time with the no-op providers: every strategy's plan runs, controls
work, failures roll back, verdicts explain themselves, and a crash resumes without repeating
or skipping a host."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from upgrader import strategies
from upgrader.clock import LoopClock, run_virtual
from upgrader.engine.core import Engine, Providers
from upgrader.engine.resume import replay
from upgrader.events import Outcome
from upgrader.journal import Journal
from upgrader.model import StrategySpec, Timing, UserGroup, VerifySpec
from upgrader.plan import estimate
from upgrader.providers.base import CommandResult
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport

DELAY = 5.0   # virtual seconds per host command


def fleet_with(fleet_factory, kind, n=10, new=0, slots=False, table=None, verify=None,
               on_failure="rollback", groups=()):
    fleet = fleet_factory(n, new=new, slots=slots, groups=groups)
    module = strategies.get(kind)
    params = module.parse_params(table, _Where()) if table else module.default_params()
    verify = verify or VerifySpec(for_=30.0, interval=10.0, no_data="pass", min_requests=10,
                                  consecutive_failures=2)
    commands = dataclasses.replace(fleet.commands, current=("current", "{slot}"))
    return dataclasses.replace(
        fleet, strategy=StrategySpec(kind, params, on_failure=on_failure), verify=verify,
        timing=Timing(host_upgrade=3 * DELAY, health_timeout=20.0, drain_timeout=10.0),
        commands=commands)


class _Where:
    def error(self, key, message):
        raise AssertionError(f"{key}: {message}")


def providers_for(fleet, responder=None):
    transport = NoopTransport(delay=DELAY, responder=responder)
    balancer = NoopBalancer()
    return Providers(transport, balancer, NoopHealthCheck())


async def seed_balancer(fleet, balancer):
    for host in fleet.main_hosts:
        if host.slots:
            first, second = list(host.slots)
            await balancer.set_backend(f"{host.name}@{first}", address=host.address,
                                       port=host.slots[first], pool=fleet.releases.current)
        else:
            await balancer.set_backend(host.name, address=host.address, port=host.port,
                                       pool=fleet.releases.current)


def installs(transport, release=None):
    return [c.host for c in transport.calls
            if c.argv[0] == "deploy" and (release is None or c.argv[1] == release)]


def run_engine(fleet, providers, *, during=None, journal=None, resume=None, plan=None):
    async def main():
        await seed_balancer(fleet, providers.balancer) if resume is None else None
        compiled = plan or strategies.get(fleet.strategy.kind).compile(fleet, fleet.strategy.params)
        engine = Engine(fleet, compiled, providers, clock=LoopClock(), journal=journal,
                        resume=resume)
        events = []
        engine.subscribe(events.append)
        helper = asyncio.ensure_future(during(engine, providers)) if during else None
        result = await engine.run()
        if helper:
            helper.cancel()
        return engine, result, events

    return run_virtual(main)


@pytest.mark.parametrize("kind,kw", [
    ("rolling", {}), ("canary", {}), ("takedown", {}),
    ("phased", {"groups": (UserGroup("beta", ("beta",)), UserGroup("some", percent=10.0))}),
    ("shedding", {"new": 10}), ("bluegreen", {"slots": True}),
])
def test_every_strategy_completes_and_installs_each_host_once(fleet_factory, kind, kw):
    fleet = fleet_with(fleet_factory, kind, **kw)
    providers = providers_for(fleet)
    engine, result, events = run_engine(fleet, providers)
    assert result.outcome is Outcome.COMPLETED, result.error
    target = fleet.releases.target
    upgraded = [h.name for h in (fleet.new_hosts if kind == "shedding" else fleet.main_hosts)]
    assert sorted(installs(providers.transport, target)) == sorted(upgraded)
    state = asyncio.run(providers.balancer.state())
    serving = {n: b.pool for n, b in state.backends.items() if b.state == "ready"}
    assert set(serving.values()) == {target}
    assert len(serving) == len(upgraded)
    kinds = [e.kind for e in events]
    assert kinds[0] == "rollout_started" and kinds[-1] == "rollout_finished"


def test_virtual_run_matches_the_plan_estimate(fleet_factory):
    """The seed's canary schedule over 100 hosts: the engine's virtual clock agrees with
    the plan's arithmetic (what `upgrader plan` prints)."""
    fleet = fleet_with(fleet_factory, "canary", n=100)
    plan = strategies.get("canary").compile(fleet, fleet.strategy.params)
    expected = estimate(plan, fleet.timing).total_s
    engine, result, _ = run_engine(fleet, providers_for(fleet), plan=plan)
    assert result.outcome is Outcome.COMPLETED
    assert result.duration_s == pytest.approx(expected, rel=0.02)


def test_failed_install_rolls_back_every_touched_host(fleet_factory):
    fleet = fleet_with(fleet_factory, "rolling", table={"batch": [1, 3]})
    bad = fleet.main_hosts[5].name

    def responder(host, argv):
        if argv[0] == "deploy" and argv[1] == fleet.releases.target and host.name == bad:
            return CommandResult(1, "", "disk full")
        return None

    providers = providers_for(fleet, responder)
    engine, result, events = run_engine(fleet, providers)
    assert result.outcome is Outcome.ROLLED_BACK
    assert bad in result.error and "disk full" in result.error
    assert set(result.hosts.values()) == {fleet.releases.current}
    state = asyncio.run(providers.balancer.state())
    assert all(b.pool == fleet.releases.current for b in state.backends.values()
               if b.state == "ready")
    started = next(e for e in events if e.kind == "rollback_started")
    assert started.data["estimated_s"] > 0


def test_bad_release_is_caught_by_analysis_with_an_explained_verdict(fleet_factory):
    fleet = fleet_with(fleet_factory, "canary", n=20)
    target = fleet.releases.target

    async def traffic(engine, providers):
        balancer = providers.balancer
        while True:
            await asyncio.sleep(1.0)
            for name, backend in (await balancer.state()).backends.items():
                if backend.state == "ready":
                    bad = backend.pool == target
                    balancer.record(name, requests=10, errors=3 if bad else 0)

    providers = providers_for(fleet)
    engine, result, events = run_engine(fleet, providers, during=traffic)
    assert result.outcome is Outcome.ROLLED_BACK
    fails = [e.data for e in events if e.kind == "verdict" and e.data["result"] == "fail"]
    assert fails, "no failing verdict"
    verdict = fails[-1]
    assert verdict["metric"] == "error_rate"
    assert verdict["value"] == pytest.approx(30.0)
    assert verdict["threshold"] == fleet.verify.error_rate_max
    assert verdict["baseline"] == 0.0
    assert verdict["samples"] >= fleet.verify.min_requests
    assert verdict["consecutive"] == fleet.verify.consecutive_failures
    # caught on the first canary, before a second host was touched
    assert installs(providers.transport, target) == [fleet.main_hosts[0].name] or \
        len(installs(providers.transport, target)) == 1
    assert set(result.hosts.values()) == {fleet.releases.current}


def test_single_blip_does_not_roll_back(fleet_factory):
    fleet = fleet_with(fleet_factory, "rolling", n=4)
    target = fleet.releases.target

    async def one_blip(engine, providers):
        balancer = providers.balancer
        rounds_on_target = 0
        while True:
            await asyncio.sleep(1.0)
            ready = [(n, b) for n, b in (await balancer.state()).backends.items()
                     if b.state == "ready"]
            if any(b.pool == target for _, b in ready):
                rounds_on_target += 1
            for name, backend in ready:
                # one second of errors, well after analysis has a baseline reading
                blip = backend.pool == target and rounds_on_target == 15
                balancer.record(name, requests=10, errors=10 if blip else 0)

    engine, result, events = run_engine(fleet, providers_for(fleet), during=one_blip)
    assert result.outcome is Outcome.COMPLETED
    assert any(e.kind == "verdict" and e.data["result"] == "fail" for e in events)


def test_no_data_policy_fail_is_not_a_silent_pass(fleet_factory):
    fleet = fleet_with(fleet_factory, "rolling", n=3,
                       verify=VerifySpec(for_=30.0, interval=10.0, no_data="fail",
                                         consecutive_failures=2, health=False))
    engine, result, events = run_engine(fleet, providers_for(fleet))
    assert result.outcome is Outcome.ROLLED_BACK
    assert "too little traffic" in result.error
    assert any(e.kind == "verdict" and e.data["result"] == "no_data" for e in events)


def test_controls_pause_promote_promote_all_and_abort(fleet_factory):
    fleet = fleet_with(fleet_factory, "canary", n=10,
                       table={"steps": [{"hosts": 1, "pause": "promote"},
                                        {"hosts": 2, "pause": "1h"},
                                        {"hosts": "100%"}]})
    seen = []

    async def operator(engine, providers):
        while engine.state.value != "WAITING":
            await asyncio.sleep(1)
        seen.append(("waiting", engine.state_reason))
        engine.pause()
        await asyncio.sleep(100)
        seen.append(("still", engine.state.value))
        engine.resume()
        engine.promote()           # skips the indefinite pause
        while engine.state_reason != "pause 3600s":
            await asyncio.sleep(1)
        engine.promote_all()        # skips the hour and the remaining analysis

    engine, result, events = run_engine(fleet, providers_for(fleet), during=operator)
    assert result.outcome is Outcome.COMPLETED
    assert seen[0] == ("waiting", "until promoted")
    assert result.duration_s < 3600
    actions = [e.data["action"] for e in events if e.kind == "control"]
    assert actions[:4] == ["pause", "resume", "promote", "promote_all"]


def test_abort_with_rollback_ends_with_target_pool_at_zero(fleet_factory):
    fleet = fleet_with(fleet_factory, "shedding", n=4, new=4)

    async def operator(engine, providers):
        while True:
            state = await providers.balancer.state()
            if state.split and state.split.get(fleet.releases.target, 0) >= 25:
                break
            await asyncio.sleep(1)
        engine.abort(rollback=True)

    providers = providers_for(fleet)
    engine, result, events = run_engine(fleet, providers, during=operator)
    assert result.outcome is Outcome.ROLLED_BACK
    state = asyncio.run(providers.balancer.state())
    assert state.split[fleet.releases.target] == 0
    assert not [b for b in state.backends.values() if b.pool == fleet.releases.target]
    assert all(result.hosts[h.name] == fleet.releases.current for h in fleet.main_hosts)


def test_weight_is_never_set_above_healthy_capacity(fleet_factory):
    """Three of four new hosts fall sick after they were prepared: the split may give the new
    cluster 25 % (what one healthy host of four carries), never 50 %."""
    fleet = fleet_with(fleet_factory, "shedding", n=4, new=4,
                       verify=VerifySpec(for_=30.0, interval=10.0, no_data="pass",
                                         health=False))
    target = fleet.releases.target

    async def sicken(engine, providers):
        while sum(1 for e in engine.history if e.kind == "host_done") < 4:
            await asyncio.sleep(1)
        for host in fleet.new_hosts[1:]:
            providers.health.set_healthy(host.name, False)

    providers = providers_for(fleet)
    engine, result, events = run_engine(fleet, providers, during=sicken)
    assert result.outcome is Outcome.ROLLED_BACK
    assert "refusing to send 50% of traffic" in result.error
    assert "25.0% of the fleet's capacity" in result.error
    splits = [op[1] for op in providers.balancer.operations if op[0] == "set_split" and op[1]]
    assert max(split.get(target, 0) for split in splits) == 25
    assert splits[-1][target] == 0


def test_crash_and_resume_installs_each_host_exactly_once(fleet_factory, tmp_path):
    fleet = fleet_with(fleet_factory, "rolling", n=8, table={"batch": 2})
    target = fleet.releases.target
    transport_calls = []
    installed: dict[str, str] = {}
    #: what the hosts themselves recorded (as the lab's installs.log): completed installs
    install_record: list[tuple[str, str]] = []
    crash_on = fleet.main_hosts[4].name

    def responder(host, argv):
        if argv[0] == "deploy":
            installed[host.name] = argv[1]
            install_record.append((host.name, argv[1]))
        if argv[0] == "current":
            return CommandResult(0, installed.get(host.name, fleet.releases.current) + "\n")
        return None

    journal = Journal(tmp_path / "journal.sqlite")
    balancer = NoopBalancer()

    async def crash_run():
        transport = NoopTransport(delay=DELAY, responder=responder)
        providers = Providers(transport, balancer, NoopHealthCheck())
        await seed_balancer(fleet, balancer)
        plan = strategies.get("rolling").compile(fleet, fleet.strategy.params)
        engine = Engine(fleet, plan, providers, clock=LoopClock(), journal=journal)
        task = asyncio.ensure_future(engine.run())
        # the controller dies right after the install of `crash_on` ran, before it recorded
        # anything more: in doubt, half-way through its procedure
        while crash_on not in installed:
            await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        transport_calls.extend(transport.calls)

    run_virtual(crash_run)
    record = journal.unfinished(fleet.name)
    assert record is not None and record.status == "running"
    state = replay(record, journal.entries(record.id), fleet)
    assert crash_on in state.in_doubt

    async def resume_run():
        transport = NoopTransport(delay=DELAY, responder=responder)
        providers = Providers(transport, balancer, NoopHealthCheck())
        from upgrader.plan import Plan
        engine = Engine(fleet, Plan.from_json(record.plan), providers, clock=LoopClock(),
                        journal=journal, resume=state)
        result = await engine.run()
        transport_calls.extend(transport.calls)
        return result

    result = run_virtual(resume_run)
    journal.close()
    assert result.outcome is Outcome.COMPLETED
    target_installs = [h for h, release in install_record if release == target]
    assert sorted(target_installs) == sorted(h.name for h in fleet.main_hosts)
    assert set(result.hosts.values()) == {target}


def _failing_install(fleet, host_index):
    bad = fleet.main_hosts[host_index].name

    def responder(host, argv):
        if argv[0] == "deploy" and argv[1] == fleet.releases.target and host.name == bad:
            return CommandResult(1, "", "no space left on device")
        return None

    return bad, responder


def test_on_failure_freeze_halts_without_rolling_back(fleet_factory):
    fleet = fleet_with(fleet_factory, "rolling", n=6, on_failure="freeze")
    bad, responder = _failing_install(fleet, 3)
    engine, result, events = run_engine(fleet, providers_for(fleet, responder))
    assert result.outcome is Outcome.FROZEN
    assert not any(e.kind == "rollback_started" for e in events)
    assert [result.hosts[h.name] for h in fleet.main_hosts[:3]] == [fleet.releases.target] * 3
    assert "no space left on device" in result.error


def test_on_failure_shutdown_takes_upgraded_hosts_out_while_capacity_allows(fleet_factory):
    fleet = fleet_with(fleet_factory, "rolling", n=6, on_failure="shutdown")
    fleet = dataclasses.replace(fleet, strategy=dataclasses.replace(fleet.strategy,
                                                                    min_capacity=50.0))
    bad, responder = _failing_install(fleet, 3)
    providers = providers_for(fleet, responder)
    engine, result, events = run_engine(fleet, providers)
    assert result.outcome is Outcome.SHUT_DOWN
    state = asyncio.run(providers.balancer.state())
    ready = [n for n, b in state.backends.items() if b.state == "ready"]
    # 6 hosts, at least 50 % must keep serving: three upgraded hosts go out of service,
    # the failed one is rolled back
    assert len(ready) >= 3
    assert all(state.backends[n].pool == fleet.releases.current for n in ready)
    assert sum(1 for b in state.backends.values() if b.state == "maint") >= 1


def test_on_failure_pause_waits_for_the_operator_then_rolls_back_on_abort(fleet_factory):
    fleet = fleet_with(fleet_factory, "rolling", n=6, on_failure="pause")
    bad, responder = _failing_install(fleet, 2)
    seen = []

    async def operator(engine, providers):
        while engine.state.value != "PAUSED":
            await asyncio.sleep(1)
        seen.append(engine.state_reason)
        await asyncio.sleep(600)          # nobody hurries an operator
        engine.abort(rollback=True)

    async def main():
        providers = providers_for(fleet, responder)
        await seed_balancer(fleet, providers.balancer)
        plan = strategies.get("rolling").compile(fleet, fleet.strategy.params)
        engine = Engine(fleet, plan, providers, clock=LoopClock(), interactive=True)
        helper = asyncio.ensure_future(operator(engine, providers))
        result = await engine.run()
        helper.cancel()
        return result

    result = run_virtual(main)
    assert seen and bad in seen[0]
    assert result.outcome is Outcome.ROLLED_BACK
    assert set(result.hosts.values()) == {fleet.releases.current}


def test_snapshot_is_taken_before_upgrade_and_restored_on_roll_back(fleet_factory):
    from upgrader.providers.noop import NoopSnapshot

    fleet = fleet_with(fleet_factory, "rolling", n=4)
    bad, responder = _failing_install(fleet, 2)
    providers = providers_for(fleet, responder)
    providers.snapshot = NoopSnapshot()
    engine, result, events = run_engine(fleet, providers)
    assert result.outcome is Outcome.ROLLED_BACK
    taken = {e.data["host"] for e in events if e.kind == "snapshot_taken"}
    assert taken == {h.name for h in fleet.main_hosts[:3]}
    # the roll-back restored snapshots instead of reinstalling the old release
    assert installs(providers.transport, fleet.releases.current) == []


def test_one_rollout_per_fleet(fleet_factory, tmp_path):
    from upgrader.errors import PolicyRefused
    from upgrader.rollout import Rollout

    fleet = fleet_with(fleet_factory, "rolling", n=2)

    def on_current(host, argv):     # hosts that run the fleet's current release, as real ones
        return CommandResult(0, fleet.releases.current + "\n") if argv[0] == "current" else None

    async def main():
        providers = providers_for(fleet, on_current)
        await seed_balancer(fleet, providers.balancer)
        first = Rollout(fleet, state_dir=tmp_path, providers=providers)
        async with first:
            second = Rollout(fleet, state_dir=tmp_path, providers=providers_for(fleet))
            with pytest.raises(PolicyRefused, match="one rollout per fleet"):
                await second.__aenter__()

    asyncio.run(main())


def test_metrics_and_snapshot_feed_front_ends(fleet_factory):
    fleet = fleet_with(fleet_factory, "canary", n=6,
                       table={"steps": [{"hosts": 1, "pause": "5m"}, {"hosts": "100%"}]})
    target = fleet.releases.target
    snapshots = []

    async def traffic(engine, providers):
        while True:
            await asyncio.sleep(1.0)
            for name, backend in (await providers.balancer.state()).backends.items():
                if backend.state == "ready":
                    providers.balancer.record(name, requests=20,
                                              latencies=[0.004] * 20)
            if engine.state.value == "WAITING" and not snapshots:
                snapshots.append(engine.snapshot())

    async def main():
        providers = providers_for(fleet)
        await seed_balancer(fleet, providers.balancer)
        plan = strategies.get("canary").compile(fleet, fleet.strategy.params)
        engine = Engine(fleet, plan, providers, clock=LoopClock(), metrics_interval=5.0)
        events = []
        engine.subscribe(events.append)
        helper = asyncio.ensure_future(traffic(engine, providers))
        result = await engine.run()
        helper.cancel()
        return result, events

    result, events = run_virtual(main)
    assert result.outcome is Outcome.COMPLETED
    metrics = [e.data for e in events if e.kind == "metrics"]
    assert metrics
    # during the canary's pause: one host of six on the target release
    during_pause = [m for m in metrics if (m["pools"].get(target) or {}).get("rps") == 20.0
                    and m["pools"]["1.0.0"]["rps"] == 100.0]
    assert len(during_pause) >= 50, [m["pools"] for m in metrics]    # 5 minutes / 5 s
    figures = during_pause[-1]
    assert figures["pools"][target]["p95"] == 0.005
    assert figures["pools"][target]["error_rate"] == 0.0
    assert len(figures["hosts"]) == 6
    snap = snapshots[0]
    assert snap["state"] == "WAITING" and 0 < snap["wait_remaining_s"] <= 300
    assert snap["plan"][0]["description"].startswith("upgrade 1 host")
    assert 0 in snap["done_steps"]


def test_pause_during_a_wait_shows_paused_at_once_and_holds_the_next_step(fleet_factory):
    fleet = fleet_with(fleet_factory, "canary", n=4,
                       table={"steps": [{"hosts": 1, "pause": "2m"}, {"hosts": "100%"}]})
    seen = []

    async def operator(engine, providers):
        while engine.state.value != "WAITING":
            await asyncio.sleep(1)
        engine.pause()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(engine.state.value)
        await asyncio.sleep(600)      # far past the 2 minute pause: still held
        seen.append((engine.state.value, engine.snapshot()["hosts_on_target"]))
        engine.resume()

    engine, result, events = run_engine(fleet, providers_for(fleet), during=operator)
    assert result.outcome is Outcome.COMPLETED
    assert seen[0] == "PAUSED"
    assert seen[1] == ("PAUSED", 1)
    states = [e.data["state"] for e in events if e.kind == "state"]
    # the 2 minute wait was frozen while paused: resuming finishes it, then the next step
    assert states[states.index("PAUSED") + 1:states.index("PAUSED") + 3] == ["WAITING",
                                                                             "RUNNING"]


def test_analysis_failure_during_an_operator_pause_acts_at_once(fleet_factory):
    fleet = fleet_with(fleet_factory, "canary", n=6,
                       table={"steps": [{"hosts": 1, "pause": "promote"}, {"hosts": "100%"}]})
    target = fleet.releases.target
    marks = {}

    async def scenario(engine, providers):
        while engine.state.value != "WAITING":
            await asyncio.sleep(1)
        engine.pause()
        marks["paused_at"] = asyncio.get_running_loop().time()
        while True:       # now the canary goes bad while the operator is away
            await asyncio.sleep(1.0)
            for name, backend in (await providers.balancer.state()).backends.items():
                if backend.state == "ready":
                    providers.balancer.record(name, requests=20,
                                              errors=10 if backend.pool == target else 0)
            if engine.state.value == "ROLLING BACK" and "rollback_at" not in marks:
                marks["rollback_at"] = asyncio.get_running_loop().time()

    engine, result, events = run_engine(fleet, providers_for(fleet), during=scenario)
    assert result.outcome is Outcome.ROLLED_BACK
    assert marks["rollback_at"] - marks["paused_at"] < 60     # not held until a resume


def test_analysis_that_cannot_run_is_no_data_never_a_pass(fleet_factory):
    fleet = fleet_with(fleet_factory, "rolling", n=3,
                       verify=VerifySpec(for_=30.0, interval=10.0, no_data="fail",
                                         min_requests=0, consecutive_failures=2))
    providers = providers_for(fleet)

    real_check = providers.health.check
    calls = []

    async def breaks_after_the_upgrade(host, *, port=None):
        calls.append(host.name)
        if len(calls) > 1:       # the upgrade's own check passed; analysis then breaks
            raise RuntimeError("health endpoint exploded")
        return await real_check(host, port=port)

    providers.health.check = breaks_after_the_upgrade
    engine, result, events = run_engine(fleet, providers)
    assert result.outcome is Outcome.FAILED or result.outcome is Outcome.ROLLED_BACK
    assert result.outcome is not Outcome.COMPLETED
    assert any(e.kind == "verdict" and e.data["result"] == "no_data"
               and "could not run" in e.data["detail"] for e in events)


def test_pause_then_resume_at_once_leaves_no_stale_paused_state(fleet_factory):
    fleet = fleet_with(fleet_factory, "canary", n=4,
                       table={"steps": [{"hosts": 1, "pause": "promote"}, {"hosts": "100%"}]})
    seen = []

    async def operator(engine, providers):
        while engine.state.value != "WAITING":
            await asyncio.sleep(1)
        engine.pause()
        engine.resume()
        seen.append(engine.state.value)
        engine.pause()                      # still honoured
        seen.append(engine.state.value)
        engine.resume()
        engine.promote()

    engine, result, events = run_engine(fleet, providers_for(fleet), during=operator)
    assert result.outcome is Outcome.COMPLETED
    assert seen == ["WAITING", "PAUSED"]


def test_shedding_roll_back_after_resume_brings_the_turned_down_cluster_back(fleet_factory,
                                                                             tmp_path):
    """Crash after the old cluster was turned down; resume; abort: the old hosts are
    started again and take the traffic back (never a split to an empty pool)."""
    fleet = fleet_with(fleet_factory, "shedding", n=3, new=3)
    journal = Journal(tmp_path / "journal.sqlite")
    balancer = NoopBalancer()

    async def crash_after_turn_down():
        providers = Providers(NoopTransport(delay=DELAY), balancer, NoopHealthCheck())
        await seed_balancer(fleet, balancer)
        plan = strategies.get("shedding").compile(fleet, fleet.strategy.params)
        engine = Engine(fleet, plan, providers, clock=LoopClock(), journal=journal)
        task = asyncio.ensure_future(engine.run())

        def crash(event):       # the controller dies right after the last turn-down
            if event.kind == "host_done" and event.data["mode"] == "turn_down" and \
                    sum(1 for e in engine.history if e.kind == "host_done"
                        and e.data["mode"] == "turn_down") == 3:
                task.cancel()

        engine.subscribe(crash)
        await asyncio.gather(task, return_exceptions=True)

    run_virtual(crash_after_turn_down)
    record = journal.unfinished(fleet.name)
    state = replay(record, journal.entries(record.id), fleet)
    assert state.turned_down == {h.name for h in fleet.main_hosts}

    async def resume_and_abort():
        from upgrader.plan import Plan
        providers = Providers(NoopTransport(delay=DELAY), balancer, NoopHealthCheck())
        engine = Engine(fleet, Plan.from_json(record.plan), providers, clock=LoopClock(),
                        journal=journal, resume=state)
        engine.abort(rollback=True)
        return await engine.run()

    result = run_virtual(resume_and_abort)
    journal.close()
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    final = asyncio.run(balancer.state())
    ready = {n: b.pool for n, b in final.backends.items() if b.state == "ready"}
    assert ready == {h.name: fleet.releases.current for h in fleet.main_hosts}
    assert final.split[fleet.releases.current] == 100


def test_roll_back_takes_a_bad_release_out_of_traffic_as_soon_as_capacity_allows(fleet_factory):
    """Six hosts on the target when the seventh fails; roll-back goes one host at a time and
    half the fleet must stay in service. Once three hosts are back on the old release (four
    serve it), every other target host leaves traffic at once, not one by one at its turn."""
    fleet = fleet_with(fleet_factory, "rolling", n=8, table={"batch": [1]})
    target = fleet.releases.target
    bad = fleet.main_hosts[6].name

    def responder(host, argv):
        if argv[0] == "deploy" and argv[1] == target and host.name == bad:
            return CommandResult(1, "", "disk full")
        return None

    providers = providers_for(fleet, responder)
    serving_target_at_rollback_start: list[list[str]] = []

    async def watch(engine, providers):
        def on_event(event):
            if (event.kind == "host_phase" and event.data.get("mode") == "rollback"
                    and event.data.get("phase") == "draining"):
                serving_target_at_rollback_start.append(sorted(
                    n for n, b in providers.balancer._backends.items()
                    if b.pool == target and b.state == "ready"))
        engine.subscribe(on_event)

    engine, result, events = run_engine(fleet, providers, during=watch)
    assert result.outcome is Outcome.ROLLED_BACK
    assert engine.plan.rollback_parallel == 1
    counts = [len(serving) for serving in serving_target_at_rollback_start]
    # 6 on the target when roll-back begins (only 1 old host ready: no drain up front);
    # the fourth host to roll back finds no target host serving any more
    assert counts[0] == 6
    assert counts[3:] == [0] * len(counts[3:]) and len(counts) >= 6, counts


def test_roll_back_never_drains_the_last_serving_host(fleet_factory):
    """Three hosts, batches of 1 then 2; the third host becomes unreachable in the second
    wave (every command on it fails) while the second goes to the target. Roll-back may do
    two hosts at once; the unreachable one fails at once, and rolling the other two back
    together would leave users no server. The second waits until the first is back."""
    fleet = fleet_with(fleet_factory, "rolling", n=3, table={"batch": [1, 2]})
    bad = fleet.main_hosts[2].name

    def responder(host, argv):
        if host.name == bad and argv[0] in ("stop", "deploy", "start"):
            return CommandResult(255, "", "ssh: connect to host: No route to host")
        return None

    providers = providers_for(fleet, responder)
    serving: list[int] = []

    async def watch(engine, providers):
        def on_event(event):
            if event.kind in ("host_phase", "host_done", "traffic"):
                serving.append(sum(1 for b in providers.balancer._backends.values()
                                   if b.state == "ready" and b.weight > 0))
        engine.subscribe(on_event)

    engine, result, events = run_engine(fleet, providers, during=watch)
    assert engine.plan.rollback_parallel == 2
    assert result.outcome is Outcome.FAILED and bad in result.error    # it stays unreachable
    assert {result.hosts[h.name] for h in fleet.main_hosts[:2]} == {fleet.releases.current}
    assert serving and min(serving) >= 1, serving
