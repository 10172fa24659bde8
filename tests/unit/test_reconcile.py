"""Resume that reconciles: the pure comparison (journal expectations against real readings
and balancer state), and the engine applying it on resume, in virtual time with fake
providers (an in-memory balancer; a transport whose hosts remember what was installed)."""

from __future__ import annotations

import asyncio
import dataclasses

from upgrader import strategies
from upgrader.clock import LoopClock, run_virtual
from upgrader.engine import reconcile as rc
from upgrader.engine.core import Engine, Providers, ResumeState
from upgrader.engine.resume import replay
from upgrader.events import Outcome, RolloutState
from upgrader.journal import Journal
from upgrader.model import StrategySpec, Timing, VerifySpec
from upgrader.plan import Plan
from upgrader.providers.base import BackendState, BalancerState, CommandResult
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport

DELAY = 5.0
CURRENT, TARGET = "1.0.0", "1.1.0"


def make(fleet_factory, kind="rolling", n=4, **kw):
    fleet = fleet_factory(n, **kw)
    module = strategies.get(kind)
    params = module.parse_params({"batch": 1}, None) if kind == "rolling" else \
        module.default_params()
    return dataclasses.replace(
        fleet, strategy=StrategySpec(kind, params, on_failure="rollback"),
        verify=VerifySpec(for_=10.0, interval=5.0, no_data="pass"),
        timing=Timing(host_upgrade=3 * DELAY, health_timeout=20.0, drain_timeout=10.0),
        commands=dataclasses.replace(fleet.commands, current=("current", "{slot}")))


# ------------------------------------------------------------------------------- pure compare


def backend(name, pool, state="ready", weight=100):
    return BackendState(name, "127.0.0.1", 80, pool, weight, state)


def resume_state(**kw) -> ResumeState:
    state = ResumeState(rollout="r")
    for key, value in kw.items():
        setattr(state, key, value)
    return state


def test_a_host_on_another_known_release_is_put_in_doubt_and_its_step_reopened(fleet_factory):
    fleet = make(fleet_factory)
    plan = strategies.get("rolling").compile(fleet, fleet.strategy.params)
    names = [h.name for h in fleet.main_hosts]
    resume = resume_state(releases={names[0]: TARGET, names[1]: CURRENT, names[2]: CURRENT,
                                    names[3]: CURRENT},
                          hosts_done={0: {names[0]}}, done_steps={0})
    expected = rc.expectations(fleet, plan, resume, live_slots={}, original_slots={})
    readings = {(names[0], None): rc.Reading(CURRENT),          # rolled back behind our back
                (names[1], None): rc.Reading(TARGET),           # upgraded behind our back
                (names[2], None): rc.Reading("0.9.7"),          # neither: unsafe
                (names[3], None): rc.Reading(error="ssh: connection refused")}
    balancer = BalancerState({n: backend(n, TARGET if n == names[0] else CURRENT)
                              for n in names})
    diffs = {d.subject: d for d in rc.compare(expected, readings, balancer, current=CURRENT,
                                              target=TARGET)}
    assert set(diffs) == set(names)
    first = diffs[names[0]]
    assert (first.action, first.journal, first.real, first.steps) == \
        (rc.IN_DOUBT, TARGET, CURRENT, (0,))
    assert not first.unsafe and "in doubt for 1.0.0" in first.detail
    assert (diffs[names[1]].action, diffs[names[1]].release) == (rc.IN_DOUBT, TARGET)
    assert diffs[names[2]].action == rc.REINSTALL and diffs[names[2]].unsafe
    assert "neither the current nor the target" in diffs[names[2]].detail
    assert diffs[names[3]].action == rc.REINSTALL and diffs[names[3]].unsafe
    assert "connection refused" in diffs[names[3]].detail
    # the hosts' procedures are redone: their backends are not repaired on their own
    assert all(d.kind == "release" for d in diffs.values())


def test_a_host_in_doubt_may_run_either_release_while_installing(fleet_factory):
    fleet = make(fleet_factory, n=2)
    plan = strategies.get("rolling").compile(fleet, fleet.strategy.params)
    a, b = (h.name for h in fleet.main_hosts)
    resume = resume_state(releases={a: CURRENT, b: CURRENT},
                          in_doubt={a: "installing", b: "starting"},
                          in_doubt_release={a: TARGET, b: TARGET})
    expected = rc.expectations(fleet, plan, resume, live_slots={}, original_slots={})
    balancer = BalancerState({a: backend(a, CURRENT, "drain"), b: backend(b, CURRENT, "maint")})
    for real_a in (CURRENT, TARGET):
        readings = {(a, None): rc.Reading(real_a), (b, None): rc.Reading(TARGET)}
        assert rc.compare(expected, readings, balancer, current=CURRENT, target=TARGET) == []
    # past its install the journal says it runs the target: the old release is a difference
    readings = {(a, None): rc.Reading(CURRENT), (b, None): rc.Reading(CURRENT)}
    [diff] = rc.compare(expected, readings, balancer, current=CURRENT, target=TARGET)
    assert (diff.subject, diff.action, diff.release) == (b, rc.IN_DOUBT, CURRENT)


