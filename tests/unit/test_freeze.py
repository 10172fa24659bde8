"""Freeze (issue 15, point 4), in virtual time with a real SQLite schema: ``on_failure =
"freeze"`` and a migration that cannot be reverted stop every change, keep both releases
serving as they are, announce why (journaled) with what each answer would do, and wait for an
operator; a resumed controller that finds the rollout frozen stays frozen."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from test_engine_schema import BASE, migration_state, schema_fleet

from upgrader import strategies
from upgrader.clock import LoopClock, run_virtual
from upgrader.engine.core import Engine, Providers
from upgrader.engine.resume import replay
from upgrader.events import Outcome
from upgrader.journal import Journal
from upgrader.model import StrategySpec
from upgrader.plan import Plan
from upgrader.providers.base import CommandResult
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport
from upgrader.rollout import compile_plan
from upgrader.schema import connect, open_backend
from upgrader.schema.loader import loads as loads_migration
from upgrader.schema.switch import MigrationSwitch

#: a release whose migration rewrites data in place: there is no way back
IRREVERSIBLE = """
name = "0002_people_upper"
release = "1.1.0"
previous = "1.0.0"

[[operations]]
op = "sql"
up = "UPDATE people SET name = upper(name)"
irreversible = true
"""

REVERSIBLE = """
name = "0002_people_upper"
release = "1.1.0"
previous = "1.0.0"

