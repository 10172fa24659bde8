"""The SQLite backend: views per release, expand/contract, exact roll-back."""

from __future__ import annotations

import sqlite3

import pytest

from upgrader.errors import ConfigError, SchemaError
from upgrader.schema import connect
from upgrader.schema.loader import loads
from upgrader.schema.sqlite import SQLiteBackend

V1 = '''name = "m1"
release = "v1"
[[operations]]
op = "create_table"
table = "users"
columns = [
  { name = "id", type = "integer", primary_key = true },
  { name = "name", type = "text", nullable = false },
  { name = "score", type = "text" },
  { name = "email", type = "text" },
  { name = "legacy", type = "text", default = "'x'" },
]
[[operations]]
op = "add_index"
table = "users"
name = "users_score"
columns = ["score"]
'''

V2 = '''name = "m2"
release = "v2"
previous = "v1"
batch_size = 3
[[operations]]
op = "change_type"
table = "users"
column = "score"
type = "integer"
up = "CAST(score AS INTEGER)"
down = "CAST(score AS TEXT)"
[[operations]]
op = "rename_column"
table = "users"
column = "email"
to = "contact"
[[operations]]
op = "add_column"
table = "users"
column = { name = "shout", type = "text" }
up = "upper(name)"
[[operations]]
op = "drop_column"
table = "users"
column = "legacy"
down = "'from-v2'"
'''

V3 = '''name = "m3"
release = "v3"
[[operations]]
op = "add_column"
table = "users"
column = { name = "nick", type = "text", default = "'-'" }
'''


def dump(path) -> tuple:
    """Every schema object's SQL, sorted, and every user table's rows (not the history)."""
    conn = sqlite3.connect(path)
    try:
        objects = sorted((t, n, s or "") for t, n, s in conn.execute(
            "SELECT type, name, sql FROM sqlite_master"))
        tables = sorted(n for t, n, _ in objects if t == "table"
                        and n != "_upgrader_schema_migrations" and not n.startswith("sqlite_"))
        rows = {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
                for t in tables}
        return objects, rows
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "app.sqlite"
    backend = SQLiteBackend(path)
    backend.start(loads(V1))
    backend.complete("m1")
    with connect(path, "v1") as conn:
        conn.executemany("INSERT INTO users (name, score, email) VALUES (?, ?, ?)",
                         [(f"user {i}", str(i), f"{i}@example.com") for i in range(1, 11)])
    yield path, backend
    backend.close()


def test_both_releases_read_and_write_their_own_shape(db):
    path, backend = db
    backend.start(loads(V2))
    old, new = connect(path, "v1"), connect(path, "v2")
    try:
        assert [d[0] for d in new.execute("SELECT * FROM users").description] == \
            ["id", "name", "score", "contact", "shout"]
        assert new.execute("SELECT score, shout FROM users WHERE id = 3").fetchone() == \
            (3, "USER 3")
        with old:
            old.execute("INSERT INTO users (id, name, score, email) VALUES (100, 'a b', '7', "
                        "'o@x')")
            old.execute("UPDATE users SET score = '42' WHERE id = 1")
        with new:
            new.execute("INSERT INTO users (id, name, score, contact, shout) VALUES "
                        "(101, 'c', 8, 'n@x', 'C!')")
            new.execute("UPDATE users SET score = 99, contact = 'moved@x' WHERE id = 2")
            new.execute("DELETE FROM users WHERE id = 10")
        assert new.execute("SELECT score, contact, shout FROM users WHERE id IN (1, 2, 100, "
                           "101) ORDER BY id").fetchall() == \
            [(42, "1@example.com", "USER 1"), (99, "moved@x", "USER 2"), (7, "o@x", "A B"),
             (8, "n@x", "C!")]
        assert old.execute("SELECT score, email, legacy FROM users WHERE id IN (2, 101) "
                           "ORDER BY id").fetchall() == [("99", "moved@x", "x"),
                                                        ("8", "n@x", "from-v2")]
        assert old.execute("SELECT count(*) FROM users").fetchone() == (11,)
        backend.complete("m2")
        # the new release's connection rebuilds its views after complete, transparently
        assert new.execute("SELECT score, contact FROM users WHERE id = 100").fetchone() == \
            (7, "o@x")
        with pytest.raises(SchemaError, match="'v1' is not live"):
            old.execute("SELECT * FROM users")
    finally:
        old.close()
        new.close()
    raw = sqlite3.connect(path)
    sql = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'users'").fetchone()[0]
    assert "_upg_new" not in sql and '"contact" text' in sql and '"score" integer' in sql
    assert "legacy" not in sql
    # the index on the old score column follows the new one
    assert raw.execute("SELECT sql FROM sqlite_master WHERE name = 'users_score'").fetchone()
    assert backend.status().active is None
    assert [r.release for r in backend.status().live] == ["v2"]


def test_rollback_leaves_the_database_exactly_as_before(db):
    path, backend = db
    before = dump(path)
    backend.start(loads(V2))
    with connect(path, "v2") as new:
        new.execute("UPDATE users SET shout = 'x' WHERE id = 1")
    assert dump(path) != before
    backend.rollback("m2")
    after = dump(path)
    assert after == before
    assert backend.status().history[-1] == ("m2", "v2", "rolled_back")


