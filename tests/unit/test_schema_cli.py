"""`upgrader schema ...`: exit codes, output, and nothing changed on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from upgrader.cli import main as upgrader_main
from upgrader.schema.cli import run


def dump(path) -> tuple:
    """Every schema object's SQL and every table's rows (not the migration history)."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        objects = sorted((t, n, s or "") for t, n, s in conn.execute(
            "SELECT type, name, sql FROM sqlite_master"))
        return objects, {n: sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr)
                         for t, n, _ in objects if t == "table"
                         and n != "_upgrader_schema_migrations"}
    finally:
        conn.close()


SAMPLES = Path(__file__).parents[2] / "sample_fleets" / "migrations"


@pytest.fixture
def migrations(tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(SAMPLES, folder)
    return folder


def test_lifecycle_through_the_top_level_cli(tmp_path, migrations, capsys):
    db = str(tmp_path / "app.sqlite")
    assert upgrader_main(["schema", "start", str(migrations / "0001_users.toml"),
                          "--db", db]) == 0
    assert upgrader_main(["schema", "complete", "0001_users", "--db", db]) == 0
    assert run(["start", str(migrations / "0002_split_name.toml"), "--db", db]) == 0
    capsys.readouterr()
    assert run(["status", "--db", db, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["active"] == "0002_split_name"
    assert [r["release"] for r in status["live"]] == ["1.0.0", "1.1.0"]
    assert status["live"][1]["connection"] == f"upgrader.schema.connect({db!r}, '1.1.0')"
    assert run(["status", "--db", db]) == 0
    assert "1.1.0 (from 0002_split_name): upgrader.schema.connect(" in capsys.readouterr().out
    assert run(["complete", str(migrations / "0002_split_name.toml"), "--db", db]) == 0


def test_second_start_refused_exit_1_naming_the_active(tmp_path, migrations, capsys):
    db = str(tmp_path / "app.sqlite")
    assert run(["start", str(migrations / "0001_users.toml"), "--db", db]) == 0
    before = dump(db)
    assert run(["start", str(migrations / "0002_split_name.toml"), "--db", db]) == 1
    assert "migration '0001_users' is active" in capsys.readouterr().err
    assert dump(db) == before


def test_bad_input_exit_2_nothing_changed(tmp_path, migrations, capsys):
    db = str(tmp_path / "app.sqlite")
    assert run(["start", str(migrations / "0001_users.toml"), "--db", db]) == 0
    assert run(["complete", "0001_users", "--db", db]) == 0
    before = dump(db)
    bad = migrations / "0002_split_name.toml"
    bad.write_text(bad.read_text().replace('table = "users"', 'table = "user"', 1))
    assert run(["start", str(bad), "--db", db]) == 2
    err = capsys.readouterr().err
    assert "0002_split_name.toml:9: operations[0].table: unknown table 'user'" in err
    assert "did you mean 'users'" in err
    change = migrations / "0009_type.toml"
    change.write_text('release = "2"\n[[operations]]\nop = "change_type"\ntable = "users"\n'
                      'column = "score"\ntype = "integer"\nup = "CAST(score AS INTEGER)"\n')
    assert run(["start", str(change), "--db", db]) == 2
    assert "0009_type.toml:2: operations[0].down: missing required key 'down'" in \
        capsys.readouterr().err
    assert run(["plan", str(change), "--db", db]) == 2
    assert run(["status", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert not (tmp_path / "missing.sqlite").exists()
    assert run(["rollback", "0001_users", "--db", db]) == 1
    assert dump(db) == before


def test_plan_prints_sql_without_running_it(tmp_path, migrations, capsys):
    db = str(tmp_path / "app.sqlite")
    run(["start", str(migrations / "0001_users.toml"), "--db", db])
    run(["complete", "0001_users", "--db", db])
    run(["start", str(migrations / "0002_split_name.toml"), "--db", db])
    run(["complete", "0002_split_name", "--db", db])
    before = dump(db)
    capsys.readouterr()
    assert run(["plan", str(migrations / "0003_drop_name.toml"), "--db", db, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert 'ALTER TABLE "users" ADD COLUMN "_upg_new_score" integer' in plan["statements"]
    assert run(["plan", str(migrations / "0003_drop_name.toml"), "--db", db,
                "--phase", "complete"]) == 0
    assert 'ALTER TABLE "users" DROP COLUMN "name";' in capsys.readouterr().out
    assert dump(db) == before


def test_check_exit_codes(migrations, capsys):
    assert run(["check", str(migrations / "0002_split_name.toml")]) == 0
    assert run(["check", str(migrations / "0004_rename_email.toml")]) == 1
    assert "BREAKS '1.2.0'" in capsys.readouterr().out
    assert run(["check", str(migrations / "0004_rename_email.toml"), "--views", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["breaks_previous"] is False
    assert run(["check", str(migrations / "nope.toml")]) == 2


def test_plan_and_start_agree_about_a_missing_database(tmp_path, migrations, capsys):
    """Issue 16: `plan` refused a missing SQLite file while `start` created it. Now `plan`
    plans against the empty database `start` would create, and says so; neither creates
    the file, and a `start` that fails on a database it created leaves no file behind."""
    db = tmp_path / "app.sqlite"
    capsys.readouterr()
    assert run(["plan", str(migrations / "0001_users.toml"), "--db", str(db)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"-- {db} does not exist yet: planned against an empty database "
                      "(`upgrader schema start` creates it)")
    assert out[1].startswith('CREATE TABLE "users"')
    assert not db.exists()
    assert run(["plan", str(migrations / "0001_users.toml"), "--db", str(db), "--json"]) == 0
    assert "does not exist yet" in json.loads(capsys.readouterr().out)["note"]

    # 0002 needs the users table: plan and start give the same error, with the way out.
    for command in ("plan", "start"):
        assert run([command, str(migrations / "0002_split_name.toml"), "--db", str(db)]) == 2
        err = capsys.readouterr().err
        assert "0002_split_name.toml:9: operations[0].table: unknown table 'users'" in err
        assert "the database is empty; start the migration that creates the table first" in err
        assert not db.exists(), command
    assert list(tmp_path.iterdir()) == [migrations]

    # The quick start's order works from nothing.
    assert run(["start", str(migrations / "0001_users.toml"), "--db", str(db)]) == 0
    assert run(["complete", "0001_users", "--db", str(db)]) == 0
    capsys.readouterr()
    assert run(["plan", str(migrations / "0002_split_name.toml"), "--db", str(db)]) == 0
    assert "does not exist" not in capsys.readouterr().out
    assert run(["start", str(migrations / "0002_split_name.toml"), "--db", str(db)]) == 0
