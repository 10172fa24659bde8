"""A fault mid-roll-back leaves a resumable rollout (issue 12, point 4), in virtual time with
fake providers: the balancer stops answering once the roll-back has started.

Without the fix the rollout was journaled ``failed`` (finished), so ``upgrader resume``
answered "no unfinished rollout" while a host stayed on the target release: here
``journal.unfinished`` would return None after the first run and the test fails there.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from upgrader import strategies
from upgrader.clock import LoopClock, run_virtual
from upgrader.engine.core import Engine, Providers
from upgrader.engine.resume import replay
from upgrader.errors import BalancerError
from upgrader.events import Outcome
from upgrader.journal import ROLLBACK_INCOMPLETE, Journal
from upgrader.model import StrategySpec, Timing, VerifySpec
from upgrader.plan import Plan
from upgrader.providers.base import BalancerState, CommandResult
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport

DELAY = 5.0
CURRENT, TARGET = "1.0.0", "1.1.0"


class FlakyBalancer(NoopBalancer):
    """The in-memory balancer, with a switch that makes every call fail (a Runtime API
    socket gone)."""

    broken = False

    def _check(self) -> None:
        if self.broken:
            raise BalancerError("balancer: [Errno 2] No such file or directory (admin.sock)")

    async def state(self) -> BalancerState:
        self._check()
        return await super().state()

    async def set_backend(self, name: str, **kw: Any) -> None:
        self._check()
        await super().set_backend(name, **kw)

    async def set_backend_state(self, name: str, state: str) -> None:
        self._check()
        await super().set_backend_state(name, state)

    async def set_weight(self, name: str, weight: int) -> None:
        self._check()
        await super().set_weight(name, weight)

    async def remove_backend(self, name: str) -> None:
        self._check()
        await super().remove_backend(name)


class Hosts:
    """What each host has installed, as a transport responder."""

    def __init__(self, fleet: Any) -> None:
        self.installed = {h.name: CURRENT for h in fleet.main_hosts}
        self.installs: list[tuple[str, str]] = []

    def __call__(self, host: Any, argv: list[str]) -> CommandResult | None:
        if argv[0] == "deploy":
            self.installed[host.name] = argv[1]
            self.installs.append((host.name, argv[1]))
        if argv[0] == "current":
            return CommandResult(0, self.installed[host.name] + "\n")
        return None


def make(fleet_factory: Any) -> Any:
    fleet = fleet_factory(4)
    module = strategies.get("rolling")
    return dataclasses.replace(
        fleet, strategy=StrategySpec("rolling", module.parse_params({"batch": 1}, None),
                                     on_failure="rollback"),
        verify=VerifySpec(for_=10.0, interval=5.0, no_data="pass"),
        timing=Timing(host_upgrade=3 * DELAY, health_timeout=20.0, drain_timeout=10.0),
        commands=dataclasses.replace(fleet.commands, current=("current", "{slot}")))


def run_engine(fleet: Any, journal: Journal, balancer: FlakyBalancer, hosts: Hosts, *,
               plan: Plan | None = None, resume: Any = None, break_at: str | None = None,
               abort_after: int | None = None) -> tuple[Any, list[Any]]:
    async def main() -> tuple[Any, list[Any]]:
        if resume is None:
            for host in fleet.main_hosts:
                await balancer.set_backend(host.name, address=host.address, port=host.port,
                                           pool=CURRENT)
        providers = Providers(NoopTransport(delay=DELAY, responder=hosts), balancer,
                              NoopHealthCheck())
        engine = Engine(fleet, plan or strategies.get("rolling").compile(
            fleet, fleet.strategy.params), providers, clock=LoopClock(), journal=journal,
            resume=resume)
        events: list[Any] = []

        def observe(event: Any) -> None:
            events.append(event)
            if abort_after is not None and event.kind == "host_done" and sum(
                    e.kind == "host_done" for e in events) == abort_after:
                engine.abort(rollback=True)
            if break_at is not None and event.kind == break_at:
                balancer.broken = True        # before the action the event announces

        engine.subscribe(observe)
        return await engine.run(), events

    return run_virtual(main)


def resume(fleet: Any, journal: Journal, balancer: FlakyBalancer,
           hosts: Hosts) -> tuple[Any, list[Any]]:
    record = journal.unfinished(fleet.name)
    assert record is not None, "the rollout must stay unfinished"
    journal.claim(record.id)
    state = replay(record, journal.entries(record.id), fleet)
    assert state.rolling_back, "a resumed roll-back must roll back"
    return run_engine(fleet, journal, balancer, hosts, plan=Plan.from_json(record.plan),
                      resume=state)


def test_a_fault_mid_rollback_leaves_a_rollout_that_resume_rolls_back(fleet_factory,
                                                                      tmp_path):
    fleet = make(fleet_factory)
    a, b = (h.name for h in fleet.main_hosts[:2])
    journal, balancer, hosts = Journal(tmp_path / "j.sqlite"), FlakyBalancer(), Hosts(fleet)
    # two hosts upgraded, the operator aborts; the balancer dies as the roll-back starts
    result, events = run_engine(fleet, journal, balancer, hosts, abort_after=2,
                                break_at="rollback_started")
    assert result.outcome is Outcome.FAILED and result.exit_code == 1
    assert result.rollback_incomplete and "roll-back incomplete" in (result.error or "")
    record = journal.unfinished(fleet.name)
    assert record is not None and record.status == ROLLBACK_INCOMPLETE
    left = [e.data for e in events if e.kind == "rollback_incomplete"]
    assert len(left) == 1
    # what is left, read from the hosts themselves; the balancer could not be read
    assert left[0]["hosts"][a]["release"] == TARGET and left[0]["hosts"][b]["release"] == TARGET
    assert left[0]["backends"] is None and "No such file" in left[0]["balancer_error"]
    assert result.hosts[a] == TARGET

    # resume while the fault lasts: fails again, stays resumable, installs nothing
    before = list(hosts.installs)
    result, events = resume(fleet, journal, balancer, hosts)
    assert result.outcome is Outcome.FAILED and result.rollback_incomplete
    assert hosts.installs == before
    record = journal.unfinished(fleet.name)
    assert record is not None and record.status == ROLLBACK_INCOMPLETE

    # the fault gone: resume completes the roll-back (never the upgrade)
    balancer.broken = False
    result, events = resume(fleet, journal, balancer, hosts)
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    assert not result.rollback_incomplete
    assert hosts.installed == {h.name: CURRENT for h in fleet.main_hosts}
    assert [h for h, r in hosts.installs[len(before):] if r == TARGET] == []
    assert journal.unfinished(fleet.name) is None
    assert journal.latest(fleet.name).status == "rolled_back"
    final = asyncio.run(balancer.state())
    assert {n: (x.pool, x.state) for n, x in final.backends.items()} == \
        {h.name: (CURRENT, "ready") for h in fleet.main_hosts}
    journal.close()


def test_a_second_fault_during_the_resumed_rollback_leaves_it_resumable(fleet_factory,
                                                                         tmp_path):
    fleet = make(fleet_factory)
    journal, balancer, hosts = Journal(tmp_path / "j.sqlite"), FlakyBalancer(), Hosts(fleet)
    result, _ = run_engine(fleet, journal, balancer, hosts, abort_after=2,
                           break_at="rollback_started")
    assert result.rollback_incomplete
    balancer.broken = False
    record = journal.unfinished(fleet.name)
    assert record is not None
    journal.claim(record.id)
    assert journal.get(record.id).status == "running"   # driven again
    state = replay(record, journal.entries(record.id), fleet)
    # the balancer fails again as the first host's roll-back reaches its install
    result, _ = run_engine(fleet, journal, balancer, hosts, plan=Plan.from_json(record.plan),
                           resume=state, break_at="host_phase")
    assert result.outcome is Outcome.FAILED and result.rollback_incomplete
    assert journal.unfinished(fleet.name) is not None
    balancer.broken = False
    result, _ = resume(fleet, journal, balancer, hosts)
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    assert hosts.installed == {h.name: CURRENT for h in fleet.main_hosts}
    assert journal.unfinished(fleet.name) is None
    journal.close()


def test_a_plain_failure_still_finishes_the_rollout(fleet_factory, tmp_path):
    """Only a roll-back that did not finish keeps the rollout open: a completed roll-back
    is finished."""
    fleet = make(fleet_factory)
    journal, balancer, hosts = Journal(tmp_path / "j.sqlite"), FlakyBalancer(), Hosts(fleet)
    result, _ = run_engine(fleet, journal, balancer, hosts, abort_after=1)
    assert result.outcome is Outcome.ROLLED_BACK and not result.rollback_incomplete
    assert journal.unfinished(fleet.name) is None
    journal.close()
