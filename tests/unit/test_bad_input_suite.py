"""The bad-input suite: generated broken fleet, flag and migration files through the real
command line. Whatever the input, the CLI exits 2 with one ``upgrader: error:`` line naming
the file (and, where the input has one, the key and line), never a traceback, and nothing
is changed: no provider is created, the flag store and the database are as they were.

The loaders' own property tests (only ConfigError, with a location) live beside each loader:
tests/unit/test_config_fuzz.py, test_flags_loader.py, test_schema_loader.py. This file puts
the same kinds of input through ``upgrader.cli.main``, the way an operator meets them.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from upgrader import cli
from upgrader.config import load_fleet
from upgrader.errors import ConfigError
from upgrader.flags import loader as flags_loader
from upgrader.plugins import Plugins

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_fleets"
FLEETS = ["canary.toml", "rolling.toml", "bluegreen.toml", "production-sketch.toml",
          "phased.toml", "shedding.toml"]
SUITE = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow,
                                        HealthCheck.function_scoped_fixture])

#: values that break a file in the ways people do: wrong types, shell syntax, control
#: characters, huge numbers, empty strings, templates that name nothing
NASTY = st.sampled_from([
    "", " ", "; rm -rf /", "$(touch pwned)", "`id`", "a\nb", "a\x00b", "{nope}", "1.0.0;ls",
    "../../etc/passwd", "10 parsecs", "-1s", "150%", "NaN", "∞", "x" * 300,
]) | st.integers(-(2**63), 2**63 - 1) | st.booleans() | st.floats(allow_nan=True) \
    | st.lists(st.integers(), max_size=3) | st.dictionaries(st.text(max_size=5), st.integers(),
                                                            max_size=2)


def leaf_paths(value: Any, path: tuple = ()) -> list[tuple]:
    out: list[tuple] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out += leaf_paths(item, path + (key,))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for index, item in enumerate(value):
            out += leaf_paths(item, path + (index,))
    else:
        out.append(path)
    return out


def set_path(document: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        document = document[key]
    document[path[-1]] = value


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_bad_input(code: int, err: str, file: Path) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("upgrader: error: "), err
    assert str(file) in err or file.name in err, err


@pytest.fixture
def no_providers(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Records every provider the CLI would create (there must be none)."""
    created: list[tuple] = []
    original = Plugins.create

    def spy(self: Plugins, category: str, spec: Any, *args: Any, **kwargs: Any) -> Any:
        created.append((category, spec))
        return original(self, category, spec, *args, **kwargs)

    monkeypatch.setattr(Plugins, "create", spy)
    return created


# --------------------------------------------------------------------------------------------
# fleet files: `upgrader plan`, `upgrader run --headless`


def mutated_fleet(data: st.DataObject) -> str:
    name = data.draw(st.sampled_from(FLEETS), label="sample")
    document = tomllib.loads((SAMPLES / name).read_text(encoding="utf-8"))
    path = data.draw(st.sampled_from(leaf_paths(document)), label="key")
    set_path(document, path, data.draw(NASTY, label="value"))
    return tomli_w.dumps(document)


