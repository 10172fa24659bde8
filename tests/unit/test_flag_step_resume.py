"""The roll-back's flag step (issue 15, point 1) for ``on_failure = "shutdown"`` and for a
resumed roll-back. With a real SQLite flag store and the real journal, the no-op host
providers, in virtual time; verification reads a metric source that fails while the release's
flag is on (``flagged``) or whatever the flags say (``bad``).

A resumed roll-back goes by what the journal says about the step: cured -> stays ``flags_off``
(no host moves); not cured -> not repeated; begun and never ended -> the flags still on go off
(never one twice), the hold runs again; never begun -> it runs."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from test_verify_metrics import _ConstantPlugin

from upgrader import strategies
from upgrader.clock import LoopClock, run_virtual
from upgrader.config import loads_fleet
from upgrader.engine.core import Engine, Providers
from upgrader.engine.resume import replay
from upgrader.events import Outcome
from upgrader.flags.loader import loads as loads_flags
from upgrader.flags.store import open_store
from upgrader.flags.switch import StoreFlagSwitch
from upgrader.journal import Journal
from upgrader.model import Timing
from upgrader.plan import Plan
from upgrader.plugins import Plugins
from upgrader.providers.base import MetricSamples
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport

FLEET = """\
[fleet]
name = "shop"

[release]
current = "1.0.0"
target = "1.1.0"
flags = ["new-path"]
flags_hold = "30s"

[flags]
store = "{store}"
environment = "production"

[commands]
install = ["true"]
start = ["true"]
stop = ["true"]

[transport]
kind = "noop"

[balancer]
kind = "noop"

[verify]
for = "30s"
interval = "10s"
min_requests = 10
consecutive_failures = 2
health = false

[[verify.metrics]]
name = "failures"
source = "constant"
query = "x"
kind = "proportion"
max = 5
errors = 0

[strategy]
kind = "rolling"
on_failure = "{on_failure}"
batch = [1, 3]
min_capacity = "50%"
"""

FLAGS = """
environments = ["production"]

[flags.new-path]
default = "on"

