"""`upgrader schema ...` against a real PostgreSQL: the sample migrations start, report their
live releases with the search_path an application uses, complete and roll back; bad input
exits 2 and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from upgrader import cli

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "sample_fleets" / "migrations"


def schema(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["schema", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def catalogue(url: str) -> list:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', "
            "'information_schema', 'pg_toast', 'upgrader_schema') ORDER BY 1, 2").fetchall()


def test_the_sample_series_through_the_cli(postgres_url, capsys):
    code, out, err = schema(capsys, "start", str(MIGRATIONS / "0001_users.toml"),
                            "--db", postgres_url)
    assert code == 0, err
    assert schema(capsys, "complete", "0001_users", "--db", postgres_url)[0] == 0
    with psycopg.connect(postgres_url) as conn:
        conn.execute("INSERT INTO users (id, name) VALUES (1, 'Grace Brewster Hopper'), "
                     "(2, 'Ada'), (3, 'Alan Turing')")
    code, out, err = schema(capsys, "start", str(MIGRATIONS / "0002_split_name.toml"),
                            "--db", postgres_url)
    assert code == 0, err
    code, out, err = schema(capsys, "status", "--db", postgres_url, "--json")
    assert code == 0, err
    status = json.loads(out)
    live = {r["release"]: r for r in status["live"]}
    assert status["active"] == "0002_split_name"
    assert set(live) == {"1.0.0", "1.1.0"}
    # the connection setting works: the new release sees first_name through its views
    with psycopg.connect(postgres_url, options=f"-c{live['1.1.0']['connection']}") as conn:
        columns = [d.name for d in conn.execute("SELECT * FROM users LIMIT 0").description]
        assert "first_name" in columns and "last_name" in columns
        names = conn.execute("SELECT first_name, last_name FROM users ORDER BY id").fetchall()
    assert names == [("Grace Brewster", "Hopper"), ("Ada", ""), ("Alan", "Turing")]
    assert schema(capsys, "complete", "0002_split_name", "--db", postgres_url)[0] == 0


def test_rollback_and_bad_input_change_nothing(postgres_url, capsys, tmp_path):
    assert schema(capsys, "start", str(MIGRATIONS / "0001_users.toml"), "--db",
                  postgres_url)[0] == 0
    assert schema(capsys, "complete", "0001_users", "--db", postgres_url)[0] == 0
    before = catalogue(postgres_url)
    bad = tmp_path / "bad.toml"
    bad.write_text((MIGRATIONS / "0002_split_name.toml").read_text().replace(
        'table = "users"', 'table = "userz"', 1), encoding="utf-8")
    code, _out, err = schema(capsys, "start", str(bad), "--db", postgres_url)
    assert code == 2 and "userz" in err and str(bad) in err and "Traceback" not in err
    assert catalogue(postgres_url) == before
    assert schema(capsys, "start", str(MIGRATIONS / "0002_split_name.toml"), "--db",
                  postgres_url)[0] == 0
    assert catalogue(postgres_url) != before
    assert schema(capsys, "rollback", "0002_split_name", "--db", postgres_url)[0] == 0
    assert catalogue(postgres_url) == before