def broken_text(data: st.DataObject, text: str) -> str:
    """Truncated, or a line duplicated, or garbage spliced in: no longer valid TOML often."""
    lines = text.splitlines(keepends=True)
    how = data.draw(st.sampled_from(["truncate", "duplicate", "splice"]), label="how")
    at = data.draw(st.integers(0, max(0, len(lines) - 1)), label="at")
    if how == "truncate":
        return "".join(lines[:at]) + lines[at][: len(lines[at]) // 2] if lines else ""
    if how == "duplicate":
        return "".join(lines[: at + 1] + lines[at:])
    garbage = data.draw(st.sampled_from(["[[", "= 3", "key = ", "[fleet]\n", "\x00", "\"",
                                         "a = 1\na = 2\n"]), label="garbage")
    return "".join(lines[:at]) + garbage + "".join(lines[at:])


@SUITE
@given(data=st.data())
def test_a_broken_fleet_file_is_exit_2_and_no_provider_is_created(
        data: st.DataObject, tmp_path_factory: pytest.TempPathFactory,
        capsys: pytest.CaptureFixture[str], no_providers: list[tuple]) -> None:
    folder = tmp_path_factory.mktemp("fleet")
    if data.draw(st.booleans(), label="syntax"):
        sample = data.draw(st.sampled_from(FLEETS), label="sample")
        text = broken_text(data, (SAMPLES / sample).read_text(encoding="utf-8"))
    else:
        text = mutated_fleet(data)
    file = folder / "fleet.toml"
    file.write_text(text, encoding="utf-8")
    try:
        load_fleet(file)
    except ConfigError as exc:
        assert exc.file == str(file)
    else:
        return        # the mutation happened to be valid: nothing to assert here
    for argv in (("plan", str(file)), ("run", "--headless", str(file),
                                       "--state-dir", str(folder / "state"))):
        code, _out, err = run_cli(capsys, *argv)
        assert_bad_input(code, err, file)
    assert no_providers == []
    assert not (folder / "state").exists(), "a refused run must not create its state"


def test_the_error_names_key_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      no_providers: list[tuple]) -> None:
    text = (SAMPLES / "canary.toml").read_text(encoding="utf-8")
    text = text.replace('target = "1.1.0"', 'target = "1.1.0; rm -rf /"')
    file = tmp_path / "fleet.toml"
    file.write_text(text, encoding="utf-8")
    line = next(i for i, text_line in enumerate(text.splitlines(), 1)
                if text_line.startswith("target ="))
    code, _out, err = run_cli(capsys, "run", "--headless", str(file))
    assert_bad_input(code, err, file)
    assert f"{file}:{line}: release.target" in err
    assert no_providers == []


# --------------------------------------------------------------------------------------------
# flags files: `upgrader flags import` leaves the store as it was


def store_fingerprint(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        rows = []
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                     "ORDER BY name"):
            rows.append((table, conn.execute(f'SELECT * FROM "{table}"').fetchall()))
    return hashlib.sha256(repr(rows).encode()).hexdigest()


@pytest.fixture(scope="module")
def flag_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("flags") / "flags.sqlite"
    code = cli.main(["flags", "import", str(SAMPLES / "flags.toml"), "--store", str(store),
                     "--actor", "test", "--reason", "setup"])
    assert code == 0
    return store