def test_more_than_two_releases_live_and_connectable(db):
    path, backend = db
    adds = V3.replace('name = "m3"', 'name = "m2b"').replace('"v3"', '"v2"')
    backend.start(loads(adds))
    backend.complete("m2b")                       # additive: v1's views still read right
    backend.start(loads(V3.replace('"nick"', '"alias"')))
    status = backend.status()
    assert [r.release for r in status.live] == ["v1", "v2", "v3"]
    assert status.active == "m3"
    for release, columns in (("v1", 5), ("v2", 6), ("v3", 7)):
        with connect(path, release) as conn:
            assert len(conn.execute("SELECT * FROM users").fetchone()) == columns
            conn.execute("INSERT INTO users (name) VALUES (?)", (release,))
    with connect(path, "v3") as conn:
        assert conn.execute("SELECT nick, alias FROM users WHERE name = 'v1'").fetchone() == \
            ("-", "-")


def test_a_second_start_is_refused_naming_the_active_one(db):
    path, backend = db
    backend.start(loads(V2))
    before = dump(path)
    with pytest.raises(SchemaError, match="migration 'm2' is active") as info:
        backend.start(loads(V3))
    assert info.value.migration == "m2"
    assert dump(path) == before


def test_unknown_column_is_a_config_error_and_changes_nothing(db, tmp_path):
    path, backend = db
    file = tmp_path / "bad.toml"
    file.write_text(V2.replace('column = "legacy"', 'column = "legasy"'))
    before = dump(path)
    from upgrader.schema.loader import load_migration

    with pytest.raises(ConfigError) as info:
        backend.start(load_migration(file))
    assert info.value.key == "operations[3].column" and info.value.line == 25
    assert "did you mean 'legacy'" in info.value.message
    assert dump(path) == before and backend.status().active is None


def test_an_expression_that_does_not_compile_changes_nothing(db):
    path, backend = db
    before = dump(path)
    with pytest.raises(SchemaError, match="do not compile"):
        backend.start(loads(V2.replace("upper(name)", "upper(nmae)")))
    assert dump(path) == before


def test_plan_runs_nothing(db):
    path, backend = db
    before = dump(path)
    statements = backend.plan(loads(V2))
    assert 'ALTER TABLE "users" ADD COLUMN "_upg_new_score" integer' in statements
    assert any("backfill in batches of 3" in s for s in statements)
    assert 'ALTER TABLE "users" DROP COLUMN "legacy"' in backend.plan(loads(V2), "complete")
    assert dump(path) == before


def test_set_not_null_is_enforced_after_backfill(db):
    path, backend = db
    with connect(path, "v1") as conn:
        conn.execute("UPDATE users SET email = NULL WHERE id = 4")
    backend.start(loads('name = "nn"\nrelease = "v2"\n[[operations]]\nop = "set_not_null"\n'
                        'table = "users"\ncolumn = "email"\n'
                        "up = \"coalesce(email, 'unknown')\"\n"))
    with connect(path, "v1") as old:
        old.execute("INSERT INTO users (id, name) VALUES (50, 'n')")
    backend.complete("nn")
    with connect(path, "v2") as new:
        assert new.execute("SELECT email FROM users WHERE id IN (4, 50)").fetchall() == \
            [("unknown",), ("unknown",)]
        with pytest.raises(sqlite3.IntegrityError, match="NOT NULL constraint failed"):
            new.execute("INSERT INTO users (name) VALUES ('z')")


def test_add_column_with_default_and_up_backfills_the_rows_from_before(tmp_path):
    """Rows from before start read the column's default until the backfill reaches them; the
    backfill gives them ``up``, while rows the new release writes keep the default."""
    from upgrader.schema import connect, open_backend
    from upgrader.schema.loader import loads

    db = str(tmp_path / "d.sqlite")
    base = loads('name = "b"\nrelease = "1"\n[[operations]]\nop = "create_table"\n'
                 'table = "t"\ncolumns = [{name = "id", type = "integer", primary_key = true},'
                 ' {name = "who", type = "text"}]\n', source="b.toml")
    change = loads('name = "c"\nrelease = "2"\nprevious = "1"\n[[operations]]\n'
                   'op = "add_column"\ntable = "t"\n'
                   'column = {name = "origin", type = "text", default = "\'app\'"}\n'
                   'up = "who || \'@old\'"\n', source="c.toml")
    with open_backend(db) as backend:
        backend.start(base)
        backend.complete("b")
    with connect(db, "1") as conn:
        conn.execute("INSERT INTO t (who) VALUES ('before')")
    with open_backend(db) as backend:
        backend.start(change)
    with connect(db, "1") as old:
        old.execute("INSERT INTO t (who) VALUES ('old')")
    with connect(db, "2") as new:
        new.execute("INSERT INTO t (who) VALUES ('new')")
    with open_backend(db) as backend:
        backend.complete("c")
    with connect(db, "2") as conn:
        rows = dict(conn.execute("SELECT who, origin FROM t"))
    assert rows == {"before": "before@old", "old": "old@old", "new": "app"}
