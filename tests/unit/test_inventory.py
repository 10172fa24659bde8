"""The inventory read before the first step (upgrader.engine.inventory): the pure comparison
of what the fleet runs against its fleet file, and the engine and ``Rollout`` following it
(virtual time, in-memory providers). Without the inventory, every test here fails: the
engine re-installs hosts already on the target, and a fleet on another release is upgraded
(and "rolled back" to a release it never ran)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from upgrader import strategies
from upgrader.clock import LoopClock, run_virtual
from upgrader.engine.core import Engine, Providers
from upgrader.engine.inventory import (
    Assessment,
    Fixes,
    Inventory,
    assess,
    read_inventory,
    refusal_text,
    take_inventory,
)
from upgrader.engine.reconcile import Reading
from upgrader.engine.resume import replay
from upgrader.errors import InventoryRefused, PolicyRefused
from upgrader.events import Outcome
from upgrader.journal import Journal
from upgrader.model import StrategySpec, Timing, VerifySpec
from upgrader.providers.base import BackendState, BalancerState, CommandResult
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport
from upgrader.rollout import Rollout, inventory_applies

CURRENT, TARGET = "1.0.0", "1.1.0"


def make(fleet_factory, n=4, kind="rolling", **kw):
    fleet = fleet_factory(n, **kw)
    module = strategies.get(kind)
    params = module.parse_params({"batch": 1}, None) if kind == "rolling" else \
        module.default_params()
    return dataclasses.replace(
        fleet, strategy=StrategySpec(kind, params, on_failure="rollback"),
        verify=VerifySpec(for_=10.0, interval=5.0, no_data="pass"),
        timing=Timing(host_upgrade=5.0, health_timeout=20.0, drain_timeout=10.0),
        commands=dataclasses.replace(fleet.commands, current=("current", "{slot}")))


def backend(name, pool, state="ready", weight=100):
    return BackendState(name, "127.0.0.1", 80, pool, weight, state)


def balancer_of(pools: dict[str, str]) -> BalancerState:
    return BalancerState({n: backend(n, p) for n, p in pools.items()})


def inventory(releases: dict[str, str | None], pools: dict[str, str], **kw) -> Inventory:
    return Inventory({(h, None): Reading(r) for h, r in releases.items()}, balancer_of(pools),
                     **kw)


# ------------------------------------------------------------------------------- pure part


def test_hosts_on_target_and_in_service_are_done_the_rest_is_not(fleet_factory):
    fleet = make(fleet_factory)
    a, b, c, d = (h.name for h in fleet.hosts)
    found = assess(fleet, inventory({a: TARGET, b: TARGET, c: CURRENT, d: CURRENT},
                                    {a: TARGET, b: CURRENT, c: CURRENT, d: CURRENT}))
    assert found.ready and found.problems == ()
    # b runs the target but serves in the current pool: not in service on target, not done
    assert found.done == {a}
    assert found.fact(b).release == TARGET and not found.fact(b).done
    plan = strategies.get("rolling").compile(fleet, fleet.strategy.params)
    assert not found.nothing_to_do(plan)


def test_every_host_done_is_nothing_to_do(fleet_factory):
    fleet = make(fleet_factory)
    names = [h.name for h in fleet.hosts]
    found = assess(fleet, inventory(dict.fromkeys(names, TARGET), dict.fromkeys(names, TARGET)))
    plan = strategies.get("rolling").compile(fleet, fleet.strategy.params)
    assert found.done == set(names) and found.nothing_to_do(plan)


def test_another_release_no_release_missing_backend_and_unreachable_are_problems(
        fleet_factory):
    fleet = make(fleet_factory, n=5)
    a, b, c, d, e = (h.name for h in fleet.hosts)
    inv = Inventory({(a, None): Reading("2.0.0"), (b, None): Reading(None),
                     (c, None): Reading(CURRENT), (d, None): Reading(error="TransportError: no"),
                     (e, None): Reading(CURRENT)},
                    balancer_of({a: CURRENT, b: CURRENT, d: CURRENT, e: CURRENT}))
    found = assess(fleet, inv)
    assert not found.ready
    by_host = {(p.host, p.found) for p in found.problems}
    assert by_host == {(a, "release 2.0.0"), (b, "no release installed"),
                       (c, "no such backend"), (d, "TransportError: no")}
    for problem in found.problems:
        assert problem.expected and problem.fix
        assert problem.text().startswith(f"{problem.host}: expected ")
    assert f"expected release {CURRENT} or {TARGET}" in refusal_text("f", found)
    assert len(refusal_text("f", found).splitlines()) == 1 + len(found.problems)


def test_a_balancer_that_does_not_answer_is_one_problem_naming_the_fix(fleet_factory):
    fleet = make(fleet_factory)
    inv = Inventory({(h.name, None): Reading(CURRENT) for h in fleet.hosts}, None,
                    balancer_error="BalancerError: connection refused")
    found = assess(fleet, inv, Fixes("`upgrader lab up`", "u", "r", "m"))
    assert [(p.host, p.found, p.fix) for p in found.problems] == [
        (None, "BalancerError: connection refused", "`upgrader lab up`")]
    assert found.problems[0].text().startswith("balancer: expected the `builtin` balancer")


def test_blue_green_reads_the_live_slot(fleet_factory):
    fleet = make(fleet_factory, n=2, slots=True)
    a, b = (h.name for h in fleet.hosts)
    inv = Inventory({(a, "green"): Reading(TARGET), (b, "blue"): Reading(CURRENT)},
                    BalancerState({f"{a}@blue": backend(f"{a}@blue", CURRENT, "maint"),
                                   f"{a}@green": backend(f"{a}@green", TARGET),
                                   f"{b}@blue": backend(f"{b}@blue", CURRENT)}))
    found = assess(fleet, inv)
    assert found.ready
    assert (found.fact(a).slot, found.fact(a).done) == ("green", True)
    assert (found.fact(b).slot, found.fact(b).done) == ("blue", False)


def test_a_feature_rollout_refuses_hosts_on_another_release(fleet_factory):
    fleet = make(fleet_factory, n=2)
    fleet = dataclasses.replace(fleet, releases=dataclasses.replace(fleet.releases,
                                                                    target=CURRENT))
    names = [h.name for h in fleet.hosts]
    found = assess(fleet, inventory(dict.fromkeys(names, TARGET),
                                    dict.fromkeys(names, TARGET)))
    assert [p.found for p in found.problems] == [f"release {TARGET}"] * 2
    assert found.done == set()          # target == current: nothing is "done" by release


def test_without_a_current_command_releases_are_not_judged(fleet_factory):
    fleet = make(fleet_factory, n=2)
    names = [h.name for h in fleet.hosts]
    found = assess(fleet, Inventory({}, balancer_of(dict.fromkeys(names, CURRENT)),
                                    releases_read=False))
    assert found.ready and not found.releases_read and found.notes
    assert all(f.reachable is None for f in found.hosts)


def test_inventory_applies_only_with_a_current_command_and_a_real_transport(fleet_factory):
    fleet = make(fleet_factory, n=1)
    assert inventory_applies(fleet)
    assert not inventory_applies(dataclasses.replace(
        fleet, commands=dataclasses.replace(fleet.commands, current=None)))
    noop = dataclasses.replace(fleet, transport=dataclasses.replace(fleet.transport,
                                                                    kind="noop"))
    assert not inventory_applies(noop) and inventory_applies(noop, True)


def test_the_refusal_is_a_policy_refusal_carrying_its_problems():
    exc = InventoryRefused("x", [{"host": "a", "text": "a: expected"}])
    assert isinstance(exc, PolicyRefused) and exc.problems[0]["host"] == "a"


# ------------------------------------------------------------------------------- reading


class Hosts:
    """A transport's view of hosts that remember their release; counts concurrency."""

    def __init__(self, releases: dict[str, str], *, unreachable: tuple[str, ...] = ()):
        self.releases = dict(releases)
        self.unreachable = unreachable
        self.installs: list[str] = []
        self.running = self.peak = 0

    def responder(self, host, argv):
        if host.name in self.unreachable:
            return CommandResult(255, "", "ssh: connect to host: No route to host")
        if argv[0] == "deploy":
            self.releases[host.name] = argv[1]
            self.installs.append(host.name)
        if argv[0] == "current":
            return CommandResult(0, self.releases.get(host.name, "") + "\n")
        return None