[flags.new-path.environments.production]
enabled = true
"""


class FlagDependent:
    """The release's failures: 50 % while ``new-path`` is on (``flagged``), or always
    (``bad``)."""

    def __init__(self, switch: StoreFlagSwitch, kind: str) -> None:
        self.switch, self.kind = switch, kind

    def check(self, metric: Any) -> None:
        return None

    async def collect(self, metric: Any, window: Any) -> MetricSamples:
        on = bool((await self.switch.flag_state("new-path")).get("on"))
        errors = 50 if self.kind == "bad" or on else 0
        return MetricSamples(canary_counts=(errors, 100), baseline_counts=(0, 100),
                             detail="flag-dependent")

    async def aclose(self) -> None:
        return None


def make_fleet(tmp_path: Path, on_failure: str) -> tuple[Any, str]:
    store = str(tmp_path / "flags.sqlite")
    with open_store(store) as flags:
        flags.replace(loads_flags(FLAGS, source="flags.toml"), actor="test", reason="setup")
    hosts = "".join(f'[[hosts]]\nname = "web-{i}"\naddress = "127.0.0.1"\nport = {9000 + i}\n'
                    for i in range(4))
    plugins = Plugins(entrypoints=False)
    plugins.register(_ConstantPlugin(), "constant")
    fleet = loads_fleet(FLEET.format(store=store, on_failure=on_failure) + hosts,
                        registry=plugins)
    fleet = dataclasses.replace(fleet, timing=Timing(host_upgrade=5.0, health_timeout=10.0,
                                                     drain_timeout=5.0))
    return fleet, store


def flag_on(store: str) -> bool:
    with open_store(store) as flags:
        return flags.load().flags["new-path"].env("production").enabled


def run(fleet, store: str, kind: str, *, journal=None, resume=None, plan=None, balancer=None,
        crash_after=None):
    """Run (or resume) the rollout; ``crash_after(event)`` true: the controller dies there
    (the task is cancelled; the journal keeps what was written)."""

    async def main():
        nonlocal balancer
        if balancer is None:
            balancer = NoopBalancer()
            for host in fleet.main_hosts:
                await balancer.set_backend(host.name, address=host.address, port=host.port,
                                           pool=fleet.releases.current)
        switch = StoreFlagSwitch(store, "production")
        providers = Providers(NoopTransport(delay=1.0), balancer, NoopHealthCheck(),
                              flags=switch, metrics={"failures": FlagDependent(switch, kind)})
        compiled = plan or strategies.get("rolling").compile(fleet, fleet.strategy.params)
        engine = Engine(fleet, compiled, providers, clock=LoopClock(), journal=journal,
                        resume=resume)
        task = asyncio.ensure_future(engine.run())
        if crash_after is not None:
            engine.subscribe(lambda e: task.cancel() if crash_after(e) else None)
        try:
            result = await task
        except asyncio.CancelledError:
            result = None
        await asyncio.sleep(0)
        return engine, result, balancer

    return run_virtual(main)


def rolled_back_hosts(engine) -> list[str]:
    return [e.data["host"] for e in engine.history
            if e.kind == "host_done" and e.data.get("mode") in ("rollback", "shutdown")]


# -- on_failure = "shutdown"

def test_shutdown_takes_the_flag_step_first_and_a_cure_keeps_every_host(tmp_path):
    fleet, store = make_fleet(tmp_path, "shutdown")
    engine, result, balancer = run(fleet, store, "flagged")
    assert result.outcome is Outcome.FLAGS_OFF, result.error
    first = [e.data for e in engine.history if e.kind == "flags_first"]
    assert [d["phase"] for d in first] == ["begin", "end"] and first[-1]["cured"] is True
    assert rolled_back_hosts(engine) == []          # no host taken out of service
    assert not flag_on(store)
    assert "flags off, release kept" in result.error
    ready = {n: b.pool for n, b in balancer._backends.items() if b.state == "ready"}
    assert fleet.releases.target in ready.values() and len(ready) == 4


def test_shutdown_goes_on_when_the_flags_do_not_cure_it(tmp_path):
    fleet, store = make_fleet(tmp_path, "shutdown")
    engine, result, _ = run(fleet, store, "bad")
    assert result.outcome is Outcome.SHUT_DOWN, result.error
    history = list(engine.history)
    end = max(i for i, e in enumerate(history) if e.kind == "flags_first")
    assert history[end].data["cured"] is False
    # hosts taken out of service (or rolled back) after the flag step
    assert {e.data["mode"] for e in history[end:] if e.kind == "host_done"} & {"shutdown"}
    assert not flag_on(store)


# -- a resumed roll-back: the journal decides

def crashed(tmp_path, kind: str, crash_after):
    fleet, store = make_fleet(tmp_path, "rollback")
    journal = Journal(tmp_path / "journal.sqlite")
    engine, result, balancer = run(fleet, store, kind, journal=journal,
                                   crash_after=crash_after)
    assert result is None, "the controller should have died"
    record = journal.unfinished(fleet.name)
    assert record is not None
    state = replay(record, journal.entries(record.id), fleet)
    assert state.rolling_back
    return fleet, store, journal, record, state, balancer


def resume(fleet, store, kind, journal, record, state, balancer):
    return run(fleet, store, kind, journal=journal, resume=state,
               plan=Plan.from_json(record.plan), balancer=balancer)


def flag_events(journal, record) -> list[dict]:
    return [e.data for e in journal.entries(record.id) if e.kind == "flag"]


def test_resumed_after_the_cure_stays_flags_off_and_moves_no_host(tmp_path):
    parts = crashed(tmp_path, "flagged", lambda e: e.kind == "flags_first"
                    and e.data.get("phase") == "end")
    fleet, store, journal, record, state, balancer = parts
    assert state.flags_first == "cured"
    engine, result, _ = resume(*parts[:1], store, "flagged", journal, record, state, balancer)
    assert result.outcome is Outcome.FLAGS_OFF, result.error
    assert rolled_back_hosts(engine) == []
    assert not [e for e in engine.history if e.kind in ("flag", "flags_first")]
    assert len(flag_events(journal, record)) == 1
    journal.close()


def test_resumed_after_no_cure_does_not_repeat_the_step(tmp_path):
    parts = crashed(tmp_path, "bad", lambda e: e.kind == "flags_first"
                    and e.data.get("phase") == "end")
    fleet, store, journal, record, state, balancer = parts
    assert state.flags_first == "not cured"
    engine, result, _ = resume(fleet, store, "bad", journal, record, state, balancer)
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    assert not [e for e in engine.history if e.kind in ("flag", "flags_first")]
    assert rolled_back_hosts(engine)
    assert not flag_on(store)
    journal.close()


def test_resumed_mid_step_turns_no_flag_off_twice_and_holds_again(tmp_path):
    # the controller dies once the flag is off, during the hold
    parts = crashed(tmp_path, "flagged", lambda e: e.kind == "flag" and not e.data.get("on"))
    fleet, store, journal, record, state, balancer = parts
    assert state.flags_first == "begun" and not flag_on(store)
    engine, result, _ = resume(fleet, store, "flagged", journal, record, state, balancer)
    assert result.outcome is Outcome.FLAGS_OFF, result.error
    first = [e.data for e in engine.history if e.kind == "flags_first"]
    assert [d["phase"] for d in first] == ["begin", "end"] and first[0]["resumed"] is True
    assert first[0]["was"]["new-path"]["on"] is True     # the old state, from the journal
    assert len(flag_events(journal, record)) == 1         # never turned off twice
    assert rolled_back_hosts(engine) == []
    journal.close()


def test_resumed_before_the_step_began_runs_it(tmp_path):
    parts = crashed(tmp_path, "flagged", lambda e: e.kind == "rollback_started")
    fleet, store, journal, record, state, balancer = parts
    assert state.flags_first is None and state.flags_first_applies and flag_on(store)
    engine, result, _ = resume(fleet, store, "flagged", journal, record, state, balancer)
    assert result.outcome is Outcome.FLAGS_OFF, result.error
    assert [e.data["phase"] for e in engine.history if e.kind == "flags_first"] == \
        ["begin", "end"]
    assert not flag_on(store) and rolled_back_hosts(engine) == []
    journal.close()


@pytest.mark.parametrize("kind", ["flagged"])
def test_an_operators_abort_resumed_takes_no_flag_step(tmp_path, kind):
    """An abort rolls back without the flag step; resumed, it still does."""
    fleet, store = make_fleet(tmp_path, "rollback")
    journal = Journal(tmp_path / "journal.sqlite")

    def abort_then_crash(event):
        return event.kind == "rollback_started"

    async def first():
        balancer = NoopBalancer()
        for host in fleet.main_hosts:
            await balancer.set_backend(host.name, address=host.address, port=host.port,
                                       pool=fleet.releases.current)
        switch = StoreFlagSwitch(store, "production")
        engine = Engine(fleet, strategies.get("rolling").compile(fleet, fleet.strategy.params),
                        Providers(NoopTransport(delay=1.0), balancer, NoopHealthCheck(),
                                  flags=switch,
                                  metrics={"failures": FlagDependent(switch, kind)}),
                        clock=LoopClock(), journal=journal)
        task = asyncio.ensure_future(engine.run())
        engine.subscribe(lambda e: task.cancel() if abort_then_crash(e) else None)
        engine.subscribe(lambda e: engine.abort(rollback=True)
                         if e.kind == "analysis_failed" else None)
        await asyncio.gather(task, return_exceptions=True)
        return balancer

    balancer = run_virtual(first)
    record = journal.unfinished(fleet.name)
    state = replay(record, journal.entries(record.id), fleet)
    engine, result, _ = resume(fleet, store, kind, journal, record, state, balancer)
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    assert not [e for e in engine.history if e.kind == "flags_first"]
    journal.close()
