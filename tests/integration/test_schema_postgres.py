"""Live schema changes on a real PostgreSQL server (upgrader.schema.postgres): views per
release chosen with search_path, every operation, exact rollback, bad input, one active
migration, a backfill that resumes after its process is killed, three live releases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from upgrader.errors import ConfigError, SchemaError
from upgrader.schema.model import (
    AddColumn,
    AddIndex,
    ChangeType,
    Column,
    CreateTable,
    DropColumn,
    Migration,
    RawSQL,
    RenameColumn,
    RenameTable,
    SetNotNull,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def backend(url):
    from upgrader.schema.postgres import PostgresBackend

    return PostgresBackend(url)


def connect(url, search_path=None):
    import psycopg

    conn = psycopg.connect(url, autocommit=True)
    if search_path:
        conn.execute("SELECT set_config('search_path', %s, false)", (search_path,))
    return conn


def rows(conn, query, params=None):
    return conn.execute(query, params).fetchall()


def pg_dump(url, *, exclude_state=True) -> str:
    from tests.conftest import _pg_bindir

    argv = [os.path.join(_pg_bindir(), "pg_dump"), "--schema-only", "--no-owner", url]
    if exclude_state:
        argv.insert(2, "--exclude-schema=upgrader_schema")
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout
    # comments and pg_dump's per-run random \restrict key are not part of the schema
    return "\n".join(line for line in out.splitlines()
                     if not line.startswith(("--", "\\restrict", "\\unrestrict")))


CATALOGUE = """
-- (not relnatts: a dropped column keeps an invisible attisdropped slot, as after any
-- ALTER TABLE ... DROP COLUMN, until the table is rewritten)
SELECT 'class', n.nspname, c.relname, c.relkind::text, c.relpersistence::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'upgrader_schema')
UNION ALL
SELECT 'attribute', c.relname, a.attname,
       format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull,
       coalesce(pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
 WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', conrelid::regclass::text, conname, pg_get_constraintdef(oid),
       convalidated::text
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'trigger', tgrelid::regclass::text, tgname, '', ''
  FROM pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'index', indrelid::regclass::text, indexrelid::regclass::text,
       pg_get_indexdef(indexrelid), indisvalid::text
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
 WHERE c.relnamespace = 'public'::regnamespace
UNION ALL
SELECT 'namespace', nspname, '', '', '' FROM pg_namespace
 WHERE nspname NOT LIKE 'pg_%' AND nspname <> 'information_schema'
   AND nspname <> 'upgrader_schema'
UNION ALL
SELECT 'function', n.nspname, p.proname, '', '' FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2, 3, 4, 5
"""


def snapshot(url, *, exclude_state=True):
    """Schema dump + catalogue + every table's rows: what 'exactly as before' compares."""
    with connect(url) as conn:
        catalogue = rows(conn, CATALOGUE)
        if not exclude_state:
            catalogue += rows(conn, "SELECT nspname FROM pg_namespace ORDER BY 1")
        contents = {}
        for (table,) in rows(conn, "SELECT quote_ident(relname) FROM pg_class WHERE "
                                   "relnamespace = 'public'::regnamespace AND relkind = 'r' "
                                   "ORDER BY 1"):
            contents[table] = rows(conn, f"SELECT * FROM public.{table} ORDER BY 1")
    return pg_dump(url, exclude_state=exclude_state), catalogue, contents


def seed(url, count=200):
    with connect(url) as conn:
        conn.execute("""
            CREATE TABLE users (id bigserial PRIMARY KEY, name text NOT NULL, email text,
                                age text, legacy text NOT NULL DEFAULT 'x', score integer);
            CREATE TABLE orders (id serial PRIMARY KEY, user_id bigint REFERENCES users(id),
                                 total integer NOT NULL);
            CREATE INDEX users_name ON users (name);""")
        conn.execute("""
            INSERT INTO users (name, email, age, score)
            SELECT 'user ' || g, CASE WHEN g %% 3 = 0 THEN NULL ELSE 'u' || g || '@x' END,
                   (g %% 90)::text, g FROM generate_series(1, %s) g""", (count,))
        conn.execute("INSERT INTO orders (user_id, total) SELECT id, id * 10 FROM users")


def migration(name, release, previous, *ops, batch_size=50, lines=None):
    return Migration(name=name, release=release, previous=previous, operations=tuple(ops),
                     batch_size=batch_size, source=Path(f"migrations/{name}.toml"),
                     lines=tuple(lines or (10 * (i + 1) for i in range(len(ops)))))


def every_operation(name="m2", release="v2", previous="v1"):
    return migration(
        name, release, previous,
        ChangeType("users", "age", "integer", up="nullif(age, '')::integer",
                   down="age::text"),
        RenameColumn("users", "name", "full_name"),
        AddColumn("users", Column("name_upper", "text", nullable=False),
                  up="upper(name)"),
        DropColumn("users", "legacy", down="'from v2'"),
        SetNotNull("users", "email", up="'unknown@example.com'"),
        AddIndex("users", "users_age", ("age",)),
        CreateTable("audit", (Column("id", "bigserial", primary_key=True),
                              Column("user_id", "bigint", references="users(id)"),
                              Column("what", "text", nullable=False, default="'?'"))),
        AddIndex("audit", "audit_user", ("user_id",)),
        RenameTable("orders", "purchases"),
        RawSQL(up="CREATE TABLE notes (id int PRIMARY KEY, body text)",
               down="DROP TABLE notes"),
    )


# --------------------------------------------------------------------------------------------


def test_every_operation_two_releases_then_complete(postgres_url):
    seed(postgres_url)
    m = every_operation()
    with backend(postgres_url) as db:
        db.start(m)
        status = db.status()
        assert status.active == "m2"
        assert [(r.release, r.connection) for r in status.live] == [
            ("v1", "search_path=upg_v1"), ("v2", "search_path=upg_v2")]
        assert status.backfill == {"users": (200, 200)}

    with connect(postgres_url, "upg_v1") as v1, connect(postgres_url, "upg_v2") as v2:
        # v1 sees the tables as they were
        assert [c.name for c in v1.execute("SELECT * FROM users LIMIT 0").description] == [
            "id", "name", "email", "age", "legacy", "score"]
        assert rows(v1, "SELECT name, age, email FROM users WHERE id = 3") == [
            ("user 3", "3", None)]
        assert rows(v1, "SELECT count(*) FROM orders") == [(200,)]
        # v2 sees the new shape, backfilled
        assert [c.name for c in v2.execute("SELECT * FROM users LIMIT 0").description] == [
            "id", "full_name", "email", "age", "score", "name_upper"]
        assert rows(v2, "SELECT full_name, age, email, name_upper FROM users WHERE id = 3") \
            == [("user 3", 3, "unknown@example.com", "USER 3")]
        assert rows(v2, "SELECT count(*) FROM purchases") == [(200,)]
        assert rows(v2, "SELECT count(*) FROM notes") == [(0,)]
        # a v1 write is seen by v2 (up), a v2 write by v1 (down)
        v1.execute("INSERT INTO users (id, name, age) VALUES (1000, 'old', '41')")
        assert rows(v2, "SELECT full_name, age, email, name_upper FROM users WHERE id = 1000") \
            == [("old", 41, "unknown@example.com", "OLD")]
        v2.execute("INSERT INTO users (id, full_name, age, email, name_upper) "
                   "VALUES (1001, 'new', 7, 'n@x', 'NEW!')")
        assert rows(v1, "SELECT name, age, email, legacy FROM users WHERE id = 1001") == [
            ("new", "7", "n@x", "from v2")]
        v2.execute("UPDATE users SET age = 8 WHERE id = 1001")
        assert rows(v1, "SELECT age FROM users WHERE id = 1001") == [("8",)]
        v1.execute("UPDATE users SET name = 'older', email = NULL WHERE id = 1000")
        assert rows(v2, "SELECT full_name, name_upper, email FROM users WHERE id = 1000") == [
            ("older", "OLDER", "unknown@example.com")]
        v2.execute("INSERT INTO audit (user_id) VALUES (1000)")
        v2.execute("INSERT INTO purchases (user_id, total) VALUES (1001, 5)")
        assert rows(v1, "SELECT count(*) FROM orders WHERE user_id = 1001") == [(1,)]
        with pytest.raises(Exception, match="audit"):
            v1.execute("SELECT * FROM audit")

    with backend(postgres_url) as db:
        db.complete("m2")
        status = db.status()
    assert status.active is None
    assert [r.release for r in status.live] == ["v2"]      # v1's columns are gone
    assert status.history == (("m2", "v2", "complete"),)
    with connect(postgres_url) as conn:
        columns = rows(conn, """SELECT attname, format_type(atttypid, atttypmod), attnotnull
                                  FROM pg_attribute WHERE attrelid = 'public.users'::regclass
                                   AND attnum > 0 AND NOT attisdropped ORDER BY attnum""")
        assert columns == [("id", "bigint", True), ("full_name", "text", True),
                           ("score", "integer", False), ("age", "integer", False),
                           ("name_upper", "text", True), ("email", "text", True)]
        assert rows(conn, "SELECT to_regclass('public.purchases') IS NOT NULL, "
                          "to_regclass('public.orders') IS NULL") == [(True, True)]
        assert rows(conn, "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON "
                          "c.oid = t.tgrelid WHERE NOT tgisinternal") == [(0,)]
        assert rows(conn, "SELECT count(*) FROM pg_constraint WHERE conname LIKE '\\_upg%'") \
            == [(0,)]
        assert rows(conn, "SELECT indexdef FROM pg_indexes WHERE indexname = 'users_age'") \
            == [("CREATE INDEX users_age ON public.users USING btree (age)",)]
    with connect(postgres_url, "upg_v2") as v2:
        assert rows(v2, "SELECT full_name, age, email FROM users WHERE id = 1001") == [
            ("new", 8, "n@x")]
        v2.execute("INSERT INTO users (full_name, age, email, name_upper) "
                   "VALUES ('after', 1, 'a@x', 'A')")


def test_status_url_selects_the_release(postgres_url):
    import psycopg

    seed(postgres_url, 5)
    with backend(postgres_url) as db:
        db.start(migration("m2", "v2", "v1", RenameColumn("users", "name", "full_name")))
        live = {r.release: r for r in db.status().live}
    assert "options=-csearch_path%3Dupg_v2" in live["v2"].url
    with psycopg.connect(live["v2"].url) as conn:
        assert rows(conn, "SELECT full_name FROM users WHERE id = 1") == [("user 1",)]
    with psycopg.connect(live["v1"].url) as conn:
        assert rows(conn, "SELECT name FROM users WHERE id = 1") == [("user 1",)]


def test_rollback_after_start_leaves_the_database_exactly_as_before(postgres_url):
    seed(postgres_url)
    before = snapshot(postgres_url)
    with backend(postgres_url) as db:
        db.start(every_operation())
        assert snapshot(postgres_url) != before
        db.rollback("m2")
        status = db.status()
    after = snapshot(postgres_url)
    assert after[0] == before[0]          # pg_dump --schema-only
    assert after[1] == before[1]          # catalogue: classes, columns, constraints, ...
    assert after[2] == before[2]          # every row
    assert status.active is None and status.live == ()
    assert status.history == (("m2", "v2", "rolled_back"),)


def test_rollback_mid_backfill_and_start_again(postgres_url):
    seed(postgres_url, 500)
    before = snapshot(postgres_url)
    m = every_operation()
    with backend(postgres_url) as db:
        db.start(m, backfill=False)
        assert db.backfill("m2", max_batches=3).rows == 150
        assert db.status().backfill == {"users": (150, 500)}
        db.rollback("m2")
        assert snapshot(postgres_url) == before
        db.start(m)                    # the same migration again, after its rollback
        assert db.status().backfill == {"users": (500, 500)}
        db.complete("m2")


BAD = {
    "unknown table": (AddColumn("nope", Column("x", "text")), "unknown table 'nope'",
                      "operations[1].table"),
    "unknown column": (RenameColumn("users", "nope", "x"), "unknown column 'nope'",
                       "operations[1].column"),
    "type change without up": (ChangeType("users", "age", "integer", up="", down="age::text"),
                               "needs `up`", "operations[1].up"),
    "expression over an unknown column": (
        ChangeType("users", "age", "integer", up="agee::integer", down="age::text"),
        "agee", "operations[1].up"),
    "expression of the wrong type": (
        ChangeType("users", "age", "integer", up="age::integer", down="age + interval '1d'"),
        "operator", "operations[1].down"),
    "bad type": (AddColumn("users", Column("x", "no_such_type")), "no_such_type",
                 "operations[1]"),
    "raw sql error": (RawSQL(up="ALTER TABLE nope ADD x int", down="SELECT 1"), "nope",
                      "operations[1]"),
    "not null without default or up": (AddColumn("users", Column("x", "text", nullable=False)),
                                       "needs a default", "operations[1].column.nullable"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_config_error_and_changes_nothing(postgres_url, case):
    seed(postgres_url, 20)
    with backend(postgres_url) as db:     # a first, good migration: state exists
        db.start(migration("m1", "v1", None, AddColumn("users", Column("note", "text"))))
        db.complete("m1")
    before = snapshot(postgres_url, exclude_state=False)
    with connect(postgres_url) as conn:
        state_before = rows(conn, "SELECT name, state FROM upgrader_schema.migrations")
    op, message, key = BAD[case]
    bad = migration("m2", "v2", "v1", RenameColumn("users", "score", "points"), op,
                    lines=(4, 9))
    with backend(postgres_url) as db, pytest.raises(ConfigError) as caught:
        db.start(bad)
    error = caught.value
    assert message in str(error)
    assert error.file == str(Path("migrations/m2.toml"))
    assert error.line == 9
    assert error.key == key
    assert str(error).startswith("migrations/m2.toml:9: " + key)
    assert snapshot(postgres_url, exclude_state=False) == before
    with connect(postgres_url) as conn:
        assert rows(conn, "SELECT name, state FROM upgrader_schema.migrations") == state_before


def test_bad_input_on_a_fresh_database_leaves_no_trace(postgres_url):
    seed(postgres_url, 20)
    before = snapshot(postgres_url, exclude_state=False)
    with backend(postgres_url) as db, pytest.raises(ConfigError, match="unknown table"):
        db.start(migration("m1", "v2", "v1", RenameColumn("users", "name", "n"),
                           DropColumn("ghost", "x")))
    assert snapshot(postgres_url, exclude_state=False) == before


def test_wrong_previous_release_is_refused(postgres_url):
    seed(postgres_url, 5)
    with backend(postgres_url) as db:
        db.start(migration("m1", "v2", "v1", RenameColumn("users", "name", "n")))
        db.complete("m1")
        with pytest.raises(ConfigError, match="newest live release is 'v2'") as caught:
            db.start(migration("m2", "v3", "v1", RenameColumn("users", "n", "name")))
        assert caught.value.key == "previous"


def test_second_start_is_refused_with_the_active_name(postgres_url):
    seed(postgres_url, 5)
    with backend(postgres_url) as db:
        db.start(migration("add-note", "v2", "v1", AddColumn("users", Column("note", "text"))))
        before = snapshot(postgres_url, exclude_state=False)
        with pytest.raises(SchemaError, match="'add-note' is active") as caught:
            db.start(migration("other", "v3", "v2", AddColumn("users", Column("n2", "text"))))
        assert caught.value.migration == "add-note"
        assert snapshot(postgres_url, exclude_state=False) == before
        # from another connection (another controller) too
        with backend(postgres_url) as other, pytest.raises(SchemaError, match="add-note"):
            other.start(migration("other", "v3", "v2", AddColumn("users", Column("n", "text"))))


def test_plan_shows_the_sql_and_runs_nothing(postgres_url):
    seed(postgres_url, 5)
    before = snapshot(postgres_url, exclude_state=False)
    with backend(postgres_url) as db:
        statements = db.plan(every_operation())
    text = "\n".join(statements)
    assert 'ALTER TABLE "public"."users" ADD COLUMN "_upg_new_age" integer' in text
    assert 'CREATE VIEW "upg_v2"."users" AS SELECT "id" AS "id", "name" AS "full_name"' in text
    assert 'CREATE INDEX CONCURRENTLY "users_age"' in text
    assert "LIMIT 50 FOR NO KEY UPDATE" in text
    assert snapshot(postgres_url, exclude_state=False) == before
    with backend(postgres_url) as db:
        db.start(every_operation())
        complete = db.plan(every_operation(), "complete")
        rollback = db.plan(every_operation(), "rollback")
    assert 'DROP SCHEMA "upg_v1" CASCADE' in complete
    assert 'ALTER TABLE "public"."users" RENAME COLUMN "_upg_new_age" TO "age"' in complete
    assert 'DROP SCHEMA IF EXISTS "upg_v2" CASCADE' in rollback


def test_three_releases_live_and_complete_keeps_views_it_does_not_break(postgres_url):
    seed(postgres_url, 30)
    with backend(postgres_url) as db:
        db.start(migration("m2", "v2", "v1", AddColumn("users", Column("nickname", "text"))))
        db.complete("m2")
        db.start(migration("m3", "v3", "v2", RenameColumn("users", "name", "full_name"),
                           CreateTable("tags", (Column("id", "int", primary_key=True),))))
        db.complete("m3")
        live = [r.release for r in db.status().live]
        assert live == ["v1", "v2", "v3"]
        with connect(postgres_url, "upg_v1") as v1, connect(postgres_url, "upg_v2") as v2, \
                connect(postgres_url, "upg_v3") as v3:
            v1.execute("INSERT INTO users (id, name) VALUES (901, 'one')")
            v2.execute("INSERT INTO users (id, name, nickname) VALUES (902, 'two', 'II')")
            v3.execute("INSERT INTO users (id, full_name, nickname) VALUES (903, 'three', '3')")
            v3.execute("INSERT INTO tags VALUES (1)")
            assert rows(v1, "SELECT name FROM users WHERE id > 900 ORDER BY id") == [
                ("one",), ("two",), ("three",)]
            assert rows(v2, "SELECT name, nickname FROM users WHERE id > 900 ORDER BY id") == [
                ("one", None), ("two", "II"), ("three", "3")]
        # m4 drops nickname: v2 and v3 read it, v1 never did
        db.start(migration("m4", "v4", "v3", DropColumn("users", "nickname")))
        assert [r.release for r in db.status().live] == ["v1", "v2", "v3", "v4"]
        with connect(postgres_url, "upg_v2") as v2, connect(postgres_url, "upg_v4") as v4:
            v4.execute("INSERT INTO users (id, full_name) VALUES (904, 'four')")
            v2.execute("UPDATE users SET nickname = 'two!' WHERE id = 902")
        db.complete("m4")
        status = db.status()
    assert [r.release for r in status.live] == ["v1", "v4"]
    assert [name for name, _, _ in status.history] == ["m2", "m3", "m4"]
    with connect(postgres_url, "upg_v1") as v1:
        assert rows(v1, "SELECT id, name FROM users WHERE id > 900 ORDER BY id") == [
            (901, "one"), (902, "two"), (903, "three"), (904, "four")]
        v1.execute("INSERT INTO users (id, name) VALUES (905, 'five')")
    with connect(postgres_url, "upg_v4") as v4:
        assert rows(v4, "SELECT full_name FROM users WHERE id = 905") == [("five",)]


KILLABLE = textwrap.dedent("""
    import json, sys
    from upgrader.schema.postgres import PostgresBackend, migration_from_json
    with PostgresBackend(sys.argv[1]) as db:
        db.start(migration_from_json(json.loads(sys.argv[2])))
    print("finished")
""")


def test_backfill_resumes_after_the_process_is_killed(postgres_url):
    from upgrader.schema.postgres import migration_to_json

    count = 100_000
    with connect(postgres_url) as conn:
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, amount integer NOT NULL, "
                     "label text)")
        conn.execute("INSERT INTO events SELECT g, g %% 1000, 'e' || g "
                     "FROM generate_series(1, %s) g", (count,))
    m = migration("big", "v2", "v1",
                  ChangeType("events", "amount", "bigint", up="amount::bigint * 100",
                             down="(amount / 100)::integer"),
                  batch_size=500)
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, postgres_url,
                                json.dumps(migration_to_json(m))], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        done = 0
        with connect(postgres_url) as conn:
            while time.monotonic() < deadline and done < 10_000:
                assert process.poll() is None, process.communicate()
                if rows(conn, "SELECT to_regclass('upgrader_schema.backfill')")[0][0]:
                    found = rows(conn, "SELECT rows_done FROM upgrader_schema.backfill")
                    done = found[0][0] if found else 0
                time.sleep(0.01)
        assert done >= 10_000, "the backfill did not get going"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with connect(postgres_url) as conn:
        # the killed session's batch rolled back with it; its saved cursor is exact
        deadline = time.monotonic() + 30
        while rows(conn, "SELECT count(*) FROM pg_stat_activity WHERE "
                         "application_name = 'upgrader-schema' AND pid <> pg_backend_pid()"
                   )[0][0] and time.monotonic() < deadline:
            time.sleep(0.01)
        (saved,) = rows(conn, "SELECT rows_done FROM upgrader_schema.backfill")[0]
        pending = rows(conn, "SELECT count(*) FROM events WHERE _upg_needs_backfill")[0][0]
    assert 0 < saved < count and pending == count - saved
    with backend(postgres_url) as db:
        assert db.status().active == "big"
        result = db.start(m)            # the same migration again: resumes the backfill
        assert result.done and result.rows == count - saved
        assert db.status().backfill == {"events": (count, count)}
        db.complete("big")
    with connect(postgres_url) as conn:
        assert rows(conn, "SELECT count(*), sum(amount), "
                          "count(*) FILTER (WHERE amount <> (id % 1000) * 100) FROM events") \
            == [(count, sum((i % 1000) * 100 for i in range(1, count + 1)), 0)]
        assert rows(conn, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                          "attrelid = 'events'::regclass AND attname = 'amount'") == [
            ("bigint",)]


def test_ddl_waits_for_locks_with_lock_timeout_and_retries(postgres_url):
    seed(postgres_url, 5)
    with connect(postgres_url) as blocker:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE users IN ACCESS SHARE MODE")
        from upgrader.schema.postgres import PostgresBackend

        with PostgresBackend(postgres_url, lock_timeout=0.05, lock_attempts=3) as db:
            started = time.monotonic()
            with pytest.raises(SchemaError, match="lock was not granted"):
                db.start(migration("m2", "v2", "v1", ChangeType(
                    "users", "score", "bigint", up="score", down="score::integer")))
            assert time.monotonic() - started < 10
            assert db.status().active is None
        blocker.execute("ROLLBACK")
    with backend(postgres_url) as db:
        db.start(migration("m2", "v2", "v1", ChangeType(
            "users", "score", "bigint", up="score", down="score::integer")))
        assert db.status().active == "m2"


def test_unique_index_that_cannot_be_built_rolls_the_migration_back(postgres_url):
    seed(postgres_url, 20)
    with connect(postgres_url) as conn:
        conn.execute("UPDATE users SET score = 1")
    before = snapshot(postgres_url)
    m = migration("m2", "v2", "v1", AddColumn("users", Column("note", "text")),
                  AddIndex("users", "users_score", ("score",), unique=True), lines=(3, 8))
    with backend(postgres_url) as db:
        with pytest.raises(ConfigError, match="could not create unique index") as caught:
            db.start(m)
        status = db.status()
    assert (caught.value.line, caught.value.key) == (8, "operations[1]")
    assert status.active is None and status.history == (("m2", "v2", "rolled_back"),)
    assert snapshot(postgres_url) == before