def test_reading_is_bounded_by_the_transports_concurrency(fleet_factory):
    fleet = make(fleet_factory, n=40)
    hosts = Hosts({h.name: CURRENT for h in fleet.hosts})

    class Counting(NoopTransport):
        max_parallel = 8

        async def run(self, host, argv, *, timeout=None, check=True):
            hosts.running += 1
            hosts.peak = max(hosts.peak, hosts.running)
            try:
                return await super().run(host, argv, timeout=timeout, check=check)
            finally:
                hosts.running -= 1

    async def main():
        balancer = NoopBalancer()
        for h in fleet.hosts:
            await balancer.set_backend(h.name, address=h.address, port=h.port, pool=CURRENT)
        transport = Counting(delay=1.0, responder=hosts.responder)
        start = asyncio.get_running_loop().time()
        found = await take_inventory(fleet, transport, balancer)
        return found, asyncio.get_running_loop().time() - start

    found, took = run_virtual(main)
    assert found.ready and hosts.peak == 8
    assert took == pytest.approx(5.0)       # 40 hosts, 8 at a time, 1 s each: not 40 s


def test_an_unreachable_host_and_balancer_never_raise(fleet_factory):
    fleet = make(fleet_factory, n=2)
    hosts = Hosts({h.name: CURRENT for h in fleet.hosts}, unreachable=(fleet.hosts[0].name,))

    class Down(NoopBalancer):
        async def state(self):
            from upgrader.errors import BalancerError
            raise BalancerError("connection refused")

    async def main():
        return await read_inventory(fleet, NoopTransport(responder=hosts.responder), Down())

    inv = run_virtual(main)
    assert inv.balancer is None and "connection refused" in inv.balancer_error
    assert inv.readings[(fleet.hosts[0].name, None)].error.startswith("exit status 255")


