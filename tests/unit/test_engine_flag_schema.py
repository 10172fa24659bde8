"""A flag's ``schema`` in a rollout (issue 15): rolling a schema change back turns off first
(journaled, audited) every flag whose code needs it; a feature roll-out that would turn on a
flag whose schema is not live is refused before anything changes. With a real SQLite flag
store and a real SQLite schema database, the no-op host providers, in virtual time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from upgrader import strategies
from upgrader.clock import LoopClock, run_virtual
from upgrader.engine.core import Engine, Providers
from upgrader.errors import FlagSchemaRefused
from upgrader.events import Outcome
from upgrader.flags.loader import loads as loads_flags
from upgrader.flags.store import open_store
from upgrader.flags.switch import StoreFlagSwitch
from upgrader.model import FlagsSpec, SchemaSpec, StrategySpec, VerifySpec
from upgrader.providers.base import CommandResult
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport
from upgrader.rollout import check_flag_schemas, compile_plan
from upgrader.schema import open_backend
from upgrader.schema.loader import loads as loads_migration
from upgrader.schema.switch import MigrationSwitch

BASE = """
name = "0001_people"
release = "1.0.0"

[[operations]]
op = "create_table"
table = "people"
columns = [{ name = "id", type = "integer", primary_key = true }, { name = "name", type = "text" }]
"""

CHANGE = """
name = "0002_people_email"
release = "1.1.0"
previous = "1.0.0"

[[operations]]
op = "add_column"
table = "people"
column = { name = "email", type = "text" }
"""

FLAGS = """
environments = ["production"]

[flags.email-field]
schema = "0002"

[flags.other]
"""


class _Where:
    def error(self, key, message):
        raise AssertionError(f"{key}: {message}")


@pytest.fixture
def setup(tmp_path: Path):
    db = tmp_path / "app.sqlite"
    with open_backend(str(db)) as backend:
        base = loads_migration(BASE, source="0001.toml")
        backend.start(base)
        backend.complete(base.name)
    migration = tmp_path / "0002.toml"
    migration.write_text(CHANGE, encoding="utf-8")
    store = str(tmp_path / "flags.sqlite")
    with open_store(store) as flags:
        flags.replace(loads_flags(FLAGS, source="flags.toml"))
    return db, migration, store


def test_a_schema_roll_back_turns_its_flags_off_first(fleet_factory, setup):
    db, migration, store = setup
    fleet = dataclasses.replace(
        fleet_factory(4),
        strategy=StrategySpec("rolling", strategies.get("rolling").parse_params(
            {"batch": [1, 2]}, _Where())),
        verify=VerifySpec(for_=30.0, no_data="pass"),
        flags=FlagsSpec(store=store),
        schema=SchemaSpec(database=str(db), migration=migration,
                          migration_name="0002_people_email"))

    def responder(host, argv):
        if host.name == "web-0002" and argv == ("deploy", fleet.releases.target):
            return CommandResult(1, stderr="disk full")
        return None

    def enable_when_live(event):
        # an operator turns the flag on once the schema change is live (the guard allows it)
        if event.kind == "schema" and event.data.get("result") == "started":
            with open_store(store) as flags:
                flags.guard = switch._store.guard
                flags.set_enabled("email-field", "production", True, actor="operator")
                flags.set_enabled("other", "production", True, actor="operator")

    switch = StoreFlagSwitch(store, "production", schema_database=str(db))

    async def main():
        balancer = NoopBalancer()
        for host in fleet.main_hosts:
            await balancer.set_backend(host.name, address=host.address, port=host.port,
                                       pool=fleet.releases.current)
        providers = Providers(NoopTransport(responder=responder), balancer, NoopHealthCheck(),
                              flags=switch,
                              schema=MigrationSwitch(str(db), migration))
        engine = Engine(fleet, compile_plan(fleet), providers, clock=LoopClock(),
                        observers=[enable_when_live])
        return engine, await engine.run()

    engine, result = run_virtual(main)
    assert result.outcome == Outcome.ROLLED_BACK, result.error
    events = [(e.kind, e.data.get("key") or e.data.get("action"), e.data.get("result"))
              for e in engine.history if e.kind in ("flag", "schema")]
    off = events.index(("flag", "email-field", None))
    assert events.index(("schema", "rollback", "begin")) > off
    flag_event = next(e for e in engine.history if e.kind == "flag")
    assert flag_event.data["on"] is False and "schema 0002_people_email" in flag_event.data["why"]
    with open_store(store) as flags:
        state = flags.load()
        assert not state.flags["email-field"].env("production").enabled
        assert state.flags["other"].env("production").enabled       # needs no schema: kept
        last = flags.history("email-field", 1)[0]
        assert (last.action, last.old, last.new) == ("disable", True, False)
        assert "rolls back" in last.reason
        # and with the schema gone, it cannot be turned on again
        flags.guard = switch._store.guard
        with pytest.raises(FlagSchemaRefused):
            flags.set_enabled("email-field", "production", True)


def test_a_feature_roll_out_of_a_flag_whose_schema_is_not_live_is_refused(fleet_factory,
                                                                          setup):
    db, migration, store = setup
    fleet = fleet_factory(4)
    params = strategies.get("feature").parse_params(
        {"flag": "email-field", "steps": [{"percent": 100}]}, _Where())
    fleet = dataclasses.replace(
        fleet, releases=dataclasses.replace(fleet.releases, target=fleet.releases.current),
        strategy=StrategySpec("feature", params), flags=FlagsSpec(store=store),
        schema=SchemaSpec(database=str(db), migration=migration,
                          migration_name="0002_people_email"))
    plan = strategies.get("feature").compile(fleet, params)
    with pytest.raises(FlagSchemaRefused) as refused:
        check_flag_schemas(fleet, plan)
    assert "email-field" in str(refused.value) and "0002" in str(refused.value)
    assert "migration 0001_people" in str(refused.value)
    with open_backend(str(db)) as backend:
        backend.start(loads_migration(CHANGE, source="0002.toml"))
    check_flag_schemas(fleet, plan)                 # live now: allowed