@SUITE
@given(data=st.data())
@example(data=None)
def test_a_broken_flags_file_is_exit_2_and_the_store_is_unchanged(
        data: st.DataObject | None, flag_store: Path, tmp_path_factory: pytest.TempPathFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    text = (SAMPLES / "flags.toml").read_text(encoding="utf-8")
    if data is None:
        text = text.replace("[flags.", "[flags.bad;key", 1)
    elif data.draw(st.booleans(), label="syntax"):
        text = broken_text(data, text)
    else:
        document = tomllib.loads(text)
        path = data.draw(st.sampled_from(leaf_paths(document)), label="key")
        set_path(document, path, data.draw(NASTY, label="value"))
        text = tomli_w.dumps(document)
    file = tmp_path_factory.mktemp("flagsfile") / "flags.toml"
    file.write_text(text, encoding="utf-8")
    try:
        flags_loader.load(file)
    except ConfigError:
        pass
    else:
        return
    before = store_fingerprint(flag_store)
    code, _out, err = run_cli(capsys, "flags", "import", str(file), "--store", str(flag_store),
                              "--actor", "fuzz", "--reason", "bad input suite")
    assert_bad_input(code, err, file)
    assert store_fingerprint(flag_store) == before


# --------------------------------------------------------------------------------------------
# migration files: `upgrader schema start` leaves the database as it was; a fleet whose
# release names a broken migration is refused before any provider exists

MIGRATION_SAMPLES = sorted((SAMPLES / "migrations").glob("000*.toml"))


def database_fingerprint(path: Path, *, history: bool = True) -> str:
    """Every schema object and every row; ``history=False`` leaves out the migrations'
    history (a rolled-back migration stays in it, on purpose)."""
    with sqlite3.connect(path) as conn:
        objects = sorted(conn.execute("SELECT type, name, sql FROM sqlite_master"))
        rows = [(t, conn.execute(f'SELECT * FROM "{t}"').fetchall())
                for _type, t, _sql in objects if _type == "table"
                and (history or t != "_upgrader_schema_migrations")]
    return hashlib.sha256(repr((objects, rows)).encode()).hexdigest()


@pytest.fixture(scope="module")
def users_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("schema") / "app.sqlite"
    for argv in (["schema", "start", str(SAMPLES / "migrations" / "0001_users.toml")],
                 ["schema", "complete", "0001_users"]):
        assert cli.main([*argv, "--db", str(db)]) == 0
    return db


def broken_migration(data: st.DataObject) -> str:
    sample = data.draw(st.sampled_from(MIGRATION_SAMPLES[1:]), label="migration")
    text = sample.read_text(encoding="utf-8")
    if data.draw(st.booleans(), label="syntax"):
        return broken_text(data, text)
    document = tomllib.loads(text)
    path = data.draw(st.sampled_from(leaf_paths(document)), label="key")
    set_path(document, path, data.draw(NASTY | st.sampled_from(
        ["nosuchtable", "nosuchcolumn", "name", "drop_column", "sql", "CAST(x AS nope)"]),
        label="value"))
    return tomli_w.dumps(document)


@SUITE
@given(data=st.data())
@example(data=None)
def test_a_broken_migration_is_exit_2_and_the_database_is_unchanged(
        data: st.DataObject | None, users_db: Path,
        tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path_factory.mktemp("migration") / "0002_bad.toml"
    if data is None:       # a comment line duplicated: still a valid migration (seen in CI)
        text = (SAMPLES / "migrations" / "0002_split_name.toml").read_text(encoding="utf-8")
        file.write_text(text.splitlines(keepends=True)[0] + text, encoding="utf-8")
    else:
        file.write_text(broken_migration(data), encoding="utf-8")
    before = database_fingerprint(users_db)
    tables_before = database_fingerprint(users_db, history=False)
    code, _out, err = run_cli(capsys, "schema", "start", str(file), "--db", str(users_db))
    if code == 0:      # the mutation happened to be a valid migration: undo it
        from upgrader.schema import load_migration

        assert cli.main(["schema", "rollback", load_migration(file).name, "--db",
                         str(users_db)]) == 0
        capsys.readouterr()
        assert database_fingerprint(users_db, history=False) == tables_before
        return
    if code == 1:      # valid file, refused by the database (SchemaError): still unchanged
        assert "Traceback" not in err
    else:
        assert_bad_input(code, err, file)
    assert database_fingerprint(users_db) == before


def test_a_fleet_naming_a_broken_migration_creates_no_provider(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_providers: list[tuple]) -> None:
    migration = tmp_path / "0002.toml"
    migration.write_text((SAMPLES / "migrations" / "0002_split_name.toml").read_text()
                         .replace('op = "add_column"', 'op = "add_colum"', 1), encoding="utf-8")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text((SAMPLES / "rolling.toml").read_text().replace(
        'target = "1.1.0"', f'target = "1.1.0"\nmigration = "{migration}"') +
        f'\n[schema]\ndatabase = "{tmp_path / "app.sqlite"}"\n', encoding="utf-8")
    code, _out, err = run_cli(capsys, "run", "--headless", str(fleet), "--state-dir",
                              str(tmp_path / "state"))
    assert_bad_input(code, err, migration)
    assert "add_colum" in err and "add_column" in err        # the did-you-mean
    assert no_providers == []
    assert not (tmp_path / "app.sqlite").exists()