# ------------------------------------------------------------------------------- the engine


async def seeded(fleet, pools: dict[str, str]) -> NoopBalancer:
    balancer = NoopBalancer()
    for h in fleet.main_hosts:
        await balancer.set_backend(h.name, address=h.address, port=h.port, pool=pools[h.name])
    return balancer


def run_engine(fleet, hosts: Hosts, pools: dict[str, str], journal=None):
    async def main():
        balancer = await seeded(fleet, pools)
        transport = NoopTransport(delay=1.0, responder=hosts.responder)
        found = await take_inventory(fleet, transport, balancer)
        plan = strategies.get(fleet.strategy.kind).compile(fleet, fleet.strategy.params)
        events = []
        engine = Engine(fleet, plan, Providers(transport, balancer, NoopHealthCheck()),
                        clock=LoopClock(), observers=[events.append], inventory=found,
                        journal=journal)
        start = asyncio.get_running_loop().time()
        result = await engine.run()
        return result, events, asyncio.get_running_loop().time() - start

    return run_virtual(main)


def test_hosts_already_on_target_are_ok_and_never_reinstalled(fleet_factory):
    fleet = make(fleet_factory, n=4)
    names = [h.name for h in fleet.hosts]
    hosts = Hosts({names[0]: TARGET, names[1]: TARGET, names[2]: CURRENT, names[3]: CURRENT})
    result, events, _ = run_engine(fleet, hosts, {names[0]: TARGET, names[1]: TARGET,
                                                  names[2]: CURRENT, names[3]: CURRENT})
    assert result.outcome is Outcome.COMPLETED
    assert sorted(hosts.installs) == names[2:]
    ok = [e.data["host"] for e in events if e.kind == "host_done" and e.data["mode"] == "ok"]
    assert ok == names[:2]
    assert result.hosts == dict.fromkeys(names, TARGET)