def test_backends_that_should_serve_or_should_not(fleet_factory):
    fleet = make(fleet_factory, n=4)
    plan = strategies.get("rolling").compile(fleet, fleet.strategy.params)
    a, b, c, d = (h.name for h in fleet.main_hosts)
    resume = resume_state(releases={a: TARGET, b: CURRENT, c: CURRENT, d: None},
                          hosts_done={0: {a}}, turned_down={d})
    expected = rc.expectations(fleet, plan, resume, live_slots={}, original_slots={})
    balancer = BalancerState({a: backend(a, TARGET, "drain"), b: backend(b, CURRENT, weight=0),
                              d: backend(d, CURRENT)})             # c is missing
    diffs = {x.subject: x for x in rc.compare(expected, {}, balancer, current=CURRENT,
                                              target=TARGET)}
    assert {k: v.action for k, v in diffs.items()} == {
        a: rc.ENABLE, b: rc.ENABLE, c: rc.ENABLE, d: rc.REMOVE}
    assert diffs[a].release == TARGET and diffs[a].real["state"] == "drain"
    assert "missing" in diffs[c].detail and "weight 0" in diffs[b].detail
    assert diffs[d].journal == {"state": "absent"}


def test_traffic_is_compared_with_the_last_journaled_and_the_interrupted_step(fleet_factory):
    fleet = make(fleet_factory, kind="shedding", n=2, new=2)
    plan = strategies.get("shedding").compile(fleet, fleet.strategy.params)
    journaled = {"split": {CURRENT: 75.0, TARGET: 25.0}, "routes": None, "maintenance": False}
    resume = resume_state(releases={h.name: CURRENT for h in fleet.main_hosts}, traffic=journaled)
    state = BalancerState({h.name: backend(h.name, CURRENT) for h in fleet.main_hosts},
                          split={CURRENT: 50.0, TARGET: 50.0})
    expected = rc.expectations(fleet, plan, resume, live_slots={}, original_slots={})
    [diff] = rc.compare(expected, {}, state, current=CURRENT, target=TARGET)
    assert (diff.kind, diff.action, diff.journal) == ("split", rc.REAPPLY, journaled["split"])
    # the step the crash interrupted was setting exactly this: it reruns, nothing to repair
    step = next(i for i, s in enumerate(plan.steps) if s.kind == "set_traffic"
                and dict(s.weights).get("target") == 50.0)
    pending = rc.pending_traffic(plan, step, fleet)
    expected = rc.expectations(fleet, plan, resume, live_slots={}, original_slots={},
                               pending=pending)
    assert rc.compare(expected, {}, state, current=CURRENT, target=TARGET) == []
    # during a roll-back the roll-back sets traffic: reported, not repaired
    resume.rolling_back = True
    expected = rc.expectations(fleet, plan, resume, live_slots={}, original_slots={})
    [diff] = rc.compare(expected, {}, state, current=CURRENT, target=TARGET)
    assert diff.action == rc.NOTHING
    # a 0 % pool is the same as no pool at all
    assert rc._same("split", {CURRENT: 100.0, TARGET: 0.0}, {CURRENT: 100.0})


