"""A flag's ``schema`` is enforced (issue 15): turning a flag on where the schema version its
code needs is not live is refused with exit 3 and a message naming the flag, the version it
needs and what is live; nothing changes. With a real flag store and a real schema database,
both on SQLite and both on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrader.errors import FlagSchemaRefused
from upgrader.flags.cli import run
from upgrader.flags.schemaguard import SchemaGuard, read_live_schema
from upgrader.flags.store import open_store
from upgrader.schema import load_migration, open_backend

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "sample_fleets" / "migrations"

FLAGS = """
environments = ["staging", "production"]

[flags.split-name]
description = "shows first and last name apart"
schema = "0002"

[flags.by-release]
schema = "1.1.0"

[flags.plain]
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def databases(request, tmp_path):
    """(flag store spec, schema database) of one kind: two SQLite files, or two PostgreSQL
    databases on the session's server."""
    if request.param == "sqlite":
        yield str(tmp_path / "flags.sqlite"), str(tmp_path / "app.sqlite")
        return
    store = request.getfixturevalue("postgres_url")
    make = request.getfixturevalue("postgres_server")
    import uuid

    import psycopg

    name = "s_" + uuid.uuid4().hex[:12]
    with psycopg.connect(make, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield store, make.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(make, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start(database: str, *names: str) -> None:
    with open_backend(database) as backend:
        for name in names:
            backend.start(load_migration(MIGRATIONS / f"{name}.toml"))


def snapshot(store_spec: str) -> tuple[int, list]:
    with open_store(store_spec) as store:
        return store.version(), [(e.flag, e.action, e.new) for e in store.history(limit=100)]


def test_a_flag_whose_schema_is_not_live_is_refused_and_nothing_changes(databases, tmp_path,
                                                                         capsys):
    store, database = databases
    flags = tmp_path / "flags.toml"
    flags.write_text(FLAGS, encoding="utf-8")
    assert run(["import", str(flags), "--store", store]) == 0
    start(database, "0001_users")
    with open_backend(database) as backend:
        backend.complete("0001_users")
    capsys.readouterr()
    before = snapshot(store)

    code = run(["enable", "split-name", "--store", store, "--schema-db", database])
    err = capsys.readouterr().err
    assert code == 3
    assert "split-name" in err and "needs schema 0002" in err
    assert "release 1.0.0" in err and "migration 0001_users" in err     # what is live
    assert snapshot(store) == before                                    # nothing changed
    # a roll-out on a flag that is off does not turn it on: allowed; a flag without a schema
    # and a flag that another environment turns on are no business of this database
    assert run(["enable", "plain", "--store", store, "--schema-db", database]) == 0
    assert run(["enable", "by-release", "--store", store, "--schema-db", database]) == 3
    # the same refusal through an import that would turn it on
    flags.write_text(FLAGS.replace('schema = "0002"\n', 'schema = "0002"\n'
                                   "[flags.split-name.environments.production]\n"
                                   "enabled = true\n"), encoding="utf-8")
    before = snapshot(store)
    assert run(["import", str(flags), "--store", store, "--schema-db", database]) == 3
    assert snapshot(store) == before

    start(database, "0002_split_name")            # release 1.1.0, migration 0002_split_name
    capsys.readouterr()
    assert run(["enable", "split-name", "--store", store, "--schema-db", database]) == 0
    assert run(["enable", "by-release", "--store", store, "--schema-db", database]) == 0
    assert "split-name: on in production" in capsys.readouterr().out


def test_the_guard_reads_what_is_live(databases):
    store_spec, database = databases
    assert read_live_schema(database).versions() == set()       # nothing started yet
    start(database, "0001_users", )
    with open_backend(database) as backend:
        backend.complete("0001_users")
    start(database, "0002_split_name")
    live = read_live_schema(database)
    assert {"1.0.0", "1.1.0", "0001_users", "0001", "0002_split_name", "0002"} <= live.versions()
    with open_backend(database) as backend:
        backend.rollback("0002_split_name")
    live = read_live_schema(database)
    assert "0002" not in live.versions() and "1.1.0" not in live.versions()
    with open_store(store_spec) as store:
        from upgrader.flags.loader import loads

        store.replace(loads(FLAGS, source="flags.toml"))
        store.guard = SchemaGuard(database, "production")
        with pytest.raises(FlagSchemaRefused) as refused:
            store.set_enabled("split-name", "production", True)
        assert refused.value.flag == "split-name" and refused.value.needs == "0002"
        # another environment is not this database's business
        store.set_enabled("split-name", "staging", True)


def _prepared(store: str, database: str, tmp_path: Path) -> None:
    """0001 complete, 0002_split_name started, every flag on in production (the guard
    allows it: the schema is live) and split-name on in staging."""
    flags = tmp_path / "flags.toml"
    flags.write_text(FLAGS, encoding="utf-8")
    assert run(["import", str(flags), "--store", store]) == 0
    start(database, "0001_users")
    with open_backend(database) as backend:
        backend.complete("0001_users")
    start(database, "0002_split_name")
    for key in ("split-name", "by-release", "plain"):
        assert run(["enable", key, "--store", store, "--schema-db", database]) == 0
    assert run(["enable", "split-name", "--env", "staging", "--store", store]) == 0


def _on(store_spec: str, key: str, env: str = "production") -> bool:
    with open_store(store_spec) as store:
        return store.load().flags[key].env(env).enabled


def _migration(database: str, name: str) -> str:
    with open_backend(database) as backend:
        return [s for n, _r, s in backend.status().history if n == name][-1]


def test_schema_rollback_turns_off_the_flags_that_need_it_first(databases, tmp_path,
                                                                 capsys):
    """``upgrader schema rollback`` turns off, audited, every flag on in the environment
    whose ``schema`` needs the migration (by number or by the release it creates), then rolls
    the schema back; a flag that needs nothing, or another environment, is left alone."""
    from upgrader.schema.cli import run as schema

    store, database = databases
    _prepared(store, database, tmp_path)
    capsys.readouterr()
    assert schema(["rollback", "0002_split_name", "--db", database,
                   "--flags-store", store, "--env", "production"]) == 0
    out = capsys.readouterr().out
    assert "turned off split-name in production first: it needs schema 0002" in out
    assert "turned off by-release in production first: it needs schema 1.1.0" in out
    assert out.rstrip().endswith("rolled back 0002_split_name")
    assert not _on(store, "split-name") and not _on(store, "by-release")
    assert _on(store, "plain") and _on(store, "split-name", "staging")
    assert _migration(database, "0002_split_name") == "rolled_back"
    with open_store(store) as flags:
        last = flags.history("split-name", 1)[0]
        assert (last.action, last.environment, last.old, last.new) == (
            "disable", "production", True, False)
        assert "schema 0002_split_name rolls back" in last.reason
        # and with the schema gone it cannot be turned on again
        flags.guard = SchemaGuard(database, "production")
        with pytest.raises(FlagSchemaRefused):
            flags.set_enabled("split-name", "production", True)


def test_schema_rollback_refused_or_failing_changes_no_flag_and_no_schema(databases,
                                                                           tmp_path, capsys):
    """Flags go off only when the schema can go: a migration that is not active is refused
    with every flag as it was; a flag store that cannot be reached leaves the schema
    started (exit 1); an unknown environment is bad input (exit 2, nothing changed)."""
    from upgrader.schema.cli import run as schema

    store, database = databases
    _prepared(store, database, tmp_path)
    before = snapshot(store)
    assert schema(["rollback", "0001_users", "--db", database, "--flags-store", store]) == 1
    assert snapshot(store) == before and _migration(database, "0002_split_name") == "started"
    capsys.readouterr()
    assert schema(["rollback", "0002_split_name", "--db", database, "--flags-store", store,
                   "--env", "prod"]) == 2
    err = capsys.readouterr().err
    assert "--env" in err and "'prod'" in err
    assert snapshot(store) == before and _migration(database, "0002_split_name") == "started"
    unreachable = "postgresql://upgrader@127.0.0.1:1/nothing"      # nothing listens there
    assert schema(["rollback", "0002_split_name", "--db", database,
                   "--flags-store", unreachable]) == 1
    assert _migration(database, "0002_split_name") == "started"
    assert snapshot(store) == before
