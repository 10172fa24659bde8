"""The roll-back window (issue 15, point 3): ``[release] rollback_window`` parses (bad input
names file, key and line, exit 2, nothing changed), the window is worked out by time on an
injected clock and by count of releases, and a completed rollout journals its window."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from test_config import BASE, assert_at, load_error, replaced
from test_engine import fleet_with, providers_for, run_engine

from upgrader import cli
from upgrader.clock import run_virtual
from upgrader.config import loads_fleet
from upgrader.model import RollbackWindow
from upgrader.rollback_window import Completed, window_state

HOUR = 3600.0


def with_window(value: str) -> str:
    return replaced('target = "1.1.0"\n', f'target = "1.1.0"\nrollback_window = {value}\n')


def test_rollback_window_parses_a_duration_or_a_count() -> None:
    assert loads_fleet(with_window('"2h"')).rollback_window == RollbackWindow(seconds=2 * HOUR)
    assert loads_fleet(with_window("3")).rollback_window == RollbackWindow(releases=3)
    assert loads_fleet(BASE).rollback_window is None


@pytest.mark.parametrize("value,words", [
    ('"soon"', ("rollback_window", "duration")),
    ("0", ("count of releases >= 1",)),
    ('"0s"', ("longer than 0s",)),
    ("true", ("a duration like",)),
    ("1.5", ("a duration like",)),
])
def test_bad_rollback_window_names_file_key_and_line(tmp_path: Path, value: str,
                                                     words: tuple[str, ...]) -> None:
    text = with_window(value)
    line = text.splitlines().index(f"rollback_window = {value}") + 1
    error = load_error(tmp_path, text)
    assert_at(error, "release.rollback_window", line, *words)


def test_bad_rollback_window_exits_2_and_changes_nothing(tmp_path: Path, capsys) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(with_window('"an hour"'), encoding="utf-8")
    state = tmp_path / "state"
    code = cli.main(["rollback", str(path), "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(path) in err and "release.rollback_window" in err
    assert not state.exists()          # nothing was started, nothing journaled


def _chain(*finished: float) -> list[Completed]:
    """Completed rollouts 1.0 -> 1.1 -> 1.2 ..., newest first, finished at ``finished``."""
    out = [Completed(f"r{i}", f"1.{i}.0", f"1.{i + 1}.0", at) for i, at in enumerate(finished)]
    return out[::-1]


def test_window_by_time_on_an_injected_clock() -> None:
    window = RollbackWindow(seconds=HOUR)

    async def main() -> list[bool]:
        from upgrader.clock import LoopClock

        clock = LoopClock()
        finished = clock.wall()
        completed = _chain(finished)
        seen = []
        for wait in (0.0, HOUR - 1, 1.0):        # open, still open, closed at the hour
            await clock.sleep(wait)
            state = window_state(window, completed, clock.wall())
            assert state.closes_at == finished + HOUR
            seen.append(state.open)
        return seen

    assert run_virtual(main) == [True, True, False]


def test_window_by_time_keeps_every_release_replaced_within_it() -> None:
    completed = _chain(1000.0, 2000.0)        # 1.0 -> 1.1 at 1000, 1.1 -> 1.2 at 2000
    state = window_state(RollbackWindow(seconds=1500.0), completed, 2400.0)
    assert state.live == "1.2.0" and state.previous == "1.1.0"
    assert state.open_releases == ("1.1.0", "1.0.0")
    state = window_state(RollbackWindow(seconds=1500.0), completed, 2600.0)
    assert state.open_releases == ("1.1.0",) and state.open


def test_window_by_count_of_releases() -> None:
    completed = _chain(1.0, 2.0, 3.0)         # live 1.3.0
    state = window_state(RollbackWindow(releases=2), completed, 10 ** 9)
    assert state.open and state.closes_at is None
    assert state.open_releases == ("1.2.0", "1.1.0")
    assert not state.is_open_for("1.0.0")


def test_no_window_and_no_history() -> None:
    assert not window_state(None, _chain(1.0), 2.0).open
    empty = window_state(RollbackWindow(releases=1), [], 2.0)
    assert empty.live is None and not empty.open


def test_a_rolled_back_release_is_not_its_own_target() -> None:
    # 1.0 -> 1.1, then rolled back 1.1 -> 1.0: the window offers 1.1 (forward), never 1.0
    completed = [Completed("b", "1.1.0", "1.0.0", 2.0), Completed("a", "1.0.0", "1.1.0", 1.0)]
    state = window_state(RollbackWindow(releases=2), completed, 3.0)
    assert state.live == "1.0.0" and state.open_releases == ("1.1.0",)


def test_a_completed_rollout_journals_its_window(fleet_factory) -> None:
    fleet = fleet_with(fleet_factory, "rolling", n=4)
    fleet = dataclasses.replace(fleet, rollback_window=RollbackWindow(seconds=HOUR))
    _, result, events = run_engine(fleet, providers_for(fleet))
    assert result.outcome.value == "completed"
    [window] = [e for e in events if e.kind == "rollback_window"]
    assert window.data["previous"] == fleet.releases.current
    assert window.data["release"] == fleet.releases.target
    assert window.data["closes_at"] == pytest.approx(window.ts + HOUR, abs=1.0)
    json.dumps(window.data)


def test_no_window_no_event(fleet_factory) -> None:
    fleet = fleet_with(fleet_factory, "rolling", n=2)
    _, _, events = run_engine(fleet, providers_for(fleet))
    assert not [e for e in events if e.kind == "rollback_window"]



# -- schema complete waits for the window (a real SQLite schema, a real journal)

SAMPLES = Path(__file__).parents[2] / "sample_fleets" / "migrations"


def _schema_fleet(tmp_path: Path, db: Path, window: str) -> Path:
    import shutil

    shutil.copy(SAMPLES / "0002_split_name.toml", tmp_path / "0002_split_name.toml")
    text = replaced('target = "1.1.0"\n', f'target = "1.1.0"\nmigration = '
                    f'"0002_split_name.toml"\nrollback_window = {window}\n')
    text += f'\n[schema]\ndatabase = "{db}"\n'
    path = tmp_path / "fleet.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _completed(state: Path, finished: float) -> str:
    from upgrader.journal import Journal

    journal = Journal(state / "journal.sqlite")
    try:
        rollout = journal.begin(fleet="shop", fleet_path=None, strategy="rolling",
                                current="1.0.0", target="1.1.0", plan={}, now=finished - 10)
        journal.finish(rollout, "completed", now=finished)
        return rollout
    finally:
        journal.close()


def _started_schema(db: Path) -> None:
    assert cli.main(["schema", "start", str(SAMPLES / "0001_users.toml"), "--db", str(db)]) == 0
    assert cli.main(["schema", "complete", "0001_users", "--db", str(db)]) == 0
    assert cli.main(["schema", "start", str(SAMPLES / "0002_split_name.toml"),
                     "--db", str(db)]) == 0


def _active(db: Path) -> str | None:
    from upgrader.schema import open_backend

    with open_backend(str(db), create=False) as backend:
        return backend.status().active


def test_schema_complete_is_refused_inside_the_window(tmp_path, monkeypatch, capsys) -> None:
    import time

    state = tmp_path / "state"
    monkeypatch.setenv("UPGRADER_STATE_DIR", str(state))
    db = tmp_path / "app.sqlite"
    _started_schema(db)
    fleet = _schema_fleet(tmp_path, db, '"1h"')
    rollout = _completed(state, time.time())
    capsys.readouterr()

    # inside the window: refused, exit 3, nothing changed
    assert cli.main(["schema", "complete", "0002_split_name", "--fleet", str(fleet)]) == 3
    err = capsys.readouterr().err
    assert "inside its roll-back window" in err and "--force --reason" in err
    assert _active(db) == "0002_split_name"
    # --force without a reason: bad input, exit 2, nothing changed
    assert cli.main(["schema", "complete", "0002_split_name", "--fleet", str(fleet),
                     "--force"]) == 2
    assert _active(db) == "0002_split_name"
    # forced with a reason: completed, and the reason journaled on the window's rollout
    assert cli.main(["schema", "complete", "0002_split_name", "--fleet", str(fleet),
                     "--force", "--reason", "disk full: the old columns must go"]) == 0
    assert _active(db) is None
    from upgrader.journal import Journal

    journal = Journal(state / "journal.sqlite")
    try:
        [forced] = [e for e in journal.entries(rollout) if e.kind == "schema_complete_forced"]
    finally:
        journal.close()
    assert forced.data["reason"] == "disk full: the old columns must go"


def test_schema_complete_goes_ahead_once_the_window_has_closed(tmp_path, monkeypatch) -> None:
    import time

    state = tmp_path / "state"
    monkeypatch.setenv("UPGRADER_STATE_DIR", str(state))
    db = tmp_path / "app.sqlite"
    _started_schema(db)
    fleet = _schema_fleet(tmp_path, db, '"1h"')
    _completed(state, time.time() - 2 * HOUR)        # the window closed an hour ago
    assert cli.main(["schema", "complete", "0002_split_name", "--fleet", str(fleet)]) == 0
    assert _active(db) is None


def test_the_engine_defers_schema_complete_while_a_window_is_set(fleet_factory,
                                                                 tmp_path) -> None:
    from test_engine_schema import database, migration_state, run, schema_fleet

    db, migration = database.__wrapped__(tmp_path)
    fleet = dataclasses.replace(schema_fleet(fleet_factory, db, migration),
                                rollback_window=RollbackWindow(seconds=HOUR))
    engine, result = run(fleet)
    assert result.outcome.value == "completed", result.error
    # the old release's views stay for the window: the migration is still started
    assert migration_state(db, "0002_people_email") == "started"
    assert [e.data["result"] for e in engine.history
            if e.kind == "schema" and e.data.get("action") == "complete"] == [
        "deferred until the roll-back window closes"]


def test_the_snapshot_carries_the_window_a_completed_rollout_opened(fleet_factory) -> None:
    """Front ends (the TUI, through the control API) read the window from the snapshot, with
    the roll-back estimate the front end gave the engine."""
    fleet = fleet_with(fleet_factory, "rolling", n=4)
    fleet = dataclasses.replace(fleet, rollback_window=RollbackWindow(releases=2))
    engine, result, events = run_engine(fleet, providers_for(fleet))
    assert result.outcome.value == "completed"
    snap = engine.snapshot()
    assert snap["rollback_window"] == {"previous": fleet.releases.current,
                                       "release": fleet.releases.target, "closes_at": None,
                                       "releases": 2, "rollback_s": None}
    json.dumps(snap)


def test_no_window_in_the_snapshot_before_completion(fleet_factory) -> None:
    fleet = fleet_with(fleet_factory, "rolling", n=2)
    fleet = dataclasses.replace(fleet, rollback_window=RollbackWindow(releases=2))
    from upgrader import strategies
    from upgrader.engine.core import Engine

    plan = strategies.get("rolling").compile(fleet, fleet.strategy.params)
    assert Engine(fleet, plan, providers_for(fleet)).snapshot()["rollback_window"] is None


def test_the_engines_estimate_is_the_one_status_shows_after_completion(fleet_factory) -> None:
    """``run`` hands the engine the cost of going straight back; ``status`` works it out from
    the journal once the rollout completed: the two are the same figure."""
    from upgrader.rollback_cli import rollback_cost

    fleet = fleet_with(fleet_factory, "rolling", n=8)
    fleet = dataclasses.replace(fleet, rollback_window=RollbackWindow(seconds=HOUR))
    done = [Completed("r1", fleet.releases.current, fleet.releases.target, 100.0)]
    status_cost = rollback_cost(fleet, window_state(fleet.rollback_window, done, 200.0))
    assert status_cost is not None and status_cost["in_window"]
    assert cli._straight_back_s(fleet) == status_cost["estimate_s"]


@pytest.mark.parametrize(("argv", "terminal", "expected"), [
    ([], True, ["detach", "attach"]),          # on a terminal: the TUI, as `run` does
    ([], False, ["run"]),                      # a script: headless in the command's process
    (["--headless"], True, ["run"]),
    (["--detach"], True, ["detach"]),          # a controller process; attach follows later
    (["--detach"], False, ["detach"]),
])
def test_rollback_runs_headless_detached_or_in_the_tui(tmp_path, monkeypatch, argv, terminal,
                                                       expected) -> None:
    import time

    from upgrader import rollback_cli

    state = tmp_path / "state"
    monkeypatch.setenv("UPGRADER_STATE_DIR", str(state))
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(with_window('"1h"'), encoding="utf-8")
    _completed(state, time.time())
    called: list[str] = []

    async def run(back, plugins, args, *, recover):
        called.append("run")
        assert (back.releases.current, back.releases.target) == ("1.1.0", "1.0.0")
        return 0

    def detach(args, fleet_, *, recover, command=None):
        called.append("detach")
        assert command == "rollback" and not recover
        return 0

    def attach(args, *, fleet=None):
        called.append("attach")
        assert not args.headless and args.state_dir == str(state)
        return 0

    monkeypatch.setattr(cli, "_run", run)
    monkeypatch.setattr(cli, "_detach", detach)
    monkeypatch.setattr(cli, "cmd_attach", attach)
    monkeypatch.setattr(rollback_cli, "on_terminal", lambda: terminal)
    assert cli.main(["rollback", str(fleet), *argv]) == 0
    assert called == expected


def test_an_estimate_that_cannot_be_worked_out_never_stops_the_rollout(fleet_factory,
                                                                       monkeypatch) -> None:
    from upgrader import rollback_cli
    from upgrader.errors import ConfigError

    def broken(fleet, window):
        raise ConfigError("this strategy cannot be compiled backwards")

    monkeypatch.setattr(rollback_cli, "rollback_cost", broken)
    fleet = dataclasses.replace(fleet_with(fleet_factory, "rolling", n=2),
                                rollback_window=RollbackWindow(seconds=HOUR))
    assert cli._straight_back_s(fleet) is None


def test_rollback_finishes_a_roll_back_it_started_and_did_not_finish(tmp_path, monkeypatch,
                                                                     capsys) -> None:
    """Its controller died (or a fault stopped it): the journal holds an unfinished 1.1.0 ->
    1.0.0 rollout while the fleet file says 1.0.0 -> 1.1.0. `resume` refuses it (the releases
    differ) and says which command finishes it; `upgrader rollback` resumes it from its
    journal instead of refusing."""
    import time

    from upgrader.journal import Journal

    state = tmp_path / "state"
    monkeypatch.setenv("UPGRADER_STATE_DIR", str(state))
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(with_window('"1h"'), encoding="utf-8")
    _completed(state, time.time() - 60)
    journal = Journal(state / "journal.sqlite")
    try:
        back = journal.begin(fleet="shop", fleet_path=str(fleet), strategy="rolling",
                             current="1.1.0", target="1.0.0", plan={}, now=time.time())
    finally:
        journal.close()
    capsys.readouterr()
    assert cli.main(["resume", str(fleet), "--headless"]) == 3
    assert "`upgrader rollback` started: that command finishes it" in capsys.readouterr().err

    seen: list[tuple[str, str, bool]] = []

    async def run(fleet_, plugins, args, *, recover):
        seen.append((fleet_.releases.current, fleet_.releases.target, recover))
        return 0

    monkeypatch.setattr(cli, "_run", run)
    assert cli.main(["rollback", str(fleet), "--to", "1.1.0"]) == 3     # not where it goes
    assert "(without --to) finishes it first" in capsys.readouterr().err
    assert seen == []
    assert cli.main(["rollback", str(fleet), "--headless"]) == 0
    assert seen == [("1.1.0", "1.0.0", True)]
    assert f"finishing the unfinished roll-back {back}" in capsys.readouterr().err
def test_a_blue_green_fleet_goes_straight_back_by_swapping_to_its_old_slots() -> None:
    """Inside the window a blue-green fleet's plan reuses the idle slots that still run the
    previous release and swaps every host at once: no system test, no hold, no pause, and
    the roll-back estimate is the swap alone (a rolling fleet's is its host procedures)."""
    from upgrader.config import load_fleet
    from upgrader.plan import PrepareSlots, SwapSlots
    from upgrader.rollback_cli import fast_fleet, rollback_cost
    from upgrader.rollback_window import WindowState
    from upgrader.rollout import compile_plan

    root = Path(__file__).resolve().parents[2] / "sample_fleets"
    window = WindowState("1.1.0", "1.0.0", ("1.0.0",), None)
    fleet = load_fleet(root / "bluegreen.toml")
    hosts = tuple(h.name for h in fleet.main_hosts)
    plan = compile_plan(fast_fleet(fleet, compile_plan(fleet)))
    assert [type(s) for s in plan.steps] == [PrepareSlots, SwapSlots]
    prepare, swap = plan.steps
    assert isinstance(prepare, PrepareSlots) and prepare.reuse
    assert sorted(prepare.hosts) == sorted(hosts) and sorted(swap.hosts) == sorted(hosts)
    assert plan.rollback_mode == "swap"
    cost = rollback_cost(fleet, window)
    assert cost is not None and cost["in_window"] and cost["estimate_s"] <= 1.0
    rolling = rollback_cost(load_fleet(root / "rolling.toml"), window)
    assert rolling is not None and rolling["estimate_s"] > cost["estimate_s"]
    # a forward blue-green plan is untouched: it installs, tests and verifies
    forward = compile_plan(fleet)
    assert not any(isinstance(s, PrepareSlots) and s.reuse for s in forward.steps)
    assert any(s.kind == "gate" for s in forward.steps)