def test_blue_green_slots_are_read_per_slot(fleet_factory):
    fleet = make(fleet_factory, kind="bluegreen", n=2, slots=True)
    plan = strategies.get("bluegreen").compile(fleet, fleet.strategy.params)
    prepare = next(i for i, s in enumerate(plan.steps) if s.kind == "prepare_slots")
    a, b = (h.name for h in fleet.main_hosts)
    resume = resume_state(releases={a: CURRENT, b: CURRENT}, hosts_done={prepare: {a, b}},
                          live_slots={a: "blue", b: "blue"},
                          original_slots={a: "blue", b: "blue"})
    expected = rc.expectations(fleet, plan, resume, live_slots=resume.live_slots,
                               original_slots=resume.original_slots)
    assert {(w.host, w.slot): w.allowed for w in expected.hosts} == {
        (a, "blue"): (CURRENT,), (a, "green"): (TARGET,),
        (b, "blue"): (CURRENT,), (b, "green"): (TARGET,)}
    balancer = BalancerState({f"{a}@blue": backend(f"{a}@blue", CURRENT),
                              f"{a}@green": backend(f"{a}@green", TARGET, "maint"),
                              f"{b}@blue": backend(f"{b}@blue", CURRENT),
                              f"{b}@green": backend(f"{b}@green", TARGET, "ready")})
    readings = {(a, "blue"): rc.Reading(CURRENT), (a, "green"): rc.Reading(CURRENT),
                (b, "blue"): rc.Reading(CURRENT), (b, "green"): rc.Reading(TARGET)}
    diffs = {d.subject: d for d in rc.compare(expected, readings, balancer, current=CURRENT,
                                              target=TARGET)}
    # a's prepared slot lost its install: prepared again (in doubt), not a pause
    assert diffs[f"{a}@green"].action == rc.IN_DOUBT
    assert diffs[f"{a}@green"].steps == (prepare,)
    # b's idle slot serves users before its swap: set back to maintenance
    assert diffs[f"{b}@green"].action == rc.SET_STATE
    assert diffs[f"{b}@green"].journal == {"state": "maint"}


# ----------------------------------------------------------------- the engine, on resume


class Hosts:
    """What each host (slot) really has installed, as a transport responder."""

    def __init__(self, fleet):
        self.installed = {(h.name, None): CURRENT for h in fleet.main_hosts}
        self.installs: list[tuple[str, str]] = []

    def __call__(self, host, argv):
        if argv[0] == "deploy":
            self.installed[(host.name, None)] = argv[1]
            self.installs.append((host.name, argv[1]))
        if argv[0] == "current":
            return CommandResult(0, (self.installed.get((host.name, None)) or "") + "\n")
        return None


async def seed(fleet, balancer):
    for host in fleet.main_hosts:
        await balancer.set_backend(host.name, address=host.address, port=host.port,
                                   pool=CURRENT)


def crash_after(fleet, journal, balancer, hosts, predicate):
    """Run until ``predicate(event, engine)``; then the controller dies (the task is
    cancelled at that point: nothing after it runs)."""

    async def main():
        providers = Providers(NoopTransport(delay=DELAY, responder=hosts), balancer,
                              NoopHealthCheck())
        await seed(fleet, balancer)
        plan = strategies.get(fleet.strategy.kind).compile(fleet, fleet.strategy.params)
        engine = Engine(fleet, plan, providers, clock=LoopClock(), journal=journal)
        task = asyncio.ensure_future(engine.run())
        engine.subscribe(lambda e: predicate(e, engine) and task.cancel())
        await asyncio.gather(task, return_exceptions=True)

    run_virtual(main)
    record = journal.unfinished(fleet.name)
    return record, replay(record, journal.entries(record.id), fleet)


def resume_run(fleet, journal, balancer, hosts, record, state, *, interactive=False,
               during=None):
    async def main():
        providers = Providers(NoopTransport(delay=DELAY, responder=hosts), balancer,
                              NoopHealthCheck())
        engine = Engine(fleet, Plan.from_json(record.plan), providers, clock=LoopClock(),
                        journal=journal, resume=state, interactive=interactive)
        events = []
        engine.subscribe(events.append)
        helper = asyncio.ensure_future(during(engine)) if during else None
        result = await engine.run()
        if helper:
            helper.cancel()
        return result, events

    return run_virtual(main)


def nth_done(n):
    return lambda e, engine: e.kind == "host_done" and sum(
        1 for x in engine.history if x.kind == "host_done") == n


def test_resume_with_nothing_changed_reports_no_difference(fleet_factory, tmp_path):
    fleet = make(fleet_factory)
    journal, balancer, hosts = Journal(tmp_path / "j.sqlite"), NoopBalancer(), Hosts(fleet)
    record, state = crash_after(fleet, journal, balancer, hosts, nth_done(2))
    result, events = resume_run(fleet, journal, balancer, hosts, record, state)
    journal.close()
    assert result.outcome is Outcome.COMPLETED, result.error
    assert [e for e in events if e.kind == "reconcile"] == []
    assert sorted(h for h, r in hosts.installs if r == TARGET) == \
        sorted(h.name for h in fleet.main_hosts)