[[operations]]
op = "sql"
up = "CREATE TABLE audit (id integer)"
down = "DROP TABLE audit"
"""


def database(tmp_path: Path, text: str) -> tuple[Path, Path]:
    db = tmp_path / "app.sqlite"
    with open_backend(str(db)) as backend:
        base = loads_migration(BASE, source="0001.toml")
        backend.start(base)
        backend.complete(base.name)
    with connect(db, "1.0.0") as conn:
        conn.executemany("INSERT INTO people (name) VALUES (?)", [("Ada",), ("Grace",)])
    migration = tmp_path / "0002.toml"
    migration.write_text(text, encoding="utf-8")
    return db, migration


def fleet_for(fleet_factory, db, migration, on_failure="rollback"):
    fleet = schema_fleet(fleet_factory, db, migration)
    params = strategies.get("rolling").parse_params({"batch": [1, 2]}, _Where())
    return dataclasses.replace(
        fleet, strategy=StrategySpec("rolling", params, on_failure=on_failure),
        schema=dataclasses.replace(fleet.schema, migration_name="0002_people_upper"))


class _Where:
    def error(self, key, message):
        raise AssertionError(f"{key}: {message}")


def run(fleet, *, interactive=False, answer=None, journal=None, resume=None, plan=None,
        balancer=None, fail_host="web-0002", failures=1_000):
    """Run with the target's install failing on ``fail_host`` (the first ``failures``
    times); ``answer(engine)`` is called once the engine announces ``frozen`` (an
    operator)."""
    failed = []

    def responder(host, argv):
        if fail_host and host.name == fail_host and argv == ("deploy", fleet.releases.target) \
                and len(failed) < failures:
            failed.append(host.name)
            return CommandResult(1, stderr="disk full")
        return None

    async def main():
        nonlocal balancer
        if balancer is None:
            balancer = NoopBalancer()
            for host in fleet.main_hosts:
                await balancer.set_backend(host.name, address=host.address, port=host.port,
                                           pool=fleet.releases.current)
        switch = MigrationSwitch(fleet.schema.database, fleet.schema.migration)
        providers = Providers(NoopTransport(responder=responder), balancer, NoopHealthCheck(),
                              schema=switch)
        engine = Engine(fleet, plan or compile_plan(fleet), providers, clock=LoopClock(),
                        interactive=interactive, journal=journal, resume=resume)
        seen: dict[str, object] = {}

        def on_event(event):
            if event.kind == "frozen" and answer is not None and "answered" not in seen:
                seen["answered"] = True

                def operator():
                    seen["snapshot"] = engine.snapshot()      # what status shows meanwhile
                    answer(engine)
                asyncio.get_running_loop().call_later(5.0, operator)
        engine.subscribe(on_event)
        result = await engine.run()
        return engine, result, balancer, seen

    return run_virtual(main)


def serving(balancer) -> dict[str, str]:
    return {n: b.pool for n, b in balancer._backends.items() if b.state == "ready"}


def test_an_irreversible_migration_freezes_instead_of_rolling_back(fleet_factory, tmp_path):
    db, migration = database(tmp_path, IRREVERSIBLE)
    fleet = fleet_for(fleet_factory, db, migration)
    engine, result, balancer, _ = run(fleet)
    assert result.outcome is Outcome.FROZEN
    assert "cannot be reverted" in result.error and "irreversible" in result.error
    # nothing rolled back: the migration stays started, the upgraded host keeps serving
    assert migration_state(db, "0002_people_upper") == "started"
    assert not any(e.kind == "rollback_started" for e in engine.history)
    assert serving(balancer)["web-0001"] == fleet.releases.target
    frozen = next(e for e in engine.history if e.kind == "frozen")
    assert set(frozen.data["choices"]) == {"resume", "rollback", "stop"}
    assert "cannot be reverted" in frozen.data["choices"]["rollback"]


def test_a_reversible_migration_still_rolls_back(fleet_factory, tmp_path):
    db, migration = database(tmp_path, REVERSIBLE)
    fleet = fleet_for(fleet_factory, db, migration)
    engine, result, balancer, _ = run(fleet)
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    assert migration_state(db, "0002_people_upper") == "rolled_back"


def test_on_failure_freeze_waits_for_an_operator_and_says_what_each_choice_does(
        fleet_factory, tmp_path):
    db, migration = database(tmp_path, REVERSIBLE)
    fleet = fleet_for(fleet_factory, db, migration, on_failure="freeze")
    engine, result, balancer, seen = run(
        fleet, interactive=True, answer=lambda engine: engine.abort(rollback=False))
    assert result.outcome is Outcome.FROZEN
    status = seen["snapshot"]
    assert status["state"] == "PAUSED" and status["reason"].startswith("frozen: ")
    assert "disk full" in status["reason"]
    assert set(status["frozen"]["choices"]) == {"resume", "rollback", "stop"}
    # the schema stays started, and the upgraded host keeps serving the new release
    assert migration_state(db, "0002_people_upper") == "started"
    assert serving(balancer)["web-0001"] == fleet.releases.target


def test_rollback_anyway_rolls_the_hosts_back_and_leaves_an_irreversible_schema(
        fleet_factory, tmp_path):
    db, migration = database(tmp_path, IRREVERSIBLE)
    fleet = fleet_for(fleet_factory, db, migration)
    engine, result, balancer, _ = run(
        fleet, interactive=True, answer=lambda engine: engine.abort(rollback=True))
    assert result.outcome is Outcome.ROLLED_BACK, result.error
    assert set(serving(balancer).values()) == {fleet.releases.current}
    assert migration_state(db, "0002_people_upper") == "started"
    assert any(e.kind == "log" and "left started" in e.data["message"] for e in engine.history)


def test_resume_after_a_freeze_goes_on_forward(fleet_factory, tmp_path):
    db, migration = database(tmp_path, REVERSIBLE)
    fleet = fleet_for(fleet_factory, db, migration, on_failure="freeze")
    engine, result, balancer, _ = run(
        fleet, interactive=True, answer=lambda engine: engine.resume(), fail_host="web-0001",
        failures=1)
    # the operator accepted the failure: the rollout goes on (the host's install is retried)
    assert result.outcome is Outcome.COMPLETED, result.error
    assert not any(e.kind == "rollback_started" for e in engine.history)
    assert {s.release for s in engine.hosts.values()} == {fleet.releases.target}


@pytest.mark.parametrize("interactive", [False, True])
def test_a_resumed_controller_finding_a_frozen_rollout_stays_frozen(
        fleet_factory, tmp_path, interactive):
    """The controller died while frozen (waiting for an operator): its journal ends with the
    ``frozen`` event. Resuming changes nothing: it freezes again (and waits, interactive)."""
    db, migration = database(tmp_path, IRREVERSIBLE)
    fleet = fleet_for(fleet_factory, db, migration)
    journal = Journal(tmp_path / "journal.sqlite")

    async def first():
        balancer = NoopBalancer()
        for host in fleet.main_hosts:
            await balancer.set_backend(host.name, address=host.address, port=host.port,
                                       pool=fleet.releases.current)

        def responder(host, argv):
            if host.name == "web-0002" and argv == ("deploy", fleet.releases.target):
                return CommandResult(1, stderr="disk full")
            return None
        switch = MigrationSwitch(fleet.schema.database, fleet.schema.migration)
        engine = Engine(fleet, compile_plan(fleet),
                        Providers(NoopTransport(responder=responder), balancer,
                                  NoopHealthCheck(), schema=switch),
                        clock=LoopClock(), interactive=True, journal=journal)
        task = asyncio.ensure_future(engine.run())
        for _ in range(10_000):
            await asyncio.sleep(1.0)
            if any(e.kind == "frozen" for e in engine.history):
                break
        task.cancel()          # the controller dies while frozen
        await asyncio.gather(task, return_exceptions=True)
        return balancer

    balancer = run_virtual(first)
    record = journal.unfinished(fleet.name)
    assert record is not None
    state = replay(record, journal.entries(record.id), fleet)
    assert state.frozen and "cannot be reverted" in state.frozen
    before = dict(balancer._backends)
    answer = (lambda engine: engine.abort(rollback=False)) if interactive else None
    engine, result, balancer, seen = run(fleet, interactive=interactive, answer=answer,
                                         journal=journal, resume=state,
                                         plan=Plan.from_json(record.plan), balancer=balancer)
    assert result.outcome is Outcome.FROZEN
    frozen = [e for e in engine.history if e.kind == "frozen"]
    assert frozen and frozen[0].data["resumed"] is True
    assert not any(e.kind in ("rollback_started", "host_phase") for e in engine.history)
    assert dict(balancer._backends) == before
    assert migration_state(db, "0002_people_upper") == "started"
    journal.close()


@pytest.mark.parametrize("body,message", [
    ('up = "UPDATE people SET name = upper(name)"\n',
     "0003_bad.toml:3: operations[0].down: missing `down`"),
    ('up = "UPDATE people SET name = upper(name)"\ndown = "SELECT 1"\nirreversible = true\n',
     "0003_bad.toml:6: operations[0].down: an irreversible sql operation has no `down`"),
    ('up = "UPDATE people SET name = upper(name)"\nirreversible = "yes"\n',
     "0003_bad.toml:6: operations[0].irreversible: expected true or false"),
])
def test_bad_irreversible_input_exits_2_naming_file_key_and_line(tmp_path, capsys, body, message):
    from upgrader.schema.cli import run as schema_cli

    db, _ = database(tmp_path, REVERSIBLE)
    before = migration_state(db, "0001_people")
    bad = tmp_path / "0003_bad.toml"
    bad.write_text('release = "1.1.0"\nprevious = "1.0.0"\n[[operations]]\nop = "sql"\n' + body)
    assert schema_cli(["start", str(bad), "--db", str(db)]) == 2
    assert message in capsys.readouterr().err
    with open_backend(str(db)) as backend:
        assert backend.status().active is None       # nothing changed
    assert migration_state(db, "0001_people") == before


def test_schema_rollback_refuses_an_irreversible_migration(tmp_path, capsys):
    """`upgrader schema rollback` by hand cannot half-undo it either: exit 1, nothing changed."""
    from upgrader.schema.cli import run as schema_cli

    db, migration = database(tmp_path, IRREVERSIBLE)
    assert schema_cli(["start", str(migration), "--db", str(db)]) == 0
    with connect(db, "1.1.0") as conn:
        names = sorted(r[0] for r in conn.execute("SELECT name FROM people"))
    assert names == ["ADA", "GRACE"]
    capsys.readouterr()
    assert schema_cli(["rollback", "0002_people_upper", "--db", str(db)]) == 1
    assert "cannot be rolled back" in capsys.readouterr().err
    assert migration_state(db, "0002_people_upper") == "started"


def test_the_tui_event_log_says_why_it_froze_and_what_each_choice_does(fleet_factory, tmp_path):
    from upgrader.tui.messages import EventDescriber
    from upgrader.tui.view import RolloutView

    db, migration = database(tmp_path, IRREVERSIBLE)
    engine, result, _, _ = run(fleet_for(fleet_factory, db, migration))
    frozen = next(e for e in engine.history if e.kind == "frozen")
    describer = EventDescriber()
    view = RolloutView(lambda: 0.0)
    text = describer.describe(frozen, view).plain
    assert text.startswith("FROZEN: ") and "cannot be reverted" in text
    for choice in ("resume:", "rollback:", "stop:"):
        assert choice in text
    state = dataclasses.replace(frozen, kind="state",
                                data={"state": "PAUSED", "reason": f"frozen: {frozen.data['reason']}"})
    assert describer.describe(state, view).plain == "PAUSED (see above)"


def test_status_prints_why_it_froze_and_the_choices(fleet_factory, tmp_path, capsys):
    """`upgrader status` reads the journal: the last unanswered ``frozen`` event."""
    from upgrader.cli import _frozen

    db, migration = database(tmp_path, IRREVERSIBLE)
    engine, result, _, _ = run(fleet_for(fleet_factory, db, migration))
    frozen = _frozen(list(engine.history))
    assert frozen is not None and "cannot be reverted" in frozen["reason"]
    assert set(frozen["choices"]) == {"resume", "rollback", "stop"}
    answered = [*engine.history, dataclasses.replace(engine.history[-1], kind="control",
                                                     data={"action": "resume"})]
    assert _frozen(answered) is None