def test_a_fleet_all_on_target_finishes_at_once_with_nothing_to_do(fleet_factory, tmp_path):
    fleet = make(fleet_factory, n=4)
    names = [h.name for h in fleet.hosts]
    hosts = Hosts(dict.fromkeys(names, TARGET))
    journal = Journal(tmp_path / "j.sqlite")
    result, events, took = run_engine(fleet, hosts, dict.fromkeys(names, TARGET), journal)
    assert result.outcome is Outcome.COMPLETED and hosts.installs == []
    assert took < 1.0                        # no pause, no verification hold, no step
    assert not any(e.kind == "step_started" for e in events)
    (inv,) = [e for e in events if e.kind == "inventory"]
    assert inv.data["nothing_to_do"] and inv.data["done"] == 4
    # a resume of such a journal knows the hosts were done before the rollout
    record = journal.latest(fleet.name)
    state = replay(record, journal.entries(record.id), fleet)
    assert state.already_done == set(names) and state.releases == dict.fromkeys(names, TARGET)
    journal.close()


def test_the_summary_reports_what_hosts_run_not_the_fleet_file(fleet_factory):
    """A host on the target but out of service (drained): the rollout runs its procedure
    without installing again, and every release reported is one read or installed."""
    fleet = make(fleet_factory, n=2)
    names = [h.name for h in fleet.hosts]
    hosts = Hosts({names[0]: TARGET, names[1]: CURRENT})
    result, events, _ = run_engine(fleet, hosts, {names[0]: CURRENT, names[1]: CURRENT})
    assert result.outcome is Outcome.COMPLETED
    assert hosts.installs == [names[1]]
    assert result.hosts == dict.fromkeys(names, TARGET)


# ------------------------------------------------------------------------------- Rollout


def test_rollout_refuses_before_the_journal_begins(fleet_factory, tmp_path):
    fleet = make(fleet_factory, n=3)
    names = [h.name for h in fleet.hosts]
    hosts = Hosts({names[0]: "2.0.0", names[1]: CURRENT, names[2]: CURRENT})

    async def main():
        balancer = await seeded(fleet, dict.fromkeys(names, CURRENT))
        transport = NoopTransport(responder=hosts.responder)
        providers = Providers(transport, balancer, NoopHealthCheck())
        with pytest.raises(InventoryRefused) as refused:
            async with Rollout(fleet, providers=providers, state_dir=tmp_path,
                               clock=LoopClock(), metrics_interval=None):
                pass
        return refused.value, balancer

    exc, balancer = run_virtual(main)
    assert [p["host"] for p in exc.problems] == [names[0]]
    assert "found release 2.0.0" in str(exc)
    assert hosts.installs == [] and [op[0] for op in balancer.operations] == ["set_backend"] * 3
    journal = Journal(tmp_path / "journal.sqlite")
    try:
        assert journal.latest(fleet.name) is None
    finally:
        journal.close()


def test_assessment_json_round_trip(fleet_factory):
    fleet = make(fleet_factory, n=1)
    found = assess(fleet, inventory({fleet.hosts[0].name: CURRENT},
                                    {fleet.hosts[0].name: CURRENT}))
    data = found.to_json()
    assert isinstance(found, Assessment) and data["ready"] and data["hosts"][0]["state"] == "ready"


def test_a_resume_leaves_hosts_found_done_alone(fleet_factory):
    """Replay knows the ``ok`` hosts; reconcile expects nothing of them (a blue-green host
    found on its target slot would otherwise be 'repaired' back to the current pool)."""
    from upgrader.engine import reconcile as rc
    from upgrader.engine.progress import ResumeState

    fleet = make(fleet_factory, n=2, slots=True)
    a, b = (h.name for h in fleet.hosts)
    plan = strategies.get("bluegreen").compile(fleet, strategies.get("bluegreen")
                                               .default_params())
    resume = ResumeState(rollout="r", releases={a: TARGET, b: CURRENT}, already_done={a})
    expected = rc.expectations(fleet, plan, resume, live_slots={a: "green", b: "blue"},
                               original_slots={a: "green", b: "blue"})
    assert {w.host for w in expected.hosts} == {b}
    assert {w.host for w in expected.backends} == {b}
