"""A release that carries a live schema change: the engine starts the migration before the
first host changes, completes it after the last host is verified (never while a host still
runs the old release), and rolls it back when the rollout rolls back. With a real SQLite
database (upgrader.schema.sqlite) and the no-op host providers, in virtual time."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from upgrader import strategies
from upgrader.clock import LoopClock, run_virtual
from upgrader.engine.core import Engine, Providers
from upgrader.events import Outcome
from upgrader.model import SchemaSpec, StrategySpec, VerifySpec
from upgrader.plan import Gate, Plan, UpgradeHosts, with_release_gates
from upgrader.providers.base import CommandResult
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport
from upgrader.rollout import compile_plan
from upgrader.schema import connect, open_backend
from upgrader.schema.loader import loads as loads_migration
from upgrader.schema.switch import MigrationSwitch

BASE = """
name = "0001_people"
release = "1.0.0"

[[operations]]
op = "create_table"
table = "people"
columns = [
    { name = "id", type = "integer", primary_key = true },
    { name = "name", type = "text" },
]
"""

CHANGE = """
name = "0002_people_email"
release = "1.1.0"
previous = "1.0.0"

[[operations]]
op = "add_column"
table = "people"
column = { name = "email", type = "text" }
up = "lower(name) || '@example.com'"

[[operations]]
op = "rename_column"
table = "people"
column = "name"
to = "full_name"
"""


def dump(path: Path) -> list:
    with sqlite3.connect(path) as conn:
        objects = sorted(conn.execute("SELECT type, name, sql FROM sqlite_master "
                                      "WHERE name NOT LIKE '_upgrader_schema_migrations%'"))
        rows = sorted(conn.execute("SELECT * FROM people"))
    return [objects, rows]


@pytest.fixture
def database(tmp_path: Path) -> tuple[Path, Path]:
    db = tmp_path / "app.sqlite"
    with open_backend(str(db)) as backend:
        base = loads_migration(BASE, source="0001.toml")
        backend.start(base)
        backend.complete(base.name)
    with connect(db, "1.0.0") as conn:
        conn.executemany("INSERT INTO people (name) VALUES (?)", [("Ada",), ("Grace",)])
    migration = tmp_path / "0002.toml"
    migration.write_text(CHANGE, encoding="utf-8")
    return db, migration


def schema_fleet(fleet_factory, db: Path, migration: Path, n: int = 4):
    fleet = fleet_factory(n)
    params = strategies.get("rolling").parse_params({"batch": [1, 2]}, _Where())
    return dataclasses.replace(
        fleet, strategy=StrategySpec("rolling", params),
        verify=VerifySpec(for_=30.0, no_data="pass"),    # no traffic here: hosts only
        schema=SchemaSpec(database=str(db), migration=migration, migration_name="0002_people_email"))


class _Where:
    def error(self, key, message):
        raise AssertionError(f"{key}: {message}")


def run(fleet, plan: Plan | None = None, *, fail_host: str | None = None):
    """Run ``fleet``'s plan; ``fail_host``: installing the target fails on that host."""

    def responder(host, argv):
        if fail_host and host.name == fail_host and argv == ("deploy", fleet.releases.target):
            return CommandResult(1, stderr="disk full")
        return None

    async def main():
        balancer = NoopBalancer()
        for host in fleet.main_hosts:
            await balancer.set_backend(host.name, address=host.address, port=host.port,
                                       pool=fleet.releases.current)
        switch = MigrationSwitch(fleet.schema.database, fleet.schema.migration)
        providers = Providers(NoopTransport(responder=responder), balancer, NoopHealthCheck(),
                              schema=switch)
        engine = Engine(fleet, plan or compile_plan(fleet), providers, clock=LoopClock())
        result = await engine.run()
        return engine, result

    return run_virtual(main)


def migration_state(db: Path, name: str) -> str | None:
    with open_backend(str(db)) as backend:
        status = backend.status()
    return ([s for n, _r, s in status.history if n == name] or [None])[-1]


def test_the_plan_starts_before_any_host_and_completes_after_the_last(fleet_factory, database):
    db, migration = database
    fleet = schema_fleet(fleet_factory, db, migration)
    steps = compile_plan(fleet).steps
    assert isinstance(steps[0], Gate) and steps[0].gate == "schema_start"
    assert isinstance(steps[-1], Gate) and steps[-1].gate == "schema_complete"
    assert steps[0].detail == steps[-1].detail == "0002_people_email"
    assert not any(isinstance(s, Gate) and s.gate.startswith("schema")
                   for s in steps[1:-1])


def test_pre_release_test_gate_comes_first(fleet_factory, database):
    db, migration = database
    fleet = schema_fleet(fleet_factory, db, migration)
    fleet = dataclasses.replace(fleet, commands=dataclasses.replace(
        fleet.commands, pre_release_test=("smoke", "--all")))
    gates = [s.gate for s in compile_plan(fleet).steps if isinstance(s, Gate)]
    assert gates[:2] == ["pre_release_test", "schema_start"]


