"""``[commands] switch`` (issue 15, point 3): where a host goes back to a release it still has
installed (``upgrader rollback`` inside the roll-back window, a failed rollout's roll-back), the
fleet's ``switch`` replaces ``install``; a failing one falls back to ``install``; one in flight
when the controller died is in doubt like ``install`` (redone unless ``current`` shows it
done); without the command nothing changes; bad input names file, key and line, exit 2."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from test_config import BASE, assert_at, load_error, replaced
from test_engine import (
    DELAY,
    _failing_install,
    fleet_with,
    providers_for,
    run_engine,
    seed_balancer,
)

from upgrader import cli
from upgrader.clock import LoopClock, run_virtual
from upgrader.config import loads_fleet
from upgrader.engine.core import Engine, Providers
from upgrader.engine.resume import replay
from upgrader.events import Outcome
from upgrader.journal import Journal
from upgrader.plan import Plan, UpgradeHosts
from upgrader.providers.base import CommandResult
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport
from upgrader.rollback_cli import fast_fleet
from upgrader.rollout import compile_plan

SWITCH = ("switch", "{release}")


def back_fleet(fleet_factory, *, switch: bool = True):
    """A rolling fleet on 1.1.0 going back to 1.0.0 inside the window (fast_fleet's plan)."""
    fleet = fleet_with(fleet_factory, "rolling", n=6, table={"batch": [1, 2]})
    commands = dataclasses.replace(fleet.commands, switch=SWITCH if switch else None)
    fleet = dataclasses.replace(fleet, commands=commands, releases=dataclasses.replace(
        fleet.releases, current="1.1.0", target="1.0.0"))
    return fast_fleet(fleet, compile_plan(fleet))


def calls(transport, program: str, release: str | None = None) -> list[str]:
    return [c.host for c in transport.calls
            if c.argv[0] == program and (release is None or c.argv[1] == release)]


def test_the_in_window_plan_asks_for_a_switch_and_a_forward_plan_does_not(fleet_factory):
    fleet = back_fleet(fleet_factory)
    [step] = compile_plan(fleet).steps
    assert isinstance(step, UpgradeHosts) and step.switch
    assert "still installed" in " ".join(compile_plan(fleet).notes)
    forward = fleet_with(fleet_factory, "rolling", n=6, table={"batch": [1, 2]})
    assert not any(getattr(s, "switch", False) for s in compile_plan(forward).steps)
    # the flag survives the journal (a resumed roll-back switches too)
    assert Plan.from_json(compile_plan(fleet).to_json()).steps[0] == step


def test_rollback_inside_the_window_switches_instead_of_installing(fleet_factory):
    fleet = back_fleet(fleet_factory)
    providers = providers_for(fleet)
    _, result, _ = run_engine(fleet, providers)
    assert result.outcome is Outcome.COMPLETED, result.error
    hosts = sorted(h.name for h in fleet.main_hosts)
    assert sorted(calls(providers.transport, "switch", "1.0.0")) == hosts
    assert calls(providers.transport, "deploy") == []
    # the order of the procedure is kept: stop -> switch -> start on every host
    for name in hosts:
        programs = [c.argv[0] for c in providers.transport.calls if c.host == name]
        assert programs == ["stop", "switch", "start"], programs


def test_without_a_switch_command_the_roll_back_installs_as_before(fleet_factory):
    fleet = back_fleet(fleet_factory, switch=False)
    providers = providers_for(fleet)
    _, result, _ = run_engine(fleet, providers)
    assert result.outcome is Outcome.COMPLETED, result.error
    assert sorted(calls(providers.transport, "deploy", "1.0.0")) == sorted(
        h.name for h in fleet.main_hosts)
    assert calls(providers.transport, "switch") == []


def test_a_failing_switch_falls_back_to_install_and_says_so(fleet_factory):
    fleet = back_fleet(fleet_factory)
    gone = fleet.main_hosts[2].name

    def responder(host, argv):
        if argv[0] == "switch" and host.name == gone:
            return CommandResult(1, "", "release 1.0.0 is not installed")
        return None

    providers = providers_for(fleet, responder)
    _, result, events = run_engine(fleet, providers)
    assert result.outcome is Outcome.COMPLETED, result.error
    assert calls(providers.transport, "deploy", "1.0.0") == [gone]
    warnings = [e.data["message"] for e in events
                if e.kind == "log" and e.data.get("level") == "warning"]
    assert any(gone in w and "switch to 1.0.0 exited with status 1" in w
               and "not installed" in w and "installing it instead" in w
               for w in warnings), warnings


def test_a_failed_rollouts_roll_back_switches_the_hosts_it_upgraded(fleet_factory):
    fleet = fleet_with(fleet_factory, "rolling", table={"batch": [1, 3]})
    fleet = dataclasses.replace(fleet, commands=dataclasses.replace(fleet.commands,
                                                                    switch=SWITCH))
    bad, responder = _failing_install(fleet, 5)
    providers = providers_for(fleet, responder)
    _, result, _ = run_engine(fleet, providers)
    assert result.outcome is Outcome.ROLLED_BACK
    current = fleet.releases.current
    assert set(result.hosts.values()) == {current}
    switched = calls(providers.transport, "switch", current)
    assert bad in switched and len(switched) >= 2
    assert calls(providers.transport, "deploy", current) == []


@pytest.mark.parametrize("took_effect", [True, False])
def test_a_switch_in_flight_when_the_controller_died_is_in_doubt(fleet_factory, tmp_path,
                                                                  took_effect):
    """The controller dies right after a host's switch ran. On resume the host is in doubt
    in ``installing``: ``current`` decides; a switch that took effect is not run again, one
    that did not is redone (it is idempotent); every host ends on the release."""
    fleet = back_fleet(fleet_factory)
    target = fleet.releases.target
    installed: dict[str, str] = {}
    switches: list[str] = []
    crash_on = fleet.main_hosts[3].name
    first_run = [True]

    def responder(host, argv):
        if argv[0] == "switch":
            switches.append(host.name)
            if took_effect or host.name != crash_on or not first_run[0]:
                installed[host.name] = argv[1]
        if argv[0] == "current":
            return CommandResult(0, installed.get(host.name, "1.1.0") + "\n")
        return None

    journal = Journal(tmp_path / "journal.sqlite")
    balancer = NoopBalancer()

    async def crash_run():
        transport = NoopTransport(delay=DELAY, responder=responder)
        providers = Providers(transport, balancer, NoopHealthCheck())
        await seed_balancer(fleet, balancer)
        engine = Engine(fleet, compile_plan(fleet), providers, clock=LoopClock(),
                        journal=journal)
        task = asyncio.ensure_future(engine.run())
        for _ in range(2000):           # bounded: 1000 virtual seconds
            if crash_on in switches or task.done():
                break
            await asyncio.sleep(0.5)
        assert crash_on in switches, "the host never switched"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    run_virtual(crash_run)
    first_run[0] = False
    record = journal.unfinished(fleet.name)
    assert record is not None
    state = replay(record, journal.entries(record.id), fleet)
    assert crash_on in state.in_doubt

    async def resume_run():
        transport = NoopTransport(delay=DELAY, responder=responder)
        providers = Providers(transport, balancer, NoopHealthCheck())
        engine = Engine(fleet, Plan.from_json(record.plan), providers, clock=LoopClock(),
                        journal=journal, resume=state)
        return await engine.run(), transport

    result, transport = run_virtual(resume_run)
    journal.close()
    assert result.outcome is Outcome.COMPLETED, result.error
    assert set(result.hosts.values()) == {target}
    assert installed == {h.name: target for h in fleet.main_hosts}
    assert switches.count(crash_on) == (1 if took_effect else 2)
    assert calls(transport, "deploy") == []


def with_switch(argv: str) -> str:
    return replaced('stop = ["systemctl", "stop", "shop"]\n',
                    f'stop = ["systemctl", "stop", "shop"]\nswitch = {argv}\n')


def test_switch_parses_as_a_command_template() -> None:
    fleet = loads_fleet(with_switch('["ln", "-sfn", "releases/{release}", "current"]'))
    assert fleet.commands.switch == ("ln", "-sfn", "releases/{release}", "current")
    assert loads_fleet(BASE).commands.switch is None


@pytest.mark.parametrize("argv,key,words", [
    ('["ln", "-sfn", "releases/{relase}", "current"]', "commands.switch",
     ("unknown placeholder {relase}",)),
    ('"ln -sfn releases/{release} current"', "commands.switch",
     ("non-empty array of strings", "no shell")),
    ("[]", "commands.switch", ("non-empty array",)),
    ('["ln", 3]', "commands.switch[1]", ("expected a string",)),
])
def test_a_bad_switch_names_file_key_and_line(tmp_path: Path, argv: str, key: str,
                                              words: tuple[str, ...]) -> None:
    text = with_switch(argv)
    line = text.splitlines().index(f"switch = {argv}") + 1
    assert_at(load_error(tmp_path, text), key, line, *words)


def test_a_bad_switch_exits_2_and_changes_nothing(tmp_path: Path, capsys) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(with_switch('["ln", "{nope}"]'), encoding="utf-8")
    state = tmp_path / "state"
    for argv in (["run", str(path), "--headless", "--state-dir", str(state)],
                 ["rollback", str(path), "--headless", "--state-dir", str(state)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "commands.switch" in err and "{nope}" in err
    assert not state.exists()          # nothing was started, nothing journaled


def test_the_lab_fleets_switch_back_with_hostctl() -> None:
    from upgrader.lab.layout import LabLayout

    commands = LabLayout(dir=Path("/tmp/x"), hosts=2, base_port=20000).commands()
    assert commands.switch is not None
    assert commands.switch[3:6] == ("switch", "--release", "{release}")