def test_resume_repairs_what_changed_behind_the_journals_back(fleet_factory, tmp_path):
    fleet = make(fleet_factory)
    a, b, c, d = (h.name for h in fleet.main_hosts)
    journal, balancer, hosts = Journal(tmp_path / "j.sqlite"), NoopBalancer(), Hosts(fleet)
    record, state = crash_after(fleet, journal, balancer, hosts, nth_done(2))
    assert state.releases[a] == state.releases[b] == TARGET
    # while no controller ran: someone put a back on the old release, installed the target
    # on c by hand, and drained b
    hosts.installed[(a, None)] = CURRENT
    hosts.installed[(c, None)] = TARGET
    hosts.installs.append((c, TARGET))

    async def tamper():
        await balancer.set_backend_state(b, "drain")

    asyncio.run(tamper())
    before = len(hosts.installs)
    result, events = resume_run(fleet, journal, balancer, hosts, record, state)
    journal.close()
    assert result.outcome is Outcome.COMPLETED, result.error
    found = {e.data["subject"]: e.data for e in events if e.kind == "reconcile"}
    assert found[a]["action"] == "in_doubt" and found[a]["real"] == CURRENT
    assert found[c]["action"] == "in_doubt" and found[c]["real"] == TARGET
    assert found[b]["action"] == "enable"
    assert len(found) == 3
    # reconcile events come first, before any host is touched again
    kinds = [e.kind for e in events]
    assert kinds.index("reconcile") < kinds.index("host_phase")
    # a is upgraded again (it really lost the target); c is not installed twice
    again = [h for h, r in hosts.installs[before:] if r == TARGET]
    assert sorted(again) == sorted([a, d])
    final = asyncio.run(balancer.state())
    assert {n: (x.pool, x.state) for n, x in final.backends.items()} == dict.fromkeys((a, b, c, d), (TARGET, "ready"))


def test_unknown_release_reinstalls_headless_and_pauses_an_interactive_controller(
        fleet_factory, tmp_path):
    for interactive in (False, True):
        fleet = make(fleet_factory)
        a = fleet.main_hosts[0].name
        journal = Journal(tmp_path / f"j{interactive}.sqlite")
        balancer, hosts = NoopBalancer(), Hosts(fleet)
        record, state = crash_after(fleet, journal, balancer, hosts, nth_done(2))
        hosts.installed[(a, None)] = "0.9.7"
        seen = []

        async def operator(engine, seen=seen):
            while engine.state is not RolloutState.PAUSED:
                await asyncio.sleep(1.0)
            seen.append(engine.state_reason)
            engine.resume()

        before = len(hosts.installs)
        result, events = resume_run(fleet, journal, balancer, hosts, record, state,
                                    interactive=interactive,
                                    during=operator if interactive else None)
        journal.close()
        assert result.outcome is Outcome.COMPLETED, result.error
        [diff] = [e.data for e in events if e.kind == "reconcile"]
        assert diff["action"] == "reinstall" and diff["unsafe"] and diff["real"] == "0.9.7"
        assert "re-installing" in diff["detail"]
        if interactive:
            assert len(seen) == 1 and "0.9.7" in seen[0] and "abort" in seen[0]
            assert "once the operator resumes" in diff["detail"]
        else:
            assert not any(e.kind == "state" and e.data["state"] == "PAUSED" for e in events)
        assert (a, TARGET) in hosts.installs[before:]
        assert hosts.installed[(a, None)] == TARGET


def test_a_split_changed_while_no_controller_ran_is_set_again_as_journaled(fleet_factory,
                                                                          tmp_path):
    fleet = make(fleet_factory, kind="shedding", n=3, new=3)
    journal, balancer, hosts = Journal(tmp_path / "j.sqlite"), NoopBalancer(), Hosts(fleet)
    # dies right after the first traffic step that sends users to the target finished
    record, state = crash_after(fleet, journal, balancer, hosts, lambda e, engine: (
        e.kind == "step_finished" and e.data["step"] == "set_traffic"
        and (engine.last_traffic.get("split") or {}).get(TARGET, 0) > 0))
    journaled = dict(state.traffic["split"])
    assert 0 < journaled[TARGET] < 100
    asyncio.run(balancer.set_split({CURRENT: 100.0 - 2 * journaled[TARGET],
                                    TARGET: 2 * journaled[TARGET]}))
    result, events = resume_run(fleet, journal, balancer, hosts, record, state)
    journal.close()
    assert result.outcome is Outcome.COMPLETED, result.error
    [diff] = [e for e in events if e.kind == "reconcile"]
    assert diff.data["about"] == "split" and diff.data["action"] == "reapply"
    assert diff.data["journal"] == journaled
    # set again before the next traffic step ran
    splits = [e.data["split"] for e in events if e.kind == "traffic"]
    assert splits[0] == journaled