def test_a_completed_rollout_completes_the_migration(fleet_factory, database):
    db, migration = database
    fleet = schema_fleet(fleet_factory, db, migration)
    engine, result = run(fleet)
    assert result.outcome == Outcome.COMPLETED, result.error
    assert migration_state(db, "0002_people_email") == "complete"
    kinds = [(e.kind, e.data.get("action"), e.data.get("result")) for e in engine.history
             if e.kind in ("schema", "host_phase")]
    start = kinds.index(("schema", "start", "started"))
    first_host = next(i for i, k in enumerate(kinds) if k[0] == "host_phase")
    complete = kinds.index(("schema", "complete", "completed"))
    last_host = max(i for i, k in enumerate(kinds) if k[0] == "host_phase")
    assert start < first_host and last_host < complete
    # the new release reads the new shape, with old rows backfilled
    with connect(db, "1.1.0") as conn:
        assert sorted(conn.execute("SELECT full_name, email FROM people")) == [
            ("Ada", "ada@example.com"), ("Grace", "grace@example.com")]


def test_a_rolled_back_rollout_leaves_the_database_as_before(fleet_factory, database):
    db, migration = database
    before = dump(db)
    fleet = schema_fleet(fleet_factory, db, migration)
    engine, result = run(fleet, fail_host="web-0002")
    assert result.outcome == Outcome.ROLLED_BACK, result.error
    assert migration_state(db, "0002_people_email") == "rolled_back"
    assert dump(db) == before
    actions = [(e.data["action"], e.data["result"]) for e in engine.history if e.kind == "schema"]
    assert ("start", "started") in actions and ("rollback", "rolled back") in actions
    assert all(status.release == "1.0.0" for status in engine.hosts.values())
    # the old release still reads and writes as it always did
    with connect(db, "1.0.0") as conn:
        conn.execute("INSERT INTO people (name) VALUES ('Linus')")
        assert [r[0] for r in conn.execute("SELECT name FROM people ORDER BY id")] == [
            "Ada", "Grace", "Linus"]


def test_complete_is_refused_while_a_host_runs_the_old_release(fleet_factory, database):
    db, migration = database
    before = dump(db)
    fleet = schema_fleet(fleet_factory, db, migration)
    names = tuple(h.name for h in fleet.main_hosts)
    # a hand-made plan that tries to complete with two hosts still on 1.0.0
    plan = with_release_gates(
        Plan(strategy="rolling", total_hosts=len(names), rollback_parallel=1,
             rollback_mode="reinstall",
             steps=(UpgradeHosts(hosts=names[:2], wave=1),)),
        migration="0002_people_email")
    engine, result = run(fleet, plan)
    assert result.outcome == Outcome.ROLLED_BACK
    assert "cannot complete" in (result.error or "")
    assert "web-0003" in (result.error or "")
    assert migration_state(db, "0002_people_email") == "rolled_back"
    assert dump(db) == before


def test_the_switch_is_idempotent_for_a_resumed_rollout(database):
    db, migration = database
    switch = MigrationSwitch(str(db), migration)
    results = run_virtual(lambda: _twice(switch))
    assert results == ["started", "already started", "completed", "already complete",
                       "not started"]


async def _twice(switch: MigrationSwitch) -> list[str]:
    return [await switch.start(), await switch.start(), await switch.complete(),
            await switch.complete(), await switch.rollback()]


def test_a_failing_pre_release_test_stops_the_rollout_before_any_host(fleet_factory, database):
    """The pre-release gate: a system test that must pass before any host (or the database)
    is touched."""
    db, migration = database
    before = dump(db)
    fleet = schema_fleet(fleet_factory, db, migration)
    fleet = dataclasses.replace(fleet, commands=dataclasses.replace(
        fleet.commands, pre_release_test=("smoke", "--release", "{release}")))
    calls: list[tuple[str, tuple]] = []

    def responder(host, argv):
        calls.append((host.name, argv))
        if argv[:1] == ("smoke",):
            return CommandResult(1, stderr="checkout flow broken")
        return None

    async def main():
        balancer = NoopBalancer()
        for host in fleet.main_hosts:
            await balancer.set_backend(host.name, address=host.address, port=host.port,
                                       pool=fleet.releases.current)
        providers = Providers(NoopTransport(responder=responder), balancer, NoopHealthCheck(),
                              schema=MigrationSwitch(str(db), migration))
        engine = Engine(fleet, compile_plan(fleet), providers, clock=LoopClock())
        return await engine.run()

    result = run_virtual(main)
    assert result.outcome != Outcome.COMPLETED
    assert "pre_release_test failed" in (result.error or "")
    assert "checkout flow broken" in (result.error or "")
    assert calls == [("web-0001", ("smoke", "--release", "1.1.0"))]   # nothing else ran
    assert migration_state(db, "0002_people_email") is None
    assert dump(db) == before
