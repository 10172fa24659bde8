"""`upgrader status` without a fleet file (issue 16): `attach` and others suggested
`upgrader status`, which failed with "the following arguments are required: fleet". With
exactly one fleet journaled in the state folder it shows that fleet; with several it names
each with a command that runs as printed (exit 2); with none it says so (exit 0)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from upgrader.cli import main
from upgrader.config import load_fleet
from upgrader.journal import Journal
from upgrader.rollout import default_state_dir

FLEET = """
[fleet]
name = "NAME"

[release]
current = "1.0.0"
target = "1.1.0"

[commands]
install = ["true"]
start = ["true"]
stop = ["true"]

[transport]
kind = "noop"

[balancer]
kind = "noop"

[health]
kind = "noop"

[strategy]
kind = "rolling"
batch = 1

[[hosts]]
name = "web-01"
port = PORT
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("UPGRADER_STATE_DIR", raising=False)
    monkeypatch.delenv("UPGRADER_STATE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def fleet(home: Path, name: str, port: int) -> Path:
    path = home / "fleets" / f"{name}.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(FLEET.replace("NAME", name).replace("PORT", str(port)))
    return path


def journal_run(path: Path, recorded: str, now: float) -> str:
    """A finished rollout of the fleet at ``path`` in its default state folder, journaled
    as the engine does it (the fleet file's absolute path)."""
    fleet = load_fleet(path)
    journal = Journal(default_state_dir(fleet) / "journal.sqlite")
    try:
        rollout = journal.begin(fleet=fleet.name, fleet_path=recorded, strategy="rolling",
                                current="1.0.0", target="1.1.0", plan={}, now=now)
        journal.finish(rollout, "completed", now=now + 10)
    finally:
        journal.close()
    return rollout


def test_no_fleet_and_no_journal_says_so(home, capsys):
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"no rollout recorded in {home / 'xdg' / 'upgrader'}" in out
    assert "`upgrader status FLEET.toml` shows a fleet's last rollout" in out
    assert not (home / "xdg").exists()          # looking created nothing


def test_the_only_fleet_is_shown_from_any_directory(home, capsys, monkeypatch):
    shop = fleet(home, "shop", 9101)
    journal_run(shop, str(shop), 1000.0)
    gone = fleet(home, "old", 9105)
    journal_run(gone, str(gone), 900.0)
    gone.unlink()                              # a fleet whose file is gone does not count
    assert main(["status"]) == 0
    bare = capsys.readouterr().out
    assert ": rolling 1.0.0 -> 1.1.0: completed (" in bare
    assert main(["status", str(shop)]) == 0
    assert capsys.readouterr().out == bare
    assert main(["status", "--json"]) == 0
    assert '"fleet": "shop"' in capsys.readouterr().out


def test_several_fleets_are_named_with_commands_that_run(home, capsys):
    for name, port, now in (("shop", 9101, 1000.0), ("search", 9102, 2000.0)):
        journal_run(fleet(home, name, port), str(home / "fleets" / f"{name}.toml"), now)
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert f"2 fleets have rollouts in {home / 'xdg' / 'upgrader'}; name one" in err
    commands = [line.split("#")[0].strip() for line in err.splitlines()
                if line.strip().startswith("upgrader status ")]
    assert len(commands) == 2
    assert commands[0].endswith("search.toml")         # newest first
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0
        assert "completed" in capsys.readouterr().out


def test_status_without_fleet_and_a_postgres_state_is_bad_input(home, capsys):
    assert main(["status", "--state", "postgresql://nobody@localhost/none"]) == 2
    assert "name the fleet" in capsys.readouterr().err


def test_the_engine_journals_the_fleet_file_absolute(tmp_path, monkeypatch):
    """`status` finds the fleet from any directory because the journal holds the absolute
    path of the fleet file, even when `run` was given a relative one."""
    import asyncio

    from upgrader import strategies
    from upgrader.clock import LoopClock
    from upgrader.engine.core import Engine, Providers
    from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport

    (tmp_path / "shop.toml").write_text(FLEET.replace("NAME", "shop").replace("PORT", "9101"))
    monkeypatch.chdir(tmp_path)
    fleet = load_fleet("shop.toml")
    journal = Journal(tmp_path / "journal.sqlite")

    async def run() -> None:
        plan = strategies.get("rolling").compile(fleet, fleet.strategy.params)
        engine = Engine(fleet, plan, Providers(NoopTransport(), NoopBalancer(),
                                               NoopHealthCheck()),
                        clock=LoopClock(), journal=journal)
        task = asyncio.ensure_future(engine.run())
        while journal.latest("shop") is None:
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(run())
        assert journal.latest("shop").fleet_path == str(tmp_path / "shop.toml")
    finally:
        journal.close()
